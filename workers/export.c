/* export.c: the export stage. Consumes `mv`; for each metaverse object
 * computes the desired Entra object from every joined connector-space
 * record (rules, precedence), compares it with the last exported state in
 * Redis and makes only the Graph calls for the difference; records the
 * result in Redis and on `exports`. State based: an event only says "look at
 * this mv id", so replays and duplicates converge to the same end state. */
#include <inttypes.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/arena.h"
#include "canopy/avro.h"
#include "canopy/graph.h"
#include "canopy/guard.h"
#include "canopy/log.h"
#include "worker.h"

#define MOD "export"

typedef struct export_ctx {
        worker *w;
        canopy_state *st;
        canopy_graph *gc; /* NULL in staging mode */
        canopy_arena *a;
        const canopy_mv_event *ev;
        /* The tenant's verified domains and its initial domain (GET
         * /domains), read when first needed and every 15 minutes; NULL
         * while unknown. */
        char **domains;
        size_t ndomains;
        char *initial_domain;
        int64_t domains_ms;
} export_ctx;

/* What one mv event led to, for the ExportRecord. */
typedef struct outcome {
        canopy_export_op op;
        canopy_export_result result;
        char entra_id[CANOPY_GRAPH_ID_MAX];
        json_t *changed; /* array of property names */
        char error[512];
        char request_id[64];
        bool publish;
} outcome;

static void count_graph(export_ctx *ec, int kind, canopy_err err) {
        atomic_fetch_add_explicit(&ec->w->m.graph[kind][err ? 1 : 0], 1, memory_order_relaxed);
}

static canopy_err publish_export(export_ctx *ec, const char *type, outcome *o) {
        canopy_export_record er = {0};
        size_t n = o->changed ? json_array_size(o->changed) : 0;
        char **names = calloc(n + 1, sizeof(*names));
        if (!names)
                return CANOPY_ERR_NOMEM;
        for (size_t i = 0; i < n; i++)
                names[i] = (char *)json_string_value(json_array_get(o->changed, i));
        er.mv_id = ec->ev->mv_id;
        er.entra_id = o->entra_id[0] ? o->entra_id : NULL;
        er.object_type = (char *)type;
        er.op = o->op;
        er.changed = names;
        er.nchanged = n;
        er.result = o->result;
        er.request_id = o->request_id[0] ? o->request_id : NULL;
        er.error = o->error[0] ? o->error : NULL;
        er.staged = o->result == CANOPY_RES_STAGED;
        er.ts_ms = worker_now_ms();
        er.source_ts_ms = ec->ev->source_ts_ms;
        char eb[CANOPY_AVRO_ERRLEN];
        canopy_err err = canopy_kafka_produce_export(ec->w->kp, &er, NULL, eb, sizeof(eb));
        if (err)
                CANOPY_ERROR(MOD, "produce export record: %s", eb);
        free(names);
        return err;
}

static canopy_err publish_mv(export_ctx *ec, const char *mv_id, const char *type, canopy_mv_reason reason) {
        /* A burst of member exports re-exports their group once, not once
         * per member: a RESOLVE already queued will see them all. */
        if (reason == CANOPY_MV_RESOLVE) {
                bool send;
                canopy_err ce = worker_resolve_claim(ec->w, ec->st, mv_id, &send);
                if (ce || !send)
                        return ce;
        }
        canopy_mv_event mv = {0};
        mv.mv_id = (char *)mv_id;
        mv.object_type = (char *)type;
        mv.reason = reason;
        mv.ts_ms = worker_now_ms();
        mv.source_ts_ms = ec->ev ? ec->ev->source_ts_ms : 0;
        char eb[CANOPY_AVRO_ERRLEN];
        canopy_err err = canopy_kafka_produce_mv(ec->w->kp, &mv, NULL, eb, sizeof(eb));
        if (err) {
                CANOPY_ERROR(MOD, "produce mv: %s", eb);
                if (reason == CANOPY_MV_RESOLVE) /* not sent: the retry must claim it again */
                        canopy_state_resolve_start(ec->st, mv_id);
        }
        else
                atomic_fetch_add_explicit(&ec->w->m.mv_published, 1, memory_order_relaxed);
        return err;
}

/* ---- desired object ------------------------------------------------------ */

/* Graph properties that are collections of strings: a single value from a
 * flow becomes a one-element array, a cleared one an empty array. */
static bool is_string_collection(const char *name) {
        static const char *const names[] = {"businessPhones", "otherMails", "imAddresses", "proxyAddresses"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (!strcmp(name, names[i]))
                        return true;
        return false;
}

static json_t *value_json(const canopy_value *v, canopy_arena *a) {
        switch (v->type) {
        case CANOPY_V_NULL:
                return json_null();
        case CANOPY_V_STR:
                return json_stringn(v->u.str.s, v->u.str.len);
        case CANOPY_V_BIN:
        case CANOPY_V_INT: {
                if (v->type == CANOPY_V_INT)
                        return json_integer(v->u.i);
                const char *t = canopy_value_to_text(v, ",", a);
                return t ? json_string(t) : json_null();
        }
        case CANOPY_V_BOOL:
                return json_boolean(v->u.b);
        case CANOPY_V_MULTI: {
                json_t *arr = json_array();
                for (size_t i = 0; i < v->u.multi.n; i++) {
                        json_t *e = value_json(&v->u.multi.items[i], a);
                        if (e)
                                json_array_append_new(arr, e);
                }
                return arr;
        }
        }
        return json_null();
}

/* Set obj[name] = val, where a dotted name goes into a nested object. */
static void set_path(json_t *obj, const char *name, json_t *val) {
        const char *dot = strchr(name, '.');
        if (!dot) {
                json_object_set_new(obj, name, val ? val : json_null());
                return;
        }
        char head[128];
        snprintf(head, sizeof(head), "%.*s", (int)(dot - name), name);
        json_t *sub = json_object_get(obj, head);
        if (!json_is_object(sub)) {
                sub = json_object();
                json_object_set_new(obj, head, sub);
        }
        set_path(sub, dot + 1, val);
}

typedef struct desired {
        json_t *props;       /* properties kept in step (no create-only) */
        json_t *create_only; /* added to the create body only */
        char immutable_id[256];
        canopy_cs_record **recs; /* contributing records (in scope) */
        size_t nrecs;
} desired;

static void desired_clear(desired *d) {
        json_decref(d->props);
        json_decref(d->create_only);
        for (size_t i = 0; i < d->nrecs; i++)
                canopy_cs_record_free(d->recs[i]);
        free(d->recs);
        memset(d, 0, sizeof(*d));
}

static canopy_graph_kind kind_of(const char *type);

/* SelectUniqueValue: a candidate is unique when no object of Entra holds
 * it, or when the object holding it is this one (its cloud id, or for a
 * user its onPremisesImmutableId from one of its records: a hard match
 * after a rebuild). As Entra Connect cloud sync, uniqueness is that of the
 * target directory. A Graph failure stops the computation (retried), it is
 * not taken for "in use". */
typedef struct unique_ctx {
        export_ctx *ec;
        canopy_graph_kind kind;
        const canopy_export_state *es; /* NULL: never exported */
        const desired *d;              /* its records (anchors) */
        canopy_err err;
} unique_ctx;

static bool value_unique(void *ctx, const char *property, const char *value) {
        unique_ctx *u = ctx;
        if (u->err || !u->ec->gc || !property || !value)
                return true;
        /* The value this object was last exported with is its own. */
        if (u->es && u->es->entra_id && !u->es->deleted && u->es->props_json) {
                json_t *last = json_loads(u->es->props_json, 0, NULL);
                const char *was = json_string_value(json_object_get(last, property));
                bool own = was && !strcasecmp(was, value);
                json_decref(last);
                if (own)
                        return true;
        }
        char id[CANOPY_GRAPH_ID_MAX] = "", *json = NULL;
        canopy_graph_error ei;
        memset(&ei, 0, sizeof(ei));
        canopy_err err = canopy_graph_find_select(u->ec->gc, u->kind, property, value,
                                                  u->kind == CANOPY_GRAPH_USER ? "id,onPremisesImmutableId" : "id", id,
                                                  &json, &ei);
        count_graph(u->ec, GK_LOOKUP, err == CANOPY_ERR_GRAPH_NOT_FOUND || err == CANOPY_ERR_GRAPH_CONFLICT
                                              ? CANOPY_OK
                                              : err);
        canopy_graph_error_clear(&ei);
        if (err == CANOPY_ERR_GRAPH_NOT_FOUND)
                return true;
        if (err == CANOPY_ERR_GRAPH_CONFLICT) /* held by two objects: not ours to take */
                return false;
        if (err) {
                u->err = err;
                return true;
        }
        bool self = u->es && u->es->entra_id && !strcmp(u->es->entra_id, id);
        json_t *o = self ? NULL : json_loads(json, 0, NULL);
        const char *imm = json_string_value(json_object_get(o, "onPremisesImmutableId"));
        for (size_t i = 0; imm && !self && i < u->d->nrecs; i++) {
                char b64[256];
                canopy_state_anchor_b64(&u->d->recs[i]->anchor, b64, sizeof(b64));
                self = !strcmp(b64, imm);
        }
        json_decref(o);
        free(json);
        CANOPY_DEBUG(MOD, "SelectUniqueValue: %s %s is %s", property, value, self ? "this object's" : "in use");
        return self;
}

static canopy_err compute_desired(export_ctx *ec, const canopy_mv_record *mv, const canopy_export_state *es,
                                  desired *d) {
        canopy_err err = CANOPY_OK;
        d->recs = calloc(mv->ncontribs + 1, sizeof(*d->recs));
        canopy_obj_view *views = calloc(mv->ncontribs + 1, sizeof(*views));
        canopy_attr_array *holders = calloc(mv->ncontribs + 1, sizeof(*holders));
        const canopy_obj_view **vp = calloc(mv->ncontribs + 1, sizeof(*vp));
        d->props = json_object();
        d->create_only = json_object();
        if (!d->recs || !views || !holders || !vp || !d->props || !d->create_only) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        const canopy_cs_record *source = NULL;
        for (size_t i = 0; i < mv->ncontribs; i++) {
                canopy_cs_record *rec = NULL;
                canopy_err ge = canopy_state_cs_get(ec->st, mv->contribs[i].connector, &mv->contribs[i].anchor, &rec);
                if (ge == CANOPY_ERR_NOT_FOUND)
                        continue;
                if (ge) {
                        err = ge;
                        goto out;
                }
                if (!rec->in_scope || !rec->mv_id || strcmp(rec->mv_id, mv->mv_id)) {
                        canopy_cs_record_free(rec);
                        continue;
                }
                size_t k = d->nrecs++;
                d->recs[k] = rec;
                canopy_obj_view_from_attrs(&views[k], &holders[k], rec->connector, rec->dn, mv->object_type,
                                           rec->attrs, rec->nattrs);
                views[k].anchor = &rec->anchor;
                vp[k] = &views[k];
                char id[33];
                canopy_state_mv_id_for(rec->connector, &rec->anchor, id);
                if (!source || !strcmp(id, mv->mv_id))
                        source = rec;
        }
        if (!d->nrecs)
                goto out;
        canopy_rules_desired des = {0};
        char msg[256] = "";
        unique_ctx uc = {ec, kind_of(mv->object_type ? mv->object_type : "user"), es, d, CANOPY_OK};
        canopy_eval_ctx ectx = {0};
        ectx.is_unique = value_unique;
        ectx.unique_ctx = &uc;
        err = canopy_rules_compute(ec->w->rules, mv->object_type, vp, d->nrecs, &ectx, ec->a, &des, msg, sizeof(msg));
        if (!err && uc.err) {
                CANOPY_WARN(MOD, "%s: SelectUniqueValue could not ask Graph (%s): retried", mv->mv_id,
                            canopy_err_text(uc.err));
                err = uc.err;
                goto out;
        }
        if (err) {
                CANOPY_WARN(MOD, "rules for %s: %s", mv->mv_id, msg);
                goto out;
        }
        for (size_t i = 0; i < des.n; i++) {
                const canopy_rules_prop *p = &des.props[i];
                json_t *v = value_json(&p->value, ec->a);
                if (v && is_string_collection(p->name) && !json_is_array(v)) {
                        json_t *arr = json_array();
                        if (!json_is_null(v))
                                json_array_append(arr, v);
                        json_decref(v);
                        v = arr;
                }
                if (!strcmp(p->name, "onPremisesImmutableId") && json_is_string(v))
                        snprintf(d->immutable_id, sizeof(d->immutable_id), "%s", json_string_value(v));
                set_path(p->create_only ? d->create_only : d->props, p->name, v);
        }
        if (!d->immutable_id[0] && source)
                canopy_state_anchor_b64(&source->anchor, d->immutable_id, sizeof(d->immutable_id));
out:
        free(views);
        free(holders);
        free(vp);
        return err;
}

static void domains_refresh(export_ctx *ec) {
        int64_t now = worker_now_ms();
        if (ec->domains_ms && now - ec->domains_ms < (ec->domains ? 15 * 60000 : 60000))
                return;
        ec->domains_ms = now;
        char **v = NULL, *initial = NULL;
        size_t n = 0;
        canopy_graph_error ei;
        memset(&ei, 0, sizeof(ei));
        canopy_err err = canopy_graph_domains(ec->gc, &v, &n, &initial, &ei);
        if (err) {
                CANOPY_WARN(MOD,
                            "cannot read the tenant's domains (%s%s%s): user principal names are sent as they are; "
                            "grant the application Domain.Read.All so that a suffix that is not a verified domain "
                            "is replaced by the initial .onmicrosoft.com domain",
                            ei.code[0] ? ei.code : canopy_err_text(err), ei.message[0] ? ": " : "", ei.message);
                canopy_graph_error_clear(&ei);
                return;
        }
        canopy_graph_strv_free(ec->domains);
        free(ec->initial_domain);
        ec->domains = v;
        ec->ndomains = n;
        ec->initial_domain = initial;
}

/* As Entra Connect: a UPN suffix that is not a verified domain of the
 * tenant (contoso.local, a domain not added yet) is replaced by the
 * tenant's initial .onmicrosoft.com domain. */
static canopy_err upn_verified(export_ctx *ec, json_t *props) {
        const char *upn = json_string_value(json_object_get(props, "userPrincipalName"));
        const char *at = upn ? strrchr(upn, '@') : NULL;
        if (!at || !ec->gc)
                return CANOPY_OK;
        domains_refresh(ec);
        if (!ec->domains || !ec->initial_domain)
                return CANOPY_OK;
        for (size_t i = 0; i < ec->ndomains; i++)
                if (!strcasecmp(ec->domains[i], at + 1))
                        return CANOPY_OK;
        char *fixed = NULL;
        if (asprintf(&fixed, "%.*s@%s", (int)(at - upn), upn, ec->initial_domain) < 0)
                return CANOPY_ERR_NOMEM;
        CANOPY_DEBUG(MOD, "%s: UPN suffix %s is not a verified domain: %s", ec->ev ? ec->ev->mv_id : "?", at + 1,
                     fixed);
        int rc = json_object_set_new(props, "userPrincipalName", json_string(fixed));
        free(fixed);
        return rc ? CANOPY_ERR_NOMEM : CANOPY_OK;
}

static char *dumps(const json_t *j) {
        return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

/* ---- members ----------------------------------------------------------- */

typedef struct strset {
        char **v;
        size_t n, cap;
} strset;

static int cmpstr(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

static canopy_err strset_add(strset *s, const char *x) {
        if (s->n == s->cap) {
                size_t nc = s->cap ? 2 * s->cap : 64;
                if (nc > CANOPY_STATE_MAX_MEMBERS + 1)
                        return CANOPY_ERR_TOO_MANY_VALUES;
                char **nv = realloc(s->v, nc * sizeof(*nv));
                if (!nv)
                        return CANOPY_ERR_NOMEM;
                s->v = nv;
                s->cap = nc;
        }
        if (!(s->v[s->n] = strdup(x)))
                return CANOPY_ERR_NOMEM;
        s->n++;
        return CANOPY_OK;
}

static void strset_sort(strset *s) {
        if (s->n)
                qsort(s->v, s->n, sizeof(*s->v), cmpstr);
        size_t k = 0;
        for (size_t i = 0; i < s->n; i++) {
                if (k && !strcmp(s->v[k - 1], s->v[i]))
                        free(s->v[i]);
                else
                        s->v[k++] = s->v[i];
        }
        s->n = k;
}

static bool strset_has(const strset *s, const char *x) {
        return s->n && bsearch(&x, s->v, s->n, sizeof(*s->v), cmpstr) != NULL;
}

static void strset_free(strset *s) {
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i]);
        free(s->v);
        memset(s, 0, sizeof(*s));
}

/* What a group's member computation leaves waiting: wait key ->
 * "<connector>\x1f<reference>" (canopy_state_group_waits_set). */
typedef struct waitlist {
        char **keys, **vals;
        size_t n, cap;
        bool ok; /* false once an allocation failed: record nothing */
} waitlist;

static void waitlist_add(waitlist *wl, const char *key, const char *conn, const char *ref) {
        if (!wl || !wl->ok)
                return;
        if (wl->n == wl->cap) {
                size_t cap = wl->cap ? wl->cap * 2 : 16;
                char **k = realloc(wl->keys, cap * sizeof(*k));
                if (k)
                        wl->keys = k;
                char **v = k ? realloc(wl->vals, cap * sizeof(*v)) : NULL;
                if (v)
                        wl->vals = v;
                if (!k || !v) {
                        wl->ok = false;
                        return;
                }
                wl->cap = cap;
        }
        char *v = NULL;
        char *k = strdup(key);
        if (!k || asprintf(&v, "%s\x1f%s", conn, ref) < 0) {
                free(k);
                wl->ok = false;
                return;
        }
        wl->keys[wl->n] = k;
        wl->vals[wl->n++] = v;
}

static void waitlist_free(waitlist *wl) {
        for (size_t i = 0; i < wl->n; i++) {
                free(wl->keys[i]);
                free(wl->vals[i]);
        }
        free(wl->keys);
        free(wl->vals);
        memset(wl, 0, sizeof(*wl));
}

/* Register group_mv as waiting for every member reference of res[0..n)
 * still unknown, then resolve those references again: a member the join
 * stage recorded between the first read and the registration found no
 * waiter to wake, so it is taken now (and the wait withdrawn). A reference
 * that now waits for something else (its DN is known, its record not yet
 * joined) is registered under the new key and read once more; the join
 * stage writes the DN index before it wakes DN waiters and the record
 * before it wakes anchor waiters, so every wake-up is seen by one side. */
static canopy_err wait_unknown(export_ctx *ec, const char *connector, const char *group_mv, char *const *refs,
                               canopy_member_res *res, size_t n) {
        canopy_err err = CANOPY_OK;
        size_t *at = malloc(sizeof(*at) * (n ? n : 1));
        char **again = malloc(sizeof(*again) * (n ? n : 1));
        bool *todo = calloc(n ? n : 1, sizeof(*todo));
        if (!at || !again || !todo)
                err = CANOPY_ERR_NOMEM;
        for (size_t i = 0; !err && i < n; i++)
                todo[i] = res[i].state == CANOPY_MEMBER_UNKNOWN && res[i].wait_key;
        for (int round = 0; !err && round < 4; round++) {
                size_t nw = 0;
                for (size_t i = 0; !err && i < n; i++)
                        if (todo[i]) {
                                err = canopy_state_pending_add(ec->st, res[i].wait_key, group_mv);
                                todo[i] = false;
                                at[nw] = i;
                                again[nw++] = refs[i];
                        }
                if (err || !nw)
                        break;
                canopy_member_res *res2 = calloc(nw, sizeof(*res2));
                err = res2 ? canopy_state_members_resolve(ec->st, connector, again, nw, res2) : CANOPY_ERR_NOMEM;
                for (size_t j = 0; !err && j < nw; j++) {
                        canopy_member_res *m = &res[at[j]];
                        bool same = res2[j].state == CANOPY_MEMBER_UNKNOWN && res2[j].wait_key &&
                                    !strcmp(res2[j].wait_key, m->wait_key);
                        if (same)
                                continue;
                        err = canopy_state_pending_remove(ec->st, m->wait_key, group_mv);
                        canopy_member_res t = *m; /* res2 frees the old result */
                        *m = res2[j];
                        res2[j] = t;
                        todo[at[j]] = m->state == CANOPY_MEMBER_UNKNOWN && m->wait_key;
                }
                if (res2)
                        canopy_member_res_clear(res2, nw);
                free(res2);
        }
        for (size_t i = 0; !err && i < n; i++) /* still moving after four reads: wait for the last key */
                if (todo[i])
                        err = canopy_state_pending_add(ec->st, res[i].wait_key, group_mv);
        free(at);
        free(again);
        free(todo);
        return err;
}

/* Debug trace of one member reference's resolution (CANOPY_LOG_DEBUG=export). */
static void trace_member(const char *group_mv, const char *how, const char *ref, const canopy_member_res *m) {
        if (!canopy_log_enabled(CANOPY_LOG_DEBUG, MOD))
                return;
        static const char *const st[] = {"unknown", "joined", "exported"};
        CANOPY_DEBUG(MOD, "%s %s: %s -> %s mv=%s wait=%s%s", group_mv, how, ref,
                     (unsigned)m->state < 3 ? st[m->state] : "?", m->mv_id ? m->mv_id : "-",
                     m->wait_key ? m->wait_key : "-", m->dangling ? " dangling" : "");
}

/* Desired member Entra ids of a group from every contributing record;
 * members not yet exported become pending references. The references are
 * resolved in pipelined batches (canopy_state_members_resolve); only the
 * members still waiting cost a round trip of their own. */
static canopy_err desired_members(export_ctx *ec, const char *group_mv, const desired *d, strset *ret,
                                  size_t *ret_waiting, size_t *ret_refs, waitlist *wl) {
        canopy_err err = CANOPY_OK;
        for (size_t r = 0; !err && r < d->nrecs; r++) {
                char **refs = NULL;
                size_t n = 0;
                const char *conn = d->recs[r]->connector;
                err = canopy_state_cs_members(ec->st, conn, &d->recs[r]->anchor, &refs, &n);
                *ret_refs += n;
                canopy_member_res *res = n && !err ? calloc(n, sizeof(*res)) : NULL;
                if (!err && n && !res)
                        err = CANOPY_ERR_NOMEM;
                if (!err && n)
                        err = canopy_state_members_resolve(ec->st, conn, refs, n, res);
                if (!err && n)
                        err = wait_unknown(ec, conn, group_mv, refs, res, n);
                size_t unseen = 0;
                for (size_t i = 0; !err && i < n; i++) {
                        canopy_member_res *m = &res[i];
                        trace_member(group_mv, "full", refs[i], m);
                        if (m->state == CANOPY_MEMBER_UNKNOWN) {
                                /* A DN not seen yet (the join stage may not
                                 * have read the member) is waited for like a
                                 * member not yet exported (wait_unknown), and
                                 * holds removals back until the connector's
                                 * first full import is complete (below). A
                                 * DN whose object moved away or was deleted
                                 * is a dangling reference: no member, and
                                 * nothing to hold removals back for. */
                                if (m->wait_key && !m->dangling && !strncmp(m->wait_key, "d:", 2))
                                        unseen++;
                                if (m->wait_key)
                                        waitlist_add(wl, m->wait_key, conn, refs[i]);
                                continue;
                        }
                        if (!strcmp(m->mv_id, group_mv))
                                continue; /* a group is not its own member */
                        if (m->state == CANOPY_MEMBER_EXPORTED) {
                                err = strset_add(ret, m->entra_id);
                                continue;
                        }
                        /* Joined, not exported: wait for it, then look
                         * again: its export may have finished between the
                         * two reads (and found no waiter to wake). */
                        canopy_export_state *es = NULL;
                        err = canopy_state_pending_add(ec->st, m->mv_id, group_mv);
                        if (!err)
                                err = canopy_state_exp_get(ec->st, m->mv_id, &es);
                        if (err == CANOPY_ERR_NOT_FOUND) {
                                (*ret_waiting)++;
                                waitlist_add(wl, m->mv_id, conn, refs[i]);
                                err = CANOPY_OK;
                        } else if (!err && es->entra_id && !es->deleted) {
                                err = strset_add(ret, es->entra_id);
                                if (!err)
                                        err = canopy_state_pending_remove(ec->st, m->mv_id, group_mv);
                        } else if (!err) {
                                (*ret_waiting)++;
                                waitlist_add(wl, m->mv_id, conn, refs[i]);
                        }
                        CANOPY_DEBUG(MOD, "%s full: %s joined: %s", group_mv, m->mv_id,
                                     !err && es && es->entra_id && !es->deleted ? "exported meanwhile" : "waits");
                        canopy_export_state_free(es);
                }
                if (!err && unseen) {
                        bool scanned = false;
                        err = canopy_state_hold_for_scan(ec->st, conn, group_mv, &scanned);
                        if (!scanned)
                                *ret_waiting += unseen;
                }
                canopy_member_res_clear(res, n);
                free(res);
                canopy_state_strv_free(refs);
        }
        strset_sort(ret);
        return err;
}

/* onPremisesImmutableId is the anchor of the object as it was created or
 * hard-matched, for good (Entra Connect: the sourceAnchor cannot change
 * after export; federated sign-in and later hard matches follow it). When
 * another forest's record of higher precedence joins later, its flow would
 * give another value: the exported one stays. An object not exported yet
 * (or after a rebuild of Redis) whose records are several first looks for a
 * cloud object created with the anchor of any of them. */
static canopy_err keep_immutable_id(export_ctx *ec, desired *d, const canopy_export_state *es, bool staging) {
        const char *now = json_string_value(json_object_get(d->props, "onPremisesImmutableId"));
        char found[256] = "";
        if (es && es->entra_id && !es->deleted) {
                if (es->immutable_id && es->immutable_id[0] && strcmp(es->immutable_id, d->immutable_id))
                        snprintf(found, sizeof(found), "%s", es->immutable_id);
        } else if (!staging && ec->gc && d->nrecs > 1) {
                for (size_t r = 0; r < d->nrecs && !found[0]; r++) {
                        char b64[256], id[CANOPY_GRAPH_ID_MAX];
                        if (canopy_state_anchor_b64(&d->recs[r]->anchor, b64, sizeof(b64)) ||
                            !strcmp(b64, d->immutable_id))
                                continue;
                        canopy_graph_error ei;
                        canopy_err fe = canopy_graph_find(ec->gc, CANOPY_GRAPH_USER, "onPremisesImmutableId", b64, id,
                                                          NULL, &ei);
                        count_graph(ec, GK_LOOKUP, fe == CANOPY_ERR_GRAPH_NOT_FOUND ? CANOPY_OK : fe);
                        if (!fe)
                                snprintf(found, sizeof(found), "%s", b64);
                        else if (fe != CANOPY_ERR_GRAPH_NOT_FOUND)
                                return fe;
                }
        }
        if (!found[0])
                return CANOPY_OK;
        CANOPY_DEBUG(MOD, "%s: onPremisesImmutableId stays %s (the rules now give %s)", ec->ev->mv_id, found,
                     now ? now : d->immutable_id);
        snprintf(d->immutable_id, sizeof(d->immutable_id), "%s", found);
        if (now)
                json_object_set_new(d->props, "onPremisesImmutableId", json_string(found));
        return CANOPY_OK;
}

/* ---- Graph helpers ------------------------------------------------------- */

static canopy_graph_kind kind_of(const char *type) {
        return !strcmp(type, "group") ? CANOPY_GRAPH_GROUP : CANOPY_GRAPH_USER;
}

/* Record a permanent error (conflict or rejected request) for mv_id. */
static canopy_err record_error(export_ctx *ec, const char *type, canopy_err gerr, const canopy_graph_error *ei,
                               outcome *o) {
        json_t *j = json_object();
        json_object_set_new(j, "code", json_string(canopy_err_name(gerr)));
        json_object_set_new(j, "type", json_string(type));
        json_object_set_new(j, "message", json_string(ei->message));
        json_object_set_new(j, "ts", json_integer(worker_now_ms()));
        if (gerr == CANOPY_ERR_GRAPH_CONFLICT) {
                atomic_fetch_add_explicit(&ec->w->m.conflicts, 1, memory_order_relaxed);
                json_object_set_new(j, "property", json_string(ei->conflict_property));
                json_object_set_new(j, "value", json_string(ei->conflict_value));
                if (ei->conflict_property[0] && ei->conflict_value[0]) {
                        canopy_err we = canopy_state_conflict_wait(ec->st, ei->conflict_property, ei->conflict_value,
                                                                   ec->ev->mv_id);
                        if (we) {
                                json_decref(j);
                                return we;
                        }
                }
                /* Name the other object holding the value. */
                if (ec->gc && ei->conflict_property[0] && ei->conflict_value[0]) {
                        char other[CANOPY_GRAPH_ID_MAX] = "";
                        canopy_graph_error e2;
                        canopy_err fe = canopy_graph_find(ec->gc, kind_of(type), ei->conflict_property,
                                                          ei->conflict_value, other, NULL, &e2);
                        count_graph(ec, GK_LOOKUP, fe == CANOPY_ERR_GRAPH_NOT_FOUND ? CANOPY_OK : fe);
                        if (!fe)
                                json_object_set_new(j, "other", json_string(other));
                }
        }
        char *s = dumps(j);
        json_decref(j);
        if (!s)
                return CANOPY_ERR_NOMEM;
        canopy_err err = canopy_state_error_set(ec->st, ec->ev->mv_id, s);
        snprintf(o->error, sizeof(o->error), "%s", s);
        free(s);
        o->result = CANOPY_RES_ERROR;
        o->publish = true;
        snprintf(o->request_id, sizeof(o->request_id), "%s", ei->request_id);
        CANOPY_WARN(MOD, "%s %s: %s (%s) %s=%s", type, ec->ev->mv_id, canopy_err_name(gerr), ei->message,
                    ei->conflict_property, ei->conflict_value);
        return err;
}

/* Objects that conflicted on (prop, value) retry now that it is free. */
static canopy_err release_value(export_ctx *ec, const char *prop, const char *value) {
        char **ids = NULL;
        size_t n = 0;
        canopy_err err = canopy_state_conflict_take(ec->st, prop, value, &ids, &n);
        for (size_t i = 0; !err && i < n; i++)
                if (strcmp(ids[i], ec->ev->mv_id))
                        err = publish_mv(ec, ids[i], ec->ev->object_type ? ec->ev->object_type : "user",
                                         CANOPY_MV_RESOLVE);
        canopy_state_strv_free(ids);
        return err;
}

/* Values of `old_json` that `patch` changes (or every value when patch is
 * NULL: the object is gone) are free now: retry objects that conflicted on
 * them. */
static canopy_err release_values(export_ctx *ec, const char *old_json, const char *patch) {
        json_t *old = old_json ? json_loads(old_json, 0, NULL) : NULL;
        json_t *p = patch ? json_loads(patch, 0, NULL) : NULL;
        const char *k;
        json_t *v;
        canopy_err err = CANOPY_OK;
        json_object_foreach(old, k, v) {
                if (err || (patch && !json_object_get(p, k)))
                        continue;
                if (json_is_string(v)) {
                        err = release_value(ec, k, json_string_value(v));
                        /* Entra derives the primary SMTP address from mail:
                         * a mail given up frees that address too. */
                        if (!err && !strcmp(k, "mail")) {
                                char *smtp = NULL;
                                if (asprintf(&smtp, "SMTP:%s", json_string_value(v)) < 0)
                                        err = CANOPY_ERR_NOMEM;
                                else
                                        err = release_value(ec, "proxyAddresses", smtp);
                                free(smtp);
                        }
                } else if (json_is_array(v)) { /* proxyAddresses, otherMails: each value */
                        size_t i;
                        json_t *e;
                        json_array_foreach(v, i, e) {
                                if (!err && json_is_string(e))
                                        err = release_value(ec, k, json_string_value(e));
                        }
                }
        }
        json_decref(old);
        json_decref(p);
        return err;
}

/* Keep only the keys of `like` from `obj` (a Graph GET answer). */
static json_t *project_like(const json_t *obj, const json_t *like) {
        json_t *o = json_object();
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)like, k, v) {
                json_t *cur = json_object_get(obj, k);
                if (cur)
                        json_object_set(o, k, cur);
        }
        return o;
}

static void changed_from_patch(outcome *o, const char *patch) {
        json_t *p = json_loads(patch, 0, NULL);
        const char *k;
        json_t *v;
        if (!o->changed)
                o->changed = json_array();
        json_object_foreach(p, k, v) json_array_append_new(o->changed, json_string(k));
        json_decref(p);
}

static void random_password(char *out, size_t len) {
        static const char cs[] = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
        unsigned char rnd[64];
        RAND_bytes(rnd, sizeof(rnd));
        size_t n = len - 5 < sizeof(rnd) ? len - 5 : sizeof(rnd);
        for (size_t i = 0; i < n; i++)
                out[i] = cs[rnd[i] % (sizeof(cs) - 1)];
        memcpy(out + n, "!a9Z", 5); /* every complexity class */
}

/* ---- one mv event --------------------------------------------------------- */

static canopy_err stage(export_ctx *ec, const char *what, json_t *detail, outcome *o) {
        json_object_set_new(detail, "op", json_string(what));
        json_object_set_new(detail, "ts", json_integer(worker_now_ms()));
        char *s = dumps(detail);
        canopy_err err = s ? canopy_state_staged_set(ec->st, ec->ev->mv_id, s) : CANOPY_ERR_NOMEM;
        free(s);
        o->result = CANOPY_RES_STAGED;
        o->publish = true;
        atomic_fetch_add_explicit(&ec->w->m.staged, 1, memory_order_relaxed);
        return err;
}

static canopy_err export_delete(export_ctx *ec, const char *type, canopy_export_state *es, outcome *o) {
        o->op = CANOPY_EXP_DELETE;
        snprintf(o->entra_id, sizeof(o->entra_id), "%s", es->entra_id);
        if (ec->w->conf->staging) {
                json_t *d = json_object();
                json_object_set_new(d, "entra_id", json_string(es->entra_id));
                canopy_err err = stage(ec, "delete", d, o);
                json_decref(d);
                return err;
        }
        /* The one place where a cloud delete is decided: the guard's hook. */
        canopy_guard_verdict verdict = CANOPY_GUARD_HOLD;
        json_t *info = json_pack("{s:s,s:s}", "type", type, "entra_id", es->entra_id);
        json_t *props = es->props_json ? json_loads(es->props_json, 0, NULL) : NULL;
        const char *dn = props ? json_string_value(json_object_get(props, "displayName")) : NULL;
        const char *upn = props ? json_string_value(json_object_get(props, "userPrincipalName")) : NULL;
        if (info && dn)
                json_object_set_new(info, "displayName", json_string(dn));
        if (info && upn)
                json_object_set_new(info, "userPrincipalName", json_string(upn));
        char *info_s = info ? dumps(info) : NULL;
        json_decref(info);
        json_decref(props);
        canopy_err err = canopy_guard_reserve_delete(ec->st, ec->ev->mv_id, info_s, &verdict, NULL);
        free(info_s);
        if (err)
                return err;
        if (verdict == CANOPY_GUARD_HOLD) {
                o->result = CANOPY_RES_HELD;
                o->publish = true;
                return CANOPY_ERR_DELETE_HELD;
        }
        /* A 404 means "already gone" only once every replica has seen the
         * create: for an object created (or matched) within
         * export.fresh_window, the client retries 404s first. */
        canopy_graph_error ei;
        int64_t age = es->created_ms > 0 ? worker_now_ms() - es->created_ms : -1;
        bool fresh = age >= 0 && age < ec->w->conf->fresh_window_ms;
        err = fresh ? canopy_graph_delete_fresh(ec->gc, kind_of(type), es->entra_id, &ei)
                    : canopy_graph_delete(ec->gc, kind_of(type), es->entra_id, &ei);
        count_graph(ec, GK_DELETE, err == CANOPY_ERR_GRAPH_NOT_FOUND ? CANOPY_OK : err);
        if (err == CANOPY_ERR_GRAPH_NOT_FOUND)
                err = CANOPY_OK; /* already gone: the effect holds */
        if (err) {
                if (canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT)
                        return record_error(ec, type, err, &ei, o);
                return err;
        }
        snprintf(o->request_id, sizeof(o->request_id), "%s", ei.request_id);
        /* Groups that had it as a member drop it from what they exported. */
        char **groups = NULL;
        size_t ng = 0;
        err = canopy_state_memberof_take(ec->st, es->entra_id, &groups, &ng);
        /* A removal: their next RESOLVE must compute every member, not
         * only the woken ones (which only ever add). */
        for (size_t i = 0; !err && i < ng; i++)
                err = canopy_state_group_waits_clear(ec->st, groups[i]);
        for (size_t i = 0; !err && i < ng; i++)
                err = publish_mv(ec, groups[i], "group", CANOPY_MV_RESOLVE);
        canopy_state_strv_free(groups);
        if (!err)
                err = release_values(ec, es->props_json, NULL);
        if (!err)
                err = canopy_state_exp_deleted(ec->st, ec->ev->mv_id);
        if (!err)
                canopy_guard_synced_add(ec->st, -1);
        if (!err)
                err = canopy_state_error_clear(ec->st, ec->ev->mv_id);
        o->result = CANOPY_RES_OK;
        o->publish = true;
        return err;
}

/* Bring the group's members in Entra to `want`: only the difference. */
static canopy_err export_members(export_ctx *ec, const char *group_id, const strset *want, strset *have,
                                 size_t waiting, outcome *o, json_t *stage_detail) {
        strset add = {0}, rm = {0};
        canopy_err err = CANOPY_OK;
        for (size_t i = 0; !err && i < want->n; i++)
                if (!strset_has(have, want->v[i]))
                        err = strset_add(&add, want->v[i]);
        /* While members of the metaverse wait for their export, their Entra
         * ids are unknown: an object already in the group may be one of
         * them (Redis rebuilt), so removals wait for the next export (the
         * members' export sends RESOLVE). */
        for (size_t i = 0; !err && !waiting && i < have->n; i++)
                if (!strset_has(want, have->v[i]))
                        err = strset_add(&rm, have->v[i]);
        if (err || (!add.n && !rm.n))
                goto out;
        if (o->op == CANOPY_EXP_NOOP)
                o->op = CANOPY_EXP_MEMBERS;
        if (!o->changed)
                o->changed = json_array();
        json_array_append_new(o->changed, json_string("members"));
        if (stage_detail) {
                json_t *ja = json_array(), *jr = json_array();
                for (size_t i = 0; i < add.n; i++)
                        json_array_append_new(ja, json_string(add.v[i]));
                for (size_t i = 0; i < rm.n; i++)
                        json_array_append_new(jr, json_string(rm.v[i]));
                json_object_set_new(stage_detail, "members_add", ja);
                json_object_set_new(stage_detail, "members_remove", jr);
                goto out;
        }
        canopy_graph_error ei;
        if (add.n) {
                canopy_err *errs = calloc(add.n, sizeof(*errs));
                if (!errs) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                err = canopy_graph_members_add(ec->gc, group_id, (const char *const *)add.v, add.n, errs, &ei);
                /* Record every member that made it, even when some failed. */
                const char **ok = calloc(add.n, sizeof(*ok));
                size_t nok = 0;
                for (size_t i = 0; ok && i < add.n; i++) {
                        count_graph(ec, GK_MEMBER_ADD, errs[i]);
                        if (!errs[i])
                                ok[nok++] = add.v[i];
                }
                canopy_err se = ok ? canopy_state_exp_members_apply(ec->st, ec->ev->mv_id, false, ok, nok, NULL, 0)
                                   : CANOPY_ERR_NOMEM;
                if (!se)
                        se = canopy_state_memberof_add(ec->st, ok, nok, ec->ev->mv_id);
                free(ok);
                free(errs);
                if (!err)
                        err = se;
                if (err)
                        goto out;
        }
        if (rm.n) {
                canopy_err *errs = calloc(rm.n, sizeof(*errs));
                if (!errs) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                err = canopy_graph_members_remove(ec->gc, group_id, (const char *const *)rm.v, rm.n, errs, &ei);
                const char **ok = calloc(rm.n, sizeof(*ok));
                size_t nok = 0;
                for (size_t i = 0; ok && i < rm.n; i++) {
                        count_graph(ec, GK_MEMBER_REMOVE, errs[i]);
                        if (!errs[i])
                                ok[nok++] = rm.v[i];
                }
                canopy_err se = ok ? canopy_state_exp_members_apply(ec->st, ec->ev->mv_id, false, NULL, 0, ok, nok)
                                   : CANOPY_ERR_NOMEM;
                if (!se)
                        se = canopy_state_memberof_remove(ec->st, ok, nok, ec->ev->mv_id);
                free(ok);
                free(errs);
                if (!err)
                        err = se;
        }
        if (err && canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT) {
                /* A member Entra refuses (e.g. deleted meanwhile): the rest
                 * is recorded; the group is retried on its next change. */
                err = record_error(ec, "group", err, &ei, o);
        }
out:
        strset_free(&add);
        strset_free(&rm);
        return err;
}

/* Groups with fewer member references are always computed in full (a
 * build may lower it, -DINCREMENTAL_MIN_REFS=1, to exercise the path). */
#ifndef INCREMENTAL_MIN_REFS
#define INCREMENTAL_MIN_REFS 256
#endif

/* Fingerprint of the group's contributing records (connector and anchor
 * of each, FNV-1a 64): an incremental member computation is only allowed
 * with the records of the last full one. */
static void records_fingerprint(const desired *d, char out[17]) {
        uint64_t h = 1469598103934665603ULL;
        for (size_t r = 0; r < d->nrecs; r++) {
                const canopy_cs_record *rec = d->recs[r];
                for (const char *c = rec->connector; *c; c++)
                        h = (h ^ (uint8_t)*c) * 1099511628211ULL;
                h = (h ^ 0x1f) * 1099511628211ULL;
                for (size_t k = 0; k < rec->anchor.len; k++)
                        h = (h ^ rec->anchor.data[k]) * 1099511628211ULL;
                h = (h ^ 0x1e) * 1099511628211ULL;
        }
        snprintf(out, 17, "%016" PRIx64, h);
}

/* The references of `conn` among "<connector>\x1f<ref>" strings v[0..n)
 * (those with want_added == added[i], or all when added is NULL): into
 * out[] (pointing inside v), keys[] gets keyv[i] (NULL when keyv is NULL). */
static size_t refs_of_conn(const char *conn, char *const *v, const bool *added, bool want_added, size_t n,
                           const char *const *keyv, const char **out, const char **keys, size_t at) {
        size_t cl = strlen(conn);
        for (size_t i = 0; i < n; i++) {
                if (!v[i] || (added && added[i] != want_added))
                        continue;
                if (strncmp(v[i], conn, cl) || v[i][cl] != '\x1f')
                        continue;
                keys[at] = keyv ? keyv[i] : NULL;
                out[at++] = v[i] + cl + 1;
        }
        return at;
}

/* Append "<connector>\x1f<ref>" to gd as a reference added. */
static canopy_err delta_append(canopy_group_delta *gd, const char *conn, size_t conn_len, const char *ref) {
        char **r = realloc(gd->refs, (gd->nrefs + 2) * sizeof(*r));
        if (!r)
                return CANOPY_ERR_NOMEM;
        gd->refs = r;
        bool *a = realloc(gd->added, (gd->nrefs + 1) * sizeof(*a));
        if (!a)
                return CANOPY_ERR_NOMEM;
        gd->added = a;
        char *v = NULL;
        if (asprintf(&v, "%.*s\x1f%s", (int)conn_len, conn, ref) < 0)
                return CANOPY_ERR_NOMEM;
        gd->refs[gd->nrefs] = v;
        gd->added[gd->nrefs++] = true;
        gd->refs[gd->nrefs] = NULL;
        return CANOPY_OK;
}

/* A woken key the group's waits do not record (its member was registered
 * by a computation whose record was dropped or overwritten: a clear by
 * another stage, two computations at once, a key that changed while it
 * was registered): the member references it can stand for are looked at
 * as if added, so that no wake is lost. "c:<conn>\x1f<anchor>" and
 * "d:<conn>\x1f<dn>" name their reference; a metaverse id stands for the
 * anchors of its records. References the group does not hold are dropped
 * by the caller's membership test. */
static canopy_err delta_from_key(export_ctx *ec, const char *key, canopy_group_delta *gd) {
        if ((key[0] == 'c' || key[0] == 'd') && key[1] == ':') {
                const char *sep = strchr(key + 2, '\x1f');
                if (!sep)
                        return CANOPY_OK;
                char *ref = NULL;
                if (asprintf(&ref, "%s:%s", key[0] == 'c' ? "a" : "d", sep + 1) < 0)
                        return CANOPY_ERR_NOMEM;
                canopy_err err = delta_append(gd, key + 2, (size_t)(sep - key - 2), ref);
                free(ref);
                return err;
        }
        canopy_mv_record *mv = NULL;
        canopy_err err = canopy_state_mv_get(ec->st, key, &mv);
        if (err == CANOPY_ERR_NOT_FOUND)
                return CANOPY_OK;
        for (size_t i = 0; !err && i < mv->ncontribs; i++) {
                const canopy_mv_contrib *c = &mv->contribs[i];
                size_t bl = 4 * ((c->anchor.len + 2) / 3) + 3;
                char *ref = malloc(bl);
                if (!ref) {
                        err = CANOPY_ERR_NOMEM;
                        break;
                }
                ref[0] = 'a';
                ref[1] = ':';
                err = canopy_state_anchor_b64(&c->anchor, ref + 2, bl - 2);
                if (!err)
                        err = delta_append(gd, c->connector, strlen(c->connector), ref);
                free(ref);
        }
        canopy_mv_record_free(mv);
        return err;
}

/* A group whose last full member computation recorded what it left
 * waiting (canopy_state_group_waits_set): only what changed since is looked
 * at, the members woken (exported since) and the member references the
 * join stage changed by delta. A group of 100,000 members being filled
 * costs what its new members cost, and one member added or removed costs
 * that member, not a look-up of every member. *ret_done is false when
 * everything must be computed instead (nothing recorded, removals held
 * back, other records than last time, a removal with two records, a woken
 * member of a connector the group no longer has). */
static canopy_err members_delta(export_ctx *ec, const char *group_mv, const desired *d, outcome *o,
                                bool *ret_done) {
        *ret_done = false;
        for (size_t r = 0; r < d->nrecs; r++)
                for (size_t q = r + 1; q < d->nrecs; q++)
                        if (!strcmp(d->recs[r]->connector, d->recs[q]->connector))
                                return CANOPY_OK; /* two records of one connector: compute all */
        /* Only groups of INCREMENTAL_MIN_REFS references or more have their
         * waits recorded (the full computation below), so a smaller group
         * finds the marker "busy" and is computed in full: a full
         * computation is cheap there, and always right. */
        char print[17];
        records_fingerprint(d, print);
        canopy_group_delta gd = {0};
        canopy_err err = canopy_state_group_waits_begin(ec->st, group_mv, print, &gd);
        if (err || !gd.ok) {
                canopy_group_delta_clear(&gd);
                return err;
        }
        size_t nk = gd.nwoken;
        char **vals = calloc(nk + 1, sizeof(*vals));
        bool *seen = calloc(nk + 1, sizeof(*seen));
        if (!vals || !seen)
                err = CANOPY_ERR_NOMEM;
        if (!err)
                err = canopy_state_group_waits_get(ec->st, group_mv, (const char *const *)gd.woken, nk, vals);
        for (size_t i = 0; !err && i < nk; i++) {
                CANOPY_DEBUG(MOD, "%s delta: woken %s (waited for: %s)", group_mv, gd.woken[i],
                             vals[i] ? vals[i] : "not recorded");
                if (!vals[i]) {
                        seen[i] = true;
                        err = delta_from_key(ec, gd.woken[i], &gd);
                }
        }
        size_t cap = nk + gd.nrefs + 1;
        const char **refs = calloc(cap, sizeof(*refs));
        const char **wkey = calloc(cap, sizeof(*wkey)); /* refs[j]'s wait key; NULL: a reference added */
        bool *has = calloc(cap, sizeof(*has));
        canopy_member_res *res = calloc(cap, sizeof(*res));
        waitlist add = {.ok = true};
        strset dels = {0}, cand = {0}, gone = {0}, want = {0}, have = {0};
        bool full = false;
        if (!err && (!refs || !wkey || !has || !res))
                err = CANOPY_ERR_NOMEM;
        /* With two records another one may still name a removed member. */
        for (size_t i = 0; !err && i < gd.nrefs; i++)
                if (!gd.added[i] && d->nrecs > 1)
                        full = true;
        for (size_t r = 0; !err && !full && r < d->nrecs; r++) {
                const char *conn = d->recs[r]->connector;
                const canopy_bytes *anchor = &d->recs[r]->anchor;
                /* Members to add: the woken keys and the references added. */
                size_t n = refs_of_conn(conn, vals, NULL, false, nk, (const char *const *)gd.woken, refs, wkey, 0);
                for (size_t i = 0; i < nk; i++)
                        if (vals[i] && !strncmp(vals[i], conn, strlen(conn)) && vals[i][strlen(conn)] == '\x1f')
                                seen[i] = true;
                n = refs_of_conn(conn, gd.refs, gd.added, true, gd.nrefs, NULL, refs, wkey, n);
                /* Still a member? A woken reference the group no longer
                 * holds was dropped, or took another form (a DN that became
                 * an anchor): anything but the common case computes all. */
                if (n)
                        err = canopy_state_cs_members_has(ec->st, conn, anchor, refs, n, has);
                size_t m = 0;
                for (size_t j = 0; !err && j < n; j++) {
                        if (!has[j]) {
                                full = full || wkey[j];
                                continue;
                        }
                        wkey[m] = wkey[j];
                        refs[m++] = refs[j];
                }
                if (!err && m)
                        err = canopy_state_members_resolve(ec->st, conn, (char *const *)refs, m, res);
                if (!err && m)
                        err = wait_unknown(ec, conn, group_mv, (char *const *)refs, res, m);
                for (size_t j = 0; !err && j < m; j++) {
                        const char *key = wkey[j];
                        canopy_member_res *mr = &res[j];
                        trace_member(group_mv, key ? key : "added", refs[j], mr);
                        if (mr->state == CANOPY_MEMBER_UNKNOWN) {
                                full = full || !mr->wait_key;
                                if (!mr->wait_key || (key && !strcmp(mr->wait_key, key)))
                                        continue; /* still waiting for the same */
                                if (key)
                                        err = strset_add(&dels, key);
                                waitlist_add(&add, mr->wait_key, conn, refs[j]);
                                /* A DN not seen while the connector's first
                                 * full import runs holds removals back: the
                                 * full computation records that. */
                                if (!err && !mr->dangling && !strncmp(mr->wait_key, "d:", 2)) {
                                        bool scanned = false;
                                        err = canopy_state_hold_for_scan(ec->st, conn, group_mv, &scanned);
                                        full = full || !scanned;
                                }
                                continue;
                        }
                        if (key)
                                err = strset_add(&dels, key);
                        if (err || !strcmp(mr->mv_id, group_mv))
                                continue; /* a group is not its own member */
                        if (mr->state == CANOPY_MEMBER_EXPORTED) {
                                err = strset_add(&cand, mr->entra_id);
                                continue;
                        }
                        /* Joined, not exported: wait for it and look again
                         * (as desired_members). */
                        canopy_export_state *es = NULL;
                        err = canopy_state_pending_add(ec->st, mr->mv_id, group_mv);
                        if (!err)
                                err = canopy_state_exp_get(ec->st, mr->mv_id, &es);
                        if (!err && es->entra_id && !es->deleted) {
                                err = strset_add(&cand, es->entra_id);
                                if (!err)
                                        err = canopy_state_pending_remove(ec->st, mr->mv_id, group_mv);
                        } else if (!err || err == CANOPY_ERR_NOT_FOUND) {
                                err = CANOPY_OK;
                                waitlist_add(&add, mr->mv_id, conn, refs[j]);
                        }
                        CANOPY_DEBUG(MOD, "%s delta: %s joined: %s", group_mv, mr->mv_id,
                                     !err && es && es->entra_id && !es->deleted ? "exported meanwhile" : "waits");
                        canopy_export_state_free(es);
                }
                canopy_member_res_clear(res, m);
                /* Members to remove: the references removed (and not named
                 * again since). */
                n = err ? 0 : refs_of_conn(conn, gd.refs, gd.added, false, gd.nrefs, NULL, refs, wkey, 0);
                if (n)
                        err = canopy_state_cs_members_has(ec->st, conn, anchor, refs, n, has);
                m = 0;
                for (size_t j = 0; !err && j < n; j++)
                        if (!has[j])
                                refs[m++] = refs[j];
                if (!err && m)
                        err = canopy_state_members_resolve(ec->st, conn, (char *const *)refs, m, res);
                /* A removed member still waited for stays recorded: its
                 * wake finds the reference gone (above) and computes all. */
                for (size_t j = 0; !err && j < m; j++) {
                        canopy_member_res *mr = &res[j];
                        if (mr->state == CANOPY_MEMBER_EXPORTED && strcmp(mr->mv_id, group_mv))
                                err = strset_add(&gone, mr->entra_id);
                }
                canopy_member_res_clear(res, m);
        }
        full = full || !add.ok;
        for (size_t i = 0; !err && i < nk; i++)
                if (vals[i] && !seen[i])
                        full = true; /* a connector the group no longer has */
        /* Against what is exported: add what is not there, remove what is. */
        strset_sort(&cand);
        strset_sort(&gone);
        size_t nq = cand.n + gone.n;
        bool *in = !err && !full && nq ? calloc(nq, sizeof(*in)) : NULL;
        if (!err && !full && nq) {
                const char **q = calloc(nq, sizeof(*q));
                for (size_t i = 0; q && i < cand.n; i++)
                        q[i] = cand.v[i];
                for (size_t i = 0; q && i < gone.n; i++)
                        q[cand.n + i] = gone.v[i];
                err = q && in ? canopy_state_exp_members_has(ec->st, group_mv, q, nq, in) : CANOPY_ERR_NOMEM;
                free(q);
        }
        for (size_t i = 0; !err && in && i < nq; i++) {
                if (i < cand.n && !in[i])
                        err = strset_add(&want, cand.v[i]);
                else if (i >= cand.n && in[i] && !strset_has(&cand, gone.v[i - cand.n]))
                        err = strset_add(&have, gone.v[i - cand.n]);
        }
        free(in);
        strset_sort(&want);
        strset_sort(&have);
        if (!err && !full && (want.n || have.n))
                err = export_members(ec, o->entra_id, &want, &have, 0, o, NULL);
        /* On an error or a full computation the marker stays "busy": the
         * next computation of the group does everything. */
        if (!err && !full) {
                bool applied = false;
                err = canopy_state_group_waits_end(ec->st, group_mv, (const char *const *)dels.v, dels.n,
                                                   (const char *const *)add.keys, (const char *const *)add.vals,
                                                   add.n, &applied);
                if (!err && !applied)
                        CANOPY_DEBUG(MOD, "%s: waits cleared meanwhile: the next computation does everything",
                                     group_mv);
                if (!err) {
                        *ret_done = true;
                        atomic_fetch_add_explicit(&ec->w->m.members_woken, 1, memory_order_relaxed);
                }
                CANOPY_DEBUG(MOD, "%s: %zu woken, %zu changed reference(s): %zu added, %zu removed, %zu waiting anew",
                             group_mv, nk, gd.nrefs, want.n, have.n, add.n);
        } else if (!err)
                CANOPY_DEBUG(MOD, "%s delta: computing everything instead", group_mv);
        for (size_t i = 0; vals && i < nk; i++)
                free(vals[i]);
        free(vals);
        free(seen);
        free(refs);
        free(wkey);
        free(has);
        free(res);
        waitlist_free(&add);
        strset_free(&dels);
        strset_free(&cand);
        strset_free(&gone);
        strset_free(&want);
        strset_free(&have);
        canopy_group_delta_clear(&gd);
        return err;
}

static canopy_err export_one(export_ctx *ec, outcome *o) {
        const char *mv_id = ec->ev->mv_id;
        canopy_mv_record *mv = NULL;
        canopy_export_state *es = NULL;
        desired d = {0};
        strset want = {0}, have = {0};
        char *props_s = NULL, *patch = NULL;
        json_t *stage_detail = NULL;
        const char *type = ec->ev->object_type ? ec->ev->object_type : "user";
        bool staging = ec->w->conf->staging;
        o->op = CANOPY_EXP_NOOP;

        /* This RESOLVE starts: a change from now on needs another one. */
        canopy_err err = CANOPY_OK;
        if (ec->ev->reason == CANOPY_MV_RESOLVE)
                err = canopy_state_resolve_start(ec->st, mv_id);
        if (!err)
                err = canopy_state_mv_get(ec->st, mv_id, &mv);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                goto out;
        if (mv && mv->object_type)
                type = mv->object_type;
        err = canopy_state_exp_get(ec->st, mv_id, &es);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                goto out;
        err = CANOPY_OK;
        if (strcmp(type, "user") && strcmp(type, "group")) {
                CANOPY_DEBUG(MOD, "%s: object type %s is not exported", mv_id, type);
                goto out;
        }
        if (mv) {
                err = compute_desired(ec, mv, es, &d);
                if (!err && !strcmp(type, "user"))
                        err = upn_verified(ec, d.props);
                if (err)
                        goto out;
        }
        if (!d.nrecs) {
                /* No contributor left: delete the cloud object, if any. */
                if (es && es->entra_id && !es->deleted)
                        err = export_delete(ec, type, es, o);
                goto out;
        }
        canopy_graph_kind kind = kind_of(type);
        if (kind == CANOPY_GRAPH_USER) {
                err = keep_immutable_id(ec, &d, es, staging);
                if (err)
                        goto out;
        }
        props_s = dumps(d.props);
        if (!props_s) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        if (staging)
                stage_detail = json_object();
        bool fresh = false; /* the object was just created or hard-matched */
        if (es && es->entra_id && !es->deleted) {
                snprintf(o->entra_id, sizeof(o->entra_id), "%s", es->entra_id);
                if (!es->props_hash || !es->props_json) {
                        err = CANOPY_ERR_DECODE;
                        goto out;
                }
                char h[65];
                canopy_state_hash_hex(props_s, h);
                if (strcmp(h, es->props_hash)) {
                        err = canopy_graph_diff(es->props_json, props_s, &patch);
                        if (err)
                                goto out;
                }
                if (patch) {
                        o->op = CANOPY_EXP_UPDATE;
                        changed_from_patch(o, patch);
                        if (staging)
                                json_object_set_new(stage_detail, "patch", json_loads(patch, 0, NULL));
                        else {
                                canopy_graph_error ei;
                                err = canopy_graph_update(ec->gc, kind, es->entra_id, patch, &ei);
                                count_graph(ec, GK_UPDATE, err);
                                if (err && canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT) {
                                        err = record_error(ec, type, err, &ei, o);
                                        goto out;
                                }
                                if (err)
                                        goto out;
                                snprintf(o->request_id, sizeof(o->request_id), "%s", ei.request_id);
                                err = canopy_state_exp_record(ec->st, mv_id, es->entra_id, es->immutable_id, props_s);
                                if (!err)
                                        err = release_values(ec, es->props_json, patch);
                                if (err)
                                        goto out;
                        }
                } else if (es->props_hash && strcmp(h, es->props_hash) && !staging) {
                        /* Equal by value, different text: store the new form. */
                        err = canopy_state_exp_record(ec->st, mv_id, es->entra_id, es->immutable_id, props_s);
                        if (err)
                                goto out;
                }
        } else {
                /* Create, after a hard match: the intent is recorded first,
                 * so a crash after the create finds the object next time;
                 * with Redis rebuilt the match finds it too. */
                json_t *body = json_deep_copy(d.props);
                json_object_update(body, d.create_only);
                const char *match_prop = kind == CANOPY_GRAPH_USER ? "onPremisesImmutableId" : "mailNickname";
                const char *match_value = kind == CANOPY_GRAPH_USER
                                                  ? d.immutable_id
                                                  : json_string_value(json_object_get(d.props, "mailNickname"));
                if (kind == CANOPY_GRAPH_USER) {
                        json_object_set_new(body, "onPremisesImmutableId", json_string(d.immutable_id));
                        if (!json_is_boolean(json_object_get(body, "accountEnabled")))
                                json_object_set_new(body, "accountEnabled", json_true()); /* required on create */
                        if (!json_object_get(body, "passwordProfile")) {
                                char pw[24];
                                random_password(pw, sizeof(pw));
                                json_object_set_new(body, "passwordProfile",
                                                    json_pack("{s:s,s:b}", "password", pw,
                                                              "forceChangePasswordNextSignIn", 0));
                        }
                }
                o->op = CANOPY_EXP_CREATE;
                const char *k;
                json_t *v;
                o->changed = json_array();
                json_object_foreach(d.props, k, v) json_array_append_new(o->changed, json_string(k));
                if (staging) {
                        json_object_del(body, "passwordProfile");
                        json_object_set_new(stage_detail, "create", body);
                } else {
                        char *body_s = dumps(body);
                        json_decref(body);
                        err = canopy_state_exp_intent(ec->st, mv_id, d.immutable_id);
                        if (err) {
                                free(body_s);
                                goto out;
                        }
                        canopy_graph_error ei;
                        char id[CANOPY_GRAPH_ID_MAX] = "";
                        bool matched = false;
                        err = canopy_graph_create(ec->gc, kind, body_s, match_value != NULL, match_prop, match_value,
                                                  id, &matched, &ei);
                        free(body_s);
                        count_graph(ec, GK_LOOKUP, CANOPY_OK);
                        if (!err && !matched)
                                count_graph(ec, GK_CREATE, CANOPY_OK);
                        if (err) {
                                count_graph(ec, GK_CREATE, err);
                                if (canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT)
                                        err = record_error(ec, type, err, &ei, o);
                                goto out;
                        }
                        snprintf(o->entra_id, sizeof(o->entra_id), "%s", id);
                        snprintf(o->request_id, sizeof(o->request_id), "%s", ei.request_id);
                        if (matched) {
                                /* Hard match: write only what differs from the
                                 * object as it is. */
                                o->op = CANOPY_EXP_UPDATE;
                                json_decref(o->changed);
                                o->changed = json_array();
                                char *cur_s = NULL, *sel = NULL;
                                size_t sl = 0;
                                FILE *sf = open_memstream(&sel, &sl);
                                bool first = true;
                                json_object_foreach(d.props, k, v) {
                                        fprintf(sf, "%s%s", first ? "" : ",", k);
                                        first = false;
                                }
                                fclose(sf);
                                /* $select: Graph returns only a default set otherwise.
                                 * The object was just found (or just created by
                                 * an earlier attempt): a 404 here is lag. */
                                err = canopy_graph_get_fresh(ec->gc, kind, id, sel, &cur_s, &ei);
                                free(sel);
                                count_graph(ec, GK_GET, err);
                                if (err)
                                        goto out;
                                json_t *cur = json_loads(cur_s, 0, NULL);
                                free(cur_s);
                                json_t *proj = project_like(cur, d.props);
                                json_decref(cur);
                                char *proj_s = dumps(proj);
                                json_decref(proj);
                                err = proj_s ? canopy_graph_diff(proj_s, props_s, &patch) : CANOPY_ERR_NOMEM;
                                free(proj_s);
                                if (err)
                                        goto out;
                                if (patch) {
                                        changed_from_patch(o, patch);
                                        err = canopy_graph_update(ec->gc, kind, id, patch, &ei);
                                        count_graph(ec, GK_UPDATE, err);
                                        if (err && canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT) {
                                                err = record_error(ec, type, err, &ei, o);
                                                goto out;
                                        }
                                        if (err)
                                                goto out;
                                } else
                                        o->op = CANOPY_EXP_NOOP;
                                if (kind == CANOPY_GRAPH_GROUP) {
                                        /* What is already there counts as exported. */
                                        char **ids = NULL;
                                        size_t nids = 0;
                                        err = canopy_graph_members_list(ec->gc, id, 0, &ids, &nids, &ei);
                                        count_graph(ec, GK_GET, err);
                                        if (err)
                                                goto out;
                                        err = canopy_state_exp_members_apply(ec->st, mv_id, true,
                                                                             (const char *const *)ids, nids, NULL, 0);
                                        if (!err)
                                                err = canopy_state_memberof_add(ec->st, (const char *const *)ids,
                                                                                nids, mv_id);
                                        canopy_graph_ids_free(ids, nids);
                                        if (err)
                                                goto out;
                                }
                        } else if (kind == CANOPY_GRAPH_GROUP) {
                                err = canopy_state_exp_members_apply(ec->st, mv_id, true, NULL, 0, NULL, 0);
                                if (err)
                                        goto out;
                        }
                        err = canopy_state_exp_record_created(ec->st, mv_id, id, d.immutable_id, props_s,
                                                              worker_now_ms());
                        if (err)
                                goto out;
                        /* The base of a percentage deletion threshold. */
                        canopy_guard_synced_add(ec->st, 1);
                        fresh = true;
                }
        }
        bool woken = false; /* the members were brought up to date from what changed */
        if (kind == CANOPY_GRAPH_GROUP && !staging && !fresh && o->entra_id[0] &&
            (ec->ev->reason == CANOPY_MV_RESOLVE || ec->ev->reason == CANOPY_MV_UPDATE)) {
                err = members_delta(ec, mv_id, &d, o, &woken);
                if (err)
                        goto out;
        }
        if (kind == CANOPY_GRAPH_GROUP && !woken) {
                /* Everything: what it leaves waiting is recorded for the
                 * incremental computations to come (members_delta). The
                 * woken keys and member changes noted so far are dropped
                 * first: the reads below see what they announced. */
                size_t waiting = 0, nrefs = 0;
                waitlist wl = {.ok = true};
                char print[17];
                records_fingerprint(&d, print);
                err = canopy_state_group_waits_reset(ec->st, mv_id);
                if (!err)
                        err = desired_members(ec, mv_id, &d, &want, &waiting, &nrefs, staging ? NULL : &wl);
                if (!err)
                        atomic_fetch_add_explicit(&ec->w->m.members_full, 1, memory_order_relaxed);
                if (!err) {
                        char **h = NULL;
                        size_t nh = 0;
                        err = canopy_state_exp_members(ec->st, mv_id, &h, &nh);
                        for (size_t i = 0; !err && i < nh; i++)
                                err = strset_add(&have, h[i]);
                        canopy_state_strv_free(h);
                        strset_sort(&have);
                }
                CANOPY_DEBUG(MOD, "%s full (reason %d): %zu references, %zu members wanted, %zu exported, %zu waiting, %zu waits",
                             mv_id, (int)ec->ev->reason, nrefs, want.n, have.n, waiting, wl.n);
                if (!err && (o->entra_id[0] || staging))
                        err = export_members(ec, o->entra_id, &want, &have, waiting, o, stage_detail);
                /* Removals held back while members wait: RESOLVEs must
                 * compute everything until they are done. */
                bool held = false;
                for (size_t i = 0; waiting && i < have.n && !held; i++)
                        held = !strset_has(&want, have.v[i]);
                if (!err && !staging && o->entra_id[0] && wl.ok && nrefs >= INCREMENTAL_MIN_REFS)
                        err = canopy_state_group_waits_set(ec->st, mv_id, held, print, (const char *const *)wl.keys,
                                                           (const char *const *)wl.vals, wl.n, NULL);
                waitlist_free(&wl);
                if (err)
                        goto out;
        }
        if (staging) {
                if (o->op != CANOPY_EXP_NOOP)
                        err = stage(ec, o->op == CANOPY_EXP_CREATE ? "create" : "update", stage_detail, o);
                goto out;
        }
        if (o->result != CANOPY_RES_ERROR) {
                err = canopy_state_error_clear(ec->st, mv_id);
                if (!err)
                        err = canopy_state_staged_clear(ec->st, mv_id);
                o->publish = o->op != CANOPY_EXP_NOOP;
                o->result = CANOPY_RES_OK;
        }
        /* Groups waiting for this object can now point at it. */
        if (!err && o->entra_id[0]) {
                char **groups = NULL;
                size_t n = 0;
                err = canopy_state_pending_take(ec->st, mv_id, &groups, &n);
                for (size_t i = 0; !err && i < n; i++) {
                        CANOPY_DEBUG(MOD, "%s exported: wakes group %s", mv_id, groups[i]);
                        err = publish_mv(ec, groups[i], "group", CANOPY_MV_RESOLVE);
                }
                if (err && groups)
                        for (size_t i = 0; i < n; i++)
                                canopy_state_pending_add(ec->st, mv_id, groups[i]);
                canopy_state_strv_free(groups);
        }
out:
        json_decref(stage_detail);
        free(props_s);
        free(patch);
        strset_free(&want);
        strset_free(&have);
        desired_clear(&d);
        canopy_export_state_free(es);
        canopy_mv_record_free(mv);
        if (!err && o->op == CANOPY_EXP_NOOP && !o->publish)
                atomic_fetch_add_explicit(&ec->w->m.export_noop, 1, memory_order_relaxed);
        return err;
}

/* Leaving staging mode: every staged difference is replayed so that the
 * export stage sends it now. */
static canopy_err replay_staged(export_ctx *ec) {
        uint64_t cur = 0;
        size_t n_all = 0;
        canopy_err err;
        do {
                char **ids = NULL;
                size_t n = 0;
                err = canopy_state_staged_scan(ec->st, &cur, &ids, &n);
                for (size_t i = 0; !err && i < n; i++) {
                        canopy_mv_record *mv = NULL;
                        canopy_err ge = canopy_state_mv_get(ec->st, ids[i], &mv);
                        const char *type = !ge && mv->object_type ? mv->object_type : "user";
                        canopy_export_state *es = NULL;
                        if (ge == CANOPY_ERR_NOT_FOUND && !canopy_state_exp_get(ec->st, ids[i], &es)) {
                                /* a staged delete: the type is gone with the mv object */
                                char *j = NULL;
                                if (!canopy_state_staged_get(ec->st, ids[i], &j) && strstr(j, "\"group\""))
                                        type = "group";
                                free(j);
                        }
                        canopy_export_state_free(es);
                        err = publish_mv(ec, ids[i], type, CANOPY_MV_REPLAY);
                        canopy_mv_record_free(mv);
                        n_all++;
                }
                canopy_state_strv_free(ids);
        } while (!err && cur);
        if (!err && n_all) {
                if (!worker_flush(ec->w))
                        return CANOPY_ERR_KAFKA;
                CANOPY_INFO(MOD, "staging off: %zu staged differences replayed for export", n_all);
        }
        return err;
}

static canopy_err open_graph(worker *w, canopy_graph **ret) {
        canopy_graph_conf gcf;
        canopy_graph_conf_init(&gcf);
        canopy_worker_conf *c = w->conf;
        if (!c->graph_tenant || !c->graph_client_id) {
                CANOPY_ERROR(MOD, "graph.tenant and graph.client_id are required by the export stage");
                return CANOPY_ERR_CONFIG_MISSING;
        }
        if (canopy_graph_cloud_parse(c->graph_cloud ? c->graph_cloud : "global", &gcf.cloud))
                return CANOPY_ERR_CONFIG;
        gcf.authority_url = c->graph_authority_url ? c->graph_authority_url : c->graph_url;
        gcf.graph_url = c->graph_url;
        gcf.tenant = c->graph_tenant;
        gcf.client_id = c->graph_client_id;
        gcf.client_secret = c->graph_secret;
        gcf.cert_file = c->graph_cert_file;
        gcf.key_file = c->graph_key_file;
        /* the config layer admits only these words (conf_worker.c) */
        gcf.jwt_alg = c->graph_cert_alg && !strcmp(c->graph_cert_alg, "PS256") ? CANOPY_GRAPH_JWT_PS256
                                                                               : CANOPY_GRAPH_JWT_RS256;
        gcf.jwt_x5t_sha256 = c->graph_cert_thumbprint && !strcmp(c->graph_cert_thumbprint, "x5t#S256");
        gcf.ca_file = c->graph_ca_file;
        gcf.allow_insecure = c->graph_allow_insecure;
        gcf.max_concurrency = (int)c->graph_concurrency;
        gcf.redis_host = c->redis_host;
        gcf.redis_port = (int)c->redis_port;
        gcf.redis_password = c->redis_password;
        gcf.budget_writes = c->graph_budget;
        gcf.budget_window_ms = c->graph_budget_window_ms;
        char eb[512] = "";
        canopy_err err = canopy_graph_new(&gcf, ret, eb, sizeof(eb));
        if (err)
                CANOPY_ERROR(MOD, "graph client: %s", eb);
        return err;
}

/* ---- the guard ------------------------------------------------------------ */

/* Messages fetched while the stage waited for the guard, handled first (in
 * order) once it goes on. Paused partitions deliver nothing new, so this
 * holds at most what was already in flight. */
#define DEFERQ_MAX 100000
typedef struct deferq {
        canopy_kafka_msg **v;
        size_t head, n, cap;
} deferq;

static canopy_err deferq_push(deferq *q, canopy_kafka_msg *m) {
        if (q->head + q->n == q->cap) {
                if (q->head) {
                        memmove(q->v, q->v + q->head, q->n * sizeof(*q->v));
                        q->head = 0;
                } else {
                        if (q->cap >= DEFERQ_MAX)
                                return CANOPY_ERR_LIMIT;
                        size_t nc = q->cap ? 2 * q->cap : 64;
                        canopy_kafka_msg **nv = realloc(q->v, nc * sizeof(*nv));
                        if (!nv)
                                return CANOPY_ERR_NOMEM;
                        q->v = nv;
                        q->cap = nc;
                }
        }
        q->v[q->head + q->n++] = m;
        return CANOPY_OK;
}

static canopy_kafka_msg *deferq_pop(deferq *q) {
        if (!q->n)
                return NULL;
        q->n--;
        return q->v[q->head++];
}

static void deferq_free(deferq *q) {
        canopy_kafka_msg *m;
        while ((m = deferq_pop(q)))
                canopy_kafka_msg_free(m); /* not marked done: redelivered to the next owner */
        free(q->v);
        memset(q, 0, sizeof(*q));
}

/* Wait while the guard holds the pipeline: every partition paused, the
 * consumer still polled (so the group keeps this worker however long an
 * operator takes), the guard asked again every second. held_delete: this
 * stage holds a delete, so wait until the quarantine is lifted (or, with
 * pause_all off, try the reservation again every few seconds). Returns
 * CANOPY_ERR_SHUTDOWN when the worker stops. */
static canopy_err guard_wait(export_ctx *ec, canopy_kafka_consumer *kc, deferq *dq, bool held_delete) {
        worker *w = ec->w;
        canopy_kafka_pause(kc, NULL, 0);
        CANOPY_WARN(MOD, "%s: export stage waiting for the guard (canopyctl guard status)",
                    held_delete ? "delete held" : "pipeline quarantined");
        int64_t start = worker_now_ms(), last_check = 0;
        canopy_err ret = CANOPY_OK;
        while (!*w->stop) {
                canopy_kafka_msg *m = NULL;
                canopy_err err = canopy_kafka_consume(kc, 200, &m);
                if (!err && m && deferq_push(dq, m)) {
                        CANOPY_ERROR(MOD, "too many messages fetched while paused: stopping without commit");
                        canopy_kafka_msg_free(m);
                        *w->stop = 1;
                        break;
                }
                int64_t now = worker_now_ms();
                if (now - last_check < 1000)
                        continue;
                last_check = now;
                canopy_guard_status s;
                if (canopy_guard_status_get(ec->st, now, &s))
                        continue; /* Redis away: keep waiting */
                if (!s.quarantined)
                        break;
                if (!s.pause_all && !held_delete)
                        break;
                if (!s.pause_all && held_delete && now - start >= 5000)
                        break; /* ask for the reservation again */
        }
        if (*w->stop)
                ret = CANOPY_ERR_SHUTDOWN;
        canopy_kafka_resume(kc, NULL, 0);
        if (!ret)
                CANOPY_INFO(MOD, "guard released the export stage after %lld ms",
                            (long long)(worker_now_ms() - start));
        return ret;
}

/* Before each export: wait while the pipeline is quarantined with
 * pause_all. Asks Redis at most every 500 ms. */
static canopy_err guard_gate(export_ctx *ec, canopy_kafka_consumer *kc, deferq *dq) {
        static _Thread_local int64_t last_ms;
        static _Thread_local bool last_paused;
        int64_t now = worker_now_ms();
        if (now - last_ms >= 500) {
                bool p = false;
                if (!canopy_guard_paused(ec->st, &p))
                        last_paused = p;
                last_ms = now;
        }
        if (!last_paused)
                return CANOPY_OK;
        canopy_err err = guard_wait(ec, kc, dq, false);
        last_ms = 0;
        return err;
}

/* Tell the guard about credentials: a 401/403 starts or continues a failure
 * streak (a long one quarantines); the first success after one ends it. */
static void auth_report(export_ctx *ec, canopy_err err) {
        static _Thread_local bool failing;
        if (err == CANOPY_ERR_GRAPH_AUTH) {
                bool q = false;
                failing = true;
                canopy_guard_report(ec->st, "graph", false, worker_now_ms(), &q);
                if (q)
                        CANOPY_ERROR(MOD, "Graph credentials refused for too long: pipeline quarantined");
        } else if (failing && (!err || canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT)) {
                failing = false;
                canopy_guard_report(ec->st, "graph", true, worker_now_ms(), NULL);
        }
}

/* Ask for a token at start-up, so that refused credentials are reported
 * at once (and counted by the guard) rather than at the first change to
 * export. A refusal does not stop the stage: the secret may be rotated
 * while it runs, and each export retries (slowly) until then. */
static void check_credentials(export_ctx *ec) {
        canopy_graph_error ei;
        memset(&ei, 0, sizeof(ei));
        canopy_err err = canopy_graph_authenticate(ec->gc, &ei);
        if (err == CANOPY_ERR_GRAPH_AUTH)
                CANOPY_ERROR(MOD,
                             "Graph authentication failed for client %s in tenant %s: %s%s%s; exports wait "
                             "until it succeeds (check graph.client_secret_file or graph.cert_file and "
                             "graph.key_file)",
                             ec->w->conf->graph_client_id, ec->w->conf->graph_tenant,
                             ei.code[0] ? ei.code : canopy_err_text(err), ei.message[0] ? ": " : "", ei.message);
        else if (err)
                CANOPY_WARN(MOD, "Graph token not fetched at start-up (%s%s%s); will retry on the first export",
                            canopy_err_text(err), ei.message[0] ? ": " : "", ei.message);
        auth_report(ec, err);
        canopy_graph_error_clear(&ei);
}

int worker_export_run(worker *w, int idx) {
        canopy_kafka_consumer *kc = NULL;
        int rc = 1;
        char eb[512];
        export_ctx ec = {.w = w, .a = canopy_arena_new(0, 0)};
        canopy_err err = canopy_state_new(w->conf->redis_host, (int)w->conf->redis_port, w->conf->redis_password,
                                          w->conf->redis_prefix, (int)w->conf->redis_timeout_ms, &ec.st);
        if (err) {
                CANOPY_ERROR(MOD, "redis: %s", canopy_err_text(err));
                goto out;
        }
        if (!w->conf->staging) {
                if (open_graph(w, &ec.gc))
                        goto out;
                /* Once per process, not per thread: the staged differences
                 * go to mv, where every thread (and worker) takes its share. */
                if (idx == 0) {
                        check_credentials(&ec);
                        for (int attempt = 0; (err = replay_staged(&ec)) && !*w->stop; attempt++)
                                if (canopy_err_class_of(err) != CANOPY_ERRCLASS_RETRIABLE ||
                                    !worker_backoff(w, attempt))
                                        goto out;
                }
        }
        canopy_topic topics[1] = {CANOPY_TOPIC_MV};
        canopy_kafka_consumer_opts opts = {w->conf->export_group, topics, 1, NULL, NULL, false};
        err = canopy_kafka_consumer_new(&w->conf->kafka, &opts, &kc, eb, sizeof(eb));
        if (err) {
                CANOPY_ERROR(MOD, "consumer: %s", eb);
                goto out;
        }
        CANOPY_INFO(MOD, "export stage started (group %s, thread %d of %d%s)", w->conf->export_group, idx + 1,
                    (int)w->conf->export_threads, w->conf->staging ? ", staging mode" : "");
        int64_t since_commit = 0;
        uint64_t lost_seen = 0;
        int64_t lag_next = 0;
        deferq dq = {0};
        while (!*w->stop) {
                canopy_kafka_msg *m = deferq_pop(&dq);
                err = m ? CANOPY_OK : canopy_kafka_consume(kc, (int)w->conf->poll_ms, &m);
                worker_lost_check(w, kc, "export", &lost_seen, &w->m.export_lost);
                if (idx < WORKER_MAX_EXPORT_THREADS)
                        worker_lag_sample(kc, &w->m.export_lag[idx], &lag_next);
                if (err == CANOPY_ERR_TIMEOUT || (!err && !m)) {
                        if (since_commit) {
                                if (!worker_flush(w))
                                        goto out;
                                canopy_kafka_commit(kc, false);
                                since_commit = 0;
                        }
                        int64_t v = 0;
                        if (!canopy_state_pending_count(ec.st, &v))
                                atomic_store(&w->m.pending_refs, v);
                        if (!canopy_state_error_count(ec.st, &v))
                                atomic_store(&w->m.errors, v);
                        continue;
                }
                if (err) {
                        CANOPY_ERROR(MOD, "consume: %s", canopy_err_text(err));
                        goto out;
                }
                canopy_mv_event ev;
                canopy_log_ctx lc = {NULL, NULL, m->topic, m->partition, m->offset};
                err = canopy_avro_decode_mv(m->value, m->len, &ev, eb, sizeof(eb));
                if (err) {
                        canopy_log(CANOPY_LOG_WARN, MOD, &lc, "undecodable mv event: %s", eb);
                        bool dl = worker_dead_letter(w, kc, m, err, eb, &w->m.export_dead);
                        canopy_kafka_msg_free(m);
                        if (!dl)
                                break;
                        continue;
                }
                ec.ev = &ev;
                outcome o;
                for (int attempt = 0;; attempt++) {
                        memset(&o, 0, sizeof(o));
                        /* A quarantine pauses the stage (guard.pause_all):
                         * stay in the group, commit nothing, go on after the
                         * operator's decision. */
                        err = guard_gate(&ec, kc, &dq);
                        if (err == CANOPY_ERR_SHUTDOWN)
                                break;
                        err = export_one(&ec, &o);
                        auth_report(&ec, err);
                        canopy_arena_reset(ec.a);
                        if (!err && o.publish)
                                err = publish_export(&ec, ev.object_type ? ev.object_type : "user", &o);
                        json_decref(o.changed);
                        o.changed = NULL;
                        if (!err || (canopy_err_class_of(err) != CANOPY_ERRCLASS_RETRIABLE &&
                                     err != CANOPY_ERR_GRAPH_AUTH) ||
                            *w->stop)
                                break;
                        canopy_log(CANOPY_LOG_WARN, MOD, &lc, "mv %s: retrying: %s", ev.mv_id, canopy_err_text(err));
                        if (err == CANOPY_ERR_DELETE_HELD) {
                                /* Held: announce it once, then wait for the
                                 * decision without leaving the group. */
                                if (o.publish && attempt == 0)
                                        publish_export(&ec, ev.object_type ? ev.object_type : "user", &o);
                                if (guard_wait(&ec, kc, &dq, true) == CANOPY_ERR_SHUTDOWN)
                                        break;
                                continue;
                        }
                        if (err == CANOPY_ERR_GRAPH_AUTH) {
                                /* Credentials refused: keep trying (slowly);
                                 * the guard quarantines when it lasts. */
                                if (!worker_backoff(w, attempt < 8 ? 8 : attempt))
                                        break;
                                continue;
                        }
                        if (!worker_backoff(w, attempt))
                                break;
                }
                ec.ev = NULL;
                bool done = !err;
                if (!err)
                        atomic_fetch_add_explicit(&w->m.export_events, 1, memory_order_relaxed);
                else if (canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT) {
                        canopy_log(CANOPY_LOG_WARN, MOD, &lc, "mv %s: dead letter: %s", ev.mv_id, canopy_err_text(err));
                        /* false only when stopping: the check below leaves then */
                        worker_dead_letter(w, kc, m, err, NULL, &w->m.export_dead);
                } else if (canopy_err_class_of(err) == CANOPY_ERRCLASS_FATAL) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, &lc, "mv %s: fatal: %s", ev.mv_id, canopy_err_text(err));
                        canopy_mv_event_free(&ev);
                        canopy_kafka_msg_free(m);
                        *w->stop = 1;
                        goto out;
                }
                canopy_mv_event_free(&ev);
                if (done)
                        canopy_kafka_mark_done(kc, m);
                canopy_kafka_msg_free(m);
                if (!done && *w->stop)
                        break;
                if (++since_commit >= w->conf->export_batch) {
                        if (!worker_flush(w))
                                goto out;
                        canopy_kafka_commit(kc, false);
                        since_commit = 0;
                }
        }
        deferq_free(&dq);
        if (worker_flush(w)) {
                canopy_kafka_consumer_close(kc);
                canopy_kafka_consumer_free(kc);
                rc = 0;
        }
        kc = NULL;
out:
        /* On a failure the consumer is left as is (not closed): closing would
         * commit offsets whose effects may not be acknowledged. The process
         * exits and Kafka hands the partitions over. */
        (void)kc;
        canopy_graph_free(ec.gc);
        canopy_graph_strv_free(ec.domains);
        free(ec.initial_domain);
        canopy_state_free(ec.st);
        canopy_arena_free(ec.a);
        CANOPY_INFO(MOD, "export stage stopped");
        return rc;
}
