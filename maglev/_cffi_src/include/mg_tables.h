/* The tables blob: everything a packet worker needs to forward, in one position-independent
 * block of bytes (offsets, never pointers), so it can live in shared memory mapped at any
 * address in any process.  Written only by the Python builder
 * (maglev.datapath.tables.build_tables); read by the burst kernel and by tests.
 *
 *   [mg_tables_header][mg_vip x n_vips][mg_backend x n_backends][index u32 x 2^index_bits]
 *   [id map u32 x 2^idmap_bits][maglev table of VIP 0 (int32 x size)][maglev table of VIP 1]...
 *
 * All offsets are from the start of the blob and 8-byte aligned; multi-byte integers are
 * host byte order except the fields marked "network order" (compared against packet bytes).
 *
 * Backends: one entry per (VIP, backend) pair, grouped by VIP (backend_first ..
 * backend_first + backend_count).  A Maglev entry is an index into that global array or
 * -1.  Unhealthy backends stay in the array with MG_BACKEND_F_HEALTHY clear and are left
 * out of the Maglev table, so established flows to them are re-selected while flows to
 * weight-0 (draining) backends continue.
 *
 * Backend identity: `id` is a 64-bit SipHash of (VIP key, backend key) under a fixed key
 * (maglev.datapath.tables.backend_id), the same in every rebuild and on every instance.
 * Indices are not stable -- removing a backend shifts every later entry -- so the
 * connection table stores (index, id): the index is a hint trusted only while
 * backends[index] still carries the id; otherwise the backend is found again through the
 * id map and the entry follows it.  Only a backend that is gone (no longer in the map for
 * that VIP) or unhealthy makes a flow re-select; a drained one (weight 0) keeps its flows.
 * The per-backend counters of the burst kernel follow backends by id the same way.
 *
 * Id map: open addressing over 2^idmap_bits u32 slots (at least twice the backends, so
 * there is always an empty slot) holding backend index + 1 (0 = empty), probed linearly
 * from the id's low bits.  Lookup by (id, VIP index): an id names one (VIP, backend)
 * pair, and the VIP check also makes a stale id from another VIP harmless.
 *
 * VIP index: open addressing over 2^index_bits u32 slots holding vip index + 1 (0 = empty),
 * probed linearly from mg_vip_hash(addr, port, proto).  Lookup tries (dst, dport, proto)
 * then (dst, 0, proto) -- port 0 in config means every port.
 *
 * Maglev pool (format version 3): the outer addresses of every maglev instance behind the
 * same routers, 16 bytes each (IPv4 in the first 4), one family, sorted by their bytes and
 * distinct, so every instance numbers them alike; pool_self is this instance's index
 * and pool[pool_self] equals its source address of pool_family.  A fragment's owner
 * instance is pool[3-tuple hash % n_pool] (mg_dp.h, paper 4.3).
 *
 * Per-VIP hashing options (format version 4, docs/datapath.md "Per-VIP hashing"): the
 * flags MG_VIP_F_HASH_SRC_IP / MG_VIP_F_HASH_DST_PORT / MG_VIP_F_UDP_NO_SPORT mask the flow
 * key *after* the VIP match (mg_vip_select_key), so both the Maglev hash and the
 * connection-table key are computed from the masked key: every flow with the same masked
 * key is one connection-table entry and goes to one backend.  MG_VIP_F_NO_CONNTRACK: the
 * VIP's packets never look up or create a connection-table entry (pure Maglev hashing).
 * `priority` (0..7, 7 highest) is read by steering's overload shedding (mg_shed.h).
 *
 * VIP matching across clusters (format version 5, paper 4.2, docs/datapath.md): the
 * clusters (struct mg_cluster: this one at index 0, then its peers) with their prefixes
 * (one per family; a peer's has the local prefix's length) and forwarders (struct
 * mg_cluster_fwd), and the first backup cluster's index.  mg_cluster_map() turns a peer's
 * address into this cluster's address with the same suffix; mg_dp.c serves it as that VIP,
 * decapsulates GRE from the peers' forwarders and sends a VIP's packets to the backup
 * cluster when it has no healthy backend.
 *
 * Validation: mg_tables_validate() checks everything once (sizes, offsets, every Maglev
 * entry in range); the burst kernel calls it only when the blob pointer or its generation
 * changes, so a changed blob must carry a new generation.
 */
#ifndef MG_TABLES_H
#define MG_TABLES_H

#include "mg_common.h"
#include "mg_flow.h"

#define MG_TABLES_MAGIC 0x4254474dU /* "MGTB" little-endian */
#define MG_TABLES_VERSION 5
/* Limits the builder enforces (and the per-worker counters are sized for). */
#define MG_TABLES_MAX_VIPS 4096
#define MG_TABLES_MAX_BACKENDS 65536
/* Most maglev instances in the pool (config.MAX_POOL). */
#define MG_TABLES_MAX_POOL 64

#define MG_VIP_F_ALLOW_FRAGMENTS 0x01
#define MG_VIP_F_HASH_SRC_IP 0x02   /* key = (src, dst, proto): sticky clients */
#define MG_VIP_F_HASH_DST_PORT 0x04 /* key = (dst, dport, proto) */
#define MG_VIP_F_UDP_NO_SPORT 0x08  /* UDP packets: source port left out of the key */
#define MG_VIP_F_NO_CONNTRACK 0x10  /* no connection-table lookup or entry */
#define MG_VIP_F_KNOWN 0x1f
#define MG_VIP_MAX_PRIORITY 7

#define MG_BACKEND_F_PRESENT 0x01
#define MG_BACKEND_F_HEALTHY 0x02

struct mg_tables_header {
    uint32_t magic;
    uint16_t version;
    uint16_t hdr_size;       /* sizeof(struct mg_tables_header) */
    uint64_t total_size;     /* bytes of the whole blob */
    uint64_t generation;     /* bumped by the publisher on every change */
    uint64_t hash_k0;        /* flow-hash secret (SipHash-1-3 key) */
    uint64_t hash_k1;
    uint32_t n_vips;
    uint32_t n_backends;
    uint32_t vip_off;
    uint32_t backend_off;
    uint32_t index_off;
    uint32_t index_bits;
    uint32_t tcp_timeout_ms; /* conntrack idle timeouts */
    uint32_t udp_timeout_ms;
    uint8_t src4[4];         /* outer source addresses (instance) */
    uint8_t src6[16];
    uint8_t has_src4;
    uint8_t has_src6;
    uint16_t mtu;            /* link MTU for encapsulated packets */
    uint8_t own_mac[6];      /* outer Ethernet source; all zero = reflect the received dst */
    uint8_t gateway_mac[6];  /* outer Ethernet destination; zero = reflect the received src */
    uint8_t inner_mac[6];    /* VXLAN inner Ethernet source */
    uint16_t reserved0;
    uint32_t idmap_off;      /* backend id map (see above) */
    uint32_t idmap_bits;
    uint32_t pool_off;       /* maglev pool: n_pool x 16-byte addresses, sorted (below) */
    uint16_t n_pool;         /* 0 = no fragment redirection */
    uint16_t pool_self;      /* this instance's index in the pool */
    uint8_t pool_family;     /* 4 or 6 (0 when n_pool == 0) */
    /* VIP matching across clusters (format version 5, see above); 0 clusters = off. */
    uint8_t n_clusters;      /* clusters[0] is this one, the others its peers */
    uint8_t backup_cluster;  /* the first backup cluster's index; 0 = none */
    uint8_t reserved1;
    uint32_t cluster_off;    /* n_clusters x struct mg_cluster */
    uint32_t fwd_off;        /* n_fwd x struct mg_cluster_fwd */
    uint16_t n_fwd;
    uint8_t reserved[14];
};

struct mg_vip {
    uint8_t addr[16];       /* IPv4 in the first 4 bytes, rest 0 */
    uint16_t port;          /* network order; 0 = every port */
    uint8_t proto;          /* 6 or 17 */
    uint8_t family;         /* 4 or 6 */
    uint8_t encap;          /* MG_ENCAP_* (mg_encap.h) */
    uint8_t flags;          /* MG_VIP_F_* */
    uint16_t vxlan_port;    /* host order */
    uint32_t vxlan_vni;
    uint32_t table_size;    /* Maglev table size M (prime) */
    uint64_t table_off;     /* int32 x table_size */
    uint32_t backend_first;
    uint32_t backend_count;
    uint32_t n_healthy;
    uint8_t priority;       /* 0..MG_VIP_MAX_PRIORITY, higher survives overload longer */
    uint8_t reserved[3];
    /* QUIC connection-ID routing (mg_quic.h); all zero for a VIP without `quic`. */
    uint32_t quic_off;      /* struct mg_quic_sid x quic_n, sorted by sid */
    uint16_t quic_n;
    uint8_t quic_sid_off;   /* server ID: bytes [off, off + len) of the destination CID */
    uint8_t quic_sid_len;   /* 1..MG_QUIC_MAX_SID_LEN; 0 = not a QUIC VIP */
};

/* One backend's QUIC server ID (its bytes as a big-endian integer) -> backend index. */
struct mg_quic_sid {
    uint64_t sid;
    uint32_t backend;
    uint32_t reserved;
};
#define MG_QUIC_MAX_SID_LEN 8
#define MG_QUIC_MAX_CID_LEN 20

struct mg_backend {
    uint8_t addr[16];
    uint8_t mac[6];         /* all zero = not configured */
    uint8_t family;
    uint8_t flags;          /* MG_BACKEND_F_* */
    uint64_t id;            /* stable identity, see above */
    uint16_t vip_index;
    uint16_t weight;
    uint32_t reserved;
};

/* A cluster of VIP matching: its prefixes (network bytes; host bits zero) and its
 * forwarders.  clusters[0] is this cluster (no forwarders); every peer prefix of a family
 * has the local prefix's length of that family. */
struct mg_cluster {
    uint8_t prefix6[16];
    uint8_t prefix4[4];
    uint8_t len4;           /* 0 = no IPv4 prefix */
    uint8_t len6;           /* 0 = no IPv6 prefix */
    uint8_t backup_rank;    /* 0 = not a backup cluster; 1 = tried first, ... */
    uint8_t reserved0;
    uint16_t fwd_first;     /* its forwarders: fwd[fwd_first .. fwd_first + n_fwd) */
    uint16_t n_fwd;
    uint8_t reserved[4];
};

struct mg_cluster_fwd {
    uint8_t addr[16];       /* IPv4 in the first 4 bytes */
    uint8_t family;
    uint8_t reserved[7];
};

#define MG_TABLES_MAX_CLUSTERS 17 /* this one + 16 peers */
#define MG_TABLES_MAX_FWD 256

_Static_assert(sizeof(struct mg_cluster) == 32, "cluster entry size");
_Static_assert(sizeof(struct mg_cluster_fwd) == 24, "forwarder entry size");
_Static_assert(sizeof(struct mg_tables_header) == 160, "tables header size");
_Static_assert(sizeof(struct mg_vip) == 64, "vip entry size");
_Static_assert(sizeof(struct mg_backend) == 40, "backend entry size");

/* The VIP-index hash; the builder computes the same in Python. */
static inline uint32_t mg_vip_hash(const uint8_t *addr16, uint16_t port_be, uint8_t proto)
{
    uint32_t w[4];
    memcpy(w, addr16, 16);
    uint32_t x = w[0] ^ w[1] ^ w[2] ^ w[3] ^ ((uint32_t)port_be << 8) ^ proto;
    return x * 0x9e3779b1u;
}

/* The key a VIP's flows are hashed and tracked by: `k` (the packet's flow key) with the
 * fields the VIP's hashing flags leave out set to zero.  In place; no-op for 5-tuple VIPs. */
static inline void mg_vip_select_key(uint8_t flags, struct mg_flow_key *k)
{
    if (flags & MG_VIP_F_HASH_SRC_IP) {
        k->sport = 0;
        k->dport = 0;
    } else if (flags & MG_VIP_F_HASH_DST_PORT) {
        memset(k->src, 0, sizeof(k->src));
        k->sport = 0;
    } else if ((flags & MG_VIP_F_UDP_NO_SPORT) && k->proto == 17) {
        k->sport = 0;
    }
}

/* 1 when mg_vip_select_key(flags, k) leaves a key of protocol proto as it is (the
 * packet's own 5-tuple: steering's hash of it, MG_FRAME_F_HASHED, may be reused). */
static inline int mg_vip_key_is_plain(uint8_t flags, uint8_t proto)
{
    if (flags & (MG_VIP_F_HASH_SRC_IP | MG_VIP_F_HASH_DST_PORT))
        return 0;
    return !((flags & MG_VIP_F_UDP_NO_SPORT) && proto == 17);
}

static inline const struct mg_tables_header *mg_tables_header_of(const void *t)
{
    return (const struct mg_tables_header *)t;
}

static inline const struct mg_vip *mg_tables_vips(const void *t)
{
    return (const struct mg_vip *)((const uint8_t *)t + mg_tables_header_of(t)->vip_off);
}

static inline const struct mg_backend *mg_tables_backends(const void *t)
{
    return (const struct mg_backend *)((const uint8_t *)t + mg_tables_header_of(t)->backend_off);
}

static inline const int32_t *mg_tables_maglev(const void *t, const struct mg_vip *v)
{
    return (const int32_t *)((const uint8_t *)t + v->table_off);
}

/* Exact (addr, port, proto); the caller retries with port 0.  -1 when absent. */
static inline int mg_tables_find_vip(const void *t, const uint8_t *addr16, uint16_t port_be,
                                     uint8_t proto)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const uint32_t *idx = (const uint32_t *)((const uint8_t *)t + h->index_off);
    const struct mg_vip *vips = mg_tables_vips(t);
    uint32_t mask = (1u << h->index_bits) - 1;
    uint32_t i = mg_vip_hash(addr16, port_be, proto) >> (32 - h->index_bits);
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t e = idx[i];
        if (e == 0)
            return -1;
        const struct mg_vip *v = &vips[e - 1];
        if (v->port == port_be && v->proto == proto && memcmp(v->addr, addr16, 16) == 0)
            return (int)(e - 1);
    }
    return -1;
}

/* ---------------------------------------------------------------- VIP matching (v5) */

static inline const struct mg_cluster *mg_tables_clusters(const void *t)
{
    return (const struct mg_cluster *)((const uint8_t *)t + mg_tables_header_of(t)->cluster_off);
}

static inline const struct mg_cluster_fwd *mg_tables_fwd(const void *t)
{
    return (const struct mg_cluster_fwd *)((const uint8_t *)t + mg_tables_header_of(t)->fwd_off);
}

/* 1 when the first `bits` bits of a and b are equal. */
static inline int mg_prefix_eq(const uint8_t *a, const uint8_t *b, uint32_t bits)
{
    uint32_t n = bits / 8, r = bits % 8;
    if (memcmp(a, b, n) != 0)
        return 0;
    return r == 0 || ((a[n] ^ b[n]) & (uint8_t)(0xff << (8 - r))) == 0;
}

/* VIP matching (paper 4.2): when dst16 (of `family`) lies in a peer cluster's prefix,
 * write this cluster's address with the same suffix into local16 and return the peer's
 * index (>= 1); 0 when it lies in no peer prefix or matching is off. */
static inline int mg_cluster_map(const void *t, const uint8_t *dst16, uint8_t family,
                                 uint8_t *local16)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    if (h->n_clusters < 2)
        return 0;
    const struct mg_cluster *c = mg_tables_clusters(t);
    uint32_t len = family == 4 ? c[0].len4 : c[0].len6;
    if (len == 0)
        return 0;
    for (uint32_t i = 1; i < h->n_clusters; i++) {
        const uint8_t *pfx = family == 4 ? c[i].prefix4 : c[i].prefix6;
        if ((family == 4 ? c[i].len4 : c[i].len6) == 0 || !mg_prefix_eq(dst16, pfx, len))
            continue;
        const uint8_t *mine = family == 4 ? c[0].prefix4 : c[0].prefix6;
        memcpy(local16, dst16, 16);
        uint32_t n = len / 8, r = len % 8;
        memcpy(local16, mine, n);
        if (r) {
            uint8_t m = (uint8_t)(0xff << (8 - r));
            local16[n] = (uint8_t)((mine[n] & m) | (dst16[n] & (uint8_t)~m));
        }
        return (int)i;
    }
    return 0;
}

/* The index of the backend with identity `id` in VIP `vip` (vip < 0: in any VIP), or -1
 * when the tables no longer hold it.  A few probes of a small array. */
static inline int32_t mg_tables_find_backend(const void *t, uint64_t id, int vip)
{
    const struct mg_tables_header *h = mg_tables_header_of(t);
    const uint32_t *map = (const uint32_t *)((const uint8_t *)t + h->idmap_off);
    const struct mg_backend *be = mg_tables_backends(t);
    uint32_t mask = (1u << h->idmap_bits) - 1;
    uint32_t i = (uint32_t)id & mask;
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t e = map[i];
        if (e == 0)
            return -1;
        if (be[e - 1].id == id && (vip < 0 || be[e - 1].vip_index == (uint32_t)vip))
            return (int32_t)(e - 1);
    }
    return -1;
}

/* Full validation of a blob of `size` bytes: 0 or -EINVAL (bad magic/version/sizes/
 * offsets/entries).  O(size of the Maglev tables). */
int mg_tables_validate(const void *tables, uint64_t size);

/* Builder helper (maglev.datapath.tables.build_tables): dst[i] = map[src[i]] for the n
 * entries of a Maglev table built over one VIP's healthy backends (src: index into them,
 * negative = empty -> -1; map: their global backend indices).  0, or -EINVAL when an entry
 * is >= n_map.  Turns a 65537-entry Python loop into a memory pass. */
int mg_tables_remap(int32_t *dst, const int32_t *src, uint32_t n, const int32_t *map,
                    uint32_t n_map);

/* Builder helper: out[i] = mg_siphash13(k0, k1, data[offs[i] .. offs[i+1]]) for i < n
 * (the backend ids of one VIP in one call instead of one cffi crossing each).  0 or
 * -EINVAL (null pointers, decreasing offsets). */
int mg_tables_ids(uint64_t k0, uint64_t k1, const uint8_t *data, const uint32_t *offs,
                  uint32_t n, uint64_t *out);

/* mg_tables_find_backend() out of line, for tests. */
int32_t mg_tables_backend_by_id(const void *tables, uint64_t id, int vip);

/* mg_vip_select_key() with VIP `vip`'s flags, out of line (whereis, tests).  0 or -EINVAL. */
int mg_tables_select_key(const void *tables, int vip, struct mg_flow_key *k);

/* mg_cluster_map() out of line (tests, whereis): the peer cluster index or 0. */
int mg_tables_cluster_match(const void *tables, const uint8_t *dst16, uint8_t family,
                            uint8_t *local16);

/* VIP lookup with the port-0 fallback, for tests: vip index or -1. */
int mg_tables_lookup_vip(const void *tables, const uint8_t *addr16, uint16_t port_be,
                         uint8_t proto);

#endif
