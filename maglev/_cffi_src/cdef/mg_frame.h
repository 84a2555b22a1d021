#define MG_FRAME_SIZE 2048
#define MG_FRAME_META_SIZE 128
#define MG_FRAME_HEADROOM 192
#define MG_FRAME_DATA_MAX ...
#define MG_BURST_MAX 256
#define MG_FRAME_F_TRACE 1
#define MG_FRAME_F_FRAGMENT 2
#define MG_FRAME_F_GENERATED 4
#define MG_FRAME_F_REDIRECTED 8
#define MG_FRAME_F_REDIRECT_OUT 16
#define MG_FRAME_F_HASHED 32
#define MG_FRAME_LEN_EMPTY ...
#define MG_ACCT_COUNTED ...
#define MG_ACCT_PIECE ...

struct mg_frame_meta {
    uint32_t len;
    uint32_t data_off;
    uint32_t flow_hash;
    uint16_t flags;
    uint16_t verdict;
    uint32_t wire_len;
    uint16_t vip_index;
    uint16_t worker;
    int32_t backend_index;
    uint32_t flow_hash_hi;
    uint64_t rx_ts_ns;
    uint64_t seq;
    uint32_t acct;
    uint32_t worker_ns;
    uint64_t trace_id_hi;
    uint64_t trace_id_lo;
    uint64_t ts_steer_ns;
    uint64_t ts_worker_ns;
    uint64_t ts_tx_ns;
    ...;
};
