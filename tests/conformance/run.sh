#!/bin/bash
# Runs conformance.mjs under tests/harness/run-with --emulator. Installs the
# npm packages (package-lock.json) into node_modules when missing; exits 77
# (skip) when node/npm are absent or the registry cannot be reached.
#
# For the certificate part it starts a second emulator (same test CA as the
# harness's) with an app that authenticates with a client assertion, and
# stops it by PID on exit.
set -u
cd "$(dirname "$0")" || exit 1
command -v node >/dev/null && command -v npm >/dev/null || { echo "SKIP: node/npm not installed"; exit 77; }
if [ ! -d node_modules/@microsoft/microsoft-graph-client ] || [ ! -d node_modules/@azure/msal-node ]; then
        if ! npm ci --no-audit --no-fund >npm.log 2>&1 && ! npm install --no-audit --no-fund >>npm.log 2>&1; then
                tail -20 npm.log
                echo "SKIP: npm could not install the Graph SDK and MSAL"
                exit 77
        fi
fi
export NODE_EXTRA_CA_CERTS=${CANOPY_TEST_GRAPH_CA:?run under tests/harness/run-with --emulator}

d=$CANOPY_TEST_TMPDIR/conformance
tls=$CANOPY_TEST_TMPDIR/tls
mkdir -p "$d"
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid"' EXIT
if [ -s "$tls/localhost.pem" ] && [ -x "$CANOPY_TEST_BIN/canopy-graph-emulator" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/app.key" -out "$d/app.pem" -days 2 \
                -subj /CN=conformance-app 2>/dev/null
        CONF_CERT_TENANT=$(cat /proc/sys/kernel/random/uuid)
        CONF_CERT_CLIENT=$(cat /proc/sys/kernel/random/uuid)
        export CONF_CERT_TENANT CONF_CERT_CLIENT CONF_CERT_PEM=$d/app.pem CONF_CERT_KEY=$d/app.key
        "$CANOPY_TEST_BIN/canopy-graph-emulator" --listen 127.0.0.1:0 --port-file "$d/port" \
                --tls-cert "$tls/localhost.pem" --tls-key "$tls/localhost.key" --domain canopy.test \
                --client-cert "$CONF_CERT_TENANT:$CONF_CERT_CLIENT:$d/app.pem:User.Read.All" 2>"$d/emulator.log" &
        pid=$!
        for _ in $(seq 100); do [ -s "$d/port" ] && break; sleep 0.1; done
        [ -s "$d/port" ] || { cat "$d/emulator.log"; echo "second emulator did not start"; exit 1; }
        CONF_CERT_URL=https://127.0.0.1:$(cat "$d/port")
        export CONF_CERT_URL
fi
node conformance.mjs
