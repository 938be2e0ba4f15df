/* test_metrics.c: the metrics registry and its Prometheus text output.
 *
 * promtool is not installed here, so the exposition format is checked by a
 * validator written from the format's rules: HELP/TYPE lines, metric and
 * label name syntax, label value escapes, float values, one TYPE per family
 * before its samples, families contiguous, no duplicate series, histogram
 * buckets cumulative and ending in le="+Inf" equal to _count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/metrics.h"

/* ---- a Prometheus text format validator --------------------------------- */

#define V_MAX_FAMILIES 256
#define V_MAX_SERIES 4096

struct vfam {
        char name[128];
        char type[16];
        bool has_help, closed;
};

struct vstate {
        struct vfam fams[V_MAX_FAMILIES];
        size_t nfams;
        char *seen[V_MAX_SERIES]; /* "name{labels}" already given */
        size_t nseen;
        int cur;                  /* index of the family whose lines we are in, -1 none */
        /* histogram bucket tracking for the current series */
        char hkey[1024];
        double hlast;
        bool hinf;
        double hinfval;
        char err[512];
};

static bool vname(const char *s, size_t l, bool colon) {
        if (!l || isdigit((unsigned char)s[0]))
                return false;
        for (size_t i = 0; i < l; i++)
                if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || (colon && s[i] == ':')))
                        return false;
        return true;
}

static bool vfloat(const char *s) {
        if (!strcmp(s, "+Inf") || !strcmp(s, "-Inf") || !strcmp(s, "NaN"))
                return true;
        char *end;
        strtod(s, &end);
        return end != s && *end == 0 && !strchr(s, 'i') && !strchr(s, 'n') && !strchr(s, 'N');
}

static int vfind(struct vstate *v, const char *name) {
        for (size_t i = 0; i < v->nfams; i++)
                if (!strcmp(v->fams[i].name, name))
                        return (int)i;
        return -1;
}

static int vfail(struct vstate *v, int lineno, const char *what) {
        snprintf(v->err, sizeof(v->err), "line %d: %s", lineno, what);
        return -1;
}

/* Enter family `i`; earlier families must not come back. */
static int venter(struct vstate *v, int i, int lineno) {
        if (v->cur == i)
                return 0;
        if (v->fams[i].closed)
                return vfail(v, lineno, "family lines are not contiguous");
        if (v->cur >= 0)
                v->fams[v->cur].closed = true;
        v->cur = i;
        return 0;
}

/* Parse `{a="x",b="y"}` at *p; writes the labels without le into key and le's value into le. */
static int vlabels(struct vstate *v, const char **pp, char *key, size_t keylen, char *le, size_t lelen,
                   int lineno) {
        const char *p = *pp;
        size_t kl = strlen(key);
        le[0] = 0;
        if (*p != '{')
                return 0;
        p++;
        char names[16][64];
        size_t nn = 0;
        while (*p != '}') {
                const char *n = p;
                while (isalnum((unsigned char)*p) || *p == '_')
                        p++;
                size_t l = (size_t)(p - n);
                if (!vname(n, l, false) || l >= 64)
                        return vfail(v, lineno, "bad label name");
                for (size_t i = 0; i < nn; i++)
                        if (strlen(names[i]) == l && !strncmp(names[i], n, l))
                                return vfail(v, lineno, "duplicate label name");
                if (nn < 16) {
                        memcpy(names[nn], n, l);
                        names[nn++][l] = 0;
                }
                bool is_le = l == 2 && !strncmp(n, "le", 2);
                if (*p++ != '=' || *p++ != '"')
                        return vfail(v, lineno, "expected =\" after label name");
                char val[512];
                size_t vl = 0;
                while (*p != '"') {
                        if (!*p || *p == '\n')
                                return vfail(v, lineno, "unterminated label value");
                        if (*p == '\\') {
                                p++;
                                if (*p != '\\' && *p != '"' && *p != 'n')
                                        return vfail(v, lineno, "bad escape in label value");
                        }
                        if (vl < sizeof(val) - 1)
                                val[vl++] = *p;
                        p++;
                }
                val[vl] = 0;
                p++;
                if (is_le)
                        snprintf(le, lelen, "%s", val);
                else
                        kl += (size_t)snprintf(key + kl, keylen > kl ? keylen - kl : 0, "%.*s=%s;", (int)l, n, val);
                if (*p == ',')
                        p++;
                else if (*p != '}')
                        return vfail(v, lineno, "expected , or } in labels");
        }
        *pp = p + 1;
        return 0;
}

static int vsample(struct vstate *v, const char *line, int lineno) {
        const char *p = line;
        while (isalnum((unsigned char)*p) || *p == '_' || *p == ':')
                p++;
        size_t nl = (size_t)(p - line);
        if (!vname(line, nl, true) || nl >= 128)
                return vfail(v, lineno, "bad metric name");
        char name[128];
        memcpy(name, line, nl);
        name[nl] = 0;
        /* The family: the name itself, or a histogram's _bucket/_sum/_count. */
        int fi = vfind(v, name);
        const char *suffix = "";
        if (fi < 0) {
                static const char *sfx[] = {"_bucket", "_sum", "_count"};
                for (size_t i = 0; i < 3 && fi < 0; i++) {
                        size_t sl = strlen(sfx[i]);
                        if (nl > sl && !strcmp(name + nl - sl, sfx[i])) {
                                char base[128];
                                memcpy(base, name, nl - sl);
                                base[nl - sl] = 0;
                                fi = vfind(v, base);
                                if (fi >= 0 && strcmp(v->fams[fi].type, "histogram"))
                                        fi = -1;
                                suffix = sfx[i];
                        }
                }
        }
        if (fi < 0)
                return vfail(v, lineno, "sample without a TYPE line before it");
        if (venter(v, fi, lineno))
                return -1;
        bool hist = !strcmp(v->fams[fi].type, "histogram");
        if (hist && !*suffix)
                return vfail(v, lineno, "histogram sample without _bucket/_sum/_count");
        char key[1024];
        snprintf(key, sizeof(key), "%s{", v->fams[fi].name);
        char le[512];
        if (vlabels(v, &p, key, sizeof(key), le, sizeof(le), lineno))
                return -1;
        if (*p++ != ' ')
                return vfail(v, lineno, "expected one space before the value");
        char val[64];
        size_t vl = strcspn(p, " ");
        if (vl >= sizeof(val))
                return vfail(v, lineno, "value too long");
        memcpy(val, p, vl);
        val[vl] = 0;
        if (!vfloat(val))
                return vfail(v, lineno, "value is not a float");
        if (p[vl] == ' ') {
                const char *ts = p + vl + 1;
                char *end;
                strtoll(ts, &end, 10);
                if (end == ts || *end)
                        return vfail(v, lineno, "bad timestamp");
        }
        double d = strtod(val, NULL);
        if (!strcmp(suffix, "_bucket")) {
                if (!*le)
                        return vfail(v, lineno, "bucket without le");
                if (!vfloat(le))
                        return vfail(v, lineno, "le is not a float");
                if (strcmp(v->hkey, key)) {
                        if (v->hkey[0] && !v->hinf)
                                return vfail(v, lineno, "histogram series without a +Inf bucket");
                        snprintf(v->hkey, sizeof(v->hkey), "%s", key);
                        v->hlast = -1;
                        v->hinf = false;
                }
                if (d < v->hlast)
                        return vfail(v, lineno, "bucket counts are not cumulative");
                v->hlast = d;
                if (!strcmp(le, "+Inf")) {
                        v->hinf = true;
                        v->hinfval = d;
                }
        } else if (*le) {
                return vfail(v, lineno, "le label outside a bucket");
        }
        if (!strcmp(suffix, "_count")) {
                if (strcmp(v->hkey, key) || !v->hinf)
                        return vfail(v, lineno, "_count without its buckets and +Inf");
                if (d != v->hinfval)
                        return vfail(v, lineno, "_count differs from the +Inf bucket");
        }
        if (!strcmp(v->fams[fi].type, "counter") && (d < 0 || isnan(d)))
                return vfail(v, lineno, "negative counter");
        /* No series twice (buckets are told apart by le). */
        char full[1600];
        snprintf(full, sizeof(full), "%s%s|%s", key, suffix, le);
        for (size_t i = 0; i < v->nseen; i++)
                if (!strcmp(v->seen[i], full))
                        return vfail(v, lineno, "duplicate series");
        if (v->nseen < V_MAX_SERIES)
                v->seen[v->nseen++] = strdup(full);
        return 0;
}

/* 0 when `text` is valid Prometheus text exposition; else -1 and v->err. */
static int prom_validate(const char *text, struct vstate *v) {
        memset(v, 0, sizeof(*v));
        v->cur = -1;
        int rc = 0;
        int lineno = 0;
        const char *p = text;
        if (*text && text[strlen(text) - 1] != '\n')
                return vfail(v, 0, "output does not end with a newline");
        while (*p && !rc) {
                const char *e = strchr(p, '\n');
                size_t l = (size_t)(e - p);
                char line[2048];
                if (l >= sizeof(line))
                        return vfail(v, lineno, "line too long");
                memcpy(line, p, l);
                line[l] = 0;
                p = e + 1;
                lineno++;
                if (!l)
                        continue;
                if (!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7)) {
                        bool help = line[2] == 'H';
                        const char *n = line + 7;
                        size_t nl = strcspn(n, " ");
                        if (!vname(n, nl, true) || nl >= 128 || n[nl] != ' ')
                                rc = vfail(v, lineno, "bad name in HELP/TYPE");
                        else {
                                char name[128];
                                memcpy(name, n, nl);
                                name[nl] = 0;
                                int fi = vfind(v, name);
                                if (fi < 0) {
                                        if (v->nfams >= V_MAX_FAMILIES)
                                                return vfail(v, lineno, "too many families");
                                        fi = (int)v->nfams++;
                                        snprintf(v->fams[fi].name, sizeof(v->fams[fi].name), "%s", name);
                                }
                                if (venter(v, fi, lineno))
                                        rc = -1;
                                else if (help) {
                                        if (v->fams[fi].has_help)
                                                rc = vfail(v, lineno, "HELP twice");
                                        v->fams[fi].has_help = true;
                                        for (const char *h = n + nl + 1; *h && !rc; h++)
                                                if (*h == '\\' && h[1] != '\\' && h[1] != 'n')
                                                        rc = vfail(v, lineno, "bad escape in HELP");
                                                else if (*h == '\\')
                                                        h++;
                                } else {
                                        const char *t = n + nl + 1;
                                        if (v->fams[fi].type[0])
                                                rc = vfail(v, lineno, "TYPE twice");
                                        else if (strcmp(t, "counter") && strcmp(t, "gauge") &&
                                                 strcmp(t, "histogram") && strcmp(t, "summary") &&
                                                 strcmp(t, "untyped"))
                                                rc = vfail(v, lineno, "unknown TYPE");
                                        else
                                                snprintf(v->fams[fi].type, sizeof(v->fams[fi].type), "%s", t);
                                }
                        }
                } else if (line[0] == '#') {
                        continue;
                } else {
                        rc = vsample(v, line, lineno);
                }
        }
        if (!rc && v->hkey[0] && !v->hinf)
                rc = vfail(v, lineno, "histogram series without a +Inf bucket");
        for (size_t i = 0; i < v->nseen; i++)
                free(v->seen[i]);
        v->nseen = 0;
        return rc;
}

static char *render(canopy_metrics *reg) {
        char *buf = NULL;
        size_t len = 0;
        assert_int_equal(canopy_metrics_render_buf(reg, &buf, &len), CANOPY_OK);
        assert_int_equal(strlen(buf), len);
        return buf;
}

static void expect_valid(const char *text) {
        struct vstate *v = malloc(sizeof(*v));
        if (prom_validate(text, v)) {
                print_error("invalid exposition: %s\n---\n%s---\n", v->err, text);
                free(v);
                fail();
        }
        free(v);
}

static void expect_invalid(const char *text, const char *why) {
        struct vstate *v = malloc(sizeof(*v));
        int rc = prom_validate(text, v);
        if (rc == 0 || !strstr(v->err, why)) {
                print_error("validator accepted or gave another reason (%s), want %s:\n%s", rc ? v->err : "ok", why,
                            text);
                free(v);
                fail();
        }
        free(v);
}

/* ---- tests -------------------------------------------------------------- */

/* The validator itself must reject what Prometheus rejects. */
static void test_validator_rejects(void **state) {
        (void)state;
        expect_valid("# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\n");
        expect_invalid("a_total 1\n", "without a TYPE");
        expect_invalid("# TYPE a counter\na{k=\"v} 1\n", "unterminated");
        expect_invalid("# TYPE a counter\na{k=\"\\x\"} 1\n", "bad escape");
        expect_invalid("# TYPE a counter\na 1x\n", "not a float");
        expect_invalid("# TYPE a counter\na -1\n", "negative counter");
        expect_invalid("# TYPE a gauge\na 1\na 2\n", "duplicate series");
        expect_invalid("# TYPE a gauge\n# TYPE b gauge\na 1\n", "not contiguous");
        expect_invalid("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n", "not cumulative");
        expect_invalid("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n", "+Inf");
        expect_invalid("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", "differs");
        expect_invalid("# TYPE 1a gauge\n", "bad name");
        expect_invalid("# TYPE a gauge\na{1k=\"v\"} 1\n", "bad label name");
        expect_invalid("# TYPE a gauge\na 1", "newline");
}

static void test_counter_gauge(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        assert_non_null(reg);
        canopy_metric *c = canopy_metrics_counter(reg, "canopy_events_total", "Events.", "topic,partition");
        assert_non_null(c);
        /* Same registration: same family; conflicting: NULL. */
        assert_ptr_equal(canopy_metrics_counter(reg, "canopy_events_total", "Events.", "topic,partition"), c);
        assert_null(canopy_metrics_gauge(reg, "canopy_events_total", "x", "topic,partition"));
        assert_null(canopy_metrics_counter(reg, "canopy_events_total", "x", "topic"));
        assert_null(canopy_metrics_counter(reg, "9bad", "x", NULL));
        assert_null(canopy_metrics_counter(reg, "bad-name", "x", NULL));
        assert_null(canopy_metrics_counter(reg, "ok_name", "x", "a,a"));
        assert_null(canopy_metrics_counter(reg, "ok_name2", "x", "__reserved"));
        assert_null(canopy_metrics_histogram(reg, "ok_h", "x", "le", NULL, 0));

        canopy_metrics_inc(c, CANOPY_LABELS("changes", "0"));
        canopy_metrics_add(c, CANOPY_LABELS("changes", "0"), 2.5);
        canopy_metrics_add(c, CANOPY_LABELS("changes", "0"), -5); /* ignored: counters only go up */
        canopy_metrics_set(c, CANOPY_LABELS("changes", "0"), 100); /* ignored: not a gauge */
        canopy_metrics_inc(c, CANOPY_LABELS("mv", "1"));
        assert_true(canopy_metrics_value(c, CANOPY_LABELS("changes", "0")) == 3.5);
        assert_true(canopy_metrics_value(c, CANOPY_LABELS("mv", "1")) == 1);
        assert_true(canopy_metrics_value(c, CANOPY_LABELS("nope", "1")) == 0);

        canopy_metric *g = canopy_metrics_gauge(reg, "canopy_lag", "Consumer lag.\nSecond \\ line.", "group");
        canopy_metrics_set(g, CANOPY_LABELS("w\"1\\\n"), 42);
        canopy_metrics_add(g, CANOPY_LABELS("w\"1\\\n"), -2);
        assert_true(canopy_metrics_value(g, CANOPY_LABELS("w\"1\\\n")) == 40);
        canopy_metric *up = canopy_metrics_gauge(reg, "canopy_up", "Up.", NULL);
        canopy_metrics_set(up, NULL, 1);
        canopy_metrics_inc(NULL, NULL); /* a NULL family is ignored */

        char *text = render(reg);
        expect_valid(text);
        assert_non_null(strstr(text, "# HELP canopy_events_total Events.\n# TYPE canopy_events_total counter\n"));
        assert_non_null(strstr(text, "canopy_events_total{topic=\"changes\",partition=\"0\"} 3.5\n"));
        assert_non_null(strstr(text, "canopy_events_total{topic=\"mv\",partition=\"1\"} 1\n"));
        assert_non_null(strstr(text, "# HELP canopy_lag Consumer lag.\\nSecond \\\\ line.\n"));
        assert_non_null(strstr(text, "canopy_lag{group=\"w\\\"1\\\\\\n\"} 40\n"));
        assert_non_null(strstr(text, "canopy_up 1\n"));
        /* Sorted by family name. */
        assert_true(strstr(text, "canopy_events_total") < strstr(text, "canopy_lag"));
        assert_true(strstr(text, "canopy_lag") < strstr(text, "canopy_metrics_dropped_series_total"));
        free(text);
        canopy_metrics_free(reg);
        canopy_metrics_free(NULL);
}

static void test_histogram(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        const double b[] = {0.1, 0.5, 1};
        canopy_metric *h = canopy_metrics_histogram(reg, "canopy_graph_seconds", "Graph latency.", "op", b, 3);
        assert_non_null(h);
        const double bad[] = {1, 0.5};
        assert_null(canopy_metrics_histogram(reg, "canopy_bad_seconds", "x", NULL, bad, 2));
        canopy_metrics_observe(h, CANOPY_LABELS("patch"), 0.05);
        canopy_metrics_observe(h, CANOPY_LABELS("patch"), 0.1); /* le is inclusive */
        canopy_metrics_observe(h, CANOPY_LABELS("patch"), 0.7);
        canopy_metrics_observe(h, CANOPY_LABELS("patch"), 3);
        canopy_metrics_observe(h, CANOPY_LABELS("post"), 0.2);
        canopy_metrics_add(h, CANOPY_LABELS("patch"), 1); /* ignored: not a counter */
        assert_true(canopy_metrics_value(h, CANOPY_LABELS("patch")) == 4);
        canopy_metric *d = canopy_metrics_histogram(reg, "canopy_default_seconds", "Default buckets.", NULL, NULL, 0);
        canopy_metrics_observe(d, NULL, 0.003);
        char *text = render(reg);
        expect_valid(text);
        assert_non_null(strstr(text, "# TYPE canopy_graph_seconds histogram\n"
                                     "canopy_graph_seconds_bucket{op=\"patch\",le=\"0.1\"} 2\n"
                                     "canopy_graph_seconds_bucket{op=\"patch\",le=\"0.5\"} 2\n"
                                     "canopy_graph_seconds_bucket{op=\"patch\",le=\"1\"} 3\n"
                                     "canopy_graph_seconds_bucket{op=\"patch\",le=\"+Inf\"} 4\n"
                                     "canopy_graph_seconds_sum{op=\"patch\"} 3.85\n"
                                     "canopy_graph_seconds_count{op=\"patch\"} 4\n"));
        assert_non_null(strstr(text, "canopy_graph_seconds_bucket{op=\"post\",le=\"0.5\"} 1\n"));
        assert_non_null(strstr(text, "canopy_default_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert_non_null(strstr(text, "canopy_default_seconds_bucket{le=\"0.005\"} 1\n"));
        assert_non_null(strstr(text, "canopy_default_seconds_bucket{le=\"10\"} 1\n"));
        free(text);
        canopy_metrics_free(reg);
}

static void test_series_cap(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        canopy_metric *c = canopy_metrics_counter(reg, "canopy_by_anchor_total", "Too many labels.", "anchor");
        char v[32];
        for (int i = 0; i < 10010; i++) {
                snprintf(v, sizeof(v), "a%d", i);
                canopy_metrics_inc(c, CANOPY_LABELS(v));
        }
        assert_true(canopy_metrics_value(c, CANOPY_LABELS("a9999")) == 1);
        assert_true(canopy_metrics_value(c, CANOPY_LABELS("a10005")) == 0);
        char *text = render(reg);
        assert_non_null(strstr(text, "canopy_metrics_dropped_series_total 10\n"));
        expect_valid(text);
        free(text);
        /* A long label value is cut at 256 bytes and still finds its series. */
        char longv[600];
        memset(longv, 'x', sizeof(longv) - 1);
        longv[sizeof(longv) - 1] = 0;
        canopy_metric *g = canopy_metrics_gauge(reg, "canopy_long", "Long.", "v");
        canopy_metrics_set(g, CANOPY_LABELS(longv), 3);
        assert_true(canopy_metrics_value(g, CANOPY_LABELS(longv)) == 3);
        canopy_metrics_free(reg);
}

struct thr {
        canopy_metric *c, *h;
};

static void *hammer(void *arg) {
        struct thr *t = arg;
        for (int i = 0; i < 20000; i++) {
                canopy_metrics_inc(t->c, CANOPY_LABELS(i % 2 ? "odd" : "even"));
                canopy_metrics_observe(t->h, NULL, (i % 10) / 10.0);
        }
        return NULL;
}

static void test_threads(void **state) {
        (void)state;
        canopy_metrics *reg = canopy_metrics_new();
        struct thr t = {canopy_metrics_counter(reg, "canopy_t_total", "T.", "parity"),
                        canopy_metrics_histogram(reg, "canopy_t_seconds", "T.", NULL, NULL, 0)};
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
                pthread_create(&th[i], NULL, hammer, &t);
        /* Render while the others write: the output stays valid. */
        for (int i = 0; i < 5; i++) {
                char *text = render(reg);
                expect_valid(text);
                free(text);
        }
        for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
        assert_true(canopy_metrics_value(t.c, CANOPY_LABELS("odd")) == 40000);
        assert_true(canopy_metrics_value(t.c, CANOPY_LABELS("even")) == 40000);
        assert_true(canopy_metrics_value(t.h, NULL) == 80000);
        canopy_metrics_free(reg);
}

static void test_default_registry(void **state) {
        (void)state;
        canopy_metrics *a = canopy_metrics_default();
        assert_non_null(a);
        assert_ptr_equal(a, canopy_metrics_default());
        canopy_metric *c = canopy_metrics_counter(a, "canopy_test_default_total", "D.", NULL);
        canopy_metrics_inc(c, NULL);
        assert_true(canopy_metrics_value(c, NULL) == 1);
        char *text = render(a);
        expect_valid(text);
        free(text);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_validator_rejects), cmocka_unit_test(test_counter_gauge),
                cmocka_unit_test(test_histogram),         cmocka_unit_test(test_series_cap),
                cmocka_unit_test(test_threads),           cmocka_unit_test(test_default_registry),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
