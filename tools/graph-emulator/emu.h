/* emu.h: private header of canopy-graph-emulator, a local server that speaks
 * the Microsoft Graph v1.0 contract (token endpoint, users, groups, members,
 * deletedItems, delta, $batch) for tests and trials.
 *
 * Modules:
 *   util.c   hash map, ordered vectors, base64url, uuids, URL coding, time
 *   auth.c   signing key, token endpoint, bearer token checks, assertions
 *   store.c  tenants, objects, indices, validation, membership, snapshot
 *   graph.c  Graph routes: users, groups, members, deletedItems, delta, $batch
 *   main.c   options, request core (emu_serve), HTTP/1.1 (libmicrohttpd),
 *            admin routes, stats, faults
 *   net.c    listening socket, TLS with ALPN, one thread per connection,
 *            HTTP/1.1 connections handed to libmicrohttpd
 *   h2.c     HTTP/2 (nghttp2) sessions and their worker threads
 *
 * Concurrency: one reader-writer lock (emu_server.lock) guards every tenant;
 * writes take it exclusively. Counters and buckets have their own mutex.
 */
#ifndef CANOPY_GRAPH_EMU_H
#define CANOPY_GRAPH_EMU_H

#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Caps on everything a client can grow. */
#define EMU_BODY_MAX (8u << 20) /* request body */
#define EMU_BATCH_MAX 20        /* requests per $batch */
#define EMU_BIND_MAX 20         /* members@odata.bind per request */
#define EMU_PAGE_DEFAULT 100
#define EMU_PAGE_MAX 999
#define EMU_FILTER_MAX 4096 /* $filter text */
#define EMU_FILTER_NODES 64 /* $filter AST nodes */
#define EMU_SELECT_MAX 64   /* $select names */
#define EMU_CLIENTS_MAX 64
#define EMU_DOMAINS_MAX 64
#define EMU_QUERY_MAX 32 /* query parameters per URL */
#define EMU_CONNS_MAX 512         /* open connections (a thread each) */
#define EMU_HDRS_MAX 100          /* request header fields (HTTP/2) */
#define EMU_HDR_BYTES (32u << 10) /* request header bytes on HTTP/2 (HTTP/1.1: MHD's buffer) */
#define EMU_IDLE_S 120            /* idle connection timeout, both protocols */

/* ---- util.c ---------------------------------------------------------- */

/* Open-addressing string map. Keys are copied; values are borrowed. */
typedef struct emu_map {
        char **keys;
        void **vals;
        size_t cap, n, used; /* used = live + tombstones */
} emu_map;

void *emu_map_get(const emu_map *m, const char *key);
/* Insert or replace. Returns 0, or -1 on allocation failure. */
int emu_map_put(emu_map *m, const char *key, void *val);
/* Remove; returns the old value or NULL. */
void *emu_map_del(emu_map *m, const char *key);
void emu_map_clear(emu_map *m);
/* Iterate: for (size_t i = 0; emu_map_next(m, &i, &k, &v);) */
bool emu_map_next(const emu_map *m, size_t *it, const char **key, void **val);

/* Vector ordered by an increasing sequence number; removals leave holes that
 * compaction squeezes out, so positions are found again by binary search. */
typedef struct emu_seqvec {
        uint64_t *seq;
        void **val;
        size_t len, cap, live;
} emu_seqvec;

int emu_seqvec_push(emu_seqvec *sv, uint64_t seq, void *val);
/* First index whose seq >= seq. */
size_t emu_seqvec_lower(const emu_seqvec *sv, uint64_t seq);
/* Remove the entry with this seq (no-op if absent). */
void emu_seqvec_remove(emu_seqvec *sv, uint64_t seq);
void emu_seqvec_free(emu_seqvec *sv);

char *emu_b64url_encode(const unsigned char *in, size_t len); /* (owned) */
/* Decode; returns NULL on bad input. *outlen receives the length. (owned) */
unsigned char *emu_b64url_decode(const char *in, size_t inlen, size_t *outlen);
void emu_uuid(char out[37]);
int64_t emu_now_ms(void);
/* ISO 8601 UTC with seconds, "2024-01-02T03:04:05Z". */
void emu_iso_time(int64_t ms, char out[32]);
/* Percent-decode in place; plus_space turns '+' into ' ' (query strings). */
void emu_url_decode(char *s, bool plus_space);
/* Percent-encode for a query value. (owned) */
char *emu_url_encode(const char *s);
void emu_lower(char *s);
bool emu_is_guid(const char *s);
double emu_rand01(void);
/* Read a whole file; trailing newlines trimmed. (owned) NULL on error. */
char *emu_read_file(const char *path, size_t *len);

typedef struct emu_kv {
        char *key;
        char *val;
} emu_kv;

/* ---- permissions -------------------------------------------------------- */

enum {
        EMU_P_USER_READ = 1u << 0,   /* User.Read.All, User.ReadBasic.All */
        EMU_P_USER_RW = 1u << 1,     /* User.ReadWrite.All */
        EMU_P_GROUP_READ = 1u << 2,  /* Group.Read.All */
        EMU_P_GROUP_RW = 1u << 3,    /* Group.ReadWrite.All */
        EMU_P_MEMBER_READ = 1u << 4, /* GroupMember.Read.All */
        EMU_P_MEMBER_RW = 1u << 5,   /* GroupMember.ReadWrite.All */
        EMU_P_DIR_READ = 1u << 6,    /* Directory.Read.All */
        EMU_P_DIR_RW = 1u << 7,      /* Directory.ReadWrite.All */
        EMU_P_DOMAIN_READ = 1u << 8, /* Domain.Read.All, Domain.ReadWrite.All */
        EMU_P_ORG_READ = 1u << 9,    /* Organization.Read.All */
};
unsigned emu_role_bit(const char *role);

/* ---- server --------------------------------------------------------------- */

typedef struct emu_client {
        char *tenant;
        char *client_id;
        char *secret;       /* (owned) NULL if none */
        EVP_PKEY *cert_key; /* public key of the client certificate, or NULL */
        unsigned char x5t[20];
        unsigned char x5t256[32];
        json_t *roles; /* array of role strings (owned) */
        unsigned perms;
        bool revoked;
} emu_client;

typedef enum { EMU_RA_INT, EMU_RA_DECIMAL, EMU_RA_DATE } emu_retry_form;

typedef struct emu_faults {
        double rate429, rate500, rate503, rate504;
        emu_retry_form retry_after;
        int latency_ms;
        int replication_lag_ms;
        double write_rate; /* per second, 0 = unlimited */
        double write_burst;
        int fail_next; /* the next N Graph operations fail with fail_status */
        int fail_status;
} emu_faults;

typedef struct emu_stats {
        json_t *by_method, *by_kind, *by_status; /* objects name -> count */
        json_t *by_assertion; /* accepted client assertions: "PS256 x5t#S256" -> count */
        json_t *by_protocol; /* "HTTP/1.1" / "HTTP/2" -> requests */
        json_t *connections; /* "HTTP/1.1" / "HTTP/2" -> connections accepted */
        uint64_t requests, operations, writes, throttled, faults, deletes, tokens;
} emu_stats;

typedef struct emu_tenant emu_tenant;
typedef struct emu_net emu_net;
typedef struct emu_h2 emu_h2;

typedef struct emu_server {
        /* options */
        char *listen_addr;
        int listen_port;
        char *port_file;
        char *tls_cert, *tls_key;
        bool insecure;
        bool no_h2; /* --no-http2: ALPN offers http/1.1 only, no h2c */
        int threads;
        char *snapshot;
        int token_lifetime;
        char *domains[EMU_DOMAINS_MAX];
        size_t ndomains;
        emu_client clients[EMU_CLIENTS_MAX];
        size_t nclients;

        /* runtime */
        pthread_mutex_t mu; /* faults, stats, buckets, clients' revoked flag */
        emu_faults faults;
        emu_stats stats;
        emu_map buckets; /* "tid/appid" -> struct bucket */

        pthread_rwlock_t lock; /* every tenant's data */
        emu_map tenants;       /* tenant id -> emu_tenant */

        EVP_PKEY *sign_key;
        char kid[40];

        void *mhd;   /* struct MHD_Daemon: HTTP/1.x */
        emu_net *net; /* net.c */
        emu_h2 *h2;   /* h2.c */
} emu_server;

/* ---- auth.c --------------------------------------------------------------- */

typedef struct emu_auth {
        const emu_client *client;
        unsigned perms;
        char tid[64];
        char appid[64];
} emu_auth;

/* A response being built: status, JSON body (owned) or none, headers. */
#define EMU_RESP_HDRS 8
typedef struct emu_resp {
        int status;
        json_t *body;
        char *raw;         /* raw body when not JSON (owned) */
        const char *ctype; /* content type of raw */
        char *hname[EMU_RESP_HDRS];
        char *hval[EMU_RESP_HDRS];
        int nh;
} emu_resp;

void emu_resp_header(emu_resp *r, const char *name, const char *val);
void emu_resp_reset(emu_resp *r);

int emu_auth_init(emu_server *srv);
void emu_auth_free(emu_server *srv);
/* Token endpoint: form body (borrowed), tenant from the path. */
void emu_auth_token(emu_server *srv, const char *tenant, const char *body, size_t len, const char *basic_auth,
                    const char *base_url, emu_resp *r);
/* Check "Bearer ..." header; on failure fills r (401) and returns -1. */
int emu_auth_check(emu_server *srv, const char *authz, emu_auth *out, emu_resp *r);
/* OpenID metadata, JWKS, instance discovery (for MSAL). */
void emu_auth_openid(emu_server *srv, const char *tenant, const char *base_url, emu_resp *r);
void emu_auth_jwks(emu_server *srv, emu_resp *r);
void emu_auth_instance_discovery(emu_server *srv, const char *base_url, const char *host, emu_resp *r);

/* ---- store.c -------------------------------------------------------------- */

typedef enum { EMU_USER = 0, EMU_GROUP = 1 } emu_kind;
typedef enum { EMU_LIVE = 0, EMU_DELETED, EMU_PURGED } emu_state;

typedef struct emu_member_ev {
        uint64_t seq;
        struct emu_obj *member; /* never freed while the group exists */
        bool removed;
} emu_member_ev;

typedef struct emu_obj {
        char id[37];
        emu_kind kind;
        emu_state state;
        json_t *props;      /* every stored property (owned) */
        uint64_t cseq;      /* creation order */
        uint64_t chg;       /* last change (delta) */
        int64_t created_ms; /* replication lag: hidden until created_ms + lag */
        /* groups */
        emu_map members;     /* member id -> (void*)(uintptr_t)seq */
        emu_seqvec mvec;     /* seq -> emu_obj* in add order */
        emu_member_ev *mlog; /* membership changes, for members@delta */
        size_t mloglen, mlogcap;
        /* every object */
        emu_map memberof; /* group id -> emu_obj* */
} emu_obj;

struct emu_tenant {
        char *id;
        emu_map byid;       /* id -> obj, every state */
        emu_map upn;        /* lower(upn) -> live user */
        emu_map immid;      /* onPremisesImmutableId -> live user */
        emu_map addr;       /* lower(smtp address) -> live user or group */
        emu_seqvec list[2]; /* by creation, per kind */
        uint64_t seq;
};

/* Error detail produced by validation: HTTP status, Graph code, message, and
 * for conflicts the property name (details target). */
typedef struct emu_err {
        int status;
        const char *code;
        char msg[512];
        char target[64];
} emu_err;

emu_tenant *emu_tenant_get(emu_server *srv, const char *tid, bool create);
void emu_tenant_free(emu_tenant *tn);
emu_obj *emu_obj_find(emu_tenant *tn, const char *id);
/* Live and visible (replication lag passed) object by id, or NULL. */
emu_obj *emu_obj_visible(emu_server *srv, emu_tenant *tn, const char *id, emu_kind kind);
bool emu_obj_is_visible(emu_server *srv, const emu_obj *o);

/* Create from a request body (borrowed); fills err and returns NULL on a
 * validation failure. Member binds are handled by the caller. */
emu_obj *emu_obj_create(emu_server *srv, emu_tenant *tn, emu_kind kind, json_t *body, emu_err *err);
/* PATCH semantics; 0 on success. */
int emu_obj_update(emu_server *srv, emu_tenant *tn, emu_obj *o, json_t *body, emu_err *err);
void emu_obj_soft_delete(emu_tenant *tn, emu_obj *o);
int emu_obj_restore(emu_tenant *tn, emu_obj *o, emu_err *err);
void emu_obj_purge(emu_tenant *tn, emu_obj *o);
/* Membership. add returns 1 when already a member (nothing done). */
int emu_member_add(emu_tenant *tn, emu_obj *g, emu_obj *m);
int emu_member_remove(emu_tenant *tn, emu_obj *g, emu_obj *m);
bool emu_member_has(const emu_obj *g, const emu_obj *m);

/* Render for Graph. select NULL = default property set of the kind. */
json_t *emu_obj_render(const emu_obj *o, char **select, size_t nsel);
/* Every property plus members (for /_emulator/state and snapshots). */
json_t *emu_obj_dump(const emu_obj *o, bool for_snapshot);
bool emu_prop_known(emu_kind kind, const char *name);
bool emu_prop_filterable(emu_kind kind, const char *name);
const char *emu_kind_name(emu_kind k); /* "User" / "Group" */

/* Whole-server state. Caller holds the write lock. */
json_t *emu_state_dump(emu_server *srv, const char *tenant);
int emu_snapshot_save(emu_server *srv, const char *path);
int emu_snapshot_load(emu_server *srv, const char *path);
void emu_state_reset(emu_server *srv);
bool emu_domain_verified(emu_server *srv, const char *domain);

/* ---- graph.c ---------------------------------------------------------------- */

typedef struct emu_call {
        emu_server *srv;
        const emu_auth *auth;
        const char *method;
        const char *url;     /* path?query relative to the version, e.g. "/users?$top=5" */
        const char *version; /* "v1.0" */
        json_t *body;        /* (borrowed) NULL when absent */
        bool body_invalid;   /* body present but not JSON */
        const char *base;    /* "https://host:port" for links */
        const char *client_request_id;
        const char *request_id;
        bool in_batch;
        int max_page_size; /* Prefer: odata.maxpagesize=N, 0 = none */
} emu_call;

/* Run one Graph operation (not $batch) including throttling and faults. */
void emu_graph_exec(emu_call *c, emu_resp *r);
/* POST /$batch. */
void emu_graph_batch(emu_call *c, emu_resp *r);
/* Fill r with a Graph error body. */
void emu_graph_error(emu_resp *r, int status, const char *code, const char *msg, const char *request_id,
                     const char *client_request_id);
void emu_graph_error_details(emu_resp *r, const emu_err *e, const char *request_id,
                             const char *client_request_id);

/* ---- main.c: the request core --------------------------------------------- */

/* One complete request, whichever the transport. Every pointer is borrowed
 * for the call. */
typedef struct emu_request {
        const char *method;
        const char *uri;  /* path?query as sent */
        const char *body; /* NUL-terminated, or NULL when empty */
        size_t len;
        bool too_big;         /* the body went over EMU_BODY_MAX: 413 */
        bool loopback;        /* the peer is on loopback: admin routes allowed */
        const char *protocol; /* "HTTP/1.1", "HTTP/2" (stats, debug log) */
        /* Case-insensitive header look-up; NULL when absent. */
        const char *(*header)(void *ctx, const char *name);
        void *ctx;
} emu_request;

/* The answer: status, headers in the order to send, body. Everything is
 * owned by the reply; emu_reply_free releases it. */
#define EMU_REPLY_HDRS (EMU_RESP_HDRS + 6)
typedef struct emu_reply {
        int status;
        char *body;
        size_t len;
        char *hname[EMU_REPLY_HDRS];
        char *hval[EMU_REPLY_HDRS];
        int nh;
} emu_reply;

/* Route and run one request: Graph, token endpoint, metadata, admin. Fills
 * rp, which the caller frees. Thread-safe. */
void emu_serve(emu_server *srv, const emu_request *rq, emu_reply *rp);
void emu_reply_free(emu_reply *rp); /* NULL allowed */

/* Counters. */
void emu_stats_count(emu_server *srv, const char *method, const char *kind, int status);
void emu_stats_add(emu_server *srv, uint64_t *field);
/* Count an accepted client assertion by its algorithm and thumbprint header. */
void emu_stats_assertion(emu_server *srv, const char *alg, const char *thumbprint);
void emu_stats_conn(emu_server *srv, const char *protocol);

/* ---- net.c ---------------------------------------------------------------------- */

struct ssl_st;

/* One accepted connection, served by its own thread. */
typedef struct emu_conn {
        emu_server *srv;
        int fd;              /* -1 once handed to libmicrohttpd */
        struct ssl_st *ssl;  /* NULL on plain HTTP */
        bool want_write;     /* the last TLS read waits for the socket to be writable */
        bool loopback;       /* the peer's address */
        struct sockaddr_storage peer;
        socklen_t peerlen;
        struct emu_conn *prev, *next; /* net.c's list of open connections */
} emu_conn;

/* Listen on srv->listen_addr:listen_port (TLS unless srv->insecure) and serve
 * until emu_net_stop. *ret_port: the bound port. 0, or -1 (logged). */
int emu_net_start(emu_server *srv, int *ret_port);
/* Stop accepting, close every connection, wait for their threads. */
void emu_net_stop(emu_server *srv);
/* Non-blocking I/O on a connection, TLS or not: bytes moved, 0 when it
 * would block, -1 when closed or failed. */
long emu_conn_read(emu_conn *c, void *buf, size_t n);
long emu_conn_write(emu_conn *c, const void *buf, size_t n);
/* Decrypted bytes already buffered (poll() does not see them). */
bool emu_conn_pending(const emu_conn *c);
bool emu_addr_loopback(const struct sockaddr *sa);

/* ---- h2.c ----------------------------------------------------------------------- */

/* Worker threads that run HTTP/2 requests (srv->threads of them). */
int emu_h2_init(emu_server *srv);
void emu_h2_free(emu_server *srv); /* after emu_net_stop */
/* Serve an HTTP/2 connection (preface not yet read) until it closes. */
void emu_h2_serve(emu_conn *c);

#endif
