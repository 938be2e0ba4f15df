/* cmd_history.c: `canopyctl history`, the guard's run history (cmd_guard.c). */
#include <stdio.h>

#include "ctl.h"
#include "ctl_guard.h"

static void history_usage(void) {
        printf("usage: canopyctl history [--url URL] [--token-file F] [--csv] [--connector ID]\n"
               "                         [--type user|group|contact] [--limit N] [--offset N]\n"
               "One line per run window (connector, object type): start, end, delta or full, total,\n"
               "changed, deleted, filtered, errors and status, newest first. --csv for RFC 4180 CSV.\n");
}

const canopyctl_cmd canopyctl_cmd_history = {"history", "run history per connector and object type (table or CSV)",
                                             ctl_history_main, history_usage};
