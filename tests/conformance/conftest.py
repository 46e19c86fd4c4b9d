# SPDX-License-Identifier: MIT
"""A real aneshared (CPU backend) on a private socket for the conformance
suite; $ANESHARED names it (meson test sets it), else ROOT/build's."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.environ.setdefault("ANESHARED", os.path.join(ROOT, "build", "daemon", "aneshared"))

import anes_wire as w  # noqa: E402


class Daemon:
    """aneshared on DIR/s.sock, its stderr in DIR/daemon.log."""

    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="anes-conf-")
        self.sock = os.path.join(self.dir, "s.sock")
        self.log = os.path.join(self.dir, "daemon.log")
        env = dict(os.environ, XDG_CONFIG_HOME=self.dir)
        env.pop("ANESHARE_SOCKET", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [os.environ["ANESHARED"], "--socket", self.sock, "--backend", "cpu"] + list(args),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError("aneshared exited (%s): %s" % (self.proc.returncode, self.logtext()))
            try:
                w.connect(self.sock).close()
                return True
            except (FileNotFoundError, ConnectionRefusedError):
                return False
        w.poll(up, "aneshared to answer hello", timeout=10)

    def logtext(self):
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]

    def connect(self, name="conformance"):
        return w.connect(self.sock, name)

    def raw(self):
        """A connection without hello."""
        return w.Conn(self.sock)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("aneshared did not exit on SIGTERM")
            assert rc == 0, "aneshared exited with %d: %s" % (rc, self.logtext())
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def own_daemon():
    """A daemon of this test's own, with the given options."""
    made = []

    def make(*args):
        made.append(Daemon(*args))
        return made[-1]
    yield make
    for d in made:
        d.stop()


@pytest.fixture
def conn(daemon):
    c = daemon.connect()
    yield c
    c.close()
