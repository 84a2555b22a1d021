/* Encapsulation in place -- the contract is in include/mg_encap.h.
 *
 * Every type works the same way: find the inner L3 packet (which never moves), compute
 * the header block that must sit in front of it (outer Ethernet + outer IP + GRE, or
 * + UDP + VXLAN + inner Ethernet), check that the block fits between the start of the
 * frame's data area and the L3 header, write it backwards from the L3 header, and move
 * data_off/len.  The old L2 header is simply overwritten.  All multi-byte fields are
 * stored byte by byte (big endian), so nothing depends on alignment or host order.
 */
#include "mg_encap.h"

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

int mg_encap_overhead(uint8_t type, uint8_t outer_family)
{
    if (type == MG_ENCAP_L2)
        return 0;
    if (outer_family != 4 && outer_family != 6)
        return -EINVAL;
    int ip = outer_family == 4 ? 20 : 40;
    switch (type) {
    case MG_ENCAP_GRE: return ip + 4;
    case MG_ENCAP_GRE_REDIRECT: return ip + 8;
    case MG_ENCAP_IPIP: return ip;
    case MG_ENCAP_VXLAN: return ip + 8 + 8 + 14;
    default: return -EINVAL;
    }
}

int mg_l3_len(const uint8_t *l3, uint32_t avail, uint8_t family)
{
    if (family == 4) {
        if (avail < 20 || (l3[0] >> 4) != 4 || (l3[0] & 0xf) < 5)
            return -EINVAL;
        uint32_t tot = get16(l3 + 2);
        if (tot < (uint32_t)(l3[0] & 0xf) * 4 || tot > avail)
            return -EINVAL;
        return (int)tot;
    }
    if (family == 6) {
        if (avail < 40 || (l3[0] >> 4) != 6)
            return -EINVAL;
        uint32_t plen = get16(l3 + 4);
        if (plen == 0 || 40 + plen > avail) /* 0 = jumbogram (RFC 2675): not supported */
            return -EINVAL;
        return (int)(40 + plen);
    }
    return -EINVAL;
}

int mg_encap(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t inner_family,
             uint32_t flow_hash, const struct mg_encap_params *p)
{
    if (!pool || !p)
        return -EINVAL;
    struct mg_frame_meta *m = mg_frame_meta(pool, idx);
    const uint32_t room = MG_FRAME_SIZE - MG_FRAME_META_SIZE;
    uint32_t off = m->data_off, len = m->len;
    if (off > room || len > room - off)
        return -EINVAL;
    uint8_t *pkt = pool + (size_t)idx * MG_FRAME_SIZE + MG_FRAME_META_SIZE + off;

    if (p->type == MG_ENCAP_L2) {
        if (len < 14)
            return -EINVAL;
        memcpy(pkt, p->eth_dst, 6);
        memcpy(pkt + 6, p->eth_src, 6);
        return (int)len;
    }

    int ov = mg_encap_overhead(p->type, p->outer_family);
    if (ov < 0 || p->vni > 0xffffff || l3_off > len)
        return -EINVAL;
    uint8_t *l3 = pkt + l3_off;
    int l3len = mg_l3_len(l3, len - l3_off, inner_family);
    if (l3len < 0)
        return l3len;
    uint32_t hdr = 14 + (uint32_t)ov;
    if (off + l3_off < hdr)
        return -ENOSPC;
    if (p->type == MG_ENCAP_GRE && p->outer_family == 4 && inner_family == 4) {
        mg_encap_gre4_write(l3, (uint32_t)l3len, p->eth_dst, p->eth_src, p->src, p->dst);
        m->data_off = off + l3_off - hdr;
        m->len = hdr + (uint32_t)l3len;
        return (int)m->len;
    }

    uint8_t tos;
    uint16_t ip_id = 0;
    int df = 1;
    if (inner_family == 4) {
        tos = l3[1];
        ip_id = get16(l3 + 4);
        df = (get16(l3 + 6) & 0x4000) != 0;
    } else {
        tos = (uint8_t)((l3[0] & 0x0f) << 4 | l3[1] >> 4);
    }

    uint8_t *h = l3 - hdr;
    memcpy(h, p->eth_dst, 6);
    memcpy(h + 6, p->eth_src, 6);
    put16(h + 12, p->outer_family == 4 ? 0x0800 : 0x86dd);
    uint8_t *ip = h + 14;
    uint32_t iphl = p->outer_family == 4 ? 20 : 40;
    uint32_t payload = (uint32_t)ov - iphl + (uint32_t)l3len; /* bytes after outer IP */
    uint8_t proto = p->type == MG_ENCAP_GRE || p->type == MG_ENCAP_GRE_REDIRECT ? 47
                    : p->type == MG_ENCAP_VXLAN ? 17
                    : inner_family == 4         ? 4
                                                : 41;
    if (p->outer_family == 4) {
        ip[0] = 0x45;
        ip[1] = tos;
        put16(ip + 2, (uint16_t)(iphl + payload));
        put16(ip + 4, ip_id);
        put16(ip + 6, df ? 0x4000 : 0);
        ip[8] = MG_ENCAP_TTL;
        ip[9] = proto;
        put16(ip + 10, 0);
        memcpy(ip + 12, p->src, 4);
        memcpy(ip + 16, p->dst, 4);
        put16(ip + 10, mg_csum_fold(mg_csum_add(0, ip, 20)));
    } else {
        put32(ip, 6u << 28 | (uint32_t)tos << 20 | (flow_hash & 0xfffff));
        put16(ip + 4, (uint16_t)payload);
        ip[6] = proto;
        ip[7] = MG_ENCAP_TTL;
        memcpy(ip + 8, p->src, 16);
        memcpy(ip + 24, p->dst, 16);
    }
    uint8_t *l4 = ip + iphl;
    uint16_t inner_type = inner_family == 4 ? 0x0800 : 0x86dd;
    if (p->type == MG_ENCAP_GRE) {
        put16(l4, 0); /* no checksum, key or sequence; version 0 */
        put16(l4 + 2, inner_type);
    } else if (p->type == MG_ENCAP_GRE_REDIRECT) {
        put16(l4, MG_GRE_F_KEY); /* key present; no checksum or sequence; version 0 */
        put16(l4 + 2, inner_type);
        put32(l4 + 4, MG_REDIRECT_GRE_KEY);
    } else if (p->type == MG_ENCAP_VXLAN) {
        uint16_t sport = (uint16_t)(MG_VXLAN_SPORT_BASE +
                                    ((flow_hash ^ flow_hash >> 16) & MG_VXLAN_SPORT_MASK));
        put16(l4, sport);
        put16(l4 + 2, p->vxlan_port);
        put16(l4 + 4, (uint16_t)payload);
        put16(l4 + 6, 0);
        uint8_t *vx = l4 + 8;
        put32(vx, (uint32_t)MG_VXLAN_FLAG_I << 24);
        put32(vx + 4, p->vni << 8);
        uint8_t *ie = vx + 8;
        memcpy(ie, p->inner_eth_dst, 6);
        memcpy(ie + 6, p->inner_eth_src, 6);
        put16(ie + 12, inner_type);
        if (p->outer_family == 6) {
            /* pseudo-header (RFC 8200 8.1): src, dst, upper-layer length, next header */
            uint8_t ph[8] = {0};
            put32(ph, payload);
            ph[7] = 17;
            uint32_t s = mg_csum_add(0, ip + 8, 32);
            s = mg_csum_add(s, ph, 8);
            s = mg_csum_add(s, l4, payload);
            uint16_t c = mg_csum_fold(s);
            put16(l4 + 6, c ? c : 0xffff);
        }
    }
    m->data_off = off + l3_off - hdr;
    m->len = hdr + (uint32_t)l3len;
    return (int)m->len;
}
