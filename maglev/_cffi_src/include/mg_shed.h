/* VIP priority under overload: steering sheds lower-priority VIPs' packets first.
 *
 * Each VIP carries a priority 0..MG_VIP_MAX_PRIORITY (7 highest; the tables blob's VIP
 * record, config key `priority`).  Steering places every packet on the rx ring of its
 * flow's worker; when that ring fills beyond a high-water mark, a packet whose VIP is of a
 * lower priority than the highest one in the tables is dropped *before* it is enqueued
 * (counted as MG_SS_SHED and per VIP), so the room left goes to higher priorities:
 *
 *     used(w)  = ring_size - free room of rx ring w (room already taken in this burst
 *                counts: steering is the producer, the count is exact)
 *     mark[p]  = hw + (ring_size - hw) * p / max_prio      for p <  max_prio
 *              = never                                     for p >= max_prio
 *     shed     iff used(w) >= mark[priority]
 *
 * with hw = the high-water mark in packets and max_prio = the highest VIP priority of the
 * tables.  Priority 0 is shed from the high-water mark on, each higher priority from a
 * fuller ring, and the highest priority present is never shed: it gets back pressure as
 * before (it waits in steering's hand).  When every VIP has the same priority (the
 * default: 0) nothing is ever shed, which is exactly the behaviour without priorities.
 *
 * What a packet's priority is (mg_shed_classify):
 *   - a TCP/UDP packet that is not a fragment: its VIP's (exact port, then port 0, then a
 *     peer cluster's address as the local one with the same suffix -- as the data path
 *     looks it up), or 0 when it matches no VIP (it would be dropped anyway);
 *   - exempt (never shed): packets the parser rejects (a worker counts them), IP fragments
 *     (their ports are unknown: the datagram's VIP cannot be told reliably), ICMP and
 *     anything else that is not TCP/UDP (path MTU errors), fragments redirected from
 *     another instance.
 *
 * The map is steering's private copy of the published tables (validated once per
 * generation, mg_shed_load); a change of priorities reaches steering at its next
 * housekeeping tick.  Per-VIP drops are counted in drops[vip index of that copy];
 * drops[MG_SHED_NO_VIP] for packets of no VIP.  The steering actor reads them (and
 * resets them) when it publishes the per-VIP counts (maglev.actors.steering).
 */
#ifndef MG_SHED_H
#define MG_SHED_H

#include "mg_common.h"
#include "mg_parse.h"
#include "mg_tables.h"

#define MG_SHED_NEVER UINT32_MAX
#define MG_SHED_EXEMPT (-2)           /* mg_shed_classify: never shed */
#define MG_SHED_NO_VIP MG_TABLES_MAX_VIPS /* drops[] index of packets to no VIP */
#define MG_SHED_HIGH_WATER_PCT 50     /* default high-water mark: half the ring */

struct mg_shed {
    const void *tables;      /* validated blob (the caller keeps it alive); NULL = off */
    uint32_t on;             /* 1 when some VIP has a lower priority than max_prio */
    uint32_t max_prio;
    uint32_t ring_size;
    uint32_t high_water;     /* packets */
    uint32_t mark[MG_VIP_MAX_PRIORITY + 1];
    uint64_t drops[MG_TABLES_MAX_VIPS + 1];
};

/* Load the tables blob (size bytes; validated here) for rx rings of ring_size entries and
 * a high-water mark of high_water_pct percent (1..100).  NULL tables turns shedding off.
 * Resets drops[].  0 or -EINVAL (bad blob or arguments: shedding is then off). */
int mg_shed_load(struct mg_shed *sh, const void *tables, uint64_t size, uint32_t ring_size,
                 uint32_t high_water_pct);
/* The VIP index of a parsed packet (*prio its priority), -1 for no VIP (*prio 0), or
 * MG_SHED_EXEMPT.  parse_rc is mg_parse's return value. */
int mg_shed_classify(const struct mg_shed *sh, int parse_rc, const struct mg_parsed *p,
                     uint32_t *prio);
/* 1 when a packet of priority prio goes to a ring holding `used` packets: shed it. */
static inline int mg_shed_decide(const struct mg_shed *sh, uint32_t prio, uint32_t used)
{
    return sh->on && prio <= MG_VIP_MAX_PRIORITY && used >= sh->mark[prio];
}
/* The whole decision for one frame (tests: C == maglev.datapath.ref_shed): parse, classify,
 * decide for a ring holding `used` packets.  Returns 1 shed / 0 keep; *vip = the VIP index,
 * -1 (no VIP) or MG_SHED_EXEMPT.  Counts nothing. */
int mg_shed_packet(const struct mg_shed *sh, const uint8_t *pkt, uint32_t len, uint32_t used,
                   int32_t *vip);

#endif
