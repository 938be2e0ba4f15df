/* test_rules_join.c: join rules (order, anchor first, normalised keys) and
 * attribute-flow precedence between connectors, create-only flows,
 * IgnoreFlowIfNullOrEmpty and the default mappings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "rules_test_util.h"

static const char *yaml =
        "version: 1\n"
        "connectors:\n"
        "  - id: hr\n"
        "    kind: openldap\n"
        "    domain: example.org\n"
        "    precedence: 5\n"
        "    join:\n"
        "      user:\n"
        "        - {source: anchor}\n"
        "        - {source: mail, mv: mail}\n"
        "        - {source: employeeNumber, mv: employeeId}\n"
        "    flows:\n"
        "      user:\n"
        "        - {target: department, expression: 'IgnoreFlowIfNullOrEmpty([departmentNumber])'}\n"
        "        - {target: jobTitle, expression: '[title]', precedence: 50}\n"
        "  - id: corp\n"
        "    kind: ad\n"
        "    domain: corp.example.com\n"
        "    precedence: 10\n"
        "    flows:\n"
        "      user:\n"
        "        - {target: userPrincipalName, expression: 'Join(\"@\", [sAMAccountName], \"corp.example.com\")', apply: create_only}\n"
        "        - {target: companyName, disabled: true}\n";

static void test_join_rules(void **state)
{
        (void)state;
        canopy_rules *r = load_rules(yaml);
        assert_non_null(r);
        const canopy_join_rule *jr;
        size_t n;
        canopy_rules_join_rules(r, "hr", "user", &jr, &n);
        assert_int_equal(n, 3);
        assert_true(jr[0].is_anchor);
        assert_string_equal(jr[0].mv, "sourceAnchor");
        assert_string_equal(jr[1].source, "mail");
        assert_string_equal(jr[2].source, "employeenumber");
        assert_string_equal(jr[2].mv, "employeeId");
        /* Default: anchor only. */
        canopy_rules_join_rules(r, "corp", "user", &jr, &n);
        assert_int_equal(n, 1);
        assert_true(jr[0].is_anchor);
        canopy_rules_join_rules(r, "nope", "user", &jr, &n);
        assert_int_equal(n, 0);
        /* Keys: trimmed and lower-cased; anchors Base64 (textual UUID -> 16 bytes). */
        canopy_arena *a = canopy_arena_new(0, 0);
        tobj o;
        kv attrs[] = {{"objectClass", {"inetOrgPerson"}}, {"mail", {" John.Doe@Example.ORG "}},
                      {"entryUUID", {"6f3c1e2a-1d4b-4c8e-9a7f-0123456789ab"}}, {0}};
        canopy_obj_view v = tview(&o, "hr", "uid=jdoe,dc=example,dc=org", attrs);
        canopy_rules_join_rules(r, "hr", "user", &jr, &n);
        const char *const *keys;
        size_t nk;
        assert_int_equal(canopy_rules_join_values(r, &jr[0], &v, a, &keys, &nk), CANOPY_OK);
        assert_int_equal(nk, 1);
        assert_string_equal(keys[0], "bzweKh1LTI6afwEjRWeJqw==");
        assert_int_equal(canopy_rules_join_values(r, &jr[1], &v, a, &keys, &nk), CANOPY_OK);
        assert_int_equal(nk, 1);
        assert_string_equal(keys[0], "john.doe@example.org");
        assert_int_equal(canopy_rules_join_values(r, &jr[2], &v, a, &keys, &nk), CANOPY_OK);
        assert_int_equal(nk, 0);
        assert_string_equal(canopy_rules_member_attribute(r, "corp", "group"), "member");
        assert_null(canopy_rules_member_attribute(r, "corp", "user"));
        canopy_arena_free(a);
        canopy_rules_free(r);
}

static void test_precedence(void **state)
{
        (void)state;
        canopy_rules *r = load_rules(yaml);
        assert_non_null(r);
        canopy_arena *a = canopy_arena_new(0, 0);
        tobj o1, o2;
        kv hr[] = {{"objectClass", {"inetOrgPerson"}}, {"uid", {"jdoe"}}, {"givenName", {"Johnny"}}, {"title", {"HR title"}},
                   {"entryUUID", {"6f3c1e2a-1d4b-4c8e-9a7f-0123456789ab"}}, {0}};
        kv ad[] = {{"objectClass", {"user"}}, {"sAMAccountName", {"jdoe"}}, {"givenName", {"John"}}, {"sn", {"Doe"}},
                   {"title", {"AD title"}}, {"department", {"Sales"}}, {"userAccountControl", {"512"}},
                   {"company", {"Contoso"}}, {0}};
        canopy_obj_view vh = tview(&o1, "hr", "uid=jdoe,dc=example,dc=org", hr);
        canopy_obj_view va = tview(&o2, "corp", "CN=John Doe,OU=People,DC=corp,DC=example,DC=com", ad);
        const canopy_obj_view *views[2] = {&va, &vh}; /* order of contributors does not matter */
        canopy_rules_desired d;
        char msg[256];
        assert_int_equal(canopy_rules_compute(r, "user", views, 2, NULL, a, &d, msg, sizeof(msg)), CANOPY_OK);
        const canopy_rules_prop *p;
        /* hr (precedence 5) wins givenName over corp (10). */
        p = canopy_rules_desired_get(&d, "givenName");
        assert_non_null(p);
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "Johnny");
        assert_string_equal(p->connector, "hr");
        /* hr has no sn: null falls through to corp. */
        p = canopy_rules_desired_get(&d, "surname");
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "Doe");
        assert_string_equal(p->connector, "corp");
        /* Per-flow precedence 50 puts hr's jobTitle after corp's. */
        p = canopy_rules_desired_get(&d, "jobTitle");
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "AD title");
        /* IgnoreFlowIfNullOrEmpty on hr: corp's department flows. */
        p = canopy_rules_desired_get(&d, "department");
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "Sales");
        assert_string_equal(p->connector, "corp");
        /* Create-only flag and the override of the AD default UPN. */
        p = canopy_rules_desired_get(&d, "userPrincipalName");
        assert_non_null(p);
        assert_string_equal(p->connector, "hr"); /* hr's default UPN (precedence 5) wins */
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "jdoe@example.org");
        /* Disabled default flow on corp: companyName not produced from corp. */
        assert_null(canopy_rules_desired_get(&d, "companyName") ? canopy_rules_desired_get(&d, "companyName")->connector : NULL);
        p = canopy_rules_desired_get(&d, "accountEnabled");
        assert_int_equal(p->value.type, CANOPY_V_BOOL);
        assert_true(p->value.u.b);
        p = canopy_rules_desired_get(&d, "onPremisesImmutableId");
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "bzweKh1LTI6afwEjRWeJqw==");

        /* Only the AD contributor: its create-only UPN. */
        const canopy_obj_view *only_ad[1] = {&va};
        assert_int_equal(canopy_rules_compute(r, "user", only_ad, 1, NULL, a, &d, msg, sizeof(msg)), CANOPY_OK);
        p = canopy_rules_desired_get(&d, "userPrincipalName");
        assert_non_null(p);
        assert_true(p->create_only);
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "jdoe@corp.example.com");
        p = canopy_rules_desired_get(&d, "mail");
        assert_int_equal(p->value.type, CANOPY_V_NULL); /* no value: clear */
        assert_null(p->connector);
        p = canopy_rules_desired_get(&d, "mailNickname");
        assert_string_equal(canopy_value_to_text(&p->value, "", a), "jdoe");
        canopy_arena_free(a);
        canopy_rules_free(r);
}

static void test_defaults_groups(void **state)
{
        (void)state;
        const char *ids[] = {"ad1", "ldap1"}, *kinds[] = {"ad", "openldap"}, *domains[] = {NULL, "example.org"};
        canopy_rules *r = NULL;
        canopy_rules_diags dg = {0};
        assert_int_equal(canopy_rules_load_defaults(ids, kinds, domains, 2, &r, &dg), CANOPY_OK);
        canopy_arena *a = canopy_arena_new(0, 0);
        tobj o;
        kv g[] = {{"objectClass", {"group"}}, {"cn", {"Sales Team (EMEA)"}}, {"sAMAccountName", {"sales"}},
                  {"groupType", {"-2147483646"}}, {"member", {"CN=A,DC=corp,DC=example,DC=com"}}, {0}};
        canopy_obj_view v = tview(&o, "ad1", "CN=Sales Team (EMEA),OU=Groups,DC=corp,DC=example,DC=com", g);
        const canopy_obj_view *views[1] = {&v};
        canopy_rules_desired d;
        char msg[256];
        assert_int_equal(canopy_rules_compute(r, "group", views, 1, NULL, a, &d, msg, sizeof(msg)), CANOPY_OK);
        assert_string_equal(canopy_value_to_text(&canopy_rules_desired_get(&d, "displayName")->value, "", a), "Sales Team (EMEA)");
        assert_string_equal(canopy_value_to_text(&canopy_rules_desired_get(&d, "mailNickname")->value, "", a), "SalesTeamEMEA");
        assert_true(canopy_rules_desired_get(&d, "securityEnabled")->value.u.b);
        assert_false(canopy_rules_desired_get(&d, "mailEnabled")->value.u.b);
        /* UPN fallback from the DN's DC components when no domain is configured. */
        kv u[] = {{"objectClass", {"user"}}, {"sAMAccountName", {"jdoe"}}, {"userAccountControl", {"514"}}, {0}};
        v = tview(&o, "ad1", "CN=J,DC=corp,DC=example,DC=com", u);
        assert_int_equal(canopy_rules_compute(r, "user", views, 1, NULL, a, &d, msg, sizeof(msg)), CANOPY_OK);
        assert_string_equal(canopy_value_to_text(&canopy_rules_desired_get(&d, "userPrincipalName")->value, "", a),
                            "jdoe@corp.example.com");
        assert_false(canopy_rules_desired_get(&d, "accountEnabled")->value.u.b);
        canopy_arena_free(a);
        canopy_rules_free(r);
        canopy_rules_diags_free(&dg);
}

/* A flow that fails at run time names the rules file, the line and the
 * column of the call that failed; an expression over several lines gives
 * its start and the offset. */
static void test_runtime_error_position(void **state)
{
        (void)state;
        static const char *y2 =
                "version: 1\n"
                "connectors:\n"
                "  - id: hr\n"
                "    kind: openldap\n"
                "    domain: example.org\n"
                "    flows:\n"
                "      user:\n"
                "        - {target: jobTitle, expression: 'Join(\",\", [sn], Item([title], 3))'}\n"
                "        - target: department\n"
                "          expression: >-\n"
                "            Join(\"-\",\n"
                "            Item([ou], 2))\n";
        canopy_rules *r = load_rules(y2);
        assert_non_null(r);
        canopy_arena *a = canopy_arena_new(0, 0);
        tobj o;
        kv hr[] = {{"objectClass", {"inetOrgPerson"}}, {"uid", {"zoë"}}, {"sn", {"Ågren"}}, {"title", {"a", "b"}},
                   {0}};
        canopy_obj_view v = tview(&o, "hr", "uid=zoë,dc=example,dc=org", hr);
        const canopy_obj_view *views[1] = {&v};
        canopy_rules_desired d;
        char msg[512];
        assert_int_equal(canopy_rules_compute(r, "user", views, 1, NULL, a, &d, msg, sizeof(msg)), CANOPY_ERR_EXPR_EVAL);
        /* Line 8; the expression starts at column 43, Item at offset 16. */
        assert_string_equal(msg, "test.yaml:8:59: jobTitle (connector hr): Item: index 3 out of bounds (1..2)");
        canopy_rules_free(r);
        static const char *y3 =
                "version: 1\n"
                "connectors:\n"
                "  - id: hr\n"
                "    kind: openldap\n"
                "    domain: example.org\n"
                "    flows:\n"
                "      user:\n"
                "        - target: department\n"
                "          expression: >-\n"
                "            Join(\"-\",\n"
                "            Item([ou], 2))\n";
        r = load_rules(y3);
        assert_non_null(r);
        kv hr2[] = {{"objectClass", {"inetOrgPerson"}}, {"uid", {"bo"}}, {"ou", {"x"}}, {0}};
        v = tview(&o, "hr", "uid=bo,dc=example,dc=org", hr2);
        assert_int_equal(canopy_rules_compute(r, "user", views, 1, NULL, a, &d, msg, sizeof(msg)), CANOPY_ERR_EXPR_EVAL);
        assert_non_null(strstr(msg, "test.yaml:10:13: department (connector hr), at offset 10 of the expression: Item"));
        canopy_arena_free(a);
        canopy_rules_free(r);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_join_rules),
                cmocka_unit_test(test_precedence),
                cmocka_unit_test(test_defaults_groups),
                cmocka_unit_test(test_runtime_error_position),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
