/* libFuzzer harness for the data path's C code: mg_parse on the raw input, then the whole
 * burst kernel (parse, VIP match, connection table, fragment table, Maglev, PMTU/ICMP,
 * encapsulation) on a burst made from the input.
 *
 * Input layout: a sequence of records [u16 length (LE)][u8 flags][bytes...]; each record
 * is one packet (at most MG_FRAME_DATA_MAX bytes), up to 16 per burst; flags bit 0
 * advances the clock by ~1.5 s before the burst that contains it (so timeouts, expiry and
 * the ICMP limiter are exercised), bit 1 ends the burst.  A plain packet (no record
 * framing) also works: whatever does not parse as records is used as one packet.
 *
 * The tables blob comes from MG_FUZZ_TABLES (written by fuzz/make_seeds.py) so the VIPs
 * match the seed packets.  The state (struct mg_dp) persists across inputs, as in a
 * worker, and is recreated every 10000 inputs to keep memory flat.
 *
 * Build and run: `just fuzz [SECONDS]`.
 */
#include <stdio.h>
#include <stdlib.h>

#include "mg_dp.h"

static void *tables;
static struct mg_dp *dp;
static uint8_t *pool;
static uint64_t now_ns = 1000000000ull;
static unsigned long runs;

#define POOL_FRAMES 1024
#define MAXPKT 16

static void *load_tables(void)
{
    const char *path = getenv("MG_FUZZ_TABLES");
    if (!path)
        path = "build/fuzz/tables.bin";
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_dp: cannot open tables blob %s (run fuzz/make_seeds.py)\n", path);
        abort();
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    void *b = aligned_alloc(64, ((size_t)n + 63) & ~(size_t)63);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n || mg_tables_validate(b, (uint64_t)n) != 0) {
        fprintf(stderr, "fuzz_dp: %s is not a valid tables blob\n", path);
        abort();
    }
    fclose(f);
    return b;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    tables = load_tables();
    pool = aligned_alloc(64, (size_t)POOL_FRAMES * MG_FRAME_SIZE);
    return 0;
}

/* Frames the fragment table may hold across inputs: allocate from a free list. */
static uint32_t free_list[POOL_FRAMES];
static uint32_t n_free;

static void reset_dp(void)
{
    if (dp)
        mg_dp_free(dp);
    const struct mg_tables_header *h = tables;
    dp = mg_dp_new(64, 0, h->hash_k0, h->hash_k1, now_ns);
    n_free = 0;
    for (uint32_t i = 0; i < POOL_FRAMES; i++)
        free_list[n_free++] = POOL_FRAMES - 1 - i;
}

static void run_burst(const uint8_t **pk, const uint32_t *len, uint32_t n)
{
    uint32_t frames[MAXPKT], spare[8], tx[MAXPKT + 8 + MG_DP_DRAIN_MAX], drop[MAXPKT + 8 + MG_DP_DRAIN_MAX];
    if (n_free < n + 8)
        reset_dp();
    for (uint32_t i = 0; i < n; i++) {
        uint32_t idx = free_list[--n_free];
        struct mg_frame_meta *m = mg_frame_meta(pool, idx);
        memset(m, 0, sizeof(*m));
        m->len = len[i];
        m->wire_len = len[i];
        m->data_off = MG_FRAME_HEADROOM;
        m->backend_index = -1;
        memcpy(mg_frame_data(pool, idx), pk[i], len[i]);
        frames[i] = idx;
    }
    for (uint32_t i = 0; i < 8; i++)
        spare[i] = free_list[--n_free];
    struct mg_dp_io io = {.pool = pool, .frames = frames, .n = n, .tx = tx,
                          .tx_cap = MAXPKT + 8 + MG_DP_DRAIN_MAX, .drop = drop,
                          .drop_cap = MAXPKT + 8 + MG_DP_DRAIN_MAX, .spare = spare, .n_spare = 8};
    if (mg_dp_burst(dp, tables, now_ns, &io) != (int)n)
        abort();
    for (uint32_t i = 0; i < io.n_tx; i++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, tx[i]);
        /* a transmitted frame stays inside its frame */
        if (m->data_off > MG_FRAME_SIZE - MG_FRAME_META_SIZE ||
            m->len > MG_FRAME_SIZE - MG_FRAME_META_SIZE - m->data_off)
            abort();
        free_list[n_free++] = tx[i];
    }
    for (uint32_t i = 0; i < io.n_drop; i++)
        free_list[n_free++] = drop[i];
    for (uint32_t i = io.n_spare_used; i < 8; i++)
        free_list[n_free++] = spare[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mg_parsed p;
    mg_parse(data, (uint32_t)(size > MG_FRAME_DATA_MAX ? MG_FRAME_DATA_MAX : size), &p);
    if (!dp || ++runs % 10000 == 0)
        reset_dp();

    const uint8_t *pk[MAXPKT];
    uint32_t len[MAXPKT];
    uint32_t n = 0;
    size_t off = 0;
    int framed = 1;
    while (off + 3 <= size) {
        uint32_t l = (uint32_t)data[off] | ((uint32_t)data[off + 1] << 8);
        uint8_t flags = data[off + 2];
        if (l > MG_FRAME_DATA_MAX || l > size - off - 3) {
            framed = off != 0;
            break;
        }
        if (flags & 1)
            now_ns += 1500000000ull;
        pk[n] = data + off + 3;
        len[n] = l;
        n++;
        off += 3 + l;
        if (n == MAXPKT || (flags & 2)) {
            run_burst(pk, len, n);
            n = 0;
        }
    }
    if (!framed) {
        pk[0] = data;
        len[0] = (uint32_t)(size > MG_FRAME_DATA_MAX ? MG_FRAME_DATA_MAX : size);
        n = 1;
    }
    if (n)
        run_burst(pk, len, n);
    now_ns += 1000;
    return 0;
}
