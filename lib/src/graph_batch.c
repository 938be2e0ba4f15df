/* graph_batch.c: JSON $batch for the Graph client.
 *
 * Requests go out 20 per POST /$batch, the batches concurrently through the
 * engine. Responses come back in any order and are matched by id. Items that
 * failed in a retriable way (429/503/504, 5xx, fresh-object 404s) are sent
 * again in a later round, after the longest Retry-After among them (else
 * after an exponential backoff), until max_retries rounds or max_retry_ms. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/log.h"
#include "graph_int.h"

static bool is_write(const canopy_graph_req *r) {
        if (r->flags & CANOPY_GRAPH_F_READ)
                return false;
        return (r->flags & CANOPY_GRAPH_F_WRITE) || strcmp(r->method, "GET") != 0;
}

/* Build the body of one $batch from items idx[0..k). */
static canopy_err batch_body(canopy_graph_req *reqs, const size_t *idx, size_t k, char **ret) {
        json_t *arr = json_array();
        json_t *root = json_pack("{s:o}", "requests", arr);
        if (!arr || !root) {
                json_decref(root);
                return CANOPY_ERR_NOMEM;
        }
        for (size_t j = 0; j < k; j++) {
                canopy_graph_req *r = &reqs[idx[j]];
                char id[24];
                snprintf(id, sizeof(id), "%zu", idx[j]);
                json_t *item = json_pack("{s:s, s:s, s:s}", "id", id, "method", r->method, "url", r->path);
                if (!item) {
                        json_decref(root);
                        return CANOPY_ERR_NOMEM;
                }
                if (r->body) {
                        json_t *b = json_loads(r->body, 0, NULL);
                        if (!b) {
                                json_decref(item);
                                json_decref(root);
                                return CANOPY_ERR_INVALID_ARG;
                        }
                        json_object_set_new(item, "body", b);
                        json_object_set_new(item, "headers",
                                            json_pack("{s:s}", "Content-Type", "application/json"));
                }
                json_array_append_new(arr, item);
        }
        char *s = json_dumps(root, JSON_COMPACT);
        json_decref(root);
        if (!s)
                return CANOPY_ERR_NOMEM;
        *ret = s;
        return CANOPY_OK;
}

/* Header value of an inner response, case-insensitive name. */
static const char *inner_header(json_t *resp, const char *name) {
        json_t *h = json_object_get(resp, "headers");
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v) {
                if (!strcasecmp(k, name) && json_is_string(v))
                        return json_string_value(v);
        }
        return NULL;
}

canopy_err graph_batch_apply(canopy_graph *gc, canopy_graph_req *reqs, size_t n, const size_t *pend, size_t k,
                             graph_batch_item *st, const char *body_text, size_t body_len, const char *request_id,
                             const char *client_request_id, int64_t *max_ra, bool *any_retry) {
        json_t *root = json_loadb(body_text, body_len, 0, NULL);
        json_t *resps = json_object_get(root, "responses");
        if (!json_is_array(resps)) {
                json_decref(root);
                return CANOPY_ERR_GRAPH_PROTOCOL;
        }
        /* every item of this batch starts as "no answer" */
        for (size_t j = 0; j < k; j++)
                st[pend[j]].attempts++;
        bool *seen = calloc(k, sizeof(*seen));
        size_t ri;
        json_t *resp;
        json_array_foreach(resps, ri, resp) {
                const char *sid = json_string_value(json_object_get(resp, "id"));
                char *end = NULL;
                unsigned long long id = sid ? strtoull(sid, &end, 10) : 0;
                if (!sid || !end || *end || id >= n)
                        continue;
                size_t j;
                for (j = 0; j < k && pend[j] != id; j++)
                        ;
                if (j == k || (seen && seen[j]))
                        continue;
                if (seen)
                        seen[j] = true;
                canopy_graph_req *r = &reqs[id];
                long status = (long)json_integer_value(json_object_get(resp, "status"));
                json_t *body = json_object_get(resp, "body");
                canopy_graph_result_clear(&r->res);
                canopy_graph_error_clear(&r->ei);
                r->res.status = status;
                r->res.attempts = st[id].attempts;
                graph_strlcpy(r->res.request_id, request_id, sizeof(r->res.request_id));
                graph_strlcpy(r->res.client_request_id, client_request_id,
                              sizeof(r->res.client_request_id));
                if (body && !json_is_null(body)) {
                        r->res.body = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
                        r->res.body_len = r->res.body ? strlen(r->res.body) : 0;
                }
                if (status >= 200 && status < 300) {
                        r->err = CANOPY_OK;
                        st[id].pending = false;
                        continue;
                }
                r->ei.http_status = status;
                r->ei.attempts = st[id].attempts;
                if (r->res.body)
                        canopy_graph_error_parse(r->res.body, r->res.body_len, &r->ei);
                r->ei.http_status = status;
                if (!r->ei.request_id[0])
                        graph_strlcpy(r->ei.request_id, request_id,
                                      sizeof(r->ei.request_id));
                graph_strlcpy(r->ei.client_request_id, client_request_id,
                              sizeof(r->ei.client_request_id));
                bool retriable = false;
                r->err = graph_classify(gc, status, r->flags, &r->ei, &retriable);
                if (r->err == CANOPY_ERR_GRAPH_CONFLICT)
                        graph_conflict_fill(&r->ei, r->body);
                if (status == 429)
                        gc->stats.throttled++;
                else if (status == 503 || status == 504)
                        gc->stats.unavailable++;
                bool consistency = (r->flags & CANOPY_GRAPH_F_FRESH) &&
                                   graph_is_missing_ref(status, &r->ei);
                if (retriable && consistency)
                        retriable = st[id].consistency_tries++ < gc->conf.consistency_retries;
                else if (retriable)
                        retriable = st[id].attempts <= gc->conf.max_retries;
                if (retriable && (r->flags & CANOPY_GRAPH_F_NO_RETRY))
                        retriable = false;
                const char *ra = inner_header(resp, "Retry-After");
                int64_t ms;
                if (ra && canopy_graph_retry_after_parse(ra, graph_epoch_ms(), &ms) == CANOPY_OK) {
                        r->ei.retry_after_ms = ms;
                        if (retriable && ms > *max_ra)
                                *max_ra = ms;
                }
                st[id].pending = retriable;
                *any_retry |= retriable;
        }
        /* items without an answer: retry them like a 503 */
        for (size_t j = 0; j < k; j++) {
                if (seen && seen[j])
                        continue;
                size_t id = pend[j];
                reqs[id].err = CANOPY_ERR_GRAPH_PROTOCOL;
                reqs[id].ei.http_status = 0;
                graph_strlcpy(reqs[id].ei.code, "canopy_missing_batch_response",
                              sizeof(reqs[id].ei.code));
                st[id].pending = st[id].attempts <= gc->conf.max_retries;
                *any_retry |= st[id].pending;
        }
        free(seen);
        json_decref(root);
        return CANOPY_OK;
}

canopy_err canopy_graph_batch(canopy_graph *gc, canopy_graph_req *reqs, size_t n) {
        if (!gc || (!reqs && n))
                return CANOPY_ERR_INVALID_ARG;
        if (n == 0)
                return CANOPY_OK;
        canopy_err err = CANOPY_OK;
        graph_batch_item *st = calloc(n, sizeof(*st));
        size_t *pend = calloc(n, sizeof(*pend));
        size_t nb_max = n; /* at most one batch per item (small budgets) */
        graph_xfer *xs = calloc(nb_max, sizeof(*xs));
        char **bodies = calloc(nb_max, sizeof(*bodies));
        canopy_graph_result *bres = calloc(nb_max, sizeof(*bres));
        canopy_graph_error *bei = calloc(nb_max, sizeof(*bei));
        if (!st || !pend || !xs || !bodies || !bres || !bei) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                canopy_graph_result_clear(&reqs[i].res);
                canopy_graph_error_clear(&reqs[i].ei);
                reqs[i].err = CANOPY_OK;
                if (!reqs[i].method || !reqs[i].path || reqs[i].path[0] != '/') {
                        reqs[i].err = CANOPY_ERR_INVALID_ARG;
                        continue;
                }
                st[i].pending = true;
        }
        /* a batch takes its write items from the budget at once: never more
         * than the whole budget */
        size_t per = GRAPH_BATCH_MAX;
        if (gc->budget && gc->conf.budget_writes < (int64_t)per)
                per = (size_t)gc->conf.budget_writes;
        int64_t started = graph_now_ms();
        for (int round = 1;; round++) {
                size_t np = 0;
                for (size_t i = 0; i < n; i++)
                        if (st[i].pending)
                                pend[np++] = i;
                if (np == 0)
                        break;
                size_t nb = (np + per - 1) / per;
                memset(xs, 0, nb * sizeof(*xs));
                for (size_t b = 0; b < nb; b++) {
                        size_t lo = b * per, k = np - lo < per ? np - lo : per;
                        canopy_err berr = batch_body(reqs, pend + lo, k, &bodies[b]);
                        int64_t weight = 0;
                        for (size_t j = 0; j < k; j++)
                                weight += is_write(&reqs[pend[lo + j]]) ? 1 : 0;
                        xs[b].method = "POST";
                        xs[b].body = bodies[b];
                        xs[b].flags = CANOPY_GRAPH_F_WRITE;
                        xs[b].weight = weight;
                        xs[b].res = &bres[b];
                        xs[b].ei = &bei[b];
                        if (!berr)
                                berr = graph_url(gc, "/$batch", &xs[b].url);
                        if (berr) {
                                /* a bad item body fails the items of this chunk */
                                for (size_t j = 0; j < k; j++) {
                                        reqs[pend[lo + j]].err = berr;
                                        st[pend[lo + j]].pending = false;
                                }
                                xs[b].state = 2;
                        }
                        gc->stats.batches++;
                }
                graph_engine_run(gc, xs, nb);

                int64_t max_ra = -1;
                bool any_retry = false;
                for (size_t b = 0; b < nb; b++) {
                        size_t lo = b * per, k = np - lo < per ? np - lo : per;
                        if (!xs[b].url)
                                continue;
                        if (!xs[b].err)
                                xs[b].err = graph_batch_apply(gc, reqs, n, pend + lo, k, st,
                                                              bres[b].body ? bres[b].body : "", bres[b].body_len,
                                                              bres[b].request_id, bres[b].client_request_id, &max_ra,
                                                              &any_retry);
                        if (xs[b].err) {
                                /* the batch itself failed after its own retries */
                                for (size_t j = 0; j < k; j++) {
                                        canopy_graph_req *r = &reqs[pend[lo + j]];
                                        r->err = xs[b].err;
                                        r->ei = bei[b];
                                        r->res.status = bres[b].status;
                                        st[pend[lo + j]].pending = false;
                                }
                        }
                }
                for (size_t b = 0; b < nb; b++) {
                        free(xs[b].url);
                        xs[b].url = NULL;
                        free(bodies[b]);
                        bodies[b] = NULL;
                        canopy_graph_result_clear(&bres[b]);
                }
                if (!any_retry)
                        break;
                int64_t wait = max_ra >= 0 ? max_ra : graph_backoff_ms(gc, round);
                if (graph_now_ms() - started + wait > gc->conf.max_retry_ms) {
                        /* out of time: the items keep their last error */
                        break;
                }
                CANOPY_DEBUG(GRAPH_MOD, "$batch round %d: retrying failed items in %lld ms", round,
                             (long long)wait);
                graph_sleep_ms(wait);
        }
        for (size_t i = 0; i < n; i++) {
                if (reqs[i].err && !err)
                        err = reqs[i].err;
        }
out:
        free(st);
        free(pend);
        free(xs);
        free(bodies);
        free(bres);
        free(bei);
        return err;
}
