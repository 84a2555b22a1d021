/* AF_PACKET NIC: TPACKET_V2/V3 RX ring + TPACKET_V2 TX ring.  Design notes in mg_afpacket.h. */
#define _GNU_SOURCE
#include "mg_afpacket.h"
#include "mg_csum.h"

#include <arpa/inet.h>
#include <endian.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int is_pow2(uint32_t x) { return x && !(x & (x - 1)); }

void mg_afp_close(struct mg_afp *afp)
{
    if (afp->map && afp->map != MAP_FAILED)
        munmap(afp->map, afp->map_len);
    afp->map = NULL;
    afp->map_len = 0;
    if (afp->tx_map && afp->tx_map != MAP_FAILED)
        munmap(afp->tx_map, afp->tx_map_len);
    afp->tx_map = NULL;
    afp->tx_map_len = 0;
    if (afp->tx_fd >= 0)
        close(afp->tx_fd);
    afp->tx_fd = -1;
    if (afp->tx_sock >= 0)
        close(afp->tx_sock);
    afp->tx_sock = -1;
    if (afp->fd >= 0)
        close(afp->fd);
    afp->fd = -1;
}

static int bind_to(struct mg_afp *afp, uint16_t proto)
{
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(proto);
    sll.sll_ifindex = afp->ifindex;
    return bind(afp->fd, (struct sockaddr *)&sll, sizeof sll) < 0 ? -errno : 0;
}

int mg_afp_open(struct mg_afp *afp, int ifindex, uint32_t flags)
{
    int rc;

    memset(afp, 0, sizeof(*afp));
    afp->fd = -1;
    afp->tx_fd = -1;
    afp->tx_sock = -1;
    if (ifindex <= 0)
        return -EINVAL;
    /* Protocol 0: nothing is received until mg_afp_rx_enable() binds to ETH_P_ALL, so a
     * transmit-only socket costs the kernel nothing per received packet. */
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    afp->fd = fd;
    afp->ifindex = ifindex;
    afp->flags = flags;

    int v;
    if (!(flags & MG_AFP_F_NO_QDISC_BYPASS)) {
        v = 1;
        if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &v, sizeof v) < 0)
            goto fail;
    }
#ifdef PACKET_IGNORE_OUTGOING
    /* Best effort (Linux >= 4.20); rx_burst also checks sll_pkttype. */
    v = 1;
    (void)setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &v, sizeof v);
#endif
    if ((rc = bind_to(afp, 0)) < 0)
        goto fail_rc;
    /* The TX ring's socket, now: in the namespace the caller is in (see the header). */
    afp->tx_sock = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    return fd;

fail:
    rc = errno ? -errno : -EIO;
fail_rc:
    mg_afp_close(afp);
    return rc;
}

int mg_afp_rx_enable(struct mg_afp *afp, uint32_t version, uint32_t block_size, uint32_t block_nr,
                     uint32_t tov_ms)
{
    long page = sysconf(_SC_PAGESIZE);
    int rc;

    if (afp->fd < 0)
        return -EBADF;
    if (afp->map)
        return 0; /* already receiving */
    if (!version)
        version = MG_AFP_RING_V2;
    if (!block_size)
        block_size = MG_AFP_BLOCK_SIZE;
    if (!block_nr)
        block_nr = MG_AFP_BLOCK_NR;
    if (!tov_ms)
        tov_ms = MG_AFP_RETIRE_TOV_MS;
    if ((version != MG_AFP_RING_V2 && version != MG_AFP_RING_V3) || !is_pow2(block_size) ||
        page <= 0 || block_size % (uint32_t)page || block_size < MG_AFP_V2_FRAME_SIZE ||
        block_nr == 0 || block_nr > 4096)
        return -EINVAL;

    int v = version == MG_AFP_RING_V2 ? TPACKET_V2 : TPACKET_V3;
    if (setsockopt(afp->fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0)
        return -errno;
    /* V2: fixed frames; V3: tp_frame_size only sizes the kernel's bookkeeping. */
    uint32_t frame_size = MG_AFP_V2_FRAME_SIZE;
    struct tpacket_req3 req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = block_size;
    req.tp_block_nr = block_nr;
    req.tp_frame_size = frame_size;
    req.tp_frame_nr = (block_size / frame_size) * block_nr;
    if (version == MG_AFP_RING_V3)
        req.tp_retire_blk_tov = tov_ms;
    /* struct tpacket_req (V2) is the prefix of struct tpacket_req3. */
    socklen_t req_len = version == MG_AFP_RING_V3 ? sizeof req : sizeof(struct tpacket_req);
    if (setsockopt(afp->fd, SOL_PACKET, PACKET_RX_RING, &req, req_len) < 0)
        return -errno;

    size_t len = (size_t)block_size * block_nr;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, afp->fd, 0);
    if (map == MAP_FAILED) /* MAP_LOCKED may exceed RLIMIT_MEMLOCK: retry without */
        map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, afp->fd, 0);
    if (map == MAP_FAILED) {
        rc = -errno;
        memset(&req, 0, sizeof req); /* drop the ring again */
        (void)setsockopt(afp->fd, SOL_PACKET, PACKET_RX_RING, &req, req_len);
        return rc;
    }
    afp->map = map;
    afp->map_len = len;
    afp->version = version;
    afp->block_size = block_size;
    afp->block_nr = block_nr;
    afp->frame_size = frame_size;
    afp->frame_nr = req.tp_frame_nr;
    afp->cur_block = 0;
    afp->pkts_left = 0;
    afp->pkt_off = 0;
    afp->cur_frame = 0;
    return bind_to(afp, ETH_P_ALL);
}

int mg_afp_fanout(struct mg_afp *afp, uint16_t group)
{
    if (afp->fd < 0 || !afp->map)
        return -EBADF;
    int v = (int)((uint32_t)group | (uint32_t)(PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16);
    return setsockopt(afp->fd, SOL_PACKET, PACKET_FANOUT, &v, sizeof v) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------ checksums */

int mg_afp_csum_complete(uint8_t *frame, uint32_t len)
{
    uint32_t off = 14;
    if (len < off)
        return 0;
    uint16_t et = (uint16_t)(frame[12] << 8 | frame[13]);
    while ((et == 0x8100 || et == 0x88a8) && len >= off + 4) {
        et = (uint16_t)(frame[off + 2] << 8 | frame[off + 3]);
        off += 4;
    }
    uint8_t proto;
    uint32_t l4, l4len;
    uint32_t acc = 0;
    if (et == 0x0800) {
        if (len < off + 20)
            return 0;
        const uint8_t *ip = frame + off;
        uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
        uint32_t tot = (uint32_t)(ip[2] << 8 | ip[3]);
        if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl || off + tot > len)
            return 0;
        if ((ip[6] & 0x3f) || ip[7]) /* MF or offset: a fragment has no whole L4 */
            return 0;
        proto = ip[9];
        l4 = off + ihl;
        l4len = tot - ihl;
        acc = mg_csum_add(acc, ip + 12, 8);
    } else if (et == 0x86dd) {
        if (len < off + 40)
            return 0;
        const uint8_t *ip = frame + off;
        uint32_t plen = (uint32_t)(ip[4] << 8 | ip[5]);
        if ((ip[0] >> 4) != 6 || off + 40 + plen > len)
            return 0;
        proto = ip[6];
        l4 = off + 40;
        /* Skip hop-by-hop, routing and destination options headers. */
        while (proto == 0 || proto == 43 || proto == 60) {
            if (l4 + 8 > off + 40 + plen)
                return 0;
            uint32_t hl = ((uint32_t)frame[l4 + 1] + 1) * 8;
            proto = frame[l4];
            l4 += hl;
        }
        if (l4 > off + 40 + plen)
            return 0;
        l4len = off + 40 + plen - l4;
        acc = mg_csum_add(acc, ip + 8, 32);
    } else {
        return 0;
    }
    uint32_t cso;
    if (proto == IPPROTO_TCP) {
        if (l4len < 20)
            return 0;
        cso = 16;
    } else if (proto == IPPROTO_UDP) {
        if (l4len < 8)
            return 0;
        cso = 6;
    } else {
        return 0;
    }
    acc += proto;
    acc += l4len;
    frame[l4 + cso] = 0;
    frame[l4 + cso + 1] = 0;
    acc = mg_csum_add(acc, frame + l4, l4len);
    uint16_t c = mg_csum_fold(acc);
    if (proto == IPPROTO_UDP && c == 0)
        c = 0xffff; /* RFC 768: 0 means "no checksum" */
    frame[l4 + cso] = (uint8_t)(c >> 8);
    frame[l4 + cso + 1] = (uint8_t)c;
    return 1;
}

/* ------------------------------------------------------------------ receive */

static inline struct tpacket_block_desc *block_at(struct mg_afp *afp, uint32_t i)
{
    return (struct tpacket_block_desc *)(afp->map + (size_t)i * afp->block_size);
}

/* Hands the current block back to the kernel and moves on. */
static inline void block_release(struct mg_afp *afp, struct tpacket_block_desc *bd)
{
    /* Release: our reads of the block happen before the kernel may refill it
     * (pairs with the kernel's read of block_status in prb_dispatch_next_block). */
    __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    afp->cur_block = (afp->cur_block + 1) % afp->block_nr;
    afp->pkts_left = 0;
    afp->pkt_off = 0;
    afp->stats.rx_blocks++;
}

/* What the ring says about one packet, V2 or V3. */
struct ring_pkt {
    const uint8_t *hdr; /* the tpacket2_hdr / tpacket3_hdr */
    uint32_t hdr_len;   /* its aligned size: the sockaddr_ll follows */
    uint32_t status, snaplen, len, mac;
    uint16_t vlan_tci, vlan_tpid;
};

/* Copies one ring packet into frame `idx`; returns 1 when delivered, 0 when dropped. */
static int deliver(struct mg_afp *afp, uint8_t *pool, uint32_t idx, const struct ring_pkt *rp,
                   uint64_t ts)
{
    const struct sockaddr_ll *sll = (const struct sockaddr_ll *)(rp->hdr + rp->hdr_len);
    if (sll->sll_pkttype == PACKET_OUTGOING) {
        afp->stats.rx_outgoing++;
        return 0;
    }
    uint32_t snap = rp->snaplen, wire = rp->len;
    if (snap < wire) {
        afp->stats.rx_truncated++;
        return 0;
    }
    int vlan = (rp->status & TP_STATUS_VLAN_VALID) && snap >= 12;
    uint32_t len = snap + (vlan ? 4u : 0u);
    if (len > MG_FRAME_DATA_MAX) {
        afp->stats.rx_oversize++;
        return 0;
    }
    const uint8_t *src = rp->hdr + rp->mac;
    struct mg_frame_meta *m = mg_frame_meta(pool, idx);
    uint8_t *dst = (uint8_t *)m + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM;
    if (vlan) {
        uint16_t tpid = (rp->status & TP_STATUS_VLAN_TPID_VALID) ? rp->vlan_tpid : 0x8100;
        uint16_t tci = rp->vlan_tci;
        memcpy(dst, src, 12);
        dst[12] = (uint8_t)(tpid >> 8);
        dst[13] = (uint8_t)tpid;
        dst[14] = (uint8_t)(tci >> 8);
        dst[15] = (uint8_t)tci;
        memcpy(dst + 16, src + 12, snap - 12);
        afp->stats.rx_vlan++;
    } else {
        memcpy(dst, src, snap);
    }
    if ((rp->status & TP_STATUS_CSUMNOTREADY) && !(afp->flags & MG_AFP_F_NO_CSUM_FIX))
        afp->stats.rx_csum_fixed += (uint64_t)mg_afp_csum_complete(dst, len);
    /* Metadata: everything the later stages fill starts clean. */
    memset(m, 0, sizeof(*m));
    m->len = len;
    m->data_off = MG_FRAME_HEADROOM;
    m->wire_len = wire + (vlan ? 4u : 0u);
    m->backend_index = -1;
    m->rx_ts_ns = ts;
    afp->stats.rx_packets++;
    afp->stats.rx_bytes += len;
    return 1;
}

/* TPACKET_V2: one status word per fixed-size frame; no latency floor. */
static int rx_burst_v2(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    uint32_t got = 0, seen = 0;
    uint64_t ts = 0;
    uint32_t per_block = afp->block_size / afp->frame_size;
    /* At most one lap of the ring per call. */
    while (got < n && seen < afp->frame_nr) {
        uint32_t f = afp->cur_frame;
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(afp->map +
            (size_t)(f / per_block) * afp->block_size + (size_t)(f % per_block) * afp->frame_size);
        /* Acquire: read the frame only after seeing it is ours (pairs with the kernel's
         * smp_wmb before it sets TP_STATUS_USER in __packet_set_status). */
        uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (!(st & TP_STATUS_USER))
            break;
        if (!ts)
            ts = mg_mono_ns();
        struct ring_pkt rp = {(const uint8_t *)h, TPACKET_ALIGN(sizeof(struct tpacket2_hdr)), st,
                              h->tp_snaplen, h->tp_len, h->tp_mac, h->tp_vlan_tci, h->tp_vlan_tpid};
        got += (uint32_t)deliver(afp, pool, (uint32_t)descs[got], &rp, ts);
        /* Release: our copy is done before the kernel may reuse the frame. */
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        afp->cur_frame = (f + 1) % afp->frame_nr;
        seen++;
    }
    return (int)got;
}

int mg_afp_rx_burst(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    if (afp->fd < 0 || !afp->map)
        return -EBADF;
    if (n > MG_BURST_MAX)
        n = MG_BURST_MAX;
    if (afp->version == MG_AFP_RING_V2)
        return rx_burst_v2(afp, pool, descs, n);
    uint32_t got = 0;
    uint64_t ts = 0;
    /* Visit at most every block once per call, so a busy ring cannot pin us here. */
    for (uint32_t visited = 0; got < n && visited <= afp->block_nr;) {
        struct tpacket_block_desc *bd = block_at(afp, afp->cur_block);
        if (afp->pkts_left == 0) {
            /* Acquire: the block's packets are read only after we saw it is ours
             * (pairs with the kernel's smp_wmb + status store when it retires a block). */
            uint32_t st = __atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE);
            if (!(st & TP_STATUS_USER))
                break;
            afp->pkts_left = bd->hdr.bh1.num_pkts;
            afp->pkt_off = bd->hdr.bh1.offset_to_first_pkt;
            visited++;
            if (afp->pkts_left == 0) {
                block_release(afp, bd);
                continue;
            }
        }
        if (!ts)
            ts = mg_mono_ns(); /* one clock read per burst */
        while (afp->pkts_left && got < n) {
            struct tpacket3_hdr *h = (struct tpacket3_hdr *)((uint8_t *)bd + afp->pkt_off);
            struct ring_pkt rp = {(const uint8_t *)h, TPACKET_ALIGN(sizeof(struct tpacket3_hdr)),
                                  h->tp_status, h->tp_snaplen, h->tp_len, h->tp_mac,
                                  (uint16_t)h->hv1.tp_vlan_tci, h->hv1.tp_vlan_tpid};
            got += (uint32_t)deliver(afp, pool, (uint32_t)descs[got], &rp, ts);
            afp->pkt_off += h->tp_next_offset;
            afp->pkts_left--;
        }
        if (afp->pkts_left == 0)
            block_release(afp, bd);
    }
    return (int)got;
}

/* ------------------------------------------------------------------ transmit */

/* The sendmmsg() path: used where the TX ring cannot be set up. */
static int tx_burst_sendmmsg(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    struct mmsghdr msgs[MG_BURST_MAX];
    struct iovec iov[MG_BURST_MAX];
    uint32_t sent_total = 0;
    while (n) {
        uint32_t chunk = n > MG_BURST_MAX ? MG_BURST_MAX : n, k = 0;
        for (uint32_t i = 0; i < chunk; i++) {
            uint32_t idx = (uint32_t)descs[i];
            struct mg_frame_meta *m = mg_frame_meta(pool, idx);
            /* A frame whose packet would run past its slot is a caller bug: count it. */
            if (m->len < 14 || (uint64_t)m->data_off + m->len >
                                   MG_FRAME_SIZE - MG_FRAME_META_SIZE) {
                afp->stats.tx_errors++;
                continue;
            }
            iov[k].iov_base = mg_frame_data(pool, idx);
            iov[k].iov_len = m->len;
            memset(&msgs[k], 0, sizeof msgs[k]);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            k++;
        }
        uint32_t done = 0;
        while (done < k) {
            afp->stats.tx_calls++;
            int r = sendmmsg(afp->fd, msgs + done, k - done, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                /* The first unsent frame failed: count it and try the rest once more
                 * (a transient ENOBUFS drops one frame, not the burst). */
                afp->last_tx_errno = errno;
                afp->stats.tx_errors++;
                done++;
                if (errno == ENETDOWN || errno == ENXIO || errno == ENODEV) {
                    afp->stats.tx_errors += k - done; /* link gone: drop the burst */
                    done = k;
                    if (!afp->tx_down) {
                        afp->tx_down = 1;
                        afp->stats.tx_link_down++;
                    }
                }
                continue;
            }
            afp->tx_down = 0;
            for (int j = 0; j < r; j++)
                afp->stats.tx_bytes += iov[done + (uint32_t)j].iov_len;
            afp->stats.tx_packets += (uint64_t)r;
            sent_total += (uint32_t)r;
            done += (uint32_t)r;
        }
        descs += chunk;
        n -= chunk;
    }
    return (int)sent_total;
}

/* Where a V2 TX slot's packet starts (no PACKET_TX_HAS_OFF): after the aligned header. */
#define TX_DATA_OFF (TPACKET_ALIGN(sizeof(struct tpacket2_hdr)))

/* Creates the TX socket and ring.  0, or -errno (the caller falls back to sendmmsg). */
static int tx_ring_setup(struct mg_afp *afp)
{
    int fd = afp->tx_sock;
    if (fd < 0)
        return -EBADF;
    afp->tx_sock = -1; /* this function owns it now: closed on failure, kept as tx_fd */
    int v = TPACKET_V2, rc;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0)
        goto fail;
    if (!(afp->flags & MG_AFP_F_NO_QDISC_BYPASS)) {
        v = 1;
        if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &v, sizeof v) < 0)
            goto fail;
    }
    v = 1; /* a malformed slot is skipped, not a stuck ring */
    (void)setsockopt(fd, SOL_PACKET, PACKET_LOSS, &v, sizeof v);
    /* Linear skbs (header): a virtio_net_hdr before each frame, set before the ring. */
    afp->tx_vnet = 0;
    v = 1;
    if (!(afp->flags & MG_AFP_F_TX_FRAGS) &&
        setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &v, sizeof v) == 0)
        afp->tx_vnet = (uint32_t)sizeof(struct virtio_net_hdr);
    /* Room for a whole ring of skbs in flight (header): the kernel doubles the value. */
    v = (int)(MG_AFP_TX_BLOCK_SIZE / MG_AFP_V2_FRAME_SIZE * MG_AFP_TX_BLOCK_NR) * 2048;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    struct tpacket_req req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = MG_AFP_TX_BLOCK_SIZE;
    req.tp_block_nr = MG_AFP_TX_BLOCK_NR;
    req.tp_frame_size = MG_AFP_V2_FRAME_SIZE;
    req.tp_frame_nr = (MG_AFP_TX_BLOCK_SIZE / MG_AFP_V2_FRAME_SIZE) * MG_AFP_TX_BLOCK_NR;
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) < 0)
        goto fail;
    size_t len = (size_t)req.tp_block_size * req.tp_block_nr;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, 0);
    if (map == MAP_FAILED)
        map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        goto fail;
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = 0; /* transmit only: receives nothing */
    sll.sll_ifindex = afp->ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        rc = -errno;
        munmap(map, len);
        close(fd);
        return rc;
    }
    afp->tx_fd = fd;
    afp->tx_map = map;
    afp->tx_map_len = len;
    afp->tx_frame_nr = req.tp_frame_nr;
    afp->tx_cur = 0;
    return 0;
fail:
    rc = -errno;
    close(fd);
    return rc;
}

static inline struct tpacket2_hdr *tx_slot(struct mg_afp *afp, uint32_t i)
{
    return (struct tpacket2_hdr *)(afp->tx_map + (size_t)i * MG_AFP_V2_FRAME_SIZE);
}

/* Takes back every slot the kernel has not consumed yet, newest first, and moves tx_cur
 * back to the first of them.  The kernel's TX ring head only moves past a slot it took
 * (SENDING, then AVAILABLE when the skb is freed), so the slots from its head up to
 * tx_cur are exactly the SEND_REQUEST run that ends at tx_cur: after this, tx_cur is
 * where the kernel will look next.  Returns how many were taken back (each counted in
 * tx_errors and no longer in tx_packets). */
static uint32_t tx_take_back(struct mg_afp *afp)
{
    uint32_t back = 0, nr = afp->tx_frame_nr;
    while (back < nr) {
        struct tpacket2_hdr *h = tx_slot(afp, (afp->tx_cur + nr - 1 - back) % nr);
        if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) != TP_STATUS_SEND_REQUEST)
            break;
        __atomic_store_n(&h->tp_status, TP_STATUS_AVAILABLE, __ATOMIC_RELEASE);
        afp->stats.tx_errors++;
        afp->stats.tx_packets--;
        afp->stats.tx_bytes -= h->tp_len - afp->tx_vnet;
        back++;
    }
    afp->tx_cur = (afp->tx_cur + nr - back) % nr;
    return back;
}

/* Hands every SEND_REQUEST slot to the kernel.  Returns 0 or -errno.  On a dead link
 * (ENETDOWN: the device is down; ENXIO/ENODEV: gone) the kernel refuses the call before
 * it looks at the ring, so its head stays where it was: the pending slots are taken back
 * and tx_cur goes back with them (tx_take_back).  Leaving tx_cur ahead -- as until
 * 2026-12-07 -- made the kernel wait at an empty slot once the link was up again, and
 * the link flap cost every frame until the ring wrapped (~2000 frames: the lab's
 * forwarder passed 0 of 50 requests after `ip link set eth0 down; ... up`). */
static int tx_kick(struct mg_afp *afp)
{
    for (;;) {
        afp->stats.tx_calls++;
        if (send(afp->tx_fd, NULL, 0, MSG_DONTWAIT) >= 0) {
            afp->tx_down = 0;
            return 0;
        }
        if (errno == EINTR)
            continue;
        int e = errno;
        afp->last_tx_errno = e;
        if (e == EAGAIN || e == ENOBUFS)
            return 0; /* queued slots go with the next kick */
        if (!afp->tx_down && (e == ENETDOWN || e == ENXIO || e == ENODEV)) {
            afp->tx_down = 1; /* one count per outage, not per burst */
            afp->stats.tx_link_down++;
        }
        (void)tx_take_back(afp);
        return -e;
    }
}

/* Frames of this burst that were handed over: tx_packets grew by them.  A take-back may
 * also reclaim slots of an earlier burst that the kernel had not taken yet (its kick got
 * EAGAIN/ENOBUFS), so tx_packets can end below where this burst found it: none of this
 * burst's frames went out then. */
static inline int tx_sent(const struct mg_afp *afp, uint64_t before)
{
    return afp->stats.tx_packets > before ? (int)(afp->stats.tx_packets - before) : 0;
}

int mg_afp_tx_burst(struct mg_afp *afp, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    if (afp->fd < 0)
        return -EBADF;
    if (afp->tx_fd == -1 && tx_ring_setup(afp) < 0)
        afp->tx_fd = -2; /* no ring here: sendmmsg from now on */
    if (afp->tx_fd == -2)
        return tx_burst_sendmmsg(afp, pool, descs, n);
    uint32_t queued = 0, kicked = 0;
    uint64_t before = afp->stats.tx_packets;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t idx = (uint32_t)descs[i];
        struct mg_frame_meta *m = mg_frame_meta(pool, idx);
        if (m->len < 14 || (uint64_t)m->data_off + m->len > MG_FRAME_SIZE - MG_FRAME_META_SIZE ||
            m->len > MG_AFP_V2_FRAME_SIZE - TX_DATA_OFF - afp->tx_vnet) {
            afp->stats.tx_errors++;
            continue;
        }
        struct tpacket2_hdr *h = tx_slot(afp, afp->tx_cur);
        /* Acquire: we write the slot only after the kernel is done with it (pairs with its
         * status store in tpacket_destruct_skb). */
        uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (st != TP_STATUS_AVAILABLE && !kicked) {
            /* The ring is full of our earlier frames: let the kernel catch up once. */
            if (tx_kick(afp) < 0)
                return tx_sent(afp, before);
            kicked = 1;
            queued = 0;
            st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        }
        if (st == TP_STATUS_WRONG_FORMAT) {
            afp->stats.tx_errors++; /* an earlier frame the kernel refused; slot is ours */
            st = TP_STATUS_AVAILABLE;
        }
        if (st != TP_STATUS_AVAILABLE) {
            afp->stats.tx_ring_full++;
            afp->stats.tx_errors++;
            continue;
        }
        uint8_t *slot = (uint8_t *)h + TX_DATA_OFF;
        if (afp->tx_vnet) {
            /* hdr_len = the whole frame: the kernel copies it all into the linear part. */
            struct virtio_net_hdr *vh = (struct virtio_net_hdr *)slot;
            memset(vh, 0, sizeof *vh);
            vh->gso_type = VIRTIO_NET_HDR_GSO_NONE;
            vh->hdr_len = htole16((uint16_t)m->len); /* packet sockets: little-endian virtio */
            slot += afp->tx_vnet;
        }
        memcpy(slot, mg_frame_data(pool, idx), m->len);
        h->tp_len = m->len + afp->tx_vnet;
        h->tp_snaplen = m->len + afp->tx_vnet;
        /* Release: the packet bytes are in the slot before the kernel may read it. */
        __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        afp->tx_cur = (afp->tx_cur + 1) % afp->tx_frame_nr;
        afp->stats.tx_packets++;
        afp->stats.tx_bytes += m->len;
        queued++;
    }
    if (queued)
        (void)tx_kick(afp);
    return tx_sent(afp, before);
}

int mg_afp_kernel_stats(struct mg_afp *afp, uint64_t *packets, uint64_t *drops,
                        uint64_t *freezes)
{
    struct tpacket_stats_v3 st;
    socklen_t sl = sizeof st;
    memset(&st, 0, sizeof st);
    if (afp->fd < 0)
        return -EBADF;
    if (getsockopt(afp->fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl) < 0)
        return -errno;
    *packets = st.tp_packets;
    *drops = st.tp_drops;
    *freezes = st.tp_freeze_q_cnt;
    return 0;
}
