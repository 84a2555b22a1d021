/* The wake-up floor of this machine: one-way latency from a write in process A to the moment
 * process B, asleep until then, runs -- futex or eventfd, cross-CPU or same CPU, SCHED_OTHER
 * or SCHED_FIFO -- and what the wake costs A (the duration of its wake call).  A pure busy
 * poll ("spin") for reference.  Built and run by bench/bench_wake_floor.py; never asserts.
 * Usage: wake_floor CPU_A CPU_B FIFO(0|1) futex|eventfd|spin N [GAP_US] */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_N 100000

struct shared {
    uint32_t turn[2];
    uint64_t t_write;
    uint64_t lat[MAX_N];  /* written by B: wake-up latency */
    uint64_t cost[MAX_N]; /* written by A: its wake call */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void futex(uint32_t *u, int op, uint32_t v)
{
    syscall(SYS_futex, u, op, v, NULL, NULL, 0);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

enum { FUTEX, EVENTFD, SPIN };

static void kick(struct shared *s, int side, uint32_t val, int mode, const int *efd)
{
    __atomic_store_n(&s->turn[side], val, __ATOMIC_SEQ_CST);
    if (mode == EVENTFD) {
        uint64_t one = 1;
        if (write(efd[side], &one, 8) != 8)
            perror("eventfd write");
    } else if (mode == FUTEX) {
        futex(&s->turn[side], FUTEX_WAKE, 1);
    }
}

static void await(struct shared *s, int side, uint32_t val, int mode, const int *efd)
{
    while (__atomic_load_n(&s->turn[side], __ATOMIC_ACQUIRE) != val) {
        if (mode == EVENTFD) {
            uint64_t v;
            if (read(efd[side], &v, 8) != 8)
                perror("eventfd read");
        } else if (mode == FUTEX) {
            futex(&s->turn[side], FUTEX_WAIT, val - 1);
        } else {
            __builtin_ia32_pause();
        }
    }
}

static void pct(const char *what, uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    printf("\"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}", what,
           v[n / 2] / 1e3, v[n * 9 / 10] / 1e3, v[n * 99 / 100] / 1e3, v[n * 999 / 1000] / 1e3, v[n - 1] / 1e3);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: wake_floor CPU_A CPU_B FIFO futex|eventfd|spin N [GAP_US]\n");
        return 2;
    }
    int cpu[2] = {atoi(argv[1]), atoi(argv[2])}, fifo = atoi(argv[3]);
    int mode = !strcmp(argv[4], "eventfd") ? EVENTFD : !strcmp(argv[4], "spin") ? SPIN : FUTEX;
    int n = atoi(argv[5]), gap_us = argc > 6 ? atoi(argv[6]) : 200;
    if (n < 10 || n > MAX_N)
        return 2;
    struct shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED)
        return 1;
    int efd[2] = {eventfd(0, 0), eventfd(0, 0)};
    pid_t child = fork();
    int me = child == 0; /* 0 = A (writer), 1 = B (sleeper) */
    cpu_set_t cs;
    CPU_ZERO(&cs);
    CPU_SET(cpu[me], &cs);
    sched_setaffinity(0, sizeof cs, &cs);
    if (fifo) {
        struct sched_param sp = {.sched_priority = 10};
        if (sched_setscheduler(0, SCHED_FIFO, &sp))
            perror("SCHED_FIFO");
    }
    for (uint32_t i = 1; i <= (uint32_t)n; i++) {
        if (me == 0) {
            struct timespec d = {0, gap_us * 1000L}; /* B is asleep (or its CPU idle) by then */
            nanosleep(&d, NULL);
            uint64_t t = now_ns();
            s->t_write = t;
            kick(s, 1, i, mode, efd);
            s->cost[i - 1] = now_ns() - t;
            await(s, 0, i, mode, efd);
        } else {
            await(s, 1, i, mode, efd);
            s->lat[i - 1] = now_ns() - s->t_write;
            kick(s, 0, i, mode, efd);
        }
    }
    if (me == 1)
        _exit(0);
    waitpid(child, NULL, 0);
    printf("{\"mode\": \"%s\", \"cpus\": [%d, %d], \"policy\": \"%s\", ", argv[4], cpu[0], cpu[1],
           fifo ? "fifo" : "other");
    pct("wake_us", s->lat, n);
    printf(", ");
    pct("waker_cost_us", s->cost, n);
    printf("}\n");
    return 0;
}
