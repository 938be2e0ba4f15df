#!/usr/bin/env bash
# Lost change, deterministic (found by chaos_faults phase 2): a group names
# a member by DN before that member exists (the usual order of a full pass:
# groups are read before some of their members), the member appears, then
# leaves the group. The removal must reach Entra (docs/RELIABILITY.md).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/chaos_lib.sh"
CANOPY_CHAOS_USERS=${CANOPY_CHAOS_USERS_ORDER:-20} chaos_init "$1"
CHAOS_TIMEOUT=${CANOPY_CHAOS_TIMEOUT:-90}
chaos_start
chaos_wait_converged "initial sync"
f=north b=$(_lvar north BASE)
u="uid=late,ou=People,$b" g="cn=Early Group,ou=Groups,$b"
anyone=$(awk '/^dn: uid=[^,]*,ou=People,/ {print substr($0, 5); exit}' "$T/$f.ldif")
# 1. the group, naming a person who does not exist yet
printf 'dn: %s\nchangetype: add\nobjectClass: groupOfNames\ncn: Early Group\nmember: %s\nmember: %s\n\n' "$g" "$u" "$anyone" >"$T/1.ldif"
_chaos_ldapmod "$f" "$T/1.ldif" || chaos_fail "add group"
chaos_wait_converged "group with a member not yet there"
# 2. the person appears
printf 'dn: %s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: late\ncn: Late Person\nsn: Person\nmail: late@canopy.test\n\n' "$u" >"$T/2.ldif"
_chaos_ldapmod "$f" "$T/2.ldif" || chaos_fail "add person"
chaos_wait_converged "member appears"
# 3. the person leaves the group
printf 'dn: %s\nchangetype: modify\ndelete: member\nmember: %s\n\n' "$g" "$u" >"$T/3.ldif"
_chaos_ldapmod "$f" "$T/3.ldif" || chaos_fail "remove member"
chaos_wait_converged "member removed"
chaos_report
echo "PASS: chaos member order"
