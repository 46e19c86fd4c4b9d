#!/usr/bin/env bash
# A first run on a Mac (docs/ane.md, "A first run on a Mac"): build, run the
# test suite, start aneshared --backend ane next to aneshared --backend cpu,
# run examples/dynamic_matmul.mil and examples/transformer_block_verified.mil
# on both and compare, probe every op the CPU backend supports with one tiny
# program on the ANE, time both, and print a report to paste into an issue.
#
#   scripts/ane-smoke.sh [--dut-backend ane|cpu] [--build-dir DIR] [--no-build]
#                        [--no-tests] [--runs N] [--out FILE]
#
# --dut-backend cpu (the dry run, used by CI on Linux) runs the same steps with
# a CPU backend in a device worker in place of the ANE; every probe must then
# match, and the probe list must cover every op of the CPU backend.
# Exit status: 0 when the steps ran (on the ANE, ops that fail are facts for
# the report, not failures); 1 when the build, the tests, a daemon, a program
# comparison or (dry run) a probe failed; 2 usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUT=ane
BUILD_DIR=$ROOT/build
DO_BUILD=1
DO_TESTS=1
RUNS=50
OUT=

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
	case "$1" in
	--dut-backend) [ $# -ge 2 ] || usage; DUT=$2; shift 2 ;;
	--build-dir) [ $# -ge 2 ] || usage; BUILD_DIR=$2; shift 2 ;;
	--no-build) DO_BUILD=0; shift ;;
	--no-tests) DO_TESTS=0; shift ;;
	--runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
	--out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
	-h|--help) usage ;;
	*) usage ;;
	esac
done
case "$DUT" in ane|cpu) ;; *) usage ;; esac
case "$RUNS" in ''|*[!0-9]*) usage ;; esac

say() { printf '==> %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ane-smoke.XXXXXX")
PIDS=()
cleanup() {
	# ${a[@]+"${a[@]}"}: an empty array under set -u in macOS's bash 3.2
	for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
	for p in ${PIDS[@]+"${PIDS[@]}"}; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
REPORT=$WORK/report.md
status=0

# ---- build and test ----
if [ "$DO_BUILD" = 1 ]; then
	. "$ROOT/scripts/common.sh"
	BUILD=$BUILD_DIR
	install_deps
	build "$BUILD_DIR"
fi
for exe in daemon/aneshared examples/ane_probe; do
	[ -x "$BUILD_DIR/$exe" ] || { say "$BUILD_DIR/$exe is missing: build first (or drop --no-build)"; exit 1; }
done
tests_line="not run (--no-tests)"
if [ "$DO_TESTS" = 1 ]; then
	say "meson test (log: $WORK/tests.log)"
	if meson test -C "$BUILD_DIR" --num-processes 2 >"$WORK/tests.log" 2>&1; then
		tests_line="all passed"
	else
		tests_line="FAILED (see below)"
		status=1
	fi
	tests_line="$tests_line: $(grep -E '^(Ok|Fail|Skipped|Timeout):' "$WORK/tests.log" | tr -s ' ' | paste -sd ',' -)"
fi

# ---- two daemons: the device under test and the CPU reference ----
start_daemon() {   # name backend [options...]
	local name=$1 backend=$2; shift 2
	XDG_CONFIG_HOME=$WORK ANESHARE_SOCKET= "$BUILD_DIR/daemon/aneshared" --backend "$backend" \
		--socket "$WORK/$name.sock" "$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=("$!")
	local pid=$! i
	for i in $(seq 1 200); do
		grep -q 'listening on' "$WORK/$name.log" && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	say "aneshared --backend $backend did not start:"
	cat "$WORK/$name.log" >&2
	return 1
}
if [ "$DUT" = cpu ]; then
	dut_opts=(--worker)   # the device worker process, as the ANE backend runs by default
else
	dut_opts=()
fi
daemons_ok=1
start_daemon dut "$DUT" ${dut_opts[@]+"${dut_opts[@]}"} || daemons_ok=0
start_daemon ref cpu || daemons_ok=0

probe_rc=0
if [ "$daemons_ok" = 1 ]; then
	strict=()
	[ "$DUT" = cpu ] && strict=(--strict)
	say "ane_probe: programs and one probe per op"
	"$BUILD_DIR/examples/ane_probe" --dut "$WORK/dut.sock" --ref "$WORK/ref.sock" --runs "$RUNS" --ops \
		${strict[@]+"${strict[@]}"} "$ROOT/examples/dynamic_matmul.mil" "$ROOT/examples/transformer_block_verified.mil" \
		>"$WORK/probe.md" 2>"$WORK/probe.err" || probe_rc=$?
	[ "$probe_rc" = 0 ] || status=1
	if [ -x "$BUILD_DIR/client/aneshare" ]; then
		"$BUILD_DIR/client/aneshare" --socket "$WORK/dut.sock" status >"$WORK/status.txt" 2>&1 || true
	fi
else
	status=1
fi

# ---- the probe list covers every op of the CPU backend ----
ops_cpu=$(sed -n 's/^[[:space:]]*{"\([a-z_]*\)", [0-9], .*/\1/p' "$ROOT/daemon/mil/mil_ops.c" | sort -u)
ops_probed=$("$BUILD_DIR/examples/ane_probe" --print-probes | sed -n 's|^// probe \([a-z_]*\).*|\1|p' | sort -u)
missing=$(comm -23 <(printf '%s\n' "$ops_cpu") <(printf '%s\n' "$ops_probed"))
coverage="$(printf '%s\n' "$ops_probed" | grep -c .) probed of $(printf '%s\n' "$ops_cpu" | grep -c .) ops the CPU backend supports"
if [ -n "$missing" ]; then
	coverage="$coverage; NOT PROBED: $(printf '%s ' $missing)"
	status=1
fi

# ---- the report ----
{
	echo "## aneshare ANE smoke run ($(date -u '+%Y-%m-%d %H:%M UTC'))"
	echo
	echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)')"
	echo "- machine: $(uname -sm)"
	if command -v sw_vers >/dev/null; then
		echo "- macOS: $(sw_vers -productVersion) ($(sw_vers -buildVersion))"
		echo "- chip: $(sysctl -n machdep.cpu.brand_string 2>/dev/null || echo unknown)"
	fi
	echo "- device under test: aneshared --backend $DUT ${dut_opts[*]+"${dut_opts[*]}"}"
	echo "- test suite: $tests_line"
	echo "- op coverage: $coverage"
	echo
	echo "### Device daemon log"
	echo
	echo '```'
	cat "$WORK/dut.log" 2>/dev/null
	echo '```'
	echo
	if [ -s "$WORK/probe.md" ]; then
		cat "$WORK/probe.md"
	fi
	if [ -s "$WORK/status.txt" ]; then
		echo
		echo "### Device daemon status after the runs (aneshare status)"
		echo
		echo '```'
		cat "$WORK/status.txt"
		echo '```'
	fi
	if [ -s "$WORK/probe.err" ]; then
		echo
		echo '```'
		cat "$WORK/probe.err"
		echo '```'
	fi
	if [ "$DO_TESTS" = 1 ] && [ "$status" != 0 ] && grep -qE 'FAIL|ERROR' "$WORK/tests.log"; then
		echo
		echo "### Failing tests"
		echo
		echo '```'
		grep -E 'FAIL|ERROR' "$WORK/tests.log" | head -40
		echo '```'
	fi
} >"$REPORT"

cat "$REPORT"
if [ -n "$OUT" ]; then
	cp "$REPORT" "$OUT"
	say "report written to $OUT"
fi
[ "$status" = 0 ] && say "smoke run done" || say "smoke run FAILED (see the report)"
exit "$status"
