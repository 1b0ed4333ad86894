"""Coalescing the backlog while the server is away changes no status the
server computes: random traces, a random part of each reported during an
outage (with a backlog so small that it is coalesced again and again); once
the server is back, its status for every agent equals the reference rules'
status for the full trace."""

import random
import time

from conftest import Server, eventually

from fleet_health import Reporter
from fleet_health._sensor import LocalSensor

KINDS = ["server_data_received", "server_data_sent", "registered", "unregistered", "shutting_down"]


def trace(rng, now):
    """A process's life: `starting`, then random events at random times in the last 30 h."""
    t0 = now - rng.uniform(0, 30 * 3600)
    ops = [("starting", t0)]
    for _ in range(rng.randint(1, 40)):
        kind = rng.choices(KINDS, weights=[10, 10, 2, 2, 1])[0]
        ops.append((kind, rng.uniform(t0, now)))
    return ops


def play(sensor, ops):
    """Calls the sensor's method for each (kind, when), as an agent would."""
    for kind, when in ops:
        if kind in ("registered", "unregistered"):
            getattr(sensor, kind)()
        else:
            getattr(sensor, kind)(when)


def reference(ops, now):
    s = LocalSensor()
    play(s, ops)
    return s.status(now)


def test_coalesced_backlogs_give_the_references_statuses(data_dir):
    rng = random.Random(20261125)
    now = time.time()
    traces = [trace(rng, now) for _ in range(25)]
    srv = Server(data_dir=data_dir)
    port = srv.port
    reporters = []
    splits = []
    for i, ops in enumerate(traces):
        r = Reporter(f"co-{i}", srv.url, max_pending=8, backoff_initial=0.05, backoff_max=0.3)
        split = rng.randint(1, len(ops))
        for kind, when in ops[:split]:
            r.report(kind, when)
        reporters.append(r)
        splits.append(split)
    eventually(lambda: all(r.stats()["pending"] == 0 for r in reporters))
    srv.kill9()
    for r, ops, split in zip(reporters, traces, splits):
        for kind, when in ops[split:]:
            r.report(kind, when)
    coalesced = sum(r.stats()["coalesced"] for r in reporters)
    assert coalesced > 0, "the outage was long enough to coalesce"
    assert all(r.stats()["dropped"] == 0 for r in reporters)
    back = Server(port=port, data_dir=data_dir)
    try:
        eventually(lambda: all(r.stats()["pending"] == 0 for r in reporters), 30)
        at = time.time()
        for i, ops in enumerate(traces):
            want = reference(ops, at)
            got = back.agent(f"co-{i}")
            assert (got["healthy"], got["why"]) == (want.healthy, want.why), (i, ops)
        for r in reporters:
            assert r.close(5.0)
    finally:
        back.kill9()


def test_a_healthsensor_through_an_outage_gives_the_references_statuses(data_dir):
    """The drop-in sensor sends its state's changes; through an outage, and
    with `starting` again mid-trace (the server's sensor starts fresh, the
    original's does not), the server ends where the original does."""
    from fleet_health import HealthSensor

    rng = random.Random(7)
    now = time.time()
    traces = []
    for _ in range(20):
        ops = trace(rng, now)
        if rng.random() < 0.5:
            ops.insert(rng.randint(1, len(ops)), ("starting", rng.uniform(now - 3600, now)))
        traces.append(ops)
    srv = Server(data_dir=data_dir)
    port = srv.port
    sensors, splits = [], []
    for i, ops in enumerate(traces):
        s = HealthSensor(f"hs-{i}", srv.url, backoff_initial=0.05, backoff_max=0.3)
        split = rng.randint(1, len(ops))
        play(s, ops[:split])
        sensors.append(s)
        splits.append(split)
    eventually(lambda: all(s.reporter.stats()["pending"] == 0 for s in sensors))
    srv.kill9()
    for s, ops, split in zip(sensors, traces, splits):
        play(s, ops[split:])
    back = Server(port=port, data_dir=data_dir)
    try:
        eventually(lambda: all(s.reporter.stats()["pending"] == 0 for s in sensors), 30)
        at = time.time()
        for i, ops in enumerate(traces):
            want = reference(ops, at)
            assert sensors[i].status(at) == want
            got = back.agent(f"hs-{i}")
            assert (got["healthy"], got["why"]) == (want.healthy, want.why), (i, ops)
        for s in sensors:
            assert s.close(5.0)
    finally:
        back.kill9()
