/* AF_XDP receive socket (the afxdp NIC, maglev/nic/afxdp.py): one socket per receive queue,
 * bound in copy or zero-copy mode, with a UMEM of its own beside the shared frame pool.
 *
 * The XDP program (bpf/mg_xdp.bpf.c) redirects the VIPs' packets of queue q into the RX
 * ring of the socket bound to q; mg_xsk_rx_burst copies each one into a pool frame (as
 * the AF_PACKET driver does) and gives its UMEM chunk straight back on the fill ring, so
 * the fill ring never runs dry while the pool has frames.  need_wakeup: the socket is
 * bound with XDP_USE_NEED_WAKEUP, and when the kernel sets XDP_RING_NEED_WAKEUP on the
 * fill ring (it ran out of chunks and stopped polling) the driver kicks it with a
 * recvfrom(MSG_DONTWAIT).  poll(POLLIN) on the fd waits for packets.
 *
 * Why a UMEM beside the pool and not the pool itself (zero copy end to end): the pool's
 * frames are owned by steering's journalled hand and the rings between actors; frames
 * sitting in the kernel's fill and RX rings would be invisible to that accounting and to
 * the recovery of a killed steering process.  Making the pool the UMEM needs the fill ring
 * to be a journalled place of its own (docs/nic.md, "What is not done").  The copy costs
 * one memcpy per packet, the same as AF_PACKET's.
 *
 * Transmit is not done here: the muxer sends through the AF_PACKET TX ring of the same
 * interface (mg_afpacket.h); an XSK TX ring in the muxer would need the socket's UMEM
 * shared across processes.
 */
#ifndef MG_XSK_H
#define MG_XSK_H

#include "mg_common.h"
#include "mg_frame.h"

#define MG_XSK_FRAME_SIZE 2048u
#define MG_XSK_NUM_FRAMES 4096u /* 8 MiB UMEM per socket */
#define MG_XSK_RING_SIZE 2048u  /* fill, RX (power of two) */

/* mg_xsk_open() modes */
#define MG_XSK_MODE_COPY 1
#define MG_XSK_MODE_ZEROCOPY 2

struct mg_xsk_ring {
    uint32_t *producer;
    uint32_t *consumer;
    uint32_t *flags;
    void *desc;
    uint32_t mask;
    uint32_t size;
    void *map;
    size_t map_len;
};

struct mg_xsk_stats {
    uint64_t rx_packets;
    uint64_t rx_bytes;
    uint64_t rx_oversize;   /* dropped: longer than MG_FRAME_DATA_MAX */
    uint64_t fill_wakeups;  /* kicks because the kernel asked (need_wakeup) */
    uint64_t rx_bursts;
};

struct mg_xsk {
    int fd;
    int ifindex;
    uint32_t queue;
    uint32_t mode;          /* MG_XSK_MODE_* actually bound */
    uint8_t *umem;
    size_t umem_len;
    struct mg_xsk_ring fill, rx;
    struct mg_xsk_stats stats;
};

/* Opens an AF_XDP socket with its UMEM, fills the fill ring and binds it to (ifindex,
 * queue) in `mode` (MG_XSK_MODE_COPY or _ZEROCOPY).  Returns 0 or -errno: -EINVAL for a
 * queue the device does not have, -EBUSY when the queue has a socket already,
 * -EOPNOTSUPP for zero-copy on a driver without it. */
int mg_xsk_open(struct mg_xsk *x, int ifindex, uint32_t queue, uint32_t mode);
void mg_xsk_close(struct mg_xsk *x);
/* Receives up to n packets into pool frames descs[0..k) (metadata as mg_afp_rx_burst). */
int mg_xsk_rx_burst(struct mg_xsk *x, uint8_t *pool, const uint64_t *descs, uint32_t n);
/* The kernel's counters (XDP_STATISTICS): rx_dropped, rx_invalid_descs,
 * rx_ring_full, rx_fill_ring_empty_descs.  0 or -errno. */
int mg_xsk_kernel_stats(struct mg_xsk *x, uint64_t *out4);

#endif
