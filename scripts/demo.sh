#!/usr/bin/env bash
# Install what is missing, build, start aneshared on a private socket, run the
# example client end to end (a matmul compiled and run in the daemon on shared
# memory, checked against an fp32 reference), and stop the daemon.
. "$(dirname "$0")/common.sh"

install_deps
build "$BUILD"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/aneshare-demo.XXXXXX")
sock=$run_dir/aneshare.sock
daemon_pid=
cleanup() {
	if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null || true; fi
	rm -rf "$run_dir"
}
trap cleanup EXIT

say "starting aneshared on $sock"
"$BUILD/daemon/aneshared" --socket "$sock" &
daemon_pid=$!
"$BUILD/client/aneshare" --socket "$sock" status --wait 10 >/dev/null

say "running the example client"
"$BUILD/examples/matmul_client" --socket "$sock" "$ROOT/examples/dynamic_matmul.mil"
echo
"$BUILD/client/aneshare" --socket "$sock" status
