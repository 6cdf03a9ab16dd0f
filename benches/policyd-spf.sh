#!/usr/bin/env bash
# greylist-policyd with --spf against itself without, in one run: the
# daemon's throughput for new triplets and for passed ones, with the DNS
# answer cache warm. The DNS server is Debian's dnsmasq on loopback,
# serving an SPF record for each of the load generator's 1,000 sender
# domains that passes every address it uses (1-223.x.x.x, not all: a record
# that passes anyone keys nothing); 8 persistent connections, one request
# in flight each, random triplets (benches/policy_load.rs).
#
#   bash benches/policyd-spf.sh [SECONDS_PER_RUN]     (default 5)
#
# Needs dnsmasq (apt-get install dnsmasq-base).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
conns=8
dnsmasq=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
[ -x "$dnsmasq" ] || { echo "dnsmasq is not installed (apt-get install dnsmasq-base)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --release --bin greylist-policyd
cargo bench -q --bench policy_load --no-run 2>/dev/null
load() { cargo bench -q --bench policy_load -- load "$@"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; return 1; }

{
  printf 'no-resolv\nno-hosts\nport=20053\nlisten-address=127.0.0.1\nbind-interfaces\nlocal-ttl=3600\nlocal=/example/\n'
  for i in $(seq 0 999); do printf 'txt-record=sender%d.example,"v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/2 ip4:192.0.0.0/3 -all"\n' "$i"; done
} >"$work/dnsmasq.conf"
"$dnsmasq" --keep-in-foreground --conf-file="$work/dnsmasq.conf" --pid-file="$work/dnsmasq.pid" &
pids+=($!)
# Delay 1 s, so a triplet sent again after a pause passes.
common=(--delay 1 --no-default-whitelist --snapshot-interval 0)
target/release/greylist-policyd --inet 127.0.0.1:20026 --snapshot "$work/spf.snap" "${common[@]}" \
  --spf --dns-server 127.0.0.1:20053 2>"$work/spf.log" &
pids+=($!)
target/release/greylist-policyd --inet 127.0.0.1:20027 --snapshot "$work/plain.snap" "${common[@]}" \
  2>"$work/plain.log" &
pids+=($!)
for p in 20053 20026 20027; do wait_port "$p"; done

rate() { sed -n 's/.*req\/s=\([0-9]*\).*/\1/p' <<<"$1"; }
lat() { sed -n 's/.*p50_us=\([0-9]*\) p99_us=\([0-9]*\).*/\1 \/ \2/p' <<<"$1"; }
echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); ${secs} s per run, $conns connections"
# Warm the DNS cache: 4,000 requests over the 1,000 sender domains.
GREYLIST_LOAD_SEED=1 load 127.0.0.1:20026 "$conns" 60 500 >/dev/null
printf '%-36s %10s %14s %10s %14s %8s\n' triplets "--spf req/s" "p50 / p99 us" "off req/s" "p50 / p99 us" ratio
row() {
  local what=$1 on=$2 off=$3
  printf '%-36s %10s %14s %10s %14s %8s\n' "$what" "$(rate "$on")" "$(lat "$on")" "$(rate "$off")" "$(lat "$off")" \
    "$(awk -v a="$(rate "$on")" -v b="$(rate "$off")" 'BEGIN{printf "%.2f", a/b}')"
}
# New triplets (each one first seen), DNS cache warm.
on=$(GREYLIST_LOAD_SEED=2 load 127.0.0.1:20026 "$conns" "$secs")
off=$(GREYLIST_LOAD_SEED=2 load 127.0.0.1:20027 "$conns" "$secs")
row "new (SPF pass, cache warm)" "$on" "$off"
# Passed triplets: a fixed set sent, sent again after the delay (the
# retries pass), then measured a third time (all passed).
n=20000
for port in 20026 20027; do GREYLIST_LOAD_SEED=3 load "127.0.0.1:$port" "$conns" 120 "$n" >/dev/null; done
sleep 2
for port in 20026 20027; do GREYLIST_LOAD_SEED=3 load "127.0.0.1:$port" "$conns" 120 "$n" >/dev/null; done
on=$(GREYLIST_LOAD_SEED=3 load 127.0.0.1:20026 "$conns" 120 "$n")
off=$(GREYLIST_LOAD_SEED=3 load 127.0.0.1:20027 "$conns" 120 "$n")
row "passed (SPF pass, cache warm)" "$on" "$off"
# What the last runs were: the daemons' decision lines.
total=$((n * conns))
for log in spf plain; do
  echo "$log: of the last $total decisions, $(tail -n "$total" "$work/$log.log" | grep -c 'reason=passed') reason=passed," \
    "$(tail -n "$total" "$work/$log.log" | grep -c 'key=spf-domain domain=sender') keyed by the SPF domain"
done
