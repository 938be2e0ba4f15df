/* state.c: connector space, DN index, metaverse, join index, export state,
 * pending references, errors and staging in Redis (see docs/STATE.md). */
#include "state_int.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/arena.h"
#include "canopy/rules.h"

/* ---- scripts ------------------------------------------------------------ */

/* KEYS[1] join key; ARGV[1] candidate mv id. Returns the holder. */
static const char LUA_CLAIM[] =
        "local v = redis.call('GET', KEYS[1])\n"
        "if v then return v end\n"
        "redis.call('SET', KEYS[1], ARGV[1])\n"
        "return ARGV[1]\n";

/* Compare and delete: KEYS[1], ARGV[1] expected value. */
static const char LUA_RELEASE[] =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
        "return 0\n";

/* Bury a DN: KEYS[1] DN key, ARGV[1] the anchor expected there. The key
 * keeps a tombstone "-<anchor>" so that a member reference to the DN reads
 * as dangling (the object moved away or was deleted), not as not yet seen,
 * and a removal naming the old DN still finds the object
 * (canopy_state_dn_former). Base64 never starts with '-'. */
static const char LUA_BURY[] =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], '-' .. ARGV[1]) end\n"
        "return 0\n";

/* A piece of an END_OF_SCAN: KEYS[1] pieces set, KEYS[2] done flag;
 * ARGV[1] piece, ARGV[2] pieces expected, ARGV[3] ttl ms. 1 when every piece
 * is in and the sweep is not done yet. */
static const char LUA_SCAN_PIECE[] =
        "redis.call('SADD', KEYS[1], ARGV[1])\n"
        "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
        "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
        "if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end\n"
        "return 0\n";

/* Replace a hash: KEYS[1]; ARGV field, value pairs. */
static const char LUA_CSPUT[] =
        "redis.call('DEL', KEYS[1])\n"
        "local i = 1\n"
        "while i <= #ARGV do\n"
        "  local j = math.min(i + 999, #ARGV)\n"
        "  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))\n"
        "  i = j + 1\n"
        "end\n"
        "return 1\n";

/* Set update: KEYS[1]; ARGV[1] '1' replace; ARGV[2] number of adds; then the
 * adds, then the removes. Returns the new cardinality. */
static const char LUA_MEMBERS[] =
        "local n = tonumber(ARGV[2])\n"
        "if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end\n"
        "local last = 2 + n\n"
        "local i = 3\n"
        "while i <= last do\n"
        "  local j = math.min(i + 999, last)\n"
        "  redis.call('SADD', KEYS[1], unpack(ARGV, i, j))\n"
        "  i = j + 1\n"
        "end\n"
        "i = last + 1\n"
        "while i <= #ARGV do\n"
        "  local j = math.min(i + 999, #ARGV)\n"
        "  redis.call('SREM', KEYS[1], unpack(ARGV, i, j))\n"
        "  i = j + 1\n"
        "end\n"
        "return redis.call('SCARD', KEYS[1])\n";

/* Take a set: KEYS[1]. */
static const char LUA_TAKE[] =
        "local m = redis.call('SMEMBERS', KEYS[1])\n"
        "redis.call('DEL', KEYS[1])\n"
        "return m\n";

/* A member named by a DN not seen yet is named by its anchor once the DN is
 * known: KEYS[1] = group's member set, KEYS[2] = group's record; ARGV[1] =
 * "d:<dn>", ARGV[2] = "a:<anchor>". The group's mv id ("" when none) when
 * the reference was there, else nil. */
static const char LUA_REBIND[] =
        "if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return false end\n"
        "redis.call('SADD', KEYS[1], ARGV[2])\n"
        "return redis.call('HGET', KEYS[2], 'mv') or ''\n";

/* A group holds removals back for a DN of connector KEYS[2]'s first full
 * import not seen yet: KEYS[1] = hold set, KEYS[2] = scanned flag, ARGV[1]
 * = group. 1 when the import is complete (nothing held, nothing noted). */
static const char LUA_HOLD[] =
        "if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SREM', KEYS[1], ARGV[1]) return 1 end\n"
        "redis.call('SADD', KEYS[1], ARGV[1])\n"
        "return 0\n";

/* The first full import of a connector is complete: KEYS[1] = scanned
 * flag, KEYS[2] = hold set. Returns the groups that held removals back
 * (they stay in the set until canopy_state_hold_release). */
static const char LUA_SCANNED[] =
        "redis.call('SET', KEYS[1], '1')\n"
        "return redis.call('SMEMBERS', KEYS[2])\n";

/* Begin an incremental member computation of a group: KEYS[1] = gw
 * (waits), KEYS[2] = gr (woken keys), KEYS[3] = gd (member changes);
 * ARGV[1] = fingerprint of the group's records. nil unless the marker
 * allows it and the records are those of the last full computation; else
 * mark it busy and take the woken keys and the member changes. */
static const char LUA_GBEGIN[] =
        "if redis.call('HGET', KEYS[1], '\\31') ~= '1' then return false end\n"
        "if redis.call('HGET', KEYS[1], '\\30') ~= ARGV[1] then return false end\n"
        "redis.call('HSET', KEYS[1], '\\31', 'busy')\n"
        "local m = redis.call('SMEMBERS', KEYS[2])\n"
        "local d = redis.call('HGETALL', KEYS[3])\n"
        "redis.call('DEL', KEYS[2], KEYS[3])\n"
        "return {m, d}\n";

/* A full member computation of a group begins: KEYS[1] = gw, KEYS[2] = gr,
 * KEYS[3] = gd. Everything is dropped and the marker says "busy": the
 * computation's own writes (LUA_GSET, LUA_GEND) apply only while it still
 * says so, so that a clear made meanwhile by another stage (a member
 * deleted, removals no longer held back, a complete member set) is not
 * undone by a marker "1" over waits that are gone. */
static const char LUA_GRESET[] =
        "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])\n"
        "redis.call('HSET', KEYS[1], '\\31', 'busy')\n"
        "return 1\n";

/* HSET of ARGV[from..] as field/value pairs, in chunks (Lua's unpack()
 * has a limit). Shared by LUA_GSET and LUA_GEND. */
#define LUA_HSET_PAIRS                                                                      \
        "local function hset_pairs(from)\n"                                                 \
        "  local i = from\n"                                                                \
        "  while i <= #ARGV do\n"                                                           \
        "    local j = math.min(i + 1999, #ARGV)\n"                                         \
        "    redis.call('HSET', KEYS[1], unpack(ARGV, i, j))\n"                             \
        "    i = j + 1\n"                                                                   \
        "  end\n"                                                                           \
        "end\n"

/* The full computation ends: KEYS[1] = gw; ARGV[1] = marker ("1" or
 * "held"), ARGV[2] = fingerprint, ARGV[3..] = wait key, value pairs.
 * 0 (nothing written) unless the marker still says "busy". */
static const char LUA_GSET[] = LUA_HSET_PAIRS
        "if redis.call('HGET', KEYS[1], '\\31') ~= 'busy' then return 0 end\n"
        "redis.call('DEL', KEYS[1])\n"
        "hset_pairs(3)\n"
        "redis.call('HSET', KEYS[1], '\\30', ARGV[2], '\\31', ARGV[1])\n"
        "return 1\n";

/* An incremental computation ends: KEYS[1] = gw; ARGV[1] = n, ARGV[2 ..
 * n+1] the keys no longer waited for, then wait key, value pairs. 0
 * unless the marker still says "busy". */
static const char LUA_GEND[] = LUA_HSET_PAIRS
        "if redis.call('HGET', KEYS[1], '\\31') ~= 'busy' then return 0 end\n"
        "local n = tonumber(ARGV[1])\n"
        "local i = 2\n"
        "while i <= n + 1 do\n"
        "  local j = math.min(i + 1999, n + 1)\n"
        "  redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))\n"
        "  i = j + 1\n"
        "end\n"
        "hset_pairs(n + 2)\n"
        "redis.call('HSET', KEYS[1], '\\31', '1')\n"
        "return 1\n";

/* ---- basics ------------------------------------------------------------- */

char *canopy_state_key(const canopy_state *st, const char *fmt, ...) {
        va_list ap;
        char *tail = NULL, *k = NULL;
        va_start(ap, fmt);
        int n = vasprintf(&tail, fmt, ap);
        va_end(ap);
        if (n < 0)
                return NULL;
        if (asprintf(&k, "%s%s", st->prefix, tail) < 0)
                k = NULL;
        free(tail);
        return k;
}

canopy_err canopy_state_new(const char *host, int port, const char *password, const char *prefix,
                            int timeout_ms, canopy_state **ret) {
        canopy_state *st = calloc(1, sizeof(*st));
        if (!st)
                return CANOPY_ERR_NOMEM;
        st->prefix = strdup(prefix ? prefix : "canopy:");
        if (!st->prefix) {
                free(st);
                return CANOPY_ERR_NOMEM;
        }
        canopy_err err = rconn_new(host, port, password, timeout_ms, &st->rc);
        if (err) {
                free(st->prefix);
                free(st);
                return err;
        }
        *ret = st;
        return CANOPY_OK;
}

void canopy_state_free(canopy_state *st) {
        if (!st)
                return;
        rconn_free(st->rc);
        free(st->prefix);
        free(st);
}

const char *canopy_state_errstr(const canopy_state *st) {
        return st && st->rc ? st->rc->errstr : "no state";
}

/* Turn a reply into an error code (NULL or error reply). */
static canopy_err reply_err(canopy_state *st, redisReply *r) {
        if (!r)
                return CANOPY_ERR_REDIS_UNREACHABLE;
        if (r->type == REDIS_REPLY_ERROR) {
                snprintf(st->rc->errstr, sizeof(st->rc->errstr), "%s", r->str);
                return CANOPY_ERR_REDIS;
        }
        return CANOPY_OK;
}

static const char *config_value(canopy_state *st, const char *name, char *buf, size_t len) {
        redisReply *r = rconn_cmd(st->rc, "CONFIG GET %s", name);
        const char *v = NULL;
        if (!reply_err(st, r) && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[1]->type == REDIS_REPLY_STRING) {
                snprintf(buf, len, "%s", r->element[1]->str);
                v = buf;
        } else if (r && r->type != REDIS_REPLY_ERROR)
                snprintf(st->rc->errstr, sizeof(st->rc->errstr), "CONFIG GET %s: unexpected answer", name);
        if (r)
                freeReplyObject(r);
        return v;
}

canopy_err canopy_state_persistence(canopy_state *st, bool *ret_durable, char *what, size_t whatlen) {
        char aof[16], fsync[16];
        *ret_durable = false;
        if (!config_value(st, "appendonly", aof, sizeof(aof)) || !config_value(st, "appendfsync", fsync, sizeof(fsync)))
                return st->rc->errstr[0] ? CANOPY_ERR_REDIS : CANOPY_ERR_REDIS_UNREACHABLE;
        snprintf(what, whatlen, "appendonly %s, appendfsync %s", aof, fsync);
        *ret_durable = !strcmp(aof, "yes") && !strcmp(fsync, "always");
        return CANOPY_OK;
}

/* Run a command given as argv (lengths from strlen unless given), drop the
 * reply. */
static canopy_err cmd_argv(canopy_state *st, int argc, const char **argv, const size_t *lens) {
        redisReply *r = rconn_cmdargv(st->rc, argc, argv, lens);
        canopy_err err = reply_err(st, r);
        if (r)
                freeReplyObject(r);
        return err;
}

static canopy_err cmd3(canopy_state *st, const char *a, const char *b, const char *c) {
        const char *av[3] = {a, b, c};
        return cmd_argv(st, c ? 3 : 2, av, NULL);
}

static canopy_err cmd4(canopy_state *st, const char *a, const char *b, const char *c, const char *d) {
        const char *av[4] = {a, b, c, d};
        return cmd_argv(st, 4, av, NULL);
}

/* Run a script with one key. args borrowed, lens may be NULL. */
static redisReply *eval1(canopy_state *st, const char *script, char *sha, const char *key, int nargs,
                         const char **args, const size_t *lens) {
        int argc = 2 + nargs;
        const char **av = malloc(sizeof(*av) * (size_t)argc);
        size_t *al = malloc(sizeof(*al) * (size_t)argc);
        if (!av || !al) {
                free(av);
                free(al);
                return NULL;
        }
        av[0] = "1";
        al[0] = 1;
        av[1] = key;
        al[1] = strlen(key);
        for (int i = 0; i < nargs; i++) {
                av[2 + i] = args[i];
                al[2 + i] = lens ? lens[i] : strlen(args[i]);
        }
        redisReply *r = rconn_eval(st->rc, script, sha, argc, av, al);
        free(av);
        free(al);
        return r;
}

/* Run a script whose reply is an integer; *ret = reply == 1. */
static canopy_err eval_flag(canopy_state *st, const char *script, char *sha, int argc, const char **av, bool *ret) {
        redisReply *r = rconn_eval(st->rc, script, sha, argc, av, NULL);
        canopy_err err = reply_err(st, r);
        if (!err && r->type != REDIS_REPLY_INTEGER)
                err = CANOPY_ERR_REDIS;
        if (!err)
                *ret = r->integer == 1;
        if (r)
                freeReplyObject(r);
        return err;
}

void canopy_state_strv_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}

/* Array reply of strings -> NULL-terminated owned array. */
static canopy_err strv_from_reply(redisReply *r, char ***ret, size_t *ret_n) {
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        char **v = calloc(n + 1, sizeof(*v));
        if (!v)
                return CANOPY_ERR_NOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                redisReply *e = r->element[i];
                if (e->type != REDIS_REPLY_STRING)
                        continue;
                v[k] = strndup(e->str, e->len);
                if (!v[k]) {
                        canopy_state_strv_free(v);
                        return CANOPY_ERR_NOMEM;
                }
                k++;
        }
        *ret = v;
        if (ret_n)
                *ret_n = k;
        return CANOPY_OK;
}

/* ---- helpers ------------------------------------------------------------ */

canopy_err canopy_state_anchor_b64(const canopy_bytes *anchor, char *buf, size_t buflen) {
        size_t need = 4 * ((anchor->len + 2) / 3) + 1;
        if (buflen < need)
                return CANOPY_ERR_LIMIT;
        EVP_EncodeBlock((unsigned char *)buf, anchor->data, (int)anchor->len);
        buf[need - 1] = 0;
        return CANOPY_OK;
}

/* malloc'd base64 of an anchor. */
static char *b64_dup(const canopy_bytes *anchor) {
        size_t need = 4 * ((anchor->len + 2) / 3) + 1;
        char *s = malloc(need);
        if (s && canopy_state_anchor_b64(anchor, s, need)) {
                free(s);
                return NULL;
        }
        return s;
}

static canopy_err b64_decode(const char *s, size_t len, canopy_bytes *out) {
        if (len % 4)
                return CANOPY_ERR_DECODE;
        uint8_t *d = malloc(len / 4 * 3 + 1);
        if (!d)
                return CANOPY_ERR_NOMEM;
        int n = EVP_DecodeBlock(d, (const unsigned char *)s, (int)len);
        if (n < 0) {
                free(d);
                return CANOPY_ERR_DECODE;
        }
        if (len >= 1 && s[len - 1] == '=')
                n--;
        if (len >= 2 && s[len - 2] == '=')
                n--;
        out->data = d;
        out->len = (size_t)n;
        return CANOPY_OK;
}

canopy_err canopy_state_dn_norm(const char *dn, char **ret) {
        /* RFC 4514 canonical form (escapes decoded and re-encoded one way,
         * Unicode case folding, multi-valued RDNs sorted), so that a member
         * value written as `cn=O'Brien\, Se\C3\A1n` finds the entry whose DN
         * the server returns as `cn=O'Brien\2C Seán`. */
        /* One arena per thread, reset per call: this runs for every member
         * reference, so it must not create and destroy an arena each time. */
        static _Thread_local canopy_arena *a;
        if (!a && !(a = canopy_arena_new(0, 0)))
                return CANOPY_ERR_NOMEM;
        const char *canon = canopy_dn_normalize(dn, a);
        char *dup = canon ? strdup(canon) : NULL;
        canopy_arena_reset(a);
        if (canon && !dup)
                return CANOPY_ERR_NOMEM;
        if (dup) {
                *ret = dup;
                return CANOPY_OK;
        }
        /* A DN that does not parse: fold it loosely so it can still be looked up. */
        size_t n = strlen(dn);
        char *o = malloc(n + 1);
        if (!o)
                return CANOPY_ERR_NOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)dn[i];
                if (c == '\\' && i + 1 < n) { /* keep escapes as they are */
                        o[k++] = (char)tolower(c);
                        o[k++] = (char)tolower((unsigned char)dn[++i]);
                        continue;
                }
                if (c == ' ' && (k == 0 || o[k - 1] == ',' || o[k - 1] == '=' || o[k - 1] == '+'))
                        continue;
                if ((c == ',' || c == '=' || c == '+') && k > 0) {
                        while (k > 0 && o[k - 1] == ' ' && !(k > 1 && o[k - 2] == '\\'))
                                k--;
                }
                o[k++] = (char)tolower(c);
        }
        while (k > 0 && o[k - 1] == ' ' && !(k > 1 && o[k - 2] == '\\'))
                k--;
        o[k] = 0;
        *ret = o;
        return CANOPY_OK;
}

void canopy_state_mv_id_for(const char *connector, const canopy_bytes *anchor, char out[33]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        EVP_DigestInit_ex(c, EVP_sha256(), NULL);
        EVP_DigestUpdate(c, connector, strlen(connector) + 1);
        EVP_DigestUpdate(c, anchor->data, anchor->len);
        EVP_DigestFinal_ex(c, md, &mdlen);
        EVP_MD_CTX_free(c);
        for (int i = 0; i < 16; i++)
                sprintf(out + 2 * i, "%02x", md[i]);
        out[32] = 0;
}

void canopy_state_hash_hex(const char *text, char out[65]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL);
        for (unsigned i = 0; i < 32; i++)
                sprintf(out + 2 * i, "%02x", md[i]);
        out[64] = 0;
}

/* ---- connector-space records --------------------------------------------- */

static char *cs_key(canopy_state *st, const char *connector, const char *b64) {
        return canopy_state_key(st, "cs:{%s|%s}", connector, b64);
}

static void attr_clear(canopy_attr *a) {
        free(a->name);
        for (size_t i = 0; i < a->nvalues; i++)
                free(a->values[i].data);
        free(a->values);
        memset(a, 0, sizeof(*a));
}

void canopy_cs_record_free(canopy_cs_record *rec) {
        if (!rec)
                return;
        free(rec->connector);
        free(rec->anchor.data);
        free(rec->dn);
        free(rec->object_class);
        free(rec->mv_id);
        free(rec->scan_id);
        for (size_t i = 0; i < rec->nattrs; i++)
                attr_clear(&rec->attrs[i]);
        free(rec->attrs);
        free(rec);
}

const canopy_attr *canopy_cs_record_attr(const canopy_cs_record *rec, const char *name) {
        for (size_t i = 0; i < rec->nattrs; i++)
                if (!strcasecmp(rec->attrs[i].name, name))
                        return &rec->attrs[i];
        return NULL;
}

canopy_err canopy_cs_record_set_attr(canopy_cs_record *rec, const char *name, bool binary,
                                     const canopy_bytes *values, size_t nvalues) {
        size_t idx = rec->nattrs;
        for (size_t i = 0; i < rec->nattrs; i++)
                if (!strcasecmp(rec->attrs[i].name, name))
                        idx = i;
        if (nvalues == 0) {
                if (idx == rec->nattrs)
                        return CANOPY_OK;
                attr_clear(&rec->attrs[idx]);
                rec->attrs[idx] = rec->attrs[rec->nattrs - 1];
                rec->nattrs--;
                return CANOPY_OK;
        }
        if (nvalues > CANOPY_STATE_MAX_MEMBERS)
                return CANOPY_ERR_TOO_MANY_VALUES;
        if (idx == rec->nattrs) {
                if (rec->nattrs >= CANOPY_EVENT_MAX_ATTRS)
                        return CANOPY_ERR_LIMIT;
                canopy_attr *na = realloc(rec->attrs, sizeof(*na) * (rec->nattrs + 1));
                if (!na)
                        return CANOPY_ERR_NOMEM;
                rec->attrs = na;
                memset(&rec->attrs[idx], 0, sizeof(canopy_attr));
                rec->attrs[idx].name = strdup(name);
                if (!rec->attrs[idx].name)
                        return CANOPY_ERR_NOMEM;
                for (char *p = rec->attrs[idx].name; *p; p++)
                        *p = (char)tolower((unsigned char)*p);
                rec->nattrs++;
        }
        canopy_attr *a = &rec->attrs[idx];
        canopy_bytes *nv = calloc(nvalues, sizeof(*nv));
        if (!nv)
                return CANOPY_ERR_NOMEM;
        for (size_t i = 0; i < nvalues; i++) {
                nv[i].data = malloc(values[i].len + 1);
                if (!nv[i].data) {
                        for (size_t j = 0; j < i; j++)
                                free(nv[j].data);
                        free(nv);
                        return CANOPY_ERR_NOMEM;
                }
                if (values[i].len)
                        memcpy(nv[i].data, values[i].data, values[i].len);
                nv[i].data[values[i].len] = 0; /* text values stay printable */
                nv[i].len = values[i].len;
        }
        for (size_t i = 0; i < a->nvalues; i++)
                free(a->values[i].data);
        free(a->values);
        a->values = nv;
        a->nvalues = nvalues;
        a->binary = binary;
        return CANOPY_OK;
}

/* Values are stored as a blob: repeated [4-byte big-endian length][bytes]. */
static canopy_err values_encode(const canopy_attr *a, char **ret, size_t *ret_len) {
        size_t len = 0;
        for (size_t i = 0; i < a->nvalues; i++)
                len += 4 + a->values[i].len;
        char *b = malloc(len ? len : 1);
        if (!b)
                return CANOPY_ERR_NOMEM;
        size_t k = 0;
        for (size_t i = 0; i < a->nvalues; i++) {
                uint32_t l = (uint32_t)a->values[i].len;
                b[k++] = (char)(l >> 24);
                b[k++] = (char)(l >> 16);
                b[k++] = (char)(l >> 8);
                b[k++] = (char)l;
                if (l)
                        memcpy(b + k, a->values[i].data, l);
                k += l;
        }
        *ret = b;
        *ret_len = len;
        return CANOPY_OK;
}

static canopy_err values_decode(canopy_cs_record *rec, const char *name, bool binary, const char *b, size_t len) {
        size_t n = 0, k = 0;
        while (k + 4 <= len) {
                uint32_t l = ((uint32_t)(uint8_t)b[k] << 24) | ((uint32_t)(uint8_t)b[k + 1] << 16) |
                             ((uint32_t)(uint8_t)b[k + 2] << 8) | (uint32_t)(uint8_t)b[k + 3];
                k += 4 + l;
                n++;
        }
        if (k != len)
                return CANOPY_ERR_DECODE;
        canopy_bytes *v = calloc(n ? n : 1, sizeof(*v));
        if (!v)
                return CANOPY_ERR_NOMEM;
        k = 0;
        for (size_t i = 0; i < n; i++) {
                uint32_t l = ((uint32_t)(uint8_t)b[k] << 24) | ((uint32_t)(uint8_t)b[k + 1] << 16) |
                             ((uint32_t)(uint8_t)b[k + 2] << 8) | (uint32_t)(uint8_t)b[k + 3];
                v[i].data = (uint8_t *)(b + k + 4);
                v[i].len = l;
                k += 4 + l;
        }
        canopy_err err = canopy_cs_record_set_attr(rec, name, binary, v, n);
        free(v);
        return err;
}

static char *reply_strdup(const redisReply *e) {
        return e->type == REDIS_REPLY_STRING ? strndup(e->str, e->len) : NULL;
}

canopy_err canopy_state_cs_get(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                               canopy_cs_record **ret) {
        canopy_err err = CANOPY_OK;
        char *b64 = b64_dup(anchor);
        char *key = b64 ? cs_key(st, connector, b64) : NULL;
        canopy_cs_record *rec = NULL;
        redisReply *r = NULL;
        if (!key) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        r = rconn_cmd(st->rc, "HGETALL %s", key);
        err = reply_err(st, r);
        if (err)
                goto out;
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
                err = CANOPY_ERR_NOT_FOUND;
                goto out;
        }
        rec = calloc(1, sizeof(*rec));
        if (rec)
                rec->kafka_offset = -1;
        if (!rec || !(rec->connector = strdup(connector)) || canopy_bytes_set(&rec->anchor, anchor->data, anchor->len)) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
                const redisReply *f = r->element[i], *v = r->element[i + 1];
                if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                        continue;
                if (!strcmp(f->str, "dn"))
                        rec->dn = reply_strdup(v);
                else if (!strcmp(f->str, "oc"))
                        rec->object_class = reply_strdup(v);
                else if (!strcmp(f->str, "mv"))
                        rec->mv_id = v->len ? reply_strdup(v) : NULL;
                else if (!strcmp(f->str, "scope"))
                        rec->in_scope = v->len == 1 && v->str[0] == '1';
                else if (!strcmp(f->str, "scan"))
                        rec->scan_id = v->len ? reply_strdup(v) : NULL;
                else if (!strcmp(f->str, "ts"))
                        rec->source_ts_ms = strtoll(v->str, NULL, 10);
                else if (!strcmp(f->str, "ets"))
                        rec->event_ts_ms = strtoll(v->str, NULL, 10);
                else if (!strcmp(f->str, "ko") && v->len) {
                        char *colon = NULL;
                        long part = strtol(v->str, &colon, 10);
                        if (colon && *colon == ':') {
                                rec->kafka_partition = (int32_t)part;
                                rec->kafka_offset = strtoll(colon + 1, NULL, 10);
                        }
                }
                else if (f->len > 2 && (f->str[0] == 'a' || f->str[0] == 'b') && f->str[1] == ':') {
                        err = values_decode(rec, f->str + 2, f->str[0] == 'b', v->str, v->len);
                        if (err)
                                goto out;
                }
        }
        *ret = rec;
        rec = NULL;
out:
        if (r)
                freeReplyObject(r);
        canopy_cs_record_free(rec);
        free(key);
        free(b64);
        return err;
}

canopy_err canopy_state_cs_put(canopy_state *st, const canopy_cs_record *rec) {
        canopy_err err = CANOPY_OK;
        char *b64 = b64_dup(&rec->anchor);
        char *key = b64 ? cs_key(st, rec->connector, b64) : NULL;
        char *idx = canopy_state_key(st, "csidx:{%s}", rec->connector);
        size_t nargs = 2 * (8 + rec->nattrs);
        const char **av = calloc(nargs, sizeof(*av));
        size_t *al = calloc(nargs, sizeof(*al));
        char **owned = calloc(2 * rec->nattrs + 1, sizeof(*owned));
        char ts[32], ets[32], ko[48];
        if (!key || !idx || !av || !al || !owned) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        snprintf(ts, sizeof(ts), "%lld", (long long)rec->source_ts_ms);
        snprintf(ets, sizeof(ets), "%lld", (long long)rec->event_ts_ms);
        if (rec->kafka_offset >= 0)
                snprintf(ko, sizeof(ko), "%d:%lld", (int)rec->kafka_partition, (long long)rec->kafka_offset);
        else
                ko[0] = '\0';
        size_t k = 0;
#define PUT_(f, v)                                      \
        do {                                            \
                av[k] = (f);                            \
                al[k] = strlen(av[k]);                  \
                k++;                                    \
                const char *v_ = (v);                   \
                av[k] = v_ ? v_ : "";                   \
                al[k] = strlen(av[k]);                  \
                k++;                                    \
        } while (0)
        PUT_("dn", rec->dn);
        PUT_("oc", rec->object_class);
        PUT_("mv", rec->mv_id);
        PUT_("scope", rec->in_scope ? "1" : "0");
        PUT_("scan", rec->scan_id);
        PUT_("ts", (const char *)ts);
        PUT_("ets", (const char *)ets);
        PUT_("ko", (const char *)ko);
#undef PUT_
        for (size_t i = 0; i < rec->nattrs; i++) {
                const canopy_attr *a = &rec->attrs[i];
                char *f = NULL, *blob = NULL;
                size_t bl = 0;
                if (asprintf(&f, "%c:%s", a->binary ? 'b' : 'a', a->name) < 0) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                owned[2 * i] = f;
                err = values_encode(a, &blob, &bl);
                if (err)
                        goto out;
                owned[2 * i + 1] = blob;
                av[k] = f;
                al[k] = strlen(f);
                k++;
                av[k] = blob;
                al[k] = bl;
                k++;
        }
        /* The index first: a crash between the two leaves an index entry
         * without record, which the END_OF_SCAN sweep ignores. */
        err = cmd3(st, "SADD", idx, b64);
        if (err)
                goto out;
        redisReply *r = eval1(st, LUA_CSPUT, st->sha_csput, key, (int)k, av, al);
        err = reply_err(st, r);
        if (r)
                freeReplyObject(r);
out:
        if (owned)
                for (size_t i = 0; i < 2 * rec->nattrs; i++)
                        free(owned[i]);
        free(owned);
        free(av);
        free(al);
        free(idx);
        free(key);
        free(b64);
        return err;
}

canopy_err canopy_state_cs_delete(canopy_state *st, const char *connector, const canopy_bytes *anchor) {
        char *b64 = b64_dup(anchor);
        char *key = b64 ? cs_key(st, connector, b64) : NULL;
        char *mkey = key ? canopy_state_key(st, "cs:{%s|%s}:m", connector, b64) : NULL;
        char *idx = canopy_state_key(st, "csidx:{%s}", connector);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && mkey && idx) {
                const char *av[3] = {"DEL", key, mkey};
                err = cmd_argv(st, 3, av, NULL);
                if (!err)
                        err = cmd3(st, "SREM", idx, b64);
        }
        free(idx);
        free(mkey);
        free(key);
        free(b64);
        return err;
}

/* Update a set with the members script. */
static canopy_err set_apply(canopy_state *st, const char *key, bool replace, const char *const *add, size_t nadd,
                            const char *const *remove, size_t nremove) {
        if (nadd > CANOPY_STATE_MAX_MEMBERS || nremove > CANOPY_STATE_MAX_MEMBERS)
                return CANOPY_ERR_TOO_MANY_VALUES;
        size_t n = 2 + nadd + nremove;
        const char **av = calloc(n, sizeof(*av));
        char cnt[24];
        if (!av)
                return CANOPY_ERR_NOMEM;
        snprintf(cnt, sizeof(cnt), "%zu", nadd);
        av[0] = replace ? "1" : "0";
        av[1] = cnt;
        for (size_t i = 0; i < nadd; i++)
                av[2 + i] = add[i];
        for (size_t i = 0; i < nremove; i++)
                av[2 + nadd + i] = remove[i];
        redisReply *r = eval1(st, LUA_MEMBERS, st->sha_members, key, (int)n, av, NULL);
        canopy_err err = reply_err(st, r);
        if (!err && r->type == REDIS_REPLY_INTEGER && r->integer > (long long)CANOPY_STATE_MAX_MEMBERS)
                err = CANOPY_ERR_TOO_MANY_VALUES;
        if (r)
                freeReplyObject(r);
        free(av);
        return err;
}

static canopy_err set_members(canopy_state *st, const char *key, char ***ret, size_t *ret_n) {
        redisReply *r = rconn_cmd(st->rc, "SMEMBERS %s", key);
        canopy_err err = reply_err(st, r);
        if (!err)
                err = strv_from_reply(r, ret, ret_n);
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_cs_members_apply(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                                         bool replace, const char *const *add, size_t nadd,
                                         const char *const *remove, size_t nremove) {
        char *b64 = b64_dup(anchor);
        char *key = b64 ? canopy_state_key(st, "cs:{%s|%s}:m", connector, b64) : NULL;
        canopy_err err = key ? set_apply(st, key, replace, add, nadd, remove, nremove) : CANOPY_ERR_NOMEM;
        free(key);
        free(b64);
        return err;
}

canopy_err canopy_state_cs_members(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                                   char ***ret, size_t *ret_n) {
        char *b64 = b64_dup(anchor);
        char *key = b64 ? canopy_state_key(st, "cs:{%s|%s}:m", connector, b64) : NULL;
        canopy_err err = key ? set_members(st, key, ret, ret_n) : CANOPY_ERR_NOMEM;
        free(key);
        free(b64);
        return err;
}

static canopy_err dn_lookup(canopy_state *st, const char *connector, const char *dn, canopy_bytes *ret,
                            bool *ret_gone, bool former);

canopy_err canopy_state_member_resolve(canopy_state *st, const char *connector, const char *ref, char out[33],
                                       char **ret_wait_key, bool *ret_dangling) {
        canopy_bytes anchor = {0};
        canopy_err err;
        *ret_wait_key = NULL;
        *ret_dangling = false;
        if (!strncmp(ref, "a:", 2))
                err = b64_decode(ref + 2, strlen(ref + 2), &anchor);
        else if (!strncmp(ref, "d:", 2)) {
                err = dn_lookup(st, connector, ref + 2, &anchor, ret_dangling, false);
                if (err == CANOPY_ERR_NOT_FOUND && asprintf(ret_wait_key, "d:%s\x1f%s", connector, ref + 2) < 0) {
                        *ret_wait_key = NULL;
                        err = CANOPY_ERR_NOMEM;
                }
        } else
                return CANOPY_ERR_DECODE;
        if (err)
                return err;
        canopy_cs_record *rec = NULL;
        err = canopy_state_cs_get(st, connector, &anchor, &rec);
        if (!err && rec->mv_id && rec->in_scope)
                snprintf(out, 33, "%s", rec->mv_id);
        else if (!err || err == CANOPY_ERR_NOT_FOUND) {
                char *b64 = b64_dup(&anchor);
                err = CANOPY_ERR_NOT_FOUND;
                if (!b64 || asprintf(ret_wait_key, "c:%s\x1f%s", connector, b64) < 0) {
                        *ret_wait_key = NULL;
                        err = CANOPY_ERR_NOMEM;
                }
                free(b64);
        }
        free(anchor.data);
        canopy_cs_record_free(rec);
        return err;
}

void canopy_state_anchors_free(canopy_bytes *v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i].data);
        free(v);
}

/* SSCAN/HSCAN page: returns the reply's second element. */
static canopy_err scan_page(canopy_state *st, const char *cmd, const char *key, uint64_t *cursor, redisReply **ret) {
        char cur[24];
        snprintf(cur, sizeof(cur), "%llu", (unsigned long long)*cursor);
        const char *av[5] = {cmd, key, cur, "COUNT", "500"};
        redisReply *r = rconn_cmdargv(st->rc, 5, av, NULL);
        canopy_err err = reply_err(st, r);
        if (!err && (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING))
                err = CANOPY_ERR_REDIS;
        if (err) {
                if (r)
                        freeReplyObject(r);
                return err;
        }
        *cursor = strtoull(r->element[0]->str, NULL, 10);
        *ret = r;
        return CANOPY_OK;
}

canopy_err canopy_state_cs_scan(canopy_state *st, const char *connector, uint64_t *cursor,
                                canopy_bytes **ret, size_t *ret_n) {
        char *idx = canopy_state_key(st, "csidx:{%s}", connector);
        redisReply *r = NULL;
        if (!idx)
                return CANOPY_ERR_NOMEM;
        canopy_err err = scan_page(st, "SSCAN", idx, cursor, &r);
        free(idx);
        if (err)
                return err;
        redisReply *arr = r->element[1];
        canopy_bytes *v = calloc(arr->elements + 1, sizeof(*v));
        size_t k = 0;
        if (!v)
                err = CANOPY_ERR_NOMEM;
        for (size_t i = 0; !err && i < arr->elements; i++) {
                if (arr->element[i]->type != REDIS_REPLY_STRING)
                        continue;
                if (b64_decode(arr->element[i]->str, arr->element[i]->len, &v[k]) == CANOPY_OK)
                        k++;
        }
        freeReplyObject(r);
        if (err) {
                canopy_state_anchors_free(v, k);
                return err;
        }
        *ret = v;
        *ret_n = k;
        return CANOPY_OK;
}

/* ---- DN index ------------------------------------------------------------ */

static char *dn_key(canopy_state *st, const char *connector, const char *dn) {
        char *norm = NULL;
        if (canopy_state_dn_norm(dn, &norm))
                return NULL;
        char *k = canopy_state_key(st, "dn:{%s|%s}", connector, norm);
        free(norm);
        return k;
}

canopy_err canopy_state_dn_set(canopy_state *st, const char *connector, const char *dn,
                               const canopy_bytes *anchor) {
        char *key = dn_key(st, connector, dn);
        char *b64 = b64_dup(anchor);
        canopy_err err = key && b64 ? cmd3(st, "SET", key, b64) : CANOPY_ERR_NOMEM;
        free(key);
        free(b64);
        return err;
}

/* Anchor at (connector, DN); *ret_gone tells a buried DN (tombstone) from
 * one never seen, both CANOPY_ERR_NOT_FOUND. */
static canopy_err dn_lookup(canopy_state *st, const char *connector, const char *dn, canopy_bytes *ret,
                            bool *ret_gone, bool former) {
        char *key = dn_key(st, connector, dn);
        if (ret_gone)
                *ret_gone = false;
        if (!key)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "GET %s", key);
        free(key);
        canopy_err err = reply_err(st, r);
        if (!err) {
                if (r->type != REDIS_REPLY_STRING)
                        err = CANOPY_ERR_NOT_FOUND;
                else if (r->len >= 1 && r->str[0] == '-') {
                        err = CANOPY_ERR_NOT_FOUND;
                        if (ret_gone)
                                *ret_gone = true;
                        if (former && r->len > 1)
                                err = b64_decode(r->str + 1, r->len - 1, ret);
                } else if (former)
                        err = CANOPY_ERR_NOT_FOUND;
                else
                        err = b64_decode(r->str, r->len, ret);
        }
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_dn_get(canopy_state *st, const char *connector, const char *dn, canopy_bytes *ret) {
        return dn_lookup(st, connector, dn, ret, NULL, false);
}

canopy_err canopy_state_dn_former(canopy_state *st, const char *connector, const char *dn, canopy_bytes *ret) {
        return dn_lookup(st, connector, dn, ret, NULL, true);
}

static canopy_err compare_delete(canopy_state *st, const char *key, const char *value) {
        const char *av[1] = {value};
        redisReply *r = eval1(st, LUA_RELEASE, st->sha_release, key, 1, av, NULL);
        canopy_err err = reply_err(st, r);
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_dn_del(canopy_state *st, const char *connector, const char *dn,
                               const canopy_bytes *anchor) {
        char *key = dn_key(st, connector, dn);
        char *b64 = b64_dup(anchor);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && b64) {
                const char *av[1] = {b64};
                redisReply *r = eval1(st, LUA_BURY, st->sha_bury, key, 1, av, NULL);
                err = reply_err(st, r);
                if (r)
                        freeReplyObject(r);
        }
        free(key);
        free(b64);
        return err;
}

/* ---- metaverse ------------------------------------------------------------ */

void canopy_mv_record_free(canopy_mv_record *mv) {
        if (!mv)
                return;
        free(mv->mv_id);
        free(mv->object_type);
        for (size_t i = 0; i < mv->ncontribs; i++) {
                free(mv->contribs[i].connector);
                free(mv->contribs[i].anchor.data);
        }
        free(mv->contribs);
        free(mv);
}

/* Contributor element: "<anchor b64>@<connector>" (base64 has no '@'). */
static char *contrib_elem(const char *connector, const canopy_bytes *anchor) {
        char *b64 = b64_dup(anchor), *e = NULL;
        if (b64 && asprintf(&e, "%s@%s", b64, connector) < 0)
                e = NULL;
        free(b64);
        return e;
}

canopy_err canopy_state_mv_get(canopy_state *st, const char *mv_id, canopy_mv_record **ret) {
        char *key = canopy_state_key(st, "mv:{%s}", mv_id);
        char *ckey = canopy_state_key(st, "mv:{%s}:c", mv_id);
        canopy_err err = CANOPY_ERR_NOMEM;
        redisReply *rt = NULL, *rc = NULL;
        canopy_mv_record *mv = NULL;
        if (!key || !ckey)
                goto out;
        rt = rconn_cmd(st->rc, "HGET %s type", key);
        if ((err = reply_err(st, rt)))
                goto out;
        rc = rconn_cmd(st->rc, "SMEMBERS %s", ckey);
        if ((err = reply_err(st, rc)))
                goto out;
        if (rt->type != REDIS_REPLY_STRING && (rc->type != REDIS_REPLY_ARRAY || rc->elements == 0)) {
                err = CANOPY_ERR_NOT_FOUND;
                goto out;
        }
        err = CANOPY_ERR_NOMEM;
        mv = calloc(1, sizeof(*mv));
        if (!mv || !(mv->mv_id = strdup(mv_id)))
                goto out;
        mv->object_type = rt->type == REDIS_REPLY_STRING ? strdup(rt->str) : NULL;
        mv->contribs = calloc(rc->elements + 1, sizeof(*mv->contribs));
        if (!mv->contribs)
                goto out;
        /* Sorted order makes precedence ties and MvEvents deterministic. */
        for (size_t i = 0; i < rc->elements; i++) {
                const redisReply *e = rc->element[i];
                const char *at = e->type == REDIS_REPLY_STRING ? strchr(e->str, '@') : NULL;
                if (!at)
                        continue;
                canopy_mv_contrib *c = &mv->contribs[mv->ncontribs];
                if (b64_decode(e->str, (size_t)(at - e->str), &c->anchor))
                        continue;
                c->connector = strdup(at + 1);
                if (!c->connector) {
                        free(c->anchor.data);
                        goto out;
                }
                mv->ncontribs++;
        }
        for (size_t i = 1; i < mv->ncontribs; i++) {
                for (size_t j = i; j > 0; j--) {
                        canopy_mv_contrib *a = &mv->contribs[j - 1], *b = &mv->contribs[j];
                        int c = strcmp(a->connector, b->connector);
                        if (!c) {
                                size_t m = a->anchor.len < b->anchor.len ? a->anchor.len : b->anchor.len;
                                c = memcmp(a->anchor.data, b->anchor.data, m);
                                if (!c)
                                        c = a->anchor.len < b->anchor.len ? -1 : a->anchor.len > b->anchor.len;
                        }
                        if (c <= 0)
                                break;
                        canopy_mv_contrib t = *a;
                        *a = *b;
                        *b = t;
                }
        }
        *ret = mv;
        mv = NULL;
        err = CANOPY_OK;
out:
        if (rt)
                freeReplyObject(rt);
        if (rc)
                freeReplyObject(rc);
        canopy_mv_record_free(mv);
        free(key);
        free(ckey);
        return err;
}

canopy_err canopy_state_mv_add_contrib(canopy_state *st, const char *mv_id, const char *object_type,
                                       const char *connector, const canopy_bytes *anchor) {
        char *key = canopy_state_key(st, "mv:{%s}", mv_id);
        char *ckey = canopy_state_key(st, "mv:{%s}:c", mv_id);
        char *e = contrib_elem(connector, anchor);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && ckey && e) {
                err = cmd4(st, "HSETNX", key, "type", object_type);
                if (!err)
                        err = cmd3(st, "SADD", ckey, e);
        }
        free(key);
        free(ckey);
        free(e);
        return err;
}

canopy_err canopy_state_mv_remove_contrib(canopy_state *st, const char *mv_id, const char *connector,
                                          const canopy_bytes *anchor, size_t *ret_remaining) {
        char *ckey = canopy_state_key(st, "mv:{%s}:c", mv_id);
        char *e = contrib_elem(connector, anchor);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (ckey && e) {
                const char *rm[1] = {e};
                err = set_apply(st, ckey, false, NULL, 0, rm, 1);
                if (!err && ret_remaining) {
                        redisReply *r = rconn_cmd(st->rc, "SCARD %s", ckey);
                        err = reply_err(st, r);
                        if (!err)
                                *ret_remaining = r->type == REDIS_REPLY_INTEGER ? (size_t)r->integer : 0;
                        if (r)
                                freeReplyObject(r);
                }
        }
        free(ckey);
        free(e);
        return err;
}

canopy_err canopy_state_mv_note_join_key(canopy_state *st, const char *mv_id, const char *join_key) {
        char *k = canopy_state_key(st, "mv:{%s}:jk", mv_id);
        canopy_err err = k ? cmd3(st, "SADD", k, join_key) : CANOPY_ERR_NOMEM;
        free(k);
        return err;
}

canopy_err canopy_state_mv_delete(canopy_state *st, const char *mv_id) {
        char *key = canopy_state_key(st, "mv:{%s}", mv_id);
        char *ckey = canopy_state_key(st, "mv:{%s}:c", mv_id);
        char *jkey = canopy_state_key(st, "mv:{%s}:jk", mv_id);
        char **jks = NULL;
        canopy_err err = CANOPY_ERR_NOMEM;
        if (!key || !ckey || !jkey)
                goto out;
        err = set_members(st, jkey, &jks, NULL);
        for (size_t i = 0; !err && jks[i]; i++)
                err = canopy_state_join_release(st, jks[i], mv_id);
        if (!err) {
                const char *av[4] = {"DEL", key, ckey, jkey};
                err = cmd_argv(st, 4, av, NULL);
        }
out:
        canopy_state_strv_free(jks);
        free(key);
        free(ckey);
        free(jkey);
        return err;
}

/* ---- join index ------------------------------------------------------------ */

canopy_err canopy_state_join_key(const char *object_type, const char *attr, const char *value, char **ret) {
        char *k = NULL;
        if (asprintf(&k, "%s\x1f%s\x1f%s", object_type, attr, value) < 0)
                return CANOPY_ERR_NOMEM;
        /* type and attribute as given; the value folded to lower case, as
         * Entra Connect's join rules compare mail and UPN case-insensitively. */
        char *v = k + strlen(object_type) + strlen(attr) + 2;
        for (char *p = k; p < v; p++)
                *p = (char)tolower((unsigned char)*p);
        for (; *v; v++)
                *v = (char)tolower((unsigned char)*v);
        *ret = k;
        return CANOPY_OK;
}

static char *join_rkey(canopy_state *st, const char *join_key) {
        return canopy_state_key(st, "join:{%s}", join_key);
}

canopy_err canopy_state_join_lookup(canopy_state *st, const char *join_key, char out[33]) {
        char *k = join_rkey(st, join_key);
        if (!k)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "GET %s", k);
        free(k);
        canopy_err err = reply_err(st, r);
        if (!err) {
                if (r->type != REDIS_REPLY_STRING)
                        err = CANOPY_ERR_NOT_FOUND;
                else
                        snprintf(out, 33, "%s", r->str);
        }
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_join_claim(canopy_state *st, const char *join_key, const char *candidate, char out[33]) {
        char *k = join_rkey(st, join_key);
        if (!k)
                return CANOPY_ERR_NOMEM;
        const char *av[1] = {candidate};
        redisReply *r = eval1(st, LUA_CLAIM, st->sha_claim, k, 1, av, NULL);
        free(k);
        canopy_err err = reply_err(st, r);
        if (!err) {
                if (r->type != REDIS_REPLY_STRING)
                        err = CANOPY_ERR_REDIS;
                else
                        snprintf(out, 33, "%s", r->str);
        }
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_join_release(canopy_state *st, const char *join_key, const char *mv_id) {
        char *k = join_rkey(st, join_key);
        canopy_err err = k ? compare_delete(st, k, mv_id) : CANOPY_ERR_NOMEM;
        free(k);
        return err;
}

/* ---- export state ------------------------------------------------------------ */

void canopy_export_state_free(canopy_export_state *es) {
        if (!es)
                return;
        free(es->entra_id);
        free(es->immutable_id);
        free(es->props_hash);
        free(es->props_json);
        free(es->intent);
        free(es);
}

canopy_err canopy_state_exp_get(canopy_state *st, const char *mv_id, canopy_export_state **ret) {
        char *key = canopy_state_key(st, "exp:{%s}", mv_id);
        if (!key)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "HGETALL %s", key);
        free(key);
        canopy_err err = reply_err(st, r);
        if (err)
                goto out;
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
                err = CANOPY_ERR_NOT_FOUND;
                goto out;
        }
        canopy_export_state *es = calloc(1, sizeof(*es));
        if (!es) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
                const redisReply *f = r->element[i], *v = r->element[i + 1];
                if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || !v->len)
                        continue;
                char **dst = !strcmp(f->str, "eid")      ? &es->entra_id
                             : !strcmp(f->str, "imm")    ? &es->immutable_id
                             : !strcmp(f->str, "h")      ? &es->props_hash
                             : !strcmp(f->str, "p")      ? &es->props_json
                             : !strcmp(f->str, "intent") ? &es->intent
                                                         : NULL;
                if (dst) {
                        free(*dst);
                        *dst = reply_strdup(v);
                } else if (!strcmp(f->str, "del"))
                        es->deleted = v->str[0] == '1';
                else if (!strcmp(f->str, "cts"))
                        es->created_ms = strtoll(v->str, NULL, 10);
        }
        *ret = es;
out:
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_exp_intent(canopy_state *st, const char *mv_id, const char *immutable_id) {
        char *key = canopy_state_key(st, "exp:{%s}", mv_id);
        canopy_err err = key ? cmd4(st, "HSET", key, "intent", immutable_id) : CANOPY_ERR_NOMEM;
        free(key);
        return err;
}

/* created_ms 0: the creation time recorded before (if any) stays. */
static canopy_err exp_record(canopy_state *st, const char *mv_id, const char *entra_id, const char *immutable_id,
                             const char *props_json, int64_t created_ms) {
        char *key = canopy_state_key(st, "exp:{%s}", mv_id);
        if (!key)
                return CANOPY_ERR_NOMEM;
        char h[65], cts[24];
        canopy_state_hash_hex(props_json ? props_json : "", h);
        snprintf(cts, sizeof(cts), "%lld", (long long)created_ms);
        const char *av[] = {"HSET", key, "eid", entra_id ? entra_id : "", "imm", immutable_id ? immutable_id : "",
                            "h", h, "p", props_json ? props_json : "", "intent", "", "del", "0", "cts", cts};
        int n = (int)(sizeof(av) / sizeof(av[0]));
        canopy_err err = cmd_argv(st, created_ms > 0 ? n : n - 2, av, NULL);
        free(key);
        return err;
}

canopy_err canopy_state_exp_record(canopy_state *st, const char *mv_id, const char *entra_id,
                                   const char *immutable_id, const char *props_json) {
        return exp_record(st, mv_id, entra_id, immutable_id, props_json, 0);
}

canopy_err canopy_state_exp_record_created(canopy_state *st, const char *mv_id, const char *entra_id,
                                           const char *immutable_id, const char *props_json,
                                           int64_t created_ms) {
        if (created_ms <= 0)
                return CANOPY_ERR_INVALID_ARG;
        return exp_record(st, mv_id, entra_id, immutable_id, props_json, created_ms);
}

canopy_err canopy_state_exp_deleted(canopy_state *st, const char *mv_id) {
        char *key = canopy_state_key(st, "exp:{%s}", mv_id);
        char *mkey = canopy_state_key(st, "exp:{%s}:m", mv_id);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && mkey) {
                const char *av[3] = {"DEL", key, mkey};
                err = cmd_argv(st, 3, av, NULL);
                if (!err)
                        err = cmd4(st, "HSET", key, "del", "1");
                if (!err)
                        err = canopy_state_group_waits_clear(st, mv_id);
        }
        free(key);
        free(mkey);
        return err;
}

canopy_err canopy_state_exp_members_apply(canopy_state *st, const char *mv_id, bool replace,
                                          const char *const *add, size_t nadd,
                                          const char *const *remove, size_t nremove) {
        char *key = canopy_state_key(st, "exp:{%s}:m", mv_id);
        canopy_err err = key ? set_apply(st, key, replace, add, nadd, remove, nremove) : CANOPY_ERR_NOMEM;
        free(key);
        return err;
}

canopy_err canopy_state_exp_members(canopy_state *st, const char *mv_id, char ***ret, size_t *ret_n) {
        char *key = canopy_state_key(st, "exp:{%s}:m", mv_id);
        canopy_err err = key ? set_members(st, key, ret, ret_n) : CANOPY_ERR_NOMEM;
        free(key);
        return err;
}

/* ---- pending references --------------------------------------------------------- */

static canopy_err int_reply(canopy_state *st, redisReply *r, int64_t *ret);

canopy_err canopy_state_pending_add(canopy_state *st, const char *member_key, const char *group_mv) {
        char *key = canopy_state_key(st, "pend:{%s}", member_key);
        char *idx = canopy_state_key(st, "pendidx:{pend}");
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && idx) {
                err = cmd3(st, "SADD", idx, member_key);
                if (!err)
                        err = cmd3(st, "SADD", key, group_mv);
        }
        free(key);
        free(idx);
        return err;
}

canopy_err canopy_state_pending_remove(canopy_state *st, const char *member_key, const char *group_mv) {
        char *key = canopy_state_key(st, "pend:{%s}", member_key);
        char *idx = canopy_state_key(st, "pendidx:{pend}");
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && idx) {
                err = cmd3(st, "SREM", key, group_mv);
                int64_t left = 0;
                if (!err)
                        err = int_reply(st, rconn_cmd(st->rc, "SCARD %s", key), &left);
                /* The index only feeds the metric: a concurrent add may
                 * lose its entry here, never its wake-up (the set keeps it). */
                if (!err && left == 0)
                        err = cmd3(st, "SREM", idx, member_key);
        }
        free(key);
        free(idx);
        return err;
}

canopy_err canopy_state_pending_take(canopy_state *st, const char *member_key, char ***ret, size_t *ret_n) {
        char *key = canopy_state_key(st, "pend:{%s}", member_key);
        char *idx = canopy_state_key(st, "pendidx:{pend}");
        canopy_err err = CANOPY_ERR_NOMEM;
        if (key && idx) {
                redisReply *r = eval1(st, LUA_TAKE, st->sha_take, key, 0, NULL, NULL);
                err = reply_err(st, r);
                if (!err)
                        err = strv_from_reply(r, ret, ret_n);
                if (r)
                        freeReplyObject(r);
                /* Each group notes the key as woken, for a RESOLVE that
                 * looks at the woken members only (canopy_state_group_waits_begin). */
                for (size_t i = 0; !err && i < *ret_n; i++) {
                        char *gr = canopy_state_key(st, "gr:{%s}", (*ret)[i]);
                        err = gr ? cmd3(st, "SADD", gr, member_key) : CANOPY_ERR_NOMEM;
                        free(gr);
                }
                /* The index only feeds the metric: drop the entry after the
                 * take; a crash in between leaves an empty entry counted. */
                if (!err)
                        err = cmd3(st, "SREM", idx, member_key);
        }
        free(key);
        free(idx);
        return err;
}

/* ---- member DNs not seen yet --------------------------------------------- */

canopy_err canopy_state_dnref_add(canopy_state *st, const char *connector, const char *dn_ref,
                                  const canopy_bytes *group_anchor) {
        char *b64 = b64_dup(group_anchor);
        char *key = canopy_state_key(st, "dnref:{%s\x1f%s}", connector, dn_ref);
        canopy_err err = b64 && key ? cmd3(st, "SADD", key, b64) : CANOPY_ERR_NOMEM;
        free(key);
        free(b64);
        return err;
}

canopy_err canopy_state_dnref_rebind(canopy_state *st, const char *connector, const char *dn_ref,
                                     const canopy_bytes *member_anchor, char ***ret, size_t *ret_n) {
        *ret = NULL;
        *ret_n = 0;
        char *key = canopy_state_key(st, "dnref:{%s\x1f%s}", connector, dn_ref);
        char *mb64 = b64_dup(member_anchor);
        char *aref = NULL;
        canopy_err err = key && mb64 && asprintf(&aref, "a:%s", mb64) >= 0 ? CANOPY_OK : CANOPY_ERR_NOMEM;
        if (err)
                aref = NULL;
        redisReply *r = err ? NULL : eval1(st, LUA_TAKE, st->sha_take, key, 0, NULL, NULL);
        if (!err)
                err = reply_err(st, r);
        size_t n = !err && r->type == REDIS_REPLY_ARRAY ? r->elements : 0, k = 0;
        char **out = n ? calloc(n + 1, sizeof(*out)) : NULL;
        if (n && !out)
                err = CANOPY_ERR_NOMEM;
        for (size_t i = 0; !err && i < n; i++) {
                redisReply *g = r->element[i];
                char *set = NULL, *rec = NULL;
                if (g->type != REDIS_REPLY_STRING) {
                        err = CANOPY_ERR_REDIS;
                        break;
                }
                set = canopy_state_key(st, "cs:{%s|%.*s}:m", connector, (int)g->len, g->str);
                rec = canopy_state_key(st, "cs:{%s|%.*s}", connector, (int)g->len, g->str);
                if (!set || !rec)
                        err = CANOPY_ERR_NOMEM;
                const char *av[5] = {"2", set, rec, dn_ref, aref};
                redisReply *x = err ? NULL : rconn_eval(st->rc, LUA_REBIND, st->sha_rebind, 5, av, NULL);
                if (!err)
                        err = reply_err(st, x);
                if (!err && x->type == REDIS_REPLY_STRING && x->len &&
                    !(out[k++] = strndup(x->str, x->len)))
                        err = CANOPY_ERR_NOMEM;
                if (x)
                        freeReplyObject(x);
                free(set);
                free(rec);
        }
        if (r)
                freeReplyObject(r);
        if (err) {
                canopy_state_strv_free(out);
                out = NULL;
                k = 0;
        }
        *ret = out;
        *ret_n = k;
        free(aref);
        free(mb64);
        free(key);
        return err;
}

/* ---- first full import of a connector ---------------------------------- */

canopy_err canopy_state_hold_for_scan(canopy_state *st, const char *connector, const char *group_mv,
                                      bool *ret_scanned) {
        *ret_scanned = false;
        char *hold = canopy_state_key(st, "hold:{%s}", connector);
        char *flag = canopy_state_key(st, "scanned:{%s}", connector);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (hold && flag) {
                const char *av[4] = {"2", hold, flag, group_mv};
                err = eval_flag(st, LUA_HOLD, st->sha_hold, 4, av, ret_scanned);
        }
        free(hold);
        free(flag);
        return err;
}

canopy_err canopy_state_connector_scanned(canopy_state *st, const char *connector, char ***ret, size_t *ret_n) {
        *ret = NULL;
        *ret_n = 0;
        char *flag = canopy_state_key(st, "scanned:{%s}", connector);
        char *hold = canopy_state_key(st, "hold:{%s}", connector);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (hold && flag) {
                const char *av[3] = {"2", flag, hold};
                redisReply *r = rconn_eval(st->rc, LUA_SCANNED, st->sha_scanned, 3, av, NULL);
                err = reply_err(st, r);
                if (!err)
                        err = strv_from_reply(r, ret, ret_n);
                if (r)
                        freeReplyObject(r);
        }
        free(hold);
        free(flag);
        return err;
}

canopy_err canopy_state_hold_release(canopy_state *st, const char *connector, const char *const *groups, size_t n) {
        char *hold = canopy_state_key(st, "hold:{%s}", connector);
        canopy_err err = hold ? CANOPY_OK : CANOPY_ERR_NOMEM;
        if (!err && n) {
                const char **av = malloc(sizeof(*av) * (n + 2));
                if (!av)
                        err = CANOPY_ERR_NOMEM;
                for (size_t i = 0; av && i < n; i++)
                        av[2 + i] = groups[i];
                if (av) {
                        av[0] = "SREM";
                        av[1] = hold;
                        err = cmd_argv(st, (int)(n + 2), av, NULL);
                }
                free(av);
        }
        free(hold);
        return err;
}

/* ---- group waits ---------------------------------------------------------------- */

#define GW_MARK "\x1f"
#define GW_PRINT "\x1e"

/* EVAL of a gw script: argv = {numkeys, key, args...} built here from
 * head[0..nhead) then the pairs keys[i], vals[i] (vals NULL: keys only). */
static canopy_err gw_eval(canopy_state *st, const char *script, char *sha, const char *gw, const char *const *head,
                          size_t nhead, const char *const *keys, const char *const *vals, size_t n,
                          const char *const *keys2, const char *const *vals2, size_t n2, bool *ret_applied) {
        size_t argc = 2 + nhead + n * (vals ? 2 : 1) + n2 * 2;
        const char **av = malloc(sizeof(*av) * argc);
        if (!av)
                return CANOPY_ERR_NOMEM;
        size_t k = 0;
        av[k++] = "1";
        av[k++] = gw;
        for (size_t i = 0; i < nhead; i++)
                av[k++] = head[i];
        for (size_t i = 0; i < n; i++) {
                av[k++] = keys[i];
                if (vals)
                        av[k++] = vals[i];
        }
        for (size_t i = 0; i < n2; i++) {
                av[k++] = keys2[i];
                av[k++] = vals2[i];
        }
        int64_t applied = 0;
        canopy_err err = int_reply(st, rconn_eval(st->rc, script, sha, (int)argc, av, NULL), &applied);
        free(av);
        if (!err && ret_applied)
                *ret_applied = applied == 1;
        return err;
}

/* Drop gw:, gr: and gd: of a group; with busy, leave the marker "busy". */
static canopy_err group_waits_drop(canopy_state *st, const char *group_mv, bool busy) {
        char *gw = canopy_state_key(st, "gw:{%s}", group_mv);
        char *gr = canopy_state_key(st, "gr:{%s}", group_mv);
        char *gd = canopy_state_key(st, "gd:{%s}", group_mv);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (gw && gr && gd && busy) {
                const char *av[4] = {"3", gw, gr, gd};
                int64_t one = 0;
                err = int_reply(st, rconn_eval(st->rc, LUA_GRESET, st->sha_greset, 4, av, NULL), &one);
        } else if (gw && gr && gd) {
                const char *av[4] = {"DEL", gw, gr, gd};
                err = cmd_argv(st, 4, av, NULL);
        }
        free(gw);
        free(gr);
        free(gd);
        return err;
}

canopy_err canopy_state_group_waits_reset(canopy_state *st, const char *group_mv) {
        return group_waits_drop(st, group_mv, true);
}

canopy_err canopy_state_group_waits_set(canopy_state *st, const char *group_mv, bool held, const char *fingerprint,
                                        const char *const *keys, const char *const *vals, size_t n,
                                        bool *ret_applied) {
        char *gw = canopy_state_key(st, "gw:{%s}", group_mv);
        const char *head[2] = {held ? "held" : "1", fingerprint};
        canopy_err err = gw ? gw_eval(st, LUA_GSET, st->sha_gset, gw, head, 2, keys, vals, n, NULL, NULL, 0,
                                      ret_applied)
                            : CANOPY_ERR_NOMEM;
        free(gw);
        return err;
}

canopy_err canopy_state_group_waits_begin(canopy_state *st, const char *group_mv, const char *fingerprint,
                                          canopy_group_delta *ret) {
        memset(ret, 0, sizeof(*ret));
        char *gw = canopy_state_key(st, "gw:{%s}", group_mv);
        char *gr = canopy_state_key(st, "gr:{%s}", group_mv);
        char *gd = canopy_state_key(st, "gd:{%s}", group_mv);
        canopy_err err = CANOPY_ERR_NOMEM;
        if (gw && gr && gd) {
                const char *av[5] = {"3", gw, gr, gd, fingerprint};
                redisReply *r = rconn_eval(st->rc, LUA_GBEGIN, st->sha_gbegin, 5, av, NULL);
                err = reply_err(st, r);
                if (!err && r->type == REDIS_REPLY_ARRAY) {
                        if (r->elements != 2 || r->element[0]->type != REDIS_REPLY_ARRAY ||
                            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[1]->elements % 2)
                                err = CANOPY_ERR_REDIS;
                        if (!err)
                                err = strv_from_reply(r->element[0], &ret->woken, &ret->nwoken);
                        redisReply *d = err ? NULL : r->element[1];
                        size_t nd = d ? d->elements / 2 : 0;
                        if (d && nd) {
                                ret->refs = calloc(nd + 1, sizeof(*ret->refs));
                                ret->added = calloc(nd, sizeof(*ret->added));
                                if (!ret->refs || !ret->added)
                                        err = CANOPY_ERR_NOMEM;
                        }
                        for (size_t i = 0; !err && i < nd; i++) {
                                redisReply *f = d->element[2 * i], *v = d->element[2 * i + 1];
                                if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                                        err = CANOPY_ERR_REDIS;
                                else if (!(ret->refs[i] = strndup(f->str, f->len)))
                                        err = CANOPY_ERR_NOMEM;
                                else {
                                        ret->added[i] = v->len == 1 && v->str[0] == '+';
                                        ret->nrefs = i + 1;
                                }
                        }
                        ret->ok = !err;
                        if (err)
                                canopy_group_delta_clear(ret);
                }
                if (r)
                        freeReplyObject(r);
        }
        free(gw);
        free(gr);
        free(gd);
        return err;
}

void canopy_group_delta_clear(canopy_group_delta *d) {
        canopy_state_strv_free(d->woken);
        canopy_state_strv_free(d->refs);
        free(d->added);
        memset(d, 0, sizeof(*d));
}

canopy_err canopy_state_group_delta_note(canopy_state *st, const char *group_mv, const char *connector,
                                         const char *const *add, size_t nadd, const char *const *rm, size_t nrm) {
        if (!nadd && !nrm)
                return CANOPY_OK;
        char *gd = canopy_state_key(st, "gd:{%s}", group_mv);
        size_t n = nadd + nrm;
        const char **av = malloc(sizeof(*av) * (2 + 2 * n));
        char **f = calloc(n, sizeof(*f));
        canopy_err err = gd && av && f ? CANOPY_OK : CANOPY_ERR_NOMEM;
        for (size_t i = 0; !err && i < n; i++)
                if (asprintf(&f[i], "%s\x1f%s", connector, i < nadd ? add[i] : rm[i - nadd]) < 0) {
                        f[i] = NULL;
                        err = CANOPY_ERR_NOMEM;
                }
        if (!err) {
                /* Removals after additions: a reference in both (a value
                 * re-added and removed in one event) ends removed. */
                av[0] = "HSET";
                av[1] = gd;
                for (size_t i = 0; i < n; i++) {
                        av[2 + 2 * i] = f[i];
                        av[3 + 2 * i] = i < nadd ? "+" : "-";
                }
                err = cmd_argv(st, (int)(2 + 2 * n), av, NULL);
        }
        for (size_t i = 0; f && i < n; i++)
                free(f[i]);
        free(f);
        free(av);
        free(gd);
        return err;
}

canopy_err canopy_state_group_waits_get(canopy_state *st, const char *group_mv, const char *const *keys, size_t n,
                                        char **ret) {
        for (size_t i = 0; i < n; i++)
                ret[i] = NULL;
        if (!n)
                return CANOPY_OK;
        char *gw = canopy_state_key(st, "gw:{%s}", group_mv);
        const char **av = malloc(sizeof(*av) * (n + 2));
        canopy_err err = CANOPY_ERR_NOMEM;
        if (gw && av) {
                av[0] = "HMGET";
                av[1] = gw;
                for (size_t i = 0; i < n; i++)
                        av[2 + i] = keys[i];
                redisReply *r = rconn_cmdargv(st->rc, (int)(n + 2), av, NULL);
                err = reply_err(st, r);
                if (!err && (r->type != REDIS_REPLY_ARRAY || r->elements != n))
                        err = CANOPY_ERR_REDIS;
                for (size_t i = 0; !err && i < n; i++)
                        if (r->element[i]->type == REDIS_REPLY_STRING &&
                            !(ret[i] = strndup(r->element[i]->str, r->element[i]->len)))
                                err = CANOPY_ERR_NOMEM;
                if (r)
                        freeReplyObject(r);
                if (err)
                        for (size_t i = 0; i < n; i++) {
                                free(ret[i]);
                                ret[i] = NULL;
                        }
        }
        free(av);
        free(gw);
        return err;
}

canopy_err canopy_state_group_waits_end(canopy_state *st, const char *group_mv, const char *const *del, size_t ndel,
                                        const char *const *add, const char *const *vals, size_t nadd,
                                        bool *ret_applied) {
        char *gw = canopy_state_key(st, "gw:{%s}", group_mv);
        char nbuf[24];
        snprintf(nbuf, sizeof(nbuf), "%zu", ndel);
        const char *head[1] = {nbuf};
        canopy_err err = gw ? gw_eval(st, LUA_GEND, st->sha_gend, gw, head, 1, del, NULL, ndel, add, vals, nadd,
                                      ret_applied)
                            : CANOPY_ERR_NOMEM;
        free(gw);
        return err;
}

canopy_err canopy_state_group_waits_clear(canopy_state *st, const char *group_mv) {
        return group_waits_drop(st, group_mv, false);
}

/* SMISMEMBER key items... -> ret[]. */
static canopy_err set_has(canopy_state *st, const char *key, const char *const *items, size_t n, bool *ret) {
        if (!n)
                return CANOPY_OK;
        const char **av = malloc(sizeof(*av) * (n + 2));
        if (!av)
                return CANOPY_ERR_NOMEM;
        av[0] = "SMISMEMBER";
        av[1] = key;
        for (size_t i = 0; i < n; i++)
                av[2 + i] = items[i];
        redisReply *r = rconn_cmdargv(st->rc, (int)(n + 2), av, NULL);
        free(av);
        canopy_err err = reply_err(st, r);
        if (!err && (r->type != REDIS_REPLY_ARRAY || r->elements != n))
                err = CANOPY_ERR_REDIS;
        for (size_t i = 0; !err && i < n; i++)
                ret[i] = r->element[i]->type == REDIS_REPLY_INTEGER && r->element[i]->integer == 1;
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_exp_members_has(canopy_state *st, const char *mv_id, const char *const *items, size_t n,
                                        bool *ret) {
        char *key = canopy_state_key(st, "exp:{%s}:m", mv_id);
        canopy_err err = key ? set_has(st, key, items, n, ret) : CANOPY_ERR_NOMEM;
        free(key);
        return err;
}

canopy_err canopy_state_cs_members_has(canopy_state *st, const char *connector, const canopy_bytes *anchor,
                                       const char *const *items, size_t n, bool *ret) {
        char *b64 = b64_dup(anchor);
        char *key = b64 ? canopy_state_key(st, "cs:{%s|%s}:m", connector, b64) : NULL;
        canopy_err err = key ? set_has(st, key, items, n, ret) : CANOPY_ERR_NOMEM;
        free(key);
        free(b64);
        return err;
}

static canopy_err memberof_apply(canopy_state *st, const char *cmd, const char *const *eids, size_t n,
                                 const char *group_mv) {
        canopy_err err = CANOPY_OK;
        for (size_t i = 0; !err && i < n; i++) {
                char *k = canopy_state_key(st, "mof:{%s}", eids[i]);
                err = k ? cmd3(st, cmd, k, group_mv) : CANOPY_ERR_NOMEM;
                free(k);
        }
        return err;
}

canopy_err canopy_state_memberof_add(canopy_state *st, const char *const *eids, size_t n, const char *group_mv) {
        return memberof_apply(st, "SADD", eids, n, group_mv);
}

canopy_err canopy_state_memberof_remove(canopy_state *st, const char *const *eids, size_t n, const char *group_mv) {
        return memberof_apply(st, "SREM", eids, n, group_mv);
}

canopy_err canopy_state_memberof_take(canopy_state *st, const char *member_eid, char ***ret, size_t *ret_n) {
        char *key = canopy_state_key(st, "mof:{%s}", member_eid);
        if (!key)
                return CANOPY_ERR_NOMEM;
        redisReply *r = eval1(st, LUA_TAKE, st->sha_take, key, 0, NULL, NULL);
        free(key);
        canopy_err err = reply_err(st, r);
        if (!err)
                err = strv_from_reply(r, ret, ret_n);
        if (r)
                freeReplyObject(r);
        return err;
}

static char *conflict_key(canopy_state *st, const char *prop, const char *value) {
        char *k = canopy_state_key(st, "cfl:{%s\x1f%s}", prop, value);
        if (k)
                for (char *p = strchr(k, '{'); *p; p++)
                        *p = (char)tolower((unsigned char)*p);
        return k;
}

canopy_err canopy_state_conflict_wait(canopy_state *st, const char *prop, const char *value, const char *mv_id) {
        char *k = conflict_key(st, prop, value);
        canopy_err err = k ? cmd3(st, "SADD", k, mv_id) : CANOPY_ERR_NOMEM;
        free(k);
        return err;
}

canopy_err canopy_state_conflict_take(canopy_state *st, const char *prop, const char *value, char ***ret,
                                      size_t *ret_n) {
        char *key = conflict_key(st, prop, value);
        if (!key)
                return CANOPY_ERR_NOMEM;
        redisReply *r = eval1(st, LUA_TAKE, st->sha_take, key, 0, NULL, NULL);
        free(key);
        canopy_err err = reply_err(st, r);
        if (!err)
                err = strv_from_reply(r, ret, ret_n);
        if (r)
                freeReplyObject(r);
        return err;
}

static canopy_err int_reply(canopy_state *st, redisReply *r, int64_t *ret) {
        canopy_err err = reply_err(st, r);
        if (!err)
                *ret = r->type == REDIS_REPLY_INTEGER ? r->integer : r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_pending_count(canopy_state *st, int64_t *ret) {
        char *idx = canopy_state_key(st, "pendidx:{pend}");
        if (!idx)
                return CANOPY_ERR_NOMEM;
        canopy_err err = int_reply(st, rconn_cmd(st->rc, "SCARD %s", idx), ret);
        free(idx);
        return err;
}

/* ---- errors and staging ------------------------------------------------------------ */

static canopy_err hash_set(canopy_state *st, const char *name, const char *field, const char *value) {
        char *k = canopy_state_key(st, "%s", name);
        canopy_err err = k ? cmd4(st, "HSET", k, field, value) : CANOPY_ERR_NOMEM;
        free(k);
        return err;
}

static canopy_err hash_del(canopy_state *st, const char *name, const char *field) {
        char *k = canopy_state_key(st, "%s", name);
        canopy_err err = k ? cmd3(st, "HDEL", k, field) : CANOPY_ERR_NOMEM;
        free(k);
        return err;
}

static canopy_err hash_get(canopy_state *st, const char *name, const char *field, char **ret) {
        char *k = canopy_state_key(st, "%s", name);
        if (!k)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "HGET %s %s", k, field);
        free(k);
        canopy_err err = reply_err(st, r);
        if (!err) {
                if (r->type != REDIS_REPLY_STRING)
                        err = CANOPY_ERR_NOT_FOUND;
                else if (!(*ret = reply_strdup(r)))
                        err = CANOPY_ERR_NOMEM;
        }
        if (r)
                freeReplyObject(r);
        return err;
}

static canopy_err hash_len(canopy_state *st, const char *name, int64_t *ret) {
        char *k = canopy_state_key(st, "%s", name);
        if (!k)
                return CANOPY_ERR_NOMEM;
        canopy_err err = int_reply(st, rconn_cmd(st->rc, "HLEN %s", k), ret);
        free(k);
        return err;
}

#define ERRORS_KEY "errors:{err}"
#define STAGED_KEY "staged:{stg}"

canopy_err canopy_state_error_set(canopy_state *st, const char *mv_id, const char *json) {
        return hash_set(st, ERRORS_KEY, mv_id, json);
}

canopy_err canopy_state_error_clear(canopy_state *st, const char *mv_id) {
        return hash_del(st, ERRORS_KEY, mv_id);
}

canopy_err canopy_state_error_get(canopy_state *st, const char *mv_id, char **ret) {
        return hash_get(st, ERRORS_KEY, mv_id, ret);
}

canopy_err canopy_state_error_count(canopy_state *st, int64_t *ret) {
        return hash_len(st, ERRORS_KEY, ret);
}

canopy_err canopy_state_staged_set(canopy_state *st, const char *mv_id, const char *json) {
        return hash_set(st, STAGED_KEY, mv_id, json);
}

canopy_err canopy_state_staged_clear(canopy_state *st, const char *mv_id) {
        return hash_del(st, STAGED_KEY, mv_id);
}

canopy_err canopy_state_staged_get(canopy_state *st, const char *mv_id, char **ret) {
        return hash_get(st, STAGED_KEY, mv_id, ret);
}

/* One HSCAN page of a hash: field names into *ret, and values into *ret_vals
 * when it is not NULL (both NULL-terminated, owned). */
static canopy_err hash_scan(canopy_state *st, const char *hash, uint64_t *cursor, char ***ret, char ***ret_vals,
                            size_t *ret_n) {
        char *k = canopy_state_key(st, "%s", hash);
        redisReply *r = NULL;
        if (!k)
                return CANOPY_ERR_NOMEM;
        canopy_err err = scan_page(st, "HSCAN", k, cursor, &r);
        free(k);
        if (err)
                return err;
        redisReply *arr = r->element[1];
        char **v = calloc(arr->elements / 2 + 1, sizeof(*v));
        char **vals = ret_vals ? calloc(arr->elements / 2 + 1, sizeof(*vals)) : NULL;
        size_t n = 0;
        if (!v || (ret_vals && !vals))
                err = CANOPY_ERR_NOMEM;
        for (size_t i = 0; !err && i + 1 < arr->elements; i += 2) {
                if (!(v[n] = reply_strdup(arr->element[i])))
                        continue;
                if (vals && !(vals[n] = reply_strdup(arr->element[i + 1]))) {
                        free(v[n]);
                        v[n] = NULL;
                        continue;
                }
                n++;
        }
        freeReplyObject(r);
        if (err) {
                free(v);
                free(vals);
                return err;
        }
        *ret = v;
        if (ret_vals)
                *ret_vals = vals;
        *ret_n = n;
        return CANOPY_OK;
}

canopy_err canopy_state_staged_scan(canopy_state *st, uint64_t *cursor, char ***ret, size_t *ret_n) {
        return hash_scan(st, STAGED_KEY, cursor, ret, NULL, ret_n);
}

canopy_err canopy_state_error_scan(canopy_state *st, uint64_t *cursor, char ***ret_ids, char ***ret_json,
                                   size_t *ret_n) {
        return hash_scan(st, ERRORS_KEY, cursor, ret_ids, ret_json, ret_n);
}

canopy_err canopy_state_counter_incr(canopy_state *st, const char *name, int64_t by, int64_t *ret) {
        char *k = canopy_state_key(st, "ctr:{ctr}");
        if (!k)
                return CANOPY_ERR_NOMEM;
        char bys[24];
        snprintf(bys, sizeof(bys), "%lld", (long long)by);
        const char *av[4] = {"HINCRBY", k, name, bys};
        int64_t v = 0;
        canopy_err err = int_reply(st, rconn_cmdargv(st->rc, 4, av, NULL), &v);
        free(k);
        if (!err && ret)
                *ret = v;
        return err;
}

/* ---- END_OF_SCAN pieces -------------------------------------------------- */

#define SCAN_TTL_MS "604800000" /* a week: longer than any full pass */

static canopy_err scan_keys(canopy_state *st, const char *connector, const char *scan_id, char **ret_set,
                            char **ret_done) {
        *ret_set = canopy_state_key(st, "eos:{%s}:%s", connector, scan_id);
        *ret_done = canopy_state_key(st, "eos:{%s}:%s:done", connector, scan_id);
        if (*ret_set && *ret_done)
                return CANOPY_OK;
        free(*ret_set);
        free(*ret_done);
        return CANOPY_ERR_NOMEM;
}

canopy_err canopy_state_scan_piece(canopy_state *st, const char *connector, const char *scan_id, int32_t piece,
                                   int32_t npieces, bool *ret_complete) {
        char *set = NULL, *done = NULL, ps[16], ns[16];
        canopy_err err = scan_keys(st, connector, scan_id, &set, &done);
        if (err)
                return err;
        snprintf(ps, sizeof(ps), "%d", (int)piece);
        snprintf(ns, sizeof(ns), "%d", (int)(npieces > 0 ? npieces : 1));
        const char *av[] = {"2", set, done, ps, ns, SCAN_TTL_MS};
        err = eval_flag(st, LUA_SCAN_PIECE, st->sha_scan_piece, 6, av, ret_complete);
        free(set);
        free(done);
        return err;
}

canopy_err canopy_state_scan_done(canopy_state *st, const char *connector, const char *scan_id) {
        char *set = NULL, *done = NULL;
        canopy_err err = scan_keys(st, connector, scan_id, &set, &done);
        if (err)
                return err;
        redisReply *r = rconn_cmd(st->rc, "SET %s 1 PX " SCAN_TTL_MS, done);
        err = reply_err(st, r);
        if (r)
                freeReplyObject(r);
        free(set);
        free(done);
        return err;
}

/* ---- RESOLVE coalescing ------------------------------------------------- */

#define RESOLVE_TTL_MS "600000"

canopy_err canopy_state_resolve_claim(canopy_state *st, const char *mv_id, bool *ret_claimed) {
        char *key = canopy_state_key(st, "rsv:{%s}", mv_id);
        if (!key)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "SET %s 1 NX PX " RESOLVE_TTL_MS, key);
        free(key);
        canopy_err err = reply_err(st, r);
        if (!err)
                *ret_claimed = r->type == REDIS_REPLY_STATUS;
        if (r)
                freeReplyObject(r);
        return err;
}

canopy_err canopy_state_resolve_start(canopy_state *st, const char *mv_id) {
        char *key = canopy_state_key(st, "rsv:{%s}", mv_id);
        if (!key)
                return CANOPY_ERR_NOMEM;
        redisReply *r = rconn_cmd(st->rc, "DEL %s", key);
        free(key);
        canopy_err err = reply_err(st, r);
        if (r)
                freeReplyObject(r);
        return err;
}

/* ---- batched member resolution ------------------------------------------ */

/* Send cmds[0..n) (each argc args, argv NUL-terminated strings) in one
 * pipeline and read the n replies into ret[] (owned). On a transport error
 * every reply read so far is freed and the error returned. */
static canopy_err pipeline(canopy_state *st, size_t n, int argc, char *const *argv, redisReply **ret) {
        for (size_t i = 0; i < n; i++) {
                canopy_err err = rconn_append(st->rc, argc, (const char **)&argv[i * (size_t)argc], NULL);
                if (err) {
                        /* the context may hold appended commands: drop it */
                        for (size_t j = 0; j < i; j++) {
                                redisReply *r = rconn_read(st->rc);
                                if (r)
                                        freeReplyObject(r);
                        }
                        return err;
                }
        }
        for (size_t i = 0; i < n; i++) {
                ret[i] = rconn_read(st->rc);
                if (!ret[i]) {
                        for (size_t j = 0; j < i; j++)
                                freeReplyObject(ret[j]);
                        return CANOPY_ERR_REDIS_UNREACHABLE;
                }
                if (ret[i]->type == REDIS_REPLY_ERROR) {
                        snprintf(st->rc->errstr, sizeof(st->rc->errstr), "%s", ret[i]->str);
                        for (size_t j = i + 1; j < n; j++) { /* read the rest to keep the stream in step */
                                redisReply *r = rconn_read(st->rc);
                                if (r)
                                        freeReplyObject(r);
                        }
                        for (size_t j = 0; j <= i; j++)
                                freeReplyObject(ret[j]);
                        return CANOPY_ERR_REDIS;
                }
        }
        return CANOPY_OK;
}

static void free_replies(redisReply **r, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (r[i])
                        freeReplyObject(r[i]);
}

void canopy_member_res_clear(canopy_member_res *v, size_t n) {
        for (size_t i = 0; v && i < n; i++) {
                free(v[i].entra_id);
                free(v[i].wait_key);
                memset(&v[i], 0, sizeof(v[i]));
        }
}

/* HMGET <key> f1 f2 for the k keys already in argv[4j+1], in one pipeline. */
static canopy_err hmget_pairs(canopy_state *st, size_t k, char **argv, const char *f1, const char *f2,
                              redisReply **rep) {
        for (size_t j = 0; j < k; j++) {
                argv[4 * j] = "HMGET";
                argv[4 * j + 2] = (char *)f1;
                argv[4 * j + 3] = (char *)f2;
        }
        return pipeline(st, k, 4, argv, rep);
}

/* The two values of an HMGET reply (NULL, NULL when it is not a pair). */
static void pair_of(const redisReply *r, const redisReply **a, const redisReply **b) {
        bool pair = r->type == REDIS_REPLY_ARRAY && r->elements == 2;
        *a = pair ? r->element[0] : NULL;
        *b = pair ? r->element[1] : NULL;
}

/* One chunk: at most RESOLVE_CHUNK references. */
#define RESOLVE_CHUNK 512

static canopy_err resolve_chunk(canopy_state *st, const char *connector, char *const *refs, size_t n,
                                canopy_member_res *out) {
        canopy_err err = CANOPY_OK;
        canopy_bytes *anchors = calloc(n, sizeof(*anchors));
        char **argv = calloc(4 * n, sizeof(*argv));
        redisReply **rep = calloc(n, sizeof(*rep));
        size_t *idx = calloc(n, sizeof(*idx));
        bool *have = calloc(n, sizeof(*have));
        if (!anchors || !argv || !rep || !idx || !have) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        /* 1. anchors: a: references directly, d: references through the DN index */
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                out[i].state = CANOPY_MEMBER_UNKNOWN;
                if (!strncmp(refs[i], "a:", 2)) {
                        if (b64_decode(refs[i] + 2, strlen(refs[i] + 2), &anchors[i]) == CANOPY_OK)
                                have[i] = true;
                } else if (!strncmp(refs[i], "d:", 2)) {
                        argv[2 * k] = "GET";
                        if (!(argv[2 * k + 1] = dn_key(st, connector, refs[i] + 2))) {
                                err = CANOPY_ERR_NOMEM;
                                goto out;
                        }
                        idx[k++] = i;
                }
        }
        if (k && !(err = pipeline(st, k, 2, argv, rep))) {
                for (size_t j = 0; j < k; j++) {
                        size_t i = idx[j];
                        redisReply *r = rep[j];
                        if (r->type == REDIS_REPLY_STRING && !(r->len >= 1 && r->str[0] == '-')) {
                                if (b64_decode(r->str, r->len, &anchors[i]) == CANOPY_OK)
                                        have[i] = true;
                        } else {
                                out[i].dangling = r->type == REDIS_REPLY_STRING;
                                if (asprintf(&out[i].wait_key, "d:%s\x1f%s", connector, refs[i] + 2) < 0) {
                                        out[i].wait_key = NULL;
                                        err = CANOPY_ERR_NOMEM;
                                }
                        }
                }
                free_replies(rep, k);
        }
        for (size_t j = 0; j < k; j++)
                free(argv[2 * j + 1]);
        memset(rep, 0, n * sizeof(*rep));
        if (err)
                goto out;
        /* 2. the members' connector-space records: mv id and scope */
        k = 0;
        for (size_t i = 0; i < n; i++) {
                if (!have[i])
                        continue;
                char *b64 = b64_dup(&anchors[i]);
                argv[4 * k + 1] = b64 ? cs_key(st, connector, b64) : NULL;
                free(b64);
                if (!argv[4 * k + 1]) {
                        err = CANOPY_ERR_NOMEM;
                        break;
                }
                idx[k++] = i;
        }
        if (!err && k && !(err = hmget_pairs(st, k, argv, "mv", "scope", rep))) {
                for (size_t j = 0; j < k && !err; j++) {
                        size_t i = idx[j];
                        const redisReply *mv, *sc;
                        pair_of(rep[j], &mv, &sc);
                        bool in = sc && sc->type == REDIS_REPLY_STRING && sc->len == 1 && sc->str[0] == '1';
                        if (mv && mv->type == REDIS_REPLY_STRING && mv->len > 0 && mv->len < 33 && in) {
                                memcpy(out[i].mv_id, mv->str, mv->len);
                                out[i].mv_id[mv->len] = '\0';
                                out[i].state = CANOPY_MEMBER_JOINED;
                        } else {
                                char *b64 = b64_dup(&anchors[i]);
                                if (!b64 || asprintf(&out[i].wait_key, "c:%s\x1f%s", connector, b64) < 0) {
                                        out[i].wait_key = NULL;
                                        err = CANOPY_ERR_NOMEM;
                                }
                                free(b64);
                        }
                }
                free_replies(rep, k);
        }
        for (size_t j = 0; j < k; j++)
                free(argv[4 * j + 1]);
        memset(rep, 0, n * sizeof(*rep));
        if (err)
                goto out;
        /* 3. the joined members' export state: Entra id, deleted */
        k = 0;
        for (size_t i = 0; i < n; i++) {
                if (out[i].state != CANOPY_MEMBER_JOINED)
                        continue;
                argv[4 * k + 1] = canopy_state_key(st, "exp:{%s}", out[i].mv_id);
                if (!argv[4 * k + 1]) {
                        err = CANOPY_ERR_NOMEM;
                        break;
                }
                idx[k++] = i;
        }
        if (!err && k && !(err = hmget_pairs(st, k, argv, "eid", "del", rep))) {
                for (size_t j = 0; j < k && !err; j++) {
                        size_t i = idx[j];
                        const redisReply *eid, *del;
                        pair_of(rep[j], &eid, &del);
                        bool deleted = del && del->type == REDIS_REPLY_STRING && del->len && del->str[0] == '1';
                        if (eid && eid->type == REDIS_REPLY_STRING && eid->len && !deleted) {
                                if (!(out[i].entra_id = reply_strdup(eid)))
                                        err = CANOPY_ERR_NOMEM;
                                else
                                        out[i].state = CANOPY_MEMBER_EXPORTED;
                        }
                }
                free_replies(rep, k);
        }
        for (size_t j = 0; j < k; j++)
                free(argv[4 * j + 1]);
out:
        for (size_t i = 0; anchors && i < n; i++)
                free(anchors[i].data);
        free(anchors);
        free(argv);
        free(rep);
        free(idx);
        free(have);
        return err;
}

canopy_err canopy_state_members_resolve(canopy_state *st, const char *connector, char *const *refs, size_t n,
                                        canopy_member_res *out) {
        memset(out, 0, n * sizeof(*out));
        canopy_err err = CANOPY_OK;
        for (size_t off = 0; off < n && !err; off += RESOLVE_CHUNK)
                err = resolve_chunk(st, connector, refs + off, n - off < RESOLVE_CHUNK ? n - off : RESOLVE_CHUNK,
                                    out + off);
        if (err)
                canopy_member_res_clear(out, n);
        return err;
}
