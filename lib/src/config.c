/* config.c: table-driven configuration (YAML file, environment, --set).
 *
 * One canopy_conf_table per service drives everything: the YAML walk (libyaml
 * event API, so that every error carries line and column), defaults, bounds,
 * enums, environment and --set overrides, secrets, the dump and the docs.
 *
 * Sources are applied lowest first (default, file, env, --set); each value
 * replaces the previous one. `seen[i]` records the highest source that set
 * key i, for duplicate detection and the required check.
 */
#include "canopy/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "canopy/log.h"

#define CONF_FILE_MAX (1u << 20)
#define CONF_VALUE_MAX (64u * 1024u)
#define CONF_LIST_MAX 4096
#define CONF_DEPTH_MAX 16
#define CONF_KEY_MAX 256
#define CONF_SECTIONS_MAX 256

enum conf_src { SRC_NONE = 0, SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_SET };

struct section_mark {
        char *path;
        size_t line, col; /* 1-based */
};

struct loader {
        const canopy_conf_table *t;
        void *out;
        const char *path;  /* YAML file name for messages; NULL when none */
        char *dir;         /* directory of the YAML file, for relative *_file paths */
        char *err;
        size_t errlen;
        unsigned char *seen; /* enum conf_src per def */
        size_t *line;        /* file line that set each def */
        struct section_mark sections[CONF_SECTIONS_MAX];
        size_t nsections;
};

static const char *type_name(canopy_conf_type ty) {
        switch (ty) {
        case CANOPY_CT_STR: return "string";
        case CANOPY_CT_SECRET: return "secret";
        case CANOPY_CT_INT: return "integer";
        case CANOPY_CT_DOUBLE: return "number";
        case CANOPY_CT_BOOL: return "boolean";
        case CANOPY_CT_LIST: return "list";
        case CANOPY_CT_DURATION: return "duration";
        case CANOPY_CT_ENUM: return "enum";
        }
        return "?";
}

static void *field(void *out, const canopy_conf_def *d) {
        return (char *)out + d->offset;
}

static const void *cfield(const void *out, const canopy_conf_def *d) {
        return (const char *)out + d->offset;
}

static bool has_bounds(const canopy_conf_def *d) {
        return d->min < d->max &&
               (d->type == CANOPY_CT_INT || d->type == CANOPY_CT_DOUBLE || d->type == CANOPY_CT_DURATION);
}

/* Write "LOC: message" into the loader's error buffer. */
__attribute__((format(printf, 4, 5))) static canopy_err fail(struct loader *ld, canopy_err code, const char *loc,
                                                             const char *fmt, ...) {
        if (!ld->err || !ld->errlen)
                return code;
        size_t n = 0;
        if (loc && *loc) {
                int w = snprintf(ld->err, ld->errlen, "%s: ", loc);
                n = w > 0 ? (size_t)w : 0;
                if (n >= ld->errlen)
                        return code;
        }
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->err + n, ld->errlen - n, fmt, ap);
        va_end(ap);
        return code;
}

static void file_loc(const struct loader *ld, yaml_mark_t m, char *buf, size_t len) {
        snprintf(buf, len, "%s:%zu:%zu", ld->path ? ld->path : "<config>", m.line + 1, m.column + 1);
}

/* A value quoted for an error message, cut at 64 bytes; never a secret. */
static const char *quoted(const canopy_conf_def *d, const char *v, char *buf, size_t len) {
        if (d && d->type == CANOPY_CT_SECRET) {
                snprintf(buf, len, "(secret value not shown)");
                return buf;
        }
        size_t vl = strlen(v);
        if (vl > 64)
                snprintf(buf, len, "'%.64s...'", v);
        else
                snprintf(buf, len, "'%s'", v);
        return buf;
}

static const canopy_conf_def *find_def(const canopy_conf_table *t, const char *key) {
        for (size_t i = 0; i < t->ndefs; i++)
                if (!strcmp(t->defs[i].key, key))
                        return &t->defs[i];
        return NULL;
}

/* The SECRET def named by "<key>_file", or NULL. */
static const canopy_conf_def *find_file_def(const canopy_conf_table *t, const char *key) {
        size_t kl = strlen(key);
        if (kl <= 5 || strcmp(key + kl - 5, "_file") != 0 || kl - 5 >= CONF_KEY_MAX)
                return NULL;
        char base[CONF_KEY_MAX];
        memcpy(base, key, kl - 5);
        base[kl - 5] = 0;
        const canopy_conf_def *d = find_def(t, base);
        return d && d->type == CANOPY_CT_SECRET ? d : NULL;
}

/* Whether `path` names a section: some key starts with "path.". */
static bool is_section(const canopy_conf_table *t, const char *path) {
        size_t pl = strlen(path);
        for (size_t i = 0; i < t->ndefs; i++)
                if (!strncmp(t->defs[i].key, path, pl) && t->defs[i].key[pl] == '.')
                        return true;
        return false;
}

static size_t levenshtein(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        if (la > CONF_KEY_MAX || lb > CONF_KEY_MAX)
                return SIZE_MAX;
        size_t row[CONF_KEY_MAX + 1];
        for (size_t j = 0; j <= lb; j++)
                row[j] = j;
        for (size_t i = 1; i <= la; i++) {
                size_t diag = row[0];
                row[0] = i;
                for (size_t j = 1; j <= lb; j++) {
                        size_t up = row[j];
                        size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
                        size_t best = diag + cost;
                        if (up + 1 < best)
                                best = up + 1;
                        if (row[j - 1] + 1 < best)
                                best = row[j - 1] + 1;
                        row[j] = best;
                        diag = up;
                }
        }
        return row[lb];
}

static const char *last_comp(const char *k) {
        const char *p = strrchr(k, '.');
        return p ? p + 1 : k;
}

/* The closest known key to an unknown one, or NULL when nothing is close. */
static const char *suggest(const canopy_conf_table *t, const char *key) {
        const char *best = NULL;
        size_t bestd = SIZE_MAX;
        for (size_t i = 0; i < t->ndefs; i++) {
                size_t d = levenshtein(key, t->defs[i].key);
                if (d < bestd) {
                        bestd = d;
                        best = t->defs[i].key;
                }
        }
        size_t kl = strlen(key);
        size_t limit = kl / 4 > 2 ? kl / 4 : 2;
        if (best && bestd <= limit)
                return best;
        /* Right name, wrong section: "brokers" at the top for "kafka.brokers". */
        for (size_t i = 0; i < t->ndefs; i++)
                if (!strcmp(last_comp(key), last_comp(t->defs[i].key)))
                        return t->defs[i].key;
        return NULL;
}

static canopy_err unknown_key(struct loader *ld, const char *loc, const char *key) {
        const char *s = suggest(ld->t, key);
        if (s)
                return fail(ld, CANOPY_ERR_CONFIG_UNKNOWN_KEY, loc,
                            "unknown key '%s' for %s (did you mean '%s'?)", key, ld->t->service, s);
        return fail(ld, CANOPY_ERR_CONFIG_UNKNOWN_KEY, loc,
                    "unknown key '%s' for %s (see docs/CONFIG.md for the keys of this service)", key,
                    ld->t->service);
}

/* Register a secret and its JSON-escaped form with the log redactor. */
static void register_secret(const char *v) {
        if (!v)
                return;
        canopy_log_secret(v);
        size_t vl = strlen(v);
        bool differs = false;
        for (size_t i = 0; i < vl; i++) {
                unsigned char c = (unsigned char)v[i];
                if (c == '"' || c == '\\' || c < 0x20 || c == 0x7f)
                        differs = true;
        }
        if (!differs || vl > CONF_VALUE_MAX)
                return;
        char *esc = malloc(vl * 6 + 1);
        if (!esc)
                return;
        size_t n = 0;
        for (size_t i = 0; i < vl; i++) {
                unsigned char c = (unsigned char)v[i];
                if (c == '"' || c == '\\') {
                        esc[n++] = '\\';
                        esc[n++] = (char)c;
                } else if (c == '\n') {
                        esc[n++] = '\\';
                        esc[n++] = 'n';
                } else if (c == '\t') {
                        esc[n++] = '\\';
                        esc[n++] = 't';
                } else if (c == '\r') {
                        esc[n++] = '\\';
                        esc[n++] = 'r';
                } else if (c < 0x20 || c == 0x7f) {
                        n += (size_t)snprintf(esc + n, 7, "\\u%04x", c);
                } else {
                        esc[n++] = (char)c;
                }
        }
        esc[n] = 0;
        canopy_log_secret(esc);
        free(esc);
}

static void free_list(char **l) {
        if (!l)
                return;
        for (char **p = l; *p; p++)
                free(*p);
        free(l);
}

static void clear_value(const canopy_conf_def *d, void *out) {
        void *f = field(out, d);
        switch (d->type) {
        case CANOPY_CT_STR:
        case CANOPY_CT_SECRET:
        case CANOPY_CT_ENUM:
                free(*(char **)f);
                *(char **)f = NULL;
                break;
        case CANOPY_CT_LIST:
                free_list(*(char ***)f);
                *(char ***)f = NULL;
                break;
        case CANOPY_CT_INT:
        case CANOPY_CT_DURATION: *(int64_t *)f = 0; break;
        case CANOPY_CT_DOUBLE: *(double *)f = 0; break;
        case CANOPY_CT_BOOL: *(bool *)f = false; break;
        }
}

static bool parse_bool(const char *s, bool *ret) {
        static const char *yes[] = {"true", "yes", "on", "1"};
        static const char *no[] = {"false", "no", "off", "0"};
        for (size_t i = 0; i < 4; i++) {
                if (!strcasecmp(s, yes[i])) {
                        *ret = true;
                        return true;
                }
                if (!strcasecmp(s, no[i])) {
                        *ret = false;
                        return true;
                }
        }
        return false;
}

/* "250ms", "1.5s", "2m", "1h", "1d" or a plain number of milliseconds. */
static bool parse_duration(const char *s, int64_t *ret) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || errno || !isfinite(v) || v < 0)
                return false;
        while (*end == ' ')
                end++;
        double mul;
        if (!*end || !strcmp(end, "ms"))
                mul = 1;
        else if (!strcmp(end, "s"))
                mul = 1000;
        else if (!strcmp(end, "m") || !strcmp(end, "min"))
                mul = 60000;
        else if (!strcmp(end, "h"))
                mul = 3600000;
        else if (!strcmp(end, "d"))
                mul = 86400000;
        else
                return false;
        double ms = v * mul;
        if (ms > 9.0e15)
                return false;
        *ret = (int64_t)llround(ms);
        return true;
}

static void format_duration(int64_t ms, char *buf, size_t len) {
        if (ms != 0 && ms % 86400000 == 0)
                snprintf(buf, len, "%lldd", (long long)(ms / 86400000));
        else if (ms != 0 && ms % 3600000 == 0)
                snprintf(buf, len, "%lldh", (long long)(ms / 3600000));
        else if (ms != 0 && ms % 60000 == 0)
                snprintf(buf, len, "%lldm", (long long)(ms / 60000));
        else if (ms != 0 && ms % 1000 == 0)
                snprintf(buf, len, "%llds", (long long)(ms / 1000));
        else
                snprintf(buf, len, "%lldms", (long long)ms);
}

/* STR with choices: every byte of v is in the class, written as ranges and
 * single characters ("A-Za-z0-9._-"; a '-' first or last is itself). */
static bool charset_has(const char *cls, unsigned char ch) {
        for (const char *p = cls; *p; p++) {
                if (p[1] == '-' && p[2]) {
                        if (ch >= (unsigned char)p[0] && ch <= (unsigned char)p[2])
                                return true;
                        p += 2;
                } else if ((unsigned char)*p == ch) {
                        return true;
                }
        }
        return false;
}

static bool enum_has(const char *choices, const char *v) {
        size_t vl = strlen(v);
        const char *p = choices;
        while (p && *p) {
                const char *e = strchr(p, '|');
                size_t l = e ? (size_t)(e - p) : strlen(p);
                if (l == vl && !strncmp(p, v, l))
                        return true;
                p = e ? e + 1 : NULL;
        }
        return false;
}

static canopy_err out_of_bounds(struct loader *ld, const canopy_conf_def *d, const char *loc, const char *v) {
        char q[96];
        if (d->type == CANOPY_CT_DURATION) {
                char a[32], b[32];
                format_duration((int64_t)d->min, a, sizeof(a));
                format_duration((int64_t)d->max, b, sizeof(b));
                return fail(ld, CANOPY_ERR_CONFIG_RANGE, loc, "'%s' = %s is out of bounds (%s .. %s)", d->key,
                            quoted(d, v, q, sizeof(q)), a, b);
        }
        return fail(ld, CANOPY_ERR_CONFIG_RANGE, loc, "'%s' = %s is out of bounds (%.15g .. %.15g)", d->key,
                    quoted(d, v, q, sizeof(q)), d->min, d->max);
}

/* Split "a, b,c" into a NULL-terminated list (owned); empty items dropped. */
static canopy_err split_list(struct loader *ld, const canopy_conf_def *d, const char *loc, const char *v,
                             char ***ret) {
        size_t n = 1;
        for (const char *p = v; *p; p++)
                n += *p == ',';
        if (n > CONF_LIST_MAX)
                return fail(ld, CANOPY_ERR_LIMIT, loc, "'%s' has more than %d items", d->key, CONF_LIST_MAX);
        char **l = calloc(n + 1, sizeof(char *));
        if (!l)
                return CANOPY_ERR_NOMEM;
        size_t k = 0;
        const char *p = v;
        for (;;) {
                const char *e = strchr(p, ',');
                const char *end = e ? e : p + strlen(p);
                while (p < end && isspace((unsigned char)*p))
                        p++;
                while (end > p && isspace((unsigned char)end[-1]))
                        end--;
                if (end > p) {
                        l[k] = strndup(p, (size_t)(end - p));
                        if (!l[k]) {
                                free_list(l);
                                return CANOPY_ERR_NOMEM;
                        }
                        k++;
                }
                if (!e)
                        break;
                p = e + 1;
        }
        *ret = l;
        return CANOPY_OK;
}

/* Set def d from text v (NULL = YAML null). loc names where v came from. */
static canopy_err set_value(struct loader *ld, const canopy_conf_def *d, const char *v, const char *loc) {
        void *f = field(ld->out, d);
        char q[96];
        if (v && strlen(v) > CONF_VALUE_MAX)
                return fail(ld, CANOPY_ERR_LIMIT, loc, "value of '%s' is longer than %u bytes", d->key,
                            CONF_VALUE_MAX);
        if (!v && d->type != CANOPY_CT_STR && d->type != CANOPY_CT_SECRET && d->type != CANOPY_CT_LIST &&
            d->type != CANOPY_CT_ENUM)
                return fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "'%s' expects a %s, got null", d->key,
                            type_name(d->type));
        switch (d->type) {
        case CANOPY_CT_SECRET:
                register_secret(v);
                /* fall through */
        case CANOPY_CT_STR: {
                if (v && d->type == CANOPY_CT_STR && d->choices) {
                        for (const char *p = v; *p; p++)
                                if (!charset_has(d->choices, (unsigned char)*p))
                                        return fail(ld, CANOPY_ERR_CONFIG_RANGE, loc,
                                                    "'%s' = %s: only the characters %s are allowed", d->key,
                                                    quoted(d, v, q, sizeof(q)), d->choices);
                }
                if (v && d->type == CANOPY_CT_STR && d->min < d->max &&
                    ((double)strlen(v) < d->min || (double)strlen(v) > d->max))
                        return fail(ld, CANOPY_ERR_CONFIG_RANGE, loc, "'%s' = %s: length must be %.0f .. %.0f", d->key,
                                    quoted(d, v, q, sizeof(q)), d->min, d->max);
                char *s = NULL;
                if (v && !(s = strdup(v)))
                        return CANOPY_ERR_NOMEM;
                free(*(char **)f);
                *(char **)f = s;
                break;
        }
        case CANOPY_CT_ENUM: {
                if (v && !enum_has(d->choices, v))
                        return fail(ld, CANOPY_ERR_CONFIG_RANGE, loc, "'%s' = %s is not one of: %s", d->key,
                                    quoted(d, v, q, sizeof(q)), d->choices ? d->choices : "(none)");
                char *s = NULL;
                if (v && !(s = strdup(v)))
                        return CANOPY_ERR_NOMEM;
                free(*(char **)f);
                *(char **)f = s;
                break;
        }
        case CANOPY_CT_INT: {
                char *end;
                errno = 0;
                long long x = strtoll(v, &end, 10);
                if (end == v || *end || errno == EINVAL)
                        return fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "'%s' expects an integer, got %s", d->key,
                                    quoted(d, v, q, sizeof(q)));
                if (errno == ERANGE || (has_bounds(d) && ((double)x < d->min || (double)x > d->max)))
                        return out_of_bounds(ld, d, loc, v);
                *(int64_t *)f = x;
                break;
        }
        case CANOPY_CT_DOUBLE: {
                char *end;
                errno = 0;
                double x = strtod(v, &end);
                if (end == v || *end || !isfinite(x))
                        return fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "'%s' expects a number, got %s", d->key,
                                    quoted(d, v, q, sizeof(q)));
                if (has_bounds(d) && (x < d->min || x > d->max))
                        return out_of_bounds(ld, d, loc, v);
                *(double *)f = x;
                break;
        }
        case CANOPY_CT_BOOL: {
                bool b;
                if (!parse_bool(v, &b))
                        return fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "'%s' expects true or false, got %s",
                                    d->key, quoted(d, v, q, sizeof(q)));
                *(bool *)f = b;
                break;
        }
        case CANOPY_CT_DURATION: {
                int64_t ms;
                if (!parse_duration(v, &ms))
                        return fail(ld, CANOPY_ERR_CONFIG_TYPE, loc,
                                    "'%s' expects a duration such as 250ms, 5s, 2m, 1h, got %s", d->key,
                                    quoted(d, v, q, sizeof(q)));
                if (has_bounds(d) && ((double)ms < d->min || (double)ms > d->max))
                        return out_of_bounds(ld, d, loc, v);
                *(int64_t *)f = ms;
                break;
        }
        case CANOPY_CT_LIST: {
                char **l = NULL;
                if (v) {
                        canopy_err err = split_list(ld, d, loc, v, &l);
                        if (err)
                                return err;
                }
                free_list(*(char ***)f);
                *(char ***)f = l;
                break;
        }
        }
        return CANOPY_OK;
}

/* Read a secret file (cap 64 KiB), trailing newline stripped. */
static canopy_err read_secret_file(struct loader *ld, const canopy_conf_def *d, const char *fname,
                                   const char *loc, bool in_file, char **ret) {
        char full[4096];
        if (fname[0] != '/' && in_file && ld->dir)
                snprintf(full, sizeof(full), "%s/%s", ld->dir, fname);
        else
                snprintf(full, sizeof(full), "%s", fname);
        FILE *f = fopen(full, "rb");
        if (!f)
                return fail(ld, CANOPY_ERR_CONFIG, loc, "cannot read the file of secret '%s' ('%s'): %s", d->key,
                            full, strerror(errno));
        char *buf = malloc(CONF_VALUE_MAX + 2);
        if (!buf) {
                fclose(f);
                return CANOPY_ERR_NOMEM;
        }
        size_t n = fread(buf, 1, CONF_VALUE_MAX + 1, f);
        bool bad = ferror(f);
        fclose(f);
        if (bad || n > CONF_VALUE_MAX) {
                free(buf);
                return fail(ld, bad ? CANOPY_ERR_CONFIG : CANOPY_ERR_LIMIT, loc,
                            bad ? "cannot read the file of secret '%s'" : "the file of secret '%s' exceeds 64 KiB",
                            d->key);
        }
        buf[n] = 0;
        if (strlen(buf) != n) {
                free(buf);
                return fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "the file of secret '%s' contains a NUL byte",
                            d->key);
        }
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                buf[--n] = 0;
        *ret = buf;
        return CANOPY_OK;
}

/* Set a secret from a file; in_file: the name came from the YAML file, so a
 * relative name is relative to the YAML file's directory. */
static canopy_err set_from_file(struct loader *ld, const canopy_conf_def *d, const char *fname, const char *loc,
                                bool in_file) {
        char *v = NULL;
        canopy_err err = read_secret_file(ld, d, fname, loc, in_file, &v);
        if (err)
                return err;
        err = set_value(ld, d, v, loc);
        free(v);
        return err;
}

static size_t def_index(const struct loader *ld, const canopy_conf_def *d) {
        return (size_t)(d - ld->t->defs);
}

/* ---- YAML walk ---------------------------------------------------------- */

struct yctx {
        struct loader *ld;
        yaml_parser_t parser;
};

static canopy_err next_event(struct yctx *y, yaml_event_t *ev) {
        if (yaml_parser_parse(&y->parser, ev))
                return CANOPY_OK;
        char loc[600];
        file_loc(y->ld, y->parser.problem_mark, loc, sizeof(loc));
        const char *problem = y->parser.problem ? y->parser.problem : "invalid YAML";
        if (y->parser.context)
                return fail(y->ld, CANOPY_ERR_CONFIG_SYNTAX, loc, "invalid YAML: %s (%s started at line %zu, column %zu)",
                            problem, y->parser.context, y->parser.context_mark.line + 1,
                            y->parser.context_mark.column + 1);
        return fail(y->ld, CANOPY_ERR_CONFIG_SYNTAX, loc, "invalid YAML: %s", problem);
}

static bool scalar_is_null(const yaml_event_t *ev) {
        if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
                return false;
        const char *v = (const char *)ev->data.scalar.value;
        return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

static const char *event_kind(const yaml_event_t *ev) {
        switch (ev->type) {
        case YAML_MAPPING_START_EVENT: return "a mapping";
        case YAML_SEQUENCE_START_EVENT: return "a list";
        case YAML_SCALAR_EVENT: return "a scalar";
        case YAML_ALIAS_EVENT: return "an alias";
        default: return "something else";
        }
}

/* A sequence for a LIST key: collect scalar items. */
static canopy_err read_sequence(struct yctx *y, const canopy_conf_def *d, const char *loc) {
        struct loader *ld = y->ld;
        char **items = calloc(CONF_LIST_MAX + 1, sizeof(char *));
        if (!items)
                return CANOPY_ERR_NOMEM;
        size_t n = 0;
        canopy_err err = CANOPY_OK;
        for (;;) {
                yaml_event_t ev;
                if ((err = next_event(y, &ev)))
                        goto out;
                if (ev.type == YAML_SEQUENCE_END_EVENT) {
                        yaml_event_delete(&ev);
                        break;
                }
                char iloc[600];
                file_loc(ld, ev.start_mark, iloc, sizeof(iloc));
                if (ev.type != YAML_SCALAR_EVENT) {
                        err = fail(ld, CANOPY_ERR_CONFIG_TYPE, iloc, "items of '%s' must be strings, got %s",
                                   d->key, event_kind(&ev));
                        yaml_event_delete(&ev);
                        goto out;
                }
                const char *v = (const char *)ev.data.scalar.value;
                if (n >= CONF_LIST_MAX || strlen(v) > CONF_VALUE_MAX) {
                        err = fail(ld, CANOPY_ERR_LIMIT, iloc, "'%s' has too many or too long items (caps: %d items, %u bytes)",
                                   d->key, CONF_LIST_MAX, CONF_VALUE_MAX);
                        yaml_event_delete(&ev);
                        goto out;
                }
                items[n] = strdup(v);
                yaml_event_delete(&ev);
                if (!items[n]) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                n++;
        }
        {
                char **l = realloc(items, (n + 1) * sizeof(char *));
                if (l)
                        items = l;
                items[n] = NULL;
                char ***f = field(ld->out, d);
                free_list(*f);
                *f = items;
                items = NULL;
        }
        (void)loc;
out:
        free_list(items);
        return err;
}

static void remember_section(struct loader *ld, const char *path, yaml_mark_t m) {
        if (ld->nsections >= CONF_SECTIONS_MAX)
                return;
        char *p = strdup(path);
        if (!p)
                return;
        ld->sections[ld->nsections++] = (struct section_mark){p, m.line + 1, m.column + 1};
}

static canopy_err read_mapping(struct yctx *y, const char *prefix, int depth);

/* One "key: value" pair; `kev` is the key's scalar event. */
static canopy_err read_pair(struct yctx *y, const char *prefix, const yaml_event_t *kev, int depth) {
        struct loader *ld = y->ld;
        const canopy_conf_table *t = ld->t;
        char path[CONF_KEY_MAX + 1];
        char kloc[600], vloc[600];
        file_loc(ld, kev->start_mark, kloc, sizeof(kloc));
        const char *k = (const char *)kev->data.scalar.value;
        int w = snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", k);
        yaml_event_t ev;
        canopy_err err = next_event(y, &ev);
        if (err)
                return err;
        file_loc(ld, ev.start_mark, vloc, sizeof(vloc));
        if (w < 0 || (size_t)w >= sizeof(path)) {
                err = fail(ld, CANOPY_ERR_CONFIG_UNKNOWN_KEY, kloc, "key path longer than %d bytes", CONF_KEY_MAX);
                goto out;
        }
        if (ev.type == YAML_ALIAS_EVENT) {
                err = fail(ld, CANOPY_ERR_CONFIG_SYNTAX, vloc, "YAML aliases are not supported ('%s')", path);
                goto out;
        }
        const canopy_conf_def *d = find_def(t, path);
        const canopy_conf_def *fd = d ? NULL : find_file_def(t, path);
        if (!d && !fd) {
                if (ev.type == YAML_MAPPING_START_EVENT && is_section(t, path)) {
                        remember_section(ld, path, kev->start_mark);
                        err = read_mapping(y, path, depth + 1);
                } else if (ev.type == YAML_SCALAR_EVENT && scalar_is_null(&ev) && is_section(t, path)) {
                        /* An empty section ("graph:" with every key commented out). */
                        remember_section(ld, path, kev->start_mark);
                } else {
                        err = unknown_key(ld, kloc, path);
                }
                goto out;
        }
        const canopy_conf_def *target = d ? d : fd;
        size_t i = def_index(ld, target);
        if (ld->seen[i] == SRC_FILE) {
                err = fail(ld, CANOPY_ERR_CONFIG, kloc, "'%s' is set twice (first at line %zu)", target->key,
                           ld->line[i]);
                goto out;
        }
        if (ev.type == YAML_MAPPING_START_EVENT || (ev.type == YAML_SEQUENCE_START_EVENT && (fd || d->type != CANOPY_CT_LIST))) {
                err = fail(ld, CANOPY_ERR_CONFIG_TYPE, vloc, "'%s' expects a %s, got %s", path,
                           fd ? "file name" : type_name(d->type), event_kind(&ev));
                goto out;
        }
        if (ev.type == YAML_SEQUENCE_START_EVENT) {
                err = read_sequence(y, d, vloc);
        } else if (fd) {
                if (scalar_is_null(&ev))
                        err = fail(ld, CANOPY_ERR_CONFIG_TYPE, vloc, "'%s' expects a file name, got null", path);
                else
                        err = set_from_file(ld, fd, (const char *)ev.data.scalar.value, vloc, true);
        } else {
                err = set_value(ld, d, scalar_is_null(&ev) ? NULL : (const char *)ev.data.scalar.value, vloc);
        }
        if (!err) {
                ld->seen[i] = SRC_FILE;
                ld->line[i] = kev->start_mark.line + 1;
        }
out:
        yaml_event_delete(&ev);
        return err;
}

static canopy_err read_mapping(struct yctx *y, const char *prefix, int depth) {
        struct loader *ld = y->ld;
        for (;;) {
                yaml_event_t ev;
                canopy_err err = next_event(y, &ev);
                if (err)
                        return err;
                if (ev.type == YAML_MAPPING_END_EVENT) {
                        yaml_event_delete(&ev);
                        return CANOPY_OK;
                }
                char loc[600];
                file_loc(ld, ev.start_mark, loc, sizeof(loc));
                if (depth > CONF_DEPTH_MAX) {
                        yaml_event_delete(&ev);
                        return fail(ld, CANOPY_ERR_LIMIT, loc, "nesting deeper than %d levels", CONF_DEPTH_MAX);
                }
                if (ev.type != YAML_SCALAR_EVENT) {
                        err = fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "mapping keys must be plain strings, got %s",
                                   event_kind(&ev));
                        yaml_event_delete(&ev);
                        return err;
                }
                err = read_pair(y, prefix, &ev, depth);
                yaml_event_delete(&ev);
                if (err)
                        return err;
        }
}

/* Pass 1: the whole file must be valid YAML before any key is looked at, so
 * that a syntax error is reported as such, not as a confusing type error. */
static canopy_err check_syntax(struct loader *ld, const unsigned char *buf, size_t len) {
        struct yctx y = {.ld = ld};
        if (!yaml_parser_initialize(&y.parser))
                return CANOPY_ERR_NOMEM;
        yaml_parser_set_input_string(&y.parser, buf, len);
        canopy_err err;
        for (;;) {
                yaml_event_t ev;
                if ((err = next_event(&y, &ev)))
                        break;
                bool end = ev.type == YAML_STREAM_END_EVENT;
                yaml_event_delete(&ev);
                if (end)
                        break;
        }
        yaml_parser_delete(&y.parser);
        return err;
}

/* Pass 2: walk the document against the table. */
static canopy_err read_yaml(struct loader *ld, const unsigned char *buf, size_t len) {
        canopy_err err = check_syntax(ld, buf, len);
        if (err)
                return err;
        struct yctx y = {.ld = ld};
        if (!yaml_parser_initialize(&y.parser))
                return CANOPY_ERR_NOMEM;
        yaml_parser_set_input_string(&y.parser, buf, len);
        int docs = 0;
        for (;;) {
                yaml_event_t ev;
                if ((err = next_event(&y, &ev)))
                        break;
                yaml_event_type_t type = ev.type;
                char loc[600];
                file_loc(ld, ev.start_mark, loc, sizeof(loc));
                if (type == YAML_STREAM_END_EVENT) {
                        yaml_event_delete(&ev);
                        break;
                }
                if (type == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
                        err = fail(ld, CANOPY_ERR_CONFIG_SYNTAX, loc,
                                   "only one YAML document is allowed per configuration file");
                } else if (type == YAML_MAPPING_START_EVENT) {
                        err = read_mapping(&y, "", 1);
                } else if (type == YAML_SCALAR_EVENT) {
                        if (!scalar_is_null(&ev))
                                err = fail(ld, CANOPY_ERR_CONFIG_TYPE, loc,
                                           "the top level must be a mapping of keys, got a scalar");
                } else if (type == YAML_SEQUENCE_START_EVENT || type == YAML_ALIAS_EVENT) {
                        err = fail(ld, CANOPY_ERR_CONFIG_TYPE, loc, "the top level must be a mapping of keys, got %s",
                                   event_kind(&ev));
                }
                yaml_event_delete(&ev);
                if (err)
                        break;
        }
        yaml_parser_delete(&y.parser);
        return err;
}

static canopy_err load_file(struct loader *ld, const char *path) {
        FILE *f = fopen(path, "rb");
        if (!f)
                return fail(ld, CANOPY_ERR_CONFIG, path, "cannot open configuration file: %s", strerror(errno));
        unsigned char *buf = malloc(CONF_FILE_MAX + 1);
        if (!buf) {
                fclose(f);
                return CANOPY_ERR_NOMEM;
        }
        size_t n = fread(buf, 1, CONF_FILE_MAX + 1, f);
        bool bad = ferror(f);
        fclose(f);
        canopy_err err;
        if (bad)
                err = fail(ld, CANOPY_ERR_CONFIG, path, "cannot read configuration file");
        else if (n > CONF_FILE_MAX)
                err = fail(ld, CANOPY_ERR_LIMIT, path, "configuration file larger than 1 MiB");
        else
                err = read_yaml(ld, buf, n);
        free(buf);
        return err;
}

/* ---- environment and --set ---------------------------------------------- */

static canopy_err apply_env(struct loader *ld) {
        for (size_t i = 0; i < ld->t->ndefs; i++) {
                const canopy_conf_def *d = &ld->t->defs[i];
                if (!d->env)
                        continue;
                char loc[320];
                const char *v = getenv(d->env);
                canopy_err err = CANOPY_OK;
                if (v) {
                        snprintf(loc, sizeof(loc), "env %s", d->env);
                        err = set_value(ld, d, v, loc);
                } else if (d->type == CANOPY_CT_SECRET) {
                        char fname[300];
                        snprintf(fname, sizeof(fname), "%s_FILE", d->env);
                        const char *fv = getenv(fname);
                        if (!fv)
                                continue;
                        snprintf(loc, sizeof(loc), "env %s", fname);
                        err = set_from_file(ld, d, fv, loc, false);
                } else {
                        continue;
                }
                if (err)
                        return err;
                ld->seen[i] = SRC_ENV;
        }
        return CANOPY_OK;
}

static canopy_err apply_set(struct loader *ld, const char *s) {
        const char *eq = strchr(s, '=');
        char loc[CONF_KEY_MAX + 16];
        if (!eq || eq == s || (size_t)(eq - s) > CONF_KEY_MAX) {
                snprintf(loc, sizeof(loc), "--set");
                return fail(ld, CANOPY_ERR_CONFIG, loc, "expected KEY=VALUE with a known key");
        }
        char key[CONF_KEY_MAX + 1];
        memcpy(key, s, (size_t)(eq - s));
        key[eq - s] = 0;
        snprintf(loc, sizeof(loc), "--set %s", key);
        const canopy_conf_def *d = find_def(ld->t, key);
        canopy_err err;
        if (d) {
                err = set_value(ld, d, eq + 1, loc);
        } else if ((d = find_file_def(ld->t, key))) {
                err = set_from_file(ld, d, eq + 1, loc, false);
        } else {
                return unknown_key(ld, loc, key);
        }
        if (!err)
                ld->seen[def_index(ld, d)] = SRC_SET;
        return err;
}

/* Where to point a "missing required key" error: its nearest section in the
 * file, else the top of the file. */
static void missing_loc(const struct loader *ld, const char *key, char *buf, size_t len) {
        if (!ld->path) {
                snprintf(buf, len, "config");
                return;
        }
        const struct section_mark *best = NULL;
        for (size_t i = 0; i < ld->nsections; i++) {
                const struct section_mark *s = &ld->sections[i];
                size_t pl = strlen(s->path);
                if (!strncmp(key, s->path, pl) && key[pl] == '.' && (!best || pl > strlen(best->path)))
                        best = s;
        }
        if (best)
                snprintf(buf, len, "%s:%zu:%zu", ld->path, best->line, best->col);
        else
                snprintf(buf, len, "%s:1:1", ld->path);
}

static canopy_err check_required(struct loader *ld) {
        for (size_t i = 0; i < ld->t->ndefs; i++) {
                const canopy_conf_def *d = &ld->t->defs[i];
                if (!(d->flags & CANOPY_CONF_REQUIRED))
                        continue;
                const void *f = field(ld->out, d);
                bool empty = ld->seen[i] == SRC_NONE;
                if (d->type == CANOPY_CT_STR || d->type == CANOPY_CT_SECRET || d->type == CANOPY_CT_ENUM)
                        empty = empty || !*(char *const *)f || !**(char *const *)f;
                if (d->type == CANOPY_CT_LIST)
                        empty = empty || !*(char **const *)f || !**(char **const *)f;
                if (!empty)
                        continue;
                char loc[600];
                missing_loc(ld, d->key, loc, sizeof(loc));
                char how[300] = "";
                if (d->env)
                        snprintf(how, sizeof(how), ", env %s", d->env);
                return fail(ld, CANOPY_ERR_CONFIG_MISSING, loc,
                            "missing required key '%s' for %s (set it in the file%s%s or with --set %s=...)", d->key,
                            ld->t->service, how, d->type == CANOPY_CT_SECRET ? ", a '_file' key" : "", d->key);
        }
        return CANOPY_OK;
}

static canopy_err apply_defaults(struct loader *ld) {
        for (size_t i = 0; i < ld->t->ndefs; i++) {
                const canopy_conf_def *d = &ld->t->defs[i];
                if (!d->defval)
                        continue;
                char loc[CONF_KEY_MAX + 32];
                snprintf(loc, sizeof(loc), "default of %s", d->key);
                canopy_err err = set_value(ld, d, d->defval, loc);
                if (err)
                        return err;
                ld->seen[i] = SRC_DEFAULT;
        }
        return CANOPY_OK;
}

static void loader_done(struct loader *ld) {
        free(ld->seen);
        free(ld->line);
        free(ld->dir);
        for (size_t i = 0; i < ld->nsections; i++)
                free(ld->sections[i].path);
}

canopy_err canopy_conf_load(const canopy_conf_table *t, void *out, const char *path, const char *const *sets,
                            size_t nsets, char *errbuf, size_t errlen) {
        if (errbuf && errlen)
                errbuf[0] = 0;
        if (!t || !out || (nsets && !sets))
                return CANOPY_ERR_INVALID_ARG;
        struct loader ld = {.t = t, .out = out, .path = path, .err = errbuf, .errlen = errlen};
        canopy_err err = CANOPY_ERR_NOMEM;
        ld.seen = calloc(t->ndefs + 1, 1);
        ld.line = calloc(t->ndefs + 1, sizeof(size_t));
        if (!ld.seen || !ld.line)
                goto out;
        if (path) {
                const char *slash = strrchr(path, '/');
                ld.dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
                if (!ld.dir)
                        goto out;
        }
        if ((err = apply_defaults(&ld)))
                goto out;
        if (path && (err = load_file(&ld, path)))
                goto out;
        if ((err = apply_env(&ld)))
                goto out;
        for (size_t i = 0; i < nsets; i++)
                if ((err = apply_set(&ld, sets[i])))
                        goto out;
        err = check_required(&ld);
out:
        if (err) {
                canopy_conf_free(t, out);
                memset(out, 0, t->size);
        }
        loader_done(&ld);
        return err;
}

void canopy_conf_free(const canopy_conf_table *t, void *out) {
        if (!t || !out)
                return;
        for (size_t i = 0; i < t->ndefs; i++)
                clear_value(&t->defs[i], out);
}

/* ---- table check -------------------------------------------------------- */

static bool key_syntax_ok(const char *k) {
        if (!k || !*k || strlen(k) > CONF_KEY_MAX || *k == '.')
                return false;
        for (const char *p = k; *p; p++) {
                if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_' || *p == '.'))
                        return false;
                if (*p == '.' && (p[1] == '.' || p[1] == 0))
                        return false;
        }
        return true;
}

canopy_err canopy_conf_check(const canopy_conf_table *t, char *errbuf, size_t errlen) {
        struct loader ld = {.t = t, .err = errbuf, .errlen = errlen};
        if (errbuf && errlen)
                errbuf[0] = 0;
        if (!t || !t->service || !t->defs)
                return fail(&ld, CANOPY_ERR_CONFIG, "table", "table without service name or keys");
        for (size_t i = 0; i < t->ndefs; i++) {
                const canopy_conf_def *d = &t->defs[i];
                if (!key_syntax_ok(d->key))
                        return fail(&ld, CANOPY_ERR_CONFIG, t->service,
                                    "key '%s': use lower-case letters, digits, '_' and '.'", d->key ? d->key : "");
                if (!d->doc || !*d->doc)
                        return fail(&ld, CANOPY_ERR_CONFIG, t->service, "key '%s' has no doc", d->key);
                size_t width = d->type == CANOPY_CT_BOOL     ? sizeof(bool)
                               : d->type == CANOPY_CT_DOUBLE ? sizeof(double)
                               : d->type == CANOPY_CT_INT || d->type == CANOPY_CT_DURATION ? sizeof(int64_t)
                                                                                           : sizeof(char *);
                if (d->offset + width > t->size)
                        return fail(&ld, CANOPY_ERR_CONFIG, t->service, "key '%s': offset beyond the struct size",
                                    d->key);
                if (d->type == CANOPY_CT_ENUM && (!d->choices || !*d->choices))
                        return fail(&ld, CANOPY_ERR_CONFIG, t->service, "enum key '%s' has no choices", d->key);
                if (d->defval && (d->flags & CANOPY_CONF_REQUIRED))
                        return fail(&ld, CANOPY_ERR_CONFIG, t->service, "required key '%s' has a default", d->key);
                if (d->defval && d->type == CANOPY_CT_SECRET)
                        return fail(&ld, CANOPY_ERR_CONFIG, t->service, "secret key '%s' has a default", d->key);
                size_t kl = strlen(d->key);
                for (size_t j = 0; j < t->ndefs; j++) {
                        if (j == i)
                                continue;
                        const char *o = t->defs[j].key;
                        if (o && !strcmp(o, d->key))
                                return fail(&ld, CANOPY_ERR_CONFIG, t->service, "key '%s' is declared twice", d->key);
                        if (o && !strncmp(o, d->key, kl) && o[kl] == '.')
                                return fail(&ld, CANOPY_ERR_CONFIG, t->service,
                                            "key '%s' is both a value and the section of '%s'", d->key, o);
                }
        }
        /* Defaults must load: run the default stage into a scratch struct. */
        void *scratch = calloc(1, t->size ? t->size : 1);
        ld.seen = calloc(t->ndefs + 1, 1);
        ld.line = calloc(t->ndefs + 1, sizeof(size_t));
        canopy_err err = CANOPY_ERR_NOMEM;
        if (scratch && ld.seen && ld.line) {
                ld.out = scratch;
                err = apply_defaults(&ld);
                if (err)
                        err = CANOPY_ERR_CONFIG;
                canopy_conf_free(t, scratch);
        }
        free(scratch);
        loader_done(&ld);
        return err;
}

const canopy_conf_table *canopy_conf_find_table(const char *service) {
        for (size_t i = 0; service && canopy_conf_all_tables[i]; i++)
                if (!strcmp(canopy_conf_all_tables[i]->service, service))
                        return canopy_conf_all_tables[i];
        return NULL;
}

/* ---- dump --------------------------------------------------------------- */

static void yaml_quote(FILE *f, const char *s) {
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p == '\n')
                        fputs("\\n", f);
                else if (*p == '\t')
                        fputs("\\t", f);
                else if (*p < 0x20 || *p == 0x7f)
                        fprintf(f, "\\x%02x", *p);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

static void dump_value(FILE *f, const canopy_conf_def *d, const void *cfg) {
        const void *v = cfield(cfg, d);
        switch (d->type) {
        case CANOPY_CT_SECRET:
                fputs(*(char *const *)v ? "\"[REDACTED]\"" : "~", f);
                break;
        case CANOPY_CT_STR:
        case CANOPY_CT_ENUM:
                if (*(char *const *)v)
                        yaml_quote(f, *(char *const *)v);
                else
                        fputs("~", f);
                break;
        case CANOPY_CT_INT: fprintf(f, "%lld", (long long)*(const int64_t *)v); break;
        case CANOPY_CT_DOUBLE: fprintf(f, "%.15g", *(const double *)v); break;
        case CANOPY_CT_BOOL: fputs(*(const bool *)v ? "true" : "false", f); break;
        case CANOPY_CT_DURATION: {
                char b[40];
                format_duration(*(const int64_t *)v, b, sizeof(b));
                fputs(b, f);
                break;
        }
        case CANOPY_CT_LIST: {
                char **l = *(char **const *)v;
                fputc('[', f);
                for (size_t i = 0; l && l[i]; i++) {
                        if (i)
                                fputs(", ", f);
                        yaml_quote(f, l[i]);
                }
                fputc(']', f);
                break;
        }
        }
}

static int cmp_def_key(const void *a, const void *b) {
        const canopy_conf_def *const *x = a, *const *y = b;
        return strcmp((*x)->key, (*y)->key);
}

/* Length of the first `n` components of key k (without the trailing dot). */
static size_t comp_prefix_len(const char *k, size_t n) {
        size_t len = 0;
        for (size_t c = 0; c < n; c++) {
                const char *dot = strchr(k + len + (c ? 1 : 0), '.');
                len = dot ? (size_t)(dot - k) : strlen(k);
        }
        return len;
}

static size_t ncomps(const char *k) {
        size_t n = 1;
        for (; *k; k++)
                n += *k == '.';
        return n;
}

/* A comment block: `text` wrapped at 78 columns after the indent. */
static void put_comment(FILE *f, int indent, const char *text) {
        int width = 78 - indent - 2;
        if (width < 30)
                width = 30;
        const char *p = text;
        while (*p) {
                while (*p == ' ')
                        p++;
                int l = (int)strlen(p);
                if (l > width) {
                        l = width;
                        while (l > 0 && p[l] != ' ')
                                l--;
                        if (l == 0)
                                l = width;
                }
                fprintf(f, "%*s# %.*s\n", indent, "", l, p);
                p += l;
        }
}

/* Write cfg as nested YAML. example: document each key and comment out the
 * keys without a value (has[i] false). */
static void write_yaml(FILE *f, const canopy_conf_table *t, const void *cfg, const unsigned char *has, bool example) {
        const canopy_conf_def **sorted = malloc((t->ndefs + 1) * sizeof(*sorted));
        if (!sorted)
                return;
        for (size_t i = 0; i < t->ndefs; i++)
                sorted[i] = &t->defs[i];
        qsort(sorted, t->ndefs, sizeof(*sorted), cmp_def_key);
        const char *prev = NULL;
        for (size_t i = 0; i < t->ndefs; i++) {
                const canopy_conf_def *d = sorted[i];
                const char *k = d->key;
                size_t n = ncomps(k);
                /* Sections shared with the previous key are already open. */
                size_t common = 0;
                if (prev) {
                        size_t pn = ncomps(prev);
                        while (common + 1 < n && common + 1 < pn) {
                                size_t l = comp_prefix_len(k, common + 1);
                                if (comp_prefix_len(prev, common + 1) != l || strncmp(k, prev, l))
                                        break;
                                common++;
                        }
                }
                for (size_t c = common; c + 1 < n; c++) {
                        size_t from = c ? comp_prefix_len(k, c) + 1 : 0;
                        size_t to = comp_prefix_len(k, c + 1);
                        if (example)
                                fputc('\n', f);
                        fprintf(f, "%*s%.*s:\n", (int)(2 * c), "", (int)(to - from), k + from);
                }
                int ind = (int)(2 * (n - 1));
                bool on = true;
                if (example) {
                        size_t di = (size_t)(d - t->defs);
                        on = has[di];
                        fputc('\n', f);
                        put_comment(f, ind, d->doc ? d->doc : "");
                        char info[600];
                        size_t il = (size_t)snprintf(info, sizeof(info), "%s", type_name(d->type));
                        if (d->type == CANOPY_CT_ENUM && d->choices && il < sizeof(info))
                                il += (size_t)snprintf(info + il, sizeof(info) - il, ", one of %s", d->choices);
                        else if (d->type == CANOPY_CT_STR && d->choices && il < sizeof(info))
                                il += (size_t)snprintf(info + il, sizeof(info) - il, ", characters %s", d->choices);
                        if (has_bounds(d) && il < sizeof(info)) {
                                if (d->type == CANOPY_CT_DURATION) {
                                        char lo[32], hi[32];
                                        format_duration((int64_t)d->min, lo, sizeof(lo));
                                        format_duration((int64_t)d->max, hi, sizeof(hi));
                                        il += (size_t)snprintf(info + il, sizeof(info) - il, ", %s .. %s", lo, hi);
                                } else {
                                        il += (size_t)snprintf(info + il, sizeof(info) - il, ", %.15g .. %.15g",
                                                               d->min, d->max);
                                }
                        }
                        if (d->env && il < sizeof(info))
                                il += (size_t)snprintf(info + il, sizeof(info) - il, ", env %s", d->env);
                        if (d->type == CANOPY_CT_SECRET && il < sizeof(info))
                                il += (size_t)snprintf(info + il, sizeof(info) - il, ", or %s_file: PATH",
                                                       last_comp(k));
                        if ((d->flags & CANOPY_CONF_REQUIRED) && il < sizeof(info))
                                snprintf(info + il, sizeof(info) - il, ", REQUIRED");
                        fprintf(f, "%*s# (%s)\n", ind, "", info);
                }
                if (on) {
                        fprintf(f, "%*s%s: ", ind, "", last_comp(k));
                        dump_value(f, d, cfg);
                        fputc('\n', f);
                } else {
                        fprintf(f, "%*s# %s:\n", ind, "", last_comp(k));
                }
                prev = k;
        }
        free(sorted);
}

void canopy_conf_dump(FILE *f, const canopy_conf_table *t, const void *cfg) {
        if (!f || !t || !cfg)
                return;
        fprintf(f, "# effective configuration of %s (secrets redacted)\n", t->service);
        write_yaml(f, t, cfg, NULL, false);
}

canopy_err canopy_conf_write_example(FILE *f, const canopy_conf_table *t) {
        if (!f || !t)
                return CANOPY_ERR_INVALID_ARG;
        struct loader ld = {.t = t};
        void *scratch = calloc(1, t->size ? t->size : 1);
        ld.seen = calloc(t->ndefs + 1, 1);
        ld.line = calloc(t->ndefs + 1, sizeof(size_t));
        canopy_err err = CANOPY_ERR_NOMEM;
        if (scratch && ld.seen && ld.line) {
                ld.out = scratch;
                err = apply_defaults(&ld);
                if (!err) {
                        fprintf(f, "# %s: reference configuration (generated by canopy-confdoc --example %s).\n",
                                t->service, t->service);
                        fputs("# Every key is shown with its default; keys without a default are commented\n"
                              "# out. Precedence: this file < environment < --set key=value. See\n"
                              "# docs/CONFIG.md.\n",
                              f);
                        if (t->doc && *t->doc) {
                                fputs("#\n", f);
                                put_comment(f, 0, t->doc);
                        }
                        write_yaml(f, t, scratch, ld.seen, true);
                        err = ferror(f) ? CANOPY_ERR_IO : CANOPY_OK;
                }
                canopy_conf_free(t, scratch);
        }
        free(scratch);
        loader_done(&ld);
        return err;
}

/* ---- docs --------------------------------------------------------------- */

/* A Markdown table cell: '|' escaped, newlines flattened. */
static void md_cell(FILE *f, const char *s) {
        for (; s && *s; s++) {
                if (*s == '|')
                        fputs("\\|", f);
                else if (*s == '\n')
                        fputc(' ', f);
                else
                        fputc(*s, f);
        }
}

static void md_bounds(FILE *f, const canopy_conf_def *d) {
        if (!has_bounds(d)) {
                fputs(" ", f);
                return;
        }
        if (d->type == CANOPY_CT_DURATION) {
                char a[32], b[32];
                format_duration((int64_t)d->min, a, sizeof(a));
                format_duration((int64_t)d->max, b, sizeof(b));
                fprintf(f, "%s .. %s", a, b);
        } else {
                fprintf(f, "%.15g .. %.15g", d->min, d->max);
        }
}

canopy_err canopy_conf_write_doc(FILE *f, const canopy_conf_table *const *tables, size_t ntables) {
        if (!f || (ntables && !tables))
                return CANOPY_ERR_INVALID_ARG;
        fputs("# Configuration reference\n\n"
              "<!-- Generated by canopy-confdoc from the tables in lib/src/conf_*.c. Do not edit:\n"
              "     change the table, then run `make docs`. A unit test fails when this file is stale. -->\n\n"
              "Every Canopy service reads one YAML file, then the environment, then\n"
              "`--set key=value` options; a later source overrides an earlier one, and every key has the\n"
              "default shown below unless it is required. Keys are dotted paths that mirror the YAML\n"
              "nesting: `kafka.brokers` is written\n\n"
              "```yaml\nkafka:\n  brokers: [\"127.0.0.1:9092\"]\n```\n\n"
              "or, equally, `kafka.brokers: ...` on one line.\n\n"
              "- **Errors.** An unknown key (with a \"did you mean\" suggestion), a value of the wrong type,\n"
              "  out of bounds or not among the choices, a key set twice, invalid YAML and a missing\n"
              "  required key all stop the service at start-up with `file:line:column` (or `env NAME`,\n"
              "  `--set KEY`) and the reason.\n"
              "- **Types.** `string`; `integer` and `number` (bounds inclusive); `boolean` (`true`/`false`,\n"
              "  `yes`/`no`, `on`/`off`); `duration` (`250ms`, `5s`, `2m`, `1h`, `1d`, or a number of\n"
              "  milliseconds); `enum` (one of the listed words); `list` (a YAML sequence, or a\n"
              "  comma-separated string, the only form in the environment and `--set`); `secret`.\n"
              "- **Secrets.** A secret key `x.y` can be given inline, as `x.y_file: /path` (the file's\n"
              "  content, trailing newline stripped; relative to the YAML file), through its environment\n"
              "  variable, or through the same variable with `_FILE` appended naming a file. Secret values\n"
              "  never appear in logs, error messages or the dump of the effective configuration (shown as\n"
              "  `[REDACTED]`).\n"
              "- **Caps.** A file up to 1 MiB, a value up to 64 KiB, lists up to 4096 items, nesting up\n"
              "  to 16 levels.\n\n",
              f);
        if (!ntables)
                fputs("No service table is registered yet.\n", f);
        for (size_t ti = 0; ti < ntables; ti++) {
                const canopy_conf_table *t = tables[ti];
                if (!t)
                        break;
                fprintf(f, "## %s\n\n", t->service);
                if (t->doc && *t->doc)
                        fprintf(f, "%s\n\n", t->doc);
                fputs("| key | type | default | bounds | env | secret | description |\n"
                      "| --- | --- | --- | --- | --- | --- | --- |\n",
                      f);
                for (size_t i = 0; i < t->ndefs; i++) {
                        const canopy_conf_def *d = &t->defs[i];
                        fprintf(f, "| `%s` | %s", d->key, type_name(d->type));
                        if (d->type == CANOPY_CT_ENUM || (d->type == CANOPY_CT_STR && d->choices)) {
                                fputs(d->type == CANOPY_CT_STR ? " (characters " : " (", f);
                                md_cell(f, d->choices);
                                fputs(")", f);
                        }
                        fputs(" | ", f);
                        if (d->flags & CANOPY_CONF_REQUIRED)
                                fputs("**required**", f);
                        else if (d->defval && *d->defval) {
                                fputs("`", f);
                                md_cell(f, d->defval);
                                fputs("`", f);
                        } else if (d->defval)
                                fputs("`\"\"`", f);
                        else
                                fputs("none", f);
                        fputs(" | ", f);
                        md_bounds(f, d);
                        fputs(" | ", f);
                        if (d->env) {
                                fprintf(f, "`%s`", d->env);
                                if (d->type == CANOPY_CT_SECRET)
                                        fprintf(f, ", `%s_FILE`", d->env);
                        }
                        fputs(" | ", f);
                        if (d->type == CANOPY_CT_SECRET)
                                fprintf(f, "yes (`%s_file`)", last_comp(d->key));
                        fputs(" | ", f);
                        md_cell(f, d->doc);
                        fputs(" |\n", f);
                }
                fputs("\n", f);
        }
        return ferror(f) ? CANOPY_ERR_IO : CANOPY_OK;
}
