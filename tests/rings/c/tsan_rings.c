/* Thread-sanitizer check of the ring, doorbell and table-publication memory ordering.
 *
 * Built and run by tests/rings/test_tsan.py with -fsanitize=thread: a producer and a
 * consumer thread move N sequence-stamped descriptors through one ring (the consumer
 * sleeps on its doorbell when empty), then a writer publishes table copies while two
 * reader threads verify every byte of the copy they acquired.  TSan reports any data
 * race, i.e. any plain access not ordered by the acquire/release pairs (A)-(D), (G)-(L).
 * (TSan does not model standalone fences, so the SC fences (E)/(F)/(I)/(J) are not
 * checked here; their argument is in the headers.)
 *
 * usage: tsan_rings N_DESCRIPTORS N_PUBLICATIONS
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include "mg_shm.h"
#include "mg_ring.h"
#include "mg_doorbell.h"
#include "mg_tables_pub.h"

static void *base;
static uint64_t N;
static uint64_t errors;

static void *producer(void *arg)
{
    (void)arg;
    struct mg_ring *r = mg_region_ring(base, MG_RING_RX, 0);
    uint64_t seq = 0, buf[64];
    while (seq < N) {
        uint32_t n = 64;
        if (N - seq < n) n = N - seq;
        for (uint32_t i = 0; i < n; i++) buf[i] = seq + i;
        seq += mg_ring_enqueue_burst(r, buf, n);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    struct mg_ring *r = mg_region_ring(base, MG_RING_RX, 0);
    uint64_t seq = 0, buf[64];
    while (seq < N) {
        uint32_t k = mg_ring_dequeue_burst(r, buf, 64);
        if (!k) { mg_bell_wait(base, MG_BELL_WORKER0, 16, 100); continue; }
        for (uint32_t i = 0; i < k; i++) errors += buf[i] != seq + i;
        seq += k;
    }
    return NULL;
}

static int stop;
static void *reader(void *arg)
{
    uint32_t w = (uint32_t)(uintptr_t)arg;
    uint64_t g, bad = 0;
    mg_tables_quiesce(base, w);
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        const uint8_t *p = mg_tables_acquire(base, w, &g);
        if (!p) continue;
        uint64_t len = mg_tables_size(base, g);
        for (uint64_t i = 0; i < len; i++) bad += p[i] != (uint8_t)g;
    }
    __atomic_fetch_add(&errors, bad, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 64;
    N = strtoull(argv[1], NULL, 10);
    uint64_t want_pubs = strtoull(argv[2], NULL, 10);
    struct mg_region_hdr l;
    if (mg_region_layout(2, 64, 256, 4096, &l)) return 1;
    base = aligned_alloc(4096, l.total_size);
    memset(base, 0, l.total_size);
    if (mg_region_init(base, &l)) return 2;
    pthread_t a, b;
    pthread_create(&a, NULL, producer, NULL);
    pthread_create(&b, NULL, consumer, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("ring errors %lu\n", (unsigned long)errors);
    /* tables: 2 readers, one writer */
    pthread_t r0, r1;
    pthread_create(&r0, NULL, reader, (void *)0);
    pthread_create(&r1, NULL, reader, (void *)1);
    uint64_t pubs = 0;
    for (long it = 0; it < 20000000 && pubs < want_pubs; it++) {
        if (!(it & 63)) sched_yield();
        uint64_t cur = mg_tables_generation(base);
        mg_tables_fence();
        int ok = 1;
        for (uint32_t w = 0; w < 2; w++) ok &= mg_tables_has_seen(base, w, cur);
        if (!ok) continue;
        uint8_t *dst = mg_tables_copy(base, (cur + 1) & 1);
        memset(dst, (uint8_t)(cur + 1), 1024);
        mg_tables_commit(base, cur + 1, 1024);
        pubs++;
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    pthread_join(r0, NULL);
    pthread_join(r1, NULL);
    printf("tables publications %lu errors %lu\n", (unsigned long)pubs, (unsigned long)errors);
    return errors != 0 || pubs != want_pubs;
}
