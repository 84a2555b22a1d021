#define MG_BELL_SPIN_DEFAULT ...
#define MG_BELL_ALERT_STOP ...

int mg_bell_wait(void *base, uint32_t bell, uint32_t spin, int32_t timeout_ms);
int mg_bell_wait_until(void *base, uint32_t bell, uint32_t spin, uint64_t until_ns);
int mg_bell_poll(void *base, uint32_t bell);
int mg_bell_ring(void *base, uint32_t bell);
int mg_bell_alert(void *base, uint32_t bell, uint32_t bits);
uint32_t mg_bell_take_alert(void *base, uint32_t bell);
