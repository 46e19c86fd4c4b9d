# SPDX-License-Identifier: MIT
"""Connections, programs and surfaces over libaneshare (client/aneshare.h).

Lifetimes.  Every object that refers to a connection holds its handle
(_Handle): surfaces (and so the numpy arrays that view them), programs and
tickets.  close() ends the connection for its caller at once, but the C
connection (whose aneshare_disconnect unmaps every surface) is only closed
once no surface of it is alive; so an array never outlives its mapping,
whatever the order in which things are freed.  Objects that are collected
together in one garbage cycle are finalized in any order: each finalizer
checks that its handle has not been freed first.

Threads.  A connection has a lock: every call into the library on it holds
the lock, so a connection and its objects may be used from several threads
(calls on one connection are serialised; use one connection per thread for
parallel runs).  Finalizers take the lock too; it is reentrant, since a
finalizer may run in the middle of a locked section on the same thread
(never inside a C call).

fork().  A child must not use its parent's connection: the socket would be
shared.  After fork() every connection of the parent is marked in the child,
any call on it raises ForkError, and its objects are left alone (nothing is
released through the shared socket) when they are collected.
"""
import ctypes
import errno as _errno
import itertools
import os
import threading
import weakref

import numpy as np

from . import _errors
from ._errors import ClosedError, ForkError, error_for
from ._lib import (DONE_FN, EV_WRITE, HAVE, MAX_RUN_EVENTS, MAX_STEPS, EventPoint, ExportOpts, Result,
                   RunOpts, Status, Step, TensorInfo, Token, Weight, WeightFd, lib)

_DTYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype("<i4"), 4: np.dtype("<i2"),
           5: np.dtype("i1"), 6: np.dtype("u1"), 7: np.dtype("?")}

_vp = ctypes.c_void_p
_u32 = ctypes.c_uint32
_run = lib.aneshare_run
# The same function without argtypes, for calls whose arguments are all ctypes
# objects already (Program.run's repeated calls): nothing is converted.
_run_fast = lib["aneshare_run"]
_run_fast.restype = ctypes.c_int
_last_error = lib.aneshare_last_error

# ---- the connection handle -------------------------------------------------------

_handles = weakref.WeakSet()


def _after_fork_in_child():
    for h in list(_handles):
        h.forked = True
        h.bad = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Handle:
    """The C connection and what every object made through it shares."""
    __slots__ = ("ptr", "cptr", "lock", "bad", "closed", "forked", "freed", "live", "pid",
                 "loop", "reader_fd", "writer_fd", "async_calls", "async_done", "orphans",
                 "programs", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr                 # int: aneshare_conn *
        self.cptr = _vp(ptr)
        self.lock = threading.RLock()
        self.bad = False               # closed or forked: every call raises
        self.closed = False
        self.forked = False
        self.freed = False             # aneshare_disconnect has run
        self.live = 0                  # surfaces alive (their mappings)
        self.pid = os.getpid()
        self.loop = None               # asyncio loop watching the fd
        self.reader_fd = -1
        self.writer_fd = -1
        self.async_calls = {}          # token -> (future, objects kept alive)
        self.async_done = []           # (token, rc, failed_step, message) from the callback
        self.orphans = []              # tickets collected without wait()
        self.programs = weakref.WeakSet()
        _handles.add(self)

    def check(self):
        if self.forked or os.getpid() != self.pid:
            self.forked = self.bad = True
            raise ForkError("this connection was made by process %d before fork(); "
                            "the child (%d) must connect itself" % (self.pid, os.getpid()))
        if self.closed:
            raise ClosedError("the connection is closed")

    def error(self, rc, mil=None):
        """The exception for rc (call with the lock held: reads last_error)."""
        msg = _last_error(self.cptr).decode("utf-8", "replace")
        step = lib.aneshare_last_failed_step(self.cptr)
        return error_for(rc, msg, step, mil)

    def disconnect(self):
        if self.freed or self.forked:
            return
        with self.lock:
            if self.freed:
                return
            self.detach_loop()
            self.freed = True
            lib.aneshare_disconnect(self.cptr)
            self.ptr = None
            self.cptr = None
        self.deliver()

    def __del__(self):
        try:
            if not self.forked and not self.freed:
                self.disconnect()
        except Exception:
            pass

    # ---- asyncio -------------------------------------------------------------------

    def attach_loop(self, loop):
        if self.loop is not loop:
            self.detach_loop()
            self.loop = loop
        self.rearm()

    def detach_loop(self):
        loop = self.loop
        if loop is None:
            return
        try:
            if self.reader_fd >= 0:
                loop.remove_reader(self.reader_fd)
            if self.writer_fd >= 0:
                loop.remove_writer(self.writer_fd)
        except Exception:   # a closed loop
            pass
        self.reader_fd = self.writer_fd = -1
        self.loop = None

    def rearm(self):
        """Watch the fd for what the library asks (it changes on reconnects)."""
        loop = self.loop
        if loop is None:
            return
        with self.lock:
            if self.freed:
                return
            fd = lib.aneshare_fd(self.cptr)
            ev = lib.aneshare_events(self.cptr)
        want_w = fd if ev & EV_WRITE else -1
        if not self.async_calls:
            fd = want_w = -1
        if self.reader_fd != fd:
            if self.reader_fd >= 0:
                loop.remove_reader(self.reader_fd)
            if fd >= 0:
                loop.add_reader(fd, self.dispatch)
            self.reader_fd = fd
        if self.writer_fd != want_w:
            if self.writer_fd >= 0:
                loop.remove_writer(self.writer_fd)
            if want_w >= 0:
                loop.add_writer(want_w, self.dispatch)
            self.writer_fd = want_w

    def dispatch(self):
        if self.forked:
            return
        with self.lock:
            if self.freed:
                return
            lib.aneshare_dispatch(self.cptr)
        self.deliver()
        self.rearm()

    def deliver(self):
        """Complete the futures of the async calls the library has finished."""
        while self.async_done:
            token, rc, step, msg, mil = self.async_done.pop(0)
            entry = self.async_calls.pop(token, None)
            if entry is None:
                continue
            fut = entry[0]
            if fut.done():
                continue
            try:
                if rc < 0:
                    fut.set_exception(error_for(rc, msg, step, mil))
                else:
                    fut.set_result(None)
            except RuntimeError:   # its loop is closed: nobody waits for it
                pass

    def after_blocking(self):
        """A blocking call may have read responses to async calls: have them
        dispatched (aneshare.h, "asynchronous calls")."""
        loop = self.loop
        if loop is not None and self.async_calls:
            try:
                loop.call_soon_threadsafe(self.dispatch)
            except RuntimeError:   # the loop is closed
                pass


_tokens = itertools.count(1)
_token_handles = {}   # token -> handle, for the C callback


@DONE_FN
def _done_cb(conn, res, userdata):
    h = _token_handles.pop(userdata or 0, None)
    if h is None:
        return
    r = res.contents
    entry = h.async_calls.get(userdata)
    mil = entry[2] if entry else None
    msg = r.message.decode("utf-8", "replace") if r.message else ""
    h.async_done.append((userdata, r.rc, r.failed_step, msg, mil))


# ---- surfaces --------------------------------------------------------------------


class Surface:
    """A shared-memory surface.  Its arrays (views) keep it alive; it is
    released when the last of them is collected.  Find it from an array
    with aneshare.surface_of(array)."""
    __slots__ = ("_h", "_ptr", "address", "size", "__weakref__")

    def __init__(self, h, ptr):
        self._h = h
        self._ptr = ptr
        self.address = lib.aneshare_surface_data(ptr)
        self.size = lib.aneshare_surface_size(ptr)
        h.live += 1

    @property
    def id(self):
        """The ID the daemon knows it by now (it changes when the library
        reconnects; 0 if the surface was lost then)."""
        h = self._h
        h.check()
        with h.lock:
            _live(h)
            return lib.aneshare_surface_id(self._ptr)

    def __del__(self):
        h = self._h
        if h.freed or h.forked or self._ptr is None:
            return
        try:
            with h.lock:
                if not h.freed:
                    lib.aneshare_surface_release(self._ptr)
                self._ptr = None
                h.live -= 1
                if h.closed and h.live == 0:   # the last mapping of a closed connection
                    h.disconnect()
        except Exception:
            pass

    @property
    def read_only(self):
        """True for a read-only import (Connection.import_token of a read-only
        export): its arrays are not writeable and it cannot be a run output."""
        if "aneshare_surface_read_only" not in HAVE:
            return False
        h = self._h
        h.check()
        with h.lock:
            _live(h)
            if self._ptr is None:
                raise ClosedError("the surface was released")
            return bool(lib.aneshare_surface_read_only(self._ptr))

    def array(self, dtype=np.uint8, shape=None):
        """A numpy array viewing the surface from its start: dtype and shape
        (None: as many elements of dtype as fit).  Not writeable when the
        surface is read-only.  The array keeps the surface alive."""
        dtype = np.dtype(dtype)
        if shape is None:
            shape = (self.size // dtype.itemsize,)
        shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        n = dtype.itemsize
        for d in shape:
            n *= d
        if n > self.size:
            raise ValueError("%d bytes do not fit the surface's %d" % (n, self.size))
        return _array(self, dtype, shape, self.read_only)

    def export(self, read_only=False, uses=None, ttl_ms=None):
        """A token (64 hex digits) that another client process of the daemon
        passes to Connection.import_token() to get its own handle to this
        memory, without copying (aneshare_surface_export).  uses: imports
        allowed (None: 1); ttl_ms: lifetime (None: 30,000 ms); read_only:
        importers cannot write it or name it as a run output."""
        _need("aneshare_surface_export")
        opts = ExportOpts(bool(read_only), _opt_u32("uses", uses), _opt_u32("ttl_ms", ttl_ms))
        tok = Token()
        h = self._h
        h.check()
        with h.lock:
            _live(h)
            if self._ptr is None:
                raise ClosedError("the surface was released")
            rc = lib.aneshare_surface_export(self._ptr, ctypes.byref(opts), ctypes.byref(tok), None)
            if rc < 0:
                raise h.error(rc)
        if h.async_calls:
            h.after_blocking()
        return tok.text.decode("ascii")

    def __repr__(self):
        return "<aneshare.Surface %d bytes at 0x%x>" % (self.size, self.address or 0)


def _need(fname):
    if fname not in HAVE:
        raise NotImplementedError("this libaneshare has no %s: sharing surfaces needs a newer one"
                                  % fname)


def _opt_u32(name, v):
    """None -> 0 (the daemon's default); else an int in 1..2**32-1."""
    if v is None:
        return 0
    v = int(v)
    if not 1 <= v < 1 << 32:
        raise ValueError("%s must be None or 1 to %d, not %d" % (name, (1 << 32) - 1, v))
    return v


class _View:
    """What numpy arrays of a surface have as their base: numpy takes the
    memory from __array_interface__ and keeps this object (and so the
    surface) alive for as long as any array derived from it lives."""
    __slots__ = ("surface", "__array_interface__", "primary", "__weakref__")

    def __init__(self, surface, dtype, shape, read_only=False):
        self.surface = surface
        self.__array_interface__ = {"data": (surface.address, bool(read_only)),
                                    "shape": tuple(shape), "typestr": dtype.str, "version": 3}
        self.primary = None


def _array(surface, dtype, shape, read_only=False):
    v = _View(surface, dtype, shape, read_only)
    a = np.asarray(v)
    v.primary = weakref.ref(a)
    return a


def surface_of(array):
    """The Surface a numpy array views (following .base), or None."""
    b = array
    while isinstance(b, np.ndarray):
        b = b.base
    if type(b) is _View:
        return b.surface
    return None


def _surface_ptr(a, h):
    """The aneshare_surface * behind array a: a must start at the start of a
    surface of connection h, and be contiguous (the daemon reads the tensor
    from offset 0, row-major)."""
    b = getattr(a, "base", None)
    if type(b) is _View and b.primary() is a:   # an array new_inputs() etc. made
        s = b.surface
    else:
        s = surface_of(a) if isinstance(a, np.ndarray) else None
        if s is None:
            raise TypeError("run() takes arrays of shared surfaces (program.new_inputs(), "
                            "conn.surface()); call the program (program(x=...)) to copy "
                            "other arrays in")
        if a.__array_interface__["data"][0] != s.address:
            raise ValueError("an array given to run() must start at the start of its surface "
                             "(the daemon reads from offset 0), not be a slice of it")
        if not a.flags.c_contiguous:
            raise ValueError("an array given to run() must be C-contiguous")
    if s._h is not h:
        raise ValueError("the array's surface belongs to another connection")
    p = s._ptr
    if p is None:
        raise ClosedError("the surface was released")
    return p


def _ptr_array(arrays, h):
    n = len(arrays)
    arr = (_vp * n)()
    for i in range(n):
        arr[i] = _surface_ptr(arrays[i], h)
    return arr


# ---- programs --------------------------------------------------------------------


class Tensor(tuple):
    """An input or output of a function: (name, dtype, shape, nbytes)."""
    __slots__ = ()

    def __new__(cls, name, dtype, shape, nbytes):
        return tuple.__new__(cls, (name, dtype, shape, nbytes))

    name = property(lambda self: self[0])
    dtype = property(lambda self: self[1])
    shape = property(lambda self: self[2])
    nbytes = property(lambda self: self[3])

    def __repr__(self):
        return "Tensor(name=%r, dtype=%s, shape=%r, nbytes=%d)" % (self[0], self[1], self[2], self[3])


class Function:
    """One function of a program: its index, name, inputs and outputs, and
    its states (state<...> inputs: it runs on a State, Program.new_state)."""
    __slots__ = ("index", "name", "inputs", "outputs", "states")

    def __init__(self, index, name, inputs, outputs, states=()):
        self.index = index
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.states = states

    def __repr__(self):
        return "<Function %d %r inputs=%r outputs=%r>" % (self.index, self.name, self.inputs,
                                                         self.outputs)


def _tensor(ti):
    t = ti.contents
    dt = _DTYPES.get(t.dtype)
    if dt is None:
        raise _errors.AneshareError(-_errors.EBASE - 11, "unknown dtype %d" % t.dtype)
    return Tensor(t.name.decode("utf-8", "replace"), dt, tuple(t.shape[i] for i in range(t.rank)),
                  t.bytes)


def _release_ptr(h, p, free):
    """free(p) on h's C connection, unless p is None or the connection is
    gone (closed: the daemon freed it already; forked: it is the parent's)."""
    if p is None or h.freed or h.forked:
        return
    with h.lock:
        if not h.freed:
            free(p)


class _Released:
    """A handle released by its release(): at the end of a `with` block, or
    when collected (nothing raised then)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


class Program(_Released):
    """A compiled program on a connection (aneshare_program).

    .key is the content hash the daemon shares it under; .cached tells
    whether the daemon had it already; .functions lists its functions and
    .inputs / .outputs are those of function 0 ("main")."""

    def __init__(self, conn, ptr, cached, mil):
        h = conn._h
        self._h = h
        self._conn = conn
        self._ptr = ptr
        self._cptr = _vp(ptr)
        self._mil = mil
        self.cached = cached
        self.key = lib.aneshare_program_key(ptr).decode()
        fns = []
        for f in range(lib.aneshare_program_function_count(ptr)):
            name = lib.aneshare_program_function_name(ptr, f).decode("utf-8", "replace")
            ins = tuple(_tensor(lib.aneshare_program_input(ptr, f, i))
                        for i in range(lib.aneshare_program_input_count(ptr, f)))
            outs = tuple(_tensor(lib.aneshare_program_output(ptr, f, i))
                         for i in range(lib.aneshare_program_output_count(ptr, f)))
            sts = ()
            if "aneshare_program_state_count" in HAVE:
                sts = tuple(_tensor(lib.aneshare_program_state(ptr, f, i))
                            for i in range(lib.aneshare_program_state_count(ptr, f)))
            fns.append(Function(f, name, ins, outs, sts))
        self.functions = tuple(fns)
        self._by_name = {f.name: f for f in fns}
        self._scratch = {}   # function index -> (inputs, outputs) for __call__
        self._last = None    # run()'s arguments last time (see there)
        h.programs.add(self)

    # ---- description ----

    @property
    def inputs(self):
        return self.functions[0].inputs

    @property
    def outputs(self):
        return self.functions[0].outputs

    def function(self, function=None):
        """The Function named (str) or indexed (int) by function; None: 0."""
        if function is None:
            return self.functions[0]
        if isinstance(function, str):
            f = self._by_name.get(function)
            if f is None:
                raise KeyError("the program has no function %r (it has %s)"
                               % (function, ", ".join(repr(x.name) for x in self.functions)))
            return f
        if not 0 <= function < len(self.functions):
            raise IndexError("the program has no function %d (it has %d)"
                             % (function, len(self.functions)))
        return self.functions[function]

    def _index(self, function):
        if function is None:
            return 0
        return self.function(function).index

    def _ptr_checked(self):
        """The program pointer, read with the connection's lock held (release
        clears it, then frees the program under the lock)."""
        p = self._cptr
        if p is None or self._h.freed:
            raise ClosedError("the program was released")
        return p

    # ---- surfaces ----

    def new_inputs(self, function=None):
        """One array per input of the function, each on its own surface."""
        return [self._conn.array(t.dtype, t.shape) for t in self.function(function).inputs]

    def new_outputs(self, function=None):
        """One array per output of the function, each on its own surface."""
        return [self._conn.array(t.dtype, t.shape) for t in self.function(function).outputs]

    def new_state(self, function=None):
        """A State for the function (one with state<...> inputs): zero-filled
        memory the daemon keeps between runs given state=, as Core ML's
        MLState.  One per independent sequence."""
        h = self._h
        h.check()
        _need("aneshare_state_create")
        fn = self._index(function)
        ptr = _vp()
        with h.lock:
            rc = lib.aneshare_state_create(self._ptr_checked(), fn, ctypes.byref(ptr))
            if rc < 0:
                raise h.error(rc)
        return State(self, fn, ptr.value)

    # ---- running ----

    def run(self, inputs, outputs, function=None, state=None, wait=None, signal=None):
        """Run on arrays of surfaces (new_inputs()/new_outputs(), conn.surface()),
        without copying: the daemon reads the inputs' memory and writes the
        outputs' in place.  Blocks until done.  A function with states runs
        on state (a State of this program's function).  wait and signal:
        lists of (Event, value) (see Event): the run starts once every
        event waited for has its value, and raises the events it signals
        (this connection's own) when it succeeds."""
        h = self._h
        if wait or signal:
            self._run_ex(inputs, outputs, function, state, wait, signal)
            return
        if state is not None:
            self._run_state(inputs, outputs, function, state)
            return
        if h.bad:
            h.check()
        # The arguments of the last run, kept with weak references to its
        # arrays: a loop that runs on the same arrays builds nothing per call.
        c = self._last
        if c is not None and c[0] == function and len(inputs) == c[3] and len(outputs) == c[4]:
            for a, w in zip(inputs, c[1]):
                if w() is not a:
                    break
            else:
                for a, w in zip(outputs, c[2]):
                    if w() is not a:
                        break
                else:
                    with h.lock:   # the program is released under the lock
                        p = self._cptr
                        if p is None or h.freed:
                            raise ClosedError("the program was released")
                        rc = _run_fast(p, c[5], c[6], c[7], c[8], c[9])
                        if rc < 0:
                            raise h.error(rc)
                    if h.async_calls:
                        h.after_blocking()
                    return
        fn = 0 if function is None else self._index(function)
        ins = _ptr_array(inputs, h)
        outs = _ptr_array(outputs, h)
        with h.lock:
            rc = _run(self._ptr_checked(), fn, ins, len(ins), outs, len(outs))
            if rc < 0:
                raise h.error(rc)
        try:
            self._last = (function, tuple(weakref.ref(a) for a in inputs),
                          tuple(weakref.ref(a) for a in outputs), len(ins), len(outs),
                          _u32(fn), ins, ctypes.c_size_t(len(ins)), outs, ctypes.c_size_t(len(outs)))
        except TypeError:   # an array type without weak references: no shortcut
            self._last = None
        if h.async_calls:
            h.after_blocking()

    def _run_ex(self, inputs, outputs, function, state, wait, signal):
        h = self._h
        h.check()
        _need("aneshare_run_ex")
        ins = _ptr_array(inputs, h)
        outs = _ptr_array(outputs, h)
        with h.lock:
            opts, keep = _run_opts(h, self._index(function), state, wait, signal)
            rc = lib.aneshare_run_ex(self._ptr_checked(), ins, len(ins), outs, len(outs),
                                     ctypes.byref(opts))
            if rc < 0:
                raise h.error(rc)
        del keep
        if h.async_calls:
            h.after_blocking()

    def _run_state(self, inputs, outputs, function, state):
        h = self._h
        h.check()
        fn = self._index(function)
        ins = _ptr_array(inputs, h)
        outs = _ptr_array(outputs, h)
        with h.lock:
            rc = lib.aneshare_run_state(self._ptr_checked(), fn, state._ptr_checked(h), ins,
                                        len(ins), outs, len(outs))
            if rc < 0:
                raise h.error(rc)
        if h.async_calls:
            h.after_blocking()

    def __call__(self, *args, function=None, state=None, **named):
        """Convenience: copy the given arrays (positional in input order, or
        by input name) into surfaces this program keeps, run, and return
        new arrays (copies): the output, or a tuple of them if the function
        has several."""
        f = self.function(function)
        sc = self._scratch.get(f.index)
        if sc is None:
            sc = self._scratch[f.index] = (self.new_inputs(f.index), self.new_outputs(f.index))
        ins, outs = sc
        if len(args) > len(ins):
            raise TypeError("function %r takes %d inputs, %d given" % (f.name, len(ins), len(args)))
        given = dict(zip((t.name for t in f.inputs), args))
        for k, v in named.items():
            if k in given:
                raise TypeError("input %r given twice" % k)
            given[k] = v
        for t, dst in zip(f.inputs, ins):
            if t.name not in given:
                raise TypeError("input %r of function %r is missing" % (t.name, f.name))
            src = np.asarray(given.pop(t.name))
            if src.shape != t.shape and src.size == dst.size:
                src = src.reshape(t.shape)
            np.copyto(dst, src, casting="same_kind")
        if given:
            raise TypeError("function %r has no input %s" % (f.name, ", ".join(map(repr, given))))
        self.run(ins, outs, f.index, state)
        res = tuple(o.copy() for o in outs)
        return res[0] if len(res) == 1 else res

    def submit(self, inputs, outputs, function=None, state=None, wait=None, signal=None):
        """Start a run without waiting: a Ticket to wait() for.  The arrays
        (and the state) stay alive until then.  Runs on one state happen in
        the order they were submitted.  wait and signal as for run(): a run
        submitted ahead whose waits are not met is parked by the daemon
        until they are."""
        h = self._h
        h.check()
        fn = self._index(function)
        ins = _ptr_array(inputs, h)
        outs = _ptr_array(outputs, h)
        t = _u32()
        with h.lock:
            p = self._ptr_checked()
            _drain_orphans(h)
            if wait or signal:
                _need("aneshare_run_submit_ex")
                opts, keep = _run_opts(h, fn, state, wait, signal)
                rc = lib.aneshare_run_submit_ex(p, ins, len(ins), outs, len(outs), ctypes.byref(opts),
                                                ctypes.byref(t))
            elif state is None:
                rc = lib.aneshare_run_submit(p, fn, ins, len(ins), outs, len(outs), ctypes.byref(t))
            else:
                rc = lib.aneshare_run_state_submit(p, fn, state._ptr_checked(h), ins, len(ins),
                                                   outs, len(outs), ctypes.byref(t))
            if rc < 0:
                raise h.error(rc)
        return Ticket(h, t.value, (inputs, outputs, state))

    async def run_async(self, inputs, outputs, function=None, state=None, wait=None, signal=None):
        """run() as a coroutine: the connection's fd is watched by the
        running asyncio loop (loop.add_reader) while calls are in flight."""
        h = self._h
        h.check()
        fn = self._index(function)
        ins = _ptr_array(inputs, h)
        outs = _ptr_array(outputs, h)
        if wait or signal:
            _need("aneshare_run_async_ex")
            keep = [inputs, outputs, ins, outs, self, state]

            def start(ud):   # called with the lock held
                opts, evs = _run_opts(h, fn, state, wait, signal)
                keep.append((opts, evs))
                return lib.aneshare_run_async_ex(self._ptr_checked(), ins, len(ins), outs, len(outs),
                                                 ctypes.byref(opts), _done_cb, ud)
            return await _async_call(h, start, keep)
        if state is not None:
            _need("aneshare_run_state_async")
            return await _async_call(h, lambda ud: lib.aneshare_run_state_async(
                self._ptr_checked(), fn, state._ptr_checked(h), ins, len(ins), outs, len(outs),
                _done_cb, ud), (inputs, outputs, ins, outs, self, state))
        return await _async_call(h, lambda ud: lib.aneshare_run_async(
            self._ptr_checked(), fn, ins, len(ins), outs, len(outs), _done_cb, ud),
            (inputs, outputs, ins, outs, self))

    # ---- releasing ----

    def release(self):
        """Release the program handle now (also done when it is collected, and
        by close()).  The handle is gone whatever the daemon answers (on a
        broken connection the daemon freed it already), so nothing is raised."""
        h = self._h
        p, self._ptr, self._cptr = self._ptr, None, None
        self._scratch = {}
        self._last = None
        _release_ptr(h, p, lib.aneshare_program_release)

    def __repr__(self):
        return "<aneshare.Program %s %s>" % (self.key[:12], ", ".join(f.name for f in self.functions))


def _need(fname):
    if fname not in HAVE:
        raise error_for(-_errno.ENOSYS, "this libaneshare has no %s" % fname)


class State(_Released):
    """The states of one function of a program (aneshare_state): memory the
    daemon keeps between runs (a KV cache), zero-filled when made.  Give it
    to Program.run / submit / __call__ as state=.  .size is the bytes the
    daemon holds for it.  Released by release(), at the end of a `with`
    block, or when collected."""

    def __init__(self, program, function, ptr):
        self._h = program._h
        self._program = program   # kept alive: its runs need it
        self.function = program.functions[function]
        self._ptr = ptr
        self._cptr = _vp(ptr)
        self.size = lib.aneshare_state_size(ptr)

    def _ptr_checked(self, h):
        if h is not self._h:
            raise ValueError("the state belongs to another connection")
        if self._cptr is None or h.freed:
            raise ClosedError("the state was released")
        return self._cptr

    def reset(self):
        """Zero it again, after the runs submitted before (clears a
        StateLostError)."""
        h = self._h
        h.check()
        with h.lock:
            rc = lib.aneshare_state_reset(self._ptr_checked(h))
            if rc < 0:
                raise h.error(rc)

    def release(self):
        """Release it now; nothing is raised (as Program.release)."""
        h = self._h
        p, self._ptr, self._cptr = self._cptr, None, None
        _release_ptr(h, p, lib.aneshare_state_release)

    def __repr__(self):
        return "<aneshare.State of %r, %d bytes>" % (self.function.name, self.size)


class Event(_Released):
    """An event (aneshare_event): a 64-bit value the daemon keeps, that
    starts at 0 and only grows, shared between connections by token like a
    surface (docs/protocol.md, "Events").  The connection that made it
    (Connection.event()) signals it; importers (Connection.import_event())
    only wait.  Runs wait for events and signal them: Program.run(...,
    wait=[(event, value)], signal=[(event, value)]).  Released by
    release(), at the end of a `with` block, or when collected; releasing
    the owner's Event closes the event (waits for values it never reached
    raise EventClosedError).  Events are not restored when the library
    reconnects to a restarted daemon: calls on an old Event raise
    EventClosedError."""

    def __init__(self, h, ptr):
        self._h = h
        self._ptr = ptr
        self._cptr = _vp(ptr)
        self.imported = bool(lib.aneshare_event_imported(self._cptr))

    def _ptr_checked(self, h):
        if h is not self._h:
            raise ValueError("the event belongs to another connection")
        if self._cptr is None or h.freed:
            raise ClosedError("the event was released")
        return self._cptr

    def _call(self, fn, *args):
        h = self._h
        h.check()
        with h.lock:
            rc = fn(self._ptr_checked(h), *args)
            if rc < 0:
                raise h.error(rc)
        if h.async_calls:
            h.after_blocking()

    def signal(self, value):
        """Raise the event to value (greater than its value now); only its
        owner can (an imported Event raises InvalidParamsError)."""
        self._call(lib.aneshare_event_signal, _u64("value", value))

    def wait(self, value):
        """Block until the event's value is at least value; its value then.
        EventClosedError if it closed below value.  No timeout, and the
        connection is held meanwhile (as by every blocking call): signal it
        from another connection, or use wait_async."""
        v = ctypes.c_uint64()
        self._call(lib.aneshare_event_wait, _u64("value", value), ctypes.byref(v))
        return v.value

    async def wait_async(self, value):
        """wait() as a coroutine, without holding the connection: returns
        None once the value is reached (cancel it to stop waiting; the
        daemon's wait stays pending until met or closed)."""
        h = self._h
        h.check()
        v = _u64("value", value)
        return await _async_call(h, lambda ud: lib.aneshare_event_wait_async(
            self._ptr_checked(h), v, _done_cb, ud), (self,))

    @property
    def value(self):
        """The event's value now (asked of the daemon)."""
        v = ctypes.c_uint64()
        self._call(lib.aneshare_event_value, ctypes.byref(v))
        return v.value

    def export(self, uses=None, ttl_ms=None):
        """A token (64 hex digits) for Connection.import_event() in another
        process: a wait-only handle.  uses: imports allowed (None: 1);
        ttl_ms: lifetime (None: 30,000 ms)."""
        opts = ExportOpts(False, _opt_u32("uses", uses), _opt_u32("ttl_ms", ttl_ms))
        tok = Token()
        self._call(lib.aneshare_event_export, ctypes.byref(opts), ctypes.byref(tok), None)
        return tok.text.decode("ascii")

    def release(self):
        """Release it now; nothing is raised (as Program.release)."""
        h = self._h
        p, self._ptr, self._cptr = self._cptr, None, None
        _release_ptr(h, p, lib.aneshare_event_release)

    def __repr__(self):
        return "<aneshare.Event%s>" % (" (imported)" if self.imported else "")


def _u64(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError("%s must be an int, not %s" % (name, type(v).__name__))
    v = int(v)
    if not 0 <= v < 1 << 64:
        raise ValueError("%s must be in [0, 2**64), not %d" % (name, v))
    return v


def _event_points(h, name, pairs):
    """An EventPoint array for a run's wait or signal list of (Event, value)."""
    pairs = list(pairs or ())
    if len(pairs) > MAX_RUN_EVENTS:
        raise ValueError("a run's %s list has at most %d entries, not %d"
                         % (name, MAX_RUN_EVENTS, len(pairs)))
    arr = (EventPoint * max(len(pairs), 1))()
    for i, pair in enumerate(pairs):
        try:
            ev, value = pair
        except (TypeError, ValueError):
            raise TypeError("%s entry %d: an entry is (Event, value)" % (name, i)) from None
        if not isinstance(ev, Event):
            raise TypeError("%s entry %d: %r is not an Event" % (name, i, ev))
        arr[i].event = ev._ptr_checked(h)
        arr[i].value = _u64("%s entry %d's value" % (name, i), value)
    return arr, len(pairs)


def _run_opts(h, fn, state, wait, signal):
    """RunOpts for a run with events (lock held), and what it points to."""
    w, nw = _event_points(h, "wait", wait)
    s, ns = _event_points(h, "signal", signal)
    opts = RunOpts()
    opts.function = fn
    opts.state = state._ptr_checked(h) if state is not None else None
    opts.wait = ctypes.cast(w, ctypes.POINTER(EventPoint))
    opts.n_wait = nw
    opts.signal = ctypes.cast(s, ctypes.POINTER(EventPoint))
    opts.n_signal = ns
    return opts, (w, s, wait, signal, state)


def _token_bytes(token):
    """token (str or bytes) as the bytes the library takes; ValueError unless
    it is 64 lowercase hex digits."""
    if isinstance(token, str):
        token = token.encode("ascii", "replace")
    if not isinstance(token, bytes) or lib.aneshare_token_check(token) < 0:
        raise ValueError("a token is 64 lowercase hex digits")
    return token


def _live(h):
    """Raise if h's C connection is gone (call with the lock held)."""
    if h.freed:
        raise ClosedError("the connection is closed")


def _drain_orphans(h):
    """Wait for tickets collected without wait() (lock held)."""
    while h.orphans:
        lib.aneshare_wait(h.cptr, h.orphans.pop())


class Ticket:
    """A run in flight (Program.submit): wait() for it exactly once."""
    __slots__ = ("_h", "id", "_keep", "_done")

    def __init__(self, h, ticket, keep):
        self._h = h
        self.id = ticket
        self._keep = keep
        self._done = False

    def wait(self):
        """Block until the run is done; raise its error if it failed."""
        h = self._h
        h.check()
        if self._done:
            raise ValueError("ticket %d was waited for already" % self.id)
        self._done = True
        with h.lock:
            _live(h)
            rc = lib.aneshare_wait(h.cptr, self.id)
            err = h.error(rc) if rc < 0 else None
        self._keep = None
        if h.async_calls:
            h.after_blocking()
        if err is not None:
            raise err

    def __del__(self):
        if not self._done and not self._h.freed and not self._h.forked:
            self._h.orphans.append(self.id)


async def _async_call(h, start, keep, mil=None):
    import asyncio
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    token = next(_tokens)
    h.async_calls[token] = (fut, keep, mil)
    _token_handles[token] = h
    try:
        with h.lock:
            if h.freed:
                raise ClosedError("the connection is closed")
            rc = start(token)
            if rc < 0:
                raise h.error(rc)
    except BaseException:
        h.async_calls.pop(token, None)
        _token_handles.pop(token, None)
        raise
    h.attach_loop(loop)
    try:
        await fut
    finally:
        h.rearm()


# ---- chains ----------------------------------------------------------------------


def _steps(h, steps):
    n = len(steps)
    if not 1 <= n <= MAX_STEPS:
        raise ValueError("a chain has 1 to %d steps, not %d" % (MAX_STEPS, n))
    arr = (Step * n)()
    keep = []
    states = None
    for i, st in enumerate(steps):
        state = None
        if len(st) == 3:
            prog, ins, outs = st
            fn = None
        elif len(st) == 4:
            prog, ins, outs, fn = st
        else:
            prog, ins, outs, fn, state = st
        if not isinstance(prog, Program):
            raise TypeError("step %d: a step is (program, inputs, outputs[, function[, state]])"
                            % i)
        if state is not None:
            _need("aneshare_run_chain_states")
            if states is None:
                states = (_vp * n)()
            states[i] = state._ptr_checked(h)
            keep.append(state)
        if prog._h is not h:
            raise ValueError("step %d: the program belongs to another connection" % i)
        pi = _ptr_array(ins, h)
        po = _ptr_array(outs, h)
        s = arr[i]
        s.program = prog._ptr_checked()
        s.function = prog._index(fn)
        s.inputs = ctypes.cast(pi, ctypes.POINTER(_vp))
        s.n_inputs = len(pi)
        s.outputs = ctypes.cast(po, ctypes.POINTER(_vp))
        s.n_outputs = len(po)
        keep.append((prog, ins, outs, pi, po))
    return arr, keep, states


# ---- the connection --------------------------------------------------------------


def default_socket_path():
    """The socket path used when none is given ($ANESHARE_SOCKET, ...)."""
    buf = ctypes.create_string_buffer(4096)
    rc = lib.aneshare_default_socket_path(buf, len(buf))
    if rc < 0:
        raise error_for(rc)
    return buf.value.decode()


def _connect_error(rc, socket):
    """The exception for a failed connect: what is wrong, then what to do (the
    CLI's advice, in the words of this API)."""
    from_env = socket is None and bool(os.environ.get("ANESHARE_SOCKET"))
    try:
        where = os.fsdecode(socket) if socket is not None else default_socket_path()
    except _errors.AneshareError:
        where = "the default socket"
    if from_env:
        where += " (from ANESHARE_SOCKET)"
    e = error_for(rc)
    why = e.name
    if rc in (-_errno.ENOENT, -_errno.ECONNREFUSED):
        what = ("no daemon listens on %s (%s%s): start one with 'aneshared' (or 'aneshare service "
                "install'), or connect to the socket of the one running (the socket argument or "
                "ANESHARE_SOCKET)" % (where, why, ": a stale socket file, its daemon gone"
                                      if rc == -_errno.ECONNREFUSED else ""))
    elif rc in (-_errno.EACCES, -_errno.EPERM):
        what = ("cannot connect to %s (%s): the socket belongs to another user (its directory is "
                "private to the daemon's user): run aneshared as yourself, or this program as its "
                "user" % (where, why))
    elif rc in (-_errno.ECONNRESET, -_errno.EPIPE):
        what = ("the daemon on %s hung up before the handshake (%s): it takes only its own user's "
                "clients (and --allow-uid ones), up to --max-connections at once: its log names "
                "the reason" % (where, why))
    elif isinstance(e, _errors.VersionError):
        what = ("the daemon on %s speaks another protocol version (%s): use the aneshare package "
                "of the daemon's build, or restart the daemon from this one's" % (where, why))
    elif rc == -_errno.ENAMETOOLONG:
        what = ("the socket path %s is longer than a Unix socket path can hold (%s): connect to "
                "a shorter one (the socket argument or ANESHARE_SOCKET)" % (where, why))
    else:
        what = "cannot connect to %s (%s)" % (where, why)
    e = error_for(rc, what)
    e._text = what   # it names the error itself
    e.args = (what,)
    return e


class Connection:
    """A connection to aneshared (aneshare_conn); a context manager."""

    def __init__(self, socket=None, name=None):
        ptr = _vp()
        sp = os.fsencode(socket) if socket is not None else None
        nm = name.encode() if name is not None else None
        rc = lib.aneshare_connect(sp, nm, ctypes.byref(ptr))
        if rc < 0:
            raise _connect_error(rc, socket)
        self._h = _Handle(ptr.value)

    # ---- lifetime ----

    def close(self):
        """End the connection.  Calls on it raise ClosedError from now on; the
        daemon frees what it holds for it once no array of its surfaces is
        alive any more (the arrays stay valid until then)."""
        h = self._h
        if h.closed or h.forked:
            return
        with h.lock:
            h.closed = h.bad = True
            for p in list(h.programs):   # and the arrays of their convenience calls
                p.release()
            if h.live == 0:
                h.disconnect()

    @property
    def closed(self):
        return self._h.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _locked(self, fn, *args):
        h = self._h
        h.check()
        with h.lock:
            _live(h)
            rc = fn(h.cptr, *args)
            if isinstance(rc, int) and rc < 0:
                raise h.error(rc)
        return rc

    def _read(self, fn):
        h = self._h
        h.check()
        with h.lock:
            _live(h)
            return fn(h.cptr)

    # ---- programs ----

    def compile(self, mil, weights=None):
        """Compile MIL and return a Program.  mil is MIL text, the path of a
        .mil file, or the path of an .mlmodelc folder: with a library that has
        aneshare_program_compile_model (and no weights given), the library
        opens its @model_path/ files strictly inside the folder and passes
        them by descriptor; else its model.mil is sent with the files under
        weights/ as @model_path/weights/NAME.  weights maps the
        paths of BLOBFILE(path = string("...")) to blobs: bytes-like objects
        (bytes, numpy arrays, ...) or files (a path, or an object with
        fileno()).  When every blob is a file, there are at most
        MAX_WEIGHT_FILES of them and the library has
        aneshare_program_compile_fds, the files go to the daemon by
        descriptor and their bytes never cross the socket; otherwise their
        bytes are sent."""
        h = self._h
        h.check()
        if weights is None and "aneshare_program_compile_model" in HAVE and \
                isinstance(mil, (str, os.PathLike)) and os.path.isdir(mil):
            return self._compile_model(os.fspath(mil))
        text, weights = _mil_source(mil, weights)
        weights = dict(weights or {})
        files = [k for k, v in weights.items() if _is_file(v)]
        if files and len(files) == len(weights) and len(files) <= MAX_WEIGHT_FILES and \
                "aneshare_program_compile_fds" in HAVE:
            return self._compile_fds(text, weights)
        for k in files:
            weights[k] = _file_bytes(weights[k])
        wl = []
        keep = []
        for path, blob in (weights or {}).items():
            mv = memoryview(np.ascontiguousarray(blob) if isinstance(blob, np.ndarray) else blob)
            if not mv.contiguous:
                raise ValueError("weight %r is not contiguous" % path)
            mv = mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv
            buf = (ctypes.c_char * len(mv)).from_buffer_copy(mv) if mv.readonly else \
                (ctypes.c_char * len(mv)).from_buffer(mv)
            keep.append((mv, buf))
            wl.append((os.fsencode(path) if not isinstance(path, bytes) else path,
                       ctypes.addressof(buf), len(mv)))
        warr = (Weight * len(wl))(*[Weight(p, d, n) for p, d, n in wl]) if wl else None
        return self._compiled(text, lambda cptr, prog, cached: lib.aneshare_program_compile(
            cptr, text.encode(), warr, len(wl), prog, cached))

    def _compiled(self, text, call):
        """Run call(connection, &program, &cached), one of the library's
        compile functions, under the connection's lock; the Program it made
        (released again if wrapping it fails), or the daemon's error naming
        text's lines."""
        h = self._h
        prog = _vp()
        cached = ctypes.c_bool()
        with h.lock:
            _live(h)
            rc = call(h.cptr, ctypes.byref(prog), ctypes.byref(cached))
            if rc < 0:
                raise h.error(rc, text)
            try:
                p = Program(self, prog.value, bool(cached.value), text)
            except BaseException:
                lib.aneshare_program_release(prog)
                raise
        if h.async_calls:
            h.after_blocking()
        return p

    def _compile_model(self, path):
        """An .mlmodelc folder through the library, which opens every
        @model_path/ file strictly inside the folder (no '..', no symbolic
        links) and passes them by descriptor."""
        try:
            with open(os.path.join(path, "model.mil"), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""   # the library's error names what is missing
        return self._compiled(text, lambda cptr, prog, cached: lib.aneshare_program_compile_model(
            cptr, os.fsencode(path), prog, cached))

    def _compile_fds(self, text, weights):
        opened = []
        try:
            wf = []
            for path, f in weights.items():
                if hasattr(f, "fileno"):
                    fd = f.fileno()
                else:
                    fd = os.open(f, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    opened.append(fd)
                wf.append(WeightFd(os.fsencode(path) if not isinstance(path, bytes) else path, fd))
            arr = (WeightFd * len(wf))(*wf)
            return self._compiled(text, lambda cptr, prog, cached: lib.aneshare_program_compile_fds(
                cptr, text.encode(), arr, len(wf), prog, cached))
        finally:
            for fd in opened:   # the library keeps duplicates of its own
                os.close(fd)

    # ---- surfaces ----

    def _surface(self, nbytes):
        h = self._h
        h.check()
        nbytes = int(nbytes)
        if nbytes < 1:
            raise ValueError("a surface holds at least 1 byte")
        return self._new(Surface, lambda c, ret: lib.aneshare_surface_create(c, nbytes, ret))

    def _new(self, cls, make):
        """cls(h, ptr) of the ptr that make(conn, &ptr) makes (a blocking
        call): a Surface or an Event."""
        h = self._h
        ptr = _vp()
        with h.lock:
            _live(h)
            rc = make(h.cptr, ctypes.byref(ptr))
            if rc < 0:
                raise h.error(rc)
            obj = cls(h, ptr.value)
        if h.async_calls:
            h.after_blocking()
        return obj

    def import_token(self, token):
        """The surface another process exported (Surface.export()), as this
        connection's own handle to the same memory (no copy): a Surface; view
        it with surface.array(dtype, shape) (not writeable if the export was
        read-only).  A token that is unknown, used up, expired or revoked
        raises NoSuchSurfaceError; a malformed one ValueError."""
        _need("aneshare_surface_import_token")
        token = _token_bytes(token)
        self._h.check()
        return self._new(Surface, lambda c, ret: lib.aneshare_surface_import_token(c, token, ret))

    def surface(self, nbytes):
        """A new shared surface of nbytes, as a uint8 numpy array viewing it
        (view it as any dtype: array.view(np.float16))."""
        return _array(self._surface(nbytes), np.dtype("u1"), (int(nbytes),))

    def array(self, dtype, shape):
        """A new shared surface holding one array of dtype and shape."""
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        n = dtype.itemsize
        for d in shape:
            n *= d
        return _array(self._surface(max(n, 1)), dtype, shape)

    # ---- runs ----

    def run_chain(self, steps, wait=None, signal=None):
        """Run steps, each (program, inputs, outputs[, function[, state]]),
        back to back in one request; on failure the exception's failed_step
        names the step.  wait and signal as for Program.run: the chain waits
        before its first step and signals after its last."""
        h = self._h
        h.check()
        with h.lock:   # programs are released under the lock
            _live(h)
            arr, keep, states = _steps(h, steps)
            if wait or signal:
                _need("aneshare_run_chain_ex")
                opts, evs = _run_opts(h, 0, None, wait, signal)
                rc = lib.aneshare_run_chain_ex(h.cptr, arr, states, len(arr), ctypes.byref(opts))
            elif states is None:
                rc = lib.aneshare_run_chain(h.cptr, arr, len(arr))
            else:
                rc = lib.aneshare_run_chain_states(h.cptr, arr, states, len(arr))
            if rc < 0:
                raise h.error(rc)
        if h.async_calls:
            h.after_blocking()

    async def run_chain_async(self, steps):
        """run_chain() as a coroutine (see Program.run_async)."""
        h = self._h
        h.check()
        keep = []

        def start(ud):   # called with the lock held
            arr, objs, states = _steps(h, steps)
            if states is not None:
                raise ValueError("a chain with states runs with run_chain, not run_chain_async")
            keep.append((arr, objs))
            return lib.aneshare_run_chain_async(h.cptr, arr, len(arr), _done_cb, ud)
        return await _async_call(h, start, keep)

    def wait(self, ticket):
        """ticket.wait()."""
        ticket.wait()

    # ---- events ----

    def event(self):
        """A new Event, value 0, owned by this connection (the only one that
        can signal it)."""
        _need("aneshare_event_create")
        self._h.check()
        return self._new(Event, lambda c, ret: lib.aneshare_event_create(c, ret))

    def import_event(self, token):
        """The event another connection exported (Event.export()), as a
        wait-only Event of this connection.  An unknown, used up, expired or
        revoked token raises NoSuchEventError; a malformed one ValueError."""
        _need("aneshare_event_import_token")
        token = _token_bytes(token)
        self._h.check()
        return self._new(Event, lambda c, ret: lib.aneshare_event_import_token(c, token, ret))

    # ---- state ----

    def status(self):
        """The daemon's status (docs/protocol.md, "status") as plain dicts."""
        h = self._h
        h.check()
        sp = ctypes.POINTER(Status)()
        with h.lock:
            _live(h)
            rc = lib.aneshare_get_status(h.cptr, ctypes.byref(sp))
            if rc < 0:
                raise h.error(rc)
        try:
            return _status_dict(sp.contents)
        finally:
            lib.aneshare_status_free(sp)

    @property
    def server(self):
        """What the daemon said in the handshake."""
        h = self._h
        h.check()
        with h.lock:
            _live(h)
            s = lib.aneshare_server(h.cptr).contents
            return {"protocol": s.protocol, "version": _s(s.server_version),
                    "backend": _s(s.backend), "max_frame": s.max_frame,
                    "max_surface_bytes": s.max_surface_bytes, "max_surfaces": s.max_surfaces,
                    "max_programs": s.max_programs, "max_inflight": s.max_inflight}

    @property
    def reconnect_count(self):
        """How often the library reconnected (surface IDs change each time)."""
        return self._read(lib.aneshare_reconnect_count)

    def set_reconnect(self, enable=True, timeout_ms=None):
        """Turn automatic reconnecting on or off; timeout_ms bounds one call's
        attempts."""
        self._locked(lib.aneshare_set_reconnect, bool(enable))
        if timeout_ms is not None:
            self._locked(lib.aneshare_set_reconnect_timeout, int(timeout_ms))

    @property
    def spin_us(self):
        """How long a blocking call polls for its reply before it sleeps."""
        return self._read(lib.aneshare_spin)

    @spin_us.setter
    def spin_us(self, us):
        self._locked(lib.aneshare_set_spin, int(us))

    @property
    def last_run_us(self):
        """The daemon's own time for the last run or chain that succeeded."""
        return self._read(lib.aneshare_last_run_us)

    def fileno(self):
        """The socket (-1 while the connection is broken)."""
        return self._read(lib.aneshare_fd)

    def __repr__(self):
        h = self._h
        state = "closed" if h.closed else "forked" if h.forked else "open"
        return "<aneshare.Connection %s>" % state


def _s(b):
    return b.decode("utf-8", "replace") if b is not None else ""


_PROC_FIELDS = ("pid", "uid", "connections", "surfaces", "surface_bytes", "fds", "programs",
                "program_bytes", "jobs", "unsent_bytes", "input_bytes", "runs", "queued",
                "device_us", "device_share")


def _status_dict(st):
    d = {"version": _s(st.server_version), "backend": _s(st.backend)}
    for f in ("uptime_ms", "clients", "programs", "surfaces", "surface_bytes", "runs", "compiles",
              "cache_hits", "lane_runs", "lane_spins", "lane_spin_hits", "lane_spin_gaps",
              "lane_spin_skips", "lane_slice_ends", "processes_total"):
        d[f] = int(getattr(st, f))
    d["program_list"] = [{"key": _s(st.program_list[i].key), "refs": st.program_list[i].refs}
                         for i in range(st.programs)]
    procs = []
    for i in range(st.n_processes):
        p = st.process_list[i]
        e = {"name": _s(p.name), "priority": _s(p.priority)}
        for f in _PROC_FIELDS:
            e[f] = int(getattr(p, f))
        procs.append(e)
    d["processes"] = procs
    d["totals"] = [{"resource": _s(t.resource), "used": t.used, "limit": t.limit,
                    "client_limit": t.client_limit, "uid_limit": t.uid_limit}
                   for t in (st.total_list[i] for i in range(st.n_totals))]
    shared = []
    if "aneshare_surface_export" in HAVE:   # the library's struct has these members
        for i in range(st.n_shared):
            e = st.shared_list[i]
            shared.append({"key": e.key, "size": e.size, "tokens": e.tokens,
                           "holders_total": e.holders_total,
                           "holders": [{"name": _s(hd.name), "pid": hd.pid,
                                        "read_only": bool(hd.read_only)}
                                       for hd in (e.holder_list[k] for k in range(e.n_holders))]})
        d["shared_total"] = int(st.shared_total)
    else:
        d["shared_total"] = 0
    d["shared"] = shared
    have_events = "aneshare_event_create" in HAVE   # the library's structs have these members
    d["events"] = int(st.events) if have_events else 0
    d["event_runs"] = int(st.event_runs) if have_events else 0
    for i, e in enumerate(procs):
        e["events"] = int(st.process_list[i].events) if have_events else 0
    return d


# Weight files one compile may pass by descriptor (the daemon's max_fds_per_frame).
MAX_WEIGHT_FILES = 4


def _is_file(v):
    return isinstance(v, (str, os.PathLike)) or hasattr(v, "fileno")


def _file_bytes(v):
    """The whole content of a weight file given as a path or a file object."""
    if hasattr(v, "fileno"):
        fd = v.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0)
    with open(v, "rb") as f:
        return f.read()


def _mil_source(mil, weights):
    """(MIL text, weights) from text, a .mil file or an .mlmodelc folder."""
    if isinstance(mil, bytes):
        return mil.decode(), weights
    if isinstance(mil, os.PathLike) or (isinstance(mil, str) and "\n" not in mil
                                        and "{" not in mil and os.path.exists(mil)):
        path = os.fspath(mil)
        if os.path.isdir(path):
            with open(os.path.join(path, "model.mil"), encoding="utf-8") as f:
                text = f.read()
            w = {}
            wdir = os.path.join(path, "weights")
            if os.path.isdir(wdir):
                for name in sorted(os.listdir(wdir)):
                    fp = os.path.join(wdir, name)
                    if os.path.isfile(fp):
                        w["@model_path/weights/" + name] = fp
            w.update(weights or {})
            return text, w
        with open(path, encoding="utf-8") as f:
            return f.read(), weights
    if not isinstance(mil, str):
        raise TypeError("compile() takes MIL text, a path or an .mlmodelc folder")
    return mil, weights


def connect(socket=None, name=None):
    """Connect to aneshared: socket None is the default path
    ($ANESHARE_SOCKET, ...; see default_socket_path()); name is shown in the
    daemon's logs and status."""
    return Connection(socket, name)
