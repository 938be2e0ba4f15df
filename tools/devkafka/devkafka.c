/* canopy-devkafka: a development Kafka-protocol broker.
 *
 * Hosts librdkafka's mock cluster (rdkafka_mock.h) in one process so that any
 * other process (Canopy's services, kcat, tests) can talk the real Kafka
 * protocol to it on 127.0.0.1. A small line protocol on a TCP control port
 * injects faults (broker down/up, round-trip time, leader moves, request
 * errors) and creates topics.
 *
 * Nothing in Canopy depends on this program rather than on the Kafka
 * protocol: production runs against a real cluster. See docs/DEVKAFKA.md.
 *
 * Also a client: `canopy-devkafka ctl ADDR COMMAND...` sends one command to a
 * running instance and prints the reply (exit 1 on ERR, 2 on I/O error).
 */
#include "canopy/log.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MOD "devkafka"

/* Caps: everything a client can grow is bounded. */
#define MAX_TOPICS 256            /* --topic options */
#define MAX_BROKERS 32            /* --brokers */
#define MAX_PARTITIONS 10000      /* per topic */
#define MAX_CLIENTS 32            /* concurrent control connections */
#define MAX_LINE 1024             /* control command line, bytes */
#define MAX_ERRORS_PUSH 100000    /* errors COUNT */
#define MAX_RTT_MS 600000         /* rtt MS */

struct topic_spec {
        char *name; /* (owned) */
        int partitions;
};

struct client {
        int fd; /* -1 when the slot is free */
        size_t len;
        char buf[MAX_LINE + 1];
};

struct devkafka {
        rd_kafka_t *rk;                 /* hosts the mock cluster */
        rd_kafka_mock_cluster_t *mc;    /* (owned by rk's lifetime) */
        int brokers;
        const char *bootstraps;         /* (borrowed from mc) */
        int lfd;                        /* control listener */
        struct client clients[MAX_CLIENTS];
};

static void usage(FILE *out)
{
        fprintf(out,
"Usage: canopy-devkafka [OPTIONS]\n"
"       canopy-devkafka ctl HOST:PORT COMMAND [ARGS...]\n"
"\n"
"A development Kafka-protocol broker: librdkafka's mock cluster hosted in one\n"
"process, served on 127.0.0.1 to any Kafka client (Canopy, kcat, ...).\n"
"\n"
"Options:\n"
"  --brokers N              number of brokers (default 3, max %d)\n"
"  --topic NAME:PARTITIONS  create a topic before clients connect (repeatable;\n"
"                           replication factor min(brokers, 3))\n"
"  --bootstrap-file F       write the bootstrap list to F (atomically) when ready\n"
"  --control HOST:PORT      control interface address (default 127.0.0.1:0;\n"
"                           port 0 picks a free port; HOST must be an IPv4 literal)\n"
"  --control-file F         write the actual control address (HOST:PORT) to F\n"
"  --no-control             do not open a control interface\n"
"  -h, --help               this help\n"
"\n"
"The bootstrap list (host:port,...) is printed on stdout once the cluster is\n"
"ready. SIGTERM or SIGINT shut the cluster down cleanly.\n"
"\n"
"Control protocol (TCP, one command per line, reply \"OK ...\" or \"ERR ...\"):\n"
"  ping                          OK pong\n"
"  bootstrap                     OK <bootstrap list>\n"
"  broker-down ID                disconnect broker ID, refuse new connections\n"
"  broker-up ID                  accept connections to broker ID again\n"
"  rtt ID MS                     add MS ms of round-trip time to broker ID\n"
"  leader TOPIC PARTITION ID     move the partition's leader (-1: leaderless)\n"
"  errors APIKEY CODE COUNT      fail the next COUNT requests of APIKEY with\n"
"                                CODE (APIKEY: number or name, e.g. Produce=0,\n"
"                                Fetch=1, Metadata=3, OffsetCommit=8; CODE: number\n"
"                                or name, e.g. NOT_LEADER_FOR_PARTITION)\n"
"  clear-errors APIKEY           drop the pending errors of APIKEY\n"
"  topic NAME PARTITIONS         create a topic\n"
"  help                          list the commands\n"
"Broker ids are 1..N.\n"
"\n"
"Limits of the mock cluster (design around them, see docs/DEVKAFKA.md):\n"
"  - each partition keeps at most 5 MiB and 100k message sets; older data is\n"
"    dropped SILENTLY: give dev topics many partitions;\n"
"  - no Admin API (CreateTopics, DescribeConfigs, ListGroups time out): create\n"
"    topics with --topic or the control command; topics auto-created by\n"
"    clients get 4 partitions;\n"
"  - retried duplicates are dropped only for transactional producers: a plain\n"
"    idempotent producer can see duplicates after broker-down (not after\n"
"    injected request errors);\n"
"  - aborted transactions stay visible to read_committed consumers;\n"
"  - a fresh consumer group takes about 3 s to form; a member that dies during\n"
"    a join can stall the group 30 s or more (use a short session.timeout.ms\n"
"    and a unique group id per test);\n"
"  - memory only: everything is lost at exit (about 875 MB RSS after 3M\n"
"    messages of 300 bytes).\n",
                MAX_BROKERS);
}

/* ---- small parsing helpers ---- */

static bool parse_long(const char *s, long min, long max, long *ret)
{
        char *end;
        long v;

        if (!s || !*s)
                return false;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || *end || v < min || v > max)
                return false;
        *ret = v;
        return true;
}

/* Split "HOST:PORT" (IPv4 literal) into a sockaddr. */
static bool parse_addr(const char *s, struct sockaddr_in *sa)
{
        char host[64];
        const char *colon = strrchr(s, ':');
        long port;
        size_t hl;

        if (!colon)
                return false;
        hl = (size_t)(colon - s);
        if (hl == 0 || hl >= sizeof(host))
                return false;
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (!strcmp(host, "localhost"))
                strcpy(host, "127.0.0.1");
        if (!parse_long(colon + 1, 0, 65535, &port))
                return false;
        memset(sa, 0, sizeof(*sa));
        sa->sin_family = AF_INET;
        sa->sin_port = htons((uint16_t)port);
        return inet_pton(AF_INET, host, &sa->sin_addr) == 1;
}

/* Write CONTENT plus a newline to PATH atomically (temp file + rename). */
static int write_file_atomic(const char *path, const char *content)
{
        char tmp[PATH_MAX];
        FILE *f;
        int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());

        if (n < 0 || (size_t)n >= sizeof(tmp))
                return -1;
        f = fopen(tmp, "w");
        if (!f)
                return -1;
        if (fprintf(f, "%s\n", content) < 0 || fflush(f) || fsync(fileno(f))) {
                fclose(f);
                unlink(tmp);
                return -1;
        }
        if (fclose(f) || rename(tmp, path)) {
                unlink(tmp);
                return -1;
        }
        return 0;
}

static const struct {
        const char *name;
        int16_t key;
} api_names[] = {
        {"Produce", 0},          {"Fetch", 1},
        {"ListOffsets", 2},      {"Metadata", 3},
        {"OffsetCommit", 8},     {"OffsetFetch", 9},
        {"FindCoordinator", 10}, {"JoinGroup", 11},
        {"Heartbeat", 12},       {"LeaveGroup", 13},
        {"SyncGroup", 14},       {"DescribeGroups", 15},
        {"ListGroups", 16},      {"SaslHandshake", 17},
        {"ApiVersions", 18},     {"CreateTopics", 19},
        {"InitProducerId", 22},  {"AddPartitionsToTxn", 24},
        {"AddOffsetsToTxn", 25}, {"EndTxn", 26},
        {"TxnOffsetCommit", 28},
};

static bool parse_apikey(const char *s, int16_t *ret)
{
        long v;
        size_t i;

        for (i = 0; i < sizeof(api_names) / sizeof(api_names[0]); i++) {
                if (!strcasecmp(s, api_names[i].name)) {
                        *ret = api_names[i].key;
                        return true;
                }
        }
        if (!parse_long(s, 0, 1000, &v))
                return false;
        *ret = (int16_t)v;
        return true;
}

/* Error code: a number (Kafka protocol code, or librdkafka's negative
 * internal codes) or a name as in rd_kafka_err2name (with or without the
 * RD_KAFKA_RESP_ERR_ prefix). */
static bool parse_errcode(const char *s, rd_kafka_resp_err_t *ret)
{
        const struct rd_kafka_err_desc *descs;
        size_t cnt, i;
        long v;

        if (parse_long(s, -200, 1000, &v)) {
                *ret = (rd_kafka_resp_err_t)v;
                return true;
        }
        if (!strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18))
                s += 18;
        rd_kafka_get_err_descs(&descs, &cnt);
        for (i = 0; i < cnt; i++) {
                if (descs[i].name && !strcasecmp(descs[i].name, s)) {
                        *ret = descs[i].code;
                        return true;
                }
        }
        return false;
}

/* ---- the mock cluster ---- */

static int create_topic(struct devkafka *dk, const char *name, int partitions)
{
        int rf = dk->brokers < 3 ? dk->brokers : 3;
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(dk->mc, name, partitions, rf);

        if (err) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot create topic %s: %s", name,
                           rd_kafka_err2str(err));
                return -1;
        }
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "topic %s created with %d partitions", name,
                   partitions);
        return 0;
}

/* Execute one control command (LINE is modified). Writes the reply line,
 * without newline, to OUT. */
static void execute(struct devkafka *dk, char *line, char *out, size_t outsz)
{
        char *argv[8];
        int argc = 0;
        char *save = NULL, *tok;
        long a, b;
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

        for (tok = strtok_r(line, " \t\r", &save); tok && argc < 8;
             tok = strtok_r(NULL, " \t\r", &save))
                argv[argc++] = tok;
        if (tok) {
                snprintf(out, outsz, "ERR too many arguments");
                return;
        }
        if (argc == 0) {
                snprintf(out, outsz, "ERR empty command");
                return;
        }

#define NEED(n, usage_text)                                                        \
        do {                                                                       \
                if (argc != (n) + 1) {                                             \
                        snprintf(out, outsz, "ERR usage: %s", usage_text);         \
                        return;                                                    \
                }                                                                  \
        } while (0)

        if (!strcmp(argv[0], "ping")) {
                NEED(0, "ping");
                snprintf(out, outsz, "OK pong");
        } else if (!strcmp(argv[0], "bootstrap")) {
                NEED(0, "bootstrap");
                snprintf(out, outsz, "OK %s", dk->bootstraps);
        } else if (!strcmp(argv[0], "help")) {
                snprintf(out, outsz,
                         "OK ping bootstrap broker-down broker-up rtt leader errors "
                         "clear-errors topic help");
        } else if (!strcmp(argv[0], "broker-down") || !strcmp(argv[0], "broker-up")) {
                bool down = !strcmp(argv[0], "broker-down");

                NEED(1, down ? "broker-down ID" : "broker-up ID");
                if (!parse_long(argv[1], 1, dk->brokers, &a)) {
                        snprintf(out, outsz, "ERR broker id must be 1..%d", dk->brokers);
                        return;
                }
                err = down ? rd_kafka_mock_broker_set_down(dk->mc, (int32_t)a)
                           : rd_kafka_mock_broker_set_up(dk->mc, (int32_t)a);
                if (!err)
                        snprintf(out, outsz, "OK broker %ld %s", a, down ? "down" : "up");
        } else if (!strcmp(argv[0], "rtt")) {
                NEED(2, "rtt ID MS");
                if (!parse_long(argv[1], 1, dk->brokers, &a) ||
                    !parse_long(argv[2], 0, MAX_RTT_MS, &b)) {
                        snprintf(out, outsz, "ERR broker id must be 1..%d, MS 0..%d",
                                 dk->brokers, MAX_RTT_MS);
                        return;
                }
                err = rd_kafka_mock_broker_set_rtt(dk->mc, (int32_t)a, (int)b);
                if (!err)
                        snprintf(out, outsz, "OK broker %ld rtt %ld ms", a, b);
        } else if (!strcmp(argv[0], "leader")) {
                long p;

                NEED(3, "leader TOPIC PARTITION BROKER");
                if (!parse_long(argv[2], 0, MAX_PARTITIONS - 1, &p) ||
                    !parse_long(argv[3], -1, dk->brokers, &b) || b == 0) {
                        snprintf(out, outsz, "ERR partition must be >= 0, broker 1..%d or -1",
                                 dk->brokers);
                        return;
                }
                err = rd_kafka_mock_partition_set_leader(dk->mc, argv[1], (int32_t)p,
                                                         (int32_t)b);
                if (!err)
                        snprintf(out, outsz, "OK %s [%ld] leader %ld", argv[1], p, b);
        } else if (!strcmp(argv[0], "errors")) {
                int16_t key;
                rd_kafka_resp_err_t code;
                rd_kafka_resp_err_t *codes;

                NEED(3, "errors APIKEY CODE COUNT");
                if (!parse_apikey(argv[1], &key)) {
                        snprintf(out, outsz, "ERR unknown api key %s", argv[1]);
                        return;
                }
                if (!parse_errcode(argv[2], &code)) {
                        snprintf(out, outsz, "ERR unknown error code %s", argv[2]);
                        return;
                }
                if (!parse_long(argv[3], 1, MAX_ERRORS_PUSH, &a)) {
                        snprintf(out, outsz, "ERR COUNT must be 1..%d", MAX_ERRORS_PUSH);
                        return;
                }
                codes = malloc(sizeof(*codes) * (size_t)a);
                if (!codes) {
                        snprintf(out, outsz, "ERR out of memory");
                        return;
                }
                for (b = 0; b < a; b++)
                        codes[b] = code;
                rd_kafka_mock_push_request_errors_array(dk->mc, key, (size_t)a, codes);
                free(codes);
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "fault: %ld x %s on api key %d", a,
                           rd_kafka_err2name(code), key);
                snprintf(out, outsz, "OK %ld x %s on api key %d", a, rd_kafka_err2name(code),
                         key);
        } else if (!strcmp(argv[0], "clear-errors")) {
                int16_t key;

                NEED(1, "clear-errors APIKEY");
                if (!parse_apikey(argv[1], &key)) {
                        snprintf(out, outsz, "ERR unknown api key %s", argv[1]);
                        return;
                }
                rd_kafka_mock_clear_request_errors(dk->mc, key);
                snprintf(out, outsz, "OK cleared api key %d", key);
        } else if (!strcmp(argv[0], "topic")) {
                NEED(2, "topic NAME PARTITIONS");
                if (!parse_long(argv[2], 1, MAX_PARTITIONS, &a)) {
                        snprintf(out, outsz, "ERR PARTITIONS must be 1..%d", MAX_PARTITIONS);
                        return;
                }
                if (create_topic(dk, argv[1], (int)a)) {
                        snprintf(out, outsz, "ERR cannot create topic %s", argv[1]);
                        return;
                }
                snprintf(out, outsz, "OK topic %s %ld", argv[1], a);
        } else {
                snprintf(out, outsz, "ERR unknown command %s (try help)", argv[0]);
                return;
        }
#undef NEED
        if (err)
                snprintf(out, outsz, "ERR %s", rd_kafka_err2str(err));
        else if (strcmp(argv[0], "ping") && strcmp(argv[0], "bootstrap") &&
                 strcmp(argv[0], "help") && strcmp(argv[0], "errors") &&
                 strcmp(argv[0], "topic"))
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "control: %s", out);
}

/* ---- control server ---- */

static int listen_control(const char *addr, char *actual, size_t actualsz)
{
        struct sockaddr_in sa;
        socklen_t sl = sizeof(sa);
        char host[INET_ADDRSTRLEN];
        int one = 1;
        int fd;

        if (!parse_addr(addr, &sa)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL,
                           "bad --control address %s (want IPV4:PORT)", addr);
                return -1;
        }
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 16) ||
            getsockname(fd, (struct sockaddr *)&sa, &sl)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot listen on %s: %s", addr,
                           strerror(errno));
                close(fd);
                return -1;
        }
        inet_ntop(AF_INET, &sa.sin_addr, host, sizeof(host));
        snprintf(actual, actualsz, "%s:%u", host, (unsigned)ntohs(sa.sin_port));
        return fd;
}

static void client_close(struct client *c)
{
        close(c->fd);
        c->fd = -1;
        c->len = 0;
}

static void send_all(int fd, const char *buf, size_t len)
{
        /* Replies are short; a client that does not read them is dropped. */
        while (len > 0) {
                ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        struct pollfd p = {.fd = fd, .events = POLLOUT};

                        if (poll(&p, 1, 1000) <= 0)
                                return;
                        continue;
                }
                if (n <= 0)
                        return;
                buf += n;
                len -= (size_t)n;
        }
}

/* Read from a client; execute every complete line. */
static void client_read(struct devkafka *dk, struct client *c)
{
        ssize_t n = recv(c->fd, c->buf + c->len, MAX_LINE - c->len, 0);
        char *nl;

        if (n < 0 && (errno == EINTR || errno == EAGAIN))
                return;
        if (n <= 0) {
                client_close(c);
                return;
        }
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        while ((nl = memchr(c->buf, '\n', c->len))) {
                char reply[MAX_LINE + 256];
                size_t linelen = (size_t)(nl - c->buf);

                *nl = '\0';
                execute(dk, c->buf, reply, sizeof(reply) - 1);
                strcat(reply, "\n");
                send_all(c->fd, reply, strlen(reply));
                memmove(c->buf, nl + 1, c->len - linelen - 1);
                c->len -= linelen + 1;
                c->buf[c->len] = '\0';
        }
        if (c->len >= MAX_LINE) {
                static const char msg[] = "ERR line too long\n";

                send_all(c->fd, msg, sizeof(msg) - 1);
                client_close(c);
        }
}

static void accept_client(struct devkafka *dk)
{
        int fd = accept4(dk->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        int i;

        if (fd < 0)
                return;
        for (i = 0; i < MAX_CLIENTS; i++) {
                if (dk->clients[i].fd < 0) {
                        dk->clients[i].fd = fd;
                        dk->clients[i].len = 0;
                        return;
                }
        }
        send_all(fd, "ERR too many control connections\n", 33);
        close(fd);
}

/* Serve the control port until SIGTERM/SIGINT arrives on SFD. */
static void serve(struct devkafka *dk, int sfd)
{
        for (;;) {
                struct pollfd pfd[MAX_CLIENTS + 2];
                int idx[MAX_CLIENTS];
                int n = 0, i, k;

                pfd[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
                if (dk->lfd >= 0)
                        pfd[n++] = (struct pollfd){.fd = dk->lfd, .events = POLLIN};
                k = n;
                for (i = 0; i < MAX_CLIENTS; i++) {
                        if (dk->clients[i].fd >= 0) {
                                idx[n - k] = i;
                                pfd[n++] = (struct pollfd){.fd = dk->clients[i].fd,
                                                           .events = POLLIN};
                        }
                }
                if (poll(pfd, (nfds_t)n, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "poll: %s", strerror(errno));
                        return;
                }
                if (pfd[0].revents) {
                        struct signalfd_siginfo si;

                        if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                                canopy_log(CANOPY_LOG_INFO, MOD, NULL,
                                           "signal %u: shutting down", si.ssi_signo);
                        return;
                }
                if (dk->lfd >= 0 && pfd[1].revents)
                        accept_client(dk);
                for (i = k; i < n; i++)
                        if (pfd[i].revents)
                                client_read(dk, &dk->clients[idx[i - k]]);
        }
}

/* ---- client mode ---- */

static int ctl_main(int argc, char **argv)
{
        struct sockaddr_in sa;
        char line[MAX_LINE + 2];
        char reply[4096];
        size_t len = 0, rl = 0;
        int fd, i;

        if (argc < 2) {
                fprintf(stderr, "usage: canopy-devkafka ctl HOST:PORT COMMAND [ARGS...]\n");
                return 2;
        }
        if (!parse_addr(argv[0], &sa)) {
                fprintf(stderr, "canopy-devkafka ctl: bad address %s\n", argv[0]);
                return 2;
        }
        for (i = 1; i < argc; i++) {
                size_t al = strlen(argv[i]);

                if (len + al + 2 > MAX_LINE) {
                        fprintf(stderr, "canopy-devkafka ctl: command too long\n");
                        return 2;
                }
                if (i > 1)
                        line[len++] = ' ';
                memcpy(line + len, argv[i], al);
                len += al;
        }
        line[len++] = '\n';

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
                fprintf(stderr, "canopy-devkafka ctl: cannot connect to %s: %s\n", argv[0],
                        strerror(errno));
                if (fd >= 0)
                        close(fd);
                return 2;
        }
        send_all(fd, line, len);
        while (rl < sizeof(reply) - 1) {
                ssize_t n = recv(fd, reply + rl, sizeof(reply) - 1 - rl, 0);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                rl += (size_t)n;
                if (memchr(reply, '\n', rl))
                        break;
        }
        close(fd);
        reply[rl] = '\0';
        if (!memchr(reply, '\n', rl)) {
                fprintf(stderr, "canopy-devkafka ctl: no reply from %s\n", argv[0]);
                return 2;
        }
        fputs(reply, stdout);
        return strncmp(reply, "OK", 2) ? 1 : 0;
}

/* ---- main ---- */

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                {"brokers", required_argument, NULL, 'b'},
                {"topic", required_argument, NULL, 't'},
                {"bootstrap-file", required_argument, NULL, 'B'},
                {"control", required_argument, NULL, 'c'},
                {"control-file", required_argument, NULL, 'C'},
                {"no-control", no_argument, NULL, 'n'},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        struct devkafka dk = {.brokers = 3, .lfd = -1};
        struct topic_spec topics[MAX_TOPICS];
        int ntopics = 0;
        const char *bootstrap_file = NULL, *control = "127.0.0.1:0", *control_file = NULL;
        bool no_control = false;
        char control_actual[64] = "";
        char errstr[512];
        rd_kafka_conf_t *conf;
        sigset_t mask;
        int sfd, opt, i, rc = 1;
        long v;

        if (argc >= 2 && !strcmp(argv[1], "ctl"))
                return ctl_main(argc - 2, argv + 2);

        canopy_log_init("devkafka");

        while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                switch (opt) {
                case 'b':
                        if (!parse_long(optarg, 1, MAX_BROKERS, &v)) {
                                fprintf(stderr, "--brokers: 1..%d\n", MAX_BROKERS);
                                return 2;
                        }
                        dk.brokers = (int)v;
                        break;
                case 't': {
                        char *colon = strrchr(optarg, ':');

                        if (ntopics >= MAX_TOPICS) {
                                fprintf(stderr, "--topic: at most %d\n", MAX_TOPICS);
                                return 2;
                        }
                        if (!colon || colon == optarg ||
                            !parse_long(colon + 1, 1, MAX_PARTITIONS, &v)) {
                                fprintf(stderr, "--topic: want NAME:PARTITIONS (1..%d)\n",
                                        MAX_PARTITIONS);
                                return 2;
                        }
                        topics[ntopics].name = strndup(optarg, (size_t)(colon - optarg));
                        topics[ntopics].partitions = (int)v;
                        ntopics++;
                        break;
                }
                case 'B':
                        bootstrap_file = optarg;
                        break;
                case 'c':
                        control = optarg;
                        break;
                case 'C':
                        control_file = optarg;
                        break;
                case 'n':
                        no_control = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "unexpected argument %s\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        for (i = 0; i < MAX_CLIENTS; i++)
                dk.clients[i].fd = -1;

        /* Block the shutdown signals before librdkafka starts its threads, so
         * that they are delivered to the signalfd only. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        sfd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sfd < 0) {
                perror("signalfd");
                return 1;
        }

        /* The mock cluster lives inside an rd_kafka_t: a producer handle that
         * is never used to produce. It has no bootstrap servers of its own. */
        conf = rd_kafka_conf_new();
        if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) ||
            rd_kafka_conf_set(conf, "client.id", "canopy-devkafka", errstr, sizeof(errstr))) {
                fprintf(stderr, "config: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
                return 1;
        }
        dk.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!dk.rk) {
                fprintf(stderr, "rd_kafka_new: %s\n", errstr);
                return 1;
        }
        dk.mc = rd_kafka_mock_cluster_new(dk.rk, dk.brokers);
        if (!dk.mc) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot create the mock cluster");
                goto out;
        }
        dk.bootstraps = rd_kafka_mock_cluster_bootstraps(dk.mc);

        for (i = 0; i < ntopics; i++)
                if (create_topic(&dk, topics[i].name, topics[i].partitions))
                        goto out;

        if (!no_control) {
                dk.lfd = listen_control(control, control_actual, sizeof(control_actual));
                if (dk.lfd < 0)
                        goto out;
                if (control_file && write_file_atomic(control_file, control_actual)) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot write %s: %s",
                                   control_file, strerror(errno));
                        goto out;
                }
        }
        /* The bootstrap file is written last: its presence means ready. */
        if (bootstrap_file && write_file_atomic(bootstrap_file, dk.bootstraps)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot write %s: %s", bootstrap_file,
                           strerror(errno));
                goto out;
        }
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "ready: %d brokers at %s, control %s",
                   dk.brokers, dk.bootstraps, no_control ? "off" : control_actual);
        printf("%s\n", dk.bootstraps);
        fflush(stdout);

        serve(&dk, sfd);
        rc = 0;
out:
        for (i = 0; i < MAX_CLIENTS; i++)
                if (dk.clients[i].fd >= 0)
                        client_close(&dk.clients[i]);
        if (dk.lfd >= 0)
                close(dk.lfd);
        if (dk.mc)
                rd_kafka_mock_cluster_destroy(dk.mc);
        rd_kafka_destroy(dk.rk);
        for (i = 0; i < ntopics; i++)
                free(topics[i].name);
        close(sfd);
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "stopped");
        return rc;
}
