/* canopy/kafka.h: Canopy's Kafka layer (topics, producer, consumer, dead
 * letters) over librdkafka. librdkafka types never leave lib/src/kafka.c.
 * Operator documentation: docs/KAFKA.md.
 *
 * Topics live under a configurable prefix: "<prefix>changes", "<prefix>mv",
 * "<prefix>exports", "<prefix>dlq", "<prefix>control" (default prefix
 * "canopy.").
 *
 * Delivery is at least once, end to end:
 *  - the producer is idempotent (enable.idempotence=true, acks=all); the
 *    caller's per-message opaque comes back in the delivery callback, so a
 *    producer checkpoints (saves its cookie) only what Kafka confirmed;
 *  - the consumer never commits by itself: the application marks a message
 *    done after its effect is recorded (canopy_kafka_mark_done) and commits
 *    (canopy_kafka_commit) or commits one offset explicitly
 *    (canopy_kafka_commit_offset). On a rebalance that revokes partitions,
 *    the application callback runs first, then everything marked done is
 *    committed synchronously before the partitions go;
 *  - a message that cannot be decoded is a poison message: the application
 *    calls canopy_kafka_dead_letter(), which publishes a DeadLetter record
 *    (original topic, partition, offset, key, payload, reason, error code)
 *    to the dlq topic, waits for its acknowledgement, and marks the original
 *    done, so the pipeline goes on.
 *
 * Threads: a producer may be used from several threads (produce is
 * thread-safe); delivery callbacks run in the thread that calls
 * canopy_kafka_producer_poll()/flush(). A consumer belongs to one thread;
 * the rebalance callback runs inside canopy_kafka_consume().
 */
#ifndef CANOPY_KAFKA_H
#define CANOPY_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/config.h"
#include "canopy/err.h"
#include "canopy/event.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- configuration ------------------------------------------------------ */

/* Kafka settings; services embed one in their config struct and put
 * CANOPY_KAFKA_CONF_DEFS(their struct, member) in their config table. All
 * strings owned by the struct (freed by canopy_conf_free() of the service
 * table, or canopy_kafka_conf_free() when filled by hand). */
typedef struct canopy_kafka_conf {
        char *brokers;              /* "host:port,host:port" (bootstrap.servers) */
        char *topic_prefix;         /* prefix of every topic name, default "canopy." */
        char *client_id;            /* client.id; NULL = "canopy" */
        char *security_protocol;    /* plaintext | ssl | sasl_plaintext | sasl_ssl */
        char *sasl_mechanism;       /* PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512; NULL = unset */
        char *sasl_username;
        char *sasl_password;        /* secret: never logged */
        char *ssl_ca_location;      /* CA file for ssl / sasl_ssl */
        char **extra;               /* NULL-terminated "key=value" librdkafka properties, passed through */
        int64_t startup_timeout_ms; /* bounded wait for a first broker at start-up */
        int64_t session_timeout_ms; /* consumer group session.timeout.ms */
        int64_t fetch_wait_max_ms;  /* consumer fetch.wait.max.ms (0: 50 ms) */
        char **writer_schemas;      /* NULL-terminated .avsc files of newer writers (canopy_kafka_register_schemas) */
} canopy_kafka_conf;

/* Config table rows for a canopy_kafka_conf member `member` of the service
 * struct `stype`, keys kafka.* (see docs/KAFKA.md and docs/CONFIG.md):
 *   kafka.brokers, kafka.topic_prefix, kafka.client_id,
 *   kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username,
 *   kafka.sasl_password (secret, env CANOPY_KAFKA_SASL_PASSWORD or
 *   kafka.sasl_password_file), kafka.ssl_ca_location, kafka.extra (list of
 *   "key=value"), kafka.startup_timeout, kafka.session_timeout,
 *   kafka.fetch_wait_max, kafka.writer_schemas.
 * Usage:
 *   static const canopy_conf_def defs[] = {
 *           CANOPY_KAFKA_CONF_DEFS(struct worker_conf, kafka),
 *           {"worker.threads", ...},
 *   };
 */
#define CANOPY_KAFKA_CONF_DEFS(stype, member)                                                                \
        {"kafka.brokers", CANOPY_CT_STR, "127.0.0.1:9092", 0, -1, 0, "CANOPY_KAFKA_BROKERS", NULL,           \
         "Kafka bootstrap servers, comma-separated host:port.", offsetof(stype, member.brokers)},            \
        {"kafka.topic_prefix", CANOPY_CT_STR, "canopy.", 0, -1, 0, "CANOPY_KAFKA_TOPIC_PREFIX", NULL,        \
         "Prefix of every Canopy topic: <prefix>changes, mv, exports, dlq, control.",                        \
         offsetof(stype, member.topic_prefix)},                                                              \
        {"kafka.client_id", CANOPY_CT_STR, "canopy", 0, -1, 0, NULL, NULL,                                   \
         "Kafka client.id (shows in broker logs and quotas).", offsetof(stype, member.client_id)},           \
        {"kafka.security_protocol", CANOPY_CT_ENUM, "plaintext", 0, -1, 0, NULL,                             \
         "plaintext|ssl|sasl_plaintext|sasl_ssl", "Kafka security.protocol.",                                \
         offsetof(stype, member.security_protocol)},                                                         \
        {"kafka.sasl_mechanism", CANOPY_CT_STR, NULL, 0, -1, 0, NULL, NULL,                                  \
         "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", offsetof(stype, member.sasl_mechanism)},  \
        {"kafka.sasl_username", CANOPY_CT_STR, NULL, 0, -1, 0, "CANOPY_KAFKA_SASL_USERNAME", NULL,           \
         "SASL user name.", offsetof(stype, member.sasl_username)},                                          \
        {"kafka.sasl_password", CANOPY_CT_SECRET, NULL, 0, -1, 0, "CANOPY_KAFKA_SASL_PASSWORD", NULL,        \
         "SASL password (secret; or kafka.sasl_password_file).", offsetof(stype, member.sasl_password)},     \
        {"kafka.ssl_ca_location", CANOPY_CT_STR, NULL, 0, -1, 0, NULL, NULL,                                 \
         "CA certificate file that signs the brokers' certificates.",                                        \
         offsetof(stype, member.ssl_ca_location)},                                                           \
        {"kafka.extra", CANOPY_CT_LIST, NULL, 0, -1, 0, NULL, NULL,                                          \
         "Extra librdkafka properties as \"key=value\" strings, passed through unchanged.",                  \
         offsetof(stype, member.extra)},                                                                     \
        {"kafka.startup_timeout", CANOPY_CT_DURATION, "15s", 100, 600000, 0, NULL, NULL,                     \
         "How long start-up waits for a reachable broker before failing.",                                   \
         offsetof(stype, member.startup_timeout_ms)},                                                        \
        {"kafka.session_timeout", CANOPY_CT_DURATION, "10s", 1000, 300000, 0, NULL, NULL,                    \
         "Consumer group session timeout: how fast a dead worker's partitions move.",                        \
         offsetof(stype, member.session_timeout_ms)},                                                        \
        {"kafka.fetch_wait_max", CANOPY_CT_DURATION, "50ms", 1, 10000, 0, NULL, NULL,                        \
         "Longest a consumer's fetch waits at the broker when there is no data (fetch.wait.max.ms): "        \
         "bounds each stage's hop latency on brokers that hold an empty fetch that long "                    \
         "(canopy-devkafka does); lower costs more idle fetches. kafka.extra overrides it.",                 \
         offsetof(stype, member.fetch_wait_max_ms)},                                                         \
        {"kafka.writer_schemas", CANOPY_CT_LIST, NULL, 0, -1, 0, NULL, NULL,                                 \
         "Schema files (.avsc) of records written by newer Canopy versions, registered at start-up so that " \
         "this process reads their events during a rolling upgrade (schemas/ of the newer release).",        \
         offsetof(stype, member.writer_schemas)}

/* Number of rows CANOPY_KAFKA_CONF_DEFS expands to. */
#define CANOPY_KAFKA_CONF_NDEFS 13

/* Fill *c with the defaults above (strings owned by *c). For tools and tests
 * that do not go through the config module. brokers may be NULL (default). */
canopy_err canopy_kafka_conf_init(canopy_kafka_conf *c, const char *brokers);
/* Free the strings of *c (not c itself). NULL allowed. */
void canopy_kafka_conf_free(canopy_kafka_conf *c);
/* Register the writer schemas of c->writer_schemas (canopy_avro_register_schema;
 * the version is read from the schema's doc, "Version N."). Call at start-up,
 * before any decode. A file that cannot be read or is not one of Canopy's
 * records: CANOPY_ERR_CONFIG, errbuf naming the file and what is wrong. */
canopy_err canopy_kafka_register_schemas(const canopy_kafka_conf *c, char *errbuf, size_t errlen);

/* ---- topics ------------------------------------------------------------- */

typedef enum canopy_topic {
        CANOPY_TOPIC_CHANGES = 0,
        CANOPY_TOPIC_MV,
        CANOPY_TOPIC_EXPORTS,
        CANOPY_TOPIC_DLQ,
        CANOPY_TOPIC_CONTROL,
        CANOPY_TOPIC_COUNT,
} canopy_topic;

/* "changes", "mv", "exports", "dlq", "control" (static). */
const char *canopy_kafka_topic_suffix(canopy_topic t);
/* Full topic name, prefix + suffix, into buf (NUL-terminated).
 * CANOPY_ERR_LIMIT when it does not fit. */
canopy_err canopy_kafka_topic_name(const canopy_kafka_conf *c, canopy_topic t, char *buf, size_t len);

/* ---- producer ----------------------------------------------------------- */

typedef struct canopy_kafka_producer canopy_kafka_producer;

/* Delivery report of one message. msg_opaque is what the caller passed to
 * canopy_kafka_produce(); err is CANOPY_OK when Kafka acknowledged it (acks=all)
 * at (partition, offset), else CANOPY_ERR_KAFKA (retriable; librdkafka already
 * retried until message.timeout.ms) or CANOPY_ERR_KAFKA_FATAL; errstr is
 * borrowed for the duration of the call. app_opaque is the producer's. */
typedef void (*canopy_kafka_delivery_cb)(void *msg_opaque, canopy_err err, const char *errstr,
                                         int32_t partition, int64_t offset, void *app_opaque);

/* Create an idempotent producer (conf borrowed; copied). cb may be NULL.
 * Waits up to conf->startup_timeout_ms for a broker to answer a metadata
 * request: CANOPY_ERR_KAFKA_UNREACHABLE with "no Kafka broker reachable at
 * <brokers> within <n> ms: <librdkafka reason>" in errbuf otherwise;
 * CANOPY_ERR_CONFIG when librdkafka rejects a property (named in errbuf).
 * *ret owned; canopy_kafka_producer_free(). */
canopy_err canopy_kafka_producer_new(const canopy_kafka_conf *conf, canopy_kafka_delivery_cb cb, void *app_opaque,
                                     canopy_kafka_producer **ret, char *errbuf, size_t errlen);

/* Queue one message for topic t (key and value copied; key may be NULL).
 * Partitioning: murmur2 of the key (Java compatible), so one key stays in
 * one partition and in order. When the local queue is full, serves delivery
 * callbacks and retries for up to 1 s, then CANOPY_ERR_KAFKA (retriable).
 * After a fatal producer error (e.g. idempotence broken): CANOPY_ERR_KAFKA_FATAL. */
canopy_err canopy_kafka_produce(canopy_kafka_producer *kp, canopy_topic t, const void *key, size_t keylen,
                                const void *value, size_t vlen, void *msg_opaque);
/* Same with an explicit topic name (borrowed) and partition (-1 = by key). */
canopy_err canopy_kafka_produce_raw(canopy_kafka_producer *kp, const char *topic, int32_t partition,
                                    const void *key, size_t keylen, const void *value, size_t vlen,
                                    void *msg_opaque);

/* Encode (canopy/avro.h) and produce with the canonical key:
 *  change  -> topic changes, key canopy_change_key(connector, anchor)
 *  mv      -> topic mv,      key mv_id
 *  export  -> topic exports, key mv_id
 *  control -> topic control, key target ("" when NULL)
 * Events borrowed. Codec errors (TOO_LARGE, TOO_MANY_VALUES, ENCODE) are
 * returned with their text in errbuf; nothing is produced then. */
canopy_err canopy_kafka_produce_change(canopy_kafka_producer *kp, const canopy_change_event *ev,
                                       void *msg_opaque, char *errbuf, size_t errlen);
/* Same as canopy_kafka_produce_change() to an explicit partition of changes
 * (the pieces of an END_OF_SCAN marker, one per partition). */
canopy_err canopy_kafka_produce_change_to(canopy_kafka_producer *kp, const canopy_change_event *ev,
                                          int32_t partition, void *msg_opaque, char *errbuf, size_t errlen);
/* Number of partitions of topic t, from the cluster's metadata (waits up to
 * timeout_ms). CANOPY_ERR_KAFKA when the topic is unknown or the brokers do
 * not answer; *ret untouched then. */
canopy_err canopy_kafka_partition_count(canopy_kafka_producer *kp, canopy_topic t, int timeout_ms, int32_t *ret);
canopy_err canopy_kafka_produce_mv(canopy_kafka_producer *kp, const canopy_mv_event *mv, void *msg_opaque,
                                   char *errbuf, size_t errlen);
canopy_err canopy_kafka_produce_export(canopy_kafka_producer *kp, const canopy_export_record *er,
                                       void *msg_opaque, char *errbuf, size_t errlen);
/* A closed run-history window (RunRecord) to exports, keyed by connector. */
canopy_err canopy_kafka_produce_run(canopy_kafka_producer *kp, const canopy_run_record *rr, void *msg_opaque,
                                    char *errbuf, size_t errlen);
canopy_err canopy_kafka_produce_control(canopy_kafka_producer *kp, const canopy_control_event *ce,
                                        void *msg_opaque, char *errbuf, size_t errlen);

/* Serve delivery callbacks, waiting up to timeout_ms for the first one.
 * Returns the number of callbacks served. */
int canopy_kafka_producer_poll(canopy_kafka_producer *kp, int timeout_ms);
/* Wait until every queued message has its delivery report (callbacks
 * served), up to timeout_ms: CANOPY_ERR_TIMEOUT otherwise. */
canopy_err canopy_kafka_producer_flush(canopy_kafka_producer *kp, int timeout_ms);
/* Messages queued and not yet reported. */
size_t canopy_kafka_producer_outq_len(const canopy_kafka_producer *kp);
/* Non-zero after a fatal error; the text in errbuf. */
canopy_err canopy_kafka_producer_fatal(canopy_kafka_producer *kp, char *errbuf, size_t errlen);
/* Free the producer without flushing: messages still queued get a delivery
 * callback with CANOPY_ERR_SHUTDOWN. Flush first to deliver them. NULL allowed. */
void canopy_kafka_producer_free(canopy_kafka_producer *kp);

/* ---- consumer ----------------------------------------------------------- */

typedef struct canopy_kafka_consumer canopy_kafka_consumer;

/* One consumed message. Owned by the caller: canopy_kafka_msg_free(). All
 * pointers inside are valid until then. */
typedef struct canopy_kafka_msg {
        const char *topic;  /* full topic name */
        canopy_topic topic_id; /* CANOPY_TOPIC_COUNT when not a Canopy topic */
        int32_t partition;
        int64_t offset;
        const uint8_t *key; /* may be NULL */
        size_t keylen;
        const uint8_t *value; /* may be NULL (tombstone) */
        size_t len;
        int64_t ts_ms;      /* message timestamp, -1 unknown */
        void *priv_;        /* internal */
} canopy_kafka_msg;

typedef struct canopy_kafka_partition {
        const char *topic;
        int32_t partition;
} canopy_kafka_partition;

typedef enum canopy_kafka_rebalance {
        CANOPY_KAFKA_ASSIGNED = 0, /* partitions now ours: committed offsets are resumed */
        CANOPY_KAFKA_REVOKED,      /* partitions leave: finish and mark_done now, committed after return */
        CANOPY_KAFKA_LOST,         /* partitions were lost (session expired): do not commit them */
} canopy_kafka_rebalance;

/* Rebalance notification; parts borrowed for the call. The callback may call
 * canopy_kafka_mark_done()/canopy_kafka_commit_offset() (not consume).
 * The consumer uses incremental (cooperative-sticky) rebalancing unless
 * kafka.extra sets partition.assignment.strategy: ASSIGNED and REVOKED then
 * carry only the partitions that move (possibly none), and partitions that
 * stay keep flowing during a rebalance. */
typedef void (*canopy_kafka_rebalance_cb)(canopy_kafka_consumer *kc, canopy_kafka_rebalance what,
                                          const canopy_kafka_partition *parts, size_t nparts, void *opaque);

typedef struct canopy_kafka_consumer_opts {
        const char *group_id;        /* required (borrowed) */
        const canopy_topic *topics;  /* topics to subscribe to (borrowed) */
        size_t ntopics;
        canopy_kafka_rebalance_cb rebalance_cb; /* may be NULL */
        void *opaque;                /* for rebalance_cb */
        bool from_latest;            /* no committed offset: start at the end (default: beginning) */
} canopy_kafka_consumer_opts;

/* Create a consumer in group opts->group_id subscribed to opts->topics.
 * Auto commit and auto offset store are off. Same start-up check and errors
 * as canopy_kafka_producer_new. *ret owned; canopy_kafka_consumer_close()
 * then canopy_kafka_consumer_free(). */
canopy_err canopy_kafka_consumer_new(const canopy_kafka_conf *conf, const canopy_kafka_consumer_opts *opts,
                                     canopy_kafka_consumer **ret, char *errbuf, size_t errlen);

/* Wait up to timeout_ms for a message. CANOPY_OK with *ret set (owned), or
 * CANOPY_ERR_TIMEOUT with *ret NULL when nothing arrived (partition EOFs and
 * transient broker errors are absorbed and logged), or CANOPY_ERR_KAFKA_FATAL.
 * Rebalance callbacks run inside this call. */
canopy_err canopy_kafka_consume(canopy_kafka_consumer *kc, int timeout_ms, canopy_kafka_msg **ret);
/* Free a message. NULL allowed. */
void canopy_kafka_msg_free(canopy_kafka_msg *m);

/* Mark msg done: its effect is recorded. The next commit will store
 * offset+1 for its partition. Mark in offset order within a partition. */
canopy_err canopy_kafka_mark_done(canopy_kafka_consumer *kc, const canopy_kafka_msg *m);
/* Commit everything marked done. sync: wait for the broker's answer. */
canopy_err canopy_kafka_commit(canopy_kafka_consumer *kc, bool sync);
/* Commit one partition's position explicitly: next_offset is the first
 * offset NOT yet processed (last done + 1). Synchronous. topic borrowed. */
canopy_err canopy_kafka_commit_offset(canopy_kafka_consumer *kc, const char *topic, int32_t partition,
                                      int64_t next_offset);
/* Committed offset of a partition in this group (next offset to read), or
 * -1 if none; for tests and lag metrics. */
canopy_err canopy_kafka_committed(canopy_kafka_consumer *kc, const char *topic, int32_t partition,
                                  int64_t *ret, int timeout_ms);

/* Pause / resume fetching from one partition (topic borrowed), or from all
 * assigned partitions when topic is NULL. Paused partitions stay assigned. */
canopy_err canopy_kafka_pause(canopy_kafka_consumer *kc, const char *topic, int32_t partition);
canopy_err canopy_kafka_resume(canopy_kafka_consumer *kc, const char *topic, int32_t partition);

/* Current assignment (owned array of nparts entries; topic strings inside
 * borrowed from the consumer, valid until the next consume). free(*ret). */
canopy_err canopy_kafka_assignment(canopy_kafka_consumer *kc, canopy_kafka_partition **ret, size_t *ret_n);
/* Messages not yet read on the partitions assigned now: the sum of high
 * watermark minus position (the offset after the last message returned by
 * canopy_kafka_consume), from librdkafka's cached watermarks (no broker
 * round trip; they follow the fetches). A partition nothing was read from
 * yet is not counted. */
canopy_err canopy_kafka_consumer_lag(canopy_kafka_consumer *kc, int64_t *ret);

/* Poison-message path: publish a DeadLetter for m (topic, partition, offset,
 * key, payload, reason, error code and class of err) to the dlq topic with
 * m's key, wait (bounded by the producer's message timeout) for Kafka's
 * acknowledgement, then mark m done. reason borrowed (NULL: the err text).
 * The dead-letter producer is created on first use with the consumer's
 * config. Returns the producer's error if the dead letter could not be
 * delivered: then m is NOT marked done (retry later). */
canopy_err canopy_kafka_dead_letter(canopy_kafka_consumer *kc, const canopy_kafka_msg *m, canopy_err err,
                                    const char *reason);
/* Number of dead letters this consumer published. */
uint64_t canopy_kafka_dead_letter_count(const canopy_kafka_consumer *kc);
/* Positions lost: times a partition's next offset was no longer on the
 * broker (its retention passed it, or the topic was truncated or recreated)
 * and the consumer went on from the oldest message left. The messages in
 * between were never read: what they carried has to be read again from the
 * source (a full scan). A group's first start is not a loss. */
uint64_t canopy_kafka_consumer_lost(canopy_kafka_consumer *kc);

/* Leave the group: commit what is marked done (sync), then close. Call
 * before free for a clean hand-over. */
canopy_err canopy_kafka_consumer_close(canopy_kafka_consumer *kc);
/* Free (closes first if not closed). NULL allowed. */
void canopy_kafka_consumer_free(canopy_kafka_consumer *kc);

/* ---- consumer group positions (canopyctl replay) ------------------------- */

#define CANOPY_KAFKA_AT_BEGINNING (-2) /* the oldest message the broker holds */
#define CANOPY_KAFKA_AT_END (-1)       /* after the newest message */

/* One partition of a group position move. */
typedef struct canopy_kafka_group_pos {
        int32_t partition;
        int64_t low, high; /* offsets the broker holds: [low, high) */
        int64_t committed; /* the group's position before the move, -1 when it had none */
        int64_t target;    /* the new position (next offset the group reads) */
} canopy_kafka_group_pos;

/* Move the positions of consumer group `group` on topic t to `to`:
 * CANOPY_KAFKA_AT_BEGINNING, CANOPY_KAFKA_AT_END, or a time in epoch
 * milliseconds (the first message whose timestamp is at or after it; the end
 * of a partition with none). Brokers that cannot look offsets up by time (the
 * dev broker) are searched message by message (a binary search per partition).
 * The call joins the group itself and needs every partition of the topic:
 * when another member holds some (a worker still runs, or one killed less
 * than kafka.session_timeout ago), it fails with CANOPY_ERR_CONFLICT, errbuf
 * saying so, and moves nothing. dry_run: compute the targets, commit nothing.
 * *ret (owned, free()) holds one entry per partition, in partition order. */
canopy_err canopy_kafka_group_seek(const canopy_kafka_conf *conf, const char *group, canopy_topic t, int64_t to,
                                   bool dry_run, canopy_kafka_group_pos **ret, size_t *nret, char *errbuf,
                                   size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
