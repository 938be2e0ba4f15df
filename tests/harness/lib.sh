# shellcheck shell=bash
# Canopy test harness library (docs/HARNESS.md).
#
# Source it from a bash test script, or use tests/harness/run-with, which is
# built on it. Every server starts on a free loopback port in a per-test temp
# dir, is waited for until it answers, and is stopped by PID. A reaper process
# in its own session kills what is left and removes the temp dir if the
# harness process dies without cleaning up (even by SIGKILL).
#
#   . tests/harness/lib.sh
#   harness_init [BIN_DIR]              # temp dir, reaper; CANOPY_TEST_TMPDIR
#   trap harness_cleanup EXIT
#   harness_redis [--appendonly] [--password] # CANOPY_TEST_REDIS_HOST/_PORT/_PID(/_PASSWORD_FILE)
#   harness_kafka [BROKERS] [TOPIC:P..] # CANOPY_TEST_KAFKA_BOOTSTRAP/_CONTROL/_PID
#   harness_slapd NAME FILE.ldif        # CANOPY_TEST_LDAP_<NAME>_*
#   harness_samba NAME FILE.ldif        # CANOPY_TEST_AD_<NAME>_*
#   harness_ad_connector NAME [ACCOUNT] # a DirSync connector account: CANOPY_TEST_AD_<NAME>_CONNECTOR_*
#   harness_emulator [EXTRA ARGS...]    # CANOPY_TEST_GRAPH_*
#   harness_stop_<redis|kafka|emulator> [SIG], harness_stop_<slapd|samba> NAME [SIG]
#   harness_restart_<...>               # same ports, same data (kafka: new cluster)
#   harness_cleanup                     # stop all, remove the temp dir
#
# Functions return 0 on success, 77 when a needed program is missing (skip),
# and 1 on any other failure, after printing the reason and the server's log
# tail on stderr.

HARNESS_LIB=${BASH_SOURCE[0]}
HARNESS_SRC_DIR=$(cd "$(dirname "$HARNESS_LIB")/../.." && pwd)
HARNESS_TIMEOUT=${CANOPY_TEST_START_TIMEOUT:-60}
HARNESS_SAMBA_TAG=v1

# ------------------------------------------------------------------ helpers

_h_err() { printf 'harness: %s\n' "$*" >&2; }

# _h_fail MSG [LOGFILE]: print MSG and the tail of LOGFILE; return 1.
_h_fail() {
        _h_err "$1"
        if [ -n "${2:-}" ] && [ -s "$2" ]; then
                printf -- '---- last lines of %s ----\n' "$2" >&2
                tail -n 40 "$2" >&2
                printf -- '----\n' >&2
        fi
        return 1
}

_h_upper() { printf '%s' "$1" | tr 'a-z' 'A-Z' | tr -c 'A-Z0-9_\n' '_'; }

# _h_stat PID: set the array _h_f to the fields of /proc/PID/stat after the
# command name (_h_f[0] = state, _h_f[19] = start time in clock ticks).
# Builtins only: it runs in polling loops.
_h_stat() {
        local s
        { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 1
        s=${s##*) }
        read -r -a _h_f <<<"$s"
}

# _h_starttime PID: print the start time of PID, to tell a process from a
# later one that reuses its PID. Fails for a zombie.
_h_starttime() {
        local _h_f
        _h_stat "$1" && [ "${_h_f[0]}" != Z ] && printf '%s' "${_h_f[19]}"
}

# _h_alive PID [STARTTIME]: PID runs (not a zombie) and, when STARTTIME is
# given, is the process that was recorded.
_h_alive() {
        local _h_f
        _h_stat "$1" && [ "${_h_f[0]}" != Z ] || return 1
        [ -z "${2:-}" ] || [ "${_h_f[19]}" = "$2" ]
}

_h_procs() { printf '%s/.harness/procs' "$CANOPY_TEST_TMPDIR"; }

# _h_record KEY PID: remember a process so that it is stopped at cleanup.
_h_record() {
        local st
        st=$(_h_starttime "$2") || st=0
        _h_unrecord "$1"
        printf '%s %s %s\n' "$1" "$2" "$st" >>"$(_h_procs)"
}

_h_unrecord() {
        local f
        f=$(_h_procs)
        [ -f "$f" ] || return 0
        awk -v k="$1" '$1 != k' "$f" >"$f.new" && mv -f "$f.new" "$f"
}

# _h_pid KEY: print the recorded PID of KEY.
_h_pid() {
        local f
        f=$(_h_procs)
        [ -f "$f" ] && awk -v k="$1" '$1 == k { print $2 }' "$f"
}

# _h_kill PID [SIG] [STARTTIME]: signal PID and wait (bounded) until it is
# gone; SIGKILL after CANOPY_TEST_STOP_TIMEOUT (10) seconds.
_h_kill() {
        local pid=$1 sig=${2:-TERM} st=${3:-} i limit
        limit=$(( ${CANOPY_TEST_STOP_TIMEOUT:-10} * 10 ))
        _h_alive "$pid" "$st" || return 0
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < limit; i++)); do
                _h_alive "$pid" "$st" || break
                sleep 0.1
        done
        if _h_alive "$pid" "$st"; then
                _h_err "pid $pid did not stop on SIG$sig; killing it"
                kill -s KILL "$pid" 2>/dev/null || true
                for ((i = 0; i < 50; i++)); do
                        _h_alive "$pid" "$st" || break
                        sleep 0.1
                done
        fi
        wait "$pid" 2>/dev/null || true
        return 0
}

# _h_stop KEY [SIG]: stop the process recorded under KEY.
_h_stop() {
        local pid st
        pid=$(_h_pid "$1")
        [ -n "$pid" ] || return 0
        st=$(awk -v k="$1" '$1 == k { print $3 }' "$(_h_procs)")
        _h_kill "$pid" "${2:-TERM}" "$st"
        _h_unrecord "$1"
}

# _h_port_free PORT [ADDR]: nothing listens on ADDR:PORT (TCP), neither on
# ADDR itself nor on a wildcard address.
_h_port_free() {
        local addr=${2:-127.0.0.1} busy
        if command -v ss >/dev/null 2>&1; then
                busy=$(ss -Htln "sport = :$1" 2>/dev/null | awk -v a="$addr" '
                        { n = split($4, f, ":"); host = substr($4, 1, length($4) - length(f[n]) - 1)
                          if (host == a || host == "0.0.0.0" || host == "*" || host == "[::]") print }')
                [ -z "$busy" ] || return 1
        fi
        ! (exec 2>/dev/null; : >"/dev/tcp/$addr/$1")
}

# _h_free_port: print a free loopback port (10000-31999, below the kernel's
# ephemeral range), never one already handed out in this run. Starting a
# server can still lose a race with another process; the callers retry.
_h_free_port() {
        local p i used
        used="$CANOPY_TEST_TMPDIR/.harness/ports"
        for ((i = 0; i < 200; i++)); do
                p=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))
                grep -qx "$p" "$used" 2>/dev/null && continue
                _h_port_free "$p" || continue
                echo "$p" >>"$used"
                printf '%s' "$p"
                return 0
        done
        _h_err "no free port found"
        return 1
}

# _h_wait_ready DESC PID LOG CHECK...: run CHECK until it succeeds, the
# process dies, or HARNESS_TIMEOUT seconds pass.
_h_wait_ready() {
        local desc=$1 pid=$2 log=$3 deadline
        shift 3
        deadline=$(( SECONDS + HARNESS_TIMEOUT ))
        while :; do
                if "$@" >/dev/null 2>&1; then
                        return 0
                fi
                if ! _h_alive "$pid"; then
                        wait "$pid" 2>/dev/null || true
                        _h_fail "$desc exited before it was ready" "$log"
                        return 1
                fi
                if (( SECONDS > deadline )); then
                        _h_fail "$desc not ready after ${HARNESS_TIMEOUT}s" "$log"
                        return 1
                fi
                sleep 0.1
        done
}

_h_need() {
        local p
        for p in "$@"; do
                if ! command -v "$p" >/dev/null 2>&1; then
                        _h_err "SKIP: $p is not installed (run scripts/bootstrap)"
                        return 77
                fi
        done
}

# A random secret of hex digits (no newline).
_h_secret() { od -An -N"${1:-12}" -tx1 /dev/urandom | tr -d ' \n'; }

# _h_write_secret FILE VALUE: mode 0600, no trailing newline (ldap -y).
_h_write_secret() {
        (umask 077 && printf '%s' "$2" >"$1")
}

# ------------------------------------------------------------------- TLS

# _h_ca: create the per-run test CA once; print its directory.
_h_ca() {
        local d="$CANOPY_TEST_TMPDIR/tls"
        if [ ! -s "$d/ca.pem" ]; then
                mkdir -p "$d" || return 1
                openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                        -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 3 \
                        -subj "/CN=Canopy Test CA $$" \
                        -addext "basicConstraints=critical,CA:TRUE" \
                        -addext "keyUsage=critical,keyCertSign,cRLSign" \
                        >"$d/openssl.log" 2>&1 ||
                        { _h_fail "cannot create the test CA" "$d/openssl.log"; return 1; }
        fi
        printf '%s' "$d"
}

# _h_cert NAME SAN: issue a server certificate from the test CA;
# SAN like "IP:127.0.0.1,DNS:localhost". Creates tls/NAME.pem and NAME.key.
_h_cert() {
        local d
        d=$(_h_ca) || return 1
        [ -s "$d/$1.pem" ] && return 0
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -CA "$d/ca.pem" -CAkey "$d/ca.key" \
                -keyout "$d/$1.key" -out "$d/$1.pem" -days 3 -subj "/CN=$1" \
                -addext "subjectAltName=$2" \
                -addext "basicConstraints=critical,CA:FALSE" \
                -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
                -addext "extendedKeyUsage=serverAuth" \
                >>"$d/openssl.log" 2>&1 ||
                { _h_fail "cannot issue a certificate for $1" "$d/openssl.log"; return 1; }
}

# ------------------------------------------------------------ init/cleanup

# _h_reaper HARNESS_PID HARNESS_STARTTIME DIR: runs in its own session. When
# the harness process is gone and DIR still exists (no cleanup happened),
# kill every recorded process and remove DIR.
_h_reaper() {
        local hp=$1 hst=$2 dir=$3 key pid st tick
        trap '' INT HUP TERM
        echo "$BASHPID" >"$dir/.harness/reaper.pid"
        # Sleep with read -t on a FIFO: no child process to leave behind.
        mkfifo "$dir/.harness/tick" && exec {tick}<>"$dir/.harness/tick" || tick=
        while [ -d "$dir" ] && _h_alive "$hp" "$hst"; do
                if [ -n "$tick" ]; then
                        read -r -t 1 -u "$tick" _
                else
                        sleep 1
                fi
        done
        [ -d "$dir" ] || exit 0
        if [ -f "$dir/.harness/procs" ]; then
                while read -r key pid st; do
                        _h_alive "$pid" "$st" && kill -s TERM "$pid" 2>/dev/null
                done <"$dir/.harness/procs"
                while read -r key pid st; do
                        _h_kill "$pid" TERM "$st"
                done <"$dir/.harness/procs"
        fi
        rm -rf "$dir"
}

# harness_init [BIN_DIR]: create the temp dir (CANOPY_TEST_TMPDIR) and the
# reaper. BIN_DIR (or $CANOPY_TEST_BIN, or <src>/build/bin) holds the built
# binaries and is exported as CANOPY_TEST_BIN.
harness_init() {
        local i hst
        [ -z "${HARNESS_READY:-}" ] || return 0
        if [ -n "${1:-}" ]; then
                CANOPY_TEST_BIN=$1
        elif [ -z "${CANOPY_TEST_BIN:-}" ]; then
                CANOPY_TEST_BIN=$HARNESS_SRC_DIR/build/bin
        fi
        CANOPY_TEST_BIN=$(cd "$CANOPY_TEST_BIN" 2>/dev/null && pwd) ||
                { _h_err "binary dir ${1:-$CANOPY_TEST_BIN} does not exist (pass --bin DIR)"; return 1; }
        export CANOPY_TEST_BIN
        CANOPY_TEST_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/canopy-test.XXXXXX") || return 1
        chmod 0755 "$CANOPY_TEST_TMPDIR"
        export CANOPY_TEST_TMPDIR
        mkdir -p "$CANOPY_TEST_TMPDIR/.harness"
        : >"$CANOPY_TEST_TMPDIR/.harness/procs"
        HARNESS_PID=$BASHPID
        hst=$(_h_starttime "$HARNESS_PID")
        setsid bash -c '. "$1" && _h_reaper "$2" "$3" "$4"' canopy-harness-reaper \
                "$HARNESS_LIB" "$HARNESS_PID" "$hst" "$CANOPY_TEST_TMPDIR" \
                </dev/null >/dev/null 2>&1 &
        for ((i = 0; i < 100; i++)); do
                [ -s "$CANOPY_TEST_TMPDIR/.harness/reaper.pid" ] && break
                sleep 0.05
        done
        HARNESS_READY=1
}

# harness_cleanup: stop every server (and the wrapped command, if any) by
# PID, remove the temp dir, stop the reaper. Safe to call twice.
harness_cleanup() {
        local dir=${CANOPY_TEST_TMPDIR:-} key pid st rpid
        [ -n "${HARNESS_READY:-}" ] && [ -n "$dir" ] && [ -d "$dir" ] || return 0
        if [ -f "$dir/.harness/procs" ]; then
                # The wrapped command first, then the servers in reverse order.
                local lines=() l
                mapfile -t lines < <(tac "$dir/.harness/procs")
                for l in ${lines[@]+"${lines[@]}"}; do
                        read -r key pid st <<<"$l"
                        _h_kill "$pid" TERM "$st"
                done
                : >"$dir/.harness/procs"
        fi
        rpid=$(cat "$dir/.harness/reaper.pid" 2>/dev/null)
        if [ -n "${CANOPY_TEST_KEEP:-}" ]; then
                _h_err "CANOPY_TEST_KEEP set: keeping $dir"
        else
                rm -rf "$dir"
        fi
        # The reaper ignores TERM (it must outlive a killed process group).
        if [ -n "$rpid" ]; then
                kill -s KILL "$rpid" 2>/dev/null || true
                wait "$rpid" 2>/dev/null || true
        fi
        HARNESS_READY=
}

# --------------------------------------------------------------- redis

_h_redis_start() {
        local d="$CANOPY_TEST_TMPDIR/redis" port=$1 conf
        mkdir -p "$d"
        # Options of harness_redis (persistence, password) live in a config
        # file, so that a password never appears on a command line.
        conf="$d/extra.conf"
        : >"$conf"
        chmod 600 "$conf"
        if [ -n "${HARNESS_REDIS_AOF:-}" ]; then
                printf 'appendonly yes\nappendfsync always\n' >>"$conf"
        else
                printf 'appendonly no\n' >>"$conf"
        fi
        [ -z "${CANOPY_TEST_REDIS_PASSWORD_FILE:-}" ] ||
                printf 'requirepass "%s"\n' "$(cat "$CANOPY_TEST_REDIS_PASSWORD_FILE")" >>"$conf"
        [ -z "${HARNESS_REDIS_CLUSTER:-}" ] ||
                printf 'cluster-enabled yes\ncluster-config-file nodes.conf\n' >>"$conf"
        redis-server "$conf" --port "$port" --bind 127.0.0.1 --dir "$d" --save '' \
                --daemonize no --logfile '' --databases 16 \
                </dev/null >>"$d/redis.log" 2>&1 &
        _h_record redis $!
        disown $! 2>/dev/null  # no job notices; bash still reaps it
        _h_wait_ready "redis-server on port $port" "$!" "$d/redis.log" \
                _h_redis_ping "$port" || return
        [ -z "${HARNESS_REDIS_CLUSTER:-}" ] || _h_redis_own_slots "$port"
}

# A one-node Redis Cluster holding every slot (kept in nodes.conf across a
# restart): no redirects, but multi-key commands and scripts whose keys are
# in different slots fail with CROSSSLOT, as on a real cluster.
_h_redis_own_slots() {
        local i cli=(redis-cli -h 127.0.0.1 -p "$1")
        [ -z "${CANOPY_TEST_REDIS_PASSWORD_FILE:-}" ] || export REDISCLI_AUTH="$(cat "$CANOPY_TEST_REDIS_PASSWORD_FILE")"
        "${cli[@]}" CLUSTER INFO | grep -q 'cluster_slots_assigned:16384' ||
                "${cli[@]}" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null || { _h_err "CLUSTER ADDSLOTSRANGE failed"; return 1; }
        for ((i = 0; i < 100; i++)); do
                "${cli[@]}" CLUSTER INFO | grep -q 'cluster_state:ok' && return 0
                sleep 0.1
        done
        _h_err "redis cluster on port $1 not ok after 10 s"
        return 1
}

_h_redis_ping() {
        if [ -n "${CANOPY_TEST_REDIS_PASSWORD_FILE:-}" ]; then
                [ "$(REDISCLI_AUTH=$(cat "$CANOPY_TEST_REDIS_PASSWORD_FILE") redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
        else
                [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
        fi
}

# harness_redis [--appendonly] [--password] [--cluster]: start redis-server. Default: no
# persistence. --appendonly: AOF on (appendfsync always), so that a restart
# (harness_restart_redis, even after SIGKILL) keeps the data. --password: a
# random password (requirepass) in CANOPY_TEST_REDIS_PASSWORD_FILE (0600, no
# newline). --cluster: cluster mode, one node holding every slot
# (CANOPY_TEST_REDIS_CLUSTER=1): keys of one command or script must share a
# hash slot, as on a sharded Redis Cluster.
harness_redis() {
        local port try
        HARNESS_REDIS_AOF= HARNESS_REDIS_CLUSTER=
        unset CANOPY_TEST_REDIS_PASSWORD_FILE CANOPY_TEST_REDIS_CLUSTER
        while [ $# -gt 0 ]; do
                case $1 in
                --appendonly) HARNESS_REDIS_AOF=1 ;;
                --cluster) HARNESS_REDIS_CLUSTER=1; export CANOPY_TEST_REDIS_CLUSTER=1 ;;
                --password)
                        mkdir -p "$CANOPY_TEST_TMPDIR/redis"
                        export CANOPY_TEST_REDIS_PASSWORD_FILE="$CANOPY_TEST_TMPDIR/redis/password"
                        _h_write_secret "$CANOPY_TEST_REDIS_PASSWORD_FILE" "$(_h_secret 18)"
                        ;;
                *) _h_err "harness_redis: unknown option $1"; return 1 ;;
                esac
                shift
        done
        _h_need redis-server redis-cli || return
        for try in 1 2 3; do
                port=$(_h_free_port) || return 1
                if _h_redis_start "$port"; then
                        export CANOPY_TEST_REDIS_HOST=127.0.0.1 CANOPY_TEST_REDIS_PORT=$port
                        export CANOPY_TEST_REDIS_PID
                        CANOPY_TEST_REDIS_PID=$(_h_pid redis)
                        return 0
                fi
                _h_stop redis
                grep -q "Address already in use" "$CANOPY_TEST_TMPDIR/redis/redis.log" || return 1
        done
        return 1
}

harness_stop_redis() { _h_stop redis "${1:-TERM}"; }

# harness_restart_redis: same port, same options; the data is gone unless
# harness_redis was given --appendonly.
harness_restart_redis() {
        _h_stop redis
        _h_redis_start "$CANOPY_TEST_REDIS_PORT" || return 1
        CANOPY_TEST_REDIS_PID=$(_h_pid redis)
}

# --------------------------------------------------------------- kafka

# harness_kafka [BROKERS] [TOPIC:PARTITIONS...]: start canopy-devkafka.
harness_kafka() {
        local d="$CANOPY_TEST_TMPDIR/kafka" bin="$CANOPY_TEST_BIN/canopy-devkafka"
        local brokers=${1:-3} args=() t
        shift || true
        if [ ! -x "$bin" ]; then
                _h_err "SKIP: $bin not built"
                return 77
        fi
        for t in "$@"; do args+=(--topic "$t"); done
        HARNESS_KAFKA_ARGS=(--brokers "$brokers" "${args[@]}")
        mkdir -p "$d"
        rm -f "$d/bootstrap" "$d/control"
        "$bin" "${HARNESS_KAFKA_ARGS[@]}" --bootstrap-file "$d/bootstrap" \
                --control 127.0.0.1:0 --control-file "$d/control" \
                </dev/null >>"$d/devkafka.log" 2>&1 &
        _h_record kafka $!
        disown $! 2>/dev/null  # no job notices; bash still reaps it
        _h_wait_ready "canopy-devkafka" "$!" "$d/devkafka.log" test -s "$d/bootstrap" || return 1
        export CANOPY_TEST_KAFKA_BOOTSTRAP CANOPY_TEST_KAFKA_CONTROL CANOPY_TEST_KAFKA_PID
        CANOPY_TEST_KAFKA_BOOTSTRAP=$(cat "$d/bootstrap")
        CANOPY_TEST_KAFKA_CONTROL=$(cat "$d/control")
        CANOPY_TEST_KAFKA_PID=$(_h_pid kafka)
}

# harness_kafka_ctl COMMAND...: send a control command to devkafka.
harness_kafka_ctl() { "$CANOPY_TEST_BIN/canopy-devkafka" ctl "$CANOPY_TEST_KAFKA_CONTROL" "$@"; }

harness_stop_kafka() { _h_stop kafka "${1:-TERM}"; }

# harness_restart_kafka: a NEW, empty cluster on new ports (the mock keeps
# nothing); the exported variables are updated.
harness_restart_kafka() {
        local d="$CANOPY_TEST_TMPDIR/kafka" bin="$CANOPY_TEST_BIN/canopy-devkafka"
        _h_stop kafka
        rm -f "$d/bootstrap" "$d/control"
        "$bin" "${HARNESS_KAFKA_ARGS[@]}" --bootstrap-file "$d/bootstrap" \
                --control 127.0.0.1:0 --control-file "$d/control" \
                </dev/null >>"$d/devkafka.log" 2>&1 &
        _h_record kafka $!
        disown $! 2>/dev/null  # no job notices; bash still reaps it
        _h_wait_ready "canopy-devkafka" "$!" "$d/devkafka.log" test -s "$d/bootstrap" || return 1
        CANOPY_TEST_KAFKA_BOOTSTRAP=$(cat "$d/bootstrap")
        CANOPY_TEST_KAFKA_CONTROL=$(cat "$d/control")
        CANOPY_TEST_KAFKA_PID=$(_h_pid kafka)
}

# --------------------------------------------------------------- slapd

# _h_ldif_first_dn FILE: the DN of the first entry (unfolded; dn:: decoded).
_h_ldif_first_dn() {
        awk '
                /^#/ { next }
                /^ / { if (cur != "") cur = cur substr($0, 2); next }
                { if (cur ~ /^dn::?/) { print cur; found = 1; exit } cur = $0 }
                END { if (!found && cur ~ /^dn::?/) print cur }
        ' "$1" | {
                read -r line || exit 1
                case $line in
                dn::*) printf '%s' "${line#dn::}" | tr -d ' ' | base64 -d ;;
                dn:*) line=${line#dn:}; printf '%s' "${line# }" ;;
                esac
        }
}

_h_module_path() {
        local d
        for d in /usr/lib/ldap /usr/lib/x86_64-linux-gnu/ldap /usr/lib64/openldap /usr/lib/openldap \
                /usr/local/libexec/openldap; do
                [ -e "$d/syncprov.so" ] || [ -e "$d/syncprov.la" ] && { printf '%s' "$d"; return 0; }
        done
        return 1
}

_h_schema_dir() {
        local d
        for d in /etc/ldap/schema /etc/openldap/schema /usr/local/etc/openldap/schema; do
                [ -e "$d/core.schema" ] && { printf '%s' "$d"; return 0; }
        done
        return 1
}

# _h_slapd_conf DIR BASE ROOTPW_HASH CONNECTOR_DN
_h_slapd_conf() {
        local d=$1 base=$2 hash=$3 conn=$4 mp sd tls
        mp=$(_h_module_path) || { _h_err "slapd modules (syncprov) not found"; return 1; }
        sd=$(_h_schema_dir) || { _h_err "OpenLDAP schema dir not found"; return 1; }
        tls="$CANOPY_TEST_TMPDIR/tls"
        cat >"$d/slapd.conf" <<EOF
# Generated by the Canopy test harness.
include $sd/core.schema
include $sd/cosine.schema
include $sd/nis.schema
include $sd/inetorgperson.schema

pidfile $d/slapd.pid
argsfile $d/slapd.args
modulepath $mp
moduleload back_mdb
moduleload syncprov
moduleload accesslog

TLSCACertificateFile $tls/ca.pem
TLSCertificateFile $tls/localhost.pem
TLSCertificateKeyFile $tls/localhost.key

sizelimit unlimited
timelimit unlimited

authz-regexp "gidNumber=0\\\\+uidNumber=0,cn=peercred,cn=external,cn=auth" "cn=admin,$base"

access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
access to attrs=userPassword
        by self write
        by anonymous auth
        by * none
access to *
        by dn.exact="$conn" read
        by users read
        by * none

# The accesslog database: true deltas (reqMod) of every write to the data.
database mdb
suffix "cn=accesslog"
rootdn "cn=accesslog"
directory $d/accesslog
maxsize 2147483648
dbnosync
index default eq
index entryCSN,objectClass,reqEnd,reqResult,reqStart eq
overlay syncprov
syncprov-nopresent TRUE
syncprov-reloadhint TRUE

database mdb
suffix "$base"
rootdn "cn=admin,$base"
rootpw $hash
directory $d/data
maxsize 4294967296
dbnosync
index objectClass eq
index entryUUID,entryCSN eq
index cn,uid,mail eq
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 10000
overlay accesslog
logdb cn=accesslog
logops writes
logsuccess TRUE
logpurge 07+00:00 01+00:00
EOF
}

_h_slapd_start() {
        local key=$1 d=$2 port=$3 sport=$4 ldapi
        ldapi="ldapi://$(printf '%s' "$d/ldapi" | sed 's|/|%2F|g')"
        slapd -d 0 -f "$d/slapd.conf" \
                -h "ldap://127.0.0.1:$port/ ldaps://127.0.0.1:$sport/ $ldapi" \
                </dev/null >>"$d/slapd.log" 2>&1 &
        _h_record "$key" $!
        disown $! 2>/dev/null  # no job notices; bash still reaps it
        _h_wait_ready "slapd $key on ports $port/$sport" "$!" "$d/slapd.log" \
                ldapsearch -x -H "ldap://127.0.0.1:$port" -b '' -s base -l 5 namingContexts
}

# harness_slapd NAME FILE.ldif: slapd (mdb, syncprov, accesslog) seeded with
# FILE.ldif; the base DN is the DN of the file's first entry. Exports
# CANOPY_TEST_LDAP_<NAME>_{URI,LDAPS_URI,LDAPI_URI,BASE,BINDDN,PWFILE,CA,PID,
# CONNECTOR_DN,CONNECTOR_PWFILE,ACCESSLOG_BASE}.
harness_slapd() {
        local name=$1 ldif=$2 up d base pw cpw conn port sport try v key
        _h_need slapd slapadd slappasswd ldapsearch openssl || return
        [ -n "$name" ] || { _h_err "harness_slapd: NAME missing"; return 1; }
        [ -r "$ldif" ] || { _h_err "harness_slapd: cannot read LDIF $ldif"; return 1; }
        up=$(_h_upper "$name")
        key="slapd.$up"
        d="$CANOPY_TEST_TMPDIR/slapd-$name"
        base=$(_h_ldif_first_dn "$ldif")
        [ -n "$base" ] || { _h_err "harness_slapd: no entry in $ldif"; return 1; }
        mkdir -p "$d/data" "$d/accesslog" || return 1
        _h_cert localhost "IP:127.0.0.1,DNS:localhost" || return 1

        pw=$(_h_secret); cpw=$(_h_secret)
        _h_write_secret "$d/admin.pw" "$pw"
        _h_write_secret "$d/connector.pw" "$cpw"
        conn="cn=canopy-connector,$base"
        _h_slapd_conf "$d" "$base" "$(slappasswd -T "$d/admin.pw")" "$conn" || return 1

        # Seed offline: the LDIF, then the connector account below the base.
        {
                cat "$ldif"
                printf '\ndn: %s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: canopy-connector\nuserPassword: %s\ndescription: Canopy test connector account (read-only)\n' \
                        "$conn" "$(slappasswd -T "$d/connector.pw")"
        } >"$d/seed.ldif"
        if ! slapadd -q -w -f "$d/slapd.conf" -b "$base" -l "$d/seed.ldif" >"$d/slapadd.log" 2>&1; then
                _h_fail "slapadd of $ldif failed" "$d/slapadd.log"
                return 1
        fi

        for try in 1 2 3; do
                port=$(_h_free_port) && sport=$(_h_free_port) || return 1
                if _h_slapd_start "$key" "$d" "$port" "$sport"; then
                        break
                fi
                _h_stop "$key"
                grep -qi "address already in use\|bind.*failed" "$d/slapd.log" && (( try < 3 )) || return 1
        done
        v=CANOPY_TEST_LDAP_${up}
        export "${v}_URI=ldap://127.0.0.1:$port" "${v}_LDAPS_URI=ldaps://127.0.0.1:$sport" \
                "${v}_LDAPI_URI=ldapi://$(printf '%s' "$d/ldapi" | sed 's|/|%2F|g')" \
                "${v}_BASE=$base" "${v}_BINDDN=cn=admin,$base" "${v}_PWFILE=$d/admin.pw" \
                "${v}_CA=$CANOPY_TEST_TMPDIR/tls/ca.pem" "${v}_PID=$(_h_pid "$key")" \
                "${v}_CONNECTOR_DN=$conn" "${v}_CONNECTOR_PWFILE=$d/connector.pw" \
                "${v}_ACCESSLOG_BASE=cn=accesslog"
        printf '%s %s\n' "$port" "$sport" >"$d/ports"
}

harness_stop_slapd() {
        local up
        up=$(_h_upper "$1")
        _h_stop "slapd.$up" "${2:-TERM}"
}

# harness_restart_slapd NAME: same ports, same data.
harness_restart_slapd() {
        local up d port sport
        up=$(_h_upper "$1")
        d="$CANOPY_TEST_TMPDIR/slapd-$1"
        read -r port sport <"$d/ports" || return 1
        _h_stop "slapd.$up"
        _h_slapd_start "slapd.$up" "$d" "$port" "$sport" || return 1
        export "CANOPY_TEST_LDAP_${up}_PID=$(_h_pid "slapd.$up")"
}

# --------------------------------------------------------------- samba

_h_samba_version() { samba --version 2>/dev/null | tr -c 'A-Za-z0-9.\n' '_'; }

# _h_samba_template NAME: provision the domain NAME once (cached across tests
# and runs, keyed by NAME and the Samba version); print the template dir.
_h_samba_template() {
        local name=$1 up root t tmp pw
        up=$(_h_upper "$name")
        root=${CANOPY_SAMBA_TEMPLATE_DIR:-/tmp/canopy-samba-template-$(id -u)}
        t="$root/$name-$HARNESS_SAMBA_TAG-$(_h_samba_version)"
        mkdir -p "$root" && chmod 0700 "$root" || return 1
        (
                flock -w 300 9 || { _h_err "timeout waiting for the Samba template lock"; exit 1; }
                [ -f "$t/.complete" ] && exit 0
                tmp="$t.tmp.$$"
                rm -rf "$t".tmp.*   # left by a provisioning that was killed
                mkdir -p "$tmp" || exit 1
                # Upper, lower, digit: AD's password complexity.
                pw="Cnp-$(_h_secret 8)-Aa1"
                _h_write_secret "$tmp/admin.pw" "$pw"
                _h_err "provisioning Samba AD template for $name (once; about 10 s) in $t"
                if ! samba-tool domain provision --targetdir="$tmp" \
                        --realm="$(printf '%s' "$name" | tr 'A-Z' 'a-z').canopy.test" \
                        --domain="$up" --server-role=dc --dns-backend=SAMBA_INTERNAL \
                        --host-name=canopydc --adminpass="$pw" \
                        --option="interfaces=lo" --option="bind interfaces only=yes" \
                        >"$tmp/provision.log" 2>&1; then
                        _h_fail "samba-tool domain provision failed" "$tmp/provision.log"
                        rm -rf "$tmp"
                        exit 1
                fi
                rm -rf "$t"
                touch "$tmp/.complete"
                mv "$tmp" "$t"
        ) 9>"$root/.lock-$name" || return 1
        printf '%s' "$t"
}

# _h_free_127: print a 127.0.0.x address (x in 2..254) with nothing on 389.
_h_free_127() {
        local i x
        for ((i = 0; i < 100; i++)); do
                x=$(( 2 + RANDOM % 253 ))
                _h_port_free 389 "127.0.0.$x" && _h_port_free 636 "127.0.0.$x" &&
                        _h_port_free 3268 "127.0.0.$x" && { printf '127.0.0.%s' "$x"; return 0; }
        done
        _h_err "no free 127.0.0.x address for Samba"
        return 1
}

# _h_samba_conf DIR NAME IP [HOST]: smb.conf of a DC of the domain NAME
# named HOST (default canopydc), with the services listed in DIR/services
# (default: ldap only). The TLS certificate is tls/<basename of DIR>.
_h_samba_conf() {
        local d=$1 name=$2 ip=$3 host=${4:-canopydc} up realm svc=ldap tls="$CANOPY_TEST_TMPDIR/tls" cert
        up=$(_h_upper "$name")
        realm=$(printf '%s' "$name" | tr 'a-z' 'A-Z').CANOPY.TEST
        cert=$(basename "$d")
        [ -s "$d/services" ] && svc=$(cat "$d/services")
        mkdir -p "$d/etc" "$d/cache" "$d/pid" "$d/ncalrpc" "$d/winbindd" "$d/log" "$d/ntp_signd"
        chmod 0750 "$d/ntp_signd"
        cat >"$d/etc/smb.conf" <<EOF
# Generated by the Canopy test harness: every directory under $d.
[global]
        netbios name = $(_h_upper "$host")
        realm = $realm
        workgroup = $up
        server role = active directory domain controller
        interfaces = $ip/8
        bind interfaces only = yes
        server services = $svc
        name resolve order = host
        disable netbios = yes
        dns forwarder = 127.0.0.1
        private dir = $d/private
        lock directory = $d
        state directory = $d/state
        cache directory = $d/cache
        pid directory = $d/pid
        ncalrpc dir = $d/ncalrpc
        binddns dir = $d/bind-dns
        winbindd socket directory = $d/winbindd
        ntp signd socket directory = $d/ntp_signd
        log file = $d/log/samba.log
        logging = file
        ldap server require strong auth = no
        tls enabled = yes
        tls keyfile = $tls/$cert.key
        tls certfile = $tls/$cert.pem
        tls cafile = $tls/ca.pem

[sysvol]
        path = $d/state/sysvol
        read only = No

[netlogon]
        path = $d/state/sysvol/$(printf '%s' "$name" | tr 'A-Z' 'a-z').canopy.test/scripts
        read only = No
EOF
}

# _h_samba_ns DIR CMD...: run CMD (exec, same PID) as the DC in DIR sees the
# world. A DC of a pair (harness_samba_dc2) runs in a mount namespace of
# its own where DIR/hosts is bind-mounted on /etc/hosts, with DIR/krb5.conf
# as KRB5_CONFIG: replication finds its partner by the name
# <NTDS Settings objectGUID>._msdcs.<realm>, and Kerberos its KDC, without
# DNS and without touching the host's /etc/hosts. A lone DC runs CMD as is.
_h_samba_ns() {
        local d=$1
        shift
        if [ -e "$d/hosts" ]; then
                exec unshare -m --propagation private -- sh -c \
                        'mount --bind "$1" /etc/hosts || exit 1; export KRB5_CONFIG="$2"; shift 2; exec "$@"' \
                        sh "$d/hosts" "$d/krb5.conf" "$@"
        else
                exec "$@"
        fi
}

_h_samba_start() {
        local key=$1 d=$2 ip=$3 svc=ldap
        [ -s "$d/services" ] && svc=$(cat "$d/services")
        (_h_samba_ns "$d" samba -i -M single -s "$d/etc/smb.conf" --option="server services=$svc" \
                --option='disable netbios=yes') </dev/null >>"$d/samba.out" 2>&1 &
        _h_record "$key" $!
        disown $! 2>/dev/null  # no job notices; bash still reaps it
        _h_wait_ready "samba $key on $ip" "$!" "$d/samba.out" \
                ldapsearch -x -H "ldap://$ip" -b '' -s base -l 5 defaultNamingContext
}

# harness_samba NAME FILE.ldif: a Samba AD DC (LDAP only) for the domain
# NAME.canopy.test on a free 127.0.0.x, seeded with FILE.ldif through ldapadd
# (the text @BASE@ in the LDIF is replaced by the domain's base DN). Exports
# CANOPY_TEST_AD_<NAME>_{URI,LDAPS_URI,HOST,BASE,BINDDN,PWFILE,CA,REALM,
# DOMAIN,PID}.
harness_samba() {
        local name=$1 ldif=$2 up t d ip try key base v binddn
        _h_need samba samba-tool ldapsearch ldapadd openssl flock || return
        if [ "$(id -u)" != 0 ]; then
                _h_err "SKIP: Samba AD DC needs root"
                return 77
        fi
        case $name in
        [A-Za-z]*) ;;
        *) _h_err "harness_samba: NAME must start with a letter"; return 1 ;;
        esac
        if [ ${#name} -gt 15 ] || [ -n "$(printf '%s' "$name" | tr -d 'A-Za-z0-9')" ] ||
           [ "$(_h_upper "$name")" = CANOPYDC ]; then
                _h_err "harness_samba: NAME must be 1-15 letters/digits (NetBIOS domain), not CANOPYDC"
                return 1
        fi
        [ -r "$ldif" ] || { _h_err "harness_samba: cannot read LDIF $ldif"; return 1; }
        up=$(_h_upper "$name")
        key="samba.$up"
        d="$CANOPY_TEST_TMPDIR/samba-$name"
        t=$(_h_samba_template "$name") || return 1
        rm -rf "$d"
        mkdir -p "$d" && cp -a "$t/private" "$t/state" "$t/admin.pw" "$d/" || return 1
        [ -d "$t/bind-dns" ] && cp -a "$t/bind-dns" "$d/"

        for try in 1 2 3; do
                ip=$(_h_free_127) || return 1
                _h_cert "samba-$name" "IP:$ip,DNS:canopydc.$(printf '%s' "$name" | tr 'A-Z' 'a-z').canopy.test" || return 1
                _h_samba_conf "$d" "$name" "$ip" || return 1
                if _h_samba_start "$key" "$d" "$ip"; then
                        break
                fi
                _h_stop "$key"
                rm -f "$CANOPY_TEST_TMPDIR/tls/samba-$name.pem" "$CANOPY_TEST_TMPDIR/tls/samba-$name.key"
                (( try < 3 )) && grep -qi "address already in use\|Failed to bind\|Failed to listen" "$d/samba.out" "$d/log/samba.log" 2>/dev/null || return 1
        done
        base=$(ldapsearch -x -LLL -o ldif-wrap=no -H "ldap://$ip" -b '' -s base defaultNamingContext |
                awk '/^defaultNamingContext:/ { print $2 }')
        [ -n "$base" ] || { _h_fail "samba: no defaultNamingContext" "$d/samba.out"; return 1; }
        binddn="CN=Administrator,CN=Users,$base"
        if [ -s "$ldif" ]; then
                sed "s/@BASE@/$base/g" "$ldif" >"$d/seed.ldif"
                if ! ldapadd -x -H "ldap://$ip" -D "$binddn" -y "$d/admin.pw" -f "$d/seed.ldif" \
                        >"$d/seed.log" 2>&1; then
                        _h_fail "samba: ldapadd of $ldif failed" "$d/seed.log"
                        return 1
                fi
        fi
        v=CANOPY_TEST_AD_${up}
        export "${v}_URI=ldap://$ip" "${v}_LDAPS_URI=ldaps://$ip" "${v}_HOST=$ip" \
                "${v}_BASE=$base" "${v}_BINDDN=$binddn" "${v}_PWFILE=$d/admin.pw" \
                "${v}_CA=$CANOPY_TEST_TMPDIR/tls/ca.pem" \
                "${v}_REALM=$(printf '%s' "$name" | tr 'A-Z' 'a-z').canopy.test" \
                "${v}_DOMAIN=$up" "${v}_PID=$(_h_pid "$key")"
        printf '%s\n' "$ip" >"$d/ip"
}

# harness_ad_connector NAME [ACCOUNT]: a connector account in the Samba AD
# forest NAME (harness_samba), as an AD administrator would set it up for a
# DirSync producer: a plain user (no administrative group) with Replicating
# Directory Changes on the domain and read access to CN=Deleted Objects.
# Exports CANOPY_TEST_AD_<NAME>_CONNECTOR_{DN,PWFILE,SID}.
harness_ad_connector() {
        local name=$1 acct=${2:-canopy-sync} up v host base admin apw pw sid d log
        up=$(_h_upper "$name")
        v=CANOPY_TEST_AD_${up}
        host=${v}_HOST base=${v}_BASE admin=${v}_BINDDN apw=${v}_PWFILE
        host=${!host} base=${!base} admin=${!admin} apw=${!apw}
        [ -n "$host" ] || { _h_err "harness_ad_connector: no Samba forest $name (harness_samba first)"; return 1; }
        d="$CANOPY_TEST_TMPDIR/samba-$name"
        log="$d/connector-$acct.log"
        pw="Sync-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')-Aa1"
        ( umask 077; printf '%s' "$pw" >"$d/$acct.pw" )
        # unicodePwd: the quoted password in UTF-16LE, over LDAPS only.
        printf 'dn: CN=%s,CN=Users,%s\nchangetype: add\nobjectClass: user\nsAMAccountName: %s\nunicodePwd:: %s\nuserAccountControl: 512\n' \
                "$acct" "$base" "$acct" "$(printf '"%s"' "$pw" | iconv -f utf-8 -t utf-16le | base64 -w0)" |
                LDAPTLS_CACERT="$CANOPY_TEST_TMPDIR/tls/ca.pem" ldapmodify -x -H "ldaps://$host" -D "$admin" -y "$apw" \
                >"$log" 2>&1 || { _h_fail "harness_ad_connector: cannot create $acct" "$log"; return 1; }
        samba-tool dsacl set -H "ldap://$host" --simple-bind-dn="$admin" --password="$(cat "$apw")" --car=get-changes \
                --action=allow --objectdn="$base" --trusteedn="CN=$acct,CN=Users,$base" >>"$log" 2>&1 ||
                { _h_fail "harness_ad_connector: cannot grant Replicating Directory Changes" "$log"; return 1; }
        sid=$(samba-tool user show "$acct" -H "ldap://$host" --simple-bind-dn="$admin" --password="$(cat "$apw")" \
                --attributes=objectSid 2>>"$log" | awk '/^objectSid:/ {print $2}')
        [ -n "$sid" ] || { _h_fail "harness_ad_connector: no objectSid for $acct" "$log"; return 1; }
        /usr/bin/python3 "$HARNESS_SRC_DIR/tests/harness/ad_grant_deleted.py" "$d/private/sam.ldb" "$d/etc/smb.conf" \
                "$base" "$sid" >>"$log" 2>&1 ||
                { _h_fail "harness_ad_connector: cannot grant read on CN=Deleted Objects" "$log"; return 1; }
        export "${v}_CONNECTOR_DN=CN=$acct,CN=Users,$base" "${v}_CONNECTOR_PWFILE=$d/$acct.pw" "${v}_CONNECTOR_SID=$sid"
}

harness_stop_samba() {
        local up
        up=$(_h_upper "$1")
        _h_stop "samba.$up" "${2:-TERM}"
}

# harness_restart_samba NAME: same address, same data.
harness_restart_samba() {
        local up d ip
        up=$(_h_upper "$1")
        d="$CANOPY_TEST_TMPDIR/samba-$1"
        read -r ip <"$d/ip" || return 1
        _h_stop "samba.$up"
        _h_samba_start "samba.$up" "$d" "$ip" || return 1
        export "CANOPY_TEST_AD_${up}_PID=$(_h_pid "samba.$up")"
}

# _h_ntds_guid IP: the objectGUID of the NTDS Settings object of the DC on IP
# (the root DSE's dsServiceName), as a UUID string.
_h_ntds_guid() {
        local ds
        ds=$(ldapsearch -x -LLL -o ldif-wrap=no -H "ldap://$1" -b '' -s base dsServiceName |
                awk '/^dsServiceName:/ { sub(/^dsServiceName: /, ""); print }')
        [ -n "$ds" ] || return 1
        ldapsearch -x -LLL -o ldif-wrap=no -H "ldap://$1" -D "$2" -y "$3" -b "$ds" -s base objectGUID |
                awk '/^objectGUID::/ { print $2 }' |
                /usr/bin/python3 -c 'import base64, sys, uuid; print(uuid.UUID(bytes_le=base64.b64decode(sys.stdin.read())))'
}

# harness_samba_dc2 NAME: a second domain controller of the domain NAME
# (harness_samba NAME first), joined with `samba-tool domain join ... DC`
# and replicating with the first one (DRS over RPC, Kerberos). Both DCs are
# restarted with the services that needs (HARNESS_SAMBA_PAIR_SERVICES) in
# mount namespaces of their own, where a hosts file of the harness names
# them (see _h_samba_ns); the first DC gets the DRS service principal name
# that a slim start never registers. The second DC is a forest named
# NAME-dc2 for the other functions (harness_stop_samba NAME-dc2,
# harness_restart_samba NAME-dc2); host canopydc2. Exports
# CANOPY_TEST_AD_<NAME>_DC2_{URI,LDAPS_URI,HOST,BASE,BINDDN,PWFILE,CA,REALM,
# DOMAIN,PID}. About 15 s.
HARNESS_SAMBA_PAIR_SERVICES="ldap cldap rpc kdc drepl"
harness_samba_dc2() {
        local name=$1 up up2 v v2 d1 d2 ip1 ip2 realm lrealm base admin apw g1 g2 join
        _h_need samba samba-tool unshare mount ldapmodify || return
        up=$(_h_upper "$name")
        up2=$(_h_upper "$name-dc2")
        v=CANOPY_TEST_AD_${up} v2=CANOPY_TEST_AD_${up2}
        d1="$CANOPY_TEST_TMPDIR/samba-$name" d2="$CANOPY_TEST_TMPDIR/samba-$name-dc2"
        read -r ip1 <"$d1/ip" 2>/dev/null ||
                { _h_err "harness_samba_dc2: no Samba forest $name (harness_samba first)"; return 1; }
        lrealm=$(printf '%s' "$name" | tr 'A-Z' 'a-z').canopy.test
        realm=$(printf '%s' "$lrealm" | tr 'a-z' 'A-Z')
        base=${v}_BASE admin=${v}_BINDDN apw=${v}_PWFILE
        base=${!base} admin=${!admin} apw=${!apw}
        ip2=$(_h_free_127) || return 1
        [ "$ip2" != "$ip1" ] || ip2=$(_h_free_127) || return 1
        _h_cert "samba-$name-dc2" "IP:$ip2,DNS:canopydc2.$lrealm" || return 1

        # The first DC again, with RPC, KDC and replication, named by the hosts file.
        printf '127.0.0.1 localhost\n%s canopydc.%s canopydc\n%s canopydc2.%s canopydc2\n' \
                "$ip1" "$lrealm" "$ip2" "$lrealm" >"$d1/hosts"
        printf '[libdefaults]\n\tdefault_realm = %s\n\tdns_lookup_realm = false\n\tdns_lookup_kdc = false\n\trdns = false\n[realms]\n%s = {\n\tkdc = %s\n\tkdc = %s\n}\n[domain_realm]\n\t.%s = %s\n' \
                "$realm" "$realm" "$ip1" "$ip2" "$lrealm" "$realm" >"$d1/krb5.conf"
        printf '%s\n' "$HARNESS_SAMBA_PAIR_SERVICES" >"$d1/services"
        _h_samba_conf "$d1" "$name" "$ip1" || return 1
        _h_stop "samba.$up"
        _h_samba_start "samba.$up" "$d1" "$ip1" || return 1
        export "${v}_PID=$(_h_pid "samba.$up")"
        g1=$(_h_ntds_guid "$ip1" "$admin" "$apw") ||
                { _h_fail "harness_samba_dc2: no NTDS Settings objectGUID on $ip1" "$d1/samba.out"; return 1; }
        printf '%s %s._msdcs.%s\n' "$ip1" "$g1" "$lrealm" >>"$d1/hosts"
        # The DRS SPN that samba_spnupdate would add at a full first start:
        # without it no partner gets a Kerberos ticket to replicate from here.
        printf 'dn: CN=CANOPYDC,OU=Domain Controllers,%s\nchangetype: modify\nadd: servicePrincipalName\nservicePrincipalName: E3514235-4B06-11D1-AB04-00C04FC2DCD2/%s/%s\n' \
                "$base" "$g1" "$lrealm" | ldapmodify -x -H "ldap://$ip1" -D "$admin" -y "$apw" >"$d1/spn.log" 2>&1 ||
                { _h_fail "harness_samba_dc2: cannot add the DRS SPN to CANOPYDC" "$d1/spn.log"; return 1; }

        # The join: the second DC's database, replicated from the first one.
        rm -rf "$d2"
        mkdir -p "$d2" || return 1
        cp -a "$d1/admin.pw" "$d2/"
        ln -s "$d1/hosts" "$d2/hosts"
        ln -s "$d1/krb5.conf" "$d2/krb5.conf"
        printf '%s\n' "$HARNESS_SAMBA_PAIR_SERVICES" >"$d2/services"
        join=(samba-tool domain join "$lrealm" DC -U "$up\\Administrator" --password="$(cat "$apw")"
                --server="$ip1" --targetdir="$d2" --dns-backend=SAMBA_INTERNAL
                --option="workgroup = $up" --option="realm = $realm" --option="netbios name = CANOPYDC2"
                --option="interfaces = $ip2/8" --option="bind interfaces only = yes"
                --option="name resolve order = host" --option="disable netbios = yes"
                --option="private dir = $d2/private" --option="lock directory = $d2"
                --option="state directory = $d2/state" --option="cache directory = $d2/cache"
                --option="pid directory = $d2/pid" --option="ncalrpc dir = $d2/ncalrpc"
                --option="binddns dir = $d2/bind-dns" --option="winbindd socket directory = $d2/winbindd"
                --option="ntp signd socket directory = $d2/ntp_signd")
        if ! (_h_samba_ns "$d1" "${join[@]}") </dev/null >"$d2/join.log" 2>&1; then
                _h_fail "harness_samba_dc2: samba-tool domain join failed" "$d2/join.log"
                return 1
        fi
        _h_samba_conf "$d2" "$name" "$ip2" canopydc2 || return 1
        _h_samba_start "samba.$up2" "$d2" "$ip2" || return 1
        g2=$(_h_ntds_guid "$ip2" "$admin" "$apw") ||
                { _h_fail "harness_samba_dc2: no NTDS Settings objectGUID on $ip2" "$d2/samba.out"; return 1; }
        printf '%s %s._msdcs.%s\n' "$ip2" "$g2" "$lrealm" >>"$d1/hosts"
        printf '%s\n' "$ip2" >"$d2/ip"
        export "${v2}_URI=ldap://$ip2" "${v2}_LDAPS_URI=ldaps://$ip2" "${v2}_HOST=$ip2" \
                "${v2}_BASE=$base" "${v2}_BINDDN=$admin" "${v2}_PWFILE=$d2/admin.pw" \
                "${v2}_CA=$CANOPY_TEST_TMPDIR/tls/ca.pem" "${v2}_REALM=$lrealm" \
                "${v2}_DOMAIN=$up" "${v2}_PID=$(_h_pid "samba.$up2")"
}

# ------------------------------------------------------------- emulator

_h_emulator_start() {
        local d="$CANOPY_TEST_TMPDIR/emulator" listen=$1 tls="$CANOPY_TEST_TMPDIR/tls"
        rm -f "$d/port"
        "$CANOPY_TEST_BIN/canopy-graph-emulator" --listen "$listen" --port-file "$d/port" \
                --tls-cert "$tls/localhost.pem" --tls-key "$tls/localhost.key" \
                --client "$CANOPY_TEST_GRAPH_TENANT:$CANOPY_TEST_GRAPH_CLIENT_ID:$CANOPY_TEST_GRAPH_SECRET_FILE:$HARNESS_GRAPH_ROLES" \
                --domain canopy.test "${HARNESS_EMULATOR_ARGS[@]}" \
                </dev/null >>"$d/emulator.log" 2>&1 &
        _h_record emulator $!
        disown $! 2>/dev/null  # no job notices; bash still reaps it
        _h_wait_ready "canopy-graph-emulator" "$!" "$d/emulator.log" test -s "$d/port" || return 1
        CANOPY_TEST_GRAPH_PORT=$(tr -dc 0-9 <"$d/port")
        export CANOPY_TEST_GRAPH_URL="https://127.0.0.1:$CANOPY_TEST_GRAPH_PORT" CANOPY_TEST_GRAPH_PORT
        export CANOPY_TEST_GRAPH_PID
        CANOPY_TEST_GRAPH_PID=$(_h_pid emulator)
}

_h_uuid() {
        if [ -r /proc/sys/kernel/random/uuid ]; then
                cat /proc/sys/kernel/random/uuid
        else
                local h
                h=$(_h_secret 16)
                printf '%s-%s-4%s-a%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" "${h:17:3}" "${h:20:12}"
        fi
}

# harness_emulator [EXTRA ARGS...]: canopy-graph-emulator with TLS from the
# test CA and one client app. Exports CANOPY_TEST_GRAPH_{URL,PORT,TENANT,
# CLIENT_ID,SECRET_FILE,CA,PID}. Roles: $CANOPY_TEST_GRAPH_ROLES or
# User.ReadWrite.All,Group.ReadWrite.All,Directory.ReadWrite.All.
harness_emulator() {
        local d="$CANOPY_TEST_TMPDIR/emulator"
        if [ ! -x "$CANOPY_TEST_BIN/canopy-graph-emulator" ]; then
                _h_err "SKIP: $CANOPY_TEST_BIN/canopy-graph-emulator does not exist (not built yet?)"
                return 77
        fi
        _h_need openssl || return
        HARNESS_EMULATOR_ARGS=("$@")
        HARNESS_GRAPH_ROLES=${CANOPY_TEST_GRAPH_ROLES:-User.ReadWrite.All,Group.ReadWrite.All,Directory.ReadWrite.All}
        mkdir -p "$d"
        _h_cert localhost "IP:127.0.0.1,DNS:localhost" || return 1
        export CANOPY_TEST_GRAPH_TENANT CANOPY_TEST_GRAPH_CLIENT_ID
        export CANOPY_TEST_GRAPH_SECRET_FILE="$d/client.secret"
        export CANOPY_TEST_GRAPH_CA="$CANOPY_TEST_TMPDIR/tls/ca.pem"
        CANOPY_TEST_GRAPH_TENANT=$(_h_uuid)
        CANOPY_TEST_GRAPH_CLIENT_ID=$(_h_uuid)
        _h_write_secret "$CANOPY_TEST_GRAPH_SECRET_FILE" "$(_h_secret 24)"
        _h_emulator_start 127.0.0.1:0
}

harness_stop_emulator() { _h_stop emulator "${1:-TERM}"; }

# harness_restart_emulator: same port; its state is whatever the emulator
# keeps across restarts (nothing, unless EXTRA ARGS say otherwise).
harness_restart_emulator() {
        _h_stop emulator
        _h_emulator_start "127.0.0.1:$CANOPY_TEST_GRAPH_PORT"
}
