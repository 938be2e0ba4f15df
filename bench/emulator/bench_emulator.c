/* bench_emulator: request rate of canopy-graph-emulator under a curl multi
 * load generator (keep-alive connections, C requests in flight), for
 * creates, reads by id, hard-match filters, batched creates and full list
 * paging. Prints one line per phase; with --json FILE also writes them.
 *
 * Run under the harness (it exports CANOPY_TEST_GRAPH_*):
 *   tests/harness/run-with --emulator --bin build/bin -- build/bin/canopy-bench-emulator \
 *       [--users N] [--concurrency C] [--json FILE]
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct buf {
        char *p;
        size_t n;
} buf;

typedef struct job {
        CURL *h;
        struct curl_slist *hdrs;
        char *body;
        buf out;
        long idx;
        char url[1024];
} job;

static const char *g_url, *g_ca;
static char g_auth[4096];
static char **g_ids;
static long g_nids;
static json_t *g_results;

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud) {
        buf *b = ud;
        size_t add = size * nmemb;
        char *np = realloc(b->p, b->n + add + 1);
        if (!np)
                return 0;
        b->p = np;
        memcpy(b->p + b->n, ptr, add);
        b->n += add;
        b->p[b->n] = 0;
        return add;
}

/* Fill method/url/body for request i of a phase. body (owned) may be NULL. */
typedef void (*make_fn)(long i, const char **method, char *url, size_t cap, char **body);
/* Called with the status and body of request i. Returns 0 if it counts as ok. */
typedef int (*done_fn)(long i, long status, const char *body);

static void job_setup(job *j, long i, make_fn mk) {
        const char *method = "GET";
        char *body = NULL;
        mk(i, &method, j->url, sizeof(j->url), &body);
        j->idx = i;
        free(j->out.p);
        j->out.p = NULL;
        j->out.n = 0;
        free(j->body);
        j->body = body;
        curl_slist_free_all(j->hdrs);
        j->hdrs = curl_slist_append(NULL, g_auth);
        if (body)
                j->hdrs = curl_slist_append(j->hdrs, "Content-Type: application/json");
        curl_easy_setopt(j->h, CURLOPT_URL, j->url);
        curl_easy_setopt(j->h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(j->h, CURLOPT_HTTPHEADER, j->hdrs);
        curl_easy_setopt(j->h, CURLOPT_POSTFIELDS, body);
        if (!body)
                curl_easy_setopt(j->h, CURLOPT_HTTPGET, strcmp(method, "GET") ? 0L : 1L);
        curl_easy_setopt(j->h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(j->h, CURLOPT_WRITEDATA, &j->out);
        curl_easy_setopt(j->h, CURLOPT_PRIVATE, j);
        curl_easy_setopt(j->h, CURLOPT_CAINFO, g_ca);
        curl_easy_setopt(j->h, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
}

static int phase(const char *name, long total, int conc, make_fn mk, done_fn done, long objects_per_req) {
        CURLM *m = curl_multi_init();
        curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)conc);
        job *jobs = calloc((size_t)conc, sizeof(*jobs));
        long next = 0, finished = 0, errors = 0;
        double t0 = now_s();
        for (int k = 0; k < conc && next < total; k++) {
                jobs[k].h = curl_easy_init();
                job_setup(&jobs[k], next++, mk);
                curl_multi_add_handle(m, jobs[k].h);
        }
        while (finished < total) {
                int running;
                curl_multi_perform(m, &running);
                CURLMsg *msg;
                int left;
                while ((msg = curl_multi_info_read(m, &left))) {
                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        job *j;
                        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
                        long st = 0;
                        curl_easy_getinfo(j->h, CURLINFO_RESPONSE_CODE, &st);
                        if (msg->data.result != CURLE_OK || done(j->idx, st, j->out.p ? j->out.p : ""))
                                errors++;
                        finished++;
                        curl_multi_remove_handle(m, j->h);
                        if (next < total) {
                                job_setup(j, next++, mk);
                                curl_multi_add_handle(m, j->h);
                        }
                }
                if (finished < total)
                        curl_multi_poll(m, NULL, 0, 100, NULL);
        }
        double dt = now_s() - t0;
        for (int k = 0; k < conc; k++) {
                if (jobs[k].h)
                        curl_easy_cleanup(jobs[k].h);
                curl_slist_free_all(jobs[k].hdrs);
                free(jobs[k].body);
                free(jobs[k].out.p);
        }
        free(jobs);
        curl_multi_cleanup(m);
        printf("emulator.%-14s %7ld requests in %6.2f s = %8.0f req/s, %8.0f objects/s, %ld errors "
               "(concurrency %d)\n",
               name, total, dt, (double)total / dt, (double)(total * objects_per_req) / dt, errors, conc);
        fflush(stdout);
        json_array_append_new(g_results,
                              json_pack("{s:s, s:I, s:f, s:f, s:f, s:I, s:i}", "phase", name, "requests",
                                        (json_int_t)total, "seconds", dt, "req_per_s", (double)total / dt,
                                        "objects_per_s", (double)(total * objects_per_req) / dt, "errors",
                                        (json_int_t)errors, "concurrency", conc));
        return errors ? 1 : 0;
}

/* ---- phases ------------------------------------------------------------------- */

static char *user_body(const char *prefix, long i) {
        char *b = malloc(512);
        snprintf(b, 512,
                 "{\"accountEnabled\":true,\"displayName\":\"%s %ld\",\"mailNickname\":\"%s%ld\","
                 "\"userPrincipalName\":\"%s%ld@canopy.test\",\"onPremisesImmutableId\":\"%s-anchor-%ld\","
                 "\"passwordProfile\":{\"password\":\"Bench!mark-123\"}}",
                 prefix, i, prefix, i, prefix, i, prefix, i);
        return b;
}

static void mk_create(long i, const char **method, char *url, size_t cap, char **body) {
        *method = "POST";
        snprintf(url, cap, "%s/v1.0/users", g_url);
        *body = user_body("bench", i);
}

static int done_create(long i, long st, const char *body) {
        if (st != 201)
                return 1;
        json_t *j = json_loads(body, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (id && i < g_nids)
                g_ids[i] = strdup(id);
        json_decref(j);
        return id ? 0 : 1;
}

static long g_created;
static void mk_read(long i, const char **method, char *url, size_t cap, char **body) {
        (void)body;
        *method = "GET";
        long k = (i * 7919) % g_created;
        snprintf(url, cap, "%s/v1.0/users/%s", g_url, g_ids[k] ? g_ids[k] : "missing");
}

static int done_200(long i, long st, const char *body) {
        (void)i;
        (void)body;
        return st == 200 ? 0 : 1;
}

static void mk_filter(long i, const char **method, char *url, size_t cap, char **body) {
        (void)body;
        *method = "GET";
        long k = (i * 7919) % g_created;
        snprintf(url, cap,
                 "%s/v1.0/users?$filter=onPremisesImmutableId%%20eq%%20'bench-anchor-%ld'&$select=id", g_url,
                 k);
}

static int done_filter_one(long i, long st, const char *body) {
        (void)i;
        if (st != 200)
                return 1;
        json_t *j = json_loads(body, 0, NULL);
        int ok = json_array_size(json_object_get(j, "value")) == 1;
        json_decref(j);
        return ok ? 0 : 1;
}

static void mk_batch(long i, const char **method, char *url, size_t cap, char **body) {
        *method = "POST";
        snprintf(url, cap, "%s/v1.0/$batch", g_url);
        json_t *reqs = json_array();
        for (int k = 0; k < 20; k++) {
                char *ub = user_body("batch", i * 20 + k);
                char id[16];
                snprintf(id, sizeof(id), "%d", k + 1);
                json_array_append_new(reqs, json_pack("{s:s, s:s, s:s, s:{s:s}, s:o}", "id", id, "method",
                                                      "POST", "url", "/users", "headers", "Content-Type",
                                                      "application/json", "body", json_loads(ub, 0, NULL)));
                free(ub);
        }
        json_t *b = json_pack("{s:o}", "requests", reqs);
        *body = json_dumps(b, JSON_COMPACT);
        json_decref(b);
}

static int done_batch(long i, long st, const char *body) {
        (void)i;
        if (st != 200)
                return 1;
        json_t *j = json_loads(body, 0, NULL);
        size_t k, bad = 0;
        json_t *r;
        json_array_foreach(json_object_get(j, "responses"), k, r) {
                if (json_integer_value(json_object_get(r, "status")) != 201)
                        bad++;
        }
        int n = (int)json_array_size(json_object_get(j, "responses"));
        json_decref(j);
        return bad || n != 20;
}

static char g_group[64];

/* PATCH the group with 20 members@odata.bind per request. */
static void mk_bind(long i, const char **method, char *url, size_t cap, char **body) {
        *method = "PATCH";
        snprintf(url, cap, "%s/v1.0/groups/%s", g_url, g_group);
        json_t *arr = json_array();
        for (long k = i * 20; k < i * 20 + 20 && k < g_created; k++) {
                char ref[200];
                snprintf(ref, sizeof(ref), "https://graph.microsoft.com/v1.0/directoryObjects/%s",
                         g_ids[k] ? g_ids[k] : "missing");
                json_array_append_new(arr, json_string(ref));
        }
        json_t *b = json_pack("{s:o}", "members@odata.bind", arr);
        *body = json_dumps(b, JSON_COMPACT);
        json_decref(b);
}

static int done_204(long i, long st, const char *body) {
        (void)i;
        (void)body;
        return st == 204 ? 0 : 1;
}

/* Page through every user (or the group's members) with $top=999. */
static int list_all(const char *name, const char *path) {
        CURL *h = curl_easy_init();
        struct curl_slist *hd = curl_slist_append(NULL, g_auth);
        char *next = NULL;
        char first[512];
        snprintf(first, sizeof(first), "%s/v1.0/%s", g_url, path);
        long pages = 0, objs = 0;
        double t0 = now_s();
        const char *u = first;
        int rc = 0;
        while (u) {
                buf out = {0};
                curl_easy_setopt(h, CURLOPT_URL, u);
                curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
                curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
                curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
                curl_easy_setopt(h, CURLOPT_CAINFO, g_ca);
                if (curl_easy_perform(h) != CURLE_OK) {
                        rc = 1;
                        free(out.p);
                        break;
                }
                json_t *j = json_loads(out.p ? out.p : "", 0, NULL);
                free(out.p);
                objs += (long)json_array_size(json_object_get(j, "value"));
                pages++;
                const char *nl = json_string_value(json_object_get(j, "@odata.nextLink"));
                char *nn = nl ? strdup(nl) : NULL;
                json_decref(j);
                free(next);
                next = nn;
                u = next;
        }
        double dt = now_s() - t0;
        printf("emulator.%-14s %7ld objects in %ld pages, %6.2f s = %8.0f objects/s\n", name, objs, pages, dt,
               (double)objs / dt);
        json_array_append_new(g_results, json_pack("{s:s, s:I, s:I, s:f, s:f}", "phase", name, "objects",
                                                   (json_int_t)objs, "pages", (json_int_t)pages, "seconds",
                                                   dt, "objects_per_s", (double)objs / dt));
        free(next);
        curl_slist_free_all(hd);
        curl_easy_cleanup(h);
        return rc;
}

static int create_group(void) {
        CURL *h = curl_easy_init();
        struct curl_slist *hd = curl_slist_append(NULL, g_auth);
        hd = curl_slist_append(hd, "Content-Type: application/json");
        char url[512];
        snprintf(url, sizeof(url), "%s/v1.0/groups", g_url);
        buf out = {0};
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(
            h, CURLOPT_POSTFIELDS,
            "{\"displayName\":\"Bench group\",\"mailNickname\":\"benchgroup\",\"mailEnabled\":false,"
            "\"securityEnabled\":true}");
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
        curl_easy_setopt(h, CURLOPT_CAINFO, g_ca);
        CURLcode cc = curl_easy_perform(h);
        curl_slist_free_all(hd);
        curl_easy_cleanup(h);
        json_t *j = cc == CURLE_OK && out.p ? json_loads(out.p, 0, NULL) : NULL;
        free(out.p);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (id)
                snprintf(g_group, sizeof(g_group), "%s", id);
        json_decref(j);
        return id ? 0 : -1;
}

static long rss_kb(void) {
        const char *pid = getenv("CANOPY_TEST_GRAPH_PID");
        if (!pid)
                return -1;
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%s/status", pid);
        FILE *f = fopen(path, "r");
        long kb = -1;
        while (f && fgets(line, sizeof(line), f))
                if (!strncmp(line, "VmRSS:", 6))
                        kb = atol(line + 6);
        if (f)
                fclose(f);
        return kb;
}

static int get_token(void) {
        const char *tenant = getenv("CANOPY_TEST_GRAPH_TENANT"), *cid = getenv("CANOPY_TEST_GRAPH_CLIENT_ID");
        const char *sf = getenv("CANOPY_TEST_GRAPH_SECRET_FILE");
        FILE *f = sf ? fopen(sf, "r") : NULL;
        char secret[512] = "";
        if (!f || !fgets(secret, sizeof(secret), f)) {
                if (f)
                        fclose(f);
                return -1;
        }
        fclose(f);
        secret[strcspn(secret, "\r\n")] = 0;
        CURL *h = curl_easy_init();
        char *es = curl_easy_escape(h, secret, 0);
        char form[1024], url[1024];
        snprintf(form, sizeof(form),
                 "grant_type=client_credentials&client_id=%s&client_secret=%s&scope=https%%3A%%2F%%2Fgraph."
                 "microsoft."
                 "com%%2F.default",
                 cid, es);
        curl_free(es);
        snprintf(url, sizeof(url), "%s/%s/oauth2/v2.0/token", g_url, tenant);
        buf out = {0};
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
        curl_easy_setopt(h, CURLOPT_CAINFO, g_ca);
        CURLcode cc = curl_easy_perform(h);
        curl_easy_cleanup(h);
        json_t *j = cc == CURLE_OK && out.p ? json_loads(out.p, 0, NULL) : NULL;
        free(out.p);
        const char *tok = json_string_value(json_object_get(j, "access_token"));
        if (tok)
                snprintf(g_auth, sizeof(g_auth), "Authorization: Bearer %s", tok);
        json_decref(j);
        return tok ? 0 : -1;
}

int main(int argc, char **argv) {
        long users = 2000;
        int conc = 16;
        const char *json_out = NULL;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--users") && i + 1 < argc)
                        users = atol(argv[++i]);
                else if (!strcmp(argv[i], "--concurrency") && i + 1 < argc)
                        conc = atoi(argv[++i]);
                else if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json_out = argv[++i];
                else {
                        fprintf(stderr, "usage: %s [--users N] [--concurrency C] [--json FILE]\n", argv[0]);
                        return 2;
                }
        }
        if (users < 20 || conc < 1 || conc > 512) {
                fprintf(stderr, "--users must be >= 20 and --concurrency 1..512\n");
                return 2;
        }
        g_url = getenv("CANOPY_TEST_GRAPH_URL");
        g_ca = getenv("CANOPY_TEST_GRAPH_CA");
        if (!g_url || !g_ca) {
                fprintf(stderr, "SKIP: run under tests/harness/run-with --emulator\n");
                return 77;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        g_results = json_array();
        if (get_token()) {
                fprintf(stderr, "cannot get a token\n");
                return 1;
        }
        g_nids = users;
        g_ids = calloc((size_t)users, sizeof(*g_ids));
        int rc = 0;
        rc |= phase("create", users, conc, mk_create, done_create, 1);
        g_created = users;
        rc |= phase("read-by-id", users, conc, mk_read, done_200, 1);
        rc |= phase("filter-anchor", users, conc, mk_filter, done_filter_one, 1);
        rc |= phase("batch-create", users / 20, conc, mk_batch, done_batch, 20);
        rc |= list_all("list-all", "users?$top=999&$select=id,userPrincipalName");
        if (create_group() == 0) {
                rc |= phase("members-bind", users / 20, conc, mk_bind, done_204, 20);
                char path[128];
                snprintf(path, sizeof(path), "groups/%s/members?$top=999&$select=id", g_group);
                rc |= list_all("members-list", path);
        } else {
                rc = 1;
        }
        long kb = rss_kb();
        if (kb > 0) {
                printf("emulator.rss %ld KiB for %ld users (%.2f KiB/user)\n", kb, users + (users / 20) * 20,
                       (double)kb / (double)(users + (users / 20) * 20));
                json_array_append_new(g_results,
                                      json_pack("{s:s, s:I, s:I}", "phase", "rss", "kib", (json_int_t)kb,
                                                "users", (json_int_t)(users + (users / 20) * 20)));
        }
        if (json_out && json_dump_file(g_results, json_out, JSON_INDENT(2)))
                rc = 1;
        for (long i = 0; i < users; i++)
                free(g_ids[i]);
        free(g_ids);
        json_decref(g_results);
        curl_global_cleanup();
        return rc;
}
