/* Ring benchmark loops (bench/bench_rings.py; built only into the benchmark module,
 * bench/native/build.py): whole runs in C so the numbers are the
 * ring's, not the interpreter's.  Descriptors carry a sequence number; the consumer
 * counts every out-of-order one.  Full/empty: PAUSE, and sched_yield after a while so
 * two processes sharing one core still make progress.  Bounded by count and deadline
 * (CLOCK_MONOTONIC ns). */
#ifndef MG_RING_BENCH_H
#define MG_RING_BENCH_H

#include "mg_common.h"

struct mg_ring;

uint64_t mg_ring_bench_produce(struct mg_ring *r, uint64_t total, uint32_t burst,
                               uint64_t deadline_ns);
uint64_t mg_ring_bench_consume(struct mg_ring *r, uint64_t total, uint32_t burst,
                               uint64_t deadline_ns, uint64_t *errors);
/* Same thread: enqueue a burst, dequeue it, repeat (no cache-line transfers). */
uint64_t mg_ring_bench_local(struct mg_ring *r, uint64_t total, uint32_t burst,
                             uint64_t *errors);
uint64_t mg_now_ns(void);

#endif
