/* fuzz_graph_json.c: what the Graph client parses from (or builds for) the
 * network: error bodies (canopy_graph_error_parse, error_map, the conflict
 * value taken from a request body, missing-reference detection),
 * Retry-After values, the property diff that becomes a PATCH, and the two
 * encoders that put directory values into URLs (OData string literals for
 * $filter, path segments). The encoders are checked, not just run: an
 * OData literal must decode back to exactly the input inside one pair of
 * quotes (a value can never change a query's meaning), and a path segment
 * must carry no URL delimiter.
 *
 * It also feeds $batch response bodies to graph_batch_apply, the code that
 * matches a batch's answers to its items (ids in any order, missing,
 * repeated or foreign ids, inner statuses and Retry-After headers), and
 * checks what it leaves: every item either answered or unanswered, an error
 * for every non-2xx, no pending item without an error, terminated strings.
 *
 * Input: byte 0 selects the mode, the rest is split at the first NUL into
 * A and B. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/graph.h"
#include "graph_int.h"

#define CHECK(c)                 \
        do {                     \
                if (!(c))        \
                        abort(); \
        } while (0)

static bool terminated(const char *s, size_t cap) { return memchr(s, 0, cap) != NULL; }

static int hexv(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Percent-decode; every byte must be unreserved or %XX. */
static char *pct_decode_strict(const char *s) {
        size_t n = strlen(s);
        char *o = malloc(n + 1);
        size_t k = 0;
        CHECK(o);
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c == '%') {
                        CHECK(i + 2 < n);
                        int h = hexv(s[i + 1]), l = hexv(s[i + 2]);
                        CHECK(h >= 0 && l >= 0);
                        o[k++] = (char)(h * 16 + l);
                        i += 2;
                        continue;
                }
                /* only unreserved characters may appear as themselves */
                CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '.' || c == '_' || c == '~');
                o[k++] = (char)c;
        }
        o[k] = 0;
        return o;
}

static void check_odata(const char *a) {
        size_t cap = strlen(a) * 9 + 16;
        char *out = malloc(cap);
        CHECK(out);
        if (canopy_graph_odata_quote(a, out, cap) == CANOPY_OK) {
                char *lit = pct_decode_strict(out);
                size_t n = strlen(lit);
                CHECK(n >= 2 && lit[0] == '\'' && lit[n - 1] == '\'');
                /* inside: quotes come in pairs; un-doubled it is the input */
                char *back = malloc(n + 1);
                size_t k = 0;
                CHECK(back);
                for (size_t i = 1; i + 1 < n; i++) {
                        if (lit[i] == '\'') {
                                CHECK(i + 2 < n && lit[i + 1] == '\''); /* a lone quote would end the literal */
                                i++;
                        }
                        back[k++] = lit[i];
                }
                back[k] = 0;
                CHECK(!strcmp(back, a));
                free(back);
                free(lit);
        }
        /* too small a buffer is an error, never an overflow */
        char tiny[4];
        (void)canopy_graph_odata_quote(a, tiny, sizeof(tiny));
        free(out);
}

static void check_segment(const char *a) {
        size_t cap = strlen(a) * 3 + 1;
        char *out = malloc(cap);
        CHECK(out);
        if (graph_pct_encode(a, out, cap) == CANOPY_OK) {
                CHECK(!strpbrk(out, "/?#&=+ '\"$,;:@[]"));
                char *back = pct_decode_strict(out);
                CHECK(!strcmp(back, a));
                free(back);
        }
        free(out);
}

static void check_diff(const char *a, const char *b) {
        char *patch = NULL;
        if (canopy_graph_diff(a, b, &patch) != CANOPY_OK || !patch) {
                free(patch);
                return;
        }
        json_t *p = json_loads(patch, 0, NULL), *o = *a ? json_loads(a, 0, NULL) : json_object(),
               *n = json_loads(b, 0, NULL);
        CHECK(json_is_object(p) && json_object_size(p) > 0);
        CHECK(json_is_object(o) && json_is_object(n));
        const char *k;
        json_t *v;
        /* old + patch == new, for every key of new; removed keys are nulled */
        json_object_foreach(n, k, v) {
                json_t *pv = json_object_get(p, k), *ov = json_object_get(o, k);
                CHECK(pv ? json_equal(pv, v) : (ov && json_equal(ov, v)));
        }
        json_object_foreach(p, k, v) {
                if (!json_object_get(n, k))
                        CHECK(json_is_null(v) && json_object_get(o, k));
        }
        json_decref(p);
        json_decref(o);
        json_decref(n);
        free(patch);
}

/* A client that never connects: graph_batch_apply only reads its conf and
 * counts into its stats. */
static canopy_graph *fuzz_client(void) {
        static canopy_graph *gc;
        if (!gc) {
                canopy_graph_conf c;
                canopy_graph_conf_init(&c);
                c.tenant = "fuzz-tenant";
                c.client_id = "fuzz-client";
                c.client_secret = "fuzz-secret";
                c.graph_url = "https://127.0.0.1:1";
                c.authority_url = "https://127.0.0.1:1";
                char eb[256];
                CHECK(canopy_graph_new(&c, &gc, eb, sizeof(eb)) == CANOPY_OK);
        }
        return gc;
}

/* A: the $batch response body; byte 0 also sets how many items (1..20)
 * the batch had and which of them were fresh-object or no-retry items. */
static void check_batch(const char *a, unsigned sel) {
        enum { N = 24 };
        canopy_graph_req reqs[N];
        graph_batch_item st[N];
        size_t pend[20];
        memset(reqs, 0, sizeof(reqs));
        memset(st, 0, sizeof(st));
        size_t k = 1 + sel % 20, off = (sel / 20) % 4;
        for (size_t j = 0; j < k; j++) {
                size_t id = off + j;
                pend[j] = id;
                reqs[id].method = j % 3 ? "PATCH" : "POST";
                reqs[id].path = "/users";
                reqs[id].body = "{\"userPrincipalName\":\"a@b.test\",\"mail\":\"a@b.test\"}";
                reqs[id].flags = (j % 4 == 1 ? CANOPY_GRAPH_F_FRESH : 0) | (j % 5 == 2 ? CANOPY_GRAPH_F_NO_RETRY : 0);
                st[id].pending = true;
        }
        int64_t max_ra = -1;
        bool any = false;
        canopy_err err = graph_batch_apply(fuzz_client(), reqs, N, pend, k, st, a, strlen(a), "req-id", "creq-id",
                                           &max_ra, &any);
        bool some_pending = false;
        for (size_t i = 0; i < N; i++) {
                canopy_graph_req *r = &reqs[i];
                bool in_batch = i >= off && i < off + k;
                if (!in_batch) {
                        CHECK(!r->res.body && r->err == CANOPY_OK && !st[i].pending);
                        continue;
                }
                if (err) {
                        /* not a $batch response: nothing touched */
                        CHECK(!r->res.body && st[i].attempts == 0 && st[i].pending);
                        continue;
                }
                CHECK(st[i].attempts == 1);
                CHECK(terminated(r->ei.code, sizeof(r->ei.code)) && terminated(r->ei.message, sizeof(r->ei.message)) &&
                      terminated(r->ei.request_id, sizeof(r->ei.request_id)) &&
                      terminated(r->res.request_id, sizeof(r->res.request_id)));
                if (r->err == CANOPY_OK)
                        CHECK(r->res.status >= 200 && r->res.status < 300 && !st[i].pending);
                if (st[i].pending) {
                        CHECK(r->err != CANOPY_OK);
                        CHECK(!(r->flags & CANOPY_GRAPH_F_NO_RETRY) || r->err == CANOPY_ERR_GRAPH_PROTOCOL);
                        some_pending = true;
                }
                if (r->res.body)
                        CHECK(r->res.body_len == strlen(r->res.body));
                canopy_graph_result_clear(&r->res);
        }
        CHECK(any == some_pending);
        CHECK(max_ra >= -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        char *buf = malloc(size + 1);
        if (!buf)
                return 0;
        memcpy(buf, data + 1, size - 1);
        buf[size - 1] = 0;
        size_t alen = strlen(buf);
        const char *a = buf, *b = alen + 1 < size ? buf + alen + 1 : "";
        switch (data[0] % 6) {
        case 0: {
                canopy_graph_error ei;
                canopy_graph_error_clear(&ei);
                ei.http_status = 400 + data[0] % 200;
                (void)canopy_graph_error_parse(a, alen, &ei);
                CHECK(terminated(ei.code, sizeof(ei.code)) && terminated(ei.message, sizeof(ei.message)) &&
                      terminated(ei.request_id, sizeof(ei.request_id)) && terminated(ei.date, sizeof(ei.date)) &&
                      terminated(ei.conflict_property, sizeof(ei.conflict_property)));
                CHECK(ei.ndetails >= 0 && ei.ndetails <= CANOPY_GRAPH_MAX_DETAILS);
                for (int i = 0; i < ei.ndetails; i++)
                        CHECK(terminated(ei.details[i].code, sizeof(ei.details[i].code)) &&
                              terminated(ei.details[i].target, sizeof(ei.details[i].target)) &&
                              terminated(ei.details[i].message, sizeof(ei.details[i].message)));
                (void)canopy_graph_error_map(ei.http_status, &ei);
                (void)graph_is_missing_ref(ei.http_status, &ei);
                graph_conflict_fill(&ei, b);
                CHECK(terminated(ei.conflict_value, sizeof(ei.conflict_value)));
                break;
        }
        case 1: {
                int64_t ms = -1;
                if (canopy_graph_retry_after_parse(a, 1700000000000, &ms) == CANOPY_OK)
                        CHECK(ms >= 0);
                break;
        }
        case 2:
                check_diff(a, b);
                break;
        case 3:
                check_odata(a);
                break;
        case 5:
                check_batch(a, data[0] / 6);
                break;
        default:
                check_segment(a);
                break;
        }
        free(buf);
        return 0;
}
