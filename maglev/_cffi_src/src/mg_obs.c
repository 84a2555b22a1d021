/* A worker's metrics page (design in include/mg_obs.h). */
#include "mg_obs.h"

#include <errno.h>
#include <sched.h>
#include <string.h>

#include "mg_stats.h"
#include "mg_tables_pub.h"

#define WORDS(x) ((uint32_t)(sizeof(x) / sizeof(uint64_t)))
/* The header after its sequence word, as words. */
#define HDR_REST(h) ((uint64_t *)&(h)->mono_ns)
#define HDR_REST_WORDS (WORDS(struct mg_obs_page_hdr) - 2)

_Static_assert(sizeof(struct mg_obs_page_hdr) % 8 == 0, "the header is whole words");
_Static_assert(sizeof(struct mg_dp_counter) == 16, "two words per counter");

struct mg_dp *mg_obs_worker_dp(struct mg_worker *w)
{
    return w ? w->dp : NULL;
}

uint64_t mg_obs_page_bytes(void)
{
    return MG_OBS_PAGE_BYTES;
}

/* dst[i] += src[i] over n words (the counter structs are whole words). */
static void add_words(uint64_t *dst, const uint64_t *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        dst[i] += src[i];
}

_Static_assert(sizeof(struct mg_ct_stats) % 8 == 0, "conntrack counters are whole words");
_Static_assert(sizeof(struct mg_frag_stats) % 8 == 0, "fragment counters are whole words");

int mg_obs_page_adopt(const void *page, uint64_t size, struct mg_obs_prev *prev)
{
    if (!page || !prev || size < MG_OBS_PAGE_BYTES)
        return -EINVAL;
    const struct mg_obs_page_hdr *p = page;
    const uint8_t *base = page;
    if (__atomic_load_n(&p->magic, __ATOMIC_ACQUIRE) != MG_OBS_PAGE_MAGIC) {
        memset(&prev->hdr, 0, sizeof prev->hdr);
        return -ENODATA;
    }
    if (prev->vips || prev->backends) { /* second call: the counters, as many as asked */
        uint64_t nv = __atomic_load_n(&p->n_vips, __ATOMIC_RELAXED);
        uint64_t nb = __atomic_load_n(&p->n_backends, __ATOMIC_RELAXED);
        nv = nv < prev->hdr.n_vips ? nv : prev->hdr.n_vips;
        nb = nb < prev->hdr.n_backends ? nb : prev->hdr.n_backends;
        nv = nv < MG_OBS_MAX_VIPS ? nv : MG_OBS_MAX_VIPS;
        nb = nb < MG_OBS_MAX_BACKENDS ? nb : MG_OBS_MAX_BACKENDS;
        if (prev->vips)
            mg_seq_load_words((uint64_t *)prev->vips, (const uint64_t *)(base + MG_OBS_VIPS_OFF), (uint32_t)nv * 2);
        else
            nv = 0;
        if (prev->backends)
            mg_seq_load_words((uint64_t *)prev->backends, (const uint64_t *)(base + MG_OBS_BACKENDS_OFF),
                              (uint32_t)nb * 2);
        else
            nb = 0;
        prev->hdr.n_vips = nv;
        prev->hdr.n_backends = nb;
        return 0;
    }
    memset(&prev->hdr, 0, sizeof prev->hdr);
    mg_seq_load_words((uint64_t *)&prev->hdr.ct, (const uint64_t *)&p->ct, WORDS(struct mg_ct_stats));
    mg_seq_load_words((uint64_t *)&prev->hdr.frag, (const uint64_t *)&p->frag, WORDS(struct mg_frag_stats));
    prev->hdr.tables_generation = __atomic_load_n(&p->tables_generation, __ATOMIC_RELAXED);
    uint64_t nv = __atomic_load_n(&p->n_vips, __ATOMIC_RELAXED);
    uint64_t nb = __atomic_load_n(&p->n_backends, __ATOMIC_RELAXED);
    prev->hdr.n_vips = nv < MG_OBS_MAX_VIPS ? nv : MG_OBS_MAX_VIPS;
    prev->hdr.n_backends = nb < MG_OBS_MAX_BACKENDS ? nb : MG_OBS_MAX_BACKENDS;
    prev->hdr.magic = MG_OBS_PAGE_MAGIC;
    return 0;
}

/* dst[i] = a[i] + b[i] for i < nb, a[i] beyond (counters of a predecessor: b, nb words). */
static void store_sum_words(uint64_t *dst, const uint64_t *a, const uint64_t *b, uint32_t n, uint32_t nb)
{
    for (uint32_t i = 0; i < n; i++)
        __atomic_store_n(&dst[i], a[i] + (i < nb ? b[i] : 0), __ATOMIC_RELAXED);
}

int mg_obs_page_publish(void *page, uint64_t size, void *region_base, struct mg_worker *w,
                        uint64_t mono_ns, const struct mg_obs_prev *prev)
{
    if (!page || size < MG_OBS_PAGE_BYTES || !w || !w->dp)
        return -EINVAL;
    struct mg_obs_page_hdr h = {.magic = MG_OBS_PAGE_MAGIC, .mono_ns = mono_ns};
    const struct mg_dp_stats *d = mg_dp_stats(w->dp);
    h.generation = __atomic_load_n(&w->stats[MG_WS_GENERATION], __ATOMIC_RELAXED); /* own word */
    uint64_t blob_gen = 0;
    if (h.generation) {
        const struct mg_tables_header *t =
            (const struct mg_tables_header *)mg_tables_copy(region_base, (uint32_t)(h.generation & 1));
        h.n_vips = t->n_vips < MG_OBS_MAX_VIPS ? t->n_vips : MG_OBS_MAX_VIPS;
        h.n_backends = t->n_backends < MG_OBS_MAX_BACKENDS ? t->n_backends : MG_OBS_MAX_BACKENDS;
        blob_gen = t->generation;
    }
    h.tables_generation = d->tables_generation;
    if (blob_gen != h.tables_generation)
        h.n_vips = h.n_backends = 0; /* the counters describe other tables: do not name them */
    h.ct = d->ct;
    h.frag = d->frag;
    /* The predecessor's per-VIP/backend counters count on top only for the same tables. */
    uint32_t pv = 0, pb = 0;
    if (prev) { /* a predecessor's totals: the counters go on from there (mg_obs_page_adopt) */
        add_words((uint64_t *)&h.ct, (const uint64_t *)&prev->hdr.ct, WORDS(struct mg_ct_stats));
        add_words((uint64_t *)&h.frag, (const uint64_t *)&prev->hdr.frag, WORDS(struct mg_frag_stats));
        if (prev->hdr.tables_generation && prev->hdr.tables_generation == h.tables_generation) {
            pv = prev->vips ? (uint32_t)prev->hdr.n_vips * 2 : 0;
            pb = prev->backends ? (uint32_t)prev->hdr.n_backends * 2 : 0;
        }
    }
    /* A replacement that has not run a burst yet (no tables in use) shows its predecessor's
     * counters as they were, instead of none: a sum over workers must not dip meanwhile. */
    int as_prev = prev && prev->hdr.tables_generation && !d->tables_generation;
    if (as_prev) {
        h.tables_generation = prev->hdr.tables_generation;
        h.n_vips = prev->vips ? prev->hdr.n_vips : 0;
        h.n_backends = prev->backends ? prev->hdr.n_backends : 0;
    }

    struct mg_obs_page_hdr *p = page;
    uint8_t *base = page;
    uint64_t odd = mg_seq_write_begin(&p->seq);
    __atomic_store_n(&p->magic, MG_OBS_PAGE_MAGIC, __ATOMIC_RELAXED);
    mg_seq_store_words(HDR_REST(p), HDR_REST(&h), HDR_REST_WORDS);
    if (as_prev) {
        if (h.n_vips)
            mg_seq_store_words((uint64_t *)(base + MG_OBS_VIPS_OFF), (const uint64_t *)prev->vips,
                               (uint32_t)h.n_vips * 2);
        if (h.n_backends)
            mg_seq_store_words((uint64_t *)(base + MG_OBS_BACKENDS_OFF), (const uint64_t *)prev->backends,
                               (uint32_t)h.n_backends * 2);
        mg_seq_write_end(&p->seq, odd);
        return 0;
    }
    store_sum_words((uint64_t *)(base + MG_OBS_VIPS_OFF), (const uint64_t *)mg_dp_vip_counters(w->dp),
                    pv ? (const uint64_t *)prev->vips : NULL, (uint32_t)h.n_vips * 2, pv);
    store_sum_words((uint64_t *)(base + MG_OBS_BACKENDS_OFF), (const uint64_t *)mg_dp_backend_counters(w->dp),
                    pb ? (const uint64_t *)prev->backends : NULL, (uint32_t)h.n_backends * 2, pb);
    mg_seq_write_end(&p->seq, odd);
    return 0;
}

int mg_obs_page_read(const void *page, uint64_t size, struct mg_obs_page_hdr *hdr,
                     struct mg_dp_counter *vips, struct mg_dp_counter *backends, uint32_t tries)
{
    if (!page || size < MG_OBS_PAGE_BYTES)
        return -EINVAL;
    const struct mg_obs_page_hdr *p = page;
    const uint8_t *base = page;
    for (uint32_t t = 0; t < tries; t++) {
        uint64_t s = mg_seq_read_begin(&p->seq);
        if (!(s & 1)) {
            hdr->magic = __atomic_load_n(&p->magic, __ATOMIC_RELAXED);
            hdr->seq = s;
            mg_seq_load_words(HDR_REST(hdr), HDR_REST(p), HDR_REST_WORDS);
            /* Bounded before use: a torn header may hold anything until the check below. */
            uint32_t nv = hdr->n_vips < MG_OBS_MAX_VIPS ? (uint32_t)hdr->n_vips : MG_OBS_MAX_VIPS;
            uint32_t nb = hdr->n_backends < MG_OBS_MAX_BACKENDS ? (uint32_t)hdr->n_backends
                                                                : MG_OBS_MAX_BACKENDS;
            mg_seq_load_words((uint64_t *)vips, (const uint64_t *)(base + MG_OBS_VIPS_OFF), nv * 2);
            mg_seq_load_words((uint64_t *)backends, (const uint64_t *)(base + MG_OBS_BACKENDS_OFF), nb * 2);
            if (mg_seq_read_ok(&p->seq, s)) {
                if (hdr->magic != MG_OBS_PAGE_MAGIC)
                    return -ENODATA;
                hdr->n_vips = nv;
                hdr->n_backends = nb;
                return 0;
            }
        }
        if (t & 1)
            sched_yield(); /* the writer may share our core: let it finish */
    }
    return -EAGAIN;
}
