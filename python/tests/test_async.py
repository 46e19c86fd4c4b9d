# SPDX-License-Identifier: MIT
"""asyncio: runs and chains in flight at once through the library's fd
(loop.add_reader), mixed with blocking calls, and a daemon dying under them."""
import asyncio
import os
import signal

import numpy as np
import pytest

import aneshare
from conftest import TWO_FUNCTIONS, square_mm
from test_api import MM_PATH, MM_TOL, fill_mm, mm_reference, rel_err


def test_gather_runs_and_chains(conn):
    p = conn.compile(MM_PATH)
    t = conn.compile(TWO_FUNCTIONS)
    pairs = []
    for i in range(16):
        x, = p.new_inputs()
        o, = p.new_outputs()
        fill_mm(x, 500 + i)
        o[...] = np.nan
        pairs.append((x, o))
    a, = t.new_inputs()
    b, = t.new_outputs()
    c, = t.new_outputs()
    a[...] = np.arange(-8, 8).reshape(a.shape)

    async def main():
        runs = [p.run_async([x], [o]) for x, o in pairs]
        chain = conn.run_chain_async([(t, [a], [b], "twice"), (t, [b], [c], "twice")])
        await asyncio.gather(chain, *runs)
        # a blocking call between async ones: their responses are still delivered
        more = [p.run_async([x], [o]) for x, o in pairs[:4]]
        conn.status()
        await asyncio.wait_for(asyncio.gather(*more), 30)
    asyncio.run(main())
    for x, o in pairs:
        assert rel_err(o, mm_reference(x)) < MM_TOL
    np.testing.assert_array_equal(c, 4 * a)


def test_async_errors(conn):
    g = conn.compile(TWO_FUNCTIONS)
    x, = g.new_inputs()
    small = conn.surface(8)

    async def main():
        with pytest.raises(aneshare.SizeMismatchError):
            await g.run_async([x], [small])
        with pytest.raises(aneshare.SizeMismatchError) as ei:
            await conn.run_chain_async([(g, [x], [x]), (g, [x], [small])])
        assert ei.value.failed_step == 1
    asyncio.run(main())


def test_async_calls_fail_when_the_daemon_dies(fresh_daemon):
    d = fresh_daemon()
    c = aneshare.connect(d.sock, "async-dies")
    p = c.compile(square_mm(512))
    x, y = p.new_inputs()
    z, = p.new_outputs()

    async def main():
        runs = [asyncio.ensure_future(p.run_async([x, y], [z])) for _ in range(4)]
        await asyncio.sleep(0)   # let them be sent
        d.crash()
        res = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)
        assert any(isinstance(r, aneshare.DisconnectedError) and r.retryable for r in res), res
        d.start()
        x[...] = np.eye(512)
        y[...] = 2
        await p.run_async([x, y], [z])   # reconnects first
        assert np.all(z == 2)
    asyncio.run(main())
    assert c.reconnect_count == 1
    c.close()


def test_requests_wait_for_room_in_the_socket(fresh_daemon):
    """More chained requests than the socket takes while the daemon is
    stopped (SIGSTOP): the library queues the rest and asks for EV_WRITE, the
    loop watches the fd for writing, and once the daemon goes on (SIGCONT)
    every request is sent and answered."""
    d = fresh_daemon()
    conn = aneshare.connect(d.sock, "backlog")
    p = conn.compile(TWO_FUNCTIONS)
    a, = p.new_inputs()
    b, = p.new_outputs()
    a[...] = np.arange(-8, 8).reshape(a.shape)
    steps = [(p, [a], [b], "twice")] * aneshare.MAX_STEPS
    n = 200   # 200 x 256 steps of about 40 bytes: far more than a socket buffer holds
    h = conn._h
    wanted_write = []

    async def main():
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            calls = [asyncio.ensure_future(conn.run_chain_async(steps)) for _ in range(n)]
            await asyncio.sleep(0)   # every call made: sent, or queued in the library
            wanted_write.append(h.writer_fd >= 0)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(*calls), 120)
        wanted_write.append(h.writer_fd >= 0)
    asyncio.run(main())
    assert wanted_write == [True, False]
    np.testing.assert_array_equal(b, 2 * a)
    assert conn.status()["runs"] >= n * aneshare.MAX_STEPS
    conn.close()
