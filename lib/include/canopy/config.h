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
 *   ENUM        -> char *        (one of `choices`)
 * Bounds apply to INT, DOUBLE and DURATION only when min < max (a table that
 * leaves both at 0 has no bounds).
 * LIST values are a YAML sequence, or a comma-separated string (the only form
 * in the environment and --set). At most 4096 items.
 * A SECRET key `x.y` may instead be given as `x.y_file: /path` (the file's
 * content, trailing newline stripped; a relative path is relative to the YAML
 * file), through its env variable, or through `<ENV>_FILE`; its value (and its
 * JSON-escaped form) is registered with canopy_log_secret() and never printed:
 * canopy_conf_dump shows "[REDACTED]" and error messages never quote it.
 *
 * Precedence, lowest to highest: default, YAML file, environment, --set.
 * Errors name file:line:column (or "env NAME" / "--set KEY") and what to do.
 * Caps: file 1 MiB, value 64 KiB, nesting depth 16.
 *
 * Registering a table: define `const canopy_conf_table canopy_conf_<name>` in
 * lib/src/conf_<name>.c and add the line `X(<name>) \` to lib/src/conf_tables.c;
 * then run `make docs` to regenerate docs/CONFIG.md (a unit test fails when it
 * is stale).
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
        double min, max;     /* bounds for INT/DOUBLE/DURATION(ms); applied only when min < max */
        unsigned flags;      /* CANOPY_CONF_* */
        const char *env;     /* environment override, e.g. "CANOPY_GRAPH_CLIENT_SECRET"; NULL = none */
        const char *choices; /* ENUM: "a|b|c"; STR: allowed characters ("A-Za-z0-9._-"), min/max its length */
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

/* Check a table for programmer errors: key syntax, duplicate keys, a key that
 * is both a value and a section, defaults that do not parse or are out of
 * bounds, ENUM without choices, REQUIRED or SECRET keys with a default,
 * offsets beyond `size`. Returns CANOPY_ERR_CONFIG with a message in errbuf.
 * canopy-confdoc and the unit tests run it on every registered table. */
canopy_err canopy_conf_check(const canopy_conf_table *t, char *errbuf, size_t errlen);

/* Free every owned value in `out`. NULL allowed. */
void canopy_conf_free(const canopy_conf_table *t, void *out);

/* Write the Markdown reference for the given tables (docs/CONFIG.md).
 * Deterministic: the same tables always give the same bytes. */
canopy_err canopy_conf_write_doc(FILE *f, const canopy_conf_table *const *tables, size_t ntables);

/* Write a commented reference YAML file for one service: every key with its
 * doc, type, bounds and env variable, set to its default; keys without a
 * default are commented out. The output loads with canopy_conf_load. */
canopy_err canopy_conf_write_example(FILE *f, const canopy_conf_table *t);

/* Print the effective config as YAML, secrets shown as "[REDACTED]". */
void canopy_conf_dump(FILE *f, const canopy_conf_table *t, const void *cfg);

/* All service tables known to libcanopy, NULL-terminated (for the doc generator). */
extern const canopy_conf_table *const canopy_conf_all_tables[];

/* Find a table of canopy_conf_all_tables by service name; NULL if none. */
const canopy_conf_table *canopy_conf_find_table(const char *service);

#ifdef __cplusplus
}
#endif
#endif
