#!/usr/bin/env python3
"""The daemon's layering, checked on every #include (the meson test 'layers').

    proto/  <-  backend.h (daemon/backend/include/)  <-  daemon/mil/  <-  daemon/cpu/, daemon/ane/
            <-  the core (daemon/ and its server/, sched/, run/, state/, backend/ folders)

A file may include headers of its own layer and of the layers below it, never
one above (cpu/ and ane/ do not include each other either).  meson gives each
layer only its own and the lower layers' include directories, so most upward
includes do not compile; this check also catches the rest: a relative path
("../server/daemon.h"), a header in the including file's own folder that belongs
to another layer, and a quoted header found nowhere.

Each #include "x" resolves as the compiler would: the including file's folder,
then the include directories of the layers it may use; the layer of the header
found must be one of those.  <x> is checked the same way when x names a header
of some layer (system headers are left alone).

Usage: check-layers.py SOURCE_ROOT     exit 1 and one line per violation
       check-layers.py --self-test SOURCE_ROOT
                                       also checks that an upward include
                                       planted in each layer is reported
"""
import os
import re
import sys

# name: (folders, the layers it may include)
LAYERS = {
    'proto': (['proto'], {'proto'}),
    'backend.h': (['daemon/backend/include'], {'proto', 'backend.h'}),
    'mil': (['daemon/mil'], {'proto', 'backend.h', 'mil'}),
    'cpu': (['daemon/cpu'], {'proto', 'backend.h', 'mil', 'cpu'}),
    'ane': (['daemon/ane'], {'proto', 'backend.h', 'mil', 'ane'}),
    'core': (['daemon', 'daemon/server', 'daemon/sched', 'daemon/run', 'daemon/state',
              'daemon/backend'],
             {'proto', 'backend.h', 'mil', 'cpu', 'ane', 'core'}),
}
# Generated into the build directory, below every layer.
GENERATED = {'anes_config.h'}
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def layer_of_dir(d):
    for name, (dirs, _) in LAYERS.items():
        if d in dirs:
            return name
    return None


def sources(root):
    """(relative path, layer) of every .c and .h of every layer."""
    for name, (dirs, _) in LAYERS.items():
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.isdir(full):
                continue
            for f in sorted(os.listdir(full)):
                if f.endswith(('.c', '.h')) and os.path.isfile(os.path.join(full, f)):
                    yield os.path.join(d, f), name


def check(root, override=None):
    """Violations, one string each.  override: {relative path: text} read in
    place of those files."""
    override = override or {}
    bad = []
    for rel, layer in sources(root):
        text = override.get(rel)
        if text is None:
            with open(os.path.join(root, rel), encoding='utf-8', errors='replace') as f:
                text = f.read()
        allowed = LAYERS[layer][1]
        allowed_dirs = [d for n in allowed for d in LAYERS[n][0]]
        all_dirs = [d for n in LAYERS for d in LAYERS[n][0]]
        here = os.path.dirname(rel)
        for m in INCLUDE.finditer(text):
            kind, name = m.group(1), m.group(2)
            spelled = f'{kind}{name}{">" if kind == "<" else chr(34)}'
            line = text.count('\n', 0, m.start()) + 1
            if name in GENERATED:
                continue
            cands = ([here] if kind == '"' else []) + allowed_dirs

            def found(dirs):
                for d in dirs:
                    p = os.path.normpath(os.path.join(d, name))
                    if os.path.isfile(os.path.join(root, p)) or p in override:
                        return p
                return None

            hit = found(cands)
            if hit:
                owner = layer_of_dir(os.path.dirname(hit))
                if owner is None:
                    bad.append(f'{rel}:{line}: #include {spelled}: {hit} is in no layer')
                elif owner not in allowed:
                    bad.append(f'{rel}:{line}: #include {spelled}: {hit} is in layer {owner}, '
                               f'above {layer}')
                continue
            above = found(all_dirs)
            if above:
                bad.append(f'{rel}:{line}: #include {spelled}: only {above} (layer '
                           f'{layer_of_dir(os.path.dirname(above))}) has it, above {layer}')
            elif kind == '"':
                bad.append(f'{rel}:{line}: #include "{name}": no such header in any layer')
    return bad


def self_test(root):
    """Plant an upward include in one file of each layer but the core: each
    must be reported, once by name and once by relative path."""
    plants = {
        'proto': ('proto/anes_fp16.h', ['backend.h', '../daemon/mil/mil.h']),
        'backend.h': ('daemon/backend/include/backend.h', ['mil.h', '../../mil/mil.h']),
        'mil': ('daemon/mil/mil.h', ['cpu_internal.h', '../server/daemon.h']),
        'cpu': ('daemon/cpu/cpu_internal.h', ['ane_backend.h', '../server/daemon.h']),
        'ane': ('daemon/ane/ane_backend.h', ['cpu_internal.h', '../sched/tpool.h']),
    }
    failures = []
    for layer, (rel, names) in plants.items():
        with open(os.path.join(root, rel), encoding='utf-8') as f:
            text = f.read()
        for name in names:
            got = check(root, {rel: f'#include "{name}"\n' + text})
            if not any(g.startswith(f'{rel}:1:') for g in got):
                failures.append(f'{layer}: #include "{name}" in {rel} was not reported')
    return failures


def main():
    args = sys.argv[1:]
    selftest = args[:1] == ['--self-test']
    if selftest:
        args = args[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = args[0]
    bad = check(root)
    for b in bad:
        print(b)
    if selftest:
        fails = self_test(root)
        for f in fails:
            print('self-test: ' + f)
        bad += fails
    n = sum(1 for _ in sources(root))
    print(f'{n} files of {len(LAYERS)} layers: {len(bad)} problems' + (' (self-test run)' if selftest else ''))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
