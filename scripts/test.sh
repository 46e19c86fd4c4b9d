#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite twice: a normal
# build, then an AddressSanitizer + UndefinedBehaviorSanitizer build.
. "$(dirname "$0")/common.sh"

install_deps
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0

run_suite() {
	local dir=$1; shift
	build "$dir" "$@"
	say "testing $dir"
	meson test -C "$dir" --verbose --num-processes 2 2>&1 | tee -a "$log" || status=1
}

run_suite "$BUILD"
run_suite "$ROOT/build-asan" -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug

# One closing line over all criterion suites of both builds.
awk -F'|' '/Synthesis: Tested:/ {
	for (i = 1; i <= NF; i++) {
		split($i, kv, ":"); k = kv[1]; v = kv[2]
		if ($i ~ /Passing:/) p += v; if ($i ~ /Failing:/) f += v; if ($i ~ /Crashing:/) f += v
	}
} END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
