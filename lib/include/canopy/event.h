/* canopy/event.h: the in-memory event model shared by producers, workers,
 * the guard and the codec (canopy/avro.h). Schemas: schemas/<Record>.avsc,
 * documented in docs/EVENTS.md.
 *
 * Ownership: an event owns every pointer it holds; canopy_*_free() releases
 * all of it (NULL allowed). Strings are NUL-terminated UTF-8 unless noted;
 * canopy_bytes carry binary data (anchors, binary attribute values).
 */
#ifndef CANOPY_EVENT_H
#define CANOPY_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Caps on what a directory can grow; the codec and producers enforce them. */
#define CANOPY_EVENT_MAX_BYTES (4u * 1024u * 1024u) /* one encoded event */
#define CANOPY_ATTR_MAX_VALUES 5000u                /* values per attribute per event; larger sets travel as delta chunks */
#define CANOPY_EVENT_MAX_ATTRS 1024u

typedef struct canopy_bytes {
        uint8_t *data;
        size_t len;
} canopy_bytes;

typedef enum canopy_op {
        CANOPY_OP_ADD = 0,
        CANOPY_OP_MODIFY,
        CANOPY_OP_RENAME,
        CANOPY_OP_DELETE,
        CANOPY_OP_END_OF_SCAN,
} canopy_op;

typedef struct canopy_attr {
        char *name;           /* lower-case attribute name, e.g. "member" */
        bool binary;          /* values are binary (objectGUID, jpegPhoto) */
        canopy_bytes *values; /* full value set when !delta */
        size_t nvalues;
        bool delta;           /* true: added/removed carry the change, values unused */
        canopy_bytes *added;
        size_t nadded;
        canopy_bytes *removed;
        size_t nremoved;
} canopy_attr;

typedef struct canopy_change_event {
        char *connector;      /* connector id */
        canopy_bytes anchor;  /* source anchor (objectGUID / ms-DS-ConsistencyGuid / entryUUID bytes) */
        char *object_class;   /* "user", "group", "contact", "inetOrgPerson", ... (normalised: user|group|contact) */
        canopy_op op;
        char *dn;             /* NULL for END_OF_SCAN */
        char *prev_dn;        /* set for RENAME (and moves) */
        bool complete;        /* attrs is the full image (false: DirSync partial image) */
        canopy_attr *attrs;
        size_t nattrs;
        char *position;       /* USN, CSN or cookie (printable), may be NULL */
        int64_t source_ts_ms; /* directory change time, ms since epoch; 0 = unknown */
        char *producer_id;
        int64_t seq;          /* producer sequence, monotonic per producer run */
        char *scan_id;        /* full scan id, for events of a full scan and its END_OF_SCAN; NULL otherwise */
        int32_t chunk;        /* delta chunk index for split large attributes (0 = first/only) */
        int32_t nchunks;      /* total chunks (1 = not split) */
} canopy_change_event;

typedef struct canopy_mv_contrib {
        char *connector;
        canopy_bytes anchor;
} canopy_mv_contrib;

typedef enum canopy_mv_reason {
        CANOPY_MV_PROJECT = 0, /* new metaverse object */
        CANOPY_MV_JOIN,        /* connector object joined existing mv object */
        CANOPY_MV_UPDATE,      /* contributor changed */
        CANOPY_MV_DISCONNECT,  /* contributor left (out of scope / deleted) */
        CANOPY_MV_DELETE,      /* no contributor left: delete in the cloud */
        CANOPY_MV_RESOLVE,     /* pending references resolved; re-export */
        CANOPY_MV_REPLAY,      /* full sync / replay request */
} canopy_mv_reason;

typedef struct canopy_mv_event {
        char *mv_id;
        char *object_type;     /* "user" | "group" | "contact" */
        canopy_mv_contrib *contribs;
        size_t ncontribs;
        canopy_mv_reason reason;
        char *cause_connector; /* connector whose change caused it; may be NULL */
        int64_t ts_ms;
        int64_t source_ts_ms;  /* propagated from the ChangeEvent, for latency */
} canopy_mv_event;

typedef enum canopy_export_op {
        CANOPY_EXP_CREATE = 0,
        CANOPY_EXP_UPDATE,
        CANOPY_EXP_DELETE,
        CANOPY_EXP_RESTORE,
        CANOPY_EXP_MEMBERS,
        CANOPY_EXP_NOOP,
} canopy_export_op;

typedef enum canopy_export_result {
        CANOPY_RES_OK = 0,
        CANOPY_RES_ERROR,
        CANOPY_RES_HELD,    /* delete held by the guard */
        CANOPY_RES_STAGED,  /* staging mode: recorded, not sent */
} canopy_export_result;

typedef struct canopy_export_record {
        char *mv_id;
        char *entra_id;       /* may be NULL (failed create, staged) */
        char *object_type;
        canopy_export_op op;
        char **changed;       /* names of changed properties */
        size_t nchanged;
        canopy_export_result result;
        char *request_id;     /* Graph request-id, may be NULL */
        char *error;          /* error text, may be NULL */
        bool staged;
        int64_t ts_ms;
        int64_t source_ts_ms;
} canopy_export_record;

typedef enum canopy_control_kind {
        CANOPY_CTL_FULL_SCAN = 0,   /* target: connector id */
        CANOPY_CTL_QUARANTINE_ON,
        CANOPY_CTL_QUARANTINE_OFF,
        CANOPY_CTL_CONFIG_VERSION,
        CANOPY_CTL_APPROVE,
        CANOPY_CTL_REJECT,
} canopy_control_kind;

typedef struct canopy_control_event {
        canopy_control_kind kind;
        char *target;  /* connector id, tenant, ... may be NULL */
        char *reason;  /* may be NULL */
        char *actor;   /* who asked, may be NULL */
        char *version; /* config version, may be NULL */
        int64_t ts_ms;
} canopy_control_event;

typedef enum canopy_run_type {
        CANOPY_RUN_DELTA = 0,
        CANOPY_RUN_FULL,
} canopy_run_type;

typedef enum canopy_run_status {
        CANOPY_RUN_SUCCESS = 0,
        CANOPY_RUN_COMPLETED_ERRORS,
        CANOPY_RUN_STOPPED_QUARANTINE,
} canopy_run_status;

/* One closed run-history window (Sync History), on the exports topic. */
typedef struct canopy_run_record {
        char *connector;
        char *object_type;
        canopy_run_type run_type;
        char *scan_id; /* FULL: the scan's id; may be NULL */
        int64_t start_ms, end_ms;
        int64_t total, changed, deleted, filtered, errors;
        canopy_run_status status;
        int64_t ts_ms;
} canopy_run_record;

typedef struct canopy_dead_letter {
        char *topic;
        int32_t partition;
        int64_t offset;
        canopy_bytes key;
        canopy_bytes payload;
        char *reason;
        char *error_class; /* "permanent", ... */
        char *error_code;  /* canopy_err_name() */
        int64_t ts_ms;
} canopy_dead_letter;

void canopy_change_event_free(canopy_change_event *ev);
void canopy_mv_event_free(canopy_mv_event *mv);
void canopy_export_record_free(canopy_export_record *er);
void canopy_control_event_free(canopy_control_event *ce);
void canopy_dead_letter_free(canopy_dead_letter *dl);
void canopy_run_record_free(canopy_run_record *rr);

/* Helpers for building events. All copy their inputs. */
canopy_err canopy_bytes_set(canopy_bytes *b, const void *data, size_t len);
/* Append a full-image attribute with `n` values; returns the attr (borrowed). */
canopy_attr *canopy_change_event_add_attr(canopy_change_event *ev, const char *name, bool binary);
canopy_err canopy_attr_add_value(canopy_attr *a, const void *data, size_t len);
canopy_err canopy_attr_add_delta(canopy_attr *a, bool added, const void *data, size_t len);
/* Find an attribute by case-insensitive name; NULL if absent. (borrowed) */
const canopy_attr *canopy_change_event_attr(const canopy_change_event *ev, const char *name);
const char *canopy_op_name(canopy_op op);

/* Kafka key of a change: connector id + '\0' + anchor bytes. Returned in
 * *ret (owned by the caller, free()). */
canopy_err canopy_change_key(const char *connector, const canopy_bytes *anchor, canopy_bytes *ret);

#ifdef __cplusplus
}
#endif
#endif
