/* ICMP on the data path: path-MTU errors we generate, and ICMP errors we receive.
 *
 * 1. Path MTU.  mg_pmtu_check() says whether the L3 packet plus the encapsulation
 *    overhead fits the configured MTU, and if not what to do:
 *      MG_PMTU_FITS      encapsulate and send;
 *      MG_PMTU_ICMP      IPv4 with DF set, or IPv6: answer the client with
 *                        mg_icmp_too_big() (ICMP 3/4 "fragmentation needed" or ICMPv6
 *                        type 2 "packet too big", MTU field = mtu - overhead);
 *      MG_PMTU_FRAGMENT  IPv4 with DF clear: the sender allowed fragmentation, so split the
 *                        inner packet with mg_frag_split_ipv4() (mg_frag.h) and
 *                        encapsulate every piece (the backend reassembles, as it would
 *                        for fragments a router made).
 *    Never an error about an ICMP error (only about ICMP queries: echo, timestamp), about
 *    a non-first fragment, or toward a source that is not a unicast host (multicast,
 *    0.0.0.0, ::) (RFC 1122 3.2.2, RFC 4443 2.4): the check returns MG_PMTU_DROP for
 *    those, and the caller drops and counts them.  The IPv6 MTU reported is
 *    mtu - overhead even below 1280 (stacks clamp it; configure mtu >= 1280 + overhead
 *    for IPv6 VIPs).
 *
 *    mg_icmp_too_big() rewrites the frame in place: the original L3 packet stays where it
 *    is and becomes the quoted payload; the L2 header (with VLAN tags) moves forward into
 *    the headroom with its MACs swapped, and the new IP + ICMP headers go between.
 *      IPv4: 20 B header (no options) + 8 B ICMP; the whole error is at most 576 bytes
 *            (RFC 1812 4.3.2.3), quote truncated to fit.
 *      IPv6: 40 B header + 8 B ICMPv6; at most 1280 bytes (RFC 4443 2.4(c)).
 *    Source address = the VIP (the quoted packet's destination); destination = the
 *    client.  Why the VIP: the client talked to the VIP only; the instance addresses are
 *    lab/fabric addresses that may not be routable from the client, may be filtered by
 *    the client's uRPF / firewall, and would reveal the topology.  Every instance
 *    announces the VIP, so the error is routable and looks the same from all instances
 *    (Katran's icmp too-big path answers from the VIP as well).
 *    TTL 64, IPv4 ID 0 with DF set, checksums computed (ICMPv6 over the pseudo-header).
 *
 *    Rate limit: a token bucket per worker (struct mg_ratelimit): at most
 *    MG_ICMP_RATE_PER_S errors per second with bursts of MG_ICMP_BURST; over the limit
 *    the packet is dropped and counted by the caller.
 *
 * 2. Inbound ICMP errors about a VIP flow.  A backend answers clients directly (DSR) from
 *    the VIP, so an ICMP error a router sends about such a reply reaches a maglev (the VIP
 *    is announced here) and quotes a packet VIP -> client.  mg_icmp_quoted_flow() turns
 *    the quote into the original client -> VIP flow key (quoted src/dst and ports
 *    swapped) so the burst kernel sends the error to the backend that owns that flow.
 */
#ifndef MG_ICMP_H
#define MG_ICMP_H

#include "mg_common.h"
#include "mg_flow.h"
#include "mg_frame.h"

#define MG_PMTU_FITS 0
#define MG_PMTU_ICMP 1
#define MG_PMTU_FRAGMENT 2
#define MG_PMTU_DROP 3

/* Largest ICMP error we build, IP header included (RFC 1812 4.3.2.3 / RFC 4443 2.4). */
#define MG_ICMP4_ERROR_MAX 576
#define MG_ICMP6_ERROR_MAX 1280
/* Token bucket per worker: sustained errors per second and burst (Linux's defaults for
 * net.ipv4.icmp_msgs_per_sec / icmp_msgs_burst are 1000 / 50). */
#define MG_ICMP_RATE_PER_S 1000
#define MG_ICMP_BURST 50

/* mg_icmp_quoted_flow() return values (>= 0). */
#define MG_QUOTE_5TUPLE 0 /* key has the quoted ports */
#define MG_QUOTE_3TUPLE 1 /* quoted packet is a non-first fragment or has no ports: 0/0 */

/* Token bucket in nanoseconds of credit: each error costs cost_ns = 1e9 / rate;
 * credit grows with time up to cap_ns = burst * cost_ns. */
struct mg_ratelimit {
    uint64_t last_ns;
    uint64_t credit_ns;
    uint64_t cost_ns;
    uint64_t cap_ns;
};

/* rate_per_s >= 1, burst >= 1; starts full.  -EINVAL otherwise. */
int mg_ratelimit_init(struct mg_ratelimit *rl, uint32_t rate_per_s, uint32_t burst,
                      uint64_t now_ns);
/* 1 = allowed (one token taken), 0 = over the limit.  Time going backwards adds nothing. */
int mg_ratelimit_take(struct mg_ratelimit *rl, uint64_t now_ns);

/* pkt/len: the packet (captured bytes); l3_off/family/l4_proto/l4_off from the parser
 * (l4_off = 0 when the packet is a non-first fragment).  `overhead` from
 * mg_encap_overhead().  Returns MG_PMTU_* or -EINVAL (l3_off or length field beyond the
 * packet, family not 4/6). */
int mg_pmtu_check(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                  uint8_t l4_proto, uint32_t l4_off, uint32_t overhead, uint32_t mtu);

/* Build the "fragmentation needed" / "packet too big" error in place in frame `idx`,
 * reporting `mtu` (the caller passes configured MTU - overhead).  Sets the
 * MG_FRAME_F_GENERATED flag.  Returns the new length, -ENOSPC (headroom), -EINVAL. */
int mg_icmp_too_big(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint8_t family,
                    uint32_t mtu);

/* pkt/len: a received ICMP (family 4) or ICMPv6 (family 6) packet; l3_off/l4_off are the
 * offsets of its IP and ICMP headers.  Accepted error types: ICMP 3 (unreachable),
 * 11 (time exceeded), 12 (parameter problem); ICMPv6 1, 2, 3, 4.  Fills `out` with the
 * client -> VIP key and returns MG_QUOTE_5TUPLE / MG_QUOTE_3TUPLE, or
 *   -ENOMSG   not an ICMP error (echo, redirect, ...): not for this function;
 *   -EBADMSG  quote truncated or malformed (too short for its IP header, wrong version,
 *             bad IHL, extension-header chain cut) -- count and drop. */
int mg_icmp_quoted_flow(const uint8_t *pkt, uint32_t len, uint32_t l3_off, uint8_t family,
                        uint32_t l4_off, struct mg_flow_key *out);

#endif
