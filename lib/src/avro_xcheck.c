/* avro_xcheck.c: ChangeEvent <-> Avro-C generic values (see avro_xcheck.h). */
#include "avro_xcheck.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                              \
        do {                                                                                               \
                int rc_ = (x);                                                                             \
                if (rc_)                                                                                   \
                        return rc_;                                                                        \
        } while (0)

static int set_str(avro_value_t *rec, const char *name, const char *s) {
        avro_value_t f;
        CK(avro_value_get_by_name(rec, name, &f, NULL));
        return avro_value_set_string_len(&f, s, strlen(s) + 1);
}

static int set_optstr(avro_value_t *rec, const char *name, const char *s) {
        avro_value_t f, b;
        CK(avro_value_get_by_name(rec, name, &f, NULL));
        if (!s) {
                CK(avro_value_set_branch(&f, 0, &b));
                return avro_value_set_null(&b);
        }
        CK(avro_value_set_branch(&f, 1, &b));
        return avro_value_set_string_len(&b, s, strlen(s) + 1);
}

static int set_values(avro_value_t *rec, const char *name, const canopy_bytes *v, size_t n) {
        avro_value_t arr, el;
        CK(avro_value_get_by_name(rec, name, &arr, NULL));
        for (size_t i = 0; i < n; i++) {
                CK(avro_value_append(&arr, &el, NULL));
                CK(avro_value_set_bytes(&el, v[i].data ? (void *)v[i].data : (void *)"", v[i].len));
        }
        return 0;
}

int canopy_xc_change_to_value(const canopy_change_event *ev, avro_value_t *rec) {
        avro_value_t f, attrs, a;
        CK(set_str(rec, "connector", ev->connector));
        CK(avro_value_get_by_name(rec, "anchor", &f, NULL));
        CK(avro_value_set_bytes(&f, ev->anchor.data ? (void *)ev->anchor.data : (void *)"", ev->anchor.len));
        CK(set_optstr(rec, "object_class", ev->object_class));
        CK(avro_value_get_by_name(rec, "op", &f, NULL));
        CK(avro_value_set_enum(&f, (int)ev->op));
        CK(set_optstr(rec, "dn", ev->dn));
        CK(set_optstr(rec, "prev_dn", ev->prev_dn));
        CK(avro_value_get_by_name(rec, "complete", &f, NULL));
        CK(avro_value_set_boolean(&f, ev->complete));
        CK(avro_value_get_by_name(rec, "attrs", &attrs, NULL));
        for (size_t i = 0; i < ev->nattrs; i++) {
                const canopy_attr *x = &ev->attrs[i];
                CK(avro_value_append(&attrs, &a, NULL));
                CK(set_str(&a, "name", x->name));
                CK(avro_value_get_by_name(&a, "binary", &f, NULL));
                CK(avro_value_set_boolean(&f, x->binary));
                CK(set_values(&a, "values", x->values, x->nvalues));
                CK(avro_value_get_by_name(&a, "delta", &f, NULL));
                CK(avro_value_set_boolean(&f, x->delta));
                CK(set_values(&a, "added", x->added, x->nadded));
                CK(set_values(&a, "removed", x->removed, x->nremoved));
        }
        CK(set_optstr(rec, "position", ev->position));
        CK(avro_value_get_by_name(rec, "source_ts_ms", &f, NULL));
        CK(avro_value_set_long(&f, ev->source_ts_ms));
        CK(set_optstr(rec, "producer_id", ev->producer_id));
        CK(avro_value_get_by_name(rec, "seq", &f, NULL));
        CK(avro_value_set_long(&f, ev->seq));
        CK(set_optstr(rec, "scan_id", ev->scan_id));
        CK(avro_value_get_by_name(rec, "chunk", &f, NULL));
        CK(avro_value_set_int(&f, ev->chunk));
        CK(avro_value_get_by_name(rec, "nchunks", &f, NULL));
        return avro_value_set_int(&f, ev->nchunks);
}

static int get_str(avro_value_t *rec, const char *name, char **ret) {
        avro_value_t f;
        const char *s;
        size_t sz;
        CK(avro_value_get_by_name(rec, name, &f, NULL));
        CK(avro_value_get_string(&f, &s, &sz));
        *ret = strdup(s);
        return *ret ? 0 : ENOMEM;
}

static int get_optstr(avro_value_t *rec, const char *name, char **ret) {
        avro_value_t f, b;
        int disc;
        const char *s;
        size_t sz;
        CK(avro_value_get_by_name(rec, name, &f, NULL));
        CK(avro_value_get_discriminant(&f, &disc));
        if (disc == 0) {
                *ret = NULL;
                return 0;
        }
        CK(avro_value_get_current_branch(&f, &b));
        CK(avro_value_get_string(&b, &s, &sz));
        *ret = strdup(s);
        return *ret ? 0 : ENOMEM;
}

static int get_values(avro_value_t *rec, const char *name, canopy_bytes **ret, size_t *ret_n) {
        avro_value_t arr, el;
        size_t n;
        CK(avro_value_get_by_name(rec, name, &arr, NULL));
        CK(avro_value_get_size(&arr, &n));
        *ret = n ? calloc(n, sizeof(**ret)) : NULL;
        if (n && !*ret)
                return ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const void *d;
                size_t l;
                CK(avro_value_get_by_index(&arr, i, &el, NULL));
                CK(avro_value_get_bytes(&el, &d, &l));
                CK(canopy_bytes_set(&(*ret)[i], d, l) ? ENOMEM : 0);
                *ret_n = i + 1;
        }
        return 0;
}

int canopy_xc_value_to_change(avro_value_t *rec, canopy_change_event *ev) {
        avro_value_t f, attrs, a;
        const void *d;
        size_t l, n;
        int iv;
        int32_t i32;
        memset(ev, 0, sizeof(*ev));
        CK(get_str(rec, "connector", &ev->connector));
        CK(avro_value_get_by_name(rec, "anchor", &f, NULL));
        CK(avro_value_get_bytes(&f, &d, &l));
        CK(canopy_bytes_set(&ev->anchor, d, l) ? ENOMEM : 0);
        CK(get_optstr(rec, "object_class", &ev->object_class));
        CK(avro_value_get_by_name(rec, "op", &f, NULL));
        CK(avro_value_get_enum(&f, &iv));
        ev->op = (canopy_op)iv;
        CK(get_optstr(rec, "dn", &ev->dn));
        CK(get_optstr(rec, "prev_dn", &ev->prev_dn));
        CK(avro_value_get_by_name(rec, "complete", &f, NULL));
        CK(avro_value_get_boolean(&f, &iv));
        ev->complete = iv;
        CK(avro_value_get_by_name(rec, "attrs", &attrs, NULL));
        CK(avro_value_get_size(&attrs, &n));
        for (size_t i = 0; i < n; i++) {
                char *name = NULL;
                CK(avro_value_get_by_index(&attrs, i, &a, NULL));
                CK(get_str(&a, "name", &name));
                CK(avro_value_get_by_name(&a, "binary", &f, NULL));
                CK(avro_value_get_boolean(&f, &iv));
                canopy_attr *x = canopy_change_event_add_attr(ev, name, iv);
                free(name);
                if (!x)
                        return ENOMEM;
                CK(get_values(&a, "values", &x->values, &x->nvalues));
                CK(avro_value_get_by_name(&a, "delta", &f, NULL));
                CK(avro_value_get_boolean(&f, &iv));
                x->delta = iv;
                CK(get_values(&a, "added", &x->added, &x->nadded));
                CK(get_values(&a, "removed", &x->removed, &x->nremoved));
        }
        CK(get_optstr(rec, "position", &ev->position));
        CK(avro_value_get_by_name(rec, "source_ts_ms", &f, NULL));
        CK(avro_value_get_long(&f, &ev->source_ts_ms));
        CK(get_optstr(rec, "producer_id", &ev->producer_id));
        CK(avro_value_get_by_name(rec, "seq", &f, NULL));
        CK(avro_value_get_long(&f, &ev->seq));
        CK(get_optstr(rec, "scan_id", &ev->scan_id));
        CK(avro_value_get_by_name(rec, "chunk", &f, NULL));
        CK(avro_value_get_int(&f, &i32));
        ev->chunk = i32;
        CK(avro_value_get_by_name(rec, "nchunks", &f, NULL));
        CK(avro_value_get_int(&f, &i32));
        ev->nchunks = i32;
        return 0;
}

int canopy_xc_write(avro_value_t *v, canopy_bytes *ret) {
        size_t sz;
        CK(avro_value_sizeof(v, &sz));
        char *buf = malloc(sz ? sz : 1);
        if (!buf)
                return ENOMEM;
        avro_writer_t w = avro_writer_memory(buf, (int64_t)sz);
        int rc = avro_value_write(w, v);
        avro_writer_free(w);
        if (rc) {
                free(buf);
                return rc;
        }
        ret->data = (uint8_t *)buf;
        ret->len = sz;
        return 0;
}

int canopy_xc_read(avro_value_t *v, const void *body, size_t len) {
        CK(avro_value_reset(v));
        avro_reader_t r = avro_reader_memory(body, (int64_t)len);
        int rc = avro_value_read(r, v);
        avro_reader_free(r);
        return rc;
}
