"""The local sensor against the recorded traces the project carries
(tests/data/sensor_traces.jsonl, the reference's own statuses)."""

import json
import pathlib

import pytest

from fleet_health import HealthSensor, HealthStatus

TRACES = [json.loads(l) for l in (pathlib.Path(__file__).parent / "data" / "sensor_traces.jsonl").read_text().splitlines() if l.strip()]


def test_there_are_traces():
    assert len(TRACES) > 400


@pytest.mark.parametrize("trace", TRACES, ids=[t["name"] for t in TRACES])
def test_statuses_equal_the_references(trace):
    sensor = HealthSensor(report=False)
    got = []
    for op in trace["ops"]:
        name = op["op"]
        if name == "status":
            got.append(sensor.status(op["now"]))
        elif "when" in op:
            getattr(sensor, name)(op["when"])
        else:
            getattr(sensor, name)()
    want = [HealthStatus(e["healthy"], e["why"]) for e in trace["expect"]]
    assert got == want


def test_the_original_names_are_all_there():
    for name in ["starting", "shutting_down", "server_data_received", "server_data_sent", "registered", "unregistered", "status"]:
        assert callable(getattr(HealthSensor, name))
    assert HealthSensor.RECEIVE_WINDOW == 18 * 3600
    assert HealthSensor.SEND_WINDOW == 6 * 3600
    assert HealthSensor.SHUTDOWN_TIMEOUT == 600
