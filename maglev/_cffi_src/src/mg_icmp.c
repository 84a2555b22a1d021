/* ICMP path-MTU errors and inbound ICMP errors -- the contract is in include/mg_icmp.h.
 *
 * mg_icmp_too_big() never copies the payload: the original L3 packet stays where it is
 * and becomes the quote; what moves is the (short) L2 header, forward into the headroom,
 * to make room for the new IP + ICMP headers in between.  The quote is then cut so the
 * whole error stays within 576 (IPv4) / 1280 (IPv6) bytes.
 *
 * mg_icmp_quoted_flow() reads only the quoted bytes that are present: every field access
 * is preceded by a length check against the end of the outer packet, so a truncated or
 * hostile quote yields -EBADMSG, never a read past the buffer.
 */
#include "mg_icmp.h"
#include "mg_encap.h"

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

int mg_ratelimit_init(struct mg_ratelimit *rl, uint32_t rate_per_s, uint32_t burst,
                      uint64_t now_ns)
{
    if (!rl || rate_per_s == 0 || burst == 0)
        return -EINVAL;
    rl->cost_ns = 1000000000ull / rate_per_s;
    if (rl->cost_ns == 0)
        rl->cost_ns = 1;
    rl->cap_ns = rl->cost_ns * burst;
    rl->credit_ns = rl->cap_ns;
    rl->last_ns = now_ns;
    return 0;
}

int mg_ratelimit_take(struct mg_ratelimit *rl, uint64_t now_ns)
{
    if (now_ns > rl->last_ns) {
        uint64_t gained = now_ns - rl->last_ns;
        rl->credit_ns = gained >= rl->cap_ns - rl->credit_ns ? rl->cap_ns : rl->credit_ns + gained;
        rl->last_ns = now_ns;
    }
    if (rl->credit_ns >= rl->cost_ns) {
        rl->credit_ns -= rl->cost_ns;
        return 1;
    }
    return 0;
}

/* No ICMP error toward an address that cannot be a unicast host (RFC 1122 3.2.2). */
static int bad_error_destination(const uint8_t *l3, uint8_t family)
{
    if (family == 4) {
        const uint8_t *s = l3 + 12;
        return s[0] >= 224 || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0);
    }
    const uint8_t *s = l3 + 8;
    if (s[0] == 0xff)
        return 1;
    for (int i = 0; i < 16; i++)
        if (s[i])
            return 0;
    return 1; /* :: */
}

int mg_pmtu_check(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                  uint8_t l4_proto, uint32_t l4_off, uint32_t overhead, uint32_t mtu)
{
    if (!pkt || l3_off > len)
        return -EINVAL;
    const uint8_t *l3 = pkt + l3_off;
    int l3len = mg_l3_len(l3, len - l3_off, family);
    if (l3len < 0)
        return l3len;
    if ((uint64_t)l3len + overhead <= mtu)
        return MG_PMTU_FITS;
    if (family == 4) {
        uint16_t frag = get16(l3 + 6);
        int df = (frag & 0x4000) != 0;
        if (!df)
            return MG_PMTU_FRAGMENT; /* the sender allows fragmentation */
        if (frag & 0x1fff)
            return MG_PMTU_DROP;     /* no error about a non-first fragment */
        if (l4_proto == 1 && (l4_off == 0 || l4_off >= len ||
                              (pkt[l4_off] != 0 && pkt[l4_off] != 8 && pkt[l4_off] != 13 &&
                               pkt[l4_off] != 14)))
            return MG_PMTU_DROP;     /* no error about an ICMP error (only about queries) */
    } else {
        if (l4_off == 0)
            return MG_PMTU_DROP;     /* non-first fragment (or no upper layer found) */
        if (l4_proto == 58 && (l4_off >= len || pkt[l4_off] < 128))
            return MG_PMTU_DROP;     /* ICMPv6 error message (types 0..127) */
    }
    if (bad_error_destination(l3, family))
        return MG_PMTU_DROP;
    return MG_PMTU_ICMP;
}

int mg_icmp_too_big(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t family,
                    uint32_t mtu)
{
    if (!pool)
        return -EINVAL;
    struct mg_frame_meta *m = mg_frame_meta(pool, idx);
    const uint32_t room = MG_FRAME_SIZE - MG_FRAME_META_SIZE;
    uint32_t off = m->data_off, len = m->len;
    if (off > room || len > room - off || l3_off > len || (l3_off != 0 && l3_off < 14))
        return -EINVAL;
    if ((family == 4 && mtu > 0xffff) || (family != 4 && family != 6))
        return -EINVAL;
    uint8_t *pkt = pool + (size_t)idx * MG_FRAME_SIZE + MG_FRAME_META_SIZE + off;
    uint8_t *l3 = pkt + l3_off;
    int l3len = mg_l3_len(l3, len - l3_off, family);
    if (l3len < 0)
        return l3len;
    uint32_t add = family == 4 ? 28 : 48;
    if (off < add)
        return -ENOSPC;
    uint32_t max_quote = (family == 4 ? MG_ICMP4_ERROR_MAX : MG_ICMP6_ERROR_MAX) - add;
    uint32_t quote = (uint32_t)l3len < max_quote ? (uint32_t)l3len : max_quote;

    /* read what we need from the original header before writing over anything */
    uint8_t osrc[16], odst[16];
    if (family == 4) {
        memcpy(osrc, l3 + 12, 4);
        memcpy(odst, l3 + 16, 4);
    } else {
        memcpy(osrc, l3 + 8, 16);
        memcpy(odst, l3 + 24, 16);
    }

    uint8_t *start = pkt - add;
    if (l3_off) {
        memmove(start, pkt, l3_off); /* L2 header (and VLAN tags) forward, MACs swapped */
        uint8_t tmp[6];
        memcpy(tmp, start, 6);
        memcpy(start, start + 6, 6);
        memcpy(start + 6, tmp, 6);
    }
    uint8_t *ip = start + l3_off;
    uint8_t *icmp;
    if (family == 4) {
        ip[0] = 0x45;
        ip[1] = 0;
        put16(ip + 2, (uint16_t)(28 + quote));
        put16(ip + 4, 0);
        put16(ip + 6, 0x4000);
        ip[8] = MG_ENCAP_TTL;
        ip[9] = 1;
        put16(ip + 10, 0);
        memcpy(ip + 12, odst, 4); /* from the VIP (see mg_icmp.h) */
        memcpy(ip + 16, osrc, 4); /* to the client */
        put16(ip + 10, mg_csum_fold(mg_csum_add(0, ip, 20)));
        icmp = ip + 20;
        icmp[0] = 3; /* destination unreachable */
        icmp[1] = 4; /* fragmentation needed and DF set */
        put16(icmp + 2, 0);
        put16(icmp + 4, 0);
        put16(icmp + 6, (uint16_t)mtu); /* RFC 1191 next-hop MTU */
        put16(icmp + 2, mg_csum_fold(mg_csum_add(0, icmp, 8 + quote)));
    } else {
        put32(ip, 6u << 28);
        put16(ip + 4, (uint16_t)(8 + quote));
        ip[6] = 58;
        ip[7] = MG_ENCAP_TTL;
        memcpy(ip + 8, odst, 16);
        memcpy(ip + 24, osrc, 16);
        icmp = ip + 40;
        icmp[0] = 2; /* packet too big */
        icmp[1] = 0;
        put16(icmp + 2, 0);
        put32(icmp + 4, mtu);
        uint8_t ph[8] = {0};
        put32(ph, 8 + quote);
        ph[7] = 58;
        uint32_t s = mg_csum_add(0, ip + 8, 32);
        s = mg_csum_add(s, ph, 8);
        s = mg_csum_add(s, icmp, 8 + quote);
        put16(icmp + 2, mg_csum_fold(s));
    }
    m->data_off = off - add;
    m->len = l3_off + add + quote;
    m->flags |= MG_FRAME_F_GENERATED;
    return (int)m->len;
}

static int has_ports(uint8_t proto)
{
    return proto == 6 || proto == 17 || proto == 132 || proto == 136; /* TCP UDP SCTP UDP-Lite */
}

int mg_icmp_quoted_flow(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                        uint32_t l4_off, struct mg_flow_key *out)
{
    if (!pkt || !out || l3_off > len || (family != 4 && family != 6))
        return -EINVAL;
    int l3len = mg_l3_len(pkt + l3_off, len - l3_off, family);
    if (l3len < 0)
        return -EBADMSG;
    uint32_t end = l3_off + (uint32_t)l3len; /* ignore Ethernet padding */
    if (l4_off < l3_off || l4_off > end || end - l4_off < 8)
        return -EBADMSG;
    uint8_t type = pkt[l4_off];
    if (family == 4 ? !(type == 3 || type == 11 || type == 12) : !(type >= 1 && type <= 4))
        return -ENOMSG;
    const uint8_t *q = pkt + l4_off + 8;
    uint32_t qlen = end - (l4_off + 8);

    uint8_t proto;
    uint32_t l4; /* offset of the quoted L4 header within q; 0 = none */
    int first = 1;
    memset(out, 0, sizeof *out);
    if (family == 4) {
        if (qlen < 20 || (q[0] >> 4) != 4 || (q[0] & 0xf) < 5 || (uint32_t)(q[0] & 0xf) * 4 > qlen)
            return -EBADMSG;
        proto = q[9];
        l4 = (uint32_t)(q[0] & 0xf) * 4;
        first = (get16(q + 6) & 0x1fff) == 0;
        memcpy(out->src, q + 16, 4); /* the client: quoted destination */
        memcpy(out->dst, q + 12, 4); /* the VIP: quoted source */
    } else {
        if (qlen < 40 || (q[0] >> 4) != 6)
            return -EBADMSG;
        proto = q[6];
        l4 = 40;
        for (int hops = 0; hops < 8; hops++) {
            if (proto == 0 || proto == 43 || proto == 60 || proto == 51) {
                if (qlen < l4 + 8)
                    return -EBADMSG;
                uint32_t hl = proto == 51 ? ((uint32_t)q[l4 + 1] + 2) * 4
                                          : ((uint32_t)q[l4 + 1] + 1) * 8;
                proto = q[l4];
                l4 += hl;
            } else if (proto == 44) {
                if (qlen < l4 + 8)
                    return -EBADMSG;
                first = (get16(q + l4 + 2) & 0xfff8) == 0;
                proto = q[l4];
                l4 += 8;
                if (!first)
                    break;
            } else {
                break;
            }
        }
        if (first && (proto == 0 || proto == 43 || proto == 60 || proto == 51 || proto == 44))
            return -EBADMSG; /* chain longer than we follow */
        memcpy(out->src, q + 24, 16);
        memcpy(out->dst, q + 8, 16);
    }
    out->proto = proto;
    out->family = family;
    if (!first || !has_ports(proto))
        return MG_QUOTE_3TUPLE;
    if (qlen < l4 + 4)
        return -EBADMSG; /* a first fragment must carry its ports (RFC 792: 8 bytes) */
    memcpy(&out->sport, q + l4 + 2, 2); /* client's port: the quoted destination port */
    memcpy(&out->dport, q + l4, 2);
    return MG_QUOTE_5TUPLE;
}
