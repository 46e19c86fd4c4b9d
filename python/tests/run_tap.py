#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Run the pytest suite and report one TAP line per test on stdout, for meson
(protocol: 'tap') and scripts/tally.py; pytest's own report goes to stderr.
Arguments are passed on to pytest."""
import os
import sys

tap = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
tap.write("TAP version 13\n")
try:
    import numpy  # noqa: F401
    import pytest
except ImportError as e:
    tap.write("Bail out! %s (Debian: apt-get install python3-pytest python3-numpy; "
              "scripts/test.sh installs them)\n" % e)
    sys.exit(1)


class Tap:
    def __init__(self):
        self.n = 0

    def line(self, ok, report, note=""):
        self.n += 1
        tap.write("%s %d - %s%s\n" % ("ok" if ok else "not ok", self.n, report.nodeid, note))

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            if report.skipped:
                self.line(True, report, " # SKIP %s" % (report.longrepr[2] if isinstance(
                    report.longrepr, tuple) else "skipped"))
            else:
                self.line(report.passed, report)
        elif report.failed:   # an error in a fixture's set-up or tear-down
            self.line(False, report, " (%s)" % report.when)
        elif report.when == "setup" and report.skipped:
            self.line(True, report, " # SKIP %s" % (report.longrepr[2] if isinstance(
                report.longrepr, tuple) else "skipped"))


here = os.path.dirname(os.path.abspath(__file__))
plugin = Tap()
rc = pytest.main(["-p", "no:cacheprovider", "-q", here] + sys.argv[1:], plugins=[plugin])
if plugin.n == 0:
    plugin.n = 1
    tap.write("not ok 1 - pytest ran no test (exit status %d)\n" % rc)
tap.write("1..%d\n" % plugin.n)
sys.exit(0 if rc == 0 else 1)
