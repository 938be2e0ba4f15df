#!/bin/bash
# Integration test of canopy-graph-emulator with curl: the Graph contract as a
# client sees it (validation errors, conflicts, 401/403, throttling with each
# Retry-After form, faults, replication lag, paging, delta, $batch limits,
# members, deletedItems restore, snapshot, client assertions).
#
# Usage: test_emulator.sh MODE   (run under tests/harness/run-with --emulator)
#   main       everything that one emulator with run-time settings can show
#   forbidden  client with User.Read.All only (CANOPY_TEST_GRAPH_ROLES)
#   expiry     tokens of 2 s (--emulator="--token-lifetime 2")
#   cert       client assertion (RS256 and PS256) on an emulator of its own
#   snapshot   state survives SIGTERM and restart with --snapshot
#   robust     malformed input of every kind gets a 4xx, never a crash
#   protocols  HTTP/1.1 and HTTP/2 on one port (ALPN), h2c, --no-http2, stats by protocol
set -u
MODE=${1:-main}
URL=${CANOPY_TEST_GRAPH_URL:?run under tests/harness/run-with --emulator}
TENANT=$CANOPY_TEST_GRAPH_TENANT
CID=$CANOPY_TEST_GRAPH_CLIENT_ID
SECRET_FILE=$CANOPY_TEST_GRAPH_SECRET_FILE
CA=$CANOPY_TEST_GRAPH_CA
T=$CANOPY_TEST_TMPDIR/emutest
mkdir -p "$T"
FAILS=0
CHECKS=0
OWN_PID=

cleanup() {
        if [ -n "$OWN_PID" ] && kill -0 "$OWN_PID" 2>/dev/null; then
                kill "$OWN_PID"
                wait "$OWN_PID" 2>/dev/null
        fi
}
trap cleanup EXIT

fail() {
        FAILS=$((FAILS + 1))
        printf 'FAIL: %s\n' "$*" >&2
        [ -s "$T/body" ] && { head -c 600 "$T/body" >&2; echo >&2; }
}
ok() { CHECKS=$((CHECKS + 1)); }

# token [CLIENT_ID] [SECRET_FILE]: prints the access token
token() {
        curl -s --cacert "$CA" "$URL/$TENANT/oauth2/v2.0/token" -d grant_type=client_credentials \
                --data-urlencode "client_id=${1:-$CID}" --data-urlencode "client_secret@${2:-$SECRET_FILE}" \
                --data-urlencode scope=https://graph.microsoft.com/.default | jq -r '.access_token // empty'
}

# req METHOD PATH_OR_URL [JSON]: sets ST (status); body in $T/body, headers in $T/hdr
req() {
        local m=$1 p=$2 u
        case $p in http*) u=$p ;; /_emulator*) u=$URL$p ;; *) u=$URL/v1.0$p ;; esac
        local args=(-s --cacert "$CA" -X "$m" -o "$T/body" -D "$T/hdr" -w '%{http_code}' -H "client-request-id: cr-$RANDOM")
        [ -n "${TOK:-}" ] && args+=(-H "Authorization: Bearer $TOK")
        [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
        ST=$(curl "${args[@]}" "$u")
}

expect_status() { if [ "$ST" = "$1" ]; then ok; else fail "$2: status $ST, expected $1"; fi; }
jqb() { jq -r "$1" "$T/body" 2>/dev/null; }
expect_json() {
        local got
        got=$(jqb "$1")
        if [ "$got" = "$2" ]; then ok; else fail "$3: $1 = '$got', expected '$2'"; fi
}
header() { grep -i "^$1:" "$T/hdr" | head -1 | cut -d' ' -f2- | tr -d '\r'; }

user_json() { # name [extra json fields]
        printf '{"accountEnabled":true,"displayName":"%s","mailNickname":"%s","userPrincipalName":"%s@canopy.test","passwordProfile":{"password":"Xy!12345abc"}%s}' \
                "$1" "$1" "$1" "${2:-}"
}

mk_user() { # name [extra] -> prints id
        req POST /users "$(user_json "$@")"
        [ "$ST" = 201 ] || { fail "create user $1: $ST"; return 1; }
        jqb .id
}

mk_group() {
        req POST /groups "{\"displayName\":\"$1\",\"mailNickname\":\"$1\",\"mailEnabled\":false,\"securityEnabled\":true}"
        [ "$ST" = 201 ] || { fail "create group $1: $ST"; return 1; }
        jqb .id
}

faults() { # JSON: runtime settings
        curl -s --cacert "$CA" -o /dev/null -w '%{http_code}' -X POST "$URL/_emulator/faults" -d "$1" | grep -q 200 ||
                fail "set faults $1"
}

# ------------------------------------------------------------------ main

test_main() {
        req GET /users
        expect_status 401 "no token"
        expect_json .error.code InvalidAuthenticationToken "no token code"
        expect_json '.error.innerError["request-id"] | length' 36 "innerError request-id"
        grep -qi '^client-request-id: cr-' "$T/hdr" && ok || fail "client-request-id not echoed"
        grep -qi '^request-id: ' "$T/hdr" && ok || fail "request-id header missing"

        TOK=$(token)
        [ -n "$TOK" ] && ok || { fail "no token"; return; }
        local good=$TOK
        # Another signature: flip one character in the middle of it.
        local sig=${good##*.} c
        c=${sig:10:1}
        [ "$c" = A ] && c=B || c=A
        TOK="${good%.*}.${sig:0:10}$c${sig:11}"
        req GET /users
        expect_status 401 "bad signature"

        TOK=$(token "$CID" /dev/null)
        [ -z "$TOK" ] && ok || fail "token with a wrong secret"
        curl -s --cacert "$CA" "$URL/$TENANT/oauth2/v2.0/token" -d grant_type=client_credentials \
                --data-urlencode "client_id=$CID" --data-urlencode "client_secret@$SECRET_FILE" \
                --data-urlencode scope=https://example.com/.default -o "$T/body"
        expect_json .error invalid_scope "bad scope"
        echo wrong >"$T/wrong"
        curl -s --cacert "$CA" "$URL/$TENANT/oauth2/v2.0/token" -d grant_type=client_credentials \
                --data-urlencode "client_id=$CID" --data-urlencode "client_secret@$T/wrong" \
                --data-urlencode scope=https://graph.microsoft.com/.default -o "$T/body"
        expect_json .error invalid_client "wrong secret"
        expect_json '.error_codes[0]' 7000215 "wrong secret code"
        curl -s --cacert "$CA" "$URL/$TENANT/oauth2/v2.0/token" -d grant_type=client_credentials \
                --data-urlencode "client_id=00000000-0000-0000-0000-000000000001" --data-urlencode "client_secret@$SECRET_FILE" \
                --data-urlencode scope=https://graph.microsoft.us/.default -o "$T/body"
        expect_json .error unauthorized_client "unknown client"
        TOK=$good

        # --- create and validation
        local a b
        a=$(mk_user alice ',"onPremisesImmutableId":"imm-alice","mail":"alice@canopy.test","employeeId":"E1"')
        req POST /users "$(user_json alice)"
        expect_status 400 "duplicate UPN"
        expect_json .error.code Request_BadRequest "duplicate UPN code"
        expect_json '.error.details[0].code' ObjectConflict "duplicate UPN details"
        expect_json '.error.details[0].target' userPrincipalName "duplicate UPN target"
        req POST /users "$(user_json ALICE2 ',"onPremisesImmutableId":"imm-alice"')"
        expect_json '.error.details[0].target' onPremisesImmutableId "duplicate immutableId"
        req POST /users "$(user_json alice3 ',"mail":"ALICE@canopy.test"')"
        expect_json '.error.details[0].target' proxyAddresses "duplicate mail"
        req POST /users '{"accountEnabled":true,"displayName":"x","userPrincipalName":"x@canopy.test","passwordProfile":{"password":"Xy!12345abc"}}'
        expect_status 400 "missing mailNickname"
        expect_json .error.message "A value is required for property 'mailNickname' of resource 'User'." "missing mailNickname text"
        req POST /users '{"accountEnabled":true,"displayName":"x","mailNickname":"x","userPrincipalName":"x@canopy.test"}'
        expect_status 400 "missing password"
        req POST /users "$(user_json x ',"passwordProfile":{"password":"short"}' | sed 's/,"passwordProfile":{"password":"Xy!12345abc"}//')"
        expect_json .error.message "The specified password does not comply with password complexity requirements. Please provide a different password." "weak password"
        req POST /users '{"accountEnabled":true,"displayName":"x","mailNickname":"x","userPrincipalName":"x@elsewhere.example","passwordProfile":{"password":"Xy!12345abc"}}'
        expect_json .error.message "The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization." "unverified domain"
        req POST /users '{"accountEnabled":true,"displayName":"x","mailNickname":"x y","userPrincipalName":"xy@canopy.test","passwordProfile":{"password":"Xy!12345abc"}}'
        expect_json .error.message "Invalid value specified for property 'mailNickname' of resource 'User'." "bad mailNickname"
        req POST /users "$(user_json longname ",\"givenName\":\"$(printf 'g%.0s' $(seq 65))\"")"
        expect_json .error.message "Invalid value specified for property 'givenName' of resource 'User'." "givenName too long"
        req POST /users "$(user_json ro ',"onPremisesSamAccountName":"ro"')"
        expect_json .error.message "Property 'onPremisesSamAccountName' is read-only and cannot be set." "read-only onPremises"
        req POST /users "$(user_json unk ',"favouriteColour":"red"')"
        expect_status 400 "unknown property"
        req POST /users '{not json'
        expect_status 400 "bad JSON"
        b=$(mk_user "o.brien" ',"displayName":"O'"'"'Brien","onPremisesExtensionAttributes":{"extensionAttribute1":"x1"}')

        # --- get, select, update
        req GET "/users/$a"
        expect_status 200 "get by id"
        expect_json .onPremisesImmutableId null "default property set excludes onPremisesImmutableId"
        req GET "/users/alice@canopy.test?\$select=id,onPremisesImmutableId,employeeId"
        expect_json .onPremisesImmutableId imm-alice "get by UPN with select"
        expect_json .employeeId E1 "select employeeId"
        req PATCH "/users/$a" '{"jobTitle":"Engineer","onPremisesExtensionAttributes":{"extensionAttribute2":"v2"}}'
        expect_status 204 "patch"
        req PATCH "/users/$a" '{"userPrincipalName":"o.brien@canopy.test"}'
        expect_json '.error.details[0].code' ObjectConflict "patch to a taken UPN"
        req PATCH "/users/$a" '{"onPremisesSyncEnabled":true}'
        expect_status 400 "patch read-only"
        req GET "/users/$a?\$select=jobTitle,onPremisesExtensionAttributes"
        expect_json .jobTitle Engineer "patched value"
        expect_json .onPremisesExtensionAttributes.extensionAttribute2 v2 "extension attribute"
        req GET "/users/00000000-0000-0000-0000-000000000000"
        expect_status 404 "unknown id"
        expect_json .error.code Request_ResourceNotFound "unknown id code"

        # --- filters
        req GET "/users?\$filter=displayName%20eq%20'O''Brien'"
        expect_json '.value | length' 1 "eq with doubled quote"
        expect_json '.value[0].id' "$b" "eq with doubled quote id"
        req GET "/users?\$filter=onPremisesImmutableId%20eq%20'imm-alice'%20and%20employeeId%20eq%20'E1'&\$select=id"
        expect_json '.value[0].id' "$a" "eq and eq"
        req GET "/users?\$filter=startswith(userPrincipalName,'ALI')"
        expect_json '.value | length' 1 "startswith"
        req GET "/users?\$filter=proxyAddresses/any(p:p%20eq%20'smtp:alice@canopy.test')"
        expect_json '.value[0].id' "$a" "proxyAddresses any"
        req GET "/users?\$filter=id%20in%20('$a','$b','00000000-0000-0000-0000-000000000000')&\$select=id"
        expect_json '.value | length' 2 "id in (...)"
        req GET "/users?\$filter=userPrincipalName%20in%20('ALICE@canopy.test')%20and%20startswith(displayName,'al')"
        expect_json '.value[0].id' "$a" "userPrincipalName in (...) and startswith"
        req GET "/users?\$filter=displayName%20in%20('alice','O''Brien')"
        expect_json '.value | length' 2 "displayName in (...) (scan)"
        req GET "/users?\$filter=jobTitle%20ne%20'x'"
        expect_status 400 "ne unsupported"
        req GET "/users?\$filter=officeLocation%20eq%20'x'"
        expect_json .error.code Request_UnsupportedQuery "unsupported property"
        req GET "/users?\$filter=displayName%20eq"
        expect_status 400 "syntax error"
        req GET "/users?\$top=1000"
        expect_status 400 "top over 999"

        # --- paging
        local i
        for i in 1 2 3 4 5; do mk_user "page$i" >/dev/null; done
        local next="/users?\$top=2&\$filter=startswith(displayName,'page')" seen=0 pages=0
        while [ -n "$next" ] && [ $pages -lt 10 ]; do
                req GET "$next"
                seen=$((seen + $(jqb '.value | length')))
                next=$(jqb '."@odata.nextLink" // empty')
                pages=$((pages + 1))
        done
        [ $seen = 5 ] && [ $pages = 3 ] && ok || fail "paging: $seen objects in $pages pages"
        ST=$(curl -s --cacert "$CA" -o "$T/body" -D "$T/hdr" -w '%{http_code}' -H "Authorization: Bearer $TOK" \
                -H 'Prefer: odata.maxpagesize=4' "$URL/v1.0/users?\$select=id")
        expect_json '.value | length' 4 "Prefer: odata.maxpagesize"
        [ "$(header Preference-Applied)" = "odata.maxpagesize=4" ] && ok || fail "Preference-Applied header"

        # --- groups and members
        local g g2
        g=$(mk_group grp1)
        g2=$(mk_group grp2)
        req POST "/groups/$g/members/\$ref" "{\"@odata.id\":\"https://graph.microsoft.com/v1.0/directoryObjects/$a\"}"
        expect_status 204 "add member"
        req POST "/groups/$g/members/\$ref" "{\"@odata.id\":\"https://graph.microsoft.com/v1.0/directoryObjects/$a\"}"
        expect_json .error.message "One or more added object references already exist for the following modified properties: 'members'." "add member twice"
        req PATCH "/groups/$g" "{\"members@odata.bind\":[\"https://graph.microsoft.com/v1.0/directoryObjects/$b\",\"https://graph.microsoft.com/v1.0/groups/$g2\"]}"
        expect_status 204 "bind members (user and nested group)"
        req PATCH "/groups/$g" "{\"members@odata.bind\":[\"https://graph.microsoft.com/v1.0/directoryObjects/$b\"]}"
        expect_status 400 "bind existing member"
        local many
        many=$(for i in $(seq 21); do printf '"https://graph.microsoft.com/v1.0/directoryObjects/%s",' "$(cat /proc/sys/kernel/random/uuid)"; done)
        req PATCH "/groups/$g" "{\"members@odata.bind\":[${many%,}]}"
        expect_status 400 "more than 20 binds"
        req GET "/groups/$g/members?\$top=2"
        expect_json '.value | length' 2 "members page 1"
        req GET "$(jqb '."@odata.nextLink"')"
        expect_json '.value | length' 1 "members page 2"
        expect_json '.value[0]["@odata.type"]' "#microsoft.graph.group" "nested group member"
        req DELETE "/groups/$g/members/$b/\$ref"
        expect_status 204 "remove member"
        req DELETE "/groups/$g/members/$b/\$ref"
        expect_status 404 "remove non-member"
        req GET "/groups/not-a-guid"
        expect_status 400 "group id not a GUID"

        # --- delta
        req GET "/users/delta?\$select=displayName&\$top=3"
        local dl="" n=0 p=0
        while :; do
                n=$((n + $(jqb '.value | length')))
                p=$((p + 1))
                next=$(jqb '."@odata.nextLink" // empty')
                dl=$(jqb '."@odata.deltaLink" // empty')
                [ -n "$next" ] && [ $p -lt 10 ] || break
                req GET "$next"
        done
        [ "$n" = 7 ] && [ -n "$dl" ] && ok || fail "initial delta: $n users, deltaLink '$dl'"
        req GET "/users/delta?\$deltatoken=latest"
        expect_json '.value | length' 0 "deltatoken=latest returns no objects"
        local latest
        latest=$(jqb '."@odata.deltaLink"')
        req PATCH "/users/$b" '{"jobTitle":"Chef"}'
        req GET "$latest"
        expect_json '.value[0].id' "$b" "change after deltatoken=latest"
        req DELETE "/users/$a"
        expect_status 204 "soft delete"
        req GET "$dl"
        expect_json '.value | length' 2 "delta after a change and a delete"
        expect_json "[.value[] | select(.id == \"$a\") | .[\"@removed\"].reason] | .[0]" changed "delta @removed changed"
        dl=$(jqb '."@odata.deltaLink"')
        req GET "/groups/delta"
        # alice (soft-deleted) is hidden like in the members list: grp2 remains.
        expect_json "[.value[] | select(.id == \"$g\") | .[\"members@delta\"] | length] | .[0]" 1 "groups delta members@delta"
        local gdl
        gdl=$(jqb '."@odata.deltaLink"')
        req POST "/groups/$g/members/\$ref" "{\"@odata.id\":\"https://graph.microsoft.com/v1.0/directoryObjects/$b\"}"
        req DELETE "/groups/$g/members/$g2/\$ref"
        req GET "$gdl"
        expect_json "[.value[] | select(.id == \"$g\") | .[\"members@delta\"][] | select(.[\"@removed\"])] | length" 1 "members@delta removal"
        expect_json "[.value[] | select(.id == \"$g\") | .[\"members@delta\"][] | select(.id == \"$b\")] | length" 1 "members@delta addition"

        # --- deletedItems
        req GET "/users/$a"
        expect_status 404 "deleted user is gone"
        req GET "/directory/deletedItems/microsoft.graph.user"
        expect_json "[.value[] | select(.id == \"$a\")] | length" 1 "deleted user listed"
        req GET "/directory/deletedItems/$a"
        expect_status 200 "get deleted item"
        local c
        c=$(mk_user alice ',"onPremisesImmutableId":"imm-alice"')
        req POST "/directory/deletedItems/$a/restore"
        expect_json '.error.details[0].code' ObjectConflict "restore onto a taken UPN"
        req DELETE "/users/$c"
        req DELETE "/directory/deletedItems/$c"
        expect_status 204 "permanent delete"
        req POST "/directory/deletedItems/$a/restore"
        expect_status 200 "restore"
        req GET "/users/$a"
        expect_status 200 "restored user readable"
        req GET "$dl"
        expect_json "[.value[] | select(.id == \"$c\") | .[\"@removed\"].reason] | .[0]" deleted "delta @removed deleted"

        # --- $batch
        local reqs
        reqs=$(for i in $(seq 21); do printf '{"id":"%d","method":"GET","url":"/users?$top=1"},' "$i"; done)
        req POST '/$batch' "{\"requests\":[${reqs%,}]}"
        expect_status 400 "batch of 21"
        req POST '/$batch' "{\"requests\":[
                {\"id\":\"1\",\"method\":\"POST\",\"url\":\"/users\",\"headers\":{\"Content-Type\":\"application/json\"},\"body\":$(user_json batch1)},
                {\"id\":\"2\",\"method\":\"POST\",\"url\":\"/users\",\"dependsOn\":[\"1\"],\"headers\":{\"Content-Type\":\"application/json\"},\"body\":$(user_json batch1)},
                {\"id\":\"3\",\"method\":\"GET\",\"url\":\"/users?\$filter=userPrincipalName eq 'batch1@canopy.test'\",\"dependsOn\":[\"2\"]},
                {\"id\":\"4\",\"method\":\"GET\",\"url\":\"/users/$a\"}]}"
        expect_status 200 "batch"
        expect_json '[.responses[] | select(.id == "1") | .status] | .[0]' 201 "batch create"
        expect_json '[.responses[] | select(.id == "2") | .body.error.details[0].code] | .[0]' ObjectConflict "batch conflict"
        expect_json '[.responses[] | select(.id == "3") | .status] | .[0]' 424 "batch failed dependency"
        expect_json '[.responses[] | select(.id == "4") | .status] | .[0]' 200 "batch get"

        # --- throttling with each Retry-After form
        local form re
        for form in int decimal date; do
                faults "{\"writeRate\":0.01,\"writeBurst\":1,\"retryAfter\":\"$form\"}"
                req PATCH "/users/$a" '{"jobTitle":"one"}'
                expect_status 204 "first write within the budget ($form)"
                req PATCH "/users/$a" '{"jobTitle":"two"}'
                expect_status 429 "second write throttled ($form)"
                expect_json .error.code TooManyRequests "throttle code"
                case $form in
                int) re='^[0-9]+$' ;;
                decimal) re='^[0-9]+\.[0-9]+$' ;;
                date) re='^[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} GMT$' ;;
                esac
                [[ "$(header Retry-After)" =~ $re ]] && ok || fail "Retry-After '$(header Retry-After)' is not $form"
                req GET "/users/$a"
                expect_status 200 "reads are not throttled"
        done
        faults '{"writeRate":0}'

        # --- injected faults
        local code
        for code in 500 503 504 429; do
                faults "{\"$code\":1,\"retryAfter\":\"decimal\"}"
                req GET /users
                expect_status "$code" "injected $code"
                case $code in 503 | 429) [ -n "$(header Retry-After)" ] && ok || fail "no Retry-After on $code" ;; esac
                faults "{\"$code\":0}"
        done
        req GET /users
        expect_status 200 "faults off"

        # --- replication lag
        faults '{"replicationLagMs":600000}'
        local lag
        req POST /users "$(user_json lagged)"
        lag=$(jqb .id)
        req GET "/users/$lag"
        expect_status 404 "lagged GET"
        req PATCH "/users/$lag" '{"jobTitle":"x"}'
        expect_status 404 "lagged PATCH"
        req POST "/groups/$g/members/\$ref" "{\"@odata.id\":\"https://graph.microsoft.com/v1.0/directoryObjects/$lag\"}"
        expect_status 404 "lagged member reference"
        req POST /users "$(user_json lagged)"
        expect_json '.error.details[0].code' ObjectConflict "uniqueness sees lagged objects"
        # A replica that has not seen the create cannot delete it either:
        # 404, and the object is still there once the lag is over.
        req DELETE "/users/$lag"
        expect_status 404 "lagged DELETE"
        req POST /\$batch "{\"requests\":[{\"id\":\"1\",\"method\":\"DELETE\",\"url\":\"/users/$lag\"}]}"
        expect_json '.responses[0].status' 404 "lagged DELETE in a batch"
        faults '{"replicationLagMs":0}'
        req GET "/users/$lag"
        expect_status 200 "visible once the lag is over"
        req GET "/directory/deletedItems/$lag"
        expect_status 404 "a lagged DELETE deleted nothing"

        # --- permissions of another app, revocation, admin
        req GET /domains
        expect_json '.value[0].id' canopy.test "domains"
        req GET /organization
        expect_json '.value[0].id' "$TENANT" "organization"
        curl -s --cacert "$CA" -o /dev/null -X POST "$URL/_emulator/revoke?client=$CID"
        req GET /users
        expect_status 401 "revoked client's token"
        [ -z "$(token)" ] && ok || fail "revoked client got a token"
        curl -s --cacert "$CA" -o /dev/null -X POST "$URL/_emulator/unrevoke?client=$CID"
        TOK=$(token)
        req GET /_emulator/state
        expect_json "[.users[] | select(.id == \"$a\") | .onPremisesImmutableId] | .[0]" imm-alice "state dump"
        expect_json "[.groups[] | select(.id == \"$g\") | .members | length] | .[0]" 2 "state members"
        req GET /_emulator/stats
        [ "$(jqb .throttled)" -ge 4 ] && [ "$(jqb .deletes)" -ge 3 ] && [ "$(jqb .writes)" -ge 20 ] && ok ||
                fail "stats: $(cat "$T/body")"
        req POST /_emulator/reset
        expect_status 204 "reset"
        req GET /users
        expect_json '.value | length' 0 "empty after reset"
}

test_forbidden() {
        TOK=$(token)
        req GET /users
        expect_status 200 "read with User.Read.All"
        req POST /users "$(user_json nope)"
        expect_status 403 "write with User.Read.All"
        expect_json .error.code Authorization_RequestDenied "403 code"
        expect_json .error.message "Insufficient privileges to complete the operation." "403 message"
        req GET /groups
        expect_status 403 "groups with User.Read.All"
}

test_expiry() {
        TOK=$(token)
        req GET /users
        expect_status 200 "fresh token"
        sleep 3
        req GET /users
        expect_status 401 "expired token"
        expect_json .error.message "Lifetime validation failed, the token is expired." "expired message"
}

# own_emulator ARGS...: a second emulator with its own CA, for modes that need
# options unknown before the harness picked the tenant. Sets OWN_URL, OWN_CA.
own_emulator() {
        local d=$T/own
        mkdir -p "$d"
        if [ ! -s "$d/ca.pem" ]; then
                openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 \
                        -subj "/CN=emutest CA" 2>/dev/null
                openssl req -newkey rsa:2048 -nodes -keyout "$d/srv.key" -out "$d/srv.csr" -subj "/CN=localhost" 2>/dev/null
                printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/ext"
                openssl x509 -req -in "$d/srv.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
                        -out "$d/srv.pem" -days 2 -extfile "$d/ext" 2>/dev/null
        fi
        rm -f "$d/port"
        "$CANOPY_TEST_BIN/canopy-graph-emulator" --listen "127.0.0.1:${OWN_PORT:-0}" --port-file "$d/port" \
                --tls-cert "$d/srv.pem" --tls-key "$d/srv.key" --domain canopy.test "$@" 2>>"$d/log" &
        OWN_PID=$!
        local i
        for i in $(seq 100); do [ -s "$d/port" ] && break; sleep 0.1; done
        [ -s "$d/port" ] || { fail "own emulator did not start"; cat "$d/log" >&2; return 1; }
        OWN_PORT=$(cat "$d/port")
        OWN_URL=https://127.0.0.1:$OWN_PORT
        OWN_CA=$d/ca.pem
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# assertion ALG KEY CERT THUMBPRINT_HEADER AUD: prints a signed client assertion
assertion() {
        local alg=$1 key=$2 cert=$3 th=$4 aud=$5 hdr pl sig now
        local x5t
        if [ "$th" = "x5t" ]; then
                x5t=$(openssl x509 -in "$cert" -outform DER | openssl dgst -sha1 -binary | b64url)
        else
                x5t=$(openssl x509 -in "$cert" -outform DER | openssl dgst -sha256 -binary | b64url)
        fi
        now=$(date +%s)
        hdr=$(printf '{"alg":"%s","typ":"JWT","%s":"%s"}' "$alg" "$th" "$x5t" | b64url)
        pl=$(printf '{"aud":"%s","iss":"certapp","sub":"certapp","jti":"%s","nbf":%d,"exp":%d}' "$aud" "$RANDOM$RANDOM" \
                "$now" $((now + 600)) | b64url)
        if [ "$alg" = PS256 ]; then
                sig=$(printf '%s.%s' "$hdr" "$pl" | openssl dgst -sha256 -sigopt rsa_padding_mode:pss \
                        -sigopt rsa_pss_saltlen:32 -sign "$key" | b64url)
        else
                sig=$(printf '%s.%s' "$hdr" "$pl" | openssl dgst -sha256 -sign "$key" | b64url)
        fi
        printf '%s.%s.%s' "$hdr" "$pl" "$sig"
}

test_cert() {
        local d=$T/cert
        mkdir -p "$d"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/app.key" -out "$d/app.pem" -days 2 -subj "/CN=certapp" 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/other.key" -out "$d/other.pem" -days 2 -subj "/CN=other" 2>/dev/null
        own_emulator --client-cert "tcert:certapp:$d/app.pem:User.ReadWrite.All" || return
        local aud=$OWN_URL/tcert/oauth2/v2.0/token alg th a
        for alg in RS256 PS256; do
                for th in x5t 'x5t#S256'; do
                        a=$(assertion "$alg" "$d/app.key" "$d/app.pem" "$th" "$aud")
                        curl -s --cacert "$OWN_CA" "$aud" -d grant_type=client_credentials -d client_id=certapp \
                                -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
                                --data-urlencode "client_assertion=$a" \
                                --data-urlencode scope=https://graph.microsoft.com/.default -o "$T/body"
                        expect_json '.token_type' Bearer "assertion $alg $th"
                done
        done
        TOK=$(jqb .access_token)
        URL=$OWN_URL CA=$OWN_CA req GET /users
        expect_status 200 "Graph call with a certificate token"
        a=$(assertion RS256 "$d/other.key" "$d/app.pem" x5t "$aud")
        curl -s --cacert "$OWN_CA" "$aud" -d grant_type=client_credentials -d client_id=certapp \
                -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
                --data-urlencode "client_assertion=$a" --data-urlencode scope=https://graph.microsoft.com/.default -o "$T/body"
        expect_json .error invalid_client "assertion signed by another key"
        a=$(assertion RS256 "$d/other.key" "$d/other.pem" x5t "$aud")
        curl -s --cacert "$OWN_CA" "$aud" -d grant_type=client_credentials -d client_id=certapp \
                -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
                --data-urlencode "client_assertion=$a" --data-urlencode scope=https://graph.microsoft.com/.default -o "$T/body"
        expect_json .error invalid_client "assertion with another certificate's thumbprint"
        # Accepted assertions are counted by algorithm and thumbprint header
        # (refused ones are not): tests of clients read what they sent.
        URL=$OWN_URL CA=$OWN_CA req GET /_emulator/stats
        expect_json '.byAssertion | [."RS256 x5t", ."RS256 x5t#S256", ."PS256 x5t", ."PS256 x5t#S256"] | map(tostring) | join(",")' \
                1,1,1,1 "stats byAssertion"
        expect_json '[.byAssertion[]] | add' 4 "refused assertions not counted"
}

test_snapshot() {
        local snap=$T/snap.json d=$T/own
        printf '%s' 'Sn4p-secret-value' >"$T/snap.secret"
        own_emulator --snapshot "$snap" --client "tsnap:snapapp:$T/snap.secret:Directory.ReadWrite.All" || return
        URL=$OWN_URL CA=$OWN_CA TENANT=tsnap CID=snapapp SECRET_FILE=$T/snap.secret
        TOK=$(token)
        local u g
        u=$(mk_user snapuser ',"onPremisesImmutableId":"snap-1"')
        g=$(mk_group snapgrp)
        req POST "/groups/$g/members/\$ref" "{\"@odata.id\":\"https://graph.microsoft.com/v1.0/directoryObjects/$u\"}"
        req POST /_emulator/snapshot
        expect_status 200 "snapshot on request"
        req GET /_emulator/state
        cp "$T/body" "$T/state.before"
        kill -TERM "$OWN_PID"
        wait "$OWN_PID"
        local rc=$?
        [ $rc = 0 ] && ok || fail "exit status after SIGTERM: $rc"
        OWN_PID=
        [ -s "$snap" ] && ok || fail "no snapshot file after SIGTERM"
        own_emulator --snapshot "$snap" --client "tsnap:snapapp:$T/snap.secret:Directory.ReadWrite.All" || return
        URL=$OWN_URL
        req GET /_emulator/state
        if diff <(jq -S . "$T/state.before") <(jq -S . "$T/body") >/dev/null; then ok; else fail "state differs after restart"; fi
        TOK=$(token)
        req GET "/users?\$filter=onPremisesImmutableId%20eq%20'snap-1'"
        expect_json '.value[0].id' "$u" "index rebuilt from the snapshot"
        req POST /users "$(user_json snapuser)"
        expect_json '.error.details[0].code' ObjectConflict "uniqueness after restart"
}

test_robust() {
        TOK=$(token)
        local g u
        g=$(mk_group robust)
        u=$(mk_user robust)
        local bodies=(
                '[]' '"x"' '1' 'null' '{"accountEnabled":"yes"}' '{"displayName":null}' '{"displayName":{}}'
                '{"passwordProfile":null}' '{"passwordProfile":{"password":7}}' '{"groupTypes":[1]}'
                '{"groupTypes":"Unified"}' '{"businessPhones":["1","2"]}' '{"onPremisesExtensionAttributes":[]}'
                '{"onPremisesExtensionAttributes":{"extensionAttribute16":"x"}}' '{"members@odata.bind":"x"}'
                '{"members@odata.bind":[1,null,{}]}' '{"members@odata.bind":["https://x/v1.0/nothing/abc"]}'
                '{"@odata.id":null}' '{"@odata.id":"no-slash"}' '{"userPrincipalName":"a@b@canopy.test"}'
                '{"userPrincipalName":".a@canopy.test"}' '{"userPrincipalName":"a..b@canopy.test"}'
                '{"userPrincipalName":"@canopy.test"}' '{"userPrincipalName":"\u00e9@canopy.test"}'
                '{"mail":"no-at"}' '{"mailNickname":""}' "{\"displayName\":\"$(printf 'x%.0s' $(seq 300))\"}"
                '{"a":' "$(printf '[%.0s' $(seq 3000))"
        )
        local b p m n=0
        for b in "${bodies[@]}"; do
                for p in /users "/users/$u" /groups "/groups/$g" "/groups/$g/members/\$ref" '/$batch'; do
                        for m in POST PATCH; do
                                req "$m" "$p" "$b"
                                case $ST in 4??) n=$((n + 1)) ;; 204) [ "$m" = PATCH ] && n=$((n + 1)) ;; *) fail "$m $p $b: $ST" ;; esac
                        done
                done
        done
        [ $n -gt 100 ] && ok || fail "only $n malformed requests answered"
        local filters=(
                "(" ")" "'" "eq" "displayName eq 'x" "displayName eq 'x' and" "startswith(" "startswith(displayName)"
                "startswith(displayName,'x'" "proxyAddresses/any(" "proxyAddresses/any(p:q eq 'x')"
                "proxyAddresses/all(p:p eq 'x')" "displayName in ()" "displayName in ('a'" "id in ($(printf "'x',%.0s" $(seq 20))'y')"
                "$(printf '(%.0s' $(seq 100))displayName eq 'x'$(printf ')%.0s' $(seq 100))"
                "$(printf "displayName eq 'x' and %.0s" $(seq 80))displayName eq 'y'"
                "$(printf 'x%.0s' $(seq 5000))" "not displayName eq 'x'" "displayName eq null" "1 eq 1"
        )
        local f
        for f in "${filters[@]}"; do
                req GET "/users?\$filter=$(jq -rn --arg v "$f" '$v|@uri')"
                case $ST in 400) ok ;; *) fail "filter '$f': $ST" ;; esac
        done
        local paths=(
                "/users/$(printf 'a%.0s' $(seq 400))" "/groups/$g/members/x/y/z" "/a/b/c/d/e/f/g/h/i/j/k/l/m/n"
                "/users?\$top=abc" "/users?\$top=-1" "/users?\$skiptoken=zzz" "/users/delta?\$deltatoken=abc"
                "/users/delta?\$skiptoken=d1.99999999.0" "/groups/$g/members?\$skiptoken=c1"
                "/users?\$select=nope" "/users?$(printf 'a=%.0s&' $(seq 100))" "/directory/deletedItems/x/y"
                "/users/%00" "/users/%ZZ" "/directory/deletedItems/microsoft.graph.device"
        )
        for p in "${paths[@]}"; do
                req GET "$p"
                case $ST in 4??) ok ;; *) fail "GET $p: $ST" ;; esac
        done
        # A body over the 8 MiB cap.
        head -c 9000000 /dev/zero | tr '\0' 'a' >"$T/big"
        ST=$(curl -s --cacert "$CA" -o "$T/body" -w '%{http_code}' -H "Authorization: Bearer $TOK" \
                -H 'Content-Type: application/json' --data-binary @"$T/big" "$URL/v1.0/users")
        expect_status 413 "body over the cap"
        for b in 'grant_type=client_credentials&client_id=%ZZ' 'a=b&&&' '' "scope=$(printf 'x%.0s' $(seq 5000))"; do
                ST=$(curl -s --cacert "$CA" -o "$T/body" -w '%{http_code}' -d "$b" "$URL/$TENANT/oauth2/v2.0/token")
                case $ST in 4??) ok ;; *) fail "token body '$b': $ST" ;; esac
        done
        for t in x a.b.c "$(printf 'a%.0s' $(seq 3000))" eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ4In0. ; do
                TOK=$t req GET /users
                expect_status 401 "token '${t:0:20}'"
        done
        req GET /_emulator/health
        expect_json .status ok "still healthy"
}

# ------------------------------------------------------------------ protocols

# pv URL [CURL ARGS...]: prints "HTTP_VERSION STATUS"; body in $T/body, headers in $T/hdr
pv() {
        local u=$1
        shift
        curl -s --cacert "$CA" -o "$T/body" -D "$T/hdr" -w '%{http_version} %{http_code}' "$@" "$u"
}
expect_pv() { if [ "$1" = "$2" ]; then ok; else fail "$3: got '$1', expected '$2'"; fi; }
# stats JQ: a figure of /_emulator/stats, asked over HTTP/1.1 (so that the
# HTTP/2 figures are the test's own requests only)
stats() { curl -s --http1.1 --cacert "$CA" "$URL/_emulator/stats" | jq -r "$1"; }
# hdrs: the response's header names (lower case) and values, but those that
# differ per request
hdrs() { grep -i '^[a-z-]*:' "$T/hdr" | tr -d '\r' | sed 's/^\([^:]*\):/\L\1:/' |
        grep -v -e '^date:' -e '^request-id:' -e '^connection:' -e '^x-ms-ags' | sort; }

test_protocols() {
        TOK=$(token)
        expect_pv "$(pv "$URL/_emulator/health")" "2 200" "ALPN default (h2 offered first)"
        expect_pv "$(pv "$URL/_emulator/health" --http1.1)" "1.1 200" "ALPN http/1.1 on the same port"
        local u g
        u=$(mk_user protou) || return
        g=$(mk_group protog) || return
        # The same Graph answer over both protocols: status, headers, body.
        local v p
        for p in "/users/$u" "/users?\$filter=displayName%20eq%20'protou'" "/groups/$g/members" /users/nobody; do
                for v in 1.1 2; do
                        ST=$(pv "$URL/v1.0$p" "--http$v" -H "Authorization: Bearer $TOK" -H 'client-request-id: cr-proto')
                        hdrs >"$T/hdr.$v"
                        jq -S 'del(.error.innerError)' "$T/body" >"$T/body.$v" 2>/dev/null || cp "$T/body" "$T/body.$v"
                        printf '%s\n' "${ST#* }" >"$T/st.$v"
                done
                if cmp -s "$T/st.1.1" "$T/st.2" && cmp -s "$T/body.1.1" "$T/body.2" && cmp -s "$T/hdr.1.1" "$T/hdr.2"; then
                        ok
                else
                        fail "GET $p differs between HTTP/1.1 and HTTP/2: $(cat "$T/st.1.1") / $(cat "$T/st.2")"
                        diff "$T/hdr.1.1" "$T/hdr.2" >&2
                fi
        done
        [ "$(header client-request-id)" = cr-proto ] && ok || fail "client-request-id not echoed over h2"
        # A write, a 204 without a body, an injected 429 with Retry-After, over h2
        ST=$(pv "$URL/v1.0/users/$u" --http2 -X PATCH -H "Authorization: Bearer $TOK" -H 'Content-Type: application/json' \
                --data-binary '{"jobTitle":"h2"}')
        expect_pv "$ST" "2 204" "PATCH over h2"
        [ -s "$T/body" ] && fail "204 over h2 has a body" || ok
        faults '{"failNext":1,"failStatus":429}'
        ST=$(pv "$URL/v1.0/users/$u" --http2 -H "Authorization: Bearer $TOK")
        expect_pv "$ST" "2 429" "injected 429 over h2"
        [ -n "$(header retry-after)" ] && ok || fail "429 over h2 without Retry-After"
        # Many requests on one connection: the counters by protocol
        local r0 c0 h0 r1 c1 h1 urls=()
        r0=$(stats '.byProtocol["HTTP/2"] // 0')
        c0=$(stats '.connections["HTTP/2"] // 0')
        h0=$(stats '.byProtocol["HTTP/1.1"] // 0')
        for v in $(seq 20); do urls+=("$URL/v1.0/users/$u"); done
        curl -s --http2 --cacert "$CA" -H "Authorization: Bearer $TOK" -o /dev/null -o /dev/null "${urls[@]}" -Z >/dev/null
        r1=$(stats '.byProtocol["HTTP/2"] // 0')
        c1=$(stats '.connections["HTTP/2"] // 0')
        h1=$(stats '.byProtocol["HTTP/1.1"] // 0')
        [ $((r1 - r0)) = 20 ] && ok || fail "byProtocol HTTP/2 grew by $((r1 - r0)), want 20"
        [ $((c1 - c0)) -ge 1 ] && [ $((c1 - c0)) -le 2 ] && ok || fail "20 parallel h2 requests on $((c1 - c0)) connections"
        [ $((h1 - h0)) = 3 ] && ok || fail "byProtocol HTTP/1.1 grew by $((h1 - h0)), want 3 (the stats calls)"
        # The large body cap holds on h2 too
        head -c 9000000 /dev/zero | tr '\0' 'a' >"$T/big"
        ST=$(pv "$URL/v1.0/users" --http2 -H "Authorization: Bearer $TOK" -H 'Content-Type: application/json' \
                --data-binary @"$T/big")
        expect_pv "$ST" "2 413" "body over the cap over h2"
        rm -f "$T/big"
        # --no-http2: ALPN offers http/1.1 only
        own_emulator --no-http2 || return
        expect_pv "$(CA=$OWN_CA pv "$OWN_URL/_emulator/health" --http2)" "1.1 200" "--no-http2"
        kill "$OWN_PID"
        wait "$OWN_PID" 2>/dev/null
        # plain HTTP: h2c with prior knowledge, HTTP/1.1 otherwise, one port
        OWN_PORT=
        own_emulator --insecure-http || return
        local plain=http://127.0.0.1:$OWN_PORT
        expect_pv "$(pv "$plain/_emulator/health" --http2-prior-knowledge)" "2 200" "h2c prior knowledge"
        expect_pv "$(pv "$plain/_emulator/health")" "1.1 200" "plain HTTP/1.1"
        [ "$(curl -s "$plain/_emulator/stats" | jq -c '[.byProtocol["HTTP/2"], .connections["HTTP/2"]]')" = "[1,1]" ] &&
                ok || fail "h2c not counted"
}

case $MODE in
main) test_main ;;
protocols) test_protocols ;;
robust) test_robust ;;
forbidden) test_forbidden ;;
expiry) test_expiry ;;
cert) test_cert ;;
snapshot) test_snapshot ;;
*) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
printf '%s: %d checks, %d failures\n' "$MODE" "$CHECKS" "$FAILS"
[ $FAILS = 0 ] && [ $CHECKS -gt 0 ]
