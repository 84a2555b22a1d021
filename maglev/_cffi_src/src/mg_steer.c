/* Steering and muxer glue (design in include/mg_steer.h). */
#include "mg_steer.h"

#include <time.h>

#include "mg_dp.h"
#include "mg_encap.h"
#include "mg_hash.h"
#include "mg_parse.h"
#include "mg_ring.h"
#include "mg_shed.h"
#include "mg_trace.h"

static int ids_ok(uint32_t id) { return id != UINT32_MAX; }

int mg_steer_init(struct mg_steer *s, void *base, uint32_t slot, uint64_t k0, uint64_t k1)
{
    const struct mg_region_hdr *h = base;
    if (!s || !base || slot >= h->n_slots)
        return -EINVAL;
    memset(s, 0, sizeof *s);
    s->k0 = k0;
    s->k1 = k1;
    s->n_workers = h->n_workers;
    s->slot = slot;
    s->free_id = mg_region_ring_id(base, MG_RING_FREE, 0);
    s->sent_id = mg_region_ring_id(base, MG_RING_SENT, 0);
    if (!ids_ok(s->free_id) || !ids_ok(s->sent_id) || s->n_workers == 0 ||
        s->n_workers > MG_MAX_WORKERS)
        return -EINVAL;
    for (uint32_t i = 0; i < s->n_workers; i++) {
        s->rx_id[i] = mg_region_ring_id(base, MG_RING_RX, i);
        s->ret_id[i] = mg_region_ring_id(base, MG_RING_RET, i);
        s->spare_id[i] = mg_region_ring_id(base, MG_RING_SPARE, i);
        s->tx_id[i] = mg_region_ring_id(base, MG_RING_TX, i);
        if (!ids_ok(s->rx_id[i]) || !ids_ok(s->ret_id[i]) || !ids_ok(s->spare_id[i]) ||
            !ids_ok(s->tx_id[i]))
            return -EINVAL;
    }
    s->fallback_min = h->ring_size / 2 ? h->ring_size / 2 : 1;
    s->stuck_ns = MG_STEER_STUCK_NS;
    s->stall_ns = MG_STEER_STALL_NS;
    s->ring_size = h->ring_size;
    s->stats = mg_region_stats(base, slot);
    return s->stats ? 0 : -EINVAL;
}

/* Push: every entry before `keep_to` is kept, the others go to `to`. */
static int push_all(void *base, uint32_t slot, uint16_t *dest, uint32_t keep_to, uint32_t to)
{
    if (keep_to == 0)
        return mg_hand_push_all(base, slot, (uint16_t)to);
    uint32_t cnt;
    mg_hand_descs(base, slot, &cnt);
    for (uint32_t j = 0; j < cnt; j++)
        dest[j] = j < keep_to ? MG_HAND_KEEP : (uint16_t)to;
    return mg_hand_push(base, slot, dest, cnt);
}

static int reclaim(struct mg_steer *s, void *base, int with_sent);

int mg_steer_reclaim(struct mg_steer *s, void *base) { return reclaim(s, base, 1); }

int mg_steer_reclaim_ret(struct mg_steer *s, void *base) { return reclaim(s, base, 0); }

static int reclaim(struct mg_steer *s, void *base, int with_sent)
{
    int total = 0;
    int held = mg_hand_count(base, s->slot);
    if (held < 0)
        return held;
    uint64_t batch = __atomic_load_n(&s->stats[MG_SS_BATCH], __ATOMIC_RELAXED);
    __atomic_store_n(&s->stats[MG_SS_HELD], (uint64_t)held, __ATOMIC_RELAXED);
    __atomic_store_n(&s->stats[MG_SS_BATCH], MG_SS_B_RECLAIMING, __ATOMIC_RELEASE);
    for (uint32_t i = 0; i < s->n_workers + (with_sent ? 1u : 0u); i++) {
        uint32_t id = i < s->n_workers ? s->ret_id[i] : s->sent_id;
        for (;;) {
            int kept = mg_hand_count(base, s->slot);
            if (kept < 0)
                return kept;
            uint32_t room = MG_HAND_MAX - (uint32_t)kept;
            if (room == 0)
                return -ENOSPC;
            int n = mg_hand_pull(base, s->slot, id, room);
            if (n < 0)
                return n;
            if (n == 0)
                break;
            if (MG_UNLIKELY(mg_trace_inflight(base))) { /* packet tracer: mg_trace.h */
                uint32_t hn;
                uint64_t *hd = mg_hand_descs(base, s->slot, &hn);
                mg_trace_collect(base, mg_region_pool(base), hd + kept, (uint32_t)n);
            }
            int rc = push_all(base, s->slot, s->dest, (uint32_t)kept, s->free_id);
            if (rc < 0)
                return rc;
            total += n;
            if ((uint32_t)n < room)
                break;
        }
    }
    s->stats[MG_SS_RECLAIMED] += (uint64_t)total;
    /* The hand holds exactly the `held` packets again. */
    __atomic_store_n(&s->stats[MG_SS_BATCH], batch, __ATOMIC_RELEASE);
    return total;
}

int mg_steer_spares(struct mg_steer *s, void *base, uint32_t reserve)
{
    if (reserve > MG_SPARE_RING_SIZE)
        return -EINVAL;
    s->reserve = reserve;
    s->stats[MG_SS_SPARE_RESERVE] = reserve;
    struct mg_ring *fr = mg_region_ring_by_id(base, s->free_id);
    uint32_t owed = 0, moved = 0;
    /* Free frames pass through the hand behind whatever back pressure left at its front
     * (counted packets): the RECLAIMING batch state tells a replacement that exactly the
     * first MG_SS_HELD entries are packets (as in mg_steer_reclaim). */
    int held = mg_hand_count(base, s->slot);
    if (held < 0)
        return held;
    uint64_t batch = __atomic_load_n(&s->stats[MG_SS_BATCH], __ATOMIC_RELAXED);
    int reclaiming = 0;
    for (uint32_t i = 0; i < s->n_workers; i++) {
        struct mg_ring *r = mg_region_ring_by_id(base, s->spare_id[i]);
        /* Producer side: prod is ours, cons only grows, so this never over-counts. */
        uint32_t have = mg_ring_count(r);
        if (have >= reserve)
            continue;
        uint32_t want = reserve - have;
        if (have < reserve / 2 + (reserve & 1)) {
            int kept = mg_hand_count(base, s->slot);
            if (kept < 0)
                return kept;
            uint32_t room = MG_HAND_MAX - (uint32_t)kept;
            uint32_t free_n = mg_ring_count(fr);
            uint32_t k = want < room ? want : room;
            k = k < free_n ? k : free_n;
            if (k) {
                if (!reclaiming) {
                    __atomic_store_n(&s->stats[MG_SS_HELD], (uint64_t)held, __ATOMIC_RELAXED);
                    __atomic_store_n(&s->stats[MG_SS_BATCH], MG_SS_B_RECLAIMING, __ATOMIC_RELEASE);
                    reclaiming = 1;
                }
                int n = mg_hand_pull(base, s->slot, s->free_id, k);
                if (n < 0)
                    return n;
                uint32_t cnt;
                uint64_t *descs = mg_hand_descs(base, s->slot, &cnt);
                uint8_t *pool = mg_region_pool(base);
                for (uint32_t j = (uint32_t)kept; j < cnt; j++) {
                    /* An empty frame: the data path writes every piece from scratch. */
                    struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
                    m->verdict = 0;
                    m->flags = 0;
                    m->acct = MG_ACCT_PIECE; /* never a packet of its own (mg_frame.h) */
                }
                int rc = push_all(base, s->slot, s->dest, (uint32_t)kept, s->spare_id[i]);
                if (rc < 0)
                    return rc;
                want -= (uint32_t)n;
                moved += (uint32_t)n;
            }
            if (want)
                s->stats[MG_SS_SPARE_SHORT]++;
        }
        owed += want;
    }
    if (reclaiming) /* the hand holds exactly the `held` packets again */
        __atomic_store_n(&s->stats[MG_SS_BATCH], batch, __ATOMIC_RELEASE);
    s->owed = owed;
    s->stats[MG_SS_SPARES_SENT] += moved;
    return (int)moved;
}

static int take(struct mg_steer *s, void *base, uint32_t n, int hot);

int mg_steer_take(struct mg_steer *s, void *base, uint32_t n) { return take(s, base, n, 0); }

int mg_steer_take_hot(struct mg_steer *s, void *base, uint32_t n) { return take(s, base, n, 1); }

static int take(struct mg_steer *s, void *base, uint32_t n, int hot)
{
    if (n > MG_BURST_MAX)
        return -EINVAL;
    int kept = mg_hand_count(base, s->slot);
    if (kept != 0)
        return kept < 0 ? kept : -EBUSY;
    int hot_got = 0;
    if (hot) {
        /* Frames the muxer just sent first, straight from the sent ring (last in, first
         * out for the pool, like a DPDK mempool cache): their lines are still in some
         * core's cache, where the free list's oldest frames went cold long ago.  TAKING
         * covers them like any free frame (a replacement returns them to free). */
        __atomic_store_n(&s->stats[MG_SS_BATCH], MG_SS_B_TAKING, __ATOMIC_RELEASE);
        hot_got = mg_hand_pull(base, s->slot, s->sent_id, n);
        if (hot_got < 0)
            return hot_got;
        if (hot_got && MG_UNLIKELY(mg_trace_inflight(base))) { /* as mg_steer_reclaim */
            uint32_t hn;
            uint64_t *hd = mg_hand_descs(base, s->slot, &hn);
            mg_trace_collect(base, mg_region_pool(base), hd, (uint32_t)hot_got);
        }
        s->stats[MG_SS_RECLAIMED] += (uint64_t)hot_got;
        n -= (uint32_t)hot_got;
    }
    if (n && s->owed) {
        uint32_t free_n = mg_ring_count(mg_region_ring_by_id(base, s->free_id));
        uint32_t spare_ok = free_n > s->owed ? free_n - s->owed : 0;
        if (n > spare_ok)
            n = spare_ok;
        if (n == 0 && !hot_got) {
            s->stats[MG_SS_NO_FREE]++;
            return 0;
        }
    }
    __atomic_store_n(&s->stats[MG_SS_BATCH], MG_SS_B_TAKING, __ATOMIC_RELEASE);
    int got = n ? mg_hand_pull(base, s->slot, s->free_id, n) : 0;
    if (got < 0)
        return got;
    if (got == 0 && n > 0 && !hot_got)
        s->stats[MG_SS_NO_FREE]++;
    got += hot_got;
    if (got == 0)
        return 0;
    /* Mark the frames unfilled before the NIC may fill them (the NIC writes these
     * metadata lines next anyway).  MARKED says every frame in the hand is marked. */
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, s->slot, &cnt);
    uint8_t *pool = mg_region_pool(base);
    /* The metadata and first packet lines were last written on a worker's core (the
     * worker judges and encapsulates in place): ask for them (for writing) a few frames
     * ahead, so the misses overlap instead of coming one by one when the NIC fills them. */
    for (uint32_t j = 0; j < cnt && j < 8; j++) {
        uint8_t *f = pool + (size_t)(uint32_t)descs[j] * MG_FRAME_SIZE;
        MG_PREFETCH_W(f);
        MG_PREFETCH_W(f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM);
    }
    for (uint32_t j = 0; j < cnt; j++) {
        if (j + 8 < cnt) {
            uint8_t *f = pool + (size_t)(uint32_t)descs[j + 8] * MG_FRAME_SIZE;
            MG_PREFETCH_W(f);
            MG_PREFETCH_W(f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM);
        }
        mg_frame_meta(pool, (uint32_t)descs[j])->len = MG_FRAME_LEN_EMPTY;
    }
    __atomic_store_n(&s->stats[MG_SS_BATCH], MG_SS_B_MARKED, __ATOMIC_RELEASE);
    return got;
}

/* A fragment another instance redirected here (GRE keyed MG_REDIRECT_GRE_KEY, see
 * mg_dp.c "Fragments across instances") must reach the worker whose fragment table holds
 * the rest of its datagram, so it is steered by its *inner* 3-tuple, like the fragments
 * that arrived directly.  Only the marker is checked here; the worker checks that the
 * sender is a pool member.  Returns 1 and fills *inner when pkt is such a packet. */
static int redirected_inner(const uint8_t *pkt, const struct mg_parsed *p, struct mg_parsed *inner)
{
    if (p->key.proto != 47 || (p->frag & MG_PF_FRAGMENT))
        return 0;
    uint32_t gre;
    if (p->family == 4)
        gre = p->l3_off + (uint32_t)(pkt[p->l3_off] & 0x0f) * 4;
    else if (pkt[p->l3_off + 6] == 47)
        gre = p->l3_off + 40u; /* redirects carry no IPv6 extension headers */
    else
        return 0;
    uint32_t end = p->l3_off + (uint32_t)p->l3_len;
    if (end < gre + 8 || end - (gre + 8) > MG_FRAME_DATA_MAX)
        return 0;
    uint32_t gflags = (uint32_t)pkt[gre] << 8 | pkt[gre + 1];
    uint32_t ptype = (uint32_t)pkt[gre + 2] << 8 | pkt[gre + 3];
    uint32_t key = (uint32_t)pkt[gre + 4] << 24 | (uint32_t)pkt[gre + 5] << 16 |
                   (uint32_t)pkt[gre + 6] << 8 | pkt[gre + 7];
    if (gflags != MG_GRE_F_KEY || key != MG_REDIRECT_GRE_KEY || (ptype != 0x0800 && ptype != 0x86dd))
        return 0;
    /* mg_parse reads Ethernet frames: give it the inner packet behind a blank header. */
    uint8_t buf[14 + MG_FRAME_DATA_MAX];
    uint32_t n = end - (gre + 8);
    memset(buf, 0, 12);
    buf[12] = (uint8_t)(ptype >> 8);
    buf[13] = (uint8_t)ptype;
    memcpy(buf + 14, pkt + gre + 8, n);
    return mg_parse(buf, 14 + n, inner) == MG_OK && (inner->frag & MG_PF_FRAGMENT);
}

/* SipHash-1-3 of a 40-byte flow key (mg_hash.h; tests/actors/test_steer_fast.py compares
 * it with the Python reference). */
static inline uint64_t key_hash40(uint64_t k0, uint64_t k1, const struct mg_flow_key *k)
{
    return mg_siphash13_40(k0, k1, k);
}
_Static_assert(sizeof(struct mg_flow_key) == 40, "mg_siphash13_40 hashes 40 bytes");

static inline uint32_t be16_at(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

/* TCP / UDP header at l4 with `room` bytes to the end of the IP packet: 1 when mg_parse's
 * parse_l4 accepts it (the same checks), and the ports go into the key. */
static inline int fast_l4(const uint8_t *l4, uint32_t room, uint8_t proto, struct mg_flow_key *k)
{
    if (proto == 6) {
        uint32_t doff = (uint32_t)(l4[12] >> 4) * 4;
        if (room < 20 || doff < 20 || doff > room)
            return 0;
    } else if (proto == 17) {
        if (room < 8 || be16_at(l4 + 4) < 8)
            return 0;
    } else {
        return 0;
    }
    memcpy(&k->sport, l4, 2);
    memcpy(&k->dport, l4 + 2, 2);
    return 1;
}

/* The common packet without the general parser: untagged Ethernet, IPv4 without options
 * or IPv6 without extension headers, not a fragment, TCP or UDP, valid as mg_parse sees
 * it (same length, checksum, TTL and L4 checks).  1 and the packet's key (exactly what
 * mg_parse puts in p.key) for such a packet; 0 for any other packet, which then takes the
 * general path -- so the result never differs from mg_parse's (differential test:
 * tests/actors/test_steer_fast.py). */
static inline int fast_key(const uint8_t *pkt, uint32_t len, struct mg_flow_key *k)
{
    if (len < 14 + 40)
        return 0; /* shorter than any packet this path takes: the general path decides */
    uint32_t et = be16_at(pkt + 12);
    const uint8_t *ip = pkt + 14;
    memset(k, 0, sizeof *k);
    if (et == 0x0800) {
        if (ip[0] != 0x45)
            return 0;
        uint32_t tot = be16_at(ip + 2);
        if (tot < 20 || tot > len - 14 || ip[8] == 0 || (be16_at(ip + 6) & 0x3fff))
            return 0;
        uint32_t w[5];
        memcpy(w, ip, 20);
        uint64_t sum = (uint64_t)w[0] + w[1] + w[2] + w[3] + w[4];
        sum = (sum & 0xffffffffu) + (sum >> 32);
        sum = (sum & 0xffffffffu) + (sum >> 32);
        sum = (sum & 0xffffu) + (sum >> 16);
        sum = (sum & 0xffffu) + (sum >> 16);
        if (sum != 0xffff)
            return 0;
        k->proto = ip[9];
        k->family = 4;
        memcpy(k->src, ip + 12, 4);
        memcpy(k->dst, ip + 16, 4);
        return fast_l4(ip + 20, tot - 20, ip[9], k);
    }
    if (et == 0x86dd) {
        uint32_t plen = be16_at(ip + 4);
        if ((ip[0] >> 4) != 6 || plen == 0 || plen > len - 14 - 40 || ip[7] == 0)
            return 0;
        k->proto = ip[6];
        k->family = 6;
        memcpy(k->src, ip + 8, 16);
        memcpy(k->dst, ip + 24, 16);
        return fast_l4(ip + 40, plen, ip[6], k);
    }
    return 0;
}

/* mg_steer_hash, and *plain = 1 when the hash is of the packet's own 5-tuple key (what
 * the worker's data path hashes for an ordinary flow: MG_FRAME_F_HASHED); *pp and
 * *parse_rc: what the parser made of it (overload shedding classifies by them). */
static int steer_hash(const uint8_t *pkt, uint32_t len, uint64_t k0, uint64_t k1,
                      uint32_t n_workers, uint64_t *hash, uint16_t *flags, int *plain,
                      struct mg_parsed *pp, int *parse_rc)
{
    if (MG_LIKELY(fast_key(pkt, len, &pp->key))) {
        /* what shedding reads of the parse (mg_shed_classify): the key, not a fragment */
        pp->frag = 0;
        *parse_rc = MG_OK;
        *hash = key_hash40(k0, k1, &pp->key);
        *flags = 0;
        *plain = 1;
        return n_workers ? (int)((uint32_t)(*hash >> 32) % n_workers) : 0;
    }
    struct mg_parsed inner;
    *hash = 0;
    *flags = 0;
    *plain = 0;
    *parse_rc = mg_parse(pkt, len, pp);
    if (*parse_rc != MG_OK)
        return -1;
    int redirected = 0;
    if (MG_UNLIKELY(redirected_inner(pkt, pp, &inner))) {
        *pp = inner;
        redirected = 1;
    }
    *plain = !redirected && !(pp->frag & MG_PF_FRAGMENT);
    if (pp->frag & MG_PF_FRAGMENT) {
        /* 3-tuple: every fragment of the datagram, first or not, hashes alike. */
        pp->key.sport = 0;
        pp->key.dport = 0;
        *flags |= MG_FRAME_F_FRAGMENT;
    }
    *hash = key_hash40(k0, k1, &pp->key);
    return n_workers ? (int)((uint32_t)(*hash >> 32) % n_workers) : 0;
}

int mg_steer_hash(const uint8_t *pkt, uint32_t len, uint64_t k0, uint64_t k1,
                  uint32_t n_workers, uint64_t *hash, uint16_t *flags)
{
    int plain, prc;
    struct mg_parsed p;
    return steer_hash(pkt, len, k0, k1, n_workers, hash, flags, &plain, &p, &prc);
}

int mg_steer_set_reta(struct mg_steer *s, const uint8_t *reta, uint32_t n)
{
    if (!s || (n && (n != MG_STEER_RETA || !reta)))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (reta[i] >= s->n_workers)
            return -EINVAL;
    if (n)
        memcpy(s->reta, reta, MG_STEER_RETA);
    s->reta_on = n != 0;
    return 0;
}

int mg_steer_set_stuck_ns(struct mg_steer *s, uint64_t ns)
{
    if (!s)
        return -EINVAL;
    s->stuck_ns = ns;
    return 0;
}

int mg_steer_set_stall_ns(struct mg_steer *s, uint64_t ns)
{
    if (!s)
        return -EINVAL;
    s->stall_ns = ns;
    return 0;
}

int mg_steer_set_fallback(struct mg_steer *s, uint32_t mode)
{
    if (!s || mode > MG_STEER_FB_NEVER)
        return -EINVAL;
    s->fb_mode = mode;
    return 0;
}

/* May this packet (of a flow: it parsed) fall back to another worker than its own
 * (MG_STEER_FB_*)?  Only when a ring is full, so the second parse costs nothing in the
 * common case.  A packet the full parser rejects belongs to no flow: a worker drops it. */
static int may_move(const struct mg_steer *s, const uint8_t *pkt, uint32_t len)
{
    if (s->fb_mode == MG_STEER_FB_ANY)
        return 1;
    if (s->fb_mode != MG_STEER_FB_NEW_FLOWS)
        return 0;
    struct mg_parsed p;
    if (mg_parse(pkt, len, &p) != MG_OK)
        return 1;
    return p.proto == 6 && !(p.frag & MG_PF_FRAGMENT) && (p.tcp_flags & 0x12) == 0x02;
}

/* How long (ns, at `now`) has worker w had packets waiting on its rx ring without
 * consuming any?  Each dispatch with packets reads the clock once (the same read stamps
 * MG_SS_LAST_RX_NS) and notes, per worker, the time its ring was last seen empty or its
 * consumer index last seen moving (progress_ns); 0 = seen this burst.  Two rules read it
 * when a ring is full (mg_steer_dispatch):
 *   weighted map: fall back only past stuck_ns -- a worker that keeps consuming is slower
 *     by design (its share), and spraying its flows would reorder them for nothing;
 *   any map: past stall_ns the worker is dead or frozen, and its packets are dropped
 *     (counted) rather than moved to a worker that has no entries for their flows.
 * A dead worker's ring takes a while to fill (2048 slots at 10 kpps: 0.2 s), so by the
 * time it is full it is already past stall_ns: none of its packets is moved.
 * A worker whose tx ring is full is held back by the muxer (dead, or being replaced), not
 * stalled: that time does not count either.  Without this, the clock ran on through a
 * muxer's replacement, and once the new muxer had drained the tx ring the worker had
 * until steering's next burst (not stall_ns) to run again: on a loaded machine it often
 * had not, and its packets were dropped as owner_stalled after a muxer kill.  The same
 * holds at the first look *after* a full tx ring (tx_held): the muxer drained it at some
 * moment since the previous look, which may be long ago when steering itself did not run
 * meanwhile (two cores, load 12: 1154 packets dropped as owner_stalled after muxer kills,
 * 2026-12-07), so the worker's time starts at this look, not at the one before. */
static void note_progress(struct mg_steer *s, void *base, uint64_t now)
{
    for (uint32_t i = 0; i < s->n_workers; i++) {
        const struct mg_ring *r = mg_region_ring_by_id(base, s->rx_id[i]);
        uint32_t cons = __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE);
        uint8_t held = mg_ring_free_count(mg_region_ring_by_id(base, s->tx_id[i])) == 0;
        if (cons != s->cons_seen[i] || s->room[i] == s->ring_size || !s->progress_ns[i] ||
            held || s->tx_held[i]) {
            s->cons_seen[i] = cons;
            s->progress_ns[i] = now;
        }
        s->tx_held[i] = held;
    }
}

int mg_steer_set_shed(struct mg_steer *s, struct mg_shed *sh)
{
    if (!s)
        return -EINVAL;
    s->shed = sh;
    return 0;
}

static uint32_t most_room(const struct mg_steer *s)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < s->n_workers; i++)
        if (s->room[i] > s->room[best])
            best = i;
    return best;
}

/* Overload shedding (mg_shed.h): 1 when this packet, bound for worker w's rx ring, is of
 * a VIP priority that ring is too full for; counted per VIP. */
static int shed_one(struct mg_steer *s, uint32_t w, int parse_rc, const struct mg_parsed *p)
{
    uint32_t prio, used = s->ring_size - s->room[w];
    if (used < s->shed->mark[0]) /* below the lowest mark: nothing is shed, skip the lookup */
        return 0;
    int v = mg_shed_classify(s->shed, parse_rc, p, &prio);
    if (v == MG_SHED_EXEMPT || !mg_shed_decide(s->shed, prio, used))
        return 0;
    s->shed->drops[v < 0 ? MG_SHED_NO_VIP : (uint32_t)v]++;
    return 1;
}

int mg_steer_dispatch(struct mg_steer *s, void *base, uint32_t filled, int fresh)
{
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, s->slot, &cnt);
    uint8_t *pool = mg_region_pool(base);
    if (!descs || filled > cnt)
        return -EINVAL;
    for (uint32_t i = 0; i < s->n_workers; i++)
        s->room[i] = mg_ring_free_count(mg_region_ring_by_id(base, s->rx_id[i]));
    /* One clock read per burst with packets (also MG_SS_LAST_RX_NS), none per packet. */
    uint64_t now = filled ? mg_mono_ns() : 0;
    if (now)
        note_progress(s, base, now);
    mg_trace_steer_burst(base); /* packet tracer: a new request? (mg_trace.h) */
    uint64_t rx_bytes = 0, placed = 0, fallback = 0, frags = 0, unparsed = 0, shed = 0;
    uint64_t stalled = 0;
    int blocked = 0;
    for (uint32_t j = 0; j < filled; j++) {
        uint32_t idx = (uint32_t)descs[j];
        struct mg_frame_meta *m = mg_frame_meta(pool, idx);
        uint32_t w;
        int flowless = 0; /* no flow: may go to any worker (may_move) */
        if (MG_UNLIKELY(m->data_off > MG_FRAME_SIZE - MG_FRAME_META_SIZE ||
                        m->len > MG_FRAME_SIZE - MG_FRAME_META_SIZE - m->data_off)) {
            /* Bad metadata from a NIC: let a worker count it (bad_frame). */
            m->verdict = 0;
            m->acct = 0;
            m->flags &= (uint16_t)~MG_FRAME_F_HASHED;
            w = s->rr++ % s->n_workers;
            flowless = 1;
        } else {
            uint64_t h;
            uint16_t fl;
            int plain, prc;
            struct mg_parsed parsed;
            int r = steer_hash(mg_frame_data(pool, idx), m->len, s->k0, s->k1, s->n_workers,
                               &h, &fl, &plain, &parsed, &prc);
            m->flow_hash = (uint32_t)h;
            m->flow_hash_hi = (uint32_t)(h >> 32);
            m->verdict = 0; /* "not judged yet": worker recovery relies on it */
            m->acct = 0;    /* "not counted by a worker" (mg_worker_recover) */
            if (plain)
                fl |= MG_FRAME_F_HASHED;
            m->flags = (uint16_t)((m->flags & ~(MG_FRAME_F_FRAGMENT | MG_FRAME_F_HASHED)) | fl);
            if (fresh) { /* packet tracer (mg_trace.h): one countdown branch per packet */
                m->flags &= (uint16_t)~MG_FRAME_F_TRACE;
                mg_trace_steer_hook(base, m, mg_frame_data(pool, idx));
            }
            if (r < 0) {
                w = s->rr++ % s->n_workers;
                unparsed++;
                flowless = 1;
            } else {
                w = s->reta_on ? s->reta[h >> 56] : (uint32_t)r;
                frags += (fl & MG_FRAME_F_FRAGMENT) != 0;
            }
            if (MG_UNLIKELY(s->shed && s->shed->on) && shed_one(s, w, prc, &parsed)) {
                rx_bytes += m->len;
                s->dest[j] = (uint16_t)s->free_id; /* dropped before enqueue: home */
                shed++;
                continue;
            }
        }
        rx_bytes += m->len;
        if (MG_UNLIKELY(s->room[w] == 0)) {
            uint64_t idle = now - s->progress_ns[w]; /* no consumption while it had work */
            /* Fall back only to a worker with at least half its ring free: when every
             * worker is saturated, spraying a flow over them reorders it for nothing. */
            uint32_t alt = most_room(s);
            /* Nobody serves it (its process died holding its life lock, mg_shm.h, and no
             * replacement has adopted the ring yet): drop at once, whatever the rate, the
             * stall time or the room elsewhere. */
            if (mg_slot_dead(base, MG_SLOT_WORKER0 + w) == 1 ||
                (s->room[alt] >= s->fallback_min && s->stall_ns && idle >= s->stall_ns &&
                 mg_ring_free_count(mg_region_ring_by_id(base, s->tx_id[w])) != 0)) {
                /* Instead of a fallback: its owner is dead or frozen, and another worker
                 * has no entries for its flows (it would pick by the current Maglev
                 * table).  Dropped before enqueue.  A worker whose tx ring is full is held
                 * back by the muxer (alive, or being replaced), not stalled: fallback as
                 * before; with no room anywhere the packet waits in the hand as before. */
                s->dest[j] = (uint16_t)s->free_id;
                stalled++;
                continue;
            }
            if (s->room[alt] < s->fallback_min || (s->reta_on && (!idle || idle < s->stuck_ns)) ||
                (!flowless && !may_move(s, mg_frame_data(pool, idx), m->len))) {
                /* No room worth spraying into, or a packet whose flow may have an entry
                 * only its own worker holds: it waits in the hand (order kept). */
                s->dest[j] = MG_HAND_KEEP;
                blocked = 1;
                continue;
            }
            w = alt;
            fallback++;
        }
        s->room[w]--;
        s->dest[j] = (uint16_t)s->rx_id[w];
        placed++;
    }
    for (uint32_t j = filled; j < cnt; j++)
        s->dest[j] = (uint16_t)s->free_id;
    /* Count first, in one journalled step with the batch state (MG_SS_B_COUNTED), then
     * push: a packet on an rx ring is always counted as received, and a replacement
     * knows whether the packets still in the hand are (mg_steer_recover). */
    uint64_t *img = mg_stats_stage(base, s->slot);
    if (!img)
        return -EINVAL;
    img[MG_SS_DISPATCHED] += placed;
    img[MG_SS_FALLBACK] += fallback;
    img[MG_SS_FRAGMENTS] += frags;
    img[MG_SS_UNPARSED] += unparsed;
    img[MG_SS_BACKPRESSURE] += (uint64_t)blocked;
    img[MG_SS_SHED] += shed;
    img[MG_SS_OWNER_STALLED] += stalled;
    img[MG_SS_BURSTS]++;
    if (fresh) {
        if (filled) {
            if (!img[MG_SS_FIRST_RX_NS])
                img[MG_SS_FIRST_RX_NS] = now;
            img[MG_SS_LAST_RX_NS] = now;
            img[MG_SS_RX_PACKETS] += filled;
            img[MG_SS_RX_BYTES] += rx_bytes;
        }
        img[MG_SS_BATCH] = MG_SS_B_COUNTED;
    }
    mg_stats_begin(base, s->slot);
    mg_stats_apply(base, s->slot);
    mg_stats_end(base, s->slot);
    int rc = mg_hand_push(base, s->slot, s->dest, cnt);
    if (rc < 0)
        return rc;
    return mg_hand_count(base, s->slot);
}

int mg_steer_recover(struct mg_steer *s, void *base)
{
    int pending = mg_stats_pending(base, s->slot);
    if (pending < 0)
        return pending;
    if (pending) { /* the dead steering's commit counts as done: finish it */
        mg_stats_apply(base, s->slot);
        mg_stats_end(base, s->slot);
    }
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, s->slot, &cnt);
    if (!descs)
        return -EINVAL;
    if (cnt == 0)
        return 0;
    uint8_t *pool = mg_region_pool(base);
    uint64_t batch = s->stats[MG_SS_BATCH];
    uint64_t packets = 0;
    if (batch == MG_SS_B_RECLAIMING) /* the front: counted packets; the rest: returns */
        packets = s->stats[MG_SS_HELD] < cnt ? s->stats[MG_SS_HELD] : cnt;
    else if (batch != MG_SS_B_TAKING) /* TAKING: no frame in the hand was given to the NIC */
        for (uint32_t j = 0; j < cnt; j++)
            packets += mg_frame_meta(pool, (uint32_t)descs[j])->len != MG_FRAME_LEN_EMPTY;
    uint64_t *img = mg_stats_stage(base, s->slot);
    if (batch == MG_SS_B_MARKED) /* received, never counted: they were received */
        img[MG_SS_RX_PACKETS] += packets;
    img[MG_SS_LOST] += packets;
    img[MG_SS_RECOVERED] += cnt;
    /* Whatever is still in the hand after this commit is accounted for: a replacement of
     * this replacement must treat it as unused frames. */
    img[MG_SS_BATCH] = MG_SS_B_TAKING;
    mg_stats_begin(base, s->slot);
    mg_stats_apply(base, s->slot);
    mg_stats_end(base, s->slot);
    for (uint32_t j = 0; j < cnt; j++)
        s->dest[j] = (uint16_t)s->free_id;
    int rc = mg_hand_push(base, s->slot, s->dest, cnt);
    if (rc < 0)
        return rc;
    return mg_hand_count(base, s->slot) ? -ENOSPC : (int)cnt;
}

/* ------------------------------------------------------------------------- muxer */

/* A forwarded packet, as the workers counted it: a frame with the forward verdict that is
 * not the second or later piece of a split packet (those are spares, MG_ACCT_PIECE: the
 * packet is accounted by its first frame). */
static int is_fwd_packet(const struct mg_frame_meta *m)
{
    return m->verdict == MG_VERDICT_FORWARD && !(m->acct & MG_ACCT_PIECE);
}

int mg_mux_init(struct mg_mux *m, void *base, uint32_t slot)
{
    const struct mg_region_hdr *h = base;
    if (!m || !base || slot >= h->n_slots)
        return -EINVAL;
    memset(m, 0, sizeof *m);
    m->n_workers = h->n_workers;
    m->slot = slot;
    m->sent_id = mg_region_ring_id(base, MG_RING_SENT, 0);
    if (!ids_ok(m->sent_id) || m->n_workers == 0 || m->n_workers > MG_MAX_WORKERS)
        return -EINVAL;
    for (uint32_t i = 0; i < m->n_workers; i++) {
        m->tx_id[i] = mg_region_ring_id(base, MG_RING_TX, i);
        if (!ids_ok(m->tx_id[i]))
            return -EINVAL;
    }
    m->stats = mg_region_stats(base, slot);
    return m->stats ? 0 : -EINVAL;
}

int mg_mux_collect(struct mg_mux *m, void *base, uint32_t max)
{
    if (max > MG_HAND_MAX)
        max = MG_HAND_MAX;
    int have = mg_hand_count(base, m->slot);
    if (have != 0)
        return have < 0 ? have : -EBUSY;
    __atomic_store_n(&m->stats[MG_MS_BATCH], 0, __ATOMIC_RELEASE); /* not counted yet */
    uint32_t got = 0;
    uint32_t start = m->next;
    for (uint32_t k = 0; k < m->n_workers && got < max; k++) {
        uint32_t i = (start + k) % m->n_workers;
        int n = mg_hand_pull(base, m->slot, m->tx_id[i], max - got);
        if (n < 0)
            return n;
        got += (uint32_t)n;
    }
    m->next = (start + 1) % m->n_workers;
    return (int)got;
}

int mg_mux_done(struct mg_mux *m, void *base, uint32_t n_sent, uint32_t n_failed)
{
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, m->slot, &cnt);
    if (!descs || (uint64_t)n_sent + n_failed > cnt)
        return -EINVAL;
    if (cnt == 0)
        return 0;
    /* The muxer never touches a frame itself (the NIC does, if it must): reading even
     * the length would cost a cache miss per frame on the line the worker just wrote.
     * Bytes are counted by the workers (bytes_out) and by NICs that copy. */
    if (MG_UNLIKELY(mg_trace_inflight(base))) /* packet tracer: stamp ts_tx_ns */
        mg_trace_mux_stamp(mg_region_pool(base), descs, n_sent);
    if (n_sent + n_failed) {
        /* Counted in one journalled step with "the hand's frames are counted", before
         * the push (a replacement neither loses nor double-counts them). */
        uint64_t *img = mg_stats_stage(base, m->slot);
        if (!img)
            return -EINVAL;
        img[MG_MS_TX_PACKETS] += n_sent;
        img[MG_MS_TX_ERRORS] += n_failed;
        if (MG_UNLIKELY(n_failed)) { /* rare: only failed frames are read */
            uint8_t *pool = mg_region_pool(base);
            for (uint32_t j = n_sent; j < n_sent + n_failed; j++)
                img[MG_MS_TX_ERRORS_FWD] += is_fwd_packet(mg_frame_meta(pool, (uint32_t)descs[j]));
        }
        img[MG_MS_BURSTS]++;
        img[MG_MS_BATCH] = 1;
        mg_stats_begin(base, m->slot);
        mg_stats_apply(base, m->slot);
        mg_stats_end(base, m->slot);
    }
    int rc = mg_hand_push_all(base, m->slot, (uint16_t)m->sent_id); /* every frame to sent */
    if (rc < 0)
        return rc;
    return mg_hand_count(base, m->slot);
}

int mg_mux_recover(struct mg_mux *m, void *base)
{
    int pending = mg_stats_pending(base, m->slot);
    if (pending < 0)
        return pending;
    if (pending) {
        mg_stats_apply(base, m->slot);
        mg_stats_end(base, m->slot);
    }
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, m->slot, &cnt);
    if (!descs)
        return -EINVAL;
    if (cnt == 0)
        return 0;
    if (!m->stats[MG_MS_BATCH]) {
        uint8_t *pool = mg_region_pool(base);
        uint64_t *img = mg_stats_stage(base, m->slot);
        for (uint32_t j = 0; j < cnt; j++)
            img[MG_MS_LOST_FWD] += is_fwd_packet(mg_frame_meta(pool, (uint32_t)descs[j]));
        img[MG_MS_RECOVERED] += cnt;
        img[MG_MS_BATCH] = 1;
        mg_stats_begin(base, m->slot);
        mg_stats_apply(base, m->slot);
        mg_stats_end(base, m->slot);
    }
    /* What does not fit on sent stays in the hand, counted: the loop pushes it later. */
    for (uint32_t j = 0; j < cnt; j++)
        m->dest[j] = (uint16_t)m->sent_id;
    int rc = mg_hand_push(base, m->slot, m->dest, cnt);
    return rc < 0 ? rc : (int)cnt;
}
