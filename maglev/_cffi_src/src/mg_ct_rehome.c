/* Re-homing a previous run's connection tables into this run's (docs/operations.md, "What
 * moves a connection"; the orchestration is maglev/rings/conntrack_shm.py rehome_run).
 *
 * A run with another worker count, flow -> worker map, capacity or flow-hash secret cannot
 * adopt the previous run's tables as they are: its flows land on other workers.  But every
 * entry holds its whole flow key, so each live entry can be placed again: hash the key
 * with this run's secret, pick the worker steering will pick (plain map: (hash >> 32) %
 * n_dst; weighted: reta[hash >> 56], maglev/actors/dispatch.py), and insert it there with
 * its backend identity, its last-used tick and its segment.  A key without source port
 * (a VIP that hashes on src_ip / dst_port / without the UDP source port: one entry serves
 * connections that steering spreads over every worker) goes to every worker.  A key found
 * twice (steering's fallback once placed a flow on a second worker) keeps the entry used
 * last.  The source is read only and must not be written meanwhile (the caller holds its
 * lock); the reference is ref_conntrack.rehome. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "mg_conntrack.h"
#include "mg_hash.h"

/* The slot of key in ct, or -1; no refresh, no expiry, no counter (unlike mg_ct_find). */
static int find_quiet(const struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h)
{
    uint32_t sig = mg_ct_sig(h);
    uint32_t b = (uint32_t)h & ct->mask;
    for (int pass = 0; pass < 2; pass++) {
        const struct mg_ct_meta *m = mg_ct_meta_of(ct, b);
        for (int w = 0; w < MG_CT_WAYS; w++) {
            uint32_t slot = b * MG_CT_WAYS + (uint32_t)w;
            if ((m->tag[w] & MG_CT_SIG_MASK) == sig && !memcmp(&mg_ct_entry_at(ct, slot)->key, key, sizeof(*key)))
                return (int)slot;
        }
        uint32_t b2 = mg_ct_alt(ct, b, sig);
        if (b2 == b)
            break;
        b = b2;
    }
    return -1;
}

static void place(struct mg_ct *dst, const struct mg_flow_key *key, uint64_t h, uint32_t tag, uint32_t last,
                  const struct mg_ct_entry *e, uint32_t now, uint32_t tcp_ms, uint32_t udp_ms,
                  struct mg_ct_rehome_stats *st)
{
    int s = find_quiet(dst, key, h);
    if (s >= 0) {
        struct mg_ct_meta *m = mg_ct_meta_of(dst, (uint32_t)s / MG_CT_WAYS);
        int w = s % MG_CT_WAYS;
        st->duplicates++;
        if ((int32_t)(last - m->last[w]) > 0) { /* this copy was used later: it wins */
            struct mg_ct_entry *d = mg_ct_entry_at(dst, (uint32_t)s);
            d->backend = e->backend;
            d->backend_id = e->backend_id;
            m->last[w] = last;
        }
        return;
    }
    s = mg_ct_add(dst, key, h, now, tcp_ms, udp_ms, e->backend, e->backend_id);
    if (s < 0) {
        st->no_room++;
        return;
    }
    mg_ct_meta_of(dst, (uint32_t)s / MG_CT_WAYS)->last[s % MG_CT_WAYS] = last;
    if (tag & MG_CT_TAG_PROTECTED)
        mg_ct_promote(dst, (uint32_t)s);
    st->placed++;
}

int mg_ct_rehome(const struct mg_ct *src, struct mg_ct *const *dst, uint32_t n_dst, uint64_t k0, uint64_t k1,
                 const uint8_t *reta, uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms,
                 struct mg_ct_rehome_stats *st)
{
    if (!src || !dst || !st || n_dst == 0)
        return -EINVAL;
    for (uint32_t i = 0; i < n_dst; i++)
        if (!dst[i])
            return -EINVAL;
    const uint32_t now = mg_ct_ticks(now_ns);
    for (uint32_t b = 0; b < src->n_buckets; b++) {
        const struct mg_ct_meta *m = mg_ct_meta_of(src, b);
        for (int w = 0; w < MG_CT_WAYS; w++) {
            uint32_t tag = m->tag[w];
            if (tag == 0)
                continue;
            uint32_t last = m->last[w];
            if (now - last >= mg_ct_tag_timeout(tag, tcp_ms, udp_ms)) {
                st->expired++;
                continue;
            }
            const struct mg_ct_entry *e = mg_ct_entry_at(src, b * MG_CT_WAYS + (uint32_t)w);
            struct mg_flow_key key = e->key;
            uint64_t h = mg_siphash13_40(k0, k1, &key);
            st->live++;
            if (key.sport == 0) { /* a masked key: every worker may need it */
                for (uint32_t i = 0; i < n_dst; i++)
                    place(dst[i], &key, h, tag, last, e, now, tcp_ms, udp_ms, st);
                continue;
            }
            uint32_t to = reta ? reta[h >> 56] : (uint32_t)((h >> 32) % n_dst);
            if (to >= n_dst)
                return -EINVAL;
            place(dst[to], &key, h, tag, last, e, now, tcp_ms, udp_ms, st);
        }
    }
    return 0;
}
