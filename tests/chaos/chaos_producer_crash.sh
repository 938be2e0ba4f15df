#!/usr/bin/env bash
# Chaos, deterministic: a producer crashes (SIGKILL) with a group change
# read from LDAP but not yet delivered to Kafka (Produce requests failing),
# then restarts. Nothing may be lost: the restart re-reads the change and
# the member removal and addition reach the emulator (docs/RELIABILITY.md).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/chaos_lib.sh"
CANOPY_CHAOS_USERS=${CANOPY_CHAOS_USERS_CRASH:-40} chaos_init "$1"
CHAOS_TIMEOUT=${CANOPY_CHAOS_TIMEOUT:-120}
chaos_start
chaos_wait_converged "initial sync"

f=south b=$(_lvar south BASE)
g=$(awk '/^dn: cn=[^\\]*,ou=Groups,/ {print substr($0, 5); exit}' "$T/$f.ldif")
old=$(awk -v g="dn: $g" '$0 == g {on=1; next} on && /^member: / {print substr($0, 9); exit} /^$/ {on=0}' "$T/$f.ldif")
new=$(awk -v g="dn: $g" '$0 == g {on=1; next} on && /^member: / {m[substr($0, 9)]=1} /^$/ {on=0}
        /^dn: uid=[^,]*,ou=People,/ {u[++n]=substr($0, 5)}
        END {for (i = n; i >= 1; i--) if (!(u[i] in m)) {print u[i]; exit}}' "$T/$f.ldif")
[ -n "$g" ] && [ -n "$old" ] || chaos_fail "no group/member to change"
newuser=
if [ -z "$new" ]; then # every person is a member already: add one
        new="uid=crashnew,ou=People,$b"
        newuser=$(printf 'dn: %s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: crashnew\ncn: Crash New\nsn: New\nmail: crashnew@canopy.test\n\n' "$new")
fi
chaos_log "group '$g': remove '$old', add '$new', while Produce requests fail"

harness_kafka_ctl errors Produce NOT_ENOUGH_REPLICAS 100000 >/dev/null || chaos_fail "devkafka errors"
{ [ -z "$newuser" ] || printf '%s\n\n' "$newuser"; printf 'dn: %s\nchangetype: modify\ndelete: member\nmember: %s\n-\nadd: member\nmember: %s\n\n' "$g" "$old" "$new"; } >"$T/g.ldif"
_chaos_ldapmod "$f" "$T/g.ldif" || chaos_fail "ldapmodify"
sleep 5 # the producer has read the change and is retrying its delivery
chaos_kill "producer.$f" KILL
harness_kafka_ctl clear-errors Produce >/dev/null
chaos_start_producer "$f"
chaos_wait_converged "producer SIGKILL with an undelivered group change"
chaos_report
echo "PASS: chaos producer crash"
