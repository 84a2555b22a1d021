uint64_t mg_ring_bench_produce(struct mg_ring *r, uint64_t total, uint32_t burst,
                               uint64_t deadline_ns);
uint64_t mg_ring_bench_consume(struct mg_ring *r, uint64_t total, uint32_t burst,
                               uint64_t deadline_ns, uint64_t *errors);
uint64_t mg_ring_bench_local(struct mg_ring *r, uint64_t total, uint32_t burst,
                             uint64_t *errors);
uint64_t mg_now_ns(void);
