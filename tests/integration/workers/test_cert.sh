#!/usr/bin/env bash
# test_cert.sh BIN_DIR: canopy-worker authenticates to Graph with a
# certificate, configured through its YAML file alone (graph.cert_file,
# graph.key_file, graph.cert_alg, graph.cert_thumbprint), against the real
# canopy-graph-emulator, which verifies the assertion's signature and
# thumbprint and counts what it accepted by algorithm and header
# (/_emulator/stats byAssertion). Also: bad values stop start-up with
# file:line:column, and an app registered with another certificate is
# refused. Servers (redis, devkafka, the emulator) come from
# tests/harness/lib.sh, on spare loopback ports, stopped by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${1:?usage: test_cert.sh BIN_DIR}" && pwd)
for b in canopy-worker canopy-graph-emulator canopy-devkafka; do
        [ -x "$BIN/$b" ] || { echo "SKIP: $BIN/$b not built"; exit 77; }
done
for p in openssl redis-server jq curl; do
        command -v "$p" >/dev/null || { echo "SKIP: $p not installed"; exit 77; }
done
. "$here/../../harness/lib.sh"
harness_init "$BIN" || exit 1
trap harness_cleanup EXIT
T=$CANOPY_TEST_TMPDIR
CAP=20 # seconds to wait for one worker's authentication
log() { echo "test_cert: $*" >&2; }
fail() {
        log "FAIL: $*"
        for f in "$T"/worker-*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -n 20 "$f"; }; done >&2
        exit 1
}

# worker_yaml NAME CERT KEY [GRAPH-YAML-LINES]: writes $T/NAME.yaml
worker_yaml() {
        cat >"$T/$1.yaml" <<YAML
rules:
  file: "$here/rules.yaml"
worker:
  stages: export
  id: "cert-$1"
kafka:
  brokers: "${CANOPY_TEST_KAFKA_BOOTSTRAP:-127.0.0.1:9}"
  topic_prefix: "cert."
  session_timeout: 6s
redis:
  host: "${CANOPY_TEST_REDIS_HOST:-127.0.0.1}"
  port: ${CANOPY_TEST_REDIS_PORT:-9}
  prefix: "cert-$1:"
export:
  group_id: "cert-$1"
graph:
  tenant: "$TENANT"
  client_id: "$CLIENT"
  url: "${CANOPY_TEST_GRAPH_URL:-https://127.0.0.1:9}"
  ca_file: "${CANOPY_TEST_GRAPH_CA:-/dev/null}"
  cert_file: "$2"
  key_file: "$3"
${4:-}
YAML
}

TENANT=certtenant
CLIENT=$(cat /proc/sys/kernel/random/uuid)

# --- 1. a bad value stops start-up, naming file, line and column (no server needed)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/app.key" -out "$T/app.pem" -days 2 -subj "/CN=canopy-app" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/other.key" -out "$T/other.pem" -days 2 -subj "/CN=other-app" 2>/dev/null
bad() { # NAME GRAPH-LINE EXPECTED-MESSAGE
        worker_yaml "$1" "$T/app.pem" "$T/app.key" "$2"
        local line rc=0
        # the line of the bad key in the file, to check the reported place
        line=$(grep -n "^${2%%:*}:" "$T/$1.yaml" | cut -d: -f1)
        "$BIN/canopy-worker" -c "$T/$1.yaml" >"$T/$1.out" 2>&1 || rc=$?
        [ "$rc" = 2 ] || fail "$1: exit $rc, expected 2: $(cat "$T/$1.out")"
        grep -qF "$T/$1.yaml:$line:$4: $3" "$T/$1.out" || fail "$1: expected '$1.yaml:$line:$4: $3', got: $(cat "$T/$1.out")"
        log "$1: $(cat "$T/$1.out")"
}
bad bad-alg "  cert_alg: HS256" "'graph.cert_alg' = 'HS256' is not one of: RS256|PS256" 13
bad bad-thumb "  cert_thumbprint: sha1" "'graph.cert_thumbprint' = 'sha1' is not one of: x5t|x5t#S256" 20
bad bad-case "  cert_alg: ps256" "'graph.cert_alg' = 'ps256' is not one of: RS256|PS256" 13

# --- 2. servers: the emulator knows the app by app.pem only
harness_redis || exit $?
harness_kafka 1 || exit $?
harness_emulator --client-cert "$TENANT:$CLIENT:$T/app.pem:User.ReadWrite.All" || exit $?
emu() { curl -sf --cacert "$CANOPY_TEST_GRAPH_CA" "$CANOPY_TEST_GRAPH_URL$1"; }
accepted() { emu /_emulator/stats | jq -r --arg k "$1" '.byAssertion[$k] // 0'; }
tokens() { emu /_emulator/stats | jq -r '.tokens'; }

# run_worker NAME: start canopy-worker -c $T/NAME.yaml, recorded for the harness
run_worker() {
        "$BIN/canopy-worker" -c "$T/$1.yaml" </dev/null >"$T/worker-$1.log" 2>&1 &
        _h_record "worker.$1" $!
        disown $! 2>/dev/null
}
stop_worker() { _h_stop "worker.$1"; }
# clean_log NAME: the worker stopped without a sanitizer report (ASan build)
clean_log() {
        ! grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T/worker-$1.log" ||
                fail "$1: sanitizer report: $(grep -E -m1 'Sanitizer|runtime error' "$T/worker-$1.log")"
        grep -q 'stopped (clean)' "$T/worker-$1.log" || fail "$1: the worker did not stop cleanly"
}

# authenticates NAME KEY [GRAPH-YAML-LINES]: the worker's start-up token is
# issued for an assertion of kind KEY ("PS256 x5t#S256"), and no other kind.
authenticates() {
        local name=$1 key=$2 i k
        worker_yaml "$name" "$T/app.pem" "$T/app.key" "${3:-}"
        declare -A b
        for k in "RS256 x5t" "RS256 x5t#S256" "PS256 x5t" "PS256 x5t#S256"; do b[$k]=$(accepted "$k"); done
        local t0
        t0=$(tokens)
        run_worker "$name"
        for ((i = 0; i < CAP * 4; i++)); do
                [ "$(tokens)" -gt "$t0" ] && break # a token was issued: for which assertion?
                grep -q 'authentication failed' "$T/worker-$name.log" && fail "$name: refused: $(grep 'authentication failed' "$T/worker-$name.log")"
                sleep 0.25
        done
        local want=$((${b[$key]} + 1))
        [ "$(accepted "$key")" = "$want" ] || fail "$name: no '$key' assertion accepted within ${CAP}s: $(emu /_emulator/stats | jq -c .byAssertion)"
        for k in "RS256 x5t" "RS256 x5t#S256" "PS256 x5t" "PS256 x5t#S256"; do
                [ "$k" = "$key" ] || [ "$(accepted "$k")" = "${b[$k]}" ] || fail "$name: sent a '$k' assertion, expected '$key'"
        done
        # the stage goes on to Kafka: the credential did not stop it
        for ((i = 0; i < CAP * 4; i++)); do
                grep -q 'export stage started' "$T/worker-$name.log" && break
                sleep 0.25
        done
        grep -q 'export stage started' "$T/worker-$name.log" || fail "$name: export stage did not start"
        stop_worker "$name"
        clean_log "$name"
        ! grep -q 'eyJ' "$T/worker-$name.log" || fail "$name: a JWT (assertion or token) reached the log"
        ! grep -q 'PRIVATE KEY' "$T/worker-$name.log" || fail "$name: key material reached the log"
        log "$name: '$key' assertion accepted"
}

authenticates ps256-sha256 "PS256 x5t#S256" "  cert_alg: PS256
  cert_thumbprint: x5t#S256"
authenticates rs256-sha1 "RS256 x5t" "  cert_alg: RS256
  cert_thumbprint: x5t"
authenticates defaults "RS256 x5t"
authenticates ps256-sha1 "PS256 x5t" "  cert_alg: PS256"

# --- 3. the app is registered with app.pem; the worker holds other.pem: refused
worker_yaml refused "$T/other.pem" "$T/other.key" "  cert_alg: PS256
  cert_thumbprint: x5t#S256"
t0=$(tokens)
run_worker refused
for ((i = 0; i < CAP * 4; i++)); do
        grep -q 'authentication failed' "$T/worker-refused.log" && break
        sleep 0.25
done
grep -q 'Graph authentication failed' "$T/worker-refused.log" || fail "refused: no authentication failure logged"
grep -q 'invalid_client' "$T/worker-refused.log" || fail "refused: the log does not say why: $(grep 'authentication failed' "$T/worker-refused.log")"
[ "$(tokens)" = "$t0" ] || fail "refused: the emulator issued a token for another certificate"
stop_worker refused
clean_log refused
! grep -q 'eyJ' "$T/worker-refused.log" || fail "refused: a JWT reached the log"
log "refused: $(grep -o 'Graph authentication failed[^"]*' "$T/worker-refused.log" | head -1)"
echo "PASS: worker certificate credentials (PS256+x5t#S256, RS256+x5t, defaults, PS256+x5t; refusal; bad values)"
