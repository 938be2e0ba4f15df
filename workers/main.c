/* canopy-worker: the stateless join and export stages (docs/WORKERS.md).
 *
 *   canopy-worker -c worker.yaml [--set key=value ...] [--dump-config]
 *
 * main() reads as the table of contents: configuration, rules, the shared
 * producer, the metrics endpoint, one thread per stage, clean stop on
 * SIGINT/SIGTERM (offsets of recorded effects committed, nothing else). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "canopy/conf_worker.h"
#include "canopy/kafka.h"
#include "canopy/log.h"
#include "canopy/rules.h"
#include "worker.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) {
        (void)sig;
        stop_flag = 1;
}

int64_t worker_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool worker_backoff(worker *w, int attempt) {
        int64_t ms = 100LL << (attempt < 6 ? attempt : 6); /* 100 ms .. 6.4 s */
        for (int64_t slept = 0; slept < ms && !*w->stop; slept += 50) {
                struct timespec ts = {0, 50 * 1000000L};
                nanosleep(&ts, NULL);
        }
        return !*w->stop;
}

canopy_err worker_resolve_claim(worker *w, canopy_state *st, const char *mv_id, bool *ret_send) {
        *ret_send = true;
        canopy_err err = canopy_state_resolve_claim(st, mv_id, ret_send);
        if (!err && !*ret_send)
                atomic_fetch_add_explicit(&w->m.resolve_coalesced, 1, memory_order_relaxed);
        return err;
}

void worker_lag_sample(canopy_kafka_consumer *kc, atomic_int_fast64_t *slot, int64_t *next_ms) {
        int64_t now = worker_now_ms(), lag = 0;
        if (now < *next_ms)
                return;
        *next_ms = now + 1000;
        if (canopy_kafka_consumer_lag(kc, &lag) == CANOPY_OK)
                atomic_store_explicit(slot, lag, memory_order_relaxed);
}

bool worker_dead_letter(worker *w, canopy_kafka_consumer *kc, const canopy_kafka_msg *m, canopy_err err,
                        const char *reason, atomic_uint_fast64_t *dead) {
        for (int attempt = 0;; attempt++) {
                canopy_err de = canopy_kafka_dead_letter(kc, m, err, reason);
                if (!de) {
                        atomic_fetch_add_explicit(dead, 1, memory_order_relaxed);
                        return true;
                }
                canopy_log_ctx lc = {NULL, NULL, m->topic, m->partition, m->offset};
                canopy_log(CANOPY_LOG_ERROR, "kafka", &lc,
                           "dead letter not delivered (%s): retrying; the partition waits, nothing after it is "
                           "committed",
                           canopy_err_text(de));
                if (!worker_backoff(w, attempt))
                        return false;
        }
}

void worker_lost_check(worker *w, canopy_kafka_consumer *kc, const char *stage, uint64_t *seen,
                       atomic_uint_fast64_t *lost) {
        uint64_t now = canopy_kafka_consumer_lost(kc);
        if (now <= *seen)
                return;
        CANOPY_ERROR("kafka", "%s stage: events were lost: the broker no longer holds %llu position(s) this stage had not "
                          "read (retention shorter than the backlog, or a truncated topic; see the rdkafka OFFSET "
                          "line); requesting a full scan of every connector",
                     stage, (unsigned long long)(now - *seen));
        size_t n = canopy_rules_connector_count(w->rules), sent = 0;
        char reason[160];
        snprintf(reason, sizeof(reason), "%s stage of worker %s lost events (offset out of range)", stage,
                 w->worker_id ? w->worker_id : "?");
        for (size_t i = 0; i < n; i++) {
                canopy_control_event ce;
                memset(&ce, 0, sizeof(ce));
                ce.kind = CANOPY_CTL_FULL_SCAN;
                ce.target = (char *)canopy_rules_connector_at(w->rules, i)->id;
                ce.reason = reason;
                ce.actor = (char *)(w->worker_id ? w->worker_id : "canopy-worker");
                ce.ts_ms = worker_now_ms();
                char eb[256];
                canopy_err err = canopy_kafka_produce_control(w->kp, &ce, NULL, eb, sizeof(eb));
                if (err) {
                        CANOPY_ERROR("kafka", "cannot request a full scan of %s: %s (%s); retried after the next poll",
                                     ce.target, eb, canopy_err_name(err));
                        return;
                }
                sent++;
        }
        if (!worker_flush(w))
                return;
        atomic_fetch_add_explicit(&w->m.scans_requested, sent, memory_order_relaxed);
        atomic_fetch_add_explicit(lost, now - *seen, memory_order_relaxed);
        *seen = now;
}

static void on_delivery(void *msg_opaque, canopy_err err, const char *errstr, int32_t partition, int64_t offset,
                        void *app_opaque) {
        (void)msg_opaque;
        (void)partition;
        (void)offset;
        worker *w = app_opaque;
        if (err) {
                CANOPY_ERROR("kafka", "event not delivered: %s", errstr ? errstr : canopy_err_text(err));
                atomic_store(&w->delivery_failed, true);
        }
}

/* Serialises flushes: both stages share the producer. */
static pthread_mutex_t flush_lock = PTHREAD_MUTEX_INITIALIZER;

bool worker_flush(worker *w) {
        pthread_mutex_lock(&flush_lock);
        canopy_err err = CANOPY_OK;
        for (int i = 0; i < 600 && canopy_kafka_producer_outq_len(w->kp); i++) {
                err = canopy_kafka_producer_flush(w->kp, 1000);
                if (!err || *w->stop)
                        break;
        }
        if (!err && canopy_kafka_producer_outq_len(w->kp))
                err = CANOPY_ERR_TIMEOUT;
        pthread_mutex_unlock(&flush_lock);
        if (err)
                CANOPY_ERROR("kafka", "flush: %s", canopy_err_text(err));
        if (atomic_load(&w->delivery_failed)) {
                /* Offsets must not move past an event Kafka did not take:
                 * stop without committing; a restart replays them. */
                *w->stop = 1;
                return false;
        }
        return !err;
}

static void *join_thread(void *arg) {
        worker *w = arg;
        int rc = worker_join_run(w);
        if (rc)
                *w->stop = 1;
        return (void *)(intptr_t)rc;
}

typedef struct export_arg {
        worker *w;
        int idx;
} export_arg;

static void *export_thread(void *arg) {
        export_arg *ea = arg;
        int rc = worker_export_run(ea->w, ea->idx);
        if (rc)
                *ea->w->stop = 1;
        return (void *)(intptr_t)rc;
}

static void usage(FILE *f) {
        fputs("usage: canopy-worker -c FILE [--set key=value]... [--dump-config]\n"
              "  -c, --config FILE   worker configuration (docs/CONFIG.md, section worker)\n"
              "  -s, --set K=V       override one key (highest precedence)\n"
              "      --dump-config   print the effective configuration (secrets redacted) and exit\n",
              f);
}

int main(int argc, char **argv) {
        static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                                 {"set", required_argument, NULL, 's'},
                                                 {"dump-config", no_argument, NULL, 'D'},
                                                 {"help", no_argument, NULL, 'h'},
                                                 {NULL, 0, NULL, 0}};
        const char *path = NULL;
        const char *sets[64];
        size_t nsets = 0;
        bool dump = false;
        int opt;
        canopy_log_init("worker");
        while ((opt = getopt_long(argc, argv, "c:s:h", longopts, NULL)) != -1) {
                switch (opt) {
                case 'c':
                        path = optarg;
                        break;
                case 's':
                        if (nsets < 64)
                                sets[nsets++] = optarg;
                        break;
                case 'D':
                        dump = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }

        /* 1. Configuration and rules: any error stops start-up with its place. */
        canopy_worker_conf conf;
        memset(&conf, 0, sizeof(conf));
        char eb[1024];
        canopy_err err = canopy_conf_load(&canopy_conf_worker, &conf, path, sets, nsets, eb, sizeof(eb));
        if (err) {
                fprintf(stderr, "canopy-worker: %s\n", eb);
                return 2;
        }
        if (dump) {
                canopy_conf_dump(stdout, &canopy_conf_worker, &conf);
                canopy_conf_free(&canopy_conf_worker, &conf);
                return 0;
        }
        if (canopy_kafka_register_schemas(&conf.kafka, eb, sizeof(eb))) {
                fprintf(stderr, "canopy-worker: %s\n", eb);
                canopy_conf_free(&canopy_conf_worker, &conf);
                return 2;
        }
        canopy_rules *rules = NULL;
        canopy_rules_diags diags = {0};
        if (canopy_rules_load_file(conf.rules_file, &rules, &diags)) {
                fprintf(stderr, "%s", canopy_rules_diags_text(&diags));
                canopy_rules_diags_free(&diags);
                canopy_conf_free(&canopy_conf_worker, &conf);
                return 2;
        }
        canopy_rules_diags_free(&diags);

        worker w;
        memset(&w, 0, sizeof(w));
        atomic_store(&w.m.join_lag, -1);
        for (int i = 0; i < WORKER_MAX_EXPORT_THREADS; i++)
                atomic_store(&w.m.export_lag[i], -1);
        w.conf = &conf;
        w.rules = rules;
        w.stop = &stop_flag;
        char idbuf[300];
        if (conf.worker_id)
                w.worker_id = conf.worker_id;
        else {
                char host[256] = "worker";
                gethostname(host, sizeof(host) - 1);
                snprintf(idbuf, sizeof(idbuf), "%s-%d", host, (int)getpid());
                w.worker_id = idbuf;
        }

        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        /* 2. The shared producer (mv and exports events, dead letters). */
        int rc = 1;
        void *mh = NULL;
        err = canopy_kafka_producer_new(&conf.kafka, on_delivery, &w, &w.kp, eb, sizeof(eb));
        if (err) {
                CANOPY_ERROR("worker", "producer: %s", eb);
                goto out;
        }
        mh = worker_metrics_start(&w, conf.metrics_listen);

        /* 3. The stages: the join stage in one thread, the export stage in
         * export.threads. */
        bool run_join = strcmp(conf.stages, "export") != 0;
        bool run_export = strcmp(conf.stages, "join") != 0;
        CANOPY_INFO("worker", "worker %s starting: stages %s%s", w.worker_id, conf.stages,
                    conf.staging ? " (staging mode)" : "");
        /* The export stage waits on Graph and Redis round trips, not on
         * the CPU: export.threads consumers export that many mv events at
         * once. */
        int nexp = run_export ? (int)conf.export_threads : 0;
        pthread_t tj, te[64]; /* export.threads is at most 64 (conf_worker.c) */
        export_arg ea[64];
        int started = 0;
        bool failed = false;
        if (run_join && pthread_create(&tj, NULL, join_thread, &w))
                goto out;
        for (; started < nexp; started++) {
                ea[started] = (export_arg){&w, started};
                if (pthread_create(&te[started], NULL, export_thread, &ea[started])) {
                        CANOPY_ERROR("worker", "export thread %d: cannot start", started + 1);
                        stop_flag = 1;
                        failed = true;
                        break;
                }
        }
        void *rj = NULL, *re = NULL;
        if (run_join)
                pthread_join(tj, &rj);
        for (int i = 0; i < started; i++) {
                void *r = NULL;
                pthread_join(te[i], &r);
                if (r)
                        re = r;
        }
        if (failed)
                re = (void *)1;
        rc = (rj || re) ? 1 : 0;
        if (!rc && !worker_flush(&w))
                rc = 1;
out:
        worker_metrics_stop(mh);
        if (rc == 0)
                canopy_kafka_producer_free(w.kp);
        canopy_rules_free(rules);
        CANOPY_INFO("worker", "worker %s stopped (%s)", w.worker_id, rc ? "error" : "clean");
        canopy_conf_free(&canopy_conf_worker, &conf);
        return rc;
}
