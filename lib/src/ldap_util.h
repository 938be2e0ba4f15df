/* ldap_util.h (private): pure helpers of the LDAP producer, kept in lib so
 * that unit tests and fuzz targets can reach them without a server. No
 * function here allocates except where said; none talks to the network. */
#ifndef CANOPY_LDAP_UTIL_H
#define CANOPY_LDAP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether s[0..n) is well-formed UTF-8 without NUL, overlongs or surrogates. */
bool canopy_ldap_valid_utf8(const uint8_t *s, size_t n);

/* The privileged group a binary SID names, or NULL: "Domain Admins" (RID
 * 512), "Schema Admins" (518), "Enterprise Admins" (519) of any domain
 * (S-1-5-21-...), "Administrators" (S-1-5-32-544). */
const char *canopy_ldap_privileged_sid(const uint8_t *sid, size_t n);

/* Split an attribute description such as "member;range=0-1499" into its
 * lower-case base name (";binary" kept, other options dropped) written to
 * base (cap bytes) and the range: *ranged set when a range option is there,
 * *lo and *hi its bounds (*hi = -1 for "*"). */
void canopy_ldap_attr_name(const char *full, char *base, size_t cap, long *lo, long *hi, bool *ranged);

/* Text UUID ("8f2b...-...", 32 hex digits, dashes ignored) to 16 bytes.
 * Returns 0, or -1 when it is not one. */
int canopy_ldap_uuid_parse(const uint8_t *s, size_t n, uint8_t out[16]);

/* GeneralizedTime ("20240131120000.0Z", "20240131120000Z") to ms since the
 * epoch (UTC); 0 when unparsable. */
int64_t canopy_ldap_gentime_ms(const uint8_t *s, size_t n);

/* Time of the CSN in a syncrepl cookie ("rid=000,csn=20261124040349.410506Z#...")
 * or of a bare CSN, in seconds since the epoch; 0 when there is none. */
double canopy_ldap_csn_time(const char *s, size_t n);

/* Whether the normalised, lower-case DN dn equals base or lies below it (the
 * separating comma must not be escaped). */
bool canopy_ldap_dn_under(const char *dn, const char *base);

#endif
