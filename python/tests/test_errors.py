# SPDX-License-Identifier: MIT
"""Every error class: one per wire code of docs/protocol.md, each with the
daemon's name and the library's retryable flag; and the ones a daemon can be
made to answer, from a real daemon."""
import errno

import numpy as np
import pytest

import aneshare
from aneshare._errors import error_for
from aneshare._lib import lib
from conftest import TINY

# docs/protocol.md, "Errors"
WIRE = {1: "protocol", 2: "version", 3: "handshake", 4: "unknown_method", 5: "invalid_params",
        6: "no_such_surface", 7: "no_such_program", 8: "no_such_function", 9: "limit",
        10: "compile", 11: "unsupported", 12: "size_mismatch", 13: "bad_fd", 14: "run_failed",
        15: "no_memory", 16: "internal", 17: "shutting_down", 18: "worker_restarted",
        19: "no_such_state", 20: "state_lost"}
CLASS = {1: aneshare.ProtocolError, 2: aneshare.VersionError, 3: aneshare.HandshakeError,
         4: aneshare.UnknownMethodError, 5: aneshare.InvalidParamsError,
         6: aneshare.NoSuchSurfaceError, 7: aneshare.NoSuchProgramError,
         8: aneshare.NoSuchFunctionError, 9: aneshare.LimitError, 10: aneshare.CompileError,
         11: aneshare.UnsupportedError, 12: aneshare.SizeMismatchError, 13: aneshare.BadFdError,
         14: aneshare.RunFailedError, 15: aneshare.NoMemoryError, 16: aneshare.InternalError,
         17: aneshare.ShuttingDownError, 18: aneshare.WorkerRestartedError,
         19: aneshare.NoSuchStateError, 20: aneshare.StateLostError}


@pytest.mark.parametrize("wire", sorted(WIRE))
def test_one_class_per_wire_code(wire):
    code = -(1000 + wire)
    e = error_for(code, "the message")
    assert type(e) is CLASS[wire] and aneshare.BY_WIRE_CODE[wire] is CLASS[wire]
    assert isinstance(e, aneshare.DaemonError) and isinstance(e, aneshare.AneshareError)
    assert e.code == code and e.wire_code == wire and e.name == WIRE[wire]
    assert e.message == "the message" and str(e) == WIRE[wire] + ": the message"
    assert e.retryable == lib.aneshare_error_is_retryable(code)
    assert e.retryable == (wire in (17, 18))   # aneshare.h: shutting_down, worker_restarted


def test_library_and_system_codes():
    d = error_for(-(1000 + 9001))
    assert type(d) is aneshare.DisconnectedError and d.retryable and d.wire_code is None
    assert isinstance(d, ConnectionError)
    r = error_for(-errno.ECONNREFUSED)
    assert isinstance(r, aneshare.ConnectFailure) and isinstance(r, OSError)
    assert r.errno == errno.ECONNREFUSED and not r.retryable
    assert r.retryable == lib.aneshare_error_is_retryable(-errno.ECONNREFUSED)
    i = error_for(-errno.EINVAL, "bad")
    assert type(i) is aneshare.OSFailure and i.errno == errno.EINVAL and "bad" in str(i)
    # a code a newer daemon may add: a DaemonError with its number
    u = error_for(-(1000 + 77), "new")
    assert type(u) is aneshare.DaemonError and u.wire_code == 77
    assert u.retryable == lib.aneshare_error_is_retryable(-(1000 + 77))


def test_compile_error_without_line():
    e = error_for(-(1000 + 10), "no line here", mil="a\nb")
    assert e.line is None and e.source_line is None


def test_errors_from_the_daemon(conn):
    p = conn.compile(TINY)
    x, = p.new_inputs()
    y, = p.new_outputs()
    small = conn.surface(8)
    with pytest.raises(aneshare.SizeMismatchError) as ei:
        p.run([small], [y])
    assert ei.value.wire_code == 12 and not ei.value.retryable
    with pytest.raises(aneshare.SizeMismatchError):
        p.run([x, x], [y])   # one input too many
    with pytest.raises(aneshare.UnsupportedError) as ei:
        conn.compile(TINY.replace(
            "tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y\")];",
            "tensor<fp16, [4, 2]> t = const()[name = string(\"t\"), val = tensor<fp16, [4, 2]>"
            "([1, 2, 3, 4, 5, 6, 7, 8])];\n"
            "        tensor<int32, [4, 3]> i = const()[name = string(\"i\"), val = tensor<int32, "
            "[4, 3]>([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])];\n"
            "        tensor<fp16, [4, 3]> g = gather(x = t, indices = i, axis = 1, batch_dims = 1)"
            "[name = string(\"g\")];\n"
            "        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string(\"y\")];"))
    assert ei.value.wire_code == 11 and "batch_dims" in ei.value.message
    # the connection is intact after each
    p.run([x], [y])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
