/* Unit tests of the Graph client helpers: Retry-After, OData quoting, JWT
 * client assertions (signature checked with OpenSSL), error bodies, diff,
 * configuration checks. No network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/graph.h"
#include "graph_int.h"

/* ---- Retry-After ---- */

static void test_retry_after_forms(void **state) {
        (void)state;
        int64_t ms = -1;
        assert_int_equal(canopy_graph_retry_after_parse("5", 0, &ms), CANOPY_OK);
        assert_int_equal(ms, 5000);
        assert_int_equal(canopy_graph_retry_after_parse(" 0 ", 0, &ms), CANOPY_OK);
        assert_int_equal(ms, 0);
        assert_int_equal(canopy_graph_retry_after_parse("0.25", 0, &ms), CANOPY_OK);
        assert_int_equal(ms, 250);
        assert_int_equal(canopy_graph_retry_after_parse("1.5", 0, &ms), CANOPY_OK);
        assert_int_equal(ms, 1500);
        assert_int_equal(canopy_graph_retry_after_parse("2.0005", 0, &ms), CANOPY_OK);
        assert_int_equal(ms, 2000);
        /* HTTP date: 784111777 = Sun, 06 Nov 1994 08:49:37 GMT */
        int64_t now = 784111777LL * 1000 - 3000;
        assert_int_equal(canopy_graph_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", now, &ms), CANOPY_OK);
        assert_int_equal(ms, 3000);
        /* RFC 850 and asctime forms of the same date */
        assert_int_equal(canopy_graph_retry_after_parse("Sunday, 06-Nov-94 08:49:37 GMT", now, &ms), CANOPY_OK);
        assert_int_equal(ms, 3000);
        assert_int_equal(canopy_graph_retry_after_parse("Sun Nov  6 08:49:37 1994", now, &ms), CANOPY_OK);
        assert_int_equal(ms, 3000);
        /* a date in the past means now */
        assert_int_equal(canopy_graph_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", now + 10000, &ms),
                         CANOPY_OK);
        assert_int_equal(ms, 0);
        /* huge values are capped at one day */
        assert_int_equal(canopy_graph_retry_after_parse("99999999999999999999", 0, &ms), CANOPY_OK);
        assert_int_equal(ms, 24LL * 3600 * 1000);
}

static void test_retry_after_invalid(void **state) {
        (void)state;
        const char *bad[] = {"", "  ", "-1", "5s", "1.", ".5", "abc", "1e3", "5 5", "0x10", "Tomorrow", NULL};
        for (int i = 0; bad[i]; i++) {
                int64_t ms = 12345;
                assert_int_equal(canopy_graph_retry_after_parse(bad[i], 0, &ms), CANOPY_ERR_DECODE);
                assert_int_equal(ms, 12345); /* untouched on failure */
        }
}

/* ---- OData quoting ---- */

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Decode a quoted literal back to the value (and check its shape). */
static char *unquote(const char *enc) {
        size_t n = strlen(enc);
        char *dec = malloc(n + 1), *val = malloc(n + 1);
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
                if (enc[i] == '%') {
                        assert_true(hexval(enc[i + 1]) >= 0 && hexval(enc[i + 2]) >= 0);
                        dec[o++] = (char)(hexval(enc[i + 1]) * 16 + hexval(enc[i + 2]));
                        i += 2;
                } else {
                        /* nothing but unreserved characters stay literal */
                        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~",
                                               enc[i]));
                        dec[o++] = enc[i];
                }
        }
        dec[o] = '\0';
        assert_true(o >= 2 && dec[0] == '\'' && dec[o - 1] == '\'');
        size_t v = 0;
        for (size_t i = 1; i < o - 1; i++) {
                if (dec[i] == '\'') {
                        /* every quote inside is doubled: the literal never ends early */
                        assert_int_equal(dec[i + 1], '\'');
                        assert_true(i + 1 < o - 1);
                        i++;
                }
                val[v++] = dec[i];
        }
        val[v] = '\0';
        free(dec);
        return val;
}

static void test_odata_quote(void **state) {
        (void)state;
        char out[512];
        assert_int_equal(canopy_graph_odata_quote("o'k", out, sizeof(out)), CANOPY_OK);
        assert_string_equal(out, "%27o%27%27k%27");
        assert_int_equal(canopy_graph_odata_quote("abc", out, sizeof(out)), CANOPY_OK);
        assert_string_equal(out, "%27abc%27");
        const char *vals[] = {"",
                              "x' or 1 eq 1 or 'a",
                              "'",
                              "''",
                              "a&$top=1#frag",
                              "+/=base64==",
                              "caf\xc3\xa9 \xe2\x82\xac",
                              "%27%20",
                              NULL};
        for (int i = 0; vals[i]; i++) {
                assert_int_equal(canopy_graph_odata_quote(vals[i], out, sizeof(out)), CANOPY_OK);
                assert_null(strchr(out, '\''));
                assert_null(strchr(out, '&'));
                assert_null(strchr(out, ' '));
                char *back = unquote(out);
                assert_string_equal(back, vals[i]);
                free(back);
        }
        /* too small a buffer is an error, not a truncated literal */
        assert_int_equal(canopy_graph_odata_quote("abcdef", out, 8), CANOPY_ERR_LIMIT);
}

/* ---- JWT client assertion ---- */

static unsigned char *b64url_decode(const char *s, size_t len, size_t *ret_len) {
        size_t padded = (len + 3) / 4 * 4;
        char *t = malloc(padded + 1);
        for (size_t i = 0; i < len; i++)
                t[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
        for (size_t i = len; i < padded; i++)
                t[i] = '=';
        t[padded] = '\0';
        unsigned char *out = malloc(padded);
        int n = EVP_DecodeBlock(out, (unsigned char *)t, (int)padded);
        assert_true(n >= 0);
        size_t pad = padded - len;
        *ret_len = (size_t)n - pad;
        free(t);
        return out;
}

static json_t *decode_part(const char *s, size_t len) {
        size_t n;
        unsigned char *d = b64url_decode(s, len, &n);
        json_t *j = json_loadb((char *)d, n, 0, NULL);
        free(d);
        assert_non_null(j);
        return j;
}

static void check_jwt(EVP_PKEY *pkey, canopy_graph_jwt_alg alg) {
        char *jwt = NULL;
        const char *aud = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token";
        assert_int_equal(graph_jwt_build(pkey, alg, "x5t#S256", "THUMB", "client-1", aud, 1700000000,
                                         "11111111-2222-4333-8444-555555555555", &jwt),
                         CANOPY_OK);
        char *d1 = strchr(jwt, '.');
        assert_non_null(d1);
        char *d2 = strchr(d1 + 1, '.');
        assert_non_null(d2);
        assert_null(strchr(d2 + 1, '.'));
        assert_null(strchr(jwt, '='));
        json_t *h = decode_part(jwt, (size_t)(d1 - jwt));
        json_t *p = decode_part(d1 + 1, (size_t)(d2 - d1 - 1));
        assert_string_equal(json_string_value(json_object_get(h, "alg")),
                            alg == CANOPY_GRAPH_JWT_PS256 ? "PS256" : "RS256");
        assert_string_equal(json_string_value(json_object_get(h, "typ")), "JWT");
        assert_string_equal(json_string_value(json_object_get(h, "x5t#S256")), "THUMB");
        assert_string_equal(json_string_value(json_object_get(p, "aud")), aud);
        assert_string_equal(json_string_value(json_object_get(p, "iss")), "client-1");
        assert_string_equal(json_string_value(json_object_get(p, "sub")), "client-1");
        assert_string_equal(json_string_value(json_object_get(p, "jti")), "11111111-2222-4333-8444-555555555555");
        assert_int_equal(json_integer_value(json_object_get(p, "nbf")), 1700000000);
        assert_true(json_integer_value(json_object_get(p, "exp")) > 1700000000);

        size_t siglen;
        unsigned char *sig = b64url_decode(d2 + 1, strlen(d2 + 1), &siglen);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        assert_int_equal(EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, pkey), 1);
        if (alg == CANOPY_GRAPH_JWT_PS256) {
                assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
                assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 1);
        }
        assert_int_equal(EVP_DigestVerify(md, sig, siglen, (unsigned char *)jwt, (size_t)(d2 - jwt)), 1);
        /* a modified payload does not verify */
        EVP_MD_CTX_free(md);
        md = EVP_MD_CTX_new();
        pctx = NULL;
        assert_int_equal(EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, pkey), 1);
        if (alg == CANOPY_GRAPH_JWT_PS256) {
                EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
        }
        jwt[d1 - jwt + 3] ^= 1;
        assert_int_not_equal(EVP_DigestVerify(md, sig, siglen, (unsigned char *)jwt, (size_t)(d2 - jwt)), 1);
        EVP_MD_CTX_free(md);
        free(sig);
        json_decref(h);
        json_decref(p);
        free(jwt);
}

static EVP_PKEY *gen_key(void) {
        EVP_PKEY *pkey = NULL;
        EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, NULL);
        assert_non_null(kctx);
        assert_int_equal(EVP_PKEY_keygen_init(kctx), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_keygen_bits(kctx, 2048), 1);
        assert_int_equal(EVP_PKEY_keygen(kctx, &pkey), 1);
        EVP_PKEY_CTX_free(kctx);
        return pkey;
}

static void test_jwt_rs256_ps256(void **state) {
        (void)state;
        EVP_PKEY *pkey = gen_key();
        check_jwt(pkey, CANOPY_GRAPH_JWT_RS256);
        check_jwt(pkey, CANOPY_GRAPH_JWT_PS256);
        EVP_PKEY_free(pkey);
}

static void test_x5t(void **state) {
        (void)state;
        EVP_PKEY *pkey = gen_key();
        X509 *x = X509_new();
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
        X509_gmtime_adj(X509_getm_notBefore(x), 0);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, pkey);
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (unsigned char *)"canopy", -1,
                                   -1, 0);
        X509_set_issuer_name(x, X509_get_subject_name(x));
        assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);
        char t1[64], t256[64];
        assert_int_equal(graph_x5t(x, false, t1, sizeof(t1)), CANOPY_OK);
        assert_int_equal(graph_x5t(x, true, t256, sizeof(t256)), CANOPY_OK);
        assert_int_equal(strlen(t1), 27);   /* 20 bytes, base64url, no padding */
        assert_int_equal(strlen(t256), 43); /* 32 bytes */
        size_t n;
        unsigned char *d = b64url_decode(t256, strlen(t256), &n);
        unsigned char md[32];
        unsigned int mdl;
        X509_digest(x, EVP_sha256(), md, &mdl);
        assert_int_equal(n, 32);
        assert_memory_equal(d, md, 32);
        free(d);
        X509_free(x);
        EVP_PKEY_free(pkey);
}

/* ---- error bodies ---- */

static void test_error_parse_conflict(void **state) {
        (void)state;
        const char *body =
                "{\"error\":{\"code\":\"Request_BadRequest\",\"message\":\"Another object with the same value "
                "for property userPrincipalName already exists.\",\"details\":[{\"code\":\"ObjectConflict\","
                "\"message\":\"Another object with the same value for property userPrincipalName already "
                "exists.\",\"target\":\"userPrincipalName\"}],\"innerError\":{\"date\":\"2024-01-01T00:00:00\","
                "\"request-id\":\"r-1\",\"client-request-id\":\"c-1\"}}}";
        canopy_graph_error ei;
        canopy_graph_error_clear(&ei);
        assert_int_equal(canopy_graph_error_parse(body, strlen(body), &ei), CANOPY_OK);
        assert_string_equal(ei.code, "Request_BadRequest");
        assert_string_equal(ei.request_id, "r-1");
        assert_string_equal(ei.client_request_id, "c-1");
        assert_string_equal(ei.date, "2024-01-01T00:00:00");
        assert_int_equal(ei.ndetails, 1);
        assert_string_equal(ei.details[0].code, "ObjectConflict");
        assert_string_equal(ei.details[0].target, "userPrincipalName");
        assert_string_equal(ei.conflict_property, "userPrincipalName");
        assert_int_equal(canopy_graph_error_map(400, &ei), CANOPY_ERR_GRAPH_CONFLICT);
        graph_conflict_fill(&ei, "{\"userPrincipalName\":\"a@contoso.com\",\"displayName\":\"A\"}");
        assert_string_equal(ei.conflict_value, "a@contoso.com");
}

static void test_error_parse_proxy_conflict(void **state) {
        (void)state;
        /* ObjectConflict as the top code, property only in the message */
        const char *body = "{\"error\":{\"code\":\"ObjectConflict\",\"message\":\"Another object with the same "
                           "value for property proxyAddresses already exists.\"}}";
        canopy_graph_error ei;
        canopy_graph_error_clear(&ei);
        assert_int_equal(canopy_graph_error_parse(body, strlen(body), &ei), CANOPY_OK);
        assert_string_equal(ei.conflict_property, "proxyAddresses");
        assert_int_equal(canopy_graph_error_map(400, &ei), CANOPY_ERR_GRAPH_CONFLICT);
        graph_conflict_fill(&ei, "{\"proxyAddresses\":[\"SMTP:a@c.com\",\"smtp:b@c.com\"]}");
        assert_string_equal(ei.conflict_value, "SMTP:a@c.com,smtp:b@c.com");
}

static void test_error_parse_other(void **state) {
        (void)state;
        canopy_graph_error ei;
        canopy_graph_error_clear(&ei);
        const char *nf = "{\"error\":{\"code\":\"Request_ResourceNotFound\",\"message\":\"Resource 'x' does not "
                         "exist or one of its queried reference-property objects are not present.\","
                         "\"innerError\":{\"request-id\":\"q\"}}}";
        assert_int_equal(canopy_graph_error_parse(nf, strlen(nf), &ei), CANOPY_OK);
        assert_int_equal(canopy_graph_error_map(404, &ei), CANOPY_ERR_GRAPH_NOT_FOUND);
        assert_true(graph_is_missing_ref(400, &ei));
        assert_string_equal(ei.conflict_property, "");

        canopy_graph_error_clear(&ei);
        const char *denied = "{\"error\":{\"code\":\"Authorization_RequestDenied\",\"message\":\"Insufficient "
                             "privileges to complete the operation.\"}}";
        assert_int_equal(canopy_graph_error_parse(denied, strlen(denied), &ei), CANOPY_OK);
        assert_int_equal(canopy_graph_error_map(403, &ei), CANOPY_ERR_GRAPH_AUTH);
        assert_int_equal(canopy_graph_error_map(401, &ei), CANOPY_ERR_GRAPH_AUTH);
        assert_false(graph_is_missing_ref(400, &ei));

        canopy_graph_error_clear(&ei);
        const char *refs = "{\"error\":{\"code\":\"Request_BadRequest\",\"message\":\"Invalid object identifier "
                           "'x'. One or more referenced objects do not exist.\"}}";
        assert_int_equal(canopy_graph_error_parse(refs, strlen(refs), &ei), CANOPY_OK);
        assert_true(graph_is_missing_ref(400, &ei));
        assert_int_equal(canopy_graph_error_map(400, &ei), CANOPY_ERR_GRAPH_BAD_REQUEST);

        assert_int_equal(canopy_graph_error_map(429, NULL), CANOPY_ERR_GRAPH_THROTTLED);
        assert_int_equal(canopy_graph_error_map(503, NULL), CANOPY_ERR_GRAPH_UNAVAILABLE);
        assert_int_equal(canopy_graph_error_map(504, NULL), CANOPY_ERR_GRAPH_UNAVAILABLE);
        assert_int_equal(canopy_graph_error_map(204, NULL), CANOPY_OK);
        assert_int_equal(canopy_graph_error_map(0, NULL), CANOPY_ERR_HTTP);

        canopy_graph_error_clear(&ei);
        const char *html = "<html>Bad gateway</html>";
        assert_int_equal(canopy_graph_error_parse(html, strlen(html), &ei), CANOPY_ERR_DECODE);
        assert_string_equal(ei.message, html);
        /* too many details: capped, no overflow */
        char big[4096];
        int o = snprintf(big, sizeof(big), "{\"error\":{\"code\":\"X\",\"message\":\"m\",\"details\":[");
        for (int i = 0; i < 10; i++)
                o += snprintf(big + o, sizeof(big) - (size_t)o, "%s{\"code\":\"c%d\",\"target\":\"t\"}",
                              i ? "," : "", i);
        snprintf(big + o, sizeof(big) - (size_t)o, "]}}");
        canopy_graph_error_clear(&ei);
        assert_int_equal(canopy_graph_error_parse(big, strlen(big), &ei), CANOPY_OK);
        assert_int_equal(ei.ndetails, CANOPY_GRAPH_MAX_DETAILS);
}

/* ---- diff ---- */

static void test_diff(void **state) {
        (void)state;
        char *p = NULL;
        assert_int_equal(canopy_graph_diff("{\"a\":1,\"b\":[1,2],\"c\":\"x\",\"d\":\"gone\"}",
                                           "{\"a\":1,\"b\":[1,3],\"c\":\"x\",\"e\":true}", &p),
                         CANOPY_OK);
        assert_non_null(p);
        json_t *j = json_loads(p, 0, NULL);
        assert_int_equal(json_object_size(j), 3);
        assert_true(json_is_array(json_object_get(j, "b")));
        assert_true(json_is_null(json_object_get(j, "d")));
        assert_true(json_is_true(json_object_get(j, "e")));
        assert_null(json_object_get(j, "a"));
        json_decref(j);
        free(p);
        p = (char *)1;
        assert_int_equal(canopy_graph_diff("{\"a\":{\"x\":1}}", "{\"a\":{\"x\":1}}", &p), CANOPY_OK);
        assert_null(p);
        assert_int_equal(canopy_graph_diff(NULL, "{\"a\":1}", &p), CANOPY_OK);
        assert_string_equal(p, "{\"a\":1}");
        free(p);
        assert_int_equal(canopy_graph_diff("[1]", "{\"a\":1}", &p), CANOPY_ERR_DECODE);
}

/* ---- configuration ---- */

static void test_conf_checks(void **state) {
        (void)state;
        canopy_graph_conf c;
        canopy_graph *gc = NULL;
        char eb[256];
        canopy_graph_conf_init(&c);
        c.tenant = "contoso";
        c.client_id = "app";
        c.client_secret = "s3cr3t-value";
        c.graph_url = "http://127.0.0.1:1";
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_ERR_GRAPH_INSECURE);
        assert_null(gc);
        c.allow_insecure = true;
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_OK);
        assert_string_equal(gc->token_url, "https://login.microsoftonline.com/contoso/oauth2/v2.0/token");
        assert_string_equal(gc->graph_base, "http://127.0.0.1:1/v1.0");
        assert_string_equal(gc->scope, "https://graph.microsoft.com/.default");
        /* absolute URLs only on the Graph host (a nextLink elsewhere never gets our token) */
        char *u = NULL;
        assert_int_equal(graph_url(gc, "http://127.0.0.1:1/v1.0/users?$skiptoken=x", &u), CANOPY_OK);
        free(u);
        assert_int_equal(graph_url(gc, "http://127.0.0.1:12/v1.0/users", &u), CANOPY_ERR_INVALID_ARG);
        assert_int_equal(graph_url(gc, "https://evil.example/v1.0/users", &u), CANOPY_ERR_INVALID_ARG);
        assert_int_equal(graph_url(gc, "users", &u), CANOPY_ERR_INVALID_ARG);
        /* backoff stays within [base/2, max] */
        for (int a = 1; a < 20; a++) {
                int64_t b = graph_backoff_ms(gc, a);
                assert_true(b >= c.backoff_base_ms / 2 && b <= c.backoff_max_ms);
        }
        canopy_graph_free(gc);
        gc = NULL;

        canopy_graph_conf_init(&c);
        c.tenant = "contoso";
        c.client_id = "app";
        c.client_secret = "s3cr3t-value";
        c.cloud = CANOPY_GRAPH_CLOUD_CHINA;
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_OK);
        assert_string_equal(gc->token_url, "https://login.chinacloudapi.cn/contoso/oauth2/v2.0/token");
        assert_string_equal(gc->graph_base, "https://microsoftgraph.chinacloudapi.cn/v1.0");
        assert_string_equal(gc->scope, "https://microsoftgraph.chinacloudapi.cn/.default");
        canopy_graph_free(gc);
        gc = NULL;
        assert_int_equal(canopy_graph_cloud_parse("usgov", &c.cloud), CANOPY_OK);
        assert_int_equal(c.cloud, CANOPY_GRAPH_CLOUD_USGOV);
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_OK);
        assert_string_equal(gc->token_url, "https://login.microsoftonline.us/contoso/oauth2/v2.0/token");
        assert_string_equal(gc->graph_base, "https://graph.microsoft.us/v1.0");
        canopy_graph_free(gc);
        gc = NULL;
        assert_int_equal(canopy_graph_cloud_parse("mars", &c.cloud), CANOPY_ERR_CONFIG);

        /* exactly one credential */
        c.cert_file = "/nonexistent.pem";
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_ERR_CONFIG);
        c.client_secret = NULL;
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_ERR_GRAPH_CERT);
        c.cert_file = NULL;
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_ERR_CONFIG);
        c.client_secret = "x-secret";
        c.tenant = "bad/tenant";
        assert_int_equal(canopy_graph_new(&c, &gc, eb, sizeof(eb)), CANOPY_ERR_CONFIG);
        assert_null(gc);
}

static void test_uuid(void **state) {
        (void)state;
        char a[37], b[37];
        graph_uuid4(a);
        graph_uuid4(b);
        assert_int_equal(strlen(a), 36);
        assert_string_not_equal(a, b);
        assert_int_equal(a[14], '4');
        assert_non_null(strchr("89ab", a[19]));
        assert_int_equal(a[8], '-');
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_retry_after_forms), cmocka_unit_test(test_retry_after_invalid),
                cmocka_unit_test(test_odata_quote),       cmocka_unit_test(test_jwt_rs256_ps256),
                cmocka_unit_test(test_x5t),               cmocka_unit_test(test_error_parse_conflict),
                cmocka_unit_test(test_error_parse_proxy_conflict), cmocka_unit_test(test_error_parse_other),
                cmocka_unit_test(test_diff),              cmocka_unit_test(test_conf_checks),
                cmocka_unit_test(test_uuid),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
