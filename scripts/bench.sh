#!/usr/bin/env bash
# Build an optimized aneshared + bench_daemon and run every benchmark with its
# baseline (docs/performance.md).  Usage: scripts/bench.sh [--quick] [--reps N]
# BUILD (default build-release) is the meson build directory used.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-release}
if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" "$ROOT" --buildtype=release -Dtests=false >/dev/null
fi
ninja -C "$BUILD" daemon/aneshared bench/bench_daemon >/dev/null
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
ANESHARED="$BUILD/daemon/aneshared" exec "$BUILD/bench/bench_daemon" "$@"
