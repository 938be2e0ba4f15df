#!/bin/bash
# scripts/bootstrap's control flow: what it reports, what it asks apt for, its
# exit status, and the policy-rc.d it may create. dpkg-query and apt-get are
# stand-ins on PATH (this test is about the script, not about apt); they
# record their calls in $T/calls.
set -u
src=$1
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

mkdir -p "$T/bin"
# dpkg-query -W -f=... PKG: "installed" unless PKG is listed in $T/missing.
cat > "$T/bin/dpkg-query" <<'S'
#!/bin/sh
for p; do :; done
if grep -qx "$p" "$BS_T/missing" 2>/dev/null; then exit 1; fi
printf 'install ok installed'
S
# apt-get: records its arguments; "install" fails while $T/apt-fail exists
# (removed by "update", as a stale package index would be).
cat > "$T/bin/apt-get" <<'S'
#!/bin/sh
echo "apt-get $*" >> "$BS_T/calls"
case "$1" in
update) rm -f "$BS_T/apt-fail"; exit 0 ;;
install) [ -e "$BS_T/apt-fail-always" ] && exit 100
	[ -e "$BS_T/apt-fail" ] && exit 100
	[ -e "$BS_T/policy" ] && echo "policy present" >> "$BS_T/calls"
	exit 0 ;;
esac
S
# id -u: 0, so that no sudo is needed.
printf '#!/bin/sh\necho 0\n' > "$T/bin/id"
printf '#!/bin/sh\nexit 0\n' > "$T/bin/systemctl"
chmod +x "$T/bin/"*

run() {
	BS_T=$T BOOTSTRAP_POLICY_RC=$T/policy PATH="$T/bin:$PATH" \
		sh "$src/scripts/bootstrap" "$@" > "$T/out" 2>&1
}

# 1. Nothing missing: exit 0, apt never called.
: > "$T/missing"; rm -f "$T/calls"
run; rc=$?
[ $rc = 0 ] || fail "nothing missing: exit $rc"
[ ! -e "$T/calls" ] || fail "nothing missing: apt-get was called"
run --check; rc=$?
[ $rc = 0 ] && grep -q "all packages present" "$T/out" || fail "--check, nothing missing: exit $rc: $(cat "$T/out")"

# 2. --check lists what is missing, exits 1 and installs nothing.
printf 'kcat\nslapd\n' > "$T/missing"; rm -f "$T/calls"
run --check; rc=$?
[ $rc = 1 ] || fail "--check, missing: exit $rc"
grep -q "missing: kcat slapd" "$T/out" || fail "--check does not name the missing packages: $(cat "$T/out")"
[ ! -e "$T/calls" ] || fail "--check called apt-get"

# 3. Missing packages, no policy-rc.d: only the missing ones are installed,
#    policy-rc.d is in place during the install and removed after; exit 0.
rm -f "$T/calls" "$T/policy"
run; rc=$?
[ $rc = 0 ] || fail "install: exit $rc: $(cat "$T/out")"
grep -qx "apt-get install -y --no-install-recommends kcat slapd" "$T/calls" ||
	fail "install asked for: $(cat "$T/calls")"
grep -q "policy present" "$T/calls" || fail "policy-rc.d was not in place during the install"
[ ! -e "$T/policy" ] || fail "policy-rc.d left behind"

# 4. The image ships its own policy-rc.d (Debian container images do): it is
#    kept, and the script still exits 0 (an EXIT trap once made it exit 1).
rm -f "$T/calls"; printf '#!/bin/sh\nexit 101\n' > "$T/policy"
run; rc=$?
[ $rc = 0 ] || fail "install with an existing policy-rc.d: exit $rc: $(cat "$T/out")"
[ -e "$T/policy" ] || fail "the image's own policy-rc.d was removed"
rm -f "$T/policy"

# 5. A stale package index: install fails, update, install again; exit 0.
rm -f "$T/calls"; : > "$T/apt-fail"
run; rc=$?
[ $rc = 0 ] || fail "stale index: exit $rc"
[ "$(grep -c '^apt-get install' "$T/calls")" = 2 ] && grep -q '^apt-get update' "$T/calls" ||
	fail "stale index: calls were $(cat "$T/calls")"

# 6. apt cannot install: the script fails, and removes its policy-rc.d.
rm -f "$T/calls"; : > "$T/apt-fail-always"
run; rc=$?
[ $rc != 0 ] || fail "apt failure: exit 0"
[ ! -e "$T/policy" ] || fail "apt failure: policy-rc.d left behind"
rm -f "$T/apt-fail-always"

[ $fails = 0 ] && echo "bootstrap: all checks passed"
exit $((fails > 0))
