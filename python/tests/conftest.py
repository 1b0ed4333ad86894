"""Fixtures: the real fleet-health-server binary on an ephemeral port."""

import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def binary(name: str) -> pathlib.Path:
    """A workspace binary: FLEET_HEALTH_BIN_DIR, else target/debug (built by
    `cargo build -p fleet-health-server -p fleet-health-cli`)."""
    folder = pathlib.Path(os.environ.get("FLEET_HEALTH_BIN_DIR", ROOT / "target" / "debug"))
    path = folder / name
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build -p fleet-health-server -p fleet-health-cli` first")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running fleet-health-server; stopped (SIGKILL) at the end."""

    def __init__(self, *args: str, port: int = 0, data_dir: str = None) -> None:
        self.args = list(args)
        self.data_dir = data_dir
        self.port = port
        self.proc = None
        self.start()

    def start(self) -> None:
        cmd = [str(binary("fleet-health-server")), "--listen", f"127.0.0.1:{self.port}", "--metrics-listen", "off", "--log-format", "json"]
        cmd += ["--data-dir", self.data_dir] if self.data_dir else ["--in-memory"]
        cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"the server exited: {self.proc.wait()}")
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "listening":
                self.port = int(fields["grpc"].rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError("the server did not say where it listens")
        # Keep its stderr drained.
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str, url: str = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, FLEET_HEALTH_CONFIG="/nonexistent/config.toml", NO_COLOR="1")
        return subprocess.run(
            [str(binary("fleet-health")), "--server", url or self.url, *args],
            capture_output=True, text=True, env=env, timeout=60,
        )

    def agent(self, agent_id: str, *args: str) -> dict:
        out = self.cli(*args, "status", agent_id, "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.kill9()


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="fleet-health-py-") as d:
        yield d


def eventually(check, timeout: float = 20.0):
    """Polls ``check`` until it returns something truthy, or fails."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {last}")


class SlowProxy:
    """A TCP proxy to `target` that holds every chunk from the server for
    `delay` seconds before passing it on: a slow server, as an agent sees it."""

    def __init__(self, target_port: int, delay: float) -> None:
        import threading

        self.delay = delay
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
