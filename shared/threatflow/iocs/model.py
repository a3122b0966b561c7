"""The IoC domain: enums, the batch item and per-item results, decay scoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from threatflow.platform.vocabulary import Severity, Tlp

__all__ = ["DecayPolicy", "ItemResult", "ItemStatus", "Severity", "Tlp", "UpsertItem", "Verdict"]


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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status.value}
        if self.id is not None:
            out["id"] = self.id
        if self.type is not None:
            out["type"] = self.type
            out["value"] = self.value
        if self.reason is not None:
            out["reason"] = self.reason
        return out
