// CFuseGlue: a read-only FUSE filesystem of flat files whose bytes come from a callback.
//
// Why C: libfuse's entry points are versioned macros (fuse_loop_mt, fuse_main) that Swift
// cannot call, and its callbacks take C structs by pointer. Everything else (which files,
// what bytes) is decided in Swift through the two callbacks.
#ifndef DISKSNAP_CFUSEGLUE_H
#define DISKSNAP_CFUSEGLUE_H

#include <stddef.h>
#include <stdint.h>

struct ds_fuse_file {
    const char *name;  // a plain file name in the root directory
    uint64_t size;
};

/// Fills buf with up to size bytes of file `index` from `offset` (already clipped to the
/// file's end); returns the byte count or -errno.
typedef int (*ds_fuse_read_fn)(void *context, int index, char *buf, size_t size, uint64_t offset);
/// Called once the filesystem is mounted, before the first request is served.
typedef void (*ds_fuse_ready_fn)(void *context);

/// Mounts the files read-only at `mountpoint` (named `fsname` in /proc/mounts) and serves
/// them on several threads until the filesystem is unmounted (fusermount3 -u, umount) or
/// the process gets SIGINT, SIGTERM or SIGHUP, after which it is unmounted. Returns 0, or
/// -1 when the mount failed (libfuse printed why on stderr).
int ds_fuse_serve(const char *mountpoint, const char *fsname, const struct ds_fuse_file *files, int count,
                  int64_t mtime, ds_fuse_read_fn read, ds_fuse_ready_fn ready, void *context);

#endif
