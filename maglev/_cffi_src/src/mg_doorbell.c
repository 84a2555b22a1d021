/* Doorbell wait and wake by bell index in a region (protocol and the lost-wake-up argument:
 * mg_bell.h; this unit sits above mg_shm, see the layering there). */
#define _GNU_SOURCE
#include "mg_doorbell.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mg_bell.h"
#include "mg_ring.h"
#include "mg_shm.h"

static int bell_has_work(void *base, const struct mg_bell *b)
{
    if (__atomic_load_n(&b->alert, __ATOMIC_ACQUIRE))
        return 1;
    for (uint32_t i = 0; i < b->n_rings; i++) {
        const struct mg_ring *r = mg_region_ring_by_id(base, b->first_ring + i);
        if (r && mg_ring_has_work(r))
            return 1;
    }
    return 0;
}

/* 2 = an alert is pending, 1 = an input ring has work, 0 = nothing. */
static inline int bell_look(void *base, const struct mg_bell *b)
{
    if (__atomic_load_n(&b->alert, __ATOMIC_ACQUIRE))
        return 2;
    return bell_has_work(base, b);
}

int mg_bell_wait(void *base, uint32_t bell, uint32_t spin, int32_t timeout_ms)
{
    struct mg_bell *b = mg_region_bell(base, bell);
    if (!b || timeout_ms < 0)
        return -EINVAL;
    if (bell_has_work(base, b))
        return 1;
    for (uint32_t i = 0; i < spin; i++) {
        mg_cpu_relax();
        if (bell_has_work(base, b))
            return 1;
    }
    if (timeout_ms == 0)
        return 0;
    uint32_t seq = __atomic_load_n(&b->word, __ATOMIC_ACQUIRE);
    __atomic_store_n(&b->need_wakeup, 1, __ATOMIC_RELAXED);
    /* (E) full fence, pairs with (F) in mg_bell_notify */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (bell_has_work(base, b)) {
        __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
        return 1;
    }
    __atomic_fetch_add(&b->sleeps, 1, __ATOMIC_RELAXED);
    struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000L};
    long rc = mg_bell_futex(&b->word, FUTEX_WAIT, seq, &ts);
    int err = rc < 0 ? errno : 0;
    __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
    if (bell_has_work(base, b))
        return 1;
    if (rc == 0 || err == ETIMEDOUT || err == EINTR || err == EAGAIN)
        return 0;
    return -err;
}

int mg_bell_wait_until(void *base, uint32_t bell, uint32_t spin, uint64_t until_ns)
{
    struct mg_bell *b = mg_region_bell(base, bell);
    if (!b)
        return -EINVAL;
    int w = bell_look(base, b);
    for (uint32_t i = 0; i < spin && !w; i++) {
        mg_cpu_relax();
        w = bell_look(base, b);
    }
    if (w)
        return w;
    uint64_t now = mg_mono_ns();
    if (now >= until_ns)
        return 0;
    uint32_t seq = __atomic_load_n(&b->word, __ATOMIC_ACQUIRE);
    __atomic_store_n(&b->need_wakeup, 1, __ATOMIC_RELAXED);
    /* (E) full fence, pairs with (F) in mg_bell_notify (protocol: mg_bell.h) */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    w = bell_look(base, b);
    if (w) {
        __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
        return w;
    }
    __atomic_fetch_add(&b->sleeps, 1, __ATOMIC_RELAXED);
    uint64_t left = until_ns - now;
    struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u), .tv_nsec = (long)(left % 1000000000u)};
    long rc = mg_bell_futex(&b->word, FUTEX_WAIT, seq, &ts);
    int err = rc < 0 ? errno : 0;
    __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
    w = bell_look(base, b);
    if (w)
        return w;
    if (err == EINTR)
        return -EINTR;
    if (rc == 0 || err == ETIMEDOUT || err == EAGAIN)
        return 0;
    return -err;
}

int mg_bell_poll(void *base, uint32_t bell)
{
    struct mg_bell *b = mg_region_bell(base, bell);
    if (!b)
        return -EINVAL;
    return bell_look(base, b);
}

int mg_bell_ring(void *base, uint32_t bell)
{
    struct mg_bell *b = mg_region_bell(base, bell);
    if (!b)
        return -EINVAL;
    __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
    __atomic_fetch_add(&b->word, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&b->wakeups, 1, __ATOMIC_RELAXED);
    mg_bell_futex(&b->word, FUTEX_WAKE, INT_MAX, NULL);
    return 0;
}

int mg_bell_alert(void *base, uint32_t bell, uint32_t bits)
{
    struct mg_bell *b = mg_region_bell(base, bell);
    if (!b || bits == 0)
        return -EINVAL;
    /* Before the bump (seq_cst): a waiter that sees the new word also sees the bits. */
    __atomic_fetch_or(&b->alert, bits, __ATOMIC_SEQ_CST);
    return mg_bell_ring(base, bell);
}

uint32_t mg_bell_take_alert(void *base, uint32_t bell)
{
    struct mg_bell *b = mg_region_bell(base, bell);
    if (!b || !__atomic_load_n(&b->alert, __ATOMIC_RELAXED))
        return 0;
    return __atomic_exchange_n(&b->alert, 0, __ATOMIC_ACQ_REL);
}
