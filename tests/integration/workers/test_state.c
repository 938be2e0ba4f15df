/* test_state.c: the state module against a real redis-server
 * (run through tests/harness/run-with --redis). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "canopy/guard.h"
#include "canopy/state.h"

static char prefix[64];

static canopy_state *connect_state(void) {
        const char *host = getenv("CANOPY_TEST_REDIS_HOST");
        const char *port = getenv("CANOPY_TEST_REDIS_PORT");
        assert_non_null(host);
        assert_non_null(port);
        canopy_state *st = NULL;
        assert_int_equal(canopy_state_new(host, atoi(port), NULL, prefix, 2000, &st), CANOPY_OK);
        return st;
}

static canopy_bytes bytes(const char *s) {
        canopy_bytes b = {(uint8_t *)s, strlen(s)};
        return b;
}

static void test_cs_roundtrip(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        canopy_cs_record rec = {0};
        uint8_t anchor_raw[16] = {0, 1, 2, 0xff, 0xfe, '{', '}', 0, 9, 8, 7, 6, 5, 4, 3, 2};
        rec.connector = "forestA";
        rec.anchor.data = anchor_raw;
        rec.anchor.len = sizeof(anchor_raw);
        rec.dn = "uid=alice,ou=People,dc=a";
        rec.object_class = "user";
        rec.mv_id = "0123456789abcdef0123456789abcdef";
        rec.in_scope = true;
        rec.scan_id = "scan-1";
        rec.source_ts_ms = 1234567;
        canopy_bytes mail = bytes("alice@a.example");
        canopy_bytes two[2] = {bytes("x"), {(uint8_t *)"\0bin", 4}};
        assert_int_equal(canopy_cs_record_set_attr(&rec, "Mail", false, &mail, 1), CANOPY_OK);
        assert_int_equal(canopy_cs_record_set_attr(&rec, "photo", true, two, 2), CANOPY_OK);
        assert_int_equal(canopy_state_cs_put(st, &rec), CANOPY_OK);

        canopy_cs_record *got = NULL;
        assert_int_equal(canopy_state_cs_get(st, "forestA", &rec.anchor, &got), CANOPY_OK);
        assert_string_equal(got->dn, rec.dn);
        assert_string_equal(got->object_class, "user");
        assert_string_equal(got->mv_id, rec.mv_id);
        assert_true(got->in_scope);
        assert_string_equal(got->scan_id, "scan-1");
        assert_int_equal(got->source_ts_ms, 1234567);
        assert_int_equal(got->nattrs, 2);
        const canopy_attr *a = canopy_cs_record_attr(got, "mail");
        assert_non_null(a);
        assert_false(a->binary);
        assert_int_equal(a->nvalues, 1);
        assert_memory_equal(a->values[0].data, "alice@a.example", 15);
        a = canopy_cs_record_attr(got, "PHOTO");
        assert_non_null(a);
        assert_true(a->binary);
        assert_int_equal(a->nvalues, 2);
        assert_int_equal(a->values[1].len, 4);
        assert_memory_equal(a->values[1].data, "\0bin", 4);

        /* A put replaces: the removed attribute disappears. */
        assert_int_equal(canopy_cs_record_set_attr(&rec, "photo", true, NULL, 0), CANOPY_OK);
        rec.mv_id = NULL;
        rec.in_scope = false;
        assert_int_equal(canopy_state_cs_put(st, &rec), CANOPY_OK);
        canopy_cs_record_free(got);
        assert_int_equal(canopy_state_cs_get(st, "forestA", &rec.anchor, &got), CANOPY_OK);
        assert_null(got->mv_id);
        assert_false(got->in_scope);
        assert_null(canopy_cs_record_attr(got, "photo"));
        canopy_cs_record_free(got);

        /* The connector index lists the anchor. */
        uint64_t cur = 0;
        int seen = 0;
        do {
                canopy_bytes *v = NULL;
                size_t n = 0;
                assert_int_equal(canopy_state_cs_scan(st, "forestA", &cur, &v, &n), CANOPY_OK);
                for (size_t i = 0; i < n; i++)
                        if (v[i].len == sizeof(anchor_raw) && !memcmp(v[i].data, anchor_raw, v[i].len))
                                seen++;
                canopy_state_anchors_free(v, n);
        } while (cur);
        assert_int_equal(seen, 1);

        assert_int_equal(canopy_state_cs_delete(st, "forestA", &rec.anchor), CANOPY_OK);
        got = NULL;
        assert_int_equal(canopy_state_cs_get(st, "forestA", &rec.anchor, &got), CANOPY_ERR_NOT_FOUND);
        assert_null(got);
        cur = 0;
        canopy_bytes *v = NULL;
        size_t n = 9;
        assert_int_equal(canopy_state_cs_scan(st, "forestA", &cur, &v, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        canopy_state_anchors_free(v, n);
        for (size_t i = 0; i < rec.nattrs; i++) {
                free(rec.attrs[i].name);
                for (size_t j = 0; j < rec.attrs[i].nvalues; j++)
                        free(rec.attrs[i].values[j].data);
                free(rec.attrs[i].values);
        }
        free(rec.attrs);
        canopy_state_free(st);
}

static int has(char **v, const char *s) {
        for (; v && *v; v++)
                if (!strcmp(*v, s))
                        return 1;
        return 0;
}

static void test_members(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        canopy_bytes g = bytes("group-1");
        enum { N = 6000 };
        char **refs = calloc(N, sizeof(*refs));
        for (int i = 0; i < N; i++)
                assert_true(asprintf(&refs[i], "a:member%05d", i) > 0);
        assert_int_equal(canopy_state_cs_members_apply(st, "c", &g, true, (const char *const *)refs, N, NULL, 0),
                         CANOPY_OK);
        char **got = NULL;
        size_t n = 0;
        assert_int_equal(canopy_state_cs_members(st, "c", &g, &got, &n), CANOPY_OK);
        assert_int_equal(n, N);
        canopy_state_strv_free(got);
        /* delta: one add, one remove */
        const char *add[1] = {"d:uid=new,dc=a"};
        const char *rm[1] = {"a:member00007"};
        assert_int_equal(canopy_state_cs_members_apply(st, "c", &g, false, add, 1, rm, 1), CANOPY_OK);
        assert_int_equal(canopy_state_cs_members(st, "c", &g, &got, &n), CANOPY_OK);
        assert_int_equal(n, N);
        assert_true(has(got, "d:uid=new,dc=a"));
        assert_false(has(got, "a:member00007"));
        canopy_state_strv_free(got);
        /* replace with a small set */
        assert_int_equal(canopy_state_cs_members_apply(st, "c", &g, true, add, 1, NULL, 0), CANOPY_OK);
        assert_int_equal(canopy_state_cs_members(st, "c", &g, &got, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        canopy_state_strv_free(got);
        for (int i = 0; i < N; i++)
                free(refs[i]);
        free(refs);
        canopy_state_free(st);
}

static void test_dn_index(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        canopy_bytes a1 = bytes("anchor-1"), a2 = bytes("anchor-2"), got = {0};
        char *norm = NULL;
        assert_int_equal(canopy_state_dn_norm("UID=Bob , OU=People,DC=Example", &norm), CANOPY_OK);
        assert_string_equal(norm, "uid=bob,ou=people,dc=example");
        free(norm);
        assert_int_equal(canopy_state_dn_set(st, "c", "uid=bob,ou=People,dc=example", &a1), CANOPY_OK);
        assert_int_equal(canopy_state_dn_get(st, "c", "UID=bob, ou=people, dc=example", &got), CANOPY_OK);
        assert_int_equal(got.len, a1.len);
        assert_memory_equal(got.data, a1.data, a1.len);
        free(got.data);
        /* A rename gave the DN to anchor-2: deleting for anchor-1 keeps it. */
        assert_int_equal(canopy_state_dn_set(st, "c", "uid=bob,ou=people,dc=example", &a2), CANOPY_OK);
        assert_int_equal(canopy_state_dn_del(st, "c", "uid=bob,ou=people,dc=example", &a1), CANOPY_OK);
        assert_int_equal(canopy_state_dn_get(st, "c", "uid=bob,ou=people,dc=example", &got), CANOPY_OK);
        assert_memory_equal(got.data, a2.data, a2.len);
        free(got.data);
        /* Held: no former holder. */
        assert_int_equal(canopy_state_dn_former(st, "c", "uid=bob,ou=people,dc=example", &got), CANOPY_ERR_NOT_FOUND);
        assert_int_equal(canopy_state_dn_del(st, "c", "uid=bob,ou=people,dc=example", &a2), CANOPY_OK);
        assert_int_equal(canopy_state_dn_get(st, "c", "uid=bob,ou=people,dc=example", &got), CANOPY_ERR_NOT_FOUND);
        /* Buried: the tombstone still names who held it (a removal that
         * names the old DN finds the member), never seen: nothing. */
        assert_int_equal(canopy_state_dn_former(st, "c", "UID=Bob,ou=people,dc=example", &got), CANOPY_OK);
        assert_int_equal(got.len, a2.len);
        assert_memory_equal(got.data, a2.data, a2.len);
        free(got.data);
        got.data = NULL;
        assert_int_equal(canopy_state_dn_former(st, "c", "uid=nobody,ou=people,dc=example", &got), CANOPY_ERR_NOT_FOUND);

        /* A member reference to the buried DN is dangling; one to a DN never
         * seen is not (its member may still come). */
        char mid[33], *wait = NULL;
        bool dangling = false;
        assert_int_equal(canopy_state_member_resolve(st, "c", "d:uid=bob,ou=people,dc=example", mid, &wait, &dangling),
                         CANOPY_ERR_NOT_FOUND);
        assert_true(dangling);
        assert_non_null(wait);
        assert_string_equal(wait, "d:c\x1fuid=bob,ou=people,dc=example");
        free(wait);
        assert_int_equal(canopy_state_member_resolve(st, "c", "d:uid=nobody,ou=people,dc=example", mid, &wait, &dangling),
                         CANOPY_ERR_NOT_FOUND);
        assert_false(dangling);
        free(wait);
        /* The DN taken again: the tombstone is gone. */
        assert_int_equal(canopy_state_dn_set(st, "c", "uid=bob,ou=people,dc=example", &a1), CANOPY_OK);
        assert_int_equal(canopy_state_dn_get(st, "c", "uid=bob,ou=people,dc=example", &got), CANOPY_OK);
        assert_memory_equal(got.data, a1.data, a1.len);
        free(got.data);
        assert_int_equal(canopy_state_dn_former(st, "c", "uid=bob,ou=people,dc=example", &got), CANOPY_ERR_NOT_FOUND);
        canopy_state_free(st);
}

/* END_OF_SCAN pieces: due once every piece is in, once (redeliveries of a
 * piece count once; after the sweep is done nothing is due again). */
static void test_scan_pieces(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        bool due = true;
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-1-ab", 0, 3, &due), CANOPY_OK);
        assert_false(due);
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-1-ab", 2, 3, &due), CANOPY_OK);
        assert_false(due);
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-1-ab", 2, 3, &due), CANOPY_OK);
        assert_false(due);
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-1-ab", 1, 3, &due), CANOPY_OK);
        assert_true(due);
        /* a retried sweep (the worker failed before it finished) is still due */
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-1-ab", 1, 3, &due), CANOPY_OK);
        assert_true(due);
        assert_int_equal(canopy_state_scan_done(st, "c", "c-1-ab"), CANOPY_OK);
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-1-ab", 0, 3, &due), CANOPY_OK);
        assert_false(due);
        /* another scan of the same connector is counted apart */
        assert_int_equal(canopy_state_scan_piece(st, "c", "c-2-cd", 0, 2, &due), CANOPY_OK);
        assert_false(due);
        canopy_state_free(st);
}

/* Batched member resolution: every kind of reference, across a chunk
 * boundary (1,200 references: three pipelined chunks). */
static void test_members_resolve(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        enum { N = 1200 };
        char **refs = calloc(N + 6, sizeof(*refs));
        assert_non_null(refs);
        size_t n = 0;
        char anch[N][16], mvid[N][33], b64[64];
        for (int i = 0; i < N; i++) {
                /* every third exported, every third joined only, the rest out of scope */
                snprintf(anch[i], sizeof(anch[i]), "m-%05d", i);
                snprintf(mvid[i], sizeof(mvid[i]), "%032x", 0x5000 + i);
                canopy_cs_record rec = {0};
                rec.connector = "rc";
                rec.anchor = bytes(anch[i]);
                rec.object_class = "user";
                rec.mv_id = i % 3 == 2 ? NULL : mvid[i];
                rec.in_scope = i % 3 != 2;
                assert_int_equal(canopy_state_cs_put(st, &rec), CANOPY_OK);
                if (i % 3 == 0) {
                        char eid[40];
                        snprintf(eid, sizeof(eid), "entra-%d", i);
                        assert_int_equal(canopy_state_exp_record(st, mvid[i], eid, "x", "{}"), CANOPY_OK);
                }
                canopy_bytes a = bytes(anch[i]);
                canopy_state_anchor_b64(&a, b64, sizeof(b64));
                assert_true(asprintf(&refs[n++], "a:%s", b64) > 0);
        }
        /* a DN known, a DN buried, a DN never seen, an undecodable reference */
        canopy_bytes a0 = bytes(anch[0]);
        assert_int_equal(canopy_state_dn_set(st, "rc", "uid=zero,dc=r", &a0), CANOPY_OK);
        assert_int_equal(canopy_state_dn_set(st, "rc", "uid=gone,dc=r", &a0), CANOPY_OK);
        assert_int_equal(canopy_state_dn_del(st, "rc", "uid=gone,dc=r", &a0), CANOPY_OK);
        refs[n++] = strdup("d:uid=zero,dc=r");
        refs[n++] = strdup("d:uid=gone,dc=r");
        refs[n++] = strdup("d:uid=never,dc=r");
        refs[n++] = strdup("a:not base64!");
        canopy_member_res *res = calloc(n, sizeof(*res));
        assert_int_equal(canopy_state_members_resolve(st, "rc", refs, n, res), CANOPY_OK);
        for (int i = 0; i < N; i++) {
                if (i % 3 == 0) {
                        char eid[40];
                        snprintf(eid, sizeof(eid), "entra-%d", i);
                        assert_int_equal(res[i].state, CANOPY_MEMBER_EXPORTED);
                        assert_string_equal(res[i].entra_id, eid);
                        assert_string_equal(res[i].mv_id, mvid[i]);
                } else if (i % 3 == 1) {
                        assert_int_equal(res[i].state, CANOPY_MEMBER_JOINED);
                        assert_string_equal(res[i].mv_id, mvid[i]);
                        assert_null(res[i].entra_id);
                } else {
                        assert_int_equal(res[i].state, CANOPY_MEMBER_UNKNOWN);
                        assert_non_null(res[i].wait_key);
                        assert_memory_equal(res[i].wait_key, "c:rc\x1f", 5);
                }
        }
        assert_int_equal(res[N].state, CANOPY_MEMBER_EXPORTED);
        assert_string_equal(res[N].entra_id, "entra-0");
        assert_int_equal(res[N + 1].state, CANOPY_MEMBER_UNKNOWN);
        assert_true(res[N + 1].dangling);
        assert_string_equal(res[N + 1].wait_key, "d:rc\x1fuid=gone,dc=r");
        assert_int_equal(res[N + 2].state, CANOPY_MEMBER_UNKNOWN);
        assert_false(res[N + 2].dangling);
        assert_string_equal(res[N + 2].wait_key, "d:rc\x1fuid=never,dc=r");
        assert_int_equal(res[N + 3].state, CANOPY_MEMBER_UNKNOWN);
        assert_null(res[N + 3].wait_key);
        canopy_member_res_clear(res, n);
        free(res);
        for (size_t i = 0; i < n; i++)
                free(refs[i]);
        free(refs);
        canopy_state_free(st);
}

static void test_metaverse(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        canopy_bytes a = bytes("A1"), b = bytes("B1");
        char id[33], id2[33];
        canopy_state_mv_id_for("forestA", &a, id);
        canopy_state_mv_id_for("forestA", &a, id2);
        assert_string_equal(id, id2);
        assert_int_equal(strlen(id), 32);
        canopy_state_mv_id_for("forestB", &a, id2);
        assert_string_not_equal(id, id2);

        assert_int_equal(canopy_state_mv_add_contrib(st, id, "user", "forestB", &b), CANOPY_OK);
        assert_int_equal(canopy_state_mv_add_contrib(st, id, "user", "forestA", &a), CANOPY_OK);
        assert_int_equal(canopy_state_mv_add_contrib(st, id, "user", "forestA", &a), CANOPY_OK);
        canopy_mv_record *mv = NULL;
        assert_int_equal(canopy_state_mv_get(st, id, &mv), CANOPY_OK);
        assert_string_equal(mv->object_type, "user");
        assert_int_equal(mv->ncontribs, 2);
        assert_string_equal(mv->contribs[0].connector, "forestA"); /* sorted */
        assert_string_equal(mv->contribs[1].connector, "forestB");
        canopy_mv_record_free(mv);

        char *jk = NULL;
        assert_int_equal(canopy_state_join_key("user", "mail", "Alice@Example.COM", &jk), CANOPY_OK);
        char holder[33];
        assert_int_equal(canopy_state_join_claim(st, jk, id, holder), CANOPY_OK);
        assert_string_equal(holder, id);
        assert_int_equal(canopy_state_join_claim(st, jk, id2, holder), CANOPY_OK);
        assert_string_equal(holder, id); /* the first claim holds */
        assert_int_equal(canopy_state_mv_note_join_key(st, id, jk), CANOPY_OK);

        size_t left = 9;
        assert_int_equal(canopy_state_mv_remove_contrib(st, id, "forestB", &b, &left), CANOPY_OK);
        assert_int_equal(left, 1);
        assert_int_equal(canopy_state_mv_remove_contrib(st, id, "forestA", &a, &left), CANOPY_OK);
        assert_int_equal(left, 0);
        assert_int_equal(canopy_state_mv_delete(st, id), CANOPY_OK);
        assert_int_equal(canopy_state_mv_get(st, id, &mv), CANOPY_ERR_NOT_FOUND);
        assert_int_equal(canopy_state_join_lookup(st, jk, holder), CANOPY_ERR_NOT_FOUND);
        free(jk);
        canopy_state_free(st);
}

/* Many processes race to claim the same join keys with different
 * candidates: every key ends with one holder, and every racer learns it. */
static void test_join_race(void **ctx) {
        (void)ctx;
        enum { PROCS = 4, KEYS = 200 };
        int fds[PROCS][2];
        pid_t pids[PROCS];
        for (int p = 0; p < PROCS; p++) {
                assert_int_equal(pipe(fds[p]), 0);
                pids[p] = fork();
                assert_true(pids[p] >= 0);
                if (pids[p] == 0) {
                        close(fds[p][0]);
                        canopy_state *st = connect_state();
                        for (int k = 0; k < KEYS; k++) {
                                char key[64], cand[33], holder[33];
                                snprintf(key, sizeof(key), "user\x1fmail\x1fracer%d@x", k);
                                snprintf(cand, sizeof(cand), "%032d", p);
                                if (canopy_state_join_claim(st, key, cand, holder))
                                        _exit(2);
                                if (write(fds[p][1], holder, 32) != 32)
                                        _exit(3);
                        }
                        canopy_state_free(st);
                        _exit(0);
                }
                close(fds[p][1]);
        }
        static char got[PROCS][KEYS][33];
        for (int p = 0; p < PROCS; p++) {
                for (int k = 0; k < KEYS; k++) {
                        size_t off = 0;
                        while (off < 32) {
                                ssize_t r = read(fds[p][0], got[p][k] + off, 32 - off);
                                assert_true(r > 0);
                                off += (size_t)r;
                        }
                        got[p][k][32] = 0;
                }
                close(fds[p][0]);
                int status = 0;
                assert_int_equal(waitpid(pids[p], &status, 0), pids[p]);
                assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        canopy_state *st = connect_state();
        for (int k = 0; k < KEYS; k++) {
                char key[64], holder[33];
                snprintf(key, sizeof(key), "user\x1fmail\x1fracer%d@x", k);
                assert_int_equal(canopy_state_join_lookup(st, key, holder), CANOPY_OK);
                for (int p = 0; p < PROCS; p++)
                        assert_string_equal(got[p][k], holder);
        }
        canopy_state_free(st);
}

static void test_export_state(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        const char *id = "ffffffffffffffffffffffffffffffff";
        canopy_export_state *es = NULL;
        assert_int_equal(canopy_state_exp_get(st, id, &es), CANOPY_ERR_NOT_FOUND);
        assert_int_equal(canopy_state_exp_intent(st, id, "QUJD"), CANOPY_OK);
        assert_int_equal(canopy_state_exp_get(st, id, &es), CANOPY_OK);
        assert_null(es->entra_id);
        assert_string_equal(es->intent, "QUJD");
        canopy_export_state_free(es);
        assert_int_equal(canopy_state_exp_record(st, id, "e-1", "QUJD", "{\"displayName\":\"A\"}"), CANOPY_OK);
        assert_int_equal(canopy_state_exp_get(st, id, &es), CANOPY_OK);
        assert_string_equal(es->entra_id, "e-1");
        assert_string_equal(es->immutable_id, "QUJD");
        assert_null(es->intent);
        assert_false(es->deleted);
        char h[65];
        canopy_state_hash_hex("{\"displayName\":\"A\"}", h);
        assert_string_equal(es->props_hash, h);
        assert_string_equal(es->props_json, "{\"displayName\":\"A\"}");
        assert_int_equal(es->created_ms, 0); /* not recorded as a create */
        canopy_export_state_free(es);

        /* A create records when; a later update keeps it. */
        assert_int_equal(canopy_state_exp_record_created(st, id, "e-1", "QUJD", "{}", 0), CANOPY_ERR_INVALID_ARG);
        assert_int_equal(canopy_state_exp_record_created(st, id, "e-1", "QUJD", "{}", 1700000000123LL), CANOPY_OK);
        assert_int_equal(canopy_state_exp_record(st, id, "e-1", "QUJD", "{\"displayName\":\"A\"}"), CANOPY_OK);
        assert_int_equal(canopy_state_exp_get(st, id, &es), CANOPY_OK);
        assert_int_equal(es->created_ms, 1700000000123LL);
        assert_string_equal(es->props_json, "{\"displayName\":\"A\"}");
        canopy_export_state_free(es);

        const char *m[3] = {"u1", "u2", "u3"};
        assert_int_equal(canopy_state_exp_members_apply(st, id, false, m, 3, NULL, 0), CANOPY_OK);
        assert_int_equal(canopy_state_exp_members_apply(st, id, false, m, 1, m + 1, 1), CANOPY_OK);
        char **got = NULL;
        size_t n = 0;
        assert_int_equal(canopy_state_exp_members(st, id, &got, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_true(has(got, "u1") && has(got, "u3"));
        canopy_state_strv_free(got);

        assert_int_equal(canopy_state_exp_deleted(st, id), CANOPY_OK);
        assert_int_equal(canopy_state_exp_get(st, id, &es), CANOPY_OK);
        assert_true(es->deleted);
        assert_null(es->entra_id);
        assert_int_equal(es->created_ms, 0); /* a delete forgets the create */
        canopy_export_state_free(es);
        assert_int_equal(canopy_state_exp_members(st, id, &got, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        canopy_state_strv_free(got);
        canopy_state_free(st);
}

/* A DN wait key: connector, US, an escaped DN. */
#define WAIT_KEY "d:north\x1f" "cn=a\\, b,dc=x"

static void test_pending_errors_staged(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        int64_t c = -1;
        assert_int_equal(canopy_state_pending_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 0);
        assert_int_equal(canopy_state_pending_add(st, "member-mv", "group-1"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_add(st, "member-mv", "group-2"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_add(st, "member-mv", "group-2"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 1);
        char **g = NULL;
        size_t n = 0;
        assert_int_equal(canopy_state_pending_take(st, "member-mv", &g, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_true(has(g, "group-1") && has(g, "group-2"));
        canopy_state_strv_free(g);
        assert_int_equal(canopy_state_pending_take(st, "member-mv", &g, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        canopy_state_strv_free(g);
        assert_int_equal(canopy_state_pending_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 0);

        /* A wait withdrawn (the member was there after all) leaves the
         * other waiters, and the count drops only with the last one. */
        assert_int_equal(canopy_state_pending_add(st, WAIT_KEY, "group-1"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_add(st, WAIT_KEY, "group-2"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_remove(st, WAIT_KEY, "group-1"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 1);
        assert_int_equal(canopy_state_pending_remove(st, WAIT_KEY, "group-1"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 1);
        assert_int_equal(canopy_state_pending_remove(st, WAIT_KEY, "group-2"), CANOPY_OK);
        assert_int_equal(canopy_state_pending_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 0);
        assert_int_equal(canopy_state_pending_take(st, WAIT_KEY, &g, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        canopy_state_strv_free(g);

        assert_int_equal(canopy_state_error_set(st, "mv-x", "{\"code\":\"GRAPH_CONFLICT\"}"), CANOPY_OK);
        assert_int_equal(canopy_state_error_count(st, &c), CANOPY_OK);
        assert_int_equal(c, 1);
        char *j = NULL;
        assert_int_equal(canopy_state_error_get(st, "mv-x", &j), CANOPY_OK);
        assert_string_equal(j, "{\"code\":\"GRAPH_CONFLICT\"}");
        free(j);
        assert_int_equal(canopy_state_error_clear(st, "mv-x"), CANOPY_OK);
        assert_int_equal(canopy_state_error_get(st, "mv-x", &j), CANOPY_ERR_NOT_FOUND);
        /* The scan gives every entry with its own description (canopyctl errors). */
        for (int i = 0; i < 300; i++) {
                char id[16], js[48];
                snprintf(id, sizeof(id), "e%d", i);
                snprintf(js, sizeof(js), "{\"code\":\"C%d\"}", i);
                assert_int_equal(canopy_state_error_set(st, id, js), CANOPY_OK);
        }
        bool seen[300] = {false};
        uint64_t ecur = 0;
        do {
                char **ids = NULL, **js = NULL;
                assert_int_equal(canopy_state_error_scan(st, &ecur, &ids, &js, &n), CANOPY_OK);
                for (size_t i = 0; i < n; i++) {
                        int k = atoi(ids[i] + 1);
                        char want[48];
                        snprintf(want, sizeof(want), "{\"code\":\"C%d\"}", k);
                        assert_true(ids[i][0] == 'e' && k >= 0 && k < 300);
                        assert_string_equal(js[i], want);
                        seen[k] = true;
                }
                assert_null(ids[n]);
                assert_null(js[n]);
                canopy_state_strv_free(ids);
                canopy_state_strv_free(js);
        } while (ecur);
        for (int i = 0; i < 300; i++)
                assert_true(seen[i]);

        for (int i = 0; i < 700; i++) {
                char id[16];
                snprintf(id, sizeof(id), "mv%d", i);
                assert_int_equal(canopy_state_staged_set(st, id, "{}"), CANOPY_OK);
        }
        uint64_t cur = 0;
        size_t total = 0;
        do {
                char **v = NULL;
                assert_int_equal(canopy_state_staged_scan(st, &cur, &v, &n), CANOPY_OK);
                total += n;
                canopy_state_strv_free(v);
        } while (cur);
        assert_true(total >= 700); /* HSCAN may repeat, never skips */
        assert_int_equal(canopy_state_staged_clear(st, "mv3"), CANOPY_OK);
        assert_int_equal(canopy_state_staged_get(st, "mv3", &j), CANOPY_ERR_NOT_FOUND);
        assert_int_equal(canopy_state_staged_get(st, "mv4", &j), CANOPY_OK);
        free(j);
        canopy_state_free(st);
}

static int redis_cli(const char *args) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "redis-cli -h %s -p %s %s >/dev/null", getenv("CANOPY_TEST_REDIS_HOST"),
                 getenv("CANOPY_TEST_REDIS_PORT"), args);
        return system(cmd);
}

/* Durable only with AOF on and appendfsync always (docs/STATE.md). */
/* Group waits: what a full computation left waiting, the keys woken since
 * (canopy_state_pending_take), and the marker that allows an incremental
 * RESOLVE only when the last computation held nothing back. */
static void test_group_waits(void **ctx) {
        (void)ctx;
        (void)ctx;
        canopy_state *st = connect_state();
        const char *g = "99999999999999999999999999999999";
        canopy_group_delta gd = {0};
        /* Nothing recorded: compute everything. */
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok);
        const char *wk[2] = {"d:a\x1fuid=x,dc=a", "mvjoined000000000000000000000001"};
        const char *wv[2] = {"a\x1fuid=x,dc=a", "a\x1fuid=y,dc=a"};
        bool applied = false;
        /* Recorded only after a reset (the marker says "busy"). */
        assert_int_equal(canopy_state_group_waits_set(st, g, false, "fp1", wk, wv, 2, &applied), CANOPY_OK);
        assert_false(applied);
        assert_int_equal(canopy_state_group_waits_reset(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok); /* busy: a full computation runs */
        assert_int_equal(canopy_state_group_waits_set(st, g, false, "fp1", wk, wv, 2, &applied), CANOPY_OK);
        assert_true(applied);
        assert_int_equal(canopy_state_pending_add(st, wk[0], g), CANOPY_OK);
        char **groups = NULL;
        size_t n = 0;
        assert_int_equal(canopy_state_pending_take(st, wk[0], &groups, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        canopy_state_strv_free(groups);
        const char *added[2] = {"a:QUJD", "d:uid=new,dc=a"}, *removed[1] = {"a:QUJD"};
        assert_int_equal(canopy_state_group_delta_note(st, g, "a", added, 2, NULL, 0), CANOPY_OK);
        assert_int_equal(canopy_state_group_delta_note(st, g, "a", NULL, 0, removed, 1), CANOPY_OK);
        /* Other records than the last full computation: compute all. */
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp2", &gd), CANOPY_OK);
        assert_false(gd.ok);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_true(gd.ok);
        assert_int_equal(gd.nwoken, 1);
        assert_string_equal(gd.woken[0], wk[0]);
        assert_int_equal(gd.nrefs, 2); /* the later note wins for a reference */
        for (size_t i = 0; i < gd.nrefs; i++) {
                if (!strcmp(gd.refs[i], "a\x1f" "a:QUJD"))
                        assert_false(gd.added[i]);
                else {
                        assert_string_equal(gd.refs[i], "a\x1f" "d:uid=new,dc=a");
                        assert_true(gd.added[i]);
                }
        }
        canopy_group_delta_clear(&gd);
        /* Busy until it ends: a second begin (after a crash) computes all. */
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok);
        char *vals[2] = {NULL, NULL};
        const char *ask[2] = {wk[0], "not-waited"};
        assert_int_equal(canopy_state_group_waits_get(st, g, ask, 2, vals), CANOPY_OK);
        assert_string_equal(vals[0], wv[0]);
        assert_null(vals[1]);
        free(vals[0]);
        const char *del[1] = {wk[0]};
        assert_int_equal(canopy_state_group_waits_end(st, g, del, 1, NULL, NULL, 0, &applied), CANOPY_OK);
        assert_true(applied);
        /* Taken once: the next begin finds nothing new. */
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_true(gd.ok);
        assert_int_equal(gd.nwoken, 0);
        assert_int_equal(gd.nrefs, 0);
        canopy_group_delta_clear(&gd);
        assert_int_equal(canopy_state_group_waits_end(st, g, NULL, 0, NULL, NULL, 0, &applied), CANOPY_OK);
        assert_true(applied);
        /* Held removals: never incremental. */
        assert_int_equal(canopy_state_group_waits_reset(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_set(st, g, true, "fp1", wk, wv, 2, &applied), CANOPY_OK);
        assert_true(applied);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok);
        /* Cleared: nothing left. */
        assert_int_equal(canopy_state_group_waits_reset(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_set(st, g, false, "fp1", wk, wv, 2, &applied), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_clear(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok);
        /* A clear by another stage while a full computation runs (seen in
         * chaos: removals released at the end of the first full import):
         * the computation's waits are not recorded over it, so the next
         * computation does everything, and no wait is lost behind a "1". */
        assert_int_equal(canopy_state_group_waits_reset(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_clear(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_set(st, g, false, "fp1", wk, wv, 2, &applied), CANOPY_OK);
        assert_false(applied);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok);
        /* The same while an incremental computation runs. */
        assert_int_equal(canopy_state_group_waits_reset(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_set(st, g, false, "fp1", wk, wv, 2, &applied), CANOPY_OK);
        assert_true(applied);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_true(gd.ok);
        canopy_group_delta_clear(&gd);
        assert_int_equal(canopy_state_group_waits_clear(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_end(st, g, del, 1, wk, wv, 2, &applied), CANOPY_OK);
        assert_false(applied);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_false(gd.ok);
        /* Many waits (chunked in the script): all recorded. */
        enum { NW = 5000 };
        char **bk = calloc(NW, sizeof(*bk)), **bv = calloc(NW, sizeof(*bv));
        for (int i = 0; i < NW; i++) {
                assert_true(asprintf(&bk[i], "k%05d", i) > 0);
                assert_true(asprintf(&bv[i], "a\x1fuid=u%05d", i) > 0);
        }
        assert_int_equal(canopy_state_group_waits_reset(st, g), CANOPY_OK);
        assert_int_equal(canopy_state_group_waits_set(st, g, false, "fp1", (const char *const *)bk,
                                                      (const char *const *)bv, NW, &applied),
                         CANOPY_OK);
        assert_true(applied);
        char *last[2] = {NULL, NULL};
        const char *q[2] = {"k00000", "k04999"};
        assert_int_equal(canopy_state_group_waits_get(st, g, q, 2, last), CANOPY_OK);
        assert_string_equal(last[0], "a\x1fuid=u00000");
        assert_string_equal(last[1], "a\x1fuid=u04999");
        free(last[0]);
        free(last[1]);
        assert_int_equal(canopy_state_group_waits_begin(st, g, "fp1", &gd), CANOPY_OK);
        assert_true(gd.ok);
        canopy_group_delta_clear(&gd);
        assert_int_equal(canopy_state_group_waits_end(st, g, (const char *const *)bk, NW - 1, NULL, NULL, 0, &applied),
                         CANOPY_OK);
        assert_true(applied);
        assert_int_equal(canopy_state_group_waits_get(st, g, q, 2, last), CANOPY_OK);
        assert_null(last[0]);
        assert_string_equal(last[1], "a\x1fuid=u04999");
        free(last[1]);
        for (int i = 0; i < NW; i++) {
                free(bk[i]);
                free(bv[i]);
        }
        free(bk);
        free(bv);
        assert_int_equal(canopy_state_group_waits_clear(st, g), CANOPY_OK);
        /* Set membership, in one round trip. */
        const char *eids[2] = {"e-1", "e-2"};
        assert_int_equal(canopy_state_exp_members_apply(st, g, false, eids, 1, NULL, 0), CANOPY_OK);
        bool has[2] = {false, true};
        assert_int_equal(canopy_state_exp_members_has(st, g, eids, 2, has), CANOPY_OK);
        assert_true(has[0]);
        assert_false(has[1]);
        canopy_state_free(st);
}

/* A member DN not seen yet becomes the member's anchor in every group that
 * noted it, and the groups' mv ids come back. */
static void test_dnref_rebind(void **ctx) {
        (void)ctx;
        (void)ctx;
        canopy_state *st = connect_state();
        canopy_cs_record g = {0};
        g.connector = "dnr";
        g.anchor = bytes("group-1");
        g.object_class = "group";
        g.mv_id = "11111111111111111111111111111111";
        g.in_scope = true;
        assert_int_equal(canopy_state_cs_put(st, &g), CANOPY_OK);
        const char *refs[2] = {"d:cn=late,dc=x", "a:b3RoZXI="};
        assert_int_equal(canopy_state_cs_members_apply(st, "dnr", &g.anchor, true, refs, 2, NULL, 0), CANOPY_OK);
        assert_int_equal(canopy_state_dnref_add(st, "dnr", refs[0], &g.anchor), CANOPY_OK);
        canopy_bytes member = bytes("member-1");
        char **mv = NULL;
        size_t n = 0;
        assert_int_equal(canopy_state_dnref_rebind(st, "dnr", refs[0], &member, &mv, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        assert_string_equal(mv[0], g.mv_id);
        canopy_state_strv_free(mv);
        char **got = NULL;
        assert_int_equal(canopy_state_cs_members(st, "dnr", &g.anchor, &got, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        bool by_anchor = false, by_dn = false;
        for (size_t i = 0; i < n; i++) {
                by_anchor = by_anchor || !strcmp(got[i], "a:bWVtYmVyLTE=");
                by_dn = by_dn || !strncmp(got[i], "d:", 2);
        }
        canopy_state_strv_free(got);
        assert_true(by_anchor);
        assert_false(by_dn);
        /* Taken: a second rebind finds nothing. */
        assert_int_equal(canopy_state_dnref_rebind(st, "dnr", refs[0], &member, &mv, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        canopy_state_strv_free(mv);
        canopy_state_free(st);
}

/* The first full import of a connector: groups holding removals back for a
 * DN not seen are noted until it completes, then read (and released). */
static void test_hold_for_scan(void **ctx) {
        (void)ctx;
        (void)ctx;
        canopy_state *st = connect_state();
        bool scanned = true;
        assert_int_equal(canopy_state_hold_for_scan(st, "holdc", "g1", &scanned), CANOPY_OK);
        assert_false(scanned);
        assert_int_equal(canopy_state_hold_for_scan(st, "holdc", "g2", &scanned), CANOPY_OK);
        assert_int_equal(canopy_state_hold_for_scan(st, "otherc", "g3", &scanned), CANOPY_OK);
        char **held = NULL;
        size_t n = 0;
        assert_int_equal(canopy_state_connector_scanned(st, "holdc", &held, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_int_equal(canopy_state_hold_release(st, "holdc", (const char *const *)held, 1), CANOPY_OK);
        canopy_state_strv_free(held);
        /* A retry reads what was not released. */
        assert_int_equal(canopy_state_connector_scanned(st, "holdc", &held, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        assert_int_equal(canopy_state_hold_release(st, "holdc", (const char *const *)held, 1), CANOPY_OK);
        canopy_state_strv_free(held);
        /* Complete: nothing held any more, nothing noted. */
        assert_int_equal(canopy_state_hold_for_scan(st, "holdc", "g4", &scanned), CANOPY_OK);
        assert_true(scanned);
        assert_int_equal(canopy_state_connector_scanned(st, "holdc", &held, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        canopy_state_strv_free(held);
        /* Another connector is not affected. */
        assert_int_equal(canopy_state_hold_for_scan(st, "otherc", "g3", &scanned), CANOPY_OK);
        assert_false(scanned);
        canopy_state_free(st);
}

static void test_persistence(void **ctx) {
        (void)ctx;
        (void)ctx;
        canopy_state *st = connect_state();
        bool durable = true;
        char what[64] = "";
        assert_int_equal(canopy_state_persistence(st, &durable, what, sizeof(what)), CANOPY_OK);
        assert_false(durable); /* the harness's default Redis: no persistence */
        assert_non_null(strstr(what, "appendonly no"));
        assert_int_equal(redis_cli("CONFIG SET appendfsync always"), 0);
        assert_int_equal(canopy_state_persistence(st, &durable, what, sizeof(what)), CANOPY_OK);
        assert_false(durable);
        assert_int_equal(redis_cli("CONFIG SET appendonly yes"), 0);
        assert_int_equal(canopy_state_persistence(st, &durable, what, sizeof(what)), CANOPY_OK);
        assert_true(durable);
        assert_string_equal(what, "appendonly yes, appendfsync always");
        assert_int_equal(redis_cli("CONFIG SET appendfsync everysec"), 0);
        assert_int_equal(canopy_state_persistence(st, &durable, what, sizeof(what)), CANOPY_OK);
        assert_false(durable);
        assert_int_equal(redis_cli("CONFIG SET appendonly no"), 0);
        canopy_state_free(st);
}

static void test_guard_counter(void **ctx) {
        (void)ctx;
        canopy_state *st = connect_state();
        canopy_guard_verdict v = CANOPY_GUARD_HOLD;
        int64_t n = -1;
        assert_int_equal(canopy_guard_delete_count(st, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        assert_int_equal(canopy_guard_reserve_delete(st, "mv-a", "{}", &v, &n), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_ALLOW);
        assert_int_equal(n, 1);
        assert_int_equal(canopy_guard_reserve_delete(st, "mv-a", "{}", &v, &n), CANOPY_OK); /* retry */
        assert_int_equal(n, 1);
        assert_int_equal(canopy_guard_reserve_delete(st, "mv-b", NULL, &v, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_int_equal(canopy_guard_delete_count(st, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        canopy_state_free(st);
}

int main(void) {
        snprintf(prefix, sizeof(prefix), "t%d:", (int)getpid());
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_cs_roundtrip),     cmocka_unit_test(test_members),
                cmocka_unit_test(test_dn_index),         cmocka_unit_test(test_metaverse),
                cmocka_unit_test(test_scan_pieces),      cmocka_unit_test(test_members_resolve),
                cmocka_unit_test(test_join_race),        cmocka_unit_test(test_export_state),
                cmocka_unit_test(test_pending_errors_staged), cmocka_unit_test(test_guard_counter),
                cmocka_unit_test(test_group_waits),      cmocka_unit_test(test_hold_for_scan),
                cmocka_unit_test(test_dnref_rebind),
                cmocka_unit_test(test_persistence),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
