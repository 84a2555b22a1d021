/* Out-of-line ring functions: init, burst helpers, checked verbs for Python, snapshot.
 * The hot verbs are static inline in mg_ring.h (with the memory-ordering notes). */
#include "mg_ring.h"

int mg_ring_init(struct mg_ring *r, uint32_t size, uint32_t id, int64_t bell_off)
{
    if (size < 2 || size > (1u << 22) || (size & (size - 1)))
        return -EINVAL;
    memset(r, 0, sizeof *r);
    r->size = size;
    r->mask = size - 1;
    r->magic = MG_RING_MAGIC;
    r->id = id;
    r->bell_off = bell_off;
    return 0;
}

uint32_t mg_ring_enqueue_burst(struct mg_ring *r, const uint64_t *descs, uint32_t n)
{
    uint32_t idx;
    /* Only a producer with no outstanding reservation may use the shortcut; otherwise
     * submit(n) would publish the older reserved slots, not these. */
    if (r->p_head != __atomic_load_n(&r->prod, __ATOMIC_RELAXED))
        return 0;
    n = mg_ring_reserve(r, n, &idx);
    if (!n)
        return 0;
    for (uint32_t i = 0; i < n; i++)
        *mg_ring_slot(r, idx + i) = descs[i];
    mg_ring_submit(r, n);
    return n;
}

uint32_t mg_ring_peek_copy(struct mg_ring *r, uint64_t *descs, uint32_t n)
{
    uint32_t idx;
    n = mg_ring_peek(r, n, &idx);
    for (uint32_t i = 0; i < n; i++)
        descs[i] = *mg_ring_slot(r, idx + i);
    return n;
}

uint32_t mg_ring_dequeue_burst(struct mg_ring *r, uint64_t *descs, uint32_t n)
{
    /* Only a consumer with nothing outstanding may use the copy-and-release shortcut;
     * otherwise releasing n would hand back slots peeked earlier, not these. */
    if (r->c_head != __atomic_load_n(&r->cons, __ATOMIC_RELAXED))
        return 0;
    n = mg_ring_peek_copy(r, descs, n);
    if (n)
        mg_ring_release(r, n);
    return n;
}

int mg_ring_release_checked(struct mg_ring *r, uint32_t n)
{
    if (n > r->c_head - __atomic_load_n(&r->cons, __ATOMIC_RELAXED))
        return -EINVAL;
    if (n)
        mg_ring_release(r, n);
    return 0;
}

uint32_t mg_ring_reserve_n(struct mg_ring *r, uint32_t n)
{
    uint32_t idx;
    return mg_ring_reserve(r, n, &idx);
}

int mg_ring_fill_submit(struct mg_ring *r, const uint64_t *descs, uint32_t n)
{
    uint32_t prod = __atomic_load_n(&r->prod, __ATOMIC_RELAXED);
    if (n > r->p_head - prod)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        *mg_ring_slot(r, prod + i) = descs[i];
    if (n)
        mg_ring_submit(r, n);
    return 0;
}

uint32_t mg_ring_count(const struct mg_ring *r)
{
    uint32_t cons = __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE);
    return __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE) - cons;
}

uint32_t mg_ring_free_count(const struct mg_ring *r)
{
    return r->size - (r->p_head - __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE));
}

void mg_ring_reset_producer(struct mg_ring *r)
{
    r->p_head = __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE);
    r->p_cached_cons = __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE);
}

void mg_ring_reset_consumer(struct mg_ring *r)
{
    r->c_head = __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE);
    r->c_cached_prod = __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE);
}

uint32_t mg_ring_snapshot(const struct mg_ring *r, uint64_t *out, uint32_t max)
{
    uint32_t cons = __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE);
    uint32_t prod = __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE);
    uint32_t n = prod - cons;
    if (n > r->size)
        n = r->size; /* indices moved under us; the caller asked for a quiescent ring */
    if (n > max)
        n = max;
    for (uint32_t i = 0; i < n; i++)
        out[i] = r->desc[(cons + i) & r->mask];
    return n;
}
