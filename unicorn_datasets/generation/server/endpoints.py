"""One server endpoint: its URL and token, what it is (probed), its health and its adaptive limit.

The URL kept here has its credentials removed: it is the only form ever logged, described or put in an
error. A token found in the URL (`https://user:TOKEN@host`) or given explicitly is sent only to that
endpoint; the saved Hugging Face token only to Hugging Face hosts (Inference Endpoints, Spaces).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from unicorn_datasets.generation.server.concurrency import AdaptiveLimit

logger = logging.getLogger(__name__)

_HF_HOSTS = (".huggingface.co", ".huggingface.cloud", ".hf.space")  # hosts that may get the saved HF token
_LATENCY_ALPHA = 0.2  # EWMA weight of the newest latency (load sharing, progress)


@dataclass
class Endpoint:
    url: str  # base URL without credentials or routes
    token: str | None  # None: no Authorization header is sent
    limit: AdaptiveLimit
    kind: str | None = None  # tgi | vllm | sglang | llamacpp | openai; None until probed
    info: dict[str, Any] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)  # optional fields this server rejected
    in_flight: int = 0
    picks: int = 0
    served: int = 0
    failed: int = 0  # failed HTTP attempts, all time
    failures: int = 0  # consecutive failed attempts (a success resets it)
    down_until: float = 0.0  # monotonic time before which no request is sent here
    latency: float | None = None  # EWMA of seconds per successful request
    last_error: str = ""  # the error alone (never the URL: messages name the endpoint once)
    rests: int = 0  # cool-downs since the last success
    needs_probe: bool = False  # after a cool-down, one health probe decides before rows are sent again
    down: bool = False  # its probe after a cool-down failed: no success since
    probes: int = 0  # probes run (requests waiting on one see it change)

    def cooling(self, now: float) -> bool:
        return self.down_until > now

    def record_success(self, seconds: float, n_tokens: int, in_flight_at_send: int) -> None:
        self.served += 1
        self.recovered()
        self.latency = seconds if self.latency is None else (
            _LATENCY_ALPHA * seconds + (1 - _LATENCY_ALPHA) * self.latency)
        self.limit.on_success(seconds / max(1, n_tokens), in_flight_at_send)

    def record_failure(self, error: str, *, fail_threshold: int, cooldown: float, counts_as_down: bool) -> None:
        """A failed attempt. `counts_as_down` is False for 429: a rate-limited server is up, only busy."""
        self.failed += 1
        self.last_error = error
        if not counts_as_down:
            return
        self.failures += 1
        now = time.monotonic()
        if self.failures >= fail_threshold and not self.cooling(now) and not self.needs_probe:
            self.rest(cooldown, f"failed {self.failures} times in a row ({error})")

    def rest(self, cooldown: float, why: str) -> None:
        """Skip this endpoint for a cool-down (doubling with each one since the last success, up to 10x); a
        health probe then decides whether rows go to it again. Failures of requests sent before the cool-down
        began do not lengthen it: the wait is one cool-down per episode, not per failed row."""
        pause = min(cooldown * 2**self.rests, 10 * cooldown)
        self.rests += 1
        self.down_until = time.monotonic() + pause
        self.needs_probe = True
        logger.warning("endpoint %s %s: skipped for %.1fs, then probed", self.url, why, pause)

    def recovered(self) -> None:
        self.failures, self.rests, self.down_until = 0, 0, 0.0
        self.needs_probe = self.down = False

    def stats(self, now: float) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "served": self.served, "failed": self.failed,
                "in_flight": self.in_flight, "limit": self.limit.current, "limit_decreases": self.limit.decreases,
                "latency_ewma_s": None if self.latency is None else round(self.latency, 4),
                "cooling": self.cooling(now), "last_error": self.last_error or None}


def make_endpoint(raw: str, *, token: str | None, max_limit: int) -> Endpoint:
    why = endpoint_problem(raw)
    if why is not None:
        raise ValueError(f"endpoint {raw.strip()!r} is not a server URL ({why}); give http(s)://HOST[:PORT]")
    url, url_token = split_endpoint(raw)
    auth = token or url_token
    host = urlsplit(url).hostname or ""
    if auth is None and (host == "huggingface.co" or host.endswith(_HF_HOSTS)):
        from huggingface_hub import get_token

        auth = get_token()  # Inference Endpoints need the user's token; other servers never see it
    return Endpoint(url=url, token=auth, limit=AdaptiveLimit(max_limit))


_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def endpoint_problem(raw: str) -> str | None:
    """Why `raw` is not a server URL (None when it is): scheme http or https (none means http), then a host."""
    raw = raw.strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    if scheme.lower() not in ("http", "https"):
        return f"the scheme must be http or https, got {scheme!r}"
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if not netloc:
        return "it names no host"
    if not _HOST.match(netloc):
        return f"{netloc!r} is not a host[:port]"
    return None


def split_endpoint(raw: str) -> tuple[str, str | None]:
    """'https://user:tok@host:8000/v1/' -> ('https://host:8000', 'tok'). Routes are appended later."""
    raw = raw.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    token = parts.password or parts.username or None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    if parts.query:
        shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        logger.warning("endpoint %s: the query string is dropped", shown)
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, netloc, path.rstrip("/"), "", "")), token
