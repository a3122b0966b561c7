"""One HTTP code path for every source: build the request from the declaration,
call once (no retries: the pipeline defers a task instead), map the outcome.

    lookup(...) -> SourceResult        never raises for anything the upstream does
    health(...) -> HealthResult        reachability only; spends no quota

Outcome mapping (the same for every source):

    a URL's userinfo              never sent: the URL is asked without it, the detail says so
    no key for a keyed source     auth_error, no call made
    type not declared             bad_request, no call made
    429                           rate_limited, retry_after from Retry-After (at most a day), else the source's default
    401, 403                      auth_error
    source.not_found_statuses     not_found
    other 4xx                     bad_request
    5xx, connection error         upstream_error, retryable
    3xx                           upstream_error (redirects are not followed: the key must not travel elsewhere)
    requests timeout              timeout, retryable
    2xx, body not JSON            upstream_error
    2xx, parse raised             upstream_error (the parse error, never the key, in `detail`)
    2xx                           the source's `parse`
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import requests

from threatflow.enrichment.model import EMPTY_EVIDENCE, Quota, ResultStatus, SourceResult, Verdict
from threatflow.enrichment.sources import REGISTRY
from threatflow.enrichment.sources.base import Parsed, Reply, Request, Source, as_int, header
from threatflow.platform.urls import without_userinfo

MAX_BODY_BYTES = 5 * 1024 * 1024
"""Bodies larger than this are refused (AbuseIPDB verbose can list 10,000 reports)."""
MAX_VALUE_CHARS = 4096
"""Longer IoC values are refused before any call (URLs are the longest IoCs; 4 KB is beyond any real one)."""
USER_AGENT = "ThreatFlow/0.1"
MAX_RETRY_AFTER_SECONDS = 86400.0
"""A longer Retry-After is read as a day: no quota window is longer, and the source's cool-down follows it."""


def resolve(source: Source | str) -> Source:
    if isinstance(source, Source):
        return source
    if source not in REGISTRY:
        raise KeyError(f"unknown intel source {source!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[source]


CREDENTIALS_WITHHELD = "credentials withheld: the source was asked about this URL without its userinfo (user:password@)"


def lookup(
    source: Source | str,
    ioc_type: str,
    value: str,
    *,
    session: requests.Session,
    api_key: str | None,
    timeout: float,
    base_url: str | None = None,
) -> SourceResult:
    """Ask one source about one IoC. `base_url` overrides the declaration's (env INTEL_<SOURCE>_URL, read in config).
    A URL's userinfo (credentials) is never sent: the source is asked about the URL without it, its answer stands
    for the URL as given, and the result's detail starts with CREDENTIALS_WITHHELD (it survives the 500-character cut
    of a stored result row)."""
    bare, had_userinfo = without_userinfo(value) if ioc_type == "url" else (value, False)
    result = _lookup(source, ioc_type, bare, session=session, api_key=api_key, timeout=timeout, base_url=base_url)
    if not had_userinfo:
        return result
    return replace(result, detail=f"{CREDENTIALS_WITHHELD}; {result.detail}" if result.detail else CREDENTIALS_WITHHELD)


def _lookup(
    source: Source | str,
    ioc_type: str,
    value: str,
    *,
    session: requests.Session,
    api_key: str | None,
    timeout: float,
    base_url: str | None,
) -> SourceResult:
    src = resolve(source)
    request = src.requests.get(ioc_type)
    if request is None:
        return _refused(src, ResultStatus.BAD_REQUEST, f"{src.name} cannot look up type {ioc_type!r}")
    if not value or len(value) > MAX_VALUE_CHARS or any(c in value for c in "\r\n\x00"):
        return _refused(src, ResultStatus.BAD_REQUEST, f"value must be 1..{MAX_VALUE_CHARS} characters without line breaks")
    if src.auth_header and src.key_required and not api_key:
        return _refused(src, ResultStatus.AUTH_ERROR, f"no API key configured for {src.name}")
    root = (base_url or src.base_url).rstrip("/")
    started = time.monotonic()
    first = _call(src, request, ioc_type, value, session=session, api_key=api_key, timeout=timeout, root=root)
    if first.result is not None:
        return _redact(first.result, api_key)
    reply = Reply(ioc_type=ioc_type, value=value, body=first.body)
    calls = 1
    quota = first.quota
    if src.follow is not None:
        try:
            second_request = src.follow(reply)
        except Exception as exc:  # a follow builder is parse code: an odd body must not crash the task
            return _upstream(src, f"unexpected response shape: {exc}", first.status, calls=1, api_key=api_key)
        if second_request is not None:
            remaining = max(0.1, timeout - (time.monotonic() - started))
            second = _call(src, second_request, ioc_type, value, session=session, api_key=api_key, timeout=remaining, root=root)
            calls = 2
            quota = second.quota or quota
            if second.result is not None:
                if second.result.status is not ResultStatus.NOT_FOUND:
                    return _redact(_with_calls(second.result, calls), api_key)
            else:
                reply = Reply(ioc_type=ioc_type, value=value, body=first.body, follow_body=second.body)
    try:
        parsed = src.parse(reply)
        if not isinstance(parsed, Parsed):
            raise TypeError(f"parse returned {type(parsed).__name__}")
    except Exception as exc:  # defensive by contract: any parse failure is the upstream's odd shape
        return _upstream(src, f"unexpected response shape: {exc}", first.status, calls=calls, api_key=api_key)
    return _redact(
        SourceResult(
            source=src.name,
            status=parsed.status,
            verdict=parsed.verdict,
            score=None if parsed.score is None else max(0, min(100, int(parsed.score))),
            evidence=parsed.evidence,
            retry_after=None,
            fetched_at=_now(),
            retryable=False,
            http_status=first.status,
            detail=parsed.detail,
            calls=calls,
            quota=quota,
        ),
        api_key,
    )


class HealthStatus(StrEnum):
    OK = "ok"  # answered with a status below 500
    DEGRADED = "degraded"  # answered with 5xx
    UNREACHABLE = "unreachable"  # connection refused, DNS failure, TLS failure
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class HealthResult:
    source: str
    status: HealthStatus
    reachable: bool
    http_status: int | None
    latency_ms: float
    checked_at: datetime
    detail: str
    probe: str
    """What was probed, e.g. "HEAD https://api.abuseipdb.com/api/v2/": never a metered endpoint."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status.value,
            "reachable": self.reachable,
            "http_status": self.http_status,
            "latency_ms": round(self.latency_ms, 1),
            "checked_at": self.checked_at.isoformat(),
            "detail": self.detail,
            "probe": self.probe,
        }


def health(
    source: Source | str,
    *,
    session: requests.Session,
    api_key: str | None,
    timeout: float,
    base_url: str | None = None,
) -> HealthResult:
    """Is the API reachable? A HEAD on the source's `health_path` (under its base URL), which is not a lookup
    endpoint, so no quota is spent; the key is not sent. Any HTTP answer below 500 (even 404/405) is reachable.
    `api_key` is accepted so callers can pass what they have; it is deliberately not sent."""
    del api_key  # not sent: a HEAD on a non-endpoint path never needs it, and no quota is touched
    src = resolve(source)
    url = (base_url or src.base_url).rstrip("/") + src.health_path
    probe = f"HEAD {url}"
    started = time.monotonic()
    try:
        response = session.head(url, timeout=timeout, allow_redirects=False, headers={"User-Agent": USER_AGENT})
    except requests.Timeout:
        return HealthResult(src.name, HealthStatus.TIMEOUT, False, None, _ms(started), _now(), f"no answer within {timeout}s", probe)
    except requests.RequestException as exc:
        return HealthResult(src.name, HealthStatus.UNREACHABLE, False, None, _ms(started), _now(), type(exc).__name__, probe)
    status = HealthStatus.DEGRADED if response.status_code >= 500 else HealthStatus.OK
    response.close()
    return HealthResult(src.name, status, True, response.status_code, _ms(started), _now(), f"HTTP {response.status_code}", probe)


# --- internals -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int | None
    body: Any = None
    result: SourceResult | None = None
    quota: Quota | None = None


def _call(
    src: Source,
    request: Request,
    ioc_type: str,
    value: str,
    *,
    session: requests.Session,
    api_key: str | None,
    timeout: float,
    root: str,
) -> _Outcome:
    url = root + request.path.replace("{value}", request.encode(value))
    headers = {"User-Agent": USER_AGENT, **src.headers}
    if src.auth_header and api_key:
        headers[src.auth_header] = api_key
    try:
        response = session.request(
            request.method,
            url,
            params={k: v.replace("{value}", value) for k, v in request.params.items()} or None,
            data={k: v.replace("{value}", value) for k, v in request.form.items()} if request.form is not None else None,
            json=_fill(request.json, value) if request.json is not None else None,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
    except requests.Timeout:
        return _Outcome(None, result=_failure(src, ResultStatus.TIMEOUT, None, f"no answer within {timeout}s", retryable=True))
    except requests.RequestException as exc:
        return _Outcome(
            None, result=_failure(src, ResultStatus.UPSTREAM_ERROR, None, f"connection failed: {type(exc).__name__}", retryable=True)
        )
    try:
        raw = _read(response, deadline=time.monotonic() + timeout)
    except requests.Timeout:
        return _Outcome(None, result=_failure(src, ResultStatus.TIMEOUT, response.status_code, "body not received in time", retryable=True))
    except (requests.RequestException, _TooLarge) as exc:
        return _Outcome(
            None, result=_failure(src, ResultStatus.UPSTREAM_ERROR, response.status_code, str(exc) or type(exc).__name__, retryable=True)
        )
    finally:
        response.close()
    status = response.status_code
    quota = _quota(src, response.headers)
    body, decoded = _decode(raw)
    message = _error_message(body) if decoded else ""
    if status == 429:
        return _Outcome(status, result=_failure(
            src, ResultStatus.RATE_LIMITED, status, message or "rate limited", retryable=True,
            retry_after=_retry_after(response.headers) or src.default_retry_after, quota=quota))  # fmt: skip
    if status in (401, 403):
        return _Outcome(status, result=_failure(src, ResultStatus.AUTH_ERROR, status, message or f"HTTP {status}", quota=quota))
    if status in src.not_found_statuses:
        return _Outcome(status, result=_failure(src, ResultStatus.NOT_FOUND, status, message, quota=quota))
    if status >= 500:
        return _Outcome(status, result=_failure(
            src, ResultStatus.UPSTREAM_ERROR, status, message or f"HTTP {status}", retryable=True,
            retry_after=_retry_after(response.headers), quota=quota))  # fmt: skip
    if 400 <= status < 500:
        return _Outcome(status, result=_failure(src, ResultStatus.BAD_REQUEST, status, message or f"HTTP {status}", quota=quota))
    if not 200 <= status < 300:
        return _Outcome(status, result=_failure(src, ResultStatus.UPSTREAM_ERROR, status, f"unexpected HTTP {status}", quota=quota))
    if not decoded:
        return _Outcome(status, result=_failure(src, ResultStatus.UPSTREAM_ERROR, status, "malformed JSON in response", quota=quota))
    return _Outcome(status, body=body, quota=quota)


class _TooLarge(Exception):
    pass


def _read(response: requests.Response, *, deadline: float) -> bytes:
    """The body, bounded in size and in total time (a server dripping bytes must not hold the task forever)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge(f"response larger than {MAX_BODY_BYTES} bytes")
        if time.monotonic() > deadline:
            raise requests.Timeout("body not received in time")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> tuple[Any, bool]:
    if not raw.strip():
        return None, False
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested deeper than the decoder goes
        return None, False
    return (_storable(body) if _UNSTORABLE_ESCAPE.search(raw) else body), True


# JSON escapes of what PostgreSQL stores in neither text nor jsonb: NUL, and UTF-16 surrogates (json.loads pairs
# the valid ones into one character, so those it leaves in a string are lone).
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(body: Any) -> Any:
    """The body with every NUL and lone surrogate dropped from its strings and keys: a tag or name holding one
    failed the cache's INSERT, and a classification "malicious\\u0000" was no "malicious"."""

    def clean(value: Any) -> Any:
        return _UNSTORABLE.sub("", value) if isinstance(value, str) else value

    root: list[Any] = [body]
    stack: list[Any] = [root]  # containers whose members are still to clean, no recursion; never a scalar, so
    while stack:  # what is held beside the body is one entry a container (a pair a value held 10x the body)
        container = stack.pop()
        if isinstance(container, dict):
            for key in [k for k in container if isinstance(k, str) and _UNSTORABLE.search(k)]:
                container[clean(key)] = container.pop(key)
            members: Any = container.items()
        else:
            members = enumerate(container)
        for key, value in members:
            if isinstance(value, str):
                container[key] = clean(value)
            elif isinstance(value, dict | list):
                stack.append(value)
    return root[0]


def _fill(template: Any, value: str) -> Any:
    if isinstance(template, str):
        return template.replace("{value}", value)
    if isinstance(template, Mapping):
        return {k: _fill(v, value) for k, v in template.items()}
    if isinstance(template, list | tuple):
        return [_fill(v, value) for v in template]
    return template


def _error_message(body: Any) -> str:
    """The human message of the usual error envelopes: VT `error.message`, AbuseIPDB `errors[0].detail`,
    HA / GreyNoise `message`, InternetDB `detail`, abuse.ch `query_status`."""
    text: Any = None
    if isinstance(body, Mapping):
        error, errors = body.get("error"), body.get("errors")
        if isinstance(error, Mapping):
            text = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
        elif isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            text = errors[0].get("detail")
        else:
            text = body.get("message") or body.get("detail") or body.get("query_status")
    return str(text)[:300] if text else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = header(headers, "Retry-After")
    if not raw:
        return None
    seconds = as_int(raw)
    if seconds is None:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, min(MAX_RETRY_AFTER_SECONDS, (when - _now()).total_seconds()))
    return float(max(0, min(MAX_RETRY_AFTER_SECONDS, seconds)))


def _quota(src: Source, headers: Mapping[str, str]) -> Quota | None:
    if src.read_quota is None:
        return None
    try:
        return src.read_quota(headers)
    except Exception:  # a garbled quota header is informational, never a failed lookup
        return None


def _failure(
    src: Source,
    status: ResultStatus,
    http_status: int | None,
    detail: str,
    *,
    retryable: bool = False,
    retry_after: float | None = None,
    quota: Quota | None = None,
) -> SourceResult:
    return SourceResult(
        source=src.name,
        status=status,
        verdict=Verdict.UNKNOWN,
        score=None,
        evidence=EMPTY_EVIDENCE,
        retry_after=retry_after,
        fetched_at=_now(),
        retryable=retryable,
        http_status=http_status,
        detail=detail,
        calls=1,
        quota=quota,
    )


def _refused(src: Source, status: ResultStatus, detail: str) -> SourceResult:
    return SourceResult(src.name, status, Verdict.UNKNOWN, None, EMPTY_EVIDENCE, None, _now(), detail=detail, calls=0)


def _upstream(src: Source, detail: str, http_status: int | None, *, calls: int, api_key: str | None) -> SourceResult:
    result = _failure(src, ResultStatus.UPSTREAM_ERROR, http_status, detail[:300])
    return _redact(_with_calls(result, calls), api_key)


def _with_calls(result: SourceResult, calls: int) -> SourceResult:
    return replace(result, calls=calls)


def _redact(result: SourceResult, api_key: str | None) -> SourceResult:
    """An upstream message must never carry the key into logs or storage."""
    if api_key and len(api_key) >= 6 and api_key in result.detail:
        return replace(result, detail=result.detail.replace(api_key, "***"))
    return result


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
