# SPDX-License-Identifier: MIT
"""An independent aneshare client written from docs/protocol.md only, with the
Python standard library: a msgpack codec written from the msgpack spec, the
8-byte frame header, msgpack-rpc messages, fds as SCM_RIGHTS, memfd surfaces.

It shares no code with libaneshare or the daemon: tests/conformance uses it to
check that the document is a contract a third party can implement."""
import array
import errno
import fcntl
import mmap
import os
import socket
import struct
import time

# --- msgpack (https://github.com/msgpack/msgpack/blob/master/spec.md) -------


class Ext:
    """An ext value (the daemon refuses them; kept to send one on purpose)."""

    def __init__(self, code, data):
        self.code, self.data = code, bytes(data)

    def __eq__(self, other):
        return isinstance(other, Ext) and (self.code, self.data) == (other.code, other.data)

    def __repr__(self):
        return "Ext(%d, %r)" % (self.code, self.data)


class Raw:
    """Bytes written into an encoding as they are (to build malformed payloads)."""

    def __init__(self, data):
        self.data = bytes(data)


class MsgpackError(ValueError):
    pass


def packb(obj, wide=False):
    """Encode obj. wide=True writes every integer, string, binary, array and map
    in its longest encoding (uint 64 / int 64, str 32, bin 32, array 32, map 32),
    which a receiver must accept like the shortest."""
    out = bytearray()
    _pack(obj, out, wide)
    return bytes(out)


def _pack(o, out, wide):
    if o is None:
        out.append(0xc0)
    elif o is False:
        out.append(0xc2)
    elif o is True:
        out.append(0xc3)
    elif isinstance(o, Raw):
        out += o.data
    elif isinstance(o, int):
        if wide:
            if o >= 0:
                out += b"\xcf" + struct.pack(">Q", o)
            else:
                out += b"\xd3" + struct.pack(">q", o)
        elif 0 <= o <= 0x7f:
            out.append(o)
        elif -32 <= o < 0:
            out.append(o & 0xff)
        elif 0 <= o <= 0xff:
            out += b"\xcc" + struct.pack(">B", o)
        elif 0 <= o <= 0xffff:
            out += b"\xcd" + struct.pack(">H", o)
        elif 0 <= o <= 0xffffffff:
            out += b"\xce" + struct.pack(">I", o)
        elif 0 <= o <= 0xffffffffffffffff:
            out += b"\xcf" + struct.pack(">Q", o)
        elif -0x80 <= o < 0:
            out += b"\xd0" + struct.pack(">b", o)
        elif -0x8000 <= o < 0:
            out += b"\xd1" + struct.pack(">h", o)
        elif -0x80000000 <= o < 0:
            out += b"\xd2" + struct.pack(">i", o)
        elif -0x8000000000000000 <= o < 0:
            out += b"\xd3" + struct.pack(">q", o)
        else:
            raise MsgpackError("integer out of range: %d" % o)
    elif isinstance(o, float):
        out += b"\xcb" + struct.pack(">d", o)
    elif isinstance(o, str):
        b = o.encode("utf-8")
        n = len(b)
        if wide:
            out += b"\xdb" + struct.pack(">I", n)
        elif n <= 31:
            out.append(0xa0 | n)
        elif n <= 0xff:
            out += b"\xd9" + struct.pack(">B", n)
        elif n <= 0xffff:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += b
    elif isinstance(o, (bytes, bytearray, memoryview)):
        b = bytes(o)
        n = len(b)
        if not wide and n <= 0xff:
            out += b"\xc4" + struct.pack(">B", n)
        elif not wide and n <= 0xffff:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += b
    elif isinstance(o, (list, tuple)):
        n = len(o)
        if wide:
            out += b"\xdd" + struct.pack(">I", n)
        elif n <= 15:
            out.append(0x90 | n)
        elif n <= 0xffff:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for e in o:
            _pack(e, out, wide)
    elif isinstance(o, dict):
        n = len(o)
        if wide:
            out += b"\xdf" + struct.pack(">I", n)
        elif n <= 15:
            out.append(0x80 | n)
        elif n <= 0xffff:
            out += b"\xde" + struct.pack(">H", n)
        else:
            out += b"\xdf" + struct.pack(">I", n)
        for k, v in o.items():
            _pack(k, out, wide)
            _pack(v, out, wide)
    elif isinstance(o, Ext):
        n = len(o.data)
        fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
        if n in fixed:
            out.append(fixed[n])
        elif n <= 0xff:
            out += b"\xc7" + struct.pack(">B", n)
        elif n <= 0xffff:
            out += b"\xc8" + struct.pack(">H", n)
        else:
            out += b"\xc9" + struct.pack(">I", n)
        out += struct.pack(">b", o.code) + o.data
    else:
        raise MsgpackError("cannot encode %r" % type(o))


def unpackb(data):
    """Decode exactly one value from data; anything after it is an error."""
    data = bytes(data)
    v, pos = _unpack(data, 0, 0)
    if pos != len(data):
        raise MsgpackError("%d bytes after the value" % (len(data) - pos))
    return v


def _take(data, pos, n):
    if n > len(data) - pos:
        raise MsgpackError("value runs past the end (%d bytes at %d, %d left)"
                           % (n, pos, len(data) - pos))
    return data[pos:pos + n], pos + n


def _unpack(d, pos, depth):
    if depth > 64:
        raise MsgpackError("nested too deep")
    if pos >= len(d):
        raise MsgpackError("truncated")
    t = d[pos]
    pos += 1
    if t <= 0x7f:
        return t, pos
    if t >= 0xe0:
        return t - 0x100, pos
    if 0xa0 <= t <= 0xbf:
        b, pos = _take(d, pos, t & 0x1f)
        return b.decode("utf-8"), pos
    if 0x90 <= t <= 0x9f:
        return _array(d, pos, t & 0x0f, depth)
    if 0x80 <= t <= 0x8f:
        return _map(d, pos, t & 0x0f, depth)
    if t == 0xc0:
        return None, pos
    if t == 0xc2:
        return False, pos
    if t == 0xc3:
        return True, pos
    ints = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q",
            0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
    if t in ints:
        f = ints[t]
        b, pos = _take(d, pos, struct.calcsize(f))
        return struct.unpack(f, b)[0], pos
    lens = {0xd9: ">B", 0xda: ">H", 0xdb: ">I",   # str 8/16/32
            0xc4: ">B", 0xc5: ">H", 0xc6: ">I",   # bin 8/16/32
            0xdc: ">H", 0xdd: ">I",               # array 16/32
            0xde: ">H", 0xdf: ">I",               # map 16/32
            0xc7: ">B", 0xc8: ">H", 0xc9: ">I"}   # ext 8/16/32
    if t in lens:
        f = lens[t]
        b, pos = _take(d, pos, struct.calcsize(f))
        n = struct.unpack(f, b)[0]
        if t in (0xd9, 0xda, 0xdb):
            b, pos = _take(d, pos, n)
            return b.decode("utf-8"), pos
        if t in (0xc4, 0xc5, 0xc6):
            return _take(d, pos, n)
        if t in (0xdc, 0xdd):
            return _array(d, pos, n, depth)
        if t in (0xde, 0xdf):
            return _map(d, pos, n, depth)
        b, pos = _take(d, pos, 1 + n)
        return Ext(struct.unpack(">b", b[:1])[0], b[1:]), pos
    fixext = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
    if t in fixext:
        b, pos = _take(d, pos, 1 + fixext[t])
        return Ext(struct.unpack(">b", b[:1])[0], b[1:]), pos
    raise MsgpackError("0x%02x is not a msgpack type" % t)   # 0xc1 (never used)


def _array(d, pos, n, depth):
    if n > len(d) - pos:   # every element takes at least one byte
        raise MsgpackError("array of %d runs past the end" % n)
    out = []
    for _ in range(n):
        v, pos = _unpack(d, pos, depth + 1)
        out.append(v)
    return out, pos


def _map(d, pos, n, depth):
    if 2 * n > len(d) - pos:
        raise MsgpackError("map of %d runs past the end" % n)
    out = {}
    for _ in range(n):
        k, pos = _unpack(d, pos, depth + 1)
        if isinstance(k, list):
            k = tuple(k)
        if isinstance(k, dict):
            raise MsgpackError("map key is a map")
        if k in out:
            raise MsgpackError("duplicate map key %r" % (k,))
        v, pos = _unpack(d, pos, depth + 1)
        out[k] = v
    return out, pos


# --- frames and messages ----------------------------------------------------

F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)   # Linux 5.1
HEADER = struct.Struct(">IB3s")   # payload length (u32 BE), fd count, 3 reserved bytes
MAX_FDS = 4
REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2


class RpcError(Exception):
    """An error response: code, name, message and the whole error map."""

    def __init__(self, err):
        self.err = err
        self.code = err.get("code")
        self.name = err.get("name")
        self.message = err.get("message")
        super().__init__("%s (%s): %s" % (self.name, self.code, self.message))


class Closed(Exception):
    """The daemon closed the connection."""


class Conn:
    """One connection. Responses are matched by msgid; notifications are kept
    in .notifications in arrival order."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        self.fds = []             # received, not yet claimed by a frame
        self.next_id = 1
        self.responses = {}       # msgid -> (error, result, fds)
        self.notifications = []
        self.eof = False

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        for _, _, fds in self.responses.values():
            for fd in fds:
                os.close(fd)
        self.responses = {}
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # sending
    def send_raw(self, data, fds=()):
        """Write bytes; fds go as SCM_RIGHTS with the first byte."""
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        data = bytes(data)
        n = self.sock.sendmsg([data], anc)
        if n < len(data):
            self.sock.sendall(data[n:])

    @staticmethod
    def frame(payload, nfds=0, reserved=b"\0\0\0"):
        return HEADER.pack(len(payload), nfds, reserved) + payload

    def send_msg(self, msg, fds=(), wide=False):
        self.send_raw(self.frame(packb(msg, wide), len(fds)), fds)

    def request(self, method, params=None, fds=(), msgid=None, wide=False):
        """Send a request without waiting; returns its msgid."""
        if msgid is None:
            msgid = self.next_id
            self.next_id += 1
        self.send_msg([REQUEST, msgid, method, {} if params is None else params], fds, wide)
        return msgid

    # receiving
    def _fill(self):
        cmsg_space = socket.CMSG_SPACE(16 * array.array("i").itemsize)
        try:
            data, anc, flags, _ = self.sock.recvmsg(65536, cmsg_space, socket.MSG_CMSG_CLOEXEC)
        except ConnectionResetError:
            data, anc, flags = b"", [], 0
        for level, kind, cdata in anc:
            assert level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS, (level, kind)
            fds = array.array("i")
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
            self.fds.extend(fds)
        assert not flags & socket.MSG_CTRUNC, "ancillary data truncated"
        if not data:
            self.eof = True
            raise Closed()
        self.buf += data

    def recv_frame(self):
        """One frame: (decoded payload, its fds)."""
        while len(self.buf) < HEADER.size:
            self._fill()
        length, nfds, reserved = HEADER.unpack_from(self.buf)
        assert reserved == b"\0\0\0", "reserved header bytes %r" % reserved
        assert nfds <= MAX_FDS, "a frame with %d fds" % nfds
        # The fds came with the header's first byte: they are here already.
        assert len(self.fds) >= nfds, "frame claims %d fds, %d arrived" % (nfds, len(self.fds))
        fds, self.fds = self.fds[:nfds], self.fds[nfds:]
        while len(self.buf) < HEADER.size + length:
            self._fill()
        payload = bytes(self.buf[HEADER.size:HEADER.size + length])
        del self.buf[:HEADER.size + length]
        return unpackb(payload), fds

    def pump(self):
        """Read one message and file it: a response by msgid, else a notification."""
        msg, fds = self.recv_frame()
        assert isinstance(msg, list) and msg, msg
        if msg[0] == RESPONSE:
            assert len(msg) == 4, msg
            _, msgid, err, result = msg
            assert msgid not in self.responses, "two responses to msgid %d" % msgid
            self.responses[msgid] = (err, result, fds)
        elif msg[0] == NOTIFICATION:
            assert len(msg) == 3 and isinstance(msg[1], str), msg
            assert not fds, "a notification with fds"
            self.notifications.append((msg[1], msg[2]))
        else:
            raise AssertionError("the daemon sent %r" % (msg,))
        return msg

    def wait(self, msgid):
        """(error, result, fds) of the response to msgid."""
        while msgid not in self.responses:
            self.pump()
        return self.responses.pop(msgid)

    def result(self, msgid):
        """The result of msgid with its fds; an error response raises RpcError."""
        err, result, fds = self.wait(msgid)
        if err is not None:
            assert result is None, "an error response with a result"
            assert not fds, "an error response with fds"
            raise RpcError(err)
        assert isinstance(result, dict), result
        return result, fds

    def call(self, method, params=None, fds=(), wide=False):
        """Request and wait: the result map; fds of the response are closed unless
        the method is one that returns an fd (see call_fd)."""
        result, rfds = self.result(self.request(method, params, fds, wide=wide))
        for fd in rfds:
            os.close(fd)
        assert not rfds, "%s answered with %d fds" % (method, len(rfds))
        return result

    def call_fd(self, method, params=None, fds=(), wide=False):
        """A call whose response carries exactly one fd: (result, fd)."""
        result, rfds = self.result(self.request(method, params, fds, wide=wide))
        assert len(rfds) == 1, "%s answered with %d fds" % (method, len(rfds))
        return result, rfds[0]

    def error(self, method, params=None, fds=(), wide=False):
        """A call that must fail: the RpcError."""
        try:
            r = self.call(method, params, fds, wide)
        except RpcError as e:
            return e
        raise AssertionError("%s %r succeeded: %r" % (method, params, r))

    def hello(self, name="conformance", **extra):
        params = {"protocol": 1, "client": name}
        params.update(extra)
        return self.call("hello", params)

    def wait_closed(self):
        """Read until the daemon closes; the notifications received meanwhile."""
        try:
            while True:
                self.pump()
        except Closed:
            pass
        return self.notifications


def connect(path, name="conformance"):
    c = Conn(path)
    c.hello(name)
    return c


# --- surfaces -----------------------------------------------------------------

def memfd(size, seals=0, data=None):
    """A memfd of size bytes (optionally filled), sealed with seals."""
    fd = os.memfd_create("conformance", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if data:
        os.pwrite(fd, data, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


class Surface:
    """A surface of a connection: its ID, size, and the memory mapped from its fd."""

    def __init__(self, conn, sid, size, fd, writable=True):
        self.conn, self.id, self.size = conn, sid, size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self.fd = fd

    def write(self, data, off=0):
        self.map[off:off + len(data)] = data

    def read(self, n=None, off=0):
        return bytes(self.map[off:off + (self.size if n is None else n)])

    def close(self):
        self.map.close()
        os.close(self.fd)


def create(conn, size):
    r, fd = conn.call_fd("surface.create", {"size": size})
    assert r["size"] == size
    return Surface(conn, r["id"], size, fd)


def import_fd(conn, size, seals=None, data=None):
    """A client-made memfd imported by fd: the Surface."""
    if seals is None:
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    fd = memfd(size, seals, data)
    r = conn.call("surface.import", {}, fds=[fd])
    assert r["size"] == size, r
    return Surface(conn, r["id"], size, fd)


# --- fp16 and tensors ----------------------------------------------------------

def f16(values):
    """fp16 bytes (little-endian, as the host; struct 'e' rounds to nearest even)."""
    return struct.pack("<%de" % len(values), *values)


def from_f16(data, n=None):
    if n is None:
        n = len(data) // 2
    return list(struct.unpack("<%de" % n, data[:2 * n]))


def round16(x):
    """x rounded once to fp16 (round to nearest even; past the largest finite
    value, infinity)."""
    try:
        return struct.unpack("<e", struct.pack("<e", x))[0]
    except OverflowError:
        return float("inf") if x > 0 else float("-inf")


def round32(x):
    """x rounded once to fp32."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def poll(cond, what, timeout=5.0):
    """Wait for cond() with a bounded deadline (for state the daemon reaches on
    its own, e.g. a run that has started)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.002)


def is_closed_fd(fd):
    try:
        os.fstat(fd)
        return False
    except OSError as e:
        return e.errno == errno.EBADF
