#!/usr/bin/env bash
# Run the fuzz targets one after another and print, per target: executions, coverage, time,
# and the crashes, timeouts (> 1 s of CPU on one input, checked by the targets themselves;
# libFuzzer's wall-clock -timeout=10 catches hangs) and out-of-memory runs (> 512 MiB) found.
#
#   bash fuzz/long-run.sh                      # every target to 10 M executions (the long run)
#   FUZZ_RUNS=1000000 bash fuzz/long-run.sh profile
#   FUZZ_SECONDS=60 bash fuzz/long-run.sh      # CI's smoke: 60 s per target
#
# Exits non-zero if any target found a crash, timeout or OOM: its input is in
# fuzz/artifacts/<target>/ (replay: see fuzz/README.md). Runs at the lowest priority (nice 19).
# New coverage goes to fuzz/corpus/<target>/ (not committed); the committed seeds in
# fuzz/seeds/<target>/ are only read.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(runtime profile import)
runs=${FUZZ_RUNS:-10000000}

# Longest input per target: a little over the largest seed, so that each execution is fast.
max_len() {
  case "$1" in
    runtime) echo 2048 ;;
    import) echo 2048 ;;
    profile) echo 1024 ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes -Z flags; the stable toolchain accepts them so
# Build once, outside the timed runs: no sanitizer (-s none: panics are what is looked for),
# with debug assertions (-a), so that arithmetic overflow panics too.
nice -n 19 cargo fuzz build -s none -a

failed=0
printf '\n%-8s %12s %8s %8s %9s %8s %9s %5s\n' target execs cov ft seconds crashes timeouts ooms
for t in "${targets[@]}"; do
  len=$(max_len "$t")
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(ls "fuzz/artifacts/$t")
  log="fuzz/artifacts/$t.log"
  limit=(-runs="$runs")
  [ -n "${FUZZ_SECONDS:-}" ] && limit=(-max_total_time="$FUZZ_SECONDS")
  start=$(date +%s)
  status=0
  nice -n 19 cargo fuzz run -s none -a "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    "${limit[@]}" -max_len="$len" -timeout=10 -rss_limit_mb=512 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
  seconds=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  new=$(comm -13 <(printf '%s\n' "$before") <(ls "fuzz/artifacts/$t"))
  count() { printf '%s\n' "$new" | grep -c "^$1-" || true; }
  crashes=$(count crash)
  timeouts=$(count timeout)
  # A target's own CPU-time check fails as a panic: libFuzzer saves it as a crash.
  if [ "$crashes" -gt 0 ] && grep -q 'TIMEOUT: one input took' "$log"; then
    crashes=$((crashes - 1))
    timeouts=$((timeouts + 1))
  fi
  ooms=$(count oom)
  printf '%-8s %12s %8s %8s %9s %8s %9s %5s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$seconds" \
    "$crashes" "$timeouts" "$ooms"
  if [ "$status" -ne 0 ] || [ $((crashes + timeouts + ooms)) -gt 0 ]; then
    failed=1
    echo "  $t FAILED (exit $status); log: $log; new artifacts: ${new:-none}" >&2
    grep -E 'ERROR|panicked|SUMMARY' "$log" | head -5 >&2 || true
  fi
done
exit $failed
