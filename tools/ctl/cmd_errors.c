/* cmd_errors.c: `canopyctl errors`, the export errors set (conflicts and
 * objects Entra refused) and retries on request.
 *
 * The export stage keeps one entry per metaverse object it could not export
 * (docs/WORKERS.md). An object is retried on its next change; `retry` asks for
 * it now, after the cause was fixed outside the directory (the other object
 * renamed in Entra, a licence added, ...): one REPLAY mv event per object, so
 * the export stage of whichever worker owns its partition exports it again.
 * The entry goes when that export succeeds. It reads the workers'
 * configuration file for Redis and Kafka. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "canopy/avro.h"
#include "canopy/conf_worker.h"
#include "canopy/config.h"
#include "canopy/kafka.h"
#include "canopy/state.h"
#include "ctl.h"

#define MAX_SETS 64

static void errors_usage(void) {
        printf("usage: canopyctl errors -c WORKER.yaml [--set key=value]... [list [--json]]\n"
               "       canopyctl errors -c WORKER.yaml [--set key=value]... retry (MV_ID... | --all)\n"
               "list:  the objects the export stage could not export: metaverse id, object type, error code,\n"
               "       the conflicting property and value, the other Entra object, age and message\n"
               "       (--json: one JSON object per line).\n"
               "retry: export them again now (after the cause was fixed in Entra); an object is otherwise\n"
               "       retried on its next change. The entry goes when the export succeeds.\n"
               "The workers' configuration file gives Redis and Kafka (environment overrides apply).\n");
}

static const char *jstr(const json_t *o, const char *k) {
        const char *s = json_string_value(json_object_get(o, k));
        return s && *s ? s : NULL;
}

static void fmt_age(int64_t ms, char *out, size_t cap) {
        if (ms < 0)
                ms = 0;
        int64_t s = ms / 1000;
        if (s < 120)
                snprintf(out, cap, "%llds", (long long)s);
        else if (s < 7200)
                snprintf(out, cap, "%lldm", (long long)(s / 60));
        else if (s < 172800)
                snprintf(out, cap, "%lldh", (long long)(s / 3600));
        else
                snprintf(out, cap, "%lldd", (long long)(s / 86400));
}

typedef struct entry {
        char *id, *json;
} entry;

static int entry_cmp(const void *a, const void *b) {
        return strcmp(((const entry *)a)->id, ((const entry *)b)->id);
}

/* Every entry of the errors set, sorted by id: ids[i] -> jsons[i] (owned; strv). */
static canopy_err read_all(canopy_state *st, char ***ids, char ***jsons, size_t *n) {
        uint64_t cur = 0;
        size_t cap = 0;
        *ids = NULL;
        *jsons = NULL;
        *n = 0;
        canopy_err err;
        do {
                char **pi = NULL, **pj = NULL;
                size_t pn = 0;
                err = canopy_state_error_scan(st, &cur, &pi, &pj, &pn);
                if (err)
                        break;
                if (*n + pn + 1 > cap) {
                        size_t nc = (*n + pn + 1) * 2;
                        char **a = realloc(*ids, nc * sizeof(*a));
                        char **b = a ? realloc(*jsons, nc * sizeof(*b)) : NULL;
                        if (a)
                                *ids = a;
                        if (b)
                                *jsons = b;
                        if (!a || !b) {
                                canopy_state_strv_free(pi);
                                canopy_state_strv_free(pj);
                                err = CANOPY_ERR_NOMEM;
                                break;
                        }
                        cap = nc;
                }
                for (size_t i = 0; i < pn; i++) {
                        (*ids)[*n] = pi[i];
                        (*jsons)[(*n)++] = pj[i];
                }
                (*ids)[*n] = (*jsons)[*n] = NULL;
                free(pi); /* the strings moved */
                free(pj);
        } while (cur);
        /* Sorted by id; HSCAN may give an entry twice (never skips one). */
        entry *e = err || !*n ? NULL : malloc(*n * sizeof(*e));
        if (e) {
                for (size_t i = 0; i < *n; i++)
                        e[i] = (entry){(*ids)[i], (*jsons)[i]};
                qsort(e, *n, sizeof(*e), entry_cmp);
                size_t m = 0;
                for (size_t i = 0; i < *n; i++) {
                        if (m && !strcmp(e[i].id, (*ids)[m - 1])) {
                                free(e[i].id);
                                free(e[i].json);
                                continue;
                        }
                        (*ids)[m] = e[i].id;
                        (*jsons)[m++] = e[i].json;
                }
                (*ids)[m] = (*jsons)[m] = NULL;
                *n = m;
                free(e);
        } else if (!err && *n)
                err = CANOPY_ERR_NOMEM;
        return err;
}

/* read_all, the error printed: 0 on success. */
static int load(canopy_state *st, char ***ids, char ***jsons, size_t *n) {
        canopy_err err = read_all(st, ids, jsons, n);
        if (err) {
                fprintf(stderr, "canopyctl errors: reading the errors set from Redis: %s\n", canopy_err_text(err));
                canopy_state_strv_free(*ids);
                canopy_state_strv_free(*jsons);
                *ids = *jsons = NULL;
        }
        return err != CANOPY_OK;
}

static int do_list(canopy_state *st, bool as_json) {
        char **ids = NULL, **jsons = NULL;
        size_t n = 0;
        if (load(st, &ids, &jsons, &n))
                return 1;
        if (!as_json)
                printf("%-34s %-6s %-18s %-40s %-38s %-5s %s\n", "MV ID", "TYPE", "CODE", "CONFLICT", "OTHER", "AGE",
                       "MESSAGE");
        int64_t now = ctl_now_ms();
        for (size_t i = 0; i < n; i++) {
                json_t *o = json_loads(jsons[i], 0, NULL);
                if (as_json) {
                        json_t *line = json_object();
                        json_object_set_new(line, "mv_id", json_string(ids[i]));
                        json_object_set(line, "error", o ? o : json_string(jsons[i]));
                        char *s = json_dumps(line, JSON_COMPACT | JSON_SORT_KEYS);
                        if (s)
                                printf("%s\n", s);
                        free(s);
                        json_decref(line);
                } else {
                        char conflict[256] = "-", age[16] = "-";
                        if (jstr(o, "property"))
                                snprintf(conflict, sizeof(conflict), "%s=%s", jstr(o, "property"),
                                         jstr(o, "value") ? jstr(o, "value") : "");
                        json_t *ts = json_object_get(o, "ts");
                        if (json_is_integer(ts))
                                fmt_age(now - json_integer_value(ts), age, sizeof(age));
                        printf("%-34s %-6s %-18s %-40s %-38s %-5s %s\n", ids[i], jstr(o, "type") ? jstr(o, "type") : "-",
                               jstr(o, "code") ? jstr(o, "code") : "?", conflict,
                               jstr(o, "other") ? jstr(o, "other") : "-", age,
                               jstr(o, "message") ? jstr(o, "message") : "");
                }
                json_decref(o);
        }
        if (!as_json)
                printf("%zu object(s) in error\n", n);
        canopy_state_strv_free(ids);
        canopy_state_strv_free(jsons);
        return 0;
}

/* The object type of an entry: recorded with the error, else the metaverse
 * object's, else user. */
static char *type_of(canopy_state *st, const char *id, const char *json) {
        json_t *o = json ? json_loads(json, 0, NULL) : NULL;
        char *t = jstr(o, "type") ? strdup(jstr(o, "type")) : NULL;
        json_decref(o);
        if (t)
                return t;
        canopy_mv_record *mv = NULL;
        if (!canopy_state_mv_get(st, id, &mv) && mv->object_type)
                t = strdup(mv->object_type);
        canopy_mv_record_free(mv);
        return t ? t : strdup("user");
}

static int do_retry(const canopy_worker_conf *conf, canopy_state *st, char **want, size_t nwant, bool all) {
        char **ids = NULL, **jsons = NULL;
        size_t n = 0;
        if (load(st, &ids, &jsons, &n))
                return 1;
        int rc = 0;
        /* Every id asked for must be in the set: a typo is not a retry. */
        bool *pick = calloc(n + 1, sizeof(*pick));
        if (!pick) {
                rc = 1;
                goto out;
        }
        for (size_t w = 0; w < nwant; w++) {
                size_t i = 0;
                while (i < n && strcmp(ids[i], want[w]))
                        i++;
                if (i == n) {
                        fprintf(stderr, "canopyctl errors: %s is not in the errors set (see `canopyctl errors list`)\n",
                                want[w]);
                        rc = 1;
                } else
                        pick[i] = true;
        }
        if (rc)
                goto out;
        size_t npick = 0;
        for (size_t i = 0; i < n; i++)
                npick += all || pick[i];
        if (!npick) {
                printf("no object in error: nothing to retry\n");
                goto out;
        }
        char eb[512];
        canopy_kafka_producer *kp = NULL;
        if (canopy_kafka_producer_new(&conf->kafka, NULL, NULL, &kp, eb, sizeof(eb))) {
                fprintf(stderr, "canopyctl errors: Kafka: %s\n", eb);
                rc = 1;
                goto out;
        }
        size_t sent = 0;
        for (size_t i = 0; i < n && !rc; i++) {
                if (!all && !pick[i])
                        continue;
                char *type = type_of(st, ids[i], jsons[i]);
                canopy_mv_event mv = {0};
                mv.mv_id = ids[i];
                mv.object_type = type ? type : "user";
                mv.reason = CANOPY_MV_REPLAY;
                mv.cause_connector = "canopyctl";
                mv.ts_ms = ctl_now_ms();
                char peb[CANOPY_AVRO_ERRLEN];
                if (canopy_kafka_produce_mv(kp, &mv, NULL, peb, sizeof(peb))) {
                        fprintf(stderr, "canopyctl errors: publishing the retry of %s: %s\n", ids[i], peb);
                        rc = 1;
                } else
                        sent++;
                free(type);
        }
        if (canopy_kafka_producer_flush(kp, 30000)) {
                fprintf(stderr, "canopyctl errors: Kafka did not acknowledge the retries within 30 s\n");
                rc = 1;
        }
        canopy_kafka_producer_free(kp);
        if (!rc)
                printf("retry requested for %zu object(s); `canopyctl errors list` shows what still fails\n", sent);
out:
        free(pick);
        canopy_state_strv_free(ids);
        canopy_state_strv_free(jsons);
        return rc;
}

static int errors_main(int argc, char **argv) {
        const char *path = NULL, *sets[MAX_SETS];
        size_t nsets = 0;
        int i = 0;
        for (; i < argc; i++) {
                if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
                        path = argv[++i];
                else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
                        if (nsets == MAX_SETS) {
                                fprintf(stderr, "canopyctl errors: more than %d --set\n", MAX_SETS);
                                return 2;
                        }
                        sets[nsets++] = argv[++i];
                } else
                        break;
        }
        const char *verb = i < argc ? argv[i++] : "list";
        bool as_json = false, all = false;
        char **ids = argv + i;
        size_t nids = 0;
        for (int j = i; j < argc; j++) {
                if (!strcmp(argv[j], "--json") && !strcmp(verb, "list"))
                        as_json = true;
                else if (!strcmp(argv[j], "--all") && !strcmp(verb, "retry"))
                        all = true;
                else if (argv[j][0] == '-' || strcmp(verb, "retry")) {
                        fprintf(stderr, "canopyctl errors: unexpected argument '%s'\n", argv[j]);
                        errors_usage();
                        return 2;
                } else
                        ids[nids++] = argv[j];
        }
        if (!path) {
                fprintf(stderr, "canopyctl errors: -c WORKER.yaml is required (the workers' configuration)\n");
                return 2;
        }
        if (strcmp(verb, "list") && strcmp(verb, "retry")) {
                fprintf(stderr, "canopyctl errors: unknown action '%s' (list, retry)\n", verb);
                return 2;
        }
        if (!strcmp(verb, "retry") && (all == (nids > 0))) {
                fprintf(stderr, "canopyctl errors: retry takes metaverse ids or --all (one of the two)\n");
                return 2;
        }
        canopy_worker_conf conf;
        if (ctl_worker_conf_load("errors", path, sets, nsets, &conf))
                return 2;
        canopy_state *st = NULL;
        canopy_err err = canopy_state_new(conf.redis_host, (int)conf.redis_port, conf.redis_password, conf.redis_prefix,
                                          (int)conf.redis_timeout_ms, &st);
        int rc;
        if (err) {
                fprintf(stderr, "canopyctl errors: Redis at %s:%lld: %s\n", conf.redis_host, (long long)conf.redis_port,
                        canopy_err_text(err));
                rc = 1;
        } else if (!strcmp(verb, "list"))
                rc = do_list(st, as_json);
        else
                rc = do_retry(&conf, st, ids, nids, all);
        canopy_state_free(st);
        canopy_conf_free(&canopy_conf_worker, &conf);
        return rc;
}

const canopyctl_cmd canopyctl_cmd_errors = {"errors", "export errors (conflicts): list them, retry them on request",
                                            errors_main, errors_usage};
