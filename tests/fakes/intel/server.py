"""The fake intel server: one threaded HTTP server on 127.0.0.1 for every source.

Each source lives under `/<source>` followed by its real base path, so
`fake.url("urlhaus")` is `http://127.0.0.1:P/urlhaus/v1` and the client appends
the real paths (`/url/`, trailing slash included). Per request:

1. The source's fake checks the request as the real API would (verb, path,
   encoding, form vs JSON body, required headers) and answers a wrong one with
   the real API's error. Right requests name the IoC type and value.
2. The call is counted (per source and per value) before any scenario applies.
3. The scenario picked for (source, value), else for the source, else `auto`,
   decides the answer: `auto` answers found for the values in
   `fixtures/known.json` and not_found for anything else.

Scenarios: auto, found, not_found, unauthorized, rate_limited, server_error,
slow (found after `delay`, default 2 s), malformed (truncated JSON),
unexpected_shape (valid JSON of the wrong shape). Options: `value` (only that
IoC), `duration` (seconds, then back to auto), `count` (that many calls, then
back), `delay` (seconds before answering, any scenario), `retry_after` (seconds
in Retry-After on 429; by default the source's documented behaviour).

Control API: `POST /_control/scenario` {"source", "scenario", ...options},
`POST /_control/reset`, `GET /_control/calls[?source=&value=]`, `GET /_control/sources`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .apis import FAKE_APIS, FakeApi, Req, Response, Routed, is_known, json_response

SCENARIOS = (
    "auto",
    "found",
    "not_found",
    "unauthorized",
    "rate_limited",
    "server_error",
    "slow",
    "malformed",
    "unexpected_shape",
)
SLOW_DEFAULT_DELAY = 2.0
MAX_BODY = 1024 * 1024
CALL_LOG_LIMIT = 10_000


@dataclass
class Scenario:
    name: str
    delay: float = 0.0
    retry_after: int | None = None
    until: float | None = None  # time.monotonic() deadline
    remaining: int | None = None  # calls left

    def expired(self, now: float) -> bool:
        return (self.until is not None and now >= self.until) or (self.remaining is not None and self.remaining <= 0)


@dataclass(frozen=True)
class Call:
    source: str
    ioc_type: str | None
    value: str | None
    method: str
    path: str
    status: int
    scenario: str
    at: float
    headers: dict[str, str] = field(default_factory=dict)  # auth header values replaced by "<present>"


class IntelState:
    """Scenarios and call counts, shared by the handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.scenarios: dict[tuple[str, str | None], Scenario] = {}
        self.calls: list[Call] = []
        self.by_source: Counter[str] = Counter()
        self.by_value: Counter[tuple[str, str]] = Counter()
        self.health_calls: Counter[str] = Counter()

    def set(self, source: str, name: str, *, value: str | None = None, duration: float | None = None,
            count: int | None = None, delay: float | None = None, retry_after: int | None = None) -> None:  # fmt: skip
        if source not in FAKE_APIS:
            raise ValueError(f"unknown source {source!r}; known: {', '.join(sorted(FAKE_APIS))}")
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        if delay is None:
            delay = SLOW_DEFAULT_DELAY if name == "slow" else 0.0
        scenario = Scenario(
            name=name,
            delay=float(delay),
            retry_after=None if retry_after is None else int(retry_after),
            until=None if duration is None else time.monotonic() + float(duration),
            remaining=None if count is None else int(count),
        )
        with self._lock:
            self.scenarios[(source, value)] = scenario

    def reset(self) -> None:
        with self._lock:
            self.scenarios.clear()
            self.calls.clear()
            self.by_source.clear()
            self.by_value.clear()
            self.health_calls.clear()

    def pick(self, source: str, value: str | None) -> Scenario | None:
        """The scenario for this call (consuming one of its `count`), or None for auto."""
        now = time.monotonic()
        with self._lock:
            for key in ((source, value), (source, None)):
                scenario = self.scenarios.get(key)
                if scenario is None:
                    continue
                if scenario.expired(now):
                    del self.scenarios[key]
                    continue
                if scenario.remaining is not None:
                    scenario.remaining -= 1
                return scenario
        return None

    def peek(self, source: str) -> Scenario | None:
        """The source-wide scenario without consuming a `count` (health probes are not lookups)."""
        with self._lock:
            scenario = self.scenarios.get((source, None))
            return None if scenario is None or scenario.expired(time.monotonic()) else scenario

    def health_probe(self, source: str) -> None:
        with self._lock:
            self.health_calls[source] += 1

    def record(self, call: Call) -> None:
        with self._lock:
            self.by_source[call.source] += 1
            if call.value is not None:
                self.by_value[(call.source, call.value)] += 1
            self.calls.append(call)
            if len(self.calls) > CALL_LOG_LIMIT:
                del self.calls[: len(self.calls) - CALL_LOG_LIMIT]

    def calls_for(self, source: str | None = None, value: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if (source is None or c.source == source) and (value is None or c.value == value)]

    def count(self, source: str | None = None, value: str | None = None) -> int:
        with self._lock:
            if source is None:
                return sum(self.by_source.values())
            if value is None:
                return self.by_source[source]
            return self.by_value[(source, value)]

    def snapshot(self, source: str | None = None, value: str | None = None) -> dict[str, Any]:
        with self._lock:
            calls = [c for c in self.calls if (source is None or c.source == source) and (value is None or c.value == value)]
            by_value: dict[str, dict[str, int]] = {}
            for (src, val), n in self.by_value.items():
                by_value.setdefault(src, {})[val] = n
            return {
                "total": sum(self.by_source.values()),
                "by_source": dict(self.by_source),
                "by_value": by_value,
                "health": dict(self.health_calls),
                "calls": [asdict(c) for c in calls[-1000:]],
            }


def answer(api: FakeApi, routed: Routed, scenario: Scenario | None, state: IntelState) -> tuple[Response, str]:
    name_shown = scenario.name if scenario else "auto"
    name = name_shown
    if name == "auto":
        # Follow-up calls (Hybrid Analysis overview of a sha256 its search returned) answer as the search did.
        name = "found" if routed.get("follow") or is_known(routed.ioc_type, routed.value) else "not_found"
    elif name == "slow":
        name = "found"
    if name in ("found", "not_found") and api.key_required and not routed.key:
        return api.missing_key(routed), name_shown
    retry_after = scenario.retry_after if scenario else None
    if name == "rate_limited" and retry_after is None and scenario is not None and scenario.until is not None:
        retry_after = max(1, round(scenario.until - time.monotonic()))
    response = {
        "found": api.found,
        "not_found": api.not_found,
        "unauthorized": api.unauthorized,
        "server_error": api.server_error,
        "malformed": api.malformed,
        "unexpected_shape": api.unexpected_shape,
    }.get(name)
    if response is not None:
        return response(routed), name_shown
    return api.rate_limited(routed, retry_after), name_shown


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)) if length else b""
        if split.path.startswith("/_control/"):
            return self._send(self._control(split.path, parse_qs(split.query), body))
        parts = split.path.split("/", 2)
        api = FAKE_APIS.get(parts[1]) if len(parts) > 1 else None
        if api is None:
            return self._send(json_response(404, {"detail": f"no fake intel source at {split.path}"}))
        rest = "/" + (parts[2] if len(parts) > 2 else "")
        if not rest.startswith(api.base_path):
            return self._send(api.unknown_path(rest))
        path = rest[len(api.base_path) :] or "/"
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.command == "HEAD":
            # Health probes: not a lookup, never counted as one, never metered by the real APIs.
            state.health_probe(api.name)
            scenario = state.peek(api.name)
            status = 503 if scenario and scenario.name == "server_error" else 200
            return self._send(Response(status, b"", [("Content-Type", "application/json")]), head=True)
        req = Req(method=self.command, path=path, raw_query=split.query, query=parse_qs(split.query, keep_blank_values=True),
                  headers=headers, body=body)  # fmt: skip
        routed = api.route(req)
        if isinstance(routed, Response):
            state.record(
                Call(api.name, None, None, self.command, rest, routed.status, "contract_error", time.time(), _redacted(api, headers))
            )
            return self._send(api.decorate(routed, state, None))
        scenario = state.pick(api.name, routed.value)
        response, shown = answer(api, routed, scenario, state)
        state.record(
            Call(api.name, routed.ioc_type, routed.value, self.command, rest, response.status, shown, time.time(), _redacted(api, headers))
        )
        if scenario and scenario.delay:
            time.sleep(scenario.delay)
        return self._send(api.decorate(response, state, routed))

    def _control(self, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        state = self.server.state
        if path == "/_control/scenario" and self.command == "POST":
            try:
                data = json.loads(body or b"{}")
                options = {k: data[k] for k in ("value", "duration", "count", "delay", "retry_after") if data.get(k) is not None}
                state.set(str(data["source"]), str(data["scenario"]), **options)
            except (ValueError, KeyError, TypeError) as exc:
                return json_response(400, {"error": f"bad scenario request: {exc}"})
            return json_response(200, {"ok": True})
        if path == "/_control/reset" and self.command == "POST":
            state.reset()
            return json_response(200, {"ok": True})
        if path == "/_control/calls" and self.command == "GET":
            source, value = query.get("source", [None])[0], query.get("value", [None])[0]
            return json_response(200, state.snapshot(source, value))
        if path == "/_control/sources" and self.command == "GET":
            host = self.headers.get("Host", "127.0.0.1")
            return json_response(200, {name: f"http://{host}/{name}{api.base_path}" for name, api in FAKE_APIS.items()})
        return json_response(404, {"error": f"unknown control endpoint {self.command} {path}"})

    def _send(self, response: Response, *, head: bool = False) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if not head and self.command != "HEAD":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out and left
                self.wfile.write(response.body)


def _redacted(api: FakeApi, headers: dict[str, str]) -> dict[str, str]:
    secret = (api.key_header or "").lower()
    return {k: ("<present>" if k == secret else v) for k, v in headers.items() if k not in ("host", "content-length", "connection")}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: IntelState


class FakeIntel:
    """A running fake intel server. Use `start_fake_intel()`; stop with `.close()` or as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = IntelState()
        self._server = _Server((host, port), _Handler)
        self._server.state = self.state
        self.host, self.port = self._server.server_address[0], self._server.server_address[1]
        self.origin = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-intel", daemon=True)

    def start(self) -> FakeIntel:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeIntel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, source: str) -> str:
        """The base URL to pass as `lookup(..., base_url=...)` or env INTEL_<SOURCE>_URL."""
        return f"{self.origin}/{source}{FAKE_APIS[source].base_path}"

    def urls(self) -> dict[str, str]:
        return {name: self.url(name) for name in FAKE_APIS}

    def env(self) -> dict[str, str]:
        """INTEL_<SOURCE>_URL for every source, ready to merge into a process environment."""
        return {f"INTEL_{name.upper()}_URL": self.url(name) for name in FAKE_APIS}

    def set_scenario(self, source: str, scenario: str, **options: Any) -> None:
        self.state.set(source, scenario, **options)

    def reset(self) -> None:
        self.state.reset()

    def calls(self, source: str | None = None, value: str | None = None) -> list[Call]:
        return self.state.calls_for(source, value)

    def call_count(self, source: str | None = None, value: str | None = None) -> int:
        return self.state.count(source, value)

    def health_count(self, source: str) -> int:
        return self.state.health_calls[source]


def start_fake_intel(port: int = 0, *, host: str = "127.0.0.1") -> FakeIntel:
    return FakeIntel(host=host, port=port).start()
