#!/usr/bin/env bash
# Every test: the Rust workspace (unit, integration, end to end with the real
# binaries), then the Python package's tests (pytest, in a virtual
# environment of their own at python/.venv, against the same binaries).
#
#   bash scripts/test.sh
#
# Needs the Rust toolchain and Python 3 (3.9 or later) with venv; the Python
# dependencies (grpcio, protobuf, pytest, grpcio-tools for the stubs check)
# come from PyPI the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace
# The Python tests start target/debug/fleet-health-server and fleet-health
# (built by the cargo test above).
venv=python/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "./python[test]"
"$venv/bin/python" -m pytest python/tests
