#define MG_EVAL_NAME_MAX 252
#define MG_EVAL_MAX_POINTS ...
#define MG_EVAL_RING_INDEX 65537
struct mg_eval_point {
    uint64_t pos;
    uint32_t backend;
    uint32_t pad;
};
int mg_eval_karger_ring(uint32_t n, const uint8_t *names, const uint32_t *name_off,
                        uint32_t vnodes, struct mg_eval_point *ring, uint32_t *start);
int mg_eval_karger_lookup(uint32_t m, const struct mg_eval_point *ring, uint32_t count,
                          const uint32_t *start, const uint8_t *alive, int32_t *table);
int mg_eval_rendezvous_fill(uint32_t m, uint32_t n, const uint8_t *names,
                            const uint32_t *name_off, const uint8_t *alive, int32_t *table);
int mg_eval_rendezvous_top(uint32_t m, uint32_t n, const uint8_t *names,
                           const uint32_t *name_off, uint32_t l, int32_t *top);
int64_t mg_eval_rendezvous_pick(uint32_t m, uint32_t n, const uint8_t *names,
                                const uint32_t *name_off, uint32_t l, const int32_t *top,
                                const uint8_t *alive, int32_t *table);
int64_t mg_eval_count(uint32_t m, const int32_t *table, uint32_t n, uint32_t *counts);
int64_t mg_eval_diff(uint32_t m, const int32_t *a, const int32_t *b, const int32_t *b_remap,
                     uint32_t n_remap);
