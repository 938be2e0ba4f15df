# common.sh: helpers of the producer integration tests (sourced; bash).
# Runs under tests/harness/run-with, which exports CANOPY_TEST_*.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=$CANOPY_TEST_TMPDIR
BIN=$CANOPY_TEST_BIN
EV=$T/events.jsonl
CHECK="$HERE/check.py"
PIDS=()
fail() { echo "FAIL: $*" >&2; dump_diag; exit 1; }
ok() { echo "ok - $*"; }
dump_diag() {
        echo "--- last events" >&2; tail -n 15 "$EV" >&2 2>/dev/null
        for f in "$T"/producer-*.log; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }; done
}
cleanup() {
        local p
        for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
        for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

# start_tail: consume the changes topic into $EV (unique group).
start_tail() {
        : >"$EV"
        "$TAIL_BIN" "$CANOPY_TEST_KAFKA_BOOTSTRAP" "tail-$$-$RANDOM" >"$EV" 2>"$T/tail.log" &
        PIDS+=($!)
        TAIL_PID=$!
}

# wait_for DESC EXPR [SINCE]: wait (bounded, 120 s) until check.py EXPR holds.
wait_for() {
        local desc=$1 expr=$2 since=${3:-0} i
        for ((i = 0; i < 600; i++)); do
                if "$CHECK" "$EV" "$expr" "$since" 2>/dev/null; then ok "$desc"; return 0; fi
                sleep 0.2
        done
        fail "$desc (timed out waiting for: $expr)"
}

# assert DESC EXPR [SINCE]: check once.
assert() {
        "$CHECK" "$EV" "$2" "${3:-0}" || fail "$1 ($2)"
        ok "$1"
}

nevents() { wc -l <"$EV" | tr -d ' '; }

# start_producer NAME CONFIG [--set k=v ...]: background producer, log in producer-NAME.log
start_producer() {
        local name=$1 cfg=$2
        shift 2
        "$BIN/canopy-producer-ldap" -c "$cfg" --set "producer.id=$name" "$@" >>"$T/producer-$name.log" 2>&1 &
        PIDS+=($!)
        LAST_PID=$!
}

# wait_log NAME TEXT: wait until the producer's log has TEXT.
wait_log() {
        local i
        for ((i = 0; i < 600; i++)); do
                grep -q -- "$2" "$T/producer-$1.log" 2>/dev/null && return 0
                sleep 0.2
        done
        fail "producer $1 never logged '$2'"
}

# yaml_state: the kafka, redis and lease sections of a producer config for
# the servers of this run (to end a config written by a test).
yaml_state() {
        cat <<YAML
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
lease:
  ttl: 3s
YAML
}
