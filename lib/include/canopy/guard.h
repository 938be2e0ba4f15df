/* canopy/guard.h: the deletion guard's hook in the export stage.
 *
 * Every cloud delete goes through canopy_guard_reserve_delete() first, in
 * this one place, so that the guard (guard/) can enforce the deletion
 * threshold and quarantine atomically in Redis, however many workers run.
 * For now the hook counts deletes in one atomic Redis counter and allows
 * every delete; the guard issue adds the threshold behind this call.
 */
#ifndef CANOPY_GUARD_H
#define CANOPY_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/err.h"
#include "canopy/state.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reserve one cloud delete of mv_id (borrowed). *ret_allowed: true when the
 * delete may be sent now; false when the guard holds it (the caller records
 * CANOPY_RES_HELD and does not commit). *ret_count (may be NULL): deletes
 * counted so far. Idempotent per mv id: a retried delete of the same object
 * is not counted twice. Returns a Redis error (retriable) on failure. */
canopy_err canopy_guard_reserve_delete(canopy_state *st, const char *mv_id, bool *ret_allowed, int64_t *ret_count);

/* Deletes counted so far (the counter the guard's threshold will read). */
canopy_err canopy_guard_delete_count(canopy_state *st, int64_t *ret);

#ifdef __cplusplus
}
#endif
#endif
