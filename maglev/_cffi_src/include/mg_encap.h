/* Encapsulation toward a backend, in place, in a pool frame (see mg_frame.h).
 *
 * Input: a received frame whose packet starts with Ethernet (optionally 802.1Q tags);
 * the parser found the L3 header at `l3_off` bytes into the packet and its family.
 * Output: the same frame with data_off lowered and len changed; the L3 packet itself is
 * never copied.  The original L2 header (and any VLAN tags) is dropped and replaced by:
 *
 *   GRE   (RFC 2784)  eth | IPv4/IPv6 (proto 47) | GRE 4 B (proto 0x0800/0x86DD) | inner
 *   IPIP  (RFC 2003, RFC 2473, RFC 4213)
 *                     eth | IPv4/IPv6 (proto 4 for inner IPv4, 41 for inner IPv6) | inner
 *   VXLAN (RFC 7348)  eth | IPv4/IPv6 (proto 17) | UDP 8 B | VXLAN 8 B | inner eth 14 B | inner
 *   L2    (DSR)       the packet is unchanged except Ethernet dst = backend MAC and
 *                     src = ours (VLAN tags kept: the backend is on the same segment)
 *
 * Outer IP header (every type but L2):
 *   - source = params->src (instance source_ipv4/6), destination = params->dst (backend);
 *   - TTL / hop limit MG_ENCAP_TTL (64);
 *   - TOS / traffic class copied from the inner packet (DSCP and ECN, RFC 2983 "uniform");
 *   - IPv4: DF set when the inner packet is IPv6 or IPv4 with DF set; DF clear when the
 *     inner IPv4 packet has DF clear (so a later hop may still fragment the outer
 *     packet, as it could have fragmented the inner one).  ID = the inner IPv4 ID, 0 for
 *     IPv6 inner.  Header checksum computed.
 *   - IPv6: flow label = flow_hash & 0xfffff (ECMP entropy, RFC 6438), payload length set.
 * VXLAN: UDP source port = 49152 + ((flow_hash ^ flow_hash >> 16) & 0x3fff) (entropy for
 * ECMP, RFC 7348 section 5), destination port params->vxlan_port, VNI params->vni, I flag
 * set.  UDP checksum 0 over IPv4 (RFC 7348), computed over IPv6 (RFC 8200 8.1); the inner
 * Ethernet header is dst = params->inner_eth_dst, src = params->inner_eth_src, ethertype
 * by the inner family, no VLAN tag.
 *
 * Padding: the inner L3 packet is taken as long as its own length field says (IPv4 total
 * length, IPv6 40 + payload length); Ethernet padding after it is dropped.  A length
 * field larger than the captured bytes is -EINVAL (the parser should have dropped it).
 *
 * Return: the new packet length (> 0), or
 *   -ENOSPC   not enough headroom in front of the packet (nothing written);
 *   -EINVAL   bad parameters (unknown type, family not 4/6, l3_off beyond the packet,
 *             IP length field inconsistent, IPv6 jumbogram) (nothing written).
 * Nothing outside [frame + MG_FRAME_META_SIZE, frame + MG_FRAME_SIZE) is ever written.
 * MTU is not checked here: call mg_pmtu_check() (mg_icmp.h) first, with
 * mg_encap_overhead() of the same type and outer family.
 */
#ifndef MG_ENCAP_H
#define MG_ENCAP_H

#include "mg_common.h"
#include "mg_csum.h"
#include "mg_frame.h"

#define MG_ENCAP_GRE 0
#define MG_ENCAP_IPIP 1
#define MG_ENCAP_VXLAN 2
#define MG_ENCAP_L2 3
/* Fragment redirection between maglev instances (mg_dp.h, paper 4.3), never a VIP's
 * encapsulation: GRE (RFC 2784) with the key present (RFC 2890) and the key
 * MG_REDIRECT_GRE_KEY ("MGLV"), the marker that says "redirected by maglev, never
 * redirect again":  eth | IPv4/IPv6 (proto 47) | GRE 8 B (0x2000, inner ethertype,
 * key) | inner.  Overhead 28/48. */
#define MG_ENCAP_GRE_REDIRECT 4
#define MG_GRE_F_KEY 0x2000
#define MG_REDIRECT_GRE_KEY 0x4d474c56u

/* TTL / hop limit of every outer header we build (encapsulation and ICMP errors). */
#define MG_ENCAP_TTL 64
/* VXLAN: default UDP destination port (IANA, RFC 7348) and the I flag. */
#define MG_VXLAN_DEFAULT_PORT 4789
#define MG_VXLAN_FLAG_I 0x08
/* VXLAN UDP source ports are drawn from 49152..65535 (RFC 7348 section 5). */
#define MG_VXLAN_SPORT_BASE 49152
#define MG_VXLAN_SPORT_MASK 0x3fff

/* Everything that is constant for a (VIP, backend) pair; the worker keeps one per backend. */
struct mg_encap_params {
    uint8_t type;             /* MG_ENCAP_* */
    uint8_t outer_family;     /* 4 or 6: family of src/dst (ignored for L2) */
    uint16_t vxlan_port;      /* VXLAN UDP destination port, host byte order */
    uint32_t vni;             /* VXLAN network identifier, 24 bits */
    uint8_t eth_src[6];       /* outer Ethernet source (our interface) */
    uint8_t eth_dst[6];       /* outer Ethernet destination (next hop; backend for L2) */
    uint8_t inner_eth_src[6]; /* VXLAN inner Ethernet source */
    uint8_t inner_eth_dst[6]; /* VXLAN inner Ethernet destination (backend vxlan dev MAC) */
    uint8_t src[16];          /* outer IP source; IPv4 in the first 4 bytes */
    uint8_t dst[16];          /* outer IP destination (the backend) */
};

/* Bytes the encapsulation adds to the L3 packet (outer Ethernet not counted), i.e. what
 * the L3 packet grows by on a link whose MTU is `mtu`: GRE 24/44, IPIP 20/40,
 * VXLAN 50/70 (IPv4/IPv6 outer), L2 0.  -EINVAL for an unknown type or family. */
int mg_encap_overhead(uint8_t type, uint8_t outer_family);

/* Encapsulate frame `idx` of `pool` in place (see the comment at the top). */
int mg_encap(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t inner_family,
             uint32_t flow_hash, const struct mg_encap_params *params);


/* GRE (no key) in IPv4 around an IPv4 packet -- the data path's common case -- as one
 * inline block: the 38 bytes (outer Ethernet, outer IPv4, GRE) are written in front of
 * `l3` (an IPv4 header whose total length is `l3len`); the caller has checked the headroom
 * (14 + MG_ENCAP_GRE4_OVH bytes before l3 inside the frame's data area).  eth_dst/eth_src
 * may point into the frame's old Ethernet header, which the new block overwrites: they
 * are read first.  Fields as mg_encap describes (TOS, ID and DF from the inner header,
 * TTL 64, checksum); mg_encap uses this for the same case, so both paths write the same
 * bytes.  Stores are whole 16/32-bit words in network order, and the checksum is summed
 * over native 32-bit words (RFC 1071's sum is byte-order independent). */
#define MG_ENCAP_GRE4_OVH 24

static inline uint16_t mg_be16(uint16_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return v;
#else
    return __builtin_bswap16(v);
#endif
}

static inline __attribute__((always_inline)) void
mg_encap_gre4_write(uint8_t *l3, uint32_t l3len, const uint8_t *eth_dst, const uint8_t *eth_src,
                    const uint8_t *src4, const uint8_t *dst4)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* Little-endian hosts: the header is built in five 32-bit words in registers and
     * stored with the MACs in nine stores.  Checksum: the five words' sum (non-zero: the first byte is
     * 0x45) folds in one's complement to r = sum mod 0xffff, or 0xffff when that is 0
     * (2^16 = 1 mod 0xffff), and the field is ~r -- the same 16 bits as the fold below. */
    uint32_t d4, s4, w0, w1, a, b;
    uint16_t d2, s2;
    memcpy(&d4, eth_dst, 4); /* read before anything is written: they may overlap */
    memcpy(&d2, eth_dst + 4, 2);
    memcpy(&s4, eth_src, 4);
    memcpy(&s2, eth_src + 4, 2);
    memcpy(&w0, l3, 4);
    memcpy(&w1, l3 + 4, 4);
    memcpy(&a, src4, 4);
    memcpy(&b, dst4, 4);
    w0 = 0x45u | (w0 & 0xff00u) | (uint32_t)__builtin_bswap16((uint16_t)(20 + 4 + l3len)) << 16;
    w1 &= 0x0040ffffu; /* ID; of the fragment word only DF (MF, offset clear) */
    const uint32_t w2 = MG_ENCAP_TTL | 47u << 8;
    const uint32_t r = (uint32_t)(((uint64_t)w0 + w1 + w2 + a + b) % 0xffff);
    const uint32_t csum = r ? 0xffffu - r : 0;
    uint8_t *h = l3 - 14 - MG_ENCAP_GRE4_OVH;
    const uint16_t et = 0x0008; /* 0x0800 in network order */
    const uint64_t q0 = (uint64_t)w0 | (uint64_t)w1 << 32, q1 = (uint64_t)a | (uint64_t)b << 32;
    const uint32_t w2c = w2 | csum << 16, gre = 0x00080000u; /* GRE: no flags, type 0x0800 */
    memcpy(h, &d4, 4);
    memcpy(h + 4, &d2, 2);
    memcpy(h + 6, &s4, 4);
    memcpy(h + 10, &s2, 2);
    memcpy(h + 12, &et, 2);
    memcpy(h + 14, &q0, 8);
    memcpy(h + 22, &w2c, 4);
    memcpy(h + 26, &q1, 8);
    memcpy(h + 34, &gre, 4);
#else
    uint8_t macs[12];
    memcpy(macs, eth_dst, 6);
    memcpy(macs + 6, eth_src, 6);
    uint8_t tos = l3[1];
    uint16_t id, fo; /* network order, copied as they are */
    memcpy(&id, l3 + 4, 2);
    memcpy(&fo, l3 + 6, 2);
    fo &= mg_be16(0x4000); /* DF kept, everything else (MF, offset) clear */
    uint8_t *h = l3 - 14 - MG_ENCAP_GRE4_OVH;
    uint8_t *ip = h + 14;
    memcpy(h, macs, 12);
    uint16_t w16 = mg_be16(0x0800);
    memcpy(h + 12, &w16, 2);
    uint16_t f[10];
    f[0] = mg_be16((uint16_t)(0x4500 | tos));
    f[1] = mg_be16((uint16_t)(20 + 4 + l3len));
    f[2] = id;
    f[3] = fo;
    f[4] = mg_be16((uint16_t)(MG_ENCAP_TTL << 8 | 47));
    f[5] = 0;
    memcpy(&f[6], src4, 4);
    memcpy(&f[8], dst4, 4);
    uint32_t s = (uint32_t)f[0] + f[1] + f[2] + f[3] + f[4] + f[6] + f[7] + f[8] + f[9];
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    f[5] = (uint16_t)~s;
    memcpy(ip, f, 20);
    uint32_t gre = 0;
    uint16_t et = mg_be16(0x0800);
    memcpy((uint8_t *)&gre + 2, &et, 2);
    memcpy(ip + 20, &gre, 4);
#endif
}

/* Length of the L3 packet at l3 (`avail` captured bytes) from its own header: IPv4 total
 * length, IPv6 40 + payload length.  -EINVAL when the header is not of `family`, is cut,
 * or claims more than `avail` (or is an IPv6 jumbogram).  Shared with mg_icmp.c. */
int mg_l3_len(const uint8_t *l3, uint32_t avail, uint8_t family);

#endif
