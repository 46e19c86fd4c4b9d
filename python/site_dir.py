# SPDX-License-Identifier: MIT
"""Print the directory meson install puts the aneshare package in for the
prefix argv[1] (python/meson.build): the interpreter's own purelib when it
lies under the prefix and is on the interpreter's path, else
PREFIX/lib/python3.X/site-packages."""
import sys
import sysconfig

prefix = sys.argv[1].rstrip("/") or "/"
own = sysconfig.get_path("purelib")
if own.startswith(prefix + "/") and own in sys.path:
    print(own)
else:
    print(sysconfig.get_path("purelib", "posix_prefix", vars={"base": prefix, "platbase": prefix}))
