/* test_rules_scope.c: scoping: RFC 4514 DN comparison (escapes, Unicode,
 * case), OU include/exclude, group scoping (direct members), attribute
 * filter groups (AND within, OR across), default AD exclusions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "rules_test_util.h"

static void test_dn_compare(void **state)
{
        (void)state;
        assert_true(canopy_dn_equal("CN=John Smith,OU=Sales,DC=Corp,DC=Example", "cn=john smith,ou=sales,dc=corp,dc=example"));
        assert_true(canopy_dn_equal("cn = John  Smith , ou=Sales", "CN=john smith,OU=SALES"));
        assert_true(canopy_dn_equal("CN=Smith\\, John,OU=Sales", "cn=smith\\2c john,ou=sales"));
        assert_false(canopy_dn_equal("CN=Smith\\, John,OU=Sales", "CN=Smith,CN=John,OU=Sales"));
        assert_true(canopy_dn_equal("CN=A\\+B,DC=x", "cn=a\\2bb,dc=x"));
        assert_true(canopy_dn_equal("CN=\\\"Q\\\",DC=x", "cn=\\22q\\22,dc=x"));
        assert_true(canopy_dn_equal("CN=Zoë Müller,DC=x", "cn=ZOË MÜLLER,dc=x"));
        assert_true(canopy_dn_equal("CN=Zo\\C3\\AB,DC=x", "cn=zoë,dc=x"));
        assert_true(canopy_dn_equal("CN=Ωμέγα,DC=x", "cn=ωμέγα,dc=x"));
        assert_true(canopy_dn_equal("CN=Иван,DC=x", "cn=иван,dc=x"));
        assert_true(canopy_dn_equal("CN=a+UID=b,DC=x", "uid=B+cn=A,dc=x"));
        assert_true(canopy_dn_equal("CN=trailing\\ ,DC=x", "cn=trailing\\20,dc=x"));
        /* RFC 4518: leading/trailing spaces are insignificant for matching, escaped or not. */
        assert_true(canopy_dn_equal("CN=trailing\\ ,DC=x", "cn=trailing,dc=x"));
        assert_true(canopy_dn_is_under("CN=Joe,OU=Sales,DC=corp", "ou=sales,dc=corp"));
        assert_true(canopy_dn_is_under("OU=Sales,DC=corp", "OU=Sales,DC=corp"));
        assert_false(canopy_dn_is_under("CN=Joe,OU=PreSales,DC=corp", "OU=Sales,DC=corp"));
        /* "CN=x\,OU=Sales" is one RDN whose value is "x,OU=Sales". */
        assert_true(canopy_dn_is_under("CN=x\\,OU=Sales,DC=corp", "DC=corp"));
        assert_false(canopy_dn_is_under("CN=x\\,OU=Sales", "OU=Sales"));
        assert_false(canopy_dn_equal("CN=broken,=x", "cn=other"));
        canopy_arena *a = canopy_arena_new(0, 0);
        assert_string_equal(canopy_dn_normalize("CN=Smith\\2C John , OU=Sales", a), "cn=smith\\, john,ou=sales");
        canopy_arena_free(a);
}

static const char *rules_yaml =
        "version: 1\n"
        "connectors:\n"
        "  - id: corp\n"
        "    kind: ad\n"
        "    scope:\n"
        "      include_ous: ['OU=People,DC=corp,DC=example', 'OU=Smith\\, Partners,DC=corp,DC=example']\n"
        "      exclude_ous: ['OU=Disabled,OU=People,DC=corp,DC=example']\n"
        "      filters:\n"
        "        - object_types: [user]\n"
        "          clauses:\n"
        "            - {attribute: department, operator: EQUALS, value: Sales}\n"
        "            - {attribute: title, operator: IS NOT NULL}\n"
        "        - object_types: [user]\n"
        "          clauses:\n"
        "            - {attribute: employeeID, operator: REGEX MATCH, value: '^[0-9]{6}$'}\n"
        "            - {attribute: extensionAttribute1, operator: NOT EQUALS, value: noSync}\n"
        "  - id: grp\n"
        "    kind: openldap\n"
        "    scope:\n"
        "      groups: ['CN=Sync Users,OU=Groups,DC=example,DC=org']\n"
        "  - id: ops\n"
        "    kind: openldap\n"
        "    scope:\n"
        "      filters:\n"
        "        - - {attribute: employeeNumber, operator: GREATER_THAN, value: 1000}\n"
        "          - {attribute: employeeNumber, operator: LESS_THAN, value: 2000}\n"
        "        - - {attribute: enabled, operator: IS TRUE}\n"
        "        - - {attribute: mail, operator: ENDS_WITH, value: '@example.org'}\n"
        "          - {attribute: mail, operator: STARTS_WITH, value: 'admin'}\n"
        "        - - {attribute: title, operator: NOT REGEX MATCH, value: 'Contractor'}\n"
        "          - {attribute: title, operator: IS NOT NULL}\n"
        "          - {attribute: locked, operator: IS NULL}\n"
        "  - id: off\n"
        "    kind: openldap\n"
        "    scope:\n"
        "      filters:\n"
        "        - - {attribute: disabled, operator: IS FALSE}\n";

static bool scope(canopy_rules *r, const char *conn, const char *dn, const kv *attrs, char *why)
{
        tobj o;
        canopy_obj_view v = tview(&o, conn, dn, attrs);
        canopy_scope_result sr;
        assert_int_equal(canopy_rules_scope(r, &v, NULL, &sr), CANOPY_OK);
        if (why)
                strcpy(why, sr.reason);
        return sr.in_scope;
}

#define USER(...) ((kv[]){{"objectClass", {"top", "person", "user"}}, {"sAMAccountName", {"jdoe"}}, __VA_ARGS__, {0}})

static void test_ous_and_filters(void **state)
{
        (void)state;
        canopy_rules *r = load_rules(rules_yaml);
        assert_non_null(r);
        char why[256];
        /* Group 1: Sales AND title present. */
        assert_true(scope(r, "corp", "CN=J,OU=People,DC=corp,DC=example", USER({"department", {"Sales"}}, {"title", {"Rep"}}), why));
        assert_string_equal(why, "in scope: filter group 1 matched");
        /* EQUALS is case-sensitive (documented). */
        assert_false(scope(r, "corp", "CN=J,OU=People,DC=corp,DC=example", USER({"department", {"sales"}}, {"title", {"Rep"}}), why));
        assert_string_equal(why, "no scoping filter group matched");
        /* Group 1 fails (no title), group 2 matches: OR across groups. */
        assert_true(scope(r, "corp", "cn=j,ou=people,dc=CORP,dc=example", USER({"department", {"Sales"}}, {"employeeID", {"123456"}}), why));
        assert_string_equal(why, "in scope: filter group 2 matched");
        assert_false(scope(r, "corp", "CN=J,OU=People,DC=corp,DC=example",
                           USER({"employeeID", {"123456"}}, {"extensionAttribute1", {"noSync"}}), why));
        /* Excluded OU inside the included one. */
        assert_false(scope(r, "corp", "CN=J,OU=Disabled,OU=People,DC=corp,DC=example", USER({"department", {"Sales"}}, {"title", {"x"}}), why));
        assert_string_equal(why, "under excluded container 'OU=Disabled,OU=People,DC=corp,DC=example'");
        /* Escaped comma in the included OU name, hex-escaped in the object DN. */
        assert_true(scope(r, "corp", "CN=K,OU=Smith\\2C Partners,DC=corp,DC=example", USER({"employeeID", {"654321"}}), why));
        assert_false(scope(r, "corp", "CN=K,OU=Other,DC=corp,DC=example", USER({"employeeID", {"654321"}}), why));
        assert_string_equal(why, "not under an included container");
        /* Groups are not subject to the user-only filter groups, but to the defaults. */
        assert_true(scope(r, "corp", "CN=G,OU=People,DC=corp,DC=example",
                          ((kv[]){{"objectClass", {"group"}}, {"sAMAccountName", {"g"}}, {"groupType", {"-2147483646"}}, {0}}), why));
        assert_false(scope(r, "corp", "CN=G,OU=People,DC=corp,DC=example",
                           ((kv[]){{"objectClass", {"group"}}, {"sAMAccountName", {"g"}}, {"groupType", {"2"}}, {0}}), why));
        assert_string_equal(why, "excluded by default: distribution group that is not mail-enabled");
        /* Computers are not users. */
        assert_false(scope(r, "corp", "CN=PC,OU=People,DC=corp,DC=example",
                           ((kv[]){{"objectClass", {"user", "computer"}}, {"sAMAccountName", {"pc$"}}, {0}}), why));
        assert_string_equal(why, "object class is not synchronized");
        /* Default exclusions. */
        assert_false(scope(r, "corp", "CN=J,OU=People,DC=corp,DC=example",
                           ((kv[]){{"objectClass", {"user"}}, {"sAMAccountName", {"MSOL_abc"}}, {"employeeID", {"123456"}}, {0}}), why));
        assert_string_equal(why, "excluded by default: service account (sAMAccountName AAD_/MSOL_)");
        assert_false(scope(r, "corp", "CN=J\\0ACNF:1234,OU=People,DC=corp,DC=example", USER({"employeeID", {"123456"}}), why));
        assert_false(scope(r, "corp", "CN=J,OU=People,DC=corp,DC=example",
                           USER({"employeeID", {"123456"}}, {"isCriticalSystemObject", {"TRUE"}}), why));
        canopy_rules_free(r);
}

static bool member_cb(void *ctx, const char *group, const char *member)
{
        (void)ctx;
        return canopy_dn_equal(group, "cn=sync users,ou=groups,dc=example,dc=org") && canopy_dn_equal(member, "uid=a,dc=example,dc=org");
}

static void test_group_scoping(void **state)
{
        (void)state;
        canopy_rules *r = load_rules(rules_yaml);
        assert_non_null(r);
        char why[256];
        kv direct[] = {{"objectClass", {"inetOrgPerson"}}, {"memberOf", {"cn=SYNC USERS,ou=groups,dc=example,dc=org"}}, {0}};
        kv nested[] = {{"objectClass", {"inetOrgPerson"}}, {"memberOf", {"cn=Nested,ou=groups,dc=example,dc=org"}}, {0}};
        kv none[] = {{"objectClass", {"inetOrgPerson"}}, {0}};
        assert_true(scope(r, "grp", "uid=a,dc=example,dc=org", direct, why));
        /* Only direct members (cloud sync): a member of a nested group is out. */
        assert_false(scope(r, "grp", "uid=b,dc=example,dc=org", nested, why));
        assert_string_equal(why, "not a direct member of a scoping group");
        assert_false(scope(r, "grp", "uid=c,dc=example,dc=org", none, why));
        /* The caller's membership callback. */
        tobj o;
        canopy_obj_view v = tview(&o, "grp", "UID=A,DC=example,DC=org", none);
        canopy_scope_ctx sc = {member_cb, NULL};
        canopy_scope_result sr;
        assert_int_equal(canopy_rules_scope(r, &v, &sc, &sr), CANOPY_OK);
        assert_true(sr.in_scope);
        v = tview(&o, "grp", "uid=z,dc=example,dc=org", direct);
        assert_int_equal(canopy_rules_scope(r, &v, &sc, &sr), CANOPY_OK);
        assert_false(sr.in_scope);
        /* Unknown connector. */
        v = tview(&o, "nope", "uid=z", none);
        assert_int_equal(canopy_rules_scope(r, &v, NULL, &sr), CANOPY_ERR_NOT_FOUND);
        canopy_rules_free(r);
}

static void test_operators(void **state)
{
        (void)state;
        canopy_rules *r = load_rules(rules_yaml);
        assert_non_null(r);
        const char *dn = "uid=x,dc=example,dc=org";
#define P(...) ((kv[]){{"objectClass", {"inetOrgPerson"}}, __VA_ARGS__, {0}})
        assert_true(scope(r, "ops", dn, P({"employeeNumber", {"1500"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"employeeNumber", {"2000"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"employeeNumber", {"abc"}}), NULL));
        assert_true(scope(r, "ops", dn, P({"enabled", {"TRUE"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"enabled", {"FALSE"}}), NULL));
        assert_true(scope(r, "ops", dn, P({"mail", {"admin@example.org"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"mail", {"bob@example.org"}}), NULL));
        assert_true(scope(r, "ops", dn, P({"title", {"Engineer"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"title", {"Contractor"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"title", {"Engineer"}}, {"locked", {"1"}}), NULL));
        /* NOT REGEX MATCH is false on a null attribute (documented). */
        assert_false(scope(r, "ops", dn, P({"cn", {"x"}}), NULL));
        /* IS TRUE / IS FALSE: TRUE/1 and FALSE/0, any case; anything else,
         * or no value, is neither. */
        assert_true(scope(r, "ops", dn, P({"enabled", {"true"}}), NULL));
        assert_true(scope(r, "ops", dn, P({"enabled", {"1"}}), NULL));
        assert_false(scope(r, "ops", dn, P({"enabled", {"yes"}}), NULL));
        assert_true(scope(r, "off", dn, P({"disabled", {"FALSE"}}), NULL));
        assert_true(scope(r, "off", dn, P({"disabled", {"False"}}), NULL));
        assert_true(scope(r, "off", dn, P({"disabled", {"0"}}), NULL));
        assert_false(scope(r, "off", dn, P({"disabled", {"TRUE"}}), NULL));
        assert_false(scope(r, "off", dn, P({"disabled", {"no"}}), NULL));
        assert_false(scope(r, "off", dn, P({"disabled", {"00"}}), NULL));
        assert_false(scope(r, "off", dn, P({"cn", {"x"}}), NULL));
#undef P
        canopy_rules_free(r);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dn_compare),
                cmocka_unit_test(test_ous_and_filters),
                cmocka_unit_test(test_group_scoping),
                cmocka_unit_test(test_operators),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
