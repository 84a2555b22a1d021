/* Table publication: two copies, quiescent-state reclamation (RCU-style, user space).
 *
 * The config manager (one writer) publishes table blobs; workers read the active copy.
 * Shared state: `generation` (active copy = generation & 1; 0 = nothing published) and,
 * per worker on its own cache line, `seen` = the generation the worker now uses, or
 * MG_TABLES_QUIESCENT when it holds no copy (idle, asleep, just started).
 *
 * Writer (mg_tables_commit, Python Tables.publish):
 *     fence                                                    (J) pairs with (I)
 *     wait until every live worker w: seen[w] == generation or QUIESCENT   (L) acquire
 *     write the idle copy (generation + 1) & 1, its length
 *     store generation + 1                                     (H) release
 * Worker, once per burst (mg_tables_acquire):
 *     g = load generation                                      (G) acquire, pairs with (H)
 *     if seen != g: store seen = g                             (K) release, pairs with (L)
 *     use copy g & 1 until the next acquire
 *
 * (H)/(G): the copy's bytes are written before a worker can see its generation.
 * (K)/(L): a worker's reads of the old copy (previous bursts) happen before the writer
 * sees it moved on and overwrites that copy.  A worker that has seen g only ever reads
 * copy g & 1 or newer, and the writer only rewrites copy (g + 1) & 1 after every live
 * worker has seen g, so no worker reads a copy while it is rewritten.
 *
 * Leaving QUIESCENT is the delicate case: the writer ignored this worker meanwhile, so
 * it may be about to rewrite copy g & 1 for generation g + 2 (having published g + 1).
 * The worker therefore stores seen = g, issues a full fence (I), loads generation again
 * and retries until the value is stable; the writer issues a full fence (J) between
 * publishing g + 1 and reading `seen`.  Store-buffering with SC fences: either the writer
 * reads seen = g (and waits, g < g + 1), or the worker's reload sees g + 1 and retries,
 * so it never settles on a copy the writer is free to overwrite.
 *
 * Dead workers: the caller passes the live workers; a replacement calls
 * mg_tables_quiesce() before its first acquire (it may find its predecessor's value).
 */
#ifndef MG_TABLES_PUB_H
#define MG_TABLES_PUB_H

#include "mg_common.h"

#define MG_TABLES_QUIESCENT UINT64_MAX

struct mg_tables_hdr {
    uint64_t generation;
    uint64_t len[2];
    uint64_t capacity;
    uint8_t pad[MG_CACHE_LINE - 32];
};

struct mg_tables_seen {
    uint64_t seen;
    uint8_t pad[MG_CACHE_LINE - 8];
};

/* Worker side (per burst): the active blob, and its generation in *generation; NULL
 * (generation 0) before the first publication or for a bad worker index. */
const void *mg_tables_acquire(void *region_base, uint32_t worker, uint64_t *generation);
/* Worker holds no copy (idle, or just (re)started). */
void mg_tables_quiesce(void *region_base, uint32_t worker);

/* Writer / anyone. */
uint64_t mg_tables_generation(const void *region_base);
uint64_t mg_tables_size(const void *region_base, uint64_t generation);
uint64_t mg_tables_seen(const void *region_base, uint32_t worker);
/* 1 when worker has seen generation (or is quiescent), else 0 (acquire (L)). */
int mg_tables_has_seen(const void *region_base, uint32_t worker, uint64_t generation);
void mg_tables_fence(void);
uint8_t *mg_tables_copy(void *region_base, uint32_t copy);
/* Make copy (generation & 1), len bytes long, active as `generation` (release (H)). */
int mg_tables_commit(void *region_base, uint64_t generation, uint64_t len);

#endif
