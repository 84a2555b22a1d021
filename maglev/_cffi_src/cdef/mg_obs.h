struct mg_worker;
struct mg_dp *mg_obs_worker_dp(struct mg_worker *w);
