#define MG_OBS_PAGE_MAGIC ...
#define MG_OBS_MAX_VIPS ...
#define MG_OBS_MAX_BACKENDS ...
struct mg_obs_page_hdr {
    uint64_t magic;
    uint64_t seq;
    uint64_t mono_ns;
    uint64_t generation;
    uint64_t tables_generation;
    uint64_t n_vips;
    uint64_t n_backends;
    struct mg_ct_stats ct;
    struct mg_frag_stats frag;
};
struct mg_worker;
struct mg_dp *mg_obs_worker_dp(struct mg_worker *w);
uint64_t mg_obs_page_bytes(void);
struct mg_obs_prev {
    struct mg_obs_page_hdr hdr;
    struct mg_dp_counter *vips;
    struct mg_dp_counter *backends;
};
int mg_obs_page_publish(void *page, uint64_t size, void *region_base, struct mg_worker *w,
                        uint64_t mono_ns, const struct mg_obs_prev *prev);
int mg_obs_page_adopt(const void *page, uint64_t size, struct mg_obs_prev *prev);
int mg_obs_page_read(const void *page, uint64_t size, struct mg_obs_page_hdr *hdr,
                     struct mg_dp_counter *vips, struct mg_dp_counter *backends, uint32_t tries);
