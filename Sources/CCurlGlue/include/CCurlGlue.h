// One HTTP exchange through libcurl's easy interface, without its variadic setopt (which
// Swift cannot call). A handle is kept per thread by the caller, so connections are reused.
#ifndef DISKSNAP_CCURLGLUE_H
#define DISKSNAP_CCURLGLUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    long status;
    /// Response headers as received ("Name: value\r\n" lines, the status line first), malloc'd.
    char *headers;
    size_t headers_length;
    /// The body, malloc'd (NULL when `sink` was given).
    unsigned char *body;
    size_t body_length;
    /// libcurl's result (0: CURLE_OK) and its message.
    int curl_code;
    char error[256];
} ds_http_response;

/// Called with each piece of the response body when given (streaming reads); returns 0 to go on.
typedef int (*ds_http_sink)(void *context, const unsigned char *bytes, size_t length);

/// A caller's buffer the body goes into (`ds_http_into` as the sink): no copy in between.
typedef struct {
    unsigned char *bytes;
    size_t capacity;
    size_t length;
    /// Set when more arrived than fits: the transfer was stopped (curl_code 23).
    int overflow;
} ds_http_target;

/// A sink that appends to a `ds_http_target`.
int ds_http_into(void *target, const unsigned char *bytes, size_t length);

/// Loads libcurl (dlopen) once; 0, or -1 with the reason. Call before anything below.
int ds_http_load(char *reason, size_t reason_size);
/// A new handle (NULL if libcurl is not loaded or out of memory).
void *ds_http_handle_new(void);
void ds_http_handle_free(void *handle);
/// Sends `method url` with the headers ("Name: value"), the body (may be NULL), waits at most
/// `timeout_ms` in all and `connect_timeout_ms` to connect. Returns curl_code.
int ds_http_perform(void *handle, const char *method, const char *url, const char *const *headers, size_t header_count,
                    const unsigned char *body, size_t body_length, int body_fd, long connect_timeout_ms, long timeout_ms,
                    ds_http_sink sink, void *sink_context, ds_http_response *response);
void ds_http_response_free(ds_http_response *response);

#endif
