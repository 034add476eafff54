#!/usr/bin/env bash
# The long fuzz campaign: every libFuzzer target until it has run RUNS inputs (default 10
# million), in JOBS parallel processes sharing one corpus, from the committed seeds. CI runs each
# target for 30 s; this is the run that finds what 30 s cannot (issue 22 came from 8 minutes).
#
#   fuzz/campaign.sh [RUNS] [JOBS] [TARGETS…]      # e.g. fuzz/campaign.sh 10000000 2 stream
#
# Builds the `fuzz` preset (clang, ASan + UBSan + libFuzzer) in build/fuzz. Corpora grow in
# build/fuzz/campaign/<target>/ and are kept between runs; findings (crash-*, the input that
# broke an invariant, with the harness's trace of calls on stderr) land in
# build/fuzz/campaign/<target>/findings/. Prints, per target: inputs run, seconds, coverage
# (libFuzzer's cov and ft counters) and corpus size, and exits non-zero if anything was found.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
jobs=${2:-2}
shift $(($# < 2 ? $# : 2))
targets=("$@")
((${#targets[@]})) || targets=(npy select stream)

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" >/dev/null
out=build/fuzz/campaign
status=0
printf '%-8s %12s %9s %8s %8s %8s %s\n' target inputs seconds cov ft corpus findings
for t in "${targets[@]}"; do
  dir=$out/$t
  mkdir -p "$dir/corpus" "$dir/findings" "$dir/logs"
  per_job=$(((runs + jobs - 1) / jobs))
  start=$SECONDS
  pids=()
  for ((j = 0; j < jobs; j++)); do
    build/fuzz/fuzz/fuzz_$t -runs="$per_job" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$dir/findings/" -seed=$((j + 1)) "$dir/corpus" "fuzz/corpus/$t" \
      >"$dir/logs/job$j.log" 2>&1 &
    pids+=($!)
  done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  seconds=$((SECONDS - start))
  inputs=0
  cov=0
  ft=0
  for ((j = 0; j < jobs; j++)); do
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/logs/job$j.log" | tail -1)
    inputs=$((inputs + ${n:-0}))
    c=$(grep -o 'cov: [0-9]*' "$dir/logs/job$j.log" | tail -1 | cut -d' ' -f2)
    f=$(grep -o 'ft: [0-9]*' "$dir/logs/job$j.log" | tail -1 | cut -d' ' -f2)
    ((${c:-0} > cov)) && cov=${c:-0}
    ((${f:-0} > ft)) && ft=${f:-0}
  done
  corpus=$(find "$dir/corpus" -type f | wc -l)
  found=$(find "$dir/findings" -type f | wc -l)
  printf '%-8s %12d %9d %8d %8d %8d %s\n' "$t" "$inputs" "$seconds" "$cov" "$ft" "$corpus" "$found"
  if ((failed || found)); then
    status=1
    echo "  findings in $dir/findings; logs (with each failing input's trace) in $dir/logs" >&2
  fi
done
exit $status
