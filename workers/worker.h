/* worker.h: canopy-worker internals shared by main.c, join.c, export.c and
 * metrics.c. See docs/WORKERS.md. */
#ifndef CANOPY_WORKER_H
#define CANOPY_WORKER_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "canopy/conf_worker.h"
#include "canopy/kafka.h"
#include "canopy/rules.h"
#include "canopy/state.h"

/* export.threads bound (lib/src/conf_worker.c). */
#define WORKER_MAX_EXPORT_THREADS 64

/* Counters exported on /metrics; updated with relaxed atomics. */
typedef struct worker_metrics {
        atomic_uint_fast64_t join_events;     /* change events applied */
        atomic_uint_fast64_t join_dead;       /* change events dead-lettered */
        atomic_uint_fast64_t mv_published;    /* mv events produced */
        atomic_uint_fast64_t resolve_coalesced; /* RESOLVEs not sent: one was already queued */
        atomic_uint_fast64_t export_events;   /* mv events handled */
        atomic_uint_fast64_t export_dead;
        atomic_uint_fast64_t export_noop;     /* mv events with nothing to write */
        /* Graph calls by kind and result: [kind][ok=0|error=1] */
        atomic_uint_fast64_t graph[8][2];
        atomic_uint_fast64_t conflicts;
        atomic_uint_fast64_t staged;
        atomic_uint_fast64_t join_lost;       /* positions the broker no longer held */
        atomic_uint_fast64_t export_lost;
        atomic_uint_fast64_t scans_requested; /* full scans requested after a loss */
        atomic_uint_fast64_t members_full;    /* group member computations: every member */
        atomic_uint_fast64_t members_woken;   /* ... the woken members only */
        atomic_int_fast64_t join_lag;         /* last seen lag (high watermark - position), -1 unknown */
        atomic_int_fast64_t export_lag[WORKER_MAX_EXPORT_THREADS]; /* per export thread, likewise */
        atomic_int_fast64_t pending_refs;     /* sampled from Redis */
        atomic_int_fast64_t errors;           /* sampled from Redis */
} worker_metrics;

/* Graph call kinds for metrics. */
enum { GK_CREATE = 0, GK_UPDATE, GK_DELETE, GK_MEMBER_ADD, GK_MEMBER_REMOVE, GK_LOOKUP, GK_GET, GK_COUNT };
extern const char *const worker_graph_kind_names[GK_COUNT];

typedef struct worker {
        canopy_worker_conf *conf;   /* borrowed from main */
        canopy_rules *rules;        /* shared, immutable */
        canopy_kafka_producer *kp;  /* shared (thread-safe produce) */
        volatile sig_atomic_t *stop;
        atomic_bool delivery_failed; /* a produced event was not acknowledged */
        worker_metrics m;
        const char *worker_id;
} worker;

/* Stage threads: return 0 on a clean stop, non-zero on a fatal error. */
int worker_join_run(worker *w);
/* Export thread idx of conf->export_threads: thread 0 also checks the
 * credentials and replays the staged differences at start-up. */
int worker_export_run(worker *w, int idx);

/* Metrics endpoint (libmicrohttpd). NULL listen: nothing. */
void *worker_metrics_start(worker *w, const char *listen);
void worker_metrics_stop(void *h);

/* Back off after a retriable error: sleeps min(cap, base * 2^attempt) ms
 * unless stopping. Returns false when stopping. */
bool worker_backoff(worker *w, int attempt);

/* A RESOLVE of group mv_id is due. RESOLVEs are coalesced per group (see
 * canopy_state_resolve_claim): *ret_send is true when the caller is to
 * publish it, false when one is already queued (counted in the metrics). */
canopy_err worker_resolve_claim(worker *w, canopy_state *st, const char *mv_id, bool *ret_send);

/* After each poll: when kc found a partition's next offset gone from the
 * broker (canopy_kafka_consumer_lost), the events in between were never
 * read; a full scan of every connector of the rules is requested on the
 * control topic (the join stage announces every object in scope again, so
 * lost mv events are made good too). *seen: losses already handled.
 * lost: the stage's counter. */
/* Dead-letter m, retried with backoff until Kafka acknowledges it (a message
 * given up would let the commit of later ones skip it: lost). false only
 * when the worker is stopping: the caller then stops reading. */
bool worker_dead_letter(worker *w, canopy_kafka_consumer *kc, const canopy_kafka_msg *m, canopy_err err,
                        const char *reason, atomic_uint_fast64_t *dead);
/* Every second: sample a consumer's lag into *slot (canopy_kafka_consumer_lag). */
void worker_lag_sample(canopy_kafka_consumer *kc, atomic_int_fast64_t *slot, int64_t *next_ms);
void worker_lost_check(worker *w, canopy_kafka_consumer *kc, const char *stage, uint64_t *seen,
                       atomic_uint_fast64_t *lost);

/* Monotonic / wall clock in ms. */
int64_t worker_now_ms(void);

/* Flush produced events; false (and logs) when some was not acknowledged. */
bool worker_flush(worker *w);

#endif
