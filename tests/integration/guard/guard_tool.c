/* guard_tool: drive the guard's Redis state from test scripts.
 *   guard_tool reserve N PREFIX     reserve N deletes; prints "allow A hold H"
 *   guard_tool run CONNECTOR TYPE TOTAL CHANGED DELETED FILTERED ERRORS [SCAN]
 *   guard_tool endscan CONNECTOR SCAN [START_MS]  (what the join stage does at
 *                                      END_OF_SCAN; prints "lifted" when it
 *                                      lifted a rejected quarantine)
 *   guard_tool error MV_ID JSON        (what the export stage does on a conflict)
 *   guard_tool runs BROKERS N SECONDS  read the exports topic from its start
 *                                      and print its RunRecords as CSV until N
 *                                      were seen (exit 1 after SECONDS)
 * Redis from CANOPY_TEST_REDIS_HOST/_PORT, key prefix "canopy:". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/avro.h"
#include "canopy/guard_policy.h"
#include "canopy/kafka.h"
#include "canopy/state.h"

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *const run_types[] = {"delta", "full"};
static const char *const run_statuses[] = {"success", "completed-errors", "stopped-quarantine"};

/* RunRecords of the exports topic as CSV lines; ExportRecords are skipped
 * (both share the topic, told apart by the schema fingerprint). */
static int read_runs(const char *brokers, int want, int seconds) {
        canopy_kafka_conf kc;
        canopy_kafka_conf_init(&kc, brokers);
        char group[64], eb[512];
        snprintf(group, sizeof(group), "guard-tool-%ld", (long)now_ms());
        canopy_topic topics[1] = {CANOPY_TOPIC_EXPORTS};
        canopy_kafka_consumer_opts o = {group, topics, 1, NULL, NULL, false};
        canopy_kafka_consumer *c = NULL;
        if (canopy_kafka_consumer_new(&kc, &o, &c, eb, sizeof(eb))) {
                fprintf(stderr, "guard_tool: %s\n", eb);
                canopy_kafka_conf_free(&kc);
                return 1;
        }
        int seen = 0;
        int64_t end = now_ms() + (int64_t)seconds * 1000;
        while (seen < want && now_ms() < end) {
                canopy_kafka_msg *m = NULL;
                if (canopy_kafka_consume(c, 200, &m) || !m)
                        continue;
                canopy_record rec;
                if (canopy_avro_peek(m->value, m->len, &rec, NULL) == CANOPY_OK && rec == CANOPY_REC_RUN) {
                        canopy_run_record rr;
                        if (canopy_avro_decode_run(m->value, m->len, &rr, eb, sizeof(eb))) {
                                printf("decode error: %s\n", eb);
                        } else {
                                printf("%s,%s,%s,%s,%lld,%lld,%lld,%lld,%lld,%s,key=%.*s\n", rr.connector,
                                       rr.object_type, run_types[rr.run_type], rr.scan_id ? rr.scan_id : "",
                                       (long long)rr.total, (long long)rr.changed, (long long)rr.deleted,
                                       (long long)rr.filtered, (long long)rr.errors, run_statuses[rr.status],
                                       (int)m->keylen, m->key ? (const char *)m->key : "");
                                canopy_run_record_free(&rr);
                        }
                        seen++;
                }
                canopy_kafka_msg_free(m);
        }
        canopy_kafka_consumer_close(c);
        canopy_kafka_consumer_free(c);
        canopy_kafka_conf_free(&kc);
        return seen >= want ? 0 : 1;
}

int main(int argc, char **argv) {
        if (argc == 5 && !strcmp(argv[1], "runs"))
                return read_runs(argv[2], atoi(argv[3]), atoi(argv[4]));
        const char *host = getenv("CANOPY_TEST_REDIS_HOST"), *port = getenv("CANOPY_TEST_REDIS_PORT");
        canopy_state *st = NULL;
        if (argc < 2 || !host || !port || canopy_state_new(host, atoi(port), NULL, "canopy:", 2000, &st)) {
                fprintf(stderr, "guard_tool: needs a command and CANOPY_TEST_REDIS_HOST/_PORT\n");
                return 2;
        }
        int rc = 0;
        if (!strcmp(argv[1], "reserve") && argc == 4) {
                int n = atoi(argv[2]), a = 0, h = 0;
                for (int i = 0; i < n; i++) {
                        char mv[128], info[160];
                        snprintf(mv, sizeof(mv), "%s%05d", argv[3], i);
                        snprintf(info, sizeof(info), "{\"type\":\"user\",\"displayName\":\"User %d\"}", i);
                        canopy_guard_verdict v;
                        if (canopy_guard_reserve(st, mv, info, now_ms(), &v, NULL)) {
                                rc = 1;
                                break;
                        }
                        a += v == CANOPY_GUARD_ALLOW;
                        h += v == CANOPY_GUARD_HOLD;
                }
                printf("allow %d hold %d\n", a, h);
        } else if (!strcmp(argv[1], "run") && argc >= 9) {
                const char *scan = argc > 9 ? argv[9] : NULL;
                for (int f = 0; f < 5; f++)
                        if (canopy_run_count(st, argv[2], argv[3], scan, (canopy_run_field)f, atoll(argv[4 + f]),
                                             now_ms()))
                                rc = 1;
        } else if (!strcmp(argv[1], "endscan") && (argc == 4 || argc == 5)) {
                size_t closed = 0;
                bool lifted = false;
                if (canopy_run_close(st, argv[2], argv[3], -1, 0, now_ms(), 0, &closed) || closed != 1)
                        rc = 1;
                else if (canopy_guard_scan_done(st, argv[2], argc == 5 ? atoll(argv[4]) : now_ms(), now_ms(),
                                                &lifted))
                        rc = 1;
                else if (lifted)
                        printf("lifted\n");
        } else if (!strcmp(argv[1], "error") && argc == 4) {
                if (canopy_state_error_set(st, argv[2], argv[3]))
                        rc = 1;
        } else {
                fprintf(stderr, "guard_tool: bad command\n");
                rc = 2;
        }
        canopy_state_free(st);
        return rc;
}
