#!/usr/bin/env bash
# Secrets never reach a log line (docs/RELIABILITY.md): the whole pipeline
# (tests/chaos/chaos_lib.sh: two slapd forests, redis with a password,
# devkafka, the Graph emulator, producers, workers, guard) runs to
# convergence, plus the failure paths that tend to leak: a worker with a
# wrong Graph client secret, a producer with a wrong LDAP password, a worker
# with a wrong Redis password, and guard admin calls with a wrong and a good
# token. Then every log line of every process is searched for every secret
# (LDAP admin and connector passwords, Graph client secret and the wrong
# one, Redis password and the wrong one, the admin token), and for bearer
# tokens (JWTs, "eyJ...").
set -uo pipefail
here=$(dirname "$(readlink -f "$0")")
. "$here/../../chaos/chaos_lib.sh"
CANOPY_CHAOS_USERS=${CANOPY_SECRETS_USERS:-60} CANOPY_CHAOS_LONG= chaos_init "$1"
CHAOS_REDIS_PASSWORD=1
chaos_start

# Failure paths, each a short-lived extra process whose log is searched too.
wrong_graph=wrong-graph-secret-$(_h_secret 8)
wrong_ldap=wrong-ldap-password-$(_h_secret 8)
wrong_redis=wrong-redis-password-$(_h_secret 8)
printf '%s' "$wrong_graph" >"$T/wrong-graph.secret"
printf '%s' "$wrong_ldap" >"$T/wrong-ldap.pw"
printf '%s' "$wrong_redis" >"$T/wrong-redis.pw"
chmod 600 "$T"/wrong-*
sed "s|client_secret_file: .*|client_secret_file: \"$T/wrong-graph.secret\"|" "$T/worker.yaml" >"$T/worker-badgraph.yaml"
sed "s|password_file: \"$CANOPY_TEST_REDIS_PASSWORD_FILE\"|password_file: \"$T/wrong-redis.pw\"|" "$T/worker.yaml" >"$T/worker-badredis.yaml"
sed "s|password_file: \"$(_lvar north CONNECTOR_PWFILE)\"|password_file: \"$T/wrong-ldap.pw\"|" "$T/producer-north.yaml" |
        sed 's|id: "north"|id: "northbad"|' >"$T/producer-badldap.yaml"
grep -q wrong-graph "$T/worker-badgraph.yaml" && grep -q wrong-redis "$T/worker-badredis.yaml" &&
        grep -q wrong-ldap "$T/producer-badldap.yaml" || chaos_fail "could not write the failing configs"
_chaos_spawn bad.graph "$T/worker-badgraph.log" "$BIN/canopy-worker" -c "$T/worker-badgraph.yaml" --set worker.id=badgraph \
        --set join.group_id=badgraph-join --set export.group_id=badgraph-export
_chaos_spawn bad.redis "$T/worker-badredis.log" "$BIN/canopy-worker" -c "$T/worker-badredis.yaml" --set worker.id=badredis
_chaos_spawn bad.ldap "$T/producer-badldap.log" "$BIN/canopy-producer-ldap" -c "$T/producer-badldap.yaml"

chaos_wait_converged "pipeline with secrets"
guard_port=$(grep -o 'http://127.0.0.1:[0-9]*' "$T/guard.log" | head -1 | sed 's/.*://')
if [ -n "$guard_port" ]; then
        curl -s -o /dev/null -H "Authorization: Bearer wrong-$CHAOS_ADMIN_TOKEN" "http://127.0.0.1:$guard_port/v1/status"
        curl -s -o /dev/null -H "Authorization: Bearer $CHAOS_ADMIN_TOKEN" "http://127.0.0.1:$guard_port/v1/status"
        curl -s -o /dev/null -H "Authorization: Bearer $CHAOS_ADMIN_TOKEN" "http://127.0.0.1:$guard_port/v1/audit"
fi
sleep 2
for k in bad.graph bad.redis bad.ldap; do chaos_kill "$k" TERM; done
# The failing processes must have said why (so the search below covers a real failure path).
grep -qi "auth\|401\|credential\|secret" "$T/worker-badgraph.log" || chaos_fail "the worker with a wrong Graph secret logged no auth failure"
grep -qi "auth\|password\|WRONGPASS\|redis" "$T/worker-badredis.log" || chaos_fail "the worker with a wrong Redis password logged nothing"
grep -qi "bind\|credential\|invalid" "$T/producer-badldap.log" || chaos_fail "the producer with a wrong password logged no bind failure"

secrets=(
        "LDAP admin password (north)=$(cat "$(_lvar north PWFILE)")"
        "LDAP admin password (south)=$(cat "$(_lvar south PWFILE)")"
        "LDAP connector password (north)=$(cat "$(_lvar north CONNECTOR_PWFILE)")"
        "LDAP connector password (south)=$(cat "$(_lvar south CONNECTOR_PWFILE)")"
        "Graph client secret=$(cat "$CANOPY_TEST_GRAPH_SECRET_FILE")"
        "wrong Graph client secret=$wrong_graph"
        "Redis password=$(cat "$CANOPY_TEST_REDIS_PASSWORD_FILE")"
        "wrong Redis password=$wrong_redis"
        "wrong LDAP password=$wrong_ldap"
        "guard admin token=$CHAOS_ADMIN_TOKEN"
)
mapfile -t logs < <(find "$T" -name '*.log' -type f)
# The search itself must be able to fail: a canary line with a secret is found.
printf '{"msg":"canary %s"}\n' "$(cat "$CANOPY_TEST_GRAPH_SECRET_FILE")" >"$T/canary.txt"
grep -qF -- "$(cat "$CANOPY_TEST_GRAPH_SECRET_FILE")" "$T/canary.txt" "${logs[@]}" ||
        chaos_fail "the secret search does not find a planted secret"
rm -f "$T/canary.txt"
lines=$(cat "${logs[@]}" | wc -l)
leaks=0
for s in "${secrets[@]}"; do
        name=${s%%=*} val=${s#*=}
        [ ${#val} -ge 8 ] || chaos_fail "secret '$name' is too short to search for"
        if grep -rlF -- "$val" "${logs[@]}" >"$T/leak" 2>/dev/null; then
                echo "LEAK: $name found in: $(tr '\n' ' ' <"$T/leak")"
                grep -hF -- "$val" "${logs[@]}" | head -3 | cut -c1-300
                leaks=$((leaks + 1))
        fi
done
# Access tokens (JWT) issued by the emulator.
if grep -lE 'eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}' "${logs[@]}" >"$T/leak" 2>/dev/null; then
        echo "LEAK: a bearer token (JWT) in: $(tr '\n' ' ' <"$T/leak")"
        leaks=$((leaks + 1))
fi
chaos_log "searched $lines log lines in ${#logs[@]} files for ${#secrets[@]} secrets and bearer tokens: $leaks leak(s)"
[ $leaks = 0 ] || chaos_fail "secrets in logs"
echo "PASS: no secret in any log"
