#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60) from the
# checked-in seed corpus; new inputs go to a temporary folder, so the
# repository stays clean. Fails on any crash, leak, timeout or memory blow-up,
# and prints each target's executions per second and total executions.
#
#   bash fuzz/run.sh [SECONDS]      (needs nightly and `cargo install cargo-fuzz`)
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo +nightly fuzz build -O
summary=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$target"
  echo "-- $target (${secs} s)"
  if ! cargo +nightly fuzz run -O "$target" "$work/$target" "corpus/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
      -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -n 60 "$work/$target.log"
    echo "FAILED: fuzz target $target (reproducer in fuzz/artifacts/$target)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$target.log")
  summary+=("$target: $runs executions, $rate exec/s")
done
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#summary[@]} passed, 0 failed"
