/* auth.c: the token endpoint (client credentials with a secret or a signed
 * client assertion), RS256 access tokens signed with a key generated at
 * start, bearer checks on every Graph call, and the OpenID metadata MSAL
 * reads before it asks for a token. Secrets are never logged. */
#include "emu.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GRAPH_APP_ID "00000003-0000-0000-c000-000000000000"
#define ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

/* Graph resources of the public and national clouds. */
static const char *const graph_resources[] = {
    "https://graph.microsoft.com",    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us", "https://microsoftgraph.chinacloudapi.cn",
    "https://graph.microsoft.de",     GRAPH_APP_ID,
};

void emu_resp_header(emu_resp *r, const char *name, const char *val) {
        for (int i = 0; i < r->nh; i++) {
                if (!strcasecmp(r->hname[i], name)) {
                        free(r->hval[i]);
                        r->hval[i] = strdup(val);
                        return;
                }
        }
        if (r->nh >= EMU_RESP_HDRS)
                return;
        r->hname[r->nh] = strdup(name);
        r->hval[r->nh] = strdup(val);
        r->nh++;
}

void emu_resp_reset(emu_resp *r) {
        json_decref(r->body);
        free(r->raw);
        for (int i = 0; i < r->nh; i++) {
                free(r->hname[i]);
                free(r->hval[i]);
        }
        memset(r, 0, sizeof(*r));
}

int emu_auth_init(emu_server *srv) {
        srv->sign_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        if (!srv->sign_key)
                return -1;
        char id[37];
        emu_uuid(id);
        snprintf(srv->kid, sizeof(srv->kid), "emu-%.8s", id);
        return 0;
}

void emu_auth_free(emu_server *srv) {
        EVP_PKEY_free(srv->sign_key);
        srv->sign_key = NULL;
}

/* ---- JWT helpers ---------------------------------------------------------- */

static char *jwt_sign(EVP_PKEY *key, const char *kid, json_t *payload) {
        json_t *hdr = json_pack("{s:s, s:s, s:s}", "typ", "JWT", "alg", "RS256", "kid", kid);
        char *hs = json_dumps(hdr, JSON_COMPACT);
        char *ps = json_dumps(payload, JSON_COMPACT);
        json_decref(hdr);
        char *h64 = emu_b64url_encode((unsigned char *)hs, strlen(hs));
        char *p64 = emu_b64url_encode((unsigned char *)ps, strlen(ps));
        free(hs);
        free(ps);
        size_t silen = strlen(h64) + strlen(p64) + 2;
        char *signing = malloc(silen);
        snprintf(signing, silen, "%s.%s", h64, p64);
        free(h64);
        free(p64);
        char *out = NULL;
        unsigned char sig[512];
        size_t siglen = sizeof(sig);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
            EVP_DigestSign(md, sig, &siglen, (unsigned char *)signing, strlen(signing)) == 1) {
                char *s64 = emu_b64url_encode(sig, siglen);
                size_t olen = strlen(signing) + strlen(s64) + 2;
                out = malloc(olen);
                snprintf(out, olen, "%s.%s", signing, s64);
                free(s64);
        }
        EVP_MD_CTX_free(md);
        free(signing);
        return out;
}

/* Split and verify a compact JWT. alg_out receives the header's alg. Returns
 * the header and payload (owned) when the signature verifies with key. */
static int jwt_verify(const char *tok, EVP_PKEY *key, bool allow_pss, json_t **hdr_out, json_t **pl_out) {
        int rc = -1;
        json_t *hdr = NULL, *pl = NULL;
        unsigned char *hraw = NULL, *praw = NULL, *sig = NULL;
        const char *d1 = strchr(tok, '.');
        const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
        if (!d1 || !d2 || strchr(d2 + 1, '.'))
                goto out;
        size_t hl, pl_len, sl;
        hraw = emu_b64url_decode(tok, (size_t)(d1 - tok), &hl);
        praw = emu_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pl_len);
        sig = emu_b64url_decode(d2 + 1, strlen(d2 + 1), &sl);
        if (!hraw || !praw || !sig)
                goto out;
        hdr = json_loadb((char *)hraw, hl, 0, NULL);
        pl = json_loadb((char *)praw, pl_len, 0, NULL);
        if (!json_is_object(hdr) || !json_is_object(pl))
                goto out;
        const char *alg = json_string_value(json_object_get(hdr, "alg"));
        if (!alg)
                goto out;
        bool pss = !strcmp(alg, "PS256");
        if (strcmp(alg, "RS256") && !(pss && allow_pss))
                goto out;
        if (key) {
                EVP_MD_CTX *md = EVP_MD_CTX_new();
                EVP_PKEY_CTX *pctx = NULL;
                int ok = md && EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, key) == 1;
                if (ok && pss)
                        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
                ok = ok && EVP_DigestVerify(md, sig, sl, (const unsigned char *)tok, (size_t)(d2 - tok)) == 1;
                EVP_MD_CTX_free(md);
                if (!ok)
                        goto out;
        }
        rc = 0;
        *hdr_out = hdr;
        *pl_out = pl;
        hdr = pl = NULL;
out:
        json_decref(hdr);
        json_decref(pl);
        free(hraw);
        free(praw);
        free(sig);
        return rc;
}

/* ---- token endpoint ------------------------------------------------------- */

static void aad_error(emu_resp *r, int status, const char *error, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void aad_error(emu_resp *r, int status, const char *error, int code, const char *fmt, ...) {
        char msg[600], trace[37], corr[37], ts[32], full[900], uri[96];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        emu_uuid(trace);
        emu_uuid(corr);
        int64_t now = emu_now_ms();
        emu_iso_time(now, ts);
        ts[10] = ' '; /* AAD writes "2024-01-02 03:04:05Z" */
        snprintf(full, sizeof(full), "AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s", code, msg,
                 trace, corr, ts);
        snprintf(uri, sizeof(uri), "https://login.microsoftonline.com/error?code=%d", code);
        r->status = status;
        r->body = json_pack("{s:s, s:s, s:[i], s:s, s:s, s:s, s:s}", "error", error, "error_description",
                            full, "error_codes", code, "timestamp", ts, "trace_id", trace, "correlation_id",
                            corr, "error_uri", uri);
}

static char *form_get(const char *body, size_t len, const char *key) {
        size_t klen = strlen(key);
        const char *p = body, *end = body + len;
        while (p < end) {
                const char *amp = memchr(p, '&', (size_t)(end - p));
                const char *e = amp ? amp : end;
                const char *eq = memchr(p, '=', (size_t)(e - p));
                if (eq) {
                        char kbuf[128];
                        size_t kl = (size_t)(eq - p);
                        if (kl < sizeof(kbuf)) {
                                memcpy(kbuf, p, kl);
                                kbuf[kl] = 0;
                                emu_url_decode(kbuf, true);
                                if (strlen(kbuf) == klen && !memcmp(kbuf, key, klen)) {
                                        char *v = strndup(eq + 1, (size_t)(e - eq - 1));
                                        if (v)
                                                emu_url_decode(v, true);
                                        return v;
                                }
                        }
                }
                p = e + 1;
        }
        return NULL;
}

static bool scope_ok(const char *scope) {
        /* Space-separated; one must be RESOURCE/.default; OIDC scopes that
         * libraries add are tolerated. */
        bool found = false;
        char *dup = strdup(scope), *save = NULL;
        for (char *t = strtok_r(dup, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
                if (!strcmp(t, "openid") || !strcmp(t, "profile") || !strcmp(t, "offline_access"))
                        continue;
                bool ok = false;
                for (size_t i = 0; i < sizeof(graph_resources) / sizeof(graph_resources[0]); i++) {
                        size_t rl = strlen(graph_resources[i]);
                        if (!strncasecmp(t, graph_resources[i], rl) &&
                            (!strcmp(t + rl, "/.default") || !strcmp(t + rl, "//.default")))
                                ok = true;
                }
                if (!ok) {
                        found = false;
                        break;
                }
                found = true;
        }
        free(dup);
        return found;
}

static emu_client *client_find(emu_server *srv, const char *tenant, const char *client_id,
                               bool *tenant_known) {
        *tenant_known = false;
        for (size_t i = 0; i < srv->nclients; i++) {
                if (strcasecmp(srv->clients[i].tenant, tenant))
                        continue;
                *tenant_known = true;
                if (!strcasecmp(srv->clients[i].client_id, client_id))
                        return &srv->clients[i];
        }
        return NULL;
}

static bool tenant_known(emu_server *srv, const char *tenant) {
        for (size_t i = 0; i < srv->nclients; i++)
                if (!strcasecmp(srv->clients[i].tenant, tenant))
                        return true;
        return false;
}

/* Verify a client assertion against the client's certificate. Returns NULL
 * when valid (*ret_alg and *ret_thumb then name the algorithm and the
 * thumbprint header that matched, static strings), else the AADSTS text. */
static const char *assertion_check(emu_client *cl, const char *assertion, const char *token_url, int *code,
                                   const char **ret_alg, const char **ret_thumb) {
        json_t *hdr = NULL, *pl = NULL;
        const char *why = NULL;
        *code = 700027;
        if (!cl->cert_key) {
                *code = 700027;
                return "Client assertion contains an invalid signature. No certificate is registered for the "
                       "app.";
        }
        if (jwt_verify(assertion, cl->cert_key, true, &hdr, &pl))
                return "Client assertion contains an invalid signature.";
        /* The thumbprint must name the registered certificate. */
        const char *x5t = json_string_value(json_object_get(hdr, "x5t"));
        const char *x5t256 = json_string_value(json_object_get(hdr, "x5t#S256"));
        char *want1 = emu_b64url_encode(cl->x5t, sizeof(cl->x5t));
        char *want256 = emu_b64url_encode(cl->x5t256, sizeof(cl->x5t256));
        bool match1 = x5t && want1 && !strcmp(x5t, want1);
        bool match256 = x5t256 && want256 && !strcmp(x5t256, want256);
        bool match = match1 || match256;
        free(want1);
        free(want256);
        /* jwt_verify admitted RS256 and PS256 only */
        *ret_alg = !strcmp(json_string_value(json_object_get(hdr, "alg")), "PS256") ? "PS256" : "RS256";
        *ret_thumb = match256 ? "x5t#S256" : "x5t";
        if (!match) {
                why =
                    "The certificate with identifier used to sign the client assertion is not registered on "
                    "application.";
                *code = 700027;
                goto out;
        }
        const char *iss = json_string_value(json_object_get(pl, "iss"));
        const char *sub = json_string_value(json_object_get(pl, "sub"));
        if (!iss || !sub || strcasecmp(iss, cl->client_id) || strcasecmp(sub, cl->client_id)) {
                why =
                    "Client assertion failed signature validation: the iss and sub claims must be the client "
                    "id.";
                *code = 700023;
                goto out;
        }
        const char *aud = json_string_value(json_object_get(pl, "aud"));
        if (!aud || (!strstr(aud, "/oauth2/v2.0/token") && !strstr(aud, "/oauth2/token") &&
                     strcasecmp(aud, token_url))) {
                why = "Client assertion audience claim does not match Realm issuer.";
                *code = 700021;
                goto out;
        }
        json_t *exp = json_object_get(pl, "exp");
        if (!json_is_integer(exp) || json_integer_value(exp) * 1000 < emu_now_ms()) {
                why = "Client assertion is expired or has no exp claim.";
                *code = 700024;
                goto out;
        }
out:
        json_decref(hdr);
        json_decref(pl);
        return why;
}

void emu_auth_token(emu_server *srv, const char *tenant, const char *body, size_t len, const char *basic_auth,
                    const char *base_url, emu_resp *r) {
        char *grant = form_get(body, len, "grant_type");
        char *client_id = form_get(body, len, "client_id");
        char *secret = form_get(body, len, "client_secret");
        char *scope = form_get(body, len, "scope");
        char *atype = form_get(body, len, "client_assertion_type");
        char *assertion = form_get(body, len, "client_assertion");

        /* client_secret_basic */
        if (basic_auth && !strncasecmp(basic_auth, "Basic ", 6) && !secret) {
                size_t dl;
                const char *b = basic_auth + 6;
                unsigned char *dec = emu_b64url_decode(b, strlen(b), &dl);
                char *colon = dec ? strchr((char *)dec, ':') : NULL;
                if (colon) {
                        *colon = 0;
                        emu_url_decode((char *)dec, true);
                        emu_url_decode(colon + 1, true);
                        if (!client_id)
                                client_id = strdup((char *)dec);
                        secret = strdup(colon + 1);
                }
                free(dec);
        }

        emu_resp_header(r, "Cache-Control", "no-store, no-cache");
        if (!tenant_known(srv, tenant)) {
                aad_error(r, 400, "invalid_tenant", 90002,
                          "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are "
                          "signing "
                          "into the correct cloud.",
                          tenant);
                goto out;
        }
        if (!grant) {
                aad_error(r, 400, "invalid_request", 900144,
                          "The request body must contain the following parameter: 'grant_type'.");
                goto out;
        }
        if (strcmp(grant, "client_credentials")) {
                aad_error(r, 400, "unsupported_grant_type", 70003,
                          "The app requested an unsupported grant type '%s'.", grant);
                goto out;
        }
        if (!client_id) {
                aad_error(r, 400, "invalid_request", 900144,
                          "The request body must contain the following parameter: 'client_id'.");
                goto out;
        }
        if (!scope) {
                aad_error(r, 400, "invalid_request", 900144,
                          "The request body must contain the following parameter: 'scope'.");
                goto out;
        }
        bool tk;
        emu_client *cl = client_find(srv, tenant, client_id, &tk);
        if (!cl) {
                aad_error(
                    r, 400, "unauthorized_client", 700016,
                    "Application with identifier '%s' was not found in the directory '%s'. This can happen "
                    "if "
                    "the application has not been installed by the administrator of the tenant or consented "
                    "to by any user in the tenant. You might have sent your authentication request to the "
                    "wrong tenant.",
                    client_id, tenant);
                goto out;
        }
        if (!scope_ok(scope)) {
                aad_error(
                    r, 400, "invalid_scope", 1002012,
                    "The provided value for scope %s is not valid. Client credential flows must have a scope "
                    "value with /.default suffixed to the resource identifier (application ID URI).",
                    scope);
                goto out;
        }
        pthread_mutex_lock(&srv->mu);
        bool revoked = cl->revoked;
        pthread_mutex_unlock(&srv->mu);
        if (assertion || atype) {
                if (!atype || strcmp(atype, ASSERTION_TYPE)) {
                        aad_error(r, 400, "invalid_request", 50027,
                                  "Invalid client_assertion_type; expected '%s'.", ASSERTION_TYPE);
                        goto out;
                }
                if (!assertion) {
                        aad_error(
                            r, 400, "invalid_request", 900144,
                            "The request body must contain the following parameter: 'client_assertion'.");
                        goto out;
                }
                char token_url[512];
                snprintf(token_url, sizeof(token_url), "%s/%s/oauth2/v2.0/token", base_url, tenant);
                int code;
                const char *alg = NULL, *thumb = NULL;
                const char *why = assertion_check(cl, assertion, token_url, &code, &alg, &thumb);
                if (why) {
                        aad_error(r, 401, "invalid_client", code, "%s", why);
                        goto out;
                }
                if (revoked) {
                        aad_error(r, 401, "invalid_client", 700027,
                                  "The certificate registered for application '%s' has been revoked.",
                                  client_id);
                        goto out;
                }
                emu_stats_assertion(srv, alg, thumb);
        } else if (secret) {
                bool ok = cl->secret && strlen(cl->secret) == strlen(secret) &&
                          CRYPTO_memcmp(cl->secret, secret, strlen(secret)) == 0;
                if (!ok) {
                        aad_error(
                            r, 401, "invalid_client", 7000215,
                            "Invalid client secret provided. Ensure the secret being sent in the request is "
                            "the "
                            "client secret value, not the client secret ID, for a secret added to app '%s'.",
                            client_id);
                        goto out;
                }
                if (revoked) {
                        aad_error(r, 401, "invalid_client", 7000222,
                                  "The provided client secret keys for app '%s' are expired.", client_id);
                        goto out;
                }
        } else {
                aad_error(r, 401, "invalid_client", 7000218,
                          "The request body must contain the following parameter: 'client_assertion' or "
                          "'client_secret'.");
                goto out;
        }

        int64_t now = emu_now_ms() / 1000;
        char oid[37], uti[37], iss[160];
        emu_uuid(oid);
        emu_uuid(uti);
        snprintf(iss, sizeof(iss), "https://sts.windows.net/%s/", cl->tenant);
        json_t *pl = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:s, s:s, s:O, s:s, s:s, s:s, s:s, s:s}",
                               "aud", "https://graph.microsoft.com", "iss", iss, "iat", (json_int_t)now,
                               "nbf", (json_int_t)now, "exp", (json_int_t)(now + srv->token_lifetime),
                               "appid", cl->client_id, "appidacr", cl->secret && !assertion ? "1" : "2",
                               "idtyp", "app", "oid", oid, "roles", cl->roles, "sub", oid, "tid", cl->tenant,
                               "uti", uti, "ver", "1.0", "app_displayname", "canopy-emulator-client");
        char *tok = jwt_sign(srv->sign_key, srv->kid, pl);
        json_decref(pl);
        if (!tok) {
                aad_error(r, 500, "temporarily_unavailable", 50001, "Token signing failed.");
                goto out;
        }
        r->status = 200;
        r->body = json_pack("{s:s, s:i, s:i, s:s}", "token_type", "Bearer", "expires_in", srv->token_lifetime,
                            "ext_expires_in", srv->token_lifetime, "access_token", tok);
        free(tok);
        emu_stats_add(srv, &srv->stats.tokens);
out:
        free(grant);
        free(client_id);
        if (secret) {
                OPENSSL_cleanse(secret, strlen(secret));
                free(secret);
        }
        free(scope);
        free(atype);
        free(assertion);
}

/* ---- bearer check ---------------------------------------------------------- */

static void unauthorized(emu_resp *r, const char *msg) {
        r->status = 401;
        r->body = json_pack("{s:{s:s, s:s}}", "error", "code", "InvalidAuthenticationToken", "message", msg);
        emu_resp_header(
            r, "WWW-Authenticate",
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/"
            "authorize\", client_id=\"" GRAPH_APP_ID "\"");
}

int emu_auth_check(emu_server *srv, const char *authz, emu_auth *out, emu_resp *r) {
        memset(out, 0, sizeof(*out));
        if (!authz || !*authz) {
                unauthorized(r, "Access token is empty.");
                return -1;
        }
        if (strncasecmp(authz, "Bearer ", 7)) {
                unauthorized(r, "Access token validation failure. Invalid scheme.");
                return -1;
        }
        const char *tok = authz + 7;
        while (*tok == ' ')
                tok++;
        json_t *hdr = NULL, *pl = NULL;
        if (jwt_verify(tok, srv->sign_key, false, &hdr, &pl)) {
                unauthorized(r, "Access token validation failure. Invalid signature.");
                return -1;
        }
        int rc = -1;
        const char *kid = json_string_value(json_object_get(hdr, "kid"));
        const char *aud = json_string_value(json_object_get(pl, "aud"));
        const char *tid = json_string_value(json_object_get(pl, "tid"));
        const char *appid = json_string_value(json_object_get(pl, "appid"));
        json_t *exp = json_object_get(pl, "exp");
        if (!kid || strcmp(kid, srv->kid)) {
                unauthorized(r, "Access token validation failure. Invalid signature.");
                goto out;
        }
        if (!aud || (strcmp(aud, "https://graph.microsoft.com") && strcmp(aud, GRAPH_APP_ID))) {
                unauthorized(r, "Access token validation failure. Invalid audience.");
                goto out;
        }
        if (!json_is_integer(exp) || json_integer_value(exp) * 1000 <= emu_now_ms()) {
                unauthorized(r, "Lifetime validation failed, the token is expired.");
                goto out;
        }
        if (!tid || !appid) {
                unauthorized(r, "Access token validation failure.");
                goto out;
        }
        bool tk;
        emu_client *cl = client_find(srv, tid, appid, &tk);
        pthread_mutex_lock(&srv->mu);
        bool revoked = cl && cl->revoked;
        pthread_mutex_unlock(&srv->mu);
        if (!cl || revoked) {
                unauthorized(r, "Access token has been revoked.");
                goto out;
        }
        out->client = cl;
        snprintf(out->tid, sizeof(out->tid), "%s", tid);
        snprintf(out->appid, sizeof(out->appid), "%s", appid);
        json_t *roles = json_object_get(pl, "roles");
        size_t i;
        json_t *v;
        json_array_foreach(roles, i, v) {
                if (json_is_string(v))
                        out->perms |= emu_role_bit(json_string_value(v));
        }
        rc = 0;
out:
        json_decref(hdr);
        json_decref(pl);
        return rc;
}

/* ---- metadata for MSAL ------------------------------------------------------ */

void emu_auth_openid(emu_server *srv, const char *tenant, const char *base_url, emu_resp *r) {
        char tok[512], auth[512], jwks[512], iss[512], logout[512];
        snprintf(tok, sizeof(tok), "%s/%s/oauth2/v2.0/token", base_url, tenant);
        snprintf(auth, sizeof(auth), "%s/%s/oauth2/v2.0/authorize", base_url, tenant);
        snprintf(jwks, sizeof(jwks), "%s/%s/discovery/v2.0/keys", base_url, tenant);
        snprintf(iss, sizeof(iss), "%s/%s/v2.0", base_url, tenant);
        snprintf(logout, sizeof(logout), "%s/%s/oauth2/v2.0/logout", base_url, tenant);
        r->status = 200;
        r->body =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:[s,s], s:[s], s:[s], s:[s], s:s, s:s}", "token_endpoint",
                      tok, "authorization_endpoint", auth, "jwks_uri", jwks, "issuer", iss,
                      "end_session_endpoint", logout, "token_endpoint_auth_methods_supported",
                      "client_secret_post", "private_key_jwt", "response_types_supported", "code",
                      "id_token_signing_alg_values_supported", "RS256", "grant_types_supported",
                      "client_credentials", "tenant_region_scope", "NA", "cloud_instance_name", "emulator");
        (void)srv;
}

void emu_auth_jwks(emu_server *srv, emu_resp *r) {
        BIGNUM *n = NULL, *e = NULL;
        EVP_PKEY_get_bn_param(srv->sign_key, OSSL_PKEY_PARAM_RSA_N, &n);
        EVP_PKEY_get_bn_param(srv->sign_key, OSSL_PKEY_PARAM_RSA_E, &e);
        unsigned char nb[512], eb[16];
        int nl = n ? BN_bn2bin(n, nb) : 0, el = e ? BN_bn2bin(e, eb) : 0;
        char *n64 = emu_b64url_encode(nb, (size_t)nl), *e64 = emu_b64url_encode(eb, (size_t)el);
        r->status = 200;
        r->body = json_pack("{s:[{s:s, s:s, s:s, s:s, s:s, s:s}]}", "keys", "kty", "RSA", "use", "sig", "alg",
                            "RS256", "kid", srv->kid, "n", n64, "e", e64);
        free(n64);
        free(e64);
        BN_free(n);
        BN_free(e);
}

void emu_auth_instance_discovery(emu_server *srv, const char *base_url, const char *host, emu_resp *r) {
        char ep[512];
        snprintf(ep, sizeof(ep), "%s/common/v2.0/.well-known/openid-configuration", base_url);
        r->status = 200;
        r->body =
            json_pack("{s:s, s:s, s:[{s:s, s:s, s:[s]}]}", "tenant_discovery_endpoint", ep, "api-version",
                      "1.1", "metadata", "preferred_network", host, "preferred_cache", host, "aliases", host);
        (void)srv;
}
