/* Maglev table population; see include/mg_maglev.h for the algorithm and its contract. */
#include <stdlib.h>

#include "mg_hash.h"
#include "mg_maglev.h"

int mg_is_prime(uint32_t m)
{
    if (m < 2)
        return 0;
    if (m % 2 == 0)
        return m == 2;
    for (uint32_t d = 3; (uint64_t)d * d <= m; d += 2)
        if (m % d == 0)
            return 0;
    return 1;
}

int mg_maglev_offset_skip(uint32_t m, const uint8_t *name, size_t len, uint32_t *offset,
                          uint32_t *skip)
{
    if (m < 2)
        return -EINVAL;
    uint64_t h1 = mg_siphash13(MG_NAME_KEY_OFFSET_K0, MG_NAME_KEY_OFFSET_K1, name, len);
    uint64_t h2 = mg_siphash13(MG_NAME_KEY_SKIP_K0, MG_NAME_KEY_SKIP_K1, name, len);
    *offset = (uint32_t)(h1 % m);
    *skip = (uint32_t)(h2 % (m - 1) + 1);
    return 0;
}

struct turn {
    uint32_t pos;    /* next permutation position to try */
    uint32_t skip;
    uint64_t credit; /* weighted turns: accumulated weight */
};

/* x mod m for x < 2^48, m < 2^24, via a double-precision quotient estimate (exact to
 * +-1, corrected below): an integer division costs several times more. */
static inline uint32_t mod48(uint64_t x, uint32_t m, double inv_m)
{
    int64_t r = (int64_t)(x - (uint64_t)((double)x * inv_m) * m);
    if (r < 0)
        r += m;
    else if (r >= (int64_t)m)
        r -= m;
    return (uint32_t)r;
}

/* Inverse of a mod m (m prime, 0 < a < m), by the extended Euclidean algorithm. */
static uint32_t inv_mod(uint32_t a, uint32_t m)
{
    int64_t t = 0, nt = 1, r = m, nr = a;
    while (nr) {
        int64_t q = r / nr, tmp;
        tmp = t - q * nt; t = nt; nt = tmp;
        tmp = r - q * nr; r = nr; nr = tmp;
    }
    return (uint32_t)(t < 0 ? t + m : t);
}

int mg_maglev_build(uint32_t m, uint32_t n, const uint8_t *names, const uint32_t *name_off,
                    const uint32_t *weights, int32_t *table, uint32_t *counts)
{
    if (m > MG_MAGLEV_MAX_SIZE || n > MG_MAGLEV_MAX_BACKENDS || !mg_is_prime(m))
        return -EINVAL;
    for (uint32_t i = 0; i < m; i++)
        table[i] = MG_NO_BACKEND;
    if (n == 0)
        return 0;

    uint32_t wmax = 0;
    for (uint32_t i = 0; i < n; i++) {
        counts[i] = 0;
        if (name_off[i + 1] < name_off[i])
            return -EINVAL;
        if (weights[i] > wmax)
            wmax = weights[i];
    }
    if (wmax == 0)
        return 0;

    /* Occupancy bitmap: the probe loop tests bits in m/8 bytes (8 KiB for m = 65537, in
     * L1) instead of 4-byte entries scattered over the whole table. */
    uint64_t *used = calloc((m + 63) / 64, sizeof(uint64_t));
    struct turn *t = malloc(sizeof(*t) * n);
    if (!t || !used) {
        free(t);
        free(used);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        mg_maglev_offset_skip(m, names + name_off[i], name_off[i + 1] - name_off[i], &t[i].pos,
                              &t[i].skip);
        t[i].credit = 0;
    }

    /* Phase 1 walks the permutations until only tail = floor(sqrt(m)) slots are empty.
     * A claim then costs about m / empty probes, so the last slots dominate the build;
     * phase 2 instead finds each claim among the remaining empty slots directly (cost:
     * one multiply per empty slot).  The claimed slot is the same either way, so the
     * table is identical; sqrt(m) balances the two costs. */
    uint32_t tail = 0;
    while ((uint64_t)(tail + 1) * (tail + 1) <= m)
        tail++;
    uint32_t filled = 0;
    uint32_t i = 0;
    {   /* tail < m for every m >= 2, so phase 1 always claims at least one slot */
        for (;;) {
            for (i = 0; i < n; i++) {
                if (weights[i] == 0)
                    continue;
                t[i].credit += weights[i];
                while (t[i].credit >= wmax) {
                    t[i].credit -= wmax;
                    /* m is prime and 1 <= skip < m, so the walk visits every slot: an
                     * empty one is found while filled < m. */
                    uint32_t c = t[i].pos;
                    while (used[c >> 6] & (1ULL << (c & 63))) {
                        c += t[i].skip;
                        if (c >= m)
                            c -= m;
                    }
                    used[c >> 6] |= 1ULL << (c & 63);
                    table[c] = (int32_t)i;
                    counts[i]++;
                    c += t[i].skip;
                    t[i].pos = c >= m ? c - m : c;
                    if (++filled == m - tail)
                        goto phase2;
                }
            }
        }
    }
phase2:;
    /* Phase 1 stopped inside backend i's turn, maybe with credit left for more claims
     * this round; phase 2 resumes exactly there (without adding i's weight again). */
    uint32_t *empty = malloc(sizeof(*empty) * (m - filled ? m - filled : 1));
    uint32_t *off = malloc(sizeof(*off) * n);
    uint32_t *inv = malloc(sizeof(*inv) * n);
    if (!empty || !off || !inv) {
        free(empty); free(off); free(inv); free(t); free(used);
        return -ENOMEM;
    }
    uint32_t ne = 0;
    for (uint32_t s = 0; s < m; s++)
        if (!(used[s >> 6] & (1ULL << (s & 63))))
            empty[ne++] = s;
    for (uint32_t b = 0; b < n; b++) {
        uint32_t sk;
        mg_maglev_offset_skip(m, names + name_off[b], name_off[b + 1] - name_off[b], &off[b],
                              &sk);
        inv[b] = inv_mod(sk, m);
    }
    double inv_m = 1.0 / (double)m;
    int resume = 1;
    while (ne) {
        for (; i < n; i++) {
            if (weights[i] == 0)
                continue;
            if (!resume)
                t[i].credit += weights[i];
            resume = 0;
            while (t[i].credit >= wmax) {
                t[i].credit -= wmax;
                /* Backend i's next claim is the empty slot that comes first in its
                 * permutation: slot s sits at index (s - offset) / skip mod m. */
                uint32_t best = 0, best_k = UINT32_MAX;
                for (uint32_t e = 0; e < ne; e++) {
                    uint32_t s = empty[e];
                    uint32_t d = s >= off[i] ? s - off[i] : s + m - off[i];
                    uint32_t k = mod48((uint64_t)d * inv[i], m, inv_m);
                    if (k < best_k) {
                        best_k = k;
                        best = e;
                    }
                }
                table[empty[best]] = (int32_t)i;
                counts[i]++;
                empty[best] = empty[--ne];
                if (ne == 0)
                    goto done;
            }
        }
        i = 0;
    }
done:
    free(empty);
    free(off);
    free(inv);
    free(t);
    free(used);
    return 0;
}
