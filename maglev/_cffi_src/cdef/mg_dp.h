#define MG_VERDICT_FORWARD 256
#define MG_VERDICT_ICMP 257
#define MG_VERDICT_HELD 258
#define MG_VERDICT_REDIRECT 259
#define MG_DP_DRAIN_MAX 64
#define MG_DP_EXPIRE_BUCKETS 16
#define MG_DP_MAX_DROPS 48

struct mg_dp_counter {
    uint64_t packets;
    uint64_t bytes;
};

struct mg_dp_stats {
    uint64_t bursts;
    uint64_t packets_in;
    uint64_t bytes_in;
    uint64_t forwarded;
    uint64_t bytes_out;
    uint64_t icmp_sent;
    uint64_t icmp_forwarded;
    uint64_t fragments;
    uint64_t held;
    uint64_t split_pieces;
    uint64_t table_swaps;
    uint64_t tables_generation;
    uint64_t drops[48];
    struct mg_ct_stats ct;
    struct mg_frag_stats frag;
    uint64_t redirected;
    uint64_t redirect_in;
    uint64_t quic_cid_routed;
    uint64_t quic_hashed;
    uint64_t cluster_in;
    uint64_t cluster_matched;
    uint64_t backup_out;
};

struct mg_dp_io {
    uint8_t *pool;
    const uint32_t *frames;
    uint32_t n;
    uint32_t *tx;
    uint32_t tx_cap;
    uint32_t n_tx;
    uint32_t *drop;
    uint32_t drop_cap;
    uint32_t n_drop;
    const uint32_t *spare;
    uint32_t n_spare;
    uint32_t n_spare_used;
};

struct mg_dp;

struct mg_dp *mg_dp_new(uint32_t ct_capacity, uint16_t worker, uint64_t k0, uint64_t k1,
                        uint64_t now_ns);
struct mg_dp *mg_dp_new_ct(struct mg_ct *ct, uint16_t worker, uint64_t k0, uint64_t k1,
                           uint64_t now_ns);
void mg_dp_free(struct mg_dp *dp);
int mg_dp_burst(struct mg_dp *dp, const void *tables, uint64_t now_ns, struct mg_dp_io *io);
int mg_dp_flush(struct mg_dp *dp, const void *tables, uint64_t now_ns, struct mg_dp_io *io);
const struct mg_dp_stats *mg_dp_stats(const struct mg_dp *dp);
const struct mg_dp_counter *mg_dp_vip_counters(const struct mg_dp *dp);
const struct mg_dp_counter *mg_dp_backend_counters(const struct mg_dp *dp);
struct mg_ct *mg_dp_conntrack(struct mg_dp *dp);
