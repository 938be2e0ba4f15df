/* lease.c: leader lease in Redis (SET NX PX, Lua compare-and-extend), with a
 * renewal thread and a monotonic validity window. See canopy/lease.h. */
#include "canopy/lease.h"

#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "redis_conn.h"

static const char RENEW_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
static const char RELEASE_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                  "return redis.call('DEL', KEYS[1]) else return 0 end";

struct canopy_lease {
        char *host;
        int port;
        char *password;
        int timeout_ms;
        char *key;
        char *holder;
        int64_t ttl_ms;
        rconn *rc;   /* used by the caller's thread until start(), then by the renewal thread */
        pthread_mutex_t mu;
        pthread_cond_t cv;
        pthread_t thr;
        bool running;
        bool stopping;
        _Atomic int64_t valid_until_ms; /* monotonic; 0 = not held */
        char renew_sha[41];
        char release_sha[41];
};

static int64_t mono_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

canopy_err canopy_lease_new(const canopy_lease_opts *o, canopy_lease **ret) {
        if (!o || !o->key || !o->holder || o->ttl_ms < 1000 || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_lease *l = calloc(1, sizeof(*l));
        if (!l)
                return CANOPY_ERR_NOMEM;
        l->host = strdup(o->host ? o->host : "127.0.0.1");
        l->port = o->port;
        l->password = o->password ? strdup(o->password) : NULL;
        l->key = strdup(o->key);
        l->holder = strdup(o->holder);
        l->ttl_ms = o->ttl_ms;
        l->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : (int)(o->ttl_ms / 4);
        pthread_mutex_init(&l->mu, NULL);
        pthread_cond_init(&l->cv, NULL);
        if (!l->host || !l->key || !l->holder || (o->password && !l->password)) {
                canopy_lease_free(l);
                return CANOPY_ERR_NOMEM;
        }
        *ret = l;
        return CANOPY_OK;
}

static canopy_err ensure_conn(canopy_lease *l) {
        if (l->rc)
                return CANOPY_OK;
        return rconn_new(l->host, l->port, l->password, l->timeout_ms, &l->rc);
}

canopy_err canopy_lease_try_acquire(canopy_lease *l, bool *ret_acquired) {
        *ret_acquired = false;
        canopy_err err = ensure_conn(l);
        if (err)
                return err;
        int64_t t0 = mono_ms();
        char ttl[32];
        snprintf(ttl, sizeof(ttl), "%lld", (long long)l->ttl_ms);
        redisReply *r = rconn_cmd(l->rc, "SET %s %s NX PX %s", l->key, l->holder, ttl);
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        if (r->type == REDIS_REPLY_ERROR) {
                freeReplyObject(r);
                return CANOPY_ERR_REDIS;
        }
        bool ok = r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        if (!ok) {
                /* Already ours (e.g. a restart with the same holder id)? Extend it. */
                bool held = false;
                err = canopy_lease_renew(l, &held);
                *ret_acquired = held;
                return err;
        }
        atomic_store(&l->valid_until_ms, t0 + l->ttl_ms - l->ttl_ms / 5);
        *ret_acquired = true;
        return CANOPY_OK;
}

canopy_err canopy_lease_renew(canopy_lease *l, bool *ret_held) {
        *ret_held = false;
        canopy_err err = ensure_conn(l);
        if (err)
                return err;
        int64_t t0 = mono_ms();
        char ttl[32];
        snprintf(ttl, sizeof(ttl), "%lld", (long long)l->ttl_ms);
        const char *argv[4] = {"1", l->key, l->holder, ttl};
        redisReply *r = rconn_eval(l->rc, RENEW_LUA, l->renew_sha, 4, argv, NULL);
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        if (r->type != REDIS_REPLY_INTEGER) {
                freeReplyObject(r);
                return CANOPY_ERR_REDIS;
        }
        bool held = r->integer == 1;
        freeReplyObject(r);
        if (held)
                atomic_store(&l->valid_until_ms, t0 + l->ttl_ms - l->ttl_ms / 5);
        else
                atomic_store(&l->valid_until_ms, 0);
        *ret_held = held;
        return CANOPY_OK;
}

bool canopy_lease_held(canopy_lease *l) {
        if (!l)
                return false;
        int64_t v = atomic_load(&l->valid_until_ms);
        return v > 0 && mono_ms() < v;
}

canopy_err canopy_lease_wait(canopy_lease *l, volatile int *stop) {
        int64_t step = l->ttl_ms / 3;
        while (!*stop) {
                bool got = false;
                canopy_err err = canopy_lease_try_acquire(l, &got);
                if (!err && got)
                        return CANOPY_OK;
                /* sleep in short slices so that a stop request is seen quickly */
                for (int64_t slept = 0; slept < step && !*stop; slept += 100) {
                        struct timespec ts = {0, 100 * 1000000L};
                        nanosleep(&ts, NULL);
                }
        }
        return CANOPY_ERR_SHUTDOWN;
}

static void *renew_thread(void *arg) {
        canopy_lease *l = arg;
        int64_t step = l->ttl_ms / 3;
        pthread_mutex_lock(&l->mu);
        while (!l->stopping) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                int64_t wait = step;
                /* after a failure retry sooner, while the window is still open */
                if (!canopy_lease_held(l))
                        wait = step / 3;
                ts.tv_sec += wait / 1000;
                ts.tv_nsec += (wait % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&l->cv, &l->mu, &ts);
                if (l->stopping)
                        break;
                pthread_mutex_unlock(&l->mu);
                bool held = false;
                canopy_err err = canopy_lease_renew(l, &held);
                (void)err; /* a failed renewal leaves the window to close by itself */
                pthread_mutex_lock(&l->mu);
                if (!err && !held) {
                        /* someone else holds it: we are done leading */
                        atomic_store(&l->valid_until_ms, 0);
                }
        }
        pthread_mutex_unlock(&l->mu);
        return NULL;
}

canopy_err canopy_lease_start(canopy_lease *l) {
        if (l->running)
                return CANOPY_OK;
        l->stopping = false;
        if (pthread_create(&l->thr, NULL, renew_thread, l))
                return CANOPY_ERR_NOMEM;
        l->running = true;
        return CANOPY_OK;
}

static void stop_thread(canopy_lease *l) {
        if (!l->running)
                return;
        pthread_mutex_lock(&l->mu);
        l->stopping = true;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thr, NULL);
        l->running = false;
}

canopy_err canopy_lease_release(canopy_lease *l) {
        stop_thread(l);
        atomic_store(&l->valid_until_ms, 0);
        canopy_err err = ensure_conn(l);
        if (err)
                return err;
        const char *argv[3] = {"1", l->key, l->holder};
        redisReply *r = rconn_eval(l->rc, RELEASE_LUA, l->release_sha, 3, argv, NULL);
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        freeReplyObject(r);
        return CANOPY_OK;
}

canopy_err canopy_lease_owner(canopy_lease *l, char **ret) {
        *ret = NULL;
        if (l->running)
                return CANOPY_ERR_INVALID_ARG; /* the connection belongs to the renewal thread */
        canopy_err err = ensure_conn(l);
        if (err)
                return err;
        redisReply *r = rconn_cmd(l->rc, "GET %s", l->key);
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        if (r->type == REDIS_REPLY_STRING)
                *ret = strndup(r->str, r->len);
        freeReplyObject(r);
        return CANOPY_OK;
}

void canopy_lease_free(canopy_lease *l) {
        if (!l)
                return;
        if (canopy_lease_held(l) || l->running)
                (void)canopy_lease_release(l);
        stop_thread(l);
        rconn_free(l->rc);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        free(l->host);
        free(l->password);
        free(l->key);
        free(l->holder);
        free(l);
}
