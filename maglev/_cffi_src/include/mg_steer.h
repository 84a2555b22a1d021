/* Steering and muxer glue: the frame movers at both ends of the pipeline (paper 3.2).
 *
 * Steering (one process) owns the free list and the NIC's receive side.  One loop turn:
 *   mg_steer_reclaim  ret(0..N-1) and sent -> free      (frames coming home)
 *   mg_steer_take     free -> steering's hand           (empty frames for the NIC)
 *   NIC rx_burst      fills hand entries [0, k)
 *   mg_steer_dispatch parse + flow hash each packet, hand -> rx(worker)
 * Every move goes through the steering hand (mg_hand.h), so a killed steering process
 * loses no frame: its replacement recovers the hand.
 *
 * Flow hash: the parser's flow key (mg_parse.h), ports zeroed for IP fragments (the
 * 3-tuple hash of paper 4.3, so every fragment of a datagram reaches one worker), hashed
 * with SipHash-1-3 keyed by the deployment's flow secret.  The low 32 bits go to
 * meta->flow_hash; the worker is chosen from the *high* 32 bits (hi % N), so that the
 * choice of worker is independent of the low bits a worker's connection table indexes
 * with (with the same bits, worker w of 2 would only ever use half its buckets).
 *
 * Fallback: each rx ring's free room is read once per burst (steering is the producer,
 * so the count is exact).  A packet whose worker's ring is full goes to the worker with
 * the most room, if that ring is at least half free, and is counted (it may be reordered
 * against its flow's earlier packets).  Otherwise it stays in the hand (backpressure: no
 * new frames are taken until it is placed), counted once per turn.  The half-free rule
 * keeps fallback for what it is for -- one slow or restarting worker -- and stops a
 * uniformly saturated pipeline from spraying every flow over every worker.  Which packets
 * may fall back at all is a policy (MG_STEER_FB_*, below): `maglev run` lets only TCP SYNs
 * (and packets of no flow) leave their worker, so no established flow changes backend.
 * Packets the parser rejects are spread
 * round-robin: the worker counts the drop with its reason.
 *
 * Spare frames (a worker's reserve).  A DF-clear IPv4 packet that does not fit the path MTU
 * once encapsulated is split (mg_dp.h), and every piece after the first needs an empty
 * frame the worker does not have.  Each worker has a spare ring (MG_RING_SPARE, steering
 * -> worker i) that steering keeps stocked with `reserve` empty frames: mg_steer_spares
 * tops a ring up to `reserve` once it fell below half of it (refills come in bursts,
 * through the journalled hand like every other move), and the frames the rings still
 * lack are *owed*: mg_steer_take never hands the last `owed` free frames to the NIC, so
 * a refill never waits for traffic to come home.  The worker looks at its ring without
 * consuming it, lets the data path take spares from the front, and then pulls exactly
 * the ones used into its hand (mg_worker.h); it never pulls more packets in one burst
 * than it has spares, so at an MTU where a packet splits into at most two pieces (every
 * MTU >= 1500 with MG_FRAME_DATA_MAX) no packet is dropped for lack of a frame, under
 * any load.  reserve = 0 turns the mechanism off (workers then get no spares and pull
 * without that limit).  Exact accounting: a top-up runs in the RECLAIMING batch state
 * (the hand's front still holds back-pressured packets, MG_SS_HELD of them), so a
 * replacement of a steering killed mid-top-up returns the pulled free frames to the free
 * list and counts only those packets; every spare is marked MG_ACCT_PIECE (mg_frame.h),
 * so the pieces written into it are never counted as packets (mg_worker.h, mg_mux_done).
 * Frames on the spare rings are home: the pool is whole when the free list and the
 * spare rings hold every frame.
 *
 * Muxer: mg_mux_collect pulls up to `max` frames from the tx rings (round-robin start, so
 * no worker starves), the NIC transmits the hand's entries, mg_mux_done counts them and
 * pushes every entry to the sent ring (what the NIC refused is counted as tx_error: a
 * frame is never retransmitted, at-most-once).
 */
#ifndef MG_STEER_H
#define MG_STEER_H

#include "mg_common.h"
#include "mg_frame.h"
#include "mg_hand.h"
#include "mg_shm.h"

/* Steering counters: words of the steering slot's stats block (mg_region_stats). */
#define MG_SS_RX_PACKETS 0   /* packets received from the NIC */
#define MG_SS_RX_BYTES 1
#define MG_SS_DISPATCHED 2   /* packets placed on an rx ring */
#define MG_SS_FALLBACK 3     /* placed on another worker than their hash says */
#define MG_SS_BACKPRESSURE 4 /* turns where every candidate ring was full */
#define MG_SS_RECLAIMED 5    /* frames returned to the free list */
#define MG_SS_FRAGMENTS 6    /* IP fragments (3-tuple hash) */
#define MG_SS_UNPARSED 7     /* packets the parser rejected (spread round-robin) */
#define MG_SS_BURSTS 8
#define MG_SS_NO_FREE 9      /* turns that found the free list empty */
#define MG_SS_RECOVERED 10   /* frames found in a dead predecessor's hand */
#define MG_SS_FIRST_RX_NS 11 /* CLOCK_MONOTONIC of the first received burst */
#define MG_SS_LAST_RX_NS 12  /* ... and of the latest one (rates over the receive window) */
#define MG_SS_LOST 13        /* received packets a dead steering still held (lost_in_crash) */
#define MG_SS_BATCH 14       /* what the hand's frames are (MG_SS_B_*), for a replacement */
#define MG_SS_HELD 15        /* RECLAIMING: counted packets at the front of the hand */

/* The hand holds one batch at a time (take needs an empty hand):
 *   TAKING   frames are being pulled from the free list: none was given to the NIC;
 *   MARKED   every frame in the hand has meta->len == MG_FRAME_LEN_EMPTY, so the ones
 *            the NIC filled are told apart; none is counted yet;
 *   COUNTED  the packets (len != EMPTY) are in MG_SS_RX_PACKETS (committed through the
 *            stats journal in the same step as this state, before any is pushed).
 * So a replacement knows exactly which frames in a dead steering's hand were received
 * packets and whether they were counted: mg_steer_recover. */
#define MG_SS_B_TAKING 0
#define MG_SS_B_MARKED 1
#define MG_SS_B_COUNTED 2
/*   RECLAIMING  frames from ret/sent pass through the hand on their way to the free list,
 *            or free frames on their way to a spare ring (mg_steer_spares) -- they still
 *            carry old packets' lengths -- behind the MG_SS_HELD counted packets back
 *            pressure left at its front; pull appends and push keeps the front in order,
 *            so exactly the first MG_SS_HELD entries are packets. */
#define MG_SS_B_RECLAIMING 3
/* Records a capture NIC could not turn into frames (counted in Python by the NIC, copied
 * here by the steering actor's tick): received and dropped with these reasons. */
#define MG_SS_NIC_UNSUPPORTED_LINKTYPE 16
#define MG_SS_NIC_FRAME_OVERFLOW 17
/* Spare frames (mg_steer_spares): free word numbers after the NIC's. */
#define MG_SS_SPARE_RESERVE 18 /* gauge: spare frames steering keeps per worker (0 = off) */
#define MG_SS_SPARES_SENT 19   /* frames put on the workers' spare rings */
#define MG_SS_SPARE_SHORT 20   /* top-ups cut short for lack of free frames */
/* VIP priority under overload (mg_shed.h): packets dropped before enqueue because their
 * worker's rx ring was above their VIP priority's mark (received, not dispatched). */
#define MG_SS_SHED 21
/* Packets dropped before enqueue because their worker's rx ring was full and that worker
 * had not consumed from it for stall_ns (a dead or frozen worker, mg_steer_set_stall_ns):
 * falling back would hand its flows to a worker without their connection entries, which
 * picks by the *current* Maglev table.  Received, not dispatched. */
#define MG_SS_OWNER_STALLED 22
/* The receiving NIC's own counters, copied by the steering actor's tick (a restarted
 * steering adds its NIC's to what its predecessor had copied, so they never go back):
 * link-down reports of the receive socket, packets the kernel dropped before the socket
 * (its ring full: never received, so not in the accounting identity), sockets reopened
 * because the interface was created again. */
#define MG_SS_NIC_RX_LINK_DOWN 23
#define MG_SS_NIC_KERNEL_DROPS 24
#define MG_SS_NIC_REOPENS 25

/* Spare frames per worker by default: one burst's worth (one spare per packet). */
#define MG_SPARE_RESERVE MG_BURST_MAX

/* Muxer counters (muxer slot). */
#define MG_MS_TX_PACKETS 0
#define MG_MS_TX_BYTES 1     /* unused: the muxer does not touch frames (see mg_mux_done) */
#define MG_MS_TX_ERRORS 2    /* frames the NIC did not take (dropped, counted) */
#define MG_MS_BURSTS 3
#define MG_MS_RECOVERED 4    /* frames found in a dead predecessor's hand */
#define MG_MS_TX_ERRORS_FWD 5 /* of MG_MS_TX_ERRORS: forwarded packets (not ICMP errors) */
#define MG_MS_LOST_FWD 6     /* forwarded packets a dead muxer held before counting them */
#define MG_MS_BATCH 7        /* 0: the hand's frames are not counted yet; 1: they are */
/* Transmits the NIC refused because the link was down (AF_PACKET tx_link_down; copied by
 * the muxer actor's tick, continued across a restart like MG_SS_NIC_RX_LINK_DOWN). */
#define MG_MS_NIC_TX_LINK_DOWN 8
/* Latency histogram (only while the muxer runs with latency on, mg_loop.h): packets by
 * muxer-tx minus meta->rx_ts_ns, MG_MS_LAT_N log buckets (mg_lat_bucket). */
#define MG_MS_LAT0 16
#define MG_MS_LAT_N 96

/* Slots of steering's indirection table: the top 8 bits of the 64-bit flow hash pick one. */
#define MG_STEER_RETA 256
/* With a weighted map a full ring is normal for the big worker: its packets fall back to
 * another worker only when its ring was not consumed for this long (a stuck or restarting
 * worker), else they wait in steering's hand (back pressure) and keep their order. */
#define MG_STEER_STUCK_NS 1000000ull
/* Any map: a full ring whose worker has not consumed from it for this long is a dead or
 * frozen worker; its packets are dropped (MG_SS_OWNER_STALLED), never moved to another
 * worker.  0 = off (the fallback rule alone, as before 2026-12-07). */
#define MG_STEER_STALL_NS 50000000ull
/* What may fall back to another worker when its own worker's ring is full
 * (mg_steer_set_fallback).  The worker a packet falls back to has no connection entry for
 * its flow and picks the backend by the *current* Maglev table, so a packet of an
 * established flow moves to another backend if the VIP's table changed since the flow
 * began (a TCP reset) -- with every policy but ANY such packets wait in the hand instead
 * (back pressure, order kept) and are dropped as owner_stalled only once the owner is
 * dead or frozen (the stall rule above).
 *   ANY        every packet (the paper's fallback; the default of mg_steer_init)
 *   NEW_FLOWS  only the first packet of a TCP connection (SYN without ACK, not a
 *              fragment) and packets that belong to no flow (unparsable, bad metadata):
 *              no worker has an entry for them.  The default of `maglev run`.
 *   NEVER      only packets that belong to no flow */
#define MG_STEER_FB_ANY 0
#define MG_STEER_FB_NEW_FLOWS 1
#define MG_STEER_FB_NEVER 2

struct mg_steer {
    uint64_t k0, k1;     /* flow-hash secret */
    uint32_t n_workers;
    uint32_t slot;       /* hand / stats slot */
    uint32_t free_id, sent_id;
    uint32_t rr;         /* round-robin cursor for unparsable packets */
    uint32_t fallback_min; /* room a fallback ring needs: half the ring */
    uint32_t reserve;    /* spare frames per worker (mg_steer_spares) */
    uint32_t owed;       /* frames the spare rings lack: not for the NIC */
    uint32_t ring_size;  /* rx ring entries (overload shedding: used = size - room) */
    struct mg_shed *shed; /* overload shedding (mg_shed.h), NULL = off; mg_steer_set_shed */
    uint64_t *stats;     /* this process's mapping of the slot's stats block */
    uint32_t reta_on;    /* 1: worker = reta[hash >> 56] (mg_steer_set_reta); 0: (hash >> 32) % n */
    uint8_t reta[MG_STEER_RETA]; /* flow -> worker indirection table (like a NIC's RSS RETA) */
    uint64_t stuck_ns;   /* weighted map: fall back only from a ring not consumed for this long */
    uint64_t stall_ns;   /* drop (never move) a full ring's packets once not consumed this long */
    uint32_t fb_mode;    /* MG_STEER_FB_*: which packets may fall back (mg_steer_set_fallback) */
    uint32_t rx_id[MG_MAX_WORKERS];
    uint32_t ret_id[MG_MAX_WORKERS];
    uint32_t spare_id[MG_MAX_WORKERS];
    uint32_t tx_id[MG_MAX_WORKERS]; /* a worker whose tx ring is full is held back, not stalled */
    uint32_t room[MG_MAX_WORKERS];
    uint32_t cons_seen[MG_MAX_WORKERS]; /* rx ring consumer index last seen */
    uint64_t progress_ns[MG_MAX_WORKERS]; /* when it was last seen moving or the ring empty */
    uint8_t tx_held[MG_MAX_WORKERS]; /* its tx ring was full at the last look (note_progress) */
    uint16_t dest[MG_HAND_MAX];
};

struct mg_mux {
    uint32_t n_workers;
    uint32_t slot;
    uint32_t sent_id;
    uint32_t next;       /* tx ring to start the next collection at */
    uint64_t *stats;
    uint32_t tx_id[MG_MAX_WORKERS];
    uint16_t dest[MG_HAND_MAX];
};

/* 0 or -EINVAL (region not a region, bad slot). */
int mg_steer_init(struct mg_steer *s, void *base, uint32_t slot, uint64_t k0, uint64_t k1);
/* Move every frame waiting on ret(i) and sent to the free list (entries already in the
 * hand stay there, first).  Returns frames reclaimed or -errno. */
int mg_steer_reclaim(struct mg_steer *s, void *base);
/* Keep `reserve` (<= MG_SPARE_RING_SIZE) spare frames per worker: every spare ring below
 * half of it is topped up from the free list (hand entries already there stay, first),
 * and what the rings still lack is remembered as owed (mg_steer_take leaves it on the
 * free list).  Publishes reserve in MG_SS_SPARE_RESERVE.  Returns frames moved or -errno. */
int mg_steer_spares(struct mg_steer *s, void *base, uint32_t reserve);
/* Pull up to n (<= MG_BURST_MAX) free frames into an *empty* hand, leaving the frames the
 * spare rings are owed on the free list.  Frames or -errno. */
int mg_steer_take(struct mg_steer *s, void *base, uint32_t n);
/* The steering loop's pair (mg_loop.c): reclaim only the ret rings, and take the frames
 * on the sent ring first (recently used, still cached), then free ones -- the pool is
 * recycled last in, first out instead of cycling through every frame. */
int mg_steer_reclaim_ret(struct mg_steer *s, void *base);
int mg_steer_take_hot(struct mg_steer *s, void *base, uint32_t n);
/* Hand entries [0, filled) hold received packets, [filled, count) unused frames: hash and
 * place the packets, return the unused frames to the free list.  fresh = 1 the first time
 * these packets are dispatched (they are counted as received), 0 for a retry of what
 * backpressure left in the hand.  Returns frames still in the hand or -errno. */
int mg_steer_dispatch(struct mg_steer *s, void *base, uint32_t filled, int fresh);
/* Take over from a dead steering, after mg_hand_recover and the ring resets: finish its
 * stats commit if one was in flight, count the received packets its hand held (in
 * MG_SS_RX_PACKETS if they were not yet, and in MG_SS_LOST), return every frame to the
 * free list.  Idempotent.  Returns frames recovered (0 on a first start) or -errno. */
int mg_steer_recover(struct mg_steer *s, void *base);
/* Hash one packet as steering does (tests): the 64-bit SipHash and the flags it would set;
 * returns the worker for n_workers, or -1 when the parser rejects the packet. */
int mg_steer_hash(const uint8_t *pkt, uint32_t len, uint64_t k0, uint64_t k1,
                  uint32_t n_workers, uint64_t *hash, uint16_t *flags);
/* Shed lower-priority VIPs' packets under overload with this map (NULL: never); the caller
 * keeps *sh (and the blob it was loaded from) alive and reloads it when the tables change. */
struct mg_shed;
/* Weighted dispatch: worker = reta[hash >> 56] for the packets steering hashes (n =
 * MG_STEER_RETA entries, each < n_workers), instead of (hash >> 32) % n_workers; n = 0
 * turns it off.  0 or -EINVAL (nothing changed).  Python builds the table
 * (maglev/actors/pipeline.py dispatch_map) and its reference worker_of. */
int mg_steer_set_reta(struct mg_steer *s, const uint8_t *reta, uint32_t n);
/* The weighted map's stuck time (default MG_STEER_STUCK_NS; tests). 0 or -EINVAL. */
int mg_steer_set_stuck_ns(struct mg_steer *s, uint64_t ns);
/* The stall time (default MG_STEER_STALL_NS, 0 = off; PipelineOptions.stall_ms). 0 or -EINVAL. */
int mg_steer_set_stall_ns(struct mg_steer *s, uint64_t ns);
/* Which packets may fall back (MG_STEER_FB_*; mg_steer_init sets ANY; PipelineOptions.
 * fallback, `maglev run --fallback`). 0 or -EINVAL. */
int mg_steer_set_fallback(struct mg_steer *s, uint32_t mode);
int mg_steer_set_shed(struct mg_steer *s, struct mg_shed *sh);

int mg_mux_init(struct mg_mux *m, void *base, uint32_t slot);
/* Pull up to max frames from the tx rings into an *empty* hand; returns the count. */
int mg_mux_collect(struct mg_mux *m, void *base, uint32_t max);
/* The NIC took hand entries [0, n_sent) and refused the next n_failed (counted as
 * tx errors): push every entry to the sent ring.  A retry after a full sent ring passes
 * 0, 0.  Returns entries still in the hand or -errno. */
int mg_mux_done(struct mg_mux *m, void *base, uint32_t n_sent, uint32_t n_failed);
/* Take over from a dead muxer (after mg_hand_recover and the ring resets): frames it held
 * that it had not counted yet are counted as recovered (the forwarded ones also in
 * MG_MS_LOST_FWD: they may or may not have left), all go to the sent ring (what does not
 * fit stays in the hand, counted, for mg_mux_done(0, 0)).  Idempotent.  Returns frames
 * recovered or -errno. */
int mg_mux_recover(struct mg_mux *m, void *base);

#endif
