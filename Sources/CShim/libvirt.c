// libvirt through dlopen: `create --domain` is the only user, and a host without libvirt
// must still run everything else. The prototypes come from libvirt's own headers when the
// build has them (libvirt-dev), so a mismatch is a compile error, not a crash.
#include "CShim.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if __has_include(<libvirt/libvirt.h>)
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

static struct {
    int loaded;
    __typeof__(&virConnectOpen) connect_open;
    __typeof__(&virConnectClose) connect_close;
    __typeof__(&virDomainLookupByName) lookup;
    __typeof__(&virDomainFree) domain_free;
    __typeof__(&virDomainIsActive) is_active;
    __typeof__(&virDomainGetXMLDesc) domain_xml;
    __typeof__(&virDomainGetUUIDString) uuid;
    __typeof__(&virDomainBackupBegin) backup_begin;
    __typeof__(&virDomainBackupGetXMLDesc) backup_xml;
    __typeof__(&virDomainAbortJob) abort_job;
    __typeof__(&virDomainListAllCheckpoints) list_checkpoints;
    __typeof__(&virDomainCheckpointGetName) checkpoint_name;
    __typeof__(&virDomainCheckpointLookupByName) checkpoint_lookup;
    __typeof__(&virDomainCheckpointGetXMLDesc) checkpoint_xml;
    __typeof__(&virDomainCheckpointDelete) checkpoint_delete;
    __typeof__(&virDomainCheckpointFree) checkpoint_free;
    __typeof__(&virDomainFSFreeze) fs_freeze;
    __typeof__(&virDomainFSThaw) fs_thaw;
    __typeof__(&virGetLastError) last_error;
    __typeof__(&virSetErrorFunc) set_error_func;
    __typeof__(&virInitialize) initialize;
} lv;

static void ds_virt_quiet(void *user, virErrorPtr error) {
    (void)user;
    (void)error;
}

int ds_virt_load(char *reason, size_t reason_size) {
    if (lv.loaded) return 0;
    void *library = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(reason, reason_size, "libvirt is not installed (%s): install libvirt0", dlerror());
        return -1;
    }
#define DS_LOAD(field, symbol)                                                                  \
    do {                                                                                        \
        *(void **)&lv.field = dlsym(library, #symbol);                                          \
        if (!lv.field) {                                                                        \
            snprintf(reason, reason_size, "libvirt.so.0 lacks %s: libvirt 6.0 or later is needed", #symbol); \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)
    DS_LOAD(connect_open, virConnectOpen);
    DS_LOAD(connect_close, virConnectClose);
    DS_LOAD(lookup, virDomainLookupByName);
    DS_LOAD(domain_free, virDomainFree);
    DS_LOAD(is_active, virDomainIsActive);
    DS_LOAD(domain_xml, virDomainGetXMLDesc);
    DS_LOAD(uuid, virDomainGetUUIDString);
    DS_LOAD(backup_begin, virDomainBackupBegin);
    DS_LOAD(backup_xml, virDomainBackupGetXMLDesc);
    DS_LOAD(abort_job, virDomainAbortJob);
    DS_LOAD(list_checkpoints, virDomainListAllCheckpoints);
    DS_LOAD(checkpoint_name, virDomainCheckpointGetName);
    DS_LOAD(checkpoint_lookup, virDomainCheckpointLookupByName);
    DS_LOAD(checkpoint_xml, virDomainCheckpointGetXMLDesc);
    DS_LOAD(checkpoint_delete, virDomainCheckpointDelete);
    DS_LOAD(checkpoint_free, virDomainCheckpointFree);
    DS_LOAD(fs_freeze, virDomainFSFreeze);
    DS_LOAD(fs_thaw, virDomainFSThaw);
    DS_LOAD(last_error, virGetLastError);
    DS_LOAD(set_error_func, virSetErrorFunc);
    DS_LOAD(initialize, virInitialize);
#undef DS_LOAD
    if (lv.initialize() < 0) {
        snprintf(reason, reason_size, "libvirt did not initialize");
        return -1;
    }
    lv.set_error_func(NULL, ds_virt_quiet);
    lv.loaded = 1;
    return 0;
}

int ds_virt_last_error(char *message, size_t message_size) {
    virErrorPtr error = lv.loaded ? lv.last_error() : NULL;
    if (!error) {
        snprintf(message, message_size, "libvirt reported no error");
        return 0;
    }
    snprintf(message, message_size, "%s", error->message ? error->message : "libvirt gave no message");
    return error->code;
}

void *ds_virt_connect(const char *uri) { return lv.connect_open(uri); }
void ds_virt_disconnect(void *connection) { lv.connect_close(connection); }
void *ds_virt_domain(void *connection, const char *name) { return lv.lookup(connection, name); }
void ds_virt_domain_free(void *domain) { lv.domain_free(domain); }
int ds_virt_domain_active(void *domain) { return lv.is_active(domain); }
char *ds_virt_domain_xml(void *domain) { return lv.domain_xml(domain, 0); }

int ds_virt_domain_uuid(void *domain, char *uuid) { return lv.uuid(domain, uuid); }

int ds_virt_backup_begin(void *domain, const char *backup_xml, const char *checkpoint_xml) {
    return lv.backup_begin(domain, backup_xml, checkpoint_xml, 0);
}

char *ds_virt_backup_xml(void *domain) { return lv.backup_xml(domain, 0); }
int ds_virt_abort_job(void *domain) { return lv.abort_job(domain); }

int ds_virt_checkpoint_names(void *domain, char ***names) {
    virDomainCheckpointPtr *checkpoints = NULL;
    int count = lv.list_checkpoints(domain, &checkpoints, 0);
    if (count < 0) return -1;
    char **out = calloc((size_t)count + 1, sizeof(char *));
    for (int i = 0; i < count; i++) {
        const char *name = lv.checkpoint_name(checkpoints[i]);
        if (out) out[i] = strdup(name ? name : "");
        lv.checkpoint_free(checkpoints[i]);
    }
    free(checkpoints);
    if (!out) return -1;
    *names = out;
    return count;
}

char *ds_virt_checkpoint_xml(void *domain, const char *name) {
    virDomainCheckpointPtr checkpoint = lv.checkpoint_lookup(domain, name, 0);
    if (!checkpoint) return NULL;
    char *xml = lv.checkpoint_xml(checkpoint, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
    lv.checkpoint_free(checkpoint);
    return xml;
}

int ds_virt_checkpoint_delete(void *domain, const char *name, int metadata_only) {
    virDomainCheckpointPtr checkpoint = lv.checkpoint_lookup(domain, name, 0);
    if (!checkpoint) return -1;
    int rc = lv.checkpoint_delete(checkpoint, metadata_only ? VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY : 0);
    lv.checkpoint_free(checkpoint);
    return rc;
}

int ds_virt_fs_freeze(void *domain) { return lv.fs_freeze(domain, NULL, 0, 0); }
int ds_virt_fs_thaw(void *domain) { return lv.fs_thaw(domain, NULL, 0, 0); }

#else  // built without libvirt's headers: --domain reports it

int ds_virt_load(char *reason, size_t reason_size) {
    snprintf(reason, reason_size, "this disksnap was built without libvirt's headers (libvirt-dev)");
    return -1;
}
int ds_virt_last_error(char *message, size_t message_size) {
    snprintf(message, message_size, "no libvirt");
    return 0;
}
void *ds_virt_connect(const char *uri) { (void)uri; return NULL; }
void ds_virt_disconnect(void *connection) { (void)connection; }
void *ds_virt_domain(void *connection, const char *name) { (void)connection; (void)name; return NULL; }
void ds_virt_domain_free(void *domain) { (void)domain; }
int ds_virt_domain_active(void *domain) { (void)domain; return -1; }
char *ds_virt_domain_xml(void *domain) { (void)domain; return NULL; }
int ds_virt_domain_uuid(void *domain, char *uuid) { (void)domain; (void)uuid; return -1; }
int ds_virt_backup_begin(void *domain, const char *backup_xml, const char *checkpoint_xml) { (void)domain; (void)backup_xml; (void)checkpoint_xml; return -1; }
char *ds_virt_backup_xml(void *domain) { (void)domain; return NULL; }
int ds_virt_abort_job(void *domain) { (void)domain; return -1; }
int ds_virt_checkpoint_names(void *domain, char ***names) { (void)domain; (void)names; return -1; }
char *ds_virt_checkpoint_xml(void *domain, const char *name) { (void)domain; (void)name; return NULL; }
int ds_virt_checkpoint_delete(void *domain, const char *name, int metadata_only) { (void)domain; (void)name; (void)metadata_only; return -1; }
int ds_virt_fs_freeze(void *domain) { (void)domain; return -1; }
int ds_virt_fs_thaw(void *domain) { (void)domain; return -1; }

#endif
