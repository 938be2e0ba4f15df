/* test_rules_print.c: property test: random expressions survive
 * print -> parse -> print unchanged, and evaluate to the same value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rules_test_util.h"

typedef struct gen {
        char buf[8192];
        size_t len;
        uint64_t rng;
} gen;

static uint32_t rnd(gen *g, uint32_t n)
{
        g->rng ^= g->rng << 13;
        g->rng ^= g->rng >> 7;
        g->rng ^= g->rng << 17;
        return (uint32_t)(g->rng % n);
}

static void put(gen *g, const char *s)
{
        size_t l = strlen(s);
        if (g->len + l < sizeof(g->buf) - 1) {
                memcpy(g->buf + g->len, s, l);
                g->len += l;
                g->buf[g->len] = '\0';
        }
}

static void gen_str(gen *g, int depth);

static void gen_num(gen *g)
{
        char t[32];
        int v = (int)rnd(g, 300);
        switch (rnd(g, 3)) {
        case 0: snprintf(t, sizeof(t), "%d", v); break;
        case 1: snprintf(t, sizeof(t), "-%d", v); break;
        default: snprintf(t, sizeof(t), "&H%X", (unsigned)v); break;
        }
        put(g, t);
}

static void gen_bool(gen *g, int depth)
{
        switch (depth > 3 ? rnd(g, 2) : rnd(g, 6)) {
        case 0: put(g, rnd(g, 2) ? "True" : "False"); break;
        case 1: put(g, "IsNull("); gen_str(g, depth + 1); put(g, ")"); break;
        case 2: put(g, "IsPresent("); gen_str(g, depth + 1); put(g, ")"); break;
        case 3: gen_str(g, depth + 1); put(g, rnd(g, 2) ? " = " : "<>"); gen_str(g, depth + 1); break;
        case 4: put(g, "Not("); gen_bool(g, depth + 1); put(g, ")"); break;
        default: put(g, "("); gen_num(g); put(g, rnd(g, 2) ? " > " : " <= "); gen_num(g); put(g, ")"); break;
        }
}

static void gen_lit(gen *g)
{
        static const char *const parts[] = {"a", "Zoë", " ", "\\\"", "\\\\", "x y", "@", "ß", "[", "]", ",", "(", "é"};
        put(g, "\"");
        for (uint32_t i = rnd(g, 5); i > 0; i--)
                put(g, parts[rnd(g, sizeof(parts) / sizeof(parts[0]))]);
        put(g, "\"");
}

static void gen_str(gen *g, int depth)
{
        static const char *const attrs[] = {"[givenName]", "[sn]", "[mail]", "[proxyAddresses]", "[missing]", "[ms-DS-x]"};
        uint32_t k = depth > 4 ? rnd(g, 2) : rnd(g, 14);
        switch (k) {
        case 0: gen_lit(g); break;
        case 1: put(g, attrs[rnd(g, 6)]); break;
        case 2: put(g, "Append("); gen_str(g, depth + 1); put(g, ", "); gen_str(g, depth + 1); put(g, ")"); break;
        case 3:
                put(g, "Join(");
                gen_lit(g);
                for (uint32_t i = rnd(g, 3) + 1; i > 0; i--) {
                        put(g, ",");
                        gen_str(g, depth + 1);
                }
                put(g, ")");
                break;
        case 4: put(g, rnd(g, 2) ? "ToLower(" : "ToUpper("); gen_str(g, depth + 1); put(g, ")"); break;
        case 5: put(g, "Left("); gen_str(g, depth + 1); put(g, ", "); gen_num(g); put(g, ")"); break;
        case 6: put(g, "Mid("); gen_str(g, depth + 1); put(g, ", 1, "); put(g, rnd(g, 2) ? "3" : "&H2"); put(g, ")"); break;
        case 7: put(g, "IIF("); gen_bool(g, depth + 1); put(g, ", "); gen_str(g, depth + 1); put(g, ", "); gen_str(g, depth + 1); put(g, ")"); break;
        case 8: put(g, "Coalesce("); gen_str(g, depth + 1); put(g, ", "); gen_str(g, depth + 1); put(g, ")"); break;
        case 9:
                put(g, "Switch(");
                gen_str(g, depth + 1);
                put(g, rnd(g, 2) ? ", , " : ", \"d\", ");
                gen_lit(g);
                put(g, ", ");
                gen_str(g, depth + 1);
                put(g, ")");
                break;
        case 10:
                put(g, "Replace(");
                gen_str(g, depth + 1);
                put(g, rnd(g, 2) ? ", \"a\", , , \"b\", , )" : ", , \"[a-z]+\", , \"<$0>\", , )");
                break;
        case 11: put(g, "NormalizeDiacritics(StripSpaces("); gen_str(g, depth + 1); put(g, "))"); break;
        case 12: gen_str(g, depth + 1); put(g, " & "); gen_str(g, depth + 1); break;
        default: put(g, "Word("); gen_str(g, depth + 1); put(g, ", 2, \" ,\")"); break;
        }
}

static const char *eval_text(canopy_expr *e, canopy_arena *a)
{
        tobj o;
        kv attrs[] = {{"givenName", {"Zoë"}}, {"sn", {"Müller Smith"}}, {"mail", {"Zoe@Example.org"}},
                      {"proxyAddresses", {"SMTP:a@x", "smtp:b@y"}}, {"ms-DS-x", {"q"}}, {0}};
        canopy_obj_view v = tview(&o, "t", "cn=x", attrs);
        canopy_value val;
        char msg[256];
        canopy_err err = canopy_expr_eval(e, &v, NULL, a, &val, msg, sizeof(msg));
        if (err)
                return canopy_err_name(err);
        const char *t = canopy_value_to_text(&val, "|", a);
        return t ? t : "<null>";
}

static void test_roundtrip(void **state)
{
        (void)state;
        canopy_arena *a = canopy_arena_new(0, 0);
        int compiled = 0, total = 2000;
        for (int i = 0; i < total; i++) {
                gen g = {.rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)(i + 1) * 0x100000001B3ull};
                gen_str(&g, 0);
                canopy_expr *e1 = NULL, *e2 = NULL;
                canopy_expr_error er;
                if (canopy_expr_compile(g.buf, g.len, NULL, &e1, &er) != CANOPY_OK) {
                        print_message("did not compile: %s\n  %s at %zu\n", g.buf, er.msg, er.pos);
                        continue;
                }
                compiled++;
                char *p1 = canopy_expr_print(e1);
                assert_non_null(p1);
                if (canopy_expr_compile(p1, strlen(p1), NULL, &e2, &er) != CANOPY_OK)
                        fail_msg("printed form does not parse: %s\n  from %s\n  %s at %zu", p1, g.buf, er.msg, er.pos);
                char *p2 = canopy_expr_print(e2);
                assert_string_equal(p1, p2);
                const char *v1 = eval_text(e1, a), *v2 = eval_text(e2, a);
                assert_string_equal(v1, v2);
                free(p1);
                free(p2);
                canopy_expr_free(e1);
                canopy_expr_free(e2);
                canopy_arena_reset(a);
        }
        /* The generator only builds well-typed expressions. */
        assert_int_equal(compiled, total);
        canopy_arena_free(a);
}

int main(void)
{
        const struct CMUnitTest tests[] = {cmocka_unit_test(test_roundtrip)};
        return cmocka_run_group_tests(tests, NULL, NULL);
}
