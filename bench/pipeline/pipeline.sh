#!/usr/bin/env bash
# Pipeline benchmarks: the whole Canopy stack (slapd -> producer -> Kafka ->
# workers -> Redis -> Graph emulator), each figure measured next to its
# physical limit in the same run (docs/BENCHMARKS.md).
#
#   bench/pipeline/pipeline.sh --bin BUILD/bin --out DIR [--scale USERS] [--smoke]
#                              [--scale-users USERS] [--budget-rate N] [--profile SECONDS]
#                              [--skip LIST]
#
# Servers are started through the test harness library (tests/harness/lib.sh:
# PIDs recorded, a reaper stops everything even if this script is killed).
# Writes DIR/pipeline.json (figures, limits, targets) and DIR/pipeline.log
# (what happened). Exit status: 0 when every benchmark ran (targets met or
# not: speed never fails the run), 1 when one could not run, 77 when a
# needed program is missing.
set -uo pipefail

SRC_DIR=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
BIN='' OUT='' SCALE=100000 SMOKE='' SCALE_USERS='' BUDGET_RATE=100 PROFILE_S=0 SKIP=''
while [ $# -gt 0 ]; do
        case $1 in
        --bin) BIN=$(readlink -f "$2"); shift ;;
        --out) OUT=$2; shift ;;
        --scale) SCALE=$2; shift ;;
        --scale-users) SCALE_USERS=$2; shift ;;
        --smoke) SMOKE=1 ;;
        --budget-rate) BUDGET_RATE=$2; shift ;;
        --profile) PROFILE_S=$2; shift ;;
        --skip) SKIP=$2; shift ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "pipeline.sh: unknown option $1" >&2; exit 2 ;;
        esac
        shift
done
[ -n "$BIN" ] && [ -n "$OUT" ] || { echo "pipeline.sh: --bin and --out are required" >&2; exit 2; }
[[ $SCALE =~ ^[1-9][0-9]*$ ]] && [ "$SCALE" -ge 100 ] || { echo "pipeline.sh: --scale wants >= 100 users" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
for b in canopy-devkafka canopy-graph-emulator canopy-producer-ldap canopy-worker canopy-genforest \
        canopy-bench-delta canopy-bench-emulator; do
        [ -x "$BIN/$b" ] || { echo "SKIP: $BIN/$b is not built" >&2; exit 77; }
done
for p in slapd ldapsearch ldapmodify redis-server redis-cli curl jq kcat; do
        command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || { echo "SKIP: $p is not installed" >&2; exit 77; }
done

# ---- sizes ---------------------------------------------------------------------
U=$SCALE
G=$((U / 10))
BIG_SIZE=$((U / 5))
LARGE=$((U - 10))           # group 0: everyone but the last 10 users (one of them is added in (5))
DELTA_N=500 DELTA_SPACING=50 BUDGET_N=$((BUDGET_RATE * 30)) EMU_USERS=10000 COALESCE_WIN=20
if [ -n "$SMOKE" ]; then
        # A few minutes in make test: every benchmark once, tiny; no scale runs.
        DELTA_N=20 BUDGET_N=$((BUDGET_RATE * 3)) EMU_USERS=400 COALESCE_WIN=5
        SKIP="$SKIP,scale,backlog,tuned"
fi
[ "$EMU_USERS" -le "$U" ] || EMU_USERS=$U
[ -n "$SCALE_USERS" ] || SCALE_USERS=$U
[ "$BUDGET_N" -le $((U - 20)) ] || BUDGET_N=$((U - 20))

. "$SRC_DIR/tests/harness/lib.sh"
harness_init "$BIN" || { echo "cannot create the temp dir" >&2; exit 1; }
T=$CANOPY_TEST_TMPDIR
trap 'harness_cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
PREFIX=canopy.
LOG=$OUT/pipeline.log
: > "$LOG"
RESULTS=$OUT/pipeline.results.jsonl
: > "$RESULTS"
FAILED=0

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }
skip() { [[ ",$SKIP," == *",$1,"* ]]; }
now_ms() { date +%s%3N; }
# result ID NAME VALUE UNIT [LIMIT LIMIT_NAME] [TARGET_TEXT MET] [EXTRA_JSON]
result() {
        local id=$1 name=$2 value=$3 unit=$4 limit=${5:-} lname=${6:-} target=${7:-} met=${8:-} extra=${9:-'{}'}
        jq -nc --arg id "$id" --arg name "$name" --arg value "$value" --arg unit "$unit" --arg limit "$limit" \
                --arg lname "$lname" --arg target "$target" --arg met "$met" --argjson extra "$extra" \
                '{id: $id, name: $name, value: ($value | tonumber? // $value), unit: $unit,
                  limit: (if $limit == "" then null else ($limit | tonumber? // $limit) end),
                  limit_name: (if $lname == "" then null else $lname end),
                  target: (if $target == "" then null else $target end),
                  met: (if $met == "" then null else ($met == "1") end)} + $extra' >> "$RESULTS"
        say "RESULT $id $name: $value $unit${limit:+ (limit $limit: $lname)}${target:+ target $target: $([ "$met" = 1 ] && echo met || echo NOT met)}"
}
bad() { say "ERROR: $*"; FAILED=1; }
fcmp() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { if (op == ">=") exit !(a >= b); if (op == "<") exit !(a < b); if (op == "<=") exit !(a <= b); exit !(a == b) }'; }
fdiv() { awk -v a="$1" -v b="$2" -v p="${3:-1}" 'BEGIN { if (b == 0) print 0; else printf "%.*f", p, a / b }'; }

# ---- the forest ----------------------------------------------------------------
FOREST=bench
BASE=dc=bench,dc=canopy,dc=test
gen_forest() { # USERS FILE
        local u=$1
        "$BIN/canopy-genforest" --base "$BASE" --users "$u" --groups $((u / 10)) --members 20 \
                --big-groups 5 --big-size $((u / 5)) --large $((u - 10)) --domain canopy.test > "$2"
}
LDIF=$T/bench.ldif
say "generating the forest: $U users, $G groups (avg 20 members; 5 of $BIG_SIZE; one of $LARGE)"
gen_forest "$U" "$LDIF" || { bad "canopy-genforest failed"; exit 1; }
NOBJ=$((U + G))
NMEMBERS=$(grep -c '^member:' "$LDIF")

say "starting redis-server, canopy-devkafka, the Graph emulator and slapd"
harness_redis || exit
# The dev broker keeps at most 5 MiB per partition and silently drops the
# oldest messages beyond that (docs/DEVKAFKA.md). An initial sync fills the
# changes topic far faster than the workers drain it, so the partitions grow
# with the forest: about 1.5 MiB per partition at any scale.
# The big groups' images sit in one partition each, and the workers'
# consumers prefetch at most 8 MiB (lib/src/kafka.c): past 25k users the
# oldest part of such a partition is dropped before a worker reads it. Real
# Kafka keeps what it is configured to keep; on the dev broker, large runs
# let the workers prefetch as librdkafka does by default (64 MiB), which
# also counts in their RSS (6).
NPART=32 KAFKA_EXTRA_BASE=''
if [ "$U" -gt 25000 ]; then
        NPART=$(( (U / 25000 + 1) * 32 ))
        KAFKA_EXTRA_BASE="queued.max.messages.kbytes=65536 queued.min.messages=100000"
        say "$U users: workers prefetch up to 64 MiB ($KAFKA_EXTRA_BASE), topics of $NPART partitions: the dev broker drops what a partition holds past 5 MiB"
fi
TOPICS=("${PREFIX}changes:$NPART" "${PREFIX}mv:$NPART" "${PREFIX}exports:8" "${PREFIX}dlq:1" "${PREFIX}control:1")
harness_kafka 3 "${TOPICS[@]}" || exit
# 16 HTTP threads: the latency run (below) holds one per request in flight.
harness_emulator --domain canopy.test --threads 16 || exit
harness_slapd "$FOREST" "$LDIF" || exit
LURI=$CANOPY_TEST_LDAP_BENCH_URI
LDAPS=$CANOPY_TEST_LDAP_BENCH_LDAPS_URI
LCA=$CANOPY_TEST_LDAP_BENCH_CA
LADMIN=$CANOPY_TEST_LDAP_BENCH_BINDDN
LADMIN_PW=$CANOPY_TEST_LDAP_BENCH_PWFILE

emu() { curl -sf --max-time 60 --cacert "$CANOPY_TEST_GRAPH_CA" "$CANOPY_TEST_GRAPH_URL$1"; }
emu_post() { curl -sf --max-time 60 --cacert "$CANOPY_TEST_GRAPH_CA" -X POST -H 'Content-Type: application/json' \
        ${2:+--data "$2"} "$CANOPY_TEST_GRAPH_URL$1"; }
emu_stat() { emu /_emulator/stats | jq -r ".$1 // 0"; }
rcli() { redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" "$@"; }
rinfo() { rcli INFO "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }

# ---- machine ---------------------------------------------------------------------
jq -n --arg cpu "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" --arg cores "$(nproc)" \
        --arg mem "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" --arg kernel "$(uname -r)" \
        --arg os "$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}")" \
        --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg slapd "$( (slapd -VV 2>&1 || true) | grep -o 'slapd [0-9.]*' | head -1)" \
        --arg redis "$(redis-server --version | grep -o 'v=[0-9.]*')" \
        --arg rdkafka "$(pkg-config --modversion rdkafka 2>/dev/null)" \
        --arg curl "$(curl --version | head -1 | cut -d' ' -f1-2)" \
        --arg cc "$(cc --version | head -1)" \
        '{cpu: $cpu, cores: ($cores | tonumber), memory: $mem, kernel: $kernel, os: $os, loadavg_at_start: $load,
          versions: {slapd: $slapd, redis: $redis, librdkafka: $rdkafka, curl: $curl, cc: $cc}}' > "$OUT/machine.json"

# ---- raw stage limits --------------------------------------------------------------
# (a) the paged read of the same data, as the producer reads it (LDAPS, the
# connector account), and (b) the emulator's write capacity under a curl multi
# load generator (bench/emulator), then the emulator is reset.
LDAP_READ_OPS=0
if ! skip limits; then
        say "limit: ldapsearch -E pr=1000/noprompt of the whole forest"
        t0=$(now_ms)
        n=$(LDAPTLS_CACERT=$LCA ldapsearch -x -LLL -o ldif-wrap=no -H "$LDAPS" -D "$CANOPY_TEST_LDAP_BENCH_CONNECTOR_DN" \
                -y "$CANOPY_TEST_LDAP_BENCH_CONNECTOR_PWFILE" -b "$BASE" -E pr=1000/noprompt '(objectClass=*)' '*' '+' 2>>"$LOG" |
                grep -c '^dn:')
        t1=$(now_ms)
        LDAP_READ_OPS=$(fdiv "$n" "$(( t1 - t0 ))e-3" 0)
        result limit.ldap_read "paged LDAP read (ldapsearch pr=1000)" "$LDAP_READ_OPS" "objects/s" "" "" "" "" \
                "{\"objects\": $n, \"seconds\": $(fdiv $((t1 - t0)) 1000 2)}"
        say "limit: emulator write capacity (canopy-bench-emulator --users $EMU_USERS --concurrency 16)"
        if "$BIN/canopy-bench-emulator" --users "$EMU_USERS" --concurrency 16 --json "$OUT/emulator-raw.json" >>"$LOG" 2>&1; then
                EMU_CREATE=$(jq '[.[] | select(.phase == "create")][0].objects_per_s // 0' "$OUT/emulator-raw.json")
                EMU_BATCH=$(jq '[.[] | select(.phase == "batch-create")][0].objects_per_s // 0' "$OUT/emulator-raw.json")
                result limit.emu_create "emulator raw creates (1 per request, 16 in flight)" "$(printf %.0f "$EMU_CREATE")" "objects/s"
                result limit.emu_batch "emulator raw creates (\$batch of 20, 16 in flight)" "$(printf %.0f "$EMU_BATCH")" "objects/s"
        else
                bad "canopy-bench-emulator failed (see $LOG)"
        fi
        emu_post /_emulator/reset >/dev/null || bad "emulator reset failed"
fi
EMU_CREATE=${EMU_CREATE:-0} EMU_BATCH=${EMU_BATCH:-0}

# ---- configs ----------------------------------------------------------------------------
cat > "$T/rules.yaml" <<YAML
version: 1
connectors:
  - id: $FOREST
    kind: openldap
    domain: canopy.test
    precedence: 10
    join:
      user:
        - source: anchor
YAML

write_producer_conf() {
        cat > "$T/producer.yaml" <<YAML
connector:
  id: "$FOREST"
mode: syncrepl
ldap:
  uris: ["$LDAPS"]
  bind_dn: "$CANOPY_TEST_LDAP_BENCH_CONNECTOR_DN"
  password_file: "$CANOPY_TEST_LDAP_BENCH_CONNECTOR_PWFILE"
  tls: ldaps
  ca_file: "$LCA"
  base_dns: ["$BASE"]
security:
  refuse_privileged: true
metrics:
  listen: "127.0.0.1:0"
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
  topic_prefix: "$PREFIX"
  session_timeout: 6s
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
YAML
}

# write_worker_conf NAME GROUP_SUFFIX BUDGET_WRITES BUDGET_WINDOW [KAFKA_EXTRA]
write_worker_conf() {
        local extra_line='' e items=()
        for e in $KAFKA_EXTRA_BASE ${5:-}; do items+=("\"$e\""); done
        [ ${#items[@]} -eq 0 ] || extra_line="  extra: [$(IFS=,; echo "${items[*]}")]"
        cat > "$T/worker-$1.yaml" <<YAML
rules:
  file: "$T/rules.yaml"
join:
  group_id: "bench-join-$2"
export:
  group_id: "bench-export-$2"
  threads: ${EXPORT_THREADS:-1}
graph:
  tenant: "$CANOPY_TEST_GRAPH_TENANT"
  client_id: "$CANOPY_TEST_GRAPH_CLIENT_ID"
  client_secret_file: "$CANOPY_TEST_GRAPH_SECRET_FILE"
  authority_url: "$CANOPY_TEST_GRAPH_URL"
  url: "$CANOPY_TEST_GRAPH_URL"
  ca_file: "$CANOPY_TEST_GRAPH_CA"
  budget:
    writes: $3
    window: $4
metrics:
  listen: "127.0.0.1:0"
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
  topic_prefix: "$PREFIX"
  session_timeout: 6s
$extra_line
redis:
  host: "$CANOPY_TEST_REDIS_HOST"
  port: $CANOPY_TEST_REDIS_PORT
YAML
}

# ---- processes --------------------------------------------------------------------------
NW=0
start_proc() { # KEY LOG CMD...
        local key=$1 log=$2
        shift 2
        "$@" </dev/null >>"$log" 2>&1 &
        _h_record "$key" $!
        disown $! 2>/dev/null
}
metrics_port() { grep -o 'http://127.0.0.1:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/.*://'; }
start_producer() {
        write_producer_conf
        : > "$T/producer.log"
        start_proc producer "$T/producer.log" "$BIN/canopy-producer-ldap" -c "$T/producer.yaml"
}
stop_producer() { _h_stop producer; }
# start_workers N CONF [WRAPPER...]: N workers with worker-CONF.yaml
start_workers() {
        local n=$1 conf=$2 w
        shift 2
        for ((w = 1; w <= n; w++)); do
                : > "$T/worker-$w.log"
                start_proc "worker.$w" "$T/worker-$w.log" "$@" "$BIN/canopy-worker" -c "$T/worker-$conf.yaml" \
                        --set "worker.id=bench-worker-$w"
        done
        NW=$n
        # Ready: every metrics endpoint answers /readyz.
        local i ok port
        for ((i = 0; i < 600; i++)); do
                ok=0
                for ((w = 1; w <= NW; w++)); do
                        port=$(metrics_port "$T/worker-$w.log")
                        [ -n "$port" ] && curl -sf --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null && ok=$((ok + 1))
                done
                [ $ok -eq "$NW" ] && break
                sleep 0.2
        done
        [ $ok -eq "$NW" ] || { bad "workers not ready (see $T/worker-*.log)"; return 1; }
        # Settled: each worker has its partitions for both stages and the
        # consumer groups made no assignment change for 4 s (a rebalance
        # during a measurement replays uncommitted events).
        local n last_n=-1 since=0 with
        for ((i = 0; i < 120; i++)); do
                n=$(cat "$T"/worker-*.log 2>/dev/null | grep -c '"msg":"\(assigned\|lost\|revoked\)')
                with=0
                for ((w = 1; w <= NW; w++)); do
                        [ "$(grep -c '"msg":"assigned [1-9]' "$T/worker-$w.log")" -ge 2 ] && with=$((with + 1))
                done
                if [ "$n" = "$last_n" ]; then since=$((since + 1)); else since=0; fi
                last_n=$n
                [ $since -ge 8 ] && [ $with -eq "$NW" ] && return 0
                sleep 0.5
        done
        say "note: consumer groups not settled after 60 s (see $T/worker-*.log)"
        return 0
}
stop_workers() {
        local w
        for ((w = 1; w <= NW; w++)); do _h_stop "worker.$w"; done
        NW=0
}
worker_pids() { local w; for ((w = 1; w <= NW; w++)); do _h_pid "worker.$w"; done; }
metric_sum() { # NAME-WITH-LABELS: summed over the running workers
        local total=0 w port v
        for ((w = 1; w <= NW; w++)); do
                port=$(metrics_port "$T/worker-$w.log")
                [ -n "$port" ] || continue
                v=$(curl -sf --max-time 5 "http://127.0.0.1:$port/metrics" | awk -v n="$1" '$1 == n { s += $2 } END { printf "%d", s }')
                total=$((total + ${v:-0}))
        done
        echo "$total"
}
# Topic size without reading it: the offset of the last message of each partition.
# topic_offsets TOPIC WHICH: the sum over partitions of the high (-1) or low (-2)
# watermarks. The dev broker keeps at most 5 MiB per partition and drops the
# oldest messages beyond that (docs/KAFKA.md): a 100k-member group's image
# alone is that big, so a topic's messages are high - low, not high.
declare -A TOPIC_NPART=()
topic_offsets() {
        local t=$PREFIX$1 n p args=()
        n=${TOPIC_NPART[$t]:-}
        if [ -z "$n" ]; then
                n=$(kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -L -t "$t" 2>/dev/null |
                        awk '/ with [0-9]+ partitions/ { for (i = 1; i <= NF; i++) if ($i == "with") print $(i + 1); exit }')
                [ -n "$n" ] && TOPIC_NPART[$t]=$n
        fi
        for ((p = 0; p < ${n:-0}; p++)); do args+=(-t "$t:$p:$2"); done
        [ ${#args[@]} -gt 0 ] || { printf 0; return; }
        kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -Q "${args[@]}" 2>/dev/null |
                awk '$(NF - 1) == "offset" && $NF >= 0 { s += $NF } END { printf "%d", s }'
}
# topic_count TOPIC: messages the topic holds now.
topic_count() { echo $(( $(topic_offsets "$1" -1) - $(topic_offsets "$1" -2) )); }
# topic_dropped TOPIC: messages the dev broker dropped from the topic.
topic_dropped() { topic_offsets "$1" -2; }
# CreateTime (ms) of the newest message of a topic (0 when empty): when the
# stage that writes it last did something, to the millisecond, whatever the
# poll interval.
topic_last_ts() {
        kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t "$PREFIX$1" -o -1 -e -q -f '%T\n' 2>/dev/null |
                awk '$1 > m { m = $1 } END { printf "%.0f", m }'
}
# timeline T0: messages written per second since T0 (ms) to the changes (the
# producer), mv (the join stage) and exports (the export stage) topics, one
# line per second: which stage sets the pace, and when each one started.
timeline() {
        local t
        printf 'second changes mv exports\n'
        for t in changes mv exports; do
                kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t "$PREFIX$t" -o beginning -e -q -f '%T\n' 2>/dev/null |
                        awk -v t0="$1" -v col="$t" '$1 >= t0 { print int(($1 - t0) / 1000), col }'
        done | awk '{ n[$1 " " $2]++; if ($1 > last) last = $1 }
                END { for (s = 0; s <= last; s++) printf "%d %d %d %d\n", s, n[s " changes"], n[s " mv"], n[s " exports"] }'
}
cpu_ticks() { # PID: utime+stime in clock ticks
        [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
        awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
hwm_kb() { [ -n "$1" ] && awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Redis calls per command (INFO commandstats) as "name calls" lines.
redis_calls() { rcli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p' | sort; }
alive_check() {
        local k pid
        for k in producer $(for ((w = 1; w <= NW; w++)); do echo "worker.$w"; done); do
                pid=$(_h_pid "$k")
                [ -n "$pid" ] || continue
                kill -0 "$pid" 2>/dev/null || {
                        bad "$k (pid $pid) exited (see $T/${k/./-}.log)"
                        tail -n 15 "$T/${k/./-}.log" | sed 's/^/    /' >&2
                        return 1
                }
        done
}

# lost_check: fails when a worker's consumer found its next offset gone (the
# dev broker dropped it before it was read): the run lost changes. The
# workers count it (canopy_worker_lost_positions_total, docs/KAFKA.md).
lost_check() {
        local n
        n=$(( $(metric_sum 'canopy_worker_lost_positions_total{stage="join"}') +
              $(metric_sum 'canopy_worker_lost_positions_total{stage="export"}') ))
        [ "$n" -eq 0 ] && return 0
        bad "events were lost: the dev broker dropped $n partition position(s) no worker had read (see the rdkafka OFFSET lines in $T/worker-*.log); use more partitions"
        return 1
}

# wait_converged TIMEOUT: join and export stages idle, no pending reference, the
# emulator's writes unchanged on two polls in a row. Sets CONV_MS (time of the
# first of the idle polls), LASTW_MS (time of the first poll that saw the final
# Graph write count: Entra complete), CONV_STATUS.
wait_converged() {
        local deadline=$(( $(date +%s) + $1 )) last='' last_t=0 stable=0 changes mv joined exported pending writes key t
        local prev_writes=-1 moved
        moved=$(date +%s)
        CONV_MS=0 LASTW_MS=$(now_ms)
        while :; do
                alive_check || return 1
                lost_check || return 1
                t=$(now_ms)
                changes=$(topic_count changes) mv=$(topic_count mv)
                joined=$(metric_sum 'canopy_worker_events_total{stage="join"}')
                exported=$(metric_sum 'canopy_worker_events_total{stage="export"}')
                pending=$(metric_sum canopy_worker_pending_references)
                writes=$(emu_stat writes)
                [ "$writes" = "$prev_writes" ] || LASTW_MS=$t
                prev_writes=$writes
                CONV_STATUS="changes $changes, joined $joined, mv $mv, exported $exported, pending $pending, writes $writes"
                key="$changes/$mv/$writes/$joined/$exported"
                if [ "$changes" -gt 0 ] && [ "$joined" -ge "$changes" ] && [ "$exported" -ge "$mv" ] &&
                        [ "$pending" -eq 0 ] && [ "$key" = "$last" ]; then
                        stable=$((stable + 1))
                        [ $stable -eq 1 ] && CONV_MS=$last_t
                        [ $stable -ge 2 ] && { say "  converged: $CONV_STATUS"; return 0; }
                else
                        stable=0
                fi
                # Nothing moved for STALL_S seconds while not converged: stuck,
                # whatever time is left (a 100k run's timeout is hours).
                if [ "$key" != "$last" ]; then moved=$(date +%s); fi
                last=$key last_t=$t
                say "  $CONV_STATUS"
                [ "$(date +%s)" -lt "$deadline" ] || { bad "not converged after $1 s: $CONV_STATUS"; return 1; }
                [ $(( $(date +%s) - moved )) -lt "$STALL_S" ] ||
                        { bad "not converged: nothing moved for $STALL_S s: $CONV_STATUS"; return 1; }
                sleep 1
        done
}

# ---- (1) initial sync ----------------------------------------------------------------------
# sync_run WORKERS LABEL: from an empty Redis, Kafka and emulator, start N
# workers, then the producer; time until converged. Sets SYNC_* variables.
SYNC_TIMEOUT=$(( U / 5 + 600 ))
STALL_S=300
[ -z "$SMOKE" ] || SYNC_TIMEOUT=240 # a clear failure inside ctest's 600 s
fresh_backends() {
        stop_workers
        stop_producer
        harness_restart_redis >>"$LOG" 2>&1 || { bad "redis restart failed"; return 1; }
        harness_restart_kafka >>"$LOG" 2>&1 || { bad "kafka restart failed"; return 1; }
        emu_post /_emulator/reset >/dev/null || { bad "emulator reset failed"; return 1; }
        emu_post /_emulator/faults '{"writeRate":0}' >/dev/null || true
}
# With BACKLOG=1 the producer publishes everything first and the workers
# start on a full `changes` topic (an initial deployment, or workers back
# after an outage); the time then runs from the workers' start.
sync_run() {
        local nw=$1 label=$2 wrap=("${@:3}")
        say "sync ($label): $nw worker(s), throttling off${BACKLOG:+, workers started on a full changes topic}"
        write_worker_conf sync "$label" 1000000 1s
        if [ -z "${BACKLOG:-}" ]; then
                start_workers "$nw" sync "${wrap[@]+"${wrap[@]}"}" || return 1
        fi
        local mem0 cmd0 req0 w0 t0 p
        mem0=$(rinfo memory used_memory) cmd0=$(rinfo stats total_commands_processed)
        req0=$(emu_stat requests) w0=$(emu_stat writes)
        redis_calls > "$T/redis-calls-0.txt"
        declare -gA CPU0=()
        for p in redis kafka emulator slapd.BENCH; do CPU0[$p]=$(cpu_ticks "$(_h_pid "$p")"); done
        t0=$(now_ms)
        if [ -n "${BACKLOG:-}" ]; then
                start_producer
                local c=-1 c2 i
                for ((i = 0; i < 600; i++)); do
                        sleep 2
                        c2=$(topic_count changes)
                        [ "$c2" -ge "$NOBJ" ] && [ "$c2" = "$c" ] && break
                        c=$c2
                done
                say "  backlog: $c2 change events in Kafka; starting the workers"
                t0=$(now_ms)
                start_workers "$nw" sync "${wrap[@]+"${wrap[@]}"}" || return 1
        else
                start_producer
        fi
        SYNC_PEAK_RSS=0
        wait_converged "$SYNC_TIMEOUT" || return 1
        # The end is the last message the workers wrote (mv by the join
        # stage, exports after each Graph write), not the poll that noticed
        # the calm: a poll of every worker's metrics takes seconds.
        local end_mv end_exp
        end_mv=$(topic_last_ts mv) end_exp=$(topic_last_ts exports)
        [ "$end_mv" -gt 0 ] && [ "$end_exp" -gt 0 ] && CONV_MS=$(( end_mv > end_exp ? end_mv : end_exp )) LASTW_MS=$end_exp
        SYNC_MS=$((CONV_MS - t0))
        SYNC_LASTW_MS=$((LASTW_MS - t0))
        SYNC_WRITES=$(( $(emu_stat writes) - w0 ))
        SYNC_REQS=$(( $(emu_stat requests) - req0 ))
        SYNC_REDIS_CMDS=$(( $(rinfo stats total_commands_processed) - cmd0 ))
        redis_calls > "$T/redis-calls-1.txt"
        # Top Redis commands of the sync, per synced object.
        SYNC_REDIS_TOP=$(join -a2 -e0 -o 0,1.2,2.2 "$T/redis-calls-0.txt" "$T/redis-calls-1.txt" |
                awk -v n="$NOBJ" '{ d = $3 - $2; if (d > 0) printf "%s %d %.1f\n", $1, d, d / n }' | sort -k2,2nr | head -8 |
                jq -Rsc 'split("\n") | map(select(length > 0) | split(" ") | {command: .[0], calls: (.[1] | tonumber), per_object: (.[2] | tonumber)})')
        cp "$T/redis-calls-1.txt" "$OUT/redis-calls-$label.txt" 2>/dev/null
        SYNC_REDIS_BYTES=$(( $(rinfo memory used_memory) - mem0 ))
        local st users groups members
        st=$(emu /_emulator/state) || { bad "cannot read the emulator state"; return 1; }
        read -r users groups members < <(jq -r '[(.users | length), (.groups | length), ([.groups[].members | length] | add // 0)] | @tsv' <<<"$st")
        SYNC_USERS=$users SYNC_GROUPS=$groups SYNC_MEMBERS=$members
        SYNC_OPS=$(fdiv $((users + groups)) "${SYNC_MS}e-3" 0)
        SYNC_WPS=$(fdiv "$SYNC_WRITES" "${SYNC_MS}e-3" 0)
        SYNC_PEAK_RSS=0
        for p in $(worker_pids); do
                local h
                h=$(hwm_kb "$p")
                [ "$h" -gt "$SYNC_PEAK_RSS" ] && SYNC_PEAK_RSS=$h
        done
        local hz
        hz=$(getconf CLK_TCK)
        SYNC_CPU=$(
                for p in redis kafka emulator slapd.BENCH; do
                        printf '"%s": %s,' "$p" "$(fdiv $(( $(cpu_ticks "$(_h_pid "$p")") - ${CPU0[$p]} )) "$hz" 1)"
                done
                printf '"producer": %s,' "$(fdiv "$(cpu_ticks "$(_h_pid producer)")" "$hz" 1)"
                local tot=0
                for p in $(worker_pids); do tot=$((tot + $(cpu_ticks "$p"))); done
                printf '"workers": %s' "$(fdiv "$tot" "$hz" 1)"
        )
        # After the CPU figures: reading the topics back costs the broker.
        timeline "$t0" > "$OUT/timeline-$label.txt"
        say "sync ($label): $users users, $groups groups, $members memberships in $(fdiv "$SYNC_MS" 1000 1) s" \
                "= $SYNC_OPS objects/s, $SYNC_WRITES Graph writes ($SYNC_WPS/s), $SYNC_REQS requests," \
                "$SYNC_REDIS_CMDS Redis commands, worker peak RSS $SYNC_PEAK_RSS KiB; CPU s: {$SYNC_CPU}"
        [ "$users" -eq "$U" ] && [ "$groups" -eq "$G" ] || bad "sync ($label): expected $U users and $G groups in the emulator"
        [ "$members" -eq "$NMEMBERS" ] || bad "sync ($label): expected $NMEMBERS memberships, got $members"
}

SYNC1_OK=''
if ! skip sync; then
        if sync_run 2 main; then
                SYNC1_OK=1
                slower=$(awk -v a="$LDAP_READ_OPS" -v b="$(awk -v x="$EMU_CREATE" -v y="$EMU_BATCH" 'BEGIN{print (x > y ? x : y)}')" \
                        'BEGIN { if (a == 0) print b; else if (b == 0) print a; else print (a < b ? a : b) }')
                ratio=$(fdiv "$SYNC_OPS" "$slower" 3)
                met=0
                fcmp "$SYNC_OPS" ">=" 5000 && fcmp "$ratio" ">=" 0.5 && met=1
                result 1.sync "initial sync ($U users, $G groups, 2 workers)" "$SYNC_OPS" "objects/s" \
                        "$(printf %.0f "$slower")" "slower raw stage" ">= 5000 objects/s and >= 50% of the slower raw stage" "$met" \
                        "{\"seconds\": $(fdiv "$SYNC_MS" 1000 1), \"ratio_to_limit\": $ratio, \"users\": $SYNC_USERS,
                          \"groups\": $SYNC_GROUPS, \"memberships\": $SYNC_MEMBERS, \"graph_writes\": $SYNC_WRITES,
                          \"graph_writes_per_s\": $SYNC_WPS, \"graph_requests\": $SYNC_REQS,
                          \"redis_commands\": $SYNC_REDIS_CMDS, \"redis_top_commands\": $SYNC_REDIS_TOP,
                          \"cpu_seconds\": {$SYNC_CPU}}"
                result 1.sync_time "initial sync wall time (until every event is processed)" "$(fdiv "$SYNC_MS" 1000 1)" "s"
                result 1.sync_entra "initial sync until the last Graph write (Entra complete)" "$(fdiv "$SYNC_LASTW_MS" 1000 1)" "s" \
                        "" "" "" "" "{\"objects_per_s\": $(fdiv $((SYNC_USERS + SYNC_GROUPS)) "${SYNC_LASTW_MS}e-3" 0)}"
                result 1.requests_per_object "Graph requests per object (initial sync)" "$(fdiv "$SYNC_REQS" "$NOBJ" 2)" "requests"
                result 1.redis_per_object "Redis commands per object (initial sync)" "$(fdiv "$SYNC_REDIS_CMDS" "$NOBJ" 1)" "commands"
                met=0; [ "$SYNC_PEAK_RSS" -le 65536 ] && met=1
                result 6.worker_rss "worker peak RSS during (1)${KAFKA_EXTRA_BASE:+, prefetch raised to 64 MiB for the dev broker}" "$(fdiv "$SYNC_PEAK_RSS" 1024 1)" "MiB" "" "" "<= 64 MiB" "$met"
                result 6.redis_bytes "Redis bytes per synced object (producer + worker state)" \
                        "$(fdiv "$SYNC_REDIS_BYTES" "$NOBJ" 0)" "bytes" "" "" "" "" "{\"used_memory_delta\": $SYNC_REDIS_BYTES}"
                SYNC2_OPS=$SYNC_OPS
        fi
fi

# ---- (2) delta latency ----------------------------------------------------------------------
# delta_run LABEL: DELTA_N changes through the running workers; sets DELTA_JSON, DELTA_STAGES.
delta_run() {
        local label=$1 tp
        awk -v n="$DELTA_N" '/^dn: uid=f0u[0-9]+,ou=People,/ { print substr($0, 5); if (++c >= n) exit }' "$LDIF" > "$T/delta-dns.txt"
        say "delta latency ($label): $DELTA_N single-attribute changes, ${DELTA_SPACING} ms apart"
        "$BIN/canopy-bench-delta" --ldap-uri "$LURI" --bind-dn "$LADMIN" --pw-file "$LADMIN_PW" users \
                --dns "$T/delta-dns.txt" --count "$DELTA_N" --spacing-ms "$DELTA_SPACING" \
                --json "$T/delta-$label.json" --trace "$T/delta-trace.txt" 2>>"$LOG" | tee -a "$LOG" >&2 || return 1
        # Where the time goes: Kafka CreateTime of the messages each change made.
        for tp in changes mv exports; do
                kcat -b "$CANOPY_TEST_KAFKA_BOOTSTRAP" -C -t "$PREFIX$tp" -o beginning -e -q -f '%T\n' > "$T/ts-$tp.txt" 2>/dev/null
        done
        python3 "$SRC_DIR/bench/pipeline/stages.py" "$T/delta-trace.txt" "$T/ts-changes.txt" "$T/ts-mv.txt" \
                "$T/ts-exports.txt" > "$OUT/delta-stages-$label.json" 2>>"$LOG" || bad "stage breakdown failed"
        jq -r '.stages[] | "  stage \(.stage): p50 \(.p50_ms) ms, p99 \(.p99_ms) ms"' "$OUT/delta-stages-$label.json" | tee -a "$LOG" >&2
        DELTA_JSON=$T/delta-$label.json
        DELTA_STAGES=$(jq -c '.stages' "$OUT/delta-stages-$label.json" 2>/dev/null || echo null)
}
if [ -n "$SYNC1_OK" ] && ! skip delta; then
        if delta_run default; then
                p99=$(jq .p99_ms "$DELTA_JSON")
                met=0; fcmp "$p99" "<" 1000 && met=1
                result 2.delta_p99 "delta latency p99 (LDAP write -> emulator)" "$(printf %.0f "$p99")" "ms" "" "" "< 1000 ms" "$met" \
                        "$(jq -c '{p50_ms, max_ms, mean_ms, changes, graph_writes}' "$DELTA_JSON")"
                result 2.delta_p50 "delta latency p50" "$(jq '.p50_ms | round' "$DELTA_JSON")" "ms" "" "" "" "" \
                        "{\"stages\": $DELTA_STAGES}"
                result 2.delta_max "delta latency max" "$(jq '.max_ms | round' "$DELTA_JSON")" "ms"
        else
                bad "delta latency benchmark failed"
        fi
fi

# ---- (5) large group -----------------------------------------------------------------------------
# large_run LABEL NTH: add the NTH (1-based) plain user outside group 0 to group 0; sets LARGE_MS, LARGE_WRITES.
large_run() {
        local gdn gname mdn mnick
        gdn=$(awk '/^dn: cn=f0-g00000 /{ print substr($0, 5); exit }' "$LDIF")
        gname=$(awk '/^dn: cn=f0-g00000 /{ f = 1 } f && /^cn: / { print substr($0, 5); exit }' "$LDIF")
        # A user outside group 0 (the last 10), with a plain uid= RDN.
        mdn=$(awk -v from=$((U - 10)) -v nth="$2" '/^dn: uid=f0u[0-9]+,ou=People,/ { i = substr($0, 12, 6) + 0; if (i >= from && ++c == nth) { print substr($0, 5); exit } }' "$LDIF")
        mnick=${mdn#uid=}; mnick=${mnick%%,*}
        say "large group ($1): add $mnick to '$gname' ($LARGE members)"
        "$BIN/canopy-bench-delta" --ldap-uri "$LURI" --bind-dn "$LADMIN" --pw-file "$LADMIN_PW" member \
                --group-dn "$gdn" --group-name "$gname" --member-dn "$mdn" --member-nick "$mnick" --settle-ms 3000 \
                --json "$T/large-$1.json" 2>>"$LOG" | tee -a "$LOG" >&2 || return 1
        LARGE_MS=$(jq '.latency_ms | round' "$T/large-$1.json") LARGE_WRITES=$(jq .graph_writes "$T/large-$1.json")
}
if [ -n "$SYNC1_OK" ] && ! skip large; then
        if large_run default 1; then
                met=0; [ "$LARGE_WRITES" -eq 1 ] && fcmp "$LARGE_MS" "<" 1000 && met=1
                result 5.large_group "one member added to a $LARGE-member group" "$LARGE_MS" "ms" "" "" "1 write, < 1000 ms" "$met" \
                        "{\"graph_writes\": $LARGE_WRITES}"
        else
                bad "large group benchmark failed"
        fi
fi

# ---- (2b) delta latency with consumers tuned for latency ----------------------------------------
# The same measurement with kafka.extra fetch.wait.max.ms=10 in the workers'
# config: shows how much of (2) is the consumers' fetch wait (kafka.fetch_wait_max,
# 50 ms by default). Not in the smoke: the same code paths as (2) and (5).
if [ -n "$SYNC1_OK" ] && ! skip delta && ! skip tuned; then
        stop_workers
        write_worker_conf tuned main 1000000 1s "fetch.wait.max.ms=10"
        if start_workers 2 tuned && delta_run tuned; then
                result 2b.delta_tuned_p99 "delta latency p99, workers with fetch.wait.max.ms=10" \
                        "$(jq '.p99_ms | round' "$DELTA_JSON")" "ms" "" "" "< 1000 ms" \
                        "$(fcmp "$(jq .p99_ms "$DELTA_JSON")" "<" 1000 && echo 1 || echo 0)" \
                        "{\"p50_ms\": $(jq '.p50_ms | round' "$DELTA_JSON"), \"stages\": $DELTA_STAGES}"
        else
                bad "tuned delta latency benchmark failed"
        fi
        if ! skip large && [ "$NW" -gt 0 ]; then
                if large_run tuned 2; then
                        met=0; [ "$LARGE_WRITES" -eq 1 ] && fcmp "$LARGE_MS" "<" 1000 && met=1
                        result 5b.large_group_tuned "one member added to a $LARGE-member group, fetch.wait.max.ms=10" \
                                "$LARGE_MS" "ms" "" "" "1 write, < 1000 ms" "$met" "{\"graph_writes\": $LARGE_WRITES}"
                else
                        bad "tuned large group benchmark failed"
                fi
        fi
fi

# ---- (4) no-op replay ----------------------------------------------------------------------
if [ -n "$SYNC1_OK" ] && ! skip replay; then
        stop_workers
        say "no-op replay: new consumer groups replay every change"
        w0=$(emu_stat writes)
        write_worker_conf replay replay 1000000 1s
        t0=$(now_ms)
        if start_workers 2 replay && wait_converged "$SYNC_TIMEOUT"; then
                ms=$((CONV_MS - t0))
                wr=$(( $(emu_stat writes) - w0 ))
                ev=$(metric_sum 'canopy_worker_events_total{stage="join"}')
                noop=$(metric_sum canopy_worker_export_noop_total)
                dropped=$(topic_dropped changes)
                [ "$dropped" -eq 0 ] || say "  the dev broker dropped the oldest $dropped change events (5 MiB per partition): the replay covers the $ev it kept"
                met=0; [ "$wr" -eq 0 ] && met=1
                result 4.replay_writes "Graph writes when replaying every change the broker kept" "$wr" "writes" "" "" "0 writes" "$met" \
                        "{\"changes_replayed\": $ev, \"changes_dropped_by_broker\": $dropped, \"export_noops\": $noop, \"seconds\": $(fdiv "$ms" 1000 1)}"
                [ "$dropped" -eq 0 ] || result 4.replay_dropped "change events the dev broker had dropped before the replay" "$dropped" "events"
                result 4.replay_rate "replay rate (no-op)" "$(fdiv "$ev" "${ms}e-3" 0)" "changes/s"
        else
                bad "replay did not converge"
        fi
fi

# ---- (3) Graph budget shared by 3 workers --------------------------------------------------------
if [ -n "$SYNC1_OK" ] && ! skip budget; then
        stop_workers
        say "budget: emulator throttles at $BUDGET_RATE writes/s, 3 workers share $BUDGET_RATE writes per 1 s; $BUDGET_N changes"
        emu_post /_emulator/faults "{\"writeRate\":$BUDGET_RATE,\"writeBurst\":$BUDGET_RATE}" >/dev/null || bad "cannot set the write rate"
        write_worker_conf budget replay "$BUDGET_RATE" 1s
        if start_workers 3 budget; then
                awk -v n="$BUDGET_N" -v tag="b$$" '/^dn: uid=f0u[0-9]+,ou=People,/ {
                        print $0; print "changetype: modify"; print "replace: title"; print "title: Budget " tag " " c; print "";
                        if (++c >= n) exit }' "$LDIF" > "$T/budget.ldif"
                BUDGET_N=$(grep -c '^dn:' "$T/budget.ldif")   # plain uid= users only
                w0=$(emu_stat writes) r0=$(emu_stat requests) th0=$(emu_stat throttled)
                ldapmodify -x -H "$LURI" -D "$LADMIN" -y "$LADMIN_PW" -f "$T/budget.ldif" >/dev/null 2>>"$LOG" || bad "ldapmodify failed"
                # Sample the writes every 0.5 s until all arrived and 3 s passed without any.
                samples=() deadline=$(( $(date +%s) + BUDGET_N / BUDGET_RATE * 4 + 120 ))
                last_w=-1 quiet=0
                while [ "$(date +%s)" -lt "$deadline" ]; do
                        w=$(( $(emu_stat writes) - w0 ))
                        samples+=("$(now_ms) $w")
                        if [ "$w" -eq "$last_w" ]; then quiet=$((quiet + 1)); else quiet=0; fi
                        last_w=$w
                        [ "$w" -ge "$BUDGET_N" ] && [ $quiet -ge 6 ] && break
                        sleep 0.5
                done
                printf '%s\n' "${samples[@]}" > "$T/budget-samples.txt"
                reqs=$(( $(emu_stat requests) - r0 )) thr=$(( $(emu_stat throttled) - th0 ))
                # Achieved rate over the steady part: from the first sample with
                # 10% of the writes to the first with 90%.
                rate=$(awk -v n="$last_w" '{ if (!a && $2 >= n * 0.1) { ta = $1; wa = $2; a = 1 } if (!b && $2 >= n * 0.9) { tb = $1; wb = $2; b = 1 } }
                        END { if (tb > ta) printf "%.1f", (wb - wa) / ((tb - ta) / 1000); else print 0 }' "$T/budget-samples.txt")
                ratio=$(fdiv "$rate" "$BUDGET_RATE" 3)
                pct429=$(awk -v t="$thr" -v r="$reqs" 'BEGIN { printf "%.2f", r ? 100 * t / r : 0 }')
                met=0; fcmp "$ratio" ">=" 0.95 && fcmp "$pct429" "<" 1 && met=1
                result 3.budget "write rate under a shared budget of $BUDGET_RATE/s (3 workers)" "$rate" "writes/s" \
                        "$BUDGET_RATE" "allowed writes/s" ">= 95% of allowed, 429s < 1%" "$met" \
                        "{\"ratio_to_limit\": $ratio, \"writes\": $last_w, \"changes\": $BUDGET_N, \"requests\": $reqs, \"throttled_429\": $thr, \"pct_429\": $pct429}"
                result 3.budget_429 "429 answers under the shared budget" "$pct429" "% of requests"
                [ "$last_w" -ge "$BUDGET_N" ] || bad "budget: only $last_w of $BUDGET_N writes arrived"
        fi
        emu_post /_emulator/faults '{"writeRate":0}' >/dev/null || true
fi

# ---- (8) coalescing while the budget is exhausted ----------------------------------------------
if [ -n "$SYNC1_OK" ] && ! skip coalesce; then
        stop_workers
        say "coalescing: budget 1 write per ${COALESCE_WIN}s; one write spends it, then one object changes 10 times"
        write_worker_conf coalesce replay 1 "${COALESCE_WIN}s"
        if start_workers 1 coalesce; then
                mapfile -t cdn < <(awk '/^dn: uid=f0u[0-9]+,ou=People,/ { print substr($0, 5); if (++c >= 2) exit }' "$LDIF")
                tnick=${cdn[1]#uid=}; tnick=${tnick%%,*}
                w0=$(emu_stat writes)
                printf 'dn: %s\nchangetype: modify\nreplace: title\ntitle: Spender %s\n\n' "${cdn[0]}" "$$" |
                        ldapmodify -x -H "$LURI" -D "$LADMIN" -y "$LADMIN_PW" >/dev/null 2>>"$LOG"
                # Wait for the spending write, then change the target 10 times.
                for ((i = 0; i < 300; i++)); do [ $(( $(emu_stat writes) - w0 )) -ge 1 ] && break; sleep 0.1; done
                t0=$(now_ms)
                for ((i = 1; i <= 10; i++)); do
                        printf 'dn: %s\nchangetype: modify\nreplace: displayName\ndisplayName: Coalesce %s %d\n\n' "${cdn[1]}" "$$" "$i"
                done | ldapmodify -x -H "$LURI" -D "$LADMIN" -y "$LADMIN_PW" >/dev/null 2>>"$LOG"
                # Wait for the last state in the emulator, then a quiet period.
                want="Coalesce $$ 10" seen='' dn_now=''
                for ((i = 0; i < (COALESCE_WIN + 60) * 5; i++)); do
                        dn_now=$(emu /_emulator/state | jq -r --arg n "$tnick" '.users[] | select(.mailNickname == $n) | .displayName')
                        [ "$dn_now" = "$want" ] && { seen=$(now_ms); break; }
                        sleep 0.2
                done
                sleep 3
                wr=$(( $(emu_stat writes) - w0 - 1 ))
                if [ -n "$seen" ]; then
                        met=0; [ "$wr" -eq 1 ] && met=1
                        result 8.coalesce "Graph writes for 10 changes of one object while the budget is spent" "$wr" "writes" \
                                "" "" "1 write (the last state)" "$met" "{\"final_state_after_s\": $(fdiv $((seen - t0)) 1000 1)}"
                else
                        bad "coalescing: the last state never reached the emulator (displayName '$dn_now')"
                fi
        fi
fi
stop_workers

# ---- (7) scale: the initial sync with 1, 2 and 4 workers --------------------------------------
if [ -n "$SYNC1_OK" ] && ! skip scale; then
        declare -A SC=() SCR=()
        # A fresh slapd with the generated data (the benchmarks above changed it).
        say "scale runs on a fresh forest of $SCALE_USERS users"
        stop_producer
        harness_stop_slapd "$FOREST" >>"$LOG" 2>&1
        rm -rf "$T/slapd-$FOREST" "$T/slapd/$FOREST" 2>/dev/null
        U=$SCALE_USERS G=$((SCALE_USERS / 10)) NOBJ=$((SCALE_USERS + SCALE_USERS / 10))
        gen_forest "$U" "$LDIF" || bad "canopy-genforest failed"
        NMEMBERS=$(grep -c '^member:' "$LDIF")
        harness_slapd "$FOREST" "$LDIF" >>"$LOG" 2>&1 || { bad "slapd did not start"; exit 1; }
        LURI=$CANOPY_TEST_LDAP_BENCH_URI LDAPS=$CANOPY_TEST_LDAP_BENCH_LDAPS_URI
        counts=(1 2 4)
        if [ "$SCALE_USERS" -eq "$SCALE" ]; then
                counts=(1 4)
                SC[2]=$SYNC2_OPS
        fi
        [ -n "$SMOKE" ] && counts=(1)
        for nw in "${counts[@]}"; do
                fresh_backends && sync_run "$nw" "scale$nw" && SC[$nw]=$SYNC_OPS &&
                        SCR[$nw]=$(fdiv "$SYNC_REDIS_CMDS" "$NOBJ" 1)
        done
        if ! skip backlog; then
                fresh_backends && BACKLOG=1 sync_run 2 backlog2 && {
                        met=''
                        result 1b.sync_backlog "initial sync, 2 workers started on a full changes topic ($U users)" "$SYNC_OPS" \
                                "objects/s" "" "" "" "" "{\"seconds\": $(fdiv "$SYNC_MS" 1000 1), \"redis_commands_per_object\": $(fdiv "$SYNC_REDIS_CMDS" "$NOBJ" 1),
                                  \"redis_top_commands\": $SYNC_REDIS_TOP, \"graph_writes\": $SYNC_WRITES,
                                  \"streaming_objects_per_s\": ${SC[2]:-null}, \"cpu_seconds\": {$SYNC_CPU}}"
                }
        fi
        if [ -n "${SC[1]:-}" ]; then
                for nw in 2 4; do
                        [ -n "${SC[$nw]:-}" ] || continue
                        result "7.scale_$nw" "initial sync with $nw workers / with 1 worker" "$(fdiv "${SC[$nw]}" "${SC[1]}" 2)" "x" \
                                "" "" "" "" "{\"objects_per_s\": ${SC[$nw]}, \"objects_per_s_1_worker\": ${SC[1]}, \"users\": $U,
                                  \"redis_commands_per_object\": ${SCR[$nw]:-null}}"
                done
                result 7.scale_1 "initial sync with 1 worker" "${SC[1]}" "objects/s" "" "" "" "" \
                        "{\"users\": $U, \"redis_commands_per_object\": ${SCR[1]:-null}}"
        fi
fi

# ---- export concurrency under Graph latency ------------------------------------------------
# On loopback a Graph request takes well under a millisecond; Microsoft
# Graph answers in tens of milliseconds. With the emulator's added latency,
# the same sync runs for LAT_S seconds with export.threads 1 and then 4, and
# the Graph writes per second are compared (a ratio within this run).
if ! skip threads; then
        LAT_MS=20 LAT_S=30
        [ -z "$SMOKE" ] || LAT_S=5
        declare -A LW=()
        for th in 1 4; do
                fresh_backends || break
                emu_post /_emulator/faults "{\"writeRate\":0,\"latencyMs\":$LAT_MS}" >/dev/null ||
                        { bad "cannot set the emulator latency"; break; }
                say "threads: Graph latency $LAT_MS ms, 2 workers with export.threads=$th, ${LAT_S}s"
                EXPORT_THREADS=$th write_worker_conf lat "lat$th" 1000000 1s
                start_workers 2 lat || break
                start_producer
                sleep 5
                lw0=$(emu_stat writes) lt0=$(now_ms)
                sleep "$LAT_S"
                lw1=$(emu_stat writes) lt1=$(now_ms)
                stop_workers
                stop_producer
                LW[$th]=$(fdiv $((lw1 - lw0)) "$((lt1 - lt0))e-3" 1)
                say "threads: export.threads=$th: $((lw1 - lw0)) Graph writes in $(fdiv $((lt1 - lt0)) 1000 1) s = ${LW[$th]}/s"
        done
        emu_post /_emulator/faults '{"latencyMs":0}' >/dev/null || true
        if [ -n "${LW[1]:-}" ] && [ -n "${LW[4]:-}" ]; then
                result 1c.export_threads "Graph writes/s with export.threads=4 / with 1, Graph latency $LAT_MS ms (2 workers)" \
                        "$(fdiv "${LW[4]}" "${LW[1]}" 2)" "x" "" "" "" "" \
                        "{\"latency_ms\": $LAT_MS, \"writes_per_s_1\": ${LW[1]}, \"writes_per_s_4\": ${LW[4]}, \"seconds\": $LAT_S}"
        else
                bad "threads: a run did not finish"
        fi
fi

# ---- profile: where one worker's wall time and instructions go during an initial sync --------------
# (a) wall clock: gdb stack samples of the join and export threads (pmp.py),
# waiting included; (b) instructions: the worker under callgrind for a
# bounded time (perf stat -e instructions is not supported on this machine).
if [ "$PROFILE_S" -gt 0 ] && ! skip profile; then
        if command -v gdb >/dev/null && fresh_backends; then
                say "profile: gdb stack samples of one worker during ${PROFILE_S}s of an initial sync"
                write_worker_conf sync pmp 1000000 1s
                start_workers 1 sync && start_producer
                : > "$OUT/pmp-samples.txt"
                end=$(( $(date +%s) + PROFILE_S ))
                sleep 2
                while [ "$(date +%s)" -lt "$end" ]; do
                        timeout 20 gdb -p "$(_h_pid worker.1)" -batch -nx -ex 'thread apply all bt 30' >> "$OUT/pmp-samples.txt" 2>/dev/null
                        sleep 0.5
                done
                stop_workers
                stop_producer
                python3 "$SRC_DIR/bench/pipeline/pmp.py" "$OUT/pmp-samples.txt" 10 > "$OUT/pmp.txt" 2>>"$LOG" || bad "pmp.py failed"
                tee -a "$LOG" < "$OUT/pmp.txt" >&2
        fi
        if command -v valgrind >/dev/null && fresh_backends; then
                say "profile: one worker under valgrind --tool=callgrind for ${PROFILE_S}s of an initial sync"
                write_worker_conf sync profile 1000000 1s
                rm -f "$OUT/callgrind.out.worker"
                start_workers 1 sync valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.worker" --trace-children=no
                start_producer
                sleep "$PROFILE_S"
                done_w=$(emu_stat writes)
                CANOPY_TEST_STOP_TIMEOUT=60 stop_workers
                stop_producer
                if [ -s "$OUT/callgrind.out.worker" ]; then
                        callgrind_annotate --inclusive=no "$OUT/callgrind.out.worker" 2>/dev/null | head -60 > "$OUT/callgrind-self.txt"
                        callgrind_annotate --inclusive=yes "$OUT/callgrind.out.worker" 2>/dev/null | head -60 > "$OUT/callgrind-inclusive.txt"
                        result profile.writes "Graph writes made by the worker under callgrind" "$done_w" "writes" "" "" "" "" \
                                "{\"seconds\": $PROFILE_S}"
                else
                        bad "callgrind wrote no profile"
                fi
        fi
fi

jq -s --slurpfile m "$OUT/machine.json" --arg scale "$SCALE" --arg smoke "${SMOKE:-0}" \
        '{machine: $m[0], scale_users: ($scale | tonumber), smoke: ($smoke == "1"), results: .}' "$RESULTS" > "$OUT/pipeline.json"
say "pipeline benchmarks done: $OUT/pipeline.json$( [ $FAILED = 0 ] || echo ' (with errors: see above)')"
exit $FAILED
