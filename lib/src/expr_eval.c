/* expr_eval.c: evaluation of compiled expressions and the function table.
 *
 * Every value produced here lives in the caller's arena (or is borrowed
 * from the object view). Null and multi-valued semantics per function are
 * documented in docs/RULES.md ("Functions"); in short: an absent attribute
 * is NULL, most string functions return NULL for NULL and apply to each
 * value of a multi-valued input, Join flattens and skips NULL and "".
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "expr_int.h"

canopy_err eval_fail(eval_ctx *c, canopy_err err, const char *fmt, ...)
{
        if (c->msg && c->msgcap) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(c->msg, c->msgcap, fmt, ap);
                va_end(ap);
        }
        return err;
}

#define NOMEM(c) eval_fail((c), CANOPY_ERR_LIMIT, "evaluation arena exhausted")

static void set_str(canopy_value *v, const char *s, size_t len)
{
        v->type = CANOPY_V_STR;
        v->u.str.s = s;
        v->u.str.len = len;
}

static void set_int(canopy_value *v, int64_t i)
{
        v->type = CANOPY_V_INT;
        v->u.i = i;
}

static void set_bool(canopy_value *v, bool b)
{
        v->type = CANOPY_V_BOOL;
        v->u.b = b;
}

/* Scalar -> text (s, len). BIN gives Base64. Returns false on arena cap. */
static bool scalar_text(eval_ctx *c, const canopy_value *v, const char **s, size_t *len)
{
        char tmp[32];
        switch (v->type) {
        case CANOPY_V_STR:
                *s = v->u.str.s;
                *len = v->u.str.len;
                return true;
        case CANOPY_V_BIN:
                *s = text_base64(c->a, v->u.str.s, v->u.str.len, len);
                return *s != NULL;
        case CANOPY_V_INT:
                snprintf(tmp, sizeof(tmp), "%lld", (long long)v->u.i);
                *len = strlen(tmp);
                *s = canopy_arena_strndup(c->a, tmp, *len);
                return *s != NULL;
        case CANOPY_V_BOOL:
                *s = v->u.b ? "True" : "False";
                *len = strlen(*s);
                return true;
        default:
                *s = "";
                *len = 0;
                return true;
        }
}

static canopy_err to_int(eval_ctx *c, const canopy_value *v, int64_t *out, const char *what)
{
        switch (v->type) {
        case CANOPY_V_INT:
                *out = v->u.i;
                return CANOPY_OK;
        case CANOPY_V_BOOL:
                *out = v->u.b ? 1 : 0;
                return CANOPY_OK;
        case CANOPY_V_STR: {
                char buf[40];
                size_t n = v->u.str.len;
                const char *s = v->u.str.s;
                while (n && *s == ' ')
                        s++, n--;
                while (n && s[n - 1] == ' ')
                        n--;
                if (n == 0 || n >= sizeof(buf))
                        break;
                memcpy(buf, s, n);
                buf[n] = '\0';
                char *end;
                long long x = strtoll(buf, &end, 10);
                if (*end)
                        break;
                *out = x;
                return CANOPY_OK;
        }
        case CANOPY_V_MULTI:
                if (v->u.multi.n)
                        return to_int(c, &v->u.multi.items[0], out, what);
                break;
        default:
                break;
        }
        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "%s: value is not a number", what);
}

/* Boolean of a value: BOOL, non-zero number, "True"/"False" (any case),
 * or a numeric string. NULL and other text are errors when strict. */
static bool to_bool(const canopy_value *v, bool *out)
{
        switch (v->type) {
        case CANOPY_V_BOOL:
                *out = v->u.b;
                return true;
        case CANOPY_V_INT:
                *out = v->u.i != 0;
                return true;
        case CANOPY_V_STR: {
                const char *s = v->u.str.s;
                size_t n = v->u.str.len;
                if (n == 4 && strncasecmp(s, "true", 4) == 0) {
                        *out = true;
                        return true;
                }
                if (n == 5 && strncasecmp(s, "false", 5) == 0) {
                        *out = false;
                        return true;
                }
                char buf[32];
                if (n && n < sizeof(buf)) {
                        memcpy(buf, s, n);
                        buf[n] = '\0';
                        char *end;
                        long long x = strtoll(buf, &end, 10);
                        if (!*end) {
                                *out = x != 0;
                                return true;
                        }
                }
                return false;
        }
        case CANOPY_V_MULTI:
                return v->u.multi.n ? to_bool(&v->u.multi.items[0], out) : false;
        default:
                return false;
        }
}

static bool is_empty(const canopy_value *v)
{
        return v->type == CANOPY_V_NULL || ((v->type == CANOPY_V_STR || v->type == CANOPY_V_BIN) && v->u.str.len == 0) ||
               (v->type == CANOPY_V_MULTI && v->u.multi.n == 0);
}

static canopy_err arg(eval_ctx *c, const node *n, size_t i, canopy_value *v)
{
        if (i == 0 && c->each_node == n) {
                *v = *c->each_val;
                return CANOPY_OK;
        }
        if (i >= n->u.call.nargs || n->u.call.args[i]->kind == N_EMPTY) {
                v->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        return expr_eval_node(c, n->u.call.args[i], v);
}

static bool arg_given(const node *n, size_t i)
{
        return i < n->u.call.nargs && n->u.call.args[i]->kind != N_EMPTY;
}

static canopy_err arg_int(eval_ctx *c, const node *n, size_t i, int64_t *out, bool *isnull)
{
        canopy_value v;
        canopy_err err = arg(c, n, i, &v);
        if (err)
                return err;
        *isnull = v.type == CANOPY_V_NULL;
        if (*isnull)
                return CANOPY_OK;
        return to_int(c, &v, out, n->u.call.fn->name);
}

/* Text of argument i; *isnull when NULL. MULTI: first value. */
static canopy_err arg_text(eval_ctx *c, const node *n, size_t i, const char **s, size_t *len, bool *isnull)
{
        canopy_value v;
        canopy_err err = arg(c, n, i, &v);
        if (err)
                return err;
        *isnull = v.type == CANOPY_V_NULL;
        if (v.type == CANOPY_V_MULTI)
                v = v.u.multi.n ? v.u.multi.items[0] : (canopy_value){0};
        if (!scalar_text(c, &v, s, len))
                return NOMEM(c);
        return CANOPY_OK;
}

/* Apply `f` to a value, element-wise over MULTI. NULL stays NULL. */
typedef canopy_err (*map_fn)(eval_ctx *c, const canopy_value *in, canopy_value *out, void *ud);

static canopy_err map_value(eval_ctx *c, const canopy_value *in, canopy_value *out, map_fn f, void *ud)
{
        if (in->type == CANOPY_V_NULL) {
                out->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        if (in->type != CANOPY_V_MULTI)
                return f(c, in, out, ud);
        canopy_value *items = canopy_arena_alloc(c->a, in->u.multi.n * sizeof(*items) + 1);
        if (!items)
                return NOMEM(c);
        for (size_t i = 0; i < in->u.multi.n; i++) {
                canopy_err err = f(c, &in->u.multi.items[i], &items[i], ud);
                if (err)
                        return err;
        }
        out->type = CANOPY_V_MULTI;
        out->u.multi.items = items;
        out->u.multi.n = in->u.multi.n;
        return CANOPY_OK;
}

/* ---- attribute references ---------------------------------------------- */

static canopy_err eval_attr(eval_ctx *c, const node *n, canopy_value *ret)
{
        const canopy_obj_view *o = c->obj;
        ret->type = CANOPY_V_NULL;
        if (!o)
                return CANOPY_OK;
        const canopy_bytes *vals = NULL;
        size_t nv = 0;
        bool bin = false;
        if (!o->lookup || !o->lookup(o->ctx, n->u.attr.name, &vals, &nv, &bin) || nv == 0) {
                if (strcmp(n->u.attr.name, "dn") == 0 && o->dn) {
                        set_str(ret, o->dn, strlen(o->dn));
                } else if (strcmp(n->u.attr.name, "sourceanchor") == 0 && o->anchor && o->anchor->len) {
                        ret->type = CANOPY_V_BIN;
                        ret->u.str.s = (const char *)o->anchor->data;
                        ret->u.str.len = o->anchor->len;
                }
                return CANOPY_OK;
        }
        if (nv > CANOPY_EXPR_MAX_VALUES)
                return eval_fail(c, CANOPY_ERR_LIMIT, "attribute %s has more than %u values", n->u.attr.orig,
                                 CANOPY_EXPR_MAX_VALUES);
        canopy_vtype t = bin ? CANOPY_V_BIN : CANOPY_V_STR;
        if (nv == 1) {
                ret->type = t;
                ret->u.str.s = (const char *)vals[0].data;
                ret->u.str.len = vals[0].len;
                return CANOPY_OK;
        }
        canopy_value *items = canopy_arena_alloc(c->a, nv * sizeof(*items));
        if (!items)
                return NOMEM(c);
        for (size_t i = 0; i < nv; i++) {
                items[i].type = t;
                items[i].u.str.s = (const char *)vals[i].data;
                items[i].u.str.len = vals[i].len;
        }
        ret->type = CANOPY_V_MULTI;
        ret->u.multi.items = items;
        ret->u.multi.n = nv;
        return CANOPY_OK;
}

/* ---- comparisons ------------------------------------------------------- */

/* -2: not comparable (NULL involved) */
static int cmp_scalar(eval_ctx *c, const canopy_value *a, const canopy_value *b, bool *err_nomem)
{
        if (a->type == CANOPY_V_NULL || b->type == CANOPY_V_NULL)
                return -2;
        int64_t x, y;
        if ((a->type == CANOPY_V_INT || b->type == CANOPY_V_INT) && to_int(c, a, &x, "") == CANOPY_OK &&
            to_int(c, b, &y, "") == CANOPY_OK)
                return x < y ? -1 : x > y;
        if (a->type == CANOPY_V_BOOL || b->type == CANOPY_V_BOOL) {
                bool p, q;
                if (to_bool(a, &p) && to_bool(b, &q))
                        return p == q ? 0 : (p ? 1 : -1);
        }
        const char *s, *t;
        size_t sl, tl;
        if (!scalar_text(c, a, &s, &sl) || !scalar_text(c, b, &t, &tl)) {
                *err_nomem = true;
                return -2;
        }
        /* Two numeric strings compare as numbers for < and > (VB rules). */
        size_t m = sl < tl ? sl : tl;
        int r = memcmp(s, t, m);
        if (r == 0)
                r = sl < tl ? -1 : sl > tl;
        return r < 0 ? -1 : r > 0;
}

static bool cmp_ok(binop op, int r)
{
        switch (op) {
        case OP_EQ: return r == 0;
        case OP_NE: return r != 0;
        case OP_LT: return r < 0;
        case OP_LE: return r <= 0;
        case OP_GT: return r > 0;
        case OP_GE: return r >= 0;
        default: return false;
        }
}

static canopy_err eval_binop(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value l, r;
        canopy_err err = expr_eval_node(c, n->u.bin.l, &l);
        if (err)
                return err;
        err = expr_eval_node(c, n->u.bin.r, &r);
        if (err)
                return err;
        if (n->u.bin.op == OP_CAT) {
                const char *s = "", *t = "";
                size_t sl = 0, tl = 0;
                canopy_value lv = l.type == CANOPY_V_MULTI ? (l.u.multi.n ? l.u.multi.items[0] : (canopy_value){0}) : l;
                canopy_value rv = r.type == CANOPY_V_MULTI ? (r.u.multi.n ? r.u.multi.items[0] : (canopy_value){0}) : r;
                if (l.type == CANOPY_V_NULL && r.type == CANOPY_V_NULL) {
                        ret->type = CANOPY_V_NULL;
                        return CANOPY_OK;
                }
                if (!scalar_text(c, &lv, &s, &sl) || !scalar_text(c, &rv, &t, &tl))
                        return NOMEM(c);
                char *o = canopy_arena_alloc(c->a, sl + tl + 1);
                if (!o)
                        return NOMEM(c);
                memcpy(o, s, sl);
                memcpy(o + sl, t, tl);
                o[sl + tl] = '\0';
                set_str(ret, o, sl + tl);
                return CANOPY_OK;
        }
        /* NULL compared with anything: = is False, <> is True unless both NULL. */
        if (l.type == CANOPY_V_NULL || r.type == CANOPY_V_NULL) {
                bool both = l.type == r.type;
                set_bool(ret, n->u.bin.op == OP_NE ? !both : (n->u.bin.op == OP_EQ && both));
                return CANOPY_OK;
        }
        /* A multi-valued side matches when any of its values does (for =);
         * <> is the negation of =; ordering uses the first value. */
        const canopy_value *la = l.type == CANOPY_V_MULTI ? l.u.multi.items : &l;
        size_t ln = l.type == CANOPY_V_MULTI ? l.u.multi.n : 1;
        const canopy_value *ra = r.type == CANOPY_V_MULTI ? r.u.multi.items : &r;
        size_t rn = r.type == CANOPY_V_MULTI ? r.u.multi.n : 1;
        bool nomem = false;
        if (n->u.bin.op == OP_EQ || n->u.bin.op == OP_NE) {
                bool any = false;
                for (size_t i = 0; i < ln && !any; i++)
                        for (size_t j = 0; j < rn && !any; j++)
                                any = cmp_scalar(c, &la[i], &ra[j], &nomem) == 0;
                if (nomem)
                        return NOMEM(c);
                set_bool(ret, n->u.bin.op == OP_EQ ? any : !any);
                return CANOPY_OK;
        }
        if (ln == 0 || rn == 0) {
                set_bool(ret, false);
                return CANOPY_OK;
        }
        int k = cmp_scalar(c, &la[0], &ra[0], &nomem);
        if (nomem)
                return NOMEM(c);
        set_bool(ret, k != -2 && cmp_ok(n->u.bin.op, k));
        return CANOPY_OK;
}

/* Call n once with its first argument v (already evaluated). */
static canopy_err call_with_first(eval_ctx *c, const node *n, const canopy_value *v, canopy_value *ret)
{
        const node *sn = c->each_node;
        const canopy_value *sv = c->each_val;
        c->each_node = n;
        c->each_val = v;
        canopy_err err = n->u.call.fn->fn(c, n, ret);
        c->each_node = sn;
        c->each_val = sv;
        return err;
}

/* EF_EACH: a multi-valued first argument gives one result per value (a
 * multi-valued result, as Split's, is flattened in); NULL results are
 * left out. The first argument is evaluated once. */
static canopy_err call_each(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v0;
        canopy_err err = arg(c, n, 0, &v0);
        if (err)
                return err;
        if (v0.type != CANOPY_V_MULTI)
                return call_with_first(c, n, &v0, ret);
        size_t cap = v0.u.multi.n, k = 0;
        canopy_value *items = canopy_arena_alloc(c->a, cap * sizeof(*items) + 1);
        if (!items)
                return NOMEM(c);
        for (size_t i = 0; i < v0.u.multi.n; i++) {
                canopy_value r;
                if ((err = call_with_first(c, n, &v0.u.multi.items[i], &r)))
                        return err;
                if (r.type == CANOPY_V_NULL)
                        continue;
                size_t add = r.type == CANOPY_V_MULTI ? r.u.multi.n : 1;
                if (k + add > cap) {
                        size_t nc = (k + add) * 2;
                        canopy_value *ni = canopy_arena_alloc(c->a, nc * sizeof(*ni));
                        if (!ni)
                                return NOMEM(c);
                        memcpy(ni, items, k * sizeof(*ni));
                        items = ni;
                        cap = nc;
                }
                if (r.type == CANOPY_V_MULTI) {
                        memcpy(items + k, r.u.multi.items, r.u.multi.n * sizeof(*items));
                        k += r.u.multi.n;
                } else {
                        items[k++] = r;
                }
        }
        ret->type = CANOPY_V_MULTI;
        ret->u.multi.items = items;
        ret->u.multi.n = k;
        return CANOPY_OK;
}

canopy_err expr_eval_node(eval_ctx *c, const node *n, canopy_value *ret)
{
        switch (n->kind) {
        case N_STR:
                set_str(ret, n->u.str.s, n->u.str.len);
                return CANOPY_OK;
        case N_INT:
                set_int(ret, n->u.i);
                return CANOPY_OK;
        case N_BOOL:
                set_bool(ret, n->u.b);
                return CANOPY_OK;
        case N_ATTR:
                return eval_attr(c, n, ret);
        case N_EMPTY:
        case N_ENUM:
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        case N_BINOP: {
                canopy_err err = eval_binop(c, n, ret);
                if (err && err != CANOPY_ERR_EXPR_SKIP && !c->err_set) {
                        c->err_pos = n->pos;
                        c->err_set = true;
                }
                return err;
        }
        case N_CALL: {
                if (++c->depth > (int)CANOPY_EXPR_MAX_DEPTH)
                        return eval_fail(c, CANOPY_ERR_LIMIT, "expression nested too deeply");
                canopy_err err = n->u.call.fn->flags & EF_EACH ? call_each(c, n, ret) : n->u.call.fn->fn(c, n, ret);
                c->depth--;
                if (err && err != CANOPY_ERR_EXPR_SKIP && !c->err_set) {
                        c->err_pos = n->pos;
                        c->err_set = true;
                }
                return err;
        }
        }
        return CANOPY_ERR_INVALID_ARG;
}

/* ---- string functions ---------------------------------------------------- */

static canopy_err m_append(eval_ctx *c, const canopy_value *in, canopy_value *out, void *ud)
{
        const canopy_value *suf = ud;
        const char *s, *t;
        size_t sl, tl;
        if (!scalar_text(c, in, &s, &sl) || !scalar_text(c, suf, &t, &tl))
                return NOMEM(c);
        char *o = canopy_arena_alloc(c->a, sl + tl + 1);
        if (!o)
                return NOMEM(c);
        memcpy(o, s, sl);
        memcpy(o + sl, t, tl);
        o[sl + tl] = '\0';
        set_str(out, o, sl + tl);
        return CANOPY_OK;
}

static canopy_err f_append(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value src, suf;
        canopy_err err;
        if ((err = arg(c, n, 0, &src)) || (err = arg(c, n, 1, &suf)))
                return err;
        if (suf.type == CANOPY_V_MULTI)
                suf = suf.u.multi.n ? suf.u.multi.items[0] : (canopy_value){0};
        return map_value(c, &src, ret, m_append, &suf);
}

typedef struct case_ud {
        bool up;
        int mode; /* 0 case, 1 diacritics, 2 strip spaces, 3 trim, 4 utf8hex, 5 base64, 6 cstr */
} case_ud;

static canopy_err m_text(eval_ctx *c, const canopy_value *in, canopy_value *out, void *udp)
{
        const case_ud *ud = udp;
        size_t ol = 0;
        const char *s;
        size_t sl;
        char *o = NULL;
        if (ud->mode == 5) {
                if (in->type == CANOPY_V_BIN) {
                        o = text_base64(c->a, in->u.str.s, in->u.str.len, &ol);
                } else {
                        /* Entra: "a Unicode base64 string": UTF-16LE bytes. */
                        if (!scalar_text(c, in, &s, &sl))
                                return NOMEM(c);
                        unsigned char *u16 = canopy_arena_alloc(c->a, sl * 4 + 1);
                        if (!u16)
                                return NOMEM(c);
                        size_t i = 0, k = 0;
                        while (i < sl) {
                                uint32_t cp = utf8_next(s, sl, &i);
                                if (cp >= 0x10000) {
                                        uint32_t v = cp - 0x10000;
                                        uint32_t hi = 0xD800 | (v >> 10), lo = 0xDC00 | (v & 0x3FF);
                                        u16[k++] = (unsigned char)(hi & 0xFF);
                                        u16[k++] = (unsigned char)(hi >> 8);
                                        u16[k++] = (unsigned char)(lo & 0xFF);
                                        u16[k++] = (unsigned char)(lo >> 8);
                                } else {
                                        u16[k++] = (unsigned char)(cp & 0xFF);
                                        u16[k++] = (unsigned char)(cp >> 8);
                                }
                        }
                        o = text_base64(c->a, u16, k, &ol);
                }
                if (!o)
                        return NOMEM(c);
                set_str(out, o, ol);
                return CANOPY_OK;
        }
        if (ud->mode == 4 && in->type == CANOPY_V_BIN) {
                s = in->u.str.s;
                sl = in->u.str.len;
        } else if (!scalar_text(c, in, &s, &sl)) {
                return NOMEM(c);
        }
        switch (ud->mode) {
        case 0:
                o = text_case(c->a, s, sl, ud->up, &ol);
                break;
        case 1:
                o = text_nodiacritics(c->a, s, sl, &ol);
                break;
        case 2:
                o = canopy_arena_alloc(c->a, sl + 1);
                if (o) {
                        for (size_t i = 0; i < sl; i++)
                                if (s[i] != ' ')
                                        o[ol++] = s[i];
                        o[ol] = '\0';
                }
                break;
        case 3: {
                size_t b = 0, e = sl;
                while (b < e && isspace((unsigned char)s[b]))
                        b++;
                while (e > b && isspace((unsigned char)s[e - 1]))
                        e--;
                set_str(out, s + b, e - b);
                return CANOPY_OK;
        }
        case 4: {
                static const char hx[] = "0123456789ABCDEF";
                o = canopy_arena_alloc(c->a, sl * 2 + 1);
                if (o) {
                        for (size_t i = 0; i < sl; i++) {
                                o[ol++] = hx[((unsigned char)s[i]) >> 4];
                                o[ol++] = hx[((unsigned char)s[i]) & 15];
                        }
                        o[ol] = '\0';
                }
                break;
        }
        case 6:
                set_str(out, s, sl);
                return CANOPY_OK;
        default:
                break;
        }
        if (!o)
                return NOMEM(c);
        set_str(out, o, ol);
        return CANOPY_OK;
}

static canopy_err text_fn(eval_ctx *c, const node *n, canopy_value *ret, int mode, bool up)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        case_ud ud = {up, mode};
        return map_value(c, &v, ret, m_text, &ud);
}

static canopy_err f_tolower(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 0, false); }
static canopy_err f_toupper(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 0, true); }
static canopy_err f_normdia(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 1, false); }
static canopy_err f_stripspaces(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 2, false); }
static canopy_err f_trim(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 3, false); }
static canopy_err f_utf8hex(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 4, false); }
static canopy_err f_tobase64(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 5, false); }
static canopy_err f_cstr(eval_ctx *c, const node *n, canopy_value *ret) { return text_fn(c, n, ret, 6, false); }

static canopy_err f_frombase64(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s;
        size_t sl;
        bool isnull;
        canopy_err err = arg_text(c, n, 0, &s, &sl, &isnull);
        if (err)
                return err;
        if (isnull) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        int enc = EN_UNICODE;
        if (arg_given(n, 1) && n->u.call.args[1]->kind == N_ENUM)
                enc = n->u.call.args[1]->u.enumv;
        size_t bl;
        char *b = text_unbase64(c->a, s, sl, &bl);
        if (!b)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "ConvertFromBase64: not valid Base64");
        if (enc != EN_UNICODE) {
                set_str(ret, b, bl);
                return CANOPY_OK;
        }
        char *o = canopy_arena_alloc(c->a, bl * 2 + 1);
        if (!o)
                return NOMEM(c);
        size_t ol = 0;
        for (size_t i = 0; i + 1 < bl; i += 2) {
                uint32_t u = (unsigned char)b[i] | ((uint32_t)(unsigned char)b[i + 1] << 8);
                if (u >= 0xD800 && u < 0xDC00 && i + 3 < bl) {
                        uint32_t lo = (unsigned char)b[i + 2] | ((uint32_t)(unsigned char)b[i + 3] << 8);
                        if (lo >= 0xDC00 && lo < 0xE000) {
                                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                                i += 2;
                        }
                }
                ol += utf8_put(u, o + ol);
        }
        o[ol] = '\0';
        set_str(ret, o, ol);
        return CANOPY_OK;
}

typedef struct sub_ud {
        int64_t start, len; /* start 1-based for Mid; len < 0: all */
        int mode;           /* 0 Left, 1 Mid */
} sub_ud;

static canopy_err m_sub(eval_ctx *c, const canopy_value *in, canopy_value *out, void *udp)
{
        const sub_ud *ud = udp;
        const char *s;
        size_t sl;
        if (!scalar_text(c, in, &s, &sl))
                return NOMEM(c);
        if (ud->mode == 0) {
                if (ud->len < 0) {
                        set_str(out, s, sl);
                        return CANOPY_OK;
                }
                size_t e = utf8_offset(s, sl, (size_t)ud->len);
                set_str(out, s, e);
                return CANOPY_OK;
        }
        if (ud->start < 1 || ud->len < 0)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Mid: start must be >= 1 and length >= 0");
        size_t b = utf8_offset(s, sl, (size_t)ud->start - 1);
        size_t e = b + utf8_offset(s + b, sl - b, (size_t)ud->len);
        set_str(out, s + b, e - b);
        return CANOPY_OK;
}

static canopy_err f_left(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        int64_t k;
        bool isnull;
        if ((err = arg_int(c, n, 1, &k, &isnull)))
                return err;
        if (v.type == CANOPY_V_NULL) { /* documented: null string gives "" */
                set_str(ret, "", 0);
                return CANOPY_OK;
        }
        if (isnull)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Left: NumChars is null");
        sub_ud ud = {0, k, 0};
        return map_value(c, &v, ret, m_sub, &ud);
}

static canopy_err f_mid(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        int64_t st, ln;
        bool n1, n2;
        if ((err = arg_int(c, n, 1, &st, &n1)) || (err = arg_int(c, n, 2, &ln, &n2)))
                return err;
        if (n1 || n2)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Mid: start and length are required");
        sub_ud ud = {st, ln, 1};
        return map_value(c, &v, ret, m_sub, &ud);
}

static canopy_err f_word(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s, *d;
        size_t sl, dl;
        bool sn, nn, dn;
        int64_t k;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &s, &sl, &sn)) || (err = arg_int(c, n, 1, &k, &nn)) ||
            (err = arg_text(c, n, 2, &d, &dl, &dn)))
                return err;
        set_str(ret, "", 0);
        if (sn || nn || k < 1)
                return CANOPY_OK;
        size_t i = 0;
        int64_t w = 0;
        while (i < sl) {
                /* skip delimiters */
                while (i < sl && memchr(d, s[i], dl))
                        i++;
                if (i >= sl)
                        break;
                size_t b = i;
                while (i < sl && !memchr(d, s[i], dl))
                        i++;
                if (++w == k) {
                        set_str(ret, s + b, i - b);
                        return CANOPY_OK;
                }
        }
        return CANOPY_OK;
}

static canopy_err f_instr(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s, *t;
        size_t sl, tl;
        bool sn, tn, stn = true;
        int64_t start = 1;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &s, &sl, &sn)) || (err = arg_text(c, n, 1, &t, &tl, &tn)))
                return err;
        if (arg_given(n, 2) && (err = arg_int(c, n, 2, &start, &stn)))
                return err;
        if (stn)
                start = 1;
        bool text = arg_given(n, 3) && n->u.call.args[3]->kind == N_ENUM && n->u.call.args[3]->u.enumv == EN_VBTEXT;
        if (sn || tn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        if (start < 1)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "InStr: start must be >= 1");
        if (text) {
                size_t l1, l2;
                s = text_case(c->a, s, sl, false, &l1);
                t = text_case(c->a, t, tl, false, &l2);
                if (!s || !t)
                        return NOMEM(c);
                sl = l1;
                tl = l2;
        }
        size_t b = utf8_offset(s, sl, (size_t)start - 1);
        for (size_t i = b; i + tl <= sl; i++) {
                if (memcmp(s + i, t, tl) == 0) {
                        set_int(ret, (int64_t)utf8_count(s, i) + 1);
                        return CANOPY_OK;
                }
        }
        set_int(ret, 0);
        return CANOPY_OK;
}

static canopy_err f_join(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *sep;
        size_t sepl;
        bool sn;
        canopy_err err = arg_text(c, n, 0, &sep, &sepl, &sn);
        if (err)
                return err;
        /* Two passes: collect the pieces, then copy. */
        size_t cap = 16, np = 0, total = 0;
        const char **ps = canopy_arena_alloc(c->a, cap * sizeof(*ps));
        size_t *pl = canopy_arena_alloc(c->a, cap * sizeof(*pl));
        if (!ps || !pl)
                return NOMEM(c);
        for (size_t i = 1; i < n->u.call.nargs; i++) {
                canopy_value v;
                if ((err = arg(c, n, i, &v)))
                        return err;
                const canopy_value *items = v.type == CANOPY_V_MULTI ? v.u.multi.items : &v;
                size_t cnt = v.type == CANOPY_V_MULTI ? v.u.multi.n : 1;
                for (size_t k = 0; k < cnt; k++) {
                        if (is_empty(&items[k]))
                                continue;
                        if (np == cap) {
                                size_t nc = cap * 2;
                                const char **nps = canopy_arena_alloc(c->a, nc * sizeof(*nps));
                                size_t *npl = canopy_arena_alloc(c->a, nc * sizeof(*npl));
                                if (!nps || !npl)
                                        return NOMEM(c);
                                memcpy(nps, ps, np * sizeof(*ps));
                                memcpy(npl, pl, np * sizeof(*pl));
                                ps = nps;
                                pl = npl;
                                cap = nc;
                        }
                        if (!scalar_text(c, &items[k], &ps[np], &pl[np]))
                                return NOMEM(c);
                        total += pl[np] + sepl;
                        np++;
                }
        }
        if (np == 0) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        char *o = canopy_arena_alloc(c->a, total + 1);
        if (!o)
                return NOMEM(c);
        size_t ol = 0;
        for (size_t i = 0; i < np; i++) {
                if (i) {
                        memcpy(o + ol, sep, sepl);
                        ol += sepl;
                }
                memcpy(o + ol, ps[i], pl[i]);
                ol += pl[i];
        }
        o[ol] = '\0';
        set_str(ret, o, ol);
        return CANOPY_OK;
}

static canopy_err f_split(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s, *d;
        size_t sl, dl;
        bool sn, dn;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &s, &sl, &sn)) || (err = arg_text(c, n, 1, &d, &dl, &dn)))
                return err;
        if (sn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        if (dn || dl == 0) {
                set_str(ret, s, sl);
                return CANOPY_OK;
        }
        bool trim = !(dl == 1 && d[0] == ' ');
        size_t cnt = 1;
        for (size_t i = 0; i + dl <= sl; i++)
                if (memcmp(s + i, d, dl) == 0) {
                        cnt++;
                        i += dl - 1;
                }
        if (cnt > CANOPY_EXPR_MAX_VALUES)
                return eval_fail(c, CANOPY_ERR_LIMIT, "Split: more than %u values", CANOPY_EXPR_MAX_VALUES);
        canopy_value *items = canopy_arena_alloc(c->a, cnt * sizeof(*items));
        if (!items)
                return NOMEM(c);
        size_t k = 0, b = 0;
        for (size_t i = 0; i <= sl; i++) {
                if (i == sl || (i + dl <= sl && memcmp(s + i, d, dl) == 0)) {
                        size_t pb = b, pe = i;
                        /* The documented example splits "One, Two" on "," into
                         * "One" and "Two": spaces around pieces are dropped. */
                        if (trim) {
                                while (pb < pe && s[pb] == ' ')
                                        pb++;
                                while (pe > pb && s[pe - 1] == ' ')
                                        pe--;
                        }
                        set_str(&items[k++], s + pb, pe - pb);
                        if (i == sl)
                                break;
                        i += dl - 1;
                        b = i + 1;
                }
        }
        if (k == 1) {
                *ret = items[0];
                return CANOPY_OK;
        }
        ret->type = CANOPY_V_MULTI;
        ret->u.multi.items = items;
        ret->u.multi.n = k;
        return CANOPY_OK;
}

/* ---- Replace ---------------------------------------------------------------- */

static bool sb_grow(eval_ctx *c, char **buf, size_t *cap, size_t need)
{
        if (need <= *cap)
                return true;
        size_t nc = *cap ? *cap * 2 : 64;
        while (nc < need)
                nc *= 2;
        char *nb = canopy_arena_alloc(c->a, nc);
        if (!nb)
                return false;
        if (*buf)
                memcpy(nb, *buf, *cap);
        *buf = nb;
        *cap = nc;
        return true;
}

#define SB_APPEND(c, buf, len, cap, src, n)                                                                     \
        do {                                                                                                   \
                if (!sb_grow((c), &(buf), &(cap), (len) + (n) + 1))                                            \
                        return NOMEM(c);                                                                       \
                memcpy((buf) + (len), (src), (n));                                                             \
                (len) += (n);                                                                                  \
                (buf)[len] = '\0';                                                                             \
        } while (0)

static canopy_err replace_plain(eval_ctx *c, const char *s, size_t sl, const char *old, size_t oldl, const char *rep,
                                size_t repl, canopy_value *ret)
{
        if (oldl == 0) {
                set_str(ret, s, sl);
                return CANOPY_OK;
        }
        char *buf = NULL;
        size_t len = 0, cap = 0;
        SB_APPEND(c, buf, len, cap, "", 0);
        size_t i = 0;
        while (i < sl) {
                if (i + oldl <= sl && memcmp(s + i, old, oldl) == 0) {
                        SB_APPEND(c, buf, len, cap, rep, repl);
                        i += oldl;
                } else {
                        SB_APPEND(c, buf, len, cap, s + i, 1);
                        i++;
                }
        }
        set_str(ret, buf, len);
        return CANOPY_OK;
}

/* Expand $1, ${name}, $$ in a .NET replacement pattern. */
static canopy_err expand_repl(eval_ctx *c, const expr_regex *re, const char *subj, const size_t *caps, const char *rep,
                              size_t repl, char **buf, size_t *len, size_t *cap)
{
        for (size_t i = 0; i < repl; i++) {
                if (rep[i] == '$' && i + 1 < repl) {
                        int g = -1;
                        size_t skip = 0;
                        if (rep[i + 1] == '$') {
                                SB_APPEND(c, *buf, *len, *cap, "$", 1);
                                i++;
                                continue;
                        }
                        if (rep[i + 1] == '{') {
                                const char *e = memchr(rep + i + 2, '}', repl - i - 2);
                                if (e) {
                                        g = expr_regex_group(re, rep + i + 2, (size_t)(e - (rep + i + 2)));
                                        skip = (size_t)(e - (rep + i));
                                }
                        } else if (rep[i + 1] >= '0' && rep[i + 1] <= '9') {
                                g = rep[i + 1] - '0';
                                if (g >= (int)expr_regex_ngroups(re))
                                        g = -1;
                                skip = 1;
                        }
                        if (g >= 0) {
                                if (caps[2 * g] != SIZE_MAX && caps[2 * g + 1] != SIZE_MAX)
                                        SB_APPEND(c, *buf, *len, *cap, subj + caps[2 * g], caps[2 * g + 1] - caps[2 * g]);
                                i += skip;
                                continue;
                        }
                }
                SB_APPEND(c, *buf, *len, *cap, rep + i, 1);
        }
        return CANOPY_OK;
}

/* Replace every match of re in s. group < 0: the whole match becomes the
 * expanded replacement; group >= 0: only that group's span is replaced by
 * the literal replacement. */
static canopy_err replace_regex(eval_ctx *c, const expr_regex *re, const char *s, size_t sl, int group, const char *rep,
                                size_t repl, canopy_value *ret)
{
        size_t caps[2 * EXPR_RE_MAX_GROUPS];
        char *buf = NULL;
        size_t len = 0, cap = 0;
        SB_APPEND(c, buf, len, cap, "", 0);
        size_t pos = 0, copied = 0;
        while (pos <= sl) {
                int r = expr_regex_search(re, s, sl, pos, caps);
                if (r < 0)
                        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Replace: regular expression too complex for the input");
                if (r == 0)
                        break;
                size_t ms = caps[0], me = caps[1];
                if (group < 0) {
                        SB_APPEND(c, buf, len, cap, s + copied, ms - copied);
                        canopy_err err = expand_repl(c, re, s, caps, rep, repl, &buf, &len, &cap);
                        if (err)
                                return err;
                        copied = me;
                } else if (caps[2 * group] != SIZE_MAX && caps[2 * group + 1] != SIZE_MAX) {
                        SB_APPEND(c, buf, len, cap, s + copied, caps[2 * group] - copied);
                        SB_APPEND(c, buf, len, cap, rep, repl);
                        copied = caps[2 * group + 1];
                }
                if (me == ms) { /* empty match: step over one character */
                        if (me >= sl)
                                break;
                        size_t i = me;
                        utf8_next(s, sl, &i);
                        pos = i;
                } else {
                        pos = me;
                }
        }
        if (copied < sl)
                SB_APPEND(c, buf, len, cap, s + copied, sl - copied);
        set_str(ret, buf, len);
        return CANOPY_OK;
}

typedef struct repl_ud {
        const node *n;
        const char *old, *rep, *tmpl, *gname;
        size_t oldl, repl, tmpll, gnamel;
        bool has_old, has_rep, has_tmpl, has_group;
} repl_ud;

static canopy_err m_replace(eval_ctx *c, const canopy_value *in, canopy_value *out, void *udp)
{
        const repl_ud *u = udp;
        const char *s;
        size_t sl;
        if (!scalar_text(c, in, &s, &sl))
                return NOMEM(c);
        const expr_regex *re = u->n->u.call.re;
        if (re) {
                int g = -1;
                if (u->has_group) {
                        g = expr_regex_group(re, u->gname, u->gnamel);
                        if (g < 0)
                                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Replace: no group named '%.*s' in the pattern",
                                                 (int)u->gnamel, u->gname);
                }
                return replace_regex(c, re, s, sl, g, u->has_rep ? u->rep : "", u->has_rep ? u->repl : 0, out);
        }
        if (u->has_old && u->has_tmpl && !u->has_rep)
                return replace_plain(c, u->tmpl, u->tmpll, u->old, u->oldl, s, sl, out);
        if (u->has_old)
                return replace_plain(c, s, sl, u->old, u->oldl, u->has_rep ? u->rep : "", u->has_rep ? u->repl : 0, out);
        set_str(out, s, sl);
        return CANOPY_OK;
}

/* Replace(source, oldValue, regexPattern, regexGroupName, replacementValue,
 *         replacementAttributeName, template), or Replace(source, old, new). */
static canopy_err f_replace(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value src;
        canopy_err err = arg(c, n, 0, &src);
        if (err)
                return err;
        repl_ud u = {.n = n};
        bool isnull;
        if (n->u.call.nargs == 3) {
                if ((err = arg_text(c, n, 1, &u.old, &u.oldl, &isnull)))
                        return err;
                u.has_old = !isnull;
                if ((err = arg_text(c, n, 2, &u.rep, &u.repl, &isnull)))
                        return err;
                u.has_rep = !isnull;
                return map_value(c, &src, ret, m_replace, &u);
        }
        if (arg_given(n, 1)) {
                if ((err = arg_text(c, n, 1, &u.old, &u.oldl, &isnull)))
                        return err;
                u.has_old = !isnull;
        }
        if (arg_given(n, 3)) {
                if ((err = arg_text(c, n, 3, &u.gname, &u.gnamel, &isnull)))
                        return err;
                u.has_group = !isnull;
        }
        if (arg_given(n, 4)) {
                if ((err = arg_text(c, n, 4, &u.rep, &u.repl, &isnull)))
                        return err;
                u.has_rep = !isnull;
        }
        if (arg_given(n, 6)) {
                if ((err = arg_text(c, n, 6, &u.tmpl, &u.tmpll, &isnull)))
                        return err;
                u.has_tmpl = !isnull;
        }
        if (arg_given(n, 5) && n->u.call.re && u.has_group) {
                /* regexPattern + regexGroupName + replacementAttributeName: the
                 * source when it has a value, else the group extracted from the
                 * replacement attribute. */
                if (!is_empty(&src)) {
                        *ret = src;
                        return CANOPY_OK;
                }
                const char *t;
                size_t tl;
                if ((err = arg_text(c, n, 5, &t, &tl, &isnull)))
                        return err;
                ret->type = CANOPY_V_NULL;
                if (isnull)
                        return CANOPY_OK;
                int g = expr_regex_group(n->u.call.re, u.gname, u.gnamel);
                if (g < 0)
                        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Replace: no group named '%.*s' in the pattern",
                                         (int)u.gnamel, u.gname);
                size_t caps[2 * EXPR_RE_MAX_GROUPS];
                int r = expr_regex_search(n->u.call.re, t, tl, 0, caps);
                if (r < 0)
                        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Replace: regular expression too complex for the input");
                if (r == 1 && caps[2 * g] != SIZE_MAX && caps[2 * g + 1] != SIZE_MAX)
                        set_str(ret, t + caps[2 * g], caps[2 * g + 1] - caps[2 * g]);
                return CANOPY_OK;
        }
        return map_value(c, &src, ret, m_replace, &u);
}

/* ---- conditionals and tests ---------------------------------------------- */

static canopy_err f_iif(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value cond;
        canopy_err err = arg(c, n, 0, &cond);
        if (err)
                return err;
        bool b = false;
        if (cond.type != CANOPY_V_NULL && !to_bool(&cond, &b))
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "IIF: condition is not a boolean");
        return arg(c, n, b ? 1 : 2, ret);
}

static canopy_err f_switch(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value src;
        canopy_err err = arg(c, n, 0, &src);
        if (err)
                return err;
        const char *s = "";
        size_t sl = 0;
        if (src.type == CANOPY_V_MULTI)
                src = src.u.multi.n ? src.u.multi.items[0] : (canopy_value){0};
        if (src.type != CANOPY_V_NULL && !scalar_text(c, &src, &s, &sl))
                return NOMEM(c);
        for (size_t i = 2; i + 1 < n->u.call.nargs; i += 2) {
                const char *k;
                size_t kl;
                bool kn;
                if ((err = arg_text(c, n, i, &k, &kl, &kn)))
                        return err;
                /* A NULL source matches the key "" (documented idiom). */
                if (kl == sl && memcmp(k, s, sl) == 0)
                        return arg(c, n, i + 1, ret);
        }
        return arg(c, n, 1, ret);
}

static canopy_err f_coalesce(eval_ctx *c, const node *n, canopy_value *ret)
{
        for (size_t i = 0; i < n->u.call.nargs; i++) {
                canopy_err err = arg(c, n, i, ret);
                if (err)
                        return err;
                if (ret->type != CANOPY_V_NULL)
                        return CANOPY_OK;
        }
        ret->type = CANOPY_V_NULL;
        return CANOPY_OK;
}

static canopy_err f_isnull(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        set_bool(ret, v.type == CANOPY_V_NULL);
        return CANOPY_OK;
}

static canopy_err f_isnullorempty(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        set_bool(ret, is_empty(&v));
        return CANOPY_OK;
}

static canopy_err f_ispresent(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_err err = f_isnullorempty(c, n, ret);
        if (!err)
                ret->u.b = !ret->u.b;
        return err;
}

static canopy_err f_isstring(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        set_bool(ret, v.type == CANOPY_V_STR || v.type == CANOPY_V_INT || v.type == CANOPY_V_BOOL);
        return CANOPY_OK;
}

static canopy_err f_ignoreflow(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_err err = arg(c, n, 0, ret);
        if (err)
                return err;
        if (is_empty(ret))
                return CANOPY_ERR_EXPR_SKIP;
        return CANOPY_OK;
}

static canopy_err f_not(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        bool b = false;
        /* Documented: True gives False, anything else gives True. */
        set_bool(ret, !(to_bool(&v, &b) && b));
        return CANOPY_OK;
}

static canopy_err f_cbool(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        bool b = false;
        if (v.type != CANOPY_V_NULL && !to_bool(&v, &b))
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "CBool: value is neither a boolean nor a number");
        set_bool(ret, b);
        return CANOPY_OK;
}

static canopy_err f_bitand(eval_ctx *c, const node *n, canopy_value *ret)
{
        int64_t a, b;
        bool an, bn;
        canopy_err err;
        if ((err = arg_int(c, n, 0, &a, &an)) || (err = arg_int(c, n, 1, &b, &bn)))
                return err;
        if (an || bn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        set_int(ret, a & b);
        return CANOPY_OK;
}

static canopy_err f_error(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s;
        size_t sl;
        bool sn;
        canopy_err err = arg_text(c, n, 0, &s, &sl, &sn);
        if (err)
                return err;
        ret->type = CANOPY_V_NULL;
        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "%.*s", (int)sl, s);
}

/* ---- multi-valued ------------------------------------------------------- */

static canopy_err f_count(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        set_int(ret, v.type == CANOPY_V_NULL ? 0 : v.type == CANOPY_V_MULTI ? (int64_t)v.u.multi.n : 1);
        return CANOPY_OK;
}

static canopy_err f_item(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        int64_t k;
        bool kn;
        if ((err = arg_int(c, n, 1, &k, &kn)))
                return err;
        if (v.type == CANOPY_V_NULL || kn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        size_t cnt = v.type == CANOPY_V_MULTI ? v.u.multi.n : 1;
        if (k < 1 || (uint64_t)k > cnt)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Item: index %lld out of bounds (1..%zu)", (long long)k, cnt);
        *ret = v.type == CANOPY_V_MULTI ? v.u.multi.items[k - 1] : v;
        return CANOPY_OK;
}

static canopy_err f_removedups(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        if (v.type != CANOPY_V_MULTI) {
                *ret = v;
                return CANOPY_OK;
        }
        canopy_value *items = canopy_arena_alloc(c->a, v.u.multi.n * sizeof(*items));
        if (!items)
                return NOMEM(c);
        size_t k = 0;
        bool nomem = false;
        for (size_t i = 0; i < v.u.multi.n; i++) {
                bool dup = false;
                for (size_t j = 0; j < k && !dup; j++)
                        dup = items[j].type == v.u.multi.items[i].type &&
                              cmp_scalar(c, &items[j], &v.u.multi.items[i], &nomem) == 0;
                if (nomem)
                        return NOMEM(c);
                if (!dup)
                        items[k++] = v.u.multi.items[i];
        }
        if (k == 1) {
                *ret = items[0];
                return CANOPY_OK;
        }
        ret->type = CANOPY_V_MULTI;
        ret->u.multi.items = items;
        ret->u.multi.n = k;
        return CANOPY_OK;
}

/* ---- identity ------------------------------------------------------------ */

static canopy_err f_guid(eval_ctx *c, const node *n, canopy_value *ret)
{
        (void)n;
        unsigned char b[16];
        size_t got = 0;
        while (got < sizeof(b)) {
                ssize_t r = getrandom(b + got, sizeof(b) - got, 0);
                if (r <= 0)
                        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "Guid: no random source");
                got += (size_t)r;
        }
        b[6] = (unsigned char)((b[6] & 0x0F) | 0x40); /* version 4 */
        b[8] = (unsigned char)((b[8] & 0x3F) | 0x80); /* RFC 4122 variant */
        char *o = canopy_arena_alloc(c->a, 37);
        if (!o)
                return NOMEM(c);
        snprintf(o, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
                 b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
        set_str(ret, o, 36);
        return CANOPY_OK;
}

static canopy_err f_selectunique(eval_ctx *c, const node *n, canopy_value *ret)
{
        for (size_t i = 0; i < n->u.call.nargs; i++) {
                canopy_value v;
                canopy_err err = arg(c, n, i, &v);
                if (err == CANOPY_ERR_EXPR_SKIP)
                        continue;
                if (err)
                        return err;
                if (is_empty(&v))
                        continue;
                if (v.type == CANOPY_V_MULTI)
                        v = v.u.multi.items[0];
                const char *s;
                size_t sl;
                if (!scalar_text(c, &v, &s, &sl))
                        return NOMEM(c);
                const char *z = canopy_arena_strndup(c->a, s, sl);
                if (!z)
                        return NOMEM(c);
                if (!c->ectx->is_unique || c->ectx->is_unique(c->ectx->unique_ctx, c->ectx->property, z)) {
                        set_str(ret, z, sl);
                        return CANOPY_OK;
                }
        }
        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "SelectUniqueValue: every candidate value is already in use");
}

static canopy_err f_dncomponent(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s;
        size_t sl;
        bool sn, kn;
        int64_t k;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &s, &sl, &sn)) || (err = arg_int(c, n, 1, &k, &kn)))
                return err;
        ret->type = CANOPY_V_NULL;
        if (sn || kn || k < 1)
                return CANOPY_OK;
        size_t ol;
        const char *o = dn_component(s, sl, (size_t)k, c->a, &ol);
        if (o)
                set_str(ret, o, ol);
        return CANOPY_OK;
}

static canopy_err f_domainfromdn(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s;
        size_t sl;
        bool sn;
        canopy_err err = arg_text(c, n, 0, &s, &sl, &sn);
        if (err)
                return err;
        ret->type = CANOPY_V_NULL;
        if (sn)
                return CANOPY_OK;
        size_t ol;
        const char *o = dn_domain(s, sl, c->a, &ol);
        if (o)
                set_str(ret, o, ol);
        return CANOPY_OK;
}

static canopy_err f_cref(eval_ctx *c, const node *n, canopy_value *ret)
{
        return arg(c, n, 0, ret);
}

static canopy_err f_stringfromsid(eval_ctx *c, const node *n, canopy_value *ret)
{
        canopy_value v;
        canopy_err err = arg(c, n, 0, &v);
        if (err)
                return err;
        if (v.type == CANOPY_V_MULTI)
                v = v.u.multi.items[0];
        ret->type = CANOPY_V_NULL;
        if (v.type != CANOPY_V_BIN && v.type != CANOPY_V_STR)
                return CANOPY_OK;
        const unsigned char *b = (const unsigned char *)v.u.str.s;
        size_t bl = v.u.str.len;
        if (bl < 8 || bl != 8 + 4u * b[1])
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "StringFromSid: not a binary SID");
        uint64_t auth = 0;
        for (int i = 2; i < 8; i++)
                auth = (auth << 8) | b[i];
        char *o = canopy_arena_alloc(c->a, 32 + 11u * b[1]);
        if (!o)
                return NOMEM(c);
        int len = sprintf(o, "S-%u-%llu", b[0], (unsigned long long)auth);
        for (unsigned i = 0; i < b[1]; i++) {
                const unsigned char *p = b + 8 + 4 * i;
                uint32_t sa = p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
                len += sprintf(o + len, "-%u", sa);
        }
        set_str(ret, o, (size_t)len);
        return CANOPY_OK;
}

/* ---- dates ---------------------------------------------------------------- */

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        unsigned yoe = (unsigned)(y - era * 400);
        unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
        z += 719468;
        int64_t era = (z >= 0 ? z : z - 146096) / 146097;
        unsigned doe = (unsigned)(z - era * 146097);
        unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        int64_t yy = (int64_t)yoe + era * 400;
        unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        unsigned mp = (5 * doy + 2) / 153;
        *d = doy - (153 * mp + 2) / 5 + 1;
        *m = mp < 10 ? mp + 3 : mp - 9;
        *y = yy + (*m <= 2);
}

typedef struct dt {
        int64_t secs; /* UTC seconds since epoch */
        int frac;     /* 100 ns ticks 0..9999999 */
} dt;

static bool digits(const char *s, size_t len, size_t *i, int min, int max, int *out)
{
        int v = 0, k = 0;
        while (*i < len && k < max && s[*i] >= '0' && s[*i] <= '9') {
                v = v * 10 + (s[*i] - '0');
                (*i)++;
                k++;
        }
        *out = v;
        return k >= min;
}

static bool valid_ymd(int y, int m, int d)
{
        static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        if (y < 1 || y > 9999 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
                return false;
        if (m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
                return false;
        return true;
}

/* ISO 8601 and friends: yyyy-MM-dd[(T| )HH:mm[:ss[.f...]]][Z|±HH:mm], and
 * the Entra text form M/d/yyyy h:mm:ss AM|PM. */
static bool parse_date(const char *s, size_t len, dt *out)
{
        size_t i = 0;
        while (i < len && s[i] == ' ')
                i++;
        while (len > i && s[len - 1] == ' ')
                len--;
        int y, mo, d, h = 0, mi = 0, se = 0, frac = 0;
        int64_t off = 0;
        size_t save = i;
        if (digits(s, len, &i, 4, 4, &y) && i < len && s[i] == '-') {
                i++;
                if (!digits(s, len, &i, 2, 2, &mo) || i >= len || s[i] != '-')
                        return false;
                i++;
                if (!digits(s, len, &i, 2, 2, &d))
                        return false;
                if (i < len && (s[i] == 'T' || s[i] == ' ') && i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9') {
                        i++;
                        if (!digits(s, len, &i, 2, 2, &h) || i >= len || s[i] != ':')
                                return false;
                        i++;
                        if (!digits(s, len, &i, 2, 2, &mi))
                                return false;
                        if (i < len && s[i] == ':') {
                                i++;
                                if (!digits(s, len, &i, 2, 2, &se))
                                        return false;
                                if (i < len && s[i] == '.') {
                                        i++;
                                        int k = 0;
                                        while (i < len && s[i] >= '0' && s[i] <= '9') {
                                                if (k < 7)
                                                        frac = frac * 10 + (s[i] - '0'), k++;
                                                i++;
                                        }
                                        while (k++ < 7)
                                                frac *= 10;
                                }
                        }
                }
        } else {
                i = save;
                if (!digits(s, len, &i, 1, 2, &mo) || i >= len || s[i] != '/')
                        return false;
                i++;
                if (!digits(s, len, &i, 1, 2, &d) || i >= len || s[i] != '/')
                        return false;
                i++;
                if (!digits(s, len, &i, 4, 4, &y))
                        return false;
                if (i < len && s[i] == ' ') {
                        i++;
                        if (!digits(s, len, &i, 1, 2, &h) || i >= len || s[i] != ':')
                                return false;
                        i++;
                        if (!digits(s, len, &i, 2, 2, &mi))
                                return false;
                        if (i < len && s[i] == ':') {
                                i++;
                                if (!digits(s, len, &i, 2, 2, &se))
                                        return false;
                        }
                        while (i < len && s[i] == ' ')
                                i++;
                        if (i + 1 < len && (s[i + 1] == 'M' || s[i + 1] == 'm')) {
                                char ap = (char)toupper((unsigned char)s[i]);
                                if (ap != 'A' && ap != 'P')
                                        return false;
                                if (h < 1 || h > 12)
                                        return false;
                                h = h % 12 + (ap == 'P' ? 12 : 0);
                                i += 2;
                        }
                }
        }
        if (i < len) {
                if (s[i] == 'Z' || s[i] == 'z') {
                        i++;
                } else if (s[i] == '+' || s[i] == '-') {
                        int sign = s[i] == '-' ? -1 : 1, oh, om = 0;
                        i++;
                        if (!digits(s, len, &i, 2, 2, &oh))
                                return false;
                        if (i < len && s[i] == ':')
                                i++;
                        if (i < len && !digits(s, len, &i, 2, 2, &om))
                                return false;
                        off = sign * (oh * 3600 + om * 60);
                }
        }
        if (i != len || !valid_ymd(y, mo, d) || h > 23 || mi > 59 || se > 60)
                return false;
        out->secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se - off;
        out->frac = frac;
        return true;
}

static const char *const month_abbr[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const month_full[] = {"January", "February", "March",     "April",   "May",      "June",
                                         "July",    "August",   "September", "October", "November", "December"};
static const char *const day_abbr[] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
static const char *const day_full[] = {"Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"};

static size_t run_len(const char *f, size_t fl, size_t i)
{
        size_t k = 1;
        while (i + k < fl && f[i + k] == f[i])
                k++;
        return k;
}

/* Format with a .NET custom date format string (UTC). */
static char *format_date(eval_ctx *c, const dt *t, const char *f, size_t fl, size_t *ret_len)
{
        int64_t days = t->secs >= 0 ? t->secs / 86400 : -((-t->secs + 86399) / 86400);
        int64_t rem = t->secs - days * 86400;
        int64_t y;
        unsigned m, d;
        civil_from_days(days, &y, &m, &d);
        int h = (int)(rem / 3600), mi = (int)(rem / 60 % 60), s = (int)(rem % 60);
        int wd = (int)(((days % 7) + 7) % 7);
        char *o = canopy_arena_alloc(c->a, fl * 12 + 16);
        if (!o)
                return NULL;
        size_t ol = 0;
        for (size_t i = 0; i < fl;) {
                char ch = f[i];
                size_t k = run_len(f, fl, i);
                char tmp[32];
                tmp[0] = '\0';
                switch (ch) {
                case 'y':
                        if (k <= 2)
                                snprintf(tmp, sizeof(tmp), k == 1 ? "%d" : "%02d", (int)(y % 100));
                        else
                                snprintf(tmp, sizeof(tmp), "%0*lld", (int)k, (long long)y);
                        break;
                case 'M':
                        if (k <= 2)
                                snprintf(tmp, sizeof(tmp), k == 1 ? "%u" : "%02u", m);
                        else
                                snprintf(tmp, sizeof(tmp), "%s", k == 3 ? month_abbr[m - 1] : month_full[m - 1]);
                        break;
                case 'd':
                        if (k <= 2)
                                snprintf(tmp, sizeof(tmp), k == 1 ? "%u" : "%02u", d);
                        else
                                snprintf(tmp, sizeof(tmp), "%s", k == 3 ? day_abbr[wd] : day_full[wd]);
                        break;
                case 'H':
                        snprintf(tmp, sizeof(tmp), k == 1 ? "%d" : "%02d", h);
                        break;
                case 'h':
                        snprintf(tmp, sizeof(tmp), k == 1 ? "%d" : "%02d", h % 12 == 0 ? 12 : h % 12);
                        break;
                case 'm':
                        snprintf(tmp, sizeof(tmp), k == 1 ? "%d" : "%02d", mi);
                        break;
                case 's':
                        snprintf(tmp, sizeof(tmp), k == 1 ? "%d" : "%02d", s);
                        break;
                case 'f':
                case 'F': {
                        size_t n = k > 7 ? 7 : k;
                        int v = t->frac;
                        for (size_t z = n; z < 7; z++)
                                v /= 10;
                        snprintf(tmp, sizeof(tmp), "%0*d", (int)n, v);
                        if (ch == 'F') {
                                size_t tl = strlen(tmp);
                                while (tl && tmp[tl - 1] == '0')
                                        tmp[--tl] = '\0';
                        }
                        break;
                }
                case 't':
                        snprintf(tmp, sizeof(tmp), "%s", k == 1 ? (h < 12 ? "A" : "P") : (h < 12 ? "AM" : "PM"));
                        break;
                case 'z':
                        snprintf(tmp, sizeof(tmp), "%s", k == 1 ? "+0" : k == 2 ? "+00" : "+00:00");
                        break;
                case 'K':
                        snprintf(tmp, sizeof(tmp), "Z");
                        break;
                case '\'':
                case '"': {
                        size_t j = i + 1;
                        while (j < fl && f[j] != ch)
                                o[ol++] = f[j++];
                        i = j < fl ? j + 1 : j;
                        continue;
                }
                case '\\':
                        if (i + 1 < fl)
                                o[ol++] = f[i + 1];
                        i += 2;
                        continue;
                default:
                        o[ol++] = ch;
                        i++;
                        continue;
                }
                size_t tl = strlen(tmp);
                memcpy(o + ol, tmp, tl);
                ol += tl;
                i += k;
        }
        o[ol] = '\0';
        *ret_len = ol;
        return o;
}

/* Parse `s` with a .NET custom date format. */
static bool parse_with_format(const char *s, size_t sl, const char *f, size_t fl, dt *out)
{
        int y = 1, mo = 1, d = 1, h = 0, mi = 0, se = 0, frac = 0, pm = -1;
        int64_t off = 0;
        size_t i = 0;
        for (size_t p = 0; p < fl;) {
                char ch = f[p];
                size_t k = run_len(f, fl, p);
                int v;
                switch (ch) {
                case 'y':
                        if (!digits(s, sl, &i, k <= 2 ? 1 : (int)k, k <= 2 ? 2 : 4, &v))
                                return false;
                        y = k <= 2 ? 2000 + v : v;
                        break;
                case 'M':
                        if (k >= 3) {
                                bool found = false;
                                for (int z = 0; z < 12 && !found; z++) {
                                        const char *nm = k == 3 ? month_abbr[z] : month_full[z];
                                        size_t nl = strlen(nm);
                                        if (i + nl <= sl && strncasecmp(s + i, nm, nl) == 0) {
                                                mo = z + 1;
                                                i += nl;
                                                found = true;
                                        }
                                }
                                if (!found)
                                        return false;
                                break;
                        }
                        if (!digits(s, sl, &i, (int)k, 2, &mo))
                                return false;
                        break;
                case 'd':
                        if (k >= 3) {
                                while (i < sl && ((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z')))
                                        i++;
                                break;
                        }
                        if (!digits(s, sl, &i, (int)k, 2, &d))
                                return false;
                        break;
                case 'H':
                case 'h':
                        if (!digits(s, sl, &i, (int)k, 2, &h))
                                return false;
                        break;
                case 'm':
                        if (!digits(s, sl, &i, (int)k, 2, &mi))
                                return false;
                        break;
                case 's':
                        if (!digits(s, sl, &i, (int)k, 2, &se))
                                return false;
                        break;
                case 'f':
                case 'F': {
                        int n = 0;
                        frac = 0;
                        while (i < sl && s[i] >= '0' && s[i] <= '9' && n < (int)k) {
                                frac = frac * 10 + (s[i] - '0');
                                i++;
                                n++;
                        }
                        if (ch == 'f' && n < (int)k)
                                return false;
                        while (n++ < 7)
                                frac *= 10;
                        break;
                }
                case 't':
                        if (i < sl && (s[i] == 'A' || s[i] == 'a' || s[i] == 'P' || s[i] == 'p')) {
                                pm = s[i] == 'P' || s[i] == 'p';
                                i += (k >= 2 && i + 1 < sl && (s[i + 1] == 'M' || s[i + 1] == 'm')) ? 2 : 1;
                        } else {
                                return false;
                        }
                        break;
                case 'z':
                case 'K':
                        if (i < sl && (s[i] == 'Z' || s[i] == 'z')) {
                                i++;
                        } else if (i < sl && (s[i] == '+' || s[i] == '-')) {
                                int sign = s[i] == '-' ? -1 : 1, oh = 0, om = 0;
                                i++;
                                if (!digits(s, sl, &i, 1, 2, &oh))
                                        return false;
                                if (i < sl && s[i] == ':')
                                        i++;
                                if (i < sl && s[i] >= '0' && s[i] <= '9')
                                        digits(s, sl, &i, 2, 2, &om);
                                off = sign * (oh * 3600 + om * 60);
                        } else if (ch == 'z') {
                                return false;
                        }
                        break;
                case '\'':
                case '"': {
                        size_t j = p + 1;
                        while (j < fl && f[j] != ch) {
                                if (i >= sl || s[i] != f[j])
                                        return false;
                                i++;
                                j++;
                        }
                        p = j < fl ? j + 1 : j;
                        continue;
                }
                case '\\':
                        if (p + 1 < fl) {
                                if (i >= sl || s[i] != f[p + 1])
                                        return false;
                                i++;
                        }
                        p += 2;
                        continue;
                default:
                        if (i >= sl || s[i] != ch)
                                return false;
                        i++;
                        p++;
                        continue;
                }
                p += k;
        }
        if (i != sl)
                return false;
        if (pm >= 0) {
                if (h < 1 || h > 12)
                        return false;
                h = h % 12 + (pm ? 12 : 0);
        }
        if (!valid_ymd(y, mo, d) || h > 23 || mi > 59 || se > 59)
                return false;
        out->secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se - off;
        out->frac = frac;
        return true;
}

static canopy_err date_result(eval_ctx *c, const dt *t, canopy_value *ret)
{
        static const char f[] = "M/d/yyyy h:mm:ss tt";
        size_t ol;
        char *o = format_date(c, t, f, sizeof(f) - 1, &ol);
        if (!o)
                return NOMEM(c);
        set_str(ret, o, ol);
        return CANOPY_OK;
}

static canopy_err arg_date(eval_ctx *c, const node *n, size_t i, dt *t, bool *isnull)
{
        const char *s;
        size_t sl;
        canopy_err err = arg_text(c, n, i, &s, &sl, isnull);
        if (err || *isnull)
                return err;
        if (!parse_date(s, sl, t))
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "%s: '%.*s' is not a date", n->u.call.fn->name,
                                 (int)(sl > 64 ? 64 : sl), s);
        return CANOPY_OK;
}

static canopy_err f_cdate(eval_ctx *c, const node *n, canopy_value *ret)
{
        dt t;
        bool isnull;
        canopy_err err = arg_date(c, n, 0, &t, &isnull);
        if (err)
                return err;
        if (isnull) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        return date_result(c, &t, ret);
}

static canopy_err f_now(eval_ctx *c, const node *n, canopy_value *ret)
{
        (void)n;
        dt t = {0, 0};
        if (c->ectx->now_ms) {
                t.secs = c->ectx->now_ms / 1000;
        } else {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                t.secs = ts.tv_sec;
        }
        return date_result(c, &t, ret);
}

#define FILETIME_EPOCH_DIFF 11644473600LL /* seconds from 1601-01-01 to 1970-01-01 */

static canopy_err f_datefromnum(eval_ctx *c, const node *n, canopy_value *ret)
{
        int64_t v;
        bool isnull;
        canopy_err err = arg_int(c, n, 0, &v, &isnull);
        if (err)
                return err;
        if (isnull) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        if (v < 0 || v > 2650467743999999999LL) /* beyond 9999-12-31 */
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "DateFromNum: %lld is out of range", (long long)v);
        dt t = {v / 10000000 - FILETIME_EPOCH_DIFF, (int)(v % 10000000)};
        return date_result(c, &t, ret);
}

static canopy_err f_numfromdate(eval_ctx *c, const node *n, canopy_value *ret)
{
        dt t;
        bool isnull;
        canopy_err err = arg_date(c, n, 0, &t, &isnull);
        if (err)
                return err;
        if (isnull) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        set_int(ret, (t.secs + FILETIME_EPOCH_DIFF) * 10000000 + t.frac);
        return CANOPY_OK;
}

static canopy_err f_dateadd(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *iv;
        size_t ivl;
        bool ivn, vn, dn;
        int64_t v;
        dt t;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &iv, &ivl, &ivn)) || (err = arg_int(c, n, 1, &v, &vn)) ||
            (err = arg_date(c, n, 2, &t, &dn)))
                return err;
        if (ivn || vn || dn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        if (v > 100000000 || v < -100000000)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "DateAdd: value out of range");
        int64_t mult = 0, months = 0;
        if (ivl == 4 && memcmp(iv, "yyyy", 4) == 0)
                months = 12;
        else if (ivl == 1 && (iv[0] == 'y'))
                mult = 86400; /* day of year */
        else if (ivl == 1 && iv[0] == 'q')
                months = 3;
        else if (ivl == 1 && iv[0] == 'm')
                months = 1;
        else if (ivl == 1 && (iv[0] == 'd' || iv[0] == 'w'))
                mult = 86400;
        else if (ivl == 2 && memcmp(iv, "ww", 2) == 0)
                mult = 7 * 86400;
        else if (ivl == 1 && iv[0] == 'h')
                mult = 3600;
        else if (ivl == 1 && iv[0] == 'n')
                mult = 60;
        else if (ivl == 1 && iv[0] == 's')
                mult = 1;
        else
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "DateAdd: unknown interval '%.*s'", (int)ivl, iv);
        if (months) {
                int64_t days = t.secs >= 0 ? t.secs / 86400 : -((-t.secs + 86399) / 86400);
                int64_t rem = t.secs - days * 86400;
                int64_t y;
                unsigned m, d;
                civil_from_days(days, &y, &m, &d);
                int64_t total = y * 12 + (m - 1) + v * months;
                y = total >= 0 ? total / 12 : -((-total + 11) / 12);
                m = (unsigned)(total - y * 12) + 1;
                static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
                unsigned md = mdays[m - 1] + (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
                if (d > md)
                        d = md;
                if (y < 1 || y > 9999)
                        return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "DateAdd: result out of range");
                t.secs = days_from_civil(y, m, d) * 86400 + rem;
        } else {
                t.secs += v * mult;
        }
        return date_result(c, &t, ret);
}

static canopy_err f_formatdatetime(eval_ctx *c, const node *n, canopy_value *ret)
{
        size_t base = n->u.call.nargs == 4 ? 2 : 1; /* (source, [styles,] in, out) */
        const char *s, *inf, *outf;
        size_t sl, infl, outfl;
        bool sn, in_n, out_n;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &s, &sl, &sn)) || (err = arg_text(c, n, base, &inf, &infl, &in_n)) ||
            (err = arg_text(c, n, base + 1, &outf, &outfl, &out_n)))
                return err;
        if (sn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        if (in_n || out_n)
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "FormatDateTime: input and output formats are required");
        while (sl && s[0] == ' ')
                s++, sl--;
        while (sl && s[sl - 1] == ' ')
                sl--;
        dt t;
        if (!parse_with_format(s, sl, inf, infl, &t))
                return eval_fail(c, CANOPY_ERR_EXPR_EVAL, "FormatDateTime: '%.*s' does not match format '%.*s'",
                                 (int)(sl > 64 ? 64 : sl), s, (int)infl, inf);
        size_t ol;
        char *o = format_date(c, &t, outf, outfl, &ol);
        if (!o)
                return NOMEM(c);
        set_str(ret, o, ol);
        return CANOPY_OK;
}

static canopy_err f_pcase(eval_ctx *c, const node *n, canopy_value *ret)
{
        const char *s, *seps = " \t\r\n-_()[]{}\"'.,;:!?/&+";
        size_t sl, sepl;
        bool sn, sepn;
        canopy_err err;
        if ((err = arg_text(c, n, 0, &s, &sl, &sn)))
                return err;
        if (sn) {
                ret->type = CANOPY_V_NULL;
                return CANOPY_OK;
        }
        const char *given;
        if (arg_given(n, 1)) {
                if ((err = arg_text(c, n, 1, &given, &sepl, &sepn)))
                        return err;
                if (!sepn)
                        seps = canopy_arena_strndup(c->a, given, sepl);
                if (!seps)
                        return NOMEM(c);
        }
        char *o = canopy_arena_alloc(c->a, sl * 2 + 4);
        if (!o)
                return NOMEM(c);
        size_t ol = 0, i = 0;
        bool start = true;
        while (i < sl) {
                uint32_t cp = utf8_next(s, sl, &i);
                bool sep = cp < 0x80 && strchr(seps, (int)cp) && cp != 0;
                uint32_t m = sep ? cp : (start ? uni_toupper(cp) : uni_tolower(cp));
                ol += utf8_put(m, o + ol);
                start = sep;
        }
        o[ol] = '\0';
        set_str(ret, o, ol);
        return CANOPY_OK;
}

/* ---- the table ------------------------------------------------------------ */

static const expr_func funcs[] = {
        {"Append", 2, 2, "ss", T_STR, f_append, 0},
        {"BitAnd", 2, 2, "nn", T_NUM, f_bitand, 0},
        {"CBool", 1, 1, "a", T_BOOL, f_cbool, 0},
        {"CDate", 1, 1, "s", T_STR, f_cdate, 0},
        {"Coalesce", 1, -1, "a", T_ANY, f_coalesce, 0},
        {"ConvertFromBase64", 1, 2, "se", T_STR, f_frombase64, EF_EACH},
        {"ConvertToBase64", 1, 1, "s", T_STR, f_tobase64, 0},
        {"ConvertToUTF8Hex", 1, 1, "s", T_STR, f_utf8hex, 0},
        {"Count", 1, 1, "a", T_NUM, f_count, 0},
        {"CRef", 1, 1, "s", T_STR, f_cref, 0},
        {"CStr", 1, 1, "a", T_STR, f_cstr, 0},
        {"DateAdd", 3, 3, "ins", T_STR, f_dateadd, 0},
        {"DateFromNum", 1, 1, "n", T_STR, f_datefromnum, 0},
        {"DNComponent", 2, 2, "sn", T_STR, f_dncomponent, EF_EACH},
        {"DomainFromDN", 1, 1, "s", T_STR, f_domainfromdn, EF_EACH},
        {"Error", 1, 1, "s", T_VOID, f_error, 0},
        {"FormatDateTime", 3, 4, "ssss", T_STR, f_formatdatetime, EF_EACH},
        {"Guid", 0, 0, "", T_STR, f_guid, 0},
        {"IgnoreFlowIfNullOrEmpty", 1, 1, "a", T_ANY, f_ignoreflow, 0},
        {"IIF", 3, 3, "baa", T_ANY, f_iif, 0},
        {"InStr", 2, 4, "ssne", T_NUM, f_instr, EF_EACH},
        {"IsNull", 1, 1, "a", T_BOOL, f_isnull, 0},
        {"IsNullOrEmpty", 1, 1, "a", T_BOOL, f_isnullorempty, 0},
        {"IsPresent", 1, 1, "a", T_BOOL, f_ispresent, 0},
        {"IsString", 1, 1, "a", T_BOOL, f_isstring, 0},
        {"Item", 2, 2, "an", T_ANY, f_item, 0},
        {"Join", 2, -1, "sa", T_STR, f_join, 0},
        {"Left", 2, 2, "sn", T_STR, f_left, 0},
        {"Mid", 3, 3, "snn", T_STR, f_mid, 0},
        {"NormalizeDiacritics", 1, 1, "s", T_STR, f_normdia, 0},
        {"Not", 1, 1, "b", T_BOOL, f_not, 0},
        {"Now", 0, 0, "", T_STR, f_now, 0},
        {"NumFromDate", 1, 1, "s", T_NUM, f_numfromdate, 0},
        {"PCase", 1, 2, "ss", T_STR, f_pcase, EF_EACH},
        {"RemoveDuplicates", 1, 1, "a", T_ANY, f_removedups, 0},
        {"Replace", 3, 7, "ssrssss", T_STR, f_replace, 0},
        {"SelectUniqueValue", 2, -1, "s", T_STR, f_selectunique, EF_TOPLEVEL},
        {"Split", 2, 2, "ss", T_MULTI, f_split, EF_EACH},
        {"StringFromSid", 1, 1, "a", T_STR, f_stringfromsid, 0},
        {"StripSpaces", 1, 1, "s", T_STR, f_stripspaces, 0},
        {"Switch", 4, -1, "saaa", T_ANY, f_switch, 0},
        {"ToLower", 1, 2, "ss", T_STR, f_tolower, 0},
        {"ToUpper", 1, 2, "ss", T_STR, f_toupper, 0},
        {"Trim", 1, 1, "s", T_STR, f_trim, 0},
        {"Word", 3, 3, "sns", T_STR, f_word, EF_EACH},
};

const expr_func *expr_func_find(const char *name, size_t len)
{
        for (size_t i = 0; i < sizeof(funcs) / sizeof(funcs[0]); i++)
                if (strlen(funcs[i].name) == len && strncasecmp(funcs[i].name, name, len) == 0)
                        return &funcs[i];
        return NULL;
}
