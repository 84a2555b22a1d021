/* Packet parsing for the data path: Ethernet, 802.1Q / QinQ, IPv4 (with options), IPv6 with
 * its extension-header chain, TCP, UDP, ICMP, ICMPv6 (paper section 3.2: the packet thread
 * "parses the packet and matches it to a VIP").
 *
 * Contract: mg_parse reads only pkt[0 .. len-1] (len = captured bytes in the frame), never
 * more, whatever the headers claim.  It returns MG_OK (0) and fills *out, or a drop reason
 * (enum mg_drop, > 0) and leaves *out partially filled (only for diagnostics).
 *
 * Choices (documented in docs/datapath.md):
 *   - IPv4: version 4, IHL >= 5, header checksum verified, total length >= IHL*4 and
 *     <= captured bytes (padding after total length is allowed and ignored).  Options are
 *     walked (type 0 ends, type 1 is one byte, others need 2 <= length <= what is left)
 *     but not interpreted.  TTL 0 is dropped (`ttl`); maglev tunnels the packet and does
 *     not decrement TTL (the tunnel is one link).
 *   - IPv6: payload length 0 (jumbogram) is not supported (bad_ipv6_header); the chain
 *     hop-by-hop, routing, fragment, destination options and AH is followed, at most
 *     MG_PARSE_MAX_EXT headers; any other next header ends the chain (ESP, No Next Header,
 *     unknown protocols: proto = that value, no ports).  An atomic fragment (offset 0,
 *     M = 0; RFC 6946) is not a fragment.  Hop limit 0 is dropped (`ttl`).
 *   - Fragments: non-first fragments have no L4 header (l4_off = 0, ports 0); a first
 *     fragment must carry the whole TCP/UDP header or it is `truncated`.
 *   - TCP needs data offset >= 5 within the packet; UDP needs 8 bytes and a length
 *     field >= 8 (bad_l4_header otherwise).  L4 checksums are not verified (the backend does).
 *
 * Drop reasons are one X-macro list, so C and Python share names: Python reads them with
 * mg_drop_name(i) for i in 0..MG_DROP_COUNT-1 (no duplicated list).
 */
#ifndef MG_PARSE_H
#define MG_PARSE_H

#include "mg_common.h"
#include "mg_flow.h"

/* X(enum suffix, "name", "what it means") -- append only: values are part of the ABI the
 * counters and frame verdicts use. */
#define MG_DROP_LIST(X)                                                                    \
    X(NONE, "none", "not dropped")                                                         \
    X(TRUNCATED, "truncated", "headers or IP length run past the captured bytes")          \
    X(UNSUPPORTED_ETHERTYPE, "unsupported_ethertype", "not IPv4 or IPv6 (ARP, LLDP, ...)") \
    X(BAD_IPV4_HEADER, "bad_ipv4_header", "IPv4 version/IHL/length/options invalid")       \
    X(BAD_IPV4_CHECKSUM, "bad_ipv4_checksum", "IPv4 header checksum wrong")                \
    X(BAD_IPV6_HEADER, "bad_ipv6_header", "IPv6 version/length/extension chain invalid")   \
    X(BAD_L4_HEADER, "bad_l4_header", "TCP data offset or UDP length invalid")             \
    X(TTL, "ttl", "TTL or hop limit is 0")                                                 \
    X(NO_VIP, "no_vip", "no VIP matches (address, port, protocol)")                        \
    X(NO_BACKEND, "no_backend", "the VIP has no healthy backend")                          \
    X(FRAGMENT_NOT_ALLOWED, "fragment_not_allowed", "fragment for a VIP without allow_fragments") \
    X(FRAG_EXPIRED, "frag_expired", "held fragment whose first fragment never came")      \
    X(FRAG_EVICTED, "frag_evicted", "held fragment whose datagram entry was evicted")     \
    X(FRAG_TABLE_FULL, "frag_table_full", "no fragment-table way free for a new datagram") \
    X(FRAG_HOLD_LIMIT, "frag_hold_limit", "fragment hold limits (frames/bytes) reached")  \
    X(TOO_BIG, "too_big", "encapsulated packet would exceed the MTU")                      \
    X(NO_HEADROOM, "no_headroom", "not enough headroom to encapsulate")                    \
    X(FRAME_OVERFLOW, "frame_overflow", "packet larger than a frame")                      \
    X(UNSUPPORTED_LINKTYPE, "unsupported_linktype", "capture link type not supported")     \
    X(BAD_TABLES, "bad_tables", "tables blob missing or failed validation")                \
    X(NO_SOURCE_ADDRESS, "no_source_address", "no outer source address for the family")   \
    X(BAD_ICMP, "bad_icmp", "ICMP error whose quoted packet cannot be parsed")             \
    X(ICMP_RATE_LIMITED, "icmp_rate_limited", "too big, and the ICMP error was rate limited") \
    X(BAD_FRAME, "bad_frame", "frame metadata out of range (len/data_off)")              \
    X(NO_SPARE_FRAME, "no_spare_frame", "DF-clear packet needs splitting; no spare frames") \
    X(REDIRECT_FOREIGN, "redirect_foreign", "GRE to this instance from an address not in instance.pool") \
    X(REDIRECT_UNMARKED, "redirect_unmarked", "GRE to this instance without maglev's redirect key") \
    X(BAD_REDIRECT, "bad_redirect", "redirected packet malformed (outer fragment, GRE, inner type) or not a fragment") \
    X(BAD_CLUSTER_GRE, "bad_cluster_gre", "GRE from a peer cluster's forwarder malformed (outer or inner fragment, GRE flags, inner type)")

enum mg_drop {
#define MG_X_ENUM(sym, name, doc) MG_DROP_##sym,
    MG_DROP_LIST(MG_X_ENUM)
#undef MG_X_ENUM
    MG_DROP_COUNT
};

#define MG_OK 0

/* Most IPv6 extension headers followed before giving up (bad_ipv6_header). */
#define MG_PARSE_MAX_EXT 8
/* Most VLAN tags (802.1Q / 802.1ad) stripped. */
#define MG_PARSE_MAX_VLANS 2

/* mg_parsed.frag bits */
#define MG_PF_FRAGMENT 0x01 /* an IP fragment (not atomic) */
#define MG_PF_FIRST 0x02    /* fragment offset 0 */
#define MG_PF_MORE 0x04     /* MF / M flag */
#define MG_PF_DF 0x08       /* IPv4 don't-fragment */

struct mg_parsed {
    struct mg_flow_key key; /* 5-tuple, ports 0 when there is no L4 header */
    uint16_t l3_off;        /* IP header offset from the packet start */
    uint16_t l4_off;        /* L4 header offset; 0 = none parsed */
    uint16_t l3_len;        /* IP total length per the header (<= captured - l3_off) */
    uint16_t ethertype;     /* the innermost ethertype (0x0800 or 0x86dd when MG_OK) */
    uint16_t frag_off;      /* fragment offset in bytes */
    uint8_t proto;          /* final L4 protocol (equals key.proto) */
    uint8_t family;         /* 4 or 6 */
    uint8_t ttl;            /* TTL / hop limit */
    uint8_t vlans;          /* VLAN tags seen */
    uint8_t frag;           /* MG_PF_* */
    uint8_t tcp_flags;      /* TCP flags byte, 0 otherwise */
    uint32_t frag_id;       /* IPv4 id (16 bit) or IPv6 fragment id */
    uint8_t icmp_type;      /* ICMP/ICMPv6 type and code, 0 otherwise */
    uint8_t icmp_code;
    uint16_t reserved;
};

int mg_parse(const uint8_t *pkt, uint32_t len, struct mg_parsed *out);

/* The common frame without the general parser's walk: untagged Ethernet, IPv4 without
 * options, not a fragment, TTL > 0, checksum good, TCP (data offset within the packet) or
 * UDP (length field >= 8), the IP length within the captured bytes.  For such a frame it
 * fills *out exactly as mg_parse does (every field, the zeroes included) and returns 1,
 * after one length check (len >= 54: Ethernet + IPv4 + the longest fixed L4 header) and a
 * handful of compares on the first 48 bytes; for any other frame it returns 0 and writes
 * nothing, and the caller takes mg_parse.  The data path's burst kernel inlines it (the
 * decision never differs from mg_parse's: tests/datapath/test_parse_fast.py). */
static inline __attribute__((always_inline)) int
mg_parse_fast4(const uint8_t *pkt, uint32_t len, struct mg_parsed *out)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (MG_UNLIKELY(len < 14 + 20 + 20))
        return 0;
    uint16_t et;
    uint64_t q0, q1; /* IPv4 bytes 0-7 (version .. fragment), 8-15 (TTL .. source) */
    uint32_t dst, ports;
    memcpy(&et, pkt + 12, 2);
    memcpy(&q0, pkt + 14, 8);
    memcpy(&q1, pkt + 22, 8);
    memcpy(&dst, pkt + 30, 4);
    memcpy(&ports, pkt + 34, 4);
    /* Ethernet type 0x0800, version 4 with IHL 5, fragment bits (MF, offset) clear, TTL > 0 */
    if (et != 0x0008 || (uint8_t)q0 != 0x45 || (q0 & 0xff3f000000000000ull) || (uint8_t)q1 == 0)
        return 0;
    const uint32_t tot = __builtin_bswap16((uint16_t)(q0 >> 16));
    const uint8_t proto = (uint8_t)(q1 >> 8);
    const uint8_t *l4 = pkt + 34;
    const uint32_t room = tot - 20; /* wraps when tot < 20: then > 0xffff, refused below */
    if (tot > len - 14 || room > 0xffff)
        return 0;
    uint8_t tcp_flags = 0;
    if (proto == 6) {
        const uint32_t doff = (uint32_t)(l4[12] >> 4) * 4;
        if (room < 20 || doff < 20 || doff > room)
            return 0;
        tcp_flags = l4[13];
    } else if (proto == 17) {
        if (room < 8 || ((uint32_t)l4[4] << 8 | l4[5]) < 8)
            return 0;
    } else {
        return 0;
    }
    /* Header checksum: the five 32-bit words' sum folds (one's complement) to 0xffff
     * exactly when it is a non-zero multiple of 0xffff (2^16 = 1 mod 0xffff); it is
     * non-zero here, the first byte being 0x45. */
    const uint64_t sum = (q0 & 0xffffffffu) + (q0 >> 32) + (q1 & 0xffffffffu) + (q1 >> 32) + dst;
    if (sum % 0xffff != 0)
        return 0;
    /* The whole struct in eight 64-bit stores (little-endian field packing, checked by
     * the _Static_asserts below): what mg_parse writes for this frame, zeroes included. */
    uint64_t o[8];
    o[0] = q1 >> 32;                                            /* key.src: the address */
    o[1] = 0;
    o[2] = dst;                                                 /* key.dst */
    o[3] = 0;
    o[4] = (uint64_t)ports | (uint64_t)proto << 32 | 4ull << 40; /* ports, proto, family */
    o[5] = 14 | 34u << 16 | (uint64_t)tot << 32 | 0x0800ull << 48; /* l3_off, l4_off, l3_len, ethertype */
    o[6] = (uint64_t)proto << 16 | 4ull << 24 | (q1 & 0xff) << 32 | /* frag_off 0, proto, family, ttl */
           (uint64_t)((q0 >> 48) & 0x40 ? MG_PF_DF : 0) << 48 | (uint64_t)tcp_flags << 56;
    o[7] = __builtin_bswap16((uint16_t)(q0 >> 32));             /* frag_id; no ICMP type/code */
    memcpy(out, o, sizeof(o));
    return 1;
#else
    (void)pkt, (void)len, (void)out;
    return 0;
#endif
}
_Static_assert(sizeof(struct mg_parsed) == 64 && offsetof(struct mg_parsed, l3_off) == 40 &&
               offsetof(struct mg_parsed, l4_off) == 42 && offsetof(struct mg_parsed, l3_len) == 44 &&
               offsetof(struct mg_parsed, ethertype) == 46 && offsetof(struct mg_parsed, frag_off) == 48 &&
               offsetof(struct mg_parsed, proto) == 50 && offsetof(struct mg_parsed, family) == 51 &&
               offsetof(struct mg_parsed, ttl) == 52 && offsetof(struct mg_parsed, vlans) == 53 &&
               offsetof(struct mg_parsed, frag) == 54 && offsetof(struct mg_parsed, tcp_flags) == 55 &&
               offsetof(struct mg_parsed, frag_id) == 56 && offsetof(struct mg_parsed, icmp_type) == 60 &&
               offsetof(struct mg_parsed, key.sport) == 32 && offsetof(struct mg_parsed, key.proto) == 36 &&
               offsetof(struct mg_parsed, key.family) == 37,
               "mg_parse_fast4 writes struct mg_parsed as eight 64-bit words");

/* The fast path alone, out of line (for the differential tests): 1 = handled. */
int mg_parse_fast(const uint8_t *pkt, uint32_t len, struct mg_parsed *out);
/* The same for an IP packet starting at pkt[off] (no link layer: the inner packet of an
 * IP-in-IP or GRE tunnel); the version nibble picks IPv4 or IPv6. */
int mg_parse_ip(const uint8_t *pkt, uint32_t len, uint32_t off, struct mg_parsed *out);

/* Names of drop reasons: "" for an out-of-range value. */
const char *mg_drop_name(int reason);
const char *mg_drop_doc(int reason);

/* One's-complement 16-bit checksum helper used by parse and by tests. */
uint16_t mg_ip_checksum(const uint8_t *p, uint32_t len);

#endif
