#!/usr/bin/env bash
# Many forests side by side: two Samba AD forests (north in dirsync mode,
# south in usn mode) and one OpenLDAP directory (hr, syncrepl), one producer
# process each with its own lease and checkpoint, all into one changes
# topic. Each connector's events carry its own id and only its own objects;
# stopping and restarting one producer resumes it from its own checkpoint
# (its new change arrives, its directory is not read again) while the
# others go on.
. "$(dirname "$0")/common.sh"
. "$HERE/../../harness/lib.sh"
TAIL_BIN=$1
v() { local n="CANOPY_TEST_$1"; echo "${!n}"; }

harness_ad_connector north canopy-sync || fail "north connector account"
harness_ad_connector south canopy-sync || fail "south connector account"
ad_conf() { # ad_conf FILE FOREST MODE
        local up
        up=$(echo "$2" | tr a-z A-Z)
        cat >"$1" <<YAML
connector:
  id: $2
mode: $3
ldap:
  uris: ["$(v AD_${up}_LDAPS_URI)"]
  bind_dn: "$(v AD_${up}_CONNECTOR_DN)"
  password_file: "$(v AD_${up}_CONNECTOR_PWFILE)"
  tls: ldaps
  ca_file: "$(v AD_${up}_CA)"
  base_dns: ["OU=Staff,$(v AD_${up}_BASE)"]
  attributes: [cn, sn, givenName, mail, description, member, sAMAccountName, userPrincipalName]
  poll_interval: 300ms
$(yaml_state)
YAML
}
ad_conf "$T/north.yaml" north dirsync
ad_conf "$T/south.yaml" south usn
cat >"$T/hr.yaml" <<YAML
connector:
  id: hr
mode: syncrepl
ldap:
  uris: ["$(v LDAP_HR_URI)"]
  bind_dn: "$(v LDAP_HR_CONNECTOR_DN)"
  password_file: "$(v LDAP_HR_CONNECTOR_PWFILE)"
  tls: starttls
  ca_file: "$(v LDAP_HR_CA)"
  base_dns: ["ou=People,$(v LDAP_HR_BASE)", "ou=Groups,$(v LDAP_HR_BASE)"]
  attributes: [cn, sn, uid, mail, member]
$(yaml_state)
YAML
adm() { # adm FOREST < LDIF
        local up
        up=$(echo "$1" | tr a-z A-Z)
        LDAPTLS_CACERT=$(v AD_${up}_CA) ldapmodify -x -H "$(v AD_${up}_LDAPS_URI)" -D "$(v AD_${up}_BINDDN)" \
                -y "$(v AD_${up}_PWFILE)" >/dev/null || fail "ldapmodify $1"
}
hrm() { ldapmodify -x -H "$(v LDAP_HR_URI)" -D "$(v LDAP_HR_BINDDN)" -y "$(v LDAP_HR_PWFILE)" >/dev/null || fail "ldapmodify hr"; }
of() { echo "[e for e in E if e['connector'] == '$1']"; } # the events of one connector

start_tail
start_producer north "$T/north.yaml"
NORTH_PID=$LAST_PID
start_producer south "$T/south.yaml"
start_producer hr "$T/hr.yaml"
wait_for "every connector's initial pass ends with its END_OF_SCAN" 'scans("north") and scans("south") and scans("hr")'
NORTH=$(v AD_NORTH_BASE) SOUTH=$(v AD_SOUTH_BASE) HRB=$(v LDAP_HR_BASE)
assert "each connector publishes only its own directory" \
        "(all(norm('$NORTH') in norm(e['dn']) for e in $(of north) if e.get('dn')) and
         all(norm('$SOUTH') in norm(e['dn']) for e in $(of south) if e.get('dn')) and
         all(norm('$HRB') in norm(e['dn']) for e in $(of hr) if e.get('dn')) and
         {e['connector'] for e in E} == {'north', 'south', 'hr'})"
assert "the same person in both AD forests: two connectors, two anchors" \
        "len({(e['connector'], e['anchor']) for e in ev(op='ADD', dn_has='Ada Lovelace')}) == 2"
for f in north south hr; do
        [ -n "$(redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" --scan --pattern "*{conn:$f}:lease")" ] ||
                fail "no lease of connector $f in Redis"
done
ok "one lease per connector in Redis"

# A change in each directory reaches Kafka under its connector only.
n=$(nevents)
adm north <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$NORTH
changetype: modify
replace: description
description: north only
LDIF
adm south <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$SOUTH
changetype: modify
replace: description
description: south only
LDIF
printf 'dn: uid=ngozi,ou=People,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: ngozi\ncn: Ngozi Ọkọnkwọ\nsn: Ọkọnkwọ\nmail: ngozi@hr.test\n\n' "$HRB" | hrm
wait_for "north's change under north, south's under south, hr's under hr" \
        "([e for e in $(of north) if 'north only' in vals(e, 'description')] and
         [e for e in $(of south) if 'south only' in vals(e, 'description')] and
         [e for e in $(of hr) if 'Ngozi' in (e.get('dn') or '') or vals(e, 'cn') == ['Ngozi Ọkọnkwọ']])" $n
assert "no change crosses over" \
        "(not [e for e in E if e['connector'] != 'north' and 'north only' in vals(e, 'description')] and
         not [e for e in E if e['connector'] != 'south' and 'south only' in vals(e, 'description')] and
         not [e for e in E if e['connector'] != 'hr' and 'ngozi' in (e.get('dn') or '')])" $n

# Stop north; south and hr go on; north resumes from its own checkpoint.
kill -TERM "$NORTH_PID"
for _ in $(seq 100); do kill -0 "$NORTH_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$NORTH_PID" 2>/dev/null && fail "north producer did not stop"
wait "$NORTH_PID" 2>/dev/null
n=$(nevents)
adm north <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$NORTH
changetype: modify
replace: description
description: while north was stopped
LDIF
adm south <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$SOUTH
changetype: modify
replace: description
description: south goes on
LDIF
wait_for "south goes on while north is stopped" "[e for e in $(of south) if 'south goes on' in vals(e, 'description')]" $n
start_producer north "$T/north.yaml"
wait_for "north resumes: the change made while it was stopped arrives" \
        "[e for e in $(of north) if 'while north was stopped' in vals(e, 'description')]" $n
sleep 2
assert "north resumed from its checkpoint: no new full pass, its other objects not sent again" \
        "not [e for e in $(of north) if e['op'] == 'END_OF_SCAN'] and len($(of north)) <= 2" $n
assert "the restart of north sent nothing under the other connectors but south's change" \
        "len($(of hr)) == 0 and len($(of south)) <= 2" $n
echo "all many-forests checks passed"
