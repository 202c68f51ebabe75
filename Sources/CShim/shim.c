#define _GNU_SOURCE
#include <malloc.h>
#include "CShim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <unistd.h>

int64_t ds_seek_data(int fd, int64_t offset) { return lseek(fd, offset, SEEK_DATA); }
int64_t ds_seek_hole(int fd, int64_t offset) { return lseek(fd, offset, SEEK_HOLE); }

int ds_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int ds_ofd_write_lock_conflict(int fd, int64_t start, int64_t length) {
    struct flock probe = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = length, .l_pid = 0 };
    if (fcntl(fd, F_OFD_GETLK, &probe) != 0) return -1;
    return probe.l_type != F_UNLCK;
}

int ds_block_device_size(int fd, uint64_t *size_bytes) {
    return ioctl(fd, BLKGETSIZE64, size_bytes);
}

int ds_block_logical_sector_size(int fd, uint32_t *size_bytes) {
    int size = 0;
    int rc = ioctl(fd, BLKSSZGET, &size);
    if (rc == 0) *size_bytes = (uint32_t)size;
    return rc;
}

int ds_block_physical_sector_size(int fd, uint32_t *size_bytes) {
    unsigned int size = 0;
    int rc = ioctl(fd, BLKPBSZGET, &size);
    if (rc == 0) *size_bytes = (uint32_t)size;
    return rc;
}

int ds_block_zero_out(int fd, uint64_t start, uint64_t length) {
    uint64_t range[2] = { start, length };
    return ioctl(fd, BLKZEROOUT, range);
}

int ds_o_direct(void) { return O_DIRECT; }
int ds_syncfs(int fd) { return syncfs(fd); }
int ds_fadvise_sequential(int fd) { return posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL); }
int ds_fadvise_dontneed(int fd, int64_t offset, int64_t length) {
    return posix_fadvise(fd, offset, length, POSIX_FADV_DONTNEED);
}

static int64_t page_size(void) { return (int64_t)sysconf(_SC_PAGESIZE); }

long ds_page_count(int64_t offset, size_t length) {
    int64_t page = page_size(), first = offset / page, end = (offset + (int64_t)length + page - 1) / page;
    return (long)(end - first);
}

long ds_resident_pages(int fd, int64_t offset, size_t length, unsigned char *vec) {
    int64_t page = page_size(), start = offset / page * page;
    size_t span = (size_t)(offset - start) + length;
    if (length == 0) return 0;
    void *map = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (map == MAP_FAILED) return -1;
    int rc = mincore(map, span, vec);
    int saved = errno;
    munmap(map, span);
    errno = saved;
    return rc == 0 ? ds_page_count(offset, length) : -1;
}

int ds_drop_pages_not_resident(int fd, int64_t offset, size_t length, const unsigned char *vec) {
    int64_t page = page_size(), first = offset / page;
    long count = ds_page_count(offset, length);
    long i = 0;
    while (i < count) {
        if (vec[i] & 1) { i++; continue; }
        long j = i;
        while (j < count && !(vec[j] & 1)) j++;
        int rc = posix_fadvise(fd, (first + i) * page, (j - i) * page, POSIX_FADV_DONTNEED);
        if (rc != 0) return rc;
        i = j;
    }
    return 0;
}

unsigned int ds_major(uint64_t dev) { return major((dev_t)dev); }
unsigned int ds_minor(uint64_t dev) { return minor((dev_t)dev); }

static const unsigned char zero_page[65536];

int ds_is_all_zero(const void *buf, size_t length) {
    const unsigned char *p = buf;
    while (length > 0) {
        size_t n = length < sizeof zero_page ? length : sizeof zero_page;
        if (memcmp(p, zero_page, n) != 0) return 0;
        p += n;
        length -= n;
    }
    return 1;
}

uint64_t ds_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }

int ds_socket_peer_pid(int fd) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0 || credentials.pid <= 0) return -1;
    return credentials.pid;
}

int ds_ficlone(int dst, int src) { return ioctl(dst, FICLONE, src); }

#include <spawn.h>
extern char **environ;

int ds_spawn_detached(const char *path, char *const argv[], int stdin_fd, int stdout_fd, int *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attributes);
    if (rc != 0) { posix_spawn_file_actions_destroy(&actions); return rc; }
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
    if (rc == 0) rc = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
    pid_t child = 0;
    if (rc == 0) rc = posix_spawn(&child, path, &actions, &attributes, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (rc == 0) *pid = child;
    return rc;
}

int ds_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

#include <linux/fiemap.h>
#include <stdlib.h>

int ds_fiemap(int fd, uint64_t start, uint64_t length, ds_extent *out, uint32_t capacity, uint32_t *count, int *last) {
    size_t size = sizeof(struct fiemap) + (size_t)capacity * sizeof(struct fiemap_extent);
    struct fiemap *map = calloc(1, size);
    if (map == NULL) { errno = ENOMEM; return -1; }
    map->fm_start = start;
    map->fm_length = length;
    map->fm_flags = FIEMAP_FLAG_SYNC;
    map->fm_extent_count = capacity;
    if (ioctl(fd, FS_IOC_FIEMAP, map) != 0) { int saved = errno; free(map); errno = saved; return -1; }
    *count = map->fm_mapped_extents;
    *last = 0;
    for (uint32_t i = 0; i < map->fm_mapped_extents; i++) {
        out[i].logical = map->fm_extents[i].fe_logical;
        out[i].physical = map->fm_extents[i].fe_physical;
        out[i].length = map->fm_extents[i].fe_length;
        out[i].flags = map->fm_extents[i].fe_flags;
        if (out[i].flags & FIEMAP_EXTENT_LAST) *last = 1;
    }
    free(map);
    return 0;
}

int ds_set_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }
