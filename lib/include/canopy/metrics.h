/* canopy/metrics.h: a small metrics registry rendered in the Prometheus text
 * exposition format (version 0.0.4).
 *
 * A registry holds families (a name, a help text, a type, label names); a
 * family holds one series per distinct tuple of label values. Counters only
 * go up, gauges are set or added to, histograms count observations into
 * cumulative buckets. Everything is thread-safe and usable without the HTTP
 * server (canopy_metrics_render writes the text anywhere).
 *
 *     canopy_metrics *reg = canopy_metrics_default();
 *     canopy_metric *sent = canopy_metrics_counter(reg, "canopy_events_sent_total",
 *                                                  "Events published.", "topic");
 *     canopy_metrics_add(sent, CANOPY_LABELS("changes"), 1);
 *     canopy_metric *lat = canopy_metrics_histogram(reg, "canopy_graph_seconds",
 *                                                   "Graph call latency.", NULL, NULL, 0);
 *     canopy_metrics_observe(lat, NULL, 0.042);
 *
 * Families live as long as their registry: the canopy_metric pointers are
 * borrowed from it and stay valid until canopy_metrics_free (never for the
 * default registry). Caps: 512 families per registry, 8 labels per family,
 * 10,000 series per family (further label tuples are dropped and counted in
 * canopy_metrics_dropped_series_total), label values up to 256 bytes.
 */
#ifndef CANOPY_METRICS_H
#define CANOPY_METRICS_H

#include <stddef.h>
#include <stdio.h>

#include "canopy/err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_metrics canopy_metrics; /* a registry */
typedef struct canopy_metric canopy_metric;   /* a family in a registry */

typedef enum canopy_metric_type {
        CANOPY_METRIC_COUNTER = 0,
        CANOPY_METRIC_GAUGE,
        CANOPY_METRIC_HISTOGRAM,
} canopy_metric_type;

/* Label values, in the order of the family's label names:
 * canopy_metrics_add(m, CANOPY_LABELS("changes", "3"), 1). */
#define CANOPY_LABELS(...) ((const char *const[]){__VA_ARGS__})

/* Default histogram buckets (seconds): 0.001 .. 10. */
extern const double canopy_metrics_default_buckets[];
extern const size_t canopy_metrics_default_nbuckets;

/* New empty registry (owned by the caller; free with canopy_metrics_free). NULL on ENOMEM. */
canopy_metrics *canopy_metrics_new(void);
/* Free a registry and all its families. NULL allowed. Never free the default. */
void canopy_metrics_free(canopy_metrics *reg);
/* The process-wide registry that services use and the HTTP server exposes by
 * default. Created on first use; lives until exit. */
canopy_metrics *canopy_metrics_default(void);

/* Register (or find) a family. name: [a-zA-Z_:][a-zA-Z0-9_:]*; help: one line
 * (copied); labels: comma-separated label names ("topic,partition"), NULL or
 * "" for none (copied). Registering the same name again with the same type
 * and labels returns the same family, so modules can register lazily;
 * a conflicting registration, a bad name or a full registry returns NULL.
 * The returned family is borrowed from the registry. */
canopy_metric *canopy_metrics_counter(canopy_metrics *reg, const char *name, const char *help, const char *labels);
canopy_metric *canopy_metrics_gauge(canopy_metrics *reg, const char *name, const char *help, const char *labels);
/* buckets: strictly increasing upper bounds (copied; +Inf is implicit);
 * NULL/0 for canopy_metrics_default_buckets. At most 64 buckets. */
canopy_metric *canopy_metrics_histogram(canopy_metrics *reg, const char *name, const char *help, const char *labels,
                                        const double *buckets, size_t nbuckets);

/* Update a series. lv: label values (borrowed, copied on first use), exactly
 * as many as the family has label names; NULL when it has none. A NULL
 * family is ignored, so a failed registration never crashes a caller.
 * add: counters (v >= 0, negative ignored) and gauges; set: gauges;
 * observe: histograms. A call of the wrong kind for the family is ignored. */
void canopy_metrics_add(canopy_metric *m, const char *const *lv, double v);
void canopy_metrics_set(canopy_metric *m, const char *const *lv, double v);
void canopy_metrics_observe(canopy_metric *m, const char *const *lv, double v);
/* Shorthand for canopy_metrics_add(m, lv, 1). */
void canopy_metrics_inc(canopy_metric *m, const char *const *lv);

/* Current value of a series: counter/gauge value, histogram observation
 * count; 0 when the series does not exist. For tests and self-checks. */
double canopy_metrics_value(canopy_metric *m, const char *const *lv);

/* Write every family in the Prometheus text format, families sorted by
 * name and series by label values. Returns CANOPY_ERR_IO on a write error. */
canopy_err canopy_metrics_render(canopy_metrics *reg, FILE *f);
/* Same, into a malloc'ed NUL-terminated buffer (owned by the caller). */
canopy_err canopy_metrics_render_buf(canopy_metrics *reg, char **ret_buf, size_t *ret_len);

#ifdef __cplusplus
}
#endif
#endif
