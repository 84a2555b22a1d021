/* Data-path benchmark loops (bench/bench_datapath.py, bench/bench_flood.py,
 * bench/bench_encap.py): whole runs in C so the numbers are the kernel's, not the
 * interpreter's.  Built only into the benchmark module (bench/native/build.py), never
 * into maglev._native. */
#ifndef MG_DP_BENCH_H
#define MG_DP_BENCH_H

#include "mg_dp.h"
#include "mg_encap.h"

/* Benchmark helper (bench/bench_datapath.py): run `rounds` bursts over io->frames.  Before
 * each burst every frame's metadata, headroom and first 128 packet bytes are restored (the
 * previous burst encapsulated them) and, when n_flows > 0, its TCP/UDP ports are rewritten
 * to flow id (first_flow + k) % n_flows for the k-th packet (sport = low 16 bits, dport =
 * next 16), so 256 frames can stand for any number of flows.  now_ns advances by step_ns
 * per burst.  *ns = thread CPU nanoseconds spent inside mg_dp_burst only.  Returns rounds or -errno. */
int mg_dp_bench(struct mg_dp *dp, const void *tables, struct mg_dp_io *io, uint32_t rounds,
                uint64_t n_flows, uint64_t first_flow, uint64_t now_ns, uint64_t step_ns,
                uint64_t *ns);
/* mg_dp_bench with options: MG_DP_BENCH_HASHED = every frame arrives as the pipeline's
 * worker gets it from steering, MG_FRAME_F_HASHED with flow_hash_hi:flow_hash the
 * SipHash-1-3 of its parsed flow key under the tables' secret (computed after the ports
 * are rewritten, outside the timed region), so mg_dp_burst reuses it instead of hashing. */
#define MG_DP_BENCH_HASHED 1u
int mg_dp_bench_opts(struct mg_dp *dp, const void *tables, struct mg_dp_io *io, uint32_t rounds,
                     uint64_t n_flows, uint64_t first_flow, uint64_t now_ns, uint64_t step_ns,
                     uint32_t opts, uint64_t *ns);
/* Benchmark baseline: thread CPU nanoseconds for `iters` mg_siphash13() of a 40-byte key
 * (a fixed amount of pure ALU work, to compare machines and moments). */
uint64_t mg_dp_calibrate(uint32_t iters);
/* Benchmark helper (bench/bench_encap.py): encapsulate frames 0..n-1 of `pool` `rounds`
 * times, restoring each frame's data_off/len before every call so the same packets are
 * reused (the L3 packet is never modified by mg_encap, so restoring the metadata is
 * enough).  Returns the number of encapsulations done or the first -errno. */
int mg_encap_bench(uint8_t *pool, uint32_t n, uint32_t l3_off, uint8_t inner_family,
                   const struct mg_encap_params *params, uint32_t rounds);

#endif
