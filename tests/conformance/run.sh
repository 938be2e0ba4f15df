#!/bin/bash
# Runs conformance.mjs under tests/harness/run-with --emulator. Installs the
# npm packages (package-lock.json) into node_modules when missing; exits 77
# (skip) when node/npm are absent or the registry cannot be reached.
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
exec node conformance.mjs
