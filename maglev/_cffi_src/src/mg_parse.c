/* Packet parser; the contract and the choices are in include/mg_parse.h.
 *
 * Every read is preceded by a bounds check against `len`; offsets are kept in uint32_t so
 * header-claimed lengths cannot wrap.  The Python reference (maglev/datapath/reference.py,
 * `parse`) states the same rules line by line and the differential tests compare them. */
#include "mg_parse.h"

#include "mg_csum.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86dd
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8

static const char *const drop_names[] = {
#define MG_X_NAME(sym, name, doc) name,
    MG_DROP_LIST(MG_X_NAME)
#undef MG_X_NAME
};

static const char *const drop_docs[] = {
#define MG_X_DOC(sym, name, doc) doc,
    MG_DROP_LIST(MG_X_DOC)
#undef MG_X_DOC
};

const char *mg_drop_name(int reason)
{
    return (reason >= 0 && reason < MG_DROP_COUNT) ? drop_names[reason] : "";
}

const char *mg_drop_doc(int reason)
{
    return (reason >= 0 && reason < MG_DROP_COUNT) ? drop_docs[reason] : "";
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

uint16_t mg_ip_checksum(const uint8_t *p, uint32_t len)
{
    return mg_csum_fold(mg_csum_add(0, p, len));
}

/* IPv4 header checksum check, 32 bits at a time (ihl is a multiple of 4).  The one's-
 * complement sum is byte-order independent, so native loads are fine: a correct header
 * sums to 0xffff. */
static inline int ipv4_csum_ok(const uint8_t *ip, uint32_t ihl)
{
    uint64_t sum = 0;
    if (MG_LIKELY(ihl == 20)) { /* no options (nearly every packet): five loads, no loop */
        uint32_t w[5];
        memcpy(w, ip, 20);
        sum = (uint64_t)w[0] + w[1] + w[2] + w[3] + w[4];
        ihl = 0;
    }
    for (uint32_t i = 0; i < ihl; i += 4) {
        uint32_t w;
        memcpy(&w, ip + i, 4);
        sum += w;
    }
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return sum == 0xffff;
}

/* Walk IPv4 options: type 0 (end) stops, type 1 (NOP) is one byte, every other option has
 * a length byte 2..remaining. */
static int ipv4_options_ok(const uint8_t *o, uint32_t n)
{
    uint32_t i = 0;
    while (i < n) {
        uint8_t t = o[i];
        if (t == 0)
            return 1;
        if (t == 1) {
            i++;
            continue;
        }
        if (i + 1 >= n)
            return 0;
        uint8_t l = o[i + 1];
        if (l < 2 || l > n - i)
            return 0;
        i += l;
    }
    return 1;
}

/* L4 ports / flags from offset off (the IP payload start) up to end (exclusive). */
static inline __attribute__((always_inline)) int parse_l4(const uint8_t *pkt, uint32_t off, uint32_t end, struct mg_parsed *out)
{
    uint8_t proto = out->proto;
    if (proto == 6) { /* TCP */
        if (end - off < 20)
            return MG_DROP_TRUNCATED;
        uint32_t doff = (uint32_t)(pkt[off + 12] >> 4) * 4;
        if (doff < 20)
            return MG_DROP_BAD_L4_HEADER;
        if (doff > end - off)
            return MG_DROP_TRUNCATED;
        memcpy(&out->key.sport, pkt + off, 2);
        memcpy(&out->key.dport, pkt + off + 2, 2);
        out->tcp_flags = pkt[off + 13];
        out->l4_off = (uint16_t)off;
    } else if (proto == 17) { /* UDP */
        if (end - off < 8)
            return MG_DROP_TRUNCATED;
        if (rd16(pkt + off + 4) < 8)
            return MG_DROP_BAD_L4_HEADER;
        memcpy(&out->key.sport, pkt + off, 2);
        memcpy(&out->key.dport, pkt + off + 2, 2);
        out->l4_off = (uint16_t)off;
    } else if (proto == 1 || proto == 58) { /* ICMP, ICMPv6: type, code, checksum */
        if (end - off < 4)
            return MG_DROP_TRUNCATED;
        out->icmp_type = pkt[off];
        out->icmp_code = pkt[off + 1];
        out->l4_off = (uint16_t)off;
    }
    return MG_OK;
}

static inline __attribute__((always_inline)) int parse_ipv4(const uint8_t *pkt, uint32_t len, uint32_t off, struct mg_parsed *out)
{
    if (len - off < 20)
        return MG_DROP_TRUNCATED;
    const uint8_t *ip = pkt + off;
    if ((ip[0] >> 4) != 4)
        return MG_DROP_BAD_IPV4_HEADER;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
    if (ihl < 20)
        return MG_DROP_BAD_IPV4_HEADER;
    if (ihl > len - off)
        return MG_DROP_TRUNCATED;
    uint32_t tot = rd16(ip + 2);
    if (tot < ihl)
        return MG_DROP_BAD_IPV4_HEADER;
    if (tot > len - off)
        return MG_DROP_TRUNCATED;
    if (!ipv4_csum_ok(ip, ihl))
        return MG_DROP_BAD_IPV4_CHECKSUM;
    if (ihl > 20 && !ipv4_options_ok(ip + 20, ihl - 20))
        return MG_DROP_BAD_IPV4_HEADER;
    out->family = 4;
    out->key.family = 4;
    out->l3_len = (uint16_t)tot;
    out->ttl = ip[8];
    out->proto = ip[9];
    out->key.proto = ip[9];
    memcpy(out->key.src, ip + 12, 4);
    memcpy(out->key.dst, ip + 16, 4);
    uint16_t fo = rd16(ip + 6);
    out->frag_id = rd16(ip + 4);
    if (fo & 0x4000)
        out->frag |= MG_PF_DF;
    if (fo & 0x3fff) {
        out->frag |= MG_PF_FRAGMENT;
        out->frag_off = (uint16_t)((fo & 0x1fff) * 8);
        if (fo & 0x2000)
            out->frag |= MG_PF_MORE;
        if ((fo & 0x1fff) == 0)
            out->frag |= MG_PF_FIRST;
    }
    if (out->ttl == 0)
        return MG_DROP_TTL;
    if ((out->frag & MG_PF_FRAGMENT) && !(out->frag & MG_PF_FIRST))
        return MG_OK; /* no L4 header in a non-first fragment */
    return parse_l4(pkt, off + ihl, off + tot, out);
}

static int parse_ipv6(const uint8_t *pkt, uint32_t len, uint32_t off, struct mg_parsed *out)
{
    if (len - off < 40)
        return MG_DROP_TRUNCATED;
    const uint8_t *ip = pkt + off;
    if ((ip[0] >> 4) != 6)
        return MG_DROP_BAD_IPV6_HEADER;
    uint32_t plen = rd16(ip + 4);
    if (plen == 0)
        return MG_DROP_BAD_IPV6_HEADER; /* jumbograms are not supported */
    if (plen > len - off - 40)
        return MG_DROP_TRUNCATED;
    uint32_t end = off + 40 + plen;
    out->family = 6;
    out->key.family = 6;
    out->l3_len = (uint16_t)(40 + plen);
    out->ttl = ip[7];
    memcpy(out->key.src, ip + 8, 16);
    memcpy(out->key.dst, ip + 24, 16);
    uint8_t nh = ip[6];
    uint32_t p = off + 40;
    int n_ext = 0;
    int seen_frag = 0;
    for (;;) {
        if (nh == 0 && p != off + 40)
            return MG_DROP_BAD_IPV6_HEADER; /* hop-by-hop only right after the header */
        if (nh == 0 || nh == 43 || nh == 60) {
            if (end - p < 8)
                return MG_DROP_TRUNCATED;
            uint32_t hl = ((uint32_t)pkt[p + 1] + 1) * 8;
            if (hl > end - p)
                return MG_DROP_TRUNCATED;
            nh = pkt[p];
            p += hl;
        } else if (nh == 51) { /* AH: length in 4-octet units minus 2 */
            if (end - p < 8)
                return MG_DROP_TRUNCATED;
            uint32_t hl = ((uint32_t)pkt[p + 1] + 2) * 4;
            if (hl > end - p)
                return MG_DROP_TRUNCATED;
            nh = pkt[p];
            p += hl;
        } else if (nh == 44) { /* fragment header, 8 bytes */
            if (end - p < 8)
                return MG_DROP_TRUNCATED;
            if (seen_frag)
                return MG_DROP_BAD_IPV6_HEADER;
            seen_frag = 1;
            uint16_t fo = rd16(pkt + p + 2);
            uint32_t id = rd32(pkt + p + 4);
            nh = pkt[p];
            p += 8;
            if ((fo & 0xfff8) || (fo & 1)) { /* not an atomic fragment */
                out->frag |= MG_PF_FRAGMENT;
                out->frag_off = (uint16_t)(fo & 0xfff8);
                out->frag_id = id;
                if (fo & 1)
                    out->frag |= MG_PF_MORE;
                if ((fo & 0xfff8) == 0)
                    out->frag |= MG_PF_FIRST;
            }
        } else {
            break;
        }
        if (++n_ext > MG_PARSE_MAX_EXT)
            return MG_DROP_BAD_IPV6_HEADER;
        if ((out->frag & MG_PF_FRAGMENT) && !(out->frag & MG_PF_FIRST))
            break; /* what follows a non-first fragment header is payload */
    }
    out->proto = nh;
    out->key.proto = nh;
    if (out->ttl == 0)
        return MG_DROP_TTL;
    if ((out->frag & MG_PF_FRAGMENT) && !(out->frag & MG_PF_FIRST))
        return MG_OK;
    return parse_l4(pkt, p, end, out);
}

int mg_parse(const uint8_t *pkt, uint32_t len, struct mg_parsed *out)
{
    memset(out, 0, sizeof(*out));
    if (len < ETH_HLEN)
        return MG_DROP_TRUNCATED;
    uint32_t off = 12;
    uint16_t et = rd16(pkt + off);
    /* 802.1ad S-tag and 802.1Q C-tags, at most MG_PARSE_MAX_VLANS. */
    while (et == ETH_P_8021Q || et == ETH_P_8021AD) {
        if (out->vlans >= MG_PARSE_MAX_VLANS)
            return MG_DROP_UNSUPPORTED_ETHERTYPE;
        if (len - off < 6)
            return MG_DROP_TRUNCATED;
        out->vlans++;
        off += 4;
        et = rd16(pkt + off);
    }
    off += 2;
    out->ethertype = et;
    out->l3_off = (uint16_t)off;
    if (et == ETH_P_IP)
        return parse_ipv4(pkt, len, off, out);
    if (et == ETH_P_IPV6)
        return parse_ipv6(pkt, len, off, out);
    return MG_DROP_UNSUPPORTED_ETHERTYPE;
}

int mg_parse_ip(const uint8_t *pkt, uint32_t len, uint32_t off, struct mg_parsed *out)
{
    memset(out, 0, sizeof(*out));
    if (off >= len)
        return MG_DROP_TRUNCATED;
    out->l3_off = (uint16_t)off;
    if (pkt[off] >> 4 == 4) {
        out->ethertype = ETH_P_IP;
        return parse_ipv4(pkt, len, off, out);
    }
    if (pkt[off] >> 4 == 6) {
        out->ethertype = ETH_P_IPV6;
        return parse_ipv6(pkt, len, off, out);
    }
    return MG_DROP_UNSUPPORTED_ETHERTYPE;
}

int mg_parse_fast(const uint8_t *pkt, uint32_t len, struct mg_parsed *out)
{
    return mg_parse_fast4(pkt, len, out);
}
