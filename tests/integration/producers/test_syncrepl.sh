#!/usr/bin/env bash
# Producer against slapd in syncrepl mode: initial full pass, persist (add,
# modify, rename, move, move out of scope, delete, member add/remove as
# one-value deltas), chunking of a 12000-member group, awkward values,
# SIGKILL mid-stream with no loss, slapd restart mid-stream, standby
# take-over, a too-old cookie falling back to a present phase with deletes.
. "$(dirname "$0")/common.sh"
. "$HERE/../../harness/lib.sh"
TAIL_BIN=$1
L=CANOPY_TEST_LDAP_FOREST
URI=${L}_URI; BASE=${L}_BASE; ADMIN=${L}_BINDDN; APW=${L}_PWFILE; CA=${L}_CA; CDN=${L}_CONNECTOR_DN; CPW=${L}_CONNECTOR_PWFILE
URI=${!URI} BASE=${!BASE} ADMIN=${!ADMIN} APW=${!APW} CA=${!CA} CDN=${!CDN} CPW=${!CPW}
lm() { ldapmodify -x -H "$URI" -D "$ADMIN" -y "$APW" "$@" >/dev/null || fail "ldapmodify"; }

cat >"$T/p.yaml" <<YAML
connector:
  id: forest
mode: syncrepl
ldap:
  uris: ["$URI"]
  bind_dn: "$CDN"
  password_file: "$CPW"
  tls: starttls
  ca_file: "$CA"
  base_dns: ["ou=People,$BASE", "ou=Groups,$BASE"]
  attributes: [cn, sn, uid, mail, displayName, member, jpegPhoto, description]
  backoff_min: 200ms
  backoff_max: 2s
$(yaml_state)
checkpoint:
  every: 500
YAML

start_tail
start_producer p1 "$T/p.yaml"
P1=$LAST_PID

# ---- initial refresh: a full pass with a scan id and an end marker
wait_for "initial pass ends with END_OF_SCAN" 'len(scans()) == 1'
assert "initial pass: 7 users and 2 groups, outsider out of scope" \
  'len(set(e["anchor"] for e in ev(op="ADD", cls="user"))) == 7 and len(set(e["anchor"] for e in ev(op="ADD", cls="group"))) == 2 and not ev(dn_has="outsider")'
assert "every initial event carries the scan id of the end marker" \
  'all(e.get("scan_id") == scans()[0]["scan_id"] for e in ev(op="ADD"))'
assert "anchors are 16-byte entryUUIDs" 'all(len(e["anchor"]) == 32 for e in ev(op="ADD"))'
assert "escaped DN kept (comma)" 'ev(op="ADD", dn_has="cn=Smith\\, Bob")'
assert "escaped DN kept (plus, quotes)" 'ev(op="ADD", dn_has="cn=Carol\\+Dan") and ev(op="ADD", dn_has="\\\"Dave\\\"")'
assert "Unicode and right-to-left names" 'vals(ev(op="ADD", dn_has="فريد")[0], "cn") == ["فريد الحسن"] and vals(ev(op="ADD", dn_has="דינה")[0], "sn") == ["כהן"]'
assert "invalid UTF-8 value travels as binary" 'attr(ev(op="ADD", dn_has="Alice")[0], "jpegphoto")["binary"] and vals(ev(op="ADD", dn_has="Alice")[0], "jpegphoto") == [{"hex": "ffd8ffe00010c32880fe"}]'
assert "12000-member group split in chunks of <= 5000" \
  'sorted((e["chunk"], e["nchunks"]) for e in ev(dn_has="cn=Big")) == [(0,3),(1,3),(2,3)] and sum(len(vals(e,"member"))+len(added(e,"member")) for e in ev(dn_has="cn=Big")) == 12000 and all(len(vals(e,"member"))+len(added(e,"member")) <= 5000 for e in ev(dn_has="cn=Big"))'
wait_log p1 "refresh done, persisting"

# ---- persist: add, modify, rename, move, member deltas, delete
n=$(nevents)
lm <<LDIF
dn: cn=Zoé Nouveau,ou=People,$BASE
changetype: add
objectClass: inetOrgPerson
cn: Zoé Nouveau
sn: Nouveau
uid: zoe
LDIF
wait_for "persist: add" 'ev(op="ADD", dn_has="Zoé Nouveau") and ev(op="ADD", dn_has="Zoé Nouveau")[0]["complete"] and not ev(op="ADD", dn_has="Zoé Nouveau")[0].get("scan_id")' $n
ZOE=$("$CHECK" --print "$EV" 'ev(op="ADD", dn_has="Zoé Nouveau")[0]["anchor"]' $n | tr -d '"')
n=$(nevents)
lm <<LDIF
dn: cn=Zoé Nouveau,ou=People,$BASE
changetype: modify
replace: description
description: changed once
LDIF
wait_for "persist: modify" "ev(op='MODIFY', anchor='$ZOE') and vals(ev(op='MODIFY', anchor='$ZOE')[0], 'description') == ['changed once']" $n
n=$(nevents)
lm <<LDIF
dn: cn=Zoé Nouveau,ou=People,$BASE
changetype: modrdn
newrdn: cn=Zoé\, Renamed
deleteoldrdn: 0
LDIF
wait_for "persist: rename keeps the anchor, carries prev_dn" "ev(op='RENAME', anchor='$ZOE') and ev(op='RENAME', anchor='$ZOE')[0]['prev_dn'].startswith('cn=Zo') and 'Renamed' in ev(op='RENAME', anchor='$ZOE')[0]['dn']" $n
n=$(nevents)
lm <<LDIF
dn: cn=Zoé\, Renamed,ou=People,$BASE
changetype: modrdn
newrdn: cn=Zoé\, Renamed
deleteoldrdn: 1
newsuperior: ou=Groups,$BASE
LDIF
wait_for "persist: move between OUs is a RENAME" "ev(op='RENAME', anchor='$ZOE') and ev(op='RENAME', anchor='$ZOE')[-1]['dn'].lower().endswith('ou=groups,$BASE'.lower())" $n
n=$(nevents)
lm <<LDIF
dn: cn=Staff,ou=Groups,$BASE
changetype: modify
add: member
member: cn=Zoé\, Renamed,ou=Groups,$BASE
LDIF
wait_for "persist: one member added = one added value" "[ (nadded(e,'member'), nremoved(e,'member')) for e in ev(op='MODIFY', dn_has='cn=Staff')] == [([norm('cn=Zoé\\\\, Renamed,ou=Groups,$BASE')], [])]" $n
n=$(nevents)
lm <<LDIF
dn: cn=Staff,ou=Groups,$BASE
changetype: modify
delete: member
member: cn=Smith\, Bob,ou=People,$BASE
LDIF
wait_for "persist: one member removed = one removed value" "[ (nadded(e,'member'), nremoved(e,'member')) for e in ev(op='MODIFY', dn_has='cn=Staff')] == [([], [norm('cn=Smith\\\\, Bob,ou=People,$BASE')])]" $n
n=$(nevents)
lm <<LDIF
dn: cn=Big,ou=Groups,$BASE
changetype: modify
add: member
member: uid=newbie,ou=Elsewhere,$BASE
LDIF
wait_for "persist: one member added to a 12000-member group = one event, one value" "len(ev(dn_has='cn=Big')) == 1 and added(ev(dn_has='cn=Big')[0],'member') == ['uid=newbie,ou=Elsewhere,$BASE'] and ev(dn_has='cn=Big')[0]['nchunks'] == 1" $n
n=$(nevents)
lm <<LDIF
dn: cn=Zoé\, Renamed,ou=Groups,$BASE
changetype: modrdn
newrdn: cn=Zoé\, Renamed
deleteoldrdn: 1
newsuperior: ou=Other,$BASE
LDIF
wait_for "persist: move out of scope is a DELETE with the anchor" "ev(op='DELETE', anchor='$ZOE')" $n
n=$(nevents)
lm <<LDIF
dn: cn=Ève Müller-Łukasiewicz,ou=People,$BASE
changetype: delete
LDIF
wait_for "persist: delete carries the anchor and last DN" "ev(op='DELETE', dn_has='Ève') and len(ev(op='DELETE', dn_has='Ève')[0]['anchor']) == 32" $n

# ---- SIGKILL mid-stream, restart: no loss
n=$(nevents)
{ for i in $(seq 1 150); do printf 'dn: uid=k%03d,ou=People,%s\nchangetype: add\nobjectClass: inetOrgPerson\ncn: k%03d\nsn: k\nuid: k%03d\n\n' $i "$BASE" $i $i; done; } >"$T/batch.ldif"
lm -f "$T/batch.ldif" &
LMP=$!
"$CHECK" "$EV" 'len(ev(op="ADD", dn_has="uid=k0")) >= 5' $n >/dev/null
for ((i = 0; i < 300; i++)); do "$CHECK" "$EV" 'len(ev(op="ADD", dn_has="uid=k")) >= 20' $n && break; sleep 0.1; done
kill -9 $P1
wait $LMP
ok "producer SIGKILLed while 150 adds were in flight"
start_producer p1b "$T/p.yaml"
P1=$LAST_PID
wait_for "after restart every one of the 150 users arrived (duplicates allowed)" \
  'len(set(e["dn"] for e in ev(op="ADD", dn_has="uid=k"))) == 150' $n

# ---- slapd restart mid-stream
harness_restart_slapd forest || fail "restart slapd"
n=$(nevents)
lm <<LDIF
dn: cn=After Restart,ou=People,$BASE
changetype: add
objectClass: inetOrgPerson
cn: After Restart
sn: R
LDIF
wait_for "slapd restarted: producer reconnected and published the next change" 'ev(op="ADD", dn_has="After Restart")' $n

# ---- standby takes over
start_producer p2 "$T/p.yaml"
P2=$LAST_PID
wait_log p2 "standby: waiting for the lease"
kill -9 $P1
wait_log p2 "leader for connector"
n=$(nevents)
lm <<LDIF
dn: cn=After Restart,ou=People,$BASE
changetype: modify
replace: description
description: by the standby
LDIF
wait_for "standby took over and published" 'ev(op="MODIFY", dn_has="After Restart") and ev(op="MODIFY", dn_has="After Restart")[-1]["producer"] == "p2"' $n
kill $P2; wait $P2 2>/dev/null

# ---- deletes while the producer is stopped, cookie within the session log:
# the server names them in a syncIdSet (refreshDeletes), each a DELETE
lm <<LDIF
dn: uid=k001,ou=People,$BASE
changetype: delete

dn: uid=k002,ou=People,$BASE
changetype: delete

dn: uid=k003,ou=People,$BASE
changetype: delete
LDIF
n=$(nevents)
start_producer p2b "$T/p.yaml"
P2=$LAST_PID
wait_for "stopped, 3 deletes, restarted: 3 DELETEs with their anchors" \
  'len(set(e["anchor"] for e in ev(op="DELETE") if e["dn"] and "uid=k00" in e["dn"])) == 3' $n
wait_log p2b "syncIdSet of .* (deleted)"
assert "no DELETE for users still present" 'not ev(op="DELETE", dn_has="uid=k004")' $n
kill $P2; wait $P2 2>/dev/null

# ---- cookie older than the session log: present phase, deletes for what is gone
lm <<LDIF
dn: cn=After Restart,ou=People,$BASE
changetype: delete
LDIF
redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" SET 'canopy:{conn:forest}:pos:cookie' 'rid=000,csn=20000101000000.000000Z#000000#000#000000' >/dev/null
n=$(nevents)
start_producer p3 "$T/p.yaml"
wait_for "old cookie: the object deleted while stopped comes out as a DELETE" 'ev(op="DELETE", dn_has="After Restart")' $n
wait_log p3 "refresh done, persisting"
assert "old cookie: no DELETE for objects still present" 'not ev(op="DELETE", dn_has="Alice")' $n
echo "all syncrepl checks passed"
