#define MG_BELL_STEERING ...
#define MG_BELL_MUXER ...
#define MG_BELL_WORKER0 ...
#define MG_BELL_SPIN_DEFAULT ...
#define MG_BELL_ALERT_STOP ...

struct mg_bell {
    uint32_t word;
    uint32_t need_wakeup;
    uint32_t first_ring;
    uint32_t n_rings;
    uint64_t sleeps;
    uint64_t wakeups;
    uint32_t alert;
    ...;
};

struct mg_bell *mg_region_bell(void *base, uint32_t bell);
int mg_bell_wait(void *base, uint32_t bell, uint32_t spin, int32_t timeout_ms);
int mg_bell_ring(void *base, uint32_t bell);
int mg_bell_alert(void *base, uint32_t bell, uint32_t bits);
uint32_t mg_bell_take_alert(void *base, uint32_t bell);
