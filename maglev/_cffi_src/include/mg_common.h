/* Shared conventions for every C module of maglev._native.
 *
 * - Functions return a count (>= 0) or -errno; maglev/native.py turns a negative
 *   return into an exception through one message table.
 * - Tunables live in mg_consts.h, each with a comment.
 * - Only C11 __atomic builtins are used for cross-process memory ordering.
 */
#ifndef MG_COMMON_H
#define MG_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MG_LIKELY(x) __builtin_expect(!!(x), 1)
#define MG_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MG_CACHE_LINE 64

/* Prefetch a line about to be read (MG_PREFETCH) or written (MG_PREFETCH_W), into every
 * cache level (PREFETCHT0; PREFETCHW only when the build enables it).
 *
 * A helper that does nothing but prefetch MUST be always_inline: GCC sees
 * __builtin_prefetch as free of side effects, so its IPA pass marks a non-inlined
 * helper `const` and deletes every call to it.  That happened to mg_ct_prefetch and
 * mg_ct_prefetch_entry: mg_dp_burst had no prefetch instruction at all (objdump), and
 * the 1M-flow case paid two DRAM misses per packet in line (docs/datapath.md). */
#define MG_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#define MG_PREFETCH_W(p) __builtin_prefetch((p), 1, 3)

/* CLOCK_MONOTONIC in nanoseconds (stamps, budgets, stall times: one definition for all). */
static inline uint64_t mg_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One spin-wait hint (PAUSE on x86, YIELD on arm64) between two looks at shared memory. */
static inline void mg_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
