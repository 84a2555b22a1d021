/* Connection table: allocation, memory check, insert rule, out-of-line wrappers; design in
 * include/mg_conntrack.h. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "mg_conntrack.h"
#include "mg_hash.h"

#define SMALL_PAGE 4096u

static uint32_t default_mode = MG_CT_PAGES_AUTO;

static uint32_t round_cap(uint32_t capacity)
{
    uint32_t c = MG_CT_WAYS;
    while (c < capacity)
        c <<= 1;
    return c;
}

size_t mg_ct_bytes(uint32_t capacity)
{
    if (capacity == 0 || capacity > MG_CT_MAX_CAPACITY)
        return 0;
    uint32_t c = round_cap(capacity);
    return MG_CT_HDR_SIZE + (size_t)(c / MG_CT_WAYS) * sizeof(struct mg_ct_meta) +
           (size_t)c * sizeof(struct mg_ct_entry);
}

/* MemAvailable, HugePages_Free and Hugepagesize from /proc/meminfo, in bytes. */
static void meminfo(uint64_t *avail, uint64_t *huge_free, uint64_t *huge_size)
{
    *avail = UINT64_MAX;
    *huge_free = 0;
    *huge_size = 2u << 20;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return;
    char line[128];
    unsigned long long v;
    uint64_t free_pages = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &v) == 1)
            *avail = (uint64_t)v * 1024u;
        else if (sscanf(line, "HugePages_Free: %llu", &v) == 1)
            free_pages = v;
        else if (sscanf(line, "Hugepagesize: %llu kB", &v) == 1)
            *huge_size = (uint64_t)v * 1024u;
    }
    fclose(f);
    *huge_free = free_pages * *huge_size;
}

static uint64_t round_up(uint64_t n, uint64_t page) { return (n + page - 1) / page * page; }

int mg_ct_plan(uint32_t capacity, uint32_t mode, uint32_t copies, struct mg_ct_plan *out)
{
    size_t bytes = mg_ct_bytes(capacity);
    if (!bytes || mode > MG_CT_PAGES_SMALL || copies == 0 || !out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    meminfo(&out->mem_available, &out->huge_free_bytes, &out->huge_page_size);
    out->capacity = round_cap(capacity);
    uint64_t huge = round_up(bytes, out->huge_page_size);
    if (mode == MG_CT_PAGES_AUTO)
        mode = out->huge_free_bytes >= huge * copies ? MG_CT_PAGES_HUGETLB : MG_CT_PAGES_THP;
    out->mode = mode;
    if (mode == MG_CT_PAGES_HUGETLB) {
        out->table_bytes = huge;
        out->ok = out->huge_free_bytes / copies >= huge;
    } else {
        out->table_bytes = round_up(bytes, SMALL_PAGE);
        out->ok = out->mem_available / copies >= out->table_bytes;
    }
    return 0;
}

int mg_ct_set_default_pages(uint32_t mode)
{
    if (mode > MG_CT_PAGES_SMALL)
        return -EINVAL;
    default_mode = mode;
    return 0;
}

struct mg_ct *mg_ct_new(uint32_t capacity) { return mg_ct_new_mode(capacity, default_mode); }

struct mg_ct *mg_ct_new_mode(uint32_t capacity, uint32_t mode)
{
    struct mg_ct_plan plan;
    if (mg_ct_plan(capacity, mode, 1, &plan) < 0) {
        errno = EINVAL;
        return NULL;
    }
    if (!plan.ok) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = MAP_FAILED;
#ifdef MAP_HUGETLB
    if (plan.mode == MG_CT_PAGES_HUGETLB) {
        p = mmap(NULL, plan.table_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (p == MAP_FAILED && mode == MG_CT_PAGES_HUGETLB)
            return NULL; /* required and refused (another process took the pages): errno set */
    }
#endif
    if (p == MAP_FAILED) {
        if (plan.mode == MG_CT_PAGES_HUGETLB) { /* auto: fall back to transparent huge pages */
            plan.mode = MG_CT_PAGES_THP;
            plan.table_bytes = round_up(mg_ct_bytes(capacity), SMALL_PAGE);
        }
        p = mmap(NULL, plan.table_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
        if (p == MAP_FAILED)
            return NULL;
#ifdef MADV_HUGEPAGE
        /* advice only: a kernel without THP leaves 4 KiB pages, which still work */
        if (plan.mode == MG_CT_PAGES_THP && madvise(p, plan.table_bytes, MADV_HUGEPAGE) != 0)
            plan.mode = MG_CT_PAGES_SMALL;
#endif
    }
    /* Anonymous pages are zero: empty tags, zero stats, no memset of the table. */
    return mg_ct_format(p, plan.table_bytes, capacity, plan.mode);
}

struct mg_ct *mg_ct_format(void *mem, uint64_t bytes, uint32_t capacity, uint32_t page_mode)
{
    size_t need = mg_ct_bytes(capacity);
    if (!mem || !need || bytes < need) {
        errno = EINVAL;
        return NULL;
    }
    uint32_t cap = round_cap(capacity);
    struct mg_ct *ct = mem;
    ct->version = MG_CT_LAYOUT_VERSION;
    ct->ways = MG_CT_WAYS;
    ct->n_buckets = cap / MG_CT_WAYS;
    ct->mask = ct->n_buckets - 1;
    ct->meta_off = MG_CT_HDR_SIZE;
    ct->entries_off = MG_CT_HDR_SIZE + (uint64_t)ct->n_buckets * sizeof(struct mg_ct_meta);
    ct->map_bytes = bytes;
    ct->page_mode = page_mode;
    mg_ct_set_policy(ct, MG_CT_DEFAULT_PROTECTED_PCT, 0);
    /* the magic last: a reader of a shared file never sees a magic over a half header */
    __atomic_store_n(&ct->magic, MG_CT_MAGIC, __ATOMIC_RELEASE);
    return ct;
}

int mg_ct_check(const void *hdr, uint64_t have, uint64_t file_bytes)
{
    if (!hdr || have < MG_CT_HDR_SIZE || file_bytes < MG_CT_HDR_SIZE)
        return MG_CT_E_TRUNCATED;
    struct mg_ct h;
    memcpy(&h, hdr, sizeof h);
    if (h.magic != MG_CT_MAGIC)
        return MG_CT_E_MAGIC;
    if (h.version != MG_CT_LAYOUT_VERSION)
        return MG_CT_E_VERSION;
    uint64_t cap = (uint64_t)h.n_buckets * MG_CT_WAYS;
    if (h.ways != MG_CT_WAYS || h.n_buckets == 0 || (h.n_buckets & (h.n_buckets - 1)) != 0 ||
        cap > MG_CT_MAX_CAPACITY || h.mask != h.n_buckets - 1 || h.meta_off != MG_CT_HDR_SIZE ||
        h.entries_off != MG_CT_HDR_SIZE + (uint64_t)h.n_buckets * sizeof(struct mg_ct_meta) ||
        h.map_bytes != round_up(mg_ct_bytes((uint32_t)cap), SMALL_PAGE) ||
        h.page_mode != MG_CT_PAGES_SHM)
        return MG_CT_E_GEOMETRY;
    if (h.map_bytes != file_bytes)
        return MG_CT_E_SIZE;
    return 0;
}

void mg_ct_recount(struct mg_ct *ct)
{
    uint32_t used = 0, prot = 0;
    for (uint32_t b = 0; b < ct->n_buckets; b++) {
        const struct mg_ct_meta *m = mg_ct_meta_of(ct, b);
        for (int w = 0; w < MG_CT_WAYS; w++) {
            used += m->tag[w] != 0;
            prot += (m->tag[w] & MG_CT_TAG_PROTECTED) != 0;
        }
    }
    ct->n_used = used;
    ct->n_protected = prot;
}

struct mg_ct *mg_ct_map_shared(int fd, uint64_t bytes, uint32_t capacity, int adopt)
{
    if (fd < 0 || bytes < MG_CT_HDR_SIZE || bytes > SIZE_MAX) {
        errno = EINVAL;
        return NULL;
    }
    void *p = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, (size_t)bytes, MADV_HUGEPAGE); /* advice: tmpfs with huge=advise */
#endif
    struct mg_ct *ct = p;
    if (!adopt) {
        if (!mg_ct_format(p, bytes, capacity, MG_CT_PAGES_SHM)) {
            munmap(p, (size_t)bytes);
            errno = EINVAL;
            return NULL;
        }
        return ct;
    }
    /* checked again in the mapping (the file may have changed since the caller's read) */
    if (mg_ct_check(p, bytes, bytes) != 0) {
        munmap(p, (size_t)bytes);
        errno = EPROTO;
        return NULL;
    }
    /* Only state words change from here on, never the geometry: a kill at any point
     * leaves a table the next start can adopt. */
    mg_ct_recount(ct);
    memset(&ct->stats, 0, sizeof ct->stats);
    ct->adoptions++;
    return ct;
}

void mg_ct_free(struct mg_ct *ct)
{
    if (ct)
        munmap(ct, ct->map_bytes);
}

void mg_ct_clear(struct mg_ct *ct)
{
    memset(mg_ct_meta_of(ct, 0), 0, (size_t)ct->n_buckets * sizeof(struct mg_ct_meta));
    memset(mg_ct_entry_at(ct, 0), 0, (size_t)ct->n_buckets * MG_CT_WAYS * sizeof(struct mg_ct_entry));
    memset(&ct->stats, 0, sizeof(ct->stats));
    ct->n_used = ct->n_protected = 0;
    ct->tokens = ct->burst;
}

uint32_t mg_ct_capacity(const struct mg_ct *ct) { return ct->n_buckets * MG_CT_WAYS; }
uint32_t mg_ct_page_mode(const struct mg_ct *ct) { return ct->page_mode; }

int mg_ct_set_policy(struct mg_ct *ct, uint32_t protected_pct, uint32_t new_flows_per_s)
{
    if (!ct || protected_pct < 1 || protected_pct > 100 || new_flows_per_s > 1000000000u)
        return -EINVAL;
    ct->protected_max = (uint32_t)((uint64_t)mg_ct_capacity(ct) * protected_pct / 100);
    ct->rate_per_s = new_flows_per_s;
    uint64_t burst = new_flows_per_s / 10;
    ct->burst = (burst ? burst : 1) * 1000u;
    ct->tokens = ct->burst;
    ct->rate_last = 0;
    return 0;
}

static inline void put(struct mg_ct *ct, uint32_t b, int w, const struct mg_flow_key *key,
                       uint32_t sig, uint32_t now, int32_t backend, uint64_t backend_id)
{
    struct mg_ct_meta *m = mg_ct_meta_of(ct, b);
    m->tag[w] = sig | (key->proto == 6 ? MG_CT_TAG_TCP : 0);
    m->last[w] = now;
    struct mg_ct_entry *e = mg_ct_entry_at(ct, b * MG_CT_WAYS + (uint32_t)w);
    /* tag | backend | key, for a live census (include/mg_ct_census.h); on x86 these
     * fences only keep the compiler from reordering the stores: no instruction */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->backend = backend;
    e->backend_id = backend_id;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->key = *key;
    ct->stats.inserts++;
}

static inline int first_empty(const struct mg_ct_meta *m)
{
    for (int w = 0; w < MG_CT_WAYS; w++)
        if (m->tag[w] == 0)
            return w;
    return -1;
}

int mg_ct_add(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint32_t now,
              uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id)
{
    uint32_t sig = mg_ct_sig(h);
    uint32_t bk[2] = {(uint32_t)h & ct->mask, 0};
    bk[1] = mg_ct_alt(ct, bk[0], sig);
    int nb = bk[1] == bk[0] ? 1 : 2;
    struct mg_ct_meta *m[2] = {mg_ct_meta_of(ct, bk[0]), mg_ct_meta_of(ct, bk[1])};
    /* One pass over b1 then b2 serves steps 1, 2 and 4: the first empty way is taken at
     * once; the first expired way and the LRU probation way are remembered. */
    int xi = -1, xw = 0, vi = -1, vw = 0;
    uint32_t oldest = 0;
    for (int i = 0; i < nb; i++) {
        for (int w = 0; w < MG_CT_WAYS; w++) {
            uint32_t tag = m[i]->tag[w];
            if (tag == 0) { /* 1. an empty way */
                ct->n_used++;
                put(ct, bk[i], w, key, sig, now, backend, backend_id);
                return (int)(bk[i] * MG_CT_WAYS + (uint32_t)w);
            }
            uint32_t age = now - m[i]->last[w];
            if (xi < 0 && age >= mg_ct_tag_timeout(tag, tcp_ms, udp_ms)) {
                xi = i;
                xw = w;
            }
            if (!(tag & MG_CT_TAG_PROTECTED) && (vi < 0 || age > oldest)) {
                oldest = age;
                vi = i;
                vw = w;
            }
        }
    }
    if (xi >= 0) { /* 2. a way idle past its timeout */
        if (m[xi]->tag[xw] & MG_CT_TAG_PROTECTED)
            ct->n_protected--;
        ct->stats.expired++;
        put(ct, bk[xi], xw, key, sig, now, backend, backend_id);
        return (int)(bk[xi] * MG_CT_WAYS + (uint32_t)xw);
    }
    /* 3. a cuckoo move of one entry to its alternate bucket */
    uint32_t cap = mg_ct_capacity(ct);
    if (nb == 2 && ct->n_used < cap - cap / MG_CT_MOVE_RESERVE) {
        for (int i = 0; i < nb; i++) {
            for (int w = 0; w < MG_CT_WAYS; w++) {
                uint32_t tag = m[i]->tag[w];
                uint32_t a = mg_ct_alt(ct, bk[i], tag & MG_CT_SIG_MASK);
                struct mg_ct_meta *ma = mg_ct_meta_of(ct, a);
                int e = a == bk[i] ? -1 : first_empty(ma);
                if (e < 0)
                    continue;
                ma->tag[e] = tag;
                ma->last[e] = m[i]->last[w];
                struct mg_ct_entry *to = mg_ct_entry_at(ct, a * MG_CT_WAYS + (uint32_t)e);
                const struct mg_ct_entry *from = mg_ct_entry_at(ct, bk[i] * MG_CT_WAYS + (uint32_t)w);
                __atomic_thread_fence(__ATOMIC_RELEASE); /* as put(): backend, then key */
                memcpy((char *)to + sizeof to->key, (const char *)from + sizeof from->key,
                       sizeof *to - sizeof to->key);
                __atomic_thread_fence(__ATOMIC_RELEASE);
                to->key = from->key;
                ct->stats.moved++;
                ct->n_used++; /* the moved entry keeps its tag (and segment) */
                put(ct, bk[i], w, key, sig, now, backend, backend_id);
                return (int)(bk[i] * MG_CT_WAYS + (uint32_t)w);
            }
        }
    }
    /* 4. the least recently used probation way (found above) */
    if (vi < 0) { /* 5. every way protected and alive */
        ct->stats.insert_failed++;
        return -1;
    }
    ct->stats.evictions++;
    put(ct, bk[vi], vw, key, sig, now, backend, backend_id);
    return (int)(bk[vi] * MG_CT_WAYS + (uint32_t)vw);
}

int32_t mg_ct_lookup(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                     uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms)
{
    int s = mg_ct_find(ct, key, h, mg_ct_ticks(now_ns), tcp_ms, udp_ms);
    return s < 0 ? -1 : mg_ct_entry_at(ct, (uint32_t)s)->backend;
}

int mg_ct_lookup_slot(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                      uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms, int promote)
{
    int s = mg_ct_find(ct, key, h, mg_ct_ticks(now_ns), tcp_ms, udp_ms);
    if (s >= 0 && promote)
        mg_ct_promote(ct, (uint32_t)s);
    return s;
}

int mg_ct_insert(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id)
{
    return mg_ct_add(ct, key, h, mg_ct_ticks(now_ns), tcp_ms, udp_ms, backend, backend_id);
}

int mg_ct_admit_at(struct mg_ct *ct, uint64_t now_ns) { return mg_ct_admit(ct, mg_ct_ticks(now_ns)); }

uint32_t mg_ct_count(const struct mg_ct *ct)
{
    uint32_t n = 0;
    for (uint32_t b = 0; b < ct->n_buckets; b++)
        for (int w = 0; w < MG_CT_WAYS; w++)
            n += mg_ct_meta_of(ct, b)->tag[w] != 0;
    return n;
}

uint32_t mg_ct_tag(const struct mg_ct *ct, uint32_t slot)
{
    return slot < mg_ct_capacity(ct) ? mg_ct_meta_of(ct, slot / MG_CT_WAYS)->tag[slot % MG_CT_WAYS] : 0;
}
