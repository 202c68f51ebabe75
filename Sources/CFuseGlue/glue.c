#define FUSE_USE_VERSION 31
#include "CFuseGlue.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ds_fs {
    const struct ds_fuse_file *files;
    int count;
    int64_t mtime;
    ds_fuse_read_fn read;
    void *context;
};

static struct ds_fs *fs_of_request(void) { return fuse_get_context()->private_data; }

/// The index of the file at `path` ("/name"), or -1.
static int file_index(struct ds_fs *fs, const char *path) {
    if (path[0] != '/') return -1;
    for (int i = 0; i < fs->count; i++)
        if (strcmp(path + 1, fs->files[i].name) == 0) return i;
    return -1;
}

static void *ds_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->kernel_cache = 1;  // the bytes never change: keep cached pages across opens
    cfg->entry_timeout = 3600;
    cfg->attr_timeout = 3600;
    cfg->negative_timeout = 3600;
    return fuse_get_context()->private_data;
}

static int ds_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    struct ds_fs *fs = fs_of_request();
    memset(st, 0, sizeof *st);
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_mtime = st->st_ctime = st->st_atime = (time_t)fs->mtime;
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        return 0;
    }
    int i = file_index(fs, path);
    if (i < 0) return -ENOENT;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = (off_t)fs->files[i].size;
    st->st_blksize = 65536;
    st->st_blocks = (blkcnt_t)((fs->files[i].size + 511) / 512);
    return 0;
}

static int ds_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)offset; (void)fi; (void)flags;
    if (strcmp(path, "/") != 0) return -ENOTDIR;
    struct ds_fs *fs = fs_of_request();
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    for (int i = 0; i < fs->count; i++) fill(buf, fs->files[i].name, NULL, 0, 0);
    return 0;
}

static int ds_open(const char *path, struct fuse_file_info *fi) {
    if (file_index(fs_of_request(), path) < 0) return -ENOENT;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EROFS;
    fi->keep_cache = 1;
    return 0;
}

static int ds_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    (void)fi;
    struct ds_fs *fs = fs_of_request();
    int i = file_index(fs, path);
    if (i < 0) return -ENOENT;
    if (offset < 0) return -EINVAL;
    uint64_t end = fs->files[i].size;
    if ((uint64_t)offset >= end) return 0;
    if (size > end - (uint64_t)offset) size = (size_t)(end - (uint64_t)offset);
    return fs->read(fs->context, i, buf, size, (uint64_t)offset);
}

static const struct fuse_operations ds_operations = {
    .init = ds_init,
    .getattr = ds_getattr,
    .readdir = ds_readdir,
    .open = ds_open,
    .read = ds_read,
};

int ds_fuse_serve(const char *mountpoint, const char *fsname, const struct ds_fuse_file *files, int count,
                  int64_t mtime, ds_fuse_read_fn read, ds_fuse_ready_fn ready, void *context) {
    struct ds_fs fs = { files, count, mtime, read, context };
    char options[512];
    snprintf(options, sizeof options, "ro,default_permissions,fsname=%s,subtype=disksnap", fsname);
    char *argv[] = { "disksnap", "-o", options, NULL };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    struct fuse *f = fuse_new(&args, &ds_operations, sizeof ds_operations, &fs);
    if (f == NULL) return -1;
    int rc = -1;
    if (fuse_mount(f, mountpoint) == 0) {
        struct fuse_session *session = fuse_get_session(f);
        if (fuse_set_signal_handlers(session) == 0) {
            ready(context);
            // 0 when unmounted, the signal's number when interrupted: both end cleanly.
            rc = fuse_loop_mt(f, 0) >= 0 ? 0 : -1;
            fuse_remove_signal_handlers(session);
        }
        fuse_unmount(f);
    }
    fuse_destroy(f);
    fuse_opt_free_args(&args);
    return rc;
}
