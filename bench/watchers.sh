#!/usr/bin/env bash
# What stalled watchers cost the server.
#
#   bash bench/watchers.sh
#
# Starts the in-memory server (release build) on an ephemeral loopback port,
# makes AGENTS agents known (`fleet-health-load --register`), reads its
# resident memory, then opens WATCHERS watches of the whole fleet that stop
# reading at once (`fleet-health watch --all -o ndjson` into a pipe nobody
# reads: the CLI blocks on the full pipe and stops reading its stream).
# Reads the server's memory again after HOLD seconds (the watchers stalled,
# within the stall timeout) and after the stall timeout has ended them.
#
# Settings (environment): AGENTS [10000], WATCHERS [50], HOLD [10],
# STALL (--watch-stall-timeout) [20s].
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-10000}
watchers=${WATCHERS:-50}
hold=${HOLD:-10}
stall=${STALL:-20s}
cargo build -q --release -p fleet-health-server -p fleet-health-load -p fleet-health-cli
bin=target/release
work=$(mktemp -d)
# shellcheck source=bench/lib.sh
. bench/lib.sh
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; stop_target; rm -rf "$work"' EXIT
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

"$bin/fleet-health-server" --listen 127.0.0.1:0 --metrics-listen off --in-memory \
  --log-format json --watch-stall-timeout "$stall" >/dev/null 2>"$work/server.log" &
pid=$!
await_listening server "$work/server.log" 30
"$bin/fleet-health-load" --server "http://$addr" --register "$agents" --streams 64 >/dev/null
sleep 2
before=$(rss_kb "$pid")
for _ in $(seq "$watchers"); do
  # The reader never reads: `sleep` holds the pipe open and takes nothing.
  ("$bin/fleet-health" --server "http://$addr" watch --all -o ndjson | sleep 600) >/dev/null 2>&1 &
  pids+=($!)
done
sleep "$hold"
stalled=$(rss_kb "$pid")
stall_s=${stall%s}
sleep $((stall_s + 5))
after=$(rss_kb "$pid")
python3 - "$agents" "$watchers" "$before" "$stalled" "$after" "$hold" "$stall" <<'PY'
import sys
agents, watchers, before, stalled, after = map(int, sys.argv[1:6])
hold, stall = sys.argv[6:8]
print(f"| {agents} agents, {watchers} stalled watchers | RSS | per agent per watcher |")
print("| --- | ---: | ---: |")
print(f"| before the watchers | {before/1024:.1f} MiB | |")
print(f"| {hold} s after they stalled | {stalled/1024:.1f} MiB | {(stalled-before)*1024/agents/watchers:.1f} B |")
print(f"| after the stall timeout ({stall}) ended them | {after/1024:.1f} MiB | {(after-before)*1024/agents/watchers:.1f} B |")
PY
