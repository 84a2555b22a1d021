#define MG_XSK_FRAME_SIZE ...
#define MG_XSK_NUM_FRAMES ...
#define MG_XSK_RING_SIZE ...
#define MG_XSK_RX_FRAMES ...
#define MG_XSK_TX_FRAMES ...
#define MG_XSK_MODE_COPY 1
#define MG_XSK_MODE_ZEROCOPY 2

struct mg_xsk_stats {
    uint64_t rx_packets;
    uint64_t rx_bytes;
    uint64_t rx_oversize;
    uint64_t fill_wakeups;
    uint64_t rx_bursts;
};

struct mg_xsk {
    int fd;
    int ifindex;
    uint32_t queue;
    uint32_t mode;
    struct mg_xsk_stats stats;
    ...;
};

int mg_xsk_open(struct mg_xsk *x, int ifindex, uint32_t queue, uint32_t mode);
void mg_xsk_close(struct mg_xsk *x);
int mg_xsk_rx_burst(struct mg_xsk *x, uint8_t *pool, const uint64_t *descs, uint32_t n);
int mg_xsk_kernel_stats(struct mg_xsk *x, uint64_t *out4);
int mg_xsk_umem_fd(const struct mg_xsk *x);

struct mg_xsk_tx_stats {
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t tx_completed;
    uint64_t tx_ring_full;
    uint64_t tx_oversize;
    uint64_t tx_kicks;
    uint64_t tx_kick_errors;
    uint64_t tx_bursts;
    uint64_t tx_kick_again;
    uint64_t tx_left;
};

struct mg_xsk_tx {
    int fd;
    int last_errno;
    uint32_t n_free;
    struct mg_xsk_tx_stats stats;
    ...;
};

int mg_xsk_tx_attach(struct mg_xsk_tx *t, int fd, int umem_fd);
void mg_xsk_tx_close(struct mg_xsk_tx *t);
int mg_xsk_tx_burst(struct mg_xsk_tx *t, const uint8_t *pool, const uint64_t *descs, uint32_t n);
uint32_t mg_xsk_tx_inflight(const struct mg_xsk_tx *t);
