/* Maglev lookup-table population (Eisenbud et al., NSDI 2016, section 3.4).
 *
 * For backend i with name n_i and table size M (prime):
 *     offset_i = siphash13(K_offset, n_i) mod M
 *     skip_i   = siphash13(K_skip,   n_i) mod (M - 1) + 1
 *     permutation_i[j] = (offset_i + j * skip_i) mod M
 * Backends take turns claiming their next preferred empty slot until the table is full.
 * The permutation is walked incrementally (pos += skip), so memory is O(N + M), never
 * an N x M array.
 *
 * Weights (integers >= 0): each round, backend i adds weight_i to its credit and
 * claims one slot per W_max of credit (W_max = largest weight).  With equal weights
 * every backend claims exactly one slot per round -- the paper's algorithm unchanged.
 * Weight 0 claims nothing.  If every weight is 0 the table is all MG_NO_BACKEND.
 *
 * Order matters: callers pass backends sorted by name (bytes), which makes the table
 * independent of the order backends were listed in (Cilium #13224, Envoy #20703).
 */
#ifndef MG_MAGLEV_H
#define MG_MAGLEV_H

#include "mg_common.h"

#define MG_NO_BACKEND (-1)
/* Largest table size accepted (a prime ~ 16M, 64 MiB of int32 entries). */
#define MG_MAGLEV_MAX_SIZE 16777213u
#define MG_MAGLEV_MAX_BACKENDS 65536u

/* names: the n names concatenated; name_off[i]..name_off[i+1] delimits name i
 * (name_off has n + 1 entries).  table: m int32 entries (out).  counts: n entries (out).
 * Returns 0, -EINVAL (m not prime, too large, n too large, bad offsets) or -ENOMEM. */
int mg_maglev_build(uint32_t m, uint32_t n, const uint8_t *names, const uint32_t *name_off,
                    const uint32_t *weights, int32_t *table, uint32_t *counts);

/* Per-backend (offset, skip) for table size m; exposed for tests and tools. */
int mg_maglev_offset_skip(uint32_t m, const uint8_t *name, size_t len, uint32_t *offset,
                          uint32_t *skip);

int mg_is_prime(uint32_t m);

#endif
