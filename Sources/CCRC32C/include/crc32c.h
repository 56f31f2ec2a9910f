#ifndef CHECKPACK_CRC32C_H
#define CHECKPACK_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/// Extends a finished CRC32C (Castagnoli, reflected, init and xor-out 0xFFFFFFFF)
/// over `length` more bytes. Start a new checksum with `crc = 0`.
/// Uses the CPU's CRC instruction when it has one.
uint32_t ckpk_crc32c_update(uint32_t crc, const void *data, size_t length);

/// The same function computed with the portable table code only.
uint32_t ckpk_crc32c_update_portable(uint32_t crc, const void *data, size_t length);

/// The CRC32C of A followed by B, from the CRC32C of A, that of B, and B's length.
uint32_t ckpk_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

/// 1 when `ckpk_crc32c_update` uses a hardware instruction on this CPU.
int ckpk_crc32c_uses_hardware(void);

#endif
