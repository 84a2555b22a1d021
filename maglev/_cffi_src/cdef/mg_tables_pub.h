#define MG_TABLES_QUIESCENT ...

const void *mg_tables_acquire(void *region_base, uint32_t worker, uint64_t *generation);
void mg_tables_quiesce(void *region_base, uint32_t worker);
uint64_t mg_tables_generation(const void *region_base);
uint64_t mg_tables_size(const void *region_base, uint64_t generation);
uint64_t mg_tables_seen(const void *region_base, uint32_t worker);
int mg_tables_has_seen(const void *region_base, uint32_t worker, uint64_t generation);
void mg_tables_fence(void);
uint8_t *mg_tables_copy(void *region_base, uint32_t copy);
int mg_tables_commit(void *region_base, uint64_t generation, uint64_t len);
