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
 * frames it still held) and every frame in it is settled by the verdict its counters
 * include -- meta->acct, written in the same journalled step as the stats block (the
 * slot's stats journal, mg_hand.h) before any frame is pushed; steering clears it on
 * dispatch:
 *   counted forward / ICMP  -> tx (fully processed, not yet queued: sent once);
 *   counted drop reason     -> ret;
 *   not counted, or held    -> ret, counted in MG_WS_RESTART_DROPS (never judged, or
 *                              judged in the burst that was not committed; a held
 *                              fragment's reassembly state died with the process).
 * So in-flight packets are delivered *at most once*: never duplicated (the journal rules
 * that out), possibly dropped -- and each such drop is counted exactly once.  Packets
 * still on the rx ring are not affected (the new worker processes them), and the
 * connection table starts empty: flows keep their backend through the Maglev table
 * (paper 3.3), unless the backend set changed since they began.
 *
 * Counters: the worker's stats block in the region (MG_WS_* words) survives a restart: a
 * new worker adds its data-path counters to the values its predecessor left.
 *
 * Spare frames: a DF-clear IPv4 packet too big for the path MTU once encapsulated is split,
 * and every piece after the first needs an empty frame.  Steering keeps the worker's spare
 * ring (MG_RING_SPARE) stocked (mg_steer.h).  Each burst the worker looks at the ring
 * without consuming it (its own cons does not move), gives those frames to the data path
 * as io->spare, then pulls exactly the n_spare_used it took (the front of the ring, in
 * order) into its hand, where they are pushed by their verdict like every other frame.
 * Killed in between, the frames are still on the spare ring: empty frames again.  A spare
 * carries MG_ACCT_PIECE in meta->acct (set again by the worker before it pulls a used
 * spare into its hand, since the data path copies the packet's metadata into a piece;
 * kept by every commit): it is a
 * piece of a packet that its first frame accounts for, so a replacement settles a used
 * spare by its verdict like the rest, but never counts it as a packet (an uncounted one
 * goes to ret silently), and the muxer counts only first frames in tx_error and
 * muxer_restart.  While
 * steering keeps a reserve (MG_SS_SPARE_RESERVE > 0) the worker pulls at most as many
 * packets per burst as it has spares, so a packet that splits in two always has its
 * frame; with no spares at all it leaves the packets on the rx ring (-EAGAIN: call again
 * soon) until steering has refilled the ring.
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
#define MG_WS_REDIRECTED 13    /* fragments sent on to the instance that owns them */
#define MG_WS_SPARES_USED 14   /* spare frames taken for split pieces */
#define MG_WS_SPARE_WAITS 15   /* bursts deferred: packets waiting, no spare frame */
#define MG_WS_DROPS 16         /* MG_WS_DROPS + reason, reason < MG_WS_N_DROPS */
#define MG_WS_N_DROPS 44       /* room for 44 drop reasons (MG_DROP_COUNT is checked) */
#define MG_WS_SPARES 60        /* gauge: spare frames on the worker's spare ring */
#define MG_WS_QUIC_CID_ROUTED 61 /* QUIC packets routed by their connection ID's server ID */
#define MG_WS_QUIC_HASHED 62   /* packets of QUIC VIPs that went by hashing */
/* VIP matching across clusters (mg_dp.c): GRE from peer forwarders decapsulated, packets
 * to peer addresses served, packets sent to the backup cluster. */
#define MG_WS_CLUSTER_IN 63
#define MG_WS_CLUSTER_MATCHED 64
#define MG_WS_BACKUP_OUT 65

/* How often an idle worker with held fragments lets the data path expire them. */
#define MG_WORKER_FLUSH_NS 10000000ULL

/* Output capacity of one data-path call: a burst, as many spares, the drained fragments. */
#define MG_WORKER_OUT_MAX (2 * MG_BURST_MAX + MG_DP_DRAIN_MAX)

struct mg_worker {
    struct mg_dp *dp;
    uint32_t worker;
    uint32_t slot;
    uint32_t rx_id, tx_id, ret_id, spare_id;
    uint32_t n_spare;              /* spares looked at for the current data-path call */
    uint32_t spare[MG_HAND_MAX];
    /* spare[0..spare_n) is a copy of the spare ring's slots [spare_cons, spare_cons +
     * spare_n) taken when its prod was spare_prod: still exact while neither index moved
     * (the slots between cons and prod do not change), so a burst that finds both where
     * they were copies nothing (spare_look).  spare_valid = 0: no copy yet. */
    uint32_t spare_cons, spare_prod, spare_n, spare_valid;
    uint32_t burst;
    uint64_t last_flush_ns;
    uint64_t *stats;
    uint64_t base[MG_STATS_WORDS]; /* counters left by predecessors */
    uint32_t in[MG_BURST_MAX];
    uint32_t tx[MG_WORKER_OUT_MAX];
    uint32_t drop[MG_WORKER_OUT_MAX];
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
