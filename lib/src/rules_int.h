/* rules_int.h: private helpers shared by the rules modules. */
#ifndef CANOPY_RULES_INT_H
#define CANOPY_RULES_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "canopy/arena.h"

bool rules_dn_norm_under(const char *dn, size_t dl, const char *base, size_t bl);
char *rules_dn_norm_alloc(const char *dn, size_t *ret_len);
const char *rules_dn_norm_arena(const char *dn, size_t len, canopy_arena *a, size_t *ret_len);
/* The built-in default flows (YAML), see rules_defaults.c. */
extern const char rules_default_flows_yaml[];
extern const char rules_defaults_example_yaml[];

#endif
