/* canopy/http.h: the HTTP server every Canopy service runs (libmicrohttpd).
 *
 * Built-in endpoints:
 *   GET /metrics   Prometheus text exposition of a metrics registry
 *   GET /healthz   200 "ok" while the process serves requests
 *   GET /readyz    200 "ready", or 503 "not ready: <reason>" from the readiness callback
 * plus handlers registered by method and path prefix (the longest matching
 * prefix wins; a path that matches with another method gets 405).
 *
 *     canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;   // 127.0.0.1, port 0 = pick a free one
 *     canopy_http *srv;
 *     canopy_http_new(&hc, &srv);
 *     canopy_http_set_ready(srv, my_ready, st);
 *     canopy_http_handle(srv, "POST", "/admin/approve", on_approve, st);
 *     canopy_http_start(srv);                            // serves from its own threads
 *     printf("listening on %d\n", canopy_http_port(srv));
 *     ...
 *     canopy_http_free(srv);                             // stops and waits for the threads
 *
 * Handlers run on the server's threads (conf.threads of them), concurrently:
 * they must be thread-safe. Request bodies are capped (conf.max_body, 413
 * beyond), as are connections (conf.max_conns) and handlers (64).
 * TLS: set tls_cert_file and tls_key_file (PEM); served through MHD's TLS.
 */
#ifndef CANOPY_HTTP_H
#define CANOPY_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "canopy/err.h"
#include "canopy/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_http canopy_http;

typedef struct canopy_http_conf {
        const char *bind;          /* address to bind: "127.0.0.1" (default), "0.0.0.0", "::" */
        int port;                  /* 0 = pick a free port (see canopy_http_port) */
        const char *tls_cert_file; /* PEM certificate (chain); NULL = plain HTTP */
        const char *tls_key_file;  /* PEM private key; required with tls_cert_file */
        size_t max_body;           /* request body cap in bytes; 0 = 1 MiB */
        unsigned threads;          /* worker threads; 0 = 2 */
        unsigned max_conns;        /* concurrent connections; 0 = 64 */
        unsigned timeout_s;        /* idle connection timeout; 0 = 30 s */
        canopy_metrics *metrics;   /* registry for /metrics; NULL = canopy_metrics_default() */
} canopy_http_conf;

#define CANOPY_HTTP_CONF_DEFAULT {"127.0.0.1", 0, NULL, NULL, 0, 0, 0, 0, NULL}

/* A request, borrowed by the handler for the duration of the call. */
typedef struct canopy_http_req {
        const char *method; /* "GET", "POST", ... */
        const char *path;   /* decoded path without the query, e.g. "/admin/approve" */
        const char *query;  /* query string without '?', re-encoded; "" when none */
        const char *body;   /* request body, NUL-terminated for convenience; "" when none */
        size_t body_len;
        void *impl_;        /* private */
} canopy_http_req;

/* Value of a request header (case-insensitive name), e.g. "Authorization";
 * NULL when absent. Borrowed for the duration of the handler call. */
const char *canopy_http_req_header(const canopy_http_req *req, const char *name);
/* Value of a query argument (decoded), NULL when absent. Borrowed likewise. */
const char *canopy_http_req_arg(const canopy_http_req *req, const char *name);

/* What a handler fills in. status defaults to 200, content_type to
 * "text/plain; charset=utf-8". body is owned by the server once set (malloc'ed;
 * freed after sending); canopy_http_resp_printf/_set build it. */
typedef struct canopy_http_resp {
        int status;
        const char *content_type; /* static string or NULL */
        char *body;               /* (owned by the server) */
        size_t body_len;
        char *extra_header_name;  /* optional one extra header, both (owned) or both NULL */
        char *extra_header_value;
} canopy_http_resp;

/* Set the body to a copy of (data, len). Returns CANOPY_ERR_NOMEM on failure. */
canopy_err canopy_http_resp_set(canopy_http_resp *resp, int status, const char *content_type, const char *data,
                                size_t len);
/* Set the body from a printf format. */
canopy_err canopy_http_resp_printf(canopy_http_resp *resp, int status, const char *content_type, const char *fmt,
                                   ...) __attribute__((format(printf, 4, 5)));
/* Add one extra response header (copied), e.g. "Retry-After", "5". */
canopy_err canopy_http_resp_header(canopy_http_resp *resp, const char *name, const char *value);

/* A request handler. opaque is what was given at registration (borrowed). */
typedef void (*canopy_http_handler)(void *opaque, const canopy_http_req *req, canopy_http_resp *resp);

/* Readiness: return true when ready; else write a short reason into why. */
typedef bool (*canopy_http_ready_fn)(void *opaque, char *why, size_t whylen);

/* Create a server (not yet listening). conf is copied (strings too).
 * On success *ret is owned by the caller (canopy_http_free). */
canopy_err canopy_http_new(const canopy_http_conf *conf, canopy_http **ret);

/* Register a handler for method ("GET", ...; NULL or "*" = any) and a path
 * prefix ("/admin/" matches "/admin/x"; "/admin" matches "/admin" and
 * "/admin/..." but not "/administrator"). prefix is copied. Allowed before and
 * after start. Returns CANOPY_ERR_LIMIT beyond 64 handlers. Built-in paths
 * (/metrics, /healthz, /readyz) can be overridden by registering them. */
canopy_err canopy_http_handle(canopy_http *srv, const char *method, const char *prefix, canopy_http_handler cb,
                              void *opaque);

/* Set the readiness callback of /readyz (NULL = always ready). */
void canopy_http_set_ready(canopy_http *srv, canopy_http_ready_fn fn, void *opaque);

/* Bind, listen and start serving. Returns CANOPY_ERR_IO with a logged reason
 * when the address cannot be bound, CANOPY_ERR_CONFIG for bad TLS files or an
 * unparsable bind address. */
canopy_err canopy_http_start(canopy_http *srv);

/* The port actually bound (after start), e.g. the one picked for port 0; -1 before. */
int canopy_http_port(const canopy_http *srv);

/* Stop serving (waits for running handlers) and free. NULL allowed. */
void canopy_http_free(canopy_http *srv);

#ifdef __cplusplus
}
#endif
#endif
