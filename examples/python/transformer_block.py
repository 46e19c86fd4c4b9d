#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The transformer block (examples/transformer_block.mil, written by
scripts/gen_transformer_block.py) from Python, against a numpy fp32 reference
of the same block (the computation of tests/transformer_ref.h): RMS norm,
Q/K/V/O projections, causal attention over 4 heads, SiLU-gated MLP with int8
weights.  The weights are read back from the MIL text.

    PYTHONPATH=python ANESHARE_LIBRARY=build/client/libaneshare.so \\
        /usr/bin/python3 examples/python/transformer_block.py [--socket PATH] [--mil FILE]

Exit status 0 if the relative error (max |error| / max |reference|) stays within
5e-3 for every input, 1 otherwise."""
import argparse
import os
import re
import sys
import time

import numpy as np

import aneshare

HERE = os.path.dirname(os.path.abspath(__file__))
D, S, H, F = 64, 32, 4, 128
DH = D // H
TOL = 5e-3


def const(text, name, n):
    """The n values of `NAME = const()[... val = T(LITERAL)]`."""
    m = re.search(r" %s = const\(\)\[[^\]]*val = [^(]*\(\[?([^)\]]*)\]?\)\]" % re.escape(name), text)
    if not m:
        raise ValueError("no const %s" % name)
    vals = [1.0 if v == "true" else 0.0 if v == "false" else float.fromhex(v) if "0x" in v
            else float(v) for v in (s.strip() for s in m.group(1).split(","))]
    if len(vals) != n:
        raise ValueError("const %s has %d values, not %d" % (name, len(vals), n))
    return np.array(vals, dtype=np.float32)


def weights(text):
    w = {k: const(text, k, D) for k in ("g1", "g2")}
    for k in ("wq", "wk", "wv", "wo"):
        w[k] = const(text, k, D * D).reshape(D, D)     # [out][in]
    w["eps"] = const(text, "eps", 1)[0]
    for k, co, ci in (("w1", F, D), ("w3", F, D), ("w2", D, F)):
        if " %s_q = const()" % k in text:              # int8 with per-channel scales
            w[k] = const(text, k + "_q", co * ci).reshape(co, ci) * const(text, k + "_s", co)[:, None]
        else:
            w[k] = const(text, k, co * ci).reshape(co, ci)
    if " causal = const()" in text:
        w["mask"] = const(text, "causal", S * S).reshape(S, S) != 0
    else:
        w["mask"] = const(text, "causal_add", S * S).reshape(S, S) == 0
    return w


def rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=0, keepdims=True) + eps) * g[:, None]


def reference(w, x):
    """x: [D, S] (the [1, D, 1, S] tensor) in fp32."""
    h = rmsnorm(x, w["g1"], w["eps"])
    q, k, v = (w[n] @ h for n in ("wq", "wk", "wv"))
    a = np.empty_like(x)
    for hd in range(H):
        sl = slice(hd * DH, (hd + 1) * DH)
        sc = np.where(w["mask"], q[sl].T @ k[sl] / np.sqrt(DH), -np.inf)   # [S query, S key]
        sc = np.exp(sc - sc.max(axis=1, keepdims=True))
        sc /= sc.sum(axis=1, keepdims=True)
        a[sl] = (sc @ v[sl].T).T
    x1 = x + w["wo"] @ a
    h2 = rmsnorm(x1, w["g2"], w["eps"])
    g = w["w1"] @ h2
    return x1 + w["w2"] @ (g / (1 + np.exp(-g)) * (w["w3"] @ h2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", help="the daemon's socket (default: $ANESHARE_SOCKET, ...)")
    ap.add_argument("--mil", default=os.path.join(HERE, "..", "transformer_block.mil"))
    ap.add_argument("--inputs", type=int, default=4)
    args = ap.parse_args()
    text = open(args.mil).read()
    w = weights(text)
    rng = np.random.default_rng(7)
    worst = 0.0
    with aneshare.connect(args.socket, "transformer_block.py") as conn:
        prog = conn.compile(text)
        x, = prog.new_inputs()
        out, = prog.new_outputs()
        assert x.shape == (1, D, 1, S) and out.shape == (1, D, 1, S)
        for i in range(args.inputs):
            x[...] = rng.uniform(-1, 1, x.shape)
            t0 = time.perf_counter()
            prog.run([x], [out])
            dt = time.perf_counter() - t0
            ref = reference(w, x[0, :, 0, :].astype(np.float32))
            err = float(np.max(np.abs(out[0, :, 0, :].astype(np.float32) - ref)) / np.max(np.abs(ref)))
            worst = max(worst, err)
            print("input %d: relative error %.2e, %.0f us" % (i, err, dt * 1e6))
    print("worst relative error %.2e (tolerance %g)" % (worst, TOL))
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except aneshare.ConnectFailure as e:
        sys.exit("%s: %s; --socket PATH names the socket" % (os.path.basename(__file__), e))
