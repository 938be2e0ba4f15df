/* graph.c: the Graph v1.0 routes. One operation (emu_graph_exec) is what a
 * plain HTTP request and one $batch item both go through: permission check,
 * fault injection, write throttling, then the route under the store lock. */
#include "emu.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define CT_JSON                                                                                              \
        "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

/* ---- errors ---------------------------------------------------------------- */

static json_t *inner_error(const char *request_id, const char *client_request_id) {
        char ts[32];
        emu_iso_time(emu_now_ms(), ts);
        json_t *in = json_pack("{s:s, s:s}", "date", ts, "request-id", request_id ? request_id : "");
        json_object_set_new(in, "client-request-id",
                            json_string(client_request_id && *client_request_id
                                            ? client_request_id
                                            : (request_id ? request_id : "")));
        return in;
}

void emu_graph_error(emu_resp *r, int status, const char *code, const char *msg, const char *request_id,
                     const char *client_request_id) {
        json_decref(r->body);
        r->status = status;
        r->body = json_pack("{s:{s:s, s:s, s:o}}", "error", "code", code, "message", msg, "innerError",
                            inner_error(request_id, client_request_id));
}

void emu_graph_error_details(emu_resp *r, const emu_err *e, const char *request_id,
                             const char *client_request_id) {
        emu_graph_error(r, e->status, e->code, e->msg, request_id, client_request_id);
        if (e->target[0]) {
                json_t *err = json_object_get(r->body, "error");
                json_object_set_new(err, "details",
                                    json_pack("[{s:s, s:s, s:s}]", "code", "ObjectConflict", "message",
                                              e->msg, "target", e->target));
        }
}

/* Every error body carries innerError (the auth module builds bare ones). */
static void finish_error(emu_call *c, emu_resp *r) {
        json_t *err = json_object_get(r->body, "error");
        if (r->status >= 400 && json_is_object(err) && !json_object_get(err, "innerError"))
                json_object_set_new(err, "innerError", inner_error(c->request_id, c->client_request_id));
}

#define ERR(st, code, ...)                                                                                   \
        do {                                                                                                 \
                char m_[600];                                                                                \
                snprintf(m_, sizeof(m_), __VA_ARGS__);                                                       \
                emu_graph_error(r, st, code, m_, c->request_id, c->client_request_id);                       \
        } while (0)

static void not_found(emu_call *c, emu_resp *r, const char *id) {
        ERR(404, "Request_ResourceNotFound",
            "Resource '%s' does not exist or one of its queried reference-property objects are not present.",
            id);
}

static void forbidden(emu_call *c, emu_resp *r) {
        ERR(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.");
}

/* ---- request parsing ------------------------------------------------------------ */

typedef struct req {
        char *path;    /* decoded path, owned */
        char *seg[12]; /* pointers into segbuf */
        int nseg;
        char *segbuf;
        emu_kv q[EMU_QUERY_MAX];
        int nq;
} req;

static void req_free(req *rq) {
        free(rq->path);
        free(rq->segbuf);
        for (int i = 0; i < rq->nq; i++) {
                free(rq->q[i].key);
                free(rq->q[i].val);
        }
}

static int req_parse(const char *url, req *rq) {
        memset(rq, 0, sizeof(*rq));
        const char *qm = strchr(url, '?');
        rq->path = strndup(url, qm ? (size_t)(qm - url) : strlen(url));
        if (!rq->path || strstr(rq->path, "%00"))
                return -1;
        emu_url_decode(rq->path, false);
        size_t pl = strlen(rq->path);
        while (pl > 1 && rq->path[pl - 1] == '/')
                rq->path[--pl] = 0;
        rq->segbuf = strdup(rq->path);
        char *save = NULL;
        for (char *t = strtok_r(rq->segbuf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
                if (rq->nseg >= 12)
                        return -1;
                rq->seg[rq->nseg++] = t;
        }
        if (qm) {
                char *qs = strdup(qm + 1);
                char *s2 = NULL;
                for (char *t = strtok_r(qs, "&", &s2); t; t = strtok_r(NULL, "&", &s2)) {
                        if (rq->nq >= EMU_QUERY_MAX) {
                                free(qs);
                                return -1; /* dropping one could drop a $filter */
                        }
                        char *eq = strchr(t, '=');
                        if (eq)
                                *eq = 0;
                        rq->q[rq->nq].key = strdup(t);
                        rq->q[rq->nq].val = strdup(eq ? eq + 1 : "");
                        emu_url_decode(rq->q[rq->nq].key, true);
                        emu_url_decode(rq->q[rq->nq].val, true);
                        rq->nq++;
                }
                free(qs);
        }
        return 0;
}

static const char *qget(const req *rq, const char *key) {
        for (int i = 0; i < rq->nq; i++) {
                const char *k = rq->q[i].key;
                /* OData system options may be given without the $. */
                if (!strcasecmp(k, key) || (key[0] == '$' && !strcasecmp(k, key + 1)))
                        return rq->q[i].val;
        }
        return NULL;
}

/* Link to this path with the same query, skip/delta tokens replaced. */
static char *make_link(emu_call *c, const req *rq, const char *path, const char *tokkey, const char *tokval) {
        size_t cap = 1024 + strlen(path);
        for (int i = 0; i < rq->nq; i++)
                cap += 3 * (strlen(rq->q[i].key) + strlen(rq->q[i].val)) + 2;
        char *out = malloc(cap);
        int n = snprintf(out, cap, "%s/%s%s?", c->base, c->version, path);
        for (int i = 0; i < rq->nq; i++) {
                const char *k = rq->q[i].key;
                if (!strcasecmp(k, "$skiptoken") || !strcasecmp(k, "$deltatoken") ||
                    !strcasecmp(k, "skiptoken") || !strcasecmp(k, "deltatoken"))
                        continue;
                char *ek = emu_url_encode(k), *ev = emu_url_encode(rq->q[i].val);
                n += snprintf(out + n, cap - (size_t)n, "%s=%s&", ek, ev);
                free(ek);
                free(ev);
        }
        snprintf(out + n, cap - (size_t)n, "%s=%s", tokkey, tokval);
        return out;
}

/* $select list: names split on commas. Returns -1 with r filled on error. */
typedef struct selset {
        char *buf;
        char *names[EMU_SELECT_MAX];
        size_t n;
} selset;

static int parse_select(emu_call *c, emu_resp *r, const req *rq, emu_kind kind, selset *ss) {
        memset(ss, 0, sizeof(*ss));
        const char *s = qget(rq, "$select");
        if (!s || !*s)
                return 0;
        ss->buf = strdup(s);
        char *save = NULL;
        for (char *t = strtok_r(ss->buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                while (*t == ' ')
                        t++;
                char *e = t + strlen(t);
                while (e > t && e[-1] == ' ')
                        *--e = 0;
                if (!*t)
                        continue;
                if (ss->n >= EMU_SELECT_MAX) {
                        ERR(400, "Request_BadRequest", "Too many properties in $select.");
                        free(ss->buf);
                        ss->buf = NULL;
                        return -1;
                }
                if (strcmp(t, "members") && !emu_prop_known(kind, t)) {
                        ERR(400, "Request_BadRequest",
                            "Parsing OData Select and Expand failed: Could not find a property named '%s' on "
                            "type "
                            "'microsoft.graph.%s'.",
                            t, kind == EMU_USER ? "user" : "group");
                        free(ss->buf);
                        ss->buf = NULL;
                        return -1;
                }
                ss->names[ss->n++] = t;
        }
        return 0;
}

static bool sel_has(const selset *ss, const char *name) {
        for (size_t i = 0; i < ss->n; i++)
                if (!strcmp(ss->names[i], name))
                        return true;
        return false;
}

/* ---- $filter ---------------------------------------------------------------------- */

enum { N_AND, N_OR, N_EQ, N_STARTS, N_ANY_EQ, N_ANY_STARTS, N_IN };
#define EMU_IN_MAX 15 /* values in one `in (...)` */

typedef struct fnode {
        int t;
        int a, b; /* children for AND/OR */
        char prop[128];
        json_t *lit; /* (owned) */
} fnode;

typedef struct filter {
        fnode n[EMU_FILTER_NODES];
        int nn;
        int depth; /* parentheses, capped */
        int root;
        const char *src;
        const char *p;
        emu_kind kind;
        /* error */
        int status;
        const char *code;
        char msg[400];
} filter;

static void filter_free(filter *f) {
        for (int i = 0; i < f->nn; i++)
                json_decref(f->n[i].lit);
}

static void fsyntax(filter *f) {
        if (f->status)
                return;
        f->status = 400;
        f->code = "BadRequest";
        snprintf(f->msg, sizeof(f->msg), "Invalid filter clause: syntax error at position %d in '%s'.",
                 (int)(f->p - f->src), f->src);
}

static void funsupported_prop(filter *f, const char *prop) {
        if (f->status)
                return;
        f->status = 400;
        f->code = "Request_UnsupportedQuery";
        snprintf(f->msg, sizeof(f->msg),
                 "Unsupported or invalid query filter clause specified for property '%s' of resource '%s'.",
                 prop, emu_kind_name(f->kind));
}

static void funsupported(filter *f) {
        if (f->status)
                return;
        f->status = 400;
        f->code = "Request_UnsupportedQuery";
        snprintf(f->msg, sizeof(f->msg), "Unsupported Query.");
}

static void skipws(filter *f) {
        while (*f->p == ' ')
                f->p++;
}

static bool kw(filter *f, const char *w) {
        skipws(f);
        size_t n = strlen(w);
        if (!strncasecmp(f->p, w, n) && !isalnum((unsigned char)f->p[n]) && f->p[n] != '_') {
                f->p += n;
                return true;
        }
        return false;
}

static bool ch(filter *f, char c) {
        skipws(f);
        if (*f->p == c) {
                f->p++;
                return true;
        }
        return false;
}

static bool ident(filter *f, char *out, size_t cap) {
        skipws(f);
        size_t n = 0;
        while (isalnum((unsigned char)f->p[n]) || f->p[n] == '_' || f->p[n] == '/')
                n++;
        if (!n || n >= cap)
                return false;
        memcpy(out, f->p, n);
        out[n] = 0;
        f->p += n;
        return true;
}

static json_t *literal(filter *f) {
        skipws(f);
        if (*f->p == '\'') {
                f->p++;
                char buf[1024];
                size_t n = 0;
                for (;;) {
                        if (!*f->p)
                                return NULL;
                        if (*f->p == '\'') {
                                if (f->p[1] == '\'') {
                                        if (n < sizeof(buf) - 1)
                                                buf[n++] = '\'';
                                        f->p += 2;
                                        continue;
                                }
                                f->p++;
                                break;
                        }
                        if (n < sizeof(buf) - 1)
                                buf[n++] = *f->p;
                        f->p++;
                }
                buf[n] = 0;
                return json_string(buf);
        }
        if (kw(f, "true"))
                return json_true();
        if (kw(f, "false"))
                return json_false();
        if (kw(f, "null"))
                return json_null();
        return NULL;
}

static int newnode(filter *f, int t) {
        if (f->nn >= EMU_FILTER_NODES) {
                fsyntax(f);
                return -1;
        }
        memset(&f->n[f->nn], 0, sizeof(fnode));
        f->n[f->nn].t = t;
        return f->nn++;
}

static bool is_array_prop(const char *p) {
        return !strcmp(p, "proxyAddresses") || !strcmp(p, "otherMails") || !strcmp(p, "groupTypes") ||
               !strcmp(p, "businessPhones") || !strcmp(p, "imAddresses");
}

static int parse_or(filter *f);

static int parse_primary(filter *f) {
        if (f->status)
                return -1;
        if (ch(f, '(')) {
                if (++f->depth > 16) {
                        fsyntax(f);
                        return -1;
                }
                int x = parse_or(f);
                f->depth--;
                if (x < 0 || !ch(f, ')')) {
                        fsyntax(f);
                        return -1;
                }
                return x;
        }
        if (kw(f, "not")) {
                funsupported(f);
                return -1;
        }
        if (kw(f, "endswith") || kw(f, "contains")) {
                funsupported(f);
                return -1;
        }
        if (kw(f, "startswith")) {
                char prop[64];
                if (!ch(f, '(') || !ident(f, prop, sizeof(prop)) || !ch(f, ',')) {
                        fsyntax(f);
                        return -1;
                }
                json_t *lit = literal(f);
                if (!lit || !ch(f, ')')) {
                        json_decref(lit);
                        fsyntax(f);
                        return -1;
                }
                if (!json_is_string(lit) || !emu_prop_filterable(f->kind, prop) || is_array_prop(prop)) {
                        json_decref(lit);
                        funsupported_prop(f, prop);
                        return -1;
                }
                int x = newnode(f, N_STARTS);
                if (x < 0) {
                        json_decref(lit);
                        return -1;
                }
                snprintf(f->n[x].prop, sizeof(f->n[x].prop), "%s", prop);
                f->n[x].lit = lit;
                return x;
        }
        char prop[128];
        if (!ident(f, prop, sizeof(prop))) {
                fsyntax(f);
                return -1;
        }
        char *slash = strchr(prop, '/');
        if (slash) {
                /* PROP/any(v:v eq 'x') or any(v:startswith(v,'x')) */
                *slash = 0;
                if (strcasecmp(slash + 1, "any") || !ch(f, '(')) {
                        fsyntax(f);
                        return -1;
                }
                char var[32], var2[32];
                if (!ident(f, var, sizeof(var)) || !ch(f, ':')) {
                        fsyntax(f);
                        return -1;
                }
                int t;
                json_t *lit = NULL;
                if (kw(f, "startswith")) {
                        if (!ch(f, '(') || !ident(f, var2, sizeof(var2)) || strcmp(var, var2) ||
                            !ch(f, ',')) {
                                fsyntax(f);
                                return -1;
                        }
                        lit = literal(f);
                        if (!lit || !ch(f, ')')) {
                                json_decref(lit);
                                fsyntax(f);
                                return -1;
                        }
                        t = N_ANY_STARTS;
                } else {
                        if (!ident(f, var2, sizeof(var2)) || strcmp(var, var2) || !kw(f, "eq")) {
                                fsyntax(f);
                                return -1;
                        }
                        lit = literal(f);
                        if (!lit) {
                                fsyntax(f);
                                return -1;
                        }
                        t = N_ANY_EQ;
                }
                if (!ch(f, ')')) {
                        json_decref(lit);
                        fsyntax(f);
                        return -1;
                }
                if (!json_is_string(lit) || !is_array_prop(prop) || !emu_prop_filterable(f->kind, prop)) {
                        json_decref(lit);
                        funsupported_prop(f, prop);
                        return -1;
                }
                int x = newnode(f, t);
                if (x < 0) {
                        json_decref(lit);
                        return -1;
                }
                snprintf(f->n[x].prop, sizeof(f->n[x].prop), "%s", prop);
                f->n[x].lit = lit;
                return x;
        }
        if (kw(f, "in")) {
                /* prop in ('a', 'b', ...) */
                if (!ch(f, '(')) {
                        fsyntax(f);
                        return -1;
                }
                json_t *arr = json_array();
                do {
                        json_t *lit = literal(f);
                        if (!json_is_string(lit)) {
                                json_decref(lit);
                                json_decref(arr);
                                fsyntax(f);
                                return -1;
                        }
                        json_array_append_new(arr, lit);
                } while (ch(f, ','));
                if (!ch(f, ')')) {
                        json_decref(arr);
                        fsyntax(f);
                        return -1;
                }
                if (!emu_prop_filterable(f->kind, prop) || is_array_prop(prop) ||
                    json_array_size(arr) > EMU_IN_MAX) {
                        json_decref(arr);
                        funsupported_prop(f, prop);
                        return -1;
                }
                int x = newnode(f, N_IN);
                if (x < 0) {
                        json_decref(arr);
                        return -1;
                }
                snprintf(f->n[x].prop, sizeof(f->n[x].prop), "%s", prop);
                f->n[x].lit = arr;
                return x;
        }
        if (kw(f, "ne") || kw(f, "gt") || kw(f, "ge") || kw(f, "lt") || kw(f, "le")) {
                if (!emu_prop_filterable(f->kind, prop))
                        funsupported_prop(f, prop);
                else
                        funsupported(f);
                return -1;
        }
        if (!kw(f, "eq")) {
                fsyntax(f);
                return -1;
        }
        json_t *lit = literal(f);
        if (!lit) {
                fsyntax(f);
                return -1;
        }
        if (!emu_prop_filterable(f->kind, prop) || is_array_prop(prop) || json_is_null(lit)) {
                json_decref(lit);
                funsupported_prop(f, prop);
                return -1;
        }
        int x = newnode(f, N_EQ);
        if (x < 0) {
                json_decref(lit);
                return -1;
        }
        snprintf(f->n[x].prop, sizeof(f->n[x].prop), "%s", prop);
        f->n[x].lit = lit;
        return x;
}

static int parse_and(filter *f) {
        int l = parse_primary(f);
        while (l >= 0 && kw(f, "and")) {
                int rr = parse_primary(f);
                if (rr < 0)
                        return -1;
                int x = newnode(f, N_AND);
                if (x < 0)
                        return -1;
                f->n[x].a = l;
                f->n[x].b = rr;
                l = x;
        }
        return l;
}

static int parse_or(filter *f) {
        int l = parse_and(f);
        while (l >= 0 && kw(f, "or")) {
                int rr = parse_and(f);
                if (rr < 0)
                        return -1;
                int x = newnode(f, N_OR);
                if (x < 0)
                        return -1;
                f->n[x].a = l;
                f->n[x].b = rr;
                l = x;
        }
        return l;
}

/* Returns 0 (no filter: f->root = -1), or -1 with r filled. */
static int filter_parse(emu_call *c, emu_resp *r, const char *src, emu_kind kind, filter *f) {
        memset(f, 0, sizeof(*f));
        f->root = -1;
        f->kind = kind;
        if (!src || !*src)
                return 0;
        if (strlen(src) > EMU_FILTER_MAX) {
                ERR(400, "BadRequest", "Invalid filter clause: the filter is too long.");
                return -1;
        }
        f->src = f->p = src;
        f->root = parse_or(f);
        skipws(f);
        if (f->root >= 0 && *f->p)
                fsyntax(f);
        if (f->status) {
                emu_graph_error(r, f->status, f->code, f->msg, c->request_id, c->client_request_id);
                filter_free(f);
                return -1;
        }
        return 0;
}

static bool eval(const filter *f, int i, const emu_obj *o) {
        const fnode *n = &f->n[i];
        switch (n->t) {
        case N_AND:
                return eval(f, n->a, o) && eval(f, n->b, o);
        case N_OR:
                return eval(f, n->a, o) || eval(f, n->b, o);
        default:
                break;
        }
        json_t *v = !strcmp(n->prop, "id") ? NULL : json_object_get(o->props, n->prop);
        const char *sv = !strcmp(n->prop, "id") ? o->id : json_string_value(v);
        const char *lit = json_string_value(n->lit);
        switch (n->t) {
        case N_EQ:
                if (json_is_boolean(n->lit))
                        return json_is_boolean(v) && json_is_true(v) == json_is_true(n->lit);
                return sv && lit && !strcasecmp(sv, lit);
        case N_STARTS:
                return sv && lit && !strncasecmp(sv, lit, strlen(lit));
        case N_IN: {
                size_t k;
                json_t *x;
                json_array_foreach(n->lit, k, x) {
                        if (sv && !strcasecmp(sv, json_string_value(x)))
                                return true;
                }
                return false;
        }
        case N_ANY_EQ:
        case N_ANY_STARTS: {
                size_t k;
                json_t *x;
                json_array_foreach(v, k, x) {
                        const char *s = json_string_value(x);
                        if (!s)
                                continue;
                        if (n->t == N_ANY_EQ ? !strcasecmp(s, lit) : !strncasecmp(s, lit, strlen(lit)))
                                return true;
                }
                return false;
        }
        }
        return false;
}

/* Look one value up in the index of prop; false when prop has none. */
static bool index_lookup(emu_tenant *tn, emu_kind kind, const char *prop, bool any, const char *lit,
                         emu_obj **out) {
        char key[320];
        if (!lit || strlen(lit) >= sizeof(key))
                return false;
        snprintf(key, sizeof(key), "%s", lit);
        if (!any && !strcmp(prop, "id")) {
                *out = emu_obj_find(tn, lit);
                return true;
        }
        if (kind == EMU_USER && !any && !strcmp(prop, "onPremisesImmutableId")) {
                *out = emu_map_get(&tn->immid, lit);
                return true;
        }
        emu_lower(key);
        if (kind == EMU_USER && !any && !strcmp(prop, "userPrincipalName")) {
                *out = emu_map_get(&tn->upn, key);
                return true;
        }
        if (!any && !strcmp(prop, "mail")) {
                *out = emu_map_get(&tn->addr, key);
                return true;
        }
        if (any && !strcmp(prop, "proxyAddresses") && !strncasecmp(key, "smtp:", 5)) {
                *out = emu_map_get(&tn->addr, key + 5);
                return true;
        }
        return false;
}

/* Indices that answer the filter with a few candidates: eq or in on id,
 * userPrincipalName, onPremisesImmutableId, mail, or proxyAddresses/any eq,
 * found in the AND chain from the root. The full filter is still applied to
 * each candidate. Returns true (with *n candidates) when an index was usable. */
static bool index_candidates(emu_tenant *tn, const filter *f, int i, emu_kind kind, emu_obj **out,
                             size_t *n) {
        const fnode *nd = &f->n[i];
        if (nd->t == N_AND)
                return index_candidates(tn, f, nd->a, kind, out, n) ||
                       index_candidates(tn, f, nd->b, kind, out, n);
        *n = 0;
        if (nd->t == N_EQ || nd->t == N_ANY_EQ) {
                emu_obj *o = NULL;
                if (!index_lookup(tn, kind, nd->prop, nd->t == N_ANY_EQ, json_string_value(nd->lit), &o))
                        return false;
                if (o)
                        out[(*n)++] = o;
                return true;
        }
        if (nd->t == N_IN) {
                size_t k;
                json_t *x;
                json_array_foreach(nd->lit, k, x) {
                        emu_obj *o = NULL;
                        if (!index_lookup(tn, kind, nd->prop, false, json_string_value(x), &o))
                                return false;
                        bool dup = false;
                        for (size_t j = 0; j < *n; j++)
                                dup = dup || out[j] == o;
                        if (o && !dup)
                                out[(*n)++] = o;
                }
                return true;
        }
        return false;
}

static int cmp_cseq(const void *a, const void *b) {
        const emu_obj *x = *(emu_obj *const *)a, *y = *(emu_obj *const *)b;
        return x->cseq < y->cseq ? -1 : x->cseq > y->cseq;
}

/* ---- permissions ------------------------------------------------------------------- */

static bool can(const emu_call *c, unsigned any_of) {
        return (c->auth->perms & any_of) != 0;
}

#define P_READ_USERS (EMU_P_USER_READ | EMU_P_USER_RW | EMU_P_DIR_READ | EMU_P_DIR_RW)
#define P_WRITE_USERS (EMU_P_USER_RW | EMU_P_DIR_RW)
#define P_READ_GROUPS                                                                                        \
        (EMU_P_GROUP_READ | EMU_P_GROUP_RW | EMU_P_DIR_READ | EMU_P_DIR_RW | EMU_P_MEMBER_READ |             \
         EMU_P_MEMBER_RW)
#define P_WRITE_GROUPS (EMU_P_GROUP_RW | EMU_P_DIR_RW)
#define P_WRITE_MEMBERS (EMU_P_GROUP_RW | EMU_P_DIR_RW | EMU_P_MEMBER_RW)

static unsigned read_perm(emu_kind k) {
        return k == EMU_USER ? P_READ_USERS : P_READ_GROUPS;
}
static unsigned write_perm(emu_kind k) {
        return k == EMU_USER ? P_WRITE_USERS : P_WRITE_GROUPS;
}

/* ---- shared pieces ----------------------------------------------------------------- */

static const char *coll(emu_kind k) {
        return k == EMU_USER ? "users" : "groups";
}

static void ok_json(emu_resp *r, int status, json_t *body) {
        r->status = status;
        json_decref(r->body);
        r->body = body;
}

static json_t *render_typed(const emu_obj *o, char **sel, size_t nsel) {
        json_t *j = emu_obj_render(o, sel, nsel);
        json_object_set_new(
            j, "@odata.type",
            json_string(o->kind == EMU_USER ? "#microsoft.graph.user" : "#microsoft.graph.group"));
        return j;
}

static int page_size(emu_call *c, emu_resp *r, const req *rq, int *out) {
        const char *t = qget(rq, "$top");
        *out = EMU_PAGE_DEFAULT;
        if (!t) {
                /* Prefer: odata.maxpagesize=N, honoured up to the maximum. */
                if (c->max_page_size > 0) {
                        *out = c->max_page_size > EMU_PAGE_MAX ? EMU_PAGE_MAX : c->max_page_size;
                        char pa[64];
                        snprintf(pa, sizeof(pa), "odata.maxpagesize=%d", *out);
                        emu_resp_header(r, "Preference-Applied", pa);
                }
                return 0;
        }
        char *end;
        long v = strtol(t, &end, 10);
        if (*end || v < 1 || v > EMU_PAGE_MAX) {
                ERR(400, "Request_BadRequest",
                    "Invalid page size specified: '%s'. Must be between 1 and %d inclusive.", t,
                    EMU_PAGE_MAX);
                return -1;
        }
        *out = (int)v;
        return 0;
}

static int reject_unsupported_options(emu_call *c, emu_resp *r, const req *rq) {
        static const char *const unsupported[] = {"$orderby", "$search", "$count",
                                                  "$expand",  "$skip",   "$format"};
        for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
                if (qget(rq, unsupported[i])) {
                        ERR(400, "Request_UnsupportedQuery",
                            "The query option '%s' is not supported by the emulator.", unsupported[i]);
                        return -1;
                }
        }
        return 0;
}

/* Parse "<prefix><number>" skip tokens. */
static int parse_tok(const char *s, char prefix, uint64_t *out) {
        if (!s || s[0] != prefix)
                return -1;
        char *end;
        unsigned long long v = strtoull(s + 1, &end, 10);
        if (*end)
                return -1;
        *out = v;
        return 0;
}

/* ---- collections ----------------------------------------------------------------- */

static void list_objects(emu_call *c, emu_resp *r, emu_tenant *tn, const req *rq, emu_kind kind, bool deleted,
                         const char *path, const char *ctx) {
        selset ss;
        filter f;
        int top;
        if (reject_unsupported_options(c, r, rq) || page_size(c, r, rq, &top))
                return;
        if (parse_select(c, r, rq, kind, &ss))
                return;
        if (filter_parse(c, r, qget(rq, "$filter"), kind, &f)) {
                free(ss.buf);
                return;
        }
        uint64_t start = 0;
        const char *st = qget(rq, "$skiptoken");
        if (st && parse_tok(st, 'c', &start)) {
                ERR(400, "Request_BadRequest", "Invalid skip token '%s'.", st);
                goto out;
        }
        json_t *val = json_array();
        char *next = NULL;
        emu_obj *cands[EMU_IN_MAX + 1];
        size_t nc = 0;
        if (!deleted && f.root >= 0 && tn && index_candidates(tn, &f, f.root, kind, cands, &nc)) {
                qsort(cands, nc, sizeof(cands[0]), cmp_cseq);
                for (size_t i = 0; i < nc; i++) {
                        emu_obj *o = cands[i];
                        if (o->kind != kind || o->state != EMU_LIVE || !emu_obj_is_visible(c->srv, o) ||
                            o->cseq < start || !eval(&f, f.root, o))
                                continue;
                        if ((int)json_array_size(val) == top) {
                                char tok[32];
                                snprintf(tok, sizeof(tok), "c%llu", (unsigned long long)o->cseq);
                                next = make_link(c, rq, path, "$skiptoken", tok);
                                break;
                        }
                        json_array_append_new(val, emu_obj_render(o, ss.names, ss.n));
                }
        } else if (tn) {
                emu_seqvec *sv = &tn->list[kind];
                size_t i = emu_seqvec_lower(sv, start);
                for (; i < sv->len; i++) {
                        emu_obj *o = sv->val[i];
                        if (!o || o->state != (deleted ? EMU_DELETED : EMU_LIVE) ||
                            !emu_obj_is_visible(c->srv, o))
                                continue;
                        if (f.root >= 0 && !eval(&f, f.root, o))
                                continue;
                        if ((int)json_array_size(val) == top) {
                                char tok[32];
                                snprintf(tok, sizeof(tok), "c%llu", (unsigned long long)o->cseq);
                                next = make_link(c, rq, path, "$skiptoken", tok);
                                break;
                        }
                        json_t *j =
                            deleted ? render_typed(o, ss.names, ss.n) : emu_obj_render(o, ss.names, ss.n);
                        if (deleted && !ss.n)
                                json_object_set(j, "deletedDateTime",
                                                json_object_get(o->props, "deletedDateTime"));
                        json_array_append_new(val, j);
                }
        }
        char cx[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#%s", c->base, c->version, ctx);
        json_t *body = json_pack("{s:s}", "@odata.context", cx);
        if (next)
                json_object_set_new(body, "@odata.nextLink", json_string(next));
        json_object_set_new(body, "value", val);
        free(next);
        ok_json(r, 200, body);
out:
        filter_free(&f);
        free(ss.buf);
}

static void get_object(emu_call *c, emu_resp *r, emu_obj *o, const req *rq) {
        selset ss;
        if (parse_select(c, r, rq, o->kind, &ss))
                return;
        json_t *j = emu_obj_render(o, ss.names, ss.n);
        char cx[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#%s/$entity", c->base, c->version, coll(o->kind));
        json_object_set_new(j, "@odata.context", json_string(cx));
        free(ss.buf);
        ok_json(r, 200, j);
}

/* Parse an @odata.id / @odata.bind URL to an object id. */
static const char *ref_id(const char *url, char out[64]) {
        if (!url)
                return NULL;
        const char *last = strrchr(url, '/');
        if (!last || !last[1] || strlen(last + 1) >= 64)
                return NULL;
        /* The segment before must name a collection of directory objects. */
        const char *p = last;
        while (p > url && p[-1] != '/')
                p--;
        size_t sl = (size_t)(last - p);
        if (!((sl == 16 && !strncmp(p, "directoryObjects", 16)) || (sl == 5 && !strncmp(p, "users", 5)) ||
              (sl == 6 && !strncmp(p, "groups", 6))))
                return NULL;
        snprintf(out, 64, "%s", last + 1);
        /* directoryObjects('id') form */
        return out;
}

/* Resolve and validate member binds; fills ms[] and returns count, or -1
 * with r filled. */
static int resolve_binds(emu_call *c, emu_resp *r, emu_tenant *tn, json_t *binds, emu_obj *g, emu_obj **ms) {
        if (!json_is_array(binds)) {
                ERR(400, "Request_BadRequest",
                    "Invalid value for 'members@odata.bind': an array of URLs is expected.");
                return -1;
        }
        if (json_array_size(binds) > EMU_BIND_MAX) {
                ERR(400, "Request_BadRequest",
                    "The request exceeds the limit of %d object references that can be added in one request.",
                    EMU_BIND_MAX);
                return -1;
        }
        size_t i;
        json_t *v;
        int n = 0;
        json_array_foreach(binds, i, v) {
                char id[64];
                if (!ref_id(json_string_value(v), id)) {
                        ERR(400, "Request_BadRequest",
                            "Invalid URL format specified in @odata.bind for members");
                        return -1;
                }
                emu_obj *m = tn ? emu_obj_find(tn, id) : NULL;
                if (!m || m->state != EMU_LIVE || !emu_obj_is_visible(c->srv, m)) {
                        not_found(c, r, id);
                        return -1;
                }
                if (m == g) {
                        ERR(400, "Request_BadRequest", "A group cannot be a member of itself.");
                        return -1;
                }
                for (int k = 0; k < n; k++) {
                        if (ms[k] == m) {
                                ERR(400, "Request_BadRequest",
                                    "One or more added object references already exist for the following "
                                    "modified "
                                    "properties: 'members'.");
                                return -1;
                        }
                }
                if (g && emu_member_has(g, m)) {
                        ERR(400, "Request_BadRequest",
                            "One or more added object references already exist for the following modified "
                            "properties: "
                            "'members'.");
                        return -1;
                }
                ms[n++] = m;
        }
        return n;
}

static bool body_ok(emu_call *c, emu_resp *r) {
        if (c->body_invalid || !json_is_object(c->body)) {
                ERR(400, "BadRequest",
                    "Unable to read JSON request payload. Please ensure Content-Type header is set and "
                    "payload is of "
                    "valid JSON format.");
                return false;
        }
        return true;
}

static void create_object(emu_call *c, emu_resp *r, emu_tenant *tn, emu_kind kind) {
        if (!body_ok(c, r))
                return;
        emu_obj *ms[EMU_BIND_MAX];
        int nm = 0;
        json_t *binds = json_object_get(c->body, "members@odata.bind");
        const char *k;
        json_t *v;
        json_object_foreach(c->body, k, v) {
                if (strstr(k, "@odata.bind") && (kind == EMU_USER || (strcmp(k, "members@odata.bind") &&
                                                                      strcmp(k, "owners@odata.bind")))) {
                        ERR(400, "Request_BadRequest",
                            "Property '%s' does not exist as a declared property or extension property.", k);
                        return;
                }
        }
        if (kind == EMU_GROUP && binds && (nm = resolve_binds(c, r, tn, binds, NULL, ms)) < 0)
                return;
        json_t *owners = json_object_get(c->body, "owners@odata.bind");
        if (kind == EMU_GROUP && owners) {
                emu_obj *os[EMU_BIND_MAX];
                if (resolve_binds(c, r, tn, owners, NULL, os) < 0)
                        return;
        }
        emu_err e;
        emu_obj *o = emu_obj_create(c->srv, tn, kind, c->body, &e);
        if (!o) {
                emu_graph_error_details(r, &e, c->request_id, c->client_request_id);
                return;
        }
        for (int i = 0; i < nm; i++)
                emu_member_add(tn, o, ms[i]);
        json_t *j = emu_obj_render(o, NULL, 0);
        char cx[512], loc[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#%s/$entity", c->base, c->version, coll(kind));
        snprintf(loc, sizeof(loc), "%s/%s/directoryObjects/%s/Microsoft.DirectoryServices.%s", c->base,
                 c->version, o->id, emu_kind_name(kind));
        json_object_set_new(j, "@odata.context", json_string(cx));
        emu_resp_header(r, "Location", loc);
        ok_json(r, 201, j);
}

static void update_object(emu_call *c, emu_resp *r, emu_tenant *tn, emu_obj *o) {
        if (!body_ok(c, r))
                return;
        emu_obj *ms[EMU_BIND_MAX];
        int nm = 0;
        const char *k;
        json_t *v;
        json_object_foreach(c->body, k, v) {
                if (strstr(k, "@odata.bind") && (o->kind == EMU_USER || strcmp(k, "members@odata.bind"))) {
                        ERR(400, "Request_BadRequest",
                            "Property '%s' does not exist as a declared property or extension property.", k);
                        return;
                }
        }
        json_t *binds = json_object_get(c->body, "members@odata.bind");
        if (o->kind == EMU_GROUP && binds && (nm = resolve_binds(c, r, tn, binds, o, ms)) < 0)
                return;
        emu_err e;
        if (emu_obj_update(c->srv, tn, o, c->body, &e)) {
                emu_graph_error_details(r, &e, c->request_id, c->client_request_id);
                return;
        }
        for (int i = 0; i < nm; i++)
                emu_member_add(tn, o, ms[i]);
        r->status = 204;
}

/* ---- members --------------------------------------------------------------------- */

static void list_members(emu_call *c, emu_resp *r, const req *rq, emu_obj *g, const char *path) {
        int top;
        if (reject_unsupported_options(c, r, rq) || page_size(c, r, rq, &top))
                return;
        if (qget(rq, "$filter")) {
                ERR(400, "Request_UnsupportedQuery", "Filter on members requires advanced query parameters.");
                return;
        }
        selset ss;
        if (parse_select(c, r, rq, EMU_USER, &ss))
                return;
        uint64_t start = 0;
        const char *st = qget(rq, "$skiptoken");
        if (st && parse_tok(st, 'm', &start)) {
                ERR(400, "Request_BadRequest", "Invalid skip token '%s'.", st);
                free(ss.buf);
                return;
        }
        json_t *val = json_array();
        char *next = NULL;
        for (size_t i = emu_seqvec_lower(&g->mvec, start); i < g->mvec.len; i++) {
                emu_obj *m = g->mvec.val[i];
                if (!m || m->state != EMU_LIVE)
                        continue;
                if ((int)json_array_size(val) == top) {
                        char tok[32];
                        snprintf(tok, sizeof(tok), "m%llu", (unsigned long long)g->mvec.seq[i]);
                        next = make_link(c, rq, path, "$skiptoken", tok);
                        break;
                }
                /* $select names are checked against users; groups take the
                 * ones they know. */
                char *sel[EMU_SELECT_MAX];
                size_t ns = 0;
                for (size_t k = 0; k < ss.n; k++)
                        if (emu_prop_known(m->kind, ss.names[k]))
                                sel[ns++] = ss.names[k];
                json_array_append_new(val, render_typed(m, ss.n ? sel : NULL, ss.n ? (ns ? ns : 0) : 0));
        }
        char cx[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#directoryObjects", c->base, c->version);
        json_t *body = json_pack("{s:s}", "@odata.context", cx);
        if (next)
                json_object_set_new(body, "@odata.nextLink", json_string(next));
        json_object_set_new(body, "value", val);
        free(next);
        free(ss.buf);
        ok_json(r, 200, body);
}

static void add_member_ref(emu_call *c, emu_resp *r, emu_tenant *tn, emu_obj *g) {
        if (!body_ok(c, r))
                return;
        char id[64];
        if (!ref_id(json_string_value(json_object_get(c->body, "@odata.id")), id)) {
                ERR(400, "Request_BadRequest", "Invalid URL format specified in @odata.id for members");
                return;
        }
        emu_obj *m = emu_obj_find(tn, id);
        if (!m || m->state != EMU_LIVE || !emu_obj_is_visible(c->srv, m)) {
                not_found(c, r, id);
                return;
        }
        if (m == g) {
                ERR(400, "Request_BadRequest", "A group cannot be a member of itself.");
                return;
        }
        int rc = emu_member_add(tn, g, m);
        if (rc == 1) {
                ERR(400, "Request_BadRequest",
                    "One or more added object references already exist for the following modified "
                    "properties: "
                    "'members'.");
                return;
        }
        if (rc < 0) {
                ERR(500, "UnknownError", "out of memory");
                return;
        }
        r->status = 204;
}

static void remove_member_ref(emu_call *c, emu_resp *r, emu_tenant *tn, emu_obj *g, const char *mid) {
        emu_obj *m = emu_obj_find(tn, mid);
        if (!m || m->state == EMU_PURGED) {
                not_found(c, r, mid);
                return;
        }
        if (emu_member_remove(tn, g, m)) {
                ERR(404, "Request_ResourceNotFound",
                    "One or more removed object references do not exist for the following modified "
                    "properties: "
                    "'members'.");
                return;
        }
        r->status = 204;
}

/* ---- delta ---------------------------------------------------------------------------- */

static int cmp_chg(const void *a, const void *b) {
        const emu_obj *x = *(emu_obj *const *)a, *y = *(emu_obj *const *)b;
        return x->chg < y->chg ? -1 : x->chg > y->chg;
}

static json_t *members_delta(emu_obj *g, uint64_t since, uint64_t upto) {
        json_t *arr = json_array();
        if (since == 0) {
                for (size_t i = 0; i < g->mvec.len; i++) {
                        emu_obj *m = g->mvec.val[i];
                        /* Like the members list: soft-deleted members are not shown. */
                        if (m && m->state == EMU_LIVE && g->mvec.seq[i] <= upto)
                                json_array_append_new(arr, json_pack("{s:s, s:s}", "@odata.type",
                                                                     m->kind == EMU_USER
                                                                         ? "#microsoft.graph.user"
                                                                         : "#microsoft.graph.group",
                                                                     "id", m->id));
                }
                return arr;
        }
        /* Last event per member within (since, upto]. */
        emu_map last = {0};
        size_t lo = 0, hi = g->mloglen;
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (g->mlog[mid].seq <= since)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (size_t i = lo; i < g->mloglen && g->mlog[i].seq <= upto; i++)
                emu_map_put(&last, g->mlog[i].member->id, &g->mlog[i]);
        for (size_t i = lo; i < g->mloglen && g->mlog[i].seq <= upto; i++) {
                emu_member_ev *ev = &g->mlog[i];
                if (emu_map_get(&last, ev->member->id) != ev)
                        continue;
                json_t *j = json_pack("{s:s, s:s}", "@odata.type",
                                      ev->member->kind == EMU_USER ? "#microsoft.graph.user"
                                                                   : "#microsoft.graph.group",
                                      "id", ev->member->id);
                if (ev->removed)
                        json_object_set_new(j, "@removed", json_pack("{s:s}", "reason", "deleted"));
                json_array_append_new(arr, j);
        }
        emu_map_clear(&last);
        return arr;
}

static void delta(emu_call *c, emu_resp *r, emu_tenant *tn, const req *rq, emu_kind kind, const char *path) {
        selset ss;
        int top;
        if (page_size(c, r, rq, &top))
                return;
        if (qget(rq, "$filter")) {
                ERR(400, "Request_UnsupportedQuery", "The emulator supports no $filter on delta queries.");
                return;
        }
        if (parse_select(c, r, rq, kind, &ss))
                return;
        uint64_t since = 0, upto = tn ? tn->seq : 0, cursor = 0;
        const char *dt = qget(rq, "$deltatoken"), *st = qget(rq, "$skiptoken");
        if (dt && !strcmp(dt, "latest")) {
                /* No changes, only a delta link for what comes next. */
                char tok[32];
                snprintf(tok, sizeof(tok), "%llu", (unsigned long long)upto);
                char *link = make_link(c, rq, path, "$deltatoken", tok);
                char cx[512];
                snprintf(cx, sizeof(cx), "%s/%s/$metadata#%s", c->base, c->version, coll(kind));
                ok_json(
                    r, 200,
                    json_pack("{s:s, s:s, s:[]}", "@odata.context", cx, "@odata.deltaLink", link, "value"));
                free(link);
                free(ss.buf);
                return;
        }
        if (dt) {
                char *end;
                since = strtoull(dt, &end, 10);
                if (*end || since > upto) {
                        ERR(400, "Request_BadRequest", "Invalid delta token.");
                        free(ss.buf);
                        return;
                }
        } else if (st) {
                unsigned long long a, b, d;
                if (sscanf(st, "d%llu.%llu.%llu", &a, &b, &d) != 3 || b > upto) {
                        ERR(400, "Request_BadRequest", "Invalid skip token '%s'.", st);
                        free(ss.buf);
                        return;
                }
                since = a;
                upto = b;
                cursor = d;
        }
        bool with_members = kind == EMU_GROUP && (!ss.n || sel_has(&ss, "members"));
        size_t n = 0;
        emu_obj **hits = NULL;
        if (tn) {
                hits = malloc((tn->byid.n + 1) * sizeof(*hits));
                size_t it = 0;
                const char *k;
                void *v;
                uint64_t lo = since > cursor ? since : cursor;
                while (hits && emu_map_next(&tn->byid, &it, &k, &v)) {
                        emu_obj *o = v;
                        if (o->kind != kind || o->chg <= lo || o->chg > upto)
                                continue;
                        if (since == 0 && o->state != EMU_LIVE)
                                continue;
                        hits[n++] = o;
                }
                if (hits)
                        qsort(hits, n, sizeof(*hits), cmp_chg);
        }
        json_t *val = json_array();
        size_t i = 0;
        for (; i < n && (int)i < top; i++) {
                emu_obj *o = hits[i];
                json_t *j;
                if (o->state != EMU_LIVE) {
                        j = json_pack("{s:s, s:{s:s}}", "id", o->id, "@removed", "reason",
                                      o->state == EMU_DELETED ? "changed" : "deleted");
                } else {
                        j = emu_obj_render(o, ss.names, ss.n);
                        if (with_members)
                                json_object_set_new(j, "members@delta", members_delta(o, since, upto));
                }
                json_array_append_new(val, j);
        }
        char tok[96], *link;
        const char *lk;
        if (i < n) {
                snprintf(tok, sizeof(tok), "d%llu.%llu.%llu", (unsigned long long)since,
                         (unsigned long long)upto, (unsigned long long)hits[i - 1]->chg);
                link = make_link(c, rq, path, "$skiptoken", tok);
                lk = "@odata.nextLink";
        } else {
                snprintf(tok, sizeof(tok), "%llu", (unsigned long long)upto);
                link = make_link(c, rq, path, "$deltatoken", tok);
                lk = "@odata.deltaLink";
        }
        free(hits);
        char cx[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#%s", c->base, c->version, coll(kind));
        json_t *body = json_pack("{s:s, s:s, s:o}", "@odata.context", cx, lk, link, "value", val);
        free(link);
        free(ss.buf);
        ok_json(r, 200, body);
}

/* ---- domains and organization --------------------------------------------------------- */

static void domains(emu_call *c, emu_resp *r, const char *one) {
        json_t *val = json_array();
        emu_server *srv = c->srv;
        for (size_t i = 0; i < srv->ndomains; i++) {
                if (one && strcasecmp(one, srv->domains[i]))
                        continue;
                json_t *d = json_pack(
                    "{s:s, s:s, s:b, s:b, s:b, s:b, s:b, s:[s,s], s:i, s:i}", "id", srv->domains[i],
                    "authenticationType", "Managed", "isAdminManaged", true, "isDefault", i == 0, "isInitial",
                    strstr(srv->domains[i], ".onmicrosoft.com") != NULL, "isRoot", true, "isVerified", true,
                    "supportedServices", "Email", "OfficeCommunicationsOnline",
                    "passwordValidityPeriodInDays", 2147483647, "passwordNotificationWindowInDays", 14);
                if (one) {
                        char cx[512];
                        snprintf(cx, sizeof(cx), "%s/%s/$metadata#domains/$entity", c->base, c->version);
                        json_object_set_new(d, "@odata.context", json_string(cx));
                        json_decref(val);
                        ok_json(r, 200, d);
                        return;
                }
                json_array_append_new(val, d);
        }
        if (one) {
                json_decref(val);
                not_found(c, r, one);
                return;
        }
        char cx[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#domains", c->base, c->version);
        ok_json(r, 200, json_pack("{s:s, s:o}", "@odata.context", cx, "value", val));
}

static void organization(emu_call *c, emu_resp *r) {
        emu_server *srv = c->srv;
        json_t *vd = json_array();
        for (size_t i = 0; i < srv->ndomains; i++)
                json_array_append_new(vd, json_pack("{s:s, s:s, s:b, s:b, s:s}", "name", srv->domains[i],
                                                    "type", "Managed", "isDefault", i == 0, "isInitial",
                                                    strstr(srv->domains[i], ".onmicrosoft.com") != NULL,
                                                    "capabilities", "Email, OfficeCommunicationsOnline"));
        char cx[512];
        snprintf(cx, sizeof(cx), "%s/%s/$metadata#organization", c->base, c->version);
        json_t *org = json_pack("{s:s, s:s, s:s, s:s, s:n, s:o, s:[], s:s}", "id", c->auth->tid,
                                "displayName", "Canopy Graph Emulator", "tenantType", "AAD",
                                "countryLetterCode", "US", "onPremisesSyncEnabled", "verifiedDomains", vd,
                                "businessPhones", "preferredLanguage", "en");
        ok_json(r, 200, json_pack("{s:s, s:[o]}", "@odata.context", cx, "value", org));
}

/* ---- routing ---------------------------------------------------------------------------- */

static bool is_delta(const char *s) {
        return !strcmp(s, "delta") || !strcmp(s, "delta()") || !strcmp(s, "microsoft.graph.delta") ||
               !strcmp(s, "microsoft.graph.delta()");
}

static void method_not_allowed(emu_call *c, emu_resp *r) {
        ERR(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request uri.");
}

/* Classify a request for stats and write accounting. */
static const char *path_kind(const req *rq, bool *write, const char *method) {
        *write = strcmp(method, "GET") && strcmp(method, "HEAD");
        if (rq->nseg == 0)
                return "other";
        const char *s0 = rq->seg[0];
        if (!strcmp(s0, "users") || !strcmp(s0, "groups")) {
                if (rq->nseg >= 2 && is_delta(rq->seg[1]))
                        return "delta";
                if (rq->nseg >= 3 && (!strcmp(rq->seg[2], "members") || !strcmp(rq->seg[2], "memberOf")))
                        return "members";
                return s0;
        }
        if (!strcmp(s0, "directory"))
                return "deletedItems";
        if (!strcmp(s0, "directoryObjects"))
                return "directoryObjects";
        if (!strcmp(s0, "domains"))
                return "domains";
        if (!strcmp(s0, "organization"))
                return "organization";
        return "other";
}

static void route(emu_call *c, emu_resp *r, req *rq) {
        emu_server *srv = c->srv;
        const char *m = c->method;
        bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST"), patch = !strcmp(m, "PATCH"),
             del = !strcmp(m, "DELETE");
        emu_tenant *tn = emu_tenant_get(srv, c->auth->tid, !get);
        int ns = rq->nseg;
        char **s = rq->seg;
        if (ns == 0) {
                ERR(400, "BadRequest", "Invalid version.");
                return;
        }
        if (!strcmp(s[0], "users") || !strcmp(s[0], "groups")) {
                emu_kind kind = !strcmp(s[0], "users") ? EMU_USER : EMU_GROUP;
                if (ns == 1) {
                        if (get) {
                                if (!can(c, read_perm(kind)))
                                        return forbidden(c, r);
                                return list_objects(c, r, tn, rq, kind, false, rq->path, coll(kind));
                        }
                        if (post) {
                                if (!can(c, write_perm(kind)))
                                        return forbidden(c, r);
                                return create_object(c, r, tn, kind);
                        }
                        return method_not_allowed(c, r);
                }
                if (is_delta(s[1]) && ns == 2) {
                        if (!get)
                                return method_not_allowed(c, r);
                        if (!can(c, read_perm(kind)))
                                return forbidden(c, r);
                        return delta(c, r, tn, rq, kind, rq->path);
                }
                if (kind == EMU_GROUP && !emu_is_guid(s[1])) {
                        ERR(400, "Request_BadRequest", "Invalid object identifier '%s'.", s[1]);
                        return;
                }
                emu_obj *o = tn ? emu_obj_visible(srv, tn, s[1], kind) : NULL;
                if (ns == 2) {
                        if (!(get || patch || del))
                                return method_not_allowed(c, r);
                        if (!can(c, get ? read_perm(kind) : write_perm(kind)))
                                return forbidden(c, r);
                        if (!o)
                                return not_found(c, r, s[1]);
                        if (get)
                                return get_object(c, r, o, rq);
                        if (patch)
                                return update_object(c, r, tn, o);
                        emu_obj_soft_delete(tn, o);
                        emu_stats_add(srv, &srv->stats.deletes);
                        r->status = 204;
                        return;
                }
                if (!strcmp(s[2], "memberOf") && ns == 3) {
                        if (!get)
                                return method_not_allowed(c, r);
                        if (!can(c, read_perm(kind)))
                                return forbidden(c, r);
                        if (!o)
                                return not_found(c, r, s[1]);
                        json_t *val = json_array();
                        size_t it = 0;
                        const char *k;
                        void *v;
                        while (emu_map_next(&o->memberof, &it, &k, &v)) {
                                emu_obj *g = v;
                                if (g->state == EMU_LIVE)
                                        json_array_append_new(val, render_typed(g, NULL, 0));
                        }
                        char cx[512];
                        snprintf(cx, sizeof(cx), "%s/%s/$metadata#directoryObjects", c->base, c->version);
                        return ok_json(r, 200, json_pack("{s:s, s:o}", "@odata.context", cx, "value", val));
                }
                if (kind == EMU_GROUP && !strcmp(s[2], "members")) {
                        if (ns == 3) {
                                if (!get)
                                        return method_not_allowed(c, r);
                                if (!can(c, P_READ_GROUPS))
                                        return forbidden(c, r);
                                if (!o)
                                        return not_found(c, r, s[1]);
                                return list_members(c, r, rq, o, rq->path);
                        }
                        if (ns == 4 && !strcmp(s[3], "$ref")) {
                                if (!(post || del))
                                        return method_not_allowed(c, r);
                                if (!can(c, P_WRITE_MEMBERS))
                                        return forbidden(c, r);
                                if (!o)
                                        return not_found(c, r, s[1]);
                                if (post)
                                        return add_member_ref(c, r, tn, o);
                                /* DELETE .../members/$ref?$id=URL */
                                char id[64];
                                if (!ref_id(qget(rq, "$id"), id)) {
                                        ERR(400, "Request_BadRequest", "Invalid $id.");
                                        return;
                                }
                                return remove_member_ref(c, r, tn, o, id);
                        }
                        if (ns == 5 && !strcmp(s[4], "$ref")) {
                                if (!del)
                                        return method_not_allowed(c, r);
                                if (!can(c, P_WRITE_MEMBERS))
                                        return forbidden(c, r);
                                if (!o)
                                        return not_found(c, r, s[1]);
                                return remove_member_ref(c, r, tn, o, s[3]);
                        }
                }
                ERR(400, "BadRequest", "Resource not found for the segment '%s'.", s[ns - 1]);
                return;
        }
        if (!strcmp(s[0], "directoryObjects") && ns == 2) {
                if (!get)
                        return method_not_allowed(c, r);
                emu_obj *o = tn ? emu_obj_find(tn, s[1]) : NULL;
                if (!o || o->state != EMU_LIVE || !emu_obj_is_visible(srv, o))
                        return not_found(c, r, s[1]);
                if (!can(c, read_perm(o->kind)))
                        return forbidden(c, r);
                return ok_json(r, 200, render_typed(o, NULL, 0));
        }
        if (!strcmp(s[0], "directory") && ns >= 3 && !strcmp(s[1], "deletedItems")) {
                const char *t = s[2];
                if (ns == 3 && (!strcmp(t, "microsoft.graph.user") || !strcmp(t, "microsoft.graph.group"))) {
                        emu_kind kind = !strcmp(t, "microsoft.graph.user") ? EMU_USER : EMU_GROUP;
                        if (!get)
                                return method_not_allowed(c, r);
                        if (!can(c, read_perm(kind)))
                                return forbidden(c, r);
                        return list_objects(c, r, tn, rq, kind, true, rq->path,
                                            kind == EMU_USER ? "directoryObjects/microsoft.graph.user"
                                                             : "directoryObjects/microsoft.graph.group");
                }
                emu_obj *o = tn ? emu_obj_find(tn, t) : NULL;
                if (o && o->state != EMU_DELETED)
                        o = NULL;
                if (ns == 3) {
                        if (!(get || del))
                                return method_not_allowed(c, r);
                        unsigned need =
                            o ? (get ? read_perm(o->kind) : write_perm(o->kind))
                              : (get ? P_READ_USERS | P_READ_GROUPS : P_WRITE_USERS | P_WRITE_GROUPS);
                        if (!can(c, need))
                                return forbidden(c, r);
                        if (!o)
                                return not_found(c, r, t);
                        if (get) {
                                json_t *j = render_typed(o, NULL, 0);
                                json_object_set(j, "deletedDateTime",
                                                json_object_get(o->props, "deletedDateTime"));
                                return ok_json(r, 200, j);
                        }
                        emu_obj_purge(tn, o);
                        emu_stats_add(srv, &srv->stats.deletes);
                        r->status = 204;
                        return;
                }
                if (ns == 4 && (!strcmp(s[3], "restore") || !strcmp(s[3], "microsoft.graph.restore"))) {
                        if (!post)
                                return method_not_allowed(c, r);
                        if (!can(c, o ? write_perm(o->kind) : P_WRITE_USERS | P_WRITE_GROUPS))
                                return forbidden(c, r);
                        if (!o)
                                return not_found(c, r, t);
                        emu_err e;
                        if (emu_obj_restore(tn, o, &e)) {
                                emu_graph_error_details(r, &e, c->request_id, c->client_request_id);
                                return;
                        }
                        json_t *j = render_typed(o, NULL, 0);
                        char cx[512];
                        snprintf(cx, sizeof(cx), "%s/%s/$metadata#directoryObjects/$entity", c->base,
                                 c->version);
                        json_object_set_new(j, "@odata.context", json_string(cx));
                        return ok_json(r, 200, j);
                }
                ERR(400, "BadRequest", "Resource not found for the segment '%s'.", s[ns - 1]);
                return;
        }
        if (!strcmp(s[0], "domains") && ns <= 2) {
                if (!get)
                        return method_not_allowed(c, r);
                if (!can(c, EMU_P_DOMAIN_READ | EMU_P_DIR_READ))
                        return forbidden(c, r);
                return domains(c, r, ns == 2 ? s[1] : NULL);
        }
        if (!strcmp(s[0], "organization") && ns == 1) {
                if (!get)
                        return method_not_allowed(c, r);
                if (!can(c, EMU_P_ORG_READ | EMU_P_DIR_READ | P_READ_USERS))
                        return forbidden(c, r);
                return organization(c, r);
        }
        ERR(400, "BadRequest", "Resource not found for the segment '%s'.", s[0]);
}

/* ---- throttling and faults ------------------------------------------------------------- */

typedef struct bucket {
        double tokens;
        int64_t last_ms;
} bucket;

static void retry_after(emu_server *srv, emu_resp *r, double secs, emu_retry_form form) {
        char buf[64];
        if (secs < 0.001)
                secs = 0.001;
        switch (form) {
        case EMU_RA_DECIMAL:
                snprintf(buf, sizeof(buf), "%.3f", secs);
                break;
        case EMU_RA_DATE: {
                time_t t = time(NULL) + (time_t)ceil(secs);
                struct tm tm;
                gmtime_r(&t, &tm);
                strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
                break;
        }
        default:
                snprintf(buf, sizeof(buf), "%d", (int)ceil(secs));
                break;
        }
        emu_resp_header(r, "Retry-After", buf);
        (void)srv;
}

/* Take one write token; returns 0 or the seconds until one is available. */
static double bucket_take(emu_server *srv, const emu_auth *a) {
        double wait = 0;
        pthread_mutex_lock(&srv->mu);
        double rate = srv->faults.write_rate, burst = srv->faults.write_burst;
        if (rate > 0) {
                if (burst < 1)
                        burst = rate < 1 ? 1 : rate;
                char key[160];
                snprintf(key, sizeof(key), "%s/%s", a->tid, a->appid);
                bucket *b = emu_map_get(&srv->buckets, key);
                int64_t now = emu_now_ms();
                if (!b) {
                        b = calloc(1, sizeof(*b));
                        if (b) {
                                b->tokens = burst;
                                b->last_ms = now;
                                emu_map_put(&srv->buckets, key, b);
                        }
                }
                if (b) {
                        b->tokens += (double)(now - b->last_ms) / 1000.0 * rate;
                        if (b->tokens > burst)
                                b->tokens = burst;
                        b->last_ms = now;
                        if (b->tokens >= 1)
                                b->tokens -= 1;
                        else
                                wait = (1 - b->tokens) / rate;
                }
        }
        pthread_mutex_unlock(&srv->mu);
        return wait;
}

/* Roll the dice for an injected fault. Returns the status or 0. */
static int fault_pick(emu_server *srv, emu_retry_form *form) {
        pthread_mutex_lock(&srv->mu);
        emu_faults f = srv->faults;
        if (srv->faults.fail_next > 0)
                srv->faults.fail_next--;
        pthread_mutex_unlock(&srv->mu);
        *form = f.retry_after;
        if (f.fail_next > 0)
                return f.fail_status;
        double x = emu_rand01(), acc = 0;
        if (x < (acc += f.rate429))
                return 429;
        if (x < (acc += f.rate500))
                return 500;
        if (x < (acc += f.rate503))
                return 503;
        if (x < (acc += f.rate504))
                return 504;
        return 0;
}

void emu_graph_exec(emu_call *c, emu_resp *r) {
        emu_server *srv = c->srv;
        req rq;
        bool write = false;
        const char *kind = "other";
        if (req_parse(c->url, &rq)) {
                ERR(400, "BadRequest", "Invalid request URL.");
                goto out;
        }
        kind = path_kind(&rq, &write, c->method);
        if (write)
                emu_stats_add(srv, &srv->stats.writes);

        emu_retry_form form;
        int fault = fault_pick(srv, &form);
        if (fault) {
                emu_stats_add(srv, &srv->stats.faults);
                if (fault == 429) {
                        emu_stats_add(srv, &srv->stats.throttled);
                        ERR(429, "TooManyRequests",
                            "Too many requests. Please retry after the time given in Retry-After.");
                        retry_after(srv, r, 1 + emu_rand01() * 2, form);
                } else if (fault == 500) {
                        ERR(500, "UnknownError", "An internal server error occurred (injected).");
                } else if (fault == 401) {
                        ERR(401, "InvalidAuthenticationToken", "Access token validation failure (injected).");
                } else if (fault == 403) {
                        forbidden(c, r);
                } else if (fault == 503) {
                        ERR(503, "ServiceUnavailable", "The service is temporarily unavailable (injected).");
                        retry_after(srv, r, 1 + emu_rand01() * 2, form);
                } else {
                        ERR(504, "GatewayTimeout", "The gateway timed out (injected).");
                }
                goto out;
        }
        if (write) {
                double wait = bucket_take(srv, c->auth);
                if (wait > 0) {
                        emu_stats_add(srv, &srv->stats.throttled);
                        ERR(429, "TooManyRequests",
                            "Too many requests. The application's write budget for this tenant is exhausted; "
                            "retry "
                            "after the time given in Retry-After.");
                        pthread_mutex_lock(&srv->mu);
                        emu_retry_form f = srv->faults.retry_after;
                        pthread_mutex_unlock(&srv->mu);
                        retry_after(srv, r, wait, f);
                        goto out;
                }
        }
        if (write)
                pthread_rwlock_wrlock(&srv->lock);
        else
                pthread_rwlock_rdlock(&srv->lock);
        /* A read on a tenant seen for the first time must not create it under
         * a read lock: route() only creates on writes. */
        route(c, r, &rq);
        pthread_rwlock_unlock(&srv->lock);
out:
        finish_error(c, r);
        emu_stats_count(srv, c->method, kind, r->status);
        req_free(&rq);
}

/* ---- $batch --------------------------------------------------------------------------- */

typedef struct bitem {
        json_t *req;
        const char *id;
        int status; /* 0 = not run */
        emu_resp resp;
} bitem;

static bool bad_batch(emu_call *c, emu_resp *r, const char *msg) {
        ERR(400, "BadRequest", "%s", msg);
        return false;
}

void emu_graph_batch(emu_call *c, emu_resp *r) {
        if (c->body_invalid || !json_is_object(c->body) ||
            !json_is_array(json_object_get(c->body, "requests"))) {
                bad_batch(c, r, "Invalid batch payload format.");
                finish_error(c, r);
                return;
        }
        json_t *reqs = json_object_get(c->body, "requests");
        size_t n = json_array_size(reqs);
        if (n == 0 || n > EMU_BATCH_MAX) {
                char m[128];
                snprintf(m, sizeof(m),
                         "Invalid batch payload format: a batch holds 1 to %d requests (got %zu).",
                         EMU_BATCH_MAX, n);
                bad_batch(c, r, m);
                finish_error(c, r);
                return;
        }
        bitem items[EMU_BATCH_MAX];
        memset(items, 0, sizeof(items));
        for (size_t i = 0; i < n; i++) {
                json_t *it = json_array_get(reqs, i);
                const char *id = json_string_value(json_object_get(it, "id"));
                const char *method = json_string_value(json_object_get(it, "method"));
                const char *url = json_string_value(json_object_get(it, "url"));
                if (!json_is_object(it) || !id || !*id || !method || !url) {
                        bad_batch(c, r,
                                  "Invalid batch payload format: each request needs id, method and url.");
                        goto out;
                }
                for (size_t k = 0; k < i; k++) {
                        if (!strcmp(items[k].id, id)) {
                                bad_batch(c, r, "Invalid batch payload format: request ids must be unique.");
                                goto out;
                        }
                }
                items[i].req = it;
                items[i].id = id;
        }
        for (size_t i = 0; i < n; i++) {
                json_t *dep = json_object_get(items[i].req, "dependsOn");
                size_t k;
                json_t *d;
                json_array_foreach(dep, k, d) {
                        bool found = false;
                        for (size_t j = 0; j < n; j++)
                                found = found ||
                                        (json_is_string(d) && !strcmp(items[j].id, json_string_value(d)));
                        if (!found) {
                                bad_batch(
                                    c, r,
                                    "Invalid batch payload format: dependsOn names an unknown request id.");
                                goto out;
                        }
                }
        }
        /* Run in dependency order. */
        size_t done = 0;
        while (done < n) {
                bool progress = false;
                for (size_t i = 0; i < n; i++) {
                        if (items[i].status)
                                continue;
                        json_t *dep = json_object_get(items[i].req, "dependsOn");
                        bool ready = true, failed = false;
                        size_t k;
                        json_t *d;
                        json_array_foreach(dep, k, d) {
                                for (size_t j = 0; j < n; j++) {
                                        if (strcmp(items[j].id, json_string_value(d)))
                                                continue;
                                        if (!items[j].status)
                                                ready = false;
                                        else if (items[j].status >= 400)
                                                failed = true;
                                }
                        }
                        if (!ready)
                                continue;
                        progress = true;
                        done++;
                        emu_resp *ir = &items[i].resp;
                        if (failed) {
                                emu_graph_error(
                                    ir, 424, "FailedDependency",
                                    "The request was not run because a request it depends on failed.",
                                    c->request_id, c->client_request_id);
                                items[i].status = 424;
                                continue;
                        }
                        const char *url = json_string_value(json_object_get(items[i].req, "url"));
                        /* Relative URL; tolerate an absolute one with a version. */
                        const char *v = strstr(url, "/v1.0/");
                        if (v)
                                url = v + 5;
                        char *u = malloc(strlen(url) + 2);
                        sprintf(u, "%s%s", url[0] == '/' ? "" : "/", url);
                        char method[16];
                        snprintf(method, sizeof(method), "%s",
                                 json_string_value(json_object_get(items[i].req, "method")));
                        for (char *p = method; *p; p++)
                                *p = (char)toupper((unsigned char)*p);
                        emu_call ic = *c;
                        ic.method = method;
                        ic.url = u;
                        ic.body = json_object_get(items[i].req, "body");
                        ic.body_invalid = false;
                        ic.in_batch = true;
                        const char *pref = json_string_value(
                            json_object_get(json_object_get(items[i].req, "headers"), "Prefer"));
                        const char *mp = pref ? strstr(pref, "odata.maxpagesize=") : NULL;
                        ic.max_page_size = mp ? atoi(mp + 18) : 0;
                        if (strncmp(u, "/$batch", 7))
                                emu_graph_exec(&ic, ir);
                        else
                                emu_graph_error(ir, 400, "BadRequest", "A batch cannot contain a batch.",
                                                c->request_id, c->client_request_id);
                        free(u);
                        items[i].status = ir->status ? ir->status : 500;
                }
                if (!progress) {
                        for (size_t i = 0; i < n; i++)
                                emu_resp_reset(&items[i].resp);
                        bad_batch(c, r, "Invalid batch payload format: dependsOn forms a cycle.");
                        goto out;
                }
        }
        /* Responses come back in no particular order, like Graph's. */
        size_t order[EMU_BATCH_MAX];
        for (size_t i = 0; i < n; i++)
                order[i] = i;
        for (size_t i = n; i > 1; i--) {
                size_t j = (size_t)(emu_rand01() * (double)i);
                size_t t = order[i - 1];
                order[i - 1] = order[j];
                order[j] = t;
        }
        json_t *out = json_array();
        for (size_t x = 0; x < n; x++) {
                bitem *b = &items[order[x]];
                json_t *hj = json_object();
                for (int h = 0; h < b->resp.nh; h++)
                        json_object_set_new(hj, b->resp.hname[h], json_string(b->resp.hval[h]));
                json_t *ij = json_pack("{s:s, s:i}", "id", b->id, "status", b->status);
                if (b->resp.body) {
                        json_object_set_new(hj, "Content-Type", json_string(CT_JSON));
                        json_object_set(ij, "body", b->resp.body);
                }
                json_object_set_new(ij, "headers", hj);
                json_array_append_new(out, ij);
        }
        ok_json(r, 200, json_pack("{s:o}", "responses", out));
out:
        for (size_t i = 0; i < n && i < EMU_BATCH_MAX; i++)
                emu_resp_reset(&items[i].resp);
        finish_error(c, r);
}
