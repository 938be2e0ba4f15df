/* canopy-confdoc: write the configuration reference (docs/CONFIG.md) from
 * the tables in canopy_conf_all_tables, after checking each table.
 *
 * Usage: canopy-confdoc [-o FILE]     (default: standard output)
 * Exit status: 0 written, 1 a table is invalid or the output failed.
 */
#include <stdio.h>
#include <string.h>

#include "canopy/config.h"

static void usage(FILE *f) {
        fputs("usage: canopy-confdoc [-o FILE]\n"
              "Writes the Markdown configuration reference (docs/CONFIG.md) from the\n"
              "configuration tables compiled into libcanopy.\n",
              f);
}

int main(int argc, char **argv) {
        const char *outpath = NULL;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "-o") && i + 1 < argc) {
                        outpath = argv[++i];
                } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
                        usage(stdout);
                        return 0;
                } else {
                        usage(stderr);
                        return 1;
                }
        }
        size_t n = 0;
        int bad = 0;
        for (; canopy_conf_all_tables[n]; n++) {
                char err[512];
                if (canopy_conf_check(canopy_conf_all_tables[n], err, sizeof(err))) {
                        fprintf(stderr, "canopy-confdoc: invalid table: %s\n", err);
                        bad = 1;
                }
        }
        if (bad)
                return 1;
        /* Write to a temporary file first, so that a failure never leaves a
         * truncated reference behind. */
        char tmp[4096];
        FILE *f = stdout;
        if (outpath) {
                snprintf(tmp, sizeof(tmp), "%s.tmp", outpath);
                f = fopen(tmp, "w");
                if (!f) {
                        perror(tmp);
                        return 1;
                }
        }
        canopy_err err = canopy_conf_write_doc(f, canopy_conf_all_tables, n);
        if (outpath) {
                if (fclose(f) != 0 && !err)
                        err = CANOPY_ERR_IO;
                if (!err && rename(tmp, outpath) != 0) {
                        perror(outpath);
                        return 1;
                }
                if (err)
                        remove(tmp);
        } else if (fflush(stdout) != 0) {
                err = CANOPY_ERR_IO;
        }
        if (err) {
                fprintf(stderr, "canopy-confdoc: %s\n", canopy_err_text(err));
                return 1;
        }
        return 0;
}
