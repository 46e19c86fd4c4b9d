# SPDX-License-Identifier: MIT
"""Exceptions: one class per wire error code of docs/protocol.md, plus the
library's own conditions.  Every AneshareError carries

  code       the library's negative code (as aneshare_strerror takes it);
  wire_code  the daemon's error code (1..8999), or None for system errors
             and the library's own codes;
  name       aneshare_strerror(code): "limit", "compile", "disconnected",
             "Connection refused", ...;
  message    the daemon's (or the library's) message, aneshare_last_error();
  retryable  aneshare_error_is_retryable(code): the call may succeed if
             simply made again on the same connection.
"""
import errno as _errno
import re

from ._lib import lib

EBASE = 1000
EDISCONNECTED = EBASE + 9001


class AneshareError(Exception):
    """Base class of every error a call on a connection raises."""
    wire_code = None

    def __init__(self, code, message="", failed_step=-1):
        self.code = code
        self.name = lib.aneshare_strerror(code).decode("utf-8", "replace")
        self.message = message
        self.retryable = bool(lib.aneshare_error_is_retryable(code))
        self.failed_step = failed_step
        self._text = self.name + (": " + message if message and message != self.name else "")
        Exception.__init__(self, self._text)

    def __str__(self):
        return self._text


class OSFailure(AneshareError, OSError):
    """A system error (negative errno) the library returned."""

    def __init__(self, code, message="", failed_step=-1):
        AneshareError.__init__(self, code, message, failed_step)
        self.errno = -code
        self.strerror = self.name


class DisconnectedError(AneshareError, ConnectionError):
    """The connection broke (the daemon died or restarted) during the call:
    retryable.  A run may or may not have happened."""


class ClosedError(RuntimeError):
    """The connection was closed with close() (or its `with` block ended)."""


class ForkError(RuntimeError):
    """A connection made before fork() was used in the child.  The socket is
    shared with the parent, so the child must make its own connection."""


class DaemonError(AneshareError):
    """An error the daemon answered with (a wire error code)."""


class ProtocolError(DaemonError):
    wire_code = 1


class VersionError(DaemonError):
    wire_code = 2


class HandshakeError(DaemonError):
    wire_code = 3


class UnknownMethodError(DaemonError):
    wire_code = 4


class InvalidParamsError(DaemonError):
    wire_code = 5


class NoSuchSurfaceError(DaemonError):
    wire_code = 6


class NoSuchProgramError(DaemonError):
    wire_code = 7


class NoSuchFunctionError(DaemonError):
    wire_code = 8


class LimitError(DaemonError):
    wire_code = 9


class CompileError(DaemonError):
    """The MIL text is invalid.  `line` is the line the daemon names (1-based,
    or None), `source_line` that line's text when the MIL is known."""
    wire_code = 10
    line = None
    source_line = None


class UnsupportedError(DaemonError):
    wire_code = 11


class SizeMismatchError(DaemonError):
    wire_code = 12


class BadFdError(DaemonError):
    wire_code = 13


class RunFailedError(DaemonError):
    wire_code = 14


class NoMemoryError(DaemonError):
    wire_code = 15


class InternalError(DaemonError):
    wire_code = 16


class ShuttingDownError(DaemonError):
    wire_code = 17


class WorkerRestartedError(DaemonError):
    wire_code = 18


class NoSuchStateError(DaemonError):
    wire_code = 19


class StateLostError(DaemonError):
    """The state's contents are unknown (a run of it failed, or the daemon
    restarted): State.reset() it."""
    wire_code = 20


class NoSuchEventError(DaemonError):
    """No event with that ID on this connection, or an unknown event token."""
    wire_code = 21


class EventClosedError(DaemonError):
    """The event closed below the value waited for (its owner released it,
    or the daemon restarted since the event was made)."""
    wire_code = 22


BY_WIRE_CODE = {c.wire_code: c for c in (
    ProtocolError, VersionError, HandshakeError, UnknownMethodError, InvalidParamsError,
    NoSuchSurfaceError, NoSuchProgramError, NoSuchFunctionError, LimitError, CompileError,
    UnsupportedError, SizeMismatchError, BadFdError, RunFailedError, NoMemoryError, InternalError,
    ShuttingDownError, WorkerRestartedError, NoSuchStateError, StateLostError, NoSuchEventError,
    EventClosedError)}

_LINE = re.compile(r"\bline (\d+)")


def error_for(code, message="", failed_step=-1, mil=None):
    """The exception for a negative code returned by the library."""
    if -EBASE < code < 0:
        if -code in (_errno.ECONNREFUSED, _errno.ECONNRESET, _errno.ENOENT, _errno.EPIPE):
            cls = _os_connection_error
        else:
            cls = OSFailure
        return cls(code, message, failed_step)
    if code == -EDISCONNECTED:
        return DisconnectedError(code, message, failed_step)
    wire = -code - EBASE
    cls = BY_WIRE_CODE.get(wire)
    if cls is None:
        e = (DaemonError if 0 < wire < 9000 else AneshareError)(code, message, failed_step)
        e.wire_code = wire if 0 < wire < 9000 else None
        return e
    e = cls(code, message, failed_step)
    if cls is CompileError:
        m = _LINE.search(message)
        if m:
            e.line = int(m.group(1))
            if mil is not None:
                lines = mil.splitlines()
                if 1 <= e.line <= len(lines):
                    e.source_line = lines[e.line - 1]
    return e


class ConnectFailure(OSFailure, ConnectionError):
    """No daemon answered on the socket (ENOENT, ECONNREFUSED, ...)."""


_os_connection_error = ConnectFailure
