#!/usr/bin/env bash
# Line and branch coverage of the whole test suite, per directory: proto/,
# the daemon core (daemon/ but its mil/, cpu/ and ane/ folders: main.c,
# options.c, log.c, server/, sched/, run/, state/, backend/ and any folder
# added later), daemon/mil, daemon/cpu, daemon/ane, client/, and all of them
# together.  Nothing is excluded: every source file of proto/, daemon/ and
# client/ that the build compiles falls in exactly one row (checked).
# Builds build-coverage/ (-Db_coverage=true, the test hooks on), runs every
# meson test, and prints a Markdown table (docs/reliability.md keeps it),
# the commit measured and the criterion tests' tally.
# Daemons write their counters when they exit: the tests stop them with
# SIGTERM (tests/daemon_harness.c); only the daemons a test crashes on
# purpose (SIGKILL, h_daemon_crash) and the device workers the watchdog
# tests kill lose theirs.
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

say "reading the counters"
gcovr -r "$ROOT" "$dir" --filter "$ROOT/(proto|daemon|client)/" \
	--json-summary-pretty -o "$dir/coverage.json" >/dev/null 2>&1
python3 - "$dir/coverage.json" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
rows = [   # label, the files it holds (a regex on the path from the root)
    ("proto/", r"proto/"),
    ("daemon core (daemon/ but mil, cpu, ane)", r"daemon/(?!(mil|cpu|ane)/)"),
    ("daemon/mil", r"daemon/mil/"),
    ("daemon/cpu", r"daemon/cpu/"),
    ("daemon/ane", r"daemon/ane/"),
    ("client/", r"client/"),
]
sums = {label: [0, 0, 0, 0] for label, _ in rows}
for f in d["files"]:
    hit = [label for label, rx in rows if re.match(rx, f["filename"])]
    if len(hit) != 1:
        sys.exit(f"coverage.sh: {f['filename']} is in {len(hit)} rows, not one")
    s = sums[hit[0]]
    for i, k in enumerate(("line_covered", "line_total", "branch_covered", "branch_total")):
        s[i] += f[k]
def pct(a, b):
    return f"{100.0 * a / b:.1f} %" if b else "-"
print("| directory | lines | line coverage | branches | branch coverage |")
print("|---|---|---|---|---|")
for label, s in list(sums.items()) + [("all of them", [sum(v[i] for v in sums.values()) for i in range(4)])]:
    print(f"| {label} | {s[0]:,} / {s[1]:,} | {pct(s[0], s[1])} | {s[2]:,} / {s[3]:,} | {pct(s[2], s[3])} |")
PY
echo
echo "commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)'); $(python3 "$ROOT/scripts/tally.py" "$dir/meson-logs/testlog.json")"
echo "per file: gcovr -r . $(realpath --relative-to="$ROOT" "$dir") --filter 'daemon/'"
