#!/usr/bin/env bash
# The cluster's failure tier (e2e/tests/failure.rs): etcd and three
# Patroni-managed PostgreSQL servers with a synchronous standby, three
# fleet-health nodes, agents and a watch, through a node's kill -9, the
# database primary's kill -9, a node paused past its lease, a node cut off
# from the database, a rolling restart, and three nodes to four; each
# checked against the ledger of acknowledged events.
#
#   bash scripts/failure-tier.sh [TEST NAME FILTER]
#
# Installs Debian's postgresql, patroni and etcd-server when missing, builds
# the binaries, then runs the ignored tests one at a time (each starts its
# own database on loopback ports in a temporary directory). What each
# measured (failover times) is printed on lines starting with `measured:`.
# CARGO_TARGET_DIR is honoured as by cargo itself.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
  || [ -n "${FLEET_HEALTH_PG_BIN:-}" ] || missing+=(postgresql)
command -v patroni >/dev/null || missing+=(patroni)
command -v etcd >/dev/null || missing+=(etcd-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
  echo "== installing ${missing[*]} for the failure tier"
  $apt_get update -qq
  DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "== $(etcd --version | head -n 1); Patroni $(patroni --version 2>&1 | awk '{print $2}')"

# The tests run the binaries cargo builds beside them.
cargo build --workspace --bins
started=$(date +%s)
cargo test -p fleet-health-e2e --test failure -- --ignored --test-threads 1 --nocapture "$@"
echo "== the failure tier took $(( $(date +%s) - started )) s"
