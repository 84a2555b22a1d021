/* Karger and Rendezvous table fills for the evaluation; see include/mg_eval.h. */
#include <stdlib.h>

#include "mg_eval.h"
#include "mg_hash.h"
#include "mg_maglev.h"

/* splitmix64's finalizer: a cheap, well-mixing bijection on 64 bits.  Rendezvous needs
 * n x m scores (65M at m = 65537, n = 1000), so a full SipHash per score would dominate;
 * each backend's and each slot's SipHash are computed once and combined with this. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t slot_hash(uint32_t j)
{
    uint8_t b[4] = {(uint8_t)j, (uint8_t)(j >> 8), (uint8_t)(j >> 16), (uint8_t)(j >> 24)};
    return mg_siphash13(MG_EVAL_KEY_SLOT_K0, MG_EVAL_KEY_SLOT_K1, b, 4);
}

static int check_names(uint32_t n, const uint32_t *name_off)
{
    for (uint32_t i = 0; i < n; i++)
        if (name_off[i + 1] < name_off[i])
            return -EINVAL;
    return 0;
}

/* LSD radix sort of points by pos, 16 bits per pass.  Stable, so points generated in
 * backend order keep backend order among equal positions (the documented tie rule). */
static int sort_points(struct mg_eval_point *p, size_t count)
{
    struct mg_eval_point *tmp = malloc(sizeof(*tmp) * (count ? count : 1));
    size_t *hist = malloc(sizeof(*hist) * 65536);
    if (!tmp || !hist) {
        free(tmp);
        free(hist);
        return -ENOMEM;
    }
    struct mg_eval_point *src = p, *dst = tmp;
    for (int shift = 0; shift < 64; shift += 16) {
        memset(hist, 0, sizeof(*hist) * 65536);
        for (size_t k = 0; k < count; k++)
            hist[(src[k].pos >> shift) & 0xffff]++;
        size_t sum = 0;
        for (size_t d = 0; d < 65536; d++) {
            size_t c = hist[d];
            hist[d] = sum;
            sum += c;
        }
        for (size_t k = 0; k < count; k++)
            dst[hist[(src[k].pos >> shift) & 0xffff]++] = src[k];
        struct mg_eval_point *t = src;
        src = dst;
        dst = t;
    }
    /* Four passes: the sorted data is back in p. */
    free(tmp);
    free(hist);
    return 0;
}

int mg_eval_karger_ring(uint32_t n, const uint8_t *names, const uint32_t *name_off,
                        uint32_t vnodes, struct mg_eval_point *ring, uint32_t *start)
{
    if (vnodes == 0 || check_names(n, name_off) < 0)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (name_off[i + 1] - name_off[i] > MG_EVAL_NAME_MAX)
            return -EINVAL;
    if ((uint64_t)n * vnodes > MG_EVAL_MAX_POINTS)
        return -E2BIG;
    size_t count = (size_t)n * vnodes, k = 0;
    uint8_t buf[MG_EVAL_NAME_MAX + 4];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = name_off[i + 1] - name_off[i];
        memcpy(buf, names + name_off[i], len);
        for (uint32_t v = 0; v < vnodes; v++) {
            buf[len] = (uint8_t)v;
            buf[len + 1] = (uint8_t)(v >> 8);
            buf[len + 2] = (uint8_t)(v >> 16);
            buf[len + 3] = (uint8_t)(v >> 24);
            ring[k].pos = mg_siphash13(MG_EVAL_KEY_KARGER_K0, MG_EVAL_KEY_KARGER_K1, buf, len + 4);
            ring[k].backend = i;
            ring[k].pad = 0;
            k++;
        }
    }
    int rc = sort_points(ring, count);
    if (rc < 0)
        return rc;
    /* Index by the top 16 bits so a lookup scans the few points of one bucket (1M
     * points: ~16 per bucket) instead of binary-searching 16 MiB. */
    size_t at = 0;
    for (uint32_t d = 0; d < MG_EVAL_RING_INDEX; d++) {
        while (at < count && (ring[at].pos >> 48) < d)
            at++;
        start[d] = (uint32_t)at;
    }
    return 0;
}

int mg_eval_karger_lookup(uint32_t m, const struct mg_eval_point *ring, uint32_t count,
                          const uint32_t *start, const uint8_t *alive, int32_t *table)
{
    if (m < 1)
        return -EINVAL;
    uint32_t live = 0;
    for (uint32_t k = 0; k < count && !live; k++)
        live = !alive || alive[ring[k].backend];
    if (!live) {
        for (uint32_t j = 0; j < m; j++)
            table[j] = MG_NO_BACKEND;
        return 0;
    }
    for (uint32_t j = 0; j < m; j++) {
        uint64_t h = slot_hash(j);
        size_t lo = start[h >> 48], hi = start[(h >> 48) + 1];
        while (lo < hi && ring[lo].pos < h)
            lo++;
        /* lo == hi: no point >= h in this bucket; the successor is the first point of a
         * later bucket, ring[hi], or the wrap-around to ring[0]. */
        if (lo == count)
            lo = 0;
        /* A failed backend's points are not on the ring: walk on to the next alive one
         * (one exists, checked above). */
        while (alive && !alive[ring[lo].backend])
            lo = lo + 1 == count ? 0 : lo + 1;
        table[j] = (int32_t)ring[lo].backend;
    }
    return 0;
}

/* Hash of every backend name for Rendezvous scores. */
static uint64_t *backend_hashes(uint32_t n, const uint8_t *names, const uint32_t *name_off)
{
    uint64_t *hb = malloc(sizeof(*hb) * (n ? n : 1));
    if (hb)
        for (uint32_t i = 0; i < n; i++)
            hb[i] = mg_siphash13(MG_EVAL_KEY_RENDEZVOUS_K0, MG_EVAL_KEY_RENDEZVOUS_K1,
                                 names + name_off[i], name_off[i + 1] - name_off[i]);
    return hb;
}

int mg_eval_rendezvous_top(uint32_t m, uint32_t n, const uint8_t *names,
                           const uint32_t *name_off, uint32_t l, int32_t *top)
{
    if (l == 0 || check_names(n, name_off) < 0)
        return -EINVAL;
    uint64_t *hb = backend_hashes(n, names, name_off);
    uint64_t *best = malloc(sizeof(*best) * l);
    if (!hb || !best) {
        free(hb);
        free(best);
        return -ENOMEM;
    }
    for (uint32_t j = 0; j < m; j++) {
        int32_t *t = top + (size_t)j * l;
        uint32_t have = 0;
        uint64_t h = slot_hash(j);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t s = mix64(hb[i] ^ h);
            /* Sorted insert; strict comparisons keep the lower index first among equal
             * scores, since indices arrive in increasing order. */
            if (have == l && s <= best[l - 1])
                continue;
            uint32_t q = have < l ? have++ : l - 1;
            while (q > 0 && s > best[q - 1]) {
                best[q] = best[q - 1];
                t[q] = t[q - 1];
                q--;
            }
            best[q] = s;
            t[q] = (int32_t)i;
        }
        for (uint32_t q = have; q < l; q++)
            t[q] = MG_NO_BACKEND;
    }
    free(hb);
    free(best);
    return 0;
}

int64_t mg_eval_rendezvous_pick(uint32_t m, uint32_t n, const uint8_t *names,
                                const uint32_t *name_off, uint32_t l, const int32_t *top,
                                const uint8_t *alive, int32_t *table)
{
    if (l == 0 || check_names(n, name_off) < 0)
        return -EINVAL;
    uint64_t *hb = NULL;
    int64_t rescans = 0;
    for (uint32_t j = 0; j < m; j++) {
        const int32_t *t = top + (size_t)j * l;
        int32_t win = MG_NO_BACKEND;
        uint32_t q = 0;
        for (; q < l && t[q] >= 0; q++) {
            if (!alive || alive[t[q]]) {
                win = t[q];
                break;
            }
        }
        /* Every candidate failed and the list was full: other backends may be alive. */
        if (win < 0 && q == l && n > l) {
            if (!hb && !(hb = backend_hashes(n, names, name_off)))
                return -ENOMEM;
            uint64_t h = slot_hash(j), best = 0;
            for (uint32_t i = 0; i < n; i++) {
                if (alive && !alive[i])
                    continue;
                uint64_t s = mix64(hb[i] ^ h);
                if (win < 0 || s > best) {
                    best = s;
                    win = (int32_t)i;
                }
            }
            rescans++;
        }
        table[j] = win;
    }
    free(hb);
    return rescans;
}

int mg_eval_rendezvous_fill(uint32_t m, uint32_t n, const uint8_t *names,
                            const uint32_t *name_off, const uint8_t *alive, int32_t *table)
{
    if (check_names(n, name_off) < 0)
        return -EINVAL;
    uint64_t *hb = malloc(sizeof(*hb) * (n ? n : 1));
    int32_t *idx = malloc(sizeof(*idx) * (n ? n : 1));
    if (!hb || !idx) {
        free(hb);
        free(idx);
        return -ENOMEM;
    }
    /* Compact the alive backends so the inner loop has no branch on liveness. */
    uint32_t live = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (alive && !alive[i])
            continue;
        hb[live] = mg_siphash13(MG_EVAL_KEY_RENDEZVOUS_K0, MG_EVAL_KEY_RENDEZVOUS_K1,
                                names + name_off[i], name_off[i + 1] - name_off[i]);
        idx[live] = (int32_t)i;
        live++;
    }
    for (uint32_t j = 0; j < m; j++) {
        if (live == 0) {
            table[j] = MG_NO_BACKEND;
            continue;
        }
        uint64_t h = slot_hash(j);
        uint64_t best = mix64(hb[0] ^ h);
        uint32_t win = 0;
        for (uint32_t k = 1; k < live; k++) {
            uint64_t s = mix64(hb[k] ^ h);
            if (s > best) { /* strict: ties keep the lower index */
                best = s;
                win = k;
            }
        }
        table[j] = idx[win];
    }
    free(hb);
    free(idx);
    return 0;
}

int64_t mg_eval_count(uint32_t m, const int32_t *table, uint32_t n, uint32_t *counts)
{
    int64_t none = 0;
    for (uint32_t i = 0; i < n; i++)
        counts[i] = 0;
    for (uint32_t j = 0; j < m; j++) {
        int32_t e = table[j];
        if (e >= 0 && (uint32_t)e < n)
            counts[e]++;
        else
            none++;
    }
    return none;
}

int64_t mg_eval_diff(uint32_t m, const int32_t *a, const int32_t *b, const int32_t *b_remap,
                     uint32_t n_remap)
{
    int64_t changed = 0;
    for (uint32_t j = 0; j < m; j++) {
        int32_t x = b[j];
        if (b_remap && x >= 0 && (uint32_t)x < n_remap)
            x = b_remap[x];
        changed += a[j] != x;
    }
    return changed;
}
