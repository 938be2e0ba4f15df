/* admin_auth.h: bearer tokens and roles of the admin API.
 * Roles follow Entra Connect's groups: viewer = ADSyncBrowse, operator =
 * ADSyncOperators, admin = ADSyncAdmins; each includes the ones below it. */
#ifndef CANOPY_GUARD_ADMIN_AUTH_H
#define CANOPY_GUARD_ADMIN_AUTH_H

#include <stddef.h>

#include "canopy/err.h"

typedef enum admin_role {
        ROLE_NONE = 0,
        ROLE_VIEWER,
        ROLE_OPERATOR,
        ROLE_ADMIN,
} admin_role;

typedef struct admin_token {
        char *token; /* secret */
        admin_role role;
        char *name;
} admin_token;

typedef struct admin_tokens {
        admin_token *v;
        size_t n;
} admin_tokens;

#define ADMIN_TOKENS_MAX 1024

/* Load "TOKEN ROLE NAME" lines. Errors name file:line in errbuf. Every token
 * is registered as a secret with the logger. */
canopy_err admin_tokens_load(const char *path, admin_tokens *ret, char *errbuf, size_t errlen);
void admin_tokens_free(admin_tokens *t);
/* Role of an "Authorization: Bearer X" header value; ROLE_NONE when absent
 * or unknown. *ret_name (borrowed) gets the token's name. Constant-time
 * comparison of the token. */
admin_role admin_tokens_check(const admin_tokens *t, const char *authorization, const char **ret_name);
const char *admin_role_name(admin_role r);

#endif
