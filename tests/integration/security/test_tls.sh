#!/usr/bin/env bash
# TLS is enforced (docs/RELIABILITY.md): run under tests/harness/run-with
# --redis --kafka=1 (so that the services get past Kafka and Redis).
#  - a producer with an ldap:// URI and ldap.tls none, without
#    ldap.allow_insecure, is refused at start with a clear message;
#  - a worker with an http:// Graph URL (or authority URL) without
#    graph.allow_insecure is refused with a clear message, and no request
#    reaches the plain-HTTP listener;
#  - with the allow_insecure switches set, neither refuses for that reason.
# The guard's admin API (no token -> 401, wrong role -> 403) is covered by
# tests/integration/guard/test_guard_service.sh.
set -uo pipefail
bin=$1 t=$CANOPY_TEST_TMPDIR
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok   $*"; }

# A plain listener that records whatever connects to it (nothing may).
python3 - "$t/plain.port" "$t/plain-http.txt" <<'PY' &
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
while True:
    c, _ = s.accept(); c.settimeout(2)
    try:
        data = c.recv(4096)
    except OSError:
        data = b""
    with open(sys.argv[2], "ab") as f:
        f.write(b"CONNECT " + data[:200] + b"\n")
    c.close()
PY
listener=$!
trap 'kill $listener 2>/dev/null' EXIT
for ((i = 0; i < 50; i++)); do [ -s "$t/plain.port" ] && break; sleep 0.1; done
port=$(cat "$t/plain.port")

cat >"$t/producer.yaml" <<YAML
connector:
  id: "plain"
mode: syncrepl
ldap:
  uris: ["ldap://127.0.0.1:$port"]
  bind_dn: "cn=x,dc=test"
  password: "not-used-password-1"
  tls: none
  base_dns: ["dc=test"]
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
YAML
timeout 60 "$bin/canopy-producer-ldap" -c "$t/producer.yaml" >"$t/p.log" 2>&1
rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && grep -q "plain LDAP is refused unless ldap.allow_insecure is true" "$t/p.log"; then
        ok "producer ldap:// + tls none refused: $(grep -o '"msg":"[^"]*"' "$t/p.log" | tail -1)"
else
        fail "producer ldap:// + tls none: rc $rc"; tail -5 "$t/p.log"
fi
# starttls on ldap:// is not plain: no refusal for that reason (it fails to connect instead).
# (these two may connect: to a closed port, not to the listener)
sed "s/tls: none/tls: starttls/; s/127.0.0.1:$port/127.0.0.1:1/" "$t/producer.yaml" >"$t/producer-starttls.yaml"
sed "s/127.0.0.1:$port/127.0.0.1:1/" "$t/producer.yaml" >"$t/producer-allowed.yaml"
timeout 8 "$bin/canopy-producer-ldap" -c "$t/producer-starttls.yaml" >"$t/p2.log" 2>&1
grep -q "plain LDAP is refused" "$t/p2.log" && fail "starttls refused as plain" || ok "producer ldap:// + starttls not refused as plain"
timeout 8 "$bin/canopy-producer-ldap" -c "$t/producer-allowed.yaml" --set ldap.allow_insecure=true >"$t/p3.log" 2>&1
grep -q "plain LDAP is refused" "$t/p3.log" && fail "allow_insecure ignored" || ok "producer with ldap.allow_insecure=true not refused"

worker_conf() { # URL AUTHORITY
        cat <<YAML
rules:
  file: "$CANOPY_SOURCE_DIR/tests/chaos/data/tiny-rules.yaml"
graph:
  tenant: "t"
  client_id: "c"
  client_secret: "not-used-secret-1"
  url: "$1"
  authority_url: "$2"
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
YAML
}
for case in "http://127.0.0.1:$port https://login.example.test" "https://graph.example.test http://127.0.0.1:$port"; do
        set -- $case
        worker_conf "$1" "$2" >"$t/w.yaml"
        timeout 60 "$bin/canopy-worker" -c "$t/w.yaml" --set "worker.id=tls-$RANDOM" >"$t/w.log" 2>&1
        rc=$?
        if [ $rc != 0 ] && [ $rc != 124 ] && grep -q "is plain http:// (set allow_insecure for tests only)" "$t/w.log"; then
                ok "worker url $1 authority $2 refused: $(grep -o 'graph: [a-z_]* http://[^ ]* is plain http://' "$t/w.log" | head -1)"
        else
                fail "worker url $1 authority $2: rc $rc"; grep -v '"info"' "$t/w.log" | tail -5
        fi
done
sleep 1
if [ -s "$t/plain-http.txt" ]; then
        fail "a request reached the plain-HTTP listener: $(head -c 200 "$t/plain-http.txt")"
else
        ok "nothing was sent in clear"
fi
[ $fails = 0 ] && echo "PASS: TLS enforced" || exit 1
