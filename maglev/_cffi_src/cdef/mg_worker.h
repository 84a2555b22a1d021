#define MG_WS_BURSTS 0
#define MG_WS_PACKETS_IN 1
#define MG_WS_BYTES_IN 2
#define MG_WS_FORWARDED 3
#define MG_WS_BYTES_OUT 4
#define MG_WS_ICMP_SENT 5
#define MG_WS_HELD 6
#define MG_WS_GENERATION 7
#define MG_WS_RESTART_DROPS 8
#define MG_WS_TABLE_SWAPS 9
#define MG_WS_FRAGMENTS 10
#define MG_WS_ICMP_FORWARDED 11
#define MG_WS_CT_ENTRIES 12
#define MG_WS_REDIRECTED 13
#define MG_WS_SPARES_USED 14
#define MG_WS_SPARE_WAITS 15
#define MG_WS_DROPS 16
#define MG_WS_N_DROPS 44
#define MG_WS_SPARES 60
#define MG_WS_QUIC_CID_ROUTED 61
#define MG_WS_QUIC_HASHED 62
#define MG_WS_CLUSTER_IN 63
#define MG_WS_CLUSTER_MATCHED 64
#define MG_WS_BACKUP_OUT 65
struct mg_worker;
struct mg_worker *mg_worker_new(void *base, uint32_t worker, uint32_t ct_capacity,
                                uint64_t k0, uint64_t k1, uint32_t burst, uint64_t now_ns);
struct mg_worker *mg_worker_new_ct(void *base, uint32_t worker, struct mg_ct *ct,
                                   uint64_t k0, uint64_t k1, uint32_t burst, uint64_t now_ns);
void mg_worker_free(struct mg_worker *w);
struct mg_dp *mg_worker_dp(struct mg_worker *w);
int mg_worker_recover(struct mg_worker *w, void *base);
int mg_worker_burst(struct mg_worker *w, void *base, uint64_t now_ns);
int mg_worker_flush(struct mg_worker *w, void *base, uint64_t now_ns);
int mg_worker_holding(const struct mg_worker *w, void *base);
