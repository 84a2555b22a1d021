/* Data-path benchmark loops (see mg_dp_bench.h).  mg_dp_burst checks the rest of `io`. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_dp_bench.h"
#include "mg_hash.h"
#include "mg_parse.h"

/* Thread CPU time, not wall time: on a shared machine the wall clock also counts the time
 * other processes held the core. */
static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Bytes of each frame saved and restored between rounds: metadata, headroom and the first
 * 128 bytes of the packet (encapsulation and ICMP rewrite only in front of the L3 header
 * and the L2 header itself). */
#define BENCH_SAVE (MG_FRAME_META_SIZE + MG_FRAME_HEADROOM + 128)

int mg_dp_bench(struct mg_dp *dp, const void *tables, struct mg_dp_io *io, uint32_t rounds,
                uint64_t n_flows, uint64_t first_flow, uint64_t now_ns, uint64_t step_ns,
                uint64_t *ns)
{
    return mg_dp_bench_opts(dp, tables, io, rounds, n_flows, first_flow, now_ns, step_ns, 0, ns);
}

int mg_dp_bench_opts(struct mg_dp *dp, const void *tables, struct mg_dp_io *io, uint32_t rounds,
                     uint64_t n_flows, uint64_t first_flow, uint64_t now_ns, uint64_t step_ns,
                     uint32_t opts, uint64_t *ns)
{
    if (!dp || !io || !io->pool || !io->frames || io->n == 0 || io->n > MG_BURST_MAX || !ns ||
        (opts & ~MG_DP_BENCH_HASHED) || ((opts & MG_DP_BENCH_HASHED) && !tables))
        return -EINVAL;
    uint32_t n = io->n;
    uint8_t *save = malloc((size_t)n * BENCH_SAVE);
    uint16_t l4[MG_BURST_MAX];
    if (!save)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *f = io->pool + (size_t)io->frames[i] * MG_FRAME_SIZE;
        struct mg_parsed p;
        mg_parse(mg_frame_data(io->pool, io->frames[i]), mg_frame_meta(io->pool, io->frames[i])->len, &p);
        l4[i] = p.l4_off;
        memcpy(save + (size_t)i * BENCH_SAVE, f, BENCH_SAVE);
    }
    uint64_t total = 0, flow = first_flow;
    for (uint32_t r = 0; r < rounds; r++) {
        for (uint32_t i = 0; i < n; i++) {
            uint8_t *f = io->pool + (size_t)io->frames[i] * MG_FRAME_SIZE;
            memcpy(f, save + (size_t)i * BENCH_SAVE, BENCH_SAVE);
            if (n_flows && l4[i]) {
                /* flow id -> (sport, dport), big-endian into the L4 header */
                uint64_t id = flow++ % n_flows;
                uint8_t *l4h = f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM + l4[i];
                l4h[0] = (uint8_t)(id >> 8);
                l4h[1] = (uint8_t)id;
                l4h[2] = (uint8_t)(id >> 24);
                l4h[3] = (uint8_t)(id >> 16);
            }
            if (opts & MG_DP_BENCH_HASHED) { /* what steering does (mg_steer.c), untimed */
                struct mg_frame_meta *m = mg_frame_meta(io->pool, io->frames[i]);
                struct mg_parsed p;
                if (mg_parse(mg_frame_data(io->pool, io->frames[i]), m->len, &p) == MG_OK) {
                    const struct mg_tables_header *h = mg_tables_header_of(tables);
                    uint64_t fh = mg_siphash13_40(h->hash_k0, h->hash_k1, &p.key);
                    m->flow_hash = (uint32_t)fh;
                    m->flow_hash_hi = (uint32_t)(fh >> 32);
                    m->flags |= MG_FRAME_F_HASHED;
                }
            }
        }
        uint64_t t0 = mono_ns();
        int rc = mg_dp_burst(dp, tables, now_ns, io);
        total += mono_ns() - t0;
        if (rc < 0) {
            free(save);
            return rc;
        }
        now_ns += step_ns;
    }
    for (uint32_t i = 0; i < n; i++)
        memcpy(io->pool + (size_t)io->frames[i] * MG_FRAME_SIZE, save + (size_t)i * BENCH_SAVE,
               BENCH_SAVE);
    free(save);
    *ns = total;
    return (int)rounds;
}

uint64_t mg_dp_calibrate(uint32_t iters)
{
    struct mg_flow_key k;
    memset(&k, 0, sizeof(k));
    uint64_t acc = 0, t0 = mono_ns();
    for (uint32_t i = 0; i < iters; i++) {
        k.sport = (uint16_t)i;
        acc += mg_siphash13(1, 2, (const uint8_t *)&k, sizeof(k));
    }
    uint64_t t = mono_ns() - t0;
    __asm__ volatile("" : : "r"(acc)); /* keep the loop */
    return t;
}

int mg_encap_bench(uint8_t *pool, uint32_t n, uint32_t l3_off, uint8_t inner_family,
                   const struct mg_encap_params *params, uint32_t rounds)
{
    if (!pool || n == 0 || n > MG_BURST_MAX)
        return -EINVAL;
    if ((uint64_t)n * rounds > 0x7fffffff)
        return -E2BIG;
    uint32_t off[MG_BURST_MAX], len[MG_BURST_MAX];
    for (uint32_t i = 0; i < n; i++) {
        off[i] = mg_frame_meta(pool, i)->data_off;
        len[i] = mg_frame_meta(pool, i)->len;
    }
    int done = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        for (uint32_t i = 0; i < n; i++) {
            struct mg_frame_meta *m = mg_frame_meta(pool, i);
            m->data_off = off[i];
            m->len = len[i];
            int rc = mg_encap(pool, i, l3_off, inner_family, 0x9e3779b9u * i, params);
            if (rc < 0)
                return rc;
            done++;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        mg_frame_meta(pool, i)->data_off = off[i];
        mg_frame_meta(pool, i)->len = len[i];
    }
    return done;
}
