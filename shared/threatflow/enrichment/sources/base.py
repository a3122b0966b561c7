"""The shape of an intel source: a declaration plus one `parse`.

A source module declares where the API lives, how it authenticates, which
request answers each IoC type, how much to trust it, and the free tier's quota
(to seed the manifest). `client.lookup` does the HTTP and the error mapping
(401/403, 429, 5xx, timeouts, malformed JSON) the same way for every source, so
a `parse` function only reads a successful body and returns a `Parsed`.

`parse` may raise `ShapeError` (or anything else) on a body it does not
understand: the client turns that into status upstream_error, never a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from threatflow.enrichment.model import (
    EMPTY_EVIDENCE,
    RAW_SUMMARY_LIMIT,
    Detections,
    Evidence,
    Quota,
    ResultStatus,
    Verdict,
)

IOC_TYPES = ("ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256")
"""The IoC type names sources may declare (the values of `threatflow.iocs.types.IocType` they can look up)."""

HASH_TYPES = ("md5", "sha1", "sha256")
IP_TYPES = ("ipv4", "ipv6")


class ShapeError(ValueError):
    """The upstream body is valid JSON but not the shape the source documents."""


def path_segment(value: str) -> str:
    """Default encoding of the IoC inside a URL path: percent-encode everything but unreserved characters."""
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class Request:
    """How to ask one API about one IoC type.

    `path` (appended to the base URL) and the string values of `params`, `form`
    and `json` may contain `{value}`. In the path it is replaced by
    `encode(value)`; elsewhere by the raw value (requests encodes query strings
    and forms itself).
    """

    method: Literal["GET", "POST"]
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] | None = None
    json: Mapping[str, Any] | None = None
    encode: Callable[[str], str] = path_segment


@dataclass(frozen=True, slots=True)
class FreeTier:
    """The free tier's documented limits; None = none published. Seeds the manifest's quota settings."""

    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None
    note: str = ""

    def manifest_quota(self) -> dict[str, int]:
        """The seed for a manifest `sources.<name>.quota` ({per_minute, per_day?}). Where no per-minute limit is
        published, the hourly one spread over the minute, else a courteous 60/minute."""
        if self.per_minute is not None:
            per_minute = self.per_minute
        elif self.per_hour is not None:
            per_minute = max(1, -(-self.per_hour // 60))
        else:
            per_minute = 60
        quota = {"per_minute": per_minute}
        if self.per_day is not None:
            quota["per_day"] = self.per_day
        return quota


@dataclass(frozen=True, slots=True)
class Reply:
    """What `parse` reads: the IoC asked about and the decoded JSON body (plus the follow-up body, if any)."""

    ioc_type: str
    value: str
    body: Any
    follow_body: Any = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parse's answer. `status` is ok or not_found for real answers; bad_request / auth_error / upstream_error
    for APIs that report those inside a 200 body (abuse.ch's `query_status`)."""

    verdict: Verdict
    score: int | None
    evidence: Evidence = EMPTY_EVIDENCE
    status: ResultStatus = ResultStatus.OK
    detail: str = ""


def not_found(detail: str = "") -> Parsed:
    return Parsed(Verdict.UNKNOWN, None, EMPTY_EVIDENCE, ResultStatus.NOT_FOUND, detail)


@dataclass(frozen=True, slots=True)
class Source:
    """A declaration of one intel API. Static facts only; runtime settings live in the manifest's `sources:`."""

    name: str
    title: str
    base_url: str
    requests: Mapping[str, Request]
    """IoC type -> request. Its keys are the types this API can answer."""
    parse: Callable[[Reply], Parsed]
    reliability: float
    """0..1: how much the aggregate trusts this source's verdict (IntelOwl's 0–10 reliability / 10)."""
    free_tier: FreeTier
    auth_header: str | None = None
    """Header that carries the key; None for keyless APIs."""
    key_required: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    """Static headers sent on every request (Accept, User-Agent...)."""
    not_found_statuses: frozenset[int] = frozenset()
    """HTTP statuses that mean "no record" for this API (VirusTotal's 404), rather than an error."""
    follow: Callable[[Reply], Request | None] | None = None
    """A second request built from the first body (Hybrid Analysis: search, then overview)."""
    read_quota: Callable[[Mapping[str, str]], Quota | None] | None = None
    default_retry_after: float = 60.0
    """Seconds to wait after a 429 that carries no Retry-After."""
    health_path: str = "/"
    health_note: str = "HEAD on the base URL: not an API endpoint, so no quota is spent"
    docs: str = ""

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self.requests)

    @property
    def env_var(self) -> str:
        """The environment variable that overrides the base URL (pointed at the fakes in tests and `make run`)."""
        return f"INTEL_{self.name.upper()}_URL"

    @property
    def keyless(self) -> bool:
        return self.auth_header is None or not self.key_required


# --- defensive readers: upstream JSON is data, never trusted to be well typed -------------------------------------


def as_dict(value: Any, what: str = "body") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShapeError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def as_list(value: Any) -> list[Any]:
    """A list as is; None or a scalar string ("no results" messages) becomes []."""
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return []


def as_int(value: Any) -> int | None:
    """Accepts ints, integral floats and numeric strings ("11", " 0 "); anything else is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if math.isfinite(number) else None
    return None


def as_str(value: Any, limit: int = 200) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    return text[:limit] if text else None


def as_bool(value: Any) -> bool | None:
    """True/False, "true"/"false" (URLhaus `larted`), 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    return None


_NO_TIME_BEFORE = datetime(1970, 1, 2, tzinfo=UTC)
"""APIs write "never" as a time: Go's zero time (0001-01-01), the epoch (0, 1970-01-01). Read as sightings that
long ago they weighed nothing in the verdict (recency 0.5 ** (age / 30 days)), erasing the source's answer."""


def as_time(value: Any) -> datetime | None:
    """Epoch seconds (int or numeric string), ISO 8601, or abuse.ch's "2019-03-25 09:55:01 UTC"; UTC-aware.
    A time before 1970-01-02 is a placeholder for none, and None; so is one out of range (never an exception)."""
    parsed = _as_time(value)
    return parsed if parsed is not None and parsed >= _NO_TIME_BEFORE else None


def _as_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return _as_time(int(text)) if len(text) <= 20 else None  # int() refuses thousands of digits; no time has 20
    text = text.removesuffix(" UTC").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: its UTC is outside the range (0001-01-01T00:00:00+01:00)
        return None


def strings(values: Iterable[Any], limit: int = 50) -> tuple[str, ...]:
    """Distinct non-empty strings, in first-seen order, at most `limit`."""
    seen: dict[str, None] = {}
    for value in values:
        text = as_str(value)
        if text and text not in seen:
            seen[text] = None
            if len(seen) >= limit:
                break
    return tuple(seen)


def clamp_score(value: Any) -> int | None:
    number = as_int(value)
    return None if number is None else max(0, min(100, number))


def detections(malicious: Any, suspicious: Any, harmless: Any, undetected: Any, total: Any = None) -> Detections:
    mal, sus, harm, und = (max(0, as_int(v) or 0) for v in (malicious, suspicious, harmless, undetected))
    total_count = as_int(total)
    return Detections(mal, sus, harm, und, total_count if total_count is not None else mal + sus + harm + und)


def bounded_summary(value: Any, limit: int = RAW_SUMMARY_LIMIT) -> dict[str, Any]:
    """A JSON object no larger than `limit` bytes: lists and strings are cut harder until it fits."""
    if not isinstance(value, Mapping):
        value = {"value": value}
    for items, chars, depth in ((25, 300, 6), (10, 120, 4), (5, 60, 3), (3, 40, 2), (1, 20, 1)):
        trimmed = _trim(value, items, chars, depth)
        if len(json.dumps(trimmed, separators=(",", ":"), default=str)) <= limit:
            return trimmed  # type: ignore[no-any-return]
    return {"truncated": True}


def _trim(value: Any, items: int, chars: int, depth: int) -> Any:
    if isinstance(value, Mapping):
        if depth <= 0:
            return "{…}"
        return {str(k)[:chars]: _trim(v, items, chars, depth - 1) for k, v in list(value.items())[: items * 2]}
    if isinstance(value, list | tuple):
        if depth <= 0:
            return "[…]"
        return [_trim(v, items, chars, depth - 1) for v in list(value)[:items]]
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:chars]


# --- quota headers ---------------------------------------------------------------------------------------------


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def x_ratelimit_quota(headers: Mapping[str, str]) -> Quota | None:
    """AbuseIPDB: X-RateLimit-Limit / -Remaining (per day, per endpoint) / -Reset (epoch seconds)."""
    limit = as_int(header(headers, "X-RateLimit-Limit"))
    remaining = as_int(header(headers, "X-RateLimit-Remaining"))
    if limit is None and remaining is None:
        return None
    return Quota(limit=limit, remaining=remaining, reset_at=as_time(as_int(header(headers, "X-RateLimit-Reset"))), window="day")


def api_limits_quota(headers: Mapping[str, str]) -> Quota | None:
    """Hybrid Analysis: `Api-Limits: {"limits":{"minute":5,"hour":200},"used":{...},"limit_reached":false}`.
    Reports the tighter window (the one with fewer requests left)."""
    raw = header(headers, "Api-Limits")
    if not raw:
        return None
    try:
        data = json.loads(raw)
        limits, used = as_dict(data.get("limits"), "limits"), as_dict(data.get("used"), "used")
    except (ValueError, AttributeError, ShapeError):
        return None
    best: Quota | None = None
    for window in ("minute", "hour", "day"):
        limit, spent = as_int(limits.get(window)), as_int(used.get(window))
        if limit is None:
            continue
        quota = Quota(limit=limit, remaining=max(0, limit - (spent or 0)), window=window)
        if best is None or (quota.remaining or 0) < (best.remaining or 0):
            best = quota
    return best
