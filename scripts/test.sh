#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite twice: a normal
# gcc build, then an AddressSanitizer + UndefinedBehaviorSanitizer build (clang);
# then a short run of every fuzz target and the 64-client load test.  After the
# first build, the macOS compile check (scripts/check-macos.sh).
. "$(dirname "$0")/common.sh"

install_deps
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0

# -Dwerror=true: CI fails on any warning (the default is off, for users' newer compilers).
run_suite() {
	local dir=$1; shift
	build "$dir" -Dwerror=true "$@"
	say "testing $dir"
	meson test -C "$dir" --verbose --num-processes 2 2>&1 | tee -a "$log" || status=1
}

# -Dtest_hooks=true: the suites that load the fake IOSurface library or a stand-in
# systemctl/launchctl need the test hooks, which are off in every other build.
# debugoptimized (-O2, asserts on): gcc's warnings that need the optimizer
# (-Wmaybe-uninitialized) fail CI too, as they would a user's release build.
run_suite "$BUILD" -Dtest_hooks=true -Dbuildtype=debugoptimized
# Every translation unit compiled for macOS too (zig cc; docs: README.md, "Platforms").
bash "$ROOT/scripts/check-macos.sh" || status=1
# The sanitizer build uses clang where it is installed (install_deps installs it on Debian), so
# every run also shows the tree builds warning-free (-Werror) with both gcc and clang.
san_cc=gcc
command -v clang >/dev/null && san_cc=clang
CC=$san_cc run_suite "$ROOT/build-asan-$san_cc" -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug \
	-Dtest_hooks=true

# A short run of every libFuzzer target (tests/fuzz); scripts/fuzz.sh SECONDS runs longer.
if command -v clang >/dev/null &&
   printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return d && n; }\n' |
   clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
	bash "$ROOT/scripts/fuzz.sh" "${FUZZ_SECONDS:-25}" || status=1   # in build-fuzz
else
	say "skipping the fuzz targets: no clang with libFuzzer (Debian: clang libclang-rt-dev)"
fi

# The 64-client load test with random kills (docs/reliability.md, "Load").
say "load test"
ANESHARED="$BUILD/daemon/aneshared" "$BUILD/tests/load/load_test" --seconds "${LOAD_SECONDS:-20}" || status=1

# meson install into a DESTDIR, an out-of-tree client built with pkg-config against it, run.
bash "$ROOT/scripts/check-install.sh" "$BUILD" || status=1

# One closing line over all criterion suites of both builds, from their TAP results
# (CI reads it).
python3 "$ROOT/scripts/tally.py" "$BUILD/meson-logs/testlog.json" "$ROOT/build-asan-$san_cc/meson-logs/testlog.json"
exit $status
