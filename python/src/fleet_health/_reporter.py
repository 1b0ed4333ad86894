"""The reporter: one long-lived Report stream per process, in a daemon thread.

Calls from the agent only append to an in-memory backlog under a lock and wake
the thread: O(1), never blocking on the network, never raising because of it.
The thread speaks the protocol as the Rust reporter does: a Hello with a
random incarnation picked once per process, events numbered from 1, every
unacknowledged event sent again after a reconnect (from the Welcome's
last_applied_seq on), backlogs in batches, heartbeats at the interval the
server gives, reconnection with exponential backoff and jitter. A permanent
refusal (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED) is logged once
and stops the reporter; the agent is never told by an exception.
"""

import collections
import logging
import random
import threading
import time
from typing import Callable, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

import grpc

from ._proto.fleethealth.v1 import agent_pb2 as pb
from ._proto.fleethealth.v1 import agent_pb2_grpc as pb_grpc
from ._settings import Settings, settle

log = logging.getLogger("fleet_health")

#: Event kinds, by the reference sensor's method names (and the fleet's two).
KINDS = {
    "starting": pb.EVENT_KIND_STARTING,
    "shutting_down": pb.EVENT_KIND_SHUTTING_DOWN,
    "server_data_received": pb.EVENT_KIND_SERVER_DATA_RECEIVED,
    "server_data_sent": pb.EVENT_KIND_SERVER_DATA_SENT,
    "registered": pb.EVENT_KIND_REGISTERED,
    "unregistered": pb.EVENT_KIND_UNREGISTERED,
    "heartbeat": pb.EVENT_KIND_HEARTBEAT,
    "stopped": pb.EVENT_KIND_STOPPED,
}

#: How often a followed sensor is looked at (seconds).
FOLLOW_EVERY = 0.05

# Events that set the same part of the sensor share a slot: only the last
# matters (registered and unregistered both set "is registered").
_SLOT = {pb.EVENT_KIND_UNREGISTERED: pb.EVENT_KIND_REGISTERED}

_PERMANENT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}

# (seq, kind, time or None)
_Event = Tuple[int, int, Optional[float]]


class Reporter:
    """Streams one agent's events to the server in the background.

    ``report(kind, when)`` never blocks and never raises because of the
    network. At most ``max_pending`` unacknowledged events are kept. When the
    backlog is full it is coalesced: later events replace earlier values
    (the sensor keeps only the last time of each kind, and ``starting``
    begins a fresh sensor on the server), so only the last event of each kind
    since the last ``starting`` is kept, and the status the server computes
    from the backlog is unchanged (``stats()["coalesced"]`` counts what was
    folded away). Only if coalescing frees nothing is the oldest dropped
    (``stats()["dropped"]``).
    """

    def __init__(
        self,
        agent_id: Optional[str] = None,
        server: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        *,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        token: Optional[str] = None,
        max_pending: int = 100_000,
        max_batch: int = 512,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        self.settings: Settings = settle(server, agent_id, labels, ca, cert, key, token)
        self._incarnation = random.SystemRandom().randrange(1, 2**64)
        # Room for one event of each slot, so that coalescing always frees one.
        self._max_pending = max(8, max_pending)
        self._max_batch = max(1, max_batch)
        self._backoff = (backoff_initial, backoff_max)
        self._cond = threading.Condition()
        # What the agent's threads put, not yet numbered: (kind, time).
        self._inbox: Deque[Tuple[int, Optional[float]]] = collections.deque()
        self._accepting = True
        self._idle = False
        # A sensor whose state is the backlog (see ``follow``).
        self._source: Optional[Callable[[], List[Tuple[int, Optional[float]]]]] = None
        self._pending: Deque[_Event] = collections.deque()
        self._next_seq = 1
        self._acked = 0
        self._sent = 0  # the highest seq sent on the current stream
        self._last_send = time.monotonic()
        self._heartbeat = 30.0
        self._closing = False
        self._stopped = False
        self._ended: Optional[str] = None
        self._stats: Dict[str, int] = {"dropped": 0, "coalesced": 0, "connects": 0, "acked": 0}
        self._last_error: Optional[str] = None
        self._channel: Optional[grpc.Channel] = None
        self._thread = threading.Thread(target=self._run, name="fleet-health-reporter", daemon=True)
        self._thread.start()

    # -- the agent's side: O(1), never blocking on the network ------------

    def report(self, kind: str, when: Optional[float] = None) -> None:
        """Records one event (``kind`` one of KINDS' names; ``when`` in
        seconds since the epoch, or None for the server's receive time)."""
        code = KINDS.get(kind)
        if code is None:
            log.warning("fleet_health: unknown event kind %r ignored", kind)
            return
        self.put(code, when)

    def put(self, code: int, when: Optional[float]) -> None:
        """``report`` with the kind's wire number: the agent's fast path. One
        append to the inbox (atomic in CPython: no lock), and a wake-up only
        when the reporter's thread is asleep."""
        if self._accepting:
            self._inbox.append((code, when))
            if self._idle:
                self._wake()

    def follow(self, source: Callable[[], List[Tuple[int, Optional[float]]]]) -> None:
        """Makes ``source`` a provider of events, asked every
        ``FOLLOW_EVERY`` seconds in the reporter's thread (lock held): it
        returns the events that bring the server from what was sent last to
        the sensor's state now (none when nothing changed). The agent's
        thread then pays nothing for reporting but marking the sensor
        changed, and the sensor's own fields are the backlog: coalesced by
        construction, bounded however long the server is away."""
        with self._cond:
            self._source = source
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _drain(self) -> None:
        """Moves the inbox into the numbered backlog (lock held), keeping it
        within max_pending."""
        if self._source is not None:
            for code, when in self._source():
                self._add(code, when)
        inbox = self._inbox
        while inbox:
            code, when = inbox.popleft()
            self._add(code, when)

    def _add(self, code: int, when: Optional[float]) -> None:
        """Numbers one event into the backlog (lock held)."""
        if len(self._pending) >= self._max_pending and not self._coalesce():
            self._pending.popleft()
            self._stats["dropped"] += 1
        self._pending.append((self._next_seq, code, when))
        self._next_seq += 1

    def _wait(self, timeout: float) -> None:
        """Sleeps (lock held) until woken or ``timeout``, then drains. The
        idle flag is raised before the inbox is looked at again, so that an
        event put in between either is seen here or wakes the wait."""
        self._idle = True
        if not self._inbox:
            cap = FOLLOW_EVERY if self._source is not None else 1.0
            self._cond.wait(min(timeout, cap))
        self._idle = False
        self._drain()

    def _coalesce(self) -> bool:
        """Folds the backlog (lock held): from the last ``starting`` on, the
        last event of each slot; returns whether anything was freed."""
        events = list(self._pending)
        start = 0
        for i, e in enumerate(events):
            if e[1] == pb.EVENT_KIND_STARTING:
                start = i
        keep: Dict[int, _Event] = {}
        for e in events[start:]:
            keep[_SLOT.get(e[1], e[1])] = e
        kept = sorted(keep.values())
        freed = len(events) - len(kept)
        if freed == 0:
            return False
        self._pending = collections.deque(kept)
        self._stats["coalesced"] += freed
        return True

    def stats(self) -> Dict[str, object]:
        """Counters: pending, acked, dropped, connects; the last error; ended."""
        with self._cond:
            self._drain()
            out: Dict[str, object] = dict(self._stats)
            out["pending"] = len(self._pending)
            out["last_error"] = self._last_error
            out["ended"] = self._ended
            return out

    def close(self, timeout: float = 5.0) -> bool:
        """Waits up to ``timeout`` seconds for every event to be acknowledged,
        then ends the stream and the thread. True if nothing was left unsent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._accepting = False
            self._drain()
            self._closing = True
            self._cond.notify_all()
            while self._pending and self._ended is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            flushed = not self._pending
            self._stopped = True
            self._cond.notify_all()
        channel = self._channel
        if channel is not None:
            channel.close()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        return flushed

    # -- the thread --------------------------------------------------------

    def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            with self._cond:
                if self._stopped or self._ended is not None:
                    return
            welcomed = False
            try:
                welcomed = self._session()
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                detail = e.details() if hasattr(e, "details") else str(e)
                with self._cond:
                    self._last_error = f"{code}: {detail}"
                    if self._stopped:
                        return
                    if code in _PERMANENT:
                        self._ended = f"{code.name if code else code}: {detail}"
                        log.error("fleet_health: the server refused this reporter (%s: %s); it stops", code, detail)
                        self._cond.notify_all()
                        return
                log.debug("fleet_health: report stream failed (%s: %s); reconnecting", code, detail)
            except Exception as e:  # never into the agent
                with self._cond:
                    self._last_error = repr(e)
                log.debug("fleet_health: reporter error %r; reconnecting", e)
            if welcomed:
                delay = self._backoff[0]
            with self._cond:
                pause_until = time.monotonic() + random.uniform(delay / 2, delay)
                while not self._stopped and time.monotonic() < pause_until:
                    self._wait(pause_until - time.monotonic())
                if self._stopped:
                    return
            delay = min(delay * 2, self._backoff[1])

    def _connect(self) -> grpc.Channel:
        s = self.settings
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        if not s.tls:
            return grpc.insecure_channel(s.target, options=options)

        def read(path: Optional[str]) -> Optional[bytes]:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(read(s.ca), read(s.key), read(s.cert))
        return grpc.secure_channel(s.target, creds, options=options)

    def _session(self) -> bool:
        """One stream: Hello, events, acks. Returns whether it was welcomed."""
        channel = self._connect()
        self._channel = channel
        stub = pb_grpc.AgentServiceStub(channel)
        metadata = [("authorization", f"Bearer {self.settings.token}")] if self.settings.token else None
        hello = pb.ReportRequest(
            hello=pb.Hello(agent_id=self.settings.agent_id, incarnation=self._incarnation, labels=self.settings.labels)
        )
        state = {"welcomed": False, "done": False}
        try:
            responses = stub.Report(self._requests(hello, state), metadata=metadata)
            with self._cond:
                self._stats["connects"] += 1
            for resp in responses:
                which = resp.WhichOneof("body")
                if which == "welcome":
                    w = resp.welcome
                    with self._cond:
                        interval = w.heartbeat_interval.seconds + w.heartbeat_interval.nanos / 1e9
                        if interval > 0:
                            self._heartbeat = interval
                        self._drop_through(w.last_applied_seq)
                        self._sent = max(self._acked, w.last_applied_seq)
                        state["welcomed"] = True
                        self._cond.notify_all()
                elif which == "ack":
                    with self._cond:
                        self._drain()
                        self._drop_through(resp.ack.applied_through)
                        if self._closing and not self._pending:
                            state["done"] = True
                        self._cond.notify_all()
            return state["welcomed"]
        finally:
            with self._cond:
                state["done"] = True
                self._cond.notify_all()
            channel.close()
            self._channel = None

    def _drop_through(self, seq: int) -> None:
        """Drops the events acknowledged through ``seq`` (lock held)."""
        while self._pending and self._pending[0][0] <= seq:
            self._pending.popleft()
            self._stats["acked"] += 1
        self._acked = max(self._acked, seq)

    def _requests(self, hello: pb.ReportRequest, state: dict) -> Iterator[pb.ReportRequest]:
        """What the stream sends: the Hello, then batches of what is not yet
        sent on this stream, then heartbeats when idle. Runs in grpc's thread."""
        yield hello
        while True:
            with self._cond:
                while True:
                    self._drain()
                    if state["done"] or self._stopped:
                        return
                    if self._closing and not self._pending:
                        return
                    if state["welcomed"]:
                        batch = [e for e in self._unsent()]
                        if batch:
                            break
                        idle = time.monotonic() - self._last_send
                        if idle >= self._heartbeat * 0.9:
                            self._pending.append((self._next_seq, pb.EVENT_KIND_HEARTBEAT, None))
                            self._next_seq += 1
                            continue
                        self._wait(self._heartbeat * 0.9 - idle)
                    else:
                        self._wait(1.0)
                self._sent = batch[-1][0]
                self._last_send = time.monotonic()
            yield pb.ReportRequest(events=pb.EventBatch(events=[_event(e) for e in batch]))

    def _unsent(self) -> Iterator[_Event]:
        """Up to max_batch pending events above what this stream sent (lock held)."""
        n = 0
        for e in self._pending:
            if e[0] > self._sent:
                yield e
                n += 1
                if n == self._max_batch:
                    return


def _event(e: _Event) -> pb.Event:
    seq, kind, when = e
    ev = pb.Event(seq=seq, kind=kind)
    if when is not None:
        secs = int(when // 1)
        ev.time.seconds = secs
        ev.time.nanos = min(int(round((when - secs) * 1e9)), 999_999_999)
    return ev
