/* test_rules_expr.c: every expression function against the examples of
 * the Entra reference ("Reference for writing expressions for attribute
 * mappings", app provisioning and cloud sync versions), plus null,
 * multi-valued and error behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "canopy/expr.h"

#include "rules_test_util.h"

static canopy_arena *arena;

/* Evaluate src on attrs; returns the value as text ("|" between values),
 * "<null>", "<skip>" or "<error: CODE>". */
static const char *run(const char *src, const kv *attrs, const canopy_eval_ctx *ctx)
{
        canopy_expr *e = NULL;
        canopy_expr_error er;
        canopy_err err = canopy_expr_compile(src, strlen(src), NULL, &e, &er);
        if (err) {
                print_message("compile %s: %s at %zu\n", src, er.msg, er.pos);
                return "<compile error>";
        }
        tobj o = {.attrs = attrs};
        canopy_obj_view v = {.connector = "t", .dn = "CN=Joe,OU=Sales,DC=contoso,DC=com", .lookup = tobj_lookup, .ctx = &o};
        canopy_value val;
        char msg[256];
        err = canopy_expr_eval(e, &v, ctx, arena, &val, msg, sizeof(msg));
        /* A result may borrow from the expression (literals): copy first. */
        const char *out = val.type == CANOPY_V_NULL ? "<null>" : canopy_value_to_text(&val, "|", arena);
        canopy_expr_free(e);
        if (err == CANOPY_ERR_EXPR_SKIP)
                return "<skip>";
        if (err) {
                static char buf[300];
                snprintf(buf, sizeof(buf), "<error: %s>", canopy_err_name(err));
                return buf;
        }
        return out;
}

#define EXPECT(src, attrs, want) assert_string_equal(run((src), (attrs), NULL), (want))

static void test_documented_examples(void **state)
{
        (void)state;
        EXPECT("Append([userPrincipalName], \".test\")",
               ((kv[]){{"userPrincipalName", {"John.Doe@contoso.com"}}, {0}}), "John.Doe@contoso.com.test");
        EXPECT("BitAnd(&HF, &HF7)", NULL, "7");
        EXPECT("CBool([attribute1] = [attribute2])", ((kv[]){{"attribute1", {"x"}}, {"attribute2", {"x"}}, {0}}), "True");
        EXPECT("CBool([attribute1] = [attribute2])", ((kv[]){{"attribute1", {"x"}}, {"attribute2", {"y"}}, {0}}), "False");
        EXPECT("Coalesce([mail],[userPrincipalName])", ((kv[]){{"userPrincipalName", {"John.Doe@contoso.com"}}, {0}}),
               "John.Doe@contoso.com");
        EXPECT("ConvertToBase64(\"Hello world!\")", NULL, "SABlAGwAbABvACAAdwBvAHIAbABkACEA");
        EXPECT("ConvertToUTF8Hex(\"Hello world!\")", NULL, "48656C6C6F20776F726C6421");
        EXPECT("CStr([dn])", NULL, "CN=Joe,OU=Sales,DC=contoso,DC=com");
        EXPECT("DateAdd(\"d\", 7, CDate(\"2012-03-16-07:00\"))", NULL, "3/23/2012 7:00:00 AM");
        EXPECT("DateAdd(\"d\", -10, CDate(\"2012-03-16-07:00\"))", NULL, "3/6/2012 7:00:00 AM");
        EXPECT("DateAdd(\"ww\", 2, CDate(\"2012-03-16-07:00\"))", NULL, "3/30/2012 7:00:00 AM");
        EXPECT("DateAdd(\"m\", 10, CDate(\"2012-03-16-07:00\"))", NULL, "1/16/2013 7:00:00 AM");
        EXPECT("DateAdd(\"yyyy\", 2, CDate(\"2012-03-16-07:00\"))", NULL, "3/16/2014 7:00:00 AM");
        EXPECT("DateFromNum(129699324000000000)", NULL, "1/1/2012 11:00:00 PM");
        EXPECT("DNComponent(CRef([dn]),1)", NULL, "Joe");
        EXPECT("FormatDateTime([extensionAttribute1], , \"yyyyMMddHHmmss.fZ\", \"yyyy-MM-dd\")",
               ((kv[]){{"extensionAttribute1", {"20150123105347.1Z"}}, {0}}), "2015-01-23");
        EXPECT("FormatDateTime([extensionAttribute1], \"yyyyMMddHHmmss.fZ\", \"yyyy-MM-dd\")",
               ((kv[]){{"extensionAttribute1", {"20150123105347.1Z"}}, {0}}), "2015-01-23");
        EXPECT("IgnoreFlowIfNullOrEmpty([department])", NULL, "<skip>");
        EXPECT("IgnoreFlowIfNullOrEmpty(Switch([prefix], \"\", \"3443\", \"Dr.\", \"3444\", \"Prof.\"))",
               ((kv[]){{"prefix", {"9"}}, {0}}), "<skip>");
        EXPECT("IIF([country]=\"USA\",[country],[department])", ((kv[]){{"country", {"USA"}}, {"department", {"Eng"}}, {0}}),
               "USA");
        EXPECT("IIF([country]=\"USA\",[country],[department])", ((kv[]){{"country", {"FR"}}, {"department", {"Eng"}}, {0}}),
               "Eng");
        EXPECT("IIF([country]=\"USA\",IIF([state]=\"CA\",\"True\",\"False\"),\"False\")",
               ((kv[]){{"country", {"USA"}}, {"state", {"CA"}}, {0}}), "True");
        EXPECT("IIF([employeeType]=\"Intern\",\"t-\" & [alias],[alias])",
               ((kv[]){{"employeeType", {"Intern"}}, {"alias", {"jdoe"}}, {0}}), "t-jdoe");
        EXPECT("InStr(\"The quick brown fox\",\"quick\")", NULL, "5");
        EXPECT("InStr(\"repEated\",\"e\",3,vbBinaryCompare)", NULL, "7");
        EXPECT("InStr(\"repEated\",\"e\",3,vbTextCompare)", NULL, "4");
        EXPECT("IsNull([displayName])", NULL, "True");
        EXPECT("IsNullOrEmpty([displayName])", ((kv[]){{"displayName", {""}}, {0}}), "True");
        EXPECT("Switch(IsPresent([directManager]),[directManager], IsPresent([skiplevelManager]),[skiplevelManager])",
               ((kv[]){{"directManager", {"boss"}}, {0}}), "boss");
        EXPECT("Item([proxyAddresses], 1)", ((kv[]){{"proxyAddresses", {"SMTP:a@x", "smtp:b@x"}}, {0}}), "SMTP:a@x");
        EXPECT("Join(\", \", \"\", [surname], [givenName])", ((kv[]){{"givenName", {"John"}}, {"surname", {"Doe"}}, {0}}),
               "Doe, John");
        EXPECT("Left(\"John Doe\", 3)", NULL, "Joh");
        EXPECT("Append(Mid([givenName], 1, 3), Mid([surname], 1, 5))",
               ((kv[]){{"givenName", {"John"}}, {"surname", {"Doe"}}, {0}}), "JohDoe");
        EXPECT("NormalizeDiacritics([givenName])", ((kv[]){{"givenName", {"Zoë"}}, {0}}), "Zoe");
        EXPECT("NumFromDate(\"2012-01-01T23:00:00Z\")", NULL, "129699324000000000");
        EXPECT("RemoveDuplicates([proxyAddresses])", ((kv[]){{"proxyAddresses", {"a", "b", "a"}}, {0}}), "a|b");
        EXPECT("Replace([BusinessTitle],\"Product Developer\", , , \"Software Engineer\", , )",
               ((kv[]){{"BusinessTitle", {"Product Developer"}}, {0}}), "Software Engineer");
        EXPECT("Replace([UserID],\"<username>\", , , , , \"<username>@contoso.com\")",
               ((kv[]){{"UserID", {"jsmith"}}, {0}}), "jsmith@contoso.com");
        EXPECT("Replace([telephoneNumber], , \"\\\\+(?<isdCode>\\\\d* )(?<phoneNumber>\\\\d{10})\", , \"${phoneNumber}\", , )",
               ((kv[]){{"telephoneNumber", {"+91 9998887777"}}, {0}}), "9998887777");
        /* The reference shows 19998887777, but its pattern does not remove
         * '+': .NET Regex.Replace (and Canopy) keep it. */
        EXPECT("Replace([mobile], , \"[()\\\\s-]+\", , \"\", , )", ((kv[]){{"mobile", {"+1 (999) 888-7777"}}, {0}}),
               "+19998887777");
        EXPECT("Replace([AddressLineData], ,\"(?<streetNumber>^\\\\d*)\",\"streetNumber\", \"888\", , )",
               ((kv[]){{"AddressLineData", {"545 Tremont Street"}}, {0}}), "888 Tremont Street");
        EXPECT("Replace([userPrincipalName], , \"(?<Suffix>@(.)*)\", \"Suffix\", \"\", , )",
               ((kv[]){{"userPrincipalName", {"jsmith@contoso.com"}}, {0}}), "jsmith");
        EXPECT("Replace([telephoneNumber], , \"\\\\+(?<isdCode>\\\\d* )(?<phoneNumber>\\\\d{10})\", \"phoneNumber\" , , [mobile], )",
               ((kv[]){{"telephoneNumber", {""}}, {"mobile", {"+91 8887779999"}}, {0}}), "8887779999");
        EXPECT("Replace([mailNickname], , \"[a-zA-Z_]*\", , \"\", , )", ((kv[]){{"mailNickname", {"john_doe72"}}, {0}}), "72");
        EXPECT("Replace([mail], \"@contoso.com\", , ,\"\", ,)", ((kv[]){{"mail", {"john.doe@contoso.com"}}, {0}}), "john.doe");
        EXPECT("Split([extensionAttribute5], \",\")",
               ((kv[]){{"extensionAttribute5", {"PermissionSetOne, PermissionSetTwo"}}, {0}}), "PermissionSetOne|PermissionSetTwo");
        EXPECT("StripSpaces(\" a b  c \")", NULL, "abc");
        EXPECT("Switch([state], \"Australia/Sydney\", \"NSW\", \"Australia/Sydney\",\"QLD\", \"Australia/Brisbane\", \"SA\", "
               "\"Australia/Adelaide\")",
               ((kv[]){{"state", {"QLD"}}, {0}}), "Australia/Brisbane");
        EXPECT("Switch([statusFlag], \"Default Value\", \"true\", \"1\", \"\", \"0\")", NULL, "0");
        EXPECT("Switch(ToLower([statusFlag]), \"0\", \"true\", \"1\", \"false\", \"0\")", ((kv[]){{"statusFlag", {"TRUE"}}, {0}}),
               "1");
        EXPECT("ToLower(Join(\"@\", NormalizeDiacritics(StripSpaces(Join(\".\",  [PreferredFirstName], [PreferredLastName]))), "
               "\"contoso.com\"))",
               ((kv[]){{"PreferredFirstName", {"John"}}, {"PreferredLastName", {"Smith"}}, {0}}), "john.smith@contoso.com");
        EXPECT("ToUpper(\"straße é\", \"en-US\")", NULL, "STRAßE É");
        EXPECT("Trim(\" Test \")", NULL, "Test");
        EXPECT("Trim([proxyAddresses])", ((kv[]){{"proxyAddresses", {" a ", "b "}}, {0}}), "a|b");
        EXPECT("Word(\"The quick brown fox\",3,\" \")", NULL, "brown");
        EXPECT("Word(\"This,string!has&many separators\",3,\",!&#\")", NULL, "has");
        EXPECT("ConvertFromBase64(\"SABlAGwAbABvACAAdwBvAHIAbABkACEA\")", NULL, "Hello world!");
        EXPECT("ConvertFromBase64(\"SGVsbG8gd29ybGQh\", UTF8)", NULL, "Hello world!");
        EXPECT("PCase([lastName],\" '-\")", ((kv[]){{"lastName", {"PINTO-DE'SILVA"}}, {0}}), "Pinto-De'Silva");
        EXPECT("Count([proxyAddresses])", ((kv[]){{"proxyAddresses", {"a", "b", "c"}}, {0}}), "3");
        EXPECT("IsString([x])", ((kv[]){{"x", {"v"}}, {0}}), "True");
        EXPECT("Not(\"True\")", NULL, "False");
        EXPECT("Not([x])", NULL, "True");
        EXPECT("CBool(BitAnd([groupType], -2147483648))", ((kv[]){{"groupType", {"-2147483646"}}, {0}}), "True");
        EXPECT("CBool(BitAnd([groupType], -2147483648))", ((kv[]){{"groupType", {"2"}}, {0}}), "False");
        EXPECT("IIF(BitAnd([userAccountControl], 2) = 0, True, False)", ((kv[]){{"userAccountControl", {"514"}}, {0}}), "False");
        EXPECT("DomainFromDN([dn])", NULL, "contoso.com");
}

static void test_null_and_multi(void **state)
{
        (void)state;
        EXPECT("Append([missing], \"x\")", NULL, "<null>");
        EXPECT("Left([missing], 3)", NULL, "");                /* documented: null string gives "" */
        EXPECT("Word([missing], 1, \" \")", NULL, "");
        EXPECT("Join(\"-\", [missing], [missing2])", NULL, "<null>");
        EXPECT("ToLower([m])", ((kv[]){{"m", {"A", "B"}}, {0}}), "a|b");
        EXPECT("Join(\",\", [m], \"c\")", ((kv[]){{"m", {"a", "b"}}, {0}}), "a,b,c");
        EXPECT("[m] = \"b\"", ((kv[]){{"m", {"a", "b"}}, {0}}), "True");
        EXPECT("Item([m], 3)", ((kv[]){{"m", {"a", "b"}}, {0}}), "<error: EXPR_EVAL>");
        EXPECT("Count([missing])", NULL, "0");
        EXPECT("Coalesce([a], [b], \"d\")", NULL, "d");
        EXPECT("Mid([missing], 1, 2)", NULL, "<null>");
        EXPECT("Left(\"Zoë Ågren\", 3)", NULL, "Zoë");
        EXPECT("Mid(\"Zoë Ågren\", 5, 2)", NULL, "Åg");
        EXPECT("Error(\"AccountName is required\")", NULL, "<error: EXPR_EVAL>");
        EXPECT("[a] & [b]", ((kv[]){{"a", {"x"}}, {0}}), "x");
        EXPECT("5 > 10", NULL, "False");
        EXPECT("[n] >= 10", ((kv[]){{"n", {"12"}}, {0}}), "True");
        /* Functions of one source value apply to each value of a
         * multi-valued one, as the reference states for all of them. */
        EXPECT("InStr([m], \"@\")", ((kv[]){{"m", {"a@x", "bc@y", "none"}}, {0}}), "2|3|0");
        EXPECT("Word([m], 2, \" \")", ((kv[]){{"m", {"Zoë Ågren Li", "Bo Ek"}}, {0}}), "Ågren|Ek");
        EXPECT("Split([m], \",\")", ((kv[]){{"m", {"a,b", "c", "d, e"}}, {0}}), "a|b|c|d|e");
        EXPECT("DNComponent([m], 1)", ((kv[]){{"m", {"CN=Smith\\, Bob,OU=A,DC=x", "CN=Zoë,DC=x"}}, {0}}),
               "Smith, Bob|Zoë");
        EXPECT("PCase([m])", ((kv[]){{"m", {"anna LIND", "bo"}}, {0}}), "Anna Lind|Bo");
        EXPECT("Count(Split([m], \";\"))", ((kv[]){{"m", {"1;2", "3;4;5"}}, {0}}), "5");
        /* One value, and no value, as before. */
        EXPECT("InStr([m], \"@\")", ((kv[]){{"m", {"ab@x"}}, {0}}), "3");
        EXPECT("InStr([missing], \"@\")", NULL, "<null>");
        /* The first argument is evaluated once, nested calls keep their own. */
        EXPECT("Word(Split([m], \";\"), 1, \" \")", ((kv[]){{"m", {"a b;c d", "e f"}}, {0}}), "a|c|e");
        EXPECT("InStr(Word([m], 2, \" \"), \"n\")", ((kv[]){{"m", {"x an", "y bn"}}, {0}}), "2|2");
}

static const char *taken[] = {"John.Smith@contoso.com", "J.Smith@contoso.com", NULL};

static bool is_unique(void *ctx, const char *prop, const char *value)
{
        int *calls = ctx;
        (*calls)++;
        assert_string_equal(prop, "userPrincipalName");
        for (size_t i = 0; taken[i]; i++)
                if (!strcmp(taken[i], value))
                        return false;
        return true;
}

static void test_select_unique_value(void **state)
{
        (void)state;
        const char *src = "SelectUniqueValue(\n"
                          "  Join(\"@\", NormalizeDiacritics(StripSpaces(Join(\".\",  [PreferredFirstName], [PreferredLastName]))), \"contoso.com\"),\n"
                          "  Join(\"@\", NormalizeDiacritics(StripSpaces(Join(\".\",  Mid([PreferredFirstName], 1, 1), [PreferredLastName]))), \"contoso.com\"),\n"
                          "  Join(\"@\", NormalizeDiacritics(StripSpaces(Join(\".\",  Mid([PreferredFirstName], 1, 2), [PreferredLastName]))), \"contoso.com\"))";
        kv person[] = {{"PreferredFirstName", {"John"}}, {"PreferredLastName", {"Smith"}}, {0}};
        int calls = 0;
        canopy_eval_ctx ctx = {.is_unique = is_unique, .unique_ctx = &calls, .property = "userPrincipalName"};
        assert_string_equal(run(src, person, &ctx), "Jo.Smith@contoso.com");
        assert_int_equal(calls, 3);
        kv other[] = {{"PreferredFirstName", {"Ann"}}, {"PreferredLastName", {"Lee"}}, {0}};
        calls = 0;
        assert_string_equal(run(src, other, &ctx), "Ann.Lee@contoso.com");
        assert_int_equal(calls, 1);
        taken[1] = NULL;
        calls = 0;
        assert_string_equal(run(src, person, &ctx), "J.Smith@contoso.com");
        taken[1] = "J.Smith@contoso.com";
}

static void test_guid(void **state)
{
        (void)state;
        char a[64], b[64];
        snprintf(a, sizeof(a), "%s", run("Guid()", NULL, NULL));
        snprintf(b, sizeof(b), "%s", run("Guid()", NULL, NULL));
        assert_int_equal(strlen(a), 36);
        assert_true(a[14] == '4');                                        /* version 4 */
        assert_non_null(strchr("89ab", a[19]));                           /* RFC 4122 variant */
        assert_true(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
        assert_string_not_equal(a, b);
}

static void compile_error(const char *src, const char *msg_part, size_t pos, canopy_err code)
{
        canopy_expr *e = NULL;
        canopy_expr_error er;
        canopy_err err = canopy_expr_compile(src, strlen(src), NULL, &e, &er);
        assert_int_equal(err, code);
        assert_null(e);
        if (!strstr(er.msg, msg_part))
                fail_msg("'%s': message '%s' lacks '%s'", src, er.msg, msg_part);
        assert_int_equal(er.pos, pos);
}

static void test_compile_errors(void **state)
{
        (void)state;
        compile_error("Foo(1)", "unknown function 'Foo'", 0, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("Left(\"a\")", "Left takes 2 arguments, not 1", 0, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("Left(\"a\", \"x\")", "must be a number", 10, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("Append(\"a\"", "missing )", 10, CANOPY_ERR_RULES_SYNTAX);
        compile_error("Append(\"a, \"b\")", "", 12, CANOPY_ERR_RULES_SYNTAX);
        compile_error("Join(\"\", SelectUniqueValue(\"a\", \"b\"))", "outermost", 9, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("Replace([a], , \"(\", , \"\", , )", "bad regular expression", 16, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("Switch([a], \"d\", \"k\")", "Switch takes", 0, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("DateAdd(\"fortnight\", 1, Now())", "unknown interval", 8, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("[givenName", "unterminated attribute", 0, CANOPY_ERR_RULES_SYNTAX);
        compile_error("givenName", "unknown name", 0, CANOPY_ERR_RULES_SEMANTIC);
        compile_error("", "empty expression", 0, CANOPY_ERR_RULES_SYNTAX);
        compile_error("BitAnd(True, 1)", "must be a number", 7, CANOPY_ERR_RULES_SEMANTIC);
        /* Unknown attribute when the connector declares its attributes. */
        const char *attrs[] = {"givenName", "sn"};
        canopy_expr_env env = {attrs, 2};
        canopy_expr *e = NULL;
        canopy_expr_error er;
        const char *src = "Join(\" \", [givenName], [surname])";
        assert_int_equal(canopy_expr_compile(src, strlen(src), &env, &e, &er), CANOPY_ERR_RULES_SEMANTIC);
        assert_non_null(strstr(er.msg, "unknown attribute 'surname'"));
        assert_int_equal(er.pos, 24);
        char *txt = canopy_expr_format_error("f.yaml", src, strlen(src), 3, 20, &er);
        assert_non_null(strstr(txt, "f.yaml:3:44: error: unknown attribute"));
        free(txt);
        src = "Join(\" \", [givenName], [SN])";
        assert_int_equal(canopy_expr_compile(src, strlen(src), &env, &e, &er), CANOPY_OK);
        canopy_expr_free(e);
}

static int setup(void **state)
{
        (void)state;
        arena = canopy_arena_new(0, 0);
        return arena ? 0 : -1;
}

static int teardown(void **state)
{
        (void)state;
        canopy_arena_free(arena);
        return 0;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_documented_examples), cmocka_unit_test(test_null_and_multi),
                cmocka_unit_test(test_select_unique_value), cmocka_unit_test(test_guid),
                cmocka_unit_test(test_compile_errors),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
