#!/usr/bin/env bash
# Chaos: faults during a sync, with changes flowing (docs/RELIABILITY.md).
# One stack; each phase injects one kind of fault for CHAOS_PHASE seconds
# while the change generator writes to LDAP, then stops the faults and the
# changes and waits until canopy-converge-check finds the emulator equal to
# the directories' content: 0 missing, 0 extra, 0 duplicates, no wrong
# property or membership (no lost change).
#   1. workers SIGKILLed every few seconds (and restarted) during the initial sync
#   2. producers SIGKILLed (and restarted)
#   3. devkafka: leader moves, request errors, RTT, a broker down and up
#   4. Redis SIGKILLed and restarted (AOF on)
#   5. Graph emulator: 429/500/503/504 faults, latency, replication lag
#   6. LDAP servers restarted (TERM, and KILL in long mode)
# Long mode (make chaos / ctest -C long): 2 x 10,000 users, 60 s phases.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/chaos_lib.sh"
chaos_init "$1"
chaos_start
kctl() { harness_kafka_ctl "$@" >/dev/null || chaos_fail "devkafka ctl $*"; }
phase_end() { echo $(($(date +%s) + CHAOS_PHASE)); }
# CANOPY_CHAOS_PHASES="1 3": run only these phases (default: all).
phase_on() { [ -z "${CANOPY_CHAOS_PHASES:-}" ] || [[ " $CANOPY_CHAOS_PHASES " == *" $1 "* ]]; }

# 0. (only when asked: CANOPY_CHAOS_PHASES="0 ...") a clean initial sync,
# without changes or faults, so that later phases start converged.
if [ -n "${CANOPY_CHAOS_PHASES:-}" ] && phase_on 0; then
        chaos_wait_converged "0 initial sync (no faults)"
fi

# 1. Workers killed during the initial sync.
if phase_on 1; then
        chaos_log "phase 1: SIGKILL a random worker every 3 s, during the initial sync"
        chaos_changes_start
        end=$(phase_end) kills=0
        while [ "$(date +%s)" -lt "$end" ]; do
                sleep 3
                w=$((RANDOM % CHAOS_WORKERS + 1))
                chaos_kill "worker.$w" KILL
                kills=$((kills + 1))
                sleep 0.5
                chaos_start_worker "$w"
        done
        chaos_changes_stop
        chaos_wait_converged "1 worker SIGKILL x$kills"
fi

# 2. Producers killed.
if phase_on 2; then
        chaos_log "phase 2: SIGKILL the producers"
        chaos_changes_start
        end=$(phase_end) kills=0
        while [ "$(date +%s)" -lt "$end" ]; do
                sleep 2
                for n in "${CHAOS_FORESTS[@]}"; do
                        chaos_kill "producer.$n" KILL
                        kills=$((kills + 1))
                        sleep 1
                        chaos_start_producer "$n"
                done
        done
        chaos_changes_stop
        chaos_wait_converged "2 producer SIGKILL x$kills"
fi

# 3. Kafka faults.
if phase_on 3; then
        chaos_log "phase 3: devkafka leader moves, request errors, RTT, broker down/up"
        chaos_changes_start
        end=$(phase_end) round=0
        while [ "$(date +%s)" -lt "$end" ]; do
                round=$((round + 1))
                for t in changes mv; do
                        for p in $((RANDOM % 16)) $((RANDOM % 16)); do
                                kctl leader "$PREFIX$t" "$p" $((RANDOM % 3 + 1))
                        done
                done
                kctl errors Produce NOT_LEADER_FOR_PARTITION 5
                kctl errors Fetch NOT_LEADER_FOR_PARTITION 5
                kctl errors Produce REQUEST_TIMED_OUT 3
                kctl errors OffsetCommit COORDINATOR_NOT_AVAILABLE 2
                kctl rtt $((RANDOM % 3 + 1)) 300
                sleep 2
                b=$((RANDOM % 3 + 1))
                kctl broker-down "$b"
                sleep 2
                kctl broker-up "$b"
                for b in 1 2 3; do kctl rtt "$b" 0; done
        done
        chaos_changes_stop
        for a in Produce Fetch OffsetCommit; do kctl clear-errors "$a"; done
        chaos_wait_converged "3 kafka faults x$round"
fi

# 4. Redis crash and restart (AOF).
if phase_on 4; then
        chaos_log "phase 4: SIGKILL redis-server and restart it (appendonly)"
        chaos_changes_start
        end=$(phase_end) kills=0
        while [ "$(date +%s)" -lt "$end" ]; do
                sleep 3
                harness_stop_redis KILL
                kills=$((kills + 1))
                sleep 1
                harness_restart_redis || chaos_fail "redis restart"
        done
        chaos_changes_stop
        chaos_wait_converged "4 redis SIGKILL x$kills"
fi

# 5. Graph faults.
if phase_on 5; then
        chaos_log "phase 5: Graph emulator faults (429 10%, 500 5%, 503 5%, 504 2%), latency, replication lag"
        chaos_emu POST /_emulator/faults '{"429":0.1,"500":0.05,"503":0.05,"504":0.02,"latencyMs":30,"replicationLagMs":400,"retryAfter":"decimal"}' \
                >/dev/null || chaos_fail "cannot set emulator faults"
        chaos_changes_start
        sleep "$CHAOS_PHASE"
        chaos_changes_stop
        chaos_emu POST /_emulator/faults '{"429":0,"500":0,"503":0,"504":0,"latencyMs":0,"replicationLagMs":0}' >/dev/null ||
                chaos_fail "cannot clear emulator faults"
        faults=$(chaos_emu GET /_emulator/stats | jq '(.faults // 0) + (.throttled // 0)')
        chaos_wait_converged "5 graph faults ($faults hit)"
fi

# 6. LDAP servers restarted.
if phase_on 6; then
        chaos_log "phase 6: restart the LDAP servers"
        chaos_changes_start
        end=$(phase_end) restarts=0
        while [ "$(date +%s)" -lt "$end" ]; do
                sleep 3
                for n in "${CHAOS_FORESTS[@]}"; do
                        sig=TERM
                        [ "$CHAOS_MODE" = long ] && [ $((restarts % 2)) = 1 ] && sig=KILL
                        harness_stop_slapd "$n" "$sig"
                        sleep 1
                        harness_restart_slapd "$n" || chaos_fail "slapd $n restart"
                        restarts=$((restarts + 1))
                done
        done
        chaos_changes_stop
        chaos_wait_converged "6 slapd restart x$restarts"
fi

chaos_report
echo "PASS: chaos faults"
