"""The messages of the pipeline, typed. Every payload carries the schema version (platform.events.encode)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from threatflow.platform.errors import ValidationError

TOPIC_REQUESTED = "ioc-enrichment-requested"
TOPIC_TASKS = "enrichment-tasks"
TOPIC_COMPLETED = "enrichment-completed"
AUTO_ENRICH_ORIGIN = "ingest"


def auto_enrich_request(ioc_ids: Sequence[int], *, tlps: Sequence[str] | None = None) -> dict[str, Any]:
    """ioc-enrichment-requested for newly stored IoCs (any path that stores them: the IoC API, imports,
    the flow bridge): enrich-dispatch gives each its own run with the manifest's `auto_enrich` sources
    and skips warninglisted ones. Publish it with the attribute origin=AUTO_ENRICH_ORIGIN.
    `tlps`, one per id: the TLP each IoC's auto-enrichment was charged at (iocs POST /batch); enrich-dispatch sends
    it at no lower TLP, so lowering an IoC's TLP before dispatch asks no source that was not charged."""
    out: dict[str, Any] = {"origin": AUTO_ENRICH_ORIGIN, "ioc_ids": [int(i) for i in ioc_ids]}
    if tlps is not None:
        out["tlps"] = [str(t) for t in tlps]
    return out


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValidationError(f"{name} must be a {kind.__name__}", field=name)
    return value


def _epoch_or_none(data: Mapping[str, Any], name: str) -> float | None:
    """An optional time in epoch seconds: a positive, finite number that is a datetime. A string (float() raised
    ValueError), NaN or one out of datetime's range (the worker's fromtimestamp raised) was retried to the dead
    letter; true (1.0) or 0 stood for 1970, so a forced task took any cached answer however old."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        try:
            datetime.fromtimestamp(value, UTC)
            return float(value)
        except (OverflowError, ValueError, OSError):
            pass
    raise ValidationError(f"{name} must be a positive number of epoch seconds", field=name)


def _count(data: Mapping[str, Any], name: str) -> int:
    """An optional count (0 when missing): a non-negative integer. int() of text raised ValueError, retried to
    the dead letter like a failure of the source; a float was truncated, a bool counted."""
    value = data.get(name)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValidationError(f"{name} must be a non-negative integer", field=name)


@dataclass(frozen=True)
class EnrichRequest:
    """ioc-enrichment-requested: enrich one stored IoC."""

    run_id: str
    ioc_id: int
    ioc_type: str
    value: str
    tlp: str = "amber"
    warninglists: Sequence[str] = ()
    force: bool = False
    sources: Sequence[str] = ()
    origin: str = "api"
    batch_id: str | None = None
    # The run was recorded (queued) before this request was published (POST /enrich, /batch; the queued sweep
    # publishes the stored request again), so a run that is gone was cancelled: its publish failed and the caller was
    # answered an error. Auto-enrichment's requests are not recorded first (enrich-dispatch creates their runs).
    recorded: bool = False
    # `tlp` comes from a record covering the value (a range containing the address, a 6to4 or Teredo IoC carrying it:
    # intel.enrichment.host_tlps), stricter than the IoC's own: the run's readers are the IoC's, so its skip
    # reasons name no TLP.
    tlp_withheld: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "warninglists": list(self.warninglists), "sources": list(self.sources)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnrichRequest:
        return cls(
            run_id=_field(data, "run_id", str),
            ioc_id=_field(data, "ioc_id", int),
            ioc_type=_field(data, "ioc_type", str),
            value=_field(data, "value", str),
            tlp=str(data.get("tlp") or "amber"),
            warninglists=tuple(data.get("warninglists") or ()),
            force=bool(data.get("force", False)),
            sources=tuple(data.get("sources") or ()),
            origin=str(data.get("origin") or "api"),
            batch_id=data.get("batch_id"),
            recorded=data.get("recorded") is True,
            tlp_withheld=data.get("tlp_withheld") is True,
        )


@dataclass(frozen=True)
class Task:
    """enrichment-tasks (attribute source): one IoC for one source."""

    run_id: str
    ioc_id: int
    ioc_type: str
    value: str
    source: str
    force: bool = False
    not_before: float | None = None
    deferrals: int = 0
    reasons: list[str] = field(default_factory=list)
    # A forced task: when its run was requested (epoch seconds). An answer fetched since then is the fresh
    # one the run asked for, so a task delivered again (or fanned out again) takes it instead of a second call.
    requested_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            run_id=_field(data, "run_id", str),
            ioc_id=_field(data, "ioc_id", int),
            ioc_type=_field(data, "ioc_type", str),
            value=_field(data, "value", str),
            source=_field(data, "source", str),
            force=bool(data.get("force", False)),
            not_before=_epoch_or_none(data, "not_before"),
            deferrals=_count(data, "deferrals"),
            reasons=list(data.get("reasons") or [])[-5:],
            requested_at=_epoch_or_none(data, "requested_at"),
        )
