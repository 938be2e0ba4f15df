#!/usr/bin/env bash
# Integration test of tests/harness/lib.sh used directly, as chaos tests do:
# servers are stopped (TERM or KILL) and restarted mid-test on the same
# coordinates, and cleanup still leaves nothing behind.
#
#   test_lib_chaos.sh BIN_DIR
set -u
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../harness/lib.sh"

fail() { echo "FAIL: $*" >&2; exit 1; }
gone() { ! kill -0 "$1" 2>/dev/null || [ "$(ps -o stat= -p "$1")" = Z ]; }

harness_init "$bin" || fail "harness_init"
trap harness_cleanup EXIT
dir=$CANOPY_TEST_TMPDIR

# redis: restart on the same port (data is not persisted).
harness_redis || exit
old=$CANOPY_TEST_REDIS_PID port=$CANOPY_TEST_REDIS_PORT
redis-cli -p "$port" set k v >/dev/null
harness_stop_redis KILL
gone "$old" || fail "redis still running after harness_stop_redis KILL"
redis-cli -p "$port" ping >/dev/null 2>&1 && fail "redis answers while stopped"
harness_restart_redis || fail "harness_restart_redis"
[ "$CANOPY_TEST_REDIS_PORT" = "$port" ] || fail "redis port changed"
[ "$(redis-cli -p "$port" ping)" = PONG ] || fail "redis after restart"
echo "ok: redis stop/restart"

# slapd: the data survives a restart on the same ports.
harness_slapd ex "$here/example.ldif" || exit
uri=$CANOPY_TEST_LDAP_EX_URI old=$CANOPY_TEST_LDAP_EX_PID
auth=(-x -H "$uri" -D "$CANOPY_TEST_LDAP_EX_BINDDN" -y "$CANOPY_TEST_LDAP_EX_PWFILE")
printf 'dn: uid=bob,ou=people,%s\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\nsn: B\n' \
        "$CANOPY_TEST_LDAP_EX_BASE" | ldapadd "${auth[@]}" >/dev/null || fail "ldapadd"
harness_stop_slapd ex
gone "$old" || fail "slapd still running"
ldapsearch "${auth[@]}" -b "$CANOPY_TEST_LDAP_EX_BASE" -s base dn >/dev/null 2>&1 &&
        fail "slapd answers while stopped"
harness_restart_slapd ex || fail "harness_restart_slapd"
[ "$CANOPY_TEST_LDAP_EX_PID" != "$old" ] || fail "slapd pid not updated"
ldapsearch "${auth[@]}" -LLL -b "$CANOPY_TEST_LDAP_EX_BASE" "(uid=bob)" dn | grep -q "^dn: uid=bob" ||
        fail "slapd lost data across restart"
echo "ok: slapd stop/restart keeps data"

# devkafka: fault commands, then a restart gives a new, empty cluster.
harness_kafka 2 chaos:3 || exit
harness_kafka_ctl broker-down 2 | grep -q "^OK" || fail "broker-down"
harness_kafka_ctl broker-up 2 | grep -q "^OK" || fail "broker-up"
harness_kafka_ctl broker-down 7 >/dev/null && fail "broker-down 7 accepted"
old=$CANOPY_TEST_KAFKA_PID
harness_restart_kafka || fail "harness_restart_kafka"
gone "$old" || fail "old devkafka still running"
kcat -L -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -m 10 | grep -q 'topic "chaos" with 3 partitions' ||
        fail "restarted devkafka lacks its topic"
echo "ok: devkafka faults and restart"

# samba: restart on the same address keeps the data.
if [ "$(id -u)" = 0 ] && command -v samba >/dev/null; then
        harness_samba ad1 "$here/ad.ldif" || exit
        old=$CANOPY_TEST_AD_AD1_PID
        harness_stop_samba ad1
        gone "$old" || fail "samba still running"
        harness_restart_samba ad1 || fail "harness_restart_samba"
        ldapsearch -x -LLL -H "$CANOPY_TEST_AD_AD1_URI" -D "$CANOPY_TEST_AD_AD1_BINDDN" \
                -y "$CANOPY_TEST_AD_AD1_PWFILE" -b "$CANOPY_TEST_AD_AD1_BASE" "(sAMAccountName=bob)" dn |
                grep -q "^dn: CN=Bob" || fail "samba lost data across restart"
        echo "ok: samba stop/restart"
fi

# emulator: restart on the same port (when it is built).
if [ -x "$bin/canopy-graph-emulator" ]; then
        harness_emulator || exit
        old=$CANOPY_TEST_GRAPH_PID url=$CANOPY_TEST_GRAPH_URL
        harness_stop_emulator
        gone "$old" || fail "emulator still running"
        harness_restart_emulator || fail "harness_restart_emulator"
        [ "$CANOPY_TEST_GRAPH_URL" = "$url" ] || fail "emulator URL changed"
        curl -s -o /dev/null --cacert "$CANOPY_TEST_GRAPH_CA" "$url/v1.0/users" || fail "emulator after restart"
        echo "ok: emulator stop/restart"
fi

pids=$(awk '{print $2}' "$dir/.harness/procs")
harness_cleanup
trap - EXIT
for p in $pids; do
        gone "$p" || fail "process $p left after harness_cleanup"
done
[ ! -e "$dir" ] || fail "temp dir left after harness_cleanup"
echo "PASS: chaos ($(echo $pids | wc -w) servers stopped)"
