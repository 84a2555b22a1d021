/* A worker's metrics page: what only the worker process holds (its connection-table and
 * fragment-table counters, the data path's per-VIP and per-backend packet/byte counters),
 * published into a small file of the run directory (obs-worker-<i>) that any process of
 * the run maps.  Written and read only here, behind a seqlock (mg_stats.h): Python never
 * computes an offset into it.  Nothing here is on the per-packet path: the worker actor
 * publishes from its housekeeping tick (about four times a second).
 *
 * Layout: struct mg_obs_page_hdr, then MG_OBS_MAX_VIPS per-VIP counters at
 * MG_OBS_VIPS_OFF, then MG_OBS_MAX_BACKENDS per-backend counters at MG_OBS_BACKENDS_OFF
 * (struct mg_dp_counter each).  Only the first n_vips / n_backends of each are written:
 * the counters are indexed like the tables blob of generation `tables_generation`, and
 * the writer leaves both counts 0 when that is not the blob the worker's stats block
 * reports (the indices would name other backends).
 */
#ifndef MG_OBS_H
#define MG_OBS_H

#include "mg_dp.h"
#include "mg_tables.h"
#include "mg_worker.h"

#define MG_OBS_PAGE_MAGIC 0x31474150534F474DULL /* "MGOSPAG1" */
#define MG_OBS_MAX_VIPS MG_TABLES_MAX_VIPS
#define MG_OBS_MAX_BACKENDS MG_TABLES_MAX_BACKENDS

struct mg_obs_page_hdr {
    uint64_t magic;
    uint64_t seq;               /* seqlock: odd while the worker writes */
    uint64_t mono_ns;           /* CLOCK_MONOTONIC of the publication */
    uint64_t generation;        /* region tables generation in the worker's stats block */
    uint64_t tables_generation; /* blob generation the per-VIP/backend counters describe */
    uint64_t n_vips;
    uint64_t n_backends;
    struct mg_ct_stats ct;
    struct mg_frag_stats frag;
};

#define MG_OBS_VIPS_OFF ((sizeof(struct mg_obs_page_hdr) + 63) & ~(size_t)63)
#define MG_OBS_BACKENDS_OFF (MG_OBS_VIPS_OFF + MG_OBS_MAX_VIPS * sizeof(struct mg_dp_counter))
#define MG_OBS_PAGE_BYTES (MG_OBS_BACKENDS_OFF + MG_OBS_MAX_BACKENDS * sizeof(struct mg_dp_counter))

/* The worker's data path, or NULL for NULL. */
struct mg_dp *mg_obs_worker_dp(struct mg_worker *w);
/* Bytes a page file must have. */
uint64_t mg_obs_page_bytes(void);
/* What a killed predecessor had published (mg_obs_page_adopt): its connection-table and
 * fragment-table counters, and its per-VIP / per-backend counters with the blob generation
 * they describe (`vips` / `backends`: n_vips / n_backends entries, caller's memory). */
struct mg_obs_prev {
    struct mg_obs_page_hdr hdr;
    struct mg_dp_counter *vips;
    struct mg_dp_counter *backends;
};
/* Worker process: copy worker w's counters into the page (size bytes) under its seqlock,
 * each plus its predecessor's when prev is not NULL: the connection-table and fragment-table
 * counters always, the per-VIP / per-backend ones while the worker still runs the tables
 * generation they describe (after a switch the data path's own restart from 0 anyway).
 * 0, or -EINVAL (page too small, no worker). */
int mg_obs_page_publish(void *page, uint64_t size, void *region_base, struct mg_worker *w,
                        uint64_t mono_ns, const struct mg_obs_prev *prev);
/* Worker process, before its first publish: the connection-table and fragment-table
 * counters its predecessor (same worker index, same run) left in the page, into base->ct /
 * base->frag (the rest of *base zeroed), so the counters a reader sees continue across a
 * restart instead of falling back to 0 (a Prometheus counter must not go backwards).  The
 * predecessor is dead, so the seqlock is not waited on: a publication it was killed in the
 * middle of leaves each word either old or new, and either is a count it had reached.
 * Called with prev->vips / prev->backends NULL it fills prev->hdr (n_vips / n_backends say
 * how many entries the caller must give); called again with the arrays, it copies those
 * (at most n_vips / n_backends of them, fewer if the page now has fewer).
 * 0; -ENODATA (never published: prev->hdr zeroed), -EINVAL (too small). */
int mg_obs_page_adopt(const void *page, uint64_t size, struct mg_obs_prev *prev);
/* Any process: a whole copy of the page into *hdr and the first n_vips / n_backends
 * entries of vips[MG_OBS_MAX_VIPS] / backends[MG_OBS_MAX_BACKENDS].  0; -ENODATA (never
 * published: no magic), -EINVAL (too small), -EAGAIN (still torn after `tries` reads). */
int mg_obs_page_read(const void *page, uint64_t size, struct mg_obs_page_hdr *hdr,
                     struct mg_dp_counter *vips, struct mg_dp_counter *backends, uint32_t tries);

#endif
