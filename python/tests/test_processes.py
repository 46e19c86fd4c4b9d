# SPDX-License-Identifier: MIT
"""Processes: two Python processes sharing one compiled program, fork(), a
daemon restart with reconnect, finding the library."""
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aneshare
from conftest import ROOT, TINY, square_mm, wait_until
from test_api import MM_PATH, MM_TOL, fill_mm, mm_reference, rel_err

PY = sys.executable


def run_py(code, **env):
    e = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), **env)
    return subprocess.run([PY, "-c", textwrap.dedent(code)], env=e, capture_output=True,
                          text=True, timeout=60)


def test_two_processes_share_one_program(daemon):
    """The second process's compile of the same MIL is answered from the
    daemon's cache: the same key, cached, both handles counted."""
    with aneshare.connect(daemon.sock, "first") as c:
        mine = c.compile(square_mm(24, "shared_py"))
        assert not mine.cached
        r = run_py("""
            import sys, numpy as np, aneshare
            sys.path.insert(0, %r)
            from conftest import square_mm
            with aneshare.connect(%r, "second") as c:
                p = c.compile(square_mm(24, "shared_py"))
                st = c.status()
                refs = [e["refs"] for e in st["program_list"] if e["key"] == p.key]
                x, y = p.new_inputs()
                x[...] = np.eye(24); y[...] = np.arange(24 * 24).reshape(y.shape) / 64
                z, = p.new_outputs()
                p.run([x, y], [z])
                assert np.array_equal(z, y), "identity @ y"
                print(p.key, p.cached, refs[0])
            """ % (os.path.dirname(__file__), daemon.sock))
        assert r.returncode == 0, r.stderr
        key, cached, refs = r.stdout.split()
        assert key == mine.key and cached == "True" and refs == "2"
        st = c.status()
        assert [e["refs"] for e in st["program_list"] if e["key"] == mine.key] == [1]


def test_fork_child_gets_a_clear_error(daemon):
    c = aneshare.connect(daemon.sock, "parent")
    p = c.compile(TINY)
    x, = p.new_inputs()
    y, = p.new_outputs()
    x[...] = np.arange(-8, 8).reshape(x.shape)
    pid = os.fork()
    if pid == 0:   # the child: report through the exit status only
        status = 0
        try:
            try:
                p.run([x], [y])
                status = 10
            except aneshare.ForkError as e:
                if "fork" not in str(e):
                    status = 11
            for call in (c.status, lambda: c.compile(TINY), lambda: c.surface(8)):
                try:
                    call()
                    status = 12
                except aneshare.ForkError:
                    pass
            # its own connection works
            with aneshare.connect(daemon.sock, "child") as own:
                q = own.compile(TINY)
                if not np.array_equal(q(x), np.maximum(x, 0)):
                    status = 13
            # dropping the parent's objects sends nothing on the shared socket
            del p, x, y
            c.close()
            gc.collect()
        except BaseException:
            status = 14
        os._exit(status)
    _, st = os.waitpid(pid, 0)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, st
    # the parent's connection, program and arrays are untouched
    y[...] = -1
    p.run([x], [y])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert c.status()["clients"] >= 1
    c.close()


def test_daemon_restart_reconnects(fresh_daemon):
    d = fresh_daemon()
    c = aneshare.connect(d.sock, "restart")
    p = c.compile(MM_PATH)
    x, = p.new_inputs()
    out, = p.new_outputs()
    fill_mm(x, 42)
    p.run([x], [out])
    s = aneshare.surface_of(x)
    addr, old_id = s.address, s.id
    d.crash()
    d.start()
    out[...] = np.nan
    p.run([x], [out])    # reconnects first: surfaces imported again, the program recompiled
    assert c.reconnect_count == 1
    assert s.address == addr and x.__array_interface__["data"][0] == addr   # the same memory
    assert s.id != 0
    assert rel_err(out, mm_reference(x)) < MM_TOL
    st = c.status()
    assert any(e["key"] == p.key for e in st["program_list"])
    del old_id
    c.close()


def test_runs_in_flight_when_the_daemon_dies(fresh_daemon):
    """A ticket whose run was in flight fails with DisconnectedError (retryable);
    the next call reconnects."""
    d = fresh_daemon()
    c = aneshare.connect(d.sock, "inflight")
    p = c.compile(square_mm(512))
    x, y = p.new_inputs()
    z, = p.new_outputs()
    tickets = [p.submit([x, y], [z]) for _ in range(4)]
    d.crash()
    errors = []
    for t in tickets:
        try:
            t.wait()
        except aneshare.DisconnectedError as e:
            errors.append(e)
    assert errors, "the daemon died with runs in flight"
    e = errors[0]
    assert e.retryable and e.name == "disconnected" and e.wire_code is None
    d.start()
    x[...] = np.eye(512)
    y[...] = 0.5
    p.run([x, y], [z])
    assert np.all(z == 0.5) and c.reconnect_count == 1
    c.close()


def test_reconnect_off_gives_connection_reset(fresh_daemon):
    d = fresh_daemon()
    c = aneshare.connect(d.sock, "noreconnect")
    c.set_reconnect(False)
    p = c.compile(TINY)
    x, = p.new_inputs()
    y, = p.new_outputs()
    d.crash()
    with pytest.raises(aneshare.OSFailure) as ei:
        p.run([x], [y])
    assert ei.value.errno == 104 and not ei.value.retryable   # ECONNRESET
    c.close()



def test_library_not_found_names_both_ways(tmp_path):
    r = run_py("import aneshare", ANESHARE_LIBRARY=str(tmp_path / "libaneshare.so"))
    assert r.returncode != 0
    assert "LibraryNotFoundError" in r.stderr and "ANESHARE_LIBRARY=" in r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("ANESHARE_LIBRARY", "LD_LIBRARY_PATH")}
    env["PYTHONPATH"] = os.path.join(ROOT, "python")
    r = subprocess.run([PY, "-c", "import aneshare"], env=env, capture_output=True, text=True,
                       timeout=60)
    if r.returncode == 0:
        pytest.skip("a libaneshare is installed on this machine: the search found it")
    assert "LibraryNotFoundError" in r.stderr
    assert "ANESHARE_LIBRARY=" in r.stderr and "install" in r.stderr


def test_library_of_another_kind_is_refused(tmp_path):
    r = run_py("import aneshare", ANESHARE_LIBRARY="libc.so.6")
    assert r.returncode != 0 and "is not a libaneshare" in r.stderr


def test_connection_closed_in_other_process_frees_daemon_side(daemon):
    """The daemon lets go of an exited process's connection and surface.  The
    child's own line in status (by its pid) is checked, never the daemon's
    total, which other tests' connections move as they come and go."""
    obs = aneshare.connect(daemon.sock, "observer")
    r = run_py("""
        import os, aneshare
        c = aneshare.connect(%r, "short")
        a = c.surface(1 << 20)
        a[:] = 1
        me = [p for p in c.status()["processes"] if p["pid"] == os.getpid()]
        print(os.getpid(), len(me), me[0]["connections"], me[0]["surfaces"], me[0]["surface_bytes"])
        """ % daemon.sock)
    assert r.returncode == 0, r.stderr
    pid, lines, conns, surfaces, surface_bytes = map(int, r.stdout.split())
    assert (lines, conns, surfaces) == (1, 1, 1) and surface_bytes >= 1 << 20

    def child_listed():
        return [p for p in obs.status()["processes"] if p["pid"] == pid]
    wait_until(lambda: not child_listed(), "the exited client to go")
    obs.close()
