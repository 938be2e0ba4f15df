/* test_http.c: the service HTTP server, over a loopback port chosen by the
 * kernel (port 0), with libcurl as the client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canopy/http.h"
#include "canopy/log.h"
#include "canopy/metrics.h"

struct reply {
        long status;
        char *body;
        size_t len;
        char ctype[128];
        char headers[4096];
        size_t hlen;
};

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
        struct reply *r = ud;
        size_t l = sz * n;
        char *nb = realloc(r->body, r->len + l + 1);
        if (!nb)
                return 0;
        r->body = nb;
        memcpy(r->body + r->len, p, l);
        r->len += l;
        r->body[r->len] = 0;
        return l;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
        struct reply *r = ud;
        size_t l = sz * n;
        if (r->hlen + l < sizeof(r->headers)) {
                memcpy(r->headers + r->hlen, p, l);
                r->hlen += l;
                r->headers[r->hlen] = 0;
        }
        return l;
}

struct req_opts {
        const char *method;
        const char *body;
        size_t body_len;
        bool chunked;
        const char *auth;
        const char *cainfo; /* https */
};

/* Perform a request; returns the curl code, fills r (free r->body). */
static CURLcode do_req(const char *url, const struct req_opts *o, struct reply *r) {
        memset(r, 0, sizeof(*r));
        CURL *c = curl_easy_init();
        assert_non_null(c);
        struct curl_slist *h = NULL;
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
        if (o && o->method)
                curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, o->method);
        if (o && o->body) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, o->body);
                if (o->chunked)
                        h = curl_slist_append(h, "Transfer-Encoding: chunked");
                else
                        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)o->body_len);
        }
        h = curl_slist_append(h, "Expect:");
        if (o && o->auth) {
                char a[256];
                snprintf(a, sizeof(a), "Authorization: %s", o->auth);
                h = curl_slist_append(h, a);
        }
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        if (o && o->cainfo)
                curl_easy_setopt(c, CURLOPT_CAINFO, o->cainfo);
        CURLcode rc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        if (ct)
                snprintf(r->ctype, sizeof(r->ctype), "%s", ct);
        if (!r->body)
                r->body = calloc(1, 1);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return rc;
}

static void get(canopy_http *srv, const char *path, struct reply *r) {
        char url[256];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", canopy_http_port(srv), path);
        assert_int_equal(do_req(url, NULL, r), CURLE_OK);
}

/* ---- handlers ----------------------------------------------------------- */

static void echo(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        const char *tag = opaque;
        const char *auth = canopy_http_req_header(req, "authorization");
        const char *b = canopy_http_req_arg(req, "b");
        canopy_http_resp_printf(resp, 201, "application/json",
                                "tag=%s method=%s path=%s query=%s auth=%s b=%s len=%zu body=%.*s", tag,
                                req->method, req->path, req->query, auth ? auth : "-", b ? b : "-", req->body_len,
                                (int)(req->body_len > 40 ? 40 : req->body_len), req->body);
}

static void throttle(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        (void)opaque;
        (void)req;
        canopy_http_resp_set(resp, 429, NULL, "slow down\n", 10);
        canopy_http_resp_header(resp, "Retry-After", "7");
}

static bool ready_flag;

static bool ready_cb(void *opaque, char *why, size_t len) {
        (void)opaque;
        if (!ready_flag)
                snprintf(why, len, "kafka unreachable");
        return ready_flag;
}

/* ---- tests -------------------------------------------------------------- */

static void test_builtin_endpoints(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.metrics = reg;
        canopy_http *srv;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_port(srv), -1);
        assert_int_equal(canopy_http_start(srv), CANOPY_OK);
        assert_true(canopy_http_port(srv) > 0);
        canopy_metric *c = canopy_metrics_counter(reg, "canopy_test_total", "Test.", "k");
        canopy_metrics_add(c, CANOPY_LABELS("v"), 3);

        struct reply r;
        get(srv, "/healthz", &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "ok\n");
        free(r.body);

        get(srv, "/readyz", &r); /* no callback: ready */
        assert_int_equal(r.status, 200);
        free(r.body);
        ready_flag = false;
        canopy_http_set_ready(srv, ready_cb, NULL);
        get(srv, "/readyz", &r);
        assert_int_equal(r.status, 503);
        assert_string_equal(r.body, "not ready: kafka unreachable\n");
        free(r.body);
        ready_flag = true;
        get(srv, "/readyz", &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "ready\n");
        free(r.body);

        get(srv, "/metrics", &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
        assert_non_null(strstr(r.body, "# TYPE canopy_test_total counter\ncanopy_test_total{k=\"v\"} 3\n"));
        /* The server counts its own requests by status code. */
        assert_non_null(strstr(r.body, "canopy_http_requests_total{code=\"200\"} "));
        assert_non_null(strstr(r.body, "canopy_http_requests_total{code=\"503\"} 1\n"));
        free(r.body);

        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", canopy_http_port(srv));
        struct req_opts post = {.method = "POST", .body = "x", .body_len = 1};
        assert_int_equal(do_req(url, &post, &r), CURLE_OK);
        assert_int_equal(r.status, 405);
        assert_non_null(strstr(r.headers, "Allow: GET, HEAD"));
        free(r.body);

        get(srv, "/nope", &r);
        assert_int_equal(r.status, 404);
        free(r.body);
        canopy_http_free(srv);
        canopy_metrics_free(reg);
}

static void test_handlers(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.metrics = reg;
        canopy_http *srv;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_handle(srv, "POST", "/admin/", echo, "admin"), CANOPY_OK);
        assert_int_equal(canopy_http_handle(srv, "POST", "/admin/approve", echo, "approve"), CANOPY_OK);
        assert_int_equal(canopy_http_handle(srv, NULL, "/any", echo, "any"), CANOPY_OK);
        assert_int_equal(canopy_http_handle(srv, "GET", "relative", echo, "x"), CANOPY_ERR_INVALID_ARG);
        assert_int_equal(canopy_http_start(srv), CANOPY_OK);
        /* Registration after start works too. */
        assert_int_equal(canopy_http_handle(srv, "GET", "/slow", throttle, NULL), CANOPY_OK);
        int port = canopy_http_port(srv);
        char url[256];
        struct reply r;

        snprintf(url, sizeof(url), "http://127.0.0.1:%d/admin/approve/7?a=1&b=x%%20y", port);
        const char *body = "{\"approve\":true}";
        struct req_opts o = {.method = "POST", .body = body, .body_len = strlen(body), .auth = "Bearer tok-123"};
        assert_int_equal(do_req(url, &o, &r), CURLE_OK);
        assert_int_equal(r.status, 201);
        assert_string_equal(r.ctype, "application/json");
        assert_string_equal(r.body, "tag=approve method=POST path=/admin/approve/7 query=a=1&b=x%20y "
                                    "auth=Bearer tok-123 b=x y len=16 body={\"approve\":true}");
        free(r.body);

        /* Shorter prefix; "/admin/approvex" is not under "/admin/approve". */
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/admin/approvex", port);
        struct req_opts o2 = {.method = "POST", .body = "", .body_len = 0};
        assert_int_equal(do_req(url, &o2, &r), CURLE_OK);
        assert_int_equal(r.status, 201);
        assert_non_null(strstr(r.body, "tag=admin "));
        assert_non_null(strstr(r.body, "query= auth=- b=- len=0"));
        free(r.body);

        /* Wrong method on a registered prefix: 405 with Allow. */
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/admin/approve", port);
        assert_int_equal(do_req(url, NULL, &r), CURLE_OK);
        assert_int_equal(r.status, 405);
        assert_non_null(strstr(r.headers, "Allow: POST"));
        free(r.body);

        /* Any method; "/anything" does not match "/any". */
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/any/x", port);
        struct req_opts del = {.method = "DELETE"};
        assert_int_equal(do_req(url, &del, &r), CURLE_OK);
        assert_int_equal(r.status, 201);
        assert_non_null(strstr(r.body, "method=DELETE"));
        free(r.body);
        get(srv, "/anything", &r);
        assert_int_equal(r.status, 404);
        free(r.body);

        get(srv, "/slow", &r);
        assert_int_equal(r.status, 429);
        assert_non_null(strstr(r.headers, "Retry-After: 7"));
        free(r.body);
        canopy_http_free(srv);
        canopy_metrics_free(reg);
}

static void test_body_cap(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.metrics = reg;
        hc.max_body = 1024;
        canopy_http *srv;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_handle(srv, "POST", "/in", echo, "in"), CANOPY_OK);
        assert_int_equal(canopy_http_start(srv), CANOPY_OK);
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/in", canopy_http_port(srv));
        char *big = malloc(4001);
        memset(big, 'b', 4000);
        big[4000] = 0;
        struct reply r;

        struct req_opts at = {.method = "POST", .body = big, .body_len = 1024};
        assert_int_equal(do_req(url, &at, &r), CURLE_OK);
        assert_int_equal(r.status, 201);
        assert_non_null(strstr(r.body, "len=1024 "));
        free(r.body);

        /* Declared length over the cap: refused from the headers. */
        struct req_opts over = {.method = "POST", .body = big, .body_len = 1025};
        CURLcode rc = do_req(url, &over, &r);
        /* The server may close the connection after its 413 while curl still sends. */
        assert_true(rc == CURLE_OK || rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR);
        assert_int_equal(r.status, 413);
        free(r.body);

        /* Chunked body over the cap: detected while reading. */
        struct req_opts ch = {.method = "POST", .body = big, .chunked = true};
        rc = do_req(url, &ch, &r);
        assert_true(rc == CURLE_OK || rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR);
        assert_int_equal(r.status, 413);
        free(r.body);

        /* A small chunked body is fine. */
        big[100] = 0;
        assert_int_equal(do_req(url, &ch, &r), CURLE_OK);
        assert_int_equal(r.status, 201);
        assert_non_null(strstr(r.body, "len=100 "));
        free(r.body);
        free(big);
        canopy_http_free(srv);
        canopy_metrics_free(reg);
}

static void test_bind_errors(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.metrics = reg;
        canopy_http *a, *b, *c;
        assert_int_equal(canopy_http_new(&hc, &a), CANOPY_OK);
        assert_int_equal(canopy_http_start(a), CANOPY_OK);
        hc.port = canopy_http_port(a);
        assert_int_equal(canopy_http_new(&hc, &b), CANOPY_OK);
        assert_int_equal(canopy_http_start(b), CANOPY_ERR_IO); /* address in use */
        assert_int_equal(canopy_http_port(b), -1);
        canopy_http_free(b);
        hc.port = 0;
        hc.bind = "not an address";
        assert_int_equal(canopy_http_new(&hc, &c), CANOPY_OK);
        assert_int_equal(canopy_http_start(c), CANOPY_ERR_CONFIG);
        canopy_http_free(c);
        /* IPv6 loopback, also in its bracketed URL form (skipped without IPv6). */
        hc.bind = "[::1]";
        assert_int_equal(canopy_http_new(&hc, &c), CANOPY_OK);
        if (canopy_http_start(c) == CANOPY_OK) {
                char url[128];
                snprintf(url, sizeof(url), "http://[::1]:%d/healthz", canopy_http_port(c));
                struct reply r;
                assert_int_equal(do_req(url, NULL, &r), CURLE_OK);
                assert_int_equal(r.status, 200);
                free(r.body);
        }
        canopy_http_free(c);
        hc.bind = NULL;
        hc.tls_cert_file = "/x.pem"; /* cert without key */
        assert_int_equal(canopy_http_new(&hc, &c), CANOPY_ERR_INVALID_ARG);
        canopy_http_free(a);
        canopy_http_free(NULL);
        canopy_metrics_free(reg);
}

/* A self-signed P-256 certificate for CN=localhost, IP:127.0.0.1. */
static void make_cert(const char *certpath, const char *keypath) {
        EVP_PKEY *pk = NULL;
        EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
        assert_non_null(kc);
        assert_true(EVP_PKEY_keygen_init(kc) > 0);
        assert_true(EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kc, NID_X9_62_prime256v1) > 0);
        assert_true(EVP_PKEY_keygen(kc, &pk) > 0);
        EVP_PKEY_CTX_free(kc);
        X509 *x = X509_new();
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), -60);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, pk);
        X509_NAME *n = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
        X509_set_issuer_name(x, n);
        X509V3_CTX v3;
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        assert_non_null(ext);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
        FILE *f = fopen(certpath, "w");
        assert_non_null(f);
        PEM_write_X509(f, x);
        fclose(f);
        f = fopen(keypath, "w");
        assert_non_null(f);
        PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
        fclose(f);
        X509_free(x);
        EVP_PKEY_free(pk);
}

static void test_tls(void **state) {
        (void)state;
        char dir[] = "/tmp/canopy-test-http-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char cert[128], key[128], junk[128];
        snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
        snprintf(key, sizeof(key), "%s/key.pem", dir);
        snprintf(junk, sizeof(junk), "%s/junk.pem", dir);
        make_cert(cert, key);
        canopy_metrics *reg = canopy_metrics_new();
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.metrics = reg;
        hc.tls_cert_file = cert;
        hc.tls_key_file = key;
        canopy_http *srv;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_start(srv), CANOPY_OK);
        char url[128];
        snprintf(url, sizeof(url), "https://127.0.0.1:%d/healthz", canopy_http_port(srv));
        struct reply r;
        struct req_opts o = {.cainfo = cert};
        assert_int_equal(do_req(url, &o, &r), CURLE_OK);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "ok\n");
        free(r.body);
        /* Without the CA the client refuses the certificate. */
        struct req_opts noca = {.cainfo = "/nonexistent-ca.pem"};
        assert_int_not_equal(do_req(url, &noca, &r), CURLE_OK);
        free(r.body);
        /* Plain HTTP to the TLS port gets no HTTP answer. */
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", canopy_http_port(srv));
        CURLcode rc = do_req(url, NULL, &r);
        assert_true(rc != CURLE_OK || r.status != 200);
        free(r.body);
        canopy_http_free(srv);

        /* A file that is not PEM is a configuration error. */
        FILE *f = fopen(junk, "w");
        fputs("not a certificate\n", f);
        fclose(f);
        hc.tls_cert_file = junk;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_start(srv), CANOPY_ERR_CONFIG);
        canopy_http_free(srv);
        /* Key and certificate that do not parse as such. */
        hc.tls_cert_file = key;
        hc.tls_key_file = cert;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_start(srv), CANOPY_ERR_CONFIG);
        canopy_http_free(srv);
        canopy_metrics_free(reg);
        unlink(cert);
        unlink(key);
        unlink(junk);
        rmdir(dir);
}

struct par {
        int port;
        int ok;
};

static void *hammer(void *arg) {
        struct par *p = arg;
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/in", p->port);
        for (int i = 0; i < 20; i++) {
                struct reply r;
                struct req_opts o = {.method = "POST", .body = "hello", .body_len = 5};
                if (do_req(url, &o, &r) == CURLE_OK && r.status == 201 && strstr(r.body, "len=5 body=hello"))
                        p->ok++;
                free(r.body);
        }
        return NULL;
}

static void test_concurrent(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.metrics = reg;
        hc.threads = 3;
        canopy_http *srv;
        assert_int_equal(canopy_http_new(&hc, &srv), CANOPY_OK);
        assert_int_equal(canopy_http_handle(srv, "POST", "/in", echo, "in"), CANOPY_OK);
        assert_int_equal(canopy_http_start(srv), CANOPY_OK);
        pthread_t th[4];
        struct par p[4];
        for (int i = 0; i < 4; i++) {
                p[i] = (struct par){canopy_http_port(srv), 0};
                pthread_create(&th[i], NULL, hammer, &p[i]);
        }
        for (int i = 0; i < 4; i++) {
                pthread_join(th[i], NULL);
                assert_int_equal(p[i].ok, 20);
        }
        canopy_metric *c = canopy_metrics_counter(reg, "canopy_http_requests_total",
                                                  "HTTP requests served, by status code.", "code");
        assert_true(canopy_metrics_value(c, CANOPY_LABELS("201")) == 80);
        canopy_http_free(srv);
        canopy_metrics_free(reg);
}

static int setup(void **state) {
        (void)state;
        canopy_log_set_level(CANOPY_LOG_WARN);
        return curl_global_init(CURL_GLOBAL_ALL) == CURLE_OK ? 0 : -1;
}

static int teardown(void **state) {
        (void)state;
        curl_global_cleanup();
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_builtin_endpoints), cmocka_unit_test(test_handlers),
                cmocka_unit_test(test_body_cap),          cmocka_unit_test(test_bind_errors),
                cmocka_unit_test(test_tls),               cmocka_unit_test(test_concurrent),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
