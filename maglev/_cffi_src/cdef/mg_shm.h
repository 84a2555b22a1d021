#define MG_REGION_MAGIC ...
#define MG_REGION_VERSION ...
#define MG_REGION_HDR_SIZE ...
#define MG_MAX_WORKERS ...
#define MG_MAX_FRAMES ...
#define MG_RING_MIN ...
#define MG_RING_MAX ...
#define MG_TABLES_MAX ...
#define MG_RING_RX ...
#define MG_RING_TX ...
#define MG_RING_RET ...
#define MG_RING_SENT ...
#define MG_RING_FREE ...
#define MG_SLOT_SUPERVISOR ...
#define MG_SLOT_STEERING ...
#define MG_SLOT_MUXER ...
#define MG_SLOT_CONFIG ...
#define MG_SLOT_HEALTH ...
#define MG_SLOT_BGP ...
#define MG_SLOT_WORKER0 ...
#define MG_STATS_WORDS ...

struct mg_region_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t total_size;
    uint32_t n_workers;
    uint32_t n_frames;
    uint32_t frame_size;
    uint32_t ring_size;
    uint32_t free_ring_size;
    uint32_t n_rings;
    uint32_t n_bells;
    uint32_t n_slots;
    uint64_t pool_off;
    uint64_t rings_off;
    uint64_t ring_stride;
    uint64_t free_ring_off;
    uint64_t bells_off;
    uint64_t hands_off;
    uint64_t hand_stride;
    uint64_t slots_off;
    uint64_t stats_off;
    uint64_t tables_off;
    uint64_t tables_bytes;
    uint64_t tables_copy_off[2];
    uint64_t ready;
};

struct mg_slot_line {
    uint64_t heartbeat_ns;
    uint64_t pid;
    ...;
};

struct mg_ring;

int mg_region_layout(uint32_t n_workers, uint32_t n_frames, uint32_t ring_size,
                     uint64_t tables_bytes, struct mg_region_hdr *out);
int mg_region_init(void *base, const struct mg_region_hdr *layout);
int mg_region_check(const void *base, uint64_t size);
uint8_t *mg_region_pool(void *base);
struct mg_ring *mg_region_ring(void *base, uint32_t kind, uint32_t i);
uint32_t mg_region_ring_id(const void *base, uint32_t kind, uint32_t i);
struct mg_ring *mg_region_ring_by_id(void *base, uint32_t id);
int mg_region_ring_kind(const void *base, uint32_t id, uint32_t *kind, uint32_t *i);
uint64_t *mg_region_stats(void *base, uint32_t slot);
void mg_heartbeat_set(void *base, uint32_t slot, uint64_t ns);
uint64_t mg_heartbeat_get(const void *base, uint32_t slot);
struct mg_slot_line *mg_region_slot(void *base, uint32_t slot);
