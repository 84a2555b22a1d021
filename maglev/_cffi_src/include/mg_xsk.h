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
 * Why a UMEM beside the pool and not the pool itself (zero copy end to end): not the
 * layout -- 2048-byte pool frames are valid chunks, and an XSK headroom of 64 would put the
 * packet exactly at MG_FRAME_HEADROOM -- but the accounting: frames lent to the kernel
 * (fill, RX, TX and completion rings) are in no place the pool journal knows, a killed
 * steering's fill ring dies with its socket, and the muxer would have to hold sent frames
 * until their completion (docs/nic.md, "The UMEM is not the shared frame pool").  The copy
 * costs one memcpy per packet each way, the same as AF_PACKET's.
 *
 * Transmit (struct mg_xsk_tx): the socket also has a TX and a completion ring, and its
 * UMEM is a memfd mapped MAP_SHARED.  Chunks [0, MG_XSK_RX_FRAMES) belong to the fill and
 * RX rings (steering), chunks [MG_XSK_RX_FRAMES, MG_XSK_NUM_FRAMES) to the TX and
 * completion rings (the muxer).  The muxer, another process, takes a duplicate of the
 * socket and of the memfd (pidfd_getfd) and maps the two rings steering never touches:
 * every ring keeps one user-space side, in one process.  mg_xsk_tx_burst copies each pool
 * frame into a free TX chunk (one copy, as the AF_PACKET TX ring), publishes the burst
 * with one producer update and kicks the kernel with sendto(MSG_DONTWAIT) only when it
 * set XDP_RING_NEED_WAKEUP on the TX ring (copy mode always does: the kernel sends from
 * the sendto call, at most 32 frames per call, so the kick is repeated while it answers
 * EAGAIN and the ring is not empty, bounded).  Completed chunks go back to the free
 * stack at the start of the next burst.
 *
 * A muxer that attaches after a dead one rebuilds the free stack from the rings: the
 * chunks in flight are the TX descriptors between the completion ring's consumer and
 * the TX ring's producer (the kernel completes in order, and there are no more TX chunks
 * than TX ring slots, so those descriptors are still intact).
 */
#ifndef MG_XSK_H
#define MG_XSK_H

#include "mg_common.h"
#include "mg_frame.h"

#define MG_XSK_FRAME_SIZE 2048u
#define MG_XSK_NUM_FRAMES 4096u /* 8 MiB UMEM per socket */
#define MG_XSK_RING_SIZE 2048u  /* fill, RX, TX, completion (power of two) */
#define MG_XSK_RX_FRAMES 2048u  /* chunks 0..2047: fill/RX; the rest: TX */
#define MG_XSK_TX_FRAMES (MG_XSK_NUM_FRAMES - MG_XSK_RX_FRAMES)
#define MG_XSK_PREFETCH 4u      /* packets ahead whose bytes the burst loops prefetch */
#define MG_XSK_KICK_MAX 64u     /* sendto() kicks per burst at most (copy mode: 32 frames each) */

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
    int umem_fd;            /* memfd of the UMEM (shared with the muxer) */
    uint8_t *umem;
    size_t umem_len;
    struct mg_xsk_ring fill, rx;
    struct mg_xsk_stats stats;
};

struct mg_xsk_tx_stats {
    uint64_t tx_packets;    /* handed to the TX ring */
    uint64_t tx_bytes;
    uint64_t tx_completed;  /* chunks back from the completion ring */
    uint64_t tx_ring_full;  /* frames refused: no free chunk or TX slot (counted, not waited for) */
    uint64_t tx_oversize;   /* frames longer than a chunk */
    uint64_t tx_kicks;      /* sendto() because the kernel asked (need_wakeup) */
    uint64_t tx_kick_errors;/* kicks that failed with something else than EAGAIN/EBUSY/ENOBUFS */
    uint64_t tx_bursts;
    uint64_t tx_kick_again; /* kicks answered EAGAIN/EBUSY/ENOBUFS (the kernel sent a batch, or none) */
    uint64_t tx_left;       /* bursts whose kicks ended with frames still in the TX ring: in
                             * copy mode those wait for a later kick or a poll(); a zero-copy
                             * driver consumes the ring on its own, so there it means little */
};

/* The muxer's side of one socket: TX and completion rings, TX chunks. */
struct mg_xsk_tx {
    int fd;                 /* the muxer's duplicate of the socket */
    int last_errno;         /* of the last failed kick */
    uint8_t *umem;
    size_t umem_len;
    struct mg_xsk_ring tx, comp;
    uint32_t n_free;
    uint64_t free_chunks[MG_XSK_TX_FRAMES];
    struct mg_xsk_tx_stats stats;
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
/* The UMEM's memfd (for the muxer's pidfd_getfd), -1 when closed. */
int mg_xsk_umem_fd(const struct mg_xsk *x);

/* Maps the TX and completion rings of socket `fd` (a duplicate of a socket mg_xsk_open
 * made, possibly in another process) and its UMEM from `umem_fd`; takes ownership of both
 * descriptors (closed by mg_xsk_tx_close, also on failure).  0 or -errno. */
int mg_xsk_tx_attach(struct mg_xsk_tx *t, int fd, int umem_fd);
void mg_xsk_tx_close(struct mg_xsk_tx *t);
/* Copies frames descs[0..k) into TX chunks and sends them; returns k (<= n: the rest had
 * no chunk or slot and are counted in tx_ring_full), or -errno (-EBADF when detached,
 * -ENETDOWN/-ENXIO from a kick: the socket is gone or unbound).  The caller owns every
 * pool frame again on return. */
int mg_xsk_tx_burst(struct mg_xsk_tx *t, const uint8_t *pool, const uint64_t *descs, uint32_t n);
/* Chunks in flight (handed to the kernel, not completed yet). */
uint32_t mg_xsk_tx_inflight(const struct mg_xsk_tx *t);

#endif
