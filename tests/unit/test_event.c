/* test_event.c: builders and destructors of the event model (canopy/event.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "canopy/event.h"

static void test_builders(void **state) {
        (void)state;
        canopy_change_event ev = {0};
        ev.connector = strdup("c1");
        canopy_attr *a = canopy_change_event_add_attr(&ev, "mail", false);
        assert_non_null(a);
        assert_int_equal(canopy_attr_add_value(a, "a@x", 3), 0);
        assert_int_equal(canopy_attr_add_value(a, "b@x", 3), 0);
        /* values are NUL-terminated copies */
        assert_string_equal((char *)ev.attrs[0].values[1].data, "b@x");
        canopy_attr *g = canopy_change_event_add_attr(&ev, "member", false);
        for (int i = 0; i < 100; i++)
                assert_int_equal(canopy_attr_add_delta(g, i % 2, "CN=x", 4), 0);
        assert_true(ev.attrs[1].delta);
        assert_int_equal(ev.attrs[1].nadded, 50);
        assert_int_equal(ev.attrs[1].nremoved, 50);
        /* `a` may be stale after the second add_attr (realloc): look it up */
        const canopy_attr *m = canopy_change_event_attr(&ev, "MAIL");
        assert_non_null(m);
        assert_int_equal(m->nvalues, 2);
        assert_null(canopy_change_event_attr(&ev, "sn"));
        assert_int_equal(canopy_attr_add_value(NULL, "x", 1), CANOPY_ERR_INVALID_ARG);
        assert_int_equal(canopy_attr_add_value(g, NULL, 1), CANOPY_ERR_INVALID_ARG);
        assert_int_equal(canopy_attr_add_value(g, NULL, 0), 0); /* empty value */
        canopy_change_event_free(&ev);
        assert_null(ev.connector);
        assert_int_equal(ev.nattrs, 0);
        canopy_change_event_free(NULL);
        canopy_mv_event_free(NULL);
        canopy_export_record_free(NULL);
        canopy_control_event_free(NULL);
        canopy_dead_letter_free(NULL);
}

static void test_caps(void **state) {
        (void)state;
        canopy_change_event ev = {0};
        for (unsigned i = 0; i < CANOPY_EVENT_MAX_ATTRS; i++)
                assert_non_null(canopy_change_event_add_attr(&ev, "x", false));
        assert_null(canopy_change_event_add_attr(&ev, "one-too-many", false));
        canopy_attr *a = &ev.attrs[0];
        for (unsigned i = 0; i < CANOPY_ATTR_MAX_VALUES; i++)
                assert_int_equal(canopy_attr_add_value(a, "v", 1), 0);
        assert_int_equal(canopy_attr_add_value(a, "v", 1), CANOPY_ERR_TOO_MANY_VALUES);
        canopy_change_event_free(&ev);
}

static void test_key_and_names(void **state) {
        (void)state;
        canopy_bytes anchor = {(uint8_t *)"\x00\x01\x02", 3}, key = {0};
        assert_int_equal(canopy_change_key("forestA", &anchor, &key), 0);
        assert_int_equal(key.len, 7 + 1 + 3);
        assert_memory_equal(key.data, "forestA\0\x00\x01\x02", 11);
        free(key.data);
        assert_int_equal(canopy_change_key(NULL, &anchor, &key), CANOPY_ERR_INVALID_ARG);
        assert_string_equal(canopy_op_name(CANOPY_OP_END_OF_SCAN), "end_of_scan");
        assert_string_equal(canopy_op_name(CANOPY_OP_RENAME), "rename");
        assert_string_equal(canopy_op_name((canopy_op)99), "unknown");
        canopy_bytes b = {0};
        assert_int_equal(canopy_bytes_set(&b, "abc", 3), 0);
        assert_int_equal(canopy_bytes_set(&b, "de", 2), 0); /* replaces, no leak */
        assert_int_equal(b.len, 2);
        assert_string_equal((char *)b.data, "de");
        free(b.data);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_builders),
                cmocka_unit_test(test_caps),
                cmocka_unit_test(test_key_and_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
