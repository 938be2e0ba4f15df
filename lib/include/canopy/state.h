/* canopy/state.h: the workers' shared state in Redis.
 *
 * Redis is a cache of what the topics imply: everything here can be rebuilt
 * by replaying `changes` (and the export stage hard-matches what already
 * exists in Entra). Every key carries a hash tag so that Redis Cluster can
 * shard them; operations that must be atomic touch keys of one tag only and
 * run as Lua scripts. The key layout is documented in docs/STATE.md.
 *
 * Concepts (Entra Connect words):
 *   connector-space record  (connector, anchor) -> DN, object class,
 *                           attributes, mv id, in-scope flag, last scan id;
 *                           group members are a separate set of references
 *                           ("a:<anchor b64>" once resolved, "d:<normalised
 *                           DN>" while the member was never seen);
 *   DN index                (connector, normalised DN) -> anchor;
 *   metaverse               mv id -> object type + contributors;
 *   join index              (type, join attribute, value) -> mv id;
 *   export state            mv id -> Entra id, immutable id, hash and JSON of
 *                           the last exported properties, exported members,
 *                           create intent;
 *   pending references      member mv id (or member DN) -> groups waiting;
 *   errors                  mv id -> conflict / error description;
 *   staged                  mv ids with a difference recorded in staging mode.
 *
 * One canopy_state holds one Redis connection: use one per thread.
 * Every function returns CANOPY_OK, CANOPY_ERR_NOT_FOUND where said, or
 * CANOPY_ERR_REDIS / CANOPY_ERR_REDIS_UNREACHABLE (retriable; the caller
 * must not commit its offset), CANOPY_ERR_NOMEM.
 */
#ifndef CANOPY_STATE_H
#define CANOPY_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/err.h"
#include "canopy/event.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_state canopy_state;

/* Caps on what one record may hold in Redis. */
#define CANOPY_STATE_MAX_MEMBERS 250000u /* references per group (Entra Connect's limit) */
#define CANOPY_STATE_MAX_CONTRIBS 64u    /* connectors joined to one mv object */
#define CANOPY_STATE_MV_ID_LEN 32u       /* hex characters of a metaverse id */

/* Connect. prefix (copied) starts every key, e.g. "canopy:" (NULL: "canopy:").
 * *ret owned, free with canopy_state_free(). */
canopy_err canopy_state_new(const char *host, int port, const char *password, const char *prefix,
                            int timeout_ms, canopy_state **ret);
/* Close and free. NULL allowed. */
void canopy_state_free(canopy_state *st);
/* How Redis persists what it acknowledged (CONFIG GET appendonly,
 * appendfsync). *ret_durable: AOF on with appendfsync always, the only
 * setting under which a Redis crash loses no acknowledged write (with
 * everysec Redis may answer before it writes, and a crash can take back up
 * to two seconds of state that Kafka offsets already moved past). what
 * receives a short description ("appendonly yes, appendfsync everysec").
 * CANOPY_ERR_REDIS when CONFIG is not allowed (managed Redis). */
canopy_err canopy_state_persistence(canopy_state *st, bool *ret_durable, char *what, size_t whatlen);
/* Text of the last Redis error (borrowed, valid until the next call). */
const char *canopy_state_errstr(const canopy_state *st);

/* ---- helpers ---------------------------------------------------------- */

/* Base64 of an anchor into buf (NUL-terminated). buf needs 4*((len+2)/3)+1
 * bytes; returns CANOPY_ERR_LIMIT when it is too small. */
canopy_err canopy_state_anchor_b64(const canopy_bytes *anchor, char *buf, size_t buflen);
/* Normalised DN (lower case, no blanks around ',' '=' '+'); *ret owned (free). */
canopy_err canopy_state_dn_norm(const char *dn, char **ret);
/* Deterministic metaverse id for an object projected from (connector,
 * anchor): 32 hex characters of SHA-256(connector NUL anchor). Replaying the
 * same changes therefore projects the same mv ids. out: 33 bytes. */
void canopy_state_mv_id_for(const char *connector, const canopy_bytes *anchor, char out[33]);

/* ---- connector space ---------------------------------------------------- */

typedef struct canopy_cs_record {
        char *connector;
        canopy_bytes anchor;
        char *dn;           /* as last seen */
        char *object_class; /* user | group | contact */
        char *mv_id;        /* NULL: disconnector */
        bool in_scope;
        char *scan_id;      /* last full scan the object was seen in; may be NULL */
        int64_t source_ts_ms;
        int64_t event_ts_ms; /* Kafka timestamp of the last event applied (0 unknown) */
        int32_t kafka_partition; /* changes partition and offset of the last event applied */
        int64_t kafka_offset;    /* (-1: unknown) */
        canopy_attr *attrs; /* full value sets (no deltas); reference attributes excluded */
        size_t nattrs;
} canopy_cs_record;

/* Free a record and all it holds. NULL allowed. */
void canopy_cs_record_free(canopy_cs_record *rec);
/* Replace the values of attribute `name` in rec (copied); NULL values/0 removes it. */
canopy_err canopy_cs_record_set_attr(canopy_cs_record *rec, const char *name, bool binary,
                                     const canopy_bytes *values, size_t nvalues);
/* Attribute by case-insensitive name, NULL if absent (borrowed). */
const canopy_attr *canopy_cs_record_attr(const canopy_cs_record *rec, const char *name);

/* Read the record of (connector, anchor). *ret owned; CANOPY_ERR_NOT_FOUND
 * when there is none (then *ret is untouched). */
canopy_err canopy_state_cs_get(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                               canopy_cs_record **ret);
/* Write the whole record atomically (replaces what was there, keeps the
 * member set) and adds the anchor to the connector's index. rec borrowed. */
canopy_err canopy_state_cs_put(canopy_state *st, const canopy_cs_record *rec);
/* Delete the record, its member set and its connector-index entry. */
canopy_err canopy_state_cs_delete(canopy_state *st, const char *connector, const canopy_bytes *anchor);

/* Apply member references to a group's set: when `replace`, the set becomes
 * `add` exactly; else add `add` and remove `remove`. refs borrowed. */
canopy_err canopy_state_cs_members_apply(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                                         bool replace, const char *const *add, size_t nadd,
                                         const char *const *remove, size_t nremove);
/* All member references of a group. *ret is a NULL-terminated array of
 * owned strings (free with canopy_state_strv_free), *ret_n its length. */
canopy_err canopy_state_cs_members(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                                   char ***ret, size_t *ret_n);
/* Resolve a member reference of a group of `connector` to the member's mv
 * id (out: 33 bytes). CANOPY_ERR_NOT_FOUND when it has none: *ret_wait_key
 * (owned) is then the pending key to wait on: "d:<connector>\x1f<DN>" for a
 * DN never seen, "c:<connector>\x1f<anchor b64>" for a member known but not
 * joined (out of scope, deleted); the join stage takes the latter when the
 * object joins again. *ret_dangling is set when the reference is a DN that
 * was held by an object that has since moved away or been deleted (a
 * dangling reference, as Entra Connect drops it): it is waited on, in case
 * an object takes the DN again, but it says nothing of a member still to
 * come. */
canopy_err canopy_state_member_resolve(canopy_state *st, const char *connector, const char *ref, char out[33],
                                       char **ret_wait_key, bool *ret_dangling);
/* Free an array returned by this module. NULL allowed. */
void canopy_state_strv_free(char **v);

/* Where a member reference stands (canopy_state_members_resolve). */
typedef enum canopy_member_state {
        CANOPY_MEMBER_UNKNOWN,  /* no joined, in-scope object: wait_key says what to wait for */
        CANOPY_MEMBER_JOINED,   /* mv_id set; not exported (or deleted in Entra) */
        CANOPY_MEMBER_EXPORTED, /* mv_id and entra_id set */
} canopy_member_state;

typedef struct canopy_member_res {
        canopy_member_state state;
        char mv_id[33];
        char *entra_id;  /* owned; EXPORTED only */
        char *wait_key;  /* owned; UNKNOWN only: as canopy_state_member_resolve() */
        bool dangling;   /* UNKNOWN: a DN whose object moved away or was deleted */
} canopy_member_res;

/* canopy_state_member_resolve() for n references at once, and the export
 * state of each joined member, in pipelined round trips (three per 512
 * references, reading only the fields it needs) instead of three per
 * member. out[n] (caller's array) is filled; free what it holds with
 * canopy_member_res_clear(). On error nothing is left allocated. */
canopy_err canopy_state_members_resolve(canopy_state *st, const char *connector, char *const *refs, size_t n,
                                        canopy_member_res *out);
void canopy_member_res_clear(canopy_member_res *v, size_t n);

/* Iterate the anchors of one connector: start with *cursor = 0, call until
 * it comes back 0. *ret: owned array of owned anchors (free with
 * canopy_state_anchors_free). */
canopy_err canopy_state_cs_scan(canopy_state *st, const char *connector, uint64_t *cursor,
                                canopy_bytes **ret, size_t *ret_n);
void canopy_state_anchors_free(canopy_bytes *v, size_t n);

/* ---- DN index ----------------------------------------------------------- */

/* Map (connector, DN) -> anchor. dn is normalised inside. */
canopy_err canopy_state_dn_set(canopy_state *st, const char *connector, const char *dn,
                               const canopy_bytes *anchor);
/* Anchor of (connector, DN); CANOPY_ERR_NOT_FOUND when unknown. ret->data owned. */
canopy_err canopy_state_dn_get(canopy_state *st, const char *connector, const char *dn, canopy_bytes *ret);
/* Remove the mapping only if it still points at `anchor` (a rename may
 * have given the DN to another object already). The DN keeps a tombstone:
 * canopy_state_dn_get() reports it as CANOPY_ERR_NOT_FOUND, and
 * canopy_state_member_resolve() reports references to it as dangling. */
canopy_err canopy_state_dn_del(canopy_state *st, const char *connector, const char *dn,
                               const canopy_bytes *anchor);
/* The anchor of the object that last held (connector, DN), when the DN was
 * buried by canopy_state_dn_del (renamed away or deleted);
 * CANOPY_ERR_NOT_FOUND when the DN is held now or was never seen. */
canopy_err canopy_state_dn_former(canopy_state *st, const char *connector, const char *dn, canopy_bytes *ret);

/* ---- END_OF_SCAN pieces ------------------------------------------------- */

/* Record piece `piece` of the END_OF_SCAN of scan_id (a producer sends one
 * piece per partition of changes, npieces in all). *ret_complete: every
 * piece is in and canopy_state_scan_done() was not called yet, so the sweep
 * of the scan is due. Idempotent (a redelivered piece counts once). */
canopy_err canopy_state_scan_piece(canopy_state *st, const char *connector, const char *scan_id, int32_t piece,
                                   int32_t npieces, bool *ret_complete);
/* The sweep of scan_id is done: later pieces (redeliveries) do not repeat it. */
canopy_err canopy_state_scan_done(canopy_state *st, const char *connector, const char *scan_id);

/* ---- RESOLVE coalescing ------------------------------------------------- */

/* Before publishing an MvEvent RESOLVE for mv_id: *ret_claimed is false when
 * one is already on its way (not yet started by the export stage), which
 * will see whatever changed since: then publish nothing. A claim lapses
 * after 10 minutes (a worker that died between claim and publish). */
canopy_err canopy_state_resolve_claim(canopy_state *st, const char *mv_id, bool *ret_claimed);
/* The export stage starts on mv_id: from now on a change it may not see
 * needs a new RESOLVE. Call before reading anything of the object. */
canopy_err canopy_state_resolve_start(canopy_state *st, const char *mv_id);

/* ---- metaverse ---------------------------------------------------------- */

typedef struct canopy_mv_record {
        char *mv_id;
        char *object_type;
        canopy_mv_contrib *contribs; /* owned */
        size_t ncontribs;
} canopy_mv_record;

void canopy_mv_record_free(canopy_mv_record *mv);
/* Read an mv object; CANOPY_ERR_NOT_FOUND when it has no type and no
 * contributor. *ret owned. */
canopy_err canopy_state_mv_get(canopy_state *st, const char *mv_id, canopy_mv_record **ret);
/* Add a contributor (idempotent); sets the type if the object is new. */
canopy_err canopy_state_mv_add_contrib(canopy_state *st, const char *mv_id, const char *object_type,
                                       const char *connector, const canopy_bytes *anchor);
/* Remove a contributor (idempotent). *ret_remaining: contributors left. */
canopy_err canopy_state_mv_remove_contrib(canopy_state *st, const char *mv_id, const char *connector,
                                          const canopy_bytes *anchor, size_t *ret_remaining);
/* Remember a join key claimed for this mv object (to release it later). */
canopy_err canopy_state_mv_note_join_key(canopy_state *st, const char *mv_id, const char *join_key);
/* Delete the mv object and release every join key it still holds. */
canopy_err canopy_state_mv_delete(canopy_state *st, const char *mv_id);

/* ---- join index --------------------------------------------------------- */

/* Build the canonical join key "type\x1fattr\x1fvalue" (value lower-cased).
 * *ret owned (free). */
canopy_err canopy_state_join_key(const char *object_type, const char *attr, const char *value, char **ret);
/* The mv id holding join_key; CANOPY_ERR_NOT_FOUND when free. out: 33 bytes. */
canopy_err canopy_state_join_lookup(canopy_state *st, const char *join_key, char out[33]);
/* Atomically claim join_key for candidate, unless some mv id holds it
 * already. out (33 bytes) receives the holder: candidate if the claim won,
 * the other mv id otherwise. Two workers racing on one key get one id. */
canopy_err canopy_state_join_claim(canopy_state *st, const char *join_key, const char *candidate, char out[33]);
/* Release join_key if mv_id holds it (compare and delete). */
canopy_err canopy_state_join_release(canopy_state *st, const char *join_key, const char *mv_id);

/* ---- export state ------------------------------------------------------- */

typedef struct canopy_export_state {
        char *entra_id;       /* NULL: never exported */
        char *immutable_id;   /* onPremisesImmutableId written at create */
        char *props_hash;     /* hex SHA-256 of props_json */
        char *props_json;     /* last exported properties (JSON object) */
        char *intent;         /* create intent: immutable id being created; NULL if none */
        bool deleted;         /* object was deleted in Entra */
        int64_t created_ms;   /* when this export created (or hard-matched) the object; 0 = unknown */
} canopy_export_state;

void canopy_export_state_free(canopy_export_state *es);
/* Read; CANOPY_ERR_NOT_FOUND when nothing was ever recorded. *ret owned. */
canopy_err canopy_state_exp_get(canopy_state *st, const char *mv_id, canopy_export_state **ret);
/* Record a create intent before the create call. */
canopy_err canopy_state_exp_intent(canopy_state *st, const char *mv_id, const char *immutable_id);
/* Record a successful export: entra id, immutable id, properties (JSON
 * text; its hash is computed here). Clears the intent and the deleted flag. */
canopy_err canopy_state_exp_record(canopy_state *st, const char *mv_id, const char *entra_id,
                                   const char *immutable_id, const char *props_json);
/* canopy_state_exp_record after a create or hard match, which also records
 * created_ms (epoch ms): how long ago the object appeared in Entra tells
 * whether a 404 on it can still be replication lag. */
canopy_err canopy_state_exp_record_created(canopy_state *st, const char *mv_id, const char *entra_id,
                                           const char *immutable_id, const char *props_json,
                                           int64_t created_ms);
/* Record that the object was deleted in Entra (keeps nothing else). */
canopy_err canopy_state_exp_deleted(canopy_state *st, const char *mv_id);
/* Exported member set (Entra ids) of a group: add/remove (idempotent). */
canopy_err canopy_state_exp_members_apply(canopy_state *st, const char *mv_id, bool replace,
                                          const char *const *add, size_t nadd,
                                          const char *const *remove, size_t nremove);
/* Exported member Entra ids, NULL-terminated owned array. */
canopy_err canopy_state_exp_members(canopy_state *st, const char *mv_id, char ***ret, size_t *ret_n);
/* Hex SHA-256 of a text (out: 65 bytes). */
void canopy_state_hash_hex(const char *text, char out[65]);

/* ---- pending references ------------------------------------------------- */

/* Group `group_mv` waits for member `member_key` (a member mv id, or
 * "d:<connector>\x1f<normalised DN>" for a DN never seen). */
canopy_err canopy_state_pending_add(canopy_state *st, const char *member_key, const char *group_mv);
/* Group `group_mv` no longer waits for member_key: the member turned out
 * to be there after all (read again after canopy_state_pending_add, which
 * closes the race with the stage that resolves it). */
canopy_err canopy_state_pending_remove(canopy_state *st, const char *member_key, const char *group_mv);
/* Atomically take (read and delete) the groups waiting for member_key. */
canopy_err canopy_state_pending_take(canopy_state *st, const char *member_key, char ***ret, size_t *ret_n);
/* Number of members that groups are waiting for. */
canopy_err canopy_state_pending_count(canopy_state *st, int64_t *ret);

/* ---- member DNs not seen yet ---------------------------------------------- */
/* A group member whose DN the join stage has not seen is held as
 * "d:<dn>" in the group's member set. Once an object takes that DN the
 * reference must name its anchor: AD renames and moves a member without
 * changing its groups (the link follows the object), so a DN reference
 * kept would name nothing after the member's first rename. The join stage
 * notes the group (dnref:{connector\x1f<d:dn>}) when it stores such a
 * reference, and rebinds every noted group when the DN appears. */

/* Group (connector, group_anchor) holds the reference dn_ref ("d:<dn>"). */
canopy_err canopy_state_dnref_add(canopy_state *st, const char *connector, const char *dn_ref,
                                  const canopy_bytes *group_anchor);
/* The DN of dn_ref now belongs to member_anchor: in every group noted, the
 * reference becomes "a:<anchor>". *ret (NULL-terminated, owned): the mv ids
 * of the groups changed that have one. */
canopy_err canopy_state_dnref_rebind(canopy_state *st, const char *connector, const char *dn_ref,
                                     const canopy_bytes *member_anchor, char ***ret, size_t *ret_n);

/* ---- first full import of a connector ---------------------------------- */
/* A member DN the join stage has not seen may be a member still to come
 * while the connector's first full import runs, and a group holds its
 * removals back for it (the member may already be in the Entra group).
 * Once that import is complete (its END_OF_SCAN swept), such a DN is a
 * reference to nothing in scope (an object outside the synced OUs, of
 * another directory, deleted): Entra Connect drops it, and so does Canopy.
 * scanned:{connector} is the flag, hold:{connector} the groups that held
 * removals back meanwhile, to be computed again once it is set. */

/* Group `group_mv` waits for a DN of `connector` not seen yet: note it in
 * hold:{connector} unless the import is complete (*ret_scanned). */
canopy_err canopy_state_hold_for_scan(canopy_state *st, const char *connector, const char *group_mv,
                                      bool *ret_scanned);
/* The connector's full import is complete: set the flag and read the groups
 * that held removals back (*ret NULL-terminated, owned); release each with
 * canopy_state_hold_release once its RESOLVE is sent (a retry reads the
 * rest). */
canopy_err canopy_state_connector_scanned(canopy_state *st, const char *connector, char ***ret, size_t *ret_n);
canopy_err canopy_state_hold_release(canopy_state *st, const char *connector, const char *const *groups, size_t n);

/* ---- group waits: computing only what changed ---------------------------- */
/* A group's full member computation costs a look-up per member; during an
 * initial sync a large group is woken again and again as its members are
 * exported, and a one-member change of a large group would cost a look-up
 * of every member. So the full computation records what it left waiting
 * (gw:{g}, wait key -> "<connector>\x1f<reference>"),
 * canopy_state_pending_take notes every key it wakes (gr:{g}), the join
 * stage notes member deltas (gd:{g}), and the next computation looks at
 * those only. The marker of gw:{g} says whether that is allowed: "1" yes; "held"
 * (removals were held back while members waited) or "busy" (a RESOLVE was
 * cut short) no: the next RESOLVE computes everything again, which is
 * always right. */

/* A full computation begins: forget the waits, the woken keys and the
 * member changes, and mark the group "busy". */
canopy_err canopy_state_group_waits_reset(canopy_state *st, const char *group_mv);
/* Replace the group's waits after a full computation. keys/vals borrowed.
 * fingerprint names the group's contributing records: an incremental
 * computation is only allowed with the same ones. Atomic, and only while
 * the marker still says "busy" (*ret_applied false, may be NULL, when a
 * clear came meanwhile: the next computation does everything). */
canopy_err canopy_state_group_waits_set(canopy_state *st, const char *group_mv, bool held, const char *fingerprint,
                                        const char *const *keys, const char *const *vals, size_t n,
                                        bool *ret_applied);

/* What happened to a group's members since its last member computation. */
typedef struct canopy_group_delta {
        bool ok;       /* false: compute everything */
        char **woken;  /* pending keys woken (NULL-terminated) */
        size_t nwoken;
        char **refs;   /* member references changed, "<connector>\x1f<ref>" */
        bool *added;   /* refs[i] added (true) or removed (false) */
        size_t nrefs;
} canopy_group_delta;

/* Begin an incremental computation: when the marker is "1" and the
 * fingerprint matches, set it to "busy", take the woken keys (gr:) and the
 * member changes (gd:) into *ret and set ret->ok; else ret->ok is false
 * and nothing changes (compute everything). Free with
 * canopy_group_delta_clear. */
canopy_err canopy_state_group_waits_begin(canopy_state *st, const char *group_mv, const char *fingerprint,
                                          canopy_group_delta *ret);
void canopy_group_delta_clear(canopy_group_delta *d);
/* The join stage changed the group's member references of `connector`
 * by a delta: note them (gd:) for its next incremental computation. */
canopy_err canopy_state_group_delta_note(canopy_state *st, const char *group_mv, const char *connector,
                                         const char *const *add, size_t nadd, const char *const *rm, size_t nrm);
/* The recorded values of keys[0..n): ret[i] owned, NULL when not waited for. */
canopy_err canopy_state_group_waits_get(canopy_state *st, const char *group_mv, const char *const *keys, size_t n,
                                        char **ret);
/* End an incremental RESOLVE: drop del[], record add[] -> vals[], marker
 * "1"; atomic, and only while the marker still says "busy" (as
 * canopy_state_group_waits_set). */
canopy_err canopy_state_group_waits_end(canopy_state *st, const char *group_mv, const char *const *del, size_t ndel,
                                        const char *const *add, const char *const *vals, size_t nadd,
                                        bool *ret_applied);
/* Forget the group's waits (its next RESOLVE computes everything): after a
 * member is deleted, when the group is deleted, when removals are no longer
 * held back, when a complete member set arrives. A computation running
 * meanwhile then records nothing (its marker is gone). */
canopy_err canopy_state_group_waits_clear(canopy_state *st, const char *group_mv);


/* Set membership in one round trip: ret[i] tells whether items[i] is in
 * the group's exported members (exp) or its connector-space member
 * references (cs). */
canopy_err canopy_state_exp_members_has(canopy_state *st, const char *mv_id, const char *const *items, size_t n,
                                        bool *ret);
canopy_err canopy_state_cs_members_has(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                                       const char *const *items, size_t n, bool *ret);

/* Reverse membership of exported members: group `group_mv` has the Entra
 * object `member_eid` as a member in Entra. Taken when that object is
 * deleted, so that those groups are exported again. */
canopy_err canopy_state_memberof_add(canopy_state *st, const char *const *member_eids, size_t n, const char *group_mv);
canopy_err canopy_state_memberof_remove(canopy_state *st, const char *const *member_eids, size_t n,
                                        const char *group_mv);
canopy_err canopy_state_memberof_take(canopy_state *st, const char *member_eid, char ***ret, size_t *ret_n);

/* An object waits for the value `value` of property `prop` to be freed by
 * another object (ObjectConflict). Values compare case-insensitively. */
canopy_err canopy_state_conflict_wait(canopy_state *st, const char *prop, const char *value, const char *mv_id);
/* Take the objects waiting for (prop, value): the value was just freed. */
canopy_err canopy_state_conflict_take(canopy_state *st, const char *prop, const char *value, char ***ret,
                                      size_t *ret_n);

/* ---- errors ------------------------------------------------------------- */

/* Put mv_id in the errors set with a JSON description (copied), e.g.
 * {"code":"GRAPH_CONFLICT","property":"userPrincipalName","value":"x@y",
 *  "other":"<entra id>","message":"..."}. */
canopy_err canopy_state_error_set(canopy_state *st, const char *mv_id, const char *json);
/* Remove mv_id from the errors set (idempotent). */
canopy_err canopy_state_error_clear(canopy_state *st, const char *mv_id);
/* The description of mv_id's error (owned), CANOPY_ERR_NOT_FOUND if none. */
canopy_err canopy_state_error_get(canopy_state *st, const char *mv_id, char **ret);
canopy_err canopy_state_error_count(canopy_state *st, int64_t *ret);
/* One page of the errors set: mv ids and their JSON descriptions (both
 * owned, NULL-terminated, canopy_state_strv_free). *cursor starts at 0 and
 * is 0 again after the last page. */
canopy_err canopy_state_error_scan(canopy_state *st, uint64_t *cursor, char ***ret_ids, char ***ret_json,
                                   size_t *ret_n);

/* ---- staging ------------------------------------------------------------ */

/* Record what staging mode would export for mv_id (JSON, copied). */
canopy_err canopy_state_staged_set(canopy_state *st, const char *mv_id, const char *json);
/* Forget a staged difference (after it was exported). */
canopy_err canopy_state_staged_clear(canopy_state *st, const char *mv_id);
/* The staged JSON of mv_id (owned), CANOPY_ERR_NOT_FOUND if none. */
canopy_err canopy_state_staged_get(canopy_state *st, const char *mv_id, char **ret);
/* Iterate staged mv ids: *cursor = 0 first, until it returns 0. */
canopy_err canopy_state_staged_scan(canopy_state *st, uint64_t *cursor, char ***ret, size_t *ret_n);

/* ---- misc --------------------------------------------------------------- */

/* Counter incremented by name (metrics shared by all workers). */
canopy_err canopy_state_counter_incr(canopy_state *st, const char *name, int64_t by, int64_t *ret);

#ifdef __cplusplus
}
#endif
#endif
