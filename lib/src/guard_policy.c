/* guard_policy.c: deletion threshold, quarantine, run history and audit in
 * Redis. Every decision that several workers could race on is one Lua
 * script over keys of the single hash tag {guard}. See canopy/guard_policy.h
 * and docs/GUARD.md. */
#include "canopy/guard_policy.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/log.h"
#include "state_int.h"

#define GUARD_HISTORY_MAX 10000
#define GUARD_AUDIT_MAX 10000
#define GUARD_INFO_MAX 1024

/* Key names, all under the {guard} tag. Order matters: the scripts index KEYS. */
enum {
        K_POLICY = 0,
        K_Q,
        K_WIN,
        K_HELD,
        K_APPROVED,
        K_REJECTED,
        K_SYNCED,
        K_STREAK,
        K_NOTIFIED,
        K_RUNS,
        K_HISTORY,
        K_AUDIT,
        K_QSEQ,
        K_OUTBOX,
        K__N
};

static const char *const key_names[K__N] = {
    "policy", "q", "window", "held", "approved", "rejected", "synced",
    "streak", "notified", "runs", "history", "audit", "qseq", "outbox",
};

typedef struct gkeys {
        char *k[K__N];
} gkeys;

static canopy_err keys_make(canopy_state *st, gkeys *gk) {
        memset(gk, 0, sizeof(*gk));
        for (int i = 0; i < K__N; i++) {
                gk->k[i] = canopy_state_key(st, "guard:{guard}:%s", key_names[i]);
                if (!gk->k[i])
                        return CANOPY_ERR_NOMEM;
        }
        return CANOPY_OK;
}

static void keys_free(gkeys *gk) {
        for (int i = 0; i < K__N; i++)
                free(gk->k[i]);
}

/* Lua prelude shared by the scripts: names for KEYS and two helpers. */
#define LUA_PRELUDE                                                                                 \
        "local K_POLICY,K_Q,K_WIN,K_HELD,K_APPROVED,K_REJECTED,K_SYNCED,K_STREAK,K_NOTIFIED,K_RUNS," \
        "K_HISTORY,K_AUDIT,K_QSEQ,K_OUTBOX = KEYS[1],KEYS[2],KEYS[3],KEYS[4],KEYS[5],KEYS[6],"       \
        "KEYS[7],KEYS[8],KEYS[9],KEYS[10],KEYS[11],KEYS[12],KEYS[13],KEYS[14]\n"                     \
        "local function pol(f, d) local v = redis.call('HGET', K_POLICY, f)\n"                       \
        "  if v == false then return d end return v end\n"                                         \
        "local function quarantine(reason, detail, now)\n"                                          \
        "  if redis.call('HGET', K_Q, 'state') == 'on' then return 0 end\n"                         \
        "  local seq = redis.call('INCR', K_QSEQ)\n"                                                \
        "  redis.call('HSET', K_Q, 'state', 'on', 'reason', reason, 'detail', detail,"              \
        "    'id', tostring(now) .. '-' .. tostring(seq), 'since', tostring(now))\n"                \
        "  return 1\n"                                                                              \
        "end\n"                                                                                     \
        "local function limit_now()\n"                                                              \
        "  local pct = tonumber(pol('percent', '0'))\n"                                             \
        "  if pct > 0 then\n"                                                                       \
        "    local s = tonumber(redis.call('GET', K_SYNCED) or '0')\n"                              \
        "    local l = math.floor(pct * s / 100)\n"                                                 \
        "    if l < 1 then l = 1 end\n"                                                             \
        "    return l\n"                                                                            \
        "  end\n"                                                                                   \
        "  return tonumber(pol('count', '500'))\n"                                                  \
        "end\n"                                                                                     \
        "local function prune(now)\n"                                                               \
        "  if pol('window_mode', 'rolling') == 'full-scan' then return end\n"                       \
        "  local w = tonumber(pol('window_ms', '3600000'))\n"                                       \
        "  if w > 0 then redis.call('ZREMRANGEBYSCORE', K_WIN, '-inf', '(' .. tostring(now - w)) end\n" \
        "end\n"                                                                                     \
        "local function run_closed(w, maxn)\n"                                                      \
        "  local e = cjson.encode(w)\n"                                                             \
        "  redis.call('LPUSH', K_HISTORY, e)\n"                                                     \
        "  redis.call('LTRIM', K_HISTORY, 0, maxn - 1)\n"                                           \
        "  redis.call('RPUSH', K_OUTBOX, e)\n"                                                      \
        "  if redis.call('LLEN', K_OUTBOX) > maxn then redis.call('LPOP', K_OUTBOX) end\n"          \
        "end\n"

/* ARGV: mv id, info, now. Returns {verdict, count, quarantined_now}. */
static const char LUA_RESERVE[] = LUA_PRELUDE
        "local mv, info, now = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
        "prune(now)\n"
        "if redis.call('SREM', K_APPROVED, mv) == 1 then\n"
        "  redis.call('HDEL', K_HELD, mv)\n"
        "  return {0, redis.call('ZCARD', K_WIN), 0}\n"
        "end\n"
        "if redis.call('ZSCORE', K_WIN, mv) then return {0, redis.call('ZCARD', K_WIN), 0} end\n"
        "if redis.call('HEXISTS', K_HELD, mv) == 1 then return {1, redis.call('ZCARD', K_WIN), 0} end\n"
        "local n = redis.call('ZCARD', K_WIN)\n"
        "if redis.call('HGET', K_Q, 'state') == 'on' then\n"
        /* A rejected delete waits, unsent, for the full scan that lifts the
         * quarantine; it is not listed as held again. */
        "  if redis.call('SISMEMBER', K_REJECTED, mv) == 0 then redis.call('HSET', K_HELD, mv, info) end\n"
        "  return {1, n, 0}\n"
        "end\n"
        "if pol('enabled', '1') ~= '0' then\n"
        "  local lim = limit_now()\n"
        "  if n + 1 > lim then\n"
        "    local q = quarantine('deletion-threshold', 'delete ' .. tostring(n + 1) .. ' would exceed the limit of '"
        "      .. tostring(lim) .. ' deletes', now)\n"
        "    redis.call('HSET', K_HELD, mv, info)\n"
        "    return {1, n, q}\n"
        "  end\n"
        "end\n"
        "redis.call('ZADD', K_WIN, now, mv)\n"
        "return {0, n + 1, 0}\n";

/* ARGV: mode ("approve"|"reject"), now, awaited connector ("*" = any; reject
 * only). Returns the number of held deletes.
 *
 * Approve releases the held deletes and lifts the quarantine, with a new
 * window. Reject sends none of them and keeps the pipeline quarantined
 * until a full scan of the awaited connector that started after the
 * rejection has ended (LUA_SCAN_DONE): the deletes are decided again
 * against what that scan found, once the scope is fixed. */
static const char LUA_DECIDE[] = LUA_PRELUDE
        "local ids = redis.call('HKEYS', K_HELD)\n"
        "local dest = K_APPROVED\n"
        "if ARGV[1] == 'reject' then dest = K_REJECTED end\n"
        "for i = 1, #ids, 1000 do\n"
        "  local j = math.min(i + 999, #ids)\n"
        "  redis.call('SADD', dest, unpack(ids, i, j))\n"
        "end\n"
        "redis.call('DEL', K_HELD)\n"
        "redis.call('DEL', K_STREAK)\n"
        "if ARGV[1] == 'approve' then\n"
        "  redis.call('DEL', K_WIN, K_REJECTED)\n"
        "  redis.call('HDEL', K_Q, 'awaiting', 'rejected_at')\n"
        "  redis.call('HSET', K_Q, 'state', 'off', 'lifted', ARGV[2], 'decision', 'approve')\n"
        "elseif redis.call('HGET', K_Q, 'state') == 'on' then\n"
        "  redis.call('HSET', K_Q, 'awaiting', ARGV[3], 'rejected_at', ARGV[2], 'decision', 'reject')\n"
        "end\n"
        "return #ids\n";

/* ARGV: connector, start of the scan (ms), now. The end of a full scan:
 * lifts a rejected quarantine that waits for it. Returns 1 when lifted. */
static const char LUA_SCAN_DONE[] = LUA_PRELUDE
        "local conn, started, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]\n"
        "if redis.call('HGET', K_Q, 'state') ~= 'on' then return 0 end\n"
        "local aw = redis.call('HGET', K_Q, 'awaiting')\n"
        "if not aw or (aw ~= '*' and aw ~= conn) then return 0 end\n"
        "if started < tonumber(redis.call('HGET', K_Q, 'rejected_at') or '0') then return 0 end\n"
        /* Everything held or rejected is decided again, in a new window. */
        "redis.call('DEL', K_HELD, K_REJECTED, K_WIN, K_STREAK)\n"
        "redis.call('HDEL', K_Q, 'awaiting', 'rejected_at')\n"
        "redis.call('HSET', K_Q, 'state', 'off', 'lifted', now, 'decision', 'full-scan')\n"
        "return 1\n";

/* ARGV: source, ok (1/0), now. Returns 1 when this call quarantined. */
static const char LUA_REPORT[] = LUA_PRELUDE
        "local src, ok, now = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
        "if ok == '1' then redis.call('HDEL', K_STREAK, src) return 0 end\n"
        "local first = redis.call('HGET', K_STREAK, src)\n"
        "if not first then redis.call('HSET', K_STREAK, src, tostring(now)) first = tostring(now) end\n"
        "local lim\n"
        "if src == 'graph' then lim = tonumber(pol('auth_ms', '600000')) else lim = tonumber(pol('ldap_ms', '600000')) end\n"
        "if now - tonumber(first) >= lim then\n"
        "  local reason = 'credentials'\n"
        "  if src ~= 'graph' then reason = 'ldap-bind' end\n"
        "  return quarantine(reason, src .. ' failing since ' .. first .. ' ms', now)\n"
        "end\n"
        "return 0\n";

/* ARGV: field "connector|type", connector, type, scan id, counter, n, now,
 * max entries.
 *
 * With guard.window_mode full-scan, the first window of a full scan opened
 * while no other scan has a window open starts a new deletion window:
 * scans that overlap share one. */
static const char LUA_RUN_COUNT[] = LUA_PRELUDE
        "local f, conn, typ, scan, ctr, n, now, maxn = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],"
        " tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])\n"
        "local function fresh(rt) return {connector = conn, object_type = typ, run_type = rt, scan = scan,"
        " start = now, last = now, total = 0, changed = 0, deleted = 0, filtered = 0, errors = 0} end\n"
        "local cur = redis.call('HGET', K_RUNS, f)\n"
        "local w\n"
        "if cur then w = cjson.decode(cur) end\n"
        "local rt = 'delta'\n"
        "if scan ~= '' then rt = 'full' end\n"
        "if w and (w.run_type ~= rt or (rt == 'full' and w.scan ~= scan)) then\n"
        "  w['end'] = w.last\n"
        "  w.status = 'success'\n"
        "  if w.errors > 0 then w.status = 'completed-errors' end\n"
        "  redis.call('HDEL', K_RUNS, f)\n"
        "  run_closed(w, maxn)\n"
        "  w = nil\n"
        "end\n"
        "if not w then\n"
        "  w = fresh(rt)\n"
        "  if rt == 'full' and pol('window_mode', 'rolling') == 'full-scan'"
        " and redis.call('HGET', K_Q, 'state') ~= 'on' then\n"
        "    local other = false\n"
        "    for _, v in ipairs(redis.call('HVALS', K_RUNS)) do\n"
        "      local o = cjson.decode(v)\n"
        "      if o.run_type == 'full' and o.scan ~= scan then other = true break end\n"
        "    end\n"
        "    if not other and redis.call('HGET', K_Q, 'scan_window') ~= scan then\n"
        "      redis.call('DEL', K_WIN)\n"
        "      redis.call('HSET', K_Q, 'scan_window', scan, 'scan_window_start', tostring(now))\n"
        "    end\n"
        "  end\n"
        "end\n"
        "w[ctr] = w[ctr] + n\n"
        "w.last = now\n"
        "redis.call('HSET', K_RUNS, f, cjson.encode(w))\n"
        "return 1\n";

/* ARGV: connector ('' = all), end scan id, idle ms, max ms, now, max entries. */
static const char LUA_RUN_CLOSE[] = LUA_PRELUDE
        "local conn, scan, idle, maxms, now, maxn = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),"
        " tonumber(ARGV[5]), tonumber(ARGV[6])\n"
        "local all = redis.call('HGETALL', K_RUNS)\n"
        "local closed = 0\n"
        "local qon = redis.call('HGET', K_Q, 'state') == 'on'\n"
        "for i = 1, #all, 2 do\n"
        "  local w = cjson.decode(all[i + 1])\n"
        "  local match = conn == '' or w.connector == conn\n"
        "  local done = false\n"
        "  if match and scan ~= '' and w.run_type == 'full' and w.scan == scan then done = true end\n"
        "  if match and w.run_type == 'delta' and idle >= 0 and now - w.last >= idle then done = true end\n"
        "  if match and maxms > 0 and now - w.start >= maxms then done = true end\n"
        "  if done then\n"
        "    w['end'] = now\n"
        "    w.status = 'success'\n"
        "    if w.errors > 0 then w.status = 'completed-errors' end\n"
        "    if qon then w.status = 'stopped-quarantine' end\n"
        "    redis.call('HDEL', K_RUNS, all[i])\n"
        "    run_closed(w, maxn)\n"
        "    closed = closed + 1\n"
        "  end\n"
        "end\n"
        "return closed\n";

static char sha_reserve[41], sha_decide[41], sha_report[41], sha_run_count[41], sha_run_close[41], sha_scan_done[41];

/* Run a script over all guard keys with the given ARGV. */
static redisReply *run(canopy_state *st, const char *script, char *sha, const gkeys *gk, int argc,
                       const char **argv) {
        const char *av[1 + K__N + 16];
        char nk[8];
        snprintf(nk, sizeof(nk), "%d", K__N);
        int n = 0;
        av[n++] = nk;
        for (int i = 0; i < K__N; i++)
                av[n++] = gk->k[i];
        for (int i = 0; i < argc && i < 16; i++)
                av[n++] = argv[i];
        return rconn_eval(st->rc, script, sha, n, av, NULL);
}

static canopy_err reply_err(const redisReply *r) {
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        if (r->type == REDIS_REPLY_ERROR)
                return CANOPY_ERR_REDIS;
        return CANOPY_OK;
}

canopy_err canopy_guard_policy_put(canopy_state *st, const canopy_guard_policy *p, const char *actor) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char cnt[32], pct[32], win[32], auth[32], ldap[32];
        snprintf(cnt, sizeof(cnt), "%lld", (long long)p->threshold_count);
        snprintf(pct, sizeof(pct), "%.6f", p->threshold_percent);
        snprintf(win, sizeof(win), "%lld", (long long)p->window_ms);
        snprintf(auth, sizeof(auth), "%lld", (long long)p->auth_quarantine_ms);
        snprintf(ldap, sizeof(ldap), "%lld", (long long)p->ldap_quarantine_ms);
        canopy_guard_policy old = CANOPY_GUARD_POLICY_DEFAULT;
        bool had = canopy_guard_policy_get(st, &old) == CANOPY_OK;
        const char *mode = p->window_full_scan ? "full-scan" : "rolling";
        redisReply *r = rconn_cmd(st->rc,
                                  "HSET %s enabled %s count %s percent %s window_ms %s window_mode %s auth_ms %s "
                                  "ldap_ms %s pause_all %s",
                                  gk.k[K_POLICY], p->enabled ? "1" : "0", cnt, pct, win, mode, auth, ldap,
                                  p->pause_all ? "1" : "0");
        err = reply_err(r);
        if (r)
                freeReplyObject(r);
        if (err)
                goto out;
        char detail[256];
        snprintf(detail, sizeof(detail),
                 "enabled=%s threshold_count=%s threshold_percent=%s window_mode=%s window_ms=%s pause_all=%s",
                 p->enabled ? "true" : "false", cnt, pct, mode, win, p->pause_all ? "true" : "false");
        /* Turning the guard off is never silent: a WARN line and an audit entry. */
        if (had && old.enabled && !p->enabled)
                canopy_log(CANOPY_LOG_WARN, "guard", NULL, "deletion guard DISABLED by %s", actor ? actor : "?");
        err = canopy_audit(st, actor ? actor : "config", "admin", "guard.policy", detail, 0);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_guard_policy_get(canopy_state *st, canopy_guard_policy *ret) {
        gkeys gk;
        canopy_guard_policy p = CANOPY_GUARD_POLICY_DEFAULT;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "HGETALL %s", gk.k[K_POLICY]);
        err = reply_err(r);
        if (!err && r->type == REDIS_REPLY_ARRAY) {
                for (size_t i = 0; i + 1 < r->elements; i += 2) {
                        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
                        if (!strcmp(k, "enabled"))
                                p.enabled = strcmp(v, "0") != 0;
                        else if (!strcmp(k, "count"))
                                p.threshold_count = strtoll(v, NULL, 10);
                        else if (!strcmp(k, "percent"))
                                p.threshold_percent = strtod(v, NULL);
                        else if (!strcmp(k, "window_ms"))
                                p.window_ms = strtoll(v, NULL, 10);
                        else if (!strcmp(k, "window_mode"))
                                p.window_full_scan = !strcmp(v, "full-scan");
                        else if (!strcmp(k, "auth_ms"))
                                p.auth_quarantine_ms = strtoll(v, NULL, 10);
                        else if (!strcmp(k, "ldap_ms"))
                                p.ldap_quarantine_ms = strtoll(v, NULL, 10);
                        else if (!strcmp(k, "pause_all"))
                                p.pause_all = strcmp(v, "0") != 0;
                }
        }
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        if (!err)
                *ret = p;
        return err;
}

canopy_err canopy_guard_reserve(canopy_state *st, const char *mv_id, const char *info, int64_t now_ms,
                                canopy_guard_verdict *ret, int64_t *ret_count) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char now[32], inf[GUARD_INFO_MAX];
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        snprintf(inf, sizeof(inf), "%s", info ? info : "{}");
        const char *argv[3] = {mv_id, inf, now};
        redisReply *r = run(st, LUA_RESERVE, sha_reserve, &gk, 3, argv);
        err = reply_err(r);
        if (!err && (r->type != REDIS_REPLY_ARRAY || r->elements < 3))
                err = CANOPY_ERR_REDIS;
        if (!err) {
                long long v = r->element[0]->integer;
                *ret = v == 0 ? CANOPY_GUARD_ALLOW : CANOPY_GUARD_HOLD;
                if (ret_count)
                        *ret_count = r->element[1]->integer;
                if (r->element[2]->integer == 1)
                        canopy_log(CANOPY_LOG_WARN, "guard", NULL,
                                   "deletion threshold reached at delete %lld: pipeline quarantined, deletes held",
                                   (long long)r->element[1]->integer + 1);
        }
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

static int64_t int_of(const redisReply *r) {
        if (!r)
                return 0;
        if (r->type == REDIS_REPLY_INTEGER)
                return r->integer;
        if (r->type == REDIS_REPLY_STRING)
                return strtoll(r->str, NULL, 10);
        return 0;
}

canopy_err canopy_guard_status_get(canopy_state *st, int64_t now_ms, canopy_guard_status *ret) {
        gkeys gk;
        canopy_guard_status s;
        memset(&s, 0, sizeof(s));
        canopy_guard_policy p;
        canopy_err err = keys_make(st, &gk);
        if (!err)
                err = canopy_guard_policy_get(st, &p);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "HGETALL %s", gk.k[K_Q]);
        err = reply_err(r);
        if (!err && r->type == REDIS_REPLY_ARRAY) {
                for (size_t i = 0; i + 1 < r->elements; i += 2) {
                        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
                        if (!strcmp(k, "state"))
                                s.quarantined = !strcmp(v, "on");
                        else if (!strcmp(k, "reason"))
                                snprintf(s.reason, sizeof(s.reason), "%s", v);
                        else if (!strcmp(k, "detail"))
                                snprintf(s.detail, sizeof(s.detail), "%s", v);
                        else if (!strcmp(k, "id"))
                                snprintf(s.id, sizeof(s.id), "%s", v);
                        else if (!strcmp(k, "since"))
                                s.since_ms = strtoll(v, NULL, 10);
                        else if (!strcmp(k, "awaiting"))
                                snprintf(s.awaiting_scan, sizeof(s.awaiting_scan), "%s", v);
                        else if (!strcmp(k, "rejected_at"))
                                s.rejected_ms = strtoll(v, NULL, 10);
                        else if (!strcmp(k, "scan_window"))
                                snprintf(s.scan_window, sizeof(s.scan_window), "%s", v);
                }
        }
        if (r)
                freeReplyObject(r);
        if (err)
                goto out;
        if (!s.quarantined) {
                s.reason[0] = s.detail[0] = s.awaiting_scan[0] = 0;
                s.rejected_ms = 0;
        }
        s.window_full_scan = p.window_full_scan;
        if (!p.window_full_scan && p.window_ms > 0) {
                r = rconn_cmd(st->rc, "ZCOUNT %s %lld +inf", gk.k[K_WIN], (long long)(now_ms - p.window_ms));
        } else {
                r = rconn_cmd(st->rc, "ZCARD %s", gk.k[K_WIN]);
        }
        s.window_count = int_of(r);
        if (r)
                freeReplyObject(r);
        r = rconn_cmd(st->rc, "HLEN %s", gk.k[K_HELD]);
        s.held = int_of(r);
        if (r)
                freeReplyObject(r);
        r = rconn_cmd(st->rc, "SCARD %s", gk.k[K_REJECTED]);
        s.rejected = int_of(r);
        if (r)
                freeReplyObject(r);
        r = rconn_cmd(st->rc, "GET %s", gk.k[K_SYNCED]);
        s.synced = int_of(r);
        if (r)
                freeReplyObject(r);
        if (p.threshold_percent > 0) {
                s.limit = (int64_t)(p.threshold_percent * (double)s.synced / 100.0);
                if (s.limit < 1)
                        s.limit = 1;
        } else {
                s.limit = p.threshold_count;
        }
        s.enabled = p.enabled;
        s.pause_all = p.pause_all;
out:
        keys_free(&gk);
        if (!err)
                *ret = s;
        return err;
}

canopy_err canopy_guard_paused(canopy_state *st, bool *ret) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "HGET %s state", gk.k[K_Q]);
        err = reply_err(r);
        bool on = !err && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "on");
        if (r)
                freeReplyObject(r);
        if (!err && on) {
                r = rconn_cmd(st->rc, "HGET %s pause_all", gk.k[K_POLICY]);
                err = reply_err(r);
                on = !err && !(r->type == REDIS_REPLY_STRING && !strcmp(r->str, "0"));
                if (r)
                        freeReplyObject(r);
        }
        if (!err)
                *ret = on;
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_guard_quarantine(canopy_state *st, const char *reason, const char *detail, int64_t now_ms) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        /* Reuse the report script's quarantine() through a zero-length streak:
         * simpler to run a tiny script here. */
        static char sha_q[41];
        static const char LUA_Q[] = LUA_PRELUDE "return quarantine(ARGV[1], ARGV[2], tonumber(ARGV[3]))\n";
        char now[32];
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        const char *argv[3] = {reason, detail ? detail : "", now};
        redisReply *r = run(st, LUA_Q, sha_q, &gk, 3, argv);
        err = reply_err(r);
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

static canopy_err decide(canopy_state *st, const char *mode, const char *actor, const char *awaited, int64_t now_ms,
                         int64_t *ret_n) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char now[32];
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        const char *argv[3] = {mode, now, awaited && *awaited ? awaited : "*"};
        redisReply *r = run(st, LUA_DECIDE, sha_decide, &gk, 3, argv);
        err = reply_err(r);
        int64_t n = err ? 0 : int_of(r);
        if (r)
                freeReplyObject(r);
        if (err)
                goto out;
        if (ret_n)
                *ret_n = n;
        char detail[256];
        if (!strcmp(mode, "approve"))
                snprintf(detail, sizeof(detail), "%lld held deletes released", (long long)n);
        else
                snprintf(detail, sizeof(detail), "%lld held deletes not sent; quarantined until a full scan of %s",
                         (long long)n, awaited && *awaited ? awaited : "any connector");
        err = canopy_audit(st, actor, "operator", !strcmp(mode, "approve") ? "quarantine.approve" : "quarantine.reject",
                           detail, now_ms);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_guard_approve(canopy_state *st, const char *actor, int64_t now_ms, int64_t *ret_n) {
        return decide(st, "approve", actor, NULL, now_ms, ret_n);
}

canopy_err canopy_guard_reject(canopy_state *st, const char *actor, const char *awaited_connector, int64_t now_ms,
                               int64_t *ret_n) {
        return decide(st, "reject", actor, awaited_connector, now_ms, ret_n);
}

canopy_err canopy_guard_scan_done(canopy_state *st, const char *connector, int64_t scan_start_ms, int64_t now_ms,
                                  bool *ret_lifted) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char started[32], now[32];
        snprintf(started, sizeof(started), "%lld", (long long)scan_start_ms);
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        const char *argv[3] = {connector, started, now};
        redisReply *r = run(st, LUA_SCAN_DONE, sha_scan_done, &gk, 3, argv);
        err = reply_err(r);
        bool lifted = !err && int_of(r) == 1;
        if (r)
                freeReplyObject(r);
        if (lifted) {
                char detail[192];
                snprintf(detail, sizeof(detail), "full scan of %s ended: rejected deletes are decided again",
                         connector);
                err = canopy_audit(st, "guard", "system", "quarantine.lift", detail, now_ms);
        }
        if (!err && ret_lifted)
                *ret_lifted = lifted;
out:
        keys_free(&gk);
        return err;
}

static canopy_err strv_from_reply(const redisReply *r, char ***ret, size_t *ret_n, int pairs) {
        size_t n = pairs ? r->elements / 2 : r->elements;
        char **v = calloc(n + 1, sizeof(*v));
        if (!v)
                return CANOPY_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
                if (pairs) {
                        const redisReply *k = r->element[2 * i], *val = r->element[2 * i + 1];
                        size_t l = k->len + val->len + 2;
                        v[i] = malloc(l);
                        if (v[i])
                                snprintf(v[i], l, "%s\t%s", k->str, val->str);
                } else {
                        v[i] = strndup(r->element[i]->str, r->element[i]->len);
                }
                if (!v[i]) {
                        canopy_state_strv_free(v);
                        return CANOPY_ERR_NOMEM;
                }
        }
        *ret = v;
        *ret_n = n;
        return CANOPY_OK;
}

canopy_err canopy_guard_held(canopy_state *st, size_t max, char ***ret, size_t *ret_n) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        /* HSCAN keeps the reply bounded for very large held sets. */
        redisReply *r = rconn_cmd(st->rc, "HSCAN %s 0 COUNT %lld", gk.k[K_HELD], (long long)(max ? max : 100));
        err = reply_err(r);
        if (!err && (r->type != REDIS_REPLY_ARRAY || r->elements != 2))
                err = CANOPY_ERR_REDIS;
        if (!err) {
                redisReply *items = r->element[1];
                size_t keep = items->elements;
                if (max && keep > 2 * max)
                        keep = 2 * max;
                redisReply tmp = *items;
                tmp.elements = keep;
                err = strv_from_reply(&tmp, ret, ret_n, 1);
        }
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_guard_synced_add(canopy_state *st, int64_t delta) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "INCRBY %s %lld", gk.k[K_SYNCED], (long long)delta);
        err = reply_err(r);
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_guard_report(canopy_state *st, const char *source, bool ok, int64_t now_ms,
                               bool *ret_quarantined) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char now[32];
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        const char *argv[3] = {source, ok ? "1" : "0", now};
        redisReply *r = run(st, LUA_REPORT, sha_report, &gk, 3, argv);
        err = reply_err(r);
        bool q = !err && int_of(r) == 1;
        if (r)
                freeReplyObject(r);
        if (q)
                canopy_log(CANOPY_LOG_WARN, "guard", NULL, "%s failing repeatedly: pipeline quarantined", source);
        if (!err && ret_quarantined)
                *ret_quarantined = q;
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_guard_notify_once(canopy_state *st, const char *quarantine_id, const char *channel,
                                    bool *ret_first) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "SADD %s %s|%s", gk.k[K_NOTIFIED], quarantine_id, channel);
        err = reply_err(r);
        if (!err)
                *ret_first = int_of(r) == 1;
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

static const char *const run_fields[] = {"total", "changed", "deleted", "filtered", "errors"};

canopy_err canopy_run_count(canopy_state *st, const char *connector, const char *object_type,
                            const char *scan_id, canopy_run_field field, int64_t n, int64_t now_ms) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char f[300], nb[32], now[32];
        snprintf(f, sizeof(f), "%s|%s", connector, object_type);
        snprintf(nb, sizeof(nb), "%lld", (long long)n);
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        char maxn[32];
        snprintf(maxn, sizeof(maxn), "%d", GUARD_HISTORY_MAX);
        const char *argv[8] = {f, connector, object_type, scan_id ? scan_id : "", run_fields[field], nb, now, maxn};
        redisReply *r = run(st, LUA_RUN_COUNT, sha_run_count, &gk, 8, argv);
        err = reply_err(r);
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_run_close(canopy_state *st, const char *connector, const char *end_scan_id, int64_t idle_ms,
                            int64_t max_ms, int64_t now_ms, size_t max_entries, size_t *ret_closed) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        char idle[32], maxb[32], now[32], maxn[32];
        snprintf(idle, sizeof(idle), "%lld", (long long)idle_ms);
        snprintf(maxb, sizeof(maxb), "%lld", (long long)max_ms);
        snprintf(now, sizeof(now), "%lld", (long long)now_ms);
        snprintf(maxn, sizeof(maxn), "%zu", max_entries ? max_entries : GUARD_HISTORY_MAX);
        const char *argv[6] = {connector ? connector : "", end_scan_id ? end_scan_id : "", idle, maxb, now, maxn};
        redisReply *r = run(st, LUA_RUN_CLOSE, sha_run_close, &gk, 6, argv);
        err = reply_err(r);
        if (!err && ret_closed)
                *ret_closed = (size_t)int_of(r);
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

static int64_t jint(json_t *o, const char *k) {
        json_t *v = json_object_get(o, k);
        return json_is_number(v) ? (int64_t)json_number_value(v) : 0;
}

static void jstr(json_t *o, const char *k, char *out, size_t cap) {
        const char *v = json_string_value(json_object_get(o, k));
        snprintf(out, cap, "%s", v ? v : "");
}

/* One closed window from its JSON text; false when it is not one. */
static bool run_entry_parse(const char *text, size_t len, canopy_run_entry *e) {
        json_t *o = json_loadb(text, len, 0, NULL);
        if (!json_is_object(o)) {
                json_decref(o);
                return false;
        }
        memset(e, 0, sizeof(*e));
        jstr(o, "connector", e->connector, sizeof(e->connector));
        jstr(o, "object_type", e->object_type, sizeof(e->object_type));
        jstr(o, "run_type", e->run_type, sizeof(e->run_type));
        jstr(o, "status", e->status, sizeof(e->status));
        jstr(o, "scan", e->scan_id, sizeof(e->scan_id));
        e->start_ms = jint(o, "start");
        e->end_ms = jint(o, "end");
        e->total = jint(o, "total");
        e->changed = jint(o, "changed");
        e->deleted = jint(o, "deleted");
        e->filtered = jint(o, "filtered");
        e->errors = jint(o, "errors");
        json_decref(o);
        return true;
}

canopy_err canopy_run_outbox(canopy_state *st, size_t max, canopy_run_entry **ret, size_t *ret_n) {
        gkeys gk;
        canopy_run_entry *v = NULL;
        size_t n = 0;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "LRANGE %s 0 %lld", gk.k[K_OUTBOX], (long long)(max ? max : 100) - 1);
        err = reply_err(r);
        if (!err && r->type != REDIS_REPLY_ARRAY)
                err = CANOPY_ERR_REDIS;
        if (!err && r->elements) {
                v = calloc(r->elements, sizeof(*v));
                if (!v)
                        err = CANOPY_ERR_NOMEM;
                /* An entry that does not parse is kept as an empty one, so
                 * that the count to acknowledge stays the list's. */
                for (size_t i = 0; !err && i < r->elements; i++)
                        if (!run_entry_parse(r->element[i]->str, r->element[i]->len, &v[n++]))
                                snprintf(v[n - 1].status, sizeof(v[n - 1].status), "%s", "unreadable");
        }
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        if (err) {
                free(v);
                return err;
        }
        *ret = v;
        *ret_n = n;
        return CANOPY_OK;
}

canopy_err canopy_run_outbox_ack(canopy_state *st, size_t n) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err || !n)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "LTRIM %s %lld -1", gk.k[K_OUTBOX], (long long)n);
        err = reply_err(r);
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_run_history(canopy_state *st, const char *connector, const char *object_type, size_t offset,
                              size_t limit, canopy_run_entry **ret, size_t *ret_n) {
        gkeys gk;
        canopy_run_entry *v = NULL;
        size_t n = 0, cap = 0, skipped = 0;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "LRANGE %s 0 -1", gk.k[K_HISTORY]);
        err = reply_err(r);
        if (!err && r->type == REDIS_REPLY_ARRAY) {
                for (size_t i = 0; i < r->elements && (limit == 0 || n < limit); i++) {
                        canopy_run_entry e;
                        if (!run_entry_parse(r->element[i]->str, r->element[i]->len, &e))
                                continue;
                        if (connector && *connector && strcmp(connector, e.connector))
                                continue;
                        if (object_type && *object_type && strcmp(object_type, e.object_type))
                                continue;
                        if (skipped < offset) {
                                skipped++;
                                continue;
                        }
                        if (n == cap) {
                                cap = cap ? 2 * cap : 16;
                                canopy_run_entry *nv = realloc(v, cap * sizeof(*v));
                                if (!nv) {
                                        err = CANOPY_ERR_NOMEM;
                                        break;
                                }
                                v = nv;
                        }
                        v[n++] = e;
                }
        }
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        if (err) {
                free(v);
                return err;
        }
        *ret = v;
        *ret_n = n;
        return CANOPY_OK;
}

canopy_err canopy_audit(canopy_state *st, const char *who, const char *role, const char *what, const char *detail,
                        int64_t now_ms) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        if (now_ms == 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        }
        json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:s}", "ts", (json_int_t)now_ms, "who", who ? who : "?", "role",
                              role ? role : "?", "what", what ? what : "?", "detail", detail ? detail : "");
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        redisReply *r = rconn_cmd(st->rc, "LPUSH %s %s", gk.k[K_AUDIT], text);
        err = reply_err(r);
        if (r)
                freeReplyObject(r);
        if (!err) {
                r = rconn_cmd(st->rc, "LTRIM %s 0 %d", gk.k[K_AUDIT], GUARD_AUDIT_MAX - 1);
                if (r)
                        freeReplyObject(r);
                canopy_log(CANOPY_LOG_INFO, "audit", NULL, "%s (%s): %s %s", who ? who : "?", role ? role : "?",
                           what ? what : "?", detail ? detail : "");
        }
        free(text);
out:
        keys_free(&gk);
        return err;
}

canopy_err canopy_audit_list(canopy_state *st, size_t offset, size_t limit, char ***ret, size_t *ret_n) {
        gkeys gk;
        canopy_err err = keys_make(st, &gk);
        if (err)
                goto out;
        redisReply *r = rconn_cmd(st->rc, "LRANGE %s %lld %lld", gk.k[K_AUDIT], (long long)offset,
                                  limit ? (long long)(offset + limit - 1) : -1LL);
        err = reply_err(r);
        if (!err && r->type != REDIS_REPLY_ARRAY)
                err = CANOPY_ERR_REDIS;
        if (!err)
                err = strv_from_reply(r, ret, ret_n, 0);
        if (r)
                freeReplyObject(r);
out:
        keys_free(&gk);
        return err;
}
