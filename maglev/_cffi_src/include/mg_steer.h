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
 * uniformly saturated pipeline from spraying every flow over every worker.  Packets the parser rejects are spread
 * round-robin: the worker counts the drop with its reason.
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
/* Records a capture NIC could not turn into frames (counted in Python by the NIC, copied
 * here by the steering actor's tick): received and dropped with these reasons. */
#define MG_SS_NIC_UNSUPPORTED_LINKTYPE 16
#define MG_SS_NIC_FRAME_OVERFLOW 17

/* Muxer counters (muxer slot). */
#define MG_MS_TX_PACKETS 0
#define MG_MS_TX_BYTES 1     /* unused: the muxer does not touch frames (see mg_mux_done) */
#define MG_MS_TX_ERRORS 2    /* frames the NIC did not take (dropped, counted) */
#define MG_MS_BURSTS 3
#define MG_MS_RECOVERED 4
/* Latency histogram (only while the muxer runs with latency on, mg_loop.h): packets by
 * muxer-tx minus meta->rx_ts_ns, MG_MS_LAT_N log buckets (mg_lat_bucket). */
#define MG_MS_LAT0 16
#define MG_MS_LAT_N 48

struct mg_steer {
    uint64_t k0, k1;     /* flow-hash secret */
    uint32_t n_workers;
    uint32_t slot;       /* hand / stats slot */
    uint32_t free_id, sent_id;
    uint32_t rr;         /* round-robin cursor for unparsable packets */
    uint32_t fallback_min; /* room a fallback ring needs: half the ring */
    uint64_t *stats;     /* this process's mapping of the slot's stats block */
    uint32_t rx_id[MG_MAX_WORKERS];
    uint32_t ret_id[MG_MAX_WORKERS];
    uint32_t room[MG_MAX_WORKERS];
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
/* Pull up to n (<= MG_BURST_MAX) free frames into an *empty* hand.  Frames or -errno. */
int mg_steer_take(struct mg_steer *s, void *base, uint32_t n);
/* Hand entries [0, filled) hold received packets, [filled, count) unused frames: hash and
 * place the packets, return the unused frames to the free list.  fresh = 1 the first time
 * these packets are dispatched (they are counted as received), 0 for a retry of what
 * backpressure left in the hand.  Returns frames still in the hand or -errno. */
int mg_steer_dispatch(struct mg_steer *s, void *base, uint32_t filled, int fresh);
/* Hash one packet as steering does (tests): the 64-bit SipHash and the flags it would set;
 * returns the worker for n_workers, or -1 when the parser rejects the packet. */
int mg_steer_hash(const uint8_t *pkt, uint32_t len, uint64_t k0, uint64_t k1,
                  uint32_t n_workers, uint64_t *hash, uint16_t *flags);

int mg_mux_init(struct mg_mux *m, void *base, uint32_t slot);
/* Pull up to max frames from the tx rings into an *empty* hand; returns the count. */
int mg_mux_collect(struct mg_mux *m, void *base, uint32_t max);
/* The NIC took hand entries [0, n_sent) and refused the next n_failed (counted as
 * tx errors): push every entry to the sent ring.  A retry after a full sent ring passes
 * 0, 0.  Returns entries still in the hand or -errno. */
int mg_mux_done(struct mg_mux *m, void *base, uint32_t n_sent, uint32_t n_failed);

#endif
