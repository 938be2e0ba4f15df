/* conf_worker.c: the configuration table of canopy-worker. */
#include <stddef.h>

#include "canopy/conf_worker.h"

#define W(f) offsetof(canopy_worker_conf, f)
#define NOB 0, -1 /* no bounds */

static const canopy_conf_def defs[] = {
    {"worker.stages", CANOPY_CT_ENUM, "both", NOB, 0, "CANOPY_WORKER_STAGES", "both|join|export",
     "Stages this process runs: join (consumes changes, publishes mv), export (consumes mv, calls Graph, "
     "publishes exports) or both. Any number of workers may run; Kafka partitions spread the load.",
     W(stages)},
    {"worker.id", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_WORKER_ID", NULL,
     "Worker id in logs and ExportRecords; default <hostname>-<pid>.", W(worker_id)},
    {"worker.poll", CANOPY_CT_DURATION, "200ms", 1, 10000, 0, NULL, NULL,
     "Longest wait for a Kafka message before housekeeping (commits, metrics).", W(poll_ms)},
    {"rules.file", CANOPY_CT_STR, NULL, NOB, CANOPY_CONF_REQUIRED, "CANOPY_RULES_FILE", NULL,
     "Sync rules file (YAML, docs/RULES.md): connectors, scoping, joins, attribute flows, precedence.",
     W(rules_file)},
    {"join.group_id", CANOPY_CT_STR, "canopy-join", NOB, 0, "CANOPY_JOIN_GROUP", NULL,
     "Kafka consumer group of the join stage (every worker of a deployment uses the same).", W(join_group)},
    {"join.batch", CANOPY_CT_INT, "500", 1, 100000, 0, NULL, NULL,
     "Change events handled between two offset commits (offsets are committed only after the effect is in "
     "Redis and the mv events are acknowledged by Kafka).",
     W(join_batch)},
    {"export.group_id", CANOPY_CT_STR, "canopy-export", NOB, 0, "CANOPY_EXPORT_GROUP", NULL,
     "Kafka consumer group of the export stage.", W(export_group)},
    {"export.batch", CANOPY_CT_INT, "100", 1, 10000, 0, NULL, NULL,
     "mv events handled between two offset commits.", W(export_batch)},
    {"export.threads", CANOPY_CT_INT, "1", 1, 64, 0, "CANOPY_EXPORT_THREADS", NULL,
     "Export threads of this process. Each is one consumer of export.group_id with its own Redis and Graph "
     "connections, so this many mv events are exported at once (the partitions of mv spread over them; an "
     "object's events stay in order in its partition). Worth raising where Graph round trips set the pace "
     "(tens of ms to a real tenant); where CPU does, as on a small host against the emulator, it adds Redis "
     "work and no speed (bench/pipeline/FINDINGS.md).",
     W(export_threads)},
    {"export.fresh_window", CANOPY_CT_DURATION, "5m", 0, 86400000, 0, NULL, NULL,
     "An object this stage created (or hard-matched) less than this long ago may not have reached every Graph "
     "replica yet: a 404 when deleting it is retried with the Graph client's consistency backoff (about 30 s "
     "at most) before it counts as already gone. Older objects are deleted without the wait. 0 = never wait.",
     W(fresh_window_ms)},
    {"export.staging", CANOPY_CT_BOOL, "false", NOB, 0, "CANOPY_STAGING", NULL,
     "Staging mode: compute and record (exports topic, Redis) what would be exported, call nothing. Turning "
     "it off exports the pending difference.",
     W(staging)},

    CANOPY_KAFKA_CONF_DEFS(canopy_worker_conf, kafka),

    {"redis.host", CANOPY_CT_STR, "127.0.0.1", NOB, 0, "CANOPY_REDIS_HOST", NULL, "Redis host.", W(redis_host)},
    {"redis.port", CANOPY_CT_INT, "6379", 1, 65535, 0, "CANOPY_REDIS_PORT", NULL, "Redis port.", W(redis_port)},
    {"redis.password", CANOPY_CT_SECRET, NULL, NOB, 0, "CANOPY_REDIS_PASSWORD", NULL,
     "Redis password (secret; or redis.password_file).", W(redis_password)},
    {"redis.prefix", CANOPY_CT_STR, "canopy:", NOB, 0, "CANOPY_REDIS_PREFIX", NULL,
     "Prefix of every Redis key (docs/STATE.md).", W(redis_prefix)},
    {"redis.timeout", CANOPY_CT_DURATION, "5s", 100, 60000, 0, NULL, NULL, "Timeout of one Redis command.",
     W(redis_timeout_ms)},

    {"graph.tenant", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_GRAPH_TENANT", NULL,
     "Entra tenant id or domain (required by the export stage).", W(graph_tenant)},
    {"graph.client_id", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_GRAPH_CLIENT_ID", NULL,
     "Application (client) id of the app registration.", W(graph_client_id)},
    {"graph.client_secret", CANOPY_CT_SECRET, NULL, NOB, 0, "CANOPY_GRAPH_CLIENT_SECRET", NULL,
     "Client secret (secret: prefer graph.client_secret_file or the environment).", W(graph_secret)},
    {"graph.cert_file", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL,
     "PEM certificate for certificate credentials (instead of a secret).", W(graph_cert_file)},
    {"graph.key_file", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL, "PEM private key of graph.cert_file.",
     W(graph_key_file)},
    {"graph.cert_alg", CANOPY_CT_ENUM, "RS256", NOB, 0, NULL, "RS256|PS256",
     "Signature of the client assertion made with graph.cert_file: RS256 (RSASSA-PKCS1-v1_5, the long-standing "
     "form) or PS256 (RSASSA-PSS, what Microsoft's current documentation recommends). Entra ID accepts both.",
     W(graph_cert_alg)},
    {"graph.cert_thumbprint", CANOPY_CT_ENUM, "x5t", NOB, 0, NULL, "x5t|x5t#S256",
     "Header naming the certificate in the client assertion: x5t (SHA-1 thumbprint, the long-standing form) "
     "or x5t#S256 (SHA-256 thumbprint, recommended with PS256). Entra ID accepts both.",
     W(graph_cert_thumbprint)},
    {"graph.cloud", CANOPY_CT_ENUM, "global", NOB, 0, NULL, "global|usgov|china", "National cloud.",
     W(graph_cloud)},
    {"graph.authority_url", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_GRAPH_AUTHORITY_URL", NULL,
     "Override of the token authority base URL (the emulator in tests).", W(graph_authority_url)},
    {"graph.url", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_GRAPH_URL", NULL,
     "Override of the Graph base URL (the emulator in tests).", W(graph_url)},
    {"graph.ca_file", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_GRAPH_CA_FILE", NULL,
     "Extra CA bundle for Graph TLS (tests).", W(graph_ca_file)},
    {"graph.allow_insecure", CANOPY_CT_BOOL, "false", NOB, 0, NULL, NULL,
     "Permit http:// Graph URLs (tests only).", W(graph_allow_insecure)},
    {"graph.budget.writes", CANOPY_CT_INT, "3000", 1, 1000000, 0, NULL, NULL,
     "Graph writes per window, shared by every worker of the tenant through Redis.", W(graph_budget)},
    {"graph.budget.window", CANOPY_CT_DURATION, "150s", 1000, 3600000, 0, NULL, NULL,
     "Window of the shared write budget.", W(graph_budget_window_ms)},
    {"graph.concurrency", CANOPY_CT_INT, "16", 1, 256, 0, NULL, NULL,
     "Graph requests in flight per worker (HTTP/2 multiplexing, $batch).", W(graph_concurrency)},

    {"metrics.listen", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_METRICS_LISTEN", NULL,
     "host:port of the Prometheus /metrics endpoint; unset = no endpoint.", W(metrics_listen)},
};

const canopy_conf_table canopy_conf_worker = {
    "worker",
    "canopy-worker: the stateless join and export stages. Any number of workers may run with the same file; "
    "each runs both stages unless worker.stages says otherwise.",
    defs,
    sizeof(defs) / sizeof(defs[0]),
    sizeof(canopy_worker_conf),
};
