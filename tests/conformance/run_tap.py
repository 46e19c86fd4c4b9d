#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Run the conformance suite (pytest) and report one TAP line per test on
stdout, for meson (protocol: 'tap') and scripts/tally.py, as
python/tests/run_tap.py does; pytest's own report goes to stderr. Needs only
the standard library and pytest."""
import os
import sys

tap = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
tap.write("TAP version 13\n")
try:
    import pytest
except ImportError as e:
    tap.write("Bail out! %s (Debian: apt-get install python3-pytest; "
              "scripts/test.sh installs it)\n" % e)
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
        elif report.failed:   # a fixture's set-up or tear-down failed
            self.line(False, report, " (%s)" % report.when)
        elif report.when == "setup" and report.skipped:
            self.line(True, report, " # SKIP %s" % self.why(report))


here = os.path.dirname(os.path.abspath(__file__))
plugin = Tap()
rc = pytest.main(["-p", "no:cacheprovider", "-q", "--rootdir", here, here] + sys.argv[1:],
                 plugins=[plugin])
if plugin.n == 0:
    plugin.n = 1
    tap.write("not ok 1 - pytest ran no test (exit status %d)\n" % rc)
tap.write("1..%d\n" % plugin.n)
sys.exit(0 if rc == 0 else 1)
