/* Region layout, initialisation, validation and the small per-actor areas. */
#include "mg_shm.h"

#include "mg_bell.h"
#include "mg_frame.h"
#include "mg_layout.h"
#include "mg_ring.h"
#include "mg_tables_pub.h"

#include <pthread.h>

_Static_assert(sizeof(pthread_mutex_t) <= MG_SLOT_LIFE_WORDS * sizeof(uint64_t),
               "a pthread mutex fits the slot line's life words");

static uint64_t page_up(uint64_t x)
{
    return (x + MG_PAGE - 1) & ~(uint64_t)(MG_PAGE - 1);
}

static uint32_t pow2_up(uint32_t x)
{
    uint32_t p = MG_RING_MIN;
    while (p < x)
        p <<= 1;
    return p;
}

int mg_region_layout(uint32_t n_workers, uint32_t n_frames, uint32_t ring_size,
                     uint64_t tables_bytes, struct mg_region_hdr *out)
{
    if (n_workers < 1 || n_workers > MG_MAX_WORKERS || n_frames < 1 ||
        n_frames > MG_MAX_FRAMES || ring_size < MG_RING_MIN || ring_size > MG_RING_MAX ||
        (ring_size & (ring_size - 1)) || tables_bytes > MG_TABLES_MAX)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->magic = MG_REGION_MAGIC;
    out->version = MG_REGION_VERSION;
    out->hdr_size = MG_REGION_HDR_SIZE;
    out->n_workers = n_workers;
    out->n_frames = n_frames;
    out->frame_size = MG_FRAME_SIZE;
    out->ring_size = ring_size;
    out->free_ring_size = pow2_up(n_frames);
    out->n_rings = 4 * n_workers + 2;
    out->n_bells = MG_BELL_WORKER0 + n_workers;
    out->n_slots = MG_SLOT_WORKER0 + n_workers;

    uint64_t off = MG_REGION_HDR_SIZE;
    out->pool_off = off;
    off = page_up(off + (uint64_t)n_frames * MG_FRAME_SIZE);
    out->rings_off = off;
    out->ring_stride = mg_ring_bytes(ring_size);
    off = page_up(off + (uint64_t)(3 * n_workers + 1) * out->ring_stride);
    out->free_ring_off = off;
    off = page_up(off + mg_ring_bytes(out->free_ring_size));
    out->spare_rings_off = off;
    out->spare_ring_stride = mg_ring_bytes(MG_SPARE_RING_SIZE);
    off = page_up(off + (uint64_t)n_workers * out->spare_ring_stride);
    out->bells_off = off;
    off = page_up(off + (uint64_t)out->n_bells * sizeof(struct mg_bell));
    out->hands_off = off;
    out->hand_stride = mg_layout_hand_bytes(out->n_rings);
    off = page_up(off + (uint64_t)out->n_slots * out->hand_stride);
    out->slots_off = off;
    off = page_up(off + (uint64_t)out->n_slots * sizeof(struct mg_slot_line));
    out->stats_off = off;
    off = page_up(off + (uint64_t)out->n_slots * MG_STATS_WORDS * sizeof(uint64_t));
    out->tables_off = off;
    off = page_up(off + sizeof(struct mg_tables_hdr) +
                  (uint64_t)n_workers * sizeof(struct mg_tables_seen));
    out->tables_bytes = tables_bytes;
    out->tables_copy_off[0] = off;
    off = page_up(off + tables_bytes);
    out->tables_copy_off[1] = off;
    off = page_up(off + tables_bytes);
    out->total_size = off;
    return 0;
}

static const struct mg_region_hdr *hdr_c(const void *base)
{
    return (const struct mg_region_hdr *)base;
}

static struct mg_region_hdr *hdr(void *base)
{
    return (struct mg_region_hdr *)base;
}

uint8_t *mg_region_pool(void *base)
{
    return (uint8_t *)base + hdr(base)->pool_off;
}

uint32_t mg_region_ring_id(const void *base, uint32_t kind, uint32_t i)
{
    uint32_t n = hdr_c(base)->n_workers;
    switch (kind) {
    case MG_RING_RX:
    case MG_RING_TX:
    case MG_RING_RET:
        return i < n ? kind * n + i : UINT32_MAX;
    case MG_RING_SENT:
        return 3 * n;
    case MG_RING_FREE:
        return 3 * n + 1;
    case MG_RING_SPARE:
        return i < n ? 3 * n + 2 + i : UINT32_MAX;
    default:
        return UINT32_MAX;
    }
}

int mg_region_ring_kind(const void *base, uint32_t id, uint32_t *kind, uint32_t *i)
{
    uint32_t n = hdr_c(base)->n_workers;
    if (id < 3 * n) {
        *kind = id / n;
        *i = id % n;
    } else if (id == 3 * n) {
        *kind = MG_RING_SENT;
        *i = 0;
    } else if (id == 3 * n + 1) {
        *kind = MG_RING_FREE;
        *i = 0;
    } else if (id < 4 * n + 2) {
        *kind = MG_RING_SPARE;
        *i = id - (3 * n + 2);
    } else {
        return -EINVAL;
    }
    return 0;
}

struct mg_ring *mg_region_ring_by_id(void *base, uint32_t id)
{
    const struct mg_region_hdr *h = hdr_c(base);
    if (id < 3 * h->n_workers + 1)
        return (struct mg_ring *)((uint8_t *)base + h->rings_off + id * h->ring_stride);
    if (id == 3 * h->n_workers + 1)
        return (struct mg_ring *)((uint8_t *)base + h->free_ring_off);
    if (id < 4 * h->n_workers + 2)
        return (struct mg_ring *)((uint8_t *)base + h->spare_rings_off +
                                  (id - 3 * h->n_workers - 2) * h->spare_ring_stride);
    return NULL;
}

struct mg_ring *mg_region_ring(void *base, uint32_t kind, uint32_t i)
{
    uint32_t id = mg_region_ring_id(base, kind, i);
    return id == UINT32_MAX ? NULL : mg_region_ring_by_id(base, id);
}

struct mg_bell *mg_region_bell(void *base, uint32_t bell)
{
    const struct mg_region_hdr *h = hdr_c(base);
    if (bell >= h->n_bells)
        return NULL;
    return (struct mg_bell *)((uint8_t *)base + h->bells_off) + bell;
}

struct mg_hand *mg_region_hand(void *base, uint32_t slot)
{
    const struct mg_region_hdr *h = hdr_c(base);
    if (slot >= h->n_slots)
        return NULL;
    return (struct mg_hand *)((uint8_t *)base + h->hands_off + slot * h->hand_stride);
}

struct mg_slot_line *mg_region_slot(void *base, uint32_t slot)
{
    const struct mg_region_hdr *h = hdr_c(base);
    if (slot >= h->n_slots)
        return NULL;
    return (struct mg_slot_line *)((uint8_t *)base + h->slots_off) + slot;
}

int mg_slot_claim(void *base, uint32_t slot)
{
    struct mg_slot_line *s = mg_region_slot(base, slot);
    if (!s)
        return -EINVAL;
    pthread_mutex_t *m = (pthread_mutex_t *)(void *)s->life;
    int rc = pthread_mutex_trylock(m);
    if (rc == EOWNERDEAD) /* a dead predecessor's: ours now */
        rc = pthread_mutex_consistent(m);
    return rc == EDEADLK ? 0 : -rc; /* EDEADLK: this thread holds it already */
}

int mg_slot_release(void *base, uint32_t slot)
{
    struct mg_slot_line *s = mg_region_slot(base, slot);
    if (!s)
        return -EINVAL;
    return -pthread_mutex_unlock((pthread_mutex_t *)(void *)s->life);
}

int mg_slot_dead(const void *base, uint32_t slot)
{
    struct mg_slot_line *s = mg_region_slot((void *)base, slot);
    if (!s)
        return -EINVAL;
    /* glibc's mutex word (the first int): the owner's thread id; when the owner exits
     * holding it the kernel (robust list) leaves FUTEX_OWNER_DIED and no thread id, until
     * the next claim (pthread_mutex_trylock: EOWNERDEAD) writes the new owner's id. */
    uint32_t word = __atomic_load_n((const uint32_t *)(const void *)s->life, __ATOMIC_ACQUIRE);
    return (word & 0x40000000u) && !(word & 0x3fffffffu); /* FUTEX_OWNER_DIED, FUTEX_TID_MASK */
}

uint64_t *mg_region_stats(void *base, uint32_t slot)
{
    const struct mg_region_hdr *h = hdr_c(base);
    if (slot >= h->n_slots)
        return NULL;
    return (uint64_t *)((uint8_t *)base + h->stats_off) + (size_t)slot * MG_STATS_WORDS;
}

void mg_heartbeat_set(void *base, uint32_t slot, uint64_t ns)
{
    struct mg_slot_line *s = mg_region_slot(base, slot);
    if (s)
        __atomic_store_n(&s->heartbeat_ns, ns, __ATOMIC_RELEASE);
}

uint64_t mg_heartbeat_get(const void *base, uint32_t slot)
{
    struct mg_slot_line *s = mg_region_slot((void *)base, slot);
    return s ? __atomic_load_n(&s->heartbeat_ns, __ATOMIC_ACQUIRE) : 0;
}

/* Doorbell of the consumer of ring `id`, or -1 for the free ring (steering's alone) and
 * the spare rings (a worker looks at its spare ring at every burst; nobody waits on it). */
static int ring_bell(uint32_t n_workers, uint32_t id)
{
    if (id < n_workers)
        return MG_BELL_WORKER0 + id; /* rx i -> worker i */
    if (id < 2 * n_workers)
        return MG_BELL_MUXER; /* tx */
    if (id <= 3 * n_workers)
        return MG_BELL_STEERING; /* ret, sent */
    return -1;
}

int mg_region_init(void *base, const struct mg_region_hdr *layout)
{
    struct mg_region_hdr check;
    if (mg_region_layout(layout->n_workers, layout->n_frames, layout->ring_size,
                         layout->tables_bytes, &check) < 0 ||
        check.total_size != layout->total_size)
        return -EINVAL;
    struct mg_region_hdr *h = hdr(base);
    memcpy(h, &check, sizeof check);
    h->ready = 0;
    uint32_t n = h->n_workers;

    for (uint32_t id = 0; id < h->n_rings; id++) {
        struct mg_ring *r = mg_region_ring_by_id(base, id);
        int bell = ring_bell(n, id);
        int64_t bell_off = 0;
        if (bell >= 0)
            bell_off = (int64_t)((uint8_t *)mg_region_bell(base, (uint32_t)bell) - (uint8_t *)r);
        uint32_t size = id == 3 * n + 1 ? h->free_ring_size
                        : id >= 3 * n + 2 ? MG_SPARE_RING_SIZE : h->ring_size;
        int rc = mg_ring_init(r, size, id, bell_off);
        if (rc < 0)
            return rc;
    }
    for (uint32_t b = 0; b < h->n_bells; b++) {
        struct mg_bell *bell = mg_region_bell(base, b);
        memset(bell, 0, sizeof *bell);
        if (b == MG_BELL_STEERING) {
            bell->first_ring = 2 * n;
            bell->n_rings = n + 1;
        } else if (b == MG_BELL_MUXER) {
            bell->first_ring = n;
            bell->n_rings = n;
        } else {
            bell->first_ring = b - MG_BELL_WORKER0;
            bell->n_rings = 1;
        }
    }
    for (uint32_t s = 0; s < h->n_slots; s++) {
        struct mg_hand *hd = mg_region_hand(base, s);
        memset(hd, 0, mg_layout_hand_bytes(h->n_rings));
        hd->n_rings = h->n_rings;
    }
    pthread_mutexattr_t ma;
    if (pthread_mutexattr_init(&ma) != 0)
        return -ENOMEM;
    int mrc = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    if (!mrc)
        mrc = pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    for (uint32_t s = 0; s < h->n_slots && !mrc; s++) {
        struct mg_slot_line *sl = mg_region_slot(base, s);
        memset(sl, 0, sizeof *sl);
        mrc = pthread_mutex_init((pthread_mutex_t *)(void *)sl->life, &ma);
    }
    pthread_mutexattr_destroy(&ma);
    if (mrc)
        return -mrc;
    struct mg_tables_hdr *t = (struct mg_tables_hdr *)((uint8_t *)base + h->tables_off);
    memset(t, 0, sizeof *t);
    t->capacity = h->tables_bytes;
    struct mg_tables_seen *seen = (struct mg_tables_seen *)(t + 1);
    for (uint32_t w = 0; w < n; w++)
        seen[w].seen = MG_TABLES_QUIESCENT;

    /* Every frame starts on the free list, with a received packet's headroom. */
    uint8_t *pool = mg_region_pool(base);
    struct mg_ring *fr = mg_region_ring(base, MG_RING_FREE, 0);
    for (uint32_t f = 0; f < h->n_frames; f++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, f);
        memset(m, 0, sizeof *m);
        m->data_off = MG_FRAME_HEADROOM;
        m->backend_index = -1;
        fr->desc[f] = f;
    }
    fr->prod = fr->p_head = h->n_frames;
    fr->c_cached_prod = 0;
    /* Publish the initialised region: attach() acquires `ready`. */
    __atomic_store_n(&h->ready, MG_REGION_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int mg_region_check(const void *base, uint64_t size)
{
    const struct mg_region_hdr *h = hdr_c(base);
    if (size < MG_REGION_HDR_SIZE || h->magic != MG_REGION_MAGIC ||
        h->version != MG_REGION_VERSION)
        return -EPROTO;
    if (__atomic_load_n(&h->ready, __ATOMIC_ACQUIRE) != MG_REGION_MAGIC)
        return -EAGAIN;
    struct mg_region_hdr want;
    if (mg_region_layout(h->n_workers, h->n_frames, h->ring_size, h->tables_bytes, &want) < 0)
        return -EINVAL;
    want.ready = h->ready;
    if (memcmp(&want, h, sizeof want) != 0 || h->total_size > size)
        return -EINVAL;
    return 0;
}
