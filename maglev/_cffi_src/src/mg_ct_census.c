/* Census of a live connection table (change preview); design in include/mg_ct_census.h. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "mg_conntrack.h"
#include "mg_ct_census.h"
#include "mg_hash.h"

static int find_id(const uint64_t *ids, uint32_t n, uint64_t id)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && ids[lo] == id ? (int)lo : -1;
}

int mg_ct_census_slot(const struct mg_ct *ct, uint32_t b, int w, uint64_t k0, uint64_t k1, uint32_t now,
                      uint32_t tcp_ms, uint32_t udp_ms, struct mg_flow_key *key, uint64_t *backend_id)
{
    const struct mg_ct_meta *m = mg_ct_meta_of(ct, b);
    uint32_t tag = __atomic_load_n(&m->tag[w], __ATOMIC_ACQUIRE);
    if (tag == 0)
        return MG_CT_SLOT_EMPTY;
    uint32_t last = __atomic_load_n(&m->last[w], __ATOMIC_RELAXED);
    /* a worker may refresh an entry after `now` was read: a negative age is 0 */
    uint32_t age = (int32_t)(now - last) < 0 ? 0 : now - last;
    if (age >= mg_ct_tag_timeout(tag, tcp_ms, udp_ms))
        return MG_CT_SLOT_EXPIRED;
    const struct mg_ct_entry *e = mg_ct_entry_at(ct, b * MG_CT_WAYS + (uint32_t)w);
    uint64_t kw[5];
    const uint64_t *src = (const uint64_t *)(const void *)&e->key;
    for (int i = 0; i < 5; i++)
        kw[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* pairs with put()'s fence before the key */
    uint64_t id = __atomic_load_n(&e->backend_id, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* pairs with put()'s fence after the tag */
    uint32_t again = __atomic_load_n(&m->tag[w], __ATOMIC_RELAXED);
    if (((again ^ tag) & ~MG_CT_TAG_PROTECTED) != 0 ||
        mg_ct_sig(mg_siphash13(k0, k1, (const uint8_t *)kw, sizeof kw)) != (tag & MG_CT_SIG_MASK))
        return MG_CT_SLOT_TORN;
    memcpy(key, kw, sizeof *key);
    *backend_id = id;
    return MG_CT_SLOT_LIVE;
}

int mg_ct_census(const struct mg_ct *ct, uint64_t k0, uint64_t k1, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, const uint64_t *ids, uint32_t n_ids,
                 uint64_t *counts, struct mg_ct_census *out)
{
    if (!ct || !out || (n_ids && (!ids || !counts)))
        return -EINVAL;
    for (uint32_t i = 1; i < n_ids; i++)
        if (ids[i - 1] >= ids[i])
            return -EINVAL;
    const uint32_t now = mg_ct_ticks(now_ns);
    struct mg_flow_key key;
    uint64_t id;
    for (uint32_t b = 0; b < ct->n_buckets; b++) {
        for (int w = 0; w < MG_CT_WAYS; w++) {
            switch (mg_ct_census_slot(ct, b, w, k0, k1, now, tcp_ms, udp_ms, &key, &id)) {
            case MG_CT_SLOT_EXPIRED:
                out->expired++;
                break;
            case MG_CT_SLOT_TORN:
                out->torn++;
                break;
            case MG_CT_SLOT_LIVE: {
                out->live++;
                int j = find_id(ids, n_ids, id);
                if (j < 0)
                    out->unknown++;
                else
                    counts[j]++;
                break;
            }
            default:
                break;
            }
        }
    }
    return 0;
}
