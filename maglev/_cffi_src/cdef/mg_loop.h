#define MG_LOOP_IDLE 0
#define MG_LOOP_BUDGET 1
#define MG_LOOP_STALL 2
#define MG_LOOP_EOF 3
#define MG_LOOP_STOP 4
#define MG_LOOP_DEADLINE 5
struct mg_loop_ctl {
    uint64_t budget_ns;
    uint32_t max_bursts;
    uint32_t burst;
    const uint32_t *stop;
    uint64_t *lat_hist;
    uint32_t spares;
    uint32_t idle_gap_us;
    uint64_t idle_ns;
    struct mg_idle_state *idle;
    uint32_t idle_mode;
    uint32_t bell;
    uint64_t nap_ns;
    uint32_t nap_min;
    uint32_t reserved;
    uint64_t sleep_until_ns;
    uint64_t tick_ns;
    uint32_t spin;
    uint32_t reserved2;
};
#define MG_NAP_MIN ...
struct mg_idle_state {
    uint64_t last_work_ns;
    uint64_t backoff_until_ns;
    uint64_t backoff_ns;
    uint64_t contended;
    uint64_t stretch;
    uint64_t naps;
    uint64_t napping;
};
#define MG_IDLE_PAUSE 1
#define MG_IDLE_YIELD 2
#define MG_IDLE_GAP_NS ...
#define MG_IDLE_BACKOFF_NS ...
#define MG_IDLE_BACKOFF_MAX_NS ...
#define MG_PACE_SPIN_NS ...
#define MG_PACE_LOOK_NS ...
struct mg_loop_out {
    uint64_t packets;
    uint64_t last_ns;
    uint32_t bursts;
    uint32_t reason;
    uint32_t sleeps;
    uint32_t wakes;
};
struct mg_loop_gen {
    struct mg_gen *gen;
    uint64_t left;
    uint64_t deadline_ns;
    uint64_t rate;
    uint64_t t0_ns;
    uint64_t paced_from;
};
uint64_t mg_loop_now_ns(void);
uint32_t mg_lat_bucket(uint64_t ns);
uint64_t mg_lat_floor_ns(uint32_t b);
int mg_steer_loop(struct mg_steer *s, void *base, struct mg_loop_gen *src,
                  const struct mg_loop_ctl *ctl, struct mg_loop_out *out);
int mg_worker_loop(struct mg_worker *w, void *base, const struct mg_loop_ctl *ctl,
                   struct mg_loop_out *out);
int mg_mux_loop(struct mg_mux *m, void *base, const struct mg_loop_ctl *ctl,
                struct mg_loop_out *out);
#define MG_LOOP_NIC_AFP 1
#define MG_LOOP_NIC_XSK 2
#define MG_LOOP_NIC_MAX 64
struct mg_bellpipe {
    uint32_t armed;
    uint32_t stop;
    int32_t rfd;
    int32_t wfd;
    void *base;
    uint32_t bell;
    uint32_t reserved;
    uint64_t signals;
};
struct mg_loop_nic {
    uint32_t kind;
    uint32_t n;
    uint32_t next;
    uint32_t reserved;
    void **devs;
    struct mg_bellpipe *pipe;
};
int mg_bellpipe_run(struct mg_bellpipe *p);
void mg_bellpipe_arm(struct mg_bellpipe *p);
void mg_bellpipe_stop(struct mg_bellpipe *p);
int mg_steer_loop_nic(struct mg_steer *s, void *base, struct mg_loop_nic *src,
                      const struct mg_loop_ctl *ctl, struct mg_loop_out *out);
int mg_mux_loop_nic(struct mg_mux *m, void *base, struct mg_loop_nic *sink,
                    const struct mg_loop_ctl *ctl, struct mg_loop_out *out);
