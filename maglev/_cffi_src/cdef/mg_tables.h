#define MG_TABLES_MAGIC 1112819533
#define MG_TABLES_VERSION 5
#define MG_TABLES_MAX_VIPS 4096
#define MG_TABLES_MAX_BACKENDS 65536
#define MG_VIP_F_ALLOW_FRAGMENTS 1
#define MG_VIP_F_HASH_SRC_IP 2
#define MG_VIP_F_HASH_DST_PORT 4
#define MG_VIP_F_UDP_NO_SPORT 8
#define MG_VIP_F_NO_CONNTRACK 16
#define MG_VIP_MAX_PRIORITY 7
#define MG_BACKEND_F_PRESENT 1
#define MG_BACKEND_F_HEALTHY 2

struct mg_tables_header {
    uint32_t magic;
    uint16_t version;
    uint16_t hdr_size;
    uint64_t total_size;
    uint64_t generation;
    uint64_t hash_k0;
    uint64_t hash_k1;
    uint32_t n_vips;
    uint32_t n_backends;
    uint32_t vip_off;
    uint32_t backend_off;
    uint32_t index_off;
    uint32_t index_bits;
    uint32_t tcp_timeout_ms;
    uint32_t udp_timeout_ms;
    uint8_t src4[4];
    uint8_t src6[16];
    uint8_t has_src4;
    uint8_t has_src6;
    uint16_t mtu;
    uint8_t own_mac[6];
    uint8_t gateway_mac[6];
    uint8_t inner_mac[6];
    uint16_t reserved0;
    uint32_t idmap_off;
    uint32_t idmap_bits;
    uint32_t pool_off;
    uint16_t n_pool;
    uint16_t pool_self;
    uint8_t pool_family;
    uint8_t n_clusters;
    uint8_t backup_cluster;
    uint8_t reserved1;
    uint32_t cluster_off;
    uint32_t fwd_off;
    uint16_t n_fwd;
    uint8_t reserved[14];
};

struct mg_vip {
    uint8_t addr[16];
    uint16_t port;
    uint8_t proto;
    uint8_t family;
    uint8_t encap;
    uint8_t flags;
    uint16_t vxlan_port;
    uint32_t vxlan_vni;
    uint32_t table_size;
    uint64_t table_off;
    uint32_t backend_first;
    uint32_t backend_count;
    uint32_t n_healthy;
    uint8_t priority;
    uint8_t reserved[3];
    uint32_t quic_off;
    uint16_t quic_n;
    uint8_t quic_sid_off;
    uint8_t quic_sid_len;
};

struct mg_quic_sid {
    uint64_t sid;
    uint32_t backend;
    uint32_t reserved;
};
#define MG_QUIC_MAX_SID_LEN 8
#define MG_QUIC_MAX_CID_LEN 20

struct mg_backend {
    uint8_t addr[16];
    uint8_t mac[6];
    uint8_t family;
    uint8_t flags;
    uint64_t id;
    uint16_t vip_index;
    uint16_t weight;
    uint32_t reserved;
};

int mg_tables_validate(const void *tables, uint64_t size);
int mg_tables_remap(int32_t *dst, const int32_t *src, uint32_t n, const int32_t *map,
                    uint32_t n_map);
int mg_tables_ids(uint64_t k0, uint64_t k1, const uint8_t *data, const uint32_t *offs,
                  uint32_t n, uint64_t *out);
int32_t mg_tables_backend_by_id(const void *tables, uint64_t id, int vip);
int mg_tables_select_key(const void *tables, int vip, struct mg_flow_key *k);
int mg_tables_lookup_vip(const void *tables, const uint8_t *addr16, uint16_t port_be,
                         uint8_t proto);

struct mg_cluster {
    uint8_t prefix6[16];
    uint8_t prefix4[4];
    uint8_t len4;
    uint8_t len6;
    uint8_t backup_rank;
    uint8_t reserved0;
    uint16_t fwd_first;
    uint16_t n_fwd;
    uint8_t reserved[4];
};
struct mg_cluster_fwd {
    uint8_t addr[16];
    uint8_t family;
    uint8_t reserved[7];
};
#define MG_TABLES_MAX_CLUSTERS 17
#define MG_TABLES_MAX_FWD 256
int mg_tables_cluster_match(const void *tables, const uint8_t *dst16, uint8_t family,
                            uint8_t *local16);
