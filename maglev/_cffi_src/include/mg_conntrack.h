/* Per-worker connection table (paper section 3.3: "each packet thread keeps its own
 * connection tracking table, no sharing").
 *
 * Memory: ONE contiguous anonymous mapping (mmap: fresh pages are already zero, so a table
 * of any size starts without a memset), laid out as
 *
 *     [struct mg_ct: header, 256 bytes] [meta: n_buckets x 64 B] [entries: capacity x 64 B]
 *
 * The header starts with a magic and a layout version and locates the arrays by offsets,
 * never by pointers, so the same bytes can later live in shared memory and be adopted by
 * another process (issue 16.5: mg_ct_check / mg_ct_format / mg_ct_map_shared below, the
 * POSIX shm segments in maglev/rings/conntrack_shm.py).  struct mg_ct *is* the mapping.  Pages:
 * MAP_HUGETLB when reserved huge pages suffice (or are required), else transparent huge
 * pages by madvise(MADV_HUGEPAGE), else 4 KiB pages; mg_ct_page_mode() says which.  Before
 * mapping, the size is checked against MemAvailable (or HugePages_Free) -- mg_ct_plan() --
 * and an allocation that does not fit is refused with ENOMEM, nothing mapped.
 *
 * Geometry: buckets of MG_CT_WAYS (8) ways; capacity = a power of two >= 8.  A bucket's
 * metadata is one 64-byte line: 8 32-bit tags and 8 32-bit last-used times.  A tag is
 *
 *     bit 31  PROTECTED  (segment: 0 = probation, 1 = protected)
 *     bit 30  TCP        (which idle timeout applies: TCP's or the other one)
 *     bits 0-29 signature (bits 32..61 of the flow hash; 0 is mapped to 1; tag 0 = empty)
 *
 * so every decision of an insert (empty? expired? which segment? how old?) reads the
 * metadata lines only.  Entries are one 64-byte line each (the full 40-byte flow key,
 * backend index hint, 64-bit backend id): a lookup compares the full key with memcmp
 * whenever a signature matches -- a signature hit is never trusted alone.  A lookup hit in
 * the primary bucket touches exactly two lines (its metadata line, its entry line).
 *
 * Two candidate buckets (partial-key cuckoo hashing): primary b1 = h & mask, alternate
 * b2 = b1 ^ ((sig * 0x9E3779B1 >> 8) | 1) & mask -- computable from (bucket, signature)
 * alone, so an entry can be moved to its other bucket without its hash.  Lookups check b1,
 * then b2.  Inserts take (chosen by bench/bench_conntrack.py, numbers in docs/datapath.md):
 *
 *   1. the first empty way of b1, then of b2;
 *   2. the first way of b1, then b2, whose entry is idle past its timeout (reused);
 *   3. while the table is below 3/4 full: a cuckoo move -- the first entry of b1, then
 *      b2, whose alternate bucket has an empty way is moved there and its way is taken;
 *   4. the least recently used PROBATION way of b1 and b2 (ties: b1 first, lowest way);
 *   5. otherwise the insert fails: the packet is forwarded by Maglev hash without state
 *      (paper 3.3) and counted (insert_failed).
 *
 * Segments (issue 16.1): a new flow enters probation.  It is promoted to the protected
 * segment by a later packet of the flow that is not a TCP SYN (a second packet, the ACK
 * after the SYN); SYN retransmissions and ICMP errors do not promote.  Protected entries
 * are never evicted for a new flow: they leave only by idle timeout, or when a promotion
 * finds the protected segment at its quota (protected_max entries), in which case the
 * least recently used protected way of the promoted entry's bucket is demoted to probation
 * (if the bucket has none the entry stays in probation).  So a SYN flood can only churn
 * probation entries: an established flow keeps its entry for its idle timeout.
 *
 * Rate guard (issue 16.2, Katran's per-core new-connection limit): a token bucket of
 * new_flows_per_s per worker (burst: a tenth of a second's worth, at least 1).  A new flow
 * beyond it is forwarded by Maglev hash alone, not inserted, and counted
 * (rate_guard_hits); lookups of existing flows are not affected.  0 = no limit.
 *
 * Time: "ticks" are milliseconds (now_ns / 1e6) truncated to 32 bits; ages are computed as
 * (uint32_t)(now - last), correct for ages below 49.7 days.
 *
 * Everything here is deterministic so the Python reference (maglev/datapath/ref_conntrack.py,
 * class ConnTable) reproduces the exact same table state.
 */
#ifndef MG_CONNTRACK_H
#define MG_CONNTRACK_H

#include "mg_common.h"
#include "mg_flow.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MG_CT_WAYS 8
/* Largest capacity accepted (entries). */
#define MG_CT_MAX_CAPACITY (1u << 26)
#define MG_CT_MAGIC 0x314b5254434d474dull /* "MGCTRK1" + version byte, little-endian */
#define MG_CT_LAYOUT_VERSION 2u
#define MG_CT_HDR_SIZE 256u

#define MG_CT_TAG_PROTECTED 0x80000000u
#define MG_CT_TAG_TCP 0x40000000u
#define MG_CT_SIG_MASK 0x3fffffffu
/* Cuckoo moves only while fewer than capacity - capacity / MG_CT_MOVE_RESERVE ways are
 * used (75%): each attempt reads up to 16 more metadata lines, which near full (a flood, a
 * table at capacity) costs ~100 ns per new flow on average (bench_datapath "new flows")
 * and rarely succeeds; 0 insert failures below 70% needs moves only up to there. */
#define MG_CT_MOVE_RESERVE 4u
#define MG_CT_DEFAULT_PROTECTED_PCT 90u

/* Page modes (mg_ct_new_mode, mg_ct_plan, mg_ct_page_mode). */
#define MG_CT_PAGES_AUTO 0    /* hugetlb if enough huge pages are free, else thp */
#define MG_CT_PAGES_HUGETLB 1 /* MAP_HUGETLB, required */
#define MG_CT_PAGES_THP 2     /* 4 KiB mapping + madvise(MADV_HUGEPAGE) */
#define MG_CT_PAGES_SMALL 3   /* 4 KiB pages, no advice */
#define MG_CT_PAGES_SHM 4     /* MAP_SHARED of a POSIX shm file (tmpfs pages), survives the process */

/* Why a header cannot be adopted (mg_ct_check); maglev/rings/conntrack_shm.py words them. */
#define MG_CT_E_TRUNCATED 1    /* file shorter than the header */
#define MG_CT_E_MAGIC 2        /* not a maglev connection table */
#define MG_CT_E_VERSION 3      /* another layout version */
#define MG_CT_E_GEOMETRY 4     /* ways / buckets / offsets inconsistent */
#define MG_CT_E_SIZE 5         /* file size is not what the geometry needs */

struct mg_ct_meta {
    uint32_t tag[MG_CT_WAYS];
    uint32_t last[MG_CT_WAYS];
};

struct mg_ct_entry {
    struct mg_flow_key key;
    int32_t backend;     /* global backend index in the tables blob (a hint) */
    uint32_t reserved;
    uint64_t backend_id; /* mg_backend.id of the chosen backend (the identity) */
    uint8_t pad[8];      /* to one 64-byte line */
};

/* The counters, in this order, are the stat names of ref_conntrack.CT_STAT_NAMES. */
struct mg_ct_stats {
    uint64_t lookups;
    uint64_t hits;
    uint64_t inserts;
    uint64_t insert_failed;   /* no way could be taken: forwarded statelessly */
    uint64_t evictions;       /* live probation entry replaced by a new flow */
    uint64_t expired;         /* entry found idle past its timeout (lookup or insert) */
    uint64_t reselected;      /* hit whose backend was gone or unhealthy */
    uint64_t promoted;        /* probation -> protected */
    uint64_t demoted;         /* protected -> probation (protected quota reached) */
    uint64_t moved;           /* cuckoo moves to the alternate bucket */
    uint64_t rate_guard_hits; /* new flows not inserted: above new_flows_per_s */
};

/* The mapping's header (the first MG_CT_HDR_SIZE bytes). */
struct mg_ct {
    uint64_t magic;          /* MG_CT_MAGIC */
    uint32_t version;        /* MG_CT_LAYOUT_VERSION */
    uint32_t ways;
    uint32_t n_buckets;
    uint32_t mask;           /* n_buckets - 1 */
    uint64_t meta_off;       /* bytes from the header to the metadata array */
    uint64_t entries_off;    /* bytes from the header to the entry array */
    uint64_t map_bytes;      /* the whole mapping */
    uint32_t page_mode;      /* MG_CT_PAGES_HUGETLB / _THP / _SMALL: what was used */
    uint32_t protected_max;  /* protected-segment quota (entries) */
    uint32_t n_used;         /* non-empty ways */
    uint32_t n_protected;    /* ways in the protected segment */
    uint32_t rate_per_s;     /* new flows per second admitted (0 = no limit) */
    uint32_t rate_last;      /* tick of the last refill */
    uint64_t tokens;         /* thousandths of a new flow */
    uint64_t burst;          /* most tokens held (thousandths) */
    uint64_t key_fp;         /* shared tables: fingerprint of the flow-hash secret (0 = none) */
    struct mg_ct_stats stats; /* from byte 96 */
    uint32_t n_workers;      /* shared tables: worker count of the run that made it */
    uint32_t worker;         /* shared tables: worker index */
    uint64_t adoptions;      /* shared tables: times adopted by a new process */
    uint32_t map_fp;         /* shared tables: steering's flow -> worker map (0 = hash mod n_workers) */
    uint32_t pad0;
    uint8_t pad1[MG_CT_HDR_SIZE - 96 - sizeof(struct mg_ct_stats) - 24];
};

_Static_assert(sizeof(struct mg_ct_meta) == 64, "one line of metadata per bucket");
_Static_assert(sizeof(struct mg_ct_entry) == 64, "one line per entry");
_Static_assert(sizeof(struct mg_ct) == MG_CT_HDR_SIZE, "header size");

static inline uint32_t mg_ct_sig(uint64_t h)
{
    uint32_t s = (uint32_t)(h >> 32) & MG_CT_SIG_MASK;
    return s ? s : 1;
}

static inline uint32_t mg_ct_alt(const struct mg_ct *ct, uint32_t b, uint32_t sig)
{
    return (b ^ (((sig * 0x9E3779B1u) >> 8) | 1u)) & ct->mask;
}

static inline uint32_t mg_ct_ticks(uint64_t now_ns) { return (uint32_t)(now_ns / 1000000u); }

static inline struct mg_ct_meta *mg_ct_meta_of(const struct mg_ct *ct, uint32_t b)
{
    return (struct mg_ct_meta *)((char *)ct + ct->meta_off) + b;
}

/* Entry of slot = bucket * MG_CT_WAYS + way. */
static inline struct mg_ct_entry *mg_ct_entry_at(const struct mg_ct *ct, uint32_t slot)
{
    return (struct mg_ct_entry *)((char *)ct + ct->entries_off) + slot;
}

static inline uint32_t mg_ct_tag_timeout(uint32_t tag, uint32_t tcp_ms, uint32_t udp_ms)
{
    return (tag & MG_CT_TAG_TCP) ? tcp_ms : udp_ms;
}

/* The ways of a bucket whose signature is sig (bit w set for way w), and the empty ways
 * (tag 0), as bit masks: all 8 tags compared at once (SSE2: two 4-lane compares), so a
 * lookup takes no branch that depends on which way holds the flow.  The way-by-way loops
 * these replace mispredicted about 1.2 times per packet at 10k flows (callgrind
 * --branch-sim, the flows' ways differ from packet to packet): ~6 ns each on this VM. */
static inline uint32_t mg_ct_match(const struct mg_ct_meta *m, uint32_t sig)
{
#ifdef __SSE2__
    const __m128i k = _mm_set1_epi32((int)MG_CT_SIG_MASK), s = _mm_set1_epi32((int)sig);
    __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)&m->tag[0]), k);
    __m128i b = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)&m->tag[4]), k);
    __m128i e = _mm_packs_epi32(_mm_cmpeq_epi32(a, s), _mm_cmpeq_epi32(b, s));
    return (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(e, _mm_setzero_si128()));
#else
    uint32_t mask = 0;
    for (int w = 0; w < MG_CT_WAYS; w++)
        mask |= (uint32_t)((m->tag[w] & MG_CT_SIG_MASK) == sig) << w;
    return mask;
#endif
}

static inline uint32_t mg_ct_empty_ways(const struct mg_ct_meta *m)
{
#ifdef __SSE2__
    const __m128i z = _mm_setzero_si128();
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)&m->tag[0]);
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)&m->tag[4]);
    __m128i e = _mm_packs_epi32(_mm_cmpeq_epi32(a, z), _mm_cmpeq_epi32(b, z));
    return (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(e, z));
#else
    uint32_t mask = 0;
    for (int w = 0; w < MG_CT_WAYS; w++)
        mask |= (uint32_t)(m->tag[w] == 0) << w;
    return mask;
#endif
}

static inline int mg_ct_near_full(const struct mg_ct *ct)
{
    return ct->n_used >= ct->n_buckets * (MG_CT_WAYS - MG_CT_WAYS / 4); /* >= 75% used */
}

/* A table's array addresses and mask, read once (the geometry never changes after
 * mg_ct_format): the burst kernel takes one per burst and keeps it in registers.  Built
 * with -fno-strict-aliasing, every store through a packet pointer could change ct->meta_off
 * as far as the compiler knows, so the mg_ct_* forms taking `ct` reload the offsets at each
 * use (~30 instructions a packet in mg_dp_burst, bench/callgrind_dp.py). */
struct mg_ct_view {
    struct mg_ct *ct;
    struct mg_ct_meta *meta;
    struct mg_ct_entry *ent;
    uint32_t mask;
};

static inline struct mg_ct_view mg_ct_view_of(struct mg_ct *ct)
{
    struct mg_ct_view v = {ct, mg_ct_meta_of(ct, 0), mg_ct_entry_at(ct, 0), ct->mask};
    return v;
}

static inline uint32_t mg_ct_alt_v(struct mg_ct_view v, uint32_t b, uint32_t sig)
{
    return (b ^ (((sig * 0x9E3779B1u) >> 8) | 1u)) & v.mask;
}

/* First prefetch stage: the primary bucket's metadata line; near full (where a new flow's
 * insert reads both buckets) the alternate's too. */
static inline __attribute__((always_inline)) void mg_ct_prefetch_v(struct mg_ct_view v, uint64_t h)
{
    uint32_t b = (uint32_t)h & v.mask;
    MG_PREFETCH_W(&v.meta[b]);
    if (mg_ct_near_full(v.ct))
        MG_PREFETCH_W(&v.meta[mg_ct_alt_v(v, b, mg_ct_sig(h))]);
}

static inline __attribute__((always_inline)) void mg_ct_prefetch(struct mg_ct *ct, uint64_t h)
{
    mg_ct_prefetch_v(mg_ct_view_of(ct), h);
}

/* Second prefetch stage: with the primary bucket's metadata line (prefetched earlier) in
 * cache, prefetch the entry line a lookup will compare (the first way whose signature
 * matches).  If none matches (a new flow, most likely), the alternate bucket's metadata
 * line (a lookup that misses reads both) and the entry line the insert will write: the
 * first empty way of the primary; near full, where the first stage fetched the alternate's
 * line too, the first empty way of the alternate, else the least recently used probation
 * way of the two (mg_ct_add steps 1 and 4; an expired way or a cuckoo move, steps 2-3, is
 * not foreseen: that line is then fetched by the insert itself).  Without the victim's line
 * in cache, the insert's stores to it wait for DRAM and stall everything behind them in the
 * store buffer (new flows into a full table: ~300 -> ~200 ns, docs/datapath.md).  Returns 1
 * when no signature of the primary matched (a new flow, most likely), else 0. */
static inline __attribute__((always_inline)) int
mg_ct_prefetch_entry_v(struct mg_ct_view v, uint64_t h, uint32_t now)
{
    uint32_t b = (uint32_t)h & v.mask;
    const struct mg_ct_meta *m = &v.meta[b];
    uint32_t sig = mg_ct_sig(h);
    uint32_t hit = mg_ct_match(m, sig);
    if (MG_LIKELY(hit)) { /* the first way whose signature matches */
        MG_PREFETCH(&v.ent[b * MG_CT_WAYS + (uint32_t)__builtin_ctz(hit)]);
        return 0;
    }
    uint32_t empty = mg_ct_empty_ways(m);
    uint32_t b2 = mg_ct_alt_v(v, b, sig);
    const struct mg_ct_meta *m2 = &v.meta[b2];
    if (empty) {
        MG_PREFETCH_W(m2); /* a miss in the primary: the lookup reads the alternate too */
        MG_PREFETCH_W(&v.ent[b * MG_CT_WAYS + (uint32_t)__builtin_ctz(empty)]);
        return 1;
    }
    if (!mg_ct_near_full(v.ct)) {
        MG_PREFETCH_W(m2);
        return 1;
    }
    uint32_t vb = b, oldest = 0;
    int vw = -1;
    for (int i = 0; i < 2; i++) {
        const struct mg_ct_meta *mm = i ? m2 : m;
        for (int w = 0; w < MG_CT_WAYS; w++) {
            uint32_t tag = mm->tag[w];
            if (i && tag == 0) {
                MG_PREFETCH_W(&v.ent[b2 * MG_CT_WAYS + (uint32_t)w]);
                return 1;
            }
            uint32_t age = now - mm->last[w];
            if (!(tag & MG_CT_TAG_PROTECTED) && (vw < 0 || age > oldest)) {
                oldest = age;
                vb = i ? b2 : b;
                vw = w;
            }
        }
    }
    if (vw >= 0)
        MG_PREFETCH_W(&v.ent[vb * MG_CT_WAYS + (uint32_t)vw]);
    return 1;
}

static inline __attribute__((always_inline)) int
mg_ct_prefetch_entry(struct mg_ct *ct, uint64_t h, uint32_t now)
{
    return mg_ct_prefetch_entry_v(mg_ct_view_of(ct), h, now);
}

static inline void mg_ct_free_way(struct mg_ct *ct, struct mg_ct_meta *m, int w)
{
    if (m->tag[w] & MG_CT_TAG_PROTECTED)
        ct->n_protected--;
    m->tag[w] = 0;
    ct->n_used--;
}

static inline int mg_ct_scan_v(struct mg_ct_view v, uint32_t b, const struct mg_flow_key *key,
                               uint32_t sig, uint32_t now, uint32_t tcp_ms, uint32_t udp_ms)
{
    struct mg_ct_meta *m = &v.meta[b];
    for (uint32_t hit = mg_ct_match(m, sig); hit; hit &= hit - 1) {
        int w = __builtin_ctz(hit);
        uint32_t slot = b * MG_CT_WAYS + (uint32_t)w;
        if (memcmp(&v.ent[slot].key, key, sizeof(*key)) != 0)
            continue;
        if ((uint32_t)(now - m->last[w]) >= mg_ct_tag_timeout(m->tag[w], tcp_ms, udp_ms)) {
            mg_ct_free_way(v.ct, m, w);
            v.ct->stats.expired++;
            return -2;
        }
        m->last[w] = now;
        v.ct->stats.hits++;
        return (int)slot;
    }
    return -1;
}

/* Returns the slot holding key (refreshed), or -1.  An expired match is freed and counted. */
static inline int mg_ct_find_v(struct mg_ct_view v, const struct mg_flow_key *key, uint64_t h,
                               uint32_t now, uint32_t tcp_ms, uint32_t udp_ms)
{
    uint32_t b = (uint32_t)h & v.mask;
    uint32_t sig = mg_ct_sig(h);
    v.ct->stats.lookups++;
    int s = mg_ct_scan_v(v, b, key, sig, now, tcp_ms, udp_ms);
    if (s != -1)
        return s < 0 ? -1 : s;
    uint32_t b2 = mg_ct_alt_v(v, b, sig);
    if (b2 == b)
        return -1;
    s = mg_ct_scan_v(v, b2, key, sig, now, tcp_ms, udp_ms);
    return s < 0 ? -1 : s;
}

static inline int mg_ct_find(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                             uint32_t now, uint32_t tcp_ms, uint32_t udp_ms)
{
    return mg_ct_find_v(mg_ct_view_of(ct), key, h, now, tcp_ms, udp_ms);
}

/* Promote the entry at slot to the protected segment (no-op when it already is). */
static inline void mg_ct_promote_v(struct mg_ct_view v, uint32_t slot)
{
    struct mg_ct *ct = v.ct;
    struct mg_ct_meta *m = &v.meta[slot / MG_CT_WAYS];
    int w = (int)(slot % MG_CT_WAYS);
    if (MG_LIKELY(m->tag[w] & MG_CT_TAG_PROTECTED))
        return;
    if (ct->n_protected >= ct->protected_max) {
        int lru = -1;
        uint32_t oldest = 0;
        for (int u = 0; u < MG_CT_WAYS; u++) {
            if (!(m->tag[u] & MG_CT_TAG_PROTECTED))
                continue;
            uint32_t age = m->last[w] - m->last[u];
            if (lru < 0 || age > oldest) {
                oldest = age;
                lru = u;
            }
        }
        if (lru < 0)
            return; /* quota reached, no protected way here to give up: stays in probation */
        m->tag[lru] &= ~MG_CT_TAG_PROTECTED;
        ct->n_protected--;
        ct->stats.demoted++;
    }
    m->tag[w] |= MG_CT_TAG_PROTECTED;
    ct->n_protected++;
    ct->stats.promoted++;
}

static inline void mg_ct_promote(struct mg_ct *ct, uint32_t slot)
{
    mg_ct_promote_v(mg_ct_view_of(ct), slot);
}

/* Rate guard: 1 if a new flow may be inserted now, else 0 (counted). */
static inline int mg_ct_admit(struct mg_ct *ct, uint32_t now)
{
    if (MG_LIKELY(ct->rate_per_s == 0))
        return 1;
    uint32_t el = now - ct->rate_last;
    ct->rate_last = now;
    uint64_t t = ct->tokens + (uint64_t)el * ct->rate_per_s;
    ct->tokens = t < ct->burst ? t : ct->burst;
    if (ct->tokens >= 1000) {
        ct->tokens -= 1000;
        return 1;
    }
    ct->stats.rate_guard_hits++;
    return 0;
}

/* Insert key (known absent) -> (backend, id) in probation.  Returns the slot or -1 (insert
 * failed).  Out of line: the rule (header comment) has five steps. */
int mg_ct_add(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint32_t now,
              uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id);

/* What a table needs and what the machine has (bytes), for a clear error before
 * allocating.  mode: MG_CT_PAGES_*; copies: how many such tables (workers) must fit. */
struct mg_ct_plan {
    uint64_t table_bytes;      /* the mapping of one table (rounded to the page size used) */
    uint64_t mem_available;    /* MemAvailable (UINT64_MAX if /proc/meminfo is unreadable) */
    uint64_t huge_free_bytes;  /* HugePages_Free x Hugepagesize */
    uint64_t huge_page_size;
    uint32_t capacity;         /* entries after rounding up */
    uint32_t mode;             /* the page mode that would be used */
    int32_t ok;                /* 1: fits; 0: does not fit (mg_ct_new would fail) */
    int32_t reserved;
};
/* 0, or -EINVAL for a bad capacity / mode. */
int mg_ct_plan(uint32_t capacity, uint32_t mode, uint32_t copies, struct mg_ct_plan *out);

/* Memory of a table of `capacity` entries (rounded up to a power of two, >= 8), header
 * included, before page rounding.  0 for a bad capacity. */
size_t mg_ct_bytes(uint32_t capacity);
/* Allocate / free.  NULL (errno EINVAL or ENOMEM) on a bad capacity (0 or >
 * MG_CT_MAX_CAPACITY) or a table that does not fit (mg_ct_plan) -- nothing is mapped. */
struct mg_ct *mg_ct_new(uint32_t capacity);
struct mg_ct *mg_ct_new_mode(uint32_t capacity, uint32_t mode);
/* Page mode used by mg_ct_new() (and so by mg_dp_new / mg_worker_new); default AUTO. */
int mg_ct_set_default_pages(uint32_t mode);
void mg_ct_free(struct mg_ct *ct);
void mg_ct_clear(struct mg_ct *ct);
uint32_t mg_ct_capacity(const struct mg_ct *ct);
uint32_t mg_ct_page_mode(const struct mg_ct *ct);
/* protected_pct: quota of the protected segment in percent of capacity (1..100);
 * new_flows_per_s: rate guard (0 = off).  -EINVAL on out-of-range values. */
int mg_ct_set_policy(struct mg_ct *ct, uint32_t protected_pct, uint32_t new_flows_per_s);
/* Out-of-line forms for tests: lookup returns the backend index or -1 (refreshes on hit,
 * promotes when `promote`); insert returns the slot or -1. */
int32_t mg_ct_lookup(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                     uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms);
int mg_ct_lookup_slot(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                      uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms, int promote);
int mg_ct_insert(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id);
int mg_ct_admit_at(struct mg_ct *ct, uint64_t now_ns);
/* Shared tables (issue 16.5).  The geometry fields (magic, version, ways, n_buckets, mask,
 * meta_off, entries_off, map_bytes) are written once by mg_ct_format and never again, so a
 * process killed at any point of an adoption leaves a table the next start can adopt.
 *
 * mg_ct_check: 0 if `hdr` (a copy of a file's first bytes, `have` of them) describes a
 * table of exactly `file_bytes`, else MG_CT_E_*.  Reads only. */
int mg_ct_check(const void *hdr, uint64_t have, uint64_t file_bytes);
/* Format `mem` (bytes long, all zero) as an empty table of `capacity` entries: NULL
 * (EINVAL) if bytes < mg_ct_bytes(capacity). */
struct mg_ct *mg_ct_format(void *mem, uint64_t bytes, uint32_t capacity, uint32_t page_mode);
/* mmap(MAP_SHARED) the whole of fd (`bytes` long).  adopt = 1: the mapped header must pass
 * mg_ct_check (else NULL, errno EPROTO, nothing left mapped), then n_used / n_protected are
 * recounted from the tags and the counters zeroed (a process killed mid-insert may leave
 * them off by one; its counts were already published).  adopt = 0: the file must be zero
 * (fresh, fallocated) and is formatted for `capacity`.  The table is freed by mg_ct_free
 * (munmap) like any other; the file stays. */
struct mg_ct *mg_ct_map_shared(int fd, uint64_t bytes, uint32_t capacity, int adopt);
/* n_used / n_protected from the tags: O(capacity / 8) metadata lines. */
void mg_ct_recount(struct mg_ct *ct);

/* Non-empty ways counted by scanning (tests check it equals n_used): O(capacity). */
uint32_t mg_ct_count(const struct mg_ct *ct);
/* Tag of a slot (tests, the reference comparison). */
uint32_t mg_ct_tag(const struct mg_ct *ct, uint32_t slot);

/* Census of a live table, read-only (change preview, maglev/control/preview.py): how many
 * live entries (tag set, idle below its timeout at now_ns) name each backend id.  `ids`:
 * n_ids backend ids in ascending order; counts[i] += entries naming ids[i] (the caller
 * zeroes counts; several tables can be summed).  Safe on a table another process writes
 * (a worker's /dev/shm table mapped PROT_READ): an entry refreshed after now_ns (age below
 * zero as a signed 32-bit number) is live; a slot is read as tag, last, key, backend id,
 * tag again, and kept only when both tag reads agree (PROTECTED bit aside) and the
 * signature of SipHash-1-3(k0, k1, key) -- the flow-hash secret of the run -- equals the
 * tag's, else counted as torn: a kept slot's key and backend id are one entry's (the
 * store/read orders and what a live census may still miscount: mg_ct_census.h; code in
 * src/mg_ct_census.c).  Entries changing during the scan are seen either way.
 * 0, or -EINVAL on a NULL pointer or unsorted ids. */
struct mg_ct_census {
    uint64_t live;     /* counted entries (named an id of the list or not) */
    uint64_t expired;  /* tag set, idle past its timeout: the data path would not use it */
    uint64_t torn;     /* changed while read, or key inconsistent with its tag */
    uint64_t unknown;  /* live entries naming an id not in the list */
};
int mg_ct_census(const struct mg_ct *ct, uint64_t k0, uint64_t k1, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, const uint64_t *ids, uint32_t n_ids,
                 uint64_t *counts, struct mg_ct_census *out);

/* Re-home the live entries of a previous run's table `src` into this run's tables
 * dst[0..n_dst-1] (src/mg_ct_rehome.c): each goes to the worker steering picks for its key
 * hashed with (k0, k1) -- reta[hash >> 56] when reta is not NULL, else (hash >> 32) % n_dst
 * --, a key without source port to every worker; backend identity, last-used tick and
 * segment kept; entries idle past their timeout at now_ns skipped.  Counts added to *st.
 * 0, or -EINVAL (NULL pointers, n_dst 0, a reta entry >= n_dst). */
struct mg_ct_rehome_stats {
    uint64_t live;       /* live entries read from src */
    uint64_t placed;     /* inserted into a dst table */
    uint64_t duplicates; /* key already in its dst table: the copy used last kept */
    uint64_t no_room;    /* the dst table had no way for it (a smaller capacity) */
    uint64_t expired;    /* idle past the timeout: skipped */
};
int mg_ct_rehome(const struct mg_ct *src, struct mg_ct *const *dst, uint32_t n_dst, uint64_t k0, uint64_t k1,
                 const uint8_t *reta, uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms,
                 struct mg_ct_rehome_stats *st);

#endif
