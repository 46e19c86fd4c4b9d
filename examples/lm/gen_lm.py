#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write a small decoder-only transformer language model as compiled Core ML
model folders (NAME.mlmodelc: model.mil + weights/weight.bin), the way
coremltools 8 converts a PyTorch GPT for iOS 18 and coremlc compiles it:

    OUT/lm_fp16.mlmodelc      fp16 weights (const ... BLOBFILE)
    OUT/lm_int8.mlmodelc      int8 weights, one fp16 scale per block of 32
                              inputs (constexpr_blockwise_shift_scale)
    OUT/lm_palette.mlmodelc   palettized weights: 4-bit indices (uint4), one
                              16-entry fp16 palette per 16 output channels;
                              the embedding 6-bit (uint6, 64 entries)
                              (constexpr_lut_to_dense)
    OUT/lm_VARIANT.npz        the same weights as numpy arrays, in the form
                              the folder stores them (int8 data and scales,
                              indices and palettes), for a reference

The model: tokens (int32 [1, T], a window of T tokens; positions past the
context hold any token: the causal mask keeps them from earlier positions) ->
gather(embedding) + positional embedding -> LAYERS x (layer_norm, Q/K/V
linear, H-head scaled_dot_product_attention with a causal bool mask, output
linear, residual, layer_norm, linear, gelu (tanh), linear, residual) ->
layer_norm -> linear -> logits (fp16 [1, T, V]).  Stateless: a client passes
the context at every step.

Text form: what coremlc prints for an iOS 18 program (docs/mil.md, "Text
forms accepted"): program(1.3) with a buildInfo dict, arguments sorted by
name, scalars and small tensors as const statements, tensors of 10 or more
elements of a blob dtype in weights/weight.bin (offsets 64-byte aligned), and
the iOS 18 constexpr ops with their inputs bound inline (coremltools 8 writes
them so for opset iOS 18; iOS 16/17 put them in the attribute bracket).

Only numpy.  Weights come from numpy's PCG64 seeded with --seed.

    /usr/bin/python3 examples/lm/gen_lm.py OUT [--layers 2] [--dim 64] ...
"""
import argparse
import os
import struct

import numpy as np

# MIL blob storage format (docs/mil.md, "Weight files")
BLOB_DTYPE = {"fp16": 1, "fp32": 2, "uint8": 3, "int8": 4, "uint1": 9, "uint2": 10, "uint4": 11,
              "uint3": 12, "uint6": 13, "int32": 14}
SUB_BYTE = {"uint1": 1, "uint2": 2, "uint3": 3, "uint4": 4, "uint6": 6}
BUILD_INFO = ('[buildInfo = dict<string, string>({{"coremlc-component-MIL", "3402.3.1"}, '
              '{"coremlc-version", "3402.4.1"}, {"coremltools-component-torch", "2.4.0"}, '
              '{"coremltools-source-dialect", "TorchScript"}, {"coremltools-version", "8.0"}})]')
WEIGHT_PATH = "@model_path/weights/weight.bin"


def pack_bits(values, nbits):
    """Sub-byte elements as one little-endian bit stream: element i in bits
    [i*n, (i+1)*n) counting from the least significant bit of byte 0."""
    v = np.asarray(values, dtype=np.uint32).ravel()
    bits = ((v[:, None] >> np.arange(nbits, dtype=np.uint32)) & 1).astype(np.uint8).ravel()
    return np.packbits(bits, bitorder="little").tobytes(), (-len(bits)) % 8


class BlobWriter:
    """weight.bin: a 64-byte storage header (count, version 2), then per blob a
    64-byte metadata record at a multiple of 64 and its data right behind it."""

    def __init__(self):
        self.buf = bytearray(64)
        self.count = 0

    def add(self, dtype, arr):
        if dtype in SUB_BYTE:
            data, pad_bits = pack_bits(arr, SUB_BYTE[dtype])
        else:
            data, pad_bits = np.ascontiguousarray(arr).astype("<" + np.asarray(arr).dtype.str[1:]).tobytes(), 0
        off = len(self.buf)
        assert off % 64 == 0
        meta = struct.pack("<IIQQQ", 0xDEADBEEF, BLOB_DTYPE[dtype], len(data), off + 64, pad_bits)
        self.buf += meta + bytes(64 - len(meta)) + data
        self.buf += bytes((-len(self.buf)) % 64)
        self.count += 1
        return off

    def bytes(self):
        struct.pack_into("<II", self.buf, 0, self.count, 2)
        return bytes(self.buf)


def shape_str(shape):
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def ttype(dtype, shape):
    return "tensor<%s, %s>" % (dtype, shape_str(shape))


def literal(dtype, arr):
    """An inline value: a scalar (rank 0) or a bracketed list."""
    a = np.asarray(arr)
    if dtype == "string":
        return 'string("%s")' % arr

    def one(x):
        if dtype == "bool":
            return "true" if x else "false"
        if dtype in ("fp16", "fp32"):   # C99 hex floats, trailing zero digits dropped
            m, _, e = float(x).hex().partition("p")
            return m.rstrip("0").rstrip(".") + "p" + e
        return str(int(x))
    if a.ndim == 0:
        return "%s(%s)" % (dtype, one(a.item()))
    return "%s(%s)" % (ttype(dtype, a.shape), "[" + ", ".join(one(x) for x in a.ravel()) + "]")


class Mil:
    """Statements of one function, printed as coremlc prints them."""

    def __init__(self, blob):
        self.blob = blob
        self.lines = []

    def value(self, dtype, arr):
        """A constant argument: a BLOBFILE for 10 or more elements of a blob
        dtype, else an inline literal."""
        a = np.asarray(arr) if dtype != "string" else np.asarray(0)
        if a.size >= 10 and dtype in BLOB_DTYPE:
            off = self.blob.add(dtype, a)
            return '%s(BLOBFILE(path = string("%s"), offset = uint64(%d)))' % (ttype(dtype, a.shape),
                                                                             WEIGHT_PATH, off)
        return literal(dtype, arr if dtype == "string" else a)

    def const(self, name, dtype, arr):
        a = np.asarray(arr) if dtype != "string" else np.asarray(0)
        t = dtype if a.ndim == 0 else ttype(dtype, a.shape)
        self.lines.append('%s %s = const()[name = string("%s"), val = %s];' % (t, name, name,
                                                                                self.value(dtype, arr)))
        return name

    def op(self, out_type, name, op, **args):
        a = ", ".join("%s = %s" % (k, args[k]) for k in sorted(args))
        self.lines.append('%s %s = %s(%s)[name = string("%s")];' % (out_type, name, op, a, name))
        return name


def palettize(w, nbits, group):
    """One palette of 2^nbits values per group of output rows: the values at
    evenly spaced quantiles, each weight replaced by its nearest entry."""
    o, i = w.shape
    k = 1 << nbits
    lut = np.empty((o // group, 1, k, 1), dtype=np.float16)
    idx = np.empty((o, i), dtype=np.uint8)
    for g in range(o // group):
        rows = w[g * group:(g + 1) * group]
        pal = np.quantile(rows, (np.arange(k) + 0.5) / k).astype(np.float16)
        lut[g, 0, :, 0] = pal
        idx[g * group:(g + 1) * group] = np.abs(rows[..., None] - pal.astype(np.float32)).argmin(-1)
    return idx, lut


def quantize_int8(w, block):
    o, i = w.shape
    wb = w.reshape(o, i // block, block)
    scale = (np.abs(wb).max(-1) / 127).astype(np.float16)
    scale[scale == 0] = 1
    q = np.clip(np.rint(wb / scale.astype(np.float32)[..., None]), -127, 127).astype(np.int8)
    return q.reshape(o, i), scale


def make_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    V, D, F, T, L = cfg["vocab"], cfg["dim"], cfg["ffn"], cfg["window"], cfg["layers"]

    def mat(o, i, s=1.0):
        return (rng.standard_normal((o, i)) * s / np.sqrt(i)).astype(np.float16)

    def vec(n, mean=0.0, s=0.1):
        return (mean + rng.standard_normal(n) * s).astype(np.float16)
    w = {"wte": (rng.standard_normal((V, D)) * 0.5).astype(np.float16),
         "wpe": (rng.standard_normal((T, D)) * 0.1).astype(np.float16)}
    for l in range(L):
        p = "l%d_" % l
        w[p + "ln1_g"], w[p + "ln1_b"] = vec(D, 1.0), vec(D)
        for n in ("q", "k", "v", "o"):
            w[p + "w" + n], w[p + "b" + n] = mat(D, D), vec(D, 0.0, 0.02)
        w[p + "ln2_g"], w[p + "ln2_b"] = vec(D, 1.0), vec(D)
        w[p + "w1"], w[p + "b1"] = mat(F, D), vec(F, 0.0, 0.02)
        w[p + "w2"], w[p + "b2"] = mat(D, F), vec(D, 0.0, 0.02)
    w["lnf_g"], w["lnf_b"] = vec(D, 1.0), vec(D)
    w["lm_head"], w["lm_b"] = mat(V, D, 2.0), vec(V, 0.0, 0.02)
    return w


# the weights a variant compresses: every matrix (linear weights and the embedding)
def is_matrix(name):
    return name == "wte" or name == "lm_head" or "_w" in name


def write_model(out_dir, variant, cfg, w):
    V, D, F, T, L, H = (cfg[k] for k in ("vocab", "dim", "ffn", "window", "layers", "heads"))
    DH = D // H
    blob = BlobWriter()
    m = Mil(blob)
    ref = {"cfg_" + k: np.int64(v) for k, v in cfg.items()}
    ref["variant"] = np.array(variant)

    def weight(name):
        """The MIL name of weight `name`, as fp16 (a const, or a constexpr op)."""
        a = w[name]
        if variant == "fp16" or not is_matrix(name):
            ref[name] = a
            return m.const(name + "_to_fp16", "fp16", a)
        if variant == "int8":
            q, s = quantize_int8(a.astype(np.float32), cfg["block"])
            ref[name + ".q"], ref[name + ".scale"] = q, s
            return m.op(ttype("fp16", a.shape), name + "_to_fp16_dequant", "constexpr_blockwise_shift_scale",
                        data=m.value("int8", q), scale=m.value("fp16", s))
        nbits = 6 if name == "wte" else 4
        group = 32 if name == "wte" else 16
        idx, lut = palettize(a.astype(np.float32), nbits, group)
        ref[name + ".idx"], ref[name + ".lut"] = idx, lut
        return m.op(ttype("fp16", a.shape), name + "_to_fp16_palettized", "constexpr_lut_to_dense",
                    indices=m.value("uint%d" % nbits, idx), lut=m.value("fp16", lut))

    def f16(*shape):
        return ttype("fp16", shape)
    x = m.const("var_axis_0", "int32", np.int32(0))
    bd = m.const("var_batch_dims_0", "int32", np.int32(0))
    vi = m.const("var_validate_indices_0", "bool", False)
    h = m.op(f16(1, T, D), "inputs_embeds", "gather", axis=x, batch_dims=bd, indices="input_ids",
             validate_indices=vi, x=weight("wte"))
    h = m.op(f16(1, T, D), "hidden_states_1", "add", x=h, y=weight("wpe"))
    axes = m.const("var_axes_last", "int32", np.array([-1], dtype=np.int32))
    eps = m.const("var_eps", "fp16", np.float16(1e-5))
    split = m.const("var_heads_shape", "int32", np.array([1, T, H, DH], dtype=np.int32))
    merge = m.const("var_merge_shape", "int32", np.array([1, T, D], dtype=np.int32))
    perm = m.const("var_perm_heads", "int32", np.array([0, 2, 1, 3], dtype=np.int32))
    causal = m.const("causal_mask", "bool", np.tril(np.ones((T, T), dtype=bool)))
    gelu_mode = m.const("var_gelu_mode", "string", "TANH_APPROXIMATION")
    for l in range(L):
        p = "l%d_" % l
        n = m.op(f16(1, T, D), p + "ln_1", "layer_norm", axes=axes, beta=weight(p + "ln1_b"), epsilon=eps,
                 gamma=weight(p + "ln1_g"), x=h)
        heads = {}
        for k in ("q", "k", "v"):
            y = m.op(f16(1, T, D), p + k + "_proj", "linear", bias=weight(p + "b" + k), weight=weight(p + "w" + k),
                     x=n)
            y = m.op(f16(1, T, H, DH), p + k + "_heads", "reshape", shape=split, x=y)
            heads[k] = m.op(f16(1, H, T, DH), p + k + "_t", "transpose", perm=perm, x=y)
        a = m.op(f16(1, H, T, DH), p + "attn", "scaled_dot_product_attention", attn_mask=causal, key=heads["k"],
                 query=heads["q"], value=heads["v"])
        a = m.op(f16(1, T, H, DH), p + "attn_t", "transpose", perm=perm, x=a)
        a = m.op(f16(1, T, D), p + "attn_merged", "reshape", shape=merge, x=a)
        a = m.op(f16(1, T, D), p + "o_proj", "linear", bias=weight(p + "bo"), weight=weight(p + "wo"), x=a)
        h = m.op(f16(1, T, D), p + "hidden_attn", "add", x=h, y=a)
        n = m.op(f16(1, T, D), p + "ln_2", "layer_norm", axes=axes, beta=weight(p + "ln2_b"), epsilon=eps,
                 gamma=weight(p + "ln2_g"), x=h)
        f = m.op(f16(1, T, F), p + "fc_1", "linear", bias=weight(p + "b1"), weight=weight(p + "w1"), x=n)
        f = m.op(f16(1, T, F), p + "gelu", "gelu", mode=gelu_mode, x=f)
        f = m.op(f16(1, T, D), p + "fc_2", "linear", bias=weight(p + "b2"), weight=weight(p + "w2"), x=f)
        h = m.op(f16(1, T, D), p + "hidden_mlp", "add", x=h, y=f)
    n = m.op(f16(1, T, D), "ln_f", "layer_norm", axes=axes, beta=weight("lnf_b"), epsilon=eps,
             gamma=weight("lnf_g"), x=h)
    m.op(f16(1, T, V), "logits", "linear", bias=weight("lm_b"), weight=weight("lm_head"), x=n)

    text = ("program(1.3)\n" + BUILD_INFO + "\n{\n"
            "    func main<ios18>(tensor<int32, [1, %d]> input_ids) {\n" % T
            + "".join("            " + s + "\n" for s in m.lines)
            + "        } -> (logits);\n}\n")
    folder = os.path.join(out_dir, "lm_%s.mlmodelc" % variant)
    os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    with open(os.path.join(folder, "model.mil"), "w") as f:
        f.write(text)
    with open(os.path.join(folder, "weights", "weight.bin"), "wb") as f:
        f.write(blob.bytes())
    np.savez(os.path.join(out_dir, "lm_%s.npz" % variant), **ref)
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to write the folders into")
    ap.add_argument("--variants", default="fp16,int8,palette")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    cfg = {"layers": args.layers, "dim": args.dim, "heads": args.heads, "ffn": args.ffn, "vocab": args.vocab,
           "window": args.window, "block": 32}
    if cfg["dim"] % cfg["heads"] or cfg["dim"] % 32 or cfg["ffn"] % 32 or cfg["vocab"] % 32:
        ap.error("dim must divide by heads and 32; ffn and vocab by 32")
    w = make_weights(cfg, args.seed)
    for v in args.variants.split(","):
        if v not in ("fp16", "int8", "palette"):
            ap.error("unknown variant %r" % v)
        print(write_model(args.out, v, cfg, w))


if __name__ == "__main__":
    main()
