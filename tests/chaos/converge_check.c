/* canopy-converge-check: is the Graph emulator's state what the directories
 * and the rules say it should be?
 *
 *   canopy-converge-check --rules rules.yaml --forest north=north.ldif [--forest ...]
 *                         (--state state.json | --url https://.../_emulator/state [--cacert ca.pem])
 *
 * The expected Entra state is computed along a path independent of the
 * workers: the LDIF is parsed here (base64 values, folded lines), the rules
 * library decides type, scope, joins and properties (canopy/rules.h), and
 * group members are translated by DN here. Nothing of the worker code or of
 * Redis is used. Users are matched by userPrincipalName, groups by
 * mailNickname (else displayName); members are compared by those names.
 * Immutable ids (the anchor, entryUUID, which a plain LDIF does not carry)
 * must be present and unique; when the LDIF carries entryUUID they are also
 * compared with the expected value.
 *
 * Exit: 0 converged, 1 differences found, 2 bad usage or unreadable input.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>

#include "canopy/arena.h"
#include "canopy/rules.h"

#define MAX_FORESTS 64
#define MAX_LDIF (1024u * 1024u * 1024u) /* bytes of one LDIF file */
#define MAX_STATE (1024u * 1024u * 1024u) /* bytes of the emulator's state */
#define MAX_JOIN_KEYS 64

/* ---- small helpers --------------------------------------------------------- */

static void *xcalloc(size_t n, size_t sz) {
        void *p = calloc(n ? n : 1, sz ? sz : 1);
        if (!p) {
                fputs("canopy-converge-check: out of memory\n", stderr);
                exit(2);
        }
        return p;
}

static void *xrealloc(void *p, size_t n) {
        p = realloc(p, n ? n : 1);
        if (!p) {
                fputs("canopy-converge-check: out of memory\n", stderr);
                exit(2);
        }
        return p;
}

static char *xstrndup(const char *s, size_t n) {
        char *d = xcalloc(n + 1, 1);
        memcpy(d, s, n);
        return d;
}

static char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

static char *lower_dup(const char *s) {
        char *d = xstrdup(s);
        for (char *p = d; *p; p++)
                *p = (char)tolower((unsigned char)*p);
        return d;
}

/* String -> index map (open addressing, grows). */
typedef struct smap {
        char **keys;
        size_t *vals;
        size_t cap, n;
} smap;

static uint64_t hash_str(const char *s) {
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ull;
        return h;
}

static void smap_put(smap *m, const char *key, size_t val);

static void smap_grow(smap *m) {
        smap old = *m;
        m->cap = old.cap ? old.cap * 2 : 1024;
        m->keys = xcalloc(m->cap, sizeof(char *));
        m->vals = xcalloc(m->cap, sizeof(size_t));
        m->n = 0;
        for (size_t i = 0; i < old.cap; i++)
                if (old.keys[i]) {
                        smap_put(m, old.keys[i], old.vals[i]);
                        free(old.keys[i]);
                }
        free(old.keys);
        free(old.vals);
}

/* Insert or replace. */
static void smap_put(smap *m, const char *key, size_t val) {
        if ((m->n + 1) * 2 > m->cap)
                smap_grow(m);
        size_t i = hash_str(key) & (m->cap - 1);
        while (m->keys[i] && strcmp(m->keys[i], key))
                i = (i + 1) & (m->cap - 1);
        if (!m->keys[i]) {
                m->keys[i] = xstrdup(key);
                m->n++;
        }
        m->vals[i] = val;
}

static bool smap_get(const smap *m, const char *key, size_t *ret) {
        if (!m->cap)
                return false;
        size_t i = hash_str(key) & (m->cap - 1);
        while (m->keys[i]) {
                if (!strcmp(m->keys[i], key)) {
                        *ret = m->vals[i];
                        return true;
                }
                i = (i + 1) & (m->cap - 1);
        }
        return false;
}

static void smap_free(smap *m) {
        for (size_t i = 0; i < m->cap; i++)
                free(m->keys[i]);
        free(m->keys);
        free(m->vals);
        memset(m, 0, sizeof(*m));
}

/* ---- LDIF ------------------------------------------------------------------ */

typedef struct entry {
        char *dn;
        canopy_attr *attrs;
        size_t nattrs;
        size_t forest;      /* index in the forests given */
        const char *type;   /* "user", "group", "contact" or NULL */
        bool in_scope;
        long mv;            /* metaverse object, -1 when none */
        canopy_obj_view view;
        canopy_attr_array holder;
        canopy_bytes anchor; /* from entryUUID when the LDIF carries it */
        bool has_anchor;
} entry;

typedef struct forest {
        const char *name; /* connector id */
        const char *path;
        size_t first, n;  /* entries [first, first+n) */
} forest;

static entry *entries;
static size_t nentries, capentries;

static int b64val(int c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

/* Decode Base64 (blanks skipped); false on a bad character. */
static bool b64decode(const char *s, size_t n, uint8_t **ret, size_t *ret_len) {
        uint8_t *out = xcalloc(n / 4 * 3 + 4, 1);
        size_t o = 0;
        unsigned acc = 0;
        int bits = 0;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (c == '=' || c == ' ' || c == '\t')
                        continue;
                int v = b64val((unsigned char)c);
                if (v < 0) {
                        free(out);
                        return false;
                }
                acc = (acc << 6) | (unsigned)v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (uint8_t)(acc >> bits);
                        acc &= (1u << bits) - 1;
                }
        }
        *ret = out;
        *ret_len = o;
        return true;
}

static void b64encode(const uint8_t *in, size_t len, char *out) {
        static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t o = 0;
        for (size_t i = 0; i < len; i += 3) {
                unsigned v = (unsigned)in[i] << 16;
                if (i + 1 < len)
                        v |= (unsigned)in[i + 1] << 8;
                if (i + 2 < len)
                        v |= in[i + 2];
                out[o++] = t[(v >> 18) & 63];
                out[o++] = t[(v >> 12) & 63];
                out[o++] = i + 1 < len ? t[(v >> 6) & 63] : '=';
                out[o++] = i + 2 < len ? t[v & 63] : '=';
        }
        out[o] = 0;
}

static bool valid_utf8(const uint8_t *s, size_t n) {
        for (size_t i = 0; i < n;) {
                uint8_t c = s[i];
                size_t k;
                uint32_t cp;
                if (c < 0x80) {
                        if (!c)
                                return false;
                        i++;
                        continue;
                }
                if ((c & 0xE0) == 0xC0)
                        k = 1, cp = c & 0x1F;
                else if ((c & 0xF0) == 0xE0)
                        k = 2, cp = c & 0x0F;
                else if ((c & 0xF8) == 0xF0)
                        k = 3, cp = c & 0x07;
                else
                        return false;
                if (i + k >= n)
                        return false;
                for (size_t j = 1; j <= k; j++) {
                        if ((s[i + j] & 0xC0) != 0x80)
                                return false;
                        cp = (cp << 6) | (s[i + j] & 0x3F);
                }
                if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
                    (cp >= 0xD800 && cp <= 0xDFFF))
                        return false;
                i += k + 1;
        }
        return true;
}

/* Attributes whose values are binary whatever their bytes (as LDAP schemas
 * say: octet strings and the AD GUID/SID family). */
static bool binary_name(const char *name) {
        static const char *const b[] = {"objectguid",     "objectsid",       "ms-ds-consistencyguid",
                                        "jpegphoto",      "thumbnailphoto",  "usercertificate",
                                        "usercertificate;binary", "tokengroups", "sidhistory",
                                        "msexchmailboxguid", "photo",       NULL};
        for (size_t i = 0; b[i]; i++)
                if (!strcmp(name, b[i]))
                        return true;
        return false;
}

/* "cn;lang-fr" -> "cn", "userCertificate;binary" -> "usercertificate;binary". */
static char *attr_base_name(const char *s, size_t n) {
        char *raw = xstrndup(s, n);
        char *name = lower_dup(raw);
        free(raw);
        char *semi = strchr(name, ';');
        if (semi) {
                bool bin = strstr(semi, ";binary") != NULL;
                *semi = 0;
                if (bin)
                        strcat(name, ";binary");
        }
        return name;
}

static void entry_add_value(entry *e, char *name, uint8_t *val, size_t len) {
        canopy_attr *a = NULL;
        for (size_t i = 0; i < e->nattrs; i++)
                if (!strcmp(e->attrs[i].name, name)) {
                        a = &e->attrs[i];
                        free(name);
                        break;
                }
        if (!a) {
                e->attrs = xrealloc(e->attrs, (e->nattrs + 1) * sizeof(*e->attrs));
                a = &e->attrs[e->nattrs++];
                memset(a, 0, sizeof(*a));
                a->name = name;
                a->binary = binary_name(name);
        }
        a->values = xrealloc(a->values, (a->nvalues + 1) * sizeof(*a->values));
        a->values[a->nvalues].data = val;
        a->values[a->nvalues].len = len;
        a->nvalues++;
        if (!a->binary && !valid_utf8(val, len))
                a->binary = true;
}

static int ldif_error(const char *path, size_t line, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "canopy-converge-check: %s:%zu: ", path, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        return -1;
}

/* Parse one content LDIF (RFC 2849: version line, comments, folded lines,
 * `attr: value`, `attr:: base64`; `attr:< URL` is refused; change records
 * are refused). Entries are appended to `entries`. */
static int ldif_load(const char *path, size_t forest_idx) {
        FILE *f = fopen(path, "rb");
        if (!f) {
                fprintf(stderr, "canopy-converge-check: cannot read %s: %s\n", path, strerror(errno));
                return -1;
        }
        size_t cap = 1 << 16, len = 0, n;
        char *buf = xcalloc(cap + 1, 1);
        while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
                len += n;
                if (len == cap) {
                        if (cap >= MAX_LDIF) {
                                fclose(f);
                                free(buf);
                                return ldif_error(path, 0, "larger than %u bytes", MAX_LDIF);
                        }
                        cap *= 2;
                        buf = xrealloc(buf, cap + 1);
                }
        }
        fclose(f);
        buf[len] = 0;

        /* Logical lines: unfold ("\n " continues), drop CR before LF. */
        char **lines = NULL;
        size_t *lineno = NULL, nlines = 0, lcap = 0;
        size_t phys = 1;
        char *cur = NULL;
        size_t curlen = 0, curcap = 0;
        bool in_comment = false;
        size_t i = 0;
        while (i <= len) {
                size_t s = i;
                while (i < len && buf[i] != '\n')
                        i++;
                size_t e = i;
                if (e > s && buf[e - 1] == '\r')
                        e--;
                bool cont = e > s && buf[s] == ' ';
                if (cont && (cur || in_comment)) {
                        if (!in_comment) {
                                if (curlen + (e - s) + 1 > curcap) {
                                        curcap = (curlen + (e - s) + 1) * 2;
                                        cur = xrealloc(cur, curcap);
                                }
                                memcpy(cur + curlen, buf + s + 1, e - s - 1);
                                curlen += e - s - 1;
                                cur[curlen] = 0;
                        }
                } else {
                        if (cur) {
                                lines[nlines - 1] = cur;
                                cur = NULL;
                        }
                        in_comment = e > s && buf[s] == '#';
                        if (!in_comment) {
                                if (nlines + 1 > lcap) {
                                        lcap = lcap ? lcap * 2 : 1024;
                                        lines = xrealloc(lines, lcap * sizeof(*lines));
                                        lineno = xrealloc(lineno, lcap * sizeof(*lineno));
                                }
                                curcap = (e - s) + 64;
                                cur = xcalloc(curcap, 1);
                                memcpy(cur, buf + s, e - s);
                                curlen = e - s;
                                lineno[nlines] = phys;
                                lines[nlines++] = NULL;
                        }
                }
                phys++;
                i++;
        }
        if (cur)
                lines[nlines - 1] = cur;
        free(buf);

        int rc = 0;
        entry *e = NULL;
        for (size_t l = 0; l < nlines && !rc; l++) {
                char *ln = lines[l];
                if (!*ln) { /* blank: end of record */
                        e = NULL;
                        continue;
                }
                char *colon = strchr(ln, ':');
                if (!colon || colon == ln) {
                        rc = ldif_error(path, lineno[l], "not 'attribute: value': %.60s", ln);
                        break;
                }
                size_t nl = (size_t)(colon - ln);
                char *v = colon + 1;
                bool is_b64 = false;
                if (*v == ':') {
                        is_b64 = true;
                        v++;
                } else if (*v == '<') {
                        rc = ldif_error(path, lineno[l], "URL values are not supported");
                        break;
                }
                while (*v == ' ')
                        v++;
                uint8_t *val;
                size_t vlen;
                if (is_b64) {
                        if (!b64decode(v, strlen(v), &val, &vlen)) {
                                rc = ldif_error(path, lineno[l], "bad base64 value");
                                break;
                        }
                } else {
                        vlen = strlen(v);
                        val = (uint8_t *)xstrndup(v, vlen);
                }
                if (!e) {
                        if (nl == 7 && !strncasecmp(ln, "version", 7)) {
                                free(val);
                                continue;
                        }
                        if (nl != 2 || strncasecmp(ln, "dn", 2)) {
                                free(val);
                                rc = ldif_error(path, lineno[l], "a record must start with 'dn:'");
                                break;
                        }
                        if (nentries == capentries) {
                                capentries = capentries ? capentries * 2 : 1024;
                                entries = xrealloc(entries, capentries * sizeof(*entries));
                        }
                        e = &entries[nentries++];
                        memset(e, 0, sizeof(*e));
                        e->dn = xstrndup((char *)val, vlen);
                        e->forest = forest_idx;
                        e->mv = -1;
                        free(val);
                        continue;
                }
                if (nl == 10 && !strncasecmp(ln, "changetype", 10)) {
                        bool add = vlen == 3 && !memcmp(val, "add", 3);
                        free(val);
                        if (!add) {
                                rc = ldif_error(path, lineno[l], "change records are not supported (content LDIF only)");
                                break;
                        }
                        continue;
                }
                val = xrealloc(val, vlen + 1); /* NUL for text users; not part of the value */
                val[vlen] = 0;
                entry_add_value(e, attr_base_name(ln, nl), val, vlen);
        }
        for (size_t l = 0; l < nlines; l++)
                free(lines[l]);
        free(lines);
        free(lineno);
        return rc;
}

/* ---- expected state -------------------------------------------------------- */

typedef struct mvobj {
        const char *type;
        size_t *contribs; /* entry indexes */
        size_t ncontribs;
        canopy_rules_desired des;
        json_t *props;    /* desired properties as Graph JSON (dotted names nested) */
        char *key;        /* match key: UPN (users), mailNickname/displayName (groups), lower-case */
        char *label;      /* human name */
        size_t *members;  /* mv indexes (groups) */
        size_t nmembers;
        bool exported;    /* user or group */
} mvobj;

static mvobj *mvs;
static size_t nmvs;
static forest forests[MAX_FORESTS];
static size_t nforests;
static canopy_rules *rules;
static smap dn_index; /* "forest\x1f<normalised dn>" -> entry */

static bool view_lookup(void *ctx, const char *name, const canopy_bytes **ret, size_t *n, bool *bin) {
        entry *e = ctx;
        for (size_t i = 0; i < e->nattrs; i++)
                if (!strcasecmp(e->attrs[i].name, name) && e->attrs[i].nvalues) {
                        *ret = e->attrs[i].values;
                        *n = e->attrs[i].nvalues;
                        *bin = e->attrs[i].binary;
                        return true;
                }
        return false;
}

static const canopy_attr *entry_attr(const entry *e, const char *name) {
        for (size_t i = 0; i < e->nattrs; i++)
                if (!strcasecmp(e->attrs[i].name, name))
                        return &e->attrs[i];
        return NULL;
}

static char *dn_key(size_t forest_idx, const char *dn, canopy_arena *a) {
        const char *norm = canopy_dn_normalize(dn, a);
        if (!norm)
                norm = dn;
        size_t n = strlen(norm) + 16;
        char *k = xcalloc(n, 1);
        snprintf(k, n, "%zu\x1f%s", forest_idx, norm);
        return k;
}

/* Group scoping help: is the entry at member_dn a direct member of group_dn
 * (both in the forest of the entry being scoped)? */
static size_t scope_forest;
static bool is_direct_member(void *ctx, const char *group_dn, const char *member_dn) {
        (void)ctx;
        canopy_arena *a = canopy_arena_new(0, 0);
        char *gk = dn_key(scope_forest, group_dn, a);
        size_t gi;
        bool found = false;
        if (smap_get(&dn_index, gk, &gi)) {
                const entry *g = &entries[gi];
                const char *mattr = canopy_rules_member_attribute(rules, forests[g->forest].name, "group");
                const canopy_attr *ma = mattr ? entry_attr(g, mattr) : NULL;
                for (size_t i = 0; ma && i < ma->nvalues && !found; i++)
                        found = canopy_dn_equal((const char *)ma->values[i].data, member_dn);
        }
        free(gk);
        canopy_arena_free(a);
        return found;
}

static bool is_collection(const char *name) {
        return !strcmp(name, "businessPhones") || !strcmp(name, "otherMails") || !strcmp(name, "imAddresses") ||
               !strcmp(name, "proxyAddresses");
}

static json_t *value_to_json(const canopy_value *v, canopy_arena *a) {
        switch (v->type) {
        case CANOPY_V_NULL:
                return json_null();
        case CANOPY_V_STR:
                return json_stringn(v->u.str.s, v->u.str.len);
        case CANOPY_V_BIN: {
                char *t = xcalloc(v->u.str.len / 3 * 4 + 8, 1);
                b64encode((const uint8_t *)v->u.str.s, v->u.str.len, t);
                json_t *j = json_string(t);
                free(t);
                return j;
        }
        case CANOPY_V_INT:
                return json_integer(v->u.i);
        case CANOPY_V_BOOL:
                return json_boolean(v->u.b);
        case CANOPY_V_MULTI: {
                json_t *arr = json_array();
                for (size_t i = 0; i < v->u.multi.n; i++)
                        json_array_append_new(arr, value_to_json(&v->u.multi.items[i], a));
                return arr;
        }
        }
        return json_null();
}

static void json_set_dotted(json_t *obj, const char *name, json_t *val) {
        const char *dot = strchr(name, '.');
        if (!dot) {
                json_object_set_new(obj, name, val);
                return;
        }
        char *head = xstrndup(name, (size_t)(dot - name));
        json_t *sub = json_object_get(obj, head);
        if (!json_is_object(sub)) {
                sub = json_object();
                json_object_set_new(obj, head, sub);
        }
        free(head);
        json_set_dotted(sub, dot + 1, val);
}

static const char *jstr(json_t *o, const char *k) {
        json_t *v = json_object_get(o, k);
        return json_is_string(v) ? json_string_value(v) : NULL;
}

static long mv_new(const char *type) {
        mvs = xrealloc(mvs, (nmvs + 1) * sizeof(*mvs));
        mvobj *m = &mvs[nmvs];
        memset(m, 0, sizeof(*m));
        m->type = type;
        m->exported = !strcmp(type, "user") || !strcmp(type, "group");
        return (long)nmvs++;
}

static void mv_add_contrib(long mv, size_t ei) {
        mvobj *m = &mvs[mv];
        m->contribs = xrealloc(m->contribs, (m->ncontribs + 1) * sizeof(size_t));
        m->contribs[m->ncontribs++] = ei;
        entries[ei].mv = mv;
}

static int compute_expected(void) {
        canopy_arena *a = canopy_arena_new(0, 0);
        smap join_index = {0};
        /* DN index, views, type, anchor. */
        for (size_t i = 0; i < nentries; i++) {
                entry *e = &entries[i];
                char *k = dn_key(e->forest, e->dn, a);
                smap_put(&dn_index, k, i);
                free(k);
                e->holder.attrs = e->attrs;
                e->holder.nattrs = e->nattrs;
                e->view = (canopy_obj_view){.connector = forests[e->forest].name, .dn = e->dn, .lookup = view_lookup,
                                            .ctx = e};
                e->type = canopy_rules_object_type(rules, &e->view);
                e->view.object_type = e->type;
                canopy_bytes anc;
                if (e->type && canopy_rules_anchor(rules, &e->view, a, &anc) == CANOPY_OK) {
                        e->anchor.data = xcalloc(anc.len, 1);
                        memcpy(e->anchor.data, anc.data, anc.len);
                        e->anchor.len = anc.len;
                        e->has_anchor = true;
                }
                canopy_arena_reset(a);
        }
        for (size_t i = 0; i < nentries; i++) {
                entry *e = &entries[i];
                if (e->has_anchor)
                        e->view.anchor = &e->anchor;
        }
        /* Scope. */
        for (size_t i = 0; i < nentries; i++) {
                entry *e = &entries[i];
                if (!e->type)
                        continue;
                canopy_scope_ctx sc = {.is_direct_member = is_direct_member};
                canopy_scope_result sr;
                scope_forest = e->forest;
                if (canopy_rules_scope(rules, &e->view, &sc, &sr) == CANOPY_OK)
                        e->in_scope = sr.in_scope;
        }
        /* Join or project, in forest then file order (the workers' order is
         * the events' arrival order; for one candidate per join value, as
         * in the usual "same person in several forests", both agree). */
        for (size_t i = 0; i < nentries; i++) {
                entry *e = &entries[i];
                if (!e->type || !e->in_scope)
                        continue;
                const canopy_join_rule *jr;
                size_t njr;
                canopy_rules_join_rules(rules, forests[e->forest].name, e->type, &jr, &njr);
                char *keys[MAX_JOIN_KEYS];
                size_t nkeys = 0;
                long found = -1;
                for (size_t r = 0; r < njr; r++) {
                        if (jr[r].is_anchor) /* an anchor is unique to its object */
                                continue;
                        const char *const *vals;
                        size_t nv;
                        if (canopy_rules_join_values(rules, &jr[r], &e->view, a, &vals, &nv) != CANOPY_OK)
                                continue;
                        for (size_t v = 0; v < nv && nkeys < MAX_JOIN_KEYS; v++) {
                                size_t kl = strlen(e->type) + strlen(jr[r].mv) + strlen(vals[v]) + 3;
                                char *k = xcalloc(kl, 1);
                                snprintf(k, kl, "%s\x1f%s\x1f%s", e->type, jr[r].mv, vals[v]);
                                size_t holder;
                                if (found < 0 && smap_get(&join_index, k, &holder))
                                        found = (long)holder;
                                keys[nkeys++] = k;
                        }
                }
                long mv = found >= 0 ? found : mv_new(e->type);
                mv_add_contrib(mv, i);
                for (size_t k = 0; k < nkeys; k++) {
                        size_t holder;
                        if (!smap_get(&join_index, keys[k], &holder))
                                smap_put(&join_index, keys[k], (size_t)mv);
                        free(keys[k]);
                }
                canopy_arena_reset(a);
        }
        smap_free(&join_index);
        /* Desired properties. */
        int rc = 0;
        for (size_t m = 0; m < nmvs; m++) {
                mvobj *o = &mvs[m];
                const canopy_obj_view **views = xcalloc(o->ncontribs, sizeof(*views));
                for (size_t c = 0; c < o->ncontribs; c++)
                        views[c] = &entries[o->contribs[c]].view;
                char msg[256] = "";
                o->props = json_object();
                canopy_err err = canopy_rules_compute(rules, o->type, views, o->ncontribs, NULL, a, &o->des, msg,
                                                      sizeof(msg));
                free(views);
                if (err) {
                        fprintf(stderr, "canopy-converge-check: rules on %s: %s\n", entries[o->contribs[0]].dn, msg);
                        rc = -1;
                        continue;
                }
                for (size_t p = 0; p < o->des.n; p++) {
                        const canopy_rules_prop *pr = &o->des.props[p];
                        json_t *v = value_to_json(&pr->value, a);
                        if (is_collection(pr->name) && !json_is_array(v)) {
                                json_t *arr = json_array();
                                if (!json_is_null(v))
                                        json_array_append(arr, v);
                                json_decref(v);
                                v = arr;
                        }
                        if (pr->create_only) { /* applied once at create: not kept in step */
                                json_decref(v);
                                continue;
                        }
                        json_set_dotted(o->props, pr->name, v);
                }
                const char *key = NULL;
                if (!strcmp(o->type, "user"))
                        key = jstr(o->props, "userPrincipalName");
                else {
                        key = jstr(o->props, "mailNickname");
                        if (!key)
                                key = jstr(o->props, "displayName");
                }
                if (!key) {
                        /* create-only UPN: take it from the computation */
                        for (size_t p = 0; p < o->des.n && !key; p++)
                                if (!strcmp(o->des.props[p].name, "userPrincipalName") &&
                                    o->des.props[p].value.type == CANOPY_V_STR)
                                        key = canopy_value_to_text(&o->des.props[p].value, ",", a);
                }
                o->key = key ? lower_dup(key) : xstrdup("");
                o->label = xstrdup(key ? key : entries[o->contribs[0]].dn);
                canopy_arena_reset(a);
        }
        /* Members: member DNs of each contributor, in its own forest. */
        for (size_t m = 0; m < nmvs; m++) {
                mvobj *o = &mvs[m];
                if (strcmp(o->type, "group"))
                        continue;
                for (size_t c = 0; c < o->ncontribs; c++) {
                        const entry *g = &entries[o->contribs[c]];
                        const char *mattr = canopy_rules_member_attribute(rules, forests[g->forest].name, "group");
                        const canopy_attr *ma = mattr ? entry_attr(g, mattr) : NULL;
                        for (size_t v = 0; ma && v < ma->nvalues; v++) {
                                char *k = dn_key(g->forest, (const char *)ma->values[v].data, a);
                                size_t ei;
                                bool ok = smap_get(&dn_index, k, &ei);
                                free(k);
                                if (!ok || entries[ei].mv < 0 || !mvs[entries[ei].mv].exported)
                                        continue;
                                size_t target = (size_t)entries[ei].mv;
                                bool dup = false;
                                for (size_t x = 0; x < o->nmembers && !dup; x++)
                                        dup = o->members[x] == target;
                                if (dup)
                                        continue;
                                o->members = xrealloc(o->members, (o->nmembers + 1) * sizeof(size_t));
                                o->members[o->nmembers++] = target;
                        }
                }
                canopy_arena_reset(a);
        }
        canopy_arena_free(a);
        return rc;
}

/* ---- actual state --------------------------------------------------------- */

static size_t curl_write(char *p, size_t sz, size_t n, void *ud) {
        struct {
                char *buf;
                size_t len;
        } *b = ud;
        size_t add = sz * n;
        if (b->len + add > MAX_STATE)
                return 0;
        b->buf = xrealloc(b->buf, b->len + add + 1);
        memcpy(b->buf + b->len, p, add);
        b->len += add;
        b->buf[b->len] = 0;
        return add;
}

static json_t *fetch_state(const char *url, const char *cacert) {
        struct {
                char *buf;
                size_t len;
        } b = {NULL, 0};
        CURL *c = curl_easy_init();
        if (!c)
                return NULL;
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, curl_write);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
        curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
        if (cacert)
                curl_easy_setopt(c, CURLOPT_CAINFO, cacert);
        CURLcode rc = curl_easy_perform(c);
        curl_easy_cleanup(c);
        if (rc != CURLE_OK) {
                fprintf(stderr, "canopy-converge-check: GET %s: %s\n", url, curl_easy_strerror(rc));
                free(b.buf);
                return NULL;
        }
        json_error_t je;
        json_t *j = json_loadb(b.buf ? b.buf : "", b.len, 0, &je);
        free(b.buf);
        if (!j)
                fprintf(stderr, "canopy-converge-check: %s: JSON: %s\n", url, je.text);
        return j;
}

/* ---- comparison ------------------------------------------------------------ */

typedef struct report {
        size_t missing, extra, duplicates, props, members, immutable;
        unsigned max_lines;
        size_t lines[6];
} report;

enum { R_MISSING, R_EXTRA, R_DUP, R_PROP, R_MEMBERS, R_IMM };

static void say(report *r, int kind, const char *fmt, ...) {
        static const char *const tag[] = {"MISSING", "EXTRA", "DUPLICATE", "PROPERTY", "MEMBERS", "IMMUTABLEID"};
        if (r->max_lines && r->lines[kind]++ >= r->max_lines) {
                if (r->lines[kind] == r->max_lines + 1)
                        printf("%-11s ... (more not shown)\n", tag[kind]);
                return;
        }
        va_list ap;
        va_start(ap, fmt);
        printf("%-11s ", tag[kind]);
        vprintf(fmt, ap);
        putchar('\n');
        va_end(ap);
}

/* Graph returns [] for an unset collection and null for an unset scalar. */
static bool json_same(json_t *want, json_t *got) {
        bool want_empty = !want || json_is_null(want) || (json_is_array(want) && !json_array_size(want));
        bool got_empty = !got || json_is_null(got) || (json_is_array(got) && !json_array_size(got));
        if (want_empty || got_empty)
                return want_empty && got_empty;
        if (json_is_object(want)) {
                const char *k;
                json_t *v;
                json_object_foreach(want, k, v) {
                        if (!json_same(v, json_is_object(got) ? json_object_get(got, k) : NULL))
                                return false;
                }
                return true;
        }
        return json_equal(want, got);
}

static char *short_json(json_t *j) {
        if (!j)
                return xstrdup("(absent)");
        char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!s)
                return xstrdup("?");
        if (strlen(s) > 160)
                strcpy(s + 150, "...");
        return s;
}

/* A person of several records keeps the immutable id it was exported with
 * (the anchor of whichever record was exported first, which the LDIF does
 * not tell): any of its records' anchors is right. */
static void keep_exported_anchor(mvobj *o, json_t *got) {
        const char *g = json_string_value(json_object_get(got, "onPremisesImmutableId"));
        if (strcmp(o->type, "user") || o->ncontribs < 2 || !g ||
            !json_is_string(json_object_get(o->props, "onPremisesImmutableId")))
                return;
        for (size_t c = 0; c < o->ncontribs; c++) {
                const entry *e = &entries[o->contribs[c]];
                if (!e->has_anchor || e->anchor.len > 512)
                        continue;
                char b64[700];
                b64encode(e->anchor.data, e->anchor.len, b64);
                if (!strcmp(b64, g)) {
                        json_object_set_new(o->props, "onPremisesImmutableId", json_string(g));
                        return;
                }
        }
}

static void compare_props(report *r, const char *type, const char *label, json_t *want, json_t *got, const char *prefix) {
        const char *k;
        json_t *v;
        json_object_foreach(want, k, v) {
                if (!strcmp(k, "onPremisesImmutableId") && json_is_null(v))
                        continue; /* anchor unknown from this LDIF */
                json_t *g = json_object_get(got, k);
                if (json_is_object(v)) {
                        char p[256];
                        snprintf(p, sizeof(p), "%s%s.", prefix, k);
                        compare_props(r, type, label, v, json_is_object(g) ? g : NULL, p);
                        continue;
                }
                if (json_same(v, g))
                        continue;
                char *ws = short_json(v), *gs = short_json(g);
                r->props++;
                say(r, R_PROP, "%s %s: %s%s: want %s, got %s", type, label, prefix, k, ws, gs);
                free(ws);
                free(gs);
        }
}

typedef struct actual {
        json_t *obj;
        const char *id;
        const char *type;
        char *key;
        long mv;      /* matched expected object, -1 */
        bool dup;
} actual;

static const char *actual_name(actual *acts, size_t nacts, smap *by_id, const char *id) {
        size_t i;
        if (smap_get(by_id, id, &i) && i < nacts) {
                const char *n = jstr(acts[i].obj, !strcmp(acts[i].type, "user") ? "userPrincipalName" : "mailNickname");
                if (!n)
                        n = jstr(acts[i].obj, "displayName");
                return n ? n : id;
        }
        return id;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void compare(report *r, json_t *state, size_t *ret_users, size_t *ret_groups) {
        json_t *users = json_object_get(state, "users"), *groups = json_object_get(state, "groups");
        size_t nacts = json_array_size(users) + json_array_size(groups);
        actual *acts = xcalloc(nacts, sizeof(*acts));
        size_t na = 0;
        smap by_key = {0}, by_id = {0}, by_imm = {0}, exp_key = {0};
        *ret_users = json_array_size(users);
        *ret_groups = json_array_size(groups);
        for (int t = 0; t < 2; t++) {
                json_t *arr = t ? groups : users;
                size_t i;
                json_t *o;
                json_array_foreach(arr, i, o) {
                        actual *x = &acts[na];
                        x->obj = o;
                        x->type = t ? "group" : "user";
                        x->id = jstr(o, "id") ? jstr(o, "id") : "?";
                        const char *k = t ? jstr(o, "mailNickname") : jstr(o, "userPrincipalName");
                        if (t && !k)
                                k = jstr(o, "displayName");
                        char buf[1024];
                        snprintf(buf, sizeof(buf), "%s\x1f%s", x->type, k ? k : "");
                        x->key = lower_dup(buf);
                        x->mv = -1;
                        smap_put(&by_id, x->id, na);
                        na++;
                }
        }
        /* Expected keys (two expected objects with one key cannot both sync). */
        for (size_t m = 0; m < nmvs; m++) {
                mvobj *o = &mvs[m];
                if (!o->exported)
                        continue;
                char buf[1024];
                snprintf(buf, sizeof(buf), "%s\x1f%s", o->type, o->key);
                size_t other;
                if (smap_get(&exp_key, buf, &other))
                        printf("NOTE        expected %s %s twice (%s and %s): a conflict in the source\n", o->type,
                               o->label, entries[mvs[other].contribs[0]].dn, entries[o->contribs[0]].dn);
                else
                        smap_put(&exp_key, buf, m);
        }
        /* Match actual objects to expected ones; duplicates and extras. */
        for (size_t i = 0; i < na; i++) {
                actual *x = &acts[i];
                size_t m, first;
                if (smap_get(&by_key, x->key, &first)) {
                        x->dup = true;
                        r->duplicates++;
                        say(r, R_DUP, "%s %s: ids %s and %s", x->type, strchr(x->key, '\x1f') + 1, acts[first].id,
                            x->id);
                        continue;
                }
                smap_put(&by_key, x->key, i);
                if (smap_get(&exp_key, x->key, &m))
                        x->mv = (long)m;
                else {
                        r->extra++;
                        say(r, R_EXTRA, "%s %s (id %s)", x->type, strchr(x->key, '\x1f') + 1, x->id);
                }
        }
        /* Immutable ids of users: present and unique. */
        for (size_t i = 0; i < na; i++) {
                actual *x = &acts[i];
                if (strcmp(x->type, "user"))
                        continue;
                const char *imm = jstr(x->obj, "onPremisesImmutableId");
                if (!imm || !*imm) {
                        r->immutable++;
                        say(r, R_IMM, "user %s (id %s) has no onPremisesImmutableId", strchr(x->key, '\x1f') + 1, x->id);
                        continue;
                }
                size_t other;
                if (smap_get(&by_imm, imm, &other)) {
                        r->immutable++;
                        say(r, R_IMM, "users %s and %s share onPremisesImmutableId %s", strchr(acts[other].key, '\x1f') + 1,
                            strchr(x->key, '\x1f') + 1, imm);
                } else
                        smap_put(&by_imm, imm, i);
        }
        /* Missing objects, properties, members. */
        for (size_t m = 0; m < nmvs; m++) {
                mvobj *o = &mvs[m];
                if (!o->exported)
                        continue;
                char buf[1024];
                snprintf(buf, sizeof(buf), "%s\x1f%s", o->type, o->key);
                size_t ai;
                if (!smap_get(&by_key, buf, &ai)) {
                        r->missing++;
                        say(r, R_MISSING, "%s %s (%s: %s)", o->type, o->label, forests[entries[o->contribs[0]].forest].name,
                            entries[o->contribs[0]].dn);
                        continue;
                }
                size_t em;
                if (!smap_get(&exp_key, buf, &em) || em != m)
                        continue; /* the other expected object of a source conflict */
                actual *x = &acts[ai];
                keep_exported_anchor(o, x->obj);
                compare_props(r, o->type, o->label, o->props, x->obj, "");
                if (strcmp(o->type, "group"))
                        continue;
                /* Members by name. */
                char **want = xcalloc(o->nmembers, sizeof(char *));
                for (size_t k = 0; k < o->nmembers; k++)
                        want[k] = xstrdup(mvs[o->members[k]].key);
                json_t *mj = json_object_get(x->obj, "members");
                size_t ngot = json_array_size(mj);
                char **got = xcalloc(ngot, sizeof(char *));
                for (size_t k = 0; k < ngot; k++)
                        got[k] = lower_dup(actual_name(acts, na, &by_id, json_string_value(json_array_get(mj, k))
                                                                               ? json_string_value(json_array_get(mj, k))
                                                                               : "?"));
                qsort(want, o->nmembers, sizeof(char *), name_cmp);
                qsort(got, ngot, sizeof(char *), name_cmp);
                char miss[512] = "", extra[512] = "";
                size_t nmiss = 0, nextra = 0, a = 0, b = 0;
                while (a < o->nmembers || b < ngot) {
                        int c = a >= o->nmembers ? 1 : b >= ngot ? -1 : strcmp(want[a], got[b]);
                        if (c < 0) {
                                if (nmiss++ < 5)
                                        snprintf(miss + strlen(miss), sizeof(miss) - strlen(miss), "%s%s", nmiss > 1 ? ", " : "", want[a]);
                                a++;
                        } else if (c > 0) {
                                if (nextra++ < 5)
                                        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), "%s%s", nextra > 1 ? ", " : "", got[b]);
                                b++;
                        } else
                                a++, b++;
                }
                if (nmiss || nextra) {
                        r->members++;
                        say(r, R_MEMBERS, "group %s: %zu member(s) missing%s%s%s, %zu extra%s%s%s (want %zu, got %zu)", o->label,
                            nmiss, nmiss ? " [" : "", miss, nmiss ? (nmiss > 5 ? ", ...]" : "]") : "", nextra,
                            nextra ? " [" : "", extra, nextra ? (nextra > 5 ? ", ...]" : "]") : "", o->nmembers, ngot);
                }
                for (size_t k = 0; k < o->nmembers; k++)
                        free(want[k]);
                for (size_t k = 0; k < ngot; k++)
                        free(got[k]);
                free(want);
                free(got);
        }
        for (size_t i = 0; i < na; i++)
                free(acts[i].key);
        free(acts);
        smap_free(&by_key);
        smap_free(&by_id);
        smap_free(&by_imm);
        smap_free(&exp_key);
}

/* ---- main ------------------------------------------------------------------ */

static void free_all(void) {
        for (size_t i = 0; i < nentries; i++) {
                entry *e = &entries[i];
                for (size_t a = 0; a < e->nattrs; a++) {
                        for (size_t v = 0; v < e->attrs[a].nvalues; v++)
                                free(e->attrs[a].values[v].data);
                        free(e->attrs[a].values);
                        free(e->attrs[a].name);
                }
                free(e->attrs);
                free(e->dn);
                free(e->anchor.data);
        }
        free(entries);
        for (size_t m = 0; m < nmvs; m++) {
                json_decref(mvs[m].props);
                free(mvs[m].contribs);
                free(mvs[m].members);
                free(mvs[m].key);
                free(mvs[m].label);
        }
        free(mvs);
        smap_free(&dn_index);
        canopy_rules_free(rules);
}

static void usage(FILE *f) {
        fputs("usage: canopy-converge-check --rules FILE --forest NAME=LDIF [--forest ...]\n"
              "                             (--state FILE | --url URL [--cacert CA]) [--max-lines N]\n"
              "  --rules FILE       the sync rules the workers use\n"
              "  --forest NAME=LDIF a directory's content (NAME = connector id); export the final\n"
              "                     state with ldapsearch -LLL -o ldif-wrap=no '*' '+' or slapcat\n"
              "  --state FILE       the emulator's GET /_emulator/state JSON (canopy-demo --dump)\n"
              "  --url URL          fetch it (https://127.0.0.1:P/_emulator/state) with --cacert CA\n"
              "  --max-lines N      lines shown per kind of difference (default 20, 0 = all)\n"
              "exit: 0 converged, 1 differences, 2 usage or input error\n",
              f);
}

int main(int argc, char **argv) {
        const char *rules_path = NULL, *state_path = NULL, *url = NULL, *cacert = NULL;
        report r = {.max_lines = 20};
        static const struct option opts[] = {{"rules", required_argument, NULL, 'r'},
                                             {"forest", required_argument, NULL, 'f'},
                                             {"state", required_argument, NULL, 's'},
                                             {"dump", required_argument, NULL, 's'},
                                             {"url", required_argument, NULL, 'u'},
                                             {"cacert", required_argument, NULL, 'c'},
                                             {"max-lines", required_argument, NULL, 'm'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        int c;
        while ((c = getopt_long(argc, argv, "r:f:s:u:c:m:h", opts, NULL)) != -1) {
                switch (c) {
                case 'r':
                        rules_path = optarg;
                        break;
                case 'f': {
                        char *eq = strchr(optarg, '=');
                        if (!eq || eq == optarg || nforests == MAX_FORESTS) {
                                fprintf(stderr, "canopy-converge-check: --forest wants NAME=LDIF (at most %d)\n", MAX_FORESTS);
                                return 2;
                        }
                        *eq = 0;
                        forests[nforests].name = optarg;
                        forests[nforests++].path = eq + 1;
                        break;
                }
                case 's':
                        state_path = optarg;
                        break;
                case 'u':
                        url = optarg;
                        break;
                case 'c':
                        cacert = optarg;
                        break;
                case 'm':
                        r.max_lines = (unsigned)strtoul(optarg, NULL, 10);
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (!rules_path || !nforests || !!state_path == !!url || optind != argc) {
                usage(stderr);
                return 2;
        }
        canopy_rules_diags d = {0};
        if (canopy_rules_load_file(rules_path, &rules, &d) != CANOPY_OK) {
                fputs(canopy_rules_diags_text(&d), stderr);
                canopy_rules_diags_free(&d);
                return 2;
        }
        canopy_rules_diags_free(&d);
        for (size_t i = 0; i < nforests; i++) {
                if (!canopy_rules_connector_find(rules, forests[i].name)) {
                        fprintf(stderr, "canopy-converge-check: no connector '%s' in %s\n", forests[i].name, rules_path);
                        free_all();
                        return 2;
                }
                forests[i].first = nentries;
                if (ldif_load(forests[i].path, i)) {
                        free_all();
                        return 2;
                }
                forests[i].n = nentries - forests[i].first;
        }
        json_t *state;
        if (url) {
                curl_global_init(CURL_GLOBAL_DEFAULT);
                state = fetch_state(url, cacert);
                curl_global_cleanup();
        } else {
                json_error_t je;
                state = json_load_file(state_path, 0, &je);
                if (!state)
                        fprintf(stderr, "canopy-converge-check: %s:%d: %s\n", state_path, je.line, je.text);
        }
        if (!state || !json_is_array(json_object_get(state, "users")) || !json_is_array(json_object_get(state, "groups"))) {
                fputs("canopy-converge-check: the state has no users and groups arrays\n", stderr);
                json_decref(state);
                free_all();
                return 2;
        }
        if (compute_expected()) {
                json_decref(state);
                free_all();
                return 2;
        }
        size_t eu = 0, eg = 0, au, ag;
        for (size_t m = 0; m < nmvs; m++) {
                if (!strcmp(mvs[m].type, "user"))
                        eu++;
                else if (!strcmp(mvs[m].type, "group"))
                        eg++;
        }
        compare(&r, state, &au, &ag);
        size_t total = r.missing + r.extra + r.duplicates + r.props + r.members + r.immutable;
        printf("expected: %zu users, %zu groups (from %zu LDIF entries); emulator: %zu users, %zu groups\n", eu, eg,
               nentries, au, ag);
        printf("missing %zu, extra %zu, duplicates %zu, wrong properties %zu, wrong memberships %zu, "
               "immutable-id problems %zu\n",
               r.missing, r.extra, r.duplicates, r.props, r.members, r.immutable);
        printf("%s\n", total ? "NOT CONVERGED" : "CONVERGED");
        json_decref(state);
        free_all();
        return total ? 1 : 0;
}
