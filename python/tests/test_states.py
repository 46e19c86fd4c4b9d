# SPDX-License-Identifier: MIT
"""States from Python (docs/protocol.md, "States"): a running sum kept in a
state the daemon holds between runs, against numpy."""
import asyncio

import numpy as np
import pytest

import aneshare

ACC = """program(1.3)
{
    func main<ios18>(state<tensor<fp16, [1, 8]>> acc, tensor<fp16, [1, 8]> x) {
        tensor<fp16, [1, 8]> read_state_0 = read_state(input = acc)[name = string("read_state_0")];
        tensor<fp16, [1, 8]> sum_0 = add(x = read_state_0, y = x)[name = string("sum_0")];
        tensor<fp16, [1, 8]> coreml_update_state_0 = coreml_update_state(state = acc, value = sum_0)[name = string("coreml_update_state_0")];
    } -> (coreml_update_state_0);
    func plain<ios18>(tensor<fp16, [1, 8]> x) {
        tensor<fp16, [1, 8]> y = add(x = x, y = x)[name = string("y")];
    } -> (y);
}
"""


def test_a_running_sum_in_two_states(conn):
    prog = conn.compile(ACC)
    f = prog.function("main")
    assert [t.name for t in f.states] == ["acc"] and f.states[0].shape == (1, 8)
    assert [t.name for t in f.inputs] == ["x"]
    assert prog.function("plain").states == ()
    a, b = prog.new_state(), prog.new_state("main")
    assert a.size == 64
    x, = prog.new_inputs()
    out, = prog.new_outputs()
    ra, rb = np.zeros((1, 8)), np.zeros((1, 8))
    rng = np.random.default_rng(7)
    for t in range(6):
        v = np.round(rng.uniform(-2, 2, (1, 8)) * 4) / 4   # exact in fp16
        x[...] = v
        prog.run([x], [out], state=a)
        ra += v
        np.testing.assert_array_equal(out.astype(np.float64), ra)
        y = prog(x=v * 2, state=b)   # the copying call
        rb += v * 2
        np.testing.assert_array_equal(y.astype(np.float64), rb)
    a.reset()
    x[...] = 1
    prog.run([x], [out], state=a)
    np.testing.assert_array_equal(out, np.ones((1, 8)))
    a.release()
    b.release()


def test_refusals_and_the_lost_state(conn):
    prog = conn.compile(ACC)
    x, = prog.new_inputs()
    out, = prog.new_outputs()
    with pytest.raises(aneshare.InvalidParamsError, match="has 1 states"):
        prog.run([x], [out])
    with pytest.raises(aneshare.InvalidParamsError, match="has no states"):
        prog.new_state("plain")
    with prog.new_state() as st:
        with pytest.raises(aneshare.InvalidParamsError, match="takes no"):
            prog.run([x], [out], function="plain", state=st)
        # submitted runs on one state happen in order
        xs = [conn.array(np.float16, (1, 8)) for _ in range(8)]
        outs = [conn.array(np.float16, (1, 8)) for _ in range(8)]
        for k, xi in enumerate(xs):
            xi[...] = k
        tickets = [prog.submit([xi], [oi], state=st) for xi, oi in zip(xs, outs)]
        for t in reversed(tickets):
            t.wait()
        for k, oi in enumerate(outs):
            np.testing.assert_array_equal(oi, np.full((1, 8), k * (k + 1) / 2))
        # a chain whose steps name the state
        conn.run_chain([(prog, [xs[1]], [outs[0]], "main", st), (prog, [xs[2]], [outs[1]], "main", st)])
        np.testing.assert_array_equal(outs[1], np.full((1, 8), 28 + 1 + 2))
    with pytest.raises(aneshare.ClosedError):
        prog.run([x], [out], state=st)


def test_state_lost_after_a_failed_run(fresh_daemon):
    d = fresh_daemon("--fault-inject", "run_fail=main")
    with aneshare.connect(d.sock, "pytest-states") as c:
        prog = c.compile(ACC)
        st = prog.new_state()
        x, = prog.new_inputs()
        out, = prog.new_outputs()
        with pytest.raises(aneshare.RunFailedError):
            prog.run([x], [out], state=st)
        with pytest.raises(aneshare.StateLostError) as e:
            prog.run([x], [out], state=st)
        assert e.value.wire_code == 20 and not e.value.retryable
        st.reset()
        with pytest.raises(aneshare.RunFailedError):
            prog.run([x], [out], state=st)


def test_async_runs_on_a_state_in_order(conn):
    prog = conn.compile(ACC)
    st = prog.new_state()
    xs = [conn.array(np.float16, (1, 8)) for _ in range(6)]
    outs = [conn.array(np.float16, (1, 8)) for _ in range(6)]
    for k, xi in enumerate(xs):
        xi[...] = k + 1

    async def main():
        await asyncio.gather(*(prog.run_async([xi], [oi], state=st) for xi, oi in zip(xs, outs)))
    asyncio.run(main())
    for k, oi in enumerate(outs):   # sent in order, so each saw the ones before
        np.testing.assert_array_equal(oi, np.full((1, 8), (k + 1) * (k + 2) / 2))
    st.release()
