#define MG_XSK_FRAME_SIZE ...
#define MG_XSK_NUM_FRAMES ...
#define MG_XSK_RING_SIZE ...
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
