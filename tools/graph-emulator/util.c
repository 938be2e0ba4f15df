/* util.c: hash map, ordered vectors, base64url, uuids, URL coding, time. */
#include "emu.h"

#include <ctype.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char map_tomb_[1];
#define MAP_TOMB (map_tomb_)

static uint64_t hash_str(const char *s) {
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 1099511628211ull;
        }
        return h;
}

static size_t map_find(const emu_map *m, const char *key, bool *found) {
        size_t mask = m->cap - 1, i = hash_str(key) & mask, first_tomb = (size_t)-1;
        for (;;) {
                char *k = m->keys[i];
                if (!k) {
                        *found = false;
                        return first_tomb != (size_t)-1 ? first_tomb : i;
                }
                if (k == MAP_TOMB) {
                        if (first_tomb == (size_t)-1)
                                first_tomb = i;
                } else if (!strcmp(k, key)) {
                        *found = true;
                        return i;
                }
                i = (i + 1) & mask;
        }
}

static int map_grow(emu_map *m) {
        size_t ncap = m->cap ? m->cap * 2 : 16;
        if (m->cap && m->n * 2 < m->cap)
                ncap = m->cap; /* mostly tombstones: rehash at the same size */
        char **ok = m->keys;
        void **ov = m->vals;
        size_t ocap = m->cap;
        m->keys = calloc(ncap, sizeof(char *));
        m->vals = calloc(ncap, sizeof(void *));
        if (!m->keys || !m->vals) {
                free(m->keys);
                free(m->vals);
                m->keys = ok;
                m->vals = ov;
                return -1;
        }
        m->cap = ncap;
        m->n = m->used = 0;
        for (size_t i = 0; i < ocap; i++) {
                if (ok[i] && ok[i] != MAP_TOMB) {
                        bool f;
                        size_t j = map_find(m, ok[i], &f);
                        m->keys[j] = ok[i];
                        m->vals[j] = ov[i];
                        m->n++;
                        m->used++;
                }
        }
        free(ok);
        free(ov);
        return 0;
}

void *emu_map_get(const emu_map *m, const char *key) {
        if (!m->cap)
                return NULL;
        bool f;
        size_t i = map_find(m, key, &f);
        return f ? m->vals[i] : NULL;
}

int emu_map_put(emu_map *m, const char *key, void *val) {
        if ((m->used + 1) * 4 >= m->cap * 3 && map_grow(m))
                return -1;
        bool f;
        size_t i = map_find(m, key, &f);
        if (f) {
                m->vals[i] = val;
                return 0;
        }
        char *k = strdup(key);
        if (!k)
                return -1;
        if (!m->keys[i])
                m->used++;
        m->keys[i] = k;
        m->vals[i] = val;
        m->n++;
        return 0;
}

void *emu_map_del(emu_map *m, const char *key) {
        if (!m->cap)
                return NULL;
        bool f;
        size_t i = map_find(m, key, &f);
        if (!f)
                return NULL;
        void *v = m->vals[i];
        free(m->keys[i]);
        m->keys[i] = MAP_TOMB;
        m->vals[i] = NULL;
        m->n--;
        return v;
}

void emu_map_clear(emu_map *m) {
        for (size_t i = 0; i < m->cap; i++)
                if (m->keys[i] && m->keys[i] != MAP_TOMB)
                        free(m->keys[i]);
        free(m->keys);
        free(m->vals);
        memset(m, 0, sizeof(*m));
}

bool emu_map_next(const emu_map *m, size_t *it, const char **key, void **val) {
        for (; *it < m->cap; (*it)++) {
                char *k = m->keys[*it];
                if (k && k != MAP_TOMB) {
                        *key = k;
                        *val = m->vals[*it];
                        (*it)++;
                        return true;
                }
        }
        return false;
}

/* ---- seqvec -------------------------------------------------------------- */

static void seqvec_compact(emu_seqvec *sv) {
        size_t j = 0;
        for (size_t i = 0; i < sv->len; i++) {
                if (sv->val[i]) {
                        sv->seq[j] = sv->seq[i];
                        sv->val[j] = sv->val[i];
                        j++;
                }
        }
        sv->len = j;
}

int emu_seqvec_push(emu_seqvec *sv, uint64_t seq, void *val) {
        if (sv->len == sv->cap) {
                if (sv->live * 2 < sv->len) {
                        seqvec_compact(sv);
                } else {
                        size_t nc = sv->cap ? sv->cap * 2 : 8;
                        uint64_t *ns = realloc(sv->seq, nc * sizeof(*ns));
                        if (!ns)
                                return -1;
                        sv->seq = ns;
                        void **nv = realloc(sv->val, nc * sizeof(*nv));
                        if (!nv)
                                return -1;
                        sv->val = nv;
                        sv->cap = nc;
                }
        }
        sv->seq[sv->len] = seq;
        sv->val[sv->len] = val;
        sv->len++;
        sv->live++;
        return 0;
}

size_t emu_seqvec_lower(const emu_seqvec *sv, uint64_t seq) {
        size_t lo = 0, hi = sv->len;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (sv->seq[mid] < seq)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

void emu_seqvec_remove(emu_seqvec *sv, uint64_t seq) {
        size_t i = emu_seqvec_lower(sv, seq);
        if (i < sv->len && sv->seq[i] == seq && sv->val[i]) {
                sv->val[i] = NULL;
                sv->live--;
        }
}

void emu_seqvec_free(emu_seqvec *sv) {
        free(sv->seq);
        free(sv->val);
        memset(sv, 0, sizeof(*sv));
}

/* ---- encodings ------------------------------------------------------------ */

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *emu_b64url_encode(const unsigned char *in, size_t len) {
        char *out = malloc(len / 3 * 4 + 5);
        if (!out)
                return NULL;
        size_t o = 0, i = 0;
        for (; i + 2 < len; i += 3) {
                uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
                out[o++] = b64u[v >> 18];
                out[o++] = b64u[(v >> 12) & 63];
                out[o++] = b64u[(v >> 6) & 63];
                out[o++] = b64u[v & 63];
        }
        if (len - i == 1) {
                uint32_t v = (uint32_t)in[i] << 16;
                out[o++] = b64u[v >> 18];
                out[o++] = b64u[(v >> 12) & 63];
        } else if (len - i == 2) {
                uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
                out[o++] = b64u[v >> 18];
                out[o++] = b64u[(v >> 12) & 63];
                out[o++] = b64u[(v >> 6) & 63];
        }
        out[o] = 0;
        return out;
}

static int b64val(int c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '-' || c == '+')
                return 62;
        if (c == '_' || c == '/')
                return 63;
        return -1;
}

unsigned char *emu_b64url_decode(const char *in, size_t inlen, size_t *outlen) {
        while (inlen && in[inlen - 1] == '=')
                inlen--;
        if (inlen % 4 == 1)
                return NULL;
        unsigned char *out = malloc(inlen * 3 / 4 + 3);
        if (!out)
                return NULL;
        size_t o = 0;
        uint32_t acc = 0;
        int bits = 0;
        for (size_t i = 0; i < inlen; i++) {
                int v = b64val((unsigned char)in[i]);
                if (v < 0) {
                        free(out);
                        return NULL;
                }
                acc = acc << 6 | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (unsigned char)(acc >> bits);
                }
        }
        out[o] = 0;
        *outlen = o;
        return out;
}

void emu_uuid(char out[37]) {
        unsigned char b[16];
        if (RAND_bytes(b, sizeof(b)) != 1) {
                for (int i = 0; i < 16; i++)
                        b[i] = (unsigned char)rand();
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int64_t emu_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void emu_iso_time(int64_t ms, char out[32]) {
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int hexval(int c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = tolower(c);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

void emu_url_decode(char *s, bool plus_space) {
        char *o = s;
        for (; *s; s++) {
                if (*s == '%' && hexval((unsigned char)s[1]) >= 0 && hexval((unsigned char)s[2]) >= 0) {
                        *o++ = (char)(hexval((unsigned char)s[1]) << 4 | hexval((unsigned char)s[2]));
                        s += 2;
                } else if (*s == '+' && plus_space) {
                        *o++ = ' ';
                } else {
                        *o++ = *s;
                }
        }
        *o = 0;
}

char *emu_url_encode(const char *s) {
        size_t n = strlen(s);
        char *out = malloc(n * 3 + 1);
        if (!out)
                return NULL;
        char *o = out;
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '$')
                        *o++ = (char)c;
                else
                        o += sprintf(o, "%%%02X", c);
        }
        *o = 0;
        return out;
}

void emu_lower(char *s) {
        for (; *s; s++)
                *s = (char)tolower((unsigned char)*s);
}

bool emu_is_guid(const char *s) {
        if (strlen(s) != 36)
                return false;
        for (int i = 0; i < 36; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return false;
                } else if (!isxdigit((unsigned char)s[i])) {
                        return false;
                }
        }
        return true;
}

double emu_rand01(void) {
        uint32_t v;
        if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1)
                v = (uint32_t)rand();
        return (double)v / 4294967296.0;
}

char *emu_read_file(const char *path, size_t *len) {
        FILE *f = fopen(path, "rb");
        if (!f)
                return NULL;
        size_t cap = 4096, n = 0;
        char *buf = malloc(cap);
        while (buf) {
                if (n + 1 >= cap) {
                        if (cap > (256u << 20)) {
                                free(buf);
                                buf = NULL;
                                break;
                        }
                        char *nb = realloc(buf, cap * 2);
                        if (!nb) {
                                free(buf);
                                buf = NULL;
                                break;
                        }
                        buf = nb;
                        cap *= 2;
                }
                size_t r = fread(buf + n, 1, cap - n - 1, f);
                if (!r)
                        break;
                n += r;
        }
        fclose(f);
        if (!buf)
                return NULL;
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                n--;
        buf[n] = 0;
        if (len)
                *len = n;
        return buf;
}

unsigned emu_role_bit(const char *role) {
        static const struct {
                const char *name;
                unsigned bit;
        } roles[] = {
            {"User.Read.All", EMU_P_USER_READ},
            {"User.ReadBasic.All", EMU_P_USER_READ},
            {"User.ReadWrite.All", EMU_P_USER_RW | EMU_P_USER_READ},
            {"Group.Read.All", EMU_P_GROUP_READ},
            {"Group.ReadWrite.All", EMU_P_GROUP_RW | EMU_P_GROUP_READ},
            {"GroupMember.Read.All", EMU_P_MEMBER_READ},
            {"GroupMember.ReadWrite.All", EMU_P_MEMBER_RW | EMU_P_MEMBER_READ},
            {"Directory.Read.All", EMU_P_DIR_READ},
            {"Directory.ReadWrite.All", EMU_P_DIR_RW | EMU_P_DIR_READ},
            {"Domain.Read.All", EMU_P_DOMAIN_READ},
            {"Domain.ReadWrite.All", EMU_P_DOMAIN_READ},
            {"Organization.Read.All", EMU_P_ORG_READ},
            {"Organization.ReadWrite.All", EMU_P_ORG_READ},
        };
        for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
                if (!strcmp(roles[i].name, role))
                        return roles[i].bit;
        return 0;
}
