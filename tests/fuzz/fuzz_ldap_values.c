/* fuzz_ldap_values.c: directory values as the rest of Canopy sees them.
 *
 * The producer's BerValue conversion (UTF-8 check, binary attributes, range
 * names) is static in producers/ldap/emit.c, so this target fuzzes what
 * every DN from a directory goes through in the library instead: the RFC
 * 4514 helpers canopy_dn_normalize / canopy_dn_equal / canopy_dn_is_under
 * (member DNs, scoping OUs, the DN index), and the rules' view of raw
 * attribute values (object type, anchor, join keys, scope) on the bytes.
 * Properties checked (abort when broken):
 *   - dn_equal is reflexive;
 *   - a DN that normalises is equal to its normal form, the normal form is
 *     a fixed point, and a DN is under itself;
 *   - dn_equal(a, b) => same normal forms, and is symmetric.
 * Input: split at the first NUL into A and B (two DNs or DN and value). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/rules.h"

#define CHECK(c)                 \
        do {                     \
                if (!(c))        \
                        abort(); \
        } while (0)

static canopy_rules *rules;

static const canopy_attr *g_attrs;
static size_t g_nattrs;

static void load_rules(void) {
        static const char yaml[] =
                "version: 1\n"
                "connectors:\n"
                "  - id: f\n"
                "    kind: openldap\n"
                "    domain: canopy.test\n"
                "    scope:\n"
                "      exclude_ous: [\"ou=Ex\\\\, cluded,dc=x\"]\n"
                "      filters:\n"
                "        - - {attribute: title, operator: NOT REGEX MATCH, value: '^Temp'}\n"
                "    join:\n"
                "      user:\n"
                "        - source: anchor\n"
                "        - {source: mail, mv: mail}\n";
        canopy_rules_diags d = {0};
        if (canopy_rules_load_buffer("fuzz.yaml", yaml, sizeof(yaml) - 1, &rules, &d) != CANOPY_OK)
                abort(); /* the fixed rules must load */
        canopy_rules_diags_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (!rules)
                load_rules();
        char *buf = malloc(size + 2);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        buf[size] = 0;
        buf[size + 1] = 0;
        const char *a = buf;
        size_t alen = strlen(a);
        const char *b = alen < size ? buf + alen + 1 : "";
        size_t blen = alen < size ? size - alen - 1 : 0;

        canopy_arena *ar = canopy_arena_new(0, 1u << 22);
        if (!ar) {
                free(buf);
                return 0;
        }
        CHECK(canopy_dn_equal(a, a));
        const char *na = canopy_dn_normalize(a, ar);
        if (na) {
                CHECK(canopy_dn_equal(a, na));
                const char *nna = canopy_dn_normalize(na, ar);
                CHECK(nna && !strcmp(na, nna));
                CHECK(canopy_dn_is_under(a, a));
        }
        bool eq = canopy_dn_equal(a, b);
        CHECK(eq == canopy_dn_equal(b, a));
        const char *nb = canopy_dn_normalize(b, ar);
        if (eq && na && nb)
                CHECK(!strcmp(na, nb));
        (void)canopy_dn_is_under(a, b);
        (void)canopy_dn_is_under(b, a);

        /* The rules on a user whose DN is A and whose values are B's bytes
         * (mail, title, cn, entryUUID, a binary photo). */
        canopy_bytes v = {(uint8_t *)b, blen};
        canopy_attr attrs[6] = {
                {.name = "objectclass", .values = &(canopy_bytes){(uint8_t *)"inetOrgPerson", 13}, .nvalues = 1},
                {.name = "mail", .values = &v, .nvalues = 1},
                {.name = "title", .values = &v, .nvalues = 1},
                {.name = "cn", .values = &v, .nvalues = 1},
                {.name = "entryuuid", .values = &v, .nvalues = 1},
                {.name = "jpegphoto", .binary = true, .values = &v, .nvalues = 1},
        };
        g_attrs = attrs;
        g_nattrs = 6;
        canopy_obj_view view;
        canopy_attr_array holder;
        canopy_obj_view_from_attrs(&view, &holder, "f", a, NULL, g_attrs, g_nattrs);
        const char *type = canopy_rules_object_type(rules, &view);
        CHECK(type && !strcmp(type, "user"));
        view.object_type = type;
        canopy_bytes anchor;
        (void)canopy_rules_anchor(rules, &view, ar, &anchor);
        canopy_scope_result sr;
        (void)canopy_rules_scope(rules, &view, NULL, &sr);
        CHECK(memchr(sr.reason, 0, sizeof(sr.reason)));
        const canopy_join_rule *jr;
        size_t njr;
        canopy_rules_join_rules(rules, "f", "user", &jr, &njr);
        for (size_t i = 0; i < njr; i++) {
                const char *const *keys;
                size_t nk;
                if (!jr[i].is_anchor && canopy_rules_join_values(rules, &jr[i], &view, ar, &keys, &nk) == CANOPY_OK)
                        for (size_t k = 0; k < nk; k++)
                                CHECK(keys[k]);
        }
        const canopy_obj_view *views[1] = {&view};
        canopy_rules_desired des;
        char msg[128];
        (void)canopy_rules_compute(rules, "user", views, 1, NULL, ar, &des, msg, sizeof(msg));
        canopy_arena_free(ar);
        free(buf);
        return 0;
}
