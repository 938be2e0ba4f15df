/* graph_http.c: transport and retry engine of the Graph client.
 *
 * Every request is a graph_xfer driven by graph_engine_run(): a libcurl
 * multi handle multiplexes up to max_concurrency transfers over HTTP/2
 * (CURLPIPE_MULTIPLEX, keep-alive connections kept in the multi handle across
 * calls). A transfer that fails in a retriable way (429/503/504 with
 * Retry-After, other 5xx and transport errors with exponential backoff and
 * jitter, eventual-consistency 404s on fresh objects, one 401 after which the
 * token is renewed) goes back to waiting until its next attempt time, within
 * max_retries and max_retry_ms. Writes take their share of the shared budget
 * just before each attempt. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/log.h"
#include "graph_int.h"

enum { X_WAITING = 0, X_RUNNING = 1, X_DONE = 2 };

int64_t graph_backoff_ms(canopy_graph *gc, int attempt) {
        int64_t cap = gc->conf.backoff_base_ms;
        for (int i = 1; i < attempt && cap < gc->conf.backoff_max_ms; i++)
                cap *= 2;
        if (cap > gc->conf.backoff_max_ms)
                cap = gc->conf.backoff_max_ms;
        if (cap < 2)
                return cap;
        /* "equal jitter": half fixed, half random, so that many clients that
         * failed together spread out but none retries at once. */
        return cap / 2 + (int64_t)graph_rand(gc, (uint64_t)(cap / 2) + 1);
}

canopy_err graph_url(canopy_graph *gc, const char *path, char **ret_url) {
        if (!path)
                return CANOPY_ERR_INVALID_ARG;
        char *url;
        if (!strncmp(path, "https://", 8) || !strncmp(path, "http://", 7)) {
                /* nextLinks are absolute; never send our token elsewhere. */
                size_t rl = strlen(gc->graph_root);
                if (strncmp(path, gc->graph_root, rl) != 0 || (path[rl] != '/' && path[rl] != '\0'))
                        return CANOPY_ERR_INVALID_ARG;
                url = strdup(path);
        } else {
                if (path[0] != '/')
                        return CANOPY_ERR_INVALID_ARG;
                size_t bl = strlen(gc->graph_base), pl = strlen(path);
                if (bl + pl + 1 > GRAPH_URL_MAX)
                        return CANOPY_ERR_LIMIT;
                url = malloc(bl + pl + 1);
                if (url) {
                        memcpy(url, gc->graph_base, bl);
                        memcpy(url + bl, path, pl + 1);
                }
        }
        if (!url)
                return CANOPY_ERR_NOMEM;
        *ret_url = url;
        return CANOPY_OK;
}

/* ---- curl callbacks ---- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
        graph_xfer *x = ud;
        size_t n = size * nmemb;
        if (x->len + n > x->max_body) {
                /* cap: a chunked response has no Content-Length for
                 * CURLOPT_MAXFILESIZE to check up front */
                x->too_large = true;
                return 0;
        }
        if (x->len + n + 1 > x->cap) {
                size_t nc = x->cap ? x->cap : 4096;
                while (nc < x->len + n + 1)
                        nc *= 2;
                char *nb = realloc(x->buf, nc);
                if (!nb)
                        return 0;
                x->buf = nb;
                x->cap = nc;
        }
        memcpy(x->buf + x->len, ptr, n);
        x->len += n;
        x->buf[x->len] = '\0';
        return n;
}

/* Copy a header value (trimmed) when the line is "name: value". */
static bool header_value(const char *line, size_t n, const char *name, char *out, size_t outlen) {
        size_t nl = strlen(name);
        if (n <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
                return false;
        const char *v = line + nl + 1;
        const char *end = line + n;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
                end--;
        size_t len = (size_t)(end - v);
        if (len >= outlen)
                len = outlen - 1;
        memcpy(out, v, len);
        out[len] = '\0';
        return true;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *ud) {
        graph_xfer *x = ud;
        size_t n = size * nmemb;
        if (!header_value(line, n, "retry-after", x->retry_after, sizeof(x->retry_after)))
                header_value(line, n, "request-id", x->req_id_hdr, sizeof(x->req_id_hdr));
        return n;
}

static void common_opts(canopy_graph *gc, CURL *e) {
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        if (gc->ca_file)
                curl_easy_setopt(e, CURLOPT_CAINFO, gc->ca_file);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)gc->conf.connect_timeout_ms);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)gc->conf.request_timeout_ms);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, gc->conf.allow_insecure ? "http,https" : "https");
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                         gc->conf.http1_only ? (long)CURL_HTTP_VERSION_1_1 : (long)CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "canopy/0.1");
}

static void set_method(CURL *e, const char *method, const char *body) {
        if (!strcmp(method, "GET")) {
                curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
                return;
        }
        if (!strcmp(method, "POST")) {
                curl_easy_setopt(e, CURLOPT_POST, 1L);
        } else {
                curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        }
        if (body) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
        } else if (!strcmp(method, "POST") || !strcmp(method, "PATCH") || !strcmp(method, "PUT")) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        }
}

canopy_err graph_http_simple(canopy_graph *gc, const char *url, const char *content_type, const char *body,
                             long *ret_status, char **ret_body, size_t *ret_len, char *retry_after,
                             size_t ralen) {
        graph_xfer x;
        memset(&x, 0, sizeof(x));
        x.max_body = 64u << 10; /* token responses are small, whatever the Graph cap */
        CURL *e = curl_easy_init();
        if (!e)
                return CANOPY_ERR_NOMEM;
        char ct[128], crid[128];
        struct curl_slist *h = NULL;
        graph_uuid4(x.crid);
        snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
        snprintf(crid, sizeof(crid), "client-request-id: %s", x.crid);
        h = curl_slist_append(h, ct);
        h = curl_slist_append(h, crid);
        h = curl_slist_append(h, "Accept: application/json");
        common_opts(gc, e);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        set_method(e, "POST", body);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
        CURLcode rc = curl_easy_perform(e);
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(e);
        curl_slist_free_all(h);
        if (rc != CURLE_OK) {
                free(x.buf);
                CANOPY_DEBUG(GRAPH_MOD, "token endpoint transport error: %s", curl_easy_strerror(rc));
                return rc == CURLE_OPERATION_TIMEDOUT ? CANOPY_ERR_TIMEOUT : CANOPY_ERR_HTTP;
        }
        *ret_status = status;
        *ret_body = x.buf;
        *ret_len = x.len;
        if (retry_after)
                graph_strlcpy(retry_after, x.retry_after, ralen);
        return CANOPY_OK;
}

/* ---- engine ---- */

static canopy_err xfer_start(canopy_graph *gc, graph_xfer *x) {
        CURL *e = curl_easy_init();
        if (!e)
                return CANOPY_ERR_NOMEM;
        char auth[8192], crid[80];
        struct curl_slist *h = NULL;
        if (strlen(gc->token) + 32 > sizeof(auth)) {
                curl_easy_cleanup(e);
                return CANOPY_ERR_GRAPH_PROTOCOL;
        }
        graph_uuid4(x->crid);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", gc->token);
        snprintf(crid, sizeof(crid), "client-request-id: %s", x->crid);
        h = curl_slist_append(h, auth);
        h = curl_slist_append(h, crid);
        h = curl_slist_append(h, "return-client-request-id: true");
        h = curl_slist_append(h, "Accept: application/json");
        if (x->body)
                h = curl_slist_append(h, "Content-Type: application/json");
        if (!h) {
                curl_easy_cleanup(e);
                return CANOPY_ERR_NOMEM;
        }
        free(x->buf);
        x->buf = NULL;
        x->len = x->cap = 0;
        x->too_large = false;
        x->max_body = gc->conf.max_response_bytes;
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)gc->conf.max_response_bytes);
        x->retry_after[0] = '\0';
        x->req_id_hdr[0] = '\0';
        common_opts(gc, e);
        curl_easy_setopt(e, CURLOPT_URL, x->url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        set_method(e, x->method, x->body);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
        curl_easy_setopt(e, CURLOPT_PRIVATE, x);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        if (curl_multi_add_handle(gc->multi, e) != CURLM_OK) {
                curl_easy_cleanup(e);
                curl_slist_free_all(h);
                return CANOPY_ERR_HTTP;
        }
        x->easy = e;
        x->hdrs = h;
        x->state = X_RUNNING;
        if (!x->started_ms)
                x->started_ms = graph_now_ms();
        gc->stats.requests++;
        if (x->attempts > 0)
                gc->stats.retries++;
        return CANOPY_OK;
}

static void xfer_finish(canopy_graph *gc, graph_xfer *x, canopy_err err, long status) {
        x->state = X_DONE;
        x->err = err;
        if (x->ei) {
                x->ei->attempts = x->attempts;
                if (!x->ei->client_request_id[0])
                        graph_strlcpy(x->ei->client_request_id, x->crid, sizeof(x->ei->client_request_id));
                if (!x->ei->request_id[0])
                        graph_strlcpy(x->ei->request_id, x->req_id_hdr, sizeof(x->ei->request_id));
        }
        if (x->res) {
                canopy_graph_result_clear(x->res);
                x->res->status = status;
                x->res->body = x->buf;
                x->res->body_len = x->len;
                x->buf = NULL;
                graph_strlcpy(x->res->request_id, x->req_id_hdr, sizeof(x->res->request_id));
                graph_strlcpy(x->res->client_request_id, x->crid, sizeof(x->res->client_request_id));
                x->res->attempts = x->attempts;
        }
        free(x->buf);
        x->buf = NULL;
        x->len = x->cap = 0;
        (void)gc;
}

canopy_err graph_classify(canopy_graph *gc, long status, unsigned flags, const canopy_graph_error *ei,
                          bool *retriable) {
        canopy_err err = canopy_graph_error_map(status, ei);
        *retriable = false;
        if (!err)
                return CANOPY_OK;
        if (status == 429 || status == 503 || status == 504 || (status >= 500 && status != 501))
                *retriable = true;
        if ((flags & CANOPY_GRAPH_F_FRESH) && graph_is_missing_ref(status, ei))
                *retriable = true;
        (void)gc;
        return err;
}

/* One attempt ended: decide done or retry. */
static void xfer_completed(canopy_graph *gc, graph_xfer *x, CURLcode rc, long status) {
        int64_t now = graph_now_ms();
        x->attempts++;
        canopy_err err;
        bool retriable = false, consistency = false;
        canopy_graph_error tmp;
        canopy_graph_error *ei = x->ei ? x->ei : &tmp;
        canopy_graph_error_clear(ei);
        ei->http_status = status;
        graph_strlcpy(ei->client_request_id, x->crid, sizeof(ei->client_request_id));

        if (rc != CURLE_OK) {
                if (rc == CURLE_FILESIZE_EXCEEDED || rc == CURLE_WRITE_ERROR || x->too_large) {
                        graph_strlcpy(ei->message, "response exceeds max_response_bytes", sizeof(ei->message));
                        xfer_finish(gc, x, CANOPY_ERR_GRAPH_TOO_LARGE, status);
                        return;
                }
                err = rc == CURLE_OPERATION_TIMEDOUT ? CANOPY_ERR_TIMEOUT : CANOPY_ERR_HTTP;
                graph_strlcpy(ei->message, curl_easy_strerror(rc), sizeof(ei->message));
                ei->http_status = 0;
                status = 0;
                /* SSL/cert and protocol errors are not going to heal */
                retriable = !(rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
                              rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT ||
                              rc == CURLE_SSL_CONNECT_ERROR);
                if (!retriable)
                        err = CANOPY_ERR_HTTP;
        } else if (status >= 200 && status < 300) {
                canopy_graph_error_clear(ei);
                xfer_finish(gc, x, CANOPY_OK, status);
                return;
        } else {
                if (canopy_graph_error_parse(x->buf, x->len, ei) != CANOPY_OK && x->len == 0)
                        ei->message[0] = '\0';
                ei->http_status = status;
                if (!ei->request_id[0])
                        graph_strlcpy(ei->request_id, x->req_id_hdr, sizeof(ei->request_id));
                err = graph_classify(gc, status, x->flags, ei, &retriable);
                consistency = (x->flags & CANOPY_GRAPH_F_FRESH) && graph_is_missing_ref(status, ei);
                if (status == 429)
                        gc->stats.throttled++;
                else if (status == 503 || status == 504)
                        gc->stats.unavailable++;
                if (status == 401 && x->auth_retries < 1) {
                        /* the token may have expired or been revoked mid-run:
                         * fetch a new one and try once more */
                        x->auth_retries++;
                        graph_token_invalidate(gc);
                        x->not_before_ms = now;
                        x->state = X_WAITING;
                        return;
                }
        }
        if (err == CANOPY_ERR_GRAPH_CONFLICT)
                graph_conflict_fill(ei, x->body);

        int64_t wait = -1;
        if (retriable && x->retry_after[0]) {
                int64_t ra;
                if (canopy_graph_retry_after_parse(x->retry_after, graph_epoch_ms(), &ra) == CANOPY_OK)
                        wait = ra;
        }
        if (wait >= 0)
                ei->retry_after_ms = wait;
        if (wait < 0)
                wait = graph_backoff_ms(gc, consistency ? x->consistency_tries + 1 : x->attempts);
        bool again = retriable && !(x->flags & CANOPY_GRAPH_F_NO_RETRY);
        if (again && consistency) {
                again = x->consistency_tries < gc->conf.consistency_retries;
                x->consistency_tries++;
        } else if (again) {
                again = x->attempts <= gc->conf.max_retries &&
                        (now - x->started_ms) + wait <= gc->conf.max_retry_ms;
        }
        if (!again) {
                xfer_finish(gc, x, err, status);
                return;
        }
        if (canopy_log_enabled(CANOPY_LOG_DEBUG, GRAPH_MOD))
                CANOPY_DEBUG(GRAPH_MOD, "%s %s: HTTP %ld (%s), retry %d in %lld ms, request-id %s", x->method,
                             x->url, status, ei->code, x->attempts, (long long)wait, ei->request_id);
        x->not_before_ms = now + wait;
        x->state = X_WAITING;
}

static void xfer_detach(canopy_graph *gc, graph_xfer *x) {
        if (x->easy) {
                curl_multi_remove_handle(gc->multi, x->easy);
                curl_easy_cleanup(x->easy);
                x->easy = NULL;
        }
        curl_slist_free_all(x->hdrs);
        x->hdrs = NULL;
}

/* Budget for one transfer before an attempt. Returns true when it may start
 * now; false when it must wait (not_before set) or is finished (refused). */
static bool xfer_budget(canopy_graph *gc, graph_xfer *x, int64_t now) {
        if (!gc->budget || x->weight <= 0)
                return true;
        int64_t wait = 0;
        canopy_err err = canopy_graph_budget_take(gc->budget, x->weight, &wait);
        if (!err)
                return true;
        canopy_graph_error tmp;
        canopy_graph_error *ei = x->ei ? x->ei : &tmp;
        if (err == CANOPY_ERR_GRAPH_BUDGET && x->budget_wait_ms + wait <= gc->conf.budget_max_wait_ms) {
                gc->stats.budget_waits++;
                x->budget_wait_ms += wait;
                x->not_before_ms = now + wait;
                return false;
        }
        canopy_graph_error_clear(ei);
        ei->retry_after_ms = err == CANOPY_ERR_GRAPH_BUDGET ? wait : 0;
        graph_strlcpy(ei->code, err == CANOPY_ERR_GRAPH_BUDGET ? "canopy_budget_exhausted" : "canopy_budget_redis",
                      sizeof(ei->code));
        xfer_finish(gc, x, err, 0);
        return false;
}

canopy_err graph_engine_run(canopy_graph *gc, graph_xfer *xs, size_t n) {
        size_t done = 0, running = 0;
        for (size_t i = 0; i < n; i++) {
                if (xs[i].state == X_DONE)
                        done++;
                if (xs[i].ei)
                        canopy_graph_error_clear(xs[i].ei);
        }
        size_t maxc = gc->conf.max_concurrency > 0 ? (size_t)gc->conf.max_concurrency : 1;
        while (done < n) {
                int64_t now = graph_now_ms();
                int64_t next_wake = now + 1000;
                for (size_t i = 0; i < n && running < maxc; i++) {
                        graph_xfer *x = &xs[i];
                        if (x->state != X_WAITING)
                                continue;
                        if (x->not_before_ms > now) {
                                if (x->not_before_ms < next_wake)
                                        next_wake = x->not_before_ms;
                                continue;
                        }
                        canopy_err err = graph_token_ensure(gc, x->ei);
                        if (err) {
                                xfer_finish(gc, x, err, 0);
                                done++;
                                continue;
                        }
                        if (!xfer_budget(gc, x, now)) {
                                if (x->state == X_DONE)
                                        done++;
                                else if (x->not_before_ms < next_wake)
                                        next_wake = x->not_before_ms;
                                continue;
                        }
                        err = xfer_start(gc, x);
                        if (err) {
                                xfer_finish(gc, x, err, 0);
                                done++;
                                continue;
                        }
                        running++;
                }
                if (done >= n)
                        break;
                int64_t timeout = next_wake - graph_now_ms();
                if (timeout < 0)
                        timeout = 0;
                if (running == 0) {
                        graph_sleep_ms(timeout);
                        continue;
                }
                int still = 0;
                curl_multi_perform(gc->multi, &still);
                if ((size_t)still == running)
                        curl_multi_poll(gc->multi, NULL, 0, (int)(timeout > 1000 ? 1000 : timeout), NULL);
                curl_multi_perform(gc->multi, &still);
                CURLMsg *m;
                int left;
                while ((m = curl_multi_info_read(gc->multi, &left))) {
                        if (m->msg != CURLMSG_DONE)
                                continue;
                        graph_xfer *x = NULL;
                        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
                        CURLcode rc = m->data.result;
                        long status = 0;
                        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
                        xfer_detach(gc, x);
                        running--;
                        xfer_completed(gc, x, rc, status);
                        if (x->state == X_DONE)
                                done++;
                }
        }
        return CANOPY_OK;
}

static unsigned default_flags(const char *method, unsigned flags) {
        if (!(flags & (CANOPY_GRAPH_F_WRITE | CANOPY_GRAPH_F_READ)) && strcmp(method, "GET") != 0)
                flags |= CANOPY_GRAPH_F_WRITE;
        return flags;
}

static canopy_err xfer_init(canopy_graph *gc, graph_xfer *x, const char *method, const char *path,
                            const char *body, unsigned flags, canopy_graph_result *res, canopy_graph_error *ei) {
        memset(x, 0, sizeof(*x));
        x->method = method;
        x->body = body;
        x->flags = default_flags(method, flags);
        x->weight = (x->flags & CANOPY_GRAPH_F_WRITE) && !(x->flags & CANOPY_GRAPH_F_READ) ? 1 : 0;
        x->res = res;
        x->ei = ei;
        return graph_url(gc, path, &x->url);
}

canopy_err canopy_graph_request(canopy_graph *gc, const char *method, const char *path, const char *body,
                                unsigned flags, canopy_graph_result *res, canopy_graph_error *ei) {
        if (!gc || !method || !path)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        if (res)
                canopy_graph_result_clear(res);
        graph_xfer x;
        canopy_err err = xfer_init(gc, &x, method, path, body, flags, res, ei);
        if (err) {
                free(x.url);
                return err;
        }
        graph_engine_run(gc, &x, 1);
        free(x.url);
        return x.err;
}

canopy_err canopy_graph_run(canopy_graph *gc, canopy_graph_req *reqs, size_t n) {
        if (!gc || (!reqs && n))
                return CANOPY_ERR_INVALID_ARG;
        if (n == 0)
                return CANOPY_OK;
        graph_xfer *xs = calloc(n, sizeof(*xs));
        if (!xs)
                return CANOPY_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
                canopy_graph_result_clear(&reqs[i].res);
                canopy_graph_error_clear(&reqs[i].ei);
                reqs[i].err = xfer_init(gc, &xs[i], reqs[i].method, reqs[i].path, reqs[i].body, reqs[i].flags,
                                        &reqs[i].res, &reqs[i].ei);
                if (reqs[i].err)
                        xs[i].state = X_DONE;
        }
        graph_engine_run(gc, xs, n);
        canopy_err first = CANOPY_OK;
        for (size_t i = 0; i < n; i++) {
                if (!reqs[i].err)
                        reqs[i].err = xs[i].err;
                if (reqs[i].err && !first)
                        first = reqs[i].err;
                free(xs[i].url);
        }
        free(xs);
        return first;
}
