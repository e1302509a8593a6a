#!/usr/bin/env bash
# Memory with a header of very many tiny tensors (the reliability issue's
# "a million tiny tensors"): generates a model, runs the four-stage
# pipeline once, checks that the output holds what st-convert writes, and
# prints the header size, the wall time and each stage's peak RSS
# (/usr/bin/time).
#
#   bench/many-tensors.sh [BLOCKS]          a FLUX-shaped model with hidden size 1
#                                           (18 tensors a block, long names, FP8 weights
#                                           with scalar scales); default 50000 (900,000 tensors)
#   bench/many-tensors.sh --short [LAYERS]  LAYERS x (l<i>.weight F8_E4M3 [4], l<i>.weight_scale,
#                                           l<i>.input_scale): short names; default 333334
#                                           (1,000,002 tensors)
#
# Env: BUILD (default build-bench, a release build), WORK (default /tmp/st-bench).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build-bench}
work=${WORK:-/tmp/st-bench}
short=0
if [ "${1:-}" = --short ]; then
  short=1
  shift
fi
count=${1:-$([ $short = 1 ] && echo 333334 || echo 50000)}
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$here" --buildtype=release -Dtests=false >/dev/null
fi
ninja -C "$build" >/dev/null
PATH=$build/tools:$PATH
mkdir -p "$work"
if [ $short = 1 ]; then
  in=$work/short-$count.safetensors
  tensors=$((count * 3))
  # The header lists the tensors in data order (the reference writer would
  # sort them by dtype, then name); st-list reads either order.
  [ -f "$in" ] || python3 - "$count" "$in" <<'EOF'
import struct, sys
n, out = int(sys.argv[1]), sys.argv[2]
parts, data, off = [], bytearray(), 0
for i in range(n):
    for name, dtype, shape, b in ((f"l{i}.weight", "F8_E4M3", "[4]", bytes([0x38, 0x40, 0x48, 0x30])),
                                  (f"l{i}.weight_scale", "F32", "[]", struct.pack("<f", 0.5)),
                                  (f"l{i}.input_scale", "F32", "[]", struct.pack("<f", 1.0))):
        parts.append('"%s":{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}' % (name, dtype, shape, off, off + len(b)))
        off += len(b)
        data += b
h = ("{" + ",".join(parts) + "}").encode()
h += b" " * (-len(h) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)
EOF
else
  in=$work/tiny-$count.safetensors
  tensors=$((count * 18))
  [ -f "$in" ] || "$build/bench/st-genmodel" --hidden 1 --blocks "$count" "$in" >/dev/null
fi
header=$(python3 -c "import struct,sys; print(struct.unpack('<Q', open(sys.argv[1],'rb').read(8))[0])" "$in")
rm -f "$work"/tiny-out.safetensors "$work"/tiny-ref.safetensors "$work"/rss.*
t() { local n=$1; shift; /usr/bin/time -f %M -o "$work/rss.$n" "$@"; }
t0=$(date +%s.%N)
t 1 st-list "$in" | t 2 st-scales | t 3 st-dequant | t 4 st-pack "$work/tiny-out.safetensors"
t1=$(date +%s.%N)
st-convert "$in" "$work/tiny-ref.safetensors"
cmp "$work/tiny-out.safetensors" "$work/tiny-ref.safetensors"
echo "| tensors | header MB | wall s | peak RSS MiB: st-list st-scales st-dequant st-pack |"
echo "|---|---|---|---|"
printf '| %d | %.1f | %.1f | %s |\n' "$tensors" "$(awk "BEGIN {print $header / 1e6}")" \
  "$(awk "BEGIN {print $t1 - $t0}")" \
  "$(for n in 1 2 3 4; do printf '%d ' $(( $(tail -1 "$work/rss.$n") / 1024 )); done)"
rm -f "$work"/tiny-out.safetensors "$work"/tiny-ref.safetensors
