/* Fragment table and IPv4 splitting -- see include/mg_frag.h. (In progress.) */
#include "mg_frag.h"

size_t mg_frag_table_size(uint32_t entries, uint32_t hold_max)
{
    (void)entries; (void)hold_max;
    return 0;
}

int mg_frag_table_init(struct mg_frag_table *t, uint32_t entries, uint32_t hold_max,
                       uint32_t hold_bytes_max, uint64_t timeout_ns, uint64_t k0,
                       uint64_t k1)
{
    (void)t; (void)entries; (void)hold_max; (void)hold_bytes_max; (void)timeout_ns;
    (void)k0; (void)k1;
    return -ENOSYS;
}

int mg_frag_first(struct mg_frag_table *t, const struct mg_frag_key *key, int32_t backend,
                  uint16_t vip_index, uint64_t now_ns)
{
    (void)t; (void)key; (void)backend; (void)vip_index; (void)now_ns;
    return -ENOSYS;
}

int mg_frag_next(struct mg_frag_table *t, const struct mg_frag_key *key, uint32_t frame,
                 uint32_t len, uint64_t now_ns, int32_t *backend, uint16_t *vip_index)
{
    (void)t; (void)key; (void)frame; (void)len; (void)now_ns; (void)backend;
    (void)vip_index;
    return -ENOSYS;
}

int mg_frag_expire(struct mg_frag_table *t, uint64_t now_ns, uint32_t max_buckets)
{
    (void)t; (void)now_ns; (void)max_buckets;
    return -ENOSYS;
}

int mg_frag_drain(struct mg_frag_table *t, struct mg_frag_out *out, uint32_t cap)
{
    (void)t; (void)out; (void)cap;
    return -ENOSYS;
}

int mg_frag_split_ipv4(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint32_t max_l3_len,
                       const uint32_t *spare, uint32_t nspare)
{
    (void)pool; (void)idx; (void)l3_off; (void)max_l3_len; (void)spare; (void)nspare;
    return -ENOSYS;
}
