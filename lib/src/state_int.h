/* state_int.h (private): internals of the state module shared with the
 * guard counter (guard_counter.c). */
#ifndef CANOPY_STATE_INT_H
#define CANOPY_STATE_INT_H

#include "canopy/state.h"
#include "redis_conn.h"

struct canopy_state {
        rconn *rc;
        char *prefix;
        char sha_claim[41];
        char sha_release[41];
        char sha_csput[41];
        char sha_members[41];
        char sha_take[41];
        char sha_gbegin[41];
        char sha_greset[41];
        char sha_gset[41];
        char sha_gend[41];
        char sha_hold[41];
        char sha_rebind[41];
        char sha_scanned[41];
        char sha_bury[41];
        char sha_scan_piece[41];
};

/* "<prefix><fmt...>" in a malloc'd string; NULL on out of memory. */
char *canopy_state_key(const canopy_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
