/* Instruction counts of the burst kernel under callgrind (bench/callgrind_dp.py builds and
 * runs this).  Unlike ns, instruction counts do not depend on the load of the shared
 * machine, so they compare two versions of the kernel exactly.
 *
 *   callgrind_dp TABLES PACKET SCENARIO ROUNDS [BURST]
 *
 * SCENARIO: "est1" (one flow), "est10k" (10k established flows), "new" (every packet a new
 * flow), "est10kh" (est10k with the frames hashed by steering, MG_FRAME_F_HASHED: the
 * pipeline's worker).  Warm-up bursts run with collection off; only mg_dp_burst inside the measured
 * mg_dp_bench() call is collected (callgrind --instr-atstart=no --collect-atstart=no
 * --toggle-collect=mg_dp_burst). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <valgrind/callgrind.h>

#include "mg_dp_bench.h"

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = aligned_alloc(64, ((size_t)n + 63) & ~(size_t)63);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s TABLES PACKET est1|est10k|est10kh|new ROUNDS [BURST]\n", argv[0]);
        return 2;
    }
    size_t tlen, plen;
    uint8_t *tables = slurp(argv[1], &tlen), *pkt = slurp(argv[2], &plen);
    uint32_t rounds = (uint32_t)atoi(argv[4]);
    if (!tables || !pkt || mg_tables_validate(tables, tlen) != 0 || rounds == 0)
        return 2;
    const struct mg_tables_header *h = (const void *)tables;
    struct mg_dp *dp = mg_dp_new(65536, 0, h->hash_k0, h->hash_k1, 0);
    /* BURST (default MG_BURST_MAX): small bursts show the kernel's per-burst fixed costs */
    const uint32_t N = argc == 6 ? (uint32_t)atoi(argv[5]) : MG_BURST_MAX;
    if (N == 0 || N > MG_BURST_MAX)
        return 2;
    uint8_t *pool = aligned_alloc(64, (size_t)N * MG_FRAME_SIZE);
    static uint32_t frames[MG_BURST_MAX], tx[MG_BURST_MAX + MG_DP_DRAIN_MAX],
        drop[MG_BURST_MAX + MG_DP_DRAIN_MAX];
    if (!dp || !pool)
        return 2;
    memset(pool, 0, (size_t)N * MG_FRAME_SIZE);
    for (uint32_t i = 0; i < N; i++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, i);
        m->len = (uint16_t)plen;
        m->data_off = MG_FRAME_HEADROOM;
        m->backend_index = -1;
        memcpy(mg_frame_data(pool, i), pkt, plen);
        frames[i] = i;
    }
    struct mg_dp_io io = {.pool = pool, .frames = frames, .n = N, .tx = tx,
                          .tx_cap = N + MG_DP_DRAIN_MAX, .drop = drop,
                          .drop_cap = N + MG_DP_DRAIN_MAX};
    uint64_t ns, now = 1000000000ull, flows, first = 0, step = 0;
    uint32_t opts = 0;
    if (strcmp(argv[3], "est1") == 0)
        flows = 1;
    else if (strcmp(argv[3], "est10k") == 0)
        flows = 10000;
    else if (strcmp(argv[3], "est10kh") == 0)
        flows = 10000, opts = MG_DP_BENCH_HASHED;
    else if (strcmp(argv[3], "new") == 0)
        flows = 1ull << 32, first = 1u << 20, step = 1000000;
    else
        return 2;
    if (step == 0) /* insert every flow once, not collected */
        mg_dp_bench(dp, tables, &io, (uint32_t)(flows / N + 2), flows, 0, now, 0, &ns);
    else
        mg_dp_bench(dp, tables, &io, 8, flows, 1, now, step, &ns);
    now += 10 * step;
    CALLGRIND_START_INSTRUMENTATION;
    int rc = mg_dp_bench_opts(dp, tables, &io, rounds, flows, first + 7919, now, step, opts, &ns);
    CALLGRIND_STOP_INSTRUMENTATION;
    if (rc < 0 || io.n_tx != N)
        return 1;
    printf("%s: %u bursts of %u, tx %u\n", argv[3], rounds, N, io.n_tx);
    mg_dp_free(dp);
    return 0;
}
