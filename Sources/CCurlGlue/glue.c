#include "CCurlGlue.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// libcurl is loaded at run time, by the first S3 request: linked, it and its two dozen
// libraries made every command's start slower (the dynamic linker's symbol lookups grow
// with the number of loaded libraries), S3 or not. The prototypes are libcurl's own.
static struct {
    int loaded;
    __typeof__(&curl_global_init) global_init;
    __typeof__(&curl_easy_init) easy_init;
    __typeof__(&curl_easy_cleanup) easy_cleanup;
    __typeof__(&curl_easy_reset) easy_reset;
    __typeof__(&curl_easy_setopt) easy_setopt;
    __typeof__(&curl_easy_perform) easy_perform;
    __typeof__(&curl_easy_getinfo) easy_getinfo;
    __typeof__(&curl_easy_strerror) easy_strerror;
    __typeof__(&curl_slist_append) slist_append;
    __typeof__(&curl_slist_free_all) slist_free_all;
} lc;

int ds_http_load(char *reason, size_t reason_size) {
    if (lc.loaded) return 0;
    void *library = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!library) library = dlopen("libcurl-gnutls.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(reason, reason_size, "libcurl is not installed (%s): install libcurl4", dlerror());
        return -1;
    }
#define DS_LOAD(field, symbol)                                                                 \
    do {                                                                                       \
        *(void **)&lc.field = dlsym(library, #symbol);                                         \
        if (!lc.field) {                                                                       \
            snprintf(reason, reason_size, "libcurl.so.4 lacks %s: libcurl 7.73 or later is needed", #symbol); \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)
    DS_LOAD(global_init, curl_global_init);
    DS_LOAD(easy_init, curl_easy_init);
    DS_LOAD(easy_cleanup, curl_easy_cleanup);
    DS_LOAD(easy_reset, curl_easy_reset);
    DS_LOAD(easy_setopt, curl_easy_setopt);
    DS_LOAD(easy_perform, curl_easy_perform);
    DS_LOAD(easy_getinfo, curl_easy_getinfo);
    DS_LOAD(easy_strerror, curl_easy_strerror);
    DS_LOAD(slist_append, curl_slist_append);
    DS_LOAD(slist_free_all, curl_slist_free_all);
#undef DS_LOAD
    if (lc.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(reason, reason_size, "libcurl did not initialize");
        return -1;
    }
    lc.loaded = 1;
    return 0;
}

typedef struct {
    unsigned char *bytes;
    size_t length;
    size_t capacity;
} buffer;

typedef struct {
    buffer body;
    CURL *curl;
    ds_http_sink sink;
    void *sink_context;
    int sink_stopped;
} receiver;

typedef struct {
    const unsigned char *bytes;
    size_t length;
    size_t offset;
    int fd;  /* >= 0: the body is bytes [0, length) of this file, read with pread */
} sender;

static int append(buffer *b, const void *bytes, size_t length) {
    if (b->length + length + 1 > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 4096;
        while (capacity < b->length + length + 1) capacity *= 2;
        unsigned char *grown = realloc(b->bytes, capacity);
        if (!grown) return -1;
        b->bytes = grown;
        b->capacity = capacity;
    }
    memcpy(b->bytes + b->length, bytes, length);
    b->length += length;
    b->bytes[b->length] = 0;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t count, void *context) {
    receiver *r = context;
    size_t length = size * count;
    if (r->sink) {
        if (r->sink(r->sink_context, (const unsigned char *)data, length) != 0) {
            r->sink_stopped = 1;
            return 0;
        }
        return length;
    }
    if (r->body.capacity == 0) {
        /* The first piece: the headers are in, so the length is known (a ranged GET of a
           pack's blocks, MiBs): one allocation of that size instead of doublings past it. */
        curl_off_t expected = -1;
        if (lc.easy_getinfo(r->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &expected) == CURLE_OK && expected > 0 && expected < (1 << 30)) {
            unsigned char *bytes = malloc((size_t)expected + 1);
            if (!bytes) return 0;
            r->body.bytes = bytes;
            r->body.capacity = (size_t)expected + 1;
        }
    }
    return append(&r->body, data, length) == 0 ? length : 0;
}

static size_t on_header(char *data, size_t size, size_t count, void *context) {
    size_t length = size * count;
    return append(context, data, length) == 0 ? length : 0;
}

static size_t on_send(char *out, size_t size, size_t count, void *context) {
    sender *s = context;
    size_t room = size * count;
    size_t left = s->length - s->offset;
    size_t n = left < room ? left : room;
    if (n && s->fd >= 0) {
        ssize_t got = pread(s->fd, out, n, (off_t)s->offset);
        if (got <= 0) return CURL_READFUNC_ABORT;
        n = (size_t)got;
    } else if (n) {
        memcpy(out, s->bytes + s->offset, n);
    }
    s->offset += n;
    return n;
}

static int on_seek(void *context, curl_off_t offset, int origin) {
    sender *s = context;
    if (origin != SEEK_SET || offset < 0 || (size_t)offset > s->length) return CURL_SEEKFUNC_FAIL;
    s->offset = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

void *ds_http_handle_new(void) { return lc.loaded ? lc.easy_init() : NULL; }

void ds_http_handle_free(void *handle) {
    if (handle) lc.easy_cleanup(handle);
}

int ds_http_perform(void *handle, const char *method, const char *url, const char *const *headers, size_t header_count,
                    const unsigned char *body, size_t body_length, int body_fd, long connect_timeout_ms, long timeout_ms,
                    ds_http_sink sink, void *sink_context, ds_http_response *response) {
    CURL *curl = handle;
    memset(response, 0, sizeof(*response));
    lc.easy_reset(curl);
    struct curl_slist *list = NULL;
    for (size_t i = 0; i < header_count; i++) list = lc.slist_append(list, headers[i]);
    // No "Expect: 100-continue" round trip, and no header libcurl adds on its own.
    list = lc.slist_append(list, "Expect:");
    list = lc.slist_append(list, "Accept:");
    receiver r = {{0}, curl, sink, sink_context, 0};
    buffer head = {0};
    sender s = {body, body_length, 0, body_fd};
    lc.easy_setopt(curl, CURLOPT_URL, url);
    lc.easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    lc.easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    lc.easy_setopt(curl, CURLOPT_WRITEDATA, &r);
    lc.easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    lc.easy_setopt(curl, CURLOPT_HEADERDATA, &head);
    lc.easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    lc.easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
    lc.easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    lc.easy_setopt(curl, CURLOPT_ERRORBUFFER, response->error);
    lc.easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    if (strcmp(method, "GET") == 0) {
        lc.easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        lc.easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "PUT") == 0 || strcmp(method, "POST") == 0) {
        lc.easy_setopt(curl, CURLOPT_UPLOAD, 1L);
        lc.easy_setopt(curl, CURLOPT_READFUNCTION, on_send);
        lc.easy_setopt(curl, CURLOPT_READDATA, &s);
        lc.easy_setopt(curl, CURLOPT_SEEKFUNCTION, on_seek);
        lc.easy_setopt(curl, CURLOPT_SEEKDATA, &s);
        lc.easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)body_length);
        if (strcmp(method, "POST") == 0) lc.easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "POST");
    } else {
        lc.easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    }
    CURLcode code = lc.easy_perform(curl);
    lc.slist_free_all(list);
    long status = 0;
    lc.easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    response->status = status;
    response->headers = (char *)head.bytes;
    response->headers_length = head.length;
    response->body = r.body.bytes;
    response->body_length = r.body.length;
    response->curl_code = (int)code;
    if (code != CURLE_OK && response->error[0] == 0) {
        strncpy(response->error, lc.easy_strerror(code), sizeof(response->error) - 1);
    }
    return (int)code;
}

void ds_http_response_free(ds_http_response *response) {
    free(response->headers);
    free(response->body);
    response->headers = NULL;
    response->body = NULL;
}

int ds_http_into(void *context, const unsigned char *bytes, size_t length) {
    ds_http_target *t = context;
    if (length > t->capacity - t->length) {
        t->overflow = 1;
        return 1;
    }
    memcpy(t->bytes + t->length, bytes, length);
    t->length += length;
    return 0;
}
