/* test_guard_policy: the deletion threshold, quarantine, approve/reject,
 * credential streaks, run history and audit against a real redis-server
 * (started by tests/harness/run-with --redis). The exactness test forks
 * four processes that race 2,000 delete reservations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "canopy/guard_policy.h"
#include "canopy/state.h"

static canopy_state *connect_state(const char *prefix) {
        const char *host = getenv("CANOPY_TEST_REDIS_HOST");
        const char *port = getenv("CANOPY_TEST_REDIS_PORT");
        assert_non_null(host);
        assert_non_null(port);
        canopy_state *st = NULL;
        assert_int_equal(canopy_state_new(host, atoi(port), NULL, prefix, 2000, &st), CANOPY_OK);
        return st;
}

static void set_policy(canopy_state *st, int64_t count, double pct) {
        canopy_guard_policy p = CANOPY_GUARD_POLICY_DEFAULT;
        p.threshold_count = count;
        p.threshold_percent = pct;
        assert_int_equal(canopy_guard_policy_put(st, &p, "test"), CANOPY_OK);
}

/* Four processes race 2,000 deletes with a threshold of 500: exactly 500
 * are allowed, the other 1,500 held, and the pipeline is quarantined. */
static void test_exact_under_concurrency(void **state) {
        (void)state;
        canopy_state *st = connect_state("t1:");
        set_policy(st, 500, 0);
        int fds[4][2];
        pid_t pids[4];
        for (int w = 0; w < 4; w++) {
                assert_int_equal(pipe(fds[w]), 0);
                pids[w] = fork();
                assert_true(pids[w] >= 0);
                if (pids[w] == 0) {
                        canopy_state *cst = connect_state("t1:");
                        int allowed = 0;
                        /* Every worker tries every object: reservations are
                         * idempotent per mv id, so 2,000 distinct deletes race. */
                        for (int i = 0; i < 2000; i++) {
                                char mv[40];
                                snprintf(mv, sizeof(mv), "mv%05d", (i * 7 + w * 13) % 2000);
                                canopy_guard_verdict v;
                                if (canopy_guard_reserve(cst, mv, "{}", 1000, &v, NULL) != CANOPY_OK)
                                        _exit(3);
                                /* Count only the first verdict per object in this worker. */
                                if (v == CANOPY_GUARD_ALLOW)
                                        allowed++;
                        }
                        canopy_state_free(cst);
                        if (write(fds[w][1], &allowed, sizeof(allowed)) != sizeof(allowed))
                                _exit(4);
                        _exit(0);
                }
                close(fds[w][1]);
        }
        for (int w = 0; w < 4; w++) {
                int status = 0, allowed = 0;
                assert_int_equal(waitpid(pids[w], &status, 0), pids[w]);
                assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                assert_int_equal(read(fds[w][0], &allowed, sizeof(allowed)), sizeof(allowed));
                close(fds[w][0]);
        }
        canopy_guard_status s;
        assert_int_equal(canopy_guard_status_get(st, 1000, &s), CANOPY_OK);
        assert_true(s.quarantined);
        assert_string_equal(s.reason, "deletion-threshold");
        assert_int_equal(s.window_count, 500);
        assert_int_equal(s.held, 1500);
        bool paused = false;
        assert_int_equal(canopy_guard_paused(st, &paused), CANOPY_OK);
        assert_true(paused);

        /* A held delete stays held when asked again. */
        canopy_guard_verdict v;
        int64_t allowed_count = 0;
        for (int i = 0; i < 2000; i++) {
                char mv[40];
                snprintf(mv, sizeof(mv), "mv%05d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, "{}", 1001, &v, NULL), CANOPY_OK);
                if (v == CANOPY_GUARD_ALLOW)
                        allowed_count++;
        }
        assert_int_equal(allowed_count, 500); /* the 500 counted ones are idempotent */

        /* Approve: each held delete is allowed exactly once, then the pipeline runs. */
        int64_t n = 0;
        assert_int_equal(canopy_guard_approve(st, "alice", 2000, &n), CANOPY_OK);
        assert_int_equal(n, 1500);
        assert_int_equal(canopy_guard_status_get(st, 2000, &s), CANOPY_OK);
        assert_false(s.quarantined);
        assert_int_equal(s.held, 0);
        int released = 0;
        for (int i = 0; i < 2000; i++) {
                char mv[40];
                snprintf(mv, sizeof(mv), "mv%05d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, "{}", 2001, &v, NULL), CANOPY_OK);
                if (v == CANOPY_GUARD_ALLOW)
                        released++;
        }
        /* 1,500 approved ones plus the 500 counted earlier; but the window was
         * reset by the approval, so the 500 earlier ones count again (and fit). */
        assert_int_equal(released, 2000);
        canopy_state_free(st);
}

/* Reject: none of the held deletes is sent, and the pipeline stays
 * quarantined until a full scan of the awaited connector that began after
 * the rejection ends; then every held or rejected delete is decided again
 * in a new window. */
static void test_reject_waits_for_full_scan(void **state) {
        (void)state;
        canopy_state *st = connect_state("t2:");
        set_policy(st, 3, 0);
        canopy_guard_verdict v;
        int allowed = 0, held = 0;
        for (int i = 0; i < 10; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "r%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, "{\"type\":\"user\"}", 10, &v, NULL), CANOPY_OK);
                allowed += v == CANOPY_GUARD_ALLOW;
                held += v == CANOPY_GUARD_HOLD;
        }
        assert_int_equal(allowed, 3);
        assert_int_equal(held, 7);
        char **list = NULL;
        size_t nl = 0;
        assert_int_equal(canopy_guard_held(st, 100, &list, &nl), CANOPY_OK);
        assert_int_equal(nl, 7);
        assert_non_null(strstr(list[0], "\t{\"type\":\"user\"}"));
        canopy_state_strv_free(list);
        int64_t n = 0;
        assert_int_equal(canopy_guard_reject(st, "bob", "north", 20, &n), CANOPY_OK);
        assert_int_equal(n, 7);
        canopy_guard_status s;
        assert_int_equal(canopy_guard_status_get(st, 25, &s), CANOPY_OK);
        assert_true(s.quarantined);
        assert_string_equal(s.awaiting_scan, "north");
        assert_int_equal(s.rejected, 7);
        assert_int_equal(s.held, 0);
        assert_int_equal(s.rejected_ms, 20);
        /* Still quarantined: a rejected delete and a new one are not sent. */
        for (int i = 3; i < 10; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "r%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, "{}", 30, &v, NULL), CANOPY_OK);
                assert_int_equal(v, CANOPY_GUARD_HOLD);
        }
        assert_int_equal(canopy_guard_reserve(st, "r-next", "{}", 40, &v, NULL), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_HOLD);
        assert_int_equal(canopy_guard_status_get(st, 45, &s), CANOPY_OK);
        assert_int_equal(s.held, 1); /* r-next; the rejected ones are not held again */
        assert_true(canopy_guard_paused(st, &(bool){false}) == CANOPY_OK);
        /* A scan of another connector, or one that began before the
         * rejection, lifts nothing. */
        bool lifted = true;
        assert_int_equal(canopy_guard_scan_done(st, "south", 50, 60, &lifted), CANOPY_OK);
        assert_false(lifted);
        assert_int_equal(canopy_guard_scan_done(st, "north", 15, 60, &lifted), CANOPY_OK);
        assert_false(lifted);
        assert_int_equal(canopy_guard_status_get(st, 60, &s), CANOPY_OK);
        assert_true(s.quarantined);
        /* The full scan of north that began after it: lifted, new window. */
        assert_int_equal(canopy_guard_scan_done(st, "north", 50, 70, &lifted), CANOPY_OK);
        assert_true(lifted);
        assert_int_equal(canopy_guard_status_get(st, 70, &s), CANOPY_OK);
        assert_false(s.quarantined);
        assert_int_equal(s.held + s.rejected + s.window_count, 0);
        assert_string_equal(s.awaiting_scan, "");
        /* What the scan still finds deleted is decided again: three fit in
         * the new window, the fourth quarantines again. */
        allowed = held = 0;
        for (int i = 3; i < 7; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "r%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, "{}", 80, &v, NULL), CANOPY_OK);
                allowed += v == CANOPY_GUARD_ALLOW;
                held += v == CANOPY_GUARD_HOLD;
        }
        assert_int_equal(allowed, 3);
        assert_int_equal(held, 1);
        assert_int_equal(canopy_guard_status_get(st, 80, &s), CANOPY_OK);
        assert_true(s.quarantined);
        assert_string_equal(s.awaiting_scan, "");
        /* Without a connector, any full scan lifts it. */
        assert_int_equal(canopy_guard_reject(st, "bob", NULL, 90, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        assert_int_equal(canopy_guard_status_get(st, 95, &s), CANOPY_OK);
        assert_string_equal(s.awaiting_scan, "*");
        assert_int_equal(canopy_guard_scan_done(st, "south", 100, 110, &lifted), CANOPY_OK);
        assert_true(lifted);
        /* The audit trail names who decided, and the lift. */
        char **audit = NULL;
        size_t na = 0;
        assert_int_equal(canopy_audit_list(st, 0, 10, &audit, &na), CANOPY_OK);
        assert_true(na >= 4);
        assert_non_null(strstr(audit[0], "quarantine.lift"));
        assert_non_null(strstr(audit[0], "full scan of south"));
        assert_non_null(strstr(audit[1], "\"who\":\"bob\""));
        assert_non_null(strstr(audit[1], "quarantine.reject"));
        assert_non_null(strstr(audit[1], "any connector"));
        canopy_state_strv_free(audit);
        /* Approve lifts a rejected quarantine too, without a scan. */
        for (int i = 200; i < 205; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "r%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, "{}", 120, &v, NULL), CANOPY_OK);
        }
        assert_int_equal(canopy_guard_reject(st, "bob", "north", 130, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_int_equal(canopy_guard_approve(st, "alice", 140, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        assert_int_equal(canopy_guard_status_get(st, 140, &s), CANOPY_OK);
        assert_false(s.quarantined);
        assert_int_equal(s.rejected, 0);
        canopy_state_free(st);
}

/* guard.window_mode full-scan: the count runs from the start of a full
 * scan to the start of the next; scans that overlap share a window; no
 * time passing empties it. */
static void test_full_scan_window(void **state) {
        (void)state;
        canopy_state *st = connect_state("t7:");
        canopy_guard_policy p = CANOPY_GUARD_POLICY_DEFAULT;
        p.threshold_count = 4;
        p.window_ms = 1000; /* ignored in this mode */
        p.window_full_scan = true;
        assert_int_equal(canopy_guard_policy_put(st, &p, "test"), CANOPY_OK);
        canopy_guard_verdict v;
        assert_int_equal(canopy_run_count(st, "north", "user", "north-1000-a", CANOPY_RUN_TOTAL, 1, 1000), 0);
        for (int i = 0; i < 3; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "f%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 2000 + 5000 * i, &v, NULL), CANOPY_OK);
                assert_int_equal(v, CANOPY_GUARD_ALLOW);
        }
        canopy_guard_status s;
        assert_int_equal(canopy_guard_status_get(st, 60000, &s), CANOPY_OK);
        assert_int_equal(s.window_count, 3); /* a minute later: still counted */
        assert_true(s.window_full_scan);
        assert_string_equal(s.scan_window, "north-1000-a");
        /* south's scan starts while north's is open: same window. */
        assert_int_equal(canopy_run_count(st, "south", "group", "south-61000-b", CANOPY_RUN_TOTAL, 1, 61000), 0);
        assert_int_equal(canopy_guard_reserve(st, "f3", NULL, 62000, &v, NULL), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_ALLOW);
        size_t closed = 0;
        assert_int_equal(canopy_run_close(st, "north", "north-1000-a", -1, 0, 63000, 100, &closed), 0);
        assert_int_equal(canopy_run_close(st, "south", "south-61000-b", -1, 0, 63000, 100, &closed), 0);
        /* Streamed after both scans: the fifth delete of the window is held. */
        assert_int_equal(canopy_guard_reserve(st, "f4", NULL, 64000, &v, NULL), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_HOLD);
        assert_int_equal(canopy_guard_approve(st, "ops", 65000, NULL), CANOPY_OK);
        assert_int_equal(canopy_guard_reserve(st, "f4", NULL, 65500, &v, NULL), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_ALLOW);
        for (int i = 5; i < 8; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "f%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 66000, &v, NULL), CANOPY_OK);
                assert_int_equal(v, CANOPY_GUARD_ALLOW);
        }
        /* The next full scan starts a new window: four more fit. */
        assert_int_equal(canopy_run_count(st, "north", "user", "north-70000-c", CANOPY_RUN_TOTAL, 1, 70000), 0);
        assert_int_equal(canopy_run_count(st, "north", "group", "north-70000-c", CANOPY_RUN_TOTAL, 1, 70001), 0);
        for (int i = 8; i < 12; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "f%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 71000, &v, NULL), CANOPY_OK);
                assert_int_equal(v, CANOPY_GUARD_ALLOW);
        }
        assert_int_equal(canopy_guard_reserve(st, "f12", NULL, 72000, &v, NULL), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_HOLD);
        canopy_state_free(st);
}

static void test_percentage_and_disable(void **state) {
        (void)state;
        canopy_state *st = connect_state("t3:");
        set_policy(st, 500, 20.0);
        assert_int_equal(canopy_guard_synced_add(st, 50), CANOPY_OK); /* 20% of 50 = 10 */
        canopy_guard_verdict v;
        int allowed = 0;
        for (int i = 0; i < 30; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "p%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 10, &v, NULL), CANOPY_OK);
                allowed += v == CANOPY_GUARD_ALLOW;
        }
        assert_int_equal(allowed, 10);
        assert_int_equal(canopy_guard_approve(st, "ops", 11, NULL), CANOPY_OK);

        /* Disabled: everything goes, and the switch is in the audit trail. */
        canopy_guard_policy p = CANOPY_GUARD_POLICY_DEFAULT;
        p.enabled = false;
        assert_int_equal(canopy_guard_policy_put(st, &p, "carol"), CANOPY_OK);
        allowed = 0;
        for (int i = 100; i < 700; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "p%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 20, &v, NULL), CANOPY_OK);
                allowed += v == CANOPY_GUARD_ALLOW;
        }
        assert_int_equal(allowed, 600);
        char **audit = NULL;
        size_t na = 0;
        assert_int_equal(canopy_audit_list(st, 0, 1, &audit, &na), CANOPY_OK);
        assert_int_equal(na, 1);
        assert_non_null(strstr(audit[0], "enabled=false"));
        assert_non_null(strstr(audit[0], "carol"));
        canopy_state_strv_free(audit);
        canopy_state_free(st);
}

static void test_rolling_window(void **state) {
        (void)state;
        canopy_state *st = connect_state("t4:");
        canopy_guard_policy p = CANOPY_GUARD_POLICY_DEFAULT;
        p.threshold_count = 5;
        p.window_ms = 1000;
        assert_int_equal(canopy_guard_policy_put(st, &p, "test"), CANOPY_OK);
        canopy_guard_verdict v;
        for (int i = 0; i < 5; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "w%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 10000 + i, &v, NULL), CANOPY_OK);
                assert_int_equal(v, CANOPY_GUARD_ALLOW);
        }
        /* 1.5 s later the first five have left the window. */
        for (int i = 5; i < 10; i++) {
                char mv[16];
                snprintf(mv, sizeof(mv), "w%d", i);
                assert_int_equal(canopy_guard_reserve(st, mv, NULL, 11500 + i, &v, NULL), CANOPY_OK);
                assert_int_equal(v, CANOPY_GUARD_ALLOW);
        }
        assert_int_equal(canopy_guard_reserve(st, "w10", NULL, 11600, &v, NULL), CANOPY_OK);
        assert_int_equal(v, CANOPY_GUARD_HOLD);
        canopy_state_free(st);
}

static void test_credentials_streak(void **state) {
        (void)state;
        canopy_state *st = connect_state("t5:");
        canopy_guard_policy p = CANOPY_GUARD_POLICY_DEFAULT;
        p.auth_quarantine_ms = 60000;
        assert_int_equal(canopy_guard_policy_put(st, &p, "test"), CANOPY_OK);
        bool q = false;
        assert_int_equal(canopy_guard_report(st, "graph", false, 1000, &q), CANOPY_OK);
        assert_false(q);
        assert_int_equal(canopy_guard_report(st, "graph", true, 2000, &q), CANOPY_OK); /* streak broken */
        assert_int_equal(canopy_guard_report(st, "graph", false, 3000, &q), CANOPY_OK);
        assert_int_equal(canopy_guard_report(st, "graph", false, 62000, &q), CANOPY_OK);
        assert_false(q);
        assert_int_equal(canopy_guard_report(st, "graph", false, 63000, &q), CANOPY_OK);
        assert_true(q);
        canopy_guard_status s;
        assert_int_equal(canopy_guard_status_get(st, 63000, &s), CANOPY_OK);
        assert_true(s.quarantined);
        assert_string_equal(s.reason, "credentials");
        bool first = false;
        assert_int_equal(canopy_guard_notify_once(st, s.id, "email", &first), CANOPY_OK);
        assert_true(first);
        assert_int_equal(canopy_guard_notify_once(st, s.id, "email", &first), CANOPY_OK);
        assert_false(first);
        canopy_state_free(st);
}

static void test_run_history(void **state) {
        (void)state;
        canopy_state *st = connect_state("t6:");
        assert_int_equal(canopy_run_count(st, "north", "user", NULL, CANOPY_RUN_TOTAL, 3, 1000), CANOPY_OK);
        assert_int_equal(canopy_run_count(st, "north", "user", NULL, CANOPY_RUN_CHANGED, 2, 1000), CANOPY_OK);
        assert_int_equal(canopy_run_count(st, "north", "user", NULL, CANOPY_RUN_FILTERED, 1, 1100), CANOPY_OK);
        assert_int_equal(canopy_run_count(st, "south", "group", "scan-1", CANOPY_RUN_TOTAL, 5, 1200), CANOPY_OK);
        assert_int_equal(canopy_run_count(st, "south", "group", "scan-1", CANOPY_RUN_DELETED, 1, 1300), CANOPY_OK);
        size_t closed = 0;
        /* Not idle yet: nothing closes. */
        assert_int_equal(canopy_run_close(st, NULL, NULL, 5000, 0, 2000, 100, &closed), CANOPY_OK);
        assert_int_equal(closed, 0);
        assert_int_equal(canopy_run_close(st, "south", "scan-1", 5000, 0, 2000, 100, &closed), CANOPY_OK);
        assert_int_equal(closed, 1);
        assert_int_equal(canopy_run_close(st, NULL, NULL, 5000, 0, 7000, 100, &closed), CANOPY_OK);
        assert_int_equal(closed, 1);
        canopy_run_entry *e = NULL;
        size_t n = 0;
        assert_int_equal(canopy_run_history(st, NULL, NULL, 0, 10, &e, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_string_equal(e[0].connector, "north");
        assert_string_equal(e[0].run_type, "delta");
        assert_int_equal(e[0].total, 3);
        assert_int_equal(e[0].changed, 2);
        assert_int_equal(e[0].filtered, 1);
        assert_string_equal(e[1].connector, "south");
        assert_string_equal(e[1].run_type, "full");
        assert_int_equal(e[1].deleted, 1);
        free(e);
        assert_int_equal(canopy_run_history(st, "south", "group", 0, 10, &e, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        free(e);
        /* The closed windows wait in the outbox for the exports topic,
         * oldest first, until acknowledged. */
        assert_int_equal(canopy_run_outbox(st, 10, &e, &n), CANOPY_OK);
        assert_int_equal(n, 2);
        assert_string_equal(e[0].connector, "south");
        assert_string_equal(e[0].scan_id, "scan-1");
        assert_int_equal(e[0].end_ms, 2000);
        assert_string_equal(e[1].connector, "north");
        free(e);
        assert_int_equal(canopy_run_outbox_ack(st, 1), CANOPY_OK);
        assert_int_equal(canopy_run_outbox(st, 10, &e, &n), CANOPY_OK);
        assert_int_equal(n, 1);
        assert_string_equal(e[0].connector, "north");
        free(e);
        assert_int_equal(canopy_run_outbox_ack(st, 1), CANOPY_OK);
        assert_int_equal(canopy_run_outbox(st, 10, &e, &n), CANOPY_OK);
        assert_int_equal(n, 0);
        free(e);
        canopy_state_free(st);
}

int main(void) {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_exact_under_concurrency), cmocka_unit_test(test_reject_waits_for_full_scan),
            cmocka_unit_test(test_percentage_and_disable), cmocka_unit_test(test_rolling_window),
            cmocka_unit_test(test_credentials_streak),     cmocka_unit_test(test_run_history),
            cmocka_unit_test(test_full_scan_window),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
