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
 * Figure 12 rebuilds each table for ten failure sets; the ring (Karger) and the per-slot
 * top candidates (Rendezvous) are computed once per backend set so those rebuilds cost
 * O(m) each, with results identical to a rebuild from scratch (tested).
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

/* One Karger ring point; the ring is sorted by (pos, backend). */
struct mg_eval_point {
    uint64_t pos;
    uint32_t backend;
    uint32_t pad;
};

/* Size of the ring's bucket index: start[d] = first point whose top 16 bits are >= d,
 * for d = 0 .. 65536. */
#define MG_EVAL_RING_INDEX 65537

/* Build the ring of all n backends (n * vnodes points, sorted) and its bucket index, once
 * per backend set; mg_eval_karger_lookup then fills tables for any subset of alive
 * backends (failing a backend removes its points from the ring, which is what skipping
 * them does).  ring: n * vnodes entries, start: MG_EVAL_RING_INDEX entries.  Returns 0,
 * -EINVAL (a name longer than MG_EVAL_NAME_MAX, bad offsets, vnodes == 0), -E2BIG (more
 * than MG_EVAL_MAX_POINTS points) or -ENOMEM. */
int mg_eval_karger_ring(uint32_t n, const uint8_t *names, const uint32_t *name_off,
                        uint32_t vnodes, struct mg_eval_point *ring, uint32_t *start);

/* Fill table[0..m) by Karger consistent hashing over the alive backends of a ring from
 * mg_eval_karger_ring (count points).  Returns 0 or -EINVAL (m < 1). */
int mg_eval_karger_lookup(uint32_t m, const struct mg_eval_point *ring, uint32_t count,
                          const uint32_t *start, const uint8_t *alive, int32_t *table);

/* Fill table[0..m) by Rendezvous hashing.  Returns 0, -EINVAL or -ENOMEM. */
int mg_eval_rendezvous_fill(uint32_t m, uint32_t n, const uint8_t *names,
                            const uint32_t *name_off, const uint8_t *alive, int32_t *table);

/* For every slot j, the l backends with the highest scores, best first (score
 * descending, index ascending): top[j * l .. j * l + l).  Entries past n are
 * MG_NO_BACKEND.  Returns 0, -EINVAL (l == 0) or -ENOMEM. */
int mg_eval_rendezvous_top(uint32_t m, uint32_t n, const uint8_t *names,
                           const uint32_t *name_off, uint32_t l, int32_t *top);

/* Rendezvous table for the alive backends from the top lists of mg_eval_rendezvous_top:
 * each slot takes its first alive candidate, which is the alive backend with the highest
 * score; a slot whose l candidates all failed is recomputed over every alive backend.
 * Identical to mg_eval_rendezvous_fill(alive), in O(m * l) instead of O(m * n).  Returns
 * the number of slots recomputed, -EINVAL or -ENOMEM. */
int64_t mg_eval_rendezvous_pick(uint32_t m, uint32_t n, const uint8_t *names,
                                const uint32_t *name_off, uint32_t l, const int32_t *top,
                                const uint8_t *alive, int32_t *table);

/* counts[i] = entries of table[0..m) equal to i, for i < n.  Returns the number of
 * entries that name no backend in 0..n-1 (MG_NO_BACKEND or out of range). */
int64_t mg_eval_count(uint32_t m, const int32_t *table, uint32_t n, uint32_t *counts);

/* Number of slots j where a[j] != remap(b[j]); remap(x) = b_remap[x] when b_remap is not
 * NULL and 0 <= x < n_remap, else x.  (Lets a table built over a subset of backends,
 * indexed 0..k-1, be compared with one indexed over the full set.) */
int64_t mg_eval_diff(uint32_t m, const int32_t *a, const int32_t *b, const int32_t *b_remap,
                     uint32_t n_remap);

#endif
