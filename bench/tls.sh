#!/usr/bin/env bash
# mTLS against plaintext, side by side in one run.
#
#   bash bench/tls.sh [runs]          # default 3 runs per configuration
#
# Makes a CA, a server certificate and an admin's client certificate with
# `fleet-health pki` (an admin may report for every load-N agent), then for
# each configuration and run starts the in-memory server twice on an
# ephemeral loopback port (no rate limits: --max-stream-events-per-sec 0
# --max-events-per-sec-per-identity 0), once plaintext and once with TLS 1.3 and client
# certificates (--tls-cert, --tls-key, --client-ca), alternating which goes
# first, and drives it with bench/load (`fleet-health-load`, the same load,
# with --ca/--cert/--key for TLS). Prints a Markdown table of medians and each
# run's mTLS events/s as a ratio to plaintext's in the same run.
#
# Then:
#   - full connection set-ups per second (TCP, TLS 1.3 handshake with the
#     client certificate verified, HTTP/2 settings), HANDSHAKES of them,
#     HS_CONCURRENCY at a time, against plaintext set-ups (TCP and HTTP/2);
#   - memory per connected agent: AGENTS agents each on its own connection
#     and stream, sending slowly; the server's resident memory while they are
#     connected, minus its memory before, over AGENTS; plaintext and mTLS.
#
# Settings (environment):
#   CONFIGS         streams x in-flight x events/message [default: "256x16x1 256x16x100"]
#   DURATION        measured window per run [default: 10s]
#   WARMUP          load before the window [default: 2s]
#   LOAD_THREADS    worker threads of the load generator [default: 1]
#   HANDSHAKES      connection set-ups to time [default: 3000]
#   HS_CONCURRENCY  set-ups at once [default: 32]
#   AGENTS          connected agents for the memory figure [default: 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
configs=${CONFIGS:-"256x16x1 256x16x100"}
duration=${DURATION:-10s}
warmup=${WARMUP:-2s}
threads=${LOAD_THREADS:-1}
handshakes=${HANDSHAKES:-3000}
hs_concurrency=${HS_CONCURRENCY:-32}
agents=${AGENTS:-2000}
case $runs in '' | *[!0-9]* | 0) echo "runs must be a whole number above 0" >&2; exit 2 ;; esac

cargo build -q --release -p fleet-health-server -p fleet-health-load -p fleet-health-cli
bin=target/release
work=$(mktemp -d)
rows=$work/rows.jsonl
: >"$rows"
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'stop_target; rm -rf "$work"' EXIT

pki=$work/pki
"$bin/fleet-health" pki init "$pki" --san localhost --san 127.0.0.1 >/dev/null
"$bin/fleet-health" pki issue operator load --role admin --dir "$pki" >/dev/null
tls_server=(--tls-cert "$pki/server.pem" --tls-key "$pki/server.key" --client-ca "$pki/ca.pem")
tls_client=(--ca "$pki/ca.pem" --cert "$pki/admin-load.pem" --key "$pki/admin-load.key")

start() { # plain|mtls
  local log=$work/target.log
  local cmd=("$bin/fleet-health-server" --listen 127.0.0.1:0 --metrics-listen off
    --max-stream-events-per-sec 0 --max-events-per-sec-per-identity 0 --log-format json --in-memory)
  [ "$1" = mtls ] && cmd+=("${tls_server[@]}")
  "${cmd[@]}" >/dev/null 2>"$log" &
  pid=$!
  await_listening "$1" "$log" 30
}

url() { if [ "$1" = mtls ]; then echo "https://$addr"; else echo "http://$addr"; fi; }
client() { if [ "$1" = mtls ]; then echo "${tls_client[@]}"; fi; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run_one() { # target config run
  local target=$1 config=$2 run=$3 streams in_flight epm code=0
  IFS=x read -r streams in_flight epm <<<"$config"
  start "$target"
  # shellcheck disable=SC2046
  "$bin/fleet-health-load" --server "$(url "$target")" $(client "$target") --streams "$streams" \
    --in-flight "$in_flight" --events-per-message "$epm" --duration "$duration" \
    --warmup "$warmup" --threads "$threads" >"$work/load.json" 2>"$work/load.err" || code=$?
  stop_target
  [ "$code" != 0 ] && echo "warning: $target $config run $run: $(tail -n 1 "$work/load.err")" >&2
  python3 - "$work/load.json" "$target" "$config" "$run" "$code" >>"$rows" <<'PY'
import json, sys
path, target, config, run, code = sys.argv[1:6]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    r = None
row = {"target": target, "config": config, "run": int(run), "ok": code == "0" and r is not None}
if r is not None:
    row.update(eps=r["events_per_second"], p50=r["ack_latency_p50_ms"], p99=r["ack_latency_p99_ms"])
print(json.dumps(row))
PY
}

for run in $(seq "$runs"); do
  for config in $configs; do
    if [ $((run % 2)) = 1 ]; then order="plain mtls"; else order="mtls plain"; fi
    for target in $order; do
      echo "run $run/$runs: $target $config" >&2
      run_one "$target" "$config" "$run"
    done
  done
done

python3 - "$rows" "$runs" "$duration" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs, duration, warmup = sys.argv[2:5]
print("| streams × in flight × events/msg | transport | events/s | × plaintext | ack p50 ms | ack p99 ms | failed runs |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
goals = {"256x16x1": 0.85, "256x16x100": 0.95}
verdicts = []
for config in dict.fromkeys(r["config"] for r in rows):
    plain = {r["run"]: r["eps"] for r in rows if r["config"] == config and r["target"] == "plain" and r["ok"]}
    for target in ("plain", "mtls"):
        rs = [r for r in rows if r["config"] == config and r["target"] == target]
        ok = [r for r in rs if r["ok"]]
        ratios = [r["eps"] / plain[r["run"]] for r in ok if plain.get(r["run"])]
        ratio = statistics.median(ratios) if ratios else None
        med = lambda k, f: f.format(statistics.median([r[k] for r in ok])) if ok else "-"
        print(f"| {config.replace('x', ' × ')} | {'mTLS' if target == 'mtls' else 'plaintext'} | {med('eps', '{:,.0f}')} "
              f"| {'-' if ratio is None else f'{ratio:.2f}×'} | {med('p50', '{:.2f}')} | {med('p99', '{:.2f}')} | {len(rs) - len(ok)} |")
        if target == "mtls" and ratio is not None and config in goals:
            verdicts.append(f"- mTLS at {config.replace('x', ' × ')}: {ratio:.2f}× plaintext (goal ≥ {goals[config]}×): "
                            + ("met" if ratio >= goals[config] else "NOT met"))
print(f"\n(medians of {runs} runs of {duration} after {warmup} of warm-up; × plaintext is the median of each run's ratio)\n")
print("\n".join(verdicts))
PY

echo >&2 "connection set-ups: $handshakes, $hs_concurrency at a time"
for target in plain mtls; do
  start "$target"
  # shellcheck disable=SC2046
  "$bin/fleet-health-load" --server "$(url "$target")" $(client "$target") --handshakes "$handshakes" \
    --streams "$hs_concurrency" --threads "$threads" >"$work/hs-$target.json"
  stop_target
done
python3 - "$work/hs-plain.json" "$work/hs-mtls.json" "$handshakes" "$hs_concurrency" <<'PY'
import json, sys
plain, mtls = (json.load(open(p)) for p in sys.argv[1:3])
print(f"\n| connection set-ups | per second | failed |\n| --- | ---: | ---: |")
print(f"| plaintext (TCP + HTTP/2) | {plain['handshakes_per_second']:,.0f} | {plain['failed']} |")
print(f"| mTLS (TCP + TLS 1.3 with client certificate + HTTP/2) | {mtls['handshakes_per_second']:,.0f} | {mtls['failed']} |")
print(f"\n({sys.argv[3]} set-ups, {sys.argv[4]} at a time, generator and server on the same machine)\n")
v = mtls["handshakes_per_second"]
print(f"- full mTLS handshakes: {v:,.0f}/s (goal ≥ 1,000/s): " + ("met" if v >= 1000 else "NOT met"))
PY

echo >&2 "memory: $agents connected agents, one connection each"
for target in plain mtls; do
  start "$target"
  before=$(rss_kb "$pid")
  # shellcheck disable=SC2046
  "$bin/fleet-health-load" --server "$(url "$target")" $(client "$target") --streams "$agents" \
    --connections "$agents" --in-flight 1 --events-per-message 1 --duration 8s --warmup 4s \
    --setup-timeout 60s --threads "$threads" >/dev/null 2>"$work/mem.err" &
  load=$!
  sleep 8
  during=$(rss_kb "$pid")
  wait "$load" || echo "warning: memory load: $(tail -n 1 "$work/mem.err")" >&2
  stop_target
  echo "$target $before $during" >>"$work/mem.txt"
done
python3 - "$work/mem.txt" "$agents" <<'PY'
import sys
rows = {l.split()[0]: (int(l.split()[1]), int(l.split()[2])) for l in open(sys.argv[1])}
n = int(sys.argv[2])
print(f"\n| {n} connected agents (one connection and stream each) | RSS before | RSS connected | bytes per agent |\n| --- | ---: | ---: | ---: |")
for t, name in (("plain", "plaintext"), ("mtls", "mTLS")):
    b, d = rows[t]
    print(f"| {name} | {b/1024:.1f} MiB | {d/1024:.1f} MiB | {(d-b)*1024/n:,.0f} |")
PY
