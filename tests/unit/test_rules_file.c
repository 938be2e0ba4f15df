/* test_rules_file.c: rules file errors carry file:line:column and a caret,
 * every error is reported (not just the first). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "rules_test_util.h"

static canopy_rules_diags load_bad(const char *yaml, canopy_err want)
{
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        assert_int_equal(canopy_rules_load_buffer("bad.yaml", yaml, strlen(yaml), &r, &d), want);
        assert_null(r);
        return d;
}

static void has_diag(const canopy_rules_diags *d, unsigned line, unsigned col, const char *part)
{
        for (size_t i = 0; i < d->n; i++)
                if (d->items[i].line == line && d->items[i].col == col && strstr(d->items[i].msg, part))
                        return;
        for (size_t i = 0; i < d->n; i++)
                print_message("have %u:%u %s\n", d->items[i].line, d->items[i].col, d->items[i].msg);
        fail_msg("no diagnostic %u:%u '%s'", line, col, part);
}

static void test_yaml_syntax(void **state)
{
        (void)state;
        canopy_rules_diags d = load_bad("version: 1\nconnectors:\n  - id: a\n   kind: ad\n", CANOPY_ERR_RULES_SYNTAX);
        assert_int_equal(d.n, 1);
        assert_int_equal(d.items[0].line, 4);
        assert_non_null(strstr(d.items[0].text, "bad.yaml:4:"));
        canopy_rules_diags_free(&d);
}

static void test_all_errors_listed(void **state)
{
        (void)state;
        const char *y = "version: 1\n"                                                      /* 1 */
                        "connectors:\n"                                                     /* 2 */
                        "  - id: corp\n"                                                    /* 3 */
                        "    kind: ad\n"                                                    /* 4 */
                        "    colour: blue\n"                                                /* 5 */
                        "    flows:\n"                                                      /* 6 */
                        "      user:\n"                                                     /* 7 */
                        "        - target: displayName\n"                                   /* 8 */
                        "          expression: 'Join(\" \", [givenName], Foo([sn]))'\n"     /* 9 */
                        "        - target: mail\n"                                          /* 10 */
                        "          expression: \"Left([mail], \\\"x\\\")\"\n"               /* 11 */
                        "        - target: title\n"                                         /* 12 */
                        "          expression: |\n"                                         /* 13 */
                        "            IIF(IsPresent([title]),\n"                             /* 14 */
                        "                [title], Append([a])\n"                            /* 15 */
                        "            )\n"                                                   /* 16 */
                        "    scope:\n"                                                      /* 17 */
                        "      include_ous: ['OU=x,=bad']\n"                                /* 18 */
                        "      filters:\n"                                                  /* 19 */
                        "        - - {attribute: title, operator: ROUGHLY, value: x}\n"     /* 20 */
                        "          - {attribute: n, operator: GREATER_THAN, value: ten}\n"  /* 21 */
                        "          - {attribute: t, operator: REGEX MATCH, value: 'a(b'}\n" /* 22 */
                        "  - id: corp\n"                                                    /* 23 */
                        "    kind: novell\n";                                               /* 24 */
        canopy_rules_diags d = load_bad(y, CANOPY_ERR_RULES_SEMANTIC);
        has_diag(&d, 5, 5, "unknown key 'colour'");
        has_diag(&d, 9, 47, "unknown function 'Foo'");
        has_diag(&d, 11, 37, "must be a number");
        has_diag(&d, 15, 26, "Append takes 2 arguments");
        has_diag(&d, 18, 20, "not a valid DN");
        has_diag(&d, 20, 42, "unknown operator 'ROUGHLY'");
        has_diag(&d, 21, 59, "must be an integer");
        has_diag(&d, 22, 62, "bad regular expression");
        has_diag(&d, 23, 9, "duplicate connector id");
        has_diag(&d, 24, 11, "kind must be");
        assert_int_equal(d.n, 10);
        /* The caret line sits under the column. */
        const char *t = d.items[0].text;
        assert_non_null(strstr(t, "bad.yaml:5:5: error: unknown key 'colour'"));
        assert_non_null(strstr(t, "\n    colour: blue\n    ^\n"));
        canopy_rules_diags_free(&d);
}

static void test_declared_attributes(void **state)
{
        (void)state;
        const char *y = "version: 1\n"
                        "connectors:\n"
                        "  - id: x\n"
                        "    kind: ldap\n"
                        "    attributes: [uid, cn, mail]\n"
                        "    use_default_flows: false\n"
                        "    flows:\n"
                        "      user:\n"
                        "        - {target: displayName, expression: 'Coalesce([cn], [displayNme])'}\n"
                        "    join:\n"
                        "      user:\n"
                        "        - {source: anchor}\n"
                        "        - {source: employeeNumber}\n";
        canopy_rules_diags d = load_bad(y, CANOPY_ERR_RULES_SEMANTIC);
        has_diag(&d, 9, 62, "unknown attribute 'displayNme'");
        has_diag(&d, 13, 11, "unknown attribute 'employeeNumber'");
        assert_int_equal(d.n, 2);
        canopy_rules_diags_free(&d);
}

static void test_good_file_and_missing(void **state)
{
        (void)state;
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        char path[512];
        snprintf(path, sizeof(path), "%s/tools/ctl/examples/rules.yaml", CANOPY_SOURCE_DIR);
        assert_int_equal(canopy_rules_load_file(path, &r, &d), CANOPY_OK);
        assert_int_equal(canopy_rules_connector_count(r), 2);
        const canopy_rules_connector *c = canopy_rules_connector_find(r, "corp");
        assert_non_null(c);
        assert_int_equal(c->kind, CANOPY_CONN_AD);
        assert_int_equal(c->precedence, 10);
        assert_string_equal(c->anchor_attrs[0], "ms-ds-consistencyguid");
        canopy_rules_free(r);
        assert_int_equal(canopy_rules_load_file("/nonexistent/rules.yaml", &r, &d), CANOPY_ERR_IO);
        assert_int_equal(d.n, 1);
        canopy_rules_diags_free(&d);
        d = load_bad("connectors: []\n", CANOPY_ERR_RULES_SEMANTIC);
        has_diag(&d, 1, 1, "missing 'version: 1'");
        canopy_rules_diags_free(&d);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_yaml_syntax),
                cmocka_unit_test(test_all_errors_listed),
                cmocka_unit_test(test_declared_attributes),
                cmocka_unit_test(test_good_file_and_missing),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
