/* bench_rules.c: evaluations per second per core of the default AD user
 * mapping (every default flow: UPN, displayName, mailNickname sanitizer,
 * accountEnabled, immutable id, 15 extension attributes ...) on realistic
 * user objects, single thread, one arena reset per object as in a worker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "canopy/rules.h"

#define NOBJ 512
#define NATTR 24

typedef struct bobj {
        char names[NATTR][32];
        char vals[NATTR][96];
        canopy_bytes b[NATTR];
        size_t n;
        unsigned char guid[16];
        canopy_bytes anchor;
        char dn[160];
} bobj;

static bool lookup(void *ctx, const char *name, const canopy_bytes **ret, size_t *n, bool *bin)
{
        bobj *o = ctx;
        for (size_t i = 0; i < o->n; i++)
                if (!strcasecmp(o->names[i], name)) {
                        *ret = &o->b[i];
                        *n = 1;
                        *bin = false;
                        return true;
                }
        return false;
}

static void add(bobj *o, const char *name, const char *val)
{
        snprintf(o->names[o->n], sizeof(o->names[0]), "%s", name);
        snprintf(o->vals[o->n], sizeof(o->vals[0]), "%s", val);
        o->b[o->n].data = (uint8_t *)o->vals[o->n];
        o->b[o->n].len = strlen(o->vals[o->n]);
        o->n++;
}

static double now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
        double seconds = 5;
        const char *json = NULL;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
                        seconds = atof(argv[++i]);
                else if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json = argv[++i];
                else {
                        fprintf(stderr, "usage: canopy-bench-rules [--seconds S] [--json FILE]\n");
                        return 2;
                }
        }
        const char *ids[] = {"corp"}, *kinds[] = {"ad"}, *domains[] = {"corp.example.com"};
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        if (canopy_rules_load_defaults(ids, kinds, domains, 1, &r, &d)) {
                fputs(canopy_rules_diags_text(&d), stderr);
                return 1;
        }
        static const char *first[] = {"Zoë", "José", "Ann", "Łukasz", "Jürgen", "Søren", "Mary Ann", "François"};
        static const char *last[] = {"Müller", "García", "O'Brien", "Nowak", "Smith-Jones", "Ødegård", "Lee", "Dubois"};
        static const char *dept[] = {"Sales", "Engineering", "Finance", " Legal ", "HR"};
        bobj *objs = calloc(NOBJ, sizeof(*objs));
        if (!objs)
                return 1;
        char tmp[96];
        for (int i = 0; i < NOBJ; i++) {
                bobj *o = &objs[i];
                const char *f = first[i % 8], *l = last[(i / 8) % 8];
                snprintf(o->dn, sizeof(o->dn), "CN=%s %s %d,OU=People,DC=corp,DC=example,DC=com", f, l, i);
                add(o, "objectClass", "user");
                snprintf(tmp, sizeof(tmp), "%s %s", f, l);
                add(o, "cn", tmp);
                add(o, "displayName", i % 5 ? tmp : "");
                add(o, "givenName", f);
                add(o, "sn", l);
                snprintf(tmp, sizeof(tmp), "u%05d", i);
                add(o, "sAMAccountName", tmp);
                if (i % 3) {
                        snprintf(tmp, sizeof(tmp), "u%05d@corp.example.com", i);
                        add(o, "userPrincipalName", tmp);
                        add(o, "mail", tmp);
                }
                add(o, "userAccountControl", i % 7 ? "512" : "514");
                add(o, "department", dept[i % 5]);
                add(o, "title", "Senior Account Manager");
                add(o, "company", "Contoso Ltd");
                add(o, "c", "de");
                add(o, "co", "Germany");
                add(o, "l", "Köln");
                add(o, "postalCode", "50667");
                add(o, "streetAddress", "Domkloster 4");
                add(o, "telephoneNumber", "+49 221 1234567");
                snprintf(tmp, sizeof(tmp), "%08d", i);
                add(o, "employeeID", tmp);
                add(o, "extensionAttribute1", "cost-center-4711");
                add(o, "extensionAttribute7", "badge");
                for (int k = 0; k < 16; k++)
                        o->guid[k] = (unsigned char)(i * 31 + k * 7);
                o->anchor.data = o->guid;
                o->anchor.len = 16;
        }
        canopy_arena *a = canopy_arena_new(0, 0);
        const char *const *targets;
        size_t ntargets;
        canopy_rules_targets(r, "user", &targets, &ntargets);
        /* Warm up, then measure whole objects (all flows) for `seconds`. */
        long objects = 0, props = 0;
        double t0 = now(), t1 = t0;
        char msg[256];
        while (t1 - t0 < seconds) {
                for (int i = 0; i < NOBJ; i++) {
                        canopy_obj_view v = {.connector = "corp", .dn = objs[i].dn, .object_type = "user",
                                             .anchor = &objs[i].anchor, .lookup = lookup, .ctx = &objs[i]};
                        const canopy_obj_view *views[1] = {&v};
                        canopy_rules_desired des;
                        if (canopy_rules_compute(r, "user", views, 1, NULL, a, &des, msg, sizeof(msg))) {
                                fprintf(stderr, "compute failed: %s\n", msg);
                                return 1;
                        }
                        props += (long)des.n;
                        canopy_arena_reset(a);
                }
                objects += NOBJ;
                t1 = now();
        }
        double el = t1 - t0;
        printf("rules bench: default AD user mapping, %zu target properties, 1 thread\n", ntargets);
        printf("  objects mapped:        %ld in %.2f s\n", objects, el);
        printf("  objects per second:    %.0f per core\n", objects / el);
        printf("  expression evaluations per second: %.0f per core\n", props / el);
        printf("  mean per object:       %.2f us\n", el / objects * 1e6);
        if (json) {
                FILE *f = fopen(json, "w");
                if (f) {
                        fprintf(f, "{\"bench\":\"rules\",\"targets\":%zu,\"objects_per_sec\":%.0f,\"evals_per_sec\":%.0f}\n",
                                ntargets, objects / el, props / el);
                        fclose(f);
                }
        }
        canopy_arena_free(a);
        canopy_rules_free(r);
        free(objs);
        return 0;
}
