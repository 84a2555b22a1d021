/* Actor hot loops: each data-path actor's inner loop as one C call (issue 13).
 *
 * Python stays the actor (lifecycle, mailbox, heartbeats, restart, telemetry); the loop
 * body that moves packets runs here, many bursts per call, and returns to Python only when
 *
 *   MG_LOOP_IDLE    there is nothing to do: the caller sleeps on its doorbell as before;
 *   MG_LOOP_BUDGET  the time budget (ctl->budget_ns, ~1 ms) or burst budget is used up:
 *                   the caller runs its housekeeping tick (mailbox, heartbeat) and calls
 *                   again -- the actors tick every 100 ms, so a 1 ms budget never delays
 *                   control work, and the Python cost is amortised over ~1 ms of bursts;
 *   MG_LOOP_STALL   an output ring is full (back pressure): the caller backs off briefly;
 *   MG_LOOP_EOF     (steering) the generator's packet or time limit is reached;
 *   MG_LOOP_STOP    *ctl->stop became non-zero (a flag word another thread may set);
 *   MG_LOOP_DEADLINE (ctl->sleep_until_ns set) the deadline Python gave passed: the loop
 *                   slept on its doorbell in the call and was not needed since, or moved
 *                   packets and the next housekeeping tick is due (ctl->tick_ns): the
 *                   caller runs its housekeeping and calls again -- it does not wait.
 *
 * Each burst is exactly what the per-burst C calls the actors made before do (the loops
 * call those same functions: mg_steer_reclaim/spares/take/dispatch, mg_gen_fill,
 * mg_worker_burst, mg_mux_collect/done), so every invariant they keep -- the hand
 * journal (a kill -9 at any instruction loses no frame), order within a flow, C-owned
 * stats words, the packet tracer's hooks, one tables acquire per worker burst -- holds
 * unchanged.  Returns 0 (reason and counts in *out) or -errno from a glue call.
 */
#ifndef MG_LOOP_H
#define MG_LOOP_H

#include "mg_common.h"
#include "mg_gen.h"
#include "mg_steer.h"
#include "mg_worker.h"

#define MG_LOOP_IDLE 0
#define MG_LOOP_BUDGET 1
#define MG_LOOP_STALL 2
#define MG_LOOP_EOF 3
#define MG_LOOP_STOP 4
#define MG_LOOP_DEADLINE 5

struct mg_loop_ctl {
    uint64_t budget_ns;   /* return MG_LOOP_BUDGET after this long (0 = one burst) */
    uint32_t max_bursts;  /* ... or after this many bursts (0 = no burst limit) */
    uint32_t burst;       /* frames per burst (steering, muxer; <= MG_BURST_MAX) */
    const uint32_t *stop; /* optional: return MG_LOOP_STOP when *stop != 0 */
    /* optional, muxer: MG_MS_LAT_N buckets (the muxer's stats words from MG_MS_LAT0);
     * every sent packet adds one to bucket mg_lat_bucket(now - meta->rx_ts_ns).  Reads
     * each frame's first metadata line (a cache miss per frame): for measurements only. */
    uint64_t *lat_hist;
    /* steering: spare frames to keep per worker (mg_steer_spares, each round after the
     * reclaim, exactly as the Python step does) */
    uint32_t spares;
    uint32_t idle_gap_us; /* contention threshold (below); 0 = MG_IDLE_GAP_NS (tests raise it) */
    /* Adaptive idle (DPDK-like).  With idle_ns > 0, a loop that finds nothing to do does
     * not return MG_LOOP_IDLE at once: it polls its doorbell's rings (mg_bell_poll) until
     * work arrives (and goes on), until idle_ns have passed since this actor last moved
     * a packet (idle->last_work_ns, kept across calls; then MG_LOOP_IDLE: the caller sets
     * need_wakeup and sleeps on the doorbell), until the budget's deadline (MG_LOOP_BUDGET)
     * or a doorbell alert (MG_LOOP_BUDGET: the caller takes it).  Between looks it
     * executes PAUSE (idle_mode MG_IDLE_PAUSE: the actor is alone on its CPU) or calls
     * sched_yield() (MG_IDLE_YIELD: it shares the CPU, the sibling runs first).
     * Contention: when two looks are more than MG_IDLE_GAP_NS apart, something else ran on
     * the CPU meanwhile (the machine is busier than the plan assumed); polling then only
     * burns the actor's fair share and a runnable poller is not woken early when work
     * comes, so it returns MG_LOOP_IDLE at once and does not poll again for a back-off
     * (idle->backoff_until_ns): it sleeps on the doorbell as before.  The back-off starts
     * at MG_IDLE_BACKOFF_NS, doubles with each poll that meets contention again (up to
     * MG_IDLE_BACKOFF_MAX_NS: on a machine that stays busy, one attempt a second) and
     * halves with each window that runs out without contention.
     * A paced generator (mg_loop_gen.rate) sleeps on the clock until its next packet is
     * due (clock_nanosleep), polling only its last MG_PACE_SPIN_NS. */
    uint64_t idle_ns;
    struct mg_idle_state *idle; /* required when idle_ns > 0 */
    uint32_t idle_mode;         /* MG_IDLE_PAUSE | MG_IDLE_YIELD */
    uint32_t bell;              /* the actor's doorbell (MG_BELL_*) */
    /* Nap under load (2026-12-07 session 6).  With nap_ns > 0 (and idle set), a loop that
     * finds nothing to do after a stretch of at least nap_min packets (0 = MG_NAP_MIN)
     * since it last looked at empty rings -- a heavy stream, not a trickle -- does not
     * return MG_LOOP_IDLE to sleep on its doorbell: it sleeps nap_ns on the clock
     * (clock_nanosleep, need_wakeup left clear) and looks again, in the same call.  Its
     * producers then never pay a futex wake-up (a cross-CPU one costs the waker ~13 us
     * and the woken ~30 us here, docs/benchmarks.md), the actor is woken by its own CPU's
     * timer, and it takes ~nap_ns of packets per wake-up instead of whatever one producer
     * burst left.  Once napping, a stretch of nap_min / 4 keeps it napping (hysteresis: a
     * worker of W=2 gets ~60 packets per 100 us nap at 0.6 Mpps).  A stretch below that (a
     * trickle: each hop is one packet) sleeps on the doorbell as before, so low-rate
     * latency is unchanged; a nap adds at most nap_ns
     * (plus timer slack) to a packet's wait.  Stop flag and alerts are checked after every
     * nap; a nap never runs past the budget's deadline. */
    uint64_t nap_ns;
    uint32_t nap_min;
    uint32_t reserved;
    /* Sleeping in the loop (issues 13.6, 14.5; 2026-12-07 session 7).  With sleep_until_ns
     * set (a CLOCK_MONOTONIC time), a loop that would return MG_LOOP_IDLE -- nothing to do,
     * the adaptive idle window (if any) over -- sleeps on its doorbell (ctl->bell) itself,
     * as mg_bell_wait does: `spin` busy looks at the rings, need_wakeup armed, a re-check,
     * the futex; the worker first reports itself quiescent to the table publisher
     * (mg_tables_quiesce).  Woken by ring work it goes on in the same call, with a fresh
     * busy budget (budget_ns from the wake-up: a trickle is not sent back to Python every
     * budget_ns).  It returns MG_LOOP_DEADLINE at sleep_until_ns, or -- once the call moved
     * a packet -- at tick_ns (the caller's next housekeeping, 0 = none), checked after every
     * burst and bounding every sleep; MG_LOOP_BUDGET on a doorbell alert (not taken: Python
     * takes it) or a signal (-EINTR from the futex: Python runs its handler); MG_LOOP_STOP;
     * MG_LOOP_STALL and MG_LOOP_EOF as before.  0 = return MG_LOOP_IDLE (the caller sleeps
     * on the doorbell, as before).  A paced generator's clock sleep (mg_loop_gen.rate) is
     * bounded by the same deadlines instead of the busy budget. */
    uint64_t sleep_until_ns;
    uint64_t tick_ns;
    uint32_t spin;        /* busy looks at the rings before the futex (MG_BELL_SPIN_DEFAULT, 0) */
    uint32_t reserved2;
};

#define MG_NAP_MIN 64u

struct mg_idle_state {
    uint64_t last_work_ns;     /* when the loop last moved a packet */
    uint64_t backoff_until_ns; /* no polling before this (contention seen) */
    uint64_t backoff_ns;       /* the current back-off (0 = none) */
    uint64_t contended;        /* times polling stopped for contention */
    uint64_t stretch;          /* packets moved since the loop last found nothing (nap) */
    uint64_t naps;             /* naps taken (nap_ns) */
    uint64_t napping;          /* the last empty look napped: stay while stretches >= nap_min / 4 */
};

#define MG_IDLE_PAUSE 1
#define MG_IDLE_YIELD 2
#define MG_IDLE_GAP_NS 50000ull
#define MG_IDLE_BACKOFF_NS 20000000ull
#define MG_IDLE_BACKOFF_MAX_NS 1000000000ull
#define MG_PACE_SPIN_NS 10000ull
#define MG_PACE_LOOK_NS 1000000ull /* longest clock sleep of a paced wait (alert checks) */

struct mg_loop_out {
    uint64_t packets;     /* packets moved (steering: received; worker: in; muxer: sent) */
    uint64_t last_ns;     /* CLOCK_MONOTONIC when the loop returned */
    uint32_t bursts;      /* bursts that moved something */
    uint32_t reason;      /* MG_LOOP_* */
    uint32_t sleeps;      /* doorbell sleeps in the call (ctl->sleep_until_ns) */
    uint32_t wakes;       /* ... that ended with ring work (the loop went on) */
};

/* The generator source of the steering loop: packets left before eof (UINT64_MAX = no
 * limit) and the CLOCK_MONOTONIC deadline (0 = none); `left` is decremented. */
struct mg_loop_gen {
    struct mg_gen *gen;
    uint64_t left;
    uint64_t deadline_ns;
    /* Pacing (0 = as fast as frames come home): packets per second, counted from t0_ns,
     * when the generator had produced `paced_from` packets (mg_gen_count): the loop fills
     * only what is due, and in between waits for the next packet's time (ctl->idle_*). */
    uint64_t rate;
    uint64_t t0_ns;
    uint64_t paced_from;
};

uint64_t mg_loop_now_ns(void);
/* Latency bucket of ns: 0 below 256 ns, then four per octave (a quarter octave: bucket
 * b >= 1 starts at mg_lat_floor_ns(b), its upper edge is at most 25% above its floor,
 * 19% above any value in it), the last one open-ended (>= ~3.2 s). */
uint32_t mg_lat_bucket(uint64_t ns);
uint64_t mg_lat_floor_ns(uint32_t b);

/* Steering: reclaim -> spares -> (retry what back pressure left | take -> generator ->
 * dispatch). */
int mg_steer_loop(struct mg_steer *s, void *base, struct mg_loop_gen *src,
                  const struct mg_loop_ctl *ctl, struct mg_loop_out *out);
/* Worker: mg_worker_burst until the rx ring is empty (IDLE) or an output is full (STALL). */
int mg_worker_loop(struct mg_worker *w, void *base, const struct mg_loop_ctl *ctl,
                   struct mg_loop_out *out);
/* Muxer with a sink that takes everything (the null NIC): collect -> count -> sent ring. */
int mg_mux_loop(struct mg_mux *m, void *base, const struct mg_loop_ctl *ctl,
                struct mg_loop_out *out);

/* ---- NIC sources and sinks (AF_PACKET, AF_XDP): the same loops, the NIC's burst calls
 * inside them instead of one Python step per burst.  A source or sink is one or more
 * device handles of one kind, visited round-robin (fan-out sockets, XSK queues); the
 * device calls are the drivers' own burst functions (mg_afp_rx_burst/tx_burst,
 * mg_xsk_rx_burst/tx_burst), so the drivers' accounting is unchanged.  A device error
 * (-errno) gives the frames back exactly as the Python step does and is returned. */
#define MG_LOOP_NIC_AFP 1   /* devs are struct mg_afp * */
#define MG_LOOP_NIC_XSK 2   /* rx: struct mg_xsk *; tx: struct mg_xsk_tx * */
#define MG_LOOP_NIC_MAX 64

struct mg_bellpipe;

struct mg_loop_nic {
    uint32_t kind;        /* MG_LOOP_NIC_* */
    uint32_t n;           /* devices in devs (1..MG_LOOP_NIC_MAX) */
    uint32_t next;        /* round-robin position (kept across calls) */
    uint32_t reserved;
    void **devs;
    /* steering's doorbell as a readable pipe (below; NULL = none): with ctl->sleep_until_ns
     * set, steering's NIC loop sleeps in the call in ppoll() on the devices' descriptors
     * and this pipe, so frames coming home on ret/sent wake it as the NIC does */
    struct mg_bellpipe *pipe;
};

/* A doorbell as a readable pipe, for a consumer that must also poll() descriptors (steering
 * on an fd-based NIC: a futex cannot be polled together with a socket).  A helper thread
 * runs mg_bellpipe_run: it sleeps until the consumer arms it (mg_bellpipe_arm, right
 * before the consumer's poll: drains the pipe, sets `armed`, wakes the thread), then on
 * the doorbell; ring work or an alert writes one byte to wfd and the thread waits to be
 * armed again -- it never spins and costs nothing while the consumer is busy.  No wake-up
 * is lost: the doorbell's own protocol covers submits racing with the thread's sleep, and
 * the byte stays in the pipe until the consumer's next arm drains it (every ring work
 * signalled before that is reclaimed by the round that preceded the sleep).  The thread
 * leaves mg_bellpipe_run after mg_bellpipe_stop.  rfd/wfd: a non-blocking pipe the caller
 * made (and closes after the thread ended). */
struct mg_bellpipe {
    uint32_t armed;       /* futex word: 1 = the consumer sleeps (or is about to) */
    uint32_t stop;
    int32_t rfd;
    int32_t wfd;
    void *base;           /* the region */
    uint32_t bell;        /* MG_BELL_* */
    uint32_t reserved;
    uint64_t signals;     /* bytes written: doorbell wakes passed on */
};

int mg_bellpipe_run(struct mg_bellpipe *p);   /* the helper thread's body: 0 or -errno */
void mg_bellpipe_arm(struct mg_bellpipe *p);
void mg_bellpipe_stop(struct mg_bellpipe *p); /* and rings the bell: the thread leaves at once */

/* Steering with a NIC source: reclaim -> spares -> (retry | take -> rx -> dispatch); IDLE
 * when the NIC has nothing (the caller then polls the NIC's descriptor) -- or, with
 * ctl->sleep_until_ns set, it sleeps in the call in ppoll() on the devices' descriptors
 * and src->pipe and goes on when one is readable (a POLLERR's SO_ERROR is read, as the
 * Python wait does; a wake with error bits only returns MG_LOOP_IDLE: the caller's wait
 * and tick look after the device), with the deadlines, alert, signal and stop of the
 * other loops. */
int mg_steer_loop_nic(struct mg_steer *s, void *base, struct mg_loop_nic *src,
                      const struct mg_loop_ctl *ctl, struct mg_loop_out *out);
/* Muxer with a NIC sink: collect -> tx -> done (the frames the NIC refused are failed). */
int mg_mux_loop_nic(struct mg_mux *m, void *base, struct mg_loop_nic *sink,
                    const struct mg_loop_ctl *ctl, struct mg_loop_out *out);

#endif
