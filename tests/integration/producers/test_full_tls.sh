#!/usr/bin/env bash
# Full mode over LDAPS with the test CA: one paged scan, every event with the
# scan id, END_OF_SCAN, exit 0; a second scan after a delete emits the
# DELETE. TLS failures: no CA -> clear fatal error; plain LDAP without
# allow_insecure -> refused. A FULL_SCAN ControlEvent makes a syncrepl
# producer run a full scan.
. "$(dirname "$0")/common.sh"
TAIL_BIN=$1
L=CANOPY_TEST_LDAP_FOREST
URI=${L}_URI; LURI=${L}_LDAPS_URI; BASE=${L}_BASE; ADMIN=${L}_BINDDN; APW=${L}_PWFILE; CA=${L}_CA; CDN=${L}_CONNECTOR_DN; CPW=${L}_CONNECTOR_PWFILE
URI=${!URI} LURI=${!LURI} BASE=${!BASE} ADMIN=${!ADMIN} APW=${!APW} CA=${!CA} CDN=${!CDN} CPW=${!CPW}
lm() { ldapmodify -x -H "$URI" -D "$ADMIN" -y "$APW" "$@" >/dev/null || fail "ldapmodify"; }
conf() { # conf FILE MODE URI TLS [extra]
cat >"$1" <<YAML
connector:
  id: forest
mode: $2
ldap:
  uris: ["$3"]
  bind_dn: "$CDN"
  password_file: "$CPW"
  tls: $4
  base_dns: ["ou=People,$BASE", "ou=Groups,$BASE"]
  page_size: 3
  attributes: [cn, sn, uid, member]
${5:-}
$(yaml_state)
YAML
}
start_tail

conf "$T/plain.yaml" full "$URI" none
if "$BIN/canopy-producer-ldap" -c "$T/plain.yaml" >"$T/producer-plain.log" 2>&1; then fail "plain LDAP accepted"; fi
grep -q "plain LDAP is refused unless ldap.allow_insecure" "$T/producer-plain.log" || fail "no refusal message"
ok "plain LDAP refused without allow_insecure"

conf "$T/noca.yaml" full "$LURI" ldaps
if "$BIN/canopy-producer-ldap" -c "$T/noca.yaml" >"$T/producer-noca.log" 2>&1; then fail "unverified LDAPS accepted"; fi
grep -q "certificate could not be verified" "$T/producer-noca.log" || { cat "$T/producer-noca.log"; fail "no TLS message"; }
ok "LDAPS without the CA fails with a clear message"

conf "$T/full.yaml" full "$LURI" ldaps "  ca_file: \"$CA\""
"$BIN/canopy-producer-ldap" -c "$T/full.yaml" --set producer.id=full1 >"$T/producer-full1.log" 2>&1 || fail "full scan exit status"
ok "full scan over LDAPS with the test CA exited 0"
wait_for "full scan: END_OF_SCAN" 'len(scans()) == 1'
assert "full scan: 7 users, 2 groups, all with the scan id of the marker, paged by 3" \
  'len(ev(op="ADD", cls="user")) == 7 and len(ev(op="ADD", cls="group")) == 2 and all(e.get("scan_id") == scans()[0]["scan_id"] for e in E)'
lm <<LDIF
dn: cn=Alice Martin,ou=People,$BASE
changetype: delete
LDIF
n=$(nevents)
"$BIN/canopy-producer-ldap" -c "$T/full.yaml" --set producer.id=full2 >"$T/producer-full2.log" 2>&1 || fail "second full scan"
wait_for "second full scan: a new END_OF_SCAN" 'len(scans()) == 1' $n
assert "second full scan: the deleted user comes out as DELETE, the rest as MODIFY, one scan id" \
  'ev(op="DELETE", dn_has="Alice") and len(ev(op="MODIFY")) == 8 and len(set(e.get("scan_id") for e in E)) == 1' $n

# failover: the first URI is dead, the second answers
conf "$T/fo.yaml" full "ldap://127.0.0.1:1" starttls "  ca_file: \"$CA\""
sed -i "s|uris: \[\"ldap://127.0.0.1:1\"\]|uris: [\"ldap://127.0.0.1:1\", \"$URI\"]|" "$T/fo.yaml"
"$BIN/canopy-producer-ldap" -c "$T/fo.yaml" --set producer.id=fo >"$T/producer-fo.log" 2>&1 || fail "failover run"
grep -q "failed over to $URI" "$T/producer-fo.log" || { cat "$T/producer-fo.log"; fail "no failover"; }
ok "failover: first URI down, scan done through the second"

# FULL_SCAN control event to a syncrepl producer
conf "$T/sync.yaml" syncrepl "$URI" starttls "  ca_file: \"$CA\"
metrics:
  listen: \"127.0.0.1:0\""
n=$(nevents)
start_producer sr "$T/sync.yaml"
wait_log sr "refresh done, persisting"
"$TAIL_BIN" "$CANOPY_TEST_KAFKA_BOOTSTRAP" --fullscan forest || fail "sending FULL_SCAN"
wait_log sr "full scan requested by events_tail"
murl=$(grep -o 'metrics on http://[0-9.:]*/metrics' "$T/producer-sr.log" | head -1 | cut -d' ' -f3)
[ -n "$murl" ] || fail "no metrics endpoint"
m=$(curl -fsS "$murl") || fail "GET $murl"
printf '%s\n' "$m" | grep -q '^canopy_producer_events_total{op="modify"} [1-9]' || { printf '%s\n' "$m" | head -30; fail "events counter"; }
printf '%s\n' "$m" | grep -q '^canopy_producer_leader 1' || fail "leader gauge"
ok "metrics: /metrics serves events_total by op and the leader gauge"
wait_for "FULL_SCAN control event: the syncrepl producer ran a full scan" 'len(scans()) >= 2' $n
lm <<LDIF
dn: cn=Smith\, Bob,ou=People,$BASE
changetype: modify
replace: sn
sn: Smith-Jones
LDIF
wait_for "after the requested scan, persist goes on" 'ev(op="MODIFY", dn_has="Smith") and vals(ev(op="MODIFY", dn_has="Smith")[-1], "sn") == ["Smith-Jones"]' $n
# The position of a syncrepl checkpoint is the time of its cookie's CSN:
# the modify above moved it to about now.
pos_ok() {
        curl -fsS "$murl" | awk -v now="$(date +%s)" '/^canopy_producer_position_seconds /{ok = $2 > now - 600 && $2 < now + 60} END{exit !ok}'
}
for _ in $(seq 60); do pos_ok && break; sleep 0.5; done
pos_ok || { curl -fsS "$murl" | grep '^canopy_producer_'; fail "canopy_producer_position_seconds is not the time of the last cookie"; }
ok "metrics: canopy_producer_position_seconds follows the checkpointed cookie's CSN"
# a leader whose lease is taken stops publishing, then leads again once it expires
redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" SET 'canopy:{conn:forest}:lease' intruder PX 5000 >/dev/null
wait_log sr "lost the lease: stopped publishing"
ok "lease taken by another holder: the leader noticed and stopped publishing"
n=$(nevents)
lm <<LDIF
dn: cn=Smith\, Bob,ou=People,$BASE
changetype: modify
replace: sn
sn: Smith-Again
LDIF
wait_for "after the intruder's lease expired the producer led again and published the change" \
  'ev(op="MODIFY", dn_has="Smith") and vals(ev(op="MODIFY", dn_has="Smith")[-1], "sn") == ["Smith-Again"]' $n
[ "$(grep -c 'leader for connector' "$T/producer-sr.log")" -ge 2 ] || fail "did not take the lease back"
# SIGKILL during a bulk read with pipelined checkpoints (a batch every 2
# events), then a rerun: every object arrives (duplicates allowed)
n=$(nevents)
sed -e 's/id: forest$/id: forest-bulk/' "$T/full.yaml" >"$T/bulk.yaml"
printf 'checkpoint:\n  every: 2\n' >>"$T/bulk.yaml"
start_producer bulk1 "$T/bulk.yaml"
for ((i = 0; i < 300; i++)); do
        "$CHECK" "$EV" '[e for e in E if e["connector"] == "forest-bulk"]' $n && break
        sleep 0.05
done
kill -9 "$LAST_PID"; wait "$LAST_PID" 2>/dev/null
"$BIN/canopy-producer-ldap" -c "$T/bulk.yaml" --set producer.id=bulk2 >"$T/producer-bulk2.log" 2>&1 || fail "bulk rerun"
wait_for "SIGKILL during a bulk read: after the rerun all 8 objects were published and the scan ended" \
  'len(set(e["anchor"] for e in E if e["connector"] == "forest-bulk" and e["op"] in ("add", "modify"))) == 8 and scans("forest-bulk")' $n

pw=$(cat "$CPW")
if grep -qF -- "$pw" "$T"/producer-*.log; then fail "the LDAP password appears in a log"; fi
ok "the LDAP password never appears in any producer log"
echo "all full/tls checks passed"
