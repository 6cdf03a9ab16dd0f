#!/usr/bin/env bash
# greylist-policyd against Debian's postgrey (same flags: delay 300, /24) and
# a do-nothing server (the limit of this machine's loopback), in one run:
# 1, 2 and 8 persistent connections, one request in flight each, random
# triplets. Prints req/s, p50/p99 latency and the ratios.
#
#   bash benches/policyd-vs-postgrey.sh [SECONDS_PER_RUN]     (default 5)
#
# Needs postgrey (apt-get install postgrey); without it, that row is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
work=$(mktemp -d)
chmod 755 "$work"   # postgrey drops to its own user
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The do-nothing server runs under `cargo bench` in a subshell: find it by name.
  pkill -f "policy_load.* dunno 127.0.0.1:20025" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --release --bin greylist-policyd
cargo bench -q --bench policy_load --no-run 2>/dev/null
load() { cargo bench -q --bench policy_load -- "$@"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; return 1; }

target/release/greylist-policyd --inet 127.0.0.1:20023 --delay 300 --ipv4cidr 24 \
  --snapshot "$work/g.snap" --snapshot-interval 0 2>"$work/policyd.log" &
pids+=($!)
load dunno 127.0.0.1:20025 >/dev/null 2>&1 &
pids+=($!)
servers=("greylist-policyd 20023" "do-nothing 20025")
if command -v postgrey >/dev/null; then
  mkdir -p "$work/postgrey" && chown postgrey "$work/postgrey" 2>/dev/null || true
  postgrey --inet=127.0.0.1:20024 --delay=300 --ipv4cidr=24 --dbdir="$work/postgrey" \
    --pidfile="$work/postgrey.pid" 2>"$work/postgrey.log" &
  pids+=($!)
  servers+=("postgrey 20024")
else
  echo "postgrey is not installed: its row is skipped (apt-get install postgrey)"
fi
for s in "${servers[@]}"; do wait_port "${s##* }"; done

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); ${secs} s per run"
printf '%-18s %5s %10s %8s %8s\n' server conns req/s p50_us p99_us
declare -A rate
for conns in 1 2 8; do
  for s in "${servers[@]}"; do
    name=${s% *}; port=${s##* }
    line=$(load load "127.0.0.1:$port" "$conns" "$secs")
    r=$(sed -n 's/.*req\/s=\([0-9]*\).*/\1/p' <<<"$line")
    p50=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$line")
    rate[$name,$conns]=$r
    printf '%-18s %5s %10s %8s %8s\n' "$name" "$conns" "$r" "$p50" "$p99"
  done
done
echo
for conns in 1 2 8; do
  g=${rate[greylist-policyd,$conns]}; d=${rate[do-nothing,$conns]}
  line="conns=$conns: greylist-policyd / do-nothing = $(awk -v a="$g" -v b="$d" 'BEGIN{printf "%.2f", a/b}')"
  if [ -n "${rate[postgrey,$conns]:-}" ]; then
    line+=", greylist-policyd / postgrey = $(awk -v a="$g" -v b="${rate[postgrey,$conns]}" 'BEGIN{printf "%.1f", a/b}')x"
  fi
  echo "$line"
done
