/* canopy/guard_policy.h: the deletion threshold, quarantine, run history
 * and audit trail, kept in Redis so that every worker and the guard service
 * see one truth.
 *
 * All keys live under one hash tag, "<prefix>guard:{guard}:...", so that the
 * scripts below are atomic on a single Redis and on Redis Cluster.
 *
 * The rule (docs/GUARD.md):
 *   - every cloud delete is reserved with canopy_guard_reserve() before it
 *     is sent; the reservation is idempotent per metaverse id;
 *   - within the window, the first `limit` deletes are allowed; the delete
 *     that would make the count exceed `limit` (the limit+1-th) is held, the
 *     pipeline is quarantined, and every later delete is held too;
 *   - limit = threshold_count, or floor(threshold_percent * synced / 100)
 *     when a percentage is configured (at least 1);
 *   - while quarantined, workers pause the export stage without committing
 *     (pause_all, the default) or hold deletes only (pause_all false);
 *   - approve: the held deletes are released (allowed once, not counted
 *     again) and the quarantine lifts; reject: none is sent, and the
 *     quarantine lasts until a full scan ends, which decides them again.
 */
#ifndef CANOPY_GUARD_POLICY_H
#define CANOPY_GUARD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/err.h"
#include "canopy/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_guard_policy {
        bool enabled;              /* false: every delete allowed (audited switch) */
        int64_t threshold_count;   /* used when threshold_percent == 0; default 500 */
        double threshold_percent;  /* 0..100 of synced objects; 0 = use the count */
        int64_t window_ms;         /* rolling window; 0 = until the next approve/reject/reset */
        bool window_full_scan;     /* count per full scan instead (guard.window_mode: full-scan) */
        int64_t auth_quarantine_ms; /* Graph 401/403 for this long -> quarantine */
        int64_t ldap_quarantine_ms; /* LDAP binds failing this long -> quarantine */
        bool pause_all;            /* pause every export while quarantined (default) */
} canopy_guard_policy;

#define CANOPY_GUARD_POLICY_DEFAULT {true, 500, 0.0, 3600000, false, 600000, 600000, true}

typedef enum canopy_guard_verdict {
        CANOPY_GUARD_ALLOW = 0, /* send the delete */
        CANOPY_GUARD_HOLD,      /* held (or rejected, until a full scan): do not send, do not commit */
} canopy_guard_verdict;

typedef struct canopy_guard_status {
        bool quarantined;
        char reason[64];       /* "deletion-threshold", "credentials", "ldap-bind:<connector>", "" */
        char detail[256];
        char id[40];           /* quarantine id, changes with each quarantine */
        int64_t since_ms;
        int64_t window_count;  /* deletes counted in the window */
        int64_t limit;         /* effective limit now */
        int64_t held;          /* deletes held */
        int64_t rejected;      /* deletes rejected, waiting for the full scan */
        char awaiting_scan[128]; /* after a reject: the connector whose full scan lifts it ("*": any) */
        int64_t rejected_ms;   /* when it was rejected */
        bool window_full_scan; /* the window is the full scan (else rolling) */
        char scan_window[96];  /* full-scan mode: the scan whose window counts now */
        int64_t synced;        /* objects synced (for the percentage) */
        bool enabled;
        bool pause_all;
} canopy_guard_status;

/* Write the policy to Redis (the guard service does this at start-up and on
 * every audited change). actor (borrowed) is recorded in the audit trail. */
canopy_err canopy_guard_policy_put(canopy_state *st, const canopy_guard_policy *p, const char *actor);
/* Read the policy; the defaults when none was written. */
canopy_err canopy_guard_policy_get(canopy_state *st, canopy_guard_policy *ret);

/* Reserve one cloud delete of mv_id. info (borrowed, may be NULL) is a short
 * JSON text kept with a held delete for operators (type, Entra id, name).
 * now_ms: the caller's clock. */
canopy_err canopy_guard_reserve(canopy_state *st, const char *mv_id, const char *info, int64_t now_ms,
                                canopy_guard_verdict *ret, int64_t *ret_count);
/* The current status. */
canopy_err canopy_guard_status_get(canopy_state *st, int64_t now_ms, canopy_guard_status *ret);
/* Whether exports must pause now (quarantined and pause_all). Cheap. */
canopy_err canopy_guard_paused(canopy_state *st, bool *ret);
/* Quarantine for a reason (idempotent while quarantined; keeps the first reason). */
canopy_err canopy_guard_quarantine(canopy_state *st, const char *reason, const char *detail, int64_t now_ms);
/* Approve: release the held deletes (each allowed once, not counted again)
 * and lift the quarantine with a new window. Reject: send none of them; the
 * pipeline stays quarantined until a full scan of awaited_connector (NULL
 * or "*": of any connector) that started after the rejection ends
 * (canopy_guard_scan_done); then every held or rejected delete is decided
 * again, in a new window, against what the scan found. *ret_n: how many
 * deletes were held. actor recorded in the audit trail. */
canopy_err canopy_guard_approve(canopy_state *st, const char *actor, int64_t now_ms, int64_t *ret_n);
canopy_err canopy_guard_reject(canopy_state *st, const char *actor, const char *awaited_connector, int64_t now_ms,
                               int64_t *ret_n);
/* A full scan of connector, started at scan_start_ms, has ended (every
 * event of it applied). *ret_lifted (may be NULL): it lifted a rejected
 * quarantine. */
canopy_err canopy_guard_scan_done(canopy_state *st, const char *connector, int64_t scan_start_ms, int64_t now_ms,
                                  bool *ret_lifted);
/* Held deletes: up to max entries "mv_id\tinfo" (owned strv, free with
 * canopy_state_strv_free). */
canopy_err canopy_guard_held(canopy_state *st, size_t max, char ***ret, size_t *ret_n);
/* Objects synced (the base of a percentage threshold): add delta. */
canopy_err canopy_guard_synced_add(canopy_state *st, int64_t delta);

/* Credentials and binds. ok=false starts (or continues) a failure streak;
 * a streak longer than the policy's duration quarantines; ok=true ends it.
 * source: "graph" or "ldap:<connector>". *ret_quarantined set when this
 * call quarantined the pipeline. */
canopy_err canopy_guard_report(canopy_state *st, const char *source, bool ok, int64_t now_ms,
                               bool *ret_quarantined);

/* Mark a quarantine as notified through channel ("email", "webhook");
 * *ret_first is true only for the first call per quarantine id and channel. */
canopy_err canopy_guard_notify_once(canopy_state *st, const char *quarantine_id, const char *channel,
                                    bool *ret_first);

/* ---- run history --------------------------------------------------------- */

typedef enum canopy_run_field {
        CANOPY_RUN_TOTAL = 0, /* objects processed */
        CANOPY_RUN_CHANGED,   /* added or updated */
        CANOPY_RUN_DELETED,
        CANOPY_RUN_FILTERED,  /* out of scope */
        CANOPY_RUN_ERRORS,
} canopy_run_field;

/* Count one object in the open window of (connector, object type); opens a
 * window (type "full" when scan_id is set, else "delta") if none is open. */
canopy_err canopy_run_count(canopy_state *st, const char *connector, const char *object_type,
                            const char *scan_id, canopy_run_field field, int64_t n, int64_t now_ms);
/* Close windows: every delta window idle for idle_ms (or open longer than
 * max_ms), and the full window of a connector when end_scan_id matches.
 * connector NULL: all. Closed windows go to the history list (bounded to
 * max_entries). *ret_closed: how many were closed. */
canopy_err canopy_run_close(canopy_state *st, const char *connector, const char *end_scan_id, int64_t idle_ms,
                            int64_t max_ms, int64_t now_ms, size_t max_entries, size_t *ret_closed);

typedef struct canopy_run_entry {
        char connector[128];
        char object_type[32];
        char run_type[8]; /* delta | full */
        int64_t start_ms, end_ms;
        int64_t total, changed, deleted, filtered, errors;
        char status[32]; /* success | completed-errors | stopped-quarantine */
        char scan_id[96]; /* full: the scan's id */
} canopy_run_entry;

/* History, newest first, filtered by connector and type (NULL = any);
 * offset/limit page through. *ret owned (free()). */
canopy_err canopy_run_history(canopy_state *st, const char *connector, const char *object_type, size_t offset,
                              size_t limit, canopy_run_entry **ret, size_t *ret_n);

/* Closed windows not yet published on the exports topic, oldest first, up
 * to max (0: 100). *ret owned (free()). */
canopy_err canopy_run_outbox(canopy_state *st, size_t max, canopy_run_entry **ret, size_t *ret_n);
/* Forget the first n entries of the outbox (Kafka confirmed them). */
canopy_err canopy_run_outbox_ack(canopy_state *st, size_t n);

/* ---- audit --------------------------------------------------------------- */

/* Append an audit entry (who, role, what, detail; borrowed) to the bounded
 * audit list; also logs it. */
canopy_err canopy_audit(canopy_state *st, const char *who, const char *role, const char *what, const char *detail,
                        int64_t now_ms);
/* Audit entries as JSON lines, newest first (owned strv). */
canopy_err canopy_audit_list(canopy_state *st, size_t offset, size_t limit, char ***ret, size_t *ret_n);

#ifdef __cplusplus
}
#endif
#endif
