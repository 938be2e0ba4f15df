/* expr_int.h: private to the rules/expression modules. */
#ifndef CANOPY_EXPR_INT_H
#define CANOPY_EXPR_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/arena.h"
#include "canopy/err.h"
#include "canopy/expr.h"

/* ---- unicode / utf-8 (expr_unicode.c tables, expr_text.c helpers) ---- */
typedef struct expr_cpmap {
        uint32_t cp, to;
} expr_cpmap;
typedef struct expr_diamap {
        uint32_t cp;
        const char *to;
} expr_diamap;
extern const expr_cpmap expr_tolower_tab[];
extern const size_t expr_tolower_tab_n;
extern const expr_cpmap expr_toupper_tab[];
extern const size_t expr_toupper_tab_n;
extern const expr_diamap expr_diacritics_tab[];
extern const size_t expr_diacritics_tab_n;

/* Decode one UTF-8 sequence at s[*i] (len bytes); advances *i. Invalid
 * bytes decode as themselves (one byte, cp = byte | 0x80000000 marker
 * stripped: returned as U+FFFD-free raw byte value >= 0x80). */
uint32_t utf8_next(const char *s, size_t len, size_t *i);
/* Encode cp into out (>= 4 bytes); returns the byte count. */
size_t utf8_put(uint32_t cp, char *out);
uint32_t uni_tolower(uint32_t cp);
uint32_t uni_toupper(uint32_t cp);
/* Number of code points in s. */
size_t utf8_count(const char *s, size_t len);
/* Byte offset of code point index `cpi` (clamped to len). */
size_t utf8_offset(const char *s, size_t len, size_t cpi);

/* Case-mapped copy in the arena (upper when `up`). NULL on arena cap. */
char *text_case(canopy_arena *a, const char *s, size_t len, bool up, size_t *ret_len);
/* Diacritics removed (Entra NormalizeDiacritics), in the arena. */
char *text_nodiacritics(canopy_arena *a, const char *s, size_t len, size_t *ret_len);
/* Base64 (standard alphabet, padded) of bytes, in the arena. */
char *text_base64(canopy_arena *a, const void *data, size_t len, size_t *ret_len);
/* Decode base64; NULL when invalid. */
char *text_unbase64(canopy_arena *a, const char *s, size_t len, size_t *ret_len);

/* ---- regular expressions (expr_regex.c): a .NET subset ---------------
 * Supported: literals, ., [...] classes with ranges and \d\w\s, escapes,
 * ^ $ \A \z \Z \b \B, groups ( ), (?: ), (?<name> ), (?'name' ),
 * alternation |, quantifiers * + ? {n} {n,} {n,m} and lazy forms.
 * Case-sensitive, leftmost-first (backtracking) like .NET. */
#define EXPR_RE_MAX_GROUPS 32
#define EXPR_RE_MAX_SUBJECT 65536u
typedef struct expr_regex expr_regex;
/* Compile; on error returns NULL with message and byte position. */
expr_regex *expr_regex_compile(const char *pat, size_t len, char *err, size_t errcap, size_t *errpos);
void expr_regex_free(expr_regex *re);
size_t expr_regex_ngroups(const expr_regex *re); /* including group 0 */
int expr_regex_group(const expr_regex *re, const char *name, size_t len); /* -1 if none */
/* Search s[start..len) for the leftmost match. caps must hold
 * 2*ngroups entries (SIZE_MAX = unset). Returns 1 match, 0 none, -1 when
 * the step budget or the backtrack stack is exhausted. */
int expr_regex_search(const expr_regex *re, const char *s, size_t len, size_t start, size_t *caps);

/* ---- DN parsing (rules_dn.c) ------------------------------------------ */
typedef struct dn_rdn_part {
        const char *type; /* lower-cased, arena */
        const char *value; /* unescaped, arena */
        size_t type_len, value_len;
} dn_rdn_part;
/* Value of the n-th (1-based) RDN from the left, unescaped (first AVA of a
 * multi-valued RDN). NULL when absent or the DN does not parse. */
const char *dn_component(const char *dn, size_t len, size_t n, canopy_arena *a, size_t *ret_len);
/* "corp.example.com" from the DC= components; NULL when none. */
const char *dn_domain(const char *dn, size_t len, canopy_arena *a, size_t *ret_len);

/* ---- AST (expr.c builds, expr_eval.c walks) ---------------------------- */
typedef enum node_kind {
        N_STR = 0,
        N_INT,
        N_BOOL,
        N_ATTR,
        N_CALL,
        N_EMPTY, /* an argument left out: Func(a, , c) */
        N_ENUM,  /* a bare constant: vbTextCompare, UTF8 ... */
        N_BINOP,
} node_kind;

typedef enum binop {
        OP_EQ = 0,
        OP_NE,
        OP_LT,
        OP_LE,
        OP_GT,
        OP_GE,
        OP_CAT, /* & */
} binop;

/* Static result types for the type checker. */
typedef enum stype { T_ANY = 0, T_STR, T_NUM, T_BOOL, T_MULTI, T_VOID } stype;

struct node;
struct eval_ctx;
typedef canopy_err (*expr_fn)(struct eval_ctx *c, const struct node *n, canopy_value *ret);

typedef struct expr_func {
        const char *name;
        int min, max;         /* arity; max -1 = unbounded */
        const char *params;   /* one letter per parameter; the last repeats:
                               * s string, n number, b boolean, a any, r regex
                               * literal, i date interval literal */
        stype ret;
        expr_fn fn;
        unsigned flags;
} expr_func;
#define EF_TOPLEVEL 1u /* may only be the outermost call (SelectUniqueValue) */
#define EF_EACH 2u     /* applies to each value of a multi-valued first argument */

typedef struct node {
        node_kind kind;
        size_t pos; /* byte offset of the node in the source */
        union {
                struct {
                        char *s;
                        size_t len;
                } str;
                int64_t i;
                bool b;
                struct {
                        char *name;  /* lower-case, for lookup */
                        char *orig;  /* as written, for printing */
                } attr;
                struct {
                        const expr_func *fn;
                        struct node **args;
                        size_t nargs;
                        expr_regex *re; /* compiled regex literal argument, if any */
                } call;
                int enumv;
                struct {
                        binop op;
                        struct node *l, *r;
                } bin;
        } u;
} node;

enum { EN_VBTEXT = 0, EN_VBBINARY, EN_UNICODE, EN_ASCII, EN_UTF8 };
extern const char *const expr_enum_names[];

typedef struct eval_ctx {
        const canopy_obj_view *obj;
        const canopy_eval_ctx *ectx;
        canopy_arena *a;
        char *msg;
        size_t msgcap;
        int depth;
        /* EF_EACH: the call whose first argument is being fed one value at
         * a time, and that value. */
        const struct node *each_node;
        const canopy_value *each_val;
        /* Byte offset of the innermost call or operator that failed. */
        size_t err_pos;
        bool err_set;
} eval_ctx;

const expr_func *expr_func_find(const char *name, size_t len);
canopy_err expr_eval_node(eval_ctx *c, const node *n, canopy_value *ret);
canopy_err eval_fail(eval_ctx *c, canopy_err err, const char *fmt, ...);

#endif
