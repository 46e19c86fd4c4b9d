#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The dynamic matmul (examples/dynamic_matmul.mil) from Python: compile once,
run many times with different weights on numpy arrays that live on shared
surfaces (no copies), and compare every result with numpy in fp32.

    PYTHONPATH=python ANESHARE_LIBRARY=build/client/libaneshare.so \\
        /usr/bin/python3 examples/python/dynamic_matmul.py [--socket PATH] [--sets N] [--runs N]

Exit status 0 if every result is within 1e-2 of the reference (max |error| /
max |reference|), 1 otherwise."""
import argparse
import os
import sys
import time

import numpy as np

import aneshare

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-2


def reference(x):
    """out[oc][s] = sum over ic of act[ic][s] * w[ic][oc] (the layout of the .mil's header)."""
    x = x.astype(np.float32)[0, :, 0, :]
    seq = x.shape[1] - x.shape[0]
    act, w = x[:, :seq], x[:, seq:]
    return (w.T @ act)[None, :, None, :]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", help="the daemon's socket (default: $ANESHARE_SOCKET, ...)")
    ap.add_argument("--sets", type=int, default=4, help="weight sets")
    ap.add_argument("--runs", type=int, default=200, help="runs per set")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    worst = 0.0
    with aneshare.connect(args.socket, "dynamic_matmul.py") as conn:
        prog = conn.compile(os.path.join(HERE, "..", "dynamic_matmul.mil"))
        print("compiled %s (%s): %s -> %s" % (prog.key[:16], "cached" if prog.cached else "new",
                                              prog.inputs[0].shape, prog.outputs[0].shape))
        x, = prog.new_inputs()     # numpy arrays on shared memory
        out, = prog.new_outputs()
        total = 0.0
        for s in range(args.sets):
            x[...] = rng.uniform(-1, 1, x.shape)   # activations and this set's weights
            ref = reference(x)
            t0 = time.perf_counter()
            for _ in range(args.runs):
                prog.run([x], [out])   # the daemon reads x and writes out in place
            total += time.perf_counter() - t0
            err = float(np.max(np.abs(out.astype(np.float32) - ref)) / np.max(np.abs(ref)))
            worst = max(worst, err)
            print("set %d: max error %.2e" % (s, err))
        # the copying convenience call gives the same numbers
        y = prog(x=x)
        assert np.array_equal(y, out)
    print("%d runs, %.1f us per run, worst error %.2e (tolerance %g)"
          % (args.sets * args.runs, total / (args.sets * args.runs) * 1e6, worst, TOL))
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except aneshare.ConnectFailure as e:
        sys.exit("%s: %s; --socket PATH names the socket" % (os.path.basename(__file__), e))
