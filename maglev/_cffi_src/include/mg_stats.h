/* Every shared-memory word Python reads or writes goes through here (issue 12: C owns
 * every shared-memory word; Python never computes an offset into shared memory).
 *
 * Two disciplines, each labelled at every barrier:
 *
 *   per-word atomics   the actors' stats blocks (mg_shm.h: MG_STATS_WORDS u64 per slot,
 *                      one writer each).  Every word is a counter or a gauge that means
 *                      something alone, so a reader needs each word whole, not the block
 *                      at one instant: mg_stats_load / mg_stats_snapshot read each word
 *                      with one atomic load, mg_stats_store writes one with one atomic
 *                      store.  The C kernels' own `stats[i] += n` are single-writer
 *                      aligned u64 stores, whole on every target we build for.
 *   seqlock            groups of words that only mean something together (a trace
 *                      request, the generation context, a worker's metrics page): the
 *                      single writer makes the sequence word odd, writes, makes it even;
 *                      a reader copies, then re-checks the sequence word *in shared
 *                      memory* and retries when it moved or was odd.
 */
#ifndef MG_STATS_H
#define MG_STATS_H

#include "mg_common.h"

/* Word `word` of slot `slot`'s stats block (acquire: what the writer did before its
 * release store is visible).  0 when slot or word is out of range. */
uint64_t mg_stats_load(void *base, uint32_t slot, uint32_t word);
/* Set it (release).  -EINVAL when out of range.  Only the slot's one writer may call it. */
int mg_stats_store(void *base, uint32_t slot, uint32_t word, uint64_t value);
/* Copy the whole block into out[MG_STATS_WORDS], one atomic load per word.  -EINVAL when
 * slot is out of range. */
int mg_stats_snapshot(void *base, uint32_t slot, uint64_t *out);

/* Seqlock writer: begin returns the odd value written (a writer that died mid-write left
 * the word odd: the next writer moves past it), end makes it even again. */
static inline uint64_t mg_seq_write_begin(uint64_t *seq)
{
    uint64_t odd = (__atomic_load_n(seq, __ATOMIC_RELAXED) + 1) | 1;
    __atomic_store_n(seq, odd, __ATOMIC_RELAXED);
    /* release fence: the odd sequence is ordered before every data store that follows */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return odd;
}

static inline void mg_seq_write_end(uint64_t *seq, uint64_t odd)
{
    /* release: every data store above is visible before the even sequence */
    __atomic_store_n(seq, odd + 1, __ATOMIC_RELEASE);
}

/* Data words inside a seqlock section: relaxed atomics (a racing reader may see them
 * torn as a group, never as a word, and the sequence check throws such a copy away). */
static inline void mg_seq_store_words(uint64_t *dst, const uint64_t *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        __atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
}

static inline void mg_seq_load_words(uint64_t *dst, const uint64_t *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

/* Seqlock reader, first half: the even sequence to compare against later, or 1 (odd:
 * a write is in progress, retry). */
static inline uint64_t mg_seq_read_begin(const uint64_t *seq)
{
    /* acquire: the data loads that follow are not hoisted above this load */
    return __atomic_load_n(seq, __ATOMIC_ACQUIRE);
}

/* Second half: 1 when the copy made since mg_seq_read_begin returned s is whole. */
static inline int mg_seq_read_ok(const uint64_t *seq, uint64_t s)
{
    /* acquire fence: the data loads above complete before the sequence is re-read */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return !(s & 1) && __atomic_load_n(seq, __ATOMIC_RELAXED) == s;
}

/* Copy n words published under *seq into dst; 0, or -EAGAIN after `tries` torn reads. */
int mg_seq_read(const uint64_t *seq, const uint64_t *src, uint64_t *dst, uint32_t n, uint32_t tries);
/* Write n words under *seq (single writer). */
void mg_seq_write(uint64_t *seq, uint64_t *dst, const uint64_t *src, uint32_t n);

#endif
