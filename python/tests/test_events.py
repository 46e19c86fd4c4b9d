# SPDX-License-Identifier: MIT
"""Events (Connection.event, import_event, Event; runs with wait= and signal=)
against a real daemon: values, sharing by token, a run submitted ahead that
waits for another connection's event and reads what was written before the
signal, chains, closing, what a reconnect does, and the checks made before
anything is sent."""
import asyncio
import os
import threading

import numpy as np
import pytest

import aneshare
from conftest import MM_PATH, mm_reference, rel_err


def test_values_and_signals(conn):
    e = conn.event()
    assert isinstance(e, aneshare.Event) and not e.imported
    assert e.value == 0
    e.signal(3)
    assert e.value == 3 and e.wait(2) == 3
    with pytest.raises(aneshare.InvalidParamsError):
        e.signal(3)   # the value only grows
    with pytest.raises(TypeError):
        e.signal(1.5)
    with pytest.raises(ValueError):
        e.signal(-1)
    e.signal(2 ** 64 - 1)
    assert e.value == 2 ** 64 - 1
    e.release()
    with pytest.raises(aneshare.ClosedError):
        e.signal(4)


def test_shared_by_token_and_closed_by_its_owner(daemon):
    with aneshare.connect(daemon.sock, "py-owner") as p, \
            aneshare.connect(daemon.sock, "py-waiter") as q:
        e = p.event()
        e.signal(1)
        token = e.export(uses=2)
        qe = q.import_event(token)
        qe2 = q.import_event(token)
        assert qe.imported and qe.value == 1
        with pytest.raises(aneshare.NoSuchEventError):
            q.import_event(token)   # used up
        with pytest.raises(ValueError):
            q.import_event("not a token")
        with pytest.raises(aneshare.InvalidParamsError):
            qe.signal(2)   # wait-only

        # a blocking wait met by a signal from another thread's connection
        t = threading.Thread(target=e.signal, args=(5,))
        t.start()
        assert qe.wait(5) == 5
        t.join()

        async def main():
            w = asyncio.ensure_future(qe2.wait_async(7))
            await asyncio.sleep(0)
            assert not w.done()
            e.signal(7)
            await asyncio.wait_for(w, 30)
        asyncio.run(main())

        st = p.status()
        assert st["events"] >= 1
        mine = [pr for pr in st["processes"] if pr["pid"] == os.getpid()]
        assert [pr["events"] for pr in mine] == [3], "one process: the owner's handle and two imports"

        e.release()   # closes at 7
        assert qe.wait(7) == 7
        with pytest.raises(aneshare.EventClosedError):
            qe.wait(8)


def test_a_run_submitted_ahead_reads_what_was_written_before_the_signal(daemon):
    with aneshare.connect(daemon.sock, "py-producer") as p, \
            aneshare.connect(daemon.sock, "py-consumer") as q:
        prog = q.compile(MM_PATH)
        t_in, = prog.inputs
        x = p.array(t_in.dtype, t_in.shape)
        x[...] = np.nan   # a run before the write gives NaNs
        xq = q.import_token(aneshare.surface_of(x).export()).array(t_in.dtype, t_in.shape)
        out, = prog.new_outputs()
        out[...] = np.nan
        written = p.event()
        qwritten = q.import_event(written.export())
        done = q.event()

        ticket = prog.submit([xq], [out], wait=[(qwritten, 1)], signal=[(done, 4)])
        assert done.value == 0
        x[...] = np.random.default_rng(3).uniform(-1, 1, x.shape).astype(np.float16)
        written.signal(1)
        ticket.wait()
        assert rel_err(out, mm_reference(x)) < 1e-2
        assert done.value == 4

        # blocking, and async, with the wait already met
        prog.run([xq], [out], wait=[(qwritten, 1)], signal=[(done, 5)])
        assert done.value == 5
        asyncio.run(prog.run_async([xq], [out], wait=[(qwritten, 1)], signal=[(done, 6)]))
        assert done.value == 6

        # the producer gives up: the parked run fails and nothing of it runs
        out[...] = np.nan
        ticket = prog.submit([xq], [out], wait=[(qwritten, 2)], signal=[(done, 9)])
        written.release()
        with pytest.raises(aneshare.EventClosedError):
            ticket.wait()
        assert np.isnan(out).all() and done.value == 6


def test_chains_and_checks(conn):
    prog = conn.compile(MM_PATH)
    x, = prog.new_inputs()
    x[...] = np.random.default_rng(4).uniform(-1, 1, x.shape).astype(np.float16)
    o1, = prog.new_outputs()
    o2, = prog.new_outputs()
    go, a = conn.event(), conn.event()
    go.signal(1)
    conn.run_chain([(prog, [x], [o1]), (prog, [x], [o2])], wait=[(go, 1)], signal=[(a, 2)])
    assert a.value == 2
    assert rel_err(o2, mm_reference(x)) < 1e-2

    with pytest.raises(ValueError):
        prog.run([x], [o1], wait=[(go, 0)] * 9)
    with pytest.raises(TypeError):
        prog.run([x], [o1], wait=[go])
    with pytest.raises(TypeError):
        prog.run([x], [o1], signal=[("e", 1)])
    with pytest.raises(aneshare.InvalidParamsError):
        prog.run([x], [o1], signal=[(a, 3), (a, 4)])   # twice in one list
    assert a.value == 2


def test_another_connections_event_is_refused(daemon):
    with aneshare.connect(daemon.sock, "py-a") as c, aneshare.connect(daemon.sock, "py-b") as d:
        prog = c.compile(MM_PATH)
        x, = prog.new_inputs()
        o, = prog.new_outputs()
        e = d.event()
        with pytest.raises(ValueError):
            prog.run([x], [o], wait=[(e, 0)])


def test_events_are_not_restored_after_a_reconnect(fresh_daemon):
    d = fresh_daemon()
    with aneshare.connect(d.sock, "py-restart") as c:
        e = c.event()
        e.signal(1)
        d.crash()
        d.start()
        c.status()   # reconnects
        assert c.reconnect_count == 1
        with pytest.raises(aneshare.EventClosedError):
            e.signal(2)
        with pytest.raises(aneshare.EventClosedError):
            e.wait(1)
        n = c.event()
        assert n.value == 0
        e.release()
