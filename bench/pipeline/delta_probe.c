/* canopy-bench-delta: end-to-end latency of single changes, from the LDAP
 * write to the change being visible in the Graph emulator.
 *
 * users mode: for each of COUNT changes, replace the displayName of the next
 * DN of a list (round robin), then poll the emulator's users delta link
 * (GET /v1.0/users/delta, resumed from the last deltaLink: only what changed
 * comes back, so a poll costs about a millisecond) until a user with that
 * displayName shows up. Changes are spaced apart (SPACING ms after the
 * previous one was seen), so each one is measured on an idle pipeline.
 *
 * member mode: add one member to a group in LDAP, then poll
 * GET /v1.0/users/{id}/memberOf of the member until the group is listed.
 *
 * Both modes count the emulator's writes (GET /_emulator/stats) from before
 * the first change to SETTLE ms after the last one was seen.
 *
 * Graph coordinates come from the harness environment (CANOPY_TEST_GRAPH_*);
 * LDAP from the options. Prints one line; --json FILE writes the figures.
 *
 *   canopy-bench-delta --ldap-uri U --bind-dn D --pw-file F users --dns FILE
 *                      [--count N] [--warmup W (default 3, not counted)] [--spacing-ms S]
 *                      [--timeout-ms T] [--json FILE]
 *                      [--trace FILE]   (one line per change: index, write and seen
 *                                        times in ms since the epoch)
 *   canopy-bench-delta --ldap-uri U --bind-dn D --pw-file F member --group-dn G
 *                      --group-name NAME --member-dn M --member-nick UID [--json FILE]
 */
#include <curl/curl.h>
#include <jansson.h>
#include <ldap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_DNS 100000
#define MAX_BODY (64u << 20)

typedef struct buf {
        char *p;
        size_t n;
} buf;

static const char *g_url, *g_ca;
static char g_auth[4096];
static CURL *g_h;

static double wall_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
        if (ms <= 0)
                return;
        struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (double)(long)(ms / 1000) * 1000) * 1e6)};
        nanosleep(&ts, NULL);
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud) {
        buf *b = ud;
        size_t add = size * nmemb;
        if (b->n + add > MAX_BODY)
                return 0;
        char *np = realloc(b->p, b->n + add + 1);
        if (!np)
                return 0;
        b->p = np;
        memcpy(b->p + b->n, ptr, add);
        b->n += add;
        b->p[b->n] = 0;
        return add;
}

/* GET (or POST with form) url; returns the parsed JSON body (owned) of a 2xx
 * answer, else NULL. */
static json_t *http_json(const char *url, const char *form, int auth) {
        buf out = {0};
        struct curl_slist *hd = auth ? curl_slist_append(NULL, g_auth) : NULL;
        curl_easy_reset(g_h);
        curl_easy_setopt(g_h, CURLOPT_URL, url);
        curl_easy_setopt(g_h, CURLOPT_CAINFO, g_ca);
        curl_easy_setopt(g_h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(g_h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(g_h, CURLOPT_WRITEDATA, &out);
        curl_easy_setopt(g_h, CURLOPT_TIMEOUT, 60L);
        if (form)
                curl_easy_setopt(g_h, CURLOPT_POSTFIELDS, form);
        CURLcode cc = curl_easy_perform(g_h);
        long st = 0;
        curl_easy_getinfo(g_h, CURLINFO_RESPONSE_CODE, &st);
        curl_slist_free_all(hd);
        json_t *j = NULL;
        if (cc == CURLE_OK && st >= 200 && st < 300 && out.p)
                j = json_loads(out.p, 0, NULL);
        else
                fprintf(stderr, "canopy-bench-delta: %s: %s, HTTP %ld\n", url, curl_easy_strerror(cc), st);
        free(out.p);
        return j;
}

static int get_token(void) {
        const char *tenant = getenv("CANOPY_TEST_GRAPH_TENANT"), *cid = getenv("CANOPY_TEST_GRAPH_CLIENT_ID");
        const char *sf = getenv("CANOPY_TEST_GRAPH_SECRET_FILE");
        char secret[512] = "";
        FILE *f = sf ? fopen(sf, "r") : NULL;
        if (!f || !fgets(secret, sizeof(secret), f)) {
                if (f)
                        fclose(f);
                return -1;
        }
        fclose(f);
        secret[strcspn(secret, "\r\n")] = 0;
        char *es = curl_easy_escape(g_h, secret, 0);
        char form[1024], url[1024];
        snprintf(form, sizeof(form),
                 "grant_type=client_credentials&client_id=%s&client_secret=%s"
                 "&scope=https%%3A%%2F%%2Fgraph.microsoft.com%%2F.default",
                 cid, es);
        curl_free(es);
        snprintf(url, sizeof(url), "%s/%s/oauth2/v2.0/token", g_url, tenant);
        json_t *j = http_json(url, form, 0);
        const char *tok = json_string_value(json_object_get(j, "access_token"));
        if (tok)
                snprintf(g_auth, sizeof(g_auth), "Authorization: Bearer %s", tok);
        json_decref(j);
        return tok ? 0 : -1;
}

static long emu_writes(void) {
        char url[1024];
        snprintf(url, sizeof(url), "%s/_emulator/stats", g_url);
        json_t *j = http_json(url, NULL, 0);
        long w = j ? (long)json_integer_value(json_object_get(j, "writes")) : -1;
        json_decref(j);
        return w;
}

/* Follow nextLinks from url to the deltaLink; calls seen(value) on every
 * object. Returns the deltaLink (owned) or NULL. */
static char *delta_round(const char *url, const char *want, int *found) {
        char *next = strdup(url);
        while (next) {
                json_t *j = http_json(next, NULL, 1);
                free(next);
                next = NULL;
                if (!j)
                        return NULL;
                size_t i;
                json_t *v;
                json_array_foreach(json_object_get(j, "value"), i, v) {
                        const char *dn = json_string_value(json_object_get(v, "displayName"));
                        if (want && dn && !strcmp(dn, want))
                                *found = 1;
                }
                const char *nl = json_string_value(json_object_get(j, "@odata.nextLink"));
                const char *dl = json_string_value(json_object_get(j, "@odata.deltaLink"));
                if (nl) {
                        next = strdup(nl);
                } else {
                        char *r = dl ? strdup(dl) : NULL;
                        json_decref(j);
                        return r;
                }
                json_decref(j);
        }
        return NULL;
}

static LDAP *ldap_open(const char *uri, const char *dn, const char *pwfile) {
        char pw[512] = "";
        FILE *f = fopen(pwfile, "r");
        if (!f || !fgets(pw, sizeof(pw), f)) {
                fprintf(stderr, "canopy-bench-delta: cannot read %s\n", pwfile);
                if (f)
                        fclose(f);
                return NULL;
        }
        fclose(f);
        pw[strcspn(pw, "\r\n")] = 0;
        LDAP *ld = NULL;
        int v3 = LDAP_VERSION3;
        if (ldap_initialize(&ld, uri) != LDAP_SUCCESS)
                return NULL;
        ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3);
        struct berval cred = {strlen(pw), pw};
        int rc = ldap_sasl_bind_s(ld, dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
        if (rc != LDAP_SUCCESS) {
                fprintf(stderr, "canopy-bench-delta: bind %s: %s\n", dn, ldap_err2string(rc));
                ldap_unbind_ext_s(ld, NULL, NULL);
                return NULL;
        }
        return ld;
}

static int ldap_mod1(LDAP *ld, const char *dn, int op, const char *attr, const char *val) {
        char *vals[2] = {(char *)val, NULL};
        LDAPMod m = {op, (char *)attr, {.modv_strvals = vals}};
        LDAPMod *mods[2] = {&m, NULL};
        int rc = ldap_modify_ext_s(ld, dn, mods, NULL, NULL);
        if (rc != LDAP_SUCCESS)
                fprintf(stderr, "canopy-bench-delta: modify %s: %s\n", dn, ldap_err2string(rc));
        return rc == LDAP_SUCCESS ? 0 : -1;
}

static int cmpd(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static double pct(const double *s, int n, double p) {
        if (n <= 0)
                return 0;
        int i = (int)((p / 100.0) * (double)n + 0.999999) - 1;
        if (i < 0)
                i = 0;
        if (i >= n)
                i = n - 1;
        return s[i];
}

static char **read_lines(const char *path, int *ret_n) {
        FILE *f = fopen(path, "r");
        if (!f)
                return NULL;
        char **v = calloc(MAX_DNS, sizeof(*v));
        char line[4096];
        int n = 0;
        while (v && n < MAX_DNS && fgets(line, sizeof(line), f)) {
                line[strcspn(line, "\r\n")] = 0;
                if (line[0])
                        v[n++] = strdup(line);
        }
        fclose(f);
        *ret_n = n;
        return v;
}

static int run_users(LDAP *ld, const char *dns_file, int count, int warmup, int spacing, int timeout, int settle,
                     const char *trace_file, json_t *res) {
        FILE *trace = trace_file ? fopen(trace_file, "w") : NULL;
        int ndn = 0;
        char **dns = read_lines(dns_file, &ndn);
        if (!dns || ndn == 0) {
                fprintf(stderr, "canopy-bench-delta: no DN in %s\n", dns_file);
                return 1;
        }
        char url[1024];
        snprintf(url, sizeof(url), "%s/v1.0/users/delta?$select=id,displayName&$top=999", g_url);
        int dummy = 0;
        double t = now_ms();
        char *dl = delta_round(url, NULL, &dummy);
        if (!dl)
                return 1;
        double initial_ms = now_ms() - t;
        long w0 = 0;
        double *lat = calloc((size_t)count, sizeof(double));
        long polls = 0;
        int rc = 0, done = 0;
        /* The first `warmup` changes (connections, tokens, consumer
         * assignment) are made and waited for, but not counted. */
        for (int i = -warmup; i < count; i++) {
                char want[256];
                if (i == 0)
                        w0 = emu_writes();
                snprintf(want, sizeof(want), "Bench Delta %d %ld", i, (long)getpid());
                double t0 = now_ms(), w0_wall = wall_ms();
                const char *dn = dns[(i + warmup) % ndn];
                if (ldap_mod1(ld, dn, LDAP_MOD_REPLACE, "displayName", want)) {
                        rc = 1;
                        break;
                }
                int found = 0;
                while (!found) {
                        char *nd = delta_round(dl, want, &found);
                        polls++;
                        if (!nd) {
                                rc = 1;
                                break;
                        }
                        free(dl);
                        dl = nd;
                        if (!found && now_ms() - t0 > timeout)
                                break;
                        if (!found)
                                sleep_ms(2);
                }
                if (rc)
                        break;
                if (!found) {
                        fprintf(stderr, "canopy-bench-delta: change %d (%s) not seen after %d ms\n", i, dn, timeout);
                        rc = 1;
                        break;
                }
                if (i < 0) {
                        sleep_ms(spacing);
                        continue;
                }
                lat[done++] = now_ms() - t0;
                if (trace)
                        fprintf(trace, "%d %.1f %.1f\n", i, w0_wall, wall_ms());
                sleep_ms(spacing);
        }
        sleep_ms(settle);
        long w1 = emu_writes();
        qsort(lat, (size_t)done, sizeof(double), cmpd);
        double sum = 0;
        for (int i = 0; i < done; i++)
                sum += lat[i];
        double p50 = pct(lat, done, 50), p99 = pct(lat, done, 99), mx = done ? lat[done - 1] : 0;
        printf("delta-latency %d changes: p50 %.0f ms, p99 %.0f ms, max %.0f ms, mean %.0f ms; %ld Graph writes "
               "(%.2f per change), %ld polls; initial delta round %.0f ms\n",
               done, p50, p99, mx, done ? sum / done : 0, w1 - w0, done ? (double)(w1 - w0) / done : 0, polls,
               initial_ms);
        json_object_set_new(res, "changes", json_integer(done));
        json_object_set_new(res, "p50_ms", json_real(p50));
        json_object_set_new(res, "p99_ms", json_real(p99));
        json_object_set_new(res, "max_ms", json_real(mx));
        json_object_set_new(res, "mean_ms", json_real(done ? sum / done : 0));
        json_object_set_new(res, "graph_writes", json_integer(w1 - w0));
        json_object_set_new(res, "polls", json_integer(polls));
        free(lat);
        free(dl);
        if (trace)
                fclose(trace);
        for (int i = 0; i < ndn; i++)
                free(dns[i]);
        free(dns);
        return rc || done < count;
}

/* The Entra id of the first object matching a filter on a collection. */
static char *find_id(const char *coll, const char *prop, const char *val) {
        char *ev = curl_easy_escape(g_h, val, 0);
        char url[2048];
        snprintf(url, sizeof(url), "%s/v1.0/%s?$filter=%s%%20eq%%20'%s'&$select=id", g_url, coll, prop, ev);
        curl_free(ev);
        json_t *j = http_json(url, NULL, 1);
        const char *id = json_string_value(json_object_get(json_array_get(json_object_get(j, "value"), 0), "id"));
        char *r = id ? strdup(id) : NULL;
        json_decref(j);
        return r;
}

static int run_member(LDAP *ld, const char *group_dn, const char *group_name, const char *member_dn,
                      const char *member_nick, int timeout, int settle, json_t *res) {
        char *gid = find_id("groups", "displayName", group_name);
        char *uid = find_id("users", "mailNickname", member_nick);
        if (!gid || !uid) {
                fprintf(stderr, "canopy-bench-delta: group '%s' or user '%s' not in the emulator\n", group_name,
                        member_nick);
                free(gid);
                free(uid);
                return 1;
        }
        char url[1024];
        snprintf(url, sizeof(url), "%s/v1.0/users/%s/memberOf?$select=id&$top=999", g_url, uid);
        long w0 = emu_writes();
        double t0 = now_ms(), ms = -1;
        long polls = 0;
        int rc = ldap_mod1(ld, group_dn, LDAP_MOD_ADD, "member", member_dn);
        while (!rc) {
                json_t *j = http_json(url, NULL, 1);
                polls++;
                if (!j) {
                        rc = 1;
                        break;
                }
                size_t i;
                json_t *v;
                int found = 0;
                json_array_foreach(json_object_get(j, "value"), i, v) {
                        const char *id = json_string_value(json_object_get(v, "id"));
                        if (id && !strcmp(id, gid))
                                found = 1;
                }
                json_decref(j);
                if (found) {
                        ms = now_ms() - t0;
                        break;
                }
                if (now_ms() - t0 > timeout) {
                        fprintf(stderr, "canopy-bench-delta: member not seen after %d ms\n", timeout);
                        rc = 1;
                        break;
                }
                sleep_ms(2);
        }
        sleep_ms(settle);
        long w1 = emu_writes();
        printf("large-group member add: %.0f ms, %ld Graph writes, %ld polls\n", ms, w1 - w0, polls);
        json_object_set_new(res, "latency_ms", json_real(ms));
        json_object_set_new(res, "graph_writes", json_integer(w1 - w0));
        free(gid);
        free(uid);
        return rc;
}

static void usage(FILE *f) {
        fprintf(f, "usage: canopy-bench-delta --ldap-uri U --bind-dn D --pw-file F\n"
                   "         users --dns FILE [--count N] [--warmup W] [--spacing-ms S]\n"
                   "       | member --group-dn G --group-name NAME --member-dn M --member-nick UID\n"
                   "       [--timeout-ms T] [--settle-ms S] [--json FILE] [--trace FILE]\n");
}

int main(int argc, char **argv) {
        const char *uri = NULL, *bind = NULL, *pwf = NULL, *mode = NULL, *dns = NULL, *json_out = NULL;
        const char *gdn = NULL, *gname = NULL, *mdn = NULL, *mnick = NULL, *trace = NULL;
        int count = 500, warmup = 3, spacing = 50, timeout = 60000, settle = 2000;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name, var)                                                                                                 \
        if (!strcmp(a, name) && v) {                                                                                   \
                var = v;                                                                                               \
                i++;                                                                                                   \
                continue;                                                                                              \
        }
#define IOPT(name, var)                                                                                                \
        if (!strcmp(a, name) && v) {                                                                                   \
                var = atoi(v);                                                                                         \
                i++;                                                                                                   \
                continue;                                                                                              \
        }
                OPT("--ldap-uri", uri) OPT("--bind-dn", bind) OPT("--pw-file", pwf) OPT("--dns", dns);
                OPT("--json", json_out) OPT("--trace", trace) OPT("--group-dn", gdn) OPT("--group-name", gname) OPT("--member-dn", mdn);
                OPT("--member-nick", mnick) IOPT("--count", count) IOPT("--spacing-ms", spacing) IOPT("--warmup", warmup);
                IOPT("--timeout-ms", timeout) IOPT("--settle-ms", settle);
                if (!mode && (!strcmp(a, "users") || !strcmp(a, "member"))) {
                        mode = a;
                        continue;
                }
                usage(stderr);
                return 2;
        }
        if (!uri || !bind || !pwf || !mode || count < 1 || count > MAX_DNS || (!strcmp(mode, "users") && !dns) ||
            (!strcmp(mode, "member") && (!gdn || !gname || !mdn || !mnick))) {
                usage(stderr);
                return 2;
        }
        g_url = getenv("CANOPY_TEST_GRAPH_URL");
        g_ca = getenv("CANOPY_TEST_GRAPH_CA");
        if (!g_url || !g_ca) {
                fprintf(stderr, "SKIP: CANOPY_TEST_GRAPH_* not set (run under the harness)\n");
                return 77;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        g_h = curl_easy_init();
        int rc = 1;
        json_t *res = json_object();
        LDAP *ld = NULL;
        if (get_token()) {
                fprintf(stderr, "canopy-bench-delta: cannot get a token\n");
                goto out;
        }
        ld = ldap_open(uri, bind, pwf);
        if (!ld)
                goto out;
        if (!strcmp(mode, "users"))
                rc = run_users(ld, dns, count, warmup, spacing, timeout, settle, trace, res);
        else
                rc = run_member(ld, gdn, gname, mdn, mnick, timeout, settle, res);
        if (json_out && json_dump_file(res, json_out, JSON_INDENT(2)))
                rc = 1;
out:
        if (ld)
                ldap_unbind_ext_s(ld, NULL, NULL);
        json_decref(res);
        curl_easy_cleanup(g_h);
        curl_global_cleanup();
        return rc;
}
