/* guard_counter.c: the delete counter behind canopy_guard_reserve_delete().
 * Keys: <prefix>guard:{guard}:deletes (counter) and
 * <prefix>guard:{guard}:reserved (mv ids already counted), one hash tag so
 * that the script is atomic on Redis Cluster too. */
#include "canopy/guard.h"

#include <stdlib.h>
#include <string.h>

#include "state_int.h"

/* KEYS[1] counter, KEYS[2] reserved set; ARGV[1] mv id. Returns the count. */
static const char LUA_RESERVE[] =
        "if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then\n"
        "  return redis.call('INCR', KEYS[1])\n"
        "end\n"
        "return tonumber(redis.call('GET', KEYS[1]) or '0')\n";

static char sha_reserve[41];

canopy_err canopy_guard_reserve_delete(canopy_state *st, const char *mv_id, bool *ret_allowed, int64_t *ret_count) {
        char *ck = canopy_state_key(st, "guard:{guard}:deletes");
        char *rk = canopy_state_key(st, "guard:{guard}:reserved");
        canopy_err err = CANOPY_ERR_NOMEM;
        if (ck && rk) {
                const char *av[4] = {"2", ck, rk, mv_id};
                /* sha_reserve is a pure function of the script text: a race
                 * between threads writes the same bytes. */
                redisReply *r = rconn_eval(st->rc, LUA_RESERVE, sha_reserve, 4, av, NULL);
                if (!r)
                        err = CANOPY_ERR_REDIS_UNREACHABLE;
                else if (r->type != REDIS_REPLY_INTEGER)
                        err = CANOPY_ERR_REDIS;
                else {
                        err = CANOPY_OK;
                        if (ret_count)
                                *ret_count = r->integer;
                        *ret_allowed = true; /* the threshold lands here with the guard */
                }
                if (r)
                        freeReplyObject(r);
        }
        free(ck);
        free(rk);
        return err;
}

canopy_err canopy_guard_delete_count(canopy_state *st, int64_t *ret) {
        char *ck = canopy_state_key(st, "guard:{guard}:deletes");
        if (!ck)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "GET %s", ck);
        free(ck);
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        canopy_err err = CANOPY_OK;
        if (r->type == REDIS_REPLY_STRING)
                *ret = strtoll(r->str, NULL, 10);
        else if (r->type == REDIS_REPLY_NIL)
                *ret = 0;
        else
                err = CANOPY_ERR_REDIS;
        freeReplyObject(r);
        return err;
}
