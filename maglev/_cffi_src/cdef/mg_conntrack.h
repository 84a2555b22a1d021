#define MG_CT_WAYS 8
#define MG_CT_EVICT_MIN_IDLE_MS 1000
#define MG_CT_MAX_CAPACITY 67108864

struct mg_ct_stats {
    uint64_t lookups;
    uint64_t hits;
    uint64_t inserts;
    uint64_t insert_failed;
    uint64_t evictions;
    uint64_t expired;
    uint64_t reselected;
};

struct mg_ct_entry {
    struct mg_flow_key key;
    int32_t backend;
    uint32_t reserved;
    uint64_t backend_id;
    uint8_t pad[8];
};

struct mg_ct {
    uint32_t n_buckets;
    uint32_t mask;
    ...;
};

size_t mg_ct_bytes(uint32_t capacity);
struct mg_ct *mg_ct_new(uint32_t capacity);
void mg_ct_free(struct mg_ct *ct);
void mg_ct_clear(struct mg_ct *ct);
uint32_t mg_ct_capacity(const struct mg_ct *ct);
int32_t mg_ct_lookup(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                     uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms);
int mg_ct_insert(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id);
uint32_t mg_ct_count(const struct mg_ct *ct);
