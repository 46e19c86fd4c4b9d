# SPDX-License-Identifier: MIT
"""Fixtures: a real aneshared (CPU backend) on a private socket, as
tests/daemon_harness.c starts them for the C suites.

$ANESHARED names the daemon and $ANESHARE_LIBRARY the library (meson test
sets both); by default both come from ROOT/build."""
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ANESHARE_LIBRARY", os.path.join(ROOT, "build", "client", "libaneshare.so"))
os.environ.setdefault("ANESHARED", os.path.join(ROOT, "build", "daemon", "aneshared"))
sys.path.insert(0, os.path.join(ROOT, "python"))

import aneshare  # noqa: E402

EXAMPLES = os.path.join(ROOT, "examples")

TINY = """program(1.3)
{
    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {
        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string("y")];
    } -> (y);
}
"""

TWO_FUNCTIONS = """program(1.3)
{
    func main<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {
        tensor<fp16, [1, 1, 1, 16]> y = relu(x = x)[name = string("y")];
    } -> (y);
    func twice<ios18>(tensor<fp16, [1, 1, 1, 16]> x) {
        tensor<fp16, [1, 1, 1, 16]> y = add(x = x, y = x)[name = string("y")];
    } -> (y);
}
"""

GATHER = """program(1.3)
{
    func main<ios18>(tensor<int32, [3]> idx) {
        tensor<fp16, [4, 2]> table = const()[name = string("table"), val = tensor<fp16, [4, 2]>([1, 2, 3, 4, 5, 6, 7, 8])];
        int32 ax = const()[name = string("ax"), val = int32(0)];
        tensor<fp16, [3, 2]> y = gather(x = table, indices = idx, axis = ax)[name = string("y")];
    } -> (y);
}
"""

MM_PATH = os.path.join(EXAMPLES, "dynamic_matmul.mil")


def mm_reference(x):
    """examples/dynamic_matmul.mil in fp32: out[oc][s] = sum_ic act[ic][s] w[ic][oc]."""
    import numpy as np
    x = np.asarray(x, dtype=np.float32)[0, :, 0, :]
    act, w = x[:, :64], x[:, 64:]
    return (w.T @ act)[None, :, None, :]


def rel_err(got, ref):
    """max |got - ref| / max |ref| (got in fp32)."""
    import numpy as np
    got = np.asarray(got, dtype=np.float32)
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def square_mm(n, fn="main"):
    """z = x @ y on [1, 1, n, n] fp16 (a run of n = 512 takes tens of ms)."""
    t = "tensor<fp16, [1, 1, %d, %d]>" % (n, n)
    return ("program(1.3)\n{\n    func %s<ios18>(%s x, %s y) {\n"
            "        bool f = const()[name = string(\"f\"), val = bool(false)];\n"
            "        %s z = matmul(transpose_x = f, transpose_y = f, x = x, y = y)[name = string(\"z\")];\n"
            "    } -> (z);\n}\n" % (fn, t, t, t))


def _die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass


class Daemon:
    """aneshared on DIR/aneshare.sock, its stderr in DIR/daemon.log."""

    def __init__(self, *args):
        self.args = list(args)
        self.dir = tempfile.mkdtemp(prefix="anes-py-")
        self.sock = os.path.join(self.dir, "aneshare.sock")
        self.log = os.path.join(self.dir, "daemon.log")
        self.proc = None
        self.start()

    def start(self):
        env = dict(os.environ, XDG_CONFIG_HOME=self.dir, ANESHARE_SOCKET=self.sock)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [os.environ["ANESHARED"], "--socket", self.sock, "--backend", "cpu"] + self.args,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10
        while True:   # until it answers hello (bounded)
            try:
                aneshare.connect(self.sock, "fixture").close()
                return
            except aneshare.AneshareError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("aneshared exited during start-up (%s): %s"
                                   % (self.proc.returncode, open(self.log).read()[-2000:]))
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("aneshared did not answer on %s within 10 s" % self.sock)
            time.sleep(0.005)

    def crash(self):
        """SIGKILL, like a crash: the socket file stays."""
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        """SIGTERM and check a clean exit."""
        self.proc.terminate()
        rc = self.proc.wait(timeout=20)
        assert rc == 0, "aneshared exited with %d: %s" % (rc, open(self.log).read()[-2000:])

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon():
    d = Daemon()
    yield d
    d.stop()
    d.close()


@pytest.fixture
def fresh_daemon():
    """A daemon of this test's own (for tests that kill or limit it)."""
    made = []

    def make(*args):
        d = Daemon(*args)
        made.append(d)
        return d
    yield make
    for d in made:
        d.close()


@pytest.fixture
def conn(daemon):
    c = aneshare.connect(daemon.sock, "pytest")
    yield c
    c.close()


def wait_until(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.005)
