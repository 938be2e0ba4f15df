/* fuzz_config.c: the YAML config loader (canopy_conf_load) on arbitrary
 * file contents, with a small table of every value type, and with the real
 * worker, producer and guard tables. Byte 0 selects the table; the rest is
 * written to a temp file and loaded. On success the config is freed; a
 * load that fails must leave the struct zeroed (canopy/config.h). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canopy/config.h"

struct fconf {
        char *name;
        char **brokers;
        int64_t timeout_ms;
        char *secret;
        char *tenant;
        int64_t count;
        double ratio;
        bool staging;
        char *mode;
};

static const canopy_conf_def fdefs[] = {
    {"name", CANOPY_CT_STR, "canopy", 0, 0, 0, NULL, NULL, "Name.", offsetof(struct fconf, name)},
    {"kafka.brokers", CANOPY_CT_LIST, "127.0.0.1:9092", 0, 0, 0, NULL, NULL, "Brokers.",
     offsetof(struct fconf, brokers)},
    {"kafka.timeout", CANOPY_CT_DURATION, "5s", 100, 60000, 0, NULL, NULL, "Timeout.",
     offsetof(struct fconf, timeout_ms)},
    {"graph.client_secret", CANOPY_CT_SECRET, NULL, 0, 0, 0, NULL, NULL, "Secret.", offsetof(struct fconf, secret)},
    {"graph.tenant", CANOPY_CT_STR, NULL, 0, 0, CANOPY_CONF_REQUIRED, NULL, NULL, "Tenant.",
     offsetof(struct fconf, tenant)},
    {"workers.count", CANOPY_CT_INT, "4", 1, 64, 0, NULL, NULL, "Count.", offsetof(struct fconf, count)},
    {"workers.ratio", CANOPY_CT_DOUBLE, "0.5", 0, 1, 0, NULL, NULL, "Ratio.", offsetof(struct fconf, ratio)},
    {"workers.staging", CANOPY_CT_BOOL, "false", 0, 0, 0, NULL, NULL, "Staging.", offsetof(struct fconf, staging)},
    {"mode", CANOPY_CT_ENUM, "stream", 0, 0, 0, NULL, "stream|batch|replay", "Mode.", offsetof(struct fconf, mode)},
};
static const canopy_conf_table ftable = {"fuzz", "Fuzz table.", fdefs, sizeof(fdefs) / sizeof(fdefs[0]),
                                         sizeof(struct fconf)};

static bool all_zero(const unsigned char *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (p[i])
                        return false;
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        static char path[64];
        if (!path[0])
                snprintf(path, sizeof(path), "%s/canopy-fuzz-config-%ld.yaml",
                         access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (long)getpid());
        const canopy_conf_table *t = &ftable;
        switch (data[0] % 4) {
        case 1:
                t = canopy_conf_find_table("worker");
                break;
        case 2:
                t = canopy_conf_find_table("producer-ldap");
                break;
        case 3:
                t = canopy_conf_find_table("guard");
                break;
        }
        if (!t)
                t = &ftable;
        FILE *f = fopen(path, "wb");
        if (!f)
                return 0;
        fwrite(data + 1, 1, size - 1, f);
        fclose(f);
        unsigned char *out = calloc(1, t->size);
        if (!out)
                return 0;
        char err[512];
        /* a --set override too, so that both paths meet */
        const char *sets[1] = {"kafka.session_timeout=3s"};
        canopy_err e = canopy_conf_load(t, out, path, t == &ftable ? NULL : sets, t == &ftable ? 0 : 1, err,
                                        sizeof(err));
        if (e) {
                if (!all_zero(out, t->size)) /* the API says: zeroed on error */
                        abort();
        } else {
                canopy_conf_free(t, out);
        }
        free(out);
        unlink(path);
        return 0;
}
