/* expr_regex.c: a small backtracking regular-expression engine for the
 * .NET-style patterns used in Entra mappings and scoping filters
 * (named groups, \d \w \s, lazy quantifiers, leftmost-first semantics).
 *
 * Patterns compile to a program for a backtracking VM (Pike/Thompson
 * instruction set, executed depth-first). Matching allocates nothing: the
 * backtrack stack is a fixed thread-local array and every search has a
 * step budget, so a hostile pattern or subject ends with "too complex"
 * instead of running away.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expr_int.h"

#define RE_MAX_PROG 8192
#define RE_MAX_REPEAT 1000
#define RE_MAX_LOOPS 256
#define RE_MAX_DEPTH 200
#define RE_STACK 8192
#define RE_STEPS 2000000L

enum { I_CHAR, I_ANY, I_CLASS, I_BOL, I_EOL, I_BEGIN, I_END, I_ENDZ, I_WORDB, I_NWORDB,
       I_SPLIT, I_JMP, I_SAVE, I_LSET, I_LCHK, I_MATCH };

enum { CF_DIGIT = 1, CF_NDIGIT = 2, CF_WORD = 4, CF_NWORD = 8, CF_SPACE = 16, CF_NSPACE = 32 };

typedef struct inst {
        int op;
        int x, y;    /* jump targets, slot, class index */
        uint32_t cp; /* I_CHAR */
} inst;

typedef struct rclass {
        uint32_t (*ranges)[2];
        size_t n;
        int flags;
        bool neg;
} rclass;

typedef struct gname {
        char *name;
        int idx;
} gname;

struct expr_regex {
        inst *prog;
        size_t nprog;
        rclass *classes;
        size_t nclasses;
        gname *names;
        size_t nnames;
        int ngroups; /* including 0 */
        int nloops;
};

/* ---- AST --------------------------------------------------------------- */

enum { A_LIT, A_ANY, A_CLASS, A_ASSERT, A_GROUP, A_CAT, A_ALT, A_REP, A_EMPTY };

typedef struct anode {
        int kind;
        uint32_t cp;
        int idx;  /* class index, assert op, capture index (-1 none) */
        int min, max; /* REP, max -1 = inf */
        bool greedy;
        struct anode **kids;
        size_t nkids;
} anode;

typedef struct rparser {
        const char *p;
        size_t len, pos;
        expr_regex *re;
        char *err;
        size_t errcap;
        size_t errpos;
        bool failed;
        int depth;
} rparser;

static void rfail(rparser *ps, const char *msg)
{
        if (ps->failed)
                return;
        ps->failed = true;
        ps->errpos = ps->pos;
        snprintf(ps->err, ps->errcap, "%s", msg);
}

static anode *anew(rparser *ps, int kind)
{
        anode *n = calloc(1, sizeof(*n));
        if (!n) {
                rfail(ps, "out of memory");
                return NULL;
        }
        n->kind = kind;
        n->idx = -1;
        return n;
}

static void afree(anode *n)
{
        if (!n)
                return;
        for (size_t i = 0; i < n->nkids; i++)
                afree(n->kids[i]);
        free(n->kids);
        free(n);
}

static bool akid(rparser *ps, anode *n, anode *k)
{
        if (!k)
                return false;
        anode **nk = realloc(n->kids, (n->nkids + 1) * sizeof(*nk));
        if (!nk) {
                afree(k);
                rfail(ps, "out of memory");
                return false;
        }
        n->kids = nk;
        n->kids[n->nkids++] = k;
        return true;
}

static int add_class(rparser *ps, rclass *c)
{
        rclass *nc = realloc(ps->re->classes, (ps->re->nclasses + 1) * sizeof(*nc));
        if (!nc) {
                free(c->ranges);
                rfail(ps, "out of memory");
                return -1;
        }
        ps->re->classes = nc;
        nc[ps->re->nclasses] = *c;
        return (int)ps->re->nclasses++;
}

static bool class_range(rparser *ps, rclass *c, uint32_t lo, uint32_t hi)
{
        if (c->n >= 512) {
                rfail(ps, "character class too large");
                return false;
        }
        uint32_t(*nr)[2] = realloc(c->ranges, (c->n + 1) * sizeof(*nr));
        if (!nr) {
                rfail(ps, "out of memory");
                return false;
        }
        c->ranges = nr;
        nr[c->n][0] = lo;
        nr[c->n][1] = hi;
        c->n++;
        return true;
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

/* Parse an escape after '\'. Returns 1 with *cp for a literal, 2 with
 * *flags for a class shorthand, 3 with *flags = assert op, 0 on error. */
static int parse_escape(rparser *ps, uint32_t *cp, int *flags, bool in_class)
{
        if (ps->pos >= ps->len) {
                rfail(ps, "trailing backslash in pattern");
                return 0;
        }
        char c = ps->p[ps->pos++];
        switch (c) {
        case 'd': *flags = CF_DIGIT; return 2;
        case 'D': *flags = CF_NDIGIT; return 2;
        case 'w': *flags = CF_WORD; return 2;
        case 'W': *flags = CF_NWORD; return 2;
        case 's': *flags = CF_SPACE; return 2;
        case 'S': *flags = CF_NSPACE; return 2;
        case 't': *cp = '\t'; return 1;
        case 'n': *cp = '\n'; return 1;
        case 'r': *cp = '\r'; return 1;
        case 'f': *cp = '\f'; return 1;
        case 'v': *cp = '\v'; return 1;
        case 'e': *cp = 27; return 1;
        case '0': *cp = 0; return 1;
        case 'b':
                if (in_class) {
                        *cp = '\b';
                        return 1;
                }
                *flags = I_WORDB;
                return 3;
        case 'B': if (!in_class) { *flags = I_NWORDB; return 3; } break;
        case 'A': if (!in_class) { *flags = I_BEGIN; return 3; } break;
        case 'z': if (!in_class) { *flags = I_END; return 3; } break;
        case 'Z': if (!in_class) { *flags = I_ENDZ; return 3; } break;
        case 'x': case 'u': {
                int nd = c == 'x' ? 2 : 4;
                uint32_t v = 0;
                for (int i = 0; i < nd; i++) {
                        if (ps->pos >= ps->len || hexv(ps->p[ps->pos]) < 0) {
                                rfail(ps, "bad hex escape in pattern");
                                return 0;
                        }
                        v = v * 16 + (uint32_t)hexv(ps->p[ps->pos++]);
                }
                *cp = v;
                return 1;
        }
        default:
                break;
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '1' && c <= '9')) {
                ps->pos--;
                rfail(ps, "unsupported escape in pattern");
                return 0;
        }
        /* Any other escaped character stands for itself (\. \+ \( \\ ...). */
        ps->pos--;
        size_t i = ps->pos;
        *cp = utf8_next(ps->p, ps->len, &i);
        ps->pos = i;
        return 1;
}

static anode *parse_alt(rparser *ps);

static anode *parse_class(rparser *ps)
{
        rclass c = {0};
        if (ps->pos < ps->len && ps->p[ps->pos] == '^') {
                c.neg = true;
                ps->pos++;
        }
        bool first = true;
        for (;;) {
                if (ps->pos >= ps->len) {
                        free(c.ranges);
                        rfail(ps, "unterminated character class");
                        return NULL;
                }
                char ch = ps->p[ps->pos];
                if (ch == ']' && !first) {
                        ps->pos++;
                        break;
                }
                first = false;
                uint32_t lo;
                if (ch == '\\') {
                        ps->pos++;
                        int fl = 0;
                        int k = parse_escape(ps, &lo, &fl, true);
                        if (k == 0) {
                                free(c.ranges);
                                return NULL;
                        }
                        if (k == 2) {
                                c.flags |= fl;
                                continue;
                        }
                } else {
                        size_t i = ps->pos;
                        lo = utf8_next(ps->p, ps->len, &i);
                        ps->pos = i;
                }
                uint32_t hi = lo;
                if (ps->pos + 1 < ps->len && ps->p[ps->pos] == '-' && ps->p[ps->pos + 1] != ']') {
                        ps->pos++;
                        if (ps->p[ps->pos] == '\\') {
                                ps->pos++;
                                int fl = 0;
                                int k = parse_escape(ps, &hi, &fl, true);
                                if (k != 1) {
                                        free(c.ranges);
                                        if (k == 2)
                                                rfail(ps, "bad range in character class");
                                        return NULL;
                                }
                        } else {
                                size_t i = ps->pos;
                                hi = utf8_next(ps->p, ps->len, &i);
                                ps->pos = i;
                        }
                        if (hi < lo) {
                                free(c.ranges);
                                rfail(ps, "range out of order in character class");
                                return NULL;
                        }
                }
                if (!class_range(ps, &c, lo, hi)) {
                        free(c.ranges);
                        return NULL;
                }
        }
        int idx = add_class(ps, &c);
        if (idx < 0)
                return NULL;
        anode *n = anew(ps, A_CLASS);
        if (n)
                n->idx = idx;
        return n;
}

static anode *parse_atom(rparser *ps)
{
        char ch = ps->p[ps->pos];
        anode *n;
        switch (ch) {
        case '(': {
                ps->pos++;
                int cap = -1;
                if (ps->pos < ps->len && ps->p[ps->pos] == '?') {
                        ps->pos++;
                        if (ps->pos < ps->len && ps->p[ps->pos] == ':') {
                                ps->pos++;
                        } else if (ps->pos < ps->len && (ps->p[ps->pos] == '<' || ps->p[ps->pos] == '\'') &&
                                   ps->pos + 1 < ps->len && ps->p[ps->pos + 1] != '=' && ps->p[ps->pos + 1] != '!') {
                                char close = ps->p[ps->pos] == '<' ? '>' : '\'';
                                size_t start = ++ps->pos;
                                while (ps->pos < ps->len && ps->p[ps->pos] != close) {
                                        char g = ps->p[ps->pos];
                                        if (!((g >= 'a' && g <= 'z') || (g >= 'A' && g <= 'Z') || (g >= '0' && g <= '9') || g == '_')) {
                                                rfail(ps, "bad group name");
                                                return NULL;
                                        }
                                        ps->pos++;
                                }
                                if (ps->pos >= ps->len || ps->pos == start) {
                                        rfail(ps, "bad group name");
                                        return NULL;
                                }
                                if (ps->re->ngroups >= EXPR_RE_MAX_GROUPS) {
                                        rfail(ps, "too many groups");
                                        return NULL;
                                }
                                gname *nn = realloc(ps->re->names, (ps->re->nnames + 1) * sizeof(*nn));
                                if (!nn) {
                                        rfail(ps, "out of memory");
                                        return NULL;
                                }
                                ps->re->names = nn;
                                nn[ps->re->nnames].name = strndup(ps->p + start, ps->pos - start);
                                nn[ps->re->nnames].idx = ps->re->ngroups;
                                if (!nn[ps->re->nnames].name) {
                                        rfail(ps, "out of memory");
                                        return NULL;
                                }
                                ps->re->nnames++;
                                cap = ps->re->ngroups++;
                                ps->pos++;
                        } else {
                                rfail(ps, "unsupported group construct");
                                return NULL;
                        }
                } else {
                        if (ps->re->ngroups >= EXPR_RE_MAX_GROUPS) {
                                rfail(ps, "too many groups");
                                return NULL;
                        }
                        cap = ps->re->ngroups++;
                }
                anode *inner = parse_alt(ps);
                if (!inner)
                        return NULL;
                if (ps->pos >= ps->len || ps->p[ps->pos] != ')') {
                        afree(inner);
                        rfail(ps, "missing ) in pattern");
                        return NULL;
                }
                ps->pos++;
                n = anew(ps, A_GROUP);
                if (!n) {
                        afree(inner);
                        return NULL;
                }
                n->idx = cap;
                if (!akid(ps, n, inner)) {
                        afree(n);
                        return NULL;
                }
                return n;
        }
        case '[':
                ps->pos++;
                return parse_class(ps);
        case '.':
                ps->pos++;
                return anew(ps, A_ANY);
        case '^':
        case '$':
                ps->pos++;
                n = anew(ps, A_ASSERT);
                if (n)
                        n->idx = ch == '^' ? I_BOL : I_EOL;
                return n;
        case '\\': {
                ps->pos++;
                uint32_t cp = 0;
                int fl = 0;
                int k = parse_escape(ps, &cp, &fl, false);
                if (k == 0)
                        return NULL;
                if (k == 1) {
                        n = anew(ps, A_LIT);
                        if (n)
                                n->cp = cp;
                        return n;
                }
                if (k == 3) {
                        n = anew(ps, A_ASSERT);
                        if (n)
                                n->idx = fl;
                        return n;
                }
                rclass c = {0};
                c.flags = fl;
                int idx = add_class(ps, &c);
                if (idx < 0)
                        return NULL;
                n = anew(ps, A_CLASS);
                if (n)
                        n->idx = idx;
                return n;
        }
        case '*': case '+': case '?':
                rfail(ps, "quantifier without operand");
                return NULL;
        default: {
                size_t i = ps->pos;
                uint32_t cp = utf8_next(ps->p, ps->len, &i);
                ps->pos = i;
                n = anew(ps, A_LIT);
                if (n)
                        n->cp = cp;
                return n;
        }
        }
}

static bool parse_int(rparser *ps, int *v)
{
        size_t start = ps->pos;
        long acc = 0;
        while (ps->pos < ps->len && ps->p[ps->pos] >= '0' && ps->p[ps->pos] <= '9') {
                acc = acc * 10 + (ps->p[ps->pos] - '0');
                if (acc > 100000)
                        acc = 100000;
                ps->pos++;
        }
        *v = (int)acc;
        return ps->pos > start;
}

static anode *parse_repeat(rparser *ps)
{
        anode *atom = parse_atom(ps);
        while (atom && ps->pos < ps->len) {
                char ch = ps->p[ps->pos];
                int min, max;
                if (ch == '*') {
                        min = 0;
                        max = -1;
                        ps->pos++;
                } else if (ch == '+') {
                        min = 1;
                        max = -1;
                        ps->pos++;
                } else if (ch == '?') {
                        min = 0;
                        max = 1;
                        ps->pos++;
                } else if (ch == '{') {
                        size_t save = ps->pos;
                        ps->pos++;
                        if (!parse_int(ps, &min)) {
                                ps->pos = save; /* a literal '{' as in .NET */
                                break;
                        }
                        max = min;
                        if (ps->pos < ps->len && ps->p[ps->pos] == ',') {
                                ps->pos++;
                                if (!parse_int(ps, &max))
                                        max = -1;
                        }
                        if (ps->pos >= ps->len || ps->p[ps->pos] != '}') {
                                ps->pos = save;
                                break;
                        }
                        ps->pos++;
                        if (min > RE_MAX_REPEAT || max > RE_MAX_REPEAT || (max >= 0 && max < min)) {
                                afree(atom);
                                rfail(ps, "bad repetition count");
                                return NULL;
                        }
                } else {
                        break;
                }
                if (atom->kind == A_ASSERT) {
                        afree(atom);
                        rfail(ps, "quantifier after an anchor");
                        return NULL;
                }
                bool greedy = true;
                if (ps->pos < ps->len && ps->p[ps->pos] == '?') {
                        greedy = false;
                        ps->pos++;
                }
                anode *r = anew(ps, A_REP);
                if (!r) {
                        afree(atom);
                        return NULL;
                }
                r->min = min;
                r->max = max;
                r->greedy = greedy;
                if (!akid(ps, r, atom)) {
                        afree(r);
                        return NULL;
                }
                atom = r;
        }
        return atom;
}

static anode *parse_cat(rparser *ps)
{
        anode *cat = anew(ps, A_CAT);
        if (!cat)
                return NULL;
        while (ps->pos < ps->len && ps->p[ps->pos] != '|' && ps->p[ps->pos] != ')') {
                anode *k = parse_repeat(ps);
                if (!k || !akid(ps, cat, k)) {
                        afree(cat);
                        return NULL;
                }
        }
        return cat;
}

static anode *parse_alt(rparser *ps)
{
        if (++ps->depth > RE_MAX_DEPTH) {
                rfail(ps, "pattern nested too deeply");
                return NULL;
        }
        anode *first = parse_cat(ps);
        if (!first)
                return NULL;
        if (ps->pos >= ps->len || ps->p[ps->pos] != '|') {
                ps->depth--;
                return first;
        }
        anode *alt = anew(ps, A_ALT);
        if (!alt || !akid(ps, alt, first)) {
                afree(alt);
                return NULL;
        }
        while (ps->pos < ps->len && ps->p[ps->pos] == '|') {
                ps->pos++;
                anode *k = parse_cat(ps);
                if (!k || !akid(ps, alt, k)) {
                        afree(alt);
                        return NULL;
                }
        }
        ps->depth--;
        return alt;
}

/* ---- code generation ---------------------------------------------------- */

typedef struct emitter {
        expr_regex *re;
        size_t cap;
        bool failed;
        const char *msg;
} emitter;

static int emit(emitter *e, int op, int x, int y, uint32_t cp)
{
        if (e->failed)
                return -1;
        if (e->re->nprog >= RE_MAX_PROG) {
                e->failed = true;
                e->msg = "pattern too large";
                return -1;
        }
        if (e->re->nprog == e->cap) {
                size_t nc = e->cap ? e->cap * 2 : 64;
                inst *np = realloc(e->re->prog, nc * sizeof(*np));
                if (!np) {
                        e->failed = true;
                        e->msg = "out of memory";
                        return -1;
                }
                e->re->prog = np;
                e->cap = nc;
        }
        inst *in = &e->re->prog[e->re->nprog];
        in->op = op;
        in->x = x;
        in->y = y;
        in->cp = cp;
        return (int)e->re->nprog++;
}

static void gen(emitter *e, const anode *n);

static void gen_star(emitter *e, const anode *body, bool greedy)
{
        if (e->re->nloops >= RE_MAX_LOOPS) {
                e->failed = true;
                e->msg = "too many loops in pattern";
                return;
        }
        int reg = e->re->nloops++;
        int l = emit(e, I_SPLIT, 0, 0, 0);
        if (l < 0)
                return;
        int bodyst = (int)e->re->nprog;
        emit(e, I_LSET, reg, 0, 0);
        gen(e, body);
        emit(e, I_LCHK, reg, 0, 0);
        emit(e, I_JMP, l, 0, 0);
        if (e->failed)
                return;
        int out = (int)e->re->nprog;
        e->re->prog[l].x = greedy ? bodyst : out;
        e->re->prog[l].y = greedy ? out : bodyst;
}

static void gen(emitter *e, const anode *n)
{
        if (e->failed)
                return;
        switch (n->kind) {
        case A_LIT:
                emit(e, I_CHAR, 0, 0, n->cp);
                break;
        case A_ANY:
                emit(e, I_ANY, 0, 0, 0);
                break;
        case A_CLASS:
                emit(e, I_CLASS, n->idx, 0, 0);
                break;
        case A_ASSERT:
                emit(e, n->idx, 0, 0, 0);
                break;
        case A_GROUP:
                if (n->idx >= 0)
                        emit(e, I_SAVE, 2 * n->idx, 0, 0);
                gen(e, n->kids[0]);
                if (n->idx >= 0)
                        emit(e, I_SAVE, 2 * n->idx + 1, 0, 0);
                break;
        case A_CAT:
                for (size_t i = 0; i < n->nkids; i++)
                        gen(e, n->kids[i]);
                break;
        case A_ALT: {
                int jumps[256];
                size_t nj = 0;
                for (size_t i = 0; i < n->nkids; i++) {
                        if (i + 1 < n->nkids) {
                                int s = emit(e, I_SPLIT, 0, 0, 0);
                                if (s < 0)
                                        return;
                                e->re->prog[s].x = s + 1;
                                gen(e, n->kids[i]);
                                int j = emit(e, I_JMP, 0, 0, 0);
                                if (j < 0)
                                        return;
                                if (nj < 256)
                                        jumps[nj++] = j;
                                else {
                                        e->failed = true;
                                        e->msg = "too many alternatives";
                                        return;
                                }
                                e->re->prog[s].y = (int)e->re->nprog;
                        } else {
                                gen(e, n->kids[i]);
                        }
                }
                if (e->failed)
                        return;
                for (size_t i = 0; i < nj; i++)
                        e->re->prog[jumps[i]].x = (int)e->re->nprog;
                break;
        }
        case A_REP: {
                for (int i = 0; i < n->min; i++)
                        gen(e, n->kids[0]);
                if (n->max < 0) {
                        gen_star(e, n->kids[0], n->greedy);
                } else {
                        int splits[RE_MAX_REPEAT];
                        int ns = 0;
                        for (int i = n->min; i < n->max; i++) {
                                int s = emit(e, I_SPLIT, 0, 0, 0);
                                if (s < 0)
                                        return;
                                splits[ns++] = s;
                                gen(e, n->kids[0]);
                        }
                        if (e->failed)
                                return;
                        int end = (int)e->re->nprog;
                        for (int i = 0; i < ns; i++) {
                                e->re->prog[splits[i]].x = n->greedy ? splits[i] + 1 : end;
                                e->re->prog[splits[i]].y = n->greedy ? end : splits[i] + 1;
                        }
                }
                break;
        }
        default:
                break;
        }
}

void expr_regex_free(expr_regex *re)
{
        if (!re)
                return;
        free(re->prog);
        for (size_t i = 0; i < re->nclasses; i++)
                free(re->classes[i].ranges);
        free(re->classes);
        for (size_t i = 0; i < re->nnames; i++)
                free(re->names[i].name);
        free(re->names);
        free(re);
}

expr_regex *expr_regex_compile(const char *pat, size_t len, char *err, size_t errcap, size_t *errpos)
{
        expr_regex *re = calloc(1, sizeof(*re));
        if (!re) {
                snprintf(err, errcap, "out of memory");
                *errpos = 0;
                return NULL;
        }
        re->ngroups = 1;
        rparser ps = {.p = pat, .len = len, .re = re, .err = err, .errcap = errcap};
        anode *root = parse_alt(&ps);
        if (root && ps.pos < ps.len) {
                rfail(&ps, "unbalanced ) in pattern");
        }
        if (ps.failed || !root) {
                afree(root);
                *errpos = ps.errpos;
                expr_regex_free(re);
                return NULL;
        }
        emitter e = {.re = re};
        emit(&e, I_SAVE, 0, 0, 0);
        gen(&e, root);
        emit(&e, I_SAVE, 1, 0, 0);
        emit(&e, I_MATCH, 0, 0, 0);
        afree(root);
        if (e.failed) {
                snprintf(err, errcap, "%s", e.msg);
                *errpos = 0;
                expr_regex_free(re);
                return NULL;
        }
        return re;
}

size_t expr_regex_ngroups(const expr_regex *re)
{
        return (size_t)re->ngroups;
}

int expr_regex_group(const expr_regex *re, const char *name, size_t len)
{
        for (size_t i = 0; i < re->nnames; i++)
                if (strlen(re->names[i].name) == len && memcmp(re->names[i].name, name, len) == 0)
                        return re->names[i].idx;
        /* A number names a numbered group. */
        if (len > 0 && len < 4) {
                int v = 0;
                for (size_t i = 0; i < len; i++) {
                        if (name[i] < '0' || name[i] > '9')
                                return -1;
                        v = v * 10 + (name[i] - '0');
                }
                return v < re->ngroups ? v : -1;
        }
        return -1;
}

/* ---- matching ------------------------------------------------------------ */

static bool is_word(uint32_t c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
               (c >= 0xC0 && c != 0xD7 && c != 0xF7 && !(c >= 0x2000 && c <= 0x206F));
}

static bool is_space(uint32_t c)
{
        return c == ' ' || (c >= 9 && c <= 13) || c == 0x85 || c == 0xA0 || (c >= 0x2000 && c <= 0x200A) ||
               c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool class_match(const rclass *c, uint32_t cp)
{
        bool m = false;
        for (size_t i = 0; i < c->n && !m; i++)
                if (cp >= c->ranges[i][0] && cp <= c->ranges[i][1])
                        m = true;
        if (!m && c->flags) {
                bool d = cp >= '0' && cp <= '9';
                if (((c->flags & CF_DIGIT) && d) || ((c->flags & CF_NDIGIT) && !d) ||
                    ((c->flags & CF_WORD) && is_word(cp)) || ((c->flags & CF_NWORD) && !is_word(cp)) ||
                    ((c->flags & CF_SPACE) && is_space(cp)) || ((c->flags & CF_NSPACE) && !is_space(cp)))
                        m = true;
        }
        return c->neg ? !m : m;
}

typedef struct bt {
        int pc; /* -1: restore slot */
        int slot;
        size_t sp;
} bt;

static _Thread_local bt bt_stack[RE_STACK];

static uint32_t prev_cp(const char *s, size_t sp)
{
        if (sp == 0)
                return 0;
        size_t b = sp - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80 && sp - b < 4)
                b--;
        size_t i = b;
        return utf8_next(s, sp, &i);
}

static int run(const expr_regex *re, const char *s, size_t len, size_t start, size_t *slots, long *steps)
{
        size_t top = 0;
        int pc = 0;
        size_t sp = start;
        for (;;) {
                if (--*steps < 0)
                        return -1;
                const inst *in = &re->prog[pc];
                bool ok = true;
                switch (in->op) {
                case I_CHAR:
                case I_ANY:
                case I_CLASS: {
                        if (sp >= len) {
                                ok = false;
                                break;
                        }
                        size_t i = sp;
                        uint32_t cp = utf8_next(s, len, &i);
                        if (in->op == I_CHAR)
                                ok = cp == in->cp;
                        else if (in->op == I_ANY)
                                ok = cp != '\n';
                        else
                                ok = class_match(&re->classes[in->x], cp);
                        if (ok) {
                                sp = i;
                                pc++;
                        }
                        break;
                }
                case I_BOL:
                case I_BEGIN:
                        ok = sp == 0;
                        pc++;
                        break;
                case I_EOL:
                case I_ENDZ:
                        ok = sp == len || (sp + 1 == len && s[sp] == '\n');
                        pc++;
                        break;
                case I_END:
                        ok = sp == len;
                        pc++;
                        break;
                case I_WORDB:
                case I_NWORDB: {
                        bool a = sp > 0 && is_word(prev_cp(s, sp));
                        size_t i = sp;
                        bool b = sp < len && is_word(utf8_next(s, len, &i));
                        ok = (a != b) == (in->op == I_WORDB);
                        pc++;
                        break;
                }
                case I_SPLIT:
                        if (top >= RE_STACK)
                                return -1;
                        bt_stack[top].pc = in->y;
                        bt_stack[top].sp = sp;
                        top++;
                        pc = in->x;
                        break;
                case I_JMP:
                        pc = in->x;
                        break;
                case I_SAVE:
                case I_LSET: {
                        int slot = in->op == I_SAVE ? in->x : 2 * re->ngroups + in->x;
                        if (top >= RE_STACK)
                                return -1;
                        bt_stack[top].pc = -1;
                        bt_stack[top].slot = slot;
                        bt_stack[top].sp = slots[slot];
                        top++;
                        slots[slot] = sp;
                        pc++;
                        break;
                }
                case I_LCHK:
                        /* A loop iteration that consumed nothing ends the loop. */
                        ok = slots[2 * re->ngroups + in->x] != sp;
                        pc++;
                        break;
                case I_MATCH:
                        return 1;
                default:
                        return -1;
                }
                if (ok)
                        continue;
                /* Backtrack. */
                for (;;) {
                        if (top == 0)
                                return 0;
                        bt *b = &bt_stack[--top];
                        if (b->pc < 0) {
                                slots[b->slot] = b->sp;
                                continue;
                        }
                        pc = b->pc;
                        sp = b->sp;
                        break;
                }
        }
}

int expr_regex_search(const expr_regex *re, const char *s, size_t len, size_t start, size_t *caps)
{
        if (len > EXPR_RE_MAX_SUBJECT)
                return -1;
        size_t slots[2 * EXPR_RE_MAX_GROUPS + RE_MAX_LOOPS];
        size_t nslots = 2 * (size_t)re->ngroups + (size_t)re->nloops;
        long steps = RE_STEPS;
        size_t sp = start;
        for (;;) {
                for (size_t i = 0; i < nslots; i++)
                        slots[i] = SIZE_MAX;
                int r = run(re, s, len, sp, slots, &steps);
                if (r != 0) {
                        if (r == 1)
                                memcpy(caps, slots, 2 * (size_t)re->ngroups * sizeof(size_t));
                        return r;
                }
                if (sp >= len)
                        return 0;
                utf8_next(s, len, &sp);
        }
}
