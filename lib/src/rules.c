/* rules.c: the rules file (YAML) loader and the rules engine: object
 * classification, scoping, joins and attribute flow with precedence.
 *
 * Loading walks a libyaml document tree; every error is collected with the
 * line and column of the offending node (for expressions, of the exact
 * character inside the scalar) and a caret line, so `canopyctl rules check`
 * can list them all.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "canopy/rules.h"
#include "expr_int.h"
#include "rules_int.h"

enum { TY_USER = 0, TY_GROUP, TY_CONTACT, TY_N };
static const char *const type_names[TY_N] = {"user", "group", "contact"};

enum clause_op {
        OP_EQUALS = 0, OP_NOT_EQUALS, OP_IS_NULL, OP_IS_NOT_NULL, OP_IS_TRUE, OP_IS_FALSE, OP_REGEX_MATCH,
        OP_NOT_REGEX_MATCH, OP_GREATER_THAN, OP_GREATER_THAN_OR_EQUALS, OP_LESS_THAN, OP_LESS_THAN_OR_EQUALS,
        OP_STARTS_WITH, OP_ENDS_WITH, OP_INCLUDES, OP_NOT_INCLUDES, OP_N
};
static const char *const op_names[OP_N] = {
        "EQUALS", "NOT_EQUALS", "IS_NULL", "IS_NOT_NULL", "IS_TRUE", "IS_FALSE", "REGEX_MATCH", "NOT_REGEX_MATCH",
        "GREATER_THAN", "GREATER_THAN_OR_EQUALS", "LESS_THAN", "LESS_THAN_OR_EQUALS", "STARTS_WITH", "ENDS_WITH",
        "INCLUDES", "NOT_INCLUDES"};

typedef struct clause {
        char *attr; /* lower-case */
        int op;
        char *value;
        size_t vlen;
        int64_t num;
        expr_regex *re;
} clause;

typedef struct fgroup {
        unsigned types; /* bit per type */
        clause *c;
        size_t n;
} fgroup;

typedef struct flow {
        char *target;
        canopy_expr *expr;
        /* Where the expression is, for run-time errors: "file:line:col" of
         * its first character; the column of byte offset p is col + p when
         * the expression is one line without escapes (exact). */
        char file[128];
        unsigned line, col;
        bool exact;
        bool create_only;
        bool disabled;
        int precedence;
        bool has_prec;
        size_t order;
} flow;

typedef struct typerules {
        int *tmap; /* target index -> flow index (-1 none), built by finish() */
        flow *flows;
        size_t nflows;
        canopy_join_rule *joins;
        size_t njoins;
        bool joins_set;
} typerules;

typedef struct strlist {
        char **v;
        size_t n;
} strlist;

typedef struct conn {
        canopy_rules_connector pub;
        char *id, *domain;
        strlist anchor, attrs, cls[TY_N], excl;
        bool anchor_set;
        char *member_attr;
        bool use_defaults;
        strlist incl_raw, excl_raw, groups_raw;
        strlist incl_norm, excl_norm, groups_norm;
        size_t *incl_nlen, *excl_nlen;
        bool sys_excl;
        fgroup *filters;
        size_t nfilters;
        typerules t[TY_N];
} conn;

struct canopy_rules {
        conn *c;
        size_t n;
        strlist targets[TY_N];
};

/* ---- small helpers --------------------------------------------------------- */

static char *xstrndup_lower(const char *s, size_t n)
{
        char *r = strndup(s, n);
        if (r)
                for (char *p = r; *p; p++)
                        *p = (char)tolower((unsigned char)*p);
        return r;
}

static bool sl_add(strlist *l, const char *s, bool lower)
{
        char **nv = realloc(l->v, (l->n + 1) * sizeof(*nv));
        if (!nv)
                return false;
        l->v = nv;
        nv[l->n] = lower ? xstrndup_lower(s, strlen(s)) : strdup(s);
        if (!nv[l->n])
                return false;
        l->n++;
        return true;
}

static void sl_free(strlist *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->v[i]);
        free(l->v);
        l->v = NULL;
        l->n = 0;
}

static int type_index(const char *t)
{
        for (int i = 0; i < TY_N; i++)
                if (t && strcasecmp(t, type_names[i]) == 0)
                        return i;
        return -1;
}

static void flows_free(typerules *t)
{
        free(t->tmap);
        for (size_t i = 0; i < t->nflows; i++) {
                free(t->flows[i].target);
                canopy_expr_free(t->flows[i].expr);
        }
        free(t->flows);
        for (size_t i = 0; i < t->njoins; i++) {
                free((char *)t->joins[i].source);
                free((char *)t->joins[i].mv);
        }
        free(t->joins);
}

static void conn_free(conn *c)
{
        free(c->id);
        free(c->domain);
        sl_free(&c->anchor);
        sl_free(&c->attrs);
        for (int i = 0; i < TY_N; i++) {
                sl_free(&c->cls[i]);
                flows_free(&c->t[i]);
        }
        sl_free(&c->excl);
        free(c->member_attr);
        sl_free(&c->incl_raw);
        sl_free(&c->excl_raw);
        sl_free(&c->groups_raw);
        sl_free(&c->incl_norm);
        sl_free(&c->excl_norm);
        sl_free(&c->groups_norm);
        free(c->incl_nlen);
        free(c->excl_nlen);
        for (size_t i = 0; i < c->nfilters; i++) {
                for (size_t k = 0; k < c->filters[i].n; k++) {
                        free(c->filters[i].c[k].attr);
                        free(c->filters[i].c[k].value);
                        expr_regex_free(c->filters[i].c[k].re);
                }
                free(c->filters[i].c);
        }
        free(c->filters);
}

void canopy_rules_free(canopy_rules *r)
{
        if (!r)
                return;
        for (size_t i = 0; i < r->n; i++)
                conn_free(&r->c[i]);
        free(r->c);
        for (int i = 0; i < TY_N; i++)
                sl_free(&r->targets[i]);
        free(r);
}

/* ---- diagnostics ------------------------------------------------------------- */

typedef struct loader {
        const char *name;
        const char *text; /* file text, for caret lines and positions */
        size_t len;
        canopy_rules_diags *d;
        canopy_err err;
        bool builtin; /* loading the built-in defaults */
} loader;

static void diag_at(loader *ld, canopy_err code, unsigned line, unsigned col, const char *fmt, ...)
{
        if (!ld->err || (ld->err != CANOPY_ERR_RULES_SYNTAX && code == CANOPY_ERR_RULES_SYNTAX))
                ld->err = code;
        canopy_rules_diags *d = ld->d;
        if (!d || d->n >= CANOPY_RULES_MAX_DIAGS)
                return;
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        /* The source line. */
        const char *ls = ld->text, *end = ld->text + ld->len;
        for (unsigned l = 1; l < line && ls < end; ls++)
                if (*ls == '\n')
                        l++;
        const char *le = ls;
        while (le < end && *le != '\n')
                le++;
        size_t need = strlen(ld->name) + strlen(msg) + (size_t)(le - ls) + col + 64;
        char *text = malloc(need);
        canopy_rules_diag *ni = realloc(d->items, (d->n + 1) * sizeof(*ni));
        if (!text || !ni) {
                free(text);
                if (ni)
                        d->items = ni;
                return;
        }
        d->items = ni;
        int o = snprintf(text, need, "%s:%u:%u: error: %s%s\n%.*s\n", ld->name, line, col,
                         ld->builtin ? "(built-in defaults) " : "", msg, (int)(le - ls), ls);
        size_t k = o > 0 ? (size_t)o : 0;
        for (unsigned i = 1; i < col && k + 3 < need; i++)
                k += (size_t)snprintf(text + k, need - k, "%c", (ls + i - 1 < le && ls[i - 1] == '\t') ? '\t' : ' ');
        snprintf(text + k, need - k, "^\n");
        ni[d->n].line = line;
        ni[d->n].col = col;
        ni[d->n].msg = strdup(msg);
        ni[d->n].text = text;
        d->n++;
        size_t al = d->all ? strlen(d->all) : 0, tl = strlen(text);
        char *na = realloc(d->all, al + tl + 1);
        if (na) {
                memcpy(na + al, text, tl + 1);
                d->all = na;
        }
}

#define DIAG(ld, code, node, ...) \
        diag_at((ld), (code), (unsigned)(node)->start_mark.line + 1, (unsigned)(node)->start_mark.column + 1, __VA_ARGS__)

const char *canopy_rules_diags_text(const canopy_rules_diags *d)
{
        return d && d->all ? d->all : "";
}

void canopy_rules_diags_free(canopy_rules_diags *d)
{
        if (!d)
                return;
        for (size_t i = 0; i < d->n; i++) {
                free(d->items[i].msg);
                free(d->items[i].text);
        }
        free(d->items);
        free(d->all);
        memset(d, 0, sizeof(*d));
}

/* Map a byte position inside a scalar's value to the file's line:column,
 * walking the raw text from the node's start (quotes, escapes and block
 * indentation accounted for). */
static void scalar_pos(loader *ld, const yaml_node_t *n, size_t pos, unsigned *line, unsigned *col)
{
        size_t i = n->start_mark.index;
        unsigned l = (unsigned)n->start_mark.line + 1, c = (unsigned)n->start_mark.column + 1;
        const char *t = ld->text;
        size_t end = n->end_mark.index < ld->len ? n->end_mark.index : ld->len;
#define ADV()                           \
        do {                            \
                if (t[i] == '\n') {     \
                        l++;            \
                        c = 1;          \
                } else {                \
                        c++;            \
                }                       \
                i++;                    \
        } while (0)
        yaml_scalar_style_t st = n->data.scalar.style;
        if (st == YAML_SINGLE_QUOTED_SCALAR_STYLE || st == YAML_DOUBLE_QUOTED_SCALAR_STYLE) {
                ADV(); /* opening quote */
                for (size_t k = 0; k < pos && i < end; k++) {
                        if (st == YAML_SINGLE_QUOTED_SCALAR_STYLE && t[i] == '\'' && i + 1 < end && t[i + 1] == '\'')
                                ADV();
                        else if (st == YAML_DOUBLE_QUOTED_SCALAR_STYLE && t[i] == '\\' && i + 1 < end)
                                ADV();
                        ADV();
                        while (i < end && t[i] == '\n')
                                ADV();
                }
        } else if (st == YAML_LITERAL_SCALAR_STYLE || st == YAML_FOLDED_SCALAR_STYLE) {
                while (i < end && t[i] != '\n')
                        ADV();
                if (i < end)
                        ADV();
                size_t indent = 0;
                while (i + indent < end && t[i + indent] == ' ')
                        indent++;
                for (size_t k = 0; k <= pos && i < end; k++) {
                        if (c == 1)
                                for (size_t z = 0; z < indent && i < end && t[i] == ' '; z++)
                                        ADV();
                        if (k == pos)
                                break;
                        ADV();
                }
        } else {
                for (size_t k = 0; k < pos && i < end; k++)
                        ADV();
        }
#undef ADV
        *line = l;
        *col = c;
}

/* ---- YAML access ---------------------------------------------------------- */

typedef struct ydoc {
        yaml_document_t doc;
        loader *ld;
} ydoc;

static const char *scalar(const yaml_node_t *n)
{
        return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *ynode(ydoc *y, int id)
{
        return yaml_document_get_node(&y->doc, id);
}

static bool want_type(ydoc *y, yaml_node_t *n, yaml_node_type_t t, const char *what)
{
        if (n->type == t)
                return true;
        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, n, "%s must be a %s", what,
             t == YAML_MAPPING_NODE ? "mapping" : t == YAML_SEQUENCE_NODE ? "list" : "scalar");
        return false;
}

static bool parse_bool(ydoc *y, yaml_node_t *n, bool *out, const char *what)
{
        const char *s = scalar(n);
        if (s && (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))) {
                *out = true;
                return true;
        }
        if (s && (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))) {
                *out = false;
                return true;
        }
        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, n, "%s must be true or false", what);
        return false;
}

static bool parse_int(ydoc *y, yaml_node_t *n, long min, long max, int64_t *out, const char *what)
{
        const char *s = scalar(n);
        char *e;
        errno = 0;
        long long v = s ? strtoll(s, &e, 10) : 0;
        if (!s || !*s || *e || errno || v < min || v > max) {
                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, n, "%s must be an integer between %ld and %ld", what, min, max);
                return false;
        }
        *out = v;
        return true;
}

/* A scalar or a list of scalars into l. */
static void parse_strlist(ydoc *y, yaml_node_t *n, strlist *l, bool lower, const char *what)
{
        if (n->type == YAML_SCALAR_NODE) {
                if (!sl_add(l, scalar(n), lower))
                        y->ld->err = CANOPY_ERR_NOMEM;
                return;
        }
        if (!want_type(y, n, YAML_SEQUENCE_NODE, what))
                return;
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
                yaml_node_t *v = ynode(y, *it);
                if (!v || v->type != YAML_SCALAR_NODE) {
                        if (v)
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, v, "items of %s must be strings", what);
                        continue;
                }
                if (!sl_add(l, scalar(v), lower))
                        y->ld->err = CANOPY_ERR_NOMEM;
        }
}

#define FOR_PAIRS(y, map, kn, vn, K)                                                                            \
        for (yaml_node_pair_t *pr_##K = (map)->data.mapping.pairs.start; pr_##K < (map)->data.mapping.pairs.top;   \
             pr_##K++)                                                                                             \
                for (yaml_node_t *kn = ynode((y), pr_##K->key), *vn = ynode((y), pr_##K->value); kn && vn; kn = NULL) \
                        for (const char *K = scalar(kn) ? scalar(kn) : ""; K; K = NULL)

/* ---- expressions --------------------------------------------------------------- */

/* Compile a flow expression, substituting ${domain}. */
static void flow_where(ydoc *y, yaml_node_t *n, flow *f)
{
        snprintf(f->file, sizeof(f->file), "%s", y->ld->name ? y->ld->name : "<rules>");
        scalar_pos(y->ld, n, 0, &f->line, &f->col);
        const char *src = scalar(n);
        size_t len = n->end_mark.index > n->start_mark.index ? n->end_mark.index - n->start_mark.index : 0;
        yaml_scalar_style_t st = n->data.scalar.style;
        size_t raw = strlen(src) + (st == YAML_PLAIN_SCALAR_STYLE ? 0 : 2);
        /* One line, and as many bytes in the file as in the value (plus the
         * quotes): no escape, fold or ${domain} moves the columns. */
        f->exact = n->start_mark.line == n->end_mark.line && len == raw && !strstr(src, "${domain}") &&
                   (st == YAML_PLAIN_SCALAR_STYLE || st == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    st == YAML_DOUBLE_QUOTED_SCALAR_STYLE);
}

static canopy_expr *compile_flow(ydoc *y, conn *c, yaml_node_t *n)
{
        const char *src = scalar(n);
        if (!src) {
                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, n, "expression must be a string");
                return NULL;
        }
        size_t sl = strlen(src);
        const char *tok = strstr(src, "${domain}");
        char *sub = NULL;
        if (tok) {
                char rep[512];
                if (c->domain)
                        snprintf(rep, sizeof(rep), "\"%s\"", c->domain);
                else
                        snprintf(rep, sizeof(rep), "DomainFromDN([dn])");
                size_t rl = strlen(rep);
                sub = malloc(sl + rl + 1);
                if (!sub) {
                        y->ld->err = CANOPY_ERR_NOMEM;
                        return NULL;
                }
                size_t pre = (size_t)(tok - src);
                memcpy(sub, src, pre);
                memcpy(sub + pre, rep, rl);
                strcpy(sub + pre + rl, tok + 9);
                src = sub;
                sl = strlen(sub);
        }
        canopy_expr_env env = {(const char *const *)c->attrs.v, c->attrs.n};
        canopy_expr *e = NULL;
        canopy_expr_error er;
        canopy_err err = canopy_expr_compile(src, sl, c->attrs.n ? &env : NULL, &e, &er);
        if (err) {
                size_t pos = er.pos;
                if (tok && pos > (size_t)(tok - (sub ? sub : src)))
                        pos = (size_t)(tok - sub); /* error inside the substitution: point at ${domain} */
                unsigned line, col;
                scalar_pos(y->ld, n, pos, &line, &col);
                diag_at(y->ld, err == CANOPY_ERR_RULES_SYNTAX ? CANOPY_ERR_RULES_SYNTAX : CANOPY_ERR_RULES_SEMANTIC,
                        line, col, "%s", er.msg);
        }
        free(sub);
        return e;
}

static bool add_flow(ydoc *y, typerules *t, flow *f)
{
        if (t->nflows >= CANOPY_RULES_MAX_FLOWS) {
                y->ld->err = CANOPY_ERR_LIMIT;
                return false;
        }
        flow *nf = realloc(t->flows, (t->nflows + 1) * sizeof(*nf));
        if (!nf) {
                y->ld->err = CANOPY_ERR_NOMEM;
                return false;
        }
        t->flows = nf;
        f->order = t->nflows;
        nf[t->nflows++] = *f;
        return true;
}

/* Parse a list of flows for one object type. Later flows for the same
 * target replace earlier ones (the file overrides the defaults). */
static void parse_flows(ydoc *y, conn *c, typerules *t, yaml_node_t *seq)
{
        if (!want_type(y, seq, YAML_SEQUENCE_NODE, "flows of an object type"))
                return;
        for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
                yaml_node_t *m = ynode(y, *it);
                if (!m || !want_type(y, m, YAML_MAPPING_NODE, "a flow"))
                        continue;
                flow f = {0};
                yaml_node_t *exprn = NULL, *targetn = NULL;
                bool bad = false;
                FOR_PAIRS(y, m, kn, vn, key)
                {
                        if (!strcmp(key, "target")) {
                                targetn = vn;
                        } else if (!strcmp(key, "expression")) {
                                exprn = vn;
                        } else if (!strcmp(key, "apply")) {
                                const char *v = scalar(vn);
                                if (v && !strcmp(v, "always"))
                                        f.create_only = false;
                                else if (v && !strcmp(v, "create_only"))
                                        f.create_only = true;
                                else {
                                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, vn, "apply must be always or create_only");
                                        bad = true;
                                }
                        } else if (!strcmp(key, "precedence")) {
                                int64_t v;
                                if (parse_int(y, vn, 0, 1000000, &v, "precedence")) {
                                        f.precedence = (int)v;
                                        f.has_prec = true;
                                } else {
                                        bad = true;
                                }
                        } else if (!strcmp(key, "disabled")) {
                                if (!parse_bool(y, vn, &f.disabled, "disabled"))
                                        bad = true;
                        } else {
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn, "unknown key '%s' in a flow", key);
                                bad = true;
                        }
                }
                if (!targetn || !scalar(targetn) || !*scalar(targetn)) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "a flow needs a target");
                        continue;
                }
                if (!exprn && !f.disabled) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "flow '%s' needs an expression (or disabled: true)",
                             scalar(targetn));
                        continue;
                }
                if (exprn && !f.disabled) {
                        f.expr = compile_flow(y, c, exprn);
                        if (!f.expr)
                                bad = true;
                        else
                                flow_where(y, exprn, &f);
                }
                if (bad) {
                        canopy_expr_free(f.expr);
                        continue;
                }
                /* Replace an earlier flow for the same target. */
                bool replaced = false;
                for (size_t i = 0; i < t->nflows; i++) {
                        if (strcmp(t->flows[i].target, scalar(targetn)) == 0) {
                                canopy_expr_free(t->flows[i].expr);
                                t->flows[i].expr = f.expr;
                                memcpy(t->flows[i].file, f.file, sizeof(f.file));
                                t->flows[i].line = f.line;
                                t->flows[i].col = f.col;
                                t->flows[i].exact = f.exact;
                                t->flows[i].create_only = f.create_only;
                                t->flows[i].disabled = f.disabled;
                                t->flows[i].precedence = f.precedence;
                                t->flows[i].has_prec = f.has_prec;
                                replaced = true;
                                break;
                        }
                }
                if (replaced)
                        continue;
                f.target = strdup(scalar(targetn));
                if (!f.target || !add_flow(y, t, &f)) {
                        free(f.target);
                        canopy_expr_free(f.expr);
                }
        }
}

static void parse_flows_map(ydoc *y, conn *c, yaml_node_t *m)
{
        if (!want_type(y, m, YAML_MAPPING_NODE, "flows"))
                return;
        FOR_PAIRS(y, m, kn, vn, key)
        {
                int ti = type_index(key);
                if (ti < 0) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn, "unknown object type '%s' (user, group, contact)", key);
                        continue;
                }
                parse_flows(y, c, &c->t[ti], vn);
        }
}

/* ---- scope ----------------------------------------------------------------- */

static int op_parse(const char *s)
{
        char buf[64];
        size_t n = 0;
        if (!strcmp(s, "&"))
                return OP_INCLUDES;
        if (!strcmp(s, "!&"))
                return OP_NOT_INCLUDES;
        for (; *s && n + 1 < sizeof(buf); s++)
                buf[n++] = *s == ' ' ? '_' : (char)toupper((unsigned char)*s);
        buf[n] = '\0';
        for (int i = 0; i < OP_N; i++)
                if (!strcmp(buf, op_names[i]))
                        return i;
        return -1;
}

static void parse_clause(ydoc *y, conn *c, yaml_node_t *m, fgroup *g)
{
        if (!want_type(y, m, YAML_MAPPING_NODE, "a scoping clause"))
                return;
        clause cl = {.op = -1};
        yaml_node_t *valn = NULL, *opn = NULL;
        FOR_PAIRS(y, m, kn, vn, key)
        {
                if (!strcmp(key, "attribute")) {
                        if (scalar(vn))
                                cl.attr = xstrndup_lower(scalar(vn), strlen(scalar(vn)));
                } else if (!strcmp(key, "operator")) {
                        opn = vn;
                        cl.op = scalar(vn) ? op_parse(scalar(vn)) : -1;
                        if (cl.op < 0)
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, vn,
                                     "unknown operator '%s' (EQUALS, NOT EQUALS, IS NULL, IS NOT NULL, IS TRUE, IS FALSE, "
                                     "REGEX MATCH, NOT REGEX MATCH, GREATER_THAN, LESS_THAN, STARTS_WITH, ENDS_WITH, ...)",
                                     scalar(vn) ? scalar(vn) : "");
                } else if (!strcmp(key, "value")) {
                        valn = vn;
                } else {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn, "unknown key '%s' in a scoping clause", key);
                }
        }
        bool ok = cl.attr && cl.op >= 0;
        if (!cl.attr)
                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "a scoping clause needs an attribute");
        if (!opn)
                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "a scoping clause needs an operator");
        bool needs_value = cl.op >= 0 && cl.op != OP_IS_NULL && cl.op != OP_IS_NOT_NULL && cl.op != OP_IS_TRUE &&
                           cl.op != OP_IS_FALSE;
        if (ok && needs_value) {
                if (!valn || !scalar(valn)) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "operator %s needs a value", op_names[cl.op]);
                        ok = false;
                } else {
                        cl.value = strdup(scalar(valn));
                        cl.vlen = strlen(cl.value);
                        if (cl.op >= OP_GREATER_THAN && cl.op <= OP_LESS_THAN_OR_EQUALS)
                                ok = parse_int(y, valn, -(long)0x7fffffff - 1, 0x7fffffff, &cl.num, "the value of a comparison");
                        if (cl.op == OP_REGEX_MATCH || cl.op == OP_NOT_REGEX_MATCH) {
                                char msg[160];
                                size_t ep;
                                cl.re = expr_regex_compile(cl.value, cl.vlen, msg, sizeof(msg), &ep);
                                if (!cl.re) {
                                        unsigned line, col;
                                        scalar_pos(y->ld, valn, ep, &line, &col);
                                        diag_at(y->ld, CANOPY_ERR_RULES_SEMANTIC, line, col, "bad regular expression: %s", msg);
                                        ok = false;
                                }
                        }
                }
        }
        if (ok && c->attrs.n) {
                bool found = false;
                for (size_t i = 0; i < c->attrs.n && !found; i++)
                        found = strcasecmp(c->attrs.v[i], cl.attr) == 0;
                if (!found) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "unknown attribute '%s' (not in the connector's attribute list)",
                             cl.attr);
                        ok = false;
                }
        }
        clause *nc = ok ? realloc(g->c, (g->n + 1) * sizeof(*nc)) : NULL;
        if (!nc) {
                free(cl.attr);
                free(cl.value);
                expr_regex_free(cl.re);
                return;
        }
        g->c = nc;
        nc[g->n++] = cl;
}

static void parse_filters(ydoc *y, conn *c, yaml_node_t *seq)
{
        if (!want_type(y, seq, YAML_SEQUENCE_NODE, "filters"))
                return;
        for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
                yaml_node_t *g = ynode(y, *it);
                if (!g)
                        continue;
                fgroup fg = {.types = (1u << TY_N) - 1};
                yaml_node_t *clauses = g;
                if (g->type == YAML_MAPPING_NODE) {
                        clauses = NULL;
                        FOR_PAIRS(y, g, kn, vn, key)
                        {
                                if (!strcmp(key, "clauses")) {
                                        clauses = vn;
                                } else if (!strcmp(key, "object_types")) {
                                        strlist tl = {0};
                                        parse_strlist(y, vn, &tl, true, "object_types");
                                        fg.types = 0;
                                        for (size_t i = 0; i < tl.n; i++) {
                                                int ti = type_index(tl.v[i]);
                                                if (ti < 0)
                                                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, vn, "unknown object type '%s'",
                                                             tl.v[i]);
                                                else
                                                        fg.types |= 1u << ti;
                                        }
                                        sl_free(&tl);
                                } else {
                                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn, "unknown key '%s' in a filter group", key);
                                }
                        }
                        if (!clauses) {
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, g, "a filter group needs clauses");
                                continue;
                        }
                }
                if (!want_type(y, clauses, YAML_SEQUENCE_NODE, "a filter group (list of clauses)"))
                        continue;
                for (yaml_node_item_t *ci = clauses->data.sequence.items.start; ci < clauses->data.sequence.items.top; ci++) {
                        yaml_node_t *cn = ynode(y, *ci);
                        if (cn)
                                parse_clause(y, c, cn, &fg);
                }
                fgroup *nf = realloc(c->filters, (c->nfilters + 1) * sizeof(*nf));
                if (!nf) {
                        free(fg.c);
                        y->ld->err = CANOPY_ERR_NOMEM;
                        return;
                }
                c->filters = nf;
                nf[c->nfilters++] = fg;
        }
}

static void norm_dns(ydoc *y, yaml_node_t *n, strlist *raw, strlist *norm, size_t **lens)
{
        size_t before = raw->n;
        parse_strlist(y, n, raw, false, "a list of DNs");
        *lens = realloc(*lens, (raw->n + 1) * sizeof(**lens));
        if (!*lens) {
                y->ld->err = CANOPY_ERR_NOMEM;
                return;
        }
        for (size_t i = before; i < raw->n; i++) {
                size_t l = 0;
                char *nd = rules_dn_norm_alloc(raw->v[i], &l);
                if (!nd) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, n, "'%s' is not a valid DN (RFC 4514)", raw->v[i]);
                        nd = strdup("");
                }
                char **nv = realloc(norm->v, (norm->n + 1) * sizeof(*nv));
                if (!nv || !nd) {
                        free(nd);
                        y->ld->err = CANOPY_ERR_NOMEM;
                        return;
                }
                norm->v = nv;
                nv[norm->n] = nd;
                (*lens)[norm->n] = l;
                norm->n++;
        }
}

static void parse_scope(ydoc *y, conn *c, yaml_node_t *m)
{
        if (!want_type(y, m, YAML_MAPPING_NODE, "scope"))
                return;
        size_t *glens = NULL;
        FOR_PAIRS(y, m, kn, vn, key)
        {
                if (!strcmp(key, "include_ous"))
                        norm_dns(y, vn, &c->incl_raw, &c->incl_norm, &c->incl_nlen);
                else if (!strcmp(key, "exclude_ous"))
                        norm_dns(y, vn, &c->excl_raw, &c->excl_norm, &c->excl_nlen);
                else if (!strcmp(key, "groups"))
                        norm_dns(y, vn, &c->groups_raw, &c->groups_norm, &glens);
                else if (!strcmp(key, "system_exclusions"))
                        parse_bool(y, vn, &c->sys_excl, "system_exclusions");
                else if (!strcmp(key, "filters"))
                        parse_filters(y, c, vn);
                else
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn,
                             "unknown key '%s' in scope (include_ous, exclude_ous, groups, filters, system_exclusions)", key);
        }
        free(glens);
}

/* ---- joins -------------------------------------------------------------------- */

static bool add_join(typerules *t, const char *source, const char *mv, bool is_anchor)
{
        canopy_join_rule *nj = realloc(t->joins, (t->njoins + 1) * sizeof(*nj));
        if (!nj)
                return false;
        t->joins = nj;
        nj[t->njoins].source = xstrndup_lower(source, strlen(source));
        nj[t->njoins].mv = strdup(mv);
        nj[t->njoins].is_anchor = is_anchor;
        if (!nj[t->njoins].source || !nj[t->njoins].mv)
                return false;
        t->njoins++;
        return true;
}

static void parse_join(ydoc *y, conn *c, yaml_node_t *m)
{
        if (!want_type(y, m, YAML_MAPPING_NODE, "join"))
                return;
        FOR_PAIRS(y, m, kn, vn, key)
        {
                int ti = type_index(key);
                if (ti < 0) {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn, "unknown object type '%s' (user, group, contact)", key);
                        continue;
                }
                if (!want_type(y, vn, YAML_SEQUENCE_NODE, "join rules"))
                        continue;
                typerules *t = &c->t[ti];
                t->joins_set = true;
                bool saw_anchor = false;
                for (yaml_node_item_t *it = vn->data.sequence.items.start; it < vn->data.sequence.items.top; it++) {
                        yaml_node_t *jm = ynode(y, *it);
                        if (!jm || !want_type(y, jm, YAML_MAPPING_NODE, "a join rule"))
                                continue;
                        const char *src = NULL, *mv = NULL;
                        FOR_PAIRS(y, jm, jk, jv, jkey)
                        {
                                if (!strcmp(jkey, "source"))
                                        src = scalar(jv);
                                else if (!strcmp(jkey, "mv"))
                                        mv = scalar(jv);
                                else
                                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, jk, "unknown key '%s' in a join rule (source, mv)",
                                             jkey);
                        }
                        if (!src || !*src) {
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, jm, "a join rule needs a source attribute");
                                continue;
                        }
                        bool anchor = strcasecmp(src, "anchor") == 0;
                        if (anchor && it != vn->data.sequence.items.start)
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, jm, "the anchor join rule must come first");
                        if (anchor)
                                saw_anchor = true;
                        if (!anchor && c->attrs.n) {
                                bool found = false;
                                for (size_t i = 0; i < c->attrs.n && !found; i++)
                                        found = strcasecmp(c->attrs.v[i], src) == 0;
                                if (!found)
                                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, jm,
                                             "unknown attribute '%s' (not in the connector's attribute list)", src);
                        }
                        if (!add_join(t, anchor ? "anchor" : src, mv ? mv : (anchor ? "sourceAnchor" : src), anchor))
                                y->ld->err = CANOPY_ERR_NOMEM;
                }
                (void)saw_anchor;
        }
}

/* ---- connectors ------------------------------------------------------------- */

static void conn_set_kind_defaults(conn *c)
{
        static const char *const ad_anchor[] = {"ms-ds-consistencyguid", "objectguid"};
        if (c->pub.kind == CANOPY_CONN_AD) {
                if (!c->anchor.n)
                        for (size_t i = 0; i < 2; i++)
                                sl_add(&c->anchor, ad_anchor[i], true);
                if (!c->cls[TY_USER].n)
                        sl_add(&c->cls[TY_USER], "user", true);
                if (!c->cls[TY_GROUP].n)
                        sl_add(&c->cls[TY_GROUP], "group", true);
                if (!c->cls[TY_CONTACT].n)
                        sl_add(&c->cls[TY_CONTACT], "contact", true);
                if (!c->excl.n)
                        sl_add(&c->excl, "computer", true);
        } else {
                if (!c->anchor.n)
                        sl_add(&c->anchor, "entryuuid", true);
                if (!c->cls[TY_USER].n)
                        sl_add(&c->cls[TY_USER], "inetorgperson", true);
                if (!c->cls[TY_GROUP].n) {
                        sl_add(&c->cls[TY_GROUP], "groupofnames", true);
                        sl_add(&c->cls[TY_GROUP], "groupofuniquenames", true);
                }
        }
        if (!c->member_attr)
                c->member_attr = strdup("member");
        for (int i = 0; i < TY_N; i++)
                if (!c->t[i].joins_set && !c->t[i].njoins)
                        add_join(&c->t[i], "anchor", "sourceAnchor", true);
}

static void parse_classes(ydoc *y, conn *c, yaml_node_t *m)
{
        if (!want_type(y, m, YAML_MAPPING_NODE, "object_classes"))
                return;
        FOR_PAIRS(y, m, kn, vn, key)
        {
                int ti = type_index(key);
                if (ti >= 0)
                        parse_strlist(y, vn, &c->cls[ti], true, "object classes");
                else if (!strcmp(key, "exclude"))
                        parse_strlist(y, vn, &c->excl, true, "excluded object classes");
                else
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn,
                             "unknown key '%s' in object_classes (user, group, contact, exclude)", key);
        }
}

static void load_default_flows(loader *outer, conn *c);

static void parse_connector(ydoc *y, canopy_rules *r, yaml_node_t *m)
{
        if (!want_type(y, m, YAML_MAPPING_NODE, "a connector"))
                return;
        if (r->n >= CANOPY_RULES_MAX_CONNECTORS) {
                DIAG(y->ld, CANOPY_ERR_LIMIT, m, "more than %u connectors", CANOPY_RULES_MAX_CONNECTORS);
                return;
        }
        conn *nc = realloc(r->c, (r->n + 1) * sizeof(*nc));
        if (!nc) {
                y->ld->err = CANOPY_ERR_NOMEM;
                return;
        }
        r->c = nc;
        conn *c = &nc[r->n++];
        memset(c, 0, sizeof(*c));
        c->use_defaults = true;
        c->sys_excl = true;
        c->pub.precedence = 100;
        yaml_node_t *kindn = NULL, *flowsn = NULL, *scopen = NULL, *joinn = NULL, *idn = NULL;
        /* First pass: identity and attribute list (expressions need them). */
        FOR_PAIRS(y, m, kn, vn, key)
        {
                if (!strcmp(key, "id")) {
                        idn = vn;
                        if (scalar(vn) && *scalar(vn))
                                c->id = strdup(scalar(vn));
                        else
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, vn, "id must be a non-empty string");
                } else if (!strcmp(key, "kind")) {
                        kindn = vn;
                        const char *k = scalar(vn);
                        if (k && !strcmp(k, "ad"))
                                c->pub.kind = CANOPY_CONN_AD;
                        else if (k && !strcmp(k, "openldap"))
                                c->pub.kind = CANOPY_CONN_OPENLDAP;
                        else if (k && !strcmp(k, "ldap"))
                                c->pub.kind = CANOPY_CONN_LDAP;
                        else
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, vn, "kind must be ad, openldap or ldap");
                } else if (!strcmp(key, "domain")) {
                        if (scalar(vn) && *scalar(vn) && !strpbrk(scalar(vn), "\"\\ ")) {
                                free(c->domain); /* a repeated key: the last one wins */
                                c->domain = strdup(scalar(vn));
                        }
                        else
                                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, vn, "domain must be a DNS name");
                } else if (!strcmp(key, "precedence")) {
                        int64_t v;
                        if (parse_int(y, vn, 0, 1000000, &v, "precedence"))
                                c->pub.precedence = (int)v;
                } else if (!strcmp(key, "anchor")) {
                        parse_strlist(y, vn, &c->anchor, true, "anchor");
                        c->anchor_set = true;
                } else if (!strcmp(key, "attributes")) {
                        parse_strlist(y, vn, &c->attrs, true, "attributes");
                } else if (!strcmp(key, "object_classes")) {
                        parse_classes(y, c, vn);
                } else if (!strcmp(key, "member_attribute")) {
                        if (scalar(vn))
                                c->member_attr = xstrndup_lower(scalar(vn), strlen(scalar(vn)));
                } else if (!strcmp(key, "use_default_flows")) {
                        parse_bool(y, vn, &c->use_defaults, "use_default_flows");
                } else if (!strcmp(key, "scope")) {
                        scopen = vn;
                } else if (!strcmp(key, "join")) {
                        joinn = vn;
                } else if (!strcmp(key, "flows")) {
                        flowsn = vn;
                } else {
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, kn,
                             "unknown key '%s' in a connector (id, kind, domain, precedence, anchor, attributes, "
                             "object_classes, member_attribute, use_default_flows, scope, join, flows)",
                             key);
                }
        }
        if (!idn)
                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "a connector needs an id");
        if (!kindn)
                DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, m, "a connector needs a kind (ad, openldap or ldap)");
        if (!c->id)
                c->id = strdup("");
        for (size_t i = 0; i + 1 < r->n; i++)
                if (c->id && *c->id && !strcmp(r->c[i].id, c->id))
                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, idn ? idn : m, "duplicate connector id '%s'", c->id);
        if (c->use_defaults)
                load_default_flows(y->ld, c);
        if (scopen)
                parse_scope(y, c, scopen);
        if (joinn)
                parse_join(y, c, joinn);
        if (flowsn)
                parse_flows_map(y, c, flowsn);
        conn_set_kind_defaults(c);
}

/* Build the public view and the targets lists once everything loaded. */
static void finish(canopy_rules *r)
{
        for (size_t i = 0; i < r->n; i++) {
                conn *c = &r->c[i];
                c->pub.id = c->id;
                c->pub.domain = c->domain;
                c->pub.anchor_attrs = (const char *const *)c->anchor.v;
                c->pub.nanchor_attrs = c->anchor.n;
                c->pub.user_classes = (const char *const *)c->cls[TY_USER].v;
                c->pub.nuser_classes = c->cls[TY_USER].n;
                c->pub.group_classes = (const char *const *)c->cls[TY_GROUP].v;
                c->pub.ngroup_classes = c->cls[TY_GROUP].n;
                c->pub.contact_classes = (const char *const *)c->cls[TY_CONTACT].v;
                c->pub.ncontact_classes = c->cls[TY_CONTACT].n;
                c->pub.excluded_classes = (const char *const *)c->excl.v;
                c->pub.nexcluded_classes = c->excl.n;
                for (int t = 0; t < TY_N; t++)
                        for (size_t f = 0; f < c->t[t].nflows; f++) {
                                bool have = false;
                                for (size_t k = 0; k < r->targets[t].n && !have; k++)
                                        have = !strcmp(r->targets[t].v[k], c->t[t].flows[f].target);
                                if (!have && !c->t[t].flows[f].disabled)
                                        sl_add(&r->targets[t], c->t[t].flows[f].target, false);
                        }
        }
        for (size_t i = 0; i < r->n; i++)
                for (int t = 0; t < TY_N; t++) {
                        typerules *tr = &r->c[i].t[t];
                        tr->tmap = malloc((r->targets[t].n + 1) * sizeof(int));
                        for (size_t k = 0; tr->tmap && k < r->targets[t].n; k++) {
                                tr->tmap[k] = -1;
                                for (size_t f = 0; f < tr->nflows; f++)
                                        if (!tr->flows[f].disabled && !strcmp(tr->flows[f].target, r->targets[t].v[k])) {
                                                tr->tmap[k] = (int)f;
                                                break;
                                        }
                        }
                }
}

/* ---- YAML documents ---------------------------------------------------------- */

static bool load_doc(loader *ld, ydoc *y)
{
        yaml_parser_t p;
        y->ld = ld;
        if (!yaml_parser_initialize(&p)) {
                ld->err = CANOPY_ERR_NOMEM;
                return false;
        }
        yaml_parser_set_input_string(&p, (const unsigned char *)ld->text, ld->len);
        bool ok = yaml_parser_load(&p, &y->doc);
        if (!ok) {
                unsigned line = (unsigned)p.problem_mark.line + 1, col = (unsigned)p.problem_mark.column + 1;
                diag_at(ld, CANOPY_ERR_RULES_SYNTAX, line, col, "YAML: %s%s%s", p.problem ? p.problem : "syntax error",
                        p.context ? " " : "", p.context ? p.context : "");
        }
        yaml_parser_delete(&p);
        return ok;
}

static void load_default_flows(loader *outer, conn *c)
{
        loader ld = {.name = "<defaults>", .text = rules_default_flows_yaml, .len = strlen(rules_default_flows_yaml),
                     .d = outer->d, .builtin = true};
        ydoc y;
        if (!load_doc(&ld, &y)) {
                outer->err = ld.err;
                return;
        }
        yaml_node_t *root = yaml_document_get_root_node(&y.doc);
        const char *kind = c->pub.kind == CANOPY_CONN_AD ? "ad" : "openldap";
        /* Defaults are compiled without the connector's attribute list: a
         * declared list restricts the user's own expressions only. */
        strlist saved = c->attrs;
        c->attrs = (strlist){0};
        if (root && root->type == YAML_MAPPING_NODE) {
                FOR_PAIRS(&y, root, kn, vn, key)
                {
                        if (!strcmp(key, kind))
                                parse_flows_map(&y, c, vn);
                }
        }
        c->attrs = saved;
        if (ld.err)
                outer->err = ld.err;
        yaml_document_delete(&y.doc);
}

/* A key given twice in one mapping is an error (as in the service
 * configs): which one would win is not obvious to the reader. Returns the
 * number of duplicates reported. Depth-bounded like the document. */
static size_t check_duplicate_keys(ydoc *y, yaml_node_t *n, int depth)
{
        size_t bad = 0;
        if (!n || depth > 64)
                return 0;
        if (n->type == YAML_SEQUENCE_NODE) {
                for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
                        bad += check_duplicate_keys(y, ynode(y, *it), depth + 1);
        } else if (n->type == YAML_MAPPING_NODE) {
                for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
                        yaml_node_t *k = ynode(y, p->key);
                        const char *ks = k ? scalar(k) : NULL;
                        for (yaml_node_pair_t *q = n->data.mapping.pairs.start; ks && q < p; q++) {
                                yaml_node_t *k2 = ynode(y, q->key);
                                const char *k2s = k2 ? scalar(k2) : NULL;
                                if (k2s && !strcmp(ks, k2s)) {
                                        DIAG(y->ld, CANOPY_ERR_RULES_SEMANTIC, k, "duplicate key '%s'", ks);
                                        bad++;
                                        break;
                                }
                        }
                        bad += check_duplicate_keys(y, ynode(y, p->value), depth + 1);
                }
        }
        return bad;
}

static canopy_err load_text(const char *name, const char *buf, size_t len, canopy_rules **ret, canopy_rules_diags *diags)
{
        canopy_rules_diags local = {0};
        if (!diags)
                diags = &local;
        memset(diags, 0, sizeof(*diags));
        *ret = NULL;
        loader ld = {.name = name, .text = buf, .len = len, .d = diags};
        if (len > CANOPY_RULES_MAX_FILE) {
                diag_at(&ld, CANOPY_ERR_LIMIT, 1, 1, "rules file larger than %u bytes", CANOPY_RULES_MAX_FILE);
                canopy_rules_diags_free(&local);
                return CANOPY_ERR_LIMIT;
        }
        canopy_rules *r = calloc(1, sizeof(*r));
        if (!r)
                return CANOPY_ERR_NOMEM;
        ydoc y;
        if (load_doc(&ld, &y)) {
                yaml_node_t *root = yaml_document_get_root_node(&y.doc);
                if (!root) {
                        diag_at(&ld, CANOPY_ERR_RULES_SEMANTIC, 1, 1, "empty rules file");
                } else if (check_duplicate_keys(&y, root, 0)) {
                        /* reported; the sections are not read */
                } else if (want_type(&y, root, YAML_MAPPING_NODE, "the rules file")) {
                        bool have_conns = false, have_version = false;
                        FOR_PAIRS(&y, root, kn, vn, key)
                        {
                                if (!strcmp(key, "version")) {
                                        int64_t v;
                                        have_version = true;
                                        if (parse_int(&y, vn, 1, 1, &v, "version") && v != 1)
                                                DIAG(&ld, CANOPY_ERR_RULES_SEMANTIC, vn, "unsupported version");
                                } else if (!strcmp(key, "connectors")) {
                                        have_conns = true;
                                        if (want_type(&y, vn, YAML_SEQUENCE_NODE, "connectors"))
                                                for (yaml_node_item_t *it = vn->data.sequence.items.start;
                                                     it < vn->data.sequence.items.top; it++) {
                                                        yaml_node_t *cn = ynode(&y, *it);
                                                        if (cn)
                                                                parse_connector(&y, r, cn);
                                                }
                                } else {
                                        DIAG(&ld, CANOPY_ERR_RULES_SEMANTIC, kn, "unknown key '%s' (version, connectors)", key);
                                }
                        }
                        if (!have_version)
                                DIAG(&ld, CANOPY_ERR_RULES_SEMANTIC, root, "missing 'version: 1'");
                        if (!have_conns)
                                DIAG(&ld, CANOPY_ERR_RULES_SEMANTIC, root, "missing 'connectors'");
                }
                yaml_document_delete(&y.doc);
        }
        if (!ld.err)
                finish(r);
        if (ld.err) {
                canopy_rules_free(r);
                canopy_rules_diags_free(&local);
                return ld.err;
        }
        canopy_rules_diags_free(&local);
        *ret = r;
        return CANOPY_OK;
}

canopy_err canopy_rules_load_buffer(const char *name, const char *buf, size_t len, canopy_rules **ret,
                                    canopy_rules_diags *ret_diags)
{
        if (!buf || !ret)
                return CANOPY_ERR_INVALID_ARG;
        return load_text(name ? name : "<rules>", buf, len, ret, ret_diags);
}

canopy_err canopy_rules_load_file(const char *path, canopy_rules **ret, canopy_rules_diags *ret_diags)
{
        if (ret_diags)
                memset(ret_diags, 0, sizeof(*ret_diags));
        FILE *f = fopen(path, "rb");
        if (!f) {
                if (ret_diags) {
                        loader ld = {.name = path, .text = "", .len = 0, .d = ret_diags};
                        diag_at(&ld, CANOPY_ERR_IO, 1, 1, "cannot open: %s", strerror(errno));
                }
                return CANOPY_ERR_IO;
        }
        char *buf = malloc(CANOPY_RULES_MAX_FILE + 1);
        if (!buf) {
                fclose(f);
                return CANOPY_ERR_NOMEM;
        }
        size_t n = fread(buf, 1, CANOPY_RULES_MAX_FILE + 1, f);
        bool err = ferror(f);
        fclose(f);
        if (err) {
                free(buf);
                return CANOPY_ERR_IO;
        }
        canopy_err e = load_text(path, buf, n, ret, ret_diags);
        free(buf);
        return e;
}

canopy_err canopy_rules_load_defaults(const char *const *ids, const char *const *kinds, const char *const *domains,
                                      size_t n, canopy_rules **ret, canopy_rules_diags *ret_diags)
{
        size_t cap = 64 + n * 160;
        char *buf = malloc(cap);
        if (!buf)
                return CANOPY_ERR_NOMEM;
        size_t o = (size_t)snprintf(buf, cap, "version: 1\nconnectors:\n");
        for (size_t i = 0; i < n; i++) {
                if (!ids[i] || !kinds[i] || strpbrk(ids[i], "'\n") || strpbrk(kinds[i], "'\n") ||
                    (domains && domains[i] && strpbrk(domains[i], "'\n"))) {
                        free(buf);
                        return CANOPY_ERR_INVALID_ARG;
                }
                size_t need = strlen(ids[i]) + strlen(kinds[i]) + (domains && domains[i] ? strlen(domains[i]) : 0) + 96;
                if (o + need >= cap) {
                        cap = (o + need) * 2;
                        char *nb = realloc(buf, cap);
                        if (!nb) {
                                free(buf);
                                return CANOPY_ERR_NOMEM;
                        }
                        buf = nb;
                }
                o += (size_t)snprintf(buf + o, cap - o, "  - id: '%s'\n    kind: '%s'\n    precedence: %zu\n", ids[i],
                                      kinds[i], (i + 1) * 10);
                if (domains && domains[i])
                        o += (size_t)snprintf(buf + o, cap - o, "    domain: '%s'\n", domains[i]);
        }
        canopy_err e = load_text("<defaults>", buf, o, ret, ret_diags);
        free(buf);
        return e;
}

const char *canopy_rules_defaults_yaml(void)
{
        return rules_defaults_example_yaml;
}

/* ---- connectors and classification --------------------------------------------- */

size_t canopy_rules_connector_count(const canopy_rules *r)
{
        return r ? r->n : 0;
}

const canopy_rules_connector *canopy_rules_connector_at(const canopy_rules *r, size_t i)
{
        return r && i < r->n ? &r->c[i].pub : NULL;
}

static const conn *find_conn(const canopy_rules *r, const char *id)
{
        if (!r || !id)
                return NULL;
        for (size_t i = 0; i < r->n; i++)
                if (!strcmp(r->c[i].id, id))
                        return &r->c[i];
        return NULL;
}

const canopy_rules_connector *canopy_rules_connector_find(const canopy_rules *r, const char *id)
{
        const conn *c = find_conn(r, id);
        return c ? &c->pub : NULL;
}

static bool view_get(const canopy_obj_view *o, const char *name, const canopy_bytes **v, size_t *n, bool *bin)
{
        *v = NULL;
        *n = 0;
        *bin = false;
        return o->lookup && o->lookup(o->ctx, name, v, n, bin) && *n > 0;
}

static bool has_value_ci(const canopy_bytes *v, size_t n, const char *s)
{
        size_t sl = strlen(s);
        for (size_t i = 0; i < n; i++)
                if (v[i].len == sl && strncasecmp((const char *)v[i].data, s, sl) == 0)
                        return true;
        return false;
}

static int classify(const conn *c, const canopy_obj_view *obj)
{
        if (obj->object_type) {
                int t = type_index(obj->object_type);
                if (t >= 0)
                        return t;
        }
        const canopy_bytes *v;
        size_t n;
        bool bin;
        if (!view_get(obj, "objectclass", &v, &n, &bin))
                return -1;
        for (size_t i = 0; i < c->excl.n; i++)
                if (has_value_ci(v, n, c->excl.v[i]))
                        return -1;
        for (int t = 0; t < TY_N; t++)
                for (size_t i = 0; i < c->cls[t].n; i++)
                        if (has_value_ci(v, n, c->cls[t].v[i]))
                                return t;
        return -1;
}

const char *canopy_rules_object_type(const canopy_rules *r, const canopy_obj_view *obj)
{
        const conn *c = find_conn(r, obj ? obj->connector : NULL);
        if (!c)
                return NULL;
        int t = classify(c, obj);
        return t >= 0 ? type_names[t] : NULL;
}

static int hexv(char ch)
{
        if (ch >= '0' && ch <= '9')
                return ch - '0';
        if (ch >= 'a' && ch <= 'f')
                return ch - 'a' + 10;
        if (ch >= 'A' && ch <= 'F')
                return ch - 'A' + 10;
        return -1;
}

canopy_err canopy_rules_anchor(const canopy_rules *r, const canopy_obj_view *obj, canopy_arena *a, canopy_bytes *ret)
{
        if (obj && obj->anchor && obj->anchor->len) {
                *ret = *obj->anchor;
                return CANOPY_OK;
        }
        const conn *c = find_conn(r, obj ? obj->connector : NULL);
        if (!c)
                return CANOPY_ERR_NOT_FOUND;
        int t = classify(c, obj);
        for (size_t i = 0; i < c->anchor.n; i++) {
                /* Groups keep objectGUID (Connect writes ms-DS-ConsistencyGuid for users only). */
                if (c->pub.kind == CANOPY_CONN_AD && !c->anchor_set && t == TY_GROUP &&
                    !strcmp(c->anchor.v[i], "ms-ds-consistencyguid"))
                        continue;
                const canopy_bytes *v;
                size_t n;
                bool bin;
                if (!view_get(obj, c->anchor.v[i], &v, &n, &bin) || v[0].len == 0)
                        continue;
                /* A textual UUID (entryUUID) becomes its 16 bytes. */
                if (v[0].len == 36 && ((const char *)v[0].data)[8] == '-' && a) {
                        uint8_t *b = canopy_arena_alloc(a, 16);
                        if (!b)
                                return CANOPY_ERR_LIMIT;
                        const char *s = (const char *)v[0].data;
                        size_t k = 0;
                        bool ok = true;
                        for (size_t j = 0; j < 36 && ok; j++) {
                                if (j == 8 || j == 13 || j == 18 || j == 23) {
                                        ok = s[j] == '-';
                                        continue;
                                }
                                int h = hexv(s[j]), l = j + 1 < 36 ? hexv(s[j + 1]) : -1;
                                if (h < 0 || l < 0) {
                                        ok = false;
                                        break;
                                }
                                b[k++] = (uint8_t)(h * 16 + l);
                                j++;
                        }
                        if (ok && k == 16) {
                                ret->data = b;
                                ret->len = 16;
                                return CANOPY_OK;
                        }
                }
                *ret = v[0];
                return CANOPY_OK;
        }
        return CANOPY_ERR_NOT_FOUND;
}

/* ---- scoping --------------------------------------------------------------------- */

static bool int_of(const canopy_bytes *b, int64_t *out)
{
        char buf[32];
        if (b->len == 0 || b->len >= sizeof(buf))
                return false;
        memcpy(buf, b->data, b->len);
        buf[b->len] = '\0';
        char *e;
        errno = 0;
        long long v = strtoll(buf, &e, 10);
        if (*e || errno)
                return false;
        *out = v;
        return true;
}

static bool clause_match(const clause *cl, const canopy_obj_view *obj)
{
        const canopy_bytes *v;
        size_t n;
        bool bin;
        bool present = view_get(obj, cl->attr, &v, &n, &bin);
        if (present && n == 1 && v[0].len == 0)
                present = false; /* an empty value is empty */
        switch (cl->op) {
        case OP_IS_NULL:
                return !present;
        case OP_IS_NOT_NULL:
                return present;
        default:
                break;
        }
        if (!present)
                return cl->op == OP_NOT_EQUALS || cl->op == OP_NOT_INCLUDES;
        bool any = false;
        for (size_t i = 0; i < n && !any; i++) {
                const char *s = (const char *)v[i].data;
                size_t l = v[i].len;
                int64_t x;
                switch (cl->op) {
                case OP_EQUALS:
                case OP_NOT_EQUALS:
                        any = l == cl->vlen && memcmp(s, cl->value, l) == 0;
                        break;
                case OP_IS_TRUE:
                        any = (l == 4 && !strncasecmp(s, "true", 4)) || (l == 1 && s[0] == '1');
                        break;
                case OP_IS_FALSE:
                        any = (l == 5 && !strncasecmp(s, "false", 5)) || (l == 1 && s[0] == '0');
                        break;
                case OP_REGEX_MATCH:
                case OP_NOT_REGEX_MATCH: {
                        size_t caps[2 * EXPR_RE_MAX_GROUPS];
                        any = expr_regex_search(cl->re, s, l, 0, caps) == 1;
                        break;
                }
                case OP_GREATER_THAN:
                        any = int_of(&v[i], &x) && x > cl->num;
                        break;
                case OP_GREATER_THAN_OR_EQUALS:
                        any = int_of(&v[i], &x) && x >= cl->num;
                        break;
                case OP_LESS_THAN:
                        any = int_of(&v[i], &x) && x < cl->num;
                        break;
                case OP_LESS_THAN_OR_EQUALS:
                        any = int_of(&v[i], &x) && x <= cl->num;
                        break;
                case OP_STARTS_WITH:
                        any = l >= cl->vlen && memcmp(s, cl->value, cl->vlen) == 0;
                        break;
                case OP_ENDS_WITH:
                        any = l >= cl->vlen && memcmp(s + l - cl->vlen, cl->value, cl->vlen) == 0;
                        break;
                case OP_INCLUDES:
                case OP_NOT_INCLUDES:
                        any = cl->vlen == 0 || memmem(s, l, cl->value, cl->vlen) != NULL;
                        break;
                default:
                        break;
                }
        }
        if (cl->op == OP_NOT_EQUALS || cl->op == OP_NOT_REGEX_MATCH || cl->op == OP_NOT_INCLUDES)
                return !any;
        return any;
}

static bool starts_ci(const canopy_bytes *b, const char *p)
{
        size_t pl = strlen(p);
        return b->len >= pl && strncasecmp((const char *)b->data, p, pl) == 0;
}

/* Entra Connect's default exclusions for AD (ENTRA-DEFAULTS.md). Returns a
 * reason, or NULL when the object is not a system object. */
static const char *system_excluded(int t, const canopy_obj_view *obj)
{
        const canopy_bytes *v;
        size_t n;
        bool bin;
        if (view_get(obj, "iscriticalsystemobject", &v, &n, &bin) && has_value_ci(v, n, "true"))
                return "system object (isCriticalSystemObject)";
        if (obj->dn && (strstr(obj->dn, "\\0ACNF:") || strstr(obj->dn, "\\0acnf:") || strstr(obj->dn, "\nCNF:")))
                return "replication conflict object (CNF in the RDN)";
        if (view_get(obj, "admindescription", &v, &n, &bin)) {
                if (t == TY_USER && starts_ci(&v[0], "User_"))
                        return "adminDescription starts with User_";
                if (t == TY_GROUP && starts_ci(&v[0], "Group_"))
                        return "adminDescription starts with Group_";
        }
        if (t == TY_USER || t == TY_GROUP) {
                if (!view_get(obj, "samaccountname", &v, &n, &bin))
                        return "no sAMAccountName";
                if (t == TY_USER) {
                        if (starts_ci(&v[0], "AAD_") || starts_ci(&v[0], "MSOL_"))
                                return "service account (sAMAccountName AAD_/MSOL_)";
                        if (v[0].len == 16 && !strncasecmp((const char *)v[0].data, "SUPPORT_388945a0", 16))
                                return "service account (SUPPORT_388945a0)";
                }
        }
        if (view_get(obj, "mailnickname", &v, &n, &bin)) {
                if (starts_ci(&v[0], "SystemMailbox{"))
                        return "Exchange system mailbox (SystemMailbox{)";
                if (starts_ci(&v[0], "CAS_") && memchr(v[0].data, '}', v[0].len))
                        return "Exchange system mailbox (CAS_{...})";
        }
        if (view_get(obj, "msexchrecipienttypedetails", &v, &n, &bin)) {
                int64_t x;
                if (int_of(&v[0], &x) && (x == 8388608 || x == 536870912 || x == 17179869184LL || x == 274877906944LL))
                        return "Exchange system recipient type";
        }
        if (t == TY_GROUP) {
                int64_t gt = 0;
                bool security = view_get(obj, "grouptype", &v, &n, &bin) && int_of(&v[0], &gt) && (gt & 0x80000000LL);
                bool mail = view_get(obj, "mail", &v, &n, &bin);
                if (!security && !mail)
                        return "distribution group that is not mail-enabled";
                if (view_get(obj, "member", &v, &n, &bin) && n > 250000)
                        return "group with more than 250,000 members";
        }
        return NULL;
}

canopy_err canopy_rules_scope(const canopy_rules *r, const canopy_obj_view *obj, const canopy_scope_ctx *ctx,
                              canopy_scope_result *ret)
{
        memset(ret, 0, sizeof(*ret));
        const conn *c = find_conn(r, obj ? obj->connector : NULL);
        if (!c) {
                snprintf(ret->reason, sizeof(ret->reason), "unknown connector '%s'", obj && obj->connector ? obj->connector : "");
                return CANOPY_ERR_NOT_FOUND;
        }
        int t = classify(c, obj);
        if (t < 0) {
                snprintf(ret->reason, sizeof(ret->reason), "object class is not synchronized");
                return CANOPY_OK;
        }
        if (c->incl_norm.n || c->excl_norm.n || c->groups_norm.n) {
                size_t dl = 0;
                char *dn = obj->dn ? rules_dn_norm_alloc(obj->dn, &dl) : NULL;
                if (!dn) {
                        snprintf(ret->reason, sizeof(ret->reason), "DN missing or not valid");
                        return CANOPY_OK;
                }
                /* The deepest matching container decides (an excluded OU
                 * inside an included one excludes, and the reverse). */
                size_t best_in = 0, best_ex = 0, in_i = 0, ex_i = 0;
                for (size_t i = 0; i < c->incl_norm.n; i++)
                        if (rules_dn_norm_under(dn, dl, c->incl_norm.v[i], c->incl_nlen[i]) && c->incl_nlen[i] + 1 > best_in) {
                                best_in = c->incl_nlen[i] + 1;
                                in_i = i;
                        }
                for (size_t i = 0; i < c->excl_norm.n; i++)
                        if (rules_dn_norm_under(dn, dl, c->excl_norm.v[i], c->excl_nlen[i]) && c->excl_nlen[i] + 1 > best_ex) {
                                best_ex = c->excl_nlen[i] + 1;
                                ex_i = i;
                        }
                bool is_group_itself = false;
                for (size_t i = 0; i < c->groups_norm.n && !is_group_itself; i++)
                        is_group_itself = strcmp(dn, c->groups_norm.v[i]) == 0;
                free(dn);
                if (best_ex > best_in) {
                        snprintf(ret->reason, sizeof(ret->reason), "under excluded container '%s'", c->excl_raw.v[ex_i]);
                        return CANOPY_OK;
                }
                if (c->incl_norm.n && !best_in) {
                        snprintf(ret->reason, sizeof(ret->reason), "not under an included container");
                        return CANOPY_OK;
                }
                (void)in_i;
                if (c->groups_norm.n && !is_group_itself) {
                        bool member = false;
                        const canopy_bytes *v;
                        size_t n;
                        bool bin;
                        bool have_memberof = view_get(obj, "memberof", &v, &n, &bin);
                        for (size_t g = 0; g < c->groups_raw.n && !member; g++) {
                                if (ctx && ctx->is_direct_member) {
                                        member = ctx->is_direct_member(ctx->ctx, c->groups_raw.v[g], obj->dn);
                                } else if (have_memberof) {
                                        for (size_t k = 0; k < n && !member; k++) {
                                                if (v[k].len > CANOPY_DN_MAX)
                                                        continue;
                                                char tmp[CANOPY_DN_MAX + 1];
                                                memcpy(tmp, v[k].data, v[k].len);
                                                tmp[v[k].len] = '\0';
                                                size_t ml;
                                                char *mn = rules_dn_norm_alloc(tmp, &ml);
                                                member = mn && strcmp(mn, c->groups_norm.v[g]) == 0;
                                                free(mn);
                                        }
                                }
                        }
                        if (!member) {
                                snprintf(ret->reason, sizeof(ret->reason), "not a direct member of a scoping group");
                                return CANOPY_OK;
                        }
                }
        }
        if (c->sys_excl && c->pub.kind == CANOPY_CONN_AD) {
                const char *why = system_excluded(t, obj);
                if (why) {
                        snprintf(ret->reason, sizeof(ret->reason), "excluded by default: %s", why);
                        return CANOPY_OK;
                }
        }
        bool any_group = false;
        for (size_t g = 0; g < c->nfilters; g++) {
                const fgroup *fg = &c->filters[g];
                if (!(fg->types & (1u << t)))
                        continue;
                any_group = true;
                bool all = true;
                for (size_t k = 0; k < fg->n && all; k++)
                        all = clause_match(&fg->c[k], obj);
                if (all) {
                        ret->in_scope = true;
                        snprintf(ret->reason, sizeof(ret->reason), "in scope: filter group %zu matched", g + 1);
                        return CANOPY_OK;
                }
        }
        if (any_group) {
                snprintf(ret->reason, sizeof(ret->reason), "no scoping filter group matched");
                return CANOPY_OK;
        }
        ret->in_scope = true;
        snprintf(ret->reason, sizeof(ret->reason), "in scope");
        return CANOPY_OK;
}

/* ---- joins ------------------------------------------------------------------------- */

void canopy_rules_join_rules(const canopy_rules *r, const char *connector, const char *object_type,
                             const canopy_join_rule **ret, size_t *ret_n)
{
        const conn *c = find_conn(r, connector);
        int t = type_index(object_type);
        *ret = NULL;
        *ret_n = 0;
        if (!c || t < 0)
                return;
        *ret = c->t[t].joins;
        *ret_n = c->t[t].njoins;
}

canopy_err canopy_rules_join_values(const canopy_rules *r, const canopy_join_rule *rule, const canopy_obj_view *obj,
                                    canopy_arena *a, const char *const **ret, size_t *ret_n)
{
        *ret = NULL;
        *ret_n = 0;
        if (rule->is_anchor) {
                canopy_bytes b;
                if (canopy_rules_anchor(r, obj, a, &b))
                        return CANOPY_OK;
                size_t l;
                const char **out = canopy_arena_alloc(a, sizeof(*out));
                if (!out || !(out[0] = text_base64(a, b.data, b.len, &l)))
                        return CANOPY_ERR_LIMIT;
                *ret = out;
                *ret_n = 1;
                return CANOPY_OK;
        }
        const canopy_bytes *v;
        size_t n;
        bool bin;
        if (!view_get(obj, rule->source, &v, &n, &bin))
                return CANOPY_OK;
        const char **out = canopy_arena_alloc(a, n * sizeof(*out));
        if (!out)
                return CANOPY_ERR_LIMIT;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                size_t l;
                if (bin) {
                        out[k] = text_base64(a, v[i].data, v[i].len, &l);
                } else {
                        const char *s = (const char *)v[i].data;
                        size_t sl = v[i].len;
                        while (sl && isspace((unsigned char)*s))
                                s++, sl--;
                        while (sl && isspace((unsigned char)s[sl - 1]))
                                sl--;
                        if (!sl)
                                continue;
                        out[k] = text_case(a, s, sl, false, &l);
                }
                if (!out[k])
                        return CANOPY_ERR_LIMIT;
                k++;
        }
        *ret = out;
        *ret_n = k;
        return CANOPY_OK;
}

/* ---- attribute flow ------------------------------------------------------------------ */

static bool is_collection(const char *target)
{
        static const char *const coll[] = {"businessPhones", "proxyAddresses", "otherMails", "imAddresses", "members"};
        for (size_t i = 0; i < sizeof(coll) / sizeof(coll[0]); i++)
                if (!strcmp(coll[i], target))
                        return true;
        return false;
}

typedef struct cand {
        const flow *f;
        const canopy_obj_view *v;
        const char *connector;
        int prec;
        size_t ci, order;
} cand;

static int cand_cmp(const void *a, const void *b)
{
        const cand *x = a, *y = b;
        if (x->prec != y->prec)
                return x->prec < y->prec ? -1 : 1;
        if (x->ci != y->ci)
                return x->ci < y->ci ? -1 : 1;
        return x->order < y->order ? -1 : x->order > y->order;
}

canopy_err canopy_rules_compute(const canopy_rules *r, const char *object_type, const canopy_obj_view *const *contribs,
                                size_t ncontribs, const canopy_eval_ctx *ctx, canopy_arena *a,
                                canopy_rules_desired *ret, char *ret_msg, size_t msgcap)
{
        ret->props = NULL;
        ret->n = 0;
        if (ret_msg && msgcap)
                ret_msg[0] = '\0';
        int t = type_index(object_type);
        if (!r || t < 0)
                return CANOPY_ERR_INVALID_ARG;
        /* Views with their anchors resolved (for [sourceAnchor]). */
        canopy_obj_view *views = canopy_arena_alloc(a, (ncontribs + 1) * sizeof(*views));
        canopy_bytes *anchors = canopy_arena_alloc(a, (ncontribs + 1) * sizeof(*anchors));
        const conn **conns = canopy_arena_alloc(a, (ncontribs + 1) * sizeof(*conns));
        size_t *cidx = canopy_arena_alloc(a, (ncontribs + 1) * sizeof(*cidx));
        const strlist *targets = &r->targets[t];
        canopy_rules_prop *props = canopy_arena_alloc(a, (targets->n + 1) * sizeof(*props));
        cand *cands = canopy_arena_alloc(a, (ncontribs + 1) * sizeof(*cands));
        if (!views || !anchors || !conns || !cidx || !props || !cands)
                return CANOPY_ERR_LIMIT;
        for (size_t i = 0; i < ncontribs; i++) {
                views[i] = *contribs[i];
                conns[i] = find_conn(r, views[i].connector);
                cidx[i] = conns[i] ? (size_t)(conns[i] - r->c) : 0;
                if (conns[i] && !views[i].anchor && canopy_rules_anchor(r, &views[i], a, &anchors[i]) == CANOPY_OK)
                        views[i].anchor = &anchors[i];
        }
        size_t np = 0;
        for (size_t ti = 0; ti < targets->n; ti++) {
                const char *target = targets->v[ti];
                size_t nc = 0;
                for (size_t i = 0; i < ncontribs; i++) {
                        if (!conns[i])
                                continue;
                        const typerules *tr = &conns[i]->t[t];
                        int fi = tr->tmap ? tr->tmap[ti] : -1;
                        if (fi < 0)
                                continue;
                        const flow *fl = &tr->flows[fi];
                        cands[nc].f = fl;
                        cands[nc].v = &views[i];
                        cands[nc].connector = conns[i]->id;
                        cands[nc].prec = fl->has_prec ? fl->precedence : conns[i]->pub.precedence;
                        cands[nc].ci = cidx[i];
                        cands[nc].order = i;
                        nc++;
                }
                if (nc == 0)
                        continue;
                if (nc > 1)
                        qsort(cands, nc, sizeof(*cands), cand_cmp);
                canopy_rules_prop *p = &props[np];
                p->name = target;
                p->value.type = CANOPY_V_NULL;
                p->connector = NULL;
                p->create_only = false;
                bool any_flow = false, all_create_only = true;
                for (size_t k = 0; k < nc; k++) {
                        canopy_eval_ctx ec = ctx ? *ctx : (canopy_eval_ctx){0};
                        ec.property = target;
                        canopy_value v;
                        canopy_expr_error ee;
                        canopy_err err = canopy_expr_eval_at(cands[k].f->expr, cands[k].v, &ec, a, &v, &ee);
                        if (err == CANOPY_ERR_EXPR_SKIP)
                                continue;
                        if (err) {
                                const flow *f = cands[k].f;
                                if (ret_msg && msgcap && f->line && f->exact)
                                        snprintf(ret_msg, msgcap, "%s:%u:%u: %s (connector %s): %s", f->file, f->line,
                                                 f->col + (unsigned)ee.pos, target, cands[k].connector, ee.msg);
                                else if (ret_msg && msgcap && f->line)
                                        snprintf(ret_msg, msgcap, "%s:%u:%u: %s (connector %s), at offset %zu of the "
                                                 "expression: %s", f->file, f->line, f->col, target,
                                                 cands[k].connector, ee.pos, ee.msg);
                                else if (ret_msg && msgcap)
                                        snprintf(ret_msg, msgcap, "%s (connector %s): %s", target, cands[k].connector,
                                                 ee.msg);
                                return err;
                        }
                        any_flow = true;
                        if (!cands[k].f->create_only)
                                all_create_only = false;
                        if (v.type == CANOPY_V_NULL || (v.type == CANOPY_V_MULTI && v.u.multi.n == 0))
                                continue;
                        if (v.type == CANOPY_V_MULTI && !is_collection(target))
                                v = v.u.multi.items[0];
                        p->value = v;
                        p->connector = cands[k].connector;
                        p->create_only = cands[k].f->create_only;
                        break;
                }
                if (!p->connector) {
                        /* No value: clear the property, unless every flow was
                         * skipped or only applies on create. */
                        if (!any_flow || all_create_only)
                                continue;
                }
                np++;
        }
        ret->props = props;
        ret->n = np;
        return CANOPY_OK;
}

const canopy_rules_prop *canopy_rules_desired_get(const canopy_rules_desired *d, const char *name)
{
        for (size_t i = 0; d && i < d->n; i++)
                if (!strcmp(d->props[i].name, name))
                        return &d->props[i];
        return NULL;
}

void canopy_rules_targets(const canopy_rules *r, const char *object_type, const char *const **ret, size_t *ret_n)
{
        int t = type_index(object_type);
        *ret = NULL;
        *ret_n = 0;
        if (!r || t < 0)
                return;
        *ret = (const char *const *)r->targets[t].v;
        *ret_n = r->targets[t].n;
}

const char *canopy_rules_member_attribute(const canopy_rules *r, const char *connector, const char *object_type)
{
        const conn *c = find_conn(r, connector);
        if (!c || type_index(object_type) != TY_GROUP)
                return NULL;
        return c->member_attr;
}
