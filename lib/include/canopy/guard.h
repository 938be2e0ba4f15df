/* canopy/guard.h: the deletion guard's hook in the export stage.
 *
 * Every cloud delete goes through canopy_guard_reserve_delete() first, in
 * one place of the export stage, so that the deletion threshold and the
 * quarantine (canopy/guard_policy.h, docs/GUARD.md) hold atomically in Redis
 * however many workers run.
 */
#ifndef CANOPY_GUARD_H
#define CANOPY_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/err.h"
#include "canopy/guard_policy.h"
#include "canopy/state.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reserve one cloud delete of mv_id (borrowed). info (borrowed, may be
 * NULL): a short JSON text shown to operators with a held delete.
 * *ret_verdict: ALLOW (send it now), HOLD (held by the threshold or a
 * quarantine, or rejected by an operator and waiting for a full scan: do
 * not send, do not commit; ask again later). Idempotent per mv id.
 * *ret_count (may be NULL): deletes counted in the window. Returns a Redis
 * error (retriable) on failure. */
canopy_err canopy_guard_reserve_delete(canopy_state *st, const char *mv_id, const char *info,
                                       canopy_guard_verdict *ret_verdict, int64_t *ret_count);

/* Deletes counted in the current window. */
canopy_err canopy_guard_delete_count(canopy_state *st, int64_t *ret);

#ifdef __cplusplus
}
#endif
#endif
