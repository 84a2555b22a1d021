/* Single-producer / single-consumer descriptor rings in shared memory.
 *
 * Verbs after AF_XDP's xsk.h: the producer reserve()s slots, writes descriptors into
 * them and submit()s; the consumer peek()s, reads, and release()s.  reserve and peek
 * return how many slots they got, up to n; 0 means full / empty, never an error.
 *
 * Indices are free-running uint32_t (wrap-around is harmless because the size is a power
 * of two <= 2^22, so `prod - cons` is always the fill level) and masked on access.
 * `prod` and `cons` live on separate cache lines; each side also keeps private state on
 * a line of its own: its next index (`p_head` / `c_head`, ahead of the shared index by
 * what is reserved / peeked) and a cached copy of the other side's index, refreshed only
 * when the cached value says full / empty, so the hot path touches the other side's line
 * once per "lap", not once per burst (DPDK rte_ring and xsk_queue.h do the same).  The
 * private lines are in shared memory so that a replacement process can take a ring over
 * (mg_ring_reset_producer / _consumer).
 *
 * Memory ordering: four points, two pairs.
 *
 *   producer                                consumer
 *   reserve: load cons        (A) acquire   peek:    load prod       (C) acquire
 *   write descriptors                       read descriptors
 *   submit:  store prod       (B) release   release: store cons      (D) release
 *
 *   (B) pairs with (C): the descriptors written before submit are visible to a consumer
 *       that sees the new prod.
 *   (D) pairs with (A): the consumer's reads of released slots happen before the producer,
 *       having seen the new cons, overwrites them.
 *   Each side reads its *own* index with a relaxed load: only it writes that word.
 *
 * submit() also rings the consumer's doorbell when the consumer asked for it
 * (mg_bell.h, fence (F)).  Exactly one process may be the producer and one the
 * consumer of a ring at any time; who they are is written in docs/rings.md.
 */
#ifndef MG_RING_H
#define MG_RING_H

#include "mg_common.h"
#include "mg_bell.h"

#define MG_RING_MAGIC 0x474e4952u /* "RING" */

struct mg_ring {
    /* line 0: constant after init */
    uint32_t size; /* power of two */
    uint32_t mask;
    uint32_t magic;
    uint32_t id;       /* ring id in its region (UINT32_MAX for a standalone ring) */
    int64_t bell_off;  /* bytes from this ring to its consumer's doorbell; 0 = none */
    uint8_t pad0[MG_CACHE_LINE - 24];
    /* line 1: written by the producer, read by the consumer */
    _Alignas(MG_CACHE_LINE) uint32_t prod;
    uint8_t pad1[MG_CACHE_LINE - 4];
    /* line 2: written by the consumer, read by the producer */
    _Alignas(MG_CACHE_LINE) uint32_t cons;
    uint8_t pad2[MG_CACHE_LINE - 4];
    /* line 3: producer private */
    _Alignas(MG_CACHE_LINE) uint32_t p_head; /* next slot to reserve */
    uint32_t p_cached_cons;
    uint64_t p_full;                          /* reserve calls that came back short */
    uint8_t pad3[MG_CACHE_LINE - 16];
    /* line 4: consumer private */
    _Alignas(MG_CACHE_LINE) uint32_t c_head; /* next slot to peek */
    uint32_t c_cached_prod;
    uint64_t c_empty;                         /* peek calls that found nothing */
    uint8_t pad4[MG_CACHE_LINE - 16];
    _Alignas(MG_CACHE_LINE) uint64_t desc[];
};

_Static_assert(sizeof(struct mg_ring) == 5 * MG_CACHE_LINE, "ring header is 5 lines");

/* Bytes a ring of `size` slots occupies (header + slots, whole cache lines). */
static inline size_t mg_ring_bytes(uint32_t size)
{
    size_t b = sizeof(struct mg_ring) + (size_t)size * sizeof(uint64_t);
    return (b + MG_CACHE_LINE - 1) & ~(size_t)(MG_CACHE_LINE - 1);
}

static inline uint64_t *mg_ring_slot(struct mg_ring *r, uint32_t idx)
{
    return &r->desc[idx & r->mask];
}

/* Reserve up to n slots; *idx = the first (free-running).  Returns how many. */
static inline uint32_t mg_ring_reserve(struct mg_ring *r, uint32_t n, uint32_t *idx)
{
    uint32_t room = r->size - (r->p_head - r->p_cached_cons);
    if (room < n) {
        /* (A) acquire, pairs with (D) */
        r->p_cached_cons = __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE);
        room = r->size - (r->p_head - r->p_cached_cons);
        if (room < n) {
            n = room;
            r->p_full++;
        }
    }
    *idx = r->p_head;
    r->p_head += n;
    return n;
}

/* Publish the n oldest reserved slots, then ring the consumer's doorbell if it sleeps. */
static inline void mg_ring_submit(struct mg_ring *r, uint32_t n)
{
    uint32_t p = __atomic_load_n(&r->prod, __ATOMIC_RELAXED) + n;
    /* (B) release, pairs with (C) */
    __atomic_store_n(&r->prod, p, __ATOMIC_RELEASE);
    if (r->bell_off)
        mg_bell_notify((struct mg_bell *)((uint8_t *)r + r->bell_off));
}

/* Peek at up to n published slots not yet peeked; *idx = the first.  Returns how many.
 * The consumer's mirror of mg_ring_reserve (same shape on purpose: each side is written
 * out so that its own acquire/release pair is labelled where it happens). */
static inline uint32_t mg_ring_peek(struct mg_ring *r, uint32_t n, uint32_t *idx)
{
    uint32_t avail = r->c_cached_prod - r->c_head;
    if (avail < n) {
        /* (C) acquire, pairs with (B) */
        r->c_cached_prod = __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE);
        avail = r->c_cached_prod - r->c_head;
        if (avail < n) {
            n = avail;
            if (!n)
                r->c_empty++;
        }
    }
    *idx = r->c_head;
    r->c_head += n;
    return n;
}

/* Give the n oldest peeked slots back to the producer. */
static inline void mg_ring_release(struct mg_ring *r, uint32_t n)
{
    uint32_t c = __atomic_load_n(&r->cons, __ATOMIC_RELAXED) + n;
    /* (D) release, pairs with (A) */
    __atomic_store_n(&r->cons, c, __ATOMIC_RELEASE);
}

/* True when a consumer would find something new to peek (used by doorbell waits). */
static inline int mg_ring_has_work(const struct mg_ring *r)
{
    /* acquire like (C): a waiter that sees work goes on to peek it */
    return __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE) != r->c_head;
}

/* Out-of-line API (mg_ring.c), also what Python calls. */
int mg_ring_init(struct mg_ring *r, uint32_t size, uint32_t id, int64_t bell_off);
/* reserve + copy + submit: how many of descs[0..n) went in (0 when full, or when
 * reservations are outstanding: mixing the verbs is the caller's bug). */
uint32_t mg_ring_enqueue_burst(struct mg_ring *r, const uint64_t *descs, uint32_t n);
/* peek + copy + release: how many were copied to descs (0 when empty, or when peeks are
 * outstanding). */
uint32_t mg_ring_dequeue_burst(struct mg_ring *r, uint64_t *descs, uint32_t n);
/* peek + copy, no release. */
uint32_t mg_ring_peek_copy(struct mg_ring *r, uint64_t *descs, uint32_t n);
/* release with a check: -EINVAL if n exceeds what is peeked. */
int mg_ring_release_checked(struct mg_ring *r, uint32_t n);
uint32_t mg_ring_reserve_n(struct mg_ring *r, uint32_t n);
/* write descs into the n oldest reserved slots and submit; -EINVAL if fewer reserved. */
int mg_ring_fill_submit(struct mg_ring *r, const uint64_t *descs, uint32_t n);
uint32_t mg_ring_count(const struct mg_ring *r);      /* published, not released */
uint32_t mg_ring_free_count(const struct mg_ring *r); /* slots the producer could reserve */
void mg_ring_reset_producer(struct mg_ring *r);
void mg_ring_reset_consumer(struct mg_ring *r);
/* copy the descriptors between cons and prod (quiescent use only). */
uint32_t mg_ring_snapshot(const struct mg_ring *r, uint64_t *out, uint32_t max);

#endif
