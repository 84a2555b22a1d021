#define MG_ENCAP_GRE 0
#define MG_ENCAP_IPIP 1
#define MG_ENCAP_VXLAN 2
#define MG_ENCAP_L2 3
#define MG_ENCAP_GRE_REDIRECT 4
#define MG_GRE_F_KEY 8192
#define MG_REDIRECT_GRE_KEY 1296518230
#define MG_ENCAP_TTL 64
#define MG_VXLAN_DEFAULT_PORT 4789
#define MG_VXLAN_FLAG_I 8
#define MG_VXLAN_SPORT_BASE 49152
#define MG_VXLAN_SPORT_MASK 16383

struct mg_encap_params {
    uint8_t type;
    uint8_t outer_family;
    uint16_t vxlan_port;
    uint32_t vni;
    uint8_t eth_src[6];
    uint8_t eth_dst[6];
    uint8_t inner_eth_src[6];
    uint8_t inner_eth_dst[6];
    uint8_t src[16];
    uint8_t dst[16];
};

int mg_encap_overhead(uint8_t type, uint8_t outer_family);
int mg_encap(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t inner_family,
             uint32_t flow_hash, const struct mg_encap_params *params);
int mg_l3_len(const uint8_t *l3, uint32_t avail, uint8_t family);
