/* canopy-producer-ldap: one process per connector (forest, domain or naming
 * context). Reads the directory's change feed and publishes one ChangeEvent
 * per object change to the changes topic. See docs/PRODUCERS.md.
 *
 *   canopy-producer-ldap -c connector.yaml [--set key=value ...]
 *   canopy-producer-ldap -c connector.yaml --check-config | --dump-config
 *
 * The process is either leader or standby for its connector (a lease in
 * Redis); only the leader reads and publishes.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "canopy/avro.h"
#include "canopy/guard_policy.h"
#include "canopy/http.h"
#include "canopy/log.h"
#include "producer.h"

static volatile int g_stop;

static void on_signal(int sig) {
        (void)sig;
        g_stop++;
}

static void usage(FILE *f) {
        fprintf(f, "usage: canopy-producer-ldap -c FILE [--set key=value]... [--check-config] [--dump-config]\n"
                   "  -c, --config FILE   connector configuration (YAML); see docs/CONFIG.md\n"
                   "      --set K=V       override one key (repeatable)\n"
                   "      --check-config  validate the configuration and exit\n"
                   "      --dump-config   print the effective configuration (secrets redacted) and exit\n");
}

static char *join_filter(prod *p) {
        canopy_producer_conf *cf = p->cf;
        size_t cap = 256;
        char **lists[3] = {cf->user_classes, cf->group_classes, cf->contact_classes};
        for (int l = 0; l < 3; l++)
                for (size_t i = 0; lists[l] && lists[l][i]; i++)
                        cap += strlen(lists[l][i]) + 16;
        cap += cf->filter ? strlen(cf->filter) : 0;
        char *f = malloc(cap);
        if (!f)
                return NULL;
        size_t o = (size_t)snprintf(f, cap, "(&(|");
        for (int l = 0; l < 3; l++)
                for (size_t i = 0; lists[l] && lists[l][i]; i++)
                        o += (size_t)snprintf(f + o, cap - o, "(objectClass=%s)", lists[l][i]);
        if (cf->filter && *cf->filter) {
                if (cf->filter[0] == '(')
                        o += (size_t)snprintf(f + o, cap - o, ")%s)", cf->filter);
                else
                        o += (size_t)snprintf(f + o, cap - o, ")(%s))", cf->filter);
        } else {
                snprintf(f + o, cap - o, "))");
        }
        return f;
}

static char **build_attrs(prod *p) {
        static const char *const book[] = {"objectClass", "objectGUID", "mS-DS-ConsistencyGuid", "isDeleted",
                                           "uSNChanged", "whenChanged", "entryUUID", "entryCSN",
                                           "modifyTimestamp",
                                           /* DirSync returns an object only when a requested attribute
                                            * changed: a rename changes name, a move parentGUID */
                                           "name", "parentGUID", NULL};
        size_t n = 0;
        for (size_t i = 0; p->cf->attributes && p->cf->attributes[i]; i++)
                n++;
        char **a = calloc(n + 16, sizeof(char *));
        if (!a)
                return NULL;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
                a[k++] = strdup(p->cf->attributes[i]);
        for (size_t i = 0; book[i]; i++)
                a[k++] = strdup(book[i]);
        if (strcasecmp(p->cf->anchor_attr, "auto"))
                a[k++] = strdup(p->cf->anchor_attr);
        return a;
}

/* ---- control topic: FULL_SCAN requests ---- */

typedef struct ctl {
        prod *p;
        pthread_t thr;
        volatile int stop;
        bool started;
} ctl;

static void *control_thread(void *arg) {
        ctl *c = arg;
        prod *p = c->p;
        canopy_producer_conf *cf = p->cf;
        char group[200], errbuf[512];
        snprintf(group, sizeof(group), "canopy-producer-%s", cf->connector);
        canopy_topic topics[1] = {CANOPY_TOPIC_CONTROL};
        canopy_kafka_consumer_opts o = {group, topics, 1, NULL, NULL, false}; /* from the start when the group is new: a request sent before the first run counts */
        canopy_kafka_consumer *kc = NULL;
        canopy_checkpoint *cp = NULL;
        canopy_checkpoint_opts co = {cf->redis_host, (int)cf->redis_port, cf->redis_password, 2000, cf->redis_prefix,
                                     cf->connector};
        while (!c->stop && !kc) {
                if (canopy_kafka_consumer_new(&cf->kafka, &o, &kc, errbuf, sizeof(errbuf))) {
                        canopy_log(CANOPY_LOG_WARN, MOD, NULL, "control topic consumer: %s", errbuf);
                        for (int i = 0; i < 50 && !c->stop; i++)
                                usleep(100000);
                }
        }
        while (!c->stop) {
                canopy_kafka_msg *m = NULL;
                canopy_err err = canopy_kafka_consume(kc, 500, &m);
                if (err == CANOPY_ERR_KAFKA_FATAL)
                        break;
                if (err || !m)
                        continue;
                canopy_control_event ce = {0};
                char eb[CANOPY_AVRO_ERRLEN];
                bool handled = true;
                if (!canopy_avro_decode_control(m->value, m->len, &ce, eb, sizeof(eb))) {
                        if (ce.kind == CANOPY_CTL_FULL_SCAN && ce.target && !strcmp(ce.target, cf->connector)) {
                                if (!cp && canopy_checkpoint_new(&co, &cp))
                                        cp = NULL;
                                if (cp && !canopy_checkpoint_flag_set(cp, "fullscan")) {
                                        canopy_log(CANOPY_LOG_INFO, MOD, NULL,
                                                   "full scan requested by %s%s%s", ce.actor ? ce.actor : "?",
                                                   ce.reason ? ": " : "", ce.reason ? ce.reason : "");
                                        atomic_store(&p->fullscan_requested, true);
                                } else {
                                        handled = false; /* keep the offset: read it again after a restart */
                                }
                        }
                        canopy_control_event_free(&ce);
                }
                if (handled) {
                        canopy_kafka_mark_done(kc, m);
                        canopy_kafka_commit(kc, false);
                }
                canopy_kafka_msg_free(m);
        }
        if (kc) {
                canopy_kafka_consumer_close(kc);
                canopy_kafka_consumer_free(kc);
        }
        canopy_checkpoint_free(cp);
        return NULL;
}

/* ---- metrics endpoint ---- */

static canopy_http *start_metrics(prod *p) {
        const char *l = p->cf->metrics_listen;
        if (!l || !*l)
                return NULL;
        char host[128] = "127.0.0.1";
        int port = 0;
        const char *colon = strrchr(l, ':');
        if (colon) {
                snprintf(host, sizeof(host), "%.*s", (int)(colon - l), l);
                port = atoi(colon + 1);
        } else {
                port = atoi(l);
        }
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.bind = host;
        hc.port = port;
        canopy_http *srv = NULL;
        if (canopy_http_new(&hc, &srv) || canopy_http_start(srv)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "metrics endpoint %s could not start", l);
                canopy_http_free(srv);
                return NULL;
        }
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "metrics on http://%s:%d/metrics", host, canopy_http_port(srv));
        return srv;
}

static void sleep_interruptible(int64_t ms) {
        for (int64_t t = 0; t < ms && !g_stop; t += 100)
                usleep(100000);
}

/* Tell the guard whether binds work: refused binds for longer than
 * guard.ldap_failing quarantine the pipeline (as cloud sync quarantines a
 * job whose credentials fail). Best effort: Redis errors are only logged. */
static void report_bind(const canopy_producer_conf *cf, bool ok, bool *failing) {
        if (ok && !*failing)
                return;
        canopy_state *st = NULL;
        if (canopy_state_new(cf->redis_host, (int)cf->redis_port, cf->redis_password, cf->redis_prefix, 2000, &st)) {
                CANOPY_WARN(MOD, "cannot tell the guard about LDAP binds: Redis unreachable");
                return;
        }
        char src[160];
        snprintf(src, sizeof(src), "ldap:%s", cf->connector);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        bool q = false;
        if (!canopy_guard_report(st, src, ok, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, &q))
                *failing = !ok;
        if (q)
                CANOPY_ERROR(MOD, "LDAP binds refused for too long: the pipeline is quarantined");
        canopy_state_free(st);
}

int main(int argc, char **argv) {
        canopy_log_init("producer-ldap");
        const char *path = NULL;
        const char **sets = calloc((size_t)argc + 1, sizeof(char *));
        size_t nsets = 0;
        bool check = false, dump = false;
        static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                             {"set", required_argument, NULL, 's'},
                                             {"check-config", no_argument, NULL, 'k'},
                                             {"dump-config", no_argument, NULL, 'd'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        int o;
        while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
                switch (o) {
                case 'c': path = optarg; break;
                case 's': sets[nsets++] = optarg; break;
                case 'k': check = true; break;
                case 'd': dump = true; break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        canopy_producer_conf cf;
        memset(&cf, 0, sizeof(cf));
        char errbuf[1024];
        canopy_err err = canopy_conf_load(&canopy_conf_producer, &cf, path, sets, nsets, errbuf, sizeof(errbuf));
        free(sets);
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "configuration: %s", errbuf);
                return 1;
        }
        if (cf.log_level) {
                int lvl = canopy_log_level_parse(cf.log_level);
                if (lvl >= 0)
                        canopy_log_set_level((canopy_log_level)lvl);
        }
        if (dump) {
                canopy_conf_dump(stdout, &canopy_conf_producer, &cf);
                canopy_conf_free(&canopy_conf_producer, &cf);
                return 0;
        }
        if (canopy_kafka_register_schemas(&cf.kafka, errbuf, sizeof(errbuf))) {
                canopy_log(CANOPY_LOG_FATAL, MOD, NULL, "configuration: %s", errbuf);
                canopy_conf_free(&canopy_conf_producer, &cf);
                return 1;
        }
        canopy_log_ctx lctx = CANOPY_LOG_CTX_NONE;
        lctx.connector = cf.connector;
        /* validation the table cannot express */
        canopy_checkpoint_opts co = {cf.redis_host, (int)cf.redis_port, cf.redis_password, 2000, cf.redis_prefix,
                                     cf.connector};
        /* connector.id's characters and length are checked by the table
         * (file:line:column on error), as CANOPY_CHECKPOINT_MAX_CONNECTOR needs. */
        for (size_t i = 0; cf.ldap_uris[i]; i++)
                if (!strncasecmp(cf.ldap_uris[i], "ldap://", 7) && !strcmp(cf.tls, "none") && !cf.allow_insecure) {
                        canopy_log(CANOPY_LOG_FATAL, MOD, &lctx,
                                   "ldap.tls is none for %s: plain LDAP is refused unless ldap.allow_insecure "
                                   "is true",
                                   cf.ldap_uris[i]);
                        canopy_conf_free(&canopy_conf_producer, &cf);
                        return 1;
                }
        if (check) {
                printf("configuration OK\n");
                canopy_conf_free(&canopy_conf_producer, &cf);
                return 0;
        }

        prod P;
        memset(&P, 0, sizeof(P));
        prod *p = &P;
        p->cf = &cf;
        p->stop = &g_stop;
        char idbuf[300];
        if (cf.producer_id && *cf.producer_id) {
                snprintf(idbuf, sizeof(idbuf), "%s", cf.producer_id);
        } else {
                char host[256] = "host";
                gethostname(host, sizeof(host) - 1);
                snprintf(idbuf, sizeof(idbuf), "%s-%d", host, (int)getpid());
        }
        p->producer_id = strdup(idbuf);
        p->class_filter = join_filter(p);
        if (p->class_filter && asprintf(&p->ds_filter, "(|%s(isDeleted=TRUE))", p->class_filter) < 0)
                p->ds_filter = NULL;
        p->attrs = build_attrs(p);
        srand((unsigned)(time(NULL) ^ getpid()));

        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        canopy_metrics *reg = canopy_metrics_default();
        p->m_events = canopy_metrics_counter(reg, "canopy_producer_events_total", "ChangeEvents published, by op.",
                                             "op");
        p->m_reconnects = canopy_metrics_counter(reg, "canopy_producer_reconnects_total",
                                                 "LDAP reconnects after a connection loss.", NULL);
        p->m_position = canopy_metrics_gauge(reg, "canopy_producer_position",
                                             "Last checkpointed position (USN on AD).", NULL);
        p->m_position_s = canopy_metrics_gauge(reg, "canopy_producer_position_seconds",
                                               "syncrepl: time of the newest CSN in the last checkpointed cookie "
                                               "(seconds since the epoch).",
                                               NULL);
        p->m_lag = canopy_metrics_gauge(reg, "canopy_producer_lag_usn",
                                        "highestCommittedUSN minus the last published USN (usn, dirsync).", NULL);
        p->m_lag_s = canopy_metrics_gauge(reg, "canopy_producer_lag_seconds",
                                          "syncrepl: contextCSN minus the CSN of the saved cookie, seconds.", NULL);
        p->m_errors = canopy_metrics_counter(reg, "canopy_producer_errors_total", "Events not published, by error.",
                                             "error");
        p->m_scans = canopy_metrics_counter(reg, "canopy_producer_full_scans_total", "Full passes completed.", NULL);
        canopy_metric *m_leader = canopy_metrics_gauge(reg, "canopy_producer_leader", "1 while this process leads.",
                                                       NULL);
        canopy_http *http = start_metrics(p);

        int rc = 1;
        err = canopy_checkpoint_new(&co, &p->cp);
        while (err && canopy_err_class_of(err) == CANOPY_ERRCLASS_RETRIABLE && !g_stop) {
                canopy_log(CANOPY_LOG_WARN, MOD, &lctx, "Redis %s:%d unreachable, retrying", cf.redis_host,
                           (int)cf.redis_port);
                sleep_interruptible(1000);
                err = canopy_checkpoint_new(&co, &p->cp);
        }
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, &lctx, "cannot open the checkpoint store: %s", canopy_err_text(err));
                goto out;
        }
        char lkey[256], holder[400];
        canopy_checkpoint_key(p->cp, lkey, sizeof(lkey), "lease");
        snprintf(holder, sizeof(holder), "%s:%08x", p->producer_id, (unsigned)rand());
        canopy_lease_opts lo = {cf.redis_host, (int)cf.redis_port, cf.redis_password, 0, lkey, holder, cf.lease_ttl_ms};
        if ((err = canopy_lease_new(&lo, &p->lease)))
                goto out;
        err = canopy_kafka_producer_new(&cf.kafka, prod_delivery_cb, p, &p->kp, errbuf, sizeof(errbuf));
        if (err) {
                canopy_log(CANOPY_LOG_FATAL, MOD, &lctx, "Kafka: %s", errbuf);
                goto out;
        }
        ctl c = {p, 0, 0, false};
        if (!pthread_create(&c.thr, NULL, control_thread, &c))
                c.started = true;

        int64_t backoff = cf.backoff_min_ms;
        bool bind_failing = false;
        bool leader = false;
        rc = 0;
        while (!g_stop) {
                if (!leader || !canopy_lease_held(p->lease)) {
                        if (leader) {
                                canopy_log(CANOPY_LOG_WARN, MOD, &lctx, "lost the lease: stopped publishing");
                                /* stop the renewal thread (and give the key up if it is still ours) */
                                canopy_lease_release(p->lease);
                                canopy_checkpoint_discard(p->cp);
                        }
                        leader = false;
                        canopy_metrics_set(m_leader, NULL, 0);
                        prod_disconnect(p);
                        canopy_log(CANOPY_LOG_INFO, MOD, &lctx, "standby: waiting for the lease %s", lkey);
                        if (canopy_lease_wait(p->lease, &g_stop))
                                break;
                        canopy_lease_start(p->lease);
                        leader = true;
                        canopy_metrics_set(m_leader, NULL, 1);
                        canopy_log(CANOPY_LOG_INFO, MOD, &lctx, "leader for connector %s (%s)", cf.connector, holder);
                }
                if (!p->ld) {
                        err = prod_connect(p);
                        if (err == CANOPY_ERR_LDAP_BIND) {
                                /* Credentials refused: keep trying (a password
                                 * may be rotated on the directory first); the
                                 * guard quarantines when it lasts. */
                                report_bind(&cf, false, &bind_failing);
                                canopy_log(CANOPY_LOG_ERROR, MOD, &lctx, "bind refused; retrying in %lld ms "
                                           "(check ldap.bind_dn and the password)", (long long)backoff);
                                sleep_interruptible(backoff);
                                backoff = backoff * 2 > cf.backoff_max_ms ? cf.backoff_max_ms : backoff * 2;
                                continue;
                        }
                        if (!err)
                                report_bind(&cf, true, &bind_failing);
                        if (err) {
                                if (canopy_err_class_of(err) == CANOPY_ERRCLASS_FATAL) {
                                        rc = 1;
                                        break;
                                }
                                canopy_metrics_inc(p->m_reconnects, NULL);
                                canopy_log(CANOPY_LOG_WARN, MOD, &lctx, "no directory server reachable; retrying "
                                           "in %lld ms", (long long)backoff);
                                sleep_interruptible(backoff);
                                backoff = backoff * 2 > cf.backoff_max_ms ? cf.backoff_max_ms : backoff * 2;
                                continue;
                        }
                }
                bool flag = false;
                if (atomic_exchange(&p->fullscan_requested, false) ||
                    (!canopy_checkpoint_flag_test(p->cp, "fullscan", &flag) && flag))
                        p->want_full = true;
                if (p->want_full && strcmp(cf.mode, "full")) {
                        canopy_log(CANOPY_LOG_INFO, MOD, &lctx, "running the requested full scan");
                        err = mode_full(p, true);
                        if (!err) {
                                canopy_checkpoint_flag_take(p->cp, "fullscan", &flag);
                                p->want_full = false;
                        }
                } else if (!strcmp(cf.mode, "full")) {
                        err = mode_full(p, true);
                        if (!err) {
                                canopy_checkpoint_flag_take(p->cp, "fullscan", &flag);
                                p->want_full = false;
                                /* one scan per run: a FULL_SCAN request or the next start asks for another */
                                break;
                        }
                } else if (!strcmp(cf.mode, "syncrepl")) {
                        err = mode_syncrepl(p);
                } else if (!strcmp(cf.mode, "dirsync")) {
                        err = mode_dirsync(p);
                } else {
                        err = mode_usn(p);
                }
                if (!err) {
                        backoff = cf.backoff_min_ms;
                        continue;
                }
                if (err == CANOPY_ERR_SHUTDOWN)
                        break;
                if (err == CANOPY_ERR_LEASE_LOST) {
                        canopy_checkpoint_discard(p->cp);
                        continue;
                }
                if (err == CANOPY_ERR_LDAP_COOKIE) {
                        prod_disconnect(p);
                        continue;
                }
                if (canopy_err_class_of(err) == CANOPY_ERRCLASS_FATAL) {
                        canopy_log(CANOPY_LOG_FATAL, MOD, &lctx, "stopping: %s", canopy_err_text(err));
                        rc = 1;
                        break;
                }
                /* retriable: reconnect (next URI first) and resume from the last checkpoint */
                canopy_log(CANOPY_LOG_WARN, MOD, &lctx, "%s; reconnecting in %lld ms and resuming from the last "
                           "checkpoint",
                           canopy_err_text(err), (long long)backoff);
                prod_disconnect(p);
                size_t nuris = 0;
                while (cf.ldap_uris[nuris])
                        nuris++;
                p->uri_idx = (p->uri_idx + 1) % nuris;
                canopy_metrics_inc(p->m_reconnects, NULL);
                sleep_interruptible(backoff);
                backoff = backoff * 2 > cf.backoff_max_ms ? cf.backoff_max_ms : backoff * 2;
        }
        /* deliver what is queued (a restart re-reads anything not checkpointed) */
        if (p->kp)
                canopy_kafka_producer_flush(p->kp, 5000);
        c.stop = 1;
        if (c.started)
                pthread_join(c.thr, NULL);
out:
        prod_disconnect(p);
        canopy_kafka_producer_free(p->kp);
        canopy_lease_free(p->lease);
        canopy_checkpoint_free(p->cp);
        canopy_http_free(http);
        oidset_clear(&p->seen);
        free(p->scan_id);
        free(p->nc_root);
        for (size_t i = 0; p->norm_bases && p->norm_bases[i]; i++)
                free(p->norm_bases[i]);
        free(p->norm_bases);
        free(p->norm_self);
        for (size_t i = 0; p->attrs && p->attrs[i]; i++)
                free(p->attrs[i]);
        free(p->attrs);
        free(p->class_filter);
        free(p->ds_filter);
        free(p->producer_id);
        canopy_conf_free(&canopy_conf_producer, &cf);
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "exit %d", rc);
        return rc;
}
