#define MG_EVAL_NAME_MAX 252
#define MG_EVAL_MAX_POINTS ...
int mg_eval_karger_fill(uint32_t m, uint32_t n, const uint8_t *names, const uint32_t *name_off,
                        const uint8_t *alive, uint32_t vnodes, int32_t *table);
int mg_eval_rendezvous_fill(uint32_t m, uint32_t n, const uint8_t *names,
                            const uint32_t *name_off, const uint8_t *alive, int32_t *table);
int64_t mg_eval_count(uint32_t m, const int32_t *table, uint32_t n, uint32_t *counts);
int64_t mg_eval_diff(uint32_t m, const int32_t *a, const int32_t *b, const int32_t *b_remap,
                     uint32_t n_remap);
