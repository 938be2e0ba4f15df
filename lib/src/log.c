/* log.c: JSON-lines logging with secret redaction. */
#include "canopy/log.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOG_LINE_MAX 8192
#define LOG_SECRETS_MAX 64

static const char *log_svc = "canopy";
static canopy_log_level log_level = CANOPY_LOG_INFO;
static char *log_debug_mods;
static FILE *log_out;
static char *log_secrets[LOG_SECRETS_MAX];
static size_t log_nsecrets;
static bool log_env_read;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"debug", "info", "warn", "error", "fatal"};

int canopy_log_level_parse(const char *s) {
        if (!s)
                return -1;
        for (int i = 0; i < 5; i++)
                if (!strcasecmp(s, level_names[i]))
                        return i;
        if (!strcasecmp(s, "warning"))
                return CANOPY_LOG_WARN;
        return -1;
}

static void read_env(void) {
        if (log_env_read)
                return;
        log_env_read = true;
        int lvl = canopy_log_level_parse(getenv("CANOPY_LOG_LEVEL"));
        if (lvl >= 0)
                log_level = (canopy_log_level)lvl;
        const char *dm = getenv("CANOPY_LOG_DEBUG");
        if (dm && !log_debug_mods)
                log_debug_mods = strdup(dm);
}

void canopy_log_init(const char *svc) {
        pthread_mutex_lock(&log_lock);
        if (svc)
                log_svc = svc;
        read_env();
        pthread_mutex_unlock(&log_lock);
}

void canopy_log_set_level(canopy_log_level lvl) {
        log_level = lvl;
}

void canopy_log_set_debug_modules(const char *csv) {
        pthread_mutex_lock(&log_lock);
        free(log_debug_mods);
        log_debug_mods = csv ? strdup(csv) : NULL;
        pthread_mutex_unlock(&log_lock);
}

void canopy_log_set_output(FILE *f) {
        log_out = f;
}

void canopy_log_secret(const char *value) {
        if (!value || strlen(value) < 4)
                return;
        pthread_mutex_lock(&log_lock);
        for (size_t i = 0; i < log_nsecrets; i++)
                if (!strcmp(log_secrets[i], value))
                        goto out;
        if (log_nsecrets < LOG_SECRETS_MAX)
                log_secrets[log_nsecrets++] = strdup(value);
out:
        pthread_mutex_unlock(&log_lock);
}

static bool module_debug(const char *mod) {
        if (!log_debug_mods || !mod)
                return false;
        if (!strcmp(log_debug_mods, "*"))
                return true;
        size_t ml = strlen(mod);
        const char *p = log_debug_mods;
        while (*p) {
                const char *e = strchr(p, ',');
                size_t l = e ? (size_t)(e - p) : strlen(p);
                if (l == ml && !strncmp(p, mod, l))
                        return true;
                if (!e)
                        break;
                p = e + 1;
        }
        return false;
}

int canopy_log_enabled(canopy_log_level lvl, const char *mod) {
        read_env();
        if (lvl >= log_level)
                return 1;
        return lvl == CANOPY_LOG_DEBUG && module_debug(mod);
}

/* Replace every registered secret in buf (in place, NUL-terminated). */
static void redact(char *buf, size_t cap) {
        static const char mark[] = "[REDACTED]";
        for (size_t i = 0; i < log_nsecrets; i++) {
                const char *s = log_secrets[i];
                size_t sl = strlen(s);
                char *p;
                while ((p = strstr(buf, s)) != NULL) {
                        size_t tail = strlen(p + sl);
                        size_t ml = sizeof(mark) - 1;
                        if ((size_t)(p - buf) + ml + tail + 1 > cap) {
                                /* No room to grow: blank the secret instead. */
                                memset(p, '*', sl);
                                continue;
                        }
                        memmove(p + ml, p + sl, tail + 1);
                        memcpy(p, mark, ml);
                }
        }
}

/* Append s to out as a JSON string body (escaped). Returns new length. */
static size_t json_escape(char *out, size_t len, size_t cap, const char *s) {
        for (const unsigned char *p = (const unsigned char *)s; *p && len + 7 < cap; p++) {
                unsigned char c = *p;
                if (c == '"' || c == '\\') {
                        out[len++] = '\\';
                        out[len++] = (char)c;
                } else if (c == '\n') {
                        out[len++] = '\\';
                        out[len++] = 'n';
                } else if (c == '\t') {
                        out[len++] = '\\';
                        out[len++] = 't';
                } else if (c == '\r') {
                        out[len++] = '\\';
                        out[len++] = 'r';
                } else if (c < 0x20 || c == 0x7f) {
                        len += (size_t)snprintf(out + len, cap - len, "\\u%04x", c);
                } else {
                        out[len++] = (char)c;
                }
        }
        out[len] = 0;
        return len;
}

static size_t add_kv(char *out, size_t len, size_t cap, const char *k, const char *v) {
        if (len + strlen(k) + 8 >= cap)
                return len;
        len += (size_t)snprintf(out + len, cap - len, ",\"%s\":\"", k);
        len = json_escape(out, len, cap - 2, v);
        out[len++] = '"';
        out[len] = 0;
        return len;
}

void canopy_logv(canopy_log_level lvl, const char *mod, const canopy_log_ctx *ctx, const char *fmt, va_list ap) {
        if (!canopy_log_enabled(lvl, mod))
                return;
        char msg[LOG_LINE_MAX];
        vsnprintf(msg, sizeof(msg), fmt, ap);

        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        char tbuf[40];
        size_t tl = strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(tbuf + tl, sizeof(tbuf) - tl, ".%03ldZ", ts.tv_nsec / 1000000);

        char line[LOG_LINE_MAX * 2];
        size_t len = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\"", tbuf,
                                      level_names[lvl <= CANOPY_LOG_FATAL ? lvl : CANOPY_LOG_FATAL]);
        len = add_kv(line, len, sizeof(line), "svc", log_svc);
        len = add_kv(line, len, sizeof(line), "mod", mod ? mod : "-");
        len = add_kv(line, len, sizeof(line), "msg", msg);
        if (ctx) {
                if (ctx->connector)
                        len = add_kv(line, len, sizeof(line), "connector", ctx->connector);
                if (ctx->anchor)
                        len = add_kv(line, len, sizeof(line), "anchor", ctx->anchor);
                if (ctx->topic)
                        len = add_kv(line, len, sizeof(line), "topic", ctx->topic);
                if (ctx->partition >= 0 && len + 32 < sizeof(line))
                        len += (size_t)snprintf(line + len, sizeof(line) - len, ",\"partition\":%d",
                                                (int)ctx->partition);
                if (ctx->offset >= 0 && len + 40 < sizeof(line))
                        len += (size_t)snprintf(line + len, sizeof(line) - len, ",\"offset\":%lld",
                                                (long long)ctx->offset);
        }
        if (len + 3 > sizeof(line))
                len = sizeof(line) - 3;
        line[len++] = '}';
        line[len++] = '\n';
        line[len] = 0;

        pthread_mutex_lock(&log_lock);
        redact(line, sizeof(line));
        FILE *f = log_out ? log_out : stderr;
        fputs(line, f);
        fflush(f);
        pthread_mutex_unlock(&log_lock);
}

void canopy_log(canopy_log_level lvl, const char *mod, const canopy_log_ctx *ctx, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        canopy_logv(lvl, mod, ctx, fmt, ap);
        va_end(ap);
}
