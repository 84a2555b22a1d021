/* IP fragments (Maglev paper section 4.3): one decision per datagram, and splitting.
 *
 * The fragment table, one per worker, maps (family, src, dst, proto, IP id) to the first
 * fragment's decision (backend index and VIP index).  Fragments are steered by the
 * 3-tuple hash, so every fragment of a datagram reaches the same worker and -- when the
 * table is cold -- the same Maglev slot; the table carries the decision when the first
 * fragment's backend came from connection tracking rather than the hash.
 *
 * Layout: one caller-allocated block of mg_frag_table_size() bytes (no pointers inside,
 * so it may live in shared memory): the header, then nbuckets * MG_FRAG_WAYS entries,
 * then hold_max hold slots.  A bucket is chosen by SipHash-1-3 of the 40-byte key under
 * the deployment secret (clients cannot aim at one bucket).
 *
 * Rules (the Python reference in maglev/datapath/ref_frag.py states the same):
 *   - mg_frag_first(): the first fragment (offset 0, has ports) records its decision,
 *     expiry = now + timeout.  Way chosen: the matching entry, else the first free or
 *     expired way, else the way with the oldest expiry (evicted: its held frames leave
 *     with reason MG_FRAG_R_EVICTED).  Held fragments of the datagram are released
 *     (reason MG_FRAG_R_RELEASED, with the decision) in arrival order.
 *   - mg_frag_next(): a non-first fragment.  Known decision -> forward (returns 0).
 *     Otherwise it is held: the frame index is stored, the frame stays in the pool and
 *     belongs to the table until it comes out of mg_frag_drain().  Holding needs a
 *     free or expired way for a new entry (never evicts a decision: a flood of stray
 *     fragments cannot push real datagrams out) -> else -ENOSPC (drop, "frag_table_full");
 *     and room under hold_max frames, hold_bytes_max bytes and MG_FRAG_HOLD_PER_DATAGRAM
 *     frames per datagram -> else -ENOBUFS (drop, "frag_hold_limit").
 *   - Expiry: an entry lives `timeout_ns` after its creation or its last first-fragment;
 *     mg_frag_expire() walks a bounded number of buckets per call (cursor) and sends the
 *     held frames of expired entries out with reason MG_FRAG_R_EXPIRED; lookups also
 *     treat an expired entry as absent.
 *   - Released, expired and evicted frames queue in the table (FIFO, no allocation: the
 *     hold slot itself is queued) until the caller takes them with mg_frag_drain(); the
 *     caller encapsulates released ones toward out.backend and frees the others, counting
 *     their reason.  A slot returns to the free list only when drained.
 *
 * Splitting: mg_frag_split_ipv4() fragments an IPv4 packet whose DF bit is clear so that
 * every piece plus the encapsulation overhead fits the MTU (see mg_icmp.h, PMTU).
 */
#ifndef MG_FRAG_H
#define MG_FRAG_H

#include "mg_common.h"
#include "mg_frame.h"

/* Entries per bucket (set-associative). */
#define MG_FRAG_WAYS 4
/* Default entry lifetime: a datagram's fragments arrive within milliseconds; held frames
 * occupy pool frames, so keep this short (Linux keeps reassembly queues 30 s, but it
 * copies; we hold frames of a shared pool). */
#define MG_FRAG_DEFAULT_TIMEOUT_MS 2000
/* Default table sizes per worker: entries (rounded up to a power of two >= MG_FRAG_WAYS),
 * held frames, held bytes. */
#define MG_FRAG_DEFAULT_ENTRIES 4096
#define MG_FRAG_DEFAULT_HOLD_FRAMES 256
#define MG_FRAG_DEFAULT_HOLD_BYTES (256 * 1024)
/* Most fragments held for one datagram (a 64 KiB datagram in 1280-byte fragments). */
#define MG_FRAG_HOLD_PER_DATAGRAM 52
/* Upper bounds accepted by mg_frag_table_init(). */
#define MG_FRAG_MAX_ENTRIES (1u << 24)
#define MG_FRAG_MAX_HOLD (1u << 20)

#define MG_FRAG_NIL 0xffffffffu

/* Why a frame left the table (struct mg_frag_out.reason). */
#define MG_FRAG_R_RELEASED 0 /* first fragment arrived: forward to out.backend */
#define MG_FRAG_R_EXPIRED 1  /* no first fragment within the timeout: drop */
#define MG_FRAG_R_EVICTED 2  /* entry evicted by a newer datagram's first fragment: drop */

/* The key: 40 bytes, zero padded, compared in full. */
struct mg_frag_key {
    uint8_t src[16];  /* IPv4 in the first 4 bytes, the rest 0 */
    uint8_t dst[16];
    uint32_t id;      /* IPv4 16-bit or IPv6 32-bit identification, host byte order */
    uint8_t proto;    /* upper-layer protocol (IPv6: after the fragment header) */
    uint8_t family;   /* 4 or 6 */
    uint8_t pad[2];   /* 0 */
};

struct mg_frag_entry {
    struct mg_frag_key key;
    uint64_t expire_ns; /* 0 = free */
    int32_t backend;    /* -1 = not known yet (only held fragments so far) */
    uint16_t vip_index;
    uint16_t held;      /* frames held for this datagram */
    uint32_t held_head; /* slot index or MG_FRAG_NIL */
    uint32_t held_tail;
};

struct mg_frag_slot {
    uint32_t frame;
    uint32_t next;
    uint32_t len;
    int32_t backend;
    uint16_t vip_index;
    uint16_t reason;
};

/* What mg_frag_drain() hands back. */
struct mg_frag_out {
    uint32_t frame;
    int32_t backend;    /* >= 0 for MG_FRAG_R_RELEASED, -1 otherwise */
    uint16_t vip_index;
    uint16_t reason;    /* MG_FRAG_R_* */
};

struct mg_frag_stats {
    uint64_t first;           /* first fragments recorded */
    uint64_t forwarded;       /* non-first fragments forwarded at once */
    uint64_t held;            /* non-first fragments held */
    uint64_t released;        /* held fragments released by their first fragment */
    uint64_t expired;         /* held fragments dropped: timeout */
    uint64_t evicted;         /* held fragments dropped: entry evicted */
    uint64_t evictions;       /* entries (decisions) evicted by mg_frag_first */
    uint64_t drop_table_full; /* non-first fragments dropped: no way free */
    uint64_t drop_hold_limit; /* non-first fragments dropped: hold limits */
};

struct mg_frag_table {
    uint32_t nbuckets;       /* power of two */
    uint32_t hold_max;       /* hold slots */
    uint32_t hold_bytes_max;
    uint32_t hold_count;     /* frames held now (not counting queued output) */
    uint32_t hold_bytes;
    uint32_t free_head;      /* free slot list */
    uint32_t out_head;       /* output FIFO (slots) */
    uint32_t out_tail;
    uint32_t out_count;
    uint32_t cursor;         /* next bucket mg_frag_expire() looks at */
    uint64_t timeout_ns;
    uint64_t k0, k1;         /* SipHash key (the deployment's flow-hash secret) */
    struct mg_frag_stats stats;
    /* followed by: struct mg_frag_entry entries[nbuckets * MG_FRAG_WAYS];
     *              struct mg_frag_slot slots[hold_max]; */
};

/* Nothing held and nothing queued for output: mg_frag_expire then only advances its
 * cursor and mg_frag_drain returns 0 (the burst kernel's per-burst check). */
static inline int mg_frag_idle(const struct mg_frag_table *t)
{
    return t->hold_count == 0 && t->out_head == MG_FRAG_NIL;
}

/* What mg_frag_expire(t, now, max_buckets) does to an idle table: advance the cursor. */
static inline void mg_frag_skip(struct mg_frag_table *t, uint32_t max_buckets)
{
    if (max_buckets > t->nbuckets)
        max_buckets = t->nbuckets;
    t->cursor = (t->cursor + max_buckets) & (t->nbuckets - 1);
}

/* Bytes to allocate for a table of `entries` entries (rounded up to a power of two, at
 * least MG_FRAG_WAYS) and `hold_max` hold slots; 0 when out of range. */
size_t mg_frag_table_size(uint32_t entries, uint32_t hold_max);
/* Initialise a zeroed or reused block of mg_frag_table_size() bytes.  -EINVAL when
 * entries/hold_max are out of range or timeout_ns is 0. */
int mg_frag_table_init(struct mg_frag_table *t, uint32_t entries, uint32_t hold_max,
                       uint32_t hold_bytes_max, uint64_t timeout_ns, uint64_t k0,
                       uint64_t k1);

/* First fragment: record (backend, vip_index).  Returns the number of held frames
 * released into the output queue (>= 0); -EINVAL for a bad key (family not 4/6,
 * non-zero padding). */
int mg_frag_first(struct mg_frag_table *t, const struct mg_frag_key *key, int32_t backend,
                  uint16_t vip_index, uint64_t now_ns);

/* Non-first fragment in frame `frame` of `len` bytes.  Returns 0 = forward to
 * *backend / *vip_index; 1 = held (the table owns the frame now); -ENOSPC table full;
 * -ENOBUFS hold limit; -EINVAL bad key.  On a drop the caller still owns the frame. */
int mg_frag_next(struct mg_frag_table *t, const struct mg_frag_key *key, uint32_t frame,
                 uint32_t len, uint64_t now_ns, int32_t *backend, uint16_t *vip_index);

/* Look at up to `max_buckets` buckets from the cursor; expired entries send their held
 * frames to the output queue.  Returns the number of frames queued. */
int mg_frag_expire(struct mg_frag_table *t, uint64_t now_ns, uint32_t max_buckets);

/* Move up to `cap` queued frames to out[], oldest first.  Returns the count. */
int mg_frag_drain(struct mg_frag_table *t, struct mg_frag_out *out, uint32_t cap);

/* Split the IPv4 packet of frame `idx` (L3 header at l3_off, DF clear) into fragments
 * whose L3 length is at most max_l3_len (a multiple of 8 payload bytes each but the
 * last).  Piece 1 stays in `idx`; pieces 2.. go to spare[0..], each a copy of the L2
 * header, the IP header (options: only those with the copied flag, RFC 791) and its
 * payload slice, with the metadata of `idx` copied and MG_FRAME_F_FRAGMENT set.  Works
 * on fragments too (offsets and MF kept right).  Returns the number of spare frames used
 * (0 when the packet already fits), -ENOSPC when nspare is too small or a spare frame
 * lacks the room (nothing written), -EINVAL (not IPv4, DF set, bad header, max_l3_len
 * too small for header + 8 bytes). */
int mg_frag_split_ipv4(uint8_t *pool, uint32_t idx, uint32_t l3_off, uint32_t max_l3_len,
                       const uint32_t *spare, uint32_t nspare);

#endif
