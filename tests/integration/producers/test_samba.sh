#!/usr/bin/env bash
# Producer against a Samba AD DC over LDAPS (test CA): the privileged
# account refused, DirSync without the replication right refused with a hint,
# dirsync mode (add, modify, rename, move between OUs, member add/remove as
# incremental values, delete through the tombstone, ms-DS-ConsistencyGuid as
# anchor, write-back of the anchor) and usn mode (add, modify, rename, move, member add/remove,
# delete via Show Deleted, a switch to another DC).
. "$(dirname "$0")/common.sh"
TAIL_BIN=$1
A=CANOPY_TEST_AD_CORP
LURI=${A}_LDAPS_URI; BASE=${A}_BASE; ADMIN=${A}_BINDDN; APW=${A}_PWFILE; CA=${A}_CA; HOSTV=${A}_HOST
LURI=${!LURI} BASE=${!BASE} ADMIN=${!ADMIN} APW=${!APW} CA=${!CA} HOST=${!HOSTV}
export LDAPTLS_CACERT=$CA
lm() { ldapmodify -x -H "$LURI" -D "$ADMIN" -y "$APW" "$@" >/dev/null || fail "ldapmodify"; }
pwattr() { printf '"%s"' "$1" | iconv -f utf-8 -t utf-16le | base64 -w0; }

# ---- connector accounts: one with Replicating Directory Changes, one without
. "$HERE/../../harness/lib.sh"
harness_ad_connector corp canopy-sync || fail "connector account"
SPW=$(cat "$CANOPY_TEST_AD_CORP_CONNECTOR_PWFILE")
cp "$CANOPY_TEST_AD_CORP_CONNECTOR_PWFILE" "$T/sync.pw"
SID=$CANOPY_TEST_AD_CORP_CONNECTOR_SID
lm <<LDIF
dn: CN=canopy-norights,CN=Users,$BASE
changetype: add
objectClass: user
sAMAccountName: canopy-norights
unicodePwd:: $(pwattr "$SPW")
userAccountControl: 512
LDIF
# Write on ms-DS-ConsistencyGuid (schemaIDGUID 23773dc2-...) below OU=Staff, for the anchor write-back
samba-tool dsacl set -H "ldap://$HOST" --simple-bind-dn="$ADMIN" --password="$(cat "$APW")" --objectdn="OU=Staff,$BASE" \
        --sddl="(OA;CI;WP;23773dc2-b63a-11d2-90e1-00c04fd91ab1;;$SID)" >>"$T/dsacl.log" 2>&1 ||
        { cat "$T/dsacl.log"; fail "granting write on ms-DS-ConsistencyGuid"; }
SID2=$(samba-tool user show canopy-norights -H "ldap://$HOST" --simple-bind-dn="$ADMIN" --password="$(cat "$APW")" \
        --attributes=objectSid 2>/dev/null | awk '/^objectSid:/ {print $2}')
/usr/bin/python3 "$HERE/../../harness/ad_grant_deleted.py" "$T/samba-corp/private/sam.ldb" "$T/samba-corp/etc/smb.conf" "$BASE" "$SID2" \
        >>"$T/dsacl.log" 2>&1 || { cat "$T/dsacl.log"; fail "granting read on CN=Deleted Objects"; }
ok "connector account created and granted Replicating Directory Changes"

conf() { # conf FILE CONNECTOR MODE BIND PWFILE [extra yaml]
cat >"$1" <<YAML
connector:
  id: $2
mode: $3
ldap:
  uris: ["$LURI"]
  bind_dn: "$4"
  password_file: "$5"
  tls: ldaps
  ca_file: "$CA"
  base_dns: ["OU=Staff,$BASE", "OU=Moved,$BASE"]
  attributes: [cn, sn, givenName, mail, description, member, sAMAccountName, userPrincipalName]
  poll_interval: 300ms
$(yaml_state)
${6:-}
YAML
}

# ---- the privileged account is refused
conf "$T/admin.yaml" corp-admin dirsync "$ADMIN" "$APW"
if "$BIN/canopy-producer-ldap" -c "$T/admin.yaml" >"$T/producer-admin.log" 2>&1; then fail "Administrator accepted"; fi
grep -q "refusing to run: the connector account .* is a member of" "$T/producer-admin.log" || { cat "$T/producer-admin.log"; fail "no clear refusal message"; }
ok "Administrator refused: $(grep -o 'member of [A-Za-z ]*' "$T/producer-admin.log" | head -1)"

# ---- DirSync without the right: refused with a hint to use usn
conf "$T/nr.yaml" corp-nr dirsync "CN=canopy-norights,CN=Users,$BASE" "$T/sync.pw"
if "$BIN/canopy-producer-ldap" -c "$T/nr.yaml" >"$T/producer-nr.log" 2>&1; then fail "DirSync without rights accepted"; fi
grep -q "Replicating Directory Changes.*mode: usn" "$T/producer-nr.log" || { cat "$T/producer-nr.log"; fail "no hint"; }
ok "DirSync without Replicating Directory Changes refused with a hint to use usn"

# ---- dirsync
start_tail
conf "$T/ds.yaml" corp dirsync "CN=canopy-sync,CN=Users,$BASE" "$T/sync.pw" "anchor:
  write_consistency_guid: true"
start_producer ds "$T/ds.yaml"
wait_for "dirsync initial pass ends with END_OF_SCAN" 'scans()'
assert "initial pass: 3 users, 1 group, 1 contact (connector account outside scope)" \
  'len(set(e["anchor"] for e in ev(op="ADD", cls="user"))) == 3 and len(ev(op="ADD", cls="group")) == 1 and len(ev(op="ADD", cls="contact")) == 1 and not ev(dn_has="canopy-sync")'
assert "objectGUID anchors, escaped and Unicode DNs" 'all(len(e["anchor"]) == 32 for e in ev(op="ADD")) and ev(op="ADD", dn_has="Smith\\, Grace") and ev(op="ADD", dn_has="Élise Müller")'
assert "initial group image lists its member" 'len(vals(ev(op="ADD", cls="group")[0], "member")) == 1'
ADA=$("$CHECK" --print "$EV" 'ev(op="ADD", dn_has="Ada Lovelace")[0]["anchor"]' | tr -d '"')
wait_log ds "dirsync"

n=$(nevents)
lm <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$BASE
changetype: modify
replace: description
description: Analytical Engine
LDIF
wait_for "dirsync modify: partial image with the changed attribute only" "[e for e in ev(op='MODIFY', anchor='$ADA') if vals(e,'description') == ['Analytical Engine'] and not e['complete'] and 'mail' not in e['attrs']]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Engineers,OU=Staff,$BASE
changetype: modify
add: member
member: CN=Smith\, Grace,OU=Staff,$BASE
LDIF
wait_for "dirsync member add: one added value (incremental values)" "[e for e in ev(op='MODIFY', cls='group') if nadded(e,'member') == [norm('CN=Smith\\\\, Grace,OU=Staff,$BASE')] and removed(e,'member') == []]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Engineers,OU=Staff,$BASE
changetype: modify
delete: member
member: CN=Ada Lovelace,OU=Staff,$BASE
LDIF
wait_for "dirsync member remove: one removed value" "[e for e in ev(op='MODIFY', cls='group') if nremoved(e,'member') == [norm('CN=Ada Lovelace,OU=Staff,$BASE')] and added(e,'member') == []]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$BASE
changetype: modrdn
newrdn: CN=Ada King
deleteoldrdn: 1
LDIF
wait_for "dirsync rename: RENAME with prev_dn, same anchor" "[e for e in ev(op='RENAME', anchor='$ADA') if 'Ada King' in e['dn'] and 'Ada Lovelace' in e['prev_dn']]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Ada King,OU=Staff,$BASE
changetype: modrdn
newrdn: CN=Ada King
deleteoldrdn: 1
newsuperior: OU=Moved,$BASE
LDIF
wait_for "dirsync move between OUs: RENAME into OU=Moved" "[e for e in ev(op='RENAME', anchor='$ADA') if 'OU=Moved' in e['dn'] and 'OU=Staff' in e['prev_dn']]" $n
# ms-DS-ConsistencyGuid set before the object is first seen becomes its anchor
n=$(nevents)
lm <<LDIF
dn: CN=Guid Person,OU=Staff,$BASE
changetype: add
objectClass: user
sAMAccountName: guidperson
mS-DS-ConsistencyGuid:: ESIzRFVmd4iZqrvM3e7/AA==
LDIF
wait_for "ms-DS-ConsistencyGuid is the anchor when set" 'ev(dn_has="Guid Person", anchor="112233445566778899aabbccddeeff00")' $n
# write-back: objects without the attribute got objectGUID written into it
v=$(ldapsearch -x -LLL -o ldif-wrap=no -H "$LURI" -D "$ADMIN" -y "$APW" -b "CN=Smith\\, Grace,OU=Staff,$BASE" -s base mS-DS-ConsistencyGuid objectGUID)
g1=$(printf '%s\n' "$v" | awk '/^objectGUID::/ {print $2}'); g2=$(printf '%s\n' "$v" | awk '/^mS-DS-ConsistencyGuid::/ {print $2}')
[ -n "$g1" ] && [ "$g1" = "$g2" ] || fail "objectGUID not written into mS-DS-ConsistencyGuid ($v)"
ok "anchor.write_consistency_guid wrote objectGUID into an empty ms-DS-ConsistencyGuid"
n=$(nevents)
lm <<LDIF
dn: CN=Ada King,OU=Moved,$BASE
changetype: delete
LDIF
wait_for "dirsync delete: tombstone becomes DELETE with the anchor" "ev(op='DELETE', anchor='$ADA')" $n
n=$(nevents)
lm <<LDIF
dn: CN=Élise Müller,OU=Staff,$BASE
changetype: modrdn
newrdn: CN=Élise Müller
deleteoldrdn: 1
newsuperior: OU=Outside,$BASE
LDIF
wait_for "dirsync move out of scope: DELETE" 'ev(op="DELETE", dn_has="Élise Müller")' $n
DS_PID=$LAST_PID

# ---- usn mode: a second connector on the same domain, side by side with the
# dirsync one (each its own process, lease and checkpoint)
conf "$T/usn.yaml" corp-usn usn "CN=canopy-norights,CN=Users,$BASE" "$T/sync.pw"
n=$(nevents)
# member;range=0-0 makes the server answer one value per range, so the
# producer's ranged retrieval (member;range=1-*) must fetch the rest
start_producer usn "$T/usn.yaml" --set 'ldap.attributes=cn, sn, givenName, mail, description, member;range=0-0, sAMAccountName' \
        --set log.level=debug
wait_for "usn initial pass ends with END_OF_SCAN" 'len(scans("corp-usn")) == 1' $n
assert "usn initial pass: Grace, Guid Person, group and contact" 'len([e for e in ev(op="ADD") if e["connector"] == "corp-usn"]) == 4' $n
n=$(nevents)
lm <<LDIF
dn: CN=Smith\, Grace,OU=Staff,$BASE
changetype: modify
replace: description
description: via usn
LDIF
wait_for "usn modify: full image" '[e for e in ev(op="MODIFY", dn_has="Grace") if e["connector"] == "corp-usn" and e["complete"] and vals(e,"description") == ["via usn"]]' $n
n=$(nevents)
lm <<LDIF
dn: CN=Engineers,OU=Staff,$BASE
changetype: modify
add: member
member: CN=Guid Person,OU=Staff,$BASE
LDIF
wait_for "usn member add (read with ranged retrieval): delta of one value against the stored set" "[e for e in ev(op='MODIFY', cls='group') if e['connector'] == 'corp-usn' and nadded(e,'member') == [norm('CN=Guid Person,OU=Staff,$BASE')] and removed(e,'member') == []]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Guid Person,OU=Staff,$BASE
changetype: delete
LDIF
grep -q "ranged retrieval of member of CN=Engineers" "$T/producer-usn.log" || fail "ranged retrieval not exercised"
ok "ranged retrieval (member;range=1-*) was used for the group"
wait_for "usn delete found through Show Deleted" '[e for e in ev(op="DELETE", anchor="112233445566778899aabbccddeeff00") if e["connector"] == "corp-usn"]' $n
wait_for "side by side: the dirsync connector saw the same delete under its own connector id" \
  '[e for e in ev(op="DELETE", anchor="112233445566778899aabbccddeeff00") if e["connector"] == "corp"]' $n
USN_PID=$LAST_PID

# ---- usn mode: rename, move between OUs, member remove
n=$(nevents)
lm <<LDIF
dn: CN=Smith\, Grace,OU=Staff,$BASE
changetype: modrdn
newrdn: CN=Smith\, Grace H
deleteoldrdn: 1
LDIF
wait_for "usn rename: RENAME with prev_dn" "[e for e in ev(op='RENAME', dn_has='Grace H') if e['connector'] == 'corp-usn' and 'Grace,OU=Staff' in e['prev_dn']]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Smith\, Grace H,OU=Staff,$BASE
changetype: modrdn
newrdn: CN=Smith\, Grace H
deleteoldrdn: 1
newsuperior: OU=Moved,$BASE
LDIF
wait_for "usn move between OUs: RENAME into OU=Moved" "[e for e in ev(op='RENAME', dn_has='Grace H') if e['connector'] == 'corp-usn' and 'OU=Moved' in e['dn'] and 'OU=Staff' in e['prev_dn']]" $n
n=$(nevents)
lm <<LDIF
dn: CN=Engineers,OU=Staff,$BASE
changetype: modify
delete: member
member: CN=Smith\, Grace H,OU=Moved,$BASE
LDIF
wait_for "usn member remove: the group's members lose Grace" "[e for e in ev(op='MODIFY', cls='group') if e['connector'] == 'corp-usn' and not [v for v in vals(e,'member') + added(e,'member') if 'Grace' in v] and [v for v in removed(e,'member') if 'Grace' in v]]" $n

# ---- usn mode after a switch to another domain controller: USNs are per DC,
# so the saved position carries the DC's invocationId. Stop the connector,
# make its position look as if read from another DC far ahead (a replica DC
# with higher USNs), change and delete objects meanwhile: on restart the
# producer must notice and do a full pass (a USN-only check would wait for
# USNs this DC never reaches, and miss both changes).
kill -TERM "$USN_PID"; wait "$USN_PID" 2>/dev/null
key="canopy:{conn:corp-usn}:pos:usn"
rc() { redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" "$@"; }
pos=$(rc GET "$key")
[[ $pos =~ ^[0-9a-f]{32}:[0-9]+$ ]] || fail "usn position '$pos' does not carry the DC's invocationId"
ok "usn position saved with the DC's invocationId (${pos%%:*})"
rc SET "$key" "0123456789abcdef0123456789abcdef:$(( ${pos#*:} + 1000000 ))" >/dev/null
n=$(nevents)
lm <<LDIF
dn: CN=External Contact,OU=Staff,$BASE
changetype: modify
replace: description
description: changed while on another DC
LDIF
lm <<LDIF
dn: CN=Smith\, Grace H,OU=Moved,$BASE
changetype: delete
LDIF
start_producer usn "$T/usn.yaml"
USN_PID=$LAST_PID
wait_log usn "usn: the saved USN .* was read from invocationId 0123456789abcdef0123456789abcdef"
wait_for "after the DC switch: a full pass, ended by END_OF_SCAN" 'len(scans("corp-usn")) == 1' $n
assert "after the DC switch: the change made meanwhile is read" "[e for e in ev(dn_has='External Contact') if e['connector'] == 'corp-usn' and vals(e,'description') == ['changed while on another DC']]" $n
assert "after the DC switch: the delete made meanwhile is read" "[e for e in ev(op='DELETE') if e['connector'] == 'corp-usn' and 'Grace' in (e['dn'] or '')]" $n
pos=$(rc GET "$key")
[ "${pos%%:*}" != 0123456789abcdef0123456789abcdef ] || fail "position still names the other DC: $pos"
ok "position now names this DC again"
echo "all samba checks passed"
