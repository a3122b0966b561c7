"""The IoC domain: enums, the batch item and per-item results, decay scoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from threatflow.iocs.types import IocType
from threatflow.platform.vocabulary import MAX_SOURCES, MAX_TAGS, Severity, Tlp

# The tags one IoC holds, as many as one item may name: every write unioned tags without limit (a MISP event's
# import adds `misp-event:<uuid>`; one IoC held 19,200 and its /related took 100 s). Past it a write keeps the
# stored tags and adds new ones while there is room; what it could not keep is counted (`tags_cut`).
MAX_TAGS_PER_IOC = MAX_TAGS
# The sources one IoC holds, by the same rule (`sources_cut`): they were unioned without limit too, one per MISP
# organisation or client-named source that reported the value.
MAX_SOURCES_PER_IOC = MAX_SOURCES
# A sighting's context as JSON (POST /iocs/{id}/sightings): kept whole in ioc_sightings for every sighting, it had no
# bound but the 32 MiB body limit.
MAX_SIGHTING_CONTEXT_BYTES = 16 * 1024

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "DecayPolicy",
    "FindRequest",
    "IocFilter",
    "IocRecord",
    "ItemResult",
    "ItemStatus",
    "Severity",
    "Tlp",
    "UpsertItem",
    "Verdict",
]


class Verdict(StrEnum):
    MALICIOUS = "malicious"
    SUSPICIOUS = "suspicious"
    HARMLESS = "harmless"
    UNKNOWN = "unknown"


class ItemStatus(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"


@dataclass(frozen=True)
class DecayPolicy:
    type: str
    ttl_days: int
    decay_lifetime_days: int
    decay_speed: float
    expired_below: int

    def score(self, base_score: int, last_seen: datetime, now: datetime) -> int:
        """MISP's polynomial decay: base * (1 - (t / lifetime) ** (1 / speed)), floored at 0."""
        age_days = max(0.0, (now - last_seen).total_seconds() / 86400)
        if age_days >= self.decay_lifetime_days:
            return 0
        remaining = 1.0 - float((age_days / self.decay_lifetime_days) ** (1.0 / self.decay_speed))
        return max(0, round(base_score * remaining))

    def explain(self, base_score: int, last_seen: datetime, now: datetime) -> dict[str, Any]:
        age_days = max(0.0, (now - last_seen).total_seconds() / 86400)
        return {
            "model": "polynomial",
            "formula": "score = base_score * (1 - (age_days / lifetime_days) ^ (1 / decay_speed))",
            "base_score": base_score,
            "age_days": round(age_days, 2),
            "lifetime_days": self.decay_lifetime_days,
            "decay_speed": self.decay_speed,
            "expired_below": self.expired_below,
            "score": self.score(base_score, last_seen, now),
        }


@dataclass
class UpsertItem:
    """One normalised, validated batch item, ready for the store."""

    index: int
    type: str
    value: str
    tags: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    tlp: str | None = None
    confidence: int | None = None
    expires_at: datetime | None = None
    seen_at: datetime | None = None
    first_seen: datetime | None = None  # None: seen_at
    description: str | None = None
    verdict: str | None = None
    warninglists: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ItemResult:
    index: int
    status: ItemStatus
    id: int | None = None
    reason: str | None = None
    type: str | None = None
    value: str | None = None
    tags_cut: int = 0  # the item's tags (with its batch duplicates') the IoC could not keep: MAX_TAGS_PER_IOC
    sources_cut: int = 0  # the same for its sources: MAX_SOURCES_PER_IOC
    active: bool = True  # False: its expiry was past when written, so it was stored inactive (answered only then)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status.value}
        if self.id is not None:
            out["id"] = self.id
        if self.type is not None:
            out["type"] = self.type
            out["value"] = self.value
        if self.reason is not None:
            out["reason"] = self.reason
        if self.tags_cut:
            out["tags_cut"] = self.tags_cut
        if self.sources_cut:
            out["sources_cut"] = self.sources_cut
        if not self.active:
            out["active"] = False
        return out


@dataclass(frozen=True)
class IocRecord:
    """One stored indicator, as services hand it around; `to_json()` is what the API shows."""

    id: int
    type: str
    value: str
    tags: list[str]
    sources: list[str]
    tlp: str
    confidence: int
    verdict: str
    base_score: int
    score: int
    severity: str
    first_seen: datetime
    last_seen: datetime
    detection_count: int
    expires_at: datetime | None
    active: bool
    warninglists: list[str]
    description: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> IocRecord:
        """From a row of `threatflow.iocs.repository.IOC_COLUMNS`, in that order."""
        return cls(*row)

    def to_json(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in _RECORD_FIELDS}
        for key in ("first_seen", "last_seen", "expires_at", "created_at", "updated_at"):
            if isinstance(out.get(key), datetime):
                out[key] = out[key].isoformat()
        return out


_RECORD_FIELDS = tuple(IocRecord.__dataclass_fields__)


MAX_PAGE = 1000
DEFAULT_PAGE = 100
# A filter's lists are bounded: PostgreSQL tests each row's tags against the whole list, so tags_any of
# 10,000 took 21 s on 200,000 IoCs (100,000: past the 60 s socket timeout, a 500); ids as DELETE's.
MAX_FILTER_TAGS = MAX_TAGS
MAX_FILTER_IDS = 10_000


class IocFilter(msgspec.Struct, forbid_unknown_fields=True):
    type: list[IocType] | None = None
    verdict: list[Verdict] | None = None
    severity: list[Severity] | None = None
    tlp: list[Tlp] | None = None
    max_tlp: Tlp | None = None
    score_min: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    score_max: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    tags: Annotated[list[str], msgspec.Meta(max_length=MAX_FILTER_TAGS)] | None = None  # all of these
    tags_any: Annotated[list[str], msgspec.Meta(max_length=MAX_FILTER_TAGS)] | None = None
    source: str | None = None
    active: bool | None = None
    expired: bool | None = None
    warninglisted: bool | None = None
    first_seen_from: datetime | None = None
    first_seen_to: datetime | None = None
    last_seen_from: datetime | None = None
    last_seen_to: datetime | None = None
    value_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    value_contains: Annotated[str, msgspec.Meta(min_length=3, max_length=512)] | None = None
    ids: Annotated[list[int], msgspec.Meta(max_length=MAX_FILTER_IDS)] | None = None


class FindRequest(IocFilter, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE
    cursor: str | None = None
