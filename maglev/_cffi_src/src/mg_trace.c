/* Packet tracer (design in include/mg_trace.h). */
#include "mg_trace.h"

#include <arpa/inet.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "mg_dp.h"
#include "mg_parse.h"
#include "mg_shm.h"
#include "mg_stats.h"

uint64_t mg_trace_cd = UINT64_MAX;

/* This process's steering state: the applied request and the countdown bookkeeping. */
static struct {
    uint64_t seq;           /* applied request sequence */
    uint64_t every;         /* sampling: 1 in every (0 off) */
    uint64_t default_every; /* from this process's config */
    uint64_t sample_left;   /* packets until the next sample */
    uint64_t cd_set;        /* value mg_trace_cd was last set to */
    uint64_t left;          /* filter: packets still to mark */
    uint64_t deadline;
    uint64_t req_id;
    uint8_t dst[16], src[16];
    uint16_t dport, sport;  /* network order, 0 = any */
    uint8_t proto, dfam, sfam, has_dst, has_src, plen;
    uint64_t rng;
} st;

/* The collected records (steering process); single thread: steering's loop both fills and
 * drains it. */
static struct mg_trace_rec trace_log[MG_TRACE_LOG];
static uint32_t log_head, log_tail;

static uint64_t *block(void *base)
{
    return mg_region_stats(base, MG_SLOT_TRACE);
}

static uint64_t rnd(void)
{
    if (st.rng == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        st.rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
                 0x9e3779b97f4a7c15ull;
    }
    /* splitmix64: good enough for trace ids, which need to be unique, not secret. */
    uint64_t z = (st.rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Arm the countdown: every packet while a filter is armed, else the next sample. */
static void rearm(void)
{
    if (st.left)
        st.cd_set = 1;
    else if (st.every)
        st.cd_set = st.sample_left ? st.sample_left : st.every;
    else
        st.cd_set = UINT64_MAX;
    mg_trace_cd = st.cd_set;
}

void mg_trace_steer_default(uint64_t sample_every)
{
    st.default_every = sample_every;
    if (st.seq == 0 || st.every == 0) {
        st.every = sample_every;
        st.sample_left = sample_every;
    }
    rearm();
}

void mg_trace_reset(void)
{
    memset(&st, 0, sizeof st);
    log_head = log_tail = 0;
    mg_trace_cd = UINT64_MAX;
}

void mg_trace_steer_burst(void *base)
{
    uint64_t *b = block(base);
    uint64_t s1 = __atomic_load_n(&b[MG_TW_SEQ], __ATOMIC_ACQUIRE);
    if (MG_LIKELY(s1 == st.seq) || (s1 & 1))
        return; /* nothing new, or the config manager is writing right now */
    uint64_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = __atomic_load_n(&b[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&b[MG_TW_SEQ], __ATOMIC_RELAXED) != s1)
        return; /* torn: try again next burst */
    st.seq = s1;
    uint64_t every = (w[MG_TW_FLAGS] & MG_TW_F_SAMPLE_SET) ? w[MG_TW_SAMPLE] : st.default_every;
    if (every != st.every) {
        st.every = every;
        st.sample_left = every;
    }
    st.left = w[MG_TW_COUNT];
    st.deadline = w[MG_TW_DEADLINE];
    st.req_id = w[MG_TW_REQ_ID];
    memcpy(st.dst, &w[MG_TW_DST], 16);
    memcpy(st.src, &w[MG_TW_SRC], 16);
    uint64_t dm = w[MG_TW_DST_META], sm = w[MG_TW_SRC_META];
    st.dport = (uint16_t)dm;
    st.proto = (uint8_t)(dm >> 16);
    st.dfam = (uint8_t)(dm >> 24);
    st.has_dst = (uint8_t)((dm >> 32) & 1);
    st.sport = (uint16_t)sm;
    st.sfam = (uint8_t)(sm >> 24);
    st.has_src = (uint8_t)((sm >> 32) & 1);
    st.plen = (uint8_t)(sm >> 40);
    __atomic_store_n(&b[MG_TW_REQ_MARKED], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b[MG_TW_APPLIED], s1, __ATOMIC_RELEASE);
    rearm();
}

static int prefix_match(const uint8_t *a, const uint8_t *p, unsigned plen)
{
    unsigned full = plen / 8, rest = plen % 8;
    if (memcmp(a, p, full))
        return 0;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff00u >> rest);
        return (a[full] & mask) == (p[full] & mask);
    }
    return 1;
}

static int filter_match(const uint8_t *pkt, uint32_t len)
{
    struct mg_parsed p;
    if (mg_parse(pkt, len, &p) != MG_OK)
        return 0;
    const struct mg_flow_key *k = &p.key;
    if (st.has_dst) {
        if (k->family != st.dfam || memcmp(k->dst, st.dst, 16))
            return 0;
        if (st.proto && k->proto != st.proto)
            return 0;
        if (st.dport && k->dport != st.dport)
            return 0;
    }
    if (st.has_src) {
        unsigned max = st.sfam == 4 ? 32 : 128;
        if (k->family != st.sfam || !prefix_match(k->src, st.src, st.plen > max ? max : st.plen))
            return 0;
        if (st.sport && k->sport != st.sport)
            return 0;
    }
    return 1;
}

void mg_trace_steer_packet(void *base, struct mg_frame_meta *m, const uint8_t *pkt)
{
    uint64_t passed = st.cd_set;
    int mark = 0, by_filter = 0;
    uint64_t *b = block(base);
    if (st.left) {
        if (st.deadline && mg_mono_ns() > st.deadline) {
            st.left = 0;
        } else if (filter_match(pkt, m->len)) {
            mark = by_filter = 1;
            st.left--;
            __atomic_store_n(&b[MG_TW_REQ_MARKED], b[MG_TW_REQ_MARKED] + 1, __ATOMIC_RELAXED);
        }
    }
    if (st.every) {
        if (st.sample_left > passed) {
            st.sample_left -= passed;
        } else {
            mark = 1;
            st.sample_left = st.every;
        }
    }
    rearm();
    if (!mark)
        return;
    uint64_t hi, lo;
    do {
        hi = rnd();
        lo = rnd();
    } while ((hi | lo) == 0);
    m->flags |= MG_FRAME_F_TRACE;
    m->flags &= (uint16_t)~(MG_TRACE_F_CT_HIT | MG_TRACE_F_CT_RESELECT | MG_TRACE_F_FILTER);
    if (by_filter)
        m->flags |= MG_TRACE_F_FILTER;
    m->trace_id_hi = hi;
    m->trace_id_lo = lo;
    m->ts_steer_ns = mg_mono_ns();
    m->ts_worker_ns = 0;
    m->ts_tx_ns = 0;
    m->worker_ns = 0;
    /* Release: a muxer or reclaim that sees the count may look for this frame. */
    __atomic_store_n(&b[MG_TW_MARKED], b[MG_TW_MARKED] + 1, __ATOMIC_RELEASE);
}

int mg_trace_inflight(void *base)
{
    uint64_t *b = block(base);
    return __atomic_load_n(&b[MG_TW_MARKED], __ATOMIC_ACQUIRE) !=
           __atomic_load_n(&b[MG_TW_FINISHED], __ATOMIC_RELAXED);
}

/* The tracer's one decoder is the data path's parser.  A forwarded frame left
 * encapsulated: its outer destination is the backend and the client's packet is inside
 * (GRE without options, IP-in-IP, or VXLAN: UDP + 8 bytes + Ethernet); any other frame
 * is the client's packet itself.  Runs for traced frames only, once each. */
static void decode(struct mg_trace_rec *r, const uint8_t *pkt, uint32_t len)
{
    struct mg_parsed p, in;
    memset(&r->outer, 0, sizeof r->outer);
    memset(&r->flow, 0, sizeof r->flow);
    if (mg_parse(pkt, len, &p) != MG_OK)
        return;
    r->outer = p.key;
    r->decoded = MG_TRACE_D_OUTER;
    if (r->meta.verdict != MG_VERDICT_FORWARD) {
        r->flow = p.key;
        r->decoded |= MG_TRACE_D_FLOW;
        return;
    }
    uint32_t payload = p.l3_off + (p.family == 4 ? (uint32_t)(pkt[p.l3_off] & 15) * 4 : 40);
    int rc = -1;
    if (p.proto == 47 && (p.frag & MG_PF_FRAGMENT) == 0)
        rc = mg_parse_ip(pkt, len, payload + 4, &in);
    else if (p.proto == 4 || p.proto == 41)
        rc = mg_parse_ip(pkt, len, payload, &in);
    else if (p.proto == 17 && p.l4_off && len > p.l4_off + 16u)
        rc = mg_parse(pkt + p.l4_off + 16, len - p.l4_off - 16, &in);
    if (rc == MG_OK) {
        r->flow = in.key;
        r->decoded |= MG_TRACE_D_FLOW;
    }
}

void mg_trace_collect(void *base, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    uint64_t *b = block(base);
    uint64_t got = 0, lost = 0;
    for (uint32_t j = 0; j < n; j++) /* the frames were written on other cores */
        MG_PREFETCH_W(mg_frame_meta(pool, (uint32_t)descs[j]));
    for (uint32_t j = 0; j < n; j++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
        if (!(m->flags & MG_FRAME_F_TRACE))
            continue;
        if (log_head - log_tail < MG_TRACE_LOG) {
            struct mg_trace_rec *r = &trace_log[log_head++ % MG_TRACE_LOG];
            r->meta = *m;
            r->decoded = 0;
            if (m->data_off <= MG_FRAME_SIZE - MG_FRAME_META_SIZE &&
                m->len <= MG_FRAME_SIZE - MG_FRAME_META_SIZE - m->data_off)
                decode(r, mg_frame_data(pool, (uint32_t)descs[j]), m->len);
        } else
            lost++;
        m->flags &= (uint16_t)~MG_FRAME_F_TRACE;
        got++;
    }
    if (got) {
        uint64_t fin = b[MG_TW_FINISHED] + got;
        uint64_t marked = __atomic_load_n(&b[MG_TW_MARKED], __ATOMIC_RELAXED);
        __atomic_store_n(&b[MG_TW_FINISHED], fin > marked ? marked : fin, __ATOMIC_RELEASE);
        b[MG_TW_LOST] += lost;
    }
}

void mg_trace_mux_stamp(uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    uint64_t t = 0;
    for (uint32_t j = 0; j < n; j++)
        MG_PREFETCH_W(mg_frame_meta(pool, (uint32_t)descs[j]));
    for (uint32_t j = 0; j < n; j++) {
        struct mg_frame_meta *m = mg_frame_meta(pool, (uint32_t)descs[j]);
        if (!(m->flags & MG_FRAME_F_TRACE))
            continue;
        if (!t)
            t = mg_mono_ns();
        m->ts_tx_ns = t;
    }
}

void mg_trace_worker_done(struct mg_frame_meta *m)
{
    if (m->verdict == MG_VERDICT_HELD)
        return; /* a held fragment leaves later */
    uint64_t t = mg_mono_ns();
    uint64_t d = m->ts_worker_ns && t > m->ts_worker_ns ? t - m->ts_worker_ns : 0;
    m->worker_ns = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
    if (!m->worker_ns)
        m->worker_ns = 1; /* 0 means "the worker never released it" */
}

int mg_trace_drain(struct mg_trace_rec *out, uint32_t max)
{
    uint32_t k = 0;
    while (k < max && log_tail != log_head)
        out[k++] = trace_log[log_tail++ % MG_TRACE_LOG];
    return (int)k;
}

void mg_trace_resync(void *base)
{
    uint64_t *b = block(base);
    b[MG_TW_RESYNCS]++;
    __atomic_store_n(&b[MG_TW_FINISHED], __atomic_load_n(&b[MG_TW_MARKED], __ATOMIC_RELAXED),
                     __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------- request words */

static uint64_t addr_word(const uint8_t *a, int half)
{
    uint64_t w;
    memcpy(&w, a + 8 * half, 8);
    return w;
}

uint64_t mg_trace_arm(void *base, const struct mg_trace_req *q)
{
    uint64_t *b = block(base);
    uint64_t w[16] = {0};
    w[MG_TW_SAMPLE] = q->sample_set ? q->sample_every : 0;
    w[MG_TW_FLAGS] = q->sample_set ? MG_TW_F_SAMPLE_SET : 0;
    w[MG_TW_COUNT] = q->count;
    w[MG_TW_DEADLINE] = q->deadline_ns;
    w[MG_TW_REQ_ID] = q->req_id;
    if (q->dst_on) {
        w[MG_TW_DST] = addr_word(q->dst_addr, 0);
        w[MG_TW_DST + 1] = addr_word(q->dst_addr, 1);
        w[MG_TW_DST_META] = (uint64_t)htons(q->dst_port) | (uint64_t)q->proto << 16 |
                            (uint64_t)q->dst_family << 24 | 1ull << 32;
    }
    if (q->src_on) {
        w[MG_TW_SRC] = addr_word(q->src_addr, 0);
        w[MG_TW_SRC + 1] = addr_word(q->src_addr, 1);
        w[MG_TW_SRC_META] = (uint64_t)htons(q->src_port) | (uint64_t)q->src_family << 24 |
                            1ull << 32 | (uint64_t)q->src_plen << 40;
    }
    uint64_t odd = mg_seq_write_begin(&b[MG_TW_SEQ]);
    mg_seq_store_words(&b[1], &w[1], 15);
    mg_seq_write_end(&b[MG_TW_SEQ], odd);
    return odd + 1;
}

uint64_t mg_trace_set_sampling(void *base, uint64_t sample_every)
{
    uint64_t *b = block(base);
    /* Our own words: only this process writes them, so plain reads see the latest. */
    uint64_t count = __atomic_load_n(&b[MG_TW_COUNT], __ATOMIC_RELAXED);
    uint64_t marked = __atomic_load_n(&b[MG_TW_REQ_MARKED], __ATOMIC_ACQUIRE); /* steering's */
    uint64_t flags = __atomic_load_n(&b[MG_TW_FLAGS], __ATOMIC_RELAXED);
    uint64_t odd = mg_seq_write_begin(&b[MG_TW_SEQ]);
    __atomic_store_n(&b[MG_TW_COUNT], count > marked ? count - marked : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b[MG_TW_SAMPLE], sample_every, __ATOMIC_RELAXED);
    __atomic_store_n(&b[MG_TW_FLAGS], flags | MG_TW_F_SAMPLE_SET, __ATOMIC_RELAXED);
    mg_seq_write_end(&b[MG_TW_SEQ], odd);
    return odd + 1;
}

void mg_trace_status(void *base, struct mg_trace_status *out)
{
    uint64_t *b = block(base);
    uint64_t w[16];
    if (mg_seq_read(&b[MG_TW_SEQ], b, w, 16, 64) < 0) /* a writer died mid-request */
        mg_seq_load_words(w, b, 16);
    out->seq = w[MG_TW_SEQ];
    out->count = w[MG_TW_COUNT];
    out->sample_every = w[MG_TW_SAMPLE];
    out->sample_set = w[MG_TW_FLAGS] & MG_TW_F_SAMPLE_SET;
    /* Steering's words: each a counter on its own (acquire, word by word). */
    out->applied = __atomic_load_n(&b[MG_TW_APPLIED], __ATOMIC_ACQUIRE);
    out->marked = __atomic_load_n(&b[MG_TW_MARKED], __ATOMIC_ACQUIRE);
    out->request_marked = __atomic_load_n(&b[MG_TW_REQ_MARKED], __ATOMIC_ACQUIRE);
    out->finished = __atomic_load_n(&b[MG_TW_FINISHED], __ATOMIC_ACQUIRE);
    out->lost = __atomic_load_n(&b[MG_TW_LOST], __ATOMIC_ACQUIRE);
    out->resyncs = __atomic_load_n(&b[MG_TW_RESYNCS], __ATOMIC_ACQUIRE);
}

#define GEN_WORDS ((uint32_t)(sizeof(struct mg_trace_gen_ctx) / 8))
_Static_assert(MG_TW_GEN + sizeof(struct mg_trace_gen_ctx) / 8 <= MG_TW_APPLIED,
               "the generation context stays in the config manager's words");

void mg_trace_gen_store(void *base, const struct mg_trace_gen_ctx *ctx)
{
    uint64_t *b = block(base);
    mg_seq_write(&b[MG_TW_GEN_SEQ], &b[MG_TW_GEN], (const uint64_t *)ctx, GEN_WORDS);
}

int mg_trace_gen_load(void *base, struct mg_trace_gen_ctx *out)
{
    uint64_t *b = block(base);
    return mg_seq_read(&b[MG_TW_GEN_SEQ], &b[MG_TW_GEN], (uint64_t *)out, GEN_WORDS, 8);
}
