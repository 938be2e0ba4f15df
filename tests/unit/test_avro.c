/* test_avro.c: the Avro codec (canopy/avro.h): round trips of the five
 * records, byte compatibility with Avro-C both ways, schema evolution both
 * directions, and hostile input (corrupt, truncated, unknown fingerprint,
 * oversize) that must fail with the right code and never crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avro_xcheck.h"
#include "canopy/avro.h"
#include "schemas.h"

/* ---- fixtures ---------------------------------------------------------- */

static void make_user(canopy_change_event *ev, int i) {
        char buf[128];
        memset(ev, 0, sizeof(*ev));
        ev->connector = strdup("corp.example.com");
        uint8_t guid[16];
        for (int k = 0; k < 16; k++)
                guid[k] = (uint8_t)(i * 7 + k * 13);
        assert_int_equal(canopy_bytes_set(&ev->anchor, guid, sizeof(guid)), 0);
        ev->object_class = strdup("user");
        ev->op = CANOPY_OP_MODIFY;
        snprintf(buf, sizeof(buf), "CN=User %d,OU=Staff,DC=corp,DC=example,DC=com", i);
        ev->dn = strdup(buf);
        ev->complete = true;
        static const char *const names[] = {"givenname", "sn", "displayname", "mail", "userprincipalname",
                                            "samaccountname", "department", "title", "company", "l",
                                            "st", "co", "telephonenumber", "mobile", "employeeid",
                                            "manager", "proxyaddresses", "useraccountcontrol", "description"};
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
                canopy_attr *a = canopy_change_event_add_attr(ev, names[k], false);
                assert_non_null(a);
                snprintf(buf, sizeof(buf), "%s-value-%d", names[k], i);
                assert_int_equal(canopy_attr_add_value(a, buf, strlen(buf)), 0);
                if (strcmp(names[k], "proxyaddresses") == 0) {
                        assert_int_equal(canopy_attr_add_value(a, "SMTP:a@example.com", 18), 0);
                        assert_int_equal(canopy_attr_add_value(a, "smtp:b@example.com", 18), 0);
                }
        }
        canopy_attr *g = canopy_change_event_add_attr(ev, "objectguid", true);
        assert_int_equal(canopy_attr_add_value(g, guid, sizeof(guid)), 0);
        canopy_attr *m = canopy_change_event_add_attr(ev, "memberof", false);
        assert_int_equal(canopy_attr_add_delta(m, true, "CN=G1,DC=corp", 13), 0);
        assert_int_equal(canopy_attr_add_delta(m, false, "CN=G2,DC=corp", 13), 0);
        assert_int_equal(canopy_attr_add_value(canopy_change_event_add_attr(ev, "empty", false), "", 0), 0);
        ev->position = strdup("123456");
        ev->source_ts_ms = 1700000000123LL + i;
        ev->producer_id = strdup("producer-1");
        ev->seq = 42 + i;
        ev->scan_id = NULL;
        ev->chunk = 0;
        ev->nchunks = 1;
}

static void assert_str_eq(const char *a, const char *b) {
        if (!a || !b)
                assert_ptr_equal(a, b);
        else
                assert_string_equal(a, b);
}

static void assert_bytes_eq(const canopy_bytes *a, const canopy_bytes *b) {
        assert_int_equal(a->len, b->len);
        if (a->len)
                assert_memory_equal(a->data, b->data, a->len);
}

static void assert_values_eq(const canopy_bytes *a, size_t na, const canopy_bytes *b, size_t nb) {
        assert_int_equal(na, nb);
        for (size_t i = 0; i < na; i++)
                assert_bytes_eq(&a[i], &b[i]);
}

static void assert_change_eq(const canopy_change_event *a, const canopy_change_event *b) {
        assert_str_eq(a->connector, b->connector);
        assert_bytes_eq(&a->anchor, &b->anchor);
        assert_str_eq(a->object_class, b->object_class);
        assert_int_equal(a->op, b->op);
        assert_str_eq(a->dn, b->dn);
        assert_str_eq(a->prev_dn, b->prev_dn);
        assert_int_equal(a->complete, b->complete);
        assert_int_equal(a->nattrs, b->nattrs);
        for (size_t i = 0; i < a->nattrs; i++) {
                assert_string_equal(a->attrs[i].name, b->attrs[i].name);
                assert_int_equal(a->attrs[i].binary, b->attrs[i].binary);
                assert_int_equal(a->attrs[i].delta, b->attrs[i].delta);
                assert_values_eq(a->attrs[i].values, a->attrs[i].nvalues, b->attrs[i].values, b->attrs[i].nvalues);
                assert_values_eq(a->attrs[i].added, a->attrs[i].nadded, b->attrs[i].added, b->attrs[i].nadded);
                assert_values_eq(a->attrs[i].removed, a->attrs[i].nremoved, b->attrs[i].removed,
                                 b->attrs[i].nremoved);
        }
        assert_str_eq(a->position, b->position);
        assert_int_equal(a->source_ts_ms, b->source_ts_ms);
        assert_str_eq(a->producer_id, b->producer_id);
        assert_int_equal(a->seq, b->seq);
        assert_str_eq(a->scan_id, b->scan_id);
        assert_int_equal(a->chunk, b->chunk);
        assert_int_equal(a->nchunks, b->nchunks);
}

static char *read_file(const char *path) {
        FILE *f = fopen(path, "rb");
        if (!f)
                return NULL;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *p = malloc((size_t)n + 1);
        assert_non_null(p);
        assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
        p[n] = 0;
        fclose(f);
        return p;
}

/* ---- schemas and fingerprints ------------------------------------------ */

/* The embedded schemas cannot drift from schemas/: same text, every file
 * embedded, and Avro-C accepts each. */
static void test_embedded_schemas_match_files(void **state) {
        (void)state;
        size_t ncur = 0;
        for (size_t i = 0; i < canopy_schema_nsrcs; i++) {
                char path[512];
                snprintf(path, sizeof(path), "%s/schemas/%s", CANOPY_SOURCE_DIR, canopy_schema_srcs[i].file);
                char *text = read_file(path);
                if (!text)
                        fail_msg("%s is embedded but missing from schemas/", path);
                if (strcmp(text, canopy_schema_srcs[i].json) != 0)
                        fail_msg("%s differs from lib/src/schemas.c: run schemas/gen-schemas-c", path);
                free(text);
                if (canopy_schema_srcs[i].current) {
                        ncur++;
                        assert_ptr_equal(canopy_avro_schema_json(canopy_schema_srcs[i].rec), canopy_schema_srcs[i].json);
                }
        }
        assert_int_equal(ncur, CANOPY_REC_COUNT);
        DIR *d = opendir(CANOPY_SOURCE_DIR "/schemas");
        assert_non_null(d);
        struct dirent *de;
        while ((de = readdir(d))) {
                size_t l = strlen(de->d_name);
                if (l < 6 || strcmp(de->d_name + l - 5, ".avsc") != 0)
                        continue;
                int found = 0;
                for (size_t i = 0; i < canopy_schema_nsrcs; i++)
                        found |= strcmp(canopy_schema_srcs[i].file, de->d_name) == 0;
                if (!found)
                        fail_msg("schemas/%s is not embedded: run schemas/gen-schemas-c", de->d_name);
        }
        closedir(d);
        for (int r = 0; r < CANOPY_REC_COUNT; r++) {
                avro_schema_t s;
                assert_int_equal(avro_schema_from_json_length(canopy_avro_schema_json(r),
                                                              strlen(canopy_avro_schema_json(r)), &s),
                                 0);
                avro_schema_decref(s);
                assert_int_equal(canopy_avro_schema_version(r), 1);
                assert_true(canopy_avro_schema_fingerprint(r) != 0);
        }
}

/* Reference vectors of Avro's share/test/data/schema-tests.txt. */
static void test_fingerprint_vectors(void **state) {
        (void)state;
        static const struct {
                const char *schema, *canonical;
                uint64_t fp;
        } v[] = {
                {"\"null\"", "\"null\"", 7195948357588979594ULL},
                {"{\"type\":\"null\"}", "\"null\"", 7195948357588979594ULL},
                {"\"int\"", "\"int\"", 8247732601305521295ULL},
                {"{\"type\":\"fixed\",\"name\":\"foo\",\"size\":15}", "{\"name\":\"foo\",\"type\":\"fixed\",\"size\":15}",
                 1756455273707447556ULL},
                {"[\"int\",\"boolean\"]", "[\"int\",\"boolean\"]", 5392556393470105090ULL},
                {"{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"x.y\",\"doc\":\"d\",\"fields\":[{\"name\":\"a\","
                 "\"type\":{\"type\":\"array\",\"items\":\"long\"},\"default\":[]}]}",
                 "{\"name\":\"x.y.R\",\"type\":\"record\",\"fields\":[{\"name\":\"a\",\"type\":{\"type\":\"array\","
                 "\"items\":\"long\"}}]}",
                 0},
        };
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                char *c = NULL;
                uint64_t fp;
                assert_int_equal(canopy_avro_canonical_form(v[i].schema, &c, NULL, 0), 0);
                assert_string_equal(c, v[i].canonical);
                assert_int_equal(canopy_avro_fingerprint(v[i].schema, &fp, NULL, 0), 0);
                assert_int_equal(fp, canopy_avro_crc64(c, strlen(c)));
                if (v[i].fp)
                        assert_int_equal(fp, v[i].fp);
                free(c);
        }
        char err[CANOPY_AVRO_ERRLEN];
        char *c = NULL;
        assert_int_equal(canopy_avro_canonical_form("{\"type\":\"recordz\"}", &c, err, sizeof(err)),
                         CANOPY_ERR_DECODE);
        assert_null(c);
}

/* ---- round trips -------------------------------------------------------- */

static void test_change_round_trip(void **state) {
        (void)state;
        canopy_change_event ev, out;
        make_user(&ev, 1);
        canopy_bytes b = {0};
        char err[CANOPY_AVRO_ERRLEN] = "";
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), 0);
        assert_int_equal(b.data[0], 0xC3);
        assert_int_equal(b.data[1], 0x01);
        uint64_t fp = 0;
        for (int i = 0; i < 8; i++)
                fp |= (uint64_t)b.data[2 + i] << (8 * i);
        assert_int_equal(fp, canopy_avro_schema_fingerprint(CANOPY_REC_CHANGE));
        canopy_record rec;
        int ver;
        assert_int_equal(canopy_avro_peek(b.data, b.len, &rec, &ver), 0);
        assert_int_equal(rec, CANOPY_REC_CHANGE);
        assert_int_equal(ver, 1);
        assert_int_equal(canopy_avro_decode_change(b.data, b.len, &out, err, sizeof(err)), 0);
        assert_change_eq(&ev, &out);
        assert_non_null(canopy_change_event_attr(&out, "MemberOf"));
        canopy_change_event_free(&out);
        /* wrong record type */
        canopy_mv_event mv;
        assert_int_equal(canopy_avro_decode_mv(b.data, b.len, &mv, err, sizeof(err)), CANOPY_ERR_DECODE);
        assert_non_null(strstr(err, "ChangeEvent"));
        free(b.data);

        /* END_OF_SCAN: nulls everywhere allowed */
        canopy_change_event eos = {0};
        eos.connector = "ldap1";
        eos.op = CANOPY_OP_END_OF_SCAN;
        eos.scan_id = "scan-7";
        eos.nchunks = 1;
        assert_int_equal(canopy_avro_encode_change(&eos, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_change(b.data, b.len, &out, err, sizeof(err)), 0);
        assert_change_eq(&eos, &out);
        assert_null(out.dn);
        assert_int_equal(out.anchor.len, 0);
        canopy_change_event_free(&out);
        free(b.data);
        canopy_change_event_free(&ev);
}

static void test_other_round_trips(void **state) {
        (void)state;
        char err[CANOPY_AVRO_ERRLEN];
        canopy_bytes b;
        canopy_mv_contrib contribs[2] = {{"forestA", {(uint8_t *)"\x01\x02\x00\x03", 4}},
                                         {"forestB", {(uint8_t *)"abc", 3}}};
        canopy_mv_event mv = {"mv-1", "user", contribs, 2, CANOPY_MV_JOIN, "forestB", 17, 16}, mo;
        assert_int_equal(canopy_avro_encode_mv(&mv, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_mv(b.data, b.len, &mo, err, sizeof(err)), 0);
        assert_string_equal(mo.mv_id, "mv-1");
        assert_string_equal(mo.object_type, "user");
        assert_int_equal(mo.ncontribs, 2);
        assert_string_equal(mo.contribs[1].connector, "forestB");
        assert_bytes_eq(&mo.contribs[0].anchor, &contribs[0].anchor);
        assert_int_equal(mo.reason, CANOPY_MV_JOIN);
        assert_string_equal(mo.cause_connector, "forestB");
        assert_int_equal(mo.ts_ms, 17);
        assert_int_equal(mo.source_ts_ms, 16);
        canopy_mv_event_free(&mo);
        free(b.data);

        char *changed[] = {"displayName", "mail"};
        canopy_export_record er = {"mv-1", NULL, "user", CANOPY_EXP_UPDATE, changed, 2, CANOPY_RES_ERROR,
                                   "req-9", "429 throttled", false, 100, 90}, eo;
        assert_int_equal(canopy_avro_encode_export(&er, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_export(b.data, b.len, &eo, err, sizeof(err)), 0);
        assert_string_equal(eo.mv_id, "mv-1");
        assert_null(eo.entra_id);
        assert_int_equal(eo.op, CANOPY_EXP_UPDATE);
        assert_int_equal(eo.nchanged, 2);
        assert_string_equal(eo.changed[1], "mail");
        assert_int_equal(eo.result, CANOPY_RES_ERROR);
        assert_string_equal(eo.request_id, "req-9");
        assert_string_equal(eo.error, "429 throttled");
        assert_int_equal(eo.ts_ms, 100);
        assert_int_equal(eo.source_ts_ms, 90);
        canopy_export_record_free(&eo);
        free(b.data);

        /* A RunRecord shares the exports topic with ExportRecords: the
         * header tells them apart, and one is not decoded as the other. */
        canopy_run_record rr = {"forêt-Ä", "user", CANOPY_RUN_FULL, "forêt-Ä-1700000000000-1f", 1000, 2000,
                                12, 7, 1, 3, 1, CANOPY_RUN_COMPLETED_ERRORS, 2001}, ro;
        assert_int_equal(canopy_avro_encode_run(&rr, &b, err, sizeof(err)), 0);
        canopy_record peeked = CANOPY_REC_CHANGE;
        assert_int_equal(canopy_avro_peek(b.data, b.len, &peeked, NULL), 0);
        assert_int_equal(peeked, CANOPY_REC_RUN);
        assert_int_equal(canopy_avro_decode_export(b.data, b.len, &eo, err, sizeof(err)), CANOPY_ERR_DECODE);
        assert_int_equal(canopy_avro_decode_run(b.data, b.len, &ro, err, sizeof(err)), 0);
        assert_string_equal(ro.connector, "forêt-Ä");
        assert_string_equal(ro.object_type, "user");
        assert_int_equal(ro.run_type, CANOPY_RUN_FULL);
        assert_string_equal(ro.scan_id, "forêt-Ä-1700000000000-1f");
        assert_int_equal(ro.start_ms, 1000);
        assert_int_equal(ro.end_ms, 2000);
        assert_int_equal(ro.total + ro.changed + ro.deleted + ro.filtered + ro.errors, 24);
        assert_int_equal(ro.filtered, 3);
        assert_int_equal(ro.status, CANOPY_RUN_COMPLETED_ERRORS);
        assert_int_equal(ro.ts_ms, 2001);
        canopy_run_record_free(&ro);
        free(b.data);
        rr.status = (canopy_run_status)7;
        assert_int_equal(canopy_avro_encode_run(&rr, &b, err, sizeof(err)), CANOPY_ERR_ENCODE);
        rr.status = CANOPY_RUN_SUCCESS;
        rr.connector = NULL;
        assert_int_equal(canopy_avro_encode_run(&rr, &b, err, sizeof(err)), CANOPY_ERR_ENCODE);

        canopy_control_event ce = {CANOPY_CTL_APPROVE, "tenant-1", "ok'd by ops", "alice", NULL, 5}, co;
        assert_int_equal(canopy_avro_encode_control(&ce, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_control(b.data, b.len, &co, err, sizeof(err)), 0);
        assert_int_equal(co.kind, CANOPY_CTL_APPROVE);
        assert_string_equal(co.target, "tenant-1");
        assert_string_equal(co.reason, "ok'd by ops");
        assert_string_equal(co.actor, "alice");
        assert_null(co.version);
        assert_int_equal(co.ts_ms, 5);
        canopy_control_event_free(&co);
        free(b.data);

        canopy_dead_letter dl = {"canopy.changes", 3, 123456789012LL, {(uint8_t *)"k\0x", 3},
                                 {(uint8_t *)"\xc3\x01garbage", 9}, "corrupt: boolean byte 7", "permanent",
                                 "DECODE", 77}, dlo;
        assert_int_equal(canopy_avro_encode_dead_letter(&dl, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_dead_letter(b.data, b.len, &dlo, err, sizeof(err)), 0);
        assert_string_equal(dlo.topic, "canopy.changes");
        assert_int_equal(dlo.partition, 3);
        assert_int_equal(dlo.offset, 123456789012LL);
        assert_bytes_eq(&dlo.key, &dl.key);
        assert_bytes_eq(&dlo.payload, &dl.payload);
        assert_string_equal(dlo.reason, dl.reason);
        assert_string_equal(dlo.error_class, "permanent");
        assert_string_equal(dlo.error_code, "DECODE");
        assert_int_equal(dlo.ts_ms, 77);
        canopy_dead_letter_free(&dlo);
        free(b.data);

        /* required fields */
        canopy_mv_event bad = {0};
        assert_int_equal(canopy_avro_encode_mv(&bad, &b, err, sizeof(err)), CANOPY_ERR_ENCODE);
        canopy_change_event badc = {0};
        assert_int_equal(canopy_avro_encode_change(&badc, &b, err, sizeof(err)), CANOPY_ERR_ENCODE);
}

/* ---- Avro-C compatibility ---------------------------------------------- */

static void test_avro_c_cross_check(void **state) {
        (void)state;
        const char *json = canopy_avro_schema_json(CANOPY_REC_CHANGE);
        avro_schema_t s;
        assert_int_equal(avro_schema_from_json_length(json, strlen(json), &s), 0);
        avro_value_iface_t *iface = avro_generic_class_from_schema(s);
        avro_value_t v;
        assert_int_equal(avro_generic_value_new(iface, &v), 0);
        canopy_change_event ev, out;
        make_user(&ev, 3);
        canopy_bytes b, body;
        char err[CANOPY_AVRO_ERRLEN];

        /* Canopy -> Avro-C */
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_xc_read(&v, b.data + CANOPY_AVRO_HEADER_LEN, b.len - CANOPY_AVRO_HEADER_LEN), 0);
        assert_int_equal(canopy_xc_value_to_change(&v, &out), 0);
        assert_change_eq(&ev, &out);
        canopy_change_event_free(&out);

        /* Avro-C -> Canopy, and byte-identical bodies */
        avro_value_reset(&v);
        assert_int_equal(canopy_xc_change_to_value(&ev, &v), 0);
        assert_int_equal(canopy_xc_write(&v, &body), 0);
        assert_int_equal(body.len, b.len - CANOPY_AVRO_HEADER_LEN);
        assert_memory_equal(body.data, b.data + CANOPY_AVRO_HEADER_LEN, body.len);
        canopy_bytes framed;
        assert_int_equal(canopy_avro_frame(json, body.data, body.len, &framed, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)), 0);
        assert_change_eq(&ev, &out);
        canopy_change_event_free(&out);
        free(framed.data);
        free(body.data);
        free(b.data);
        canopy_change_event_free(&ev);
        avro_value_decref(&v);
        avro_value_iface_decref(iface);
        avro_schema_decref(s);
}

/* ---- evolution ---------------------------------------------------------- */

/* A v2 of ChangeEvent: a new field with a default in the middle, and the
 * enum gains a symbol. */
static char *make_v2(void) {
        const char *v1 = canopy_avro_schema_json(CANOPY_REC_CHANGE);
        const char *at = strstr(v1, "{\"name\": \"complete\"");
        assert_non_null(at);
        const char *ins = "{\"name\": \"tenant\", \"type\": \"string\", \"default\": \"default-tenant\"},\n"
                          "    {\"name\": \"weight\", \"type\": \"long\", \"default\": 7},\n    ";
        size_t n = strlen(v1) + strlen(ins) + 64;
        char *v2 = malloc(n);
        snprintf(v2, n, "%.*s%s%s", (int)(at - v1), v1, ins, at);
        char *sym = strstr(v2, "\"END_OF_SCAN\"]");
        assert_non_null(sym);
        char *v2b = malloc(n + 16);
        snprintf(v2b, n + 16, "%.*s\"END_OF_SCAN\", \"MOVE\"]%s", (int)(sym - v2), v2, sym + strlen("\"END_OF_SCAN\"]"));
        free(v2);
        return v2b;
}

/* Old writer (v1, the current encoder) -> new reader (v2): the added
 * fields take their defaults; Avro-C reads the resolved bytes with v2. */
static void test_evolution_old_writer_new_reader(void **state) {
        (void)state;
        char *v2 = make_v2();
        char err[CANOPY_AVRO_ERRLEN];
        canopy_change_event ev, out;
        make_user(&ev, 5);
        canopy_bytes b, r;
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_resolve(b.data, b.len, v2, &r, err, sizeof(err)), 0);
        uint64_t fp2;
        assert_int_equal(canopy_avro_fingerprint(v2, &fp2, err, sizeof(err)), 0);
        assert_true(fp2 != canopy_avro_schema_fingerprint(CANOPY_REC_CHANGE));
        assert_int_equal(r.data[2], (uint8_t)fp2);

        avro_schema_t s;
        assert_int_equal(avro_schema_from_json_length(v2, strlen(v2), &s), 0);
        avro_value_iface_t *iface = avro_generic_class_from_schema(s);
        avro_value_t v, f;
        assert_int_equal(avro_generic_value_new(iface, &v), 0);
        assert_int_equal(canopy_xc_read(&v, r.data + CANOPY_AVRO_HEADER_LEN, r.len - CANOPY_AVRO_HEADER_LEN), 0);
        const char *str;
        size_t sz;
        int64_t l;
        assert_int_equal(avro_value_get_by_name(&v, "tenant", &f, NULL), 0);
        assert_int_equal(avro_value_get_string(&f, &str, &sz), 0);
        assert_string_equal(str, "default-tenant");
        assert_int_equal(avro_value_get_by_name(&v, "weight", &f, NULL), 0);
        assert_int_equal(avro_value_get_long(&f, &l), 0);
        assert_int_equal(l, 7);
        assert_int_equal(canopy_xc_value_to_change(&v, &out), 0);
        assert_change_eq(&ev, &out);
        canopy_change_event_free(&out);

        /* A reader field without default that the writer lacks is an error. */
        char *nodef = strdup(v2);
        char *p = strstr(nodef, ", \"default\": 7");
        memmove(p, p + strlen(", \"default\": 7"), strlen(p + strlen(", \"default\": 7")) + 1);
        canopy_bytes r2 = {0};
        assert_int_equal(canopy_avro_resolve(b.data, b.len, nodef, &r2, err, sizeof(err)), CANOPY_ERR_DECODE);
        assert_non_null(strstr(err, "weight"));
        free(nodef);

        avro_value_decref(&v);
        avro_value_iface_decref(iface);
        avro_schema_decref(s);
        free(r.data);
        free(b.data);
        canopy_change_event_free(&ev);
        free(v2);
}

/* New writer (v2, written by Avro-C) -> old reader (this library): unknown
 * until registered, then decoded with the new fields ignored. A symbol the
 * old reader does not know is a DECODE error, not a wrong value. */
static void test_evolution_new_writer_old_reader(void **state) {
        (void)state;
        char *v2 = make_v2();
        char err[CANOPY_AVRO_ERRLEN];
        avro_schema_t s;
        assert_int_equal(avro_schema_from_json_length(v2, strlen(v2), &s), 0);
        avro_value_iface_t *iface = avro_generic_class_from_schema(s);
        avro_value_t v, f;
        assert_int_equal(avro_generic_value_new(iface, &v), 0);
        canopy_change_event ev, out;
        make_user(&ev, 9);
        assert_int_equal(canopy_xc_change_to_value(&ev, &v), 0);
        assert_int_equal(avro_value_get_by_name(&v, "tenant", &f, NULL), 0);
        assert_int_equal(avro_value_set_string(&f, "contoso"), 0);
        assert_int_equal(avro_value_get_by_name(&v, "weight", &f, NULL), 0);
        assert_int_equal(avro_value_set_long(&f, 99), 0);
        canopy_bytes body, framed;
        assert_int_equal(canopy_xc_write(&v, &body), 0);
        assert_int_equal(canopy_avro_frame(v2, body.data, body.len, &framed, err, sizeof(err)), 0);

        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)),
                         CANOPY_ERR_UNKNOWN_SCHEMA);
        assert_non_null(strstr(err, "fingerprint"));
        assert_int_equal(canopy_avro_register_schema(v2, 2, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_register_schema(v2, 2, err, sizeof(err)), 0); /* idempotent */
        canopy_record rec;
        int ver;
        assert_int_equal(canopy_avro_peek(framed.data, framed.len, &rec, &ver), 0);
        assert_int_equal(rec, CANOPY_REC_CHANGE);
        assert_int_equal(ver, 2);
        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)), 0);
        assert_change_eq(&ev, &out);
        canopy_change_event_free(&out);
        free(framed.data);
        free(body.data);

        /* op = MOVE (index 5), unknown to v1 */
        avro_value_get_by_name(&v, "op", &f, NULL);
        assert_int_equal(avro_value_set_enum(&f, 5), 0);
        assert_int_equal(canopy_xc_write(&v, &body), 0);
        assert_int_equal(canopy_avro_frame(v2, body.data, body.len, &framed, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)),
                         CANOPY_ERR_DECODE);
        assert_non_null(strstr(err, "MOVE"));
        free(framed.data);
        free(body.data);

        /* a schema that is not one of ours is refused */
        assert_int_equal(canopy_avro_register_schema("{\"type\":\"record\",\"name\":\"Other\",\"fields\":[]}", 1,
                                                     err, sizeof(err)),
                         CANOPY_ERR_DECODE);
        avro_value_decref(&v);
        avro_value_iface_decref(iface);
        avro_schema_decref(s);
        canopy_change_event_free(&ev);
        free(v2);
}

/* ---- hostile input ------------------------------------------------------ */

static void test_truncated_and_corrupt(void **state) {
        (void)state;
        char err[CANOPY_AVRO_ERRLEN];
        canopy_change_event ev, out;
        make_user(&ev, 2);
        canopy_bytes b;
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), 0);
        /* every prefix is TRUNCATED (or, for a cut inside a union/boolean
         * whose next byte is gone, still TRUNCATED): never success */
        for (size_t n = 0; n < b.len; n++) {
                canopy_err e = canopy_avro_decode_change(b.data, n, &out, err, sizeof(err));
                if (e != CANOPY_ERR_TRUNCATED)
                        fail_msg("prefix of %zu/%zu bytes: %s (%s)", n, b.len, canopy_err_name(e), err);
                assert_null(out.connector);
        }
        /* trailing garbage */
        uint8_t *big = malloc(b.len + 3);
        memcpy(big, b.data, b.len);
        memset(big + b.len, 0, 3);
        assert_int_equal(canopy_avro_decode_change(big, b.len + 3, &out, err, sizeof(err)), CANOPY_ERR_DECODE);
        assert_non_null(strstr(err, "trailing"));
        free(big);
        /* bad marker */
        uint8_t *c = malloc(b.len);
        memcpy(c, b.data, b.len);
        c[1] = 0x02;
        assert_int_equal(canopy_avro_decode_change(c, b.len, &out, err, sizeof(err)), CANOPY_ERR_DECODE);
        /* unknown fingerprint */
        memcpy(c, b.data, b.len);
        c[5] ^= 0x55;
        assert_int_equal(canopy_avro_decode_change(c, b.len, &out, err, sizeof(err)), CANOPY_ERR_UNKNOWN_SCHEMA);
        /* every single-byte corruption of the body: any outcome but a crash;
         * failures carry a code of the codec */
        unsigned ok = 0, bad = 0;
        for (size_t i = CANOPY_AVRO_HEADER_LEN; i < b.len; i++) {
                static const uint8_t pats[] = {0x00, 0xff, 0x80, 0x7f, 0x01};
                for (size_t k = 0; k < sizeof(pats); k++) {
                        memcpy(c, b.data, b.len);
                        c[i] = pats[k];
                        canopy_err e = canopy_avro_decode_change(c, b.len, &out, err, sizeof(err));
                        if (e == CANOPY_OK) {
                                ok++;
                                canopy_change_event_free(&out);
                        } else {
                                bad++;
                                assert_true(e == CANOPY_ERR_DECODE || e == CANOPY_ERR_TRUNCATED ||
                                            e == CANOPY_ERR_TOO_MANY_VALUES || e == CANOPY_ERR_LIMIT);
                        }
                }
        }
        assert_true(bad > 0);
        /* a huge claimed length: TRUNCATED without allocating it */
        uint8_t huge[CANOPY_AVRO_HEADER_LEN + 11];
        memcpy(huge, b.data, CANOPY_AVRO_HEADER_LEN);
        memcpy(huge + CANOPY_AVRO_HEADER_LEN, "\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10);
        assert_int_equal(canopy_avro_decode_change(huge, CANOPY_AVRO_HEADER_LEN + 10, &out, err, sizeof(err)),
                         CANOPY_ERR_TRUNCATED);
        /* negative length */
        memcpy(huge + CANOPY_AVRO_HEADER_LEN, "\x03", 1);
        assert_int_equal(canopy_avro_decode_change(huge, CANOPY_AVRO_HEADER_LEN + 1, &out, err, sizeof(err)),
                         CANOPY_ERR_DECODE);
        /* over-long varint */
        memset(huge + CANOPY_AVRO_HEADER_LEN, 0xff, 11);
        assert_int_equal(canopy_avro_decode_change(huge, CANOPY_AVRO_HEADER_LEN + 11, &out, err, sizeof(err)),
                         CANOPY_ERR_DECODE);
        /* empty and NULL input */
        assert_int_equal(canopy_avro_decode_change("", 0, &out, err, sizeof(err)), CANOPY_ERR_TRUNCATED);
        free(c);
        free(b.data);
        canopy_change_event_free(&ev);
}

static void test_caps(void **state) {
        (void)state;
        char err[CANOPY_AVRO_ERRLEN];
        canopy_change_event ev = {0}, out;
        canopy_bytes b;
        ev.connector = strdup("c");
        ev.nchunks = 1;
        canopy_attr *m = canopy_change_event_add_attr(&ev, "member", false);
        char v[64];
        for (unsigned i = 0; i < CANOPY_ATTR_MAX_VALUES; i++) {
                int n = snprintf(v, sizeof(v), "CN=u%u,DC=x", i);
                assert_int_equal(canopy_attr_add_value(m, v, (size_t)n), 0);
        }
        /* at the cap: fine */
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_change(b.data, b.len, &out, err, sizeof(err)), 0);
        assert_int_equal(out.attrs[0].nvalues, CANOPY_ATTR_MAX_VALUES);
        canopy_change_event_free(&out);
        free(b.data);
        assert_int_equal(canopy_attr_add_value(m, "x", 1), CANOPY_ERR_TOO_MANY_VALUES);
        /* forced over the cap: the encoder names the attribute */
        m->values = realloc(m->values, (CANOPY_ATTR_MAX_VALUES + 1) * sizeof(*m->values));
        m->values[CANOPY_ATTR_MAX_VALUES].data = (uint8_t *)strdup("x");
        m->values[CANOPY_ATTR_MAX_VALUES].len = 1;
        m->nvalues++;
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), CANOPY_ERR_TOO_MANY_VALUES);
        assert_non_null(strstr(err, "'member'"));
        /* ... and so does the decoder for a payload written by someone else */
        const char *json = canopy_avro_schema_json(CANOPY_REC_CHANGE);
        avro_schema_t s;
        assert_int_equal(avro_schema_from_json_length(json, strlen(json), &s), 0);
        avro_value_iface_t *iface = avro_generic_class_from_schema(s);
        avro_value_t av;
        assert_int_equal(avro_generic_value_new(iface, &av), 0);
        assert_int_equal(canopy_xc_change_to_value(&ev, &av), 0);
        canopy_bytes body, framed;
        assert_int_equal(canopy_xc_write(&av, &body), 0);
        assert_int_equal(canopy_avro_frame(json, body.data, body.len, &framed, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)),
                         CANOPY_ERR_TOO_MANY_VALUES);
        assert_non_null(strstr(err, "'member'"));
        free(body.data);
        free(framed.data);
        avro_value_decref(&av);
        avro_value_iface_decref(iface);
        avro_schema_decref(s);
        canopy_change_event_free(&ev);

        /* size cap: one 5 MiB value */
        memset(&ev, 0, sizeof(ev));
        ev.connector = strdup("c");
        canopy_attr *p = canopy_change_event_add_attr(&ev, "jpegphoto", true);
        size_t big = CANOPY_EVENT_MAX_BYTES + 1;
        uint8_t *blob = calloc(1, big);
        assert_int_equal(canopy_attr_add_value(p, blob, big), 0);
        free(blob);
        assert_int_equal(canopy_avro_encode_change(&ev, &b, err, sizeof(err)), CANOPY_ERR_TOO_LARGE);
        assert_non_null(strstr(err, "cap"));
        canopy_change_event_free(&ev);
        uint8_t *huge = calloc(1, CANOPY_EVENT_MAX_BYTES + 20);
        assert_int_equal(canopy_avro_decode_change(huge, CANOPY_EVENT_MAX_BYTES + 20, &out, err, sizeof(err)),
                         CANOPY_ERR_TOO_LARGE);
        free(huge);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_embedded_schemas_match_files),
                cmocka_unit_test(test_fingerprint_vectors),
                cmocka_unit_test(test_change_round_trip),
                cmocka_unit_test(test_other_round_trips),
                cmocka_unit_test(test_avro_c_cross_check),
                cmocka_unit_test(test_evolution_old_writer_new_reader),
                cmocka_unit_test(test_evolution_new_writer_old_reader),
                cmocka_unit_test(test_truncated_and_corrupt),
                cmocka_unit_test(test_caps),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
