#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Python side of bench_daemon's Python section (bench_daemon --python):
connect to the daemon on --socket, compile the trivial program bench_daemon
times from C (relu on 16 fp16), then, for every line "go" on stdin, time
--runs blocking runs on surfaces (after 50 to warm up) and answer with one
line: "P50 P99 CALL_P50" in microseconds, CALL_P50 being the copying
convenience call's p50.  "ready" is printed once set up.  Needs the aneshare
package (PYTHONPATH) and libaneshare (ANESHARE_LIBRARY)."""
import argparse
import sys
import time

import numpy as np

import aneshare

TINY = ("program(1.3)\n{\n"
        "    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {\n"
        "        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y\")];\n"
        "    } -> (y);\n}\n")


def quantile(t, q):
    t = sorted(t)
    return t[min(len(t) - 1, int(q * len(t)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    n = args.runs
    conn = aneshare.connect(args.socket, "bench-python")
    prog = conn.compile(TINY)
    ins = [conn.surface(4096)]     # the C side's surfaces are 4096 bytes too
    outs = [conn.surface(4096)]
    run = prog.run
    clock = time.perf_counter
    x = np.zeros((1, 1, 1, 16), np.float16)
    t = [0.0] * n
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        for _ in range(50):
            run(ins, outs)
        for i in range(n):
            t0 = clock()
            run(ins, outs)
            t[i] = clock() - t0
        p50, p99 = quantile(t, 0.5), quantile(t, 0.99)
        m = max(n // 4, 1)
        c = [0.0] * m
        for i in range(m):
            t0 = clock()
            prog(x)
            c[i] = clock() - t0
        print("%.3f %.3f %.3f" % (p50 * 1e6, p99 * 1e6, quantile(c, 0.5) * 1e6), flush=True)
    conn.close()


if __name__ == "__main__":
    main()
