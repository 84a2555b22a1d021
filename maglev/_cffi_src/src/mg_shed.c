/* VIP priority under overload (design in include/mg_shed.h). */
#include "mg_shed.h"

int mg_shed_load(struct mg_shed *sh, const void *tables, uint64_t size, uint32_t ring_size,
                 uint32_t high_water_pct)
{
    if (!sh)
        return -EINVAL;
    memset(sh, 0, sizeof *sh);
    for (uint32_t p = 0; p <= MG_VIP_MAX_PRIORITY; p++)
        sh->mark[p] = MG_SHED_NEVER;
    if (!tables)
        return 0;
    if (ring_size == 0 || high_water_pct == 0 || high_water_pct > 100 ||
        mg_tables_validate(tables, size) != 0)
        return -EINVAL;
    const struct mg_tables_header *h = mg_tables_header_of(tables);
    const struct mg_vip *v = mg_tables_vips(tables);
    uint32_t lo = MG_VIP_MAX_PRIORITY, hi = 0;
    for (uint32_t i = 0; i < h->n_vips; i++) {
        lo = v[i].priority < lo ? v[i].priority : lo;
        hi = v[i].priority > hi ? v[i].priority : hi;
    }
    sh->tables = tables;
    sh->ring_size = ring_size;
    sh->high_water = (uint32_t)(((uint64_t)ring_size * high_water_pct) / 100);
    sh->max_prio = hi;
    sh->on = h->n_vips > 0 && lo < hi;
    if (sh->on)
        for (uint32_t p = 0; p < hi; p++)
            sh->mark[p] = sh->high_water +
                          (uint32_t)(((uint64_t)(ring_size - sh->high_water) * p) / hi);
    return 0;
}

int mg_shed_classify(const struct mg_shed *sh, int parse_rc, const struct mg_parsed *p,
                     uint32_t *prio)
{
    *prio = MG_VIP_MAX_PRIORITY;
    if (!sh->tables || parse_rc != MG_OK || (p->frag & MG_PF_FRAGMENT) ||
        (p->key.proto != 6 && p->key.proto != 17))
        return MG_SHED_EXEMPT;
    int v = mg_tables_find_vip(sh->tables, p->key.dst, p->key.dport, p->key.proto);
    if (v < 0 && p->key.dport != 0)
        v = mg_tables_find_vip(sh->tables, p->key.dst, 0, p->key.proto);
    uint8_t local[16];
    if (v < 0 && mg_cluster_map(sh->tables, p->key.dst, p->key.family, local) > 0) {
        /* a peer cluster's address: the local VIP with the same suffix (mg_dp.c) */
        v = mg_tables_find_vip(sh->tables, local, p->key.dport, p->key.proto);
        if (v < 0 && p->key.dport != 0)
            v = mg_tables_find_vip(sh->tables, local, 0, p->key.proto);
    }
    *prio = v < 0 ? 0 : mg_tables_vips(sh->tables)[v].priority;
    return v;
}

int mg_shed_packet(const struct mg_shed *sh, const uint8_t *pkt, uint32_t len, uint32_t used,
                   int32_t *vip)
{
    struct mg_parsed p;
    uint32_t prio;
    int rc = mg_parse(pkt, len, &p);
    int v = mg_shed_classify(sh, rc, &p, &prio);
    *vip = v;
    return v != MG_SHED_EXEMPT && mg_shed_decide(sh, prio, used);
}
