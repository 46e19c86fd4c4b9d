# SPDX-License-Identifier: MIT
"""Surfaces shared between connections by token (Surface.export,
Connection.import_token) against a real daemon: a model computed through an
imported surface, read-only imports as read-only numpy arrays that cannot be
run outputs, tokens checked before they are sent, dead tokens, status."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import aneshare
from conftest import MM_PATH, mm_reference, rel_err


def test_a_model_computes_through_an_imported_surface(daemon):
    with aneshare.connect(daemon.sock, "py-exporter") as p, \
            aneshare.connect(daemon.sock, "py-importer") as q:
        prog = q.compile(MM_PATH)
        t_in, = prog.inputs
        x = p.array(t_in.dtype, t_in.shape)
        x[...] = np.random.default_rng(1).uniform(-1, 1, x.shape).astype(np.float16)
        token = aneshare.surface_of(x).export()
        assert re.fullmatch(r"[0-9a-f]{64}", token)

        s = q.import_token(token)
        assert isinstance(s, aneshare.Surface) and not s.read_only
        assert s.size >= x.nbytes and s.id != 0
        xq = s.array(t_in.dtype, t_in.shape)
        assert xq.flags.writeable
        assert np.array_equal(xq, x), "the importer sees the exporter's memory"
        x[0, 0, 0, 0] = 7
        assert xq[0, 0, 0, 0] == 7, "one memory, two mappings"

        out, = prog.new_outputs()
        prog.run([xq], [out])
        assert rel_err(out, mm_reference(x)) < 1e-2

        with pytest.raises(aneshare.NoSuchSurfaceError):
            q.import_token(token)   # one use (the default)

        # the exporter lets go; the import stays valid
        del x
        xq[...] = np.random.default_rng(2).uniform(-1, 1, xq.shape).astype(np.float16)
        prog.run([xq], [out])
        assert rel_err(out, mm_reference(xq)) < 1e-2


def test_a_read_only_import_is_a_read_only_array_and_no_run_output(daemon):
    with aneshare.connect(daemon.sock, "py-exporter") as p, \
            aneshare.connect(daemon.sock, "py-reader") as q:
        prog = q.compile(MM_PATH)
        t_in, = prog.inputs
        x = p.array(t_in.dtype, t_in.shape)
        x[...] = np.random.default_rng(3).uniform(-1, 1, x.shape).astype(np.float16)
        s = q.import_token(aneshare.surface_of(x).export(read_only=True, uses=2, ttl_ms=60000))
        assert s.read_only
        xr = s.array(t_in.dtype, t_in.shape)
        assert not xr.flags.writeable
        with pytest.raises(ValueError):
            xr[0, 0, 0, 0] = 1
        with pytest.raises(ValueError):
            xr.setflags(write=True)   # numpy refuses: the memory is read-only

        out, = prog.new_outputs()
        prog.run([xr], [out])   # an input: fine
        assert rel_err(out, mm_reference(x)) < 1e-2

        before = xr.copy()
        y = q.array(t_in.dtype, t_in.shape)
        y[...] = before
        w = s.array(t_in.dtype, t_in.shape)
        with pytest.raises(aneshare.InvalidParamsError, match="read-only"):
            prog.run([y], [w])   # an output: refused
        assert np.array_equal(xr, before)


def test_tokens_are_checked_here_and_dead_ones_are_no_such_surface(daemon):
    with aneshare.connect(daemon.sock, "py-checker") as c:
        for bad in ["", "00", "0" * 63, "0" * 65, "A" * 64, "g" * 64, 123, None]:
            with pytest.raises(ValueError):
                c.import_token(bad)
        with pytest.raises(aneshare.NoSuchSurfaceError) as ei:
            c.import_token("0123456789abcdef" * 4)
        assert ei.value.name == "no_such_surface"
        arr = c.surface(4096)
        with pytest.raises(ValueError):
            aneshare.surface_of(arr).export(uses=0)
        with pytest.raises(ValueError):
            aneshare.surface_of(arr).export(ttl_ms=1 << 32)
        token = aneshare.surface_of(arr).export()
        del arr   # the only handle: released, the token dies with it
        import gc
        gc.collect()
    with aneshare.connect(daemon.sock, "py-late") as c:
        with pytest.raises(aneshare.NoSuchSurfaceError):
            c.import_token(token)


def test_status_lists_shared_surfaces_and_holders(daemon):
    with aneshare.connect(daemon.sock, "py-cam") as p, \
            aneshare.connect(daemon.sock, "py-model") as q:
        a = p.surface(8192)
        s = q.import_token(aneshare.surface_of(a).export(read_only=True, uses=2))
        st = q.status()
        mine = [e for e in st["shared"] if {h["name"] for h in e["holders"]} == {"py-cam", "py-model"}]
        assert len(mine) == 1, st["shared"]
        e = mine[0]
        assert e["size"] == 8192 and e["tokens"] == 1 and e["holders_total"] == 2
        ro = {h["name"]: h["read_only"] for h in e["holders"]}
        assert ro == {"py-cam": False, "py-model": True}
        assert all(h["pid"] == os.getpid() for h in e["holders"])
        assert st["shared_total"] >= 1
        del s


def test_import_in_another_process(daemon, tmp_path):
    """The token crosses to a child process as text; the child's writes are
    seen here (read-write import)."""
    with aneshare.connect(daemon.sock, "py-parent") as p:
        a = p.array(np.float32, (256,))
        a[...] = 0
        token = aneshare.surface_of(a).export()
        code = ("import sys, numpy as np, aneshare\n"
                "with aneshare.connect(sys.argv[1], 'py-child') as c:\n"
                "    s = c.import_token(sys.argv[2])\n"
                "    v = s.array(np.float32, (256,))\n"
                "    v[...] = np.arange(256, dtype=np.float32)\n")
        env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(aneshare.__file__), ".."))
        subprocess.run([sys.executable, "-c", code, daemon.sock, token], check=True, env=env,
                       timeout=60)
        assert np.array_equal(a, np.arange(256, dtype=np.float32))
