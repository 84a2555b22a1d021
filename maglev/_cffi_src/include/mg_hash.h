/* Hash functions.  These are a compatibility surface: every maglev instance and every
 * version must compute the same values, or flows move on an upgrade.  Golden vectors in
 * tests/hashing/test_vectors.py pin them; changing them is a breaking change.
 *
 * SipHash-1-3 (Aumasson & Bernstein; 1 compression round, 3 finalization rounds, the
 * variant Rust's std HashMap uses) with a 128-bit key given as two little-endian
 * 64-bit words.  It serves both purposes:
 *   - backend name hashes (Maglev paper section 3.4, "offset" and "skip") with the fixed
 *     keys MG_NAME_KEY_OFFSET / MG_NAME_KEY_SKIP below;
 *   - the per-packet flow hash, keyed by the deployment-wide secret from config, so
 *     clients cannot craft collisions into one connection-table bucket.
 */
#ifndef MG_HASH_H
#define MG_HASH_H

#include "mg_common.h"

/* The 16 ASCII bytes "maglev/offs/v1.0" and "maglev/skip/v1.0" read as two
 * little-endian u64 words each. */
#define MG_NAME_KEY_OFFSET_K0 0x6f2f76656c67616dULL
#define MG_NAME_KEY_OFFSET_K1 0x302e31762f736666ULL
#define MG_NAME_KEY_SKIP_K0 0x732f76656c67616dULL
#define MG_NAME_KEY_SKIP_K1 0x302e31762f70696bULL

uint64_t mg_siphash13(uint64_t k0, uint64_t k1, const uint8_t *data, size_t len);

/* One SipRound on the state words v0..v3 (the SipHash paper, section 2): shared by
 * mg_siphash13 and the inlined 40-byte hash below. */
static inline uint64_t mg_rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
#define MG_SIPROUND(v0, v1, v2, v3)                                                      \
    do {                                                                                 \
        v0 += v1; v1 = mg_rotl64(v1, 13); v1 ^= v0; v0 = mg_rotl64(v0, 32);              \
        v2 += v3; v3 = mg_rotl64(v3, 16); v3 ^= v2;                                      \
        v0 += v3; v3 = mg_rotl64(v3, 21); v3 ^= v0;                                      \
        v2 += v1; v1 = mg_rotl64(v1, 17); v1 ^= v2; v2 = mg_rotl64(v2, 32);              \
    } while (0)

/* The SipHash-1-3 steps on the state words v0..v3 (macros, so that the inlined 40-byte
 * hash keeps them in registers exactly as when written out): the key into the state, one
 * 8-byte message word m (1 compression round), and the last word b (the length in the top
 * byte) with the 3 finalization rounds, leaving the hash in v0.  mg_siphash13 and
 * mg_siphash13_40 are both written with them. */
#define MG_SIP_INIT(v0, v1, v2, v3, k0, k1)                                              \
    uint64_t v0 = 0x736f6d6570736575ULL ^ (k0), v1 = 0x646f72616e646f6dULL ^ (k1),       \
             v2 = 0x6c7967656e657261ULL ^ (k0), v3 = 0x7465646279746573ULL ^ (k1)
#define MG_SIP_WORD(v0, v1, v2, v3, m)                                                   \
    do {                                                                                 \
        uint64_t mg_sip_m_ = (m);                                                        \
        v3 ^= mg_sip_m_;                                                                 \
        MG_SIPROUND(v0, v1, v2, v3);                                                     \
        v0 ^= mg_sip_m_;                                                                 \
    } while (0)
#define MG_SIP_FINISH(v0, v1, v2, v3, b)                                                 \
    do {                                                                                 \
        MG_SIP_WORD(v0, v1, v2, v3, b);                                                  \
        v2 ^= 0xff;                                                                      \
        MG_SIPROUND(v0, v1, v2, v3);                                                     \
        MG_SIPROUND(v0, v1, v2, v3);                                                     \
        MG_SIPROUND(v0, v1, v2, v3);                                                     \
        v0 ^= v1 ^ v2 ^ v3;                                                              \
    } while (0)

/* SipHash-1-3 of exactly 40 bytes at p: mg_siphash13(k0, k1, p, 40) unrolled and inlined,
 * because the per-packet flow hash (mg_dp.c: flow_hash, mg_steer.c: steering) is the
 * largest fixed cost per packet.  The differential tests compare every decision with the
 * Python reference, which uses the generic SipHash; tests/hashing/test_vectors.py pins
 * mg_siphash13 itself and tests/actors/test_steer_fast.py this one. */
static inline uint64_t mg_siphash13_40(uint64_t k0, uint64_t k1, const void *p)
{
    uint64_t m[5];
    memcpy(m, p, sizeof m);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (int i = 0; i < 5; i++)
        m[i] = __builtin_bswap64(m[i]);
#endif
    MG_SIP_INIT(v0, v1, v2, v3, k0, k1);
#pragma GCC unroll 5
    for (int i = 0; i < 5; i++)
        MG_SIP_WORD(v0, v1, v2, v3, m[i]);
    MG_SIP_FINISH(v0, v1, v2, v3, (uint64_t)40 << 56);
    return v0;
}

#endif
