/* canopy-guard: deletion threshold, quarantine, notifications, run history
 * and the admin API.
 *
 * The threshold itself is enforced by the workers, atomically in Redis
 * (canopy/guard_policy.h), so it holds while this process restarts. The
 * guard publishes the policy, announces quarantines on `control`, notifies
 * operators once per quarantine, closes run-history windows, and serves the
 * admin API that canopyctl uses.
 *
 * Admin API (Authorization: Bearer TOKEN; role in brackets):
 *   GET  /v1/status                      [viewer]   guard status (JSON)
 *   GET  /v1/held?limit=N                [viewer]   held deletes
 *   GET  /v1/history?connector=&type=&offset=&limit=&format=csv|json [viewer]
 *   GET  /v1/errors?limit=N              [viewer]   objects in error, with their descriptions
 *   GET  /v1/audit?offset=&limit=        [admin]    audit trail
 *   POST /v1/quarantine/approve          [operator] send the held deletes, resume
 *   POST /v1/quarantine/reject           [operator] drop them, resume; ?full_scan=CONNECTOR
 *                                                   asks that connector for a full scan
 *   POST /v1/full-scan?connector=ID      [operator] "perform a full scan on next run"
 *   POST /v1/policy   {"enabled":..,"threshold_count":..,"threshold_percent":..} [admin]
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "admin_auth.h"
#include "canopy/conf_guard.h"
#include "canopy/config.h"
#include "canopy/guard_policy.h"
#include "canopy/http.h"
#include "canopy/kafka.h"
#include "canopy/log.h"
#include "canopy/metrics.h"
#include "canopy/state.h"
#include "notify.h"

#define MOD "guard"
#define MAX_SETS 64

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) {
        (void)sig;
        stop_flag = 1;
}

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct guard {
        canopy_guard_conf cf;
        admin_tokens tokens;
        canopy_state *st;      /* main loop */
        canopy_state *api_st;  /* admin API handlers, under api_lock */
        pthread_mutex_t api_lock;
        canopy_kafka_producer *kp;
        canopy_http *http;
        char last_qid[40];
        bool was_quarantined;
        canopy_metric *m_quarantined, *m_held, *m_window, *m_limit, *m_notify, *m_runs;
        /* Delivery reports of the RunRecords of one publish_runs() batch
         * (the callback runs on this thread, inside poll and flush). */
        size_t runs_acked, runs_failed;
} guard;

/* msg_opaque of a RunRecord; other messages carry NULL. */
static char run_marker;

static void usage(FILE *f) {
        fprintf(f,
                "usage: canopy-guard -c FILE [--set key=value]... [--dump-config]\n"
                "\n"
                "The deletion guard of a Canopy deployment: deletion threshold, quarantine,\n"
                "notifications, run history and the admin API. Settings: docs/CONFIG.md\n"
                "(section guard); the rule: docs/GUARD.md.\n"
                "\n"
                "  -c, --config FILE   YAML configuration file\n"
                "      --set K=V       override one setting (repeatable)\n"
                "      --dump-config   print the effective configuration (secrets redacted) and exit\n"
                "  -h, --help          this help\n");
}

/* ---- admin API ----------------------------------------------------------- */

static admin_role authorize(guard *g, const canopy_http_req *req, canopy_http_resp *resp, admin_role need,
                            const char **who) {
        const char *name = NULL;
        admin_role r = admin_tokens_check(&g->tokens, canopy_http_req_header(req, "Authorization"), &name);
        if (r == ROLE_NONE) {
                canopy_http_resp_printf(resp, 401, "application/json",
                                        "{\"error\":{\"code\":\"Unauthorized\",\"message\":\"a valid bearer token "
                                        "is required (admin.tokens_file)\"}}");
                canopy_http_resp_header(resp, "WWW-Authenticate", "Bearer");
                return ROLE_NONE;
        }
        if (r < need) {
                canopy_http_resp_printf(resp, 403, "application/json",
                                        "{\"error\":{\"code\":\"Forbidden\",\"message\":\"role %s required, "
                                        "token '%s' has role %s\"}}",
                                        admin_role_name(need), name, admin_role_name(r));
                canopy_log(CANOPY_LOG_WARN, MOD, NULL, "admin API: %s %s refused for %s (role %s, needs %s)",
                           req->method, req->path, name, admin_role_name(r), admin_role_name(need));
                return ROLE_NONE;
        }
        *who = name;
        return r;
}

static void resp_json(canopy_http_resp *resp, int status, json_t *o) {
        char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        if (text) {
                canopy_http_resp_set(resp, status, "application/json", text, strlen(text));
                free(text);
        } else {
                canopy_http_resp_printf(resp, 500, "application/json", "{\"error\":{\"code\":\"NoMemory\"}}");
        }
        json_decref(o);
}

static void resp_error(canopy_http_resp *resp, int status, const char *code, const char *msg) {
        resp_json(resp, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}

static json_t *status_json(const canopy_guard_status *s) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:s}", "quarantined", s->quarantined,
                              "reason", s->reason, "detail", s->detail, "id", s->id, "since_ms",
                              (json_int_t)s->since_ms, "window_deletes", (json_int_t)s->window_count, "limit",
                              (json_int_t)s->limit, "held", (json_int_t)s->held, "rejected", (json_int_t)s->rejected,
                              "synced", (json_int_t)s->synced, "enabled", s->enabled, "pause_all", s->pause_all,
                              "window_mode", s->window_full_scan ? "full-scan" : "rolling");
        if (o && s->awaiting_scan[0]) {
                json_object_set_new(o, "awaiting_full_scan", json_string(s->awaiting_scan));
                json_object_set_new(o, "rejected_ms", json_integer((json_int_t)s->rejected_ms));
        }
        if (o && s->window_full_scan && s->scan_window[0])
                json_object_set_new(o, "scan_window", json_string(s->scan_window));
        return o;
}

static size_t arg_size(const canopy_http_req *req, const char *name, size_t def, size_t max) {
        const char *v = canopy_http_req_arg(req, name);
        if (!v || !*v)
                return def;
        char *end = NULL;
        unsigned long long n = strtoull(v, &end, 10);
        if (*end || n > max)
                return max;
        return (size_t)n;
}

static void publish_control(guard *g, canopy_control_kind kind, const char *target, const char *reason,
                            const char *actor) {
        canopy_control_event ce;
        memset(&ce, 0, sizeof(ce));
        ce.kind = kind;
        ce.target = (char *)target;
        ce.reason = (char *)reason;
        ce.actor = (char *)actor;
        ce.ts_ms = now_ms();
        char eb[256];
        canopy_err err = canopy_kafka_produce_control(g->kp, &ce, NULL, eb, sizeof(eb));
        if (err)
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot publish control event: %s (%s)", eb,
                           canopy_err_name(err));
}

static void h_status(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_VIEWER, &who))
                return;
        canopy_guard_status s;
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = canopy_guard_status_get(g->api_st, now_ms(), &s);
        pthread_mutex_unlock(&g->api_lock);
        if (err)
                return resp_error(resp, 503, canopy_err_name(err), canopy_state_errstr(g->api_st));
        resp_json(resp, 200, status_json(&s));
}

static void h_held(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_VIEWER, &who))
                return;
        size_t limit = arg_size(req, "limit", 100, 10000);
        char **v = NULL;
        size_t n = 0;
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = canopy_guard_held(g->api_st, limit, &v, &n);
        pthread_mutex_unlock(&g->api_lock);
        if (err)
                return resp_error(resp, 503, canopy_err_name(err), "cannot read held deletes");
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
                char *tab = strchr(v[i], '\t');
                json_t *info = tab ? json_loads(tab + 1, 0, NULL) : NULL;
                if (tab)
                        *tab = 0;
                json_array_append_new(arr, json_pack("{s:s,s:o}", "mv_id", v[i], "info", info ? info : json_object()));
        }
        canopy_state_strv_free(v);
        resp_json(resp, 200, json_pack("{s:o}", "held", arr));
}

static void csv_field(char *out, size_t cap, size_t *len, const char *s) {
        /* RFC 4180: quote fields with comma, quote or newline. */
        int q = strpbrk(s, ",\"\n\r") != NULL;
        if (q && *len + 1 < cap)
                out[(*len)++] = '"';
        for (; *s && *len + 3 < cap; s++) {
                if (*s == '"')
                        out[(*len)++] = '"';
                out[(*len)++] = *s;
        }
        if (q && *len + 1 < cap)
                out[(*len)++] = '"';
        out[*len] = 0;
}

static void fmt_time(int64_t ms, char *buf, size_t cap) {
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void h_history(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_VIEWER, &who))
                return;
        const char *conn = canopy_http_req_arg(req, "connector");
        const char *type = canopy_http_req_arg(req, "type");
        const char *format = canopy_http_req_arg(req, "format");
        size_t offset = arg_size(req, "offset", 0, 1000000), limit = arg_size(req, "limit", 50, 10000);
        canopy_run_entry *e = NULL;
        size_t n = 0;
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = canopy_run_history(g->api_st, conn, type, offset, limit, &e, &n);
        pthread_mutex_unlock(&g->api_lock);
        if (err)
                return resp_error(resp, 503, canopy_err_name(err), "cannot read the run history");
        if (format && !strcmp(format, "csv")) {
                size_t cap = 256 + n * 512, len = 0;
                char *out = malloc(cap);
                if (!out) {
                        free(e);
                        return resp_error(resp, 500, "NoMemory", "out of memory");
                }
                len = (size_t)snprintf(out, cap,
                                       "connector,object_type,run_type,start,end,total,changed,deleted,filtered,"
                                       "errors,status\r\n");
                for (size_t i = 0; i < n; i++) {
                        char s[32], en[32];
                        fmt_time(e[i].start_ms, s, sizeof(s));
                        fmt_time(e[i].end_ms, en, sizeof(en));
                        csv_field(out, cap, &len, e[i].connector);
                        len += (size_t)snprintf(out + len, cap - len, ",");
                        csv_field(out, cap, &len, e[i].object_type);
                        len += (size_t)snprintf(out + len, cap - len, ",%s,%s,%s,%lld,%lld,%lld,%lld,%lld,%s\r\n",
                                                e[i].run_type, s, en, (long long)e[i].total,
                                                (long long)e[i].changed, (long long)e[i].deleted,
                                                (long long)e[i].filtered, (long long)e[i].errors, e[i].status);
                }
                canopy_http_resp_set(resp, 200, "text/csv", out, len);
                free(out);
                free(e);
                return;
        }
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
                char s[32], en[32];
                fmt_time(e[i].start_ms, s, sizeof(s));
                fmt_time(e[i].end_ms, en, sizeof(en));
                json_array_append_new(
                    arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:s}", "connector", e[i].connector,
                                   "object_type", e[i].object_type, "run_type", e[i].run_type, "start", s, "end", en,
                                   "total", (json_int_t)e[i].total, "changed", (json_int_t)e[i].changed, "deleted",
                                   (json_int_t)e[i].deleted, "filtered", (json_int_t)e[i].filtered, "errors",
                                   (json_int_t)e[i].errors, "status", e[i].status));
        }
        free(e);
        resp_json(resp, 200, json_pack("{s:o}", "history", arr));
}

static void h_audit(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_ADMIN, &who))
                return;
        char **v = NULL;
        size_t n = 0;
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = canopy_audit_list(g->api_st, arg_size(req, "offset", 0, 100000),
                                           arg_size(req, "limit", 100, 10000), &v, &n);
        pthread_mutex_unlock(&g->api_lock);
        if (err)
                return resp_error(resp, 503, canopy_err_name(err), "cannot read the audit trail");
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
                json_t *o = json_loads(v[i], 0, NULL);
                if (o)
                        json_array_append_new(arr, o);
        }
        canopy_state_strv_free(v);
        resp_json(resp, 200, json_pack("{s:o}", "audit", arr));
}

/* The objects in the errors set (conflicts, values Graph refused), at most
 * ?limit= of them (default 100), each its description with its mv_id, and
 * the count of all. */
static void h_errors(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_VIEWER, &who))
                return;
        size_t limit = arg_size(req, "limit", 100, 10000);
        int64_t n = 0;
        json_t *arr = json_array(), *seen = json_object();
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = canopy_state_error_count(g->api_st, &n);
        uint64_t cur = 0;
        do {
                char **ids = NULL, **js = NULL;
                size_t pn = 0;
                if (err || (err = canopy_state_error_scan(g->api_st, &cur, &ids, &js, &pn)))
                        break;
                /* HSCAN may give an entry twice, never skips one. */
                for (size_t i = 0; i < pn && json_array_size(arr) < limit; i++) {
                        if (json_object_get(seen, ids[i]))
                                continue;
                        json_object_set_new(seen, ids[i], json_true());
                        json_t *o = json_loads(js[i], 0, NULL);
                        if (!json_is_object(o)) {
                                json_decref(o);
                                o = json_pack("{s:s}", "description", js[i]);
                        }
                        json_object_set_new(o, "mv_id", json_string(ids[i]));
                        json_array_append_new(arr, o);
                }
                canopy_state_strv_free(ids);
                canopy_state_strv_free(js);
        } while (cur && json_array_size(arr) < limit);
        pthread_mutex_unlock(&g->api_lock);
        json_decref(seen);
        if (err) {
                json_decref(arr);
                return resp_error(resp, 503, canopy_err_name(err), "cannot read the errors set");
        }
        bool more = (int64_t)json_array_size(arr) < n;
        resp_json(resp, 200, json_pack("{s:I,s:o,s:b}", "count", (json_int_t)n, "errors", arr, "truncated", more));
}

static void h_decide(guard *g, const canopy_http_req *req, canopy_http_resp *resp, bool approve) {
        const char *who;
        if (!authorize(g, req, resp, ROLE_OPERATOR, &who))
                return;
        int64_t n = 0;
        const char *fs = canopy_http_req_arg(req, "full_scan");
        if (fs && !*fs)
                fs = NULL;
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = approve ? canopy_guard_approve(g->api_st, who, now_ms(), &n)
                                 : canopy_guard_reject(g->api_st, who, fs, now_ms(), &n);
        pthread_mutex_unlock(&g->api_lock);
        if (err)
                return resp_error(resp, 503, canopy_err_name(err), "cannot record the decision");
        publish_control(g, approve ? CANOPY_CTL_APPROVE : CANOPY_CTL_REJECT, NULL,
                        approve ? "held deletes approved" : "held deletes rejected", who);
        if (!approve && fs)
                publish_control(g, CANOPY_CTL_FULL_SCAN, fs, "requested with the rejection", who);
        json_t *o = json_pack("{s:s,s:I,s:s}", "decision", approve ? "approved" : "rejected",
                              approve ? "released" : "not_sent", (json_int_t)n, "by", who);
        if (o && !approve)
                json_object_set_new(o, "awaiting_full_scan", json_string(fs ? fs : "*"));
        resp_json(resp, 200, o);
}

static void h_approve(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        h_decide(opaque, req, resp, true);
}

static void h_reject(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        h_decide(opaque, req, resp, false);
}

static void h_full_scan(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_OPERATOR, &who))
                return;
        const char *conn = canopy_http_req_arg(req, "connector");
        if (!conn || !*conn)
                return resp_error(resp, 400, "BadRequest", "connector=ID is required");
        publish_control(g, CANOPY_CTL_FULL_SCAN, conn, "perform a full scan on next run", who);
        pthread_mutex_lock(&g->api_lock);
        canopy_audit(g->api_st, who, "operator", "connector.full_scan", conn, now_ms());
        pthread_mutex_unlock(&g->api_lock);
        resp_json(resp, 202, json_pack("{s:s,s:s}", "full_scan", conn, "by", who));
}

static void h_policy(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        guard *g = opaque;
        const char *who;
        if (!authorize(g, req, resp, ROLE_ADMIN, &who))
                return;
        json_error_t je;
        json_t *o = json_loadb(req->body, req->body_len, 0, &je);
        if (!o || !json_is_object(o)) {
                json_decref(o);
                char msg[300];
                snprintf(msg, sizeof(msg), "body must be a JSON object: %s (line %d, column %d)", je.text, je.line,
                         je.column);
                return resp_error(resp, 400, "BadRequest", msg);
        }
        pthread_mutex_lock(&g->api_lock);
        canopy_guard_policy p;
        canopy_err err = canopy_guard_policy_get(g->api_st, &p);
        const char *bad = NULL;
        json_t *v;
        if ((v = json_object_get(o, "enabled")) && !json_is_boolean(v))
                bad = "enabled must be true or false";
        else if (v)
                p.enabled = json_is_true(v);
        if ((v = json_object_get(o, "threshold_count")) && (!json_is_integer(v) || json_integer_value(v) < 1))
                bad = "threshold_count must be an integer >= 1";
        else if (v)
                p.threshold_count = json_integer_value(v);
        if ((v = json_object_get(o, "threshold_percent")) &&
            (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100))
                bad = "threshold_percent must be a number in 0..100";
        else if (v)
                p.threshold_percent = json_number_value(v);
        if (!err && !bad)
                err = canopy_guard_policy_put(g->api_st, &p, who);
        pthread_mutex_unlock(&g->api_lock);
        json_decref(o);
        if (bad)
                return resp_error(resp, 400, "BadRequest", bad);
        if (err)
                return resp_error(resp, 503, canopy_err_name(err), "cannot store the policy");
        publish_control(g, CANOPY_CTL_CONFIG_VERSION, "guard", p.enabled ? "guard policy changed" : "guard disabled",
                        who);
        resp_json(resp, 200, json_pack("{s:b,s:I,s:f}", "enabled", p.enabled, "threshold_count",
                                       (json_int_t)p.threshold_count, "threshold_percent", p.threshold_percent));
}

static bool ready(void *opaque, char *why, size_t whylen) {
        guard *g = opaque;
        canopy_guard_status s;
        pthread_mutex_lock(&g->api_lock);
        canopy_err err = canopy_guard_status_get(g->api_st, now_ms(), &s);
        pthread_mutex_unlock(&g->api_lock);
        if (err)
                snprintf(why, whylen, "redis: %s", canopy_err_name(err));
        return err == CANOPY_OK;
}

/* ---- the loop -------------------------------------------------------------- */

static void notify_quarantine(guard *g, const canopy_guard_status *s) {
        size_t nsample = (size_t)g->cf.sample_size;
        char **held = NULL;
        size_t nheld = 0;
        if (nsample)
                canopy_guard_held(g->st, nsample, &held, &nheld);
        json_t *sample = json_array();
        size_t tcap = 2048 + nheld * 300, tl = 0;
        char *text = malloc(tcap);
        if (!text) {
                canopy_state_strv_free(held);
                json_decref(sample);
                return;
        }
        char since[32];
        fmt_time(s->since_ms, since, sizeof(since));
        tl = (size_t)snprintf(text, tcap,
                              "Canopy quarantined the synchronization pipeline.\n\n"
                              "Reason:   %s\nDetail:   %s\nSince:    %s\nQuarantine id: %s\n"
                              "Deletes in window: %lld (limit %lld)\nDeletes held: %lld\n\n",
                              s->reason, s->detail, since, s->id, (long long)s->window_count, (long long)s->limit,
                              (long long)s->held);
        if (nheld)
                tl += (size_t)snprintf(text + tl, tcap - tl, "Sample of held deletes:\n");
        for (size_t i = 0; i < nheld && tl < tcap; i++) {
                char *tab = strchr(held[i], '\t');
                json_t *info = tab ? json_loads(tab + 1, 0, NULL) : NULL;
                if (tab)
                        *tab = 0;
                tl += (size_t)snprintf(text + tl, tcap - tl, "  %s %s\n", held[i], tab ? tab + 1 : "");
                json_array_append_new(sample, json_pack("{s:s,s:o}", "mv_id", held[i], "info",
                                                        info ? info : json_object()));
        }
        if (tl < tcap)
                snprintf(text + tl, tcap - tl,
                         "\nReview with `canopyctl guard status`, then `canopyctl guard approve` to send the held\n"
                         "deletes or `canopyctl guard reject` to drop them.\n");
        canopy_state_strv_free(held);
        char eb[512];
        bool first = false;
        if (g->cf.smtp_url && *g->cf.smtp_url && g->cf.smtp_to && g->cf.smtp_to[0] &&
            canopy_guard_notify_once(g->st, s->id, "email", &first) == CANOPY_OK && first) {
                char subject[160];
                snprintf(subject, sizeof(subject), "[Canopy] pipeline quarantined: %s", s->reason);
                canopy_err err = notify_email(&g->cf, subject, text, eb, sizeof(eb));
                canopy_metrics_add(g->m_notify, CANOPY_LABELS("email", err ? "error" : "sent"), 1);
                if (err)
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "%s", eb);
                else
                        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "quarantine %s: e-mail sent", s->id);
        }
        if (g->cf.webhook_url && *g->cf.webhook_url &&
            canopy_guard_notify_once(g->st, s->id, "webhook", &first) == CANOPY_OK && first) {
                json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:O}", "event", "quarantine", "id", s->id,
                                      "reason", s->reason, "detail", s->detail, "since", since, "window_deletes",
                                      (json_int_t)s->window_count, "limit", (json_int_t)s->limit, "held",
                                      (json_int_t)s->held, "sample", sample);
                char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
                json_decref(o);
                canopy_err err = body ? notify_webhook(&g->cf, body, eb, sizeof(eb)) : CANOPY_ERR_NOMEM;
                canopy_metrics_add(g->m_notify, CANOPY_LABELS("webhook", err ? "error" : "sent"), 1);
                if (err)
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "%s", body ? eb : "out of memory");
                else
                        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "quarantine %s: webhook sent", s->id);
                free(body);
        }
        json_decref(sample);
        free(text);
}

static void on_delivery(void *msg_opaque, canopy_err err, const char *errstr, int32_t partition, int64_t offset,
                        void *app_opaque) {
        (void)partition;
        (void)offset;
        guard *g = app_opaque;
        if (msg_opaque != &run_marker)
                return;
        if (err) {
                g->runs_failed++;
                canopy_log(CANOPY_LOG_WARN, MOD, NULL, "run history record not delivered to exports: %s", errstr);
        } else {
                g->runs_acked++;
        }
}

static canopy_run_type run_type_of(const char *s) {
        return !strcmp(s, "full") ? CANOPY_RUN_FULL : CANOPY_RUN_DELTA;
}

static canopy_run_status run_status_of(const char *s) {
        if (!strcmp(s, "completed-errors"))
                return CANOPY_RUN_COMPLETED_ERRORS;
        if (!strcmp(s, "stopped-quarantine"))
                return CANOPY_RUN_STOPPED_QUARANTINE;
        return CANOPY_RUN_SUCCESS;
}

/* Publish the closed run-history windows of the outbox to the exports
 * topic as RunRecords, and forget them only once Kafka confirmed every one
 * of the batch; a failed batch is sent again on the next tick (so a record
 * may be published twice, never lost). */
static void publish_runs(guard *g) {
        canopy_run_entry *e = NULL;
        size_t n = 0;
        if (canopy_run_outbox(g->st, 200, &e, &n) || !n) {
                free(e);
                return;
        }
        g->runs_acked = g->runs_failed = 0;
        for (size_t i = 0; i < n; i++) {
                if (!strcmp(e[i].status, "unreadable")) {
                        g->runs_acked++; /* nothing to publish: let it go */
                        continue;
                }
                canopy_run_record rr = {e[i].connector,
                                        e[i].object_type,
                                        run_type_of(e[i].run_type),
                                        e[i].scan_id[0] ? e[i].scan_id : NULL,
                                        e[i].start_ms,
                                        e[i].end_ms,
                                        e[i].total,
                                        e[i].changed,
                                        e[i].deleted,
                                        e[i].filtered,
                                        e[i].errors,
                                        run_status_of(e[i].status),
                                        now_ms()};
                char eb[256];
                canopy_err err = canopy_kafka_produce_run(g->kp, &rr, &run_marker, eb, sizeof(eb));
                if (err) {
                        canopy_log(CANOPY_LOG_WARN, MOD, NULL, "cannot publish a run history record: %s (%s)", eb,
                                   canopy_err_name(err));
                        break;
                }
        }
        canopy_kafka_producer_flush(g->kp, 10000);
        if (g->runs_acked == n && !g->runs_failed) {
                if (canopy_run_outbox_ack(g->st, n) == CANOPY_OK)
                        canopy_metrics_add(g->m_runs, NULL, (double)n);
        }
        free(e);
}

static void tick(guard *g) {
        canopy_guard_status s;
        int64_t now = now_ms();
        canopy_err err = canopy_guard_status_get(g->st, now, &s);
        if (err) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "redis: %s (%s)", canopy_state_errstr(g->st),
                           canopy_err_name(err));
                return;
        }
        canopy_metrics_set(g->m_quarantined, NULL, s.quarantined ? 1 : 0);
        canopy_metrics_set(g->m_held, NULL, (double)s.held);
        canopy_metrics_set(g->m_window, NULL, (double)s.window_count);
        canopy_metrics_set(g->m_limit, NULL, (double)s.limit);
        if (s.quarantined && strcmp(s.id, g->last_qid)) {
                canopy_log(CANOPY_LOG_WARN, MOD, NULL, "quarantine %s: %s: %s", s.id, s.reason, s.detail);
                publish_control(g, CANOPY_CTL_QUARANTINE_ON, NULL, s.reason, "guard");
                snprintf(g->last_qid, sizeof(g->last_qid), "%s", s.id);
                notify_quarantine(g, &s);
        } else if (s.quarantined) {
                /* A notification that failed (e.g. SMTP down) is retried
                 * until it went out once. */
                notify_quarantine(g, &s);
        }
        if (!s.quarantined && g->was_quarantined) {
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "quarantine lifted");
                publish_control(g, CANOPY_CTL_QUARANTINE_OFF, NULL, "lifted", "guard");
        }
        g->was_quarantined = s.quarantined;
        size_t closed = 0;
        if (canopy_run_close(g->st, NULL, NULL, g->cf.history_idle_ms, g->cf.history_max_ms, now,
                             (size_t)g->cf.history_entries, &closed) == CANOPY_OK &&
            closed)
                canopy_log(CANOPY_LOG_DEBUG, MOD, NULL, "closed %zu run-history windows", closed);
        publish_runs(g);
}

static canopy_err split_listen(const char *listen, char *host, size_t hcap, int *port) {
        const char *colon = strrchr(listen, ':');
        if (!colon || colon == listen)
                return CANOPY_ERR_CONFIG;
        snprintf(host, hcap, "%.*s", (int)(colon - listen), listen);
        char *end = NULL;
        long p = strtol(colon + 1, &end, 10);
        if (*end || p < 0 || p > 65535)
                return CANOPY_ERR_CONFIG;
        *port = (int)p;
        return CANOPY_OK;
}

int main(int argc, char **argv) {
        const char *cfg_path = NULL;
        const char *sets[MAX_SETS];
        size_t nsets = 0;
        bool print_config = false;
        static const struct option opts[] = {{"config", 1, 0, 'c'}, {"set", 1, 0, 's'},
                                             {"dump-config", 0, 0, 'p'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
        int c;
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
                switch (c) {
                case 'c': cfg_path = optarg; break;
                case 's':
                        if (nsets == MAX_SETS) {
                                fprintf(stderr, "canopy-guard: more than %d --set options\n", MAX_SETS);
                                return 2;
                        }
                        sets[nsets++] = optarg;
                        break;
                case 'p': print_config = true; break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        canopy_log_init("guard");
        guard g;
        memset(&g, 0, sizeof(g));
        pthread_mutex_init(&g.api_lock, NULL);
        char eb[1024];
        canopy_err err = canopy_conf_load(&canopy_conf_guard, &g.cf, cfg_path, sets, nsets, eb, sizeof(eb));
        if (err) {
                fprintf(stderr, "canopy-guard: %s\n", eb);
                return 2;
        }
        if (print_config) {
                canopy_conf_dump(stdout, &canopy_conf_guard, &g.cf);
                canopy_conf_free(&canopy_conf_guard, &g.cf);
                return 0;
        }
        if (canopy_kafka_register_schemas(&g.cf.kafka, eb, sizeof(eb))) {
                fprintf(stderr, "canopy-guard: %s\n", eb);
                canopy_conf_free(&canopy_conf_guard, &g.cf);
                return 2;
        }
        int rc = 1;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        err = admin_tokens_load(g.cf.admin_tokens_file, &g.tokens, eb, sizeof(eb));
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "%s", eb);
                rc = 2;
                goto out;
        }
        err = canopy_state_new(g.cf.redis_host, (int)g.cf.redis_port, g.cf.redis_password, g.cf.redis_prefix,
                               (int)g.cf.redis_timeout_ms, &g.st);
        if (!err)
                err = canopy_state_new(g.cf.redis_host, (int)g.cf.redis_port, g.cf.redis_password,
                                       g.cf.redis_prefix, (int)g.cf.redis_timeout_ms, &g.api_st);
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "cannot reach Redis at %s:%lld (%s): check redis.host and "
                           "redis.port", g.cf.redis_host, (long long)g.cf.redis_port, canopy_err_name(err));
                goto out;
        }
        canopy_guard_policy p = {g.cf.enabled,
                                 g.cf.threshold_count,
                                 g.cf.threshold_percent,
                                 g.cf.window_ms,
                                 g.cf.window_mode && !strcmp(g.cf.window_mode, "full-scan"),
                                 g.cf.auth_quarantine_ms,
                                 g.cf.ldap_quarantine_ms,
                                 g.cf.pause_all};
        if (!p.enabled)
                canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                           "guard.enabled is false: deletes are NOT limited (recorded in the audit trail)");
        err = canopy_guard_policy_put(g.st, &p, cfg_path ? cfg_path : "defaults");
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "cannot store the guard policy in Redis (%s)",
                           canopy_err_name(err));
                goto out;
        }
        err = canopy_kafka_producer_new(&g.cf.kafka, on_delivery, &g, &g.kp, eb, sizeof(eb));
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "%s", eb);
                goto out;
        }
        canopy_metrics *reg = canopy_metrics_default();
        g.m_quarantined = canopy_metrics_gauge(reg, "canopy_guard_quarantined", "1 while quarantined.", NULL);
        g.m_held = canopy_metrics_gauge(reg, "canopy_guard_held_deletes", "Deletes held by the guard.", NULL);
        g.m_window = canopy_metrics_gauge(reg, "canopy_guard_window_deletes", "Deletes counted in the window.", NULL);
        g.m_limit = canopy_metrics_gauge(reg, "canopy_guard_delete_limit", "Effective delete limit.", NULL);
        g.m_notify = canopy_metrics_counter(reg, "canopy_guard_notifications_total", "Notifications.",
                                            "channel,result");
        g.m_runs = canopy_metrics_counter(reg, "canopy_guard_run_records_total",
                                          "Run-history records published to the exports topic.", NULL);

        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        char host[256];
        int port = 0;
        if (split_listen(g.cf.admin_listen, host, sizeof(host), &port)) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "admin.listen '%s' is not host:port", g.cf.admin_listen);
                rc = 2;
                goto out;
        }
        hc.bind = host;
        hc.port = port;
        hc.tls_cert_file = g.cf.admin_tls_cert;
        hc.tls_key_file = g.cf.admin_tls_key;
        err = canopy_http_new(&hc, &g.http);
        if (!err)
                err = canopy_http_handle(g.http, "GET", "/v1/status", h_status, &g);
        if (!err)
                err = canopy_http_handle(g.http, "GET", "/v1/held", h_held, &g);
        if (!err)
                err = canopy_http_handle(g.http, "GET", "/v1/history", h_history, &g);
        if (!err)
                err = canopy_http_handle(g.http, "GET", "/v1/errors", h_errors, &g);
        if (!err)
                err = canopy_http_handle(g.http, "GET", "/v1/audit", h_audit, &g);
        if (!err)
                err = canopy_http_handle(g.http, "POST", "/v1/quarantine/approve", h_approve, &g);
        if (!err)
                err = canopy_http_handle(g.http, "POST", "/v1/quarantine/reject", h_reject, &g);
        if (!err)
                err = canopy_http_handle(g.http, "POST", "/v1/full-scan", h_full_scan, &g);
        if (!err)
                err = canopy_http_handle(g.http, "POST", "/v1/policy", h_policy, &g);
        if (!err) {
                canopy_http_set_ready(g.http, ready, &g);
                err = canopy_http_start(g.http);
        }
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "cannot start the admin API on %s (%s)", g.cf.admin_listen,
                           canopy_err_name(err));
                goto out;
        }
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "admin API listening on %s:%d%s", host, canopy_http_port(g.http),
                   hc.tls_cert_file ? " (TLS)" : "");
        printf("admin-port %d\n", canopy_http_port(g.http));
        fflush(stdout);

        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        while (!stop_flag) {
                tick(&g);
                canopy_kafka_producer_poll(g.kp, 0);
                for (int i = 0; i < 5 && !stop_flag; i++)
                        usleep(100000);
        }
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "stopping");
        canopy_kafka_producer_flush(g.kp, 5000);
        rc = 0;
out:
        canopy_http_free(g.http);
        canopy_kafka_producer_free(g.kp);
        canopy_state_free(g.st);
        canopy_state_free(g.api_st);
        admin_tokens_free(&g.tokens);
        canopy_conf_free(&canopy_conf_guard, &g.cf);
        curl_global_cleanup();
        return rc;
}
