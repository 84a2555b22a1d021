/* ICMP path-MTU errors and inbound ICMP errors -- see include/mg_icmp.h. (In progress.) */
#include "mg_icmp.h"

int mg_ratelimit_init(struct mg_ratelimit *rl, uint32_t rate_per_s, uint32_t burst,
                      uint64_t now_ns)
{
    (void)rl; (void)rate_per_s; (void)burst; (void)now_ns;
    return -ENOSYS;
}

int mg_ratelimit_take(struct mg_ratelimit *rl, uint64_t now_ns)
{
    (void)rl; (void)now_ns;
    return -ENOSYS;
}

int mg_pmtu_check(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                  uint8_t l4_proto, uint32_t l4_off, uint32_t overhead, uint32_t mtu)
{
    (void)pkt; (void)len; (void)l3_off; (void)family; (void)l4_proto; (void)l4_off;
    (void)overhead; (void)mtu;
    return -ENOSYS;
}

int mg_icmp_too_big(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t family,
                    uint32_t mtu)
{
    (void)pool; (void)idx; (void)l3_off; (void)family; (void)mtu;
    return -ENOSYS;
}

int mg_icmp_quoted_flow(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                        uint32_t l4_off, struct mg_flow_key *out)
{
    (void)pkt; (void)len; (void)l3_off; (void)family; (void)l4_off; (void)out;
    return -ENOSYS;
}
