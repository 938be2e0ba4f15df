/* Integration test: an idempotent producer survives broker faults injected
 * through canopy-devkafka's control interface with nothing lost, nothing
 * duplicated and per-partition order kept.
 *
 * Run under tests/harness/run-with --kafka --topic idem:6 (reads
 * CANOPY_TEST_KAFKA_BOOTSTRAP and CANOPY_TEST_KAFKA_CONTROL).
 *
 *   devkafka_idempotent N MODE [FAULTS]
 *   MODE: idempotent    enable.idempotence=true; exactly once, in order
 *         idempotent-nolost  the same, but duplicates are only counted:
 *                        nothing lost, first occurrences in order
 *         transactional  idempotent plus transactional.id, one transaction
 *                        per chunk; exactly once, in order
 *   FAULTS: comma-separated fault numbers 1..9 (default: all), see faults[]
 *
 * Produces N messages "seq" (keyed, so spread over partitions) in ten chunks;
 * before each chunk a fault is injected (request errors on Produce, broker
 * down/up, RTT, leader move). Then consumes every partition from the start
 * and checks each sequence number arrives exactly once and in increasing
 * order within its partition.
 *
 * Why two modes: librdkafka's mock cluster checks producer sequence numbers
 * (and drops retried duplicates) only for transactional producers. For a
 * plain idempotent producer, a request that was appended but whose response
 * was lost (the broker went down in between) is appended again on retry: a
 * real broker would drop it, the mock keeps both. A _TRANSPORT disconnect
 * does that too: the refused request is not appended, but the responses of
 * the requests still in flight on that connection are lost (1,126
 * duplicates of 50,000 measured under load). So broker-down and disconnect
 * faults are checked for exactly-once in transactional mode, and for
 * "nothing lost" in idempotent-nolost mode; idempotent mode is given the
 * faults that cannot leave an appended-but-unanswered request (request
 * errors, RTT, leader moves) and checks exactly-once.
 */
#include <librdkafka/rdkafka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOPIC "idem"
#define MAX_PARTS 64

static long delivered, failed;
static long errors_seen;
static long msgset_errors;
static bool fatal;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        fprintf(stderr, "FAIL: ");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(1);
}

/* Send one command to the devkafka control port; require an OK reply. */
static void ctl(const char *addr, const char *cmd)
{
        char host[64], reply[512];
        const char *colon = strrchr(addr, ':');
        struct sockaddr_in sa = {.sin_family = AF_INET};
        size_t rl = 0;
        int fd;

        if (!colon || (size_t)(colon - addr) >= sizeof(host))
                die("bad control address %s", addr);
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        sa.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
                die("bad control address %s", addr);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
                die("cannot connect to control %s", addr);
        if (write(fd, cmd, strlen(cmd)) < 0 || write(fd, "\n", 1) < 0)
                die("cannot send %s", cmd);
        while (rl < sizeof(reply) - 1) {
                ssize_t n = read(fd, reply + rl, sizeof(reply) - 1 - rl);

                if (n <= 0)
                        break;
                rl += (size_t)n;
                if (memchr(reply, '\n', rl))
                        break;
        }
        close(fd);
        reply[rl] = '\0';
        printf("fault: %s -> %s", cmd, rl ? reply : "(no reply)\n");
        if (strncmp(reply, "OK", 2))
                die("control command failed: %s", cmd);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
        (void)rk;
        (void)opaque;
        if (m->err) {
                failed++;
                fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(m->err));
        } else {
                delivered++;
        }
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
        (void)reason;
        (void)opaque;
        char buf[256];

        errors_seen++;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                rd_kafka_fatal_error(rk, buf, sizeof(buf));
                fprintf(stderr, "FATAL: %s\n", buf);
                fatal = true;
        }
}

/* With debug=msg, librdkafka logs one "encountered error" line for every
 * message set a broker refused: proof that the injected errors hit. Called
 * from librdkafka's threads. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        (void)rk;
        if (strstr(buf, "encountered error"))
                __atomic_fetch_add(&msgset_errors, 1, __ATOMIC_RELAXED);
        else if (level <= 4)
                fprintf(stderr, "rdkafka: %s %s\n", fac, buf);
}

/* Fault I is selected by the comma-separated list ONLY (NULL: all). */
static bool fault_selected(const char *only, int i)
{
        char buf[8];
        const char *p = only;
        size_t l;

        if (!only)
                return true;
        snprintf(buf, sizeof(buf), "%d", i);
        l = strlen(buf);
        while (p && *p) {
                if (!strncmp(p, buf, l) && (p[l] == ',' || p[l] == '\0'))
                        return true;
                p = strchr(p, ',');
                if (p)
                        p++;
        }
        return false;
}

/* Produce requests the selected faults tell to fail with a retriable error
 * that librdkafka logs per message set (faults 1, 2, 7, 9). */
static long expected_refusals(const char *only)
{
        static const int counts[10] = {0, 5, 3, 0, 0, 0, 0, 4, 0, 3};
        long sum = 0;
        int i;

        for (i = 0; i < 10; i++)
                if (fault_selected(only, i))
                        sum += counts[i];
        return sum;
}

static void txn_check(rd_kafka_error_t *error, const char *what)
{
        if (error) {
                fprintf(stderr, "FAIL: %s: %s\n", what, rd_kafka_error_string(error));
                exit(1);
        }
}

/* Commit the current transaction, retrying retriable errors (a broker that
 * is down comes back). An abort would leave the aborted messages visible to
 * consumers of the mock: it fails the test. */
static void commit(rd_kafka_t *rk)
{
        int tries;

        for (tries = 0; tries < 20; tries++) {
                rd_kafka_error_t *error = rd_kafka_commit_transaction(rk, 30000);

                if (!error)
                        return;
                fprintf(stderr, "commit_transaction: %s%s\n", rd_kafka_error_string(error),
                        rd_kafka_error_is_retriable(error) ? " (retrying)" : "");
                if (!rd_kafka_error_is_retriable(error)) {
                        rd_kafka_error_destroy(error);
                        die("%s", "transaction commit failed");
                }
                rd_kafka_error_destroy(error);
        }
        die("%s", "transaction commit kept failing");
}

static void set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
        char err[256];

        if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK)
                die("config: %s", err);
}

static void produce_chunk(rd_kafka_t *rk, long from, long to)
{
        char key[32], val[32];
        long i;

        for (i = from; i < to; i++) {
                rd_kafka_resp_err_t err;

                snprintf(key, sizeof(key), "k%ld", i % 997);
                snprintf(val, sizeof(val), "%ld", i);
                do {
                        err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(TOPIC),
                                                RD_KAFKA_V_KEY(key, strlen(key)),
                                                RD_KAFKA_V_VALUE(val, strlen(val)),
                                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                                RD_KAFKA_V_END);
                        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                rd_kafka_poll(rk, 50);
                } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL);
                if (err)
                        die("produce: %s", rd_kafka_err2str(err));
                rd_kafka_poll(rk, 0);
        }
}

/* Serve callbacks for about MS milliseconds, so that a fault is in effect
 * while requests are in flight. Correctness does not depend on it. */
static void poll_for(rd_kafka_t *rk, int ms)
{
        for (; ms > 0; ms -= 100)
                rd_kafka_poll(rk, 100);
}

int main(int argc, char **argv)
{
        const char *bootstrap = getenv("CANOPY_TEST_KAFKA_BOOTSTRAP");
        const char *control = getenv("CANOPY_TEST_KAFKA_CONTROL");
        long n = argc > 1 ? atol(argv[1]) : 50000;
        const char *mode = argc > 2 ? argv[2] : "idempotent";
        const char *only = argc > 3 ? argv[3] : NULL;
        bool txn, allow_dups = false;
        static const char *faults[10][2] = {
                {NULL, NULL},
                {"errors Produce NOT_LEADER_FOR_PARTITION 5", NULL},
                {"errors Produce REQUEST_TIMED_OUT 3", NULL},
                {"broker-down 2", "broker-up 2"},
                {"errors Produce _TRANSPORT 3", NULL},
                {"rtt 1 200", "rtt 1 0"},
                {"leader " TOPIC " 0 3", NULL},
                {"errors Produce NOT_ENOUGH_REPLICAS 4", NULL},
                {"broker-down 1", "broker-up 1"},
                {"errors Produce LEADER_NOT_AVAILABLE 3", NULL},
        };
        char errstr[256], gid[64];
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk, *ck;
        const rd_kafka_metadata_t *md;
        rd_kafka_topic_partition_list_t *parts;
        unsigned char *seen;
        long last[MAX_PARTS];
        bool eof[MAX_PARTS] = {false};
        int nparts, i, eofs = 0;
        long consumed = 0, dups = 0, disorder = 0, missing = 0;
        time_t deadline;

        if (!bootstrap || !control)
                die("%s", "run under run-with --kafka (CANOPY_TEST_KAFKA_* unset)");
        if (n < 10 || n > 10000000)
                die("N out of range: %s", argv[1]);
        if (!strcmp(mode, "transactional"))
                txn = true;
        else if (!strcmp(mode, "idempotent"))
                txn = false;
        else if (!strcmp(mode, "idempotent-nolost"))
                txn = false, allow_dups = true;
        else
                die("unknown mode %s", mode);

        /* ---- produce with faults ---- */
        conf = rd_kafka_conf_new();
        set(conf, "bootstrap.servers", bootstrap);
        set(conf, "enable.idempotence", "true");
        set(conf, "message.timeout.ms", "180000");
        set(conf, "linger.ms", "5");
        set(conf, "retry.backoff.ms", "50");
        set(conf, "debug", "msg");
        if (txn) {
                char tid[64];

                snprintf(tid, sizeof(tid), "idem-test-%ld", (long)getpid());
                set(conf, "transactional.id", tid);
                set(conf, "transaction.timeout.ms", "180000");
        }
        rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
        rd_kafka_conf_set_error_cb(conf, error_cb);
        rd_kafka_conf_set_log_cb(conf, log_cb);
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk)
                die("producer: %s", errstr);

        if (txn)
                txn_check(rd_kafka_init_transactions(rk, 60000), "init_transactions");
        for (i = 0; i < 10; i++) {
                bool inject = faults[i][0] && fault_selected(only, i);

                if (txn)
                        txn_check(rd_kafka_begin_transaction(rk), "begin_transaction");
                if (inject)
                        ctl(control, faults[i][0]);
                produce_chunk(rk, n * i / 10, n * (i + 1) / 10);
                if (inject && faults[i][1]) {
                        poll_for(rk, 1500);
                        ctl(control, faults[i][1]);
                }
                poll_for(rk, 200);
                if (txn)
                        commit(rk);
        }
        if (rd_kafka_flush(rk, 180000))
                die("%s", "flush timed out");
        printf("produced: %ld delivered, %ld failed, %ld client errors, "
               "%ld message sets refused by injected errors\n",
               delivered, failed, errors_seen, __atomic_load_n(&msgset_errors, __ATOMIC_RELAXED));
        if (fatal)
                die("%s", "idempotent producer raised a fatal error");
        if (failed || delivered != n)
                die("%s", "not every message was delivered");
        /* Each injected Produce error fails at least one message set. */
        if (__atomic_load_n(&msgset_errors, __ATOMIC_RELAXED) < expected_refusals(only))
                die("%s", "the injected request errors did not all hit");
        rd_kafka_destroy(rk);

        /* ---- consume every partition from the beginning ---- */
        conf = rd_kafka_conf_new();
        snprintf(gid, sizeof(gid), "idem-check-%ld", (long)getpid());
        set(conf, "bootstrap.servers", bootstrap);
        set(conf, "group.id", gid);
        set(conf, "enable.auto.commit", "false");
        set(conf, "enable.partition.eof", "true");
        set(conf, "isolation.level", "read_committed");
        set(conf, "auto.offset.reset", "earliest");
        ck = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
        if (!ck)
                die("consumer: %s", errstr);
        {
                rd_kafka_topic_t *rkt = rd_kafka_topic_new(ck, TOPIC, NULL);
                rd_kafka_resp_err_t err = rd_kafka_metadata(ck, 0, rkt, &md, 10000);

                rd_kafka_topic_destroy(rkt);
                if (err || md->topic_cnt != 1 || md->topics[0].err)
                        die("metadata: %s", rd_kafka_err2str(err));
        }
        nparts = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
        if (nparts < 1 || nparts > MAX_PARTS)
                die("%s", "unexpected partition count");
        parts = rd_kafka_topic_partition_list_new(nparts);
        for (i = 0; i < nparts; i++) {
                rd_kafka_topic_partition_list_add(parts, TOPIC, i)->offset =
                        RD_KAFKA_OFFSET_BEGINNING;
                last[i] = -1;
        }
        if (rd_kafka_assign(ck, parts))
                die("%s", "assign failed");
        rd_kafka_topic_partition_list_destroy(parts);

        seen = calloc((size_t)n, 1);
        deadline = time(NULL) + 120;
        while (eofs < nparts && time(NULL) < deadline) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(ck, 500);
                long seq;

                if (!m)
                        continue;
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                        if (m->partition < MAX_PARTS && !eof[m->partition]) {
                                eof[m->partition] = true;
                                eofs++;
                        }
                } else if (m->err) {
                        fprintf(stderr, "consume: %s\n", rd_kafka_message_errstr(m));
                } else {
                        char buf[32];
                        size_t l = m->len < sizeof(buf) - 1 ? m->len : sizeof(buf) - 1;

                        memcpy(buf, m->payload, l);
                        buf[l] = '\0';
                        seq = strtol(buf, NULL, 10);
                        consumed++;
                        if (seq < 0 || seq >= n) {
                                die("unexpected payload %s", buf);
                        } else if (seen[seq]++) {
                                dups++; /* order is checked on first occurrences */
                        } else {
                                if (seq <= last[m->partition])
                                        disorder++;
                                last[m->partition] = seq;
                        }
                }
                rd_kafka_message_destroy(m);
        }
        rd_kafka_consumer_close(ck);
        rd_kafka_destroy(ck);
        for (i = 0; i < n; i++)
                if (!seen[i])
                        missing++;
        free(seen);
        printf("consumed: %ld messages from %d partitions: %ld missing, %ld duplicated, "
               "%ld out of order\n", consumed, nparts, missing, dups, disorder);
        if (eofs < nparts)
                die("%s", "did not reach the end of every partition");
        if (allow_dups) {
                if (missing || disorder)
                        die("%s", "every sequence number must arrive, in order");
                if (dups)
                        printf("note: %ld duplicates: the mock drops retried duplicates only "
                               "for transactional producers (docs/DEVKAFKA.md)\n", dups);
                printf("PASS: %ld messages, none lost, through injected faults (%s)\n", n, mode);
                return 0;
        }
        if (missing || dups || disorder || consumed != n)
                die("%s", "every sequence number must arrive exactly once, in order");
        printf("PASS: %ld messages exactly once through injected faults (%s)\n", n, mode);
        return 0;
}
