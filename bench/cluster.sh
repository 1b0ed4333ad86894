#!/usr/bin/env bash
# Several servers over PostgreSQL against one embedded server, in the same
# run on this machine: events acknowledged per second, ack latency, changes
# per commit; then a node's failover time.
#
#   bash bench/cluster.sh [runs]      # default 3 runs per target
#
# It starts a PostgreSQL primary with a synchronous standby (fsync on; both
# in a temporary directory, on loopback ports; Debian's postgresql), then,
# for each run, in an order that rotates from run to run: the embedded
# durable server, and clusters of 1, 2 and 3 nodes (the tables dropped
# before each). fleet-health-load drives STREAMS agent streams (default
# 600), EPM events per message (default 10), for DURATION (default 10s):
# one load process per node, each with its share of the streams and agents
# of its own, so that most streams reach a node that passes them on (as
# behind a load balancer). Prints a Markdown table of medians and each
# target's events/s as a ratio to the embedded server's in the same run.
#
# Then the failover: three nodes, `kill -9` of one, and the time until every
# shard is held again (`fleet-health cluster status`) and until every agent
# (thirty, about a third of them the dead node's) is acknowledged again
# through a surviving node, with the lease at LEASE (default 4s).
# FAILOVER_ONLY=1 runs only that part.
#
# Everything shares this machine's cores (the database, its standby, the
# nodes and the load): the ratios are what the figures say, not the rates.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
duration=${DURATION:-10s}
streams=${STREAMS:-600}
epm=${EPM:-10}
lease=${LEASE:-4s}
case $runs in '' | *[!0-9]* | 0) echo "runs must be a whole number above 0" >&2; exit 2 ;; esac
cargo build -q --release -p fleet-health-server -p fleet-health-cli -p fleet-health-load
bin=target/release
work=$(mktemp -d)
rows=$work/rows.jsonl
: >"$rows"

pgbin=${FLEET_HEALTH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$pgbin/initdb" ] || { echo "PostgreSQL not found (apt-get install postgresql, or FLEET_HEALTH_PG_BIN)" >&2; exit 1; }
as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(runuser -u postgres --)
  chown postgres: "$work"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
sb_port=$(free_port)
url="postgres://fleet@127.0.0.1:$pg_port/postgres"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/standby" -m immediate stop >/dev/null 2>&1 || true
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== PostgreSQL: a primary on $pg_port, a synchronous standby on $sb_port" >&2
"${as_pg[@]}" "$pgbin/initdb" -D "$work/primary" -U fleet --auth=trust -E UTF8 --locale=C >/dev/null
cat >>"$work/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$work'
wal_level = replica
max_wal_senders = 4
max_connections = 200
synchronous_commit = on
EOF
echo "host replication fleet 127.0.0.1/32 trust" >>"$work/primary/pg_hba.conf"
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
"${as_pg[@]}" "$pgbin/pg_basebackup" -D "$work/standby" -R -X stream \
  -d "host=127.0.0.1 port=$pg_port user=fleet application_name=s1" >/dev/null
cat >>"$work/standby/postgresql.conf" <<EOF
port = $sb_port
EOF
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/standby" -l "$work/standby.log" -w start >/dev/null
psql_() { "${as_pg[@]}" "$pgbin/psql" -q -h 127.0.0.1 -p "$pg_port" -U fleet -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql_ -c "ALTER SYSTEM SET synchronous_standby_names = 's1'" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 100); do
  state=$(psql_ -At -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = 's1'")
  [ "$state" = sync ] && break
  sleep 0.1
done
[ "$state" = sync ] || { echo "the standby did not become synchronous" >&2; exit 1; }

start_server() { # LOG ARGS...: sets `addr`, appends to `pids`
  local log=$1
  shift
  "$bin/fleet-health-server" --log-format json --max-stream-events-per-sec 0 "$@" >/dev/null 2>"$log" &
  pids+=($!)
  for _ in $(seq 300); do
    addr=$(sed -n 's/.*"grpc":"\(127\.0\.0\.1:[0-9]*\)".*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "a server exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "a server did not listen:" >&2; cat "$log" >&2; exit 1
}

stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}

# start_cluster N: N nodes, every shard held; sets `nodes` (their addresses)
# and `metrics` (their metrics addresses).
start_cluster() {
  local n=$1 i port mport
  psql_ -c "DROP TABLE IF EXISTS fh_meta, fh_nodes, fh_shards, fh_agents" >/dev/null
  nodes=()
  metrics=()
  for i in $(seq "$n"); do
    port=$(free_port)
    mport=$(free_port)
    start_server "$work/node$i.log" --cluster "$url" --node-id "n$i" --listen "127.0.0.1:$port" \
      --advertise "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --cluster-lease "$lease"
    nodes+=("$addr")
    metrics+=("127.0.0.1:$mport")
  done
  for _ in $(seq 300); do
    if "$bin/fleet-health" --server "http://${nodes[0]}" cluster status -o json 2>/dev/null |
      python3 -c "import json,sys; v=json.load(sys.stdin); n=[x for x in v['nodes'] if x['live']]; sys.exit(0 if v['unowned']==0 and len(n)==$n and all(x['shards']>0 for x in n) else 1)"; then
      # Each node reads where every shard is served once a round (a quarter
      # of a lease): two rounds, and every node knows.
      sleep "$(python3 -c "print(2 * float('${lease%s}') / 4 + 0.5)")"
      return 0
    fi
    sleep 0.2
  done
  echo "the cluster of $n did not settle" >&2; exit 1
}

# load TARGETS...: one load process per address, streams shared out; prints
# one JSON row (events/s summed; latency: the median of the processes' p50,
# the largest p99).
load() {
  local n=$# i=0 a
  local share=$((streams / n))
  local outs=()
  for a in "$@"; do
    i=$((i + 1))
    "$bin/fleet-health-load" --server "http://$a" --streams "$share" --in-flight 4 \
      --events-per-message "$epm" --duration "$duration" --warmup 2s --agent-prefix "load$i" \
      >"$work/load$i.json" 2>"$work/load$i.err" &
    outs+=("$!")
  done
  for p in "${outs[@]}"; do wait "$p" || { cat "$work"/load*.err >&2; exit 1; }; done
  python3 - "$work" "$n" <<'PY'
import json, statistics, sys
work, n = sys.argv[1], int(sys.argv[2])
rs = [json.load(open(f"{work}/load{i}.json")) for i in range(1, n + 1)]
print(json.dumps({
  "eps": sum(r["events_per_second"] for r in rs),
  "p50": statistics.median(r["ack_latency_p50_ms"] for r in rs),
  "p99": max(r["ack_latency_p99_ms"] for r in rs),
}))
PY
}

# store_figures SECONDS METRICS...: records written per group commit, and
# records written per second over SECONDS, over the servers' /metrics.
store_figures() {
  local secs=$1 commits=0 records=0 m c r
  shift
  for m in "$@"; do
    c=$("$bin/fleet-health-server" probe "http://$m/metrics" 2>/dev/null | awk '/^fleet_health_store_commits_total /{print $2}')
    r=$("$bin/fleet-health-server" probe "http://$m/metrics" 2>/dev/null | awk '/^fleet_health_store_records_total /{print $2}')
    commits=$((commits + ${c:-0}))
    records=$((records + ${r:-0}))
  done
  python3 -c "print(round($records / max($commits, 1), 1), round($records / $secs))"
}

run_one() { # target run
  local target=$1 run=$2 row figures t0 t1
  case $target in
    embedded)
      local mport data
      mport=$(free_port)
      data=$(mktemp -d "${TMPDIR:-/tmp}/fleet-health-bench.XXXXXX")
      start_server "$work/embedded.log" --listen 127.0.0.1:0 --data-dir "$data" --metrics-listen "127.0.0.1:$mport"
      t0=$(date +%s.%N)
      row=$(load "$addr")
      t1=$(date +%s.%N)
      figures=$(store_figures "$(python3 -c "print($t1 - $t0)")" "127.0.0.1:$mport")
      stop_all
      rm -rf "$data"
      ;;
    nodes*)
      start_cluster "${target#nodes}"
      t0=$(date +%s.%N)
      row=$(load "${nodes[@]}")
      t1=$(date +%s.%N)
      figures=$(store_figures "$(python3 -c "print($t1 - $t0)")" "${metrics[@]}")
      stop_all
      ;;
  esac
  python3 -c "import json,sys; r=json.loads(sys.argv[1]); c, w = sys.argv[4].split(); r.update(target=sys.argv[2], run=int(sys.argv[3]), cpc=float(c), rows=float(w)); print(json.dumps(r))" \
    "$row" "$target" "$run" "$figures" >>"$rows"
  echo "$target run $run: $row, (changes per commit, records/s) $figures" >&2
}

if [ -z "${FAILOVER_ONLY:-}" ]; then
targets=(embedded nodes1 nodes2 nodes3)
for run in $(seq "$runs"); do
  for i in 0 1 2 3; do run_one "${targets[$(((i + run) % 4))]}" "$run"; done
done

python3 - "$rows" "$streams" "$epm" "$duration" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
streams, epm, duration = sys.argv[2:5]
print(f"{streams} streams, {epm} events per message, {duration} per run; medians of {max(r['run'] for r in rows)} runs\n")
print("| target | events/s | ratio to embedded | ack p50 ms | ack p99 ms | changes per commit | records written/s |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
base = {r["run"]: r["eps"] for r in rows if r["target"] == "embedded"}
for t in ["embedded", "nodes1", "nodes2", "nodes3"]:
    rs = [r for r in rows if r["target"] == t]
    ratios = [r["eps"] / base[r["run"]] for r in rs if base.get(r["run"])]
    name = {"embedded": "one embedded server", "nodes1": "cluster, 1 node", "nodes2": "cluster, 2 nodes", "nodes3": "cluster, 3 nodes"}[t]
    print(f"| {name} | {statistics.median(r['eps'] for r in rs):,.0f} | {statistics.median(ratios):.2f} | "
          f"{statistics.median(r['p50'] for r in rs):.1f} | {statistics.median(r['p99'] for r in rs):.1f} | "
          f"{statistics.median(r['cpc'] for r in rs):.0f} | {statistics.median(r['rows'] for r in rs):,.0f} |")
PY
fi

echo "== failover: 3 nodes (lease $lease), kill -9 of one, until every shard is held again and every agent acknowledged again" >&2
start_cluster 3
# Thirty agents, known before: about a third of them are the victim's.
for i in $(seq 30); do
  "$bin/fleet-health" --server "http://${nodes[0]}" report --agent "fo-$i" heartbeat >/dev/null
done
victim=${pids[1]}
started=$(date +%s.%N)
kill -KILL "$victim"
held=
for _ in $(seq 600); do
  if "$bin/fleet-health" --server "http://${nodes[0]}" cluster status -o json 2>/dev/null |
    python3 -c "import json,sys; v=json.load(sys.stdin); n=[x for x in v['nodes'] if x['shards']>0]; sys.exit(0 if v['unowned']==0 and all(x['node']!='n2' for x in n) else 1)"; then
    held=$(date +%s.%N)
    break
  fi
  sleep 0.1
done
# Each agent reports again through a surviving node until it is
# acknowledged (as a reporter retries): the last one is the failover's end.
pending=$(seq 30)
while [ -n "$pending" ]; do
  left=
  for i in $pending; do
    "$bin/fleet-health" --server "http://${nodes[0]}" --timeout 2s report --agent "fo-$i" heartbeat >/dev/null 2>&1 ||
      left="$left $i"
  done
  pending=$left
  [ -n "$pending" ] && sleep 0.1
  if python3 -c "import sys; sys.exit(0 if float('$(date +%s.%N)') - float('$started') > 60 else 1)"; then
    echo "agents not acknowledged 60 s after the kill:$pending" >&2; exit 1
  fi
done
acked=$(date +%s.%N)
python3 -c "print(f'\nfailover (lease $lease), kill -9 of a node: every shard held again after {float(\"$held\") - float(\"$started\"):.1f} s; every agent acknowledged again after {float(\"$acked\") - float(\"$started\"):.1f} s')"
stop_all
