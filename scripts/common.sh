# Shared by the scripts in this folder: install what is missing, then build.
# Sourced, not run.  Sets ROOT and BUILD.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"
	elif command -v sudo >/dev/null; then sudo "$@"
	else say "need root to run: $*"; return 1
	fi
}

install_deps_debian() {
	local pkgs=(build-essential meson ninja-build pkg-config libuv1-dev libcriterion-dev
	            libssl-dev libopenblas-dev
	            libxml2-utils  # xmllint: the launchd plist check (launchd/lint.sh)
	            clang libclang-rt-dev  # libFuzzer, for the fuzz targets (scripts/fuzz.sh)
	            # the Python package (python/): its tests, and the venv install check-install.sh makes
	            python3-numpy python3-pytest python3-venv python3-pip python3-setuptools)
	# msgpack-c: libmsgpack-c-dev (6.x, Debian 13+) or libmsgpack-dev (4.x, Debian 12)
	local missing=()
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if ! pkg-config --exists msgpack-c 2>/dev/null && ! pkg-config --exists msgpack 2>/dev/null; then
		missing+=(MSGPACK)
	fi
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	local real=()
	for p in "${missing[@]}"; do
		if [ "$p" = MSGPACK ]; then
			if apt-cache show libmsgpack-c-dev >/dev/null 2>&1; then real+=(libmsgpack-c-dev)
			else real+=(libmsgpack-dev); fi
		else real+=("$p"); fi
	done
	as_root apt-get install -y -qq --no-install-recommends "${real[@]}" >/dev/null
}

# npm, which fetches zig for the macOS compile check (scripts/check-macos.sh).
install_npm() {
	command -v npm >/dev/null && return 0
	command -v apt-get >/dev/null || { say "no npm and no apt-get to install it"; return 1; }
	say "installing: npm"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends npm >/dev/null
}

install_deps_macos() {
	command -v brew >/dev/null || { say "Homebrew is needed: https://brew.sh"; return 1; }
	local missing=()
	for p in meson ninja pkg-config libuv msgpack criterion; do
		brew list --versions "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] || { say "installing: ${missing[*]}"; brew install "${missing[@]}"; }
}

install_deps() {
	case "$(uname -s)" in
	Linux)
		if command -v apt-get >/dev/null; then install_deps_debian
		else say "not a Debian-like system: install meson, ninja, libuv, msgpack-c, criterion, OpenSSL and OpenBLAS yourself"; fi ;;
	Darwin) install_deps_macos ;;
	esac
}

# build DIR [meson options...]
build() {
	local dir=$1; shift
	if [ ! -f "$dir/build.ninja" ]; then
		say "configuring $dir"
		meson setup "$dir" "$ROOT" "$@" >/dev/null
	elif [ $# -gt 0 ]; then
		meson configure "$dir" "$@" >/dev/null   # a build dir made before an option was added
	fi
	say "building $dir"
	ninja -C "$dir" >/dev/null
}
