/* canopy/lease.h: one leader per key through a lease in Redis.
 *
 * Acquire: SET key holder NX PX ttl. Renew: a Lua script extends the TTL only
 * if the key still holds our holder id (compare-and-extend); release: a Lua
 * compare-and-delete. A background thread renews every ttl/3 on its own Redis
 * connection. canopy_lease_held() is true only while the last successful
 * renewal, counted from the moment its request was sent, is younger than the
 * TTL minus a safety margin (ttl/5) on the monotonic clock: a leader that
 * cannot reach Redis, or finds another holder, stops believing it leads
 * before the key can expire and be taken by a standby.
 *
 * Key layout: the caller passes the full key, e.g. "canopy:{conn:forest-a}:lease".
 */
#ifndef CANOPY_LEASE_H
#define CANOPY_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_lease canopy_lease;

typedef struct canopy_lease_opts {
        const char *host;     /* (borrowed) */
        int port;
        const char *password; /* (borrowed) may be NULL */
        int timeout_ms;       /* Redis I/O timeout; 0 = ttl/4 */
        const char *key;      /* (borrowed) full Redis key */
        const char *holder;   /* (borrowed) holder id, unique per process (e.g. host:pid:random) */
        int64_t ttl_ms;       /* lease time to live, >= 1000 */
} canopy_lease_opts;

/* Create (no Redis traffic yet). *ret owned, free with canopy_lease_free(). */
canopy_err canopy_lease_new(const canopy_lease_opts *opts, canopy_lease **ret);
/* Stop the renewal thread, release the lease if held, free. NULL allowed. */
void canopy_lease_free(canopy_lease *l);

/* One attempt to take the lease. *ret_acquired true when we hold it now
 * (also when we already held it). Errors: CANOPY_ERR_REDIS_UNREACHABLE, REDIS. */
canopy_err canopy_lease_try_acquire(canopy_lease *l, bool *ret_acquired);
/* Block until the lease is ours, trying every ttl/3, or until *stop becomes
 * non-zero (CANOPY_ERR_SHUTDOWN). Redis errors are retried. */
canopy_err canopy_lease_wait(canopy_lease *l, volatile int *stop);
/* Start the renewal thread (after acquiring). */
canopy_err canopy_lease_start(canopy_lease *l);
/* Whether we may act as leader right now (thread-safe, cheap). */
bool canopy_lease_held(canopy_lease *l);
/* Renew once now (the thread does this; exposed for tests). */
canopy_err canopy_lease_renew(canopy_lease *l, bool *ret_held);
/* Give the lease up (compare-and-delete) and stop renewing. */
canopy_err canopy_lease_release(canopy_lease *l);
/* Holder id currently stored in Redis (for logs and tests). *ret owned (free),
 * NULL when nobody holds it. */
canopy_err canopy_lease_owner(canopy_lease *l, char **ret);

#ifdef __cplusplus
}
#endif
#endif
