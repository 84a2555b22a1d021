/* Types-only layout of the per-slot structs of a region (layer 3, see mg_bell.h): the
 * stats block size and the hand journal (the hand's rules: mg_hand.h).  mg_shm lays out
 * and zeroes the hands with these, without including or calling the hand unit; the hand
 * unit (above mg_shm) operates on them.  No functions here other than static inline
 * arithmetic on the structs.
 */
#ifndef MG_LAYOUT_H
#define MG_LAYOUT_H

#include "mg_common.h"

/* u64 counters per actor (the meaning of each word is the actor's business). */
#define MG_STATS_WORDS 128

/* Frames one actor may hold at once (two bursts of MG_BURST_MAX). */
#define MG_HAND_MAX 512

#define MG_HAND_OP_NONE 0
#define MG_HAND_OP_PULL 1
#define MG_HAND_OP_PUSH 2

struct mg_hand {
    uint32_t state; /* bit 0: active buffer; bits 1-2: MG_HAND_OP_* in flight */
    uint32_t n[2];  /* entries in each buffer */
    uint32_t pull_ring, pull_commit, pull_from;
    uint32_t n_rings;
    uint32_t pad;
    uint16_t dest[MG_HAND_MAX];           /* push journal, for the active buffer */
    uint64_t descs[2][MG_HAND_MAX];
    uint32_t stats_state;                 /* 1 while a stats commit is in flight */
    uint32_t pad2;
    uint64_t stats_img[MG_STATS_WORDS];   /* the slot's stats block as the commit leaves it */
    uint32_t commit[];                    /* [n_rings] push journal; then [n_rings] scratch */
};

/* Bytes of one hand for a region of n_rings rings (the struct plus its two [n_rings]
 * tails, whole cache lines): the region's hand_stride. */
static inline size_t mg_layout_hand_bytes(uint32_t n_rings)
{
    size_t b = sizeof(struct mg_hand) + 2 * (size_t)n_rings * sizeof(uint32_t);
    return (b + MG_CACHE_LINE - 1) & ~(size_t)(MG_CACHE_LINE - 1);
}

#endif
