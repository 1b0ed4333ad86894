#!/usr/bin/env bash
# fleet-health against the gRPC floor, side by side in one run.
#
#   bash bench/floor.sh [runs]        # default 3 runs per configuration
#
# The floor (bench/floor: the same proto, codec and transport settings as the
# server, answering every message with an ack and doing nothing else) shows
# what this machine can do with HTTP/2 and gRPC at all. The server answers
# the messages that arrived together with one cumulative ack (the protocol's
# acks are cumulative), so a second floor does the same (`--fold-acks`), and
# each target is also given against it. For each configuration and each run,
# the two floors, the server in memory and the durable server (a fresh
# temporary data directory) are started in turn on an
# ephemeral loopback port and driven by bench/load (`fleet-health-load`); the
# order rotates from run to run so that no target always goes first. The
# server runs with --max-stream-events-per-sec 0 and --metrics-listen off.
# Prints a Markdown table of medians, each target's events/s as a ratio to
# each floor's in the same run (the median of the per-run ratios), messages
# per ack, how busy the load generator was (near 100 % of its threads: it, not the target, was the
# limit), and the targets' check.
#
# Settings (environment):
#   CONFIGS       streams x in-flight x events/message, space-separated
#                 [default: "256x16x1 256x16x100 16x16x1"]
#   CONNECTIONS   HTTP/2 connections [default: one per 100 streams]
#   DURATION      measured window per run [default: 10s]
#   WARMUP        load before the window, not counted [default: 2s]
#   LOAD_THREADS  worker threads of the load generator [default: 1]
#   DATA_ROOT     where the durable server's data directories go
#                 [default: $TMPDIR or /tmp; use a real disk, not tmpfs]
#   BASELINE      another build's fleet-health-server (say, of the commit
#                 before a change): also run it in memory and durable, as
#                 "in memory (baseline)" and "durable (baseline)", in the
#                 same rotation, so that a change is judged in one run
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
configs=${CONFIGS:-"256x16x1 256x16x100 16x16x1"}
duration=${DURATION:-10s}
warmup=${WARMUP:-2s}
threads=${LOAD_THREADS:-1}
case $runs in '' | *[!0-9]* | 0) echo "runs must be a whole number above 0" >&2; exit 2 ;; esac

cargo build -q --release -p fleet-health-server -p fleet-health-floor -p fleet-health-load
bin=target/release
work=$(mktemp -d)
rows=$work/rows.jsonl
: >"$rows"
clk_tck=$(getconf CLK_TCK)
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'stop_target; rm -rf "$work"' EXIT

run_one() { # target config run
  local target=$1 config=$2 run=$3 streams in_flight epm
  IFS=x read -r streams in_flight epm <<<"$config"
  start_target "$target"
  local cpu0 cpu1 code=0
  cpu0=$(cpu_ticks "$pid")
  "$bin/fleet-health-load" --server "http://$addr" --streams "$streams" \
    --in-flight "$in_flight" --events-per-message "$epm" ${CONNECTIONS:+--connections "$CONNECTIONS"} \
    --duration "$duration" --warmup "$warmup" --threads "$threads" \
    >"$work/load.json" 2>"$work/load.err" || code=$?
  cpu1=$(cpu_ticks "$pid")
  stop_target
  if [ "$code" != 0 ]; then
    echo "warning: $target $config run $run: $(tail -n 1 "$work/load.err")" >&2
  fi
  python3 - "$work/load.json" "$target" "$config" "$run" "$((cpu1 - cpu0))" "$clk_tck" "$code" "$threads" >>"$rows" <<'PY'
import json, sys
path, target, config, run, ticks, clk_tck, code, threads = sys.argv[1:9]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    r = None
row = {"target": target, "config": config, "run": int(run), "ok": code == "0" and r is not None}
if r is not None:
    acked = max(r["messages_acked_total"], 1)
    row.update(mps=r["messages_per_second"], eps=r["events_per_second"],
               per_ack=r.get("messages_per_ack"),
               p50=r["ack_latency_p50_ms"], p99=r["ack_latency_p99_ms"],
               cpu_us=int(ticks) / int(clk_tck) / acked * 1e6,
               load_busy=None if r.get("generator_cpu_seconds") is None or not r["seconds"]
               else r["generator_cpu_seconds"] / r["seconds"] / int(threads) * 100)
print(json.dumps(row))
PY
}

targets=(floor floor-fold memory durable)
if [ -n "${BASELINE:-}" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 2; }
  targets+=(memory-base durable-base)
fi
n=${#targets[@]}
for config in $configs; do
  case $config in *[!0-9x]* | *x*x*x* | x* | *x | *xx*) echo "bad configuration $config (say e.g. 256x16x1)" >&2; exit 2 ;; esac
  for run in $(seq "$runs"); do
    for i in $(seq 0 $((n - 1))); do
      run_one "${targets[$(((i + run) % n))]}" "$config" "$run"
    done
  done
done

python3 - "$rows" "$runs" "$duration" "$warmup" "$threads" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs, duration, warmup, threads = sys.argv[2:6]
names = {"floor": "floor", "floor-fold": "floor, acks folded", "memory": "in memory", "durable": "durable",
         "memory-base": "in memory (baseline)", "durable-base": "durable (baseline)"}
configs = list(dict.fromkeys(r["config"] for r in rows))
def med(values, fmt):
    values = [v for v in values if v is not None]
    return fmt.format(statistics.median(values)) if values else "-"
ratios = {}
print("| streams × in flight × events/msg | target | messages/s | events/s | × floor | × floor, acks folded | ack p50 ms | ack p99 ms | messages/ack | server CPU µs/msg | load generator busy | failed runs |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for config in configs:
    floor = {r["run"]: r.get("eps") for r in rows if r["config"] == config and r["target"] == "floor" and r["ok"]}
    folding = {r["run"]: r.get("eps") for r in rows if r["config"] == config and r["target"] == "floor-fold" and r["ok"]}
    for target in names:
        rs = [r for r in rows if r["config"] == config and r["target"] == target]
        if not rs:
            continue
        ok = [r for r in rs if r["ok"]]
        per_run = [r["eps"] / floor[r["run"]] for r in ok if floor.get(r["run"])]
        ratio = statistics.median(per_run) if per_run else None
        ratios[(config, target)] = ratio
        per_run_folding = [r["eps"] / folding[r["run"]] for r in ok if folding.get(r["run"])]
        ratio_folding = statistics.median(per_run_folding) if per_run_folding else None
        print(f"| {config.replace('x', ' × ')} | {names[target]} | {med([r['mps'] for r in ok], '{:,.0f}')} "
              f"| {med([r['eps'] for r in ok], '{:,.0f}')} | {'-' if ratio is None else f'{ratio:.2f}×'} "
              f"| {'-' if ratio_folding is None else f'{ratio_folding:.2f}×'} "
              f"| {med([r['p50'] for r in ok], '{:.2f}')} | {med([r['p99'] for r in ok], '{:.2f}')} "
              f"| {med([r.get('per_ack') for r in ok], '{:.2f}')} "
              f"| {med([r['cpu_us'] for r in ok], '{:.2f}')} | {med([r['load_busy'] for r in ok], '{:.0f} %')} | {len(rs) - len(ok)} |")
print(f"\n(medians of {runs} runs of {duration} after {warmup} of warm-up; load generator on {threads} thread(s); "
      "× floor is the median of each run's events/s over the floor's in the same run, "
      "× floor, acks folded the same over the floor that answers messages that came together with one ack; "
      "a load generator busy near 100 % of its threads was the limit, not the target; "
      "messages/ack above 1: the target answered messages that arrived together with one cumulative ack)\n")
for config, target, goal in [("256x16x1", "memory", 0.85), ("256x16x1", "durable", 0.65), ("256x16x100", "durable", 0.5)]:
    ratio = ratios.get((config, target))
    if ratio is None:
        continue
    verdict = "met" if ratio >= goal else "NOT met"
    print(f"- {names[target]} at {config.replace('x', ' × ')}: {ratio:.2f}× the floor (target ≥ {goal}×): {verdict}")
PY
