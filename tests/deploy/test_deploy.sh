#!/usr/bin/env bash
# The example configs in deploy/config load with the real configuration
# tables and the rules loader, so they cannot drift from the code; the
# compose and Kubernetes files only name commands and config files that
# exist. No network.
set -euo pipefail
bin=$1 src=$2
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# Secrets are files under /run/secrets in production: point them at dummies.
mkdir -p "$t/secrets"
for s in ldap-password redis-password kafka-password smtp-password; do printf 'dummy-%s' "$s" > "$t/secrets/$s"; done
printf 'admin-token-0123456789abcdef admin ops\n' > "$t/secrets/admin-tokens"
for f in "$src"/deploy/config/*.yaml; do
        sed "s|/run/secrets/|$t/secrets/|g; s|/etc/canopy/rules.yaml|$src/deploy/config/rules.yaml|" "$f" > "$t/$(basename "$f")"
done

"$bin/canopy-worker" -c "$t/worker.yaml" --dump-config > "$t/out" 2>&1 || fail "worker.yaml: $(cat "$t/out")"
for p in producer-ad producer-openldap; do
        "$bin/canopy-producer-ldap" -c "$t/$p.yaml" --check-config > "$t/out" 2>&1 || fail "$p.yaml: $(cat "$t/out")"
done
"$bin/canopy-guard" -c "$t/guard.yaml" --dump-config > "$t/out" 2>&1 || fail "guard.yaml: $(cat "$t/out")"
# Dumps redact secrets.
! grep -q dummy- "$t/out" || fail "a secret value appears in --dump-config"
"$bin/canopyctl" rules check "$src/deploy/config/rules.yaml" > "$t/out" 2>&1 || fail "rules.yaml: $(cat "$t/out")"

# Every config file and binary the compose and Kubernetes files name exists.
for f in $(grep -oh '/etc/canopy/[a-z-]*\.yaml' "$src/deploy/compose/docker-compose.yml" "$src/deploy/k8s/canopy.yaml" | sort -u); do
        [ -f "$src/deploy/config/$(basename "$f")" ] || fail "$f is referenced but deploy/config has no $(basename "$f")"
done
for b in $(grep -oh '/usr/local/bin/canopy[a-z-]*' "$src/deploy/compose/docker-compose.yml" "$src/deploy/k8s/canopy.yaml" "$src/deploy/Dockerfile" | sort -u); do
        [ -x "$bin/$(basename "$b")" ] || fail "$b is referenced but not built"
done
echo "PASS: deploy configs"
