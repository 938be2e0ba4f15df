/* http.c: the service HTTP server on libmicrohttpd.
 *
 * We open the listening socket ourselves (so that port 0 gives the real port
 * through getsockname and a bind error has its errno) and hand it to MHD,
 * which serves it from a pool of internal threads. Bodies are collected per
 * request up to max_body; the handler runs once the whole body is in.
 */
#include "canopy/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "canopy/log.h"

#define HTTP_HANDLERS_MAX 64
#define HTTP_TLS_FILE_MAX (1u << 20)
#define HTTP_QUERY_MAX 8192
#define HTTP_DEFAULT_BODY (1u << 20)

#if MHD_VERSION < 0x00097002
typedef int MHD_Result_;
#else
typedef enum MHD_Result MHD_Result_;
#endif

struct handler {
        char *method; /* NULL = any */
        char *prefix;
        canopy_http_handler cb;
        void *opaque;
};

struct canopy_http {
        canopy_http_conf conf; /* strings below are our copies */
        char *bind;
        char *cert_pem;
        char *key_pem;
        size_t key_len;
        struct MHD_Daemon *daemon;
        int port;
        pthread_mutex_t lock; /* handlers, ready */
        struct handler handlers[HTTP_HANDLERS_MAX];
        size_t nhandlers;
        canopy_http_ready_fn ready;
        void *ready_opaque;
        canopy_metric *requests; /* canopy_http_requests_total{code} */
};

struct reqstate {
        char *body;
        size_t len, cap;
        bool too_big;
        bool responded;
};

/* ---- responses ---------------------------------------------------------- */

canopy_err canopy_http_resp_set(canopy_http_resp *resp, int status, const char *content_type, const char *data,
                                size_t len) {
        char *b = malloc(len + 1);
        if (!b)
                return CANOPY_ERR_NOMEM;
        if (len)
                memcpy(b, data, len);
        b[len] = 0;
        free(resp->body);
        resp->body = b;
        resp->body_len = len;
        resp->status = status;
        if (content_type)
                resp->content_type = content_type;
        return CANOPY_OK;
}

canopy_err canopy_http_resp_printf(canopy_http_resp *resp, int status, const char *content_type, const char *fmt,
                                   ...) {
        va_list ap;
        va_start(ap, fmt);
        char *b = NULL;
        int n = vasprintf(&b, fmt, ap);
        va_end(ap);
        if (n < 0)
                return CANOPY_ERR_NOMEM;
        free(resp->body);
        resp->body = b;
        resp->body_len = (size_t)n;
        resp->status = status;
        if (content_type)
                resp->content_type = content_type;
        return CANOPY_OK;
}

canopy_err canopy_http_resp_header(canopy_http_resp *resp, const char *name, const char *value) {
        char *n = strdup(name), *v = strdup(value);
        if (!n || !v) {
                free(n);
                free(v);
                return CANOPY_ERR_NOMEM;
        }
        free(resp->extra_header_name);
        free(resp->extra_header_value);
        resp->extra_header_name = n;
        resp->extra_header_value = v;
        return CANOPY_OK;
}

static void resp_clear(canopy_http_resp *r) {
        free(r->body);
        free(r->extra_header_name);
        free(r->extra_header_value);
        memset(r, 0, sizeof(*r));
}

/* Queue resp on the connection; the body's ownership passes to MHD. */
static MHD_Result_ send_resp(canopy_http *srv, struct MHD_Connection *conn, canopy_http_resp *r) {
        if (r->status < 100 || r->status > 599)
                r->status = 500;
        struct MHD_Response *mr;
        if (r->body && r->body_len) {
                mr = MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
                if (mr)
                        r->body = NULL;
        } else {
                mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        }
        if (!mr) {
                resp_clear(r);
                return MHD_NO;
        }
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                                r->content_type ? r->content_type : "text/plain; charset=utf-8");
        if (r->extra_header_name && r->extra_header_value)
                MHD_add_response_header(mr, r->extra_header_name, r->extra_header_value);
        MHD_Result_ ret = MHD_queue_response(conn, (unsigned)r->status, mr);
        MHD_destroy_response(mr);
        char code[8];
        snprintf(code, sizeof(code), "%d", r->status);
        canopy_metrics_inc(srv->requests, CANOPY_LABELS(code));
        resp_clear(r);
        return ret;
}

static MHD_Result_ send_text(canopy_http *srv, struct MHD_Connection *conn, int status, const char *text) {
        canopy_http_resp r = {0};
        if (canopy_http_resp_set(&r, status, NULL, text, strlen(text)))
                return MHD_NO;
        return send_resp(srv, conn, &r);
}

/* ---- requests ----------------------------------------------------------- */

const char *canopy_http_req_header(const canopy_http_req *req, const char *name) {
        if (!req || !req->impl_ || !name)
                return NULL;
        return MHD_lookup_connection_value(req->impl_, MHD_HEADER_KIND, name);
}

const char *canopy_http_req_arg(const canopy_http_req *req, const char *name) {
        if (!req || !req->impl_ || !name)
                return NULL;
        return MHD_lookup_connection_value(req->impl_, MHD_GET_ARGUMENT_KIND, name);
}

struct qbuf {
        char buf[HTTP_QUERY_MAX];
        size_t len;
};

static void qappend_enc(struct qbuf *q, const char *s) {
        static const char hex[] = "0123456789ABCDEF";
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (q->len + 4 >= sizeof(q->buf))
                        return;
                if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                    *p == '-' || *p == '_' || *p == '.' || *p == '~') {
                        q->buf[q->len++] = (char)*p;
                } else {
                        q->buf[q->len++] = '%';
                        q->buf[q->len++] = hex[*p >> 4];
                        q->buf[q->len++] = hex[*p & 15];
                }
        }
}

static MHD_Result_ query_iter(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
        (void)kind;
        struct qbuf *q = cls;
        if (q->len && q->len + 1 < sizeof(q->buf))
                q->buf[q->len++] = '&';
        qappend_enc(q, key);
        if (value) {
                if (q->len + 1 < sizeof(q->buf))
                        q->buf[q->len++] = '=';
                qappend_enc(q, value);
        }
        q->buf[q->len] = 0;
        return MHD_YES;
}

/* Whether prefix p matches path: "/a" matches "/a" and "/a/..."; "/a/" matches "/a/...". */
static bool prefix_match(const char *p, const char *path) {
        size_t pl = strlen(p);
        if (strncmp(path, p, pl))
                return false;
        return pl == 0 || p[pl - 1] == '/' || path[pl] == 0 || path[pl] == '/';
}

static MHD_Result_ builtin(canopy_http *srv, struct MHD_Connection *conn, const char *method, const char *url,
                           bool *handled) {
        bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        *handled = true;
        if (!strcmp(url, "/metrics") || !strcmp(url, "/healthz") || !strcmp(url, "/readyz")) {
                if (!get) {
                        canopy_http_resp r = {0};
                        if (canopy_http_resp_set(&r, 405, NULL, "method not allowed\n", 19) ||
                            canopy_http_resp_header(&r, "Allow", "GET, HEAD")) {
                                resp_clear(&r);
                                return MHD_NO;
                        }
                        return send_resp(srv, conn, &r);
                }
        }
        if (!strcmp(url, "/healthz"))
                return send_text(srv, conn, 200, "ok\n");
        if (!strcmp(url, "/readyz")) {
                pthread_mutex_lock(&srv->lock);
                canopy_http_ready_fn fn = srv->ready;
                void *op = srv->ready_opaque;
                pthread_mutex_unlock(&srv->lock);
                char why[256] = "";
                if (!fn || fn(op, why, sizeof(why)))
                        return send_text(srv, conn, 200, "ready\n");
                canopy_http_resp r = {0};
                if (canopy_http_resp_printf(&r, 503, NULL, "not ready: %s\n", why[0] ? why : "(no reason given)"))
                        return MHD_NO;
                return send_resp(srv, conn, &r);
        }
        if (!strcmp(url, "/metrics")) {
                canopy_http_resp r = {0};
                if (canopy_metrics_render_buf(srv->conf.metrics, &r.body, &r.body_len))
                        return send_text(srv, conn, 500, "metrics unavailable\n");
                r.status = 200;
                r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                return send_resp(srv, conn, &r);
        }
        *handled = false;
        return MHD_YES;
}

static MHD_Result_ dispatch(canopy_http *srv, struct MHD_Connection *conn, const char *url, const char *method,
                            struct reqstate *st) {
        struct handler h = {0};
        const char *allow = NULL;
        size_t best = 0, best405 = 0;
        bool found = false;
        pthread_mutex_lock(&srv->lock);
        for (size_t i = 0; i < srv->nhandlers; i++) {
                const struct handler *c = &srv->handlers[i];
                size_t pl = strlen(c->prefix);
                if (!prefix_match(c->prefix, url))
                        continue;
                bool mok = !c->method || !strcmp(c->method, method) ||
                           (!strcmp(method, "HEAD") && !strcmp(c->method, "GET"));
                if (mok && (!found || pl > best)) {
                        h = *c;
                        best = pl;
                        found = true;
                } else if (!mok && pl >= best405) {
                        best405 = pl;
                        allow = c->method;
                }
        }
        char allowbuf[32] = "";
        if (allow)
                snprintf(allowbuf, sizeof(allowbuf), "%s", allow);
        pthread_mutex_unlock(&srv->lock);

        if (!found || (allowbuf[0] && best405 > best)) {
                bool handled;
                MHD_Result_ ret = builtin(srv, conn, method, url, &handled);
                if (handled)
                        return ret;
                if (allowbuf[0]) {
                        canopy_http_resp r = {0};
                        if (canopy_http_resp_set(&r, 405, NULL, "method not allowed\n", 19) ||
                            canopy_http_resp_header(&r, "Allow", allowbuf)) {
                                resp_clear(&r);
                                return MHD_NO;
                        }
                        return send_resp(srv, conn, &r);
                }
                return send_text(srv, conn, 404, "not found\n");
        }

        struct qbuf *q = calloc(1, sizeof(*q));
        if (!q)
                return MHD_NO;
        MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_iter, q);
        canopy_http_req req = {
                .method = method,
                .path = url,
                .query = q->buf,
                .body = st->body ? st->body : "",
                .body_len = st->len,
                .impl_ = conn,
        };
        canopy_http_resp r = {.status = 200};
        h.cb(h.opaque, &req, &r);
        free(q);
        return send_resp(srv, conn, &r);
}

static MHD_Result_ on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
        (void)version;
        canopy_http *srv = cls;
        struct reqstate *st = *con_cls;
        if (!st) {
                st = calloc(1, sizeof(*st));
                if (!st)
                        return MHD_NO;
                *con_cls = st;
                /* Refuse a declared oversized body before reading any of it. */
                const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
                if (cl && strtoull(cl, NULL, 10) > srv->conf.max_body) {
                        st->responded = true;
                        return send_text(srv, conn, 413, "request body too large\n");
                }
                return MHD_YES;
        }
        if (st->responded) {
                *upload_data_size = 0;
                return MHD_YES;
        }
        if (*upload_data_size) {
                size_t n = *upload_data_size;
                *upload_data_size = 0;
                if (st->too_big)
                        return MHD_YES;
                if (st->len + n > srv->conf.max_body) {
                        /* Chunked body over the cap: drop what we have, read
                         * the rest to the end and answer 413 then. */
                        st->too_big = true;
                        free(st->body);
                        st->body = NULL;
                        st->len = st->cap = 0;
                        return MHD_YES;
                }
                if (st->len + n + 1 > st->cap) {
                        size_t ncap = st->cap ? st->cap : 4096;
                        while (ncap < st->len + n + 1)
                                ncap *= 2;
                        char *nb = realloc(st->body, ncap);
                        if (!nb)
                                return MHD_NO;
                        st->body = nb;
                        st->cap = ncap;
                }
                memcpy(st->body + st->len, upload_data, n);
                st->len += n;
                st->body[st->len] = 0;
                return MHD_YES;
        }
        st->responded = true;
        if (st->too_big)
                return send_text(srv, conn, 413, "request body too large\n");
        return dispatch(srv, conn, url, method, st);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
        (void)cls;
        (void)conn;
        (void)toe;
        struct reqstate *st = *con_cls;
        if (st) {
                free(st->body);
                free(st);
                *con_cls = NULL;
        }
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
        (void)cls;
        char msg[512];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        size_t l = strlen(msg);
        while (l && (msg[l - 1] == '\n' || msg[l - 1] == '\r'))
                msg[--l] = 0;
        canopy_log(CANOPY_LOG_WARN, "http", NULL, "libmicrohttpd: %s", msg);
}

/* ---- lifecycle ---------------------------------------------------------- */

canopy_err canopy_http_new(const canopy_http_conf *conf, canopy_http **ret) {
        if (!ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_http_conf def = CANOPY_HTTP_CONF_DEFAULT;
        if (!conf)
                conf = &def;
        if (conf->port < 0 || conf->port > 65535 || (!conf->tls_cert_file != !conf->tls_key_file))
                return CANOPY_ERR_INVALID_ARG;
        canopy_http *srv = calloc(1, sizeof(*srv));
        if (!srv)
                return CANOPY_ERR_NOMEM;
        pthread_mutex_init(&srv->lock, NULL);
        srv->conf = *conf;
        srv->port = -1;
        const char *b = conf->bind && *conf->bind ? conf->bind : "127.0.0.1";
        size_t bl = strlen(b);
        /* "[::1]" (the URL form of an IPv6 address) binds like "::1". */
        srv->bind = bl > 2 && b[0] == '[' && b[bl - 1] == ']' ? strndup(b + 1, bl - 2) : strdup(b);
        srv->conf.bind = srv->bind;
        srv->conf.tls_cert_file = conf->tls_cert_file ? strdup(conf->tls_cert_file) : NULL;
        srv->conf.tls_key_file = conf->tls_key_file ? strdup(conf->tls_key_file) : NULL;
        if (!srv->conf.max_body)
                srv->conf.max_body = HTTP_DEFAULT_BODY;
        if (!srv->conf.threads)
                srv->conf.threads = 2;
        if (!srv->conf.max_conns)
                srv->conf.max_conns = 64;
        if (!srv->conf.timeout_s)
                srv->conf.timeout_s = 30;
        if (!srv->conf.metrics)
                srv->conf.metrics = canopy_metrics_default();
        if (!srv->bind || (conf->tls_cert_file && (!srv->conf.tls_cert_file || !srv->conf.tls_key_file)) ||
            !srv->conf.metrics) {
                canopy_http_free(srv);
                return CANOPY_ERR_NOMEM;
        }
        srv->requests = canopy_metrics_counter(srv->conf.metrics, "canopy_http_requests_total",
                                               "HTTP requests served, by status code.", "code");
        *ret = srv;
        return CANOPY_OK;
}

canopy_err canopy_http_handle(canopy_http *srv, const char *method, const char *prefix, canopy_http_handler cb,
                              void *opaque) {
        if (!srv || !prefix || prefix[0] != '/' || !cb)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = CANOPY_OK;
        pthread_mutex_lock(&srv->lock);
        if (srv->nhandlers >= HTTP_HANDLERS_MAX) {
                err = CANOPY_ERR_LIMIT;
                goto out;
        }
        struct handler *h = &srv->handlers[srv->nhandlers];
        h->method = method && strcmp(method, "*") ? strdup(method) : NULL;
        h->prefix = strdup(prefix);
        if ((method && strcmp(method, "*") && !h->method) || !h->prefix) {
                free(h->method);
                free(h->prefix);
                memset(h, 0, sizeof(*h));
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        h->cb = cb;
        h->opaque = opaque;
        srv->nhandlers++;
out:
        pthread_mutex_unlock(&srv->lock);
        return err;
}

void canopy_http_set_ready(canopy_http *srv, canopy_http_ready_fn fn, void *opaque) {
        if (!srv)
                return;
        pthread_mutex_lock(&srv->lock);
        srv->ready = fn;
        srv->ready_opaque = opaque;
        pthread_mutex_unlock(&srv->lock);
}

/* Read a PEM file (cap 1 MiB) into a NUL-terminated buffer. */
static canopy_err read_pem(const char *path, const char *what, char **ret, size_t *ret_len) {
        FILE *f = fopen(path, "rb");
        if (!f) {
                canopy_log(CANOPY_LOG_ERROR, "http", NULL, "cannot open TLS %s file %s: %s", what, path,
                           strerror(errno));
                return CANOPY_ERR_CONFIG;
        }
        char *buf = malloc(HTTP_TLS_FILE_MAX + 1);
        if (!buf) {
                fclose(f);
                return CANOPY_ERR_NOMEM;
        }
        size_t n = fread(buf, 1, HTTP_TLS_FILE_MAX + 1, f);
        fclose(f);
        buf[n > HTTP_TLS_FILE_MAX ? HTTP_TLS_FILE_MAX : n] = 0;
        if (n > HTTP_TLS_FILE_MAX || !strstr(buf, "-----BEGIN ")) {
                canopy_log(CANOPY_LOG_ERROR, "http", NULL, "TLS %s file %s is not a PEM file under 1 MiB", what, path);
                free(buf);
                return CANOPY_ERR_CONFIG;
        }
        *ret = buf;
        if (ret_len)
                *ret_len = n;
        return CANOPY_OK;
}

/* Bind and listen on bind:port; returns the socket or -1 (logged). */
static int open_listener(canopy_http *srv, int *family) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *ai = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%d", srv->conf.port);
        int rc = getaddrinfo(srv->bind, port, &hints, &ai);
        if (rc) {
                canopy_log(CANOPY_LOG_ERROR, "http", NULL, "cannot resolve bind address '%s': %s", srv->bind,
                           gai_strerror(rc));
                return -2;
        }
        int fd = -1;
        int lasterr = 0;
        for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
                fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
                if (fd < 0) {
                        lasterr = errno;
                        continue;
                }
                int one = 1;
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 64)) {
                        lasterr = errno;
                        close(fd);
                        fd = -1;
                        continue;
                }
                *family = a->ai_family;
        }
        freeaddrinfo(ai);
        if (fd < 0)
                canopy_log(CANOPY_LOG_ERROR, "http", NULL, "cannot listen on %s:%d: %s", srv->bind, srv->conf.port,
                           strerror(lasterr));
        return fd;
}

canopy_err canopy_http_start(canopy_http *srv) {
        if (!srv || srv->daemon)
                return CANOPY_ERR_INVALID_ARG;
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
        canopy_err err;
        if (srv->conf.tls_cert_file) {
                if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
                        canopy_log(CANOPY_LOG_ERROR, "http", NULL, "this libmicrohttpd has no TLS support");
                        return CANOPY_ERR_UNSUPPORTED;
                }
                if ((err = read_pem(srv->conf.tls_cert_file, "certificate", &srv->cert_pem, NULL)) ||
                    (err = read_pem(srv->conf.tls_key_file, "key", &srv->key_pem, &srv->key_len)))
                        return err;
                flags |= MHD_USE_TLS;
        }
        int family = AF_INET;
        int fd = open_listener(srv, &family);
        if (fd < 0)
                return fd == -2 ? CANOPY_ERR_CONFIG : CANOPY_ERR_IO;
        if (family == AF_INET6)
                flags |= MHD_USE_IPv6;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
                srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                           : ((struct sockaddr_in *)&ss)->sin_port);
        struct MHD_OptionItem tls_opts[] = {
                {MHD_OPTION_HTTPS_MEM_CERT, 0, srv->cert_pem},
                {MHD_OPTION_HTTPS_MEM_KEY, 0, srv->key_pem},
                {MHD_OPTION_END, 0, NULL},
        };
        /* The logger goes first so that MHD routes every message through it. */
        srv->daemon = MHD_start_daemon(
                flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv,
                MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)srv->conf.threads,
                MHD_OPTION_CONNECTION_LIMIT, (unsigned)srv->conf.max_conns, MHD_OPTION_CONNECTION_TIMEOUT,
                (unsigned)srv->conf.timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_ARRAY,
                srv->cert_pem ? tls_opts : &tls_opts[2], MHD_OPTION_END);
        if (!srv->daemon) {
                close(fd);
                srv->port = -1;
                canopy_log(CANOPY_LOG_ERROR, "http", NULL, "cannot start the HTTP server on %s:%d%s", srv->bind,
                           srv->conf.port, srv->cert_pem ? " (check the TLS certificate and key)" : "");
                return srv->cert_pem ? CANOPY_ERR_CONFIG : CANOPY_ERR_IO;
        }
        canopy_log(CANOPY_LOG_INFO, "http", NULL, "listening on %s%s%s:%d (%s)", family == AF_INET6 ? "[" : "",
                   srv->bind, family == AF_INET6 ? "]" : "", srv->port, srv->cert_pem ? "https" : "http");
        return CANOPY_OK;
}

int canopy_http_port(const canopy_http *srv) {
        return srv ? srv->port : -1;
}

void canopy_http_free(canopy_http *srv) {
        if (!srv)
                return;
        if (srv->daemon)
                MHD_stop_daemon(srv->daemon); /* closes the listening socket */
        for (size_t i = 0; i < srv->nhandlers; i++) {
                free(srv->handlers[i].method);
                free(srv->handlers[i].prefix);
        }
        if (srv->key_pem) {
                explicit_bzero(srv->key_pem, srv->key_len);
                free(srv->key_pem);
        }
        free(srv->cert_pem);
        free((char *)srv->conf.tls_cert_file);
        free((char *)srv->conf.tls_key_file);
        free(srv->bind);
        pthread_mutex_destroy(&srv->lock);
        free(srv);
}
