/* The shared-memory region of one forwarder instance: layout, header, stats, heartbeats.
 *
 * One POSIX shm file (/dev/shm/maglev-<name>) mapped by every actor, at a different
 * address in each process, so nothing inside stores a pointer: everything is an offset
 * from the region base.  Layout, each part starting on a 4 KiB page:
 *
 *   header     struct mg_region_hdr (sizes, offsets, magic, version)     1 page
 *   pool       n_frames * MG_FRAME_SIZE (layout in mg_frame.h)
 *   rings      n_rings rings (mg_ring.h): ring id = kind-major, see mg_region_ring_id
 *              (rx/tx/ret/sent, then the free ring, then the small spare rings)
 *   bells      n_bells doorbells (mg_bell.h), one cache line each
 *   hands      n_slots hand journals (mg_hand.h)
 *   slots      n_slots actor lines (heartbeat, pid), one cache line each
 *   stats      n_slots blocks of MG_STATS_WORDS u64 (1 KiB = 16 lines), one writer each
 *   tables     tables header + per-worker seen lines + 2 copies (mg_tables_pub.h)
 *
 * Slots (stats, heartbeat, hand) are per actor: fixed slots for the singletons, then one
 * per worker (MG_SLOT_WORKER0 + i).  Doorbells are per *consuming* actor.
 *
 * The header's `ready` word is written last (release) by mg_region_init; attach checks it
 * (acquire), so a process never sees a half-initialised region.
 */
#ifndef MG_SHM_H
#define MG_SHM_H

#include "mg_bell.h"
#include "mg_common.h"
#include "mg_layout.h"

#define MG_REGION_MAGIC 0x314e4f4947454c4dULL /* "MLEGION1" little endian: "MGLEGION" */
#define MG_REGION_VERSION 3 /* 3: hand stats journal and spare rings */
#define MG_REGION_HDR_SIZE 4096
#define MG_PAGE 4096

/* Limits checked by mg_region_layout. */
#define MG_MAX_WORKERS 256
#define MG_MAX_FRAMES (1u << 22)           /* 8 GiB of 2 KiB frames */
#define MG_RING_MIN 2
#define MG_RING_MAX (1u << 22)
#define MG_TABLES_MAX (1ULL << 32)          /* bytes per table copy */

/* Ring kinds (mg_region_ring). */
#define MG_RING_RX 0   /* steering -> worker i */
#define MG_RING_TX 1   /* worker i -> muxer */
#define MG_RING_RET 2  /* worker i -> steering (dropped frames) */
#define MG_RING_SENT 3 /* muxer -> steering (transmitted frames) */
#define MG_RING_FREE 4 /* steering -> steering (free list) */
#define MG_RING_SPARE 5 /* steering -> worker i (empty frames for split pieces) */

/* Capacity of each spare ring (a worker's reserve of empty frames, mg_steer.h). */
#define MG_SPARE_RING_SIZE 512

/* Doorbell indices in a region (one per consuming actor, mg_bell.h). */
#define MG_BELL_STEERING 0
#define MG_BELL_MUXER 1
#define MG_BELL_WORKER0 2

/* Actor slots: stats block, heartbeat line and hand journal each. */
#define MG_SLOT_SUPERVISOR 0
#define MG_SLOT_STEERING 1
#define MG_SLOT_MUXER 2
#define MG_SLOT_CONFIG 3
#define MG_SLOT_HEALTH 4
#define MG_SLOT_BGP 5
#define MG_SLOT_WORKER0 8 /* slots 6, 7 reserved */

struct mg_region_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t total_size;
    uint32_t n_workers;
    uint32_t n_frames;
    uint32_t frame_size;
    uint32_t ring_size;      /* rx/tx/ret/sent rings */
    uint32_t free_ring_size; /* power of two >= n_frames */
    uint32_t n_rings;
    uint32_t n_bells;
    uint32_t n_slots;
    uint64_t pool_off;
    uint64_t rings_off;
    uint64_t ring_stride;    /* bytes per rx/tx/ret/sent ring */
    uint64_t free_ring_off;  /* the free ring is bigger, so it sits apart */
    uint64_t spare_rings_off; /* n_workers spare rings of MG_SPARE_RING_SIZE, after it */
    uint64_t spare_ring_stride;
    uint64_t bells_off;
    uint64_t hands_off;
    uint64_t hand_stride;
    uint64_t slots_off;
    uint64_t stats_off;
    uint64_t tables_off;
    uint64_t tables_bytes;   /* capacity of one table copy */
    uint64_t tables_copy_off[2]; /* relative to the region base */
    uint64_t ready;          /* MG_REGION_MAGIC once initialised (release) */
};

/* Per-actor line: heartbeat, the pid of the current incarnation, and its life lock.
 *
 * The life lock is a process-shared *robust* mutex (pthread) that the process serving the
 * slot takes once it has adopted the slot's rings and holds until it exits
 * (mg_slot_claim).  When it dies -- kill -9 included -- the kernel marks the lock
 * owner-dead while the process exits, before its parent can even see the exit, so
 * whoever reads the slot knows at once that nobody serves it (mg_slot_dead), without
 * waiting for the supervisor to be scheduled.  Steering reads it for a worker whose rx
 * ring is full: a dead worker's packets are dropped (owner_stalled), never moved to a
 * worker without their flows' entries (mg_steer.c).  A frozen worker still holds its
 * lock: the stall time (MG_STEER_STALL_NS) covers that case. */
#define MG_SLOT_LIFE_WORDS 5
struct mg_slot_line {
    uint64_t heartbeat_ns; /* CLOCK_MONOTONIC ns, written by the actor (release) */
    uint64_t pid;
    uint64_t life[MG_SLOT_LIFE_WORDS]; /* pthread_mutex_t, robust, process-shared */
    uint64_t pad[1];
};

/* Compute the layout for these sizes into *out (no memory touched).  0 or -EINVAL. */
int mg_region_layout(uint32_t n_workers, uint32_t n_frames, uint32_t ring_size,
                     uint64_t tables_bytes, struct mg_region_hdr *out);
/* Initialise a zero-filled mapping of layout->total_size bytes: rings empty, every frame
 * on the free ring, frames' metadata zeroed, no tables.  0 or -EINVAL. */
int mg_region_init(void *base, const struct mg_region_hdr *layout);
/* 0 when base (size bytes) holds an initialised region of this version; -EPROTO (magic,
 * version), -EAGAIN (not ready), -EINVAL (sizes inconsistent with size). */
int mg_region_check(const void *base, uint64_t size);

uint8_t *mg_region_pool(void *base);
/* Ring of this kind for worker i (i ignored for SENT/FREE); NULL when out of range. */
struct mg_ring *mg_region_ring(void *base, uint32_t kind, uint32_t i);
/* Ring ids are 0..n_rings-1: rx 0..N-1, tx N..2N-1, ret 2N..3N-1, sent 3N, free 3N+1,
 * spare 3N+2..4N+1.
 * Returns UINT32_MAX when out of range. */
uint32_t mg_region_ring_id(const void *base, uint32_t kind, uint32_t i);
struct mg_ring *mg_region_ring_by_id(void *base, uint32_t id);
int mg_region_ring_kind(const void *base, uint32_t id, uint32_t *kind, uint32_t *i);

uint64_t *mg_region_stats(void *base, uint32_t slot);
/* Doorbell `bell` / hand of `slot`; NULL when out of range. */
struct mg_bell *mg_region_bell(void *base, uint32_t bell);
struct mg_hand *mg_region_hand(void *base, uint32_t slot);
void mg_heartbeat_set(void *base, uint32_t slot, uint64_t ns);
uint64_t mg_heartbeat_get(const void *base, uint32_t slot);
struct mg_slot_line *mg_region_slot(void *base, uint32_t slot);
/* Take slot's life lock for the rest of this thread's life (call once, after adopting the
 * slot's rings; a dead predecessor's lock is taken over).  0, -EBUSY (a live process
 * holds it), or -errno. */
int mg_slot_claim(void *base, uint32_t slot);
/* 1 when the process that held slot's life lock died holding it and no replacement has
 * claimed it yet (the kernel's FUTEX_OWNER_DIED mark), else 0 (held, given back, or never
 * taken: in-process tests and benches that play a worker without claiming are alive);
 * -EINVAL for a bad slot.  One load: cheap enough for steering. */
int mg_slot_dead(const void *base, uint32_t slot);
/* Give slot's life lock back (a clean stop, before unmapping the region: glibc keeps a
 * thread's robust mutexes on a list threaded through them).  0 or -errno. */
int mg_slot_release(void *base, uint32_t slot);

#endif
