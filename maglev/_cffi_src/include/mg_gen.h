/* Traffic generator NIC: synthesises Ethernet/IP/TCP|UDP packets toward the configured
 * VIPs straight into pool frames, so a benchmark measures the pipeline, not packet I/O.
 *
 * Design: every flow's headers (Ethernet, IPv4 or IPv6, TCP or UDP, checksums for the
 * SYN and the ACK variant) are built once at mg_gen_new(); per packet the generator
 * picks a flow with a xorshift64* draw, copies <= 94 header bytes, zero-fills the payload,
 * patches the TCP flag byte and checksum, and fills the frame metadata.  That is a few
 * tens of nanoseconds per 64-byte packet, so one core can offer 10+ Mpps.
 *
 * Addresses: clients are 198.19.0.0/16 (IPv4) and 2001:db8:c1::/48 (IPv6), inside the
 * benchmarking ranges; destinations are the VIPs given by the caller.  MACs are locally
 * administered (02:00:...).  The packets never leave the process's memory.
 */
#ifndef MG_GEN_H
#define MG_GEN_H

#include "mg_common.h"
#include "mg_frame.h"

#define MG_GEN_MAX_VIPS 256      /* VIPs the generator spreads flows over */
#define MG_GEN_MAX_FLOWS 4194304 /* 4 Mi flows x 104 B of templates = 416 MiB max */
#define MG_GEN_HDR_MAX 94        /* Ethernet 14 + IPv6 40 + TCP 20 + slack */

/* A destination: address (IPv4 in the first 4 bytes), family 4|6, IP protocol (6|17),
 * port in host order (0 = any port: the generator uses 80). */
struct mg_gen_vip {
    uint8_t addr[16];
    uint8_t family;
    uint8_t proto;
    uint16_t port;
};

struct mg_gen;

/* size: captured frame length without FCS (a flow whose headers are longer gets
 * header-sized packets); syn_ppm / ipv6_ppm: parts per million of packets that are TCP SYN
 * and of flows that are IPv6 (IPv6 flows need an IPv6 VIP, IPv4 flows an IPv4 VIP; when a
 * family has no VIP every flow uses the other one).  Returns NULL on bad arguments
 * (errno EINVAL) or no memory (ENOMEM). */
struct mg_gen *mg_gen_new(const struct mg_gen_vip *vips, uint32_t n_vips, uint32_t n_flows,
                          uint32_t size, uint32_t syn_ppm, uint32_t ipv6_ppm, uint64_t seed);
void mg_gen_free(struct mg_gen *g);

/* Fill the n frames named by descs (low 32 bits = frame index) with the next n packets.
 * Returns n, or -EINVAL when n > MG_BURST_MAX. */
int mg_gen_fill(struct mg_gen *g, uint8_t *pool, const uint64_t *descs, uint32_t n,
                uint64_t now_ns);

/* Packets produced so far. */
uint64_t mg_gen_count(const struct mg_gen *g);

/* Flood mode (``gen:flood=S``): fill n_keep + n_flood frames (descs[0..n_keep) first).
 * The n_keep frames are keep-alive ACKs of the flows in turn (flow 0, 1, ..., n_flows-1,
 * 0, ...): each flow's own template, so a flow keeps its 5-tuple.  The n_flood frames are
 * TCP SYNs from clients never seen before: flow 0's packet (it must be IPv4 TCP) with the
 * source 198.19.128.0/17 (low 15 bits of the flood counter) and source port
 * 1024 + (counter >> 15) % 64000, checksums recomputed: 2^31 distinct clients.  The
 * flows' own clients are 198.19.0.0/17 while there are at most 32768 of them.  Returns
 * n_keep + n_flood, or -EINVAL (more than MG_BURST_MAX, or a flood without an IPv4 TCP
 * flow 0). */
int mg_gen_fill_flood(struct mg_gen *g, uint8_t *pool, const uint64_t *descs, uint32_t n_keep,
                      uint32_t n_flood, uint64_t now_ns);

/* Flood SYNs produced so far. */
uint64_t mg_gen_flood_count(const struct mg_gen *g);

#endif
