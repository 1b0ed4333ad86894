#!/usr/bin/env bash
# End-to-end load figures: the release server on loopback, driven by
# `fleet-health simulate` on the same machine (they share its cores).
#
#   bash bench/e2e.sh [runs]        # default 3 runs per configuration
#
# For each configuration it starts a fresh server (durable store in a
# temporary directory, or --in-memory), runs the simulator for 10 s with
# 1000 agents (one stream each, 100 streams per connection) and records the
# acknowledged events/s, the ack latency p50/p99 and the server's CPU time.
# Prints a Markdown table of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build -q --release -p fleet-health-server -p fleet-health-cli
server=target/release/fleet-health-server
cli=target/release/fleet-health
port=50961
out=$(mktemp)

run_one() { # store epm rate agents
  local store=$1 epm=$2 rate=$3 agents=$4 dir
  dir=$(mktemp -d)
  local flags=(--listen "127.0.0.1:$port" --metrics-listen off --max-stream-events-per-sec 0)
  if [ "$store" = durable ]; then flags+=(--data-dir "$dir"); else flags+=(--in-memory); fi
  "$server" "${flags[@]}" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do "$cli" --server "http://127.0.0.1:$port" summary >/dev/null 2>&1 && break; sleep 0.1; done
  local cpu0 cpu1
  cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  "$cli" simulate --server "http://127.0.0.1:$port" --agents "$agents" --rate "$rate" \
    --events-per-message "$epm" --duration 10s --mix healthy=100 -o json 2>/dev/null >"$out.json"
  cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 - "$out.json" "$store" "$epm" "$rate" "$agents" "$((cpu1 - cpu0))" >>"$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
store, epm, rate, agents, ticks = sys.argv[2:7]
print(json.dumps({"store": store, "epm": int(epm), "rate": int(rate), "agents": int(agents),
  "eps": r["events_per_second"], "p50": r["ack_latency_p50_ms"], "p99": r["ack_latency_p99_ms"],
  "server_cpu_s": int(ticks) / 100, "events": r["events_acked"], "reconnects": r["reconnects"]}))
PY
}

for store in durable memory; do
  for epm in 1 10 100 1000; do
    for _ in $(seq "$runs"); do run_one "$store" "$epm" 0 1000; done
  done
done
# Acknowledgement latency at a fixed 100 000 events/s (durable store).
for _ in $(seq "$runs"); do run_one durable 10 100000 1000; done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["store"], r["epm"], r["rate"], r["agents"]), []).append(r)
print("| store | events/message | offered rate | events/s acked | ack p50 ms | ack p99 ms | server CPU µs/event | reconnects |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for (store, epm, rate, agents), rs in groups.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    cpu = statistics.median(r["server_cpu_s"] / max(r["events"], 1) * 1e6 for r in rs)
    print(f"| {store} | {epm} | {'max' if rate == 0 else rate} | {med('eps'):,.0f} | {med('p50'):.1f} | {med('p99'):.1f} | {cpu:.2f} | {sum(r['reconnects'] for r in rs)} |")
print(f"\n(medians of {len(next(iter(groups.values())))} runs; {agents} agents)")
PY
rm -f "$out" "$out.json"
