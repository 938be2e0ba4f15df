/* redis_conn.h (private): the one place that holds a hiredis context.
 *
 * Modules of libcanopy that keep state in Redis (state, checkpoints, leases,
 * the Graph write budget, the guard) use this wrapper; hiredis types do not
 * leave lib/src. Replies returned by rconn_cmd() are owned by the caller
 * (freeReplyObject).
 *
 * Keys carry hash tags ({...}) so that Redis Cluster can shard them; see
 * docs/STATE.md.
 */
#ifndef CANOPY_REDIS_CONN_H
#define CANOPY_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stdarg.h>

#include "canopy/err.h"

typedef struct rconn {
        redisContext *c;
        char *host;
        int port;
        char *password; /* may be NULL */
        int timeout_ms;
        char errstr[256];
} rconn;

/* Connect (with timeout and AUTH). *ret owned; free with rconn_free(). */
canopy_err rconn_new(const char *host, int port, const char *password, int timeout_ms, rconn **ret);
void rconn_free(rconn *rc);
/* Run a command; on a transport error reconnects once and retries.
 * Returns NULL on failure (rc->errstr says why). Reply owned by caller. */
redisReply *rconn_cmd(rconn *rc, const char *fmt, ...);
redisReply *rconn_cmdargv(rconn *rc, int argc, const char **argv, const size_t *argvlen);
/* EVALSHA with automatic SCRIPT LOAD on NOSCRIPT. sha_cache: char[41] kept
 * by the caller (zeroed initially). */
redisReply *rconn_eval(rconn *rc, const char *script, char *sha_cache, int argc, const char **argv,
                       const size_t *argvlen);
/* Pipelining: append then read replies in order. */
canopy_err rconn_append(rconn *rc, int argc, const char **argv, const size_t *argvlen);
redisReply *rconn_read(rconn *rc);

#endif
