#!/usr/bin/env bash
# Every Canopy service started against a broker that is not there stops
# with a clear message (where, and what to check) after the bounded wait of
# kafka.startup_timeout, instead of hanging or retrying forever.
#   test_unreachable_services.sh BIN_DIR RULES_FILE   (under run-with --redis)
set -uo pipefail
bin=$1 rules=$2
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# A port nothing listens on: bind one, note it, close it.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
printf 'tok-0123456789abcdef admin ops\n' > "$t/tokens"
printf 's3cr\xc3\xa9t\n' > "$t/secret"
common="kafka:
  brokers: \"127.0.0.1:$port\"
  startup_timeout: 2s
redis:
  host: $CANOPY_TEST_REDIS_HOST
  port: $CANOPY_TEST_REDIS_PORT"
cat > "$t/guard.yaml" <<YAML
admin:
  tokens_file: $t/tokens
  listen: "127.0.0.1:0"
$common
YAML
cat > "$t/worker.yaml" <<YAML
rules:
  file: $rules
graph:
  tenant: t1
  client_id: c1
  client_secret_file: $t/secret
  url: "https://127.0.0.1:$port/v1.0"
$common
YAML
cat > "$t/producer.yaml" <<YAML
connector:
  id: north
ldap:
  uris: ["ldaps://127.0.0.1:$port"]
  bind_dn: "cn=sync,dc=x"
  password_file: $t/secret
  base_dns: ["dc=x"]
mode: full
$common
YAML
for svc in guard worker producer-ldap; do
        conf=$t/${svc%-ldap}.yaml
        s=$(date +%s%N)
        timeout 60 "$bin/canopy-$svc" -c "$conf" > "$t/$svc.out" 2>&1
        rc=$?
        ms=$(( ($(date +%s%N) - s) / 1000000 ))
        [ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "canopy-$svc: exit $rc after $ms ms: $(tail -3 "$t/$svc.out")"
        grep -q "no Kafka broker reachable at 127.0.0.1:$port within 2000 ms" "$t/$svc.out" ||
                fail "canopy-$svc: no clear message: $(tail -3 "$t/$svc.out")"
        grep -q "check kafka.brokers or CANOPY_KAFKA_BROKERS" "$t/$svc.out" ||
                fail "canopy-$svc: the message does not say what to check: $(tail -3 "$t/$svc.out")"
        ! grep -q "s3cr" "$t/$svc.out" || fail "canopy-$svc: a secret reached the log"
        # Bounded: the 2 s of kafka.startup_timeout, with room for a slow
        # machine (this is not a timing test: only "not forever").
        [ "$ms" -ge 1900 ] && [ "$ms" -lt 30000 ] || fail "canopy-$svc: stopped after $ms ms (startup_timeout 2 s)"
        echo "ok - canopy-$svc: exit $rc after $ms ms: no Kafka broker reachable at 127.0.0.1:$port"
done
