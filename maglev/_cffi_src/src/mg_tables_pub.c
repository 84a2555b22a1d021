/* Table publication (protocol and the memory-ordering pairs: mg_tables_pub.h). */
#include "mg_tables_pub.h"

#include "mg_shm.h"

static struct mg_tables_hdr *thdr(const void *base)
{
    const struct mg_region_hdr *h = base;
    return (struct mg_tables_hdr *)((uint8_t *)base + h->tables_off);
}

static struct mg_tables_seen *tseen(const void *base, uint32_t worker)
{
    const struct mg_region_hdr *h = base;
    if (worker >= h->n_workers)
        return NULL;
    return (struct mg_tables_seen *)(thdr(base) + 1) + worker;
}

const void *mg_tables_acquire(void *region_base, uint32_t worker, uint64_t *generation)
{
    struct mg_tables_hdr *t = thdr(region_base);
    struct mg_tables_seen *s = tseen(region_base, worker);
    if (!s) {
        *generation = 0;
        return NULL;
    }
    /* (G) acquire, pairs with (H) */
    uint64_t g = __atomic_load_n(&t->generation, __ATOMIC_ACQUIRE);
    uint64_t old = __atomic_load_n(&s->seen, __ATOMIC_RELAXED);
    if (MG_UNLIKELY(old == MG_TABLES_QUIESCENT)) {
        for (;;) {
            __atomic_store_n(&s->seen, g, __ATOMIC_RELAXED);
            /* (I) full fence, pairs with (J) in the writer */
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            uint64_t g2 = __atomic_load_n(&t->generation, __ATOMIC_ACQUIRE);
            if (g2 == g)
                break;
            g = g2;
        }
    } else if (old != g) {
        /* (K) release, pairs with (L): reads of the old copy are done */
        __atomic_store_n(&s->seen, g, __ATOMIC_RELEASE);
    }
    *generation = g;
    if (!g)
        return NULL;
    const struct mg_region_hdr *h = region_base;
    return (const uint8_t *)region_base + h->tables_copy_off[g & 1];
}

void mg_tables_quiesce(void *region_base, uint32_t worker)
{
    struct mg_tables_seen *s = tseen(region_base, worker);
    if (s) /* release: like (K), reads of the copy are done */
        __atomic_store_n(&s->seen, MG_TABLES_QUIESCENT, __ATOMIC_RELEASE);
}

uint64_t mg_tables_generation(const void *region_base)
{
    return __atomic_load_n(&thdr(region_base)->generation, __ATOMIC_ACQUIRE);
}

uint64_t mg_tables_size(const void *region_base, uint64_t generation)
{
    if (!generation)
        return 0;
    return __atomic_load_n(&thdr(region_base)->len[generation & 1], __ATOMIC_RELAXED);
}

uint64_t mg_tables_seen(const void *region_base, uint32_t worker)
{
    struct mg_tables_seen *s = tseen(region_base, worker);
    return s ? __atomic_load_n(&s->seen, __ATOMIC_ACQUIRE) : 0;
}

int mg_tables_has_seen(const void *region_base, uint32_t worker, uint64_t generation)
{
    struct mg_tables_seen *s = tseen(region_base, worker);
    if (!s)
        return 0;
    /* (L) acquire, pairs with (K) */
    uint64_t v = __atomic_load_n(&s->seen, __ATOMIC_ACQUIRE);
    return v == MG_TABLES_QUIESCENT || v >= generation;
}

void mg_tables_fence(void)
{
    /* (J) full fence, pairs with (I) */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint8_t *mg_tables_copy(void *region_base, uint32_t copy)
{
    const struct mg_region_hdr *h = region_base;
    return (uint8_t *)region_base + h->tables_copy_off[copy & 1];
}

int mg_tables_commit(void *region_base, uint64_t generation, uint64_t len)
{
    const struct mg_region_hdr *h = region_base;
    struct mg_tables_hdr *t = thdr(region_base);
    if (len > h->tables_bytes || generation != t->generation + 1)
        return -EINVAL;
    __atomic_store_n(&t->len[generation & 1], len, __ATOMIC_RELAXED);
    /* (H) release, pairs with (G): the copy and its length are written */
    __atomic_store_n(&t->generation, generation, __ATOMIC_RELEASE);
    return 0;
}
