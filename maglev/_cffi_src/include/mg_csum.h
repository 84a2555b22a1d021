/* The Internet checksum (RFC 1071), the one implementation every C module uses (parser
 * check helper, encapsulation, ICMP, fragment split, AF_PACKET checksum repair, packet
 * generator).  The Python side has one too, for the references and the test packets:
 * maglev/datapath/ref_csum.py. */
#ifndef MG_CSUM_H
#define MG_CSUM_H

#include "mg_common.h"

/* One's-complement running sum of big-endian 16-bit words, added to `sum` and folded to
 * 16 bits; a trailing odd byte is padded with a zero byte, so chain calls only on
 * even-length pieces (an odd piece may come last). */
uint32_t mg_csum_add(uint32_t sum, const uint8_t *data, size_t len);
/* Fold to 16 bits and complement: the value to store in a checksum field. */
uint16_t mg_csum_fold(uint32_t sum);

#endif
