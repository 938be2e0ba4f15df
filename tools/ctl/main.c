/* canopyctl: Canopy's admin CLI. The subcommands are in cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "ctl_cmds.h"

static void usage(void)
{
        fprintf(stderr, "usage: canopyctl COMMAND [ARGS...]\n\ncommands:\n");
        for (size_t i = 0; canopyctl_cmds[i]; i++)
                fprintf(stderr, "  %-10s %s\n", canopyctl_cmds[i]->name, canopyctl_cmds[i]->summary);
        fprintf(stderr, "\n`canopyctl COMMAND --help` for a command's usage.\n");
}

int main(int argc, char **argv)
{
        if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
                usage();
                return argc < 2 ? 2 : 0;
        }
        for (size_t i = 0; canopyctl_cmds[i]; i++) {
                if (strcmp(canopyctl_cmds[i]->name, argv[1]) == 0) {
                        if (argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
                                canopyctl_cmds[i]->usage();
                                return 0;
                        }
                        return canopyctl_cmds[i]->run(argc - 2, argv + 2);
                }
        }
        fprintf(stderr, "canopyctl: unknown command '%s'\n", argv[1]);
        usage();
        return 2;
}
