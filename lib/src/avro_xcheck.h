/* avro_xcheck.h (private): the same records through the Avro-C generic
 * value API. Used by the unit tests to cross-check Canopy's hand-written
 * codec against Avro-C (both directions) and by the benchmark as the "raw
 * Avro-C" baseline. Not used on the production path. */
#ifndef CANOPY_AVRO_XCHECK_H
#define CANOPY_AVRO_XCHECK_H

#include <avro.h>

#include "canopy/event.h"

/* Fill the record value rec (a ChangeEvent of any version that has the v1
 * fields) from ev (borrowed). Returns 0 or an Avro-C error code. */
int canopy_xc_change_to_value(const canopy_change_event *ev, avro_value_t *rec);
/* Read a ChangeEvent value into *ev (owned by the caller afterwards). */
int canopy_xc_value_to_change(avro_value_t *rec, canopy_change_event *ev);
/* Avro binary body of a value (no header) into *ret (owned, free()). */
int canopy_xc_write(avro_value_t *v, canopy_bytes *ret);
/* Read an Avro binary body into v (reset first). */
int canopy_xc_read(avro_value_t *v, const void *body, size_t len);

#endif
