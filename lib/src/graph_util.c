/* graph_util.c: pure helpers of the Graph client: Retry-After, OData
 * quoting, error bodies, JSON diff, UUIDs, base64url, time. */
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "graph_int.h"

/* Longest Retry-After we accept (a server asking for more is capped). */
#define RETRY_AFTER_CAP_MS (24LL * 3600 * 1000)

int64_t graph_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t graph_epoch_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void graph_sleep_ms(int64_t ms) {
        if (ms <= 0)
                return;
        struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
                ;
}

void graph_strlcpy(char *dst, const char *src, size_t size) {
        if (!size)
                return;
        if (!src)
                src = "";
        size_t n = strlen(src);
        if (n >= size)
                n = size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
}

void graph_uuid4(char out[37]) {
        unsigned char b[16];
        if (RAND_bytes(b, sizeof(b)) != 1) {
                /* RAND_bytes does not fail on Linux with a seeded pool; keep a
                 * unique-enough fallback rather than an uninitialised id. */
                uint64_t t = (uint64_t)graph_epoch_ms() ^ ((uint64_t)clock() << 32);
                for (int i = 0; i < 16; i++)
                        b[i] = (unsigned char)(t >> ((i % 8) * 8)) ^ (unsigned char)(i * 37);
        }
        b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
        b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
        snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

char *graph_b64url(const unsigned char *data, size_t len) {
        size_t cap = 4 * ((len + 2) / 3) + 1;
        char *out = malloc(cap);
        if (!out)
                return NULL;
        int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
        if (n < 0) {
                free(out);
                return NULL;
        }
        while (n > 0 && out[n - 1] == '=')
                n--;
        out[n] = '\0';
        for (int i = 0; i < n; i++) {
                if (out[i] == '+')
                        out[i] = '-';
                else if (out[i] == '/')
                        out[i] = '_';
        }
        return out;
}

uint64_t graph_rand(canopy_graph *gc, uint64_t n) {
        if (n == 0)
                return 0;
        uint64_t x = gc->rng ? gc->rng : 0x9e3779b97f4a7c15ULL;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        gc->rng = x;
        return x % n;
}

static int is_unreserved(unsigned char c) {
        return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

canopy_err graph_pct_encode(const char *in, char *out, size_t outlen) {
        static const char hex[] = "0123456789ABCDEF";
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
                if (is_unreserved(*p)) {
                        if (o + 1 >= outlen)
                                return CANOPY_ERR_LIMIT;
                        out[o++] = (char)*p;
                } else {
                        if (o + 3 >= outlen)
                                return CANOPY_ERR_LIMIT;
                        out[o++] = '%';
                        out[o++] = hex[*p >> 4];
                        out[o++] = hex[*p & 15];
                }
        }
        if (o >= outlen)
                return CANOPY_ERR_LIMIT;
        out[o] = '\0';
        return CANOPY_OK;
}

canopy_err canopy_graph_odata_quote(const char *value, char *out, size_t outlen) {
        if (!value || !out || !outlen)
                return CANOPY_ERR_INVALID_ARG;
        /* Build 'value' with quotes doubled, then percent-encode all of it:
         * after encoding, no character of the value can end the literal or
         * start another clause (&, #, +, spaces are all encoded). */
        size_t vlen = strlen(value);
        if (vlen > outlen)
                return CANOPY_ERR_LIMIT;
        char *lit = malloc(2 * vlen + 3);
        if (!lit)
                return CANOPY_ERR_NOMEM;
        size_t o = 0;
        lit[o++] = '\'';
        for (const char *p = value; *p; p++) {
                if (*p == '\'')
                        lit[o++] = '\'';
                lit[o++] = *p;
        }
        lit[o++] = '\'';
        lit[o] = '\0';
        canopy_err err = graph_pct_encode(lit, out, outlen);
        free(lit);
        return err;
}

canopy_err canopy_graph_retry_after_parse(const char *value, int64_t now_epoch_ms, int64_t *ret_ms) {
        if (!value || !ret_ms)
                return CANOPY_ERR_INVALID_ARG;
        while (*value == ' ' || *value == '\t')
                value++;
        size_t len = strlen(value);
        while (len && (value[len - 1] == ' ' || value[len - 1] == '\t' || value[len - 1] == '\r' ||
                       value[len - 1] == '\n'))
                len--;
        if (!len || len > 63)
                return CANOPY_ERR_DECODE;
        char v[64];
        memcpy(v, value, len);
        v[len] = '\0';

        if (isdigit((unsigned char)v[0])) {
                /* delta-seconds, integer or decimal (Graph sends decimals too). */
                int64_t whole = 0, frac_ms = 0;
                const char *p = v;
                for (; isdigit((unsigned char)*p); p++) {
                        if (whole > RETRY_AFTER_CAP_MS / 1000)
                                break;
                        whole = whole * 10 + (*p - '0');
                }
                while (isdigit((unsigned char)*p))
                        p++;
                if (*p == '.') {
                        p++;
                        if (!isdigit((unsigned char)*p))
                                return CANOPY_ERR_DECODE;
                        int64_t scale = 100;
                        for (; isdigit((unsigned char)*p); p++) {
                                frac_ms += (*p - '0') * scale;
                                scale /= 10;
                        }
                        /* round a remaining fraction of a millisecond up */
                }
                if (*p)
                        return CANOPY_ERR_DECODE;
                int64_t ms = whole * 1000 + frac_ms;
                if (ms > RETRY_AFTER_CAP_MS)
                        ms = RETRY_AFTER_CAP_MS;
                *ret_ms = ms;
                return CANOPY_OK;
        }
        /* HTTP-date: IMF-fixdate, RFC 850 or asctime; must name a weekday. */
        if (!isalpha((unsigned char)v[0]))
                return CANOPY_ERR_DECODE;
        time_t t = curl_getdate(v, NULL);
        if (t == (time_t)-1)
                return CANOPY_ERR_DECODE;
        int64_t ms = (int64_t)t * 1000 - now_epoch_ms;
        if (ms < 0)
                ms = 0;
        if (ms > RETRY_AFTER_CAP_MS)
                ms = RETRY_AFTER_CAP_MS;
        *ret_ms = ms;
        return CANOPY_OK;
}

void canopy_graph_error_clear(canopy_graph_error *ei) {
        if (ei)
                memset(ei, 0, sizeof(*ei));
}

static const char *jstr(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);
        return json_is_string(v) ? json_string_value(v) : NULL;
}

/* "Another object with the same value for property userPrincipalName already exists." */
static void conflict_from_message(canopy_graph_error *ei, const char *msg) {
        static const char *const props[] = {"userPrincipalName", "proxyAddresses", "mailNickname",
                                            "onPremisesImmutableId", "mail", "displayName", NULL};
        if (!msg || ei->conflict_property[0])
                return;
        const char *p = strstr(msg, "property ");
        if (p) {
                p += strlen("property ");
                size_t n = 0;
                while (p[n] && (isalnum((unsigned char)p[n]) || p[n] == '_'))
                        n++;
                if (n && n < sizeof(ei->conflict_property)) {
                        memcpy(ei->conflict_property, p, n);
                        ei->conflict_property[n] = '\0';
                        return;
                }
        }
        for (int i = 0; props[i]; i++) {
                if (strstr(msg, props[i])) {
                        graph_strlcpy(ei->conflict_property, props[i], sizeof(ei->conflict_property));
                        return;
                }
        }
}

canopy_err canopy_graph_error_parse(const char *body, size_t len, canopy_graph_error *ei) {
        if (!ei)
                return CANOPY_ERR_INVALID_ARG;
        if (!body || !len) {
                return CANOPY_ERR_DECODE;
        }
        json_error_t jerr;
        json_t *root = json_loadb(body, len, 0, &jerr);
        json_t *e = root ? json_object_get(root, "error") : NULL;
        if (!json_is_object(e)) {
                size_t n = len < sizeof(ei->message) - 1 ? len : sizeof(ei->message) - 1;
                memcpy(ei->message, body, n);
                ei->message[n] = '\0';
                json_decref(root);
                return CANOPY_ERR_DECODE;
        }
        graph_strlcpy(ei->code, jstr(e, "code"), sizeof(ei->code));
        graph_strlcpy(ei->message, jstr(e, "message"), sizeof(ei->message));
        json_t *inner = json_object_get(e, "innerError");
        if (!inner)
                inner = json_object_get(e, "innererror");
        if (json_is_object(inner)) {
                if (jstr(inner, "request-id"))
                        graph_strlcpy(ei->request_id, jstr(inner, "request-id"), sizeof(ei->request_id));
                if (jstr(inner, "client-request-id"))
                        graph_strlcpy(ei->client_request_id, jstr(inner, "client-request-id"),
                                      sizeof(ei->client_request_id));
                if (jstr(inner, "date"))
                        graph_strlcpy(ei->date, jstr(inner, "date"), sizeof(ei->date));
        }
        json_t *details = json_object_get(e, "details");
        ei->ndetails = 0;
        bool conflict = ei->code[0] && strcmp(ei->code, "ObjectConflict") == 0;
        if (json_is_array(details)) {
                size_t i;
                json_t *d;
                json_array_foreach(details, i, d) {
                        if (!json_is_object(d))
                                continue;
                        const char *dcode = jstr(d, "code");
                        const char *dtarget = jstr(d, "target");
                        const char *dmsg = jstr(d, "message");
                        if (dcode && strcmp(dcode, "ObjectConflict") == 0) {
                                conflict = true;
                                if (dtarget && *dtarget && !ei->conflict_property[0])
                                        graph_strlcpy(ei->conflict_property, dtarget,
                                                      sizeof(ei->conflict_property));
                                conflict_from_message(ei, dmsg);
                        }
                        if (ei->ndetails < CANOPY_GRAPH_MAX_DETAILS) {
                                graph_strlcpy(ei->details[ei->ndetails].code, dcode,
                                              sizeof(ei->details[0].code));
                                graph_strlcpy(ei->details[ei->ndetails].target, dtarget,
                                              sizeof(ei->details[0].target));
                                graph_strlcpy(ei->details[ei->ndetails].message, dmsg,
                                              sizeof(ei->details[0].message));
                                ei->ndetails++;
                        }
                }
        }
        if (conflict)
                conflict_from_message(ei, ei->message);
        if (conflict && !ei->conflict_property[0])
                graph_strlcpy(ei->conflict_property, "unknown", sizeof(ei->conflict_property));
        /* keep the code recognisable for the mapper even when Graph puts
         * ObjectConflict only in details[] */
        if (conflict && strcmp(ei->code, "ObjectConflict") != 0 && !ei->details[0].code[0])
                graph_strlcpy(ei->code, "ObjectConflict", sizeof(ei->code));
        json_decref(root);
        return CANOPY_OK;
}

static bool is_conflict(const canopy_graph_error *ei) {
        if (!ei)
                return false;
        if (strcmp(ei->code, "ObjectConflict") == 0)
                return true;
        for (int i = 0; i < ei->ndetails; i++)
                if (strcmp(ei->details[i].code, "ObjectConflict") == 0)
                        return true;
        return false;
}

canopy_err canopy_graph_error_map(long status, const canopy_graph_error *ei) {
        if (status >= 200 && status < 300)
                return CANOPY_OK;
        if (status == 0)
                return CANOPY_ERR_HTTP;
        if (status == 401 || status == 403)
                return CANOPY_ERR_GRAPH_AUTH;
        if (status == 429)
                return CANOPY_ERR_GRAPH_THROTTLED;
        if (status >= 500)
                return CANOPY_ERR_GRAPH_UNAVAILABLE;
        if (is_conflict(ei))
                return CANOPY_ERR_GRAPH_CONFLICT;
        if (status == 404 || (ei && strcmp(ei->code, "Request_ResourceNotFound") == 0))
                return CANOPY_ERR_GRAPH_NOT_FOUND;
        if (status == 409)
                return CANOPY_ERR_GRAPH_CONFLICT;
        return CANOPY_ERR_GRAPH_BAD_REQUEST;
}

bool graph_is_missing_ref(long status, const canopy_graph_error *ei) {
        if (status == 404)
                return true;
        if (status != 400 || !ei)
                return false;
        if (strcmp(ei->code, "Request_ResourceNotFound") == 0)
                return true;
        if (strstr(ei->message, "do not exist") || strstr(ei->message, "does not exist"))
                return true;
        for (int i = 0; i < ei->ndetails; i++)
                if (strcmp(ei->details[i].code, "Request_ResourceNotFound") == 0)
                        return true;
        return false;
}

void graph_conflict_fill(canopy_graph_error *ei, const char *req_body) {
        if (!ei || !ei->conflict_property[0] || ei->conflict_value[0] || !req_body)
                return;
        json_t *root = json_loads(req_body, 0, NULL);
        json_t *v = root ? json_object_get(root, ei->conflict_property) : NULL;
        json_t *mail = root ? json_object_get(root, "mail") : NULL;
        if (!v && !strcmp(ei->conflict_property, "proxyAddresses") && json_is_string(mail)) {
                /* Graph derives the primary address from mail: that is
                 * the one that collided */
                snprintf(ei->conflict_value, sizeof(ei->conflict_value), "SMTP:%s", json_string_value(mail));
        } else if (json_is_string(v)) {
                graph_strlcpy(ei->conflict_value, json_string_value(v), sizeof(ei->conflict_value));
        } else if (json_is_array(v)) {
                /* proxyAddresses: report every address we sent (Graph does not
                 * say which one collided). */
                size_t i, o = 0;
                json_t *s;
                json_array_foreach(v, i, s) {
                        if (!json_is_string(s))
                                continue;
                        int n = snprintf(ei->conflict_value + o, sizeof(ei->conflict_value) - o, "%s%s",
                                         o ? "," : "", json_string_value(s));
                        if (n < 0 || (size_t)n >= sizeof(ei->conflict_value) - o)
                                break;
                        o += (size_t)n;
                }
        }
        json_decref(root);
}

canopy_err canopy_graph_diff(const char *old_json, const char *new_json, char **ret_patch) {
        if (!new_json || !ret_patch)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = CANOPY_OK;
        json_t *o = old_json && *old_json ? json_loads(old_json, 0, NULL) : json_object();
        json_t *n = json_loads(new_json, 0, NULL);
        json_t *patch = json_object();
        if (!json_is_object(o) || !json_is_object(n)) {
                err = CANOPY_ERR_DECODE;
                goto out;
        }
        if (!patch) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        const char *k;
        json_t *v;
        json_object_foreach(n, k, v) {
                json_t *ov = json_object_get(o, k);
                if (!ov || !json_equal(ov, v))
                        json_object_set(patch, k, v);
        }
        json_object_foreach(o, k, v) {
                if (!json_object_get(n, k) && !json_is_null(v))
                        json_object_set_new(patch, k, json_null());
        }
        if (json_object_size(patch) == 0) {
                *ret_patch = NULL;
                goto out;
        }
        char *s = json_dumps(patch, JSON_COMPACT | JSON_SORT_KEYS);
        if (!s) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        *ret_patch = s;
out:
        json_decref(o);
        json_decref(n);
        json_decref(patch);
        return err;
}

canopy_err canopy_graph_cloud_parse(const char *s, canopy_graph_cloud *ret) {
        if (!s || !ret)
                return CANOPY_ERR_INVALID_ARG;
        if (!strcasecmp(s, "global") || !strcasecmp(s, "public") || !strcasecmp(s, "AzureCloud"))
                *ret = CANOPY_GRAPH_CLOUD_GLOBAL;
        else if (!strcasecmp(s, "usgov") || !strcasecmp(s, "AzureUSGovernment"))
                *ret = CANOPY_GRAPH_CLOUD_USGOV;
        else if (!strcasecmp(s, "china") || !strcasecmp(s, "AzureChinaCloud"))
                *ret = CANOPY_GRAPH_CLOUD_CHINA;
        else
                return CANOPY_ERR_CONFIG;
        return CANOPY_OK;
}

void canopy_graph_result_clear(canopy_graph_result *res) {
        if (!res)
                return;
        free(res->body);
        memset(res, 0, sizeof(*res));
}

void canopy_graph_req_clear(canopy_graph_req *reqs, size_t n) {
        if (!reqs)
                return;
        for (size_t i = 0; i < n; i++) {
                canopy_graph_result_clear(&reqs[i].res);
                canopy_graph_error_clear(&reqs[i].ei);
                reqs[i].err = CANOPY_OK;
        }
}

void canopy_graph_ids_free(char **ids, size_t n) {
        if (!ids)
                return;
        for (size_t i = 0; i < n; i++)
                free(ids[i]);
        free(ids);
}
