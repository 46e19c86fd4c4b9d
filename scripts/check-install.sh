#!/usr/bin/env bash
# `meson install` of BUILD into a scratch DESTDIR, then what a user of the
# installed tree does: build the example client out of tree with
# `pkg-config --cflags --libs aneshare`, start the installed aneshared on a
# private socket and run the client against it (its results are checked
# against an fp32 reference).  Also checks that the user units went to
# systemd's user unit directory under the install prefix, and installs and runs
# the Python package three ways (meson install, a venv, the source tree).
# Usage: scripts/check-install.sh [BUILD]   (called by scripts/test.sh)
. "$(dirname "$0")/common.sh"
case ${1:-} in -h | --help) echo "usage: scripts/check-install.sh [BUILD]   (a configured meson build directory)"; exit 0 ;; esac
build_dir=${1:-$BUILD}
[ -f "$build_dir/build.ninja" ] || { say "$build_dir is not a configured meson build directory"; exit 2; }

dest=$(mktemp -d "${TMPDIR:-/tmp}/aneshare-install.XXXXXX")
daemon_pid=
cleanup() {
	if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null || true; fi
	rm -rf "$dest"
}
trap cleanup EXIT

opt() {   # the value of a meson option of the build
	meson introspect "$build_dir" --buildoptions |
		python3 -c 'import json, sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$1"
}
prefix=$(opt prefix)
libdir=$(opt libdir)
case $libdir in /*) ;; *) libdir=$prefix/$libdir ;; esac

say "meson install into $dest"
meson install -C "$build_dir" --destdir "$dest" --quiet >/dev/null
root=$dest$prefix
for f in "$root/bin/aneshared" "$root/bin/aneshare" "$root/include/aneshare.h" \
         "$dest$libdir/pkgconfig/aneshare.pc"; do
	[ -e "$f" ] || { say "not installed: ${f#"$dest"}"; exit 1; }
done
if [ "$(uname -s)" = Linux ]; then
	units=$prefix/lib/systemd/user
	if pkg-config --exists systemd; then
		units=$(pkg-config --variable=systemduserunitdir --define-variable=prefix="$prefix" systemd)
	fi
	for u in aneshare.socket aneshare.service; do
		[ -f "$dest$units/$u" ] || { say "not installed: $units/$u"; exit 1; }
	done
	grep -q "^ExecStart=$prefix/bin/aneshared" "$dest$units/aneshare.service" ||
		{ say "aneshare.service does not start $prefix/bin/aneshared"; exit 1; }
fi

say "building the example client out of tree against the installed library"
export PKG_CONFIG_PATH=$dest$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export PKG_CONFIG_SYSROOT_DIR=$dest
flags=$(pkg-config --cflags --libs aneshare)
case $flags in *"$dest"*) ;; *) say "pkg-config aneshare does not point into DESTDIR: $flags"; exit 1 ;; esac
# shellcheck disable=SC2086  # the flags are words
${CC:-cc} -std=c11 -Wall -Wextra -Werror -o "$dest/matmul_client" "$ROOT/examples/matmul_client.c" $flags -lm
unset PKG_CONFIG_SYSROOT_DIR

say "running it against the installed daemon"
sock=$dest/aneshare.sock
LD_LIBRARY_PATH=$dest$libdir "$root/bin/aneshared" --socket "$sock" &
daemon_pid=$!
LD_LIBRARY_PATH=$dest$libdir "$root/bin/aneshare" --socket "$sock" status --wait 10 >/dev/null
LD_LIBRARY_PATH=$dest$libdir "$dest/matmul_client" --socket "$sock" --sets 2 --runs 20 \
	"$ROOT/examples/dynamic_matmul.mil" >/dev/null

# The Python package (python/): meson install put it into the site-packages of
# -Dpython; a venv install as python/README.md gives it, offline (pip may use no
# index); and the source tree with ANESHARE_LIBRARY.  Each runs the example
# against the installed daemon (it checks its results against numpy).
py=$(opt python)
if [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import numpy' 2>/dev/null; then
	pydir=$("$py" "$ROOT/python/site_dir.py" "$prefix")
	[ -f "$dest$pydir/aneshare/__init__.py" ] || { say "not installed: $pydir/aneshare"; exit 1; }
	got=$("$py" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["LIBDIR"])' \
		"$dest$pydir/aneshare/_build_config.py")
	[ "$got" = "$libdir" ] || { say "the installed package names libdir '$got', not $libdir"; exit 1; }
	say "the Python package as meson installed it"
	LD_LIBRARY_PATH=$dest$libdir PYTHONPATH=$dest$pydir "$py" "$ROOT/examples/python/dynamic_matmul.py" \
		--socket "$sock" --sets 2 --runs 20 >/dev/null
	say "the Python package in a venv: pip install --no-build-isolation, offline"
	cp -r "$ROOT/python" "$dest/python-src"   # pip builds in place: keep the source tree clean
	rm -rf "$dest/python-src/build" "$dest/python-src"/*.egg-info
	"$py" -m venv --system-site-packages "$dest/venv"
	PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$dest/venv/bin/pip" install --quiet \
		--no-build-isolation "$dest/python-src" >/dev/null
	ANESHARE_LIBRARY=$dest$libdir/libaneshare.so "$dest/venv/bin/python" \
		"$ROOT/examples/python/dynamic_matmul.py" --socket "$sock" --sets 2 --runs 20 >/dev/null
	say "the Python package from the source tree (PYTHONPATH=python)"
	(cd "$ROOT" && ANESHARE_LIBRARY=$dest$libdir/libaneshare.so PYTHONPATH=python "$py" -c "import aneshare")
elif [ -n "$py" ]; then
	say "no $py with numpy: the Python package's install is not checked (Debian: python3-numpy python3-venv python3-pip python3-setuptools)"
	[ "${CI:-}" != true ] || exit 1
fi

kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=
say "install check passed"
