/* ctl_guard.c: canopyctl guard status|held|approve|reject|full-scan|audit|policy
 * and canopyctl history, over the guard's admin API (docs/GUARD.md).
 *
 * The API address comes from --url or CANOPY_ADMIN_URL (default
 * http://127.0.0.1:9108); the bearer token from --token-file,
 * CANOPY_ADMIN_TOKEN_FILE or CANOPY_ADMIN_TOKEN. The token is never printed. */
#include "ctl.h"
#include "ctl_guard.h"

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CTL_RESPONSE_MAX (16u * 1024u * 1024u)

typedef struct api {
        const char *url;
        char token[512];
        const char *ca_file;
} api;

typedef struct buf {
        char *p;
        size_t len;
        int overflow;
} buf;

static size_t on_data(char *d, size_t s, size_t n, void *o) {
        buf *b = o;
        size_t add = s * n;
        if (b->len + add > CTL_RESPONSE_MAX) {
                b->overflow = 1;
                return 0;
        }
        char *np = realloc(b->p, b->len + add + 1);
        if (!np)
                return 0;
        b->p = np;
        memcpy(b->p + b->len, d, add);
        b->len += add;
        b->p[b->len] = 0;
        return add;
}

static int load_token(api *a, const char *file) {
        const char *env = getenv("CANOPY_ADMIN_TOKEN");
        if (!file)
                file = getenv("CANOPY_ADMIN_TOKEN_FILE");
        if (file) {
                FILE *f = fopen(file, "r");
                if (!f) {
                        fprintf(stderr, "canopyctl: cannot read the token file %s: %m\n", file);
                        return -1;
                }
                if (!fgets(a->token, sizeof(a->token), f))
                        a->token[0] = 0;
                fclose(f);
                a->token[strcspn(a->token, "\r\n \t")] = 0;
        } else if (env) {
                snprintf(a->token, sizeof(a->token), "%s", env);
        }
        if (!a->token[0]) {
                fprintf(stderr, "canopyctl: no admin token: pass --token-file FILE or set CANOPY_ADMIN_TOKEN_FILE\n");
                return -1;
        }
        return 0;
}

/* Call the API; returns the HTTP status (or -1) and the body in *out. */
static long call(const api *a, const char *method, const char *path, const char *body, buf *out) {
        CURL *c = curl_easy_init();
        if (!c)
                return -1;
        char url[2048], auth[600];
        snprintf(url, sizeof(url), "%s%s", a->url, path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", a->token);
        struct curl_slist *h = curl_slist_append(NULL, auth);
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (body)
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        else if (!strcmp(method, "POST"))
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
        if (a->ca_file)
                curl_easy_setopt(c, CURLOPT_CAINFO, a->ca_file);
        CURLcode rc = curl_easy_perform(c);
        long status = -1;
        if (rc == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        else
                fprintf(stderr, "canopyctl: %s %s: %s (is canopy-guard running? --url / CANOPY_ADMIN_URL)\n",
                        method, url, curl_easy_strerror(rc));
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return status;
}

/* Print the API's error body readably; returns the exit status. */
static int api_error(long status, const buf *b) {
        if (status < 0)
                return 1;
        json_t *o = b->p ? json_loads(b->p, 0, NULL) : NULL;
        const char *msg = o ? json_string_value(json_object_get(json_object_get(o, "error"), "message")) : NULL;
        fprintf(stderr, "canopyctl: HTTP %ld: %s\n", status, msg ? msg : (b->p ? b->p : ""));
        json_decref(o);
        return status == 401 || status == 403 ? 3 : 1;
}

static void fmt_ms(json_int_t ms, char *out, size_t cap) {
        if (ms <= 0) {
                snprintf(out, cap, "-");
                return;
        }
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(out, cap, "%Y-%m-%d %H:%M:%SZ", &tm);
}

static int print_status(const buf *b) {
        json_t *o = json_loads(b->p ? b->p : "", 0, NULL);
        if (!o) {
                fprintf(stderr, "canopyctl: unreadable status\n");
                return 1;
        }
        char since[40];
        fmt_ms(json_integer_value(json_object_get(o, "since_ms")), since, sizeof(since));
        int q = json_is_true(json_object_get(o, "quarantined"));
        printf("guard:          %s\n", json_is_true(json_object_get(o, "enabled")) ? "enabled" : "DISABLED");
        printf("state:          %s\n", q ? "QUARANTINED" : "running");
        if (q) {
                printf("reason:         %s\n", json_string_value(json_object_get(o, "reason")));
                printf("detail:         %s\n", json_string_value(json_object_get(o, "detail")));
                printf("since:          %s\n", since);
                printf("quarantine id:  %s\n", json_string_value(json_object_get(o, "id")));
        }
        printf("deletes:        %lld in window, limit %lld\n",
               (long long)json_integer_value(json_object_get(o, "window_deletes")),
               (long long)json_integer_value(json_object_get(o, "limit")));
        printf("held deletes:   %lld\n", (long long)json_integer_value(json_object_get(o, "held")));
        const char *aw = json_string_value(json_object_get(o, "awaiting_full_scan"));
        if (aw) {
                char at[40];
                fmt_ms(json_integer_value(json_object_get(o, "rejected_ms")), at, sizeof(at));
                printf("rejected:       %lld deletes at %s; waiting for a full scan of %s\n",
                       (long long)json_integer_value(json_object_get(o, "rejected")), at,
                       strcmp(aw, "*") ? aw : "any connector");
        }
        const char *wm = json_string_value(json_object_get(o, "window_mode"));
        const char *sw = json_string_value(json_object_get(o, "scan_window"));
        printf("window:         %s%s%s\n", wm ? wm : "rolling", sw ? ", scan " : "", sw ? sw : "");
        printf("synced objects: %lld\n", (long long)json_integer_value(json_object_get(o, "synced")));
        printf("while quarantined: %s\n",
               json_is_true(json_object_get(o, "pause_all")) ? "all exports pause" : "deletes are held");
        json_decref(o);
        return 0;
}

static void guard_usage(FILE *f) {
        fprintf(f, "usage: canopyctl guard [--url URL] [--token-file F] [--ca-file F] COMMAND\n"
                   "  status                     quarantine state, deletes counted and held\n"
                   "  held [--limit N]           the held deletes\n"
                   "  approve                    send exactly the held deletes, then resume   (operator)\n"
                   "  reject [--full-scan CONN]  send none of the held deletes; stay quarantined until\n"
                   "                             a full scan of CONN (any connector without it) ends,\n"
                   "                             which decides them again; --full-scan also asks CONN\n"
                   "                             for that scan: fix the scope first           (operator)\n"
                   "  full-scan CONN             perform a full scan of CONN on its next run   (operator)\n"
                   "  audit [--limit N]          who changed what, when                        (admin)\n"
                   "  policy [--enable|--disable] [--threshold N] [--percent P]             (admin)\n"
                   "Exit status: 0 ok, 1 error, 2 usage, 3 not authorized.\n");
}

static int common_opts(int argc, char **argv, api *a, const char **token_file, int *i) {
        a->url = getenv("CANOPY_ADMIN_URL");
        if (!a->url)
                a->url = "http://127.0.0.1:9108";
        for (; *i < argc; (*i)++) {
                if (!strcmp(argv[*i], "--url") && *i + 1 < argc)
                        a->url = argv[++*i];
                else if (!strcmp(argv[*i], "--token-file") && *i + 1 < argc)
                        *token_file = argv[++*i];
                else if (!strcmp(argv[*i], "--ca-file") && *i + 1 < argc)
                        a->ca_file = argv[++*i];
                else
                        break;
        }
        return 0;
}

int ctl_guard_main(int argc, char **argv) {
        api a;
        memset(&a, 0, sizeof(a));
        const char *token_file = NULL;
        int i = 0;
        common_opts(argc, argv, &a, &token_file, &i);
        if (i >= argc || !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                guard_usage(i >= argc ? stderr : stdout);
                return i >= argc ? 2 : 0;
        }
        const char *cmd = argv[i++];
        int rc = 0;
        buf b = {NULL, 0, 0};
        long st;
        char path[1024];
        if (load_token(&a, token_file))
                return 2;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (!strcmp(cmd, "status")) {
                st = call(&a, "GET", "/v1/status", NULL, &b);
                rc = st == 200 ? print_status(&b) : api_error(st, &b);
        } else if (!strcmp(cmd, "held")) {
                const char *limit = "100";
                if (i + 1 < argc && !strcmp(argv[i], "--limit"))
                        limit = argv[i + 1];
                snprintf(path, sizeof(path), "/v1/held?limit=%s", limit);
                st = call(&a, "GET", path, NULL, &b);
                if (st != 200) {
                        rc = api_error(st, &b);
                } else {
                        json_t *o = json_loads(b.p, 0, NULL);
                        json_t *arr = json_object_get(o, "held"), *it;
                        size_t k;
                        printf("%-34s %s\n", "METAVERSE ID", "OBJECT");
                        json_array_foreach(arr, k, it) {
                                char *info = json_dumps(json_object_get(it, "info"), JSON_COMPACT | JSON_SORT_KEYS);
                                printf("%-34s %s\n", json_string_value(json_object_get(it, "mv_id")), info ? info : "");
                                free(info);
                        }
                        json_decref(o);
                }
        } else if (!strcmp(cmd, "approve") || !strcmp(cmd, "reject")) {
                const char *fs = NULL;
                if (!strcmp(cmd, "reject") && i + 1 < argc && !strcmp(argv[i], "--full-scan"))
                        fs = argv[i + 1];
                char *esc = fs ? curl_easy_escape(NULL, fs, 0) : NULL;
                snprintf(path, sizeof(path), "/v1/quarantine/%s%s%s", cmd, esc ? "?full_scan=" : "", esc ? esc : "");
                curl_free(esc);
                st = call(&a, "POST", path, NULL, &b);
                if (st != 200) {
                        rc = api_error(st, &b);
                } else {
                        json_t *o = json_loads(b.p, 0, NULL);
                        if (!strcmp(cmd, "approve"))
                                printf("approved: %lld held deletes released\n",
                                       (long long)json_integer_value(json_object_get(o, "released")));
                        else
                                printf("rejected: %lld held deletes not sent; quarantined until a full scan of %s "
                                       "ends%s%s\n",
                                       (long long)json_integer_value(json_object_get(o, "not_sent")),
                                       fs ? fs : "any connector", fs ? "; full scan requested for " : "",
                                       fs ? fs : "");
                        json_decref(o);
                }
        } else if (!strcmp(cmd, "full-scan")) {
                if (i >= argc) {
                        guard_usage(stderr);
                        rc = 2;
                } else {
                        char *esc = curl_easy_escape(NULL, argv[i], 0);
                        snprintf(path, sizeof(path), "/v1/full-scan?connector=%s", esc ? esc : "");
                        curl_free(esc);
                        st = call(&a, "POST", path, NULL, &b);
                        rc = st == 202 ? (printf("full scan requested for %s\n", argv[i]), 0) : api_error(st, &b);
                }
        } else if (!strcmp(cmd, "audit")) {
                const char *limit = "50";
                if (i + 1 < argc && !strcmp(argv[i], "--limit"))
                        limit = argv[i + 1];
                snprintf(path, sizeof(path), "/v1/audit?limit=%s", limit);
                st = call(&a, "GET", path, NULL, &b);
                if (st != 200) {
                        rc = api_error(st, &b);
                } else {
                        json_t *o = json_loads(b.p, 0, NULL), *it;
                        size_t k;
                        json_array_foreach(json_object_get(o, "audit"), k, it) {
                                char when[40];
                                fmt_ms(json_integer_value(json_object_get(it, "ts")), when, sizeof(when));
                                printf("%s  %-12s %-9s %-22s %s\n", when, json_string_value(json_object_get(it, "who")),
                                       json_string_value(json_object_get(it, "role")),
                                       json_string_value(json_object_get(it, "what")),
                                       json_string_value(json_object_get(it, "detail")));
                        }
                        json_decref(o);
                }
        } else if (!strcmp(cmd, "policy")) {
                json_t *o = json_object();
                for (; i < argc; i++) {
                        if (!strcmp(argv[i], "--enable"))
                                json_object_set_new(o, "enabled", json_true());
                        else if (!strcmp(argv[i], "--disable"))
                                json_object_set_new(o, "enabled", json_false());
                        else if (!strcmp(argv[i], "--threshold") && i + 1 < argc)
                                json_object_set_new(o, "threshold_count", json_integer(atoll(argv[++i])));
                        else if (!strcmp(argv[i], "--percent") && i + 1 < argc)
                                json_object_set_new(o, "threshold_percent", json_real(atof(argv[++i])));
                        else {
                                fprintf(stderr, "canopyctl: unknown policy option %s\n", argv[i]);
                                rc = 2;
                        }
                }
                char *body = json_dumps(o, JSON_COMPACT);
                json_decref(o);
                if (!rc) {
                        st = call(&a, "POST", "/v1/policy", body, &b);
                        rc = st == 200 ? (printf("%s\n", b.p), 0) : api_error(st, &b);
                }
                free(body);
        } else {
                fprintf(stderr, "canopyctl: unknown guard command '%s'\n", cmd);
                guard_usage(stderr);
                rc = 2;
        }
        free(b.p);
        memset(a.token, 0, sizeof(a.token));
        curl_global_cleanup();
        return rc;
}

int ctl_history_main(int argc, char **argv) {
        api a;
        memset(&a, 0, sizeof(a));
        const char *token_file = NULL, *conn = NULL, *type = NULL;
        long limit = 50, offset = 0;
        int csv = 0;
        int i = 0;
        common_opts(argc, argv, &a, &token_file, &i);
        for (; i < argc; i++) {
                if (!strcmp(argv[i], "--csv"))
                        csv = 1;
                else if (!strcmp(argv[i], "--connector") && i + 1 < argc)
                        conn = argv[++i];
                else if (!strcmp(argv[i], "--type") && i + 1 < argc)
                        type = argv[++i];
                else if (!strcmp(argv[i], "--limit") && i + 1 < argc)
                        limit = atol(argv[++i]);
                else if (!strcmp(argv[i], "--offset") && i + 1 < argc)
                        offset = atol(argv[++i]);
                else if (!strcmp(argv[i], "--url") && i + 1 < argc)
                        a.url = argv[++i];
                else if (!strcmp(argv[i], "--token-file") && i + 1 < argc)
                        token_file = argv[++i];
                else {
                        fprintf(stderr,
                                "usage: canopyctl history [--url URL] [--token-file F] [--csv] [--connector ID]\n"
                                "                         [--type user|group|contact] [--limit N] [--offset N]\n");
                        return !strcmp(argv[i], "--help") ? 0 : 2;
                }
        }
        if (limit < 1 || offset < 0) {
                fprintf(stderr, "canopyctl: --limit must be >= 1 and --offset >= 0\n");
                return 2;
        }
        if (load_token(&a, token_file))
                return 2;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        char path[1024];
        char *ce = conn ? curl_easy_escape(NULL, conn, 0) : NULL, *te = type ? curl_easy_escape(NULL, type, 0) : NULL;
        snprintf(path, sizeof(path), "/v1/history?limit=%ld&offset=%ld%s%s%s%s%s", limit, offset,
                 csv ? "&format=csv" : "", ce ? "&connector=" : "", ce ? ce : "", te ? "&type=" : "", te ? te : "");
        curl_free(ce);
        curl_free(te);
        buf b = {NULL, 0, 0};
        long st = call(&a, "GET", path, NULL, &b);
        int rc = 0;
        if (st != 200) {
                rc = api_error(st, &b);
        } else if (csv) {
                fputs(b.p ? b.p : "", stdout);
        } else {
                json_t *o = json_loads(b.p, 0, NULL), *it;
                size_t k;
                printf("%-16s %-8s %-5s %-20s %-20s %7s %7s %7s %8s %6s %s\n", "CONNECTOR", "TYPE", "RUN", "START",
                       "END", "TOTAL", "CHANGED", "DELETED", "FILTERED", "ERRORS", "STATUS");
                json_array_foreach(json_object_get(o, "history"), k, it) {
                        printf("%-16s %-8s %-5s %-20s %-20s %7lld %7lld %7lld %8lld %6lld %s\n",
                               json_string_value(json_object_get(it, "connector")),
                               json_string_value(json_object_get(it, "object_type")),
                               json_string_value(json_object_get(it, "run_type")),
                               json_string_value(json_object_get(it, "start")),
                               json_string_value(json_object_get(it, "end")),
                               (long long)json_integer_value(json_object_get(it, "total")),
                               (long long)json_integer_value(json_object_get(it, "changed")),
                               (long long)json_integer_value(json_object_get(it, "deleted")),
                               (long long)json_integer_value(json_object_get(it, "filtered")),
                               (long long)json_integer_value(json_object_get(it, "errors")),
                               json_string_value(json_object_get(it, "status")));
                }
                json_decref(o);
        }
        free(b.p);
        memset(a.token, 0, sizeof(a.token));
        curl_global_cleanup();
        return rc;
}

static void guard_usage_stdout(void) {
        guard_usage(stdout);
}

const canopyctl_cmd canopyctl_cmd_guard = {"guard", "deletion guard: status, held deletes, approve, reject, audit",
                                           ctl_guard_main, guard_usage_stdout};
