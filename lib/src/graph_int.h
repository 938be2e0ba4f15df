/* graph_int.h (private): internals of the Graph client shared by
 * graph.c (objects, members), graph_http.c (transport and retry engine),
 * graph_auth.c (tokens, JWT assertions), graph_util.c (pure helpers) and
 * graph_budget.c (Redis write budget). See docs/GRAPH.md. */
#ifndef CANOPY_GRAPH_INT_H
#define CANOPY_GRAPH_INT_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>

#include "canopy/graph.h"

#define GRAPH_MOD "graph"
#define GRAPH_BATCH_MAX 20
#define GRAPH_URL_MAX 4096

struct canopy_graph {
        /* configuration (copied) */
        canopy_graph_conf conf;    /* string fields point into the copies below */
        char *authority_url;       /* e.g. https://login.microsoftonline.com */
        char *graph_base;          /* e.g. https://graph.microsoft.com/v1.0 */
        char *graph_root;          /* e.g. https://graph.microsoft.com */
        char *tenant;
        char *client_id;
        char *client_secret;
        char *scope;
        char *ca_file;
        char *token_url;

        /* certificate credential */
        EVP_PKEY *pkey;
        char x5t[64];              /* base64url SHA-1 or SHA-256 thumbprint of the cert */

        /* token cache */
        char *token;               /* access token (owned, registered as secret) */
        int64_t token_renew_at_ms; /* monotonic: fetch a new one from here on */
        int64_t token_expires_at_ms;

        /* transport */
        void *multi;               /* CURLM * */
        uint64_t rng;              /* xorshift state for jitter */

        /* write budget (NULL when not configured) */
        canopy_graph_budget *budget;

        canopy_graph_stats stats;
};

/* ---- util ---- */
int64_t graph_now_ms(void);   /* monotonic */
int64_t graph_epoch_ms(void); /* wall clock */
void graph_sleep_ms(int64_t ms);
/* 36-char UUID v4 + NUL into out[37]. */
void graph_uuid4(char out[37]);
/* base64url without padding; returns malloc'd string or NULL. */
char *graph_b64url(const unsigned char *data, size_t len);
/* Uniform random in [0, n). */
uint64_t graph_rand(canopy_graph *gc, uint64_t n);
/* Percent-encode a path segment (object ids come from Graph, but a caller
 * may pass anything). out has outlen bytes. */
canopy_err graph_pct_encode(const char *in, char *out, size_t outlen);
/* Fill conflict_value from the request body when conflict_property is set. */
void graph_conflict_fill(canopy_graph_error *ei, const char *req_body);
/* Whether the error (status + parsed body) means "referenced object not
 * (yet) there" (eventual consistency). */
bool graph_is_missing_ref(long status, const canopy_graph_error *ei);
/* strlcpy-like, always NUL-terminates. */
void graph_strlcpy(char *dst, const char *src, size_t size);

/* ---- $batch ---- */
typedef struct graph_batch_item {
        bool pending; /* to be sent (again) */
        int attempts;
        int consistency_tries;
} graph_batch_item;
/* Apply the body of one $batch response to its items pend[0..k) (indexes
 * into reqs[0..n) and st): each answered item gets its status, body and
 * error and stays pending when it is retried; an item without an answer, or
 * answered twice, or under an id that is not one of the batch, counts as
 * unanswered. *max_ra: the longest inner Retry-After of the retried items;
 * *any_retry set when one is. CANOPY_ERR_GRAPH_PROTOCOL, with no item
 * touched, when the body is not a $batch response. Fuzzed in
 * tests/fuzz/fuzz_graph_json.c. */
canopy_err graph_batch_apply(canopy_graph *gc, canopy_graph_req *reqs, size_t n, const size_t *pend, size_t k,
                             graph_batch_item *st, const char *body_text, size_t body_len, const char *request_id,
                             const char *client_request_id, int64_t *max_ra, bool *any_retry);

/* ---- auth ---- */
/* Load cert + key from conf (when cert_file set). */
canopy_err graph_auth_load_cert(canopy_graph *gc, char *errbuf, size_t errlen);
/* Build a signed JWT client assertion (owned, free()). now_s: epoch seconds. */
canopy_err graph_jwt_build(EVP_PKEY *pkey, canopy_graph_jwt_alg alg, const char *x5t_name, const char *x5t,
                           const char *client_id, const char *audience, int64_t now_s, const char *jti,
                           char **ret_jwt);
/* Thumbprint of a certificate, base64url (sha256 selects x5t#S256). */
canopy_err graph_x5t(X509 *cert, bool sha256, char *out, size_t outlen);
/* Make sure gc->token is valid (fetch when missing or due for renewal). */
canopy_err graph_token_ensure(canopy_graph *gc, canopy_graph_error *ei);
/* Forget the cached token (after a 401). */
void graph_token_invalidate(canopy_graph *gc);

/* ---- engine ---- */
/* One blocking POST (token endpoint). *ret_body owned (may be NULL);
 * retry_after receives the Retry-After header, if any. */
canopy_err graph_http_simple(canopy_graph *gc, const char *url, const char *content_type, const char *body,
                             long *ret_status, char **ret_body, size_t *ret_len, char *retry_after,
                             size_t ralen);
/* One transfer of the engine: the request, its retry state and outcome. */
typedef struct graph_xfer {
        /* in */
        const char *method;
        char *url;                 /* owned, absolute */
        const char *body;          /* borrowed */
        unsigned flags;
        int64_t weight;            /* budget writes this transfer takes (0 = none) */
        /* out */
        canopy_err err;
        canopy_graph_result *res;  /* borrowed, filled at the end */
        canopy_graph_error *ei;    /* borrowed, filled on failure */
        /* private state */
        void *easy;                /* CURL * while running */
        void *hdrs;                /* struct curl_slist * */
        char *buf;
        size_t len, cap;
        bool too_large;
        size_t max_body;
        char req_id_hdr[64];
        char retry_after[64];
        char crid[37];
        int attempts;
        int consistency_tries;
        int auth_retries;
        int64_t started_ms;        /* first attempt */
        int64_t not_before_ms;     /* next attempt not before */
        int64_t budget_wait_ms;    /* waited for budget so far */
        int state;                 /* 0 waiting, 1 running, 2 done */
} graph_xfer;

/* Run n transfers to completion (concurrently, max_concurrency in flight). */
canopy_err graph_engine_run(canopy_graph *gc, graph_xfer *xs, size_t n);
/* Build an absolute URL from a path ("/users" -> base + path; absolute URL
 * accepted when on the Graph host). Owned result. */
canopy_err graph_url(canopy_graph *gc, const char *path, char **ret_url);
/* Classify an HTTP outcome: 0 = success, else the mapped canopy_err.
 * *retriable set when another attempt may help. */
canopy_err graph_classify(canopy_graph *gc, long status, unsigned flags, const canopy_graph_error *ei,
                          bool *retriable);
/* Backoff for attempt k (1-based) in ms, with full jitter. */
int64_t graph_backoff_ms(canopy_graph *gc, int attempt);

#endif
