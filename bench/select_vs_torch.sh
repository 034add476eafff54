#!/usr/bin/env bash
# `kvevict select --policy snapkv` against the same selection in PyTorch (bench/snapkv_torch.py),
# whole process each (start-up, reading the .npy files, the selection, writing the kept set), in
# one run on one machine — issue 21's target: the command ≥ 5× faster.
#
#   bench/select_vs_torch.sh [KVEVICT_BINARY] [DATA_DIR] [RUNS]
#
# Defaults: build/release/tools/kvevict (cmake --workflow --preset demo builds it),
# build/select-vs-torch, 5 runs each (interleaved; the medians are printed). The inputs are
# K, V [8, 32768, 128] and Q [32, 32, 128] fp32 (256 MiB), written once by snapkv_torch.py --make.
# Needs Debian's python3-torch and python3-numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-build/release/tools/kvevict}"
dir="${2:-build/select-vs-torch}"
runs="${3:-5}"
py=/usr/bin/python3
[ -x "$bin" ] || { echo "select_vs_torch: $bin: expected the kvevict binary" >&2; exit 1; }
[ -f "$dir/q.npy" ] || "$py" bench/snapkv_torch.py --make "$dir"
budget=6553  # 20% of 32768

now() { date +%s.%N; }
declare -a tk tt
for ((i = 0; i < runs; ++i)); do
  t0=$(now)
  "$bin" select --policy snapkv --budget "$budget" --keys "$dir/k.npy" --values "$dir/v.npy" \
    --queries "$dir/q.npy" --out "$dir/kvevict.json"
  t1=$(now)
  "$py" bench/snapkv_torch.py --dir "$dir" --budget "$budget" --out "$dir/torch.json" 2>/dev/null
  t2=$(now)
  tk+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
  tt+=("$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.3f", b - a}')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
mk=$(median "${tk[@]}")
mt=$(median "${tt[@]}")
echo "kvevict select: ${tk[*]} s (median $mk)"
echo "torch script:   ${tt[*]} s (median $mt)"
echo "kvevict is $(awk -v a="$mt" -v b="$mk" 'BEGIN {printf "%.1f", a / b}')x faster (whole process, same run)"
"$py" bench/snapkv_torch.py --dir "$dir" --budget "$budget" --check "$dir/kvevict.json" 2>/dev/null
