#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The language-model example in one command: write the model in its three
# weight variants (gen_lm.py), start aneshared on a private socket (unless
# --socket names a running one), and for each variant run lm_client.py in two
# processes that share one compile, every step checked against numpy.  Both
# text forms: iOS 18 (lm_VARIANT.mlmodelc) and iOS 17 (lm_ios17_VARIANT.mlmodelc).
#
#   examples/lm/run.sh [--build DIR] [--tokens N] [--variants fp16,int8,palette]
#                      [--targets ios18,ios17] [--socket PATH] [--self-test] [-- GEN_LM_OPTIONS...]
#
# $ANESHARED, $ANESHARE_LIBRARY and $PYTHON override the daemon, the library
# and the interpreter (default DIR/daemon/aneshared, DIR/client/libaneshare.so,
# /usr/bin/python3 when it exists: the interpreter with Debian's numpy).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
tokens=32
variants=fp16,int8,palette
targets=ios18,ios17
socket=
self_test=0
gen_args=()
while [ $# -gt 0 ]; do
	case $1 in
	--build) build=$2; shift 2 ;;
	--tokens) tokens=$2; shift 2 ;;
	--variants) variants=$2; shift 2 ;;
	--targets) targets=$2; shift 2 ;;
	--socket) socket=$2; shift 2 ;;
	--self-test) self_test=1; shift ;;
	--) shift; gen_args=("$@"); break ;;
	*) echo "usage: $0 [--build DIR] [--tokens N] [--variants LIST] [--targets LIST] [--socket PATH]" \
	        "[--self-test] [-- GEN_LM_OPTIONS...]" >&2
	   exit 2 ;;
	esac
done
python=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
daemon=${ANESHARED:-$build/daemon/aneshared}
export ANESHARE_LIBRARY=${ANESHARE_LIBRARY:-$build/client/libaneshare.so}
export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1

work=$(mktemp -d "${TMPDIR:-/tmp}/aneshare-lm.XXXXXX")
daemon_pid=
cleanup() {
	if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

"$python" "$here/gen_lm.py" "$work" --variants "$variants" --targets "$targets" ${gen_args[@]+"${gen_args[@]}"} >/dev/null
if [ -z "$socket" ]; then
	socket=$work/aneshare.sock
	"$daemon" --socket "$socket" 2>"$work/daemon.log" &
	daemon_pid=$!
	for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
	[ -S "$socket" ] || { cat "$work/daemon.log" >&2; echo "aneshared did not start" >&2; exit 1; }
fi
status=0
for t in ${targets//,/ }; do
	for v in ${variants//,/ }; do
		name=lm_$v
		[ "$t" = ios18 ] || name=lm_${t}_$v
		"$python" "$here/lm_client.py" "$work/$name.mlmodelc" --socket "$socket" --tokens "$tokens" --procs 2 ||
			status=1
	done
done
# --self-test: the checks can fail.  The fp16 folder's last weight (the last
# bias of the output layer) changed by 4 in place: the daemon compiles the
# changed file (another key) and the client must refuse its logits.
if [ "$self_test" = 1 ] && [ -d "$work/lm_fp16.mlmodelc" ]; then
	"$python" - "$work/lm_fp16.mlmodelc/weights/weight.bin" <<'PY'
import sys
import numpy as np
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
meta = len(b) - 64
while int.from_bytes(b[meta:meta + 4], "little") != 0xDEADBEEF:   # the last blob's metadata
    meta -= 64
off = int.from_bytes(b[meta + 16:meta + 24], "little") + int.from_bytes(b[meta + 8:meta + 16], "little") - 2
v = np.frombuffer(bytes(b[off:off + 2]), dtype=np.float16)[0]
b[off:off + 2] = np.float16(float(v) + 4).tobytes()
open(p, "wb").write(b)
PY
	if "$python" "$here/lm_client.py" "$work/lm_fp16.mlmodelc" --socket "$socket" --tokens 2 >"$work/self.out" 2>&1; then
		echo "self-test: a changed weight went unnoticed" >&2
		status=1
	else
		echo "self-test: a changed weight is caught: $(tail -1 "$work/self.out")"
	fi
fi
exit $status
