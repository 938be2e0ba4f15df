/* test_log.c: JSON-lines logging, levels, debug modules, redaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/log.h"

static char *buf;
static size_t buflen;
static FILE *mem;

static void capture(void) {
        buf = NULL;
        buflen = 0;
        mem = open_memstream(&buf, &buflen);
        assert_non_null(mem);
        canopy_log_set_output(mem);
}

/* Stop capturing; returns the text (owned by the caller). */
static char *captured(void) {
        canopy_log_set_output(NULL);
        fclose(mem);
        mem = NULL;
        return buf;
}

/* Parse every line as a JSON object with the fixed keys; returns the count
 * and, when `want` >= 0, the object of that line (owned). */
static size_t parse_lines(const char *text, size_t want, json_t **ret) {
        size_t n = 0;
        const char *p = text;
        while (*p) {
                const char *e = strchr(p, '\n');
                assert_non_null(e); /* every line ends with a newline */
                json_error_t je;
                json_t *o = json_loadb(p, (size_t)(e - p), 0, &je);
                if (!o) {
                        print_error("not JSON (%s): %.*s\n", je.text, (int)(e - p), p);
                        fail();
                }
                assert_true(json_is_object(o));
                const char *keys[] = {"ts", "level", "svc", "mod", "msg"};
                for (size_t i = 0; i < 5; i++)
                        assert_true(json_is_string(json_object_get(o, keys[i])));
                if (ret && n == want)
                        *ret = o;
                else
                        json_decref(o);
                n++;
                p = e + 1;
        }
        return n;
}

static int setup(void **state) {
        (void)state;
        canopy_log_init("testsvc");
        canopy_log_set_level(CANOPY_LOG_INFO);
        canopy_log_set_debug_modules(NULL);
        return 0;
}

static void test_levels(void **state) {
        (void)state;
        assert_int_equal(canopy_log_level_parse("debug"), CANOPY_LOG_DEBUG);
        assert_int_equal(canopy_log_level_parse("WARNING"), CANOPY_LOG_WARN);
        assert_int_equal(canopy_log_level_parse("loud"), -1);
        assert_int_equal(canopy_log_level_parse(NULL), -1);
        capture();
        canopy_log(CANOPY_LOG_DEBUG, "kafka", NULL, "hidden");
        canopy_log(CANOPY_LOG_INFO, "kafka", NULL, "shown %d", 1);
        CANOPY_WARN("graph", "shown %s", "two");
        canopy_log_set_level(CANOPY_LOG_ERROR);
        CANOPY_WARN("graph", "hidden too");
        CANOPY_ERROR("graph", "shown three");
        canopy_log_set_level(CANOPY_LOG_INFO);
        char *t = captured();
        assert_int_equal(parse_lines(t, 0, NULL), 3);
        assert_null(strstr(t, "hidden"));
        json_t *o = NULL;
        parse_lines(t, 1, &o);
        assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
        assert_string_equal(json_string_value(json_object_get(o, "svc")), "testsvc");
        assert_string_equal(json_string_value(json_object_get(o, "mod")), "graph");
        assert_string_equal(json_string_value(json_object_get(o, "msg")), "shown two");
        /* ts: 2024-01-02T03:04:05.678Z */
        const char *ts = json_string_value(json_object_get(o, "ts"));
        assert_int_equal(strlen(ts), 24);
        assert_int_equal(ts[10], 'T');
        assert_int_equal(ts[23], 'Z');
        json_decref(o);
        free(t);
}

static void test_debug_modules(void **state) {
        (void)state;
        canopy_log_set_debug_modules("kafka,graph");
        assert_true(canopy_log_enabled(CANOPY_LOG_DEBUG, "kafka"));
        assert_false(canopy_log_enabled(CANOPY_LOG_DEBUG, "redis"));
        assert_false(canopy_log_enabled(CANOPY_LOG_DEBUG, "kafk"));
        capture();
        CANOPY_DEBUG("graph", "graph debug");
        CANOPY_DEBUG("redis", "redis debug");
        char *t = captured();
        assert_non_null(strstr(t, "graph debug"));
        assert_null(strstr(t, "redis debug"));
        free(t);
        canopy_log_set_debug_modules("*");
        assert_true(canopy_log_enabled(CANOPY_LOG_DEBUG, "redis"));
        canopy_log_set_debug_modules(NULL);
        assert_false(canopy_log_enabled(CANOPY_LOG_DEBUG, "kafka"));
}

static void test_escaping_and_context(void **state) {
        (void)state;
        capture();
        const char *nasty = "quote\" backslash\\ newline\n tab\t bell\a del\x7f utf8 \xc3\xa9\xe2\x82\xac";
        canopy_log_ctx ctx = {"forest-a", "AAEC/w==", "changes", 3, 12345};
        canopy_log(CANOPY_LOG_INFO, "t", &ctx, "%s", nasty);
        canopy_log_ctx none = CANOPY_LOG_CTX_NONE;
        canopy_log(CANOPY_LOG_INFO, "t", &none, "no context");
        /* Invalid UTF-8 (a lone continuation byte, a cut sequence) stays valid JSON. */
        canopy_log(CANOPY_LOG_INFO, "t", NULL, "bad \x80 utf8 \xe2\x82");
        char *t = captured();
        assert_int_equal(parse_lines(t, 0, NULL), 3);
        json_t *o = NULL;
        parse_lines(t, 0, &o);
        assert_string_equal(json_string_value(json_object_get(o, "msg")), nasty);
        assert_string_equal(json_string_value(json_object_get(o, "connector")), "forest-a");
        assert_string_equal(json_string_value(json_object_get(o, "anchor")), "AAEC/w==");
        assert_string_equal(json_string_value(json_object_get(o, "topic")), "changes");
        assert_int_equal(json_integer_value(json_object_get(o, "partition")), 3);
        assert_int_equal(json_integer_value(json_object_get(o, "offset")), 12345);
        json_decref(o);
        parse_lines(t, 1, &o);
        assert_null(json_object_get(o, "connector"));
        assert_null(json_object_get(o, "partition"));
        assert_null(json_object_get(o, "offset"));
        json_decref(o);
        parse_lines(t, 2, &o);
        assert_string_equal(json_string_value(json_object_get(o, "msg")), "bad \xef\xbf\xbd utf8 \xef\xbf\xbd\xef\xbf\xbd");
        json_decref(o);
        free(t);
}

static void test_redaction(void **state) {
        (void)state;
        canopy_log_secret("hunter2-secret");
        canopy_log_secret("abc"); /* too short: ignored, would redact ordinary text */
        canopy_log_secret(NULL);
        capture();
        canopy_log_ctx ctx = CANOPY_LOG_CTX_NONE;
        ctx.connector = "x-hunter2-secret-y";
        canopy_log(CANOPY_LOG_ERROR, "t", &ctx, "password hunter2-secret rejected, abc kept, hunter2-secret again");
        char *t = captured();
        assert_null(strstr(t, "hunter2"));
        json_t *o = NULL;
        parse_lines(t, 0, &o);
        assert_string_equal(json_string_value(json_object_get(o, "msg")),
                            "password [REDACTED] rejected, abc kept, [REDACTED] again");
        assert_string_equal(json_string_value(json_object_get(o, "connector")), "x-[REDACTED]-y");
        json_decref(o);
        free(t);
}

/* Regression: a secret that is part of "[REDACTED]" (or made of the
 * replacement character) used to make the redactor loop forever. */
static void test_redaction_terminates(void **state) {
        (void)state;
        canopy_log_secret("EDACTED");
        canopy_log_secret("****");
        capture();
        canopy_log(CANOPY_LOG_INFO, "t", NULL, "a EDACTED b **** c");
        char *t = captured();
        json_t *o = NULL;
        parse_lines(t, 0, &o);
        assert_string_equal(json_string_value(json_object_get(o, "msg")), "a [REDACTED] b [REDACTED] c");
        json_decref(o);
        free(t);
}

/* Regression: a message longer than the line cap was cut before redaction,
 * which could leave the first bytes of a secret at the end of the line. */
static void test_redaction_before_cut(void **state) {
        (void)state;
        const char *secret = "Pq7-long-secret-value-0042";
        canopy_log_secret(secret);
        for (size_t pad = 8170; pad < 8200; pad += 3) {
                char *msg = malloc(pad + 64);
                memset(msg, 'x', pad);
                snprintf(msg + pad, 64, "%s tail", secret);
                capture();
                canopy_log(CANOPY_LOG_INFO, "t", NULL, "%s", msg);
                char *t = captured();
                assert_int_equal(parse_lines(t, 0, NULL), 1);
                assert_null(strstr(t, "Pq7-"));
                free(t);
                free(msg);
        }
}

struct thr {
        int id;
};

static void *writer(void *arg) {
        struct thr *th = arg;
        for (int i = 0; i < 200; i++)
                canopy_log(CANOPY_LOG_INFO, "thr", NULL, "thread %d line %d hunter2-secret", th->id, i);
        return NULL;
}

static void test_threads_whole_lines(void **state) {
        (void)state;
        capture();
        pthread_t t[4];
        struct thr a[4];
        for (int i = 0; i < 4; i++) {
                a[i].id = i;
                pthread_create(&t[i], NULL, writer, &a[i]);
        }
        for (int i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        char *text = captured();
        assert_int_equal(parse_lines(text, 0, NULL), 800);
        assert_null(strstr(text, "hunter2"));
        free(text);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_levels),
                cmocka_unit_test(test_debug_modules),
                cmocka_unit_test(test_escaping_and_context),
                cmocka_unit_test(test_redaction),
                cmocka_unit_test(test_redaction_terminates),
                cmocka_unit_test(test_redaction_before_cut),
                cmocka_unit_test(test_threads_whole_lines),
        };
        return cmocka_run_group_tests(tests, setup, NULL);
}
