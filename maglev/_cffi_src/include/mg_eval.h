/* Baselines for the Maglev evaluation (paper section 5.3, Figures 11 and 12): lookup
 * tables of size M filled by Karger consistent hashing and by Rendezvous hashing, so they
 * can be compared with Maglev's on balance and on disruption when backends fail.
 * Evaluation only -- nothing on the data path uses these.
 *
 * Both fill slot j by hashing the slot index:
 *     slot_hash(j) = siphash13(K_slot, u32le(j))
 * Karger: every alive backend i puts `vnodes` points on a 64-bit ring,
 *     point(i, v) = siphash13(K_karger, name_i || u32le(v)),  v = 0 .. vnodes-1
 * and slot j goes to the owner of the first point >= slot_hash(j) (wrapping to the
 * smallest point).  Equal points are ordered by backend index.
 * Rendezvous (highest random weight): slot j goes to the alive backend with the largest
 *     score(i, j) = mix64(siphash13(K_rendezvous, name_i) ^ slot_hash(j)),
 * mix64 being the splitmix64 finalizer; equal scores go to the lower index.
 *
 * The pure-Python reference is maglev/hashing/eval_reference.py; tests compare the two.
 * Names are passed as in mg_maglev_build: concatenated, delimited by name_off[0..n].
 * alive: n bytes, nonzero = backend present; NULL = all present.  With no alive backend
 * the table is all MG_NO_BACKEND.
 */
#ifndef MG_EVAL_H
#define MG_EVAL_H

#include "mg_common.h"

/* "maglev/eval/slot", "maglev/eval/krgr", "maglev/eval/rndv" as little-endian u64 pairs. */
#define MG_EVAL_KEY_SLOT_K0 0x652f76656c67616dULL
#define MG_EVAL_KEY_SLOT_K1 0x746f6c732f6c6176ULL
#define MG_EVAL_KEY_KARGER_K0 0x652f76656c67616dULL
#define MG_EVAL_KEY_KARGER_K1 0x7267726b2f6c6176ULL
#define MG_EVAL_KEY_RENDEZVOUS_K0 0x652f76656c67616dULL
#define MG_EVAL_KEY_RENDEZVOUS_K1 0x76646e722f6c6176ULL

/* Longest backend name accepted by the Karger fill (name || u32 must fit a 256-byte
 * buffer). */
#define MG_EVAL_NAME_MAX 252
/* Most ring points (alive backends x vnodes) the Karger fill builds: 16 Mi points use
 * 512 MiB during the sort. */
#define MG_EVAL_MAX_POINTS (16u << 20)

/* Fill table[0..m) by Karger consistent hashing.  Returns 0, -EINVAL (m < 1, a name
 * longer than MG_EVAL_NAME_MAX, bad offsets, vnodes == 0), -E2BIG (too many points) or
 * -ENOMEM. */
int mg_eval_karger_fill(uint32_t m, uint32_t n, const uint8_t *names, const uint32_t *name_off,
                        const uint8_t *alive, uint32_t vnodes, int32_t *table);

/* Fill table[0..m) by Rendezvous hashing.  Returns 0, -EINVAL or -ENOMEM. */
int mg_eval_rendezvous_fill(uint32_t m, uint32_t n, const uint8_t *names,
                            const uint32_t *name_off, const uint8_t *alive, int32_t *table);

/* counts[i] = entries of table[0..m) equal to i, for i < n.  Returns the number of
 * entries that name no backend in 0..n-1 (MG_NO_BACKEND or out of range). */
int64_t mg_eval_count(uint32_t m, const int32_t *table, uint32_t n, uint32_t *counts);

/* Number of slots j where a[j] != remap(b[j]); remap(x) = b_remap[x] when b_remap is not
 * NULL and 0 <= x < n_remap, else x.  (Lets a table built over a subset of backends,
 * indexed 0..k-1, be compared with one indexed over the full set.) */
int64_t mg_eval_diff(uint32_t m, const int32_t *a, const int32_t *b, const int32_t *b_remap,
                     uint32_t n_remap);

#endif
