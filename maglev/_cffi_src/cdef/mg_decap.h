#define MG_DECAP_MAX_VIPS ...
#define MG_DECAP_BATCH ...
#define MG_DECAP_BUF ...
#define MG_DECAP_MAX_SOCKS ...
#define MG_DECAP_ERRNOS ...
#define MG_DECAP_NREASONS ...
struct mg_decap_vips {
    uint32_t n4, n6;
    uint8_t v4[64][4];
    uint8_t v6[64][16];
};
struct mg_decap_sock { int fd; int family; int proto; };
struct mg_decap_stats {
    uint64_t received;
    uint64_t decapsulated;
    uint64_t wakeups;
    uint64_t batches;
    uint64_t max_batch;
    uint64_t drop[12];
    uint64_t tun_errno[136];
    uint64_t recv_errno[136];
};
int mg_decap_parse(const uint8_t *pkt, uint32_t len, int family, int proto,
                   const struct mg_decap_vips *vips, uint32_t *inner_off, uint32_t *inner_len);
int64_t mg_decap_run(const struct mg_decap_sock *socks, int nsocks, int tun_fd,
                     const struct mg_decap_vips *vips, struct mg_decap_stats *st,
                     uint8_t *bufs, int budget_ms);
