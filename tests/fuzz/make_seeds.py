#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets.

    make_seeds.py OUT_DIR [TOOLS_DIR]

writes OUT_DIR/fuzz_safetensors_header/, OUT_DIR/fuzz_stream_reader/ and
OUT_DIR/fuzz_scale_matcher/ (each a flat directory of small files). It
writes small .safetensors files of every naming convention into a temporary
directory, runs the built st-list and st-scales (TOOLS_DIR, default
build-fuzz/tools) on them to get real streams, and takes the manifests out
of those streams. Nothing here is committed: the script regenerates it all.

Input formats (see the comment at the top of each target):
  header:  HEADER_JSON '\\0' DATA_SIZE (8 bytes, little-endian)
  stream:  a whole st-stream
  matcher: MANIFEST_JSON [ '\\0' OPTIONS [ '\\0' MARKER ]... ]
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

DTYPE_BITS = {
    'BOOL': 8, 'F4': 4, 'F6_E2M3': 6, 'F6_E3M2': 6, 'U8': 8, 'I8': 8, 'F8_E5M2': 8, 'F8_E4M3': 8,
    'F8_E8M0': 8, 'F8_E4M3FNUZ': 8, 'F8_E5M2FNUZ': 8, 'I16': 16, 'U16': 16, 'F16': 16, 'BF16': 16,
    'I32': 32, 'U32': 32, 'F32': 32, 'C64': 64, 'F64': 64, 'I64': 64, 'U64': 64,
}


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BITS[dtype] // 8


def content(dtype, shape, name, data=None):
    """Deterministic bytes; scales get small positive F32 values."""
    n = nbytes(dtype, shape)
    if data is not None:
        return data
    if dtype == 'F32':
        return struct.pack('<%df' % (n // 4), *[0.125 * (1 + i % 7) for i in range(n // 4)])
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


def header_json(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] in data order. Returns (json bytes, data)."""
    h = {}
    if metadata is not None:
        h['__metadata__'] = metadata
    off = 0
    data = b''
    for name, dtype, shape, b in tensors:
        h[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [off, off + len(b)]}
        off += len(b)
        data += b
    j = json.dumps(h, separators=(',', ':')).encode()
    j += b' ' * ((8 - (8 + len(j)) % 8) % 8)
    return j, data


def tensors_of(spec):
    return [(n, d, s, content(d, s, n, *rest)) for (n, d, s, *rest) in spec]


MARKER = json.dumps({'format': 'float8_e4m3fn'}).encode()

# name -> (tensors, metadata, config.json quantization_config or None)
MODELS = {
    'plain': ([('a', 'F32', [2, 3]), ('b', 'U8', [4]), ('c', 'BF16', []), ('e', 'I64', [0])], {'format': 'pt'}, None),
    'block': ([('model.layers.0.mlp.down_proj.weight', 'F8_E4M3', [130, 4]),
               ('model.layers.0.mlp.down_proj.weight_scale_inv', 'F32', [2, 1]),
               ('model.norm.weight', 'BF16', [4])], None, None),
    'block-config': ([('l.weight', 'F8_E4M3', [8, 8]), ('l.weight_scale_inv', 'F32', [2, 2])], None,
                     {'quant_method': 'fp8', 'weight_block_size': [4, 4]}),
    'rows': ([('a.weight', 'F8_E4M3', [4, 8]), ('a.weight_scale', 'F32', [4, 1]), ('a.input_scale', 'F32', []),
              ('b.weight', 'F8_E5M2', [2, 2]), ('b.weight_scale', 'F32', []), ('c.weight', 'F8_E4M3FNUZ', [2, 3])],
             {'format': 'pt'}, None),
    'comfy-scaled': ([('l.weight', 'F8_E4M3', [2, 4]), ('l.scale_weight', 'F32', [1]), ('l.scale_input', 'F32', []),
                      ('m.weight', 'F8_E4M3', [2, 4]), ('m.scale_weight', 'F32', [2, 1]),
                      ('m.scale_weight_tensor', 'F32', []), ('scaled_fp8', 'F8_E4M3', [0])], None, None),
    'comfy-mixed': ([('m.weight', 'F8_E4M3', [2, 4]), ('m.weight_scale', 'F32', []),
                     ('m.comfy_quant', 'U8', [len(MARKER)], MARKER), ('n.weight', 'U8', [2, 4]),
                     ('n.weight_scale', 'F8_E4M3', [2, 1]), ('n.weight_scale_2', 'F32', [])],
                    {'_quantization_metadata': json.dumps(
                        {'format_version': '1.0', 'layers': {'m': {'format': 'float8_e4m3fn'}, 'n': 'nvfp4'}})},
                    None),
    'mx': ([('g.weight', 'F8_E4M3', [2, 64]), ('g.weight_scale', 'U8', [2, 2]),
            ('h.weight', 'F8_E5M2', [2, 300]), ('h.weight_scale', 'BF16', [2, 3])], None,
           {'config_groups': {'group_0': {'weights': {'group_size': 128, 'num_bits': 8}}}}),
    'mistral-ao': ([('layers.0.attention.wq.weight', 'F8_E4M3', [4, 4]),
                    ('layers.0.attention.wq.qscale_weight', 'F32', []),
                    ('layers.0.attention.wq.qscale_act', 'F32', []),
                    ('lin._weight_qdata', 'F8_E4M3', [4, 8]), ('lin._weight_scale', 'F32', [4, 1]),
                    ('0.weight:qdata', 'F8_E4M3', [2, 8]), ('0.weight:scale', 'F32', [2, 1]),
                    ('lin.bias', 'BF16', [4])],
                   {'format': 'pt', 'tensor_names': json.dumps(['lin.weight', 'lin.bias', '0.weight']),
                    'lin.weight': json.dumps({'_type': 'Float8Tensor'}), '0.weight:_type': 'x'}, None),
    'problems': ([('x.weight', 'F8_E4M3', [4, 4]), ('x.weight_scale', 'F32', [3]), ('y.weight', 'F8_E4M3', [2, 2]),
                  ('y.weight_scale', 'F32', []), ('y.weight_scale_inv', 'F32', []), ('z.weight_scale', 'F32', []),
                  ('u.weight', 'U8', [2, 2]), ('u.weight_scale', 'F32', []), ('v.weight', 'BF16', [2]),
                  ('v.weight_scale', 'F32', [])], None, None),
}


def write_models(tmp):
    paths = {}
    for name, (spec, meta, qc) in MODELS.items():
        d = os.path.join(tmp, name)
        os.makedirs(d)
        j, data = header_json(tensors_of(spec), meta)
        p = os.path.join(d, 'model.safetensors')
        with open(p, 'wb') as f:
            f.write(struct.pack('<Q', len(j)) + j + data)
        if qc is not None:
            with open(os.path.join(d, 'config.json'), 'w') as f:
                json.dump({'quantization_config': qc}, f)
        paths[name] = (p, j, len(data))
    return paths


def manifest_of(stream):
    """The manifest JSON of a stream: the payload of the first frame."""
    n = struct.unpack_from('<Q', stream, 24 + 8)[0]
    return stream[48:48 + n]


def put(d, name, b):
    with open(os.path.join(d, name), 'wb') as f:
        f.write(b)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit('usage: make_seeds.py OUT_DIR [TOOLS_DIR]')
    out = sys.argv[1]
    tools = sys.argv[2] if len(sys.argv) == 3 else os.path.join(os.path.dirname(__file__), '..', '..', 'build-fuzz', 'tools')
    dirs = {k: os.path.join(out, k) for k in ('fuzz_safetensors_header', 'fuzz_stream_reader', 'fuzz_scale_matcher')}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    hd, sd, md = dirs['fuzz_safetensors_header'], dirs['fuzz_stream_reader'], dirs['fuzz_scale_matcher']

    with tempfile.TemporaryDirectory() as tmp:
        models = write_models(tmp)
        # Headers: every model's, with its data size.
        for name, (_, j, size) in models.items():
            put(hd, 'hdr-' + name, j + b'\0' + struct.pack('<Q', size))
        # Streams: st-list of each file, and st-list | st-scales (with a matching).
        for name, (p, _, _) in models.items():
            listed = subprocess.run([os.path.join(tools, 'st-list'), '-q', p], check=True, stdout=subprocess.PIPE).stdout
            put(sd, 'list-' + name, listed)
            put(md, 'man-' + name, manifest_of(listed))
            r = subprocess.run([os.path.join(tools, 'st-scales'), '-q'], input=listed, stdout=subprocess.PIPE)
            if r.returncode == 0 and r.stdout:
                put(sd, 'scales-' + name, r.stdout)
                put(md, 'matched-' + name, manifest_of(r.stdout))
        listed = open(os.path.join(sd, 'list-rows'), 'rb').read()
        put(sd, 'cut-rows', listed[:len(listed) // 2])
        # A stream that ends in an ABORT frame: st-scales fails on the cut
        # stream after it has begun its output.
        r = subprocess.run([os.path.join(tools, 'st-scales'), '-q'], input=listed[:len(listed) // 2],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if r.stdout:
            put(sd, 'abort-rows', r.stdout)

    # Broken headers, one reason each (the reference's reject classes).
    broken = {
        'empty': b'',
        'not-object': b'[1,2]',
        'trailing': b'{} x',
        'bad-dtype': b'{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}',
        'hole': b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
        'overlap': b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
        'size': b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}',
        'overflow': b'{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}',
        'f4-odd': b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}',
        'meta-number': b'{"__metadata__":{"k":1}}',
        'dup-field': b'{"a":{"dtype":"U8","dtype":"U8","shape":[0],"data_offsets":[0,0]}}',
        'extras': b'{"__metadata__":null,"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":{"y":[1,{}]}}}',
        'surrogate': b'{"__metadata__":{"k":"\\ud800"}}',
        'deep': b'{"a":{"x":' + b'[' * 130 + b']' * 130 + b'}}',
    }
    for name, j in broken.items():
        put(hd, 'bad-' + name, j + b'\0' + struct.pack('<Q', 1 if name == 'hole' else 0))

    # Matcher inputs with options and marker contents after the manifest.
    mixed = open(os.path.join(md, 'man-comfy-mixed'), 'rb').read()
    put(md, 'opt-comfy-mixed-marker', mixed + b'\0' + bytes([1, 32, 0]) + b'\0' + b'{"format":"nvfp4"}')
    put(md, 'opt-comfy-mixed-badmarker', mixed + b'\0' + bytes([128, 128, 1]) + b'\0' + b'{not json')
    put(md, 'opt-problems-u8', open(os.path.join(md, 'man-problems'), 'rb').read() + b'\0' + bytes([64, 64, 0b00100110]))
    put(md, 'opt-block-convention', open(os.path.join(md, 'man-block'), 'rb').read() + b'\0' + bytes([128, 128, 0b00100000]))
    for d in dirs.values():
        print('%s: %d seeds' % (d, len(os.listdir(d))))


if __name__ == '__main__':
    main()
