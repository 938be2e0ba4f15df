/* graph_budget.c: the Graph write budget shared by every worker of a tenant.
 *
 * Graph allows about 3,000 writes per 150 s per app and tenant. Every
 * process that writes for the same app+tenant takes its writes from one
 * sliding-window log in Redis: a sorted set of grants scored by the Redis
 * server's clock (one clock for all workers), trimmed to the window by a Lua
 * script that grants n writes atomically only when the window then holds at
 * most `writes` grants, and otherwise answers how long until it would. So in
 * any interval of window_ms, at most `writes` writes are granted in total.
 *
 * Keys: <key> (ZSET) and <key>:seq (counter for unique members); <key>
 * should carry a hash tag so that both land in one Redis Cluster slot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/log.h"
#include "graph_int.h"
#include "redis_conn.h"

struct canopy_graph_budget {
        rconn *rc;
        char *key;
        char *seq_key;
        int64_t writes;
        int64_t window_ms;
        char sha[41];
};

/* Returns {granted (1|0), wait_ms, used}. An entry scored ts stops counting
 * once now > ts + window (strictly), hence the +1 in the wait. */
static const char BUDGET_LUA[] =
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local n = tonumber(ARGV[1])\n"
        "local limit = tonumber(ARGV[2])\n"
        "local win = tonumber(ARGV[3])\n"
        "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - win))\n"
        "local used = redis.call('ZCARD', KEYS[1])\n"
        "if used + n <= limit then\n"
        "  local seq = redis.call('INCRBY', KEYS[2], n)\n"
        "  local args = {}\n"
        "  for i = 1, n do\n"
        "    args[#args + 1] = now\n"
        "    args[#args + 1] = tostring(seq - n + i)\n"
        "  end\n"
        "  redis.call('ZADD', KEYS[1], unpack(args))\n"
        "  redis.call('PEXPIRE', KEYS[1], win + 1000)\n"
        "  redis.call('PEXPIRE', KEYS[2], win + 1000)\n"
        "  return {1, 0, used + n}\n"
        "end\n"
        "local idx = used + n - limit - 1\n"
        "local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')\n"
        "local wait = 1\n"
        "if e[2] then wait = tonumber(e[2]) + win - now + 1 end\n"
        "if wait < 1 then wait = 1 end\n"
        "return {0, wait, used}\n";

canopy_err canopy_graph_budget_new(const char *redis_host, int redis_port, const char *redis_password,
                                   const char *key, int64_t writes, int64_t window_ms,
                                   canopy_graph_budget **ret) {
        if (!key || !*key || writes <= 0 || window_ms <= 0 || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_budget *b = calloc(1, sizeof(*b));
        if (!b)
                return CANOPY_ERR_NOMEM;
        b->key = strdup(key);
        size_t sl = strlen(key) + 5;
        b->seq_key = malloc(sl);
        if (!b->key || !b->seq_key) {
                canopy_graph_budget_free(b);
                return CANOPY_ERR_NOMEM;
        }
        snprintf(b->seq_key, sl, "%s:seq", key);
        b->writes = writes;
        b->window_ms = window_ms;
        if (redis_password)
                canopy_log_secret(redis_password);
        canopy_err err = rconn_new(redis_host, redis_port > 0 ? redis_port : 6379, redis_password, 2000, &b->rc);
        if (err) {
                canopy_graph_budget_free(b);
                return err;
        }
        *ret = b;
        return CANOPY_OK;
}

void canopy_graph_budget_free(canopy_graph_budget *b) {
        if (!b)
                return;
        rconn_free(b->rc);
        free(b->key);
        free(b->seq_key);
        free(b);
}

canopy_err canopy_graph_budget_take(canopy_graph_budget *b, int64_t n, int64_t *ret_wait_ms) {
        if (!b || n <= 0)
                return CANOPY_ERR_INVALID_ARG;
        if (n > b->writes)
                return CANOPY_ERR_INVALID_ARG;
        char sn[24], sl[24], sw[24];
        snprintf(sn, sizeof(sn), "%lld", (long long)n);
        snprintf(sl, sizeof(sl), "%lld", (long long)b->writes);
        snprintf(sw, sizeof(sw), "%lld", (long long)b->window_ms);
        const char *argv[] = {"2", b->key, b->seq_key, sn, sl, sw};
        redisReply *r = rconn_eval(b->rc, BUDGET_LUA, b->sha, 6, argv, NULL);
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        canopy_err err = CANOPY_OK;
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_INTEGER ||
            r->element[1]->type != REDIS_REPLY_INTEGER) {
                err = CANOPY_ERR_REDIS;
        } else if (r->element[0]->integer != 1) {
                if (ret_wait_ms)
                        *ret_wait_ms = r->element[1]->integer;
                err = CANOPY_ERR_GRAPH_BUDGET;
        } else if (ret_wait_ms) {
                *ret_wait_ms = 0;
        }
        freeReplyObject(r);
        return err;
}

canopy_err canopy_graph_budget_acquire(canopy_graph_budget *b, int64_t n, int64_t max_wait_ms,
                                       int64_t *ret_wait_ms) {
        int64_t waited = 0;
        for (;;) {
                int64_t wait = 0;
                canopy_err err = canopy_graph_budget_take(b, n, &wait);
                if (err != CANOPY_ERR_GRAPH_BUDGET) {
                        if (!err && ret_wait_ms)
                                *ret_wait_ms = 0;
                        return err;
                }
                if (waited + wait > max_wait_ms) {
                        if (ret_wait_ms)
                                *ret_wait_ms = wait;
                        return err;
                }
                graph_sleep_ms(wait);
                waited += wait;
        }
}
