/* redis_conn.c: hiredis connection with timeout, AUTH, reconnect, scripts. */
#include "redis_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static canopy_err do_connect(rconn *rc) {
        struct timeval tv = {rc->timeout_ms / 1000, (rc->timeout_ms % 1000) * 1000};
        if (rc->c) {
                redisFree(rc->c);
                rc->c = NULL;
        }
        rc->c = redisConnectWithTimeout(rc->host, rc->port, tv);
        if (!rc->c) {
                snprintf(rc->errstr, sizeof(rc->errstr), "redis %s:%d: cannot allocate context", rc->host,
                         rc->port);
                return CANOPY_ERR_REDIS_UNREACHABLE;
        }
        if (rc->c->err) {
                snprintf(rc->errstr, sizeof(rc->errstr), "redis %s:%d: %s", rc->host, rc->port, rc->c->errstr);
                redisFree(rc->c);
                rc->c = NULL;
                return CANOPY_ERR_REDIS_UNREACHABLE;
        }
        redisSetTimeout(rc->c, tv);
        if (rc->password && *rc->password) {
                redisReply *r = redisCommand(rc->c, "AUTH %s", rc->password);
                int bad = !r || r->type == REDIS_REPLY_ERROR;
                if (r)
                        freeReplyObject(r);
                if (bad) {
                        snprintf(rc->errstr, sizeof(rc->errstr), "redis %s:%d: AUTH failed", rc->host,
                                 rc->port);
                        redisFree(rc->c);
                        rc->c = NULL;
                        return CANOPY_ERR_REDIS;
                }
        }
        return CANOPY_OK;
}

canopy_err rconn_new(const char *host, int port, const char *password, int timeout_ms, rconn **ret) {
        rconn *rc = calloc(1, sizeof(*rc));
        if (!rc)
                return CANOPY_ERR_NOMEM;
        rc->host = strdup(host ? host : "127.0.0.1");
        rc->port = port;
        rc->password = password ? strdup(password) : NULL;
        rc->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
        canopy_err err = do_connect(rc);
        if (err) {
                rconn_free(rc);
                return err;
        }
        *ret = rc;
        return CANOPY_OK;
}

void rconn_free(rconn *rc) {
        if (!rc)
                return;
        if (rc->c)
                redisFree(rc->c);
        free(rc->host);
        free(rc->password);
        free(rc);
}

static int transport_failed(rconn *rc, redisReply *r) {
        return !r || !rc->c || rc->c->err;
}

redisReply *rconn_cmdargv(rconn *rc, int argc, const char **argv, const size_t *argvlen) {
        for (int attempt = 0; attempt < 2; attempt++) {
                if (!rc->c && do_connect(rc))
                        return NULL;
                redisReply *r = redisCommandArgv(rc->c, argc, argv, argvlen);
                if (!transport_failed(rc, r))
                        return r;
                if (r)
                        freeReplyObject(r);
                snprintf(rc->errstr, sizeof(rc->errstr), "redis %s:%d: %s", rc->host, rc->port,
                         rc->c ? rc->c->errstr : "not connected");
                redisFree(rc->c);
                rc->c = NULL;
        }
        return NULL;
}

redisReply *rconn_cmd(rconn *rc, const char *fmt, ...) {
        for (int attempt = 0; attempt < 2; attempt++) {
                if (!rc->c && do_connect(rc))
                        return NULL;
                va_list ap;
                va_start(ap, fmt);
                redisReply *r = redisvCommand(rc->c, fmt, ap);
                va_end(ap);
                if (!transport_failed(rc, r))
                        return r;
                if (r)
                        freeReplyObject(r);
                snprintf(rc->errstr, sizeof(rc->errstr), "redis %s:%d: %s", rc->host, rc->port,
                         rc->c ? rc->c->errstr : "not connected");
                redisFree(rc->c);
                rc->c = NULL;
        }
        return NULL;
}

#include <openssl/sha.h>

static void sha1_hex(const char *s, char out[41]) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)s, strlen(s), md);
        for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
                sprintf(out + 2 * i, "%02x", md[i]);
        out[40] = 0;
}

redisReply *rconn_eval(rconn *rc, const char *script, char *sha_cache, int argc, const char **argv,
                       const size_t *argvlen) {
        /* argv here are: numkeys, keys..., args... */
        if (!sha_cache[0])
                sha1_hex(script, sha_cache);
        int n = argc + 2;
        const char **av = malloc(sizeof(*av) * (size_t)n);
        size_t *al = malloc(sizeof(*al) * (size_t)n);
        if (!av || !al) {
                free(av);
                free(al);
                return NULL;
        }
        av[0] = "EVALSHA";
        al[0] = 7;
        av[1] = sha_cache;
        al[1] = 40;
        for (int i = 0; i < argc; i++) {
                av[i + 2] = argv[i];
                al[i + 2] = argvlen ? argvlen[i] : strlen(argv[i]);
        }
        redisReply *r = rconn_cmdargv(rc, n, av, al);
        if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
                freeReplyObject(r);
                av[0] = "EVAL";
                al[0] = 4;
                av[1] = script;
                al[1] = strlen(script);
                r = rconn_cmdargv(rc, n, av, al);
        }
        free(av);
        free(al);
        return r;
}

canopy_err rconn_append(rconn *rc, int argc, const char **argv, const size_t *argvlen) {
        if (!rc->c && do_connect(rc))
                return CANOPY_ERR_REDIS_UNREACHABLE;
        if (redisAppendCommandArgv(rc->c, argc, argv, argvlen) != REDIS_OK)
                return CANOPY_ERR_REDIS;
        return CANOPY_OK;
}

redisReply *rconn_read(rconn *rc) {
        void *r = NULL;
        if (!rc->c || redisGetReply(rc->c, &r) != REDIS_OK) {
                snprintf(rc->errstr, sizeof(rc->errstr), "redis %s:%d: %s", rc->host, rc->port,
                         rc->c ? rc->c->errstr : "not connected");
                if (rc->c) {
                        redisFree(rc->c);
                        rc->c = NULL;
                }
                return NULL;
        }
        return r;
}
