#define MG_AFP_BLOCK_SIZE ...
#define MG_AFP_BLOCK_NR ...
#define MG_AFP_RETIRE_TOV_MS ...
#define MG_AFP_RING_V2 2
#define MG_AFP_RING_V3 3
#define MG_AFP_V2_FRAME_SIZE ...
#define MG_AFP_F_NO_QDISC_BYPASS 1
#define MG_AFP_F_NO_CSUM_FIX 2
#define MG_AFP_F_TX_FRAGS 4

struct mg_afp_stats {
    uint64_t rx_packets;
    uint64_t rx_bytes;
    uint64_t rx_outgoing;
    uint64_t rx_oversize;
    uint64_t rx_truncated;
    uint64_t rx_csum_fixed;
    uint64_t rx_vlan;
    uint64_t rx_blocks;
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t tx_errors;
    uint64_t tx_calls;
    uint64_t tx_ring_full;
    uint64_t tx_link_down;
};

struct mg_afp {
    int fd;
    int ifindex;
    uint32_t flags;
    uint32_t block_size;
    uint32_t block_nr;
    uint32_t version;
    int last_tx_errno;
    int tx_fd;
    uint32_t tx_vnet;
    uint32_t tx_cur;
    uint32_t tx_frame_nr;
    uint32_t tx_down;
    uint8_t *tx_map;
    struct mg_afp_stats stats;
    ...;
};

int mg_afp_open(struct mg_afp *afp, int ifindex, uint32_t flags);
int mg_afp_rx_enable(struct mg_afp *afp, uint32_t version, uint32_t block_size, uint32_t block_nr,
                     uint32_t tov_ms);
int mg_afp_fanout(struct mg_afp *afp, uint16_t group);
void mg_afp_close(struct mg_afp *afp);
int mg_afp_rx_burst(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n);
int mg_afp_tx_burst(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n);
int mg_afp_kernel_stats(struct mg_afp *afp, uint64_t *packets, uint64_t *drops,
                        uint64_t *freezes);
int mg_afp_csum_complete(uint8_t *frame, uint32_t len);
