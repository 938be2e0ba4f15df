/* join.c: the join stage. Consumes `changes`, keeps the connector space,
 * DN index, metaverse and join index in Redis, publishes one MvEvent per
 * affected metaverse object on `mv`. Offsets are committed only after the
 * effect is in Redis and the mv events are acknowledged by Kafka. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/arena.h"
#include "canopy/avro.h"
#include "canopy/guard_policy.h"
#include "canopy/log.h"
#include "worker.h"

#define MOD "join"

/* Run history (the guard's Sync History): counts aggregated in memory per
 * connector, object type and scan, written to Redis about once a second. */
#define RUN_SLOTS 32
typedef struct run_slot {
        char connector[128];
        char type[16];
        char scan[96];
        int64_t f[5]; /* canopy_run_field */
} run_slot;

typedef struct join_ctx {
        worker *w;
        canopy_state *st;
        canopy_arena *a;
        const canopy_change_event *ev; /* current event (for ts) */
        int64_t msg_ts_ms;             /* its Kafka timestamp (-1 unknown) */
        int32_t msg_partition;         /* its partition and offset in changes */
        int64_t msg_offset;
        run_slot runs[RUN_SLOTS];
        size_t nruns;
        int64_t runs_flushed_ms;
} join_ctx;

/* Write the aggregated counts; best effort (history must never stop the
 * pipeline), so a Redis error only loses these counts. */
static void run_flush(join_ctx *jc) {
        int64_t now = worker_now_ms();
        for (size_t i = 0; i < jc->nruns; i++) {
                run_slot *r = &jc->runs[i];
                for (int f = 0; f < 5; f++)
                        if (r->f[f] && canopy_run_count(jc->st, r->connector, r->type, r->scan[0] ? r->scan : NULL,
                                                        (canopy_run_field)f, r->f[f], now))
                                CANOPY_WARN(MOD, "run history: cannot record counts (%s)", canopy_state_errstr(jc->st));
        }
        jc->nruns = 0;
        jc->runs_flushed_ms = now;
}

static void run_note(join_ctx *jc, const char *connector, const char *type, const char *scan, canopy_run_field f,
                     int64_t n) {
        if (!connector || !n)
                return;
        if (!type)
                type = "unknown";
        if (!scan)
                scan = "";
        for (size_t i = 0; i < jc->nruns; i++) {
                run_slot *r = &jc->runs[i];
                if (!strcmp(r->connector, connector) && !strcmp(r->type, type) && !strcmp(r->scan, scan)) {
                        r->f[f] += n;
                        return;
                }
        }
        if (jc->nruns == RUN_SLOTS)
                run_flush(jc);
        run_slot *r = &jc->runs[jc->nruns++];
        memset(r, 0, sizeof(*r));
        snprintf(r->connector, sizeof(r->connector), "%s", connector);
        snprintf(r->type, sizeof(r->type), "%s", type);
        snprintf(r->scan, sizeof(r->scan), "%s", scan);
        r->f[f] = n;
}

/* Publish an MvEvent for mv_id with its current contributors. */
static canopy_err publish_mv(join_ctx *jc, const char *mv_id, const char *type, canopy_mv_reason reason,
                             const char *cause) {
        if (reason == CANOPY_MV_RESOLVE) {
                bool send;
                canopy_err ce = worker_resolve_claim(jc->w, jc->st, mv_id, &send);
                if (ce || !send)
                        return ce;
        }
        canopy_mv_record *rec = NULL;
        canopy_err err = canopy_state_mv_get(jc->st, mv_id, &rec);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                return err;
        canopy_mv_event mv = {0};
        mv.mv_id = (char *)mv_id;
        mv.object_type = (char *)(rec && rec->object_type ? rec->object_type : (type ? type : "user"));
        mv.contribs = rec ? rec->contribs : NULL;
        mv.ncontribs = rec ? rec->ncontribs : 0;
        mv.reason = reason;
        mv.cause_connector = (char *)cause;
        mv.ts_ms = worker_now_ms();
        mv.source_ts_ms = jc->ev ? jc->ev->source_ts_ms : 0;
        char eb[CANOPY_AVRO_ERRLEN];
        err = canopy_kafka_produce_mv(jc->w->kp, &mv, NULL, eb, sizeof(eb));
        if (err) {
                CANOPY_ERROR(MOD, "produce mv %s: %s", mv_id, eb);
                if (reason == CANOPY_MV_RESOLVE) /* not sent: the retry must claim it again */
                        canopy_state_resolve_start(jc->st, mv_id);
        }
        else
                atomic_fetch_add_explicit(&jc->w->m.mv_published, 1, memory_order_relaxed);
        canopy_mv_record_free(rec);
        return err;
}

/* The DN `norm` (normalised) now belongs to `anchor`: groups holding it
 * as "d:<dn>" name the anchor instead (canopy_state_dnref_rebind), and
 * those exported note the member as added for their next computation. */
static canopy_err rebind_dn_refs(join_ctx *jc, const char *connector, const char *norm, const canopy_bytes *anchor) {
        char *ref = NULL, *aref = NULL, **groups = NULL;
        size_t n = 0, bl = 4 * ((anchor->len + 2) / 3) + 3;
        if (asprintf(&ref, "d:%s", norm) < 0)
                return CANOPY_ERR_NOMEM;
        aref = malloc(bl);
        canopy_err err = aref ? canopy_state_dnref_rebind(jc->st, connector, ref, anchor, &groups, &n)
                              : CANOPY_ERR_NOMEM;
        if (aref) {
                aref[0] = 'a';
                aref[1] = ':';
                canopy_state_anchor_b64(anchor, aref + 2, bl - 2);
        }
        for (size_t i = 0; !err && i < n; i++) {
                CANOPY_DEBUG(MOD, "%s rebound to %s in group %s", ref, aref, groups[i]);
                const char *add[1] = {aref};
                err = canopy_state_group_delta_note(jc->st, groups[i], connector, add, 1, NULL, 0);
                if (!err)
                        err = publish_mv(jc, groups[i], "group", CANOPY_MV_RESOLVE, connector);
        }
        canopy_state_strv_free(groups);
        free(aref);
        free(ref);
        return err;
}

/* Groups waiting for a DN that now exists: re-export them. */
static canopy_err resolve_dn_waiters(join_ctx *jc, const char *connector, const char *dn, const canopy_bytes *anchor) {
        char *norm = NULL, *key = NULL, **groups = NULL;
        size_t n = 0;
        canopy_err err = canopy_state_dn_norm(dn, &norm);
        if (err)
                return err;
        if (asprintf(&key, "d:%s\x1f%s", connector, norm) < 0) {
                free(norm);
                return CANOPY_ERR_NOMEM;
        }
        err = rebind_dn_refs(jc, connector, norm, anchor);
        if (!err)
                err = canopy_state_pending_take(jc->st, key, &groups, &n);
        for (size_t i = 0; !err && i < n; i++) {
                CANOPY_DEBUG(MOD, "DN %s seen: wakes group %s", norm, groups[i]);
                err = publish_mv(jc, groups[i], "group", CANOPY_MV_RESOLVE, connector);
        }
        if (err && groups) /* put them back: the event will be retried */
                for (size_t i = 0; i < n; i++)
                        canopy_state_pending_add(jc->st, key, groups[i]);
        canopy_state_strv_free(groups);
        free(key);
        free(norm);
        return err;
}

/* Groups waiting for (connector, anchor) to join: export them again. */
static canopy_err resolve_anchor_waiters(join_ctx *jc, const canopy_cs_record *rec) {
        size_t bl = 4 * ((rec->anchor.len + 2) / 3) + 1;
        char *b64 = malloc(bl), *key = NULL, **groups = NULL;
        size_t n = 0;
        if (!b64)
                return CANOPY_ERR_NOMEM;
        canopy_state_anchor_b64(&rec->anchor, b64, bl);
        int r = asprintf(&key, "c:%s\x1f%s", rec->connector, b64);
        free(b64);
        if (r < 0)
                return CANOPY_ERR_NOMEM;
        canopy_err err = canopy_state_pending_take(jc->st, key, &groups, &n);
        for (size_t i = 0; !err && i < n; i++) {
                CANOPY_DEBUG(MOD, "%s joined: wakes group %s", key, groups[i]);
                err = publish_mv(jc, groups[i], "group", CANOPY_MV_RESOLVE, rec->connector);
        }
        if (err && groups)
                for (size_t i = 0; i < n; i++)
                        canopy_state_pending_add(jc->st, key, groups[i]);
        canopy_state_strv_free(groups);
        free(key);
        return err;
}

/* The contribution of rec leaves its mv object (out of scope or deleted). */
static canopy_err disconnect(join_ctx *jc, canopy_cs_record *rec) {
        if (!rec->mv_id)
                return CANOPY_OK;
        size_t left = 0;
        canopy_err err = canopy_state_mv_remove_contrib(jc->st, rec->mv_id, rec->connector, &rec->anchor, &left);
        if (err)
                return err;
        if (left == 0) {
                /* Nothing left: the mv object goes; the export stage deletes
                 * its cloud object (through the guard) when it sees no
                 * contributor. Its join keys are released. */
                err = canopy_state_mv_delete(jc->st, rec->mv_id);
                if (err)
                        return err;
        }
        err = publish_mv(jc, rec->mv_id, rec->object_class, left ? CANOPY_MV_DISCONNECT : CANOPY_MV_DELETE,
                         rec->connector);
        if (err)
                return err;
        free(rec->mv_id);
        rec->mv_id = NULL;
        return CANOPY_OK;
}

/* Delete a connector-space object entirely. */
static canopy_err remove_object(join_ctx *jc, canopy_cs_record *rec) {
        canopy_err err = disconnect(jc, rec);
        if (!err && rec->dn)
                err = canopy_state_dn_del(jc->st, rec->connector, rec->dn, &rec->anchor);
        if (!err)
                err = canopy_state_cs_delete(jc->st, rec->connector, &rec->anchor);
        return err;
}

static bool is_ref_attr(const char *name, const char *member_attr) {
        return !strcasecmp(name, "member") || !strcasecmp(name, "uniquemember") ||
               (member_attr && !strcasecmp(name, member_attr));
}

/* "a:<anchor b64>" (owned), NULL when out of memory. */
static char *anchor_ref(const canopy_bytes *anchor) {
        size_t bl = 4 * ((anchor->len + 2) / 3) + 3;
        char *r = malloc(bl);
        if (r) {
                r[0] = 'a';
                r[1] = ':';
                canopy_state_anchor_b64(anchor, r + 2, bl - 2);
        }
        return r;
}

/* Member DN -> reference: "a:<anchor b64>" when the DN is known, else
 * "d:<normalised DN>" (resolved at export time). Owned string. */
static canopy_err member_ref(join_ctx *jc, const char *connector, const canopy_bytes *dnv, char **ret) {
        char *dn = strndup((const char *)dnv->data, dnv->len);
        canopy_bytes anchor = {0};
        if (!dn)
                return CANOPY_ERR_NOMEM;
        canopy_err err = canopy_state_dn_get(jc->st, connector, dn, &anchor);
        if (err == CANOPY_OK) {
                *ret = anchor_ref(&anchor);
                err = *ret ? CANOPY_OK : CANOPY_ERR_NOMEM;
                free(anchor.data);
        } else if (err == CANOPY_ERR_NOT_FOUND) {
                char *norm = NULL;
                err = canopy_state_dn_norm(dn, &norm);
                if (!err) {
                        if (asprintf(ret, "d:%s", norm) < 0)
                                err = CANOPY_ERR_NOMEM;
                        free(norm);
                }
        }
        free(dn);
        return err;
}

/* "a:<anchor>" of the object that held the member DN dnv before it was
 * renamed away or deleted, or *ret NULL. */
static canopy_err former_ref(join_ctx *jc, const char *connector, const canopy_bytes *dnv, char **ret) {
        *ret = NULL;
        char *dn = strndup((const char *)dnv->data, dnv->len);
        canopy_bytes anchor = {0};
        if (!dn)
                return CANOPY_ERR_NOMEM;
        canopy_err err = canopy_state_dn_former(jc->st, connector, dn, &anchor);
        free(dn);
        if (err == CANOPY_ERR_NOT_FOUND)
                return CANOPY_OK;
        if (err)
                return err;
        *ret = anchor_ref(&anchor);
        free(anchor.data);
        return *ret ? CANOPY_OK : CANOPY_ERR_NOMEM;
}

static bool in_refs(char **v, size_t n, const char *ref) {
        for (size_t i = 0; i < n; i++)
                if (v[i] && !strcmp(v[i], ref))
                        return true;
        return false;
}

static void refs_free(char **v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

/* Member references of vals. An empty DN is skipped: groupOfNames needs
 * one member, and an empty value is the usual placeholder for "none". */
static canopy_err refs_of(join_ctx *jc, const char *connector, const canopy_bytes *vals, size_t n, char ***ret,
                          size_t *ret_n) {
        char **v = calloc(n + 1, sizeof(*v));
        size_t k = 0;
        if (!v)
                return CANOPY_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
                size_t b = 0;
                while (b < vals[i].len && vals[i].data[b] == ' ')
                        b++;
                if (b == vals[i].len)
                        continue;
                canopy_err err = member_ref(jc, connector, &vals[i], &v[k]);
                if (err) {
                        refs_free(v, k);
                        return err;
                }
                k++;
        }
        *ret = v;
        *ret_n = k;
        return CANOPY_OK;
}

/* Apply the member attribute of the event to the group's reference set. */
static canopy_err apply_members(join_ctx *jc, const canopy_change_event *ev, const canopy_attr *at, bool replace,
                                const char *group_mv) {
        char **add = NULL, **rm = NULL;
        size_t nadd = 0, nrm = 0;
        canopy_err err = refs_of(jc, ev->connector, at->delta ? at->added : at->values,
                                 at->delta ? at->nadded : at->nvalues, &add, &nadd);
        if (!err)
                err = refs_of(jc, ev->connector, at->removed, at->delta ? at->nremoved : 0, &rm, &nrm);
        /* A member named before its entry was seen is held as "d:<dn>" and
         * stays so in the set after the DN becomes known: a removal must
         * remove that form too, or Entra keeps the member. */
        if (!err && nrm) {
                char **both = calloc(2 * nrm + 1, sizeof(*both));
                size_t nb = 0, k = 0;
                if (!both)
                        err = CANOPY_ERR_NOMEM;
                /* rm[k] is the reference of the k-th non-empty removed value. */
                for (size_t j = 0; !err && j < at->nremoved && k < nrm; j++) {
                        const canopy_bytes *v = &at->removed[j];
                        size_t b = 0;
                        while (b < v->len && v->data[b] == ' ')
                                b++;
                        if (b == v->len)
                                continue;
                        both[nb++] = rm[k];
                        bool by_anchor = !strncmp(rm[k], "a:", 2);
                        rm[k++] = NULL;
                        if (!by_anchor) {
                                /* A DN no object holds now: the producer
                                 * kept the value from before the member was
                                 * renamed or moved (AD shows members by
                                 * their current DN, so a stored set goes
                                 * stale), and the set holds the member by
                                 * anchor. Remove the object that held it,
                                 * unless the same event adds it back. */
                                char *fr = NULL;
                                err = former_ref(jc, ev->connector, v, &fr);
                                if (!err && fr && !in_refs(add, nadd, fr))
                                        both[nb++] = fr;
                                else
                                        free(fr);
                                continue;
                        }
                        char *dn = strndup((const char *)v->data, v->len), *norm = NULL;
                        if (dn && !canopy_state_dn_norm(dn, &norm) && asprintf(&both[nb], "d:%s", norm) >= 0)
                                nb++;
                        free(norm);
                        free(dn);
                }
                if (!err) {
                        refs_free(rm, nrm);
                        rm = both;
                        nrm = nb;
                } else if (both)
                        refs_free(both, nb);
        }
        if (!err)
                err = canopy_state_cs_members_apply(jc->st, ev->connector, &ev->anchor, replace && !at->delta,
                                                    (const char *const *)add, nadd, (const char *const *)rm, nrm);
        /* A member DN not seen yet: noted, so that it becomes an anchor
         * when the DN appears; looked up again after the note, since it may
         * have appeared meanwhile (and found no note). */
        for (size_t i = 0; !err && i < nadd; i++) {
                if (strncmp(add[i], "d:", 2))
                        continue;
                canopy_bytes anchor = {0};
                err = canopy_state_dnref_add(jc->st, ev->connector, add[i], &ev->anchor);
                canopy_err ge = err ? err : canopy_state_dn_get(jc->st, ev->connector, add[i] + 2, &anchor);
                if (!err && ge == CANOPY_OK)
                        err = rebind_dn_refs(jc, ev->connector, add[i] + 2, &anchor);
                else if (ge != CANOPY_ERR_NOT_FOUND)
                        err = ge;
                free(anchor.data);
        }
        /* The export stage computes an exported group's members from what
         * changed (canopy_state_group_delta_note); a whole new set makes it
         * compute every member. After the set: a computation between the
         * two reads the new set, and the note only repeats it. */
        if (!err && group_mv)
                err = replace && !at->delta ? canopy_state_group_waits_clear(jc->st, group_mv)
                                            : canopy_state_group_delta_note(jc->st, group_mv, ev->connector,
                                                                            (const char *const *)add, nadd,
                                                                            (const char *const *)rm, nrm);
        if (add)
                refs_free(add, nadd);
        if (rm)
                refs_free(rm, nrm);
        return err;
}

/* Apply a delta (added/removed values) to a plain attribute of rec. */
static canopy_err apply_value_delta(canopy_cs_record *rec, const canopy_attr *at) {
        const canopy_attr *cur = canopy_cs_record_attr(rec, at->name);
        size_t n = cur ? cur->nvalues : 0;
        canopy_bytes *v = calloc(n + at->nadded + 1, sizeof(*v));
        size_t k = 0;
        if (!v)
                return CANOPY_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
                bool gone = false;
                for (size_t j = 0; j < at->nremoved && !gone; j++)
                        gone = at->removed[j].len == cur->values[i].len &&
                               !memcmp(at->removed[j].data, cur->values[i].data, at->removed[j].len);
                if (!gone)
                        v[k++] = cur->values[i];
        }
        for (size_t j = 0; j < at->nadded; j++) {
                bool dup = false;
                for (size_t i = 0; i < k && !dup; i++)
                        dup = v[i].len == at->added[j].len && !memcmp(v[i].data, at->added[j].data, v[i].len);
                if (!dup)
                        v[k++] = at->added[j];
        }
        canopy_err err = canopy_cs_record_set_attr(rec, at->name, at->binary || (cur && cur->binary), v, k);
        free(v);
        return err;
}

/* Find or create the mv object of rec (atomic through the join index). */
/* Does metaverse object `id` hold a record of rec's connector other than
 * rec? A metaverse object has at most one record per connector (as Entra
 * Connect): two objects of one directory sharing a join value (the same
 * mail on two people) are two people, not one. */
static canopy_err holds_other_of_connector(join_ctx *jc, const char *id, const canopy_cs_record *rec, bool *ret) {
        *ret = false;
        canopy_mv_record *mv = NULL;
        canopy_err err = canopy_state_mv_get(jc->st, id, &mv);
        if (err == CANOPY_ERR_NOT_FOUND)
                return CANOPY_OK;
        for (size_t i = 0; !err && i < mv->ncontribs && !*ret; i++)
                *ret = !strcmp(mv->contribs[i].connector, rec->connector) &&
                       (mv->contribs[i].anchor.len != rec->anchor.len ||
                        memcmp(mv->contribs[i].anchor.data, rec->anchor.data, rec->anchor.len));
        canopy_mv_record_free(mv);
        return err;
}

static canopy_err join_or_project(join_ctx *jc, canopy_cs_record *rec, const char *type,
                                  const canopy_obj_view *view, canopy_mv_reason *ret_reason) {
        const canopy_join_rule *rules = NULL;
        size_t nrules = 0;
        canopy_rules_join_rules(jc->w->rules, rec->connector, type, &rules, &nrules);
        char found[33] = "";
        char **keys = NULL;
        size_t nkeys = 0;
        canopy_err err = CANOPY_OK;
        keys = calloc(64, sizeof(*keys));
        if (!keys)
                return CANOPY_ERR_NOMEM;
        /* Collect the join keys of every rule, in rule order. */
        for (size_t i = 0; i < nrules && !err; i++) {
                const char *const *vals = NULL;
                size_t nv = 0;
                const char *anchor_val[1];
                if (rules[i].is_anchor) {
                        size_t bl = 4 * ((rec->anchor.len + 2) / 3) + 1;
                        char *b = canopy_arena_alloc(jc->a, bl);
                        if (!b) {
                                err = CANOPY_ERR_NOMEM;
                                break;
                        }
                        canopy_state_anchor_b64(&rec->anchor, b, bl);
                        anchor_val[0] = b;
                        vals = anchor_val;
                        nv = 1;
                } else {
                        err = canopy_rules_join_values(jc->w->rules, &rules[i], view, jc->a, &vals, &nv);
                        if (err)
                                break;
                }
                for (size_t j = 0; j < nv && nkeys < 63; j++) {
                        err = canopy_state_join_key(type, rules[i].mv, vals[j], &keys[nkeys]);
                        if (err)
                                break;
                        nkeys++;
                        if (!found[0]) {
                                canopy_err le = canopy_state_join_lookup(jc->st, keys[nkeys - 1], found);
                                if (le && le != CANOPY_ERR_NOT_FOUND)
                                        err = le;
                                bool taken = false;
                                if (!le)
                                        err = holds_other_of_connector(jc, found, rec, &taken);
                                if (!err && taken) {
                                        CANOPY_INFO(MOD, "%s: not joined on %s: its metaverse object already holds "
                                                         "another object of connector %s (two objects share the "
                                                         "value)",
                                                    rec->dn ? rec->dn : "?", rules[i].mv, rec->connector);
                                        found[0] = '\0';
                                }
                        }
                }
        }
        bool projecting = !found[0];
        char id[33];
        if (!err) {
                if (projecting)
                        canopy_state_mv_id_for(rec->connector, &rec->anchor, id);
                else
                        snprintf(id, sizeof(id), "%s", found);
        }
        /* Claim every key; the first lost race while projecting turns the
         * projection into a join with the winner. */
        for (size_t i = 0; !err && i < nkeys; i++) {
                char holder[33];
                err = canopy_state_join_claim(jc->st, keys[i], id, holder);
                if (err)
                        break;
                if (strcmp(holder, id)) {
                        bool taken = false;
                        if (projecting)
                                err = holds_other_of_connector(jc, holder, rec, &taken);
                        if (!err && projecting && !taken) {
                                snprintf(id, sizeof(id), "%s", holder);
                                projecting = false;
                        }
                        continue;
                }
                err = canopy_state_mv_note_join_key(jc->st, id, keys[i]);
        }
        if (!err) {
                canopy_mv_record *mv = NULL;
                canopy_err ge = canopy_state_mv_get(jc->st, id, &mv);
                if (ge && ge != CANOPY_ERR_NOT_FOUND)
                        err = ge;
                bool others = false;
                for (size_t i = 0; mv && i < mv->ncontribs; i++)
                        if (strcmp(mv->contribs[i].connector, rec->connector) ||
                            mv->contribs[i].anchor.len != rec->anchor.len ||
                            memcmp(mv->contribs[i].anchor.data, rec->anchor.data, rec->anchor.len))
                                others = true;
                canopy_mv_record_free(mv);
                *ret_reason = others ? CANOPY_MV_JOIN : CANOPY_MV_PROJECT;
        }
        if (!err)
                err = canopy_state_mv_add_contrib(jc->st, id, type, rec->connector, &rec->anchor);
        if (!err) {
                free(rec->mv_id);
                rec->mv_id = strdup(id);
                if (!rec->mv_id)
                        err = CANOPY_ERR_NOMEM;
        }
        for (size_t i = 0; i < nkeys; i++)
                free(keys[i]);
        free(keys);
        return err;
}

/* Claim join keys of an object already joined (values may have changed). */
static canopy_err refresh_join_keys(join_ctx *jc, canopy_cs_record *rec, const char *type, const canopy_obj_view *view) {
        const canopy_join_rule *rules = NULL;
        size_t nrules = 0;
        canopy_rules_join_rules(jc->w->rules, rec->connector, type, &rules, &nrules);
        canopy_err err = CANOPY_OK;
        for (size_t i = 0; i < nrules && !err; i++) {
                if (rules[i].is_anchor)
                        continue;
                const char *const *vals = NULL;
                size_t nv = 0;
                err = canopy_rules_join_values(jc->w->rules, &rules[i], view, jc->a, &vals, &nv);
                for (size_t j = 0; !err && j < nv; j++) {
                        char *k = NULL, holder[33];
                        err = canopy_state_join_key(type, rules[i].mv, vals[j], &k);
                        if (!err)
                                err = canopy_state_join_claim(jc->st, k, rec->mv_id, holder);
                        if (!err && !strcmp(holder, rec->mv_id))
                                err = canopy_state_mv_note_join_key(jc->st, rec->mv_id, k);
                        free(k);
                }
        }
        return err;
}

/* Start time of a full pass from its id "<connector>-<start ms>-<hex>"
 * (canopy-producer-ldap's format); 0 when the id has another form. */
static int64_t scan_start_ms(const char *scan_id) {
        const char *last = strrchr(scan_id, '-');
        if (!last || last == scan_id)
                return 0;
        const char *p = last - 1;
        while (p > scan_id && *p != '-')
                p--;
        if (*p != '-')
                return 0;
        char *end = NULL;
        long long v = strtoll(p + 1, &end, 10);
        return end == last && v > 0 ? (int64_t)v : 0;
}

/* END_OF_SCAN: everything of the connector not seen by this scan is gone
 * (a full import).
 *
 * The producer sends the marker to every partition of changes (nchunks
 * pieces, chunk = partition), after every event of the pass. Each piece is
 * recorded in Redis; the worker that records the last one sweeps. So the
 * sweep runs only once every event of the pass was applied, whichever
 * partition and worker it went to: a record the pass saw cannot be taken
 * for one it did not. A marker of one piece (nchunks 1) sweeps at once.
 *
 * A record not seen by the pass but written by an event published after the
 * pass began (a persist-phase change, the refresh after the pass, applied
 * before the last piece) is not gone either: it is kept when the Kafka
 * timestamp of its last event is not older than the pass's start (one
 * second of slack for the producer's clock). */
static canopy_err end_of_scan(join_ctx *jc, const canopy_change_event *ev) {
        if (!ev->scan_id || !ev->connector)
                return CANOPY_ERR_DECODE;
        if (ev->nchunks > 1) {
                bool due = false;
                canopy_err pe = canopy_state_scan_piece(jc->st, ev->connector, ev->scan_id, ev->chunk, ev->nchunks,
                                                        &due);
                if (pe || !due)
                        return pe;
        }
        int64_t started = scan_start_ms(ev->scan_id);
        uint64_t cur = 0;
        size_t removed = 0;
        canopy_err err = CANOPY_OK;
        do {
                canopy_bytes *anchors = NULL;
                size_t n = 0;
                err = canopy_state_cs_scan(jc->st, ev->connector, &cur, &anchors, &n);
                if (err)
                        break;
                for (size_t i = 0; !err && i < n; i++) {
                        canopy_cs_record *rec = NULL;
                        canopy_err ge = canopy_state_cs_get(jc->st, ev->connector, &anchors[i], &rec);
                        if (ge == CANOPY_ERR_NOT_FOUND) /* stale index entry */
                                ge = canopy_state_cs_delete(jc->st, ev->connector, &anchors[i]);
                        else if (!ge && (!rec->scan_id || strcmp(rec->scan_id, ev->scan_id)) &&
                                 !(started && rec->event_ts_ms > 0 && rec->event_ts_ms >= started - 1000)) {
                                ge = remove_object(jc, rec);
                                removed++;
                                if (!ge)
                                        run_note(jc, ev->connector, rec->object_class, ev->scan_id, CANOPY_RUN_DELETED,
                                                 1);
                        }
                        err = ge;
                        canopy_cs_record_free(rec);
                }
                canopy_state_anchors_free(anchors, n);
        } while (!err && cur);
        /* A member DN of the connector not seen by now is not in scope:
         * groups that held removals back for one compute their members
         * again (canopy_state_hold_for_scan). Before scan_done, so that a
         * retry of this event gets here again. */
        char **held = NULL;
        size_t nheld = 0;
        if (!err)
                err = canopy_state_connector_scanned(jc->st, ev->connector, &held, &nheld);
        for (size_t i = 0; !err && i < nheld; i++) {
                err = canopy_state_group_waits_clear(jc->st, held[i]);
                if (!err)
                        err = publish_mv(jc, held[i], "group", CANOPY_MV_RESOLVE, ev->connector);
                if (!err)
                        err = canopy_state_hold_release(jc->st, ev->connector, (const char *const *)&held[i], 1);
        }
        canopy_state_strv_free(held);
        if (!err && ev->nchunks > 1)
                err = canopy_state_scan_done(jc->st, ev->connector, ev->scan_id);
        if (!err) {
                CANOPY_INFO(MOD, "end of scan %s of %s: %zu objects not seen, removed", ev->scan_id, ev->connector,
                            removed);
                /* The full import's history window ends here. */
                run_flush(jc);
                if (canopy_run_close(jc->st, ev->connector, ev->scan_id, -1, 0, worker_now_ms(), 0, NULL))
                        CANOPY_WARN(MOD, "run history: cannot close scan %s", ev->scan_id);
                /* A quarantine rejected by an operator waits for this: the
                 * held deletes are decided again against what it found. A
                 * scan of unknown start (another id format) lifts nothing. */
                bool lifted = false;
                if (canopy_guard_scan_done(jc->st, ev->connector, started, worker_now_ms(), &lifted))
                        CANOPY_WARN(MOD,
                                    "guard: cannot record the end of full scan %s (%s); a quarantine waiting for "
                                    "it stays (canopyctl guard approve, or another full scan, lifts it)",
                                    ev->scan_id, canopy_state_errstr(jc->st));
                else if (lifted)
                        CANOPY_WARN(MOD,
                                    "full scan %s of %s ended: the rejected quarantine is lifted, held deletes are "
                                    "decided again",
                                    ev->scan_id, ev->connector);
        }
        return err;
}

static canopy_err apply_change(join_ctx *jc, const canopy_change_event *ev) {
        if (ev->op == CANOPY_OP_END_OF_SCAN)
                return end_of_scan(jc, ev);
        if (!ev->connector || !ev->anchor.len)
                return CANOPY_ERR_DECODE;
        canopy_cs_record *rec = NULL;
        canopy_err err = canopy_state_cs_get(jc->st, ev->connector, &ev->anchor, &rec);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                return err;
        err = CANOPY_OK;
        /* Already applied (a replay of the topic, or a redelivery after a
         * crash): the record is newer than this event, so its image is not
         * rewound to an old one. The rules still run on the record as it
         * is (a replay is a full sync: scope or joins may have changed),
         * and the object is announced again, since a crash may have come
         * between record and announcement; the export stage, state based,
         * writes nothing when nothing changed. The timestamp guards against
         * a topic recreated with its offsets starting over. */
        bool stale = rec && ev->op != CANOPY_OP_DELETE && rec->kafka_offset >= 0 &&
                     rec->kafka_partition == jc->msg_partition && jc->msg_offset <= rec->kafka_offset &&
                     jc->msg_ts_ms > 0 && jc->msg_ts_ms <= rec->event_ts_ms;
        if (ev->op == CANOPY_OP_DELETE) {
                err = rec ? remove_object(jc, rec) : CANOPY_OK;
                if (!err && rec) {
                        run_note(jc, ev->connector, rec->object_class, ev->scan_id, CANOPY_RUN_TOTAL, 1);
                        run_note(jc, ev->connector, rec->object_class, ev->scan_id, CANOPY_RUN_DELETED, 1);
                }
                canopy_cs_record_free(rec);
                return err;
        }
        if (!rec) {
                rec = calloc(1, sizeof(*rec));
                if (!rec || !(rec->connector = strdup(ev->connector)) ||
                    canopy_bytes_set(&rec->anchor, ev->anchor.data, ev->anchor.len)) {
                        canopy_cs_record_free(rec);
                        return CANOPY_ERR_NOMEM;
                }
                rec->kafka_offset = -1;
        }
        if (!stale && ev->object_class && (!rec->object_class || strcmp(rec->object_class, ev->object_class))) {
                free(rec->object_class);
                rec->object_class = strdup(ev->object_class);
        }
        const char *type = rec->object_class;
        const char *member_attr = type ? canopy_rules_member_attribute(jc->w->rules, ev->connector, type) : NULL;
        bool first_chunk = ev->chunk <= 0;

        /* 1. Merge the image: a complete image replaces every attribute
         * (later chunks of a split event only add values); a partial image
         * (DirSync) replaces only the attributes it carries. */
        if (!stale && ev->complete && first_chunk) {
                for (size_t i = rec->nattrs; i-- > 0;)
                        if (!canopy_change_event_attr(ev, rec->attrs[i].name))
                                canopy_cs_record_set_attr(rec, rec->attrs[i].name, false, NULL, 0);
        }
        bool members_seen = false;
        for (size_t i = 0; !err && !stale && i < ev->nattrs; i++) {
                const canopy_attr *at = &ev->attrs[i];
                if (is_ref_attr(at->name, member_attr)) {
                        members_seen = true;
                        err = apply_members(jc, ev, at, first_chunk, rec->mv_id);
                } else if (at->delta)
                        err = apply_value_delta(rec, at);
                else
                        err = canopy_cs_record_set_attr(rec, at->name, at->binary, at->values, at->nvalues);
        }
        if (!err && !stale && ev->complete && first_chunk && !members_seen && type && !strcmp(type, "group")) {
                err = canopy_state_cs_members_apply(jc->st, ev->connector, &ev->anchor, true, NULL, 0, NULL, 0);
                if (!err && rec->mv_id)
                        err = canopy_state_group_waits_clear(jc->st, rec->mv_id);
        }

        /* 2. DN, renames and moves: members are stored as anchors, so only
         * the DN index changes. */
        if (!err && !stale && ev->dn && (!rec->dn || strcmp(rec->dn, ev->dn))) {
                if (rec->dn)
                        err = canopy_state_dn_del(jc->st, ev->connector, rec->dn, &rec->anchor);
                if (!err)
                        err = canopy_state_dn_set(jc->st, ev->connector, ev->dn, &rec->anchor);
                if (!err) {
                        free(rec->dn);
                        rec->dn = strdup(ev->dn);
                        err = resolve_dn_waiters(jc, ev->connector, ev->dn, &rec->anchor);
                }
        }
        if (!err && !stale && ev->scan_id) {
                free(rec->scan_id);
                rec->scan_id = strdup(ev->scan_id);
        }
        if (!stale) {
                if (ev->source_ts_ms)
                        rec->source_ts_ms = ev->source_ts_ms;
                if (jc->msg_ts_ms > 0)
                        rec->event_ts_ms = jc->msg_ts_ms;
                rec->kafka_partition = jc->msg_partition;
                rec->kafka_offset = jc->msg_offset;
        }

        /* 3. Scope, then join or project. */
        canopy_obj_view view;
        canopy_attr_array holder;
        canopy_scope_result sr = {0};
        canopy_mv_reason reason = CANOPY_MV_UPDATE;
        bool publish = false;
        if (!err) {
                canopy_obj_view_from_attrs(&view, &holder, rec->connector, rec->dn, rec->object_class, rec->attrs,
                                           rec->nattrs);
                view.anchor = &rec->anchor;
                const char *t = canopy_rules_object_type(jc->w->rules, &view);
                if (!t)
                        sr.in_scope = false;
                else {
                        canopy_err se = canopy_rules_scope(jc->w->rules, &view, NULL, &sr);
                        if (se == CANOPY_ERR_NOT_FOUND) {
                                sr.in_scope = false;
                                snprintf(sr.reason, sizeof(sr.reason), "connector %s not in the rules",
                                         rec->connector);
                        } else if (se)
                                err = se;
                        type = t;
                }
        }
        if (!err && !sr.in_scope) {
                if (rec->mv_id)
                        CANOPY_INFO(MOD, "%s left scope (%s): disconnect", rec->dn ? rec->dn : "?", sr.reason);
                err = disconnect(jc, rec);
                rec->in_scope = false;
        } else if (!err) {
                rec->in_scope = true;
                if (!rec->mv_id)
                        err = join_or_project(jc, rec, type, &view, &reason);
                else
                        err = refresh_join_keys(jc, rec, type, &view);
                publish = !err;
        }
        /* 4. Record, then announce. A crash between the two replays the
         * event: every step above is idempotent. */
        if (!err)
                err = canopy_state_cs_put(jc->st, rec);
        if (!err && publish)
                err = publish_mv(jc, rec->mv_id, type, reason, rec->connector);
        if (!err && publish && reason != CANOPY_MV_UPDATE)
                err = resolve_anchor_waiters(jc, rec);
        if (!err) {
                run_note(jc, ev->connector, type, ev->scan_id, CANOPY_RUN_TOTAL, 1);
                run_note(jc, ev->connector, type, ev->scan_id, sr.in_scope ? CANOPY_RUN_CHANGED : CANOPY_RUN_FILTERED,
                         1);
        }
        canopy_cs_record_free(rec);
        return err;
}

static void on_rebalance(canopy_kafka_consumer *kc, canopy_kafka_rebalance what, const canopy_kafka_partition *parts,
                         size_t nparts, void *opaque) {
        (void)kc;
        (void)parts;
        (void)nparts;
        worker *w = opaque;
        /* Before revoked partitions are committed, every mv event of the
         * messages marked done must be acknowledged. */
        if (what == CANOPY_KAFKA_REVOKED && !worker_flush(w))
                *w->stop = 1;
}

/* Say at start-up when Redis can take back acknowledged state on a crash:
 * the stages commit Kafka offsets once Redis acknowledged their writes, so
 * such a loss is not replayed (docs/STATE.md, durability). */
static void check_persistence(worker *w, canopy_state *st) {
        bool durable = false;
        char what[64] = "";
        canopy_err err = canopy_state_persistence(st, &durable, what, sizeof(what));
        if (err)
                CANOPY_INFO(MOD, "Redis persistence not readable (%s); it must run with appendonly yes and "
                            "appendfsync always (docs/STATE.md)", canopy_state_errstr(st));
        else if (!durable)
                CANOPY_WARN(MOD, "Redis %s:%lld runs with %s: a Redis crash can lose acknowledged state that "
                            "is not replayed; set appendonly yes and appendfsync always (docs/STATE.md)",
                            w->conf->redis_host, (long long)w->conf->redis_port, what);
}

int worker_join_run(worker *w) {
        canopy_state *st = NULL;
        canopy_kafka_consumer *kc = NULL;
        int rc = 1;
        char eb[512];
        join_ctx jc;
        memset(&jc, 0, sizeof(jc));
        jc.w = w;
        jc.a = canopy_arena_new(0, 0);
        canopy_err err = canopy_state_new(w->conf->redis_host, (int)w->conf->redis_port, w->conf->redis_password,
                                          w->conf->redis_prefix, (int)w->conf->redis_timeout_ms, &st);
        if (err) {
                CANOPY_ERROR(MOD, "redis %s:%lld: %s", w->conf->redis_host, (long long)w->conf->redis_port,
                             canopy_err_text(err));
                goto out;
        }
        jc.st = st;
        check_persistence(w, st);
        canopy_topic topics[1] = {CANOPY_TOPIC_CHANGES};
        canopy_kafka_consumer_opts opts = {w->conf->join_group, topics, 1, on_rebalance, w, false};
        err = canopy_kafka_consumer_new(&w->conf->kafka, &opts, &kc, eb, sizeof(eb));
        if (err) {
                CANOPY_ERROR(MOD, "consumer: %s", eb);
                goto out;
        }
        CANOPY_INFO(MOD, "join stage started (group %s)", w->conf->join_group);
        int64_t since_commit = 0;
        uint64_t lost_seen = 0;
        int64_t lag_next = 0;
        while (!*w->stop) {
                canopy_kafka_msg *m = NULL;
                err = canopy_kafka_consume(kc, (int)w->conf->poll_ms, &m);
                worker_lost_check(w, kc, "join", &lost_seen, &w->m.join_lost);
                worker_lag_sample(kc, &w->m.join_lag, &lag_next);
                if (err == CANOPY_ERR_TIMEOUT || (!err && !m)) {
                        if (since_commit) {
                                if (!worker_flush(w))
                                        goto out;
                                canopy_kafka_commit(kc, false);
                                since_commit = 0;
                        }
                        if (jc.nruns)
                                run_flush(&jc);
                        continue;
                }
                if (jc.nruns && worker_now_ms() - jc.runs_flushed_ms >= 1000)
                        run_flush(&jc);
                if (err) {
                        CANOPY_ERROR(MOD, "consume: %s", canopy_err_text(err));
                        goto out;
                }
                canopy_change_event ev;
                canopy_log_ctx lc = {NULL, NULL, m->topic, m->partition, m->offset};
                err = canopy_avro_decode_change(m->value, m->len, &ev, eb, sizeof(eb));
                if (err) {
                        canopy_log(CANOPY_LOG_WARN, MOD, &lc, "undecodable change event: %s", eb);
                        bool dl = worker_dead_letter(w, kc, m, err, eb, &w->m.join_dead);
                        canopy_kafka_msg_free(m);
                        if (!dl)
                                break;
                        continue;
                }
                lc.connector = ev.connector;
                jc.ev = &ev;
                jc.msg_ts_ms = m->ts_ms;
                jc.msg_partition = m->partition;
                jc.msg_offset = m->offset;
                for (int attempt = 0;; attempt++) {
                        err = apply_change(&jc, &ev);
                        canopy_arena_reset(jc.a);
                        if (!err || canopy_err_class_of(err) != CANOPY_ERRCLASS_RETRIABLE || *w->stop)
                                break;
                        canopy_log(CANOPY_LOG_WARN, MOD, &lc, "retrying: %s (%s)", canopy_err_text(err),
                                   canopy_state_errstr(st));
                        if (!worker_backoff(w, attempt))
                                break;
                }
                jc.ev = NULL;
                bool done = false;
                if (!err) {
                        done = true;
                        atomic_fetch_add_explicit(&w->m.join_events, 1, memory_order_relaxed);
                } else if (canopy_err_class_of(err) == CANOPY_ERRCLASS_PERMANENT) {
                        run_note(&jc, ev.connector, ev.object_class, ev.scan_id, CANOPY_RUN_ERRORS, 1);
                        canopy_log(CANOPY_LOG_WARN, MOD, &lc, "dead letter: %s", canopy_err_text(err));
                        /* false only when stopping: the check below leaves then */
                        worker_dead_letter(w, kc, m, err, NULL, &w->m.join_dead);
                } else if (canopy_err_class_of(err) == CANOPY_ERRCLASS_FATAL) {
                        canopy_log(CANOPY_LOG_ERROR, MOD, &lc, "fatal: %s", canopy_err_text(err));
                        canopy_change_event_free(&ev);
                        canopy_kafka_msg_free(m);
                        goto out;
                }
                canopy_change_event_free(&ev);
                if (done)
                        canopy_kafka_mark_done(kc, m);
                canopy_kafka_msg_free(m);
                if (!done && *w->stop)
                        break; /* not recorded: leave it uncommitted */
                if (++since_commit >= w->conf->join_batch) {
                        if (!worker_flush(w))
                                goto out;
                        canopy_kafka_commit(kc, false);
                        since_commit = 0;
                }
        }
        if (worker_flush(w)) {
                canopy_kafka_consumer_close(kc);
                canopy_kafka_consumer_free(kc);
                rc = 0;
        }
        kc = NULL;
out:
        /* On a failure the consumer is left as is (not closed): closing would
         * commit offsets whose mv events may not be acknowledged. The
         * process exits and Kafka hands the partitions over. */
        (void)kc;
        canopy_state_free(st);
        canopy_arena_free(jc.a);
        CANOPY_INFO(MOD, "join stage stopped");
        return rc;
}
