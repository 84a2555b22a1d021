#define MG_NO_BACKEND -1
#define MG_MAGLEV_MAX_SIZE 16777213
#define MG_MAGLEV_MAX_BACKENDS 65536
int mg_maglev_build(uint32_t m, uint32_t n, const uint8_t *names, const uint32_t *name_off,
                    const uint32_t *weights, int32_t *table, uint32_t *counts);
int mg_maglev_offset_skip(uint32_t m, const uint8_t *name, size_t len, uint32_t *offset,
                          uint32_t *skip);
int mg_is_prime(uint32_t m);
