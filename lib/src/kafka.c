/* kafka.c: Canopy's Kafka layer over librdkafka (canopy/kafka.h).
 *
 * librdkafka types stay in this file. The producer is idempotent and hands
 * the caller's per-message opaque back in its delivery callback. The
 * consumer never commits by itself: offsets are stored when the application
 * marks a message done and committed on request, on revoke and on close.
 */
#include "canopy/kafka.h"

#include <errno.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "canopy/avro.h"
#include "canopy/log.h"

#define MOD "kafka"
#define TOPIC_MAX 249 /* Kafka's limit on topic names */
#define DLQ_WAIT_MS 30000

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void seterr(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *buf, size_t len, const char *fmt, ...) {
        if (!buf || !len)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
}

static int set(const char *s) {
        return s && *s;
}

/* ---- configuration ------------------------------------------------------ */

canopy_err canopy_kafka_conf_init(canopy_kafka_conf *c, const char *brokers) {
        if (!c)
                return CANOPY_ERR_INVALID_ARG;
        memset(c, 0, sizeof(*c));
        c->brokers = strdup(brokers ? brokers : "127.0.0.1:9092");
        c->topic_prefix = strdup("canopy.");
        c->client_id = strdup("canopy");
        c->security_protocol = strdup("plaintext");
        c->startup_timeout_ms = 15000;
        c->session_timeout_ms = 10000;
        c->fetch_wait_max_ms = 50;
        if (!c->brokers || !c->topic_prefix || !c->client_id || !c->security_protocol) {
                canopy_kafka_conf_free(c);
                return CANOPY_ERR_NOMEM;
        }
        return CANOPY_OK;
}

void canopy_kafka_conf_free(canopy_kafka_conf *c) {
        if (!c)
                return;
        free(c->brokers);
        free(c->topic_prefix);
        free(c->client_id);
        free(c->security_protocol);
        free(c->sasl_mechanism);
        free(c->sasl_username);
        free(c->sasl_password);
        free(c->ssl_ca_location);
        if (c->extra)
                for (char **p = c->extra; *p; p++)
                        free(*p);
        free(c->extra);
        if (c->writer_schemas)
                for (char **p = c->writer_schemas; *p; p++)
                        free(*p);
        free(c->writer_schemas);
        memset(c, 0, sizeof(*c));
}

canopy_err canopy_kafka_register_schemas(const canopy_kafka_conf *c, char *errbuf, size_t errlen) {
        for (char *const *f = c && c->writer_schemas ? c->writer_schemas : NULL; f && *f; f++) {
                FILE *fp = fopen(*f, "r");
                if (!fp) {
                        snprintf(errbuf, errlen, "kafka.writer_schemas: cannot read %s: %s", *f, strerror(errno));
                        return CANOPY_ERR_CONFIG;
                }
                char *text = NULL;
                size_t len = 0;
                FILE *mem = open_memstream(&text, &len);
                char buf[4096];
                size_t n;
                while (mem && (n = fread(buf, 1, sizeof(buf), fp)) > 0)
                        fwrite(buf, 1, n, mem);
                bool bad = ferror(fp);
                fclose(fp);
                if (mem)
                        fclose(mem);
                if (!mem || !text || bad) {
                        free(text);
                        snprintf(errbuf, errlen, "kafka.writer_schemas: cannot read %s", *f);
                        return CANOPY_ERR_CONFIG;
                }
                /* "Version N." in the record's doc, as in schemas/<Record>.avsc. */
                int version = 0;
                json_t *root = json_loads(text, 0, NULL);
                const char *doc = json_string_value(json_object_get(root, "doc"));
                const char *v = doc ? strstr(doc, "Version ") : NULL;
                if (v)
                        version = atoi(v + 8);
                json_decref(root);
                char eb[CANOPY_AVRO_ERRLEN];
                canopy_err err = canopy_avro_register_schema(text, version, eb, sizeof(eb));
                free(text);
                if (err) {
                        snprintf(errbuf, errlen, "kafka.writer_schemas: %s: %s", *f, eb);
                        return CANOPY_ERR_CONFIG;
                }
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "writer schema %s registered (version %d)", *f, version);
        }
        return CANOPY_OK;
}

static char *dupnull(const char *s) {
        return s ? strdup(s) : NULL;
}

static canopy_err conf_copy(canopy_kafka_conf *dst, const canopy_kafka_conf *src) {
        memset(dst, 0, sizeof(*dst));
        dst->brokers = dupnull(src->brokers);
        dst->topic_prefix = dupnull(src->topic_prefix);
        dst->client_id = dupnull(src->client_id);
        dst->security_protocol = dupnull(src->security_protocol);
        dst->sasl_mechanism = dupnull(src->sasl_mechanism);
        dst->sasl_username = dupnull(src->sasl_username);
        dst->sasl_password = dupnull(src->sasl_password);
        dst->ssl_ca_location = dupnull(src->ssl_ca_location);
        dst->startup_timeout_ms = src->startup_timeout_ms;
        dst->session_timeout_ms = src->session_timeout_ms;
        dst->fetch_wait_max_ms = src->fetch_wait_max_ms;
        size_t n = 0;
        while (src->extra && src->extra[n])
                n++;
        if (src->extra) {
                if (!(dst->extra = calloc(n + 1, sizeof(char *))))
                        return CANOPY_ERR_NOMEM;
                for (size_t i = 0; i < n; i++)
                        if (!(dst->extra[i] = strdup(src->extra[i])))
                                return CANOPY_ERR_NOMEM;
        }
        return CANOPY_OK;
}

static const char *const topic_suffixes[CANOPY_TOPIC_COUNT] = {"changes", "mv", "exports", "dlq", "control"};

const char *canopy_kafka_topic_suffix(canopy_topic t) {
        return (unsigned)t < CANOPY_TOPIC_COUNT ? topic_suffixes[t] : NULL;
}

canopy_err canopy_kafka_topic_name(const canopy_kafka_conf *c, canopy_topic t, char *buf, size_t len) {
        if (!c || !buf || (unsigned)t >= CANOPY_TOPIC_COUNT)
                return CANOPY_ERR_INVALID_ARG;
        int n = snprintf(buf, len, "%s%s", c->topic_prefix ? c->topic_prefix : "", topic_suffixes[t]);
        if (n < 0 || (size_t)n >= len || n > TOPIC_MAX)
                return CANOPY_ERR_LIMIT;
        return CANOPY_OK;
}

/* State shared by the producer and consumer for error reporting. */
struct kstate {
        char last_error[512];
        char fatal[512];
        int fatal_err;
        unsigned repeats;
        _Atomic uint64_t lost; /* positions the broker no longer held */
};

static struct kstate *kstate_of(const rd_kafka_t *rk);

/* librdkafka log lines become JSON lines of module "rdkafka". librdkafka
 * reports only here that a partition's next offset was out of range (the
 * broker's retention passed it, or the topic was truncated) and that it
 * went on from auto.offset.reset: the messages in between were never read.
 * A group without a committed offset also "resets", but for another
 * reason, which is not a loss. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
        canopy_log_level lvl = level <= 3 ? CANOPY_LOG_ERROR
                               : level == 4 ? CANOPY_LOG_WARN
                               : level <= 6 ? CANOPY_LOG_INFO
                                            : CANOPY_LOG_DEBUG;
        canopy_log(lvl, "rdkafka", NULL, "%s: %s: %s", rd_kafka_name(rk), fac, buf);
        if (fac && !strcmp(fac, "OFFSET") && strstr(buf, "offset reset") &&
            strstr(buf, rd_kafka_err2str(RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE))) {
                struct kstate *ks = kstate_of(rk);
                if (ks)
                        atomic_fetch_add(&ks->lost, 1);
        }
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque);
static void error_cb_producer(rd_kafka_t *rk, int err, const char *reason, void *opaque);

static rd_kafka_conf_t *build_conf(const canopy_kafka_conf *c, struct kstate *ks, char *errbuf, size_t errlen) {
        char e[512];
        rd_kafka_conf_t *rc = rd_kafka_conf_new();
        if (!rc)
                return NULL;
        struct {
                const char *key, *val, *canopy_key;
        } kv[] = {
                {"bootstrap.servers", c->brokers, "kafka.brokers"},
                {"client.id", set(c->client_id) ? c->client_id : "canopy", "kafka.client_id"},
                {"security.protocol", c->security_protocol, "kafka.security_protocol"},
                {"sasl.mechanism", c->sasl_mechanism, "kafka.sasl_mechanism"},
                {"sasl.username", c->sasl_username, "kafka.sasl_username"},
                {"sasl.password", c->sasl_password, "kafka.sasl_password"},
                {"ssl.ca.location", c->ssl_ca_location, "kafka.ssl_ca_location"},
        };
        if (!set(c->brokers)) {
                seterr(errbuf, errlen, "kafka.brokers is empty");
                goto fail;
        }
        for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
                if (!set(kv[i].val))
                        continue;
                if (rd_kafka_conf_set(rc, kv[i].key, kv[i].val, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
                        /* never echo the value: it may be the password */
                        seterr(errbuf, errlen, "%s: %s", kv[i].canopy_key, e);
                        goto fail;
                }
        }
        for (char **p = c->extra; p && *p; p++) {
                char *eq = strchr(*p, '=');
                if (!eq || eq == *p) {
                        seterr(errbuf, errlen, "kafka.extra: '%s' is not key=value", *p);
                        goto fail;
                }
                char key[256];
                snprintf(key, sizeof(key), "%.*s", (int)(eq - *p), *p);
                if (rd_kafka_conf_set(rc, key, eq + 1, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
                        seterr(errbuf, errlen, "kafka.extra '%s': %s", key, e);
                        goto fail;
                }
        }
        if (c->sasl_password)
                canopy_log_secret(c->sasl_password);
        rd_kafka_conf_set_log_cb(rc, log_cb);
        (void)ks;
        return rc;
fail:
        rd_kafka_conf_destroy(rc);
        return NULL;
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
        struct kstate *ks = opaque;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                char buf[400];
                rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof(buf));
                snprintf(ks->fatal, sizeof(ks->fatal), "%s: %s", rd_kafka_err2name(orig), buf);
                ks->fatal_err = 1;
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "fatal Kafka error: %s", ks->fatal);
                return;
        }
        /* Brokers going down repeat the same error for each retry: log a
         * line when it changes, and every 100th repeat. */
        if (strcmp(ks->last_error, reason) == 0) {
                if (++ks->repeats % 100)
                        return;
        } else {
                ks->repeats = 0;
                snprintf(ks->last_error, sizeof(ks->last_error), "%s", reason);
        }
        canopy_log(CANOPY_LOG_WARN, MOD, NULL, "%s: %s (%s)", rd_kafka_name(rk),
                   rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* Wait for one broker to answer, bounded: the start-up check. */
static canopy_err startup_check(rd_kafka_t *rk, const canopy_kafka_conf *c, struct kstate *ks, char *errbuf,
                                size_t errlen) {
        int timeout = c->startup_timeout_ms > 0 ? (int)c->startup_timeout_ms : 15000;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, timeout);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md && md->broker_cnt > 0) {
                rd_kafka_metadata_destroy(md);
                return CANOPY_OK;
        }
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_poll(rk, 0); /* serve error_cb for the reason */
        seterr(errbuf, errlen,
               "no Kafka broker reachable at %s within %d ms: %s%s%s (check kafka.brokers or CANOPY_KAFKA_BROKERS, "
               "that a broker listens there, and kafka.security_protocol; kafka.startup_timeout sets the wait)",
               c->brokers, timeout, rd_kafka_err2str(err), ks->last_error[0] ? "; last error: " : "",
               ks->last_error);
        return CANOPY_ERR_KAFKA_UNREACHABLE;
}

/* ---- producer ----------------------------------------------------------- */

struct canopy_kafka_producer {
        rd_kafka_t *rk;
        canopy_kafka_delivery_cb cb;
        void *app;
        struct kstate ks;
        char topics[CANOPY_TOPIC_COUNT][TOPIC_MAX + 1];
};

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
        canopy_kafka_producer *kp = opaque;
        (void)rk;
        if (!kp->cb)
                return;
        canopy_err err = CANOPY_OK;
        if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
                err = CANOPY_ERR_SHUTDOWN;
        else if (m->err == RD_KAFKA_RESP_ERR__FATAL || kp->ks.fatal_err)
                err = m->err ? CANOPY_ERR_KAFKA_FATAL : CANOPY_OK;
        else if (m->err)
                err = CANOPY_ERR_KAFKA;
        kp->cb(m->_private, err, m->err ? rd_kafka_err2str(m->err) : "", m->partition, m->offset, kp->app);
}

canopy_err canopy_kafka_producer_new(const canopy_kafka_conf *conf, canopy_kafka_delivery_cb cb, void *app_opaque,
                                     canopy_kafka_producer **ret, char *errbuf, size_t errlen) {
        char e[512];
        canopy_err err;
        if (!conf || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_kafka_producer *kp = calloc(1, sizeof(*kp));
        if (!kp)
                return CANOPY_ERR_NOMEM;
        kp->cb = cb;
        kp->app = app_opaque;
        for (int t = 0; t < CANOPY_TOPIC_COUNT; t++)
                if (canopy_kafka_topic_name(conf, (canopy_topic)t, kp->topics[t], sizeof(kp->topics[t]))) {
                        seterr(errbuf, errlen, "kafka.topic_prefix is too long");
                        free(kp);
                        return CANOPY_ERR_CONFIG;
                }
        rd_kafka_conf_t *rc = build_conf(conf, &kp->ks, errbuf, errlen);
        if (!rc) {
                free(kp);
                return CANOPY_ERR_CONFIG;
        }
        /* Idempotence: no duplicates or reordering from retries; acks=all
         * and in-flight <= 5 follow from it. Producers checkpoint on the
         * delivery report, so an acknowledged message is durable. */
        if (rd_kafka_conf_set(rc, "enable.idempotence", "true", e, sizeof(e)) ||
            rd_kafka_conf_set(rc, "linger.ms", "5", e, sizeof(e)) ||
            rd_kafka_conf_set(rc, "partitioner", "murmur2_random", e, sizeof(e))) {
                seterr(errbuf, errlen, "producer config: %s", e);
                rd_kafka_conf_destroy(rc);
                free(kp);
                return CANOPY_ERR_CONFIG;
        }
        rd_kafka_conf_set_dr_msg_cb(rc, dr_msg_cb);
        rd_kafka_conf_set_error_cb(rc, error_cb_producer);
        rd_kafka_conf_set_opaque(rc, kp);
        kp->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, e, sizeof(e));
        if (!kp->rk) {
                seterr(errbuf, errlen, "cannot create Kafka producer: %s", e);
                rd_kafka_conf_destroy(rc);
                free(kp);
                return CANOPY_ERR_CONFIG;
        }
        if ((err = startup_check(kp->rk, conf, &kp->ks, errbuf, errlen))) {
                canopy_kafka_producer_free(kp);
                return err;
        }
        *ret = kp;
        return CANOPY_OK;
}

canopy_err canopy_kafka_produce_raw(canopy_kafka_producer *kp, const char *topic, int32_t partition,
                                    const void *key, size_t keylen, const void *value, size_t vlen,
                                    void *msg_opaque) {
        if (!kp || !topic)
                return CANOPY_ERR_INVALID_ARG;
        if (kp->ks.fatal_err)
                return CANOPY_ERR_KAFKA_FATAL;
        int64_t deadline = mono_ms() + 1000;
        for (;;) {
                rd_kafka_resp_err_t err = rd_kafka_producev(
                        kp->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition < 0 ? RD_KAFKA_PARTITION_UA : partition),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY((void *)key, key ? keylen : 0),
                        RD_KAFKA_V_VALUE((void *)value, value ? vlen : 0), RD_KAFKA_V_OPAQUE(msg_opaque),
                        RD_KAFKA_V_END);
                if (!err)
                        return CANOPY_OK;
                if (err == RD_KAFKA_RESP_ERR__FATAL)
                        return CANOPY_ERR_KAFKA_FATAL;
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || mono_ms() > deadline) {
                        canopy_log(CANOPY_LOG_WARN, MOD, NULL, "produce to %s failed: %s", topic,
                                   rd_kafka_err2str(err));
                        return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? CANOPY_ERR_TOO_LARGE : CANOPY_ERR_KAFKA;
                }
                rd_kafka_poll(kp->rk, 50);
        }
}

canopy_err canopy_kafka_produce(canopy_kafka_producer *kp, canopy_topic t, const void *key, size_t keylen,
                                const void *value, size_t vlen, void *msg_opaque) {
        if (!kp || (unsigned)t >= CANOPY_TOPIC_COUNT)
                return CANOPY_ERR_INVALID_ARG;
        return canopy_kafka_produce_raw(kp, kp->topics[t], -1, key, keylen, value, vlen, msg_opaque);
}

canopy_err canopy_kafka_produce_change(canopy_kafka_producer *kp, const canopy_change_event *ev,
                                       void *msg_opaque, char *errbuf, size_t errlen) {
        canopy_bytes v = {0}, k = {0};
        canopy_err err = canopy_avro_encode_change(ev, &v, errbuf, errlen);
        if (err)
                return err;
        if (!(err = canopy_change_key(ev->connector, &ev->anchor, &k)))
                err = canopy_kafka_produce(kp, CANOPY_TOPIC_CHANGES, k.data, k.len, v.data, v.len, msg_opaque);
        free(k.data);
        free(v.data);
        return err;
}

canopy_err canopy_kafka_produce_change_to(canopy_kafka_producer *kp, const canopy_change_event *ev,
                                          int32_t partition, void *msg_opaque, char *errbuf, size_t errlen) {
        if (!kp || partition < 0)
                return CANOPY_ERR_INVALID_ARG;
        canopy_bytes v = {0}, k = {0};
        canopy_err err = canopy_avro_encode_change(ev, &v, errbuf, errlen);
        if (err)
                return err;
        if (!(err = canopy_change_key(ev->connector, &ev->anchor, &k)))
                err = canopy_kafka_produce_raw(kp, kp->topics[CANOPY_TOPIC_CHANGES], partition, k.data, k.len,
                                               v.data, v.len, msg_opaque);
        free(k.data);
        free(v.data);
        return err;
}

canopy_err canopy_kafka_partition_count(canopy_kafka_producer *kp, canopy_topic t, int timeout_ms, int32_t *ret) {
        if (!kp || (unsigned)t >= CANOPY_TOPIC_COUNT || !ret)
                return CANOPY_ERR_INVALID_ARG;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(kp->rk, kp->topics[t], NULL);
        if (!rkt)
                return CANOPY_ERR_KAFKA;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(kp->rk, 0, rkt, &md, timeout_ms);
        canopy_err res = CANOPY_ERR_KAFKA;
        if (!err && md && md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0) {
                *ret = md->topics[0].partition_cnt;
                res = CANOPY_OK;
        }
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        return res;
}

static canopy_err produce_keyed(canopy_kafka_producer *kp, canopy_topic t, const char *key, canopy_bytes *v,
                                void *msg_opaque) {
        const char *k = key ? key : "";
        canopy_err err = canopy_kafka_produce(kp, t, k, strlen(k), v->data, v->len, msg_opaque);
        free(v->data);
        return err;
}

canopy_err canopy_kafka_produce_mv(canopy_kafka_producer *kp, const canopy_mv_event *mv, void *msg_opaque,
                                   char *errbuf, size_t errlen) {
        canopy_bytes v = {0};
        canopy_err err = canopy_avro_encode_mv(mv, &v, errbuf, errlen);
        return err ? err : produce_keyed(kp, CANOPY_TOPIC_MV, mv->mv_id, &v, msg_opaque);
}

canopy_err canopy_kafka_produce_export(canopy_kafka_producer *kp, const canopy_export_record *er,
                                       void *msg_opaque, char *errbuf, size_t errlen) {
        canopy_bytes v = {0};
        canopy_err err = canopy_avro_encode_export(er, &v, errbuf, errlen);
        return err ? err : produce_keyed(kp, CANOPY_TOPIC_EXPORTS, er->mv_id, &v, msg_opaque);
}

canopy_err canopy_kafka_produce_run(canopy_kafka_producer *kp, const canopy_run_record *rr, void *msg_opaque,
                                    char *errbuf, size_t errlen) {
        canopy_bytes v = {0};
        canopy_err err = canopy_avro_encode_run(rr, &v, errbuf, errlen);
        return err ? err : produce_keyed(kp, CANOPY_TOPIC_EXPORTS, rr->connector, &v, msg_opaque);
}

canopy_err canopy_kafka_produce_control(canopy_kafka_producer *kp, const canopy_control_event *ce,
                                        void *msg_opaque, char *errbuf, size_t errlen) {
        canopy_bytes v = {0};
        canopy_err err = canopy_avro_encode_control(ce, &v, errbuf, errlen);
        return err ? err : produce_keyed(kp, CANOPY_TOPIC_CONTROL, ce->target, &v, msg_opaque);
}

int canopy_kafka_producer_poll(canopy_kafka_producer *kp, int timeout_ms) {
        return kp ? rd_kafka_poll(kp->rk, timeout_ms) : 0;
}

canopy_err canopy_kafka_producer_flush(canopy_kafka_producer *kp, int timeout_ms) {
        if (!kp)
                return CANOPY_ERR_INVALID_ARG;
        rd_kafka_resp_err_t err = rd_kafka_flush(kp->rk, timeout_ms);
        if (kp->ks.fatal_err)
                return CANOPY_ERR_KAFKA_FATAL;
        return err ? CANOPY_ERR_TIMEOUT : CANOPY_OK;
}

size_t canopy_kafka_producer_outq_len(const canopy_kafka_producer *kp) {
        return kp ? (size_t)rd_kafka_outq_len(kp->rk) : 0;
}

canopy_err canopy_kafka_producer_fatal(canopy_kafka_producer *kp, char *errbuf, size_t errlen) {
        if (!kp || !kp->ks.fatal_err)
                return CANOPY_OK;
        seterr(errbuf, errlen, "%s", kp->ks.fatal);
        return CANOPY_ERR_KAFKA_FATAL;
}

void canopy_kafka_producer_free(canopy_kafka_producer *kp) {
        if (!kp)
                return;
        if (kp->rk) {
                /* Undelivered messages get their callback (SHUTDOWN). */
                rd_kafka_purge(kp->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
                int64_t deadline = mono_ms() + 5000;
                while (rd_kafka_outq_len(kp->rk) > 0 && mono_ms() < deadline)
                        rd_kafka_poll(kp->rk, 50);
                rd_kafka_poll(kp->rk, 0);
                rd_kafka_destroy(kp->rk);
        }
        free(kp);
}

/* ---- consumer ----------------------------------------------------------- */

struct canopy_kafka_consumer {
        rd_kafka_t *rk;
        canopy_kafka_conf conf; /* copy, for the dead-letter producer */
        canopy_kafka_rebalance_cb cb;
        void *opaque;
        struct kstate ks;
        char topics[CANOPY_TOPIC_COUNT][TOPIC_MAX + 1];
        canopy_kafka_producer *dlq;
        uint64_t ndl;
        int closed;
        int sticky;        /* cooperative-sticky assignor configured */
        int assigned_once; /* a first assignment arrived */
        int64_t session_ms;
};

static struct kstate *kstate_of(const rd_kafka_t *rk) {
        void *o = rd_kafka_opaque(rk);
        if (!o)
                return NULL;
        return rd_kafka_type(rk) == RD_KAFKA_CONSUMER ? &((canopy_kafka_consumer *)o)->ks
                                                      : &((canopy_kafka_producer *)o)->ks;
}

static void error_cb_consumer(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
        error_cb(rk, err, reason, &((canopy_kafka_consumer *)opaque)->ks);
}

static void error_cb_producer(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
        error_cb(rk, err, reason, &((canopy_kafka_producer *)opaque)->ks);
}

static canopy_kafka_partition *parts_of(const rd_kafka_topic_partition_list_t *l) {
        canopy_kafka_partition *p = calloc(l->cnt ? (size_t)l->cnt : 1, sizeof(*p));
        for (int i = 0; p && i < l->cnt; i++) {
                p[i].topic = l->elems[i].topic;
                p[i].partition = l->elems[i].partition;
        }
        return p;
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *l,
                         void *opaque) {
        canopy_kafka_consumer *kc = opaque;
        int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
        canopy_kafka_partition *p = parts_of(l);
        size_t n = p ? (size_t)l->cnt : 0;
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                kc->assigned_once = 1;
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "assigned %d partition(s)", l->cnt);
                if (coop)
                        rd_kafka_error_destroy(rd_kafka_incremental_assign(rk, l));
                else
                        rd_kafka_assign(rk, l);
                if (kc->cb)
                        kc->cb(kc, CANOPY_KAFKA_ASSIGNED, p, n, kc->opaque);
        } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
                int lost = rd_kafka_assignment_lost(rk);
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "%s %d partition(s)", lost ? "lost" : "revoked", l->cnt);
                if (kc->cb)
                        kc->cb(kc, lost ? CANOPY_KAFKA_LOST : CANOPY_KAFKA_REVOKED, p, n, kc->opaque);
                if (!lost) {
                        /* Hand over exactly what is done. */
                        rd_kafka_resp_err_t ce = rd_kafka_commit(rk, NULL, 0);
                        if (ce && ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
                                canopy_log(CANOPY_LOG_WARN, MOD, NULL, "commit on revoke failed: %s",
                                           rd_kafka_err2str(ce));
                }
                if (coop)
                        rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, l));
                else
                        rd_kafka_assign(rk, NULL);
        } else {
                canopy_log(CANOPY_LOG_WARN, MOD, NULL, "rebalance error: %s", rd_kafka_err2str(err));
                rd_kafka_assign(rk, NULL);
        }
        free(p);
}

static int has_extra(const canopy_kafka_conf *c, const char *key) {
        size_t kl = strlen(key);
        for (char **p = c->extra; p && *p; p++)
                if (strncmp(*p, key, kl) == 0 && (*p)[kl] == '=')
                        return 1;
        return 0;
}

canopy_err canopy_kafka_consumer_new(const canopy_kafka_conf *conf, const canopy_kafka_consumer_opts *opts,
                                     canopy_kafka_consumer **ret, char *errbuf, size_t errlen) {
        char e[512], num[32];
        canopy_err err;
        if (!conf || !opts || !set(opts->group_id) || !opts->ntopics || !opts->topics || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_kafka_consumer *kc = calloc(1, sizeof(*kc));
        if (!kc)
                return CANOPY_ERR_NOMEM;
        kc->cb = opts->rebalance_cb;
        kc->opaque = opts->opaque;
        if ((err = conf_copy(&kc->conf, conf)))
                goto fail;
        for (int t = 0; t < CANOPY_TOPIC_COUNT; t++)
                if (canopy_kafka_topic_name(conf, (canopy_topic)t, kc->topics[t], sizeof(kc->topics[t]))) {
                        seterr(errbuf, errlen, "kafka.topic_prefix is too long");
                        err = CANOPY_ERR_CONFIG;
                        goto fail;
                }
        rd_kafka_conf_t *rc = build_conf(conf, &kc->ks, errbuf, errlen);
        if (!rc) {
                err = CANOPY_ERR_CONFIG;
                goto fail;
        }
        int64_t st = conf->session_timeout_ms > 0 ? conf->session_timeout_ms : 10000;
        kc->session_ms = st;
        char fwait[24];
        snprintf(fwait, sizeof(fwait), "%lld", (long long)(conf->fetch_wait_max_ms > 0 ? conf->fetch_wait_max_ms : 50));
        kc->sticky = !has_extra(conf, "partition.assignment.strategy");
        for (char **x = conf->extra; x && *x; x++)
                if (!strncmp(*x, "partition.assignment.strategy=", 30) && strstr(*x, "cooperative-sticky"))
                        kc->sticky = 1;
        struct {
                const char *k;
                const char *v;
        } kv[] = {
                {"group.id", opts->group_id},
                {"enable.auto.commit", "false"},
                {"enable.auto.offset.store", "false"},
                {"auto.offset.reset", opts->from_latest ? "latest" : "earliest"},
                {"enable.partition.eof", "false"},
                {"session.timeout.ms", NULL},
                {"heartbeat.interval.ms", NULL},
                {"fetch.wait.max.ms", has_extra(conf, "fetch.wait.max.ms") ? NULL : fwait},
                /* librdkafka prefetches up to 64 MiB and 100000 messages per
                 * partition by default; a worker holds two consumers, so
                 * that prefetch was most of its memory.  8 MiB still covers
                 * several fetches of the largest event. */
                {"queued.max.messages.kbytes", has_extra(conf, "queued.max.messages.kbytes") ? NULL : "8192"},
                {"queued.min.messages", has_extra(conf, "queued.min.messages") ? NULL : "2000"},
                /* Incremental rebalancing: partitions are revoked while the
                 * group is stable, so the commit on revoke is accepted, and
                 * partitions that do not move keep flowing. */
                {"partition.assignment.strategy", has_extra(conf, "partition.assignment.strategy")
                                                          ? NULL
                                                          : "cooperative-sticky"},
        };
        for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
                const char *v = kv[i].v;
                /* NULL: the session's timeouts are derived below; any
                 * other key is left to kafka.extra. */
                bool timing = !strcmp(kv[i].k, "session.timeout.ms") || !strcmp(kv[i].k, "heartbeat.interval.ms");
                if (!v && !timing)
                        continue;
                if (!v) {
                        snprintf(num, sizeof(num), "%lld",
                                 (long long)(strcmp(kv[i].k, "session.timeout.ms") == 0 ? st : (st / 3 > 0 ? st / 3 : 1)));
                        v = num;
                }
                if (rd_kafka_conf_set(rc, kv[i].k, v, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
                        seterr(errbuf, errlen, "consumer config %s: %s", kv[i].k, e);
                        rd_kafka_conf_destroy(rc);
                        err = CANOPY_ERR_CONFIG;
                        goto fail;
                }
        }
        rd_kafka_conf_set_rebalance_cb(rc, rebalance_cb);
        rd_kafka_conf_set_error_cb(rc, error_cb_consumer);
        rd_kafka_conf_set_opaque(rc, kc);
        kc->rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, e, sizeof(e));
        if (!kc->rk) {
                seterr(errbuf, errlen, "cannot create Kafka consumer: %s", e);
                rd_kafka_conf_destroy(rc);
                err = CANOPY_ERR_CONFIG;
                goto fail;
        }
        rd_kafka_poll_set_consumer(kc->rk);
        if ((err = startup_check(kc->rk, conf, &kc->ks, errbuf, errlen)))
                goto fail;
        rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new((int)opts->ntopics);
        for (size_t i = 0; i < opts->ntopics; i++) {
                if ((unsigned)opts->topics[i] >= CANOPY_TOPIC_COUNT) {
                        rd_kafka_topic_partition_list_destroy(sub);
                        err = CANOPY_ERR_INVALID_ARG;
                        goto fail;
                }
                rd_kafka_topic_partition_list_add(sub, kc->topics[opts->topics[i]], RD_KAFKA_PARTITION_UA);
        }
        rd_kafka_resp_err_t se = rd_kafka_subscribe(kc->rk, sub);
        rd_kafka_topic_partition_list_destroy(sub);
        if (se) {
                seterr(errbuf, errlen, "subscribe failed: %s", rd_kafka_err2str(se));
                err = CANOPY_ERR_KAFKA;
                goto fail;
        }
        *ret = kc;
        return CANOPY_OK;
fail:
        if (kc->rk) {
                kc->closed = 1;
                rd_kafka_destroy(kc->rk);
                kc->rk = NULL;
        }
        canopy_kafka_consumer_free(kc);
        return err;
}

canopy_err canopy_kafka_consume(canopy_kafka_consumer *kc, int timeout_ms, canopy_kafka_msg **ret) {
        if (!kc || !ret)
                return CANOPY_ERR_INVALID_ARG;
        *ret = NULL;
        if (kc->ks.fatal_err)
                return CANOPY_ERR_KAFKA_FATAL;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(kc->rk, timeout_ms);
        if (!m)
                return kc->ks.fatal_err ? CANOPY_ERR_KAFKA_FATAL : CANOPY_ERR_TIMEOUT;
        if (m->err) {
                rd_kafka_resp_err_t err = m->err;
                if (err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        canopy_log_ctx ctx = {NULL, NULL, m->rkt ? rd_kafka_topic_name(m->rkt) : NULL, m->partition,
                                              m->offset};
                        canopy_log(CANOPY_LOG_WARN, MOD, &ctx, "consume: %s", rd_kafka_message_errstr(m));
                }
                rd_kafka_message_destroy(m);
                return err == RD_KAFKA_RESP_ERR__FATAL ? CANOPY_ERR_KAFKA_FATAL : CANOPY_ERR_TIMEOUT;
        }
        canopy_kafka_msg *cm = calloc(1, sizeof(*cm));
        if (!cm) {
                /* Not consumed: seek back so it is delivered again. */
                rd_kafka_seek(m->rkt, m->partition, m->offset, 0);
                rd_kafka_message_destroy(m);
                return CANOPY_ERR_NOMEM;
        }
        cm->topic = rd_kafka_topic_name(m->rkt);
        cm->topic_id = CANOPY_TOPIC_COUNT;
        for (int t = 0; t < CANOPY_TOPIC_COUNT; t++)
                if (strcmp(cm->topic, kc->topics[t]) == 0)
                        cm->topic_id = (canopy_topic)t;
        cm->partition = m->partition;
        cm->offset = m->offset;
        cm->key = m->key;
        cm->keylen = m->key_len;
        cm->value = m->payload;
        cm->len = m->len;
        cm->ts_ms = rd_kafka_message_timestamp(m, NULL);
        cm->priv_ = m;
        *ret = cm;
        return CANOPY_OK;
}

void canopy_kafka_msg_free(canopy_kafka_msg *m) {
        if (!m)
                return;
        rd_kafka_message_destroy(m->priv_);
        free(m);
}

static canopy_err store(canopy_kafka_consumer *kc, const char *topic, int32_t partition, int64_t next) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, partition)->offset = next;
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(kc->rk, l);
        if (!err && l->elems[0].err)
                err = l->elems[0].err;
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                /* _STATE: the partition is no longer ours (revoked); its new
                 * owner will process the message again (at least once). */
                canopy_log_ctx ctx = {NULL, NULL, topic, partition, next - 1};
                canopy_log(CANOPY_LOG_WARN, MOD, &ctx, "offset store failed: %s", rd_kafka_err2str(err));
                return CANOPY_ERR_KAFKA;
        }
        return CANOPY_OK;
}

canopy_err canopy_kafka_mark_done(canopy_kafka_consumer *kc, const canopy_kafka_msg *m) {
        if (!kc || !m)
                return CANOPY_ERR_INVALID_ARG;
        return store(kc, m->topic, m->partition, m->offset + 1);
}

canopy_err canopy_kafka_commit(canopy_kafka_consumer *kc, bool sync) {
        if (!kc)
                return CANOPY_ERR_INVALID_ARG;
        rd_kafka_resp_err_t err = rd_kafka_commit(kc->rk, NULL, sync ? 0 : 1);
        if (!err || err == RD_KAFKA_RESP_ERR__NO_OFFSET)
                return CANOPY_OK;
        canopy_log(CANOPY_LOG_WARN, MOD, NULL, "commit failed: %s", rd_kafka_err2str(err));
        return err == RD_KAFKA_RESP_ERR__FATAL ? CANOPY_ERR_KAFKA_FATAL : CANOPY_ERR_KAFKA;
}

canopy_err canopy_kafka_commit_offset(canopy_kafka_consumer *kc, const char *topic, int32_t partition,
                                      int64_t next_offset) {
        if (!kc || !topic || next_offset < 0)
                return CANOPY_ERR_INVALID_ARG;
        /* Store too, so that a later commit of stored offsets cannot go back. */
        store(kc, topic, partition, next_offset);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, partition)->offset = next_offset;
        rd_kafka_resp_err_t err = rd_kafka_commit(kc->rk, l, 0);
        if (!err && l->elems[0].err)
                err = l->elems[0].err;
        rd_kafka_topic_partition_list_destroy(l);
        if (err) {
                canopy_log_ctx ctx = {NULL, NULL, topic, partition, next_offset};
                canopy_log(CANOPY_LOG_WARN, MOD, &ctx, "commit failed: %s", rd_kafka_err2str(err));
                return CANOPY_ERR_KAFKA;
        }
        return CANOPY_OK;
}

canopy_err canopy_kafka_committed(canopy_kafka_consumer *kc, const char *topic, int32_t partition,
                                  int64_t *ret, int timeout_ms) {
        if (!kc || !topic || !ret)
                return CANOPY_ERR_INVALID_ARG;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, partition);
        rd_kafka_resp_err_t err = rd_kafka_committed(kc->rk, l, timeout_ms);
        if (!err && l->elems[0].err)
                err = l->elems[0].err;
        int64_t off = l->elems[0].offset;
        rd_kafka_topic_partition_list_destroy(l);
        if (err)
                return err == RD_KAFKA_RESP_ERR__TIMED_OUT ? CANOPY_ERR_TIMEOUT : CANOPY_ERR_KAFKA;
        *ret = off >= 0 ? off : -1;
        return CANOPY_OK;
}

static canopy_err pause_resume(canopy_kafka_consumer *kc, const char *topic, int32_t partition, int pause) {
        rd_kafka_topic_partition_list_t *l = NULL;
        if (!kc)
                return CANOPY_ERR_INVALID_ARG;
        if (topic) {
                l = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(l, topic, partition);
        } else if (rd_kafka_assignment(kc->rk, &l)) {
                return CANOPY_ERR_KAFKA;
        }
        rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(kc->rk, l) : rd_kafka_resume_partitions(kc->rk, l);
        for (int i = 0; !err && i < l->cnt; i++)
                if (l->elems[i].err)
                        err = l->elems[i].err;
        rd_kafka_topic_partition_list_destroy(l);
        return err ? CANOPY_ERR_KAFKA : CANOPY_OK;
}

canopy_err canopy_kafka_pause(canopy_kafka_consumer *kc, const char *topic, int32_t partition) {
        return pause_resume(kc, topic, partition, 1);
}

canopy_err canopy_kafka_resume(canopy_kafka_consumer *kc, const char *topic, int32_t partition) {
        return pause_resume(kc, topic, partition, 0);
}

canopy_err canopy_kafka_assignment(canopy_kafka_consumer *kc, canopy_kafka_partition **ret, size_t *ret_n) {
        rd_kafka_topic_partition_list_t *l = NULL;
        if (!kc || !ret || !ret_n)
                return CANOPY_ERR_INVALID_ARG;
        if (rd_kafka_assignment(kc->rk, &l))
                return CANOPY_ERR_KAFKA;
        canopy_kafka_partition *p = calloc(l->cnt ? (size_t)l->cnt : 1, sizeof(*p));
        if (!p) {
                rd_kafka_topic_partition_list_destroy(l);
                return CANOPY_ERR_NOMEM;
        }
        for (int i = 0; i < l->cnt; i++) {
                /* topic strings must outlive the list: use our own names */
                p[i].topic = NULL;
                for (int t = 0; t < CANOPY_TOPIC_COUNT; t++)
                        if (strcmp(l->elems[i].topic, kc->topics[t]) == 0)
                                p[i].topic = kc->topics[t];
                p[i].partition = l->elems[i].partition;
        }
        *ret_n = (size_t)l->cnt;
        *ret = p;
        rd_kafka_topic_partition_list_destroy(l);
        return CANOPY_OK;
}

canopy_err canopy_kafka_consumer_lag(canopy_kafka_consumer *kc, int64_t *ret) {
        rd_kafka_topic_partition_list_t *l = NULL;
        if (!kc || !ret)
                return CANOPY_ERR_INVALID_ARG;
        if (rd_kafka_assignment(kc->rk, &l))
                return CANOPY_ERR_KAFKA;
        int64_t lag = 0;
        if (l->cnt && rd_kafka_position(kc->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR)
                for (int i = 0; i < l->cnt; i++) {
                        int64_t lo = -1, hi = -1, pos = l->elems[i].offset;
                        /* no position yet (nothing read from it): unknown, not counted */
                        if (pos < 0 || rd_kafka_get_watermark_offsets(kc->rk, l->elems[i].topic,
                                                                      l->elems[i].partition, &lo, &hi) ||
                            hi < 0)
                                continue;
                        if (hi > pos)
                                lag += hi - pos;
                }
        rd_kafka_topic_partition_list_destroy(l);
        *ret = lag;
        return CANOPY_OK;
}

/* ---- dead letters ------------------------------------------------------- */

struct dl_wait {
        int done;
        int abandoned;
        canopy_err err;
        int64_t offset;
};

static void dl_delivered(void *msg_opaque, canopy_err err, const char *errstr, int32_t partition, int64_t offset,
                         void *app) {
        struct dl_wait *w = msg_opaque;
        (void)errstr;
        (void)partition;
        (void)app;
        if (w->abandoned) {
                free(w);
                return;
        }
        w->done = 1;
        w->err = err;
        w->offset = offset;
}

canopy_err canopy_kafka_dead_letter(canopy_kafka_consumer *kc, const canopy_kafka_msg *m, canopy_err err,
                                    const char *reason) {
        char ebuf[CANOPY_AVRO_ERRLEN + 64], rbuf[1024];
        canopy_err e;
        if (!kc || !m)
                return CANOPY_ERR_INVALID_ARG;
        if (!kc->dlq && (e = canopy_kafka_producer_new(&kc->conf, dl_delivered, NULL, &kc->dlq, ebuf, sizeof(ebuf)))) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "dead-letter producer: %s", ebuf);
                return e;
        }
        canopy_dead_letter dl = {0};
        dl.topic = (char *)m->topic;
        dl.partition = m->partition;
        dl.offset = m->offset;
        dl.key.data = (uint8_t *)m->key;
        dl.key.len = m->key ? m->keylen : 0;
        dl.payload.data = (uint8_t *)m->value;
        dl.payload.len = m->value ? m->len : 0;
        snprintf(rbuf, sizeof(rbuf), "%s", reason ? reason : canopy_err_text(err));
        /* A payload too large for a DeadLetter is cut; the reason says so.
         * The cap stays under Kafka's default message.max.bytes (1,000,000)
         * so that the broker accepts the dead letter of an oversize event. */
        size_t room = 512 * 1024;
        if (dl.payload.len > room) {
                size_t l = strlen(rbuf);
                snprintf(rbuf + l, sizeof(rbuf) - l, " (payload of %zu bytes truncated to %zu)", dl.payload.len, room);
                dl.payload.len = room;
        }
        if (dl.key.len > 64 * 1024 - 1024)
                dl.key.len = 64 * 1024 - 1024;
        dl.reason = rbuf;
        dl.error_class = (char *)canopy_err_class_name(canopy_err_class_of(err));
        dl.error_code = (char *)canopy_err_name(err);
        dl.ts_ms = now_ms();
        canopy_bytes v = {0};
        if ((e = canopy_avro_encode_dead_letter(&dl, &v, ebuf, sizeof(ebuf)))) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "dead letter encode: %s", ebuf);
                return e;
        }
        struct dl_wait *w = calloc(1, sizeof(*w));
        if (!w) {
                free(v.data);
                return CANOPY_ERR_NOMEM;
        }
        e = canopy_kafka_produce(kc->dlq, CANOPY_TOPIC_DLQ, m->key, dl.key.len, v.data, v.len, w);
        free(v.data);
        if (e) {
                free(w);
                return e;
        }
        int64_t deadline = mono_ms() + DLQ_WAIT_MS;
        while (!w->done && mono_ms() < deadline)
                canopy_kafka_producer_poll(kc->dlq, 100);
        canopy_log_ctx ctx = {NULL, NULL, m->topic, m->partition, m->offset};
        if (!w->done) {
                w->abandoned = 1; /* freed by its late delivery report */
                canopy_log(CANOPY_LOG_ERROR, MOD, &ctx, "dead letter not acknowledged within %d ms", DLQ_WAIT_MS);
                return CANOPY_ERR_TIMEOUT;
        }
        e = w->err;
        free(w);
        if (e) {
                canopy_log(CANOPY_LOG_ERROR, MOD, &ctx, "dead letter not delivered: %s", canopy_err_name(e));
                return e;
        }
        kc->ndl++;
        canopy_log(CANOPY_LOG_WARN, MOD, &ctx, "dead-lettered to %s: %s: %s", kc->topics[CANOPY_TOPIC_DLQ],
                   canopy_err_name(err), rbuf);
        return canopy_kafka_mark_done(kc, m);
}

uint64_t canopy_kafka_dead_letter_count(const canopy_kafka_consumer *kc) {
        return kc ? kc->ndl : 0;
}

uint64_t canopy_kafka_consumer_lost(canopy_kafka_consumer *kc) {
        return kc ? atomic_load(&kc->ks.lost) : 0;
}

canopy_err canopy_kafka_consumer_close(canopy_kafka_consumer *kc) {
        if (!kc || !kc->rk || kc->closed)
                return CANOPY_OK;
        canopy_err err = canopy_kafka_commit(kc, true);
        /* librdkafka before 2.3 asserts when a cooperative-sticky consumer is
         * destroyed after it joined its group but before its first
         * assignment (its assignor state is still NULL; librdkafka issue
         * 4312, fixed by PR 4381). A consumer stopped that early waits, for
         * at most a session timeout, for that assignment. Messages polled
         * meanwhile are dropped unprocessed: their offsets are not stored,
         * so the group reads them again. */
        if (kc->sticky && !kc->assigned_once && rd_kafka_version() < 0x020300ff) {
                int64_t until = mono_ms() + kc->session_ms + 2000;
                while (!kc->assigned_once && mono_ms() < until) {
                        rd_kafka_message_t *m = rd_kafka_consumer_poll(kc->rk, 100);
                        if (m)
                                rd_kafka_message_destroy(m);
                }
        }
        rd_kafka_resp_err_t ce = rd_kafka_consumer_close(kc->rk);
        kc->closed = 1;
        if (ce && !err)
                err = CANOPY_ERR_KAFKA;
        return err;
}

void canopy_kafka_consumer_free(canopy_kafka_consumer *kc) {
        if (!kc)
                return;
        if (kc->rk) {
                canopy_kafka_consumer_close(kc);
                rd_kafka_destroy(kc->rk);
        }
        if (kc->dlq) {
                canopy_kafka_producer_flush(kc->dlq, 5000);
                canopy_kafka_producer_free(kc->dlq);
        }
        canopy_kafka_conf_free(&kc->conf);
        free(kc);
}

/* ---- consumer group positions (canopyctl replay) ------------------------- */

/* Set one librdkafka property or fail with its name. */
static canopy_err conf_put(rd_kafka_conf_t *rc, const char *k, const char *v, char *errbuf, size_t errlen) {
        char e[256];
        if (rd_kafka_conf_set(rc, k, v, e, sizeof(e)) == RD_KAFKA_CONF_OK)
                return CANOPY_OK;
        seterr(errbuf, errlen, "consumer config %s: %s", k, e);
        return CANOPY_ERR_CONFIG;
}

/* A consumer handle: of `group` (joining it) or, group NULL, one that only
 * reads the partitions it assigns itself (librdkafka 2.0 still wants a
 * group id for that: a private one, never joined, never committed to). */
static rd_kafka_t *seek_client(const canopy_kafka_conf *conf, const char *group, struct kstate *ks, char *errbuf,
                               size_t errlen) {
        char e[512], st[24], probe[64];
        bool joins = group != NULL;
        if (!joins) {
                snprintf(probe, sizeof(probe), "canopy-seek-probe-%lld-%d", (long long)now_ms(), (int)getpid());
                group = probe;
        }
        rd_kafka_conf_t *rc = build_conf(conf, ks, errbuf, errlen);
        if (!rc)
                return NULL;
        snprintf(st, sizeof(st), "%lld", (long long)(conf->session_timeout_ms > 0 ? conf->session_timeout_ms : 10000));
        const char *kv[][2] = {
                {"enable.auto.commit", "false"},
                {"enable.auto.offset.store", "false"},
                {"enable.partition.eof", "false"},
                {"fetch.wait.max.ms", "10"},
                {"queued.max.messages.kbytes", "1024"},
                {"queued.min.messages", "1"},
                {"group.id", group},
                {"session.timeout.ms", joins ? st : NULL},
                {"partition.assignment.strategy",
                 joins && !has_extra(conf, "partition.assignment.strategy") ? "cooperative-sticky" : NULL},
        };
        for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
                if (kv[i][1] && conf_put(rc, kv[i][0], kv[i][1], errbuf, errlen)) {
                        rd_kafka_conf_destroy(rc);
                        return NULL;
                }
        rd_kafka_conf_set_error_cb(rc, error_cb);
        rd_kafka_conf_set_opaque(rc, ks);
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, e, sizeof(e));
        if (!rk) {
                seterr(errbuf, errlen, "cannot create Kafka consumer: %s", e);
                rd_kafka_conf_destroy(rc);
                return NULL;
        }
        rd_kafka_poll_set_consumer(rk);
        if (startup_check(rk, conf, ks, errbuf, errlen)) {
                rd_kafka_destroy(rk);
                return NULL;
        }
        return rk;
}

/* Timestamp of the first message at or after `off` in partition p. */
static canopy_err ts_at(rd_kafka_t *rd, const char *topic, int32_t p, int64_t off, int64_t *ts, char *errbuf,
                        size_t errlen) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = off;
        rd_kafka_resp_err_t ae = rd_kafka_assign(rd, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ae) {
                seterr(errbuf, errlen, "%s [%d]: cannot read offset %lld: %s", topic, p, (long long)off,
                       rd_kafka_err2str(ae));
                return CANOPY_ERR_KAFKA;
        }
        for (int64_t end = mono_ms() + 15000; mono_ms() < end;) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(rd, 200);
                if (!m)
                        continue;
                bool hit = !m->err && m->partition == p && m->offset >= off;
                if (hit)
                        *ts = rd_kafka_message_timestamp(m, NULL);
                rd_kafka_message_destroy(m);
                if (hit)
                        return CANOPY_OK;
        }
        seterr(errbuf, errlen, "%s [%d]: no message read at offset %lld within 15 s", topic, p, (long long)off);
        return CANOPY_ERR_TIMEOUT;
}

/* The first offset in [lo, hi) whose timestamp is at or after t_ms, or hi.
 * Timestamps grow with the offset within a partition (CreateTime of one
 * writer per key); where writers interleave, the search lands a little
 * early, which a replay tolerates: it re-reads, it never skips. */
static canopy_err offset_for_time(rd_kafka_t *rd, const char *topic, int32_t p, int64_t lo, int64_t hi, int64_t t_ms,
                                  int64_t *ret, char *errbuf, size_t errlen) {
        int64_t ts;
        canopy_err err;
        if (lo >= hi) {
                *ret = hi;
                return CANOPY_OK;
        }
        if ((err = ts_at(rd, topic, p, hi - 1, &ts, errbuf, errlen)))
                return err;
        if (ts < t_ms) {
                *ret = hi;
                return CANOPY_OK;
        }
        int64_t a = lo, b = hi - 1; /* ts(b) >= t_ms */
        while (a < b) {
                int64_t mid = a + (b - a) / 2;
                if ((err = ts_at(rd, topic, p, mid, &ts, errbuf, errlen)))
                        return err;
                if (ts >= t_ms)
                        b = mid;
                else
                        a = mid + 1;
        }
        *ret = a;
        return CANOPY_OK;
}

/* Join the group and wait until this member holds all n partitions. */
static canopy_err hold_all(rd_kafka_t *rk, const canopy_kafka_conf *conf, const char *group, const char *topic,
                           int n, char *errbuf, size_t errlen) {
        rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
        rd_kafka_resp_err_t se = rd_kafka_subscribe(rk, sub);
        rd_kafka_topic_partition_list_destroy(sub);
        if (se) {
                seterr(errbuf, errlen, "cannot join group %s: %s", group, rd_kafka_err2str(se));
                return CANOPY_ERR_KAFKA;
        }
        int64_t st = conf->session_timeout_ms > 0 ? conf->session_timeout_ms : 10000, start = mono_ms();
        int held = 0, was = -1;
        int64_t since = mono_ms();
        for (int64_t end = mono_ms() + st + 15000; mono_ms() < end;) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
                if (m)
                        rd_kafka_message_destroy(m); /* read, never marked: nothing is committed for it */
                rd_kafka_topic_partition_list_t *a = NULL;
                if (rd_kafka_assignment(rk, &a) == RD_KAFKA_RESP_ERR_NO_ERROR && a) {
                        held = a->cnt;
                        rd_kafka_topic_partition_list_destroy(a);
                }
                if (held == n)
                        return CANOPY_OK;
                if (held != was) {
                        was = held;
                        since = mono_ms();
                }
                /* Some partitions, and no more for a while: live members
                 * hold the others (a dead one would have held up the
                 * rebalance itself until its session expired). */
                if (held > 0 && mono_ms() - since > 3000)
                        break;
        }
        seterr(errbuf, errlen,
               "consumer group %s still has other members (after %lld s): they hold %d of the %d partitions of %s. "
               "Stop every canopy-worker that uses this group first (a worker killed less than kafka.session_timeout "
               "ago still counts), then run this again; nothing was moved",
               group, (long long)((mono_ms() - start) / 1000), n - held, n, topic);
        return CANOPY_ERR_CONFLICT;
}

canopy_err canopy_kafka_group_seek(const canopy_kafka_conf *conf, const char *group, canopy_topic t, int64_t to,
                                   bool dry_run, canopy_kafka_group_pos **ret, size_t *nret, char *errbuf,
                                   size_t errlen) {
        char topic[TOPIC_MAX + 1];
        struct kstate ks = {0}, rks = {0};
        canopy_err err = CANOPY_OK;
        rd_kafka_t *rk = NULL, *rd = NULL;
        rd_kafka_topic_partition_list_t *l = NULL;
        canopy_kafka_group_pos *pos = NULL;
        int64_t *by_time = NULL;
        const struct rd_kafka_metadata *md = NULL;
        if (!conf || !set(group) || (unsigned)t >= CANOPY_TOPIC_COUNT || !ret || !nret || to < CANOPY_KAFKA_AT_BEGINNING)
                return CANOPY_ERR_INVALID_ARG;
        *ret = NULL;
        *nret = 0;
        if (canopy_kafka_topic_name(conf, t, topic, sizeof(topic))) {
                seterr(errbuf, errlen, "kafka.topic_prefix is too long");
                return CANOPY_ERR_CONFIG;
        }
        if (!(rk = seek_client(conf, group, &ks, errbuf, errlen)))
                return CANOPY_ERR_KAFKA_UNREACHABLE;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
        rd_kafka_resp_err_t me = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
        rd_kafka_topic_destroy(rkt);
        if (me || !md || md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt <= 0) {
                seterr(errbuf, errlen, "topic %s: %s", topic,
                       me ? rd_kafka_err2str(me)
                          : md && md->topic_cnt == 1 && md->topics[0].err ? rd_kafka_err2str(md->topics[0].err)
                                                                          : "no partitions");
                err = CANOPY_ERR_NOT_FOUND;
                goto out;
        }
        int n = md->topics[0].partition_cnt;
        if ((err = hold_all(rk, conf, group, topic, n, errbuf, errlen)))
                goto out;
        if (!(pos = calloc((size_t)n, sizeof(*pos))) || !(l = rd_kafka_topic_partition_list_new(n))) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (int p = 0; p < n; p++)
                rd_kafka_topic_partition_list_add(l, topic, p);
        rd_kafka_resp_err_t ce = rd_kafka_committed(rk, l, 10000);
        if (ce) {
                seterr(errbuf, errlen, "cannot read the committed positions of group %s: %s", group,
                       rd_kafka_err2str(ce));
                err = CANOPY_ERR_KAFKA;
                goto out;
        }
        /* By time: the broker's offset look-up first (ListOffsets); the dev
         * broker answers -1 for every time, and so does a broker with no
         * message at or after it: those partitions are searched. */
        if (to >= 0) {
                rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(n);
                for (int p = 0; p < n; p++)
                        rd_kafka_topic_partition_list_add(tl, topic, p)->offset = to;
                if ((by_time = calloc((size_t)n, sizeof(*by_time)))) {
                        bool ok = rd_kafka_offsets_for_times(rk, tl, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR;
                        for (int p = 0; p < n; p++)
                                by_time[p] = ok && !tl->elems[p].err ? tl->elems[p].offset : -1;
                }
                rd_kafka_topic_partition_list_destroy(tl);
                if (!by_time) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
        }
        for (int p = 0; p < n; p++) {
                canopy_kafka_group_pos *g = &pos[p];
                g->partition = p;
                g->committed = l->elems[p].offset >= 0 ? l->elems[p].offset : -1;
                rd_kafka_resp_err_t we = rd_kafka_query_watermark_offsets(rk, topic, p, &g->low, &g->high, 10000);
                if (we) {
                        seterr(errbuf, errlen, "%s [%d]: cannot read the offsets the broker holds: %s", topic, p,
                               rd_kafka_err2str(we));
                        err = CANOPY_ERR_KAFKA;
                        goto out;
                }
                if (to == CANOPY_KAFKA_AT_BEGINNING)
                        g->target = g->low;
                else if (to == CANOPY_KAFKA_AT_END)
                        g->target = g->high;
                else if (by_time[p] >= 0)
                        g->target = by_time[p];
                else {
                        if (!rd && !(rd = seek_client(conf, NULL, &rks, errbuf, errlen))) {
                                err = CANOPY_ERR_KAFKA_UNREACHABLE;
                                goto out;
                        }
                        if ((err = offset_for_time(rd, topic, p, g->low, g->high, to, &g->target, errbuf, errlen)))
                                goto out;
                }
                l->elems[p].offset = g->target;
        }
        if (!dry_run) {
                rd_kafka_resp_err_t cm = rd_kafka_commit(rk, l, 0);
                for (int p = 0; !cm && p < n; p++)
                        cm = l->elems[p].err;
                if (cm) {
                        seterr(errbuf, errlen, "commit of the new positions of group %s failed: %s", group,
                               rd_kafka_err2str(cm));
                        err = CANOPY_ERR_KAFKA;
                        goto out;
                }
        }
        *ret = pos;
        *nret = (size_t)n;
        pos = NULL;
out:
        free(by_time);
        if (md)
                rd_kafka_metadata_destroy(md);
        if (l)
                rd_kafka_topic_partition_list_destroy(l);
        free(pos);
        if (rd) {
                rd_kafka_consumer_close(rd);
                rd_kafka_destroy(rd);
        }
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return err;
}
