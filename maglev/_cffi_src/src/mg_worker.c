/* Packet worker glue (design in include/mg_worker.h). */
#include "mg_worker.h"

#include <stdlib.h>

#include "mg_ring.h"
#include "mg_steer.h"
#include "mg_tables_pub.h"
#include "mg_trace.h"

_Static_assert(MG_WS_DROPS + MG_WS_N_DROPS <= MG_STATS_WORDS, "worker stats fit the block");
_Static_assert(MG_WS_BACKUP_OUT < MG_STATS_WORDS, "worker stats fit the block");
_Static_assert(MG_DROP_COUNT <= MG_WS_N_DROPS, "every drop reason has a counter");

struct mg_worker *mg_worker_new(void *base, uint32_t worker, uint32_t ct_capacity,
                                uint64_t k0, uint64_t k1, uint32_t burst, uint64_t now_ns)
{
    struct mg_ct *ct = mg_ct_new(ct_capacity);
    return ct ? mg_worker_new_ct(base, worker, ct, k0, k1, burst, now_ns) : NULL;
}

struct mg_worker *mg_worker_new_ct(void *base, uint32_t worker, struct mg_ct *ct,
                                   uint64_t k0, uint64_t k1, uint32_t burst, uint64_t now_ns)
{
    if (!ct)
        return NULL;
    const struct mg_region_hdr *h = base;
    if (!base || worker >= h->n_workers || burst == 0 || burst > MG_BURST_MAX) {
        mg_ct_free(ct);
        errno = EINVAL;
        return NULL;
    }
    struct mg_worker *w = calloc(1, sizeof *w);
    if (!w) {
        mg_ct_free(ct);
        return NULL;
    }
    w->worker = worker;
    w->slot = MG_SLOT_WORKER0 + worker;
    w->rx_id = mg_region_ring_id(base, MG_RING_RX, worker);
    w->tx_id = mg_region_ring_id(base, MG_RING_TX, worker);
    w->ret_id = mg_region_ring_id(base, MG_RING_RET, worker);
    w->spare_id = mg_region_ring_id(base, MG_RING_SPARE, worker);
    w->stats = mg_region_stats(base, w->slot);
    w->burst = burst;
    if (w->rx_id == UINT32_MAX || w->tx_id == UINT32_MAX || w->ret_id == UINT32_MAX ||
        w->spare_id == UINT32_MAX ||
        !w->stats) {
        free(w);
        mg_ct_free(ct);
        errno = EINVAL;
        return NULL;
    }
    w->dp = mg_dp_new_ct(ct, (uint16_t)worker, k0, k1, now_ns);
    if (!w->dp) {
        free(w);
        return NULL;
    }
    memcpy(w->base, w->stats, sizeof w->base);
    w->last_flush_ns = now_ns;
    return w;
}

void mg_worker_free(struct mg_worker *w)
{
    if (!w)
        return;
    mg_dp_free(w->dp);
    free(w);
}

struct mg_dp *mg_worker_dp(struct mg_worker *w) { return w->dp; }

int mg_worker_holding(const struct mg_worker *w, void *base)
{
    return mg_hand_count(base, w->slot);
}

/* Every verdict in the hand is counted: a frame's acct says which verdict the stats block
 * includes for it (the per-frame half of a stats commit; redone by a replacement). */
static void mark_counted(struct mg_worker *w, void *base)
{
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, w->slot, &cnt);
    uint8_t *pool = mg_region_pool(base);
    for (uint32_t j = 0; descs && j < cnt; j++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
        m->acct = MG_ACCT_COUNTED | (m->acct & MG_ACCT_PIECE) | m->verdict;
    }
}

/* Commit the staged stats image and the hand's verdicts together (mg_hand.h journal). */
static void commit_stats(struct mg_worker *w, void *base)
{
    mg_stats_begin(base, w->slot);
    mg_stats_apply(base, w->slot);
    mark_counted(w, base);
    mg_stats_end(base, w->slot);
}

/* Cumulative counters = predecessors' + this data path's, committed with the verdicts of
 * the frames in the hand before any of them is pushed. */
static void publish_stats(struct mg_worker *w, void *base, uint64_t generation)
{
    const struct mg_dp_stats *d = mg_dp_stats(w->dp);
    uint64_t *s = mg_stats_stage(base, w->slot), *b = w->base;
    if (!s)
        return;
    s[MG_WS_BURSTS] = b[MG_WS_BURSTS] + d->bursts;
    s[MG_WS_PACKETS_IN] = b[MG_WS_PACKETS_IN] + d->packets_in;
    s[MG_WS_BYTES_IN] = b[MG_WS_BYTES_IN] + d->bytes_in;
    s[MG_WS_FORWARDED] = b[MG_WS_FORWARDED] + d->forwarded;
    s[MG_WS_BYTES_OUT] = b[MG_WS_BYTES_OUT] + d->bytes_out;
    s[MG_WS_ICMP_SENT] = b[MG_WS_ICMP_SENT] + d->icmp_sent;
    s[MG_WS_HELD] = d->held;
    s[MG_WS_GENERATION] = generation;
    s[MG_WS_TABLE_SWAPS] = b[MG_WS_TABLE_SWAPS] + d->table_swaps;
    s[MG_WS_FRAGMENTS] = b[MG_WS_FRAGMENTS] + d->fragments;
    s[MG_WS_ICMP_FORWARDED] = b[MG_WS_ICMP_FORWARDED] + d->icmp_forwarded;
    s[MG_WS_REDIRECTED] = b[MG_WS_REDIRECTED] + d->redirected;
    s[MG_WS_QUIC_CID_ROUTED] = b[MG_WS_QUIC_CID_ROUTED] + d->quic_cid_routed;
    s[MG_WS_QUIC_HASHED] = b[MG_WS_QUIC_HASHED] + d->quic_hashed;
    s[MG_WS_CLUSTER_IN] = b[MG_WS_CLUSTER_IN] + d->cluster_in;
    s[MG_WS_CLUSTER_MATCHED] = b[MG_WS_CLUSTER_MATCHED] + d->cluster_matched;
    s[MG_WS_BACKUP_OUT] = b[MG_WS_BACKUP_OUT] + d->backup_out;
    for (uint32_t r = 0; r < MG_DROP_COUNT; r++)
        s[MG_WS_DROPS + r] = b[MG_WS_DROPS + r] + d->drops[r];
    commit_stats(w, base);
}

/* Route every hand entry by its verdict and push.  Returns frames left in the hand. */
static int route_and_push(struct mg_worker *w, void *base)
{
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, w->slot, &cnt);
    if (!descs)
        return -EINVAL;
    uint8_t *pool = mg_region_pool(base);
    for (uint32_t j = 0; j < cnt; j++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
        uint16_t v = m->verdict;
        mg_trace_worker_hook(m); /* packet tracer: one branch on the line just read */
        if (v == MG_VERDICT_FORWARD || v == MG_VERDICT_ICMP)
            w->dest[j] = (uint16_t)w->tx_id;
        else if (v == MG_VERDICT_HELD)
            w->dest[j] = MG_HAND_KEEP;
        else
            w->dest[j] = (uint16_t)w->ret_id;
    }
    int rc = mg_hand_push(base, w->slot, w->dest, cnt);
    if (rc < 0)
        return rc;
    return mg_hand_count(base, w->slot);
}

int mg_worker_recover(struct mg_worker *w, void *base)
{
    int n = mg_hand_recover(base, w->slot);
    if (n < 0)
        return n;
    mg_ring_reset_consumer(mg_region_ring_by_id(base, w->rx_id));
    mg_ring_reset_producer(mg_region_ring_by_id(base, w->tx_id));
    mg_ring_reset_producer(mg_region_ring_by_id(base, w->ret_id));
    mg_ring_reset_consumer(mg_region_ring_by_id(base, w->spare_id));
    mg_tables_quiesce(base, w->worker);
    int pending = mg_stats_pending(base, w->slot);
    if (pending < 0)
        return pending;
    if (pending) { /* the dead worker's commit counts as done: finish it */
        mg_stats_apply(base, w->slot);
        mark_counted(w, base);
        mg_stats_end(base, w->slot);
    }
    if (n > 0) {
        /* meta->acct says which verdict the counters include for each frame (steering
         * clears it on dispatch).  Counted forward/ICMP frames finish their way (tx) and
         * counted drops go to ret; the others -- never judged, judged but not counted
         * when the worker died, or a fragment the dead data path held -- are dropped and
         * counted as worker_restart (and as received, if they were not).  "Counted as a
         * restart drop" is acct == COUNTED | MG_DROP_NONE, so this is idempotent. */
        uint32_t cnt;
        uint64_t *descs = mg_hand_descs(base, w->slot, &cnt);
        uint8_t *pool = mg_region_pool(base);
        uint64_t lost = 0, unseen = 0;
        for (uint32_t j = 0; j < cnt; j++) {
            struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
            uint32_t a = m->acct;
            uint32_t v = a & 0xffffu;
            if ((a & (MG_ACCT_COUNTED | MG_ACCT_PIECE)) == MG_ACCT_PIECE) {
                /* A spare the dead data path wrote a piece into, for a packet whose
                 * verdict was not committed: that packet (its first frame) is counted
                 * below; the piece is just a frame going home, never sent. */
                m->verdict = MG_DROP_NONE;
                w->dest[j] = (uint16_t)w->ret_id;
            } else if ((a & MG_ACCT_COUNTED) && (v == MG_VERDICT_FORWARD || v == MG_VERDICT_ICMP)) {
                m->verdict = (uint16_t)v;
                w->dest[j] = (uint16_t)w->tx_id;
            } else if ((a & MG_ACCT_COUNTED) && v < MG_DROP_COUNT) {
                m->verdict = (uint16_t)v; /* a drop, or MG_DROP_NONE: a counted restart drop */
                w->dest[j] = (uint16_t)w->ret_id;
            } else {
                m->verdict = MG_DROP_NONE;
                w->dest[j] = (uint16_t)w->ret_id;
                lost++;
                unseen += !(a & MG_ACCT_COUNTED);
            }
        }
        if (lost) {
            uint64_t *img = mg_stats_stage(base, w->slot);
            img[MG_WS_RESTART_DROPS] += lost;
            img[MG_WS_PACKETS_IN] += unseen;
            img[MG_WS_HELD] = 0;
            commit_stats(w, base);
        }
        /* The rings were the dead worker's and are empty enough or not: keep what does
         * not fit (the first bursts push it). */
        int rc = mg_hand_push(base, w->slot, w->dest, cnt);
        if (rc < 0)
            return rc;
    }
    memcpy(w->base, w->stats, sizeof w->base); /* this data path counts on from here */
    return n;
}

/* Look at up to max spare frames (the front of the spare ring) without consuming them.
 * The copy is kept while the ring's indices stay put (struct mg_worker): steering refills
 * the ring only after a split used spares, so almost every burst reuses the last copy
 * instead of copying MG_BURST_MAX descriptors (it was the largest per-burst cost of the
 * worker's glue, ~1000 instructions per burst). */
static uint32_t spare_look(struct mg_worker *w, void *base, uint32_t max)
{
    struct mg_ring *r = mg_region_ring_by_id(base, w->spare_id);
    if (max > MG_BURST_MAX)
        max = MG_BURST_MAX;
    /* acquire like mg_ring_peek (C): the slots up to prod are written */
    uint32_t prod = __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE);
    uint32_t cons = __atomic_load_n(&r->cons, __ATOMIC_RELAXED); /* ours: we consume */
    if (!w->spare_valid || prod != w->spare_prod || cons != w->spare_cons) {
        uint32_t n = prod - cons;
        if (n > MG_BURST_MAX)
            n = MG_BURST_MAX;
        for (uint32_t i = 0; i < n; i++)
            w->spare[i] = (uint32_t)*mg_ring_slot(r, cons + i);
        w->spare_cons = cons;
        w->spare_prod = prod;
        w->spare_n = n;
        w->spare_valid = 1;
    }
    return w->spare_n < max ? w->spare_n : max;
}

/* Spares the steering actor keeps for this worker (0: none, no pull limit). */
static uint64_t spare_reserve(void *base)
{
    const uint64_t *ss = mg_region_stats(base, MG_SLOT_STEERING);
    return ss ? __atomic_load_n(&ss[MG_SS_SPARE_RESERVE], __ATOMIC_RELAXED) : 0;
}

/* Move the spares the data path used (the front of the spare ring) into the hand. */
static int spare_take(struct mg_worker *w, void *base, uint32_t used)
{
    if (!used)
        return 0;
    /* The data path copied the packet's metadata (acct included) into each piece: mark
     * the pieces again before they enter the hand, so every spare a replacement finds
     * there is known as a piece, not a packet (mg_worker_recover, mg_mux_done). */
    uint8_t *pool = mg_region_pool(base);
    for (uint32_t i = 0; i < used; i++)
        mg_frame_meta(pool, w->spare[i])->acct = MG_ACCT_PIECE;
    int got = mg_hand_pull(base, w->slot, w->spare_id, used);
    if (got < 0)
        return got;
    w->stats[MG_WS_SPARES_USED] += (uint64_t)got; /* publish_stats leaves this word */
    return (uint32_t)got == used ? 0 : -EIO; /* room was checked: cannot happen */
}

static void setup_io(struct mg_worker *w, struct mg_dp_io *io, uint8_t *pool, uint32_t n)
{
    memset(io, 0, sizeof *io);
    io->pool = pool;
    io->frames = w->in;
    io->n = n;
    io->tx = w->tx;
    io->tx_cap = MG_WORKER_OUT_MAX;
    io->drop = w->drop;
    io->drop_cap = MG_WORKER_OUT_MAX;
    io->spare = w->spare;
    io->n_spare = w->n_spare;
}

int mg_worker_burst(struct mg_worker *w, void *base, uint64_t now_ns)
{
    int kept = mg_hand_count(base, w->slot);
    if (kept < 0)
        return kept;
    uint32_t room = MG_HAND_MAX - (uint32_t)kept;
    /* Half the room for packets, half for the spares their pieces may take. */
    uint32_t want = room / 2 < w->burst ? room / 2 : w->burst;
    uint32_t spares = mg_ring_count(mg_region_ring_by_id(base, w->spare_id));
    int starved = 0; /* packets wait for spares: steering refills them, nobody rings */
    w->stats[MG_WS_SPARES] = spares;
    if (spare_reserve(base) && spares < want) {
        want = spares; /* at most one spare per packet: none is split without a frame */
        if (!want && mg_ring_count(mg_region_ring_by_id(base, w->rx_id))) {
            w->stats[MG_WS_SPARE_WAITS]++;
            starved = 1;
            if (!kept)
                return -EAGAIN; /* call again soon (a back-off, not a doorbell sleep) */
        }
    }
    int n = want ? mg_hand_pull(base, w->slot, w->rx_id, want) : 0;
    if (n < 0)
        return n;
    const struct mg_dp_stats *d = mg_dp_stats(w->dp);
    if (n == 0) {
        /* Idle: only held fragments (expiry) or a full output ring need attention. */
        if (kept == 0)
            return 0;
        if (d->held && now_ns - w->last_flush_ns >= MG_WORKER_FLUSH_NS)
            return mg_worker_flush(w, base, now_ns) < 0 ? -EIO : (starved ? -EAGAIN : 0);
        int left = route_and_push(w, base);
        if (left < 0)
            return left;
        /* Frames waiting for room on tx/ret (not held fragments), or packets waiting for
         * spares: ask to be called soon. */
        return ((uint64_t)left > d->held || starved) ? -EAGAIN : 0;
    }
    uint32_t cnt;
    uint64_t *descs = mg_hand_descs(base, w->slot, &cnt);
    uint8_t *pool = mg_region_pool(base);
    for (uint32_t j = 0; j < (uint32_t)n; j++) {
        uint32_t idx = (uint32_t)descs[cnt - (uint32_t)n + j];
        w->in[j] = idx;
        /* The frames were last written on steering's core: start every burst's misses
         * (metadata, first packet line) at once instead of one by one in the kernel. */
        uint8_t *f = pool + (size_t)idx * MG_FRAME_SIZE;
        MG_PREFETCH_W(f);
        MG_PREFETCH_W(f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM);
    }
    uint64_t gen = 0;
    const void *tables = mg_tables_acquire(base, w->worker, &gen);
    struct mg_dp_io io;
    /* Spares: at most what the hand can take after this burst's packets. */
    uint32_t hand_left = MG_HAND_MAX - cnt;
    w->n_spare = spare_look(w, base, hand_left < MG_BURST_MAX ? hand_left : MG_BURST_MAX);
    setup_io(w, &io, pool, (uint32_t)n);
    int rc = mg_dp_burst(w->dp, tables, now_ns, &io);
    if (rc < 0) {
        /* Cannot happen with the capacities above; never leave frames unjudged. */
        for (uint32_t j = 0; j < (uint32_t)n; j++)
            mg_frame_meta(pool, w->in[j])->verdict = MG_DROP_BAD_FRAME;
        io.n_spare_used = 0;
    }
    rc = spare_take(w, base, io.n_spare_used);
    if (rc < 0)
        return rc;
    publish_stats(w, base, gen);
    int left = route_and_push(w, base);
    if (left < 0)
        return left;
    return n;
}

int mg_worker_flush(struct mg_worker *w, void *base, uint64_t now_ns)
{
    uint64_t gen = 0;
    const void *tables = mg_tables_acquire(base, w->worker, &gen);
    uint8_t *pool = mg_region_pool(base);
    struct mg_dp_io io;
    for (int rounds = 0; rounds < 1024; rounds++) {
        int kept = mg_hand_count(base, w->slot);
        if (kept < 0)
            return kept;
        uint32_t hand_left = MG_HAND_MAX - (uint32_t)kept;
        w->n_spare = spare_look(w, base, hand_left < MG_BURST_MAX ? hand_left : MG_BURST_MAX);
        setup_io(w, &io, pool, 0);
        int out = mg_dp_flush(w->dp, tables, now_ns, &io);
        int rc = spare_take(w, base, out < 0 ? 0 : io.n_spare_used);
        if (rc < 0)
            return rc;
        if (out <= 0)
            break;
    }
    w->last_flush_ns = now_ns;
    publish_stats(w, base, gen);
    return route_and_push(w, base);
}
