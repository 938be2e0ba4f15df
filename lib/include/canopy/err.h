/* canopy/err.h: error codes, one table with name, text and class.
 *
 * Codes are append-only and never renumbered (they appear in logs, in
 * dead letters and in ExportRecords). The class decides what the caller does:
 *   RETRIABLE  back off and try again; do not commit the offset;
 *   PERMANENT  this one input is bad: dead-letter it with the reason, commit;
 *   FATAL      stop the process with a non-zero exit.
 */
#ifndef CANOPY_ERR_H
#define CANOPY_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum canopy_err_class {
        CANOPY_ERRCLASS_NONE = 0,
        CANOPY_ERRCLASS_RETRIABLE,
        CANOPY_ERRCLASS_PERMANENT,
        CANOPY_ERRCLASS_FATAL,
} canopy_err_class;

/* X(code, value, name, class, text) */
#define CANOPY_ERR_TABLE(X)                                                                 \
        X(CANOPY_OK, 0, "OK", NONE, "success")                                              \
        X(CANOPY_ERR_NOMEM, 1, "NOMEM", FATAL, "out of memory")                             \
        X(CANOPY_ERR_INVALID_ARG, 2, "INVALID_ARG", FATAL, "invalid argument (programmer error)") \
        X(CANOPY_ERR_IO, 3, "IO", RETRIABLE, "input/output error")                          \
        X(CANOPY_ERR_TIMEOUT, 4, "TIMEOUT", RETRIABLE, "operation timed out")               \
        X(CANOPY_ERR_NOT_FOUND, 5, "NOT_FOUND", PERMANENT, "not found")                     \
        X(CANOPY_ERR_LIMIT, 6, "LIMIT", PERMANENT, "a size or count limit was exceeded")    \
        X(CANOPY_ERR_CONFIG, 7, "CONFIG", FATAL, "invalid configuration")                   \
        X(CANOPY_ERR_CONFIG_UNKNOWN_KEY, 8, "CONFIG_UNKNOWN_KEY", FATAL, "unknown configuration key") \
        X(CANOPY_ERR_CONFIG_TYPE, 9, "CONFIG_TYPE", FATAL, "configuration value has the wrong type") \
        X(CANOPY_ERR_CONFIG_RANGE, 10, "CONFIG_RANGE", FATAL, "configuration value out of bounds") \
        X(CANOPY_ERR_CONFIG_SYNTAX, 11, "CONFIG_SYNTAX", FATAL, "configuration file is not valid YAML") \
        X(CANOPY_ERR_CONFIG_MISSING, 12, "CONFIG_MISSING", FATAL, "required configuration key missing") \
        X(CANOPY_ERR_DECODE, 20, "DECODE", PERMANENT, "event could not be decoded")         \
        X(CANOPY_ERR_UNKNOWN_SCHEMA, 21, "UNKNOWN_SCHEMA", PERMANENT, "unknown writer schema fingerprint") \
        X(CANOPY_ERR_TRUNCATED, 22, "TRUNCATED", PERMANENT, "event is truncated")           \
        X(CANOPY_ERR_TOO_LARGE, 23, "TOO_LARGE", PERMANENT, "event exceeds the size cap")   \
        X(CANOPY_ERR_TOO_MANY_VALUES, 24, "TOO_MANY_VALUES", PERMANENT, "attribute has more values than the cap") \
        X(CANOPY_ERR_ENCODE, 25, "ENCODE", PERMANENT, "event could not be encoded")         \
        X(CANOPY_ERR_KAFKA, 30, "KAFKA", RETRIABLE, "Kafka error")                          \
        X(CANOPY_ERR_KAFKA_FATAL, 31, "KAFKA_FATAL", FATAL, "fatal Kafka error")            \
        X(CANOPY_ERR_KAFKA_UNREACHABLE, 32, "KAFKA_UNREACHABLE", FATAL, "Kafka brokers unreachable") \
        X(CANOPY_ERR_REDIS, 40, "REDIS", RETRIABLE, "Redis error")                          \
        X(CANOPY_ERR_REDIS_UNREACHABLE, 41, "REDIS_UNREACHABLE", RETRIABLE, "Redis unreachable") \
        X(CANOPY_ERR_CONFLICT, 42, "CONFLICT", RETRIABLE, "concurrent update, retry")       \
        X(CANOPY_ERR_LDAP, 50, "LDAP", RETRIABLE, "LDAP error")                             \
        X(CANOPY_ERR_LDAP_BIND, 51, "LDAP_BIND", FATAL, "LDAP bind failed")                 \
        X(CANOPY_ERR_LDAP_PRIVILEGED, 52, "LDAP_PRIVILEGED", FATAL, "connector account is privileged") \
        X(CANOPY_ERR_LDAP_RIGHTS, 53, "LDAP_RIGHTS", FATAL, "connector account lacks a required right") \
        X(CANOPY_ERR_LDAP_COOKIE, 54, "LDAP_COOKIE", RETRIABLE, "sync cookie no longer valid, full scan needed") \
        X(CANOPY_ERR_LDAP_INSECURE, 55, "LDAP_INSECURE", FATAL, "plain LDAP refused without allow_insecure") \
        X(CANOPY_ERR_HTTP, 60, "HTTP", RETRIABLE, "HTTP transport error")                   \
        X(CANOPY_ERR_GRAPH_THROTTLED, 61, "GRAPH_THROTTLED", RETRIABLE, "Graph throttled the request") \
        X(CANOPY_ERR_GRAPH_UNAVAILABLE, 62, "GRAPH_UNAVAILABLE", RETRIABLE, "Graph unavailable (5xx)") \
        X(CANOPY_ERR_GRAPH_AUTH, 63, "GRAPH_AUTH", FATAL, "Graph credentials rejected (401/403)") \
        X(CANOPY_ERR_GRAPH_CONFLICT, 64, "GRAPH_CONFLICT", PERMANENT, "Graph ObjectConflict (duplicate value)") \
        X(CANOPY_ERR_GRAPH_BAD_REQUEST, 65, "GRAPH_BAD_REQUEST", PERMANENT, "Graph rejected the request") \
        X(CANOPY_ERR_GRAPH_NOT_FOUND, 66, "GRAPH_NOT_FOUND", PERMANENT, "Graph object not found") \
        X(CANOPY_ERR_GRAPH_INSECURE, 67, "GRAPH_INSECURE", FATAL, "plain HTTP to Graph refused without allow_insecure") \
        X(CANOPY_ERR_GRAPH_BUDGET, 68, "GRAPH_BUDGET", RETRIABLE, "shared Graph write budget exhausted") \
        X(CANOPY_ERR_RULES_SYNTAX, 70, "RULES_SYNTAX", FATAL, "rules file syntax error")    \
        X(CANOPY_ERR_RULES_SEMANTIC, 71, "RULES_SEMANTIC", FATAL, "rules file semantic error") \
        X(CANOPY_ERR_EXPR_EVAL, 72, "EXPR_EVAL", PERMANENT, "expression evaluation failed") \
        X(CANOPY_ERR_EXPR_SKIP, 73, "EXPR_SKIP", NONE, "flow skipped (IgnoreFlowIfNullOrEmpty)") \
        X(CANOPY_ERR_QUARANTINED, 80, "QUARANTINED", RETRIABLE, "pipeline is quarantined")  \
        X(CANOPY_ERR_DELETE_HELD, 81, "DELETE_HELD", RETRIABLE, "delete held by the deletion threshold") \
        X(CANOPY_ERR_LEASE_LOST, 82, "LEASE_LOST", FATAL, "leadership lease lost")          \
        X(CANOPY_ERR_SHUTDOWN, 90, "SHUTDOWN", NONE, "shutting down")                       \
        X(CANOPY_ERR_UNSUPPORTED, 91, "UNSUPPORTED", PERMANENT, "not supported") \
        X(CANOPY_ERR_GRAPH_PROTOCOL, 160, "GRAPH_PROTOCOL", RETRIABLE, "Graph answered something that is not valid (bad JSON, missing field)") \
        X(CANOPY_ERR_GRAPH_CERT, 161, "GRAPH_CERT", FATAL, "Graph client certificate or private key cannot be loaded") \
        X(CANOPY_ERR_GRAPH_TOO_LARGE, 162, "GRAPH_TOO_LARGE", PERMANENT, "Graph response exceeds the size cap") \
        X(CANOPY_ERR_GRAPH_TOKEN, 163, "GRAPH_TOKEN", RETRIABLE, "Graph token endpoint failed (not a credential rejection)")

typedef enum canopy_err {
#define CANOPY_ERR_ENUM_(code, val, name, cls, text) code = val,
        CANOPY_ERR_TABLE(CANOPY_ERR_ENUM_)
#undef CANOPY_ERR_ENUM_
} canopy_err;

/* Name of the code, e.g. "GRAPH_THROTTLED"; "UNKNOWN" for a bad code. */
const char *canopy_err_name(canopy_err err);
/* One-line human text. */
const char *canopy_err_text(canopy_err err);
/* Class, which decides retry / dead-letter / exit. */
canopy_err_class canopy_err_class_of(canopy_err err);
/* "retriable", "permanent", "fatal" or "none". */
const char *canopy_err_class_name(canopy_err_class cls);

#ifdef __cplusplus
}
#endif
#endif
