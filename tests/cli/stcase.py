#!/usr/bin/env python3
"""Runs one CLI test case (a .case file) against the built st-* tools.

A case is data: input files described tensor by tensor, shell commands, and
what each command must do. This runner has its own safetensors writer and
reader and its own FP8 arithmetic, written from the format definitions, so
expected values never come from the code under test. See tests/cli/README.md
for the format.
"""
import json
import math
import os
import random
import shlex
import struct
import subprocess
import sys
import tempfile

# ----------------------------------------------------------- numbers

def f32_bits(x):
    """Round a Python float (double) to f32, ties to even; return its bits."""
    if math.isnan(x):
        return 0x7FC00000
    try:
        return struct.unpack('<I', struct.pack('<f', x))[0]
    except OverflowError:
        # struct refuses values above FLT_MAX; decide by hand (RNE boundary).
        limit = (2 - 2 ** -24) * 2 ** 127  # halfway between FLT_MAX and 2^128
        if abs(x) >= limit:
            return 0xFF800000 if x < 0 else 0x7F800000
        return 0xFF7FFFFF if x < 0 else 0x7F7FFFFF


def bits_f32(b):
    return struct.unpack('<f', struct.pack('<I', b))[0]


def bf16_from_f32_bits(b):
    """Round f32 bits to bfloat16 bits: nearest, ties to even; NaN -> 0x7FC0."""
    if (b & 0x7FFFFFFF) > 0x7F800000:
        return 0x7FC0
    hi, lo = b >> 16, b & 0xFFFF
    if lo > 0x8000 or (lo == 0x8000 and hi & 1):
        hi += 1
    return hi & 0xFFFF


def f16_from_f32_bits(b):
    x = bits_f32(b)
    if math.isnan(x):
        return 0x7E00
    try:
        return struct.unpack('<H', struct.pack('<e', x))[0]
    except OverflowError:
        return 0xFC00 if x < 0 else 0x7C00


FP8_FORMATS = {
    # name: (exponent bits, mantissa bits, bias, kind)
    'F8_E4M3': (4, 3, 7, 'fn'),
    'F8_E5M2': (5, 2, 15, 'ieee'),
    'F8_E4M3FNUZ': (4, 3, 8, 'fnuz'),
    'F8_E5M2FNUZ': (5, 2, 16, 'fnuz'),
}


def fp8_value(dtype, code):
    """The exact value of an FP8 code, from the format's definition."""
    e_bits, m_bits, bias, kind = FP8_FORMATS[dtype]
    sign = -1.0 if code & 0x80 else 1.0
    e = (code >> m_bits) & ((1 << e_bits) - 1)
    m = code & ((1 << m_bits) - 1)
    emax = (1 << e_bits) - 1
    if kind == 'fnuz' and code == 0x80:
        return math.nan
    if kind == 'fn' and e == emax and m == (1 << m_bits) - 1:
        return math.nan
    if kind == 'ieee' and e == emax:
        return sign * math.inf if m == 0 else math.nan
    if e == 0:
        return sign * m * 2.0 ** (1 - bias - m_bits)
    return sign * (1 + m / 2.0 ** m_bits) * 2.0 ** (e - bias)


def scale_values(dtype, data):
    if dtype == 'F32':
        return list(struct.unpack('<%df' % (len(data) // 4), data))
    if dtype == 'BF16':
        return [bits_f32(h << 16) for h in struct.unpack('<%dH' % (len(data) // 2), data)]
    if dtype == 'F16':
        return list(struct.unpack('<%de' % (len(data) // 2), data))
    if dtype == 'F8_E8M0':
        return [math.nan if c == 255 else 2.0 ** (c - 127) for c in data]
    raise ValueError('no scale dtype ' + dtype)


def unswizzle(flat, rows, groups):
    """ComfyUI MXFP8 scales to a row-major [rows, groups] list, step by step
    as fp8-conventions 13.4 gives comfy-kitchen's from_blocked: the bytes
    view(-1,32,16) -> (-1,32,4,4).transpose(1,2) -> (rb,cb,128,4) ->
    permute(0,2,1,3), i.e. a (rb*128, cb*4) matrix, then cropped."""
    rb, cb = -(-rows // 128), -(-groups // 4)
    assert len(flat) == rb * cb * 512, 'scale is not the padded tile grid'
    full = [[None] * (cb * 4) for _ in range(rb * 128)]
    for t in range(rb * cb):
        tile = flat[t * 512:(t + 1) * 512]
        v = [[[tile[b * 16 + a * 4 + c] for c in range(4)] for a in range(4)] for b in range(32)]  # (32,4,4)
        u = [[[v[b][a][c] for c in range(4)] for b in range(32)] for a in range(4)]  # transpose(1,2): (4,32,4)
        i, j = divmod(t, cb)  # tiles in (rb, cb) order; a tile is 128 rows (a*32+b) by 4 groups
        for a in range(4):
            for b in range(32):
                for c in range(4):
                    full[i * 128 + a * 32 + b][j * 4 + c] = u[a][b][c]
    return [full[r][g] for r in range(rows) for g in range(groups)]


def dequant(dtype, shape, data, scales, layout, target):
    """Expected output bytes: f32(fp8 * scale) rounded once to the target."""
    cols = shape[-1] if shape else 1
    rows_per = shape[-2] if len(shape) >= 2 else 1
    if layout == 'mx-swizzled':  # 1x32 groups of a 2-D weight, scales in cuBLAS tiles
        assert len(shape) == 2
        scales = unswizzle(scales, rows_per, -(-cols // 32))
        layout = 'block:1x32'
    bm = bn = 0
    if layout.startswith('block:'):
        bm, bn = (int(v) for v in layout[6:].split('x'))
        gm, gn = -(-rows_per // bm), -(-cols // bn)
    out = bytearray()
    for i, code in enumerate(data):
        if layout == 'none':
            s = 1.0
        elif layout == 'per-tensor':
            s = scales[0]
        elif layout == 'per-row':
            s = scales[i // cols]
        else:
            row, col = divmod(i, cols)
            mat, r = divmod(row, rows_per)
            s = scales[mat * gm * gn + (r // bm) * gn + col // bn]
        v = fp8_value(dtype, code)
        p = f32_bits(v * bits_f32(f32_bits(s)))  # exact double product, rounded to f32 once
        if target == 'BF16':
            out += struct.pack('<H', bf16_from_f32_bits(p))
        elif target == 'F16':
            out += struct.pack('<H', f16_from_f32_bits(p))
        else:
            out += struct.pack('<I', 0x7FC00000 if (p & 0x7FFFFFFF) > 0x7F800000 else p)
    return bytes(out)

# ----------------------------------------------------------- safetensors

DTYPE_BITS = {'BOOL': 8, 'F4': 4, 'F6_E2M3': 6, 'F6_E3M2': 6, 'U8': 8, 'I8': 8, 'F8_E5M2': 8,
              'F8_E4M3': 8, 'F8_E8M0': 8, 'F8_E4M3FNUZ': 8, 'F8_E5M2FNUZ': 8, 'I16': 16, 'U16': 16,
              'F16': 16, 'BF16': 16, 'I32': 32, 'U32': 32, 'F32': 32, 'C64': 64, 'F64': 64,
              'I64': 64, 'U64': 64}


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BITS[dtype] // 8


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype, shape, bytes) in data order."""
    header = {}
    if metadata is not None:
        header['__metadata__'] = metadata
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [off, off + len(data)]}
        off += len(data)
    text = json.dumps(header, separators=(',', ':'), ensure_ascii=False).encode()
    text += b' ' * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text)
        for t in tensors:
            f.write(t[3])


def read_safetensors(path):
    """Strict enough for checking our output: returns (metadata, {name: (dtype, shape, bytes)}, order)."""
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    if (8 + n) % 8:
        raise AssertionError('%s: data section does not start at a multiple of 8' % path)
    text = raw[8:8 + n]
    if text.rstrip(b' ') != text.rstrip():
        raise AssertionError('%s: header padded with something other than spaces' % path)
    header = json.loads(text)
    meta = header.pop('__metadata__', None)
    data = raw[8 + n:]
    ents = sorted(header.items(), key=lambda kv: kv[1]['data_offsets'])
    cursor = 0
    out = {}
    for name, e in ents:
        b, en = e['data_offsets']
        if b != cursor or en - b != nbytes(e['dtype'], e['shape']):
            raise AssertionError('%s: bad offsets for %r' % (path, name))
        cursor = en
        out[name] = (e['dtype'], e['shape'], data[b:en])
    if cursor != len(data):
        raise AssertionError('%s: data section not covered exactly' % path)
    return meta, out, [name for name, _ in ents]

# ----------------------------------------------------------- case parsing


class CaseError(Exception):
    pass


def parse_shape(text):
    text = text.strip()
    if not (text.startswith('[') and text.endswith(']')):
        raise CaseError('shape must look like [2,3]: ' + text)
    inner = text[1:-1].strip()
    return [int(v) for v in inner.split(',')] if inner else []


def tensor_bytes(dtype, shape, kind, args, files):
    """Builds tensor bytes from a data spec."""
    if kind == 'hex':
        return bytes.fromhex(''.join(args))
    if kind == 'f32':
        return b''.join(struct.pack('<I', f32_bits(float(a))) for a in args)
    if kind == 'bf16':   # exact bf16 values only
        out = b''
        for a in args:
            b = f32_bits(float(a))
            if b & 0xFFFF:
                raise CaseError('%s is not exactly representable in bf16' % a)
            out += struct.pack('<H', b >> 16)
        return out
    if kind == 'f16':
        return b''.join(struct.pack('<e', float(a)) for a in args)
    if kind == 'fill':
        pattern = bytes.fromhex(''.join(args))
        n = nbytes(dtype, shape)
        return (pattern * (n // len(pattern) + 1))[:n]
    if kind == 'random':
        rng = random.Random(int(args[0]))
        return bytes(rng.getrandbits(8) for _ in range(nbytes(dtype, shape)))
    if kind == 'range':   # 0,1,2,... as bytes, wrapping
        return bytes(i & 0xFF for i in range(nbytes(dtype, shape)))
    if kind == 'copy':
        return files[args[0]][1][args[1]][2]
    if kind == 'dequant':
        # dequant SRCFILE WEIGHT SCALE|- LAYOUT [format=F8_..] [scale-as=F8_E8M0] [scale2=NAME]:
        # the oracle's expected bytes. format: how a U8/I8 weight's bytes decode;
        # scale-as: how the scale's bytes decode; scale2: a scalar factor of the scale.
        src = files[args[0]][1]
        wdt, wshape, wdata = src[args[1]]
        opts = dict(a.split('=', 1) for a in args[4:])
        if args[2] == '-':
            scales = []
        else:
            sdt, _, sdata = src[args[2]]
            scales = scale_values(opts.get('scale-as', sdt), sdata)
            if 'scale2' in opts:
                s2dt, _, s2data = src[opts['scale2']]
                k = scale_values(s2dt, s2data)[0]
                scales = [bits_f32(f32_bits(v * k)) for v in scales]  # one f32 product
        return dequant(opts.get('format', wdt), wshape, wdata, scales, args[3], dtype)
    raise CaseError('unknown data kind ' + kind)


def parse_tensor_line(words, files, raw_text=None):
    # tensor NAME DTYPE SHAPE KIND ARGS...; SHAPE [*] is the data's length (U8)
    name = words[1]
    if name.startswith('"'):
        name = json.loads(name)
    dtype = words[2]
    shape = None if words[3] == '[*]' else parse_shape(words[3])
    if words[4] == 'text':      # the rest of the line, verbatim, as UTF-8
        data = raw_text.encode('utf-8')
    else:
        data = tensor_bytes(dtype, shape, words[4], words[5:], files)
    if shape is None:
        shape = [len(data)]
    return name, dtype, shape, data


def tensor_line(line, files):
    """Splits a tensor line; 'text' data is taken verbatim (JSON keeps its quotes)."""
    head, sep, text = line.partition(' text ')
    if sep:
        return parse_tensor_line(split(head) + ['text'], files, text)
    return parse_tensor_line(split(line), files)


def split(line):
    return shlex.split(line, posix=True)


def run_case(case_path, tools):
    lines = open(case_path, encoding='utf-8').read().split('\n')
    work = tempfile.mkdtemp(prefix='stcase-')
    env = dict(os.environ)
    env['PATH'] = tools + os.pathsep + env.get('PATH', '')
    env['SRCDIR'] = os.path.abspath(os.path.join(os.path.dirname(case_path), '..', '..', '..'))
    env['SHARED'] = os.path.abspath(os.path.join(env['SRCDIR'], '..', 'shared'))
    files = {}      # name -> (metadata, {tensor: (dtype, shape, bytes)})
    failures = []
    step = None
    i = 0

    def check(cond, what):
        if not cond:
            failures.append('%s:%d: %s' % (os.path.basename(case_path), lineno, what))

    def block(start):
        body = []
        j = start
        while j < len(lines) and (lines[j].startswith('  ') or not lines[j].strip()):
            if lines[j].strip() and not lines[j].strip().startswith('#'):
                body.append((j + 1, lines[j].strip()))
            j += 1
        return body, j

    while i < len(lines):
        lineno = i + 1
        line = lines[i].strip()
        i += 1
        if not line or line.startswith('#'):
            continue
        word, _, rest = line.partition(' ')
        if word == 'requires-mount':  # skip unless we may mount a small tmpfs (root)
            probe = os.path.join(work, '.mount-probe')
            os.mkdir(probe)
            ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe],
                                capture_output=True).returncode == 0
            if ok:
                subprocess.run(['umount', probe])
            os.rmdir(probe)
            if not ok:
                print('SKIP: cannot mount a tmpfs here (needs root); this case needs a small filesystem')
                return 77
            continue
        if word == 'requires-shared':
            if not os.path.isdir(env['SHARED']):
                print('SKIP: ../shared is absent; this case needs the FP8 fixtures there')
                return 77
            continue
        if word == 'file':          # a safetensors input, tensor by tensor
            body, i = block(i)
            meta, tensors = None, []
            for lineno, b in body:
                w = split(b)
                if w[0] == 'meta-raw':      # meta-raw KEY VALUE-VERBATIM (e.g. JSON)
                    meta = meta or {}
                    _, key, value = b.split(None, 2)
                    meta[key] = value
                elif w[0] == 'meta':
                    meta = meta or {}
                    meta[w[1]] = w[2] if len(w) > 2 else ''
                elif w[0] == 'no-meta':
                    meta = None
                elif w[0] == 'tensor':
                    tensors.append(tensor_line(b, files))
                else:
                    raise CaseError('%d: unknown file line %r' % (lineno, b))
            path = os.path.join(work, rest)
            write_safetensors(path, tensors, meta)
            files[rest] = (meta, {t[0]: t[1:] for t in tensors})
            continue
        if word == 'raw':           # arbitrary bytes, for malformed inputs
            body, i = block(i)
            data = b''
            for lineno, b in body:
                kind, _, arg = b.partition(' ')
                if kind == 'u64':
                    data += struct.pack('<Q', int(arg))
                elif kind == 'text':
                    data += json.loads(arg).encode('utf-8') if arg.startswith('"') else arg.encode('utf-8')
                elif kind == 'hex':
                    data += bytes.fromhex(arg.replace(' ', ''))
                elif kind == 'zeros':
                    data += bytes(int(arg))
                elif kind == 'header':   # u64 length prefix + the JSON text that follows
                    t = arg.encode('utf-8')
                    data += struct.pack('<Q', len(t)) + t
                else:
                    raise CaseError('%d: unknown raw line %r' % (lineno, b))
            with open(os.path.join(work, rest), 'wb') as f:
                f.write(data)
            continue
        if word == 'textfile':      # textfile NAME: the indented lines, verbatim
            body, i = block(i)
            with open(os.path.join(work, rest), 'w', encoding='utf-8') as f:
                f.write('\n'.join(b for _, b in body) + '\n')
            continue
        if word == 'load':          # read a file made by a command, for copy/dequant
            meta, got, _ = read_safetensors(os.path.join(work, rest))
            files[rest] = (meta, got)
            continue
        if word in ('run', 'run-tty'):  # a shell command, run in the work dir
            if word == 'run-tty':          # stdin and stdout are a terminal
                import pty
                master, slave = pty.openpty()
                step = subprocess.run(['bash', '-c', 'set -o pipefail; ' + rest], cwd=work, env=env,
                                      stdin=slave, stdout=slave, stderr=subprocess.PIPE)
                os.close(slave)
                tty_out = b''
                try:
                    while True:
                        chunk = os.read(master, 65536)
                        if not chunk:
                            break
                        tty_out += chunk
                except OSError:
                    pass
                os.close(master)
                step.stdout = tty_out
            else:
                step = subprocess.run(['bash', '-c', 'set -o pipefail; ' + rest], cwd=work, env=env,
                                      stdin=subprocess.DEVNULL, capture_output=True)
            step_cmd = rest
            if os.environ.get('STCASE_VERBOSE'):
                print('$ ' + rest)
                print(step.stderr.decode('utf-8', 'replace'), end='')
            continue
        # ---- assertions about the last run
        out = step.stdout.decode('utf-8', 'replace') if step else ''
        err = step.stderr.decode('utf-8', 'replace') if step else ''
        if word == 'exit':
            check(step.returncode == int(rest), 'exit %d, wanted %s (%s)\nstderr: %s' % (step.returncode, rest, step_cmd, err))
        elif word == 'stdout-has':
            check(rest in out, 'stdout lacks %r:\n%s' % (rest, out))
        elif word == 'stdout-lacks':
            check(rest not in out, 'stdout has %r:\n%s' % (rest, out))
        elif word == 'stderr-has':
            check(rest in err, 'stderr lacks %r:\n%s' % (rest, err))
        elif word == 'stderr-lacks':
            check(rest not in err, 'stderr has %r:\n%s' % (rest, err))
        elif word == 'stdout-empty':
            check(step.stdout == b'', 'stdout not empty: %r' % step.stdout[:200])
        elif word == 'stderr-empty':
            check(err == '', 'stderr not empty: %s' % err)
        elif word == 'stderr-one-line':
            check(err.count('\n') == 1 and err.endswith('\n'), 'stderr is not one line: %r' % err)
        elif word == 'stdout-line':   # an exact line somewhere in stdout
            check(rest in out.split('\n'), 'stdout has no line %r:\n%s' % (rest, out))
        elif word == 'absent':
            check(not os.path.exists(os.path.join(work, rest)), '%s exists' % rest)
        elif word == 'no-temp-files':   # none in the work dir or any folder below it
            left = [os.path.relpath(os.path.join(d, f), work) for d, _, fs in os.walk(work)
                    for f in fs if '.st-pack-' in f]
            check(not left, 'temporary files left: %s' % left)
        elif word == 'dir-files':       # dir-files DIR [NAME...]: exactly these entries (hidden ones too);
            w = split(rest)             # no NAME: DIR is absent or empty
            path = os.path.join(work, w[0])
            got = sorted(os.listdir(path)) if os.path.isdir(path) else None
            if len(w) == 1:
                check(not got, '%s holds %s, wanted nothing' % (w[0], got))
            else:
                check(got == sorted(w[1:]), '%s holds %s, wanted %s' % (w[0], got, sorted(w[1:])))
        elif word == 'index':           # index FILE SHARD...: FILE is exactly the index of these shards
            w = split(rest)
            path = os.path.join(work, w[0])
            if not os.path.exists(path):
                check(False, '%s was not written' % w[0])
                continue
            weight_map, total = {}, 0
            try:
                for shard in w[1:]:
                    for name, (dtype, shape, data) in read_safetensors(os.path.join(work, shard))[1].items():
                        check(name not in weight_map, '%r is in %s and %s' % (name, weight_map.get(name), shard))
                        weight_map[name] = os.path.relpath(os.path.join(work, shard), os.path.dirname(path))
                        total += len(data)
            except Exception as ex:  # noqa: BLE001 - a shard that cannot be read is a failure
                check(False, 'shard not valid: %s' % ex)
                continue
            want = json.dumps({'metadata': {'total_size': total}, 'weight_map': weight_map},
                              indent=2, sort_keys=True) + '\n'
            got = open(path, encoding='utf-8', errors='replace').read()
            check(got == want, '%s is\n%s\nwanted\n%s' % (w[0], got, want))
        elif word == 'union-equals':    # union-equals FILE SHARD...: the shards hold exactly FILE's
            w = split(rest)             # tensors (bit for bit), each once, and FILE's metadata
            try:
                meta, want, _ = read_safetensors(os.path.join(work, w[0]))
                got = {}
                for shard in w[1:]:
                    smeta, t, _ = read_safetensors(os.path.join(work, shard))
                    check(smeta == meta, '%s metadata %r, wanted %r' % (shard, smeta, meta))
                    for name in t:
                        check(name not in got, '%r is in two shards' % name)
                        got[name] = t[name]
            except Exception as ex:  # noqa: BLE001
                check(False, 'not valid safetensors: %s' % ex)
                continue
            check(sorted(got) == sorted(want), 'shards hold %s, %s holds %s' % (sorted(got), w[0], sorted(want)))
            for name in sorted(set(got) & set(want)):
                check(got[name] == want[name], '%r differs between the shards and %s' % (name, w[0]))
        elif word == 'json-file':       # json-file FILE: FILE is this JSON (the indented lines), keys in
            body, i = block(i)          # this order, indented by two spaces
            path = os.path.join(work, rest)
            if not os.path.exists(path):
                check(False, '%s was not written' % rest)
                continue
            text = open(path, encoding='utf-8').read()
            ordered = lambda t: json.loads(t, object_pairs_hook=list)  # noqa: E731 - keeps key order
            try:
                got = ordered(text)
            except ValueError as ex:
                check(False, '%s is not JSON: %s' % (rest, ex))
                continue
            check(got == ordered('\n'.join(b for _, b in body)), '%s is\n%s' % (rest, text))
            text_lines = text.split('\n')
            check(len(text_lines) > 1 and text_lines[1].startswith('  "') and not text_lines[1].startswith('   '),
                  '%s is not indented by two spaces:\n%s' % (rest, text))
        elif word == 'same-bytes':
            a, b = split(rest)
            missing = [f for f in (a, b) if not os.path.isfile(os.path.join(work, f))]
            if missing:
                check(False, '%s: no such file' % ' '.join(missing))
                continue
            check(open(os.path.join(work, a), 'rb').read() == open(os.path.join(work, b), 'rb').read(),
                  '%s and %s differ' % (a, b))
        elif word == 'each-flip' or word == 'each-cut':
            # each-flip FILE N CMD: flip one byte (xor 0xff) at N random positions of FILE,
            # feed it to CMD on stdin; every run must exit 1 with a one-line error and
            # leave no out.safetensors. each-cut: truncate at N random lengths instead.
            w = split(rest)
            src, count, cmd = w[0], int(w[1]), rest.split(None, 2)[2]
            data = open(os.path.join(work, src), 'rb').read()
            # the first and last byte, then pseudo-random positions (seeded: the same every run)
            rng = random.Random(len(data) * 31 + count)
            positions = sorted(set([0, len(data) - 1] + [rng.randrange(len(data)) for _ in range(count)]))
            for pos in positions:
                bad = bytearray(data)
                if word == 'each-flip':
                    bad[pos] ^= 0xFF
                else:
                    bad = bad[:pos]
                r = subprocess.run(['bash', '-c', cmd], cwd=work, env=env, input=bytes(bad), capture_output=True)
                e = r.stderr.decode('utf-8', 'replace')
                target = os.path.join(work, 'out.safetensors')
                ok = r.returncode == 1 and e.count('\n') == 1 and not os.path.exists(target)
                check(ok, '%s at %d: exit %d, stderr %r, output %s' % (word, pos, r.returncode, e,
                      'written' if os.path.exists(target) else 'absent'))
                if os.path.exists(target):
                    os.unlink(target)
        elif word == 'expect':      # the output file must hold exactly these tensors
            body, i = block(i)
            path = os.path.join(work, rest)
            if not os.path.exists(path):
                check(False, '%s was not written' % rest)
                continue
            try:
                meta, got, order = read_safetensors(path)
            except Exception as ex:  # noqa: BLE001 - any parse failure is a test failure
                check(False, '%s is not valid safetensors: %s' % (rest, ex))
                continue
            files[rest] = (meta, got)
            want_meta, want_meta_given, want = None, False, {}
            for lineno, b in body:
                w = split(b)
                if w[0] == 'meta':
                    want_meta = want_meta or {}
                    want_meta[w[1]] = w[2] if len(w) > 2 else ''
                    want_meta_given = True
                elif w[0] == 'no-meta':
                    want_meta_given = True
                elif w[0] == 'meta-json':
                    want_meta, want_meta_given = json.loads(b.split(None, 1)[1]), True
                elif w[0] == 'meta-from':
                    want_meta, want_meta_given = files[w[1]][0], True
                elif w[0] == 'tensor':
                    try:
                        name, dtype, shape, data = tensor_line(b, files)
                    except KeyError as ex:   # copied from a file that was not written
                        check(False, 'no file or tensor %s for %r' % (ex, b))
                        continue
                    want[name] = (dtype, shape, data)
                elif w[0] == 'order':
                    check(order == w[1:], 'data order %s, wanted %s' % (order, w[1:]))
                else:
                    raise CaseError('%d: unknown expect line %r' % (lineno, b))
            if want_meta_given:
                check(meta == want_meta, 'metadata %r, wanted %r' % (meta, want_meta))
            check(sorted(got) == sorted(want), 'tensors %s, wanted %s' % (sorted(got), sorted(want)))
            for name in sorted(set(got) & set(want)):
                g, w_ = got[name], want[name]
                check(g[0] == w_[0] and g[1] == w_[1], '%r is %s %s, wanted %s %s' % (name, g[0], g[1], w_[0], w_[1]))
                if g[2] != w_[2]:
                    k = next((j for j in range(min(len(g[2]), len(w_[2]))) if g[2][j] != w_[2][j]), None)
                    check(False, '%r data differs (%d vs %d bytes, first difference at byte %s)' % (name, len(g[2]), len(w_[2]), k))
        else:
            raise CaseError('%d: unknown directive %r' % (lineno, word))

    if failures:
        print('\n'.join(failures))
        print('work dir kept: ' + work)
        return 1
    subprocess.run(['rm', '-rf', work])
    print('ok')
    return 0


def main():
    if len(sys.argv) != 3:
        print('usage: stcase.py CASE TOOLS_DIR', file=sys.stderr)
        return 2
    try:
        return run_case(sys.argv[1], os.path.abspath(sys.argv[2]))
    except CaseError as ex:
        print('bad case file: %s' % ex)
        return 1


if __name__ == '__main__':
    sys.exit(main())
