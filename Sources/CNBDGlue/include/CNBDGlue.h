// The part of libnbd NBDClient uses, loaded at run time (dlopen) by the first NBD connection:
// linked, libnbd and the fourteen libraries it pulls in (gnutls, libxml2, ICU, ...) cost every
// command 2.2 ms at start, NBD or not. Only the headers are needed at build time (libnbd-dev).
#ifndef DISKSNAP_CNBDGLUE_H
#define DISKSNAP_CNBDGLUE_H

#include <stddef.h>
#include <stdint.h>

struct nbd_handle;

/// Loads libnbd once; 0, or -1 with the reason. Not thread-safe: the caller runs it once.
int ds_nbd_load(char *reason, size_t reason_size);

struct nbd_handle *ds_nbd_create(void);
void ds_nbd_close(struct nbd_handle *h);
int ds_nbd_shutdown(struct nbd_handle *h, uint32_t flags);
int ds_nbd_add_meta_context(struct nbd_handle *h, const char *name);
int ds_nbd_set_export_name(struct nbd_handle *h, const char *name);
int ds_nbd_connect_unix(struct nbd_handle *h, const char *path);
int64_t ds_nbd_get_size(struct nbd_handle *h);
int ds_nbd_can_meta_context(struct nbd_handle *h, const char *name);
/// `nbd_aio_pread` without a completion callback: `ds_nbd_aio_command_completed` retires it.
int64_t ds_nbd_aio_pread(struct nbd_handle *h, void *buf, size_t count, uint64_t offset);
int ds_nbd_aio_command_completed(struct nbd_handle *h, uint64_t cookie);
int ds_nbd_poll(struct nbd_handle *h, int timeout);

/// Called with each block-status reply: libnbd's extent callback, without its wrapper struct.
typedef int (*ds_nbd_extent_function)(void *user_data, const char *context, uint64_t offset,
                                      uint32_t *entries, size_t count, int *error);
int ds_nbd_block_status(struct nbd_handle *h, uint64_t count, uint64_t offset,
                        ds_nbd_extent_function function, void *user_data);

/// The calling thread's last libnbd error (or why libnbd is not loaded) and errno.
const char *ds_nbd_get_error(void);
int ds_nbd_get_errno(void);

#endif
