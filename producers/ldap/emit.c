/* emit.c: from LDAP entries to ChangeEvents on Kafka, and checkpoints.
 *
 * One entry becomes one event (or, when an attribute holds more than
 * CANOPY_ATTR_MAX_VALUES values, one event plus continuation chunks). The
 * object map in Redis (object id -> anchor, class, DN) gives the operation
 * (add / modify / rename), prev_dn, the sticky anchor and deletes; the
 * member sets give deltas where the directory only sends full values. All
 * Redis writes are staged and committed with the position only after Kafka
 * acknowledged every event (prod_checkpoint). */
#include <ctype.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/avro.h"
#include "canopy/log.h"
#include "ldap_util.h"
#include "producer.h"

int64_t prod_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static canopy_log_ctx ctx_anchor(prod *p, const canopy_bytes *anchor, char *buf, size_t cap) {
        canopy_log_ctx c = CANOPY_LOG_CTX_NONE;
        c.connector = p->cf->connector;
        if (anchor && anchor->len && cap > 2 * anchor->len) {
                for (size_t i = 0; i < anchor->len; i++)
                        snprintf(buf + 2 * i, 3, "%02x", anchor->data[i]);
                c.anchor = buf;
        }
        return c;
}

/* ---- oidset ---- */

static uint64_t hash_bytes(const void *p, size_t n) {
        const unsigned char *s = p;
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < n; i++) {
                h ^= s[i];
                h *= 1099511628211ull;
        }
        return h;
}

static int oidset_grow(oidset *s) {
        size_t ncap = s->cap ? s->cap * 2 : 1024;
        canopy_bytes *ns = calloc(ncap, sizeof(*ns));
        if (!ns)
                return -1;
        for (size_t i = 0; i < s->cap; i++) {
                if (!s->slots[i].data)
                        continue;
                size_t j = hash_bytes(s->slots[i].data, s->slots[i].len) & (ncap - 1);
                while (ns[j].data)
                        j = (j + 1) & (ncap - 1);
                ns[j] = s->slots[i];
        }
        free(s->slots);
        s->slots = ns;
        s->cap = ncap;
        return 0;
}

bool oidset_has(const oidset *s, const void *p, size_t n) {
        if (!s->cap)
                return false;
        size_t j = hash_bytes(p, n) & (s->cap - 1);
        while (s->slots[j].data) {
                if (s->slots[j].len == n && !memcmp(s->slots[j].data, p, n))
                        return true;
                j = (j + 1) & (s->cap - 1);
        }
        return false;
}

int oidset_add(oidset *s, const void *p, size_t n) {
        if (oidset_has(s, p, n))
                return 0;
        if (s->n >= SEEN_MAX)
                return -1;
        if ((s->n + 1) * 2 > s->cap && oidset_grow(s))
                return -1;
        size_t j = hash_bytes(p, n) & (s->cap - 1);
        while (s->slots[j].data)
                j = (j + 1) & (s->cap - 1);
        if (canopy_bytes_set(&s->slots[j], p, n))
                return -1;
        s->n++;
        return 0;
}

void oidset_clear(oidset *s) {
        for (size_t i = 0; i < s->cap; i++)
                free(s->slots[i].data);
        free(s->slots);
        memset(s, 0, sizeof(*s));
}

/* ---- delivery ---- */

void prod_delivery_cb(void *msg_opaque, canopy_err err, const char *errstr, int32_t partition, int64_t offset,
                      void *app_opaque) {
        prod *p = app_opaque;
        p->outstanding[((uintptr_t)msg_opaque - 1) & 1]--;
        (void)partition;
        (void)offset;
        if (err) {
                if (!p->failed)
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "Kafka did not accept an event: %s (%s)",
                                   errstr ? errstr : "", canopy_err_name(err));
                p->failed++;
        } else {
                p->acked++;
        }
}

canopy_err prod_alive(prod *p) {
        if (*p->stop)
                return CANOPY_ERR_SHUTDOWN;
        if (!canopy_lease_held(p->lease))
                return CANOPY_ERR_LEASE_LOST;
        return CANOPY_OK;
}

/* ---- values ---- */

typedef struct vals {
        canopy_bytes *v;
        size_t n, cap;
} vals;

static canopy_err vals_push(vals *a, const void *d, size_t n) {
        if (a->n == a->cap) {
                size_t nc = a->cap ? a->cap * 2 : 8;
                canopy_bytes *nv = realloc(a->v, nc * sizeof(*nv));
                if (!nv)
                        return CANOPY_ERR_NOMEM;
                a->v = nv;
                a->cap = nc;
        }
        a->v[a->n].data = NULL;
        a->v[a->n].len = 0;
        canopy_err err = canopy_bytes_set(&a->v[a->n], d, n);
        if (!err)
                a->n++;
        return err;
}

static void vals_free(vals *a) {
        for (size_t i = 0; i < a->n; i++)
                free(a->v[i].data);
        free(a->v);
        memset(a, 0, sizeof(*a));
}

typedef struct tattr {
        char name[128]; /* lower-case base name, options stripped */
        bool binary;
        bool has_full, has_delta;
        vals full, add, del;
} tattr;

typedef struct tentry {
        tattr *a;
        size_t n, cap;
} tentry;

static tattr *tentry_get(tentry *t, const char *name) {
        for (size_t i = 0; i < t->n; i++)
                if (!strcmp(t->a[i].name, name))
                        return &t->a[i];
        if (t->n >= CANOPY_EVENT_MAX_ATTRS)
                return NULL;
        if (t->n == t->cap) {
                size_t nc = t->cap ? t->cap * 2 : 32;
                tattr *na = realloc(t->a, nc * sizeof(*na));
                if (!na)
                        return NULL;
                t->a = na;
                t->cap = nc;
        }
        tattr *a = &t->a[t->n++];
        memset(a, 0, sizeof(*a));
        snprintf(a->name, sizeof(a->name), "%s", name);
        return a;
}

static void tentry_free(tentry *t) {
        for (size_t i = 0; i < t->n; i++) {
                vals_free(&t->a[i].full);
                vals_free(&t->a[i].add);
                vals_free(&t->a[i].del);
        }
        free(t->a);
        memset(t, 0, sizeof(*t));
}

static const tattr *tentry_find(const tentry *t, const char *name) {
        for (size_t i = 0; i < t->n; i++)
                if (!strcmp(t->a[i].name, name))
                        return &t->a[i];
        return NULL;
}

static const canopy_bytes *first_val(const tentry *t, const char *name) {
        const tattr *a = tentry_find(t, name);
        if (!a)
                return NULL;
        if (a->full.n)
                return &a->full.v[0];
        if (a->add.n)
                return &a->add.v[0];
        return NULL;
}

static bool binary_attr(const char *name) {
        static const char *const b[] = {"objectguid", "objectsid", "ms-ds-consistencyguid", "jpegphoto",
                                        "thumbnailphoto", "usercertificate", "usercertificate;binary",
                                        "tokengroups", "sidhistory", "msexchmailboxguid", "photo", NULL};
        for (size_t i = 0; b[i]; i++)
                if (!strcmp(name, b[i]))
                        return true;
        return false;
}

static void lower(char *s) {
        for (; *s; s++)
                *s = (char)tolower((unsigned char)*s);
}

static bool in_attrs(const prod *p, const char *name) {
        for (size_t i = 0; p->attrs && p->attrs[i]; i++)
                if (!strcasecmp(p->attrs[i], name))
                        return true;
        return false;
}

/* Ranged retrieval: read the rest of attr starting at value `start`. */
static canopy_err fetch_range(prod *p, const char *dn, const char *base, long start, vals *out) {
        canopy_log(CANOPY_LOG_DEBUG, MOD, NULL, "ranged retrieval of %s of %s from value %ld", base, dn, start);
        for (unsigned round = 0; round < RANGE_MAX_ROUNDS; round++) {
                char an[200];
                snprintf(an, sizeof(an), "%s;range=%ld-*", base, start);
                char *attrs[] = {an, NULL};
                LDAPMessage *res = NULL;
                int rc = ldap_search_ext_s(p->ld, dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, NULL,
                                           1, &res);
                if (rc != LDAP_SUCCESS) {
                        ldap_msgfree(res);
                        return prod_ldap_err(p, rc, "ranged retrieval");
                }
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                BerElement *ber = NULL;
                long hi = -1;
                bool got = false;
                for (char *a = e ? ldap_first_attribute(p->ld, e, &ber) : NULL; a;
                     a = ldap_next_attribute(p->ld, e, ber)) {
                        char b[128];
                        long lo2, hi2;
                        bool ranged;
                        canopy_ldap_attr_name(a, b, sizeof(b), &lo2, &hi2, &ranged);
                        if (!strcasecmp(b, base)) {
                                struct berval **v = ldap_get_values_len(p->ld, e, a);
                                for (size_t i = 0; v && v[i]; i++)
                                        if (vals_push(out, v[i]->bv_val, v[i]->bv_len)) {
                                                ldap_value_free_len(v);
                                                ldap_memfree(a);
                                                ber_free(ber, 0);
                                                ldap_msgfree(res);
                                                return CANOPY_ERR_NOMEM;
                                        }
                                ldap_value_free_len(v);
                                hi = ranged ? hi2 : -1;
                                got = true;
                        }
                        ldap_memfree(a);
                }
                ber_free(ber, 0);
                ldap_msgfree(res);
                if (!got || hi < 0)
                        return CANOPY_OK;
                start = hi + 1;
        }
        return CANOPY_ERR_LIMIT;
}

static canopy_err collect(prod *p, LDAPMessage *e, const char *dn, entry_kind kind, bool dirsync_read, tentry *t) {
        BerElement *ber = NULL;
        canopy_err err = CANOPY_OK;
        for (char *a = ldap_first_attribute(p->ld, e, &ber); a && !err; a = ldap_next_attribute(p->ld, e, ber)) {
                char base[128];
                long lo, hi;
                bool ranged;
                canopy_ldap_attr_name(a, base, sizeof(base), &lo, &hi, &ranged);
                tattr *ta = tentry_get(t, base);
                if (!ta) {
                        ldap_memfree(a);
                        err = CANOPY_ERR_LIMIT;
                        break;
                }
                struct berval **v = ldap_get_values_len(p->ld, e, a);
                vals *dst;
                /* DirSync with incremental values names the values present
                 * "attr;range=1-1" and those removed "attr;range=0-0": not
                 * a ranged result to read on. In the initial read (a
                 * complete image) the present ones are the whole set. */
                bool marker = dirsync_read && ranged && lo == hi && (lo == 0 || lo == 1);
                bool incremental = marker && kind == ENTRY_DIRSYNC_DELTA;
                if (marker && !incremental && lo == 0) {
                        ldap_value_free_len(v);
                        ldap_memfree(a);
                        continue;
                }
                if (incremental) {
                        dst = lo == 1 ? &ta->add : &ta->del;
                        ta->has_delta = true;
                } else {
                        dst = &ta->full;
                        ta->has_full = true;
                }
                for (size_t i = 0; v && v[i] && !err; i++)
                        err = vals_push(dst, v[i]->bv_val, v[i]->bv_len);
                ldap_value_free_len(v);
                if (!err && ranged && !marker && hi >= 0)
                        err = fetch_range(p, dn, base, hi + 1, &ta->full);
                ldap_memfree(a);
        }
        ber_free(ber, 0);
        if (err)
                return err;
        /* Samba's DirSync returns an object's RDN value as `name` and not as
         * `cn` (a rename changes `name`): give the rules their [cn]. */
        const tattr *nm = dirsync_read ? tentry_find(t, "name") : NULL;
        if (nm && nm->has_full && !tentry_find(t, "cn") && in_attrs(p, "cn") && !strncasecmp(dn ? dn : "", "cn=", 3)) {
                tattr *cn = tentry_get(t, "cn");
                nm = tentry_find(t, "name"); /* tentry_get may have moved it */
                if (!cn)
                        return CANOPY_ERR_LIMIT;
                cn->has_full = true;
                for (size_t j = 0; j < nm->full.n && !err; j++)
                        err = vals_push(&cn->full, nm->full.v[j].data, nm->full.v[j].len);
                if (err)
                        return err;
        }
        for (size_t i = 0; i < t->n; i++) {
                tattr *ta = &t->a[i];
                ta->binary = binary_attr(ta->name);
                vals *all[3] = {&ta->full, &ta->add, &ta->del};
                for (int k = 0; k < 3 && !ta->binary; k++)
                        for (size_t j = 0; j < all[k]->n && !ta->binary; j++)
                                if (!canopy_ldap_valid_utf8(all[k]->v[j].data, all[k]->v[j].len))
                                        ta->binary = true;
        }
        return CANOPY_OK;
}

static bool in_list(char **list, const char *v, size_t vlen) {
        for (size_t i = 0; list && list[i]; i++)
                if (strlen(list[i]) == vlen && !strncasecmp(list[i], v, vlen))
                        return true;
        return false;
}

static const char *map_class(prod *p, const tattr *oc) {
        bool user = false, group = false, contact = false, computer = false;
        for (size_t i = 0; i < oc->full.n; i++) {
                const char *v = (const char *)oc->full.v[i].data;
                size_t l = oc->full.v[i].len;
                if (l == 8 && !strncasecmp(v, "computer", 8))
                        computer = true;
                if (in_list(p->cf->user_classes, v, l))
                        user = true;
                if (in_list(p->cf->group_classes, v, l))
                        group = true;
                if (in_list(p->cf->contact_classes, v, l))
                        contact = true;
        }
        if (group)
                return "group";
        if (contact)
                return "contact";
        if (user && !computer)
                return "user";
        return NULL;
}

static bool same_dn(const char *a, const char *b) {
        if (!a || !b)
                return false;
        if (!strcasecmp(a, b))
                return true;
        char *na = NULL, *nb = NULL;
        ldap_dn_normalize(a, LDAP_DN_FORMAT_LDAPV3, &na, LDAP_DN_FORMAT_LDAPV3);
        ldap_dn_normalize(b, LDAP_DN_FORMAT_LDAPV3, &nb, LDAP_DN_FORMAT_LDAPV3);
        bool same = na && nb && !strcasecmp(na, nb);
        ldap_memfree(na);
        ldap_memfree(nb);
        return same;
}

/* ---- publishing ---- */

/* Publish ev to changes, by its key (partition < 0) or to one partition. */
static canopy_err produce_to(prod *p, canopy_change_event *ev, int32_t partition) {
        canopy_err err = prod_alive(p);
        if (err)
                return err;
        ev->seq = p->seq++;
        char errbuf[CANOPY_AVRO_ERRLEN];
        for (int attempt = 0;; attempt++) {
                void *op = (void *)(uintptr_t)(p->gen + 1);
                err = partition < 0 ? canopy_kafka_produce_change(p->kp, ev, op, errbuf, sizeof(errbuf))
                                    : canopy_kafka_produce_change_to(p->kp, ev, partition, op, errbuf, sizeof(errbuf));
                if (err != CANOPY_ERR_KAFKA || attempt > 600)
                        break;
                /* local queue full: serve delivery reports and retry */
                canopy_kafka_producer_poll(p->kp, 100);
                if ((err = prod_alive(p)))
                        return err;
        }
        if (!err) {
                p->outstanding[p->gen & 1]++;
                p->produced++;
                p->since_ckpt++;
                canopy_metrics_add(p->m_events, CANOPY_LABELS(canopy_op_name(ev->op)), 1);
                return CANOPY_OK;
        }
        if (canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT) {
                char hex[2 * OID_MAX + 1];
                canopy_log_ctx c = ctx_anchor(p, &ev->anchor, hex, sizeof(hex));
                canopy_log(CANOPY_LOG_ERROR, MOD, &c, "event for %s not published: %s (%s)", ev->dn ? ev->dn : "-",
                           errbuf, canopy_err_name(err));
                canopy_metrics_add(p->m_errors, CANOPY_LABELS(canopy_err_name(err)), 1);
                return CANOPY_OK;
        }
        return err;
}

static canopy_err produce_one(prod *p, canopy_change_event *ev) {
        return produce_to(p, ev, -1);
}

/* A piece of an oversized attribute that travels in a continuation chunk. */
typedef struct piece {
        size_t attr;   /* index in tentry */
        int which;     /* 0 full remainder (as added), 1 added, 2 removed */
        size_t start, count;
} piece;

/* Fill an event attribute from ta. When every value fits in this event the
 * value arrays are moved, not copied (ta is left empty): most attributes of
 * most objects, and half the allocations of a bulk read. */
static canopy_err fill_attr(canopy_attr *ea, tattr *ta, bool as_delta, size_t cap_full, size_t cap_add,
                            size_t cap_del) {
        canopy_err err = CANOPY_OK;
        if (!as_delta) {
                if (ta->full.n <= cap_full && !ea->nvalues) {
                        ea->values = ta->full.v;
                        ea->nvalues = ta->full.n;
                        memset(&ta->full, 0, sizeof(ta->full));
                        return CANOPY_OK;
                }
                for (size_t i = 0; i < ta->full.n && i < cap_full && !err; i++)
                        err = canopy_attr_add_value(ea, ta->full.v[i].data, ta->full.v[i].len);
                return err;
        }
        ea->delta = true;
        if (ta->add.n <= cap_add && ta->del.n <= cap_del && !ea->nadded && !ea->nremoved) {
                ea->added = ta->add.v;
                ea->nadded = ta->add.n;
                ea->removed = ta->del.v;
                ea->nremoved = ta->del.n;
                memset(&ta->add, 0, sizeof(ta->add));
                memset(&ta->del, 0, sizeof(ta->del));
                return CANOPY_OK;
        }
        for (size_t i = 0; i < ta->add.n && i < cap_add && !err; i++)
                err = canopy_attr_add_delta(ea, true, ta->add.v[i].data, ta->add.v[i].len);
        for (size_t i = 0; i < ta->del.n && i < cap_del && !err; i++)
                err = canopy_attr_add_delta(ea, false, ta->del.v[i].data, ta->del.v[i].len);
        return err;
}

/* Bytes of attribute values one event carries at most: Kafka's default
 * message.max.bytes is 1,000,000 (client and broker), and an event over it
 * is refused whole. Big multi-valued attributes (a group of 5,000 members
 * with 250-byte DNs is 1.25 MB) go in pieces of fewer values. */
#define EVENT_VALUE_BYTES (512u * 1024u)

static size_t vals_max_len(const vals *v) {
        size_t m = 0;
        for (size_t i = 0; i < v->n; i++)
                if (v->v[i].len > m)
                        m = v->v[i].len;
        return m;
}

/* Values per event for each attribute of t: CANOPY_ATTR_MAX_VALUES, fewer
 * when their bytes would pass EVENT_VALUE_BYTES (shared by the big
 * attributes of the first event; each continuation piece holds one). */
static void value_caps(const tentry *t, size_t *caps) {
        size_t nbig = 0;
        for (size_t i = 0; i < t->n; i++) {
                const tattr *ta = &t->a[i];
                size_t n = ta->full.n + ta->add.n + ta->del.n;
                size_t per = 16 + vals_max_len(&ta->full);
                size_t pa = 16 + vals_max_len(&ta->add), pd = 16 + vals_max_len(&ta->del);
                if (pa > per)
                        per = pa;
                if (pd > per)
                        per = pd;
                caps[i] = per; /* bytes per value, for now */
                if (n * per > EVENT_VALUE_BYTES / 16)
                        nbig++;
        }
        size_t budget = EVENT_VALUE_BYTES / (nbig ? nbig : 1);
        for (size_t i = 0; i < t->n; i++) {
                size_t c = budget / caps[i];
                caps[i] = c < 1 ? 1 : c > CANOPY_ATTR_MAX_VALUES ? CANOPY_ATTR_MAX_VALUES : c;
        }
}

/* Build and publish the event(s) of one object change. as_delta[i]: attr i
 * travels as a delta. */
static canopy_err publish(prod *p, canopy_change_event *head, tentry *t, const bool *as_delta) {
        piece *pieces = NULL;
        size_t npieces = 0, pcap = 0;
        canopy_err err = CANOPY_OK;
        size_t *caps = calloc(t->n ? t->n : 1, sizeof(*caps));
        if (!caps)
                return CANOPY_ERR_NOMEM;
        value_caps(t, caps);
        for (size_t i = 0; i < t->n && !err; i++) {
                const size_t MAXV = caps[i];
                tattr *ta = &t->a[i];
                canopy_attr *ea = canopy_change_event_add_attr(head, ta->name, ta->binary);
                if (!ea) {
                        err = CANOPY_ERR_NOMEM;
                        break;
                }
                size_t cf = MAXV, ca = MAXV, cd = 0;
                if (as_delta[i]) {
                        ca = ta->add.n < MAXV ? ta->add.n : MAXV;
                        cd = ta->add.n < MAXV ? MAXV - ta->add.n : 0;
                        if (cd > ta->del.n)
                                cd = ta->del.n;
                } else if (ta->full.n <= MAXV) {
                        cf = ta->full.n;
                }
                err = fill_attr(ea, ta, as_delta[i], cf, ca, cd);
                /* the rest in continuation pieces of at most MAXV values */
                struct rest_s {
                        int which;
                        size_t from, total;
                } rest[3];
                int nrest = 0;
                if (!as_delta[i] && ta->full.n > MAXV)
                        rest[nrest++] = (struct rest_s){0, MAXV, ta->full.n};
                if (as_delta[i] && ta->add.n > ca)
                        rest[nrest++] = (struct rest_s){1, ca, ta->add.n};
                if (as_delta[i] && ta->del.n > cd)
                        rest[nrest++] = (struct rest_s){2, cd, ta->del.n};
                for (int r = 0; r < nrest && !err; r++)
                        for (size_t s = rest[r].from; s < rest[r].total; s += MAXV) {
                                if (npieces == pcap) {
                                        pcap = pcap ? pcap * 2 : 8;
                                        piece *np = realloc(pieces, pcap * sizeof(*np));
                                        if (!np) {
                                                err = CANOPY_ERR_NOMEM;
                                                break;
                                        }
                                        pieces = np;
                                }
                                size_t cnt = rest[r].total - s < MAXV ? rest[r].total - s : MAXV;
                                pieces[npieces++] = (piece){i, rest[r].which, s, cnt};
                        }
        }
        free(caps);
        head->chunk = 0;
        head->nchunks = (int32_t)(1 + npieces);
        if (!err)
                err = produce_one(p, head);
        for (size_t k = 0; k < npieces && !err; k++) {
                const tattr *ta = &t->a[pieces[k].attr];
                canopy_change_event c = {0};
                c.connector = head->connector;
                c.anchor = head->anchor;
                c.object_class = head->object_class;
                c.op = head->op == CANOPY_OP_ADD ? CANOPY_OP_ADD : CANOPY_OP_MODIFY;
                c.dn = head->dn;
                c.complete = false;
                c.position = head->position;
                c.source_ts_ms = head->source_ts_ms;
                c.producer_id = head->producer_id;
                c.scan_id = head->scan_id;
                c.chunk = (int32_t)(k + 1);
                c.nchunks = head->nchunks;
                canopy_attr *ea = canopy_change_event_add_attr(&c, ta->name, ta->binary);
                if (!ea) {
                        err = CANOPY_ERR_NOMEM;
                } else {
                        ea->delta = true;
                        const vals *src = pieces[k].which == 2 ? &ta->del : pieces[k].which == 1 ? &ta->add : &ta->full;
                        for (size_t j = 0; j < pieces[k].count && !err; j++) {
                                const canopy_bytes *v = &src->v[pieces[k].start + j];
                                err = canopy_attr_add_delta(ea, pieces[k].which != 2, v->data, v->len);
                        }
                }
                if (!err)
                        err = produce_one(p, &c);
                /* free only what c owns: its attrs */
                for (size_t a = 0; a < c.nattrs; a++) {
                        canopy_attr *x = &c.attrs[a];
                        free(x->name);
                        for (size_t j = 0; j < x->nadded; j++)
                                free(x->added[j].data);
                        for (size_t j = 0; j < x->nremoved; j++)
                                free(x->removed[j].data);
                        free(x->added);
                        free(x->removed);
                        for (size_t j = 0; j < x->nvalues; j++)
                                free(x->values[j].data);
                        free(x->values);
                }
                free(c.attrs);
        }
        free(pieces);
        return err;
}

static void fill_head(prod *p, canopy_change_event *ev, const canopy_bytes *anchor, const char *cls, canopy_op op,
                      const char *dn, const char *prev_dn, const char *position) {
        ev->connector = strdup(p->cf->connector);
        canopy_bytes_set(&ev->anchor, anchor->data, anchor->len);
        ev->object_class = cls ? strdup(cls) : NULL;
        ev->op = op;
        ev->dn = dn ? strdup(dn) : NULL;
        ev->prev_dn = prev_dn ? strdup(prev_dn) : NULL;
        ev->position = position ? strdup(position) : NULL;
        ev->producer_id = strdup(p->producer_id);
        ev->scan_id = p->scan_id ? strdup(p->scan_id) : NULL;
        ev->nchunks = 1;
}

canopy_err prod_delete_oid(prod *p, const void *oid, size_t oidlen, const char *position) {
        canopy_ckpt_object known = {0};
        canopy_err err = canopy_checkpoint_object_get(p->cp, oid, oidlen, &known);
        if (err == CANOPY_ERR_NOT_FOUND)
                return CANOPY_OK; /* never published: nothing to delete */
        if (err)
                return err;
        canopy_change_event ev = {0};
        fill_head(p, &ev, &known.anchor, known.object_class, CANOPY_OP_DELETE, known.dn, NULL, position);
        ev.complete = true;
        ev.nchunks = 1;
        ev.source_ts_ms = prod_now_ms();
        err = produce_one(p, &ev);
        canopy_change_event_free(&ev);
        if (!err)
                err = canopy_checkpoint_object_del(p->cp, oid, oidlen);
        canopy_ckpt_object_clear(&known);
        return err;
}

/* Read the whole object again (DirSync partial image of an object we do not
 * know yet, e.g. moved into scope). */
static canopy_err refetch_full(prod *p, const uint8_t *guid, size_t len, const char *position) {
        char base[128] = "<GUID=";
        size_t o = strlen(base);
        for (size_t i = 0; i < len && o + 3 < sizeof(base); i++)
                o += (size_t)snprintf(base + o, sizeof(base) - o, "%02x", guid[i]);
        snprintf(base + o, sizeof(base) - o, ">");
        LDAPMessage *res = NULL;
        int rc = ldap_search_ext_s(p->ld, base, LDAP_SCOPE_BASE, "(objectClass=*)", p->attrs, 0, NULL, NULL, NULL, 1,
                                   &res);
        canopy_err err = CANOPY_OK;
        if (rc == LDAP_NO_SUCH_OBJECT) {
                err = CANOPY_OK; /* gone meanwhile: its delete will come */
        } else if (rc != LDAP_SUCCESS) {
                err = prod_ldap_err(p, rc, "re-reading an object");
        } else {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                bool was = p->dirsync_search; /* a plain search: no incremental-value markers */
                p->dirsync_search = false;
                if (e)
                        err = prod_entry(p, e, guid, len, ENTRY_FULL, false, position);
                p->dirsync_search = was;
        }
        ldap_msgfree(res);
        return err;
}

static void maybe_write_consistency_guid(prod *p, const char *dn, const canopy_bytes *guid) {
        struct berval bv = {(ber_len_t)guid->len, (char *)guid->data};
        struct berval *vals_[] = {&bv, NULL};
        LDAPMod mod = {LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "mS-DS-ConsistencyGuid", {NULL}};
        mod.mod_bvalues = vals_;
        LDAPMod *mods[] = {&mod, NULL};
        int rc = ldap_modify_ext_s(p->ld, dn, mods, NULL, NULL);
        if (rc == LDAP_INSUFFICIENT_ACCESS) {
                /* say it once, then stop trying: every object would fail the same way */
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL,
                           "cannot write mS-DS-ConsistencyGuid on %s (insufficient access): grant the connector "
                           "account Write on that attribute for users; anchor.write_consistency_guid is off until "
                           "restart",
                           dn);
                p->cf->write_consistency_guid = false;
        } else if (rc != LDAP_SUCCESS) {
                prod_ldap_err(p, rc, "writing mS-DS-ConsistencyGuid");
        }
}

canopy_err prod_entry(prod *p, LDAPMessage *e, const void *oid_in, size_t oidlen_in, entry_kind kind, bool deleted,
                      const char *position) {
        char *dn_raw = ldap_get_dn(p->ld, e);
        char *dn = dn_raw ? strdup(dn_raw) : NULL;
        ldap_memfree(dn_raw);
        tentry t = {0};
        canopy_ckpt_object known = {0};
        canopy_change_event ev = {0};
        bool *as_delta = NULL;
        canopy_err err = collect(p, e, dn, kind, p->dirsync_search, &t);
        if (err)
                goto out;

        /* object id */
        uint8_t oidbuf[OID_MAX];
        size_t oidlen = 0;
        const canopy_bytes *g;
        if (oid_in && oidlen_in && oidlen_in <= OID_MAX) {
                memcpy(oidbuf, oid_in, oidlen_in);
                oidlen = oidlen_in;
        } else if ((g = first_val(&t, "objectguid")) && g->len <= OID_MAX) {
                memcpy(oidbuf, g->data, g->len);
                oidlen = g->len;
        } else if ((g = first_val(&t, "entryuuid")) && !canopy_ldap_uuid_parse(g->data, g->len, oidbuf)) {
                oidlen = 16;
        } else if (dn) {
                /* a server with neither: the normalised DN's hash (renames look like delete + add) */
                char *n = NULL;
                ldap_dn_normalize(dn, LDAP_DN_FORMAT_LDAPV3, &n, LDAP_DN_FORMAT_LDAPV3);
                const char *src = n ? n : dn;
                char *l = strdup(src);
                ldap_memfree(n);
                if (!l) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                lower(l);
                SHA1((const unsigned char *)l, strlen(l), oidbuf);
                free(l);
                oidlen = 20;
        } else {
                goto out;
        }

        const canopy_bytes *isdel = first_val(&t, "isdeleted");
        if (isdel && isdel->len == 4 && !strncasecmp((const char *)isdel->data, "TRUE", 4))
                deleted = true;
        if (deleted) {
                err = prod_delete_oid(p, oidbuf, oidlen, position);
                goto out;
        }

        /* during a pass over an empty object map nothing can be known: skip
         * one Redis round trip per object (the first sync of a big forest) */
        err = p->map_empty ? CANOPY_ERR_NOT_FOUND : canopy_checkpoint_object_get(p->cp, oidbuf, oidlen, &known);
        bool is_known = !err;
        if (err && err != CANOPY_ERR_NOT_FOUND)
                goto out;
        err = CANOPY_OK;

        if (kind == ENTRY_DIRSYNC_DELTA && !is_known) {
                err = refetch_full(p, oidbuf, oidlen, position);
                goto out;
        }

        const tattr *oc = tentry_find(&t, "objectclass");
        const char *cls = oc && oc->full.n ? map_class(p, oc) : (is_known ? known.object_class : NULL);
        if (!cls || !prod_in_scope(p, dn)) {
                /* not (or no longer) something we publish: a move out of scope is a delete */
                if (is_known)
                        err = prod_delete_oid(p, oidbuf, oidlen, position);
                goto out;
        }
        if (p->tracking && oidset_add(&p->seen, oidbuf, oidlen)) {
                err = CANOPY_ERR_LIMIT;
                goto out;
        }

        /* anchor: sticky once known */
        canopy_bytes anchor = {oidbuf, oidlen};
        const char *aa = p->cf->anchor_attr;
        const canopy_bytes *cg = first_val(&t, "ms-ds-consistencyguid");
        if (is_known) {
                anchor = known.anchor;
        } else if (!strcasecmp(aa, "auto")) {
                if (cg && cg->len)
                        anchor = *cg;
        } else {
                char la[128];
                snprintf(la, sizeof(la), "%s", aa);
                lower(la);
                const canopy_bytes *av = first_val(&t, la);
                if (!strcmp(la, "entryuuid") && av && canopy_ldap_uuid_parse(av->data, av->len, oidbuf) == 0)
                        anchor = (canopy_bytes){oidbuf, 16};
                else if (av && av->len)
                        anchor = *av;
                else if (strcmp(la, "objectguid") && strcmp(la, "entryuuid")) {
                        char hex[2 * OID_MAX + 1];
                        canopy_log_ctx c = ctx_anchor(p, &anchor, hex, sizeof(hex));
                        canopy_log(CANOPY_LOG_WARN, MOD, &c, "%s has no %s: anchored on its object id", dn, aa);
                }
        }
        if (p->is_ad && p->cf->write_consistency_guid && kind == ENTRY_FULL && !cg && !strcmp(cls, "user")) {
                const canopy_bytes *guid = first_val(&t, "objectguid");
                if (guid && guid->len == 16)
                        maybe_write_consistency_guid(p, dn, guid);
        }

        canopy_op op = CANOPY_OP_ADD;
        const char *prev = NULL;
        if (is_known) {
                op = CANOPY_OP_MODIFY;
                if (!same_dn(known.dn, dn)) {
                        op = CANOPY_OP_RENAME;
                        prev = known.dn;
                }
        }

        /* multi-valued deltas */
        as_delta = calloc(t.n + 4, sizeof(bool));
        if (!as_delta) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        bool dirsync = !strcmp(p->cf->mode, "dirsync");
        for (size_t i = 0; i < t.n; i++) {
                tattr *ta = &t.a[i];
                if (ta->has_delta) {
                        if (!is_known) {
                                /* initial DirSync: the "added" values are the whole set */
                                for (size_t j = 0; j < ta->add.n; j++)
                                        if ((err = vals_push(&ta->full, ta->add.v[j].data, ta->add.v[j].len)))
                                                goto out;
                                vals_free(&ta->add);
                                vals_free(&ta->del);
                                ta->has_delta = false;
                                ta->has_full = true;
                        } else {
                                as_delta[i] = true;
                        }
                }
        }
        if (!dirsync && kind == ENTRY_FULL && !strcmp(cls, "group")) {
                for (size_t d = 0; p->cf->delta_attrs && p->cf->delta_attrs[d]; d++) {
                        char la[128];
                        snprintf(la, sizeof(la), "%s", p->cf->delta_attrs[d]);
                        lower(la);
                        tattr *ta = NULL;
                        for (size_t i = 0; i < t.n; i++)
                                if (!strcmp(t.a[i].name, la))
                                        ta = &t.a[i];
                        canopy_bytes *old = NULL;
                        size_t nold = 0;
                        bool set_known = false;
                        if (is_known && p->cf->member_delta && strcmp(p->cf->mode, "full")) {
                                err = canopy_checkpoint_members_get(p->cp, oidbuf, oidlen, la, &old, &nold, &set_known);
                                if (err)
                                        goto out;
                        }
                        if (!ta && (set_known && nold)) {
                                /* attribute gone: every old value was removed */
                                ta = tentry_get(&t, la);
                                if (!ta) {
                                        err = CANOPY_ERR_LIMIT;
                                        goto out;
                                }
                                bool *na = realloc(as_delta, (t.n + 4) * sizeof(bool));
                                if (!na) {
                                        err = CANOPY_ERR_NOMEM;
                                        goto out;
                                }
                                as_delta = na;
                                as_delta[t.n - 1] = false;
                        }
                        if (ta && set_known) {
                                /* delta = new - old, old - new (sets by exact bytes) */
                                oidset oldset = {0}, newset = {0};
                                for (size_t j = 0; j < nold; j++)
                                        oidset_add(&oldset, old[j].data, old[j].len);
                                for (size_t j = 0; j < ta->full.n; j++) {
                                        oidset_add(&newset, ta->full.v[j].data, ta->full.v[j].len);
                                        if (!oidset_has(&oldset, ta->full.v[j].data, ta->full.v[j].len))
                                                vals_push(&ta->add, ta->full.v[j].data, ta->full.v[j].len);
                                }
                                for (size_t j = 0; j < nold; j++)
                                        if (!oidset_has(&newset, old[j].data, old[j].len))
                                                vals_push(&ta->del, old[j].data, old[j].len);
                                oidset_clear(&oldset);
                                oidset_clear(&newset);
                                as_delta[ta - t.a] = true;
                        }
                        for (size_t j = 0; j < nold; j++)
                                free(old[j].data);
                        free(old);
                        if (ta || set_known || !is_known) {
                                err = canopy_checkpoint_members_put(p->cp, oidbuf, oidlen, la, ta ? ta->full.v : NULL,
                                                                    ta ? ta->full.n : 0);
                                if (err == CANOPY_ERR_LIMIT) {
                                        /* too big to keep: this group travels as full values */
                                        canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                                                   "%s has more than %u %s values: not kept for deltas", dn,
                                                   CANOPY_CHECKPOINT_MAX_MEMBERS, la);
                                        if (ta)
                                                as_delta[ta - t.a] = false;
                                        err = CANOPY_OK;
                                }
                                if (err)
                                        goto out;
                        }
                }
        }

        fill_head(p, &ev, &anchor, cls, op, dn, prev, position);
        ev.complete = kind == ENTRY_FULL;
        const canopy_bytes *ts = first_val(&t, "whenchanged");
        if (!ts)
                ts = first_val(&t, "modifytimestamp");
        ev.source_ts_ms = ts ? canopy_ldap_gentime_ms(ts->data, ts->len) : 0;
        if (!ev.position) {
                const canopy_bytes *pos = first_val(&t, "usnchanged");
                if (!pos)
                        pos = first_val(&t, "entrycsn");
                if (pos)
                        ev.position = strndup((const char *)pos->data, pos->len);
                if (pos && p->is_ad) {
                        int64_t u = strtoll(ev.position, NULL, 10);
                        if (u > p->last_usn)
                                p->last_usn = u;
                }
        }
        /* do not publish bookkeeping-only attributes */
        for (size_t i = 0; i < t.n; i++) {
                if (!strcmp(t.a[i].name, "isdeleted") || !strcmp(t.a[i].name, "instancetype")) {
                        vals_free(&t.a[i].full);
                        memmove(&t.a[i], &t.a[i + 1], (t.n - i - 1) * sizeof(t.a[0]));
                        memmove(&as_delta[i], &as_delta[i + 1], (t.n - i - 1) * sizeof(bool));
                        t.n--;
                        i--;
                }
        }
        err = publish(p, &ev, &t, as_delta);
        if (err)
                goto out;
        canopy_ckpt_object rec = {anchor, (char *)cls, dn};
        err = canopy_checkpoint_object_put(p->cp, oidbuf, oidlen, &rec);
out:
        free(as_delta);
        canopy_change_event_free(&ev);
        canopy_ckpt_object_clear(&known);
        tentry_free(&t);
        free(dn);
        if (!err && canopy_checkpoint_staged(p->cp) > CANOPY_CHECKPOINT_MAX_STAGED / 2)
                err = prod_checkpoint(p, NULL, NULL, 0);
        return err;
}

/* ---- checkpoints ---- */

canopy_err prod_checkpoint(prod *p, const char *posname, const void *pos, size_t poslen) {
        canopy_err err;
        if (posname && (err = canopy_checkpoint_stage_position(p->cp, posname, pos, poslen)))
                return err;
        /* every event before this point must be acknowledged by Kafka */
        int64_t t0 = prod_now_ms();
        while (canopy_kafka_producer_outq_len(p->kp) > 0) {
                err = canopy_kafka_producer_flush(p->kp, 1000);
                if (!err)
                        break;
                if (*p->stop > 1) /* second signal: give up waiting */
                        return CANOPY_ERR_SHUTDOWN;
        }
        int64_t t1 = prod_now_ms();
        if (p->failed) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL,
                           "%llu events were not acknowledged by Kafka: position not saved, re-reading from "
                           "the last checkpoint",
                           (unsigned long long)p->failed);
                p->failed = 0;
                canopy_checkpoint_discard(p->cp);
                return CANOPY_ERR_KAFKA;
        }
        if (!canopy_lease_held(p->lease)) {
                canopy_checkpoint_discard(p->cp);
                return CANOPY_ERR_LEASE_LOST;
        }
        for (int attempt = 0;; attempt++) {
                err = canopy_checkpoint_commit(p->cp);
                if (!err || attempt >= 5 || *p->stop > 1)
                        break;
                struct timespec ts = {0, 200 * 1000000L};
                nanosleep(&ts, NULL);
        }
        if (err) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "saving the checkpoint failed: %s",
                           canopy_checkpoint_errstr(p->cp));
                canopy_checkpoint_discard(p->cp);
                return err;
        }
        p->since_ckpt = 0;
        p->sealed = false;
        p->last_ckpt_ms = prod_now_ms();
        if (canopy_log_enabled(CANOPY_LOG_DEBUG, MOD))
                canopy_log(CANOPY_LOG_DEBUG, MOD, NULL, "checkpoint%s%s in %lld ms (Kafka %lld ms, Redis %lld ms)",
                           posname ? " of " : "", posname ? posname : "", (long long)(p->last_ckpt_ms - t0),
                           (long long)(t1 - t0), (long long)(p->last_ckpt_ms - t1));
        if (p->last_usn)
                canopy_metrics_set(p->m_position, NULL, (double)p->last_usn);
        /* A syncrepl cookie's position is its CSN: a time. */
        double csn_s = posname && !strcmp(posname, "cookie") ? canopy_ldap_csn_time(pos, poslen) : 0;
        if (csn_s > 0)
                canopy_metrics_set(p->m_position_s, NULL, csn_s);
        return CANOPY_OK;
}

/* Bulk reads (no position to save): pipelined. Every checkpoint.every
 * events the staged writes are sealed and the producer reads on; the sealed
 * batch is committed as soon as Kafka reported every event produced before
 * the seal. Reading never runs more than one batch ahead of Kafka. */
canopy_err prod_maybe_checkpoint(prod *p) {
        const uint64_t every = (uint64_t)p->cf->flush_every;
        if (p->sealed) {
                canopy_kafka_producer_poll(p->kp, 0);
                int64_t *out = &p->outstanding[(p->gen - 1) & 1];
                while (*out > 0 && p->since_ckpt >= every && *p->stop <= 1)
                        canopy_kafka_producer_poll(p->kp, 100); /* one batch ahead at most */
                if (p->failed) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL,
                                   "%llu events were not acknowledged by Kafka: re-reading from the last "
                                   "checkpoint",
                                   (unsigned long long)p->failed);
                        p->failed = 0;
                        p->sealed = false;
                        canopy_checkpoint_discard(p->cp);
                        return CANOPY_ERR_KAFKA;
                }
                if (*out > 0)
                        return *p->stop > 1 ? CANOPY_ERR_SHUTDOWN : CANOPY_OK;
                if (!canopy_lease_held(p->lease)) {
                        canopy_checkpoint_discard(p->cp);
                        p->sealed = false;
                        return CANOPY_ERR_LEASE_LOST;
                }
                canopy_err err = canopy_checkpoint_commit_sealed(p->cp);
                if (err) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "saving the checkpoint failed: %s",
                                   canopy_checkpoint_errstr(p->cp));
                        canopy_checkpoint_discard(p->cp);
                        p->sealed = false;
                        return err;
                }
                p->sealed = false;
                p->last_ckpt_ms = prod_now_ms();
        }
        if (p->since_ckpt >= every) {
                canopy_checkpoint_seal(p->cp);
                p->sealed = true;
                p->gen++;
                p->since_ckpt = 0;
        }
        return CANOPY_OK;
}

/* ---- full passes ---- */

canopy_err prod_scan_begin(prod *p) {
        free(p->scan_id);
        char buf[128];
        snprintf(buf, sizeof(buf), "%s-%lld-%04x", p->cf->connector, (long long)prod_now_ms(),
                 (unsigned)(rand() & 0xffff));
        p->scan_id = strdup(buf);
        oidset_clear(&p->seen);
        p->tracking = true;
        int64_t n = -1;
        p->map_empty = !canopy_checkpoint_object_count(p->cp, &n) && n == 0;
        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "full pass %s started", p->scan_id);
        return p->scan_id ? CANOPY_OK : CANOPY_ERR_NOMEM;
}

void prod_scan_abort(prod *p) {
        free(p->scan_id);
        p->scan_id = NULL;
        oidset_clear(&p->seen);
        p->tracking = false;
        p->map_empty = false;
}

typedef struct sweep {
        prod *p;
        canopy_bytes *gone;
        size_t n, cap;
        canopy_err err;
} sweep;

static int sweep_cb(void *arg, const canopy_bytes *oid, const canopy_ckpt_object *o) {
        sweep *s = arg;
        (void)o;
        if (oidset_has(&s->p->seen, oid->data, oid->len))
                return 0;
        if (s->n == s->cap) {
                size_t nc = s->cap ? s->cap * 2 : 64;
                canopy_bytes *ng = realloc(s->gone, nc * sizeof(*ng));
                if (!ng) {
                        s->err = CANOPY_ERR_NOMEM;
                        return 1;
                }
                s->gone = ng;
                s->cap = nc;
        }
        s->gone[s->n].data = NULL;
        if (canopy_bytes_set(&s->gone[s->n], oid->data, oid->len)) {
                s->err = CANOPY_ERR_NOMEM;
                return 1;
        }
        s->n++;
        return 0;
}

canopy_err prod_scan_end(prod *p) {
        /* the object map must hold everything this pass saw before the sweep */
        canopy_err err = prod_checkpoint(p, NULL, NULL, 0);
        if (err)
                return err;
        sweep s = {p, NULL, 0, 0, CANOPY_OK};
        err = canopy_checkpoint_object_scan(p->cp, sweep_cb, &s);
        if (!err)
                err = s.err;
        size_t deleted = 0;
        for (size_t i = 0; i < s.n && !err; i++) {
                err = prod_delete_oid(p, s.gone[i].data, s.gone[i].len, NULL);
                deleted++;
                if (!err)
                        err = prod_maybe_checkpoint(p);
        }
        for (size_t i = 0; i < s.n; i++)
                free(s.gone[i].data);
        free(s.gone);
        if (err)
                return err;
        if (!p->scan_id) {
                if (deleted)
                        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "present phase: %zu deletes for objects not present",
                                   deleted);
                prod_scan_abort(p);
                return CANOPY_OK;
        }
        /* The marker goes to every partition of changes, as nchunks pieces
         * (chunk = the piece's partition): the join stage sweeps only once
         * it has applied every piece, so after every event of the pass,
         * whichever partition and worker each went to. When the partition
         * count is unknown (the topic does not exist yet: nothing was
         * published), one marker goes by key. */
        int32_t nparts = 0;
        if (canopy_kafka_partition_count(p->kp, CANOPY_TOPIC_CHANGES, 5000, &nparts) || nparts < 1)
                nparts = 0;
        canopy_change_event ev = {0};
        canopy_bytes none = {(uint8_t *)"", 0};
        fill_head(p, &ev, &none, NULL, CANOPY_OP_END_OF_SCAN, NULL, NULL, NULL);
        ev.complete = true;
        ev.source_ts_ms = prod_now_ms();
        if (!nparts)
                err = produce_one(p, &ev);
        for (int32_t i = 0; i < nparts && !err; i++) {
                ev.chunk = i;
                ev.nchunks = nparts;
                err = produce_to(p, &ev, i);
        }
        canopy_change_event_free(&ev);
        if (!err) {
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "full pass %s done: %zu objects seen, %zu deletes for "
                           "objects no longer present",
                           p->scan_id, p->seen.n, deleted);
                canopy_metrics_add(p->m_scans, NULL, 1);
        }
        prod_scan_abort(p);
        return err;
}
