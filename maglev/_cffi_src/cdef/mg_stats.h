uint64_t mg_stats_load(void *base, uint32_t slot, uint32_t word);
int mg_stats_store(void *base, uint32_t slot, uint32_t word, uint64_t value);
int mg_stats_snapshot(void *base, uint32_t slot, uint64_t *out);
int mg_seq_read(const uint64_t *seq, const uint64_t *src, uint64_t *dst, uint32_t n, uint32_t tries);
void mg_seq_write(uint64_t *seq, uint64_t *dst, const uint64_t *src, uint32_t n);
