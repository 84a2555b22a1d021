/* The packet worker's burst kernel: everything the paper's packet thread does to a packet
 * (sections 3.2-3.4, 4.3), for a burst of frames, in one call across the cffi seam.
 *
 * Per packet, in order:
 *   1. frame sanity (data_off/len inside the frame) -> bad_frame;
 *   2. mg_parse (mg_parse.h) -> a named drop reason on failure;
 *   3. inbound ICMP/ICMPv6 errors (types 3/11/12, v6 1-4): the quoted packet is a VIP
 *      flow's reply, so the flow key becomes the quoted flow reversed (mg_icmp_quoted_flow)
 *      and the error travels to that flow's backend like a packet of the flow;
 *   3a. with a maglev pool (mg_tables.h): protocol 47 to our pool address is a fragment
 *      another instance redirected here -- decapsulated in place when marked (GRE key
 *      MG_REDIRECT_GRE_KEY) and from a pool member, MG_FRAME_F_REDIRECTED set, else a
 *      redirect_* / bad_redirect drop; a fragment of a fragment-enabled VIP that was not
 *      redirected and whose owner pool[3-tuple hash % n_pool] is another instance is sent
 *      there (marked GRE, verdict FORWARD + MG_FRAME_F_REDIRECT_OUT, counted `redirected`;
 *      an IPv4 DF-clear fragment too big for the GRE is split first as in step 6, one GRE
 *      per piece; IPv6 -> too_big), see "fragments across instances" in mg_dp.c;
 *   4. VIP match: exact (dst, dport, proto), then (dst, 0, proto); none -> no_vip (never
 *      an open relay).  Non-first fragments carry no port: they match a VIP through the
 *      fragment table (the first fragment's decision) and are held until it comes;
 *   5. selection: fragments of a VIP with allow_fragments use the 3-tuple key (ports 0)
 *      and the Maglev table only (every fragment -- and every maglev instance -- finds
 *      the same backend without state, paper 4.3); other packets use the 5-tuple:
 *      connection table hit (re-selected when its backend is gone/unhealthy/moved) else
 *      Maglev lookup table[hash % M] and an insert (a failed insert is counted and the
 *      packet still forwarded, paper 3.3).  hash = mg_siphash13(secret, key, 40);
 *   6. path MTU (mg_pmtu_check): fits -> encapsulate in place (mg_encap); too big with
 *      DF (or IPv6) -> the frame becomes an ICMP "fragmentation needed"/"packet too big"
 *      to the client (rate limited) and goes out on tx with verdict MG_VERDICT_ICMP; too
 *      big without DF -> split into spare frames (mg_frag_split_ipv4), every piece
 *      encapsulated.
 *
 * Accounting: every input frame ends in exactly one of tx[] (forwarded or ICMP), drop[]
 * or the fragment table (held).  Held frames come out of a later burst or mg_dp_flush()
 * (released -> tx, expired/evicted -> drop).  A packet turned into an ICMP error counts
 * as dropped (too_big) AND as icmp_sent, so packets_in == forwarded + redirected +
 * sum(drops) + held.
 * meta->verdict is MG_VERDICT_FORWARD, MG_VERDICT_ICMP or the drop reason; vip_index and
 * backend_index are set when known; meta->worker = the dp's worker id.
 *
 * Tables: validated in full when the pointer or the generation differs from the last
 * burst's (mg_tables_validate); an invalid blob drops the burst with bad_tables.  Per-VIP
 * and per-backend counters are indexed like the tables in use (stats.tables_generation
 * says which generation their indices describe) and survive a generation change: each
 * count moves to the new index of its VIP (address, port, protocol) or backend (64-bit
 * id, mg_tables.h), so they only grow while the VIP/backend exists; counts of removed
 * ones are dropped.
 *
 * Ownership of the arrays in struct mg_dp_io: the caller owns them; capacities must be
 * tx_cap >= n + n_spare + MG_DP_DRAIN_MAX and drop_cap >= n + n_spare + MG_DP_DRAIN_MAX, n <=
 * MG_BURST_MAX, else -EINVAL and nothing is touched.  spare[] are free frames the kernel
 * may use for split pieces, taken from the front; n_spare_used says how many it took
 * (they are in tx[]; the rest stay the caller's).
 */
#ifndef MG_DP_H
#define MG_DP_H

#include "mg_common.h"
#include "mg_conntrack.h"
#include "mg_frag.h"
#include "mg_frame.h"
#include "mg_icmp.h"
#include "mg_parse.h"
#include "mg_tables.h"

/* meta->verdict values that are not drop reasons (drop reasons are < MG_DROP_COUNT). */
#define MG_VERDICT_FORWARD 0x100
#define MG_VERDICT_ICMP 0x101
#define MG_VERDICT_HELD 0x102
/* A fragment sent to its owner instance (GRE, marked): what the engines report
 * (Output.verdict, "redirected").  In the frame the kernel leaves MG_VERDICT_FORWARD --
 * the worker transmits every FORWARD frame -- and sets MG_FRAME_F_REDIRECT_OUT. */
#define MG_VERDICT_REDIRECT 0x103

/* Most fragment-table frames (released/expired) handled per burst. */
#define MG_DP_DRAIN_MAX 64
/* Fragment-table buckets examined for expiry per burst (the default table's 1024 buckets
 * are swept every 64 bursts; entries also count as absent once expired). */
#define MG_DP_EXPIRE_BUCKETS 16
/* Room reserved for drop counters (>= MG_DROP_COUNT, checked at compile time). */
#define MG_DP_MAX_DROPS 48

struct mg_dp_counter {
    uint64_t packets;
    uint64_t bytes;
};

struct mg_dp_stats {
    uint64_t bursts;
    uint64_t packets_in;        /* frames given to mg_dp_burst */
    uint64_t bytes_in;
    uint64_t forwarded;         /* input frames sent to a backend (split pieces: once) */
    uint64_t bytes_out;         /* bytes on tx (encapsulated, ICMP) */
    uint64_t icmp_sent;         /* ICMP too-big errors generated */
    uint64_t icmp_forwarded;    /* inbound ICMP errors sent to a flow's backend */
    uint64_t fragments;         /* fragments forwarded (first and non-first) */
    uint64_t held;              /* fragments held now */
    uint64_t split_pieces;      /* extra frames produced by splitting DF-clear packets */
    uint64_t table_swaps;       /* tables generation changes seen */
    uint64_t tables_generation; /* generation the per-VIP/per-backend counters describe */
    uint64_t drops[MG_DP_MAX_DROPS]; /* by enum mg_drop */
    struct mg_ct_stats ct;      /* connection table (copied at the end of each burst) */
    struct mg_frag_stats frag;  /* fragment table (copied at the end of each burst) */
    uint64_t redirected;        /* fragments sent to their owner instance (on tx) */
    uint64_t redirect_in;       /* redirected fragments received and decapsulated */
    uint64_t quic_cid_routed;   /* QUIC VIP packets sent to the backend their server ID names (mg_quic.h) */
    uint64_t quic_hashed;       /* QUIC VIP packets that went by hashing (long header, unknown ID, ...) */
    uint64_t cluster_in;        /* VIP matching: GRE from a peer cluster's forwarder, decapsulated */
    uint64_t cluster_matched;   /* VIP matching: packets to a peer cluster's address served here */
    uint64_t backup_out;        /* VIP matching: packets sent to the backup cluster (no backend) */
};

struct mg_dp_io {
    uint8_t *pool;          /* frame pool base (mg_frame.h layout) */
    const uint32_t *frames; /* input frame indices */
    uint32_t n;
    uint32_t *tx;           /* out: frames to transmit, in order */
    uint32_t tx_cap;
    uint32_t n_tx;
    uint32_t *drop;         /* out: frames to free (verdict = reason) */
    uint32_t drop_cap;
    uint32_t n_drop;
    const uint32_t *spare;  /* free frames usable for split pieces */
    uint32_t n_spare;
    uint32_t n_spare_used;
};

struct mg_dp;

/* A worker's data path state: connection table of `ct_capacity` entries (rounded up to a
 * power of two), fragment table (defaults of mg_frag.h, keyed by k0/k1 = the flow-hash
 * secret), ICMP rate limiter.  NULL on bad arguments or no memory. */
/* The same around a connection table made by the caller (a shared one: mg_ct_map_shared);
 * the data path owns it from here (mg_dp_free unmaps it; a shared file stays), also when
 * this fails (NULL). */
struct mg_dp *mg_dp_new(uint32_t ct_capacity, uint16_t worker, uint64_t k0, uint64_t k1,
                        uint64_t now_ns);
struct mg_dp *mg_dp_new_ct(struct mg_ct *ct, uint16_t worker, uint64_t k0, uint64_t k1,
                           uint64_t now_ns);
void mg_dp_free(struct mg_dp *dp);

/* Process io->frames; returns the number of input frames (>= 0) or -EINVAL. */
int mg_dp_burst(struct mg_dp *dp, const void *tables, uint64_t now_ns, struct mg_dp_io *io);

/* Expire every fragment-table entry older than now_ns and drain up to MG_DP_DRAIN_MAX
 * frames (io->n must be 0).  Call repeatedly until it returns 0 to empty the table, e.g.
 * at the end of a capture with now_ns far in the future.  Returns frames output. */
int mg_dp_flush(struct mg_dp *dp, const void *tables, uint64_t now_ns, struct mg_dp_io *io);

const struct mg_dp_stats *mg_dp_stats(const struct mg_dp *dp);
/* Per-VIP and per-backend counters: MG_TABLES_MAX_VIPS / MG_TABLES_MAX_BACKENDS entries,
 * index i = VIP/backend i of the tables of generation stats.tables_generation; packets =
 * input packets forwarded to it (a split packet counts once per piece), bytes = bytes on
 * the wire after encapsulation.  Monotonic per VIP/backend across table generations. */
const struct mg_dp_counter *mg_dp_vip_counters(const struct mg_dp *dp);
const struct mg_dp_counter *mg_dp_backend_counters(const struct mg_dp *dp);
struct mg_ct *mg_dp_conntrack(struct mg_dp *dp);


#endif
