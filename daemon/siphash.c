/*
 * SipHash-2-4, written from the algorithm's description: four 64-bit lanes,
 * two rounds per 8-byte word of input, four after the final word, which
 * carries the input length in its top byte. Little-endian throughout, so
 * the result is the same on every host.
 */

#include "daemon/siphash.h"

static inline uint64_t rotl64(uint64_t x, unsigned b) {
        return (x << b) | (x >> (64 - b));
}

static inline uint64_t load_le64(const uint8_t *p) {
        uint64_t v = 0;

        for (unsigned i = 0; i < 8; i++)
                v |= (uint64_t) p[i] << (8 * i);
        return v;
}

typedef struct SipState {
        uint64_t v0, v1, v2, v3;
} SipState;

static void sip_round(SipState *s) {
        s->v0 += s->v1;
        s->v1 = rotl64(s->v1, 13) ^ s->v0;
        s->v0 = rotl64(s->v0, 32);
        s->v2 += s->v3;
        s->v3 = rotl64(s->v3, 16) ^ s->v2;
        s->v0 += s->v3;
        s->v3 = rotl64(s->v3, 21) ^ s->v0;
        s->v2 += s->v1;
        s->v1 = rotl64(s->v1, 17) ^ s->v2;
        s->v2 = rotl64(s->v2, 32);
}

static void sip_absorb(SipState *s, uint64_t m) {
        s->v3 ^= m;
        sip_round(s);
        sip_round(s);
        s->v0 ^= m;
}

uint64_t siphash24(const uint8_t key[SIPHASH_KEY_SIZE], const void *data, size_t len) {
        const uint8_t *in = data;
        uint64_t k0 = load_le64(key), k1 = load_le64(key + 8), last;
        SipState s = {
                .v0 = k0 ^ UINT64_C(0x736f6d6570736575),
                .v1 = k1 ^ UINT64_C(0x646f72616e646f6d),
                .v2 = k0 ^ UINT64_C(0x6c7967656e657261),
                .v3 = k1 ^ UINT64_C(0x7465646279746573),
        };
        size_t whole = len - len % 8;

        for (size_t i = 0; i < whole; i += 8)
                sip_absorb(&s, load_le64(in + i));
        last = (uint64_t) (len & 0xff) << 56;
        for (size_t i = 0; i < len % 8; i++)
                last |= (uint64_t) in[whole + i] << (8 * i);
        sip_absorb(&s, last);
        s.v2 ^= 0xff;
        for (int i = 0; i < 4; i++)
                sip_round(&s);
        return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}
