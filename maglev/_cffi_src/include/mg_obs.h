/* Observability accessors: read-only views into a packet worker for the metrics page
 * (maglev/telemetry/metrics.py).  Nothing here is on the per-packet path: the worker
 * actor calls it from its housekeeping tick (about ten times a second). */
#ifndef MG_OBS_H
#define MG_OBS_H

#include "mg_worker.h"

/* The worker's data path (its stats, per-VIP and per-backend counters, connection
 * table), or NULL for NULL. */
struct mg_dp *mg_obs_worker_dp(struct mg_worker *w);

#endif
