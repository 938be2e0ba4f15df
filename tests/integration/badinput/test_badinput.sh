#!/usr/bin/env bash
# Bad input (docs/RELIABILITY.md):
#  1. awkward LDAP values (gen_odd.py): Unicode and right-to-left names,
#     escaped and multi-valued RDNs, binary data, 10,000 values of one
#     attribute, a group of 10,000 member values, and values built to inject
#     into OData or LDAP filters (quotes, parentheses, asterisks, $filter):
#     everything syncs exactly as canopy-converge-check computes, and the
#     groups a broken quoting would hit are untouched;
#  2. invalid UTF-8 written to LDAP: refused by slapd, or synced;
#  3. malformed, truncated, unknown-fingerprint and oversize events injected
#     into the changes topic: each lands in the dlq topic with a reason, and
#     a later good change still reaches the emulator.
set -uo pipefail
here=$(dirname "$(readlink -f "$0")")
. "$here/../../chaos/chaos_lib.sh"
CANOPY_CHAOS_LONG= chaos_init "$1"
CHAOS_TIMEOUT=${CANOPY_BADINPUT_TIMEOUT:-240}
CHAOS_FORESTS=(odd)
python3 "$here/gen_odd.py" dc=odd,dc=canopy,dc=test >"$T/odd.ldif" || chaos_fail "gen_odd.py"
CHAOS_ATTRS_OVERRIDE="${CHAOS_ATTRS%]}, jpegPhoto]"
chaos_start

# 1. The awkward forest converges.
chaos_wait_converged "awkward LDAP values"
st=$T/state.json
chaos_emu GET /_emulator/state >"$st" || chaos_fail "state"
grp() { jq -c --arg n "$1" '.groups[] | select(.mailNickname == $n) | {description, n: (.members | length)}' "$st"; }
[ "$(grp All)" = '{"description":"victim","n":1}' ] || chaos_fail "group All was touched: $(grp All)"
[ "$(grp x)" = '{"description":"victim 2","n":1}' ] || chaos_fail "group x was touched: $(grp x)"
[ "$(grp "x'ormailNicknameeq'All")" = '{"description":"inject","n":2}' ] ||
        chaos_fail "injection group: $(grp "x'ormailNicknameeq'All")"
[ "$(jq '[.groups[] | select(.displayName == "Big, Group") | .members | length] | .[0]' "$st")" = 9 ] ||
        chaos_fail "Big, Group should hold the 9 people (10,000 member values, the rest never exist)"
[ "$(jq -r '.users[] | select(.mailNickname == "inject1") | .displayName' "$st")" = "x' or 1 eq 1 or 'y" ] ||
        chaos_fail "inject1 displayName"
chaos_log "injection values synced as plain values; groups All and x untouched; Big, Group has its 9 members"

# 2. Invalid UTF-8 in a directoryString attribute.
printf 'dn: uid=badutf8,ou=People,dc=odd,dc=canopy,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: badutf8\ncn: Bad UTF8\nsn: UTF8\nmail: badutf8@canopy.test\ndisplayName:: %s\n\n' \
        "$(printf 'Bad \xff\xfe name' | base64 -w0)" >"$T/badutf8.ldif"
if _chaos_ldapmod odd "$T/badutf8.ldif" 2>"$T/badutf8.err"; then
        chaos_log "slapd accepted an invalid UTF-8 displayName: it must sync like the rest"
else
        chaos_log "slapd refuses invalid UTF-8 in a directoryString ($(tail -n 1 "$T/changes-errors.log")): nothing reaches Canopy"
fi

# 3. Bad events in the changes topic.
B=$CANOPY_TEST_KAFKA_BOOTSTRAP
dlq_count() { kcat -b "$B" -C -t "${PREFIX}dlq" -e -q -f 'x\n' 2>/dev/null | wc -l; }
before=$(dlq_count)
kcat -b "$B" -C -t "${PREFIX}changes" -p 0 -o beginning -c 1 -e -q -f '%s' >"$T/good.avro" 2>/dev/null
[ -s "$T/good.avro" ] || kcat -b "$B" -C -t "${PREFIX}changes" -o beginning -c 1 -e -q -f '%s' >"$T/good.avro"
[ -s "$T/good.avro" ] || chaos_fail "no event to truncate"
head -c $(($(stat -c %s "$T/good.avro") / 2)) "$T/good.avro" >"$T/truncated.avro"
printf 'this is not avro at all' >"$T/garbage.avro"
{ printf '\xc3\x01\x01\x02\x03\x04\x05\x06\x07\x08'; tail -c +11 "$T/good.avro"; } >"$T/unknown-fp.avro"
{ head -c 10 "$T/good.avro"; head -c $((4 * 1024 * 1024 + 4096)) /dev/zero | tr '\0' 'x'; } >"$T/oversize.avro"
sent=()
for f in garbage truncated unknown-fp oversize; do
        if kcat -b "$B" -P -t "${PREFIX}changes" -k "bad-$f" -X message.max.bytes=16000000 "$T/$f.avro" 2>"$T/kcat-$f.err" &&
                ! grep -qi "error\|fail" "$T/kcat-$f.err"; then
                sent+=("$f")
        else
                # The dev broker takes 16 MB: a refusal is a broken test
                # set-up, never a pass (every kind must reach the workers).
                chaos_fail "could not produce the bad event $f: $(head -c 200 "$T/kcat-$f.err")"
        fi
done
[ ${#sent[@]} = 4 ] || chaos_fail "produced ${#sent[*]} of the 4 bad events"
# A good change after them.
printf 'dn: uid=rtl1,ou=People,dc=odd,dc=canopy,dc=test\nchangetype: modify\nreplace: displayName\ndisplayName: After the bad events\n\n' \
        >"$T/good.ldif"
_chaos_ldapmod odd "$T/good.ldif" || chaos_fail "good change"
chaos_wait_converged "after bad events"
want=${#sent[@]}
for ((i = 0; i < 60; i++)); do
        [ $(($(dlq_count) - before)) -ge $want ] && break
        sleep 1
done
got=$(($(dlq_count) - before))
# one line per dead letter: key, then the record with non-printable bytes as '.'
kcat -b "$B" -C -t "${PREFIX}dlq" -e -q -f '\n@@DLQ@@%k\t%s' >"$T/dlq.raw" 2>/dev/null
python3 -c 'import re,sys
for r in open(sys.argv[1], "rb").read().split(b"\n@@DLQ@@")[1:]:
    t = re.sub(rb"[^\x20-\x7e\t]", b".", r if len(r) < 700 else r[:200] + b" ... " + r[-400:])
    print(t.decode())' "$T/dlq.raw" >"$T/dlq.txt"
cat "$T/dlq.txt"
for f in "${sent[@]}"; do
        grep -q "^bad-$f" "$T/dlq.txt" && continue
        chaos_fail "no dead letter for bad-$f (workers: $(grep -h 'canopy.dlq\|dead letter' "$T"/worker-*.log | tail -2 | cut -c1-200))"
done
[ "$got" -ge "$want" ] || chaos_fail "dlq: $got new dead letters, want $want"
grep "bad-truncated" "$T/dlq.txt" | grep -qi "trunc" || chaos_fail "truncated event: no reason"
grep "bad-unknown-fp" "$T/dlq.txt" | grep -qi "schema\|fingerprint" || chaos_fail "unknown fingerprint: no reason"
grep "bad-oversize" "$T/dlq.txt" | grep -qi "large\|size\|cap" || chaos_fail "oversize event: no reason"
chaos_log "dead letters: $got (${sent[*]}), each with its reason"
chaos_report
echo "PASS: bad input"
