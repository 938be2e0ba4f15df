/* conf_tables.c: the list of every service's configuration table.
 *
 * To register a table `const canopy_conf_table canopy_conf_<name>` (defined in
 * lib/src/conf_<name>.c), add ONE line `X(<name>) \` below, keeping the list
 * sorted, then run `make docs` to regenerate docs/CONFIG.md. The unit test
 * unit.test_config checks that every conf_*.c table is listed here, and
 * unit.confdoc_fresh that docs/CONFIG.md matches the tables.
 */
#include "canopy/config.h"

#define CANOPY_CONF_TABLES(X) \
        X(guard) \
        X(producer) \
        X(worker) \
        CANOPY_CONF_TABLES_END

#define CANOPY_CONF_TABLES_END
#define DECLARE_(name) extern const canopy_conf_table canopy_conf_##name;
#define ENTRY_(name) &canopy_conf_##name,

CANOPY_CONF_TABLES(DECLARE_)

const canopy_conf_table *const canopy_conf_all_tables[] = {CANOPY_CONF_TABLES(ENTRY_) NULL};
