"""Where to report and with what credentials: arguments, else the same
environment variables the ``fleet-health`` CLI reads, else defaults."""

import dataclasses
import os
import socket
from typing import Dict, Mapping, Optional

DEFAULT_SERVER = "http://127.0.0.1:50051"


@dataclasses.dataclass(frozen=True)
class Settings:
    """A reporter's settings, settled."""

    server: str
    agent_id: str
    labels: Dict[str, str]
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    token: Optional[str] = None

    @property
    def target(self) -> str:
        """host:port, as grpc wants it."""
        rest = self.server.split("://", 1)[1]
        return rest.rstrip("/")

    @property
    def tls(self) -> bool:
        return self.server.startswith("https://")

    def __repr__(self) -> str:  # never the token
        return (
            f"Settings(server={self.server!r}, agent_id={self.agent_id!r}, labels={self.labels!r}, "
            f"ca={self.ca!r}, cert={self.cert!r}, key={self.key!r}, token={'<set>' if self.token else None})"
        )


def _labels(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"FLEET_HEALTH_LABELS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def settle(
    server: Optional[str] = None,
    agent_id: Optional[str] = None,
    labels: Optional[Mapping[str, str]] = None,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    token: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Settings:
    """Arguments first, then FLEET_HEALTH_* variables, then defaults. Raises
    ValueError for settings that cannot work (the only time anything here
    raises: at construction, before the agent relies on it)."""
    env = os.environ if env is None else env

    def pick(arg: Optional[str], name: str) -> Optional[str]:
        if arg is not None:
            return arg
        value = env.get(name)
        return value if value else None

    url = pick(server, "FLEET_HEALTH_SERVER") or DEFAULT_SERVER
    if not (url.startswith("http://") or url.startswith("https://")) or "://" not in url or not url.split("://", 1)[1]:
        raise ValueError(f"server {url!r} must be http://HOST:PORT or https://HOST:PORT")
    settled_token = pick(token, "FLEET_HEALTH_TOKEN")
    token_file = env.get("FLEET_HEALTH_TOKEN_FILE")
    if settled_token is None and token_file:
        with open(token_file, encoding="utf-8") as f:
            settled_token = f.read().strip() or None
    settings = Settings(
        server=url,
        agent_id=pick(agent_id, "FLEET_HEALTH_AGENT_ID") or socket.gethostname(),
        labels=dict(labels) if labels is not None else _labels(env.get("FLEET_HEALTH_LABELS", "")),
        ca=pick(ca, "FLEET_HEALTH_CA"),
        cert=pick(cert, "FLEET_HEALTH_CERT"),
        key=pick(key, "FLEET_HEALTH_KEY"),
        token=settled_token,
    )
    if (settings.ca or settings.cert) and not settings.tls:
        raise ValueError(f"ca/cert are for TLS, but the server {url} is http://; use https://")
    if bool(settings.cert) != bool(settings.key):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return settings
