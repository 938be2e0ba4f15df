/* rules_test_util.h: tiny object views for the rules unit tests. */
#ifndef RULES_TEST_UTIL_H
#define RULES_TEST_UTIL_H
#include <string.h>
#include <strings.h>

#include "canopy/rules.h"

typedef struct kv {
        const char *name;
        const char *values[4];
} kv;

typedef struct tobj {
        const kv *attrs;
        canopy_bytes store[32][4];
} tobj;

static bool tobj_lookup(void *ctx, const char *name, const canopy_bytes **ret, size_t *n, bool *bin)
{
        tobj *o = ctx;
        for (size_t i = 0; o->attrs && o->attrs[i].name; i++) {
                if (strcasecmp(o->attrs[i].name, name) != 0)
                        continue;
                size_t k = 0;
                for (; k < 4 && o->attrs[i].values[k]; k++) {
                        o->store[i][k].data = (uint8_t *)o->attrs[i].values[k];
                        o->store[i][k].len = strlen(o->attrs[i].values[k]);
                }
                *ret = o->store[i];
                *n = k;
                *bin = false;
                return k > 0;
        }
        return false;
}

static inline canopy_obj_view tview(tobj *o, const char *connector, const char *dn, const kv *attrs)
{
        o->attrs = attrs;
        canopy_obj_view v = {.connector = connector, .dn = dn, .lookup = tobj_lookup, .ctx = o};
        return v;
}

static inline canopy_rules *load_rules(const char *yaml)
{
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        canopy_err err = canopy_rules_load_buffer("test.yaml", yaml, strlen(yaml), &r, &d);
        if (err)
                fprintf(stderr, "%s", canopy_rules_diags_text(&d));
        canopy_rules_diags_free(&d);
        return r;
}
#endif
