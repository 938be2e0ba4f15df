# shellcheck shell=bash
# Chaos test library (docs/RELIABILITY.md): the whole pipeline on the test
# harness (tests/harness/lib.sh), a change generator, fault helpers and the
# convergence wait, which runs canopy-converge-check against the directories'
# current content until it passes.
#
#   . tests/chaos/chaos_lib.sh
#   chaos_init BIN_DIR                 # sizes: bounded, or long with CANOPY_CHAOS_LONG=1
#   chaos_start                        # forests, redis (AOF), devkafka, emulator, producers, workers, guard
#   chaos_changes_start; ...; chaos_changes_stop
#   chaos_wait_converged LABEL         # fails (exit 1) with the checker's diff on timeout
#   chaos_report                       # figures table

CHAOS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHAOS_SRC=$(cd "$CHAOS_DIR/../.." && pwd)
PREFIX=canopy.

chaos_log() { printf '%s chaos: %s\n' "$(date +%H:%M:%S)" "$*"; }

chaos_fail() {
        chaos_log "FAIL: $*"
        local f
        for f in "$T"/*.log; do
                [ -s "$f" ] || continue
                echo "--- $f (last 12 lines)"
                tail -n 12 "$f"
        done
        exit 1
}

# chaos_init BIN_DIR: temp dir, sizes. Long mode (make chaos: ctest -C long runs
# chaos.faults.long): CANOPY_CHAOS_LONG=1.
chaos_init() {
        BIN=$1
        for p in slapd ldapmodify ldapsearch redis-server kcat jq curl; do
                command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || { echo "SKIP: $p missing"; exit 77; }
        done
        for b in canopy-devkafka canopy-graph-emulator canopy-producer-ldap canopy-worker canopy-guard \
                canopy-genforest canopy-converge-check; do
                [ -x "$BIN/$b" ] || { echo "SKIP: $BIN/$b not built"; exit 77; }
        done
        if [ -n "${CANOPY_CHAOS_LONG:-}" ]; then
                CHAOS_MODE=long
                CHAOS_USERS=${CANOPY_CHAOS_USERS:-10000}
                CHAOS_PHASE=${CANOPY_CHAOS_PHASE:-60}
                CHAOS_TIMEOUT=${CANOPY_CHAOS_TIMEOUT:-1800}
        else
                CHAOS_MODE=bounded
                CHAOS_USERS=${CANOPY_CHAOS_USERS:-300}
                CHAOS_PHASE=${CANOPY_CHAOS_PHASE:-8}
                CHAOS_TIMEOUT=${CANOPY_CHAOS_TIMEOUT:-240}
        fi
        CHAOS_GROUPS=$((CHAOS_USERS / 10))
        CHAOS_WORKERS=${CANOPY_CHAOS_WORKERS:-2}
        . "$CHAOS_SRC/tests/harness/lib.sh"
        harness_init "$BIN" || exit 1
        T=$CANOPY_TEST_TMPDIR
        trap 'chaos_changes_stop; harness_cleanup' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        CHAOS_T0=$(date +%s)
        CHAOS_FIGURES=()
        chaos_log "mode $CHAOS_MODE: 2 forests of $CHAOS_USERS users and $CHAOS_GROUPS groups, $CHAOS_WORKERS workers, phases of ${CHAOS_PHASE}s (workdir $T)"
}

_lvar() { local v="CANOPY_TEST_LDAP_$(_h_upper "$1")_$2"; printf '%s' "${!v}"; }

# Producer attributes: the default list plus what the default OpenLDAP flows
# read and the default list lacks (departmentNumber, street, postalCode,
# mobile, pwdAccountLockedTime): see docs/RELIABILITY.md.
CHAOS_ATTRS='[cn, sn, givenName, displayName, mail, uid, member, uniqueMember, memberOf, description, telephoneNumber, title, departmentNumber, employeeNumber, o, l, st, postalCode, street, mobile, pwdAccountLockedTime]'

chaos_common_yaml() {
        cat <<YAML
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
  topic_prefix: "$PREFIX"
  session_timeout: 6s
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
YAML
        [ -z "${CANOPY_TEST_REDIS_PASSWORD_FILE:-}" ] || printf '  password_file: "%s"\n' "$CANOPY_TEST_REDIS_PASSWORD_FILE"
}

_chaos_spawn() { # KEY LOG CMD...
        local key=$1 log=$2
        shift 2
        "$@" </dev/null >>"$log" 2>&1 &
        _h_record "$key" $!
        disown $! 2>/dev/null
}

chaos_start_producer() { _chaos_spawn "producer.$1" "$T/producer-$1.log" "$BIN/canopy-producer-ldap" -c "$T/producer-$1.yaml"; }
chaos_start_worker() {
        _chaos_spawn "worker.$1" "$T/worker-$1.log" "$BIN/canopy-worker" -c "$T/worker.yaml" --set "worker.id=chaos-worker-$1"
}

# chaos_kill KEY [SIG]: signal a recorded process and wait until it is gone.
chaos_kill() { _h_stop "$1" "${2:-KILL}"; }

chaos_start() {
        local i=0 n
        # Callers may bring their own forests: CHAOS_FORESTS=(names) with
        # $T/<name>.ldif written before chaos_start.
        if [ -n "${CHAOS_FORESTS[*]:-}" ]; then
                for n in "${CHAOS_FORESTS[@]}"; do [ -r "$T/$n.ldif" ] || chaos_fail "no $T/$n.ldif"; done
        else
                CHAOS_FORESTS=(north south)
        fi
        for n in "${CHAOS_FORESTS[@]}"; do
                [ -s "$T/$n.ldif" ] && continue
                "$BIN/canopy-genforest" --base "dc=$n,dc=canopy,dc=test" --users "$CHAOS_USERS" --groups "$CHAOS_GROUPS" \
                        --shared $((CHAOS_USERS / 10)) --forest $i --domain canopy.test --excluded 5 >"$T/$n.ldif" ||
                        chaos_fail "genforest $n"
                i=$((i + 1))
        done
        harness_redis --appendonly ${CHAOS_REDIS_PASSWORD:+--password} || chaos_fail "redis"
        harness_kafka 3 "${PREFIX}changes:16" "${PREFIX}mv:16" "${PREFIX}exports:4" "${PREFIX}dlq:1" "${PREFIX}control:1" ||
                chaos_fail "devkafka"
        harness_emulator --domain canopy.test || chaos_fail "emulator"
        for n in "${CHAOS_FORESTS[@]}"; do
                harness_slapd "$n" "$T/$n.ldif" || chaos_fail "slapd $n"
        done
        {
                echo "version: 1"
                echo "connectors:"
                local prec=10
                for n in "${CHAOS_FORESTS[@]}"; do
                        cat <<YAML
  - id: $n
    kind: openldap
    domain: canopy.test
    precedence: $prec
    scope:
      exclude_ous: ["ou=Excluded,$(_lvar "$n" BASE)"]
    join:
      user:
        - source: anchor
        - {source: mail, mv: mail}
YAML
                        prec=$((prec + 10))
                done
        } >"$T/rules.yaml"
        for n in "${CHAOS_FORESTS[@]}"; do
                cat >"$T/producer-$n.yaml" <<YAML
connector:
  id: "$n"
mode: syncrepl
ldap:
  uris: ["$(_lvar "$n" LDAPS_URI)"]
  bind_dn: "$(_lvar "$n" CONNECTOR_DN)"
  password_file: "$(_lvar "$n" CONNECTOR_PWFILE)"
  tls: ldaps
  ca_file: "$(_lvar "$n" CA)"
  base_dns: ["$(_lvar "$n" BASE)"]
  attributes: ${CHAOS_ATTRS_OVERRIDE:-$CHAOS_ATTRS}
security:
  refuse_privileged: true
metrics:
  listen: "127.0.0.1:0"
$(chaos_common_yaml)
YAML
        done
        cat >"$T/worker.yaml" <<YAML
rules:
  file: "$T/rules.yaml"
graph:
  tenant: "$CANOPY_TEST_GRAPH_TENANT"
  client_id: "$CANOPY_TEST_GRAPH_CLIENT_ID"
  client_secret_file: "$CANOPY_TEST_GRAPH_SECRET_FILE"
  authority_url: "$CANOPY_TEST_GRAPH_URL"
  url: "$CANOPY_TEST_GRAPH_URL"
  ca_file: "$CANOPY_TEST_GRAPH_CA"
metrics:
  listen: "127.0.0.1:0"
$(chaos_common_yaml)
YAML
        CHAOS_ADMIN_TOKEN=$(_h_secret 24)
        printf '%s admin chaos\n' "$CHAOS_ADMIN_TOKEN" >"$T/admin.tokens"
        chmod 600 "$T/admin.tokens"
        cat >"$T/guard.yaml" <<YAML
admin:
  listen: "127.0.0.1:0"
  tokens_file: "$T/admin.tokens"
$(chaos_common_yaml)
YAML
        for n in "${CHAOS_FORESTS[@]}"; do chaos_start_producer "$n"; done
        for ((i = 1; i <= CHAOS_WORKERS; i++)); do chaos_start_worker "$i"; done
        _chaos_spawn guard "$T/guard.log" "$BIN/canopy-guard" -c "$T/guard.yaml"
        chaos_log "stack up in $(($(date +%s) - CHAOS_T0))s"
        # CANOPY_CHAOS_TAP=1: keep a copy of the changes topic (post-mortems).
        if [ -n "${CANOPY_CHAOS_TAP:-}" ]; then
                kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t "${PREFIX}changes" -o beginning -q \
                        -f '\n@@ %T p%p o%o key=%k\n%s' >"$T/changes.tap" 2>/dev/null &
                _h_record tap $!
        fi
}

# Every producer, worker and guard still runs (a crash is a failure).
chaos_alive() {
        local k pid
        for k in $(awk '{print $1}' "$(_h_procs)"); do
                case $k in producer.* | worker.* | guard) ;; *) continue ;; esac
                pid=$(_h_pid "$k")
                _h_alive "$pid" || chaos_fail "$k (pid $pid) died; see its log"
        done
}

# ---- change generator ----------------------------------------------------------

_chaos_ldapmod() { # FOREST FILE
        ldapmodify -c -x -H "$(_lvar "$1" URI)" -D "$(_lvar "$1" BINDDN)" -y "$(_lvar "$1" PWFILE)" -f "$2" \
                >/dev/null 2>>"$T/changes-errors.log"
}

# The generator: every tick, in a random forest, a few modifications of
# random people (title, displayName), member adds and removes, and now and
# then a new person or the delete of one it added. The truth is whatever
# LDAP holds at the end (failed writes during a slapd restart are fine).
_chaos_changes_loop() {
        local seq=${1:-0} tick=${CANOPY_CHAOS_TICK:-0.5} f n u g b
        for f in "${CHAOS_FORESTS[@]}"; do
                mapfile -t "users_$f" < <(awk '/^dn: uid=[^,]*,ou=People,/ {print substr($0, 5)}' "$T/$f.ldif")
                mapfile -t "groups_$f" < <(awk '/^dn: cn=[^\\]*,ou=Groups,/ {print substr($0, 5)}' "$T/$f.ldif")
                # Memberships (group TAB member) that exist, so that a removal
                # removes a member (a random pair is almost never one).
                mapfile -t "pairs_$f" < <(awk '/^dn: / {dn = substr($0, 5)} /^member: / && dn ~ /,ou=Groups,/ {print dn "\t" substr($0, 9)}' "$T/$f.ldif")
        done
        local added=()
        while [ ! -e "$T/changes.stop" ]; do
                seq=$((seq + 1))
                f=${CHAOS_FORESTS[RANDOM % ${#CHAOS_FORESTS[@]}]}
                local -n U="users_$f" G="groups_$f" P="pairs_$f"
                b=$(_lvar "$f" BASE)
                {
                        u=${U[RANDOM % ${#U[@]}]}
                        printf 'dn: %s\nchangetype: modify\nreplace: title\ntitle: Chaos title %d\n\n' "$u" "$seq"
                        u=${U[RANDOM % ${#U[@]}]}
                        printf 'dn: %s\nchangetype: modify\nreplace: displayName\ndisplayName: Chaos name %d\n\n' "$u" "$seq"
                        g=${G[RANDOM % ${#G[@]}]}
                        u=${U[RANDOM % ${#U[@]}]}
                        printf 'dn: %s\nchangetype: modify\nadd: member\nmember: %s\n\n' "$g" "$u"
                        P+=("$g"$'\t'"$u")
                        # A member removed: one of the memberships (the swap with
                        # the last keeps the pick uniform and O(1)).
                        # CANOPY_CHAOS_NO_REMOVE=1 skips member removals (to measure the
                        # other faults while a member-removal bug is open; never the default)
                        if [ -z "${CANOPY_CHAOS_NO_REMOVE:-}" ] && ((${#P[@]})); then
                                n=$(((RANDOM * 32768 + RANDOM) % ${#P[@]}))
                                local pair=${P[n]}
                                P[n]=${P[-1]}
                                unset 'P[-1]'
                                printf 'dn: %s\nchangetype: modify\ndelete: member\nmember: %s\n\n' "${pair%%$'\t'*}" "${pair#*$'\t'}"
                        fi
                        if ((seq % 8 == 0)); then
                                printf 'dn: uid=chaos%d,ou=People,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: chaos%d\ncn: Chaos %d\nsn: Chaos\nmail: chaos%d@canopy.test\ntitle: New\n\n' \
                                        "$seq" "$b" "$seq" "$seq" "$seq"
                                added+=("$f uid=chaos$seq,ou=People,$b")
                        fi
                        if ((seq % 20 == 0)) && [ ${#added[@]} -gt 2 ]; then
                                local victim=${added[0]}
                                added=("${added[@]:1}")
                                [ "${victim%% *}" = "$f" ] && printf 'dn: %s\nchangetype: delete\n\n' "${victim#* }"
                        fi
                } >"$T/changes.ldif"
                { echo "# tick $seq $(date +%T.%N | cut -c1-12) forest $f"; cat "$T/changes.ldif"; } >>"$T/changes-all.ldif"
                _chaos_ldapmod "$f" "$T/changes.ldif"
                echo "$seq" >"$T/changes.seq"
                unset -n U G P
                sleep "$tick"
        done
}

chaos_changes_start() {
        rm -f "$T/changes.stop"
        _chaos_changes_loop "$(cat "$T/changes.seq" 2>/dev/null || echo 0)" &
        CHAOS_GEN_PID=$!
}

chaos_changes_stop() {
        [ -n "${CHAOS_GEN_PID:-}" ] || return 0
        touch "$T/changes.stop"
        wait "$CHAOS_GEN_PID" 2>/dev/null
        CHAOS_GEN_PID=
}

chaos_changes_count() { cat "$T/changes.seq" 2>/dev/null || echo 0; }

# ---- faults ---------------------------------------------------------------------

chaos_emu() { # METHOD PATH [JSON]
        curl -sf --max-time 30 --cacert "$CANOPY_TEST_GRAPH_CA" -X "$1" ${3:+-H 'Content-Type: application/json' -d "$3"} \
                "$CANOPY_TEST_GRAPH_URL$2"
}

# ---- convergence ------------------------------------------------------------------

# chaos_export FOREST: the directory's content now, with entryUUID (so that
# the checker compares immutable ids too).
chaos_export() {
        ldapsearch -LLL -o ldif-wrap=no -x -H "$(_lvar "$1" URI)" -D "$(_lvar "$1" BINDDN)" -y "$(_lvar "$1" PWFILE)" \
                -b "$(_lvar "$1" BASE)" '(objectClass=*)' '*' entryUUID pwdAccountLockedTime >"$T/final-$1.ldif" 2>"$T/export-$1.err"
}

_chaos_check() {
        local args=() f
        for f in "${CHAOS_FORESTS[@]}"; do
                chaos_export "$f" || return 2
                args+=(--forest "$f=$T/final-$f.ldif")
        done
        "$BIN/canopy-converge-check" --rules "$T/rules.yaml" "${args[@]}" \
                --url "$CANOPY_TEST_GRAPH_URL/_emulator/state" --cacert "$CANOPY_TEST_GRAPH_CA" >"$T/check.out" 2>&1
}

# chaos_wait_converged LABEL: poll the checker until it passes twice in a row
# (5 s apart); on CHAOS_TIMEOUT print its last diff and fail.
chaos_wait_converged() {
        local label=$1 start now ok=0
        start=$(date +%s)
        while :; do
                chaos_alive
                if _chaos_check; then
                        ok=$((ok + 1))
                        [ $ok -ge 2 ] && break
                        sleep 5
                        continue
                fi
                ok=0
                now=$(date +%s)
                if [ $((now - start)) -ge "$CHAOS_TIMEOUT" ]; then
                        cat "$T/check.out"
                        chaos_fail "$label: not converged after ${CHAOS_TIMEOUT}s"
                fi
                sleep 3
        done
        now=$(date +%s)
        local summary
        summary=$(grep '^expected:' "$T/check.out")
        CHAOS_FIGURES+=("$(printf '%-28s converged %4ss after the faults; %s' "$label" "$((now - start))" "$summary")")
        chaos_log "$label: CONVERGED in $((now - start))s ($summary)"
}

chaos_report() {
        local stats
        stats=$(chaos_emu GET /_emulator/stats | jq -c '{requests, writes, throttled, faults}' 2>/dev/null)
        echo
        echo "chaos $CHAOS_MODE figures (2 forests x $CHAOS_USERS users, $CHAOS_WORKERS workers, phases ${CHAOS_PHASE}s):"
        printf '  %s\n' "${CHAOS_FIGURES[@]}"
        echo "  changes generated: $(chaos_changes_count) ticks (4-5 LDAP writes each); emulator: $stats"
        echo "  total $(($(date +%s) - CHAOS_T0))s"
        echo "  dead letters: $(kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t "${PREFIX}dlq" -e -q -f 'x\n' 2>/dev/null | wc -l)"
}
