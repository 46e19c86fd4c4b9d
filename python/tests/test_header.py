# SPDX-License-Identifier: MIT
"""The ctypes declarations of aneshare/_lib.py against client/aneshare.h: every
struct the package mirrors has the header's members, in order, with matching
types, and every function it declares has the header's return and parameter
types.  A header change that the package does not follow fails here rather
than corrupting memory at run time."""
import ctypes
import os
import re

import pytest

from aneshare import _lib
from conftest import ROOT

HEADER = open(os.path.join(ROOT, "client", "aneshare.h")).read()
TEXT = re.sub(r"/\*.*?\*/", " ", HEADER, flags=re.S)
TEXT = re.sub(r"//[^\n]*", " ", TEXT)
CONSTS = {"ANESHARE_MAX_RANK": _lib.MAX_RANK, "ANESHARE_TOKEN_LEN": _lib.TOKEN_LEN}

SCALARS = {"uint64_t": ctypes.c_uint64, "uint32_t": ctypes.c_uint32, "int": ctypes.c_int,
           "bool": ctypes.c_bool, "size_t": ctypes.c_size_t, "aneshare_dtype": ctypes.c_int,
           "char": ctypes.c_char, "void": None}


def array_len(expr):
    """An array length of the header: a number, a constant, or CONST + N."""
    total = 0
    for term in expr.split("+"):
        term = term.strip()
        total += int(term) if term.isdigit() else CONSTS[term]
    return total


def body(text, start):
    """The text between the brace at text[start] and its match, and the match's index."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i
    raise AssertionError("unbalanced braces")


def members(text):
    """[(name, kind)] of a struct body; kind is a scalar type name, "str",
    "ptr", ("array", type, n) or ("struct*", members) for an inline struct
    pointer."""
    out = []
    i = 0
    while i < len(text):
        m = re.compile(r"\s*struct\s+\w+\s*\{").match(text, i)
        if m:
            inner, end = body(text, m.end() - 1)
            decl = re.compile(r"\s*\*\s*(\w+)\s*;").match(text, end + 1)
            assert decl, "an inline struct that is not a pointer member"
            out.append((decl.group(1), ("struct*", members(inner))))
            i = decl.end()
            continue
        semi = text.find(";", i)
        if semi < 0:
            break
        decl = " ".join(text[i:semi].split())
        i = semi + 1
        if not decl:
            continue
        m = re.fullmatch(r"(const\s+)?(\w+)\s*(\**)\s*(.+)", decl)
        assert m, decl
        base, stars, names = m.group(2), m.group(3), m.group(4)
        for nm in names.split(","):
            nm = nm.strip()
            extra = ""
            while nm.startswith("*") or nm.startswith("const "):
                if nm.startswith("*"):
                    extra += "*"
                    nm = nm[1:].strip()
                else:
                    nm = nm[6:].strip()
            arr = re.fullmatch(r"(\w+)\s*\[([\w\s+]+)\]", nm)
            st = stars + extra
            if arr:
                out.append((arr.group(1), ("array", base, array_len(arr.group(2)))))
            elif st == "*" and base == "char":
                out.append((nm, "str"))
            elif st:
                out.append((nm, "ptr"))
            else:
                out.append((nm, base))
    return out


def struct(name):
    m = re.search(r"(typedef\s+)?struct\s+%s\s*\{" % name, TEXT)
    assert m, name
    return members(body(TEXT, m.end() - 1)[0])


def check_struct(cls, parsed):
    got = [f[0] for f in cls._fields_]
    assert got == [p[0] for p in parsed], "%s: %s vs the header's %s" % (cls.__name__, got,
                                                                       [p[0] for p in parsed])
    for (fname, ftype), (_, kind) in zip(cls._fields_, parsed):
        if kind == "str":
            assert ftype is ctypes.c_char_p, fname
        elif kind == "ptr":
            assert ftype is ctypes.c_void_p or issubclass(ftype, ctypes._Pointer), fname
        elif isinstance(kind, tuple) and kind[0] == "array":
            assert issubclass(ftype, ctypes.Array) and ftype._length_ == kind[2], fname
            assert ftype._type_ is SCALARS[kind[1]], fname
        elif isinstance(kind, tuple) and kind[0] == "struct*":
            assert issubclass(ftype, ctypes._Pointer), fname
            check_struct(ftype._type_, kind[1])
        else:
            assert kind in SCALARS, "%s: an unknown type %s" % (fname, kind)
            assert ftype is SCALARS[kind], "%s.%s: %s, the header says %s" % (
                cls.__name__, fname, ftype, kind)


@pytest.mark.parametrize("cls,name", [
    (_lib.TensorInfo, "aneshare_tensor_info"), (_lib.ServerInfo, "aneshare_server_info"),
    (_lib.Weight, "aneshare_weight"), (_lib.Step, "aneshare_step"),
    (_lib.Result, "aneshare_result"), (_lib.Status, "aneshare_status"),
    (_lib.WeightFd, "aneshare_weight_fd"), (_lib.Token, "aneshare_token"),
    (_lib.ExportOpts, "aneshare_export_opts"), (_lib.EventPoint, "aneshare_event_point"),
    (_lib.RunOpts, "aneshare_run_opts")])
def test_struct_matches_header(cls, name):
    if cls in OPTIONAL_STRUCTS and not re.search(r"struct\s+%s\s*\{" % name, TEXT):
        pytest.skip("%s is not in this client/aneshare.h" % name)
    check_struct(cls, struct(name))


OPTIONAL_STRUCTS = (_lib.WeightFd, _lib.Token, _lib.ExportOpts, _lib.EventPoint,
                    _lib.RunOpts)   # of the optional functions


def c_kind(t):
    t = " ".join(t.replace("*", " * ").split())
    t = re.sub(r"\b(const|enum)\b\s*", "", t).strip()
    t = re.sub(r"\s*\*\s*(const\s*)?", "*", t)
    if t == "char*":
        return "str"
    if t.endswith("*"):
        return "ptr"
    return t


def py_kind(ct):
    """"str", "ptr" or the ctypes scalar (on LP64, size_t and uint64_t are one
    ctypes type)."""
    if ct is None:
        return None
    if ct is ctypes.c_char_p:
        return "str"
    if ct is ctypes.c_void_p or issubclass(ct, ctypes._Pointer) or ct is _lib.DONE_FN:
        return "ptr"
    return ct


def want_kind(k):
    if k in ("str", "ptr"):
        return k
    if k == "aneshare_done_fn":
        return "ptr"
    assert k in SCALARS, "a type the test does not know: %s" % k
    return SCALARS[k]


DECLS = {m.group(2): (m.group(1), m.group(3)) for m in re.finditer(
    r"ANESHARE_API\s+([^;(]*?)\b(aneshare_\w+)\s*\(([^)]*)\)\s*;", TEXT)}


ALL = dict(_lib._PROTOTYPES, **_lib._OPTIONAL_PROTOTYPES)


@pytest.mark.parametrize("fname", sorted(ALL))
def test_function_matches_header(fname):
    if fname in _lib._OPTIONAL_PROTOTYPES and fname not in DECLS:
        pytest.skip("%s is not in this client/aneshare.h" % fname)
    assert fname in DECLS, "%s is not declared in client/aneshare.h" % fname
    ret, args = DECLS[fname]
    restype, argtypes = ALL[fname]
    assert py_kind(restype) == want_kind(c_kind(ret)), "%s returns %s" % (fname, ret)
    params = [a.strip() for a in args.split(",")] if args.strip() not in ("", "void") else []
    assert len(params) == len(argtypes), "%s takes %d parameters" % (fname, len(params))
    for p, at in zip(params, argtypes):
        decl = re.sub(r"\b\w+$", "", p)   # drop the parameter's name
        assert py_kind(at) == want_kind(c_kind(decl)), \
            "%s: parameter %r is %s in the package" % (fname, p, at)


def test_every_api_function_is_known():
    """A function added to the header is either wrapped or listed here as not
    needed by the package."""
    not_wrapped = {"aneshare_surface_import_iosurface", "aneshare_surface_iosurface_id",
                   "aneshare_f32_to_f16", "aneshare_f16_to_f32", "aneshare_weight_memfd"}
    missing = set(DECLS) - set(ALL) - not_wrapped
    assert not missing, ("client/aneshare.h declares %s: wrap it in python/aneshare/_lib.py "
                         "(and the API), or list it in not_wrapped here" % sorted(missing))
