/* Hand journal: pull / push / recover (design and recovery rules: mg_hand.h). */
#include "mg_hand.h"

#include "mg_layout.h"
#include "mg_ring.h"
#include "mg_shm.h"

/* Fault injection for tests: stop a move at step k as if the process died there. */
int mg_hand_fault_at = 0;
#define FAULT(k)                          \
    do {                                  \
        if (MG_UNLIKELY(mg_hand_fault_at == (k))) \
            return -EINTR;                \
    } while (0)

#define ST_BUF(s) ((s) & 1u)
#define ST_OP(s) (((s) >> 1) & 3u)
#define ST(buf, op) ((buf) | ((op) << 1))
/* Rings a region can have: rx, tx, ret per worker, sent, free (mg_shm.c). */
#define MG_HAND_RINGS_MAX (3 * MG_MAX_WORKERS + 2)

size_t mg_hand_bytes(uint32_t n_rings)
{
    return mg_layout_hand_bytes(n_rings);
}

static uint32_t load_state(const struct mg_hand *h)
{
    return __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
}

/* Journal writes (buffers, records) are ordered before the state flip by the release. */
static void store_state(struct mg_hand *h, uint32_t s)
{
    __atomic_store_n(&h->state, s, __ATOMIC_RELEASE);
}

int mg_hand_pull(void *base, uint32_t slot, uint32_t ring_id, uint32_t max)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    struct mg_ring *r = mg_region_ring_by_id(base, ring_id);
    if (!h || !r)
        return -EINVAL;
    uint32_t s = load_state(h);
    if (ST_OP(s) != MG_HAND_OP_NONE)
        return -EBUSY;
    uint32_t cons = __atomic_load_n(&r->cons, __ATOMIC_RELAXED);
    if (r->c_head != cons)
        return -EBUSY; /* someone peeked without releasing: not a hand-managed ring */
    uint32_t a = ST_BUF(s), b = a ^ 1u, have = h->n[a];
    if (have > MG_HAND_MAX)
        return -EINVAL; /* a corrupted hand: refuse rather than overrun */
    if (max > MG_HAND_MAX - have)
        max = MG_HAND_MAX - have;
    uint32_t idx, k = mg_ring_peek(r, max, &idx);
    if (!k)
        return 0;
    memcpy(h->descs[b], h->descs[a], (size_t)have * sizeof(uint64_t));
    for (uint32_t i = 0; i < k; i++)
        h->descs[b][have + i] = *mg_ring_slot(r, idx + i);
    h->n[b] = have + k;
    h->pull_ring = ring_id;
    h->pull_from = have;
    h->pull_commit = cons + k;
    store_state(h, ST(b, MG_HAND_OP_PULL));
    FAULT(1);
    mg_ring_release(r, k);
    FAULT(2);
    store_state(h, ST(b, MG_HAND_OP_NONE));
    return (int)k;
}

/* mg_hand_push when every entry goes to ring d (steering's reclaim -> free, the muxer ->
 * sent, a worker's all-forwarded burst -> tx, steering's dispatch with one worker): one
 * reserve, block copies instead of per-entry work.  The same journal, the same fault
 * points and the same result as the general path below. */
static int push_one(void *base, struct mg_hand *h, uint32_t a, uint16_t d, uint32_t n)
{
    uint32_t b = a ^ 1u;
    if (d >= h->n_rings)
        return -EINVAL;
    struct mg_ring *r = mg_region_ring_by_id(base, d);
    if (!r)
        return -EINVAL;
    uint32_t prod = __atomic_load_n(&r->prod, __ATOMIC_RELAXED);
    if (r->p_head != prod)
        return -EBUSY;
    uint32_t idx, got = mg_ring_reserve(r, n, &idx);
    h->commit[d] = prod + got;
    const uint64_t *src = h->descs[a];
    uint32_t first = idx & r->mask, to_end = r->size - first;
    uint32_t k1 = got < to_end ? got : to_end;
    memcpy(&r->desc[first], src, (size_t)k1 * sizeof(uint64_t));
    memcpy(&r->desc[0], src + k1, (size_t)(got - k1) * sizeof(uint64_t));
    for (uint32_t j = 0; j < got; j++)
        h->dest[j] = d;
    for (uint32_t j = got; j < n; j++)
        h->dest[j] = MG_HAND_KEEP;
    memcpy(h->descs[b], src + got, (size_t)(n - got) * sizeof(uint64_t));
    h->n[b] = n - got;
    store_state(h, ST(a, MG_HAND_OP_PUSH));
    FAULT(11);
    if (got)
        mg_ring_submit(r, got);
    FAULT(12);
    FAULT(13);
    store_state(h, ST(b, MG_HAND_OP_NONE));
    return (int)got;
}

/* The state word of the hand at slot (*hp) when no operation is under way on it, else
 * -EINVAL (no such hand) or -EBUSY: the start shared by mg_hand_push and mg_hand_push_all. */
static inline int64_t idle_state(void *base, uint32_t slot, struct mg_hand **hp)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (!h)
        return -EINVAL;
    uint32_t s = load_state(h);
    if (ST_OP(s) != MG_HAND_OP_NONE)
        return -EBUSY;
    *hp = h;
    return s;
}

int mg_hand_push(void *base, uint32_t slot, const uint16_t *dest, uint32_t n)
{
    struct mg_hand *h;
    int64_t s = idle_state(base, slot, &h);
    if (s < 0)
        return (int)s;
    uint32_t a = ST_BUF(s), b = a ^ 1u, n_rings = h->n_rings;
    if (n != h->n[a] || n > MG_HAND_MAX)
        return -EINVAL;
    if (n && dest[0] != MG_HAND_KEEP) {
        uint32_t j = 1;
        while (j < n && dest[j] == dest[0])
            j++;
        if (j == n)
            return push_one(base, h, a, dest[0], n);
    }
    /* Validate everything before touching any ring: a bad call changes nothing.  One pass
     * also lists the distinct destinations in order of first appearance (the order the
     * rings are reserved and submitted in) and counts the entries for each. */
    /* commit[d]: prod of ring d once this push is submitted (journal).
     * want[d]:   scratch; entries for d, then slots granted and not yet filled; bit 31
     *            = "reserved, not yet submitted". */
    uint32_t *commit = h->commit, *want = h->commit + n_rings;
    struct mg_ring *rp[MG_HAND_RINGS_MAX]; /* ring of each reserved destination */
    uint16_t dl[MG_HAND_RINGS_MAX];        /* the distinct destinations */
    if (n_rings > MG_HAND_RINGS_MAX)
        return -EINVAL;
    const uint32_t RESERVED = 0x80000000u;
    memset(want, 0, (size_t)n_rings * sizeof *want);
    uint32_t nd = 0;
    for (uint32_t j = 0; j < n; j++) {
        uint16_t d = dest[j];
        if (d == MG_HAND_KEEP)
            continue;
        if (d >= n_rings)
            return -EINVAL;
        if (want[d]++ == 0)
            dl[nd++] = d;
    }
    for (uint32_t q = 0; q < nd; q++) {
        uint16_t d = dl[q];
        struct mg_ring *r = mg_region_ring_by_id(base, d);
        uint32_t prod = __atomic_load_n(&r->prod, __ATOMIC_RELAXED);
        if (r->p_head != prod) {
            /* Someone holds unsubmitted reservations on this ring: undo ours, refuse. */
            for (uint32_t u = 0; u < q; u++) {
                struct mg_ring *ru = rp[dl[u]];
                ru->p_head = __atomic_load_n(&ru->prod, __ATOMIC_RELAXED);
                want[dl[u]] = 0;
            }
            return -EBUSY;
        }
        rp[d] = r;
        uint32_t idx, got = mg_ring_reserve(r, want[d], &idx);
        commit[d] = prod + got;
        want[d] = got | RESERVED;
    }
    /* Fill the slots in hand order (order within a ring is preserved), journal each
     * entry's destination, and build the leftover list in the idle buffer. */
    uint32_t left = 0, pushed = 0;
    for (uint32_t j = 0; j < n; j++) {
        uint16_t d = dest[j];
        uint64_t desc = h->descs[a][j];
        if (d != MG_HAND_KEEP && (want[d] & ~RESERVED)) {
            uint32_t remaining = want[d] & ~RESERVED;
            *mg_ring_slot(rp[d], commit[d] - remaining) = desc;
            want[d]--;
            h->dest[j] = d;
            pushed++;
        } else {
            h->dest[j] = MG_HAND_KEEP;
            h->descs[b][left++] = desc;
        }
    }
    h->n[b] = left;
    store_state(h, ST(a, MG_HAND_OP_PUSH));
    FAULT(11);
    for (uint32_t q = 0; q < nd; q++) {
        uint16_t d = dl[q];
        want[d] = 0;
        struct mg_ring *r = rp[d];
        uint32_t granted = commit[d] - __atomic_load_n(&r->prod, __ATOMIC_RELAXED);
        if (granted)
            mg_ring_submit(r, granted);
        FAULT(12); /* after the first ring's submit */
    }
    FAULT(13);
    store_state(h, ST(b, MG_HAND_OP_NONE));
    return (int)pushed;
}

int mg_hand_push_all(void *base, uint32_t slot, uint16_t d)
{
    struct mg_hand *h;
    int64_t s = idle_state(base, slot, &h);
    if (s < 0)
        return (int)s;
    uint32_t a = ST_BUF(s), n = h->n[a];
    if (n > MG_HAND_MAX || d == MG_HAND_KEEP)
        return -EINVAL;
    return n ? push_one(base, h, a, d, n) : 0;
}

uint64_t *mg_hand_descs(void *base, uint32_t slot, uint32_t *n)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (!h) {
        *n = 0;
        return NULL;
    }
    uint32_t a = ST_BUF(load_state(h));
    *n = h->n[a];
    return h->descs[a];
}

int mg_hand_count(void *base, uint32_t slot)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (!h)
        return -EINVAL;
    return (int)h->n[ST_BUF(load_state(h))];
}

/* The frames in the hand once the move recorded in state s is settled (mg_hand.h). */
static uint32_t settle(void *base, const struct mg_hand *h, uint32_t s, uint64_t *out,
                       uint32_t max)
{
    uint32_t a = ST_BUF(s), n = h->n[a], k = 0;
    if (n > MG_HAND_MAX)
        n = MG_HAND_MAX;
    switch (ST_OP(s)) {
    case MG_HAND_OP_PULL: {
        struct mg_ring *r = mg_region_ring_by_id(base, h->pull_ring);
        if (r && __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE) != h->pull_commit)
            n = h->pull_from < n ? h->pull_from : n; /* still in the ring */
        for (uint32_t j = 0; j < n && k < max; j++)
            out[k++] = h->descs[a][j];
        break;
    }
    case MG_HAND_OP_PUSH:
        for (uint32_t j = 0; j < n && k < max; j++) {
            uint16_t d = h->dest[j];
            struct mg_ring *r = d == MG_HAND_KEEP ? NULL : mg_region_ring_by_id(base, d);
            if (!r || __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE) != h->commit[d])
                out[k++] = h->descs[a][j];
        }
        break;
    default:
        for (uint32_t j = 0; j < n && k < max; j++)
            out[k++] = h->descs[a][j];
    }
    return k;
}

int mg_hand_settled(void *base, uint32_t slot, uint64_t *out, uint32_t max)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (!h)
        return -EINVAL;
    return (int)settle(base, h, load_state(h), out, max);
}

int mg_hand_recover(void *base, uint32_t slot)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (!h)
        return -EINVAL;
    uint32_t s = load_state(h);
    if (ST_OP(s) == MG_HAND_OP_NONE)
        return (int)h->n[ST_BUF(s)];
    uint32_t other = ST_BUF(s) ^ 1u;
    /* Only the idle buffer is written before the flip, so a crash here is retried. */
    h->n[other] = settle(base, h, s, h->descs[other], MG_HAND_MAX);
    store_state(h, ST(other, MG_HAND_OP_NONE));
    return (int)h->n[other];
}

/* ------------------------------------------------------------------ stats journal */

uint64_t *mg_stats_stage(void *base, uint32_t slot)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    uint64_t *s = mg_region_stats(base, slot);
    if (!h || !s)
        return NULL;
    memcpy(h->stats_img, s, sizeof h->stats_img);
    return h->stats_img;
}

/* The journal's state word: 1 from begin (the image is complete) to end (applied). */
static inline __attribute__((always_inline)) void stats_state(void *base, uint32_t slot, uint32_t state)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (h)
        __atomic_store_n(&h->stats_state, state, __ATOMIC_RELEASE);
}

void mg_stats_begin(void *base, uint32_t slot)
{
    stats_state(base, slot, 1);
}

void mg_stats_apply(void *base, uint32_t slot)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    uint64_t *s = mg_region_stats(base, slot);
    if (!h || !s)
        return;
    /* Word by word, relaxed: each reader sees whole words (the stats block's contract). */
    for (uint32_t i = 0; i < MG_STATS_WORDS; i++)
        __atomic_store_n(&s[i], h->stats_img[i], __ATOMIC_RELAXED);
}

void mg_stats_end(void *base, uint32_t slot)
{
    stats_state(base, slot, 0);
}

int mg_stats_pending(void *base, uint32_t slot)
{
    struct mg_hand *h = mg_region_hand(base, slot);
    if (!h)
        return -EINVAL;
    return __atomic_load_n(&h->stats_state, __ATOMIC_ACQUIRE) != 0;
}
