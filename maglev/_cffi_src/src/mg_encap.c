/* Encapsulation in place -- see include/mg_encap.h.  (Implementation in progress.) */
#include "mg_encap.h"

int mg_encap_overhead(uint8_t type, uint8_t outer_family)
{
    (void)type; (void)outer_family;
    return -ENOSYS;
}

int mg_encap(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t inner_family,
             uint32_t flow_hash, const struct mg_encap_params *params)
{
    (void)pool; (void)idx; (void)l3_off; (void)inner_family; (void)flow_hash; (void)params;
    return -ENOSYS;
}

uint32_t mg_csum_add(uint32_t sum, const uint8_t *data, size_t len)
{
    (void)data; (void)len;
    return sum;
}

uint16_t mg_csum_fold(uint32_t sum)
{
    (void)sum;
    return 0;
}
