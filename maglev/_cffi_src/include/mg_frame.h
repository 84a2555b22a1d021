/* The frame: the unit every actor and kernel moves.  Structs shared by C and Python live
 * here (Katran's balancer_structs.h habit); Python sees them through cdef/mg_frame.h.
 *
 *   frame i starts at pool + i * MG_FRAME_SIZE
 *   [ struct mg_frame_meta (MG_FRAME_META_SIZE) ][ headroom ... packet ... tail ]
 *   the packet's first byte is at  frame + MG_FRAME_META_SIZE + meta->data_off
 *   a received packet starts with data_off = MG_FRAME_HEADROOM; encapsulation lowers
 *   data_off and raises len, in place.
 *
 * A descriptor (what rings carry) is a 64-bit word: the low 32 bits are the frame index;
 * the upper 32 bits are free for the ring's user (e.g. a worker id on the return ring).
 */
#ifndef MG_FRAME_H
#define MG_FRAME_H

#include "mg_common.h"
#include "mg_consts.h"

struct mg_frame_meta {
    /* line 0: every field a packet's trip reads or writes (NIC, steering, worker, NIC
     * again).  The frame crosses cores twice per trip (steering's -> a worker's -> back),
     * so each line written here on every trip is one cache-line transfer per hop: keep
     * the per-packet fields in this line (docs/rings.md, "Frame metadata"). */
    uint32_t len;          /* packet bytes starting at data_off */
    uint32_t data_off;     /* offset of the packet from the end of the metadata */
    uint32_t flow_hash;    /* steering's hash (5-tuple, or 3-tuple for fragments) */
    uint16_t flags;        /* MG_FRAME_F_* */
    uint16_t verdict;      /* MG_VERDICT_* or a drop reason (enum mg_drop) after the worker */
    uint32_t wire_len;     /* original length on the wire (>= len when truncated capture) */
    uint16_t vip_index;    /* filled by the worker when a VIP matched */
    uint16_t worker;       /* the worker that handled it */
    int32_t backend_index; /* filled by the worker; -1 none */
    uint32_t flow_hash_hi; /* high 32 bits of steering's hash when MG_FRAME_F_HASHED */
    uint64_t rx_ts_ns;     /* receive time (CLOCK_MONOTONIC ns), steering */
    uint64_t seq;          /* NIC: the packet's position in the input (pcap, generator) */
    uint32_t acct;         /* worker: the verdict its counters include (MG_ACCT_*), 0 = none */
    uint32_t worker_ns;    /* packet tracer: ns in the worker (0 = not released yet) */
    uint64_t trace_id_hi;  /* packet tracer: 128-bit trace id when MG_FRAME_F_TRACE */
    /* line 1: the packet tracer's, written only for traced packets */
    uint64_t trace_id_lo;
    uint64_t ts_steer_ns;  /* stage timestamps for traced packets */
    uint64_t ts_worker_ns;
    uint64_t ts_tx_ns;
    uint8_t pad[MG_FRAME_META_SIZE - 96];
};

#define MG_FRAME_F_TRACE 0x0001     /* packet tracer: record stage timestamps */
#define MG_FRAME_F_FRAGMENT 0x0002  /* steering saw an IP fragment (3-tuple hash) */
#define MG_FRAME_F_GENERATED 0x0004 /* built by maglev (ICMP), not received */
#define MG_FRAME_F_REDIRECTED 0x0008 /* fragment redirected from another instance */
/* meta->len of a frame steering took from the free list that no NIC has filled yet (a
 * NIC writes len <= MG_FRAME_DATA_MAX for every frame it fills): lets a replacement tell
 * received packets from unused frames in a dead steering's hand. */
#define MG_FRAME_LEN_EMPTY 0xffffffffu
/* meta->acct: set by a worker when its stats block counts the frame's verdict. */
#define MG_ACCT_COUNTED 0x10000u
/* meta->acct: a spare frame (steering marks the frames it puts on a spare ring,
 * mg_steer_spares; the data path copies the packet's metadata into a split piece, so the
 * worker marks the spares it used again before it pulls them into its hand).  A piece is
 * not a packet: the packet is accounted by its first frame.  Worker commits keep the bit
 * (mg_worker.h); a packet from the NIC has acct = 0 (mg_steer_dispatch). */
#define MG_ACCT_PIECE 0x20000u
#define MG_FRAME_F_REDIRECT_OUT 0x0010 /* worker sent this fragment to its owner instance
                                         * (verdict stays MG_VERDICT_FORWARD: it goes on tx) */
#define MG_FRAME_F_HASHED 0x0020    /* steering: flow_hash_hi:flow_hash is the SipHash of the
                                     * packet's own 5-tuple key (not a fragment, not a
                                     * redirect), which the worker reuses (mg_dp.c) */

static inline struct mg_frame_meta *mg_frame_meta(uint8_t *pool, uint32_t idx)
{
    return (struct mg_frame_meta *)(pool + (size_t)idx * MG_FRAME_SIZE);
}

static inline uint8_t *mg_frame_data(uint8_t *pool, uint32_t idx)
{
    struct mg_frame_meta *m = mg_frame_meta(pool, idx);
    return pool + (size_t)idx * MG_FRAME_SIZE + MG_FRAME_META_SIZE + m->data_off;
}

_Static_assert(sizeof(struct mg_frame_meta) == MG_FRAME_META_SIZE, "frame meta size");
_Static_assert(offsetof(struct mg_frame_meta, acct) + sizeof(uint32_t) <= MG_CACHE_LINE &&
                   offsetof(struct mg_frame_meta, seq) + sizeof(uint64_t) <= MG_CACHE_LINE,
               "the per-packet metadata fits the frame's first line");

#endif
