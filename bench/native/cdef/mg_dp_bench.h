int mg_dp_bench(struct mg_dp *dp, const void *tables, struct mg_dp_io *io, uint32_t rounds,
                uint64_t n_flows, uint64_t first_flow, uint64_t now_ns, uint64_t step_ns,
                uint64_t *ns);
uint64_t mg_dp_calibrate(uint32_t iters);
int mg_encap_bench(uint8_t *pool, uint32_t n, uint32_t l3_off, uint8_t inner_family,
                   const struct mg_encap_params *params, uint32_t rounds);
#define MG_DP_BENCH_HASHED 1
int mg_dp_bench_opts(struct mg_dp *dp, const void *tables, struct mg_dp_io *io, uint32_t rounds,
                     uint64_t n_flows, uint64_t first_flow, uint64_t now_ns, uint64_t step_ns,
                     uint32_t opts, uint64_t *ns);
