/* graph_it: integration tests of the Graph client against the real
 * canopy-graph-emulator (started by tests/harness/run-with --emulator).
 *
 *   graph_it SCENARIO
 *
 * Scenarios: ops, cert, throttle, unavailable, latency, lag, token, batch,
 * forbidden, budget, h2, h1. Each checks what the client returns AND what the
 * emulator holds (/_emulator/state) or counted (/_emulator/stats).
 * Exit 0 on success, 1 on failure (the first failed check is printed),
 * 77 to skip. */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "canopy/graph.h"
#include "canopy/log.h"

static int failures;

#define CHECK(cond, ...)                                                                  \
        do {                                                                              \
                if (!(cond)) {                                                            \
                        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
                        fprintf(stderr, __VA_ARGS__);                                     \
                        fprintf(stderr, "\n");                                            \
                        failures++;                                                       \
                        return 1;                                                         \
                }                                                                         \
        } while (0)

#define CHECK_OK(expr, ei)                                                                            \
        do {                                                                                          \
                canopy_err e_ = (expr);                                                               \
                CHECK(e_ == CANOPY_OK, "%s (HTTP %ld %s: %s)", canopy_err_name(e_), (ei)->http_status, \
                      (ei)->code, (ei)->message);                                                     \
        } while (0)

static const char *env(const char *name) {
        const char *v = getenv(name);
        if (!v || !*v) {
                fprintf(stderr, "SKIP: %s not set (run through tests/harness/run-with)\n", name);
                exit(77);
        }
        return v;
}

static char *read_file(const char *path) {
        FILE *f = fopen(path, "r");
        if (!f)
                return NULL;
        char buf[4096];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                buf[--n] = '\0';
        return strdup(buf);
}

static char *secret;

static void base_conf(canopy_graph_conf *c) {
        canopy_graph_conf_init(c);
        c->authority_url = env("CANOPY_TEST_GRAPH_URL");
        c->graph_url = env("CANOPY_TEST_GRAPH_URL");
        c->tenant = env("CANOPY_TEST_GRAPH_TENANT");
        c->client_id = env("CANOPY_TEST_GRAPH_CLIENT_ID");
        if (!secret)
                secret = read_file(env("CANOPY_TEST_GRAPH_SECRET_FILE"));
        c->client_secret = secret;
        c->ca_file = env("CANOPY_TEST_GRAPH_CA");
        c->backoff_base_ms = 100;
        c->backoff_max_ms = 2000;
}

static canopy_graph *new_client(canopy_graph_conf *c) {
        canopy_graph *gc = NULL;
        char eb[256];
        canopy_err err = canopy_graph_new(c, &gc, eb, sizeof(eb));
        if (err) {
                fprintf(stderr, "canopy_graph_new: %s: %s\n", canopy_err_name(err), eb);
                exit(1);
        }
        return gc;
}

/* ---- emulator admin ---- */

typedef struct buf {
        char *p;
        size_t n;
} buf;

static size_t buf_write(char *ptr, size_t sz, size_t nm, void *ud) {
        buf *b = ud;
        char *np = realloc(b->p, b->n + sz * nm + 1);
        if (!np)
                return 0;
        b->p = np;
        memcpy(b->p + b->n, ptr, sz * nm);
        b->n += sz * nm;
        b->p[b->n] = '\0';
        return sz * nm;
}

/* The HTTP version of admin requests (curl's default: h2 when offered), and
 * how many were sent: the h2 and h1 scenarios send them over the other
 * protocol and count them, so that the emulator's per-protocol counters
 * show the client's traffic alone. */
static long admin_http = CURL_HTTP_VERSION_NONE;
static int64_t admin_calls;

static json_t *admin_body(const char *method, const char *path, const char *body) {
        char url[512];
        admin_calls++;
        snprintf(url, sizeof(url), "%s%s", env("CANOPY_TEST_GRAPH_URL"), path);
        CURL *e = curl_easy_init();
        buf b = {0};
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_CAINFO, env("CANOPY_TEST_GRAPH_CA"));
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, admin_http);
        if (body)
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, buf_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
        CURLcode rc = curl_easy_perform(e);
        curl_easy_cleanup(e);
        json_t *j = rc == CURLE_OK && b.p ? json_loads(b.p, 0, NULL) : NULL;
        if (!j)
                fprintf(stderr, "admin %s %s: %s\n", method, path, rc ? curl_easy_strerror(rc) : (b.p ? b.p : ""));
        free(b.p);
        return j;
}

static json_t *admin(const char *method, const char *path) {
        return admin_body(method, path, NULL);
}

static int64_t stat_int(json_t *stats, const char *key) {
        json_t *v = json_object_get(stats, key);
        return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* Users in the emulator's state whose property equals value. */
static int count_in_state(const char *kind, const char *prop, const char *value) {
        json_t *st = admin("GET", "/_emulator/state");
        if (!st)
                return -1;
        /* state: {tenants:{tid:{users:[...],groups:[...]}}} or {users:[...]}:
         * search every array of objects named `kind` */
        int n = 0;
        json_t *stack[16];
        int sp = 0;
        stack[sp++] = st;
        while (sp) {
                json_t *j = stack[--sp];
                const char *k;
                json_t *v;
                json_object_foreach(j, k, v) {
                        if (json_is_array(v) && !strcmp(k, kind)) {
                                size_t i;
                                json_t *o;
                                json_array_foreach(v, i, o) {
                                        const char *s = json_string_value(json_object_get(o, prop));
                                        if (s && !strcmp(s, value))
                                                n++;
                                }
                        } else if (json_is_object(v) && sp < 16) {
                                stack[sp++] = v;
                        }
                }
        }
        json_decref(st);
        return n;
}

static unsigned long run_id;

static void user_body(char *out, size_t len, const char *name, const char *immid) {
        snprintf(out, len,
                 "{\"accountEnabled\":true,\"displayName\":\"%s\",\"mailNickname\":\"%s%lu\","
                 "\"userPrincipalName\":\"%s%lu@canopy.test\",\"onPremisesImmutableId\":\"%s\","
                 "\"passwordProfile\":{\"password\":\"Xy!%lu-pass-Long1\",\"forceChangePasswordNextSignIn\":false}}",
                 name, name, run_id, name, run_id, immid, run_id);
}

/* ---- scenarios ---- */

static int scen_ops(void) {
        canopy_graph_conf c;
        base_conf(&c);
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        char id[CANOPY_GRAPH_ID_MAX], id2[CANOPY_GRAPH_ID_MAX], body[1024];
        bool matched = true;

        CHECK_OK(canopy_graph_authenticate(gc, &ei), &ei);

        /* the tenant's verified domains and its initial one */
        char **doms = NULL, *initial = NULL;
        size_t ndoms = 0;
        CHECK_OK(canopy_graph_domains(gc, &doms, &ndoms, &initial, &ei), &ei);
        CHECK(ndoms >= 2 && doms && !strcmp(doms[0], "canopy.test"), "domains: %zu, first %s", ndoms,
              ndoms ? doms[0] : "-");
        CHECK(initial && !strcmp(initial, "emulator.onmicrosoft.com"), "initial domain %s", initial ? initial : "-");
        canopy_graph_strv_free(doms);
        free(initial);

        /* create, then a crash-safe create of the same object hard-matches */
        user_body(body, sizeof(body), "alice", "aW1tLWFsaWNl");
        CHECK_OK(canopy_graph_user_create(gc, body, "aW1tLWFsaWNl", false, id, &matched, &ei), &ei);
        CHECK(!matched, "fresh create reported as matched");
        CHECK_OK(canopy_graph_user_create(gc, body, "aW1tLWFsaWNl", true, id2, &matched, &ei), &ei);
        CHECK(matched && !strcmp(id, id2), "intent create did not hard-match (%s vs %s)", id, id2);
        CHECK(count_in_state("users", "onPremisesImmutableId", "aW1tLWFsaWNl") == 1, "duplicate user created");
        /* intent recorded but nothing there yet: creates */
        user_body(body, sizeof(body), "bob", "aW1tLWJvYg==");
        CHECK_OK(canopy_graph_user_create(gc, body, "aW1tLWJvYg==", true, id2, &matched, &ei), &ei);
        CHECK(!matched, "intent create matched nothing yet reported matched");

        /* lookup, with a value that would break an unescaped filter */
        char fid[CANOPY_GRAPH_ID_MAX];
        char *json = NULL;
        CHECK_OK(canopy_graph_user_find(gc, "aW1tLWFsaWNl", fid, &json, &ei), &ei);
        CHECK(!strcmp(fid, id), "find returned another id");
        free(json);
        canopy_err err = canopy_graph_user_find(gc, "x' or userPrincipalName ne 'x", fid, NULL, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_NOT_FOUND, "injection-shaped value: %s (%s)", canopy_err_name(err), ei.message);
        user_body(body, sizeof(body), "quote", "o'brien+&/=");
        CHECK_OK(canopy_graph_user_create(gc, body, "o'brien+&/=", false, id2, NULL, &ei), &ei);
        CHECK_OK(canopy_graph_user_find(gc, "o'brien+&/=", fid, NULL, &ei), &ei);
        CHECK(!strcmp(fid, id2), "quoted value found another object");
        /* a collection property is matched with any() */
        CHECK_OK(canopy_graph_update(gc, CANOPY_GRAPH_USER, id2, "{\"otherMails\":[\"o'k+1@ext.test\"]}", &ei), &ei);
        CHECK_OK(canopy_graph_find(gc, CANOPY_GRAPH_USER, "otherMails", "o'k+1@ext.test", fid, NULL, &ei), &ei);
        CHECK(!strcmp(fid, id2), "otherMails look-up found another object");

        /* update only what changed */
        char *patch = NULL;
        CHECK(canopy_graph_diff("{\"displayName\":\"alice\",\"jobTitle\":\"dev\"}",
                                "{\"displayName\":\"Alice A\",\"jobTitle\":\"dev\"}", &patch) == CANOPY_OK && patch,
              "diff");
        CHECK(!strstr(patch, "jobTitle"), "diff kept an unchanged property");
        CHECK_OK(canopy_graph_update(gc, CANOPY_GRAPH_USER, id, patch, &ei), &ei);
        free(patch);
        CHECK_OK(canopy_graph_update(gc, CANOPY_GRAPH_USER, id, "{}", &ei), &ei);
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, id, "id,displayName", &json, &ei), &ei);
        CHECK(strstr(json, "Alice A") != NULL, "update not visible: %s", json);
        free(json);

        /* conflict: another user with alice's UPN */
        char dup[1024];
        snprintf(dup, sizeof(dup),
                 "{\"accountEnabled\":true,\"displayName\":\"dup\",\"mailNickname\":\"dup%lu\","
                 "\"userPrincipalName\":\"alice%lu@canopy.test\",\"onPremisesImmutableId\":\"ZHVw\","
                 "\"passwordProfile\":{\"password\":\"Xy!dup-pass-Long1\"}}",
                 run_id, run_id);
        err = canopy_graph_user_create(gc, dup, "ZHVw", false, id2, NULL, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_CONFLICT, "duplicate UPN: %s (HTTP %ld %s)", canopy_err_name(err),
              ei.http_status, ei.code);
        CHECK(!strcmp(ei.conflict_property, "userPrincipalName"), "conflict property '%s'", ei.conflict_property);
        char want[128];
        snprintf(want, sizeof(want), "alice%lu@canopy.test", run_id);
        CHECK(!strcmp(ei.conflict_value, want), "conflict value '%s'", ei.conflict_value);
        CHECK(ei.request_id[0] && ei.client_request_id[0], "request ids missing in error");
        /* The same with a create intent recorded (a retry): the object
         * holding the UPN is another one, so the conflict is reported at
         * once, not after looking again for our own create (3 requests: the
         * hard-match look-up, the POST, the look-up of the holder). */
        canopy_graph_stats s0, s1;
        canopy_graph_stats_get(gc, &s0);
        err = canopy_graph_user_create(gc, dup, "ZHVw", true, id2, NULL, &ei);
        canopy_graph_stats_get(gc, &s1);
        CHECK(err == CANOPY_ERR_GRAPH_CONFLICT, "duplicate UPN with an intent: %s", canopy_err_name(err));
        CHECK(!strcmp(ei.conflict_value, want), "conflict value with an intent '%s'", ei.conflict_value);
        CHECK(s1.requests - s0.requests == 3, "a real conflict cost %llu requests (want 3: no looking again)",
              (unsigned long long)(s1.requests - s0.requests));

        /* soft delete, get -> not found, restore, get -> there */
        CHECK_OK(canopy_graph_delete(gc, CANOPY_GRAPH_USER, id, &ei), &ei);
        err = canopy_graph_get(gc, CANOPY_GRAPH_USER, id, NULL, &json, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_NOT_FOUND, "deleted user still readable: %s", canopy_err_name(err));
        CHECK_OK(canopy_graph_restore(gc, id, &ei), &ei);
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, id, NULL, &json, &ei), &ei);
        free(json);
        err = canopy_graph_delete(gc, CANOPY_GRAPH_USER, "00000000-0000-4000-8000-000000000000", &ei);
        CHECK(err == CANOPY_ERR_GRAPH_NOT_FOUND, "delete of unknown id: %s", canopy_err_name(err));

        /* groups */
        char gid[CANOPY_GRAPH_ID_MAX], gid2[CANOPY_GRAPH_ID_MAX], gbody[512];
        snprintf(gbody, sizeof(gbody), "{\"displayName\":\"Staff\",\"mailNickname\":\"staff%lu\"}", run_id);
        CHECK_OK(canopy_graph_create(gc, CANOPY_GRAPH_GROUP, gbody, false, NULL, NULL, gid, NULL, &ei), &ei);
        char nick[64];
        snprintf(nick, sizeof(nick), "staff%lu", run_id);
        CHECK_OK(canopy_graph_create(gc, CANOPY_GRAPH_GROUP, gbody, true, "mailNickname", nick, gid2, &matched, &ei),
                 &ei);
        CHECK(matched && !strcmp(gid, gid2), "group intent create did not hard-match");
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_GROUP, gid, NULL, &json, &ei), &ei);
        CHECK(strstr(json, "\"securityEnabled\":true") || strstr(json, "\"securityEnabled\": true"),
              "not a security group: %s", json);
        free(json);
        CHECK_OK(canopy_graph_update(gc, CANOPY_GRAPH_GROUP, gid, "{\"description\":\"all staff\"}", &ei), &ei);

        /* members: 45 users -> 3 PATCHes of up to 20 */
        enum { NM = 45 };
        char mids[NM][CANOPY_GRAPH_ID_MAX];
        const char *mptr[NM];
        canopy_graph_req reqs[NM];
        char bodies[NM][1024];
        memset(reqs, 0, sizeof(reqs));
        for (int i = 0; i < NM; i++) {
                char name[32], imm[32];
                snprintf(name, sizeof(name), "m%d", i);
                snprintf(imm, sizeof(imm), "bS0%d", i);
                user_body(bodies[i], sizeof(bodies[i]), name, imm);
                reqs[i].method = "POST";
                reqs[i].path = "/users";
                reqs[i].body = bodies[i];
        }
        /* create them concurrently (HTTP/2 multiplexed) */
        CHECK(canopy_graph_run(gc, reqs, NM) == CANOPY_OK, "run create: %s", canopy_err_name(reqs[0].err));
        for (int i = 0; i < NM; i++) {
                json_t *o = json_loads(reqs[i].res.body, 0, NULL);
                snprintf(mids[i], sizeof(mids[i]), "%s", json_string_value(json_object_get(o, "id")));
                json_decref(o);
                mptr[i] = mids[i];
        }
        canopy_graph_req_clear(reqs, NM);
        canopy_err errs[NM];
        CHECK_OK(canopy_graph_members_add(gc, gid, mptr, 30, errs, &ei), &ei);
        /* re-adding the first 30 plus 15 new: "already exist" is success */
        CHECK_OK(canopy_graph_members_add(gc, gid, mptr, NM, errs, &ei), &ei);
        char **ids = NULL;
        size_t nids = 0;
        CHECK_OK(canopy_graph_members_list(gc, gid, 0, &ids, &nids, &ei), &ei);
        CHECK(nids == NM, "members listed %zu, want %d", nids, NM);
        canopy_graph_ids_free(ids, nids);
        /* a member that does not exist fails alone; the others of its chunk go in */
        const char *mixed[3] = {mids[0], "00000000-0000-4000-8000-0000000000aa", id};
        err = canopy_graph_members_add(gc, gid, mixed, 3, errs, &ei);
        CHECK(err != CANOPY_OK && errs[0] == CANOPY_OK && errs[1] != CANOPY_OK && errs[2] == CANOPY_OK,
              "mixed add: %s / %s %s %s", canopy_err_name(err), canopy_err_name(errs[0]), canopy_err_name(errs[1]),
              canopy_err_name(errs[2]));
        /* the same with the missing member first in its chunk (a 404 that
         * names the member, not the group): the other one still goes in */
        const char *mixed2[2] = {"00000000-0000-4000-8000-0000000000cc", id2};
        err = canopy_graph_members_add(gc, gid, mixed2, 2, errs, &ei);
        CHECK(err != CANOPY_OK && errs[0] != CANOPY_OK && errs[1] == CANOPY_OK, "missing member first: %s / %s %s",
              canopy_err_name(err), canopy_err_name(errs[0]), canopy_err_name(errs[1]));
        /* a group that does not exist: every member fails NOT_FOUND */
        err = canopy_graph_members_add(gc, "00000000-0000-4000-8000-0000000000bb", mptr, 25, errs, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_NOT_FOUND && errs[0] == err && errs[24] == err, "add to missing group: %s",
              canopy_err_name(err));
        /* remove 10, plus id2 (a member since mixed2) and one that is not a
         * member (404 = success) */
        const char *rm[12];
        for (int i = 0; i < 10; i++)
                rm[i] = mids[i];
        rm[10] = id2;
        rm[11] = "00000000-0000-4000-8000-0000000000dd";
        CHECK_OK(canopy_graph_members_remove(gc, gid, rm, 12, errs, &ei), &ei);
        CHECK_OK(canopy_graph_members_list(gc, gid, 0, &ids, &nids, &ei), &ei);
        CHECK(nids == NM - 10 + 1, "members after remove %zu, want %d", nids, NM - 9);
        canopy_graph_ids_free(ids, nids);
        CHECK(canopy_graph_members_list(gc, gid, 5, &ids, &nids, &ei) == CANOPY_ERR_LIMIT, "member cap ignored");

        CHECK_OK(canopy_graph_delete(gc, CANOPY_GRAPH_GROUP, gid, &ei), &ei);
        CHECK_OK(canopy_graph_restore(gc, gid, &ei), &ei);
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_GROUP, gid, NULL, &json, &ei), &ei);
        free(json);

        /* $batch: 30 GETs in two batches, matched by id */
        canopy_graph_req br[30];
        char paths[30][128];
        memset(br, 0, sizeof(br));
        for (int i = 0; i < 30; i++) {
                snprintf(paths[i], sizeof(paths[i]), "/users/%s?$select=id", mids[i]);
                br[i].method = "GET";
                br[i].path = paths[i];
        }
        CHECK(canopy_graph_batch(gc, br, 30) == CANOPY_OK, "batch: %s", canopy_err_name(br[0].err));
        for (int i = 0; i < 30; i++)
                CHECK(br[i].res.body && strstr(br[i].res.body, mids[i]), "batch item %d got another answer", i);
        canopy_graph_req_clear(br, 30);

        /* paging: an absolute @odata.nextLink on the Graph host is followed */
        {
                canopy_graph_result res = {0};
                CHECK_OK(canopy_graph_request(gc, "GET", "/users?$top=5&$select=id", NULL, 0, &res, &ei), &ei);
                json_t *page = json_loads(res.body, 0, NULL);
                const char *next = json_string_value(json_object_get(page, "@odata.nextLink"));
                CHECK(next != NULL, "no nextLink on a 5-user page");
                canopy_graph_result res2 = {0};
                CHECK_OK(canopy_graph_request(gc, "GET", next, NULL, 0, &res2, &ei), &ei);
                CHECK(res2.body && strstr(res2.body, "\"value\""), "second page: %s", res2.body);
                json_decref(page);
                canopy_graph_result_clear(&res);
                canopy_graph_result_clear(&res2);
        }

        /* response size cap */
        {
                canopy_graph_conf c2;
                base_conf(&c2);
                c2.max_response_bytes = 200;
                canopy_graph *small = new_client(&c2);
                canopy_graph_result res = {0};
                err = canopy_graph_request(small, "GET", "/users?$top=50", NULL, 0, &res, &ei);
                CHECK(err == CANOPY_ERR_GRAPH_TOO_LARGE, "capped response: %s", canopy_err_name(err));
                canopy_graph_result_clear(&res);
                canopy_graph_free(small);
        }

        canopy_graph_stats st;
        canopy_graph_stats_get(gc, &st);
        printf("ops: %llu requests, %llu retries, %llu batches, %llu tokens\n", (unsigned long long)st.requests,
               (unsigned long long)st.retries, (unsigned long long)st.batches, (unsigned long long)st.tokens);
        canopy_graph_free(gc);
        return 0;
}

/* Many writes and reads under injected faults: every one must succeed. */
static int scen_faults(const char *what, bool expect_throttle, bool expect_5xx) {
        canopy_graph_conf c;
        base_conf(&c);
        c.max_retries = 30;
        c.max_retry_ms = 300000;
        c.backoff_base_ms = 50;
        c.backoff_max_ms = 500;
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        json_t *before = admin("GET", "/_emulator/stats");
        enum { N = 40 };
        canopy_graph_req reqs[N];
        char bodies[N][1024];
        memset(reqs, 0, sizeof(reqs));
        for (int i = 0; i < N; i++) {
                char name[32], imm[32];
                snprintf(name, sizeof(name), "f%d", i);
                snprintf(imm, sizeof(imm), "ZmF1bHQ%d", i);
                user_body(bodies[i], sizeof(bodies[i]), name, imm);
                reqs[i].method = "POST";
                reqs[i].path = "/users";
                reqs[i].body = bodies[i];
        }
        canopy_err err = canopy_graph_run(gc, reqs, N);
        for (int i = 0; i < N; i++)
                CHECK(reqs[i].err == CANOPY_OK, "%s: request %d: %s (HTTP %ld %s)", what, i,
                      canopy_err_name(reqs[i].err), reqs[i].ei.http_status, reqs[i].ei.code);
        CHECK(err == CANOPY_OK, "run");
        char first[CANOPY_GRAPH_ID_MAX];
        json_t *o = json_loads(reqs[0].res.body, 0, NULL);
        snprintf(first, sizeof(first), "%s", json_string_value(json_object_get(o, "id")));
        json_decref(o);
        canopy_graph_req_clear(reqs, N);
        /* and sequential calls */
        for (int i = 0; i < 10; i++) {
                char *json = NULL;
                CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, first, NULL, &json, &ei), &ei);
                free(json);
        }
        for (int i = 0; i < N; i++) {
                char imm[32];
                snprintf(imm, sizeof(imm), "ZmF1bHQ%d", i);
                CHECK(count_in_state("users", "onPremisesImmutableId", imm) == 1, "%s: user %d count != 1", what, i);
        }
        canopy_graph_stats st;
        canopy_graph_stats_get(gc, &st);
        json_t *after = admin("GET", "/_emulator/stats");
        printf("%s: client %llu requests, %llu retries, %llu throttled, %llu unavailable; emulator faults %lld, "
               "throttled %lld\n",
               what, (unsigned long long)st.requests, (unsigned long long)st.retries,
               (unsigned long long)st.throttled, (unsigned long long)st.unavailable,
               (long long)(stat_int(after, "faults") - stat_int(before, "faults")),
               (long long)(stat_int(after, "throttled") - stat_int(before, "throttled")));
        if (expect_throttle)
                CHECK(st.throttled > 0, "%s: no 429 seen: fault injection not active?", what);
        if (expect_5xx)
                CHECK(st.unavailable > 0, "%s: no 503/504 seen", what);
        CHECK(st.retries > 0 || (!expect_throttle && !expect_5xx), "%s: no retries", what);
        json_decref(before);
        json_decref(after);
        canopy_graph_free(gc);
        return 0;
}

/* Replication lag: an object just created is not visible at once. */
static int scen_lag(void) {
        canopy_graph_conf c;
        base_conf(&c);
        c.consistency_retries = 12;
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        char uid[CANOPY_GRAPH_ID_MAX], gid[CANOPY_GRAPH_ID_MAX], body[1024];
        user_body(body, sizeof(body), "lag", "bGFn");
        CHECK_OK(canopy_graph_user_create(gc, body, "bGFn", false, uid, NULL, &ei), &ei);
        CHECK_OK(canopy_graph_update(gc, CANOPY_GRAPH_USER, uid, "{\"jobTitle\":\"after lag\"}", &ei), &ei);
        char gbody[256];
        snprintf(gbody, sizeof(gbody), "{\"displayName\":\"Lag\",\"mailNickname\":\"lag%lu\"}", run_id);
        CHECK_OK(canopy_graph_create(gc, CANOPY_GRAPH_GROUP, gbody, false, NULL, NULL, gid, NULL, &ei), &ei);
        user_body(body, sizeof(body), "lag2", "bGFnMg==");
        char uid2[CANOPY_GRAPH_ID_MAX];
        CHECK_OK(canopy_graph_user_create(gc, body, "bGFnMg==", false, uid2, NULL, &ei), &ei);
        const char *m[2] = {uid, uid2};
        CHECK_OK(canopy_graph_members_add(gc, gid, m, 2, NULL, &ei), &ei);
        CHECK_OK(canopy_graph_delete(gc, CANOPY_GRAPH_USER, uid2, &ei), &ei);
        CHECK_OK(canopy_graph_restore(gc, uid2, &ei), &ei);
        canopy_graph_stats st;
        canopy_graph_stats_get(gc, &st);
        printf("lag: %llu requests, %llu retries\n", (unsigned long long)st.requests, (unsigned long long)st.retries);
        CHECK(st.retries > 0, "no consistency retry happened: lag not injected?");

        /* Created, then at once deleted: the replica that answers has not
         * seen the create (404). A fresh delete waits for it; the object
         * really goes to deleted items. */
        json_t *f = admin("GET", "/_emulator/faults");
        CHECK(f && json_integer_value(json_object_get(f, "replicationLagMs")) > 0, "emulator lag not set");
        json_decref(f);
        char did[CANOPY_GRAPH_ID_MAX];
        user_body(body, sizeof(body), "lagdel", "bGFnZGVs");
        CHECK_OK(canopy_graph_user_create(gc, body, "bGFnZGVs", false, did, NULL, &ei), &ei);
        uint64_t before = st.retries;
        CHECK_OK(canopy_graph_delete_fresh(gc, CANOPY_GRAPH_USER, did, &ei), &ei);
        canopy_graph_stats_get(gc, &st);
        CHECK(st.retries > before, "fresh delete was not retried: lag not injected?");
        /* The emulator's own view (no lag there): deleted, not live. */
        CHECK(count_in_state("users", "id", did) == 0, "fresh delete left the user live");
        CHECK(count_in_state("deletedUsers", "id", did) == 1, "fresh delete: user not in deleted items");
        /* And through Graph (the lag is over: the delete got through): in
         * /directory/deletedItems, not in /users. */
        char *json = NULL;
        canopy_err err = canopy_graph_get(gc, CANOPY_GRAPH_USER, did, NULL, &json, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_NOT_FOUND, "deleted user still in /users: %s", canopy_err_name(err));
        canopy_graph_result res = {0};
        char path[256];
        snprintf(path, sizeof(path), "/directory/deletedItems/%s", did);
        CHECK_OK(canopy_graph_request(gc, "GET", path, NULL, 0, &res, &ei), &ei);
        CHECK(res.body && strstr(res.body, did), "deletedItems answer without the id");
        canopy_graph_result_clear(&res);

        /* Created, then at once read: a fresh GET waits for the replica. */
        char gid2[CANOPY_GRAPH_ID_MAX];
        user_body(body, sizeof(body), "lagget", "bGFnZ2V0");
        CHECK_OK(canopy_graph_user_create(gc, body, "bGFnZ2V0", false, gid2, NULL, &ei), &ei);
        before = st.retries;
        CHECK_OK(canopy_graph_get_fresh(gc, CANOPY_GRAPH_USER, gid2, "id,displayName", &json, &ei), &ei);
        canopy_graph_stats_get(gc, &st);
        CHECK(strstr(json, gid2) && strstr(json, "lagget"), "fresh GET returned: %s", json);
        free(json);
        CHECK(st.retries > before, "fresh GET was not retried: lag not injected?");

        /* Without the flag the client trusts the first 404 (that is what
         * canopy_graph_delete is for: objects known to be old), which on a
         * fresh object deletes nothing: the reason for the fresh calls. */
        char oid[CANOPY_GRAPH_ID_MAX];
        user_body(body, sizeof(body), "lagold", "bGFnb2xk");
        CHECK_OK(canopy_graph_user_create(gc, body, "bGFnb2xk", false, oid, NULL, &ei), &ei);
        err = canopy_graph_delete(gc, CANOPY_GRAPH_USER, oid, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_NOT_FOUND && ei.attempts == 1,
              "plain delete of a lagged object: %s after %d attempt(s)", canopy_err_name(err), ei.attempts);
        CHECK(count_in_state("users", "id", oid) == 1, "plain delete: the lagged user should still be live");
        canopy_graph_free(gc);
        return 0;
}

/* Short token lifetime: tokens renewed during the run, no failure. */
static int scen_token(void) {
        canopy_graph_conf c;
        base_conf(&c);
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        char uid[CANOPY_GRAPH_ID_MAX], body[1024];
        user_body(body, sizeof(body), "tok", "dG9r");
        CHECK_OK(canopy_graph_user_create(gc, body, "dG9r", false, uid, NULL, &ei), &ei);
        /* run for about three token lifetimes (the emulator runs with --token-lifetime 2) */
        time_t end = time(NULL) + 7;
        int n = 0;
        while (time(NULL) < end) {
                char *json = NULL;
                CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, uid, NULL, &json, &ei), &ei);
                free(json);
                n++;
                usleep(100 * 1000);
        }
        canopy_graph_stats st;
        canopy_graph_stats_get(gc, &st);
        printf("token: %d requests, %llu tokens fetched\n", n, (unsigned long long)st.tokens);
        CHECK(st.tokens >= 3, "token not renewed (%llu fetched)", (unsigned long long)st.tokens);

        /* the app is revoked mid-run: the 401 drops the token, the new token
         * is refused, the call fails as AUTH (fatal) */
        char path[256];
        snprintf(path, sizeof(path), "/_emulator/revoke?client=%s", env("CANOPY_TEST_GRAPH_CLIENT_ID"));
        json_decref(admin("POST", path));
        char *json = NULL;
        canopy_err err = canopy_graph_get(gc, CANOPY_GRAPH_USER, uid, NULL, &json, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_AUTH, "revoked app: %s (HTTP %ld)", canopy_err_name(err), ei.http_status);
        /* and allowed again: a new token is fetched and calls work */
        snprintf(path, sizeof(path), "/_emulator/unrevoke?client=%s", env("CANOPY_TEST_GRAPH_CLIENT_ID"));
        json_decref(admin("POST", path));
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, uid, NULL, &json, &ei), &ei);
        free(json);
        canopy_graph_free(gc);
        return 0;
}

/* A $batch where some items fail for good and others are throttled. */
static int scen_batch(void) {
        canopy_graph_conf c;
        base_conf(&c);
        c.max_retries = 30;
        c.max_retry_ms = 300000;
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        char uid[CANOPY_GRAPH_ID_MAX], body[1024];
        user_body(body, sizeof(body), "batchbase", "YmI=");
        /* the single create is retried too if throttled */
        CHECK_OK(canopy_graph_user_create(gc, body, "YmI=", false, uid, NULL, &ei), &ei);
        enum { N = 45 };
        canopy_graph_req r[N];
        char bodies[N][1024], paths[N][128];
        memset(r, 0, sizeof(r));
        for (int i = 0; i < N; i++) {
                if (i % 9 == 4) {
                        /* duplicate UPN: permanent conflict */
                        snprintf(bodies[i], sizeof(bodies[i]),
                                 "{\"accountEnabled\":true,\"displayName\":\"d\",\"mailNickname\":\"d%d\","
                                 "\"userPrincipalName\":\"batchbase%lu@canopy.test\",\"passwordProfile\":"
                                 "{\"password\":\"Xy!dup-pass-Long1\"}}",
                                 i, run_id);
                        r[i].method = "POST";
                        r[i].path = "/users";
                        r[i].body = bodies[i];
                } else if (i % 9 == 7) {
                        snprintf(paths[i], sizeof(paths[i]), "/users/00000000-0000-4000-8000-%012d", i);
                        r[i].method = "GET";
                        r[i].path = paths[i];
                } else {
                        char name[32], imm[32];
                        snprintf(name, sizeof(name), "b%d", i);
                        snprintf(imm, sizeof(imm), "YmF0Y2g%d", i);
                        user_body(bodies[i], sizeof(bodies[i]), name, imm);
                        r[i].method = "POST";
                        r[i].path = "/users";
                        r[i].body = bodies[i];
                }
        }
        canopy_err err = canopy_graph_batch(gc, r, N);
        CHECK(err != CANOPY_OK, "batch with bad items returned OK");
        int ok = 0;
        for (int i = 0; i < N; i++) {
                if (i % 9 == 4) {
                        CHECK(r[i].err == CANOPY_ERR_GRAPH_CONFLICT, "item %d: %s", i, canopy_err_name(r[i].err));
                        CHECK(!strcmp(r[i].ei.conflict_property, "userPrincipalName"), "item %d property %s", i,
                              r[i].ei.conflict_property);
                } else if (i % 9 == 7) {
                        CHECK(r[i].err == CANOPY_ERR_GRAPH_NOT_FOUND, "item %d: %s", i, canopy_err_name(r[i].err));
                } else {
                        CHECK(r[i].err == CANOPY_OK && r[i].res.status == 201, "item %d: %s (HTTP %ld %s)", i,
                              canopy_err_name(r[i].err), r[i].res.status, r[i].ei.code);
                        char imm[32];
                        snprintf(imm, sizeof(imm), "YmF0Y2g%d", i);
                        CHECK(count_in_state("users", "onPremisesImmutableId", imm) == 1, "item %d not stored once",
                              i);
                        ok++;
                }
        }
        canopy_graph_req_clear(r, N);
        canopy_graph_stats st;
        canopy_graph_stats_get(gc, &st);
        printf("batch: %d ok items, %llu $batch requests, %llu inner 429\n", ok, (unsigned long long)st.batches,
               (unsigned long long)st.throttled);
        CHECK(st.batches > 3, "failed items were not retried in new batches (%llu)", (unsigned long long)st.batches);
        canopy_graph_free(gc);
        return 0;
}

/* Roles without write permission; and a wrong secret. */
static int scen_forbidden(void) {
        canopy_graph_conf c;
        base_conf(&c);
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        char uid[CANOPY_GRAPH_ID_MAX], body[1024];
        user_body(body, sizeof(body), "nope", "bm9wZQ==");
        canopy_err err = canopy_graph_user_create(gc, body, "bm9wZQ==", false, uid, NULL, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_AUTH && ei.http_status == 403, "create without permission: %s HTTP %ld",
              canopy_err_name(err), ei.http_status);
        CHECK(ei.code[0] && ei.request_id[0], "403 details missing (code '%s')", ei.code);
        CHECK(count_in_state("users", "onPremisesImmutableId", "bm9wZQ==") == 0, "user created anyway");
        canopy_graph_free(gc);

        base_conf(&c);
        c.client_secret = "wrong-secret-value";
        gc = new_client(&c);
        err = canopy_graph_authenticate(gc, &ei);
        CHECK(err == CANOPY_ERR_GRAPH_AUTH, "wrong secret: %s (HTTP %ld)", canopy_err_name(err), ei.http_status);
        printf("forbidden: 403 -> %s, bad secret -> %s (%s)\n", canopy_err_name(CANOPY_ERR_GRAPH_AUTH),
               canopy_err_name(err), ei.code);
        canopy_graph_free(gc);
        return 0;
}

/* Latency: many requests in flight at once over one HTTP/2 connection. */
static int scen_latency(void) {
        canopy_graph_conf c;
        base_conf(&c);
        c.max_concurrency = 32;
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        CHECK_OK(canopy_graph_authenticate(gc, &ei), &ei);
        enum { N = 64 };
        canopy_graph_req r[N];
        memset(r, 0, sizeof(r));
        for (int i = 0; i < N; i++) {
                r[i].method = "GET";
                r[i].path = "/users?$top=1";
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        CHECK(canopy_graph_run(gc, r, N) == CANOPY_OK, "run: %s", canopy_err_name(r[0].err));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        for (int i = 0; i < N; i++)
                CHECK(r[i].res.status == 200 && r[i].res.request_id[0] && r[i].res.client_request_id[0],
                      "item %d status %ld", i, r[i].res.status);
        CHECK(strcmp(r[0].res.client_request_id, r[1].res.client_request_id) != 0, "client-request-id reused");
        canopy_graph_req_clear(r, N);
        printf("latency: %d GETs concurrently in %.0f ms\n", N,
               (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
        canopy_graph_free(gc);
        return 0;
}

/* ---- certificate credentials (own emulator instance) ---- */

static int write_cert(const char *certp, const char *keyp) {
        EVP_PKEY *pkey = NULL;
        EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, NULL);
        EVP_PKEY_keygen_init(kctx);
        EVP_PKEY_CTX_set_rsa_keygen_bits(kctx, 2048);
        EVP_PKEY_keygen(kctx, &pkey);
        EVP_PKEY_CTX_free(kctx);
        X509 *x = X509_new();
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
        X509_gmtime_adj(X509_getm_notBefore(x), -60);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, pkey);
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (unsigned char *)"canopy-app", -1,
                                   -1, 0);
        X509_set_issuer_name(x, X509_get_subject_name(x));
        X509_sign(x, pkey, EVP_sha256());
        FILE *f = fopen(certp, "w");
        if (!f)
                return -1;
        PEM_write_X509(f, x);
        fclose(f);
        f = fopen(keyp, "w");
        if (!f)
                return -1;
        PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
        fclose(f);
        X509_free(x);
        EVP_PKEY_free(pkey);
        return 0;
}

static int scen_cert(void) {
        const char *tmp = env("CANOPY_TEST_TMPDIR");
        const char *bin = env("CANOPY_TEST_BIN");
        char certp[512], keyp[512], portf[512], exe[512], spec[1200], logp[512];
        snprintf(certp, sizeof(certp), "%s/app-cert.pem", tmp);
        snprintf(keyp, sizeof(keyp), "%s/app-key.pem", tmp);
        snprintf(portf, sizeof(portf), "%s/cert-emu.port", tmp);
        snprintf(logp, sizeof(logp), "%s/cert-emu.log", tmp);
        snprintf(exe, sizeof(exe), "%s/canopy-graph-emulator", bin);
        CHECK(write_cert(certp, keyp) == 0, "cannot write test certificate");
        snprintf(spec, sizeof(spec), "certtenant:11111111-1111-4111-8111-111111111111:%s:User.ReadWrite.All", certp);
        unlink(portf);
        pid_t pid = fork();
        if (pid == 0) {
                FILE *l = freopen(logp, "w", stderr);
                (void)l;
                execl(exe, exe, "--listen", "127.0.0.1:0", "--port-file", portf, "--insecure-http", "--client-cert",
                      spec, "--domain", "canopy.test", (char *)NULL);
                _exit(127);
        }
        CHECK(pid > 0, "fork");
        int port = 0;
        for (int i = 0; i < 300 && !port; i++) {
                char *p = read_file(portf);
                if (p && *p)
                        port = atoi(p);
                free(p);
                if (!port)
                        usleep(50 * 1000);
        }
        int rc = 1;
        if (!port) {
                fprintf(stderr, "FAIL: emulator for cert test did not start (see %s)\n", logp);
                goto out;
        }
        char url[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
        for (int variant = 0; variant < 2; variant++) {
                canopy_graph_conf c;
                canopy_graph_conf_init(&c);
                c.authority_url = url;
                c.graph_url = url;
                c.allow_insecure = true;
                c.tenant = "certtenant";
                c.client_id = "11111111-1111-4111-8111-111111111111";
                c.cert_file = certp;
                c.key_file = keyp;
                c.jwt_alg = variant ? CANOPY_GRAPH_JWT_PS256 : CANOPY_GRAPH_JWT_RS256;
                c.jwt_x5t_sha256 = variant == 1;
                canopy_graph *gc = new_client(&c);
                canopy_graph_error ei;
                canopy_err err = canopy_graph_authenticate(gc, &ei);
                if (err) {
                        fprintf(stderr, "FAIL: cert auth variant %d: %s (HTTP %ld %s: %s)\n", variant,
                                canopy_err_name(err), ei.http_status, ei.code, ei.message);
                        canopy_graph_free(gc);
                        goto out;
                }
                char uid[CANOPY_GRAPH_ID_MAX], body[1024];
                user_body(body, sizeof(body), variant ? "certps" : "certrs", variant ? "Y2VydDE=" : "Y2VydDA=");
                err = canopy_graph_user_create(gc, body, variant ? "Y2VydDE=" : "Y2VydDA=", false, uid, NULL, &ei);
                canopy_graph_free(gc);
                if (err) {
                        fprintf(stderr, "FAIL: create with cert token: %s\n", canopy_err_name(err));
                        goto out;
                }
        }
        /* https refused for http:// without allow_insecure */
        {
                canopy_graph_conf c;
                canopy_graph_conf_init(&c);
                c.graph_url = url;
                c.tenant = "certtenant";
                c.client_id = "x";
                c.client_secret = "whatever-secret";
                canopy_graph *gc = NULL;
                if (canopy_graph_new(&c, &gc, NULL, 0) != CANOPY_ERR_GRAPH_INSECURE) {
                        fprintf(stderr, "FAIL: http:// accepted without allow_insecure\n");
                        canopy_graph_free(gc);
                        goto out;
                }
        }
        printf("cert: RS256+x5t and PS256+x5t#S256 assertions accepted\n");
        rc = 0;
out:
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        return rc;
}

/* ---- shared budget ---- */

#define BUDGET_N 20
#define BUDGET_W_MS 3000
#define BUDGET_THREADS 3

typedef struct bthread {
        int idx;
        int errors;
        char msg[256];
} bthread;

static void *budget_worker(void *arg) {
        bthread *t = arg;
        canopy_graph_conf c;
        base_conf(&c);
        c.redis_host = getenv("CANOPY_TEST_REDIS_HOST");
        c.redis_port = atoi(getenv("CANOPY_TEST_REDIS_PORT"));
        c.budget_writes = BUDGET_N;
        c.budget_window_ms = BUDGET_W_MS;
        c.budget_max_wait_ms = 60000;
        canopy_graph *gc = new_client(&c);
        for (int i = 0; i < BUDGET_N; i++) {
                char name[32], imm[32], body[1024], id[CANOPY_GRAPH_ID_MAX];
                canopy_graph_error ei;
                snprintf(name, sizeof(name), "w%dn%d", t->idx, i);
                snprintf(imm, sizeof(imm), "YnVkZ2V0%d-%d", t->idx, i);
                user_body(body, sizeof(body), name, imm);
                canopy_err err = canopy_graph_user_create(gc, body, imm, false, id, NULL, &ei);
                if (err) {
                        t->errors++;
                        snprintf(t->msg, sizeof(t->msg), "%s HTTP %ld %s", canopy_err_name(err), ei.http_status,
                                 ei.code);
                }
        }
        canopy_graph_free(gc);
        return NULL;
}

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int scen_budget(void) {
        env("CANOPY_TEST_REDIS_HOST");
        json_t *s0 = admin("GET", "/_emulator/stats");
        CHECK(s0 && stat_int(s0, "writes") >= 0, "emulator stats lack 'writes'");
        int64_t w0 = stat_int(s0, "writes");
        json_decref(s0);
        pthread_t th[BUDGET_THREADS];
        bthread bt[BUDGET_THREADS];
        /* Read the secret here, once: the threads' base_conf() would race on
         * the shared pointer (and leak the copies that lost). */
        canopy_graph_conf c0;
        base_conf(&c0);
        for (int i = 0; i < BUDGET_THREADS; i++) {
                memset(&bt[i], 0, sizeof(bt[i]));
                bt[i].idx = i;
                pthread_create(&th[i], NULL, budget_worker, &bt[i]);
        }
        /* sample the emulator's write counter while the threads run */
        enum { MAXS = 4000 };
        static int64_t ts[MAXS], ws[MAXS];
        int ns = 0;
        int64_t total = 0;
        while (ns < MAXS) {
                json_t *s = admin("GET", "/_emulator/stats");
                int64_t w = s ? stat_int(s, "writes") - w0 : -1;
                json_decref(s);
                ts[ns] = now_ms();
                ws[ns] = w;
                ns++;
                total = w;
                if (w >= BUDGET_N * BUDGET_THREADS)
                        break;
                usleep(50 * 1000);
        }
        for (int i = 0; i < BUDGET_THREADS; i++) {
                pthread_join(th[i], NULL);
                CHECK(bt[i].errors == 0, "thread %d: %d errors (%s)", i, bt[i].errors, bt[i].msg);
        }
        CHECK(total == BUDGET_N * BUDGET_THREADS, "emulator counted %lld writes, want %d", (long long)total,
              BUDGET_N * BUDGET_THREADS);
        /* In any span of the emulator's clock shorter than the window by a
         * margin (for the time a granted write takes to arrive), it never
         * counted more than the budget. Without the shared budget the three
         * threads write all 60 in well under a window. */
        const int64_t margin = 1000;
        int64_t worst = 0;
        for (int i = 0; i < ns; i++)
                for (int j = i + 1; j < ns && ts[j] - ts[i] <= BUDGET_W_MS - margin; j++)
                        if (ws[j] - ws[i] > worst)
                                worst = ws[j] - ws[i];
        printf("budget: %d threads x %d writes, budget %d per %d ms; max %lld writes seen in %lld ms spans; "
               "%d samples over %lld ms\n",
               BUDGET_THREADS, BUDGET_N, BUDGET_N, BUDGET_W_MS, (long long)worst, (long long)(BUDGET_W_MS - margin),
               ns, (long long)(ts[ns - 1] - ts[0]));
        CHECK(worst <= BUDGET_N, "budget exceeded: %lld writes in one window", (long long)worst);
        /* a client whose budget is spent gets GRAPH_BUDGET with the wait,
         * and nothing reaches Graph */
        {
                canopy_graph_conf c;
                base_conf(&c);
                c.redis_host = getenv("CANOPY_TEST_REDIS_HOST");
                c.redis_port = atoi(getenv("CANOPY_TEST_REDIS_PORT"));
                c.budget_writes = 2;
                c.budget_window_ms = 60000;
                c.budget_max_wait_ms = 100;
                char bkey[128];
                snprintf(bkey, sizeof(bkey), "canopy:test:budget2:{%lu}", run_id);
                c.budget_key = bkey;
                canopy_graph *gc = new_client(&c);
                canopy_graph_error ei;
                char id[CANOPY_GRAPH_ID_MAX], body[1024];
                canopy_err err = CANOPY_OK;
                json_t *s1 = admin("GET", "/_emulator/stats");
                for (int i = 0; i < 3; i++) {
                        char name[32], imm[32];
                        snprintf(name, sizeof(name), "spent%d", i);
                        snprintf(imm, sizeof(imm), "c3BlbnQ%d", i);
                        user_body(body, sizeof(body), name, imm);
                        err = canopy_graph_user_create(gc, body, imm, false, id, NULL, &ei);
                        if (i < 2)
                                CHECK_OK(err, &ei);
                }
                json_t *s2 = admin("GET", "/_emulator/stats");
                CHECK(err == CANOPY_ERR_GRAPH_BUDGET && ei.retry_after_ms > 50000,
                      "third write: %s, wait %lld ms", canopy_err_name(err), (long long)ei.retry_after_ms);
                CHECK(stat_int(s2, "writes") - stat_int(s1, "writes") == 2, "refused write reached the emulator");
                json_decref(s1);
                json_decref(s2);
                canopy_graph_free(gc);
        }
        /* direct check of the primitive: taking beyond the budget is refused with a wait */
        canopy_graph_budget *b = NULL;
        char key[128];
        snprintf(key, sizeof(key), "canopy:test:budget:{%lu}", run_id);
        CHECK(canopy_graph_budget_new(getenv("CANOPY_TEST_REDIS_HOST"), atoi(getenv("CANOPY_TEST_REDIS_PORT")), NULL,
                                      key, 5, 60000, &b) == CANOPY_OK,
              "budget_new");
        int64_t wait = -1;
        CHECK(canopy_graph_budget_take(b, 3, &wait) == CANOPY_OK && wait == 0, "take 3");
        CHECK(canopy_graph_budget_take(b, 2, &wait) == CANOPY_OK, "take 2");
        CHECK(canopy_graph_budget_take(b, 1, &wait) == CANOPY_ERR_GRAPH_BUDGET && wait > 0 && wait <= 60001,
              "6th write granted (wait %lld)", (long long)wait);
        CHECK(canopy_graph_budget_acquire(b, 1, 10, &wait) == CANOPY_ERR_GRAPH_BUDGET, "acquire beyond max wait");
        canopy_graph_budget_free(b);
        return 0;
}

/* ---- HTTP/2 ---- */

static int64_t proto_count(json_t *stats, const char *obj, const char *proto) {
        json_t *v = json_object_get(json_object_get(stats, obj), proto);
        return json_is_integer(v) ? json_integer_value(v) : 0;
}

static int set_faults(const char *json) {
        json_t *r = admin_body("POST", "/_emulator/faults", json);
        int ok = r && json_object_get(r, "failNext") != NULL;
        json_decref(r);
        return ok ? 0 : -1;
}

/* The client's whole repertoire over one protocol, with 50 requests in
 * flight at a time, then the emulator's per-protocol counters: h2 (default
 * conf) must carry every client request over HTTP/2 on at most two
 * connections (one for the token, one for the multi handle); h1
 * (http1_only) must carry them over HTTP/1.1, where the same concurrency
 * needs many connections. Admin requests go over the other protocol and are
 * counted, so the figures are exact. */
static int scen_protocol(bool h1) {
        const char *want = h1 ? "HTTP/1.1" : "HTTP/2", *other = h1 ? "HTTP/2" : "HTTP/1.1";
        admin_http = h1 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1;
        json_t *s0 = admin("GET", "/_emulator/stats");
        CHECK(s0 && json_is_object(json_object_get(s0, "byProtocol")), "stats lack byProtocol");
        int64_t calls0 = admin_calls;
        /* a little latency, so that the 50 requests really overlap */
        CHECK(set_faults("{\"latencyMs\":20}") == 0, "set latency");

        canopy_graph_conf c;
        base_conf(&c);
        c.http1_only = h1;
        c.max_concurrency = 50;
        c.consistency_retries = 12;
        canopy_graph *gc = new_client(&c);
        canopy_graph_error ei;
        CHECK_OK(canopy_graph_authenticate(gc, &ei), &ei);

        enum { N = 50 };
        static canopy_graph_req reqs[N];
        static char bodies[N][1024], ids[N][CANOPY_GRAPH_ID_MAX], paths[N][128];
        const char *idp[N];
        memset(reqs, 0, sizeof(reqs));
        for (int i = 0; i < N; i++) {
                char name[32], imm[32];
                snprintf(name, sizeof(name), "%sp%d", h1 ? "h1" : "h2", i);
                snprintf(imm, sizeof(imm), "cHJvdG8%s%d", h1 ? "x" : "y", i);
                user_body(bodies[i], sizeof(bodies[i]), name, imm);
                reqs[i].method = "POST";
                reqs[i].path = "/users";
                reqs[i].body = bodies[i];
        }
        CHECK(canopy_graph_run(gc, reqs, N) == CANOPY_OK, "concurrent creates: %s", canopy_err_name(reqs[0].err));
        for (int i = 0; i < N; i++) {
                CHECK(reqs[i].res.status == 201, "create %d: HTTP %ld", i, reqs[i].res.status);
                json_t *o = json_loads(reqs[i].res.body, 0, NULL);
                snprintf(ids[i], sizeof(ids[i]), "%s", json_string_value(json_object_get(o, "id")));
                json_decref(o);
                idp[i] = ids[i];
        }
        canopy_graph_req_clear(reqs, N);
        for (int i = 0; i < N; i++) {
                snprintf(paths[i], sizeof(paths[i]), "/users/%.*s?$select=id,displayName", CANOPY_GRAPH_ID_MAX, ids[i]);
                reqs[i].method = "GET";
                reqs[i].path = paths[i];
        }
        CHECK(canopy_graph_run(gc, reqs, N) == CANOPY_OK, "concurrent gets: %s", canopy_err_name(reqs[0].err));
        for (int i = 0; i < N; i++)
                CHECK(reqs[i].res.status == 200 && reqs[i].res.body && strstr(reqs[i].res.body, ids[i]) &&
                          reqs[i].res.request_id[0] && reqs[i].res.client_request_id[0],
                      "get %d: HTTP %ld", i, reqs[i].res.status);
        CHECK(strcmp(reqs[0].res.request_id, reqs[1].res.request_id) != 0, "request-id reused");
        canopy_graph_req_clear(reqs, N);
        CHECK(set_faults("{\"latencyMs\":0}") == 0, "clear latency");

        /* $filter, and a quoted value */
        char fid[CANOPY_GRAPH_ID_MAX], imm[32];
        snprintf(imm, sizeof(imm), "cHJvdG8%s7", h1 ? "x" : "y");
        CHECK_OK(canopy_graph_user_find(gc, imm, fid, NULL, &ei), &ei);
        CHECK(!strcmp(fid, ids[7]), "filter found %s, want %s", fid, ids[7]);
        CHECK(canopy_graph_user_find(gc, "x' or 1 eq 1", fid, NULL, &ei) == CANOPY_ERR_GRAPH_NOT_FOUND,
              "quoted filter value");
        /* paging: follow @odata.nextLink */
        {
                canopy_graph_result res = {0}, res2 = {0};
                CHECK_OK(canopy_graph_request(gc, "GET", "/users?$top=10&$select=id", NULL, 0, &res, &ei), &ei);
                json_t *page = json_loads(res.body, 0, NULL);
                const char *next = json_string_value(json_object_get(page, "@odata.nextLink"));
                CHECK(next != NULL, "no nextLink on a 10-user page");
                CHECK_OK(canopy_graph_request(gc, "GET", next, NULL, 0, &res2, &ei), &ei);
                json_t *p2 = json_loads(res2.body, 0, NULL);
                CHECK(json_array_size(json_object_get(p2, "value")) == 10, "second page: %s", res2.body);
                json_decref(page);
                json_decref(p2);
                canopy_graph_result_clear(&res);
                canopy_graph_result_clear(&res2);
        }
        /* $batch: 30 GETs in two batches */
        for (int i = 0; i < 30; i++) {
                snprintf(paths[i], sizeof(paths[i]), "/users/%s?$select=id", ids[i]);
                reqs[i].method = "GET";
                reqs[i].path = paths[i];
        }
        CHECK(canopy_graph_batch(gc, reqs, 30) == CANOPY_OK, "batch: %s", canopy_err_name(reqs[0].err));
        for (int i = 0; i < 30; i++)
                CHECK(reqs[i].res.body && strstr(reqs[i].res.body, ids[i]), "batch item %d", i);
        canopy_graph_req_clear(reqs, 30);
        /* members: add 50 (3 PATCHes), remove 10 */
        char gid[CANOPY_GRAPH_ID_MAX], gbody[256];
        snprintf(gbody, sizeof(gbody), "{\"displayName\":\"Proto\",\"mailNickname\":\"proto%s%lu\"}", h1 ? "1" : "2",
                 run_id);
        CHECK_OK(canopy_graph_create(gc, CANOPY_GRAPH_GROUP, gbody, false, NULL, NULL, gid, NULL, &ei), &ei);
        canopy_err errs[N];
        CHECK_OK(canopy_graph_members_add(gc, gid, idp, N, errs, &ei), &ei);
        CHECK_OK(canopy_graph_members_remove(gc, gid, idp, 10, errs, &ei), &ei);
        char **mids = NULL;
        size_t nm = 0;
        CHECK_OK(canopy_graph_members_list(gc, gid, 0, &mids, &nm, &ei), &ei);
        CHECK(nm == N - 10, "members %zu, want %d", nm, N - 10);
        canopy_graph_ids_free(mids, nm);

        /* 429 with Retry-After, then a 503: retried, and succeed */
        canopy_graph_stats st0, st;
        canopy_graph_stats_get(gc, &st0);
        char *json = NULL;
        CHECK(set_faults("{\"failNext\":1,\"failStatus\":429}") == 0, "set 429");
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, ids[0], NULL, &json, &ei), &ei);
        free(json);
        CHECK(set_faults("{\"failNext\":1,\"failStatus\":503}") == 0, "set 503");
        CHECK_OK(canopy_graph_get(gc, CANOPY_GRAPH_USER, ids[1], NULL, &json, &ei), &ei);
        free(json);
        /* replication lag: a new object is not found at once */
        CHECK(set_faults("{\"replicationLagMs\":600}") == 0, "set lag");
        char uid[CANOPY_GRAPH_ID_MAX], body[1024];
        snprintf(imm, sizeof(imm), "bGFncHJvdG8%s", h1 ? "x" : "y");
        user_body(body, sizeof(body), h1 ? "h1lag" : "h2lag", imm);
        CHECK_OK(canopy_graph_user_create(gc, body, imm, false, uid, NULL, &ei), &ei);
        CHECK_OK(canopy_graph_update(gc, CANOPY_GRAPH_USER, uid, "{\"jobTitle\":\"after lag\"}", &ei), &ei);
        CHECK(set_faults("{\"replicationLagMs\":0}") == 0, "clear lag");
        canopy_graph_stats_get(gc, &st);
        CHECK(st.throttled == st0.throttled + 1, "429 seen %llu times", (unsigned long long)(st.throttled - st0.throttled));
        CHECK(st.unavailable == st0.unavailable + 1, "503 seen %llu times",
              (unsigned long long)(st.unavailable - st0.unavailable));
        CHECK(st.retries >= st0.retries + 3, "retries: %llu (429, 503, lag)",
              (unsigned long long)(st.retries - st0.retries));
        canopy_graph_free(gc);

        json_t *s1 = admin("GET", "/_emulator/stats");
        CHECK(s1, "stats");
        int64_t reqs_want = proto_count(s1, "byProtocol", want) - proto_count(s0, "byProtocol", want);
        int64_t reqs_other = proto_count(s1, "byProtocol", other) - proto_count(s0, "byProtocol", other);
        int64_t conns = proto_count(s1, "connections", want) - proto_count(s0, "connections", want);
        int64_t client = (int64_t)(st.requests + st.tokens);
        printf("%s: %lld client requests (%llu tokens, %llu retries) over %s on %lld connections; %lld admin "
               "requests over %s\n",
               h1 ? "h1" : "h2", (long long)reqs_want, (unsigned long long)st.tokens,
               (unsigned long long)st.retries, want, (long long)conns, (long long)reqs_other, other);
        CHECK(reqs_want == client, "emulator counted %lld %s requests, the client sent %lld", (long long)reqs_want,
              want, (long long)client);
        CHECK(reqs_other == admin_calls - calls0, "%lld %s requests, want the %lld admin ones only",
              (long long)reqs_other, other, (long long)(admin_calls - calls0));
        if (h1)
                CHECK(conns > 2, "50 concurrent HTTP/1.1 requests on %lld connections", (long long)conns);
        else
                CHECK(conns >= 1 && conns <= 2, "HTTP/2 requests on %lld connections, want 1 or 2 (multiplexed)",
                      (long long)conns);
        json_decref(s0);
        json_decref(s1);
        return 0;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: graph_it ops|cert|throttle|unavailable|latency|lag|token|batch|forbidden|"
                                "budget|h2|h1\n");
                return 2;
        }
        canopy_log_init("graph-it");
        curl_global_init(CURL_GLOBAL_DEFAULT);
        run_id = (unsigned long)time(NULL) % 100000 * 100 + (unsigned long)getpid() % 100;
        const char *s = argv[1];
        int rc;
        if (!strcmp(s, "ops"))
                rc = scen_ops();
        else if (!strcmp(s, "cert"))
                rc = scen_cert();
        else if (!strncmp(s, "throttle", 8))
                rc = scen_faults(s, true, false);
        else if (!strcmp(s, "unavailable"))
                rc = scen_faults(s, false, true);
        else if (!strcmp(s, "latency"))
                rc = scen_latency();
        else if (!strcmp(s, "lag"))
                rc = scen_lag();
        else if (!strcmp(s, "token"))
                rc = scen_token();
        else if (!strcmp(s, "batch"))
                rc = scen_batch();
        else if (!strcmp(s, "forbidden"))
                rc = scen_forbidden();
        else if (!strcmp(s, "budget"))
                rc = scen_budget();
        else if (!strcmp(s, "h2") || !strcmp(s, "h1"))
                rc = scen_protocol(!strcmp(s, "h1"));
        else {
                fprintf(stderr, "unknown scenario %s\n", s);
                return 2;
        }
        free(secret);
        curl_global_cleanup();
        if (rc == 0 && failures == 0)
                printf("PASS %s\n", s);
        return rc || failures ? 1 : 0;
}
