/* err.c: the error table. */
#include "canopy/err.h"

#include <stddef.h>

struct err_entry {
        canopy_err code;
        const char *name;
        canopy_err_class cls;
        const char *text;
};

static const struct err_entry err_table[] = {
#define X_(code, val, name, cls, text) {code, name, CANOPY_ERRCLASS_##cls, text},
        CANOPY_ERR_TABLE(X_)
#undef X_
};

static const struct err_entry *lookup(canopy_err err) {
        for (size_t i = 0; i < sizeof(err_table) / sizeof(err_table[0]); i++)
                if (err_table[i].code == err)
                        return &err_table[i];
        return NULL;
}

const char *canopy_err_name(canopy_err err) {
        const struct err_entry *e = lookup(err);
        return e ? e->name : "UNKNOWN";
}

const char *canopy_err_text(canopy_err err) {
        const struct err_entry *e = lookup(err);
        return e ? e->text : "unknown error";
}

canopy_err_class canopy_err_class_of(canopy_err err) {
        const struct err_entry *e = lookup(err);
        return e ? e->cls : CANOPY_ERRCLASS_FATAL;
}

const char *canopy_err_class_name(canopy_err_class cls) {
        switch (cls) {
        case CANOPY_ERRCLASS_RETRIABLE: return "retriable";
        case CANOPY_ERRCLASS_PERMANENT: return "permanent";
        case CANOPY_ERRCLASS_FATAL: return "fatal";
        default: return "none";
        }
}
