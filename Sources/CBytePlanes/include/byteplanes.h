// Byte planes: the tensor-aware frame transform of spec/FORMAT.md section 6.
#ifndef CKPK_BYTEPLANES_H
#define CKPK_BYTEPLANES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Splits `count` little-endian elements of `size` bytes (2, 4 or 8) from
/// `src` into `size` planes written one after another to `dst`
/// (size * count bytes). Plane j holds byte (size - 1 - j) of every element,
/// most significant first. With `rotate`, each element is first rotated left
/// by one bit, so the sign bit of a float moves below its exponent.
void ckpk_planes_split(const uint8_t *src, size_t count, int size, int rotate, uint8_t *dst);

/// The inverse of ckpk_planes_split: `planes[j]` points at plane j
/// (`count` bytes each); the elements are written to `dst`.
void ckpk_planes_merge(const uint8_t *const *planes, size_t count, int size, int rotate, uint8_t *dst);

/// The order-0 entropy of `bytes`, in bits per byte (0 ... 8), estimated
/// from about 1024 evenly spread bytes when there are more.
double ckpk_entropy_bits(const uint8_t *bytes, size_t count);

/// Makes the next compressions on `cctx` emit literals only (no matches):
/// zstd then codes each block with its Huffman literal coder alone, which
/// is close to the order-0 bound on skewed planes such as float exponents.
/// Literals are Huffman coded at every level, negative ones included.
/// Cleared by a parameter reset. Returns 0, or a zstd error code.
size_t ckpk_zstd_literals_only(void *cctx);

#ifdef __cplusplus
}
#endif
#endif
