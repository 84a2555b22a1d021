/* Observability accessors (design in include/mg_obs.h). */
#include "mg_obs.h"

struct mg_dp *mg_obs_worker_dp(struct mg_worker *w)
{
    return w ? w->dp : NULL;
}
