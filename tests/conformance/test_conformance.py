# SPDX-License-Identifier: MIT
"""docs/protocol.md as a contract: every method, result and error it documents,
checked through anes_wire (a client written from the document alone) against
a real aneshared. Run results are compared with references computed here."""
import fcntl
import hashlib
import mmap
import os
import re
import signal
import struct
import threading
import time

import pytest

import anes_wire as w
from anes_wire import RpcError, f16, from_f16, round16

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "docs", "protocol.md")

T8 = "tensor<fp16, [1, 1, 1, 8]>"


def prog(*funcs):
    return "program(1.3)\n{\n" + "".join(funcs) + "}\n"


def func(name, body, out="y", args="%s x" % T8):
    return "    func %s<ios18>(%s) {\n%s    } -> (%s);\n" % (name, args, body, out)


RELU = "        %s y = relu(x = x)[name = string(\"y\")];\n" % T8
TWICE = "        %s y = add(x = x, y = x)[name = string(\"y\")];\n" % T8
NEG = "        %s y = sub(x = x, y = x)[name = string(\"z\")];\n" % T8   # always 0

TWO = prog(func("main", RELU), func("twice", TWICE))
NO_MAIN = prog(func("b", RELU), func("a", TWICE))

GATHER = prog("""    func main<ios18>(tensor<int32, [3]> idx) {
        tensor<fp16, [4, 2]> table = const()[name = string("table"), val = tensor<fp16, [4, 2]>([1, 2, 3, 4, 5, 6, 7, 8])];
        int32 ax = const()[name = string("ax"), val = int32(0)];
        tensor<fp16, [3, 2]> y = gather(x = table, indices = idx, axis = ax)[name = string("y")];
    } -> (y);
""")

WEIGHTED = prog(func("main", """        %s w = const()[name = string("w"), val = %s(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];
        %s y = add(x = x, y = w)[name = string("y")];
""" % (T8, T8, T8)))

DTYPES = prog(func("main", """        tensor<fp32, [2, 3]> y = relu(x = a)[name = string("y")];
        tensor<int32, [4]> z = add(x = b, y = b)[name = string("z")];
""", out="y, z", args="tensor<fp32, [2, 3]> a, tensor<int32, [4]> b"))

X = [-2.0, -0.5, 0.0, 0.25, 1.0, 1.5, 3.0, -65504.0]


def relu_ref(xs):
    return [round16(max(v, 0.0)) for v in xs]


def twice_ref(xs):
    return [round16(v + v) for v in xs]


def blob(values):
    """A Core ML weight blob (docs/mil.md, Weight files) holding one fp16 tensor."""
    data = f16(values)
    head = struct.pack("<II", 1, 2) + bytes(56)
    meta = struct.pack("<IIQQQ", 0xDEADBEEF, 1, len(data), 128, 0) + bytes(32)
    return head + meta + data


def program_key(mil, weights):
    """The key as docs/protocol.md defines it."""
    h = hashlib.sha256()
    mb = mil.encode()
    h.update(b"aneshare-program-v1\0" + struct.pack(">Q", len(mb)) + mb)
    for path in sorted(p.encode() for p in weights):
        data = weights[path.decode()]
        h.update(struct.pack(">Q", len(path)) + path + struct.pack(">Q", len(data)) + data)
    return h.hexdigest()


def compile_(c, mil, **params):
    params["mil"] = mil
    return c.call("program.compile", params)


def surfaces(c, n, size=16):
    return [w.create(c, size) for _ in range(n)]


def run(c, program, inputs, outputs, function=None):
    p = {"program": program, "inputs": [s.id for s in inputs], "outputs": [s.id for s in outputs]}
    if function is not None:
        p["function"] = function
    return c.call("run", p)


def status(c):
    return c.call("status", {})


def my_process(st):
    [p] = [p for p in st["processes"] if p["pid"] == os.getpid()]
    return p


def expect_protocol_close(c):
    """The daemon sends [2, "error", {code 1, name protocol, message}] and closes."""
    notes = c.wait_closed()
    assert notes, "closed without an error notification"
    method, params = notes[-1]
    assert method == "error"
    assert params["code"] == 1 and params["name"] == "protocol", params
    assert isinstance(params["message"], str) and params["message"]
    return params


def doc_section(title):
    text = open(DOC, encoding="utf-8").read()
    i = text.index(title)
    j = text.find("\n## ", i + len(title))
    return text[i:j if j > 0 else len(text)]


def doc_table_rows(section):
    """(first cell, second cell) of each row of the section's tables."""
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [x.strip() for x in line.strip().strip("|").split("|")]
            rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
    return rows


# --- the codec itself, against the msgpack spec's encodings --------------------

@pytest.mark.parametrize("value,encoded", [
    (None, "c0"), (False, "c2"), (True, "c3"),
    (0, "00"), (127, "7f"), (128, "cc80"), (255, "ccff"), (256, "cd0100"),
    (65535, "cdffff"), (65536, "ce00010000"), (2**32 - 1, "ceffffffff"),
    (2**32, "cf0000000100000000"), (2**64 - 1, "cfffffffffffffffff"),
    (-1, "ff"), (-32, "e0"), (-33, "d0df"), (-128, "d080"), (-129, "d1ff7f"),
    (-32768, "d18000"), (-32769, "d2ffff7fff"), (-2**31, "d280000000"),
    (-2**31 - 1, "d3ffffffff7fffffff"), (1.5, "cb3ff8000000000000"),
    ("", "a0"), ("a" * 31, "bf" + "61" * 31), ("a" * 32, "d920" + "61" * 32),
    ("a" * 256, "da0100" + "61" * 256), (b"\x01", "c40101"), (b"\0" * 256, "c50100" + "00" * 256),
    ([], "90"), ([0] * 15, "9f" + "00" * 15), ([0] * 16, "dc0010" + "00" * 16),
    ({}, "80"), ({"a": 1}, "81a16101"),
    ({str(i): 0 for i in range(16)}, "de0010" + "".join(w.packb(str(i)).hex() + "00" for i in range(16))),
    (w.Ext(1, b"\xaa"), "d401aa"), (w.Ext(-1, b"\xaa" * 3), "c703ffaaaaaa"),
])
def test_codec_matches_the_msgpack_spec(value, encoded):
    assert w.packb(value).hex() == encoded
    assert w.unpackb(bytes.fromhex(encoded)) == value
    assert w.unpackb(w.packb(value, wide=True)) == value


def test_codec_reads_every_family():
    # the long forms the encoder writes only in wide mode, float 32, str 8 of a short string
    assert w.unpackb(bytes.fromhex("ca3fc00000")) == 1.5
    assert w.unpackb(bytes.fromhex("d90161")) == "a"
    assert w.unpackb(bytes.fromhex("db00000001" + "61")) == "a"
    assert w.unpackb(bytes.fromhex("c60000000161")) == b"a"
    assert w.unpackb(bytes.fromhex("dd0000000101")) == [1]
    assert w.unpackb(bytes.fromhex("df00000001a16102")) == {"a": 2}
    assert w.unpackb(bytes.fromhex("d000")) == 0 and w.unpackb(bytes.fromhex("cf0000000000000005")) == 5
    for bad in ["c1", "92 01", "a2 61", "c4 05 00", "dc ff ff", "81 a1 61", "82a16101a16102", "0000"]:
        with pytest.raises(w.MsgpackError):
            w.unpackb(bytes.fromhex(bad.replace(" ", "")))


# --- handshake -------------------------------------------------------------------

def test_hello_result_and_every_documented_limit(daemon):
    c = daemon.raw()
    r = c.call("hello", {"protocol": 1, "client": "conformance"})
    assert r["protocol"] == 1 and r["server"] == "aneshared" and r["backend"] == "cpu"
    assert isinstance(r["version"], str) and re.match(r"\d+\.\d+\.\d+", r["version"])
    limits = r["limits"]
    names = set()
    for cell, _ in doc_table_rows(doc_section("## Limits")):
        names.update(re.findall(r"`((?:max|drop|hello|frame)_[a-z_]+)`", cell.split("(")[0]))
    assert len(names) >= 45, names
    missing = sorted(n for n in names if n not in limits)
    assert not missing, "hello limits lack %s" % missing
    extra = sorted(set(limits) - names)
    assert not extra, "hello announces limits the doc's Limits table lacks: %s" % extra
    for n in names:
        assert isinstance(limits[n], int) and limits[n] >= 0, (n, limits[n])
    assert limits["max_fds_per_frame"] == 4 and limits["max_hello_frame"] == 65536
    assert limits["max_export_ttl_ms"] == 600000 and limits["max_export_uses"] == 1024
    c.close()


def test_hello_announces_the_configured_limits(own_daemon):
    d = own_daemon("--max-inflight", "7", "--max-frame", "1M", "--max-export-uses", "3")
    with d.raw() as c:
        lim = c.call("hello", {"protocol": 1})["limits"]
        assert (lim["max_inflight"], lim["max_frame"], lim["max_export_uses"]) == (7, 1 << 20, 3)


def test_hello_errors(daemon):
    with daemon.raw() as c:
        e = c.error("status", {})
        assert (e.code, e.name) == (3, "handshake")          # before hello; stays open
        assert c.error("hello", {"protocol": 2}).name == "version"
        assert c.error("hello", {"protocol": 2}).code == 2
        assert c.error("hello", {}).name == "invalid_params"
        assert c.error("hello", {"protocol": "1"}).name == "invalid_params"
        assert c.error("hello", {"protocol": 1, "client": "x" * 129}).name == "invalid_params"
        assert c.error("hello", {"protocol": 1, "priority": "urgent"}).name == "invalid_params"
        assert c.error("hello", {"protocol": 1, "priority": "interactive"}).name == "invalid_params"
        c.call("hello", {"protocol": 1, "client": "x" * 128, "priority": "background"})
        assert c.error("hello", {"protocol": 1}).name == "handshake"
        assert status(c)["server"] == "aneshared"


# --- messages ----------------------------------------------------------------------

def test_unknown_methods_and_msgids(conn):
    for m in ["", "nope", "surface.Create", "x" * 64]:
        e = conn.error(m, {})
        assert (e.code, e.name) == (4, "unknown_method"), m
    # msgid: the largest, echoed; the same msgid twice in a row
    for msgid in [0, 2**32 - 1, 7, 7]:
        conn.request("status", {}, msgid=msgid)
        err, r, _ = conn.wait(msgid)
        assert err is None and r["server"] == "aneshared"


def test_text_the_daemon_sends_is_utf8(daemon):
    """A client's bytes that are not UTF-8, quoted back in a message or a status
    name, arrive as valid UTF-8 ('?' for each such byte): this decoder, like any
    strict one, fails on anything else."""
    with daemon.connect() as c:
        bad = w.Raw(b"\xa4\xff\xfeok")        # fixstr of 4 bytes, not UTF-8
        c.send_raw(c.frame(w.packb([0, 1, bad, {}])))
        err, _, _ = c.wait(1)
        assert err["name"] == "unknown_method" and "??ok" in err["message"], err
        p = compile_(c, TWO)["id"]
        x = w.create(c, 16)
        step = {"program": p, "function": bad, "inputs": [x.id], "outputs": [x.id]}
        c.send_raw(c.frame(w.packb([0, 2, "run", step])))
        err, _, _ = c.wait(2)
        assert err["name"] == "no_such_function" and "??ok" in err["message"], err
        c.send_raw(c.frame(w.packb([0, 3, "run", {"steps": [step]}])))
        err, _, _ = c.wait(3)
        assert err["failed_step"] == 0 and "??ok" in err["message"], err
        # a message cut inside a character by the daemon's length cap
        name = "\u00e9" * 2000
        e = c.error("run", {"program": p, "function": name, "inputs": [x.id], "outputs": [x.id]})
        assert e.name == "no_such_function"
        with w.Conn(daemon.sock) as named:
            named.send_raw(named.frame(w.packb([0, 1, "hello", {"protocol": 1,
                                                               "client": w.Raw(b"\xa3a\xffb")}])))
            assert named.wait(1)[0] is None
            assert "a?b" in [q["name"] for q in status(c)["processes"]]


def test_every_value_in_its_longest_encoding(conn):
    """'Integers may be sent in any msgpack integer encoding that holds the value'."""
    r, fd = conn.call_fd("surface.create", {"size": 16}, wide=True)
    os.close(fd)
    assert r["size"] == 16
    p = conn.call("program.compile", {"mil": TWO}, wide=True)["id"]
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    conn.call("run", {"program": p, "function": "twice", "inputs": [x.id], "outputs": [y.id]},
              wide=True)
    assert from_f16(y.read()) == twice_ref(X)


def test_notifications_and_responses_from_a_client_are_ignored(conn):
    conn.send_msg([2, "status", {}])
    conn.send_msg([1, 99, None, {}])
    fd = w.memfd(16, fcntl.F_SEAL_SHRINK)
    conn.send_msg([2, "surface.import", {}], fds=[fd])   # its fd is closed by the daemon
    os.close(fd)
    assert status(conn)["server"] == "aneshared"
    assert conn.notifications == []


def test_response_and_notification_shapes(conn):
    """A response is [1, msgid, error, result]: exactly one of error/result is nil."""
    mid = conn.request("status", {})
    err, r, fds = conn.wait(mid)
    assert err is None and isinstance(r, dict) and fds == []
    mid = conn.request("program.info", {"id": 12345})
    err, r, fds = conn.wait(mid)
    assert r is None and set(err) >= {"code", "name", "message"}
    assert (err["code"], err["name"]) == (7, "no_such_program")


# --- frames ------------------------------------------------------------------------

def test_frame_of_exactly_max_frame_and_one_byte_more(own_daemon):
    d = own_daemon("--max-frame", "128K")
    with d.connect() as c:
        def padded(total):
            """A status request of exactly total bytes (an ignored key pads it)."""
            n = total - len(w.packb([0, 1, "status", {"pad": ""}])) - 4   # str 8 -> str 32
            m = w.packb([0, 1, "status", {"pad": "p" * n}])
            assert len(m) == total, (len(m), total)
            return m
        c.send_raw(c.frame(padded(128 * 1024)))
        err, r, _ = c.wait(1)
        assert err is None and r["server"] == "aneshared"
        # one byte over: refused from the header alone (no payload sent)
        c.send_raw(struct.pack(">IB3s", 128 * 1024 + 1, 0, b"\0\0\0"))
        expect_protocol_close(c)


def test_frame_over_max_hello_frame_before_hello(daemon):
    with daemon.raw() as c:
        c.send_raw(struct.pack(">IB3s", 65536 + 1, 0, b"\0\0\0"))
        expect_protocol_close(c)


@pytest.mark.parametrize("bad", ["reserved", "fd_count_5", "fds_missing", "fds_left_over",
                                 "trailing", "ext", "deep", "dup_keys", "big_map", "objects",
                                 "not_array", "short_request", "long_request",
                                 "params_not_map", "method_not_str"])
def test_malformed_frames_are_protocol_errors(daemon, bad):
    c = daemon.connect()
    ok = w.packb([0, 1, "status", {}])
    if bad == "reserved":
        c.send_raw(c.frame(ok, 0, b"\0\1\0"))
    elif bad == "fd_count_5":
        fds = [w.memfd(16, fcntl.F_SEAL_SHRINK) for _ in range(5)]
        c.send_raw(c.frame(ok, 5), fds)
        for fd in fds:
            os.close(fd)
    elif bad == "fds_missing":
        c.send_raw(c.frame(ok, 1))
    elif bad == "fds_left_over":
        fd = w.memfd(16, fcntl.F_SEAL_SHRINK)
        c.send_raw(c.frame(ok, 0), [fd])
        os.close(fd)
    elif bad == "trailing":
        c.send_raw(c.frame(ok + b"\xc0"))
    elif bad == "ext":
        c.send_raw(c.frame(w.packb([0, 1, "status", {"t": w.Ext(-1, b"\0" * 4)}])))
    elif bad == "deep":
        v = 0
        for _ in range(17):
            v = [v]
        c.send_raw(c.frame(w.packb([0, 1, "status", {"d": v}])))
    elif bad == "dup_keys":
        c.send_raw(c.frame(w.packb([0, 1, "status", w.Raw(b"\x82\xa1a\x01\xa1a\x02")])))
    elif bad == "big_map":
        c.send_raw(c.frame(w.packb([0, 1, "status", {"k%d" % i: 0 for i in range(1025)}])))
    elif bad == "objects":
        c.send_raw(c.frame(w.packb([0, 1, "status", {"a": [0] * 65536}])))
    elif bad == "not_array":
        c.send_raw(c.frame(w.packb({"a": 1})))
    elif bad == "short_request":
        c.send_raw(c.frame(w.packb([0, 1, "status"])))
    elif bad == "long_request":
        c.send_raw(c.frame(w.packb([0, 1, "status", {}, 5])))
    elif bad == "params_not_map":
        c.send_raw(c.frame(w.packb([0, 1, "status", []])))
    elif bad == "method_not_str":
        c.send_raw(c.frame(w.packb([0, 1, 5, {}])))
    expect_protocol_close(c)
    c.close()
    with daemon.connect() as c2:     # the daemon is unaffected
        assert status(c2)["server"] == "aneshared"


def test_hello_timeout(own_daemon):
    d = own_daemon("--hello-timeout-ms", "50")
    with d.raw() as c:             # says nothing: a limit notification, then the close
        [(method, params)] = c.wait_closed()
        assert method == "error" and (params["code"], params["name"]) == (9, "limit"), params


def test_frame_timeout(own_daemon):
    d = own_daemon("--frame-timeout-ms", "50")
    with d.connect() as c:
        c.send_raw(c.frame(w.packb([0, 1, "status", {}]))[:5])   # part of a header
        [(method, params)] = c.wait_closed()
        assert method == "error" and params["name"] == "limit", params


def test_shutdown_closes_an_idle_connection(own_daemon):
    d = own_daemon()
    c = d.connect()
    d.proc.send_signal(signal.SIGTERM)
    assert c.wait_closed() == []         # an idle client sees the close at once
    assert d.proc.wait(timeout=10) == 0
    assert not os.path.exists(d.sock)
    c.close()


def test_fd_on_a_method_without_fds_is_bad_fd(conn):
    fd = w.memfd(16, fcntl.F_SEAL_SHRINK)
    e = conn.error("status", {}, fds=[fd])
    os.close(fd)
    assert (e.code, e.name) == (13, "bad_fd")
    assert status(conn)["server"] == "aneshared"


def test_checks_go_handshake_method_fd_params(daemon):
    fd = w.memfd(16, fcntl.F_SEAL_SHRINK)
    with daemon.raw() as c:
        assert c.error("status", {}, fds=[fd]).name == "handshake"
        assert c.error("hello", {"protocol": 1}, fds=[fd]).name == "bad_fd"
        c.hello()
        assert c.error("nope", {}, fds=[fd]).name == "unknown_method"
        assert c.error("surface.release", {"id": "x"}, fds=[fd]).name == "bad_fd"
        assert c.error("run", {}, fds=[fd]).name == "bad_fd"
    os.close(fd)


def test_fds_of_refused_requests_are_closed(daemon):
    """'Any error closes every fd that came with the request' (and notifications'
    fds): the daemon's own fd table, /proc/PID/fd, ends as it began."""
    def daemon_fds():
        return len(os.listdir("/proc/%d/fd" % daemon.proc.pid))
    with daemon.connect() as c:
        # The session's daemon may still be closing earlier tests' connections: count
        # from when this one is its only connection, or the count ends below the base.
        w.poll(lambda: status(c)["clients"] == 1, "the earlier tests' connections to close")
        before = daemon_fds()
        fds = [w.memfd(16, fcntl.F_SEAL_SHRINK) for _ in range(4)]
        assert c.error("status", {}, fds=fds[:1]).name == "bad_fd"
        assert c.error("nope", {}, fds=fds[:2]).name == "unknown_method"
        assert c.error("surface.import", {}, fds=fds[:2]).name == "bad_fd"
        unsealed = w.memfd(16)
        assert c.error("surface.import", {}, fds=[unsealed]).name == "bad_fd"
        os.close(unsealed)
        assert c.error("program.compile", {"mil": TWO, "weight_fds": ["a"]}, fds=fds[:3]).name == "bad_fd"
        assert c.error("program.compile", {"mil": "x", "weight_fds": ["a", "b", "c", "d"]},
                       fds=fds).name == "compile"
        c.send_msg([2, "surface.import", {}], fds=fds)
        assert status(c)["server"] == "aneshared"
        for fd in fds:
            os.close(fd)
        w.poll(lambda: daemon_fds() == before, "the daemon to close every fd it was sent")


# --- status ----------------------------------------------------------------------

TYPES = {"uint": int, "str": str, "map": dict, "bool": bool}


def check_type(key, doc_type, v):
    t = doc_type.split(",")[0].strip()
    if t.startswith("array"):
        assert isinstance(v, list), (key, v)
    elif t.startswith("map"):
        assert isinstance(v, dict), (key, v)
    else:
        assert t in TYPES, (key, doc_type)
        assert isinstance(v, TYPES[t]) and not (t == "uint" and (isinstance(v, bool) or v < 0)), (key, v)


def test_status_has_every_documented_field(conn):
    st = status(conn)
    sec = doc_section("### `status`")
    sec = sec[:sec.index("`worker` ([worker.md]")]
    rows = doc_table_rows(sec)
    assert len(rows) >= 25
    for cell, typ in rows:
        key = cell.strip("`")
        if "only when" in typ:
            continue
        assert key in st, "status lacks %s" % key
        check_type(key, typ, st[key])
    extra = sorted(set(st) - {cell.strip("`") for cell, _ in rows})
    assert not extra, "status has fields the doc's table lacks: %s" % extra
    assert st["server"] == "aneshared" and st["protocol"] == 1 and st["backend"] == "cpu"
    assert st["clients"] >= 1 and "worker" not in st     # the CPU backend in process
    assert set(st["input"]) >= {"bytes", "waiting", "timed_out"}
    # the entries, by their documented shapes
    shapes = dict(re.findall(r"(\w+)\s*= \{(.*?)\}\n", sec.replace("\n            ", " "), re.S))
    for name, listkey in [("total", "totals"), ("process", "processes")]:
        fields = re.findall(r'"(\w+)": (\w+)', shapes[name])
        assert fields, name
        assert st[listkey], listkey
        for e in st[listkey]:
            for k, t in fields:
                assert k in e, "%s entry lacks %s" % (listkey, k)
                check_type(k, t, e[k])
    assert {t["resource"] for t in st["totals"]} == {
        "surfaces", "surface_bytes", "fds", "programs", "program_bytes", "jobs", "input_bytes",
        "unsent_bytes"}
    me = my_process(st)
    assert me["name"] == "conformance" and me["uid"] == os.getuid()
    for u in st["users"]:
        for k in ["uid", "surfaces", "surface_bytes", "fds", "programs", "program_bytes",
                  "jobs", "input_bytes", "unsent_bytes"]:
            assert isinstance(u[k], int), (k, u)
    for p in st["programs"]:
        assert isinstance(p["key"], str) and isinstance(p["refs"], int)


def test_status_worker_map_with_a_device_worker(own_daemon):
    d = own_daemon("--worker")
    with d.connect() as c:
        wk = status(c)["worker"]
        for cell, typ in doc_table_rows(doc_section("`worker` ([worker.md]")):
            for key in re.findall(r"`(\w+)`", cell):
                assert key in wk, "status.worker lacks %s" % key
                check_type(key, typ, wk[key])
        assert wk["backend"] == "cpu" and wk["workers"] >= 1


# --- surfaces -------------------------------------------------------------------

def test_surface_create(conn, daemon):
    r, fd = conn.call_fd("surface.create", {"size": 1000})
    assert r["size"] == 1000 and isinstance(r["id"], int) and "iosurface_id" not in r
    assert os.fstat(fd).st_size == 1000
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    assert seals & want == want
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC     # MSG_CMSG_CLOEXEC
    m = mmap.mmap(fd, 1000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)                     # "The client may close the fd after mapping it"
    assert m[:] == bytes(1000)
    m.close()
    assert conn.error("surface.create", {"size": 0}).name == "invalid_params"
    assert conn.error("surface.create", {}).name == "invalid_params"
    assert conn.error("surface.create", {"size": -1}).name == "invalid_params"
    assert conn.error("surface.create", {"size": (1 << 30) + 1}).name == "invalid_params"


def test_surface_import_by_iosurface_id_on_linux(conn):
    e = conn.error("surface.import", {"iosurface_id": 5})
    assert e.name == "invalid_params"


def test_surface_ids_are_per_connection_and_not_reused(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        s = w.create(a, 16)
        assert b.error("surface.release", {"id": s.id}).name == "no_such_surface"
        assert a.call("surface.release", {"id": s.id}) == {"deferred": False}
        assert a.error("surface.release", {"id": s.id}).name == "no_such_surface"
        t = w.create(a, 16)
        assert t.id != s.id
        assert a.error("surface.release", {}).name == "invalid_params"
        assert a.error("surface.release", {"id": "1"}).name == "invalid_params"


def test_surface_import_by_fd(conn):
    p = compile_(conn, TWO)["id"]
    x = w.import_fd(conn, 16, data=f16(X))
    y = w.create(conn, 16)
    run(conn, p, [x], [y])
    assert from_f16(y.read()) == relu_ref(X)
    x.write(f16([1.0] * 8))        # the client's own memory, shared
    run(conn, p, [x], [y], "twice")
    assert from_f16(y.read()) == [2.0] * 8
    # only SHRINK is required
    z = w.import_fd(conn, 4096, seals=fcntl.F_SEAL_SHRINK)
    assert z.size == 4096


@pytest.mark.parametrize("case", ["none", "unsealed", "write_sealed", "future_write",
                                  "empty", "pipe", "file", "two"])
def test_surface_import_bad_fds(conn, case, tmp_path):
    fds = []
    if case == "unsealed":
        fds = [w.memfd(16)]
    elif case == "write_sealed":
        fds = [w.memfd(16, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)]
    elif case == "future_write":
        fds = [w.memfd(16, fcntl.F_SEAL_SHRINK | w.F_SEAL_FUTURE_WRITE)]
    elif case == "empty":
        fds = [w.memfd(0, fcntl.F_SEAL_SHRINK)]
    elif case == "pipe":
        r, wr = os.pipe()
        os.close(wr)
        fds = [r]
    elif case == "file":
        p = tmp_path / "f"
        p.write_bytes(bytes(16))
        fds = [os.open(p, os.O_RDWR)]
    elif case == "two":
        fds = [w.memfd(16, fcntl.F_SEAL_SHRINK), w.memfd(16, fcntl.F_SEAL_SHRINK)]
    e = conn.error("surface.import", {}, fds=fds)
    for fd in fds:
        os.close(fd)
    assert (e.code, e.name) == (13, "bad_fd"), e
    assert status(conn)["server"] == "aneshared"


def test_release_while_a_run_uses_the_surface_is_deferred(own_daemon):
    """One worker, no lanes: a chain of this process holds the worker while a
    second connection's run waits behind it; its surface's release answers
    deferred and the memory stays counted until that run ends."""
    d = own_daemon("--workers", "1", "--no-lanes")
    with d.connect() as busy, d.connect() as c:
        n = 192
        t = "tensor<fp16, [1, 1, %d, %d]>" % (n, n)
        mil = prog(func("main", "        bool f = const()[name = string(\"f\"), val = bool(false)];\n"
                        "        %s z = matmul(transpose_x = f, transpose_y = f, x = x, y = y)"
                        "[name = string(\"z\")];\n" % t, out="z", args="%s x, %s y" % (t, t)))
        bp = compile_(busy, mil)["id"]
        a, b = surfaces(busy, 2, 2 * n * n)
        p = compile_(c, TWO)["id"]
        x, y = surfaces(c, 2)
        x.write(f16(X))
        steps = [{"program": bp, "inputs": [a.id, a.id], "outputs": [b.id]}] * 256
        chain = busy.request("run", {"steps": steps})
        # the chain is running (this process: 1 job, none waiting for a worker)
        w.poll(lambda: (lambda m: m["jobs"] == 1 and m["queued"] == 0)(my_process(status(c))),
               "the chain to start")
        before = status(c)["surfaces"]
        frames = (c.frame(w.packb([0, 100, "run", {"program": p, "inputs": [x.id],
                                                 "outputs": [y.id]}]))
                  + c.frame(w.packb([0, 101, "surface.release", {"id": y.id}])))
        c.send_raw(frames)
        err, rel, _ = c.wait(101)
        assert err is None and rel == {"deferred": True}
        assert c.error("surface.release", {"id": y.id}).name == "no_such_surface"
        assert status(c)["surfaces"] == before          # still alive for the run
        err, r, _ = c.wait(100)
        assert err is None
        assert from_f16(y.read()) == relu_ref(X)      # the run wrote it
        w.poll(lambda: status(c)["surfaces"] == before - 1, "the released surface to be freed")
        err, r, _ = busy.wait(chain)
        assert err is None and r["steps"] == 256


def test_limits_answer_as_the_table_says(own_daemon):
    d = own_daemon("--max-surfaces", "3", "--max-programs", "2", "--max-mil-bytes", "2K",
                   "--max-weights", "1", "--max-weight-bytes", "200", "--max-surface-bytes", "64K",
                   "--max-exports-per-conn", "2")
    with d.connect() as c:
        s = [w.create(c, 16) for _ in range(3)]
        e = c.error("surface.create", {"size": 16})
        assert (e.code, e.name) == (9, "limit") and "(max_surfaces 3)" in e.message, e
        c.call("surface.release", {"id": s[2].id})
        big = w.memfd(65537, fcntl.F_SEAL_SHRINK)
        assert c.error("surface.import", {}, fds=[big]).name == "bad_fd"   # over max_surface_bytes
        os.close(big)
        assert c.error("surface.create", {"size": 65537}).name == "invalid_params"
        c.call("surface.release", {"id": w.create(c, 65536).id})
        # live tokens per connection: limit; a token used up is no longer live
        t1 = c.call("surface.export", {"id": s[0].id})["token"]
        c.call("surface.export", {"id": s[0].id})
        e = c.error("surface.export", {"id": s[1].id})
        assert e.name == "limit" and "(max_exports_per_conn 2)" in e.message, e
        with d.connect() as b:
            _, fd = b.call_fd("surface.import", {"token": t1})
            os.close(fd)
        c.call("surface.export", {"id": s[1].id})
        # programs: handles per connection; request size caps answer invalid_params
        ids = [compile_(c, TWO)["id"], compile_(c, TWO)["id"]]
        assert ids[0] != ids[1]
        e = c.error("program.compile", {"mil": TWO})
        assert e.name == "limit" and "(max_programs 2)" in e.message, e
        c.call("program.release", {"id": ids[0]})
        assert compile_(c, TWO)["id"] not in ids                    # IDs are not reused
        c.call("program.release", {"id": ids[1]})
        assert c.error("program.compile", {"mil": TWO + " " * 2048}).name == "invalid_params"
        wb = {"@model_path/weights/w.bin": blob([0.0] * 8)}         # 144 bytes
        assert c.error("program.compile", {"mil": WEIGHTED, "weights": dict(wb, b=b"x")}).name == "invalid_params"
        assert c.error("program.compile", {"mil": WEIGHTED, "weights": {
            "@model_path/weights/w.bin": blob([0.0] * 40)}}).name == "invalid_params"
        compile_(c, WEIGHTED, weights=wb)


# --- sharing -------------------------------------------------------------------------

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def test_export_and_import_by_token(daemon):
    with daemon.connect("producer") as a, daemon.connect("consumer") as b:
        s = w.create(a, 4096)
        s.write(b"hello")
        ex = a.call("surface.export", {"id": s.id})
        assert HEX64.match(ex["token"]) and ex["expires_ms"] == 30000
        r, fd = b.call_fd("surface.import", {"token": ex["token"]})
        assert r["size"] == 4096 and r["read_only"] is False and isinstance(r["id"], int)
        t = w.Surface(b, r["id"], 4096, fd)
        assert t.read(5) == b"hello"
        t.write(b"world")
        assert s.read(5) == b"world"
        # uses default 1: a second import fails
        assert b.error("surface.import", {"token": ex["token"]}).name == "no_such_surface"
        st = status(b)
        sh = [e for e in st["shared"] if e["size"] == 4096]
        assert len(sh) == 1 and sh[0]["holders_total"] == 2 and sh[0]["tokens"] == 0
        assert sorted(h["name"] for h in sh[0]["holders"]) == ["consumer", "producer"]
        # the importer's handle runs after the exporter has gone
        a.close()
        p = compile_(b, TWO)["id"]
        y = w.create(b, 16)
        t.write(f16(X))
        run(b, p, [t], [y])
        assert from_f16(y.read()) == relu_ref(X)


def test_export_params_and_bounds(own_daemon):
    d = own_daemon("--max-export-ttl-ms", "1000", "--max-export-uses", "3")
    with d.connect() as a, d.connect() as b:
        s = w.create(a, 16)
        assert a.call("surface.export", {"id": s.id})["expires_ms"] == 1000   # min(30000, max)
        r = a.call("surface.export", {"id": s.id, "uses": None, "ttl_ms": None})
        assert r["expires_ms"] == 1000
        assert a.call("surface.export", {"id": s.id, "ttl_ms": 1000})["expires_ms"] == 1000
        assert a.call("surface.export", {"id": s.id, "ttl_ms": 5})["expires_ms"] == 5
        for bad in [{"ttl_ms": 0}, {"ttl_ms": 1001}, {"uses": 0}, {"uses": 4},
                    {"read_only": 1}, {"uses": "2"}]:
            bad["id"] = s.id
            e = a.error("surface.export", bad)
            assert e.name == "invalid_params", (bad, e)
        assert a.error("surface.export", {}).name == "invalid_params"
        assert a.error("surface.export", {"id": 9999}).name == "no_such_surface"
        fd = w.memfd(16, fcntl.F_SEAL_SHRINK)
        assert a.error("surface.export", {"id": s.id}, fds=[fd]).name == "bad_fd"
        # uses = 3: three imports, then no more
        tok = a.call("surface.export", {"id": s.id, "uses": 3})["token"]
        for _ in range(3):
            _, ifd = b.call_fd("surface.import", {"token": tok})
            os.close(ifd)
        assert b.error("surface.import", {"token": tok}).name == "no_such_surface"
        # token + fd: bad_fd; a malformed token: invalid_params (no rate-limit cost)
        e = b.error("surface.import", {"token": tok}, fds=[fd])
        os.close(fd)
        assert e.name == "bad_fd"
        for bad in [tok.upper(), tok[:63], tok + "0", "", 5]:
            assert b.error("surface.import", {"token": bad}).name == "invalid_params", bad


def test_token_expires(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        s = w.create(a, 16)
        tok = a.call("surface.export", {"id": s.id, "ttl_ms": 1})["token"]
        time.sleep(0.01)           # 10 ms > ttl 1 ms: nothing to wait for but the clock
        assert b.error("surface.import", {"token": tok}).name == "no_such_surface"


def test_token_dies_with_its_handle_and_connection(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        s = w.create(a, 16)
        t1 = a.call("surface.export", {"id": s.id, "uses": 5})["token"]
        a.call("surface.release", {"id": s.id})
        assert b.error("surface.import", {"token": t1}).name == "no_such_surface"
        s2 = w.create(a, 16)
        t2 = a.call("surface.export", {"id": s2.id})["token"]
        clients = status(b)["clients"]
        a.close()
        w.poll(lambda: status(b)["clients"] == clients - 1, "the daemon to see the close")
        assert b.error("surface.import", {"token": t2}).name == "no_such_surface"


def test_read_only_import(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        p = compile_(b, TWO)["id"]
        s = w.create(a, 16)
        s.write(f16(X))
        tok = a.call("surface.export", {"id": s.id, "read_only": True})["token"]
        r, fd = b.call_fd("surface.import", {"token": tok})
        assert r["read_only"] is True
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 16, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert os.fstat(fd).st_mode & 0o777 == 0o444
        if os.geteuid() != 0:     # root has CAP_DAC_OVERRIDE
            with pytest.raises(PermissionError):
                os.open("/proc/self/fd/%d" % fd, os.O_RDWR)
        ro = w.Surface(b, r["id"], 16, fd, writable=False)
        assert from_f16(ro.read()) == X
        s.write(f16([1.0] * 8))                 # the producer still writes
        assert from_f16(ro.read()) == [1.0] * 8
        y = w.create(b, 16)
        run(b, p, [ro], [y], "twice")           # an input: fine
        assert from_f16(y.read()) == [2.0] * 8
        e = b.error("run", {"program": p, "inputs": [y.id], "outputs": [r["id"]]})
        assert e.name == "invalid_params"
        e = b.error("run", {"steps": [{"program": p, "inputs": [y.id], "outputs": [y.id]},
                                      {"program": p, "inputs": [y.id], "outputs": [r["id"]]}]})
        assert e.name == "invalid_params" and e.err.get("failed_step") == 1
        assert e.message.startswith("step 1: ")
        assert from_f16(s.read()) == [1.0] * 8   # nothing ran
        # a re-export of a read-only handle is read-only whatever is asked
        tok2 = b.call("surface.export", {"id": r["id"], "read_only": False})["token"]
        r2, fd2 = a.call_fd("surface.import", {"token": tok2})
        os.close(fd2)
        assert r2["read_only"] is True


# --- programs ------------------------------------------------------------------------

def test_compile_result_key_and_cache(daemon):
    with daemon.connect() as a, daemon.connect() as b:
        mil = TWO + "\n"            # a text no other test compiles
        r = compile_(a, mil)
        assert r["key"] == program_key(mil, {}) and HEX64.match(r["key"])
        assert r["cached"] is False and isinstance(r["id"], int)
        r2 = compile_(b, mil)
        assert r2["key"] == r["key"] and r2["cached"] is True
        st = status(a)
        [entry] = [p for p in st["programs"] if p["key"] == r["key"]]
        assert entry["refs"] == 2
        info = a.call("program.info", {"id": r["id"]})
        assert info["key"] == r["key"]
        assert [f["name"] for f in info["functions"]] == ["main", "twice"]
        fn = info["functions"][0]
        assert fn["inputs"] == [{"name": "x", "dtype": "fp16", "shape": [1, 1, 1, 8], "bytes": 16}]
        assert fn["outputs"] == [{"name": "y", "dtype": "fp16", "shape": [1, 1, 1, 8], "bytes": 16}]
        assert a.call("program.release", {"id": r["id"]}) == {}
        assert a.error("program.info", {"id": r["id"]}).name == "no_such_program"
        assert a.error("program.release", {"id": r["id"]}).name == "no_such_program"
        assert a.error("program.release", {}).name == "invalid_params"
        assert a.error("program.info", {"id": "x"}).name == "invalid_params"
        [entry] = [p for p in status(a)["programs"] if p["key"] == r["key"]]
        assert entry["refs"] == 1


def test_compile_errors(conn):
    e = conn.error("program.compile", {"mil": "program(1.3)\n{\n    func main<ios18>(\n"})
    assert (e.code, e.name) == (10, "compile") and re.match(r"line \d+: ", e.message), e
    bad = prog(func("main", "        %s y = hard_swish(x = x)[name = string(\"y\")];\n" % T8))
    e = conn.error("program.compile", {"mil": bad})
    assert (e.code, e.name) == (11, "unsupported") and "hard_swish" in e.message
    assert conn.error("program.compile", {}).name == "invalid_params"
    assert conn.error("program.compile", {"mil": 5}).name == "invalid_params"
    assert conn.error("program.compile", {"mil": TWO, "weights": {"w": "str"}}).name == "invalid_params"
    assert conn.error("program.compile", {"mil": TWO, "weights": {"": b"x"}}).name == "invalid_params"
    assert conn.error("program.compile", {"mil": TWO, "weights": {"a\0b": b"x"}}).name == "invalid_params"
    assert conn.error("program.compile", {"mil": TWO, "weights": {"p" * 257: b"x"}}).name == "invalid_params"
    # weight_fds: as many paths as fds (else bad_fd), no path twice
    fd = w.memfd(16)
    for paths, fds in [(["a", "b"], [fd]), ([], [fd]), (None, [fd]), (["a"], [])]:
        params = {"mil": TWO}
        if paths is not None:
            params["weight_fds"] = paths
        e = conn.error("program.compile", params, fds=fds)
        assert (e.name, e.code) == ("bad_fd", 13), (paths, fds, e)
    e = conn.error("program.compile", {"mil": TWO, "weight_fds": ["a", "a"]}, fds=[fd, fd])
    assert e.name == "invalid_params"
    e = conn.error("program.compile", {"mil": TWO, "weight_fds": ["a"], "weights": {"a": b""}}, fds=[fd])
    assert e.name == "invalid_params"
    os.close(fd)


def test_program_info_dtypes_and_run(conn):
    r = compile_(conn, DTYPES)
    [fn] = conn.call("program.info", {"id": r["id"]})["functions"]
    assert fn["inputs"] == [{"name": "a", "dtype": "fp32", "shape": [2, 3], "bytes": 24},
                            {"name": "b", "dtype": "int32", "shape": [4], "bytes": 16}]
    assert fn["outputs"] == [{"name": "y", "dtype": "fp32", "shape": [2, 3], "bytes": 24},
                             {"name": "z", "dtype": "int32", "shape": [4], "bytes": 16}]
    a, b, y, z = w.create(conn, 24), w.create(conn, 16), w.create(conn, 24), w.create(conn, 16)
    av = [-1.5, 2.25, -0.0, 1e30, -1e-30, 7.0]
    bv = [1, -2, 1 << 29, -(1 << 29)]
    a.write(struct.pack("<6f", *av))
    b.write(struct.pack("<4i", *bv))
    run(conn, r["id"], [a, b], [y, z])
    assert list(struct.unpack("<6f", y.read())) == [max(w.round32(v), 0.0) for v in av]
    assert list(struct.unpack("<4i", z.read())) == [2 * v for v in bv]


@pytest.mark.parametrize("how", ["inline", "sealed_memfd", "unsealed_memfd", "file"])
def test_compile_with_weights(conn, how, tmp_path):
    wv = [0.5, -1.0, 2.0, 0.125, 100.0, -3.0, 0.0, 1.0]
    data = blob(wv)
    path = "@model_path/weights/w.bin"
    mil = WEIGHTED + "\n" * (1 + ["inline", "sealed_memfd", "unsealed_memfd", "file"].index(how))
    fds = []
    if how == "inline":
        r = compile_(conn, mil, weights={path: data})
    else:
        if how == "sealed_memfd":
            fd = w.memfd(len(data), fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE, data)
        elif how == "unsealed_memfd":
            fd = w.memfd(len(data), 0, data)
        else:
            p = tmp_path / "w.bin"
            p.write_bytes(data)
            fd = os.open(p, os.O_RDONLY)
        fds = [fd]
        r = conn.call("program.compile", {"mil": mil, "weight_fds": [path]}, fds=fds)
        os.close(fd)                  # "The client may close its fd when the call returns"
    assert r["key"] == program_key(mil, {path: data})
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    run(conn, r["id"], [x], [y])
    assert from_f16(y.read()) == [round16(a + b) for a, b in zip(X, wv)]


def test_weights_missing_or_wrong(conn):
    e = conn.error("program.compile", {"mil": WEIGHTED})
    assert e.name == "compile" and re.match(r"line \d+: ", e.message), e
    bad = bytearray(blob([0.0] * 8))
    bad[64] ^= 1            # the sentinel
    e = conn.error("program.compile", {"mil": WEIGHTED, "weights": {"@model_path/weights/w.bin": bytes(bad)}})
    assert e.name == "compile" and re.match(r"line \d+: ", e.message), e


# --- runs -------------------------------------------------------------------------------

def test_run_functions(conn):
    p = compile_(conn, TWO)["id"]
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    r = run(conn, p, [x], [y])
    assert isinstance(r["elapsed_us"], int)
    assert from_f16(y.read()) == relu_ref(X)               # no function: index 0 (main)
    run(conn, p, [x], [y], "twice")
    assert from_f16(y.read()) == twice_ref(X)
    run(conn, p, [x], [y], "main")
    assert from_f16(y.read()) == relu_ref(X)
    for name in ["", "TWICE", "twice\0", "mai"]:
        e = conn.error("run", {"program": p, "function": name, "inputs": [x.id], "outputs": [y.id]})
        assert (e.code, e.name) == (8, "no_such_function"), name
    e = conn.error("run", {"program": p, "function": 0, "inputs": [x.id], "outputs": [y.id]})
    assert e.name == "invalid_params"
    # without main, index 0 is the first function in file order
    q = compile_(conn, NO_MAIN)["id"]
    info = conn.call("program.info", {"id": q})
    assert [f["name"] for f in info["functions"]] == ["b", "a"]
    run(conn, q, [x], [y])
    assert from_f16(y.read()) == relu_ref(X)
    run(conn, q, [x], [y], "a")
    assert from_f16(y.read()) == twice_ref(X)
    assert conn.error("run", {"program": q, "function": "main", "inputs": [x.id],
                              "outputs": [y.id]}).name == "no_such_function"


def test_run_errors(conn):
    p = compile_(conn, TWO)["id"]
    x, y = surfaces(conn, 2)
    small = w.create(conn, 15)
    big = w.create(conn, 64)
    big.write(f16(X))
    ok = {"program": p, "inputs": [x.id], "outputs": [y.id]}

    def err(**kw):
        q = dict(ok)
        q.update(kw)
        return conn.error("run", {k: v for k, v in q.items() if v is not Ellipsis})
    assert err(program=999).name == "no_such_program"
    assert err(inputs=[999]).name == "no_such_surface"
    assert err(outputs=[999]).name == "no_such_surface"
    assert err(inputs=[]).name == "size_mismatch"
    assert err(inputs=[x.id, x.id]).name == "size_mismatch"
    assert err(outputs=[small.id]).name == "size_mismatch"
    assert err(inputs=[small.id]).name == "size_mismatch"
    assert err(inputs=...).name == "invalid_params"
    assert err(program=...).name == "invalid_params"
    assert err(inputs=x.id).name == "invalid_params"
    assert err(inputs=["1"]).name == "invalid_params"
    assert err(steps=[ok]).name == "invalid_params"        # both steps and program
    # a surface larger than the tensor: offset 0 is used
    conn.call("run", {"program": p, "inputs": [big.id], "outputs": [y.id], "extra": [1, 2]})
    assert from_f16(y.read()) == relu_ref(X)


def test_run_failed_leaves_the_connection_usable(conn):
    g = compile_(conn, GATHER)["id"]
    idx, out = w.create(conn, 12), w.create(conn, 12)
    idx.write(struct.pack("<3i", 3, 0, -1))
    run(conn, g, [idx], [out])
    assert from_f16(out.read()) == [7.0, 8.0, 1.0, 2.0, 7.0, 8.0]
    idx.write(struct.pack("<3i", 0, 4, 0))
    e = conn.error("run", {"program": g, "inputs": [idx.id], "outputs": [out.id]})
    assert (e.code, e.name) == (14, "run_failed") and "gather" in e.message
    assert "failed_step" not in e.err
    idx.write(struct.pack("<3i", 1, 1, 1))
    run(conn, g, [idx], [out])
    assert from_f16(out.read()) == [3.0, 4.0] * 3


def test_chains(conn):
    p = compile_(conn, TWO)["id"]
    g = compile_(conn, GATHER)["id"]
    x, a, b, c = surfaces(conn, 4)
    x.write(f16(X))
    runs0 = status(conn)["runs"]
    r = conn.call("run", {"steps": [
        {"program": p, "function": "twice", "inputs": [x.id], "outputs": [a.id]},
        {"program": p, "inputs": [a.id], "outputs": [b.id]},                 # reads step 0's output
        {"program": p, "function": "twice", "inputs": [b.id], "outputs": [c.id]}]})
    assert r["steps"] == 3 and isinstance(r["elapsed_us"], int)
    assert from_f16(c.read()) == twice_ref(relu_ref(twice_ref(X)))
    assert status(conn)["runs"] - runs0 == 3
    # refused before anything runs: no step runs
    sentinel = f16([9.0] * 8)
    a.write(sentinel)
    e = conn.error("run", {"steps": [
        {"program": p, "inputs": [x.id], "outputs": [a.id]},
        {"program": p, "inputs": [x.id], "outputs": [a.id]},
        {"program": p, "inputs": [x.id], "outputs": [777]}]})
    assert (e.name, e.err["failed_step"]) == ("no_such_surface", 2) and e.message.startswith("step 2: ")
    assert a.read() == sentinel
    for bad, name in [({"program": 999}, "no_such_program"), ({"function": "nope"}, "no_such_function"),
                      ({"inputs": []}, "size_mismatch"), ({"outputs": "x"}, "invalid_params")]:
        step = {"program": p, "inputs": [x.id], "outputs": [a.id]}
        step.update(bad)
        e = conn.error("run", {"steps": [{"program": p, "inputs": [x.id], "outputs": [a.id]}, step]})
        assert (e.name, e.err.get("failed_step")) == (name, 1), (bad, e)
        assert a.read() == sentinel
    # a step that fails while running: the steps before it wrote, those after did not
    idx, gout = w.create(conn, 12), w.create(conn, 12)
    idx.write(struct.pack("<3i", 0, 9, 0))
    c.write(sentinel)
    e = conn.error("run", {"steps": [
        {"program": p, "inputs": [x.id], "outputs": [a.id]},
        {"program": g, "inputs": [idx.id], "outputs": [gout.id]},
        {"program": p, "inputs": [x.id], "outputs": [c.id]}]})
    assert (e.code, e.name, e.err["failed_step"]) == (14, "run_failed", 1)
    assert e.message.startswith("step 1: ")
    assert from_f16(a.read()) == relu_ref(X) and c.read() == sentinel
    # errors about the whole request: no failed_step
    one = {"program": p, "inputs": [x.id], "outputs": [a.id]}
    for steps in [[], [one] * 257, "x", [5]]:
        e = conn.error("run", {"steps": steps})
        assert e.name == "invalid_params" and ("failed_step" not in e.err or steps == [5]), (steps, e)
    assert conn.call("run", {"steps": [one] * 256})["steps"] == 256


def test_pipelining(conn):
    """Many requests in one write; responses matched by msgid, in any order."""
    p = compile_(conn, TWO)["id"]
    n = 40
    xs = [w.create(conn, 16) for _ in range(n)]
    ys = [w.create(conn, 16) for _ in range(n)]
    data = bytearray()
    for i in range(n):
        xs[i].write(f16([float(i - 20)] * 8))
        fn = {} if i % 2 else {"function": "twice"}
        data += conn.frame(w.packb([0, 1000 + i, "run", dict(program=p, inputs=[xs[i].id],
                                                            outputs=[ys[i].id], **fn)]))
    data += conn.frame(w.packb([0, 2000, "status", {}]))
    conn.send_raw(data)
    seen = []
    while len(seen) < n + 1:
        msg = conn.pump()
        seen.append(msg[1])
        err = msg[2]
        assert err is None, err
    conn.responses.clear()
    assert sorted(seen) == list(range(1000, 1000 + n)) + [2000]
    for i in range(n):
        v = float(i - 20)
        want = [round16(v + v)] * 8 if i % 2 == 0 else [max(v, 0.0)] * 8
        assert from_f16(ys[i].read()) == want, i


def test_pipelining_past_max_inflight(own_daemon):
    """More requests in one write than max_inflight: the daemon stops reading
    and resumes as responses drain; a client that reads gets every answer."""
    d = own_daemon("--max-inflight", "4")
    with d.connect() as c:
        p = compile_(c, TWO)["id"]
        x, y = surfaces(c, 2)
        x.write(f16(X))
        one = {"program": p, "function": "twice", "inputs": [x.id], "outputs": [y.id]}
        data = b"".join(c.frame(w.packb([0, 10 + i, "run" if i % 3 else "status",
                                         one if i % 3 else {}])) for i in range(300))
        # written from a thread while this one reads: the daemon stops reading
        # us while our unread answers pile up, so one thread must not do both
        sender = threading.Thread(target=c.send_raw, args=(data,))
        sender.start()
        for i in range(300):
            assert c.wait(10 + i)[0] is None, i
        sender.join()
        assert from_f16(y.read()) == twice_ref(X)


def test_program_release_lets_submitted_runs_finish(conn):
    p = compile_(conn, TWO)["id"]
    x, y = surfaces(conn, 2)
    x.write(f16(X))
    conn.send_raw(conn.frame(w.packb([0, 1, "run", {"program": p, "inputs": [x.id],
                                                    "outputs": [y.id]}]))
                  + conn.frame(w.packb([0, 2, "program.release", {"id": p}]))
                  + conn.frame(w.packb([0, 3, "run", {"program": p, "inputs": [x.id],
                                                      "outputs": [y.id]}])))
    assert conn.wait(1)[0] is None
    assert conn.wait(2)[:2] == (None, {})
    assert conn.wait(3)[0]["name"] == "no_such_program"
    assert from_f16(y.read()) == relu_ref(X)


# --- states ----------------------------------------------------------------------------

S8 = "state<%s>" % T8
T40 = "tensor<fp16, [1, 1, 1, 40]>"
ACC = prog(
    func("main", """        %s c = read_state(input = s)[name = string("c")];
        %s n = add(x = c, y = x)[name = string("n")];
        %s y = coreml_update_state(state = s, value = n)[name = string("y")];
""" % (T8, T8, T8), args="%s s, %s x" % (S8, T8)),
    func("two", """        %s c = read_state(input = s)[name = string("c")];
        %s n = add(x = c, y = x)[name = string("n")];
        %s y = coreml_update_state(state = s, value = n)[name = string("y")];
        %s k0 = read_state(input = k)[name = string("k0")];
        %s one = const()[name = string("one"), val = tensor<fp16, [1, 1, 1, 40]>(%s)];
        %s k1 = add(x = k0, y = one)[name = string("k1")];
        %s z = coreml_update_state(state = k, value = k1)[name = string("z")];
""" % (T8, T8, T8, T40, T40, "[" + ", ".join(["1"] * 40) + "]", T40, T40),
        out="y, z", args="%s s, state<%s> k, %s x" % (S8, T40, T8)),
    func("plain", RELU),
    func("bad", """        %s c = read_state(input = s)[name = string("c")];
        %s n = add(x = c, y = c)[name = string("n")];
        %s u = coreml_update_state(state = s, value = n)[name = string("u")];
        tensor<fp16, [4, 2]> table = const()[name = string("table"), val = tensor<fp16, [4, 2]>([1, 2, 3, 4, 5, 6, 7, 8])];
        int32 ax = const()[name = string("ax"), val = int32(0)];
        tensor<fp16, [3, 2]> y = gather(x = table, indices = idx, axis = ax)[name = string("y")];
""" % (T8, T8, T8), args="%s s, tensor<int32, [3]> idx" % S8))


def states_supported(c):
    r = c.call("program.compile", {"mil": ACC})
    if "states" not in c.call("program.info", {"id": r["id"]})["functions"][0]:
        pytest.skip("the daemon does not keep states (docs/protocol.md has no States section)")
    return r["id"]


def state_run(c, p, state, x, y, function=None):
    params = {"program": p, "state": state, "inputs": [x.id], "outputs": [y.id]}
    if function:
        params["function"] = function
    return params


def test_state_info_create_and_errors(daemon):
    with daemon.connect() as c, daemon.connect() as other:
        p = states_supported(c)
        fns = {f["name"]: f for f in c.call("program.info", {"id": p})["functions"]}
        assert fns["main"]["states"] == [{"name": "s", "dtype": "fp16", "shape": [1, 1, 1, 8], "bytes": 16}]
        assert [t["name"] for t in fns["main"]["inputs"]] == ["x"]
        assert [t["name"] for t in fns["two"]["states"]] == ["s", "k"]
        assert fns["plain"]["states"] == []
        r = c.call("state.create", {"program": p})
        assert isinstance(r["id"], int) and r["size"] == 64      # 16 bytes, padded to 64
        r2 = c.call("state.create", {"program": p, "function": "two"})
        assert r2["id"] != r["id"] and r2["size"] == 64 + 128, r2      # 16 and 80 bytes, each padded
        assert c.error("state.create", {"program": p, "function": "plain"}).name == "invalid_params"
        assert c.error("state.create", {"program": p, "function": "nope"}).name == "no_such_function"
        assert c.error("state.create", {"program": 999}).name == "no_such_program"
        assert c.error("state.create", {}).name == "invalid_params"
        x, y = surfaces(c, 2)
        e = c.error("run", {"program": p, "inputs": [x.id], "outputs": [y.id]})
        assert e.name == "invalid_params"                                  # no state
        e = c.error("run", {"program": p, "function": "plain", "state": r["id"],
                            "inputs": [x.id], "outputs": [y.id]})
        assert e.name == "invalid_params"                                  # a state where none belongs
        e = c.error("run", {"program": p, "function": "two", "state": r["id"],
                            "inputs": [x.id], "outputs": [y.id, w.create(c, 80).id]})
        assert e.name == "invalid_params"                                  # made for another function
        e = c.error("run", state_run(c, p, 999, x, y))
        assert (e.code, e.name) == (19, "no_such_state")
        # another connection cannot name it
        q = other.call("program.compile", {"mil": ACC})["id"]
        ox, oy = surfaces(other, 2)
        assert other.error("run", state_run(other, q, r["id"], ox, oy)).name == "no_such_state"
        assert other.error("state.release", {"id": r["id"]}).name == "no_such_state"
        assert other.error("state.reset", {"id": r["id"]}).name == "no_such_state"
        # release: at once; the ID is not reused
        assert c.call("state.release", {"id": r["id"]}) == {}
        assert c.error("state.release", {"id": r["id"]}).name == "no_such_state"
        assert c.error("run", state_run(c, p, r["id"], x, y)).name == "no_such_state"
        assert c.call("state.create", {"program": p})["id"] not in (r["id"], r2["id"])


def test_state_runs_accumulate_in_order(daemon):
    with daemon.connect() as c:
        p = states_supported(c)
        st = status(c)
        s0, b0 = st["states"], st["state_bytes"]
        a = c.call("state.create", {"program": p})["id"]
        b = c.call("state.create", {"program": p})["id"]
        st = status(c)
        assert (st["states"], st["state_bytes"]) == (s0 + 2, b0 + 128)
        n = 12
        xs = [w.create(c, 16) for _ in range(n)]
        ys = [w.create(c, 16) for _ in range(n)]
        frames = bytearray()
        for i in range(n):           # pipelined, alternating two states
            xs[i].write(f16([float(i + 1)] * 4 + [0.5 * (i + 1)] * 4))
            frames += c.frame(w.packb([0, 500 + i, "run", state_run(c, p, a if i % 2 else b, xs[i], ys[i])]))
        c.send_raw(frames)
        for i in range(n):
            assert c.wait(500 + i)[0] is None
        acc = {0: [0.0] * 8, 1: [0.0] * 8}
        for i in range(n):
            xi = from_f16(xs[i].read())
            acc[i % 2] = [round16(u + v) for u, v in zip(acc[i % 2], xi)]
            assert from_f16(ys[i].read()) == acc[i % 2], i
        # a chain: each step sees what the previous left; `state` beside steps is ignored
        x, y0, y1 = surfaces(c, 3)
        x.write(f16([1.0] * 8))
        r = c.call("run", {"state": 999, "steps": [state_run(c, p, a, x, y0), state_run(c, p, a, x, y1)]})
        assert r["steps"] == 2
        assert from_f16(y1.read()) == [round16(v + 2.0) for v in acc[1]]
        # reset: zero again
        assert c.call("state.reset", {"id": a}) == {}
        c.call("run", state_run(c, p, a, x, y0))
        assert from_f16(y0.read()) == [1.0] * 8
        # a second handle to the same program content takes the state
        p2 = c.call("program.compile", {"mil": ACC})
        assert p2["cached"] is True
        c.call("run", state_run(c, p2["id"], a, x, y0))
        assert from_f16(y0.read()) == [2.0] * 8
        # two states in one function
        t = c.call("state.create", {"program": p, "function": "two"})["id"]
        z = w.create(c, 80)
        for k in range(3):
            c.call("run", {"program": p, "function": "two", "state": t, "inputs": [x.id],
                           "outputs": [y0.id, z.id]})
        assert from_f16(y0.read()) == [3.0] * 8 and from_f16(z.read()) == [3.0] * 40
        for s in (a, b, t):
            c.call("state.release", {"id": s})
        st = status(c)
        assert (st["states"], st["state_bytes"]) == (s0, b0)


def test_state_lost_after_a_failed_run(daemon):
    with daemon.connect() as c:
        p = states_supported(c)
        s = c.call("state.create", {"program": p, "function": "bad"})["id"]
        idx, y = w.create(c, 12), w.create(c, 12)
        run_p = {"program": p, "function": "bad", "state": s, "inputs": [idx.id], "outputs": [y.id]}
        idx.write(struct.pack("<3i", 0, 1, 2))
        c.call("run", run_p)
        assert from_f16(y.read()) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        idx.write(struct.pack("<3i", 0, 99, 2))
        assert c.error("run", run_p).name == "run_failed"
        idx.write(struct.pack("<3i", 0, 1, 2))
        e = c.error("run", run_p)
        assert (e.code, e.name) == (20, "state_lost")
        e = c.error("run", {"steps": [run_p]})
        assert (e.name, e.err.get("failed_step")) == ("state_lost", 0)
        assert c.call("state.reset", {"id": s}) == {}
        c.call("run", run_p)
        assert from_f16(y.read()) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        # an error found before the run changes nothing
        assert c.error("run", dict(run_p, outputs=[w.create(c, 4).id])).name == "size_mismatch"
        c.call("run", run_p)
