/* The backend agent's data path (`maglev backend-agent`, maglev/lab/agent.py): raw GRE /
 * IPIP sockets -> checks -> TUN device, in C so that no Python runs per packet.
 *
 * mg_decap_parse is the per-packet decision, the same as the pure-Python reference
 * maglev.lab.agent.decapsulate (tests/lab/test_agent_native.py runs both over the same
 * valid and malformed inputs): it returns MG_DECAP_OK and the inner packet's offset and
 * length, or the reason it was refused (the order of enum mg_decap_reason is the order of
 * maglev.lab.agent.REASONS).
 *
 * mg_decap_run is the agent's loop for up to `budget_ms`: poll the raw sockets, drain each
 * readable one with recvmmsg (MG_DECAP_BATCH datagrams a call), decapsulate and write() each
 * accepted inner packet to the TUN device (one packet per write: a TUN device without
 * IFF_VNET_HDR takes exactly one), counting everything in `st`.  It returns early, with
 * what it did so far, when a signal interrupts poll (the caller runs its Python signal
 * handlers then). */
#ifndef MG_DECAP_H
#define MG_DECAP_H

#include "mg_common.h"

#define MG_DECAP_MAX_VIPS 64     /* per family; the agent refuses more (--vip) */
#define MG_DECAP_BATCH 32        /* datagrams per recvmmsg */
#define MG_DECAP_BUF 65536       /* bytes per datagram buffer: any IP datagram fits */
#define MG_DECAP_MAX_SOCKS 8
#define MG_DECAP_ERRNOS 136      /* errno slots of the error counters (bigger ones: the last) */
#define MG_DECAP_DRAIN_ROUNDS 4  /* recvmmsg calls per readable socket before the next poll */

enum mg_decap_reason {
    MG_DECAP_OK = 0,
    MG_DECAP_OUTER_SHORT,
    MG_DECAP_GRE_SHORT,
    MG_DECAP_GRE_VERSION,
    MG_DECAP_GRE_FLAGS,
    MG_DECAP_GRE_CHECKSUM,
    MG_DECAP_GRE_ETHERTYPE,
    MG_DECAP_INNER_SHORT,
    MG_DECAP_INNER_VERSION,
    MG_DECAP_NOT_A_VIP,
    MG_DECAP_PROTOCOL,
    MG_DECAP_TRUNCATED, /* only from the loop: a datagram larger than MG_DECAP_BUF */
    MG_DECAP_NREASONS
};

struct mg_decap_vips {
    uint32_t n4, n6;
    uint8_t v4[MG_DECAP_MAX_VIPS][4];
    uint8_t v6[MG_DECAP_MAX_VIPS][16];
};

struct mg_decap_sock {
    int fd;
    int family; /* 4: the datagram starts with the outer IPv4 header; 6: with the payload */
    int proto;  /* 47 GRE, 4 IPv4-in-IP, 41 IPv6-in-IP */
};

struct mg_decap_stats {
    uint64_t received;
    uint64_t decapsulated;
    uint64_t wakeups;    /* polls that found a socket readable */
    uint64_t batches;    /* recvmmsg calls that returned datagrams */
    uint64_t max_batch;  /* most datagrams one recvmmsg returned */
    uint64_t drop[MG_DECAP_NREASONS];        /* [0] unused */
    uint64_t tun_errno[MG_DECAP_ERRNOS];     /* write() to the TUN device failed, by errno */
    uint64_t recv_errno[MG_DECAP_ERRNOS];    /* recvmmsg failed (not EAGAIN/EINTR), by errno */
};

int mg_decap_parse(const uint8_t *pkt, uint32_t len, int family, int proto,
                   const struct mg_decap_vips *vips, uint32_t *inner_off, uint32_t *inner_len);
int64_t mg_decap_run(const struct mg_decap_sock *socks, int nsocks, int tun_fd,
                     const struct mg_decap_vips *vips, struct mg_decap_stats *st,
                     uint8_t *bufs, int budget_ms);

#endif
