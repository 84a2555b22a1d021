/* Packet tracer: mark a few packets in steering, let every stage stamp its time into the
 * frame metadata, collect the marked frames when they come home, turn them into spans.
 *
 * Who does what (the Python side is maglev/telemetry/packets.py (spans) and maglev/rings/trace_block.py (request words)):
 *
 *   config manager  writes a trace *request* into the trace block (below): a sampling rate
 *                   (1 in N) and/or a filter (VIP dst/port/proto, client src/prefix/port,
 *                   how many packets, until when).  `maglev ctl trace` and
 *                   [tracing].packet_sample_rate end up here.
 *   steering        once per burst, mg_trace_steer_burst() notices a new request (one
 *                   load of a sequence word).  Per packet it pays one decrement and one
 *                   branch (mg_trace_steer_hook): the countdown reaches zero only for a
 *                   sampled packet, or for every packet while a filter is armed (then the
 *                   slow path re-parses the packet to match the filter -- a cost paid only
 *                   during a `maglev ctl trace`).  A marked packet gets MG_FRAME_F_TRACE, a
 *                   random 128-bit trace id and ts_steer_ns.
 *   worker          the data path stamps ts_worker_ns at the start of the burst and sets
 *                   MG_TRACE_F_CT_HIT / _CT_RESELECT for traced packets; when the frame
 *                   leaves the worker (route_and_push reads the verdict on the same cache
 *                   line) mg_trace_worker_hook() writes the worker's end time into
 *                   meta->worker_ns (ns after ts_worker_ns, saturating).
 *   muxer           stamps ts_tx_ns after the NIC took the burst -- but only while a traced
 *                   packet is in flight (marked != finished, one shared line read per
 *                   burst), because reading each frame's flags costs a cache miss per
 *                   frame on the line the worker just wrote.
 *   steering        reclaim (frames coming home from the ret and sent rings) does the same
 *                   in-flight test, copies each traced frame's metadata into a
 *                   process-local log and clears the flag.  The steering actor's tick
 *                   drains the log (mg_trace_drain) and hands the records to the
 *                   OpenTelemetry batch exporter.  A full log drops records (counted):
 *                   the data path never waits for export.
 *
 * The trace block is the stats block of the reserved actor slot MG_SLOT_TRACE (64 u64):
 * words 0..31 are written only by the config manager (a seqlock: odd while writing),
 * words 32..63 only by steering.  Frames lost on the way (worker restart) would keep the
 * in-flight test true forever, so steering resyncs finished = marked when nothing traced
 * came home for a while (mg_trace_resync, called from Python).
 */
#ifndef MG_TRACE_H
#define MG_TRACE_H

#include "mg_common.h"
#include "mg_flow.h"
#include "mg_frame.h"

#define MG_SLOT_TRACE 6

/* meta->flags bits the data path sets on traced packets only. */
#define MG_TRACE_F_CT_HIT 0x0100      /* connection-table hit */
#define MG_TRACE_F_CT_RESELECT 0x0200 /* hit whose backend was gone: re-selected */
#define MG_TRACE_F_FILTER 0x0400      /* steering: marked by the request's filter (not sampled) */

/* Request words (config manager). */
#define MG_TW_SEQ 0        /* seqlock: odd while the request is being written */
#define MG_TW_SAMPLE 1     /* 1 in N packets (0 = off) when MG_TW_FLAGS has SAMPLE_SET */
#define MG_TW_COUNT 2      /* filter: packets to mark (0 = no filter) */
#define MG_TW_DEADLINE 3   /* filter: CLOCK_MONOTONIC ns after which it is off (0 = never) */
#define MG_TW_DST 4        /* 4, 5: 16 bytes of VIP address */
#define MG_TW_DST_META 6   /* dport (network order) | proto << 16 | family << 24 | on << 32 */
#define MG_TW_SRC 7        /* 7, 8: 16 bytes of client address */
#define MG_TW_SRC_META 9   /* sport (network order) | family << 24 | on << 32 | plen << 40 */
#define MG_TW_REQ_ID 10    /* request id (echoed in span attributes) */
#define MG_TW_FLAGS 11
#define MG_TW_F_SAMPLE_SET 1
/* Steering words. */
#define MG_TW_APPLIED 32   /* request seq steering runs */
#define MG_TW_MARKED 33    /* packets marked, total */
#define MG_TW_REQ_MARKED 34 /* packets marked by the filter of the applied request */
#define MG_TW_FINISHED 35  /* traced frames collected (or given up on by resync) */
#define MG_TW_LOST 36      /* records dropped: the local log was full */
#define MG_TW_RESYNCS 37
/* Generation-context words (config manager; a seqlock of their own, read by workers). */
#define MG_TW_GEN_SEQ 16
#define MG_TW_GEN 17       /* 17..22: struct mg_trace_gen_ctx, word by word */

/* A trace request as the config manager states it (mg_trace_arm packs it into the
 * request words): addresses in network order, ports in host order (0 = any). */
struct mg_trace_req {
    uint64_t sample_every; /* used when sample_set */
    uint64_t count;        /* filter: packets to mark (0 = no filter) */
    uint64_t deadline_ns;  /* filter: CLOCK_MONOTONIC ns after which it is off (0 = never) */
    uint64_t req_id;
    uint8_t dst_addr[16];
    uint8_t src_addr[16];
    uint16_t dst_port;
    uint16_t src_port;
    uint8_t sample_set;
    uint8_t dst_on, dst_family, proto;
    uint8_t src_on, src_family, src_plen;
};

/* What `maglev ctl trace` shows (each word read whole; the request words as one copy). */
struct mg_trace_status {
    uint64_t seq, applied, marked, request_marked, finished, lost, resyncs, count;
    uint64_t sample_every;
    uint64_t sample_set;
};

/* The W3C context of the span that published a tables generation (issue 8). */
struct mg_trace_gen_ctx {
    uint64_t generation;
    uint64_t trace_id_hi, trace_id_lo, span_id, trace_flags;
    uint64_t published_ns; /* CLOCK_REALTIME ns */
};

/* What the data path's parser says about a collected frame (the tracer's only decoder):
 * `outer` is the packet as it left (for a forwarded, encapsulated one its destination is
 * the backend), `flow` the client's packet (the inner packet of a tunnel). */
#define MG_TRACE_D_OUTER 1
#define MG_TRACE_D_FLOW 2

/* Records the steering process keeps until Python drains them. */
#define MG_TRACE_LOG 1024

/* One collected packet: its metadata and what the parser read from the frame. */
struct mg_trace_rec {
    struct mg_frame_meta meta;
    struct mg_flow_key outer;
    struct mg_flow_key flow;
    uint32_t decoded; /* MG_TRACE_D_* */
    uint32_t reserved;
};

/* Steering, per packet: decremented for every packet; 0 -> slow path. */
extern uint64_t mg_trace_cd;

/* Set the sampling rate from the config this process read (0 = off); a request with
 * MG_TW_F_SAMPLE_SET overrides it. */
void mg_trace_steer_default(uint64_t sample_every);
/* Once per dispatch: apply a new request if the block's sequence moved. */
void mg_trace_steer_burst(void *base);
/* Slow path: the countdown hit zero; maybe mark this packet. */
void mg_trace_steer_packet(void *base, struct mg_frame_meta *m, const uint8_t *pkt);

static inline void mg_trace_steer_hook(void *base, struct mg_frame_meta *m, const uint8_t *pkt)
{
    if (MG_UNLIKELY(--mg_trace_cd == 0))
        mg_trace_steer_packet(base, m, pkt);
}

/* 1 when a marked packet has not come home yet (muxer, steering reclaim). */
int mg_trace_inflight(void *base);
/* Steering reclaim: descs[0..n) just came home; collect the traced ones. */
void mg_trace_collect(void *base, uint8_t *pool, const uint64_t *descs, uint32_t n);
/* Muxer: the NIC took descs[0..n): stamp ts_tx_ns on the traced ones. */
void mg_trace_mux_stamp(uint8_t *pool, const uint64_t *descs, uint32_t n);
/* Worker: a traced frame leaves the worker. */
void mg_trace_worker_done(struct mg_frame_meta *m);

static inline void mg_trace_worker_hook(struct mg_frame_meta *m)
{
    if (MG_UNLIKELY(m->flags & MG_FRAME_F_TRACE))
        mg_trace_worker_done(m);
}

/* Steering process: move up to max collected records out; returns how many. */
int mg_trace_drain(struct mg_trace_rec *out, uint32_t max);
/* Steering process: give up on traced frames that never came home. */
void mg_trace_resync(void *base);
/* Config manager (single writer of words 0..31): publish a request; returns its sequence. */
uint64_t mg_trace_arm(void *base, const struct mg_trace_req *req);
/* Config manager: change only the sampling rate; an armed filter keeps its remaining count. */
uint64_t mg_trace_set_sampling(void *base, uint64_t sample_every);
/* Anyone. */
void mg_trace_status(void *base, struct mg_trace_status *out);
/* Config manager, right after publishing a generation. */
void mg_trace_gen_store(void *base, const struct mg_trace_gen_ctx *ctx);
/* Workers: 0 and *out, or -EAGAIN (the config manager kept writing). */
int mg_trace_gen_load(void *base, struct mg_trace_gen_ctx *out);
/* Tests: forget this process's steering state (request, countdown, log). */
void mg_trace_reset(void);

#endif
