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

    def fixture_names(self, ioc_type: str) -> list[tuple[str, str]]:
        """The (kind, type) fixtures this fake serves for one IoC type; a missing one fails the coverage test."""
        return [("found", ioc_type), ("not_found", ioc_type)]

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
        body = fixture(self.name, "not_found", routed.ioc_type)
        body["error"]["message"] = f'{kind} "{routed.value}" not found'
        return json_response(404, body)

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


# --- AlienVault OTX --------------------------------------------------------------------------------------------


class Otx(FakeApi):
    name = "otx"
    base_path = "/api/v1"
    key_header = "x-otx-api-key"
    _SECTIONS = "general|reputation|geo|malware|url_list|passive_dns|analysis"

    def route(self, req: Req) -> Routed | Response:
        # `[^/]+` for the indicator: a URL indicator that is not quote_plus-encoded splits into more segments -> 404.
        match = re.fullmatch(rf"/indicators/(IPv4|IPv6|domain|hostname|file|url|cve)/([^/]+)/({self._SECTIONS})", req.path)
        if match is None:
            return json_response(404, {"detail": "Not found."})
        if req.method != "GET":
            return json_response(405, {"detail": f'Method "{req.method}" not allowed.'})
        from urllib.parse import unquote_plus

        slug, raw, _section = match.groups()
        value = unquote_plus(raw)
        kind: str | None
        if slug in ("IPv4", "IPv6"):
            kind = ip_type(value)
            kind = kind if kind == slug.lower() else None
        elif slug == "file":
            kind = hash_type(value)
        elif slug == "url":
            kind = "url" if "://" in value else None
        elif slug in ("domain", "hostname"):
            kind = "domain" if "." in value and "/" not in value else None
        else:
            kind = None
        if kind is None:
            return json_response(400, {"detail": f"Invalid {slug} indicator: {value}"})
        return Routed(kind, value.lower() if kind != "url" else value, self.key(req), (("slug", slug),))

    def _body(self, kind: str, routed: Routed) -> Response:
        body = fixture(self.name, kind, routed.ioc_type)
        body["indicator"] = routed.value
        body["type"] = body["type_title"] = routed.get("slug") or body.get("type")
        return json_response(200, body)

    def found(self, routed: Routed) -> Response:
        return self._body("found", routed)

    def not_found(self, routed: Routed) -> Response:
        return self._body("not_found", routed)  # 200 with pulse_info.count 0

    def unauthorized(self, routed: Routed) -> Response:
        return json_response(403, {"detail": "Invalid API key"})

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        # Undocumented body; OTX is a Django REST framework app, so its throttle message and Retry-After.
        wait = 60 if retry_after is None else retry_after
        return json_response(429, {"detail": f"Request was throttled. Expected available in {wait} seconds."}, [("Retry-After", str(wait))])

    def server_error(self, routed: Routed) -> Response:
        return json_response(502, {"detail": "Bad Gateway"})


# --- Hybrid Analysis v2 ----------------------------------------------------------------------------------------


class HybridAnalysis(FakeApi):
    name = "hybrid_analysis"
    base_path = "/api/v2"
    key_header = "api-key"
    LIMITS: ClassVar[dict[str, int]] = {"minute": 200, "hour": 2000}

    def fixture_names(self, ioc_type: str) -> list[tuple[str, str]]:
        if ioc_type in ("md5", "sha1", "sha256"):
            return [("found_search", "hash"), ("found_overview", "sha256"), ("found_legacy", "hash"), ("not_found", ioc_type)]
        return [("found_terms", ioc_type)]  # a miss is an empty `result`, built inline

    def route(self, req: Req) -> Routed | Response:
        if not req.headers.get("user-agent", "").strip():
            # HA rejects requests without a User-Agent (its UA blacklist); the exact body is not documented.
            return json_response(403, {"message": "Access denied: a User-Agent header is required"})
        key = self.key(req)
        if req.path == "/search/hash":
            if req.method == "GET":
                value, op = req.param("hash") or "", "search"
            elif req.method == "POST":  # legacy form, deprecated since v2.35.0 but still answered (array form)
                value, op = (req.form() or {}).get("hash", ""), "legacy"
            else:
                return json_response(405, {"message": "Method Not Allowed"})
            kind = hash_type(value)
            if kind is None:
                return json_response(
                    400, {"message": "Invalid hash: expected md5, sha1 or sha256", "validation_errors": [{"field": "hash"}]}
                )
            return Routed(kind, value.lower(), key, (("op", op),))
        if req.path == "/search/terms":
            if req.method != "POST":
                return json_response(405, {"message": "Method Not Allowed"})
            form = req.form()
            if not form:
                return json_response(400, {"message": "Search terms must be sent as form fields"})
            for field, kind in (("domain", "domain"), ("host", "ipv4"), ("url", "url")):
                if form.get(field):
                    return Routed(kind, form[field], key, (("op", "terms"), ("field", field)))
            return json_response(400, {"message": "No supported search term (domain, host, url) given"})
        match = re.fullmatch(r"/overview/([0-9a-fA-F]{64})", req.path)
        if match and req.method == "GET":
            return Routed("sha256", match.group(1).lower(), key, (("op", "overview"), ("follow", "1")))
        match = re.fullmatch(r"/report/([^/]+)/summary", req.path)
        if match and req.method == "GET":
            return Routed("report", match.group(1), key, (("op", "summary"), ("follow", "1")))
        return json_response(404, {"message": "Not Found"})

    def found(self, routed: Routed) -> Response:
        op = routed.get("op")
        if op == "search":
            body = fixture(self.name, "found_search", "hash")
            if routed.ioc_type == "sha256":
                body["sha256s"] = [routed.value]
            return json_response(200, body)
        if op == "legacy":
            rows = fixture(self.name, "found_legacy", "hash")
            for row in rows:
                row[routed.ioc_type] = routed.value
            return json_response(200, rows)
        if op == "terms":
            body = fixture(self.name, "found_terms", routed.ioc_type)
            body["search_terms"] = [{"id": routed.get("field"), "value": routed.value}]
            return json_response(200, body)
        if op == "overview":
            body = fixture(self.name, "found_overview", "sha256")
            body["sha256"] = routed.value
            return json_response(200, body)
        body = fixture(self.name, "found_summary", "report")
        body["job_id"] = routed.value
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        op = routed.get("op")
        if op == "legacy":
            return json_response(200, [])
        if op == "terms":
            return json_response(200, {"search_terms": [{"id": routed.get("field"), "value": routed.value}], "count": 0, "result": []})
        if op == "search":
            return json_response(404, fixture(self.name, "not_found", routed.ioc_type))
        return json_response(404, {"message": "Not Found"})

    def unauthorized(self, routed: Routed) -> Response:
        return json_response(401, {"message": "Failed to authenticate: api-key is missing or invalid"})

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        limits = {"limits": self.LIMITS, "used": self.LIMITS, "limit_reached": True}
        headers = [("Api-Limits", json.dumps(limits)), ("Retry-After", str(60 if retry_after is None else retry_after))]
        return json_response(429, {"message": "Exceeded maximum API requests per minute(200). Please try again later."}, headers)

    def decorate(self, response: Response, state: IntelState, routed: Routed | None) -> Response:
        if any(name == "Api-Limits" for name, _ in response.headers):
            return response
        used = state.count(self.name)
        limits = {"limits": self.LIMITS, "used": {"minute": min(used, 200), "hour": min(used, 2000)}, "limit_reached": False}
        return Response(response.status, response.body, [*response.headers, ("Api-Limits", json.dumps(limits)), ("Api-Version", "2.35.0")])


# --- abuse.ch: URLhaus, ThreatFox, MalwareBazaar ---------------------------------------------------------------


class _AbuseCh(FakeApi):
    key_header = "auth-key"

    def unauthorized(self, routed: Routed) -> Response:
        # Unauthenticated calls are 401 since 2025; the body text is not documented.
        return json_response(401, {"query_status": "unknown_auth_key"})

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        # abuse.ch publishes no rate-limit signal; a plain 429 (Retry-After only when a test asks).
        return json_response(429, {"query_status": "rate_limited"}, _retry_after(retry_after))

    def server_error(self, routed: Routed) -> Response:
        return Response(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", [("Content-Type", "text/html")])


class UrlHaus(_AbuseCh):
    name = "urlhaus"
    base_path = "/v1"

    def route(self, req: Req) -> Routed | Response:
        if req.path in ("/url", "/host", "/payload"):  # the server redirects to the trailing slash; a POST becomes a GET
            return Response(301, b"", [("Location", f"/urlhaus{self.base_path}{req.path}/")])
        if req.path not in ("/url/", "/host/", "/payload/"):
            return json_response(404, {"query_status": "unknown_endpoint"})
        if req.method != "POST":
            return json_response(200, {"query_status": "http_post_expected"})
        form = req.form() or {}
        key = self.key(req)
        if req.path == "/url/":
            url = form.get("url", "")
            return Routed("url", url, key) if "://" in url else json_response(200, {"query_status": "invalid_url"})
        if req.path == "/host/":
            host = form.get("host", "").lower()
            kind = ip_type(host) or ("domain" if "." in host and "/" not in host else None)
            return Routed(kind, host, key) if kind else json_response(200, {"query_status": "invalid_host"})
        for field, kind in (("md5_hash", "md5"), ("sha256_hash", "sha256")):
            if field in form:
                value = form[field].lower()
                return Routed(kind, value, key) if hash_type(value) == kind else json_response(200, {"query_status": f"invalid_{kind}"})
        return json_response(200, {"query_status": "no_hash_provided"})

    def found(self, routed: Routed) -> Response:
        body = fixture(self.name, "found", routed.ioc_type)
        if routed.ioc_type == "url":
            body["url"] = routed.value
        elif routed.ioc_type in ("md5", "sha256"):
            body[f"{routed.ioc_type}_hash"] = routed.value
        else:
            body["host"] = routed.value
            body["urlhaus_reference"] = f"https://urlhaus.abuse.ch/host/{routed.value}/"
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        return json_response(200, fixture(self.name, "not_found", routed.ioc_type))


class ThreatFox(_AbuseCh):
    name = "threatfox"
    base_path = "/api/v1"

    def route(self, req: Req) -> Routed | Response:
        if req.path != "/":
            return json_response(404, {"query_status": "unknown_endpoint"})
        if req.method != "POST":
            return json_response(405, {"query_status": "http_post_expected"})
        body = req.json()
        if not isinstance(body, dict):  # a form body (or no body) is not a query ThreatFox understands
            return json_response(200, {"query_status": "unknown_query", "data": "Unknown query"})
        if body.get("query") != "search_ioc":
            return json_response(200, {"query_status": "unknown_query", "data": f"Unknown query {body.get('query')!r}"})
        term = str(body.get("search_term") or "").strip()
        if not term:
            return json_response(200, {"query_status": "illegal_search_term", "data": "Search term missing"})
        kind = ip_type(term) or hash_type(term) or ("url" if "://" in term else "domain")
        return Routed(kind, term if kind == "url" else term.lower(), self.key(req))

    def found(self, routed: Routed) -> Response:
        body = fixture(self.name, "found", routed.ioc_type)
        for row in body["data"]:
            row["ioc"] = f"{routed.value}:443" if routed.ioc_type in ("ipv4", "ipv6") else routed.value
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        return json_response(200, fixture(self.name, "not_found", routed.ioc_type))


class MalwareBazaar(_AbuseCh):
    name = "malwarebazaar"
    base_path = "/api/v1"

    def route(self, req: Req) -> Routed | Response:
        if req.path != "/":
            return json_response(404, {"query_status": "unknown_endpoint"})
        if req.method != "POST":
            return json_response(200, {"query_status": "http_post_expected"})
        form = req.form()
        if form is None:  # a JSON body: MalwareBazaar reads forms only
            return json_response(200, {"query_status": "no_query"})
        if form.get("query") != "get_info":
            return json_response(200, {"query_status": "unknown_selector" if form.get("query") else "no_query"})
        value = form.get("hash", "").strip().lower()
        if not value:
            return json_response(200, {"query_status": "no_hash_provided"})
        kind = hash_type(value)
        return Routed(kind, value, self.key(req)) if kind else json_response(200, {"query_status": "illegal_hash"})

    def found(self, routed: Routed) -> Response:
        body = fixture(self.name, "found", routed.ioc_type)
        body["data"][0][f"{routed.ioc_type}_hash"] = routed.value
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        return json_response(200, fixture(self.name, "not_found", routed.ioc_type))


# --- Shodan InternetDB -----------------------------------------------------------------------------------------


class InternetDB(FakeApi):
    name = "internetdb"
    base_path = ""
    key_header = None
    key_required = False

    def route(self, req: Req) -> Routed | Response:
        from urllib.parse import unquote

        match = re.fullmatch(r"/([^/]+)", req.path)
        if match is None:
            return json_response(404, {"detail": "Not Found"})
        if req.method != "GET":
            return json_response(405, {"detail": "Method Not Allowed"})
        value = unquote(match.group(1))
        kind = ip_type(value)
        if kind is None:  # FastAPI-style validation error; exact text undocumented
            return json_response(422, {"detail": "Invalid IP address"})
        return Routed(kind, value, None)

    def found(self, routed: Routed) -> Response:
        body = fixture(self.name, "found", routed.ioc_type)
        body["ip"] = routed.value
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        return json_response(404, fixture(self.name, "not_found", routed.ioc_type))

    def unauthorized(self, routed: Routed) -> Response:
        return json_response(403, {"detail": "Forbidden"})  # keyless: only a blocked client sees this

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        return json_response(429, {"detail": "Too Many Requests"}, _retry_after(retry_after))  # no published limit

    def server_error(self, routed: Routed) -> Response:
        return json_response(500, {"detail": "Internal Server Error"})


# --- GreyNoise Community ---------------------------------------------------------------------------------------


class GreyNoise(FakeApi):
    name = "greynoise"
    base_path = "/v3/community"
    key_header = "key"
    key_required = False  # unauthenticated calls work, under the tighter "unauthenticated" plan

    def route(self, req: Req) -> Routed | Response:
        match = re.fullmatch(r"/([^/]+)", req.path)
        if match is None:
            return json_response(404, {"message": "Not Found"})
        if req.method != "GET":
            return json_response(405, {"message": "Method Not Allowed"})
        value = match.group(1)
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is None or address.version != 4 or not address.is_global:
            return json_response(400, {"message": "Request is not a valid routable IPv4 address"})
        return Routed("ipv4", value, self.key(req))

    def found(self, routed: Routed) -> Response:
        body = fixture(self.name, "found", routed.ioc_type)
        body["ip"] = routed.value
        body["link"] = f"https://viz.greynoise.io/ip/{routed.value}"
        return json_response(200, body)

    def not_found(self, routed: Routed) -> Response:
        body = fixture(self.name, "not_found", routed.ioc_type)
        body["ip"] = routed.value
        return json_response(404, body)

    def unauthorized(self, routed: Routed) -> Response:
        return json_response(401, {"message": "Invalid API key"})

    def rate_limited(self, routed: Routed, retry_after: int | None) -> Response:
        if routed.key:
            plan = {"plan": "community", "rate-limit": "50-lookups/week", "plan_url": "https://greynoise.io/pricing",
                    "message": "You have hit your weekly rate limit of 50 requests per week."}  # fmt: skip
        else:
            plan = {"plan": "unauthenticated", "rate-limit": "100-lookups/day", "plan_url": "https://greynoise.io/pricing",
                    "message": "You have hit your daily rate limit of 100 requests per day. Please create a free account."}  # fmt: skip
        return json_response(429, plan, _retry_after(retry_after))

    def server_error(self, routed: Routed) -> Response:
        return json_response(500, {"message": "Encountered error while performing request"})


FAKE_APIS: dict[str, FakeApi] = {
    api.name: api
    for api in (VirusTotal(), AbuseIPDB(), Otx(), HybridAnalysis(), UrlHaus(), ThreatFox(), MalwareBazaar(), InternetDB(), GreyNoise())
}
