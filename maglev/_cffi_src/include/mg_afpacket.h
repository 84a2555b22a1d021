/* AF_PACKET NIC: a TPACKET_V2 (or V3) receive ring read in bursts straight into pool
 * frames, and burst transmit of pool frames through a TX ring with PACKET_QDISC_BYPASS.
 *
 * Receive.  TPACKET_V3 hands the ring to user space one *block* at a time: the kernel
 * fills a block with variable-length packets and "retires" it (block_status |=
 * TP_STATUS_USER) when it is full or when tp_retire_blk_tov milliseconds have passed.
 * mg_afp_rx_burst() walks the packets of the current user-owned block, copies each one
 * into the next free frame at MG_FRAME_META_SIZE + MG_FRAME_HEADROOM and fills the frame
 * metadata; when a block is exhausted it is handed back (block_status = TP_STATUS_KERNEL,
 * release store) and the walk moves to the next block.  A burst may end in the middle of
 * a block; the position is kept in struct mg_afp.  The copy is the price of a shared
 * frame pool that outlives the ring (frames travel through worker rings while the kernel
 * reuses the block); it is one memcpy per packet of at most MG_FRAME_DATA_MAX bytes.
 *
 * Trade-off, and why V2 is the default: a V3 socket is woken (sk_data_ready) only when a
 * block is retired -- full, or after tp_retire_blk_tov -- and the packets of the block
 * being filled are not visible to user space before that, so a lone SYN waits for the
 * retire timer.  Its period, tp_retire_blk_tov, is in whole milliseconds (0 = a kernel
 * default from the link speed, 8 ms without one), so 1 ms is the floor: wake-up p50
 * 0.75-0.84 ms, max 0.975 ms on a quiet machine with this kernel (6.18, HZ=250: the
 * timer is not rounded to 4 ms ticks here); under load the wake-up adds scheduling delay
 * (p50 0.8-4 ms measured before).  Reading the open block early would race
 * the kernel's copy (its packet count is raised before the bytes are written).  No V3
 * setting gets under that floor (docs/nic.md, session 5).  TPACKET_V2
 * (MG_AFP_RING_V2) hands over every packet at once (one status word per fixed 2 KiB
 * frame, one wake-up per packet when idle; ~0.05 ms); under load both are read in bursts
 * without wake-ups.  So MG_AFP_RING_V2 is the default and V3 is kept for measurements.
 * Same copy, same metadata.
 *
 * What the kernel gives a packet socket is not always what was on the wire, so the
 * driver repairs it:
 *   - the 802.1Q tag is stripped into tp_vlan_tci (TP_STATUS_VLAN_VALID): reinserted;
 *   - packets sent by a local stack with checksum offload arrive CHECKSUM_PARTIAL
 *     (TP_STATUS_CSUMNOTREADY, e.g. veth from another namespace): the TCP/UDP checksum is
 *     completed in software, as a real NIC would have done;
 *   - packets this host sends (PACKET_OUTGOING) are skipped (PACKET_IGNORE_OUTGOING is
 *     set too where the kernel has it), so the forwarder never re-reads its own output;
 *   - packets longer than a frame or truncated by the ring are dropped and counted.
 *
 * Transmit: a TPACKET_V2 TX ring (PACKET_TX_RING) on a socket of its own, with
 * PACKET_QDISC_BYPASS (frames go straight to the driver's xmit, like a kernel-bypass NIC:
 * no qdisc, no taps).  mg_afp_tx_burst copies each pool frame into the next ring slot
 * (status TP_STATUS_AVAILABLE), marks it TP_STATUS_SEND_REQUEST (release store), and one
 * send(fd, NULL, 0, MSG_DONTWAIT) per burst hands every marked slot to the kernel, which
 * gives a slot back (TP_STATUS_AVAILABLE) when the driver is done with its skb.  Against
 * the former sendmmsg(): no iovec/msghdr per frame, no per-message socket lookup and
 * address checks, one syscall per burst whatever its size.  The copy into the ring is
 * the price of a pool that outlives the ring (the caller owns every frame again as soon
 * as the call returns, sent or not), the same copy sendmmsg made into the skb.  A slot
 * still busy when its turn comes (the kernel has not freed it yet) is kicked once; if it
 * stays busy the frame is dropped and counted (tx_ring_full), never waited for.  Where
 * the TX ring cannot be set up (mmap refused) the driver falls back to sendmmsg().  The
 * TX socket is separate from the RX one so that each has its own ring version (V2 here,
 * V3 or V2 for receive) and a transmit-only object maps no receive ring.  The TX socket
 * is *created* by mg_afp_open() (the ring is added on the first burst): a packet socket
 * belongs to the network namespace it was created in, and a caller that opens the NIC
 * inside a namespace (the lab's sender enters it only around the open) must transmit
 * there too -- created later, it would live in the caller's home namespace, fail to bind
 * to the ifindex and silently fall back to sendmmsg (as the lab's sender did until
 * 2026-12-07).  Its send buffer covers the whole ring (SO_SNDBUFFORCE, else SO_SNDBUF
 * up to wmem_max): a slot is busy until its skb is freed, which on veth is at the far
 * end of the forwarding chain, and the default 208 KiB buffer (~250 small skbs) would
 * cap the frames in flight at a tenth of the ring (sends fail with EAGAIN beyond it).
 *
 * Linear TX skbs.  The kernel builds a TX-ring skb with only the link-layer header in its
 * linear part and the rest as page fragments pointing into the ring (zero-copy); veth --
 * and anything else that must own the bytes (a bridge, a tap, forwarding into another
 * namespace) -- then copies those fragments into freshly allocated pages
 * (skb_copy_ubufs): a page allocation and a second copy per packet, measured at ~20 % of
 * the lab sender's CPU.  With PACKET_VNET_HDR set before the ring, each slot starts with
 * a struct virtio_net_hdr whose hdr_len says how many bytes to copy into the linear
 * part: the driver sets it to the whole frame, so the skb is linear, one copy, no page.
 * MG_AFP_F_TX_FRAGS keeps the zero-copy layout (for a NIC whose driver maps the ring
 * pages directly, or to measure); where PACKET_VNET_HDR is refused, so is linear.
 *
 * Fan-out (mg_afp_fanout): several receive sockets on one interface share its packets
 * through PACKET_FANOUT (hash mode, with PACKET_FANOUT_FLAG_DEFRAG so that every fragment
 * of a datagram lands on one socket), as several steering sockets (``queues=N``) do.
 *
 * Interface down/up: the kernel unhooks a packet socket on NETDEV_DOWN and re-hooks it
 * on NETDEV_UP (same ifindex), so the ring simply sees no packets while the link is
 * down; send errors (ENETDOWN, ENXIO) are counted per frame (tx_errors) and per outage
 * (tx_link_down).  A refused send leaves the kernel's TX ring head where it was, so the
 * driver takes its pending slots back and rewinds its own position to that head: the
 * first burst after the link comes back goes out (tx_take_back in the .c file).
 *
 * References: packet(7); Documentation/networking/packet_mmap.rst (TPACKET_V3 section).
 */
#ifndef MG_AFPACKET_H
#define MG_AFPACKET_H

#include "mg_common.h"
#include "mg_frame.h"

/* Ring versions (mg_afp_rx_enable) */
#define MG_AFP_RING_V2 2
#define MG_AFP_RING_V3 3
/* TPACKET_V2 frame size: header + sockaddr_ll + a full MG_FRAME_DATA_MAX packet. */
#define MG_AFP_V2_FRAME_SIZE 2048u
/* TX ring: 2048 slots of MG_AFP_V2_FRAME_SIZE (4 MiB) in blocks of 64 KiB. */
#define MG_AFP_TX_BLOCK_SIZE (64u * 1024u)
#define MG_AFP_TX_BLOCK_NR 64u
/* Default RX ring geometry: 16 blocks of 256 KiB (4 MiB), retire timeout 1 ms. */
#define MG_AFP_BLOCK_SIZE (256u * 1024u)
#define MG_AFP_BLOCK_NR 16u
#define MG_AFP_RETIRE_TOV_MS 1u

/* mg_afp_open() flags */
#define MG_AFP_F_NO_QDISC_BYPASS 0x1 /* keep the qdisc (and taps) on transmit */
#define MG_AFP_F_NO_CSUM_FIX 0x2     /* deliver CHECKSUM_PARTIAL packets unrepaired */
#define MG_AFP_F_TX_FRAGS 0x4        /* TX ring: let the skb point at the ring's pages (see above) */

struct mg_afp_stats {
    uint64_t rx_packets;    /* delivered into frames */
    uint64_t rx_bytes;
    uint64_t rx_outgoing;   /* skipped: sent by this host */
    uint64_t rx_oversize;   /* dropped: longer than MG_FRAME_DATA_MAX */
    uint64_t rx_truncated;  /* dropped: the ring kept only part of the packet */
    uint64_t rx_csum_fixed; /* CHECKSUM_PARTIAL packets completed in software */
    uint64_t rx_vlan;       /* packets whose 802.1Q tag was reinserted */
    uint64_t rx_blocks;     /* ring blocks consumed */
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t tx_errors;     /* frames not sent (send error or invalid frame) */
    uint64_t tx_calls;      /* send/sendmmsg calls */
    uint64_t tx_ring_full;  /* frames dropped: their TX ring slot was still busy */
    uint64_t tx_link_down;  /* outages seen by transmit: sends refused with ENETDOWN/ENXIO/
                             * ENODEV, counted once until a send goes through again (the
                             * pending slots are taken back, see tx_kick) */
};

struct mg_afp {
    int fd;
    int ifindex;
    uint32_t flags;
    uint32_t block_size;
    uint32_t block_nr;
    uint32_t cur_block;     /* block being consumed */
    uint32_t pkts_left;     /* packets not yet read from cur_block; 0 = not started */
    uint32_t pkt_off;       /* offset of the next packet inside cur_block */
    uint32_t version;       /* MG_AFP_RING_V2 or _V3 once receiving, 0 before */
    uint32_t frame_size;    /* V2 */
    uint32_t frame_nr;      /* V2 */
    uint32_t cur_frame;     /* V2: next frame to look at */
    uint8_t *map;           /* the mmap'd RX ring */
    size_t map_len;
    int last_tx_errno;      /* errno of the latest failed send (0 = none) */
    int tx_fd;              /* the TX ring's socket (-1: none yet; -2: sendmmsg on fd) */
    struct mg_afp_stats stats;
    uint8_t *tx_map;        /* the mmap'd TX ring */
    size_t tx_map_len;
    uint32_t tx_frame_nr;
    uint32_t tx_cur;        /* next TX slot to fill */
    int tx_sock;            /* the TX socket made at open time, until the ring takes it */
    uint32_t tx_vnet;       /* bytes of virtio_net_hdr before each TX frame (0 or 10) */
    uint32_t tx_down;       /* the latest kick was refused by a dead link */
};

/* Opens a packet socket for ifindex that can transmit but receives nothing yet.
 * Returns the socket fd (>= 0) or -errno (-EPERM without CAP_NET_RAW). */
int mg_afp_open(struct mg_afp *afp, int ifindex, uint32_t flags);

/* Adds the RX ring and starts receiving every protocol.  version: MG_AFP_RING_V3
 * (default when 0) or MG_AFP_RING_V2.  block_size: a multiple of the page size and a power
 * of two (0 = default); block_nr 0 = default; tov_ms (V3 only) 0 = default.  Returns 0 or
 * -errno; a second call does nothing. */
int mg_afp_rx_enable(struct mg_afp *afp, uint32_t version, uint32_t block_size, uint32_t block_nr,
                     uint32_t tov_ms);

/* Joins receive fan-out group `group` (hash mode + defrag) on this interface, so that
 * several sockets share its packets.  Call after mg_afp_rx_enable.  0 or -errno. */
int mg_afp_fanout(struct mg_afp *afp, uint16_t group);

/* Unmaps the rings and closes the sockets; safe to call twice. */
void mg_afp_close(struct mg_afp *afp);

/* Receives up to n packets into the frames named by descs[0..n) (low 32 bits = frame
 * index in pool, frames of MG_FRAME_SIZE bytes), in order: returns k, and frames
 * descs[0..k) hold packets (meta len, data_off = MG_FRAME_HEADROOM, wire_len, rx_ts_ns;
 * other meta fields zeroed, backend_index = -1).  0 when the ring has nothing ready. */
int mg_afp_rx_burst(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n);

/* Sends the n frames named by descs (each frame's meta len/data_off say what to send)
 * through the TX ring (set up on first use).  Returns how many were handed to the
 * kernel; the rest are counted in tx_errors (and tx_ring_full / last_tx_errno). */
int mg_afp_tx_burst(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n);

/* The kernel's counters for this socket since the last call (PACKET_STATISTICS reads
 * and resets them): packets seen, packets dropped for lack of ring space, freezes. */
int mg_afp_kernel_stats(struct mg_afp *afp, uint64_t *packets, uint64_t *drops,
                        uint64_t *freezes);

/* Completes the TCP/UDP checksum of an Ethernet frame in place (IPv4 without fragments,
 * IPv6 with TCP/UDP right after the fixed header).  Returns 1 when fixed, 0 when the
 * frame is not TCP/UDP or cannot be handled.  Exposed for tests. */
int mg_afp_csum_complete(uint8_t *frame, uint32_t len);

#endif
