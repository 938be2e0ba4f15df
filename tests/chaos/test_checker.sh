#!/usr/bin/env bash
# The convergence checker on hand-made data (tests/chaos/data/tiny-*): the
# converged state passes, and each kind of difference is caught and named.
set -uo pipefail
bin=$1 here=$(dirname "$(readlink -f "$0")")
d=$here/data
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
command -v jq >/dev/null || { echo "jq missing: skipped"; exit 77; }
fails=0
check() { # NAME WANT_RC PATTERN STATEFILE [extra args]
        local name=$1 want=$2 pat=$3 st=$4 rc
        shift 4
        "$bin/canopy-converge-check" --rules "$d/tiny-rules.yaml" --forest "a=$d/tiny-a.ldif" \
                --forest "b=$d/tiny-b.ldif" --state "$st" "$@" >"$t/out" 2>&1
        rc=$?
        if [ "$rc" != "$want" ] || ! grep -qE -- "$pat" "$t/out"; then
                echo "FAIL $name: rc $rc (want $want), pattern '$pat' in:"
                sed 's/^/    /' "$t/out"
                fails=$((fails + 1))
        else
                echo "ok   $name"
        fi
}
mut() { jq "$1" "$d/tiny-state.json" > "$t/s.json"; echo "$t/s.json"; }

check converged 0 '^CONVERGED$' "$d/tiny-state.json"
check missing-user 1 '^MISSING +user bob@x.test \(a: ' "$(mut 'del(.users[1]) | .groups[0].members -= ["u-bob"]')"
check missing-group 1 '^MISSING +group TeamA ' "$(mut 'del(.groups[0])')"
check extra-user 1 '^EXTRA +user dave@x.test \(id u-dave\)' \
        "$(mut '.users += [{"id":"u-dave","userPrincipalName":"dave@x.test","onPremisesImmutableId":"ZGF2ZQ=="}]')"
check extra-group 1 '^EXTRA +group old ' "$(mut '.groups += [{"id":"g-old","displayName":"Old","mailNickname":"old","members":[]}]')"
check duplicate-user 1 '^DUPLICATE +user ann@x.test: ids u-ann and u-ann2' \
        "$(mut '.users += [.users[0] | .id = "u-ann2" | .onPremisesImmutableId = "b3RoZXI="]')"
check duplicate-group 1 '^DUPLICATE +group inner: ids g-inner and g-inner2' "$(mut '.groups += [.groups[1] | .id = "g-inner2"]')"
check wrong-displayname 1 '^PROPERTY +user ann@x.test: displayName: want "Ann Lee", got "Ann L"' \
        "$(mut '.users[0].displayName = "Ann L"')"
check precedence 1 '^PROPERTY +user ann@x.test: jobTitle: want "Boss", got null' "$(mut '.users[0].jobTitle = null')"
check wrong-bool 1 'accountEnabled: want true, got false' "$(mut '.users[2].accountEnabled = false')"
check absent-prop 1 'surname: want "Jones", got \(absent\)' "$(mut 'del(.users[2].surname)')"
check stale-value 1 'city: want null, got "Paris"' "$(mut '.users[0].city = "Paris"')"
check collection 1 'businessPhones: want \["\+1 555 0100"\], got \[\]' "$(mut '.users[2].businessPhones = []')"
check group-prop 1 '^PROPERTY +group TeamA: description' "$(mut '.groups[0].description = "x"')"
check member-missing 1 '^MEMBERS +group TeamA: 1 member\(s\) missing \[bob@x.test\], 0 extra' \
        "$(mut '.groups[0].members -= ["u-bob"]')"
check member-extra 1 '^MEMBERS +group Inner: 0 member\(s\) missing, 1 extra \[carl@x.test\]' \
        "$(mut '.groups[1].members += ["u-carl"]')"
check nested-member 1 '^MEMBERS +group TeamA: 1 member\(s\) missing \[inner\]' "$(mut '.groups[0].members -= ["g-inner"]')"
check immutable-absent 1 '^IMMUTABLEID +user carl@x.test \(id u-carl\) has no onPremisesImmutableId' \
        "$(mut 'del(.users[2].onPremisesImmutableId)')"
check immutable-shared 1 '^IMMUTABLEID +users ann@x.test and carl@x.test share' \
        "$(mut '.users[2].onPremisesImmutableId = .users[0].onPremisesImmutableId')"
check immutable-wrong 1 'onPremisesImmutableId: want "EREREREREREREREREREREQ==", got "AAAA"' \
        "$(mut '.users[0].onPremisesImmutableId = "AAAA"')"
# ann is in both forests: the anchor of either record is right (the one
# exported first stays), any other is not.
check immutable-other-record 0 '^CONVERGED$' "$(mut '.users[0].onPremisesImmutableId = "mZmZmZmZmZmZmZmZmZmZmQ=="')"
check summary 1 '^missing 1, extra 1, duplicates 0, wrong properties 1, wrong memberships 1' \
        "$(mut 'del(.users[1]) | .users += [{"id":"x","userPrincipalName":"x@x.test","onPremisesImmutableId":"eA=="}] | .users[0].mail = "a@b"')"
check max-lines 1 '^MISSING +\.\.\. \(more not shown\)' "$(mut '.users = [] | .groups[].members = []')" --max-lines 1
# Input errors: exit 2 with a clear message.
printf 'uid: x\n' > "$t/bad.ldif"
"$bin/canopy-converge-check" --rules "$d/tiny-rules.yaml" --forest "a=$t/bad.ldif" --state "$d/tiny-state.json" >"$t/out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "bad.ldif:1: a record must start with 'dn:'" "$t/out"; then echo "ok   bad-ldif"; else
        echo "FAIL bad-ldif: rc $rc"; cat "$t/out"; fails=$((fails + 1)); fi
"$bin/canopy-converge-check" --rules "$d/tiny-rules.yaml" --forest "zz=$d/tiny-a.ldif" --state "$d/tiny-state.json" >"$t/out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "no connector 'zz'" "$t/out"; then echo "ok   unknown-connector"; else
        echo "FAIL unknown-connector: rc $rc"; cat "$t/out"; fails=$((fails + 1)); fi
echo '{"users": 3}' > "$t/bad.json"
"$bin/canopy-converge-check" --rules "$d/tiny-rules.yaml" --forest "a=$d/tiny-a.ldif" --state "$t/bad.json" >"$t/out" 2>&1
rc=$?
if [ $rc = 2 ]; then echo "ok   bad-state"; else echo "FAIL bad-state: rc $rc"; fails=$((fails + 1)); fi
[ $fails = 0 ] && echo "PASS: checker" || { echo "FAILED: $fails"; exit 1; }
