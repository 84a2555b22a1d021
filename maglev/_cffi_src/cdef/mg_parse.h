#define MG_DROP_COUNT ...
#define MG_OK 0
#define MG_PARSE_MAX_EXT 8
#define MG_PARSE_MAX_VLANS 2
#define MG_PF_FRAGMENT 1
#define MG_PF_FIRST 2
#define MG_PF_MORE 4
#define MG_PF_DF 8

struct mg_parsed {
    struct mg_flow_key key;
    uint16_t l3_off;
    uint16_t l4_off;
    uint16_t l3_len;
    uint16_t ethertype;
    uint16_t frag_off;
    uint8_t proto;
    uint8_t family;
    uint8_t ttl;
    uint8_t vlans;
    uint8_t frag;
    uint8_t tcp_flags;
    uint32_t frag_id;
    uint8_t icmp_type;
    uint8_t icmp_code;
    uint16_t reserved;
};

int mg_parse(const uint8_t *pkt, uint32_t len, struct mg_parsed *out);
int mg_parse_fast(const uint8_t *pkt, uint32_t len, struct mg_parsed *out);
int mg_parse_ip(const uint8_t *pkt, uint32_t len, uint32_t off, struct mg_parsed *out);
const char *mg_drop_name(int reason);
const char *mg_drop_doc(int reason);
uint16_t mg_ip_checksum(const uint8_t *p, uint32_t len);
