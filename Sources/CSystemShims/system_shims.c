// Linux calls that Swift's Glibc module does not export (they need _GNU_SOURCE).
#define _GNU_SOURCE
#include "system_shims.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/falloc.h>
#endif

int ckpk_collapse_range(int fd, int64_t offset, int64_t length) {
#if defined(__linux__) && defined(FALLOC_FL_COLLAPSE_RANGE)
    return fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, (off_t)offset, (off_t)length);
#else
    (void)fd; (void)offset; (void)length;
    errno = EOPNOTSUPP;
    return -1;
#endif
}

int ckpk_stdout_failed(void) {
    // fflush reports a failure of the last write; ferror one of any earlier write.
    return fflush(stdout) != 0 || ferror(stdout);
}

int ckpk_rename(const char *from, const char *to, unsigned flags) {
#if defined(__linux__) && defined(RENAME_NOREPLACE)
    return renameat2(AT_FDCWD, from, AT_FDCWD, to, flags);
#else
    (void)from; (void)to; (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}
