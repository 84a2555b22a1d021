/* The burst kernel; the per-packet pipeline and the accounting rules are described in
 * include/mg_dp.h.  Two passes over the burst:
 *
 *   pass 1 (stateless): frame sanity, parse, VIP match, flow key and SipHash; the
 *     connection-table bucket of every packet that will look one up is prefetched, so
 *     by pass 2 the bucket lines are (mostly) in cache -- the latency of up to 256 cache
 *     misses overlaps instead of adding up (this is what keeps the 1M-flow case close to
 *     the 10k-flow case);
 *   pass 2 (stateful, in input order): connection table, fragment table, Maglev lookup,
 *     PMTU, encapsulation, outputs.  Outputs are written in input order, then the
 *     fragment table's released/expired frames, so the Python reference, which handles
 *     one packet at a time, produces identical tx/drop sequences.
 */
#include <stdlib.h>

#include "mg_dp.h"
#include "mg_encap.h"
#include "mg_hash.h"
#include "mg_quic.h"
#include "mg_trace.h"

_Static_assert(MG_DROP_COUNT <= MG_DP_MAX_DROPS, "room for every drop reason");

/* The last (dst, dport, proto) -> VIP answer: consecutive packets mostly go to the same
 * VIP and port, and one 16-byte compare is cheaper than the two probes of the port-0
 * fallback.  Kept across bursts (a worker handed bursts of a few packets paid the two
 * probes once per burst) and forgotten whenever tables_ok sees another blob or
 * generation, so it always describes the tables in use. */
struct vip_memo {
    uint8_t dst[16];
    uint16_t dport;
    uint8_t proto;
    uint8_t valid;
    int vip;
};

struct mg_dp {
    struct mg_dp_stats stats;
    struct vip_memo memo;
    int reuse_hash; /* the tables' secret is k0/k1: steering's hash may be reused */
    struct mg_ct *ct;
    struct mg_frag_table *frag;
    struct mg_ratelimit rl;
    const void *tables_seen;
    uint64_t gen_seen;
    int tables_valid;
    uint8_t own_mac_set;  /* header's own_mac / gateway_mac non-zero (derived per tables) */
    uint8_t gw_mac_set;
    uint16_t worker;
    uint64_t k0, k1; /* the flow-hash secret steering hashes with (MG_FRAME_F_HASHED) */
    /* Entries under a masked key (a src_ip / dst_port VIP) may be in the table: set by a
     * packet to such a VIP, or at start by a table that is not empty (adopted); the
     * old-key lookups of a 5-tuple VIP (other_key_backend) run only within a TCP timeout
     * of the last such packet -- an ACK flood on an instance without masked keys costs
     * nothing more. */
    uint8_t masked_on;
    uint32_t masked_last; /* ms tick */
    struct mg_dp_counter vip_c[MG_TABLES_MAX_VIPS];
    struct mg_dp_counter be_c[MG_TABLES_MAX_BACKENDS];
    /* Identities of the entries the counters are indexed by (the last valid tables), so a
     * generation change can carry each count to its VIP's/backend's new index. */
    uint32_t n_vip_keys, n_be_ids;
    struct vip_ident { uint8_t addr[16]; uint16_t port; uint8_t proto; } vip_keys[MG_TABLES_MAX_VIPS];
    uint64_t be_ids[MG_TABLES_MAX_BACKENDS];
    struct mg_dp_counter scratch[MG_TABLES_MAX_BACKENDS];
};

/* K_FLOW and K_ICMP_FLOW first: uses_ct() is one compare. */
enum kind { K_FLOW, K_ICMP_FLOW, K_DROP, K_HASH_ONLY, K_FRAG_FIRST, K_FRAG_NEXT, K_REDIRECT, K_QUIC };

/* Per-packet state between the passes (~80 bytes: the burst's array stays in L1/L2).
 * p.key is rewritten to the key selection uses (3-tuple for fragments, the quoted flow for
 * inbound ICMP errors); the rest of p describes the packet itself. */
struct work {
    struct mg_parsed p;
    uint64_t hash;
    int32_t vip;
    uint16_t reason;
    uint8_t kind;
    uint8_t owner; /* K_REDIRECT: the pool member the fragment goes to */
    int32_t quic_backend; /* K_QUIC: the backend the packet's QUIC server ID names */
    uint8_t from_cluster; /* decapsulated from a peer cluster's forwarder: never backed up */
};

/* QUIC connection-ID routing (mg_quic.h) of an unfragmented UDP packet to a QUIC VIP:
 * K_QUIC with the server's backend, or the kind it had (hashing), counted either way. */
static inline uint8_t quic_kind(struct mg_dp *dp, const void *tables, struct work *wk,
                                const uint8_t *pkt, uint8_t kind)
{
    if (kind != K_FLOW && kind != K_HASH_ONLY)
        return kind;
    int32_t b = mg_quic_route(tables, wk->vip, pkt, &wk->p);
    if (b < 0) {
        dp->stats.quic_hashed++;
        return kind;
    }
    dp->stats.quic_cid_routed++;
    wk->quic_backend = b;
    return K_QUIC;
}

/* SipHash-1-3 of the 40-byte flow key with the deployment's secret (mg_hash.h). */
static inline uint64_t flow_hash(const struct mg_tables_header *h, const struct mg_flow_key *k)
{
    return mg_siphash13_40(h->hash_k0, h->hash_k1, k);
}
_Static_assert(sizeof(struct mg_flow_key) == 40, "mg_siphash13_40 hashes 40 bytes");

/* Prefetch distances (packets ahead) of pass 2's pipeline; -DPF_META=/-DPF_ENTRY= to
 * experiment (on the shared VM 12/6 vs 24/12 vs 40/20 were within the noise). */
#ifndef PF_META
#define PF_META 12
#endif
#ifndef PF_ENTRY
#define PF_ENTRY 6
#endif

/* VIP flags that change the flow key or the kind (mg_vip_select_key, no conntrack). */
#define VF_KEYED (MG_VIP_F_HASH_SRC_IP | MG_VIP_F_HASH_DST_PORT | MG_VIP_F_UDP_NO_SPORT | MG_VIP_F_NO_CONNTRACK)

static inline int uses_ct(const struct work *wk)
{
    return wk->kind <= K_ICMP_FLOW; /* K_FLOW or K_ICMP_FLOW */
}

static const uint8_t zero_mac[6];
static const uint8_t bcast_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

struct mg_dp *mg_dp_new(uint32_t ct_capacity, uint16_t worker, uint64_t k0, uint64_t k1,
                        uint64_t now_ns)
{
    struct mg_ct *ct = mg_ct_new(ct_capacity);
    return ct ? mg_dp_new_ct(ct, worker, k0, k1, now_ns) : NULL;
}

struct mg_dp *mg_dp_new_ct(struct mg_ct *ct, uint16_t worker, uint64_t k0, uint64_t k1,
                           uint64_t now_ns)
{
    if (!ct)
        return NULL;
    struct mg_dp *dp = calloc(1, sizeof(*dp));
    if (!dp) {
        mg_ct_free(ct);
        return NULL;
    }
    dp->worker = worker;
    dp->k0 = k0;
    dp->k1 = k1;
    dp->ct = ct;
    dp->masked_on = ct->n_used > 0;
    dp->masked_last = mg_ct_ticks(now_ns);
    if (mg_ratelimit_init(&dp->rl, MG_ICMP_RATE_PER_S, MG_ICMP_BURST, now_ns) < 0)
        goto fail;
    size_t fsz = mg_frag_table_size(MG_FRAG_DEFAULT_ENTRIES, MG_FRAG_DEFAULT_HOLD_FRAMES);
    if (fsz) {
        dp->frag = calloc(1, fsz);
        if (!dp->frag)
            goto fail;
        int rc = mg_frag_table_init(dp->frag, MG_FRAG_DEFAULT_ENTRIES,
                                    MG_FRAG_DEFAULT_HOLD_FRAMES, MG_FRAG_DEFAULT_HOLD_BYTES,
                                    (uint64_t)MG_FRAG_DEFAULT_TIMEOUT_MS * 1000000u, k0, k1);
        if (rc < 0)
            goto fail;
    }
    if (!dp->frag)
        goto fail;
    return dp;
fail:
    mg_dp_free(dp);
    return NULL;
}

void mg_dp_free(struct mg_dp *dp)
{
    if (!dp)
        return;
    mg_ct_free(dp->ct);
    free(dp->frag);
    free(dp);
}

const struct mg_dp_stats *mg_dp_stats(const struct mg_dp *dp) { return &dp->stats; }
const struct mg_dp_counter *mg_dp_vip_counters(const struct mg_dp *dp) { return dp->vip_c; }
const struct mg_dp_counter *mg_dp_backend_counters(const struct mg_dp *dp) { return dp->be_c; }
struct mg_ct *mg_dp_conntrack(struct mg_dp *dp) { return dp->ct; }

/* A new generation renumbers VIPs and backends: carry every counter to the index its VIP
 * (address, port, protocol) or backend (64-bit id) has in the new tables, so counts are
 * monotonic per VIP and per backend for as long as they exist; counts of entries that are
 * gone are dropped.  O(VIPs + backends) per swap, off the per-packet path. */
static void carry_counters(struct mg_dp *dp, const void *t)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const struct mg_vip *vips = mg_tables_vips(t);
    const struct mg_backend *bes = mg_tables_backends(t);

    memcpy(dp->scratch, dp->be_c, (size_t)dp->n_be_ids * sizeof(dp->scratch[0]));
    memset(dp->be_c, 0, sizeof(dp->be_c));
    for (uint32_t ob = 0; ob < dp->n_be_ids; ob++) {
        if (!dp->scratch[ob].packets && !dp->scratch[ob].bytes)
            continue;
        int32_t nb = mg_tables_find_backend(t, dp->be_ids[ob], -1);
        if (nb >= 0)
            dp->be_c[nb] = dp->scratch[ob];
    }
    for (uint32_t b = 0; b < h->n_backends; b++)
        dp->be_ids[b] = bes[b].id;
    dp->n_be_ids = h->n_backends;

    memcpy(dp->scratch, dp->vip_c, (size_t)dp->n_vip_keys * sizeof(dp->scratch[0]));
    memset(dp->vip_c, 0, sizeof(dp->vip_c));
    for (uint32_t ov = 0; ov < dp->n_vip_keys; ov++) {
        if (!dp->scratch[ov].packets && !dp->scratch[ov].bytes)
            continue;
        const struct vip_ident *k = &dp->vip_keys[ov];
        int nv = mg_tables_find_vip(t, k->addr, k->port, k->proto);
        if (nv >= 0)
            dp->vip_c[nv] = dp->scratch[ov];
    }
    for (uint32_t v = 0; v < h->n_vips; v++) {
        memcpy(dp->vip_keys[v].addr, vips[v].addr, 16);
        dp->vip_keys[v].port = vips[v].port;
        dp->vip_keys[v].proto = vips[v].proto;
    }
    dp->n_vip_keys = h->n_vips;
}

static int tables_ok(struct mg_dp *dp, const void *tables)
{
    if (!tables)
        return 0;
    const struct mg_tables_header *h = mg_tables_header_of(tables);
    if (tables == dp->tables_seen && h->generation == dp->gen_seen)
        return dp->tables_valid;
    dp->tables_seen = tables;
    dp->gen_seen = h->generation;
    dp->memo.valid = 0;
    dp->reuse_hash = h->hash_k0 == dp->k0 && h->hash_k1 == dp->k1;
    dp->tables_valid = h->magic == MG_TABLES_MAGIC && mg_tables_validate(tables, h->total_size) == 0;
    if (dp->tables_valid) {
        dp->own_mac_set = memcmp(h->own_mac, zero_mac, 6) != 0;
        dp->gw_mac_set = memcmp(h->gateway_mac, zero_mac, 6) != 0;
    }
    if (dp->tables_valid && h->generation != dp->stats.tables_generation) {
        carry_counters(dp, tables);
        dp->stats.tables_generation = h->generation;
        dp->stats.table_swaps++;
    }
    return dp->tables_valid;
}

static inline void out_drop(struct mg_dp *dp, struct mg_dp_io *io, uint32_t idx, int reason)
{
    mg_frame_meta(io->pool, idx)->verdict = (uint16_t)reason;
    dp->stats.drops[reason]++;
    io->drop[io->n_drop++] = idx;
}

static inline int is_icmp_error(const struct mg_parsed *p)
{
    if (p->proto == 1 && p->family == 4)
        return p->icmp_type == 3 || p->icmp_type == 11 || p->icmp_type == 12;
    if (p->proto == 58 && p->family == 6)
        return p->icmp_type >= 1 && p->icmp_type <= 4;
    return 0;
}

static inline int match_vip(const void *t, const struct mg_flow_key *k)
{
    int v = mg_tables_find_vip(t, k->dst, k->dport, k->proto);
    if (v < 0 && k->dport != 0)
        v = mg_tables_find_vip(t, k->dst, 0, k->proto);
    return v;
}


static inline int match_vip_memo(const void *t, const struct mg_flow_key *k, struct vip_memo *c)
{
    if (c->valid && c->dport == k->dport && c->proto == k->proto && memcmp(c->dst, k->dst, 16) == 0)
        return c->vip;
    c->vip = match_vip(t, k);
    memcpy(c->dst, k->dst, 16);
    c->dport = k->dport;
    c->proto = k->proto;
    c->valid = 1;
    return c->vip;
}

/* Non-first fragments carry no port: is there a VIP on (dst, proto) at all, and does one
 * allow fragments?  Linear in the VIPs; fragments are rare. 0 = ok, else a drop reason. */
static int frag_vip_check(const void *t, const struct mg_flow_key *k)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const struct mg_vip *vips = mg_tables_vips(t);
    int seen = 0;
    for (uint32_t i = 0; i < h->n_vips; i++) {
        if (vips[i].proto != k->proto || memcmp(vips[i].addr, k->dst, 16) != 0)
            continue;
        if (vips[i].flags & MG_VIP_F_ALLOW_FRAGMENTS)
            return 0;
        seen = 1;
    }
    return seen ? MG_DROP_FRAGMENT_NOT_ALLOWED : MG_DROP_NO_VIP;
}

static inline int32_t maglev_pick(const void *t, int vip, uint64_t hash)
{
    const struct mg_vip *v = &mg_tables_vips(t)[vip];
    return mg_tables_maglev(t, v)[hash % v->table_size];
}

/* The Maglev slot a new flow will read (a random line of a table of 65537+ entries). */
static inline __attribute__((always_inline)) void maglev_prefetch(const void *t, int vip, uint64_t hash)
{
    const struct mg_vip *v = &mg_tables_vips(t)[vip];
    MG_PREFETCH(&mg_tables_maglev(t, v)[hash % v->table_size]);
}

/* The backend a connection-table entry names in the current tables, or -1 when the flow
 * must be re-selected.  The stored index is a hint: a rebuild that removed or added
 * another backend shifts indices, so when the entry there no longer carries the stored
 * identity (or belongs to another VIP) the backend is found again by id and the entry is
 * updated to follow it.  Re-selection only when the backend is gone from this VIP or
 * unhealthy; a drained backend (weight 0: healthy, no Maglev slots) keeps its flows. */
static inline int32_t ct_backend(const void *t, const struct mg_backend *bes, uint32_t n_backends,
                                 int vip, struct mg_ct_entry *e)
{
    int32_t b = e->backend;
    if (MG_UNLIKELY(b < 0 || (uint32_t)b >= n_backends || bes[b].id != e->backend_id ||
                    bes[b].vip_index != (uint32_t)vip)) {
        b = mg_tables_find_backend(t, e->backend_id, vip);
        if (b < 0)
            return -1;
        e->backend = b;
    }
    const uint8_t want = MG_BACKEND_F_PRESENT | MG_BACKEND_F_HEALTHY;
    return (bes[b].flags & want) == want ? b : -1;
}

/* A VIP's hashing option changed (docs/operations.md, "What moves a connection"): the
 * established TCP connections were tracked under the key the VIP used before, which the
 * new key does not find.  For a TCP packet that is not a SYN -- a packet of a connection
 * that exists --, the kernel also looks under the other keys: the packet's own 5-tuple
 * when the VIP hashes on src_ip / dst_port now (first, before the VIP's key: an entry
 * there is this very connection), and the src_ip / dst_port keys when the VIP hashes on
 * the 5-tuple now (after a miss).  UDP has no such mark of a connection: its flows take
 * the new key's choice.  Returns the backend of a live entry with a present, healthy
 * backend, else -1. */
static inline int tcp_mid_flow(const struct mg_parsed *p)
{
    return p->proto == 6 && !(p->tcp_flags & 0x02);
}

static int32_t other_key_backend(struct mg_ct_view cv, const struct mg_tables_header *h, const void *t,
                                 const struct mg_backend *bes, uint32_t n_backends, int vip,
                                 const struct mg_flow_key *k, uint32_t now_t, uint32_t tcp_ms,
                                 uint32_t udp_ms, int promote)
{
    int slot = mg_ct_find_v(cv, k, flow_hash(h, k), now_t, tcp_ms, udp_ms);
    if (slot < 0)
        return -1;
    if (promote)
        mg_ct_promote_v(cv, (uint32_t)slot);
    return ct_backend(t, bes, n_backends, vip, &cv.ent[slot]);
}

/* The packet's own 5-tuple (what mg_vip_select_key masked), from its headers. */
static inline void plain_key(const uint8_t *pkt, const struct mg_parsed *p, struct mg_flow_key *k)
{
    *k = p->key;
    if (p->family == 4)
        memcpy(k->src, pkt + p->l3_off + 12, 4);
    else
        memcpy(k->src, pkt + p->l3_off + 8, 16);
    memcpy(&k->sport, pkt + p->l4_off, 2);
    memcpy(&k->dport, pkt + p->l4_off + 2, 2);
}

/* The fragment table remembers the first fragment's VIP index (the other fragments carry
 * no port to match with).  Fragments never use the connection table, so their backend is
 * the Maglev choice for the 3-tuple: recomputed from the current tables rather than taken
 * from the table, which keeps every fragment consistent with what a first fragment would
 * get now, even across a tables swap that renumbered backends.  The remembered VIP index
 * is trusted only while the VIP there still has the packet's address and protocol. */
static inline int frag_vip_ok(const void *t, int vip, const struct mg_parsed *p)
{
    if (vip < 0 || (uint32_t)vip >= mg_tables_header_of(t)->n_vips)
        return 0;
    const struct mg_vip *v = &mg_tables_vips(t)[vip];
    return v->proto == p->proto && v->family == p->family && memcmp(v->addr, p->key.dst, 16) == 0;
}

static inline void frag_key_of(const struct mg_parsed *p, struct mg_frag_key *fk)
{
    memset(fk, 0, sizeof(*fk));
    memcpy(fk->src, p->key.src, 16);
    memcpy(fk->dst, p->key.dst, 16);
    fk->id = p->frag_id;
    fk->proto = p->proto;
    fk->family = p->family;
}

/* Split an IPv4 packet whose L3 bytes exceed `mtu` into spare frames (a forwarded packet
 * too big for the encapsulation, or a redirected fragment too big for the redirect GRE):
 * pieces[0] is the frame itself, the new pieces are appended to pieces/n_pieces.  MG_OK,
 * or the drop reason (the caller drops the frame). */
static __attribute__((noinline, cold)) int
split_to_spare(struct mg_dp *dp, struct mg_dp_io *io, uint32_t idx, uint32_t l3_off,
                          uint32_t mtu, uint32_t *pieces, uint32_t *n_pieces)
{
    uint32_t avail = io->n_spare - io->n_spare_used;
    if (avail > MG_BURST_MAX)
        avail = MG_BURST_MAX;
    int rc = mg_frag_split_ipv4(io->pool, idx, l3_off, mtu, io->spare + io->n_spare_used, avail);
    if (rc < 0) /* -EINVAL: DF set or a header that cannot be split */
        return rc == -ENOSPC ? MG_DROP_NO_SPARE_FRAME : MG_DROP_TOO_BIG;
    for (int i = 0; i < rc; i++)
        pieces[(*n_pieces)++] = io->spare[io->n_spare_used + i];
    io->n_spare_used += (uint32_t)rc;
    dp->stats.split_pieces += (uint32_t)rc;
    return MG_OK;
}

/* Encapsulate every piece of one packet with `ep` and queue it on tx (verdict forward,
 * `flags` added; backend `b` set and counted when `to_backend`).  If the first piece fails the
 * packet is dropped with all its pieces (none is sent): returns 0.  A later piece (same
 * headers and headroom as the first, so this should not happen) is freed and the packet
 * still counts once: returns 1.  Inlined like forward(): `to_backend` and `flags` are
 * constants at both call sites, so neither costs a test per packet. */
static inline __attribute__((always_inline)) int
encap_pieces(struct mg_dp *dp, struct mg_dp_io *io, const uint32_t *pieces, uint32_t n_pieces,
             const struct mg_parsed *p, uint64_t hash, const struct mg_encap_params *ep, int vip,
             int32_t b, int to_backend, uint16_t flags)
{
    for (uint32_t i = 0; i < n_pieces; i++) {
        uint32_t f = pieces[i];
        struct mg_frame_meta *m = mg_frame_meta(io->pool, f);
        int rc = mg_encap(io->pool, f, p->l3_off, p->family, (uint32_t)hash, ep);
        if (rc < 0) {
            int reason = rc == -ENOSPC ? MG_DROP_NO_HEADROOM : MG_DROP_BAD_FRAME;
            if (i == 0) {
                out_drop(dp, io, f, reason);
                for (uint32_t j = 1; j < n_pieces; j++) {
                    mg_frame_meta(io->pool, pieces[j])->verdict = (uint16_t)reason;
                    io->drop[io->n_drop++] = pieces[j];
                }
                return 0;
            }
            m->verdict = (uint16_t)reason;
            io->drop[io->n_drop++] = f;
            continue;
        }
        m->verdict = MG_VERDICT_FORWARD;
        m->flags |= flags;
        m->vip_index = (uint16_t)vip;
        dp->stats.bytes_out += m->len;
        if (to_backend) {
            m->backend_index = b;
            dp->be_c[b].packets++;
            dp->be_c[b].bytes += m->len;
        }
        io->tx[io->n_tx++] = f;
    }
    return 1;
}

static inline __attribute__((always_inline)) int
send_encap(struct mg_dp *dp, struct mg_dp_io *io, const void *t, uint32_t idx,
           const struct mg_parsed *p, int vip, int32_t b, uint64_t hash, uint64_t now_ns,
           const struct mg_encap_params *epp);

/* Encapsulate frame idx (parsed as *p) toward backend b of vip, with PMTU handling, and
 * emit it.  Returns 1 if forwarded (or split and forwarded), 0 if dropped/ICMP.  Inlined
 * into its two callers: the call with nine arguments and the prologue were ~25
 * instructions per packet (bench/callgrind_dp.py).  meta: frame idx's metadata; vips, bes:
 * the tables' arrays (the burst reads their addresses once). */
static inline __attribute__((always_inline)) int
forward(struct mg_dp *dp, struct mg_dp_io *io, const void *t, const struct mg_vip *vips,
        const struct mg_backend *bes, uint32_t idx, struct mg_frame_meta *meta,
        const struct mg_parsed *p, int vip, int32_t b, uint64_t hash, uint64_t now_ns)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const struct mg_vip *v = &vips[vip];
    const struct mg_backend *be = &bes[b];
    uint8_t *pkt = (uint8_t *)meta + MG_FRAME_META_SIZE + meta->data_off; /* mg_frame_data */
    meta->vip_index = (uint16_t)vip;
    meta->backend_index = b;

    /* Fast path, the common case: GRE in IPv4 around IPv4 that fits the MTU, with the
     * headroom for it -- the same bytes and the same accounting as the general path below
     * (mg_encap uses the same mg_encap_gre4_write), without building the parameter block,
     * the PMTU dispatch and the call. */
    const uint32_t gre4_hdr = 14 + MG_ENCAP_GRE4_OVH;
    if (MG_LIKELY(v->encap == MG_ENCAP_GRE && be->family == 4 && p->family == 4 && h->has_src4 &&
                  (uint32_t)p->l3_len + MG_ENCAP_GRE4_OVH <= h->mtu &&
                  meta->data_off + p->l3_off >= gre4_hdr)) {
        uint8_t *l3 = pkt + p->l3_off;
        mg_encap_gre4_write(l3, p->l3_len, dp->gw_mac_set ? h->gateway_mac : pkt + 6,
                            dp->own_mac_set ? h->own_mac : pkt, h->src4, be->addr);
        meta->data_off = meta->data_off + p->l3_off - gre4_hdr;
        meta->len = gre4_hdr + p->l3_len;
        meta->verdict = MG_VERDICT_FORWARD;
        dp->stats.bytes_out += meta->len;
        dp->be_c[b].packets++;
        dp->be_c[b].bytes += meta->len;
        io->tx[io->n_tx++] = idx;
        dp->stats.forwarded++;
        if (p->frag & MG_PF_FRAGMENT)
            dp->stats.fragments++;
        return 1;
    }

    struct mg_encap_params ep;
    ep.type = v->encap;
    ep.outer_family = v->encap == MG_ENCAP_L2 ? v->family : be->family;
    ep.vxlan_port = v->vxlan_port;
    ep.vni = v->vxlan_vni;
    /* Outer Ethernet: configured MACs, else reflect the frame back to the router that
     * delivered it (its source MAC), from the address it was sent to (ours).  Whether the
     * MACs are configured is derived once per tables (tables_ok), not per packet. */
    memcpy(ep.eth_src, dp->own_mac_set ? h->own_mac : pkt, 6);
    if (v->encap == MG_ENCAP_L2)
        memcpy(ep.eth_dst, be->mac, 6);
    else
        memcpy(ep.eth_dst, dp->gw_mac_set ? h->gateway_mac : pkt + 6, 6);
    if (v->encap == MG_ENCAP_VXLAN) { /* mg_encap reads the inner MACs for VXLAN only */
        memcpy(ep.inner_eth_src, h->inner_mac, 6);
        memcpy(ep.inner_eth_dst, memcmp(be->mac, zero_mac, 6) ? be->mac : bcast_mac, 6);
    }
    memset(ep.src, 0, sizeof(ep.src));
    if (v->encap != MG_ENCAP_L2) {
        if (be->family == 4) {
            if (!h->has_src4)
                return out_drop(dp, io, idx, MG_DROP_NO_SOURCE_ADDRESS), 0;
            memcpy(ep.src, h->src4, 4);
        } else {
            if (!h->has_src6)
                return out_drop(dp, io, idx, MG_DROP_NO_SOURCE_ADDRESS), 0;
            memcpy(ep.src, h->src6, 16);
        }
    }
    memcpy(ep.dst, be->addr, 16);
    return send_encap(dp, io, t, idx, p, vip, b, hash, now_ns, &ep);
}

/* The rest of forward(): path MTU (ICMP too big, or splitting a DF-clear IPv4 packet into
 * spare frames), encapsulation with *ep, transmission.  b < 0: not a backend (a backup
 * cluster's forwarder, cluster_out): no per-backend counters. */
static inline __attribute__((always_inline)) int
send_encap(struct mg_dp *dp, struct mg_dp_io *io, const void *t, uint32_t idx,
           const struct mg_parsed *p, int vip, int32_t b, uint64_t hash, uint64_t now_ns,
           const struct mg_encap_params *epp)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    struct mg_frame_meta *meta = mg_frame_meta(io->pool, idx);
    uint8_t *pkt = mg_frame_data(io->pool, idx);
    uint32_t len = meta->len;
    const struct mg_encap_params ep = *epp;

    int ovh = mg_encap_overhead(ep.type, ep.outer_family);
    if (ovh < 0)
        return out_drop(dp, io, idx, MG_DROP_BAD_TABLES), 0;
    /* Fast path: the parser already knows the IP length, and mg_pmtu_check() answers FITS
     * exactly when l3_len + overhead <= mtu. */
    int pm = (uint32_t)p->l3_len + (uint32_t)ovh <= h->mtu
                 ? MG_PMTU_FITS
                 : mg_pmtu_check(pkt, len, p->l3_off, p->family, p->proto, p->l4_off,
                                 (uint32_t)ovh, h->mtu);
    uint32_t pieces[1 + MG_BURST_MAX];
    uint32_t n_pieces = 1;
    pieces[0] = idx;
    if (pm == MG_PMTU_ICMP) {
        if (!mg_ratelimit_take(&dp->rl, now_ns))
            return out_drop(dp, io, idx, MG_DROP_ICMP_RATE_LIMITED), 0;
        int rc = mg_icmp_too_big(io->pool, idx, p->l3_off, p->family, h->mtu - (uint32_t)ovh);
        if (rc < 0)
            return out_drop(dp, io, idx, rc == -ENOSPC ? MG_DROP_NO_HEADROOM : MG_DROP_TOO_BIG), 0;
        dp->stats.drops[MG_DROP_TOO_BIG]++;
        dp->stats.icmp_sent++;
        meta->verdict = MG_VERDICT_ICMP;
        dp->stats.bytes_out += meta->len;
        io->tx[io->n_tx++] = idx;
        return 0;
    } else if (pm == MG_PMTU_FRAGMENT) {
        int reason = split_to_spare(dp, io, idx, p->l3_off, h->mtu - (uint32_t)ovh, pieces, &n_pieces);
        if (reason != MG_OK)
            return out_drop(dp, io, idx, reason), 0;
    } else if (pm != MG_PMTU_FITS) {
        return out_drop(dp, io, idx, MG_DROP_TOO_BIG), 0;
    }
    /* b = -1: to a backup cluster's forwarder (cluster_out), no backend to count */
    if (!encap_pieces(dp, io, pieces, n_pieces, p, hash, &ep, vip, b, b >= 0, 0))
        return 0;
    dp->stats.forwarded++;
    if (p->frag & MG_PF_FRAGMENT)
        dp->stats.fragments++;
    return 1;
}

/* ------------------------------------------------------------------ fragments across
 * instances (paper 4.3).  ECMP may split the fragments of one datagram over several maglev
 * instances (a router that hashes a first fragment with its ports and the others without).
 * Every instance knows the pool (mg_tables.h, same sorted list everywhere), so a fragment
 * of a fragment-enabled VIP has one owner: pool[3-tuple hash % n_pool], the same hash the
 * Maglev choice of a fragment uses.  A fragment that arrives elsewhere is sent to its owner
 * in GRE with the key MG_REDIRECT_GRE_KEY (MG_ENCAP_GRE_REDIRECT, mg_encap.h); the owner
 * decapsulates it in place, marks the frame MG_FRAME_F_REDIRECTED and handles it like a
 * fragment that arrived there (fragment table, 3-tuple Maglev, encapsulation to the
 * backend), never redirecting it again -- so a disagreement between instances (different
 * pools during a config roll-out) costs at most one extra hop, never a loop. */

static inline const uint8_t *pool_addr(const void *t, uint32_t i)
{
    return (const uint8_t *)t + mg_tables_header_of(t)->pool_off + 16u * i;
}

static inline uint32_t rd16be(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

/* Offset of the GRE header in pkt (parsed as *p, IP protocol 47) when at least `need`
 * bytes of the IP packet follow it, else 0: also for a fragment or IPv6 extension headers
 * (redirect_in and cluster_in: their senders never fragment the outer packet nor add
 * extension headers). */
static inline uint32_t gre_off(const struct mg_parsed *p, const uint8_t *pkt, uint32_t need)
{
    if (p->frag & MG_PF_FRAGMENT)
        return 0;
    uint32_t gre;
    if (p->family == 4)
        gre = p->l3_off + (uint32_t)(pkt[p->l3_off] & 0x0f) * 4;
    else if (pkt[p->l3_off + 6] == 47)
        gre = p->l3_off + 40u;
    else
        return 0;
    return p->l3_off + (uint32_t)p->l3_len >= gre + need ? gre : 0;
}

/* Frame idx (pkt, meta) becomes its inner L3 packet at inner_off (ethertype ptype, up to
 * end) as an Ethernet frame, *p re-parsed (mg_parse's result).  The inner packet stays
 * where it is; an Ethernet header is written in front of it over the end of the outer
 * headers (>= 24 bytes, so the 12 MAC bytes never overlap); Ethernet padding after the
 * outer packet goes too. */
static inline int decap_eth(uint8_t *pkt, struct mg_frame_meta *meta, uint32_t inner_off,
                            uint32_t ptype, uint32_t end, struct mg_parsed *p)
{
    uint32_t cut = inner_off - 14;
    memmove(pkt + cut, pkt, 12);
    pkt[cut + 12] = (uint8_t)(ptype >> 8);
    pkt[cut + 13] = (uint8_t)ptype;
    meta->data_off += cut;
    meta->len = end - cut;
    return mg_parse(pkt + cut, meta->len, p);
}

/* A packet addressed to this instance's pool address with IP protocol 47.  Returns 0 when
 * it is not for us (other family or destination: it goes on as an ordinary packet), 1
 * when it was a marked redirect from another pool member and frame idx now holds the inner
 * packet as an Ethernet frame (outer MACs, inner ethertype; *p re-parsed), or a drop
 * reason (> 1). */
static int redirect_in(const void *t, uint8_t *pool, uint32_t idx, struct mg_parsed *p)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    if (p->family != h->pool_family || memcmp(p->key.dst, pool_addr(t, h->pool_self), 16) != 0)
        return 0;
    int member = 0;
    for (uint32_t i = 0; i < h->n_pool; i++)
        if (i != h->pool_self && memcmp(pool_addr(t, i), p->key.src, 16) == 0)
            member = 1;
    if (!member)
        return MG_DROP_REDIRECT_FOREIGN;
    struct mg_frame_meta *meta = mg_frame_meta(pool, idx);
    uint8_t *pkt = mg_frame_data(pool, idx);
    uint32_t gre = gre_off(p, pkt, 8), end = p->l3_off + (uint32_t)p->l3_len;
    if (!gre)
        return MG_DROP_BAD_REDIRECT;
    uint32_t key = rd16be(pkt + gre + 4) << 16 | rd16be(pkt + gre + 6);
    if (rd16be(pkt + gre) != MG_GRE_F_KEY || key != MG_REDIRECT_GRE_KEY)
        return MG_DROP_REDIRECT_UNMARKED;
    uint32_t ptype = rd16be(pkt + gre + 2);
    if (ptype != 0x0800 && ptype != 0x86dd)
        return MG_DROP_BAD_REDIRECT;
    meta->flags |= MG_FRAME_F_REDIRECTED;
    int rc = decap_eth(pkt, meta, gre + 8, ptype, end, p);
    if (rc != MG_OK)
        return rc;
    if (!(p->frag & MG_PF_FRAGMENT))
        return MG_DROP_BAD_REDIRECT; /* only fragments are ever redirected */
    return 1;
}

/* GRE encapsulation parameters (type, outer family) for frame pkt, sent to the next hop
 * like forward() does: configured MACs, else back to the router that delivered it.  Shared
 * by redirect_out and cluster_out, which fill in the addresses. */
static inline void gre_params(struct mg_encap_params *ep, const struct mg_dp *dp,
                              const struct mg_tables_header *h, const uint8_t *pkt, uint8_t type,
                              uint8_t family)
{
    memset(ep, 0, sizeof *ep);
    ep->type = type;
    ep->outer_family = family;
    memcpy(ep->eth_src, dp->own_mac_set ? h->own_mac : pkt, 6);
    memcpy(ep->eth_dst, dp->gw_mac_set ? h->gateway_mac : pkt + 6, 6);
}

/* The owner of a fragment whose 3-tuple hash is `hash`, or -1 when it is this instance
 * (or there is no pool). */
static inline int frag_owner(const struct mg_tables_header *h, uint64_t hash)
{
    if (h->n_pool < 2)
        return -1;
    uint32_t o = (uint32_t)(hash % h->n_pool);
    return o == h->pool_self ? -1 : (int)o;
}

/* Send fragment idx (parsed as *p) to pool member `owner` in marked GRE.  The link MTU of
 * the tables applies to the outer packet (28/48 bytes of GRE on top).  An IPv4 fragment
 * that no longer fits and has DF clear is split again first, exactly as forward() splits a
 * DF-clear packet (mg_frag_split_ipv4 into spare frames: offsets stay relative to the
 * original datagram, MF on every piece but the last, which keeps the fragment's own MF),
 * and every piece goes to the owner in its own GRE packet; the owner handles the pieces
 * like any fragments.  The first piece keeps the whole L4 header: the tables' MTU is at
 * least 576, so a piece carries at least (576 - 48 - 60) & ~7 = 464 payload bytes, more
 * than the longest L4 header (TCP, 60).  IPv6 fragments that do not fit are dropped
 * (too_big): routers never fragment IPv6, and no ICMP is sent about a fragment we were
 * only relaying (see docs/datapath.md). */
static void redirect_out(struct mg_dp *dp, struct mg_dp_io *io, const void *t, uint32_t idx,
                         const struct mg_parsed *p, int vip, int owner, uint64_t hash)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    struct mg_frame_meta *meta = mg_frame_meta(io->pool, idx);
    const uint8_t *pkt = mg_frame_data(io->pool, idx);
    struct mg_encap_params ep;
    gre_params(&ep, dp, h, pkt, MG_ENCAP_GRE_REDIRECT, h->pool_family);
    memcpy(ep.src, pool_addr(t, h->pool_self), 16);
    memcpy(ep.dst, pool_addr(t, (uint32_t)owner), 16);
    meta->vip_index = (uint16_t)vip;
    uint32_t ovh = (uint32_t)mg_encap_overhead(ep.type, ep.outer_family);
    uint32_t pieces[1 + MG_BURST_MAX];
    uint32_t n_pieces = 1;
    pieces[0] = idx;
    if ((uint32_t)p->l3_len + ovh > h->mtu) {
        if (p->family != 4) {
            out_drop(dp, io, idx, MG_DROP_TOO_BIG);
            return;
        }
        /* DF set (or a header that cannot be split): too_big */
        int reason = split_to_spare(dp, io, idx, p->l3_off, h->mtu - ovh, pieces, &n_pieces);
        if (reason != MG_OK) {
            out_drop(dp, io, idx, reason);
            return;
        }
    }
    /* on the wire like any forward (mg_worker.c), marked as a redirect */
    if (encap_pieces(dp, io, pieces, n_pieces, p, hash, &ep, vip, -1, 0, MG_FRAME_F_REDIRECT_OUT))
        dp->stats.redirected++;
}

/* ------------------------------------------------------------------ VIP matching across
 * clusters (paper 4.2, tables format 5, mg_tables.h).  A packet to a peer cluster's
 * address (its prefix + suffix s) is served as this cluster's VIP with suffix s
 * (cluster_vip); GRE from a peer cluster's forwarder to this instance's source address is
 * decapsulated and handled like a packet that arrived directly (cluster_in); a local VIP
 * with no healthy backend sends its packets in GRE to the first backup cluster's
 * forwarders (cluster_out), unless they came from a peer cluster already -- so backup
 * traffic crosses at most one cluster and never loops. */

/* The VIP of this cluster a packet to a peer cluster's address maps to, or -1. */
static int cluster_vip(const void *t, const struct mg_flow_key *k)
{
    struct mg_flow_key local = *k;
    if (mg_cluster_map(t, k->dst, k->family, local.dst) <= 0)
        return -1;
    return match_vip(t, &local);
}

/* GRE (RFC 2784, no checksum, key or sequence: what cluster_out sends) to this instance's
 * source address from a peer cluster's forwarder.  0: not such a packet (it goes on as an
 * ordinary packet); 1: frame idx now holds the inner packet as an Ethernet frame (*p
 * re-parsed); else a drop reason. */
static int cluster_in(const void *t, uint8_t *pool, uint32_t idx, struct mg_parsed *p)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const uint8_t *own = p->family == 4 ? h->src4 : h->src6;
    uint32_t alen = p->family == 4 ? 4 : 16;
    if (!(p->family == 4 ? h->has_src4 : h->has_src6) || memcmp(p->key.dst, own, alen) != 0)
        return 0;
    const struct mg_cluster *c = mg_tables_clusters(t);
    const struct mg_cluster_fwd *f = mg_tables_fwd(t);
    int known = 0;
    for (uint32_t i = 1; i < h->n_clusters && !known; i++)
        for (uint32_t j = c[i].fwd_first; j < (uint32_t)c[i].fwd_first + c[i].n_fwd; j++)
            if (f[j].family == p->family && memcmp(f[j].addr, p->key.src, 16) == 0)
                known = 1;
    if (!known)
        return 0;
    struct mg_frame_meta *meta = mg_frame_meta(pool, idx);
    uint8_t *pkt = mg_frame_data(pool, idx);
    uint32_t gre = gre_off(p, pkt, 4 + 20), end = p->l3_off + (uint32_t)p->l3_len;
    if (!gre)
        return MG_DROP_BAD_CLUSTER_GRE;
    uint32_t ptype = rd16be(pkt + gre + 2);
    if (rd16be(pkt + gre) != 0 || (ptype != 0x0800 && ptype != 0x86dd))
        return MG_DROP_BAD_CLUSTER_GRE;
    int rc = decap_eth(pkt, meta, gre + 4, ptype, end, p);
    if (rc != MG_OK)
        return rc;
    if ((p->frag & MG_PF_FRAGMENT) || p->proto == 47)
        return MG_DROP_BAD_CLUSTER_GRE; /* cluster_out never sends fragments or GRE */
    return 1;
}

/* Frame idx of VIP vip has no healthy backend: GRE to one of the first backup cluster's
 * forwarders (chosen by the flow hash), with the path-MTU handling of forward(). */
static inline int cluster_out(struct mg_dp *dp, struct mg_dp_io *io, const void *t, uint32_t idx,
                              const struct mg_parsed *p, int vip, uint64_t hash, uint64_t now_ns)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const struct mg_cluster *c = &mg_tables_clusters(t)[h->backup_cluster];
    const struct mg_cluster_fwd *f = &mg_tables_fwd(t)[c->fwd_first + (uint32_t)(hash % c->n_fwd)];
    struct mg_frame_meta *meta = mg_frame_meta(io->pool, idx);
    const uint8_t *pkt = mg_frame_data(io->pool, idx);
    meta->vip_index = (uint16_t)vip;
    meta->backend_index = -1;
    struct mg_encap_params ep;
    gre_params(&ep, dp, h, pkt, MG_ENCAP_GRE, f->family);
    memcpy(ep.src, f->family == 4 ? h->src4 : h->src6, f->family == 4 ? 4 : 16);
    memcpy(ep.dst, f->addr, 16);
    return send_encap(dp, io, t, idx, p, vip, -1, hash, now_ns, &ep);
}

static void drain_frag(struct mg_dp *dp, struct mg_dp_io *io, const void *t, uint64_t now_ns,
                       uint32_t max_buckets)
{
    if (MG_LIKELY(mg_frag_idle(dp->frag))) { /* nothing held, nothing queued: the usual case */
        mg_frag_skip(dp->frag, max_buckets); /* = mg_frag_expire of an idle table */
        return;
    }
    mg_frag_expire(dp->frag, now_ns, max_buckets);
    struct mg_frag_out outs[MG_DP_DRAIN_MAX];
    int n = mg_frag_drain(dp->frag, outs, MG_DP_DRAIN_MAX);
    for (int i = 0; i < n; i++) {
        uint32_t idx = outs[i].frame;
        if (dp->stats.held)
            dp->stats.held--;
        if (outs[i].reason == MG_FRAG_R_EXPIRED) {
            out_drop(dp, io, idx, MG_DROP_FRAG_EXPIRED);
            continue;
        }
        if (outs[i].reason != MG_FRAG_R_RELEASED) {
            out_drop(dp, io, idx, MG_DROP_FRAG_EVICTED);
            continue;
        }
        struct mg_frame_meta *meta = mg_frame_meta(io->pool, idx);
        struct mg_parsed p;
        int rc = mg_parse(mg_frame_data(io->pool, idx), meta->len, &p);
        if (rc != MG_OK) {
            out_drop(dp, io, idx, rc);
            continue;
        }
        int vip = outs[i].vip_index;
        struct mg_flow_key k = p.key;
        k.sport = k.dport = 0;
        uint64_t hash = flow_hash(mg_tables_header_of(t), &k);
        if (!frag_vip_ok(t, vip, &p)) {
            out_drop(dp, io, idx, MG_DROP_NO_VIP);
            continue;
        }
        int32_t b = maglev_pick(t, vip, hash);
        if (b < 0) {
            out_drop(dp, io, idx, MG_DROP_NO_BACKEND);
            continue;
        }
        forward(dp, io, t, mg_tables_vips(t), mg_tables_backends(t), idx, mg_frame_meta(io->pool, idx), &p, vip,
                b, hash, now_ns);
    }
}

static int io_ok(const struct mg_dp_io *io)
{
    return io && io->pool && (io->n == 0 || io->frames) && io->n <= MG_BURST_MAX && io->tx &&
           io->drop && io->n_spare <= (1u << 24) && (io->n_spare == 0 || io->spare) &&
           io->tx_cap >= io->n + io->n_spare + MG_DP_DRAIN_MAX &&
           io->drop_cap >= io->n + io->n_spare + MG_DP_DRAIN_MAX;
}

int mg_dp_burst(struct mg_dp *dp, const void *tables, uint64_t now_ns, struct mg_dp_io *io)
{
    if (!dp || !io_ok(io))
        return -EINVAL;
    io->n_tx = io->n_drop = io->n_spare_used = 0;
    uint32_t n = io->n;
    dp->stats.bursts++;
    dp->stats.packets_in += n;
    int ok = tables_ok(dp, tables);
    struct work w[MG_BURST_MAX + PF_META]; /* + PF_META: K_DROP padding for the prefetches */
    const struct mg_tables_header *h = ok ? mg_tables_header_of(tables) : NULL;
    const uint32_t now_t = mg_ct_ticks(now_ns);

    const uint16_t worker = dp->worker;
    uint8_t *const pool = io->pool; /* a local: GCC reloads io->pool after every frame store */
    struct vip_memo memo = dp->memo; /* a local copy during the burst (kept in registers) */
    const struct mg_vip *const vips = ok ? mg_tables_vips(tables) : NULL;
    const struct mg_backend *const bes = ok ? mg_tables_backends(tables) : NULL;
    const uint32_t n_backends = ok ? h->n_backends : 0;
    const uint32_t tcp_ms = ok ? h->tcp_timeout_ms : 0, udp_ms = ok ? h->udp_timeout_ms : 0;
    /* Steering's hash (MG_FRAME_F_HASHED) is reused when it was keyed like the tables. */
    const int reuse_hash = ok && dp->reuse_hash;

    /* Pass 1: stateless classification, hashing, prefetch. */
    for (uint32_t i = 0; i < n; i++) {
        struct work *wk = &w[i];
        uint32_t idx = io->frames[i];
        struct mg_frame_meta *meta = mg_frame_meta(pool, idx);
        meta->worker = worker;
        meta->backend_index = -1;
        /* set below, by this burst only (steering keeps other flags of a reused frame) */
        /* flags, data_off, len in locals: with -fno-strict-aliasing GCC reloads them after
         * every store otherwise (the fast lane reads them; nothing there changes them) */
        const uint16_t fl = meta->flags & (uint16_t)~(MG_FRAME_F_REDIRECTED | MG_FRAME_F_REDIRECT_OUT);
        meta->flags = fl;
        wk->kind = K_DROP;
        if (fl & MG_FRAME_F_TRACE)
            meta->ts_worker_ns = now_ns;
        const uint32_t data_off = meta->data_off, len = meta->len;
        if (data_off > MG_FRAME_SIZE - MG_FRAME_META_SIZE ||
            len > MG_FRAME_SIZE - MG_FRAME_META_SIZE - data_off) {
            wk->reason = MG_DROP_BAD_FRAME;
            continue;
        }
        dp->stats.bytes_in += len;
        if (!ok) {
            wk->reason = MG_DROP_BAD_TABLES;
            continue;
        }
        const uint8_t *pkt = (const uint8_t *)meta + MG_FRAME_META_SIZE + data_off; /* mg_frame_data */
        int redirected = 0;
        wk->from_cluster = 0;
        uint8_t kind = K_FLOW;
        /* The common frame (mg_parse_fast4: IPv4 TCP/UDP, no options, not a fragment) is
         * neither GRE nor ICMP nor a fragment: none of the checks below applies to it. */
        const int common = mg_parse_fast4(pkt, len, &wk->p);
        if (MG_UNLIKELY(!common)) {
            int rc = mg_parse(pkt, meta->len, &wk->p);
            if (rc != MG_OK) {
                wk->reason = (uint16_t)rc;
                continue;
            }
            if (MG_UNLIKELY(h->n_clusters > 1 && wk->p.proto == 47)) {
                int r = cluster_in(tables, io->pool, idx, &wk->p);
                if (r > 1) {
                    wk->reason = (uint16_t)r;
                    continue;
                }
                if (r == 1) {
                    wk->from_cluster = 1;
                    dp->stats.cluster_in++;
                    pkt = mg_frame_data(pool, idx);
                }
            }
            if (MG_UNLIKELY(h->n_pool && wk->p.proto == 47 && !wk->from_cluster)) {
                int r = redirect_in(tables, io->pool, idx, &wk->p);
                if (r > 1) {
                    wk->reason = (uint16_t)r;
                    continue;
                }
                if (r == 1) {
                    redirected = 1;
                    dp->stats.redirect_in++;
                    pkt = mg_frame_data(pool, idx);
                }
            }
            if (wk->p.frag & MG_PF_FRAGMENT) {
                if (!(wk->p.frag & MG_PF_FIRST)) {
                    int r = frag_vip_check(tables, &wk->p.key);
                    if (r) {
                        wk->reason = (uint16_t)r;
                        continue;
                    }
                    wk->kind = K_FRAG_NEXT;
                    if (!redirected && h->n_pool > 1) { /* ports are 0 already: the 3-tuple */
                        wk->hash = flow_hash(h, &wk->p.key);
                        int o = frag_owner(h, wk->hash);
                        if (o >= 0) {
                            wk->kind = K_REDIRECT;
                            wk->owner = (uint8_t)o;
                            wk->vip = 0;
                        }
                    }
                    continue;
                }
                kind = K_FRAG_FIRST;
            } else if (wk->p.l4_off && is_icmp_error(&wk->p)) {
                struct mg_flow_key qk;
                int q = mg_icmp_quoted_flow(pkt, meta->len, wk->p.l3_off, wk->p.family,
                                            wk->p.l4_off, &qk);
                if (q == MG_QUOTE_5TUPLE || q == MG_QUOTE_3TUPLE) {
                    kind = q == MG_QUOTE_5TUPLE ? K_ICMP_FLOW : K_HASH_ONLY;
                    wk->p.key = qk;
                } else if (q != -ENOMSG) { /* -ENOMSG: not an error after all, an ordinary packet */
                    wk->reason = MG_DROP_BAD_ICMP;
                    continue;
                }
            }
        }
        int vip = match_vip_memo(tables, &wk->p.key, &memo);
        if (MG_UNLIKELY(vip < 0 && h->n_clusters > 1 && kind != K_FRAG_FIRST)) {
            vip = cluster_vip(tables, &wk->p.key); /* a peer cluster's address (4.2) */
            dp->stats.cluster_matched += vip >= 0;
        }
        if (vip < 0) {
            wk->reason = MG_DROP_NO_VIP;
            continue;
        }
        wk->vip = vip;
        const struct mg_vip *vp = &vips[vip];
        const uint8_t vflags = vp->flags;
        if (MG_LIKELY(common && !(vflags & VF_KEYED) && !vp->quic_sid_len)) {
            /* The common frame to a VIP with the plain 5-tuple, connection tracking and no
             * QUIC routing: K_FLOW, the key as parsed -- what the general lane below
             * decides for it, with its tests answered. */
            wk->hash = reuse_hash && (fl & MG_FRAME_F_HASHED)
                           ? (uint64_t)meta->flow_hash_hi << 32 | meta->flow_hash
                           : flow_hash(h, &wk->p.key);
            wk->kind = K_FLOW;
            continue;
        }
        if (kind == K_FRAG_FIRST) {
            if (!(vflags & MG_VIP_F_ALLOW_FRAGMENTS)) {
                wk->reason = MG_DROP_FRAGMENT_NOT_ALLOWED;
                continue;
            }
            wk->p.key.sport = wk->p.key.dport = 0; /* 3-tuple: other fragments have no ports */
        } else {
            /* per-VIP hashing options (mg_tables.h): the key selection and conntrack use */
            mg_vip_select_key(vflags, &wk->p.key);
            if (vflags & MG_VIP_F_NO_CONNTRACK)
                kind = K_HASH_ONLY;
            if (MG_UNLIKELY(mg_tables_vips(tables)[vip].quic_sid_len) && wk->p.proto == 17)
                kind = quic_kind(dp, tables, wk, pkt, kind);
        }
        if (kind == K_FLOW && !redirected && !wk->from_cluster && (meta->flags & MG_FRAME_F_HASHED) &&
            reuse_hash &&
            mg_vip_key_is_plain(vflags, wk->p.key.proto))
            /* steering hashed this very key (the VIP does not mask it) with this very
             * secret: reuse, not redo */
            wk->hash = (uint64_t)meta->flow_hash_hi << 32 | meta->flow_hash;
        else
            wk->hash = flow_hash(h, &wk->p.key);
        wk->kind = kind;
        if (kind == K_FRAG_FIRST && !redirected) {
            int o = frag_owner(h, wk->hash);
            if (o >= 0) {
                wk->kind = K_REDIRECT;
                wk->owner = (uint8_t)o;
            }
        }
    }

    dp->memo = memo;
    const struct mg_ct_view cv = mg_ct_view_of(dp->ct); /* in registers (mg_conntrack.h) */

    /* Pass 2: state and outputs, in input order, software-pipelined: while packet i is
     * handled, the bucket metadata line of packet i + PF_META and the entry line of packet
     * i + PF_ENTRY (whose metadata arrived meanwhile) are being fetched.  A few cache
     * misses in flight at a time is what the core's miss buffers can overlap; prefetching
     * a whole burst at once only queues them. */
    for (uint32_t i = 0; i < n && i < PF_META; i++)
        if (uses_ct(&w[i]))
            mg_ct_prefetch_v(cv, w[i].hash);
    for (uint32_t i = 0; i < n && i < PF_ENTRY; i++)
        if (uses_ct(&w[i]) && mg_ct_prefetch_entry_v(cv, w[i].hash, now_t))
            maglev_prefetch(tables, w[i].vip, w[i].hash);
    for (uint32_t i = n; i < n + PF_META; i++) /* past the burst: nothing to prefetch */
        w[i].kind = K_DROP;
    for (uint32_t i = 0; i < n; i++) {
        struct work *wk = &w[i];
        const uint8_t kind = wk->kind; /* a local: stores to frames may alias *wk for GCC */
        if (uses_ct(&w[i + PF_META]))
            mg_ct_prefetch_v(cv, w[i + PF_META].hash);
        if (uses_ct(&w[i + PF_ENTRY]) &&
            mg_ct_prefetch_entry_v(cv, w[i + PF_ENTRY].hash, now_t))
            maglev_prefetch(tables, w[i + PF_ENTRY].vip, w[i + PF_ENTRY].hash); /* new flow */
        uint32_t idx = io->frames[i];
        if (MG_UNLIKELY(kind == K_DROP)) {
            out_drop(dp, io, idx, wk->reason);
            continue;
        }
        struct mg_frame_meta *const fm = mg_frame_meta(pool, idx);
        int vip = wk->vip;
        int32_t b = -1;
        if (MG_UNLIKELY(kind == K_REDIRECT)) {
            redirect_out(dp, io, tables, idx, &wk->p, vip, wk->owner, wk->hash);
            continue;
        }
        if (MG_LIKELY(kind <= K_ICMP_FLOW)) { /* K_FLOW, K_ICMP_FLOW: the common case first */
            const uint8_t vfl = mg_tables_vips(tables)[vip].flags;
            if (MG_UNLIKELY(kind == K_FLOW && (vfl & (MG_VIP_F_HASH_SRC_IP | MG_VIP_F_HASH_DST_PORT)))) {
                dp->masked_on = 1;
                dp->masked_last = now_t;
            }
            if (MG_UNLIKELY(kind == K_FLOW && (vfl & (MG_VIP_F_HASH_SRC_IP | MG_VIP_F_HASH_DST_PORT)) &&
                            tcp_mid_flow(&wk->p))) {
                struct mg_flow_key pk;
                plain_key(mg_frame_data(pool, idx), &wk->p, &pk);
                b = other_key_backend(cv, h, tables, bes, n_backends, vip, &pk, now_t, tcp_ms, udp_ms, 1);
            }
            int slot = b >= 0 ? -2 : mg_ct_find_v(cv, &wk->p.key, wk->hash, now_t, tcp_ms, udp_ms);
            if (slot >= 0) {
                struct mg_ct_entry *e = &cv.ent[slot];
                /* a later packet of the flow that is not a SYN: promote (mg_conntrack.h) */
                if (kind == K_FLOW && !(wk->p.proto == 6 && (wk->p.tcp_flags & 0x02)))
                    mg_ct_promote_v(cv, (uint32_t)slot);
                if (MG_UNLIKELY(fm->flags & MG_FRAME_F_TRACE)) /* packet tracer (mg_trace.h) */
                    fm->flags |= MG_TRACE_F_CT_HIT;
                b = ct_backend(tables, bes, n_backends, vip, e);
                if (b < 0) {
                    if (MG_UNLIKELY(fm->flags & MG_FRAME_F_TRACE))
                        fm->flags |= MG_TRACE_F_CT_RESELECT;
                    dp->ct->stats.reselected++;
                    b = maglev_pick(tables, vip, wk->hash);
                    if (b >= 0) {
                        e->backend = b;
                        e->backend_id = mg_tables_backends(tables)[b].id;
                    }
                }
            } else if (slot == -1) {
                if (MG_UNLIKELY(kind == K_FLOW && !(vfl & VF_KEYED) && tcp_mid_flow(&wk->p) && dp->masked_on &&
                                now_t - dp->masked_last < tcp_ms)) {
                    struct mg_flow_key ok = wk->p.key; /* the VIP's old key: src_ip, dst_port */
                    ok.sport = ok.dport = 0;
                    b = other_key_backend(cv, h, tables, bes, n_backends, vip, &ok, now_t, tcp_ms, udp_ms, 0);
                    if (b < 0) {
                        ok = wk->p.key;
                        memset(ok.src, 0, sizeof(ok.src));
                        ok.sport = 0;
                        b = other_key_backend(cv, h, tables, bes, n_backends, vip, &ok, now_t, tcp_ms, udp_ms, 0);
                    }
                }
                if (b < 0)
                    b = maglev_pick(tables, vip, wk->hash);
                if (b >= 0 && kind == K_FLOW && mg_ct_admit(dp->ct, now_t))
                    mg_ct_add(dp->ct, &wk->p.key, wk->hash, now_t, h->tcp_timeout_ms,
                              h->udp_timeout_ms, b, mg_tables_backends(tables)[b].id);
            }
        } else if (kind == K_FRAG_NEXT) {
            struct mg_frag_key fk;
            frag_key_of(&wk->p, &fk);
            int32_t fb = -1;
            uint16_t fv = 0;
            int rc = mg_frag_next(dp->frag, &fk, idx, fm->len, now_ns, &fb, &fv);
            if (rc == 1) {
                fm->verdict = MG_VERDICT_HELD;
                dp->stats.held++;
                continue;
            }
            if (rc < 0) {
                out_drop(dp, io, idx, rc == -ENOBUFS ? MG_DROP_FRAG_HOLD_LIMIT : MG_DROP_FRAG_TABLE_FULL);
                continue;
            }
            (void)fb; /* recomputed below: see frag_vip_ok */
            vip = fv;
            if (!frag_vip_ok(tables, vip, &wk->p)) {
                out_drop(dp, io, idx, MG_DROP_NO_VIP);
                continue;
            }
            struct mg_flow_key k = wk->p.key;
            k.sport = k.dport = 0;
            wk->hash = flow_hash(h, &k);
            b = maglev_pick(tables, vip, wk->hash);
        } else if (kind == K_QUIC) {
            b = wk->quic_backend;
        } else { /* K_HASH_ONLY, K_FRAG_FIRST */
            b = maglev_pick(tables, vip, wk->hash);
        }
        if (b < 0) {
            if (MG_UNLIKELY(h->backup_cluster && !wk->from_cluster && kind != K_FRAG_FIRST &&
                            kind != K_FRAG_NEXT)) {
                dp->vip_c[vip].packets++;
                dp->vip_c[vip].bytes += fm->len;
                dp->stats.backup_out += (uint64_t)cluster_out(dp, io, tables, idx, &wk->p, vip,
                                                              wk->hash, now_ns);
                continue;
            }
            out_drop(dp, io, idx, MG_DROP_NO_BACKEND);
            continue;
        }
        if (kind == K_FRAG_FIRST) {
            struct mg_frag_key fk;
            frag_key_of(&wk->p, &fk);
            mg_frag_first(dp->frag, &fk, b, (uint16_t)vip, now_ns);
        }
        dp->vip_c[vip].packets++;
        dp->vip_c[vip].bytes += fm->len;
        int fw = forward(dp, io, tables, vips, bes, idx, fm, &wk->p, vip, b, wk->hash, now_ns);
        if (kind != K_FLOW && fw && (kind == K_ICMP_FLOW || (kind == K_HASH_ONLY && wk->p.l4_off &&
                                               is_icmp_error(&wk->p))))
            dp->stats.icmp_forwarded++;
    }
    if (ok)
        drain_frag(dp, io, tables, now_ns, MG_DP_EXPIRE_BUCKETS);
    dp->stats.ct = dp->ct->stats;
    dp->stats.frag = dp->frag->stats;
    return (int)n;
}

int mg_dp_flush(struct mg_dp *dp, const void *tables, uint64_t now_ns, struct mg_dp_io *io)
{
    if (!dp || !io_ok(io) || io->n != 0)
        return -EINVAL;
    io->n_tx = io->n_drop = io->n_spare_used = 0;
    if (!tables_ok(dp, tables))
        return 0;
    drain_frag(dp, io, tables, now_ns, dp->frag->nbuckets);
    dp->stats.ct = dp->ct->stats;
    dp->stats.frag = dp->frag->stats;
    return (int)(io->n_tx + io->n_drop);
}
