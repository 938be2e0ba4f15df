/* checkpoint.c: producer positions, object map and member sets in Redis,
 * with writes staged in memory until the producer commits (after Kafka
 * confirmed delivery). See canopy/checkpoint.h. */
#include "canopy/checkpoint.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_conn.h"

#define MAX_ATTRS 16 /* distinct member attributes tracked (member, uniqueMember, ...) */

enum skind { S_OBJ = 1, S_MEM, S_POS };

typedef struct staged {
        struct staged *next;  /* hash chain */
        struct staged *onext; /* insertion order */
        int kind;
        canopy_bytes key;     /* oid (S_OBJ), attr NUL oid (S_MEM), name (S_POS) */
        bool deleted;
        bool sealed;          /* part of the batch canopy_checkpoint_seal() closed */
        canopy_ckpt_object obj;
        canopy_bytes *values; /* S_MEM values; S_POS: values[0] */
        size_t nvalues;
} staged;

struct canopy_checkpoint {
        rconn *rc;
        char *prefix;
        char *connector;
        staged **tab;
        size_t tabsize;
        size_t nstaged;
        staged *ohead, *otail;
        char *attrs[MAX_ATTRS];
        size_t nattrs;
        char errstr[256];
};

static uint64_t fnv(int kind, const void *p, size_t n) {
        uint64_t h = 1469598103934665603ull ^ (uint64_t)kind;
        const unsigned char *s = p;
        for (size_t i = 0; i < n; i++) {
                h ^= s[i];
                h *= 1099511628211ull;
        }
        return h;
}

static void hexenc(const void *p, size_t n, char *out) {
        static const char hx[] = "0123456789abcdef";
        const unsigned char *s = p;
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = hx[s[i] >> 4];
                out[2 * i + 1] = hx[s[i] & 15];
        }
        out[2 * n] = 0;
}

static int hexdec(const char *s, size_t n, uint8_t *out) {
        if (n % 2)
                return -1;
        for (size_t i = 0; i < n / 2; i++) {
                int v = 0;
                for (int k = 0; k < 2; k++) {
                        char c = s[2 * i + (size_t)k];
                        int d = isdigit((unsigned char)c) ? c - '0'
                                : (c >= 'a' && c <= 'f')  ? c - 'a' + 10
                                : (c >= 'A' && c <= 'F')  ? c - 'A' + 10
                                                          : -1;
                        if (d < 0)
                                return -1;
                        v = v * 16 + d;
                }
                out[i] = (uint8_t)v;
        }
        return 0;
}

void canopy_ckpt_object_clear(canopy_ckpt_object *o) {
        if (!o)
                return;
        free(o->anchor.data);
        free(o->object_class);
        free(o->dn);
        memset(o, 0, sizeof(*o));
}

static void staged_free(staged *s) {
        if (!s)
                return;
        free(s->key.data);
        canopy_ckpt_object_clear(&s->obj);
        for (size_t i = 0; i < s->nvalues; i++)
                free(s->values[i].data);
        free(s->values);
        free(s);
}

int canopy_checkpoint_key(const canopy_checkpoint *cp, char *buf, size_t cap, const char *suffix) {
        int n = snprintf(buf, cap, "%s{conn:%s}:%s", cp->prefix, cp->connector, suffix);
        return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

static int valid_connector(const char *id) {
        size_t n = id ? strlen(id) : 0;
        if (n == 0 || n > CANOPY_CHECKPOINT_MAX_CONNECTOR)
                return 0;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)id[i]) && !strchr("._-", id[i]))
                        return 0;
        return 1;
}

canopy_err canopy_checkpoint_new(const canopy_checkpoint_opts *opts, canopy_checkpoint **ret) {
        if (!opts || !ret)
                return CANOPY_ERR_INVALID_ARG;
        if (!valid_connector(opts->connector))
                return CANOPY_ERR_CONFIG;
        canopy_checkpoint *cp = calloc(1, sizeof(*cp));
        if (!cp)
                return CANOPY_ERR_NOMEM;
        cp->prefix = strdup(opts->prefix ? opts->prefix : "canopy:");
        cp->connector = strdup(opts->connector);
        cp->tabsize = 4096;
        cp->tab = calloc(cp->tabsize, sizeof(*cp->tab));
        if (!cp->prefix || !cp->connector || !cp->tab) {
                canopy_checkpoint_free(cp);
                return CANOPY_ERR_NOMEM;
        }
        canopy_err err = rconn_new(opts->host, opts->port, opts->password, opts->timeout_ms, &cp->rc);
        if (err) {
                canopy_checkpoint_free(cp);
                return err;
        }
        *ret = cp;
        return CANOPY_OK;
}

void canopy_checkpoint_discard(canopy_checkpoint *cp) {
        if (!cp)
                return;
        staged *s = cp->ohead;
        while (s) {
                staged *n = s->onext;
                staged_free(s);
                s = n;
        }
        cp->ohead = cp->otail = NULL;
        if (cp->tab)
                memset(cp->tab, 0, cp->tabsize * sizeof(*cp->tab));
        cp->nstaged = 0;
}

void canopy_checkpoint_free(canopy_checkpoint *cp) {
        if (!cp)
                return;
        canopy_checkpoint_discard(cp);
        rconn_free(cp->rc);
        free(cp->tab);
        free(cp->prefix);
        free(cp->connector);
        for (size_t i = 0; i < cp->nattrs; i++)
                free(cp->attrs[i]);
        free(cp);
}

const char *canopy_checkpoint_errstr(const canopy_checkpoint *cp) {
        if (!cp)
                return "";
        if (cp->errstr[0])
                return cp->errstr;
        return cp->rc ? cp->rc->errstr : "";
}

size_t canopy_checkpoint_staged(const canopy_checkpoint *cp) {
        return cp ? cp->nstaged : 0;
}

static canopy_err set_err(canopy_checkpoint *cp, redisReply *r, const char *what) {
        if (!r) {
                snprintf(cp->errstr, sizeof(cp->errstr), "%s: %.200s", what, cp->rc->errstr);
                return CANOPY_ERR_REDIS_UNREACHABLE;
        }
        snprintf(cp->errstr, sizeof(cp->errstr), "%s: %s", what,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type");
        freeReplyObject(r);
        return CANOPY_ERR_REDIS;
}

/* ---- staging map ---- */

static staged *find(canopy_checkpoint *cp, int kind, const void *key, size_t klen) {
        size_t b = fnv(kind, key, klen) % cp->tabsize;
        for (staged *s = cp->tab[b]; s; s = s->next)
                if (s->kind == kind && s->key.len == klen && !memcmp(s->key.data, key, klen))
                        return s;
        return NULL;
}

/* Return the staged slot for key, created empty (or reset) if needed. */
static staged *slot(canopy_checkpoint *cp, int kind, const void *key, size_t klen) {
        staged *s = find(cp, kind, key, klen);
        if (s) {
                /* a newer value: it belongs to the open batch now */
                s->sealed = false;
                canopy_ckpt_object_clear(&s->obj);
                for (size_t i = 0; i < s->nvalues; i++)
                        free(s->values[i].data);
                free(s->values);
                s->values = NULL;
                s->nvalues = 0;
                s->deleted = false;
                return s;
        }
        s = calloc(1, sizeof(*s));
        if (!s || canopy_bytes_set(&s->key, key, klen)) {
                free(s);
                return NULL;
        }
        s->kind = kind;
        size_t b = fnv(kind, key, klen) % cp->tabsize;
        s->next = cp->tab[b];
        cp->tab[b] = s;
        if (cp->otail)
                cp->otail->onext = s;
        else
                cp->ohead = s;
        cp->otail = s;
        cp->nstaged++;
        return s;
}

static canopy_err obj_copy(canopy_ckpt_object *dst, const canopy_ckpt_object *src) {
        memset(dst, 0, sizeof(*dst));
        if (canopy_bytes_set(&dst->anchor, src->anchor.data, src->anchor.len))
                return CANOPY_ERR_NOMEM;
        dst->object_class = strdup(src->object_class ? src->object_class : "");
        dst->dn = strdup(src->dn ? src->dn : "");
        if (!dst->object_class || !dst->dn) {
                canopy_ckpt_object_clear(dst);
                return CANOPY_ERR_NOMEM;
        }
        return CANOPY_OK;
}

/* Record format in the objects hash: hex(anchor) NUL class NUL dn. */
static char *obj_encode(const canopy_ckpt_object *o, size_t *ret_len) {
        size_t cl = strlen(o->object_class), dl = strlen(o->dn);
        size_t n = o->anchor.len * 2 + 1 + cl + 1 + dl;
        char *buf = malloc(n + 1);
        if (!buf)
                return NULL;
        hexenc(o->anchor.data, o->anchor.len, buf);
        char *p = buf + o->anchor.len * 2;
        *p++ = 0;
        memcpy(p, o->object_class, cl);
        p += cl;
        *p++ = 0;
        memcpy(p, o->dn, dl);
        p[dl] = 0;
        *ret_len = n;
        return buf;
}

static canopy_err obj_decode(const char *s, size_t n, canopy_ckpt_object *o) {
        memset(o, 0, sizeof(*o));
        const char *e1 = memchr(s, 0, n);
        if (!e1)
                return CANOPY_ERR_DECODE;
        const char *e2 = memchr(e1 + 1, 0, n - (size_t)(e1 + 1 - s));
        if (!e2)
                return CANOPY_ERR_DECODE;
        size_t hl = (size_t)(e1 - s);
        o->anchor.data = malloc(hl / 2 + 1);
        if (!o->anchor.data)
                return CANOPY_ERR_NOMEM;
        if (hexdec(s, hl, o->anchor.data)) {
                canopy_ckpt_object_clear(o);
                return CANOPY_ERR_DECODE;
        }
        o->anchor.len = hl / 2;
        o->object_class = strndup(e1 + 1, (size_t)(e2 - e1 - 1));
        o->dn = strndup(e2 + 1, n - (size_t)(e2 + 1 - s));
        if (!o->object_class || !o->dn) {
                canopy_ckpt_object_clear(o);
                return CANOPY_ERR_NOMEM;
        }
        return CANOPY_OK;
}

/* ---- positions ---- */

canopy_err canopy_checkpoint_get_position(canopy_checkpoint *cp, const char *name, canopy_bytes *ret) {
        char key[512], suffix[160];
        snprintf(suffix, sizeof(suffix), "pos:%s", name);
        if (canopy_checkpoint_key(cp, key, sizeof(key), suffix) < 0)
                return CANOPY_ERR_INVALID_ARG;
        redisReply *r = rconn_cmd(cp->rc, "GET %s", key);
        if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL))
                return set_err(cp, r, "GET position");
        if (r->type == REDIS_REPLY_NIL) {
                freeReplyObject(r);
                return CANOPY_ERR_NOT_FOUND;
        }
        canopy_err err = canopy_bytes_set(ret, r->str, r->len);
        freeReplyObject(r);
        return err;
}

canopy_err canopy_checkpoint_stage_position(canopy_checkpoint *cp, const char *name, const void *data,
                                            size_t len) {
        staged *s = slot(cp, S_POS, name, strlen(name));
        if (!s)
                return CANOPY_ERR_NOMEM;
        s->values = calloc(1, sizeof(*s->values));
        if (!s->values || canopy_bytes_set(&s->values[0], data, len))
                return CANOPY_ERR_NOMEM;
        s->nvalues = 1;
        return CANOPY_OK;
}

canopy_err canopy_checkpoint_drop_position(canopy_checkpoint *cp, const char *name) {
        char key[512], suffix[160];
        snprintf(suffix, sizeof(suffix), "pos:%s", name);
        if (canopy_checkpoint_key(cp, key, sizeof(key), suffix) < 0)
                return CANOPY_ERR_INVALID_ARG;
        staged *s = find(cp, S_POS, name, strlen(name));
        if (s)
                s->deleted = true;
        redisReply *r = rconn_cmd(cp->rc, "DEL %s", key);
        if (!r || r->type == REDIS_REPLY_ERROR)
                return set_err(cp, r, "DEL position");
        freeReplyObject(r);
        return CANOPY_OK;
}

/* ---- objects ---- */

canopy_err canopy_checkpoint_object_get(canopy_checkpoint *cp, const void *oid, size_t oidlen,
                                        canopy_ckpt_object *ret) {
        staged *s = find(cp, S_OBJ, oid, oidlen);
        if (s) {
                if (s->deleted)
                        return CANOPY_ERR_NOT_FOUND;
                return obj_copy(ret, &s->obj);
        }
        char key[512];
        canopy_checkpoint_key(cp, key, sizeof(key), "objects");
        redisReply *r = rconn_cmd(cp->rc, "HGET %s %b", key, oid, oidlen);
        if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL))
                return set_err(cp, r, "HGET object");
        if (r->type == REDIS_REPLY_NIL) {
                freeReplyObject(r);
                return CANOPY_ERR_NOT_FOUND;
        }
        canopy_err err = obj_decode(r->str, r->len, ret);
        freeReplyObject(r);
        return err;
}

canopy_err canopy_checkpoint_object_put(canopy_checkpoint *cp, const void *oid, size_t oidlen,
                                        const canopy_ckpt_object *o) {
        staged *s = slot(cp, S_OBJ, oid, oidlen);
        if (!s)
                return CANOPY_ERR_NOMEM;
        return obj_copy(&s->obj, o);
}

static void note_attr(canopy_checkpoint *cp, const char *attr) {
        for (size_t i = 0; i < cp->nattrs; i++)
                if (!strcasecmp(cp->attrs[i], attr))
                        return;
        if (cp->nattrs < MAX_ATTRS) {
                char *a = strdup(attr);
                if (a) {
                        for (char *p = a; *p; p++)
                                *p = (char)tolower((unsigned char)*p);
                        cp->attrs[cp->nattrs++] = a;
                }
        }
}

static canopy_bytes mem_key(const char *attr, const void *oid, size_t oidlen) {
        canopy_bytes k = {0};
        size_t al = strlen(attr);
        k.data = malloc(al + 1 + oidlen);
        if (!k.data)
                return k;
        for (size_t i = 0; i < al; i++)
                k.data[i] = (uint8_t)tolower((unsigned char)attr[i]);
        k.data[al] = 0;
        memcpy(k.data + al + 1, oid, oidlen);
        k.len = al + 1 + oidlen;
        return k;
}

canopy_err canopy_checkpoint_object_del(canopy_checkpoint *cp, const void *oid, size_t oidlen) {
        staged *s = slot(cp, S_OBJ, oid, oidlen);
        if (!s)
                return CANOPY_ERR_NOMEM;
        s->deleted = true;
        for (size_t i = 0; i < cp->nattrs; i++) {
                canopy_bytes k = mem_key(cp->attrs[i], oid, oidlen);
                if (!k.data)
                        return CANOPY_ERR_NOMEM;
                staged *m = slot(cp, S_MEM, k.data, k.len);
                free(k.data);
                if (!m)
                        return CANOPY_ERR_NOMEM;
                m->deleted = true;
        }
        return CANOPY_OK;
}

canopy_err canopy_checkpoint_object_scan(canopy_checkpoint *cp, canopy_ckpt_scan_cb cb, void *arg) {
        char key[512], cursor[32] = "0";
        canopy_checkpoint_key(cp, key, sizeof(key), "objects");
        do {
                redisReply *r = rconn_cmd(cp->rc, "HSCAN %s %s COUNT 1000", key, cursor);
                if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
                        return set_err(cp, r, "HSCAN objects");
                snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
                redisReply *a = r->element[1];
                int stop = 0;
                for (size_t i = 0; i + 1 < a->elements && !stop; i += 2) {
                        canopy_bytes oid = {(uint8_t *)a->element[i]->str, a->element[i]->len};
                        canopy_ckpt_object o;
                        if (obj_decode(a->element[i + 1]->str, a->element[i + 1]->len, &o))
                                continue;
                        stop = cb(arg, &oid, &o);
                        canopy_ckpt_object_clear(&o);
                }
                freeReplyObject(r);
                if (stop)
                        break;
        } while (strcmp(cursor, "0"));
        return CANOPY_OK;
}

canopy_err canopy_checkpoint_object_count(canopy_checkpoint *cp, int64_t *ret) {
        char key[512];
        canopy_checkpoint_key(cp, key, sizeof(key), "objects");
        redisReply *r = rconn_cmd(cp->rc, "HLEN %s", key);
        if (!r || r->type != REDIS_REPLY_INTEGER)
                return set_err(cp, r, "HLEN objects");
        *ret = r->integer;
        freeReplyObject(r);
        return CANOPY_OK;
}

/* ---- member sets ---- */

static int members_rkey(canopy_checkpoint *cp, char *buf, size_t cap, const char *attr, const void *oid,
                        size_t oidlen) {
        char suffix[256];
        char hex[129];
        if (oidlen > 64)
                oidlen = 64;
        hexenc(oid, oidlen, hex);
        char la[64];
        snprintf(la, sizeof(la), "%s", attr);
        for (char *p = la; *p; p++)
                *p = (char)tolower((unsigned char)*p);
        snprintf(suffix, sizeof(suffix), "mv:%s:%s", la, hex);
        return canopy_checkpoint_key(cp, buf, cap, suffix);
}

canopy_err canopy_checkpoint_members_get(canopy_checkpoint *cp, const void *oid, size_t oidlen, const char *attr,
                                         canopy_bytes **ret_values, size_t *ret_n, bool *ret_known) {
        note_attr(cp, attr);
        *ret_values = NULL;
        *ret_n = 0;
        *ret_known = false;
        canopy_bytes k = mem_key(attr, oid, oidlen);
        if (!k.data)
                return CANOPY_ERR_NOMEM;
        staged *s = find(cp, S_MEM, k.data, k.len);
        free(k.data);
        if (s) {
                if (s->deleted)
                        return CANOPY_OK;
                *ret_known = true;
                if (!s->nvalues)
                        return CANOPY_OK;
                canopy_bytes *v = calloc(s->nvalues, sizeof(*v));
                if (!v)
                        return CANOPY_ERR_NOMEM;
                for (size_t i = 0; i < s->nvalues; i++)
                        if (canopy_bytes_set(&v[i], s->values[i].data, s->values[i].len)) {
                                for (size_t j = 0; j < i; j++)
                                        free(v[j].data);
                                free(v);
                                return CANOPY_ERR_NOMEM;
                        }
                *ret_values = v;
                *ret_n = s->nvalues;
                return CANOPY_OK;
        }
        char key[512];
        if (members_rkey(cp, key, sizeof(key), attr, oid, oidlen) < 0)
                return CANOPY_ERR_INVALID_ARG;
        redisReply *r = rconn_cmd(cp->rc, "SMEMBERS %s", key);
        if (!r || r->type != REDIS_REPLY_ARRAY)
                return set_err(cp, r, "SMEMBERS");
        /* The set always holds a marker "\0" so that an empty group is known. */
        size_t n = 0;
        canopy_bytes *v = r->elements ? calloc(r->elements, sizeof(*v)) : NULL;
        if (r->elements && !v) {
                freeReplyObject(r);
                return CANOPY_ERR_NOMEM;
        }
        for (size_t i = 0; i < r->elements; i++) {
                redisReply *e = r->element[i];
                if (e->len == 1 && e->str[0] == 0) {
                        *ret_known = true;
                        continue;
                }
                if (canopy_bytes_set(&v[n], e->str, e->len))
                        break;
                n++;
        }
        if (n)
                *ret_known = true;
        freeReplyObject(r);
        *ret_values = v;
        *ret_n = n;
        return CANOPY_OK;
}

canopy_err canopy_checkpoint_members_put(canopy_checkpoint *cp, const void *oid, size_t oidlen, const char *attr,
                                         const canopy_bytes *values, size_t n) {
        if (n > CANOPY_CHECKPOINT_MAX_MEMBERS)
                return CANOPY_ERR_LIMIT;
        note_attr(cp, attr);
        canopy_bytes k = mem_key(attr, oid, oidlen);
        if (!k.data)
                return CANOPY_ERR_NOMEM;
        staged *s = slot(cp, S_MEM, k.data, k.len);
        free(k.data);
        if (!s)
                return CANOPY_ERR_NOMEM;
        if (n) {
                s->values = calloc(n, sizeof(*s->values));
                if (!s->values)
                        return CANOPY_ERR_NOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                if (canopy_bytes_set(&s->values[i], values[i].data, values[i].len))
                        return CANOPY_ERR_NOMEM;
                s->nvalues = i + 1;
        }
        return CANOPY_OK;
}

/* ---- commit ---- */

typedef struct pipe {
        canopy_checkpoint *cp;
        size_t sent;
        canopy_err err;
} pipe_t;

static void pipe_cmd(pipe_t *p, int argc, const char **argv, const size_t *argvlen) {
        if (p->err)
                return;
        p->err = rconn_append(p->cp->rc, argc, argv, argvlen);
        if (!p->err)
                p->sent++;
}

static void commit_members(pipe_t *p, staged *s) {
        char key[512];
        const char *attr = (const char *)s->key.data;
        size_t al = strlen(attr);
        const uint8_t *oid = s->key.data + al + 1;
        size_t oidlen = s->key.len - al - 1;
        if (members_rkey(p->cp, key, sizeof(key), attr, oid, oidlen) < 0) {
                p->err = CANOPY_ERR_INVALID_ARG;
                return;
        }
        const char *dv[2] = {"DEL", key};
        size_t dl[2] = {3, strlen(key)};
        pipe_cmd(p, 2, dv, dl);
        if (s->deleted)
                return;
        enum { CHUNK = 1000 };
        const char *av[CHUNK + 3];
        size_t alen[CHUNK + 3];
        av[0] = "SADD";
        alen[0] = 4;
        av[1] = key;
        alen[1] = strlen(key);
        static const char nul[1] = {0};
        av[2] = nul; /* the "\0" marker: the set exists even when empty */
        alen[2] = 1;
        int argc = 3;
        for (size_t i = 0; i < s->nvalues; i++) {
                av[argc] = (const char *)s->values[i].data;
                alen[argc] = s->values[i].len;
                argc++;
                if (argc == CHUNK + 3) {
                        pipe_cmd(p, argc, av, alen);
                        argc = 2;
                }
        }
        if (argc > 2)
                pipe_cmd(p, argc, av, alen);
}

/* Unlink and free every staged entry (sealed_only: only the sealed ones). */
static void drop_staged(canopy_checkpoint *cp, bool sealed_only) {
        if (!sealed_only) {
                canopy_checkpoint_discard(cp);
                return;
        }
        staged *prev = NULL, *s = cp->ohead;
        while (s) {
                staged *next = s->onext;
                if (!s->sealed) {
                        prev = s;
                        s = next;
                        continue;
                }
                size_t b = fnv(s->kind, s->key.data, s->key.len) % cp->tabsize;
                for (staged **pp = &cp->tab[b]; *pp; pp = &(*pp)->next)
                        if (*pp == s) {
                                *pp = s->next;
                                break;
                        }
                if (prev)
                        prev->onext = next;
                else
                        cp->ohead = next;
                if (cp->otail == s)
                        cp->otail = prev;
                cp->nstaged--;
                staged_free(s);
                s = next;
        }
}

void canopy_checkpoint_seal(canopy_checkpoint *cp) {
        for (staged *s = cp->ohead; s; s = s->onext)
                s->sealed = true;
}

bool canopy_checkpoint_has_sealed(const canopy_checkpoint *cp) {
        for (const staged *s = cp->ohead; s; s = s->onext)
                if (s->sealed)
                        return true;
        return false;
}

static canopy_err commit_filtered(canopy_checkpoint *cp, bool sealed_only);

canopy_err canopy_checkpoint_commit(canopy_checkpoint *cp) {
        return commit_filtered(cp, false);
}

canopy_err canopy_checkpoint_commit_sealed(canopy_checkpoint *cp) {
        return commit_filtered(cp, true);
}

static canopy_err commit_filtered(canopy_checkpoint *cp, bool sealed_only) {
        if (!cp->ohead)
                return CANOPY_OK;
        pipe_t p = {cp, 0, CANOPY_OK};
        char okey[512];
        canopy_checkpoint_key(cp, okey, sizeof(okey), "objects");
        const char *mv[1] = {"MULTI"};
        size_t ml[1] = {5};
        pipe_cmd(&p, 1, mv, ml);
        /* Objects and member sets first, in staging order; positions last. */
        for (int pass = 0; pass < 2; pass++) {
                for (staged *s = cp->ohead; s && !p.err; s = s->onext) {
                        if ((pass == 0) == (s->kind == S_POS))
                                continue;
                        if (sealed_only && !s->sealed)
                                continue;
                        if (s->kind == S_OBJ) {
                                if (s->deleted) {
                                        const char *av[3] = {"HDEL", okey, (const char *)s->key.data};
                                        size_t al[3] = {4, strlen(okey), s->key.len};
                                        pipe_cmd(&p, 3, av, al);
                                } else {
                                        size_t vl;
                                        char *v = obj_encode(&s->obj, &vl);
                                        if (!v) {
                                                p.err = CANOPY_ERR_NOMEM;
                                                break;
                                        }
                                        const char *av[4] = {"HSET", okey, (const char *)s->key.data, v};
                                        size_t al[4] = {4, strlen(okey), s->key.len, vl};
                                        pipe_cmd(&p, 4, av, al);
                                        free(v);
                                }
                        } else if (s->kind == S_MEM) {
                                commit_members(&p, s);
                        } else if (s->kind == S_POS && !s->deleted) {
                                char key[512], suffix[160];
                                snprintf(suffix, sizeof(suffix), "pos:%.*s", (int)s->key.len,
                                         (const char *)s->key.data);
                                canopy_checkpoint_key(cp, key, sizeof(key), suffix);
                                const char *av[3] = {"SET", key, (const char *)s->values[0].data};
                                size_t al[3] = {3, strlen(key), s->values[0].len};
                                pipe_cmd(&p, 3, av, al);
                        }
                }
        }
        const char *ev[1] = {"EXEC"};
        size_t el[1] = {4};
        pipe_cmd(&p, 1, ev, el);
        /* Read every reply that was sent, even after an error, to keep the
         * connection in step; a transport error drops the connection. */
        canopy_err err = p.err;
        for (size_t i = 0; i < p.sent; i++) {
                redisReply *r = rconn_read(cp->rc);
                if (!r) {
                        snprintf(cp->errstr, sizeof(cp->errstr), "commit: %.200s", cp->rc->errstr);
                        err = CANOPY_ERR_REDIS_UNREACHABLE;
                        break;
                }
                if (r->type == REDIS_REPLY_ERROR && !err) {
                        snprintf(cp->errstr, sizeof(cp->errstr), "commit: %s", r->str);
                        err = CANOPY_ERR_REDIS;
                }
                if (i == p.sent - 1 && !err && r->type != REDIS_REPLY_ARRAY) {
                        snprintf(cp->errstr, sizeof(cp->errstr), "commit: transaction aborted");
                        err = CANOPY_ERR_REDIS;
                }
                freeReplyObject(r);
        }
        if (err && p.err && cp->rc->c) {
                /* a partly sent MULTI must not stay open on the connection */
                redisReply *r = rconn_cmd(cp->rc, "DISCARD");
                if (r)
                        freeReplyObject(r);
        }
        if (!err)
                drop_staged(cp, sealed_only);
        return err;
}

/* ---- flags ---- */

canopy_err canopy_checkpoint_flag_set(canopy_checkpoint *cp, const char *name) {
        char key[512], suffix[160];
        snprintf(suffix, sizeof(suffix), "flag:%s", name);
        canopy_checkpoint_key(cp, key, sizeof(key), suffix);
        redisReply *r = rconn_cmd(cp->rc, "SET %s 1", key);
        if (!r || r->type == REDIS_REPLY_ERROR)
                return set_err(cp, r, "SET flag");
        freeReplyObject(r);
        return CANOPY_OK;
}

canopy_err canopy_checkpoint_flag_test(canopy_checkpoint *cp, const char *name, bool *ret_set) {
        char key[512], suffix[160];
        snprintf(suffix, sizeof(suffix), "flag:%s", name);
        canopy_checkpoint_key(cp, key, sizeof(key), suffix);
        redisReply *r = rconn_cmd(cp->rc, "EXISTS %s", key);
        if (!r || r->type != REDIS_REPLY_INTEGER)
                return set_err(cp, r, "EXISTS flag");
        *ret_set = r->integer > 0;
        freeReplyObject(r);
        return CANOPY_OK;
}

canopy_err canopy_checkpoint_flag_take(canopy_checkpoint *cp, const char *name, bool *ret_was_set) {
        char key[512], suffix[160];
        snprintf(suffix, sizeof(suffix), "flag:%s", name);
        canopy_checkpoint_key(cp, key, sizeof(key), suffix);
        redisReply *r = rconn_cmd(cp->rc, "DEL %s", key);
        if (!r || r->type != REDIS_REPLY_INTEGER)
                return set_err(cp, r, "DEL flag");
        *ret_was_set = r->integer > 0;
        freeReplyObject(r);
        return CANOPY_OK;
}
