# SPDX-License-Identifier: MIT
"""examples/python/: each checks its results against numpy and exits 1 if they
are off."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script,args", [
    ("dynamic_matmul.py", ["--sets", "3", "--runs", "20"]),
    ("transformer_block.py", []),
    ("transformer_block.py", ["--mil", os.path.join(ROOT, "examples", "transformer_block_verified.mil")]),
])
def test_example(daemon, script, args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", script),
                        "--socket", daemon.sock] + args, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" in r.stdout


@pytest.mark.parametrize("script", ["dynamic_matmul.py", "transformer_block.py"])
def test_example_without_a_daemon_says_so(tmp_path, script):
    """No daemon on the socket: one line naming it and what to check, exit 1, no traceback."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    sock = str(tmp_path / "none.sock")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", script),
                        "--socket", sock], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == "%s: no daemon listens on %s (No such file or directory): start one with " \
        "'aneshared' (or 'aneshare service install'), or connect to the socket of the one running " \
        "(the socket argument or ANESHARE_SOCKET); --socket PATH names the socket\n" % (script, sock), \
        r.stderr
