#define MG_SS_RX_PACKETS 0
#define MG_STEER_RETA 256
#define MG_STEER_STUCK_NS ...
#define MG_STEER_STALL_NS ...
#define MG_STEER_FB_ANY 0
#define MG_STEER_FB_NEW_FLOWS 1
#define MG_STEER_FB_NEVER 2
#define MG_SS_RX_BYTES 1
#define MG_SS_DISPATCHED 2
#define MG_SS_FALLBACK 3
#define MG_SS_BACKPRESSURE 4
#define MG_SS_RECLAIMED 5
#define MG_SS_FRAGMENTS 6
#define MG_SS_UNPARSED 7
#define MG_SS_BURSTS 8
#define MG_SS_NO_FREE 9
#define MG_SS_RECOVERED 10
#define MG_SS_FIRST_RX_NS 11
#define MG_SS_LAST_RX_NS 12
#define MG_SS_LOST 13
#define MG_SS_BATCH 14
#define MG_SS_B_TAKING 0
#define MG_SS_B_MARKED 1
#define MG_SS_B_COUNTED 2
#define MG_SS_B_RECLAIMING 3
#define MG_SS_HELD 15
#define MG_SS_NIC_UNSUPPORTED_LINKTYPE 16
#define MG_SS_NIC_FRAME_OVERFLOW 17
#define MG_SS_SPARE_RESERVE 18
#define MG_SS_SPARES_SENT 19
#define MG_SS_SPARE_SHORT 20
#define MG_SS_SHED 21
#define MG_SS_OWNER_STALLED 22
#define MG_SS_NIC_RX_LINK_DOWN 23
#define MG_SS_NIC_KERNEL_DROPS 24
#define MG_SS_NIC_REOPENS 25
#define MG_SPARE_RESERVE ...
#define MG_MS_TX_PACKETS 0
#define MG_MS_TX_BYTES 1
#define MG_MS_TX_ERRORS 2
#define MG_MS_BURSTS 3
#define MG_MS_RECOVERED 4
#define MG_MS_TX_ERRORS_FWD 5
#define MG_MS_LOST_FWD 6
#define MG_MS_BATCH 7
#define MG_MS_NIC_TX_LINK_DOWN 8
#define MG_MS_LAT0 16
#define MG_MS_LAT_N 96
struct mg_steer { ...; };
struct mg_mux { ...; };
int mg_steer_init(struct mg_steer *s, void *base, uint32_t slot, uint64_t k0, uint64_t k1);
int mg_steer_reclaim(struct mg_steer *s, void *base);
int mg_steer_spares(struct mg_steer *s, void *base, uint32_t reserve);
int mg_steer_take(struct mg_steer *s, void *base, uint32_t n);
int mg_steer_reclaim_ret(struct mg_steer *s, void *base);
int mg_steer_take_hot(struct mg_steer *s, void *base, uint32_t n);
int mg_steer_dispatch(struct mg_steer *s, void *base, uint32_t filled, int fresh);
int mg_steer_hash(const uint8_t *pkt, uint32_t len, uint64_t k0, uint64_t k1,
                  uint32_t n_workers, uint64_t *hash, uint16_t *flags);
int mg_mux_init(struct mg_mux *m, void *base, uint32_t slot);
int mg_mux_collect(struct mg_mux *m, void *base, uint32_t max);
int mg_mux_done(struct mg_mux *m, void *base, uint32_t n_sent, uint32_t n_failed);
int mg_mux_recover(struct mg_mux *m, void *base);
int mg_steer_recover(struct mg_steer *s, void *base);
int mg_steer_set_shed(struct mg_steer *s, struct mg_shed *sh);
int mg_steer_set_reta(struct mg_steer *s, const uint8_t *reta, uint32_t n);
int mg_steer_set_stuck_ns(struct mg_steer *s, uint64_t ns);
int mg_steer_set_stall_ns(struct mg_steer *s, uint64_t ns);
int mg_steer_set_fallback(struct mg_steer *s, uint32_t mode);
