/* The Internet checksum (RFC 1071), the one implementation every C module uses (parser
 * check helper, encapsulation, ICMP, fragment split, AF_PACKET checksum repair, packet
 * generator).  The Python side has one too, for the references and the test packets:
 * maglev/datapath/ref_csum.py. */
#ifndef MG_CSUM_H
#define MG_CSUM_H

#include "mg_common.h"

/* Defined here, static inline: the callers sum short headers of a length known at the
 * call site (20 bytes of IPv4 header), which the compiler then unrolls -- as a call into
 * another translation unit it cost the forward path ~60 instructions per packet
 * (bench/callgrind_dp.py).
 *
 * mg_csum_add: one's-complement running sum of big-endian 16-bit words, added to `sum`
 * and folded to 16 bits; a trailing odd byte is padded with a zero byte, so chain calls
 * only on even-length pieces (an odd piece may come last).
 * mg_csum_fold: fold to 16 bits and complement: the value to store in a checksum field. */
static inline uint32_t mg_csum_add(uint32_t sum, const uint8_t *data, size_t len)
{
    /* RFC 1071 one's-complement sum of big-endian 16-bit words; a trailing odd byte is
     * padded with a zero byte.  Callers chain calls only on even-length pieces.
     * Speed (VXLAN over IPv6 sums the whole packet): add native-order 32-bit words into a
     * 64-bit accumulator, fold, then swap bytes on a little-endian host -- the sum is
     * byte-order independent (RFC 1071 section 2(B)), so this equals the big-endian sum. */
    uint64_t acc = 0;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, data, 8);
        acc += (w & 0xffffffffu) + (w >> 32);
        data += 8;
        len -= 8;
    }
    while (len >= 2) {
        uint16_t w;
        memcpy(&w, data, 2);
        acc += w;
        data += 2;
        len -= 2;
    }
    if (len) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        acc += (uint32_t)data[0] << 8;
#else
        acc += data[0];
#endif
    }
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
#if __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__
    acc = (uint16_t)((acc >> 8) | (acc << 8));
#endif
    acc += sum;
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint32_t)acc;
}

static inline uint16_t mg_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

#endif
