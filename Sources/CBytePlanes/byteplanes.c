#include "byteplanes.h"

#include <math.h>
#include <string.h>

#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

// Elements are assembled from bytes, so the result does not depend on the
// host's byte order; the compiler turns these loops into vector code.

static void split2(const uint8_t *src, size_t n, int rotate, uint8_t *dst) {
    uint8_t *p0 = dst, *p1 = dst + n;
    for (size_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
        if (rotate) v = (uint16_t)((v << 1) | (v >> 15));
        p0[i] = (uint8_t)(v >> 8);
        p1[i] = (uint8_t)v;
    }
}

static void merge2(const uint8_t *const *planes, size_t n, int rotate, uint8_t *dst) {
    const uint8_t *p0 = planes[0], *p1 = planes[1];
    for (size_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)((p0[i] << 8) | p1[i]);
        if (rotate) v = (uint16_t)((v >> 1) | (v << 15));
        dst[2 * i] = (uint8_t)v;
        dst[2 * i + 1] = (uint8_t)(v >> 8);
    }
}

static void split4(const uint8_t *src, size_t n, int rotate, uint8_t *dst) {
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)src[4 * i] | ((uint32_t)src[4 * i + 1] << 8)
                   | ((uint32_t)src[4 * i + 2] << 16) | ((uint32_t)src[4 * i + 3] << 24);
        if (rotate) v = (v << 1) | (v >> 31);
        dst[i] = (uint8_t)(v >> 24);
        dst[n + i] = (uint8_t)(v >> 16);
        dst[2 * n + i] = (uint8_t)(v >> 8);
        dst[3 * n + i] = (uint8_t)v;
    }
}

static void merge4(const uint8_t *const *planes, size_t n, int rotate, uint8_t *dst) {
    const uint8_t *p0 = planes[0], *p1 = planes[1], *p2 = planes[2], *p3 = planes[3];
    for (size_t i = 0; i < n; i++) {
        uint32_t v = ((uint32_t)p0[i] << 24) | ((uint32_t)p1[i] << 16) | ((uint32_t)p2[i] << 8) | p3[i];
        if (rotate) v = (v >> 1) | (v << 31);
        dst[4 * i] = (uint8_t)v;
        dst[4 * i + 1] = (uint8_t)(v >> 8);
        dst[4 * i + 2] = (uint8_t)(v >> 16);
        dst[4 * i + 3] = (uint8_t)(v >> 24);
    }
}

static void split8(const uint8_t *src, size_t n, int rotate, uint8_t *dst) {
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int b = 7; b >= 0; b--) v = (v << 8) | src[8 * i + (size_t)b];
        if (rotate) v = (v << 1) | (v >> 63);
        for (int j = 0; j < 8; j++) dst[(size_t)j * n + i] = (uint8_t)(v >> (8 * (7 - j)));
    }
}

static void merge8(const uint8_t *const *planes, size_t n, int rotate, uint8_t *dst) {
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v = (v << 8) | planes[j][i];
        if (rotate) v = (v >> 1) | (v << 63);
        for (int b = 0; b < 8; b++) dst[8 * i + (size_t)b] = (uint8_t)(v >> (8 * b));
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

double ckpk_entropy_bits(const uint8_t *bytes, size_t count) {
    if (count == 0) return 0;
    // Four histograms break the store-to-load dependency on repeated bytes.
    uint32_t h[4][256];
    memset(h, 0, sizeof h);
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
        h[0][bytes[i]]++;
        h[1][bytes[i + 1]]++;
        h[2][bytes[i + 2]]++;
        h[3][bytes[i + 3]]++;
    }
    for (; i < count; i++) h[0][bytes[i]]++;
    double bits = 0, total = (double)count;
    for (int s = 0; s < 256; s++) {
        uint32_t c = h[0][s] + h[1][s] + h[2][s] + h[3][s];
        if (c) bits -= (double)c * log2((double)c / total);
    }
    return bits / total;
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
    return ZSTD_isError(r) ? r : 0;
}
