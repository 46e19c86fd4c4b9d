#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan, and run
# each for SECONDS (default 60), one after the other, in one process each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: frame io mil mil_run
#
# Environment:
#   FUZZ_BUILD   build directory (default: build-fuzz)
#   FUZZ_CORPUS  where each target's growing corpus is kept between runs
#                (default: $FUZZ_BUILD/corpus/TARGET); the committed inputs in
#                tests/fuzz/TARGET/ are read too, never written
#   FUZZ_ARGS    extra libFuzzer flags (e.g. "-jobs=2 -workers=2")
#
# A crash, leak, timeout or out-of-memory fails the script; the input is
# saved as $FUZZ_BUILD/artifacts/TARGET-crash-... .  To add it as a
# regression test: minimize it (fuzz_TARGET -minimize_crash=1 -runs=20000 FILE),
# fix the bug, and commit it as tests/fuzz/TARGET/regress-WHAT (every build
# replays that folder, see tests/meson.build).
. "$(dirname "$0")/common.sh"

usage() { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: frame io mil mil_run)"; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac
seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { usage >&2; exit 2; }
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame io mil mil_run)
for t in "${targets[@]}"; do
	case $t in frame | io | mil | mil_run) ;; *) say "unknown target '$t'"; usage >&2; exit 2 ;; esac
done
FUZZ_BUILD=${FUZZ_BUILD:-$ROOT/build-fuzz}

cc=$(command -v clang || true)
if [ -z "$cc" ]; then say "fuzz: clang not found (Debian: apt-get install clang libclang-rt-dev)"; exit 1; fi

# -Dwerror=false: a clang-only warning in the code under test must not stop
# fuzzing (the gcc builds enforce -Werror); the targets add -Werror themselves.
if [ ! -f "$FUZZ_BUILD/build.ninja" ]; then
	say "configuring $FUZZ_BUILD"
	CC=$cc meson setup "$FUZZ_BUILD" "$ROOT" -Dfuzz=true -Dtests=false -Dblas=disabled \
		-Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized -Dwerror=false \
		-Dc_args='-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined' >/dev/null
fi
say "building the fuzz targets in $FUZZ_BUILD"
ninja -C "$FUZZ_BUILD" "${targets[@]/#/tests/fuzz/fuzz_}" >/dev/null

mkdir -p "$FUZZ_BUILD/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${targets[@]}"; do
	corpus=${FUZZ_CORPUS:-$FUZZ_BUILD/corpus}/$t
	mkdir -p "$corpus"
	dict=$ROOT/tests/fuzz/$t.dict
	[ -f "$dict" ] || dict=$ROOT/tests/fuzz/mil.dict   # mil_run shares the MIL dictionary
	say "fuzzing $t for ${seconds}s"
	log=$FUZZ_BUILD/fuzz-$t.log
	# shellcheck disable=SC2086
	if nice -n 10 "$FUZZ_BUILD/tests/fuzz/fuzz_$t" "$corpus" "$ROOT/tests/fuzz/$t" \
		-dict="$dict" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=25 \
		-max_len=16384 -print_final_stats=1 -artifact_prefix="$FUZZ_BUILD/artifacts/$t-" \
		${FUZZ_ARGS:-} >"$log" 2>&1; then
		# "#N DONE cov: C ft: F corp: N/SIZE ..." and the run's execs per second
		{ grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1
		  grep -E '^stat::average_exec_per_sec' "$log"; } | sed "s/^/    $t: /" >&2 || true
	else
		status=1
		say "fuzz_$t FAILED (log: $log)"
		grep -E -A40 '^==[0-9]+==ERROR|runtime error|check failed|ERROR: libFuzzer' "$log" | head -60 >&2
		ls -1 "$FUZZ_BUILD/artifacts/$t-"* 2>/dev/null | sed 's/^/    input: /' >&2
	fi
done
exit $status
