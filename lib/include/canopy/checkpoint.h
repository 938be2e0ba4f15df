/* canopy/checkpoint.h: a producer's durable position and object memory in Redis.
 *
 * One canopy_checkpoint belongs to one connector (one producer process) and
 * holds one Redis connection: use it from one thread.
 *
 * What it keeps, all keys under the connector's hash tag so that Redis Cluster
 * puts them on one shard (prefix defaults to "canopy:"):
 *   <prefix>{conn:<id>}:pos:<name>            position: DirSync cookie, USN, syncrepl cookie
 *   <prefix>{conn:<id>}:objects               hash: object id (objectGUID / entryUUID bytes)
 *                                             -> anchor, object class, DN
 *   <prefix>{conn:<id>}:mv:<attr>:<oid hex>   set: last member values of a group
 *                                             (delta computation on OpenLDAP)
 *   <prefix>{conn:<id>}:flag:<name>           flags, e.g. "fullscan" (a full scan was asked)
 *
 * Writes to the object map and the member sets are staged in memory and
 * reach Redis only with canopy_checkpoint_commit(), together with (and
 * before) the new position. The producer commits only after Kafka confirmed
 * delivery of every event the staged state describes, so a crash at any
 * point leaves Redis describing a position that is at or behind what was
 * delivered: a restart re-reads and re-publishes (duplicates, no loss).
 * Reads see staged writes first, then Redis.
 *
 * Errors: CANOPY_ERR_REDIS / CANOPY_ERR_REDIS_UNREACHABLE (retriable),
 * CANOPY_ERR_NOT_FOUND where said, CANOPY_ERR_NOMEM, CANOPY_ERR_INVALID_ARG.
 */
#ifndef CANOPY_CHECKPOINT_H
#define CANOPY_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/err.h"
#include "canopy/event.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_checkpoint canopy_checkpoint;

/* Caps. */
#define CANOPY_CHECKPOINT_MAX_CONNECTOR 64u   /* characters of a connector id: [A-Za-z0-9._-] */
#define CANOPY_CHECKPOINT_MAX_STAGED 200000u  /* staged writes before a commit is forced by the caller */
#define CANOPY_CHECKPOINT_MAX_MEMBERS 1000000u /* values kept per member set */

typedef struct canopy_checkpoint_opts {
        const char *host;      /* (borrowed) Redis host */
        int port;
        const char *password;  /* (borrowed) may be NULL */
        int timeout_ms;        /* 0 = 2000 */
        const char *prefix;    /* (borrowed) key prefix, NULL = "canopy:" */
        const char *connector; /* (borrowed) connector id, validated */
} canopy_checkpoint_opts;

/* An object the producer has seen. All members owned by the struct. */
typedef struct canopy_ckpt_object {
        canopy_bytes anchor;
        char *object_class; /* "user" | "group" | "contact" | other */
        char *dn;
} canopy_ckpt_object;

/* Release the members of o (not o itself). NULL allowed. */
void canopy_ckpt_object_clear(canopy_ckpt_object *o);

/* Connect. *ret owned, free with canopy_checkpoint_free(). CANOPY_ERR_CONFIG
 * if the connector id is not [A-Za-z0-9._-]{1,64}. */
canopy_err canopy_checkpoint_new(const canopy_checkpoint_opts *opts, canopy_checkpoint **ret);
/* Close; staged writes not committed are dropped. NULL allowed. */
void canopy_checkpoint_free(canopy_checkpoint *cp);
/* Last Redis error text (borrowed, valid until the next call). */
const char *canopy_checkpoint_errstr(const canopy_checkpoint *cp);

/* Read a committed position. *ret owned by the caller (free(ret->data)).
 * CANOPY_ERR_NOT_FOUND when none was saved. */
canopy_err canopy_checkpoint_get_position(canopy_checkpoint *cp, const char *name, canopy_bytes *ret);
/* Stage the position `name` = data (copied); written by the next commit,
 * after every other staged write. */
canopy_err canopy_checkpoint_stage_position(canopy_checkpoint *cp, const char *name, const void *data,
                                            size_t len);
/* Delete a position now (e.g. a cookie the server rejected). */
canopy_err canopy_checkpoint_drop_position(canopy_checkpoint *cp, const char *name);

/* Look an object up by its object id (oid borrowed). *ret filled (owned by
 * the caller, canopy_ckpt_object_clear). CANOPY_ERR_NOT_FOUND if unknown or
 * staged as deleted. */
canopy_err canopy_checkpoint_object_get(canopy_checkpoint *cp, const void *oid, size_t oidlen,
                                        canopy_ckpt_object *ret);
/* Stage "object oid is o" (o borrowed, copied). */
canopy_err canopy_checkpoint_object_put(canopy_checkpoint *cp, const void *oid, size_t oidlen,
                                        const canopy_ckpt_object *o);
/* Stage "object oid is gone"; also drops its member sets. */
canopy_err canopy_checkpoint_object_del(canopy_checkpoint *cp, const void *oid, size_t oidlen);

/* Callback of canopy_checkpoint_object_scan: oid and o borrowed for the call.
 * Return non-zero to stop the scan. */
typedef int (*canopy_ckpt_scan_cb)(void *arg, const canopy_bytes *oid, const canopy_ckpt_object *o);
/* Visit every committed object (HSCAN; staged writes are not visited). */
canopy_err canopy_checkpoint_object_scan(canopy_checkpoint *cp, canopy_ckpt_scan_cb cb, void *arg);
/* Number of committed objects. */
canopy_err canopy_checkpoint_object_count(canopy_checkpoint *cp, int64_t *ret);

/* Last known values of a multi-valued attribute (staged first, then Redis).
 * *ret_values owned (free each .data, then the array); *ret_n may be 0.
 * *ret_known is false when nothing was ever stored for it. */
canopy_err canopy_checkpoint_members_get(canopy_checkpoint *cp, const void *oid, size_t oidlen, const char *attr,
                                         canopy_bytes **ret_values, size_t *ret_n, bool *ret_known);
/* Stage the full value set (values borrowed, copied). CANOPY_ERR_LIMIT above
 * CANOPY_CHECKPOINT_MAX_MEMBERS. */
canopy_err canopy_checkpoint_members_put(canopy_checkpoint *cp, const void *oid, size_t oidlen, const char *attr,
                                         const canopy_bytes *values, size_t n);

/* Number of staged writes (the caller commits before the cap). */
size_t canopy_checkpoint_staged(const canopy_checkpoint *cp);
/* Write every staged change, then the staged positions, in that order, in
 * one pipeline. On failure the staged writes are kept for a retry. */
canopy_err canopy_checkpoint_commit(canopy_checkpoint *cp);
/* Pipelined checkpoints during bulk reads: seal() closes the current batch
 * of staged writes (the producer notes how many events it had produced);
 * writes staged afterwards form the next batch, and re-staging a sealed key
 * moves it to the open batch (its newer value is committed later, which only
 * makes Redis lag, never lead, what Kafka confirmed). Once Kafka confirmed
 * every event up to the seal, commit_sealed() writes the sealed batch only,
 * while the producer goes on reading. */
void canopy_checkpoint_seal(canopy_checkpoint *cp);
bool canopy_checkpoint_has_sealed(const canopy_checkpoint *cp);
canopy_err canopy_checkpoint_commit_sealed(canopy_checkpoint *cp);

/* Drop every staged write (after a lost lease or a failed delivery). */
void canopy_checkpoint_discard(canopy_checkpoint *cp);

/* Flags: set / test-and-clear a flag such as "fullscan" (immediate). */
canopy_err canopy_checkpoint_flag_set(canopy_checkpoint *cp, const char *name);
canopy_err canopy_checkpoint_flag_take(canopy_checkpoint *cp, const char *name, bool *ret_was_set);
/* Whether a flag is set, without clearing it. */
canopy_err canopy_checkpoint_flag_test(canopy_checkpoint *cp, const char *name, bool *ret_set);

/* Write "key" with the connector hash tag into buf: "<prefix>{conn:<id>}:<suffix>".
 * Returns the length, or -1 if it does not fit. */
int canopy_checkpoint_key(const canopy_checkpoint *cp, char *buf, size_t cap, const char *suffix);

#ifdef __cplusplus
}
#endif
#endif
