/* event.c: destructors and builders of the event model (canopy/event.h). */
#include "canopy/event.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void bytes_free(canopy_bytes *b) {
        free(b->data);
        b->data = NULL;
        b->len = 0;
}

static void bytes_array_free(canopy_bytes *v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i].data);
        free(v);
}

static void attr_free(canopy_attr *a) {
        free(a->name);
        bytes_array_free(a->values, a->nvalues);
        bytes_array_free(a->added, a->nadded);
        bytes_array_free(a->removed, a->nremoved);
}

void canopy_change_event_free(canopy_change_event *ev) {
        if (!ev)
                return;
        free(ev->connector);
        bytes_free(&ev->anchor);
        free(ev->object_class);
        free(ev->dn);
        free(ev->prev_dn);
        for (size_t i = 0; i < ev->nattrs; i++)
                attr_free(&ev->attrs[i]);
        free(ev->attrs);
        free(ev->position);
        free(ev->producer_id);
        free(ev->scan_id);
        memset(ev, 0, sizeof(*ev));
}

void canopy_mv_event_free(canopy_mv_event *mv) {
        if (!mv)
                return;
        free(mv->mv_id);
        free(mv->object_type);
        for (size_t i = 0; i < mv->ncontribs; i++) {
                free(mv->contribs[i].connector);
                free(mv->contribs[i].anchor.data);
        }
        free(mv->contribs);
        free(mv->cause_connector);
        memset(mv, 0, sizeof(*mv));
}

void canopy_run_record_free(canopy_run_record *rr) {
        if (!rr)
                return;
        free(rr->connector);
        free(rr->object_type);
        free(rr->scan_id);
        memset(rr, 0, sizeof(*rr));
}

void canopy_export_record_free(canopy_export_record *er) {
        if (!er)
                return;
        free(er->mv_id);
        free(er->entra_id);
        free(er->object_type);
        for (size_t i = 0; i < er->nchanged; i++)
                free(er->changed[i]);
        free(er->changed);
        free(er->request_id);
        free(er->error);
        memset(er, 0, sizeof(*er));
}

void canopy_control_event_free(canopy_control_event *ce) {
        if (!ce)
                return;
        free(ce->target);
        free(ce->reason);
        free(ce->actor);
        free(ce->version);
        memset(ce, 0, sizeof(*ce));
}

void canopy_dead_letter_free(canopy_dead_letter *dl) {
        if (!dl)
                return;
        free(dl->topic);
        bytes_free(&dl->key);
        bytes_free(&dl->payload);
        free(dl->reason);
        free(dl->error_class);
        free(dl->error_code);
        memset(dl, 0, sizeof(*dl));
}

canopy_err canopy_bytes_set(canopy_bytes *b, const void *data, size_t len) {
        if (!b || (!data && len))
                return CANOPY_ERR_INVALID_ARG;
        /* One extra NUL byte so that textual values can be used as C strings. */
        uint8_t *p = malloc(len + 1);
        if (!p)
                return CANOPY_ERR_NOMEM;
        if (len)
                memcpy(p, data, len);
        p[len] = 0;
        free(b->data);
        b->data = p;
        b->len = len;
        return CANOPY_OK;
}

canopy_attr *canopy_change_event_add_attr(canopy_change_event *ev, const char *name, bool binary) {
        if (!ev || !name || ev->nattrs >= CANOPY_EVENT_MAX_ATTRS)
                return NULL;
        char *n = strdup(name);
        if (!n)
                return NULL;
        canopy_attr *a = realloc(ev->attrs, (ev->nattrs + 1) * sizeof(*a));
        if (!a) {
                free(n);
                return NULL;
        }
        ev->attrs = a;
        a = &ev->attrs[ev->nattrs++];
        memset(a, 0, sizeof(*a));
        a->name = n;
        a->binary = binary;
        return a;
}

/* Append one value to a bytes array. The array may come from the decoder
 * (exactly sized), so it is grown by one each time; realloc makes that cheap
 * and the cap bounds it. */
static canopy_err push_value(canopy_bytes **arr, size_t *n, const void *data, size_t len) {
        if (*n >= CANOPY_ATTR_MAX_VALUES)
                return CANOPY_ERR_TOO_MANY_VALUES;
        if (!data && len)
                return CANOPY_ERR_INVALID_ARG;
        canopy_bytes *v = realloc(*arr, (*n + 1) * sizeof(*v));
        if (!v)
                return CANOPY_ERR_NOMEM;
        *arr = v;
        canopy_bytes *slot = &(*arr)[*n];
        slot->data = NULL;
        slot->len = 0;
        canopy_err err = canopy_bytes_set(slot, data, len);
        if (err)
                return err;
        (*n)++;
        return CANOPY_OK;
}

canopy_err canopy_attr_add_value(canopy_attr *a, const void *data, size_t len) {
        if (!a)
                return CANOPY_ERR_INVALID_ARG;
        return push_value(&a->values, &a->nvalues, data, len);
}

canopy_err canopy_attr_add_delta(canopy_attr *a, bool added, const void *data, size_t len) {
        if (!a)
                return CANOPY_ERR_INVALID_ARG;
        a->delta = true;
        if (added)
                return push_value(&a->added, &a->nadded, data, len);
        return push_value(&a->removed, &a->nremoved, data, len);
}

const canopy_attr *canopy_change_event_attr(const canopy_change_event *ev, const char *name) {
        if (!ev || !name)
                return NULL;
        for (size_t i = 0; i < ev->nattrs; i++)
                if (ev->attrs[i].name && strcasecmp(ev->attrs[i].name, name) == 0)
                        return &ev->attrs[i];
        return NULL;
}

const char *canopy_op_name(canopy_op op) {
        switch (op) {
        case CANOPY_OP_ADD:
                return "add";
        case CANOPY_OP_MODIFY:
                return "modify";
        case CANOPY_OP_RENAME:
                return "rename";
        case CANOPY_OP_DELETE:
                return "delete";
        case CANOPY_OP_END_OF_SCAN:
                return "end_of_scan";
        }
        return "unknown";
}

canopy_err canopy_change_key(const char *connector, const canopy_bytes *anchor, canopy_bytes *ret) {
        if (!connector || !ret)
                return CANOPY_ERR_INVALID_ARG;
        size_t cl = strlen(connector);
        size_t al = anchor ? anchor->len : 0;
        uint8_t *p = malloc(cl + 1 + al + 1);
        if (!p)
                return CANOPY_ERR_NOMEM;
        memcpy(p, connector, cl + 1);
        if (al)
                memcpy(p + cl + 1, anchor->data, al);
        p[cl + 1 + al] = 0;
        ret->data = p;
        ret->len = cl + 1 + al;
        return CANOPY_OK;
}
