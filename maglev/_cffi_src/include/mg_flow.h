/* The flow key: what steering hashes, what conntrack stores and compares in full.
 *
 * 40 bytes, always fully initialised (zero padding), so it can be hashed and compared
 * with memcmp.  IPv4 addresses sit in the first 4 bytes of src/dst, the other 12 bytes 0.
 * Ports are in network byte order; a 3-tuple key (fragments) has sport = dport = 0.
 * The flow hash is mg_siphash13(secret, key, sizeof key) -- see mg_hash.h.
 */
#ifndef MG_FLOW_H
#define MG_FLOW_H

#include "mg_common.h"

struct mg_flow_key {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;
    uint16_t dport;
    uint8_t proto;  /* IPPROTO_TCP, IPPROTO_UDP, ... */
    uint8_t family; /* 4 or 6 */
    uint8_t pad[2]; /* always 0 */
};

_Static_assert(sizeof(struct mg_flow_key) == 40, "flow key is 40 bytes");

#endif
