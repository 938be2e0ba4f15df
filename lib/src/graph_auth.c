/* graph_auth.c: OAuth2 client credentials for the Graph client: a client
 * secret, or a certificate (RFC 7523 JWT client assertion, RS256 or PS256,
 * x5t or x5t#S256 header). The token is cached and renewed a margin before
 * expires_in runs out. */
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/log.h"
#include "graph_int.h"

#define TOKEN_TRIES 4
#define ASSERTION_LIFETIME_S 600

canopy_err graph_x5t(X509 *cert, bool sha256, char *out, size_t outlen) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        if (!X509_digest(cert, sha256 ? EVP_sha256() : EVP_sha1(), md, &mdlen))
                return CANOPY_ERR_GRAPH_CERT;
        char *b = graph_b64url(md, mdlen);
        if (!b)
                return CANOPY_ERR_NOMEM;
        if (strlen(b) >= outlen) {
                free(b);
                return CANOPY_ERR_LIMIT;
        }
        graph_strlcpy(out, b, outlen);
        free(b);
        return CANOPY_OK;
}

static int pem_pass_cb(char *buf, int size, int rwflag, void *u) {
        (void)rwflag;
        const char *pw = u;
        if (!pw)
                return 0;
        int n = (int)strlen(pw);
        if (n > size)
                n = size;
        memcpy(buf, pw, (size_t)n);
        return n;
}

canopy_err graph_auth_load_cert(canopy_graph *gc, char *errbuf, size_t errlen) {
        const canopy_graph_conf *c = &gc->conf;
        const char *keyf = c->key_file ? c->key_file : c->cert_file;
        canopy_err err = CANOPY_OK;
        X509 *cert = NULL;
        FILE *f = fopen(c->cert_file, "r");
        if (!f) {
                snprintf(errbuf, errlen, "graph: cannot open certificate %s", c->cert_file);
                return CANOPY_ERR_GRAPH_CERT;
        }
        cert = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
        if (!cert) {
                snprintf(errbuf, errlen, "graph: no PEM certificate in %s", c->cert_file);
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        f = fopen(keyf, "r");
        if (!f) {
                snprintf(errbuf, errlen, "graph: cannot open private key %s", keyf);
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        gc->pkey = PEM_read_PrivateKey(f, NULL, pem_pass_cb, (void *)c->key_password);
        fclose(f);
        if (!gc->pkey) {
                snprintf(errbuf, errlen, "graph: cannot read private key %s (wrong passphrase?)", keyf);
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        if (EVP_PKEY_base_id(gc->pkey) != EVP_PKEY_RSA) {
                snprintf(errbuf, errlen, "graph: private key %s is not RSA (RS256/PS256 need RSA)", keyf);
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        if (X509_check_private_key(cert, gc->pkey) != 1) {
                snprintf(errbuf, errlen, "graph: private key %s does not match certificate %s", keyf,
                         c->cert_file);
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        err = graph_x5t(cert, c->jwt_x5t_sha256, gc->x5t, sizeof(gc->x5t));
out:
        X509_free(cert);
        ERR_clear_error();
        return err;
}

static char *b64url_json(json_t *j) {
        char *s = json_dumps(j, JSON_COMPACT);
        if (!s)
                return NULL;
        char *b = graph_b64url((const unsigned char *)s, strlen(s));
        free(s);
        return b;
}

canopy_err graph_jwt_build(EVP_PKEY *pkey, canopy_graph_jwt_alg alg, const char *x5t_name, const char *x5t,
                           const char *client_id, const char *audience, int64_t now_s, const char *jti,
                           char **ret_jwt) {
        canopy_err err = CANOPY_OK;
        char *h64 = NULL, *p64 = NULL, *s64 = NULL, *input = NULL, *jwt = NULL;
        unsigned char *sig = NULL;
        EVP_MD_CTX *md = NULL;
        json_t *hdr = json_pack("{s:s, s:s, s:s}", "alg", alg == CANOPY_GRAPH_JWT_PS256 ? "PS256" : "RS256",
                                "typ", "JWT", x5t_name, x5t);
        json_t *pl = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", audience, "iss", client_id, "sub",
                               client_id, "jti", jti, "nbf", (json_int_t)now_s, "iat", (json_int_t)now_s, "exp",
                               (json_int_t)(now_s + ASSERTION_LIFETIME_S));
        if (!hdr || !pl) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        h64 = b64url_json(hdr);
        p64 = b64url_json(pl);
        if (!h64 || !p64) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        size_t ilen = strlen(h64) + 1 + strlen(p64);
        input = malloc(ilen + 1);
        if (!input) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        snprintf(input, ilen + 1, "%s.%s", h64, p64);

        md = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        if (!md || EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, pkey) != 1) {
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        if (alg == CANOPY_GRAPH_JWT_PS256) {
                if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1) {
                        err = CANOPY_ERR_GRAPH_CERT;
                        goto out;
                }
        }
        size_t siglen = 0;
        if (EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)input, ilen) != 1) {
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        sig = malloc(siglen);
        if (!sig) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        if (EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, ilen) != 1) {
                err = CANOPY_ERR_GRAPH_CERT;
                goto out;
        }
        s64 = graph_b64url(sig, siglen);
        if (!s64) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        jwt = malloc(ilen + 1 + strlen(s64) + 1);
        if (!jwt) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        sprintf(jwt, "%s.%s", input, s64);
        *ret_jwt = jwt;
out:
        ERR_clear_error();
        EVP_MD_CTX_free(md);
        json_decref(hdr);
        json_decref(pl);
        free(h64);
        free(p64);
        free(s64);
        free(sig);
        free(input);
        return err;
}

void graph_token_invalidate(canopy_graph *gc) {
        free(gc->token);
        gc->token = NULL;
        gc->token_renew_at_ms = 0;
        gc->token_expires_at_ms = 0;
}

/* Append "&name=value" (value URL-encoded) to a growing form. */
static canopy_err form_add(char **form, const char *name, const char *value) {
        char *enc = curl_easy_escape(NULL, value, 0);
        if (!enc)
                return CANOPY_ERR_NOMEM;
        size_t old = *form ? strlen(*form) : 0;
        size_t add = strlen(name) + strlen(enc) + 2;
        char *n = realloc(*form, old + add + 1);
        if (!n) {
                curl_free(enc);
                return CANOPY_ERR_NOMEM;
        }
        snprintf(n + old, add + 1, "%s%s=%s", old ? "&" : "", name, enc);
        curl_free(enc);
        *form = n;
        return CANOPY_OK;
}

static canopy_err build_form(canopy_graph *gc, char **ret_form) {
        char *form = NULL;
        canopy_err err = form_add(&form, "grant_type", "client_credentials");
        if (!err)
                err = form_add(&form, "client_id", gc->client_id);
        if (!err)
                err = form_add(&form, "scope", gc->scope);
        if (err)
                goto fail;
        if (gc->pkey) {
                char jti[37], *jwt = NULL;
                graph_uuid4(jti);
                err = graph_jwt_build(gc->pkey, gc->conf.jwt_alg, gc->conf.jwt_x5t_sha256 ? "x5t#S256" : "x5t",
                                      gc->x5t, gc->client_id, gc->token_url, graph_epoch_ms() / 1000, jti, &jwt);
                if (err)
                        goto fail;
                err = form_add(&form, "client_assertion_type",
                               "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
                if (!err)
                        err = form_add(&form, "client_assertion", jwt);
                free(jwt);
        } else {
                err = form_add(&form, "client_secret", gc->client_secret ? gc->client_secret : "");
        }
        if (err)
                goto fail;
        *ret_form = form;
        return CANOPY_OK;
fail:
        free(form);
        return err;
}

/* Parse a token response. */
static canopy_err parse_token(canopy_graph *gc, const char *body, size_t len) {
        json_t *root = json_loadb(body, len, 0, NULL);
        const char *tok = root ? json_string_value(json_object_get(root, "access_token")) : NULL;
        json_t *exp = root ? json_object_get(root, "expires_in") : NULL;
        int64_t expires_s = 0;
        if (json_is_integer(exp))
                expires_s = json_integer_value(exp);
        else if (json_is_string(exp))
                expires_s = strtoll(json_string_value(exp), NULL, 10);
        if (!tok || !*tok || expires_s <= 0) {
                json_decref(root);
                return CANOPY_ERR_GRAPH_PROTOCOL;
        }
        char *copy = strdup(tok);
        json_decref(root);
        if (!copy)
                return CANOPY_ERR_NOMEM;
        /* Tokens are not registered with canopy_log_secret(): one per renewal
         * would fill its fixed table and crowd out real secrets. The client
         * never logs headers or the token form, so a token has no way into
         * a log line. */
        free(gc->token);
        gc->token = copy;
        int64_t margin_s = gc->conf.token_margin_s;
        if (margin_s > expires_s / 2)
                margin_s = expires_s / 2;
        int64_t now = graph_now_ms();
        gc->token_expires_at_ms = now + expires_s * 1000;
        gc->token_renew_at_ms = now + (expires_s - margin_s) * 1000;
        gc->stats.tokens++;
        return CANOPY_OK;
}

/* AADSTS errors that mean "your credentials are wrong", not "try later". */
static bool token_auth_failure(long status, const char *body, size_t len) {
        if (status == 401 || status == 403)
                return true;
        if (status != 400)
                return false;
        json_t *root = json_loadb(body ? body : "", len, 0, NULL);
        const char *e = root ? json_string_value(json_object_get(root, "error")) : NULL;
        bool auth = e && (!strcmp(e, "invalid_client") || !strcmp(e, "unauthorized_client") ||
                          !strcmp(e, "invalid_grant") || !strcmp(e, "invalid_request") ||
                          !strcmp(e, "invalid_scope"));
        json_decref(root);
        return auth;
}

canopy_err graph_token_ensure(canopy_graph *gc, canopy_graph_error *ei) {
        if (gc->token && graph_now_ms() < gc->token_renew_at_ms)
                return CANOPY_OK;
        canopy_err err = CANOPY_OK;
        for (int attempt = 1; attempt <= TOKEN_TRIES; attempt++) {
                char *form = NULL, *body = NULL;
                size_t blen = 0;
                long status = 0;
                char retry_after[64] = "";
                err = build_form(gc, &form);
                if (err)
                        return err;
                err = graph_http_simple(gc, gc->token_url, "application/x-www-form-urlencoded", form, &status,
                                        &body, &blen, retry_after, sizeof(retry_after));
                free(form);
                if (!err && status == 200) {
                        err = parse_token(gc, body, blen);
                        free(body);
                        if (!err)
                                return CANOPY_OK;
                        continue;
                }
                if (!err && token_auth_failure(status, body, blen)) {
                        if (ei) {
                                canopy_graph_error_clear(ei);
                                ei->http_status = status;
                                json_t *root = json_loadb(body ? body : "", blen, 0, NULL);
                                graph_strlcpy(ei->code, json_string_value(json_object_get(root, "error")),
                                              sizeof(ei->code));
                                graph_strlcpy(ei->message,
                                              json_string_value(json_object_get(root, "error_description")),
                                              sizeof(ei->message));
                                graph_strlcpy(ei->request_id,
                                              json_string_value(json_object_get(root, "trace_id")),
                                              sizeof(ei->request_id));
                                json_decref(root);
                        }
                        free(body);
                        /* A token we still hold stays usable until it expires. */
                        if (gc->token && graph_now_ms() < gc->token_expires_at_ms)
                                return CANOPY_OK;
                        return CANOPY_ERR_GRAPH_AUTH;
                }
                free(body);
                if (!err)
                        err = CANOPY_ERR_GRAPH_TOKEN;
                if (ei) {
                        canopy_graph_error_clear(ei);
                        ei->http_status = status;
                        graph_strlcpy(ei->code, "token_endpoint_failed", sizeof(ei->code));
                }
                if (gc->token && graph_now_ms() < gc->token_expires_at_ms)
                        return CANOPY_OK; /* renew later; the old token still works */
                int64_t wait = 0;
                if (!retry_after[0] ||
                    canopy_graph_retry_after_parse(retry_after, graph_epoch_ms(), &wait) != CANOPY_OK)
                        wait = graph_backoff_ms(gc, attempt);
                if (attempt < TOKEN_TRIES)
                        graph_sleep_ms(wait);
        }
        return err;
}

canopy_err canopy_graph_authenticate(canopy_graph *gc, canopy_graph_error *ei) {
        if (!gc)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        return graph_token_ensure(gc, ei);
}
