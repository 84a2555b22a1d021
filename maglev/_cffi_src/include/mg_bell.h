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
/* Layering of the shared-memory C units (lowest first; each includes only units below it,
 * and calls only functions defined below it; `farm-studio look` checks there is no circle):
 *
 *   1. mg_bell.h / mg_bell.c     the doorbell word (struct mg_bell), mg_bell_notify (inline,
 *                                fence (F)) and mg_bell_wake_slow: what a ring submit needs,
 *                                nothing about regions or rings.  (this file)
 *   2. mg_ring.h / mg_ring.c     ring verbs; includes only the bell leaf.
 *   3. mg_layout.h               types only: the per-slot structs of a region (the hand and
 *                                its size, MG_STATS_WORDS), so that the region does not need
 *                                the hand unit to lay itself out.
 *   4. mg_shm.h / mg_shm.c       region layout, init, check, lookups (rings, bells, hands,
 *                                stats, slots); includes ring + bell + layout.
 *   5. mg_hand.h / mg_hand.c     pull / push / recover, stats journal       } above mg_shm:
 *      mg_doorbell.h / .c        mg_bell_wait (checks the bell's rings),    } they find rings,
 *                                mg_bell_ring / _alert / _take_alert        } bells, hands by
 *                                by bell index in a region                  } index in a region
 *   Everything else (mg_steer, mg_worker, mg_loop, mg_stats, mg_trace, ...) sits above these.
 * docs/rings.md, "Layering", has the same picture.
 */
#ifndef MG_BELL_H
#define MG_BELL_H

#include "mg_common.h"

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

/* The futex syscall on a shared (not FUTEX_PRIVATE) futex word (mg_bell.c). */
struct timespec;
long mg_bell_futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts);
/* Producer's slow path of mg_bell_notify: clear need_wakeup, bump the word, wake. */
void mg_bell_wake_slow(struct mg_bell *b);

static inline void mg_bell_notify(struct mg_bell *b)
{
    /* (F) full fence, pairs with (E) in mg_bell_wait */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (MG_UNLIKELY(__atomic_load_n(&b->need_wakeup, __ATOMIC_RELAXED)))
        mg_bell_wake_slow(b);
}

#endif
