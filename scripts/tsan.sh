#!/usr/bin/env bash
# ThreadSanitizer over the daemon's threads: build the tree with
# -fsanitize=thread (clang, in build-tsan/), then run the criterion suites that
# drive the daemon's lanes, workers and scheduler (lanes, chain, fair) against
# that aneshared, and the load test (tests/load) with daemon and libaneshare
# both instrumented.  One table row per suite: its result, the races reported,
# the reports suppressed by tests/tsan.supp (each entry there says why).
# Criterion itself cannot run under TSan (its BoxFort arena: Criterion issue
# 274), so the suites' own binaries come from the plain build ($BUILD); what they
# start, the daemon, the CLI and the example client, comes from build-tsan/.
# Exit status 1 if a suite failed or a race was reported.
# Usage: scripts/tsan.sh [SUITE...]   (default: lanes chain fair load)
. "$(dirname "$0")/common.sh"
usage() { echo "usage: scripts/tsan.sh [SUITE...]   (default: lanes chain fair load; a SUITE is load or tests/test_SUITE.c)"; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac
for s in "$@"; do
	[ "$s" = load ] || [ -f "$ROOT/tests/test_$s.c" ] || { say "no suite '$s'"; usage >&2; exit 2; }
done
install_deps
TSAN_BUILD=${TSAN_BUILD:-$ROOT/build-tsan}
build "$BUILD" -Dtest_hooks=true
CC=clang build "$TSAN_BUILD" -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug -Dtest_hooks=true

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(lanes chain fair load)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
export TSAN_OPTIONS="log_path=$logs/tsan halt_on_error=0 exitcode=0 print_suppressions=1 history_size=4 suppressions=$ROOT/tests/tsan.supp"
export ANESHARE_TEST_SLOW=10   # the harness's waits x10 (daemon_harness.h, h_slow)
export ANESHARED=$TSAN_BUILD/daemon/aneshared ANESHARE_CLI=$TSAN_BUILD/client/aneshare
export MATMUL_CLIENT=$TSAN_BUILD/examples/matmul_client

printf '| suite | result | races reported | suppressed |\n|---|---|---|---|\n'
bad=0
for s in "${suites[@]}"; do
	rm -f "$logs"/tsan.* "$logs/out" "$logs/all"
	if [ "$s" = load ]; then
		"$TSAN_BUILD/tests/load/load_test" --clients 16 --seconds "${LOAD_SECONDS:-10}" >"$logs/out" 2>&1 && rc=0 || rc=$?
		result=$([ "$rc" = 0 ] && echo "passed" || echo "failed ($rc)")
	else
		"$BUILD/tests/test_$s" --jobs 2 >"$logs/out" 2>&1 && rc=0 || rc=$?
		result=$(sed -nE 's/.*Synthesis: Tested: ([0-9]+) \| Passing: ([0-9]+).*/\2 of \1 passed/p' "$logs/out")
		[ -n "$result" ] || result="no synthesis (exit $rc)"
	fi
	cat "$logs"/tsan.* >"$logs/all" 2>/dev/null || : >"$logs/all"   # one file per process that reported
	races=$(grep -c '^WARNING: ThreadSanitizer' "$logs/all" || true)
	# "ThreadSanitizer: Matched N suppressions (pid=...):" then "count type:name" lines
	supp=$(awk '/^ThreadSanitizer: Matched|Suppressions used:/ {on = 1; next}
		on && NF == 2 && $1 ~ /^[0-9]+$/ {n[$2] += $1; next} {on = 0}
		END {for (k in n) printf "%s%s x%d", (c++ ? ", " : ""), k, n[k]}' "$logs/all")
	[ "$rc" = 0 ] && [ "$races" = 0 ] || bad=1
	printf '| %s | %s | %s | %s |\n' "$s" "$result" "$races" "${supp:--}"
	if [ "$races" != 0 ]; then
		mkdir -p "$TSAN_BUILD/reports"
		cp "$logs/all" "$TSAN_BUILD/reports/$s.txt"
		say "$s: the reports are in $TSAN_BUILD/reports/$s.txt"
	fi
	if [ "$rc" != 0 ]; then
		mkdir -p "$TSAN_BUILD/reports"
		cp "$logs/out" "$TSAN_BUILD/reports/$s.out"
		say "$s: its output is in $TSAN_BUILD/reports/$s.out"
	fi
done
exit $bad
