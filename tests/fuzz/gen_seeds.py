#!/usr/bin/env python3
"""Write the seed inputs of the fuzz targets (tests/fuzz/NAME/seed-*).

Run from anywhere: python3 tests/fuzz/gen_seeds.py.  It writes every
seed-* file and deletes nothing: regression inputs (regress-*) are kept, and
a seed-* file it did not write is named on stderr (remove it by hand if it
is stale).  With --check (the meson test fuzz_seeds) it writes nothing and
fails unless the committed seeds are exactly what it writes.  The frame seeds are one valid message of every kind in
docs/protocol.md, plus run requests in unusual encodings and a bad chain;
the MIL seeds are examples/*.mil and small programs like those in
tests/test_mil.c.
"""
import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Raw(bytes):
    """Bytes already encoded, put in as they are: a value in an encoding
    other than the shortest one mp() picks."""


def mp(o):
    """A tiny msgpack encoder: None, bool, int, float, str, bytes, list, dict
    (the shortest encoding of each), and Raw."""
    if isinstance(o, Raw):
        return bytes(o)
    if o is None:
        return b'\xc0'
    if o is True:
        return b'\xc3'
    if o is False:
        return b'\xc2'
    if isinstance(o, int):
        if 0 <= o < 128:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack('b', o)
        if 0 <= o < 1 << 8:
            return b'\xcc' + struct.pack('>B', o)
        if 0 <= o < 1 << 16:
            return b'\xcd' + struct.pack('>H', o)
        if 0 <= o < 1 << 32:
            return b'\xce' + struct.pack('>I', o)
        if 0 <= o:
            return b'\xcf' + struct.pack('>Q', o)
        return b'\xd3' + struct.pack('>q', o)
    if isinstance(o, float):
        return b'\xcb' + struct.pack('>d', o)
    if isinstance(o, str):
        b = o.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        if len(b) < 256:
            return b'\xd9' + bytes([len(b)]) + b
        return b'\xda' + struct.pack('>H', len(b)) + b
    if isinstance(o, bytes):
        if len(o) < 256:
            return b'\xc4' + bytes([len(o)]) + o
        return b'\xc5' + struct.pack('>H', len(o)) + o
    if isinstance(o, list):
        h = bytes([0x90 | len(o)]) if len(o) < 16 else b'\xdc' + struct.pack('>H', len(o))
        return h + b''.join(mp(x) for x in o)
    if isinstance(o, dict):
        h = bytes([0x80 | len(o)]) if len(o) < 16 else b'\xde' + struct.pack('>H', len(o))
        return h + b''.join(mp(k) + mp(v) for k, v in o.items())
    raise TypeError(o)


def frame(payload, nfds=0):
    return struct.pack('>IB3x', len(payload), nfds) + payload


def req(msgid, method, params):
    return mp([0, msgid, method, params])


def res(msgid, result):
    return mp([1, msgid, None, result])


def err(msgid, code, name, message):
    return mp([1, msgid, {'code': code, 'name': name, 'message': message}, None])


SMALL_MIL = ('program(1.3)\n{\n  func main<ios18>(tensor<fp16, [2, 3]> x) {\n'
             '    tensor<fp16, [2, 3]> y = add(x = x, y = x)[name = string("y")];\n'
             '  } -> (y);\n}\n')

LIMITS = {'max_frame': 64 << 20, 'max_fds_per_frame': 4, 'max_surfaces': 1024,
          'max_surface_bytes': 1 << 30, 'max_total_surface_bytes': 4 << 30,
          'max_programs': 256, 'max_inflight': 64, 'max_mil_bytes': 16 << 20,
          'max_weights': 256}
KEY = 'a' * 64
TENSOR = {'name': 'x', 'dtype': 'fp16', 'shape': [2, 3], 'bytes': 12}

# (name, payload, fd count)
FRAMES = [
    ('hello', req(1, 'hello', {'protocol': 1, 'client': 'fuzz'}), 0),
    ('surface_create', req(2, 'surface.create', {'size': 4096}), 0),
    ('surface_import', req(3, 'surface.import', {}), 1),
    ('surface_release', req(4, 'surface.release', {'id': 1}), 0),
    ('surface_export', req(13, 'surface.export', {'id': 1, 'read_only': True, 'uses': 3,
                                                  'ttl_ms': None}), 0),
    ('surface_import_token', req(14, 'surface.import', {'token': KEY}), 0),
    ('res_export', res(13, {'token': KEY, 'expires_ms': 30000}), 0),
    ('res_import_token', res(14, {'id': 2, 'size': 4096, 'read_only': True}), 1),
    ('program_compile', req(5, 'program.compile', {'mil': SMALL_MIL}), 0),
    ('program_compile_weights', req(6, 'program.compile', {
        'mil': SMALL_MIL, 'weights': {'@model_path/weights/w.bin': bytes(range(64)) * 2}}), 0),
    ('program_info', req(7, 'program.info', {'id': 1}), 0),
    ('program_release', req(8, 'program.release', {'id': 1}), 0),
    ('run', req(9, 'run', {'program': 1, 'function': 'main', 'inputs': [1, 2], 'outputs': [3]}), 0),
    ('run_chain', req(12, 'run', {'steps': [
        {'program': 1, 'function': 'main', 'inputs': [1], 'outputs': [200]},
        {'program': 70000, 'inputs': [200], 'outputs': [0xffffffff, 3]}]}), 0),
    # run with every value in a longer encoding than needed (uint64 msgid,
    # str8 method, int8 program, array16 inputs, uint32 and uint16 IDs), a
    # key the daemon does not know and the empty function name
    ('run_odd', mp([0, Raw(b'\xcf' + struct.pack('>Q', 9)), Raw(b'\xd9\x03run'), {
        'note': {'k': [1, None]}, 'program': Raw(b'\xd0\x01'), 'function': '',
        'inputs': Raw(b'\xdc\x00\x02\x01\xce\x00\x00\x00\x02'),
        'outputs': [Raw(b'\xcd\x00\x03')]}]), 0),
    # a chain whose steps are wrong: a negative ID, no outputs, nil, {}
    ('run_chain_bad', req(1, 'run', {'steps': [
        {'program': 1, 'inputs': [-1], 'outputs': []}, None, {}]}), 0),
    ('event_create', req(20, 'event.create', {}), 0),
    ('event_signal', req(21, 'event.signal', {'id': 1, 'value': 0xffffffffffffffff}), 0),
    ('event_wait', req(22, 'event.wait', {'id': 1, 'value': 3}), 0),
    ('event_export', req(23, 'event.export', {'id': 1, 'uses': 2, 'ttl_ms': None}), 0),
    ('event_import', req(24, 'event.import', {'token': KEY}), 0),
    ('event_release', req(25, 'event.release', {'id': 1}), 0),
    # a run that waits for two events and signals one; a chain that does the
    # same around its steps, with a key the daemon does not know in an entry
    ('run_events', req(26, 'run', {'program': 1, 'inputs': [1, 2], 'outputs': [3],
                                   'wait': [{'event': 1, 'value': 1}, {'event': 2, 'value': 7}],
                                   'signal': [{'event': 3, 'value': 2}]}), 0),
    ('run_chain_events', req(27, 'run', {'steps': [
        {'program': 1, 'inputs': [1], 'outputs': [2]}],
        'wait': [{'event': 1, 'value': 0, 'note': [1]}], 'signal': []}), 0),
    # wrong lists: not an array, an entry without value, a step with wait
    ('run_events_bad', req(28, 'run', {'steps': [
        {'program': 1, 'inputs': [1], 'outputs': [2], 'wait': []}],
        'wait': [{'event': 1}], 'signal': {}}), 0),
    ('res_event_wait', res(22, {'value': 3}), 0),
    ('status', req(10, 'status', {}), 0),
    ('msgid_max', req(0xffffffff, 'status', {}), 0),
    ('res_hello', res(1, {'protocol': 1, 'server': 'aneshared', 'version': '0.1.0',
                          'backend': 'cpu', 'limits': LIMITS}), 0),
    ('res_surface', res(2, {'id': 1, 'size': 4096}), 1),
    ('res_release', res(4, {'deferred': False}), 0),
    ('res_compile', res(5, {'id': 1, 'key': KEY, 'cached': True}), 0),
    ('res_info', res(7, {'key': KEY, 'functions': [
        {'name': 'main', 'inputs': [TENSOR], 'outputs': [TENSOR]}]}), 0),
    ('res_empty', res(8, {}), 0),
    ('res_run', res(9, {'elapsed_us': 1234}), 0),
    ('res_status', res(10, {'server': 'aneshared', 'version': '0.1.0', 'protocol': 1,
                            'backend': 'cpu', 'uptime_ms': 99, 'clients': 1, 'surfaces': 2,
                            'surface_bytes': 8192, 'runs': 3, 'compiles': 1, 'cache_hits': 0,
                            'programs': [{'key': KEY, 'refs': 1}]}), 0),
    ('res_error', err(11, 5, 'invalid_params', 'size: missing'), 0),
    ('notify_error', mp([2, 'error', {'code': 1, 'name': 'protocol', 'message': 'malformed'}]), 0),
]


def io_chunks(data, sizes, fds_first=0, ctl=0):
    """The fuzz_io input for sending data in pieces of the given sizes."""
    out = b''
    pos = 0
    first = True
    for s in sizes:
        piece = data[pos:pos + s]
        pos += s
        c = ctl | (fds_first if first else 0)
        first = False
        out += bytes([c, len(piece)]) + piece
    assert pos >= len(data)
    return out


WRITTEN = {}      # (target, file name): bytes
OUT = HERE        # where write() puts them
TARGETS = ('frame', 'io', 'mil', 'mil_run')


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'seed-' + name), 'wb') as f:
        f.write(data)
    WRITTEN[(target, 'seed-' + name)] = data


def committed():
    """The seed-* files in tests/fuzz/TARGET/."""
    return {(t, f) for t in TARGETS for f in os.listdir(os.path.join(HERE, t)) if f.startswith('seed-')}


def check():
    """--check (meson test fuzz_seeds): the committed seeds are exactly what
    this script writes, byte for byte, so that regenerating loses nothing."""
    global OUT
    with tempfile.TemporaryDirectory() as tmp:
        OUT = tmp
        seeds()
    bad = []
    for t, f in sorted(committed() | set(WRITTEN)):
        if (t, f) not in WRITTEN:
            bad.append('%s/%s is committed but not written by gen_seeds.py' % (t, f))
            continue
        try:
            with open(os.path.join(HERE, t, f), 'rb') as fh:
                same = fh.read() == WRITTEN[(t, f)]
        except FileNotFoundError:
            bad.append('%s/%s is written by gen_seeds.py but not committed' % (t, f))
            continue
        if not same:
            bad.append('%s/%s differs from what gen_seeds.py writes' % (t, f))
    for b in bad:
        print(b)
    print('%d seeds, %s' % (len(WRITTEN), 'all as committed' if not bad else '%d wrong' % len(bad)))
    return 1 if bad else 0


def main():
    if sys.argv[1:] == ['--check']:
        sys.exit(check())
    seeds()
    for target, f in sorted(committed() - set(WRITTEN)):
        print('gen_seeds.py: %s/%s is not written by this script (kept)' % (target, f),
              file=sys.stderr)


def seeds():

    for name, payload, nfds in FRAMES:
        write('frame', name, frame(payload, nfds))

    payload = {name: p for name, p, _ in FRAMES}   # by name: FRAMES grows
    hello = frame(payload['hello'])
    imp = frame(req(3, 'surface.import', {}), 1)
    status = frame(req(10, 'status', {}))
    compile_ = frame(payload['program_compile_weights'])
    write('io', 'hello', b'\x00' + io_chunks(hello, [len(hello)]))
    write('io', 'hello_split', b'\x00' + io_chunks(hello, [3, 5, 1, len(hello)]))
    write('io', 'hello_short_reads', b'\x00' + io_chunks(hello, [len(hello)], ctl=0x60))
    write('io', 'import_fd', b'\x00' + io_chunks(hello + imp, [len(hello), len(imp)]).replace(
        bytes([0, len(imp)]), bytes([1, len(imp)]), 1))
    two = hello + status
    write('io', 'two_frames_one_send', b'\x00' + io_chunks(two, [len(two)]))
    write('io', 'compile_tiny_max', b'\x01' + io_chunks(compile_, [200, 200]))
    write('io', 'fd_without_frame', b'\x00' + bytes([1, 3]) + b'\x00\x00\x00')
    write('io', 'too_many_fds', b'\x00' + bytes([17, len(imp)]) + imp)
    write('io', 'echo_bad_queue', b'\x00' + bytes([0xc1, len(imp)]) + imp)
    # many frames in one read, echoed in one flush through a tiny send buffer
    many = (hello + status + compile_) * 3
    write('io', 'batch_small_sndbuf', b'\x02' + io_chunks(many, [250] * (len(many) // 250 + 1)))
    write('io', 'flush_each', b'\x04' + io_chunks(two + imp, [len(two), len(imp)]).replace(
        bytes([0, len(imp)]), bytes([1, len(imp)]), 1))
    write('io', 'fail_with_queued_fd', b'\x00' + io_chunks(imp + b'\xff' * 8, [len(imp) + 8]).replace(
        bytes([0, len(imp) + 8]), bytes([1, len(imp) + 8]), 1))

    blob_tail = b''  # the fixed blobs are built into the targets
    mils = {}
    with open(os.path.join(ROOT, 'examples', 'dynamic_matmul.mil'), 'rb') as f:
        mils['example_dynamic_matmul'] = f.read()
    for fn in sorted(os.listdir(os.path.join(ROOT, 'examples'))):
        if fn.endswith('.mil') and fn != 'dynamic_matmul.mil':
            with open(os.path.join(ROOT, 'examples', fn), 'rb') as f:
                mils['example_' + fn[:-4]] = f.read()
    BI = ('[buildInfo = dict<string, string>({{"coremlc-component-MIL", "3510.2.1"}, '
          '{"coremlc-version", "3505.4.1"}, {"coremltools-component-milinternal", ""}, '
          '{"coremltools-version", "9.0"}})]\n')
    mils['test_mil_good'] = (
        'program(1.3)\n' + BI + '{\n'
        '    func helper<ios18>(tensor<fp32, [3]> a, fp32 s) {\n'
        '        tensor<fp32, [3]> r = mul(x = a, y = s)[name = string("r")];\n'
        '    } -> (r);\n'
        '    func main<ios18>(tensor<fp16, [1, 64, 1, 192]> x, tensor<int32, [2, 2]> ix) {\n'
        '        tensor<int32, [4]> b0 = const()[name = string("b0"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n'
        '        tensor<int32, [4]> s0 = const()[name = string("s0"), val = tensor<int32, [4]>([1, 64, 1, 64])];\n'
        '        tensor<fp16, [1, 64, 1, 64]> act = slice_by_size(x = x, begin = b0, size = s0)[name = string("act")];\n'
        '        bool tx = const()[name = string("tx"), val = bool(false)];\n'
        '        tensor<fp16, [64, 64, 1, 1]> W = const()[name = string("W"), val = tensor<fp16, [64, 64, 1, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];\n'
        '        tensor<int32, [4]> sh = const()[name = string("sh"), val = tensor<int32, [4]>([1, 1, 64, 64])];\n'
        '        tensor<fp16, [1, 1, 64, 64]> a = reshape(x = act, shape = sh)[name = string("a")];\n'
        '        tensor<fp16, [1, 1, 64, 64]> w = reshape(x = W, shape = sh)[name = string("w")];\n'
        '        tensor<fp16, [1, 1, 64, 64]> y = matmul(transpose_x = tx, transpose_y = false, x = a, y = w)[name = string("y")];\n'
        '        fp16 h = const()[name = string("h"), val = fp16(0x1p-3)];\n'
        '        fp32 f = const()[name = string("f"), val = fp32(-1.5e-3)];\n'
        '        int32 i = const()[name = string("i"), val = int32(-3)];\n'
        '        string to32 = const()[name = string("to32"), val = string("fp32")];\n'
        '        tensor<int8, [2, 2]> i8 = const()[name = string("i8"), val = tensor<int8, [2, 2]>([[-128, 127], [0, 1]])];\n'
        '        tensor<uint8, [2]> u8 = const()[name = string("u8"), val = tensor<uint8, [2]>([0, 255])];\n'
        '        tensor<int16, [1]> i16 = const()[name = string("i16"), val = tensor<int16, [1]>([-32768])];\n'
        '        tensor<bool, [3]> bs = const()[name = string("bs"), val = tensor<bool, [3]>([true, false, true])];\n'
        '        tensor<fp16, [1, 1, 64, 64]> yh = mul(x = y, y = h);\n'
        '        tensor<fp32, [1, 1, 64, 64]> y32 = cast(x = yh, dtype = to32)[name = string("y32")];\n'
        '        int32 ax = const()[name = string("ax"), val = int32(-1)];\n'
        '        tensor<fp16, [1, 64, 1, 192]> cc = concat(values = (act, act, act), axis = ax, interleave = false)[name = string("cc")];\n'
        '        tensor<int32, [2]> sum = reduce_sum(x = ix, axes = tensor<int32, [1]>([0]), keep_dims = false);\n'
        '        tensor<fp32, [1, 1, 64, 64]> z = add(x = y32, y = f);\n'
        '    } -> (z, cc, sum);\n'
        '}\n').encode()
    mils['minimal'] = b'program(1.0)\n{\n func f(tensor<fp32, []> a) {\n } -> (a);\n}\n'
    body = ('program(1.3)\n{\n  func main<ios18>(tensor<fp16, [2, 3]> x, tensor<fp16, [3, 4]> m) {\n'
            '%s\n  } -> (%s);\n}\n')
    mils['ops_small'] = (body % (
        '    tensor<fp16, [2, 4]> y = matmul(x = x, y = m, transpose_x = false, transpose_y = false);\n'
        '    tensor<fp16, [2, 4]> d = sub(x = y, y = y);\n'
        '    tensor<fp16, [4, 2]> t = transpose(x = d, perm = tensor<int32, [2]>([1, 0]));\n'
        '    tensor<fp16, [8]> r = reshape(x = t, shape = tensor<int32, [1]>([8]));\n'
        '    tensor<fp32, [8]> c = cast(x = r, dtype = string("fp32"));\n'
        '    tensor<fp32, [1]> s = reduce_sum(x = c, axes = tensor<int32, [1]>([0]), keep_dims = true);\n'
        '    tensor<fp16, [2, 3]> i = identity(x = x);\n'
        '    tensor<fp16, [4, 3]> cc = concat(values = (i, x), axis = 0, interleave = true);\n'
        '    tensor<fp16, [1, 2]> sl = slice_by_size(x = x, begin = tensor<int32, [2]>([1, 1]), size = tensor<int32, [2]>([1, 2]));',
        's, cc, sl')).encode()
    mils['weights_fp32_int8'] = (body % (
        '    tensor<fp32, [4, 4]> a = const()[val = tensor<fp32, [4, 4]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(8320)))];\n'
        '    tensor<int8, [16]> b = const()[val = tensor<int8, [16]>(BLOBFILE(path = string("@model_path/weights/small.bin"), offset = uint64(64)))];\n'
        '    tensor<uint8, [4, 4]> u = const()[val = tensor<uint8, [4, 4]>(BLOBFILE(path = string("@model_path/weights/small.bin"), offset = uint64(144)))];\n'
        '    tensor<fp32, [16]> bf = cast(x = b, dtype = string("fp32"));\n'
        '    tensor<fp32, [4, 4]> b4 = reshape(x = bf, shape = tensor<int32, [2]>([4, 4]));\n'
        '    tensor<fp32, [4, 4]> p = mul(x = a, y = b4);\n'
        '    tensor<fp32, [4, 4]> q = matmul(x = p, y = a, transpose_y = true);',
        'q, u')).encode()
    # a blob given in the input: fp16 [2, 2] at offset 64
    fuzz_blob = struct.pack('<II', 1, 2) + bytes(56) + struct.pack('<IIQQ', 0xDEADBEEF, 1, 8, 128) + bytes(40) + \
        struct.pack('<4e', 1.0, -2.0, 0.5, 65504.0)
    mils['weights_from_input'] = (body % (
        '    tensor<fp16, [2, 2]> a = const()[val = tensor<fp16, [2, 2]>(BLOBFILE(path = string("@model_path/weights/fuzz.bin"), offset = uint64(64)))];\n'
        '    tensor<fp16, [2, 2]> b = add(x = a, y = fp16(1.5));',
        'b')).encode() + b'\0' + bytes(fuzz_blob)
    mils['broadcast_scalar_int'] = (
        'program(1.3)\n{\n  func main(tensor<int32, [3, 1]> a, tensor<int32, [1, 4]> b, int32 k) {\n'
        '    tensor<int32, [3, 4]> s = add(x = a, y = b);\n'
        '    tensor<int32, [3, 4]> m = mul(x = s, y = k);\n'
        '    tensor<int32, [4]> r = reduce_sum(x = m, axes = tensor<int32, [1]>([-2]));\n'
        '  } -> (r, m);\n}\n').encode()

    fn = 'program(1.3)\n{\n  func main<ios18>(%s) {\n%s\n  } -> (%s);\n}\n'
    mils['ops_elementwise'] = (fn % (
        'tensor<fp16, [2, 4]> x, tensor<fp32, [2, 4]> f',
        '    tensor<fp16, [2, 4]> a = abs(x = x);\n'
        '    tensor<fp16, [2, 4]> b = relu(x = a);\n'
        '    tensor<fp16, [2, 4]> c = clip(x = b, alpha = fp16(0.5), beta = fp16(6.0));\n'
        '    tensor<fp16, [2, 4]> d = gelu(x = c, mode = string("TANH_APPROXIMATION"));\n'
        '    tensor<fp16, [2, 4]> e = sigmoid(x = d);\n'
        '    tensor<fp16, [2, 4]> g = silu(x = e);\n'
        '    tensor<fp16, [2, 4]> h = tanh(x = g);\n'
        '    tensor<fp16, [2, 4]> i = softmax(x = h, axis = int32(-1));\n'
        '    tensor<fp16, [2, 4]> j = maximum(x = i, y = x);\n'
        '    tensor<fp16, [2, 4]> k = minimum(x = j, y = fp16(2.0));\n'
        '    tensor<fp32, [2, 4]> l = exp(x = f);\n'
        '    tensor<fp32, [2, 4]> m = log(x = l, epsilon = fp32(1e-6));\n'
        '    tensor<fp32, [2, 4]> n = sqrt(x = m);\n'
        '    tensor<fp32, [2, 4]> o = rsqrt(x = l, epsilon = fp32(1e-6));\n'
        '    tensor<fp32, [2, 4]> q = pow(x = o, y = fp32(2.0));\n'
        '    tensor<fp32, [2, 4]> r = real_div(x = q, y = n);\n'
        '    tensor<fp32, [2, 4]> t = inverse(x = r, epsilon = fp32(1e-4));\n'
        '    tensor<fp32, [2, 4]> u = erf(x = t);\n'
        '    tensor<fp32, [2, 4]> v = square(x = u);\n'
        '    tensor<fp32, [2, 4]> w = neg(x = v);\n'
        '    tensor<fp32, [2, 1]> rm = reduce_max(x = w, axes = tensor<int32, [1]>([1]), keep_dims = true);\n'
        '    tensor<fp32, [4]> rn = reduce_min(x = w, axes = tensor<int32, [1]>([0]), keep_dims = false);\n'
        '    tensor<fp32, [2]> ra = reduce_mean(x = w, axes = tensor<int32, [1]>([-1]), keep_dims = false);\n'
        '    tensor<fp16, [2, 4]> ln = layer_norm(x = k, axes = tensor<int32, [1]>([-1]), epsilon = fp16(1e-5));',
        'ln, rm, rn, ra')).encode()
    mils['ops_shape'] = (fn % (
        'tensor<fp16, [2, 3, 4]> x, tensor<int32, [2]> idx',
        '    tensor<fp16, [1, 3, 2]> a = slice_by_index(x = x, begin = tensor<int32, [3]>([1, 0, 0]), end = tensor<int32, [3]>([2, 3, 4]), stride = tensor<int32, [3]>([1, 1, 2]));\n'
        '    tensor<fp16, [2, 3, 2]> s0, tensor<fp16, [2, 3, 2]> s1 = split(x = x, num_splits = int32(2), axis = int32(-1));\n'
        '    tensor<fp16, [2, 3, 1]> t0, tensor<fp16, [2, 3, 3]> t1 = split(x = x, split_sizes = tensor<int32, [2]>([1, 3]), axis = int32(2));\n'
        '    tensor<fp16, [1, 2, 3, 1]> e = expand_dims(x = t0, axes = tensor<int32, [1]>([0]));\n'
        '    tensor<fp16, [2, 3]> q = squeeze(x = e, axes = tensor<int32, [2]>([0, -1]));\n'
        '    tensor<fp16, [4, 6]> t = tile(x = q, reps = tensor<int32, [2]>([2, 2]));\n'
        '    tensor<fp16, [2, 3, 4]> g = gather(x = x, indices = idx, axis = int32(0));\n'
        '    tensor<fp16, [2, 5, 6]> p = pad(x = x, pad = tensor<int32, [6]>([0, 0, 1, 1, 2, 0]), mode = string("constant"), constant_val = fp16(0.0));\n'
        '    tensor<fp16, [2, 3, 4]> r = pad(x = s0, pad = tensor<int32, [6]>([0, 0, 0, 0, 1, 1]), mode = string("reflect"));',
        'a, s1, t1, t, g, p, r')).encode()
    mils['ops_nn'] = (fn % (
        'tensor<fp16, [1, 2, 5, 5]> img, tensor<fp16, [3, 4]> x, tensor<fp16, [1, 2, 3, 4]> qv',
        '    tensor<fp16, [4, 2, 3, 3]> wc = const()[val = tensor<fp16, [4, 2, 3, 3]>([' + ', '.join(str((i % 7) - 3) for i in range(72)) + '])];\n'
        '    tensor<fp16, [4]> bc = const()[val = tensor<fp16, [4]>([0.5, -0.5, 1.0, 0.0])];\n'
        '    tensor<fp16, [1, 4, 3, 3]> c = conv(x = img, weight = wc, bias = bc, strides = tensor<int32, [2]>([1, 1]), pad_type = string("valid"), dilations = tensor<int32, [2]>([1, 1]), groups = int32(1));\n'
        '    tensor<fp16, [1, 4, 3, 3]> c2 = conv(x = img, weight = wc, strides = tensor<int32, [2]>([2, 2]), pad_type = string("custom"), pad = tensor<int32, [4]>([1, 1, 1, 1]));\n'
        '    tensor<fp16, [5, 4]> wl = const()[val = tensor<fp16, [5, 4]>([' + ', '.join(str((i % 5) * 0.25) for i in range(20)) + '])];\n'
        '    tensor<fp16, [3, 5]> l = linear(x = x, weight = wl, bias = tensor<fp16, [5]>([1, 2, 3, 4, 5]));\n'
        '    tensor<fp16, [1, 2, 3, 4]> at = scaled_dot_product_attention(query = qv, key = qv, value = qv);\n'
        '    tensor<int8, [3, 4]> qi = quantize(input = x, scale = fp16(0.1), zero_point = int8(3), output_dtype = string("int8"));\n'
        '    tensor<fp16, [3, 4]> dq = dequantize(input = qi, scale = fp16(0.1), zero_point = int8(3));\n'
        '    tensor<fp16, [2, 2]> ad = constexpr_affine_dequantize(quantized_data = tensor<int8, [2, 2]>([1, -2, 3, 127]), zero_point = int8(1), scale = fp16(0.5), axis = int32(0));',
        'c, c2, l, at, dq, ad')).encode()

    # gelu in the places the ANE backend's rewrite must handle (daemon/ane/ane_lower.c)
    mils['gelu_rewrite'] = (
        'program(1.3)\n{\n'
        '    func main<ios18>(tensor<fp16, [1, 4, 1, 32]> x) {\n'
        '        tensor<fp16, [1, 4, 1, 32]> a = mul(x = x, y = x); tensor<fp16, [1, 4, 1, 32]> g = gelu(x = a); '
        'tensor<fp16, [1, 4, 1, 32]> b = sub(x = g, y = x);\n'
        '        tensor<fp16, [1, 4, 1, 32]> t = gelu( // comment\n'
        '            x = b, mode = string("TANH_APPROXIMATION"))[name = string("t")];\n'
        '        (tensor<fp16, [1, 4, 1, 32]> s) = gelu(x = t, mode = string("SIGMOID_APPROXIMATION"));\n'
        '        tensor<fp32, [1, 4, 1, 32]> f = cast(x = s, dtype = string("fp32"));\n'
        '        tensor<fp32, [1, 4, 1, 32]> gf = gelu(x = f);\n'
        '        fp16 h = gelu(x = fp16(0.5));\n'
        '        tensor<fp16, [1, 4, 1, 32]> c = cast(x = gf, dtype = string("fp16"));\n'
        '        tensor<fp16, [1, 4, 1, 32]> y = mul(x = c, y = h);\n'
        '    } -> (y);\n}\n').encode()
    # the forms coremlc and coremltools <= 7 write (docs/mil.md, Program text)
    mils['older_forms'] = (
        'program(1)\n'
        '[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{"coremlc-component-MIL", "3304.5.2"}, '
        '{"coremltools-version", "7.2"}})]\n{\n'
        '    func main<CoreML8>(tensor<fp16, [1, 64]> x) [FlexibleShapeInformation = tuple<tuple<tensor<string, []>, '
        'dict<tensor<string, []>, tensor<int32, [?]>>>>(("DefaultShapes", {{"x", [1, 64]}}))] {\n'
        '        tensor<int32, [1]> ax = const()[name = tensor<string, []>("ax"), val = tensor<int32, [1]>(-1)];\n'
        '        tensor<fp16, [64, 64]> w = const()[name = tensor<string, []>("w"), val = tensor<fp16, [64, 64]>(BLOBFILE('
        'path = tensor<string, []>("@model_path/weights/w.bin"), offset = tensor<uint64, []>(64)))];\n'
        '        tensor<fp16, [2, 2]> q = constexpr_affine_dequantize()[axis = tensor<int32, []>(0), '
        'name = tensor<string, []>("q\\x41\\"\\n"), quantized_data = tensor<int8, [2, 2]>([[1, -2], [3, 127]]), '
        'scale = tensor<fp16, []>(0x1p-1), zero_point = tensor<int8, []>(0)];\n'
        '        tensor<fp16, [1, 64]> y = linear(weight = w, x = x)[name = tensor<string, []>("y")];\n'
        '        tensor<bool, []> kd = const()[name = tensor<string, []>("kd"), val = tensor<bool, []>(true)];\n'
        '        tensor<fp16, [1, 1]> r = reduce_sum(axes = ax, keep_dims = kd, x = y)[name = tensor<string, []>("r")];\n'
        '        tensor<string, []> to32 = const()[name = tensor<string, []>("to32"), val = tensor<string, []>("fp32")];\n'
        '        tensor<fp32, [1, 1]> r32 = cast(dtype = to32, x = r)[name = tensor<string, []>("cast_0")];\n'
        '    } -> (y, r32, q);\n}\n').encode()
    # the ops of the iOS 15-18 opsets added for issue 17 (docs/mil.md, Supported ops)
    mils['ops_masks'] = (fn % (
        'tensor<fp16, [2, 4]> x, tensor<fp16, [4]> y, tensor<int32, [2, 1]> i, tensor<bool, [2, 4]> b',
        '    tensor<bool, [2, 4]> lt = less(x = x, y = y);\n'
        '    tensor<bool, [2, 4]> ge = greater_equal(x = x, y = fp16(0.5));\n'
        '    tensor<bool, [2, 4]> eq = equal(x = i, y = tensor<int32, [4]>([0, 1, 2, 3]));\n'
        '    tensor<bool, [2, 4]> nb = logical_not(x = b);\n'
        '    tensor<bool, [2, 4]> m = logical_and(x = lt, y = nb);\n'
        '    tensor<bool, [2, 4]> mo = logical_or(x = m, y = ge);\n'
        '    tensor<bool, [2, 4]> o = logical_xor(x = mo, y = eq);\n'
        '    tensor<fp16, [2, 4]> s = select(cond = o, a = x, b = fp16(-1));\n'
        '    tensor<int32, [2, 4]> fd = floor_div(x = i, y = tensor<int32, [4]>([3, -2, 0, 5]));\n'
        '    tensor<int32, [2, 4]> md = mod(x = i, y = tensor<int32, [4]>([3, -2, 0, 5]));\n'
        '    tensor<fp16, [2, 4]> fm = mod(x = x, y = y);\n'
        '    tensor<fp16, [2, 4]> r1 = ceil(x = s);\n'
        '    tensor<fp16, [2, 4]> r2 = floor(x = r1);\n'
        '    tensor<fp16, [2, 4]> r3 = sign(x = r2);\n'
        '    tensor<fp16, [2, 4]> r = round(x = r3);\n'
        '    tensor<fp16, [2, 4]> t1 = exp2(x = r);\n'
        '    tensor<fp16, [2, 4]> t2 = sin(x = t1);\n'
        '    tensor<fp16, [2, 4]> t3 = softplus(x = t2);\n'
        '    tensor<fp16, [2, 4]> t4 = leaky_relu(x = t3, alpha = fp16(0.1));\n'
        '    tensor<fp16, [2, 4]> t = elu(x = t4, alpha = fp16(1));\n'
        '    tensor<fp16, [2, 4]> h1 = clamped_relu(x = t, alpha = fp16(0.1), beta = fp16(6));\n'
        '    tensor<fp16, [2, 4]> h = sigmoid_hard(x = h1, alpha = fp16(0.2), beta = fp16(0.5));',
        's, fd, md, fm, h')).encode()
    mils['ops_reduce_sort'] = (fn % (
        'tensor<fp16, [2, 3, 4]> x, tensor<int32, [2, 3, 4]> n',
        '    tensor<fp16, [2, 4]> p = reduce_prod(x = x, axes = tensor<int32, [1]>([1]));\n'
        '    tensor<fp16, [2, 1, 1]> l = reduce_log_sum_exp(x = x, axes = tensor<int32, [2]>([1, 2]), keep_dims = true);\n'
        '    fp16 q = reduce_l2_norm(x = x);\n'
        '    tensor<int32, [2, 3]> am = reduce_argmax(x = x, axis = int32(-1));\n'
        '    tensor<int32, [2, 1, 4]> an = reduce_argmin(x = n, axis = int32(1), keep_dims = true);\n'
        '    tensor<fp16, [2, 3, 4]> c = cumsum(x = x, axis = int32(2), exclusive = true, reverse = true);\n'
        '    tensor<fp16, [2, 3, 2]> tv, tensor<int32, [2, 3, 2]> ti = topk(x = c, k = int32(2), axis = int32(-1), ascending = false);\n'
        '    tensor<int32, [2, 3, 4]> as = argsort(x = n, axis = int32(0), ascending = true);\n'
        '    tensor<fp16, [2, 3, 4]> bn = batch_norm(x = x, mean = tensor<fp16, [3]>([0, 1, 2]), variance = tensor<fp16, [3]>([1, 1, 0]), epsilon = fp16(0.001));\n'
        '    tensor<fp16, [2, 3, 4]> in = instance_norm(x = bn, gamma = tensor<fp16, [3]>([1, 2, 3]));\n'
        '    tensor<fp16, [2, 3, 4]> l2 = l2_norm(x = in);\n'
        '    tensor<fp16, [2, 3, 4]> pr = prelu(x = l2, alpha = tensor<fp16, [3]>([0.1, 0.2, 0.3]));',
        'p, l, q, am, an, tv, ti, as, pr')).encode()
    mils['ops_data'] = (fn % (
        'tensor<fp16, [3, 4, 2]> x, tensor<int32, [2, 2]> nd, tensor<int32, [3, 2, 2]> ia, tensor<int32, [2]> bg, tensor<int32, [3]> oh',
        '    tensor<fp16, [2, 2]> g = gather_nd(x = x, indices = nd);\n'
        '    tensor<fp16, [3, 2, 2]> ga = gather_along_axis(x = x, indices = ia, axis = int32(1));\n'
        '    tensor<fp16, [3, 4, 2]> sa = scatter_along_axis(data = x, indices = ia, updates = ga, axis = int32(1), mode = string("max"));\n'
        '    tensor<fp16, [3, 4, 2]> sn = scatter_nd(data = sa, indices = nd, updates = g, mode = string("mul"));\n'
        '    tensor<fp16, [3, 4, 2]> sc = scatter(data = sn, indices = oh, updates = sn, axis = int32(0), mode = string("update"));\n'
        '    tensor<fp16, [4, 2]> row = slice_by_index(x = sc, begin = tensor<int32, [3]>([0, 0, 0]), end = tensor<int32, [3]>([1, 4, 2]), squeeze_mask = tensor<bool, [3]>([true, false, false]));\n'
        '    tensor<fp16, [3, 4, 2]> su = slice_update(x = sc, update = row, begin = tensor<int32, [3]>([2, 0, 0]), end = tensor<int32, [3]>([3, 4, 2]), squeeze_mask = tensor<bool, [3]>([true, false, false]));\n'
        '    tensor<fp16, [3, 2]> z = fill(shape = tensor<int32, [2]>([3, 2]), value = fp16(0));\n'
        '    tensor<fp16, [3, 2]> rs = slice_update(x = z, update = tensor<fp16, [2]>([1, 2]), begin = bg, end = bg, squeeze_mask = tensor<bool, [2]>([true, false]), end_mask = tensor<bool, [2]>([false, true]));\n'
        '    tensor<fp16, [2, 3, 4, 2]> st = stack(values = (su, x), axis = int32(0));\n'
        '    tensor<fp16, [2, 3, 4, 2]> rv = reverse(x = st, axes = tensor<int32, [2]>([0, -1]));\n'
        '    tensor<fp16, [2, 3, 4, 2]> bp = band_part(x = rv, lower = int32(1), upper = int32(0));\n'
        '    tensor<int32, [4]> sh = shape(x = bp);\n'
        '    tensor<fp32, [3, 5]> o = one_hot(indices = oh, one_hot_vector_size = int32(5), on_value = fp32(1), off_value = fp32(0));\n'
        '    tensor<int32, [5]> rg = range_1d(start = int32(0), end = int32(10), step = int32(2));\n'
        '    tensor<fp16, [2, 3, 8]> f2 = reshape(x = bp, shape = tensor<int32, [3]>([2, 3, 8]));\n'
        '    tensor<fp16, [1, 2, 3, 8]> f4 = expand_dims(x = f2, axes = tensor<int32, [1]>([0]));\n'
        '    tensor<fp16, [1, 32, 3, 8]> f5 = tile(x = f4, reps = tensor<int32, [4]>([1, 16, 1, 1]));\n'
        '    tensor<fp16, [1, 8, 6, 16]> u = pixel_shuffle(x = f5, upscale_factor = int32(2));\n'
        '    tensor<fp16, [1, 32, 3, 8]> d = space_to_depth(x = u, block_size = int32(2));\n'
        '    tensor<fp16, [1, 8, 6, 16]> e = depth_to_space(x = d, block_size = int32(2));\n'
        '    tensor<fp16, [8, 96]> fl = flatten2d(x = e, axis = int32(2));\n'
        '    tensor<fp16, [8, 46, 6]> sw = sliding_windows(x = fl, axis = int32(1), size = int32(6), stride = int32(2));',
        'sh, o, rg, rs, sw')).encode()
    mils['ops_vision'] = (fn % (
        'tensor<fp16, [1, 2, 6, 5]> x, tensor<fp32, [2, 3, 4]> a, tensor<fp32, [2, 4, 5]> b',
        '    tensor<fp16, [1, 2, 3, 5]> mp = max_pool(x = x, kernel_sizes = tensor<int32, [2]>([2, 2]), strides = tensor<int32, [2]>([2, 1]), pad_type = string("same"));\n'
        '    tensor<fp16, [1, 2, 4, 3]> ap = avg_pool(x = x, kernel_sizes = tensor<int32, [2]>([3, 3]), strides = tensor<int32, [2]>([2, 2]), pad_type = string("custom"), pad = tensor<int32, [4]>([1, 1, 1, 1]), ceil_mode = true, exclude_padding_from_average = true);\n'
        '    tensor<fp16, [1, 2, 2, 2]> lp = l2_pool(x = ap, kernel_sizes = tensor<int32, [2]>([3, 2]), pad_type = string("valid"));\n'
        '    tensor<fp16, [1, 3, 7, 4]> ct = conv_transpose(x = mp, weight = tensor<fp16, [2, 3, 3, 2]>([' + ', '.join(str((i % 5) - 2) for i in range(36)) + ']), strides = tensor<int32, [2]>([2, 1]), pad_type = string("custom"), pad = tensor<int32, [4]>([0, 0, 0, 2]));\n'
        '    tensor<fp16, [1, 3, 14, 6]> un = upsample_nearest_neighbor(x = ct, scale_factor_height = int32(2), scale_factor_width = fp32(1.5));\n'
        '    tensor<fp16, [1, 3, 7, 8]> ub = upsample_bilinear(x = ct, scale_factor_height = int32(1), scale_factor_width = int32(2), align_corners = false);\n'
        '    tensor<fp16, [1, 3, 5, 9]> rb = resize_bilinear(x = ub, target_size_height = int32(5), target_size_width = int32(9), sampling_mode = string("OFFSET_CORNERS"));\n'
        '    tensor<fp16, [1, 3, 2, 3]> rn = resize_nearest_neighbor(x = rb, target_size_height = int32(2), target_size_width = int32(3));\n'
        '    tensor<fp16, [1, 3, 3, 7]> cr = crop(x = rb, crop_height = tensor<int32, [2]>([1, 1]), crop_width = tensor<int32, [2]>([0, 2]));\n'
        '    tensor<fp32, [2, 5, 3]> es = einsum(values = (a, b), equation = string("bij,bjk->bki"));',
        'lp, un, rn, cr, es')).encode()
    w = lambda shape, n: 'tensor<fp16, %s>([%s])' % (shape, ', '.join(str(((i * 7) % 11 - 5) / 8) for i in range(n)))
    mils['ops_recurrent'] = (fn % (
        'tensor<fp16, [3, 2, 4]> x, tensor<fp16, [2, 6]> h, tensor<fp16, [2, 6]> c, tensor<fp16, [2, 2]> h1',
        '    tensor<fp16, [3, 2, 6]> o, tensor<fp16, [2, 6]> ho, tensor<fp16, [2, 6]> co = lstm(x = x, initial_h = h, initial_c = c, '
        'weight_ih = ' + w('[12, 4]', 48) + ', weight_hh = ' + w('[12, 3]', 36) + ', bias = ' + w('[12]', 12) +
        ', peephole = ' + w('[9]', 9) + ', weight_ih_back = ' + w('[12, 4]', 48) + ', weight_hh_back = ' + w('[12, 3]', 36) +
        ', direction = string("bidirectional"), output_sequence = true);\n'
        '    tensor<fp16, [1, 2, 2]> ro, tensor<fp16, [2, 2]> rh = rnn(x = x, initial_h = h1, weight_ih = ' + w('[2, 4]', 8) +
        ', weight_hh = ' + w('[2, 2]', 4) + ', direction = string("reverse"), activation = string("tanh"));',
        'o, ho, co, ro, rh')).encode()
    mils['flexible_shapes'] = (
        'program(1.0)\n{\n'
        '    func main<ios17>(tensor<fp16, [1, ?]> x) [FlexibleShapeInformation = tuple<tuple<tensor<string, []>, '
        'dict<tensor<string, []>, tensor<int32, [?]>>>, tuple<tensor<string, []>, dict<tensor<string, []>, '
        'dict<tensor<string, []>, tensor<int32, [?]>>>>>((("DefaultShapes", {{"x", [1, 4]}}), '
        '("EnumeratedShapes", {{"x_1_4", {{"x", [1, 4]}}}, {"x_1_8", {{"x", [1, 8]}}}})))] {\n'
        '        tensor<fp16, [1, ?]> y = mul(x = x, y = fp16(2))[name = string("y")];\n'
        '        tensor<fp16, [1, ?]> z = add(x = y, y = x)[name = string("z")];\n'
        '    } -> (z);\n}\n').encode()
    mils['states'] = (
        'program(1.3)\n{\n'
        '    func main<ios18>(tensor<fp16, [1, 2]> k, state<tensor<fp16, [4, 2]>> kv, state<tensor<fp16, [1]>> steps) {\n'
        '        tensor<fp16, [4, 2]> c = read_state(input = kv)[name = string("c")];\n'
        '        tensor<fp16, [3, 2]> old = slice_by_size(x = c, begin = tensor<int32, [2]>([1, 0]), '
        'size = tensor<int32, [2]>([3, 2]))[name = string("old")];\n'
        '        tensor<fp16, [4, 2]> nc = concat(values = (old, k), axis = int32(0))[name = string("nc")];\n'
        '        write_state(data = nc, input = kv)[name = string("kv_write_state")];\n'
        '        tensor<fp16, [4, 2]> c2 = read_state(input = kv)[name = string("c2")];\n'
        '        tensor<fp16, [1]> n0 = read_state(input = steps);\n'
        '        tensor<fp16, [1]> n1 = add(x = n0, y = fp16(1));\n'
        '        tensor<fp16, [1]> n = coreml_update_state(state = steps, value = n1);\n'
        '    } -> (c2, n);\n}\n').encode()
    # the compressed-weight ops (docs/mil.md, Supported ops), folded at compile time
    mils['constexpr_weights'] = (
        'program(1.3)\n'
        '{\n'
        '    func main<ios18>(tensor<fp16, [1, 4]> x) {\n'
        '        tensor<uint2, [3, 4]> ind = const()[name = string("ind"), val = tensor<uint2, [3, 4]>([0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 1, 1])];\n'
        '        tensor<fp16, [3, 1, 4, 1]> lut = const()[name = string("lut"), val = tensor<fp16, [3, 1, 4, 1]>([0, 1, 2, 3, 0, -1, -2, -3, 5, 6, 7, 8])];\n'
        '        tensor<fp16, [3, 4]> wt = constexpr_lut_to_dense(indices = ind, lut = lut)[name = string("wt")];\n'
        '        tensor<uint1, [2, 4]> m = const()[name = string("m"), val = tensor<uint1, [2, 4]>([1, 0, 0, 1, 0, 1, 1, 0])];\n'
        '        tensor<int4, [4]> nz = const()[name = string("nz"), val = tensor<int4, [4]>([-8, 7, -1, 3])];\n'
        '        tensor<int4, [2, 4]> q = constexpr_sparse_to_dense(nonzero_data = nz, mask = m)[name = string("q")];\n'
        '        tensor<fp16, [1, 2]> s = const()[name = string("s"), val = tensor<fp16, [1, 2]>([0.25, 0.5])];\n'
        '        tensor<fp16, [2, 4]> w2 = constexpr_blockwise_shift_scale(data = q, scale = s)[name = string("w2")];\n'
        '        tensor<uint8, [2]> pi = const()[name = string("pi"), val = tensor<uint8, [2]>([108, 3])];\n'
        '        tensor<fp16, [4]> pl = const()[name = string("pl"), val = tensor<fp16, [4]>([0.5, 1.5, 2.5, 3.5])];\n'
        '        tensor<fp16, [1, 4]> w3 = constexpr_lut_to_dense(indices = pi, lut = pl, shape = tensor<uint32, [2]>([1, 4]))[name = string("w3")];\n'
        '        tensor<fp32, [1, 4]> w4 = constexpr_cast(source_val = w3, output_dtype = string("fp32"))[name = string("w4")];\n'
        '        tensor<fp16, [1, 3]> y = linear(x = x, weight = wt)[name = string("y")];\n'
        '        tensor<fp16, [1, 2]> z = linear(x = x, weight = w2)[name = string("z")];\n'
        '    } -> (y, z);\n'
        '}\n').encode()
    for name, text in mils.items():
        write('mil', name, text)
        # mil_run: the program, then data for its inputs
        tail = b'' if b'\0' in text else b'\0' + bytes((i * 37 + 11) % 256 for i in range(64))
        write('mil_run', name, text + tail)


if __name__ == '__main__':
    main()
