#!/usr/bin/env bash
# Lost change (found by the long chaos run): people created right after a
# producer's initial full pass, while the workers have not yet applied that
# pass's END_OF_SCAN marker. Their add events (persist phase, no scan id, in
# other partitions) may be applied before the marker, whose sweep then
# deletes every record "not seen by the scan". Nothing may be lost: every
# person must reach Entra (docs/RELIABILITY.md).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/chaos_lib.sh"
CANOPY_CHAOS_USERS=${CANOPY_CHAOS_USERS_RACE:-300} CANOPY_CHAOS_WORKERS=0 chaos_init "$1"
CHAOS_TIMEOUT=${CANOPY_CHAOS_TIMEOUT:-120}
chaos_start # producers only: no worker yet
for n in "${CHAOS_FORESTS[@]}"; do
        for ((i = 0; i < 300; i++)); do
                grep -q "full pass .* done" "$T/producer-$n.log" 2>/dev/null && break
                sleep 0.2
        done
        grep -q "full pass .* done" "$T/producer-$n.log" || chaos_fail "no full pass in producer $n"
done
# 40 new people per forest after the pass (so in the persist phase).
for n in "${CHAOS_FORESTS[@]}"; do
        b=$(_lvar "$n" BASE)
        for ((i = 0; i < 40; i++)); do
                printf 'dn: uid=late%02d%s,ou=People,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: late%02d%s\ncn: Late %d\nsn: Late\nmail: late%02d.%s@canopy.test\n\n' \
                        "$i" "$n" "$b" "$i" "$n" "$i" "$i" "$n"
        done >"$T/late-$n.ldif"
        _chaos_ldapmod "$n" "$T/late-$n.ldif" || chaos_fail "ldapadd in $n"
done
sleep 3 # the producers publish them
CHAOS_WORKERS=2
chaos_start_worker 1
chaos_start_worker 2
chaos_wait_converged "people added after the full pass"
chaos_report
echo "PASS: chaos scan race"
