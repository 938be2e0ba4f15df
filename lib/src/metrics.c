/* metrics.c: counters, gauges and histograms with labels, rendered in the
 * Prometheus text exposition format.
 *
 * Locking: the registry lock guards the family list; each family has its own
 * lock guarding its series table, so that hot counters of different families
 * never contend. Series are found by a hash of their label values.
 */
#include "canopy/metrics.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_FAMILIES_MAX 512
#define METRICS_LABELS_MAX 8
#define METRICS_SERIES_MAX 10000
#define METRICS_BUCKETS_MAX 64
#define METRICS_VALUE_MAX 256

const double canopy_metrics_default_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                 0.25,  0.5,    1,     2.5,  5,     10};
const size_t canopy_metrics_default_nbuckets =
        sizeof(canopy_metrics_default_buckets) / sizeof(canopy_metrics_default_buckets[0]);

struct series {
        struct series *next; /* hash chain */
        uint64_t hash;
        char **lv;           /* nlabels values (owned) */
        double value;        /* counter, gauge */
        uint64_t *counts;    /* histogram: per bucket, not cumulative; [nb] is +Inf */
        double sum;
        uint64_t count;
};

struct canopy_metric {
        canopy_metrics *reg;
        char *name;
        char *help;
        canopy_metric_type type;
        char *labelspec; /* as registered, for re-registration checks */
        char *labels[METRICS_LABELS_MAX];
        size_t nlabels;
        double *buckets;
        size_t nb;
        pthread_mutex_t lock;
        struct series **ht;
        size_t htcap;
        size_t nseries;
};

struct canopy_metrics {
        pthread_mutex_t lock;
        canopy_metric *fams[METRICS_FAMILIES_MAX];
        size_t nfams;
        canopy_metric *dropped; /* canopy_metrics_dropped_series_total */
};

static bool name_ok(const char *s, bool colon) {
        if (!s || !*s || isdigit((unsigned char)*s))
                return false;
        for (; *s; s++)
                if (!(isalnum((unsigned char)*s) || *s == '_' || (colon && *s == ':')))
                        return false;
        return true;
}

static void series_free(struct series *s, size_t nlabels) {
        if (!s)
                return;
        for (size_t i = 0; s->lv && i < nlabels; i++)
                free(s->lv[i]);
        free(s->lv);
        free(s->counts);
        free(s);
}

static void family_free(canopy_metric *m) {
        if (!m)
                return;
        for (size_t i = 0; i < m->htcap; i++) {
                struct series *s = m->ht[i];
                while (s) {
                        struct series *n = s->next;
                        series_free(s, m->nlabels);
                        s = n;
                }
        }
        free(m->ht);
        for (size_t i = 0; i < m->nlabels; i++)
                free(m->labels[i]);
        free(m->labelspec);
        free(m->name);
        free(m->help);
        free(m->buckets);
        pthread_mutex_destroy(&m->lock);
        free(m);
}

static canopy_metric *register_family(canopy_metrics *reg, const char *name, const char *help, const char *labels,
                                      canopy_metric_type type, const double *buckets, size_t nb);

canopy_metrics *canopy_metrics_new(void) {
        canopy_metrics *reg = calloc(1, sizeof(*reg));
        if (!reg)
                return NULL;
        pthread_mutex_init(&reg->lock, NULL);
        reg->dropped = register_family(reg, "canopy_metrics_dropped_series_total",
                                       "Label tuples dropped because a family reached its series cap.", NULL,
                                       CANOPY_METRIC_COUNTER, NULL, 0);
        if (!reg->dropped) {
                canopy_metrics_free(reg);
                return NULL;
        }
        return reg;
}

void canopy_metrics_free(canopy_metrics *reg) {
        if (!reg)
                return;
        for (size_t i = 0; i < reg->nfams; i++)
                family_free(reg->fams[i]);
        pthread_mutex_destroy(&reg->lock);
        free(reg);
}

static canopy_metrics *default_reg;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_init(void) {
        default_reg = canopy_metrics_new();
}

canopy_metrics *canopy_metrics_default(void) {
        pthread_once(&default_once, default_init);
        return default_reg;
}

/* Parse "a,b" into m->labels; false on a bad or duplicate name. */
static bool parse_labels(canopy_metric *m, const char *spec) {
        if (!spec || !*spec)
                return true;
        const char *p = spec;
        for (;;) {
                const char *e = strchr(p, ',');
                size_t l = e ? (size_t)(e - p) : strlen(p);
                while (l && *p == ' ') {
                        p++;
                        l--;
                }
                while (l && p[l - 1] == ' ')
                        l--;
                if (m->nlabels >= METRICS_LABELS_MAX || !l || l > 64)
                        return false;
                char *n = strndup(p, l);
                if (!n)
                        return false;
                m->labels[m->nlabels++] = n;
                if (!name_ok(n, false) || !strncmp(n, "__", 2) ||
                    (m->type == CANOPY_METRIC_HISTOGRAM && !strcmp(n, "le")))
                        return false;
                for (size_t i = 0; i + 1 < m->nlabels; i++)
                        if (!strcmp(m->labels[i], n))
                                return false;
                if (!e)
                        return true;
                p = e + 1;
        }
}

static canopy_metric *register_family(canopy_metrics *reg, const char *name, const char *help, const char *labels,
                                      canopy_metric_type type, const double *buckets, size_t nb) {
        if (!reg || !name_ok(name, true))
                return NULL;
        if (!labels)
                labels = "";
        if (type == CANOPY_METRIC_HISTOGRAM && (!buckets || !nb)) {
                buckets = canopy_metrics_default_buckets;
                nb = canopy_metrics_default_nbuckets;
        }
        if (nb > METRICS_BUCKETS_MAX)
                return NULL;
        for (size_t i = 0; i < nb; i++)
                if (!isfinite(buckets[i]) || (i && buckets[i] <= buckets[i - 1]))
                        return NULL;
        pthread_mutex_lock(&reg->lock);
        canopy_metric *m = NULL;
        for (size_t i = 0; i < reg->nfams; i++) {
                canopy_metric *o = reg->fams[i];
                if (strcmp(o->name, name))
                        continue;
                bool same = o->type == type && !strcmp(o->labelspec, labels) && o->nb == nb &&
                            (!nb || !memcmp(o->buckets, buckets, nb * sizeof(double)));
                m = same ? o : NULL;
                goto out;
        }
        if (reg->nfams >= METRICS_FAMILIES_MAX)
                goto out;
        m = calloc(1, sizeof(*m));
        if (!m)
                goto out;
        pthread_mutex_init(&m->lock, NULL);
        m->reg = reg;
        m->type = type;
        m->name = strdup(name);
        m->help = strdup(help ? help : "");
        m->labelspec = strdup(labels);
        m->htcap = 64;
        m->ht = calloc(m->htcap, sizeof(*m->ht));
        if (nb) {
                m->buckets = malloc(nb * sizeof(double));
                if (m->buckets)
                        memcpy(m->buckets, buckets, nb * sizeof(double));
                m->nb = nb;
        }
        if (!m->name || !m->help || !m->labelspec || !m->ht || (nb && !m->buckets) || !parse_labels(m, labels)) {
                family_free(m);
                m = NULL;
                goto out;
        }
        reg->fams[reg->nfams++] = m;
out:
        pthread_mutex_unlock(&reg->lock);
        return m;
}

canopy_metric *canopy_metrics_counter(canopy_metrics *reg, const char *name, const char *help, const char *labels) {
        return register_family(reg, name, help, labels, CANOPY_METRIC_COUNTER, NULL, 0);
}

canopy_metric *canopy_metrics_gauge(canopy_metrics *reg, const char *name, const char *help, const char *labels) {
        return register_family(reg, name, help, labels, CANOPY_METRIC_GAUGE, NULL, 0);
}

canopy_metric *canopy_metrics_histogram(canopy_metrics *reg, const char *name, const char *help, const char *labels,
                                        const double *buckets, size_t nbuckets) {
        return register_family(reg, name, help, labels, CANOPY_METRIC_HISTOGRAM, buckets, nbuckets);
}

static const char *lv_at(const canopy_metric *m, const char *const *lv, size_t i) {
        return lv && i < m->nlabels && lv[i] ? lv[i] : "";
}

static uint64_t lv_hash(const canopy_metric *m, const char *const *lv) {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < m->nlabels; i++) {
                const char *v = lv_at(m, lv, i);
                for (size_t k = 0; v[k] && k < METRICS_VALUE_MAX; k++) {
                        h ^= (unsigned char)v[k];
                        h *= 1099511628211ull;
                }
                h ^= 0xff;
                h *= 1099511628211ull;
        }
        return h;
}

/* Values are stored cut at METRICS_VALUE_MAX bytes; compare them cut. */
static bool lv_equal(const canopy_metric *m, const struct series *s, const char *const *lv) {
        for (size_t i = 0; i < m->nlabels; i++) {
                const char *v = lv_at(m, lv, i);
                size_t vl = strnlen(v, METRICS_VALUE_MAX);
                if (strlen(s->lv[i]) != vl || memcmp(s->lv[i], v, vl) != 0)
                        return false;
        }
        return true;
}

static void grow(canopy_metric *m) {
        size_t ncap = m->htcap * 2;
        struct series **nt = calloc(ncap, sizeof(*nt));
        if (!nt)
                return;
        for (size_t i = 0; i < m->htcap; i++) {
                struct series *s = m->ht[i];
                while (s) {
                        struct series *n = s->next;
                        s->next = nt[s->hash % ncap];
                        nt[s->hash % ncap] = s;
                        s = n;
                }
        }
        free(m->ht);
        m->ht = nt;
        m->htcap = ncap;
}

/* Find or create the series (family lock held). NULL when capped or ENOMEM. */
static struct series *get_series(canopy_metric *m, const char *const *lv, bool create, bool *dropped) {
        uint64_t h = lv_hash(m, lv);
        for (struct series *s = m->ht[h % m->htcap]; s; s = s->next)
                if (s->hash == h && lv_equal(m, s, lv))
                        return s;
        if (!create)
                return NULL;
        if (m->nseries >= METRICS_SERIES_MAX) {
                *dropped = true;
                return NULL;
        }
        struct series *s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->hash = h;
        s->lv = calloc(m->nlabels + 1, sizeof(char *));
        if (m->type == CANOPY_METRIC_HISTOGRAM)
                s->counts = calloc(m->nb + 1, sizeof(uint64_t));
        bool ok = s->lv && (m->type != CANOPY_METRIC_HISTOGRAM || s->counts);
        for (size_t i = 0; ok && i < m->nlabels; i++)
                ok = (s->lv[i] = strndup(lv_at(m, lv, i), METRICS_VALUE_MAX)) != NULL;
        if (!ok) {
                series_free(s, m->nlabels);
                return NULL;
        }
        if (m->nseries >= m->htcap * 2)
                grow(m);
        s->next = m->ht[h % m->htcap];
        m->ht[h % m->htcap] = s;
        m->nseries++;
        return s;
}

enum op { OP_ADD, OP_SET, OP_OBSERVE };

static void update(canopy_metric *m, const char *const *lv, double v, enum op op) {
        if (!m || isnan(v))
                return;
        if ((op == OP_OBSERVE) != (m->type == CANOPY_METRIC_HISTOGRAM))
                return;
        if (op == OP_SET && m->type != CANOPY_METRIC_GAUGE)
                return;
        if (op == OP_ADD && m->type == CANOPY_METRIC_COUNTER && v < 0)
                return;
        bool dropped = false;
        pthread_mutex_lock(&m->lock);
        struct series *s = get_series(m, lv, true, &dropped);
        if (s) {
                if (op == OP_ADD)
                        s->value += v;
                else if (op == OP_SET)
                        s->value = v;
                else {
                        size_t i = 0;
                        while (i < m->nb && v > m->buckets[i])
                                i++;
                        s->counts[i]++;
                        s->count++;
                        s->sum += v;
                }
        }
        pthread_mutex_unlock(&m->lock);
        if (dropped && m != m->reg->dropped)
                update(m->reg->dropped, NULL, 1, OP_ADD);
}

void canopy_metrics_add(canopy_metric *m, const char *const *lv, double v) {
        update(m, lv, v, OP_ADD);
}

void canopy_metrics_inc(canopy_metric *m, const char *const *lv) {
        update(m, lv, 1, OP_ADD);
}

void canopy_metrics_set(canopy_metric *m, const char *const *lv, double v) {
        update(m, lv, v, OP_SET);
}

void canopy_metrics_observe(canopy_metric *m, const char *const *lv, double v) {
        update(m, lv, v, OP_OBSERVE);
}

double canopy_metrics_value(canopy_metric *m, const char *const *lv) {
        if (!m)
                return 0;
        bool dropped = false;
        pthread_mutex_lock(&m->lock);
        struct series *s = get_series(m, lv, false, &dropped);
        double v = !s ? 0 : m->type == CANOPY_METRIC_HISTOGRAM ? (double)s->count : s->value;
        pthread_mutex_unlock(&m->lock);
        return v;
}

/* ---- rendering ---------------------------------------------------------- */

static void put_double(FILE *f, double v) {
        if (isnan(v)) {
                fputs("NaN", f);
                return;
        }
        if (isinf(v)) {
                fputs(v > 0 ? "+Inf" : "-Inf", f);
                return;
        }
        char b[40];
        snprintf(b, sizeof(b), "%.15g", v);
        if (strtod(b, NULL) != v)
                snprintf(b, sizeof(b), "%.17g", v);
        fputs(b, f);
}

static void put_escaped(FILE *f, const char *s, bool quote) {
        for (; *s; s++) {
                if (*s == '\\')
                        fputs("\\\\", f);
                else if (*s == '\n')
                        fputs("\\n", f);
                else if (quote && *s == '"')
                        fputs("\\\"", f);
                else
                        fputc(*s, f);
        }
}

/* {a="x",b="y"[,le="0.5"]} or nothing when there are no labels. */
static void put_labels(FILE *f, const canopy_metric *m, const struct series *s, const char *le) {
        if (!m->nlabels && !le)
                return;
        fputc('{', f);
        for (size_t i = 0; i < m->nlabels; i++) {
                fprintf(f, "%s%s=\"", i ? "," : "", m->labels[i]);
                put_escaped(f, s->lv[i], true);
                fputc('"', f);
        }
        if (le)
                fprintf(f, "%sle=\"%s\"", m->nlabels ? "," : "", le);
        fputc('}', f);
}

static size_t sort_nlabels;

static int cmp_series(const void *a, const void *b) {
        const struct series *x = *(const struct series *const *)a, *y = *(const struct series *const *)b;
        for (size_t i = 0; i < sort_nlabels; i++) {
                int c = strcmp(x->lv[i], y->lv[i]);
                if (c)
                        return c;
        }
        return 0;
}

static int cmp_family(const void *a, const void *b) {
        const canopy_metric *x = *(canopy_metric *const *)a, *y = *(canopy_metric *const *)b;
        return strcmp(x->name, y->name);
}

static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

static void render_family(FILE *f, canopy_metric *m) {
        static const char *types[] = {"counter", "gauge", "histogram"};
        fprintf(f, "# HELP %s ", m->name);
        put_escaped(f, m->help, false);
        fprintf(f, "\n# TYPE %s %s\n", m->name, types[m->type]);
        pthread_mutex_lock(&m->lock);
        struct series **all = malloc((m->nseries + 1) * sizeof(*all));
        size_t n = 0;
        for (size_t i = 0; all && i < m->htcap; i++)
                for (struct series *s = m->ht[i]; s; s = s->next)
                        all[n++] = s;
        if (all) {
                /* qsort has no context argument in C11: the label count goes
                 * through a static guarded by its own lock. */
                pthread_mutex_lock(&sort_lock);
                sort_nlabels = m->nlabels;
                qsort(all, n, sizeof(*all), cmp_series);
                pthread_mutex_unlock(&sort_lock);
        }
        /* A family without labels shows its zero value before the first update. */
        if (all && !n && !m->nlabels && m->type != CANOPY_METRIC_HISTOGRAM)
                fprintf(f, "%s 0\n", m->name);
        for (size_t k = 0; k < n; k++) {
                struct series *s = all[k];
                if (m->type != CANOPY_METRIC_HISTOGRAM) {
                        fputs(m->name, f);
                        put_labels(f, m, s, NULL);
                        fputc(' ', f);
                        put_double(f, s->value);
                        fputc('\n', f);
                        continue;
                }
                uint64_t cum = 0;
                for (size_t i = 0; i <= m->nb; i++) {
                        char le[40];
                        if (i < m->nb) {
                                snprintf(le, sizeof(le), "%.15g", m->buckets[i]);
                                if (strtod(le, NULL) != m->buckets[i])
                                        snprintf(le, sizeof(le), "%.17g", m->buckets[i]);
                        } else {
                                snprintf(le, sizeof(le), "+Inf");
                        }
                        cum += s->counts[i];
                        fprintf(f, "%s_bucket", m->name);
                        put_labels(f, m, s, le);
                        fprintf(f, " %llu\n", (unsigned long long)cum);
                }
                fprintf(f, "%s_sum", m->name);
                put_labels(f, m, s, NULL);
                fputc(' ', f);
                put_double(f, s->sum);
                fprintf(f, "\n%s_count", m->name);
                put_labels(f, m, s, NULL);
                fprintf(f, " %llu\n", (unsigned long long)s->count);
        }
        pthread_mutex_unlock(&m->lock);
        free(all);
}

canopy_err canopy_metrics_render(canopy_metrics *reg, FILE *f) {
        if (!reg || !f)
                return CANOPY_ERR_INVALID_ARG;
        canopy_metric *fams[METRICS_FAMILIES_MAX];
        pthread_mutex_lock(&reg->lock);
        size_t n = reg->nfams;
        memcpy(fams, reg->fams, n * sizeof(*fams));
        pthread_mutex_unlock(&reg->lock);
        qsort(fams, n, sizeof(*fams), cmp_family);
        for (size_t i = 0; i < n; i++)
                render_family(f, fams[i]);
        return ferror(f) ? CANOPY_ERR_IO : CANOPY_OK;
}

canopy_err canopy_metrics_render_buf(canopy_metrics *reg, char **ret_buf, size_t *ret_len) {
        if (!reg || !ret_buf)
                return CANOPY_ERR_INVALID_ARG;
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return CANOPY_ERR_NOMEM;
        canopy_err err = canopy_metrics_render(reg, f);
        if (fclose(f) != 0 && !err)
                err = CANOPY_ERR_NOMEM;
        if (err) {
                free(buf);
                return err;
        }
        *ret_buf = buf;
        if (ret_len)
                *ret_len = len;
        return CANOPY_OK;
}
