/* Stats words and seqlocks (design in include/mg_stats.h). */
#include "mg_stats.h"

#include <errno.h>
#include <sched.h>

#include "mg_shm.h"

uint64_t mg_stats_load(void *base, uint32_t slot, uint32_t word)
{
    uint64_t *b = mg_region_stats(base, slot);
    if (!b || word >= MG_STATS_WORDS)
        return 0;
    return __atomic_load_n(&b[word], __ATOMIC_ACQUIRE); /* acquire: pairs with the store */
}

int mg_stats_store(void *base, uint32_t slot, uint32_t word, uint64_t value)
{
    uint64_t *b = mg_region_stats(base, slot);
    if (!b || word >= MG_STATS_WORDS)
        return -EINVAL;
    __atomic_store_n(&b[word], value, __ATOMIC_RELEASE); /* release: pairs with the load */
    return 0;
}

int mg_stats_snapshot(void *base, uint32_t slot, uint64_t *out)
{
    uint64_t *b = mg_region_stats(base, slot);
    if (!b)
        return -EINVAL;
    for (uint32_t i = 0; i < MG_STATS_WORDS; i++)
        out[i] = __atomic_load_n(&b[i], __ATOMIC_ACQUIRE); /* acquire, word by word */
    return 0;
}

int mg_seq_read(const uint64_t *seq, const uint64_t *src, uint64_t *dst, uint32_t n, uint32_t tries)
{
    for (uint32_t t = 0; t < tries; t++) {
        uint64_t s = mg_seq_read_begin(seq);
        if (!(s & 1)) {
            mg_seq_load_words(dst, src, n);
            if (mg_seq_read_ok(seq, s))
                return 0;
        }
        if (t & 1)
            sched_yield(); /* the writer may share our core: let it finish */
    }
    return -EAGAIN;
}

void mg_seq_write(uint64_t *seq, uint64_t *dst, const uint64_t *src, uint32_t n)
{
    uint64_t odd = mg_seq_write_begin(seq);
    mg_seq_store_words(dst, src, n);
    mg_seq_write_end(seq, odd);
}
