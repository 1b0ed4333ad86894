"""What reporting costs the agent's own thread.

    python python/bench/calls.py          # from the repository root, with the package installed

Starts target/release/fleet-health-server (else target/debug) and measures:
- the median and p99 cost of one event call (`server_data_sent(time)`), timed
  one by one, with the server up, down (nothing listening), and slow (every
  answer held 0.3 s by a proxy);
- an agent loop of one million calls of the original HealthSensor
  (../shared/reference/health_sensor.py when present, else the package's local
  rules) against fleet_health.HealthSensor reporting to the server, as a ratio
  (median of 3 runs of each, interleaved).
"""

import importlib.util
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python" / "tests"))
import conftest  # noqa: E402  (the test harness: server binary, proxy)
from fleet_health import HealthSensor  # noqa: E402
from fleet_health._sensor import LocalSensor  # noqa: E402

if (ROOT / "target" / "release" / "fleet-health-server").is_file():
    import os

    os.environ.setdefault("FLEET_HEALTH_BIN_DIR", str(ROOT / "target" / "release"))


def original_class():
    path = ROOT.parent / "shared" / "reference" / "health_sensor.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("health_sensor", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.HealthSensor, "the reference module"
    return LocalSensor, "fleet_health's local rules (reference not found)"


def per_call(sensor, n=200_000):
    costs = []
    clock = time.perf_counter_ns
    t = time.time()
    for i in range(n):
        a = clock()
        sensor.server_data_sent(t + i)
        costs.append(clock() - a)
    costs.sort()
    return costs[len(costs) // 2] / 1000, costs[int(len(costs) * 0.99)] / 1000


def loop(sensor, n=1_000_000):
    t = time.time()
    start = time.perf_counter()
    for i in range(n):
        sensor.server_data_sent(t + i)
        if i % 1000 == 0:
            sensor.status(t + i)
    return n / (time.perf_counter() - start)


def main():
    server = conftest.Server()
    try:
        rows = []
        up = HealthSensor("bench-up", server.url, max_pending=1_000_000)
        rows.append(("server up", *per_call(up)))
        up.close(30)
        down = HealthSensor("bench-down", f"http://127.0.0.1:{conftest.free_port()}")
        rows.append(("server down", *per_call(down)))
        down.close(0.1)
        proxy = conftest.SlowProxy(server.port, 0.3)
        slow = HealthSensor("bench-slow", f"http://127.0.0.1:{proxy.port}", max_pending=1_000_000)
        rows.append(("server slow (answers held 0.3 s)", *per_call(slow)))
        slow.close(30)
        proxy.close()
        print("| event call (`server_data_sent`), 200 000 timed one by one | median µs | p99 µs |")
        print("| --- | ---: | ---: |")
        for name, p50, p99 in rows:
            print(f"| {name} | {p50:.2f} | {p99:.2f} |")

        Original, what = original_class()
        plain, reporting = [], []
        for _ in range(3):
            plain.append(loop(Original()))
            s = HealthSensor("bench-loop", server.url, max_pending=2_000_000)
            reporting.append(loop(s))
            s.close(60)
        p, r = statistics.median(plain), statistics.median(reporting)
        print()
        print("| one million calls (and a status every thousand) | calls/s |")
        print("| --- | ---: |")
        print(f"| the original HealthSensor ({what}) | {p:,.0f} |")
        print(f"| fleet_health.HealthSensor, reporting | {r:,.0f} |")
        print(f"\nreporting on: {r / p:.2f}× the original's throughput (goal ≥ 0.90×); median of 3 runs each, "
              f"Python {sys.version.split()[0]}")
    finally:
        server.kill9()


if __name__ == "__main__":
    main()
