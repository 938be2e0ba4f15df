/* modes.c: the four ways of reading a directory.
 *
 *   full      paged search (RFC 2696) of every object in scope, END_OF_SCAN
 *   syncrepl  RFC 4533 refreshAndPersist, resumed from the saved cookie
 *   dirsync   AD DirSync control with cookie and incremental member values
 *   usn       uSNChanged polling against highestCommittedUSN, tombstones
 *             through the Show Deleted control
 *
 * Every mode returns CANOPY_OK when it wants to be called again (e.g. after a
 * full scan was asked), a retriable error on connection loss (the main loop
 * reconnects and resumes from the last checkpoint), or a fatal error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/log.h"
#include "ldap_util.h"
#include "producer.h"

static void sleep_ms(int64_t ms) {
        struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
}

/* Check (at most once a second) whether a full scan was asked. */
static void check_control(prod *p) {
        static int64_t last;
        int64_t now = prod_now_ms();
        if (now - last < 1000)
                return;
        last = now;
        bool set = false;
        if (!canopy_checkpoint_flag_test(p->cp, "fullscan", &set) && set)
                p->want_full = true;
}

/* Sleep up to ms while staying responsive to stop, lease loss and control. */
static canopy_err idle(prod *p, int64_t ms) {
        for (int64_t t = 0; t < ms; t += 100) {
                canopy_err err = prod_alive(p);
                if (err)
                        return err;
                check_control(p);
                if (p->want_full)
                        return CANOPY_OK;
                canopy_kafka_producer_poll(p->kp, 0);
                sleep_ms(ms - t < 100 ? ms - t : 100);
        }
        return CANOPY_OK;
}

static bool conn_lost(int rc) {
        return rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR || rc == LDAP_TIMEOUT || rc == LDAP_BUSY ||
               rc == LDAP_UNAVAILABLE;
}

/* ---- paged search ---- */

canopy_err prod_paged_search(prod *p, const char *base, const char *filter, LDAPControl *extra, entry_cb cb,
                             void *arg) {
        struct berval *cookie = NULL;
        canopy_err err = CANOPY_OK;
        do {
                LDAPControl *page = NULL;
                int rc = ldap_create_page_control(p->ld, (ber_int_t)p->cf->page_size, cookie, 0, &page);
                ber_bvfree(cookie);
                cookie = NULL;
                if (rc != LDAP_SUCCESS)
                        return prod_ldap_err(p, rc, "creating the paged results control");
                LDAPControl *ctrls[3] = {page, extra, NULL};
                int msgid = 0;
                rc = ldap_search_ext(p->ld, base, LDAP_SCOPE_SUBTREE, filter, p->attrs, 0, ctrls, NULL, NULL, 0,
                                     &msgid);
                ldap_control_free(page);
                if (rc != LDAP_SUCCESS)
                        return prod_ldap_err(p, rc, "paged search");
                for (;;) {
                        LDAPMessage *res = NULL;
                        struct timeval tv = {(time_t)(p->cf->timeout_ms / 1000), 0};
                        rc = ldap_result(p->ld, msgid, LDAP_MSG_ONE, &tv, &res);
                        if (rc <= 0) {
                                ldap_msgfree(res);
                                if (rc == 0)
                                        ldap_abandon_ext(p->ld, msgid, NULL, NULL);
                                return prod_ldap_err(p, rc == 0 ? LDAP_TIMEOUT : LDAP_SERVER_DOWN, "paged search");
                        }
                        int type = ldap_msgtype(res);
                        if (type == LDAP_RES_SEARCH_ENTRY) {
                                err = cb(p, res, arg);
                                ldap_msgfree(res);
                                if (err) {
                                        ldap_abandon_ext(p->ld, msgid, NULL, NULL);
                                        return err;
                                }
                                continue;
                        }
                        if (type != LDAP_RES_SEARCH_RESULT) {
                                ldap_msgfree(res);
                                continue;
                        }
                        int code = 0;
                        LDAPControl **rctrls = NULL;
                        rc = ldap_parse_result(p->ld, res, &code, NULL, NULL, NULL, &rctrls, 1);
                        if (rc != LDAP_SUCCESS)
                                return prod_ldap_err(p, rc, "paged search result");
                        if (code != LDAP_SUCCESS) {
                                ldap_controls_free(rctrls);
                                return prod_ldap_err(p, code, "paged search");
                        }
                        LDAPControl *pc = ldap_control_find(LDAP_CONTROL_PAGEDRESULTS, rctrls, NULL);
                        if (pc) {
                                ber_int_t est = 0;
                                struct berval c = {0, NULL};
                                if (ldap_parse_pageresponse_control(p->ld, pc, &est, &c) == LDAP_SUCCESS && c.bv_len)
                                        cookie = ber_bvdup(&c);
                                ber_memfree(c.bv_val);
                        }
                        ldap_controls_free(rctrls);
                        break;
                }
                if ((err = prod_maybe_checkpoint(p))) {
                        ber_bvfree(cookie);
                        return err;
                }
        } while (cookie);
        return CANOPY_OK;
}

/* ---- full ---- */

static canopy_err full_entry(prod *p, LDAPMessage *e, void *arg) {
        (void)arg;
        return prod_entry(p, e, NULL, 0, ENTRY_FULL, false, NULL);
}

canopy_err mode_full(prod *p, bool once) {
        (void)once;
        canopy_err err = prod_scan_begin(p);
        for (size_t i = 0; !err && p->cf->base_dns[i]; i++)
                err = prod_paged_search(p, p->cf->base_dns[i], p->class_filter, NULL, full_entry, NULL);
        if (!err)
                err = prod_scan_end(p);
        if (!err)
                err = prod_checkpoint(p, NULL, NULL, 0);
        if (err)
                prod_scan_abort(p);
        return err;
}

/* ---- syncrepl (RFC 4533) ---- */

/* The syncrepl search base: the one base DN, or the naming context when
 * there are several (scope is then checked per entry). */
static const char *sync_base(prod *p) {
        return p->cf->base_dns[1] ? p->nc_root : p->cf->base_dns[0];
}

typedef struct syncst {
        struct berval cookie; /* latest cookie seen (owned) */
        bool cookie_dirty;    /* newer than the saved one */
        bool persist;         /* refresh done */
        bool used_cookie;
} syncst;

static void set_cookie(syncst *s, const struct berval *c) {
        if (!c || !c->bv_val)
                return;
        free(s->cookie.bv_val);
        s->cookie.bv_val = malloc(c->bv_len + 1);
        if (!s->cookie.bv_val) {
                s->cookie.bv_len = 0;
                return;
        }
        memcpy(s->cookie.bv_val, c->bv_val, c->bv_len);
        s->cookie.bv_val[c->bv_len] = 0;
        s->cookie.bv_len = c->bv_len;
        s->cookie_dirty = true;
}

static canopy_err sync_save(prod *p, syncst *s) {
        canopy_err err = prod_checkpoint(p, s->cookie_dirty ? "cookie" : NULL, s->cookie.bv_val, s->cookie.bv_len);
        if (!err)
                s->cookie_dirty = false;
        return err;
}

/* End of a refresh phase (present: sweep what was not sent; done: save). */
static canopy_err sync_phase_end(prod *p, syncst *s, bool present, bool done) {
        canopy_err err = CANOPY_OK;
        if (present && p->tracking) {
                if (!p->scan_id)
                        canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                                   "the server answered the saved cookie with a full present phase (cookie "
                                   "older than its session log): deleting the objects it did not send");
                err = prod_scan_end(p);
        }
        if (done) {
                /* an initial refresh (no cookie) is a full pass: sweep and end marker */
                if (!err && p->scan_id)
                        err = prod_scan_end(p);
                if (p->tracking && !err)
                        prod_scan_abort(p);
                s->persist = true;
                if (!err)
                        err = sync_save(p, s);
                if (!err)
                        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "syncrepl refresh done, persisting");
        }
        return err;
}

static canopy_err sync_intermediate(prod *p, syncst *s, LDAPMessage *res) {
        char *oid = NULL;
        struct berval *data = NULL;
        int rc = ldap_parse_intermediate(p->ld, res, &oid, &data, NULL, 0);
        canopy_err err = CANOPY_OK;
        if (rc != LDAP_SUCCESS || !oid || strcmp(oid, LDAP_SYNC_INFO) || !data) {
                ldap_memfree(oid);
                ber_bvfree(data);
                return CANOPY_OK;
        }
        BerElement *ber = ber_init(data);
        ber_len_t len;
        ber_tag_t tag = ber ? ber_peek_tag(ber, &len) : LBER_ERROR;
        struct berval c = {0, NULL};
        if (tag == LDAP_TAG_SYNC_NEW_COOKIE) {
                if (ber_scanf(ber, "m", &c) != LBER_ERROR)
                        set_cookie(s, &c);
        } else if (tag == LDAP_TAG_SYNC_REFRESH_DELETE || tag == LDAP_TAG_SYNC_REFRESH_PRESENT) {
                ber_int_t done = 1;
                if (ber_scanf(ber, "{") != LBER_ERROR) {
                        if (ber_peek_tag(ber, &len) == LDAP_TAG_SYNC_COOKIE && ber_scanf(ber, "m", &c) != LBER_ERROR)
                                set_cookie(s, &c);
                        if (ber_peek_tag(ber, &len) == LDAP_TAG_REFRESHDONE)
                                ber_scanf(ber, "b", &done);
                }
                err = sync_phase_end(p, s, tag == LDAP_TAG_SYNC_REFRESH_PRESENT, done != 0);
        } else if (tag == LDAP_TAG_SYNC_ID_SET) {
                ber_int_t dels = 0;
                BerVarray uuids = NULL;
                if (ber_scanf(ber, "{") != LBER_ERROR) {
                        if (ber_peek_tag(ber, &len) == LDAP_TAG_SYNC_COOKIE && ber_scanf(ber, "m", &c) != LBER_ERROR)
                                set_cookie(s, &c);
                        if (ber_peek_tag(ber, &len) == LDAP_TAG_REFRESHDELETES)
                                ber_scanf(ber, "b", &dels);
                        ber_scanf(ber, "[W]}", &uuids);
                }
                size_t nids = 0;
                while (uuids && uuids[nids].bv_val)
                        nids++;
                if (nids)
                        canopy_log(CANOPY_LOG_INFO, MOD, NULL, "syncIdSet of %zu entr%s (%s)", nids,
                                   nids == 1 ? "y" : "ies", dels ? "deleted" : "present");
                for (size_t i = 0; uuids && uuids[i].bv_val && !err; i++) {
                        if (dels)
                                err = prod_delete_oid(p, uuids[i].bv_val, uuids[i].bv_len, NULL);
                        else if (p->tracking && oidset_add(&p->seen, uuids[i].bv_val, uuids[i].bv_len))
                                err = CANOPY_ERR_LIMIT;
                        if (!err)
                                err = prod_maybe_checkpoint(p);
                }
                ber_bvarray_free(uuids);
        }
        if (ber)
                ber_free(ber, 1);
        ldap_memfree(oid);
        ber_bvfree(data);
        return err;
}

static canopy_err sync_entry(prod *p, syncst *s, LDAPMessage *e) {
        LDAPControl **ctrls = NULL;
        ldap_get_entry_controls(p->ld, e, &ctrls);
        LDAPControl *sc = ctrls ? ldap_control_find(LDAP_CONTROL_SYNC_STATE, ctrls, NULL) : NULL;
        canopy_err err = CANOPY_OK;
        if (!sc) {
                ldap_controls_free(ctrls);
                return CANOPY_OK;
        }
        BerElement *ber = ber_init(&sc->ldctl_value);
        ber_int_t state = -1;
        struct berval uuid = {0, NULL}, c = {0, NULL};
        ber_len_t len;
        if (ber && ber_scanf(ber, "{em", &state, &uuid) != LBER_ERROR) {
                if (ber_peek_tag(ber, &len) == LDAP_TAG_SYNC_COOKIE)
                        ber_scanf(ber, "m", &c);
                switch (state) {
                case LDAP_SYNC_PRESENT:
                        if (p->tracking && oidset_add(&p->seen, uuid.bv_val, uuid.bv_len))
                                err = CANOPY_ERR_LIMIT;
                        break;
                case LDAP_SYNC_ADD:
                case LDAP_SYNC_MODIFY:
                        err = prod_entry(p, e, uuid.bv_val, uuid.bv_len, ENTRY_FULL, false, NULL);
                        break;
                case LDAP_SYNC_DELETE:
                        err = prod_delete_oid(p, uuid.bv_val, uuid.bv_len, NULL);
                        break;
                default:
                        break;
                }
                if (!err && c.bv_val)
                        set_cookie(s, &c);
        }
        if (ber)
                ber_free(ber, 1);
        ldap_controls_free(ctrls);
        if (!err && !s->persist)
                err = prod_maybe_checkpoint(p);
        else if (!err && s->persist &&
                 (p->since_ckpt >= (uint64_t)p->cf->flush_every || prod_now_ms() - p->last_ckpt_ms > 1000))
                err = sync_save(p, s);
        return err;
}

/* Lag gauge: contextCSN of the naming context minus the CSN of our cookie
 * (seconds), read at most every 5 s while persisting. */
static void sync_lag(prod *p, const syncst *s) {
        static int64_t last;
        int64_t now = prod_now_ms();
        if (now - last < 5000 || !s->cookie.bv_val)
                return;
        last = now;
        char *attrs[] = {"contextCSN", NULL};
        LDAPMessage *res = NULL;
        struct timeval tv = {5, 0};
        if (ldap_search_ext_s(p->ld, p->nc_root, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, &tv, 1,
                              &res) == LDAP_SUCCESS) {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                struct berval **v = e ? ldap_get_values_len(p->ld, e, "contextCSN") : NULL;
                double newest = 0;
                for (size_t i = 0; v && v[i]; i++) {
                        double t = canopy_ldap_csn_time(v[i]->bv_val, v[i]->bv_len);
                        if (t > newest)
                                newest = t;
                }
                ldap_value_free_len(v);
                double ours = canopy_ldap_csn_time(s->cookie.bv_val, s->cookie.bv_len);
                if (newest > 0 && ours > 0)
                        canopy_metrics_set(p->m_lag_s, NULL, newest > ours ? newest - ours : 0);
        }
        ldap_msgfree(res);
}

canopy_err mode_syncrepl(prod *p) {
        syncst s = {0};
        canopy_bytes saved = {0};
        canopy_err err = canopy_checkpoint_get_position(p->cp, "cookie", &saved);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                return err;
        err = CANOPY_OK;
        BerElement *ber = ber_alloc_t(LBER_USE_DER);
        if (!ber) {
                free(saved.data);
                return CANOPY_ERR_NOMEM;
        }
        if (saved.len) {
                struct berval cb = {(ber_len_t)saved.len, (char *)saved.data};
                ber_printf(ber, "{eOb}", LDAP_SYNC_REFRESH_AND_PERSIST, &cb, 0);
                s.used_cookie = true;
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "syncrepl: resuming from cookie %.*s", (int)saved.len,
                           (const char *)saved.data);
                /* track what the refresh sends in case it turns into a present phase */
                oidset_clear(&p->seen);
                p->tracking = true;
        } else {
                ber_printf(ber, "{eb}", LDAP_SYNC_REFRESH_AND_PERSIST, 0);
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "syncrepl: no saved cookie, initial refresh is a full pass");
                err = prod_scan_begin(p);
        }
        free(saved.data);
        LDAPControl ctrl = {0};
        ctrl.ldctl_oid = LDAP_CONTROL_SYNC;
        ctrl.ldctl_iscritical = 1;
        if (err || ber_flatten2(ber, &ctrl.ldctl_value, 0) < 0) {
                ber_free(ber, 1);
                prod_scan_abort(p);
                return err ? err : CANOPY_ERR_NOMEM;
        }
        LDAPControl *ctrls[2] = {&ctrl, NULL};
        int msgid = 0;
        int rc = ldap_search_ext(p->ld, sync_base(p), LDAP_SCOPE_SUBTREE, p->class_filter, p->attrs, 0, ctrls, NULL,
                                 NULL, 0, &msgid);
        ber_free(ber, 1);
        if (rc != LDAP_SUCCESS) {
                prod_scan_abort(p);
                return prod_ldap_err(p, rc, "syncrepl search");
        }
        while (!err) {
                LDAPMessage *res = NULL;
                struct timeval tv = {0, 200000};
                rc = ldap_result(p->ld, msgid, LDAP_MSG_ONE, &tv, &res);
                if (rc < 0) {
                        int e = 0;
                        ldap_get_option(p->ld, LDAP_OPT_RESULT_CODE, &e);
                        err = prod_ldap_err(p, e ? e : LDAP_SERVER_DOWN, "syncrepl");
                        break;
                }
                if (rc == 0) {
                        if ((err = prod_alive(p)))
                                break;
                        if (s.persist)
                                sync_lag(p, &s);
                        if (s.persist && (s.cookie_dirty || p->since_ckpt))
                                err = sync_save(p, &s);
                        check_control(p);
                        if (p->want_full && s.persist) {
                                ldap_abandon_ext(p->ld, msgid, NULL, NULL);
                                msgid = -1;
                                break;
                        }
                        canopy_kafka_producer_poll(p->kp, 0);
                        continue;
                }
                switch (ldap_msgtype(res)) {
                case LDAP_RES_SEARCH_ENTRY:
                        err = sync_entry(p, &s, res);
                        break;
                case LDAP_RES_INTERMEDIATE:
                        err = sync_intermediate(p, &s, res);
                        break;
                case LDAP_RES_SEARCH_RESULT: {
                        int code = 0;
                        char *msg = NULL;
                        LDAPControl **rc2 = NULL;
                        ldap_parse_result(p->ld, res, &code, NULL, &msg, NULL, &rc2, 0);
                        LDAPControl *done = rc2 ? ldap_control_find(LDAP_CONTROL_SYNC_DONE, rc2, NULL) : NULL;
                        if (done) {
                                BerElement *b = ber_init(&done->ldctl_value);
                                struct berval c = {0, NULL};
                                ber_len_t l;
                                if (b && ber_scanf(b, "{") != LBER_ERROR && ber_peek_tag(b, &l) == LDAP_TAG_SYNC_COOKIE &&
                                    ber_scanf(b, "m", &c) != LBER_ERROR)
                                        set_cookie(&s, &c);
                                if (b)
                                        ber_free(b, 1);
                        }
                        if (code == LDAP_SYNC_REFRESH_REQUIRED ||
                            (s.used_cookie && !s.persist && !conn_lost(code) && code != LDAP_SUCCESS &&
                             code != LDAP_INSUFFICIENT_ACCESS)) {
                                canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                                           "the server rejected the saved syncrepl cookie (%s%s%s): dropping it, "
                                           "the next refresh is a full pass",
                                           ldap_err2string(code), msg && *msg ? ": " : "", msg ? msg : "");
                                canopy_checkpoint_drop_position(p->cp, "cookie");
                                err = CANOPY_ERR_LDAP_COOKIE;
                        } else if (code != LDAP_SUCCESS) {
                                err = prod_ldap_err(p, code, "syncrepl search ended");
                        } else {
                                /* refreshOnly-style end: save and start again */
                                err = sync_save(p, &s);
                                if (!err)
                                        err = CANOPY_ERR_LDAP;
                        }
                        ldap_memfree(msg);
                        ldap_controls_free(rc2);
                        msgid = -1;
                        ldap_msgfree(res);
                        res = NULL;
                        goto end;
                }
                default:
                        break;
                }
                ldap_msgfree(res);
        }
end:
        if (msgid > 0 && p->ld)
                ldap_abandon_ext(p->ld, msgid, NULL, NULL);
        if (err)
                canopy_checkpoint_discard(p->cp);
        prod_scan_abort(p);
        free(s.cookie.bv_val);
        return err;
}

/* ---- dirsync ---- */

static canopy_err dirsync_rights_hint(prod *p, int code) {
        canopy_log(CANOPY_LOG_FATAL, MOD, NULL,
                   "DirSync was refused (%s): the connector account lacks the 'Replicating Directory Changes' "
                   "right on %s. Grant it, or use mode: usn (uSNChanged polling needs only read access).",
                   ldap_err2string(code), p->nc_root);
        return CANOPY_ERR_LDAP_RIGHTS;
}

canopy_err mode_dirsync(prod *p) {
        canopy_bytes saved = {0};
        canopy_err err = canopy_checkpoint_get_position(p->cp, "dirsync", &saved);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                return err;
        err = CANOPY_OK;
        struct berval cookie = {(ber_len_t)saved.len, saved.data ? (char *)saved.data : strdup("")};
        bool initial = saved.len == 0;
        if (initial) {
                canopy_log(CANOPY_LOG_INFO, MOD, NULL, "dirsync: no saved cookie, initial read is a full pass");
                err = prod_scan_begin(p);
        }
        const int flags = (int)(LDAP_CONTROL_X_DIRSYNC_INCREMENTAL_VALUES | LDAP_CONTROL_X_DIRSYNC_ANCESTORS_FIRST);
        while (!err) {
                LDAPControl *dc = NULL;
                int rc = ldap_create_dirsync_control(p->ld, flags, 0x100000, &cookie, &dc);
                if (rc != LDAP_SUCCESS) {
                        err = prod_ldap_err(p, rc, "creating the DirSync control");
                        break;
                }
                LDAPControl *ctrls[2] = {dc, NULL};
                LDAPMessage *res = NULL;
                struct timeval tv = {(time_t)(p->cf->timeout_ms / 1000), 0};
                rc = ldap_search_ext_s(p->ld, p->nc_root, LDAP_SCOPE_SUBTREE, p->ds_filter, p->attrs, 0, ctrls, NULL,
                                       &tv, 0, &res);
                ldap_control_free(dc);
                if (rc != LDAP_SUCCESS && !res) {
                        ldap_msgfree(res);
                        if (rc == LDAP_INSUFFICIENT_ACCESS || rc == LDAP_UNWILLING_TO_PERFORM)
                                err = dirsync_rights_hint(p, rc);
                        else if (!initial && !conn_lost(rc)) {
                                canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                                           "the server rejected the saved DirSync cookie (%s): dropping it, the "
                                           "next read is a full pass",
                                           ldap_err2string(rc));
                                canopy_checkpoint_drop_position(p->cp, "dirsync");
                                err = CANOPY_ERR_LDAP_COOKIE;
                        } else
                                err = prod_ldap_err(p, rc, "DirSync search");
                        break;
                }
                int code = 0;
                LDAPControl **rctrls = NULL;
                char *msg = NULL;
                LDAPMessage *last = NULL;
                for (LDAPMessage *m = ldap_first_message(p->ld, res); m && !err; m = ldap_next_message(p->ld, m)) {
                        if (ldap_msgtype(m) == LDAP_RES_SEARCH_ENTRY) {
                                p->dirsync_search = true;
                                err = prod_entry(p, m, NULL, 0, initial ? ENTRY_FULL : ENTRY_DIRSYNC_DELTA, false, NULL);
                                p->dirsync_search = false;
                        }
                        else if (ldap_msgtype(m) == LDAP_RES_SEARCH_RESULT)
                                last = m;
                        if (!err)
                                err = prod_maybe_checkpoint(p);
                }
                if (!err && last)
                        ldap_parse_result(p->ld, last, &code, NULL, &msg, NULL, &rctrls, 0);
                ldap_msgfree(res);
                if (err) {
                        ldap_memfree(msg);
                        ldap_controls_free(rctrls);
                        break;
                }
                if (code != LDAP_SUCCESS) {
                        if (code == LDAP_INSUFFICIENT_ACCESS || code == LDAP_UNWILLING_TO_PERFORM)
                                err = dirsync_rights_hint(p, code);
                        else if (!initial && !conn_lost(code)) {
                                canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                                           "the server rejected the saved DirSync cookie (%s%s%s): dropping it, "
                                           "the next read is a full pass",
                                           ldap_err2string(code), msg && *msg ? ": " : "", msg ? msg : "");
                                canopy_checkpoint_drop_position(p->cp, "dirsync");
                                err = CANOPY_ERR_LDAP_COOKIE;
                        } else
                                err = prod_ldap_err(p, code, "DirSync");
                        ldap_memfree(msg);
                        ldap_controls_free(rctrls);
                        break;
                }
                ldap_memfree(msg);
                LDAPControl *rc1 = rctrls ? ldap_control_find(LDAP_CONTROL_X_DIRSYNC, rctrls, NULL) : NULL;
                int more = 0;
                struct berval nc = {0, NULL};
                if (!rc1 || ldap_parse_dirsync_control(p->ld, rc1, &more, &nc) != LDAP_SUCCESS) {
                        ldap_controls_free(rctrls);
                        err = prod_ldap_err(p, LDAP_CONTROL_NOT_FOUND, "DirSync response control");
                        break;
                }
                ldap_controls_free(rctrls);
                bool changed = nc.bv_len != cookie.bv_len || memcmp(nc.bv_val, cookie.bv_val, nc.bv_len);
                free(cookie.bv_val);
                cookie.bv_val = malloc(nc.bv_len + 1);
                if (!cookie.bv_val) {
                        ber_memfree(nc.bv_val);
                        err = CANOPY_ERR_NOMEM;
                        break;
                }
                memcpy(cookie.bv_val, nc.bv_val, nc.bv_len);
                cookie.bv_len = nc.bv_len;
                ber_memfree(nc.bv_val);
                if (!more && initial) {
                        err = prod_scan_end(p);
                        initial = false;
                }
                if (!err && (changed || p->since_ckpt))
                        err = prod_checkpoint(p, "dirsync", cookie.bv_val, cookie.bv_len);
                if (!err && !more && p->last_usn) {
                        char *h = prod_root_attr(p, "highestCommittedUSN");
                        if (h)
                                canopy_metrics_set(p->m_lag, NULL, (double)(strtoll(h, NULL, 10) - p->last_usn));
                        free(h);
                }
                if (err || more)
                        continue;
                err = idle(p, p->cf->poll_interval_ms);
                if (!err && p->want_full)
                        break;
        }
        free(cookie.bv_val);
        if (err)
                canopy_checkpoint_discard(p->cp);
        prod_scan_abort(p);
        return err;
}

/* ---- usn ---- */

static canopy_err usn_entry(prod *p, LDAPMessage *e, void *arg) {
        (void)arg;
        return prod_entry(p, e, NULL, 0, ENTRY_FULL, false, NULL);
}

/* The domain controller's invocationId (its NTDS Settings object, named by
 * the root DSE's dsServiceName) as 32 hex digits, or "" when it cannot be
 * read. USNs are numbered per DC: a USN saved on one DC means nothing on
 * another, nor on the same DC restored from a backup (which gets a new
 * invocationId), so the saved position carries the invocationId with it. */
static void usn_invocation(prod *p, char out[33]) {
        out[0] = 0;
        char *ds = prod_root_attr(p, "dsServiceName");
        if (!ds)
                return;
        size_t n = 0;
        char *v = prod_read_attr(p, ds, "invocationId", &n);
        if (v && n == 16)
                for (size_t i = 0; i < 16; i++)
                        snprintf(out + 2 * i, 3, "%02x", (unsigned char)v[i]);
        free(v);
        free(ds);
}

canopy_err mode_usn(prod *p) {
        canopy_bytes saved = {0};
        canopy_err err = canopy_checkpoint_get_position(p->cp, "usn", &saved);
        if (err && err != CANOPY_ERR_NOT_FOUND)
                return err;
        /* The position is "<invocationId hex>:<USN>" ("<USN>" alone before
         * the invocationId was saved, or when the DC does not show it). */
        long long last = 0;
        char saved_inv[33] = "", inv[33];
        if (saved.len) {
                char b[80];
                snprintf(b, sizeof(b), "%.*s", (int)(saved.len < 79 ? saved.len : 79), (const char *)saved.data);
                char *colon = strchr(b, ':');
                if (colon && colon - b == 32) {
                        memcpy(saved_inv, b, 32);
                        saved_inv[32] = 0;
                        last = strtoll(colon + 1, NULL, 10);
                } else
                        last = strtoll(b, NULL, 10);
        }
        free(saved.data);
        bool had_position = last != 0; /* a full pass below is then a restart, said where it is decided */
        usn_invocation(p, inv);
        if (!inv[0])
                canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                           "usn: the domain controller's invocationId cannot be read (dsServiceName / NTDS Settings); "
                           "a switch to another domain controller will not be noticed. Point ldap.uris at one DC.");
        if (last && inv[0] && strcmp(saved_inv, inv)) {
                canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                           "usn: the saved USN %lld was read from %s%s, this domain controller is %s (another DC, "
                           "or this one restored from a backup): its USNs do not compare, so a full pass follows",
                           last, saved_inv[0] ? "invocationId " : "", saved_inv[0] ? saved_inv : "an unrecorded DC",
                           inv);
                last = 0;
        }
        err = CANOPY_OK;
        LDAPControl show = {0};
        show.ldctl_oid = LDAP_CONTROL_X_SHOW_DELETED;
        show.ldctl_iscritical = 0;
        while (!err) {
                char *h = prod_root_attr(p, "highestCommittedUSN");
                if (!h) {
                        err = prod_ldap_err(p, LDAP_SERVER_DOWN, "reading highestCommittedUSN");
                        break;
                }
                long long high = strtoll(h, NULL, 10);
                free(h);
                if (high < last) {
                        canopy_log(CANOPY_LOG_WARN, MOD, NULL,
                                   "usn: highestCommittedUSN %lld is below the saved USN %lld (the domain controller "
                                   "was rolled back?): a full pass follows",
                                   high, last);
                        last = 0;
                }
                canopy_metrics_set(p->m_lag, NULL, (double)(high - last));
                if (high > last) {
                        bool initial = last == 0;
                        if (initial) {
                                if (!had_position)
                                        canopy_log(CANOPY_LOG_INFO, MOD, NULL,
                                                   "usn: no saved USN, initial read is a full pass");
                                had_position = false;
                                if ((err = prod_scan_begin(p)))
                                        break;
                        }
                        char filter[4096];
                        /* deleted objects are found through Show Deleted: tombstones keep objectClass */
                        snprintf(filter, sizeof(filter), "(&(uSNChanged>=%lld)(uSNChanged<=%lld)%s)", last + 1, high,
                                 p->ds_filter);
                        err = prod_paged_search(p, p->nc_root, filter, &show, usn_entry, NULL);
                        if (!err && initial)
                                err = prod_scan_end(p);
                        if (!err) {
                                char pos[80];
                                int n = inv[0] ? snprintf(pos, sizeof(pos), "%s:%lld", inv, high)
                                               : snprintf(pos, sizeof(pos), "%lld", high);
                                err = prod_checkpoint(p, "usn", pos, (size_t)n);
                        }
                        if (!err) {
                                last = high;
                                p->last_usn = high;
                        }
                        if (err)
                                break;
                }
                err = idle(p, p->cf->poll_interval_ms);
                if (!err && p->want_full)
                        break;
        }
        if (err)
                canopy_checkpoint_discard(p->cp);
        prod_scan_abort(p);
        return err;
}
