#!/usr/bin/env bash
# End-to-end load figures: the release server on loopback, driven by
# `fleet-health simulate` on the same machine (they share its cores), beside
# the gRPC floor (bench/floor) driven the same way in the same run.
#
#   bash bench/e2e.sh [runs]        # default 3 runs per configuration
#
# For each configuration and run it starts the floor, the durable server (a
# temporary data directory) and the server in memory in turn, in an order
# that rotates from run to run, each on an ephemeral loopback port; runs the
# simulator for 10 s with 1000 agents (one stream each, 100 streams per
# connection) and records the acknowledged events/s, the ack latency p50/p99
# and the target's CPU time. Prints a Markdown table of medians, with each
# target's events/s as a ratio to the floor's in the same run (the median of
# the per-run ratios).
#
# Settings (environment): DURATION (per run, default 10s), AGENTS (default
# 1000), EPMS (events per message, default "1 10 100 1000"); DATA_ROOT as in
# bench/lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
duration=${DURATION:-10s}
agents=${AGENTS:-1000}
epms=${EPMS:-"1 10 100 1000"}
case $runs in '' | *[!0-9]* | 0) echo "runs must be a whole number above 0" >&2; exit 2 ;; esac
cargo build -q --release -p fleet-health-server -p fleet-health-cli -p fleet-health-floor
bin=target/release
cli=$bin/fleet-health
work=$(mktemp -d)
rows=$work/rows.jsonl
: >"$rows"
clk_tck=$(getconf CLK_TCK)
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'stop_target; rm -rf "$work"' EXIT

run_one() { # target epm rate agents run
  local target=$1 epm=$2 rate=$3 agents=$4 run=$5 cpu0 cpu1
  start_target "$target"
  cpu0=$(cpu_ticks "$pid")
  "$cli" simulate --server "http://$addr" --agents "$agents" --rate "$rate" \
    --events-per-message "$epm" --duration "$duration" --mix healthy=100 -o json 2>"$work/sim.err" >"$work/sim.json" ||
    { echo "simulate against $target failed:" >&2; cat "$work/sim.err" >&2; exit 1; }
  cpu1=$(cpu_ticks "$pid")
  stop_target
  python3 - "$work/sim.json" "$target" "$epm" "$rate" "$agents" "$run" "$((cpu1 - cpu0))" "$clk_tck" >>"$rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
target, epm, rate, agents, run, ticks, clk_tck = sys.argv[2:9]
print(json.dumps({"target": target, "epm": int(epm), "rate": int(rate), "agents": int(agents), "run": int(run),
  "eps": r["events_per_second"], "p50": r["ack_latency_p50_ms"], "p99": r["ack_latency_p99_ms"],
  "server_cpu_s": int(ticks) / int(clk_tck), "events": r["events_acked"], "reconnects": r["reconnects"]}))
PY
}

targets=(floor durable memory)
for epm in $epms; do
  for run in $(seq "$runs"); do
    for i in 0 1 2; do run_one "${targets[$(((i + run) % 3))]}" "$epm" 0 "$agents" "$run"; done
  done
done
# Acknowledgement latency at a fixed 100 000 events/s (durable store).
fixed=(floor durable)
for run in $(seq "$runs"); do
  for i in 0 1; do run_one "${fixed[$(((i + run) % 2))]}" 10 100000 "$agents" "$run"; done
done

python3 - "$rows" "$duration" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["epm"], r["rate"], r["agents"]), {}).setdefault(r["target"], []).append(r)
names = {"floor": "floor", "durable": "durable", "memory": "in memory"}
print("| target | events/message | offered rate | events/s acked | × floor | ack p50 ms | ack p99 ms | target CPU µs/event | reconnects |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for (epm, rate, agents), by_target in groups.items():
    floor = {r["run"]: r["eps"] for r in by_target.get("floor", [])}
    for target in ("floor", "durable", "memory"):
        rs = by_target.get(target)
        if not rs:
            continue
        med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None) if any(r[k] is not None for r in rs) else float("nan")
        cpu = statistics.median(r["server_cpu_s"] / max(r["events"], 1) * 1e6 for r in rs)
        per_run = [r["eps"] / floor[r["run"]] for r in rs if floor.get(r["run"])]
        ratio = f"{statistics.median(per_run):.2f}×" if per_run else "-"
        print(f"| {names[target]} | {epm} | {'max' if rate == 0 else rate} | {med('eps'):,.0f} | {ratio} | {med('p50'):.1f} | {med('p99'):.1f} | {cpu:.2f} | {sum(r['reconnects'] for r in rs)} |")
print(f"\n(medians of {max(len(v) for g in groups.values() for v in g.values())} runs of {sys.argv[2]}; {agents} agents; "
      "× floor is the median of each run's events/s over the floor's in the same run)")
PY
