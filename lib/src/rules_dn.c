/* rules_dn.c: RFC 4514 distinguished names: parsing, canonical form,
 * comparison, and the DN helpers of the expression language.
 *
 * Canonical form: attribute types lower-cased, values unescaped (\, \+ \"
 * \\ \XX hex, LDAPv2 quoted values), case-folded (Unicode simple lower
 * case), runs of inner spaces folded to one (RFC 4518 insignificant space
 * handling), leading/trailing spaces dropped, then re-escaped minimally;
 * AVAs of a multi-valued RDN sorted; ',' between RDNs with no spaces.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/rules.h"
#include "expr_int.h"
#include "rules_int.h"

#define DN_MAX_AVAS 64

typedef struct ava {
        const char *type;
        size_t tl;
        const char *val; /* unescaped */
        size_t vl;
        bool hex;        /* #hex BER value, kept verbatim (lower-cased) */
} ava;

static int hexd(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Parse one AVA at s[*i]; unescaped bytes go to buf (capacity len+1).
 * Returns the separator after it: ',' (next RDN), '+' (same RDN), 0 (end)
 * or -1 on a syntax error. */
static int parse_ava(const char *s, size_t len, size_t *pi, char *buf, size_t *bo, ava *out)
{
        size_t i = *pi;
        while (i < len && s[i] == ' ')
                i++;
        size_t ts = i;
        while (i < len && (isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'))
                i++;
        if (i == ts)
                return -1;
        out->type = buf + *bo;
        for (size_t k = ts; k < i; k++)
                buf[(*bo)++] = (char)tolower((unsigned char)s[k]);
        out->tl = i - ts;
        buf[(*bo)++] = '\0';
        while (i < len && s[i] == ' ')
                i++;
        if (i >= len || s[i] != '=')
                return -1;
        i++;
        while (i < len && s[i] == ' ')
                i++;
        out->val = buf + *bo;
        out->hex = false;
        size_t vs = *bo;
        size_t last_sig = *bo; /* end of the value before unescaped trailing spaces */
        if (i < len && s[i] == '#') {
                out->hex = true;
                while (i < len && s[i] != ',' && s[i] != '+' && s[i] != ';' && s[i] != ' ')
                        buf[(*bo)++] = (char)tolower((unsigned char)s[i++]);
                last_sig = *bo;
                while (i < len && s[i] == ' ')
                        i++;
        } else if (i < len && s[i] == '"') {
                i++;
                while (i < len && s[i] != '"') {
                        if (s[i] == '\\' && i + 1 < len)
                                i++;
                        buf[(*bo)++] = s[i++];
                }
                if (i >= len)
                        return -1;
                i++;
                last_sig = *bo;
                while (i < len && s[i] == ' ')
                        i++;
        } else {
                while (i < len && s[i] != ',' && s[i] != '+' && s[i] != ';') {
                        if (s[i] == '\\') {
                                if (i + 1 >= len)
                                        return -1;
                                int h1 = hexd(s[i + 1]), h2 = i + 2 < len ? hexd(s[i + 2]) : -1;
                                if (h1 >= 0 && h2 >= 0) {
                                        buf[(*bo)++] = (char)(h1 * 16 + h2);
                                        i += 3;
                                } else {
                                        buf[(*bo)++] = s[i + 1];
                                        i += 2;
                                }
                                last_sig = *bo;
                                continue;
                        }
                        if (s[i] == '"' || s[i] == '<' || s[i] == '>')
                                return -1; /* must be escaped */
                        buf[(*bo)++] = s[i];
                        if (s[i] != ' ')
                                last_sig = *bo;
                        i++;
                }
                *bo = last_sig; /* drop unescaped trailing spaces */
        }
        out->vl = *bo - vs;
        buf[(*bo)++] = '\0';
        *pi = i;
        if (i >= len)
                return 0;
        char sep = s[i];
        *pi = i + 1;
        if (sep == ',' || sep == ';')
                return ',';
        if (sep == '+')
                return '+';
        return -1;
}

static int ava_cmp(const void *a, const void *b)
{
        const ava *x = a, *y = b;
        int r = strcmp(x->type, y->type);
        if (r)
                return r;
        size_t m = x->vl < y->vl ? x->vl : y->vl;
        r = memcmp(x->val, y->val, m);
        return r ? r : (x->vl < y->vl ? -1 : x->vl > y->vl);
}

/* Append the canonical form of one value (fold case, squeeze spaces, escape). */
static size_t put_value(char *o, const ava *a)
{
        size_t ol = 0;
        if (a->hex) {
                memcpy(o, a->val, a->vl);
                return a->vl;
        }
        /* lower-case into a temp region after the output is unsafe: fold per code point inline */
        size_t i = 0;
        bool first = true, pending_space = false;
        while (i < a->vl) {
                uint32_t cp = utf8_next(a->val, a->vl, &i);
                if (cp == ' ') {
                        if (!first)
                                pending_space = true;
                        continue;
                }
                if (pending_space) {
                        o[ol++] = ' ';
                        pending_space = false;
                }
                cp = uni_tolower(cp);
                if (cp == ',' || cp == '+' || cp == '"' || cp == '\\' || cp == '<' || cp == '>' || cp == ';' ||
                    cp == '=' || (first && cp == '#')) {
                        o[ol++] = '\\';
                        o[ol++] = (char)cp;
                } else if (cp == 0) {
                        memcpy(o + ol, "\\00", 3);
                        ol += 3;
                } else if (cp < 0x20) {
                        static const char hx[] = "0123456789abcdef";
                        o[ol++] = '\\';
                        o[ol++] = hx[cp >> 4];
                        o[ol++] = hx[cp & 15];
                } else {
                        ol += utf8_put(cp, o + ol);
                }
                first = false;
        }
        return ol;
}

/* Canonical form into a fresh buffer (malloc when a is NULL). */
static char *normalize(const char *dn, size_t len, canopy_arena *a, size_t *ret_len)
{
        if (len > CANOPY_DN_MAX)
                return NULL;
        char *buf = malloc(2 * len + 2 * DN_MAX_AVAS + 8);
        if (!buf)
                return NULL;
        size_t cap = 4 * len + 16;
        char *out = a ? canopy_arena_alloc(a, cap) : malloc(cap);
        if (!out) {
                free(buf);
                return NULL;
        }
        size_t bo = 0, ol = 0, i = 0;
        ava avas[DN_MAX_AVAS];
        bool ok = true;
        while (len > 0 && i < len && ok) {
                size_t n = 0;
                int sep;
                do {
                        if (n >= DN_MAX_AVAS) {
                                ok = false;
                                break;
                        }
                        sep = parse_ava(dn, len, &i, buf, &bo, &avas[n]);
                        if (sep < 0) {
                                ok = false;
                                break;
                        }
                        n++;
                } while (sep == '+');
                if (!ok)
                        break;
                if (n > 1) {
                        /* Sort by type, then by the canonical (case-folded,
                         * re-escaped) value, so that normalizing a
                         * canonical DN gives it back unchanged. */
                        char *rv[DN_MAX_AVAS];
                        size_t rl[DN_MAX_AVAS];
                        for (size_t k = 0; k < n; k++) {
                                rv[k] = malloc(4 * avas[k].vl + 16);
                                rl[k] = rv[k] ? put_value(rv[k], &avas[k]) : 0;
                        }
                        for (size_t k = 1; k < n; k++) {
                                for (size_t j = k; j > 0; j--) {
                                        int r = strcmp(avas[j - 1].type, avas[j].type);
                                        if (!r && rv[j - 1] && rv[j]) {
                                                size_t m = rl[j - 1] < rl[j] ? rl[j - 1] : rl[j];
                                                r = memcmp(rv[j - 1], rv[j], m);
                                                if (!r)
                                                        r = rl[j - 1] > rl[j];
                                        } else if (!r) {
                                                r = ava_cmp(&avas[j - 1], &avas[j]);
                                        }
                                        if (r <= 0)
                                                break;
                                        ava t = avas[j];
                                        avas[j] = avas[j - 1];
                                        avas[j - 1] = t;
                                        char *tv = rv[j];
                                        rv[j] = rv[j - 1];
                                        rv[j - 1] = tv;
                                        size_t tl = rl[j];
                                        rl[j] = rl[j - 1];
                                        rl[j - 1] = tl;
                                }
                        }
                        for (size_t k = 0; k < n; k++)
                                free(rv[k]);
                }
                if (ol)
                        out[ol++] = ',';
                for (size_t k = 0; k < n; k++) {
                        if (k)
                                out[ol++] = '+';
                        memcpy(out + ol, avas[k].type, avas[k].tl);
                        ol += avas[k].tl;
                        out[ol++] = '=';
                        ol += put_value(out + ol, &avas[k]);
                }
                if (sep == 0)
                        break;
                if (i >= len) { /* trailing separator */
                        ok = false;
                        break;
                }
        }
        free(buf);
        if (!ok) {
                if (!a)
                        free(out);
                return NULL;
        }
        out[ol] = '\0';
        *ret_len = ol;
        return out;
}

const char *canopy_dn_normalize(const char *dn, canopy_arena *a)
{
        size_t l;
        if (!dn || !a)
                return NULL;
        return normalize(dn, strlen(dn), a, &l);
}

bool canopy_dn_equal(const char *a, const char *b)
{
        if (!a || !b)
                return false;
        size_t al, bl;
        char *x = normalize(a, strlen(a), NULL, &al);
        char *y = normalize(b, strlen(b), NULL, &bl);
        bool r;
        if (!x || !y)
                r = strcmp(a, b) == 0;
        else
                r = al == bl && memcmp(x, y, al) == 0;
        free(x);
        free(y);
        return r;
}

/* true when canonical `dn` equals or lies below canonical `base`. */
bool rules_dn_norm_under(const char *dn, size_t dl, const char *base, size_t bl)
{
        if (bl == 0)
                return true;
        if (dl < bl || memcmp(dn + dl - bl, base, bl) != 0)
                return false;
        if (dl == bl)
                return true;
        size_t k = dl - bl - 1;
        if (dn[k] != ',')
                return false;
        /* The ',' must not be escaped: count the backslashes before it. */
        size_t bs = 0, j = k;
        while (j > 0 && dn[j - 1] == '\\') {
                bs++;
                j--;
        }
        return bs % 2 == 0;
}

bool canopy_dn_is_under(const char *dn, const char *base)
{
        if (!dn || !base)
                return false;
        size_t dl, bl;
        char *x = normalize(dn, strlen(dn), NULL, &dl);
        char *y = normalize(base, strlen(base), NULL, &bl);
        bool r = x && y && rules_dn_norm_under(x, dl, y, bl);
        free(x);
        free(y);
        return r;
}

const char *dn_component(const char *dn, size_t len, size_t n, canopy_arena *a, size_t *ret_len)
{
        if (len > CANOPY_DN_MAX)
                return NULL;
        char *buf = canopy_arena_alloc(a, 2 * len + 2 * DN_MAX_AVAS + 8);
        if (!buf)
                return NULL;
        size_t bo = 0, i = 0, rdn = 1;
        bool first_of_rdn = true;
        while (i < len) {
                ava v;
                int sep = parse_ava(dn, len, &i, buf, &bo, &v);
                if (sep < 0)
                        return NULL;
                if (rdn == n && first_of_rdn) {
                        *ret_len = v.vl;
                        return v.val;
                }
                if (sep == 0)
                        break;
                first_of_rdn = sep == ',';
                if (sep == ',')
                        rdn++;
        }
        return NULL;
}

const char *dn_domain(const char *dn, size_t len, canopy_arena *a, size_t *ret_len)
{
        if (len > CANOPY_DN_MAX)
                return NULL;
        char *buf = canopy_arena_alloc(a, 2 * len + 2 * DN_MAX_AVAS + 8);
        char *out = canopy_arena_alloc(a, len + 1);
        if (!buf || !out)
                return NULL;
        size_t bo = 0, i = 0, ol = 0;
        while (i < len) {
                ava v;
                int sep = parse_ava(dn, len, &i, buf, &bo, &v);
                if (sep < 0)
                        return NULL;
                if (v.tl == 2 && strcmp(v.type, "dc") == 0 && !v.hex) {
                        if (ol)
                                out[ol++] = '.';
                        memcpy(out + ol, v.val, v.vl);
                        ol += v.vl;
                }
                if (sep == 0)
                        break;
        }
        if (!ol)
                return NULL;
        out[ol] = '\0';
        *ret_len = ol;
        return out;
}

/* Canonical form in malloc'd memory (free()); NULL when it does not parse. */
char *rules_dn_norm_alloc(const char *dn, size_t *ret_len)
{
        return normalize(dn, strlen(dn), NULL, ret_len);
}

/* Canonical form into the arena; NULL when it does not parse. */
const char *rules_dn_norm_arena(const char *dn, size_t len, canopy_arena *a, size_t *ret_len)
{
        return normalize(dn, len, a, ret_len);
}
