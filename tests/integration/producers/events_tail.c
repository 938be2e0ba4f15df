/* events_tail: test helper that consumes the changes topic (kafka.h) and
 * prints each ChangeEvent decoded with avro.h as one JSON line, so that the
 * producer tests can assert on real events.
 *
 *   events_tail BROKERS [GROUP] > events.jsonl     (runs until SIGTERM)
 *   events_tail BROKERS --fullscan CONNECTOR       (publish a FULL_SCAN ControlEvent)
 *
 * Values print as UTF-8 strings when they are valid text, else as
 * {"hex": "..."}; anchors always as hex.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canopy/avro.h"
#include "canopy/kafka.h"

static volatile int stop;
static void on_sig(int s) {
        (void)s;
        stop = 1;
}

static char *hex(const canopy_bytes *b) {
        char *s = malloc(b->len * 2 + 1);
        for (size_t i = 0; i < b->len; i++)
                sprintf(s + 2 * i, "%02x", b->data[i]);
        s[b->len * 2] = 0;
        return s;
}

static json_t *val(const canopy_bytes *b, bool binary) {
        if (!binary) {
                json_t *s = json_stringn((const char *)b->data, b->len);
                if (s)
                        return s;
        }
        char *h = hex(b);
        json_t *o = json_pack("{s:s}", "hex", h);
        free(h);
        return o;
}

static json_t *arr(const canopy_bytes *v, size_t n, bool binary) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
                json_array_append_new(a, val(&v[i], binary));
        return a;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: events_tail BROKERS [GROUP]\n");
                return 2;
        }
        signal(SIGTERM, on_sig);
        signal(SIGINT, on_sig);
        setvbuf(stdout, NULL, _IOLBF, 0);
        canopy_kafka_conf kc;
        canopy_kafka_conf_init(&kc, argv[1]);
        if (argc > 3 && !strcmp(argv[2], "--fullscan")) {
                canopy_kafka_producer *kp = NULL;
                char e[512];
                if (canopy_kafka_producer_new(&kc, NULL, NULL, &kp, e, sizeof(e))) {
                        fprintf(stderr, "events_tail: %s\n", e);
                        return 1;
                }
                canopy_control_event ce = {CANOPY_CTL_FULL_SCAN, argv[3], "test asks for a full scan", "events_tail",
                                           NULL, 0};
                canopy_err err = canopy_kafka_produce_control(kp, &ce, NULL, e, sizeof(e));
                if (!err)
                        err = canopy_kafka_producer_flush(kp, 30000);
                canopy_kafka_producer_free(kp);
                canopy_kafka_conf_free(&kc);
                return err ? 1 : 0;
        }
        kc.session_timeout_ms = 6000;
        char group[128];
        snprintf(group, sizeof(group), "%s", argc > 2 ? argv[2] : "events-tail");
        canopy_topic topics[1] = {CANOPY_TOPIC_CHANGES};
        canopy_kafka_consumer_opts o = {group, topics, 1, NULL, NULL, false};
        canopy_kafka_consumer *c = NULL;
        char err[512];
        if (canopy_kafka_consumer_new(&kc, &o, &c, err, sizeof(err))) {
                fprintf(stderr, "events_tail: %s\n", err);
                return 1;
        }
        fprintf(stderr, "events_tail: consuming\n");
        while (!stop) {
                canopy_kafka_msg *m = NULL;
                if (canopy_kafka_consume(c, 200, &m) || !m)
                        continue;
                canopy_change_event ev;
                char eb[CANOPY_AVRO_ERRLEN];
                if (canopy_avro_decode_change(m->value, m->len, &ev, eb, sizeof(eb))) {
                        printf("{\"decode_error\": \"%s\"}\n", eb);
                        canopy_kafka_msg_free(m);
                        continue;
                }
                char *ah = hex(&ev.anchor);
                json_t *j = json_pack("{s:s, s:s, s:s, s:b, s:i, s:i, s:I, s:i, s:I}", "connector", ev.connector, "op",
                                      canopy_op_name(ev.op), "anchor", ah, "complete", ev.complete, "chunk", ev.chunk,
                                      "nchunks", ev.nchunks, "seq", (json_int_t)ev.seq, "partition", m->partition,
                                      "offset", (json_int_t)m->offset);
                free(ah);
                if (ev.dn)
                        json_object_set_new(j, "dn", json_string(ev.dn));
                if (ev.prev_dn)
                        json_object_set_new(j, "prev_dn", json_string(ev.prev_dn));
                if (ev.object_class)
                        json_object_set_new(j, "class", json_string(ev.object_class));
                if (ev.scan_id)
                        json_object_set_new(j, "scan_id", json_string(ev.scan_id));
                if (ev.position)
                        json_object_set_new(j, "position", json_string(ev.position));
                if (ev.producer_id)
                        json_object_set_new(j, "producer", json_string(ev.producer_id));
                json_t *attrs = json_object();
                for (size_t i = 0; i < ev.nattrs; i++) {
                        canopy_attr *a = &ev.attrs[i];
                        json_t *ja = json_object();
                        json_object_set_new(ja, "binary", json_boolean(a->binary));
                        json_object_set_new(ja, "delta", json_boolean(a->delta));
                        if (a->delta) {
                                json_object_set_new(ja, "added", arr(a->added, a->nadded, a->binary));
                                json_object_set_new(ja, "removed", arr(a->removed, a->nremoved, a->binary));
                        } else {
                                json_object_set_new(ja, "values", arr(a->values, a->nvalues, a->binary));
                        }
                        json_object_set_new(attrs, a->name, ja);
                }
                json_object_set_new(j, "attrs", attrs);
                char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
                printf("%s\n", s);
                free(s);
                json_decref(j);
                canopy_change_event_free(&ev);
                canopy_kafka_mark_done(c, m);
                canopy_kafka_msg_free(m);
        }
        canopy_kafka_commit(c, true);
        canopy_kafka_consumer_close(c);
        canopy_kafka_consumer_free(c);
        canopy_kafka_conf_free(&kc);
        return 0;
}
