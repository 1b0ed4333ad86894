"""fleet_health: report a Python agent's health events to a fleet-health server.

    from fleet_health import HealthSensor      # instead of the agent's own module
    sensor = HealthSensor()                     # FLEET_HEALTH_SERVER, FLEET_HEALTH_AGENT_ID, ...

``HealthSensor`` has the original's methods and computes ``status(now)``
exactly as the original does, locally; every event also goes to the server in
the background (``Reporter``), without ever blocking or raising into the agent.
"""

import atexit
import time
import weakref
from typing import Mapping, Optional

from ._reporter import KINDS, Reporter
from ._sensor import HealthStatus, LocalSensor

__all__ = ["HealthSensor", "HealthStatus", "Reporter", "KINDS"]

_STARTING = KINDS["starting"]
_SHUTTING_DOWN = KINDS["shutting_down"]
_RECEIVED = KINDS["server_data_received"]
_SENT = KINDS["server_data_sent"]
_REGISTERED = KINDS["registered"]
_UNREGISTERED = KINDS["unregistered"]
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
        if reporter is not None and flush_at_exit:
            ref = weakref.ref(reporter)
            atexit.register(lambda: (ref() is not None) and ref().close(2.0))

    # Each event sets the local rule input, then hands the event to the
    # reporter's inbox: a few attribute loads and one deque append.

    def _send(self, code: int, when: Optional[float]) -> None:
        reporter = self.reporter
        if reporter is not None:
            reporter.put(code, when)

    def starting(self, when: float) -> None:
        self._started_at = when
        self._send(_STARTING, when)

    def shutting_down(self, when: float) -> None:
        self._shutdown_at = when
        self._send(_SHUTTING_DOWN, when)

    def server_data_received(self, when: float) -> None:
        self._last_received = when
        self._send(_RECEIVED, when)

    def server_data_sent(self, when: float) -> None:
        self._last_sent = when
        self._send(_SENT, when)

    def registered(self) -> None:
        self._is_registered = True
        self._send(_REGISTERED, time.time())

    def unregistered(self) -> None:
        self._is_registered = False
        self._send(_UNREGISTERED, time.time())

    def stopped(self, timeout: float = 5.0) -> bool:
        """The agent exits on purpose: says so, and flushes (see ``close``)."""
        self._send(KINDS["stopped"], time.time())
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
