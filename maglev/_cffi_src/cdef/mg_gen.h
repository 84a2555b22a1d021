#define MG_GEN_MAX_VIPS 256
#define MG_GEN_MAX_FLOWS 4194304
struct mg_gen_vip {
    uint8_t addr[16];
    uint8_t family;
    uint8_t proto;
    uint16_t port;
};
struct mg_gen;
struct mg_gen *mg_gen_new(const struct mg_gen_vip *vips, uint32_t n_vips, uint32_t n_flows,
                          uint32_t size, uint32_t syn_ppm, uint32_t ipv6_ppm, uint64_t seed);
void mg_gen_free(struct mg_gen *g);
int mg_gen_fill(struct mg_gen *g, uint8_t *pool, const uint64_t *descs, uint32_t n,
                uint64_t now_ns);
uint64_t mg_gen_count(const struct mg_gen *g);
int mg_gen_fill_flood(struct mg_gen *g, uint8_t *pool, const uint64_t *descs, uint32_t n_keep,
                      uint32_t n_flood, uint64_t now_ns);
uint64_t mg_gen_flood_count(const struct mg_gen *g);
