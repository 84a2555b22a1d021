#define MG_HAND_MAX ...
#define MG_HAND_KEEP ...

int mg_hand_pull(void *base, uint32_t slot, uint32_t ring_id, uint32_t max);
int mg_hand_push(void *base, uint32_t slot, const uint16_t *dest, uint32_t n);
int mg_hand_push_all(void *base, uint32_t slot, uint16_t d);
uint64_t *mg_hand_descs(void *base, uint32_t slot, uint32_t *n);
int mg_hand_count(void *base, uint32_t slot);
int mg_hand_recover(void *base, uint32_t slot);
int mg_hand_settled(void *base, uint32_t slot, uint64_t *out, uint32_t max);
extern int mg_hand_fault_at;
uint64_t *mg_stats_stage(void *base, uint32_t slot);
void mg_stats_begin(void *base, uint32_t slot);
void mg_stats_apply(void *base, uint32_t slot);
void mg_stats_end(void *base, uint32_t slot);
int mg_stats_pending(void *base, uint32_t slot);
