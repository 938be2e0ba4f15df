/* canopy/config.h: table-driven configuration.
 *
 * Each service describes its settings in one table of canopy_conf_def. The
 * same table drives the YAML parser, defaults, bounds, environment overrides,
 * `--set key=value` overrides, secret handling and the generated reference
 * docs/CONFIG.md.
 *
 * Keys are dotted paths that mirror the YAML nesting: `kafka.brokers` is
 *     kafka:
 *       brokers: "127.0.0.1:9092"
 * Values are stored through `offset` into the service's own struct:
 *   STR, SECRET -> char *        (owned by the struct; freed by canopy_conf_free)
 *   INT         -> int64_t       (bounds min..max)
 *   DOUBLE      -> double        (bounds min..max)
 *   BOOL        -> bool
 *   LIST        -> char **       (NULL-terminated list of strings, owned)
 *   DURATION    -> int64_t ms    (YAML "250ms", "5s", "2m", "1h" or a number of ms)
 * A SECRET key `x.y` may instead be given as `x.y_file: /path` (the file's
 * content, trailing newline stripped) or through its env variable; its value
 * is registered with canopy_log_secret() and never printed.
 *
 * Precedence, lowest to highest: default, YAML file, environment, --set.
 * Errors name file:line:column (or "env NAME" / "--set") and what to do.
 */
#ifndef CANOPY_CONFIG_H
#define CANOPY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "canopy/err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum canopy_conf_type {
        CANOPY_CT_STR = 0,
        CANOPY_CT_SECRET,
        CANOPY_CT_INT,
        CANOPY_CT_DOUBLE,
        CANOPY_CT_BOOL,
        CANOPY_CT_LIST,
        CANOPY_CT_DURATION,
        CANOPY_CT_ENUM, /* char *, one of the '|'-separated words in `choices` */
} canopy_conf_type;

#define CANOPY_CONF_REQUIRED 0x1u

typedef struct canopy_conf_def {
        const char *key;     /* dotted path */
        canopy_conf_type type;
        const char *defval;  /* default as text; NULL = none */
        double min, max;     /* bounds for INT/DOUBLE/DURATION(ms); ignored when min > max */
        unsigned flags;      /* CANOPY_CONF_* */
        const char *env;     /* environment override, e.g. "CANOPY_GRAPH_CLIENT_SECRET"; NULL = none */
        const char *choices; /* ENUM: "a|b|c" */
        const char *doc;     /* one or two sentences for docs/CONFIG.md */
        size_t offset;       /* offsetof(service struct, field) */
} canopy_conf_def;

typedef struct canopy_conf_table {
        const char *service; /* "producer-ldap", "worker", ... */
        const char *doc;     /* paragraph describing the service's file */
        const canopy_conf_def *defs;
        size_t ndefs;
        size_t size;         /* sizeof the service struct */
} canopy_conf_table;

/* Load config into `out` (a zeroed struct of table->size bytes).
 * path may be NULL (defaults + env + sets only). sets: "key=value" strings.
 * On error returns CANOPY_ERR_CONFIG_* and writes a message such as
 *   "worker.yaml:12:5: unknown key 'kafka.brokrs' (did you mean 'kafka.brokers'?)"
 * into errbuf. On error `out` is freed and zeroed. */
canopy_err canopy_conf_load(const canopy_conf_table *t, void *out, const char *path,
                            const char *const *sets, size_t nsets, char *errbuf, size_t errlen);

/* Free every owned value in `out`. NULL allowed. */
void canopy_conf_free(const canopy_conf_table *t, void *out);

/* Write the Markdown reference for the given tables (docs/CONFIG.md). */
canopy_err canopy_conf_write_doc(FILE *f, const canopy_conf_table *const *tables, size_t ntables);

/* Print the effective config as YAML, secrets shown as "[REDACTED]". */
void canopy_conf_dump(FILE *f, const canopy_conf_table *t, const void *cfg);

/* All service tables known to libcanopy, NULL-terminated (for the doc generator). */
extern const canopy_conf_table *const canopy_conf_all_tables[];

#ifdef __cplusplus
}
#endif
#endif
