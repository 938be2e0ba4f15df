/* canopy/conf_guard.h: configuration of canopy-guard. The table
 * (lib/src/conf_guard.c) is documented in docs/CONFIG.md. */
#ifndef CANOPY_CONF_GUARD_H
#define CANOPY_CONF_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/config.h"
#include "canopy/kafka.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_guard_conf {
        bool enabled;                /* guard.enabled */
        int64_t threshold_count;     /* guard.threshold.count */
        double threshold_percent;    /* guard.threshold.percent */
        char *window_mode;           /* guard.window_mode: rolling | full-scan */
        int64_t window_ms;           /* guard.window */
        bool pause_all;              /* guard.pause_all */
        int64_t auth_quarantine_ms;  /* guard.credentials_failing */
        int64_t ldap_quarantine_ms;  /* guard.ldap_failing */
        int64_t history_idle_ms;     /* history.idle */
        int64_t history_max_ms;      /* history.max_window */
        int64_t history_entries;     /* history.entries */

        char *admin_listen;          /* admin.listen host:port */
        char *admin_tokens_file;     /* admin.tokens_file */
        char *admin_tls_cert;        /* admin.tls_cert */
        char *admin_tls_key;         /* admin.tls_key */

        char *smtp_url;              /* notify.email.smtp_url */
        char *smtp_from;             /* notify.email.from */
        char **smtp_to;              /* notify.email.to */
        char *smtp_username;         /* notify.email.username */
        char *smtp_password;         /* notify.email.password (secret) */
        char *smtp_ca_file;          /* notify.email.ca_file */
        char *webhook_url;           /* notify.webhook.url */
        char *webhook_ca_file;       /* notify.webhook.ca_file */
        int64_t sample_size;         /* notify.sample */

        canopy_kafka_conf kafka;     /* kafka.* */

        char *redis_host;
        int64_t redis_port;
        char *redis_password;
        char *redis_prefix;
        int64_t redis_timeout_ms;
} canopy_guard_conf;

extern const canopy_conf_table canopy_conf_guard;

#ifdef __cplusplus
}
#endif
#endif
