#define MG_CT_WAYS 8
#define MG_CT_MAX_CAPACITY 67108864
#define MG_CT_LAYOUT_VERSION 2
#define MG_CT_HDR_SIZE 256
#define MG_CT_TAG_PROTECTED 0x80000000
#define MG_CT_TAG_TCP 0x40000000
#define MG_CT_SIG_MASK 0x3fffffff
#define MG_CT_MOVE_RESERVE 4
#define MG_CT_DEFAULT_PROTECTED_PCT 90
#define MG_CT_PAGES_AUTO 0
#define MG_CT_PAGES_HUGETLB 1
#define MG_CT_PAGES_THP 2
#define MG_CT_PAGES_SMALL 3
#define MG_CT_PAGES_SHM 4
#define MG_CT_E_TRUNCATED 1
#define MG_CT_E_MAGIC 2
#define MG_CT_E_VERSION 3
#define MG_CT_E_GEOMETRY 4
#define MG_CT_E_SIZE 5

struct mg_ct_stats {
    uint64_t lookups;
    uint64_t hits;
    uint64_t inserts;
    uint64_t insert_failed;
    uint64_t evictions;
    uint64_t expired;
    uint64_t reselected;
    uint64_t promoted;
    uint64_t demoted;
    uint64_t moved;
    uint64_t rate_guard_hits;
};

struct mg_ct_entry {
    struct mg_flow_key key;
    int32_t backend;
    uint32_t reserved;
    uint64_t backend_id;
    uint8_t pad[8];
};

struct mg_ct {
    uint64_t magic;
    uint32_t version;
    uint32_t ways;
    uint32_t n_buckets;
    uint32_t mask;
    uint64_t meta_off;
    uint64_t entries_off;
    uint64_t map_bytes;
    uint32_t page_mode;
    uint32_t protected_max;
    uint32_t n_used;
    uint32_t n_protected;
    uint32_t rate_per_s;
    uint32_t rate_last;
    uint64_t tokens;
    uint64_t burst;
    uint64_t key_fp;
    struct mg_ct_stats stats;
    uint32_t n_workers;
    uint32_t worker;
    uint64_t adoptions;
    uint32_t map_fp;
    ...;
};

struct mg_ct_plan {
    uint64_t table_bytes;
    uint64_t mem_available;
    uint64_t huge_free_bytes;
    uint64_t huge_page_size;
    uint32_t capacity;
    uint32_t mode;
    int32_t ok;
    int32_t reserved;
};

int mg_ct_plan(uint32_t capacity, uint32_t mode, uint32_t copies, struct mg_ct_plan *out);
size_t mg_ct_bytes(uint32_t capacity);
struct mg_ct *mg_ct_new(uint32_t capacity);
struct mg_ct *mg_ct_new_mode(uint32_t capacity, uint32_t mode);
int mg_ct_set_default_pages(uint32_t mode);
void mg_ct_free(struct mg_ct *ct);
int mg_ct_check(const void *hdr, uint64_t have, uint64_t file_bytes);
struct mg_ct *mg_ct_format(void *mem, uint64_t bytes, uint32_t capacity, uint32_t page_mode);
struct mg_ct *mg_ct_map_shared(int fd, uint64_t bytes, uint32_t capacity, int adopt);
void mg_ct_recount(struct mg_ct *ct);
void mg_ct_clear(struct mg_ct *ct);
uint32_t mg_ct_capacity(const struct mg_ct *ct);
uint32_t mg_ct_page_mode(const struct mg_ct *ct);
int mg_ct_set_policy(struct mg_ct *ct, uint32_t protected_pct, uint32_t new_flows_per_s);
int32_t mg_ct_lookup(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                     uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms);
int mg_ct_lookup_slot(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                      uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms, int promote);
int mg_ct_insert(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id);
int mg_ct_admit_at(struct mg_ct *ct, uint64_t now_ns);
uint32_t mg_ct_count(const struct mg_ct *ct);
uint32_t mg_ct_tag(const struct mg_ct *ct, uint32_t slot);
struct mg_ct_census {
    uint64_t live;
    uint64_t expired;
    uint64_t torn;
    uint64_t unknown;
};
int mg_ct_census(const struct mg_ct *ct, uint64_t k0, uint64_t k1, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, const uint64_t *ids, uint32_t n_ids,
                 uint64_t *counts, struct mg_ct_census *out);

struct mg_ct_rehome_stats {
    uint64_t live;
    uint64_t placed;
    uint64_t duplicates;
    uint64_t no_room;
    uint64_t expired;
};
int mg_ct_rehome(const struct mg_ct *src, struct mg_ct *const *dst, uint32_t n_dst, uint64_t k0, uint64_t k1,
                 const uint8_t *reta, uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms,
                 struct mg_ct_rehome_stats *st);
