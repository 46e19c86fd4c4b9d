# SPDX-License-Identifier: MIT
"""aneshare: share Apple's Neural Engine between processes, from Python.

A thin layer over libaneshare (the C client library) through ctypes:
numpy arrays live on shared-memory surfaces that the daemon reads and
writes in place.  See python/README.md.

    import aneshare, numpy as np
    with aneshare.connect() as conn:
        prog = conn.compile("examples/dynamic_matmul.mil")
        x, = prog.new_inputs()          # numpy arrays on shared memory
        out, = prog.new_outputs()
        x[...] = np.random.rand(*x.shape)
        prog.run([x], [out])            # zero-copy
        y = prog(x=np.ones(x.shape))    # copying convenience call
"""
from ._lib import LibraryNotFoundError, MAX_STEPS
from ._errors import (AneshareError, BadFdError, ClosedError, CompileError, ConnectFailure,
                      DaemonError, DisconnectedError, ForkError, HandshakeError, InternalError,
                      InvalidParamsError, LimitError, NoMemoryError, NoSuchFunctionError,
                      NoSuchProgramError, NoSuchSurfaceError, OSFailure, ProtocolError,
                      RunFailedError, ShuttingDownError, SizeMismatchError, UnknownMethodError,
                      UnsupportedError, VersionError, WorkerRestartedError, NoSuchStateError,
                      StateLostError, NoSuchEventError, EventClosedError, BY_WIRE_CODE)
from ._core import (MAX_WEIGHT_FILES, MAX_RUN_EVENTS, Connection, Event, Function, Program, State,
                    Surface, Tensor, Ticket, connect, default_socket_path, surface_of)

__version__ = "0.1.0"

__all__ = [
    "connect", "Connection", "Program", "Function", "Tensor", "Surface", "Ticket", "surface_of",
    "default_socket_path", "MAX_STEPS", "MAX_WEIGHT_FILES", "LibraryNotFoundError",
    "AneshareError", "OSFailure", "ConnectFailure", "DisconnectedError", "ClosedError",
    "ForkError", "DaemonError", "ProtocolError", "VersionError", "HandshakeError",
    "UnknownMethodError", "InvalidParamsError", "NoSuchSurfaceError", "NoSuchProgramError",
    "NoSuchFunctionError", "LimitError", "CompileError", "UnsupportedError", "SizeMismatchError",
    "BadFdError", "RunFailedError", "NoMemoryError", "InternalError", "ShuttingDownError",
    "WorkerRestartedError", "NoSuchStateError", "StateLostError", "State", "BY_WIRE_CODE",
    "NoSuchEventError", "EventClosedError", "Event", "MAX_RUN_EVENTS",
]
