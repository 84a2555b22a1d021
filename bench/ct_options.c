/* Connection-table layout options, measured (bench/bench_conntrack.py builds and runs this).
 *
 *   ct_options LOG2_CAPACITY SEED
 *
 * Fills a table of 2^LOG2_CAPACITY entries with random flows up to 95% occupancy and
 * prints, per option and occupancy step (10%, 20%, ... 90%, 95%): cumulative insert
 * failures, ns per insert over the step, ns per lookup of a present flow at that
 * occupancy.  Options (the same 64-byte entries with the full 40-byte key everywhere):
 *
 *   w8       8 ways, one bucket per flow (the table before issue 16)
 *   w16      16 ways, one bucket (two metadata lines)
 *   w8stash  8 ways + a 64-entry victim stash searched linearly on every miss
 *   w8x2     8 ways, two buckets (primary, then alternate), no moves
 *   mg_ct    the real table (mg_conntrack.c): two buckets + one cuckoo move
 *
 * No eviction in any option (every flow is fresh): a failure is a flow that found no way.
 * Thread CPU ns (CLOCK_THREAD_CPUTIME_ID): still noisy on a shared machine (caches are
 * shared); failures are exact. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_conntrack.h"

#define STASH 64

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void key_of(uint64_t id, struct mg_flow_key *k)
{
    memset(k, 0, sizeof(*k));
    memcpy(k->src, &id, 8);
    k->proto = 6;
    k->family = 4;
}

struct sim {
    int ways, choices, stash;
    uint32_t nb, mask;
    uint32_t *sig;             /* nb * ways */
    struct mg_ct_entry *ents;  /* nb * ways */
    struct mg_ct_entry st[STASH];
    uint32_t st_sig[STASH];
    int n_st;
};

static uint32_t sim_alt(const struct sim *s, uint32_t b, uint32_t sig)
{
    return (b ^ (((sig * 0x9E3779B1u) >> 8) | 1u)) & s->mask;
}

static int sim_insert(struct sim *s, const struct mg_flow_key *k, uint64_t h)
{
    uint32_t sig = mg_ct_sig(h), b = (uint32_t)h & s->mask;
    for (int c = 0; c < s->choices; c++, b = sim_alt(s, b, sig)) {
        uint32_t *sg = &s->sig[(size_t)b * s->ways];
        for (int w = 0; w < s->ways; w++)
            if (!sg[w]) {
                sg[w] = sig;
                s->ents[(size_t)b * s->ways + w].key = *k;
                return 0;
            }
    }
    if (s->stash && s->n_st < STASH) {
        s->st_sig[s->n_st] = sig;
        s->st[s->n_st++].key = *k;
        return 0;
    }
    return -1;
}

static int sim_find(const struct sim *s, const struct mg_flow_key *k, uint64_t h)
{
    uint32_t sig = mg_ct_sig(h), b = (uint32_t)h & s->mask;
    for (int c = 0; c < s->choices; c++, b = sim_alt(s, b, sig)) {
        const uint32_t *sg = &s->sig[(size_t)b * s->ways];
        for (int w = 0; w < s->ways; w++)
            if (sg[w] == sig && !memcmp(&s->ents[(size_t)b * s->ways + w].key, k, sizeof(*k)))
                return 1;
    }
    for (int i = 0; i < s->n_st; i++)
        if (s->st_sig[i] == sig && !memcmp(&s->st[i].key, k, sizeof(*k)))
            return 1;
    return 0;
}

static const int STEPS[] = {10, 20, 30, 40, 50, 60, 70, 80, 90, 95};
#define N_STEPS (int)(sizeof(STEPS) / sizeof(STEPS[0]))

static void run(const char *name, struct sim *s, struct mg_ct *ct, uint32_t cap, uint64_t seed)
{
    struct mg_flow_key k;
    uint64_t fails = 0, id = 0, sink = 0, ev = 0;
    for (int i = 0; i < N_STEPS; i++) {
        uint64_t upto = (uint64_t)cap * STEPS[i] / 100, n = upto - id;
        double t0 = now_ns();
        for (; id < upto; id++) {
            uint64_t h = mix(id ^ seed);
            key_of(id, &k);
            int r = ct ? mg_ct_add(ct, &k, h, (uint32_t)i, 300000, 30000, 1, 1) : sim_insert(s, &k, h);
            fails += r < 0;
            if (ct) /* mg_ct takes a probation way when none is free: count it as a failure */
                fails += ct->stats.evictions - ev, ev = ct->stats.evictions;
        }
        double ins = (now_ns() - t0) / (double)(n ? n : 1);
        uint32_t nl = 200000;
        t0 = now_ns();
        for (uint32_t j = 0; j < nl; j++) {
            uint64_t q = mix(j * 7919u) % id;
            uint64_t h = mix(q ^ seed);
            key_of(q, &k);
            sink += ct ? (uint64_t)(mg_ct_find(ct, &k, h, (uint32_t)i, 300000, 30000) >= 0) : (uint64_t)sim_find(s, &k, h);
        }
        double look = (now_ns() - t0) / nl;
        printf("%s %d %llu %.1f %.1f %llu\n", name, STEPS[i], (unsigned long long)fails, ins, look,
               (unsigned long long)sink);
    }
}

static void run_sim(const char *name, int ways, int choices, int stash, uint32_t cap, uint64_t seed)
{
    struct sim s = {.ways = ways, .choices = choices, .stash = stash};
    s.nb = cap / (uint32_t)ways;
    s.mask = s.nb - 1;
    s.sig = calloc((size_t)cap, sizeof(uint32_t));
    s.ents = aligned_alloc(64, (size_t)cap * sizeof(struct mg_ct_entry));
    if (!s.sig || !s.ents)
        exit(2);
    memset(s.ents, 0, (size_t)cap * sizeof(struct mg_ct_entry));
    run(name, &s, NULL, cap, seed);
    free(s.sig);
    free(s.ents);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    uint32_t cap = 1u << atoi(argv[1]);
    uint64_t seed = strtoull(argv[2], NULL, 10);
    run_sim("w8", 8, 1, 0, cap, seed);
    run_sim("w16", 16, 1, 0, cap, seed);
    run_sim("w8stash", 8, 1, 1, cap, seed);
    run_sim("w8x2", 8, 2, 0, cap, seed);
    struct mg_ct *ct = mg_ct_new_mode(cap, MG_CT_PAGES_THP);
    if (!ct)
        return 2;
    /* fault the pages in (zeros over zeros), as the options' memset did for theirs */
    memset(mg_ct_meta_of(ct, 0), 0, (size_t)(cap / MG_CT_WAYS) * 64 + (size_t)cap * 64);
    run("mg_ct", NULL, ct, cap, seed);
    printf("moved %llu evictions %llu expired %llu used %u failed %llu\n", (unsigned long long)ct->stats.moved, (unsigned long long)ct->stats.evictions, (unsigned long long)ct->stats.expired, ct->n_used, (unsigned long long)ct->stats.insert_failed);
    mg_ct_free(ct);
    return 0;
}
