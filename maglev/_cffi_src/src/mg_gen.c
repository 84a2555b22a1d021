/* Traffic generator (see mg_gen.h for the design). */
#include "mg_gen.h"

#include "mg_csum.h"

#include <stdlib.h>

struct mg_gen_flow {
    uint8_t hdr[MG_GEN_HDR_MAX];
    uint16_t hdr_len;  /* bytes of hdr that are headers */
    uint16_t pkt_len;  /* whole packet */
    uint16_t tcp_off;  /* offset of the TCP header, 0 for UDP */
    uint16_t csum_syn; /* TCP checksum with SYN, resp. ACK set */
    uint16_t csum_ack;
};

struct mg_gen {
    struct mg_gen_flow *flows;
    uint32_t n_flows;
    uint32_t syn_threshold; /* a 32-bit draw below this makes a SYN */
    uint64_t rng;
    uint64_t seq;
    uint64_t flood_seq; /* flood SYNs made so far: the next one's client */
    uint32_t keep_next; /* the flow whose keep-alive ACK comes next */
};

static inline uint64_t xorshift64s(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* splitmix64: spreads a flow index into well-mixed bits (family choice, ports). */
static inline uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* L4 checksum over pseudo header + L4 header (the payload is zeros and adds nothing). */
static uint16_t l4_csum(const uint8_t *src, const uint8_t *dst, size_t alen, uint8_t proto,
                        uint32_t l4_len, const uint8_t *l4, size_t l4_hdr)
{
    uint32_t sum = 0;
    sum = mg_csum_add(sum, src, alen);
    sum = mg_csum_add(sum, dst, alen);
    sum += proto;
    sum += l4_len >> 16;
    sum += l4_len & 0xffff;
    sum = mg_csum_add(sum, l4, l4_hdr);
    uint16_t c = mg_csum_fold(sum);
    if (proto == 17 && c == 0)
        c = 0xffff; /* UDP: 0 means "no checksum" */
    return c;
}

static void build_flow(struct mg_gen_flow *f, uint32_t i, const struct mg_gen_vip *v,
                       uint32_t size)
{
    uint8_t *p = f->hdr;
    memset(f, 0, sizeof *f);
    static const uint8_t dmac[6] = {0x02, 0, 0, 0, 0, 0x01};
    static const uint8_t smac[6] = {0x02, 0, 0, 0, 0, 0x02};
    memcpy(p, dmac, 6);
    memcpy(p + 6, smac, 6);
    uint32_t l3 = 14, l4;
    uint8_t src[16] = {0};
    size_t alen;
    /* Client identity: 65536 addresses; the port makes flows beyond that unique. */
    uint16_t sport = (uint16_t)(1024 + ((i >> 16) * 509u + (i & 0xffff) * 7u) % 64000u);
    uint16_t dport = v->port ? v->port : 80;
    uint32_t l4_hdr = v->proto == 6 ? 20 : 8;
    if (v->family == 4) {
        alen = 4;
        src[0] = 198;
        src[1] = 19;
        src[2] = (uint8_t)(i >> 8);
        src[3] = (uint8_t)i;
        l4 = l3 + 20;
    } else {
        alen = 16;
        static const uint8_t pfx[6] = {0x20, 0x01, 0x0d, 0xb8, 0x00, 0xc1};
        memcpy(src, pfx, 6);
        src[12] = (uint8_t)(i >> 24);
        src[13] = (uint8_t)(i >> 16);
        src[14] = (uint8_t)(i >> 8);
        src[15] = (uint8_t)i;
        l4 = l3 + 40;
    }
    uint32_t hdr_len = l4 + l4_hdr;
    uint32_t pkt_len = size > hdr_len ? size : hdr_len;
    uint32_t l4_len = pkt_len - l4;
    if (v->family == 4) {
        put16(p + 12, 0x0800);
        uint8_t *ip = p + l3;
        ip[0] = 0x45;
        put16(ip + 2, (uint16_t)(pkt_len - l3));
        put16(ip + 6, 0x4000); /* DF */
        ip[8] = 64;
        ip[9] = v->proto;
        memcpy(ip + 12, src, 4);
        memcpy(ip + 16, v->addr, 4);
        put16(ip + 10, mg_csum_fold(mg_csum_add(0, ip, 20)));
    } else {
        put16(p + 12, 0x86dd);
        uint8_t *ip = p + l3;
        ip[0] = 0x60;
        put16(ip + 4, (uint16_t)l4_len);
        ip[6] = v->proto;
        ip[7] = 64;
        memcpy(ip + 8, src, 16);
        memcpy(ip + 24, v->addr, 16);
    }
    uint8_t *t = p + l4;
    put16(t, sport);
    put16(t + 2, dport);
    const uint8_t *dst = v->addr;
    if (v->proto == 6) {
        uint32_t seq = (uint32_t)mix64(i);
        t[4] = (uint8_t)(seq >> 24);
        t[5] = (uint8_t)(seq >> 16);
        t[6] = (uint8_t)(seq >> 8);
        t[7] = (uint8_t)seq;
        t[12] = 5 << 4;
        put16(t + 14, 65535);
        t[13] = 0x02;
        uint16_t c = l4_csum(src, dst, alen, 6, l4_len, t, 20);
        f->csum_syn = c;
        t[13] = 0x10;
        c = l4_csum(src, dst, alen, 6, l4_len, t, 20);
        f->csum_ack = c;
        put16(t + 16, c);
        f->tcp_off = (uint16_t)l4;
    } else {
        put16(t + 4, (uint16_t)l4_len);
        put16(t + 6, l4_csum(src, dst, alen, 17, l4_len, t, 8));
    }
    f->hdr_len = (uint16_t)hdr_len;
    f->pkt_len = (uint16_t)pkt_len;
}

struct mg_gen *mg_gen_new(const struct mg_gen_vip *vips, uint32_t n_vips, uint32_t n_flows,
                          uint32_t size, uint32_t syn_ppm, uint32_t ipv6_ppm, uint64_t seed)
{
    if (!vips || n_vips == 0 || n_vips > MG_GEN_MAX_VIPS || n_flows == 0 ||
        n_flows > MG_GEN_MAX_FLOWS || size > MG_FRAME_DATA_MAX || syn_ppm > 1000000 ||
        ipv6_ppm > 1000000) {
        errno = EINVAL;
        return NULL;
    }
    uint32_t v4[MG_GEN_MAX_VIPS], v6[MG_GEN_MAX_VIPS], n4 = 0, n6 = 0;
    for (uint32_t k = 0; k < n_vips; k++) {
        if (vips[k].family == 4)
            v4[n4++] = k;
        else if (vips[k].family == 6)
            v6[n6++] = k;
        else {
            errno = EINVAL;
            return NULL;
        }
        if (vips[k].proto != 6 && vips[k].proto != 17) {
            errno = EINVAL;
            return NULL;
        }
    }
    struct mg_gen *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->flows = malloc((size_t)n_flows * sizeof *g->flows);
    if (!g->flows) {
        free(g);
        errno = ENOMEM;
        return NULL;
    }
    g->n_flows = n_flows;
    g->syn_threshold = (uint32_t)(((uint64_t)syn_ppm << 32) / 1000000u);
    if (syn_ppm == 1000000)
        g->syn_threshold = UINT32_MAX;
    g->rng = mix64(seed) | 1;
    uint64_t v6_threshold = ((uint64_t)ipv6_ppm << 32) / 1000000u;
    for (uint32_t i = 0; i < n_flows; i++) {
        uint64_t h = mix64(seed ^ ((uint64_t)i << 20));
        int want6 = (h & 0xffffffffu) < v6_threshold;
        if (want6 && n6 == 0)
            want6 = 0;
        if (!want6 && n4 == 0)
            want6 = 1;
        uint32_t k = want6 ? v6[(h >> 32) % n6] : v4[(h >> 32) % n4];
        build_flow(&g->flows[i], i, &vips[k], size);
    }
    return g;
}

void mg_gen_free(struct mg_gen *g)
{
    if (!g)
        return;
    free(g->flows);
    free(g);
}

uint64_t mg_gen_count(const struct mg_gen *g) { return g->seq; }

int mg_gen_fill(struct mg_gen *g, uint8_t *pool, const uint64_t *descs, uint32_t n,
                uint64_t now_ns)
{
    if (n > MG_BURST_MAX)
        return -EINVAL;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t idx = (uint32_t)descs[k];
        uint64_t r = xorshift64s(&g->rng);
        const struct mg_gen_flow *f = &g->flows[(uint32_t)(((r >> 32) * g->n_flows) >> 32)];
        struct mg_frame_meta *m = mg_frame_meta(pool, idx);
        m->len = f->pkt_len;
        m->data_off = MG_FRAME_HEADROOM;
        m->flow_hash = 0;
        m->flags = 0;
        m->verdict = 0;
        m->wire_len = f->pkt_len;
        m->vip_index = 0;
        m->worker = 0;
        m->backend_index = -1;
        m->rx_ts_ns = now_ns;
        m->seq = g->seq++;
        uint8_t *d = mg_frame_data(pool, idx);
        memcpy(d, f->hdr, MG_GEN_HDR_MAX);
        if (f->pkt_len > MG_GEN_HDR_MAX)
            memset(d + MG_GEN_HDR_MAX, 0, f->pkt_len - MG_GEN_HDR_MAX);
        if (f->tcp_off) {
            int syn = (uint32_t)r < g->syn_threshold;
            d[f->tcp_off + 13] = syn ? 0x02 : 0x10;
            put16(d + f->tcp_off + 16, syn ? f->csum_syn : f->csum_ack);
        }
    }
    return (int)n;
}

static void fill_meta(struct mg_frame_meta *m, uint16_t len, uint64_t now_ns, uint64_t seq)
{
    m->len = len;
    m->data_off = MG_FRAME_HEADROOM;
    m->flow_hash = 0;
    m->flags = 0;
    m->verdict = 0;
    m->wire_len = len;
    m->vip_index = 0;
    m->worker = 0;
    m->backend_index = -1;
    m->rx_ts_ns = now_ns;
    m->seq = seq;
}

static uint8_t *copy_flow(const struct mg_gen_flow *f, uint8_t *pool, uint32_t idx)
{
    uint8_t *d = mg_frame_data(pool, idx);
    memcpy(d, f->hdr, MG_GEN_HDR_MAX);
    if (f->pkt_len > MG_GEN_HDR_MAX)
        memset(d + MG_GEN_HDR_MAX, 0, f->pkt_len - MG_GEN_HDR_MAX);
    return d;
}

int mg_gen_fill_flood(struct mg_gen *g, uint8_t *pool, const uint64_t *descs, uint32_t n_keep,
                      uint32_t n_flood, uint64_t now_ns)
{
    if (n_keep > MG_BURST_MAX || n_flood > MG_BURST_MAX || n_keep + n_flood > MG_BURST_MAX)
        return -EINVAL;
    const struct mg_gen_flow *f0 = &g->flows[0];
    if (n_flood && f0->tcp_off != 14 + 20) /* the flood copies flow 0: IPv4 TCP */
        return -EINVAL;
    uint32_t k = 0;
    for (; k < n_keep; k++) {
        uint32_t idx = (uint32_t)descs[k];
        const struct mg_gen_flow *f = &g->flows[g->keep_next];
        g->keep_next = g->keep_next + 1 == g->n_flows ? 0 : g->keep_next + 1;
        fill_meta(mg_frame_meta(pool, idx), f->pkt_len, now_ns, g->seq++);
        uint8_t *d = copy_flow(f, pool, idx);
        if (f->tcp_off) { /* the template is the ACK variant; set it anyway */
            d[f->tcp_off + 13] = 0x10;
            put16(d + f->tcp_off + 16, f->csum_ack);
        }
    }
    for (uint32_t j = 0; j < n_flood; j++, k++) {
        uint32_t idx = (uint32_t)descs[k];
        uint64_t c = g->flood_seq++;
        fill_meta(mg_frame_meta(pool, idx), f0->pkt_len, now_ns, g->seq++);
        uint8_t *d = copy_flow(f0, pool, idx);
        uint8_t *ip = d + 14, *t = d + 14 + 20;
        /* a client never seen before: 198.19.128.0/17 x 64000 ports */
        ip[12] = 198;
        ip[13] = 19;
        ip[14] = (uint8_t)(0x80 | ((c >> 8) & 0x7f));
        ip[15] = (uint8_t)c;
        put16(ip + 10, 0);
        put16(ip + 10, mg_csum_fold(mg_csum_add(0, ip, 20)));
        put16(t, (uint16_t)(1024 + (c >> 15) % 64000u));
        t[13] = 0x02;
        put16(t + 16, 0);
        put16(t + 16, l4_csum(ip + 12, ip + 16, 4, 6, (uint32_t)f0->pkt_len - 34u, t, 20));
    }
    return (int)k;
}

uint64_t mg_gen_flood_count(const struct mg_gen *g) { return g->flood_seq; }
