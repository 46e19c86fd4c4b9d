# SPDX-License-Identifier: MIT
"""docs/protocol.md "## Events" as a contract: the event methods, their results
and errors, typed tokens, the closing rule, runs that wait and signal (outputs
checked against references computed here), limits, status and shutdown, all
through anes_wire, a client written from the document alone."""
import os
import re
import signal
import struct
import tempfile
import time

import pytest

import anes_wire as w
from anes_wire import RpcError, f16, from_f16
from test_conformance import (GATHER, HEX64, TWO, X, compile_,
                              my_process, relu_ref, state_run, states_supported, status,
                              surfaces, twice_ref)


# --- helpers ----------------------------------------------------------------------

def create(c):
    r = c.call("event.create", {})
    assert set(r) >= {"id"} and isinstance(r["id"], int) and r["id"] >= 1, r
    return r["id"]


def signal_(c, e, v):
    assert c.call("event.signal", {"id": e, "value": v}) == {}


def value(c, e):
    """The event's value now: a wait for 0 is answered at once with it."""
    return c.call("event.wait", {"id": e, "value": 0})["value"]


def export(c, e, **kw):
    kw["id"] = e
    r = c.call("event.export", kw)
    assert HEX64.match(r["token"]) and isinstance(r["expires_ms"], int), r
    return r["token"]


def import_(c, tok):
    r = c.call("event.import", {"token": tok})
    assert isinstance(r["id"], int) and isinstance(r["value"], int), r
    return r["id"], r["value"]


def share(a, b):
    """An event made on a, imported by b: (a's owner handle, b's handle)."""
    e = create(a)
    eb, v = import_(b, export(a, e))
    assert v == value(a, e)
    return e, eb


def run_p(p, x, y, function=None, wait=(), signal=()):
    params = {"program": p, "inputs": [x.id], "outputs": [y.id]}
    if function:
        params["function"] = function
    if wait:
        params["wait"] = [{"event": e, "value": v} for e, v in wait]
    if signal:
        params["signal"] = [{"event": e, "value": v} for e, v in signal]
    return params


def answered(c, msgid):
    """Whether msgid has its response, after the daemon answered a later
    request of the connection (it read msgid's request before that one)."""
    c.wait(c.request("status", {}))
    return msgid in c.responses


def ok(c, msgid):
    err, r, fds = c.wait(msgid)
    assert err is None, err
    assert not fds
    return r


def err(c, msgid):
    e, r, fds = c.wait(msgid)
    assert e is not None and r is None and not fds, (e, r)
    return RpcError(e)


def names_value(message, v):
    return re.search(r"(?<!\d)%d(?!\d)" % v, message) is not None


SENT = f16([9.0] * 8)     # an output's contents before a run that must not run


# --- event.create ----------------------------------------------------------------

def test_event_ids_start_at_1_are_not_reused_and_have_their_own_namespace(daemon):
    with daemon.connect() as c, daemon.connect() as d:
        s = [w.create(c, 16) for _ in range(3)]
        compile_(c, TWO)
        e1 = create(c)
        assert e1 == 1, "IDs start at 1, in a namespace of their own (after 3 surfaces and a program)"
        assert create(d) == 1                      # per connection
        assert value(c, e1) == 0                   # starts at 0
        assert c.call("event.release", {"id": e1}) == {}
        e2 = create(c)
        assert e2 != e1                            # never reused
        assert c.error("event.wait", {"id": e1, "value": 0}).name == "no_such_event"
        for x in s:                                # the surfaces are untouched
            assert c.call("surface.release", {"id": x.id})["deferred"] is False
        assert value(c, e2) == 0


def test_event_create_ignores_other_keys_and_refuses_an_fd(conn):
    e = conn.call("event.create", {"value": 5, "x": [1]})["id"]
    assert value(conn, e) == 0
    fd = w.memfd(16)
    try:
        err_ = conn.error("event.create", {}, fds=[fd])
    finally:
        os.close(fd)
    assert (err_.code, err_.name) == (13, "bad_fd")


# --- event.signal / event.wait -----------------------------------------------------

def test_signal_sets_the_value_and_wait_answers_at_or_above(conn):
    e = create(conn)
    assert conn.call("event.wait", {"id": e, "value": 0}) == {"value": 0}
    signal_(conn, e, 5)
    assert conn.call("event.wait", {"id": e, "value": 3}) == {"value": 5}
    assert conn.call("event.wait", {"id": e, "value": 5}) == {"value": 5}
    # pending waits are answered by the signal that meets them, with the value then
    w6 = conn.request("event.wait", {"id": e, "value": 6})
    w9 = conn.request("event.wait", {"id": e, "value": 9})
    assert not answered(conn, w6) and not answered(conn, w9)
    signal_(conn, e, 7)
    assert ok(conn, w6) == {"value": 7}
    assert not answered(conn, w9)
    signal_(conn, e, 2**63 + 11)                # 64-bit values
    assert ok(conn, w9) == {"value": 2**63 + 11}
    signal_(conn, e, 2**64 - 1)
    assert value(conn, e) == 2**64 - 1
    # any integer encoding holds a value: the longest ones
    g = conn.call("event.create", {}, wide=True)["id"]
    assert conn.call("event.signal", {"id": g, "value": 3}, wide=True) == {}
    assert conn.call("event.wait", {"id": g, "value": 2}, wide=True) == {"value": 3}
    # the daemon reads the connection's other requests while a wait is pending
    f = create(conn)
    wf = conn.request("event.wait", {"id": f, "value": 1})
    assert status(conn)["server"] == "aneshared"
    signal_(conn, f, 1)
    assert ok(conn, wf) == {"value": 1}


def test_signal_errors(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        e, eb = share(a, b)
        signal_(a, e, 17)
        for v in (17, 3):
            x = a.error("event.signal", {"id": e, "value": v})
            assert (x.code, x.name) == (5, "invalid_params"), x
            assert names_value(x.message, 17), "the message names the current value: %r" % x.message
        assert value(a, e) == 17
        x = b.error("event.signal", {"id": eb, "value": 18})
        assert x.name == "invalid_params"
        assert "was imported: only its creator signals it" in x.message, x.message
        assert "event %d" % eb in x.message, x.message
        assert value(a, e) == 17
        x = a.error("event.signal", {"id": 4242, "value": 100})
        assert (x.code, x.name) == (21, "no_such_event")
        # IDs are at most 2^32-1: beyond, invalid_params
        assert a.error("event.signal", {"id": 2**32 - 1, "value": 100}).name == "no_such_event"
        assert a.error("event.signal", {"id": 2**32 + e, "value": 100}).name == "invalid_params"
        assert a.error("event.release", {"id": 2**32 + e}).name == "invalid_params"
        # the owner's handle is this connection's: another connection names no such event
        assert b.error("event.signal", {"id": e + 1000, "value": 100}).name == "no_such_event"
        for bad in [{}, {"id": e}, {"value": 20}, {"id": e, "value": -1}, {"id": e, "value": "20"},
                    {"id": "1", "value": 20}, {"id": e, "value": 20.0}, {"id": e, "value": None},
                    {"id": e, "value": True}]:
            assert a.error("event.signal", bad).name == "invalid_params", bad
        fd = w.memfd(16)
        x = a.error("event.signal", {"id": e, "value": 20}, fds=[fd])
        assert x.name == "bad_fd"
        x = a.error("event.signal", {}, fds=[fd])          # fds are checked before the params
        os.close(fd)
        assert x.name == "bad_fd"
        assert value(a, e) == 17
    with daemon.raw() as c:
        for m in ("event.create", "event.signal", "event.wait", "event.export", "event.import",
                  "event.release"):
            x = c.error(m, {})
            assert (x.code, x.name) == (3, "handshake"), (m, x)


def test_wait_errors(conn):
    e = create(conn)
    x = conn.error("event.wait", {"id": 4242, "value": 1})
    assert (x.code, x.name) == (21, "no_such_event")
    for bad in [{}, {"id": e}, {"value": 1}, {"id": e, "value": -1}, {"id": e, "value": "1"},
                {"id": e, "value": 1.5}]:
        assert conn.error("event.wait", bad).name == "invalid_params", bad
    fd = w.memfd(16)
    x = conn.error("event.wait", {"id": e, "value": 0}, fds=[fd])
    os.close(fd)
    assert x.name == "bad_fd"


def test_close_answers_waits_above_the_final_value_with_event_closed(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        e, eb = share(a, b)
        signal_(a, e, 41)
        pend_b = b.request("event.wait", {"id": eb, "value": 50})
        pend_a = a.request("event.wait", {"id": e, "value": 60})   # its handle goes below
        assert not answered(b, pend_b)
        assert a.call("event.release", {"id": e}) == {}
        x = err(b, pend_b)
        assert (x.code, x.name) == (22, "event_closed"), x
        assert names_value(x.message, 41), x.message
        assert "event %d " % eb in x.message, x.message        # names the event (b's handle)
        x = err(a, pend_a)                   # a wait sent keeps waiting after its release
        assert x.name == "event_closed" and names_value(x.message, 41), x
        # later waits: at once; values it reached still succeed; the handle stays valid
        x = b.error("event.wait", {"id": eb, "value": 42})
        assert (x.code, x.name) == (22, "event_closed") and names_value(x.message, 41), x
        assert b.call("event.wait", {"id": eb, "value": 41}) == {"value": 41}
        assert b.call("event.wait", {"id": eb, "value": 7}) == {"value": 41}
        # the closed event can be exported from the handle left, and imported: its value
        with daemon.connect() as c:
            ec, v = import_(c, export(b, eb))
            assert v == 41
            assert c.error("event.wait", {"id": ec, "value": 1000}).name == "event_closed"
        assert b.call("event.release", {"id": eb}) == {}
        assert b.error("event.wait", {"id": eb, "value": 0}).name == "no_such_event"


def test_a_wait_goes_on_after_its_handle_is_released(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        e, eb = share(a, b)
        pend = b.request("event.wait", {"id": eb, "value": 3})
        assert b.call("event.release", {"id": eb}) == {}
        assert not answered(b, pend)
        signal_(a, e, 4)
        assert ok(b, pend) == {"value": 4}


def test_owner_disconnect_closes_the_event(daemon):
    a = daemon.connect()
    with daemon.connect() as b:
        e, eb = share(a, b)
        signal_(a, e, 2)
        pend = b.request("event.wait", {"id": eb, "value": 3})
        a.close()
        x = err(b, pend)
        assert x.name == "event_closed" and names_value(x.message, 2), x
        assert value(b, eb) == 2


def test_pending_waits_are_not_in_flight_requests(own_daemon):
    d = own_daemon("--max-inflight", "2")
    with d.connect() as c:
        e = create(c)
        pend = [c.request("event.wait", {"id": e, "value": 1 + i}) for i in range(6)]
        # were they counted in max_inflight, this status would never be read
        assert status(c)["server"] == "aneshared"
        signal_(c, e, 6)
        for i, m in enumerate(pend):
            assert ok(c, m) == {"value": 6}, i


def test_max_event_waits(own_daemon):
    d = own_daemon("--max-event-waits", "3")
    with d.connect() as c, d.connect() as other:
        e = create(c)
        pend = [c.request("event.wait", {"id": e, "value": 10}) for _ in range(3)]
        x = c.error("event.wait", {"id": e, "value": 10})
        assert (x.code, x.name) == (9, "limit") and "max_event_waits" in x.message, x
        assert c.call("event.wait", {"id": e, "value": 0}) == {"value": 0}   # met at once
        # per connection
        eo, eo_other = share(c, other)
        om = [other.request("event.wait", {"id": eo_other, "value": 1}) for _ in range(3)]
        signal_(c, e, 10)
        for m in pend:
            assert ok(c, m) == {"value": 10}
        m = c.request("event.wait", {"id": e, "value": 11})     # room again
        signal_(c, e, 11)
        assert ok(c, m) == {"value": 11}
        signal_(c, eo, 1)
        for m in om:
            assert ok(other, m) == {"value": 1}


# --- export / import ---------------------------------------------------------------

def test_export_and_import(daemon):
    with daemon.connect() as a, daemon.connect() as b, daemon.connect() as c:
        e = create(a)
        signal_(a, e, 3)
        r = a.call("event.export", {"id": e})
        assert HEX64.match(r["token"]) and r["expires_ms"] == 30000, r
        ib = b.call("event.import", {"token": r["token"]})
        assert ib["value"] == 3 and isinstance(ib["id"], int) and ib["id"] >= 1
        # uses default 1
        x = c.error("event.import", {"token": r["token"]})
        assert (x.code, x.name) == (21, "no_such_event")
        # any holder exports; a wait-only handle's importers wait too
        ic, v = import_(c, export(b, ib["id"], uses=1))
        assert v == 3
        mb = b.request("event.wait", {"id": ib["id"], "value": 5})
        mc = c.request("event.wait", {"id": ic, "value": 4})
        signal_(a, e, 5)
        assert ok(b, mb) == {"value": 5} and ok(c, mc) == {"value": 5}
        # an import on the exporter's own connection is a wait-only handle too
        ia, v = import_(a, export(a, e))
        assert ia != e and v == 5
        x = a.error("event.signal", {"id": ia, "value": 6})
        assert x.name == "invalid_params" and "only its creator signals it" in x.message
        signal_(a, e, 6)
        assert value(a, ia) == 6
        # read_only is no param of event.export: ignored like any unknown key
        t = export(a, e, read_only=True, colour="red")
        assert import_(b, t)[1] == 6


def test_export_params_and_bounds(own_daemon):
    d = own_daemon("--max-export-ttl-ms", "1000", "--max-export-uses", "3")
    with d.connect() as a, d.connect() as b:
        e = create(a)
        assert a.call("event.export", {"id": e})["expires_ms"] == 1000       # min(30000, max)
        assert a.call("event.export", {"id": e, "uses": None, "ttl_ms": None})["expires_ms"] == 1000
        assert a.call("event.export", {"id": e, "ttl_ms": 5})["expires_ms"] == 5
        for bad in [{"ttl_ms": 0}, {"ttl_ms": 1001}, {"uses": 0}, {"uses": 4}, {"uses": "2"},
                    {"ttl_ms": -1}, {"id": "1"}, {"id": None}]:
            p = dict({"id": e}, **bad)
            x = a.error("event.export", p)
            assert x.name == "invalid_params", (bad, x)
        assert a.error("event.export", {}).name == "invalid_params"
        x = a.error("event.export", {"id": 999})
        assert (x.code, x.name) == (21, "no_such_event")
        fd = w.memfd(16)
        assert a.error("event.export", {"id": e}, fds=[fd]).name == "bad_fd"
        tok = export(a, e, uses=3)
        assert [import_(b, tok)[1] for _ in range(3)] == [0, 0, 0]
        assert b.error("event.import", {"token": tok}).name == "no_such_event"
        x = b.error("event.import", {"token": export(a, e)}, fds=[fd])
        os.close(fd)
        assert x.name == "bad_fd"
        # malformed tokens: invalid_params
        for bad in [tok.upper(), tok[:63], tok + "0", "", 5, None, b"x" * 64]:
            assert b.error("event.import", {"token": bad}).name == "invalid_params", bad
        assert b.error("event.import", {}).name == "invalid_params"


def test_event_token_expires(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        e = create(a)
        tok = export(a, e, ttl_ms=1)
        time.sleep(0.01)          # 10 ms > ttl 1 ms: nothing to wait for but the clock
        assert b.error("event.import", {"token": tok}).name == "no_such_event"


def test_event_token_dies_with_its_handle_and_connection(daemon):
    with daemon.connect() as a, daemon.connect() as b, daemon.connect() as c:
        e = create(a)
        t1 = export(a, e, uses=5)
        eb, _ = import_(b, export(a, e))
        t2 = export(b, eb, uses=5)
        # b releases its handle: its token dies, a's lives
        b.call("event.release", {"id": eb})
        assert c.error("event.import", {"token": t2}).name == "no_such_event"
        ec, _ = import_(c, t1)
        # a's connection closes: its tokens die, c's handle lives
        t3 = export(a, e, uses=5)
        t4 = export(c, ec, uses=5)
        clients = status(b)["clients"]
        a.close()
        w.poll(lambda: status(b)["clients"] == clients - 1, "the daemon to see the close")
        assert b.error("event.import", {"token": t3}).name == "no_such_event"
        assert b.error("event.import", {"token": t1}).name == "no_such_event"
        assert import_(b, t4)[1] == 0
        # the owner released (closed) its handle: its token t1 is dead (above); a
        # released owner handle kills its tokens as well
        d = create(c)
        t5 = export(c, d)
        c.call("event.release", {"id": d})
        assert b.error("event.import", {"token": t5}).name == "no_such_event"


def test_tokens_are_typed(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        s = w.create(a, 16)
        e = create(a)
        st = a.call("surface.export", {"id": s.id})["token"]
        et = export(a, e)
        x = b.error("event.import", {"token": st})
        assert (x.code, x.name) == (21, "no_such_event"), x
        x = b.error("surface.import", {"token": et})
        assert (x.code, x.name) == (6, "no_such_surface"), x
        # an unknown token was not used: each still imports as its own kind
        r, fd = b.call_fd("surface.import", {"token": st})
        os.close(fd)
        assert r["size"] == 16
        assert import_(b, et)[1] == 0


def test_event_and_surface_tokens_count_together(own_daemon):
    d = own_daemon("--max-exports-per-conn", "2", "--max-daemon-exports", "3")
    with d.connect() as a, d.connect() as b:
        s = w.create(a, 16)
        e = create(a)
        a.call("surface.export", {"id": s.id})
        t = export(a, e)
        for m, p in [("event.export", {"id": e}), ("surface.export", {"id": s.id})]:
            x = a.error(m, p)
            assert x.name == "limit" and "max_exports_per_conn" in x.message, (m, x)
        # a used-up token is no longer live
        import_(b, t)
        export(a, e)
    # (the daemon-wide limit on its own daemon, to count from zero)
    d = own_daemon("--max-daemon-exports", "3")
    with d.connect() as a, d.connect() as b:
        s = w.create(a, 16)
        e = create(a)
        a.call("surface.export", {"id": s.id})
        export(a, e)
        eb, _ = import_(b, export(a, e, uses=2))           # still live: 1 use left
        x = b.error("event.export", {"id": eb})
        assert x.name == "limit" and "max_daemon_exports" in x.message, x
        x = b.error("surface.export", {"id": w.create(b, 16).id})
        assert x.name == "limit" and "max_daemon_exports" in x.message, x


def test_a_refused_import_leaves_the_token(own_daemon):
    d = own_daemon("--max-events-per-conn", "2")
    with d.connect() as a, d.connect() as b:
        e = create(a)
        tok = export(a, e)
        mine = [create(b), create(b)]
        x = b.error("event.import", {"token": tok})
        assert (x.code, x.name) == (9, "limit") and "max_events_per_conn" in x.message, x
        b.call("event.release", {"id": mine[0]})
        eb, v = import_(b, tok)                            # uses 1: not spent by the refusal
        assert v == 0 and eb not in mine


# --- event.release ---------------------------------------------------------------

def test_event_release(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        e, eb = share(a, b)
        assert b.call("event.release", {"id": eb}) == {}
        x = b.error("event.release", {"id": eb})
        assert (x.code, x.name) == (21, "no_such_event")
        signal_(a, e, 1)                       # the owner goes on
        for bad in [{}, {"id": "1"}, {"id": -1}]:
            assert a.error("event.release", bad).name == "invalid_params", bad
        fd = w.memfd(16)
        x = a.error("event.release", {"id": e}, fds=[fd])
        os.close(fd)
        assert x.name == "bad_fd"
        assert value(a, e) == 1                # the refused release did nothing


# --- failed token imports: one count for both kinds -------------------------------

def test_failed_token_imports_of_both_kinds_close_the_connection_at_the_12th(own_daemon):
    """Counts only (the slow-down's durations are not asserted): malformed
    tokens cost nothing; the count is per connection (6 and 6 on two
    connections close neither); on one connection 11 unknown tokens, surface
    and event alternately, leave it open and the 12th closes it with a limit
    notification.  Takes the slow-downs' 12.7 s."""
    d = own_daemon()
    bogus = "%064x" % 0xdeadbeef
    owner = d.connect()
    st = owner.call("surface.export", {"id": w.create(owner, 16).id, "uses": 100})["token"]
    et = export(owner, create(owner), uses=100)

    def fail(c, i):
        """An unknown token: a live token of the other kind, or one never made."""
        if i % 2:
            x = c.error("surface.import", {"token": et if i % 4 == 1 else bogus})
            assert (x.code, x.name) == (6, "no_such_surface"), (i, x)
        else:
            x = c.error("event.import", {"token": st if i % 4 == 0 else bogus})
            assert (x.code, x.name) == (21, "no_such_event"), (i, x)
    with d.connect() as a, d.connect() as b:
        for c in (a, b):
            for i in range(6):
                fail(c, i)
        assert status(a)["server"] == "aneshared" and status(b)["server"] == "aneshared"
    with d.connect() as c:
        for i in range(11):
            fail(c, i)
            for m in ("event.import", "surface.import"):     # malformed: not counted
                assert c.error(m, {"token": bogus.upper()}).name == "invalid_params"
        assert status(c)["server"] == "aneshared"          # still open after 11
        c.request("event.import", {"token": bogus})
        notes = c.wait_closed()
        errs = [p for n, p in notes if n == "error"]
        assert len(errs) == 1 and (errs[0]["code"], errs[0]["name"]) == (9, "limit"), notes
    with d.connect() as c:                                 # the mistyped tokens were not used
        r, fd = c.call_fd("surface.import", {"token": st})
        os.close(fd)
        assert import_(c, et)[1] == 0
    owner.close()


# --- limits and status -------------------------------------------------------------

def test_hello_announces_the_event_limits(own_daemon, daemon):
    with daemon.raw() as c:
        lim = c.call("hello", {"protocol": 1})["limits"]
        assert (lim["max_events_per_conn"], lim["max_daemon_events"], lim["max_event_waits"]) \
            == (256, 4096, 64)
    d = own_daemon("--max-events-per-conn", "5", "--max-daemon-events", "6", "--max-event-waits", "7")
    with d.raw() as c:
        lim = c.call("hello", {"protocol": 1})["limits"]
        assert (lim["max_events_per_conn"], lim["max_daemon_events"], lim["max_event_waits"]) == (5, 6, 7)
    # config keys, like every limit (README: `key = value`; --config FILE)
    tmp = tempfile.mkdtemp(prefix="anes-conf-cfg-")
    cfg = os.path.join(tmp, "aneshared.conf")
    with open(cfg, "w") as f:
        f.write("max_events_per_conn = 9\nmax_daemon_events = 10\nmax_event_waits = 11\n")
    try:
        d = own_daemon("--config", cfg)
        with d.raw() as c:
            lim = c.call("hello", {"protocol": 1})["limits"]
        assert (lim["max_events_per_conn"], lim["max_daemon_events"], lim["max_event_waits"]) \
            == (9, 10, 11)
    finally:
        os.unlink(cfg)
        os.rmdir(tmp)


def test_event_handle_limits(own_daemon):
    d = own_daemon("--max-events-per-conn", "3", "--max-daemon-events", "5")
    with d.connect() as a, d.connect() as b, d.connect() as c:
        e1, e2 = create(a), create(a)
        ia, _ = import_(a, export(a, e1))              # imports count as handles
        x = a.error("event.create", {})
        assert (x.code, x.name) == (9, "limit") and "max_events_per_conn" in x.message, x
        x = a.error("event.import", {"token": export(b, create(b))})
        assert x.name == "limit" and "max_events_per_conn" in x.message, x
        # daemon-wide: events alive (a has 2, b 1)
        create(b)
        create(c)
        x = c.error("event.create", {})
        assert x.name == "limit" and "max_daemon_events" in x.message, x
        # an imported handle is no new event
        import_(c, export(a, e2))
        # a closed event is alive while a handle refers to it
        a.call("event.release", {"id": e1})
        assert c.error("event.create", {}).name == "limit"
        a.call("event.release", {"id": ia})              # the last handle: freed
        w.poll(lambda: "id" in _try_create(c), "the freed event to make room")


def _try_create(c):
    try:
        return c.call("event.create", {})
    except RpcError as e:
        assert e.name == "limit", e
        return {}


def test_status_counts_events(own_daemon):
    d = own_daemon()
    with d.connect() as a, d.connect() as b:
        st = status(a)
        assert st["events"] == 0 and my_process(st)["events"] == 0
        e1 = create(a)
        create(a)
        i1, _ = import_(b, export(a, e1))
        st = status(a)
        assert st["events"] == 2                          # events, not handles
        assert my_process(st)["events"] == 3              # handles of this process's connections
        a.call("event.release", {"id": e1})               # closed, still named by b
        st = status(a)
        assert st["events"] == 2 and my_process(st)["events"] == 2
        b.call("event.release", {"id": i1})
        w.poll(lambda: status(a)["events"] == 1, "the released event to be freed")
        assert my_process(status(a))["events"] == 1
        # a run that signals an event keeps it alive after its last handle
        p = compile_(a, TWO)["id"]
        x, y = surfaces(a, 2)
        g, gb = share(b, a)
        f = create(a)
        m = a.request("run", run_p(p, x, y, wait=[(gb, 1)], signal=[(f, 1)]))
        a.call("event.release", {"id": f})
        a.call("event.release", {"id": gb})
        st = status(a)
        assert st["events"] == 3 and my_process(st)["events"] == 2, st["events"]
        signal_(b, g, 1)
        ok(a, m)
        w.poll(lambda: status(a)["events"] == 2, "the run's event to be freed")
        a.close()                                         # its event goes; b's g stays
        w.poll(lambda: status(b)["events"] == 1, "the closed connection's event to be freed")
        assert my_process(status(b))["events"] == 1


# --- runs that wait and signal ----------------------------------------------------

@pytest.mark.parametrize("opts", [(), ("--no-lanes",), ("--worker",), ("--workers", "1")],
                         ids=["default", "no-lanes", "device-worker", "one-worker"])
def test_pipeline_of_three_connections(own_daemon, opts):
    """producer -> A (relu) -> B (twice), ordered by events only: B and A submit
    their runs ahead; the producer writes each frame and signals."""
    daemon = own_daemon(*opts)
    with daemon.connect("producer") as P, daemon.connect("A") as A, daemon.connect("B") as B:
        src = w.create(P, 16)
        e_in = create(P)
        pa = compile_(A, TWO)["id"]
        pb = compile_(B, TWO)["id"]
        r, fd = A.call_fd("surface.import", {"token": P.call("surface.export", {"id": src.id})["token"]})
        a_in = w.Surface(A, r["id"], 16, fd)
        a_ev, _ = import_(A, export(P, e_in))
        mid = w.create(A, 16)
        e_mid = create(A)
        r, fd = B.call_fd("surface.import", {"token": A.call("surface.export", {"id": mid.id})["token"]})
        b_in = w.Surface(B, r["id"], 16, fd)
        b_ev, _ = import_(B, export(A, e_mid))
        out = w.create(B, 16)
        runs0 = status(P)["runs"]
        for k in range(1, 5):
            frame = [v * k + (0.5 if k % 2 else -0.25) for v in X[:7]] + [float(-k)]
            src.write(f16([0.0] * 8))
            mb = B.request("run", run_p(pb, b_in, out, "twice", wait=[(b_ev, k)]))
            ma = A.request("run", run_p(pa, a_in, mid, wait=[(a_ev, k)], signal=[(e_mid, k)]))
            assert not answered(B, mb) and not answered(A, ma)
            assert status(P)["runs"] == runs0 + 2 * (k - 1)     # neither has run
            src.write(f16(frame))                               # the frame, after both were parked
            signal_(P, e_in, k)
            ok(A, ma)
            ok(B, mb)
            assert from_f16(mid.read()) == relu_ref(frame), k
            assert from_f16(out.read()) == twice_ref(relu_ref(frame)), k
            assert value(A, e_mid) == k


def test_a_run_signals_before_its_reply(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(a, TWO)["id"]
        x, y = surfaces(a, 2)
        x.write(f16(X))
        e, eb = share(a, b)
        f = create(a)
        pend = b.request("event.wait", {"id": eb, "value": 3})
        r = a.call("run", run_p(p, x, y, signal=[(e, 3), (f, 1)]))
        assert isinstance(r["elapsed_us"], int)
        # the reply is here: the values are set
        x_ = a.error("event.signal", {"id": e, "value": 3})
        assert x_.name == "invalid_params" and names_value(x_.message, 3), x_
        assert value(a, f) == 1
        assert ok(b, pend) == {"value": 3}
        assert from_f16(y.read()) == relu_ref(X)


def test_a_signal_raises_to_the_larger_value(conn):
    p = compile_(conn, TWO)["id"]
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    e, g = create(conn), create(conn)
    m = conn.request("run", run_p(p, x, y, wait=[(g, 1)], signal=[(e, 5)]))
    assert not answered(conn, m)
    signal_(conn, e, 7)                   # the run was accepted when e was 0
    signal_(conn, g, 1)
    ok(conn, m)
    assert value(conn, e) == 7            # max(7, 5)
    assert from_f16(y.read()) == relu_ref(X)


def test_a_chain_waits_before_its_first_step_and_signals_after_its_last(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(b, TWO)["id"]
        x, m1, y = surfaces(b, 3)
        y.write(SENT)
        e, eb = share(a, b)
        out, out_a = share(b, a)
        m = b.request("run", {"steps": [
            {"program": p, "inputs": [x.id], "outputs": [m1.id]},
            {"program": p, "function": "twice", "inputs": [m1.id], "outputs": [y.id]}],
            "wait": [{"event": eb, "value": 1}], "signal": [{"event": out, "value": 2}]})
        assert not answered(b, m)
        pend = a.request("event.wait", {"id": out_a, "value": 2})
        x.write(f16(X))
        assert y.read() == SENT
        signal_(a, e, 1)
        r = ok(b, m)
        assert r["steps"] == 2
        assert from_f16(y.read()) == twice_ref(relu_ref(X))
        assert ok(a, pend) == {"value": 2}


def test_a_failed_run_signals_nothing(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        g = compile_(a, GATHER)["id"]
        idx, out = w.create(a, 12), w.create(a, 12)
        idx.write(struct.pack("<3i", 0, 9, 0))                  # out of range: run_failed
        e, eb = share(a, b)
        pend = b.request("event.wait", {"id": eb, "value": 1})
        x = a.error("run", run_p(g, idx, out, signal=[(e, 1)]))
        assert (x.code, x.name) == (14, "run_failed")
        # parked, then failing
        f = create(a)
        m = a.request("run", run_p(g, idx, out, wait=[(f, 1)], signal=[(e, 2)]))
        signal_(a, f, 1)
        assert err(a, m).name == "run_failed"
        # a chain failing at its last step
        m = a.request("run", {"steps": [{"program": g, "inputs": [idx.id], "outputs": [out.id]}],
                              "signal": [{"event": e, "value": 3}]})
        assert err(a, m).err.get("failed_step") == 0
        assert value(a, e) == 0 and not answered(b, pend)
        signal_(a, e, 1)                     # the owner decides: the next frame
        assert ok(b, pend) == {"value": 1}
        idx.write(struct.pack("<3i", 1, 2, 3))
        a.call("run", run_p(g, idx, out, signal=[(e, 4)]))
        assert value(a, e) == 4
        assert from_f16(out.read()) == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_a_close_fails_parked_runs_with_event_closed(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(b, TWO)["id"]
        x, y, y2 = surfaces(b, 3)
        x.write(f16(X))
        y.write(SENT)
        y2.write(SENT)
        e, eb = share(a, b)
        signal_(a, e, 1)
        m_hi = b.request("run", run_p(p, x, y, wait=[(eb, 3)]))
        m_ok = b.request("run", run_p(p, x, y2, wait=[(eb, 2)]))
        f, fb = share(b, a)
        m_sig = b.request("run", run_p(p, x, y2, "twice", wait=[(eb, 5)], signal=[(f, 1)]))
        assert not answered(b, m_hi)
        signal_(a, e, 2)
        ok(b, m_ok)
        assert from_f16(y2.read()) == relu_ref(X)
        a.call("event.release", {"id": e})           # closes at 2
        for m in (m_hi, m_sig):
            x_ = err(b, m)
            assert (x_.code, x_.name) == (22, "event_closed"), x_
            assert names_value(x_.message, 2), x_.message
            assert "failed_step" not in x_.err
        assert y.read() == SENT                       # nothing of them ran
        assert from_f16(y2.read()) == relu_ref(X)
        assert value(b, f) == 0                       # and the failed run raised nothing
        # sent later: at once; a value it reached still runs
        x_ = b.error("run", run_p(p, x, y, wait=[(eb, 3)]))
        assert x_.name == "event_closed" and "failed_step" not in x_.err
        x_ = b.error("run", {"steps": [run_p(p, x, y)], "wait": [{"event": eb, "value": 3}]})
        assert x_.name == "event_closed" and "failed_step" not in x_.err
        assert y.read() == SENT
        b.call("run", run_p(p, x, y, "twice", wait=[(eb, 2)]))
        assert from_f16(y.read()) == twice_ref(X)


def test_run_event_params_are_checked_before_anything_happens(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(a, TWO)["id"]
        x, y = surfaces(a, 2)
        x.write(f16(X))
        y.write(SENT)
        own = [create(a) for _ in range(9)]
        signal_(a, own[0], 4)
        theirs, imp = share(b, a)
        base = run_p(p, x, y)
        E = lambda e, v: {"event": e, "value": v}   # noqa: E731
        cases = [
            ("invalid_params", {"wait": E(own[1], 1)}),                    # not an array
            ("invalid_params", {"wait": [E(own[1], 1)] * 1 + [5]}),       # an entry not a map
            ("invalid_params", {"signal": "x"}),
            ("invalid_params", {"wait": [E(e, 0) for e in own]}),          # 9 entries
            ("invalid_params", {"signal": [E(e, 9) for e in own]}),
            ("invalid_params", {"wait": [{"event": own[1]}]}),
            ("invalid_params", {"wait": [{"value": 1}]}),
            ("invalid_params", {"signal": [{"event": own[1], "value": "1"}]}),
            ("invalid_params", {"signal": [{"event": own[1], "value": -1}]}),
            ("invalid_params", {"wait": [{"event": "1", "value": 1}]}),
            ("invalid_params", {"wait": [E(own[1], 1), E(own[1], 2)]}),     # listed twice
            ("invalid_params", {"signal": [E(own[1], 1), E(own[1], 2)]}),
            ("no_such_event", {"wait": [E(4242, 1)]}),
            ("invalid_params", {"wait": [E(2**32 + own[1], 1)]}),              # IDs are 32-bit
            ("invalid_params", {"signal": [E(2**32 + own[1], 1)]}),
            ("no_such_event", {"signal": [E(4242, 1)]}),
            ("invalid_params", {"signal": [E(imp, 1)]}),                    # imported
            ("invalid_params", {"signal": [E(own[0], 4)]}),                 # not greater
            ("invalid_params", {"signal": [E(own[0], 2)]}),
            # a valid unmet wait does not make the run wait: it is refused as a whole
            ("invalid_params", {"wait": [E(own[1], 1)], "signal": [E(own[0], 3)]}),
            ("no_such_event", {"wait": [E(own[1], 1)], "signal": [E(4242, 3)]}),
        ]
        for name, extra in cases:
            for params in (dict(base, **extra), dict({"steps": [base, base]}, **extra)):
                x_ = a.error("run", params)
                assert x_.name == name, (extra, "steps" in params, x_)
                assert "failed_step" not in x_.err, (extra, x_)
                if extra.get("signal") == [E(own[0], 2)]:
                    assert names_value(x_.message, 4), x_.message
        assert y.read() == SENT
        assert [value(a, e) for e in own] == [4] + [0] * 8
        # wait and signal inside a step map: refused
        for k in ("wait", "signal"):
            step = dict(base, **{k: [E(own[1], 1)]})
            x_ = a.error("run", {"steps": [base, step]})
            assert x_.name == "invalid_params", (k, x_)
        # step errors first: a bad step and a bad list answer the step's error
        x_ = a.error("run", {"steps": [base, dict(base, outputs=[777])], "wait": [E(4242, 1)]})
        assert (x_.name, x_.err.get("failed_step")) == ("no_such_surface", 1), x_
        x_ = a.error("run", dict(base, outputs=[777], signal=[E(4242, 1)]))
        assert x_.name == "no_such_surface", x_
        assert y.read() == SENT
        # 8 entries each, other keys of an entry ignored, an event in both lists: fine
        r = a.call("run", dict(base, wait=[dict(E(e, 0), note="x") for e in own[1:]] + [],
                               signal=[E(e, 1) for e in own[1:9]]))
        assert isinstance(r["elapsed_us"], int)
        assert [value(a, e) for e in own] == [4] + [1] * 8
        a.call("run", dict(base, wait=[E(own[1], 1)], signal=[E(own[1], 2)]))
        assert value(a, own[1]) == 2
        assert a.call("run", dict(base, wait=[], signal=[]))["elapsed_us"] >= 0
        assert from_f16(y.read()) == relu_ref(X)


def test_parked_runs_hold_no_thread_and_not_the_connection(own_daemon):
    d = own_daemon("--workers", "1", "--no-lanes")
    with d.connect() as c:
        p = compile_(c, TWO)["id"]
        x, y0, y1, y2, z = surfaces(c, 5)
        x.write(f16(X))
        e = create(c)
        ms = [c.request("run", run_p(p, x, y, wait=[(e, 1)])) for y in (y0, y1, y2)]
        # the one worker is free and the connection's other runs go on
        for _ in range(3):
            c.call("run", run_p(p, x, z, "twice"))
        assert from_f16(z.read()) == twice_ref(X)
        me = my_process(status(c))
        assert me["jobs"] == 3, me               # parked runs are jobs of their client
        signal_(c, e, 1)
        for m, y in zip(ms, (y0, y1, y2)):
            ok(c, m)
            assert from_f16(y.read()) == relu_ref(X)
        assert my_process(status(c))["jobs"] == 0


def test_parked_runs_count_as_requests_in_flight(own_daemon):
    """max_inflight 2, two parked runs and a status: the status is read only
    once a run's response is out, so it is answered after one of them."""
    d = own_daemon("--max-inflight", "2", "--max-client-jobs", "64")   # one process: c and other
    with d.connect() as c, d.connect() as other:
        p = compile_(c, TWO)["id"]
        x, y = surfaces(c, 2)
        x.write(f16(X))
        e, eo = share(other, c)
        c.send_raw(c.frame(w.packb([0, 1, "run", run_p(p, x, y, wait=[(eo, 1)])]))
                   + c.frame(w.packb([0, 2, "run", run_p(p, x, y, wait=[(eo, 1)])]))
                   + c.frame(w.packb([0, 3, "status", {}])))
        w.poll(lambda: my_process(status(other))["jobs"] == 2, "both runs to be parked")
        signal_(other, e, 1)
        order = [c.pump()[1] for _ in range(3)]
        assert order[0] != 3, order
        assert sorted(order) == [1, 2, 3]
        assert all(c.responses[m][0] is None for m in (1, 2, 3))


def test_parked_runs_hold_their_surfaces_and_program(conn):
    p = compile_(conn, TWO)["id"]
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    e = create(conn)
    m = conn.request("run", run_p(p, x, y, wait=[(e, 1)]))
    assert conn.call("surface.release", {"id": y.id}) == {"deferred": True}
    assert conn.call("surface.release", {"id": x.id}) == {"deferred": True}
    assert conn.call("program.release", {"id": p}) == {}
    assert conn.call("event.release", {"id": e}) == {}   # closes at 0: the run fails
    x_ = err(conn, m)
    assert x_.name == "event_closed"
    f = create(conn)
    p = compile_(conn, TWO)["id"]
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    m = conn.request("run", run_p(p, x, y, "twice", wait=[(f, 1)]))
    conn.call("surface.release", {"id": y.id})
    conn.call("program.release", {"id": p})
    signal_(conn, f, 1)
    ok(conn, m)
    assert from_f16(y.read()) == twice_ref(X)          # written through the released handle


def test_many_frames_submitted_ahead(daemon):
    """The pipeline with every frame's runs submitted before the first signal
    (each frame its own surfaces): each run reads its frame, whatever thread
    meets its wait.  The producer writes frame k, then raises its event to
    k + 1: A's run k waits for k + 1.  A's runs have no order among them (runs
    of one connection are ordered only on a state), so a later frame's run may
    raise a shared value first: B's run k waits on frame k's own event, which
    only A's run k signals."""
    n = 8
    with daemon.connect("producer") as P, daemon.connect("A") as A, daemon.connect("B") as B:
        e_in = create(P)
        a_ev, _ = import_(A, export(P, e_in))
        e_mid = [create(A) for _ in range(n)]
        b_ev = [import_(B, export(A, e))[0] for e in e_mid]
        pa, pb = compile_(A, TWO)["id"], compile_(B, TWO)["id"]

        def hand(src_conn, dst_conn, s):
            tok = src_conn.call("surface.export", {"id": s.id})["token"]
            r, fd = dst_conn.call_fd("surface.import", {"token": tok})
            return w.Surface(dst_conn, r["id"], s.size, fd)
        srcs = [w.create(P, 16) for _ in range(n)]
        a_in = [hand(P, A, s) for s in srcs]
        mids = [w.create(A, 16) for _ in range(n)]
        b_in = [hand(A, B, s) for s in mids]
        outs = [w.create(B, 16) for _ in range(n)]
        mb = [B.request("run", run_p(pb, b_in[k], outs[k], "twice", wait=[(b_ev[k], 1)]))
              for k in range(n)]
        ma = [A.request("run", run_p(pa, a_in[k], mids[k], wait=[(a_ev, k + 1)],
                                     signal=[(e_mid[k], 1)])) for k in range(n)]
        frames = [[float(v * (k + 1) - k) for v in range(-4, 4)] for k in range(n)]
        for k in range(n):
            srcs[k].write(f16(frames[k]))
            signal_(P, e_in, k + 1)
        for k in range(n):
            ok(A, ma[k])
            ok(B, mb[k])
            assert from_f16(outs[k].read()) == twice_ref(relu_ref(frames[k])), k
        assert [value(B, e) for e in b_ev] == [1] * n


def test_runs_and_waits_sent_go_on_after_their_handle_is_released(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(b, TWO)["id"]
        x, y = surfaces(b, 2)
        x.write(f16(X))
        e, eb = share(a, b)
        m = b.request("run", run_p(p, x, y, wait=[(eb, 2)]))
        assert b.call("event.release", {"id": eb}) == {}
        assert b.error("run", run_p(p, x, y, wait=[(eb, 2)])).name == "no_such_event"
        signal_(a, e, 2)
        ok(b, m)
        assert from_f16(y.read()) == relu_ref(X)


def test_a_cycle_of_runs_never_starts(own_daemon):
    """"a cycle of runs waiting for each other never starts": a signal of the
    owner breaks it.  Releasing its events does not (each has a pending run
    that signals it, so neither closes): the connection's close drops them."""
    d = own_daemon()
    with d.connect() as c, d.connect() as other:
        p = compile_(c, TWO)["id"]
        x, y1, y2 = surfaces(c, 3)
        x.write(f16(X))
        y1.write(SENT)
        y2.write(SENT)
        e1, e2 = create(c), create(c)
        m1 = c.request("run", run_p(p, x, y1, wait=[(e1, 1)], signal=[(e2, 1)]))
        m2 = c.request("run", run_p(p, x, y2, "twice", wait=[(e2, 1)], signal=[(e1, 1)]))
        assert not answered(c, m1) and not answered(c, m2)
        signal_(c, e1, 1)
        ok(c, m1)
        ok(c, m2)
        assert from_f16(y1.read()) == relu_ref(X) and from_f16(y2.read()) == twice_ref(X)
        assert (value(c, e1), value(c, e2)) == (1, 1)
        base = status(other)["events"]
        e3, e4 = create(c), create(c)
        m3 = c.request("run", run_p(p, x, y1, wait=[(e3, 1)], signal=[(e4, 1)]))
        m4 = c.request("run", run_p(p, x, y2, wait=[(e4, 1)], signal=[(e3, 1)]))
        c.call("event.release", {"id": e3})
        c.call("event.release", {"id": e4})
        assert not answered(c, m3) and not answered(c, m4)
        assert status(other)["events"] == base + 2
        c.close()
        w.poll(lambda: status(other)["events"] == base - 2, "the closed connection's events to go")


# --- closing with runs that signal -------------------------------------------------

def test_an_owner_release_waits_for_its_pending_signalling_run(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(a, TWO)["id"]
        x, y = surfaces(a, 2)
        x.write(f16(X))
        e, eb = share(a, b)
        g, ga = share(b, a)                       # the run waits for b's event
        m = a.request("run", run_p(p, x, y, wait=[(ga, 1)], signal=[(e, 1)]))
        assert a.call("event.release", {"id": e}) == {}
        pend = b.request("event.wait", {"id": eb, "value": 1})
        pend2 = b.request("event.wait", {"id": eb, "value": 2})
        assert not answered(b, pend)                # not closed: a run that signals it is pending
        signal_(b, g, 1)
        ok(a, m)
        assert from_f16(y.read()) == relu_ref(X)
        assert ok(b, pend) == {"value": 1}
        x_ = err(b, pend2)                          # then closed, at 1
        assert x_.name == "event_closed" and names_value(x_.message, 1), x_
        assert b.error("event.wait", {"id": eb, "value": 2}).name == "event_closed"


def test_an_owner_disconnect_drops_its_parked_runs_and_closes(daemon):
    a = daemon.connect()
    with daemon.connect() as b:
        p = compile_(a, TWO)["id"]
        x, y = surfaces(a, 2)
        x.write(f16(X))
        y.write(SENT)
        e, eb = share(a, b)
        g, ga = share(b, a)
        a.request("run", run_p(p, x, y, wait=[(ga, 1)], signal=[(e, 1)]))
        pend = b.request("event.wait", {"id": eb, "value": 1})
        assert not answered(b, pend)
        a.sock.shutdown(2)        # a closes; its parked run is not started, so never done
        x_ = err(b, pend)
        assert x_.name == "event_closed" and names_value(x_.message, 0), x_
        signal_(b, g, 1)
        assert value(b, eb) == 0
        assert y.read() == SENT
        a.close()


def test_an_owner_disconnect_with_a_started_signalling_run(own_daemon):
    """A chain that signals has started (a gate holds its second step) when its
    connection closes: it finishes, its signal happens, then the event closes."""
    tmp = tempfile.mkdtemp(prefix="anes-conf-gate-")
    fifo = os.path.join(tmp, "gate")
    os.mkfifo(fifo)
    gate = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)       # so that the daemon's open never blocks
    try:
        try:
            d = own_daemon("--fault-inject", "run_gate=" + fifo, "--workers", "1", "--no-lanes")
        except RuntimeError as e:
            pytest.skip("no --fault-inject run_gate (a build without test hooks?): %s" % e)
        a = d.connect()
        with d.connect() as b:
            p = compile_(a, TWO)["id"]
            x, m1, y = surfaces(a, 3)
            x.write(f16(X))
            e, eb = share(a, b)
            a.request("run", {"steps": [run_p(p, x, m1), run_p(p, m1, y, "twice")],
                              "signal": [{"event": e, "value": 1}]})
            pend = b.request("event.wait", {"id": eb, "value": 1})
            pend2 = b.request("event.wait", {"id": eb, "value": 2})
            os.write(gate, b"1")                             # step 0 goes through
            w.poll(lambda: from_f16(m1.read()) == relu_ref(X), "the chain's first step")
            clients = status(b)["clients"]
            a.sock.shutdown(2)
            w.poll(lambda: status(b)["clients"] == clients - 1, "the daemon to see the close")
            assert not answered(b, pend)                    # the started chain holds the event open
            os.write(gate, b"1")                             # step 1
            assert ok(b, pend) == {"value": 1}
            assert from_f16(y.read()) == twice_ref(relu_ref(X))
            x_ = err(b, pend2)
            assert x_.name == "event_closed" and names_value(x_.message, 1), x_
            a.close()
    finally:
        os.close(gate)
        os.unlink(fifo)
        os.rmdir(tmp)


# --- states ------------------------------------------------------------------------

def test_a_parked_run_holds_back_the_later_runs_of_its_state(daemon):
    with daemon.connect() as c:
        p = states_supported(c)
        s = c.call("state.create", {"program": p})["id"]
        x1, x2, y1, y2 = surfaces(c, 4)
        x1.write(f16([1.0] * 8))
        x2.write(f16([10.0] * 8))
        e = create(c)
        m1 = c.request("run", dict(state_run(c, p, s, x1, y1), wait=[{"event": e, "value": 1}]))
        m2 = c.request("run", state_run(c, p, s, x2, y2))
        assert not answered(c, m2), "the later run of the state went before the parked one"
        assert c.call("state.release", {"id": s}) == {}      # held by the runs sent
        signal_(c, e, 1)
        ok(c, m1)
        ok(c, m2)
        assert from_f16(y1.read()) == [1.0] * 8
        assert from_f16(y2.read()) == [11.0] * 8


# --- shutdown ------------------------------------------------------------------------

def test_shutdown_answers_parked_runs_and_pending_waits(own_daemon):
    d = own_daemon()
    a = d.connect()
    b = d.connect()
    p = compile_(b, TWO)["id"]
    x, y = surfaces(b, 2)
    y.write(SENT)
    e, eb = share(a, b)
    m_run = b.request("run", run_p(p, x, y, wait=[(eb, 1)]))
    m_wait = b.request("event.wait", {"id": eb, "value": 1})
    m_own = a.request("event.wait", {"id": e, "value": 1})
    assert not answered(b, m_run) and not answered(a, m_own)
    d.proc.send_signal(signal.SIGTERM)
    for c, m in [(b, m_run), (b, m_wait), (a, m_own)]:
        x_ = err(c, m)
        assert (x_.code, x_.name) == (17, "shutting_down"), x_
    b.wait_closed()
    a.wait_closed()
    assert y.read() == SENT
    assert d.proc.wait(timeout=10) == 0
    a.close()
    b.close()


def test_shutdown_lets_a_run_in_flight_meet_a_parked_run(own_daemon):
    """SIGTERM while a run that signals is in flight (held at a gate) and
    another connection's run waits for it: the signal still meets the parked
    run, which runs; then the daemon exits 0."""
    tmp = tempfile.mkdtemp(prefix="anes-conf-gate-")
    fifo = os.path.join(tmp, "gate")
    os.mkfifo(fifo)
    gate = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            d = own_daemon("--fault-inject", "run_gate=" + fifo, "--workers", "1", "--no-lanes")
        except RuntimeError as e:
            pytest.skip("no --fault-inject run_gate (a build without test hooks?): %s" % e)
        a, b = d.connect(), d.connect()
        pa, pb = compile_(a, TWO)["id"], compile_(b, TWO)["id"]
        xa, ya = surfaces(a, 2)
        xb, yb = surfaces(b, 2)
        xa.write(f16(X))
        e, eb = share(a, b)
        mb = b.request("run", run_p(pb, ya_b(a, b, ya), yb, "twice", wait=[(eb, 1)]))
        ma = a.request("run", run_p(pa, xa, ya, signal=[(e, 1)]))
        w.poll(lambda: my_process(status(b))["jobs"] == 2, "both runs to be in the daemon")
        d.proc.send_signal(signal.SIGTERM)
        os.write(gate, b"11")
        ok(a, ma)
        ok(b, mb)
        assert from_f16(yb.read()) == twice_ref(relu_ref(X))
        a.wait_closed()
        b.wait_closed()
        assert d.proc.wait(timeout=10) == 0
        a.close()
        b.close()
    finally:
        os.close(gate)
        os.unlink(fifo)
        os.rmdir(tmp)


def ya_b(a, b, s):
    """a's surface s imported by b: b's Surface."""
    tok = a.call("surface.export", {"id": s.id})["token"]
    r, fd = b.call_fd("surface.import", {"token": tok})
    return w.Surface(b, r["id"], s.size, fd)


# --- a random mix, checked against a model ------------------------------------------

def test_random_mix_against_a_model(own_daemon):
    """Three connections, each owning events the others import; a fixed
    random sequence of signals, waits, parked runs, releases and one abrupt
    close.  Every answer must agree with a model of the values: a wait or run
    for v is answered with a value >= v that the event reached, or with
    event_closed only if the event closed below v; at the end nothing is left."""
    import random
    rnd = random.Random(20261207)
    d = own_daemon("--max-inflight", "1000", "--max-client-jobs", "1000", "--max-event-waits", "1000")
    cs = [d.connect("mix%d" % i) for i in range(3)]
    progs = [compile_(c, TWO)["id"] for c in cs]
    xs = [w.create(c, 16) for c in cs]
    ys = [w.create(c, 16) for c in cs]
    for x in xs:
        x.write(f16(X))
    ev = []          # model: owner conn, handles {conn: id}, value, closed
    for o in range(3):
        for _ in range(2):
            e = create(cs[o])
            h = {o: e}
            for j in range(3):
                if j != o:
                    h[j] = import_(cs[j], export(cs[o], e))[0]
            ev.append({"owner": o, "h": h, "v": 0, "closed": False})
    pending = []     # (conn index, msgid, event index, value, kind)
    gone = set()
    for step in range(400):
        live_conns = [i for i in range(3) if i not in gone]
        op = rnd.random()
        if step == 250:                         # one connection goes abruptly
            cs[2].sock.shutdown(2)
            gone.add(2)
            for k in ev:
                if k["owner"] == 2:
                    k["closed"] = True
            continue
        if op < 0.35:
            cand = [k for k in ev if k["owner"] in live_conns and not k["closed"]]
            if cand:
                k = rnd.choice(cand)
                k["v"] += rnd.randint(1, 3)
                signal_(cs[k["owner"]], k["h"][k["owner"]], k["v"])
        elif op < 0.95:
            i = rnd.choice(live_conns)
            ki = rnd.randrange(len(ev))
            k = ev[ki]
            if i not in k["h"]:
                continue
            v = k["v"] + rnd.randint(-1, 4)
            v = max(v, 0)
            if op < 0.65:
                m = cs[i].request("event.wait", {"id": k["h"][i], "value": v})
                pending.append((i, m, ki, v, "wait"))
            else:
                m = cs[i].request("run", run_p(progs[i], xs[i], ys[i], wait=[(k["h"][i], v)]))
                pending.append((i, m, ki, v, "run"))
        else:
            cand = [k for k in ev if k["owner"] in live_conns and not k["closed"]]
            if cand and rnd.random() < 0.3:
                k = rnd.choice(cand)
                cs[k["owner"]].call("event.release", {"id": k["h"][k["owner"]]})
                del k["h"][k["owner"]]
                k["closed"] = True
    # raise every event still open past every wait, then check every answer
    for k in ev:
        if not k["closed"]:
            k["v"] += 10
            signal_(cs[k["owner"]], k["h"][k["owner"]], k["v"])
    answers = 0
    for i, m, ki, v, kind in pending:
        if i in gone:
            continue
        e, r, _ = cs[i].wait(m)
        k = ev[ki]
        if e is None:
            if kind == "wait":
                assert v <= r["value"] <= k["v"], (kind, v, r, k)
        else:
            assert e["name"] == "event_closed" and k["closed"] and k["v"] < v, (kind, v, e, k)
            assert names_value(e["message"], k["v"]), e
        answers += 1
    assert answers > 120, answers
    for c in cs:
        c.close()
    with d.connect() as c:
        w.poll(lambda: status(c)["events"] == 0, "every event to be freed")
        st = status(c)
        assert my_process(st)["jobs"] == 0 and my_process(st)["events"] == 0, my_process(st)


def test_one_write_of_requests_is_processed_in_order(daemon):
    """Requests of one connection are processed in the order they arrive, the
    event ones too (a lane may read them): a signal pipelined before a run's
    check is seen by it, and a run parked before a signal in the same write is
    met by it."""
    with daemon.connect() as c:
        p = compile_(c, TWO)["id"]
        x, y, y2 = surfaces(c, 3)
        x.write(f16(X))
        e = create(c)
        frames = [[0, 101, "event.signal", {"id": e, "value": 5}],
                  [0, 102, "run", run_p(p, x, y2, signal=[(e, 6)])],         # 6 > 5: valid
                  [0, 104, "event.wait", {"id": e, "value": 6}],
                  [0, 105, "run", run_p(p, x, y, "twice", wait=[(e, 7)], signal=[(e, 8)])],
                  [0, 106, "event.signal", {"id": e, "value": 7}],
                  [0, 107, "event.wait", {"id": e, "value": 8}]]
        for _ in range(20):
            c.send_raw(b"".join(c.frame(w.packb(f)) for f in frames))
            assert ok(c, 101) == {}
            ok(c, 102)
            assert ok(c, 104)["value"] in (6, 7, 8)   # met by run 102's signal or by 106
            assert ok(c, 106) == {}
            ok(c, 105)
            assert ok(c, 107) == {"value": 8}
            assert from_f16(y.read()) == twice_ref(X) and from_f16(y2.read()) == relu_ref(X)
            c.call("event.release", {"id": e})
            e = create(c)
            frames = [[f[0], f[1], f[2], dict(f[3])] for f in frames]
            for f in frames:
                if "id" in f[3]:
                    f[3]["id"] = e
                for k in ("wait", "signal"):
                    for ent in f[3].get(k, []):
                        ent["event"] = e
            y.write(SENT)
            y2.write(SENT)


def test_a_second_sigterm_ends_parked_runs_and_waits(own_daemon):
    """A run that signals is executing (held at a gate), so the drain keeps the
    parked run and the wait it could meet; after a second SIGTERM they are
    answered with shutting_down even though the executing run, which finishes
    normally, raises the event."""
    tmp = tempfile.mkdtemp(prefix="anes-conf-gate-")
    fifo = os.path.join(tmp, "gate")
    os.mkfifo(fifo)
    gate = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            d = own_daemon("--fault-inject", "run_gate=" + fifo, "--workers", "1", "--no-lanes")
        except RuntimeError as e:
            pytest.skip("no --fault-inject run_gate (a build without test hooks?): %s" % e)
        a, b = d.connect(), d.connect()
        pa, pb = compile_(a, TWO)["id"], compile_(b, TWO)["id"]
        xa, ya = surfaces(a, 2)
        xb, yb = surfaces(b, 2)
        xa.write(f16(X))
        yb.write(SENT)
        e, eb = share(a, b)
        ma = a.request("run", run_p(pa, xa, ya, signal=[(e, 1)]))
        w.poll(lambda: my_process(status(b))["queued"] == 0 and my_process(status(b))["jobs"] == 1,
               "a's run to be executing")
        mb = b.request("run", run_p(pb, ya_b(a, b, ya), yb, "twice", wait=[(eb, 1)]))
        mw = b.request("event.wait", {"id": eb, "value": 1})
        assert not answered(b, mb)
        d.proc.send_signal(signal.SIGTERM)
        # signals do not queue: the second goes once the first was taken (the socket file goes)
        w.poll(lambda: not os.path.exists(d.sock), "the daemon to take the first SIGTERM")
        assert not answered(b, mb)
        d.proc.send_signal(signal.SIGTERM)
        # nothing on the wire tells that the second signal was taken: its log line
        # (the daemon names each SIGTERM it takes) is the one sync point used
        w.poll(lambda: d.logtext().count("SIGTERM") >= 2, "the daemon to take the second SIGTERM")
        os.write(gate, b"11")
        ok(a, ma)                                   # the executing run finishes normally
        assert from_f16(ya.read()) == relu_ref(X)
        for m in (mb, mw):                          # its signal does not meet them: ended
            x_ = err(b, m)
            assert (x_.code, x_.name) == (17, "shutting_down"), x_
        assert yb.read() == SENT
        a.wait_closed()
        b.wait_closed()
        assert d.proc.wait(timeout=10) == 0
        a.close()
        b.close()
    finally:
        os.close(gate)
        os.unlink(fifo)
        os.rmdir(tmp)


def _frame(k):
    return [float((k * 7 + j) % 23 - 11) for j in range(8)]


def _ring(d, idx, errors, frames=150, depth=4):
    """A producer and a consumer connection with a ring of `depth` buffers:
    the consumer submits a chain per frame ahead (waits for the producer's
    event, signals its own); the producer reuses a buffer once the consumer's
    event says the frame that used it is done."""
    try:
        with d.connect("P%d" % idx) as P, d.connect("B%d" % idx) as B:
            e, eb = share(P, B)
            f, fp = share(B, P)
            p = compile_(B, TWO)["id"]
            srcs = [w.create(P, 16) for _ in range(depth)]
            ins = [ya_b(P, B, s) for s in srcs]
            mids, outs = surfaces(B, depth), surfaces(B, depth)
            pend = {}

            def check(k):
                assert ok(B, pend.pop(k))["steps"] == 2
                got = from_f16(outs[k % depth].read())
                assert got == twice_ref(relu_ref(_frame(k))), (idx, k, got)
            for k in range(1, frames + 1):
                s = k % depth
                pend[k] = B.request("run", {"steps": [run_p(p, ins[s], mids[s]),
                                                      run_p(p, mids[s], outs[s], "twice")],
                                            "wait": [{"event": eb, "value": k}],
                                            "signal": [{"event": f, "value": k}]})
                if k > depth:
                    assert P.call("event.wait", {"id": fp, "value": k - depth})["value"] >= k - depth
                    check(k - depth)
                srcs[s].write(f16(_frame(k)))
                signal_(P, e, k)
            for k in sorted(pend):
                check(k)
            assert value(P, fp) == frames
    except BaseException as ex:     # noqa: B036 (reported by the test's thread)
        errors.append((idx, repr(ex)))


@pytest.mark.parametrize("opts", [(), ("--no-lanes",), ("--workers", "1")],
                         ids=["default", "no-lanes", "one-worker"])
def test_rings_of_buffers_in_four_threads(own_daemon, opts):
    import threading
    d = own_daemon(*opts)
    errors = []
    ths = [threading.Thread(target=_ring, args=(d, i, errors)) for i in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors, errors
    with d.connect() as c:
        st = status(c)
        assert st["runs"] == 4 * 150 * 2
        assert 0 <= st["event_runs"] <= st["runs"]      # "of runs", informational
        w.poll(lambda: status(c)["events"] == 0, "every event to be freed")
