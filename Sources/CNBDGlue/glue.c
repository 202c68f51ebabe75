#include "CNBDGlue.h"

#include <dlfcn.h>
#include <errno.h>
#include <libnbd.h>
#include <stdio.h>

// The prototypes are libnbd's own (its header), the addresses dlsym's.
static struct {
    int loaded;
    __typeof__(&nbd_create) create;
    __typeof__(&nbd_close) close;
    __typeof__(&nbd_shutdown) shutdown;
    __typeof__(&nbd_add_meta_context) add_meta_context;
    __typeof__(&nbd_set_export_name) set_export_name;
    __typeof__(&nbd_connect_unix) connect_unix;
    __typeof__(&nbd_get_size) get_size;
    __typeof__(&nbd_can_meta_context) can_meta_context;
    __typeof__(&nbd_aio_pread) aio_pread;
    __typeof__(&nbd_aio_command_completed) aio_command_completed;
    __typeof__(&nbd_poll) poll;
    __typeof__(&nbd_block_status) block_status;
    __typeof__(&nbd_get_error) get_error;
    __typeof__(&nbd_get_errno) get_errno;
} ln;

int ds_nbd_load(char *reason, size_t reason_size) {
    if (ln.loaded) return 0;
    void *library = dlopen("libnbd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(reason, reason_size, "libnbd is not installed (%s): install libnbd0", dlerror());
        return -1;
    }
#define DS_LOAD(field, symbol)                                                                 \
    do {                                                                                       \
        *(void **)&ln.field = dlsym(library, #symbol);                                         \
        if (!ln.field) {                                                                       \
            snprintf(reason, reason_size, "libnbd.so.0 lacks %s: libnbd 1.14 or later is needed", #symbol); \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)
    DS_LOAD(create, nbd_create);
    DS_LOAD(close, nbd_close);
    DS_LOAD(shutdown, nbd_shutdown);
    DS_LOAD(add_meta_context, nbd_add_meta_context);
    DS_LOAD(set_export_name, nbd_set_export_name);
    DS_LOAD(connect_unix, nbd_connect_unix);
    DS_LOAD(get_size, nbd_get_size);
    DS_LOAD(can_meta_context, nbd_can_meta_context);
    DS_LOAD(aio_pread, nbd_aio_pread);
    DS_LOAD(aio_command_completed, nbd_aio_command_completed);
    DS_LOAD(poll, nbd_poll);
    DS_LOAD(block_status, nbd_block_status);
    DS_LOAD(get_error, nbd_get_error);
    DS_LOAD(get_errno, nbd_get_errno);
#undef DS_LOAD
    ln.loaded = 1;
    return 0;
}

struct nbd_handle *ds_nbd_create(void) { return ln.loaded ? ln.create() : NULL; }
void ds_nbd_close(struct nbd_handle *h) { ln.close(h); }
int ds_nbd_shutdown(struct nbd_handle *h, uint32_t flags) { return ln.shutdown(h, flags); }
int ds_nbd_add_meta_context(struct nbd_handle *h, const char *name) { return ln.add_meta_context(h, name); }
int ds_nbd_set_export_name(struct nbd_handle *h, const char *name) { return ln.set_export_name(h, name); }
int ds_nbd_connect_unix(struct nbd_handle *h, const char *path) { return ln.connect_unix(h, path); }
int64_t ds_nbd_get_size(struct nbd_handle *h) { return ln.get_size(h); }
int ds_nbd_can_meta_context(struct nbd_handle *h, const char *name) { return ln.can_meta_context(h, name); }

int64_t ds_nbd_aio_pread(struct nbd_handle *h, void *buf, size_t count, uint64_t offset) {
    return ln.aio_pread(h, buf, count, offset, (nbd_completion_callback){ .callback = NULL, .user_data = NULL, .free = NULL }, 0);
}

int ds_nbd_aio_command_completed(struct nbd_handle *h, uint64_t cookie) { return ln.aio_command_completed(h, cookie); }
int ds_nbd_poll(struct nbd_handle *h, int timeout) { return ln.poll(h, timeout); }

int ds_nbd_block_status(struct nbd_handle *h, uint64_t count, uint64_t offset,
                        ds_nbd_extent_function function, void *user_data) {
    return ln.block_status(h, count, offset,
                           (nbd_extent_callback){ .callback = function, .user_data = user_data, .free = NULL }, 0);
}

const char *ds_nbd_get_error(void) { return ln.loaded ? ln.get_error() : "libnbd is not loaded"; }
int ds_nbd_get_errno(void) { return ln.loaded ? ln.get_errno() : ENOSYS; }
