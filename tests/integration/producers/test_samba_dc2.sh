#!/usr/bin/env bash
# usn mode across a switch to another domain controller of the same domain,
# with a real second DC (harness_samba_dc2: joined with samba-tool, DRS
# replication from the first one). USNs are numbered per DC: the changes
# made while the producer was stopped reach the second DC under USNs of its
# own, below the USN saved from the first DC, so a producer that compared
# USNs alone would skip them. On restart with the first DC down (failover
# to the second URI) the producer must see the other invocationId, say so,
# do a full pass ended by END_OF_SCAN that carries the modify, the add and
# the delete, and save a position naming the second DC. Then the way back,
# live: the first DC up again, the second one stopped under the running
# producer, which reconnects to the first and does a full pass again.
. "$(dirname "$0")/common.sh"
. "$HERE/../../harness/lib.sh"
TAIL_BIN=$1
BASE=$CANOPY_TEST_AD_CORP_BASE ADMIN=$CANOPY_TEST_AD_CORP_BINDDN APW=$CANOPY_TEST_AD_CORP_PWFILE
URI1=$CANOPY_TEST_AD_CORP_LDAPS_URI URI2=$CANOPY_TEST_AD_CORP_DC2_LDAPS_URI
export LDAPTLS_CACERT=$CANOPY_TEST_AD_CORP_CA
KEY="canopy:{conn:corp-dc}:pos:usn"
lm() { # lm URI: ldapmodify as Administrator, LDIF on stdin
        ldapmodify -x -H "$1" -D "$ADMIN" -y "$APW" >>"$T/ldapmodify.log" 2>&1 || fail "ldapmodify on $1"
}
ls1() { # ls1 URI DN ATTR: the value(s) of ATTR of DN, "" when there is no such entry
        ldapsearch -x -LLL -o ldif-wrap=no -H "$1" -D "$ADMIN" -y "$APW" -b "$2" -s base "$3" 2>/dev/null |
                awk -v a="$3" '{ k = $1; sub(/:+$/, "", k) } tolower(k) == tolower(a) { sub(/^[^:]*:+ /, ""); print }'
}
root_attr() { ldapsearch -x -LLL -o ldif-wrap=no -H "$1" -b '' -s base "$2" | awk -v a="$2:" '$1 == a { print $2 }'; }
invocation() { # invocation URI: the DC's invocationId in hex, as the producer writes it
        ls1 "$1" "$(ldapsearch -x -LLL -o ldif-wrap=no -H "$1" -b '' -s base dsServiceName |
                sed -n 's/^dsServiceName: //p')" invocationId | base64 -d | od -An -tx1 | tr -d ' \n'
}
pos() { redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" GET "$KEY"; }
stop_producer() { kill -TERM "$1"; wait "$1" 2>/dev/null; }
# wait_until DESC CMD...: poll CMD (bounded, 60 s)
wait_until() {
        local desc=$1 i
        shift
        for ((i = 0; i < 300; i++)); do
                "$@" && { ok "$desc"; return 0; }
                sleep 0.2
        done
        fail "$desc (timed out)"
}

INV1=$(invocation "$URI1") INV2=$(invocation "$URI2")
[[ $INV1 =~ ^[0-9a-f]{32}$ && $INV2 =~ ^[0-9a-f]{32}$ && $INV1 != "$INV2" ]] ||
        fail "two DCs with their own invocationIds expected: '$INV1' '$INV2'"
ok "two domain controllers of ${CANOPY_TEST_AD_CORP_REALM}: invocationId $INV1 and $INV2"

harness_ad_connector corp canopy-dc || fail "connector account"
CONN=$CANOPY_TEST_AD_CORP_CONNECTOR_DN CPW=$CANOPY_TEST_AD_CORP_CONNECTOR_PWFILE
bind2() { ldapsearch -x -LLL -H "$URI2" -D "$CONN" -y "$CPW" -b "$CONN" -s base dn 2>/dev/null | grep -q "^dn:"; }
wait_until "the connector account (made on the first DC) replicated to the second one" bind2

conf() { # conf URI...
        local u uris=
        for u in "$@"; do uris="$uris${uris:+, }\"$u\""; done
        cat >"$T/usn.yaml" <<YAML
connector:
  id: corp-dc
mode: usn
ldap:
  uris: [$uris]
  bind_dn: "$CONN"
  password_file: "$CPW"
  tls: ldaps
  ca_file: "$LDAPTLS_CACERT"
  base_dns: ["OU=Staff,$BASE", "OU=Moved,$BASE"]
  attributes: [cn, sn, givenName, mail, description, member, sAMAccountName]
  poll_interval: 300ms
$(yaml_state)
YAML
}

# ---- first DC: initial pass, position saved with its invocationId
start_tail
conf "$URI1"
start_producer dc "$T/usn.yaml"
P=$LAST_PID
wait_for "first DC: initial pass ends with END_OF_SCAN" 'len(scans("corp-dc")) == 1'
assert "first DC: 3 users, the group and the contact" \
        'len(ev(op="ADD", cls="user")) == 3 and len(ev(op="ADD", cls="group")) == 1 and len(ev(op="ADD", cls="contact")) == 1'
ELISE=$("$CHECK" --print "$EV" 'ev(op="ADD", dn_has="Élise Müller")[0]["anchor"]' | tr -d '"')
saved1() { [[ $(pos) == "$INV1":* ]]; }
wait_until "first DC: position saved as <invocationId>:<USN>" saved1
stop_producer "$P"
U1=$(pos) U1=${U1#*:}

# ---- changes on the first DC while the producer is stopped: a modify, a
# delete and an add; wait until the second DC has them all
lm "$URI1" <<LDIF
dn: CN=Ada Lovelace,OU=Staff,$BASE
changetype: modify
replace: description
description: changed on DC1, read on DC2

dn: CN=Élise Müller,OU=Staff,$BASE
changetype: delete

dn: CN=Nora Newman,OU=Staff,$BASE
changetype: add
objectClass: user
sAMAccountName: nora
sn: Newman
givenName: Nora
LDIF
replicated() {
        [ "$(ls1 "$URI2" "CN=Ada Lovelace,OU=Staff,$BASE" description)" = "changed on DC1, read on DC2" ] &&
                [ -n "$(ls1 "$URI2" "CN=Nora Newman,OU=Staff,$BASE" sAMAccountName)" ] &&
                [ -z "$(ls1 "$URI2" "CN=Élise Müller,OU=Staff,$BASE" sAMAccountName)" ]
}
wait_until "modify, delete and add replicated to the second DC" replicated
u=$(ls1 "$URI2" "CN=Ada Lovelace,OU=Staff,$BASE" uSNChanged)
[ "$u" -le "$U1" ] || fail "the modify has USN $u on the second DC, above the saved $U1: the test would not tell"
# The second DC's highestCommittedUSN must pass the saved one, or the
# producer's rollback check (USN below the saved one) would hide a missing
# invocationId check: out-of-scope changes on the second DC move it on.
h=$(root_attr "$URI2" highestCommittedUSN)
for ((i = h; i <= U1 + 2; i++)); do
        printf 'dn: OU=Outside,%s\nchangetype: modify\nreplace: description\ndescription: %s\n\n' "$BASE" "$i"
done | lm "$URI2"
h=$(root_attr "$URI2" highestCommittedUSN)
[ "$h" -gt "$U1" ] || fail "highestCommittedUSN $h of the second DC still at most $U1"
ok "on the second DC the changes carry USN $u <= $U1 (the saved one), its highestCommittedUSN is $h > $U1"

# ---- the first DC down; the producer restarts with both URIs
harness_stop_samba corp
conf "$URI1" "$URI2"
n=$(nevents)
start_producer dc "$T/usn.yaml"
P=$LAST_PID
wait_log dc "failed over to $URI2"
ok "first DC down: failed over to the second URI"
wait_log dc "usn: the saved USN $U1 was read from invocationId $INV1, this domain controller is $INV2"
ok "the invocationId change is logged"
wait_for "second DC: a full pass, ended by END_OF_SCAN" 'len(scans("corp-dc")) == 2'
assert "second DC: the modify made meanwhile" \
        '[e for e in ev(dn_has="Ada Lovelace") if e["complete"] and vals(e, "description") == ["changed on DC1, read on DC2"]]' "$n"
assert "second DC: the add made meanwhile" 'ev(op="ADD", dn_has="Nora Newman")' "$n"
assert "second DC: the delete made meanwhile" "ev(op='DELETE', anchor='$ELISE')" "$n"
assert "second DC: nothing else deleted" 'len(ev(op="DELETE")) == 1' "$n"
saved2() { [[ $(pos) == "$INV2":* ]]; }
wait_until "position now names the second DC ($INV2)" saved2

# ---- live, the way back: the first DC up again, the second one stopped
# under the running producer, which reconnects to the first one
harness_restart_samba corp || fail "restarting the first DC"
n=$(nevents)
harness_stop_samba corp-dc2
wait_log dc "usn: the saved USN [0-9]* was read from invocationId $INV2, this domain controller is $INV1"
ok "connection lost: reconnected to the first DC, the invocationId change is logged"
wait_for "first DC again: a full pass, ended by END_OF_SCAN" 'len(scans("corp-dc")) == 3'
assert "first DC again: nothing deleted (same objects on both DCs)" 'not ev(op="DELETE")' "$n"
wait_until "position names the first DC again" saved1
stop_producer "$P"
echo "all samba dc2 checks passed"
