#!/usr/bin/env bash
# Producer benchmark (run under tests/harness/run-with --slapd bench=FILE --redis --kafka):
#  1. full scan of every user by canopy-producer-ldap (paged, to Kafka, with
#     checkpoints) against `ldapsearch -E pr=1000/noprompt` of the same data,
#     same filter and attributes, in the same run: prints both and the ratio;
#  2. persist mode: events per second while one ldapmodify session changes M
#     users (bounded by slapd's write rate, which is printed too).
set -u
N=${1:-100000}
M=${2:-2000}
T=$CANOPY_TEST_TMPDIR
L=CANOPY_TEST_LDAP_BENCH
URI=${L}_URI; BASE=${L}_BASE; ADMIN=${L}_BINDDN; APW=${L}_PWFILE; CA=${L}_CA
URI=${!URI} BASE=${!BASE} ADMIN=${!ADMIN} APW=${!APW} CA=${!CA}
now() { date +%s.%N; }
ATTRS="cn sn givenName mail displayName title uid objectClass entryUUID entryCSN modifyTimestamp"

t0=$(now)
LDAPTLS_CACERT=$CA ldapsearch -x -ZZ -H "$URI" -D "$ADMIN" -y "$APW" -b "ou=People,$BASE" -E pr=1000/noprompt \
        "(objectClass=inetOrgPerson)" $ATTRS >"$T/ldapsearch.out" || { echo "ldapsearch failed"; exit 1; }
t1=$(now)
got=$(grep -c '^dn: ' "$T/ldapsearch.out")

cat >"$T/bench.yaml" <<YAML
connector: {id: bench}
mode: full
ldap:
  uris: ["$URI"]
  bind_dn: "$ADMIN"
  password_file: "$APW"
  ca_file: "$CA"
  base_dns: ["ou=People,$BASE"]
  attributes: [cn, sn, givenName, mail, displayName, title, uid]
  page_size: 1000
kafka: {brokers: "$CANOPY_TEST_KAFKA_BOOTSTRAP"}
redis: {host: "$CANOPY_TEST_REDIS_HOST", port: $CANOPY_TEST_REDIS_PORT}
checkpoint: {every: 5000}
YAML
t2=$(now)
"$CANOPY_TEST_BIN/canopy-producer-ldap" -c "$T/bench.yaml" >"$T/full.log" 2>&1 || { tail "$T/full.log"; exit 1; }
t3=$(now)
seen=$(grep -o '"full pass [^"]*done: [0-9]* objects' "$T/full.log" | grep -o '[0-9]* objects' | cut -d' ' -f1)
# the scan alone, from the producer's own log (without process start-up and shutdown)
scan=$(python3 - "$T/full.log" <<'PY'
import json, sys, datetime
ts = {}
for line in open(sys.argv[1]):
    try: j = json.loads(line)
    except ValueError: continue
    m = j.get("msg", "")
    if m.startswith("full pass") and ("started" in m or "done" in m):
        ts["done" if "done" in m else "start"] = datetime.datetime.fromisoformat(j["ts"].replace("Z", "+00:00"))
print(f'{(ts["done"] - ts["start"]).total_seconds():.2f}' if len(ts) == 2 else "0")
PY
)
python3 - "$N" "$got" "$seen" "$t0" "$t1" "$t2" "$t3" "$scan" <<'PY'
import sys
n, got, seen = (int(x) for x in sys.argv[1:4])
t0, t1, t2, t3, scan = (float(x) for x in sys.argv[4:9])
ls, pr = t1 - t0, t3 - t2
print(f"full scan of {n} users: ldapsearch -E pr=1000 {ls:.2f} s ({got/ls:,.0f} entries/s, {got} entries)")
print(f"full scan of {n} users: canopy-producer-ldap {pr:.2f} s ({seen/pr:,.0f} events/s to Kafka, {seen} objects, "
      f"delivery confirmed and checkpointed)")
print(f"  of which the scan itself (log: full pass started -> done, before the final flush and exit): {scan:.2f} s "
      f"({seen/scan if scan else 0:,.0f} events/s)")
print(f"ratio producer/ldapsearch: {pr/ls:.2f}x (whole process), {scan/ls:.2f}x (scan)")
if seen != n or got != n:
    sys.exit(f"count mismatch: expected {n}, ldapsearch {got}, producer {seen}")
PY
[ $? = 0 ] || exit 1

# persist mode
sed -i 's/^mode: full/mode: syncrepl/' "$T/bench.yaml"
"$CANOPY_TEST_BIN/canopy-producer-ldap" -c "$T/bench.yaml" --set log.level=debug >"$T/persist.log" 2>&1 &
P=$!
for i in $(seq 1 600); do grep -q "refresh done, persisting" "$T/persist.log" && break; sleep 0.2; done
base_ev=$(curl -s 2>/dev/null; true)
{ for i in $(seq 0 $((M - 1))); do printf 'dn: uid=u%07d,ou=People,%s\nchangetype: modify\nreplace: title\ntitle: Bench %d\n\n' $i "$BASE" $i; done; } >"$T/mods.ldif"
c0=$(redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" GET 'canopy:{conn:bench}:pos:cookie')
t4=$(now)
ldapmodify -x -H "$URI" -D "$ADMIN" -y "$APW" -f "$T/mods.ldif" >/dev/null || { echo "ldapmodify failed"; kill $P; exit 1; }
t5=$(now)
# the producer has published every change when the checkpointed cookie reaches slapd's contextCSN
csn=$(ldapsearch -x -LLL -H "$URI" -D "$ADMIN" -y "$APW" -b "$BASE" -s base contextCSN | awk '/^contextCSN:/ {print $2}')
for i in $(seq 1 3000); do
        c=$(redis-cli -h "$CANOPY_TEST_REDIS_HOST" -p "$CANOPY_TEST_REDIS_PORT" GET 'canopy:{conn:bench}:pos:cookie')
        case $c in *"$csn"*) break ;; esac
        sleep 0.05
done
t6=$(now)
kill $P; wait $P 2>/dev/null
python3 - "$M" "$t4" "$t5" "$t6" <<'PY'
import sys
m = int(sys.argv[1]); t4, t5, t6 = (float(x) for x in sys.argv[2:5])
print(f"persist mode: {m} modifications written by slapd in {t5-t4:.2f} s ({m/(t5-t4):,.0f}/s); "
      f"all published and checkpointed after {t6-t4:.2f} s ({m/(t6-t4):,.0f} events/s end to end)")
PY
