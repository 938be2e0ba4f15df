/* test_kafka.c: the Kafka layer's configuration and topic naming (no
 * network; the broker paths are in tests/integration/backbone). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canopy/avro.h"
#include "canopy/event.h"
#include "canopy/kafka.h"

struct svc_conf {
        int64_t threads;
        canopy_kafka_conf kafka;
};

static const canopy_conf_def defs[] = {
        CANOPY_KAFKA_CONF_DEFS(struct svc_conf, kafka),
        {"svc.threads", CANOPY_CT_INT, "1", 1, 64, 0, NULL, NULL, "Threads.", offsetof(struct svc_conf, threads)},
};
static const canopy_conf_table table = {"svc", "test service", defs, sizeof(defs) / sizeof(defs[0]),
                                        sizeof(struct svc_conf)};

static void test_conf_table_rows(void **state) {
        (void)state;
        assert_int_equal(sizeof(defs) / sizeof(defs[0]), CANOPY_KAFKA_CONF_NDEFS + 1);
        struct svc_conf sc;
        char err[512] = "";
        char path[] = "/tmp/canopy-test-kafka-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        const char *yaml = "kafka:\n"
                           "  brokers: \"k1:9092,k2:9092\"\n"
                           "  topic_prefix: \"prod.\"\n"
                           "  security_protocol: sasl_ssl\n"
                           "  sasl_mechanism: SCRAM-SHA-512\n"
                           "  sasl_username: canopy\n"
                           "  extra: [\"compression.type=zstd\", \"linger.ms=20\"]\n"
                           "  startup_timeout: 3s\n";
        assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
        close(fd);
        setenv("CANOPY_KAFKA_SASL_PASSWORD", "s3cr3t-pass", 1);
        memset(&sc, 0, sizeof(sc));
        canopy_err e = canopy_conf_load(&table, &sc, path, NULL, 0, err, sizeof(err));
        unsetenv("CANOPY_KAFKA_SASL_PASSWORD");
        unlink(path);
        if (e)
                fail_msg("conf_load: %s", err);
        assert_string_equal(sc.kafka.brokers, "k1:9092,k2:9092");
        assert_string_equal(sc.kafka.topic_prefix, "prod.");
        assert_string_equal(sc.kafka.client_id, "canopy");
        assert_string_equal(sc.kafka.security_protocol, "sasl_ssl");
        assert_string_equal(sc.kafka.sasl_mechanism, "SCRAM-SHA-512");
        assert_string_equal(sc.kafka.sasl_password, "s3cr3t-pass");
        assert_non_null(sc.kafka.extra);
        assert_string_equal(sc.kafka.extra[1], "linger.ms=20");
        assert_null(sc.kafka.extra[2]);
        assert_int_equal(sc.kafka.startup_timeout_ms, 3000);
        assert_int_equal(sc.kafka.session_timeout_ms, 10000);
        assert_int_equal(sc.kafka.fetch_wait_max_ms, 50);
        char t[256];
        assert_int_equal(canopy_kafka_topic_name(&sc.kafka, CANOPY_TOPIC_DLQ, t, sizeof(t)), 0);
        assert_string_equal(t, "prod.dlq");
        canopy_conf_free(&table, &sc);

        /* an unknown protocol is refused by the table */
        const char *set = "kafka.security_protocol=tls";
        memset(&sc, 0, sizeof(sc));
        assert_int_not_equal(canopy_conf_load(&table, &sc, NULL, &set, 1, err, sizeof(err)), 0);
}

static void test_topics_and_defaults(void **state) {
        (void)state;
        canopy_kafka_conf c;
        char t[64];
        assert_int_equal(canopy_kafka_conf_init(&c, NULL), 0);
        assert_string_equal(c.brokers, "127.0.0.1:9092");
        static const char *const want[] = {"canopy.changes", "canopy.mv", "canopy.exports", "canopy.dlq",
                                           "canopy.control"};
        for (int i = 0; i < CANOPY_TOPIC_COUNT; i++) {
                assert_int_equal(canopy_kafka_topic_name(&c, (canopy_topic)i, t, sizeof(t)), 0);
                assert_string_equal(t, want[i]);
        }
        assert_string_equal(canopy_kafka_topic_suffix(CANOPY_TOPIC_MV), "mv");
        assert_null(canopy_kafka_topic_suffix(CANOPY_TOPIC_COUNT));
        assert_int_equal(canopy_kafka_topic_name(&c, CANOPY_TOPIC_COUNT, t, sizeof(t)), CANOPY_ERR_INVALID_ARG);
        /* too long for the buffer or for Kafka's 249-character limit */
        assert_int_equal(canopy_kafka_topic_name(&c, CANOPY_TOPIC_CHANGES, t, 8), CANOPY_ERR_LIMIT);
        free(c.topic_prefix);
        c.topic_prefix = malloc(300);
        memset(c.topic_prefix, 'p', 299);
        c.topic_prefix[299] = 0;
        char big[512];
        assert_int_equal(canopy_kafka_topic_name(&c, CANOPY_TOPIC_CHANGES, big, sizeof(big)), CANOPY_ERR_LIMIT);
        canopy_kafka_conf_free(&c);
        canopy_kafka_conf_free(NULL);
}

/* Configuration errors are found before any network traffic and name the
 * key; the password never appears in the message. */
static void test_config_errors(void **state) {
        (void)state;
        canopy_kafka_conf c;
        canopy_kafka_producer *kp = NULL;
        char err[512];
        assert_int_equal(canopy_kafka_conf_init(&c, "127.0.0.1:1"), 0);
        c.extra = calloc(2, sizeof(char *));
        c.extra[0] = strdup("not-a-pair");
        assert_int_equal(canopy_kafka_producer_new(&c, NULL, NULL, &kp, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "not-a-pair"));
        free(c.extra[0]);
        c.extra[0] = strdup("bogus.property=1");
        assert_int_equal(canopy_kafka_producer_new(&c, NULL, NULL, &kp, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "bogus.property"));
        free(c.extra[0]);
        c.extra[0] = NULL;
        free(c.security_protocol);
        c.security_protocol = strdup("carrier-pigeon");
        c.sasl_password = strdup("hunter2-secret");
        assert_int_equal(canopy_kafka_producer_new(&c, NULL, NULL, &kp, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "kafka.security_protocol"));
        assert_null(strstr(err, "hunter2"));
        assert_null(kp);
        free(c.brokers);
        c.brokers = strdup("");
        assert_int_equal(canopy_kafka_producer_new(&c, NULL, NULL, &kp, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "kafka.brokers"));
        canopy_kafka_conf_free(&c);
        canopy_kafka_producer_free(NULL);
        canopy_kafka_consumer_free(NULL);
        canopy_kafka_msg_free(NULL);
}

/* kafka.writer_schemas: a newer ChangeEvent (v2, one more field with a
 * default, as a newer release writes it) is unknown until its file is
 * registered, then decoded; a missing file and a record that is not
 * Canopy's stop start-up naming the file. */
static char *write_file(const char *text) {
        char *path = strdup("/tmp/canopy-test-schema-XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        return path;
}

static void test_writer_schemas(void **state) {
        (void)state;
        const char *v1 = canopy_avro_schema_json(CANOPY_REC_CHANGE);
        assert_non_null(v1);
        /* v2 = v1 with "Version 2." and a last field tenant (null default). */
        char *v2 = NULL;
        const char *end = strrchr(v1, ']');
        assert_non_null(end);
        assert_true(asprintf(&v2, "%.*s, {\"name\": \"tenant\", \"type\": [\"null\", \"string\"], \"default\": null}%s",
                             (int)(end - v1), v1, end) > 0);
        char *ver = strstr(v2, "Version 1.");
        assert_non_null(ver);
        ver[8] = '2';
        char *good = write_file(v2), *other = write_file("{\"type\":\"record\",\"name\":\"Other\",\"fields\":[]}");

        /* A v2 payload: the v1 body, then the new field (union branch 0: null). */
        canopy_change_event ev = {0}, out;
        ev.connector = "corp";
        uint8_t a[4] = {1, 2, 3, 4};
        ev.anchor.data = a;
        ev.anchor.len = sizeof(a);
        ev.object_class = "user";
        ev.op = CANOPY_OP_DELETE;
        ev.dn = "CN=Zoë,OU=Staff,DC=corp";
        ev.complete = true;
        char err[CANOPY_AVRO_ERRLEN];
        canopy_bytes b1 = {0}, framed = {0};
        assert_int_equal(canopy_avro_encode_change(&ev, &b1, err, sizeof(err)), 0);
        uint8_t *body = malloc(b1.len - CANOPY_AVRO_HEADER_LEN + 1);
        size_t bl = b1.len - CANOPY_AVRO_HEADER_LEN;
        memcpy(body, b1.data + CANOPY_AVRO_HEADER_LEN, bl);
        body[bl++] = 0;
        assert_int_equal(canopy_avro_frame(v2, body, bl, &framed, err, sizeof(err)), 0);
        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)),
                         CANOPY_ERR_UNKNOWN_SCHEMA);

        canopy_kafka_conf c;
        assert_int_equal(canopy_kafka_conf_init(&c, NULL), 0);
        char eb[512];
        char *missing[] = {strdup("/nonexistent/ChangeEvent.v2.avsc"), NULL};
        c.writer_schemas = missing;
        assert_int_equal(canopy_kafka_register_schemas(&c, eb, sizeof(eb)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(eb, "cannot read /nonexistent/ChangeEvent.v2.avsc"));
        free(missing[0]);
        char *bad[] = {strdup(other), NULL};
        c.writer_schemas = bad;
        assert_int_equal(canopy_kafka_register_schemas(&c, eb, sizeof(eb)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(eb, other));
        free(bad[0]);
        char *ok[] = {strdup(good), NULL};
        c.writer_schemas = ok;
        assert_int_equal(canopy_kafka_register_schemas(&c, eb, sizeof(eb)), 0);
        free(ok[0]);
        c.writer_schemas = NULL;
        canopy_kafka_conf_free(&c);

        canopy_record rec;
        int version = 0;
        assert_int_equal(canopy_avro_peek(framed.data, framed.len, &rec, &version), 0);
        assert_int_equal(rec, CANOPY_REC_CHANGE);
        assert_int_equal(version, 2);
        assert_int_equal(canopy_avro_decode_change(framed.data, framed.len, &out, err, sizeof(err)), 0);
        assert_string_equal(out.dn, ev.dn);
        assert_int_equal(out.op, CANOPY_OP_DELETE);
        canopy_change_event_free(&out);
        unlink(good);
        unlink(other);
        free(good);
        free(other);
        free(body);
        free(b1.data);
        free(framed.data);
        free(v2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_conf_table_rows),
                cmocka_unit_test(test_writer_schemas),
                cmocka_unit_test(test_topics_and_defaults),
                cmocka_unit_test(test_config_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
