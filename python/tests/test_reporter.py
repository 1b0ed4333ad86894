"""The reporter against the real server binary."""

import threading
import time

from conftest import Server, eventually, free_port

from fleet_health import HealthSensor, Reporter

T0 = 1_700_000_000.25


def epoch(rfc3339: str) -> float:
    """An RFC 3339 time from the CLI's JSON, in seconds since the epoch."""
    import datetime

    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def wait_acked(sensor_or_reporter, timeout=20.0):
    reporter = getattr(sensor_or_reporter, "reporter", sensor_or_reporter)
    eventually(lambda: reporter.stats()["pending"] == 0, timeout)


def test_every_event_arrives_with_its_time_and_the_statuses_agree(server):
    now = time.time()
    sensor = HealthSensor("py-1", server.url, {"site": "lab"})
    sensor.starting(now - 100)
    sensor.server_data_received(now - 50)
    sensor.server_data_sent(now - 40.5)
    wait_acked(sensor)
    agent = server.agent("py-1")
    local = sensor.status(time.time())
    assert agent["healthy"] == local.healthy
    assert agent["why"] == local.why
    assert agent["labels"] == {"site": "lab"}
    times = agent["sensor"]
    assert abs(epoch(times["started_at"]) - (now - 100)) < 1e-3
    assert abs(epoch(times["last_received"]) - (now - 50)) < 1e-3
    assert abs(epoch(times["last_sent"]) - (now - 40.5)) < 1e-3
    assert times["registered"] is True
    assert agent["last_seq"] == 3
    # Unregistered and registered again: each arrives.
    sensor.unregistered()
    wait_acked(sensor)
    assert server.agent("py-1")["why"] == sensor.status(time.time()).why == "not registered"
    sensor.registered()
    wait_acked(sensor)
    assert server.agent("py-1")["why"] == sensor.status(time.time()).why
    # Shutting down: locally and on the server alike.
    sensor.shutting_down(time.time())
    wait_acked(sensor)
    assert server.agent("py-1")["why"] == sensor.status(time.time()).why == "shutdown is in progress"
    assert sensor.stopped(5.0)
    assert server.agent("py-1")["why"] == "stopped"


def test_a_server_down_at_start_gets_everything_once_it_is_up():
    port = free_port()
    reporter = Reporter("py-late", f"http://127.0.0.1:{port}", backoff_initial=0.05, backoff_max=0.5)
    reporter.report("starting", T0)
    reporter.report("server_data_received", T0 + 1)
    time.sleep(0.3)
    assert reporter.stats()["pending"] == 2
    late = Server(port=port)
    try:
        wait_acked(reporter)
        agent = late.agent("py-late")
        assert int(agent["incarnation"]) > 0
        assert agent["last_seq"] == 2
        assert abs(epoch(agent["sensor"]["last_received"]) - (T0 + 1)) < 1e-3
        assert reporter.close(5.0)
    finally:
        late.kill9()


def test_calls_never_block_while_the_server_is_away():
    reporter = Reporter("py-away", f"http://127.0.0.1:{free_port()}", max_pending=1000)
    start = time.perf_counter()
    for i in range(20_000):
        reporter.report("server_data_sent", T0 + i)
    took = time.perf_counter() - start
    stats = reporter.stats()
    # The backlog stays bounded by coalescing: the same kind, later times.
    assert stats["pending"] <= 1000 and stats["dropped"] == 0
    assert stats["coalesced"] >= 19_000
    assert took < 5.0, took
    assert not reporter.close(0.1)


def test_kill9_and_restart_loses_nothing_and_applies_nothing_twice(data_dir):
    srv = Server(data_dir=data_dir)
    port = srv.port
    reporter = Reporter("py-crash", srv.url, backoff_initial=0.05, backoff_max=0.5)
    reporter.report("starting", T0)
    wait_acked(reporter)
    srv.kill9()
    for i in range(1, 51):
        reporter.report("server_data_sent", T0 + i)
    srv2 = Server(port=port, data_dir=data_dir)
    try:
        wait_acked(reporter)
        agent = srv2.agent("py-crash")
        assert agent["last_seq"] == 51
        assert reporter.close(5.0)
    finally:
        srv2.kill9()


def test_many_threads_report_at_once(server):
    reporter = Reporter("py-threads", server.url)
    def work():
        for i in range(500):
            reporter.report("heartbeat")
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_acked(reporter)
    assert server.agent("py-threads")["last_seq"] >= 4000
    assert reporter.close(5.0)


def test_tls_with_a_client_certificate_and_with_a_token(tmp_path):
    from conftest import binary
    import subprocess

    pki = tmp_path / "pki"
    fh = str(binary("fleet-health"))
    subprocess.run([fh, "pki", "init", str(pki)], check=True, capture_output=True)
    subprocess.run([fh, "pki", "issue", "agent", "py-tls", "--dir", str(pki)], check=True, capture_output=True)
    tokens = tmp_path / "tokens.toml"
    made = subprocess.run(
        [fh, "token", "create", "gw", "--role", "relay", "--agents", "py-tok-*", "--tokens-file", str(tokens)],
        check=True, capture_output=True, text=True,
    )
    secret = made.stdout.strip()
    srv = Server(
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--client-ca", str(pki / "ca.pem"), "--tokens", str(tokens),
    )
    url = f"https://localhost:{srv.port}"
    try:
        by_cert = Reporter("py-tls", url, ca=str(pki / "ca.pem"), cert=str(pki / "agent-py-tls.pem"), key=str(pki / "agent-py-tls.key"))
        by_cert.report("starting", T0)
        wait_acked(by_cert)
        by_token = Reporter("py-tok-1", url, ca=str(pki / "ca.pem"), token=secret)
        by_token.report("starting", T0)
        wait_acked(by_token)
        # A certificate for another agent: refused for good, never raised.
        wrong = Reporter("py-other", url, ca=str(pki / "ca.pem"), cert=str(pki / "agent-py-tls.pem"), key=str(pki / "agent-py-tls.key"))
        wrong.report("starting", T0)
        ended = eventually(lambda: wrong.stats()["ended"])
        assert "PERMISSION_DENIED" in ended, ended
        wrong.report("heartbeat")  # still no exception
        admin = ["--ca", str(pki / "ca.pem")]
        subprocess.run([fh, "pki", "issue", "operator", "root", "--role", "admin", "--dir", str(pki)], check=True, capture_output=True)
        admin += ["--cert", str(pki / "admin-root.pem"), "--key", str(pki / "admin-root.key")]
        for agent_id in ["py-tls", "py-tok-1"]:
            out = srv.cli(*admin, "status", agent_id, "-o", "json", url=url)
            assert out.returncode == 0, out.stderr
        assert by_cert.close(5.0) and by_token.close(5.0)
    finally:
        srv.kill9()


def test_a_slow_server_slows_no_call(server):
    from conftest import SlowProxy

    proxy = SlowProxy(server.port, delay=0.3)
    try:
        reporter = Reporter("py-slow", f"http://127.0.0.1:{proxy.port}")
        start = time.perf_counter()
        for i in range(1000):
            reporter.report("server_data_sent", T0 + i)
        calls = time.perf_counter() - start
        # Every answer takes 0.3 s to come back; the calls never waited for one.
        assert calls < 0.3, calls
        wait_acked(reporter, 30)
        assert server.agent("py-slow")["last_seq"] == 1000
        assert reporter.close(5.0)
    finally:
        proxy.close()


def test_heartbeats_at_the_interval_the_server_gives():
    srv = Server("--heartbeat-interval", "1s")
    try:
        sensor = HealthSensor("py-beat", srv.url)
        sensor.starting(time.time())
        wait_acked(sensor)
        first = srv.agent("py-beat")["last_seq"]
        # Nothing happens in the agent: the reporter says it is alive.
        eventually(lambda: srv.agent("py-beat")["last_seq"] >= first + 2, 10)
        assert srv.agent("py-beat")["connected"] is True
        assert sensor.close(5.0)
    finally:
        srv.kill9()
