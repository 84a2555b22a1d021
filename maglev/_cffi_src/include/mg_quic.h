/* QUIC connection-ID routing (docs/datapath.md, "QUIC connection IDs").
 *
 * A UDP VIP configured with `quic` carries, in its tables entry, where the server ID sits
 * in a destination connection ID (bytes [quic_sid_off, quic_sid_off + quic_sid_len), the
 * plaintext scheme of the QUIC-LB draft) and a sorted array of (server ID, backend) pairs.
 * A QUIC packet with a short header (first byte's top bit clear: 1-RTT, after the
 * handshake) carries its destination CID right after that byte, with no length field:
 * the server chose the CID, so the forwarder knows where the server ID is.  When the
 * server ID names a healthy backend of the VIP the packet goes there, whatever its
 * addresses and ports -- a client that moves to a new address or port (connection
 * migration) stays on its server.  Long-header packets (Initial, 0-RTT, Handshake, Retry),
 * packets too short to hold the server ID, unknown server IDs and unhealthy backends go
 * by Maglev hashing (and the connection table) as any UDP packet.
 */
#ifndef MG_QUIC_H
#define MG_QUIC_H

#include "mg_parse.h"
#include "mg_tables.h"

/* The backend index the server ID in this UDP packet names (healthy, of VIP `vip`), or
 * -1: not a short header, too short, unknown server ID, unhealthy backend, or the VIP is
 * not a QUIC VIP.  `p` is the packet's parse (unfragmented UDP, l4_off set). */
int32_t mg_quic_route(const void *tables, int vip, const uint8_t *pkt, const struct mg_parsed *p);

/* mg_tables_validate()'s checks of one VIP's QUIC fields: 0 or -EINVAL. */
int mg_quic_validate(const void *tables, const struct mg_vip *v, uint64_t size);

#endif
