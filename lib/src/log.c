/* log.c: JSON-lines logging with secret redaction. */
#include "canopy/log.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOG_LINE_MAX 8192
#define LOG_SECRETS_MAX 64
#define LOG_RAW_MAX (64 * 1024)

static const char *log_svc = "canopy";
static canopy_log_level log_level = CANOPY_LOG_INFO;
static char *log_debug_mods;
static FILE *log_out;
static char *log_secrets[LOG_SECRETS_MAX];
static size_t log_nsecrets;
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

static bool log_level_explicit;
static pthread_once_t log_env_once = PTHREAD_ONCE_INIT;

/* Read CANOPY_LOG_LEVEL and CANOPY_LOG_DEBUG once; an explicit
 * canopy_log_set_level / _set_debug_modules call made before wins. */
static void read_env_once(void) {
        pthread_mutex_lock(&log_lock);
        int lvl = canopy_log_level_parse(getenv("CANOPY_LOG_LEVEL"));
        if (lvl >= 0 && !log_level_explicit)
                log_level = (canopy_log_level)lvl;
        const char *dm = getenv("CANOPY_LOG_DEBUG");
        if (dm && !log_debug_mods)
                log_debug_mods = strdup(dm);
        pthread_mutex_unlock(&log_lock);
}

static void read_env(void) {
        pthread_once(&log_env_once, read_env_once);
}

void canopy_log_init(const char *svc) {
        read_env();
        pthread_mutex_lock(&log_lock);
        if (svc)
                log_svc = svc;
        pthread_mutex_unlock(&log_lock);
}

void canopy_log_set_level(canopy_log_level lvl) {
        read_env();
        log_level_explicit = true;
        log_level = lvl;
}

void canopy_log_set_debug_modules(const char *csv) {
        read_env();
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

/* Copy in to out (cap bytes, NUL-terminated) with every registered secret
 * replaced by [REDACTED], in one left-to-right pass: a mark is never scanned
 * again (a secret that is part of "[REDACTED]" cannot loop), and when out is
 * full the copy stops before a secret, never in the middle of one.
 * Caller holds log_lock. */
static void redact_copy(const char *in, char *out, size_t cap) {
        static const char mark[] = "[REDACTED]";
        size_t ml = sizeof(mark) - 1;
        size_t n = 0;
        while (*in && n + 1 < cap) {
                size_t best = 0;
                for (size_t i = 0; i < log_nsecrets; i++) {
                        size_t sl = strlen(log_secrets[i]);
                        if (sl > best && !strncmp(in, log_secrets[i], sl))
                                best = sl;
                }
                if (best <= ml && !strncmp(in, mark, ml)) {
                        /* A mark from an earlier pass is copied whole, never
                         * redacted again from the inside. */
                        if (n + ml + 1 > cap)
                                break;
                        memcpy(out + n, mark, ml);
                        n += ml;
                        in += ml;
                } else if (best) {
                        if (n + ml + 1 > cap)
                                break;
                        memcpy(out + n, mark, ml);
                        n += ml;
                        in += best;
                } else {
                        out[n++] = *in++;
                }
        }
        out[n] = 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when invalid. */
static size_t utf8_len(const unsigned char *p) {
        unsigned char c = p[0];
        size_t n;
        unsigned int cp;
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf) {
                n = 2;
                cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
                n = 3;
                cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
                n = 4;
                cp = c & 0x07;
        } else {
                return 0;
        }
        for (size_t i = 1; i < n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
                return 0;
        return n;
}

/* Append s to out as a JSON string body (escaped; invalid UTF-8 becomes
 * U+FFFD so that every line stays valid JSON). Returns new length. */
static size_t json_escape(char *out, size_t len, size_t cap, const char *s) {
        for (const unsigned char *p = (const unsigned char *)s; *p && len + 7 < cap;) {
                unsigned char c = *p;
                if (c >= 0x80) {
                        size_t n = utf8_len(p);
                        if (!n) {
                                len += (size_t)snprintf(out + len, cap - len, "\\ufffd");
                                p++;
                        } else {
                                if (len + n + 1 >= cap)
                                        break;
                                memcpy(out + len, p, n);
                                len += n;
                                p += n;
                        }
                        continue;
                }
                p++;
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

/* The format attribute lets the compiler check the vsnprintf calls below. */
__attribute__((format(printf, 4, 0))) void canopy_logv(canopy_log_level lvl, const char *mod,
                                                       const canopy_log_ctx *ctx, const char *fmt, va_list ap);

void canopy_logv(canopy_log_level lvl, const char *mod, const canopy_log_ctx *ctx, const char *fmt, va_list ap) {
        if (!canopy_log_enabled(lvl, mod))
                return;
        /* Format the whole message first (up to 64 KiB) and redact it before
         * cutting it to LOG_LINE_MAX, so that a cut never leaves part of a
         * secret behind. */
        char small[LOG_LINE_MAX];
        char *raw = small;
        va_list ap2;
        va_copy(ap2, ap);
        int rl = vsnprintf(small, sizeof(small), fmt, ap);
        if (rl >= (int)sizeof(small)) {
                size_t want = (size_t)rl + 1 > LOG_RAW_MAX ? LOG_RAW_MAX : (size_t)rl + 1;
                char *big = malloc(want);
                if (big) {
                        vsnprintf(big, want, fmt, ap2);
                        raw = big;
                }
        }
        va_end(ap2);
        char msg[LOG_LINE_MAX];
        pthread_mutex_lock(&log_lock);
        redact_copy(raw, msg, sizeof(msg));
        pthread_mutex_unlock(&log_lock);
        if (raw != small)
                free(raw);

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

        /* Again on the whole line: context values and the JSON-escaped forms
         * of secrets (the config module registers those too). A secret is at
         * least 4 bytes and its mark 10, so 2.5 times the line always fits. */
        size_t cap = len * 5 / 2 + 16;
        char *out = malloc(cap);
        pthread_mutex_lock(&log_lock);
        FILE *f = log_out ? log_out : stderr;
        if (out) {
                redact_copy(line, out, cap);
                fputs(out, f);
        } else {
                fputs("{\"level\":\"error\",\"msg\":\"log line dropped: out of memory\"}\n", f);
        }
        fflush(f);
        pthread_mutex_unlock(&log_lock);
        free(out);
}

void canopy_log(canopy_log_level lvl, const char *mod, const canopy_log_ctx *ctx, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        canopy_logv(lvl, mod, ctx, fmt, ap);
        va_end(ap);
}
