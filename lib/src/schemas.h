/* schemas.h (private): the schema texts embedded by schemas.c. */
#ifndef CANOPY_SCHEMAS_H
#define CANOPY_SCHEMAS_H

#include <stddef.h>

#include "canopy/avro.h"

struct canopy_schema_src {
        canopy_record rec;
        int version;
        int current;      /* 1: the version encoders write */
        const char *file; /* path under schemas/, e.g. "ChangeEvent.avsc" */
        const char *json;
};

extern const struct canopy_schema_src canopy_schema_srcs[];
extern const size_t canopy_schema_nsrcs;

#endif
