/* A live census against a writer (tests/rings/test_census_race.py): one thread inserts
 * flows into a small connection table as fast as it can (every slot is rewritten again
 * and again: evictions, cuckoo moves, promotions), each flow with a backend id that is a
 * function of its key; the other reads every slot as mg_ct_census does
 * (mg_ct_census_slot) and checks each accepted slot's (key, backend id) pair.  A pair of
 * one entry's key and another entry's id is an error.
 *
 *   census_race INSERTS [CAPACITY [slow|slow-keyfirst]]
 *       ->  "checked N torn T census S errors E"
 *
 * The real writer is mg_ct_insert (put()).  On x86 a slot's entry is one cache line and
 * put()'s stores follow each other within nanoseconds, so a mixed pair is rare even with
 * the wrong order; "slow" rewrites slots in put()'s order with pauses between the stores
 * (a preempted worker) and must give no error either, while "slow-keyfirst" (the key
 * before the backend id, put()'s order before 2026-12-07) must give errors: the harness's
 * proof that it catches a wrong order.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_conntrack.h"
#include "mg_ct_census.h"
#include "mg_hash.h"

#define NKEYS 4096u
#define K0 0x0706050403020100ull
#define K1 0x0f0e0d0c0b0a0908ull
#define NOW_NS 1000000000000ull
#define TIMEOUT_MS 600000u

static struct mg_ct *ct;
static volatile int done;
static uint64_t inserts;

static uint64_t id_of(uint32_t idx) { return 1000 + (uint64_t)(idx * 2654435761u % 13u); }

static void key_of(uint32_t idx, struct mg_flow_key *k)
{
    memset(k, 0, sizeof *k);
    k->src[0] = 198, k->src[1] = 18, k->src[2] = (uint8_t)(idx >> 8), k->src[3] = (uint8_t)idx;
    k->dst[0] = 203, k->dst[1] = 0, k->dst[2] = 113, k->dst[3] = 10;
    k->sport = (uint16_t)(10000 + idx);
    k->dport = 80;
    k->proto = 6;
    k->family = 4;
}

/* A slow writer (a worker preempted between its stores, made likely): rewrites random
 * slots in put()'s order ("slow") or with the key before the backend ("slow-keyfirst"),
 * spinning between the groups of stores. */
static int slow_mode; /* 1 = put()'s order, 2 = key first */

static void spin(void)
{
    for (volatile int i = 0; i < 300; i++)
        ;
}

static void slow_put(uint32_t slot, uint32_t idx)
{
    struct mg_flow_key k;
    key_of(idx, &k);
    uint64_t h = mg_siphash13(K0, K1, (const uint8_t *)&k, sizeof k);
    struct mg_ct_meta *m = mg_ct_meta_of(ct, slot / MG_CT_WAYS);
    struct mg_ct_entry *e = mg_ct_entry_at(ct, slot);
    int w = (int)(slot % MG_CT_WAYS);
    __atomic_store_n(&m->tag[w], mg_ct_sig(h) | MG_CT_TAG_TCP, __ATOMIC_RELAXED);
    __atomic_store_n(&m->last[w], mg_ct_ticks(NOW_NS), __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    spin();
    uint64_t kw[5];
    memcpy(kw, &k, sizeof kw);
    uint64_t *dst = (uint64_t *)(void *)&e->key;
    if (slow_mode == 2)
        for (int i = 0; i < 5; i++)
            __atomic_store_n(&dst[i], kw[i], __ATOMIC_RELAXED);
    else
        __atomic_store_n(&e->backend_id, id_of(idx), __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    spin();
    if (slow_mode == 2)
        __atomic_store_n(&e->backend_id, id_of(idx), __ATOMIC_RELAXED);
    else
        for (int i = 0; i < 5; i++)
            __atomic_store_n(&dst[i], kw[i], __ATOMIC_RELAXED);
}

static void *writer(void *arg)
{
    uint64_t n = *(uint64_t *)arg, x = 0x9E3779B97F4A7C15ull;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint32_t idx = (uint32_t)(x % NKEYS);
        if (slow_mode) {
            slow_put((uint32_t)(x >> 32) % mg_ct_capacity(ct), idx);
            inserts++;
            continue;
        }
        struct mg_flow_key k;
        key_of(idx, &k);
        uint64_t h = mg_siphash13(K0, K1, (const uint8_t *)&k, sizeof k);
        if (i % 4 == 3) /* a later packet of a flow: promote it (rewrites the tag's bit) */
            mg_ct_lookup_slot(ct, &k, h, NOW_NS, TIMEOUT_MS, TIMEOUT_MS, 1);
        else
            mg_ct_insert(ct, &k, h, NOW_NS, TIMEOUT_MS, TIMEOUT_MS, (int32_t)(idx % 13), id_of(idx));
        inserts++;
    }
    __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    uint32_t cap = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 64;
    ct = mg_ct_new_mode(cap, MG_CT_PAGES_SMALL);
    if (!ct || mg_ct_set_policy(ct, 25, 0) != 0) {
        perror("mg_ct_new");
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "slow") == 0)
            slow_mode = 1;
        else if (strcmp(argv[i], "slow-keyfirst") == 0)
            slow_mode = 2;
    }
    pthread_t t;
    pthread_create(&t, NULL, writer, &n);
    uint64_t checked = 0, torn = 0, errors = 0, census = 0;
    const uint32_t now = mg_ct_ticks(NOW_NS);
    while (!__atomic_load_n(&done, __ATOMIC_ACQUIRE)) {
        for (uint32_t b = 0; b < ct->n_buckets; b++) {
            for (int w = 0; w < MG_CT_WAYS; w++) {
                struct mg_flow_key k, want;
                uint64_t id;
                int r = mg_ct_census_slot(ct, b, w, K0, K1, now, TIMEOUT_MS, TIMEOUT_MS, &k, &id);
                if (r == MG_CT_SLOT_TORN)
                    torn++;
                if (r != MG_CT_SLOT_LIVE)
                    continue;
                checked++;
                uint32_t idx = (uint32_t)(k.sport - 10000u);
                key_of(idx, &want);
                if (idx >= NKEYS || memcmp(&k, &want, sizeof k) != 0 || id != id_of(idx)) {
                    if (errors < 5)
                        fprintf(stderr, "slot %u/%d: key of flow %u with backend id %llu (want %llu)\n", b, w,
                                idx, (unsigned long long)id, (unsigned long long)id_of(idx));
                    errors++;
                }
            }
        }
        /* the whole census too: it must keep running and counting */
        uint64_t ids[13], counts[13] = {0};
        for (int i = 0; i < 13; i++)
            ids[i] = 1000 + (uint64_t)i;
        struct mg_ct_census c = {0};
        if (mg_ct_census(ct, K0, K1, NOW_NS, TIMEOUT_MS, TIMEOUT_MS, ids, 13, counts, &c) != 0 || c.unknown != 0)
            errors++;
        census++;
    }
    pthread_join(t, NULL);
    printf("inserts %llu moved %llu evictions %llu\n", (unsigned long long)inserts,
           (unsigned long long)ct->stats.moved, (unsigned long long)ct->stats.evictions);
    printf("checked %llu torn %llu census %llu errors %llu\n", (unsigned long long)checked,
           (unsigned long long)torn, (unsigned long long)census, (unsigned long long)errors);
    mg_ct_free(ct);
    return errors ? 1 : 0;
}
