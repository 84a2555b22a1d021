#define MG_PMTU_FITS 0
#define MG_PMTU_ICMP 1
#define MG_PMTU_FRAGMENT 2
#define MG_PMTU_DROP 3
#define MG_ICMP4_ERROR_MAX 576
#define MG_ICMP6_ERROR_MAX 1280
#define MG_ICMP_RATE_PER_S 1000
#define MG_ICMP_BURST 50
#define MG_QUOTE_5TUPLE 0
#define MG_QUOTE_3TUPLE 1

struct mg_ratelimit {
    uint64_t last_ns;
    uint64_t credit_ns;
    uint64_t cost_ns;
    uint64_t cap_ns;
};

int mg_ratelimit_init(struct mg_ratelimit *rl, uint32_t rate_per_s, uint32_t burst,
                      uint64_t now_ns);
int mg_ratelimit_take(struct mg_ratelimit *rl, uint64_t now_ns);
int mg_pmtu_check(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                  uint8_t l4_proto, uint32_t l4_off, uint32_t overhead, uint32_t mtu);
int mg_icmp_too_big(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t family,
                    uint32_t mtu);
int mg_icmp_quoted_flow(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                        uint32_t l4_off, struct mg_flow_key *out);
