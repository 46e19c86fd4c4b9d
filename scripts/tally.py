#!/usr/bin/env python3
"""The closing tally of scripts/test.sh: "tests: N passed, M failed" over the
criterion suites of meson's test logs (BUILD/meson-logs/testlog.json), counted
from their TAP lines: "ok" (not "# SKIP") passed, "not ok" failed.  A TAP suite
that meson did not see pass and that reported no failing test (it crashed,
timed out or printed no plan) counts as one failure."""
import json
import re
import sys

passed = failed = 0
for path in sys.argv[1:]:
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError as e:
        print(f"tally: {path}: {e.strerror}", file=sys.stderr)
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        out = t.get("stdout") or ""
        if not out.startswith("TAP version"):
            continue
        p = f = 0
        for l in out.splitlines():
            if re.match(r"not ok\b", l):
                f += 1
            elif re.match(r"ok\b", l) and not re.search(r"#\s*SKIP", l, re.I):
                p += 1
        if f == 0 and t.get("result") not in ("OK", "EXPECTEDFAIL"):
            f = 1
        passed += p
        failed += f
print(f"tests: {passed} passed, {failed} failed")
