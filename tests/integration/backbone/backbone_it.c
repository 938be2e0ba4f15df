/* backbone_it.c: integration tests of the event backbone against a real
 * Kafka-protocol broker (canopy-devkafka, started by tests/harness/run-with).
 *
 *   canopy-test-backbone produce-consume | dlq | kill | lost | rebalance | unreachable
 *   canopy-test-backbone worker PREFIX GROUP OUTFILE DIE_AFTER   (child of kill)
 *
 * Each test uses its own topic prefix and group ids. Waits are bounded by a
 * hang guard only; no assertion depends on timing.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "canopy/avro.h"
#include "canopy/kafka.h"
#include "canopy/log.h"

#define HANG_GUARD_MS 120000

static const char *test_name = "?";

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "FAIL %s: ", test_name);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(1);
}

#define CHECK(cond, ...)                                                                                   \
        do {                                                                                               \
                if (!(cond))                                                                               \
                        die(__VA_ARGS__);                                                                  \
        } while (0)

static int64_t mono_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void make_conf(canopy_kafka_conf *c, const char *prefix) {
        const char *bs = getenv("CANOPY_TEST_KAFKA_BOOTSTRAP");
        CHECK(bs && *bs, "CANOPY_TEST_KAFKA_BOOTSTRAP not set (run through tests/harness/run-with --kafka)");
        CHECK(canopy_kafka_conf_init(c, bs) == 0, "conf_init");
        free(c->topic_prefix);
        c->topic_prefix = strdup(prefix);
        c->session_timeout_ms = 3000;
        c->startup_timeout_ms = 20000;
}

/* ---- producing ---------------------------------------------------------- */

struct acks {
        long ok, failed;
};

static void on_delivery(void *msg_opaque, canopy_err err, const char *errstr, int32_t partition, int64_t offset,
                        void *app) {
        struct acks *a = app;
        (void)msg_opaque;
        (void)partition;
        (void)offset;
        if (err) {
                a->failed++;
                fprintf(stderr, "delivery failed: %s %s\n", canopy_err_name(err), errstr);
        } else {
                a->ok++;
        }
}

static void build_event(canopy_change_event *ev, long seq) {
        char buf[96];
        memset(ev, 0, sizeof(*ev));
        ev->connector = strdup("forest-a");
        snprintf(buf, sizeof(buf), "anchor-%06ld", seq);
        canopy_bytes_set(&ev->anchor, buf, strlen(buf));
        ev->object_class = strdup("user");
        ev->op = CANOPY_OP_ADD;
        snprintf(buf, sizeof(buf), "CN=u%ld,OU=Staff,DC=corp", seq);
        ev->dn = strdup(buf);
        ev->complete = true;
        canopy_attr *a = canopy_change_event_add_attr(ev, "mail", false);
        snprintf(buf, sizeof(buf), "u%ld@corp.example", seq);
        canopy_attr_add_value(a, buf, strlen(buf));
        ev->producer_id = strdup("it");
        ev->seq = seq;
        ev->nchunks = 1;
}

static void produce_events(const canopy_kafka_conf *c, long from, long to) {
        struct acks acks = {0};
        canopy_kafka_producer *kp;
        char err[512];
        CHECK(canopy_kafka_producer_new(c, on_delivery, &acks, &kp, err, sizeof(err)) == 0, "producer: %s", err);
        for (long s = from; s < to; s++) {
                canopy_change_event ev;
                build_event(&ev, s);
                CHECK(canopy_kafka_produce_change(kp, &ev, NULL, err, sizeof(err)) == 0, "produce: %s", err);
                canopy_change_event_free(&ev);
                canopy_kafka_producer_poll(kp, 0);
        }
        CHECK(canopy_kafka_producer_flush(kp, 60000) == 0, "flush timed out");
        CHECK(acks.ok == to - from && acks.failed == 0, "acked %ld of %ld (failed %ld)", acks.ok, to - from,
              acks.failed);
        canopy_kafka_producer_free(kp);
}

/* ---- consuming ---------------------------------------------------------- */

struct tracker {
        long n;
        unsigned char *seen; /* times each seq was processed */
        long distinct, dups;
};

static void tracker_init(struct tracker *t, long n) {
        t->n = n;
        t->seen = calloc((size_t)n, 1);
        t->distinct = t->dups = 0;
}

static long process(struct tracker *t, canopy_kafka_consumer *kc, canopy_kafka_msg *m) {
        canopy_change_event ev;
        char err[CANOPY_AVRO_ERRLEN];
        CHECK(canopy_avro_decode_change(m->value, m->len, &ev, err, sizeof(err)) == 0, "decode at %s/%d@%lld: %s",
              m->topic, m->partition, (long long)m->offset, err);
        long s = (long)ev.seq;
        CHECK(s >= 0 && s < t->n, "unexpected seq %ld", s);
        CHECK(strcmp(ev.connector, "forest-a") == 0, "connector");
        if (t->seen[s]++)
                t->dups++;
        else
                t->distinct++;
        canopy_change_event_free(&ev);
        CHECK(canopy_kafka_mark_done(kc, m) == 0, "mark_done");
        return s;
}

static canopy_kafka_consumer *consumer(const canopy_kafka_conf *c, const char *group, canopy_topic topic,
                                       canopy_kafka_rebalance_cb cb, void *opaque) {
        canopy_kafka_consumer *kc;
        char err[512];
        canopy_kafka_consumer_opts o = {group, &topic, 1, cb, opaque, false};
        CHECK(canopy_kafka_consumer_new(c, &o, &kc, err, sizeof(err)) == 0, "consumer: %s", err);
        return kc;
}

static void unique(char *buf, size_t len, const char *what) {
        snprintf(buf, len, "bb-%s-%d-%lld", what, (int)getpid(), (long long)mono_ms());
}

/* ---- produce-consume ---------------------------------------------------- */

static int t_produce_consume(void) {
        const long N = 3000, M = 20;
        char prefix[96], group[96];
        unique(prefix, sizeof(prefix), "pc");
        strcat(prefix, ".");
        unique(group, sizeof(group), "pc-group");
        canopy_kafka_conf c;
        make_conf(&c, prefix);
        produce_events(&c, 0, N);

        struct tracker t;
        tracker_init(&t, N + M);
        canopy_kafka_consumer *kc = consumer(&c, group, CANOPY_TOPIC_CHANGES, NULL, NULL);
        int64_t guard = mono_ms() + HANG_GUARD_MS, lag = -1, max_lag = 0;
        while (t.distinct < N) {
                CHECK(mono_ms() < guard, "hang guard: %ld of %ld consumed", t.distinct, N);
                canopy_kafka_msg *m;
                canopy_err e = canopy_kafka_consume(kc, 200, &m);
                if (e == CANOPY_ERR_TIMEOUT)
                        continue;
                CHECK(e == 0, "consume: %s", canopy_err_name(e));
                CHECK(m->topic_id == CANOPY_TOPIC_CHANGES, "topic id");
                CHECK(m->keylen > 9 && memcmp(m->key, "forest-a\0", 9) == 0, "key is connector NUL anchor");
                process(&t, kc, m);
                canopy_kafka_msg_free(m);
                if (t.distinct % 500 == 0)
                        CHECK(canopy_kafka_commit(kc, false) == 0, "async commit");
                if (t.distinct % 100 == 0) {
                        CHECK(canopy_kafka_consumer_lag(kc, &lag) == 0, "lag");
                        CHECK(lag >= 0 && lag <= N - t.distinct, "lag %lld with %ld of %ld read", (long long)lag,
                              t.distinct, N);
                        if (lag > max_lag)
                                max_lag = lag;
                }
        }
        /* Everything read: no lag left (the watermarks follow the fetches). */
        for (int64_t until = mono_ms() + 10000;; ) {
                CHECK(canopy_kafka_consumer_lag(kc, &lag) == 0, "lag");
                if (lag == 0 || mono_ms() > until)
                        break;
                canopy_kafka_msg *m = NULL;
                if (canopy_kafka_consume(kc, 100, &m) == 0)
                        canopy_kafka_msg_free(m);
        }
        CHECK(lag == 0, "lag %lld after every message was read", (long long)lag);
        CHECK(max_lag > 0, "no lag ever seen while %ld messages were read", N);
        printf("produce-consume: consumer lag seen up to %lld, 0 at the end\n", (long long)max_lag);
        CHECK(canopy_kafka_commit(kc, true) == 0, "sync commit");
        /* committed offsets cover every message */
        canopy_kafka_partition *parts;
        size_t np;
        CHECK(canopy_kafka_assignment(kc, &parts, &np) == 0 && np > 0, "assignment");
        int64_t sum = 0;
        for (size_t i = 0; i < np; i++) {
                int64_t off;
                CHECK(canopy_kafka_committed(kc, parts[i].topic, parts[i].partition, &off, 10000) == 0, "committed");
                CHECK(off >= 0, "partition %d has no committed offset", parts[i].partition);
                sum += off;
        }
        free(parts);
        CHECK(sum == N, "committed offsets sum to %lld, expected %ld", (long long)sum, N);
        CHECK(canopy_kafka_consumer_close(kc) == 0, "close");
        canopy_kafka_consumer_free(kc);
        printf("produce-consume: %ld produced, %ld consumed, %ld duplicates, %zu partitions, committed %lld\n", N,
               t.distinct, t.dups, np, (long long)sum);

        /* A successor in the same group resumes at the committed offsets:
         * it sees the M new events and none of the old ones. Pause/resume of
         * every partition on the way. */
        produce_events(&c, N, N + M);
        kc = consumer(&c, group, CANOPY_TOPIC_CHANGES, NULL, NULL);
        long fresh = 0, paused_polls = 0;
        int paused = 0;
        guard = mono_ms() + HANG_GUARD_MS;
        while (fresh < M) {
                CHECK(mono_ms() < guard, "hang guard: %ld of %ld new events", fresh, M);
                canopy_kafka_msg *m;
                canopy_err e = canopy_kafka_consume(kc, 200, &m);
                if (paused && ++paused_polls == 5) {
                        CHECK(canopy_kafka_resume(kc, NULL, 0) == 0, "resume all");
                        paused = 0;
                }
                if (e == CANOPY_ERR_TIMEOUT)
                        continue;
                CHECK(e == 0, "consume");
                long s = process(&t, kc, m);
                CHECK(s >= N, "successor re-read old event %ld: committed offsets not respected", s);
                fresh++;
                if (fresh == 1) {
                        CHECK(canopy_kafka_pause(kc, NULL, 0) == 0, "pause all");
                        CHECK(canopy_kafka_pause(kc, m->topic, m->partition) == 0, "pause one");
                        paused = 1;
                }
                canopy_kafka_msg_free(m);
        }
        CHECK(t.dups == 0, "%ld duplicates without any failure", t.dups);
        canopy_kafka_consumer_free(kc);
        canopy_kafka_conf_free(&c);
        free(t.seen);
        printf("produce-consume: successor got the %ld new events only\nPASS produce-consume\n", M);
        return 0;
}

/* ---- poison messages ---------------------------------------------------- */

static int t_dlq(void) {
        const long N = 400;
        char prefix[96], group[96], group2[96], err[512];
        unique(prefix, sizeof(prefix), "dlq");
        strcat(prefix, ".");
        unique(group, sizeof(group), "dlq-group");
        unique(group2, sizeof(group2), "dlq-reader");
        canopy_kafka_conf c;
        make_conf(&c, prefix);

        /* Every 10th message is bad, cycling through four kinds. */
        static const char *const expect_code[4] = {"DECODE", "TRUNCATED", "UNKNOWN_SCHEMA", "DECODE"};
        struct acks acks = {0};
        canopy_kafka_producer *kp;
        CHECK(canopy_kafka_producer_new(&c, on_delivery, &acks, &kp, err, sizeof(err)) == 0, "producer: %s", err);
        long nbad = 0, ngood = 0;
        for (long s = 0; s < N; s++) {
                canopy_change_event ev;
                canopy_bytes v, k;
                build_event(&ev, s);
                CHECK(canopy_avro_encode_change(&ev, &v, err, sizeof(err)) == 0, "encode");
                char key[32];
                int kl = snprintf(key, sizeof(key), "k%ld", s);
                k.data = (uint8_t *)key;
                k.len = (size_t)kl;
                if (s % 10 == 5) {
                        switch (nbad % 4) {
                        case 0: /* connector length becomes negative */
                                v.data[CANOPY_AVRO_HEADER_LEN] = 0x01;
                                break;
                        case 1: /* cut in the middle */
                                v.len = v.len / 2;
                                break;
                        case 2: /* a writer schema nobody knows */
                                v.data[4] ^= 0xA5;
                                break;
                        case 3: /* not Avro at all */
                                memcpy(v.data, "hello, world", 12);
                                v.len = 12;
                                break;
                        }
                        nbad++;
                } else {
                        ngood++;
                }
                CHECK(canopy_kafka_produce(kp, CANOPY_TOPIC_CHANGES, k.data, k.len, v.data, v.len, NULL) == 0,
                      "produce");
                free(v.data);
                canopy_change_event_free(&ev);
        }
        CHECK(canopy_kafka_producer_flush(kp, 60000) == 0 && acks.ok == N, "produce acks");
        canopy_kafka_producer_free(kp);

        struct tracker t;
        tracker_init(&t, N);
        canopy_kafka_consumer *kc = consumer(&c, group, CANOPY_TOPIC_CHANGES, NULL, NULL);
        int64_t guard = mono_ms() + HANG_GUARD_MS;
        while (t.distinct < ngood || (long)canopy_kafka_dead_letter_count(kc) < nbad) {
                CHECK(mono_ms() < guard, "hang guard: %ld good, %llu dead", t.distinct,
                      (unsigned long long)canopy_kafka_dead_letter_count(kc));
                canopy_kafka_msg *m;
                canopy_err e = canopy_kafka_consume(kc, 200, &m);
                if (e == CANOPY_ERR_TIMEOUT)
                        continue;
                CHECK(e == 0, "consume");
                canopy_change_event ev;
                char derr[CANOPY_AVRO_ERRLEN];
                canopy_err de = canopy_avro_decode_change(m->value, m->len, &ev, derr, sizeof(derr));
                if (de) {
                        CHECK(canopy_err_class_of(de) == CANOPY_ERRCLASS_PERMANENT, "decode error class");
                        CHECK(canopy_kafka_dead_letter(kc, m, de, derr) == 0, "dead_letter");
                } else {
                        canopy_change_event_free(&ev);
                        process(&t, kc, m);
                }
                canopy_kafka_msg_free(m);
        }
        CHECK(canopy_kafka_commit(kc, true) == 0, "commit");
        CHECK(t.dups == 0, "duplicates");
        canopy_kafka_partition *parts;
        size_t np;
        int64_t sum = 0;
        CHECK(canopy_kafka_assignment(kc, &parts, &np) == 0, "assignment");
        for (size_t i = 0; i < np; i++) {
                int64_t off;
                CHECK(canopy_kafka_committed(kc, parts[i].topic, parts[i].partition, &off, 10000) == 0, "committed");
                sum += off > 0 ? off : 0;
        }
        free(parts);
        CHECK(sum == N, "committed %lld of %ld: the pipeline did not go past poison messages", (long long)sum, N);
        canopy_kafka_consumer_free(kc);

        /* The dlq topic holds exactly the bad ones, with reason and code. */
        char changes[256];
        canopy_kafka_topic_name(&c, CANOPY_TOPIC_CHANGES, changes, sizeof(changes));
        kc = consumer(&c, group2, CANOPY_TOPIC_DLQ, NULL, NULL);
        long got = 0;
        long by_kind[4] = {0};
        guard = mono_ms() + HANG_GUARD_MS;
        while (got < nbad) {
                CHECK(mono_ms() < guard, "hang guard: %ld of %ld dead letters read back", got, nbad);
                canopy_kafka_msg *m;
                canopy_err e = canopy_kafka_consume(kc, 200, &m);
                if (e == CANOPY_ERR_TIMEOUT)
                        continue;
                CHECK(e == 0, "consume dlq");
                canopy_dead_letter dl;
                CHECK(canopy_avro_decode_dead_letter(m->value, m->len, &dl, err, sizeof(err)) == 0, "decode dl: %s",
                      err);
                CHECK(strcmp(dl.topic, changes) == 0, "dl topic %s", dl.topic);
                long s = strtol((char *)dl.key.data + 1, NULL, 10);
                CHECK(s % 10 == 5, "dead letter for good message %ld", s);
                long kind = (s / 10) % 4;
                CHECK(strcmp(dl.error_code, expect_code[kind]) == 0, "seq %ld: code %s, expected %s", s,
                      dl.error_code, expect_code[kind]);
                CHECK(strcmp(dl.error_class, "permanent") == 0, "class");
                CHECK(dl.reason && *dl.reason, "reason");
                CHECK(m->keylen == dl.key.len && memcmp(m->key, dl.key.data, m->keylen) == 0, "dlq key = original key");
                CHECK(dl.payload.len > 0, "payload kept");
                if (kind == 3)
                        CHECK(dl.payload.len == 12 && memcmp(dl.payload.data, "hello, world", 12) == 0, "payload");
                if (by_kind[kind]++ == 0)
                        printf("dlq: %s/%d@%lld %s (%s): %s\n", dl.topic, dl.partition, (long long)dl.offset,
                               dl.error_code, dl.error_class, dl.reason);
                canopy_dead_letter_free(&dl);
                canopy_kafka_mark_done(kc, m);
                canopy_kafka_msg_free(m);
                got++;
        }
        canopy_kafka_consumer_free(kc);
        canopy_kafka_conf_free(&c);
        free(t.seen);
        printf("dlq: %ld good processed, %ld dead letters (%ld corrupt, %ld truncated, %ld unknown schema, %ld "
               "garbage), committed %lld/%ld\nPASS dlq\n",
               ngood, got, by_kind[0], by_kind[1], by_kind[2], by_kind[3], (long long)sum, N);
        return 0;
}

/* ---- SIGKILL mid-batch -------------------------------------------------- */

/* The child: process and record each message, commit every 100, and die by
 * SIGKILL right after message DIE_AFTER (done, recorded, not committed). */
static int t_worker(int argc, char **argv) {
        if (argc < 6)
                die("usage: worker PREFIX GROUP OUTFILE DIE_AFTER");
        canopy_kafka_conf c;
        make_conf(&c, argv[2]);
        long die_after = atol(argv[5]);
        FILE *out = fopen(argv[4], "w");
        CHECK(out, "open %s", argv[4]);
        canopy_kafka_consumer *kc = consumer(&c, argv[3], CANOPY_TOPIC_CHANGES, NULL, NULL);
        struct tracker t;
        tracker_init(&t, 1000000);
        long n = 0;
        int64_t guard = mono_ms() + HANG_GUARD_MS;
        while (mono_ms() < guard) {
                canopy_kafka_msg *m;
                if (canopy_kafka_consume(kc, 200, &m))
                        continue;
                long s = process(&t, kc, m);
                canopy_kafka_msg_free(m);
                fprintf(out, "%ld\n", s);
                fflush(out);
                if (++n % 100 == 0)
                        CHECK(canopy_kafka_commit(kc, true) == 0, "commit");
                if (n == die_after)
                        kill(getpid(), SIGKILL);
        }
        return 1;
}

/* ---- lost: the broker dropped what the group had not read -------------- */

/* Produce [from, to) with a `description` of vlen bytes. */
static void produce_big(const canopy_kafka_conf *c, long from, long to, size_t vlen) {
        struct acks acks = {0};
        canopy_kafka_producer *kp;
        char err[512];
        char *big = malloc(vlen);
        CHECK(big, "malloc");
        memset(big, 'x', vlen);
        CHECK(canopy_kafka_producer_new(c, on_delivery, &acks, &kp, err, sizeof(err)) == 0, "producer: %s", err);
        for (long s = from; s < to; s++) {
                canopy_change_event ev;
                build_event(&ev, s);
                canopy_attr *a = canopy_change_event_add_attr(&ev, "description", false);
                canopy_attr_add_value(a, big, vlen);
                CHECK(canopy_kafka_produce_change(kp, &ev, NULL, err, sizeof(err)) == 0, "produce: %s", err);
                canopy_change_event_free(&ev);
                canopy_kafka_producer_poll(kp, 0);
        }
        CHECK(canopy_kafka_producer_flush(kp, 60000) == 0, "flush timed out");
        CHECK(acks.ok == to - from && acks.failed == 0, "acked %ld of %ld", acks.ok, to - from);
        canopy_kafka_producer_free(kp);
        free(big);
}

/* Consume until nothing arrived for 3 s after the first message; returns
 * the number of messages, fills t. */
static long drain(canopy_kafka_consumer *kc, struct tracker *t, long *min_seq) {
        long n = 0;
        int64_t guard = mono_ms() + HANG_GUARD_MS, idle_since = mono_ms();
        while (mono_ms() < guard && (n == 0 || mono_ms() - idle_since < 3000)) {
                canopy_kafka_msg *m;
                if (canopy_kafka_consume(kc, 200, &m))
                        continue;
                long s = process(t, kc, m);
                if (min_seq && (n == 0 || s < *min_seq))
                        *min_seq = s;
                canopy_kafka_msg_free(m);
                n++;
                idle_since = mono_ms();
        }
        CHECK(n > 0, "nothing consumed within %d ms", HANG_GUARD_MS);
        return n;
}

/* The dev broker keeps 5 MiB per partition (docs/DEVKAFKA.md): a group that
 * committed its position, then fell more than that behind, finds its next
 * offset gone. The consumer must say so (canopy_kafka_consumer_lost); a
 * group's first start on the same topic must not. */
static int t_lost(void) {
        const long SMALL = 20, BIG = 240;
        const size_t VLEN = 160 * 1024; /* 240 x 160 KiB = 37.5 MiB over 4 partitions */
        char prefix[96], group[96], fresh[96];
        unique(prefix, sizeof(prefix), "lost");
        strcat(prefix, ".");
        unique(group, sizeof(group), "lost-group");
        unique(fresh, sizeof(fresh), "lost-fresh");
        canopy_kafka_conf c;
        make_conf(&c, prefix);

        produce_events(&c, 0, SMALL);
        canopy_kafka_consumer *kc = consumer(&c, group, CANOPY_TOPIC_CHANGES, NULL, NULL);
        struct tracker t;
        tracker_init(&t, SMALL + BIG);
        long got = drain(kc, &t, NULL);
        CHECK(got == SMALL && t.distinct == SMALL, "first pass read %ld (%ld distinct) of %ld", got, t.distinct,
              SMALL);
        CHECK(canopy_kafka_commit(kc, true) == 0, "commit");
        CHECK(canopy_kafka_consumer_lost(kc) == 0, "a first start counted as a loss");
        CHECK(canopy_kafka_consumer_close(kc) == 0, "close");
        canopy_kafka_consumer_free(kc);

        /* More than 5 MiB per partition while the group is away. */
        produce_big(&c, SMALL, SMALL + BIG, VLEN);

        kc = consumer(&c, group, CANOPY_TOPIC_CHANGES, NULL, NULL);
        struct tracker t2;
        tracker_init(&t2, SMALL + BIG);
        long min_seq = -1;
        got = drain(kc, &t2, &min_seq);
        uint64_t lost = canopy_kafka_consumer_lost(kc);
        fprintf(stderr, "second pass: %ld messages (lowest seq %ld) of %ld produced; %llu position(s) lost\n", got,
                min_seq, BIG, (unsigned long long)lost);
        CHECK(min_seq >= SMALL, "an event read twice after the commit (seq %ld)", min_seq);
        CHECK(got < BIG, "the broker kept everything (%ld of %ld): the test did not overflow a partition", got, BIG);
        CHECK(lost >= 1, "%ld of %ld events were dropped unread and the consumer did not report it", BIG - got,
              BIG);
        CHECK(lost <= 4, "%llu losses reported for 4 partitions", (unsigned long long)lost);
        canopy_kafka_consumer_close(kc);
        canopy_kafka_consumer_free(kc);

        /* A new group on the same topic starts at the oldest message left:
         * no loss of its own. */
        kc = consumer(&c, fresh, CANOPY_TOPIC_CHANGES, NULL, NULL);
        struct tracker t3;
        tracker_init(&t3, SMALL + BIG);
        long got3 = drain(kc, &t3, NULL);
        CHECK(got3 == got, "a new group read %ld, the old one %ld", got3, got);
        CHECK(canopy_kafka_consumer_lost(kc) == 0, "a new group's first start counted as a loss");
        canopy_kafka_consumer_close(kc);
        canopy_kafka_consumer_free(kc);
        free(t.seen);
        free(t2.seen);
        free(t3.seen);
        canopy_kafka_conf_free(&c);
        printf("PASS lost: %ld of %ld dropped unread, %llu loss(es) reported\n", BIG - got, BIG,
               (unsigned long long)lost);
        return 0;
}

static int t_kill(const char *self) {
        const long N = 3000, DIE_AFTER = 1050;
        char prefix[96], group[96], outfile[512];
        unique(prefix, sizeof(prefix), "kill");
        strcat(prefix, ".");
        unique(group, sizeof(group), "kill-group");
        const char *tmp = getenv("CANOPY_TEST_TMPDIR");
        snprintf(outfile, sizeof(outfile), "%s/worker-%d.out", tmp ? tmp : "/tmp", (int)getpid());
        canopy_kafka_conf c;
        make_conf(&c, prefix);
        produce_events(&c, 0, N);

        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
                char die_s[32];
                snprintf(die_s, sizeof(die_s), "%ld", DIE_AFTER);
                execl(self, self, "worker", prefix, group, outfile, die_s, (char *)NULL);
                _exit(127);
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "worker did not die by SIGKILL (status %d)", st);

        struct tracker t;
        tracker_init(&t, N);
        FILE *in = fopen(outfile, "r");
        CHECK(in, "open %s", outfile);
        long s, before = 0;
        while (fscanf(in, "%ld", &s) == 1) {
                CHECK(s >= 0 && s < N && !t.seen[s], "worker output");
                t.seen[s] = 1;
                before++;
        }
        fclose(in);
        t.distinct = before;
        CHECK(before == DIE_AFTER, "worker processed %ld, expected %ld", before, DIE_AFTER);

        /* The successor, same group, takes over once the dead member's
         * session expires, and resumes at the committed offsets. */
        canopy_kafka_consumer *kc = consumer(&c, group, CANOPY_TOPIC_CHANGES, NULL, NULL);
        int64_t guard = mono_ms() + HANG_GUARD_MS;
        long after = 0;
        while (t.distinct < N) {
                CHECK(mono_ms() < guard, "hang guard: %ld of %ld", t.distinct, N);
                canopy_kafka_msg *m;
                canopy_err e = canopy_kafka_consume(kc, 200, &m);
                if (e == CANOPY_ERR_TIMEOUT)
                        continue;
                CHECK(e == 0, "consume");
                process(&t, kc, m);
                canopy_kafka_msg_free(m);
                after++;
        }
        canopy_kafka_commit(kc, true);
        canopy_kafka_consumer_free(kc);
        /* Redelivered = done by the worker after its last commit (at 1000). */
        long uncommitted = DIE_AFTER % 100;
        CHECK(t.dups <= uncommitted, "%ld redelivered, more than the %ld uncommitted", t.dups, uncommitted);
        printf("kill: worker processed %ld then SIGKILL (last commit at %ld); successor processed %ld, "
               "redelivered %ld, lost 0 of %ld\nPASS kill\n",
               before, DIE_AFTER - uncommitted, after, t.dups, N);
        canopy_kafka_conf_free(&c);
        free(t.seen);
        return 0;
}

/* ---- rebalance ---------------------------------------------------------- */

struct member {
        const char *name;
        int assigned_events, revoked_events;
        size_t last_assigned;
};

static void on_rebalance(canopy_kafka_consumer *kc, canopy_kafka_rebalance what, const canopy_kafka_partition *p,
                         size_t n, void *opaque) {
        struct member *mb = opaque;
        (void)kc;
        (void)p;
        printf("rebalance: %s %s %zu partition(s)\n", mb->name,
               what == CANOPY_KAFKA_ASSIGNED ? "assigned" : what == CANOPY_KAFKA_REVOKED ? "revoked" : "lost", n);
        if (what == CANOPY_KAFKA_ASSIGNED) {
                mb->assigned_events++;
                mb->last_assigned = n;
        } else {
                mb->revoked_events++;
        }
}

static size_t nassigned(canopy_kafka_consumer *kc) {
        canopy_kafka_partition *p;
        size_t n;
        CHECK(canopy_kafka_assignment(kc, &p, &n) == 0, "assignment");
        free(p);
        return n;
}

static int t_rebalance(void) {
        const long N = 4000, FIRST = 600;
        char prefix[96], group[96];
        unique(prefix, sizeof(prefix), "rb");
        strcat(prefix, ".");
        unique(group, sizeof(group), "rb-group");
        canopy_kafka_conf c;
        make_conf(&c, prefix);
        produce_events(&c, 0, N);

        struct tracker t;
        tracker_init(&t, N);
        /* Who processed each message: at least once allows B to redo what A
         * did but could not commit before the handover (the dev broker
         * refuses commits while the group rebalances); a consumer redoing
         * its own work, or a message lost, is a bug. */
        char *by = calloc((size_t)N, 1);
        long self_dups = 0, cross_dups = 0;
#define NOTE(who, seq)                                                  \
        do {                                                            \
                long s_ = (seq);                                        \
                if (!by[s_])                                            \
                        by[s_] = (who);                                 \
                else if (by[s_] == (who))                               \
                        self_dups++;                                    \
                else                                                    \
                        cross_dups++;                                   \
        } while (0)
        struct member ma = {"A", 0, 0, 0}, mb = {"B", 0, 0, 0};
        canopy_kafka_consumer *a = consumer(&c, group, CANOPY_TOPIC_CHANGES, on_rebalance, &ma);
        long by_a = 0, by_b = 0;
        int64_t guard = mono_ms() + HANG_GUARD_MS;
        while (t.distinct < FIRST) {
                CHECK(mono_ms() < guard, "hang guard (A alone)");
                canopy_kafka_msg *m;
                if (canopy_kafka_consume(a, 200, &m))
                        continue;
                NOTE('A', process(&t, a, m));
                canopy_kafka_msg_free(m);
                by_a++;
        }
        size_t alone = nassigned(a);
        canopy_kafka_consumer *b = consumer(&c, group, CANOPY_TOPIC_CHANGES, on_rebalance, &mb);
        while (t.distinct < N) {
                CHECK(mono_ms() < guard, "hang guard: %ld of %ld", t.distinct, N);
                canopy_kafka_msg *m;
                if (canopy_kafka_consume(a, 50, &m) == 0) {
                        NOTE('A', process(&t, a, m));
                        canopy_kafka_msg_free(m);
                        by_a++;
                }
                if (canopy_kafka_consume(b, 50, &m) == 0) {
                        NOTE('B', process(&t, b, m));
                        canopy_kafka_msg_free(m);
                        by_b++;
                }
        }
        size_t na = nassigned(a), nb = nassigned(b);
        CHECK(ma.revoked_events >= 1, "A was never revoked");
        CHECK(mb.assigned_events >= 1 && nb > 0, "B never got a partition");
        CHECK(na > 0 && na + nb == alone, "A has %zu, B %zu of %zu partitions", na, nb, alone);
        CHECK(by_b > 0, "B processed nothing");
        /* What A marked done is committed on revoke, so normally nothing is
         * reprocessed; when the broker refused that commit, B redoes it. */
        CHECK(self_dups == 0, "%ld messages processed twice by the same consumer", self_dups);
        if (cross_dups)
                printf("rebalance: %ld messages redone by B after the handover (commit on revoke refused)\n",
                       cross_dups);
        free(by);
#undef NOTE
        canopy_kafka_consumer_free(b);
        canopy_kafka_consumer_free(a);
        printf("rebalance: A alone had %zu partitions, then A %zu / B %zu; processed A %ld, B %ld, lost 0, "
               "duplicates %ld\nPASS rebalance\n",
               alone, na, nb, by_a, by_b, t.dups);
        canopy_kafka_conf_free(&c);
        free(t.seen);
        return 0;
}

/* ---- unreachable broker ------------------------------------------------- */

static int closed_port(void) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);
        CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
                      getsockname(fd, (struct sockaddr *)&sa, &sl) == 0,
              "socket");
        close(fd); /* nothing listens there now */
        return ntohs(sa.sin_port);
}

static int t_unreachable(void) {
        char brokers[64], err[512];
        snprintf(brokers, sizeof(brokers), "127.0.0.1:%d", closed_port());
        canopy_kafka_conf c;
        CHECK(canopy_kafka_conf_init(&c, brokers) == 0, "conf");
        c.startup_timeout_ms = 2000;
        canopy_kafka_producer *kp = NULL;
        int64_t t0 = mono_ms();
        canopy_err e = canopy_kafka_producer_new(&c, NULL, NULL, &kp, err, sizeof(err));
        int64_t t1 = mono_ms();
        CHECK(e == CANOPY_ERR_KAFKA_UNREACHABLE && !kp, "producer_new: %s", canopy_err_name(e));
        CHECK(strstr(err, "no Kafka broker reachable at") && strstr(err, brokers), "message: %s", err);
        CHECK(strstr(err, "check kafka.brokers"), "the message does not say what to check: %s", err);
        /* Bounded (not a timing test: generous room for a slow machine). */
        CHECK(t1 - t0 < c.startup_timeout_ms + 20000, "producer_new waited %lld ms", (long long)(t1 - t0));
        printf("unreachable: producer: %s [%s, class %s] after %lld ms (bound %lld ms)\n", err, canopy_err_name(e),
               canopy_err_class_name(canopy_err_class_of(e)), (long long)(t1 - t0), (long long)c.startup_timeout_ms);
        canopy_topic topic = CANOPY_TOPIC_CHANGES;
        canopy_kafka_consumer_opts o = {"g-unreachable", &topic, 1, NULL, NULL, false};
        canopy_kafka_consumer *kc = NULL;
        t0 = mono_ms();
        e = canopy_kafka_consumer_new(&c, &o, &kc, err, sizeof(err));
        t1 = mono_ms();
        CHECK(e == CANOPY_ERR_KAFKA_UNREACHABLE && !kc, "consumer_new: %s", canopy_err_name(e));
        CHECK(strstr(err, "no Kafka broker reachable at"), "message: %s", err);
        CHECK(t1 - t0 < c.startup_timeout_ms + 20000, "consumer_new waited %lld ms", (long long)(t1 - t0));
        printf("unreachable: consumer: %s after %lld ms\n", err, (long long)(t1 - t0));
        /* a bad passthrough property is a config error naming it */
        c.extra = calloc(2, sizeof(char *));
        c.extra[0] = strdup("no.such.property=1");
        e = canopy_kafka_producer_new(&c, NULL, NULL, &kp, err, sizeof(err));
        CHECK(e == CANOPY_ERR_CONFIG && strstr(err, "no.such.property"), "extra: %s", err);
        printf("unreachable: bad extra property: %s\nPASS unreachable\n", err);
        canopy_kafka_conf_free(&c);
        return 0;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s produce-consume|dlq|kill|rebalance|unreachable\n", argv[0]);
                return 2;
        }
        test_name = argv[1];
        canopy_log_init("test-backbone");
        canopy_log_set_level(CANOPY_LOG_WARN);
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (!strcmp(argv[1], "produce-consume"))
                return t_produce_consume();
        if (!strcmp(argv[1], "dlq"))
                return t_dlq();
        if (!strcmp(argv[1], "kill"))
                return t_kill(argv[0]);
        if (!strcmp(argv[1], "worker"))
                return t_worker(argc, argv);
        if (!strcmp(argv[1], "lost"))
                return t_lost();
        if (!strcmp(argv[1], "rebalance"))
                return t_rebalance();
        if (!strcmp(argv[1], "unreachable"))
                return t_unreachable();
        fprintf(stderr, "unknown test %s\n", argv[1]);
        return 2;
}
