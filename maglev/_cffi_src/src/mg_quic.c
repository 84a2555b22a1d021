/* QUIC connection-ID routing; the scheme is described in include/mg_quic.h. */
#include "mg_quic.h"

static const struct mg_quic_sid *sids_of(const void *tables, const struct mg_vip *v)
{
    return (const struct mg_quic_sid *)((const uint8_t *)tables + v->quic_off);
}

int32_t mg_quic_route(const void *tables, int vip, const uint8_t *pkt, const struct mg_parsed *p)
{
    const struct mg_vip *v = &mg_tables_vips(tables)[vip];
    const uint32_t off = v->quic_sid_off, len = v->quic_sid_len;
    if (len == 0 || p->proto != 17 || p->l4_off == 0)
        return -1;
    /* UDP payload within the IP packet (l3_len is the IP length the header states) */
    const uint32_t payload = (uint32_t)p->l4_off + 8u;
    const uint32_t end = (uint32_t)p->l3_off + p->l3_len;
    if (end < payload || end - payload < 1u + off + len)
        return -1;
    const uint8_t *q = pkt + payload;
    if (q[0] & 0x80)
        return -1; /* long header: Initial, 0-RTT, Handshake, Retry */
    uint64_t sid = 0;
    for (uint32_t i = 0; i < len; i++)
        sid = sid << 8 | q[1 + off + i];
    const struct mg_quic_sid *s = sids_of(tables, v);
    uint32_t lo = 0, hi = v->quic_n;
    while (lo < hi) { /* sorted by sid */
        uint32_t mid = lo + (hi - lo) / 2;
        if (s[mid].sid < sid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == v->quic_n || s[lo].sid != sid)
        return -1;
    const struct mg_backend *b = &mg_tables_backends(tables)[s[lo].backend];
    const uint8_t ok = MG_BACKEND_F_PRESENT | MG_BACKEND_F_HEALTHY;
    if ((b->flags & ok) != ok)
        return -1;
    return (int32_t)s[lo].backend;
}

int mg_quic_validate(const void *tables, const struct mg_vip *v, uint64_t size)
{
    if (v->quic_sid_len == 0)
        return v->quic_off || v->quic_n || v->quic_sid_off ? -EINVAL : 0;
    if (v->proto != 17 || v->quic_sid_len > MG_QUIC_MAX_SID_LEN ||
        (uint32_t)v->quic_sid_off + v->quic_sid_len > MG_QUIC_MAX_CID_LEN ||
        v->quic_n > v->backend_count)
        return -EINVAL;
    uint64_t bytes = (uint64_t)v->quic_n * sizeof(struct mg_quic_sid);
    if (v->quic_off > size || bytes > size - v->quic_off || (v->quic_off & 7))
        return -EINVAL;
    const struct mg_quic_sid *s = sids_of(tables, v);
    const uint64_t max = v->quic_sid_len == 8 ? UINT64_MAX : (1ULL << (8 * v->quic_sid_len)) - 1;
    for (uint32_t i = 0; i < v->quic_n; i++) {
        if (s[i].sid > max || (i && s[i - 1].sid >= s[i].sid) || s[i].backend < v->backend_first ||
            s[i].backend - v->backend_first >= v->backend_count)
            return -EINVAL;
    }
    return 0;
}
