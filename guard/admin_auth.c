/* admin_auth.c: bearer tokens of the admin API. */
#include "admin_auth.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/log.h"

const char *admin_role_name(admin_role r) {
        switch (r) {
        case ROLE_VIEWER: return "viewer";
        case ROLE_OPERATOR: return "operator";
        case ROLE_ADMIN: return "admin";
        default: return "none";
        }
}

static admin_role role_parse(const char *s) {
        if (!strcmp(s, "viewer"))
                return ROLE_VIEWER;
        if (!strcmp(s, "operator"))
                return ROLE_OPERATOR;
        if (!strcmp(s, "admin"))
                return ROLE_ADMIN;
        return ROLE_NONE;
}

void admin_tokens_free(admin_tokens *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->n; i++) {
                if (t->v[i].token) {
                        memset(t->v[i].token, 0, strlen(t->v[i].token));
                        free(t->v[i].token);
                }
                free(t->v[i].name);
        }
        free(t->v);
        t->v = NULL;
        t->n = 0;
}

canopy_err admin_tokens_load(const char *path, admin_tokens *ret, char *errbuf, size_t errlen) {
        admin_tokens t = {NULL, 0};
        canopy_err err = CANOPY_OK;
        FILE *f = fopen(path, "r");
        if (!f) {
                snprintf(errbuf, errlen, "%s: cannot open the admin tokens file: %m", path);
                return CANOPY_ERR_CONFIG;
        }
        char line[1024];
        int lineno = 0;
        while (fgets(line, sizeof(line), f)) {
                lineno++;
                char *p = line;
                while (isspace((unsigned char)*p))
                        p++;
                if (!*p || *p == '#')
                        continue;
                char tok[512], role[32], name[256];
                int n = sscanf(p, "%511s %31s %255s", tok, role, name);
                if (n < 2) {
                        snprintf(errbuf, errlen, "%s:%d:1: expected 'TOKEN ROLE [NAME]'", path, lineno);
                        err = CANOPY_ERR_CONFIG;
                        break;
                }
                if (n == 2)
                        snprintf(name, sizeof(name), "token-%d", lineno);
                admin_role r = role_parse(role);
                if (r == ROLE_NONE) {
                        snprintf(errbuf, errlen, "%s:%d:%d: unknown role '%s' (viewer, operator or admin)", path,
                                 lineno, (int)(strstr(p, role) - line) + 1, role);
                        err = CANOPY_ERR_CONFIG;
                        break;
                }
                if (strlen(tok) < 16) {
                        snprintf(errbuf, errlen, "%s:%d:1: token too short (at least 16 characters)", path, lineno);
                        err = CANOPY_ERR_CONFIG;
                        break;
                }
                if (t.n >= ADMIN_TOKENS_MAX) {
                        snprintf(errbuf, errlen, "%s:%d:1: more than %d tokens", path, lineno, ADMIN_TOKENS_MAX);
                        err = CANOPY_ERR_LIMIT;
                        break;
                }
                admin_token *nv = realloc(t.v, (t.n + 1) * sizeof(*nv));
                if (!nv) {
                        err = CANOPY_ERR_NOMEM;
                        break;
                }
                t.v = nv;
                t.v[t.n].token = strdup(tok);
                t.v[t.n].name = strdup(name);
                t.v[t.n].role = r;
                t.n++;
                canopy_log_secret(tok);
                memset(tok, 0, sizeof(tok));
        }
        fclose(f);
        if (!err && t.n == 0) {
                snprintf(errbuf, errlen, "%s: no tokens: the admin API would refuse everyone", path);
                err = CANOPY_ERR_CONFIG;
        }
        if (err) {
                admin_tokens_free(&t);
                return err;
        }
        *ret = t;
        return CANOPY_OK;
}

static int consttime_eq(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        unsigned char d = (unsigned char)(la != lb);
        for (size_t i = 0; i < la; i++)
                d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
        return d == 0;
}

admin_role admin_tokens_check(const admin_tokens *t, const char *authorization, const char **ret_name) {
        if (!authorization || strncasecmp(authorization, "Bearer ", 7))
                return ROLE_NONE;
        const char *tok = authorization + 7;
        while (*tok == ' ')
                tok++;
        admin_role found = ROLE_NONE;
        for (size_t i = 0; i < t->n; i++) {
                if (consttime_eq(tok, t->v[i].token)) {
                        found = t->v[i].role;
                        if (ret_name)
                                *ret_name = t->v[i].name;
                }
        }
        return found;
}
