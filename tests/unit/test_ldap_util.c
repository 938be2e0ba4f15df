/* Unit tests of the LDAP producer's pure helpers (lib/src/ldap_util.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ldap_util.h"

#define U8(s) ((const uint8_t *)(s)), (sizeof(s) - 1)

static void test_utf8(void **state) {
        (void)state;
        assert_true(canopy_ldap_valid_utf8(U8("plain ascii")));
        assert_true(canopy_ldap_valid_utf8(U8("Ève Müller-Łukasiewicz")));
        assert_true(canopy_ldap_valid_utf8(U8("فريد الحسن")));
        assert_true(canopy_ldap_valid_utf8(U8("\xf0\x9f\x98\x80"))); /* U+1F600 */
        assert_false(canopy_ldap_valid_utf8(U8("\xff\xd8\xff\xe0")));   /* JPEG header */
        assert_false(canopy_ldap_valid_utf8(U8("\xc3\x28")));           /* bad continuation */
        assert_false(canopy_ldap_valid_utf8(U8("\xc0\xaf")));           /* overlong '/' */
        assert_false(canopy_ldap_valid_utf8(U8("\xed\xa0\x80")));       /* surrogate */
        assert_false(canopy_ldap_valid_utf8(U8("abc\xe2\x82")));        /* truncated */
        assert_false(canopy_ldap_valid_utf8((const uint8_t *)"a\0b", 3)); /* NUL */
        assert_true(canopy_ldap_valid_utf8((const uint8_t *)"", 0));
}

static void sid(uint8_t *b, size_t *n, const uint32_t *subs, size_t cnt) {
        b[0] = 1;
        b[1] = (uint8_t)cnt;
        memset(b + 2, 0, 6);
        b[7] = 5; /* NT authority */
        for (size_t i = 0; i < cnt; i++) {
                b[8 + 4 * i] = (uint8_t)subs[i];
                b[9 + 4 * i] = (uint8_t)(subs[i] >> 8);
                b[10 + 4 * i] = (uint8_t)(subs[i] >> 16);
                b[11 + 4 * i] = (uint8_t)(subs[i] >> 24);
        }
        *n = 8 + 4 * cnt;
}

static void test_privileged_sid(void **state) {
        (void)state;
        uint8_t b[64];
        size_t n;
        const uint32_t da[] = {21, 2926560221u, 1337609283u, 3803117607u, 512};
        sid(b, &n, da, 5);
        assert_string_equal(canopy_ldap_privileged_sid(b, n), "Domain Admins");
        const uint32_t sa[] = {21, 1, 2, 3, 518};
        sid(b, &n, sa, 5);
        assert_string_equal(canopy_ldap_privileged_sid(b, n), "Schema Admins");
        const uint32_t ea[] = {21, 1, 2, 3, 519};
        sid(b, &n, ea, 5);
        assert_string_equal(canopy_ldap_privileged_sid(b, n), "Enterprise Admins");
        const uint32_t ad[] = {32, 544};
        sid(b, &n, ad, 2);
        assert_string_equal(canopy_ldap_privileged_sid(b, n), "Administrators");
        const uint32_t du[] = {21, 1, 2, 3, 513}; /* Domain Users */
        sid(b, &n, du, 5);
        assert_null(canopy_ldap_privileged_sid(b, n));
        const uint32_t users[] = {32, 545}; /* BUILTIN\Users */
        sid(b, &n, users, 2);
        assert_null(canopy_ldap_privileged_sid(b, n));
        assert_null(canopy_ldap_privileged_sid(b, 7)); /* truncated */
        b[1] = 15;                                      /* count beyond the buffer */
        assert_null(canopy_ldap_privileged_sid(b, n));
        assert_null(canopy_ldap_privileged_sid(NULL, 0));
}

static void test_attr_name(void **state) {
        (void)state;
        char b[64];
        long lo, hi;
        bool r;
        canopy_ldap_attr_name("member;range=0-1499", b, sizeof(b), &lo, &hi, &r);
        assert_string_equal(b, "member");
        assert_true(r);
        assert_int_equal(lo, 0);
        assert_int_equal(hi, 1499);
        canopy_ldap_attr_name("Member;Range=1500-*", b, sizeof(b), &lo, &hi, &r);
        assert_string_equal(b, "member");
        assert_true(r);
        assert_int_equal(lo, 1500);
        assert_int_equal(hi, -1);
        canopy_ldap_attr_name("member;range=1-1", b, sizeof(b), &lo, &hi, &r);
        assert_true(r && lo == 1 && hi == 1);
        canopy_ldap_attr_name("userCertificate;binary", b, sizeof(b), &lo, &hi, &r);
        assert_string_equal(b, "usercertificate;binary");
        assert_false(r);
        canopy_ldap_attr_name("cn;lang-fr", b, sizeof(b), &lo, &hi, &r);
        assert_string_equal(b, "cn");
        canopy_ldap_attr_name("displayName", b, 4, &lo, &hi, &r); /* truncated, still terminated */
        assert_string_equal(b, "dis");
}

static void test_uuid(void **state) {
        (void)state;
        uint8_t u[16];
        assert_int_equal(canopy_ldap_uuid_parse(U8("cc3925c4-7c07-1041-8da3-2f419f5b63a6"), u), 0);
        assert_int_equal(u[0], 0xcc);
        assert_int_equal(u[15], 0xa6);
        assert_int_equal(canopy_ldap_uuid_parse(U8("CC3925C47C0710418DA32F419F5B63A6"), u), 0);
        assert_int_equal(canopy_ldap_uuid_parse(U8("cc3925c4-7c07"), u), -1);
        assert_int_equal(canopy_ldap_uuid_parse(U8("zz3925c4-7c07-1041-8da3-2f419f5b63a6"), u), -1);
        assert_int_equal(canopy_ldap_uuid_parse(U8("cc3925c4-7c07-1041-8da3-2f419f5b63a6aa"), u), -1);
}

static void test_times(void **state) {
        (void)state;
        assert_int_equal(canopy_ldap_gentime_ms(U8("19700101000001Z")), 1000);
        assert_int_equal(canopy_ldap_gentime_ms(U8("20240131120000.0Z")), 1706702400000LL);
        assert_int_equal(canopy_ldap_gentime_ms(U8("2024")), 0);
        assert_int_equal(canopy_ldap_gentime_ms(U8("2024013112000xZ")), 0);
        const char *ck = "rid=000,csn=20240131120000.500000Z#000000#000#000000";
        double t = canopy_ldap_csn_time(ck, strlen(ck));
        assert_true(t > 1706702400.4 && t < 1706702400.6);
        assert_true(canopy_ldap_csn_time("rid=000", 7) == 0);
}

static void test_dn_under(void **state) {
        (void)state;
        assert_true(canopy_ldap_dn_under("ou=people,dc=x", "ou=people,dc=x"));
        assert_true(canopy_ldap_dn_under("cn=a,ou=people,dc=x", "ou=people,dc=x"));
        assert_false(canopy_ldap_dn_under("cn=a,ou=other,dc=x", "ou=people,dc=x"));
        assert_false(canopy_ldap_dn_under("cn=aou=people,dc=x", "ou=people,dc=x"));
        /* "cn=a\,ou=people,dc=x" is ONE RDN whose value contains a comma */
        assert_false(canopy_ldap_dn_under("cn=a\\,ou=people,dc=x", "ou=people,dc=x"));
        assert_true(canopy_ldap_dn_under("cn=a\\\\,ou=people,dc=x", "ou=people,dc=x"));
        assert_false(canopy_ldap_dn_under(NULL, "dc=x"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_utf8),    cmocka_unit_test(test_privileged_sid), cmocka_unit_test(test_attr_name),
            cmocka_unit_test(test_uuid),    cmocka_unit_test(test_times),          cmocka_unit_test(test_dn_under),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
