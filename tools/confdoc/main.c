/* canopy-confdoc: write the configuration reference (docs/CONFIG.md) from
 * the tables in canopy_conf_all_tables, after checking each table.
 *
 * Usage: canopy-confdoc [-o FILE]                    the reference (default: standard output)
 *        canopy-confdoc --example SERVICE [-o FILE]   a commented YAML file for one service
 * Exit status: 0 written, 1 a table is invalid or the output failed.
 */
#include <stdio.h>
#include <string.h>

#include "canopy/config.h"

static void usage(FILE *f) {
        fputs("usage: canopy-confdoc [-o FILE]\n"
              "       canopy-confdoc --example SERVICE [-o FILE]\n"
              "Writes the Markdown configuration reference (docs/CONFIG.md) from the\n"
              "configuration tables compiled into libcanopy, or a commented reference\n"
              "YAML file for one service (every key at its default).\n",
              f);
}

int main(int argc, char **argv) {
        const char *outpath = NULL;
        const char *example = NULL;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "-o") && i + 1 < argc) {
                        outpath = argv[++i];
                } else if (!strcmp(argv[i], "--example") && i + 1 < argc) {
                        example = argv[++i];
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
        canopy_err err;
        if (example) {
                const canopy_conf_table *t = canopy_conf_find_table(example);
                if (!t) {
                        fprintf(stderr, "canopy-confdoc: no table for service '%s'; known:", example);
                        for (size_t i = 0; i < n; i++)
                                fprintf(stderr, " %s", canopy_conf_all_tables[i]->service);
                        fputc('\n', stderr);
                        if (outpath) {
                                fclose(f);
                                remove(tmp);
                        }
                        return 1;
                }
                err = canopy_conf_write_example(f, t);
        } else {
                err = canopy_conf_write_doc(f, canopy_conf_all_tables, n);
        }
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
