# SPDX-License-Identifier: MIT
"""Loading libaneshare and declaring its functions (client/aneshare.h) for ctypes.

The library is found, in this order:
  1. $ANESHARE_LIBRARY, a path to libaneshare.so (libaneshare.dylib on macOS);
  2. the library of the install this package came with (meson install writes
     its libdir into _build_config.py);
  3. the dynamic linker's search (LD_LIBRARY_PATH, ld.so.cache, DYLD_*),
     by soname.
"""
import ctypes
import os
import sys

# ---- the types of client/aneshare.h -------------------------------------------

MAX_RANK = 8
MAX_STEPS = 256
EV_READ = 1
EV_WRITE = 2


class TensorInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_uint32),
                ("shape", ctypes.c_uint64 * MAX_RANK), ("bytes", ctypes.c_uint64)]


class ServerInfo(ctypes.Structure):
    _fields_ = [("protocol", ctypes.c_uint32), ("server_version", ctypes.c_char_p),
                ("backend", ctypes.c_char_p), ("max_frame", ctypes.c_uint64),
                ("max_surface_bytes", ctypes.c_uint64), ("max_surfaces", ctypes.c_uint32),
                ("max_programs", ctypes.c_uint32), ("max_inflight", ctypes.c_uint32)]


class Weight(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("data", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class WeightFd(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("fd", ctypes.c_int)]


class Step(ctypes.Structure):
    _fields_ = [("program", ctypes.c_void_p), ("function", ctypes.c_uint32),
                ("inputs", ctypes.POINTER(ctypes.c_void_p)), ("n_inputs", ctypes.c_size_t),
                ("outputs", ctypes.POINTER(ctypes.c_void_p)), ("n_outputs", ctypes.c_size_t)]


class Result(ctypes.Structure):
    _fields_ = [("rc", ctypes.c_int), ("failed_step", ctypes.c_int), ("message", ctypes.c_char_p)]


class StatusProgram(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("refs", ctypes.c_uint32)]


class StatusProcess(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("pid", ctypes.c_uint64), ("uid", ctypes.c_uint32),
                ("connections", ctypes.c_uint32)] + \
               [(f, ctypes.c_uint64) for f in (
                   "surfaces", "surface_bytes", "fds", "programs", "program_bytes", "jobs",
                   "unsent_bytes", "input_bytes", "runs", "queued", "device_us", "device_share")] + \
               [("priority", ctypes.c_char_p), ("events", ctypes.c_uint64)]


class StatusTotal(ctypes.Structure):
    _fields_ = [("resource", ctypes.c_char_p), ("used", ctypes.c_uint64), ("limit", ctypes.c_uint64),
                ("client_limit", ctypes.c_uint64), ("uid_limit", ctypes.c_uint64)]


TOKEN_LEN = 64


class Token(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char * (TOKEN_LEN + 1))]


class ExportOpts(ctypes.Structure):
    _fields_ = [("read_only", ctypes.c_bool), ("uses", ctypes.c_uint32), ("ttl_ms", ctypes.c_uint32)]


class StatusHolder(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("pid", ctypes.c_uint64), ("read_only", ctypes.c_bool)]


class StatusShared(ctypes.Structure):
    _fields_ = [("key", ctypes.c_uint64), ("size", ctypes.c_uint64), ("tokens", ctypes.c_uint32),
                ("holders_total", ctypes.c_uint32), ("n_holders", ctypes.c_uint32), ("holder_list", ctypes.POINTER(StatusHolder))]


class Status(ctypes.Structure):
    _fields_ = [("server_version", ctypes.c_char_p), ("backend", ctypes.c_char_p),
                ("uptime_ms", ctypes.c_uint64), ("clients", ctypes.c_uint32),
                ("programs", ctypes.c_uint32), ("surfaces", ctypes.c_uint32),
                ("surface_bytes", ctypes.c_uint64), ("runs", ctypes.c_uint64),
                ("compiles", ctypes.c_uint64), ("cache_hits", ctypes.c_uint64),
                ("program_list", ctypes.POINTER(StatusProgram)),
                ("lane_runs", ctypes.c_uint64), ("lane_spins", ctypes.c_uint64),
                ("lane_spin_hits", ctypes.c_uint64), ("lane_spin_gaps", ctypes.c_uint64),
                ("lane_spin_skips", ctypes.c_uint64),
                ("n_processes", ctypes.c_uint32), ("processes_total", ctypes.c_uint32),
                ("process_list", ctypes.POINTER(StatusProcess)),
                ("n_totals", ctypes.c_uint32), ("total_list", ctypes.POINTER(StatusTotal)),
                ("lane_slice_ends", ctypes.c_uint64),
                # read only from a library that has the sharing calls (HAVE): an
                # older one allocates the struct without them
                ("n_shared", ctypes.c_uint32), ("shared_total", ctypes.c_uint64),
                ("shared_list", ctypes.POINTER(StatusShared)),
                # read only from a library that has events (HAVE)
                ("events", ctypes.c_uint64), ("event_runs", ctypes.c_uint64)]


DONE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(Result), ctypes.c_void_p)

MAX_RUN_EVENTS = 8   # ANESHARE_MAX_RUN_EVENTS


class EventPoint(ctypes.Structure):
    _fields_ = [("event", ctypes.c_void_p), ("value", ctypes.c_uint64)]


class RunOpts(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("state", ctypes.c_void_p),
                ("wait", ctypes.POINTER(EventPoint)), ("n_wait", ctypes.c_size_t),
                ("signal", ctypes.POINTER(EventPoint)), ("n_signal", ctypes.c_size_t),
                ("reserved", ctypes.c_uint64 * 4)]

_vp = ctypes.c_void_p
_u32 = ctypes.c_uint32
_sz = ctypes.c_size_t
_int = ctypes.c_int
_str = ctypes.c_char_p
_pvp = ctypes.POINTER(ctypes.c_void_p)

# name: (restype, argtypes)
_PROTOTYPES = {
    "aneshare_strerror": (_str, [_int]),
    "aneshare_error_is_retryable": (ctypes.c_bool, [_int]),
    "aneshare_default_socket_path": (_int, [ctypes.c_char_p, _sz]),
    "aneshare_connect": (_int, [_str, _str, ctypes.POINTER(_vp)]),
    "aneshare_disconnect": (None, [_vp]),
    "aneshare_last_error": (_str, [_vp]),
    "aneshare_set_reconnect": (_int, [_vp, ctypes.c_bool]),
    "aneshare_set_reconnect_timeout": (_int, [_vp, _u32]),
    "aneshare_reconnect_count": (ctypes.c_uint64, [_vp]),
    "aneshare_set_spin": (_int, [_vp, _u32]),
    "aneshare_spin": (_u32, [_vp]),
    "aneshare_server": (ctypes.POINTER(ServerInfo), [_vp]),
    "aneshare_surface_create": (_int, [_vp, _sz, ctypes.POINTER(_vp)]),
    "aneshare_surface_import": (_int, [_vp, _int, ctypes.POINTER(_vp)]),
    "aneshare_surface_release": (_int, [_vp]),
    "aneshare_surface_data": (_vp, [_vp]),
    "aneshare_surface_size": (_sz, [_vp]),
    "aneshare_surface_id": (_u32, [_vp]),
    "aneshare_program_compile": (_int, [_vp, _str, ctypes.POINTER(Weight), _sz, ctypes.POINTER(_vp),
                                        ctypes.POINTER(ctypes.c_bool)]),
    "aneshare_program_release": (_int, [_vp]),
    "aneshare_program_key": (_str, [_vp]),
    "aneshare_program_function_count": (_u32, [_vp]),
    "aneshare_program_function_name": (_str, [_vp, _u32]),
    "aneshare_program_input_count": (_u32, [_vp, _u32]),
    "aneshare_program_output_count": (_u32, [_vp, _u32]),
    "aneshare_program_input": (ctypes.POINTER(TensorInfo), [_vp, _u32, _u32]),
    "aneshare_program_output": (ctypes.POINTER(TensorInfo), [_vp, _u32, _u32]),
    "aneshare_run": (_int, [_vp, _u32, _pvp, _sz, _pvp, _sz]),
    "aneshare_run_submit": (_int, [_vp, _u32, _pvp, _sz, _pvp, _sz, ctypes.POINTER(_u32)]),
    "aneshare_wait": (_int, [_vp, _u32]),
    "aneshare_run_chain": (_int, [_vp, ctypes.POINTER(Step), _sz]),
    "aneshare_last_failed_step": (_int, [_vp]),
    "aneshare_last_run_us": (ctypes.c_uint64, [_vp]),
    "aneshare_run_async": (_int, [_vp, _u32, _pvp, _sz, _pvp, _sz, DONE_FN, _vp]),
    "aneshare_run_chain_async": (_int, [_vp, ctypes.POINTER(Step), _sz, DONE_FN, _vp]),
    "aneshare_fd": (_int, [_vp]),
    "aneshare_events": (_int, [_vp]),
    "aneshare_dispatch": (_int, [_vp]),
    "aneshare_async_outstanding": (_sz, [_vp]),
    "aneshare_get_status": (_int, [_vp, ctypes.POINTER(ctypes.POINTER(Status))]),
    "aneshare_status_free": (None, [ctypes.POINTER(Status)]),
}


# Functions of newer libraries, used when present (HAVE lists those found).
_OPTIONAL_PROTOTYPES = {
    "aneshare_program_compile_fds": (_int, [_vp, _str, ctypes.POINTER(WeightFd), _sz,
                                            ctypes.POINTER(_vp), ctypes.POINTER(ctypes.c_bool)]),
    "aneshare_program_compile_model": (_int, [_vp, _str, ctypes.POINTER(_vp),
                                              ctypes.POINTER(ctypes.c_bool)]),
    "aneshare_surface_export": (_int, [_vp, ctypes.POINTER(ExportOpts), ctypes.POINTER(Token),
                                       ctypes.POINTER(ctypes.c_uint64)]),
    "aneshare_surface_import_token": (_int, [_vp, _str, ctypes.POINTER(_vp)]),
    "aneshare_surface_read_only": (ctypes.c_bool, [_vp]),
    "aneshare_token_check": (_int, [_str]),
    # states (docs/protocol.md, "States")
    "aneshare_program_state_count": (_u32, [_vp, _u32]),
    "aneshare_program_state": (ctypes.POINTER(TensorInfo), [_vp, _u32, _u32]),
    "aneshare_state_create": (_int, [_vp, _u32, ctypes.POINTER(_vp)]),
    "aneshare_state_reset": (_int, [_vp]),
    "aneshare_state_release": (_int, [_vp]),
    "aneshare_state_size": (ctypes.c_uint64, [_vp]),
    "aneshare_run_state": (_int, [_vp, _u32, _vp, _pvp, _sz, _pvp, _sz]),
    "aneshare_run_state_submit": (_int, [_vp, _u32, _vp, _pvp, _sz, _pvp, _sz,
                                         ctypes.POINTER(_u32)]),
    "aneshare_run_chain_states": (_int, [_vp, ctypes.POINTER(Step), _pvp, _sz]),
    "aneshare_run_state_async": (_int, [_vp, _u32, _vp, _pvp, _sz, _pvp, _sz, DONE_FN, _vp]),
    # events (docs/protocol.md, "Events")
    "aneshare_event_create": (_int, [_vp, ctypes.POINTER(_vp)]),
    "aneshare_event_signal": (_int, [_vp, ctypes.c_uint64]),
    "aneshare_event_wait": (_int, [_vp, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)]),
    "aneshare_event_wait_async": (_int, [_vp, ctypes.c_uint64, DONE_FN, _vp]),
    "aneshare_event_value": (_int, [_vp, ctypes.POINTER(ctypes.c_uint64)]),
    "aneshare_event_export": (_int, [_vp, ctypes.POINTER(ExportOpts), ctypes.POINTER(Token),
                                     ctypes.POINTER(ctypes.c_uint64)]),
    "aneshare_event_import_token": (_int, [_vp, _str, ctypes.POINTER(_vp)]),
    "aneshare_event_imported": (ctypes.c_bool, [_vp]),
    "aneshare_event_release": (_int, [_vp]),
    "aneshare_run_ex": (_int, [_vp, _pvp, _sz, _pvp, _sz, ctypes.POINTER(RunOpts)]),
    "aneshare_run_submit_ex": (_int, [_vp, _pvp, _sz, _pvp, _sz, ctypes.POINTER(RunOpts),
                                      ctypes.POINTER(_u32)]),
    "aneshare_run_async_ex": (_int, [_vp, _pvp, _sz, _pvp, _sz, ctypes.POINTER(RunOpts), DONE_FN,
                                     _vp]),
    "aneshare_run_chain_ex": (_int, [_vp, ctypes.POINTER(Step), _pvp, _sz, ctypes.POINTER(RunOpts)]),
}
HAVE = set()


class LibraryNotFoundError(ImportError):
    """libaneshare could not be loaded."""


def _candidates():
    env = os.environ.get("ANESHARE_LIBRARY")
    if env:
        return [env], True
    names = []
    try:
        from . import _build_config  # written by meson install
        libdir = getattr(_build_config, "LIBDIR", "")
    except ImportError:
        libdir = ""
    if sys.platform == "darwin":
        sonames = ["libaneshare.0.dylib", "libaneshare.dylib"]
    else:
        sonames = ["libaneshare.so.0", "libaneshare.so"]
    if libdir:
        names += [os.path.join(libdir, n) for n in sonames]
    names += sonames
    if sys.platform == "darwin":   # Homebrew's and meson's default prefixes, not searched by dyld
        names += [os.path.join(d, sonames[0]) for d in ("/opt/homebrew/lib", "/usr/local/lib")]
    return names, False


def load():
    names, from_env = _candidates()
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        if from_env:
            raise LibraryNotFoundError(
                "cannot load libaneshare from ANESHARE_LIBRARY=%s: %s" % (names[0], errors[0]))
        raise LibraryNotFoundError(
            "libaneshare not found: install it (meson install puts it where the dynamic linker "
            "finds it) or set ANESHARE_LIBRARY=/path/to/libaneshare%s (tried %s)"
            % (".dylib" if sys.platform == "darwin" else ".so", ", ".join(names)))
    missing = []
    for fname, (restype, argtypes) in _PROTOTYPES.items():
        try:
            f = getattr(lib, fname)
        except AttributeError:
            missing.append(fname)
            continue
        f.restype = restype
        f.argtypes = argtypes
    if missing:
        raise LibraryNotFoundError("%s is not a libaneshare this package can use: it lacks %s"
                                   % (lib._name, ", ".join(missing)))
    for fname, (restype, argtypes) in _OPTIONAL_PROTOTYPES.items():
        f = getattr(lib, fname, None)
        if f is not None:
            f.restype = restype
            f.argtypes = argtypes
            HAVE.add(fname)
    return lib


lib = load()
