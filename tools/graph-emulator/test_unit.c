/* Unit tests of the emulator's building blocks (no network): the hash map,
 * the ordered vector, encodings, and the store's validation, uniqueness,
 * membership, delete/restore/purge and snapshot round trip. */
#include "emu.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* graph.c and main.c are not linked; the store only needs these. */
void emu_stats_count(emu_server *srv, const char *method, const char *kind, int status) {
        (void)srv;
        (void)method;
        (void)kind;
        (void)status;
}
void emu_stats_add(emu_server *srv, uint64_t *field) {
        (void)srv;
        (*field)++;
}

static void test_map(void **state) {
        (void)state;
        emu_map m = {0};
        char k[32];
        for (int i = 0; i < 5000; i++) {
                snprintf(k, sizeof(k), "key%d", i);
                assert_int_equal(emu_map_put(&m, k, (void *)(uintptr_t)(i + 1)), 0);
        }
        assert_int_equal(m.n, 5000);
        for (int i = 0; i < 5000; i += 2) {
                snprintf(k, sizeof(k), "key%d", i);
                assert_ptr_equal(emu_map_del(&m, k), (void *)(uintptr_t)(i + 1));
        }
        /* Tombstones do not hide later keys; re-insertion reuses them. */
        for (int i = 0; i < 5000; i++) {
                snprintf(k, sizeof(k), "key%d", i);
                void *v = emu_map_get(&m, k);
                if (i % 2)
                        assert_ptr_equal(v, (void *)(uintptr_t)(i + 1));
                else
                        assert_null(v);
        }
        for (int round = 0; round < 20; round++) {
                snprintf(k, sizeof(k), "churn%d", round);
                emu_map_put(&m, k, &m);
                emu_map_del(&m, k);
        }
        size_t it = 0, n = 0;
        const char *key;
        void *val;
        while (emu_map_next(&m, &it, &key, &val))
                n++;
        assert_int_equal(n, 2500);
        emu_map_clear(&m);
}

static void test_seqvec(void **state) {
        (void)state;
        emu_seqvec sv = {0};
        static int dummy[100];
        for (int i = 0; i < 100; i++)
                assert_int_equal(emu_seqvec_push(&sv, (uint64_t)(10 * i + 5), &dummy[i]), 0);
        assert_int_equal(emu_seqvec_lower(&sv, 0), 0);
        assert_int_equal(emu_seqvec_lower(&sv, 6), 1);
        assert_int_equal(emu_seqvec_lower(&sv, 995), 99);
        assert_int_equal(emu_seqvec_lower(&sv, 996), 100);
        for (int i = 0; i < 80; i++)
                emu_seqvec_remove(&sv, (uint64_t)(10 * i + 5));
        assert_int_equal(sv.live, 20);
        /* A push on a full, mostly empty vector compacts it; order holds. */
        for (int i = 0; i < 200; i++)
                emu_seqvec_push(&sv, (uint64_t)(2000 + i), &dummy[0]);
        uint64_t prev = 0;
        size_t live = 0;
        for (size_t i = 0; i < sv.len; i++) {
                assert_true(sv.seq[i] > prev);
                prev = sv.seq[i];
                live += sv.val[i] != NULL;
        }
        assert_int_equal(live, 220);
        size_t i = emu_seqvec_lower(&sv, 805);
        assert_int_equal(sv.seq[i], 805);
        emu_seqvec_free(&sv);
}

static void test_encodings(void **state) {
        (void)state;
        const char *samples[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar", "\xff\xfe\x00"};
        for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
                size_t len = strlen(samples[i]), ol;
                char *e = emu_b64url_encode((const unsigned char *)samples[i], len);
                assert_null(strpbrk(e, "+/="));
                unsigned char *d = emu_b64url_decode(e, strlen(e), &ol);
                assert_int_equal(ol, len);
                assert_memory_equal(d, samples[i], len);
                free(e);
                free(d);
        }
        size_t ol;
        assert_null(emu_b64url_decode("a", 1, &ol));
        assert_null(emu_b64url_decode("ab!d", 4, &ol));
        char s[] = "a%20b+c%2Fd%zz";
        emu_url_decode(s, true);
        assert_string_equal(s, "a b c/d%zz");
        char *enc = emu_url_encode("startswith(x,'a b')");
        assert_string_equal(enc, "startswith%28x%2C%27a%20b%27%29");
        free(enc);
        char id[37];
        emu_uuid(id);
        assert_true(emu_is_guid(id));
        assert_false(emu_is_guid("not-a-guid"));
}

static emu_server *new_server(void) {
        emu_server *srv = calloc(1, sizeof(*srv));
        pthread_mutex_init(&srv->mu, NULL);
        pthread_rwlock_init(&srv->lock, NULL);
        static char d1[] = "canopy.test";
        srv->domains[srv->ndomains++] = d1;
        return srv;
}

static emu_obj *user(emu_server *srv, emu_tenant *tn, const char *nick, const char *extra, emu_err *e) {
        char buf[1024];
        snprintf(
            buf, sizeof(buf),
            "{\"accountEnabled\":true,\"displayName\":\"%s\",\"mailNickname\":\"%s\","
            "\"userPrincipalName\":\"%s@canopy.test\",\"passwordProfile\":{\"password\":\"Aa1!aaaa\"}%s}",
            nick, nick, nick, extra ? extra : "");
        json_t *b = json_loads(buf, 0, NULL);
        assert_non_null(b);
        emu_obj *o = emu_obj_create(srv, tn, EMU_USER, b, e);
        json_decref(b);
        return o;
}

static void test_store_validation(void **state) {
        (void)state;
        emu_server *srv = new_server();
        emu_tenant *tn = emu_tenant_get(srv, "T1", true);
        emu_err e;
        emu_obj *a =
            user(srv, tn, "ann", ",\"onPremisesImmutableId\":\"x1\",\"mail\":\"ann@canopy.test\"", &e);
        assert_non_null(a);
        assert_null(user(srv, tn, "ANN", NULL, &e));
        assert_string_equal(e.target, "userPrincipalName");
        assert_null(user(srv, tn, "bob", ",\"onPremisesImmutableId\":\"x1\"", &e));
        assert_string_equal(e.target, "onPremisesImmutableId");
        assert_null(user(srv, tn, "bob", ",\"mail\":\"Ann@Canopy.test\"", &e));
        assert_string_equal(e.target, "proxyAddresses");
        assert_null(user(srv, tn, "bob", ",\"onPremisesSecurityIdentifier\":\"S-1\"", &e));
        assert_string_equal(e.msg, "Property 'onPremisesSecurityIdentifier' is read-only and cannot be set.");
        assert_null(user(srv, tn, "bob",
                         ",\"surname\":\"12345678901234567890123456789012345678901234567890123456789012345\"",
                         &e));
        assert_string_equal(e.msg, "Invalid value specified for property 'surname' of resource 'User'.");
        assert_null(user(srv, tn, "b b", NULL, &e));
        assert_int_equal(e.status, 400);
        json_t *b = json_pack("{s:b, s:s, s:s, s:{s:s}}", "accountEnabled", 1, "displayName", "x",
                              "userPrincipalName", "x@other.test", "passwordProfile", "password", "Aa1!aaaa");
        json_object_set_new(b, "mailNickname", json_string("x"));
        assert_null(emu_obj_create(srv, tn, EMU_USER, b, &e));
        assert_non_null(strstr(e.msg, "domain portion"));
        json_decref(b);

        /* Soft delete frees the values; restore conflicts if they were reused. */
        emu_obj_soft_delete(tn, a);
        emu_obj *a2 = user(srv, tn, "ann", NULL, &e);
        assert_non_null(a2);
        assert_int_equal(emu_obj_restore(tn, a, &e), -1);
        assert_string_equal(e.target, "userPrincipalName");
        emu_obj_soft_delete(tn, a2);
        emu_obj_purge(tn, a2);
        assert_int_equal(emu_obj_restore(tn, a, &e), 0);
        assert_ptr_equal(emu_obj_visible(srv, tn, "ANN@canopy.test", EMU_USER), a);
        emu_state_reset(srv);
        emu_map_clear(&srv->tenants);
        free(srv);
}

static void test_store_members_snapshot(void **state) {
        (void)state;
        emu_server *srv = new_server();
        emu_tenant *tn = emu_tenant_get(srv, "t2", true);
        emu_err e;
        json_t *gb = json_pack("{s:s, s:s, s:b, s:b}", "displayName", "G", "mailNickname", "g", "mailEnabled",
                               0, "securityEnabled", 1);
        emu_obj *g = emu_obj_create(srv, tn, EMU_GROUP, gb, &e);
        emu_obj *g2 = emu_obj_create(srv, tn, EMU_GROUP, gb, &e);
        json_decref(gb);
        assert_non_null(g);
        emu_obj *u[50];
        for (int i = 0; i < 50; i++) {
                char nick[16];
                snprintf(nick, sizeof(nick), "m%d", i);
                u[i] = user(srv, tn, nick, NULL, &e);
                assert_non_null(u[i]);
                assert_int_equal(emu_member_add(tn, g, u[i]), 0);
        }
        assert_int_equal(emu_member_add(tn, g, u[3]), 1);
        assert_int_equal(emu_member_add(tn, g, g2), 0);
        assert_int_equal(emu_member_remove(tn, g, u[4]), 0);
        assert_int_equal(emu_member_remove(tn, g, u[4]), 1);
        emu_obj_soft_delete(tn, u[5]);
        emu_obj_purge(tn, u[5]);
        assert_false(emu_member_has(g, u[5]));
        assert_int_equal(g->members.n, 49);

        char path[] = "/tmp/emu-unit-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
        json_t *before = emu_state_dump(srv, NULL);
        assert_int_equal(emu_snapshot_save(srv, path), 0);
        emu_state_reset(srv);
        assert_int_equal(emu_snapshot_load(srv, path), 0);
        unlink(path);
        json_t *after = emu_state_dump(srv, NULL);
        assert_true(json_equal(before, after));
        json_decref(before);
        json_decref(after);
        tn = emu_tenant_get(srv, "t2", false);
        assert_null(user(srv, tn, "m7", NULL, &e)); /* indices rebuilt */
        emu_state_reset(srv);
        emu_map_clear(&srv->tenants);
        free(srv);
}

int main(void) {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_map),
            cmocka_unit_test(test_seqvec),
            cmocka_unit_test(test_encodings),
            cmocka_unit_test(test_store_validation),
            cmocka_unit_test(test_store_members_snapshot),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
