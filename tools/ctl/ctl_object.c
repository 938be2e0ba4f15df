/* ctl_object.c: directory objects for canopyctl from --attr, JSON or LDIF. */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "canopy/config.h"
#include "ctl.h"

#define CTL_MAX_LINE (1024 * 1024)

int ctl_object_add(ctl_object *o, const char *name, const void *data, size_t len, bool binary)
{
        if (!strcasecmp(name, "dn") || !strcasecmp(name, "distinguishedName")) {
                free(o->dn);
                o->dn = strndup(data, len);
                if (!strcasecmp(name, "dn"))
                        return o->dn ? 0 : -1;
        }
        canopy_attr *a = NULL;
        for (size_t i = 0; i < o->nattrs; i++)
                if (!strcasecmp(o->attrs[i].name, name))
                        a = &o->attrs[i];
        if (!a) {
                canopy_attr *na = realloc(o->attrs, (o->nattrs + 1) * sizeof(*na));
                if (!na)
                        return -1;
                o->attrs = na;
                a = &na[o->nattrs++];
                memset(a, 0, sizeof(*a));
                a->name = strdup(name);
                if (!a->name)
                        return -1;
                for (char *p = a->name; *p; p++)
                        *p = (char)tolower((unsigned char)*p);
                a->binary = binary;
        }
        return canopy_attr_add_value(a, data, len) == CANOPY_OK ? 0 : -1;
}

int ctl_object_add_arg(ctl_object *o, const char *arg)
{
        const char *eq = strchr(arg, '=');
        if (!eq || eq == arg) {
                fprintf(stderr, "canopyctl: --attr wants name=value, got '%s'\n", arg);
                return -1;
        }
        char *name = strndup(arg, (size_t)(eq - arg));
        if (!name)
                return -1;
        int r = ctl_object_add(o, name, eq + 1, strlen(eq + 1), false);
        free(name);
        return r;
}

static int b64dec(const char *s, unsigned char *out, size_t *olen)
{
        static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        unsigned acc = 0;
        int bits = 0;
        size_t o = 0;
        for (; *s && *s != '='; s++) {
                if (isspace((unsigned char)*s))
                        continue;
                const char *p = strchr(tab, *s);
                if (!p)
                        return -1;
                acc = (acc << 6) | (unsigned)(p - tab);
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (unsigned char)(acc >> bits);
                }
        }
        *olen = o;
        return 0;
}

static bool looks_binary(const unsigned char *d, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (d[i] < 0x20 && d[i] != '\t' && d[i] != '\n' && d[i] != '\r')
                        return true;
        return false;
}

static int load_ldif(ctl_object *o, FILE *f, const char *path)
{
        char *line = NULL, *logical = NULL;
        size_t cap = 0, llen = 0;
        ssize_t n;
        bool started = false;
        int rc = 0;
        /* Join continuation lines, then handle each logical line. */
        for (;;) {
                n = getline(&line, &cap, f);
                bool eof = n < 0;
                if (!eof) {
                        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                                line[--n] = '\0';
                        if (n > CTL_MAX_LINE) {
                                fprintf(stderr, "%s: line too long\n", path);
                                rc = -1;
                                break;
                        }
                        if (line[0] == ' ' && logical) {
                                char *nl = realloc(logical, llen + (size_t)n);
                                if (!nl) {
                                        rc = -1;
                                        break;
                                }
                                logical = nl;
                                memcpy(logical + llen, line + 1, (size_t)n);
                                llen += (size_t)n - 1;
                                continue;
                        }
                }
                if (logical) {
                        char *colon = strchr(logical, ':');
                        if (logical[0] != '#' && colon) {
                                *colon = '\0';
                                char *val = colon + 1;
                                bool b64 = *val == ':';
                                if (b64)
                                        val++;
                                while (*val == ' ')
                                        val++;
                                const char *name = logical;
                                if (!strcasecmp(name, "version") || !strcasecmp(name, "changetype")) {
                                        /* ignored */
                                } else if (b64) {
                                        unsigned char *buf = malloc(strlen(val) + 1);
                                        size_t bl = 0;
                                        if (!buf || b64dec(val, buf, &bl)) {
                                                fprintf(stderr, "%s: bad base64 value of %s\n", path, name);
                                                free(buf);
                                                rc = -1;
                                                break;
                                        }
                                        rc = ctl_object_add(o, name, buf, bl, looks_binary(buf, bl));
                                        free(buf);
                                } else {
                                        rc = ctl_object_add(o, name, val, strlen(val), false);
                                }
                                started = true;
                        }
                        free(logical);
                        logical = NULL;
                }
                if (eof || rc)
                        break;
                if (n == 0) {
                        if (started)
                                break; /* first entry only */
                        continue;
                }
                logical = strdup(line);
                llen = (size_t)n;
                if (!logical) {
                        rc = -1;
                        break;
                }
        }
        free(logical);
        free(line);
        if (!rc && !started) {
                fprintf(stderr, "%s: no LDIF entry\n", path);
                rc = -1;
        }
        return rc;
}

static int add_json_value(ctl_object *o, const char *name, json_t *v)
{
        char tmp[64];
        if (json_is_string(v))
                return ctl_object_add(o, name, json_string_value(v), json_string_length(v), false);
        if (json_is_integer(v)) {
                snprintf(tmp, sizeof(tmp), "%lld", (long long)json_integer_value(v));
                return ctl_object_add(o, name, tmp, strlen(tmp), false);
        }
        if (json_is_boolean(v))
                return ctl_object_add(o, name, json_is_true(v) ? "TRUE" : "FALSE", json_is_true(v) ? 4 : 5, false);
        if (json_is_null(v))
                return 0;
        fprintf(stderr, "canopyctl: attribute %s: values must be strings, numbers or booleans\n", name);
        return -1;
}

int ctl_object_load(ctl_object *o, const char *path, bool ldif)
{
        FILE *f = fopen(path, "r");
        if (!f) {
                perror(path);
                return -1;
        }
        int rc;
        if (ldif) {
                rc = load_ldif(o, f, path);
                fclose(f);
                return rc;
        }
        json_error_t je;
        json_t *root = json_loadf(f, 0, &je);
        fclose(f);
        if (!root) {
                fprintf(stderr, "%s:%d:%d: %s\n", path, je.line, je.column, je.text);
                return -1;
        }
        if (!json_is_object(root)) {
                fprintf(stderr, "%s: the object must be a JSON object\n", path);
                json_decref(root);
                return -1;
        }
        rc = 0;
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v)
        {
                if (json_is_array(v)) {
                        size_t i;
                        json_t *item;
                        json_array_foreach(v, i, item) if (!rc) rc = add_json_value(o, key, item);
                } else {
                        rc = add_json_value(o, key, v);
                }
                if (rc)
                        break;
        }
        json_decref(root);
        return rc;
}

void ctl_object_free(ctl_object *o)
{
        for (size_t i = 0; i < o->nattrs; i++) {
                for (size_t k = 0; k < o->attrs[i].nvalues; k++)
                        free(o->attrs[i].values[k].data);
                free(o->attrs[i].values);
                free(o->attrs[i].name);
        }
        free(o->attrs);
        free(o->dn);
        memset(o, 0, sizeof(*o));
}

void ctl_object_view(ctl_object *o, canopy_obj_view *v, const char *connector, const char *type)
{
        canopy_obj_view_from_attrs(v, &o->holder, connector, o->dn, type, o->attrs, o->nattrs);
}

void ctl_print_value(const canopy_value *v, canopy_arena *a)
{
        if (v->type == CANOPY_V_NULL) {
                printf("(null)\n");
                return;
        }
        if (v->type != CANOPY_V_MULTI) {
                const char *t = canopy_value_to_text(v, "", a);
                printf("%s\n", t ? t : "");
                return;
        }
        json_t *arr = json_array();
        for (size_t i = 0; i < v->u.multi.n; i++) {
                const char *t = canopy_value_to_text(&v->u.multi.items[i], "", a);
                json_array_append_new(arr, json_string(t ? t : ""));
        }
        char *s = json_dumps(arr, JSON_ENSURE_ASCII);
        printf("%s\n", s ? s : "[]");
        free(s);
        json_decref(arr);
}

int64_t ctl_now_ms(void) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int ctl_worker_conf_load(const char *cmd, const char *path, const char *const *sets, size_t nsets,
                         canopy_worker_conf *conf) {
        char eb[1024];
        memset(conf, 0, sizeof(*conf));
        if (!canopy_conf_load(&canopy_conf_worker, conf, path, sets, nsets, eb, sizeof(eb)))
                return 0;
        fprintf(stderr, "canopyctl %s: %s\n", cmd, eb);
        return 2;
}
