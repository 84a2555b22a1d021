/* The doorbell leaf: the shared futex call and the producer's wake (protocol: mg_bell.h). */
#define _GNU_SOURCE
#include "mg_bell.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

long mg_bell_futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts)
{
    /* Shared futex (no FUTEX_PRIVATE_FLAG): waiters and wakers are different processes
     * mapping the same shm page at different addresses; the kernel keys on the page. */
    return syscall(SYS_futex, uaddr, op, val, ts, NULL, 0);
}

void mg_bell_wake_slow(struct mg_bell *b)
{
    /* Only the producer that clears the flag pays for the syscall. */
    if (!__atomic_exchange_n(&b->need_wakeup, 0, __ATOMIC_SEQ_CST))
        return;
    __atomic_fetch_add(&b->word, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&b->wakeups, 1, __ATOMIC_RELAXED);
    mg_bell_futex(&b->word, FUTEX_WAKE, INT_MAX, NULL);
}
