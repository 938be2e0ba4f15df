/* metrics.c: the worker's /metrics, /healthz and /readyz (canopy/http.h).
 * Stages count with relaxed atomics; a scrape moves the increments into the
 * process registry (canopy/metrics.h) under a lock. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/http.h"
#include "canopy/log.h"
#include "canopy/metrics.h"
#include "worker.h"

const char *const worker_graph_kind_names[GK_COUNT] = {"create", "update", "delete", "member_add",
                                                       "member_remove", "lookup", "get"};

typedef struct mstate {
        worker *w;
        canopy_http *srv;
        pthread_mutex_t lock;
        worker_metrics last; /* values already added to the registry */
        canopy_metric *events, *dead, *mv_pub, *coalesced, *noop, *graph, *conflicts, *staged, *pending, *errors, *lost, *scans, *members, *lag;
} mstate;

static uint64_t delta(atomic_uint_fast64_t *cur, atomic_uint_fast64_t *last) {
        uint64_t c = atomic_load(cur), l = atomic_load(last);
        atomic_store(last, c);
        return c - l;
}

static void sync_metrics(mstate *ms) {
        worker_metrics *m = &ms->w->m, *l = &ms->last;
        pthread_mutex_lock(&ms->lock);
        canopy_metrics_add(ms->events, CANOPY_LABELS("join"), (double)delta(&m->join_events, &l->join_events));
        canopy_metrics_add(ms->events, CANOPY_LABELS("export"), (double)delta(&m->export_events, &l->export_events));
        canopy_metrics_add(ms->dead, CANOPY_LABELS("join"), (double)delta(&m->join_dead, &l->join_dead));
        canopy_metrics_add(ms->dead, CANOPY_LABELS("export"), (double)delta(&m->export_dead, &l->export_dead));
        canopy_metrics_add(ms->mv_pub, NULL, (double)delta(&m->mv_published, &l->mv_published));
        canopy_metrics_add(ms->coalesced, NULL, (double)delta(&m->resolve_coalesced, &l->resolve_coalesced));
        canopy_metrics_add(ms->noop, NULL, (double)delta(&m->export_noop, &l->export_noop));
        canopy_metrics_add(ms->conflicts, NULL, (double)delta(&m->conflicts, &l->conflicts));
        canopy_metrics_add(ms->staged, NULL, (double)delta(&m->staged, &l->staged));
        canopy_metrics_add(ms->lost, CANOPY_LABELS("join"), (double)delta(&m->join_lost, &l->join_lost));
        canopy_metrics_add(ms->lost, CANOPY_LABELS("export"), (double)delta(&m->export_lost, &l->export_lost));
        canopy_metrics_add(ms->scans, NULL, (double)delta(&m->scans_requested, &l->scans_requested));
        canopy_metrics_add(ms->members, CANOPY_LABELS("full"), (double)delta(&m->members_full, &l->members_full));
        canopy_metrics_add(ms->members, CANOPY_LABELS("incremental"), (double)delta(&m->members_woken, &l->members_woken));
        for (int k = 0; k < GK_COUNT; k++) {
                canopy_metrics_add(ms->graph, CANOPY_LABELS(worker_graph_kind_names[k], "ok"),
                                   (double)delta(&m->graph[k][0], &l->graph[k][0]));
                canopy_metrics_add(ms->graph, CANOPY_LABELS(worker_graph_kind_names[k], "error"),
                                   (double)delta(&m->graph[k][1], &l->graph[k][1]));
        }
        /* Lag per stage, once known (the export stage's threads summed). */
        int64_t jl = atomic_load(&m->join_lag), el = -1;
        for (int i = 0; i < WORKER_MAX_EXPORT_THREADS; i++) {
                int64_t v = atomic_load(&m->export_lag[i]);
                if (v >= 0)
                        el = (el < 0 ? 0 : el) + v;
        }
        if (jl >= 0)
                canopy_metrics_set(ms->lag, CANOPY_LABELS("join"), (double)jl);
        if (el >= 0)
                canopy_metrics_set(ms->lag, CANOPY_LABELS("export"), (double)el);
        canopy_metrics_set(ms->pending, NULL, (double)atomic_load(&m->pending_refs));
        canopy_metrics_set(ms->errors, NULL, (double)atomic_load(&m->errors));
        pthread_mutex_unlock(&ms->lock);
}

static void on_metrics(void *opaque, const canopy_http_req *req, canopy_http_resp *resp) {
        (void)req;
        mstate *ms = opaque;
        sync_metrics(ms);
        char *buf = NULL;
        size_t len = 0;
        if (canopy_metrics_render_buf(canopy_metrics_default(), &buf, &len)) {
                canopy_http_resp_set(resp, 500, "text/plain", "render failed\n", 14);
                return;
        }
        canopy_http_resp_set(resp, 200, "text/plain; version=0.0.4", buf, len);
        free(buf);
}

void *worker_metrics_start(worker *w, const char *listen) {
        if (!listen || !*listen)
                return NULL;
        mstate *ms = calloc(1, sizeof(*ms));
        if (!ms)
                return NULL;
        ms->w = w;
        pthread_mutex_init(&ms->lock, NULL);
        canopy_metrics *reg = canopy_metrics_default();
        ms->events = canopy_metrics_counter(reg, "canopy_worker_events_total", "Events applied per stage.", "stage");
        ms->dead = canopy_metrics_counter(reg, "canopy_worker_dead_letters_total", "Events dead-lettered per stage.",
                                          "stage");
        ms->mv_pub = canopy_metrics_counter(reg, "canopy_worker_mv_published_total", "mv events produced.", NULL);
        ms->coalesced = canopy_metrics_counter(reg, "canopy_worker_resolve_coalesced_total",
                                               "Group RESOLVEs not sent because one was already queued.", NULL);
        ms->noop = canopy_metrics_counter(reg, "canopy_worker_export_noop_total",
                                          "mv events that needed no Graph write.", NULL);
        ms->graph = canopy_metrics_counter(reg, "canopy_worker_graph_calls_total", "Graph calls by kind and result.",
                                           "kind,result");
        ms->conflicts = canopy_metrics_counter(reg, "canopy_worker_conflicts_total", "Graph ObjectConflicts.", NULL);
        ms->staged = canopy_metrics_counter(reg, "canopy_worker_staged_total", "Differences staged (staging mode).",
                                            NULL);
        ms->lost = canopy_metrics_counter(reg, "canopy_worker_lost_positions_total",
                                          "Partition positions the broker no longer held (events never read).",
                                          "stage");
        ms->scans = canopy_metrics_counter(reg, "canopy_worker_full_scans_requested_total",
                                           "Full scans requested on the control topic after lost events.", NULL);
        ms->members = canopy_metrics_counter(reg, "canopy_worker_group_member_computations_total",
                                             "Group member computations: every member (full) or only the members "
                                             "changed since the last one (incremental).",
                                             "how");
        ms->lag = canopy_metrics_gauge(reg, "canopy_worker_consumer_lag",
                                       "Messages not yet read on the partitions this process is assigned, per stage "
                                       "(high watermark minus position, sampled every second).",
                                       "stage");
        ms->pending = canopy_metrics_gauge(reg, "canopy_worker_pending_references",
                                           "Members that groups wait for (not yet exported).", NULL);
        ms->errors = canopy_metrics_gauge(reg, "canopy_worker_errors", "Objects in the errors set.", NULL);

        char host[256] = "127.0.0.1";
        int port = 0;
        const char *colon = strrchr(listen, ':');
        if (colon) {
                snprintf(host, sizeof(host), "%.*s", (int)(colon - listen), listen);
                port = atoi(colon + 1);
        } else
                port = atoi(listen);
        canopy_http_conf hc = CANOPY_HTTP_CONF_DEFAULT;
        hc.bind = host;
        hc.port = port;
        if (canopy_http_new(&hc, &ms->srv) || canopy_http_handle(ms->srv, "GET", "/metrics", on_metrics, ms) ||
            canopy_http_start(ms->srv)) {
                CANOPY_ERROR("metrics", "cannot serve metrics on %s", listen);
                canopy_http_free(ms->srv);
                pthread_mutex_destroy(&ms->lock);
                free(ms);
                return NULL;
        }
        CANOPY_INFO("metrics", "metrics on http://%s:%d/metrics", host, canopy_http_port(ms->srv));
        return ms;
}

void worker_metrics_stop(void *h) {
        mstate *ms = h;
        if (!ms)
                return;
        canopy_http_free(ms->srv);
        pthread_mutex_destroy(&ms->lock);
        free(ms);
}
