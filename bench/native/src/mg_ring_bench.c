/* Ring benchmark loops (see mg_ring_bench.h). */
#define _GNU_SOURCE
#include "mg_ring_bench.h"

#include <sched.h>
#include <time.h>

#include "mg_consts.h"
#include "mg_ring.h"

uint64_t mg_now_ns(void)
{
    return mg_mono_ns();
}

static void backoff(uint32_t *spins)
{
    if (++*spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
        *spins = 0;
    }
}

uint64_t mg_ring_bench_produce(struct mg_ring *r, uint64_t total, uint32_t burst,
                               uint64_t deadline_ns)
{
    uint64_t seq = 0, buf[MG_BURST_MAX];
    uint32_t spins = 0, tick = 0;
    if (burst > MG_BURST_MAX)
        burst = MG_BURST_MAX;
    while (seq < total) {
        uint32_t n = total - seq < burst ? (uint32_t)(total - seq) : burst;
        for (uint32_t i = 0; i < n; i++)
            buf[i] = seq + i;
        uint32_t k = mg_ring_enqueue_burst(r, buf, n);
        seq += k;
        if (k < n) {
            backoff(&spins);
            if (!(++tick & 1023) && mg_now_ns() > deadline_ns)
                break;
        }
    }
    return seq;
}

uint64_t mg_ring_bench_consume(struct mg_ring *r, uint64_t total, uint32_t burst,
                               uint64_t deadline_ns, uint64_t *errors)
{
    uint64_t seq = 0, bad = 0, buf[MG_BURST_MAX];
    uint32_t spins = 0, tick = 0;
    if (burst > MG_BURST_MAX)
        burst = MG_BURST_MAX;
    while (seq < total) {
        uint32_t k = mg_ring_dequeue_burst(r, buf, burst);
        if (!k) {
            backoff(&spins);
            if (!(++tick & 1023) && mg_now_ns() > deadline_ns)
                break;
            continue;
        }
        for (uint32_t i = 0; i < k; i++)
            bad += buf[i] != seq + i;
        seq += k;
    }
    *errors = bad;
    return seq;
}

uint64_t mg_ring_bench_local(struct mg_ring *r, uint64_t total, uint32_t burst,
                             uint64_t *errors)
{
    uint64_t seq = 0, got = 0, bad = 0, buf[MG_BURST_MAX];
    if (burst > MG_BURST_MAX)
        burst = MG_BURST_MAX;
    while (got < total) {
        uint32_t n = total - seq < burst ? (uint32_t)(total - seq) : burst;
        for (uint32_t i = 0; i < n; i++)
            buf[i] = seq + i;
        seq += mg_ring_enqueue_burst(r, buf, n);
        uint32_t k = mg_ring_dequeue_burst(r, buf, burst);
        for (uint32_t i = 0; i < k; i++)
            bad += buf[i] != got + i;
        got += k;
        if (!k && !n)
            break;
    }
    *errors = bad;
    return got;
}
