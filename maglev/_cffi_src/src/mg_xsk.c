/* AF_XDP socket: receive (steering) and transmit (muxer); design in include/mg_xsk.h. */
#define _GNU_SOURCE
#include "mg_xsk.h"

#include <linux/if_xdp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

/* Release helpers shared by mg_xsk_close and mg_xsk_tx_close: each leaves the
 * resource marked gone, so closing twice is harmless. */
static void unmap_rings(struct mg_xsk_ring *a, struct mg_xsk_ring *b)
{
    if (a->map)
        munmap(a->map, a->map_len);
    if (b->map)
        munmap(b->map, b->map_len);
    a->map = b->map = NULL;
}

static void unmap_umem(uint8_t **umem, size_t len)
{
    if (*umem)
        munmap(*umem, len);
    *umem = NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void mg_xsk_close(struct mg_xsk *x)
{
    unmap_rings(&x->rx, &x->fill);
    close_fd(&x->fd);
    unmap_umem(&x->umem, x->umem_len);
    close_fd(&x->umem_fd);
}

int mg_xsk_umem_fd(const struct mg_xsk *x)
{
    return x->umem ? x->umem_fd : -1;
}

static int map_ring(struct mg_xsk *x, struct mg_xsk_ring *r, const struct xdp_ring_offset *off,
                    uint32_t size, size_t desc_size, uint64_t pgoff)
{
    size_t len = (size_t)off->desc + size * desc_size;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, x->fd, (off_t)pgoff);
    if (m == MAP_FAILED)
        return -errno;
    r->map = m;
    r->map_len = len;
    r->producer = (uint32_t *)((uint8_t *)m + off->producer);
    r->consumer = (uint32_t *)((uint8_t *)m + off->consumer);
    r->flags = (uint32_t *)((uint8_t *)m + off->flags);
    r->desc = (uint8_t *)m + off->desc;
    r->size = size;
    r->mask = size - 1;
    return 0;
}

int mg_xsk_open(struct mg_xsk *x, int ifindex, uint32_t queue, uint32_t mode)
{
    int rc;
    memset(x, 0, sizeof *x);
    x->fd = -1;
    x->umem_fd = -1;
    if (ifindex <= 0 || (mode != MG_XSK_MODE_COPY && mode != MG_XSK_MODE_ZEROCOPY))
        return -EINVAL;
    x->ifindex = ifindex;
    x->queue = queue;
    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0)
        return -errno;
    x->umem_len = (size_t)MG_XSK_NUM_FRAMES * MG_XSK_FRAME_SIZE;
    /* A memfd, mapped shared: the muxer maps the same UMEM for the TX chunks. */
    x->umem_fd = memfd_create("mg-xsk-umem", MFD_CLOEXEC);
    if (x->umem_fd < 0)
        goto fail_errno;
    if (ftruncate(x->umem_fd, (off_t)x->umem_len) < 0)
        goto fail_errno;
    void *u = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE, MAP_SHARED, x->umem_fd, 0);
    if (u == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    x->umem = u;
    struct xdp_umem_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.addr = (uint64_t)(uintptr_t)u;
    reg.len = x->umem_len;
    reg.chunk_size = MG_XSK_FRAME_SIZE;
    reg.headroom = 0;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof reg) < 0)
        goto fail_errno;
    uint32_t sz = MG_XSK_RING_SIZE;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &sz, sizeof sz) < 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &sz, sizeof sz) < 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &sz, sizeof sz) < 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &sz, sizeof sz) < 0)
        goto fail_errno;
    struct xdp_mmap_offsets off;
    socklen_t ol = sizeof off;
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol) < 0)
        goto fail_errno;
    if ((rc = map_ring(x, &x->fill, &off.fr, sz, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING)) < 0 ||
        (rc = map_ring(x, &x->rx, &off.rx, sz, sizeof(struct xdp_desc), XDP_PGOFF_RX_RING)) < 0)
        goto fail;
    /* Every receive chunk goes to the kernel now (the TX chunks are the muxer's). */
    uint64_t *fd = x->fill.desc;
    for (uint32_t i = 0; i < MG_XSK_RX_FRAMES; i++)
        fd[i] = (uint64_t)i * MG_XSK_FRAME_SIZE;
    __atomic_store_n(x->fill.producer, MG_XSK_RX_FRAMES, __ATOMIC_RELEASE);

    struct sockaddr_xdp sxdp;
    memset(&sxdp, 0, sizeof sxdp);
    sxdp.sxdp_family = AF_XDP;
    sxdp.sxdp_ifindex = (uint32_t)ifindex;
    sxdp.sxdp_queue_id = queue;
    sxdp.sxdp_flags = (uint16_t)((mode == MG_XSK_MODE_ZEROCOPY ? XDP_ZEROCOPY : XDP_COPY) |
                                 XDP_USE_NEED_WAKEUP);
    if (bind(x->fd, (struct sockaddr *)&sxdp, sizeof sxdp) < 0)
        goto fail_errno;
    x->mode = mode;
    return 0;
fail_errno:
    rc = -errno;
fail:
    mg_xsk_close(x);
    return rc;
}

int mg_xsk_rx_burst(struct mg_xsk *x, uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    if (x->fd < 0)
        return -EBADF;
    if (n > MG_BURST_MAX)
        n = MG_BURST_MAX;
    uint32_t cons = __atomic_load_n(x->rx.consumer, __ATOMIC_RELAXED);
    /* Acquire: the descriptors and packet bytes before the producer index we see. */
    uint32_t prod = __atomic_load_n(x->rx.producer, __ATOMIC_ACQUIRE);
    uint32_t avail = prod - cons, k = avail < n ? avail : n, got = 0;
    if (!k)
        return 0;
    uint32_t fprod = __atomic_load_n(x->fill.producer, __ATOMIC_RELAXED);
    const struct xdp_desc *rd = x->rx.desc;
    uint64_t *fdesc = x->fill.desc;
    uint64_t ts = mg_mono_ns();
    /* The kernel wrote the chunks on another CPU: ask for the next packets' bytes (and
     * the descriptors after them) a few packets ahead, so the misses overlap. */
    for (uint32_t i = 0; i < k && i < MG_XSK_PREFETCH; i++)
        MG_PREFETCH(x->umem + (rd[(cons + i) & x->rx.mask].addr & (x->umem_len - 1)));
    for (uint32_t i = 0; i < k; i++) {
        const struct xdp_desc *d = &rd[(cons + i) & x->rx.mask];
        if (i + MG_XSK_PREFETCH < k)
            MG_PREFETCH(x->umem + (rd[(cons + i + MG_XSK_PREFETCH) & x->rx.mask].addr & (x->umem_len - 1)));
        uint32_t len = d->len;
        if (len > MG_FRAME_DATA_MAX || d->addr + len > x->umem_len) {
            x->stats.rx_oversize++;
        } else {
            uint32_t idx = (uint32_t)descs[got++];
            struct mg_frame_meta *m = mg_frame_meta(pool, idx);
            memset(m, 0, sizeof(*m));
            memcpy((uint8_t *)m + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM, x->umem + d->addr, len);
            m->len = len;
            m->data_off = MG_FRAME_HEADROOM;
            m->wire_len = len;
            m->backend_index = -1;
            m->rx_ts_ns = ts;
            x->stats.rx_packets++;
            x->stats.rx_bytes += len;
        }
        /* The chunk goes straight back to the kernel (aligned mode: its base address). */
        fdesc[(fprod + i) & x->fill.mask] = d->addr & ~(uint64_t)(MG_XSK_FRAME_SIZE - 1);
    }
    /* Release: our reads of the chunks happen before the kernel may reuse them. */
    __atomic_store_n(x->rx.consumer, cons + k, __ATOMIC_RELEASE);
    __atomic_store_n(x->fill.producer, fprod + k, __ATOMIC_RELEASE);
    x->stats.rx_bursts++;
    if (__atomic_load_n(x->fill.flags, __ATOMIC_ACQUIRE) & XDP_RING_NEED_WAKEUP) {
        x->stats.fill_wakeups++;
        (void)recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    }
    return (int)got;
}

int mg_xsk_kernel_stats(struct mg_xsk *x, uint64_t *out4)
{
    struct xdp_statistics st;
    socklen_t sl = sizeof st;
    memset(&st, 0, sizeof st);
    if (x->fd < 0)
        return -EBADF;
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &sl) < 0)
        return -errno;
    out4[0] = st.rx_dropped;
    out4[1] = st.rx_invalid_descs;
    out4[2] = st.rx_ring_full;
    out4[3] = st.rx_fill_ring_empty_descs;
    return 0;
}

/* ---- transmit (the muxer's side) -------------------------------------------------- */

void mg_xsk_tx_close(struct mg_xsk_tx *t)
{
    unmap_rings(&t->tx, &t->comp);
    unmap_umem(&t->umem, t->umem_len);
    close_fd(&t->fd);
    t->n_free = 0;
}

static int map_ring_fd(int fd, struct mg_xsk_ring *r, const struct xdp_ring_offset *off, uint32_t size,
                       size_t desc_size, uint64_t pgoff)
{
    struct mg_xsk tmp;
    tmp.fd = fd;
    return map_ring(&tmp, r, off, size, desc_size, pgoff);
}

int mg_xsk_tx_attach(struct mg_xsk_tx *t, int fd, int umem_fd)
{
    int rc;
    struct stat st;
    memset(t, 0, sizeof *t);
    t->fd = fd;
    if (fd < 0 || umem_fd < 0) {
        rc = -EBADF;
        goto fail;
    }
    if (fstat(umem_fd, &st) < 0)
        goto fail_errno;
    if ((size_t)st.st_size != (size_t)MG_XSK_NUM_FRAMES * MG_XSK_FRAME_SIZE) {
        rc = -EINVAL;  /* not a UMEM of mg_xsk_open */
        goto fail;
    }
    t->umem_len = (size_t)st.st_size;
    void *u = mmap(NULL, t->umem_len, PROT_READ | PROT_WRITE, MAP_SHARED, umem_fd, 0);
    if (u == MAP_FAILED)
        goto fail_errno;
    t->umem = u;
    close(umem_fd);
    umem_fd = -1;
    struct xdp_mmap_offsets off;
    socklen_t ol = sizeof off;
    if (getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol) < 0)
        goto fail_errno;
    if ((rc = map_ring_fd(fd, &t->tx, &off.tx, MG_XSK_RING_SIZE, sizeof(struct xdp_desc), XDP_PGOFF_TX_RING)) < 0 ||
        (rc = map_ring_fd(fd, &t->comp, &off.cr, MG_XSK_RING_SIZE, sizeof(uint64_t),
                          XDP_UMEM_PGOFF_COMPLETION_RING)) < 0)
        goto fail;
    /* Free = every TX chunk not in flight; in flight = the TX descriptors between the
     * completion consumer and the TX producer (a predecessor's, after a restart). */
    uint8_t busy[MG_XSK_TX_FRAMES];
    memset(busy, 0, sizeof busy);
    uint32_t ccons = __atomic_load_n(t->comp.consumer, __ATOMIC_ACQUIRE);
    uint32_t tprod = __atomic_load_n(t->tx.producer, __ATOMIC_ACQUIRE);
    uint32_t inflight = tprod - ccons;
    if (inflight > MG_XSK_TX_FRAMES)
        inflight = MG_XSK_TX_FRAMES;  /* cannot happen with our own rings; be safe */
    const struct xdp_desc *td = t->tx.desc;
    for (uint32_t i = 0; i < inflight; i++) {
        uint64_t a = td[(ccons + i) & t->tx.mask].addr / MG_XSK_FRAME_SIZE;
        if (a >= MG_XSK_RX_FRAMES && a < MG_XSK_NUM_FRAMES)
            busy[a - MG_XSK_RX_FRAMES] = 1;
    }
    for (uint32_t i = MG_XSK_TX_FRAMES; i-- > 0;)
        if (!busy[i])
            t->free_chunks[t->n_free++] = (uint64_t)(MG_XSK_RX_FRAMES + i) * MG_XSK_FRAME_SIZE;
    return 0;
fail_errno:
    rc = -errno;
fail:
    if (umem_fd >= 0)
        close(umem_fd);
    mg_xsk_tx_close(t);
    return rc;
}

uint32_t mg_xsk_tx_inflight(const struct mg_xsk_tx *t)
{
    return t->umem ? MG_XSK_TX_FRAMES - t->n_free : 0;
}

static void tx_reclaim(struct mg_xsk_tx *t)
{
    uint32_t cons = __atomic_load_n(t->comp.consumer, __ATOMIC_RELAXED);
    uint32_t prod = __atomic_load_n(t->comp.producer, __ATOMIC_ACQUIRE);
    const uint64_t *cd = t->comp.desc;
    uint32_t k = prod - cons;
    for (uint32_t i = 0; i < k && t->n_free < MG_XSK_TX_FRAMES; i++)
        t->free_chunks[t->n_free++] = cd[(cons + i) & t->comp.mask] & ~(uint64_t)(MG_XSK_FRAME_SIZE - 1);
    if (k) {
        __atomic_store_n(t->comp.consumer, cons + k, __ATOMIC_RELEASE);
        t->stats.tx_completed += k;
    }
}

static inline void tx_prefetch(const uint8_t *pool, uint64_t desc)
{
    const uint8_t *f = (const uint8_t *)mg_frame_meta((uint8_t *)pool, (uint32_t)desc);
    MG_PREFETCH(f);
    MG_PREFETCH(f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM - 64);
    MG_PREFETCH(f + MG_FRAME_META_SIZE + MG_FRAME_HEADROOM);
}

int mg_xsk_tx_burst(struct mg_xsk_tx *t, const uint8_t *pool, const uint64_t *descs, uint32_t n)
{
    if (t->fd < 0 || !t->umem)
        return -EBADF;
    if (n > MG_BURST_MAX)
        n = MG_BURST_MAX;
    tx_reclaim(t);
    uint32_t prod = __atomic_load_n(t->tx.producer, __ATOMIC_RELAXED);
    uint32_t cons = __atomic_load_n(t->tx.consumer, __ATOMIC_ACQUIRE);
    uint32_t room = t->tx.size - (prod - cons);
    struct xdp_desc *td = t->tx.desc;
    uint32_t sent = 0;
    /* The worker wrote these frames on another CPU: fetch a few ahead (the metadata line
     * and the two lines where an encapsulated packet starts). */
    for (uint32_t i = 0; i < n && i < MG_XSK_PREFETCH; i++)
        tx_prefetch(pool, descs[i]);
    for (uint32_t i = 0; i < n; i++) {
        if (i + MG_XSK_PREFETCH < n)
            tx_prefetch(pool, descs[i + MG_XSK_PREFETCH]);
        const struct mg_frame_meta *m = mg_frame_meta((uint8_t *)pool, (uint32_t)descs[i]);
        uint32_t len = m->len;
        if (len > MG_XSK_FRAME_SIZE || (size_t)m->data_off + len > MG_FRAME_SIZE - MG_FRAME_META_SIZE) {
            t->stats.tx_oversize++;
            continue;
        }
        if (!room || !t->n_free) {
            t->stats.tx_ring_full += n - i;
            break;
        }
        uint64_t addr = t->free_chunks[--t->n_free];
        memcpy(t->umem + addr, (const uint8_t *)m + MG_FRAME_META_SIZE + m->data_off, len);
        struct xdp_desc *d = &td[(prod + sent) & t->tx.mask];
        d->addr = addr;
        d->len = len;
        d->options = 0;
        room--;
        sent++;
        t->stats.tx_bytes += len;
    }
    if (!sent)
        return 0;
    /* Release: descriptors and chunk bytes before the producer the kernel reads. */
    __atomic_store_n(t->tx.producer, prod + sent, __ATOMIC_RELEASE);
    t->stats.tx_packets += sent;
    t->stats.tx_bursts++;
    int rc = (int)sent;
    for (uint32_t k = 0; k < MG_XSK_KICK_MAX; k++) {
        if (!(__atomic_load_n(t->tx.flags, __ATOMIC_ACQUIRE) & XDP_RING_NEED_WAKEUP))
            break;
        t->stats.tx_kicks++;
        if (sendto(t->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0) {
            if (__atomic_load_n(t->tx.consumer, __ATOMIC_ACQUIRE) == prod + sent)
                break;
            continue;
        }
        int e = errno;
        if (e == EAGAIN || e == EBUSY || e == ENOBUFS) {
            t->stats.tx_kick_again++;
            /* copy mode: the kernel sends a batch per call and says EAGAIN for the rest */
            if (__atomic_load_n(t->tx.consumer, __ATOMIC_ACQUIRE) == prod + sent)
                break;
            continue;
        }
        if (e == EINTR)
            continue;
        t->stats.tx_kick_errors++;
        t->last_errno = e;
        if (e == ENETDOWN || e == ENXIO || e == EBADF || e == ENOTCONN)
            rc = -e;  /* the frames stay in the ring: the caller counts them as errors */
        break;
    }
    if (rc > 0 && __atomic_load_n(t->tx.consumer, __ATOMIC_ACQUIRE) != prod + sent)
        t->stats.tx_left++;
    tx_reclaim(t);
    return rc;
}
