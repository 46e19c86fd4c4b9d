#!/usr/bin/env bash
# Run the whole meson test suite N times in a row with 8 test processes (on
# this machine's cores, whatever their number: the load is the point) and
# print one table row per run: its wall time, the criterion tests passed and
# failed (scripts/tally.py) and the failing suites/tests by name.  Exit
# status 1 if any run failed.  docs/reliability.md keeps the last record.
# Usage: scripts/stress-tests.sh [N (default 20)]   (BUILD=dir to pick the build)
. "$(dirname "$0")/common.sh"
usage() { echo "usage: scripts/stress-tests.sh [N]   (N runs, default 20; BUILD=dir picks the build)"; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac
runs=${1:-20}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }
install_deps
build "$BUILD" -Dtest_hooks=true

printf '| run | seconds | passed | failed | failing |\n|---|---|---|---|---|\n'
bad=0
for i in $(seq 1 "$runs"); do
	t0=$(date +%s)
	ok=1
	meson test -C "$BUILD" --no-rebuild --num-processes 8 >/dev/null 2>&1 || ok=0
	t1=$(date +%s)
	log=$BUILD/meson-logs/testlog.json
	tally=$(python3 "$ROOT/scripts/tally.py" "$log")
	read -r passed failed < <(sed -E 's/tests: ([0-9]+) passed, ([0-9]+) failed/\1 \2/' <<<"$tally")
	failing=$(python3 - "$log" <<'PY'
import json, re, sys
names = []
for line in open(sys.argv[1]):
    t = json.loads(line)
    if t.get("result") in ("OK", "SKIP", "EXPECTEDFAIL"):
        continue
    bad = [m.group(1) for m in re.finditer(r"^not ok\b(?: \d+)?[ -]*(\S+)", t.get("stdout") or "", re.M)]
    names.append(", ".join(bad) if bad else f"{t['name']} ({t.get('result')})")
print("; ".join(names))
PY
)
	[ "$ok" = 1 ] && [ "$failed" = 0 ] || bad=$((bad + 1))
	printf '| %d | %d | %s | %s | %s |\n' "$i" $((t1 - t0)) "$passed" "$failed" "${failing:--}"
	if [ "$ok" = 0 ]; then   # keep the log of a failed run
		cp "$BUILD/meson-logs/testlog.txt" "$BUILD/meson-logs/stress-run-$i.txt"
	fi
done
say "$((runs - bad)) of $runs runs passed"
[ "$bad" = 0 ]
