"""Property-based fuzzing of every route of every HTTP function (Hypothesis).

Shared by tests/integration/test_fuzz_routes.py (a bounded budget in the test
command) and tests/perf/bench_gateway_limits.py (through the gateway, prints counts).
The property: whatever the method, path parameters, query, headers and body,
the answer is never a 5xx and every error is JSON.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

HTTP_FUNCTIONS = ("auth", "iocs", "threats", "admin", "detect", "flows", "enrichment")
# Functions whose routes score flows: the fuzz test promotes a small real model first, so a 503
# "no flow model is published" never stands in for exercising them.
MODEL_FUNCTIONS = ("detect", "flows", "enrichment")
QUERY_KEYS = [
    "limit", "cursor", "after", "before", "ids", "format", "max_tlp", "type", "source", "exact", "async", "tags",
    "verdict", "first_seen_from", "value_prefix", "bogus",
    "srcip", "dstip", "from", "to", "explain", "top", "predicted", "min_probability", "proto", "label",
    "service", "attack_cat", "predicted_cat",
]  # fmt: skip
NASTY_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "..",
    ".",
    "__x__",
    "%2e%2e",
    "9" * 30,
    str(2**63),
    "-1",
    "'; DROP TABLE iocs;--",
    "\u202e",
    "😀" * 10,
    "T1059",
    # values that once made 500s in flows' parsers: a zone id, a digit int() refuses, times at datetime's ends
    "fe80::1%eth0",
    "::ffff:10.0.0.1",
    "\u00b2",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+14:00",
    # the review's: an IPv6 spelling of a private IPv4 address, a raw file's hex port, a time long past retention
    "64:ff9b::a00:1",
    "0x000b",
    "1970-01-01T00:00:00Z",
]


def attack_data(shared_file: Path, tmp_dir: Path) -> Path:
    """The ATT&CK file the threats routes validate against: the shared one, else (a clone with no
    ../shared beside it) a STIX bundle of the technique ids the fuzz samples, so those routes are still
    exercised past their 503 "no ATT&CK data" instead of failing the run or skipping."""
    if shared_file.exists():
        return shared_file
    objects = [
        {
            "type": "attack-pattern",
            "id": f"attack-pattern--fuzz-{number}",
            "name": name,
            "external_references": [{"source_name": "mitre-attack", "external_id": tid}],
        }
        for number, (tid, name) in enumerate([("T1059", "Command and Scripting Interpreter"), ("T1059.001", "PowerShell")])
    ]
    path = tmp_dir / "attack-fuzz.json"
    path.write_text(json.dumps({"type": "bundle", "id": "bundle--fuzz", "objects": objects}))
    return path


_ints = st.one_of(
    st.integers(-10, 10_000), st.integers(min_value=2**62, max_value=2**80), st.integers(max_value=-(2**63) - 5, min_value=-(2**80))
)
_text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=40))
_scalars = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=False), _text)
_json = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)), max_leaves=12
)


# A flow the served model accepts (a DoS flow of the dev set, the partitioned layout): the routes that score flows
# (/detect, /detect/batch, /flows/batch) get it with a few fields changed, removed or renamed, so what they do with
# a nearly valid flow (scoring, storing, the bridge) is reached. Arbitrary JSON stopped at the first missing feature.
VALID_FLOW: dict[str, Any] = {
    "dur": 0.848492, "proto": "tcp", "service": "smtp", "state": "FIN", "spkts": 32, "dpkts": 22, "sbytes": 18157,
    "dbytes": 1822, "rate": 62.463757, "sttl": 254, "dttl": 252, "sload": 165847.1719, "dload": 16405.57617, "sloss": 13,
    "dloss": 8, "sinpkt": 27.370711, "dinpkt": 40.022047, "sjit": 1619.102512, "djit": 45.274363, "swin": 255,
    "stcpb": 1311165695, "dtcpb": 1269850746, "dwin": 255, "tcprtt": 0.052005, "synack": 0.007038, "ackdat": 0.044967,
    "smean": 567, "dmean": 83, "trans_depth": 0, "response_body_len": 0, "ct_srv_src": 1, "ct_state_ttl": 1,
    "ct_dst_ltm": 1, "ct_src_dport_ltm": 1, "ct_dst_sport_ltm": 1, "ct_dst_src_ltm": 1, "is_ftp_login": 0,
    "ct_ftp_cmd": 0, "ct_flw_http_mthd": 0, "ct_src_ltm": 1, "ct_srv_dst": 1, "is_sm_ips_ports": 0,
    "attack_cat": "DoS", "label": 1, "srcip": "175.45.176.4", "sport": 60065, "dstip": "149.171.126.5", "dsport": 25,
}  # fmt: skip
# Values a field of a flow is given: numbers at the edges of float, real, bigint and ports, text a CSV cell holds,
# addresses in every spelling, times at datetime's ends.
FLOW_VALUES: list[Any] = [
    True, None, "", " ", -0.0, 0, -1, 1e-50, 1e308, 2**31, 2**62, 2**63, 2**64, -(2**63) - 1, 65536, 80.5,
    "nan", "inf", "-inf", "1e309", "1_000", "\u0661", "0x000b", "0x", "-", "1e3", [1], {"a": 1},
    "Normal", "backdoors", " Fuzzers ", "normal\x00", 2, "1.0",
    "::", "::1", "64:ff9b::a00:1", "2002:c0a8:101::1", "::ffff:10.0.0.1", "fe80::1%eth0", "255.255.255.255", "224.0.0.1",
    "2026-01-01T00:00:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", 32503680000, 1.7e12,
]  # fmt: skip
_FLOW_KEYS = [*VALID_FLOW, "stime", "ltime", "id", "Sload", "ct_src_ ltm", "Label", "DUR", "bogus"]


@st.composite
def nearly_valid_flows(draw: Callable[[Any], Any]) -> dict[str, Any]:
    """VALID_FLOW, dated within the last 120 days (some past the retention) or not at all, often as it is, else with
    up to three fields set to edge values (FLOW_VALUES or any scalar), removed, or added under another spelling."""
    import time

    flow = dict(VALID_FLOW)
    if draw(st.booleans()):
        flow["stime"] = flow["ltime"] = int(time.time()) - draw(st.integers(0, 120 * 86400))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        key = draw(st.sampled_from(_FLOW_KEYS))
        if draw(st.integers(0, 3)) == 0:
            flow.pop(key, None)
        else:
            flow[key] = draw(st.one_of(st.sampled_from(FLOW_VALUES), _scalars))
    return flow


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@dataclass
class Tally:
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    shed: int = 0  # 503s from the login hashing budget: load shedding by design (auth/guard.py), counted apart
    missing: list[str] = field(default_factory=list)  # 503s naming reference data this environment lacks (allowed by issue 7)
    not_json: list[str] = field(default_factory=list)
    # 401s outside /api/v1/auth/ (where a fuzzed login is refused by design): the caller's token was refused, and
    # such a request never reached its handler. Every error is a JSON 401 then, so the other checks still pass.
    unauthenticated: list[str] = field(default_factory=list)
    # "METHOD pattern-ish path -> status" counts of the routes that score flows: how many fuzzed flows were scored (200)
    scored: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteInfo:
    method: str
    pattern: str
    body_fields: tuple[str, ...]


def routes_of(function: str) -> list[RouteInfo]:
    """The function's route table, read from its router."""
    import importlib

    from threatflow.runtime import Runtime

    module = {
        "auth": "threatflow.auth.api",
        "iocs": "threatflow.iocs.api",
        "threats": "threatflow.threats.api",
        "admin": "threatflow.admin.api",
        "detect": "threatflow.detect.api",
        "flows": "threatflow.flows.api",
        "enrichment": "threatflow.enrichment.api",
    }
    router = importlib.import_module(module[function]).build_router(Runtime.from_env())
    out = []
    for route in router.routes:
        names = tuple(getattr(route.body, "__struct_fields__", ()) if route.body is not None else ())
        out.append(RouteInfo(route.method, route.pattern, names))
    return out


def _fill(pattern: str, draw: Callable[[Any], Any]) -> str:
    import re

    def one(match: re.Match[str]) -> str:
        kind = match.group(2)
        if kind == "int":
            value = str(draw(st.one_of(st.integers(0, 50), st.integers(2**63 - 2, 2**70))))
        else:
            samples = ["1", "ipv4", "T1059", "heartbeat", "alice", "evil.com", "175.45.176.1", "::1", "ab" * 16]
            # address spellings the hunting and intel routes ({ip}) must answer with a 200 or a 400, never a 5xx
            samples += ["fe80::1%eth0", "::ffff:192.168.0.1", "2001:0DB8::0001", "010.1.1.1", "[::1]"]
            value = draw(st.one_of(_text, st.sampled_from(samples)))
        return urllib.parse.quote(value, safe="") if value else "x"

    return re.sub(r"\{(\w+)(?::(path|int))?\}", one, pattern)


@st.composite
def requests_for(draw: Callable[[Any], Any], routes: list[RouteInfo]) -> tuple[str, str, dict[str, str], bytes | None]:
    route = draw(st.sampled_from(routes))
    method = draw(st.sampled_from([route.method, route.method, route.method, "GET", "POST", "DELETE", "PATCH"]))
    path = _fill(route.pattern, draw)
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), _text, max_size=3))
    body: bytes | None = None
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        scores_flows = route.pattern in ("/api/v1/detect", "/api/v1/detect/batch", "/api/v1/flows/batch")
        shape = draw(st.sampled_from(["fields", "fields", "json", "raw", "deep", "none", *(["flows"] * 4 if scores_flows else [])]))
        if shape == "flows":
            flows = draw(st.lists(nearly_valid_flows(), min_size=1, max_size=4))
            document: dict[str, Any] = {"flow": flows[0]} if route.pattern == "/api/v1/detect" else {"flows": flows}
            if draw(st.integers(0, 3)) == 0:  # now and then one more field (positions, source, observed_at, skip_invalid ...)
                document[draw(st.sampled_from([k for k in route.body_fields if k != "flows"] or ["x"]))] = draw(_json)
            body = json.dumps(document).encode()
        elif shape == "fields" and route.body_fields:
            keys = draw(st.lists(st.sampled_from(route.body_fields), max_size=len(route.body_fields), unique=True))
            body = json.dumps({k: draw(_json) for k in keys}).encode()
        elif shape == "json":
            body = json.dumps(draw(_json)).encode()
        elif shape == "raw":
            body = draw(st.sampled_from([b"{", b"[", b'{"a":', b"\xff\xfe", b"null", b'"\\u0000"', b"1e999999", b"9" * 50]))
        elif shape == "deep":
            field_name = route.body_fields[0] if route.body_fields else "x"
            body = json.dumps({field_name: _deep(draw(st.sampled_from([401, 1200])))}).encode()
    return method, path, query, body


def check(tally: Tally, label: str, status: int, content_type: str, data: bytes) -> None:
    """`label` is "METHOD /path...": the path is its second word."""
    tally.requests += 1
    path = label.split(" ", 2)[1].split("?", maxsplit=1)[0]
    if path in ("/api/v1/detect", "/api/v1/detect/batch", "/api/v1/flows/batch"):
        key = f"{path} {status}"
        tally.scored[key] = tally.scored.get(key, 0) + 1
    if status == 401 and not label.split(" ", 2)[1].startswith("/api/v1/auth/"):
        tally.unauthenticated.append(f"{label} -> {data[:160]!r}")
    if status == 503 and " /ready" in label:
        return  # /ready's contract: 503 naming what is down (a loaded machine may time a probe out)
    if status == 503 and b"too many logins" in data:
        tally.shed += 1
        return
    if status == 503 and b'"dependency_unavailable"' in data and b"is not set" in data:
        tally.missing.append(f"{label} -> {data[:160]!r}")  # e.g. WARNINGLISTS_SOURCE unset: a clear 503, not a crash
        return
    if status >= 500:
        tally.server_errors.append(f"{label} -> {status} {data[:200]!r}")
    if status >= 400:
        try:
            body = json.loads(data)
            assert "error" in body
            assert content_type.startswith("application/json")
        except (ValueError, AssertionError):
            tally.not_json.append(f"{label} -> {status} {content_type} {data[:120]!r}")


def fuzz_over_http(port: int, sign_in: Callable[[], str], *, examples_per_function: int, tally: Tally) -> None:
    """Every HTTP function's routes, `examples_per_function` Hypothesis examples each, sent over a real
    socket to a server on 127.0.0.1:`port` (the gateway: gunicorn, as in production), answers in `tally`.
    `sign_in` gives a token, at the start and again after a revoke route answered 2xx (it ended the token).

    Through the real server, not Flask's test client: a gunicorn worker runs at the interpreter's default
    recursion limit, has its own parser for the request line and headers, and writes its own errors."""
    import http.client

    from hypothesis import HealthCheck, given, settings

    token = sign_in()
    for function in HTTP_FUNCTIONS:

        @settings(max_examples=examples_per_function, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(requests_for(routes_of(function)))
        def fuzz(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
            nonlocal token
            method, path, query, body = request
            target = path + ("?" + urllib.parse.urlencode(query) if query else "")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                connection.request(
                    method, target, body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                )
                response = connection.getresponse()
                check(tally, f"{method} {target}", response.status, response.getheader("Content-Type") or "", response.read())
                if response.status < 300 and path.endswith("/revoke"):
                    token = sign_in()
            except http.client.InvalidURL:
                pass  # the client refuses to send it (control characters in the path)
            finally:
                connection.close()

        fuzz()
