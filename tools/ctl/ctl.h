/* ctl.h: canopyctl subcommand interface.
 *
 * A subcommand is a file tools/ctl/cmd_<name>.c that defines
 *     const canopyctl_cmd canopyctl_cmd_<name> = {"<name>", "summary", run, usage};
 * The build generates the table from the file names. run() gets argv
 * starting at the subcommand's own arguments and returns the exit status
 * (0 ok, 1 failure or "not ok" answer, 2 usage error).
 */
#ifndef CANOPYCTL_H
#define CANOPYCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/conf_worker.h"
#include "canopy/event.h"
#include "canopy/expr.h"

typedef struct canopyctl_cmd {
        const char *name;
        const char *summary;
        int (*run)(int argc, char **argv);
        void (*usage)(void);
} canopyctl_cmd;

/* A directory object read from --attr, a JSON or an LDIF file (ctl_object.c). */
typedef struct ctl_object {
        char *dn;
        canopy_attr *attrs;
        size_t nattrs;
        canopy_bytes anchor;
        canopy_attr_array holder;
} ctl_object;

/* Add one value to attribute `name` (created when missing). 0 on success. */
int ctl_object_add(ctl_object *o, const char *name, const void *data, size_t len, bool binary);
/* Parse "name=value" into the object. */
int ctl_object_add_arg(ctl_object *o, const char *arg);
/* Load the first entry of an LDIF file, or a JSON object ({"dn": ..., "attr":
 * "v" | ["v", ...]}). Prints the error and returns non-zero on failure. */
int ctl_object_load(ctl_object *o, const char *path, bool ldif);
void ctl_object_free(ctl_object *o);
/* A view on the object (valid while o lives). */
void ctl_object_view(ctl_object *o, canopy_obj_view *v, const char *connector, const char *type);
/* Load the workers' configuration file (path, then the --set overrides) into
 * *conf (zeroed first). On error prints "canopyctl CMD: file:line:col: ..."
 * and returns 2 (usage error); 0 when loaded (canopy_conf_free it). */
int ctl_worker_conf_load(const char *cmd, const char *path, const char *const *sets, size_t nsets,
                         canopy_worker_conf *conf);
/* Wall clock, epoch milliseconds. */
int64_t ctl_now_ms(void);
/* Print a value: text for scalars, a JSON array for multi-valued. */
void ctl_print_value(const canopy_value *v, canopy_arena *a);

#endif
