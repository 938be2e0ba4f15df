#!/usr/bin/env bash
# The deletion guard with real workers: N workers race the deletes of a
# whole OU against a threshold; the emulator receives exactly the threshold,
# the rest is held; a rejection sends none until a full scan ends, an
# approval sends exactly them; revoked Graph credentials quarantine the pipeline.
#   test_guard_e2e.sh BIN_DIR [USERS THRESHOLD WORKERS DELETES]
#   (default 2100 500 4 2000: four workers race 2,000 deletes against the
#   default threshold of 500)
set -uo pipefail
bin=$1 users=${2:-2100} limit=${3:-500} workers=${4:-4} n=${5:-2000}
out=$(mktemp -d)
demo_pid=
cleanup() {
        [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
        rm -rf "$out"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -n 30 "$out/demo.log" >&2; [ -n "${T:-}" ] && tail -n 20 "$T"/worker-1.log "$T/guard.log" >&2; exit 1; }

"$bin/canopy-genforest" --base dc=g,dc=canopy,dc=test --users "$users" --groups 1 --large 0 > "$out/g.ldif"
"$bin/canopy-demo" --forest g="$out/g.ldif" --workers "$workers" --no-live --keep-running --timeout 400 \
        --guard guard.threshold.count="$limit" --guard guard.credentials_failing=3s --guard guard.ldap_failing=3s > "$out/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 600); do grep -q '^ready$' "$out/demo.log" && break; kill -0 $demo_pid 2>/dev/null || fail "demo exited"; sleep 1; done
grep -q '^ready$' "$out/demo.log" || fail "stack not ready"
T=$(awk '/^workdir: /{print $2}' "$out/demo.log")
. "$T/stack.env"
ca=$CANOPY_TEST_GRAPH_CA url=$CANOPY_TEST_GRAPH_URL
emu() { curl -sf --cacert "$ca" "$url$1"; }
nusers() { emu /_emulator/state | jq '.users | length'; }
ndeleted() { emu /_emulator/stats | jq '.deletes'; }
status() { "$bin/canopyctl" guard status; }
ldapmod() { ldapmodify -x -c -H "$CANOPY_TEST_LDAP_G_URI" -D "$CANOPY_TEST_LDAP_G_BINDDN" -y "$CANOPY_TEST_LDAP_G_PWFILE" >/dev/null 2>&1; }
wait_until() { # DESCRIPTION SECONDS CMD...
        local what=$1 s=$2 i
        shift 2
        for ((i = 0; i < s * 2; i++)); do "$@" && return 0; sleep 0.5; done
        fail "timed out: $what"
}
[ "$(nusers)" = "$users" ] || fail "initial sync: $(nusers) users, want $users"
dns=$(grep -a '^dn: uid=\|^dn:: ' "$out/g.ldif" | grep -v 'ou=Groups' | tail -n +1)

# Phase 1: delete n people at once. Exactly `limit` deletes reach Graph;
# the next one is held and the pipeline is quarantined (every export
# pauses, so the rest waits in Kafka, uncommitted).
[ "$n" -gt "$limit" ] && [ "$n" -lt "$users" ] || fail "need limit < deletes < users"
base_deleted=$(ndeleted)
awk -v n=$n 'BEGIN{RS=""} /objectClass: inetOrgPerson/ && c < n {split($0, l, "\n"); print l[1]; print "changetype: delete\n"; c++}' "$out/g.ldif" | ldapmod
quarantined() { status | grep -q "state: *QUARANTINED"; }
wait_until "quarantine" 240 quarantined
status | grep -q "reason: *deletion-threshold" || fail "reason: $(status)"
held() { status | awk '/held deletes:/{print $3}'; }
some_held() { [ "$(held)" -ge 1 ]; }
wait_until "held deletes" 60 some_held
sleep 5
got=$(( $(ndeleted) - base_deleted ))
[ "$got" = "$limit" ] || fail "the emulator received $got deletes, the threshold is $limit"

# Reject: none of the held deletes is sent, and the pipeline stays
# quarantined until a full scan of g ends. The scan finds the people still
# deleted (nothing was restored), so they are decided again in a new
# window: the next `limit` go out and the rest quarantines again.
qid() { status | awk '/quarantine id:/{print $3}'; }
q1=$(qid)
"$bin/canopyctl" guard reject > "$out/reject.out" || fail "reject: $(cat "$out/reject.out")"
grep -q "^rejected: [1-9][0-9]* held deletes not sent; quarantined until a full scan of any connector ends" "$out/reject.out" ||
        fail "reject: $(cat "$out/reject.out")"
sleep 5
status | grep -q "state: *QUARANTINED" || fail "lifted before any full scan: $(status)"
status | grep -q "rejected: .*waiting for a full scan of any connector" || fail "status after reject: $(status)"
got=$(( $(ndeleted) - base_deleted ))
[ "$got" = "$limit" ] || fail "after reject: $got deletes, want $limit"
"$bin/canopyctl" guard full-scan g | grep -q "^full scan requested for g" || fail "full-scan g"
requarantined() { q=$(qid); [ -n "$q" ] && [ "$q" != "$q1" ] && [ "$(held)" -ge 1 ]; }
wait_until "the full scan lifted the quarantine and the rest crossed the threshold again" 240 requarantined
sleep 3
got=$(( $(ndeleted) - base_deleted ))
[ "$got" = $((2 * limit)) ] || fail "after the full scan: $got deletes, want $((2 * limit))"
grep -q "full scan .* of g ended: the rejected quarantine is lifted" "$T"/worker-*.log || fail "no lift in the worker logs"

# Approve: what is held now goes out, the window restarts, and the rest of
# the deletes follow, at most `limit` per approval: each time the rest
# crosses the threshold again, the pipeline is quarantined again, and the
# operator approves again.
all_sent() { [ $(( $(ndeleted) - base_deleted )) = $n ]; }
sent_or_quarantined() { all_sent || { quarantined && [ "$(held)" -ge 1 ]; }; }
approvals=0
while ! all_sent; do
        before=$(( $(ndeleted) - base_deleted )) h=$(held)
        "$bin/canopyctl" guard approve | grep -q "^approved: " || fail "approve"
        approvals=$((approvals + 1))
        [ $approvals -le $((n / limit + 2)) ] || fail "still not every delete sent after $approvals approvals"
        wait_until "the rest sent, or quarantined again" 240 sent_or_quarantined
        all_sent && break
        sleep 3
        after=$(( $(ndeleted) - base_deleted ))
        # One approval lets through what was held plus at most one window.
        [ $((after - before)) -le $((h + limit)) ] || fail "one approval sent $((after - before)) deletes ($h held, limit $limit)"
done
echo "every delete sent after the reject, one full scan and $approvals approval(s)"
sleep 3
[ $(( $(ndeleted) - base_deleted )) = $n ] || fail "more deletes than allowed"
[ "$(nusers)" = $((users - n)) ] || fail "$(nusers) users left in Entra, want $((users - n))"
status | grep -q "state: *running" || fail "still quarantined: $(status)"

# Phase 3: revoked credentials quarantine the pipeline.
curl -sf --cacert "$ca" -X POST "$url/_emulator/revoke?client=$CANOPY_TEST_GRAPH_CLIENT_ID" > /dev/null || fail "revoke"
printf 'dn: %s\nchangetype: modify\nreplace: description\ndescription: touched\n' \
        "$(awk '/^dn: cn=.*ou=Groups/{print substr($0, 5); exit}' "$out/g.ldif")" | ldapmod
creds() { status | grep -q "reason: *credentials"; }
wait_until "credentials quarantine" 120 creds

# Phase 4: LDAP binds refused for the connector quarantine the pipeline.
curl -sf --cacert "$ca" -X POST "$url/_emulator/unrevoke?client=$CANOPY_TEST_GRAPH_CLIENT_ID" > /dev/null || fail "unrevoke"
"$bin/canopyctl" guard approve > /dev/null || fail "approve after credentials"
ldappasswd -x -H "$CANOPY_TEST_LDAP_G_URI" -D "$CANOPY_TEST_LDAP_G_BINDDN" -y "$CANOPY_TEST_LDAP_G_PWFILE" \
        -s "rotated-$RANDOM-password" "$CANOPY_TEST_LDAP_G_CONNECTOR_DN" > /dev/null || fail "ldappasswd"
ppid_=$(awk '$1 == "producer.g" {print $2}' "$T/.harness/procs")
[ -n "$ppid_" ] || fail "producer pid"
kill -KILL "$ppid_"
"$bin/canopy-producer-ldap" -c "$T/producer-g.yaml" >> "$T/producer-g-2.log" 2>&1 &
p2=$!
ldapq() { status | grep -q "reason: *ldap-bind"; }
wait_until "LDAP bind quarantine" 120 ldapq
kill "$p2"; wait "$p2" 2>/dev/null
grep -q "bind refused" "$T/producer-g-2.log" || fail "the producer did not say the bind was refused"
echo "PASS: guard e2e ($workers workers, $users users, $n deletes, threshold $limit)"
