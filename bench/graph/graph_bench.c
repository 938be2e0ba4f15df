/* graph_bench: request rate of the Graph client against the emulator, next
 * to the emulator's raw rate under a plain libcurl multi load generator
 * (same HTTP/2 multiplexing, same concurrency, no retry engine, no JSON
 * handling), in the same run; and the client's rate over HTTP/2 (the
 * default: streams multiplexed on one connection) against the same client
 * with http1_only (one keep-alive connection per request in flight), on the
 * same emulator port. Prints figures and ratios.
 *
 *   run-with --emulator -- graph_bench [N] [CONCURRENCY]
 */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/graph.h"
#include "graph_int.h"

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *env(const char *n) {
        const char *v = getenv(n);
        if (!v || !*v) {
                fprintf(stderr, "SKIP: %s not set (run through tests/harness/run-with --emulator)\n", n);
                exit(77);
        }
        return v;
}

static size_t sink(char *p, size_t s, size_t n, void *u) {
        (void)p;
        (void)u;
        return s * n;
}

static unsigned long rid;

/* Body of the i-th raw create. */
static void raw_body(char *out, size_t len, int i) {
        snprintf(out, len,
                 "{\"accountEnabled\":true,\"displayName\":\"raw%d\",\"mailNickname\":\"raw%lu-%d\","
                 "\"userPrincipalName\":\"raw%lu-%d@canopy.test\",\"passwordProfile\":{\"password\":\"Xy!pass-Long1\"}}",
                 i, rid, i, rid, i);
}

/* Raw load: n requests, conc in flight, each slot keeping its own easy
 * handle (and so its connection) like a plain load generator would. */
static double raw_rate(const char *url, const char *token, const char *ca, int n, int conc, const char *method,
                       bool body, int *ret_fail) {
        CURLM *m = curl_multi_init();
        curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
        char auth[8192];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        struct curl_slist *h = curl_slist_append(NULL, auth);
        h = curl_slist_append(h, "Content-Type: application/json");
        CURL **slots = calloc((size_t)conc, sizeof(*slots));
        char bodybuf[1024];
        for (int i = 0; i < conc; i++) {
                CURL *e = curl_easy_init();
                curl_easy_setopt(e, CURLOPT_URL, url);
                curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
                curl_easy_setopt(e, CURLOPT_CAINFO, ca);
                curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
                curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
                curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
                curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
                if (strcmp(method, "GET") && strcmp(method, "POST"))
                        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
                slots[i] = e;
        }
        int started = 0, done = 0, fail = 0;
        double t0 = now_s();
        for (int i = 0; i < conc && started < n; i++) {
                if (body) {
                        raw_body(bodybuf, sizeof(bodybuf), started);
                        curl_easy_setopt(slots[i], CURLOPT_COPYPOSTFIELDS, bodybuf);
                }
                curl_multi_add_handle(m, slots[i]);
                started++;
        }
        while (done < n) {
                int still;
                curl_multi_perform(m, &still);
                CURLMsg *msg;
                int left, got = 0;
                while ((msg = curl_multi_info_read(m, &left))) {
                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        got++;
                        long st = 0;
                        CURL *e = msg->easy_handle;
                        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
                        if (msg->data.result != CURLE_OK || st >= 300)
                                fail++;
                        curl_multi_remove_handle(m, e);
                        done++;
                        if (started < n) {
                                if (body) {
                                        raw_body(bodybuf, sizeof(bodybuf), started);
                                        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, bodybuf);
                                }
                                curl_multi_add_handle(m, e);
                                started++;
                        }
                }
                if (!got && done < n)
                        curl_multi_poll(m, NULL, 0, 100, NULL);
        }
        double dt = now_s() - t0;
        for (int i = 0; i < conc; i++)
                curl_easy_cleanup(slots[i]);
        free(slots);
        curl_slist_free_all(h);
        curl_multi_cleanup(m);
        *ret_fail = fail;
        return n / dt;
}

int main(int argc, char **argv) {
        int n = argc > 1 ? atoi(argv[1]) : 2000;
        int conc = argc > 2 ? atoi(argv[2]) : 16;
        if (n < 20)
                n = 20;
        const char *url = env("CANOPY_TEST_GRAPH_URL");
        const char *ca = env("CANOPY_TEST_GRAPH_CA");
        FILE *f = fopen(env("CANOPY_TEST_GRAPH_SECRET_FILE"), "r");
        char secret[512] = "";
        if (!f || !fgets(secret, sizeof(secret), f)) {
                fprintf(stderr, "cannot read secret file\n");
                return 1;
        }
        fclose(f);
        secret[strcspn(secret, "\r\n")] = '\0';
        curl_global_init(CURL_GLOBAL_DEFAULT);

        canopy_graph_conf c;
        canopy_graph_conf_init(&c);
        c.authority_url = url;
        c.graph_url = url;
        c.tenant = env("CANOPY_TEST_GRAPH_TENANT");
        c.client_id = env("CANOPY_TEST_GRAPH_CLIENT_ID");
        c.client_secret = secret;
        c.ca_file = ca;
        c.max_concurrency = conc;
        canopy_graph *gc = NULL;
        char eb[256];
        if (canopy_graph_new(&c, &gc, eb, sizeof(eb))) {
                fprintf(stderr, "canopy_graph_new: %s\n", eb);
                return 1;
        }
        canopy_graph_error ei;
        if (canopy_graph_authenticate(gc, &ei)) {
                fprintf(stderr, "authenticate: %s %s\n", ei.code, ei.message);
                return 1;
        }
        char geturl[512];
        snprintf(geturl, sizeof(geturl), "%s/v1.0/users?$top=1", url);

        /* warm-up: connection and emulator caches */
        int fail = 0;
        raw_rate(geturl, gc->token, ca, 50, conc, "GET", false, &fail);

        int rawfail = 0;
        double raw = raw_rate(geturl, gc->token, ca, n, conc, "GET", false, &rawfail);

        canopy_graph_req *r = calloc((size_t)n, sizeof(*r));
        for (int i = 0; i < n; i++) {
                r[i].method = "GET";
                r[i].path = "/users?$top=1";
        }
        double t0 = now_s();
        canopy_err err = canopy_graph_run(gc, r, (size_t)n);
        double run = n / (now_s() - t0);
        canopy_graph_req_clear(r, (size_t)n);
        if (err)
                fprintf(stderr, "run: %s\n", canopy_err_name(err));

        t0 = now_s();
        canopy_err berr = canopy_graph_batch(gc, r, (size_t)n);
        double batch = n / (now_s() - t0);
        canopy_graph_req_clear(r, (size_t)n);
        if (berr)
                fprintf(stderr, "batch: %s\n", canopy_err_name(berr));

        /* The same reads and creates with http1_only, on the same port. */
        canopy_graph_conf c1 = c;
        c1.http1_only = true;
        canopy_graph *g1 = NULL;
        if (canopy_graph_new(&c1, &g1, eb, sizeof(eb)) || canopy_graph_authenticate(g1, &ei)) {
                fprintf(stderr, "http1_only client: %s\n", g1 ? ei.message : eb);
                return 1;
        }
        for (int i = 0; i < n; i++) {
                r[i].method = "GET";
                r[i].path = "/users?$top=1";
        }
        t0 = now_s();
        canopy_err err1 = canopy_graph_run(g1, r, (size_t)n);
        double run1 = n / (now_s() - t0);
        canopy_graph_req_clear(r, (size_t)n);
        if (err1)
                fprintf(stderr, "run (HTTP/1.1): %s\n", canopy_err_name(err1));

        int nseq = n / 4;
        t0 = now_s();
        for (int i = 0; i < nseq; i++) {
                canopy_graph_result res = {0};
                canopy_graph_request(gc, "GET", "/users?$top=1", NULL, 0, &res, &ei);
                canopy_graph_result_clear(&res);
        }
        double seq = nseq / (now_s() - t0);

        /* writes: creates, raw vs client (no budget configured here) */
        int nw = n / 2;
        char posturl[512];
        snprintf(posturl, sizeof(posturl), "%s/v1.0/users", url);
        rid = (unsigned long)time(NULL) % 100000;
        int wfail = 0;
        double raww = raw_rate(posturl, gc->token, ca, nw, conc, "POST", true, &wfail);
        char **bodies = calloc((size_t)nw, sizeof(*bodies));
        for (int i = 0; i < nw; i++) {
                bodies[i] = malloc(600);
                snprintf(bodies[i], 600,
                         "{\"accountEnabled\":true,\"displayName\":\"cl%d\",\"mailNickname\":\"cl%lu-%d\","
                         "\"userPrincipalName\":\"cl%lu-%d@canopy.test\",\"passwordProfile\":{\"password\":"
                         "\"Xy!pass-Long1\"}}",
                         i, rid, i, rid, i);
                r[i].method = "POST";
                r[i].path = "/users";
                r[i].body = bodies[i];
        }
        t0 = now_s();
        canopy_err werr = canopy_graph_run(gc, r, (size_t)nw);
        double runw = nw / (now_s() - t0);
        canopy_graph_req_clear(r, (size_t)nw);
        for (int i = 0; i < nw; i++) {
                snprintf(bodies[i], 600,
                         "{\"accountEnabled\":true,\"displayName\":\"bt%d\",\"mailNickname\":\"bt%lu-%d\","
                         "\"userPrincipalName\":\"bt%lu-%d@canopy.test\",\"passwordProfile\":{\"password\":"
                         "\"Xy!pass-Long1\"}}",
                         i, rid, i, rid, i);
        }
        t0 = now_s();
        canopy_err bwerr = canopy_graph_batch(gc, r, (size_t)nw);
        double batchw = nw / (now_s() - t0);
        canopy_graph_req_clear(r, (size_t)nw);
        for (int i = 0; i < nw; i++) {
                snprintf(bodies[i], 600,
                         "{\"accountEnabled\":true,\"displayName\":\"h1%d\",\"mailNickname\":\"h1%lu-%d\","
                         "\"userPrincipalName\":\"h1%lu-%d@canopy.test\",\"passwordProfile\":{\"password\":"
                         "\"Xy!pass-Long1\"}}",
                         i, rid, i, rid, i);
        }
        t0 = now_s();
        canopy_err werr1 = canopy_graph_run(g1, r, (size_t)nw);
        double runw1 = nw / (now_s() - t0);
        canopy_graph_req_clear(r, (size_t)nw);

        canopy_graph_stats st;
        canopy_graph_stats_get(gc, &st);
        printf("graph bench: %d requests, concurrency %d, HTTP/2 over TLS, emulator on loopback\n", n, conc);
        printf("  reads  raw curl multi (load generator) : %8.0f req/s  (%d failed)\n", raw, rawfail);
        printf("  reads  client canopy_graph_run         : %8.0f req/s  ratio %.2f%s\n", run, run / raw,
               err ? "  (errors)" : "");
        printf("  reads  client canopy_graph_batch       : %8.0f req/s  ratio %.2f%s\n", batch, batch / raw,
               berr ? "  (errors)" : "");
        printf("  reads  client sequential request       : %8.0f req/s  ratio %.2f\n", seq, seq / raw);
        printf("  reads  client run, http1_only          : %8.0f req/s  ratio %.2f; HTTP/2 / HTTP/1.1 %.2f%s\n", run1,
               run1 / raw, run / run1, err1 ? "  (errors)" : "");
        printf("  writes raw curl multi (load generator) : %8.0f req/s  (%d failed)\n", raww, wfail);
        printf("  writes client canopy_graph_run         : %8.0f req/s  ratio %.2f%s\n", runw, runw / raww,
               werr ? "  (errors)" : "");
        printf("  writes client canopy_graph_batch       : %8.0f req/s  ratio %.2f%s\n", batchw, batchw / raww,
               bwerr ? "  (errors)" : "");
        printf("  writes client run, http1_only          : %8.0f req/s  ratio %.2f; HTTP/2 / HTTP/1.1 %.2f%s\n",
               runw1, runw1 / raww, runw / runw1, werr1 ? "  (errors)" : "");
        printf("  client: %llu HTTP requests, %llu retries, %llu throttled, %llu batches\n",
               (unsigned long long)st.requests, (unsigned long long)st.retries, (unsigned long long)st.throttled,
               (unsigned long long)st.batches);
        for (int i = 0; i < nw; i++)
                free(bodies[i]);
        free(bodies);
        free(r);
        canopy_graph_free(gc);
        canopy_graph_free(g1);
        curl_global_cleanup();
        return (err || berr || werr || bwerr || err1 || werr1) ? 1 : 0;
}
