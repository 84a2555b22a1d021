#define MG_SHED_NEVER 4294967295
#define MG_SHED_EXEMPT -2
#define MG_SHED_NO_VIP 4096
#define MG_SHED_HIGH_WATER_PCT 50
struct mg_shed {
    const void *tables;
    uint32_t on;
    uint32_t max_prio;
    uint32_t ring_size;
    uint32_t high_water;
    uint32_t mark[8];
    uint64_t drops[4097];
};
int mg_shed_load(struct mg_shed *sh, const void *tables, uint64_t size, uint32_t ring_size,
                 uint32_t high_water_pct);
int mg_shed_packet(const struct mg_shed *sh, const uint8_t *pkt, uint32_t len, uint32_t used,
                   int32_t *vip);
