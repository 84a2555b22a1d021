/* Doorbells: an idle consumer sleeps on a futex instead of burning a core.
 *
 * One doorbell per *consuming actor*, shared by all its input rings: steering (ret rings
 * and the sent ring), the muxer (every tx ring), worker i (its rx ring).  Its input rings
 * are the contiguous ring-id range [first_ring, first_ring + n_rings).  A consumer waiting
 * on several rings therefore sleeps on one word, and any of its producers can wake it.
 *
 * The futex is a plain shared (not FUTEX_PRIVATE) futex on `word`, in shared memory, so
 * processes with different mappings meet on it.
 *
 * Protocol (no lost wake-up):
 *
 *   consumer: mg_bell_wait                   producer: mg_ring_submit -> mg_bell_notify
 *     spin a little, checking the rings         store prod (B)
 *     seq = load word                           full fence                     (F)
 *     store need_wakeup = 1                     if load need_wakeup:
 *     full fence                      (E)           need_wakeup = 0 (exchange)
 *     re-check the rings: work -> return            word += 1
 *     futex_wait(&word, seq, timeout)               futex_wake(&word)
 *     need_wakeup = 0
 *
 * Why no wake-up is lost: (E) and (F) are sequentially consistent fences around a
 * store-then-load on each side (the store-buffering pattern), so they cannot both miss:
 * either the consumer's re-check sees the new prod (it returns without sleeping), or the
 * producer's load sees need_wakeup = 1 (it bumps word and wakes).  In the second case the
 * bump comes after the consumer read seq, because need_wakeup = 1 was stored after that
 * read; so either the consumer is already asleep in the kernel and the wake finds it, or
 * it has not yet entered futex_wait, and the kernel's atomic "word == seq ?" check in
 * futex_wait fails (EAGAIN) and it returns at once.  A stale bump from an older round can
 * only cause an early return, which is harmless: callers loop.  The exchange lets one of
 * several producers sharing a doorbell pay for the syscall, not all of them.  The timeout
 * bounds the sleep anyway, so an actor still serves its control mailbox.
 *
 * Cost on the busy path: one full fence and one load of a line that is rarely written,
 * per submitted burst.
 */
#ifndef MG_DOORBELL_H
#define MG_DOORBELL_H

#include "mg_common.h"

/* Doorbell indices in a region. */
#define MG_BELL_STEERING 0
#define MG_BELL_MUXER 1
#define MG_BELL_WORKER0 2
/* Default busy-poll iterations (each a PAUSE and a check of the rings) before sleeping. */
#define MG_BELL_SPIN_DEFAULT 256

struct mg_bell {
    uint32_t word;        /* futex word, bumped by every wake */
    uint32_t need_wakeup; /* 1 while the consumer is (about to be) asleep */
    uint32_t first_ring;  /* the consumer's input rings (ids), constant */
    uint32_t n_rings;
    uint64_t sleeps;      /* futex waits entered (consumer) */
    uint64_t wakeups;     /* futex wakes issued (any producer) */
    uint32_t alert;       /* MG_BELL_ALERT_* bits for the consumer (mg_bell_alert) */
    uint8_t pad[MG_CACHE_LINE - 36];
};

_Static_assert(sizeof(struct mg_bell) == MG_CACHE_LINE, "a doorbell is one cache line");

void mg_bell_wake_slow(struct mg_bell *b);

static inline void mg_bell_notify(struct mg_bell *b)
{
    /* (F) full fence, pairs with (E) in mg_bell_wait */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (MG_UNLIKELY(__atomic_load_n(&b->need_wakeup, __ATOMIC_RELAXED)))
        mg_bell_wake_slow(b);
}

struct mg_bell *mg_region_bell(void *base, uint32_t bell);
/* 1 = an input ring has work, 0 = timed out / interrupted / rung without ring work,
 * -EINVAL bad bell, other -errno from futex.  timeout_ms 0 = only spin. */
int mg_bell_wait(void *base, uint32_t bell, uint32_t spin, int32_t timeout_ms);
/* Wake the consumer unconditionally (mailbox, stop). */
int mg_bell_ring(void *base, uint32_t bell);

/* Alerts: a request for the consumer that is not ring work (the supervisor asking an
 * actor to stop).  mg_bell_alert ORs `bits` into `alert` and rings; mg_bell_wait treats a
 * pending alert like ring work (returns 1 at once, before or after sleeping), so an alert
 * is never lost: it is set before the word is bumped, and a waiter that read the word
 * after the bump re-checks `alert` before sleeping.  The consumer takes the bits with
 * mg_bell_take_alert (exchange with 0) after every wait, or its next waits return at once. */
#define MG_BELL_ALERT_STOP 1u
int mg_bell_alert(void *base, uint32_t bell, uint32_t bits);
/* The pending alert bits, cleared; 0 = none.  -EINVAL for a bad bell is returned as 0. */
uint32_t mg_bell_take_alert(void *base, uint32_t bell);

#endif
