/* Per-worker connection table (paper section 3.3: "each packet thread keeps its own
 * connection tracking table, no sharing").
 *
 * Layout: set-associative, MG_CT_WAYS (8) ways per bucket, capacity rounded up to a power
 * of two (>= 8 ways x 1 bucket).  Each bucket has one 64-byte line of metadata -- 8
 * 32-bit signatures and 8 32-bit last-used times -- and 8 entries of 64 bytes (the full
 * 40-byte flow key, the backend index and the 64-bit backend id, padded to one cache
 * line so a key compare never straddles two lines) in a separate array.  A lookup
 * that misses touches only the metadata line (signatures filter) unless a signature
 * matches, in which case the full key is compared with memcmp: a signature hit is never
 * trusted alone.  Memory: 72 bytes per entry (8 metadata + 64 entry), e.g. 75.5 MB for
 * 2^20 entries.  The backend index is a hint; the id is the identity (mg_tables.h).
 *
 * Hashing: the caller gives the flow hash h (SipHash-1-3 of the key under the deployment
 * secret); bucket = h & (n_buckets - 1), signature = h >> 32 with 0 mapped to 1 (0 marks an
 * empty way).  Because the secret is unknown to clients they cannot aim at one bucket.
 *
 * Time: "ticks" are milliseconds (now_ns / 1e6) truncated to 32 bits; ages are computed
 * as (uint32_t)(now - last), correct for ages below 49.7 days.
 *
 * Eviction rule (on insert, in this order): an empty way; else a way whose entry is idle
 * past its timeout (TCP or UDP by the entry's protocol); else the least recently used
 * way, but only if it has been idle at least MG_CT_EVICT_MIN_IDLE_MS.  Otherwise the
 * insert fails: the caller forwards by Maglev hash without state (paper 3.3) and counts
 * it.  The idle floor keeps a SYN flood from evicting active connections faster than they
 * send packets; ties go to the lowest way.
 *
 * Everything here is deterministic so the Python reference (maglev/datapath/reference.py,
 * class ConnTable) reproduces the exact same table state.
 */
#ifndef MG_CONNTRACK_H
#define MG_CONNTRACK_H

#include "mg_common.h"
#include "mg_flow.h"

#define MG_CT_WAYS 8
/* LRU victims younger than this (ms) are not evicted: the insert fails instead. */
#define MG_CT_EVICT_MIN_IDLE_MS 1000
/* Largest capacity accepted (entries). */
#define MG_CT_MAX_CAPACITY (1u << 26)

struct mg_ct_meta {
    uint32_t sig[MG_CT_WAYS];
    uint32_t last[MG_CT_WAYS];
};

struct mg_ct_entry {
    struct mg_flow_key key;
    int32_t backend;     /* global backend index in the tables blob (a hint) */
    uint32_t reserved;
    uint64_t backend_id; /* mg_backend.id of the chosen backend (the identity) */
    uint8_t pad[8];      /* to one 64-byte line */
};

struct mg_ct_stats {
    uint64_t lookups;
    uint64_t hits;
    uint64_t inserts;
    uint64_t insert_failed; /* no way could be taken: forwarded statelessly */
    uint64_t evictions;     /* live LRU entry replaced */
    uint64_t expired;       /* entry found idle past its timeout (lookup or insert) */
    uint64_t reselected;    /* hit whose backend was gone or unhealthy */
};

struct mg_ct {
    uint32_t n_buckets;
    uint32_t mask;
    struct mg_ct_meta *meta;     /* n_buckets, 64-byte aligned */
    struct mg_ct_entry *entries; /* n_buckets * MG_CT_WAYS */
    struct mg_ct_stats stats;
};

_Static_assert(sizeof(struct mg_ct_meta) == 64, "one line of metadata per bucket");
_Static_assert(sizeof(struct mg_ct_entry) == 64, "one line per entry");

static inline uint32_t mg_ct_sig(uint64_t h)
{
    uint32_t s = (uint32_t)(h >> 32);
    return s ? s : 1;
}

static inline uint32_t mg_ct_ticks(uint64_t now_ns) { return (uint32_t)(now_ns / 1000000u); }

static inline uint32_t mg_ct_timeout(const struct mg_flow_key *k, uint32_t tcp_ms, uint32_t udp_ms)
{
    return k->proto == 6 ? tcp_ms : udp_ms;
}

static inline void mg_ct_prefetch(const struct mg_ct *ct, uint64_t h)
{
    __builtin_prefetch(&ct->meta[h & ct->mask], 1, 3);
}

/* Second prefetch stage: with the bucket's metadata line (prefetched earlier) in cache,
 * prefetch the entry line a lookup will compare (the first way whose signature matches)
 * or, if none matches, the entry an insert would write (the first empty way). */
static inline void mg_ct_prefetch_entry(const struct mg_ct *ct, uint64_t h)
{
    uint32_t b = (uint32_t)h & ct->mask;
    const struct mg_ct_meta *m = &ct->meta[b];
    uint32_t sig = mg_ct_sig(h);
    int empty = -1;
    for (int w = 0; w < MG_CT_WAYS; w++) {
        if (m->sig[w] == sig) {
            __builtin_prefetch(&ct->entries[(size_t)b * MG_CT_WAYS + w], 1, 3);
            return;
        }
        if (empty < 0 && m->sig[w] == 0)
            empty = w;
    }
    if (empty >= 0)
        __builtin_prefetch(&ct->entries[(size_t)b * MG_CT_WAYS + empty], 1, 3);
}

/* Returns the way (0..7) holding key, or -1.  An expired match is freed and counted. */
static inline int mg_ct_find(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                             uint32_t now, uint32_t tcp_ms, uint32_t udp_ms)
{
    uint32_t b = (uint32_t)h & ct->mask;
    struct mg_ct_meta *m = &ct->meta[b];
    uint32_t sig = mg_ct_sig(h);
    ct->stats.lookups++;
    for (int w = 0; w < MG_CT_WAYS; w++) {
        if (m->sig[w] != sig)
            continue;
        struct mg_ct_entry *e = &ct->entries[(size_t)b * MG_CT_WAYS + w];
        if (memcmp(&e->key, key, sizeof(*key)) != 0)
            continue;
        if ((uint32_t)(now - m->last[w]) >= mg_ct_timeout(key, tcp_ms, udp_ms)) {
            m->sig[w] = 0;
            ct->stats.expired++;
            return -1;
        }
        m->last[w] = now;
        ct->stats.hits++;
        return w;
    }
    return -1;
}

static inline struct mg_ct_entry *mg_ct_entry_at(struct mg_ct *ct, uint64_t h, int way)
{
    return &ct->entries[(size_t)((uint32_t)h & ct->mask) * MG_CT_WAYS + way];
}

/* Insert key (known absent) -> (backend, id).  Returns the way or -1 (insert failed). */
static inline int mg_ct_add(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                            uint32_t now, uint32_t tcp_ms, uint32_t udp_ms, int32_t backend,
                            uint64_t backend_id)
{
    uint32_t b = (uint32_t)h & ct->mask;
    struct mg_ct_meta *m = &ct->meta[b];
    struct mg_ct_entry *ents = &ct->entries[(size_t)b * MG_CT_WAYS];
    int way = -1;
    for (int w = 0; w < MG_CT_WAYS; w++) {
        if (m->sig[w] == 0) {
            way = w;
            break;
        }
    }
    if (way < 0) {
        for (int w = 0; w < MG_CT_WAYS; w++) {
            if ((uint32_t)(now - m->last[w]) >= mg_ct_timeout(&ents[w].key, tcp_ms, udp_ms)) {
                way = w;
                ct->stats.expired++;
                break;
            }
        }
    }
    if (way < 0) {
        uint32_t oldest = 0;
        int lru = 0;
        for (int w = 0; w < MG_CT_WAYS; w++) {
            uint32_t age = now - m->last[w];
            if (age > oldest) {
                oldest = age;
                lru = w;
            }
        }
        if (oldest < MG_CT_EVICT_MIN_IDLE_MS) {
            ct->stats.insert_failed++;
            return -1;
        }
        way = lru;
        ct->stats.evictions++;
    }
    m->sig[way] = mg_ct_sig(h);
    m->last[way] = now;
    ents[way].key = *key;
    ents[way].backend = backend;
    ents[way].backend_id = backend_id;
    ct->stats.inserts++;
    return way;
}

/* Memory of a table of `capacity` entries (rounded up to a power of two, >= 8). */
size_t mg_ct_bytes(uint32_t capacity);
/* Allocate / free.  NULL on a bad capacity (0 or > MG_CT_MAX_CAPACITY) or no memory. */
struct mg_ct *mg_ct_new(uint32_t capacity);
void mg_ct_free(struct mg_ct *ct);
void mg_ct_clear(struct mg_ct *ct);
uint32_t mg_ct_capacity(const struct mg_ct *ct);
/* Out-of-line forms for tests: lookup returns the backend index or -1 (refreshes on hit);
 * insert returns the way or -1. */
int32_t mg_ct_lookup(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                     uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms);
int mg_ct_insert(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id);
/* Live (non-empty, not necessarily unexpired) ways, for tests and stats: O(capacity). */
uint32_t mg_ct_count(const struct mg_ct *ct);

#endif
