/* Connection table allocation and out-of-line wrappers; design in include/mg_conntrack.h. */
#include <stdlib.h>
#include <sys/mman.h>

#include "mg_conntrack.h"

/* Large tables are aligned to 2 MiB and marked for transparent huge pages: at 1M entries a
 * lookup touches two random lines of a 151 MB table, and with 4 KiB pages each would also
 * miss the TLB (a page walk that itself misses the cache). */
#define HUGE_PAGE (2u << 20)

static void *table_alloc(size_t bytes)
{
    if (bytes < HUGE_PAGE)
        return aligned_alloc(MG_CACHE_LINE, bytes);
    size_t rounded = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    void *p = aligned_alloc(HUGE_PAGE, rounded);
#ifdef MADV_HUGEPAGE
    if (p)
        madvise(p, rounded, MADV_HUGEPAGE); /* advice only: failure is harmless */
#endif
    return p;
}

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
    return (size_t)(c / MG_CT_WAYS) * sizeof(struct mg_ct_meta) +
           (size_t)c * sizeof(struct mg_ct_entry);
}

struct mg_ct *mg_ct_new(uint32_t capacity)
{
    if (capacity == 0 || capacity > MG_CT_MAX_CAPACITY)
        return NULL;
    uint32_t c = round_cap(capacity);
    struct mg_ct *ct = calloc(1, sizeof(*ct));
    if (!ct)
        return NULL;
    ct->n_buckets = c / MG_CT_WAYS;
    ct->mask = ct->n_buckets - 1;
    ct->meta = table_alloc((size_t)ct->n_buckets * sizeof(struct mg_ct_meta));
    ct->entries = table_alloc((size_t)c * sizeof(struct mg_ct_entry));
    if (!ct->meta || !ct->entries) {
        mg_ct_free(ct);
        return NULL;
    }
    mg_ct_clear(ct);
    return ct;
}

void mg_ct_free(struct mg_ct *ct)
{
    if (!ct)
        return;
    free(ct->meta);
    free(ct->entries);
    free(ct);
}

void mg_ct_clear(struct mg_ct *ct)
{
    memset(ct->meta, 0, (size_t)ct->n_buckets * sizeof(struct mg_ct_meta));
    memset(ct->entries, 0, (size_t)ct->n_buckets * MG_CT_WAYS * sizeof(struct mg_ct_entry));
    memset(&ct->stats, 0, sizeof(ct->stats));
}

uint32_t mg_ct_capacity(const struct mg_ct *ct) { return ct->n_buckets * MG_CT_WAYS; }

int32_t mg_ct_lookup(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h,
                     uint64_t now_ns, uint32_t tcp_ms, uint32_t udp_ms)
{
    int w = mg_ct_find(ct, key, h, mg_ct_ticks(now_ns), tcp_ms, udp_ms);
    return w < 0 ? -1 : mg_ct_entry_at(ct, h, w)->backend;
}

int mg_ct_insert(struct mg_ct *ct, const struct mg_flow_key *key, uint64_t h, uint64_t now_ns,
                 uint32_t tcp_ms, uint32_t udp_ms, int32_t backend, uint64_t backend_id)
{
    return mg_ct_add(ct, key, h, mg_ct_ticks(now_ns), tcp_ms, udp_ms, backend, backend_id);
}

uint32_t mg_ct_count(const struct mg_ct *ct)
{
    uint32_t n = 0;
    for (uint32_t b = 0; b < ct->n_buckets; b++)
        for (int w = 0; w < MG_CT_WAYS; w++)
            n += ct->meta[b].sig[w] != 0;
    return n;
}
