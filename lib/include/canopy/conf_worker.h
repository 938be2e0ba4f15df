/* canopy/conf_worker.h: configuration of canopy-worker. The table is
 * canopy_conf_worker (lib/src/conf_worker.c); the reference is generated
 * into docs/CONFIG.md. Strings and lists are owned by the struct and freed by
 * canopy_conf_free(&canopy_conf_worker, c). */
#ifndef CANOPY_CONF_WORKER_H
#define CANOPY_CONF_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/config.h"
#include "canopy/kafka.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_worker_conf {
        char *stages;              /* both | join | export */
        char *worker_id;           /* worker.id; NULL = <hostname>-<pid> */
        char *rules_file;          /* rules.file */
        bool staging;              /* export.staging */
        char *join_group;          /* join.group_id */
        char *export_group;        /* export.group_id */
        int64_t join_batch;        /* join.batch: events per offset commit */
        int64_t export_batch;      /* export.batch: mv events handled together */
        int64_t export_threads;    /* export.threads: export consumers in this process */
        int64_t poll_ms;           /* worker.poll */
        int64_t fresh_window_ms;   /* export.fresh_window: a 404 on an object created this recently is lag */

        canopy_kafka_conf kafka;   /* kafka.* */

        char *redis_host;          /* redis.host */
        int64_t redis_port;        /* redis.port */
        char *redis_password;      /* redis.password (secret) */
        char *redis_prefix;        /* redis.prefix */
        int64_t redis_timeout_ms;  /* redis.timeout */

        char *graph_tenant;        /* graph.tenant */
        char *graph_client_id;     /* graph.client_id */
        char *graph_secret;        /* graph.client_secret (secret; graph.client_secret_file) */
        char *graph_cert_file;     /* graph.cert_file */
        char *graph_key_file;      /* graph.key_file */
        char *graph_cert_alg;      /* graph.cert_alg: RS256 | PS256 */
        char *graph_cert_thumbprint; /* graph.cert_thumbprint: x5t | x5t#S256 */
        char *graph_cloud;         /* graph.cloud: global | usgov | china */
        char *graph_authority_url; /* graph.authority_url override */
        char *graph_url;           /* graph.url override */
        char *graph_ca_file;       /* graph.ca_file */
        bool graph_allow_insecure; /* graph.allow_insecure */
        int64_t graph_budget;      /* graph.budget.writes */
        int64_t graph_budget_window_ms; /* graph.budget.window */
        int64_t graph_concurrency; /* graph.concurrency */

        char *metrics_listen;      /* metrics.listen: "127.0.0.1:9102"; empty = off */
} canopy_worker_conf;

extern const canopy_conf_table canopy_conf_worker;

#ifdef __cplusplus
}
#endif
#endif
