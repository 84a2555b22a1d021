/* Actor hot loops (design in include/mg_loop.h). */
#define _GNU_SOURCE
#include "mg_loop.h"

#include <sched.h>
#include <time.h>

#include "mg_doorbell.h"
#include "mg_hand.h"
#include "mg_ring.h"
#include "mg_shm.h"
#include "mg_tables_pub.h"

uint64_t mg_loop_now_ns(void)
{
    return mg_mono_ns();
}

uint32_t mg_lat_bucket(uint64_t ns)
{
    if (ns < 256)
        return 0;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(ns); /* >= 8 */
    uint32_t b = 1 + (e - 8) * 4 + (uint32_t)((ns >> (e - 2)) & 3);
    return b < MG_MS_LAT_N ? b : MG_MS_LAT_N - 1;
}

uint64_t mg_lat_floor_ns(uint32_t b)
{
    if (b == 0)
        return 0;
    if (b >= MG_MS_LAT_N)
        b = MG_MS_LAT_N - 1;
    uint32_t e = 8 + (b - 1) / 4;
    return (4ull + ((b - 1) & 3)) << (e - 2);
}

static void record_latency(void *base, uint32_t slot, uint64_t *hist, uint64_t now)
{
    uint32_t cnt;
    const uint64_t *descs = mg_hand_descs(base, slot, &cnt);
    uint8_t *pool = mg_region_pool(base);
    for (uint32_t j = 0; j < cnt; j++) {
        uint64_t rx = mg_frame_meta(pool, (uint32_t)descs[j])->rx_ts_ns;
        hist[mg_lat_bucket(rx && now > rx ? now - rx : 0)]++;
    }
}

/* Bookkeeping shared by the three loops: count a burst, say whether a budget is used up. */
struct budget {
    uint64_t deadline;
    uint32_t max_bursts;
};

static void budget_start(struct budget *b, const struct mg_loop_ctl *c, uint64_t now,
                         struct mg_loop_out *o)
{
    b->deadline = now + c->budget_ns;
    b->max_bursts = c->max_bursts;
    memset(o, 0, sizeof *o);
    o->last_ns = now;
}

/* After a burst that moved n packets: 1 when the loop must return (reason set). */
static int budget_done(const struct budget *b, const struct mg_loop_ctl *c, struct mg_loop_out *o,
                       uint32_t n)
{
    o->last_ns = mg_loop_now_ns();
    if (n) {
        o->packets += n;
        o->bursts++;
        if (c->idle) {
            c->idle->last_work_ns = o->last_ns;
            c->idle->stretch += n;
        }
    }
    if (c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED)) {
        o->reason = MG_LOOP_STOP;
        return 1;
    }
    if (o->last_ns >= b->deadline || (b->max_bursts && o->bursts >= b->max_bursts)) {
        o->reason = MG_LOOP_BUDGET;
        return 1;
    }
    if (c->sleep_until_ns && c->tick_ns && o->packets && o->last_ns >= c->tick_ns) {
        o->reason = MG_LOOP_DEADLINE; /* housekeeping due (a trickle stays in the call) */
        return 1;
    }
    return 0;
}

/* How long a loop that sleeps in the call (ctl->sleep_until_ns) may sleep: to Python's
 * deadline, or to its next housekeeping tick once the call moved a packet. */
static inline uint64_t sleep_bound(const struct mg_loop_ctl *c, const struct mg_loop_out *o)
{
    uint64_t until = c->sleep_until_ns;
    if (o->packets && c->tick_ns && c->tick_ns < until)
        until = c->tick_ns;
    return until;
}

static int finish(struct mg_loop_out *o, uint32_t reason)
{
    o->reason = reason;
    o->last_ns = mg_loop_now_ns();
    return 0;
}

/* One pause between two looks at the rings: PAUSEs when the actor is alone on its CPU,
 * sched_yield() when it shares it (the sibling -- often the producer -- runs first). */
static inline void idle_relax(const struct mg_loop_ctl *c)
{
    if (c->idle_mode == MG_IDLE_YIELD) {
        sched_yield();
        return;
    }
    for (int i = 0; i < 16; i++)
        mg_cpu_relax();
}

/* The adaptive idle poll (mg_loop.h): the loop found nothing to do.  1: the doorbell's
 * rings have work, go on; 0: return, out->reason set -- MG_LOOP_IDLE once idle_ns passed
 * since the last packet moved (or idle polling is off), MG_LOOP_BUDGET at the deadline or
 * on a pending alert (Python takes it), MG_LOOP_STOP. */
static int idle_poll(void *base, const struct budget *b, const struct mg_loop_ctl *c,
                     struct mg_loop_out *o)
{
    struct mg_idle_state *st = c->idle;
    uint64_t now = mg_loop_now_ns();
    o->last_ns = now;
    if (!c->idle_ns || !st || now < st->backoff_until_ns) {
        o->reason = MG_LOOP_IDLE;
        return 0;
    }
    uint64_t until = st->last_work_ns + c->idle_ns;
    uint64_t gap = c->idle_gap_us ? (uint64_t)c->idle_gap_us * 1000u : MG_IDLE_GAP_NS;
    uint64_t start = now;
    int rc = 0;
    for (uint64_t prev = now;; prev = now) {
        now = mg_loop_now_ns();
        o->last_ns = now;
        if (now - prev > gap) { /* something else ran here: stop polling, back off */
            uint64_t bo = st->backoff_ns * 2;
            st->backoff_ns = bo < MG_IDLE_BACKOFF_NS ? MG_IDLE_BACKOFF_NS
                             : bo > MG_IDLE_BACKOFF_MAX_NS ? MG_IDLE_BACKOFF_MAX_NS : bo;
            st->backoff_until_ns = now + st->backoff_ns;
            st->contended++;
            o->reason = MG_LOOP_IDLE;
            return 0;
        }
        if (c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED)) {
            o->reason = MG_LOOP_STOP;
            return 0;
        }
        if (now >= until) {
            o->reason = MG_LOOP_IDLE;
            break;
        }
        if (now >= b->deadline) {
            o->reason = MG_LOOP_BUDGET;
            break;
        }
        int w = 0;
        for (int i = 0; i < 8 && !w; i++) {
            w = mg_bell_poll(base, c->bell);
            if (!w)
                idle_relax(c);
        }
        if (w == 1) {
            rc = 1;
            break;
        }
        if (w != 0) { /* an alert (stop) or a bad bell: Python looks */
            o->reason = MG_LOOP_BUDGET;
            return 0;
        }
    }
    /* a whole window polled (4 gaps or more) without contention: the back-off decays;
     * a poll that work ended proves less (at a steady trickle the window never runs out,
     * and on a busy machine the back-off then keeps growing to its maximum) */
    if (!rc && o->reason == MG_LOOP_IDLE && now - start >= 4 * gap) {
        st->backoff_ns /= 2;
        if (st->backoff_ns < MG_IDLE_BACKOFF_NS)
            st->backoff_ns = 0;
    }
    return rc;
}

/* Nap under load (mg_loop.h, ctl->nap_ns): the stretch since the loop last found nothing
 * moved at least nap_min packets (a quarter of that when the last empty look napped too)
 * -- a stream heavy enough that sleeping on the clock costs less than being woken through
 * the doorbell. */
static inline int nap_due(const struct mg_loop_ctl *c)
{
    if (!c->nap_ns || !c->idle)
        return 0;
    uint64_t min = c->nap_min ? c->nap_min : MG_NAP_MIN;
    if (c->idle->napping)
        min /= 4;
    return c->idle->stretch >= (min ? min : 1);
}

/* Sleep ctl->nap_ns on the clock (never past the budget's deadline), need_wakeup left
 * clear: the producers do not wake us, our CPU's timer does.  1: look at the rings again;
 * 0: return, out->reason set (MG_LOOP_STOP; MG_LOOP_BUDGET at the deadline or on an
 * alert, which Python takes). */
static int nap(void *base, const struct budget *b, const struct mg_loop_ctl *c,
               struct mg_loop_out *o)
{
    struct mg_idle_state *st = c->idle;
    st->stretch = 0;
    st->napping = 1;
    uint64_t now = mg_loop_now_ns();
    uint64_t until = now + c->nap_ns;
    if (until > b->deadline)
        until = b->deadline;
    if (until > now) {
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                              .tv_nsec = (long)(until % 1000000000u)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        st->naps++;
    }
    now = mg_loop_now_ns();
    o->last_ns = now;
    if (c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED)) {
        o->reason = MG_LOOP_STOP;
        return 0;
    }
    if (now >= b->deadline || mg_bell_poll(base, c->bell) == 2) {
        o->reason = MG_LOOP_BUDGET;
        return 0;
    }
    return 1;
}

/* The loop found nothing to do: nap (a heavy stream), else the adaptive idle poll.  1: go
 * on; 0: return, out->reason set (MG_LOOP_IDLE: the caller sleeps on its doorbell). */
static int idle_wait(void *base, const struct budget *b, const struct mg_loop_ctl *c,
                     struct mg_loop_out *o)
{
    if (nap_due(c))
        return nap(base, b, c, o);
    if (c->idle)
        c->idle->stretch = c->idle->napping = 0;
    return idle_poll(base, b, c, o);
}

/* The top of one turn of a sleep in the call (bell_sleep, nic_sleep): the time to sleep
 * to in *until, or 0 with out->reason set (MG_LOOP_STOP; MG_LOOP_DEADLINE when it is
 * already there). */
static int sleep_turn(const struct mg_loop_ctl *c, struct mg_loop_out *o, uint64_t *until)
{
    *until = sleep_bound(c, o);
    uint64_t now = mg_loop_now_ns();
    o->last_ns = now;
    if (c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED)) {
        o->reason = MG_LOOP_STOP;
        return 0;
    }
    if (now >= *until) {
        o->reason = MG_LOOP_DEADLINE;
        return 0;
    }
    return 1;
}

/* Woken by work during a sleep in the call: count it; the busy budget starts again. */
static int sleep_woken(struct budget *b, const struct mg_loop_ctl *c, struct mg_loop_out *o)
{
    o->wakes++;
    uint64_t now = mg_loop_now_ns();
    o->last_ns = now;
    b->deadline = now + c->budget_ns;
    return 1;
}

/* Sleep on the doorbell in the call (ctl->sleep_until_ns, mg_loop.h): the loop found
 * nothing to do and its idle window (if any) is over.  1: woken by ring work, go on (the
 * busy budget starts again); 0: return, out->reason set (MG_LOOP_DEADLINE, MG_LOOP_STOP,
 * MG_LOOP_BUDGET on an alert or a signal); < 0: -errno from the futex. */
static int bell_sleep(void *base, struct budget *b, const struct mg_loop_ctl *c,
                      struct mg_loop_out *o)
{
    for (;;) {
        uint64_t until;
        if (!sleep_turn(c, o, &until))
            return 0;
        o->sleeps++;
        int w = mg_bell_wait_until(base, c->bell, c->spin, until);
        if (w == 1)
            return sleep_woken(b, c, o);
        if (w == 2 || w == -EINTR) { /* an alert or a signal: Python takes it */
            o->last_ns = mg_loop_now_ns();
            o->reason = MG_LOOP_BUDGET;
            return 0;
        }
        if (w < 0)
            return w;
        /* 0: the deadline (the next turn returns) or a stale wake-up (sleep again) */
    }
}

/* The loop found nothing to do: idle_wait, then -- when it says MG_LOOP_IDLE and Python
 * gave a deadline -- sleep on the doorbell in the call.  1: go on; 0: return, out->reason
 * set; < 0: -errno. */
static int rest(void *base, struct budget *b, const struct mg_loop_ctl *c, struct mg_loop_out *o)
{
    int r = idle_wait(base, b, c, o);
    if (r || o->reason != MG_LOOP_IDLE || !c->sleep_until_ns)
        return r;
    return bell_sleep(base, b, c, o);
}

/* Pacing: packets of a paced source due by `now` and not produced yet. */
static uint64_t paced_due(const struct mg_loop_gen *src, uint64_t now)
{
    uint64_t made = mg_gen_count(src->gen) - src->paced_from;
    if (now <= src->t0_ns)
        return 0;
    uint64_t want = (uint64_t)((unsigned __int128)(now - src->t0_ns) * src->rate / 1000000000u);
    return want > made ? want - made : 0;
}

/* A paced source has nothing due: wait for its next packet's time (1: go on) or return
 * (0, out->reason set) at the budget's deadline, on an alert or a stop.  It sleeps on the
 * clock to the due time (clock_nanosleep; with steering's timer slack at 1 us the sleep is
 * as fine as the pace, so a paced steering never sleeps in steps coarser than the pace)
 * and polls (idle_relax) only the last MG_PACE_SPIN_NS.  The packet is stamped when it is
 * filled, after this wait, so steering's own wake-up does not count in the latency. */
static int pace_wait(void *base, const struct mg_loop_gen *src, struct budget *b,
                     const struct mg_loop_ctl *c, struct mg_loop_out *o)
{
    uint64_t made = mg_gen_count(src->gen) - src->paced_from;
    uint64_t next = src->t0_ns + (uint64_t)(((unsigned __int128)(made + 1) * 1000000000u +
                                              src->rate - 1) / src->rate);
    /* sleeping in the call: Python's deadlines bound the wait, not the busy budget */
    uint64_t bound = c->sleep_until_ns ? sleep_bound(c, o) : b->deadline;
    for (;;) {
        uint64_t now = mg_loop_now_ns();
        o->last_ns = now;
        if (now >= next) {
            if (c->sleep_until_ns)
                b->deadline = now + c->budget_ns;
            return 1;
        }
        if (c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED)) {
            o->reason = MG_LOOP_STOP;
            return 0;
        }
        if (now >= bound) {
            o->reason = c->sleep_until_ns ? MG_LOOP_DEADLINE : MG_LOOP_BUDGET;
            return 0;
        }
        if (mg_bell_poll(base, c->bell) == 2) {
            o->reason = MG_LOOP_BUDGET;
            return 0;
        }
        if (next - now <= MG_PACE_SPIN_NS) {
            idle_relax(c);
            continue;
        }
        uint64_t until = next < bound ? next : bound;
        if (until - now > MG_PACE_LOOK_NS) /* a slow pace: look at the alert every ms */
            until = now + MG_PACE_LOOK_NS;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                              .tv_nsec = (long)(until % 1000000000u)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}

/* Steering's reclaim in the loop: the sent ring is left to mg_steer_take_hot (frames
 * reused while their lines are cached) unless it is half full or back pressure holds
 * packets in the hand -- then nothing would take from it soon: drain it to free, so the
 * muxer never waits for room on it. */
static int loop_reclaim(struct mg_steer *s, void *base)
{
    const struct mg_ring *sent = mg_region_ring_by_id(base, s->sent_id);
    int holding = mg_hand_count(base, s->slot);
    if (holding != 0 || !sent || mg_ring_count(sent) * 2 >= sent->size)
        return mg_steer_reclaim(s, base);
    return mg_steer_reclaim_ret(s, base);
}


/* The checks and set-up shared by the steering loops: the frame pool, or NULL when an
 * argument is out of range. */
static inline uint8_t *steer_start(struct mg_steer *s, void *base, const struct mg_loop_ctl *ctl,
                                   struct mg_loop_out *out, struct budget *b)
{
    if (!s || !base || !ctl || !out || ctl->burst == 0 || ctl->burst > MG_BURST_MAX ||
        ctl->spares > MG_SPARE_RING_SIZE)
        return NULL;
    budget_start(b, ctl, mg_loop_now_ns(), out);
    return mg_region_pool(base);
}

/* Start of a steering round, shared by the generator and NIC loops: free what came home
 * (hot: the generator loop's loop_reclaim), top up the spares (the loop runs only while
 * not draining), then send first what back pressure left in the hand (order within a
 * flow), and again while that empties the hand within the budget.  0: take a new burst;
 * 1: the loop returns *ret. */
static inline int steer_round(struct mg_steer *s, void *base, int hot, const struct budget *b,
                              const struct mg_loop_ctl *ctl, struct mg_loop_out *out, int *ret)
{
again:;
    int rc = hot ? loop_reclaim(s, base) : mg_steer_reclaim(s, base);
    if (rc >= 0)
        rc = mg_steer_spares(s, base, ctl->spares);
    int holding = rc < 0 ? rc : mg_hand_count(base, s->slot);
    if (holding <= 0) {
        *ret = holding;
        return holding < 0;
    }
    int left = mg_steer_dispatch(s, base, (uint32_t)holding, 0);
    if (left < 0) {
        *ret = left;
        return 1;
    }
    if (left) { /* rings still full: let the workers run */
        *ret = finish(out, MG_LOOP_STALL);
        return 1;
    }
    if (budget_done(b, ctl, out, 0)) {
        *ret = 0;
        return 1;
    }
    goto again;
}

/* After a source filled k of the frames taken into the hand: hand them to the workers
 * (k, or a negative errno).  On a source error every frame goes back: the pool stays whole. */
static inline int steer_filled(struct mg_steer *s, void *base, int k)
{
    if (k < 0) {
        mg_steer_dispatch(s, base, 0, 0);
        return k;
    }
    int rc = mg_steer_dispatch(s, base, (uint32_t)k, 1);
    return rc < 0 ? rc : k;
}

/* A muxer round up to the burst in the hand, shared by mg_mux_loop and mg_mux_loop_nic:
 * first what the sent ring had no room for last time, then a new burst collected from the
 * workers (latency recorded on request).  0: *ret packets are in the hand; 1: the loop
 * returns *ret. */
static inline int mux_round(struct mg_mux *m, void *base, struct budget *b,
                            const struct mg_loop_ctl *ctl, struct mg_loop_out *out, int *ret)
{
again:;
    int holding = mg_hand_count(base, m->slot);
    if (holding > 0) { /* the sent ring was full last time */
        int left = mg_mux_done(m, base, 0, 0);
        if (left < 0) {
            *ret = left;
            return 1;
        }
        if (left == holding) {
            *ret = finish(out, MG_LOOP_STALL);
            return 1;
        }
        if (budget_done(b, ctl, out, 0)) {
            *ret = 0;
            return 1;
        }
        goto again;
    }
    int n = holding < 0 ? holding : mg_mux_collect(m, base, ctl->burst);
    if (n < 0) {
        *ret = n;
        return 1;
    }
    if (n == 0) {
        int r = rest(base, b, ctl, out);
        if (r > 0)
            goto again;
        *ret = r;
        return 1;
    }
    if (MG_UNLIKELY(ctl->lat_hist != NULL))
        record_latency(base, m->slot, ctl->lat_hist, mg_loop_now_ns());
    *ret = n;
    return 0;
}

int mg_steer_loop(struct mg_steer *s, void *base, struct mg_loop_gen *src,
                  const struct mg_loop_ctl *ctl, struct mg_loop_out *out)
{
    struct budget b;
    uint8_t *pool = src && src->gen ? steer_start(s, base, ctl, out, &b) : NULL;
    if (!pool)
        return -EINVAL;
    int ret;
    while (!steer_round(s, base, 1, &b, ctl, out, &ret)) {
        uint64_t now = out->last_ns;
        if (src->left == 0 || (src->deadline_ns && now >= src->deadline_ns))
            return finish(out, MG_LOOP_EOF);
        uint32_t want = ctl->burst;
        if (src->left < want)
            want = (uint32_t)src->left;
        if (src->rate) { /* paced: only what is due; else wait for the next packet's time */
            now = mg_loop_now_ns();
            uint64_t due = paced_due(src, now);
            if (due == 0) {
                if (!pace_wait(base, src, &b, ctl, out))
                    return 0;
                continue;
            }
            if (due < want)
                want = (uint32_t)due;
        }
        int n = mg_steer_take_hot(s, base, want);
        if (n < 0)
            return n;
        if (n == 0) { /* no free frame: they come home on ret/sent, which ring the bell */
            int r = rest(base, &b, ctl, out);
            if (r > 0)
                continue;
            return r;
        }
        uint32_t cnt;
        uint64_t *descs = mg_hand_descs(base, s->slot, &cnt);
        int k = steer_filled(s, base, mg_gen_fill(src->gen, pool, descs, (uint32_t)n, now));
        if (k < 0)
            return k;
        if (src->left != UINT64_MAX)
            src->left -= (uint64_t)k;
        if (budget_done(&b, ctl, out, (uint32_t)k))
            return 0;
    }
    return ret;
}

int mg_worker_loop(struct mg_worker *w, void *base, const struct mg_loop_ctl *ctl,
                   struct mg_loop_out *out)
{
    if (!w || !base || !ctl || !out)
        return -EINVAL;
    struct budget b;
    budget_start(&b, ctl, mg_loop_now_ns(), out);
    for (;;) {
        int rc = mg_worker_burst(w, base, out->last_ns);
        if (rc == -EAGAIN)
            return finish(out, MG_LOOP_STALL);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            if (!ctl->idle_ns && !nap_due(ctl) && !ctl->sleep_until_ns) {
                if (ctl->idle)
                    ctl->idle->stretch = ctl->idle->napping = 0;
                return finish(out, MG_LOOP_IDLE);
            }
            /* polling, napping or sleeping holds no table generation: a table update
             * need not wait for it */
            mg_tables_quiesce(base, w->worker);
            int r = rest(base, &b, ctl, out);
            if (r > 0)
                continue;
            return r;
        }
        if (budget_done(&b, ctl, out, (uint32_t)rc))
            return 0;
    }
}

int mg_mux_loop(struct mg_mux *m, void *base, const struct mg_loop_ctl *ctl,
                struct mg_loop_out *out)
{
    if (!m || !base || !ctl || !out || ctl->burst == 0 || ctl->burst > MG_HAND_MAX)
        return -EINVAL;
    struct budget b;
    budget_start(&b, ctl, mg_loop_now_ns(), out);
    int n;
    while (!mux_round(m, base, &b, ctl, out, &n)) {
        int left = mg_mux_done(m, base, (uint32_t)n, 0); /* the sink takes everything */
        if (left < 0)
            return left;
        if (budget_done(&b, ctl, out, (uint32_t)n))
            return 0;
    }
    return n;
}

/* ---- NIC sources and sinks (mg_loop.h) --------------------------------------------- */
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mg_afpacket.h"
#include "mg_xsk.h"

/* ---- the doorbell as a pipe (mg_loop.h) ---- */
#define BELLPIPE_LOOK_NS 500000000ull /* the helper's longest doorbell sleep: it looks at stop */

int mg_bellpipe_run(struct mg_bellpipe *p)
{
    if (!p || p->rfd < 0 || p->wfd < 0 || !mg_region_bell(p->base, p->bell))
        return -EINVAL;
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        if (!__atomic_exchange_n(&p->armed, 0, __ATOMIC_ACQ_REL)) {
            struct timespec ts = {.tv_sec = 1, .tv_nsec = 0};
            mg_bell_futex(&p->armed, FUTEX_WAIT, 0, &ts); /* until armed (or stop) */
            continue;
        }
        while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
            int w = mg_bell_wait_until(p->base, p->bell, 0, mg_mono_ns() + BELLPIPE_LOOK_NS);
            if (w == 1 || w == 2) {
                __atomic_fetch_add(&p->signals, 1, __ATOMIC_RELAXED);
                char byte = 0;
                ssize_t n = write(p->wfd, &byte, 1); /* EAGAIN: a full pipe is signal enough */
                (void)n;
                break;
            }
            if (w < 0 && w != -EINTR)
                return w;
        }
    }
    return 0;
}

void mg_bellpipe_arm(struct mg_bellpipe *p)
{
    char buf[256];
    while (read(p->rfd, buf, sizeof buf) > 0)
        ;
    __atomic_store_n(&p->armed, 1, __ATOMIC_RELEASE);
    mg_bell_futex(&p->armed, FUTEX_WAKE, 1, NULL);
}

void mg_bellpipe_stop(struct mg_bellpipe *p)
{
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&p->armed, 1, __ATOMIC_RELEASE);
    mg_bell_futex(&p->armed, FUTEX_WAKE, 1, NULL);
    mg_bell_ring(p->base, p->bell); /* out of a doorbell sleep now */
}

static inline int nic_fd(const struct mg_loop_nic *d, uint32_t j)
{
    return d->kind == MG_LOOP_NIC_AFP ? ((struct mg_afp *)d->devs[j])->fd
                                      : ((struct mg_xsk *)d->devs[j])->fd;
}

/* Steering's NIC loop found the NIC empty (with_nic 1): sleep in ppoll() on the devices
 * and the bell pipe (mg_loop.h); or it has no free frame (with_nic 0: the NIC may well be
 * readable, only frames coming home help): on the pipe alone -- never on the doorbell
 * itself, whose need_wakeup flag the pipe's helper thread may be clearing meanwhile.
 * 1: something is readable, go on (the busy budget starts again); 0: return, out->reason
 * set; < 0: -errno. */
static int nic_sleep(struct mg_loop_nic *d, void *base, struct budget *b,
                     const struct mg_loop_ctl *c, struct mg_loop_out *o, int with_nic)
{
    struct pollfd pfd[MG_LOOP_NIC_MAX + 1];
    for (;;) {
        uint64_t until;
        if (!sleep_turn(c, o, &until))
            return 0;
        if (mg_bell_poll(base, c->bell) == 2) { /* an alert: Python takes it */
            o->reason = MG_LOOP_BUDGET;
            return 0;
        }
        nfds_t n = 0;
        for (uint32_t j = 0; with_nic && j < d->n; j++)
            pfd[n++] = (struct pollfd){.fd = nic_fd(d, j), .events = POLLIN | POLLERR};
        if (d->pipe) {
            mg_bellpipe_arm(d->pipe);
            pfd[n++] = (struct pollfd){.fd = d->pipe->rfd, .events = POLLIN};
        }
        uint64_t left = until - o->last_ns;
        struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u), .tv_nsec = (long)(left % 1000000000u)};
        o->sleeps++;
        int rc = ppoll(pfd, n, &ts, NULL);
        if (rc < 0) {
            if (errno == EINTR) { /* a signal: Python runs its handler */
                o->last_ns = mg_loop_now_ns();
                o->reason = MG_LOOP_BUDGET;
                return 0;
            }
            return -errno;
        }
        if (rc == 0)
            continue;
        int readable = 0;
        for (nfds_t j = 0; j < n; j++) {
            readable |= (pfd[j].revents & POLLIN) != 0;
            /* An AF_PACKET socket's error (ENETDOWN once after the link went down) is left
             * for Python's wait, which reads, counts and logs it (AfPacketNic._clear_error:
             * rx_link_down); anything else's is read here, or poll keeps waking. */
            if (j < (nfds_t)d->n && with_nic && (pfd[j].revents & POLLERR) &&
                d->kind != MG_LOOP_NIC_AFP) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(pfd[j].fd, SOL_SOCKET, SO_ERROR, &err, &len);
            }
        }
        if (!readable) { /* only error bits (a device gone, a socket being reopened): Python
                          * waits and looks after it (maintain), as before -- never spin here */
            o->last_ns = mg_loop_now_ns();
            o->reason = MG_LOOP_IDLE;
            return 0;
        }
        return sleep_woken(b, c, o);
    }
}

static int nic_ok(const struct mg_loop_nic *d)
{
    return d && d->devs && d->n >= 1 && d->n <= MG_LOOP_NIC_MAX &&
           (d->kind == MG_LOOP_NIC_AFP || d->kind == MG_LOOP_NIC_XSK);
}

/* One receive burst from the first device (round-robin) that has packets. */
static int nic_rx(struct mg_loop_nic *d, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    for (uint32_t i = 0; i < d->n; i++) {
        uint32_t j = (d->next + i) % d->n;
        int k = d->kind == MG_LOOP_NIC_AFP ? mg_afp_rx_burst((struct mg_afp *)d->devs[j], pool, descs, n)
                                           : mg_xsk_rx_burst((struct mg_xsk *)d->devs[j], pool, descs, n);
        if (k != 0) {
            d->next = (j + 1) % d->n;
            return k;
        }
    }
    return 0;
}

int mg_steer_loop_nic(struct mg_steer *s, void *base, struct mg_loop_nic *src,
                      const struct mg_loop_ctl *ctl, struct mg_loop_out *out)
{
    struct budget b;
    uint8_t *pool = nic_ok(src) ? steer_start(s, base, ctl, out, &b) : NULL;
    if (!pool)
        return -EINVAL;
    int ret;
    while (!steer_round(s, base, 0, &b, ctl, out, &ret)) {
        int n = mg_steer_take(s, base, ctl->burst);
        if (n < 0)
            return n;
        if (n == 0) { /* no free frame: they come home on ret/sent (the doorbell) */
            if (!ctl->sleep_until_ns)
                return finish(out, MG_LOOP_IDLE);
            int r = src->pipe ? nic_sleep(src, base, &b, ctl, out, 0) : bell_sleep(base, &b, ctl, out);
            if (r > 0)
                continue;
            return r;
        }
        uint32_t cnt;
        uint64_t *descs = mg_hand_descs(base, s->slot, &cnt);
        int k = steer_filled(s, base, nic_rx(src, pool, descs, (uint32_t)n));
        if (k < 0)
            return k;
        if (k == 0) {
            if (!ctl->sleep_until_ns)
                return finish(out, MG_LOOP_IDLE);
            int r = nic_sleep(src, base, &b, ctl, out, 1);
            if (r > 0)
                continue;
            return r;
        }
        if (budget_done(&b, ctl, out, (uint32_t)k))
            return 0;
    }
    return ret;
}

int mg_mux_loop_nic(struct mg_mux *m, void *base, struct mg_loop_nic *sink,
                    const struct mg_loop_ctl *ctl, struct mg_loop_out *out)
{
    if (!m || !base || !nic_ok(sink) || !ctl || !out || ctl->burst == 0 || ctl->burst > MG_HAND_MAX)
        return -EINVAL;
    struct budget b;
    budget_start(&b, ctl, mg_loop_now_ns(), out);
    uint8_t *pool = mg_region_pool(base);
    int n;
    while (!mux_round(m, base, &b, ctl, out, &n)) {
        uint32_t cnt;
        uint64_t *descs = mg_hand_descs(base, m->slot, &cnt);
        uint32_t j = sink->next;
        sink->next = (j + 1) % sink->n;
        int sent = sink->kind == MG_LOOP_NIC_AFP
                       ? mg_afp_tx_burst((struct mg_afp *)sink->devs[j], pool, descs, (uint32_t)n)
                       : mg_xsk_tx_burst((struct mg_xsk_tx *)sink->devs[j], pool, descs, (uint32_t)n);
        if (sent < 0) {
            mg_mux_done(m, base, 0, (uint32_t)n); /* free the frames before failing */
            return sent;
        }
        if (sent > n)
            sent = n;
        int left = mg_mux_done(m, base, (uint32_t)sent, (uint32_t)(n - sent));
        if (left < 0)
            return left;
        if (budget_done(&b, ctl, out, (uint32_t)sent))
            return 0;
    }
    return n;
}
