/* expr_text.c: UTF-8, case mapping, diacritics and Base64 helpers for the
 * expression evaluator and the DN comparer. Every output goes to an arena.
 */
#include <string.h>

#include "expr_int.h"

uint32_t utf8_next(const char *str, size_t len, size_t *i)
{
        const unsigned char *s = (const unsigned char *)str;
        size_t p = *i;
        unsigned char c = s[p];
        if (c < 0x80) {
                *i = p + 1;
                return c;
        }
        int n = 0;
        uint32_t cp = 0;
        if ((c & 0xE0) == 0xC0) {
                n = 1;
                cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
                n = 2;
                cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
                n = 3;
                cp = c & 0x07;
        } else {
                *i = p + 1; /* stray byte: pass it through as itself */
                return c;
        }
        if (p + (size_t)n >= len) {
                *i = p + 1;
                return c;
        }
        for (int k = 1; k <= n; k++) {
                if ((s[p + k] & 0xC0) != 0x80) {
                        *i = p + 1;
                        return c;
                }
                cp = (cp << 6) | (s[p + k] & 0x3F);
        }
        *i = p + 1 + (size_t)n;
        return cp;
}

size_t utf8_put(uint32_t cp, char *o)
{
        unsigned char *out = (unsigned char *)o;
        if (cp < 0x80) {
                out[0] = (unsigned char)cp;
                return 1;
        }
        if (cp < 0x800) {
                out[0] = (unsigned char)(0xC0 | (cp >> 6));
                out[1] = (unsigned char)(0x80 | (cp & 0x3F));
                return 2;
        }
        if (cp < 0x10000) {
                out[0] = (unsigned char)(0xE0 | (cp >> 12));
                out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                out[2] = (unsigned char)(0x80 | (cp & 0x3F));
                return 3;
        }
        out[0] = (unsigned char)(0xF0 | ((cp >> 18) & 0x07));
        out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (unsigned char)(0x80 | (cp & 0x3F));
        return 4;
}

static uint32_t map_lookup(const expr_cpmap *tab, size_t n, uint32_t cp)
{
        size_t lo = 0, hi = n;
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (tab[mid].cp == cp)
                        return tab[mid].to;
                if (tab[mid].cp < cp)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return cp;
}

uint32_t uni_tolower(uint32_t cp)
{
        if (cp < 0x80)
                return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return map_lookup(expr_tolower_tab, expr_tolower_tab_n, cp);
}

uint32_t uni_toupper(uint32_t cp)
{
        if (cp < 0x80)
                return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
        if (cp == 0xB5 || cp == 0xDF || cp == 0xFF)
                return cp == 0xFF ? 0x178 : cp; /* micro, sharp s keep; y diaeresis */
        return map_lookup(expr_toupper_tab, expr_toupper_tab_n, cp);
}

size_t utf8_count(const char *s, size_t len)
{
        size_t i = 0, n = 0;
        while (i < len) {
                utf8_next(s, len, &i);
                n++;
        }
        return n;
}

size_t utf8_offset(const char *s, size_t len, size_t cpi)
{
        size_t i = 0, n = 0;
        while (i < len && n < cpi) {
                utf8_next(s, len, &i);
                n++;
        }
        return i;
}

char *text_case(canopy_arena *a, const char *s, size_t len, bool up, size_t *ret_len)
{
        /* Case pairs in the tables never change the UTF-8 length by more
         * than one byte per code point; 4 bytes per code point is safe. */
        char *out = canopy_arena_alloc(a, len * 2 + 4);
        if (!out)
                return NULL;
        size_t i = 0, o = 0;
        while (i < len) {
                size_t start = i;
                uint32_t cp = utf8_next(s, len, &i);
                uint32_t m = up ? uni_toupper(cp) : uni_tolower(cp);
                if (m == cp) {
                        memcpy(out + o, s + start, i - start);
                        o += i - start;
                } else {
                        o += utf8_put(m, out + o);
                }
        }
        out[o] = '\0';
        *ret_len = o;
        return out;
}

static const char *dia_lookup(uint32_t cp)
{
        size_t lo = 0, hi = expr_diacritics_tab_n;
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (expr_diacritics_tab[mid].cp == cp)
                        return expr_diacritics_tab[mid].to;
                if (expr_diacritics_tab[mid].cp < cp)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

char *text_nodiacritics(canopy_arena *a, const char *s, size_t len, size_t *ret_len)
{
        char *out = canopy_arena_alloc(a, len * 2 + 1); /* a 2-byte letter gives at most 2 ASCII bytes */
        if (!out)
                return NULL;
        size_t i = 0, o = 0;
        while (i < len) {
                size_t start = i;
                uint32_t cp = utf8_next(s, len, &i);
                if (cp >= 0x300 && cp <= 0x36F)
                        continue; /* combining diacritical marks: dropped */
                const char *rep = cp >= 0xC0 ? dia_lookup(cp) : NULL;
                if (rep) {
                        size_t rl = strlen(rep);
                        memcpy(out + o, rep, rl);
                        o += rl;
                } else {
                        memcpy(out + o, s + start, i - start);
                        o += i - start;
                }
        }
        out[o] = '\0';
        *ret_len = o;
        return out;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *text_base64(canopy_arena *a, const void *data, size_t len, size_t *ret_len)
{
        const unsigned char *d = data;
        size_t olen = (len + 2) / 3 * 4;
        char *out = canopy_arena_alloc(a, olen + 1);
        if (!out)
                return NULL;
        size_t o = 0, i = 0;
        for (; i + 2 < len; i += 3) {
                uint32_t v = ((uint32_t)d[i] << 16) | ((uint32_t)d[i + 1] << 8) | d[i + 2];
                out[o++] = b64[(v >> 18) & 63];
                out[o++] = b64[(v >> 12) & 63];
                out[o++] = b64[(v >> 6) & 63];
                out[o++] = b64[v & 63];
        }
        if (i < len) {
                uint32_t v = (uint32_t)d[i] << 16;
                if (i + 1 < len)
                        v |= (uint32_t)d[i + 1] << 8;
                out[o++] = b64[(v >> 18) & 63];
                out[o++] = b64[(v >> 12) & 63];
                out[o++] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
                out[o++] = '=';
        }
        out[o] = '\0';
        *ret_len = o;
        return out;
}

static int b64val(unsigned char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+' || c == '-')
                return 62;
        if (c == '/' || c == '_')
                return 63;
        return -1;
}

char *text_unbase64(canopy_arena *a, const char *s, size_t len, size_t *ret_len)
{
        while (len && (s[len - 1] == '=' || s[len - 1] == ' '))
                len--;
        char *out = canopy_arena_alloc(a, len * 3 / 4 + 4);
        if (!out)
                return NULL;
        uint32_t acc = 0;
        int bits = 0;
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                int v = b64val((unsigned char)s[i]);
                if (v < 0)
                        return NULL;
                acc = (acc << 6) | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (char)((acc >> bits) & 0xFF);
                }
        }
        out[o] = '\0';
        *ret_len = o;
        return out;
}
