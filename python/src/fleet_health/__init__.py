"""fleet_health: report a Python agent's health events to a fleet-health server.

    from fleet_health import HealthSensor      # instead of the agent's own module
    sensor = HealthSensor()                     # FLEET_HEALTH_SERVER, FLEET_HEALTH_AGENT_ID, ...

``HealthSensor`` has the original's methods and computes ``status(now)``
exactly as the original does, locally; every event also goes to the server in
the background (``Reporter``), without ever blocking or raising into the agent.
"""

import atexit
import os
import time
import weakref
from typing import Mapping, Optional

# grpcio's fork handlers run in every forked child while the reporter's
# thread is in gRPC, and can abort a child that an agent forks to run a
# subprocess (Python before 3.10 forks for subprocess): the agent must not be
# hurt by reporting, so they are off unless the agent has said otherwise
# (this takes effect only if grpc is not imported yet). A child that wants to
# report makes its own HealthSensor after the fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from ._reporter import KINDS, Reporter
from ._sensor import HealthStatus, LocalSensor

__all__ = ["HealthSensor", "HealthStatus", "Reporter", "KINDS"]

_STARTING = KINDS["starting"]
_SHUTTING_DOWN = KINDS["shutting_down"]
_RECEIVED = KINDS["server_data_received"]
_SENT = KINDS["server_data_sent"]
_REGISTERED = KINDS["registered"]
_UNREGISTERED = KINDS["unregistered"]
# A fresh sensor's fields, as the server's is after `starting`.
_FRESH = (0.0, 0.0, 0.0, 0.0, True)
__version__ = "0.1.0"


class HealthSensor(LocalSensor):
    """The original HealthSensor, reporting to a fleet-health server.

    Arguments (each falls back to the environment variable the CLI reads):
    ``server`` (FLEET_HEALTH_SERVER, default http://127.0.0.1:50051),
    ``agent_id`` (FLEET_HEALTH_AGENT_ID, default the host name), ``labels``
    (FLEET_HEALTH_LABELS, "k=v,k=v"), ``ca``/``cert``/``key`` (FLEET_HEALTH_CA,
    _CERT, _KEY) and ``token`` (FLEET_HEALTH_TOKEN or FLEET_HEALTH_TOKEN_FILE).
    ``report=False`` keeps the sensor local; ``flush_at_exit=True`` flushes
    what is unacknowledged when the interpreter exits (up to 2 s).
    """

    def __init__(
        self,
        agent_id: Optional[str] = None,
        server: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        *,
        report: bool = True,
        flush_at_exit: bool = False,
        reporter: Optional[Reporter] = None,
        **settings: object,
    ) -> None:
        super().__init__()
        if reporter is None and report:
            reporter = Reporter(agent_id, server, labels, **settings)  # type: ignore[arg-type]
        self.reporter = reporter
        self._reported = _FRESH
        self._dirty = False
        if reporter is not None:
            reporter.follow(self._changes)
        if reporter is not None and flush_at_exit:
            ref = weakref.ref(reporter)
            atexit.register(lambda: (ref() is not None) and ref().close(2.0))

    # Each event sets the local rule input and marks the sensor changed (one
    # more attribute store than the original: nothing else on the agent's
    # thread). The reporter's thread looks every 50 ms and sends what changed
    # (``_changes``); events that come faster are coalesced on the way, which
    # changes no status the server computes (later values replace earlier).

    def starting(self, when: float) -> None:
        self._started_at = when
        self._dirty = True

    def shutting_down(self, when: float) -> None:
        self._shutdown_at = when
        self._dirty = True

    def server_data_received(self, when: float) -> None:
        self._last_received = when
        self._dirty = True

    def server_data_sent(self, when: float) -> None:
        self._last_sent = when
        self._dirty = True

    def registered(self) -> None:
        self._is_registered = True
        self._dirty = True

    def unregistered(self) -> None:
        self._is_registered = False
        self._dirty = True

    def _state(self) -> tuple:
        return (self._started_at, self._shutdown_at, self._last_received, self._last_sent, self._is_registered)

    def _changes(self) -> list:
        """The events that bring the server from what was sent last to this
        sensor's state now (called in the reporter's thread). After a
        ``starting`` the server's sensor is fresh, so every field that differs
        from a fresh one follows it."""
        if not self._dirty:
            return []
        self._dirty = False
        now = self._state()
        before = self._reported
        out = []
        base = before
        if now[0] != before[0]:
            out.append((_STARTING, now[0]))
            base = _FRESH
        if now[1] != base[1]:
            out.append((_SHUTTING_DOWN, now[1]))
        if now[2] != base[2]:
            out.append((_RECEIVED, now[2]))
        if now[3] != base[3]:
            out.append((_SENT, now[3]))
        if now[4] != base[4]:
            out.append((_REGISTERED if now[4] else _UNREGISTERED, time.time()))
        self._reported = now
        return out

    def stopped(self, timeout: float = 5.0) -> bool:
        """The agent exits on purpose: says so, and flushes (see ``close``)."""
        if self.reporter is not None:
            self.reporter.put(KINDS["stopped"], time.time())
        return self.close(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Flushes what is unacknowledged (up to ``timeout`` seconds) and stops
        reporting. True if nothing was left unsent."""
        if self.reporter is None:
            return True
        return self.reporter.close(timeout)

    def __enter__(self) -> "HealthSensor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
