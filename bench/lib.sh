# Shell helpers shared by the benchmark scripts (sourced, not run).
#
# Before sourcing, a script sets `bin` (the directory of the release
# binaries) and `work` (a scratch directory it removes at exit). Then:
#   start_target floor|memory|durable   starts a target on an ephemeral
#                                       loopback port; sets `pid` and `addr`
#                                       (floor-fold: the floor with
#                                       --fold-acks)
#                                       (memory-base, durable-base: the same
#                                       with the server binary $BASELINE)
#   stop_target                         SIGTERM (SIGKILL after 10 s), and
#                                       removes the durable data directory
#   cpu_ticks PID                       user + system CPU of PID, in ticks
#                                       of `getconf CLK_TCK`
# The server runs with --metrics-listen off and --max-stream-events-per-sec 0
# (a load generator would hit the per-stream limit); durable data goes under
# DATA_ROOT (default $TMPDIR or /tmp: use a real disk, not tmpfs).

pid=
addr=
data=

stop_target() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  fi
  if [ -n "$data" ]; then rm -rf "$data"; data=; fi
}

start_target() { # floor|floor-fold|memory|durable|memory-base|durable-base
  local target=$1 log=$work/target.log server_bin=$bin/fleet-health-server
  case $target in
    *-base)
      server_bin=${BASELINE:?"$target needs BASELINE (another build's fleet-health-server)"}
      ;;
  esac
  local server=("$server_bin" --listen 127.0.0.1:0 --metrics-listen off
    --max-stream-events-per-sec 0 --log-format json)
  local cmd
  case $target in
    floor) cmd=("$bin/fleet-health-floor" --listen 127.0.0.1:0 --log-format json) ;;
    floor-fold) cmd=("$bin/fleet-health-floor" --listen 127.0.0.1:0 --log-format json --fold-acks) ;;
    memory | memory-base) cmd=("${server[@]}" --in-memory) ;;
    durable | durable-base)
      data=$(mktemp -d "${DATA_ROOT:-${TMPDIR:-/tmp}}/fleet-health-bench.XXXXXX")
      cmd=("${server[@]}" --data-dir "$data")
      ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
  "${cmd[@]}" >/dev/null 2>"$log" &
  pid=$!
  await_listening "$target" "$log" 30
}

# await_listening NAME LOG SECONDS: waits until the process `pid` writes its
# JSON "listening" line to LOG, and sets `addr` to the gRPC address it names;
# exits with the log if it dies first or says nothing within SECONDS.
await_listening() {
  local name=$1 log=$2 secs=$3
  addr=
  for _ in $(seq $((secs * 10))); do
    addr=$(sed -n 's/.*"grpc":"\(127\.0\.0\.1:[0-9]*\)".*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited before listening:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "$name did not say where it listens within $secs s:" >&2; cat "$log" >&2; exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
