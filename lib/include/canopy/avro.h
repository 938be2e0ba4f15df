/* canopy/avro.h: the Avro codec of Canopy's five event records.
 *
 * Wire format: Avro single-object encoding
 *     C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer
 *            schema's Parsing Canonical Form | Avro binary body
 * The schemas are schemas/<Record>.avsc (documented in docs/EVENTS.md); they are
 * embedded in the library (lib/src/schemas.c), so binaries need no schema
 * files at run time. A unit test checks that both copies are identical.
 *
 * Encoding always uses the current version of a record's schema. Decoding
 * looks the writer schema up by fingerprint in a registry that holds every
 * version Canopy ever wrote (v1 of each record today) plus any schema added
 * with canopy_avro_register_schema(). A payload written with another version
 * of the same record is resolved to the current one with Avro's rules:
 * fields matched by name, writer fields unknown to the reader skipped,
 * reader fields missing in the writer filled from their schema default
 * (Canopy applies defaults itself; Avro-C does not), enum symbols matched by
 * name, int->long->float->double promotion, union branches by type.
 *
 * Errors never crash: an unknown fingerprint is CANOPY_ERR_UNKNOWN_SCHEMA, a
 * body that ends early CANOPY_ERR_TRUNCATED, any other malformed input
 * (bad marker, negative length, bad enum index, trailing bytes, invalid
 * UTF-8 is NOT checked) CANOPY_ERR_DECODE. Caps: an encoded event larger than
 * CANOPY_EVENT_MAX_BYTES is CANOPY_ERR_TOO_LARGE; an attribute with more
 * than CANOPY_ATTR_MAX_VALUES values (or added/removed) is
 * CANOPY_ERR_TOO_MANY_VALUES; more than CANOPY_EVENT_MAX_ATTRS attributes is
 * CANOPY_ERR_LIMIT. Both directions enforce the caps.
 *
 * Every function that takes an `errbuf` writes a one-line reason there on
 * failure (e.g. "attribute 'member' has 5001 values (cap 5000)"); errbuf
 * may be NULL. The text is also what a dead letter carries as its reason.
 *
 * Thread safety: encode/decode are thread-safe and allocation-light. The
 * registry is initialised once (lazily, thread-safely);
 * canopy_avro_register_schema() must not race with decodes.
 */
#ifndef CANOPY_AVRO_H
#define CANOPY_AVRO_H

#include <stddef.h>
#include <stdint.h>

#include "canopy/err.h"
#include "canopy/event.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The six records. */
typedef enum canopy_record {
        CANOPY_REC_CHANGE = 0,  /* io.canopy.events.ChangeEvent  (topic changes) */
        CANOPY_REC_MV,          /* io.canopy.events.MvEvent      (topic mv) */
        CANOPY_REC_EXPORT,      /* io.canopy.events.ExportRecord (topic exports) */
        CANOPY_REC_CONTROL,     /* io.canopy.events.ControlEvent (topic control) */
        CANOPY_REC_DEAD_LETTER, /* io.canopy.events.DeadLetter   (topic dlq) */
        CANOPY_REC_RUN,         /* io.canopy.events.RunRecord    (topic exports) */
        CANOPY_REC_COUNT,
} canopy_record;

#define CANOPY_AVRO_MAGIC0 0xC3
#define CANOPY_AVRO_MAGIC1 0x01
#define CANOPY_AVRO_HEADER_LEN 10 /* marker + fingerprint */

/* Error text buffer size that is always enough. */
#define CANOPY_AVRO_ERRLEN 256

/* ---- encode: ev (borrowed) -> *ret (owned by the caller: free(ret->data)).
 * *ret is untouched on failure. Required strings (connector; mv_id;
 * object_type of mv/export; topic of dead letters) must not be NULL:
 * CANOPY_ERR_ENCODE. */
canopy_err canopy_avro_encode_change(const canopy_change_event *ev, canopy_bytes *ret, char *errbuf,
                                     size_t errlen);
canopy_err canopy_avro_encode_mv(const canopy_mv_event *mv, canopy_bytes *ret, char *errbuf, size_t errlen);
canopy_err canopy_avro_encode_export(const canopy_export_record *er, canopy_bytes *ret, char *errbuf,
                                     size_t errlen);
canopy_err canopy_avro_encode_control(const canopy_control_event *ce, canopy_bytes *ret, char *errbuf,
                                      size_t errlen);
canopy_err canopy_avro_encode_dead_letter(const canopy_dead_letter *dl, canopy_bytes *ret, char *errbuf,
                                          size_t errlen);
canopy_err canopy_avro_encode_run(const canopy_run_record *rr, canopy_bytes *ret, char *errbuf, size_t errlen);

/* ---- decode: buf (borrowed, len bytes) -> *ret (a zeroed struct on entry
 * is not required; it is overwritten). On success the caller owns *ret and
 * releases it with the matching canopy_*_free() (which frees the members
 * only: ret itself is caller storage). On failure *ret is zeroed (nothing to
 * free). A payload of another record type is CANOPY_ERR_DECODE. */
canopy_err canopy_avro_decode_change(const void *buf, size_t len, canopy_change_event *ret, char *errbuf,
                                     size_t errlen);
canopy_err canopy_avro_decode_mv(const void *buf, size_t len, canopy_mv_event *ret, char *errbuf,
                                 size_t errlen);
canopy_err canopy_avro_decode_export(const void *buf, size_t len, canopy_export_record *ret, char *errbuf,
                                     size_t errlen);
canopy_err canopy_avro_decode_control(const void *buf, size_t len, canopy_control_event *ret, char *errbuf,
                                      size_t errlen);
canopy_err canopy_avro_decode_dead_letter(const void *buf, size_t len, canopy_dead_letter *ret, char *errbuf,
                                          size_t errlen);
canopy_err canopy_avro_decode_run(const void *buf, size_t len, canopy_run_record *ret, char *errbuf,
                                  size_t errlen);

/* Which record (and schema version) a payload was written with, from its
 * header alone. buf borrowed. ret_version may be NULL. Returns
 * CANOPY_ERR_TRUNCATED / DECODE (bad marker) / UNKNOWN_SCHEMA. */
canopy_err canopy_avro_peek(const void *buf, size_t len, canopy_record *ret_record, int *ret_version);

/* ---- schemas and registry ---- */

/* JSON text of the current schema of a record (static, borrowed). */
const char *canopy_avro_schema_json(canopy_record rec);
/* Version number of the current schema of a record (1 today). */
int canopy_avro_schema_version(canopy_record rec);
/* Full name of a record, e.g. "io.canopy.events.ChangeEvent" (static). */
const char *canopy_avro_record_name(canopy_record rec);
/* Fingerprint of the current schema of a record. */
uint64_t canopy_avro_schema_fingerprint(canopy_record rec);

/* CRC-64-AVRO of len bytes. */
uint64_t canopy_avro_crc64(const void *data, size_t len);
/* Parsing Canonical Form of a schema (json borrowed); *ret owned (free()).
 * CANOPY_ERR_DECODE on invalid JSON or an invalid schema. */
canopy_err canopy_avro_canonical_form(const char *json, char **ret, char *errbuf, size_t errlen);
/* CRC-64-AVRO fingerprint of the Parsing Canonical Form of a schema. */
canopy_err canopy_avro_fingerprint(const char *json, uint64_t *ret, char *errbuf, size_t errlen);

/* Add a writer schema to the registry (json copied), e.g. a schema version
 * written by a newer Canopy, so that its payloads decode here. The schema's
 * record full name must be one of the five records; `version` is a label for
 * canopy_avro_peek(). Registering an already known fingerprint is a no-op.
 * Not thread-safe against concurrent decodes: call at start-up. */
canopy_err canopy_avro_register_schema(const char *json, int version, char *errbuf, size_t errlen);

/* Resolve a payload (any registered writer schema, buf borrowed) to the
 * reader schema reader_json (borrowed; any version of the same record,
 * registered or not) and return it re-encoded, single-object encoded with
 * the reader's fingerprint, in *ret (owned, free(ret->data)). Reader fields
 * absent from the writer take their default; a reader field with no default
 * absent from the writer is CANOPY_ERR_DECODE. This is what decode does
 * internally for old versions; exposed for tools and tests of evolution. */
canopy_err canopy_avro_resolve(const void *buf, size_t len, const char *reader_json, canopy_bytes *ret,
                               char *errbuf, size_t errlen);

/* Re-encode a body written with the schema writer_json (borrowed, registered
 * or not) as a single-object payload: header + body. Used by tests and
 * tools that produce a body with another encoder (e.g. raw Avro-C). */
canopy_err canopy_avro_frame(const char *writer_json, const void *body, size_t len, canopy_bytes *ret,
                             char *errbuf, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
