"""What one intel source says about one IoC, normalised.

Every source, whatever its API looks like, answers with a `SourceResult`: a
`ResultStatus` (did the lookup work), a `Verdict` and a 0–100 `score` (what the
source thinks), and `Evidence` (why). Records are frozen and round-trip through
`to_dict()` / `from_dict()` so the pipeline can cache and store them as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

RAW_SUMMARY_LIMIT = 4096
"""Upper bound, in bytes of compact JSON, of `Evidence.raw_summary`."""


class Verdict(StrEnum):
    MALICIOUS = "malicious"
    SUSPICIOUS = "suspicious"
    HARMLESS = "harmless"
    UNKNOWN = "unknown"


class ResultStatus(StrEnum):
    """Whether the lookup itself worked; the pipeline decides ack / retry from it.

    ok              the source answered about the IoC (verdict may still be unknown)
    not_found       the source has no record of the IoC
    auth_error      401/403, or a keyed source called without a key: mark the source unhealthy
    rate_limited    429 / quota exhausted: retry after `retry_after` seconds, not a failure
    bad_request     the source refused the input (invalid value, wrong type)
    upstream_error  5xx (then `retryable`), malformed JSON, or an unexpected shape
    timeout         no answer within the timeout
    """

    OK = "ok"
    NOT_FOUND = "not_found"
    AUTH_ERROR = "auth_error"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Detections:
    """Engine counts (VirusTotal-style); `total` counts every engine that answered."""

    malicious: int = 0
    suspicious: int = 0
    harmless: int = 0
    undetected: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a source said what it said. Lists are de-duplicated and bounded; times are UTC."""

    malware_families: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    attack_ids: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    asn: str | None = None
    detections: Detections | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    references: tuple[str, ...] = ()
    raw_summary: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "malware_families": list(self.malware_families),
            "tags": list(self.tags),
            "attack_ids": list(self.attack_ids),
            "countries": list(self.countries),
            "asn": self.asn,
            "detections": None if self.detections is None else _detections_dict(self.detections),
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "references": list(self.references),
            "raw_summary": dict(self.raw_summary),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        detections = data.get("detections")
        return cls(
            malware_families=tuple(data.get("malware_families") or ()),
            tags=tuple(data.get("tags") or ()),
            attack_ids=tuple(data.get("attack_ids") or ()),
            countries=tuple(data.get("countries") or ()),
            asn=data.get("asn"),
            detections=Detections(**detections) if detections else None,
            first_seen=_parse_iso(data.get("first_seen")),
            last_seen=_parse_iso(data.get("last_seen")),
            references=tuple(data.get("references") or ()),
            raw_summary=dict(data.get("raw_summary") or {}),
        )


EMPTY_EVIDENCE = Evidence()


@dataclass(frozen=True, slots=True)
class Quota:
    """What a source said about its own quota in response headers (AbuseIPDB X-RateLimit-*, HA Api-Limits)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: datetime | None = None
    window: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "remaining": self.remaining, "reset_at": _iso(self.reset_at), "window": self.window}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quota:
        return cls(
            limit=data.get("limit"),
            remaining=data.get("remaining"),
            reset_at=_parse_iso(data.get("reset_at")),
            window=str(data.get("window") or ""),
        )


@dataclass(frozen=True, slots=True)
class SourceResult:
    """One source's normalised answer for one IoC.

    `score` is 0–100 (higher is worse) or None when the source gives no basis for one.
    `retry_after` is set (seconds) when status is rate_limited, and on 5xx when the source sent Retry-After.
    `retryable` is True for failures that may succeed later (5xx, connection errors, rate limits).
    `calls` is the number of HTTP requests the lookup made (0 when refused before calling; 2 for Hybrid Analysis).
    `detail` is a short, key-free explanation for humans (error message from the source, or why parsing failed).
    """

    source: str
    status: ResultStatus
    verdict: Verdict
    score: int | None
    evidence: Evidence
    retry_after: float | None
    fetched_at: datetime
    retryable: bool = False
    http_status: int | None = None
    detail: str = ""
    calls: int = 1
    quota: Quota | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status.value,
            "verdict": self.verdict.value,
            "score": self.score,
            "evidence": self.evidence.to_dict(),
            "retry_after": self.retry_after,
            "fetched_at": _iso(self.fetched_at),
            "retryable": self.retryable,
            "http_status": self.http_status,
            "detail": self.detail,
            "calls": self.calls,
            "quota": None if self.quota is None else self.quota.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceResult:
        fetched_at = _parse_iso(data.get("fetched_at")) or datetime.now(UTC)
        quota = data.get("quota")
        return cls(
            source=str(data["source"]),
            status=ResultStatus(data["status"]),
            verdict=Verdict(data.get("verdict") or Verdict.UNKNOWN),
            score=data.get("score"),
            evidence=Evidence.from_dict(data.get("evidence") or {}),
            retry_after=data.get("retry_after"),
            fetched_at=fetched_at,
            retryable=bool(data.get("retryable", False)),
            http_status=data.get("http_status"),
            detail=str(data.get("detail") or ""),
            calls=int(data.get("calls", 1)),
            quota=Quota.from_dict(quota) if quota else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SourceResult:
        return cls.from_dict(json.loads(text))


def _detections_dict(d: Detections) -> dict[str, int]:
    return {"malicious": d.malicious, "suspicious": d.suspicious, "harmless": d.harmless, "undetected": d.undetected, "total": d.total}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_iso(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
