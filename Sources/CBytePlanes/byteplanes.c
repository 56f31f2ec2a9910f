#include "byteplanes.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

// Elements are loaded as little-endian words (byte-swapped on a big-endian
// host), so the result does not depend on the host's byte order. The compiler
// turns the 2- and 4-byte split loops into vector code; it does not manage the
// merges, so on x86-64 (whose baseline is SSE2) those interleave sixteen
// elements at a time with byte unpacks (2-3x faster), and the scalar loops
// finish the rest and serve other hosts. Eight-byte elements go through an
// 8x8 byte transpose, eight at a time.

#if defined(__SSE2__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <emmintrin.h>
#define CKPK_SSE2 1

static inline __m128i rotr16x8(__m128i v, int rotate) {
    return rotate ? _mm_or_si128(_mm_srli_epi16(v, 1), _mm_slli_epi16(v, 15)) : v;
}
static inline __m128i rotr32x4(__m128i v, int rotate) {
    return rotate ? _mm_or_si128(_mm_srli_epi32(v, 1), _mm_slli_epi32(v, 31)) : v;
}
static inline __m128i load128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }
static inline void store128(uint8_t *p, __m128i v) { _mm_storeu_si128((__m128i *)(void *)p, v); }

// Sixteen 2-byte elements: the low and high bytes interleaved.
static size_t merge2_sse2(const uint8_t *p0, const uint8_t *p1, size_t n, int rotate, uint8_t *dst) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i high = load128(p0 + i), low = load128(p1 + i);
        store128(dst + 2 * i, rotr16x8(_mm_unpacklo_epi8(low, high), rotate));
        store128(dst + 2 * i + 16, rotr16x8(_mm_unpackhi_epi8(low, high), rotate));
    }
    return i;
}

// Sixteen 4-byte elements: bytes 0 and 1, and 2 and 3, interleaved; then the pairs.
static size_t merge4_sse2(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3, size_t n, int rotate,
                          uint8_t *dst) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i b0 = load128(p3 + i), b1 = load128(p2 + i), b2 = load128(p1 + i), b3 = load128(p0 + i);
        __m128i low01 = _mm_unpacklo_epi8(b0, b1), high01 = _mm_unpackhi_epi8(b0, b1);
        __m128i low23 = _mm_unpacklo_epi8(b2, b3), high23 = _mm_unpackhi_epi8(b2, b3);
        store128(dst + 4 * i, rotr32x4(_mm_unpacklo_epi16(low01, low23), rotate));
        store128(dst + 4 * i + 16, rotr32x4(_mm_unpackhi_epi16(low01, low23), rotate));
        store128(dst + 4 * i + 32, rotr32x4(_mm_unpacklo_epi16(high01, high23), rotate));
        store128(dst + 4 * i + 48, rotr32x4(_mm_unpackhi_epi16(high01, high23), rotate));
    }
    return i;
}
#endif

static inline uint16_t load16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap16(v);
#endif
    return v;
}

static inline uint32_t load32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void store16(uint8_t *p, uint16_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap16(v);
#endif
    memcpy(p, &v, 2);
}

static inline void store32(uint8_t *p, uint32_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, 4);
}

static inline void store64(uint8_t *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

static inline uint64_t rotl64(uint64_t v, int rotate) { return rotate ? (v << 1) | (v >> 63) : v; }
static inline uint64_t rotr64(uint64_t v, int rotate) { return rotate ? (v >> 1) | (v << 63) : v; }

// Transposes an 8x8 byte matrix held as eight little-endian rows: afterwards
// byte k of x[b] is what byte b of x[k] was.
static inline void transpose8(uint64_t x[8]) {
    for (int k = 0; k < 8; k += 2) {
        uint64_t t = ((x[k] >> 8) ^ x[k + 1]) & 0x00FF00FF00FF00FFull;
        x[k + 1] ^= t;
        x[k] ^= t << 8;
    }
    static const int pairs[4] = {0, 1, 4, 5};
    for (int m = 0; m < 4; m++) {
        int k = pairs[m];
        uint64_t t = ((x[k] >> 16) ^ x[k + 2]) & 0x0000FFFF0000FFFFull;
        x[k + 2] ^= t;
        x[k] ^= t << 16;
    }
    for (int k = 0; k < 4; k++) {
        uint64_t t = ((x[k] >> 32) ^ x[k + 4]) & 0x00000000FFFFFFFFull;
        x[k + 4] ^= t;
        x[k] ^= t << 32;
    }
}

static void split2(const uint8_t *src, size_t n, int rotate, uint8_t *restrict dst) {
    uint8_t *restrict p0 = dst, *restrict p1 = dst + n;
    for (size_t i = 0; i < n; i++) {
        uint16_t v = load16(src + 2 * i);
        if (rotate) v = (uint16_t)((v << 1) | (v >> 15));
        p0[i] = (uint8_t)(v >> 8);
        p1[i] = (uint8_t)v;
    }
}

static void merge2(const uint8_t *const *planes, size_t n, int rotate, uint8_t *restrict dst) {
    const uint8_t *p0 = planes[0], *p1 = planes[1];
    size_t i = 0;
#ifdef CKPK_SSE2
    i = merge2_sse2(p0, p1, n, rotate, dst);
#endif
    for (; i < n; i++) {
        uint16_t v = (uint16_t)((p0[i] << 8) | p1[i]);
        if (rotate) v = (uint16_t)((v >> 1) | (v << 15));
        store16(dst + 2 * i, v);
    }
}

static void split4(const uint8_t *src, size_t n, int rotate, uint8_t *restrict dst) {
    uint8_t *restrict p0 = dst, *restrict p1 = dst + n, *restrict p2 = dst + 2 * n, *restrict p3 = dst + 3 * n;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = load32(src + 4 * i);
        if (rotate) v = (v << 1) | (v >> 31);
        p0[i] = (uint8_t)(v >> 24);
        p1[i] = (uint8_t)(v >> 16);
        p2[i] = (uint8_t)(v >> 8);
        p3[i] = (uint8_t)v;
    }
}

static void merge4(const uint8_t *const *planes, size_t n, int rotate, uint8_t *restrict dst) {
    const uint8_t *p0 = planes[0], *p1 = planes[1], *p2 = planes[2], *p3 = planes[3];
    size_t i = 0;
#ifdef CKPK_SSE2
    i = merge4_sse2(p0, p1, p2, p3, n, rotate, dst);
#endif
    for (; i < n; i++) {
        uint32_t v = ((uint32_t)p0[i] << 24) | ((uint32_t)p1[i] << 16) | ((uint32_t)p2[i] << 8) | p3[i];
        if (rotate) v = (v >> 1) | (v << 31);
        store32(dst + 4 * i, v);
    }
}

static void split8(const uint8_t *src, size_t n, int rotate, uint8_t *dst) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x[8];
        for (int k = 0; k < 8; k++) x[k] = rotl64(load64(src + 8 * (i + (size_t)k)), rotate);
        transpose8(x);   // x[b]: byte b of the eight elements
        for (int j = 0; j < 8; j++) store64(dst + (size_t)j * n + i, x[7 - j]);
    }
    for (; i < n; i++) {
        uint64_t v = rotl64(load64(src + 8 * i), rotate);
        for (int j = 0; j < 8; j++) dst[(size_t)j * n + i] = (uint8_t)(v >> (8 * (7 - j)));
    }
}

static void merge8(const uint8_t *const *planes, size_t n, int rotate, uint8_t *dst) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x[8];
        for (int b = 0; b < 8; b++) x[b] = load64(planes[7 - b] + i);
        transpose8(x);   // x[k]: element k's bytes
        for (int k = 0; k < 8; k++) store64(dst + 8 * (i + (size_t)k), rotr64(x[k], rotate));
    }
    for (; i < n; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v = (v << 8) | planes[j][i];
        store64(dst + 8 * i, rotr64(v, rotate));
    }
}

void ckpk_planes_split(const uint8_t *src, size_t count, int size, int rotate, uint8_t *dst) {
    switch (size) {
    case 2: split2(src, count, rotate, dst); break;
    case 4: split4(src, count, rotate, dst); break;
    case 8: split8(src, count, rotate, dst); break;
    default: break;
    }
}

void ckpk_planes_merge(const uint8_t *const *planes, size_t count, int size, int rotate, uint8_t *dst) {
    switch (size) {
    case 2: merge2(planes, count, rotate, dst); break;
    case 4: merge4(planes, count, rotate, dst); break;
    case 8: merge8(planes, count, rotate, dst); break;
    default: break;
    }
}

// At most this many bytes of a plane are counted (see ckpk_entropy_bits).
#define ENTROPY_SAMPLES 1024

// c * log2(c) for every count a histogram of ENTROPY_SAMPLES bytes can hold.
static double count_bits[ENTROPY_SAMPLES + 1];
static pthread_once_t count_bits_once = PTHREAD_ONCE_INIT;
static void fill_count_bits(void) {
    for (int c = 1; c <= ENTROPY_SAMPLES; c++) count_bits[c] = c * log2((double)c);
}

double ckpk_entropy_bits(const uint8_t *bytes, size_t count) {
    if (count == 0) return 0;
    // A plane is estimated from at most ENTROPY_SAMPLES bytes spread over all
    // of it (an odd stride, so a period in the data does not line up with
    // it): the estimate only picks how a plane is coded, and counting every
    // byte cost as much as coding it.
    size_t stride = count > ENTROPY_SAMPLES ? (count + ENTROPY_SAMPLES - 1) / ENTROPY_SAMPLES | 1 : 1;
    size_t samples = (count + stride - 1) / stride;
    // Four histograms break the store-to-load dependency on repeated bytes.
    uint32_t h[4][256];
    memset(h, 0, sizeof h);
    size_t i = 0;
    for (; i + 4 <= samples; i += 4) {
        h[0][bytes[i * stride]]++;
        h[1][bytes[(i + 1) * stride]]++;
        h[2][bytes[(i + 2) * stride]]++;
        h[3][bytes[(i + 3) * stride]]++;
    }
    for (; i < samples; i++) h[0][bytes[i * stride]]++;
    pthread_once(&count_bits_once, fill_count_bits);
    // The entropy is log2(n) - sum(c * log2(c)) / n over the n samples, plus
    // Miller and Madow's correction for the bias of a sample ((m - 1) / 2n
    // nats for m symbols seen), without which random bytes look like 7.9 bits.
    double sum = 0;
    int seen = 0;
    for (int s = 0; s < 256; s++) {
        uint32_t c = h[0][s] + h[1][s] + h[2][s] + h[3][s];
        sum += count_bits[c];
        seen += c > 0;
    }
    double bits = log2((double)samples) - sum / (double)samples + (seen - 1) / (2.0 * (double)samples * M_LN2);
    return bits < 8 ? bits : 8;
}

// One block-delimiter sequence covering the whole block: all literals.
static size_t literals_only(void *state, ZSTD_Sequence *out, size_t capacity, const void *src, size_t srcSize,
                            const void *dict, size_t dictSize, int level, size_t windowSize) {
    (void)state; (void)src; (void)dict; (void)dictSize; (void)level; (void)windowSize;
    if (capacity < 1) return ZSTD_SEQUENCE_PRODUCER_ERROR;
    out[0].offset = 0;
    out[0].litLength = (unsigned)srcSize;
    out[0].matchLength = 0;
    out[0].rep = 0;
    return 1;
}

size_t ckpk_zstd_literals_only(void *cctx) {
    ZSTD_registerSequenceProducer((ZSTD_CCtx *)cctx, NULL, literals_only);
    size_t r = ZSTD_CCtx_setParameter((ZSTD_CCtx *)cctx, ZSTD_c_enableSeqProducerFallback, 0);
    if (ZSTD_isError(r)) return r;
    // Negative levels would store the literals raw: Huffman coding them is the point.
    r = ZSTD_CCtx_setParameter((ZSTD_CCtx *)cctx, ZSTD_c_literalCompressionMode, ZSTD_ps_enable);
    return ZSTD_isError(r) ? r : 0;
}
