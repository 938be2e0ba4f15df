/* test_config.c: the table-driven configuration loader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canopy/config.h"
#include "canopy/log.h"

struct tconf {
        char *name;
        char **brokers;
        int64_t timeout_ms;
        char *secret;
        char *tenant;
        int64_t count;
        double ratio;
        bool staging;
        char *mode;
        char *id;
};

static const canopy_conf_def tdefs[] = {
        {"name", CANOPY_CT_STR, "canopy", 0, 0, 0, NULL, NULL, "Name.", offsetof(struct tconf, name)},
        {"kafka.brokers", CANOPY_CT_LIST, "127.0.0.1:9092", 0, 0, 0, "TCANOPY_BROKERS", NULL, "Brokers.",
         offsetof(struct tconf, brokers)},
        {"kafka.timeout", CANOPY_CT_DURATION, "5s", 100, 60000, 0, NULL, NULL, "Timeout.",
         offsetof(struct tconf, timeout_ms)},
        {"graph.client_secret", CANOPY_CT_SECRET, NULL, 0, 0, 0, "TCANOPY_SECRET", NULL, "Secret.",
         offsetof(struct tconf, secret)},
        {"graph.tenant", CANOPY_CT_STR, NULL, 0, 0, CANOPY_CONF_REQUIRED, "TCANOPY_TENANT", NULL, "Tenant.",
         offsetof(struct tconf, tenant)},
        {"workers.count", CANOPY_CT_INT, "4", 1, 64, 0, "TCANOPY_COUNT", NULL, "Count.",
         offsetof(struct tconf, count)},
        {"workers.ratio", CANOPY_CT_DOUBLE, "0.5", 0, 1, 0, NULL, NULL, "Ratio.", offsetof(struct tconf, ratio)},
        {"workers.staging", CANOPY_CT_BOOL, "false", 0, 0, 0, NULL, NULL, "Staging.",
         offsetof(struct tconf, staging)},
        {"mode", CANOPY_CT_ENUM, "stream", 0, 0, 0, NULL, "stream|batch|replay", "Mode.",
         offsetof(struct tconf, mode)},
        {"id", CANOPY_CT_STR, NULL, 1, 8, 0, NULL, "A-Za-z0-9._-", "An id.", offsetof(struct tconf, id)},
};

static const canopy_conf_table ttable = {"test", "A test service.", tdefs, sizeof(tdefs) / sizeof(tdefs[0]),
                                         sizeof(struct tconf)};

static char tmpdir[256];

static int setup(void **state) {
        (void)state;
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/canopy-test-config-XXXXXX");
        if (!mkdtemp(tmpdir))
                return -1;
        unsetenv("TCANOPY_BROKERS");
        unsetenv("TCANOPY_SECRET");
        unsetenv("TCANOPY_SECRET_FILE");
        unsetenv("TCANOPY_TENANT");
        unsetenv("TCANOPY_COUNT");
        return 0;
}

static int teardown(void **state) {
        (void)state;
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        return system(cmd) == 0 ? 0 : -1;
}

/* Write `text` to tmpdir/name; returns the path (static buffer per call site). */
static const char *write_file(const char *name, const char *text) {
        static char paths[8][512];
        static int next;
        char *p = paths[next++ % 8];
        snprintf(p, 512, "%s/%s", tmpdir, name);
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
        return p;
}

static canopy_err load(struct tconf *c, const char *path, const char *const *sets, size_t nsets, char *err,
                       size_t errlen) {
        memset(c, 0, sizeof(*c));
        return canopy_conf_load(&ttable, c, path, sets, nsets, err, errlen);
}

/* The error must start with "FILE:LINE:COL: " and contain `what`. */
static void expect_error(const char *yaml, canopy_err code, int line, int col, const char *what) {
        const char *p = write_file("e.yaml", yaml);
        struct tconf c;
        char err[512];
        canopy_err rc = load(&c, p, NULL, 0, err, sizeof(err));
        char prefix[600];
        snprintf(prefix, sizeof(prefix), "%s:%d:%d: ", p, line, col);
        if (rc != code || strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, what)) {
                print_error("yaml:\n%s\nwant %s ... %s (code %d)\ngot  %s (code %d)\n", yaml, prefix, what, code,
                            err, rc);
                fail();
        }
        /* On error the struct is freed and zeroed. */
        assert_null(c.name);
        assert_null(c.brokers);
}

static void test_defaults_and_file(void **state) {
        (void)state;
        const char *p = write_file("ok.yaml", "# a comment\n"
                                              "kafka:\n"
                                              "  brokers:\n"
                                              "    - a:9092\n"
                                              "    - b:9092\n"
                                              "  timeout: 250ms\n"
                                              "graph:\n"
                                              "  tenant: contoso\n"
                                              "workers.count: 8\n"
                                              "workers:\n"
                                              "  staging: yes\n"
                                              "mode: replay\n");
        struct tconf c;
        char err[512];
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.name, "canopy");
        assert_non_null(c.brokers);
        assert_string_equal(c.brokers[0], "a:9092");
        assert_string_equal(c.brokers[1], "b:9092");
        assert_null(c.brokers[2]);
        assert_int_equal(c.timeout_ms, 250);
        assert_string_equal(c.tenant, "contoso");
        assert_int_equal(c.count, 8);
        assert_true(c.ratio == 0.5);
        assert_true(c.staging);
        assert_string_equal(c.mode, "replay");
        assert_null(c.secret);
        canopy_conf_free(&ttable, &c);
        assert_null(c.name);
        canopy_conf_free(&ttable, NULL);
}

static void test_durations(void **state) {
        (void)state;
        struct {
                const char *text;
                int64_t ms;
        } cases[] = {{"250", 250}, {"1s", 1000}, {"1.5s", 1500}, {"1m", 60000}, {"100ms", 100}};
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char set[64];
                snprintf(set, sizeof(set), "kafka.timeout=%s", cases[i].text);
                const char *sets[] = {set, "graph.tenant=t"};
                struct tconf c;
                char err[512];
                assert_int_equal(load(&c, NULL, sets, 2, err, sizeof(err)), CANOPY_OK);
                assert_int_equal(c.timeout_ms, cases[i].ms);
                canopy_conf_free(&ttable, &c);
        }
}

static void test_unknown_key(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: t\nkafka:\n  brokrs: x\n", CANOPY_ERR_CONFIG_UNKNOWN_KEY, 4, 3,
                     "unknown key 'kafka.brokrs' for test (did you mean 'kafka.brokers'?)");
        /* Right name in the wrong section. */
        expect_error("graph:\n  tenant: t\nbrokers: [x]\n", CANOPY_ERR_CONFIG_UNKNOWN_KEY, 3, 1,
                     "did you mean 'kafka.brokers'?");
        /* An unknown section. */
        expect_error("graph:\n  tenant: t\nredis:\n  host: x\n", CANOPY_ERR_CONFIG_UNKNOWN_KEY, 3, 1,
                     "unknown key 'redis'");
        /* A value given where a section is expected. */
        expect_error("graph: x\n", CANOPY_ERR_CONFIG_UNKNOWN_KEY, 1, 1, "unknown key 'graph'");
}

static void test_wrong_type(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: t\nworkers:\n  count: abc\n", CANOPY_ERR_CONFIG_TYPE, 4, 10,
                     "'workers.count' expects an integer, got 'abc'");
        expect_error("graph:\n  tenant: t\nworkers:\n  ratio: x1\n", CANOPY_ERR_CONFIG_TYPE, 4, 10,
                     "expects a number");
        expect_error("graph:\n  tenant: t\nworkers:\n  staging: maybe\n", CANOPY_ERR_CONFIG_TYPE, 4, 12,
                     "expects true or false");
        expect_error("graph:\n  tenant: t\nkafka:\n  timeout: soon\n", CANOPY_ERR_CONFIG_TYPE, 4, 12,
                     "expects a duration");
        expect_error("graph:\n  tenant: [a, b]\n", CANOPY_ERR_CONFIG_TYPE, 2, 11, "expects a string, got a list");
        expect_error("graph:\n  tenant:\n    x: 1\n", CANOPY_ERR_CONFIG_TYPE, 3, 5, "got a mapping");
        expect_error("kafka:\n  brokers:\n    - [a]\n", CANOPY_ERR_CONFIG_TYPE, 3, 7, "items of 'kafka.brokers'");
        expect_error("- a\n- b\n", CANOPY_ERR_CONFIG_TYPE, 1, 1, "top level must be a mapping");
}

static void test_out_of_bounds(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: t\nworkers:\n  count: 65\n", CANOPY_ERR_CONFIG_RANGE, 4, 10,
                     "'workers.count' = '65' is out of bounds (1 .. 64)");
        expect_error("graph:\n  tenant: t\nworkers:\n  count: 0\n", CANOPY_ERR_CONFIG_RANGE, 4, 10,
                     "out of bounds");
        expect_error("graph:\n  tenant: t\nworkers:\n  ratio: 1.5\n", CANOPY_ERR_CONFIG_RANGE, 4, 10,
                     "out of bounds (0 .. 1)");
        expect_error("kafka:\n  timeout: 2m\n", CANOPY_ERR_CONFIG_RANGE, 2, 12, "out of bounds (100ms .. 1m)");
        expect_error("workers:\n  count: 99999999999999999999999\n", CANOPY_ERR_CONFIG_RANGE, 2, 10,
                     "out of bounds");
}

static void test_bad_yaml(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: {a: 1\nmode: x\n", CANOPY_ERR_CONFIG_SYNTAX, 3, 5,
                     "invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping started at line 2, column 11)");
        expect_error("graph:\n  tenant: t\nmode: \"unclosed\n", CANOPY_ERR_CONFIG_SYNTAX, 4, 1, "invalid YAML");
        expect_error("mode: a: b\n", CANOPY_ERR_CONFIG_SYNTAX, 1, 8, "mapping values are not allowed");
        expect_error("graph:\n  tenant: t\n   mode: x\n", CANOPY_ERR_CONFIG_SYNTAX, 3, 8, "invalid YAML");
        expect_error("graph: &g\n  tenant: t\nkafka: *g\n", CANOPY_ERR_CONFIG_SYNTAX, 3, 8, "aliases");
        expect_error("graph:\n  tenant: t\n---\nmode: batch\n", CANOPY_ERR_CONFIG_SYNTAX, 3, 1,
                     "only one YAML document");
}

static void test_bad_enum(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: t\nmode: fast\n", CANOPY_ERR_CONFIG_RANGE, 3, 7,
                     "'mode' = 'fast' is not one of: stream|batch|replay");
}

/* A string key with a character class and a length. */
static void test_charset(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: t\nid: nörth\n", CANOPY_ERR_CONFIG_RANGE, 3, 5,
                     "'id' = 'nörth': only the characters A-Za-z0-9._- are allowed");
        expect_error("graph:\n  tenant: t\nid: \"a b\"\n", CANOPY_ERR_CONFIG_RANGE, 3, 5, "only the characters");
        expect_error("graph:\n  tenant: t\nid: abcdefghi\n", CANOPY_ERR_CONFIG_RANGE, 3, 5, "length must be 1 .. 8");
        const char *p = write_file("ok.yaml", "graph:\n  tenant: t\nid: a-Z_9.x\n");
        struct tconf c;
        char err[512];
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.id, "a-Z_9.x");
        canopy_conf_free(&ttable, &c);
}

static void test_missing_required(void **state) {
        (void)state;
        expect_error("mode: batch\n", CANOPY_ERR_CONFIG_MISSING, 1, 1,
                     "missing required key 'graph.tenant' for test");
        /* Pointed at its section when the section exists. */
        expect_error("mode: batch\ngraph:\n  client_secret: abcdef\n", CANOPY_ERR_CONFIG_MISSING, 2, 1,
                     "env TCANOPY_TENANT");
        /* An empty file is valid YAML but still lacks the required key. */
        expect_error("", CANOPY_ERR_CONFIG_MISSING, 1, 1, "missing required key");
}

static void test_duplicate_key(void **state) {
        (void)state;
        expect_error("graph:\n  tenant: t\nmode: batch\nmode: stream\n", CANOPY_ERR_CONFIG, 4, 1,
                     "'mode' is set twice (first at line 3)");
}

static void test_precedence(void **state) {
        (void)state;
        const char *p = write_file("prec.yaml", "graph:\n  tenant: file\nworkers:\n  count: 8\n");
        struct tconf c;
        char err[512];
        /* default < file */
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_int_equal(c.count, 8);
        assert_string_equal(c.tenant, "file");
        canopy_conf_free(&ttable, &c);
        /* file < env */
        setenv("TCANOPY_COUNT", "16", 1);
        setenv("TCANOPY_TENANT", "env", 1);
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_int_equal(c.count, 16);
        assert_string_equal(c.tenant, "env");
        canopy_conf_free(&ttable, &c);
        /* env < --set; the last --set wins */
        const char *sets[] = {"workers.count=32", "graph.tenant=set1", "graph.tenant=set2"};
        assert_int_equal(load(&c, p, sets, 3, err, sizeof(err)), CANOPY_OK);
        assert_int_equal(c.count, 32);
        assert_string_equal(c.tenant, "set2");
        canopy_conf_free(&ttable, &c);
        /* A bad env value is reported with the variable's name. */
        setenv("TCANOPY_COUNT", "100", 1);
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_ERR_CONFIG_RANGE);
        assert_non_null(strstr(err, "env TCANOPY_COUNT: 'workers.count' = '100' is out of bounds"));
        unsetenv("TCANOPY_COUNT");
        unsetenv("TCANOPY_TENANT");
        /* A bad --set: unknown key with suggestion, and the missing '='. */
        const char *bad[] = {"workers.cont=3"};
        assert_int_equal(load(&c, p, bad, 1, err, sizeof(err)), CANOPY_ERR_CONFIG_UNKNOWN_KEY);
        assert_non_null(strstr(err, "--set workers.cont: unknown key 'workers.cont' for test (did you mean 'workers.count'?)"));
        const char *noeq[] = {"workers.count"};
        assert_int_equal(load(&c, p, noeq, 1, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "--set"));
        /* Required satisfied by --set only, no file. */
        const char *only[] = {"graph.tenant=x"};
        assert_int_equal(load(&c, NULL, only, 1, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.tenant, "x");
        canopy_conf_free(&ttable, &c);
        assert_int_equal(load(&c, NULL, NULL, 0, err, sizeof(err)), CANOPY_ERR_CONFIG_MISSING);
        assert_non_null(strstr(err, "config: missing required key 'graph.tenant'"));
}

static void test_lists(void **state) {
        (void)state;
        struct tconf c;
        char err[512];
        setenv("TCANOPY_BROKERS", " h1:1 , h2:2,,h3:3 ", 1);
        const char *sets[] = {"graph.tenant=t"};
        assert_int_equal(load(&c, NULL, sets, 1, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.brokers[0], "h1:1");
        assert_string_equal(c.brokers[1], "h2:2");
        assert_string_equal(c.brokers[2], "h3:3");
        assert_null(c.brokers[3]);
        canopy_conf_free(&ttable, &c);
        unsetenv("TCANOPY_BROKERS");
        const char *sets2[] = {"graph.tenant=t", "kafka.brokers=x:1,y:2"};
        assert_int_equal(load(&c, NULL, sets2, 2, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.brokers[1], "y:2");
        assert_null(c.brokers[2]);
        canopy_conf_free(&ttable, &c);
        /* Flow sequence and an empty list in YAML. */
        const char *p = write_file("l.yaml", "graph: {tenant: t}\nkafka:\n  brokers: []\n");
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_non_null(c.brokers);
        assert_null(c.brokers[0]);
        canopy_conf_free(&ttable, &c);
}

static void test_secret_sources(void **state) {
        (void)state;
        struct tconf c;
        char err[512];
        /* <key>_file, relative to the YAML file. */
        write_file("secret.txt", "from-file-s3cret\n");
        const char *p = write_file("s.yaml", "graph:\n  tenant: t\n  client_secret_file: secret.txt\n");
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.secret, "from-file-s3cret");
        canopy_conf_free(&ttable, &c);
        /* A missing secret file names the key and file at file:line:col. */
        p = write_file("s2.yaml", "graph:\n  tenant: t\n  client_secret_file: nope.txt\n");
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, ":3:23: cannot read the file of secret 'graph.client_secret'"));
        /* env value, then env _FILE. */
        setenv("TCANOPY_SECRET", "from-env-s3cret", 1);
        const char *sets[] = {"graph.tenant=t"};
        assert_int_equal(load(&c, NULL, sets, 1, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.secret, "from-env-s3cret");
        canopy_conf_free(&ttable, &c);
        unsetenv("TCANOPY_SECRET");
        char sf[512];
        snprintf(sf, sizeof(sf), "%s/secret.txt", tmpdir);
        setenv("TCANOPY_SECRET_FILE", sf, 1);
        assert_int_equal(load(&c, NULL, sets, 1, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.secret, "from-file-s3cret");
        canopy_conf_free(&ttable, &c);
        unsetenv("TCANOPY_SECRET_FILE");
        /* --set <key>_file=PATH */
        char set[600];
        snprintf(set, sizeof(set), "graph.client_secret_file=%s", sf);
        const char *sets2[] = {"graph.tenant=t", set};
        assert_int_equal(load(&c, NULL, sets2, 2, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.secret, "from-file-s3cret");
        canopy_conf_free(&ttable, &c);
}

/* Whether the NUL-terminated buffer contains needle. */
static bool contains(const char *hay, const char *needle) {
        return strstr(hay, needle) != NULL;
}

static void test_secret_never_logged(void **state) {
        (void)state;
        /* A secret with characters that JSON escapes, so that its escaped
         * form is what a log line would carry. */
        const char *secret = "Zq9\"pa\\ss-w0rd-7781";
        const char *escaped = "Zq9\\\"pa\\\\ss-w0rd-7781";
        const char *plain = "Kx7-plain-secret-4410";
        char *logbuf = NULL;
        size_t loglen = 0;
        FILE *logf = open_memstream(&logbuf, &loglen);
        assert_non_null(logf);
        canopy_log_set_output(logf);
        canopy_log_set_level(CANOPY_LOG_DEBUG);

        char yaml[512];
        snprintf(yaml, sizeof(yaml), "graph:\n  tenant: t\n  client_secret: \"Zq9\\\"pa\\\\ss-w0rd-7781\"\n");
        const char *p = write_file("sec.yaml", yaml);
        struct tconf c;
        char err[512];
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        assert_string_equal(c.secret, secret);

        /* The plain secret comes from the env. */
        setenv("TCANOPY_SECRET", plain, 1);
        struct tconf c2;
        const char *sets[] = {"graph.tenant=t"};
        assert_int_equal(load(&c2, NULL, sets, 1, err, sizeof(err)), CANOPY_OK);
        unsetenv("TCANOPY_SECRET");

        /* Log the secrets in messages, at debug level and as context. */
        canopy_log(CANOPY_LOG_DEBUG, "test", NULL, "connecting with secret %s", c.secret);
        canopy_log(CANOPY_LOG_ERROR, "test", NULL, "token request failed for %s and %s", c2.secret, c.secret);
        canopy_log_ctx ctx = CANOPY_LOG_CTX_NONE;
        ctx.connector = c2.secret;
        ctx.anchor = c.secret;
        canopy_log(CANOPY_LOG_WARN, "test", &ctx, "context carries the secret");

        /* The dump shows [REDACTED]. */
        char *dump = NULL;
        size_t dumplen = 0;
        FILE *df = open_memstream(&dump, &dumplen);
        canopy_conf_dump(df, &ttable, &c);
        fclose(df);
        assert_true(contains(dump, "client_secret: \"[REDACTED]\""));
        assert_false(contains(dump, "Zq9"));
        canopy_log(CANOPY_LOG_INFO, "test", NULL, "config: %s", dump);
        free(dump);

        /* Errors that would quote the secret value: a secret given as the
         * value of a non-secret key (the error quotes it; the log redacts),
         * and a type error on the secret key itself (never quoted). */
        char set[128];
        snprintf(set, sizeof(set), "workers.count=%s", plain);
        const char *bad[] = {"graph.tenant=t", set};
        struct tconf c3;
        assert_int_equal(load(&c3, NULL, bad, 2, err, sizeof(err)), CANOPY_ERR_CONFIG_TYPE);
        canopy_log(CANOPY_LOG_ERROR, "config", NULL, "%s", err);
        const char *p2 = write_file("sec2.yaml", "graph:\n  tenant: t\n  client_secret: [Kx7-plain-secret-4410]\n");
        assert_int_equal(load(&c3, p2, NULL, 0, err, sizeof(err)), CANOPY_ERR_CONFIG_TYPE);
        assert_false(contains(err, plain));
        canopy_log(CANOPY_LOG_ERROR, "config", NULL, "%s", err);

        fflush(logf);
        canopy_log_set_output(NULL);
        canopy_log_set_level(CANOPY_LOG_INFO);
        fclose(logf);
        assert_true(loglen > 0);
        assert_true(contains(logbuf, "[REDACTED]"));
        assert_true(contains(logbuf, "connecting with secret"));
        assert_false(contains(logbuf, secret));
        assert_false(contains(logbuf, escaped));
        assert_false(contains(logbuf, plain));
        assert_false(contains(logbuf, "w0rd-7781"));
        free(logbuf);
        canopy_conf_free(&ttable, &c);
        canopy_conf_free(&ttable, &c2);
}

static void test_dump_round_trip(void **state) {
        (void)state;
        const char *p = write_file("rt.yaml", "graph:\n  tenant: \"con\\\"toso\\n\"\nkafka:\n  brokers: [a, \"b,c\"]\n"
                                              "  timeout: 30s\nworkers:\n  count: 7\n  ratio: 0.25\nmode: batch\n");
        struct tconf c, d;
        char err[512];
        assert_int_equal(load(&c, p, NULL, 0, err, sizeof(err)), CANOPY_OK);
        char dp[512];
        snprintf(dp, sizeof(dp), "%s/dump.yaml", tmpdir);
        FILE *f = fopen(dp, "w");
        canopy_conf_dump(f, &ttable, &c);
        fclose(f);
        if (load(&d, dp, NULL, 0, err, sizeof(err)) != CANOPY_OK) {
                print_error("reload of dump failed: %s\n", err);
                fail();
        }
        assert_string_equal(d.tenant, "con\"toso\n");
        assert_string_equal(d.brokers[1], "b,c");
        assert_int_equal(d.timeout_ms, 30000);
        assert_int_equal(d.count, 7);
        assert_true(d.ratio == 0.25);
        assert_string_equal(d.mode, "batch");
        assert_string_equal(d.name, "canopy");
        canopy_conf_free(&ttable, &c);
        canopy_conf_free(&ttable, &d);
}

/* The generated reference file of every table loads: only required keys
 * (commented out in it) may be missing. An empty section is allowed. */
static void test_example_files(void **state) {
        (void)state;
        char path[512];
        snprintf(path, sizeof(path), "%s/example.yaml", tmpdir);
        const canopy_conf_table *tables[64];
        size_t n = 0;
        tables[n++] = &ttable;
        for (size_t i = 0; canopy_conf_all_tables[i] && n < 64; i++)
                tables[n++] = canopy_conf_all_tables[i];
        for (size_t i = 0; i < n; i++) {
                FILE *f = fopen(path, "w");
                assert_non_null(f);
                assert_int_equal(canopy_conf_write_example(f, tables[i]), CANOPY_OK);
                fclose(f);
                void *cfg = calloc(1, tables[i]->size);
                char err[512];
                canopy_err rc = canopy_conf_load(tables[i], cfg, path, NULL, 0, err, sizeof(err));
                if (rc != CANOPY_OK && rc != CANOPY_ERR_CONFIG_MISSING) {
                        print_error("example of %s does not load: %s\n", tables[i]->service, err);
                        fail();
                }
                canopy_conf_free(tables[i], cfg);
                free(cfg);
        }
        /* The test table's example: defaults on, tenant commented out. */
        FILE *f = fopen(path, "w");
        canopy_conf_write_example(f, &ttable);
        fclose(f);
        f = fopen(path, "r");
        char text[8192];
        size_t tl = fread(text, 1, sizeof(text) - 1, f);
        text[tl] = 0;
        fclose(f);
        assert_non_null(strstr(text, "  # Count.\n  # (integer, 1 .. 64, env TCANOPY_COUNT)\n  count: 4\n"));
        assert_non_null(strstr(text, "  # tenant:\n"));
        assert_non_null(strstr(text, "REQUIRED"));
        assert_non_null(strstr(text, "  brokers: [\"127.0.0.1:9092\"]\n"));
        const char *sets[] = {"graph.tenant=t"};
        struct tconf c;
        assert_int_equal(load(&c, path, sets, 1, text, sizeof(text)), CANOPY_OK);
        assert_int_equal(c.count, 4);
        assert_int_equal(c.timeout_ms, 5000);
        canopy_conf_free(&ttable, &c);
}

static void test_check_table(void **state) {
        (void)state;
        char err[512];
        assert_int_equal(canopy_conf_check(&ttable, err, sizeof(err)), CANOPY_OK);
        canopy_conf_def bad[2] = {tdefs[0], tdefs[0]};
        canopy_conf_table bt = {"bad", "", bad, 2, sizeof(struct tconf)};
        assert_int_equal(canopy_conf_check(&bt, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "declared twice"));
        bad[1] = tdefs[5];
        bad[1].defval = "1000";
        assert_int_equal(canopy_conf_check(&bt, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "out of bounds"));
        bad[1] = tdefs[1];
        bad[1].key = "name.sub";
        assert_int_equal(canopy_conf_check(&bt, err, sizeof(err)), CANOPY_ERR_CONFIG);
        assert_non_null(strstr(err, "both a value and the section"));
}

/* Every table defined in lib/src/conf_*.c is listed in canopy_conf_all_tables
 * and passes canopy_conf_check. */
static void test_all_tables_registered(void **state) {
        (void)state;
        size_t defined = 0;
        char dirpath[512];
        snprintf(dirpath, sizeof(dirpath), "%s/lib/src", CANOPY_SOURCE_DIR);
        DIR *dir = opendir(dirpath);
        assert_non_null(dir);
        struct dirent *de;
        while ((de = readdir(dir))) {
                size_t l = strlen(de->d_name);
                if (strncmp(de->d_name, "conf_", 5) || l < 3 || strcmp(de->d_name + l - 2, ".c") ||
                    !strcmp(de->d_name, "conf_tables.c"))
                        continue;
                char fp[800];
                snprintf(fp, sizeof(fp), "%s/%s", dirpath, de->d_name);
                FILE *f = fopen(fp, "r");
                assert_non_null(f);
                char line[1024];
                while (fgets(line, sizeof(line), f))
                        if (!strncmp(line, "const canopy_conf_table canopy_conf_", 36))
                                defined++;
                fclose(f);
        }
        closedir(dir);
        size_t listed = 0;
        for (; canopy_conf_all_tables[listed]; listed++) {
                char err[512];
                if (canopy_conf_check(canopy_conf_all_tables[listed], err, sizeof(err))) {
                        print_error("table %s: %s\n", canopy_conf_all_tables[listed]->service, err);
                        fail();
                }
                assert_ptr_equal(canopy_conf_find_table(canopy_conf_all_tables[listed]->service),
                                 canopy_conf_all_tables[listed]);
        }
        if (defined != listed) {
                print_error("%zu tables defined in lib/src/conf_*.c, %zu listed in conf_tables.c: add X(<name>) \\\n",
                            defined, listed);
                fail();
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults_and_file),
                cmocka_unit_test(test_durations),
                cmocka_unit_test(test_unknown_key),
                cmocka_unit_test(test_wrong_type),
                cmocka_unit_test(test_out_of_bounds),
                cmocka_unit_test(test_bad_yaml),
                cmocka_unit_test(test_bad_enum),
                cmocka_unit_test(test_charset),
                cmocka_unit_test(test_missing_required),
                cmocka_unit_test(test_duplicate_key),
                cmocka_unit_test(test_precedence),
                cmocka_unit_test(test_lists),
                cmocka_unit_test(test_secret_sources),
                cmocka_unit_test(test_secret_never_logged),
                cmocka_unit_test(test_dump_round_trip),
                cmocka_unit_test(test_example_files),
                cmocka_unit_test(test_check_table),
                cmocka_unit_test(test_all_tables_registered),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
