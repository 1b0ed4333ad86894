#!/usr/bin/env bash
# How soon `fleet-health remediate` acts: from an agent turning faulty (plus
# --settle) to its program starting, with AGENTS agents of which FAULTY turn
# faulty.
#
#   bash bench/remediate.sh
#
# Starts the in-memory server (release build) on an ephemeral loopback port,
# a remediator whose program appends "ID EPOCH-SECONDS" to a file, then
# `fleet-health simulate` with AGENTS agents, FAULTY of them "no data sent"
# (faulty as soon as they connect), spread over the RAMP ramp-up. When every
# faulty agent's program has started, it reads each agent's `since` from
# `list --faulty -o json` and prints p50, p99 and max of
# (program start) - (since + settle).
#
# Settings (environment): AGENTS [10000], FAULTY [500], SETTLE [5s],
# RAMP [20s], RATE [1000/s], CONCURRENCY [64].
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-10000}
faulty=${FAULTY:-500}
settle=${SETTLE:-5s}
ramp=${RAMP:-20s}
rate=${RATE:-1000/s}
concurrency=${CONCURRENCY:-64}
cargo build -q --release -p fleet-health-server -p fleet-health-cli
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
# shellcheck source=bench/lib.sh
. bench/lib.sh
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; stop_target; rm -rf "$work"' EXIT

start_target memory
server="http://$addr"
starts=$work/starts
: >"$starts"
"$bin/fleet-health" --server "$server" remediate -o ndjson \
  --settle "$settle" --rate "$rate" --concurrency "$concurrency" --cooldown 1h \
  --holder bench --storm-min 1000000 \
  --shell "echo \"\$FLEET_HEALTH_AGENT_ID \$(date +%s.%N)\" >> $starts" \
  >"$work/remediate.ndjson" 2>"$work/remediate.err" &
pids+=($!)
healthy=$((agents - faulty))
"$bin/fleet-health" --server "$server" simulate --agents "$agents" \
  --mix "healthy=$healthy,no-data-sent=$faulty" --ramp-up "$ramp" \
  --duration "$(( ${ramp%s} + ${settle%s} + 30 ))s" --prefix b- >"$work/simulate.txt" 2>/dev/null &
sim=$!
pids+=($sim)
# Every faulty agent's program started (or the simulation ended).
while kill -0 "$sim" 2>/dev/null; do
  [ "$(wc -l <"$starts")" -ge "$faulty" ] && break
  sleep 1
done
"$bin/fleet-health" --server "$server" list --faulty -o json >"$work/faulty.json" || true
python3 - "$starts" "$work/faulty.json" "$settle" "$agents" "$faulty" "$rate" "$concurrency" <<'PY'
import json, sys, datetime
starts_path, faulty_path, settle, agents, faulty, rate, conc = sys.argv[1:8]
settle_s = float(settle.rstrip("s"))
def secs(t):
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
since = {a["agent_id"]: secs(a["since"]) for a in json.load(open(faulty_path))}
delays, runs = [], {}
for line in open(starts_path):
    agent, at = line.split()
    runs[agent] = runs.get(agent, 0) + 1
    if agent in since:
        delays.append(float(at) - (since[agent] + settle_s))
delays.sort()
def pct(p):
    return delays[min(len(delays) - 1, int(round(p / 100 * (len(delays) - 1))))]
twice = sum(1 for n in runs.values() if n > 1)
print(f"| agents | faulty | acted on | twice | settle | rate | concurrency | p50 | p99 | max | min |")
print("| ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
print(f"| {agents} | {len(since)} | {len(delays)} | {twice} | {settle} | {rate} | {conc} | "
      f"{pct(50)*1000:.0f} ms | {pct(99)*1000:.0f} ms | {delays[-1]*1000:.0f} ms | {delays[0]*1000:.0f} ms |")
PY
