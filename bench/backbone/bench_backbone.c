/* canopy-bench-backbone: the event backbone's speed next to its baselines,
 * measured in the same run on the same machine:
 *   - encode / decode of a typical ChangeEvent (a user with ~20 attributes)
 *     with Canopy's codec vs raw Avro-C (generic value API) on the same record;
 *   - produce / consume through the Kafka layer vs kcat, same message size,
 *     one distinct key per message for both, both idempotent and acked,
 *     both consuming in a group timed from the start (incl. the join),
 *     same devkafka broker (when CANOPY_TEST_KAFKA_BOOTSTRAP is set).
 * Prints a table and the ratios; --json FILE writes them as JSON.
 *
 *   tests/harness/run-with --kafka --bin build/bin -- build/bin/canopy-bench-backbone \
 *       [--iters N] [--msgs N] [--json FILE]
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "avro_xcheck.h"
#include "canopy/avro.h"
#include "canopy/kafka.h"
#include "canopy/log.h"

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
        fprintf(stderr, "canopy-bench-backbone: %s\n", what);
        exit(1);
}

static void make_user(canopy_change_event *ev, long i) {
        char buf[160];
        memset(ev, 0, sizeof(*ev));
        ev->connector = strdup("corp.example.com");
        uint8_t guid[16];
        for (int k = 0; k < 16; k++)
                guid[k] = (uint8_t)(i * 31 + k);
        canopy_bytes_set(&ev->anchor, guid, 16);
        ev->object_class = strdup("user");
        ev->op = CANOPY_OP_MODIFY;
        snprintf(buf, sizeof(buf), "CN=Jane Doe %ld,OU=Sales,OU=Staff,DC=corp,DC=example,DC=com", i);
        ev->dn = strdup(buf);
        ev->complete = true;
        static const char *const attrs[][2] = {
                {"givenname", "Jane"}, {"sn", "Doe"}, {"displayname", "Jane Doe"},
                {"mail", "jane.doe@corp.example.com"}, {"userprincipalname", "jane.doe@corp.example.com"},
                {"samaccountname", "jdoe"}, {"department", "Sales EMEA"}, {"title", "Account Manager"},
                {"company", "Example Corp"}, {"l", "Lyon"}, {"st", "Rhone"}, {"co", "France"},
                {"telephonenumber", "+33 4 00 00 00 00"}, {"mobile", "+33 6 00 00 00 00"},
                {"employeeid", "E-0012345"}, {"manager", "CN=Boss,OU=Staff,DC=corp,DC=example,DC=com"},
                {"useraccountcontrol", "512"}, {"description", "Key accounts, south-east region"},
        };
        for (size_t k = 0; k < sizeof(attrs) / sizeof(attrs[0]); k++) {
                canopy_attr *a = canopy_change_event_add_attr(ev, attrs[k][0], false);
                canopy_attr_add_value(a, attrs[k][1], strlen(attrs[k][1]));
        }
        canopy_attr *p = canopy_change_event_add_attr(ev, "proxyaddresses", false);
        canopy_attr_add_value(p, "SMTP:jane.doe@corp.example.com", 30);
        canopy_attr_add_value(p, "smtp:jdoe@corp.example.com", 26);
        canopy_attr *g = canopy_change_event_add_attr(ev, "objectguid", true);
        canopy_attr_add_value(g, guid, 16);
        ev->position = strdup("1234567");
        ev->source_ts_ms = 1700000000000LL + i;
        ev->producer_id = strdup("producer-ldap-1");
        ev->seq = i;
        ev->nchunks = 1;
}

struct row {
        const char *name;
        double rate; /* ops or msgs per second */
        double mbps;
        int ok;
};

#define MAXROWS 16
static struct row rows[MAXROWS];
static int nrows;

static struct row *add_row(const char *name, long n, double secs, size_t bytes_each) {
        struct row *r = &rows[nrows++];
        r->name = name;
        r->ok = secs > 0;
        r->rate = secs > 0 ? (double)n / secs : 0;
        r->mbps = secs > 0 ? (double)n * (double)bytes_each / secs / 1e6 : 0;
        return r;
}

/* ---- codec -------------------------------------------------------------- */

static size_t bench_codec(long iters) {
        canopy_change_event ev, out;
        canopy_bytes b;
        char err[CANOPY_AVRO_ERRLEN];
        make_user(&ev, 1);
        if (canopy_avro_encode_change(&ev, &b, err, sizeof(err)))
                die(err);
        size_t size = b.len;
        free(b.data);

        double t0 = now_s();
        for (long i = 0; i < iters; i++) {
                ev.seq = i;
                if (canopy_avro_encode_change(&ev, &b, err, sizeof(err)))
                        die(err);
                free(b.data);
        }
        add_row("encode canopy", iters, now_s() - t0, size);

        canopy_avro_encode_change(&ev, &b, err, sizeof(err));
        t0 = now_s();
        for (long i = 0; i < iters; i++) {
                if (canopy_avro_decode_change(b.data, b.len, &out, err, sizeof(err)))
                        die(err);
                canopy_change_event_free(&out);
        }
        add_row("decode canopy (to struct)", iters, now_s() - t0, size);

        /* Raw Avro-C on the same record and schema. */
        const char *json = canopy_avro_schema_json(CANOPY_REC_CHANGE);
        avro_schema_t s;
        if (avro_schema_from_json_length(json, strlen(json), &s))
                die("avro schema");
        avro_value_iface_t *iface = avro_generic_class_from_schema(s);
        avro_value_t v;
        avro_generic_value_new(iface, &v);
        canopy_bytes body;
        t0 = now_s();
        for (long i = 0; i < iters; i++) {
                avro_value_reset(&v);
                ev.seq = i;
                if (canopy_xc_change_to_value(&ev, &v) || canopy_xc_write(&v, &body))
                        die("avro-c encode");
                free(body.data);
        }
        add_row("encode avro-c (fill+write)", iters, now_s() - t0, size);
        t0 = now_s();
        for (long i = 0; i < iters; i++) {
                if (canopy_xc_write(&v, &body))
                        die("avro-c write");
                free(body.data);
        }
        add_row("encode avro-c (write only)", iters, now_s() - t0, size);

        const uint8_t *bd = b.data + CANOPY_AVRO_HEADER_LEN;
        size_t bl = b.len - CANOPY_AVRO_HEADER_LEN;
        t0 = now_s();
        for (long i = 0; i < iters; i++) {
                if (canopy_xc_read(&v, bd, bl) || canopy_xc_value_to_change(&v, &out))
                        die("avro-c decode");
                canopy_change_event_free(&out);
        }
        add_row("decode avro-c (read+to struct)", iters, now_s() - t0, size);
        t0 = now_s();
        for (long i = 0; i < iters; i++)
                if (canopy_xc_read(&v, bd, bl))
                        die("avro-c read");
        add_row("decode avro-c (read only)", iters, now_s() - t0, size);
        free(b.data);
        avro_value_decref(&v);
        avro_value_iface_decref(iface);
        avro_schema_decref(s);
        canopy_change_event_free(&ev);
        return size;
}

/* ---- Kafka -------------------------------------------------------------- */

static long delivered, failed;

static void on_dr(void *o, canopy_err err, const char *es, int32_t p, int64_t off, void *app) {
        (void)o, (void)es, (void)p, (void)off, (void)app;
        if (err)
                failed++;
        else
                delivered++;
}

static void create_topic(const char *name, int parts) {
        const char *ctl = getenv("CANOPY_TEST_KAFKA_CONTROL"), *bin = getenv("CANOPY_TEST_BIN");
        if (!ctl || !bin)
                return; /* auto-created (4 partitions) */
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "'%s/canopy-devkafka' ctl '%s' topic '%s' %d >/dev/null", bin, ctl, name, parts);
        if (system(cmd) != 0)
                fprintf(stderr, "note: could not pre-create %s; it will be auto-created\n", name);
}

static double run_cmd(const char *cmd) {
        double t0 = now_s();
        int rc = system(cmd);
        double t = now_s() - t0;
        return rc == 0 ? t : -1;
}

static void bench_kafka(const char *bs, long n, json_t *extra) {
        char prefix[64], topic[128], kt[128], err[512], cmd[1024], path[256];
        snprintf(prefix, sizeof(prefix), "bench%d.", (int)getpid());
        canopy_kafka_conf c;
        canopy_kafka_conf_init(&c, bs);
        free(c.topic_prefix);
        c.topic_prefix = strdup(prefix);
        c.session_timeout_ms = 6000;
        canopy_kafka_topic_name(&c, CANOPY_TOPIC_CHANGES, topic, sizeof(topic));
        snprintf(kt, sizeof(kt), "bench%d.kcat", (int)getpid());
        create_topic(topic, 32);
        create_topic(kt, 32);

        canopy_change_event ev;
        canopy_bytes v, key;
        make_user(&ev, 7);
        canopy_avro_encode_change(&ev, &v, err, sizeof(err));
        canopy_change_key(ev.connector, &ev.anchor, &key);

        canopy_kafka_producer *kp;
        if (canopy_kafka_producer_new(&c, on_dr, NULL, &kp, err, sizeof(err)))
                die(err);
        double t0 = now_s();
        /* One key per object, as in real traffic: spreads the partitions
         * (devkafka keeps at most 5 MiB per partition). */
        for (long i = 0; i < n; i++) {
                memcpy(key.data + key.len - sizeof(i), &i, sizeof(i));
                if (canopy_kafka_produce(kp, CANOPY_TOPIC_CHANGES, key.data, key.len, v.data, v.len, NULL))
                        die("produce");
                if ((i & 1023) == 0)
                        canopy_kafka_producer_poll(kp, 0);
        }
        if (canopy_kafka_producer_flush(kp, 120000) || delivered != n)
                die("flush / delivery");
        add_row("produce canopy (idempotent, acked)", n, now_s() - t0, v.len);
        canopy_kafka_producer_free(kp);

        canopy_topic tp = CANOPY_TOPIC_CHANGES;
        char group[64];
        snprintf(group, sizeof(group), "bench-%d", (int)getpid());
        canopy_kafka_consumer_opts o = {group, &tp, 1, NULL, NULL, false};
        canopy_kafka_consumer *kc;
        double tj = now_s();
        if (canopy_kafka_consumer_new(&c, &o, &kc, err, sizeof(err)))
                die(err);
        long got = 0;
        double tfirst = 0;
        while (got < n) {
                canopy_kafka_msg *m;
                if (canopy_kafka_consume(kc, 1000, &m)) {
                        if (now_s() - tj > 300)
                                die("consume: messages missing after 300 s (broker dropped data?)");
                        continue;
                }
                if (!got)
                        tfirst = now_s();
                got++;
                canopy_kafka_mark_done(kc, m);
                canopy_kafka_msg_free(m);
                if ((got & 4095) == 0)
                        canopy_kafka_commit(kc, false);
        }
        double tend = now_s();
        canopy_kafka_commit(kc, true);
        add_row("consume canopy (group, steady)", n, tend - tfirst, v.len);
        add_row("consume canopy (group, incl. join)", n, tend - tj, v.len);
        json_object_set_new(extra, "canopy_group_join_s", json_real(tfirst - tj));
        canopy_kafka_consumer_free(kc);

        /* kcat on the same terms: same broker, same number of messages, a
         * value of the same size and one distinct key per message of the
         * same length (so the same spread over the 32 partitions and the
         * same batching), idempotent and acked by all; consumed in a
         * consumer group, timed from start to the last message like the
         * "incl. join" row above. */
        snprintf(path, sizeof(path), "/tmp/canopy-bench-kcat-%d.txt", (int)getpid());
        FILE *f = fopen(path, "w");
        if (!f)
                die("tmp file");
        char *val = malloc(v.len + 1);
        memset(val, 'x', v.len);
        val[v.len] = 0;
        for (long i = 0; i < n; i++)
                fprintf(f, "%0*ld\t%s\n", (int)key.len, i, val);
        fclose(f);
        free(val);
        snprintf(cmd, sizeof(cmd),
                 "kcat -P -b '%s' -t '%s' -K '\\t' -X enable.idempotence=true -X acks=all < '%s' 2>/dev/null", bs,
                 kt, path);
        double tk = run_cmd(cmd);
        add_row("produce kcat (keyed, idempotent, acked)", n, tk, v.len);
        snprintf(cmd, sizeof(cmd),
                 "kcat -b '%s' -G 'kcat-%d' -X auto.offset.reset=earliest -X session.timeout.ms=6000 -c %ld -q "
                 "-f '%%o\\n' '%s' > /dev/null 2>&1",
                 bs, (int)getpid(), n, kt);
        tk = run_cmd(cmd);
        add_row("consume kcat (group, incl. join)", n, tk, v.len);
        unlink(path);
        free(v.data);
        free(key.data);
        canopy_change_event_free(&ev);
        canopy_kafka_conf_free(&c);
}

static double rate_of(const char *name) {
        for (int i = 0; i < nrows; i++)
                if (!strcmp(rows[i].name, name))
                        return rows[i].ok ? rows[i].rate : 0;
        return 0;
}

int main(int argc, char **argv) {
        long iters = 100000, msgs = 50000;
        const char *json_path = NULL;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--iters") && i + 1 < argc)
                        iters = atol(argv[++i]);
                else if (!strcmp(argv[i], "--msgs") && i + 1 < argc)
                        msgs = atol(argv[++i]);
                else if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json_path = argv[++i];
                else {
                        fprintf(stderr, "usage: %s [--iters N] [--msgs N] [--json FILE]\n", argv[0]);
                        return 2;
                }
        }
        canopy_log_init("bench-backbone");
        canopy_log_set_level(CANOPY_LOG_ERROR);
        json_t *extra = json_object();
        size_t size = bench_codec(iters);
        const char *bs = getenv("CANOPY_TEST_KAFKA_BOOTSTRAP");
        int have_kcat = system("command -v kcat >/dev/null 2>&1") == 0;
        if (bs && have_kcat)
                bench_kafka(bs, msgs, extra);
        else
                printf("(Kafka rows skipped: %s)\n", bs ? "kcat not found" : "CANOPY_TEST_KAFKA_BOOTSTRAP not set");

        printf("\nChangeEvent: user, 20 attributes, %zu bytes encoded; codec %ld iterations, Kafka %ld messages\n\n",
               size, iters, msgs);
        printf("%-40s %14s %10s\n", "operation", "per second", "MB/s");
        for (int i = 0; i < nrows; i++)
                printf("%-40s %14.0f %10.1f\n", rows[i].name, rows[i].rate, rows[i].mbps);
        struct {
                const char *name, *a, *b;
        } ratios[] = {
                {"encode canopy / avro-c (fill+write)", "encode canopy", "encode avro-c (fill+write)"},
                {"decode canopy / avro-c (read+to struct)", "decode canopy (to struct)", "decode avro-c (read+to struct)"},
                {"decode canopy / avro-c (read only)", "decode canopy (to struct)", "decode avro-c (read only)"},
                {"produce canopy / kcat", "produce canopy (idempotent, acked)", "produce kcat (keyed, idempotent, acked)"},
                {"consume canopy / kcat (group, incl. join)", "consume canopy (group, incl. join)",
                 "consume kcat (group, incl. join)"},
        };
        printf("\n%-40s %8s\n", "ratio", "x");
        json_t *jr = json_object();
        for (size_t i = 0; i < sizeof(ratios) / sizeof(ratios[0]); i++) {
                double a = rate_of(ratios[i].a), b = rate_of(ratios[i].b);
                if (a > 0 && b > 0) {
                        printf("%-40s %8.2f\n", ratios[i].name, a / b);
                        json_object_set_new(jr, ratios[i].name, json_real(a / b));
                }
        }
        if (json_path) {
                json_t *root = json_object(), *jrows = json_array();
                for (int i = 0; i < nrows; i++)
                        json_array_append_new(jrows, json_pack("{s:s,s:f,s:f}", "name", rows[i].name, "per_second",
                                                               rows[i].rate, "mb_per_second", rows[i].mbps));
                json_object_set_new(root, "bench", json_string("backbone"));
                json_object_set_new(root, "event_bytes", json_integer((json_int_t)size));
                json_object_set_new(root, "codec_iterations", json_integer(iters));
                json_object_set_new(root, "kafka_messages", json_integer(msgs));
                json_object_set_new(root, "rows", jrows);
                json_object_set_new(root, "ratios", jr);
                json_object_set_new(root, "extra", extra);
                if (json_dump_file(root, json_path, JSON_INDENT(2)))
                        die("cannot write JSON");
                json_decref(root);
        } else {
                json_decref(jr);
                json_decref(extra);
        }
        return 0;
}
