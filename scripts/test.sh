#!/usr/bin/env bash
# Every test: the Rust workspace (unit, integration, end to end with the real
# binaries), then the Python package's tests (pytest, in a virtual
# environment of their own at python/.venv, against the same binaries).
#
#   bash scripts/test.sh
#
# Needs the Rust toolchain and Python 3 (3.9 or later) with venv; the Python
# dependencies (grpcio, protobuf, pytest, grpcio-tools for the stubs check)
# come from PyPI the first time, and Debian's chromium and chromium-driver
# (for the web view's browser tests) and postgresql (for the cluster's tests)
# are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The web view's tests drive a real headless Chromium over WebDriver:
# Debian's chromium and chromium-driver (installed here when missing).
if ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
  echo "== installing chromium and chromium-driver for the browser tests"
  $apt_get update -qq
  DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
# The cluster's tests start a real PostgreSQL in a temporary directory
# (initdb, pg_ctl): Debian's postgresql, installed here when missing. The
# package's own cluster is not used.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null \
    && [ -z "${FLEET_HEALTH_PG_BIN:-}" ]; then
  if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
  echo "== installing postgresql for the cluster's tests"
  $apt_get update -qq
  DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq --no-install-recommends postgresql >/dev/null
fi
cargo test --workspace
# The Python tests start target/debug/fleet-health-server and fleet-health
# (built by the cargo test above).
pytest_with() { # PYTHON VENV
  if [ ! -x "$2/bin/python" ]; then
    "$1" -m venv "$2"
  fi
  "$2/bin/python" -m pip install -q --disable-pip-version-check -e "./python[test]"
  echo "== pytest with $("$2/bin/python" --version)"
  "$2/bin/python" -m pytest python/tests
}
pytest_with python3 python/.venv
# The package supports Python 3.9 and later: where a 3.9 is installed, its
# tests run there too.
py39=
for candidate in python3.9 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9; do
  if "$candidate" -c "import venv" 2>/dev/null; then py39=$candidate; break; fi
done
if [ -n "$py39" ]; then
  pytest_with "$py39" python/.venv-3.9
else
  echo "== no python3.9 here: the package's tests ran with $(python3 --version) only"
fi
