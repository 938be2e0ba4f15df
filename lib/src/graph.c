/* graph.c: the Graph client handle, users, groups and group members.
 * Transport and retries: graph_http.c; tokens: graph_auth.c; $batch:
 * graph_batch.c; budget: graph_budget.c. See docs/GRAPH.md. */
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/log.h"
#include "graph_int.h"

#define MEMBERS_LIST_DEFAULT_MAX 100000
#define FILTER_MAX 2048

static const struct {
        const char *authority;
        const char *graph;
} clouds[] = {
        [CANOPY_GRAPH_CLOUD_GLOBAL] = {"https://login.microsoftonline.com", "https://graph.microsoft.com"},
        [CANOPY_GRAPH_CLOUD_USGOV] = {"https://login.microsoftonline.us", "https://graph.microsoft.us"},
        [CANOPY_GRAPH_CLOUD_CHINA] = {"https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"},
};

void canopy_graph_conf_init(canopy_graph_conf *c) {
        memset(c, 0, sizeof(*c));
        c->cloud = CANOPY_GRAPH_CLOUD_GLOBAL;
        c->jwt_alg = CANOPY_GRAPH_JWT_RS256;
        c->token_margin_s = 300;
        c->connect_timeout_ms = 10000;
        c->request_timeout_ms = 60000;
        c->max_response_bytes = 16u << 20;
        c->max_concurrency = 16;
        c->max_retries = 8;
        c->max_retry_ms = 120000;
        c->backoff_base_ms = 500;
        c->backoff_max_ms = 30000;
        c->consistency_retries = 6;
        c->redis_port = 6379;
        c->budget_writes = 3000;
        c->budget_window_ms = 150000;
        c->budget_max_wait_ms = 5000;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Copy a URL without trailing slashes. */
static char *url_dup(const char *u) {
        char *s = strdup(u);
        if (!s)
                return NULL;
        size_t n = strlen(s);
        while (n > 0 && s[n - 1] == '/')
                s[--n] = '\0';
        return s;
}

static canopy_err check_url(const canopy_graph_conf *c, const char *u, const char *what, char *errbuf,
                            size_t errlen) {
        if (!strncmp(u, "https://", 8))
                return CANOPY_OK;
        if (!strncmp(u, "http://", 7)) {
                if (c->allow_insecure)
                        return CANOPY_OK;
                snprintf(errbuf, errlen, "graph: %s %s is plain http:// (set allow_insecure for tests only)", what,
                         u);
                return CANOPY_ERR_GRAPH_INSECURE;
        }
        snprintf(errbuf, errlen, "graph: %s %s is not an http(s) URL", what, u);
        return CANOPY_ERR_CONFIG;
}

canopy_err canopy_graph_new(const canopy_graph_conf *conf, canopy_graph **ret, char *errbuf, size_t errlen) {
        char dummy[8];
        if (!errbuf) {
                errbuf = dummy;
                errlen = sizeof(dummy);
        }
        errbuf[0] = '\0';
        if (!conf || !ret)
                return CANOPY_ERR_INVALID_ARG;
        if ((unsigned)conf->cloud > CANOPY_GRAPH_CLOUD_CHINA) {
                snprintf(errbuf, errlen, "graph: unknown cloud %d", (int)conf->cloud);
                return CANOPY_ERR_CONFIG;
        }
        if (!conf->tenant || !*conf->tenant || !conf->client_id || !*conf->client_id) {
                snprintf(errbuf, errlen, "graph: tenant and client_id are required");
                return CANOPY_ERR_CONFIG_MISSING;
        }
        bool has_secret = conf->client_secret && *conf->client_secret;
        bool has_cert = conf->cert_file && *conf->cert_file;
        if (has_secret == has_cert) {
                snprintf(errbuf, errlen, "graph: set exactly one credential: client_secret or cert_file");
                return CANOPY_ERR_CONFIG;
        }
        for (const char *p = conf->tenant; *p; p++) {
                if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_') {
                        snprintf(errbuf, errlen, "graph: tenant contains '%c'", *p);
                        return CANOPY_ERR_CONFIG;
                }
        }
        const char *auth = conf->authority_url ? conf->authority_url : clouds[conf->cloud].authority;
        const char *graph = conf->graph_url ? conf->graph_url : clouds[conf->cloud].graph;
        canopy_err err = check_url(conf, auth, "authority_url", errbuf, errlen);
        if (!err)
                err = check_url(conf, graph, "graph_url", errbuf, errlen);
        if (err)
                return err;
        pthread_once(&curl_once, curl_init_once);

        canopy_graph *gc = calloc(1, sizeof(*gc));
        if (!gc)
                return CANOPY_ERR_NOMEM;
        gc->conf = *conf;
        canopy_graph_conf *c = &gc->conf;
        /* zero and negative values take defaults */
        canopy_graph_conf d;
        canopy_graph_conf_init(&d);
        if (c->token_margin_s <= 0)
                c->token_margin_s = d.token_margin_s;
        if (c->connect_timeout_ms <= 0)
                c->connect_timeout_ms = d.connect_timeout_ms;
        if (c->request_timeout_ms <= 0)
                c->request_timeout_ms = d.request_timeout_ms;
        if (c->max_response_bytes == 0)
                c->max_response_bytes = d.max_response_bytes;
        if (c->max_concurrency <= 0)
                c->max_concurrency = d.max_concurrency;
        if (c->max_retries < 0)
                c->max_retries = d.max_retries;
        if (c->max_retry_ms <= 0)
                c->max_retry_ms = d.max_retry_ms;
        if (c->backoff_base_ms <= 0)
                c->backoff_base_ms = d.backoff_base_ms;
        if (c->backoff_max_ms < c->backoff_base_ms)
                c->backoff_max_ms = c->backoff_base_ms > d.backoff_max_ms ? c->backoff_base_ms : d.backoff_max_ms;
        if (c->consistency_retries < 0)
                c->consistency_retries = d.consistency_retries;
        if (c->budget_writes <= 0)
                c->budget_writes = d.budget_writes;
        if (c->budget_window_ms <= 0)
                c->budget_window_ms = d.budget_window_ms;
        if (c->budget_max_wait_ms < 0)
                c->budget_max_wait_ms = 0;

        gc->authority_url = url_dup(auth);
        gc->graph_root = url_dup(graph);
        gc->tenant = strdup(conf->tenant);
        gc->client_id = strdup(conf->client_id);
        gc->client_secret = has_secret ? strdup(conf->client_secret) : NULL;
        gc->ca_file = conf->ca_file ? strdup(conf->ca_file) : NULL;
        if (conf->scope) {
                gc->scope = strdup(conf->scope);
        } else {
                /* the token's audience is the cloud's Graph resource, even
                 * when graph_url points at a proxy or the emulator */
                size_t n = strlen(clouds[conf->cloud].graph) + 10;
                gc->scope = malloc(n);
                if (gc->scope)
                        snprintf(gc->scope, n, "%s/.default", clouds[conf->cloud].graph);
        }
        if (gc->graph_root) {
                size_t n = strlen(gc->graph_root) + 6;
                gc->graph_base = malloc(n);
                if (gc->graph_base)
                        snprintf(gc->graph_base, n, "%s/v1.0", gc->graph_root);
        }
        if (gc->authority_url) {
                size_t n = strlen(gc->authority_url) + strlen(conf->tenant) + 24;
                gc->token_url = malloc(n);
                if (gc->token_url)
                        snprintf(gc->token_url, n, "%s/%s/oauth2/v2.0/token", gc->authority_url, conf->tenant);
        }
        if (!gc->authority_url || !gc->graph_root || !gc->tenant || !gc->client_id || !gc->scope ||
            !gc->graph_base || !gc->token_url || (has_secret && !gc->client_secret) ||
            (conf->ca_file && !gc->ca_file)) {
                err = CANOPY_ERR_NOMEM;
                goto fail;
        }
        if (has_secret)
                canopy_log_secret(gc->client_secret);
        if (conf->key_password)
                canopy_log_secret(conf->key_password);
        if (conf->redis_password)
                canopy_log_secret(conf->redis_password);
        if (has_cert) {
                err = graph_auth_load_cert(gc, errbuf, errlen);
                if (err)
                        goto fail;
        }
        gc->multi = curl_multi_init();
        if (!gc->multi) {
                err = CANOPY_ERR_NOMEM;
                goto fail;
        }
        curl_multi_setopt(gc->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
        curl_multi_setopt(gc->multi, CURLMOPT_MAXCONNECTS, (long)(c->max_concurrency + 4));
        if (RAND_bytes((unsigned char *)&gc->rng, sizeof(gc->rng)) != 1 || !gc->rng)
                gc->rng = (uint64_t)graph_epoch_ms() | 1;
        if (conf->redis_host && *conf->redis_host) {
                char keybuf[512];
                const char *key = conf->budget_key;
                if (!key) {
                        snprintf(keybuf, sizeof(keybuf), "canopy:graph:budget:{%s:%s}", conf->tenant,
                                 conf->client_id);
                        key = keybuf;
                }
                err = canopy_graph_budget_new(conf->redis_host, c->redis_port, conf->redis_password, key,
                                              c->budget_writes, c->budget_window_ms, &gc->budget);
                if (err) {
                        snprintf(errbuf, errlen, "graph: write budget: cannot reach Redis %s:%d",
                                 conf->redis_host, c->redis_port);
                        goto fail;
                }
        }
        /* the handle keeps no borrowed pointer of the caller's conf */
        c->authority_url = c->graph_url = c->tenant = c->client_id = c->client_secret = NULL;
        c->cert_file = c->key_file = c->key_password = c->scope = c->ca_file = NULL;
        c->redis_host = c->redis_password = c->budget_key = NULL;
        *ret = gc;
        return CANOPY_OK;
fail:
        canopy_graph_free(gc);
        return err;
}

void canopy_graph_free(canopy_graph *gc) {
        if (!gc)
                return;
        if (gc->multi)
                curl_multi_cleanup(gc->multi);
        canopy_graph_budget_free(gc->budget);
        EVP_PKEY_free(gc->pkey);
        free(gc->authority_url);
        free(gc->graph_base);
        free(gc->graph_root);
        free(gc->tenant);
        free(gc->client_id);
        free(gc->client_secret);
        free(gc->scope);
        free(gc->ca_file);
        free(gc->token_url);
        free(gc->token);
        free(gc);
}

void canopy_graph_stats_get(const canopy_graph *gc, canopy_graph_stats *ret) {
        if (gc && ret)
                *ret = gc->stats;
}

/* ---- objects ---- */

static const char *kind_path(canopy_graph_kind kind) {
        return kind == CANOPY_GRAPH_GROUP ? "/groups" : "/users";
}

/* "/users/<id>" with the id percent-encoded. */
static canopy_err obj_path(canopy_graph_kind kind, const char *id, const char *suffix, char *out, size_t outlen) {
        char enc[256];
        if (!id || !*id)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = graph_pct_encode(id, enc, sizeof(enc));
        if (err)
                return err;
        int n = snprintf(out, outlen, "%s/%s%s", kind_path(kind), enc, suffix ? suffix : "");
        return n < 0 || (size_t)n >= outlen ? CANOPY_ERR_LIMIT : CANOPY_OK;
}

static canopy_err id_from_body(const canopy_graph_result *res, char *ret_id) {
        json_t *root = res->body ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
        const char *id = root ? json_string_value(json_object_get(root, "id")) : NULL;
        canopy_err err = CANOPY_OK;
        if (!id || strlen(id) >= CANOPY_GRAPH_ID_MAX)
                err = CANOPY_ERR_GRAPH_PROTOCOL;
        else
                graph_strlcpy(ret_id, id, CANOPY_GRAPH_ID_MAX);
        json_decref(root);
        return err;
}

static bool prop_name_ok(const char *p) {
        if (!p || !*p || strlen(p) > 128)
                return false;
        for (; *p; p++)
                if (!isalnum((unsigned char)*p) && *p != '_' && *p != '/')
                        return false;
        return true;
}

/* String collections of users and groups that a $filter reaches with any(). */
static bool is_collection(const char *prop) {
        static const char *const coll[] = {"proxyAddresses", "otherMails", "imAddresses", "businessPhones",
                                           "groupTypes", NULL};
        for (int i = 0; coll[i]; i++)
                if (!strcmp(prop, coll[i]))
                        return true;
        return false;
}

/* canopy_graph_find with a $select (NULL: the default properties). */
canopy_err canopy_graph_find_select(canopy_graph *gc, canopy_graph_kind kind, const char *prop, const char *value,
                                    const char *select, char *ret_id, char **ret_json, canopy_graph_error *ei) {
        if (!gc || !value || !ret_id || !prop_name_ok(prop))
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        char lit[FILTER_MAX], path[FILTER_MAX + 256];
        canopy_err err = canopy_graph_odata_quote(value, lit, sizeof(lit));
        if (err)
                return err;
        if (is_collection(prop))
                /* multi-valued: proxyAddresses/any(x:x eq '...') */
                snprintf(path, sizeof(path), "%s?$filter=%s/any(x:x%%20eq%%20%s)", kind_path(kind), prop, lit);
        else
                snprintf(path, sizeof(path), "%s?$filter=%s%%20eq%%20%s", kind_path(kind), prop, lit);
        if (select) {
                size_t pl = strlen(path);
                snprintf(path + pl, sizeof(path) - pl, "&$select=%s", select);
        }
        canopy_graph_result res = {0};
        err = canopy_graph_request(gc, "GET", path, NULL, 0, &res, ei);
        if (err)
                goto out;
        json_t *root = json_loadb(res.body ? res.body : "", res.body_len, 0, NULL);
        json_t *val = root ? json_object_get(root, "value") : NULL;
        if (!json_is_array(val)) {
                err = CANOPY_ERR_GRAPH_PROTOCOL;
        } else if (json_array_size(val) == 0) {
                err = CANOPY_ERR_GRAPH_NOT_FOUND;
                if (ei) {
                        ei->http_status = res.status;
                        graph_strlcpy(ei->code, "canopy_no_match", sizeof(ei->code));
                }
        } else if (json_array_size(val) > 1) {
                err = CANOPY_ERR_GRAPH_CONFLICT;
                if (ei) {
                        graph_strlcpy(ei->code, "canopy_ambiguous_match", sizeof(ei->code));
                        graph_strlcpy(ei->conflict_property, prop, sizeof(ei->conflict_property));
                        graph_strlcpy(ei->conflict_value, value, sizeof(ei->conflict_value));
                }
        } else {
                json_t *o = json_array_get(val, 0);
                const char *id = json_string_value(json_object_get(o, "id"));
                char *dump = ret_json ? json_dumps(o, JSON_COMPACT) : NULL;
                if (!id || strlen(id) >= CANOPY_GRAPH_ID_MAX) {
                        err = CANOPY_ERR_GRAPH_PROTOCOL;
                        free(dump);
                } else if (ret_json && !dump) {
                        err = CANOPY_ERR_NOMEM;
                } else {
                        graph_strlcpy(ret_id, id, CANOPY_GRAPH_ID_MAX);
                        if (ret_json)
                                *ret_json = dump;
                }
        }
        json_decref(root);
out:
        canopy_graph_result_clear(&res);
        return err;
}

canopy_err canopy_graph_find(canopy_graph *gc, canopy_graph_kind kind, const char *prop, const char *value,
                             char *ret_id, char **ret_json, canopy_graph_error *ei) {
        return canopy_graph_find_select(gc, kind, prop, value, NULL, ret_id, ret_json, ei);
}

/* After an ObjectConflict on a create: who holds the conflicting value?
 * 1 when it is our own object (its match_prop is match_value: an earlier
 * create of ours), id set; 0 when another object holds it (a real
 * conflict); -1 when nothing is found (not visible yet, or a value the
 * look-up cannot take). */
static int conflict_holder(canopy_graph *gc, canopy_graph_kind kind, const canopy_graph_error *ei,
                           const char *match_prop, const char *match_value, char *id) {
        if (!ei || !ei->conflict_property[0] || !ei->conflict_value[0] || !prop_name_ok(ei->conflict_property))
                return -1;
        char sel[128], *json = NULL;
        snprintf(sel, sizeof(sel), "id,%s", match_prop);
        char oid[CANOPY_GRAPH_ID_MAX];
        if (canopy_graph_find_select(gc, kind, ei->conflict_property, ei->conflict_value, sel, oid, &json, NULL))
                return -1;
        json_t *o = json_loads(json, 0, NULL);
        const char *v = json_string_value(json_object_get(o, match_prop));
        /* immutable ids are Base64 (case matters); mail nicknames are not */
        int ours = !v                                             ? -1
                   : !strcmp(match_prop, "onPremisesImmutableId") ? !strcmp(v, match_value)
                                                                  : !strcasecmp(v, match_value);
        if (ours == 1)
                graph_strlcpy(id, oid, CANOPY_GRAPH_ID_MAX);
        json_decref(o);
        free(json);
        return ours;
}

/* For groups: a security group unless the body says otherwise. */
static canopy_err group_body(const char *body, char **ret) {
        json_t *o = json_loads(body, 0, NULL);
        if (!json_is_object(o)) {
                json_decref(o);
                return CANOPY_ERR_INVALID_ARG;
        }
        if (!json_object_get(o, "securityEnabled"))
                json_object_set_new(o, "securityEnabled", json_true());
        if (!json_object_get(o, "mailEnabled"))
                json_object_set_new(o, "mailEnabled", json_false());
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!s)
                return CANOPY_ERR_NOMEM;
        *ret = s;
        return CANOPY_OK;
}

canopy_err canopy_graph_create(canopy_graph *gc, canopy_graph_kind kind, const char *body,
                               bool intent_recorded, const char *match_prop, const char *match_value,
                               char *ret_id, bool *ret_matched, canopy_graph_error *ei) {
        if (!gc || !body || !ret_id || (intent_recorded && (!match_prop || !match_value)))
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        char id[CANOPY_GRAPH_ID_MAX];
        char *gbody = NULL;
        canopy_graph_result res = {0};
        canopy_err err;
        if (intent_recorded) {
                /* a previous attempt may have created it: hard-match first */
                err = canopy_graph_find(gc, kind, match_prop, match_value, id, NULL, ei);
                if (!err)
                        goto matched;
                if (err != CANOPY_ERR_GRAPH_NOT_FOUND)
                        return err;
                canopy_graph_error_clear(ei);
        }
        if (kind == CANOPY_GRAPH_GROUP) {
                err = group_body(body, &gbody);
                if (err)
                        return err;
                body = gbody;
        }
        err = canopy_graph_request(gc, "POST", kind_path(kind), body, CANOPY_GRAPH_F_WRITE, &res, ei);
        if (err == CANOPY_ERR_GRAPH_CONFLICT && intent_recorded) {
                /* our own earlier create may not be visible to the $filter
                 * yet (replication): look again, a few times, before
                 * reporting a conflict */
                canopy_graph_error saved;
                if (ei)
                        saved = *ei;
                /* Another object holds the value: a real conflict, reported
                 * at once (looking again would only stall the export). */
                int holder = conflict_holder(gc, kind, ei, match_prop, match_value, id);
                if (holder == 1) {
                        free(gbody);
                        canopy_graph_result_clear(&res);
                        goto matched;
                }
                for (int i = 1; holder < 0 && i <= gc->conf.consistency_retries; i++) {
                        canopy_err ferr = canopy_graph_find(gc, kind, match_prop, match_value, id, NULL, NULL);
                        if (!ferr) {
                                free(gbody);
                                canopy_graph_result_clear(&res);
                                goto matched;
                        }
                        if (ferr != CANOPY_ERR_GRAPH_NOT_FOUND)
                                break;
                        graph_sleep_ms(graph_backoff_ms(gc, i));
                }
                if (ei)
                        *ei = saved;
        }
        if (!err)
                err = id_from_body(&res, id);
        free(gbody);
        canopy_graph_result_clear(&res);
        if (err)
                return err;
        graph_strlcpy(ret_id, id, CANOPY_GRAPH_ID_MAX);
        if (ret_matched)
                *ret_matched = false;
        return CANOPY_OK;
matched:
        graph_strlcpy(ret_id, id, CANOPY_GRAPH_ID_MAX);
        if (ret_matched)
                *ret_matched = true;
        canopy_graph_error_clear(ei);
        return CANOPY_OK;
}

canopy_err canopy_graph_update(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *patch,
                               canopy_graph_error *ei) {
        if (!gc)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        if (!patch)
                return CANOPY_OK;
        json_t *o = json_loads(patch, 0, NULL);
        if (!json_is_object(o)) {
                json_decref(o);
                return CANOPY_ERR_INVALID_ARG;
        }
        size_t nprops = json_object_size(o);
        json_decref(o);
        if (nprops == 0)
                return CANOPY_OK;
        char path[512];
        canopy_err err = obj_path(kind, id, NULL, path, sizeof(path));
        if (err)
                return err;
        return canopy_graph_request(gc, "PATCH", path, patch, CANOPY_GRAPH_F_WRITE | CANOPY_GRAPH_F_FRESH, NULL,
                                    ei);
}

static canopy_err delete_obj(canopy_graph *gc, canopy_graph_kind kind, const char *id, unsigned flags,
                             canopy_graph_error *ei) {
        if (!gc)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        char path[512];
        canopy_err err = obj_path(kind, id, NULL, path, sizeof(path));
        if (err)
                return err;
        return canopy_graph_request(gc, "DELETE", path, NULL, CANOPY_GRAPH_F_WRITE | flags, NULL, ei);
}

canopy_err canopy_graph_delete(canopy_graph *gc, canopy_graph_kind kind, const char *id, canopy_graph_error *ei) {
        return delete_obj(gc, kind, id, 0, ei);
}

canopy_err canopy_graph_delete_fresh(canopy_graph *gc, canopy_graph_kind kind, const char *id,
                                     canopy_graph_error *ei) {
        /* A replica that has not seen the create answers 404 like one that
         * has seen a delete: only the consistency retries tell them apart. */
        return delete_obj(gc, kind, id, CANOPY_GRAPH_F_FRESH, ei);
}

canopy_err canopy_graph_restore(canopy_graph *gc, const char *id, canopy_graph_error *ei) {
        if (!gc || !id || !*id)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        char enc[256], path[512];
        canopy_err err = graph_pct_encode(id, enc, sizeof(enc));
        if (err)
                return err;
        snprintf(path, sizeof(path), "/directory/deletedItems/%s/restore", enc);
        /* a just-deleted object can take a moment to show in deleted items */
        return canopy_graph_request(gc, "POST", path, NULL, CANOPY_GRAPH_F_WRITE | CANOPY_GRAPH_F_FRESH, NULL, ei);
}

static canopy_err get_obj(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *select,
                          unsigned flags, char **ret_json, canopy_graph_error *ei) {
        if (!gc || !ret_json)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        char path[1024], sel[512] = "";
        if (select) {
                /* $select takes property names and commas only */
                for (const char *p = select; *p; p++)
                        if (!isalnum((unsigned char)*p) && *p != ',' && *p != '_')
                                return CANOPY_ERR_INVALID_ARG;
                int n = snprintf(sel, sizeof(sel), "?$select=%s", select);
                if (n < 0 || (size_t)n >= sizeof(sel))
                        return CANOPY_ERR_LIMIT;
        }
        canopy_err err = obj_path(kind, id, sel, path, sizeof(path));
        if (err)
                return err;
        canopy_graph_result res = {0};
        err = canopy_graph_request(gc, "GET", path, NULL, flags, &res, ei);
        if (!err) {
                if (!res.body) {
                        err = CANOPY_ERR_GRAPH_PROTOCOL;
                } else {
                        *ret_json = res.body;
                        res.body = NULL;
                }
        }
        canopy_graph_result_clear(&res);
        return err;
}

canopy_err canopy_graph_get(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *select,
                            char **ret_json, canopy_graph_error *ei) {
        return get_obj(gc, kind, id, select, 0, ret_json, ei);
}

canopy_err canopy_graph_get_fresh(canopy_graph *gc, canopy_graph_kind kind, const char *id, const char *select,
                                  char **ret_json, canopy_graph_error *ei) {
        return get_obj(gc, kind, id, select, CANOPY_GRAPH_F_FRESH, ret_json, ei);
}

void canopy_graph_strv_free(char **v) {
        for (size_t i = 0; v && v[i]; i++)
                free(v[i]);
        free(v);
}

canopy_err canopy_graph_domains(canopy_graph *gc, char ***ret_verified, size_t *ret_n, char **ret_initial,
                                canopy_graph_error *ei) {
        if (!gc || !ret_verified || !ret_n || !ret_initial)
                return CANOPY_ERR_INVALID_ARG;
        *ret_verified = NULL;
        *ret_n = 0;
        *ret_initial = NULL;
        canopy_graph_error_clear(ei);
        canopy_graph_result res = {0};
        canopy_err err = canopy_graph_request(gc, "GET", "/domains?$select=id,isVerified,isInitial", NULL, 0, &res, ei);
        json_t *root = !err && res.body ? json_loadb(res.body, res.body_len, 0, NULL) : NULL;
        json_t *arr = json_object_get(root, "value");
        if (!err && !json_is_array(arr))
                err = CANOPY_ERR_GRAPH_PROTOCOL;
        size_t n = err ? 0 : json_array_size(arr), k = 0;
        char **v = err ? NULL : calloc(n + 1, sizeof(*v));
        if (!err && !v)
                err = CANOPY_ERR_NOMEM;
        for (size_t i = 0; !err && i < n; i++) {
                json_t *d = json_array_get(arr, i);
                const char *id = json_string_value(json_object_get(d, "id"));
                if (!id || !json_is_true(json_object_get(d, "isVerified")))
                        continue;
                if (!(v[k++] = strdup(id)))
                        err = CANOPY_ERR_NOMEM;
                if (!err && json_is_true(json_object_get(d, "isInitial")) && !*ret_initial &&
                    !(*ret_initial = strdup(id)))
                        err = CANOPY_ERR_NOMEM;
        }
        json_decref(root);
        canopy_graph_result_clear(&res);
        if (err) {
                canopy_graph_strv_free(v);
                free(*ret_initial);
                *ret_initial = NULL;
                return err;
        }
        *ret_verified = v;
        *ret_n = k;
        return CANOPY_OK;
}

canopy_err canopy_graph_user_create(canopy_graph *gc, const char *body, const char *immutable_id,
                                    bool intent_recorded, char *ret_id, bool *ret_matched,
                                    canopy_graph_error *ei) {
        return canopy_graph_create(gc, CANOPY_GRAPH_USER, body, intent_recorded, "onPremisesImmutableId",
                                   immutable_id, ret_id, ret_matched, ei);
}

canopy_err canopy_graph_user_find(canopy_graph *gc, const char *immutable_id, char *ret_id, char **ret_json,
                                  canopy_graph_error *ei) {
        return canopy_graph_find(gc, CANOPY_GRAPH_USER, "onPremisesImmutableId", immutable_id, ret_id, ret_json,
                                 ei);
}

/* ---- members ---- */

static bool already_exists(const canopy_graph_error *ei) {
        if (strstr(ei->message, "already exist"))
                return true;
        for (int i = 0; i < ei->ndetails; i++)
                if (strstr(ei->details[i].message, "already exist"))
                        return true;
        return false;
}

static char *member_ref(canopy_graph *gc, const char *mid) {
        char enc[256];
        if (graph_pct_encode(mid, enc, sizeof(enc)))
                return NULL;
        size_t n = strlen(gc->graph_base) + strlen(enc) + 24;
        char *s = malloc(n);
        if (s)
                snprintf(s, n, "%s/directoryObjects/%s", gc->graph_base, enc);
        return s;
}

/* Add members one by one through POST /groups/{id}/members/$ref. */
static canopy_err add_one_by_one(canopy_graph *gc, const char *gpath, const char *const *ids, size_t n,
                                 canopy_err *errs, canopy_graph_error *eis) {
        canopy_graph_req *reqs = calloc(n, sizeof(*reqs));
        char **bodies = calloc(n, sizeof(*bodies));
        char path[600];
        snprintf(path, sizeof(path), "%s/members/$ref", gpath);
        canopy_err err = CANOPY_OK;
        if (!reqs || !bodies) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                char *ref = member_ref(gc, ids[i]);
                json_t *o = ref ? json_pack("{s:s}", "@odata.id", ref) : NULL;
                bodies[i] = o ? json_dumps(o, JSON_COMPACT) : NULL;
                json_decref(o);
                free(ref);
                if (!bodies[i]) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                reqs[i].method = "POST";
                reqs[i].path = path;
                reqs[i].body = bodies[i];
                reqs[i].flags = CANOPY_GRAPH_F_WRITE | CANOPY_GRAPH_F_FRESH;
        }
        canopy_graph_run(gc, reqs, n);
        for (size_t i = 0; i < n; i++) {
                canopy_err e = reqs[i].err;
                if (e && reqs[i].ei.http_status == 400 && already_exists(&reqs[i].ei))
                        e = CANOPY_OK;
                errs[i] = e;
                eis[i] = reqs[i].ei;
        }
out:
        if (reqs)
                canopy_graph_req_clear(reqs, n);
        for (size_t i = 0; bodies && i < n; i++)
                free(bodies[i]);
        free(bodies);
        free(reqs);
        return err;
}

canopy_err canopy_graph_members_add(canopy_graph *gc, const char *group_id, const char *const *member_ids,
                                    size_t n, canopy_err *ret_errs, canopy_graph_error *ei) {
        if (!gc || (!member_ids && n))
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        if (n == 0)
                return CANOPY_OK;
        char gpath[512];
        canopy_err err = obj_path(CANOPY_GRAPH_GROUP, group_id, NULL, gpath, sizeof(gpath));
        if (err)
                return err;
        size_t nchunks = (n + CANOPY_GRAPH_MEMBERS_PER_PATCH - 1) / CANOPY_GRAPH_MEMBERS_PER_PATCH;
        canopy_graph_req *reqs = calloc(nchunks, sizeof(*reqs));
        char **bodies = calloc(nchunks, sizeof(*bodies));
        canopy_err *errs = calloc(n, sizeof(*errs));
        canopy_graph_error *eis = calloc(n, sizeof(*eis));
        if (!reqs || !bodies || !errs || !eis) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (size_t c = 0; c < nchunks; c++) {
                json_t *arr = json_array();
                size_t lo = c * CANOPY_GRAPH_MEMBERS_PER_PATCH;
                size_t hi = lo + CANOPY_GRAPH_MEMBERS_PER_PATCH < n ? lo + CANOPY_GRAPH_MEMBERS_PER_PATCH : n;
                for (size_t i = lo; arr && i < hi; i++) {
                        char *ref = member_ref(gc, member_ids[i]);
                        if (!ref || json_array_append_new(arr, json_string(ref))) {
                                free(ref);
                                json_decref(arr);
                                arr = NULL;
                                break;
                        }
                        free(ref);
                }
                json_t *o = arr ? json_pack("{s:o}", "members@odata.bind", arr) : NULL;
                bodies[c] = o ? json_dumps(o, JSON_COMPACT) : NULL;
                json_decref(o);
                if (!bodies[c]) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                reqs[c].method = "PATCH";
                reqs[c].path = gpath;
                reqs[c].body = bodies[c];
                /* F_FRESH: a member (or the group) just created may not be
                 * visible yet: "referenced objects do not exist" is retried */
                reqs[c].flags = CANOPY_GRAPH_F_WRITE | CANOPY_GRAPH_F_FRESH;
        }
        canopy_graph_run(gc, reqs, nchunks);
        for (size_t c = 0; c < nchunks; c++) {
                size_t lo = c * CANOPY_GRAPH_MEMBERS_PER_PATCH;
                size_t hi = lo + CANOPY_GRAPH_MEMBERS_PER_PATCH < n ? lo + CANOPY_GRAPH_MEMBERS_PER_PATCH : n;
                canopy_err cerr = reqs[c].err;
                bool exists = cerr && reqs[c].ei.http_status == 400 && already_exists(&reqs[c].ei);
                if (!cerr || (exists && hi - lo == 1)) {
                        for (size_t i = lo; i < hi; i++)
                                errs[i] = CANOPY_OK;
                } else if (hi - lo > 1 && (reqs[c].ei.http_status == 400 ||
                                           (reqs[c].ei.http_status == 404 && !strstr(reqs[c].ei.message, group_id)))) {
                        /* the chunk failed as a whole because of some of its
                         * members (already there, missing, not allowed; a
                         * missing member may be a 404 naming it): find out
                         * which, one by one. A 404 naming the group is the
                         * group itself missing: no point asking per member. */
                        err = add_one_by_one(gc, gpath, member_ids + lo, hi - lo, errs + lo, eis + lo);
                        if (err)
                                goto out;
                } else {
                        for (size_t i = lo; i < hi; i++) {
                                errs[i] = cerr;
                                eis[i] = reqs[c].ei;
                        }
                }
        }
        err = CANOPY_OK;
        for (size_t i = 0; i < n; i++) {
                if (ret_errs)
                        ret_errs[i] = errs[i];
                if (errs[i] && !err) {
                        err = errs[i];
                        if (ei)
                                *ei = eis[i];
                }
        }
out:
        if (reqs)
                canopy_graph_req_clear(reqs, nchunks);
        for (size_t c = 0; bodies && c < nchunks; c++)
                free(bodies[c]);
        free(bodies);
        free(reqs);
        free(errs);
        free(eis);
        return err;
}

canopy_err canopy_graph_members_remove(canopy_graph *gc, const char *group_id, const char *const *member_ids,
                                       size_t n, canopy_err *ret_errs, canopy_graph_error *ei) {
        if (!gc || (!member_ids && n))
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        if (n == 0)
                return CANOPY_OK;
        canopy_err err = CANOPY_OK;
        canopy_graph_req *reqs = calloc(n, sizeof(*reqs));
        char **paths = calloc(n, sizeof(*paths));
        if (!reqs || !paths) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                char enc[256], p[600];
                err = graph_pct_encode(member_ids[i] ? member_ids[i] : "", enc, sizeof(enc));
                if (!err)
                        err = obj_path(CANOPY_GRAPH_GROUP, group_id, NULL, p, sizeof(p) - 300);
                if (err)
                        goto out;
                size_t len = strlen(p) + strlen(enc) + 16;
                paths[i] = malloc(len);
                if (!paths[i]) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                snprintf(paths[i], len, "%s/members/%s/$ref", p, enc);
                reqs[i].method = "DELETE";
                reqs[i].path = paths[i];
                reqs[i].flags = CANOPY_GRAPH_F_WRITE;
        }
        canopy_graph_run(gc, reqs, n);
        for (size_t i = 0; i < n; i++) {
                canopy_err e = reqs[i].err;
                if (e == CANOPY_ERR_GRAPH_NOT_FOUND)
                        e = CANOPY_OK; /* not a member (any more): the goal holds */
                if (ret_errs)
                        ret_errs[i] = e;
                if (e && !err) {
                        err = e;
                        if (ei)
                                *ei = reqs[i].ei;
                }
        }
out:
        if (reqs)
                canopy_graph_req_clear(reqs, n);
        for (size_t i = 0; paths && i < n; i++)
                free(paths[i]);
        free(paths);
        free(reqs);
        return err;
}

canopy_err canopy_graph_members_list(canopy_graph *gc, const char *group_id, size_t max_ids, char ***ret_ids,
                                     size_t *ret_n, canopy_graph_error *ei) {
        if (!gc || !ret_ids || !ret_n)
                return CANOPY_ERR_INVALID_ARG;
        canopy_graph_error_clear(ei);
        if (!max_ids)
                max_ids = MEMBERS_LIST_DEFAULT_MAX;
        char first[600];
        canopy_err err = obj_path(CANOPY_GRAPH_GROUP, group_id, "/members?$select=id&$top=999", first,
                                  sizeof(first));
        if (err)
                return err;
        char **ids = NULL;
        size_t n = 0, cap = 0;
        char *next = strdup(first);
        int pages = 0;
        while (next && !err) {
                canopy_graph_result res = {0};
                err = canopy_graph_request(gc, "GET", next, NULL, 0, &res, ei);
                free(next);
                next = NULL;
                if (err) {
                        canopy_graph_result_clear(&res);
                        break;
                }
                json_t *root = json_loadb(res.body ? res.body : "", res.body_len, 0, NULL);
                json_t *val = json_object_get(root, "value");
                if (!json_is_array(val)) {
                        err = CANOPY_ERR_GRAPH_PROTOCOL;
                } else {
                        size_t i;
                        json_t *o;
                        json_array_foreach(val, i, o) {
                                const char *id = json_string_value(json_object_get(o, "id"));
                                if (!id)
                                        continue;
                                if (n >= max_ids) {
                                        err = CANOPY_ERR_LIMIT;
                                        break;
                                }
                                if (n == cap) {
                                        size_t nc = cap ? cap * 2 : 64;
                                        char **ni = realloc(ids, nc * sizeof(*ni));
                                        if (!ni) {
                                                err = CANOPY_ERR_NOMEM;
                                                break;
                                        }
                                        ids = ni;
                                        cap = nc;
                                }
                                if (!(ids[n] = strdup(id))) {
                                        err = CANOPY_ERR_NOMEM;
                                        break;
                                }
                                n++;
                        }
                        const char *nl = json_string_value(json_object_get(root, "@odata.nextLink"));
                        if (!err && nl) {
                                if (++pages > 10000)
                                        err = CANOPY_ERR_LIMIT;
                                else if (!(next = strdup(nl)))
                                        err = CANOPY_ERR_NOMEM;
                        }
                }
                json_decref(root);
                canopy_graph_result_clear(&res);
        }
        free(next);
        if (err) {
                canopy_graph_ids_free(ids, n);
                return err;
        }
        *ret_ids = ids;
        *ret_n = n;
        return CANOPY_OK;
}
