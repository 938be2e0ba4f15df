/* expr.c: Entra mapping expressions: parser, type checker, printer, and
 * the object-view helpers. Evaluation lives in expr_eval.c.
 *
 * Grammar:
 *   expr    := concat (cmpop concat)*          cmpop: = <> < <= > >=
 *   concat  := primary ('&' primary)*
 *   primary := STRING | NUMBER | &Hhex | [attr] | True | False
 *            | Name '(' [arg (',' arg)*] ')' | Name (bare constant) | '(' expr ')'
 *   arg     := expr | (nothing: a left-out argument)
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "expr_int.h"

const char *const expr_enum_names[] = {"vbTextCompare", "vbBinaryCompare", "Unicode", "ASCII", "UTF8"};

struct canopy_expr {
        node *root;
        char **attrs; /* unique lower-case names read */
        size_t nattrs;
};

typedef struct parser {
        const char *s;
        size_t len, pos;
        canopy_err err;
        canopy_expr_error *e;
        int depth;
        const canopy_expr_env *env;
        canopy_expr *x;
} parser;

static void perr(parser *p, canopy_err code, size_t pos, const char *fmt, ...)
{
        if (p->err)
                return;
        p->err = code;
        if (p->e) {
                p->e->pos = pos;
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(p->e->msg, sizeof(p->e->msg), fmt, ap);
                va_end(ap);
        }
}

static void node_free(node *n)
{
        if (!n)
                return;
        switch (n->kind) {
        case N_STR:
                free(n->u.str.s);
                break;
        case N_ATTR:
                free(n->u.attr.name);
                free(n->u.attr.orig);
                break;
        case N_CALL:
                for (size_t i = 0; i < n->u.call.nargs; i++)
                        node_free(n->u.call.args[i]);
                free(n->u.call.args);
                expr_regex_free(n->u.call.re);
                break;
        case N_BINOP:
                node_free(n->u.bin.l);
                node_free(n->u.bin.r);
                break;
        default:
                break;
        }
        free(n);
}

static node *node_new(parser *p, node_kind k, size_t pos)
{
        node *n = calloc(1, sizeof(*n));
        if (!n) {
                perr(p, CANOPY_ERR_NOMEM, pos, "out of memory");
                return NULL;
        }
        n->kind = k;
        n->pos = pos;
        return n;
}

static void skip_ws(parser *p)
{
        while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                                   p->s[p->pos] == '\r'))
                p->pos++;
}

static bool is_ident_start(char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_ident(char c)
{
        return is_ident_start(c) || (c >= '0' && c <= '9');
}

static node *parse_expr(parser *p);

static node *parse_string(parser *p)
{
        size_t start = p->pos++;
        char *buf = malloc(p->len - start + 1);
        if (!buf) {
                perr(p, CANOPY_ERR_NOMEM, start, "out of memory");
                return NULL;
        }
        size_t o = 0;
        for (;;) {
                if (p->pos >= p->len) {
                        free(buf);
                        perr(p, CANOPY_ERR_RULES_SYNTAX, start, "unterminated string literal");
                        return NULL;
                }
                char c = p->s[p->pos++];
                if (c == '"')
                        break;
                if (c == '\\' && p->pos < p->len && (p->s[p->pos] == '"' || p->s[p->pos] == '\\')) {
                        buf[o++] = p->s[p->pos++];
                        continue;
                }
                buf[o++] = c;
        }
        buf[o] = '\0';
        node *n = node_new(p, N_STR, start);
        if (!n) {
                free(buf);
                return NULL;
        }
        n->u.str.s = buf;
        n->u.str.len = o;
        return n;
}

static node *parse_number(parser *p)
{
        size_t start = p->pos;
        bool neg = false;
        uint64_t v = 0;
        if (p->s[p->pos] == '&') {
                p->pos += 2; /* &H */
                size_t d0 = p->pos;
                while (p->pos < p->len && isxdigit((unsigned char)p->s[p->pos])) {
                        if (v >> 60) {
                                perr(p, CANOPY_ERR_RULES_SYNTAX, start, "number too large");
                                return NULL;
                        }
                        char c = p->s[p->pos++];
                        v = v * 16 + (uint64_t)(isdigit((unsigned char)c) ? c - '0' : (tolower((unsigned char)c) - 'a' + 10));
                }
                if (p->pos == d0) {
                        perr(p, CANOPY_ERR_RULES_SYNTAX, start, "expected hexadecimal digits after &H");
                        return NULL;
                }
        } else {
                if (p->s[p->pos] == '-') {
                        neg = true;
                        p->pos++;
                }
                size_t d0 = p->pos;
                while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos])) {
                        uint64_t nv = v * 10 + (uint64_t)(p->s[p->pos] - '0');
                        if (nv / 10 != v || nv > (uint64_t)INT64_MAX + (neg ? 1u : 0u)) {
                                perr(p, CANOPY_ERR_RULES_SYNTAX, start, "number too large");
                                return NULL;
                        }
                        v = nv;
                        p->pos++;
                }
                if (p->pos == d0) {
                        perr(p, CANOPY_ERR_RULES_SYNTAX, start, "expected a digit after '-'");
                        return NULL;
                }
                if (p->pos < p->len && (is_ident(p->s[p->pos]) || p->s[p->pos] == '.')) {
                        perr(p, CANOPY_ERR_RULES_SYNTAX, p->pos, "unexpected character in number");
                        return NULL;
                }
        }
        node *n = node_new(p, N_INT, start);
        if (!n)
                return NULL;
        n->u.i = neg ? (int64_t)(0 - v) : (int64_t)v;
        return n;
}

static node *parse_attr(parser *p)
{
        size_t start = p->pos++;
        size_t b = p->pos;
        while (p->pos < p->len && p->s[p->pos] != ']' && p->s[p->pos] != '\n' && p->s[p->pos] != '[')
                p->pos++;
        if (p->pos >= p->len || p->s[p->pos] != ']') {
                perr(p, CANOPY_ERR_RULES_SYNTAX, start, "unterminated attribute reference (missing ])");
                return NULL;
        }
        size_t e = p->pos++;
        while (b < e && (p->s[b] == ' ' || p->s[b] == '\t'))
                b++;
        while (e > b && (p->s[e - 1] == ' ' || p->s[e - 1] == '\t'))
                e--;
        if (b == e) {
                perr(p, CANOPY_ERR_RULES_SYNTAX, start, "empty attribute name");
                return NULL;
        }
        for (size_t i = b; i < e; i++) {
                unsigned char c = (unsigned char)p->s[i];
                if (c < 0x20 || c == '"' || c == '(' || c == ')' || c == ',') {
                        perr(p, CANOPY_ERR_RULES_SYNTAX, i, "invalid character in attribute name");
                        return NULL;
                }
        }
        node *n = node_new(p, N_ATTR, start);
        if (!n)
                return NULL;
        n->u.attr.orig = strndup(p->s + b, e - b);
        n->u.attr.name = strndup(p->s + b, e - b);
        if (!n->u.attr.orig || !n->u.attr.name) {
                node_free(n);
                perr(p, CANOPY_ERR_NOMEM, start, "out of memory");
                return NULL;
        }
        for (char *q = n->u.attr.name; *q; q++)
                *q = (char)tolower((unsigned char)*q);
        return n;
}

static bool is_arg_end(parser *p)
{
        skip_ws(p);
        return p->pos < p->len && (p->s[p->pos] == ',' || p->s[p->pos] == ')');
}

static node *parse_call_or_name(parser *p)
{
        size_t start = p->pos;
        while (p->pos < p->len && is_ident(p->s[p->pos]))
                p->pos++;
        size_t nlen = p->pos - start;
        const char *name = p->s + start;
        size_t save = p->pos;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == '(') {
                const expr_func *fn = expr_func_find(name, nlen);
                if (!fn) {
                        perr(p, CANOPY_ERR_RULES_SEMANTIC, start, "unknown function '%.*s'", (int)nlen, name);
                        return NULL;
                }
                p->pos++;
                node *n = node_new(p, N_CALL, start);
                if (!n)
                        return NULL;
                n->u.call.fn = fn;
                skip_ws(p);
                if (p->pos < p->len && p->s[p->pos] == ')') {
                        p->pos++;
                        return n;
                }
                for (;;) {
                        if (n->u.call.nargs >= CANOPY_EXPR_MAX_ARGS) {
                                perr(p, CANOPY_ERR_LIMIT, p->pos, "too many arguments (max %u)", CANOPY_EXPR_MAX_ARGS);
                                node_free(n);
                                return NULL;
                        }
                        node *arg;
                        if (is_arg_end(p)) {
                                arg = node_new(p, N_EMPTY, p->pos);
                        } else {
                                arg = parse_expr(p);
                        }
                        if (!arg) {
                                node_free(n);
                                return NULL;
                        }
                        node **na = realloc(n->u.call.args, (n->u.call.nargs + 1) * sizeof(*na));
                        if (!na) {
                                node_free(arg);
                                node_free(n);
                                perr(p, CANOPY_ERR_NOMEM, start, "out of memory");
                                return NULL;
                        }
                        n->u.call.args = na;
                        na[n->u.call.nargs++] = arg;
                        skip_ws(p);
                        if (p->pos < p->len && p->s[p->pos] == ',') {
                                p->pos++;
                                continue;
                        }
                        if (p->pos < p->len && p->s[p->pos] == ')') {
                                p->pos++;
                                return n;
                        }
                        perr(p, CANOPY_ERR_RULES_SYNTAX, p->pos,
                             p->pos >= p->len ? "missing ) to close %.*s(" : "expected , or ) in call of %.*s",
                             (int)nlen, name);
                        node_free(n);
                        return NULL;
                }
        }
        p->pos = save;
        if (nlen == 4 && strncasecmp(name, "true", 4) == 0) {
                node *n = node_new(p, N_BOOL, start);
                if (n)
                        n->u.b = true;
                return n;
        }
        if (nlen == 5 && strncasecmp(name, "false", 5) == 0) {
                node *n = node_new(p, N_BOOL, start);
                if (n)
                        n->u.b = false;
                return n;
        }
        for (int i = 0; i < 5; i++) {
                if (strlen(expr_enum_names[i]) == nlen && strncasecmp(expr_enum_names[i], name, nlen) == 0) {
                        node *n = node_new(p, N_ENUM, start);
                        if (n)
                                n->u.enumv = i;
                        return n;
                }
        }
        if (expr_func_find(name, nlen))
                perr(p, CANOPY_ERR_RULES_SYNTAX, p->pos, "expected ( after function name '%.*s'", (int)nlen, name);
        else
                perr(p, CANOPY_ERR_RULES_SEMANTIC, start, "unknown name '%.*s' (attributes are written [%.*s])",
                     (int)nlen, name, (int)nlen, name);
        return NULL;
}

static node *parse_primary(parser *p)
{
        skip_ws(p);
        if (p->pos >= p->len) {
                perr(p, CANOPY_ERR_RULES_SYNTAX, p->pos, "unexpected end of expression");
                return NULL;
        }
        char c = p->s[p->pos];
        if (c == '"')
                return parse_string(p);
        if (c == '[')
                return parse_attr(p);
        if (isdigit((unsigned char)c) || (c == '-' && p->pos + 1 < p->len && isdigit((unsigned char)p->s[p->pos + 1])))
                return parse_number(p);
        if (c == '&' && p->pos + 1 < p->len && (p->s[p->pos + 1] == 'H' || p->s[p->pos + 1] == 'h'))
                return parse_number(p);
        if (is_ident_start(c))
                return parse_call_or_name(p);
        if (c == '(') {
                size_t start = p->pos++;
                node *n = parse_expr(p);
                if (!n)
                        return NULL;
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ')') {
                        node_free(n);
                        perr(p, CANOPY_ERR_RULES_SYNTAX, start, "missing ) to close (");
                        return NULL;
                }
                p->pos++;
                return n;
        }
        perr(p, CANOPY_ERR_RULES_SYNTAX, p->pos, "unexpected character '%c'", c);
        return NULL;
}

static node *mk_bin(parser *p, binop op, size_t pos, node *l, node *r)
{
        node *n = node_new(p, N_BINOP, pos);
        if (!n) {
                node_free(l);
                node_free(r);
                return NULL;
        }
        n->u.bin.op = op;
        n->u.bin.l = l;
        n->u.bin.r = r;
        return n;
}

static node *parse_concat(parser *p)
{
        node *l = parse_primary(p);
        while (l) {
                skip_ws(p);
                if (p->pos < p->len && p->s[p->pos] == '&' &&
                    !(p->pos + 1 < p->len && (p->s[p->pos + 1] == 'H' || p->s[p->pos + 1] == 'h'))) {
                        size_t pos = p->pos++;
                        node *r = parse_primary(p);
                        if (!r) {
                                node_free(l);
                                return NULL;
                        }
                        l = mk_bin(p, OP_CAT, pos, l, r);
                } else {
                        break;
                }
        }
        return l;
}

static node *parse_expr(parser *p)
{
        if (++p->depth > (int)CANOPY_EXPR_MAX_DEPTH) {
                perr(p, CANOPY_ERR_LIMIT, p->pos, "expression nested too deeply (max %u)", CANOPY_EXPR_MAX_DEPTH);
                return NULL;
        }
        node *l = parse_concat(p);
        while (l) {
                skip_ws(p);
                if (p->pos >= p->len)
                        break;
                const char *s = p->s + p->pos;
                size_t rem = p->len - p->pos;
                binop op;
                size_t w = 1;
                if (s[0] == '=')
                        op = OP_EQ;
                else if (rem > 1 && s[0] == '<' && s[1] == '>')
                        op = OP_NE, w = 2;
                else if (rem > 1 && s[0] == '<' && s[1] == '=')
                        op = OP_LE, w = 2;
                else if (rem > 1 && s[0] == '>' && s[1] == '=')
                        op = OP_GE, w = 2;
                else if (s[0] == '<')
                        op = OP_LT;
                else if (s[0] == '>')
                        op = OP_GT;
                else
                        break;
                size_t pos = p->pos;
                p->pos += w;
                node *r = parse_concat(p);
                if (!r) {
                        node_free(l);
                        return NULL;
                }
                l = mk_bin(p, op, pos, l, r);
        }
        p->depth--;
        return l;
}

/* ---- type checking ------------------------------------------------------ */

static stype static_type(const node *n)
{
        switch (n->kind) {
        case N_STR: return T_STR;
        case N_INT: return T_NUM;
        case N_BOOL: return T_BOOL;
        case N_CALL: return n->u.call.fn->ret;
        case N_BINOP: return n->u.bin.op == OP_CAT ? T_STR : T_BOOL;
        default: return T_ANY;
        }
}

static bool str_is_int(const char *s, size_t len)
{
        size_t i = 0;
        while (i < len && s[i] == ' ')
                i++;
        if (i < len && (s[i] == '-' || s[i] == '+'))
                i++;
        size_t d = i;
        while (i < len && isdigit((unsigned char)s[i]))
                i++;
        while (i < len && s[i] == ' ')
                i++;
        return i == len && i > d;
}

static bool add_attr(parser *p, const char *name)
{
        canopy_expr *x = p->x;
        for (size_t i = 0; i < x->nattrs; i++)
                if (strcmp(x->attrs[i], name) == 0)
                        return true;
        char **na = realloc(x->attrs, (x->nattrs + 1) * sizeof(*na));
        if (!na)
                return false;
        x->attrs = na;
        na[x->nattrs] = strdup(name);
        if (!na[x->nattrs])
                return false;
        x->nattrs++;
        return true;
}

static void check(parser *p, node *n, bool top)
{
        if (p->err)
                return;
        if (n->kind == N_ATTR) {
                if (!add_attr(p, n->u.attr.name)) {
                        perr(p, CANOPY_ERR_NOMEM, n->pos, "out of memory");
                        return;
                }
                if (p->env && p->env->attributes && strcmp(n->u.attr.name, "dn") != 0 &&
                    strcmp(n->u.attr.name, "sourceanchor") != 0) {
                        bool found = false;
                        for (size_t i = 0; i < p->env->nattributes && !found; i++)
                                found = strcasecmp(p->env->attributes[i], n->u.attr.name) == 0;
                        if (!found)
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos + 1,
                                     "unknown attribute '%s' (not in the connector's attribute list)", n->u.attr.orig);
                }
                return;
        }
        if (n->kind == N_BINOP) {
                check(p, n->u.bin.l, false);
                check(p, n->u.bin.r, false);
                if (n->u.bin.l->kind == N_EMPTY || n->u.bin.r->kind == N_EMPTY)
                        perr(p, CANOPY_ERR_RULES_SYNTAX, n->pos, "operator without operand");
                return;
        }
        if (n->kind == N_ENUM) {
                perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos, "constant '%s' is only valid as a function argument",
                     expr_enum_names[n->u.enumv]);
                return;
        }
        if (n->kind != N_CALL)
                return;
        const expr_func *fn = n->u.call.fn;
        size_t na = n->u.call.nargs;
        if ((int)na < fn->min || (fn->max >= 0 && (int)na > fn->max)) {
                if (fn->min == fn->max)
                        perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos, "%s takes %d argument%s, not %zu", fn->name, fn->min,
                             fn->min == 1 ? "" : "s", na);
                else if (fn->max < 0)
                        perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos, "%s takes at least %d arguments, not %zu", fn->name,
                             fn->min, na);
                else
                        perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos, "%s takes %d to %d arguments, not %zu", fn->name,
                             fn->min, fn->max, na);
                return;
        }
        if (fn->fn && strcmp(fn->name, "Switch") == 0 && na % 2 != 0) {
                perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos,
                     "Switch takes source, default, then key/value pairs (an even number of arguments), not %zu", na);
                return;
        }
        if ((fn->flags & EF_TOPLEVEL) && !top) {
                perr(p, CANOPY_ERR_RULES_SEMANTIC, n->pos, "%s must be the outermost function (it cannot be nested)",
                     fn->name);
                return;
        }
        size_t plen = strlen(fn->params);
        for (size_t i = 0; i < na && !p->err; i++) {
                node *a = n->u.call.args[i];
                char want = plen ? fn->params[i < plen ? i : plen - 1] : 'a';
                if (want == 'r' && na == 3)
                        want = 's'; /* Replace(source, old, new) */
                if (a->kind == N_ENUM) {
                        if (want != 'e')
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "constant '%s' is not valid here",
                                     expr_enum_names[a->u.enumv]);
                        else if ((i == 3) != (a->u.enumv <= EN_VBBINARY))
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "constant '%s' is not valid for %s",
                                     expr_enum_names[a->u.enumv], fn->name);
                        continue;
                }
                if (want == 'e' && a->kind != N_EMPTY) {
                        perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "argument %zu of %s must be %s", i + 1, fn->name,
                             i == 3 ? "vbTextCompare or vbBinaryCompare" : "Unicode, ASCII or UTF8");
                        continue;
                }
                check(p, a, false);
                if (p->err)
                        return;
                stype t = static_type(a);
                switch (want) {
                case 'n':
                        if ((a->kind == N_STR && !str_is_int(a->u.str.s, a->u.str.len)) || t == T_BOOL || t == T_MULTI)
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "argument %zu of %s must be a number", i + 1,
                                     fn->name);
                        break;
                case 'b':
                        if (a->kind == N_STR && strcasecmp(a->u.str.s, "true") != 0 && strcasecmp(a->u.str.s, "false") != 0)
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "argument %zu of %s must be a boolean", i + 1,
                                     fn->name);
                        break;
                case 's':
                        if (t == T_VOID)
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "argument %zu of %s has no value", i + 1, fn->name);
                        break;
                case 'r':
                        if (a->kind == N_EMPTY)
                                break;
                        if (a->kind != N_STR) {
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "argument %zu of %s must be a regex string literal",
                                     i + 1, fn->name);
                                break;
                        }
                        {
                                char msg[160];
                                size_t epos = 0;
                                expr_regex *re = expr_regex_compile(a->u.str.s, a->u.str.len, msg, sizeof(msg), &epos);
                                if (!re)
                                        perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos + 1, "bad regular expression: %s", msg);
                                else
                                        n->u.call.re = re;
                        }
                        break;
                case 'i':
                        if (a->kind == N_STR) {
                                static const char *const iv[] = {"yyyy", "m", "d", "ww", "h", "n", "s", "q", "y", "w"};
                                bool ok = false;
                                for (size_t k = 0; k < sizeof(iv) / sizeof(iv[0]) && !ok; k++)
                                        ok = strcmp(iv[k], a->u.str.s) == 0;
                                if (!ok)
                                        perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos,
                                             "unknown interval \"%s\" (yyyy, m, d, ww, h, n, s)", a->u.str.s);
                        } else if (t == T_NUM || t == T_BOOL) {
                                perr(p, CANOPY_ERR_RULES_SEMANTIC, a->pos, "argument %zu of %s must be an interval string",
                                     i + 1, fn->name);
                        }
                        break;
                default:
                        break;
                }
        }
}

/* ---- printer -------------------------------------------------------------- */

typedef struct sbuf {
        char *s;
        size_t len, cap;
        bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
        if (b->oom)
                return;
        if (b->len + n + 1 > b->cap) {
                size_t nc = b->cap ? b->cap * 2 : 128;
                while (nc < b->len + n + 1)
                        nc *= 2;
                char *ns = realloc(b->s, nc);
                if (!ns) {
                        b->oom = true;
                        return;
                }
                b->s = ns;
                b->cap = nc;
        }
        memcpy(b->s + b->len, s, n);
        b->len += n;
        b->s[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
        sb_put(b, s, strlen(s));
}

static const char *const op_text[] = {" = ", " <> ", " < ", " <= ", " > ", " >= ", " & "};

static void print_node(sbuf *b, const node *n)
{
        char tmp[32];
        switch (n->kind) {
        case N_STR:
                sb_put(b, "\"", 1);
                for (size_t i = 0; i < n->u.str.len; i++) {
                        char c = n->u.str.s[i];
                        if (c == '"' || c == '\\')
                                sb_put(b, "\\", 1);
                        sb_put(b, &c, 1);
                }
                sb_put(b, "\"", 1);
                break;
        case N_INT:
                snprintf(tmp, sizeof(tmp), "%lld", (long long)n->u.i);
                sb_puts(b, tmp);
                break;
        case N_BOOL:
                sb_puts(b, n->u.b ? "True" : "False");
                break;
        case N_ATTR:
                sb_put(b, "[", 1);
                sb_puts(b, n->u.attr.orig);
                sb_put(b, "]", 1);
                break;
        case N_ENUM:
                sb_puts(b, expr_enum_names[n->u.enumv]);
                break;
        case N_EMPTY:
                break;
        case N_BINOP:
                sb_put(b, "(", 1);
                print_node(b, n->u.bin.l);
                sb_puts(b, op_text[n->u.bin.op]);
                print_node(b, n->u.bin.r);
                sb_put(b, ")", 1);
                break;
        case N_CALL:
                sb_puts(b, n->u.call.fn->name);
                sb_put(b, "(", 1);
                for (size_t i = 0; i < n->u.call.nargs; i++) {
                        if (i)
                                sb_put(b, n->u.call.args[i]->kind == N_EMPTY ? "," : ", ", n->u.call.args[i]->kind == N_EMPTY ? 1 : 2);
                        print_node(b, n->u.call.args[i]);
                }
                sb_put(b, ")", 1);
                break;
        }
}

char *canopy_expr_print(const canopy_expr *e)
{
        if (!e)
                return NULL;
        sbuf b = {0};
        print_node(&b, e->root);
        if (b.oom) {
                free(b.s);
                return NULL;
        }
        if (!b.s)
                return strdup("");
        return b.s;
}

/* ---- API ------------------------------------------------------------------ */

void canopy_expr_free(canopy_expr *e)
{
        if (!e)
                return;
        node_free(e->root);
        for (size_t i = 0; i < e->nattrs; i++)
                free(e->attrs[i]);
        free(e->attrs);
        free(e);
}

canopy_err canopy_expr_compile(const char *src, size_t len, const canopy_expr_env *env, canopy_expr **ret,
                               canopy_expr_error *ret_error)
{
        canopy_expr_error dummy;
        if (!ret_error)
                ret_error = &dummy;
        memset(ret_error, 0, sizeof(*ret_error));
        *ret = NULL;
        if (!src)
                return CANOPY_ERR_INVALID_ARG;
        if (len > CANOPY_EXPR_MAX_SOURCE) {
                snprintf(ret_error->msg, sizeof(ret_error->msg), "expression longer than %u bytes", CANOPY_EXPR_MAX_SOURCE);
                return CANOPY_ERR_LIMIT;
        }
        if (memchr(src, '\0', len)) {
                ret_error->pos = (size_t)((const char *)memchr(src, '\0', len) - src);
                snprintf(ret_error->msg, sizeof(ret_error->msg), "NUL byte in expression");
                return CANOPY_ERR_RULES_SYNTAX;
        }
        canopy_expr *x = calloc(1, sizeof(*x));
        if (!x)
                return CANOPY_ERR_NOMEM;
        parser p = {.s = src, .len = len, .e = ret_error, .env = env, .x = x};
        skip_ws(&p);
        if (p.pos >= len) {
                perr(&p, CANOPY_ERR_RULES_SYNTAX, 0, "empty expression");
        } else {
                x->root = parse_expr(&p);
                if (x->root) {
                        skip_ws(&p);
                        if (p.pos < len)
                                perr(&p, CANOPY_ERR_RULES_SYNTAX, p.pos, "unexpected text after the expression");
                }
                if (!p.err)
                        check(&p, x->root, true);
        }
        if (p.err) {
                canopy_expr_free(x);
                return p.err;
        }
        *ret = x;
        return CANOPY_OK;
}

size_t canopy_expr_attributes(const canopy_expr *e, const char *const **ret_names)
{
        *ret_names = (const char *const *)e->attrs;
        return e->nattrs;
}

static canopy_err eval_root(const canopy_expr *e, const canopy_obj_view *obj, const canopy_eval_ctx *ctx,
                            canopy_arena *a, canopy_value *ret, char *ret_msg, size_t msgcap, size_t *ret_pos)
{
        static const canopy_eval_ctx noctx;
        eval_ctx c = {.obj = obj, .ectx = ctx ? ctx : &noctx, .a = a, .msg = ret_msg, .msgcap = msgcap};
        if (ret_msg && msgcap)
                ret_msg[0] = '\0';
        ret->type = CANOPY_V_NULL;
        canopy_err err = expr_eval_node(&c, e->root, ret);
        if (ret_pos)
                *ret_pos = c.err_set ? c.err_pos : e->root->pos;
        return err;
}

canopy_err canopy_expr_eval(const canopy_expr *e, const canopy_obj_view *obj, const canopy_eval_ctx *ctx,
                            canopy_arena *a, canopy_value *ret, char *ret_msg, size_t msgcap)
{
        return eval_root(e, obj, ctx, a, ret, ret_msg, msgcap, NULL);
}

canopy_err canopy_expr_eval_at(const canopy_expr *e, const canopy_obj_view *obj, const canopy_eval_ctx *ctx,
                               canopy_arena *a, canopy_value *ret, canopy_expr_error *ret_err)
{
        ret_err->pos = 0;
        return eval_root(e, obj, ctx, a, ret, ret_err->msg, sizeof(ret_err->msg), &ret_err->pos);
}

char *canopy_expr_format_error(const char *name, const char *src, size_t len, unsigned line, unsigned col,
                               const canopy_expr_error *err)
{
        size_t pos = err->pos > len ? len : err->pos;
        /* Find the line of the error inside the expression. */
        size_t ls = 0;
        unsigned l = line, c = col;
        for (size_t i = 0; i < pos; i++) {
                if (src[i] == '\n') {
                        l++;
                        ls = i + 1;
                        c = 1;
                }
        }
        if (ls == 0)
                c = col + (unsigned)pos;
        else
                c = (unsigned)(pos - ls) + 1;
        size_t le = ls;
        while (le < len && src[le] != '\n')
                le++;
        size_t caret = pos - ls;
        size_t indent = ls == 0 && col > 1 ? col - 1 : 0;
        size_t need = strlen(name ? name : "") + 64 + strlen(err->msg) + (le - ls) + 2 * (indent + caret) + 8;
        char *out = malloc(need);
        if (!out)
                return NULL;
        int n = snprintf(out, need, "%s:%u:%u: error: %s\n%*s%.*s\n", name ? name : "<expr>", l, c, err->msg,
                         (int)indent, "", (int)(le - ls), src + ls);
        size_t o = n > 0 ? (size_t)n : 0;
        for (size_t i = 0; i < indent + caret && o + 3 < need; i++)
                out[o++] = (i >= indent && src[ls + i - indent] == '\t') ? '\t' : ' ';
        out[o++] = '^';
        out[o++] = '\n';
        out[o] = '\0';
        return out;
}

/* ---- values and views ----------------------------------------------------- */

const char *canopy_value_to_text(const canopy_value *v, const char *sep, canopy_arena *a)
{
        char tmp[32];
        size_t n;
        switch (v->type) {
        case CANOPY_V_NULL:
                return NULL;
        case CANOPY_V_STR:
                return canopy_arena_strndup(a, v->u.str.s, v->u.str.len);
        case CANOPY_V_BIN:
                return text_base64(a, v->u.str.s, v->u.str.len, &n);
        case CANOPY_V_INT:
                snprintf(tmp, sizeof(tmp), "%lld", (long long)v->u.i);
                return canopy_arena_strndup(a, tmp, strlen(tmp));
        case CANOPY_V_BOOL:
                return v->u.b ? "True" : "False";
        case CANOPY_V_MULTI: {
                size_t total = 1, sl = sep ? strlen(sep) : 0;
                const char **parts = canopy_arena_alloc(a, v->u.multi.n * sizeof(*parts) + 1);
                if (!parts)
                        return NULL;
                for (size_t i = 0; i < v->u.multi.n; i++) {
                        parts[i] = canopy_value_to_text(&v->u.multi.items[i], sep, a);
                        if (!parts[i])
                                parts[i] = "";
                        total += strlen(parts[i]) + sl;
                }
                char *out = canopy_arena_alloc(a, total);
                if (!out)
                        return NULL;
                size_t o = 0;
                for (size_t i = 0; i < v->u.multi.n; i++) {
                        if (i && sl) {
                                memcpy(out + o, sep, sl);
                                o += sl;
                        }
                        size_t pl = strlen(parts[i]);
                        memcpy(out + o, parts[i], pl);
                        o += pl;
                }
                out[o] = '\0';
                return out;
        }
        }
        return NULL;
}

static bool lookup_attrs(void *ctx, const char *name, const canopy_bytes **ret_values, size_t *ret_n, bool *ret_binary)
{
        const canopy_attr_array *h = ctx;
        for (size_t i = 0; i < h->nattrs; i++) {
                const canopy_attr *at = &h->attrs[i];
                if (at->delta || at->nvalues == 0)
                        continue;
                if (strcasecmp(at->name, name) == 0) {
                        *ret_values = at->values;
                        *ret_n = at->nvalues;
                        *ret_binary = at->binary;
                        return true;
                }
        }
        return false;
}

static bool lookup_event(void *ctx, const char *name, const canopy_bytes **ret_values, size_t *ret_n, bool *ret_binary)
{
        const canopy_change_event *ev = ctx;
        canopy_attr_array h = {ev->attrs, ev->nattrs};
        return lookup_attrs(&h, name, ret_values, ret_n, ret_binary);
}

void canopy_obj_view_from_event(canopy_obj_view *view, const canopy_change_event *ev)
{
        memset(view, 0, sizeof(*view));
        view->connector = ev->connector;
        view->dn = ev->dn;
        view->object_type = ev->object_class;
        view->anchor = ev->anchor.len ? &ev->anchor : NULL;
        view->lookup = lookup_event;
        view->ctx = (void *)ev;
}

void canopy_obj_view_from_attrs(canopy_obj_view *view, canopy_attr_array *holder, const char *connector,
                                const char *dn, const char *object_type, const canopy_attr *attrs, size_t nattrs)
{
        memset(view, 0, sizeof(*view));
        holder->attrs = attrs;
        holder->nattrs = nattrs;
        view->connector = connector;
        view->dn = dn;
        view->object_type = object_type;
        view->lookup = lookup_attrs;
        view->ctx = holder;
}
