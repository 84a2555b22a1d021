/* Tables blob validation and lookup helpers; the layout is in include/mg_tables.h. */
#include "mg_hash.h"
#include "mg_quic.h"
#include "mg_tables.h"

static int range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off && (off & 7) == 0;
}

/* Host bits of a prefix are zero; the rest of an IPv4 prefix6 / the address tail is
 * checked by the caller. */
static int prefix_clean(const uint8_t *pfx, uint32_t len, uint32_t bytes)
{
    for (uint32_t bit = len; bit < bytes * 8; bit++)
        if (pfx[bit / 8] & (0x80u >> (bit % 8)))
            return 0;
    return 1;
}

/* The VIP-matching section (format version 5): sizes, prefixes, forwarders, backup. */
static int clusters_ok(const void *tables, uint64_t size)
{
    const struct mg_tables_header *h = mg_tables_header_of(tables);
    if (h->n_clusters == 0)
        return h->backup_cluster == 0 && h->n_fwd == 0;
    if (h->n_clusters > MG_TABLES_MAX_CLUSTERS || h->n_fwd > MG_TABLES_MAX_FWD ||
        !range_ok(h->cluster_off, (uint64_t)h->n_clusters * sizeof(struct mg_cluster), size) ||
        !range_ok(h->fwd_off, (uint64_t)h->n_fwd * sizeof(struct mg_cluster_fwd), size) ||
        h->backup_cluster >= h->n_clusters)
        return 0;
    const struct mg_cluster *c = mg_tables_clusters(tables);
    const struct mg_cluster_fwd *f = mg_tables_fwd(tables);
    if ((c[0].len4 == 0 && c[0].len6 == 0) || c[0].n_fwd || c[0].backup_rank)
        return 0;
    for (uint32_t i = 0; i < h->n_clusters; i++) {
        if (c[i].len4 > 31 || c[i].len6 > 127 || !prefix_clean(c[i].prefix4, c[i].len4, 4) ||
            !prefix_clean(c[i].prefix6, c[i].len6, 16))
            return 0;
        if (i && ((c[i].len4 && c[i].len4 != c[0].len4) || (c[i].len6 && c[i].len6 != c[0].len6) ||
                  (c[i].len4 == 0 && c[i].len6 == 0)))
            return 0;
        if (c[i].fwd_first > h->n_fwd || c[i].n_fwd > h->n_fwd - c[i].fwd_first)
            return 0;
    }
    if (h->backup_cluster && (c[h->backup_cluster].n_fwd == 0 || c[h->backup_cluster].backup_rank != 1))
        return 0;
    for (uint32_t j = 0; j < h->n_fwd; j++) {
        if (f[j].family != 4 && f[j].family != 6)
            return 0;
        if (!(f[j].family == 4 ? h->has_src4 : h->has_src6))
            return 0;
    }
    return 1;
}

int mg_tables_cluster_match(const void *tables, const uint8_t *dst16, uint8_t family,
                            uint8_t *local16)
{
    if (!tables || !dst16 || !local16 || (family != 4 && family != 6))
        return -EINVAL;
    return mg_cluster_map(tables, dst16, family, local16);
}

int mg_tables_validate(const void *tables, uint64_t size)
{
    if (!tables || size < sizeof(struct mg_tables_header))
        return -EINVAL;
    const struct mg_tables_header *h = mg_tables_header_of(tables);
    if (h->magic != MG_TABLES_MAGIC || h->version != MG_TABLES_VERSION ||
        h->hdr_size != sizeof(struct mg_tables_header) || h->total_size != size)
        return -EINVAL;
    if (h->n_vips > MG_TABLES_MAX_VIPS || h->n_backends > MG_TABLES_MAX_BACKENDS ||
        h->index_bits < 1 || h->index_bits > 16 || (1u << h->index_bits) < h->n_vips ||
        h->mtu < 576)
        return -EINVAL;
    if (!range_ok(h->vip_off, (uint64_t)h->n_vips * sizeof(struct mg_vip), size) ||
        !range_ok(h->backend_off, (uint64_t)h->n_backends * sizeof(struct mg_backend), size) ||
        !range_ok(h->index_off, (uint64_t)4 << h->index_bits, size))
        return -EINVAL;
    if (h->idmap_bits < 1 || h->idmap_bits > 17 || (1u << h->idmap_bits) <= h->n_backends ||
        !range_ok(h->idmap_off, (uint64_t)4 << h->idmap_bits, size))
        return -EINVAL;
    if (h->n_pool > MG_TABLES_MAX_POOL || !range_ok(h->pool_off, (uint64_t)h->n_pool * 16, size))
        return -EINVAL;
    if (h->n_pool == 0) {
        if (h->pool_self != 0 || h->pool_family != 0)
            return -EINVAL;
    } else {
        const uint8_t *pool = (const uint8_t *)tables + h->pool_off;
        const uint8_t *own = h->pool_family == 4 ? h->src4 : h->src6;
        uint32_t alen = h->pool_family == 4 ? 4 : 16;
        if ((h->pool_family != 4 && h->pool_family != 6) || h->pool_self >= h->n_pool ||
            !(h->pool_family == 4 ? h->has_src4 : h->has_src6) ||
            memcmp(pool + 16u * h->pool_self, own, alen) != 0)
            return -EINVAL;
        for (uint32_t i = 0; i < h->n_pool; i++) {
            const uint8_t *a = pool + 16u * i;
            for (uint32_t j = alen; j < 16; j++)
                if (a[j])
                    return -EINVAL; /* IPv4: the rest is zero */
            if (i && memcmp(a - 16, a, 16) >= 0)
                return -EINVAL; /* sorted, distinct */
        }
    }
    if (!clusters_ok(tables, size))
        return -EINVAL;
    const struct mg_vip *vips = mg_tables_vips(tables);
    const struct mg_backend *be = mg_tables_backends(tables);
    const uint32_t *idx = (const uint32_t *)((const uint8_t *)tables + h->index_off);
    uint32_t empty = 0;
    for (uint32_t i = 0; i < (1u << h->index_bits); i++) {
        if (idx[i] > h->n_vips)
            return -EINVAL;
        empty += idx[i] == 0;
    }
    if (empty == 0)
        return -EINVAL; /* probing relies on an empty slot */
    for (uint32_t v = 0; v < h->n_vips; v++) {
        const struct mg_vip *vp = &vips[v];
        if ((vp->flags & ~MG_VIP_F_KNOWN) || vp->priority > MG_VIP_MAX_PRIORITY ||
            ((vp->flags & MG_VIP_F_HASH_SRC_IP) && (vp->flags & MG_VIP_F_HASH_DST_PORT)))
            return -EINVAL;
        if ((vp->family != 4 && vp->family != 6) || vp->table_size == 0 ||
            !range_ok(vp->table_off, (uint64_t)vp->table_size * 4, size) ||
            vp->backend_first > h->n_backends ||
            vp->backend_count > h->n_backends - vp->backend_first)
            return -EINVAL;
        const int32_t *tab = mg_tables_maglev(tables, vp);
        for (uint32_t s = 0; s < vp->table_size; s++) {
            int32_t e = tab[s];
            if (e == -1)
                continue;
            if (e < 0 || (uint32_t)e < vp->backend_first ||
                (uint32_t)e >= vp->backend_first + vp->backend_count)
                return -EINVAL;
        }
        if (mg_tables_find_vip(tables, vp->addr, vp->port, vp->proto) != (int)v)
            return -EINVAL;
        if (mg_quic_validate(tables, vp, size) != 0)
            return -EINVAL;
    }
    const uint32_t *map = (const uint32_t *)((const uint8_t *)tables + h->idmap_off);
    for (uint32_t i = 0; i < (1u << h->idmap_bits); i++)
        if (map[i] > h->n_backends)
            return -EINVAL;
    for (uint32_t b = 0; b < h->n_backends; b++) {
        if ((be[b].family != 4 && be[b].family != 6) || be[b].vip_index >= h->n_vips)
            return -EINVAL;
        /* every backend is found by its identity (this also rejects a duplicate id in a VIP) */
        if (mg_tables_find_backend(tables, be[b].id, be[b].vip_index) != (int32_t)b)
            return -EINVAL;
    }
    return 0;
}

int32_t mg_tables_backend_by_id(const void *tables, uint64_t id, int vip)
{
    return mg_tables_find_backend(tables, id, vip);
}

int mg_tables_select_key(const void *tables, int vip, struct mg_flow_key *k)
{
    if (!tables || !k || vip < 0 || (uint32_t)vip >= mg_tables_header_of(tables)->n_vips)
        return -EINVAL;
    mg_vip_select_key(mg_tables_vips(tables)[vip].flags, k);
    return 0;
}

int mg_tables_lookup_vip(const void *tables, const uint8_t *addr16, uint16_t port_be,
                         uint8_t proto)
{
    int v = mg_tables_find_vip(tables, addr16, port_be, proto);
    if (v < 0 && port_be != 0)
        v = mg_tables_find_vip(tables, addr16, 0, proto);
    return v;
}

int mg_tables_remap(int32_t *dst, const int32_t *src, uint32_t n, const int32_t *map,
                    uint32_t n_map)
{
    if (!dst || !src || (n_map && !map))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        int32_t e = src[i];
        if (e < 0) {
            dst[i] = -1;
            continue;
        }
        if ((uint32_t)e >= n_map)
            return -EINVAL;
        dst[i] = map[e];
    }
    return 0;
}

int mg_tables_ids(uint64_t k0, uint64_t k1, const uint8_t *data, const uint32_t *offs,
                  uint32_t n, uint64_t *out)
{
    if (n && (!data || !offs || !out))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (offs[i + 1] < offs[i])
            return -EINVAL;
        out[i] = mg_siphash13(k0, k1, data + offs[i], offs[i + 1] - offs[i]);
    }
    return 0;
}
