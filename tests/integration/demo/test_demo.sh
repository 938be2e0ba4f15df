#!/usr/bin/env bash
# canopy-demo on a small forest with awkward data (escaped and multi-valued
# RDNs, Unicode and right-to-left names, nested groups, an excluded OU):
# it converges, the dump matches the LDIF under the default rules, and no
# process or temp dir is left. Bad input (LDIF, rules) fails clearly and
# leaves nothing behind.
set -uo pipefail
bin=$1 here=$(dirname "$(readlink -f "$0")")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*" >&2; tail -n 60 "$out/demo.log" >&2; exit 1; }

leftovers() { # WORKDIR: nothing may run from it, and it must be gone
        local w=$1
        [ -n "$w" ] || fail "the demo did not print its workdir"
        [ ! -e "$w" ] || fail "workdir $w left behind"
        if pgrep -f -- "$w" >/dev/null; then
                pgrep -af -- "$w" >&2
                fail "processes of $w left running"
        fi
}

# 1. Bad input: an LDIF that does not parse, rules with an error.
printf 'this is not ldif\n' > "$out/bad.ldif"
"$bin/canopy-demo" --forest bad="$out/bad.ldif" --until-converged > "$out/demo.log" 2>&1
rc=$?
[ $rc = 2 ] || fail "bad LDIF: exit $rc, want 2"
grep -q "bad.ldif: line 1: an LDIF must start with a 'dn:' line" "$out/demo.log" || fail "bad LDIF message"
printf 'version: 1\nconnectors:\n  - id: small\n    kind: openldap\n    flows:\n      user:\n        - {target: displayName, expression: "Lefft([cn], 3)"}\n' > "$out/bad-rules.yaml"
"$bin/canopy-demo" --forest small="$here/small.ldif" --rules "$out/bad-rules.yaml" --until-converged > "$out/demo.log" 2>&1
rc=$?
[ $rc = 2 ] || fail "bad rules: exit $rc, want 2"
grep -q "bad-rules.yaml:7:" "$out/demo.log" || fail "bad rules: no file:line in the message"
# An LDIF that looks right but slapd refuses (unknown attribute): no server left.
printf 'dn: dc=oops,dc=test\nobjectClass: dcObject\nobjectClass: organization\ndc: oops\no: oops\nnoSuchAttribute: x\n\n' > "$out/refused.ldif"
"$bin/canopy-demo" --forest oops="$out/refused.ldif" --until-converged > "$out/demo.log" 2>&1
rc=$?
[ $rc = 2 ] || fail "refused LDIF: exit $rc, want 2"
leftovers "$(awk '/^workdir: /{print $2}' "$out/demo.log")"

# 2. The small forest converges; the dump matches the LDIF.
"$bin/canopy-demo" --forest small="$here/small.ldif" --workers 2 --until-converged --timeout 240 \
        --dump "$out/dump.json" > "$out/demo.log" 2>&1 || fail "canopy-demo did not converge"
leftovers "$(awk '/^workdir: /{print $2}' "$out/demo.log")"
d=$out/dump.json
jq -e . "$d" >/dev/null || fail "dump is not JSON"

users=$(jq -c '[.users[] | {upn: .userPrincipalName, dn: .displayName, mail: .mail}] | sort_by(.upn)' "$d")
want='[{"upn":"ahmad@canopy.test","dn":"أحمد عبدالله","mail":"ahmad@canopy.test"},{"upn":"alice@canopy.test","dn":"Alice Smith","mail":"alice@canopy.test"},{"upn":"plus@canopy.test","dn":"Plus+Sign, Tester","mail":"plus@canopy.test"},{"upn":"sean@canopy.test","dn":"Seán O'"'"'Brien, Jr","mail":"sean@canopy.test"},{"upn":"yamada@canopy.test","dn":"山田 太郎","mail":"yamada@canopy.test"},{"upn":"zoe@canopy.test","dn":"Zoë Müller","mail":"zoe@canopy.test"}]'
[ "$users" = "$want" ] || fail "users differ:
 got  $users
 want $want"
# Every user carries its anchor, and there is no duplicate.
[ "$(jq '[.users[].onPremisesImmutableId | select(. != null and . != "")] | unique | length' "$d")" = 6 ] || fail "immutable ids"

members() { # GROUP DISPLAYNAME -> sorted member names (users by mailNickname, groups by displayName)
        jq -r --arg g "$1" '
          (.users | map({key: .id, value: .mailNickname}) | from_entries) as $u
          | (.groups | map({key: .id, value: .displayName}) | from_entries) as $gr
          | .groups[] | select(.displayName == $g) | [.members[] | ($u[.] // $gr[.] // "?")] | sort | join(",")' "$d"
}
[ "$(jq '.groups | length' "$d")" = 2 ] || fail "want 2 groups, got $(jq -c '[.groups[].displayName]' "$d")"
[ "$(members 'Team, Alpha')" = "alice,plus,sean" ] || fail "Team, Alpha members: $(members 'Team, Alpha')"
[ "$(members 'Everyone')" = "Team, Alpha,ahmad,yamada,zoe" ] || fail "Everyone members: $(members 'Everyone')"
grep -q "exported to Entra" "$out/demo.log" || fail "no summary table"

# 3. --help names the @BASE@ token of AD LDIFs (it was eaten by the build).
"$bin/canopy-demo" --help | grep -qF '(@BASE@ in the' || fail "--help lost @BASE@"

# 4. Converged with an object Graph refused: a second person of the same
# forest with Alice's mail conflicts on userPrincipalName. --until-converged
# fails and says where to look.
{ cat "$here/small.ldif"; printf '\ndn: uid=alice2,ou=People,dc=small,dc=canopy,dc=test\nobjectClass: inetOrgPerson\nuid: alice2\ncn: Alice Other\nsn: Other\nmail: alice@canopy.test\n'; } > "$out/conflict.ldif"
"$bin/canopy-demo" --forest small="$out/conflict.ldif" --until-converged --timeout 240 > "$out/demo.log" 2>&1
rc=$?
[ $rc = 1 ] || fail "converged with a conflict: exit $rc, want 1"
grep -q "object(s) in the errors set: .*canopyctl errors -c .*worker.yaml list" "$out/demo.log" || fail "no errors-set message"
grep -q "converged with errors" "$out/demo.log" || fail "no 'converged with errors'"
grep -q "GRAPH_CONFLICT .*proxyAddresses=SMTP:alice@canopy.test" "$out/demo.log" || fail "the errors list was not printed"
leftovers "$(awk '/^workdir: /{print $2}' "$out/demo.log")"

# 5. --keep-running: the stack stays up with its coordinates printed (and in
# stack.env), and SIGTERM stops all of it.
"$bin/canopy-demo" --forest small="$here/small.ldif" --keep-running --no-live --timeout 240 > "$out/demo.log" 2>&1 &
demo=$!
for ((i = 0; i < 2400; i++)); do
        grep -q '^ready$' "$out/demo.log" && break
        kill -0 $demo 2>/dev/null || fail "--keep-running exited before 'ready'"
        sleep 0.1
done
grep -q '^ready$' "$out/demo.log" || { kill $demo; fail "--keep-running never said ready"; }
w=$(awk '/^workdir: /{print $2}' "$out/demo.log")
for k in "Graph emulator" "LDAP small" "Redis" "Kafka bootstrap" "Guard admin API"; do
        grep -q "^  $k " "$out/demo.log" || { kill $demo; fail "--keep-running does not print '$k'"; }
done
( . "$w/stack.env" && curl -sf --cacert "$CANOPY_TEST_GRAPH_CA" "$CANOPY_TEST_GRAPH_URL/_emulator/state" | jq -e '.users | length == 6' >/dev/null &&
  redis-cli -h 127.0.0.1 -p "$CANOPY_TEST_REDIS_PORT" ping | grep -q PONG ) || { kill $demo; fail "stack.env does not reach the running stack"; }
kill -TERM $demo
wait $demo
rc=$?
[ $rc = 143 ] || fail "--keep-running after SIGTERM: exit $rc, want 143"
leftovers "$w"
# 6. An AD forest (Samba AD DC, read with DirSync by a plain connector
# account): converges under the default AD rules; system objects stay out.
if [ "$(id -u)" = 0 ] && command -v samba >/dev/null; then
        ad=$here/../workers/forest-ad.ldif
        "$bin/canopy-demo" --ad corp="$ad" --until-converged --timeout 300 --dump "$out/ad.json" > "$out/demo.log" 2>&1 ||
                fail "canopy-demo --ad did not converge"
        leftovers "$(awk '/^workdir: /{print $2}' "$out/demo.log")"
        want=$(grep -c '^objectClass: user$' "$ad")
        [ "$(jq '.users | length' "$out/ad.json")" = "$want" ] || fail "AD: $(jq -c '[.users[].userPrincipalName]' "$out/ad.json"), want $want users"
        jq -e '[.groups[].displayName] | index("Engineers") != null and index("Domain Admins") == null and index("Administrators") == null' \
                "$out/ad.json" >/dev/null || fail "AD groups: $(jq -c '[.groups[].displayName]' "$out/ad.json")"
        jq -e '[.users[].userPrincipalName] | map(startswith("administrator") or startswith("krbtgt") or startswith("guest")) | any | not' \
                "$out/ad.json" >/dev/null || fail "AD built-in accounts exported"
        grep -q "seeded in AD corp" "$out/demo.log" || fail "AD summary line"
else
        echo "note: not root or no Samba: the --ad run is left out"
fi
echo "PASS: canopy-demo"
