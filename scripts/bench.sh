#!/usr/bin/env bash
# Build an optimized aneshared + bench_daemon and run every benchmark with its
# baseline (docs/performance.md).  Usage: scripts/bench.sh [--quick] [--reps N] [--record]
# --record: also keep the run's figures as bench/results/DATE.json (bench_daemon --json) and
# DATE-wfd.json (bench_wfd --json: weights by fd).
# BUILD (default build-release) is the meson build directory used.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-release}
args=() record=
for a in "$@"; do
	if [ "$a" = --record ]; then record=1; else args+=("$a"); fi
done
if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" "$ROOT" --buildtype=release -Dtests=false >/dev/null
fi
ninja -C "$BUILD" daemon/aneshared bench/bench_daemon bench/bench_wfd examples/pipeline >/dev/null
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
# bench_wfd (weights by fd, a 1 GiB file) after bench_daemon: --quick and --reps pass on;
# a run of one section of bench_daemon (--fair, --python, --pipeline, --attack-only) leaves it out.
wfd=() run_wfd=1
for ((i = 0; i < ${#args[@]}; i++)); do
	case ${args[i]} in
	--quick) wfd+=(--quick) ;;
	--reps) wfd+=(--reps "${args[i + 1]:-3}") ;;
	--fair | --python | --pipeline | --attack-only) run_wfd= ;;
	esac
done
export ANESHARED="$BUILD/daemon/aneshared"
status=0
if [ -z "$record" ]; then
	"$BUILD/bench/bench_daemon" "${args[@]}" || status=$?
	if [ -n "$run_wfd" ]; then "$BUILD/bench/bench_wfd" "${wfd[@]}" || status=$?; fi
	exit $status
fi
mkdir -p "$ROOT/bench/results"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
out=$ROOT/bench/results/$stamp.json
"$BUILD/bench/bench_daemon" --json "${args[@]}" >"$out" || status=$?
echo "figures: $out"
if [ -n "$run_wfd" ]; then
	"$BUILD/bench/bench_wfd" --json "${wfd[@]}" >"${out%.json}-wfd.json" || status=$?
	echo "figures: ${out%.json}-wfd.json"
fi
exit $status
