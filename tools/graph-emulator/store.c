/* store.c: tenants and their users and groups in memory, with the indices
 * that make look-ups O(1) (id, userPrincipalName, onPremisesImmutableId,
 * SMTP addresses), membership sets, the validation Graph applies on create
 * and update, and the snapshot file. Callers hold srv->lock. */
#include "emu.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { T_STR = 1, T_BOOL, T_STRARR, T_OBJ, T_ANY };
enum {
        F_RO = 1u << 0,      /* read-only: rejected on write */
        F_REQ = 1u << 1,     /* required on create */
        F_FILTER = 1u << 2,  /* $filter eq / startswith supported */
        F_DEFAULT = 1u << 3, /* in the default property set (users) */
        F_CREATE = 1u << 4,  /* writable on create only */
};

typedef struct prop_def {
        const char *name;
        uint8_t type;
        uint16_t maxlen;
        unsigned flags;
} prop_def;

static const prop_def user_props[] = {
    {"id", T_STR, 0, F_RO | F_FILTER | F_DEFAULT},
    {"accountEnabled", T_BOOL, 0, F_REQ | F_FILTER},
    {"ageGroup", T_STR, 64, 0},
    {"businessPhones", T_STRARR, 64, F_DEFAULT},
    {"city", T_STR, 128, F_FILTER},
    {"companyName", T_STR, 64, F_FILTER},
    {"consentProvidedForMinor", T_STR, 64, 0},
    {"country", T_STR, 128, F_FILTER},
    {"createdDateTime", T_STR, 0, F_RO},
    {"creationType", T_STR, 0, F_RO},
    {"deletedDateTime", T_STR, 0, F_RO},
    {"department", T_STR, 64, F_FILTER},
    {"displayName", T_STR, 256, F_REQ | F_FILTER | F_DEFAULT},
    {"employeeHireDate", T_STR, 64, 0},
    {"employeeId", T_STR, 16, F_FILTER},
    {"employeeLeaveDateTime", T_STR, 64, 0},
    {"employeeOrgData", T_OBJ, 0, 0},
    {"employeeType", T_STR, 64, F_FILTER},
    {"externalUserState", T_STR, 0, F_RO},
    {"faxNumber", T_STR, 64, 0},
    {"givenName", T_STR, 64, F_FILTER | F_DEFAULT},
    {"imAddresses", T_STRARR, 0, F_RO},
    {"jobTitle", T_STR, 128, F_FILTER | F_DEFAULT},
    {"mail", T_STR, 256, F_FILTER | F_DEFAULT},
    {"mailNickname", T_STR, 64, F_REQ | F_FILTER},
    {"mobilePhone", T_STR, 64, F_DEFAULT},
    {"officeLocation", T_STR, 128, F_DEFAULT},
    {"onPremisesDistinguishedName", T_STR, 0, F_RO},
    {"onPremisesDomainName", T_STR, 0, F_RO},
    {"onPremisesExtensionAttributes", T_OBJ, 0, 0},
    {"onPremisesImmutableId", T_STR, 256, F_FILTER},
    {"onPremisesLastSyncDateTime", T_STR, 0, F_RO},
    {"onPremisesProvisioningErrors", T_ANY, 0, F_RO},
    {"onPremisesSamAccountName", T_STR, 0, F_RO},
    {"onPremisesSecurityIdentifier", T_STR, 0, F_RO},
    {"onPremisesSipInfo", T_ANY, 0, F_RO},
    {"onPremisesSyncEnabled", T_BOOL, 0, F_RO},
    {"onPremisesUserPrincipalName", T_STR, 0, F_RO},
    {"otherMails", T_STRARR, 256, F_FILTER},
    {"passwordPolicies", T_STR, 256, 0},
    {"passwordProfile", T_OBJ, 0, F_REQ},
    {"postalCode", T_STR, 40, 0},
    {"preferredDataLocation", T_STR, 64, 0},
    {"preferredLanguage", T_STR, 64, F_DEFAULT},
    {"proxyAddresses", T_STRARR, 0, F_RO | F_FILTER},
    {"securityIdentifier", T_STR, 0, F_RO},
    {"showInAddressList", T_BOOL, 0, 0},
    {"signInSessionsValidFromDateTime", T_STR, 0, F_RO},
    {"state", T_STR, 128, F_FILTER},
    {"streetAddress", T_STR, 1024, 0},
    {"surname", T_STR, 64, F_FILTER | F_DEFAULT},
    {"usageLocation", T_STR, 2, F_FILTER},
    {"userPrincipalName", T_STR, 113, F_REQ | F_FILTER | F_DEFAULT},
    {"userType", T_STR, 64, F_FILTER},
};

static const prop_def group_props[] = {
    {"id", T_STR, 0, F_RO | F_FILTER},
    {"classification", T_STR, 256, F_FILTER},
    {"createdDateTime", T_STR, 0, F_RO},
    {"deletedDateTime", T_STR, 0, F_RO},
    {"description", T_STR, 1024, F_FILTER},
    {"displayName", T_STR, 256, F_REQ | F_FILTER},
    {"expirationDateTime", T_STR, 0, F_RO},
    {"groupTypes", T_STRARR, 64, F_FILTER},
    {"isAssignableToRole", T_BOOL, 0, F_CREATE},
    {"mail", T_STR, 0, F_RO | F_FILTER},
    {"mailEnabled", T_BOOL, 0, F_REQ | F_FILTER},
    {"mailNickname", T_STR, 64, F_REQ | F_FILTER},
    {"membershipRule", T_STR, 3072, 0},
    {"membershipRuleProcessingState", T_STR, 64, 0},
    {"onPremisesDomainName", T_STR, 0, F_RO},
    {"onPremisesLastSyncDateTime", T_STR, 0, F_RO},
    {"onPremisesNetBiosName", T_STR, 0, F_RO},
    {"onPremisesProvisioningErrors", T_ANY, 0, F_RO},
    {"onPremisesSamAccountName", T_STR, 0, F_RO},
    {"onPremisesSecurityIdentifier", T_STR, 0, F_RO},
    {"onPremisesSyncEnabled", T_BOOL, 0, F_RO},
    {"preferredDataLocation", T_STR, 64, 0},
    {"preferredLanguage", T_STR, 64, 0},
    {"proxyAddresses", T_STRARR, 0, F_RO | F_FILTER},
    {"renewedDateTime", T_STR, 0, F_RO},
    {"resourceBehaviorOptions", T_STRARR, 64, F_CREATE},
    {"resourceProvisioningOptions", T_STRARR, 64, F_CREATE},
    {"securityEnabled", T_BOOL, 0, F_REQ | F_FILTER},
    {"securityIdentifier", T_STR, 0, F_RO},
    {"theme", T_STR, 64, 0},
    {"visibility", T_STR, 64, 0},
};

#define NPROPS(a) (sizeof(a) / sizeof(a[0]))

static const prop_def *prop_find(emu_kind kind, const char *name) {
        const prop_def *t = kind == EMU_USER ? user_props : group_props;
        size_t n = kind == EMU_USER ? NPROPS(user_props) : NPROPS(group_props);
        for (size_t i = 0; i < n; i++)
                if (!strcmp(t[i].name, name))
                        return &t[i];
        return NULL;
}

const char *emu_kind_name(emu_kind k) {
        return k == EMU_USER ? "User" : "Group";
}

static bool is_extension(const char *name) {
        return !strncmp(name, "extension_", 10) && strlen(name) < 128;
}

bool emu_prop_known(emu_kind kind, const char *name) {
        return prop_find(kind, name) || is_extension(name);
}

bool emu_prop_filterable(emu_kind kind, const char *name) {
        const prop_def *p = prop_find(kind, name);
        return p ? (p->flags & F_FILTER) != 0 : is_extension(name);
}

static void seterr(emu_err *e, int status, const char *code, const char *target, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void seterr(emu_err *e, int status, const char *code, const char *target, const char *fmt, ...) {
        e->status = status;
        e->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
        snprintf(e->target, sizeof(e->target), "%s", target ? target : "");
}

static void invalid_value(emu_err *e, emu_kind kind, const char *prop) {
        seterr(e, 400, "Request_BadRequest", NULL,
               "Invalid value specified for property '%s' of resource '%s'.", prop, emu_kind_name(kind));
}

/* ---- tenants and look-ups ------------------------------------------------- */

emu_tenant *emu_tenant_get(emu_server *srv, const char *tid, bool create) {
        char key[64];
        snprintf(key, sizeof(key), "%s", tid);
        emu_lower(key);
        emu_tenant *tn = emu_map_get(&srv->tenants, key);
        if (tn || !create)
                return tn;
        tn = calloc(1, sizeof(*tn));
        if (!tn)
                return NULL;
        tn->id = strdup(key);
        if (emu_map_put(&srv->tenants, key, tn)) {
                free(tn->id);
                free(tn);
                return NULL;
        }
        return tn;
}

static void obj_free(emu_obj *o) {
        if (!o)
                return;
        json_decref(o->props);
        emu_map_clear(&o->members);
        emu_seqvec_free(&o->mvec);
        free(o->mlog);
        emu_map_clear(&o->memberof);
        free(o);
}

void emu_tenant_free(emu_tenant *tn) {
        if (!tn)
                return;
        size_t it = 0;
        const char *k;
        void *v;
        while (emu_map_next(&tn->byid, &it, &k, &v))
                obj_free(v);
        emu_map_clear(&tn->byid);
        emu_map_clear(&tn->upn);
        emu_map_clear(&tn->immid);
        emu_map_clear(&tn->addr);
        emu_seqvec_free(&tn->list[0]);
        emu_seqvec_free(&tn->list[1]);
        free(tn->id);
        free(tn);
}

emu_obj *emu_obj_find(emu_tenant *tn, const char *id) {
        char key[64];
        if (strlen(id) >= sizeof(key))
                return NULL;
        snprintf(key, sizeof(key), "%s", id);
        emu_lower(key);
        return emu_map_get(&tn->byid, key);
}

bool emu_obj_is_visible(emu_server *srv, const emu_obj *o) {
        /* The current lag setting applies, so that changing it at run time
         * takes effect on objects already created. */
        int lag = __atomic_load_n(&srv->faults.replication_lag_ms, __ATOMIC_RELAXED);
        return lag <= 0 || o->created_ms + lag <= emu_now_ms();
}

emu_obj *emu_obj_visible(emu_server *srv, emu_tenant *tn, const char *id, emu_kind kind) {
        emu_obj *o = emu_obj_find(tn, id);
        if (!o && kind == EMU_USER) {
                char key[256];
                if (strlen(id) < sizeof(key)) {
                        snprintf(key, sizeof(key), "%s", id);
                        emu_lower(key);
                        o = emu_map_get(&tn->upn, key);
                }
        }
        if (!o || o->state != EMU_LIVE || o->kind != kind || !emu_obj_is_visible(srv, o))
                return NULL;
        return o;
}

bool emu_domain_verified(emu_server *srv, const char *domain) {
        for (size_t i = 0; i < srv->ndomains; i++)
                if (!strcasecmp(srv->domains[i], domain))
                        return true;
        return false;
}

/* ---- indices ------------------------------------------------------------------ */

static const char *sget(const json_t *props, const char *name) {
        return json_string_value(json_object_get(props, name));
}

/* The SMTP addresses an object holds (mail, proxyAddresses), lower-cased,
 * without the smtp: prefix. Returns the count (cap 32). */
static size_t addresses(const json_t *props, char out[][320], size_t max) {
        size_t n = 0;
        const char *mail = sget(props, "mail");
        if (mail && strlen(mail) < 320 && n < max) {
                snprintf(out[n], 320, "%s", mail);
                emu_lower(out[n]);
                n++;
        }
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(props, "proxyAddresses"), i, v) {
                const char *s = json_string_value(v);
                if (!s || strncasecmp(s, "smtp:", 5) || strlen(s + 5) >= 320 || n >= max)
                        continue;
                char a[320];
                snprintf(a, sizeof(a), "%s", s + 5);
                emu_lower(a);
                bool dup = false;
                for (size_t j = 0; j < n; j++)
                        dup = dup || !strcmp(out[j], a);
                if (!dup)
                        snprintf(out[n++], 320, "%s", a);
        }
        return n;
}

static void index_remove(emu_tenant *tn, emu_obj *o) {
        char key[320];
        const char *upn = sget(o->props, "userPrincipalName");
        if (o->kind == EMU_USER && upn && strlen(upn) < sizeof(key)) {
                snprintf(key, sizeof(key), "%s", upn);
                emu_lower(key);
                if (emu_map_get(&tn->upn, key) == o)
                        emu_map_del(&tn->upn, key);
        }
        const char *imm = sget(o->props, "onPremisesImmutableId");
        if (o->kind == EMU_USER && imm && emu_map_get(&tn->immid, imm) == o)
                emu_map_del(&tn->immid, imm);
        char addrs[32][320];
        size_t na = addresses(o->props, addrs, 32);
        for (size_t i = 0; i < na; i++)
                if (emu_map_get(&tn->addr, addrs[i]) == o)
                        emu_map_del(&tn->addr, addrs[i]);
}

static void index_add(emu_tenant *tn, emu_obj *o) {
        char key[320];
        const char *upn = sget(o->props, "userPrincipalName");
        if (o->kind == EMU_USER && upn && strlen(upn) < sizeof(key)) {
                snprintf(key, sizeof(key), "%s", upn);
                emu_lower(key);
                emu_map_put(&tn->upn, key, o);
        }
        const char *imm = sget(o->props, "onPremisesImmutableId");
        if (o->kind == EMU_USER && imm)
                emu_map_put(&tn->immid, imm, o);
        char addrs[32][320];
        size_t na = addresses(o->props, addrs, 32);
        for (size_t i = 0; i < na; i++)
                emu_map_put(&tn->addr, addrs[i], o);
}

static void conflict(emu_err *e, const char *prop) {
        seterr(e, 400, "Request_BadRequest", prop,
               "Another object with the same value for property %s already exists.", prop);
}

/* Uniqueness of the candidate property set against every other live object. */
static int check_unique(emu_tenant *tn, const emu_obj *self, emu_kind kind, const json_t *props, emu_err *e) {
        char key[320];
        const char *upn = sget(props, "userPrincipalName");
        if (kind == EMU_USER && upn && strlen(upn) < sizeof(key)) {
                snprintf(key, sizeof(key), "%s", upn);
                emu_lower(key);
                emu_obj *o = emu_map_get(&tn->upn, key);
                if (o && o != self) {
                        conflict(e, "userPrincipalName");
                        return -1;
                }
        }
        const char *imm = sget(props, "onPremisesImmutableId");
        if (kind == EMU_USER && imm) {
                emu_obj *o = emu_map_get(&tn->immid, imm);
                if (o && o != self) {
                        conflict(e, "onPremisesImmutableId");
                        return -1;
                }
        }
        char addrs[32][320];
        size_t na = addresses(props, addrs, 32);
        for (size_t i = 0; i < na; i++) {
                emu_obj *o = emu_map_get(&tn->addr, addrs[i]);
                if (o && o != self) {
                        conflict(e, "proxyAddresses");
                        return -1;
                }
        }
        return 0;
}

/* ---- validation ---------------------------------------------------------------- */

static bool nickname_ok(const char *s) {
        size_t n = strlen(s);
        if (!n || n > 64)
                return false;
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (c < 33 || c > 126 || strchr("@()\\[]\";:<>,", c))
                        return false;
        }
        return true;
}

/* Returns 0 ok, 1 bad format, 2 unverified domain. */
static int upn_check(emu_server *srv, const char *upn) {
        const char *at = strchr(upn, '@');
        if (!at || strchr(at + 1, '@'))
                return 1;
        size_t ll = (size_t)(at - upn);
        if (!ll || ll > 64 || upn[0] == '.' || at[-1] == '.' || strlen(upn) > 113)
                return 1;
        for (const char *p = upn; p < at; p++) {
                unsigned char c = (unsigned char)*p;
                if (!isalnum(c) && !strchr("'.-_!#^~", c))
                        return 1;
                if (c == '.' && p[1] == '.')
                        return 1;
        }
        if (!at[1])
                return 1;
        return emu_domain_verified(srv, at + 1) ? 0 : 2;
}

static bool password_ok(const char *pw) {
        size_t n = strlen(pw);
        if (n < 8 || n > 256)
                return false;
        int lower = 0, upper = 0, digit = 0, sym = 0;
        for (const char *p = pw; *p; p++) {
                unsigned char c = (unsigned char)*p;
                if (islower(c))
                        lower = 1;
                else if (isupper(c))
                        upper = 1;
                else if (isdigit(c))
                        digit = 1;
                else
                        sym = 1;
        }
        return lower + upper + digit + sym >= 3;
}

static size_t utf8_len(const char *s) {
        size_t n = 0;
        for (; *s; s++)
                if (((unsigned char)*s & 0xc0) != 0x80)
                        n++;
        return n;
}

/* Check one property value against its definition. */
static int check_value(emu_kind kind, const prop_def *pd, const char *name, json_t *v, emu_err *e) {
        if (json_is_null(v))
                return 0;
        unsigned type = pd ? pd->type : T_ANY;
        size_t maxlen = pd ? pd->maxlen : 256;
        switch (type) {
        case T_STR:
                if (!json_is_string(v) || (maxlen && utf8_len(json_string_value(v)) > maxlen)) {
                        invalid_value(e, kind, name);
                        return -1;
                }
                return 0;
        case T_BOOL:
                if (!json_is_boolean(v)) {
                        invalid_value(e, kind, name);
                        return -1;
                }
                return 0;
        case T_STRARR: {
                if (!json_is_array(v) || json_array_size(v) > 256) {
                        invalid_value(e, kind, name);
                        return -1;
                }
                size_t i;
                json_t *x;
                json_array_foreach(v, i, x) {
                        if (!json_is_string(x) || (maxlen && utf8_len(json_string_value(x)) > maxlen)) {
                                invalid_value(e, kind, name);
                                return -1;
                        }
                }
                if (!strcmp(name, "businessPhones") && json_array_size(v) > 1) {
                        invalid_value(e, kind, name);
                        return -1;
                }
                return 0;
        }
        case T_OBJ:
                if (!json_is_object(v)) {
                        invalid_value(e, kind, name);
                        return -1;
                }
                if (!strcmp(name, "onPremisesExtensionAttributes")) {
                        const char *k;
                        json_t *x;
                        json_object_foreach(v, k, x) {
                                int idx = 0;
                                if (strncmp(k, "extensionAttribute", 18) || (idx = atoi(k + 18)) < 1 ||
                                    idx > 15 ||
                                    (!json_is_null(x) &&
                                     (!json_is_string(x) || utf8_len(json_string_value(x)) > 1024))) {
                                        invalid_value(e, kind, name);
                                        return -1;
                                }
                        }
                }
                return 0;
        default:
                if (json_is_string(v) && utf8_len(json_string_value(v)) > maxlen) {
                        invalid_value(e, kind, name);
                        return -1;
                }
                return 0;
        }
}

/* Build the candidate property set (into cand, owned by caller) from the
 * body on top of the current one. */
static int apply_body(emu_server *srv, emu_kind kind, json_t *cand, json_t *body, bool create, emu_err *e) {
        const char *k;
        json_t *v;
        json_object_foreach(body, k, v) {
                if (!strncmp(k, "@odata.", 7) || strstr(k, "@odata.bind"))
                        continue; /* type annotations; binds are handled by the caller */
                const prop_def *pd = prop_find(kind, k);
                if (!pd && !is_extension(k)) {
                        seterr(e, 400, "Request_BadRequest", NULL,
                               "Property '%s' does not exist as a declared property or extension property.",
                               k);
                        return -1;
                }
                if (pd && (pd->flags & F_RO)) {
                        if (!strcmp(k, "id") && create) {
                                seterr(e, 400, "Request_BadRequest", NULL,
                                       "Property 'id' is read-only and cannot be set.");
                                return -1;
                        }
                        seterr(e, 400, "Request_BadRequest", NULL,
                               "Property '%s' is read-only and cannot be set.", k);
                        return -1;
                }
                if (pd && (pd->flags & F_CREATE) && !create) {
                        seterr(e, 400, "Request_BadRequest", NULL,
                               "Property '%s' can only be set when the object is created.", k);
                        return -1;
                }
                if (check_value(kind, pd, k, v, e))
                        return -1;
                if (pd && (pd->flags & F_REQ) && json_is_null(v)) {
                        invalid_value(e, kind, k);
                        return -1;
                }
                if (!strcmp(k, "passwordProfile")) {
                        const char *pw = json_string_value(json_object_get(v, "password"));
                        if (create && !pw) {
                                seterr(e, 400, "Request_BadRequest", NULL,
                                       "A password must be specified to create a new user.");
                                return -1;
                        }
                        if (pw && !password_ok(pw)) {
                                seterr(e, 400, "Request_BadRequest", NULL,
                                       "The specified password does not comply with password complexity "
                                       "requirements. Please provide a different password.");
                                return -1;
                        }
                        /* The password itself is never stored or returned. */
                        json_t *pp = json_object();
                        json_t *f = json_object_get(v, "forceChangePasswordNextSignIn");
                        json_object_set_new(pp, "forceChangePasswordNextSignIn",
                                            json_boolean(f ? json_is_true(f) : true));
                        json_t *fm = json_object_get(v, "forceChangePasswordNextSignInWithMfa");
                        json_object_set_new(pp, "forceChangePasswordNextSignInWithMfa",
                                            json_boolean(json_is_true(fm)));
                        json_object_set_new(cand, k, pp);
                        continue;
                }
                if (!strcmp(k, "onPremisesExtensionAttributes")) {
                        json_t *cur = json_object_get(cand, k);
                        json_t *merged = json_is_object(cur) ? json_deep_copy(cur) : json_object();
                        for (int i = 1; i <= 15; i++) {
                                char an[32];
                                snprintf(an, sizeof(an), "extensionAttribute%d", i);
                                json_t *nv = json_object_get(v, an);
                                if (nv)
                                        json_object_set(merged, an, nv);
                                else if (!json_object_get(merged, an))
                                        json_object_set_new(merged, an, json_null());
                        }
                        json_object_set_new(cand, k, merged);
                        continue;
                }
                if (!strcmp(k, "mailNickname") && !nickname_ok(json_string_value(v))) {
                        invalid_value(e, kind, k);
                        return -1;
                }
                if (!strcmp(k, "userPrincipalName")) {
                        int u = upn_check(srv, json_string_value(v));
                        if (u == 1) {
                                invalid_value(e, kind, k);
                                return -1;
                        }
                        if (u == 2) {
                                seterr(e, 400, "Request_BadRequest", NULL,
                                       "The domain portion of the userPrincipalName property is invalid. You "
                                       "must use "
                                       "one of the verified domain names in your organization.");
                                return -1;
                        }
                }
                if (!strcmp(k, "mail") && json_is_string(v)) {
                        const char *m = json_string_value(v);
                        const char *at = strchr(m, '@');
                        if (!at || at == m || !at[1] || strchr(m, ' ')) {
                                invalid_value(e, kind, k);
                                return -1;
                        }
                }
                if (!strcmp(k, "groupTypes")) {
                        size_t i;
                        json_t *x;
                        json_array_foreach(v, i, x) {
                                const char *s = json_string_value(x);
                                if (strcmp(s, "Unified") && strcmp(s, "DynamicMembership")) {
                                        invalid_value(e, kind, k);
                                        return -1;
                                }
                        }
                }
                if (!strcmp(k, "displayName") && !*json_string_value(v)) {
                        invalid_value(e, kind, k);
                        return -1;
                }
                json_object_set(cand, k, v);
        }
        return 0;
}

static bool has_unified(const json_t *props) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(props, "groupTypes"), i, x) {
                if (!strcmp(json_string_value(x), "Unified"))
                        return true;
        }
        return false;
}

/* Properties Graph derives: proxyAddresses from mail, group mail. */
static void derive(emu_server *srv, emu_obj *o, json_t *p) {
        if (o->kind == EMU_USER) {
                const char *mail = sget(p, "mail");
                json_t *pa = json_array();
                if (mail) {
                        char buf[400];
                        snprintf(buf, sizeof(buf), "SMTP:%s", mail);
                        json_array_append_new(pa, json_string(buf));
                }
                json_object_set_new(p, "proxyAddresses", pa);
                json_object_set_new(p, "imAddresses", json_array());
        } else {
                const char *nick = sget(p, "mailNickname");
                bool mailed = json_is_true(json_object_get(p, "mailEnabled")) && has_unified(p) && nick;
                if (mailed) {
                        char mail[400], px[420];
                        snprintf(mail, sizeof(mail), "%s@%s", nick,
                                 srv->ndomains ? srv->domains[0] : "emulator.onmicrosoft.com");
                        snprintf(px, sizeof(px), "SMTP:%s", mail);
                        json_object_set_new(p, "mail", json_string(mail));
                        json_object_set_new(p, "proxyAddresses", json_pack("[s]", px));
                } else {
                        json_object_set_new(p, "mail", json_null());
                        json_object_set_new(p, "proxyAddresses", json_array());
                }
        }
}

static void touch(emu_tenant *tn, emu_obj *o) {
        o->chg = ++tn->seq;
}

emu_obj *emu_obj_create(emu_server *srv, emu_tenant *tn, emu_kind kind, json_t *body, emu_err *e) {
        json_t *cand = json_object();
        emu_obj *o = NULL;
        if (apply_body(srv, kind, cand, body, true, e))
                goto fail;
        /* Required properties, in the order Graph reports them. */
        const prop_def *t = kind == EMU_USER ? user_props : group_props;
        size_t n = kind == EMU_USER ? NPROPS(user_props) : NPROPS(group_props);
        for (size_t i = 0; i < n; i++) {
                if ((t[i].flags & F_REQ) && !json_object_get(cand, t[i].name)) {
                        if (!strcmp(t[i].name, "passwordProfile"))
                                seterr(e, 400, "Request_BadRequest", NULL,
                                       "A password must be specified to create a new user.");
                        else
                                seterr(e, 400, "Request_BadRequest", NULL,
                                       "A value is required for property '%s' of resource '%s'.", t[i].name,
                                       emu_kind_name(kind));
                        goto fail;
                }
        }
        if (kind == EMU_GROUP && json_is_true(json_object_get(cand, "mailEnabled")) && !has_unified(cand)) {
                seterr(e, 400, "Request_BadRequest", NULL,
                       "Creating mail-enabled security or distribution groups is not supported; only Unified "
                       "groups "
                       "can be mail-enabled.");
                goto fail;
        }
        o = calloc(1, sizeof(*o));
        if (!o) {
                seterr(e, 500, "UnknownError", NULL, "out of memory");
                goto fail;
        }
        o->kind = kind;
        emu_uuid(o->id);
        derive(srv, o, cand);
        if (check_unique(tn, NULL, kind, cand, e))
                goto fail;
        char ts[32];
        int64_t now = emu_now_ms();
        emu_iso_time(now, ts);
        json_object_set_new(cand, "id", json_string(o->id));
        json_object_set_new(cand, "createdDateTime", json_string(ts));
        if (kind == EMU_USER) {
                if (!json_object_get(cand, "userType"))
                        json_object_set_new(cand, "userType", json_string("Member"));
                json_object_set_new(cand, "creationType", json_null());
                json_object_set_new(cand, "onPremisesSyncEnabled", json_null());
        } else {
                json_object_set_new(cand, "renewedDateTime", json_string(ts));
                if (!json_object_get(cand, "groupTypes"))
                        json_object_set_new(cand, "groupTypes", json_array());
                char sid[96];
                snprintf(sid, sizeof(sid), "S-1-12-1-%u-%u-%u-%u", (unsigned)(emu_rand01() * 4e9),
                         (unsigned)(emu_rand01() * 4e9), (unsigned)(emu_rand01() * 4e9),
                         (unsigned)(emu_rand01() * 4e9));
                json_object_set_new(cand, "securityIdentifier", json_string(sid));
                if (!json_object_get(cand, "visibility") && has_unified(cand))
                        json_object_set_new(cand, "visibility", json_string("Public"));
        }
        json_object_set_new(cand, "deletedDateTime", json_null());
        o->props = cand;
        o->cseq = ++tn->seq;
        o->chg = o->cseq;
        o->created_ms = now;
        if (emu_map_put(&tn->byid, o->id, o) || emu_seqvec_push(&tn->list[kind], o->cseq, o)) {
                emu_map_del(&tn->byid, o->id);
                o->props = NULL;
                seterr(e, 500, "UnknownError", NULL, "out of memory");
                goto fail;
        }
        index_add(tn, o);
        return o;
fail:
        json_decref(cand);
        if (o)
                obj_free(o);
        return NULL;
}

int emu_obj_update(emu_server *srv, emu_tenant *tn, emu_obj *o, json_t *body, emu_err *e) {
        json_t *cand = json_deep_copy(o->props);
        if (apply_body(srv, o->kind, cand, body, false, e))
                goto fail;
        if (o->kind == EMU_GROUP && json_is_true(json_object_get(cand, "mailEnabled")) &&
            !has_unified(cand)) {
                invalid_value(e, o->kind, "mailEnabled");
                goto fail;
        }
        derive(srv, o, cand);
        if (check_unique(tn, o, o->kind, cand, e))
                goto fail;
        index_remove(tn, o);
        json_decref(o->props);
        o->props = cand;
        index_add(tn, o);
        touch(tn, o);
        return 0;
fail:
        json_decref(cand);
        return -1;
}

void emu_obj_soft_delete(emu_tenant *tn, emu_obj *o) {
        char ts[32];
        emu_iso_time(emu_now_ms(), ts);
        index_remove(tn, o);
        o->state = EMU_DELETED;
        json_object_set_new(o->props, "deletedDateTime", json_string(ts));
        touch(tn, o);
}

int emu_obj_restore(emu_tenant *tn, emu_obj *o, emu_err *e) {
        if (check_unique(tn, o, o->kind, o->props, e))
                return -1;
        o->state = EMU_LIVE;
        json_object_set_new(o->props, "deletedDateTime", json_null());
        index_add(tn, o);
        touch(tn, o);
        return 0;
}

static void mlog_add(emu_tenant *tn, emu_obj *g, emu_obj *m, bool removed) {
        if (g->mloglen == g->mlogcap) {
                size_t nc = g->mlogcap ? g->mlogcap * 2 : 16;
                emu_member_ev *nl = realloc(g->mlog, nc * sizeof(*nl));
                if (!nl)
                        return;
                g->mlog = nl;
                g->mlogcap = nc;
        }
        g->mlog[g->mloglen++] = (emu_member_ev){++tn->seq, m, removed};
        g->chg = tn->seq;
}

bool emu_member_has(const emu_obj *g, const emu_obj *m) {
        return emu_map_get(&g->members, m->id) != NULL;
}

int emu_member_add(emu_tenant *tn, emu_obj *g, emu_obj *m) {
        if (emu_member_has(g, m))
                return 1;
        uint64_t seq = tn->seq + 1;
        if (emu_map_put(&g->members, m->id, (void *)(uintptr_t)seq))
                return -1;
        if (emu_seqvec_push(&g->mvec, seq, m)) {
                emu_map_del(&g->members, m->id);
                return -1;
        }
        emu_map_put(&m->memberof, g->id, g);
        mlog_add(tn, g, m, false); /* takes seq */
        return 0;
}

int emu_member_remove(emu_tenant *tn, emu_obj *g, emu_obj *m) {
        void *v = emu_map_del(&g->members, m->id);
        if (!v)
                return 1;
        emu_seqvec_remove(&g->mvec, (uint64_t)(uintptr_t)v);
        emu_map_del(&m->memberof, g->id);
        mlog_add(tn, g, m, true);
        return 0;
}

void emu_obj_purge(emu_tenant *tn, emu_obj *o) {
        if (o->state == EMU_LIVE)
                index_remove(tn, o);
        /* Leave every group it was in. */
        size_t it = 0;
        const char *k;
        void *v;
        emu_obj *groups[256];
        for (;;) {
                size_t ng = 0;
                it = 0;
                while (ng < 256 && emu_map_next(&o->memberof, &it, &k, &v))
                        groups[ng++] = v;
                if (!ng)
                        break;
                for (size_t i = 0; i < ng; i++)
                        emu_member_remove(tn, groups[i], o);
        }
        /* A purged group keeps no members. */
        for (size_t i = 0; i < o->mvec.len; i++) {
                emu_obj *m = o->mvec.val[i];
                if (m)
                        emu_map_del(&m->memberof, o->id);
        }
        emu_map_clear(&o->members);
        emu_seqvec_free(&o->mvec);
        emu_seqvec_remove(&tn->list[o->kind], o->cseq);
        o->state = EMU_PURGED;
        /* Keep only the id: delta reports it as @removed deleted. */
        json_t *slim = json_pack("{s:s}", "id", o->id);
        json_decref(o->props);
        o->props = slim;
        touch(tn, o);
}

/* ---- rendering --------------------------------------------------------------------- */

static void put_prop(json_t *out, const emu_obj *o, const char *name) {
        if (!strcmp(name, "passwordProfile")) {
                json_object_set_new(out, name, json_null());
                return;
        }
        json_t *v = json_object_get(o->props, name);
        if (!v) {
                const prop_def *pd = prop_find(o->kind, name);
                v = pd && pd->type == T_STRARR ? json_array() : json_null();
                json_object_set_new(out, name, v);
                return;
        }
        json_object_set(out, name, v);
}

json_t *emu_obj_render(const emu_obj *o, char **select, size_t nsel) {
        json_t *out = json_object();
        if (select && nsel) {
                bool has_id = false;
                for (size_t i = 0; i < nsel; i++) {
                        if (!strcmp(select[i], "members"))
                                continue;
                        has_id = has_id || !strcmp(select[i], "id");
                        put_prop(out, o, select[i]);
                }
                if (!has_id)
                        json_object_set_new(out, "id", json_string(o->id));
                return out;
        }
        if (o->kind == EMU_USER) {
                for (size_t i = 0; i < NPROPS(user_props); i++)
                        if (user_props[i].flags & F_DEFAULT)
                                put_prop(out, o, user_props[i].name);
                return out;
        }
        json_object_set_new(out, "id", json_string(o->id));
        for (size_t i = 0; i < NPROPS(group_props); i++)
                put_prop(out, o, group_props[i].name);
        const char *k;
        json_t *v;
        json_object_foreach(o->props, k, v) {
                if (is_extension(k))
                        json_object_set(out, k, v);
        }
        return out;
}

json_t *emu_obj_dump(const emu_obj *o, bool for_snapshot) {
        json_t *out = json_deep_copy(o->props);
        if (o->kind == EMU_GROUP) {
                json_t *mem = json_array();
                if (for_snapshot) {
                        for (size_t i = 0; i < o->mvec.len; i++) {
                                emu_obj *m = o->mvec.val[i];
                                if (m)
                                        json_array_append_new(mem, json_string(m->id));
                        }
                } else {
                        /* Stable order for comparisons: sorted ids. */
                        size_t n = 0;
                        const char **ids = malloc((o->mvec.live + 1) * sizeof(*ids));
                        for (size_t i = 0; ids && i < o->mvec.len; i++) {
                                emu_obj *m = o->mvec.val[i];
                                if (m)
                                        ids[n++] = m->id;
                        }
                        for (size_t i = 1; ids && i < n; i++) { /* insertion sort is fine per group */
                                const char *x = ids[i];
                                size_t j = i;
                                for (; j > 0 && strcmp(ids[j - 1], x) > 0; j--)
                                        ids[j] = ids[j - 1];
                                ids[j] = x;
                        }
                        for (size_t i = 0; ids && i < n; i++)
                                json_array_append_new(mem, json_string(ids[i]));
                        free(ids);
                }
                json_object_set_new(out, "members", mem);
        }
        if (for_snapshot) {
                json_object_set_new(out, "@emu.kind", json_string(o->kind == EMU_USER ? "user" : "group"));
                json_object_set_new(out, "@emu.state", json_integer(o->state));
                json_object_set_new(out, "@emu.cseq", json_integer((json_int_t)o->cseq));
                json_object_set_new(out, "@emu.chg", json_integer((json_int_t)o->chg));
        }
        return out;
}

static int cmp_id(const void *a, const void *b) {
        const emu_obj *x = *(emu_obj *const *)a, *y = *(emu_obj *const *)b;
        return strcmp(x->id, y->id);
}

json_t *emu_state_dump(emu_server *srv, const char *tenant) {
        json_t *users = json_array(), *groups = json_array(), *dusers = json_array(), *dgroups = json_array();
        json_t *tenants = json_array();
        size_t it = 0;
        const char *k;
        void *v;
        while (emu_map_next(&srv->tenants, &it, &k, &v)) {
                emu_tenant *tn = v;
                if (tenant && strcasecmp(tenant, tn->id))
                        continue;
                json_array_append_new(tenants, json_string(tn->id));
                size_t n = 0;
                emu_obj **all = malloc((tn->byid.n + 1) * sizeof(*all));
                size_t it2 = 0;
                const char *k2;
                void *v2;
                while (all && emu_map_next(&tn->byid, &it2, &k2, &v2))
                        if (((emu_obj *)v2)->state != EMU_PURGED)
                                all[n++] = v2;
                if (all)
                        qsort(all, n, sizeof(*all), cmp_id);
                for (size_t i = 0; i < n; i++) {
                        emu_obj *o = all[i];
                        json_t *d = emu_obj_dump(o, false);
                        json_object_set_new(d, "tenantId", json_string(tn->id));
                        json_t *dst = o->kind == EMU_USER ? (o->state == EMU_LIVE ? users : dusers)
                                                          : (o->state == EMU_LIVE ? groups : dgroups);
                        json_array_append_new(dst, d);
                }
                free(all);
        }
        return json_pack("{s:o, s:o, s:o, s:o, s:o}", "tenants", tenants, "users", users, "groups", groups,
                         "deletedUsers", dusers, "deletedGroups", dgroups);
}

void emu_state_reset(emu_server *srv) {
        size_t it = 0;
        const char *k;
        void *v;
        while (emu_map_next(&srv->tenants, &it, &k, &v))
                emu_tenant_free(v);
        emu_map_clear(&srv->tenants);
}

int emu_snapshot_save(emu_server *srv, const char *path) {
        json_t *root = json_object();
        json_t *tns = json_object();
        size_t it = 0;
        const char *k;
        void *v;
        while (emu_map_next(&srv->tenants, &it, &k, &v)) {
                emu_tenant *tn = v;
                json_t *objs = json_array();
                /* Creation order, so that reloading keeps list order. */
                for (int kind = 0; kind < 2; kind++)
                        for (size_t i = 0; i < tn->list[kind].len; i++)
                                if (tn->list[kind].val[i])
                                        json_array_append_new(objs,
                                                              emu_obj_dump(tn->list[kind].val[i], true));
                json_object_set_new(tns, tn->id,
                                    json_pack("{s:I, s:o}", "seq", (json_int_t)tn->seq, "objects", objs));
        }
        json_object_set_new(root, "version", json_integer(1));
        json_object_set_new(root, "tenants", tns);
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        int rc = json_dump_file(root, tmp, JSON_COMPACT);
        json_decref(root);
        if (rc == 0 && rename(tmp, path))
                rc = -1;
        return rc;
}

int emu_snapshot_load(emu_server *srv, const char *path) {
        json_error_t jerr;
        json_t *root = json_load_file(path, 0, &jerr);
        if (!root)
                return -1;
        json_t *tns = json_object_get(root, "tenants");
        const char *tid;
        json_t *tj;
        json_object_foreach(tns, tid, tj) {
                emu_tenant *tn = emu_tenant_get(srv, tid, true);
                if (!tn)
                        continue;
                json_t *objs = json_object_get(tj, "objects");
                size_t i;
                json_t *oj;
                /* First pass: objects; second: members. */
                json_array_foreach(objs, i, oj) {
                        const char *id = json_string_value(json_object_get(oj, "id"));
                        const char *kind = json_string_value(json_object_get(oj, "@emu.kind"));
                        if (!id || !kind || strlen(id) != 36)
                                continue;
                        emu_obj *o = calloc(1, sizeof(*o));
                        snprintf(o->id, sizeof(o->id), "%s", id);
                        o->kind = !strcmp(kind, "user") ? EMU_USER : EMU_GROUP;
                        o->state = (emu_state)json_integer_value(json_object_get(oj, "@emu.state"));
                        o->cseq = (uint64_t)json_integer_value(json_object_get(oj, "@emu.cseq"));
                        o->chg = (uint64_t)json_integer_value(json_object_get(oj, "@emu.chg"));
                        o->props = json_deep_copy(oj);
                        json_object_del(o->props, "members");
                        json_object_del(o->props, "@emu.kind");
                        json_object_del(o->props, "@emu.state");
                        json_object_del(o->props, "@emu.cseq");
                        json_object_del(o->props, "@emu.chg");
                        emu_map_put(&tn->byid, o->id, o);
                        emu_seqvec_push(&tn->list[o->kind], o->cseq, o);
                        if (o->state == EMU_LIVE)
                                index_add(tn, o);
                }
                json_array_foreach(objs, i, oj) {
                        json_t *mem = json_object_get(oj, "members");
                        emu_obj *g = emu_obj_find(tn, json_string_value(json_object_get(oj, "id")));
                        if (!g || !json_is_array(mem))
                                continue;
                        size_t j;
                        json_t *mj;
                        json_array_foreach(mem, j, mj) {
                                emu_obj *m = emu_obj_find(tn, json_string_value(mj));
                                if (m)
                                        emu_member_add(tn, g, m);
                        }
                }
                uint64_t seq = (uint64_t)json_integer_value(json_object_get(tj, "seq"));
                if (seq > tn->seq)
                        tn->seq = seq;
        }
        json_decref(root);
        return 0;
}
