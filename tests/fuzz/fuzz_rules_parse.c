/* fuzz_rules_parse.c: the rules file loader (YAML, expressions, DNs,
 * regexes) on arbitrary bytes; on success, scope and flow an object. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/rules.h"

static bool lookup(void *ctx, const char *name, const canopy_bytes **ret, size_t *n, bool *bin)
{
        static canopy_bytes vals[2] = {{(uint8_t *)"user", 4}, {(uint8_t *)"Zoë Müller", 11}};
        (void)ctx;
        *bin = false;
        if (!strcmp(name, "objectclass")) {
                *ret = &vals[0];
                *n = 1;
                return true;
        }
        *ret = &vals[1];
        *n = 1;
        return name[0] < 'n';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        if (canopy_rules_load_buffer("fuzz.yaml", (const char *)data, size, &r, &d) == CANOPY_OK) {
                canopy_arena *a = canopy_arena_new(0, 1u << 20);
                for (size_t i = 0; i < canopy_rules_connector_count(r) && a; i++) {
                        const canopy_rules_connector *c = canopy_rules_connector_at(r, i);
                        canopy_obj_view v = {.connector = c->id, .dn = "CN=Zoë\\, M,OU=People,DC=corp,DC=example",
                                             .lookup = lookup};
                        canopy_scope_result sr;
                        canopy_rules_scope(r, &v, NULL, &sr);
                        const canopy_obj_view *views[1] = {&v};
                        canopy_rules_desired des;
                        char msg[128];
                        canopy_rules_compute(r, "user", views, 1, NULL, a, &des, msg, sizeof(msg));
                        canopy_arena_reset(a);
                }
                canopy_arena_free(a);
                canopy_rules_free(r);
        }
        canopy_rules_diags_free(&d);
        return 0;
}
