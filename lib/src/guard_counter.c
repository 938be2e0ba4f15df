/* guard_counter.c: the export stage's delete hook, on the guard's policy
 * (guard_policy.c), which takes every decision in one Lua script. */
#include "canopy/guard.h"

#include <time.h>

static int64_t wall_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

canopy_err canopy_guard_reserve_delete(canopy_state *st, const char *mv_id, const char *info,
                                       canopy_guard_verdict *ret_verdict, int64_t *ret_count) {
        return canopy_guard_reserve(st, mv_id, info, wall_ms(), ret_verdict, ret_count);
}

canopy_err canopy_guard_delete_count(canopy_state *st, int64_t *ret) {
        canopy_guard_status s;
        canopy_err err = canopy_guard_status_get(st, wall_ms(), &s);
        if (!err)
                *ret = s.window_count;
        return err;
}
