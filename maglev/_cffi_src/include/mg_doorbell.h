/* Doorbell waits and wakes by bell index in a region (layer 5, above mg_shm: the layering
 * is in mg_bell.h).  The doorbell word, the producer's notify and the no-lost-wake-up
 * protocol are in mg_bell.h; the consumer's side of it, mg_bell_wait with fence (E), is
 * here.  Bell indices (MG_BELL_STEERING, ...) and mg_region_bell are in mg_shm.h.
 */
#ifndef MG_DOORBELL_H
#define MG_DOORBELL_H

#include "mg_bell.h"
#include "mg_common.h"

/* Default busy-poll iterations (each a PAUSE and a check of the rings) before sleeping. */
#define MG_BELL_SPIN_DEFAULT 256

/* 1 = an input ring has work, 0 = timed out / interrupted / rung without ring work,
 * -EINVAL bad bell, other -errno from futex.  timeout_ms 0 = only spin. */
int mg_bell_wait(void *base, uint32_t bell, uint32_t spin, int32_t timeout_ms);
/* The C loops' sleep (mg_loop.h, ctl->sleep_until_ns): as mg_bell_wait, but the deadline is
 * a CLOCK_MONOTONIC time, and the answer tells an alert from ring work: 1 = an input ring
 * has work, 2 = an alert is pending (not taken), 0 = the deadline passed or a stale wake-up
 * (the caller looks at the clock and waits again), -EINTR = a signal (the caller returns
 * to let its handler run), -EINVAL bad bell, other -errno from futex. */
int mg_bell_wait_until(void *base, uint32_t bell, uint32_t spin, uint64_t until_ns);
/* One look at the bell without waiting (the adaptive idle poll of mg_loop.h): 1 = an
 * input ring has work, 2 = an alert is pending (not taken), 0 = nothing, -EINVAL bad bell. */
int mg_bell_poll(void *base, uint32_t bell);
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
