#!/usr/bin/env bash
# Integration test (run under run-with --kafka=2): the control protocol of
# canopy-devkafka, through `canopy-devkafka ctl` and its exit codes.
set -u
ctl() { "$CANOPY_TEST_BIN/canopy-devkafka" ctl "$CANOPY_TEST_KAFKA_CONTROL" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { out=$(ctl "$@") || fail "'$*' -> $out"; case $out in OK*) ;; *) fail "'$*' -> $out";; esac; }
err() { out=$(ctl "$@"); rc=$?; [ $rc -eq 1 ] && case $out in ERR*) true;; *) false;; esac || fail "'$*' should fail: $rc $out"; }

[ "$(ctl ping)" = "OK pong" ] || fail ping
[ "$(ctl bootstrap)" = "OK $CANOPY_TEST_KAFKA_BOOTSTRAP" ] || fail bootstrap
ok topic ctl 7
kcat -L -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -t ctl -m 10 | grep -q 'topic "ctl" with 7 partitions' || fail "topic not created"
ok leader ctl 3 2
kcat -L -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -t ctl -m 10 | grep -q 'partition 3, leader 2,' || fail "leader not moved"
ok rtt 1 50
ok rtt 1 0
ok errors Produce NOT_LEADER_FOR_PARTITION 2
ok errors 1 6 1
ok clear-errors Produce
ok clear-errors Fetch
ok broker-down 2
ok broker-up 2
err broker-down 3
err broker-up 0
err rtt 1 -5
err leader ctl x 1
err errors Nope NOT_LEADER_FOR_PARTITION 1
err errors Produce NO_SUCH_ERROR 1
err errors Produce 6 0
err topic bad 0
err bogus
err ping extra
# A pushed error reaches the next Produce request: one delivery fails.
ok errors Produce INVALID_MSG 1
out=$(echo one | kcat -P -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -t ctl 2>&1) && fail "produce should fail: $out"
case $out in *"Invalid message"*) ;; *) fail "unexpected kcat error: $out" ;; esac
echo two | kcat -P -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -t ctl || fail "produce after the error"
"$CANOPY_TEST_BIN/canopy-devkafka" ctl 127.0.0.1:1 ping >/dev/null 2>&1; [ $? -eq 2 ] || fail "connection error should exit 2"
# Several commands on one connection, one reply line each.
exec 3<>"/dev/tcp/${CANOPY_TEST_KAFKA_CONTROL%:*}/${CANOPY_TEST_KAFKA_CONTROL##*:}"
printf 'ping\nbroker-up 1\nnope\n' >&3
read -r a <&3; read -r b <&3; read -r c <&3
exec 3<&-
[ "$a" = "OK pong" ] && [ "${b%% *}" = OK ] && [ "${c%% *}" = ERR ] || fail "pipelined: $a / $b / $c"
echo "PASS: control protocol"
