/* cmd_replay.c: `canopyctl replay`, move the workers' consumer groups back
 * (or forward) to an offset or a time.
 *
 * A replay is how a sync rule change is applied to every object (the join
 * stage reads `changes` again), and how a tenant is brought back to what the
 * directories say (the export stage reads `mv` again): both stages are
 * idempotent, so objects that did not change cost no Graph write
 * (docs/WORKERS.md, Replay). The workers of the stage must be stopped: the
 * command joins the group itself, needs every partition, and refuses (moving
 * nothing) while another member holds one. It reads the workers'
 * configuration file for Kafka and the group ids. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "canopy/conf_worker.h"
#include "canopy/config.h"
#include "canopy/kafka.h"
#include "ctl.h"

#define MAX_SETS 64

static void replay_usage(void) {
        printf("usage: canopyctl replay -c WORKER.yaml [--set key=value]... [--stage join|export|both]\n"
               "                        --to WHEN [--dry-run]\n"
               "Moves the consumer groups of the workers' join stage (topic changes) and/or export stage\n"
               "(topic mv) to WHEN; the workers then read again from there. Stop every worker of the\n"
               "stage first: the command refuses, and moves nothing, while a group still has members.\n"
               "WHEN: beginning | end | a time, 2026-12-08T10:30:00Z (or +01:00), @EPOCH_MS, or -30m /\n"
               "      -2h / -1d (that long ago): the first message at or after that time.\n"
               "--stage: both (default), join or export. --dry-run: print the new positions only.\n"
               "A replay converges to the same Entra state; unchanged objects cost no Graph write.\n");
}

/* "2026-12-08T10:30:00[.123](Z|+hh:mm|-hh:mm)" -> epoch ms, or -1. */
static int64_t parse_iso(const char *s) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!p)
                return -1;
        int64_t ms = 0;
        if (*p == '.') {
                int digits = 0;
                for (p++; isdigit((unsigned char)*p); p++, digits++)
                        if (digits < 3)
                                ms = ms * 10 + (*p - '0');
                if (!digits)
                        return -1;
                for (; digits < 3; digits++)
                        ms *= 10;
        }
        int64_t off = 0;
        if (*p == 'Z')
                p++;
        else if (*p == '+' || *p == '-') {
                int hh, mm, n = 0;
                if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 || n != 5 || hh > 23 || mm > 59)
                        return -1;
                off = (int64_t)(hh * 60 + mm) * 60000 * (*p == '+' ? 1 : -1);
                p += 6;
        } else
                return -1; /* a time without its zone is ambiguous */
        if (*p)
                return -1;
        time_t t = timegm(&tm);
        if (t == (time_t)-1)
                return -1;
        return (int64_t)t * 1000 + ms - off;
}

/* WHEN -> CANOPY_KAFKA_AT_BEGINNING, _AT_END or epoch ms; -3 when invalid. */
static int64_t parse_when(const char *s) {
        if (!strcmp(s, "beginning") || !strcmp(s, "earliest"))
                return CANOPY_KAFKA_AT_BEGINNING;
        if (!strcmp(s, "end") || !strcmp(s, "latest"))
                return CANOPY_KAFKA_AT_END;
        char *e;
        if (s[0] == '@') {
                errno = 0;
                long long v = strtoll(s + 1, &e, 10);
                return !errno && e != s + 1 && !*e && v >= 0 ? v : -3;
        }
        if (s[0] == '-' && isdigit((unsigned char)s[1])) {
                errno = 0;
                long long v = strtoll(s + 1, &e, 10);
                int64_t unit = !strcmp(e, "s") ? 1000 : !strcmp(e, "m") ? 60000 : !strcmp(e, "h") ? 3600000
                                                   : !strcmp(e, "d")   ? 86400000
                                                                       : 0;
                if (errno || !unit || v > 365LL * 86400)
                        return -3;
                int64_t t = ctl_now_ms() - v * unit;
                return t >= 0 ? t : -3;
        }
        int64_t t = parse_iso(s);
        return t >= 0 ? t : -3;
}

static void when_text(int64_t to, char *out, size_t cap) {
        if (to == CANOPY_KAFKA_AT_BEGINNING)
                snprintf(out, cap, "the beginning");
        else if (to == CANOPY_KAFKA_AT_END)
                snprintf(out, cap, "the end");
        else {
                time_t t = (time_t)(to / 1000);
                struct tm tm;
                gmtime_r(&t, &tm);
                char b[40];
                strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
                snprintf(out, cap, "%s.%03dZ", b, (int)(to % 1000));
        }
}

/* Move one stage's group; prints its table. 0 ok, 1 failure. */
static int move_stage(const canopy_worker_conf *conf, const char *stage, const char *group, canopy_topic t, int64_t to,
                      bool dry_run) {
        char eb[1024], topic[300], when[64];
        canopy_kafka_topic_name(&conf->kafka, t, topic, sizeof(topic));
        when_text(to, when, sizeof(when));
        canopy_kafka_group_pos *pos = NULL;
        size_t n = 0;
        canopy_err err = canopy_kafka_group_seek(&conf->kafka, group, t, to, dry_run, &pos, &n, eb, sizeof(eb));
        if (err) {
                fprintf(stderr, "canopyctl replay: %s stage (group %s, topic %s): %s\n", stage, group, topic, eb);
                return 1;
        }
        long long again = 0, skipped = 0;
        printf("%s stage: group %s on %s %s to %s\n", stage, group, topic, dry_run ? "would move" : "moved", when);
        printf("  %-9s  %12s  %12s  %-25s  %s\n", "partition", "was", "now", "broker holds", "read again");
        for (size_t i = 0; i < n; i++) {
                const canopy_kafka_group_pos *g = &pos[i];
                /* A group without a position reads from the oldest message. */
                int64_t was = g->committed >= 0 ? g->committed : g->low;
                char was_s[24], holds[48];
                if (g->committed >= 0)
                        snprintf(was_s, sizeof(was_s), "%lld", (long long)g->committed);
                else
                        snprintf(was_s, sizeof(was_s), "none");
                snprintf(holds, sizeof(holds), "%lld-%lld", (long long)g->low, (long long)g->high);
                long long d = (long long)(was - g->target);
                if (d > 0)
                        again += d;
                else
                        skipped -= d;
                printf("  %-9d  %12s  %12lld  %-25s  %lld\n", g->partition, was_s, (long long)g->target, holds,
                       d > 0 ? d : 0);
        }
        printf("  %lld message(s) to read again", again);
        if (skipped)
                printf(", %lld skipped (moved forward: never applied)", skipped);
        printf("\n");
        free(pos);
        return 0;
}

static int replay_main(int argc, char **argv) {
        const char *path = NULL, *sets[MAX_SETS], *stage = "both", *when = NULL;
        size_t nsets = 0;
        bool dry_run = false;
        for (int i = 0; i < argc; i++) {
                const char *a = argv[i];
                bool has_val = i + 1 < argc;
                if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && has_val)
                        path = argv[++i];
                else if (!strcmp(a, "--set") && has_val && nsets < MAX_SETS)
                        sets[nsets++] = argv[++i];
                else if (!strcmp(a, "--stage") && has_val)
                        stage = argv[++i];
                else if (!strcmp(a, "--to") && has_val)
                        when = argv[++i];
                else if (!strcmp(a, "--dry-run"))
                        dry_run = true;
                else {
                        fprintf(stderr, "canopyctl replay: unexpected argument '%s'\n", a);
                        replay_usage();
                        return 2;
                }
        }
        if (!path || !when) {
                fprintf(stderr, "canopyctl replay: %s is required\n",
                        !path ? "-c WORKER.yaml (the workers' configuration)" : "--to WHEN");
                return 2;
        }
        bool join = !strcmp(stage, "join") || !strcmp(stage, "both");
        bool export = !strcmp(stage, "export") || !strcmp(stage, "both");
        if (!join && !export) {
                fprintf(stderr, "canopyctl replay: --stage '%s': use join, export or both\n", stage);
                return 2;
        }
        int64_t to = parse_when(when);
        if (to == -3) {
                fprintf(stderr,
                        "canopyctl replay: --to '%s' is not a position: use beginning, end, a time such as "
                        "2026-12-08T10:30:00Z, @EPOCH_MS, or -30m / -2h / -1d\n",
                        when);
                return 2;
        }
        if (to >= 0 && to > ctl_now_ms()) {
                fprintf(stderr, "canopyctl replay: --to '%s' is in the future\n", when);
                return 2;
        }
        canopy_worker_conf conf;
        if (ctl_worker_conf_load("replay", path, sets, nsets, &conf))
                return 2;
        int rc = 0;
        if (join)
                rc = move_stage(&conf, "join", conf.join_group, CANOPY_TOPIC_CHANGES, to, dry_run);
        if (!rc && export)
                rc = move_stage(&conf, "export", conf.export_group, CANOPY_TOPIC_MV, to, dry_run);
        if (!rc && !dry_run)
                printf("Start the workers again: they read from the new positions.\n");
        canopy_conf_free(&canopy_conf_worker, &conf);
        return rc;
}

const canopyctl_cmd canopyctl_cmd_replay = {"replay",
                                            "move the workers' consumer groups to an earlier offset or time",
                                            replay_main, replay_usage};
