#!/usr/bin/env bash
# canopy-guard end to end: admin API roles, threshold -> quarantine ->
# e-mail and webhook once each -> approve / reject, run history as CSV,
# audit trail, no secret in the log. Runs under run-with --redis --kafka.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
tool=$1 sink=$2
bin=$CANOPY_TEST_BIN
t=$CANOPY_TEST_TMPDIR
fail() { echo "FAIL: $*" >&2; echo "--- guard log:" >&2; tail -40 "$t/guard.log" >&2 || true; exit 1; }

viewer=viewer-token-0123456789abcdef
operator=operator-token-0123456789abcdef
admin=admin-token-0123456789abcdef
smtp_secret=smtp-password-s3cr3t-value
printf '# token role name\n%s viewer val\n%s operator olga\n%s admin adam\n' "$viewer" "$operator" "$admin" > "$t/tokens"
printf '%s' "$smtp_secret" > "$t/smtp.pw"

mkdir -p "$t/sink"
"$sink" --dir "$t/sink" --smtp-port-file "$t/smtp.port" --http-port-file "$t/http.port" &
sink_pid=$!
guard_pid=
cleanup() {
        [ -n "$guard_pid" ] && kill "$guard_pid" 2>/dev/null && wait "$guard_pid" 2>/dev/null || true
        kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do [ -s "$t/http.port" ] && [ -s "$t/smtp.port" ] && break; sleep 0.1; done
smtp_port=$(cat "$t/smtp.port") http_port=$(cat "$t/http.port")

cat > "$t/guard.yaml" <<YAML
guard:
  threshold:
    count: 5
  window: 1h
admin:
  listen: "127.0.0.1:0"
  tokens_file: $t/tokens
notify:
  email:
    smtp_url: "smtp://127.0.0.1:$smtp_port"
    from: canopy@canopy.test
    to: [ops@canopy.test, idm@canopy.test]
    username: canopy
    password_file: $t/smtp.pw
  webhook:
    url: "http://127.0.0.1:$http_port/hook"
history:
  idle: 1s
kafka:
  brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"
redis:
  host: $CANOPY_TEST_REDIS_HOST
  port: $CANOPY_TEST_REDIS_PORT
YAML

# A bad config stops start-up with file:line:column.
printf 'guard:\n  threshold:\n    cuont: 5\n' > "$t/bad.yaml"
if "$bin/canopy-guard" -c "$t/bad.yaml" 2> "$t/bad.err"; then fail "bad config accepted"; fi
grep -q "bad.yaml:3:5" "$t/bad.err" || fail "bad config error lacks file:line:column: $(cat "$t/bad.err")"

"$bin/canopy-guard" -c "$t/guard.yaml" > "$t/guard.out" 2> "$t/guard.log" &
guard_pid=$!
for _ in $(seq 100); do grep -q '^admin-port ' "$t/guard.out" 2>/dev/null && break; sleep 0.1; done
port=$(awk '/^admin-port /{print $2}' "$t/guard.out")
[ -n "$port" ] || fail "guard did not start"
api=http://127.0.0.1:$port

code() { curl -s -o "$t/body" -w '%{http_code}' "$@"; }

# Roles.
[ "$(code "$api/v1/status")" = 401 ] || fail "no token must get 401"
[ "$(code -H "Authorization: Bearer wrong-token-0123456789" "$api/v1/status")" = 401 ] || fail "bad token must get 401"
[ "$(code -H "Authorization: Bearer $viewer" "$api/v1/status")" = 200 ] || fail "viewer status"
grep -q '"quarantined":false' "$t/body" || fail "not quarantined at start: $(cat "$t/body")"
[ "$(code -X POST -H "Authorization: Bearer $viewer" "$api/v1/quarantine/approve")" = 403 ] || fail "viewer approve must get 403"
[ "$(code -H "Authorization: Bearer $operator" "$api/v1/audit")" = 403 ] || fail "operator audit must get 403"
[ "$(code -X POST -H "Authorization: Bearer $operator" -d '{"enabled":false}' "$api/v1/policy")" = 403 ] || fail "operator policy must get 403"

# Ten deletes against a threshold of five: five go, five are held.
out=$("$tool" reserve 10 mvA)
[ "$out" = "allow 5 hold 5" ] || fail "reserve: $out"
code -H "Authorization: Bearer $viewer" "$api/v1/status" > /dev/null
grep -q '"quarantined":true' "$t/body" || fail "not quarantined: $(cat "$t/body")"
grep -q '"reason":"deletion-threshold"' "$t/body" || fail "reason: $(cat "$t/body")"
grep -q '"held":5' "$t/body" || fail "held count: $(cat "$t/body")"

# One e-mail and one webhook, not one per tick.
for _ in $(seq 100); do [ -e "$t/sink/mail.1" ] && [ -e "$t/sink/hook.1" ] && break; sleep 0.1; done
[ -e "$t/sink/mail.1" ] || fail "no e-mail"
[ -e "$t/sink/hook.1" ] || fail "no webhook"
sleep 2
[ ! -e "$t/sink/mail.2" ] || fail "second e-mail for the same quarantine"
[ ! -e "$t/sink/hook.2" ] || fail "second webhook for the same quarantine"
grep -q "Subject: \[Canopy\] pipeline quarantined: deletion-threshold" "$t/sink/mail.1" || fail "mail subject"
grep -q "mvA00005" "$t/sink/mail.1" || fail "mail lacks the held sample"
grep -q '"reason":"deletion-threshold"' "$t/sink/hook.1" || fail "webhook body: $(cat "$t/sink/hook.1")"
grep -q '"held":5' "$t/sink/hook.1" || fail "webhook held"

# canopyctl shows it; a viewer may not approve; an operator approves: the
# five held deletes are released exactly once.
printf '%s\n' "$viewer" > "$t/viewer.tok"; printf '%s\n' "$operator" > "$t/operator.tok"
ctl=$bin/canopyctl
"$ctl" guard --url "$api" --token-file "$t/viewer.tok" status > "$t/ctl.out" || fail "canopyctl guard status"
grep -q "state: *QUARANTINED" "$t/ctl.out" || fail "canopyctl status: $(cat "$t/ctl.out")"
grep -q "held deletes: *5" "$t/ctl.out" || fail "canopyctl status held: $(cat "$t/ctl.out")"
"$ctl" guard --url "$api" --token-file "$t/viewer.tok" held > "$t/ctl.out" || fail "canopyctl guard held"
[ "$(grep -c '^mvA' "$t/ctl.out")" = 5 ] || fail "canopyctl held: $(cat "$t/ctl.out")"
set +e; "$ctl" guard --url "$api" --token-file "$t/viewer.tok" approve > "$t/ctl.out" 2>&1; rc=$?; set -e
[ "$rc" = 3 ] || fail "viewer approve through canopyctl: exit $rc: $(cat "$t/ctl.out")"
"$ctl" guard --url "$api" --token-file "$t/operator.tok" approve > "$t/ctl.out" || fail "canopyctl approve"
grep -q "approved: 5 held deletes released" "$t/ctl.out" || fail "canopyctl approve: $(cat "$t/ctl.out")"
out=$("$tool" reserve 10 mvA)
[ "$out" = "allow 10 hold 0" ] || fail "after approve: $out"

# A second quarantine, rejected: nothing of it is sent while the pipeline
# waits for a full scan of north; the end of one that began after the
# rejection lifts it, and the deletes are decided again in a new window.
out=$("$tool" reserve 20 mvB)
[ "$out" = "allow 0 hold 20" ] || [ "$out" = "allow 5 hold 15" ] || fail "second batch: $out"
held=$(echo "$out" | awk '{print $4}')
for _ in $(seq 100); do [ -e "$t/sink/mail.2" ] && break; sleep 0.1; done
[ -e "$t/sink/mail.2" ] || fail "no e-mail for the second quarantine"
[ "$(code -X POST -H "Authorization: Bearer $operator" "$api/v1/quarantine/reject?full_scan=north")" = 200 ] || fail "reject"
jq -e ".not_sent == $held and .awaiting_full_scan == \"north\"" "$t/body" > /dev/null || fail "reject body: $(cat "$t/body")"
out=$("$tool" reserve 20 mvB)
[ "$out" = "allow 0 hold 20" ] || fail "after reject, before the scan: $out"
"$ctl" guard --url "$api" --token-file "$t/viewer.tok" status > "$t/ctl.out" || fail "canopyctl status after reject"
grep -q "state: *QUARANTINED" "$t/ctl.out" || fail "not quarantined after reject: $(cat "$t/ctl.out")"
grep -q "rejected: *$held deletes at .*waiting for a full scan of north" "$t/ctl.out" || fail "status after reject: $(cat "$t/ctl.out")"
"$tool" run west user 1 0 0 0 0 west-scan
[ -z "$("$tool" endscan west west-scan)" ] || fail "a scan of west lifted a quarantine waiting for north"
"$tool" run north user 3 0 0 0 0 north-scan
[ "$("$tool" endscan north north-scan)" = lifted ] || fail "the end of north's full scan did not lift the quarantine"
code -H "Authorization: Bearer $viewer" "$api/v1/status" > /dev/null
jq -e '.quarantined == false and .held == 0 and .rejected == 0 and .window_deletes == 0' "$t/body" > /dev/null || fail "after the scan: $(cat "$t/body")"
out=$("$tool" reserve 20 mvB)
[ "$out" = "allow 5 hold 15" ] || fail "decided again after the scan: $out"
[ "$(code -X POST -H "Authorization: Bearer $operator" "$api/v1/quarantine/approve")" = 200 ] || fail "approve after the scan"

# Run history as CSV.
"$tool" run north user 12 7 1 3 1
"$tool" run south group 4 2 0 0 0 scan-9
"$tool" endscan south scan-9 || fail "end of scan did not close the full window"
for _ in $(seq 50); do
        code -H "Authorization: Bearer $viewer" "$api/v1/history?format=csv" > /dev/null
        grep -q '^north,user,delta' "$t/body" && break
        sleep 0.2
done
head -1 "$t/body" | grep -q '^connector,object_type,run_type,start,end,total,changed,deleted,filtered,errors,status' || fail "csv header: $(head -1 "$t/body")"
grep -q '^north,user,delta,.*,12,7,1,3,1,completed-errors' "$t/body" || fail "csv north: $(cat "$t/body")"
code -H "Authorization: Bearer $viewer" "$api/v1/history?format=csv&connector=north" > /dev/null
! grep -q '^south' "$t/body" || fail "connector filter"
"$ctl" history --url "$api" --token-file "$t/viewer.tok" --csv --connector south > "$t/ctl.out" || fail "canopyctl history"
grep -q '^south,group,full,.*,4,2,0,0,0,success' "$t/ctl.out" || fail "canopyctl history csv: $(cat "$t/ctl.out")"
[ "$(grep -c . "$t/ctl.out")" = 2 ] || fail "canopyctl history filter: $(cat "$t/ctl.out")"
# Every closed window is also published on the exports topic as a
# RunRecord, keyed by connector, once Kafka confirmed it.
"$tool" runs "$CANOPY_TEST_KAFKA_BOOTSTRAP" 4 60 > "$t/runs.csv" || fail "RunRecords on exports: $(cat "$t/runs.csv")"
grep -q '^north,user,delta,,12,7,1,3,1,completed-errors,key=north$' "$t/runs.csv" || fail "RunRecord north: $(cat "$t/runs.csv")"
grep -q '^south,group,full,scan-9,4,2,0,0,0,success,key=south$' "$t/runs.csv" || fail "RunRecord south: $(cat "$t/runs.csv")"
grep -q '^north,user,full,north-scan,3,0,0,0,0,stopped-quarantine,key=north$' "$t/runs.csv" || fail "RunRecord north scan: $(cat "$t/runs.csv")"
[ "$(grep -c . "$t/runs.csv")" = 4 ] || fail "RunRecords: $(cat "$t/runs.csv")"

# Objects in error: listed with their descriptions, the count of all, and
# ?limit= cuts the list (truncated says so). A name with a quote and
# Unicode comes back intact.
[ "$(code -H "Authorization: Bearer $viewer" "$api/v1/errors")" = 200 ] || fail "errors (empty)"
jq -e '.count == 0 and .errors == [] and .truncated == false' "$t/body" >/dev/null || fail "errors empty: $(cat "$t/body")"
for i in 1 2 3; do
        "$tool" error "mv-err-$i" "{\"type\":\"user\",\"code\":\"GRAPH_CONFLICT\",\"property\":\"userPrincipalName\",\"value\":\"zoë.o'brien$i@corp.test\"}" ||
                fail "guard_tool error"
done
[ "$(code -H "Authorization: Bearer $viewer" "$api/v1/errors")" = 200 ] || fail "errors"
jq -e '.count == 3 and (.errors | length) == 3 and .truncated == false
       and ([.errors[].mv_id] | sort) == ["mv-err-1", "mv-err-2", "mv-err-3"]
       and ([.errors[] | select(.mv_id == "mv-err-2")][0] | .code == "GRAPH_CONFLICT" and .value == "zoë.o'"'"'brien2@corp.test")' \
        "$t/body" >/dev/null || fail "errors list: $(cat "$t/body")"
[ "$(code -H "Authorization: Bearer $viewer" "$api/v1/errors?limit=2")" = 200 ] || fail "errors?limit=2"
jq -e '.count == 3 and (.errors | length) == 2 and .truncated == true' "$t/body" >/dev/null || fail "errors limit: $(cat "$t/body")"
[ "$(code "$api/v1/errors")" = 401 ] || fail "errors without a token"

# Audit: who approved and rejected; the policy switch by an admin.
[ "$(code -X POST -H "Authorization: Bearer $admin" -d '{"enabled":false}' "$api/v1/policy")" = 200 ] || fail "admin policy"
grep -q "deletion guard DISABLED by adam" "$t/guard.log" || fail "disabling the guard must be logged"
[ "$(code -H "Authorization: Bearer $admin" "$api/v1/audit")" = 200 ] || fail "audit"
grep -q '"who":"olga"' "$t/body" || fail "audit lacks the operator"
grep -q '"what":"quarantine.reject"' "$t/body" || fail "audit lacks the rejection"
grep -q '"who":"adam"' "$t/body" || fail "audit lacks the admin"

# No secret in any log line.
for s in "$viewer" "$operator" "$admin" "$smtp_secret"; do
        ! grep -q -- "$s" "$t/guard.log" || fail "secret in the guard log"
done
echo "PASS: guard service"
