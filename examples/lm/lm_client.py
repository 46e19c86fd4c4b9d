#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Generate tokens greedily with a language model folder written by
examples/lm/gen_lm.py, in aneshared, and check every step's logits against a
numpy reference of the same model computed here from the weights of
NAME.npz (the compressed variants dequantized by numpy: int8 data times its
block's scale, palette entries picked by index).

The reference mirrors the daemon's fp16 semantics (docs/mil.md, "Numerics"):
each op computes in fp32 from fp16 inputs and rounds its result to fp16
once.  A step passes when max |logits - reference| <= TOL * max(1,
max |reference|) and the token the daemon's logits pick is, in the
reference, within that tolerance of the best.

With --procs 2 a second process (this script again) compiles the same folder
while this one still holds it, and both generate at the same time: the second
compile must be a cache hit (its `cached` flag, the daemon's cache_hits) and
the daemon must hold one program that both handles refer to (status
programs[key].refs == 2).

    PYTHONPATH=python ANESHARE_LIBRARY=build/client/libaneshare.so \\
        /usr/bin/python3 examples/lm/lm_client.py OUT/lm_fp16.mlmodelc [--socket PATH] [--tokens N]

Prints one line per process: tokens/s (the daemon's runs only, the reference
excluded), the worst error, the text.  Exit status 0 if every check holds."""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

import aneshare

TOL = 5e-3


def r16(a):
    """Round to fp16 and back: what an op's fp16 output holds."""
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


class Reference:
    def __init__(self, npz):
        z = np.load(npz)
        self.cfg = {k[4:]: int(z[k]) for k in z.files if k.startswith("cfg_")}
        self.w = {}
        for k in z.files:
            if k.startswith("cfg_") or k == "variant":
                continue
            name, _, part = k.partition(".")
            if part == "":
                self.w[name] = z[k].astype(np.float32)
            elif part == "q":        # int8 data, one scale per block of inputs
                q, s = z[k].astype(np.float32), z[name + ".scale"].astype(np.float32)
                self.w[name] = r16(q * np.repeat(s, q.shape[1] // s.shape[1], axis=1))
            elif part == "idx":      # one palette per group of output rows
                idx, lut = z[k].astype(np.int64), z[name + ".lut"].astype(np.float32)
                g = idx.shape[0] // lut.shape[0]
                self.w[name] = lut[np.arange(idx.shape[0])[:, None] // g, 0, idx, 0]

    def logits(self, ids):
        c, w = self.cfg, self.w
        T, D, H = c["window"], c["dim"], c["heads"]
        dh = D // H
        eps = float(np.float16(1e-5))

        def ln(x, g, b):
            m = x.mean(-1, keepdims=True)
            v = ((x - m) ** 2).mean(-1, keepdims=True)
            return r16((x - m) / np.sqrt(v + eps) * g + b)

        def lin(x, name_w, name_b):
            return r16(x @ w[name_w].T + w[name_b])
        mask = np.tril(np.ones((T, T), dtype=bool))
        h = r16(w["wte"][ids] + w["wpe"])                        # [T, D]
        for l in range(c["layers"]):
            p = "l%d_" % l
            n = ln(h, w[p + "ln1_g"], w[p + "ln1_b"])
            q, k, v = (lin(n, p + "w" + x, p + "b" + x).reshape(T, H, dh).transpose(1, 0, 2) for x in "qkv")
            if c.get("target", 18) == 18:   # scaled_dot_product_attention: one rounding
                s = np.where(mask, q @ k.transpose(0, 2, 1) / np.sqrt(dh), -np.inf)
                s = np.exp(s - s.max(-1, keepdims=True))
                a = r16((s / s.sum(-1, keepdims=True)) @ v)
            else:                              # matmul, mul, add (-inf mask), softmax, matmul
                s = r16(r16(q @ k.transpose(0, 2, 1)) * float(np.float16(1 / np.sqrt(dh))))
                s = r16(np.where(mask, s, -np.inf))
                s = np.exp(s - s.max(-1, keepdims=True))
                a = r16(r16(s / s.sum(-1, keepdims=True)) @ v)
            a = a.transpose(1, 0, 2).reshape(T, D)
            h = r16(h + lin(a, p + "wo", p + "bo"))
            n = ln(h, w[p + "ln2_g"], w[p + "ln2_b"])
            f = lin(n, p + "w1", p + "b1")
            f = r16(0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f ** 3))))
            h = r16(h + lin(f, p + "w2", p + "b2"))
        return lin(ln(h, w["lnf_g"], w["lnf_b"]), "lm_head", "lm_b")   # [T, V]


def generate(prog, ref, prompt, n_tokens, tol):
    """Greedy decoding; returns (tokens, seconds in runs, worst error)."""
    T, V = ref.cfg["window"], ref.cfg["vocab"]
    ids, = prog.new_inputs()
    logits, = prog.new_outputs()
    if tuple(ids.shape) != (1, T) or tuple(logits.shape) != (1, T, V):
        raise SystemExit("the program's input/output shapes %s %s are not the npz's (1, %d) (1, %d, %d)"
                         % (ids.shape, logits.shape, T, T, V))
    toks = [t % V for t in prompt]
    run_s, worst = 0.0, 0.0
    for step in range(n_tokens):
        ctx = toks[-T:]
        window = np.zeros(T, dtype=np.int32)
        window[:len(ctx)] = ctx
        ids[0] = window
        t0 = time.perf_counter()
        prog.run([ids], [logits])
        run_s += time.perf_counter() - t0
        got = logits[0].astype(np.float32)
        want = ref.logits(window)
        err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
        worst = max(worst, err)
        if not err <= tol:
            i = np.unravel_index(np.argmax(np.abs(got - want)), got.shape)
            raise SystemExit("step %d: logits[%d][%d] = %g, reference %g (error %.3g > %.3g)"
                             % (step, i[0], i[1], got[i], want[i], err, tol))
        pos = len(ctx) - 1
        tok = int(np.argmax(got[pos]))
        scale = max(1.0, float(np.abs(want[pos]).max()))
        if want[pos, tok] < want[pos].max() - tol * scale:
            raise SystemExit("step %d: the daemon picks token %d (reference logit %g), the reference %d (%g)"
                             % (step, tok, want[pos, tok], int(np.argmax(want[pos])), want[pos].max()))
        toks.append(tok)
    return toks[len(prompt):], run_s, worst


def text(toks):
    return "".join(chr(t) if 32 <= t < 127 else "." for t in toks)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an .mlmodelc folder written by gen_lm.py")
    ap.add_argument("--socket", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The daemon shares one compile. ")
    ap.add_argument("--procs", type=int, choices=(1, 2), default=1)
    ap.add_argument("--tol", type=float, default=TOL)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    model = args.model.rstrip("/")
    ref = Reference(os.path.splitext(model)[0] + ".npz")
    name = os.path.basename(model)
    who = "process 2" if args.child else "process 1"
    with aneshare.connect(args.socket, name="lm_client") as conn:
        before = conn.status()
        prog = conn.compile(model)
        if args.child:
            # compiled while the first process holds the program: tell it, wait for "go"
            print("compiled cached=%d key=%s" % (prog.cached, prog.key), flush=True)
            if sys.stdin.readline().strip() != "go":
                raise SystemExit("process 2: no go")
        child = None
        if args.procs == 2:
            cmd = [sys.executable, os.path.abspath(__file__), model, "--tokens", str(args.tokens),
                   "--prompt", args.prompt, "--tol", str(args.tol), "--child"]
            if args.socket:
                cmd += ["--socket", args.socket]
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = child.stdout.readline().split()
            if len(line) != 3 or line[0] != "compiled":
                child.kill()
                raise SystemExit("process 2 did not compile: %r" % line)
            st = conn.status()
            refs = [p["refs"] for p in st["program_list"] if p["key"] == prog.key]
            hits = st["cache_hits"] - before["cache_hits"]
            print("%s: compiled %s (cached %s); process 2: %s, %s; daemon: cache_hits +%d, "
                  "refs of the program %s" % (who, name, prog.cached, line[1], line[2], hits, refs))
            if line[1] != "cached=1" or line[2] != "key=" + prog.key or hits < 1 or refs != [2]:
                child.kill()
                raise SystemExit("the second process did not share the first one's compile")
            child.stdin.write("go\n")
            child.stdin.flush()
        toks, run_s, worst = generate(prog, ref, list(args.prompt.encode()), args.tokens, args.tol)
        print("%s: %s: %d tokens, %.1f tokens/s, worst logit error %.2e (tolerance %.0e): [%s]"
              % (who, name, len(toks), len(toks) / run_s, worst, args.tol, text(toks)), flush=True)
        if child is not None:
            out = child.stdout.read()
            sys.stdout.write(out)
            if child.wait() != 0:
                raise SystemExit("process 2 failed")
            if text(toks) not in out:
                raise SystemExit("process 2 generated other tokens")
        prog.release()


if __name__ == "__main__":
    try:
        main()
    except aneshare.ConnectFailure as e:
        sys.exit("lm_client.py: %s; --socket PATH names the socket" % e)
