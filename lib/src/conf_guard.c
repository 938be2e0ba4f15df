/* conf_guard.c: the configuration table of canopy-guard. */
#include <stddef.h>

#include "canopy/conf_guard.h"

#define G(f) offsetof(canopy_guard_conf, f)
#define NOB 0, -1

static const canopy_conf_def defs[] = {
    {"guard.enabled", CANOPY_CT_BOOL, "true", NOB, 0, NULL, NULL,
     "The deletion threshold is enforced. Turning it off is logged at WARN and written to the audit trail; "
     "there is no silent off switch.",
     G(enabled)},
    {"guard.threshold.count", CANOPY_CT_INT, "500", 1, 10000000, 0, NULL, NULL,
     "Deletes allowed in one window (Entra Connect's and cloud sync's default: 500). The delete that would "
     "exceed it is held, with every one after it, and the pipeline is quarantined.",
     G(threshold_count)},
    {"guard.threshold.percent", CANOPY_CT_DOUBLE, "0", 0, 100, 0, NULL, NULL,
     "When above 0, the limit is this percentage of synced objects instead of the count (at least 1).",
     G(threshold_percent)},
    {"guard.window_mode", CANOPY_CT_ENUM, "rolling", NOB, 0, NULL, "rolling|full-scan",
     "What one window is. rolling: the last guard.window. full-scan: from the start of a full scan (scans "
     "that overlap share one) to the start of the next, as Entra Connect counts per run; the deletes the scan "
     "finds and every delete streamed until the next scan count in it.",
     G(window_mode)},
    {"guard.window", CANOPY_CT_DURATION, "1h", 0, 604800000, 0, NULL, NULL,
     "Rolling window in which deletes are counted while streaming (guard.window_mode rolling); 0 counts until "
     "the next approve or reject.",
     G(window_ms)},
    {"guard.pause_all", CANOPY_CT_BOOL, "true", NOB, 0, NULL, NULL,
     "While quarantined, pause every export (as Entra Connect stops its export run). false: hold deletes "
     "only and let creates and updates go on.",
     G(pause_all)},
    {"guard.credentials_failing", CANOPY_CT_DURATION, "10m", 0, 86400000, 0, NULL, NULL,
     "Quarantine when Graph answers 401/403 for this long without a success (cloud sync's credential "
     "quarantine).",
     G(auth_quarantine_ms)},
    {"guard.ldap_failing", CANOPY_CT_DURATION, "10m", 0, 86400000, 0, NULL, NULL,
     "Quarantine when a connector's LDAP binds fail for this long.", G(ldap_quarantine_ms)},
    {"history.idle", CANOPY_CT_DURATION, "30s", 100, 86400000, 0, NULL, NULL,
     "A delta run-history window closes after this long without a change.", G(history_idle_ms)},
    {"history.max_window", CANOPY_CT_DURATION, "30m", 1000, 86400000, 0, NULL, NULL,
     "A run-history window closes after this long even when changes keep coming.", G(history_max_ms)},
    {"history.entries", CANOPY_CT_INT, "10000", 10, 1000000, 0, NULL, NULL,
     "Run-history entries kept in Redis (newest first).", G(history_entries)},
    {"admin.listen", CANOPY_CT_STR, "127.0.0.1:9108", NOB, 0, "CANOPY_ADMIN_LISTEN", NULL,
     "Address of the admin API and /metrics, host:port (port 0: pick a free one and log it).",
     G(admin_listen)},
    {"admin.tokens_file", CANOPY_CT_STR, NULL, NOB, CANOPY_CONF_REQUIRED, "CANOPY_ADMIN_TOKENS_FILE", NULL,
     "File of bearer tokens, one per line: TOKEN ROLE NAME, ROLE one of viewer (ADSyncBrowse), operator "
     "(ADSyncOperators), admin (ADSyncAdmins). Lines starting with # are comments.",
     G(admin_tokens_file)},
    {"admin.tls_cert", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL, "PEM certificate for HTTPS on the admin API.",
     G(admin_tls_cert)},
    {"admin.tls_key", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL, "PEM key of admin.tls_cert.", G(admin_tls_key)},
    {"notify.email.smtp_url", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL,
     "SMTP server, e.g. smtps://smtp.example.com:465 or smtp://127.0.0.1:2525; empty: no e-mail.",
     G(smtp_url)},
    {"notify.email.from", CANOPY_CT_STR, "canopy@localhost", NOB, 0, NULL, NULL, "Sender address.",
     G(smtp_from)},
    {"notify.email.to", CANOPY_CT_LIST, NULL, NOB, 0, NULL, NULL, "Recipients of quarantine notifications.",
     G(smtp_to)},
    {"notify.email.username", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL, "SMTP user name.", G(smtp_username)},
    {"notify.email.password", CANOPY_CT_SECRET, NULL, NOB, 0, "CANOPY_SMTP_PASSWORD", NULL,
     "SMTP password (secret; or notify.email.password_file).", G(smtp_password)},
    {"notify.email.ca_file", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL, "CA file for SMTP over TLS.",
     G(smtp_ca_file)},
    {"notify.webhook.url", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL,
     "URL that receives a JSON POST per quarantine; empty: none.", G(webhook_url)},
    {"notify.webhook.ca_file", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL, "CA file for an https webhook.",
     G(webhook_ca_file)},
    {"notify.sample", CANOPY_CT_INT, "20", 0, 1000, 0, NULL, NULL,
     "Held objects listed in a notification.", G(sample_size)},

    CANOPY_KAFKA_CONF_DEFS(canopy_guard_conf, kafka),

    {"redis.host", CANOPY_CT_STR, "127.0.0.1", NOB, 0, "CANOPY_REDIS_HOST", NULL, "Redis host.", G(redis_host)},
    {"redis.port", CANOPY_CT_INT, "6379", 1, 65535, 0, "CANOPY_REDIS_PORT", NULL, "Redis port.", G(redis_port)},
    {"redis.password", CANOPY_CT_SECRET, NULL, NOB, 0, "CANOPY_REDIS_PASSWORD", NULL,
     "Redis password (secret; or redis.password_file).", G(redis_password)},
    {"redis.prefix", CANOPY_CT_STR, "canopy:", NOB, 0, "CANOPY_REDIS_PREFIX", NULL,
     "Prefix of every Redis key; must match the workers'.", G(redis_prefix)},
    {"redis.timeout", CANOPY_CT_DURATION, "5s", 100, 60000, 0, NULL, NULL, "Timeout of one Redis command.",
     G(redis_timeout_ms)},
};

const canopy_conf_table canopy_conf_guard = {
    "guard",
    "canopy-guard: the deletion threshold, quarantine, notifications, run history and the admin API. One "
    "guard runs per deployment; the threshold itself is enforced atomically in Redis by the workers, so it "
    "holds even while the guard restarts.",
    defs,
    sizeof(defs) / sizeof(defs[0]),
    sizeof(canopy_guard_conf),
};
