#define MG_FRAG_WAYS 4
#define MG_FRAG_DEFAULT_TIMEOUT_MS 2000
#define MG_FRAG_DEFAULT_ENTRIES 4096
#define MG_FRAG_DEFAULT_HOLD_FRAMES 256
#define MG_FRAG_DEFAULT_HOLD_BYTES 262144
#define MG_FRAG_HOLD_PER_DATAGRAM 52
#define MG_FRAG_MAX_ENTRIES 16777216
#define MG_FRAG_MAX_HOLD 1048576
#define MG_FRAG_NIL 4294967295
#define MG_FRAG_R_RELEASED 0
#define MG_FRAG_R_EXPIRED 1
#define MG_FRAG_R_EVICTED 2

struct mg_frag_key {
    uint8_t src[16];
    uint8_t dst[16];
    uint32_t id;
    uint8_t proto;
    uint8_t family;
    uint8_t pad[2];
};

struct mg_frag_entry {
    struct mg_frag_key key;
    uint64_t expire_ns;
    int32_t backend;
    uint16_t vip_index;
    uint16_t held;
    uint32_t held_head;
    uint32_t held_tail;
};

struct mg_frag_slot {
    uint32_t frame;
    uint32_t next;
    uint32_t len;
    int32_t backend;
    uint16_t vip_index;
    uint16_t reason;
};

struct mg_frag_out {
    uint32_t frame;
    int32_t backend;
    uint16_t vip_index;
    uint16_t reason;
};

struct mg_frag_stats {
    uint64_t first;
    uint64_t forwarded;
    uint64_t held;
    uint64_t released;
    uint64_t expired;
    uint64_t evicted;
    uint64_t evictions;
    uint64_t drop_table_full;
    uint64_t drop_hold_limit;
};

struct mg_frag_table {
    uint32_t nbuckets;
    uint32_t hold_max;
    uint32_t hold_bytes_max;
    uint32_t hold_count;
    uint32_t hold_bytes;
    uint32_t free_head;
    uint32_t out_head;
    uint32_t out_tail;
    uint32_t out_count;
    uint32_t cursor;
    uint64_t timeout_ns;
    uint64_t k0, k1;
    struct mg_frag_stats stats;
};

size_t mg_frag_table_size(uint32_t entries, uint32_t hold_max);
int mg_frag_table_init(struct mg_frag_table *t, uint32_t entries, uint32_t hold_max,
                       uint32_t hold_bytes_max, uint64_t timeout_ns, uint64_t k0,
                       uint64_t k1);
int mg_frag_first(struct mg_frag_table *t, const struct mg_frag_key *key, int32_t backend,
                  uint16_t vip_index, uint64_t now_ns);
int mg_frag_next(struct mg_frag_table *t, const struct mg_frag_key *key, uint32_t frame,
                 uint32_t len, uint64_t now_ns, int32_t *backend, uint16_t *vip_index);
int mg_frag_expire(struct mg_frag_table *t, uint64_t now_ns, uint32_t max_buckets);
int mg_frag_drain(struct mg_frag_table *t, struct mg_frag_out *out, uint32_t cap);
int mg_frag_split_ipv4(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint32_t max_l3_len,
                       const uint32_t *spare, uint32_t nspare);
