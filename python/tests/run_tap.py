#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Run a pytest suite and report one TAP line per test on stdout, for meson
(protocol: 'tap') and scripts/tally.py; pytest's own report goes to stderr.
Needs only the standard library and pytest.

    run_tap.py [--need MODULE]... [--dir DIR] [pytest arguments]

--dir: the suite's folder (default: this one, python/tests; the conformance
suite passes tests/conformance); --need: a module the suite imports besides
pytest (python/tests: numpy), its absence a 'Bail out!' with the Debian
package to install.  The other arguments are passed on to pytest."""
import importlib
import os
import sys

tap = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
tap.write("TAP version 13\n")

here = os.path.dirname(os.path.abspath(__file__))
needs = []
args = sys.argv[1:]
while len(args) >= 2 and args[0] in ("--need", "--dir"):
    if args[0] == "--need":
        needs.append(args[1])
    else:
        here = os.path.abspath(args[1])
    args = args[2:]

try:
    for mod in needs + ["pytest"]:
        importlib.import_module(mod)
    import pytest
except ImportError as e:
    pkgs = ["python3-pytest"] + ["python3-" + m for m in needs]
    tap.write("Bail out! %s (Debian: apt-get install %s; scripts/test.sh installs %s)\n"
              % (e, " ".join(pkgs), "them" if len(pkgs) > 1 else "it"))
    sys.exit(1)


class Tap:
    def __init__(self):
        self.n = 0

    def line(self, ok, report, note=""):
        self.n += 1
        tap.write("%s %d - %s%s\n" % ("ok" if ok else "not ok", self.n, report.nodeid, note))

    @staticmethod
    def why(report):
        return report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            if report.skipped:
                self.line(True, report, " # SKIP %s" % self.why(report))
            else:
                self.line(report.passed, report)
        elif report.failed:   # an error in a fixture's set-up or tear-down
            self.line(False, report, " (%s)" % report.when)
        elif report.when == "setup" and report.skipped:
            self.line(True, report, " # SKIP %s" % self.why(report))


plugin = Tap()
rc = pytest.main(["-p", "no:cacheprovider", "-q", here] + args, plugins=[plugin])
if plugin.n == 0:
    plugin.n = 1
    tap.write("not ok 1 - pytest ran no test (exit status %d)\n" % rc)
tap.write("1..%d\n" % plugin.n)
sys.exit(0 if rc == 0 else 1)
