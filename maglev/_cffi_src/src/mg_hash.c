/* SipHash-1-3, written from the SipHash paper's description (section 2). */
#include "mg_hash.h"

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

uint64_t mg_siphash13(uint64_t k0, uint64_t k1, const uint8_t *data, size_t len)
{
    MG_SIP_INIT(v0, v1, v2, v3, k0, k1);
    const uint8_t *end = data + (len & ~(size_t)7);
    for (const uint8_t *p = data; p != end; p += 8)
        MG_SIP_WORD(v0, v1, v2, v3, load_le64(p));
    uint64_t b = ((uint64_t)len) << 56;
    switch (len & 7) {
    case 7: b |= ((uint64_t)end[6]) << 48; /* fall through */
    case 6: b |= ((uint64_t)end[5]) << 40; /* fall through */
    case 5: b |= ((uint64_t)end[4]) << 32; /* fall through */
    case 4: b |= ((uint64_t)end[3]) << 24; /* fall through */
    case 3: b |= ((uint64_t)end[2]) << 16; /* fall through */
    case 2: b |= ((uint64_t)end[1]) << 8;  /* fall through */
    case 1: b |= ((uint64_t)end[0]); break;
    case 0: break;
    }
    MG_SIP_FINISH(v0, v1, v2, v3, b);
    return v0;
}
