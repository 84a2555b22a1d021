/* Packet worker glue (design in include/mg_worker.h). */
#include "mg_worker.h"

#include <stdlib.h>

#include "mg_ring.h"
#include "mg_tables_pub.h"
#include "mg_trace.h"

_Static_assert(MG_WS_DROPS + MG_WS_N_DROPS <= MG_STATS_WORDS, "worker stats fit the block");
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
    w->stats = mg_region_stats(base, w->slot);
    w->burst = burst;
    if (w->rx_id == UINT32_MAX || w->tx_id == UINT32_MAX || w->ret_id == UINT32_MAX ||
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

/* Cumulative counters = predecessors' + this data path's. */
static void publish_stats(struct mg_worker *w, uint64_t generation)
{
    const struct mg_dp_stats *d = mg_dp_stats(w->dp);
    uint64_t *s = w->stats, *b = w->base;
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
    for (uint32_t r = 0; r < MG_DROP_COUNT; r++)
        s[MG_WS_DROPS + r] = b[MG_WS_DROPS + r] + d->drops[r];
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
    mg_tables_quiesce(base, w->worker);
    if (n > 0) {
        /* Steering clears verdict on every packet it dispatches, so a verdict here says
         * the dead worker judged the frame (and counted it).  Judged frames finish their
         * way (forward -> tx, drop -> ret); the others -- never judged, or a fragment the
         * dead data path held -- are dropped and counted as worker_restart. */
        uint32_t cnt;
        uint64_t *descs = mg_hand_descs(base, w->slot, &cnt);
        uint8_t *pool = mg_region_pool(base);
        uint64_t lost = 0;
        for (uint32_t j = 0; j < cnt; j++) {
            struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
            if (m->verdict == MG_VERDICT_FORWARD || m->verdict == MG_VERDICT_ICMP) {
                w->dest[j] = (uint16_t)w->tx_id;
            } else if (m->verdict != MG_DROP_NONE && m->verdict < MG_DROP_COUNT) {
                w->dest[j] = (uint16_t)w->ret_id;
            } else {
                m->verdict = MG_DROP_NONE;
                w->dest[j] = (uint16_t)w->ret_id;
                lost++;
            }
        }
        /* The rings were the dead worker's and are empty enough or not: keep what does
         * not fit (the first bursts push it). */
        int rc = mg_hand_push(base, w->slot, w->dest, cnt);
        if (rc < 0)
            return rc;
        w->stats[MG_WS_RESTART_DROPS] += lost;
        w->base[MG_WS_RESTART_DROPS] = w->stats[MG_WS_RESTART_DROPS];
    }
    return n;
}

static void setup_io(struct mg_worker *w, struct mg_dp_io *io, uint8_t *pool, uint32_t n)
{
    memset(io, 0, sizeof *io);
    io->pool = pool;
    io->frames = w->in;
    io->n = n;
    io->tx = w->tx;
    io->tx_cap = MG_BURST_MAX + MG_DP_DRAIN_MAX;
    io->drop = w->drop;
    io->drop_cap = MG_BURST_MAX + MG_DP_DRAIN_MAX;
    io->spare = NULL;
    io->n_spare = 0;
}

int mg_worker_burst(struct mg_worker *w, void *base, uint64_t now_ns)
{
    int kept = mg_hand_count(base, w->slot);
    if (kept < 0)
        return kept;
    uint32_t room = MG_HAND_MAX - (uint32_t)kept;
    uint32_t want = room < w->burst ? room : w->burst;
    int n = want ? mg_hand_pull(base, w->slot, w->rx_id, want) : 0;
    if (n < 0)
        return n;
    const struct mg_dp_stats *d = mg_dp_stats(w->dp);
    if (n == 0) {
        /* Idle: only held fragments (expiry) or a full output ring need attention. */
        if (kept == 0)
            return 0;
        if (d->held && now_ns - w->last_flush_ns >= MG_WORKER_FLUSH_NS)
            return mg_worker_flush(w, base, now_ns) < 0 ? -EIO : 0;
        int left = route_and_push(w, base);
        if (left < 0)
            return left;
        /* Frames waiting for room on tx/ret (not held fragments): ask to be called soon. */
        return (uint64_t)left > d->held ? -EAGAIN : 0;
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
        __builtin_prefetch(f, 1, 3);
        __builtin_prefetch(f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM, 1, 3);
    }
    uint64_t gen = 0;
    const void *tables = mg_tables_acquire(base, w->worker, &gen);
    struct mg_dp_io io;
    setup_io(w, &io, pool, (uint32_t)n);
    int rc = mg_dp_burst(w->dp, tables, now_ns, &io);
    if (rc < 0) {
        /* Cannot happen with the capacities above; never leave frames unjudged. */
        for (uint32_t j = 0; j < (uint32_t)n; j++)
            mg_frame_meta(pool, w->in[j])->verdict = MG_DROP_BAD_FRAME;
    }
    publish_stats(w, gen);
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
        setup_io(w, &io, pool, 0);
        int out = mg_dp_flush(w->dp, tables, now_ns, &io);
        if (out <= 0)
            break;
    }
    w->last_flush_ns = now_ns;
    publish_stats(w, gen);
    return route_and_push(w, base);
}
