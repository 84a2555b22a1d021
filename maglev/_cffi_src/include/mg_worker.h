/* Packet worker glue: one call per burst does the worker's whole turn (paper 3.2):
 *
 *   mg_hand_pull(rx ring)          frames into the worker's journalled hand
 *   mg_tables_acquire              the active tables generation (once per burst)
 *   mg_dp_burst                    parse, VIP match, conntrack, Maglev, encapsulate
 *   mg_hand_push                   each hand entry by its verdict: forward/ICMP -> tx,
 *                                  drop reason -> ret, held fragment -> stays in the hand
 *
 * Everything a worker holds is in its hand (mg_hand.h), including fragments the data path
 * holds across bursts, so a `kill -9` loses no frame.  A replacement worker calls
 * mg_worker_recover(): the dead worker's hand is settled (the journal says exactly which
 * frames it still held) and every frame in it is settled by its verdict -- steering
 * clears the verdict of each packet it dispatches, so a verdict means "judged":
 *   forward / ICMP  -> tx (fully processed, not yet queued: sent once);
 *   a drop reason   -> ret (already counted);
 *   no verdict      -> ret, counted in MG_WS_RESTART_DROPS (never judged, or judged in
 *   or held           the instant of the kill; a held fragment's reassembly state died
 *                     with the process).
 * So in-flight packets are delivered *at most once*: never duplicated (the journal rules
 * that out), possibly dropped -- and each such drop is counted.  Packets still on the rx
 * ring are not affected (the new worker processes them), and the connection table starts
 * empty: flows keep their backend through the Maglev table (paper 3.3), unless the
 * backend set changed since they began.  The counters can be off by the one burst whose
 * verdicts were set but not yet added to the stats block when the process died.
 *
 * Counters: the worker's stats block in the region (MG_WS_* words) survives a restart: a
 * new worker adds its data-path counters to the values its predecessor left.
 *
 * Spare frames: the worker owns no free frames, so DF-clear packets that would need
 * splitting are handled by the data path without spares (mg_dp.h decides: too_big).
 */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include "mg_common.h"
#include "mg_dp.h"
#include "mg_hand.h"
#include "mg_shm.h"

/* Worker counters: words of the worker slot's stats block. */
#define MG_WS_BURSTS 0
#define MG_WS_PACKETS_IN 1
#define MG_WS_BYTES_IN 2
#define MG_WS_FORWARDED 3
#define MG_WS_BYTES_OUT 4
#define MG_WS_ICMP_SENT 5
#define MG_WS_HELD 6           /* gauge: fragments held now */
#define MG_WS_GENERATION 7     /* gauge: tables generation in use */
#define MG_WS_RESTART_DROPS 8  /* frames a dead predecessor held, dropped */
#define MG_WS_TABLE_SWAPS 9
#define MG_WS_FRAGMENTS 10
#define MG_WS_ICMP_FORWARDED 11
#define MG_WS_CT_ENTRIES 12    /* gauge: connection-table entries (if known) */
#define MG_WS_DROPS 16         /* MG_WS_DROPS + reason, reason < MG_WS_N_DROPS */
#define MG_WS_N_DROPS 48

/* How often an idle worker with held fragments lets the data path expire them. */
#define MG_WORKER_FLUSH_NS 10000000ULL

struct mg_worker {
    struct mg_dp *dp;
    uint32_t worker;
    uint32_t slot;
    uint32_t rx_id, tx_id, ret_id;
    uint32_t burst;
    uint64_t last_flush_ns;
    uint64_t *stats;
    uint64_t base[MG_STATS_WORDS]; /* counters left by predecessors */
    uint32_t in[MG_BURST_MAX];
    uint32_t tx[MG_BURST_MAX + MG_DP_DRAIN_MAX];
    uint32_t drop[MG_BURST_MAX + MG_DP_DRAIN_MAX];
    uint16_t dest[MG_HAND_MAX];
};

/* Allocate a worker for region `base`, worker index `worker`: its data path with a
 * connection table of ct_capacity entries, keyed by the flow secret.  NULL on error. */
struct mg_worker *mg_worker_new(void *base, uint32_t worker, uint32_t ct_capacity,
                                uint64_t k0, uint64_t k1, uint32_t burst, uint64_t now_ns);
/* The same with a connection table made by the caller (owned from here, also on error). */
struct mg_worker *mg_worker_new_ct(void *base, uint32_t worker, struct mg_ct *ct,
                                   uint64_t k0, uint64_t k1, uint32_t burst, uint64_t now_ns);
void mg_worker_free(struct mg_worker *w);
/* The worker's data path (for its connection table: mg_dp_conntrack). */
struct mg_dp *mg_worker_dp(struct mg_worker *w);
/* Take over from a dead predecessor: settle the hand, reset this worker's ring sides,
 * return every frame it held on the ret ring.  Returns frames recovered or -errno. */
int mg_worker_recover(struct mg_worker *w, void *base);
/* One turn.  Returns input packets processed, 0 when idle, -EAGAIN when idle but frames
 * wait for room on an output ring (call again soon), or another -errno. */
int mg_worker_burst(struct mg_worker *w, void *base, uint64_t now_ns);
/* Drain at stop: expire every held fragment as of now_ns (pass a time far ahead to empty
 * the table) and push all.  Returns frames still in the hand (retry while > 0). */
int mg_worker_flush(struct mg_worker *w, void *base, uint64_t now_ns);
/* Frames in the worker's hand. */
int mg_worker_holding(const struct mg_worker *w, void *base);

#endif
