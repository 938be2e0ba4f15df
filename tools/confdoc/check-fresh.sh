#!/bin/sh
# Usage: check-fresh.sh CONFDOC_BIN COMMITTED_DOC GENERATED_DOC
# Fails when the committed docs/CONFIG.md differs from what the tables give.
set -u
bin=$1 committed=$2 generated=$3
if ! "$bin" -o "$generated"; then
	echo "check-fresh: canopy-confdoc failed (a configuration table is invalid, see above)" >&2
	exit 1
fi
if [ ! -f "$committed" ]; then
	echo "check-fresh: $committed is missing: run \`make docs\` and commit docs/CONFIG.md" >&2
	exit 1
fi
if ! cmp -s "$committed" "$generated"; then
	diff -u "$committed" "$generated" | head -60 >&2
	echo "check-fresh: docs/CONFIG.md is stale (a configuration table changed): run \`make docs\` and commit docs/CONFIG.md" >&2
	exit 1
fi
echo "check-fresh: docs/CONFIG.md is up to date"
