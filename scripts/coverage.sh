#!/usr/bin/env bash
# Line and branch coverage of the whole test suite, per directory: proto/,
# the daemon core (daemon/ but mil/, cpu/, ane/), daemon/mil, daemon/cpu, client/.  Nothing is
# excluded.  Builds build-coverage/ (-Db_coverage=true, the test hooks on),
# runs every meson test, and prints a table (docs/reliability.md keeps it).
# Daemons write their counters when they exit: the tests stop them with
# SIGTERM (tests/daemon_harness.c); only a test that crashes a daemon on
# purpose (SIGKILL) loses that daemon's counters.
# Usage: scripts/coverage.sh   (COVERAGE_BUILD=dir to pick the build)
. "$(dirname "$0")/common.sh"
install_deps
if ! command -v gcovr >/dev/null; then
	say "installing gcovr"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get install -y -qq --no-install-recommends gcovr >/dev/null
fi
dir=${COVERAGE_BUILD:-$ROOT/build-coverage}
build "$dir" -Db_coverage=true -Dtest_hooks=true -Dbuildtype=debug
find "$dir" -name '*.gcda' -delete
say "testing $dir"
meson test -C "$dir" --no-rebuild --num-processes 2 >/dev/null 2>&1 || say "some tests failed (see $dir/meson-logs/testlog.txt); the figures below are still what ran"

printf '| directory | lines | line coverage | branches | branch coverage |\n|---|---|---|---|---|\n'
row() {   # label, gcovr filter (a regex on the path)
	local out=$dir/coverage-$(tr -c 'a-z\n' _ <<<"$1").json
	gcovr -r "$ROOT" "$dir" --filter "$2" --json-summary-pretty -o "$out" >/dev/null 2>&1
	python3 - "$1" "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {d['line_covered']} / {d['line_total']} | {d['line_percent']:.1f} % "
      f"| {d['branch_covered']} / {d['branch_total']} | {d['branch_percent']:.1f} % |")
PY
}
row proto/ "$ROOT/proto/"
row 'daemon core (daemon/ but mil, cpu, ane)' "$ROOT/daemon/([^/]+|(server|sched|run|state|backend)/[^/]+)$"
row daemon/mil "$ROOT/daemon/mil/"
row daemon/cpu "$ROOT/daemon/cpu/"
row client/ "$ROOT/client/"
