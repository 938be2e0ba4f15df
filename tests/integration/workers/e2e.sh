#!/usr/bin/env bash
# e2e.sh SCENARIO: end-to-end test of canopy-worker. Run under
#   run-with --slapd A=forest-a.ldif [--slapd B=forest-b.ldif] --redis --kafka --emulator --bin DIR -- e2e.sh SCENARIO
# Real producers (canopy-producer-ldap, syncrepl) read slapd, workers join and
# export to the Graph emulator; checks read GET /_emulator/state, its
# /_emulator/stats (write counts) and Redis.
# Waits are bounded polls of an end state (the cap only stops a hung test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scenario=${1:?scenario}
T=$CANOPY_TEST_TMPDIR
BIN=$CANOPY_TEST_BIN
CAP=${E2E_WAIT_CAP:-120}
pids=()
log() { echo "e2e[$scenario]: $*" >&2; }
fail() {
        log "FAIL: $*"
        for f in "$T"/*.log; do echo "--- $f (tail)"; tail -n 30 "$f"; done >&2
        { echo "--- redis keys"; rcli --scan --pattern 'w:*' | grep -E 'mof|pend|errors|staged' | head -40; } >&2 || true
        exit 1
}
cleanup() {
        for p in ${pids[@]+"${pids[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
        for p in ${pids[@]+"${pids[@]}"}; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

rcli() { redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" "$@"; }
emu() { curl -sf --cacert "$CANOPY_TEST_GRAPH_CA" "$CANOPY_TEST_GRAPH_URL$1"; }
state() { emu "/_emulator/state"; }
# graph METHOD PATH [JSON]: a Graph call to the emulator as the application.
graph() {
        local tok
        tok=$(curl -sSf --cacert "$CANOPY_TEST_GRAPH_CA" "$CANOPY_TEST_GRAPH_URL/$CANOPY_TEST_GRAPH_TENANT/oauth2/v2.0/token" \
                -d grant_type=client_credentials -d client_id="$CANOPY_TEST_GRAPH_CLIENT_ID" \
                --data-urlencode client_secret@"$CANOPY_TEST_GRAPH_SECRET_FILE" \
                -d scope=https://graph.microsoft.com/.default | jq -r .access_token) || return 1
        curl -sSf --cacert "$CANOPY_TEST_GRAPH_CA" -X "$1" -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' \
                ${3:+-d "$3"} "$CANOPY_TEST_GRAPH_URL/v1.0$2"
}
writes() { emu "/_emulator/stats" | jq '.writes'; }
emu_faults() { curl -sf --cacert "$CANOPY_TEST_GRAPH_CA" -X POST -d "$1" "$CANOPY_TEST_GRAPH_URL/_emulator/faults" >/dev/null || fail "set emulator faults $1"; }

# wait_for DESCRIPTION JQ-EXPR: poll the emulator state until the jq
# expression is true.
wait_for() {
        local what=$1 expr=$2 i
        for ((i = 0; i < CAP * 4; i++)); do
                if state | jq -e "$expr" >/dev/null 2>&1; then
                        log "$what: after $((i / 4)).$((i % 4 * 25))s"
                        return 0
                fi
                sleep 0.25
        done
        state | jq -c '{users: [.users[] | {userPrincipalName, displayName, mail, jobTitle}], groups: [.groups[] | {displayName, members}]}' >&2 || true
        fail "timed out waiting for: $what"
}

# wait_redis DESCRIPTION COMMAND...: poll until the command prints non-empty, non-zero.
wait_redis() {
        local what=$1 i out
        shift
        for ((i = 0; i < CAP * 4; i++)); do
                out=$("$@" 2>/dev/null || true)
                if [ -n "$out" ] && [ "$out" != 0 ]; then
                        log "$what: after $((i / 4)).$((i % 4 * 25))s"
                        return 0
                fi
                sleep 0.25
        done
        fail "timed out waiting for: $what"
}

ldap_var() { local v="CANOPY_TEST_LDAP_$1_$2"; echo "${!v}"; }

ldapmod() { # ldapmod FOREST < LDIF
        ldapmodify -x -H "$(ldap_var "$1" URI)" -D "$(ldap_var "$1" BINDDN)" -y "$(ldap_var "$1" PWFILE)" >/dev/null
}

# run_producer ID MODE URI BIND_DN PWFILE BASE LDAP-EXTRA-YAML [EXTRA-YAML]
run_producer() {
        cat >"$T/producer-$1.yaml" <<YAML
connector:
  id: "$1"
mode: $2
ldap:
  uris: ["$3"]
  bind_dn: "$4"
  password_file: "$5"
  base_dns: ["$6"]
$7
${8:-}
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
  topic_prefix: "e2e."
  session_timeout: 6s
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
  prefix: "p:"
lease:
  ttl: 3s
YAML
        "$BIN/canopy-producer-ldap" -c "$T/producer-$1.yaml" >>"$T/producer-$1.log" 2>&1 &
        pids+=($!)
        log "producer $1 pid $!"
}

start_producer() { # start_producer FOREST (connector id = forest name, lower case)
        local f=$1
        run_producer "$(echo "$1" | tr 'A-Z' 'a-z')" syncrepl "$(ldap_var "$f" URI)" "$(ldap_var "$f" BINDDN)" \
                "$(ldap_var "$f" PWFILE)" "$(ldap_var "$f" BASE)" "  tls: none
  allow_insecure: true" "objects:
  user: [inetOrgPerson]
  group: [groupOfNames]"
}

# start_worker NAME [--set k=v ...]: prints nothing; PID in WPID[NAME].
declare -A WPID
start_worker() {
        local name=$1
        shift
        cat >"$T/worker.yaml" <<YAML
rules:
  file: "${RULES:-$here/rules.yaml}"
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
  topic_prefix: "e2e."
  session_timeout: 6s
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
  prefix: "w:"
graph:
  tenant: "$CANOPY_TEST_GRAPH_TENANT"
  client_id: "$CANOPY_TEST_GRAPH_CLIENT_ID"
  client_secret_file: "$CANOPY_TEST_GRAPH_SECRET_FILE"
  url: "$CANOPY_TEST_GRAPH_URL"
  ca_file: "$CANOPY_TEST_GRAPH_CA"
join:
  group_id: "${JOIN_GROUP:-e2e-join}"
  batch: 50
export:
  group_id: "${EXPORT_GROUP:-e2e-export}"
  batch: 20
YAML
        "$BIN/canopy-worker" -c "$T/worker.yaml" --set metrics.listen=127.0.0.1:0 "$@" >>"$T/worker-$name.log" 2>&1 &
        WPID[$name]=$!
        pids+=($!)
        log "worker $name pid $! $*"
}

# Messages in a topic (one line per message whatever the payload).
topic_count() {
        kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t "e2e.$1" -e -q -f 'x\n' 2>/dev/null | wc -l
}

# metric WORKER NAME-WITH-LABELS: value from the worker's /metrics.
metric() {
        local port
        port=$(grep -o 'metrics on http://127.0.0.1:[0-9]*' "$T/worker-$1.log" | tail -1 | sed 's/.*://')
        [ -n "$port" ] || { echo 0; return; }
        curl -sf "http://127.0.0.1:$port/metrics" | awk -v n="$2" '$1 == n { print int($2) }' | head -1
}

# wait_drained WORKER: the worker's join stage has applied every change in
# the topic and its export stage every mv event (a new group reads all).
wait_drained() {
        local n i
        n=$(topic_count changes)
        for ((i = 0; i < CAP * 4; i++)); do
                [ "$(metric "$1" 'canopy_worker_events_total{stage="join"}')" -ge "$n" ] 2>/dev/null && break
                sleep 0.25
        done
        [ "$i" -lt $((CAP * 4)) ] || fail "join stage did not apply $n changes"
        n=$(topic_count mv)
        for ((i = 0; i < CAP * 4; i++)); do
                [ "$(metric "$1" 'canopy_worker_events_total{stage="export"}')" -ge "$n" ] 2>/dev/null && break
                sleep 0.25
        done
        [ "$i" -lt $((CAP * 4)) ] || fail "export stage did not handle $n mv events"
        log "drained: $(topic_count changes) changes, $n mv events"
}

# wait_replayed WORKER JOIN_N EXPORT_N: after `canopyctl replay`, the worker's
# join stage has applied the JOIN_N changes it reads again and its export
# stage the EXPORT_N mv events plus every mv event that join stage wrote.
wait_replayed() {
        local i j x p
        for ((i = 0; i < CAP * 4; i++)); do
                j=$(metric "$1" 'canopy_worker_events_total{stage="join"}')
                x=$(metric "$1" 'canopy_worker_events_total{stage="export"}')
                p=$(metric "$1" canopy_worker_mv_published_total)
                [ "$j" -ge "$2" ] 2>/dev/null && [ "$x" -ge $(($3 + p)) ] 2>/dev/null && break
                sleep 0.25
        done
        [ "$i" -lt $((CAP * 4)) ] || fail "replay not applied: join $j of $2, export $x of $3 + $p"
        log "replayed: join $j changes, export $x mv events ($p written by the join stage)"
}

stop_worker() { # stop_worker NAME [SIGNAL]
        local p=${WPID[$1]}
        kill "-${2:-TERM}" "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
}

nusers() { state | jq '.users | length'; }
user_by_upn_prefix() { state | jq -c --arg p "$1" '[.users[] | select(.userPrincipalName | ascii_downcase | startswith($p))]'; }

# Every user's onPremisesImmutableId appears once (no duplicate cloud object).
check_no_duplicates() {
        local dup
        dup=$(state | jq '[.users[].onPremisesImmutableId] | group_by(.) | map(select(length > 1)) | length')
        [ "$dup" = 0 ] || fail "duplicate users: $dup"
        dup=$(state | jq '[.groups[].mailNickname] | group_by(.) | map(select(length > 1)) | length')
        [ "$dup" = 0 ] || fail "duplicate groups: $dup"
}

# members_of GROUP: its members' sorted mailNicknames (users) and names (groups).
members_of() {
        state | jq -c --arg g "$1" '(.users | map({key: .id, value: .mailNickname}) | from_entries) as $u
          | (.groups | map({key: .id, value: .displayName}) | from_entries) as $gr
          | [.groups[] | select(.displayName == $g) | .members[] | $u[.] // $gr[.]] | sort'
}

# wait_members GROUP JQ: until GROUP's members are exactly the names the jq
# expression JQ gives (any order); the failure names what is missing and extra.
wait_members() {
        local want got i
        want=$(jq -nc "$2 | sort") || fail "wait_members: bad jq expression $2"
        for ((i = 0; i < CAP * 4; i++)); do
                got=$(members_of "$1")
                [ "$got" = "$want" ] && { log "$1: $(jq -n --argjson w "$want" '$w | length') members as wanted"; return 0; }
                sleep 0.25
        done
        fail "$1 has $(jq -n --argjson g "$got" '$g | length') members, missing $(jq -nc --argjson w "$want" --argjson g "$got" '$w - $g'), extra $(jq -nc --argjson w "$want" --argjson g "$got" '$g - $w')"
}

# The one-forest baseline: 3 users, engineering {alice, bob}, all-a {engineering, carol}.
converge_forest_a() {
        wait_for "3 users and 2 groups" '(.users | length) == 3 and (.groups | length) == 2'
        wait_for "group members" '
          (.users | map({key: .id, value: .mailNickname}) | from_entries) as $u
          | (.groups | map({key: .id, value: .displayName}) | from_entries) as $g
          | (.groups[] | select(.displayName == "engineering") | [.members[] | $u[.] // $g[.]] | sort) == ["alice", "bob"]
            and (.groups[] | select(.displayName == "all-a") | [.members[] | $u[.] // $g[.]] | sort) == ["carol", "engineering"]'
}

case $scenario in
one-forest)
        start_producer A
        start_worker w1
        converge_forest_a
        check_no_duplicates
        # Drained: both stages report no lag (sampled every second).
        wait_drained w1
        for ((i = 0; i < 40; i++)); do
                jl=$(metric w1 'canopy_worker_consumer_lag{stage="join"}')
                el=$(metric w1 'canopy_worker_consumer_lag{stage="export"}')
                [ "$jl" = 0 ] && [ "$el" = 0 ] && break
                sleep 0.25
        done
        [ "$jl" = 0 ] && [ "$el" = 0 ] || fail "consumer lag after draining: join '$jl', export '$el'"
        w0=$(writes)
        # One attribute change -> one PATCH with that property only.
        printf 'dn: uid=alice,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: title\ntitle: Principal Engineer\n' | ldapmod A
        wait_for "title updated" '.users[] | select(.mailNickname == "alice") | .jobTitle == "Principal Engineer"'
        w1=$(writes)
        [ $((w1 - w0)) = 1 ] || fail "expected 1 write for one changed attribute, got $((w1 - w0))"
        # Rename (modrdn): same anchor, same cloud object, group unchanged.
        printf 'dn: uid=bob,ou=people,dc=a,dc=test\nchangetype: modrdn\nnewrdn: uid=robert\ndeleteoldrdn: 1\n' | ldapmod A
        printf 'dn: uid=robert,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: sn\nsn: Browne\n' | ldapmod A
        wait_for "renamed user updated" '.users[] | select(.mailNickname == "bob" or .mailNickname == "robert") | .surname == "Browne"'
        [ "$(nusers)" = 3 ] || fail "rename created a user"
        wait_for "group still has the renamed member" '(.groups[] | select(.displayName == "engineering") | .members | length) == 2'
        # slapd has no refint here: the group still names bob by his old DN,
        # as a stored member set does in AD after a rename. Removing that
        # value removes robert (the object that held the DN).
        printf 'dn: cn=engineering,ou=groups,dc=a,dc=test\nchangetype: modify\ndelete: member\nmember: uid=bob,ou=people,dc=a,dc=test\n' | ldapmod A
        wait_members engineering '["alice"]'
        # Delete -> cloud delete through the guard counter.
        printf 'dn: uid=carol,ou=people,dc=a,dc=test\nchangetype: delete\n' | ldapmod A
        wait_for "carol deleted" '(.users | length) == 2 and (.deletedUsers | length) == 1'
        [ "$(rcli ZCARD w:guard:{guard}:window)" = 1 ] || fail "guard window count not 1"
        ;;
two-forests)
        start_producer A
        start_producer B
        start_worker w1
        # alice (A) and alice.anders (B) join on mail: one cloud user.
        wait_for "4 users (alice joined)" '(.users | length) == 4 and (.groups | length) == 3'
        wait_for "alice has attributes from both forests" '.users[] | select(.mail == "alice@corp.test") | (.jobTitle == "Engineer" and .employeeId == "4711")'
        wait_for "alice is member of engineering (A) and everyone-b (B)" '
          (.users[] | select(.mail == "alice@corp.test") | .id) as $a
          | ([.groups[] | select(.members | index($a))] | length) == 2'
        check_no_duplicates
        [ "$(rcli HLEN w:errors:{err})" = 0 ] || fail "unexpected errors"
        # A second object of forest A with alice's mail is another person: it
        # does not join alice's metaverse object (one record per connector),
        # alice's cloud object keeps her own attributes, and the newcomer is
        # a conflict on the address (as in Entra), reported at once.
        printf 'dn: uid=alice2,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: alice2\ncn: Alice Two\nsn: Two\ntitle: Impostor\nmail: alice@corp.test\n' | ldapmod A
        wait_redis "alice2: a conflict" rcli HLEN w:errors:{err}
        err=$(rcli HGETALL w:errors:{err} | sed -n 2p)
        echo "$err" | jq -e '.code == "GRAPH_CONFLICT" and .property == "proxyAddresses" and (.value | ascii_downcase) == "smtp:alice@corp.test"' >/dev/null ||
                fail "alice2's conflict entry: $err"
        wait_drained w1
        wait_for "alice keeps her title" '[.users[] | select(.userPrincipalName | startswith("alice@")) | .jobTitle] == ["Engineer"]'
        for k in $(rcli --scan --pattern 'w:mv:{*}:c'); do
                [ "$(rcli SMEMBERS "$k" | grep -c '@a$')" -le 1 ] || fail "$k holds two records of connector a: $(rcli SMEMBERS "$k" | tr '\n' ' ')"
        done
        # alice gives the address up (her mail changes in both forests): the
        # conflict on SMTP:alice@corp.test is released, alice2 is exported
        # with it, and the errors set empties, without a retry by hand.
        printf 'dn: uid=alice,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: mail\nmail: alice.new@corp.test\n' | ldapmod A
        printf 'dn: uid=alice.anders,ou=people,dc=b,dc=test\nchangetype: modify\nreplace: mail\nmail: alice.new@corp.test\n' | ldapmod B
        wait_for "alice2 exported once alice gave the address up" '[.users[] | select(.mail == "alice@corp.test") | .mailNickname] == ["alice2"] and ([.users[] | select(.mail == "alice.new@corp.test")] | length) == 1'
        wait_redis "the conflict cleared" bash -c "[ \$(redis-cli -h $CANOPY_TEST_REDIS_HOST -p $CANOPY_TEST_REDIS_PORT HLEN w:errors:{err}) = 0 ] && echo 1"
        ;;
cross-forest-group)
        # staff exists in both forests and joins on cn: one cloud group whose
        # members come from A (alice, bob) and B (dave, alice.anders, who is
        # alice). A member named by both forests stays until neither names it.
        start_producer A
        start_producer B
        start_worker w1
        wait_for "4 users, 3 groups" '(.users | length) == 4 and (.groups | length) == 3'
        printf 'dn: cn=staff,ou=groups,dc=a,dc=test\nchangetype: add\nobjectClass: groupOfNames\ncn: staff\nmember: uid=alice,ou=people,dc=a,dc=test\nmember: uid=bob,ou=people,dc=a,dc=test\n' | ldapmod A
        printf 'dn: cn=staff,ou=groups,dc=b,dc=test\nchangetype: add\nobjectClass: groupOfNames\ncn: staff\nmember: uid=dave,ou=people,dc=b,dc=test\nmember: uid=alice.anders,ou=people,dc=b,dc=test\n' | ldapmod B
        wait_members staff '["alice", "bob", "dave"]'
        [ "$(state | jq '[.groups[] | select(.displayName == "staff")] | length')" = 1 ] || fail "staff is not one cloud group"
        # Removed in B only: dave goes.
        printf 'dn: cn=staff,ou=groups,dc=b,dc=test\nchangetype: modify\ndelete: member\nmember: uid=dave,ou=people,dc=b,dc=test\n' | ldapmod B
        wait_members staff '["alice", "bob"]'
        # alice removed in A, carol added in the same change: B still names
        # alice (as alice.anders), so she stays.
        printf 'dn: cn=staff,ou=groups,dc=a,dc=test\nchangetype: modify\ndelete: member\nmember: uid=alice,ou=people,dc=a,dc=test\n-\nadd: member\nmember: uid=carol,ou=people,dc=a,dc=test\n' | ldapmod A
        wait_members staff '["alice", "bob", "carol"]'
        # And dropped by B too: now she goes.
        printf 'dn: cn=staff,ou=groups,dc=b,dc=test\nchangetype: modify\ndelete: member\nmember: uid=alice.anders,ou=people,dc=b,dc=test\n-\nadd: member\nmember: uid=dave,ou=people,dc=b,dc=test\n' | ldapmod B
        wait_members staff '["bob", "carol", "dave"]'
        # B's staff deleted: the group stays (A contributes), without B's members.
        printf 'dn: cn=staff,ou=groups,dc=b,dc=test\nchangetype: delete\n' | ldapmod B
        wait_members staff '["bob", "carol"]'
        [ "$(state | jq '(.groups | length) + (.deletedGroups // [] | length)')" = 4 ] || fail "a staff group was deleted or duplicated: $(state | jq -c '[.groups[].displayName]')"
        check_no_duplicates
        [ "$(rcli HLEN w:errors:{err})" = 0 ] || fail "unexpected errors: $(rcli HGETALL w:errors:{err})"
        ;;
unique-upn)
        # userPrincipalName by SelectUniqueValue: sn@, then given.sn@, then
        # uid@. Unique in Entra: a cloud-only user already holds chen@, so
        # carol gets Carol.Chen@; dan and dan2 (sn Anders, as alice) get the
        # next free candidates; a change to alice keeps her own anders@.
        cat >"$T/rules-unique.yaml" <<'YAML'
version: 1
connectors:
  - id: a
    kind: openldap
    domain: corp.test
    scope:
      exclude_ous: ["ou=disabled,dc=a,dc=test"]
    flows:
      user:
        - target: userPrincipalName
          expression: |
            SelectUniqueValue(
              Join("@", ToLower([sn]), "corp.test"),
              Join("@", Join(".", [givenName], [sn]), "corp.test"),
              Join("@", [uid], "corp.test"))
YAML
        graph POST /users '{"accountEnabled": true, "displayName": "Cloud Chen", "mailNickname": "cloudchen", "userPrincipalName": "chen@corp.test", "passwordProfile": {"password": "Cl0ud-only!x"}}' >/dev/null ||
                fail "cannot create the cloud-only user"
        start_producer A
        RULES=$T/rules-unique.yaml start_worker w1
        wait_for "4 users" '(.users | length) == 4'
        got=$(state | jq -c '[.users[].userPrincipalName] | sort')
        [ "$got" = '["Carol.Chen@corp.test","anders@corp.test","brown@corp.test","chen@corp.test"]' ] || fail "UPNs: $got"
        printf 'dn: uid=dan,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: dan\ncn: Dan Anders\nsn: Anders\ngivenName: Dan\nmail: dan@corp.test\n' | ldapmod A
        wait_for "dan gets the second candidate" '[.users[] | select(.mailNickname == "dan") | .userPrincipalName] == ["Dan.Anders@corp.test"]'
        printf 'dn: uid=dan2,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: dan2\ncn: Dan Anders\nsn: Anders\ngivenName: Dan\nmail: dan2@corp.test\n' | ldapmod A
        wait_for "dan2 gets the third candidate" '[.users[] | select(.mailNickname == "dan2") | .userPrincipalName] == ["dan2@corp.test"]'
        printf 'dn: uid=alice,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: title\ntitle: Lead\n' | ldapmod A
        wait_for "alice changed" '.users[] | select(.mailNickname == "alice") | .jobTitle == "Lead"'
        [ "$(state | jq -r '.users[] | select(.mailNickname == "alice") | .userPrincipalName')" = anders@corp.test ] ||
                fail "alice lost her own UPN: $(state | jq -c '[.users[] | {mailNickname, userPrincipalName}]')"
        [ "$(rcli HLEN w:errors:{err})" = 0 ] || fail "unexpected errors: $(rcli HGETALL w:errors:{err})"
        check_no_duplicates
        ;;
anchor-stays)
        # alice exists in both forests (joined on mail); A has precedence. B
        # is read first, so alice is created with B's anchor. When A's record
        # joins, the rules give A's anchor, but the cloud object keeps the
        # one it was created with (Entra Connect: the sourceAnchor cannot
        # change after export). After a rebuild of Redis, the hard match
        # finds it by B's anchor: nothing is written.
        start_producer B
        start_worker w1
        wait_for "B exported" '(.users | length) == 2 and ([.users[] | select(.mail == "alice@corp.test")] | length) == 1'
        imm_b=$(state | jq -r '.users[] | select(.mail == "alice@corp.test") | .onPremisesImmutableId')
        id_b=$(state | jq -r '.users[] | select(.mail == "alice@corp.test") | .id')
        [ -n "$imm_b" ] && [ "$imm_b" != null ] || fail "alice has no onPremisesImmutableId"
        start_producer A
        wait_for "A joined" '(.users | length) == 4 and (.users[] | select(.mail == "alice@corp.test") | .jobTitle == "Engineer")'
        wait_drained w1
        got=$(state | jq -c '[.users[] | select(.mail == "alice@corp.test") | {id, onPremisesImmutableId}]')
        [ "$got" = "[{\"id\":\"$id_b\",\"onPremisesImmutableId\":\"$imm_b\"}]" ] ||
                fail "alice's anchor changed: $got (created as $id_b with $imm_b)"
        check_no_duplicates
        sleep 1
        w0=$(writes)
        stop_worker w1
        rcli --scan --pattern 'w:*' | while read -r k; do rcli DEL "$k" >/dev/null; done
        JOIN_GROUP=e2e-join-2 EXPORT_GROUP=e2e-export-2 start_worker w2
        wait_drained w2
        sleep 2
        got=$(state | jq -c '[.users[] | select(.mail == "alice@corp.test") | {id, onPremisesImmutableId}]')
        [ "$got" = "[{\"id\":\"$id_b\",\"onPremisesImmutableId\":\"$imm_b\"}]" ] ||
                fail "after the rebuild: $got (created as $id_b with $imm_b)"
        check_no_duplicates
        [ "$(nusers)" = 4 ] || fail "the rebuild created users: $(nusers)"
        w1=$(writes)
        [ "$w1" = "$w0" ] || fail "the rebuild wrote $((w1 - w0)) times to Graph: $(emu /_emulator/stats | jq -c .)"
        [ "$(rcli HLEN w:errors:{err})" = 0 ] || fail "unexpected errors: $(rcli HGETALL w:errors:{err})"
        ;;
scope)
        start_producer A
        start_worker w1
        converge_forest_a
        # Move out of scope (ou=disabled is excluded by the rules): delete.
        printf 'dn: uid=carol,ou=people,dc=a,dc=test\nchangetype: modrdn\nnewrdn: uid=carol\ndeleteoldrdn: 1\nnewsuperior: ou=disabled,dc=a,dc=test\n' | ldapmod A
        wait_for "carol out of scope -> deleted" '(.users | length) == 2 and ([.deletedUsers[] | select(.mailNickname == "carol")] | length) == 1'
        wait_for "all-a lost carol" '(.groups[] | select(.displayName == "all-a") | .members | length) == 1'
        # And back into scope: exported again.
        printf 'dn: uid=carol,ou=disabled,dc=a,dc=test\nchangetype: modrdn\nnewrdn: uid=carol\ndeleteoldrdn: 1\nnewsuperior: ou=people,dc=a,dc=test\n' | ldapmod A
        wait_for "carol back" '(.users | length) == 3'
        wait_for "all-a has carol again" '(.groups[] | select(.displayName == "all-a") | .members | length) == 2'
        ;;
large-group)
        # 300 users in one group, then one member added: one member write.
        {
                for i in $(seq 1 300); do
                        printf 'dn: uid=u%03d,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: u%03d\ncn: User %03d\nsn: U%03d\nmail: u%03d@corp.test\n\n' "$i" "$i" "$i" "$i" "$i"
                done
                printf 'dn: cn=big,ou=groups,dc=a,dc=test\nchangetype: add\nobjectClass: groupOfNames\ncn: big\n'
                for i in $(seq 1 300); do printf 'member: uid=u%03d,ou=people,dc=a,dc=test\n' "$i"; done
        } | ldapmod A
        start_producer A
        start_worker w1
        wait_for "big group with 300 members" '(.groups[] | select(.displayName == "big") | .members | length) == 300'
        wait_drained w1
        f0=$(metric w1 'canopy_worker_group_member_computations_total{how="full"}')
        [ "${f0:-0}" -ge 1 ] || fail "no full member computation counted"
        w0=$(writes)
        printf 'dn: cn=big,ou=groups,dc=a,dc=test\nchangetype: modify\nadd: member\nmember: uid=carol,ou=people,dc=a,dc=test\n' | ldapmod A
        wait_for "301 members" '(.groups[] | select(.displayName == "big") | .members | length) == 301'
        w1=$(writes)
        [ $((w1 - w0)) = 1 ] || fail "one member added cost $((w1 - w0)) writes (want 1)"
        printf 'dn: cn=big,ou=groups,dc=a,dc=test\nchangetype: modify\ndelete: member\nmember: uid=u007,ou=people,dc=a,dc=test\n' | ldapmod A
        wait_for "300 members" '(.groups[] | select(.displayName == "big") | .members | length) == 300'
        w2=$(writes)
        [ $((w2 - w1)) = 1 ] || fail "one member removed cost $((w2 - w1)) writes (want 1)"
        # Computed from the change, not from the 300 members.
        f1=$(metric w1 'canopy_worker_group_member_computations_total{how="full"}')
        [ "$f1" = "$f0" ] || fail "a one-member change computed every member ($f0 -> $f1 full computations)"
        ;;
late-members)
        # A group exported before its members (and a nested group): each
        # RESOLVE looks only at the members exported since the last one
        # (canopy_worker_group_member_computations_total{how="incremental"}); a
        # member deleted, one dropped from the group while it still waited,
        # and one that never comes must all end right. Three export threads.
        start_producer A
        start_worker w1 --set export.threads=3
        converge_forest_a
        {
                printf 'dn: cn=late,ou=groups,dc=a,dc=test\nchangetype: add\nobjectClass: groupOfNames\ncn: late\n'
                for i in $(seq 1 300); do printf 'member: uid=l%03d,ou=people,dc=a,dc=test\n' "$i"; done
                printf 'member: uid=ghost,ou=people,dc=a,dc=test\nmember: uid=never,ou=people,dc=a,dc=test\n'
                printf 'member: cn=late-sub,ou=groups,dc=a,dc=test\n'
        } | ldapmod A
        wait_for "group late exported, no member yet" '[.groups[] | select(.displayName == "late")] | length == 1'
        for i in $(seq 1 300); do
                printf 'dn: uid=l%03d,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: l%03d\ncn: L %03d\nsn: L%03d\nmail: l%03d@corp.test\n\n' "$i" "$i" "$i" "$i" "$i"
        done | ldapmod A
        printf 'dn: cn=late-sub,ou=groups,dc=a,dc=test\nchangetype: add\nobjectClass: groupOfNames\ncn: late-sub\nmember: uid=alice,ou=people,dc=a,dc=test\n' | ldapmod A
        # late = l001..l300 + late-sub (300 members: large enough for the
        # incremental computation, INCREMENTAL_MIN_REFS in workers/export.c)
        wait_members late '[range(1; 301) | "l\(. + 1000 | tostring | .[1:])"] + ["late-sub"]'
        woken=$(metric w1 'canopy_worker_group_member_computations_total{how="incremental"}')
        full=$(metric w1 'canopy_worker_group_member_computations_total{how="full"}')
        log "member computations: $woken woken, $full full"
        [ "${woken:-0}" -ge 1 ] || fail "no RESOLVE looked at the woken members only"
        # Dropped while waiting, then created: not a member.
        printf 'dn: cn=late,ou=groups,dc=a,dc=test\nchangetype: modify\ndelete: member\nmember: uid=ghost,ou=people,dc=a,dc=test\n' | ldapmod A
        sleep 1
        printf 'dn: uid=ghost,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: ghost\ncn: Ghost\nsn: Ghost\nmail: ghost@corp.test\n' | ldapmod A
        wait_for "ghost exported" '[.users[] | select(.mailNickname == "ghost")] | length == 1'
        # Members deleted: removed from the group.
        for i in 003 050 120; do printf 'dn: uid=l%s,ou=people,dc=a,dc=test\nchangetype: delete\n\n' "$i"; done | ldapmod A
        wait_members late '[range(1; 301) | select(. != 3 and . != 50 and . != 120) | "l\(. + 1000 | tostring | .[1:])"] + ["late-sub"]'
        # A member added afterwards, then one more user the group waits for.
        printf 'dn: cn=late,ou=groups,dc=a,dc=test\nchangetype: modify\nadd: member\nmember: uid=l900,ou=people,dc=a,dc=test\n' | ldapmod A
        sleep 1
        printf 'dn: uid=l900,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: l900\ncn: L 900\nsn: L900\nmail: l900@corp.test\n' | ldapmod A
        wait_members late '[range(1; 301) | select(. != 3 and . != 50 and . != 120) | "l\(. + 1000 | tostring | .[1:])"] + ["late-sub", "l900"]'
        wait_members late-sub '["alice"]'
        # By delta: one exported member out, another in, the nested group out.
        printf 'dn: cn=late,ou=groups,dc=a,dc=test\nchangetype: modify\ndelete: member\nmember: uid=l010,ou=people,dc=a,dc=test\nmember: cn=late-sub,ou=groups,dc=a,dc=test\n-\nadd: member\nmember: uid=carol,ou=people,dc=a,dc=test\n' | ldapmod A
        wait_members late '[range(1; 301) | select(. != 3 and . != 10 and . != 50 and . != 120) | "l\(. + 1000 | tostring | .[1:])"] + ["l900", "carol"]'
        printf 'dn: cn=late,ou=groups,dc=a,dc=test\nchangetype: modify\nadd: member\nmember: uid=l010,ou=people,dc=a,dc=test\n' | ldapmod A
        wait_members late '[range(1; 301) | select(. != 3 and . != 50 and . != 120) | "l\(. + 1000 | tostring | .[1:])"] + ["l900", "carol"]'
        sleep 2 # anything still queued is applied: ghost must not come back
        wait_members late '[range(1; 301) | select(. != 3 and . != 50 and . != 120) | "l\(. + 1000 | tostring | .[1:])"] + ["l900", "carol"]'
        log "member computations at the end: $(metric w1 'canopy_worker_group_member_computations_total{how="incremental"}') incremental, $(metric w1 'canopy_worker_group_member_computations_total{how="full"}') full"
        check_no_duplicates
        [ "$(rcli HLEN w:errors:{err})" = 0 ] || fail "unexpected errors: $(rcli HGETALL w:errors:{err})"
        ;;
ad)
        # A Samba AD DC: a DirSync producer with a plain connector account
        # (Replicating Directory Changes), the AD default rules, one OU in
        # scope. Escaped and Unicode DNs, a disabled account, a UPN suffix
        # that is not a verified domain (the initial domain instead), nested groups,
        # a member outside the scope, member deltas, a move into scope, a
        # rename and a delete through the tombstone.
        . "$here/../../harness/lib.sh"
        harness_ad_connector corp || fail "connector account"
        AD=CANOPY_TEST_AD_CORP
        v() { local n="${AD}_$1"; echo "${!n}"; }
        BASE=$(v BASE)
        admod() { LDAPTLS_CACERT=$(v CA) ldapmodify -x -H "$(v LDAPS_URI)" -D "$(v BINDDN)" -y "$(v PWFILE)" >/dev/null; }
        cat >"$T/rules-ad.yaml" <<YAML
version: 1
connectors:
  - id: corp
    kind: ad
    domain: corp.canopy.test
    scope:
      include_ous: ["OU=Staff,$BASE"]
YAML
        run_producer corp dirsync "$(v LDAPS_URI)" "$(v CONNECTOR_DN)" "$(v CONNECTOR_PWFILE)" "$BASE" "  tls: ldaps
  ca_file: \"$(v CA)\"
  poll_interval: 300ms"
        RULES=$T/rules-ad.yaml start_worker w1
        wait_for "5 users and 2 groups from OU=Staff only" '(.users | length) == 5 and (.groups | length) == 2'
        state | jq -e '
          (.users | map({key: .mailNickname, value: .}) | from_entries) as $u
          | $u.ada.userPrincipalName == "ada@corp.canopy.test" and $u.ada.jobTitle == "Analyst" and $u.ada.accountEnabled == true
            and $u.grace.userPrincipalName == "grace@corp.canopy.test" and $u.grace.displayName == "Smith, Grace"
            and $u.elise.displayName == "Élise Müller" and $u.elise.surname == "Müller"
            and $u.dormant.accountEnabled == false
            and $u.larry.userPrincipalName == "larry@emulator.onmicrosoft.com"
            and ([.users[].onPremisesImmutableId | select(length == 24)] | length) == 5' >/dev/null ||
                fail "AD default mappings: $(state | jq -c '[.users[] | {mailNickname, userPrincipalName, displayName, accountEnabled, onPremisesImmutableId}]')"
        # The producer reads the whole domain but never publishes its own
        # connector account (CN=canopy-sync,CN=Users).
        n=$(kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t e2e.changes -e -q 2>/dev/null | grep -ac 'CN=canopy-sync,CN=Users' || true)
        [ "$n" = 0 ] || fail "the connector account was published ($n events)"
        n=$(kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t e2e.changes -e -q 2>/dev/null | grep -ac 'CN=Administrator,CN=Users' || true)
        [ "$n" -ge 1 ] || fail "the check above cannot fail: CN=Users was not read"
        wait_members Engineers '["Leads","ada"]'
        wait_members Leads '["grace"]'
        state | jq -e '.groups[] | select(.displayName == "Engineers") | .description == "Everyone who builds" and .securityEnabled == true' >/dev/null ||
                fail "group properties"
        wait_drained w1
        # Member deltas (DirSync incremental values).
        printf 'dn: CN=Engineers,OU=Staff,%s\nchangetype: modify\nadd: member\nmember: CN=Élise Müller,OU=Staff,%s\n-\ndelete: member\nmember: CN=Ada Lovelace,OU=Staff,%s\n' "$BASE" "$BASE" "$BASE" | admod
        wait_members Engineers '["Leads","elise"]'
        # The member outside the scope moves in: exported, and a member.
        printf 'dn: CN=Far Away,OU=Outside,%s\nchangetype: modrdn\nnewrdn: CN=Far Away\ndeleteoldrdn: 1\nnewsuperior: OU=Staff,%s\n' "$BASE" "$BASE" | admod
        wait_members Engineers '["Leads","elise","faraway"]'
        # Disabled in AD: accountEnabled false.
        printf 'dn: CN=Élise Müller,OU=Staff,%s\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 546\n' "$BASE" | admod
        wait_for "elise disabled" '.users[] | select(.mailNickname == "elise") | .accountEnabled == false'
        # Renamed: the same cloud object, still in Leads.
        printf 'dn: CN=Smith\\, Grace,OU=Staff,%s\nchangetype: modrdn\nnewrdn: CN=Grace Smith\ndeleteoldrdn: 1\n' "$BASE" | admod
        wait_for "grace renamed" '.users[] | select(.mailNickname == "grace") | .displayName == "Grace Smith"'
        [ "$(nusers)" = 6 ] || fail "the rename created a user"
        wait_members Leads '["grace"]'
        # Deleted in AD (tombstone): deleted in Entra, gone from Leads.
        printf 'dn: CN=Grace Smith,OU=Staff,%s\nchangetype: delete\n' "$BASE" | admod
        wait_for "grace deleted" '(.users | length) == 5 and ([.deletedUsers[] | select(.mailNickname == "grace")] | length) == 1'
        wait_members Leads '[]'
        check_no_duplicates
        [ "$(rcli HLEN w:errors:{err})" = 0 ] || fail "unexpected errors: $(rcli HGETALL w:errors:{err})"
        ;;
conflict)
        # dave in A and dave in B: different mail (no join), same UPN dave@<domain>.
        printf 'dn: uid=dave,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave Other\nsn: Other\nmail: dave.other@corp.test\n' | ldapmod A
        start_producer A
        start_producer B
        start_worker w1
        wait_redis "conflict recorded" rcli HLEN w:errors:{err}
        err=$(rcli HGETALL w:errors:{err} | sed -n 2p)
        echo "$err" | jq -e '.code == "GRAPH_CONFLICT" and .type == "user" and .property == "userPrincipalName" and (.value | startswith("dave@")) and (.other | length) > 0' >/dev/null ||
                fail "conflict entry: $err"
        # The pipeline goes on: everything else is exported.
        wait_for "others exported" '(.users | length) == 4 and (.groups | length) == 3'
        ctl() { "$BIN/canopyctl" errors -c "$T/worker.yaml" "$@"; }
        # The operator sees it...
        ctl list >"$T/errors.txt" || fail "canopyctl errors list failed"
        grep -q 'GRAPH_CONFLICT.*userPrincipalName=dave@' "$T/errors.txt" || fail "errors list: $(cat "$T/errors.txt")"
        grep -q '^1 object(s) in error' "$T/errors.txt" || fail "errors list count: $(cat "$T/errors.txt")"
        mv_id=$(ctl list --json | jq -r .mv_id)
        other=$(echo "$err" | jq -r .other)
        [ -n "$mv_id" ] || fail "errors list --json gave no mv_id"
        # ...a typo is refused, not taken for a retry...
        if ctl retry no-such-object 2>"$T/ctl.err"; then fail "retry of an unknown id succeeded"; fi
        grep -q 'no-such-object is not in the errors set' "$T/ctl.err" || fail "unknown id: $(cat "$T/ctl.err")"
        # ...and fixes Entra, not the directory: the other object gets another
        # UPN. Nothing changed in the source, so nothing is retried until asked.
        upn=$(echo "$err" | jq -r .value)
        graph PATCH "/users/$other" "{\"userPrincipalName\": \"moved.${upn}\"}" >/dev/null ||
                fail "PATCH of the other object in the emulator"
        sleep 2
        [ "$(rcli HLEN w:errors:{err})" = 1 ] || fail "the error went without a change or a request"
        [ "$(nusers)" = 4 ] || fail "retried without a change or a request"
        ctl retry "$mv_id" >"$T/ctl.out" || fail "canopyctl errors retry: $(cat "$T/ctl.out")"
        grep -q 'retry requested for 1 object' "$T/ctl.out" || fail "retry: $(cat "$T/ctl.out")"
        wait_for "retried on request: exported" "(.users | length) == 5 and ([.users[] | select(.userPrincipalName == \"$upn\")] | length) == 1"
        wait_redis "error cleared by the retry" bash -c "[ \$(redis-cli -h $CANOPY_TEST_REDIS_HOST -p $CANOPY_TEST_REDIS_PORT HLEN w:errors:{err}) = 0 ] && echo 1"
        ctl list | grep -q '^0 object(s) in error' || fail "errors list not empty after the retry"
        ctl retry --all | grep -q 'nothing to retry' || fail "retry --all on an empty set"
        # Retried on its next change: erin in A and in B (different mail),
        # the same UPN; the source is fixed (A's erin renamed).
        printf 'dn: uid=erin,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: erin\ncn: Erin A\nsn: A\nmail: erin.a@corp.test\n' | ldapmod A
        printf 'dn: uid=erin,ou=people,dc=b,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: erin\ncn: Erin B\nsn: B\nmail: erin.b@corp.test\n' | ldapmod B
        wait_for "one erin exported" '(.users | length) == 6'
        wait_redis "second conflict recorded" rcli HLEN w:errors:{err}
        printf 'dn: uid=erin,ou=people,dc=a,dc=test\nchangetype: modrdn\nnewrdn: uid=erin2\ndeleteoldrdn: 1\n' | ldapmod A
        wait_for "conflict resolved on the next change" '(.users | length) == 7'
        wait_redis "error cleared" bash -c "[ \$(redis-cli -h $CANOPY_TEST_REDIS_HOST -p $CANOPY_TEST_REDIS_PORT HLEN w:errors:{err}) = 0 ] && echo 1"
        check_no_duplicates
        ;;
staging)
        start_producer A
        start_worker w1 --set export.staging=true
        wait_redis "5 staged objects" bash -c "[ \$(redis-cli -h $CANOPY_TEST_REDIS_HOST -p $CANOPY_TEST_REDIS_PORT HLEN w:staged:{stg}) -ge 5 ] && echo 1"
        [ "$(nusers)" = 0 ] || fail "staging mode wrote to Graph"
        [ "$(writes)" = 0 ] || fail "staging mode wrote to Graph"
        stop_worker w1
        start_worker w2
        converge_forest_a
        check_no_duplicates
        wait_redis "staged cleared" bash -c "[ \$(redis-cli -h $CANOPY_TEST_REDIS_HOST -p $CANOPY_TEST_REDIS_PORT HLEN w:staged:{stg}) = 0 ] && echo 1"
        ;;
replay|rebuild)
        start_producer A
        start_worker w1
        converge_forest_a
        replay() { "$BIN/canopyctl" replay -c "$T/worker.yaml" "$@" >"$T/replay.out" 2>&1; }
        # again N: the messages the Nth stage of the last replay reads again.
        again() { grep 'message(s) to read again' "$T/replay.out" | sed -n "${1}p" | awk '{print $1}'; }
        if [ "$scenario" = replay ]; then
                # A worker still runs: the replay is refused and moves nothing.
                if replay --to beginning; then fail "replay accepted with a worker running: $(cat "$T/replay.out")"; fi
                grep -q 'still has other members' "$T/replay.out" || fail "refusal unclear: $(cat "$T/replay.out")"
                log "refused while w1 runs: $(grep -o 'consumer group [^:]*:[^.]*' "$T/replay.out" | head -1)"
                sleep 0.5
                since=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
                sleep 0.5
                # Later changes: a replay must not rewind the objects to the images
                # of the older events (a write back to "Engineer", then forward).
                for i in $(seq 1 30); do
                        printf 'dn: uid=alice,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: title\ntitle: Architect %d\n\n' "$i"
                done | ldapmod A
                printf 'dn: uid=alice,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: title\ntitle: Chief Architect\n' | ldapmod A
                printf 'dn: uid=bob,ou=people,dc=a,dc=test\nchangetype: modify\nadd: title\ntitle: Tester\n' | ldapmod A
                printf 'dn: cn=engineering,ou=groups,dc=a,dc=test\nchangetype: modify\ndelete: member\nmember: uid=bob,ou=people,dc=a,dc=test\n' | ldapmod A
                wait_for "the later changes" '([.users[] | select(.mail == "alice@corp.test") | .jobTitle] == ["Chief Architect"]) and ([.users[] | select(.mail == "bob@corp.test") | .jobTitle] == ["Tester"]) and ((.groups[] | select(.displayName == "engineering") | .members | length) == 1)'
        fi
        wait_drained w1
        sleep 1
        w0=$(writes)
        stop_worker w1
        if [ "$scenario" = rebuild ]; then
                rcli --scan --pattern 'w:*' | while read -r k; do rcli DEL "$k" >/dev/null; done
                [ "$(rcli --scan --pattern 'w:*' | wc -l)" = 0 ] || fail "redis not emptied"
        fi
        nchanges=$(topic_count changes)
        if [ "$scenario" = replay ]; then
                # Back to a time: both stages read again what came after it,
                # the later changes and no more.
                replay --to "$since" || fail "replay --to $since: $(cat "$T/replay.out")"
                jn=$(again 1) xn=$(again 2)
                log "replay --to $since: join reads $jn of $nchanges changes again, export $xn mv events"
                [ "$jn" -ge 33 ] && [ "$jn" -lt "$nchanges" ] || fail "replay to $since: join reads $jn changes again: $(cat "$T/replay.out")"
                [ "$xn" -gt 0 ] || fail "replay to $since: export reads nothing again: $(cat "$T/replay.out")"
                start_worker w2
                wait_replayed w2 "$jn" "$xn"
                wait_for "the later changes kept" '([.users[] | select(.mail == "alice@corp.test") | .jobTitle] == ["Chief Architect"]) and ((.groups[] | select(.displayName == "engineering") | .members | length) == 1)'
                sleep 2 # anything the export stage would write is written
                w1=$(writes)
                [ "$w1" = "$w0" ] || fail "replay to a time wrote $((w1 - w0)) times to Graph for unchanged objects: $(emu /_emulator/stats | jq -c .)"
                stop_worker w2
        fi
        # Both consumer groups back to the beginning: the workers read both
        # topics again from the first change.
        replay --to beginning || fail "replay --to beginning: $(cat "$T/replay.out")"
        jn=$(again 1) xn=$(again 2)
        [ "$jn" = "$nchanges" ] || fail "replay to the beginning: join reads $jn of $nchanges changes again: $(cat "$T/replay.out")"
        log "replay --to beginning: join reads $jn changes again, export $xn mv events"
        start_worker w3
        wait_replayed w3 "$jn" "$xn"
        [ "$(rcli --scan --pattern 'w:exp:{*}' | wc -l)" -ge 5 ] || fail "export state not rebuilt"
        if [ "$scenario" = replay ]; then
                wait_for "the later changes kept" '([.users[] | select(.mail == "alice@corp.test") | .jobTitle] == ["Chief Architect"]) and ((.groups[] | select(.displayName == "engineering") | .members | length) == 1)'
        else
                converge_forest_a
        fi
        sleep 2 # the export stage has drained too: anything it would write is written
        check_no_duplicates
        w1=$(writes)
        [ "$w1" = "$w0" ] || fail "$scenario wrote $((w1 - w0)) times to Graph for unchanged objects: $(emu /_emulator/stats | jq -c .)"
        ;;
lost)
        # The broker drops changes the stopped worker had not read (the dev
        # broker keeps 5 MiB per partition): the restarted worker finds its
        # position gone, says so and requests a full scan, which brings the
        # lost change to Entra.
        start_producer A
        start_worker w1
        converge_forest_a
        stop_worker w1
        printf 'dn: uid=alice,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: title\ntitle: Lost And Found\n' | ldapmod A
        sleep 2 # the producer has published it
        head -c 600000 /dev/zero | tr '\0' x > "$T/big.line"
        echo >> "$T/big.line"
        for ((p = 0; p < 8; p++)); do
                for ((i = 0; i < 10; i++)); do cat "$T/big.line"; done |
                        kcat -P -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -t e2e.changes -p "$p" -X message.max.bytes=1000000 ||
                        fail "kcat could not fill partition $p"
        done
        start_worker w2
        wait_for "the lost change, after the full scan" '.users[] | select(.mailNickname == "alice") | .jobTitle == "Lost And Found"'
        [ "$(metric w2 'canopy_worker_lost_positions_total{stage="join"}')" -ge 1 ] || fail "no lost position counted"
        [ "$(metric w2 canopy_worker_full_scans_requested_total)" -ge 1 ] || fail "no full scan requested"
        grep -q 'events were lost' "$T/worker-w2.log" || fail "the loss was not logged"
        grep -q 'full scan requested by' "$T/producer-a.log" || fail "the producer did not get the request"
        converge_forest_a
        check_no_duplicates
        ;;
sigkill)
        {
                for i in $(seq 1 150); do
                        printf 'dn: uid=k%03d,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: k%03d\ncn: K %03d\nsn: K%03d\nmail: k%03d@corp.test\n\n' "$i" "$i" "$i" "$i" "$i"
                done
        } | ldapmod A
        start_producer A
        start_worker w1
        wait_for "some users exported" '(.users | length) >= 20'
        stop_worker w1 KILL
        log "worker SIGKILLed with $(nusers) users exported"
        start_worker w2
        wait_for "153 users" '(.users | length) == 153 and (.groups | length) == 2'
        check_no_duplicates
        ;;
fresh-delete)
        # Graph replicas lag behind a create: for a while the new object
        # answers 404 by id. A delete that follows its create within that
        # time must still delete it, not take the 404 for "already gone".
        start_producer A
        start_worker w1
        converge_forest_a
        emu_faults '{"replicationLagMs":6000}'
        n404=$(emu /_emulator/stats | jq '.byStatus["404"] // 0')
        printf 'dn: uid=dave,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave Dunn\nsn: Dunn\nmail: dave@corp.test\n\n' | ldapmod A
        wait_for "dave created" '[.users[] | select(.mailNickname == "dave")] | length == 1'
        printf 'dn: uid=dave,ou=people,dc=a,dc=test\nchangetype: delete\n' | ldapmod A
        wait_for "dave deleted, though just created" '([.users[] | select(.mailNickname == "dave")] | length) == 0
          and ([.deletedUsers[] | select(.mailNickname == "dave")] | length) == 1'
        # The delete did meet the lag (404 first), else this proved nothing.
        [ "$(emu /_emulator/stats | jq '.byStatus["404"] // 0')" -gt "$n404" ] ||
                fail "no 404 during the delete: it did not reach a lagging replica (pipeline slower than the lag?)"
        [ "$(nusers)" = 3 ] || fail "expected the 3 users of forest A, got $(nusers)"
        ;;
two-workers)
        # A worker added while the initial sync runs, and one removed while
        # changes flow: partitions move both times, and every effect happens
        # once (one create per object, no conflict from a second create, every
        # change applied).
        adds() { # adds FIRST LAST
                for i in $(seq "$1" "$2"); do
                        printf 'dn: uid=t%03d,ou=people,dc=a,dc=test\nchangetype: add\nobjectClass: inetOrgPerson\nuid: t%03d\ncn: T %03d\nsn: T%03d\nmail: t%03d@corp.test\n\n' "$i" "$i" "$i" "$i" "$i"
                done | ldapmod A
        }
        adds 1 300
        # Graph slowed down (100 ms a request) so that the initial sync is
        # still running when w2 has joined the groups.
        emu_faults '{"latencyMs":100}'
        start_producer A
        start_producer B
        start_worker w1
        wait_for "w1 has exported some users" '(.users | length) >= 20'
        start_worker w2
        for ((i = 0; i < CAP * 4; i++)); do
                [ "$(grep -c 'assigned [1-9][0-9]* partition' "$T/worker-w2.log")" -ge 2 ] && break
                sleep 0.25
        done
        [ "$i" -lt $((CAP * 4)) ] || fail "w2 was never given partitions of both stages: $(grep -i 'assign' "$T/worker-w2.log" | tail -3)"
        n=$(nusers)
        [ "$n" -lt 304 ] || fail "the initial sync was over before w2 had partitions ($n users): nothing tested"
        log "w2 has partitions of both stages with $n of 304 users exported"
        emu_faults '{"latencyMs":0}'
        wait_for "all users" '(.users | length) == 304 and (.groups | length) == 3'
        emu_faults '{"latencyMs":100}'
        {
                for i in $(seq 1 40); do
                        printf 'dn: uid=t%03d,ou=people,dc=a,dc=test\nchangetype: modify\nreplace: title\ntitle: Lead %03d\n\n' "$i" "$i"
                done
        } | ldapmod A
        adds 301 360
        wait_for "some of the new users exported" '(.users | length) >= 310'
        before=$(grep -c 'assigned [1-9][0-9]* partition' "$T/worker-w2.log")
        stop_worker w1 TERM
        n=$(nusers)
        [ "$n" -lt 364 ] || fail "the changes were all exported before w1 stopped ($n users): nothing tested"
        log "w1 stopped while changes flow ($n of 364 users exported)"
        for ((i = 0; i < CAP * 4; i++)); do
                [ "$(grep -c 'assigned [1-9][0-9]* partition' "$T/worker-w2.log")" -ge $((before + 2)) ] && break
                sleep 0.25
        done
        [ "$i" -lt $((CAP * 4)) ] || fail "w2 was not given w1's partitions: $(grep -i 'assign' "$T/worker-w2.log" | tail -3)"
        emu_faults '{"latencyMs":0}'
        wait_for "every user, and every title change" \
                '(.users | length) == 364 and ([.users[] | select((.jobTitle // "") | startswith("Lead "))] | length) == 40'
        check_no_duplicates
        stats=$(emu /_emulator/stats)
        created=$(echo "$stats" | jq '.byStatus["201"] // 0')
        objects=$(state | jq '(.users | length) + (.groups | length)')
        [ "$created" = "$objects" ] || fail "$created creates for $objects objects: $(echo "$stats" | jq -c .)"
        [ "$(echo "$stats" | jq '.byStatus["400"] // 0')" = 0 ] || fail "a request failed with 400 (a second create?): $(echo "$stats" | jq -c .)"
        ;;
*)
        fail "unknown scenario"
        ;;
esac
# Every key the workers wrote carries a hash tag (docs/STATE.md), so that a
# Redis Cluster could shard them; on the cluster-mode Redis
# (--redis=cluster), a command or script mixing slots failed with CROSSSLOT.
untagged=$(rcli --scan --pattern 'w:*' | { grep -v '{[^}]\+}' || true; } | head -5)
[ -z "$untagged" ] || fail "keys without a hash tag: $untagged"
if [ -n "${CANOPY_TEST_REDIS_CLUSTER:-}" ]; then
        [ "$(rcli CLUSTER INFO | grep -o 'cluster_state:ok')" ] || fail "the Redis Cluster is not ok"
        ! grep -l -i 'CROSSSLOT\|different slot' "$T"/worker-*.log || fail "a command mixed hash slots: $(grep -h -i -m3 'CROSSSLOT\|different slot' "$T"/worker-*.log)"
        log "Redis Cluster mode: $(rcli DBSIZE) keys over $(rcli --scan --pattern 'w:*' | while read -r k; do rcli CLUSTER KEYSLOT "$k"; done | sort -u | wc -l) slots, no CROSSSLOT"
fi
log "PASS"
