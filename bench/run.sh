#!/usr/bin/env bash
# Benchmark: st-tools against the I/O floor, on generated FLUX-shaped FP8 models.
#
#   bench/run.sh [GiB ...]          default: 1 4
#
# Env: BUILD (build dir, default build-bench, configured here as a release
# build), WORK (scratch dir, default /tmp/st-bench; needs ~4x the largest
# size free), RUNS (repetitions, default 5; the median is reported).
# Prints a Markdown table: wall time (median), throughput in input bytes per
# second, ratio to the floor, and the peak RSS of each stage (/usr/bin/time).
# The floor is `cat IN IN > OUT`: it reads the input twice and writes as many
# bytes as the BF16 output, with no fsync; a second row adds `sync OUT`, as
# st-pack fsyncs before it renames. Caches are warm (the input was just
# written); nothing here drops them. Before each run, untimed, `sync`
# writes back what the previous run left dirty.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build-bench}
work=${WORK:-/tmp/st-bench}
runs=${RUNS:-5}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1 4)

if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$here" --buildtype=release -Dtests=false >/dev/null
fi
ninja -C "$build" >/dev/null
tools=$build/tools
PATH=$tools:$PATH
mkdir -p "$work"
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "bench: /usr/bin/time is needed (apt-get install time)" >&2; exit 1; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }

# run_case NAME CMD...: runs CMD (a bash string) RUNS times; prints "median_seconds max_rss_kib_per_stage..."
# Each stage in CMD is wrapped as `t N prog args`, which records its peak RSS in $work/rss.N.
run_case() {
  local cmd=$1 times=() rss
  for ((r = 0; r < runs; r++)); do
    rm -f "$work"/out.safetensors "$work"/rss.*
    sync  # untimed: no run pays for the writeback of the one before
    local t0 t1
    t0=$(now)
    bash -c "set -euo pipefail; t() { local n=\$1; shift; $TIME -f %M -o $work/rss.\$n \"\$@\"; }; $cmd"
    t1=$(now)
    times+=("$(calc "$t1 - $t0")")
  done
  echo "$cmd: ${times[*]}" >>"$work/times.log"  # every run, for a second look at the spread
  rss=""
  for f in $(ls "$work"/rss.* 2>/dev/null | sort); do rss+="$(( $(tail -1 "$f") / 1024 )) "; done
  printf '%s %s\n' "$(printf '%s\n' "${times[@]}" | median)" "$rss"
}

echo "machine: $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "st-tools $(st-list --version | head -1 | awk '{print $3}'), runs per case: $runs (median)"
echo
echo "| model | case | wall s | input MiB/s | x floor | peak RSS MiB per stage |"
echo "|---|---|---|---|---|---|"
for gib in "${sizes[@]}"; do
  in=$work/model-${gib}g.safetensors
  [ -f "$in" ] || "$build/bench/st-genmodel" --gib "$gib" "$in" >/dev/null
  bytes=$(stat -c %s "$in")
  mib=$(calc "$bytes / 1048576")
  declare -A res=()
  res[floor]=$(run_case "cat $in $in > $work/out.safetensors")
  # st-pack fsyncs before it renames; the same copy made durable, for comparison
  res[durable]=$(run_case "cat $in $in > $work/out.safetensors && sync $work/out.safetensors")
  res[three]=$(run_case "t 1 st-list $in | t 2 st-dequant | t 3 st-pack $work/out.safetensors")
  res[noverify]=$(run_case "t 1 st-list $in | t 2 st-dequant | t 3 st-pack --no-verify $work/out.safetensors")
  res[four]=$(run_case "t 1 st-list $in | t 2 st-scales | t 3 st-dequant | t 4 st-pack $work/out.safetensors")
  res[convert]=$(run_case "t 1 st-convert $in $work/out.safetensors")
  floor=$(echo "${res[floor]}" | awk '{print $1}')
  for k in floor durable three noverify four convert; do
    case $k in
      floor) label='floor: cat IN IN > OUT' ;;
      durable) label='floor made durable: cat IN IN > OUT; sync OUT' ;;
      three) label='st-list \| st-dequant \| st-pack' ;;
      noverify) label='the same, st-pack --no-verify (no read-back)' ;;
      four) label='st-list \| st-scales \| st-dequant \| st-pack' ;;
      convert) label='st-convert' ;;
    esac
    read -r secs rest <<<"${res[$k]}"
    printf '| %s GiB | %s | %.2f | %.0f | %.2f | %s |\n' "$gib" "$label" "$secs" "$(calc "$mib / $secs")" \
      "$(calc "$secs / $floor")" "${rest:-n/a}"
  done
  rm -f "$work"/out.safetensors
done
