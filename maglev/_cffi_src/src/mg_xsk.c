/* AF_XDP receive socket (design in include/mg_xsk.h). */
#define _GNU_SOURCE
#include "mg_xsk.h"

#include <linux/if_xdp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mg_xsk_close(struct mg_xsk *x)
{
    if (x->rx.map)
        munmap(x->rx.map, x->rx.map_len);
    if (x->fill.map)
        munmap(x->fill.map, x->fill.map_len);
    x->rx.map = x->fill.map = NULL;
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
    if (x->umem)
        munmap(x->umem, x->umem_len);
    x->umem = NULL;
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
    if (ifindex <= 0 || (mode != MG_XSK_MODE_COPY && mode != MG_XSK_MODE_ZEROCOPY))
        return -EINVAL;
    x->ifindex = ifindex;
    x->queue = queue;
    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0)
        return -errno;
    x->umem_len = (size_t)MG_XSK_NUM_FRAMES * MG_XSK_FRAME_SIZE;
    void *u = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
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
        setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &sz, sizeof sz) < 0)
        goto fail_errno;
    struct xdp_mmap_offsets off;
    socklen_t ol = sizeof off;
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol) < 0)
        goto fail_errno;
    if ((rc = map_ring(x, &x->fill, &off.fr, sz, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING)) < 0 ||
        (rc = map_ring(x, &x->rx, &off.rx, sz, sizeof(struct xdp_desc), XDP_PGOFF_RX_RING)) < 0)
        goto fail;
    /* Every chunk the fill ring can hold goes to the kernel now (the rest stay spare). */
    uint64_t *fd = x->fill.desc;
    for (uint32_t i = 0; i < sz; i++)
        fd[i] = (uint64_t)i * MG_XSK_FRAME_SIZE;
    __atomic_store_n(x->fill.producer, sz, __ATOMIC_RELEASE);

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
    uint64_t ts = now_ns();
    for (uint32_t i = 0; i < k; i++) {
        const struct xdp_desc *d = &rd[(cons + i) & x->rx.mask];
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
