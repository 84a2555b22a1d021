/* The backend agent's decapsulation loop: see include/mg_decap.h.  The pure-Python
 * reference is maglev/lab/agent.py (decapsulate, Agent.handle). */
#define _GNU_SOURCE
#include "mg_decap.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mg_csum.h"

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static int vip_match(const struct mg_decap_vips *vips, int version, const uint8_t *dst)
{
    if (version == 4) {
        for (uint32_t i = 0; i < vips->n4 && i < MG_DECAP_MAX_VIPS; i++)
            if (memcmp(vips->v4[i], dst, 4) == 0)
                return 1;
    } else {
        for (uint32_t i = 0; i < vips->n6 && i < MG_DECAP_MAX_VIPS; i++)
            if (memcmp(vips->v6[i], dst, 16) == 0)
                return 1;
    }
    return 0;
}

/* The inner packet must be a plausible IP packet of `version` addressed to a VIP
 * (maglev.lab.agent.check_inner). */
static int check_inner(const uint8_t *in, uint32_t len, int version, const struct mg_decap_vips *vips)
{
    if (len == 0)
        return MG_DECAP_INNER_SHORT;
    if ((in[0] >> 4) != version)
        return MG_DECAP_INNER_VERSION;
    if (version == 4) {
        if (len < 20 || (in[0] & 0x0f) < 5 || rd16(in + 2) > len)
            return MG_DECAP_INNER_SHORT;
        return vip_match(vips, 4, in + 16) ? MG_DECAP_OK : MG_DECAP_NOT_A_VIP;
    }
    if (len < 40 || 40u + rd16(in + 4) > len)
        return MG_DECAP_INNER_SHORT;
    return vip_match(vips, 6, in + 24) ? MG_DECAP_OK : MG_DECAP_NOT_A_VIP;
}

int mg_decap_parse(const uint8_t *pkt, uint32_t len, int family, int proto,
                   const struct mg_decap_vips *vips, uint32_t *inner_off, uint32_t *inner_len)
{
    uint32_t off = 0;
    int version;

    if (family == 4) { /* an IPv4 raw socket hands over the outer header too */
        if (len < 20 || (pkt[0] >> 4) != 4)
            return MG_DECAP_OUTER_SHORT;
        off = (uint32_t)(pkt[0] & 0x0f) * 4;
        if (off < 20 || len < off)
            return MG_DECAP_OUTER_SHORT;
    }
    if (proto == 47) {
        const uint8_t *g = pkt + off;
        uint32_t glen = len - off, hlen;
        uint16_t flags, etype;

        if (glen < 4)
            return MG_DECAP_GRE_SHORT;
        flags = rd16(g);
        etype = rd16(g + 2);
        if (flags & 0x0007)
            return MG_DECAP_GRE_VERSION; /* version 1 is PPTP */
        if (flags & 0x4f80)
            return MG_DECAP_GRE_FLAGS; /* routing present or reserved bits (RFC 2784 2.3) */
        hlen = 4 + ((flags & 0x8000) ? 4 : 0) + ((flags & 0x2000) ? 4 : 0) + ((flags & 0x1000) ? 4 : 0);
        if (glen < hlen)
            return MG_DECAP_GRE_SHORT;
        if ((flags & 0x8000) && mg_csum_fold(mg_csum_add(0, g, glen)) != 0)
            return MG_DECAP_GRE_CHECKSUM; /* the sum over header + payload folds to 0xffff */
        if (etype == 0x0800)
            version = 4;
        else if (etype == 0x86dd)
            version = 6;
        else
            return MG_DECAP_GRE_ETHERTYPE;
        off += hlen;
    } else if (proto == 4) {
        version = 4;
    } else if (proto == 41) {
        version = 6;
    } else {
        return MG_DECAP_PROTOCOL;
    }
    int r = check_inner(pkt + off, len - off, version, vips);
    if (r == MG_DECAP_OK) {
        *inner_off = off;
        *inner_len = len - off;
    }
    return r;
}

static inline void count_errno(uint64_t *slots, int e)
{
    slots[(e > 0 && e < MG_DECAP_ERRNOS) ? e : MG_DECAP_ERRNOS - 1]++;
}

/* Drain up to MG_DECAP_DRAIN_ROUNDS recvmmsg batches from one socket; returns datagrams. */
static int64_t drain(const struct mg_decap_sock *s, int tun_fd, const struct mg_decap_vips *vips,
                     struct mg_decap_stats *st, uint8_t *bufs)
{
    struct mmsghdr msgs[MG_DECAP_BATCH];
    struct iovec iov[MG_DECAP_BATCH];
    int64_t done = 0;

    for (int round = 0; round < MG_DECAP_DRAIN_ROUNDS; round++) {
        for (int i = 0; i < MG_DECAP_BATCH; i++) {
            iov[i].iov_base = bufs + (size_t)i * MG_DECAP_BUF;
            iov[i].iov_len = MG_DECAP_BUF;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_len = 0;
        }
        int n = recvmmsg(s->fd, msgs, MG_DECAP_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                count_errno(st->recv_errno, errno);
            break;
        }
        if (n == 0)
            break;
        st->batches++;
        if ((uint64_t)n > st->max_batch)
            st->max_batch = (uint64_t)n;
        for (int i = 0; i < n; i++) {
            const uint8_t *pkt = iov[i].iov_base;
            uint32_t off = 0, ilen = 0;
            int r;

            st->received++;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                r = MG_DECAP_TRUNCATED;
            else
                r = mg_decap_parse(pkt, msgs[i].msg_len, s->family, s->proto, vips, &off, &ilen);
            if (r != MG_DECAP_OK) {
                st->drop[r]++;
                continue;
            }
            if (write(tun_fd, pkt + off, ilen) < 0) {
                count_errno(st->tun_errno, errno);
                continue;
            }
            st->decapsulated++;
        }
        done += n;
        if (n < MG_DECAP_BATCH)
            break; /* drained */
    }
    return done;
}

int64_t mg_decap_run(const struct mg_decap_sock *socks, int nsocks, int tun_fd,
                     const struct mg_decap_vips *vips, struct mg_decap_stats *st,
                     uint8_t *bufs, int budget_ms)
{
    struct pollfd pfd[MG_DECAP_MAX_SOCKS];
    int64_t done = 0;

    if (nsocks <= 0 || nsocks > MG_DECAP_MAX_SOCKS || budget_ms < 0)
        return -EINVAL;
    for (int i = 0; i < nsocks; i++) {
        pfd[i].fd = socks[i].fd;
        pfd[i].events = POLLIN;
    }
    uint64_t end = mg_mono_ns() + (uint64_t)budget_ms * 1000000ull;
    for (;;) {
        uint64_t now = mg_mono_ns();
        int wait_ms = now >= end ? 0 : (int)((end - now + 999999ull) / 1000000ull);
        int rc = poll(pfd, (nfds_t)nsocks, wait_ms);
        if (rc < 0) {
            if (errno == EINTR)
                return done; /* a signal: let the caller run its handlers */
            return -errno;
        }
        if (rc > 0) {
            st->wakeups++;
            for (int i = 0; i < nsocks; i++) {
                if (MG_UNLIKELY(pfd[i].revents & POLLNVAL))
                    return -EBADF; /* a socket closed under us: never spin on it */
                if (pfd[i].revents & (POLLIN | POLLERR))
                    done += drain(&socks[i], tun_fd, vips, st, bufs);
            }
        }
        if (mg_mono_ns() >= end)
            return done;
    }
}
