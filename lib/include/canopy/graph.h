/* canopy/graph.h: Microsoft Graph client.
 *
 * One handle (`gc`) holds the configuration, the OAuth2 token cache, a libcurl
 * multi handle (HTTP/2 multiplexing, keep-alive) and the connection to the
 * shared write budget in Redis. Every call retries what Graph says is
 * retriable (429/503/504 with Retry-After, else exponential backoff with
 * jitter; eventual-consistency 404s on just-created objects), within the
 * configured caps, and maps the final outcome to a canopy_err.
 *
 * Threads: a handle is used by ONE thread at a time. Create one handle per
 * thread; handles share nothing but the Redis budget (and each caches its own
 * token). For throughput inside one thread use canopy_graph_run() (many
 * requests concurrently over HTTP/2) or canopy_graph_batch() (JSON $batch).
 *
 * JSON crosses this API as text (NUL-terminated UTF-8 strings); library
 * types (CURL, json_t, redisContext) never leave lib/src.
 *
 * Error details: functions that talk to Graph take an optional
 * `canopy_graph_error *ei` (may be NULL). On failure it is filled with what
 * Graph said (HTTP status, error code and message, request ids, details[],
 * the conflicting property and value of an ObjectConflict, the wait time of a
 * budget refusal). On success it is cleared. It holds no pointers: nothing to
 * free.
 *
 * Secrets (client secret, private key password, Redis password) are
 * registered with canopy_log_secret() by canopy_graph_new(). Access tokens
 * and client assertions are never logged (no headers or forms are logged).
 *
 * Docs: docs/GRAPH.md.
 */
#ifndef CANOPY_GRAPH_H
#define CANOPY_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct canopy_graph canopy_graph;

/* ---------------------------------------------------------------------- */
/* Configuration                                                           */

typedef enum canopy_graph_cloud {
        CANOPY_GRAPH_CLOUD_GLOBAL = 0, /* login.microsoftonline.com / graph.microsoft.com */
        CANOPY_GRAPH_CLOUD_USGOV,      /* login.microsoftonline.us / graph.microsoft.us */
        CANOPY_GRAPH_CLOUD_CHINA,      /* login.chinacloudapi.cn / microsoftgraph.chinacloudapi.cn */
} canopy_graph_cloud;

typedef enum canopy_graph_jwt_alg {
        CANOPY_GRAPH_JWT_RS256 = 0,
        CANOPY_GRAPH_JWT_PS256,
} canopy_graph_jwt_alg;

/* All strings borrowed during canopy_graph_new() only (the handle copies
 * them). Zero / NULL fields take the default given in brackets; call
 * canopy_graph_conf_init() first. */
typedef struct canopy_graph_conf {
        canopy_graph_cloud cloud;   /* [GLOBAL] */
        const char *authority_url;  /* override, e.g. "https://127.0.0.1:8443" (emulator) [by cloud] */
        const char *graph_url;      /* override, e.g. "https://127.0.0.1:8443" [by cloud]; "/v1.0" appended */
        const char *tenant;         /* tenant id or domain (required) */
        const char *client_id;      /* application (client) id (required) */
        /* Credential: a secret, or a certificate + private key (PEM). */
        const char *client_secret;  /* secret text (SECRET) */
        const char *cert_file;      /* PEM certificate (for the x5t / x5t#S256 header) */
        const char *key_file;       /* PEM private key (may be the same file as cert_file) */
        const char *key_password;   /* passphrase of key_file, NULL if none (SECRET) */
        canopy_graph_jwt_alg jwt_alg; /* [RS256] */
        bool jwt_x5t_sha256;        /* header x5t#S256 instead of x5t (SHA-1) [false] */
        const char *scope;          /* [<graph_url>/.default] */
        int token_margin_s;         /* renew the token this long before expiry [300, capped to lifetime/2] */

        /* Transport */
        const char *ca_file;        /* extra CA bundle (tests); TLS verification is always on */
        bool allow_insecure;        /* accept http:// URLs [false -> CANOPY_ERR_GRAPH_INSECURE] */
        int connect_timeout_ms;     /* [10000] */
        int request_timeout_ms;     /* per attempt [60000] */
        size_t max_response_bytes;  /* cap on one response body [16 MiB] */
        int max_concurrency;        /* requests in flight in canopy_graph_run() [16] */
        bool http1_only;            /* force HTTP/1.1 (default: HTTP/2 when the server offers it) */

        /* Retries (429/503/504, transport errors, eventual consistency) */
        int max_retries;            /* per request [8] */
        int64_t max_retry_ms;       /* total time spent retrying one request [120000] */
        int backoff_base_ms;        /* first backoff without Retry-After [500] */
        int backoff_max_ms;         /* cap of one backoff [30000] */
        int consistency_retries;    /* retries of 404 / Request_ResourceNotFound on fresh objects [6] */

        /* Shared write budget (Redis). Disabled when redis_host is NULL. */
        const char *redis_host;
        int redis_port;             /* [6379] */
        const char *redis_password; /* (SECRET) */
        int64_t budget_writes;      /* writes per window per app+tenant [3000] */
        int64_t budget_window_ms;   /* [150000] */
        int64_t budget_max_wait_ms; /* wait (sleep) for budget at most this long, then
                                     * CANOPY_ERR_GRAPH_BUDGET with ei->retry_after_ms [5000] */
        const char *budget_key;     /* Redis key [canopy:graph:budget:{<tenant>:<client_id>}] */
} canopy_graph_conf;

/* Fill *conf with the defaults above (all pointers NULL). */
void canopy_graph_conf_init(canopy_graph_conf *conf);

/* Parse "global" | "usgov" | "china" (case-insensitive). Returns
 * CANOPY_ERR_CONFIG on another word. */
canopy_err canopy_graph_cloud_parse(const char *s, canopy_graph_cloud *ret);

/* Create a client. Validates the configuration (CANOPY_ERR_CONFIG; http://
 * without allow_insecure -> CANOPY_ERR_GRAPH_INSECURE), loads the certificate
 * and key (CANOPY_ERR_GRAPH_CERT), connects to Redis when a budget is
 * configured. Does not fetch a token yet. *ret owned by the caller, free with
 * canopy_graph_free(). errbuf (may be NULL) receives a one-line reason. */
canopy_err canopy_graph_new(const canopy_graph_conf *conf, canopy_graph **ret, char *errbuf, size_t errlen);

/* Free the client. NULL allowed. */
void canopy_graph_free(canopy_graph *gc);

/* ---------------------------------------------------------------------- */
/* Errors                                                                  */

#define CANOPY_GRAPH_MAX_DETAILS 4

typedef struct canopy_graph_error {
        long http_status;            /* 0 when no HTTP answer (transport error) */
        char code[64];               /* error.code, e.g. "Request_BadRequest" */
        char message[512];           /* error.message (truncated) */
        char request_id[64];         /* innerError.request-id, else the request-id header */
        char client_request_id[64];  /* the UUID we sent */
        char date[40];               /* innerError.date */
        struct {
                char code[64];
                char target[64];
                char message[256];
        } details[CANOPY_GRAPH_MAX_DETAILS];
        int ndetails;
        /* ObjectConflict: which property and value collided (from details[] or
         * the message), e.g. "userPrincipalName", "a@contoso.com". The value
         * comes from the request body; for a collection (proxyAddresses)
         * Graph does not say which element collided, so it holds every
         * element sent, comma-separated. */
        char conflict_property[64];
        char conflict_value[256];
        int64_t retry_after_ms;      /* last Retry-After, or the budget wait (CANOPY_ERR_GRAPH_BUDGET) */
        int attempts;                /* HTTP attempts made */
} canopy_graph_error;

/* Clear *ei (NULL allowed). */
void canopy_graph_error_clear(canopy_graph_error *ei);

/* Parse Graph's error body {"error":{"code","message","innerError":{...},
 * "details":[...]}} into *ei (http_status is left as is). Fills the conflict
 * fields when code is ObjectConflict or a detail names a conflicting property.
 * Returns CANOPY_ERR_DECODE when body is not such an object (ei->message
 * then holds the start of the body). body borrowed, len bytes. */
canopy_err canopy_graph_error_parse(const char *body, size_t len, canopy_graph_error *ei);

/* Map an HTTP status and parsed error to a canopy_err (401/403 -> AUTH,
 * ObjectConflict -> CONFLICT, 404 -> NOT_FOUND, 429 -> THROTTLED,
 * 5xx -> UNAVAILABLE, other 4xx -> BAD_REQUEST). */
canopy_err canopy_graph_error_map(long http_status, const canopy_graph_error *ei);

/* Fetch a token now (or use the cached one while valid). Useful at start-up
 * to fail fast on bad credentials (CANOPY_ERR_GRAPH_AUTH). */
canopy_err canopy_graph_authenticate(canopy_graph *gc, canopy_graph_error *ei);

/* ---------------------------------------------------------------------- */
/* Helpers (pure, no network)                                              */

/* Parse a Retry-After value: integer seconds ("5"), decimal seconds ("0.25")
 * or an HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT", relative to now_epoch_ms).
 * *ret_ms >= 0 (a date in the past gives 0). Returns CANOPY_ERR_DECODE on
 * anything else. value borrowed. */
canopy_err canopy_graph_retry_after_parse(const char *value, int64_t now_epoch_ms, int64_t *ret_ms);

/* Write value as an OData string literal for a $filter: enclosed in single
 * quotes, quotes doubled, then percent-encoded for a URL query (everything
 * but unreserved characters). E.g. o'k -> %27o%27%27k%27. Returns
 * CANOPY_ERR_LIMIT when out (outlen bytes) is too small. */
canopy_err canopy_graph_odata_quote(const char *value, char *out, size_t outlen);

/* Compute a PATCH body with only what differs from `old` to `new` (two JSON
 * objects as text): changed or added properties with their new value,
 * removed properties as null. *ret_patch is NULL when nothing differs.
 * Arrays and objects compare by value. *ret_patch owned (free()). */
canopy_err canopy_graph_diff(const char *old_json, const char *new_json, char **ret_patch);

/* ---------------------------------------------------------------------- */
/* Raw requests                                                            */

/* Flags of a request. */
#define CANOPY_GRAPH_F_WRITE 0x1u      /* counts against the write budget (default for non-GET) */
#define CANOPY_GRAPH_F_READ 0x2u       /* does not count, even for POST (e.g. a POST query) */
#define CANOPY_GRAPH_F_FRESH 0x4u      /* object may be just created: retry 404 / ResourceNotFound */
#define CANOPY_GRAPH_F_NO_RETRY 0x8u   /* one attempt only (no throttling/backoff retries) */

typedef struct canopy_graph_result {
        long status;                 /* HTTP status of the last attempt, 0 if none */
        char *body;                  /* response body, NUL-terminated (owned; may be NULL) */
        size_t body_len;
        char request_id[64];         /* request-id response header */
        char client_request_id[40];  /* UUID v4 sent as client-request-id */
        int attempts;
} canopy_graph_result;

/* Free what *res owns and zero it. NULL allowed. */
void canopy_graph_result_clear(canopy_graph_result *res);

/* One synchronous request. method "GET","POST","PATCH","DELETE","PUT";
 * path relative to the Graph base including the version-less path, e.g.
 * "/users?$filter=..." (the client prepends "<graph_url>/v1.0"), or an
 * absolute URL on the Graph host (e.g. an @odata.nextLink). body: JSON text
 * or NULL (borrowed). Returns OK for 2xx; otherwise the mapped error, with
 * *res still filled (status and body of the last attempt) and *ei filled.
 * res may be NULL (body discarded). */
canopy_err canopy_graph_request(canopy_graph *gc, const char *method, const char *path, const char *body,
                                unsigned flags, canopy_graph_result *res, canopy_graph_error *ei);

/* One request of canopy_graph_run() / canopy_graph_batch(). Inputs are
 * borrowed for the duration of the call; outputs are owned by the caller
 * after it (canopy_graph_req_clear()). */
typedef struct canopy_graph_req {
        /* in */
        const char *method;
        const char *path;           /* as in canopy_graph_request(); for $batch relative only */
        const char *body;           /* JSON text or NULL */
        unsigned flags;
        /* out */
        canopy_err err;
        canopy_graph_result res;
        canopy_graph_error ei;
} canopy_graph_req;

/* Free outputs of n requests (results). NULL allowed. */
void canopy_graph_req_clear(canopy_graph_req *reqs, size_t n);

/* Run n independent requests concurrently (up to max_concurrency in flight,
 * multiplexed over HTTP/2), each with its own retries. Writes take budget
 * one by one as they start. Returns CANOPY_OK when every request succeeded,
 * else the error of the first failed one; each reqs[i].err tells. Do not
 * put two writes to the same object in one call (no order between them). */
canopy_err canopy_graph_run(canopy_graph *gc, canopy_graph_req *reqs, size_t n);

/* Same, through JSON $batch (POST /$batch), 20 requests per batch, batches
 * run concurrently. Responses are matched by id; only failed retriable
 * items are resent, after the longest inner Retry-After. Each reqs[i] gets
 * its own status, body and error. Return value as canopy_graph_run(). */
canopy_err canopy_graph_batch(canopy_graph *gc, canopy_graph_req *reqs, size_t n);

/* ---------------------------------------------------------------------- */
/* Users and groups                                                        */

#define CANOPY_GRAPH_ID_MAX 64 /* object ids are GUIDs (36 chars) */

typedef enum canopy_graph_kind {
        CANOPY_GRAPH_USER = 0,  /* /users */
        CANOPY_GRAPH_GROUP,     /* /groups */
} canopy_graph_kind;

/* Create an object. body: the full JSON object (borrowed). For groups,
 * securityEnabled true, mailEnabled false are added when absent (security
 * group); mailNickname is required in body.
 *
 * Crash safety: when intent_recorded is true (the caller had recorded a
 * create intent before, so a previous attempt may have reached Graph), the
 * client first looks the object up by match_prop eq match_value
 * (users: "onPremisesImmutableId"; groups: e.g. "mailNickname") and, if
 * found, hard-matches it (no create; *ret_matched = true). match_prop /
 * match_value may be NULL when intent_recorded is false. A 400/409
 * ObjectConflict on the create is reported as CANOPY_ERR_GRAPH_CONFLICT with
 * ei->conflict_property/value.
 * ret_id: buffer of CANOPY_GRAPH_ID_MAX bytes, receives the object id.
 * ret_matched may be NULL. ret_* untouched on failure. */
canopy_err canopy_graph_create(canopy_graph *gc, canopy_graph_kind kind, const char *body,
                               bool intent_recorded, const char *match_prop, const char *match_value,
                               char *ret_id, bool *ret_matched, canopy_graph_error *ei);

/* PATCH only the changed properties (patch: JSON object text, borrowed; use
 * canopy_graph_diff() to compute it). An empty patch ("{}" or NULL) sends
 * nothing and returns OK. Retries a 404 on a fresh object (F_FRESH). */
canopy_err canopy_graph_update(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *patch,
                               canopy_graph_error *ei);

/* Soft delete (DELETE /users/{id}); the object goes to deleted items for 30
 * days. A 404 returns CANOPY_ERR_GRAPH_NOT_FOUND at once (the caller decides
 * whether that is success): use it for objects known to be old. */
canopy_err canopy_graph_delete(canopy_graph *gc, canopy_graph_kind kind, const char *id, canopy_graph_error *ei);

/* Soft delete of an object that may have been created moments ago (by this
 * handle or any other): a replica that has not seen the create yet answers
 * 404, so a 404 is retried with the consistency backoff (F_FRESH: at most
 * consistency_retries times) before CANOPY_ERR_GRAPH_NOT_FOUND is returned.
 * Only then does "not found" mean the object is gone. */
canopy_err canopy_graph_delete_fresh(canopy_graph *gc, canopy_graph_kind kind, const char *id,
                                     canopy_graph_error *ei);

/* Restore a soft-deleted object: POST /directory/deletedItems/{id}/restore. */
canopy_err canopy_graph_restore(canopy_graph *gc, const char *id, canopy_graph_error *ei);

/* The tenant's domains (GET /domains): *ret_verified the verified domain
 * names (NULL-terminated, owned, free with canopy_graph_strv_free),
 * *ret_initial the initial (.onmicrosoft.com) domain or NULL (owned). Needs
 * Domain.Read.All or Directory.Read.All. */
canopy_err canopy_graph_domains(canopy_graph *gc, char ***ret_verified, size_t *ret_n, char **ret_initial,
                                canopy_graph_error *ei);
void canopy_graph_strv_free(char **v);

/* GET one object. select: comma-separated $select or NULL. *ret_json owned
 * (free()), untouched on failure. CANOPY_ERR_GRAPH_NOT_FOUND when absent. */
canopy_err canopy_graph_get(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *select,
                            char **ret_json, canopy_graph_error *ei);

/* canopy_graph_get of an object that may have been created moments ago (or
 * was just found by a $filter): a 404 is retried as by
 * canopy_graph_delete_fresh() before CANOPY_ERR_GRAPH_NOT_FOUND. */
canopy_err canopy_graph_get_fresh(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *select,
                                  char **ret_json, canopy_graph_error *ei);

/* Look an object up by prop eq value ($filter, value safely quoted; for
 * users prop is usually "onPremisesImmutableId"; for a string collection
 * such as proxyAddresses or otherMails, prop/any(x:x eq value)). ret_id (CANOPY_GRAPH_ID_MAX
 * bytes) gets the id; ret_json (may be NULL) the object (owned, free()).
 * CANOPY_ERR_GRAPH_NOT_FOUND when none; CANOPY_ERR_GRAPH_CONFLICT when more
 * than one matches (ei->conflict_property/value set). */
canopy_err canopy_graph_find(canopy_graph *gc, canopy_graph_kind kind, const char *prop, const char *value,
                             char *ret_id, char **ret_json, canopy_graph_error *ei);
/* canopy_graph_find with $select=select (NULL: the default properties). */
canopy_err canopy_graph_find_select(canopy_graph *gc, canopy_graph_kind kind, const char *prop, const char *value,
                                    const char *select, char *ret_id, char **ret_json, canopy_graph_error *ei);

/* Convenience wrappers for users (kind USER, match by onPremisesImmutableId). */
canopy_err canopy_graph_user_create(canopy_graph *gc, const char *body, const char *immutable_id,
                                    bool intent_recorded, char *ret_id, bool *ret_matched,
                                    canopy_graph_error *ei);
canopy_err canopy_graph_user_find(canopy_graph *gc, const char *immutable_id, char *ret_id, char **ret_json,
                                  canopy_graph_error *ei);

/* ---------------------------------------------------------------------- */
/* Group members                                                           */

#define CANOPY_GRAPH_MEMBERS_PER_PATCH 20

/* Add n members (directory object ids, borrowed) to a group, with
 * PATCH /groups/{id} {"members@odata.bind":[...]} 20 at a time. "One or
 * more added object references already exist" counts as success; when a
 * chunk fails otherwise, its members are added one by one (POST
 * /groups/{id}/members/$ref) to find which failed. Missing-reference errors
 * (eventual consistency) are retried with bounded backoff.
 * ret_errs: array of n (may be NULL) receiving each member's outcome.
 * Returns OK when all succeeded, else the first member error. */
canopy_err canopy_graph_members_add(canopy_graph *gc, const char *group_id, const char *const *member_ids,
                                    size_t n, canopy_err *ret_errs, canopy_graph_error *ei);

/* Remove n members: DELETE /groups/{id}/members/{mid}/$ref, run
 * concurrently; 404 counts as success. ret_errs as above. */
canopy_err canopy_graph_members_remove(canopy_graph *gc, const char *group_id, const char *const *member_ids,
                                       size_t n, canopy_err *ret_errs, canopy_graph_error *ei);

/* List member ids of a group (follows @odata.nextLink). At most max_ids
 * (0 = 100000) ids, else CANOPY_ERR_LIMIT. *ret_ids: owned array of owned
 * strings, free with canopy_graph_ids_free(). */
canopy_err canopy_graph_members_list(canopy_graph *gc, const char *group_id, size_t max_ids, char ***ret_ids,
                                     size_t *ret_n, canopy_graph_error *ei);

/* Free an id array from canopy_graph_members_list(). NULL allowed. */
void canopy_graph_ids_free(char **ids, size_t n);

/* ---------------------------------------------------------------------- */
/* Shared write budget (also used internally by every write)               */

typedef struct canopy_graph_budget canopy_graph_budget;

/* Connect a budget on Redis: at most `writes` per `window_ms` (sliding
 * window) across every process sharing `key` (which should carry a hash tag
 * e.g. "canopy:graph:budget:{tenant:app}"). Strings copied. *ret owned. */
canopy_err canopy_graph_budget_new(const char *redis_host, int redis_port, const char *redis_password,
                                   const char *key, int64_t writes, int64_t window_ms,
                                   canopy_graph_budget **ret);

/* Free. NULL allowed. */
void canopy_graph_budget_free(canopy_graph_budget *b);

/* Take n writes atomically. OK when granted; CANOPY_ERR_GRAPH_BUDGET when
 * not, with *ret_wait_ms the time after which n writes will be available
 * (nothing taken). CANOPY_ERR_REDIS* on Redis failure. n > writes ->
 * CANOPY_ERR_INVALID_ARG. */
canopy_err canopy_graph_budget_take(canopy_graph_budget *b, int64_t n, int64_t *ret_wait_ms);

/* Take n writes, sleeping while the wait is at most max_wait_ms in total;
 * beyond that returns CANOPY_ERR_GRAPH_BUDGET with *ret_wait_ms. */
canopy_err canopy_graph_budget_acquire(canopy_graph_budget *b, int64_t n, int64_t max_wait_ms,
                                       int64_t *ret_wait_ms);

/* ---------------------------------------------------------------------- */
/* Statistics (of this handle, since creation)                             */

typedef struct canopy_graph_stats {
        uint64_t requests;       /* HTTP attempts sent (token requests excluded) */
        uint64_t retries;        /* attempts that were retries */
        uint64_t throttled;      /* 429 received */
        uint64_t unavailable;    /* 503/504 received */
        uint64_t tokens;         /* tokens fetched */
        uint64_t budget_waits;   /* times the budget made us wait */
        uint64_t batches;        /* $batch requests sent */
} canopy_graph_stats;

/* Copy the counters into *ret. */
void canopy_graph_stats_get(const canopy_graph *gc, canopy_graph_stats *ret);

#ifdef __cplusplus
}
#endif
#endif
