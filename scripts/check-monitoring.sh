#!/usr/bin/env bash
# Checks the shipped monitoring with Prometheus' own tool: the alert rules
# parse (promtool check rules), their unit tests pass (promtool test rules),
# and the example scrape configuration is valid (promtool check config).
# The metric names they use, the Operator's copy of the rules and the
# dashboard are checked by `cargo test` (crates/server/tests/it/monitoring.rs).
#
#   bash scripts/check-monitoring.sh      # needs promtool (Debian: prometheus)
set -euo pipefail
cd "$(dirname "$0")/../deploy/monitoring"
if ! command -v promtool >/dev/null; then
  echo "promtool is needed (apt-get install prometheus, or a Prometheus release)" >&2
  exit 1
fi
promtool check rules alerts.yml
promtool test rules alerts.test.yml
promtool check config prometheus.yml
