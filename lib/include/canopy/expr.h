/* canopy/expr.h: Entra attribute-mapping expressions.
 *
 * Syntax (as in Entra provisioning / cloud sync attribute mappings):
 *   [attribute]            attribute reference (name case-insensitive);
 *                          [dn] is the object's DN, [sourceAnchor] its anchor
 *                          bytes, when the view has no such attribute
 *   "text"                 string literal, \" and \\ escapes
 *   123  -5                integer literal (64-bit)
 *   True  False            booleans (case-insensitive)
 *   Func(arg, ...)         function call (name case-insensitive)
 *   &HF7                   hexadecimal integer literal
 *   a = b, a <> b, < <= > >=  comparisons;  a & b  string concatenation
 *   Func(a, , c)           an empty argument is "not given" 
 * Functions and their null / multi-valued semantics: docs/RULES.md.
 *
 * An expression is compiled once (canopy_expr_compile) to a typed tree and
 * evaluated many times (canopy_expr_eval) against an object view. Evaluation
 * takes its result, and any scratch memory, from a caller's arena; it
 * allocates nothing else. A compiled expression is immutable and may be
 * evaluated by several threads at once (each with its own arena).
 */
#ifndef CANOPY_EXPR_H
#define CANOPY_EXPR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/arena.h"
#include "canopy/err.h"
#include "canopy/event.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Caps. */
#define CANOPY_EXPR_MAX_SOURCE 65536u /* bytes of one expression */
#define CANOPY_EXPR_MAX_DEPTH 64u     /* nesting of calls */
#define CANOPY_EXPR_MAX_ARGS 64u      /* arguments of one call */
#define CANOPY_EXPR_MAX_VALUES 100000u /* values of one multi-valued result */

/* ---- values ---------------------------------------------------------- */

typedef enum canopy_vtype {
        CANOPY_V_NULL = 0, /* absent attribute, or a function's null result */
        CANOPY_V_STR,      /* UTF-8 text, s/len (not necessarily NUL-terminated) */
        CANOPY_V_BIN,      /* binary bytes, s/len (objectGUID, ...) */
        CANOPY_V_INT,      /* 64-bit integer */
        CANOPY_V_BOOL,
        CANOPY_V_MULTI,    /* multi-valued: items[n], each STR/BIN/INT/BOOL */
} canopy_vtype;

typedef struct canopy_value {
        canopy_vtype type;
        union {
                struct {
                        const char *s; /* borrowed from the object view or owned by the arena */
                        size_t len;
                } str;                 /* STR and BIN */
                int64_t i;             /* INT */
                bool b;                /* BOOL */
                struct {
                        const struct canopy_value *items;
                        size_t n;
                } multi;               /* MULTI (n >= 2 when produced from an attribute) */
        } u;
} canopy_value;

/* Render a value as text into the arena (INT decimal, BOOL "True"/"False",
 * BIN base64, MULTI values joined by `sep`; NULL -> NULL). (arena-owned) */
const char *canopy_value_to_text(const canopy_value *v, const char *sep, canopy_arena *a);

/* ---- object view ----------------------------------------------------- */

/* A read-only view of one directory object, so that callers can evaluate
 * rules on their own representation (Redis hashes, change events) without
 * copying. Every pointer is borrowed for the duration of the call. */
typedef struct canopy_obj_view {
        const char *connector;    /* connector id */
        const char *dn;           /* distinguished name (may be NULL) */
        const char *object_type;  /* "user" | "group" | "contact" (may be NULL: classified from objectClass) */
        const canopy_bytes *anchor; /* source anchor bytes (may be NULL) */
        /* Values of attribute `name` (lower-case ASCII, e.g. "givenname").
         * Sets *ret_values to an array of *ret_n values (borrowed, valid for
         * the duration of the evaluation) and *ret_binary; returns false when
         * the attribute is absent (an attribute with no value = absent). */
        bool (*lookup)(void *ctx, const char *name, const canopy_bytes **ret_values, size_t *ret_n,
                       bool *ret_binary);
        void *ctx;
} canopy_obj_view;

/* Fill `view` to read a change event's attributes (full images; delta
 * attributes are skipped). `ev` borrowed, must outlive the view. */
void canopy_obj_view_from_event(canopy_obj_view *view, const canopy_change_event *ev);

/* Fill `view` to read an array of attributes (same struct as events; names
 * compared case-insensitively). `attrs` borrowed. `holder` is caller storage
 * that must outlive the view. */
typedef struct canopy_attr_array {
        const canopy_attr *attrs;
        size_t nattrs;
} canopy_attr_array;
void canopy_obj_view_from_attrs(canopy_obj_view *view, canopy_attr_array *holder, const char *connector,
                                const char *dn, const char *object_type, const canopy_attr *attrs,
                                size_t nattrs);

/* ---- compile --------------------------------------------------------- */

typedef struct canopy_expr canopy_expr;

/* Where and why a compile failed. `pos` is a byte offset in the source. */
typedef struct canopy_expr_error {
        size_t pos;
        char msg[256];
} canopy_expr_error;

/* Compile-time environment. All pointers borrowed, all optional. */
typedef struct canopy_expr_env {
        /* When set, an attribute reference not in this list (case-insensitive)
         * is a compile error ("unknown attribute"). */
        const char *const *attributes;
        size_t nattributes;
} canopy_expr_env;

/* Compile `src` (len bytes, need not be NUL-terminated). env may be NULL.
 * On success *ret is owned by the caller (canopy_expr_free). On failure
 * returns CANOPY_ERR_RULES_SYNTAX (parse) or CANOPY_ERR_RULES_SEMANTIC
 * (unknown function, arity, type, unknown attribute) and fills *ret_error
 * (may be NULL). */
canopy_err canopy_expr_compile(const char *src, size_t len, const canopy_expr_env *env, canopy_expr **ret,
                               canopy_expr_error *ret_error);

/* Free a compiled expression. NULL allowed. */
void canopy_expr_free(canopy_expr *e);

/* Canonical source text of the expression (parses back to the same tree).
 * Returned string owned by the caller (free()); NULL on out of memory. */
char *canopy_expr_print(const canopy_expr *e);

/* The attribute names the expression reads (lower-case), borrowed from e. */
size_t canopy_expr_attributes(const canopy_expr *e, const char *const **ret_names);

/* ---- evaluate -------------------------------------------------------- */

/* Per-call context. All optional (NULL / 0). */
typedef struct canopy_eval_ctx {
        /* SelectUniqueValue: return true when `value` is not yet used by
         * another object for target property `property`. When NULL, every
         * candidate is unique (the first non-null one is chosen). */
        bool (*is_unique)(void *ctx, const char *property, const char *value);
        void *unique_ctx;
        const char *property; /* target property being computed (for is_unique) */
        /* Clock for Now-relative functions, ms since epoch (0: real clock). */
        int64_t now_ms;
} canopy_eval_ctx;

/* Evaluate `e` on `obj`. Result in *ret (memory borrowed from obj, from the
 * compiled expression's literals, or owned by `a`: valid while all three live). Returns CANOPY_OK, CANOPY_ERR_EXPR_SKIP when the flow must be
 * skipped (IgnoreFlowIfNullOrEmpty), CANOPY_ERR_EXPR_EVAL on a runtime error
 * (bad regex input, non-numeric text where a number is needed) with a
 * message in ret_msg (may be NULL, size msgcap), CANOPY_ERR_LIMIT when the
 * arena cap or a value cap is hit. ctx may be NULL. */
canopy_err canopy_expr_eval(const canopy_expr *e, const canopy_obj_view *obj, const canopy_eval_ctx *ctx,
                            canopy_arena *a, canopy_value *ret, char *ret_msg, size_t msgcap);

/* canopy_expr_eval, and on an error ret_err->msg and ret_err->pos, the byte
 * offset in the source of the innermost call or operator that failed (for
 * canopy_expr_format_error). */
canopy_err canopy_expr_eval_at(const canopy_expr *e, const canopy_obj_view *obj, const canopy_eval_ctx *ctx,
                               canopy_arena *a, canopy_value *ret, canopy_expr_error *ret_err);

/* Format a compile error as "name:line:col: error: msg\n<line>\n<caret>\n"
 * for an expression that starts at (line, col) of a file (1-based; pass 1,1
 * for a standalone expression). Returned string owned by caller (free()). */
char *canopy_expr_format_error(const char *name, const char *src, size_t len, unsigned line, unsigned col,
                               const canopy_expr_error *err);

#ifdef __cplusplus
}
#endif
#endif
