# SPDX-License-Identifier: MIT
"""The package's API against a real daemon: connections, compiles, surfaces as
numpy views, runs, tickets, chains, status, threads."""
import gc
import hashlib
import itertools
import json
import os
import struct
import threading

import numpy as np
import pytest

import aneshare
from conftest import GATHER, MM_PATH, TINY, TWO_FUNCTIONS, mm_reference, rel_err, square_mm, wait_until

MM_TOL = 1e-2   # max |out - ref| / max |ref|, as tests/test_util.h's H_MM_TOL


def fill_mm(x, seed):
    rng = np.random.default_rng(seed)
    x[...] = rng.uniform(-1, 1, x.shape).astype(np.float16)


def program_key(mil, weights=()):
    """docs/protocol.md, program.compile: the SHA-256 the daemon keys programs by."""
    h = hashlib.sha256(b"aneshare-program-v1\0")
    m = mil.encode()
    h.update(struct.pack(">Q", len(m)) + m)
    for path, blob in sorted((p.encode(), b) for p, b in weights):
        h.update(struct.pack(">Q", len(path)) + path + struct.pack(">Q", len(blob)) + blob)
    return h.hexdigest()


# ---- connections -------------------------------------------------------------------


def test_connect_server_and_close(daemon):
    with aneshare.connect(daemon.sock, "ctx") as c:
        s = c.server
        assert s["protocol"] == 1 and s["backend"] == "cpu"
        assert s["max_surface_bytes"] > 0 and s["max_inflight"] > 0
        assert c.reconnect_count == 0
        assert c.fileno() >= 0
        assert not c.closed
    assert c.closed
    with pytest.raises(aneshare.ClosedError):
        c.compile(TINY)
    with pytest.raises(aneshare.ClosedError):
        c.status()


def test_connect_default_socket_from_env(daemon, monkeypatch):
    monkeypatch.setenv("ANESHARE_SOCKET", daemon.sock)
    assert aneshare.default_socket_path() == daemon.sock
    with aneshare.connect() as c:
        assert c.server["protocol"] == 1


def test_connect_fails_clearly(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(aneshare.ConnectFailure) as ei:
        aneshare.connect(path)
    e = ei.value
    assert isinstance(e, ConnectionError) and e.errno == 2 and path in str(e)
    assert str(e) == ("no daemon listens on %s (No such file or directory): start one with "
                      "'aneshared' (or 'aneshare service install'), or connect to the socket of "
                      "the one running (the socket argument or ANESHARE_SOCKET)" % path)
    assert e.message == str(e) and e.name == "No such file or directory"


def test_connect_failures_say_what_to_do(tmp_path, monkeypatch):
    """A stale socket file, a daemon that hangs up before the handshake, a
    path from ANESHARE_SOCKET: each says what is wrong and what to do."""
    import socket as so
    stale = str(tmp_path / "stale.sock")
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.bind(stale)
    s.close()                        # the file stays, nothing listens
    with pytest.raises(aneshare.ConnectFailure) as ei:
        aneshare.connect(stale)
    assert ei.value.errno == 111 and str(ei.value).startswith(
        "no daemon listens on %s (Connection refused: a stale socket file, its daemon gone): "
        "start one with 'aneshared'" % stale), str(ei.value)

    monkeypatch.setenv("ANESHARE_SOCKET", stale)
    with pytest.raises(aneshare.ConnectFailure) as ei:
        aneshare.connect()
    assert str(ei.value).startswith("no daemon listens on %s (from ANESHARE_SOCKET) (" % stale)

    rude = str(tmp_path / "rude.sock")
    ls = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    ls.bind(rude)
    ls.listen(1)
    done = threading.Event()

    def hang_up():
        c, _ = ls.accept()
        c.close()                    # before any answer to hello
        done.set()
    t = threading.Thread(target=hang_up)
    t.start()
    try:
        with pytest.raises(aneshare.AneshareError) as ei:
            aneshare.connect(rude)
    finally:
        t.join(30)
        ls.close()
    assert done.is_set()
    text = str(ei.value)
    assert text.startswith("the daemon on %s hung up before the handshake (" % rude), text
    assert text.endswith("its log names the reason"), text


def test_spin_reconnect_settings(conn):
    conn.spin_us = 0
    assert conn.spin_us == 0
    conn.spin_us = 250
    assert conn.spin_us == 250
    with pytest.raises(aneshare.OSFailure) as ei:
        conn.spin_us = 10 ** 6   # over the library's cap
    assert ei.value.errno == 22
    conn.set_reconnect(True, timeout_ms=100)


# ---- compiling -----------------------------------------------------------------------


def test_compile_text_path_and_info(conn):
    text = open(MM_PATH).read()
    p = conn.compile(MM_PATH)
    assert p.key == program_key(text)
    assert len(p.key) == 64
    (x,) = p.inputs
    (out,) = p.outputs
    assert (x.name, x.dtype, x.shape, x.nbytes) == ("x", np.float16, (1, 64, 1, 128), 16384)
    assert (out.name, out.dtype, out.shape, out.nbytes) == ("out", np.float16, (1, 64, 1, 64), 8192)
    # the same program again, from text and from a PathLike: the daemon shares it
    q = conn.compile(text)
    assert q.key == p.key and q.cached
    import pathlib
    r = conn.compile(pathlib.Path(MM_PATH))
    assert r.key == p.key and r.cached
    for prog in (p, q, r):
        prog.release()
    with pytest.raises(aneshare.ClosedError):
        p.run([], [])


def weight_blob(w):
    """A MIL blob file (docs/mil.md, "Weight files") holding one fp16 tensor at offset 64."""
    blob = bytearray(64)
    struct.pack_into("<II", blob, 0, 1, 2)
    meta = bytearray(64)
    struct.pack_into("<IIQQ", meta, 0, 0xDEADBEEF, 1, w.nbytes, 128)
    return bytes(blob + meta + w.tobytes())


def weights_mil(files):
    """y = x + w0 + w1 + ... on [4, 4] fp16, each w from its own BLOBFILE."""
    lines = ["program(1.3)", "{", "    func main<ios18>(tensor<fp16, [4, 4]> x) {"]
    prev = "x"
    for i, f in enumerate(files):
        lines.append("        tensor<fp16, [4, 4]> w%d = const()[name = string(\"w%d\"), val = "
                     "tensor<fp16, [4, 4]>(BLOBFILE(path = string(\"@model_path/weights/%s\"), "
                     "offset = uint64(64)))];" % (i, i, f))
        lines.append("        tensor<fp16, [4, 4]> y%d = add(x = %s, y = w%d)[name = string(\"y%d\")];"
                     % (i, prev, i, i))
        prev = "y%d" % i
    lines += ["    } -> (%s);" % prev, "}", ""]
    return "\n".join(lines)


def test_compile_weights_and_mlmodelc(conn, tmp_path):
    """BLOBFILE weights given as bytes, as numpy arrays, as files (paths and
    file objects: by descriptor where the library can), and as an .mlmodelc
    folder."""
    w = np.arange(16, dtype=np.float16).reshape(4, 4) / 8
    blob = weight_blob(w)
    mil = weights_mil(["weight.bin"])
    x = np.ones((4, 4), np.float16)
    path = "@model_path/weights/weight.bin"
    p = conn.compile(mil, weights={path: blob})
    assert p.key == program_key(mil, [(path, blob)])
    np.testing.assert_array_equal(p(x), x + w)
    q = conn.compile(mil, weights={path: np.frombuffer(blob, np.uint8)})
    assert q.key == p.key and q.cached
    f = tmp_path / "weight.bin"
    f.write_bytes(blob)
    np.testing.assert_array_equal(conn.compile(mil, weights={path: str(f)})(x), x + w)
    with open(f, "rb") as fo:
        np.testing.assert_array_equal(conn.compile(mil, weights={path: fo})(x=x), x + w)
    folder = tmp_path / "m.mlmodelc"
    (folder / "weights").mkdir(parents=True)
    (folder / "model.mil").write_text(mil)
    (folder / "weights" / "weight.bin").write_bytes(blob)
    np.testing.assert_array_equal(conn.compile(str(folder))(x=x), x + w)
    # more files than go by descriptor in one compile: their bytes are sent
    names = ["w%d.bin" % i for i in range(aneshare.MAX_WEIGHT_FILES + 1)]
    many = weights_mil(names)
    ws = [np.full((4, 4), i + 1, np.float16) for i in range(len(names))]
    for n, wi in zip(names, ws):
        (tmp_path / n).write_bytes(weight_blob(wi))
    r = conn.compile(many, weights={"@model_path/weights/" + n: tmp_path / n for n in names})
    np.testing.assert_array_equal(r(x), x + sum(ws))
    assert r.key == program_key(many, [("@model_path/weights/" + n, weight_blob(wi))
                                       for n, wi in zip(names, ws)])


@pytest.mark.skipif("aneshare_program_compile_fds" not in aneshare._lib.HAVE,
                    reason="this libaneshare has no aneshare_program_compile_fds")
def test_weight_files_go_by_descriptor(conn, tmp_path, monkeypatch):
    w = np.full((4, 4), 0.5, np.float16)
    (tmp_path / "weight.bin").write_bytes(weight_blob(w))
    mil = weights_mil(["weight.bin"])

    def no_inline(*a):
        raise AssertionError("the weights were sent inline")
    monkeypatch.setattr(aneshare._core.lib, "aneshare_program_compile", no_inline)
    p = conn.compile(mil, weights={"@model_path/weights/weight.bin": tmp_path / "weight.bin"})
    x = np.ones((4, 4), np.float16)
    np.testing.assert_array_equal(p(x), x + w)


def test_compile_error_carries_line(conn):
    bad = TINY.replace("relu(x = x)", "relu(x = nowhere)")
    with pytest.raises(aneshare.CompileError) as ei:
        conn.compile(bad)
    e = ei.value
    assert e.wire_code == 10 and e.name == "compile" and not e.retryable
    assert e.line == 4 and "nowhere" in e.source_line and "line 4" in e.message
    # the connection carries on
    assert conn.compile(TINY).key == program_key(TINY)


# ---- surfaces as numpy arrays --------------------------------------------------------


def test_arrays_are_views_of_the_surface(conn):
    p = conn.compile(MM_PATH)
    (x,) = p.new_inputs()
    (out,) = p.new_outputs()
    assert x.dtype == np.float16 and x.shape == (1, 64, 1, 128)
    assert out.dtype == np.float16 and out.shape == (1, 64, 1, 64)
    for a in (x, out):
        s = aneshare.surface_of(a)
        addr = a.__array_interface__["data"][0]
        assert s.address <= addr and addr + a.nbytes <= s.address + s.size
        assert s.id > 0
        assert a.flags.writeable and a.flags.c_contiguous and not a.flags.owndata
    # the daemon reads what the array holds and writes into the array in place
    for seed in range(3):
        fill_mm(x, seed)
        out[...] = np.nan
        before = out.__array_interface__["data"][0]
        p.run([x], [out])
        assert out.__array_interface__["data"][0] == before
        assert rel_err(out, mm_reference(x)) < MM_TOL


def test_surface_of_slices_and_views(conn):
    a = conn.surface(64)
    assert a.dtype == np.uint8 and a.shape == (64,) and not a.any()
    s = aneshare.surface_of(a)
    assert s.size == 64
    f = a.view(np.float16)
    f[3] = 1.5
    assert aneshare.surface_of(f) is s
    assert aneshare.surface_of(a[8:]) is s
    assert a[6:8].view(np.float16)[0] == 1.5
    assert aneshare.surface_of(np.zeros(4)) is None
    b = conn.array(np.float32, (2, 3))
    assert b.shape == (2, 3) and b.dtype == np.float32 and aneshare.surface_of(b).size == 24


def test_buffer_protocol_and_dlpack_share_memory(conn):
    (x,) = conn.compile(TINY).new_inputs()
    addr = x.__array_interface__["data"][0]
    mv = memoryview(x)
    assert mv.shape == x.shape and mv.format == "e"
    via_buffer = np.frombuffer(mv, dtype=np.float16)
    assert via_buffer.__array_interface__["data"][0] == addr
    via_buffer[5] = 7
    assert x[0, 0, 0, 5] == 7
    d = np.from_dlpack(x)   # numpy's consumer marks its arrays read-only
    assert d.__array_interface__["data"][0] == addr
    x[0, 0, 0, 6] = -3
    assert d[0, 0, 0, 6] == -3
    # the DLPack consumer keeps the surface alive on its own
    via_buffer[0] = 2
    del x, mv, via_buffer
    gc.collect()
    assert d[0, 0, 0, 0] == 2 and d[0, 0, 0, 6] == -3


def test_arrays_keep_surface_and_connection_alive_in_any_order(daemon):
    """No use after unmap, whichever of connection, program and arrays goes
    first; the daemon lets go of the connection after the last array."""
    obs = aneshare.connect(daemon.sock, "observer")
    base = settled_connections(obs)
    for order in itertools.permutations(["conn", "prog", "x", "out"]):
        objs = {"conn": aneshare.connect(daemon.sock, "order")}
        objs["prog"] = objs["conn"].compile(MM_PATH)
        objs["x"], = objs["prog"].new_inputs()
        objs["out"], = objs["prog"].new_outputs()
        fill_mm(objs["x"], 1)
        objs["prog"].run([objs["x"]], [objs["out"]])
        expect = objs["out"].copy()
        objs["conn"].close()   # (a `with` block ending) before anything is freed
        for name in order:
            if "out" in objs:   # still mapped, still what the daemon wrote
                np.testing.assert_array_equal(objs["out"], expect)
            if "x" in objs:
                objs["x"][0, 0, 0, 0] = 1
            del objs[name]
            gc.collect()
        wait_until(lambda: own_connections(obs) == base, "the connection to close")
    assert own_connections(obs) == base
    obs.close()


def own_connections(obs):
    """This process's connections as the daemon counts them (other processes'
    come and go as they like)."""
    for p in obs.status()["processes"]:
        if p["pid"] == os.getpid():
            return p["connections"]
    return 0


def settled_connections(obs):
    """Once the daemon has seen the earlier tests' connections of this
    process close (a close reaches it asynchronously), only obs is left."""
    gc.collect()
    wait_until(lambda: own_connections(obs) == 1, "earlier connections of this process to close")
    return 1


def test_close_waits_for_the_last_array(daemon):
    obs = aneshare.connect(daemon.sock, "observer")
    base = settled_connections(obs)
    c = aneshare.connect(daemon.sock, "closing")
    a = c.surface(4096)
    c.close()
    assert own_connections(obs) == base + 1   # a's mapping keeps it
    a[:] = 3
    del a
    gc.collect()
    wait_until(lambda: own_connections(obs) == base, "the connection to close")
    obs.close()


# ---- running ------------------------------------------------------------------------


def test_run_by_function_name_and_index(conn):
    p = conn.compile(TWO_FUNCTIONS)
    assert [f.name for f in p.functions] == ["main", "twice"]
    (x,) = p.new_inputs("twice")
    (y,) = p.new_outputs(1)
    x[...] = np.arange(-8, 8, dtype=np.float16).reshape(x.shape)
    p.run([x], [y], function="twice")
    np.testing.assert_array_equal(y, 2 * x)
    p.run([x], [y], function=0)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    p.run([x], [y], function=1)
    np.testing.assert_array_equal(y, 2 * x)
    with pytest.raises(KeyError):
        p.run([x], [y], function="thrice")
    with pytest.raises(IndexError):
        p.run([x], [y], function=2)


def test_run_refuses_foreign_arrays(conn, daemon):
    p = conn.compile(TINY)
    (x,) = p.new_inputs()
    (y,) = p.new_outputs()
    with pytest.raises(TypeError):
        p.run([np.zeros(16, np.float16)], [y])
    with pytest.raises(ValueError):
        p.run([x[..., 1:]], [y])   # not at offset 0
    big = conn.surface(64).view(np.float16)
    with pytest.raises(ValueError):
        p.run([big[::2]], [y])     # starts at 0 but is not contiguous
    p.run([big[:16].reshape(1, 1, 1, 16)], [y])   # a view at offset 0 is the surface
    with aneshare.connect(daemon.sock, "other") as other:
        (z,) = other.compile(TINY).new_inputs()
        with pytest.raises(ValueError):
            p.run([z], [y])


def test_convenience_call_copies(conn):
    p = conn.compile(MM_PATH)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (1, 64, 1, 128)).astype(np.float32)   # cast to fp16 on the way in
    y = p(x)
    assert y.dtype == np.float16 and y.shape == (1, 64, 1, 64)
    assert aneshare.surface_of(y) is None   # a copy, not a view of the program's surface
    assert rel_err(y, mm_reference(x.astype(np.float16))) < MM_TOL
    y2 = p(x=x * 2)
    assert rel_err(y, mm_reference(x.astype(np.float16))) < MM_TOL   # y not overwritten
    assert rel_err(y2, mm_reference((x * 2).astype(np.float16))) < MM_TOL
    # flat input of the right size is reshaped
    y3 = p(x.ravel())
    np.testing.assert_array_equal(y3, y)
    with pytest.raises(TypeError):
        p()
    with pytest.raises(TypeError):
        p(x, x=x)
    with pytest.raises(TypeError):
        p(x=x, bogus=x)
    g = conn.compile(GATHER)
    np.testing.assert_array_equal(g(idx=[3, 0, 1]), [[7, 8], [1, 2], [3, 4]])


def test_run_failed_names_the_op(conn):
    g = conn.compile(GATHER)
    with pytest.raises(aneshare.RunFailedError) as ei:
        g(idx=[3, 9, 1])
    assert ei.value.wire_code == 14 and "gather" in ei.value.message
    np.testing.assert_array_equal(g(idx=[0, 0, 0]), [[1, 2]] * 3)


def test_submit_and_wait(conn):
    p = conn.compile(MM_PATH)
    pairs = []
    for i in range(8):
        (x,) = p.new_inputs()
        (o,) = p.new_outputs()
        fill_mm(x, 100 + i)
        o[...] = np.nan
        pairs.append((x, o))
    tickets = [p.submit([x], [o]) for x, o in pairs]
    assert len({t.id for t in tickets}) == 8
    for t in reversed(tickets):
        t.wait()
    for x, o in pairs:
        assert rel_err(o, mm_reference(x)) < MM_TOL
    with pytest.raises(ValueError):
        tickets[0].wait()
    # a ticket dropped without wait() does not leak or block the next ones
    p.submit(*[[a] for a in pairs[0]])
    gc.collect()
    t = p.submit([pairs[1][0]], [pairs[1][1]])
    conn.wait(t)


def test_chain(conn):
    p = conn.compile(TWO_FUNCTIONS)
    a, = p.new_inputs()
    b, = p.new_outputs()
    c, = p.new_outputs()
    a[...] = np.linspace(-4, 4, 16, dtype=np.float16).reshape(a.shape)
    conn.run_chain([(p, [a], [b], "twice"), (p, [b], [c]), (p, [c], [b], 1)])
    np.testing.assert_array_equal(b, 4 * np.maximum(a, 0))
    g = conn.compile(GATHER)
    idx, = g.new_inputs()
    gy, = g.new_outputs()
    idx[...] = [0, 1, 7]   # out of range: the second step fails at run time
    b[...] = 0
    with pytest.raises(aneshare.RunFailedError) as ei:
        conn.run_chain([(p, [a], [b], "twice"), (g, [idx], [gy]), (p, [a], [c])])
    assert ei.value.failed_step == 1 and ei.value.message.startswith("step 1: ")
    np.testing.assert_array_equal(b, 2 * a)   # the step before it ran
    small = conn.surface(8).view(np.float16).reshape(1, 1, 1, 4)
    with pytest.raises(aneshare.SizeMismatchError) as ei:
        conn.run_chain([(p, [a], [b]), (p, [small], [c])])
    assert ei.value.failed_step == 1
    with pytest.raises(ValueError):
        conn.run_chain([])
    with pytest.raises(ValueError):
        conn.run_chain([(p, [a], [b])] * (aneshare.MAX_STEPS + 1))


def test_status_is_plain_data(conn):
    p = conn.compile(TINY)
    x, = p.new_inputs()
    y, = p.new_outputs()
    p.run([x], [y])
    st = conn.status()
    assert json.loads(json.dumps(st)) == st
    assert st["backend"] == "cpu" and st["clients"] >= 1 and st["runs"] >= 1
    assert any(e["key"] == p.key and e["refs"] >= 1 for e in st["program_list"])
    me = [e for e in st["processes"] if e["pid"] == os.getpid()]
    assert me and me[0]["surfaces"] >= 2 and me[0]["name"]
    assert {t["resource"] for t in st["totals"]} >= {"surfaces", "surface_bytes", "programs"}
    assert conn.last_run_us >= 0


def test_threads_share_a_connection(conn):
    p = conn.compile(MM_PATH)
    errors = []

    def worker(k):
        try:
            (x,) = p.new_inputs()
            (o,) = p.new_outputs()
            for i in range(40):
                fill_mm(x, 1000 * k + i)
                p.run([x], [o])
                e = rel_err(o, mm_reference(x))
                assert e < MM_TOL, e
                t = p.submit([x], [o])
                t.wait()
            conn.status()
        except BaseException as e:   # reported by the main thread
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_limit_error(fresh_daemon):
    d = fresh_daemon("--max-surfaces", "2")
    with aneshare.connect(d.sock) as c:
        keep = [c.surface(64), c.surface(64)]
        with pytest.raises(aneshare.LimitError) as ei:
            c.surface(64)
        e = ei.value
        assert e.wire_code == 9 and e.name == "limit" and not e.retryable
        assert "max_surfaces" in e.message or "surfaces" in e.message
        del keep[0]
        gc.collect()
        c.surface(64)   # room again once one is released


def test_invalid_params_error(conn):
    with pytest.raises(aneshare.InvalidParamsError) as ei:
        conn.surface(conn.server["max_surface_bytes"] + 1)
    assert ei.value.wire_code == 5


def test_big_matmul_numbers(conn):
    """A program with two inputs, against numpy."""
    n = 64
    p = conn.compile(square_mm(n))
    x, y = p.new_inputs()
    z, = p.new_outputs()
    rng = np.random.default_rng(9)
    x[...] = rng.uniform(-1, 1, x.shape)
    y[...] = rng.uniform(-1, 1, y.shape)
    p.run([x, y], [z])
    ref = x.astype(np.float32) @ y.astype(np.float32)
    assert rel_err(z, ref) < MM_TOL


def test_run_repeated_and_changing_arrays(conn):
    """run() reuses its arguments when given the same arrays again; other
    arrays, new ones in place of freed ones, another function or a released
    program are never run with the old ones."""
    p = conn.compile(TWO_FUNCTIONS)
    xs = [p.new_inputs()[0] for _ in range(3)]
    ys = [p.new_outputs()[0] for _ in range(3)]
    for k, x in enumerate(xs):
        x[...] = (np.arange(16) - 8 + k).reshape(x.shape)
    for rnd in range(2):
        for k in (0, 0, 1, 1, 0, 2):
            ys[k][...] = np.nan
            p.run([xs[k]], [ys[k]])
            np.testing.assert_array_equal(ys[k], np.maximum(xs[k], 0))
        p.run([xs[1]], [ys[1]], function="twice")
        np.testing.assert_array_equal(ys[1], 2 * xs[1])
        p.run([xs[1]], [ys[1]])
        np.testing.assert_array_equal(ys[1], np.maximum(xs[1], 0))
    for _ in range(20):   # freed arrays and new ones (maybe at the same id)
        x, = p.new_inputs()
        y, = p.new_outputs()
        x[...] = np.random.default_rng().uniform(-1, 1, x.shape)
        p.run([x], [y])
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        del x, y
        gc.collect()
    p.release()
    with pytest.raises(aneshare.ClosedError):
        p.run([xs[0]], [ys[0]])


@pytest.mark.parametrize("how", ["release", "close"])
def test_release_or_close_while_other_threads_run(daemon, how):
    """A program released (or its connection closed) by one thread while
    others run it: each of them ends with ClosedError, none runs a freed
    program, and the arrays stay usable."""
    c = aneshare.connect(daemon.sock, "race")
    p = c.compile(TINY)
    counts = [0, 0, 0]
    ends = [None, None, None]

    def runner(k):
        x, = p.new_inputs()
        y, = p.new_outputs()
        x[...] = np.arange(-8, 8).reshape(x.shape) + k
        try:
            while True:
                p.run([x], [y]) if counts[k] % 2 else p.run([x], [y], function=0)
                assert np.array_equal(y, np.maximum(x, 0))
                counts[k] += 1
        except BaseException as e:
            ends[k] = e
    threads = [threading.Thread(target=runner, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: min(counts) >= 30 or any(ends), "the runners to get going")
    if how == "release":
        p.release()
    else:
        c.close()
    for t in threads:
        t.join()
    assert all(isinstance(e, aneshare.ClosedError) for e in ends), ends
    if how == "release":
        assert c.compile(TINY).key == p.key   # the connection carries on
    c.close()


def test_program_context_manager_releases(conn):
    mil = square_mm(8, "ctx_release")
    key = program_key(mil)

    def refs():
        return [e["refs"] for e in conn.status()["program_list"] if e["key"] == key]
    with conn.compile(mil) as p:
        assert p.key == key and refs() == [1]
        assert "main" not in repr(p) and "ctx_release" in repr(p)
    wait_until(lambda: refs() == [], "the program to be freed")
    with pytest.raises(aneshare.ClosedError):
        p.run([], [])


@pytest.mark.skipif("aneshare_program_compile_model" not in aneshare._lib.HAVE,
                    reason="this libaneshare has no aneshare_program_compile_model")
def test_mlmodelc_folder_goes_through_the_library(conn, tmp_path, monkeypatch):
    """A folder is compiled by aneshare_program_compile_model: its weight
    files go by descriptor, and a symbolic link leaving the folder is
    refused, as the library refuses it."""
    w = np.full((4, 4), 0.25, np.float16)
    mil = weights_mil(["weight.bin"])
    x = np.ones((4, 4), np.float16)
    folder = tmp_path / "m.mlmodelc"
    (folder / "weights").mkdir(parents=True)
    (folder / "model.mil").write_text(mil)
    (folder / "weights" / "weight.bin").write_bytes(weight_blob(w))

    def no_inline(*a):
        raise AssertionError("the folder was compiled without the library's call")
    monkeypatch.setattr(aneshare._core.lib, "aneshare_program_compile", no_inline)
    np.testing.assert_array_equal(conn.compile(folder)(x=x), x + w)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(weight_blob(w))
    (folder / "weights" / "weight.bin").unlink()
    (folder / "weights" / "weight.bin").symlink_to(outside)
    with pytest.raises(aneshare.AneshareError):
        conn.compile(folder)
