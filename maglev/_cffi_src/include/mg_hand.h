/* Hands: the frames an actor holds between its input and output rings, journalled in
 * shared memory so that no frame is lost when the actor is killed at any instruction.
 *
 * Every frame is in exactly one place: a ring (between cons and prod), or one actor's
 * hand.  (The free list is a ring too.)  An actor moves frames only with two verbs:
 *
 *   pull(ring, max)  peek up to max descriptors from an input ring (this actor is its
 *                    consumer), append them to the hand, release them from the ring;
 *   push(dest[])     dest[j] is the output ring id for hand entry j (this actor is that
 *                    ring's producer) or MG_HAND_KEEP; what fits is submitted, the rest
 *                    stays in the hand, in order (so a flow is not reordered).
 *
 * The hand has two descriptor buffers; `state` says which is active and whether a move is
 * in flight.  A move writes the *next* buffer and a journal record first, flips `state`
 * to (same buffer, op) with a release store, does the ring operation (one store of cons
 * or prod per ring -- atomic by nature), then flips `state` to (next buffer, no op).  If
 * the owner dies, mg_hand_recover() settles the journal by comparing each ring's index
 * with the value the journal says it reaches once the operation is done:
 *
 *   pull in flight: ring.cons == pull_commit ? the pulled frames are in the hand
 *                                            : they are still in the ring (the next
 *                                              consumer gets them again)
 *   push in flight: for each entry with dest r: ring r.prod == commit[r] ? in ring r
 *                                                                      : in the hand
 *
 * Recovery is idempotent (it only writes the idle buffer before its own flip), so a
 * recovering process may itself die and be retried.  Before recovery the rings the dead
 * actor produced/consumed must not be touched by a new producer/consumer; afterwards the
 * new owner calls mg_ring_reset_producer/_consumer on them.
 */
#ifndef MG_HAND_H
#define MG_HAND_H

#include "mg_common.h"
#include "mg_layout.h"
#include "mg_shm.h"

/* push destination: keep this entry in the hand. */
#define MG_HAND_KEEP 0xffff

/* Tests only: when set to a step number (1, 2: pull; 11, 12, 13: push) the move stops
 * there and returns -EINTR, leaving shared memory as a process killed there would. */
extern int mg_hand_fault_at;

/* Bytes of one hand for a region of n_rings rings (= mg_layout_hand_bytes, mg_layout.h). */
size_t mg_hand_bytes(uint32_t n_rings);

/* Frames pulled (0 when the ring is empty or the hand full), or -EINVAL / -EBUSY (a
 * move of a dead owner is unsettled: call mg_hand_recover first). */
int mg_hand_pull(void *base, uint32_t slot, uint32_t ring_id, uint32_t max);
/* dest has one entry per hand entry (n == mg_hand_count).  Returns frames pushed. */
int mg_hand_push(void *base, uint32_t slot, const uint16_t *dest, uint32_t n);
/* mg_hand_push with every entry going to ring d (no dest array to write and scan: the
 * muxer's and steering's reclaim bursts).  Returns frames pushed. */
int mg_hand_push_all(void *base, uint32_t slot, uint16_t d);
/* The hand's entries (valid until the next move); *n = count. */
uint64_t *mg_hand_descs(void *base, uint32_t slot, uint32_t *n);
int mg_hand_count(void *base, uint32_t slot);
/* Settle an unfinished move of a dead owner; returns the frames now in the hand. */
int mg_hand_recover(void *base, uint32_t slot);
/* What recover would leave in the hand, copied to out, without writing anything. */
int mg_hand_settled(void *base, uint32_t slot, uint64_t *out, uint32_t max);

/* The stats journal of a slot: counters that must change together with what the hand
 * holds (every packet accounted, even when the owner is killed at any instruction).
 *
 *   img = mg_stats_stage(base, slot)   copy of the stats block to edit (nothing visible)
 *   ... edit img; write per-frame state that the commit makes true ...
 *   mg_stats_begin(base, slot)         stats_state = 1 (release): from here the commit
 *                                      counts as done -- a replacement redoes it
 *   mg_stats_apply(base, slot)         copy img into the stats block
 *   mg_stats_end(base, slot)           stats_state = 0 (release)
 *
 * The owner's replacement calls mg_stats_pending() after mg_hand_recover(): 1 = redo the
 * commit (apply + the owner's own per-frame part, then end).  Readers of the stats block
 * may see a commit half-copied (as before: values a burst old), never lose one. */
uint64_t *mg_stats_stage(void *base, uint32_t slot);
void mg_stats_begin(void *base, uint32_t slot);
void mg_stats_apply(void *base, uint32_t slot);
void mg_stats_end(void *base, uint32_t slot);
int mg_stats_pending(void *base, uint32_t slot);

#endif
