/* canopy/log.h: JSON-lines logging.
 *
 * One JSON object per line on stderr (or a file), with the fixed keys
 * ts, level, svc, mod, msg and, when set, the context keys connector, anchor,
 * topic, partition, offset. Library modules return errors; the main loop logs
 * each error once.
 *
 * Secrets: every value registered with canopy_log_secret() is replaced by
 * "[REDACTED]" wherever it would appear in a log line (message or context),
 * so that a secret that slips into an error text still never reaches a log.
 * The configuration module registers every value whose key is marked secret.
 */
#ifndef CANOPY_LOG_H
#define CANOPY_LOG_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum canopy_log_level {
        CANOPY_LOG_DEBUG = 0,
        CANOPY_LOG_INFO,
        CANOPY_LOG_WARN,
        CANOPY_LOG_ERROR,
        CANOPY_LOG_FATAL,
} canopy_log_level;

/* Context of a log line. All pointers borrowed; NULL / -1 means absent. */
typedef struct canopy_log_ctx {
        const char *connector;
        const char *anchor; /* printable form (hex or base64) */
        const char *topic;
        int32_t partition;  /* -1 when absent */
        int64_t offset;     /* -1 when absent */
} canopy_log_ctx;

#define CANOPY_LOG_CTX_NONE {NULL, NULL, NULL, -1, -1}

/* Set the service name (svc key), e.g. "worker". (borrowed; must outlive logging) */
void canopy_log_init(const char *svc);
/* Minimum level printed. Default INFO; env CANOPY_LOG_LEVEL=debug|info|warn|error. */
void canopy_log_set_level(canopy_log_level lvl);
/* Comma-separated modules whose debug lines are printed even above DEBUG,
 * e.g. "kafka,graph"; "*" for all. Env CANOPY_LOG_DEBUG. (copied) */
void canopy_log_set_debug_modules(const char *csv);
/* Redirect output (default stderr). (borrowed) */
void canopy_log_set_output(FILE *f);
/* Register a secret value that must never appear in a log line. (copied)
 * Values shorter than 4 bytes are ignored (they would redact ordinary text). */
void canopy_log_secret(const char *value);
/* Parse "debug", "info", ...; returns -1 on unknown text. */
int canopy_log_level_parse(const char *s);

/* Log one line. ctx may be NULL. Thread-safe (one write per line). */
void canopy_log(canopy_log_level lvl, const char *mod, const canopy_log_ctx *ctx, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
void canopy_logv(canopy_log_level lvl, const char *mod, const canopy_log_ctx *ctx, const char *fmt, va_list ap);

/* Whether a debug line of module mod would be printed (to skip costly formatting). */
int canopy_log_enabled(canopy_log_level lvl, const char *mod);

#define CANOPY_DEBUG(mod, ...) canopy_log(CANOPY_LOG_DEBUG, mod, NULL, __VA_ARGS__)
#define CANOPY_INFO(mod, ...) canopy_log(CANOPY_LOG_INFO, mod, NULL, __VA_ARGS__)
#define CANOPY_WARN(mod, ...) canopy_log(CANOPY_LOG_WARN, mod, NULL, __VA_ARGS__)
#define CANOPY_ERROR(mod, ...) canopy_log(CANOPY_LOG_ERROR, mod, NULL, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
