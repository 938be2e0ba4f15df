/* ctl_guard.h: `canopyctl guard ...` and `canopyctl history ...`, clients of
 * canopy-guard's admin API. Each returns the process exit status. */
#ifndef CANOPY_CTL_GUARD_H
#define CANOPY_CTL_GUARD_H

int ctl_guard_main(int argc, char **argv);   /* argv: the arguments after "guard" */
int ctl_history_main(int argc, char **argv); /* argv: the arguments after "history" */

#endif
