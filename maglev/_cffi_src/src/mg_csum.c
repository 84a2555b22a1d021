/* The Internet checksum (RFC 1071): the one implementation of the extension; the
 * contract is in include/mg_csum.h. */
#include "mg_csum.h"

#include <string.h>

uint32_t mg_csum_add(uint32_t sum, const uint8_t *data, size_t len)
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

uint16_t mg_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}
