struct mg_ring {
    uint32_t size;
    uint32_t mask;
    uint32_t id;
    uint32_t prod;
    uint32_t cons;
    uint32_t p_head;
    uint32_t p_cached_cons;
    uint64_t p_full;
    uint32_t c_head;
    uint32_t c_cached_prod;
    uint64_t c_empty;
    ...;
};

size_t mg_ring_bytes(uint32_t size);
int mg_ring_init(struct mg_ring *r, uint32_t size, uint32_t id, int64_t bell_off);
uint32_t mg_ring_enqueue_burst(struct mg_ring *r, const uint64_t *descs, uint32_t n);
uint32_t mg_ring_dequeue_burst(struct mg_ring *r, uint64_t *descs, uint32_t n);
uint32_t mg_ring_peek_copy(struct mg_ring *r, uint64_t *descs, uint32_t n);
int mg_ring_release_checked(struct mg_ring *r, uint32_t n);
uint32_t mg_ring_reserve_n(struct mg_ring *r, uint32_t n);
int mg_ring_fill_submit(struct mg_ring *r, const uint64_t *descs, uint32_t n);
uint32_t mg_ring_count(const struct mg_ring *r);
uint32_t mg_ring_free_count(const struct mg_ring *r);
void mg_ring_reset_producer(struct mg_ring *r);
void mg_ring_reset_consumer(struct mg_ring *r);
uint32_t mg_ring_snapshot(const struct mg_ring *r, uint64_t *out, uint32_t max);
