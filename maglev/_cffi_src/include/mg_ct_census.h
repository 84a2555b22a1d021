/* Census of a live connection table (mg_ct_census, declared with struct mg_ct_census in
 * mg_conntrack.h; code in src/mg_ct_census.c): the reads of one slot, for the census
 * itself and for tests that check every accepted slot (tests/rings/c/census_race.c).
 *
 * Consistency without a lock (the writer, mg_conntrack.c put() and the cuckoo move, is a
 * packet worker that must not pay for the census): the writer stores a slot as
 *
 *     tag, last  | release fence |  backend, backend_id  | release fence |  key
 *
 * and the census reads it as
 *
 *     tag (acquire), last, key  | acquire fence |  backend_id  | acquire fence |  tag again
 *
 * (on x86 these fences are compiler barriers only: no instruction on either side).  A slot
 * is accepted when both tag reads agree (the PROTECTED bit aside: a promotion or demotion
 * rewrites only that bit) and the key's SipHash-1-3 signature equals the tag's.  Then the
 * backend id is the one written with that key: a key word of the new entry seen implies
 * its backend id is seen (the fences pair); a key all of the old entry fails the signature
 * of the new tag; a rewrite begun after the first tag read changes the second.  Left: an
 * entry rewritten with a key whose signature equals the old one's (the same flow inserted
 * again, or a 2^-30 collision) is counted as whichever of its two states was read. */
#ifndef MG_CT_CENSUS_H
#define MG_CT_CENSUS_H

#include "mg_conntrack.h"

#define MG_CT_SLOT_EMPTY 0
#define MG_CT_SLOT_EXPIRED 1
#define MG_CT_SLOT_TORN 2
#define MG_CT_SLOT_LIVE 3

/* Read slot (bucket b, way w) as the census does; for MG_CT_SLOT_LIVE, *key and *backend_id
 * are a consistent pair of one entry. */
int mg_ct_census_slot(const struct mg_ct *ct, uint32_t b, int w, uint64_t k0, uint64_t k1, uint32_t now,
                      uint32_t tcp_ms, uint32_t udp_ms, struct mg_flow_key *key, uint64_t *backend_id);

#endif
