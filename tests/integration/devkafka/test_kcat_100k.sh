#!/usr/bin/env bash
# Integration test (run under run-with --kafka --topic bulk:8): canopy-devkafka
# serves 100k messages produced by `kcat -P` and consumed by `kcat -G`
# (a consumer group) from other processes; every message is counted, and a
# second run of the group resumes from its committed offsets.
set -u
n=${1:-100000}
b=$CANOPY_TEST_KAFKA_BOOTSTRAP
out=$CANOPY_TEST_TMPDIR/consumed
group=bulk-$$
fail() { echo "FAIL: $*" >&2; exit 1; }

consume() {
        # -e: exit once every assigned partition is at its end.
        timeout 120 kcat -b "$b" -G "$group" -e -q \
                -X session.timeout.ms=6000 -X auto.offset.reset=earliest bulk >"$1" ||
                fail "kcat -G exited $?"
}

seq 1 "$n" | kcat -P -b "$b" -t bulk -X enable.idempotence=true || fail "kcat -P exited $?"
consume "$out.1"
got=$(wc -l <"$out.1")
uniq=$(sort -un "$out.1" | wc -l)
echo "produced $n, consumed $got ($uniq distinct)"
[ "$got" -eq "$n" ] && [ "$uniq" -eq "$n" ] || fail "count mismatch"
sort -n "$out.1" | cmp -s - <(seq 1 "$n") || fail "content mismatch"

# Resume: the group committed its offsets; only new messages come back.
seq $((n + 1)) $((n + 1000)) | kcat -P -b "$b" -t bulk || fail "kcat -P (2) exited $?"
consume "$out.2"
sort -n "$out.2" | cmp -s - <(seq $((n + 1)) $((n + 1000))) ||
        fail "resumed group got $(wc -l <"$out.2") messages, want exactly the 1000 new ones"
echo "PASS: $n messages through kcat -P / kcat -G, group resumed with 1000 more"
