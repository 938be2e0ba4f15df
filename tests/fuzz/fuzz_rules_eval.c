/* fuzz_rules_eval.c: expression compiler, printer round trip, evaluator,
 * regex engine and DN parser. Input: the expression, then optionally a NUL
 * byte and "name=value" lines forming the object. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/expr.h"
#include "canopy/rules.h"

typedef struct fobj {
        char names[16][64];
        canopy_bytes vals[16][2];
        size_t n[16];
        size_t count;
} fobj;

static bool lookup(void *ctx, const char *name, const canopy_bytes **ret, size_t *n, bool *bin)
{
        fobj *o = ctx;
        *bin = false;
        for (size_t i = 0; i < o->count; i++)
                if (!strcasecmp(o->names[i], name)) {
                        *ret = o->vals[i];
                        *n = o->n[i];
                        return true;
                }
        return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const char *s = (const char *)data;
        const char *nul = memchr(s, '\0', size);
        size_t elen = nul ? (size_t)(nul - s) : size;
        fobj o = {0};
        if (nul) {
                const char *p = nul + 1, *end = s + size;
                while (p < end && o.count < 16) {
                        const char *nl = memchr(p, '\n', (size_t)(end - p));
                        const char *le = nl ? nl : end;
                        const char *eq = memchr(p, '=', (size_t)(le - p));
                        if (eq && eq > p && (size_t)(eq - p) < 63) {
                                size_t k = o.count;
                                for (size_t i = 0; i < o.count; i++)
                                        if (strlen(o.names[i]) == (size_t)(eq - p) && !strncasecmp(o.names[i], p, (size_t)(eq - p)))
                                                k = i;
                                if (k == o.count) {
                                        memcpy(o.names[k], p, (size_t)(eq - p));
                                        o.count++;
                                }
                                if (o.n[k] < 2) {
                                        o.vals[k][o.n[k]].data = (uint8_t *)(eq + 1);
                                        o.vals[k][o.n[k]].len = (size_t)(le - eq - 1);
                                        o.n[k]++;
                                }
                        }
                        p = le + 1;
                }
        }
        canopy_arena *a = canopy_arena_new(0, 1u << 22);
        if (!a)
                return 0;
        canopy_expr *e = NULL;
        canopy_expr_error er;
        if (canopy_expr_compile(s, elen, NULL, &e, &er) == CANOPY_OK) {
                char *p1 = canopy_expr_print(e);
                canopy_expr *e2 = NULL;
                if (p1 && canopy_expr_compile(p1, strlen(p1), NULL, &e2, &er) != CANOPY_OK)
                        abort(); /* the printer must produce parseable text */
                char *p2 = canopy_expr_print(e2);
                if (p1 && p2 && strcmp(p1, p2) != 0)
                        abort(); /* print(parse(print(e))) == print(e) */
                free(p1);
                free(p2);
                canopy_expr_free(e2);
                canopy_obj_view v = {.connector = "f", .dn = "CN=a\\,b+UID=c,OU=x,DC=d", .lookup = lookup, .ctx = &o};
                canopy_value val;
                char msg[128];
                if (canopy_expr_eval(e, &v, NULL, a, &val, msg, sizeof(msg)) == CANOPY_OK)
                        (void)canopy_value_to_text(&val, "|", a);
                canopy_expr_free(e);
        } else {
                char *m = canopy_expr_format_error("f", s, elen, 1, 1, &er);
                free(m);
        }
        /* The same bytes as a DN. */
        if (elen < 4096) {
                char *dn = strndup(s, elen);
                if (dn) {
                        (void)canopy_dn_normalize(dn, a);
                        (void)canopy_dn_is_under(dn, "ou=x,dc=d");
                        free(dn);
                }
        }
        canopy_arena_free(a);
        return 0;
}
