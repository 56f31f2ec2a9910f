// CRC32C (Castagnoli polynomial, reflected 0x82F63B78).
// Portable path: slicing-by-8 tables built once. Hardware path: the SSE4.2
// `crc32` instruction on x86-64 or the ARMv8 CRC extension on aarch64, chosen
// once at run time so one binary runs on any CPU of the architecture.
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table[0][n];
        for (int s = 1; s < 8; s++) {
            c = table[0][c & 0xFF] ^ (c >> 8);
            table[s][n] = c;
        }
    }
}

static uint32_t portable(uint32_t crc, const unsigned char *p, size_t n) {
    while (n > 0 && ((uintptr_t)p & 7) != 0) {
        crc = table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        // Little-endian load: the reflected CRC consumes the low byte first.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        word = __builtin_bswap64(word);
#endif
        uint32_t lo = (uint32_t)word ^ crc;
        uint32_t hi = (uint32_t)(word >> 32);
        crc = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF] ^
              table[5][(lo >> 16) & 0xFF] ^ table[4][lo >> 24] ^
              table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF] ^
              table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) crc = table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

uint32_t ckpk_crc32c_update_portable(uint32_t crc, const void *data, size_t length) {
    pthread_once(&table_once, build_table);
    return ~portable(~crc, (const unsigned char *)data, length);
}

// The CRC instruction takes three cycles but can start one every cycle, so
// the hardware path runs three independent CRCs over three adjacent blocks
// and joins them: the register of block A is carried over the length of B by
// multiplying it by x^(8·len) (a table lookup per byte of the register).
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

static uint32_t gf2_multiply(uint32_t a, uint32_t b);
static uint32_t x_to_8n(uint64_t n);

// shift_by[k][b] = (b << 8k) · x^(8·block) mod P, for the two block lengths.
static uint32_t shift_long[4][256], shift_short[4][256];

static void build_shift(uint32_t shift[4][256], uint64_t block) {
    uint32_t factor = x_to_8n(block);
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) shift[k][b] = gf2_multiply(b << (8 * k), factor);
}

static inline uint32_t shifted(const uint32_t shift[4][256], uint32_t c) {
    return shift[0][c & 0xFF] ^ shift[1][(c >> 8) & 0xFF] ^ shift[2][(c >> 16) & 0xFF] ^ shift[3][c >> 24];
}

#if defined(__x86_64__)
#define HARDWARE __attribute__((target("sse4.2")))
HARDWARE static inline uint32_t step8(uint32_t c, const unsigned char *p) {
    uint64_t word;
    memcpy(&word, p, 8);
    return (uint32_t)_mm_crc32_u64(c, word);
}
HARDWARE static inline uint32_t step1(uint32_t c, unsigned char b) { return _mm_crc32_u8(c, b); }

static int detect(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c & bit_SSE4_2) != 0;
}
#elif defined(__aarch64__)
#define HARDWARE __attribute__((target("+crc")))
HARDWARE static inline uint32_t step8(uint32_t c, const unsigned char *p) {
    uint64_t word;
    memcpy(&word, p, 8);
    return __crc32cd(c, word);
}
HARDWARE static inline uint32_t step1(uint32_t c, unsigned char b) { return __crc32cb(c, b); }

static int detect(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#if defined(HARDWARE)
// Three blocks of `block` bytes at a time while they last.
HARDWARE static inline uint32_t interleaved(uint32_t crc, const unsigned char **p, size_t *n, size_t block,
                                            const uint32_t shift[4][256]) {
    while (*n >= 3 * block) {
        const unsigned char *a = *p, *b = a + block, *c = b + block;
        uint32_t ca = crc, cb = 0, cc = 0;
        for (size_t i = 0; i < block; i += 8) {
            ca = step8(ca, a + i);
            cb = step8(cb, b + i);
            cc = step8(cc, c + i);
        }
        crc = shifted(shift, shifted(shift, ca) ^ cb) ^ cc;
        *p += 3 * block;
        *n -= 3 * block;
    }
    return crc;
}

HARDWARE static uint32_t hardware(uint32_t crc, const unsigned char *p, size_t n) {
    while (n > 0 && ((uintptr_t)p & 7) != 0) { crc = step1(crc, *p++); n--; }
    crc = interleaved(crc, &p, &n, LONG_BLOCK, shift_long);
    crc = interleaved(crc, &p, &n, SHORT_BLOCK, shift_short);
    while (n >= 8) { crc = step8(crc, p); p += 8; n -= 8; }
    while (n-- > 0) crc = step1(crc, *p++);
    return crc;
}
#else
static uint32_t hardware(uint32_t crc, const unsigned char *p, size_t n) { return portable(crc, p, n); }
static int detect(void) { return 0; }
#endif

static int has_hardware = -1;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static void run_detect(void) {
    has_hardware = detect();
    if (has_hardware) {
        build_shift(shift_long, LONG_BLOCK);
        build_shift(shift_short, SHORT_BLOCK);
    }
}

int ckpk_crc32c_uses_hardware(void) {
    pthread_once(&detect_once, run_detect);
    return has_hardware;
}

uint32_t ckpk_crc32c_update(uint32_t crc, const void *data, size_t length) {
    if (ckpk_crc32c_uses_hardware()) return ~hardware(~crc, (const unsigned char *)data, length);
    return ckpk_crc32c_update_portable(crc, data, length);
}

// Combining: the CRC of A‖B from crc(A), crc(B) and len(B). Appending n zero
// bytes to A multiplies its CRC register by x^(8n) modulo the polynomial; the
// powers x^(2^k) are precomputed, so this costs O(log n) carry-less products.
static uint32_t gf2_multiply(uint32_t a, uint32_t b) {
    // Reflected bit order: bit 31 is x^0.
    uint32_t product = 0;
    for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
        if (a & bit) product ^= b;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return product;
}

static uint32_t power_table[64];   // power_table[k] = x^(2^k) mod P
static pthread_once_t power_once = PTHREAD_ONCE_INIT;

static void build_powers(void) {
    uint32_t p = 1u << 30;   // x^1
    for (int k = 0; k < 64; k++) {
        power_table[k] = p;
        p = gf2_multiply(p, p);
    }
}

// x^(8n) mod P: the product of x^(2^(k+3)) for the set bits k of n.
static uint32_t x_to_8n(uint64_t n) {
    pthread_once(&power_once, build_powers);
    uint32_t product = 1u << 31;   // x^0
    for (int k = 3; n != 0 && k < 64; k++, n >>= 1) {
        if (n & 1) product = gf2_multiply(power_table[k], product);
    }
    return product;
}

uint32_t ckpk_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
    return gf2_multiply(x_to_8n(length_b), crc_a) ^ crc_b;
}
