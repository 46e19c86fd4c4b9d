#!/usr/bin/env bash
# Build an optimized aneshared + bench_daemon and run every benchmark with its
# baseline (docs/performance.md).  Usage: scripts/bench.sh [--quick] [--reps N] [--record]
# --record: also keep the run's figures as bench/results/DATE.json (bench_daemon --json).
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
ninja -C "$BUILD" daemon/aneshared bench/bench_daemon examples/pipeline >/dev/null
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
if [ -z "$record" ]; then
	ANESHARED="$BUILD/daemon/aneshared" exec "$BUILD/bench/bench_daemon" "${args[@]}"
fi
mkdir -p "$ROOT/bench/results"
out=$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ).json
status=0
ANESHARED="$BUILD/daemon/aneshared" "$BUILD/bench/bench_daemon" --json "${args[@]}" >"$out" || status=$?
echo "figures: $out"
exit $status
