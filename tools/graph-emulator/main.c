/* canopy-graph-emulator: a local Microsoft Graph v1.0 look-alike.
 *
 * main.c reads as the table of contents: options, the HTTP server, the
 * top-level routes (token endpoint, MSAL metadata, Graph, admin), stats
 * and the runtime fault settings. */
#include "emu.h"

#include "canopy/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MOD "emulator"
#define CT_JSON                                                                                              \
        "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

static void usage(FILE *f) {
        fputs(
            "Usage: canopy-graph-emulator [OPTIONS]\n"
            "A local server that speaks the Microsoft Graph v1.0 contract (token endpoint, users, groups,\n"
            "members, deletedItems, delta, $batch, throttling, faults). See docs/EMULATOR.md.\n\n"
            "  --listen ADDR:PORT         listen address (default 127.0.0.1:0; port 0 picks a free port)\n"
            "  --port-file F              write the actual port to F once listening\n"
            "  --tls-cert F --tls-key F   PEM certificate (chain) and key; TLS is the default\n"
            "  --insecure-http            serve plain HTTP instead of TLS (HTTP/1.1, and HTTP/2 for clients\n"
            "                             that open with its preface: h2c with prior knowledge)\n"
            "  --no-http2                 HTTP/1.1 only: ALPN offers http/1.1 alone, no h2c (by default\n"
            "                             one port serves both; TLS clients choose by ALPN, h2 first)\n"
            "  --client TENANT:CLIENT_ID:SECRET_FILE:ROLES\n"
            "                             an app with a client secret (read from SECRET_FILE) and comma-\n"
            "                             separated application permissions, e.g.\n"
            "                             User.ReadWrite.All,Group.ReadWrite.All; repeatable\n"
            "  --client-cert TENANT:CLIENT_ID:CERT_PEM:ROLES\n"
            "                             an app authenticating with a client assertion signed by the key "
            "of\n"
            "                             CERT_PEM (RS256 or PS256; x5t or x5t#S256 must match); repeatable\n"
            "  --domain D                 verified domain (repeatable; the first is the default)\n"
            "  --write-rate N             writes per second per app and tenant (token bucket; 0 = "
            "unlimited)\n"
            "  --write-burst N            bucket size (default: N of --write-rate, at least 1)\n"
            "  --fault-rate SPEC          injected faults, e.g. 429=0.1,500=0.05,503=0.05,504=0.02\n"
            "  --retry-after int|decimal|date\n"
            "                             form of Retry-After on 429 and 503 (default int)\n"
            "  --latency-ms N             added latency per Graph request\n"
            "  --replication-lag-ms N     a new object answers 404 for N ms (GET, PATCH, DELETE, members,\n"
            "                             lists and filters); it already counts for uniqueness\n"
            "  --token-lifetime S         access token lifetime in seconds (default 3599)\n"
            "  --snapshot FILE            load at start if present; save on SIGTERM and POST "
            "/_emulator/snapshot\n"
            "  --threads N                worker threads for HTTP/1.1, and as many for HTTP/2 (default 4)\n"
            "  --help                     this text\n\n"
            "Admin endpoints (no token, loopback clients only): GET /_emulator/state, POST "
            "/_emulator/reset,\n"
            "GET /_emulator/stats, POST /_emulator/snapshot, POST /_emulator/revoke?client=ID,\n"
            "POST /_emulator/unrevoke?client=ID, GET|POST /_emulator/faults, GET /_emulator/health.\n"
            "Stats count requests by protocol (byProtocol: HTTP/1.1, HTTP/2) and connections accepted\n"
            "by protocol (connections), since the start or the last reset.\n",
            f);
}

/* ---- stats -------------------------------------------------------------------- */

static void bump(json_t *obj, const char *key) {
        json_t *v = json_object_get(obj, key);
        json_object_set_new(obj, key, json_integer(v ? json_integer_value(v) + 1 : 1));
}

void emu_stats_count(emu_server *srv, const char *method, const char *kind, int status) {
        char st[16];
        snprintf(st, sizeof(st), "%d", status);
        pthread_mutex_lock(&srv->mu);
        srv->stats.operations++;
        bump(srv->stats.by_method, method);
        bump(srv->stats.by_kind, kind);
        bump(srv->stats.by_status, st);
        pthread_mutex_unlock(&srv->mu);
}

void emu_stats_assertion(emu_server *srv, const char *alg, const char *thumbprint) {
        char key[64];
        snprintf(key, sizeof(key), "%s %s", alg, thumbprint);
        pthread_mutex_lock(&srv->mu);
        bump(srv->stats.by_assertion, key);
        pthread_mutex_unlock(&srv->mu);
}

void emu_stats_add(emu_server *srv, uint64_t *field) {
        pthread_mutex_lock(&srv->mu);
        (*field)++;
        pthread_mutex_unlock(&srv->mu);
}

static void stats_reset(emu_server *srv) {
        json_decref(srv->stats.by_method);
        json_decref(srv->stats.by_kind);
        json_decref(srv->stats.by_status);
        json_decref(srv->stats.by_assertion);
        json_decref(srv->stats.by_protocol);
        json_decref(srv->stats.connections);
        memset(&srv->stats, 0, sizeof(srv->stats));
        srv->stats.by_method = json_object();
        srv->stats.by_kind = json_object();
        srv->stats.by_status = json_object();
        srv->stats.by_assertion = json_object();
        srv->stats.by_protocol = json_object();
        srv->stats.connections = json_object();
}

void emu_stats_conn(emu_server *srv, const char *protocol) {
        pthread_mutex_lock(&srv->mu);
        bump(srv->stats.connections, protocol);
        pthread_mutex_unlock(&srv->mu);
}

/* Copies, not references: the counters go on changing under mu while the
 * reply is serialized outside it. */
static json_t *stats_json(emu_server *srv) {
        pthread_mutex_lock(&srv->mu);
        emu_stats *s = &srv->stats;
        json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "requests",
                              (json_int_t)s->requests, "operations", (json_int_t)s->operations, "writes",
                              (json_int_t)s->writes, "throttled", (json_int_t)s->throttled, "faults",
                              (json_int_t)s->faults, "deletes", (json_int_t)s->deletes, "tokens",
                              (json_int_t)s->tokens, "byMethod", json_deep_copy(s->by_method), "byKind",
                              json_deep_copy(s->by_kind), "byStatus", json_deep_copy(s->by_status),
                              "byAssertion", json_deep_copy(s->by_assertion), "byProtocol",
                              json_deep_copy(s->by_protocol), "connections", json_deep_copy(s->connections));
        pthread_mutex_unlock(&srv->mu);
        return j;
}

/* ---- faults -------------------------------------------------------------------- */

static int parse_retry_form(const char *s, emu_retry_form *out) {
        if (!strcmp(s, "int"))
                *out = EMU_RA_INT;
        else if (!strcmp(s, "decimal"))
                *out = EMU_RA_DECIMAL;
        else if (!strcmp(s, "date"))
                *out = EMU_RA_DATE;
        else
                return -1;
        return 0;
}

static const char *retry_form_name(emu_retry_form f) {
        return f == EMU_RA_DECIMAL ? "decimal" : f == EMU_RA_DATE ? "date" : "int";
}

static int set_rate(emu_faults *f, const char *code, double v) {
        if (v < 0 || v > 1)
                return -1;
        if (!strcmp(code, "429"))
                f->rate429 = v;
        else if (!strcmp(code, "500"))
                f->rate500 = v;
        else if (!strcmp(code, "503"))
                f->rate503 = v;
        else if (!strcmp(code, "504"))
                f->rate504 = v;
        else
                return -1;
        return 0;
}

static int parse_fault_spec(const char *spec, emu_faults *f) {
        char *dup = strdup(spec), *save = NULL;
        int rc = 0;
        for (char *t = strtok_r(dup, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(t, '=');
                char *end;
                if (!eq) {
                        rc = -1;
                        break;
                }
                *eq = 0;
                double v = strtod(eq + 1, &end);
                if (*end || set_rate(f, t, v))
                        rc = -1;
        }
        free(dup);
        if (!rc && f->rate429 + f->rate500 + f->rate503 + f->rate504 > 1)
                rc = -1;
        return rc;
}

static json_t *faults_json(const emu_faults *f) {
        return json_pack("{s:f, s:f, s:f, s:f, s:s, s:i, s:i, s:f, s:f, s:i, s:i}", "429", f->rate429, "500",
                         f->rate500, "503", f->rate503, "504", f->rate504, "retryAfter",
                         retry_form_name(f->retry_after), "latencyMs", f->latency_ms, "replicationLagMs",
                         f->replication_lag_ms, "writeRate", f->write_rate, "writeBurst", f->write_burst,
                         "failNext", f->fail_next, "failStatus", f->fail_status);
}

/* Drop every write bucket (they refill from the new settings). Caller holds mu. */
static void buckets_clear(emu_server *srv) {
        size_t it = 0;
        const char *k;
        void *v;
        while (emu_map_next(&srv->buckets, &it, &k, &v))
                free(v);
        emu_map_clear(&srv->buckets);
}

/* Apply a JSON object of settings; returns NULL or an error text. */
static const char *faults_apply(emu_server *srv, json_t *j) {
        if (!json_is_object(j))
                return "body must be a JSON object";
        pthread_mutex_lock(&srv->mu);
        emu_faults f = srv->faults;
        const char *k;
        json_t *v;
        const char *err = NULL;
        json_object_foreach(j, k, v) {
                if (!strcmp(k, "429") || !strcmp(k, "500") || !strcmp(k, "503") || !strcmp(k, "504")) {
                        if (!json_is_number(v) || set_rate(&f, k, json_number_value(v)))
                                err = "fault rates must be numbers between 0 and 1";
                } else if (!strcmp(k, "retryAfter")) {
                        if (!json_is_string(v) || parse_retry_form(json_string_value(v), &f.retry_after))
                                err = "retryAfter must be int, decimal or date";
                } else if (!strcmp(k, "latencyMs") && json_is_integer(v) && json_integer_value(v) >= 0) {
                        f.latency_ms = (int)json_integer_value(v);
                } else if (!strcmp(k, "replicationLagMs") && json_is_integer(v) &&
                           json_integer_value(v) >= 0) {
                        f.replication_lag_ms = (int)json_integer_value(v);
                } else if (!strcmp(k, "writeRate") && json_is_number(v) && json_number_value(v) >= 0) {
                        f.write_rate = json_number_value(v);
                        buckets_clear(srv);
                } else if (!strcmp(k, "failNext") && json_is_integer(v) && json_integer_value(v) >= 0) {
                        f.fail_next = (int)json_integer_value(v);
                } else if (!strcmp(k, "failStatus") && json_is_integer(v)) {
                        int st = (int)json_integer_value(v);
                        if (st != 401 && st != 403 && st != 429 && st != 500 && st != 503 && st != 504)
                                err = "failStatus must be 401, 403, 429, 500, 503 or 504";
                        f.fail_status = st;
                } else if (!strcmp(k, "writeBurst") && json_is_number(v) && json_number_value(v) >= 0) {
                        f.write_burst = json_number_value(v);
                } else {
                        err = "unknown or invalid setting";
                }
        }
        if (!err && f.rate429 + f.rate500 + f.rate503 + f.rate504 > 1)
                err = "fault rates add up to more than 1";
        if (!err && f.fail_next > 0 && !f.fail_status)
                err = "failNext needs failStatus";
        if (!err)
                srv->faults = f;
        pthread_mutex_unlock(&srv->mu);
        return err;
}
/* ---- one request, whatever the transport ---------------------------------------------- */

static const char *req_header(const emu_request *rq, const char *name) {
        return rq->header ? rq->header(rq->ctx, name) : NULL;
}

/* Takes ownership of name and val; drops them when full (cannot happen:
 * EMU_REPLY_HDRS leaves room for every fixed header plus EMU_RESP_HDRS). */
static void reply_add(emu_reply *rp, char *name, char *val) {
        if (!name || !val || rp->nh >= EMU_REPLY_HDRS) {
                free(name);
                free(val);
                return;
        }
        rp->hname[rp->nh] = name;
        rp->hval[rp->nh] = val;
        rp->nh++;
}

void emu_reply_free(emu_reply *rp) {
        if (!rp)
                return;
        free(rp->body);
        for (int i = 0; i < rp->nh; i++) {
                free(rp->hname[i]);
                free(rp->hval[i]);
        }
        memset(rp, 0, sizeof(*rp));
}

/* The bytes and headers every transport sends for r (r is emptied). */
static void reply_finish(emu_resp *r, const char *request_id, const char *creq, emu_reply *rp) {
        const char *ctype = NULL;
        rp->status = r->status ? r->status : 500;
        if (r->body) {
                rp->body = json_dumps(r->body, JSON_COMPACT);
                ctype = CT_JSON;
        } else if (r->raw) {
                rp->body = r->raw;
                r->raw = NULL;
                ctype = r->ctype ? r->ctype : "text/plain";
        }
        rp->len = rp->body ? strlen(rp->body) : 0;
        if (ctype)
                reply_add(rp, strdup("Content-Type"), strdup(ctype));
        if (r->body)
                reply_add(rp, strdup("OData-Version"), strdup("4.0"));
        reply_add(rp, strdup("request-id"), strdup(request_id));
        reply_add(rp, strdup("client-request-id"), strdup(creq && *creq ? creq : request_id));
        reply_add(rp, strdup("x-ms-ags-diagnostic"),
                  strdup("{\"ServerInfo\":{\"DataCenter\":\"Emulator\",\"Slice\":\"E\",\"Ring\":\"0\","
                         "\"ScaleUnit\":\"000\",\"RoleInstance\":\"canopy-emulator\"}}"));
        for (int i = 0; i < r->nh; i++) {
                reply_add(rp, r->hname[i], r->hval[i]);
                r->hname[i] = r->hval[i] = NULL;
        }
        r->nh = 0;
        emu_resp_reset(r);
}

static void admin(emu_server *srv, const char *method, const char *path, const char *query, const char *body,
                  size_t len, emu_resp *r) {
        char qbuf[512] = "";
        if (query)
                snprintf(qbuf, sizeof(qbuf), "%s", query);
        emu_url_decode(qbuf, true);
        const char *client = strstr(qbuf, "client=") ? strstr(qbuf, "client=") + 7 : NULL;
        char cbuf[128] = "";
        if (client) {
                snprintf(cbuf, sizeof(cbuf), "%s", client);
                char *amp = strchr(cbuf, '&');
                if (amp)
                        *amp = 0;
        }
        bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
        if (get && !strcmp(path, "/_emulator/health")) {
                r->status = 200;
                r->body = json_pack("{s:s}", "status", "ok");
        } else if (get && !strcmp(path, "/_emulator/state")) {
                const char *t = strstr(qbuf, "tenant=");
                char tb[64] = "";
                if (t) {
                        snprintf(tb, sizeof(tb), "%s", t + 7);
                        char *amp = strchr(tb, '&');
                        if (amp)
                                *amp = 0;
                }
                pthread_rwlock_rdlock(&srv->lock);
                r->body = emu_state_dump(srv, t ? tb : NULL);
                pthread_rwlock_unlock(&srv->lock);
                r->status = 200;
        } else if (post && !strcmp(path, "/_emulator/reset")) {
                pthread_rwlock_wrlock(&srv->lock);
                emu_state_reset(srv);
                pthread_rwlock_unlock(&srv->lock);
                pthread_mutex_lock(&srv->mu);
                buckets_clear(srv);
                stats_reset(srv);
                for (size_t i = 0; i < srv->nclients; i++)
                        srv->clients[i].revoked = false;
                pthread_mutex_unlock(&srv->mu);
                r->status = 204;
        } else if (get && !strcmp(path, "/_emulator/stats")) {
                r->status = 200;
                r->body = stats_json(srv);
        } else if (post && !strcmp(path, "/_emulator/snapshot")) {
                if (!srv->snapshot) {
                        r->status = 400;
                        r->body = json_pack("{s:s}", "error", "no --snapshot file configured");
                        return;
                }
                pthread_rwlock_rdlock(&srv->lock);
                int rc = emu_snapshot_save(srv, srv->snapshot);
                pthread_rwlock_unlock(&srv->lock);
                r->status = rc ? 500 : 200;
                r->body = json_pack("{s:s, s:b}", "file", srv->snapshot, "saved", rc == 0);
        } else if (post && (!strcmp(path, "/_emulator/revoke") || !strcmp(path, "/_emulator/unrevoke"))) {
                bool revoke = !strcmp(path, "/_emulator/revoke");
                int n = 0;
                pthread_mutex_lock(&srv->mu);
                for (size_t i = 0; i < srv->nclients; i++) {
                        if (client && !strcasecmp(srv->clients[i].client_id, cbuf)) {
                                srv->clients[i].revoked = revoke;
                                n++;
                        }
                }
                pthread_mutex_unlock(&srv->mu);
                r->status = n ? 200 : 404;
                r->body = json_pack("{s:s, s:b}", "client", cbuf, "revoked", revoke && n);
        } else if (!strcmp(path, "/_emulator/faults") && (get || post)) {
                if (post) {
                        json_t *j = len ? json_loadb(body, len, 0, NULL) : NULL;
                        const char *err = faults_apply(srv, j);
                        json_decref(j);
                        if (err) {
                                r->status = 400;
                                r->body = json_pack("{s:s}", "error", err);
                                return;
                        }
                }
                pthread_mutex_lock(&srv->mu);
                r->body = faults_json(&srv->faults);
                pthread_mutex_unlock(&srv->mu);
                r->status = 200;
        } else {
                r->status = 404;
                r->body = json_pack("{s:s}", "error", "unknown admin endpoint");
        }
}
void emu_serve(emu_server *srv, const emu_request *rq, emu_reply *rp) {
        const char *method = rq->method;
        pthread_mutex_lock(&srv->mu);
        srv->stats.requests++;
        bump(srv->stats.by_protocol, rq->protocol ? rq->protocol : "unknown");
        pthread_mutex_unlock(&srv->mu);

        char request_id[37];
        emu_uuid(request_id);
        const char *creq = req_header(rq, "client-request-id");
        char creq_buf[128] = "";
        if (creq)
                snprintf(creq_buf, sizeof(creq_buf), "%s", creq);
        const char *host = req_header(rq, "Host");
        char base[300];
        snprintf(base, sizeof(base), "%s://%s", srv->insecure ? "http" : "https", host ? host : "localhost");

        char *uri = strdup(rq->uri && *rq->uri ? rq->uri : "/");
        char *query = strchr(uri, '?');
        char *path = strndup(uri, query ? (size_t)(query - uri) : strlen(uri));
        if (query)
                query++;
        emu_url_decode(path, false);

        emu_resp r = {0};
        if (rq->too_big) {
                emu_graph_error(&r, 413, "Request_EntityTooLarge", "The request body is too large.",
                                request_id, creq_buf);
                goto send;
        }
        if (!strncmp(path, "/_emulator/", 11)) {
                if (!rq->loopback) {
                        r.status = 403;
                        r.body = json_pack("{s:s}", "error", "admin endpoints answer loopback clients only");
                } else {
                        admin(srv, method, path, query, rq->body, rq->len, &r);
                }
                emu_stats_count(srv, method, "admin", r.status);
                goto send;
        }
        if (!strncmp(path, "/v1.0/", 6) || !strcmp(path, "/v1.0") || !strncmp(path, "/beta/", 6)) {
                const char *ver = !strncmp(path, "/beta", 5) ? "beta" : "v1.0";
                int lat;
                pthread_mutex_lock(&srv->mu);
                lat = srv->faults.latency_ms;
                pthread_mutex_unlock(&srv->mu);
                if (lat > 0)
                        usleep((useconds_t)lat * 1000);
                emu_auth auth;
                if (emu_auth_check(srv, req_header(rq, "Authorization"), &auth, &r)) {
                        json_t *err = json_object_get(r.body, "error");
                        char ts[32];
                        emu_iso_time(emu_now_ms(), ts);
                        json_object_set_new(err, "innerError",
                                            json_pack("{s:s, s:s, s:s}", "date", ts, "request-id", request_id,
                                                      "client-request-id",
                                                      *creq_buf ? creq_buf : request_id));
                        emu_stats_count(srv, method, "auth", r.status);
                        goto send;
                }
                json_t *body = NULL;
                bool invalid = false;
                if (rq->len) {
                        body = json_loadb(rq->body, rq->len, 0, NULL);
                        invalid = body == NULL;
                }
                const char *prefer = req_header(rq, "Prefer");
                const char *mp = prefer ? strstr(prefer, "odata.maxpagesize=") : NULL;
                /* The URL relative to the version, with its raw query. */
                const char *rel = uri + strlen(ver) + 1;
                emu_call call = {.srv = srv,
                                 .auth = &auth,
                                 .method = method,
                                 .url = *rel ? rel : "/",
                                 .version = ver,
                                 .body = body,
                                 .body_invalid = invalid,
                                 .base = base,
                                 .client_request_id = creq_buf,
                                 .request_id = request_id,
                                 .max_page_size = mp ? atoi(mp + 18) : 0};
                if (!strcmp(path + strlen(ver) + 1, "/$batch")) {
                        if (strcmp(method, "POST")) {
                                emu_graph_error(&r, 405, "Request_BadRequest",
                                                "Specified HTTP method is not allowed for the request uri.",
                                                request_id, creq_buf);
                        } else {
                                emu_graph_batch(&call, &r);
                        }
                        emu_stats_count(srv, method, "batch", r.status);
                } else {
                        emu_graph_exec(&call, &r);
                }
                json_decref(body);
                goto send;
        }
        /* /{tenant}/... : token endpoint and metadata */
        {
                char tenant[128] = "";
                const char *rest = NULL;
                if (path[0] == '/') {
                        const char *sl = strchr(path + 1, '/');
                        if (sl && (size_t)(sl - path - 1) < sizeof(tenant)) {
                                memcpy(tenant, path + 1, (size_t)(sl - path - 1));
                                tenant[sl - path - 1] = 0;
                                rest = sl;
                        }
                }
                if (rest && !strcmp(rest, "/oauth2/v2.0/token")) {
                        if (strcmp(method, "POST")) {
                                r.status = 405;
                                r.body = json_pack("{s:s}", "error", "invalid_request");
                        } else {
                                emu_auth_token(srv, tenant, rq->body ? rq->body : "", rq->len,
                                               req_header(rq, "Authorization"), base, &r);
                        }
                        emu_stats_count(srv, method, "token", r.status);
                        goto send;
                }
                if (rest && (!strcmp(rest, "/v2.0/.well-known/openid-configuration") ||
                             !strcmp(rest, "/.well-known/openid-configuration"))) {
                        emu_auth_openid(srv, tenant, base, &r);
                        emu_stats_count(srv, method, "metadata", r.status);
                        goto send;
                }
                if (rest && !strcmp(rest, "/discovery/v2.0/keys")) {
                        emu_auth_jwks(srv, &r);
                        emu_stats_count(srv, method, "metadata", r.status);
                        goto send;
                }
                if (rest && !strcmp(tenant, "common") && !strcmp(rest, "/discovery/instance")) {
                        emu_auth_instance_discovery(srv, base, host ? host : "localhost", &r);
                        emu_stats_count(srv, method, "metadata", r.status);
                        goto send;
                }
        }
        emu_graph_error(&r, 400, "BadRequest", "Invalid version.", request_id, creq_buf);
        emu_stats_count(srv, method, "other", r.status);
send:;
        /* Access log at debug level only; never the Authorization header. */
        if (canopy_log_enabled(CANOPY_LOG_DEBUG, MOD))
                canopy_log(CANOPY_LOG_DEBUG, MOD, NULL, "%s %s %s %d request-id=%s", rq->protocol, method, path,
                           r.status ? r.status : 500, request_id);
        reply_finish(&r, request_id, creq_buf, rp);
        free(uri);
        free(path);
}

/* ---- HTTP/1.1: libmicrohttpd ------------------------------------------------------------ */

/* libmicrohttpd serves HTTP/1.x for every connection net.c hands it: plain
 * sockets as accepted, TLS ones through a socketpair that net.c relays. */
typedef struct conn_ctx {
        char *uri;
        char *body;
        size_t len, cap;
        bool too_big;
        bool started; /* the first call only announces the request */
} conn_ctx;

static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *con) {
        (void)cls;
        (void)con;
        conn_ctx *cc = calloc(1, sizeof(*cc));
        if (cc)
                cc->uri = strdup(uri);
        return cc;
}

static void completed_cb(void *cls, struct MHD_Connection *con, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
        (void)cls;
        (void)con;
        (void)toe;
        conn_ctx *cc = *req_cls;
        if (cc) {
                free(cc->uri);
                free(cc->body);
                free(cc);
        }
        *req_cls = NULL;
}

static bool loopback(struct MHD_Connection *con) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        return ci && ci->client_addr && emu_addr_loopback(ci->client_addr);
}

static const char *mhd_header(void *ctx, const char *name) {
        return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
}

/* MHD's messages as JSON log lines. On the socketpairs net.c relays, MHD's
 * TCP_NODELAY / TCP_CORK calls fail and it says so; those sockets deliver at
 * once anyway, so these lines are noise: debug level. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
        (void)cls;
        char msg[512];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        size_t n = strlen(msg);
        while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
                msg[--n] = 0;
        bool socket_opt = strstr(msg, "option to") || strstr(msg, "Failed to push the data");
        canopy_log(socket_opt ? CANOPY_LOG_DEBUG : CANOPY_LOG_WARN, MOD, NULL, "libmicrohttpd: %s", msg);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **req_cls) {
        emu_server *srv = cls;
        conn_ctx *cc = *req_cls;
        (void)url;
        if (!cc)
                return MHD_NO;
        if (!cc->started) {
                cc->started = true;
                return MHD_YES;
        }
        if (*upload_size) {
                if (cc->len + *upload_size > EMU_BODY_MAX) {
                        cc->too_big = true;
                } else if (!cc->too_big) {
                        if (cc->len + *upload_size + 1 > cc->cap) {
                                size_t nc = (cc->len + *upload_size + 1) * 2;
                                char *nb = realloc(cc->body, nc);
                                if (!nb)
                                        return MHD_NO;
                                cc->body = nb;
                                cc->cap = nc;
                        }
                        memcpy(cc->body + cc->len, upload_data, *upload_size);
                        cc->len += *upload_size;
                        cc->body[cc->len] = 0;
                }
                *upload_size = 0;
                return MHD_YES;
        }
        emu_request rq = {.method = method,
                          .uri = cc->uri,
                          .body = cc->body,
                          .len = cc->len,
                          .too_big = cc->too_big,
                          .loopback = loopback(con),
                          .protocol = version,
                          .header = mhd_header,
                          .ctx = con};
        emu_reply rp = {0};
        emu_serve(srv, &rq, &rp);
        struct MHD_Response *resp = MHD_create_response_from_buffer(
            rp.len, rp.body ? rp.body : (void *)"", rp.body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        rp.body = NULL;
        enum MHD_Result ret = MHD_NO;
        if (resp) {
                for (int i = 0; i < rp.nh; i++)
                        MHD_add_response_header(resp, rp.hname[i], rp.hval[i]);
                ret = MHD_queue_response(con, (unsigned)rp.status, resp);
                MHD_destroy_response(resp);
        }
        emu_reply_free(&rp);
        return ret;
}

/* ---- options -------------------------------------------------------------------- */

static int add_client(emu_server *srv, const char *spec, bool cert) {
        char *dup = strdup(spec);
        char *parts[4] = {0};
        char *p = dup;
        for (int i = 0; i < 3; i++) {
                char *colon = strchr(p, ':');
                if (!colon) {
                        free(dup);
                        return -1;
                }
                *colon = 0;
                parts[i] = p;
                p = colon + 1;
        }
        parts[3] = p;
        emu_client *cl = NULL;
        for (size_t i = 0; i < srv->nclients; i++)
                if (!strcasecmp(srv->clients[i].tenant, parts[0]) &&
                    !strcasecmp(srv->clients[i].client_id, parts[1]))
                        cl = &srv->clients[i];
        if (!cl) {
                if (srv->nclients >= EMU_CLIENTS_MAX) {
                        free(dup);
                        return -1;
                }
                cl = &srv->clients[srv->nclients++];
                cl->tenant = strdup(parts[0]);
                cl->client_id = strdup(parts[1]);
                cl->roles = json_array();
        }
        int rc = 0;
        if (!cert) {
                free(cl->secret);
                cl->secret = emu_read_file(parts[2], NULL);
                if (!cl->secret || !*cl->secret) {
                        fprintf(stderr, "canopy-graph-emulator: cannot read secret file %s\n", parts[2]);
                        rc = -1;
                } else {
                        canopy_log_secret(cl->secret);
                }
        } else {
                FILE *f = fopen(parts[2], "r");
                X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
                if (f)
                        fclose(f);
                if (!x) {
                        fprintf(stderr, "canopy-graph-emulator: cannot read certificate %s\n", parts[2]);
                        rc = -1;
                } else {
                        unsigned int l1 = 0, l2 = 0;
                        X509_digest(x, EVP_sha1(), cl->x5t, &l1);
                        X509_digest(x, EVP_sha256(), cl->x5t256, &l2);
                        EVP_PKEY_free(cl->cert_key);
                        cl->cert_key = X509_get_pubkey(x);
                        X509_free(x);
                }
        }
        char *save = NULL;
        for (char *t = strtok_r(parts[3], ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                bool dupe = false;
                size_t i;
                json_t *v;
                json_array_foreach(cl->roles, i, v) {
                        dupe = dupe || !strcmp(json_string_value(v), t);
                }
                if (!dupe) {
                        json_array_append_new(cl->roles, json_string(t));
                        cl->perms |= emu_role_bit(t);
                }
        }
        free(dup);
        return rc;
}

static int parse_listen(emu_server *srv, const char *s) {
        const char *colon = strrchr(s, ':');
        if (!colon)
                return -1;
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end || port < 0 || port > 65535)
                return -1;
        free(srv->listen_addr);
        srv->listen_addr = strndup(s, (size_t)(colon - s));
        if (!strcmp(srv->listen_addr, "localhost")) {
                free(srv->listen_addr);
                srv->listen_addr = strdup("127.0.0.1");
        }
        srv->listen_port = (int)port;
        return 0;
}

static int parse_int(const char *s, int min, int max, int *out) {
        char *end;
        long v = strtol(s, &end, 10);
        if (!*s || *end || v < min || v > max)
                return -1;
        *out = (int)v;
        return 0;
}

static int parse_double(const char *s, double *out) {
        char *end;
        double v = strtod(s, &end);
        if (!*s || *end || v < 0)
                return -1;
        *out = v;
        return 0;
}

static int write_port_file(const char *path, int port) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
        FILE *f = fopen(tmp, "w");
        if (!f)
                return -1;
        fprintf(f, "%d\n", port);
        if (fclose(f))
                return -1;
        return rename(tmp, path);
}

int main(int argc, char **argv) {
        static emu_server srv;
        int rc = 1;
        srv.listen_addr = strdup("127.0.0.1");
        srv.threads = 4;
        srv.token_lifetime = 3599;
        pthread_mutex_init(&srv.mu, NULL);
        pthread_rwlock_init(&srv.lock, NULL);
        stats_reset(&srv);
        canopy_log_init("graph-emulator");

        enum {
                O_LISTEN = 256,
                O_PORTFILE,
                O_CERT,
                O_KEY,
                O_INSECURE,
                O_NOH2,
                O_CLIENT,
                O_CLIENTCERT,
                O_DOMAIN,
                O_WRATE,
                O_WBURST,
                O_FAULT,
                O_RETRY,
                O_LAT,
                O_LAG,
                O_TOKLIFE,
                O_SNAP,
                O_THREADS,
                O_HELP
        };
        static const struct option opts[] = {
            {"listen", required_argument, NULL, O_LISTEN},
            {"port-file", required_argument, NULL, O_PORTFILE},
            {"tls-cert", required_argument, NULL, O_CERT},
            {"tls-key", required_argument, NULL, O_KEY},
            {"insecure-http", no_argument, NULL, O_INSECURE},
            {"no-http2", no_argument, NULL, O_NOH2},
            {"client", required_argument, NULL, O_CLIENT},
            {"client-cert", required_argument, NULL, O_CLIENTCERT},
            {"domain", required_argument, NULL, O_DOMAIN},
            {"write-rate", required_argument, NULL, O_WRATE},
            {"write-burst", required_argument, NULL, O_WBURST},
            {"fault-rate", required_argument, NULL, O_FAULT},
            {"retry-after", required_argument, NULL, O_RETRY},
            {"latency-ms", required_argument, NULL, O_LAT},
            {"replication-lag-ms", required_argument, NULL, O_LAG},
            {"token-lifetime", required_argument, NULL, O_TOKLIFE},
            {"snapshot", required_argument, NULL, O_SNAP},
            {"threads", required_argument, NULL, O_THREADS},
            {"help", no_argument, NULL, O_HELP},
            {NULL, 0, NULL, 0},
        };
        int c;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                int bad = 0;
                switch (c) {
                case O_LISTEN:
                        bad = parse_listen(&srv, optarg);
                        break;
                case O_PORTFILE:
                        srv.port_file = optarg;
                        break;
                case O_CERT:
                        srv.tls_cert = optarg;
                        break;
                case O_KEY:
                        srv.tls_key = optarg;
                        break;
                case O_INSECURE:
                        srv.insecure = true;
                        break;
                case O_NOH2:
                        srv.no_h2 = true;
                        break;
                case O_CLIENT:
                case O_CLIENTCERT:
                        bad = add_client(&srv, optarg, c == O_CLIENTCERT);
                        break;
                case O_DOMAIN:
                        if (srv.ndomains < EMU_DOMAINS_MAX)
                                srv.domains[srv.ndomains++] = optarg;
                        else
                                bad = 1;
                        break;
                case O_WRATE:
                        bad = parse_double(optarg, &srv.faults.write_rate);
                        break;
                case O_WBURST:
                        bad = parse_double(optarg, &srv.faults.write_burst);
                        break;
                case O_FAULT:
                        bad = parse_fault_spec(optarg, &srv.faults);
                        break;
                case O_RETRY:
                        bad = parse_retry_form(optarg, &srv.faults.retry_after);
                        break;
                case O_LAT:
                        bad = parse_int(optarg, 0, 600000, &srv.faults.latency_ms);
                        break;
                case O_LAG:
                        bad = parse_int(optarg, 0, 3600000, &srv.faults.replication_lag_ms);
                        break;
                case O_TOKLIFE:
                        bad = parse_int(optarg, 1, 86400 * 7, &srv.token_lifetime);
                        break;
                case O_SNAP:
                        srv.snapshot = optarg;
                        break;
                case O_THREADS:
                        bad = parse_int(optarg, 1, 256, &srv.threads);
                        break;
                case O_HELP:
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
                if (bad) {
                        fprintf(stderr, "canopy-graph-emulator: invalid value for --%s: %s\n",
                                opts[c - O_LISTEN].name, optarg ? optarg : "");
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "canopy-graph-emulator: unexpected argument %s\n", argv[optind]);
                return 2;
        }
        if (!srv.insecure && (!srv.tls_cert || !srv.tls_key)) {
                fprintf(
                    stderr,
                    "canopy-graph-emulator: --tls-cert and --tls-key are required (or --insecure-http)\n");
                return 2;
        }
        struct in_addr ia;
        if (inet_pton(AF_INET, srv.listen_addr, &ia) != 1) {
                fprintf(stderr, "canopy-graph-emulator: invalid listen address %s\n", srv.listen_addr);
                return 2;
        }
        /* Every tenant has an initial .onmicrosoft.com domain; the first
         * --domain stays the default. */
        static char default_domain[] = "emulator.onmicrosoft.com";
        bool initial = false;
        for (size_t i = 0; i < srv.ndomains; i++)
                initial = initial || strstr(srv.domains[i], ".onmicrosoft.com") != NULL;
        if (!initial && srv.ndomains < EMU_DOMAINS_MAX)
                srv.domains[srv.ndomains++] = default_domain;
        if (emu_auth_init(&srv)) {
                fprintf(stderr, "canopy-graph-emulator: cannot generate the signing key\n");
                return 1;
        }
        if (srv.snapshot && access(srv.snapshot, F_OK) == 0) {
                if (emu_snapshot_load(&srv, srv.snapshot)) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot load snapshot %s", srv.snapshot);
                        return 1;
                }
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "snapshot %s loaded", srv.snapshot);
        }

        /* Signals are taken synchronously by the main thread; every server
         * thread inherits the blocked mask. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);

        /* libmicrohttpd listens on nothing: net.c accepts every connection
         * and hands it the HTTP/1.x ones (see net.c). */
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG |
                         MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
        struct MHD_Daemon *d = MHD_start_daemon(
            flags, 0, NULL, NULL, on_request, &srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, &srv,
            MHD_OPTION_URI_LOG_CALLBACK, uri_cb, &srv,
            MHD_OPTION_NOTIFY_COMPLETED, completed_cb, &srv, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)srv.threads,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)EMU_IDLE_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
            (size_t)(64 * 1024), MHD_OPTION_END);
        int port = 0;
        if (!d) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot start the HTTP/1.1 server");
                goto out;
        }
        srv.mhd = d;
        if (emu_h2_init(&srv) || emu_net_start(&srv, &port)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot start the server on %s:%d", srv.listen_addr,
                           srv.listen_port);
                goto stop;
        }
        if (srv.port_file && write_port_file(srv.port_file, port)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot write port file %s: %s", srv.port_file,
                           strerror(errno));
                goto stop;
        }
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "listening on %s://%s:%d (%s; %zu clients, %zu domains)",
                   srv.insecure ? "http" : "https", srv.listen_addr, port,
                   srv.no_h2 ? "HTTP/1.1" : srv.insecure ? "HTTP/1.1, h2c" : "HTTP/1.1, HTTP/2", srv.nclients,
                   srv.ndomains);

        for (;;) {
                int sig = 0;
                if (sigwait(&set, &sig))
                        continue;
                if (sig == SIGHUP)
                        continue;
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "signal %d: shutting down", sig);
                break;
        }
        rc = 0;
        if (srv.snapshot) {
                if (emu_snapshot_save(&srv, srv.snapshot)) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot save snapshot %s", srv.snapshot);
                        rc = 1;
                } else {
                        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "snapshot saved to %s", srv.snapshot);
                }
        }
stop:
        /* Connections first (they feed both servers), then the servers. */
        emu_net_stop(&srv);
        emu_h2_free(&srv);
        MHD_stop_daemon(d);
out:
        emu_state_reset(&srv);
        buckets_clear(&srv);
        for (size_t i = 0; i < srv.nclients; i++) {
                emu_client *cl = &srv.clients[i];
                free(cl->tenant);
                free(cl->client_id);
                if (cl->secret) {
                        OPENSSL_cleanse(cl->secret, strlen(cl->secret));
                        free(cl->secret);
                }
                EVP_PKEY_free(cl->cert_key);
                json_decref(cl->roles);
        }
        json_decref(srv.stats.by_method);
        json_decref(srv.stats.by_kind);
        json_decref(srv.stats.by_status);
        json_decref(srv.stats.by_assertion);
        json_decref(srv.stats.by_protocol);
        json_decref(srv.stats.connections);
        emu_auth_free(&srv);
        free(srv.listen_addr);
        return rc;
}
