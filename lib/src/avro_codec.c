/* avro_codec.c: Avro single-object encoding of the five event records.
 *
 * Three layers:
 *  1. a schema model parsed from JSON (jansson; every schema is also
 *     validated by Avro-C), its Parsing Canonical Form and CRC-64-AVRO
 *     fingerprint, and a registry of writer schemas by fingerprint;
 *  2. hand-written typed encoders/decoders for the current version of each
 *     record: one bounds-checked pass, no intermediate tree, exact-size
 *     allocation (a counting pass sizes the buffer);
 *  3. a generic schema-resolution pass (writer schema -> reader schema)
 *     that re-encodes a payload of another version into the current one,
 *     applying reader defaults, skipping unknown fields and mapping enum
 *     symbols by name; the typed decoder then reads the result.
 * Every length and count read from the wire is checked against what is
 * left of the input before anything is allocated, so garbage cannot crash
 * or exhaust memory.
 */
#include "canopy/avro.h"

#include <avro.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schemas.h"

#define MAX_DEPTH 48
#define GENERIC_MAX_ITEMS (1u << 20) /* zero-byte items (null) per array block */

/* ---- errors ------------------------------------------------------------- */

struct ectx {
        char *buf;
        size_t len;
};

__attribute__((format(printf, 3, 4))) static canopy_err fail(struct ectx *e, canopy_err err, const char *fmt,
                                                              ...) {
        if (e && e->buf && e->len) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(e->buf, e->len, fmt, ap);
                va_end(ap);
        }
        return err;
}

/* ---- CRC-64-AVRO -------------------------------------------------------- */

#define CRC64_EMPTY 0xc15d213aa4d7a795ULL
static uint64_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
        for (int i = 0; i < 256; i++) {
                uint64_t fp = (uint64_t)i;
                for (int j = 0; j < 8; j++)
                        fp = (fp >> 1) ^ (CRC64_EMPTY & (0 - (fp & 1)));
                crc_table[i] = fp;
        }
}

uint64_t canopy_avro_crc64(const void *data, size_t len) {
        pthread_once(&crc_once, crc_init);
        const uint8_t *p = data;
        uint64_t fp = CRC64_EMPTY;
        for (size_t i = 0; i < len; i++)
                fp = (fp >> 8) ^ crc_table[(fp ^ p[i]) & 0xff];
        return fp;
}

/* ---- schema model ------------------------------------------------------- */

enum sk {
        SK_NULL,
        SK_BOOL,
        SK_INT,
        SK_LONG,
        SK_FLOAT,
        SK_DOUBLE,
        SK_BYTES,
        SK_STRING,
        SK_RECORD,
        SK_ENUM,
        SK_ARRAY,
        SK_MAP,
        SK_UNION,
        SK_FIXED,
};

static const char *const sk_names[] = {"null",   "boolean", "int",  "long",  "float", "double", "bytes",
                                       "string", "record",  "enum", "array", "map",   "union",  "fixed"};

struct snode;

struct sfield {
        char *name;
        struct snode *type;
        json_t *defval; /* NULL: no default */
};

struct snode {
        enum sk kind;
        char *fullname; /* named types */
        const char *shortname;
        struct sfield *fields;
        size_t nfields;
        char **symbols;
        size_t nsymbols;
        int enum_default; /* -1: none */
        struct snode *items; /* array items, map values */
        struct snode **branches;
        size_t nbranches;
        size_t size; /* fixed */
};

struct schema {
        struct snode *root;
        struct snode **all; /* every node, for freeing and named look-up */
        size_t nall;
};

static void node_free(struct snode *n) {
        free(n->fullname);
        for (size_t i = 0; i < n->nfields; i++) {
                free(n->fields[i].name);
                json_decref(n->fields[i].defval);
        }
        free(n->fields);
        for (size_t i = 0; i < n->nsymbols; i++)
                free(n->symbols[i]);
        free(n->symbols);
        free(n->branches);
        free(n);
}

static void schema_free(struct schema *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->nall; i++)
                node_free(s->all[i]);
        free(s->all);
        free(s);
}

static struct snode *node_new(struct schema *s, enum sk kind) {
        struct snode **all = realloc(s->all, (s->nall + 1) * sizeof(*all));
        if (!all)
                return NULL;
        s->all = all;
        struct snode *n = calloc(1, sizeof(*n));
        if (!n)
                return NULL;
        n->kind = kind;
        n->enum_default = -1;
        s->all[s->nall++] = n;
        return n;
}

static int primitive_kind(const char *t) {
        for (int k = SK_NULL; k <= SK_STRING; k++)
                if (strcmp(t, sk_names[k]) == 0)
                        return k;
        return -1;
}

static struct snode *find_named(struct schema *s, const char *fullname) {
        for (size_t i = 0; i < s->nall; i++)
                if (s->all[i]->fullname && strcmp(s->all[i]->fullname, fullname) == 0)
                        return s->all[i];
        return NULL;
}

static char *make_fullname(const char *name, const char *ns) {
        if (strchr(name, '.') || !ns || !*ns)
                return strdup(name);
        size_t l = strlen(ns) + 1 + strlen(name) + 1;
        char *f = malloc(l);
        if (f)
                snprintf(f, l, "%s.%s", ns, name);
        return f;
}

static canopy_err parse_node(struct schema *s, json_t *j, const char *ns, int depth, struct snode **ret,
                             struct ectx *e);

static canopy_err set_name(struct schema *s, struct snode *n, json_t *j, const char *ns, char **ret_ns,
                           struct ectx *e) {
        const char *name = json_string_value(json_object_get(j, "name"));
        if (!name || !*name)
                return fail(e, CANOPY_ERR_DECODE, "schema: %s without a name", sk_names[n->kind]);
        const char *own_ns = json_string_value(json_object_get(j, "namespace"));
        n->fullname = make_fullname(name, own_ns ? own_ns : ns);
        if (!n->fullname)
                return CANOPY_ERR_NOMEM;
        const char *dot = strrchr(n->fullname, '.');
        n->shortname = dot ? dot + 1 : n->fullname;
        if (ret_ns) {
                *ret_ns = dot ? strndup(n->fullname, (size_t)(dot - n->fullname)) : strdup("");
                if (!*ret_ns)
                        return CANOPY_ERR_NOMEM;
        }
        /* The node itself is in s->all already: look for an earlier one. */
        for (size_t i = 0; i + 1 < s->nall; i++)
                if (s->all[i] != n && s->all[i]->fullname && strcmp(s->all[i]->fullname, n->fullname) == 0)
                        return fail(e, CANOPY_ERR_DECODE, "schema: name %s defined twice", n->fullname);
        return CANOPY_OK;
}

static canopy_err parse_object(struct schema *s, json_t *j, const char *ns, int depth, struct snode **ret,
                               struct ectx *e) {
        json_t *jt = json_object_get(j, "type");
        if (json_is_object(jt) || json_is_array(jt))
                return parse_node(s, jt, ns, depth + 1, ret, e);
        const char *t = json_string_value(jt);
        if (!t)
                return fail(e, CANOPY_ERR_DECODE, "schema: object without a type");
        int pk = primitive_kind(t);
        canopy_err err = CANOPY_OK;
        char *inner_ns = NULL;
        struct snode *n;
        if (pk >= 0) {
                if (!(n = node_new(s, (enum sk)pk)))
                        return CANOPY_ERR_NOMEM;
                *ret = n;
                return CANOPY_OK;
        }
        if (strcmp(t, "record") == 0 || strcmp(t, "error") == 0) {
                if (!(n = node_new(s, SK_RECORD)))
                        return CANOPY_ERR_NOMEM;
                if ((err = set_name(s, n, j, ns, &inner_ns, e)))
                        goto out;
                json_t *jf = json_object_get(j, "fields");
                if (!json_is_array(jf)) {
                        err = fail(e, CANOPY_ERR_DECODE, "schema: record %s without fields", n->fullname);
                        goto out;
                }
                size_t nf = json_array_size(jf);
                n->fields = calloc(nf ? nf : 1, sizeof(*n->fields));
                if (!n->fields) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                for (size_t i = 0; i < nf; i++) {
                        json_t *f = json_array_get(jf, i);
                        const char *fname = json_string_value(json_object_get(f, "name"));
                        json_t *ftype = json_object_get(f, "type");
                        if (!fname || !ftype) {
                                err = fail(e, CANOPY_ERR_DECODE, "schema: field %zu of %s lacks name or type", i,
                                           n->fullname);
                                goto out;
                        }
                        struct sfield *sf = &n->fields[n->nfields];
                        if (!(sf->name = strdup(fname))) {
                                err = CANOPY_ERR_NOMEM;
                                goto out;
                        }
                        n->nfields++;
                        if ((err = parse_node(s, ftype, inner_ns, depth + 1, &sf->type, e)))
                                goto out;
                        json_t *d = json_object_get(f, "default");
                        if (d)
                                sf->defval = json_incref(d);
                }
        } else if (strcmp(t, "enum") == 0) {
                if (!(n = node_new(s, SK_ENUM)))
                        return CANOPY_ERR_NOMEM;
                if ((err = set_name(s, n, j, ns, NULL, e)))
                        goto out;
                json_t *js = json_object_get(j, "symbols");
                size_t ns_ = json_array_size(js);
                if (!json_is_array(js) || ns_ == 0) {
                        err = fail(e, CANOPY_ERR_DECODE, "schema: enum %s without symbols", n->fullname);
                        goto out;
                }
                if (!(n->symbols = calloc(ns_, sizeof(char *)))) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                for (size_t i = 0; i < ns_; i++) {
                        const char *sym = json_string_value(json_array_get(js, i));
                        if (!sym) {
                                err = fail(e, CANOPY_ERR_DECODE, "schema: enum %s: bad symbol", n->fullname);
                                goto out;
                        }
                        if (!(n->symbols[i] = strdup(sym))) {
                                err = CANOPY_ERR_NOMEM;
                                goto out;
                        }
                        n->nsymbols++;
                }
                const char *def = json_string_value(json_object_get(j, "default"));
                for (size_t i = 0; def && i < n->nsymbols; i++)
                        if (strcmp(n->symbols[i], def) == 0)
                                n->enum_default = (int)i;
        } else if (strcmp(t, "array") == 0 || strcmp(t, "map") == 0) {
                int arr = t[0] == 'a';
                if (!(n = node_new(s, arr ? SK_ARRAY : SK_MAP)))
                        return CANOPY_ERR_NOMEM;
                json_t *ji = json_object_get(j, arr ? "items" : "values");
                if (!ji) {
                        err = fail(e, CANOPY_ERR_DECODE, "schema: %s without %s", t, arr ? "items" : "values");
                        goto out;
                }
                if ((err = parse_node(s, ji, ns, depth + 1, &n->items, e)))
                        goto out;
        } else if (strcmp(t, "fixed") == 0) {
                if (!(n = node_new(s, SK_FIXED)))
                        return CANOPY_ERR_NOMEM;
                if ((err = set_name(s, n, j, ns, NULL, e)))
                        goto out;
                json_t *jz = json_object_get(j, "size");
                if (!json_is_integer(jz) || json_integer_value(jz) < 0) {
                        err = fail(e, CANOPY_ERR_DECODE, "schema: fixed %s without a size", n->fullname);
                        goto out;
                }
                n->size = (size_t)json_integer_value(jz);
        } else {
                /* {"type": "some.Named"} */
                free(inner_ns);
                json_t *str = json_string(t);
                if (!str)
                        return CANOPY_ERR_NOMEM;
                err = parse_node(s, str, ns, depth + 1, ret, e);
                json_decref(str);
                return err;
        }
        *ret = n;
out:
        free(inner_ns);
        return err;
}

static canopy_err parse_node(struct schema *s, json_t *j, const char *ns, int depth, struct snode **ret,
                             struct ectx *e) {
        if (depth > MAX_DEPTH)
                return fail(e, CANOPY_ERR_DECODE, "schema: nested deeper than %d", MAX_DEPTH);
        if (json_is_string(j)) {
                const char *t = json_string_value(j);
                int pk = primitive_kind(t);
                if (pk >= 0) {
                        struct snode *n = node_new(s, (enum sk)pk);
                        if (!n)
                                return CANOPY_ERR_NOMEM;
                        *ret = n;
                        return CANOPY_OK;
                }
                char *full = make_fullname(t, ns);
                if (!full)
                        return CANOPY_ERR_NOMEM;
                struct snode *n = find_named(s, full);
                if (!n)
                        n = find_named(s, t);
                free(full);
                if (!n)
                        return fail(e, CANOPY_ERR_DECODE, "schema: unknown type '%s'", t);
                *ret = n;
                return CANOPY_OK;
        }
        if (json_is_array(j)) {
                struct snode *n = node_new(s, SK_UNION);
                if (!n)
                        return CANOPY_ERR_NOMEM;
                size_t nb = json_array_size(j);
                if (nb == 0)
                        return fail(e, CANOPY_ERR_DECODE, "schema: empty union");
                if (!(n->branches = calloc(nb, sizeof(*n->branches))))
                        return CANOPY_ERR_NOMEM;
                for (size_t i = 0; i < nb; i++) {
                        canopy_err err = parse_node(s, json_array_get(j, i), ns, depth + 1, &n->branches[i], e);
                        if (err)
                                return err;
                        n->nbranches++;
                }
                *ret = n;
                return CANOPY_OK;
        }
        if (json_is_object(j))
                return parse_object(s, j, ns, depth, ret, e);
        return fail(e, CANOPY_ERR_DECODE, "schema: unexpected JSON value");
}

/* Parse and validate a schema text: Avro-C must accept it too. */
static canopy_err schema_parse(const char *text, size_t len, struct schema **ret, struct ectx *e) {
        avro_schema_t as = NULL;
        if (avro_schema_from_json_length(text, len, &as) != 0)
                return fail(e, CANOPY_ERR_DECODE, "schema rejected by Avro-C: %s", avro_strerror());
        avro_schema_decref(as);
        json_error_t jerr;
        json_t *j = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
        if (!j)
                return fail(e, CANOPY_ERR_DECODE, "schema JSON: line %d: %s", jerr.line, jerr.text);
        struct schema *s = calloc(1, sizeof(*s));
        canopy_err err = s ? parse_node(s, j, NULL, 0, &s->root, e) : CANOPY_ERR_NOMEM;
        json_decref(j);
        if (err) {
                schema_free(s);
                return err;
        }
        *ret = s;
        return CANOPY_OK;
}

/* ---- Parsing Canonical Form --------------------------------------------- */

struct sbuf {
        char *p;
        size_t len, cap;
        int oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n) {
        if (b->oom)
                return;
        if (b->len + n + 1 > b->cap) {
                size_t nc = b->cap ? b->cap * 2 : 256;
                while (nc < b->len + n + 1)
                        nc *= 2;
                char *p = realloc(b->p, nc);
                if (!p) {
                        b->oom = 1;
                        return;
                }
                b->p = p;
                b->cap = nc;
        }
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = 0;
}

static void sb_str(struct sbuf *b, const char *s) {
        sb_add(b, s, strlen(s));
}

/* A JSON string literal; Avro names and symbols are [A-Za-z0-9_.], but be
 * correct for anything. */
static void sb_jstr(struct sbuf *b, const char *s) {
        sb_add(b, "\"", 1);
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                char esc[8];
                if (c == '"' || c == '\\') {
                        esc[0] = '\\';
                        esc[1] = (char)c;
                        sb_add(b, esc, 2);
                } else if (c < 0x20) {
                        snprintf(esc, sizeof(esc), "\\u%04x", c);
                        sb_add(b, esc, 6);
                } else {
                        sb_add(b, (const char *)&c, 1);
                }
        }
        sb_add(b, "\"", 1);
}

struct seen {
        const struct snode **v;
        size_t n;
};

static void pcf(struct sbuf *b, const struct snode *n, struct seen *seen) {
        if (n->fullname) {
                for (size_t i = 0; i < seen->n; i++)
                        if (seen->v[i] == n) {
                                sb_jstr(b, n->fullname);
                                return;
                        }
                const struct snode **v = realloc(seen->v, (seen->n + 1) * sizeof(*v));
                if (!v) {
                        b->oom = 1;
                        return;
                }
                seen->v = v;
                v[seen->n++] = n;
        }
        switch (n->kind) {
        case SK_RECORD:
                sb_str(b, "{\"name\":");
                sb_jstr(b, n->fullname);
                sb_str(b, ",\"type\":\"record\",\"fields\":[");
                for (size_t i = 0; i < n->nfields; i++) {
                        sb_str(b, i ? ",{\"name\":" : "{\"name\":");
                        sb_jstr(b, n->fields[i].name);
                        sb_str(b, ",\"type\":");
                        pcf(b, n->fields[i].type, seen);
                        sb_str(b, "}");
                }
                sb_str(b, "]}");
                break;
        case SK_ENUM:
                sb_str(b, "{\"name\":");
                sb_jstr(b, n->fullname);
                sb_str(b, ",\"type\":\"enum\",\"symbols\":[");
                for (size_t i = 0; i < n->nsymbols; i++) {
                        if (i)
                                sb_str(b, ",");
                        sb_jstr(b, n->symbols[i]);
                }
                sb_str(b, "]}");
                break;
        case SK_ARRAY:
                sb_str(b, "{\"type\":\"array\",\"items\":");
                pcf(b, n->items, seen);
                sb_str(b, "}");
                break;
        case SK_MAP:
                sb_str(b, "{\"type\":\"map\",\"values\":");
                pcf(b, n->items, seen);
                sb_str(b, "}");
                break;
        case SK_UNION:
                sb_str(b, "[");
                for (size_t i = 0; i < n->nbranches; i++) {
                        if (i)
                                sb_str(b, ",");
                        pcf(b, n->branches[i], seen);
                }
                sb_str(b, "]");
                break;
        case SK_FIXED: {
                char num[32];
                sb_str(b, "{\"name\":");
                sb_jstr(b, n->fullname);
                snprintf(num, sizeof(num), ",\"type\":\"fixed\",\"size\":%zu}", n->size);
                sb_str(b, num);
                break;
        }
        default:
                sb_jstr(b, sk_names[n->kind]);
        }
}

static canopy_err schema_pcf(const struct schema *s, char **ret) {
        struct sbuf b = {0};
        struct seen seen = {0};
        pcf(&b, s->root, &seen);
        free(seen.v);
        if (b.oom) {
                free(b.p);
                return CANOPY_ERR_NOMEM;
        }
        *ret = b.p;
        return CANOPY_OK;
}

canopy_err canopy_avro_canonical_form(const char *json, char **ret, char *errbuf, size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!json || !ret)
                return CANOPY_ERR_INVALID_ARG;
        struct schema *s = NULL;
        canopy_err err = schema_parse(json, strlen(json), &s, &e);
        if (!err)
                err = schema_pcf(s, ret);
        schema_free(s);
        return err;
}

static canopy_err schema_fp(const struct schema *s, uint64_t *ret) {
        char *c = NULL;
        canopy_err err = schema_pcf(s, &c);
        if (err)
                return err;
        *ret = canopy_avro_crc64(c, strlen(c));
        free(c);
        return CANOPY_OK;
}

canopy_err canopy_avro_fingerprint(const char *json, uint64_t *ret, char *errbuf, size_t errlen) {
        char *c = NULL;
        canopy_err err = canopy_avro_canonical_form(json, &c, errbuf, errlen);
        if (err)
                return err;
        *ret = canopy_avro_crc64(c, strlen(c));
        free(c);
        return CANOPY_OK;
}

/* ---- registry ----------------------------------------------------------- */

static const char *const rec_names[CANOPY_REC_COUNT] = {
        "io.canopy.events.ChangeEvent", "io.canopy.events.MvEvent",      "io.canopy.events.ExportRecord",
        "io.canopy.events.ControlEvent", "io.canopy.events.DeadLetter", "io.canopy.events.RunRecord",
};

struct reg_entry {
        uint64_t fp;
        canopy_record rec;
        int version;
        struct schema *s;
        char *json; /* owned copy for registered schemas, NULL for embedded ones */
};

static struct {
        pthread_once_t once;
        canopy_err init_err;
        struct reg_entry *v;
        size_t n;
        const struct schema *current[CANOPY_REC_COUNT];
        uint64_t current_fp[CANOPY_REC_COUNT];
        const char *current_json[CANOPY_REC_COUNT];
        int current_version[CANOPY_REC_COUNT];
} reg = {.once = PTHREAD_ONCE_INIT};

static int rec_of(const struct schema *s) {
        if (s->root->kind != SK_RECORD)
                return -1;
        for (int i = 0; i < CANOPY_REC_COUNT; i++)
                if (strcmp(s->root->fullname, rec_names[i]) == 0)
                        return i;
        return -1;
}

static const struct reg_entry *reg_find(uint64_t fp) {
        for (size_t i = 0; i < reg.n; i++)
                if (reg.v[i].fp == fp)
                        return &reg.v[i];
        return NULL;
}

static canopy_err reg_add(const char *json, int version, int current, int copy, struct ectx *e) {
        struct schema *s = NULL;
        canopy_err err = schema_parse(json, strlen(json), &s, e);
        if (err)
                return err;
        int rec = rec_of(s);
        uint64_t fp = 0;
        if (rec < 0) {
                err = fail(e, CANOPY_ERR_DECODE, "schema is not one of Canopy's records (%s)",
                           s->root->fullname ? s->root->fullname : sk_names[s->root->kind]);
                goto fail;
        }
        if ((err = schema_fp(s, &fp)))
                goto fail;
        if (reg_find(fp)) {
                schema_free(s);
                return CANOPY_OK;
        }
        struct reg_entry *v = realloc(reg.v, (reg.n + 1) * sizeof(*v));
        if (!v) {
                err = CANOPY_ERR_NOMEM;
                goto fail;
        }
        reg.v = v;
        struct reg_entry *re = &reg.v[reg.n];
        re->fp = fp;
        re->rec = (canopy_record)rec;
        re->version = version;
        re->s = s;
        re->json = NULL;
        if (copy && !(re->json = strdup(json))) {
                err = CANOPY_ERR_NOMEM;
                goto fail;
        }
        reg.n++;
        if (current) {
                reg.current[rec] = s;
                reg.current_fp[rec] = fp;
                reg.current_json[rec] = json;
                reg.current_version[rec] = version;
        }
        return CANOPY_OK;
fail:
        schema_free(s);
        return err;
}

static void reg_init(void) {
        char msg[CANOPY_AVRO_ERRLEN];
        struct ectx e = {msg, sizeof(msg)};
        for (size_t i = 0; i < canopy_schema_nsrcs; i++) {
                const struct canopy_schema_src *src = &canopy_schema_srcs[i];
                canopy_err err = reg_add(src->json, src->version, src->current, 0, &e);
                if (err) {
                        /* The embedded schemas are tested; this is a build defect. */
                        fprintf(stderr, "canopy: embedded schema %s: %s\n", src->file, msg);
                        reg.init_err = err;
                        return;
                }
        }
        for (int r = 0; r < CANOPY_REC_COUNT; r++)
                if (!reg.current[r])
                        reg.init_err = CANOPY_ERR_UNSUPPORTED;
}

static canopy_err reg_ready(struct ectx *e) {
        pthread_once(&reg.once, reg_init);
        if (reg.init_err)
                return fail(e, reg.init_err, "schema registry failed to initialise");
        return CANOPY_OK;
}

canopy_err canopy_avro_register_schema(const char *json, int version, char *errbuf, size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!json)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        return err ? err : reg_add(json, version, 0, 1, &e);
}

const char *canopy_avro_schema_json(canopy_record rec) {
        if (reg_ready(NULL) || (unsigned)rec >= CANOPY_REC_COUNT)
                return NULL;
        return reg.current_json[rec];
}

int canopy_avro_schema_version(canopy_record rec) {
        if (reg_ready(NULL) || (unsigned)rec >= CANOPY_REC_COUNT)
                return 0;
        return reg.current_version[rec];
}

const char *canopy_avro_record_name(canopy_record rec) {
        return (unsigned)rec < CANOPY_REC_COUNT ? rec_names[rec] : NULL;
}

uint64_t canopy_avro_schema_fingerprint(canopy_record rec) {
        if (reg_ready(NULL) || (unsigned)rec >= CANOPY_REC_COUNT)
                return 0;
        return reg.current_fp[rec];
}

/* ---- binary primitives -------------------------------------------------- */

struct rd {
        const uint8_t *p, *end;
        struct ectx *e;
};

struct wr {
        uint8_t *buf;
        size_t len, cap;
        int grow; /* 1: realloc as needed; 0 with buf NULL: count only */
        int oom;
};

static void w_raw(struct wr *w, const void *d, size_t n) {
        if (w->grow) {
                if (w->oom)
                        return;
                if (w->len + n > w->cap) {
                        size_t nc = w->cap ? w->cap * 2 : 512;
                        while (nc < w->len + n)
                                nc *= 2;
                        uint8_t *p = realloc(w->buf, nc);
                        if (!p) {
                                w->oom = 1;
                                return;
                        }
                        w->buf = p;
                        w->cap = nc;
                }
        }
        if (w->buf && n)
                memcpy(w->buf + w->len, d, n);
        w->len += n;
}

static void w_long(struct wr *w, int64_t v) {
        uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
        uint8_t tmp[10];
        size_t n = 0;
        while (z & ~0x7fULL) {
                tmp[n++] = (uint8_t)((z & 0x7f) | 0x80);
                z >>= 7;
        }
        tmp[n++] = (uint8_t)z;
        w_raw(w, tmp, n);
}

static void w_bool(struct wr *w, bool b) {
        uint8_t c = b ? 1 : 0;
        w_raw(w, &c, 1);
}

static void w_blob(struct wr *w, const void *d, size_t n) {
        w_long(w, (int64_t)n);
        w_raw(w, d, n);
}

static void w_str(struct wr *w, const char *s) {
        w_blob(w, s, strlen(s));
}

static void w_optstr(struct wr *w, const char *s) {
        if (!s) {
                w_long(w, 0);
                return;
        }
        w_long(w, 1);
        w_str(w, s);
}

static canopy_err r_long(struct rd *r, int64_t *ret) {
        uint64_t z = 0;
        for (int shift = 0; shift < 70; shift += 7) {
                if (r->p >= r->end)
                        return fail(r->e, CANOPY_ERR_TRUNCATED, "truncated: input ends inside a number");
                uint8_t c = *r->p++;
                if (shift == 63 && (c & 0x7e))
                        return fail(r->e, CANOPY_ERR_DECODE, "corrupt: varint overflows 64 bits");
                z |= (uint64_t)(c & 0x7f) << shift;
                if (!(c & 0x80)) {
                        *ret = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
                        return CANOPY_OK;
                }
        }
        return fail(r->e, CANOPY_ERR_DECODE, "corrupt: varint longer than 10 bytes");
}

static canopy_err r_int(struct rd *r, int32_t *ret) {
        int64_t v = 0;
        canopy_err err = r_long(r, &v);
        if (err)
                return err;
        if (v < INT32_MIN || v > INT32_MAX)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: int out of range");
        *ret = (int32_t)v;
        return CANOPY_OK;
}

static canopy_err r_bool(struct rd *r, bool *ret) {
        if (r->p >= r->end)
                return fail(r->e, CANOPY_ERR_TRUNCATED, "truncated: input ends inside a boolean");
        uint8_t c = *r->p++;
        if (c > 1)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: boolean byte %u", c);
        *ret = c;
        return CANOPY_OK;
}

/* A length, checked against what is left of the input. */
static canopy_err r_len(struct rd *r, size_t *ret, const char *what) {
        int64_t v;
        canopy_err err = r_long(r, &v);
        if (err)
                return err;
        if (v < 0)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: negative length of %s", what);
        if ((uint64_t)v > (uint64_t)(r->end - r->p))
                return fail(r->e, CANOPY_ERR_TRUNCATED, "truncated: %s of %lld bytes, %zu left", what,
                            (long long)v, (size_t)(r->end - r->p));
        *ret = (size_t)v;
        return CANOPY_OK;
}

static canopy_err r_bytes(struct rd *r, canopy_bytes *ret, const char *what) {
        size_t n;
        canopy_err err = r_len(r, &n, what);
        if (err)
                return err;
        uint8_t *p = malloc(n + 1);
        if (!p)
                return CANOPY_ERR_NOMEM;
        memcpy(p, r->p, n);
        p[n] = 0;
        r->p += n;
        ret->data = p;
        ret->len = n;
        return CANOPY_OK;
}

static canopy_err r_str(struct rd *r, char **ret, const char *what) {
        canopy_bytes b = {0};
        canopy_err err = r_bytes(r, &b, what);
        if (err)
                return err;
        if (memchr(b.data, 0, b.len)) {
                free(b.data);
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: NUL byte inside string %s", what);
        }
        *ret = (char *)b.data;
        return CANOPY_OK;
}

static canopy_err r_optstr(struct rd *r, char **ret, const char *what) {
        int64_t idx;
        canopy_err err = r_long(r, &idx);
        if (err)
                return err;
        if (idx == 0) {
                *ret = NULL;
                return CANOPY_OK;
        }
        if (idx != 1)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: union branch %lld of %s", (long long)idx, what);
        return r_str(r, ret, what);
}

static canopy_err r_enum(struct rd *r, int nsym, int *ret, const char *what) {
        int32_t v = 0;
        canopy_err err = r_int(r, &v);
        if (err)
                return err;
        if (v < 0 || v >= nsym)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: %s enum index %d", what, v);
        *ret = v;
        return CANOPY_OK;
}

/* Start of an array block: returns the item count (0 = end). Every item of
 * our arrays takes at least min_item bytes, which bounds the count by the
 * input left before anything is allocated. */
static canopy_err r_block(struct rd *r, size_t min_item, size_t *ret, const char *what) {
        int64_t cnt;
        canopy_err err = r_long(r, &cnt);
        if (err)
                return err;
        if (cnt < 0) {
                int64_t bytes;
                if (cnt == INT64_MIN)
                        return fail(r->e, CANOPY_ERR_DECODE, "corrupt: block count of %s", what);
                cnt = -cnt;
                if ((err = r_long(r, &bytes)))
                        return err;
        }
        if (min_item && (uint64_t)cnt > (uint64_t)(r->end - r->p) / min_item)
                return fail(r->e, CANOPY_ERR_TRUNCATED, "truncated: %s claims %lld items, %zu bytes left", what,
                            (long long)cnt, (size_t)(r->end - r->p));
        *ret = (size_t)cnt;
        return CANOPY_OK;
}

/* ---- typed encoders ----------------------------------------------------- */

static void w_values(struct wr *w, const canopy_bytes *v, size_t n) {
        if (n) {
                w_long(w, (int64_t)n);
                for (size_t i = 0; i < n; i++)
                        w_blob(w, v[i].data, v[i].len);
        }
        w_long(w, 0);
}

static void enc_change(struct wr *w, const canopy_change_event *ev) {
        w_str(w, ev->connector);
        w_blob(w, ev->anchor.data, ev->anchor.len);
        w_optstr(w, ev->object_class);
        w_long(w, ev->op);
        w_optstr(w, ev->dn);
        w_optstr(w, ev->prev_dn);
        w_bool(w, ev->complete);
        if (ev->nattrs) {
                w_long(w, (int64_t)ev->nattrs);
                for (size_t i = 0; i < ev->nattrs; i++) {
                        const canopy_attr *a = &ev->attrs[i];
                        w_str(w, a->name);
                        w_bool(w, a->binary);
                        w_values(w, a->values, a->nvalues);
                        w_bool(w, a->delta);
                        w_values(w, a->added, a->nadded);
                        w_values(w, a->removed, a->nremoved);
                }
        }
        w_long(w, 0);
        w_optstr(w, ev->position);
        w_long(w, ev->source_ts_ms);
        w_optstr(w, ev->producer_id);
        w_long(w, ev->seq);
        w_optstr(w, ev->scan_id);
        w_long(w, ev->chunk);
        w_long(w, ev->nchunks);
}

static void enc_mv(struct wr *w, const canopy_mv_event *mv) {
        w_str(w, mv->mv_id);
        w_str(w, mv->object_type);
        if (mv->ncontribs) {
                w_long(w, (int64_t)mv->ncontribs);
                for (size_t i = 0; i < mv->ncontribs; i++) {
                        w_str(w, mv->contribs[i].connector);
                        w_blob(w, mv->contribs[i].anchor.data, mv->contribs[i].anchor.len);
                }
        }
        w_long(w, 0);
        w_long(w, mv->reason);
        w_optstr(w, mv->cause_connector);
        w_long(w, mv->ts_ms);
        w_long(w, mv->source_ts_ms);
}

static void enc_export(struct wr *w, const canopy_export_record *er) {
        w_str(w, er->mv_id);
        w_optstr(w, er->entra_id);
        w_str(w, er->object_type);
        w_long(w, er->op);
        if (er->nchanged) {
                w_long(w, (int64_t)er->nchanged);
                for (size_t i = 0; i < er->nchanged; i++)
                        w_str(w, er->changed[i]);
        }
        w_long(w, 0);
        w_long(w, er->result);
        w_optstr(w, er->request_id);
        w_optstr(w, er->error);
        w_bool(w, er->staged);
        w_long(w, er->ts_ms);
        w_long(w, er->source_ts_ms);
}

static void enc_run(struct wr *w, const canopy_run_record *rr) {
        w_str(w, rr->connector);
        w_str(w, rr->object_type);
        w_long(w, rr->run_type);
        w_optstr(w, rr->scan_id);
        w_long(w, rr->start_ms);
        w_long(w, rr->end_ms);
        w_long(w, rr->total);
        w_long(w, rr->changed);
        w_long(w, rr->deleted);
        w_long(w, rr->filtered);
        w_long(w, rr->errors);
        w_long(w, rr->status);
        w_long(w, rr->ts_ms);
}

static void enc_control(struct wr *w, const canopy_control_event *ce) {
        w_long(w, ce->kind);
        w_optstr(w, ce->target);
        w_optstr(w, ce->reason);
        w_optstr(w, ce->actor);
        w_optstr(w, ce->version);
        w_long(w, ce->ts_ms);
}

static void enc_dead_letter(struct wr *w, const canopy_dead_letter *dl) {
        w_str(w, dl->topic);
        w_long(w, dl->partition);
        w_long(w, dl->offset);
        w_blob(w, dl->key.data, dl->key.len);
        w_blob(w, dl->payload.data, dl->payload.len);
        w_optstr(w, dl->reason);
        w_optstr(w, dl->error_class);
        w_optstr(w, dl->error_code);
        w_long(w, dl->ts_ms);
}

static int bad_blob(const canopy_bytes *b) {
        return !b->data && b->len;
}

static canopy_err check_values(const canopy_attr *a, const canopy_bytes *v, size_t n, const char *what,
                               struct ectx *e) {
        if (n > CANOPY_ATTR_MAX_VALUES)
                return fail(e, CANOPY_ERR_TOO_MANY_VALUES, "attribute '%s' has %zu %s values (cap %u)", a->name, n,
                            what, CANOPY_ATTR_MAX_VALUES);
        if (n && !v)
                return fail(e, CANOPY_ERR_ENCODE, "attribute '%s': %zu %s values but no array", a->name, n, what);
        for (size_t i = 0; i < n; i++)
                if (bad_blob(&v[i]))
                        return fail(e, CANOPY_ERR_ENCODE, "attribute '%s': %s value %zu has no data", a->name,
                                    what, i);
        return CANOPY_OK;
}

static canopy_err check_change(const canopy_change_event *ev, struct ectx *e) {
        if (!ev->connector)
                return fail(e, CANOPY_ERR_ENCODE, "ChangeEvent without connector");
        if ((unsigned)ev->op > CANOPY_OP_END_OF_SCAN)
                return fail(e, CANOPY_ERR_ENCODE, "ChangeEvent with invalid op %d", (int)ev->op);
        if (bad_blob(&ev->anchor))
                return fail(e, CANOPY_ERR_ENCODE, "ChangeEvent anchor has no data");
        if (ev->nattrs > CANOPY_EVENT_MAX_ATTRS)
                return fail(e, CANOPY_ERR_LIMIT, "ChangeEvent has %zu attributes (cap %u)", ev->nattrs,
                            CANOPY_EVENT_MAX_ATTRS);
        if (ev->nattrs && !ev->attrs)
                return fail(e, CANOPY_ERR_ENCODE, "ChangeEvent: nattrs without attrs");
        for (size_t i = 0; i < ev->nattrs; i++) {
                const canopy_attr *a = &ev->attrs[i];
                canopy_err err;
                if (!a->name)
                        return fail(e, CANOPY_ERR_ENCODE, "attribute %zu has no name", i);
                if ((err = check_values(a, a->values, a->nvalues, "full", e)) ||
                    (err = check_values(a, a->added, a->nadded, "added", e)) ||
                    (err = check_values(a, a->removed, a->nremoved, "removed", e)))
                        return err;
        }
        return CANOPY_OK;
}

static canopy_err check_mv(const canopy_mv_event *mv, struct ectx *e) {
        if (!mv->mv_id || !mv->object_type)
                return fail(e, CANOPY_ERR_ENCODE, "MvEvent without mv_id or object_type");
        if ((unsigned)mv->reason > CANOPY_MV_REPLAY)
                return fail(e, CANOPY_ERR_ENCODE, "MvEvent with invalid reason %d", (int)mv->reason);
        if (mv->ncontribs > CANOPY_EVENT_MAX_ATTRS)
                return fail(e, CANOPY_ERR_LIMIT, "MvEvent has %zu contributors (cap %u)", mv->ncontribs,
                            CANOPY_EVENT_MAX_ATTRS);
        for (size_t i = 0; i < mv->ncontribs; i++)
                if (!mv->contribs[i].connector || bad_blob(&mv->contribs[i].anchor))
                        return fail(e, CANOPY_ERR_ENCODE, "MvEvent contributor %zu incomplete", i);
        return CANOPY_OK;
}

static canopy_err check_export(const canopy_export_record *er, struct ectx *e) {
        if (!er->mv_id || !er->object_type)
                return fail(e, CANOPY_ERR_ENCODE, "ExportRecord without mv_id or object_type");
        if ((unsigned)er->op > CANOPY_EXP_NOOP || (unsigned)er->result > CANOPY_RES_STAGED)
                return fail(e, CANOPY_ERR_ENCODE, "ExportRecord with invalid op or result");
        if (er->nchanged > CANOPY_EVENT_MAX_ATTRS)
                return fail(e, CANOPY_ERR_LIMIT, "ExportRecord has %zu changed properties (cap %u)", er->nchanged,
                            CANOPY_EVENT_MAX_ATTRS);
        for (size_t i = 0; i < er->nchanged; i++)
                if (!er->changed[i])
                        return fail(e, CANOPY_ERR_ENCODE, "ExportRecord changed[%zu] is NULL", i);
        return CANOPY_OK;
}

static canopy_err check_run(const canopy_run_record *rr, struct ectx *e) {
        if (!rr->connector || !rr->object_type)
                return fail(e, CANOPY_ERR_ENCODE, "RunRecord without connector or object_type");
        if ((unsigned)rr->run_type > CANOPY_RUN_FULL || (unsigned)rr->status > CANOPY_RUN_STOPPED_QUARANTINE)
                return fail(e, CANOPY_ERR_ENCODE, "RunRecord with invalid run_type or status");
        return CANOPY_OK;
}

static canopy_err check_control(const canopy_control_event *ce, struct ectx *e) {
        if ((unsigned)ce->kind > CANOPY_CTL_REJECT)
                return fail(e, CANOPY_ERR_ENCODE, "ControlEvent with invalid kind %d", (int)ce->kind);
        return CANOPY_OK;
}

static canopy_err check_dead_letter(const canopy_dead_letter *dl, struct ectx *e) {
        if (!dl->topic)
                return fail(e, CANOPY_ERR_ENCODE, "DeadLetter without topic");
        if (bad_blob(&dl->key) || bad_blob(&dl->payload))
                return fail(e, CANOPY_ERR_ENCODE, "DeadLetter key or payload has no data");
        return CANOPY_OK;
}

static void put_header(uint8_t *p, uint64_t fp) {
        p[0] = CANOPY_AVRO_MAGIC0;
        p[1] = CANOPY_AVRO_MAGIC1;
        for (int i = 0; i < 8; i++)
                p[2 + i] = (uint8_t)(fp >> (8 * i));
}

/* Size in a counting pass, allocate once, write. */
#define ENCODE_BODY(REC, encfn, obj, what)                                                                 \
        do {                                                                                               \
                struct wr cnt = {0};                                                                       \
                encfn(&cnt, obj);                                                                          \
                size_t total = CANOPY_AVRO_HEADER_LEN + cnt.len;                                           \
                if (total > CANOPY_EVENT_MAX_BYTES)                                                        \
                        return fail(&e, CANOPY_ERR_TOO_LARGE, "%s of %zu bytes exceeds the cap of %u bytes%s%s", \
                                    what, total, CANOPY_EVENT_MAX_BYTES, ctx ? ": " : "", ctx ? ctx : ""); \
                uint8_t *buf = malloc(total);                                                              \
                if (!buf)                                                                                  \
                        return CANOPY_ERR_NOMEM;                                                           \
                put_header(buf, reg.current_fp[REC]);                                                      \
                struct wr out = {buf, CANOPY_AVRO_HEADER_LEN, total, 0, 0};                                \
                encfn(&out, obj);                                                                          \
                ret->data = buf;                                                                           \
                ret->len = total;                                                                          \
                return CANOPY_OK;                                                                          \
        } while (0)

canopy_err canopy_avro_encode_change(const canopy_change_event *ev, canopy_bytes *ret, char *errbuf,
                                     size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!ev || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        if (err || (err = check_change(ev, &e)))
                return err;
        const char *ctx = ev->dn;
        ENCODE_BODY(CANOPY_REC_CHANGE, enc_change, ev, "ChangeEvent");
}

canopy_err canopy_avro_encode_mv(const canopy_mv_event *mv, canopy_bytes *ret, char *errbuf, size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!mv || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        if (err || (err = check_mv(mv, &e)))
                return err;
        const char *ctx = mv->mv_id;
        ENCODE_BODY(CANOPY_REC_MV, enc_mv, mv, "MvEvent");
}

canopy_err canopy_avro_encode_export(const canopy_export_record *er, canopy_bytes *ret, char *errbuf,
                                     size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!er || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        if (err || (err = check_export(er, &e)))
                return err;
        const char *ctx = er->mv_id;
        ENCODE_BODY(CANOPY_REC_EXPORT, enc_export, er, "ExportRecord");
}

canopy_err canopy_avro_encode_control(const canopy_control_event *ce, canopy_bytes *ret, char *errbuf,
                                      size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!ce || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        if (err || (err = check_control(ce, &e)))
                return err;
        const char *ctx = ce->target;
        ENCODE_BODY(CANOPY_REC_CONTROL, enc_control, ce, "ControlEvent");
}

canopy_err canopy_avro_encode_dead_letter(const canopy_dead_letter *dl, canopy_bytes *ret, char *errbuf,
                                          size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!dl || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        if (err || (err = check_dead_letter(dl, &e)))
                return err;
        const char *ctx = dl->topic;
        ENCODE_BODY(CANOPY_REC_DEAD_LETTER, enc_dead_letter, dl, "DeadLetter");
}

canopy_err canopy_avro_encode_run(const canopy_run_record *rr, canopy_bytes *ret, char *errbuf, size_t errlen) {
        struct ectx e = {errbuf, errlen};
        if (!rr || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = reg_ready(&e);
        if (err || (err = check_run(rr, &e)))
                return err;
        const char *ctx = rr->connector;
        ENCODE_BODY(CANOPY_REC_RUN, enc_run, rr, "RunRecord");
}

/* ---- typed decoders ----------------------------------------------------- */

#define TRY(x)                                                                                             \
        do {                                                                                               \
                if ((err = (x)))                                                                           \
                        return err;                                                                        \
        } while (0)

/* Array of bytes (values / added / removed of one attribute). */
static canopy_err r_values(struct rd *r, canopy_bytes **ret, size_t *ret_n, const char *attr, const char *what) {
        canopy_err err;
        size_t cnt;
        for (;;) {
                TRY(r_block(r, 1, &cnt, "value array"));
                if (!cnt)
                        return CANOPY_OK;
                if (*ret_n + cnt > CANOPY_ATTR_MAX_VALUES)
                        return fail(r->e, CANOPY_ERR_TOO_MANY_VALUES,
                                    "attribute '%s' has more than %u %s values (cap)", attr,
                                    CANOPY_ATTR_MAX_VALUES, what);
                canopy_bytes *v = realloc(*ret, (*ret_n + cnt) * sizeof(*v));
                if (!v)
                        return CANOPY_ERR_NOMEM;
                *ret = v;
                for (size_t i = 0; i < cnt; i++) {
                        TRY(r_bytes(r, &v[*ret_n], "attribute value"));
                        (*ret_n)++;
                }
        }
}

static canopy_err dec_attr(struct rd *r, canopy_attr *a) {
        canopy_err err;
        TRY(r_str(r, &a->name, "attribute name"));
        TRY(r_bool(r, &a->binary));
        TRY(r_values(r, &a->values, &a->nvalues, a->name, "full"));
        TRY(r_bool(r, &a->delta));
        TRY(r_values(r, &a->added, &a->nadded, a->name, "added"));
        TRY(r_values(r, &a->removed, &a->nremoved, a->name, "removed"));
        return CANOPY_OK;
}

static canopy_err dec_change(struct rd *r, canopy_change_event *ev) {
        canopy_err err;
        int op;
        TRY(r_str(r, &ev->connector, "connector"));
        TRY(r_bytes(r, &ev->anchor, "anchor"));
        TRY(r_optstr(r, &ev->object_class, "object_class"));
        TRY(r_enum(r, CANOPY_OP_END_OF_SCAN + 1, &op, "op"));
        ev->op = (canopy_op)op;
        TRY(r_optstr(r, &ev->dn, "dn"));
        TRY(r_optstr(r, &ev->prev_dn, "prev_dn"));
        TRY(r_bool(r, &ev->complete));
        size_t cnt;
        for (;;) {
                /* an attribute takes at least 6 bytes */
                TRY(r_block(r, 6, &cnt, "attrs"));
                if (!cnt)
                        break;
                if (ev->nattrs + cnt > CANOPY_EVENT_MAX_ATTRS)
                        return fail(r->e, CANOPY_ERR_LIMIT, "ChangeEvent has more than %u attributes (cap)",
                                    CANOPY_EVENT_MAX_ATTRS);
                canopy_attr *a = realloc(ev->attrs, (ev->nattrs + cnt) * sizeof(*a));
                if (!a)
                        return CANOPY_ERR_NOMEM;
                ev->attrs = a;
                for (size_t i = 0; i < cnt; i++) {
                        memset(&a[ev->nattrs], 0, sizeof(*a));
                        ev->nattrs++;
                        TRY(dec_attr(r, &a[ev->nattrs - 1]));
                }
        }
        TRY(r_optstr(r, &ev->position, "position"));
        TRY(r_long(r, &ev->source_ts_ms));
        TRY(r_optstr(r, &ev->producer_id, "producer_id"));
        TRY(r_long(r, &ev->seq));
        TRY(r_optstr(r, &ev->scan_id, "scan_id"));
        TRY(r_int(r, &ev->chunk));
        TRY(r_int(r, &ev->nchunks));
        return CANOPY_OK;
}

static canopy_err dec_mv(struct rd *r, canopy_mv_event *mv) {
        canopy_err err;
        int reason;
        TRY(r_str(r, &mv->mv_id, "mv_id"));
        TRY(r_str(r, &mv->object_type, "object_type"));
        size_t cnt;
        for (;;) {
                TRY(r_block(r, 2, &cnt, "contribs"));
                if (!cnt)
                        break;
                if (mv->ncontribs + cnt > CANOPY_EVENT_MAX_ATTRS)
                        return fail(r->e, CANOPY_ERR_LIMIT, "MvEvent has more than %u contributors (cap)",
                                    CANOPY_EVENT_MAX_ATTRS);
                canopy_mv_contrib *c = realloc(mv->contribs, (mv->ncontribs + cnt) * sizeof(*c));
                if (!c)
                        return CANOPY_ERR_NOMEM;
                mv->contribs = c;
                for (size_t i = 0; i < cnt; i++) {
                        canopy_mv_contrib *x = &c[mv->ncontribs++];
                        memset(x, 0, sizeof(*x));
                        TRY(r_str(r, &x->connector, "contributor connector"));
                        TRY(r_bytes(r, &x->anchor, "contributor anchor"));
                }
        }
        TRY(r_enum(r, CANOPY_MV_REPLAY + 1, &reason, "reason"));
        mv->reason = (canopy_mv_reason)reason;
        TRY(r_optstr(r, &mv->cause_connector, "cause_connector"));
        TRY(r_long(r, &mv->ts_ms));
        TRY(r_long(r, &mv->source_ts_ms));
        return CANOPY_OK;
}

static canopy_err dec_export(struct rd *r, canopy_export_record *er) {
        canopy_err err;
        int op, res;
        TRY(r_str(r, &er->mv_id, "mv_id"));
        TRY(r_optstr(r, &er->entra_id, "entra_id"));
        TRY(r_str(r, &er->object_type, "object_type"));
        TRY(r_enum(r, CANOPY_EXP_NOOP + 1, &op, "op"));
        er->op = (canopy_export_op)op;
        size_t cnt;
        for (;;) {
                TRY(r_block(r, 1, &cnt, "changed"));
                if (!cnt)
                        break;
                if (er->nchanged + cnt > CANOPY_EVENT_MAX_ATTRS)
                        return fail(r->e, CANOPY_ERR_LIMIT, "ExportRecord has more than %u changed (cap)",
                                    CANOPY_EVENT_MAX_ATTRS);
                char **c = realloc(er->changed, (er->nchanged + cnt) * sizeof(*c));
                if (!c)
                        return CANOPY_ERR_NOMEM;
                er->changed = c;
                for (size_t i = 0; i < cnt; i++) {
                        c[er->nchanged] = NULL;
                        er->nchanged++;
                        TRY(r_str(r, &c[er->nchanged - 1], "changed"));
                }
        }
        TRY(r_enum(r, CANOPY_RES_STAGED + 1, &res, "result"));
        er->result = (canopy_export_result)res;
        TRY(r_optstr(r, &er->request_id, "request_id"));
        TRY(r_optstr(r, &er->error, "error"));
        TRY(r_bool(r, &er->staged));
        TRY(r_long(r, &er->ts_ms));
        TRY(r_long(r, &er->source_ts_ms));
        return CANOPY_OK;
}

static canopy_err dec_run(struct rd *r, canopy_run_record *rr) {
        canopy_err err;
        int rt, status;
        TRY(r_str(r, &rr->connector, "connector"));
        TRY(r_str(r, &rr->object_type, "object_type"));
        TRY(r_enum(r, CANOPY_RUN_FULL + 1, &rt, "run_type"));
        rr->run_type = (canopy_run_type)rt;
        TRY(r_optstr(r, &rr->scan_id, "scan_id"));
        TRY(r_long(r, &rr->start_ms));
        TRY(r_long(r, &rr->end_ms));
        TRY(r_long(r, &rr->total));
        TRY(r_long(r, &rr->changed));
        TRY(r_long(r, &rr->deleted));
        TRY(r_long(r, &rr->filtered));
        TRY(r_long(r, &rr->errors));
        TRY(r_enum(r, CANOPY_RUN_STOPPED_QUARANTINE + 1, &status, "status"));
        rr->status = (canopy_run_status)status;
        TRY(r_long(r, &rr->ts_ms));
        return CANOPY_OK;
}

static canopy_err dec_control(struct rd *r, canopy_control_event *ce) {
        canopy_err err;
        int kind;
        TRY(r_enum(r, CANOPY_CTL_REJECT + 1, &kind, "kind"));
        ce->kind = (canopy_control_kind)kind;
        TRY(r_optstr(r, &ce->target, "target"));
        TRY(r_optstr(r, &ce->reason, "reason"));
        TRY(r_optstr(r, &ce->actor, "actor"));
        TRY(r_optstr(r, &ce->version, "version"));
        TRY(r_long(r, &ce->ts_ms));
        return CANOPY_OK;
}

static canopy_err dec_dead_letter(struct rd *r, canopy_dead_letter *dl) {
        canopy_err err;
        TRY(r_str(r, &dl->topic, "topic"));
        TRY(r_int(r, &dl->partition));
        TRY(r_long(r, &dl->offset));
        TRY(r_bytes(r, &dl->key, "key"));
        TRY(r_bytes(r, &dl->payload, "payload"));
        TRY(r_optstr(r, &dl->reason, "reason"));
        TRY(r_optstr(r, &dl->error_class, "error_class"));
        TRY(r_optstr(r, &dl->error_code, "error_code"));
        TRY(r_long(r, &dl->ts_ms));
        return CANOPY_OK;
}

/* ---- generic resolution ------------------------------------------------- */

static canopy_err skip(struct rd *r, const struct snode *n, int depth) {
        canopy_err err;
        int64_t v;
        size_t len;
        bool b;
        if (depth > MAX_DEPTH)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: nesting deeper than %d", MAX_DEPTH);
        switch (n->kind) {
        case SK_NULL:
                return CANOPY_OK;
        case SK_BOOL:
                return r_bool(r, &b);
        case SK_INT:
        case SK_LONG:
        case SK_ENUM:
                return r_long(r, &v);
        case SK_FLOAT:
        case SK_DOUBLE:
        case SK_FIXED:
                len = n->kind == SK_FLOAT ? 4 : n->kind == SK_DOUBLE ? 8 : n->size;
                if ((size_t)(r->end - r->p) < len)
                        return fail(r->e, CANOPY_ERR_TRUNCATED, "truncated: inside a %s", sk_names[n->kind]);
                r->p += len;
                return CANOPY_OK;
        case SK_BYTES:
        case SK_STRING:
                TRY(r_len(r, &len, sk_names[n->kind]));
                r->p += len;
                return CANOPY_OK;
        case SK_RECORD:
                for (size_t i = 0; i < n->nfields; i++)
                        TRY(skip(r, n->fields[i].type, depth + 1));
                return CANOPY_OK;
        case SK_UNION:
                TRY(r_long(r, &v));
                if (v < 0 || (uint64_t)v >= n->nbranches)
                        return fail(r->e, CANOPY_ERR_DECODE, "corrupt: union branch %lld", (long long)v);
                return skip(r, n->branches[v], depth + 1);
        case SK_ARRAY:
        case SK_MAP:
                for (;;) {
                        size_t cnt;
                        TRY(r_block(r, n->items->kind == SK_NULL && n->kind == SK_ARRAY ? 0 : 1, &cnt,
                                    sk_names[n->kind]));
                        if (!cnt)
                                return CANOPY_OK;
                        if (cnt > GENERIC_MAX_ITEMS)
                                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: block of %zu items", cnt);
                        for (size_t i = 0; i < cnt; i++) {
                                if (n->kind == SK_MAP) {
                                        TRY(r_len(r, &len, "map key"));
                                        r->p += len;
                                }
                                TRY(skip(r, n->items, depth + 1));
                        }
                }
        }
        return fail(r->e, CANOPY_ERR_DECODE, "bad schema node");
}

static void w_float(struct wr *w, float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        w_raw(w, b, 4);
}

static void w_double(struct wr *w, double d) {
        uint64_t u;
        memcpy(&u, &d, 8);
        uint8_t b[8];
        for (int i = 0; i < 8; i++)
                b[i] = (uint8_t)(u >> (8 * i));
        w_raw(w, b, 8);
}

static int names_match(const struct snode *a, const struct snode *b) {
        return strcmp(a->fullname, b->fullname) == 0 || strcmp(a->shortname, b->shortname) == 0;
}

/* Can data of writer type w be read as reader type r (unions excluded)? */
static int readable_as(const struct snode *w, const struct snode *r, int exact) {
        if (w->kind == r->kind) {
                if (w->kind == SK_RECORD || w->kind == SK_ENUM || w->kind == SK_FIXED)
                        return names_match(w, r);
                return 1;
        }
        if (exact)
                return 0;
        switch (w->kind) {
        case SK_INT:
                return r->kind == SK_LONG || r->kind == SK_FLOAT || r->kind == SK_DOUBLE;
        case SK_LONG:
                return r->kind == SK_FLOAT || r->kind == SK_DOUBLE;
        case SK_FLOAT:
                return r->kind == SK_DOUBLE;
        case SK_STRING:
                return r->kind == SK_BYTES;
        case SK_BYTES:
                return r->kind == SK_STRING;
        default:
                return 0;
        }
}

/* Encode a JSON default value as reader type n. */
static canopy_err w_default(struct wr *w, const struct snode *n, json_t *v, int depth, struct ectx *e) {
        if (depth > MAX_DEPTH)
                return fail(e, CANOPY_ERR_DECODE, "default nested too deep");
        switch (n->kind) {
        case SK_NULL:
                if (!json_is_null(v))
                        break;
                return CANOPY_OK;
        case SK_BOOL:
                if (!json_is_boolean(v))
                        break;
                w_bool(w, json_is_true(v));
                return CANOPY_OK;
        case SK_INT:
        case SK_LONG:
                if (!json_is_integer(v))
                        break;
                w_long(w, (int64_t)json_integer_value(v));
                return CANOPY_OK;
        case SK_FLOAT:
        case SK_DOUBLE:
                if (!json_is_number(v))
                        break;
                if (n->kind == SK_FLOAT)
                        w_float(w, (float)json_number_value(v));
                else
                        w_double(w, json_number_value(v));
                return CANOPY_OK;
        case SK_STRING:
                if (!json_is_string(v))
                        break;
                w_blob(w, json_string_value(v), json_string_length(v));
                return CANOPY_OK;
        case SK_BYTES:
        case SK_FIXED: {
                /* Avro JSON: bytes are code points 0-255 of the string. */
                if (!json_is_string(v))
                        break;
                const unsigned char *s = (const unsigned char *)json_string_value(v);
                size_t sl = json_string_length(v), n8 = 0;
                uint8_t *tmp = malloc(sl + 1);
                if (!tmp)
                        return CANOPY_ERR_NOMEM;
                for (size_t i = 0; i < sl; i++) {
                        if (s[i] < 0x80)
                                tmp[n8++] = s[i];
                        else if ((s[i] & 0xe0) == 0xc0 && i + 1 < sl && s[i] <= 0xc3)
                                tmp[n8++] = (uint8_t)(((s[i] & 0x1f) << 6) | (s[i + 1] & 0x3f)), i++;
                        else {
                                free(tmp);
                                return fail(e, CANOPY_ERR_DECODE, "bytes default has a code point above 255");
                        }
                }
                if (n->kind == SK_FIXED && n8 != n->size) {
                        free(tmp);
                        break;
                }
                if (n->kind == SK_BYTES)
                        w_blob(w, tmp, n8);
                else
                        w_raw(w, tmp, n8);
                free(tmp);
                return CANOPY_OK;
        }
        case SK_ENUM:
                for (size_t i = 0; json_is_string(v) && i < n->nsymbols; i++)
                        if (strcmp(n->symbols[i], json_string_value(v)) == 0) {
                                w_long(w, (int64_t)i);
                                return CANOPY_OK;
                        }
                break;
        case SK_ARRAY:
        case SK_MAP: {
                canopy_err err;
                if (n->kind == SK_ARRAY ? !json_is_array(v) : !json_is_object(v))
                        break;
                size_t cnt = n->kind == SK_ARRAY ? json_array_size(v) : json_object_size(v);
                if (cnt) {
                        w_long(w, (int64_t)cnt);
                        if (n->kind == SK_ARRAY) {
                                for (size_t i = 0; i < cnt; i++)
                                        TRY(w_default(w, n->items, json_array_get(v, i), depth + 1, e));
                        } else {
                                const char *k;
                                json_t *x;
                                json_object_foreach(v, k, x) {
                                        w_str(w, k);
                                        TRY(w_default(w, n->items, x, depth + 1, e));
                                }
                        }
                }
                w_long(w, 0);
                return CANOPY_OK;
        }
        case SK_RECORD: {
                canopy_err err;
                if (!json_is_object(v))
                        break;
                for (size_t i = 0; i < n->nfields; i++) {
                        json_t *x = json_object_get(v, n->fields[i].name);
                        if (!x)
                                x = n->fields[i].defval;
                        if (!x)
                                return fail(e, CANOPY_ERR_DECODE, "default of %s lacks field %s", n->fullname,
                                            n->fields[i].name);
                        TRY(w_default(w, n->fields[i].type, x, depth + 1, e));
                }
                return CANOPY_OK;
        }
        case SK_UNION:
                /* The default of a union is for its first branch. */
                w_long(w, 0);
                return w_default(w, n->branches[0], v, depth + 1, e);
        }
        return fail(e, CANOPY_ERR_DECODE, "default value does not match type %s", sk_names[n->kind]);
}

/* Read data of writer type wn and write it as reader type rn. */
static canopy_err resolve(struct rd *r, const struct snode *wn, const struct snode *rn, struct wr *w, int depth) {
        canopy_err err;
        int64_t v;
        if (depth > MAX_DEPTH)
                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: nesting deeper than %d", MAX_DEPTH);
        if (wn->kind == SK_UNION) {
                TRY(r_long(r, &v));
                if (v < 0 || (uint64_t)v >= wn->nbranches)
                        return fail(r->e, CANOPY_ERR_DECODE, "corrupt: union branch %lld", (long long)v);
                return resolve(r, wn->branches[v], rn, w, depth + 1);
        }
        if (rn->kind == SK_UNION) {
                for (int exact = 1; exact >= 0; exact--)
                        for (size_t i = 0; i < rn->nbranches; i++)
                                if (readable_as(wn, rn->branches[i], exact)) {
                                        w_long(w, (int64_t)i);
                                        return resolve(r, wn, rn->branches[i], w, depth + 1);
                                }
                return fail(r->e, CANOPY_ERR_DECODE, "writer %s matches no branch of the reader union",
                            sk_names[wn->kind]);
        }
        if (!readable_as(wn, rn, 0))
                return fail(r->e, CANOPY_ERR_DECODE, "writer type %s%s%s cannot be read as %s%s%s",
                            sk_names[wn->kind], wn->fullname ? " " : "", wn->fullname ? wn->fullname : "",
                            sk_names[rn->kind], rn->fullname ? " " : "", rn->fullname ? rn->fullname : "");
        switch (wn->kind) {
        case SK_NULL:
                return CANOPY_OK;
        case SK_BOOL: {
                bool b;
                TRY(r_bool(r, &b));
                w_bool(w, b);
                return CANOPY_OK;
        }
        case SK_INT:
        case SK_LONG:
                TRY(r_long(r, &v));
                if (wn->kind == SK_INT && (v < INT32_MIN || v > INT32_MAX))
                        return fail(r->e, CANOPY_ERR_DECODE, "corrupt: int out of range");
                if (rn->kind == SK_FLOAT)
                        w_float(w, (float)v);
                else if (rn->kind == SK_DOUBLE)
                        w_double(w, (double)v);
                else
                        w_long(w, v);
                return CANOPY_OK;
        case SK_FLOAT:
        case SK_DOUBLE:
        case SK_FIXED: {
                size_t len = wn->kind == SK_FLOAT ? 4 : wn->kind == SK_DOUBLE ? 8 : wn->size;
                if ((size_t)(r->end - r->p) < len)
                        return fail(r->e, CANOPY_ERR_TRUNCATED, "truncated: inside a %s", sk_names[wn->kind]);
                if (wn->kind == SK_FIXED && wn->size != rn->size)
                        return fail(r->e, CANOPY_ERR_DECODE, "fixed %s size differs", wn->fullname);
                if (wn->kind == SK_FLOAT && rn->kind == SK_DOUBLE) {
                        uint32_t u = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
                                     (uint32_t)r->p[3] << 24;
                        float f;
                        memcpy(&f, &u, 4);
                        w_double(w, f);
                } else {
                        w_raw(w, r->p, len);
                }
                r->p += len;
                return CANOPY_OK;
        }
        case SK_BYTES:
        case SK_STRING: {
                size_t len;
                TRY(r_len(r, &len, sk_names[wn->kind]));
                w_blob(w, r->p, len);
                r->p += len;
                return CANOPY_OK;
        }
        case SK_ENUM: {
                int idx;
                TRY(r_enum(r, (int)wn->nsymbols, &idx, wn->fullname));
                const char *sym = wn->symbols[idx];
                for (size_t i = 0; i < rn->nsymbols; i++)
                        if (strcmp(rn->symbols[i], sym) == 0) {
                                w_long(w, (int64_t)i);
                                return CANOPY_OK;
                        }
                if (rn->enum_default >= 0) {
                        w_long(w, rn->enum_default);
                        return CANOPY_OK;
                }
                return fail(r->e, CANOPY_ERR_DECODE, "enum %s: symbol %s unknown to this reader", rn->fullname,
                            sym);
        }
        case SK_ARRAY:
        case SK_MAP:
                for (;;) {
                        size_t cnt, len;
                        TRY(r_block(r, wn->items->kind == SK_NULL && wn->kind == SK_ARRAY ? 0 : 1, &cnt,
                                    sk_names[wn->kind]));
                        if (cnt > GENERIC_MAX_ITEMS)
                                return fail(r->e, CANOPY_ERR_DECODE, "corrupt: block of %zu items", cnt);
                        w_long(w, (int64_t)cnt);
                        if (!cnt)
                                return CANOPY_OK;
                        for (size_t i = 0; i < cnt; i++) {
                                if (wn->kind == SK_MAP) {
                                        TRY(r_len(r, &len, "map key"));
                                        w_blob(w, r->p, len);
                                        r->p += len;
                                }
                                TRY(resolve(r, wn->items, rn->items, w, depth + 1));
                        }
                }
        case SK_RECORD: {
                /* Field order may differ: find each writer field's bytes
                 * first, then write the reader's fields in reader order. */
                struct slice {
                        const uint8_t *p, *end;
                } stack[32], *sl = stack;
                if (wn->nfields > 32 && !(sl = malloc(wn->nfields * sizeof(*sl))))
                        return CANOPY_ERR_NOMEM;
                for (size_t i = 0; i < wn->nfields; i++) {
                        sl[i].p = r->p;
                        if ((err = skip(r, wn->fields[i].type, depth + 1)))
                                goto rec_out;
                        sl[i].end = r->p;
                }
                for (size_t j = 0; j < rn->nfields; j++) {
                        const struct sfield *rf = &rn->fields[j];
                        size_t i;
                        for (i = 0; i < wn->nfields; i++)
                                if (strcmp(wn->fields[i].name, rf->name) == 0)
                                        break;
                        if (i < wn->nfields) {
                                struct rd sub = {sl[i].p, sl[i].end, r->e};
                                if ((err = resolve(&sub, wn->fields[i].type, rf->type, w, depth + 1)))
                                        goto rec_out;
                        } else if (rf->defval) {
                                if ((err = w_default(w, rf->type, rf->defval, depth + 1, r->e)))
                                        goto rec_out;
                        } else {
                                err = fail(r->e, CANOPY_ERR_DECODE,
                                           "field %s.%s is not in the writer schema and has no default",
                                           rn->shortname, rf->name);
                                goto rec_out;
                        }
                }
                err = CANOPY_OK;
        rec_out:
                if (sl != stack)
                        free(sl);
                return err;
        }
        case SK_UNION:
                break;
        }
        return fail(r->e, CANOPY_ERR_DECODE, "bad schema node");
}

/* ---- decode entry points ------------------------------------------------ */

static canopy_err read_header(const uint8_t *p, size_t len, uint64_t *fp, struct ectx *e) {
        if (len >= 1 && p[0] != CANOPY_AVRO_MAGIC0)
                return fail(e, CANOPY_ERR_DECODE, "not an Avro single-object payload (first byte 0x%02x)", p[0]);
        if (len >= 2 && p[1] != CANOPY_AVRO_MAGIC1)
                return fail(e, CANOPY_ERR_DECODE, "not an Avro single-object payload (marker 0x%02x%02x)", p[0],
                            p[1]);
        if (len < CANOPY_AVRO_HEADER_LEN)
                return fail(e, CANOPY_ERR_TRUNCATED, "truncated: %zu bytes, header needs %d", len,
                            CANOPY_AVRO_HEADER_LEN);
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v |= (uint64_t)p[2 + i] << (8 * i);
        *fp = v;
        return CANOPY_OK;
}

static canopy_err lookup_writer(const void *buf, size_t len, const struct reg_entry **ret, struct ectx *e) {
        uint64_t fp = 0;
        canopy_err err = reg_ready(e);
        if (err)
                return err;
        if (!buf && len)
                return CANOPY_ERR_INVALID_ARG;
        if ((err = read_header(buf, len, &fp, e)))
                return err;
        const struct reg_entry *re = reg_find(fp);
        if (!re)
                return fail(e, CANOPY_ERR_UNKNOWN_SCHEMA, "unknown writer schema fingerprint %016llx",
                            (unsigned long long)fp);
        *ret = re;
        return CANOPY_OK;
}

canopy_err canopy_avro_peek(const void *buf, size_t len, canopy_record *ret_record, int *ret_version) {
        const struct reg_entry *re;
        canopy_err err = lookup_writer(buf, len, &re, NULL);
        if (err)
                return err;
        if (ret_record)
                *ret_record = re->rec;
        if (ret_version)
                *ret_version = re->version;
        return CANOPY_OK;
}

typedef canopy_err (*dec_fn)(struct rd *, void *);

/* Common decode: header, size cap, writer look-up, resolution of other
 * versions into the current one, typed decode, trailing-bytes check. */
static canopy_err decode_common(const void *buf, size_t len, canopy_record rec, dec_fn fn, void *obj,
                                void (*freefn)(void *), struct ectx *e) {
        const struct reg_entry *re;
        canopy_err err;
        struct wr tmp = {0};
        if (len > CANOPY_EVENT_MAX_BYTES)
                return fail(e, CANOPY_ERR_TOO_LARGE, "payload of %zu bytes exceeds the cap of %u bytes", len,
                            CANOPY_EVENT_MAX_BYTES);
        if ((err = lookup_writer(buf, len, &re, e)))
                return err;
        if (re->rec != rec)
                return fail(e, CANOPY_ERR_DECODE, "payload is a %s, not a %s", rec_names[re->rec] + 17,
                            rec_names[rec] + 17);
        const uint8_t *body = (const uint8_t *)buf + CANOPY_AVRO_HEADER_LEN;
        struct rd r = {body, (const uint8_t *)buf + len, e};
        if (re->s != reg.current[rec]) {
                tmp.grow = 1;
                if ((err = resolve(&r, re->s->root, reg.current[rec]->root, &tmp, 0)))
                        goto out;
                if (tmp.oom) {
                        err = CANOPY_ERR_NOMEM;
                        goto out;
                }
                if (r.p != r.end) {
                        err = fail(e, CANOPY_ERR_DECODE, "corrupt: %zu trailing bytes", (size_t)(r.end - r.p));
                        goto out;
                }
                r.p = tmp.buf;
                r.end = tmp.buf + tmp.len;
        }
        if ((err = fn(&r, obj)))
                goto out;
        if (r.p != r.end)
                err = fail(e, CANOPY_ERR_DECODE, "corrupt: %zu trailing bytes", (size_t)(r.end - r.p));
out:
        free(tmp.buf);
        if (err)
                freefn(obj);
        return err;
}

#define DECODE_ENTRY(name, type, rec, decfn, freefnx)                                                      \
        static canopy_err decfn##_v(struct rd *r, void *o) {                                               \
                return decfn(r, o);                                                                        \
        }                                                                                                  \
        static void freefnx##_v(void *o) {                                                                 \
                freefnx(o);                                                                                \
        }                                                                                                  \
        canopy_err name(const void *buf, size_t len, type *ret, char *errbuf, size_t errlen) {             \
                struct ectx e = {errbuf, errlen};                                                          \
                if (!ret)                                                                                  \
                        return CANOPY_ERR_INVALID_ARG;                                                     \
                memset(ret, 0, sizeof(*ret));                                                              \
                return decode_common(buf, len, rec, decfn##_v, ret, freefnx##_v, &e);                      \
        }

DECODE_ENTRY(canopy_avro_decode_change, canopy_change_event, CANOPY_REC_CHANGE, dec_change, canopy_change_event_free)
DECODE_ENTRY(canopy_avro_decode_mv, canopy_mv_event, CANOPY_REC_MV, dec_mv, canopy_mv_event_free)
DECODE_ENTRY(canopy_avro_decode_export, canopy_export_record, CANOPY_REC_EXPORT, dec_export,
             canopy_export_record_free)
DECODE_ENTRY(canopy_avro_decode_control, canopy_control_event, CANOPY_REC_CONTROL, dec_control,
             canopy_control_event_free)
DECODE_ENTRY(canopy_avro_decode_dead_letter, canopy_dead_letter, CANOPY_REC_DEAD_LETTER, dec_dead_letter,
             canopy_dead_letter_free)
DECODE_ENTRY(canopy_avro_decode_run, canopy_run_record, CANOPY_REC_RUN, dec_run, canopy_run_record_free)

/* ---- resolve / frame ---------------------------------------------------- */

canopy_err canopy_avro_resolve(const void *buf, size_t len, const char *reader_json, canopy_bytes *ret,
                               char *errbuf, size_t errlen) {
        struct ectx e = {errbuf, errlen};
        const struct reg_entry *re;
        struct schema *rs = NULL;
        struct wr w = {.grow = 1};
        uint64_t rfp;
        canopy_err err;
        if (!reader_json || !ret)
                return CANOPY_ERR_INVALID_ARG;
        if ((err = lookup_writer(buf, len, &re, &e)))
                return err;
        if ((err = schema_parse(reader_json, strlen(reader_json), &rs, &e)) || (err = schema_fp(rs, &rfp)))
                goto out;
        uint8_t hdr[CANOPY_AVRO_HEADER_LEN];
        put_header(hdr, rfp);
        w_raw(&w, hdr, sizeof(hdr));
        struct rd r = {(const uint8_t *)buf + CANOPY_AVRO_HEADER_LEN, (const uint8_t *)buf + len, &e};
        if ((err = resolve(&r, re->s->root, rs->root, &w, 0)))
                goto out;
        if (r.p != r.end) {
                err = fail(&e, CANOPY_ERR_DECODE, "corrupt: %zu trailing bytes", (size_t)(r.end - r.p));
                goto out;
        }
        if (w.oom) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        ret->data = w.buf;
        ret->len = w.len;
        w.buf = NULL;
out:
        free(w.buf);
        schema_free(rs);
        return err;
}

canopy_err canopy_avro_frame(const char *writer_json, const void *body, size_t len, canopy_bytes *ret,
                             char *errbuf, size_t errlen) {
        uint64_t fp;
        if (!writer_json || (!body && len) || !ret)
                return CANOPY_ERR_INVALID_ARG;
        canopy_err err = canopy_avro_fingerprint(writer_json, &fp, errbuf, errlen);
        if (err)
                return err;
        uint8_t *p = malloc(CANOPY_AVRO_HEADER_LEN + len);
        if (!p)
                return CANOPY_ERR_NOMEM;
        put_header(p, fp);
        if (len)
                memcpy(p + CANOPY_AVRO_HEADER_LEN, body, len);
        ret->data = p;
        ret->len = CANOPY_AVRO_HEADER_LEN + len;
        return CANOPY_OK;
}
