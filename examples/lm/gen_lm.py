#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write a small decoder-only transformer language model as compiled Core ML
model folders (NAME.mlmodelc: model.mil + weights/weight.bin), the way
coremltools 8 converts a PyTorch GPT and coremlc compiles it, for iOS 18
(--targets ios18) and in the iOS 16/17 forms (ios17):

    OUT/lm_fp16.mlmodelc      fp16 weights (const ... BLOBFILE)
    OUT/lm_int8.mlmodelc      int8 weights, one fp16 scale per block of 32
                              inputs (constexpr_blockwise_shift_scale)
    OUT/lm_palette.mlmodelc   palettized weights: 4-bit indices (uint4), one
                              16-entry fp16 palette per 16 output channels;
                              the embedding 6-bit (uint6, 64 entries)
                              (constexpr_lut_to_dense)
    OUT/lm_ios17_*.mlmodelc   the same in the iOS 17 text form: int8 with a
                              scale per output row (constexpr_affine_dequantize),
                              one palette per tensor with packed uint8 indices
                              (constexpr_lut_to_dense with 'shape')
    OUT/NAME.npz              the same weights as numpy arrays, in the form
                              the folder stores them (int8 data and scales,
                              indices and palettes), for a reference

The model: tokens (int32 [1, T], a window of T tokens; positions past the
context hold any token: the causal mask keeps them from earlier positions) ->
gather(embedding) + positional embedding -> LAYERS x (layer_norm, Q/K/V
linear, H-head causal attention, output linear, residual, layer_norm, linear,
gelu (tanh), linear, residual) -> layer_norm -> linear -> logits (fp16
[1, T, V]).  Stateless: a client passes the context at every step.

Text form: what coremlc prints (docs/mil.md, "Text forms accepted"). iOS 18:
program(1.3) with a buildInfo dict, arguments sorted by name, scalars and
small tensors as const statements, tensors of 10 or more elements of a blob
dtype in weights/weight.bin (offsets 64-byte aligned), the constexpr ops with
their inputs bound inline (coremltools' MILProtoExporter binds them so from
opset iOS 18 on), attention by scaled_dot_product_attention.  iOS 17:
program(1.0), every value a tensor (tensor<int32, []>(0), tensor<string,
[]>("..."), one-element vectors without brackets), constexpr inputs in the
attribute bracket, attention as matmul / mul / add (-inf mask) / softmax /
matmul (scaled_dot_product_attention is iOS 18).

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


def fmt_one(dtype, x):
    if dtype == "bool":
        return "true" if x else "false"
    if dtype in ("fp16", "fp32"):   # C99 hex floats, trailing zero digits dropped
        if np.isinf(x):
            return "inf" if x > 0 else "-inf"
        m, _, e = float(x).hex().partition("p")
        return m.rstrip("0").rstrip(".") + "p" + e
    return str(int(x))


class Mil:
    """Statements of one function, printed as coremlc prints them for the
    target: iOS 18 (program 1.3) writes scalars as `int32(0)` and strings as
    `string("...")`; iOS 17 (program 1.0) writes every value as a tensor
    (`tensor<int32, []>(0)`, `tensor<string, []>("...")`) and one-element
    vectors without brackets (`tensor<int32, [1]>(-1)`)."""

    def __init__(self, blob, target):
        self.blob = blob
        self.ios18 = target == 18
        self.lines = []

    def type_of(self, dtype, shape):
        if len(shape) == 0 and self.ios18:
            return dtype
        return ttype(dtype, shape)

    def string(self, text):
        return '%s("%s")' % (self.type_of("string", ()), text)

    def literal(self, dtype, arr):
        """An inline value: a scalar (rank 0) or a list."""
        if dtype == "string":
            return self.string(arr)
        a = np.asarray(arr)
        if a.ndim == 0:
            return "%s(%s)" % (self.type_of(dtype, ()), fmt_one(dtype, a.item()))
        items = ", ".join(fmt_one(dtype, x) for x in a.ravel())
        return "%s(%s)" % (ttype(dtype, a.shape), items if a.size == 1 and not self.ios18 else "[" + items + "]")

    def value(self, dtype, arr):
        """A constant argument: a BLOBFILE for 10 or more elements of a blob
        dtype, else an inline literal."""
        a = np.asarray(arr) if dtype != "string" else np.asarray(0)
        if a.size >= 10 and dtype in BLOB_DTYPE:
            off = self.blob.add(dtype, a)
            return "%s(BLOBFILE(path = %s, offset = %s(%d)))" % (ttype(dtype, a.shape), self.string(WEIGHT_PATH),
                                                                 self.type_of("uint64", ()), off)
        return self.literal(dtype, arr)

    def const(self, name, dtype, arr):
        shape = () if dtype == "string" else np.asarray(arr).shape
        self.lines.append("%s %s = const()[name = %s, val = %s];" % (self.type_of(dtype, shape), name,
                                                                      self.string(name), self.value(dtype, arr)))
        return name

    def op(self, out_type, name, op, **args):
        a = ", ".join("%s = %s" % (k, args[k]) for k in sorted(args))
        self.lines.append("%s %s = %s(%s)[name = %s];" % (out_type, name, op, a, self.string(name)))
        return name

    def constexpr(self, out_type, name, op, **args):
        """iOS 18: inputs inline, as op(...); iOS 16/17: every input in the
        attribute bracket with the name, as op()[...] (coremltools'
        MILProtoExporter.translate_constexpr)."""
        if self.ios18:
            return self.op(out_type, name, op, **args)
        args["name"] = self.string(name)
        a = ", ".join("%s = %s" % (k, args[k]) for k in sorted(args))
        self.lines.append("%s %s = %s()[%s];" % (out_type, name, op, a))
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


def write_model(out_dir, variant, target, cfg, w):
    V, D, F, T, L, H = (cfg[k] for k in ("vocab", "dim", "ffn", "window", "layers", "heads"))
    DH = D // H
    blob = BlobWriter()
    m = Mil(blob, target)
    ref = {"cfg_" + k: np.int64(v) for k, v in cfg.items()}
    ref["cfg_target"] = np.int64(target)
    ref["variant"] = np.array(variant)

    def weight(name):
        """The MIL name of weight `name`, as fp16 (a const, or a constexpr op).
        iOS 18: int8 with a scale per 32 inputs (constexpr_blockwise_shift_scale),
        palettes per group of rows of uint4 (uint6) indices (constexpr_lut_to_dense).
        iOS 16/17 forms: int8 with a scale per output row and zero points
        (constexpr_affine_dequantize), one palette per tensor, its indices
        packed into a uint8 vector (constexpr_lut_to_dense with 'shape')."""
        a = w[name]
        out = ttype("fp16", a.shape)
        if variant == "fp16" or not is_matrix(name):
            ref[name] = a
            return m.const(name + "_to_fp16", "fp16", a)
        if variant == "int8":
            q, s = quantize_int8(a.astype(np.float32), cfg["block"] if target == 18 else a.shape[1])
            ref[name + ".q"], ref[name + ".scale"] = q, s
            if target == 18:
                return m.constexpr(out, name + "_to_fp16_dequant", "constexpr_blockwise_shift_scale",
                                   data=m.value("int8", q), scale=m.value("fp16", s))
            return m.constexpr(out, name + "_to_fp16_dequant", "constexpr_affine_dequantize",
                               axis=m.literal("int32", np.int32(0)), quantized_data=m.value("int8", q),
                               scale=m.value("fp16", s[:, 0]),
                               zero_point=m.value("int8", np.zeros(a.shape[0], dtype=np.int8)))
        nbits = 6 if name == "wte" else 4
        group = (32 if name == "wte" else 16) if target == 18 else a.shape[0]
        idx, lut = palettize(a.astype(np.float32), nbits, group)
        ref[name + ".idx"], ref[name + ".lut"] = idx, lut
        if target == 18:
            return m.constexpr(out, name + "_to_fp16_palettized", "constexpr_lut_to_dense",
                               indices=m.value("uint%d" % nbits, idx), lut=m.value("fp16", lut))
        packed, _ = pack_bits(idx, nbits)
        return m.constexpr(out, name + "_to_fp16_palettized", "constexpr_lut_to_dense",
                           indices=m.value("uint8", np.frombuffer(packed, dtype=np.uint8)),
                           lut=m.value("fp16", lut.ravel()),
                           shape=m.value("uint32", np.array(a.shape, dtype=np.uint32)))

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
    if target == 18:
        causal = m.const("causal_mask", "bool", np.tril(np.ones((T, T), dtype=bool)))
    else:   # an additive mask, -inf above the diagonal (no scaled_dot_product_attention before iOS 18)
        causal = m.const("causal_mask_to_fp16", "fp16", np.where(np.tril(np.ones((T, T), dtype=bool)), 0,
                                                                  -np.inf).astype(np.float16))
        scale = m.const("var_scale_to_fp16", "fp16", np.float16(1 / np.sqrt(DH)))
        b_false = m.const("var_false", "bool", False)
        b_true = m.const("var_true", "bool", True)
        last = m.const("var_axis_last", "int32", np.int32(-1))
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
        if target == 18:
            a = m.op(f16(1, H, T, DH), p + "attn", "scaled_dot_product_attention", attn_mask=causal,
                     key=heads["k"], query=heads["q"], value=heads["v"])
        else:
            sc = m.op(f16(1, H, T, T), p + "scores", "matmul", transpose_x=b_false, transpose_y=b_true,
                      x=heads["q"],
                      y=heads["k"])
            sc = m.op(f16(1, H, T, T), p + "scores_scaled", "mul", x=sc, y=scale)
            sc = m.op(f16(1, H, T, T), p + "scores_masked", "add", x=sc, y=causal)
            sc = m.op(f16(1, H, T, T), p + "weights", "softmax", axis=last, x=sc)
            a = m.op(f16(1, H, T, DH), p + "attn", "matmul", transpose_x=b_false, transpose_y=b_false, x=sc,
                     y=heads["v"])
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

    build_info = BUILD_INFO if target == 18 else BUILD_INFO.replace("dict<string, string>",
                                                                    "dict<tensor<string, []>, tensor<string, []>>")
    text = ("program(%s)\n" % ("1.3" if target == 18 else "1.0") + build_info + "\n{\n"
            "    func main<ios%d>(tensor<int32, [1, %d]> input_ids) {\n" % (target, T)
            + "".join("            " + s + "\n" for s in m.lines)
            + "        } -> (logits);\n}\n")
    name = "lm_%s" % variant if target == 18 else "lm_ios%d_%s" % (target, variant)
    folder = os.path.join(out_dir, name + ".mlmodelc")
    os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    with open(os.path.join(folder, "model.mil"), "w") as f:
        f.write(text)
    with open(os.path.join(folder, "weights", "weight.bin"), "wb") as f:
        f.write(blob.bytes())
    np.savez(os.path.join(out_dir, name + ".npz"), **ref)
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to write the folders into")
    ap.add_argument("--variants", default="fp16,int8,palette")
    ap.add_argument("--targets", default="ios18,ios17",
                    help="ios18: lm_VARIANT.mlmodelc; ios17: lm_ios17_VARIANT.mlmodelc (iOS 16/17 forms)")
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
    for t in args.targets.split(","):
        if t not in ("ios17", "ios18"):
            ap.error("unknown target %r" % t)
        for v in args.variants.split(","):
            if v not in ("fp16", "int8", "palette"):
                ap.error("unknown variant %r" % v)
            print(write_model(args.out, v, int(t[3:]), cfg, w))


if __name__ == "__main__":
    main()
