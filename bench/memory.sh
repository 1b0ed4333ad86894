#!/usr/bin/env bash
# Memory per known agent, measured on the real server process.
#
#   bash bench/memory.sh
#   AGENTS=100000 STORES=durable EXTRAS= bash bench/memory.sh   # a quick check
#
# For each N in AGENTS and each store in STORES, starts
# target/release/fleet-health-server on an ephemeral loopback port (durable:
# in a fresh data directory under DATA_ROOT), reads its resident memory
# (VmRSS) once it listens, makes N distinct agents known with
# `fleet-health-load --register N` (each agent one short stream: Hello, a
# `starting` event, its Ack, close; STREAMS of them at a time), waits until
# `fleet-health summary` counts N agents and the process's memory and data
# file have stopped moving, and reads its memory again: VmRSS, its peak
# (VmHWM), and from /proc/PID/smaps_rollup the anonymous part (the heap: the
# registry, the store's cache, what the allocator holds) apart from the mapped
# binary; and, through gdb, glibc's own count of the heap (malloc_stats():
# bytes in live allocations, and bytes its arenas hold from the kernel). A
# durable server is then stopped (SIGTERM) and started again on the
# same data directory; its memory once it has loaded the N agents is the
# "after restart" figure. Per-agent figures are (after - before) / N, the
# before being the same fresh process's resident memory.
#
# Then, at the largest N, the durable server twice more: with
# --store-cache-mb 64 instead of the default 16 (the cache's share), and with
# MALLOC_ARENA_MAX=2 in its environment (glibc's per-thread arenas: the
# allocator's share). And, unless FOOTPRINT=0, the in-process `footprint`
# example at the largest N: the registry's own bytes per agent, without a
# server, a store or gRPC around it.
#
# Prints a Markdown table on stdout (progress on stderr); OUT=path keeps every
# reading as JSON lines.
#
# Settings (environment):
#   AGENTS       agent counts, space-separated [default: "100000 1000000"]
#   STORES       durable and/or memory [default: "durable memory"]
#   EXTRAS       extra durable runs at the largest N: cache64, arena2
#                [default: "cache64 arena2"; empty for none]
#   STREAMS      agents registering at once [default: 256]
#   CONNECTIONS  HTTP/2 connections they share [default: 4]
#   FOOTPRINT    1: also run the in-process footprint example [default: 1]
#   DATA_ROOT    where data directories go [default: $TMPDIR or /tmp; use a
#                real disk, not tmpfs: a tmpfs data file is counted in memory]
#   OUT          also write every reading as JSON lines here
#   GDB          1: read glibc's malloc_stats() from the server through gdb
#                (needs ptrace rights over it); 0: not; auto: if gdb exists
#                [default: auto]
#
# The server runs with --metrics-listen off and --max-agents at least N; every
# other setting is its default (history 32, silence window 5m, ...). A run at
# 1 M agents takes a few minutes and, durable, about 1 GiB of disk. Run it on
# an otherwise idle machine: resident memory is the kernel's count of the
# process's pages, and a busy machine moves when the allocator returns them.
set -euo pipefail
cd "$(dirname "$0")/.."
agents_list=${AGENTS:-"100000 1000000"}
stores=${STORES:-"durable memory"}
extras=${EXTRAS-"cache64 arena2"}
streams=${STREAMS:-256}
connections=${CONNECTIONS:-4}
footprint=${FOOTPRINT:-1}
for n in $agents_list; do
  case $n in '' | *[!0-9]* | 0) echo "AGENTS must be whole numbers above 0, not $n" >&2; exit 2 ;; esac
done
for s in $stores; do
  case $s in durable | memory) ;; *) echo "STORES: durable or memory, not $s" >&2; exit 2 ;; esac
done
for e in $extras; do
  case $e in cache64 | arena2) ;; *) echo "EXTRAS: cache64 or arena2, not $e" >&2; exit 2 ;; esac
done
case ${GDB:-auto} in
  auto) use_gdb=0; command -v gdb >/dev/null && use_gdb=1 ;;
  0 | 1) use_gdb=$GDB ;;
  *) echo "GDB must be auto, 0 or 1" >&2; exit 2 ;;
esac
largest=0
for n in $agents_list; do [ "$n" -gt "$largest" ] && largest=$n; done

cargo build -q --release -p fleet-health-server -p fleet-health-load -p fleet-health-cli
bin=target/release
work=$(mktemp -d)
rows=$work/rows.jsonl
: >"$rows"
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'stop_target; rm -rf "$work"' EXIT

say() { echo "memory: $*" >&2; }

# start_server DATA_DIR|- ENV... -- FLAGS...: like lib.sh's start_target, but
# on a data directory of our choosing (kept over a restart), with extra flags
# and environment. Sets `pid` and `addr`.
start_server() {
  local dir=$1 log=$work/server.log
  shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  local cmd=("$bin/fleet-health-server" --listen 127.0.0.1:0 --metrics-listen off
    --log-format json "$@")
  if [ "$dir" = - ]; then cmd+=(--in-memory); else cmd+=(--data-dir "$dir"); fi
  env ${envs[@]+"${envs[@]}"} "${cmd[@]}" >/dev/null 2>"$log" &
  pid=$!
  # A durable server says where it listens once its store is loaded (at
  # most 10 min for a large one).
  await_listening "the server" "$log" 600
}

# Stops the server and keeps its data directory.
stop_server() {
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "the server did not stop within 60 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  pid=
}

kib() { awk -v k="$2" '$1 == k":" {print $2}' "$1"; }

# The allocator's view, as JSON (or null): glibc's malloc_stats(), called in
# the server by gdb, writes to its stderr (our log) the bytes its arenas hold
# from the kernel ("system") and the bytes of live allocations ("in use",
# chunk headers included), over all arenas and mmap'd chunks.
malloc_view() {
  [ "$use_gdb" = 1 ] || { echo null; return; }
  local log=$work/server.log lines
  lines=$(wc -l <"$log")
  if ! timeout 60 gdb -p "$pid" -batch -nx -ex 'call (void) malloc_stats()' -ex detach \
    >"$work/gdb.out" 2>&1; then
    say "gdb could not call malloc_stats (see below); no allocator view"; tail -n 3 "$work/gdb.out" >&2
    echo null; return
  fi
  tail -n +"$((lines + 1))" "$log" | python3 -c '
import json, re, sys
text = sys.stdin.read()
total = text.rsplit("Total (incl. mmap):", 1)
if len(total) < 2:
    print("null"); sys.exit()
num = lambda key, t: int(re.search(key + r"\s*=\s*(\d+)", t).group(1))
print(json.dumps({"system": num("system bytes", total[1]), "in_use": num("in use bytes", total[1]),
                  "arenas": len(re.findall(r"^Arena \d+:", total[0], re.M))}))'
}

# Memory of the server, as JSON: VmRSS, VmHWM and smaps_rollup's Anonymous,
# in bytes, and the allocator's view.
memory() {
  local status=/proc/$pid/status rollup=/proc/$pid/smaps_rollup rss hwm anon=null malloc
  malloc=$(malloc_view)
  rss=$(kib "$status" VmRSS)
  hwm=$(kib "$status" VmHWM)
  if [ -r "$rollup" ]; then anon=$(($(kib "$rollup" Anonymous) * 1024)); fi
  echo "{\"rss\":$((rss * 1024)),\"hwm\":$((hwm * 1024)),\"anon\":$anon,\"malloc\":$malloc}"
}

# The number of agents the server knows.
known() {
  "$bin/fleet-health" --server "http://$addr" summary -o json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo -1
}

# Waits (at most 2 min) until the server knows N agents.
await_known() {
  local n=$1 k=-1
  for _ in $(seq 240); do
    k=$(known)
    [ "$k" = "$n" ] && return 0
    sleep 0.5
  done
  echo "the server knows $k agents, not $n, after 2 min" >&2; exit 1
}

data_bytes() { # DIR: apparent size of every file in it
  if [ "$1" = - ]; then echo 0; else find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; fi
}

# Waits until resident memory and the data directory hold still for 2 s
# (sampled every 0.5 s; at most 60 s).
await_quiet() {
  local dir=$1 last= now
  local still=0
  for _ in $(seq 120); do
    now="$(kib "/proc/$pid/status" VmRSS) $(data_bytes "$dir")"
    if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; fi
    [ "$still" -ge 4 ] && return 0
    last=$now
    sleep 0.5
  done
  say "memory or data still moving after 60 s; reading them anyway"
}

measure() { # N STORE VARIANT
  local n=$1 store=$2 variant=$3 dir=- flags=() envs=()
  local max_agents=$((n > 1000000 ? n : 1000000))
  flags+=(--max-agents "$max_agents")
  case $variant in
    default) ;;
    cache64) flags+=(--store-cache-mb 64) ;;
    arena2) envs+=(MALLOC_ARENA_MAX=2) ;;
  esac
  if [ "$store" = durable ]; then
    dir=$(mktemp -d "${DATA_ROOT:-${TMPDIR:-/tmp}}/fleet-health-memory.XXXXXX")
    data=$dir # lib.sh's stop_target removes it at exit
  fi
  say "$n agents, $store, $variant: starting the server"
  start_server "$dir" ${envs[@]+"${envs[@]}"} -- "${flags[@]}"
  await_quiet "$dir"
  local before
  before=$(memory)
  say "registering $n agents ($streams at a time)"
  "$bin/fleet-health-load" --server "http://$addr" --register "$n" \
    --streams "$streams" --connections "$connections" --agent-prefix agent \
    --setup-timeout 60s --threads 1 >"$work/register.json"
  await_known "$n"
  await_quiet "$dir"
  local after bytes
  after=$(memory)
  bytes=$(data_bytes "$dir")
  local restarted=null restart_bytes=null restart_seconds=null
  if [ "$store" = durable ]; then
    say "restarting on the same data directory"
    stop_server
    local t0 t1
    t0=$(date +%s.%N)
    start_server "$dir" ${envs[@]+"${envs[@]}"} -- "${flags[@]}"
    await_known "$n"
    t1=$(date +%s.%N)
    await_quiet "$dir"
    restarted=$(memory)
    restart_bytes=$(data_bytes "$dir")
    restart_seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  fi
  stop_target
  python3 - "$n" "$store" "$variant" "$before" "$after" "$restarted" "$bytes" \
    "$restart_bytes" "$restart_seconds" "$work/register.json" >>"$rows" <<'PY'
import json, sys
n, store, variant, before, after, restarted, data, rdata, rsecs, reg = sys.argv[1:11]
reg = json.load(open(reg))
print(json.dumps({
    "agents": int(n), "store": store, "variant": variant,
    "before": json.loads(before), "after": json.loads(after),
    "restarted": json.loads(restarted), "data_bytes": int(data),
    "data_bytes_after_restart": json.loads(rdata),
    "restart_seconds": json.loads(rsecs),
    "agents_per_second": reg["agents_per_second"],
}))
PY
  say "$(tail -n 1 "$rows")"
}

for n in $agents_list; do
  for store in $stores; do measure "$n" "$store" default; done
done
for extra in $extras; do measure "$largest" durable "$extra"; done

footprint_json=null
if [ "$footprint" = 1 ]; then
  say "the footprint example at $largest agents"
  cargo build -q --release -p fleet-health-server --example footprint
  footprint_json=$(target/release/examples/footprint "$largest" | tail -n 1)
  echo "$footprint_json" >"$work/footprint.json"
fi

[ -n "${OUT:-}" ] && cp "$rows" "$OUT"

python3 - "$rows" "$work/footprint.json" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
mib = lambda b: f"{b / 2**20:.1f}"
per = lambda a, b, n: f"{(a - b) / n:.0f}"
def heap(after, before, n, key):
    a, b = after.get("malloc"), before.get("malloc")
    if not a or not b:
        return "—"
    if key == "free":
        return per(a["system"] - a["in_use"], b["system"] - b["in_use"], n)
    return per(a[key], b[key], n)
print("| agents | store | variant | RSS before MiB | RSS after MiB | B/agent RSS | B/agent anon | "
      "B/agent heap in use | B/agent heap free | arenas | peak B/agent | after restart B/agent "
      "(in use) | data file B/agent | agents/s |")
print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    n, b, a, re = r["agents"], r["before"], r["after"], r["restarted"]
    anon = per(a["anon"], b["anon"], n) if a["anon"] is not None and b["anon"] is not None else "—"
    restart = "—"
    if re:
        restart = per(re["rss"], b["rss"], n)
        if re.get("malloc") and b.get("malloc"):
            restart += f" ({heap(re, b, n, 'in_use')})"
    data = f"{r['data_bytes'] / n:.0f}" if r["store"] == "durable" else "—"
    variant = {"default": "default", "cache64": "--store-cache-mb 64",
               "arena2": "MALLOC_ARENA_MAX=2"}[r["variant"]]
    arenas = a["malloc"]["arenas"] if a.get("malloc") else "—"
    print(f"| {n:,} | {r['store']} | {variant} | {mib(b['rss'])} | {mib(a['rss'])} | "
          f"{per(a['rss'], b['rss'], n)} | {anon} | {heap(a, b, n, 'in_use')} | "
          f"{heap(a, b, n, 'free')} | {arenas} | {per(a['hwm'], b['rss'], n)} | {restart} | "
          f"{data} | {r['agents_per_second']:,.0f} |")
print()
print("Per agent: (after - before) / agents; before = the same fresh process once it listens.")
print("RSS: VmRSS. anon: smaps_rollup Anonymous (the heap and caches, not the mapped binary).")
print("heap in use / free: glibc malloc_stats(): bytes in live allocations (chunk headers")
print("included) / bytes its arenas hold from the kernel but not in use (freed, not returned).")
print("peak: VmHWM after registration, less before. after restart: VmRSS of the restarted")
print("server once it knows every agent, less the fresh server's before (heap in use likewise).")
print("data file: apparent size of the data directory after registration.")
for r in rows:
    if r["restart_seconds"] is not None:
        print(f"- {r['agents']:,} durable ({r['variant']}): restart to all agents known in "
              f"{r['restart_seconds']:.1f} s; data file after restart "
              f"{r['data_bytes_after_restart'] / r['agents']:.0f} B/agent")
path = sys.argv[2]
if os.path.exists(path):
    print()
    print(f"footprint example (in process, registry only): {open(path).read().strip()}")
PY
