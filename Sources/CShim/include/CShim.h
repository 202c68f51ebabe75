// CShim: the Linux facilities Swift cannot reach directly.
//
// Why each exists:
// - ioctl is variadic, so BLKGETSIZE64, BLKSSZGET and BLKZEROOUT need C wrappers;
// - SEEK_DATA/SEEK_HOLE, O_DIRECT and major()/minor() are _GNU_SOURCE names or macros the
//   Glibc module does not export;
// - mallopt and its M_ constants live in <malloc.h>, which the Glibc module leaves out;
// - the all-zero test compares against a static zero page with memcmp, which stays fast in
//   debug builds where a Swift byte loop is ~50x slower.
#ifndef DISKSNAP_CSHIM_H
#define DISKSNAP_CSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// lseek(fd, offset, SEEK_DATA). Returns -1 and sets errno (ENXIO past the last data).
int64_t ds_seek_data(int fd, int64_t offset);
/// lseek(fd, offset, SEEK_HOLE).
int64_t ds_seek_hole(int fd, int64_t offset);

/// Size in bytes of a block device (BLKGETSIZE64). Returns 0 or -1 with errno.
int ds_block_device_size(int fd, uint64_t *size_bytes);
/// Logical sector size of a block device (BLKSSZGET). Returns 0 or -1 with errno.
int ds_block_logical_sector_size(int fd, uint32_t *size_bytes);
/// Physical sector size of a block device (BLKPBSZGET). Returns 0 or -1 with errno.
int ds_block_physical_sector_size(int fd, uint32_t *size_bytes);
/// Zero a byte range of a block device (BLKZEROOUT): the kernel uses write-zeroes or
/// discard-with-zeroes when the device offers them. Returns 0 or -1 with errno.
int ds_block_zero_out(int fd, uint64_t start, uint64_t length);

/// fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length): the range
/// reads as zeroes and frees its blocks. Returns 0 or -1 with errno (EOPNOTSUPP where the
/// filesystem cannot).
int ds_punch_hole(int fd, int64_t offset, int64_t length);

/// mallopt(M_MMAP_THRESHOLD, bytes): allocations of `bytes` or more are mapped alone and
/// unmapped when freed (and glibc stops raising the threshold on its own). Returns 1 on success.
int ds_set_mmap_threshold(int bytes);

/// 1 when another open file description holds a lock that conflicts with a write lock on
/// [start, start + length) of fd (fcntl F_OFD_GETLK, as QEMU's image locking uses), 0 when
/// none does, -1 with errno on failure.
int ds_ofd_write_lock_conflict(int fd, int64_t start, int64_t length);

/// The O_DIRECT open flag.
int ds_o_direct(void);
/// syncfs(fd): flush the whole filesystem holding fd.
int ds_syncfs(int fd);
/// posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL).
int ds_fadvise_sequential(int fd);
/// posix_fadvise(fd, offset, length, POSIX_FADV_DONTNEED).
int ds_fadvise_dontneed(int fd, int64_t offset, int64_t length);

/// Page-cache residency of the pages covering [offset, offset + length) of fd, through
/// mmap + mincore (nothing is faulted in): vec[i] bit 0 is set when page i is cached.
/// vec must hold ds_page_count(offset, length) bytes. Returns the page count, or -1 with errno.
long ds_resident_pages(int fd, int64_t offset, size_t length, unsigned char *vec);
/// Pages covering [offset, offset + length): the size ds_resident_pages's vec needs.
long ds_page_count(int64_t offset, size_t length);
/// Drops from the page cache the pages of [offset, offset + length) that `vec` (filled by
/// ds_resident_pages before a read) shows were not cached: the cache is left as it was.
int ds_drop_pages_not_resident(int fd, int64_t offset, size_t length, const unsigned char *vec);

unsigned int ds_major(uint64_t dev);
unsigned int ds_minor(uint64_t dev);
uint64_t ds_makedev(unsigned int major, unsigned int minor);

/// 1 when every byte of buf[0..<length] is zero, else 0.
int ds_is_all_zero(const void *buf, size_t length);

/// The process id at the other end of a Unix socket (SO_PEERCRED); -1 when unknown.
int ds_socket_peer_pid(int fd);

/// Makes `dst` share all of `src`'s extents (FICLONE: a reflink copy, XFS/btrfs); 0 or -1 with errno.
int ds_ficlone(int dst, int src);


// libvirt, loaded at run time (dlopen of libvirt.so.0) only by `create --domain`: disksnap
// runs on hosts without libvirt, and links nothing of it. Handles are opaque pointers; every
// call that fails leaves libvirt's error for ds_virt_last_error (libvirt's own printing to
// stderr is turned off).
/// Loads libvirt.so.0 and every function below. Returns 0, or -1 with a reason in `reason`.
int ds_virt_load(char *reason, size_t reason_size);
/// libvirt's last error on this thread: its code (virErrorNumber; 0 when none) and message.
int ds_virt_last_error(char *message, size_t message_size);
void *ds_virt_connect(const char *uri);
void ds_virt_disconnect(void *connection);
void *ds_virt_domain(void *connection, const char *name);
void ds_virt_domain_free(void *domain);
/// 1 running, 0 not, -1 error.
int ds_virt_domain_active(void *domain);
/// The domain's live XML (free() it); NULL on error.
char *ds_virt_domain_xml(void *domain);
/// The domain's UUID as text into `uuid` (at least 37 bytes). Returns 0 or -1.
int ds_virt_domain_uuid(void *domain, char *uuid);
/// virDomainBackupBegin (pull mode XML; checkpoint XML may be NULL). Returns 0 or -1.
int ds_virt_backup_begin(void *domain, const char *backup_xml, const char *checkpoint_xml);
/// The running backup job's XML (free() it); NULL when none runs (code VIR_ERR_NO_DOMAIN_BACKUP) or on error.
char *ds_virt_backup_xml(void *domain);
int ds_virt_abort_job(void *domain);
/// The names of the domain's checkpoints (each and the array free()d by the caller); the
/// count, or -1.
int ds_virt_checkpoint_names(void *domain, char ***names);
/// A checkpoint's XML (free() it); NULL on error (VIR_ERR_NO_DOMAIN_CHECKPOINT: none so named).
char *ds_virt_checkpoint_xml(void *domain, const char *name);
/// Deletes a checkpoint (its bitmaps too, unless metadata_only). Returns 0 or -1.
int ds_virt_checkpoint_delete(void *domain, const char *name, int metadata_only);
/// Freezes / thaws every guest filesystem through libvirt's guest agent: the count, or -1.
int ds_virt_fs_freeze(void *domain);
int ds_virt_fs_thaw(void *domain);
#define DS_VIR_ERR_NO_DOMAIN 42
#define DS_VIR_ERR_OPERATION_INVALID 55
#define DS_VIR_ERR_AGENT_UNRESPONSIVE 86
#define DS_VIR_ERR_NO_DOMAIN_CHECKPOINT 103
#define DS_VIR_ERR_NO_DOMAIN_BACKUP 104
#define DS_VIR_ERR_CHECKPOINT_INCONSISTENT 109

/// Starts `path` with `argv` (NULL-terminated) in a session of its own (setsid: a terminal's
/// ^C or hangup does not reach it), its stdin and stdout the given descriptors, its stderr
/// ours. Returns 0 and the child's pid, or an errno value.
int ds_spawn_detached(const char *path, char *const argv[], int stdin_fd, int stdout_fd, int *pid);
/// pipe2(fds, O_CLOEXEC).
int ds_pipe_cloexec(int fds[2]);

/// One extent as FIEMAP reports it (linux/fiemap.h).
typedef struct {
    uint64_t logical;
    uint64_t physical;
    uint64_t length;
    uint32_t flags;
} ds_extent;
/// The extents of fd's bytes [start, start + length), synced first (FIEMAP_FLAG_SYNC), up to
/// `capacity`; sets *count and *last (1 when the file's last extent was among them).
/// Returns 0, or -1 with errno (EOPNOTSUPP: the filesystem has no FIEMAP).
int ds_fiemap(int fd, uint64_t start, uint64_t length, ds_extent *out, uint32_t capacity, uint32_t *count, int *last);
/// FIEMAP extent flags disksnap reads.
#define DS_FIEMAP_LAST 0x1
#define DS_FIEMAP_UNKNOWN 0x2
#define DS_FIEMAP_DELALLOC 0x4
#define DS_FIEMAP_ENCODED 0x8
#define DS_FIEMAP_NOT_ALIGNED 0x100
#define DS_FIEMAP_DATA_INLINE 0x200
#define DS_FIEMAP_DATA_TAIL 0x400
#define DS_FIEMAP_UNWRITTEN 0x800
#define DS_FIEMAP_SHARED 0x2000

#endif
