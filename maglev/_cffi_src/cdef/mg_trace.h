#define MG_SLOT_TRACE 6
#define MG_TRACE_F_CT_HIT 0x0100
#define MG_TRACE_F_CT_RESELECT 0x0200
#define MG_TRACE_F_FILTER 0x0400
#define MG_TW_SEQ 0
#define MG_TW_SAMPLE 1
#define MG_TW_COUNT 2
#define MG_TW_DEADLINE 3
#define MG_TW_DST 4
#define MG_TW_DST_META 6
#define MG_TW_SRC 7
#define MG_TW_SRC_META 9
#define MG_TW_REQ_ID 10
#define MG_TW_FLAGS 11
#define MG_TW_F_SAMPLE_SET 1
#define MG_TW_APPLIED 32
#define MG_TW_MARKED 33
#define MG_TW_REQ_MARKED 34
#define MG_TW_FINISHED 35
#define MG_TW_LOST 36
#define MG_TW_RESYNCS 37
#define MG_TRACE_LOG 1024
#define MG_TW_GEN_SEQ 16
#define MG_TW_GEN 17
#define MG_TRACE_D_OUTER 1
#define MG_TRACE_D_FLOW 2
struct mg_trace_req {
    uint64_t sample_every;
    uint64_t count;
    uint64_t deadline_ns;
    uint64_t req_id;
    uint8_t dst_addr[16];
    uint8_t src_addr[16];
    uint16_t dst_port;
    uint16_t src_port;
    uint8_t sample_set;
    uint8_t dst_on, dst_family, proto;
    uint8_t src_on, src_family, src_plen;
};
struct mg_trace_status {
    uint64_t seq, applied, marked, request_marked, finished, lost, resyncs, count;
    uint64_t sample_every;
    uint64_t sample_set;
};
struct mg_trace_gen_ctx {
    uint64_t generation;
    uint64_t trace_id_hi, trace_id_lo, span_id, trace_flags;
    uint64_t published_ns;
};
struct mg_trace_rec {
    struct mg_frame_meta meta;
    struct mg_flow_key outer;
    struct mg_flow_key flow;
    uint32_t decoded;
    uint32_t reserved;
};
void mg_trace_steer_default(uint64_t sample_every);
void mg_trace_steer_burst(void *base);
void mg_trace_steer_packet(void *base, struct mg_frame_meta *m, const uint8_t *pkt);
int mg_trace_inflight(void *base);
void mg_trace_collect(void *base, uint8_t *pool, const uint64_t *descs, uint32_t n);
void mg_trace_mux_stamp(uint8_t *pool, const uint64_t *descs, uint32_t n);
void mg_trace_worker_done(struct mg_frame_meta *m);
int mg_trace_drain(struct mg_trace_rec *out, uint32_t max);
void mg_trace_resync(void *base);
uint64_t mg_trace_arm(void *base, const struct mg_trace_req *req);
uint64_t mg_trace_set_sampling(void *base, uint64_t sample_every);
void mg_trace_status(void *base, struct mg_trace_status *out);
void mg_trace_gen_store(void *base, const struct mg_trace_gen_ctx *ctx);
int mg_trace_gen_load(void *base, struct mg_trace_gen_ctx *out);
void mg_trace_reset(void);
