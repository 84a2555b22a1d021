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

    uint32_t filled = 0;
    for (;;) {
        for (uint32_t i = 0; i < n; i++) {
            if (weights[i] == 0)
                continue;
            t[i].credit += weights[i];
            while (t[i].credit >= wmax) {
                t[i].credit -= wmax;
                /* m is prime and 1 <= skip < m, so the walk visits every slot: an empty
                 * one is found while filled < m. */
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
                if (++filled == m)
                    goto done;
            }
        }
    }
done:
    free(t);
    free(used);
    return 0;
}
