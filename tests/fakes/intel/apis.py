"""Each source's documented contract, as a fake: what a right request looks like, what a wrong one gets,
and the found / not-found / error bodies (from `fixtures/<source>/`), with the real status codes and headers.

Where the reference (`../shared/docs/ti-api-reference.md`) leaves a body undocumented (for example OTX's 429),
the fake answers with a plausible JSON error and says so in a comment: the client must not depend on its text.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from .server import IntelState

FIXTURES = Path(__file__).parent / "fixtures"
GROUPS = {"md5": "hash", "sha1": "hash", "sha256": "hash", "ipv4": "ip", "ipv6": "ip"}
_HASH_TYPES = {32: "md5", 40: "sha1", 64: "sha256"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class Response(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[str, str]]


@dataclass(frozen=True)
class Req:
    method: str
    path: str  # below the source's base path, still percent-encoded
    raw_query: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def form(self) -> dict[str, str] | None:
        """The urlencoded form body, or None when the body is not a form."""
        if "application/x-www-form-urlencoded" not in self.headers.get("content-type", ""):
            return None
        from urllib.parse import parse_qs

        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def json(self) -> Any:
        if "application/json" not in self.headers.get("content-type", ""):
            return None
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass(frozen=True)
class Routed:
    ioc_type: str
    value: str
    key: str | None
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        return dict(self.extra).get(name)


def json_response(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(body).encode(), [("Content-Type", "application/json"), *(headers or [])])


@cache
def _load(source: str, name: str) -> Any:
    return json.loads((FIXTURES / source / f"{name}.json").read_text())


def fixture_path(source: str, kind: str, ioc_type: str) -> Path | None:
    """`<kind>_<type>.json`, else `<kind>_<group>.json` (hash, ip), else `<kind>.json`; None if none exists."""
    for name in (f"{kind}_{ioc_type}", f"{kind}_{GROUPS.get(ioc_type, ioc_type)}", kind):
        path = FIXTURES / source / f"{name}.json"
        if path.exists():
            return path
    return None


def fixture(source: str, kind: str, ioc_type: str) -> Any:
    path = fixture_path(source, kind, ioc_type)
    if path is None:
        raise FileNotFoundError(f"no {kind} fixture for {source}/{ioc_type} under {FIXTURES / source}")
    return copy.deepcopy(_load(source, path.stem))


@cache
def _known() -> dict[str, frozenset[str]]:
    data = json.loads((FIXTURES / "known.json").read_text())
    return {ioc_type: frozenset(v.lower() for v in values) for ioc_type, values in data.items() if not ioc_type.startswith("_")}


def is_known(ioc_type: str, value: str) -> bool:
    """Values the `auto` scenario answers as found (the dev stack's demo IoCs)."""
    return value.lower() in _known().get(ioc_type, frozenset())


def hash_type(value: str) -> str | None:
    return _HASH_TYPES.get(len(value)) if _HEX.match(value) else None


def ip_type(value: str) -> str | None:
    try:
        return "ipv4" if ipaddress.ip_address(value).version == 4 else "ipv6"
    except ValueError:
        return None


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class FakeApi:
    """Defaults shared by the fakes; each source overrides what its API does differently."""

    name: ClassVar[str]
    base_path: ClassVar[str]
    key_header: ClassVar[str | None] = None
    key_required: ClassVar[bool] = True

    def key(self, req: Req) -> str | None:
        return req.headers.get(self.key_header.lower()) if self.key_header else None

    def route(self, req: Req) -> Routed | Response:
        raise NotImplementedError

    def found(self, routed: Routed) -> Response:
        raise NotImplementedError

    def not_found(self, routed: Routed) -> Response:
        raise NotImplementedError

    def unauthorized(self, routed: Routed) -> Response:
        raise NotImplementedError

    def missing_key(self, routed: Routed) -> Response:
        return self.unauthorized(routed)

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        raise NotImplementedError

    def server_error(self, routed: Routed) -> Response:
        return json_response(500, {"message": "Internal Server Error"})

    def malformed(self, routed: Routed) -> Response:
        # A body cut mid-way, as a proxy or an overloaded upstream sends it, still labelled JSON.
        whole = self.found(routed).body
        return Response(200, whole[: max(1, len(whole) // 2)], [("Content-Type", "application/json")])

    def unexpected_shape(self, routed: Routed) -> Response:
        return json_response(200, ["unexpected", {"shape": True}])

    def unknown_path(self, path: str) -> Response:
        return json_response(404, {"detail": "Not Found"})

    def decorate(self, response: Response, state: IntelState, routed: Routed | None) -> Response:
        """Headers every response carries (quota headers)."""
        return response


def _retry_after(retry_after: int | None) -> list[tuple[str, str]]:
    return [] if retry_after is None else [("Retry-After", str(retry_after))]


# --- VirusTotal v3 ---------------------------------------------------------------------------------------------


class VirusTotal(FakeApi):
    name = "virustotal"
    base_path = "/api/v3"
    key_header = "x-apikey"
    _KINDS: ClassVar[dict[str, str]] = {"files": "File", "urls": "URL", "domains": "Domain", "ip_addresses": "IP address"}

    @staticmethod
    def error(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return json_response(status, {"error": {"code": code, "message": message}}, headers)

    def route(self, req: Req) -> Routed | Response:
        match = re.fullmatch(r"/(files|urls|domains|ip_addresses)/([^/]+)", req.path)
        if match is None:
            return self.error(404, "NotFoundError", f"Resource not found: {req.path}")
        collection, ident = match.groups()
        if req.method != "GET":
            return self.error(400, "BadRequestError", f"Method {req.method} not allowed for this resource")
        from urllib.parse import unquote

        ident = unquote(ident)
        key = self.key(req)
        if collection == "files":
            kind = hash_type(ident)
            if kind is None:
                return self.error(400, "InvalidArgumentError", f"Invalid file hash: {ident}")
            return Routed(kind, ident.lower(), key)
        if collection == "urls":
            if re.fullmatch(r"[0-9a-f]{64}", ident):
                return Routed("url", ident, key, (("sha256", ident),))
            if not re.fullmatch(r"[A-Za-z0-9_-]+", ident):  # standard base64 (+ /) or padding (=) is not an id
                return self.error(404, "NotFoundError", f'URL "{ident}" not found')
            try:
                url = base64.urlsafe_b64decode(ident + "=" * (-len(ident) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return self.error(404, "NotFoundError", f'URL "{ident}" not found')
            return Routed("url", url, key, (("sha256", sha256_hex(url)),))
        if collection == "ip_addresses":
            kind = ip_type(ident)
            if kind is None:
                return self.error(400, "InvalidArgumentError", f"Invalid IP address: {ident}")
            return Routed(kind, ident, key)
        return Routed("domain", ident.lower(), key)

    def found(self, routed: Routed) -> Response:
        body = fixture(self.name, "found", routed.ioc_type)
        data, attributes = body["data"], body["data"]["attributes"]
        if routed.ioc_type in ("md5", "sha1", "sha256"):
            attributes[routed.ioc_type] = routed.value
            if routed.ioc_type == "sha256":
                data["id"] = routed.value
        elif routed.ioc_type == "url":
            data["id"] = routed.get("sha256")
            if not re.fullmatch(r"[0-9a-f]{64}", routed.value):
                attributes["url"] = routed.value
        else:
            data["id"] = routed.value
        data["links"] = {"self": f"https://www.virustotal.com/api/v3/{data['type']}s/{data['id']}"}
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        kind = {"url": "URL", "domain": "Domain", "ipv4": "IP address", "ipv6": "IP address"}.get(routed.ioc_type, "File")
        return self.error(404, "NotFoundError", f'{kind} "{routed.value}" not found')

    def unauthorized(self, routed: Routed) -> Response:
        return self.error(401, "WrongCredentialsError", "Wrong API key")

    def missing_key(self, routed: Routed) -> Response:
        return self.error(401, "AuthenticationRequiredError", "X-Apikey header is missing")

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        # v3 documents no rate-limit headers; Retry-After only when a test asks for one.
        return self.error(429, "QuotaExceededError", "Quota exceeded", _retry_after(retry_after))

    def server_error(self, routed: Routed) -> Response:
        return self.error(503, "TransientError", "Transient error, please retry")


# --- AbuseIPDB v2 ----------------------------------------------------------------------------------------------


class AbuseIPDB(FakeApi):
    name = "abuseipdb"
    base_path = "/api/v2"
    key_header = "key"
    DAILY_LIMIT = 1000

    def _wants_json(self, req_headers: dict[str, str]) -> bool:
        return "application/json" in req_headers.get("accept", "")

    def error(self, status: int, detail: str, *, parameter: str | None = None, headers: list[tuple[str, str]] | None = None,
              html: bool = False) -> Response:  # fmt: skip
        if html:  # without Accept: application/json, AbuseIPDB answers errors with an HTML page
            page = f"<!DOCTYPE html><html><body><h1>{status}</h1><p>{detail}</p></body></html>".encode()
            return Response(status, page, [("Content-Type", "text/html; charset=UTF-8"), *(headers or [])])
        error: dict[str, Any] = {"detail": detail, "status": status}
        if parameter:
            error["source"] = {"parameter": parameter}
        return json_response(status, {"errors": [error]}, headers)

    def route(self, req: Req) -> Routed | Response:
        html = not self._wants_json(req.headers)
        if req.path != "/check":
            return self.error(404, "Not Found", html=html)
        if req.method != "GET":
            return self.error(405, "The method is not allowed for the requested URL.", html=html)
        ip = req.param("ipAddress")
        raw = re.search(r"(?:^|&)ipAddress=([^&]*)", req.raw_query)
        kind = ip_type(ip or "")
        if kind is None or (raw is not None and ":" in raw.group(1)):  # IPv6 must arrive URL-encoded
            return self.error(
                422,
                "The ip address must be a valid IPv4 or IPv6 address (e.g. 8.8.8.8 or 2001:4860:4860::8888).",
                parameter="ipAddress",
                html=html,
            )
        max_age = req.param("maxAgeInDays")
        if max_age is not None and not (max_age.isdigit() and 1 <= int(max_age) <= 365):
            return self.error(422, "The max age in days must be between 1 and 365.", parameter="maxAgeInDays", html=html)
        verbose = "verbose" in req.query and (req.param("verbose") or "true").lower() not in ("false", "0")
        extra = (("verbose", "1" if verbose else ""), ("html", "1" if html else ""))
        return Routed(kind, str(ip), self.key(req), extra)

    def _data(self, kind: str, routed: Routed) -> Response:
        body = fixture(self.name, kind, routed.ioc_type)
        data = body["data"]
        data["ipAddress"] = routed.value
        data["ipVersion"] = 4 if routed.ioc_type == "ipv4" else 6
        if not routed.get("verbose"):
            data.pop("reports", None)
            data.pop("countryName", None)
        return json_response(200, body)

    def found(self, routed: Routed) -> Response:
        return self._data("found", routed)

    def not_found(self, routed: Routed) -> Response:
        return self._data("not_found", routed)  # never reported: 200, totalReports 0, score 0

    def unauthorized(self, routed: Routed) -> Response:
        return self.error(
            401,
            "Authentication failed. Your API key is either missing, incorrect, or revoked. Note: The APIv2 key differs from the APIv1 key.",
            html=bool(routed.get("html")),
        )

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        reset = _next_midnight()
        wait = retry_after if retry_after is not None else max(1, int(reset - time.time()))
        headers = [("Retry-After", str(wait)), ("X-RateLimit-Limit", str(self.DAILY_LIMIT)), ("X-RateLimit-Remaining", "0"),
                   ("X-RateLimit-Reset", str(int(reset)))]  # fmt: skip
        detail = f"Daily rate limit of {self.DAILY_LIMIT} requests exceeded for this endpoint. See headers for additional details."
        return self.error(429, detail, headers=headers, html=bool(routed.get("html")))

    def server_error(self, routed: Routed) -> Response:
        return self.error(500, "Internal Server Error", html=bool(routed.get("html")))

    def decorate(self, response: Response, state: IntelState, routed: Routed | None) -> Response:
        if response.status == 429 or routed is None:
            return response
        remaining = max(0, self.DAILY_LIMIT - state.count(self.name))
        headers = [("X-RateLimit-Limit", str(self.DAILY_LIMIT)), ("X-RateLimit-Remaining", str(remaining)),
                   ("X-RateLimit-Reset", str(int(_next_midnight())))]  # fmt: skip
        return Response(response.status, response.body, response.headers + headers)


def _next_midnight() -> float:
    now = datetime.now(UTC)
    return (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)).timestamp()


FAKE_APIS: dict[str, FakeApi] = {api.name: api for api in (VirusTotal(), AbuseIPDB())}
