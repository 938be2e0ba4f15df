#!/usr/bin/env bash
# canopy-devkafka shuts down cleanly on SIGTERM and on SIGINT: with a client
# connected and data in its topics, it exits 0 within a few seconds, its
# listeners are closed, and the bootstrap file names what it served.
#
#   test_sigterm.sh BIN_DIR
set -u
bin=$1
work=$(mktemp -d /tmp/canopy-devkafka-sig.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -r "$work/log" ] && tail -n 20 "$work/log" >&2; exit 1; }
command -v kcat >/dev/null || { echo "SKIP: kcat not installed"; exit 77; }

for sig in TERM INT; do
        rm -f "$work/bs" "$work/ctl"
        "$bin/canopy-devkafka" --brokers 2 --topic "sig:3" --bootstrap-file "$work/bs" \
                --control-file "$work/ctl" > "$work/out" 2> "$work/log" &
        pid=$!
        for ((i = 0; i < 300; i++)); do [ -s "$work/bs" ] && [ -s "$work/ctl" ] && break; sleep 0.1; done
        [ -s "$work/bs" ] || fail "no bootstrap file after 30 s"
        bs=$(cat "$work/bs")
        [ "$(head -1 "$work/out")" = "$bs" ] || fail "stdout '$(head -1 "$work/out")' is not the bootstrap list '$bs'"
        seq 1 500 | kcat -b "$bs" -P -t sig -q || fail "produce"
        [ "$(kcat -b "$bs" -C -t sig -e -q -f 'x\n' | wc -l)" = 500 ] || fail "consume"
        # A consumer still connected when the signal comes.
        kcat -b "$bs" -C -t sig -q -o end > /dev/null 2>&1 &
        reader=$!
        sleep 0.5
        kill -"$sig" "$pid"
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && fail "SIG$sig: still running after 10 s"
        wait "$pid"
        rc=$?
        pid=
        kill "$reader" 2>/dev/null; wait "$reader" 2>/dev/null
        [ $rc = 0 ] || fail "SIG$sig: exit status $rc, want 0"
        # Nothing listens any more on the ports it served.
        for hp in ${bs//,/ } $(cat "$work/ctl"); do
                if (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; then
                        fail "SIG$sig: $hp still accepts connections"
                fi
        done
        echo "ok: SIG$sig: exit 0, ${bs//,/ } and control $(cat "$work/ctl") closed"
done
echo "PASS: devkafka stops cleanly on SIGTERM and SIGINT"
