/* ldap_util.c: pure helpers of the LDAP producer (see ldap_util.h). */
#include "ldap_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool canopy_ldap_valid_utf8(const uint8_t *s, size_t n) {
        size_t i = 0;
        while (i < n) {
                uint8_t c = s[i];
                size_t k;
                uint32_t cp;
                if (c < 0x80) {
                        if (c == 0)
                                return false;
                        i++;
                        continue;
                } else if ((c & 0xE0) == 0xC0) {
                        k = 1;
                        cp = c & 0x1F;
                } else if ((c & 0xF0) == 0xE0) {
                        k = 2;
                        cp = c & 0x0F;
                } else if ((c & 0xF8) == 0xF0) {
                        k = 3;
                        cp = c & 0x07;
                } else {
                        return false;
                }
                if (i + k >= n)
                        return false;
                for (size_t j = 1; j <= k; j++) {
                        if ((s[i + j] & 0xC0) != 0x80)
                                return false;
                        cp = (cp << 6) | (s[i + j] & 0x3F);
                }
                if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
                    (cp >= 0xD800 && cp <= 0xDFFF))
                        return false;
                i += k + 1;
        }
        return true;
}

static uint32_t le32(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

const char *canopy_ldap_privileged_sid(const uint8_t *s, size_t n) {
        if (!s || n < 8 || s[0] != 1)
                return NULL;
        size_t cnt = s[1];
        if (cnt == 0 || n < 8 + 4 * cnt)
                return NULL;
        uint64_t auth = 0;
        for (int i = 2; i < 8; i++)
                auth = (auth << 8) | s[i];
        if (auth != 5)
                return NULL;
        uint32_t sub0 = le32(s + 8);
        uint32_t rid = le32(s + 8 + 4 * (cnt - 1));
        if (sub0 == 32 && cnt == 2 && rid == 544)
                return "Administrators";
        if (sub0 == 21 && cnt >= 2) {
                if (rid == 512)
                        return "Domain Admins";
                if (rid == 518)
                        return "Schema Admins";
                if (rid == 519)
                        return "Enterprise Admins";
        }
        return NULL;
}

void canopy_ldap_attr_name(const char *full, char *base, size_t cap, long *lo, long *hi, bool *ranged) {
        *ranged = false;
        *lo = *hi = 0;
        if (!cap)
                return;
        snprintf(base, cap, "%s", full);
        char *semi = strchr(base, ';');
        if (semi) {
                const char *r = strcasestr(full, ";range=");
                if (r) {
                        *ranged = true;
                        *lo = strtol(r + 7, NULL, 10);
                        const char *dash = strchr(r + 7, '-');
                        *hi = !dash || dash[1] == '*' ? -1 : strtol(dash + 1, NULL, 10);
                }
                *semi = 0;
                if (strcasestr(full, ";binary") && strlen(base) + 8 <= cap)
                        strcat(base, ";binary");
        }
        for (char *p = base; *p; p++)
                *p = (char)tolower((unsigned char)*p);
}

int canopy_ldap_uuid_parse(const uint8_t *s, size_t n, uint8_t out[16]) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
                int c = s[i];
                if (c == '-')
                        continue;
                int d = isdigit(c)                ? c - '0'
                        : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                        : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                                 : -1;
                if (d < 0 || o >= 32)
                        return -1;
                if (o % 2 == 0)
                        out[o / 2] = (uint8_t)(d << 4);
                else
                        out[o / 2] |= (uint8_t)d;
                o++;
        }
        return o == 32 ? 0 : -1;
}

static int parse_tm(const char *b, struct tm *tm) {
        for (int i = 0; i < 14; i++)
                if (!isdigit((unsigned char)b[i]))
                        return -1;
        memset(tm, 0, sizeof(*tm));
        if (sscanf(b, "%4d%2d%2d%2d%2d%2d", &tm->tm_year, &tm->tm_mon, &tm->tm_mday, &tm->tm_hour, &tm->tm_min,
                   &tm->tm_sec) != 6)
                return -1;
        tm->tm_year -= 1900;
        tm->tm_mon -= 1;
        return 0;
}

int64_t canopy_ldap_gentime_ms(const uint8_t *s, size_t n) {
        if (!s || n < 14)
                return 0;
        char b[16];
        memcpy(b, s, 14);
        b[14] = 0;
        struct tm tm;
        if (parse_tm(b, &tm))
                return 0;
        return (int64_t)timegm(&tm) * 1000;
}

double canopy_ldap_csn_time(const char *s, size_t n) {
        if (!s)
                return 0;
        const char *c = memmem(s, n, "csn=", 4);
        const char *v = c ? c + 4 : s;
        size_t left = n - (size_t)(v - s);
        if (left < 14)
                return 0;
        char b[64];
        snprintf(b, sizeof(b), "%.*s", (int)(left < 63 ? left : 63), v);
        struct tm tm;
        if (parse_tm(b, &tm))
                return 0;
        double frac = b[14] == '.' ? strtod(b + 14, NULL) : 0;
        return (double)timegm(&tm) + frac;
}

bool canopy_ldap_dn_under(const char *dn, const char *base) {
        if (!dn || !base)
                return false;
        size_t nl = strlen(dn), bl = strlen(base);
        if (nl == bl)
                return !strcmp(dn, base);
        if (nl < bl + 1 || strcmp(dn + nl - bl, base) || dn[nl - bl - 1] != ',')
                return false;
        /* the comma must not be escaped: count the backslashes before it */
        size_t k = 0;
        for (size_t j = nl - bl - 1; j > 0 && dn[j - 1] == '\\'; j--)
                k++;
        return k % 2 == 0;
}
