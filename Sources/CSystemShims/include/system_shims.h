#ifndef CHECKPACK_SYSTEM_SHIMS_H
#define CHECKPACK_SYSTEM_SHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Removes `length` bytes at `offset` from `fd`'s file, moving what follows
/// down without copying it (fallocate with FALLOC_FL_COLLAPSE_RANGE; both
/// numbers multiples of the filesystem's block size, the range short of the
/// end of the file). Returns 0, or -1 with errno (EOPNOTSUPP, EINVAL... mean:
/// move the bytes instead).
int ckpk_collapse_range(int fd, int64_t offset, int64_t length);

/// Nonzero when standard output could not be written: the buffer does not
/// flush, or an earlier write failed.
int ckpk_stdout_failed(void);

/// renameat2 relative to the working directory. Flags, as Linux numbers them:
/// CKPK_RENAME_NOREPLACE (fail with EEXIST if `to` exists) and
/// CKPK_RENAME_EXCHANGE (swap `from` and `to`, both existing). -1 with errno
/// EINVAL or ENOSYS where the kernel or filesystem lacks them.
#define CKPK_RENAME_NOREPLACE 1u
#define CKPK_RENAME_EXCHANGE 2u
int ckpk_rename(const char *from, const char *to, unsigned flags);

#endif
