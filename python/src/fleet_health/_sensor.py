"""The local health rules: the original agent's, unchanged in behaviour.

A sensor starts as the original did (started, last received and last sent
"long ago", registered, not shutting down), so a new sensor is faulty until
the agent reports. ``status(now)`` evaluates, in order: shutdown in progress
or stuck, not registered, no data received (18 h), no data sent (6 h), all is
ok. Times are seconds since the epoch, as floats.
"""

import collections

HealthStatus = collections.namedtuple("HealthStatus", ["healthy", "why"])
HealthStatus.__doc__ = "The sensor's verdict: healthy (bool) and why (a sentence)."


class LocalSensor:
    """The rules alone, with no reporting (what ``HealthSensor`` keeps locally)."""

    RECEIVE_WINDOW = 18 * 3600
    SEND_WINDOW = 6 * 3600
    SHUTDOWN_TIMEOUT = 600

    def __init__(self) -> None:
        self._started_at = 0.0
        self._shutdown_at = 0.0
        self._last_received = 0.0
        self._last_sent = 0.0
        self._is_registered = True

    # Each event sets one attribute, which CPython does atomically: calls from
    # several threads are safe, as they were with the original (which has no
    # lock either, and is copied here as it is).

    def starting(self, when: float) -> None:
        self._started_at = when

    def shutting_down(self, when: float) -> None:
        self._shutdown_at = when

    def server_data_received(self, when: float) -> None:
        self._last_received = when

    def server_data_sent(self, when: float) -> None:
        self._last_sent = when

    def registered(self) -> None:
        self._is_registered = True

    def unregistered(self) -> None:
        self._is_registered = False

    def status(self, now: float) -> HealthStatus:
        started, shutdown = self._started_at, self._shutdown_at
        received, sent = self._last_received, self._last_sent
        registered = self._is_registered
        if shutdown > 0:
            if now - shutdown >= self.SHUTDOWN_TIMEOUT:
                return HealthStatus(False, "stuck at shutdown")
            return HealthStatus(True, "shutdown is in progress")
        if not registered:
            return HealthStatus(True, "not registered")
        if now - started >= self.RECEIVE_WINDOW and now - received >= self.RECEIVE_WINDOW:
            return HealthStatus(False, "no data received from server")
        if now - started >= self.SEND_WINDOW and now - sent >= self.SEND_WINDOW:
            return HealthStatus(False, "no data sent to server")
        return HealthStatus(True, "all is ok")
