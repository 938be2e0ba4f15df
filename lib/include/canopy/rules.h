/* canopy/rules.h: sync rules: connectors, scoping, joins, attribute flows.
 *
 * The rules file is YAML (docs/RULES.md). It is loaded and compiled once;
 * a bad file fails with file:line:column and a caret line for every error.
 * A loaded canopy_rules is immutable: every function below is thread-safe on
 * it. The library does no I/O except reading the rules file.
 *
 * Typical worker use:
 *
 *   canopy_rules *r; canopy_rules_diags d = {0};
 *   if (canopy_rules_load_file(path, &r, &d)) { fputs(canopy_rules_diags_text(&d), stderr); exit(1); }
 *   canopy_arena *a = canopy_arena_new(0, 0);
 *   // join stage, per change event:
 *   canopy_obj_view v; canopy_obj_view_from_event(&v, ev);   // or your own lookup callback
 *   canopy_scope_result sr; canopy_rules_scope(r, &v, NULL, &sr);
 *   const canopy_join_rule *jr; size_t njr;
 *   canopy_rules_join_rules(r, v.connector, "user", &jr, &njr);
 *   for each rule: canopy_rules_join_values(r, &jr[i], &v, a, &keys, &nkeys) -> look up index
 *   // export stage, per mv event: views of every contributor
 *   canopy_rules_desired des; canopy_rules_compute(r, "user", views, n, &ectx, a, &des, msg, sizeof msg);
 *   canopy_arena_reset(a);
 */
#ifndef CANOPY_RULES_H
#define CANOPY_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/arena.h"
#include "canopy/err.h"
#include "canopy/expr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Caps. */
#define CANOPY_RULES_MAX_FILE (4u * 1024u * 1024u) /* bytes of a rules file */
#define CANOPY_RULES_MAX_CONNECTORS 256u
#define CANOPY_RULES_MAX_FLOWS 1024u              /* flows per connector and object type */
#define CANOPY_RULES_MAX_DIAGS 100u               /* errors kept per load */
#define CANOPY_DN_MAX 8192u                       /* bytes of a DN the scoper accepts */

typedef struct canopy_rules canopy_rules;

/* ---- load -------------------------------------------------------------- */

typedef struct canopy_rules_diag {
        unsigned line, col; /* 1-based position in the file */
        char *msg;          /* "unknown function 'Foo'" (owned by the diags) */
        char *text;         /* "file:line:col: error: msg\n<source line>\n   ^\n" (owned by the diags) */
} canopy_rules_diag;

typedef struct canopy_rules_diags {
        canopy_rules_diag *items; /* owned */
        size_t n;
        char *all;                /* concatenation of every item's text (owned) */
} canopy_rules_diags;

/* Load and compile a rules file. On success *ret is owned by the caller
 * (canopy_rules_free). On failure returns CANOPY_ERR_RULES_SYNTAX (YAML or
 * expression syntax), CANOPY_ERR_RULES_SEMANTIC (everything else),
 * CANOPY_ERR_IO or CANOPY_ERR_LIMIT, and fills ret_diags (may be NULL;
 * release with canopy_rules_diags_free) with every error found, not just
 * the first. */
canopy_err canopy_rules_load_file(const char *path, canopy_rules **ret, canopy_rules_diags *ret_diags);

/* Same from a buffer; `name` is used in messages. `buf` borrowed. */
canopy_err canopy_rules_load_buffer(const char *name, const char *buf, size_t len, canopy_rules **ret,
                                    canopy_rules_diags *ret_diags);

/* Built-in defaults for a list of connectors (no file): default scoping
 * exclusions, anchor join, and Entra cloud sync's default mappings for the
 * kind ("ad", "openldap" or "ldap"). `domains[i]` is connector i's DNS
 * domain for the UPN fallback (may be NULL: taken from the DC= components
 * of the object's DN). Arrays borrowed. *ret owned by the caller. */
canopy_err canopy_rules_load_defaults(const char *const *ids, const char *const *kinds, const char *const *domains,
                                      size_t n, canopy_rules **ret, canopy_rules_diags *ret_diags);

/* The built-in default rules as a YAML document for one AD connector "ad1"
 * and one OpenLDAP connector "ldap1" (documentation, `canopyctl rules
 * defaults`). Static string. */
const char *canopy_rules_defaults_yaml(void);

/* All diagnostic texts concatenated ("" when none). Borrowed from d. */
const char *canopy_rules_diags_text(const canopy_rules_diags *d);

/* Release the diagnostics' memory; the struct is zeroed. NULL allowed. */
void canopy_rules_diags_free(canopy_rules_diags *d);

/* Free loaded rules. NULL allowed. */
void canopy_rules_free(canopy_rules *r);

/* ---- connectors ------------------------------------------------------- */

typedef enum canopy_connector_kind {
        CANOPY_CONN_AD = 0,
        CANOPY_CONN_OPENLDAP,
        CANOPY_CONN_LDAP,
} canopy_connector_kind;

/* A connector as the rules see it. Every pointer is owned by the rules. */
typedef struct canopy_rules_connector {
        const char *id;
        canopy_connector_kind kind;
        const char *domain;             /* DNS domain for UPN fallbacks, may be NULL */
        int precedence;                 /* lower wins (as in Entra Connect) */
        /* Source anchor: the first of these attributes present on the object
         * (AD default: ms-ds-consistencyguid, objectguid; LDAP: entryuuid).
         * Lower-case. */
        const char *const *anchor_attrs;
        size_t nanchor_attrs;
        /* LDAP object classes (lower-case) per object type; an object is of
         * the first type one of whose classes it has, unless it has one of
         * the type's excluded classes (AD user excludes computer). */
        const char *const *user_classes;
        size_t nuser_classes;
        const char *const *group_classes;
        size_t ngroup_classes;
        const char *const *contact_classes;
        size_t ncontact_classes;
        const char *const *excluded_classes;
        size_t nexcluded_classes;
} canopy_rules_connector;

/* Number of connectors, and connector i (borrowed). */
size_t canopy_rules_connector_count(const canopy_rules *r);
const canopy_rules_connector *canopy_rules_connector_at(const canopy_rules *r, size_t i);
/* Connector by id, NULL when unknown. (borrowed) */
const canopy_rules_connector *canopy_rules_connector_find(const canopy_rules *r, const char *id);

/* Object type of `obj` ("user", "group", "contact"; static strings) from
 * its objectClass values for its connector; NULL when it is none of them
 * or the connector is unknown. Uses obj->object_type when already set. */
const char *canopy_rules_object_type(const canopy_rules *r, const canopy_obj_view *obj);

/* Source anchor bytes of `obj`: obj->anchor when set, else the first of the
 * connector's anchor attributes present (a textual entryUUID/GUID
 * "xxxxxxxx-xxxx-..." is converted to its 16 bytes, in arena `a`). *ret is
 * borrowed from obj or owned by `a`. CANOPY_ERR_NOT_FOUND when none. */
canopy_err canopy_rules_anchor(const canopy_rules *r, const canopy_obj_view *obj, canopy_arena *a, canopy_bytes *ret);

/* ---- scoping ---------------------------------------------------------- */

/* Optional caller help for group scoping. When is_direct_member is NULL the
 * object's own memberOf values are used (direct membership only, as cloud
 * sync). */
typedef struct canopy_scope_ctx {
        /* true when the object with DN `member_dn` is a direct member of the
         * group with DN `group_dn` (as the caller's connector space says). */
        bool (*is_direct_member)(void *ctx, const char *group_dn, const char *member_dn);
        void *ctx;
} canopy_scope_ctx;

typedef struct canopy_scope_result {
        bool in_scope;
        char reason[256]; /* "excluded OU 'OU=Disabled,DC=corp,DC=example'", "filter group 2 matched", ... */
} canopy_scope_result;

/* Decide whether `obj` (of connector obj->connector) is in scope:
 * object type known, DN under an included OU (when any) and under no
 * excluded OU, direct member of a scoping group (when any), attribute
 * filter groups (clauses ANDed within a group, groups ORed; no group = all),
 * and the default system-object exclusions. ctx may be NULL.
 * Returns CANOPY_ERR_NOT_FOUND for an unknown connector. */
canopy_err canopy_rules_scope(const canopy_rules *r, const canopy_obj_view *obj, const canopy_scope_ctx *ctx,
                              canopy_scope_result *ret);

/* ---- joins ------------------------------------------------------------ */

/* One join rule: the connector object's `source` attribute matched against
 * the metaverse attribute `mv`. Rules are tried in order (anchor first);
 * the first rule with exactly one candidate joins. `is_anchor` marks the
 * source-anchor rule: its source is the connector's anchor (see
 * canopy_rules_anchor) and its mv attribute "sourceAnchor". */
typedef struct canopy_join_rule {
        const char *source; /* lower-case attribute name, or "anchor" */
        const char *mv;     /* metaverse attribute, e.g. "sourceAnchor", "mail" */
        bool is_anchor;
} canopy_join_rule;

/* Ordered join rules for a connector and object type (borrowed, possibly
 * n = 0 for an unknown pair). */
void canopy_rules_join_rules(const canopy_rules *r, const char *connector, const char *object_type,
                             const canopy_join_rule **ret, size_t *ret_n);

/* Normalised join keys of `obj` for `rule` (strings trimmed and lower-cased,
 * binary values Base64), to index and look up the metaverse. *ret is an
 * array of *ret_n NUL-terminated strings in arena `a`; n = 0 when the
 * attribute is absent. */
canopy_err canopy_rules_join_values(const canopy_rules *r, const canopy_join_rule *rule, const canopy_obj_view *obj,
                                    canopy_arena *a, const char *const **ret, size_t *ret_n);

/* ---- attribute flow ---------------------------------------------------- */

/* One desired target property. */
typedef struct canopy_rules_prop {
        const char *name;      /* Graph property, e.g. "displayName",
                                * "onPremisesExtensionAttributes.extensionAttribute1" (borrowed from rules) */
        canopy_value value;    /* CANOPY_V_NULL: clear the property (arena/obj-owned) */
        const char *connector; /* contributor whose flow won; NULL when no flow gave a value */
        bool create_only;      /* apply only when the cloud object is created */
} canopy_rules_prop;

typedef struct canopy_rules_desired {
        canopy_rules_prop *props; /* arena-owned, in the rules' target order */
        size_t n;
} canopy_rules_desired;

/* Compute the desired cloud properties of a metaverse object of
 * `object_type` from its contributing connector objects (views borrowed; each
 * view's connector field says which connector it comes from). For each
 * target property the flows of the contributors are tried by connector
 * precedence (lower number first, then file order); the first flow whose
 * value is not null wins; IgnoreFlowIfNullOrEmpty skips a flow. A property
 * no flow sets is returned with a NULL value (clear), except create-only
 * and skipped ones, which are left out. Group memberships are not a flow:
 * see canopy_rules_member_attribute. Memory from `a`. ctx may be NULL.
 * Returns CANOPY_ERR_EXPR_EVAL (message with property and connector in
 * ret_msg) or CANOPY_ERR_LIMIT. */
canopy_err canopy_rules_compute(const canopy_rules *r, const char *object_type, const canopy_obj_view *const *contribs,
                                size_t ncontribs, const canopy_eval_ctx *ctx, canopy_arena *a,
                                canopy_rules_desired *ret, char *ret_msg, size_t msgcap);

/* Find a property in a computed result (case-sensitive Graph name); NULL
 * when absent. (borrowed) */
const canopy_rules_prop *canopy_rules_desired_get(const canopy_rules_desired *d, const char *name);

/* Every target property name the rules can produce for an object type
 * (borrowed, file order). */
void canopy_rules_targets(const canopy_rules *r, const char *object_type, const char *const **ret, size_t *ret_n);

/* The source attribute holding group members' DNs for this connector and
 * object type ("member" for AD and groupOfNames, "uniquemember" for
 * groupOfUniqueNames); NULL when the type has no members. (borrowed) */
const char *canopy_rules_member_attribute(const canopy_rules *r, const char *connector, const char *object_type);

/* ---- DN helpers (RFC 4514) ------------------------------------------- */

/* true when two DNs are equal: attribute types case-insensitive, values
 * compared after unescaping (\, \+ \" \XX hex) and case folding (ASCII and
 * Unicode simple case folding of Latin/Greek/Cyrillic), insignificant
 * spaces around separators ignored. A DN that does not parse is equal only
 * to the byte-identical string. */
bool canopy_dn_equal(const char *a, const char *b);

/* true when `dn` equals `base` or lies below it. */
bool canopy_dn_is_under(const char *dn, const char *base);

/* Canonical form of a DN (lower-case types and values, unescaped then
 * re-escaped minimally, no spaces around separators), in arena `a`.
 * NULL when the DN does not parse. Equal DNs have equal canonical forms. */
const char *canopy_dn_normalize(const char *dn, canopy_arena *a);

#ifdef __cplusplus
}
#endif
#endif
