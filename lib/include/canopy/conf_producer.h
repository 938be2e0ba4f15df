/* canopy/conf_producer.h: configuration of canopy-producer-ldap (one file per
 * connector). The table is canopy_conf_producer (lib/src/conf_producer.c);
 * the reference is generated into docs/CONFIG.md. All strings and lists are
 * owned by the struct and freed by canopy_conf_free(&canopy_conf_producer, c).
 */
#ifndef CANOPY_CONF_PRODUCER_H
#define CANOPY_CONF_PRODUCER_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/config.h"
#include "canopy/kafka.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_producer_conf {
        char *connector;         /* connector.id: [A-Za-z0-9._-]{1,64} */
        char *mode;              /* dirsync | usn | syncrepl | full */
        char *producer_id;       /* producer.id; NULL = <hostname>-<pid> */

        char **ldap_uris;        /* ldap.uris: tried in order (failover) */
        char *bind_dn;           /* ldap.bind_dn */
        char *password;          /* ldap.password (secret; ldap.password_file; env CANOPY_LDAP_PASSWORD) */
        char *tls;               /* ldap.tls: ldaps | starttls | none */
        bool allow_insecure;     /* ldap.allow_insecure: permit tls=none */
        char *ca_file;           /* ldap.ca_file */
        bool tls_verify;         /* ldap.tls_verify (default true) */
        int64_t timeout_ms;      /* ldap.timeout */
        int64_t page_size;       /* ldap.page_size */
        char **base_dns;         /* ldap.base_dns */
        char *filter;            /* ldap.filter: extra filter ANDed with the class filter */
        char **attributes;       /* ldap.attributes: attributes to read */
        int64_t poll_interval_ms;/* ldap.poll_interval (dirsync, usn) */
        int64_t backoff_min_ms;  /* ldap.backoff_min */
        int64_t backoff_max_ms;  /* ldap.backoff_max */

        char **user_classes;     /* objects.user */
        char **group_classes;    /* objects.group */
        char **contact_classes;  /* objects.contact */

        char *anchor_attr;       /* anchor.attribute: auto | objectGUID | mS-DS-ConsistencyGuid | entryUUID | <attr> */
        bool write_consistency_guid; /* anchor.write_consistency_guid */

        bool member_delta;       /* members.delta: compute member deltas against Redis (syncrepl, usn) */
        char **delta_attrs;      /* members.attributes */

        bool refuse_privileged;  /* security.refuse_privileged (AD) */

        canopy_kafka_conf kafka; /* kafka.* */
        int64_t flush_every;     /* checkpoint.every: events per checkpoint during bulk reads */

        char *redis_host;        /* redis.host */
        int64_t redis_port;      /* redis.port */
        char *redis_password;    /* redis.password (secret) */
        char *redis_prefix;      /* redis.prefix */
        int64_t lease_ttl_ms;    /* lease.ttl */

        char *metrics_listen;    /* metrics.listen: "127.0.0.1:9464"; empty = off */
        char *log_level;         /* log.level */
} canopy_producer_conf;

extern const canopy_conf_table canopy_conf_producer;

#ifdef __cplusplus
}
#endif
#endif
