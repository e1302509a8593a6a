#!/usr/bin/env bash
# Memory with a header of very many tiny tensors (the reliability issue's
# "a million tiny tensors"): generates a FLUX-shaped model with hidden size 1
# (18 tensors a block, FP8 weights with scalar scales, so every stage has
# work to do), runs the four-stage pipeline once, checks that the output
# holds what st-convert writes, and prints the header size, the wall time
# and each stage's peak RSS (/usr/bin/time).
#
#   bench/many-tensors.sh [BLOCKS]     default 50000 (900,000 tensors)
#
# Env: BUILD (default build-bench, a release build), WORK (default /tmp/st-bench).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build-bench}
work=${WORK:-/tmp/st-bench}
blocks=${1:-50000}
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$here" --buildtype=release -Dtests=false >/dev/null
fi
ninja -C "$build" >/dev/null
PATH=$build/tools:$PATH
mkdir -p "$work"
in=$work/tiny-$blocks.safetensors
[ -f "$in" ] || "$build/bench/st-genmodel" --hidden 1 --blocks "$blocks" "$in" >/dev/null
header=$(python3 -c "import struct,sys; print(struct.unpack('<Q', open(sys.argv[1],'rb').read(8))[0])" "$in")
tensors=$((blocks * 18))
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
