"""IoC use cases: batch upsert with per-item results, lookups, sightings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar

import msgspec

from threatflow.iocs.model import DecayPolicy, ItemResult, ItemStatus, Tlp, UpsertItem, Verdict
from threatflow.iocs.normalise import normalise
from threatflow.iocs.repository import IocStore
from threatflow.platform import limits
from threatflow.platform.errors import NotFoundError, PayloadTooLargeError, ValidationError

MAX_BATCH = 10_000
MAX_TAGS = 64
MAX_TAG_LENGTH = 128

WarninglistMatcher = Callable[[str, str], list[str]]


class IocIn(msgspec.Struct, forbid_unknown_fields=True):
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    type: str | None = None
    tags: list[str] = []
    source: str | None = None
    sources: list[str] = []
    tlp: str | None = None
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    expires_at: datetime | None = None
    seen_at: datetime | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    verdict: Verdict | None = None


class BatchIn(msgspec.Struct):
    # Items are checked one by one (NUL, depth, 64-bit ints): a bad item is rejected, not the batch.
    batch_field: ClassVar[str] = "iocs"
    iocs: list[msgspec.Raw]


def clean_tags(tags: Sequence[str]) -> list[str]:
    out = sorted({t.strip().lower() for t in tags if t and t.strip()})
    if len(out) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags per indicator", field="tags")
    for tag in out:
        if len(tag) > MAX_TAG_LENGTH:
            raise ValidationError(f"tag longer than {MAX_TAG_LENGTH} characters: {tag[:32]}...", field="tags")
    return out


def _tz(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise ValidationError(f"{field} needs a time zone (e.g. 2026-01-01T00:00:00Z)", field=field)
    return value


def _default_expiry(seen_at: datetime, ttl_days: int) -> datetime:
    """The end of the UTC day ttl_days after the sighting. Day granularity keeps a
    same-day re-sighting from changing an indexed column (so the update is HOT)."""
    end = (seen_at.astimezone(UTC) + timedelta(days=ttl_days + 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return end


def prepare(
    raw: msgspec.Raw | IocIn, index: int, *, policies: dict[str, DecayPolicy], now: datetime, warninglists: WarninglistMatcher | None
) -> UpsertItem:
    """Decode, normalise and validate one item; raises ValidationError with the reason."""
    if not isinstance(raw, IocIn):
        limits.check_raw_json(bytes(raw), field="item")
    try:
        item = raw if isinstance(raw, IocIn) else msgspec.json.decode(raw, type=IocIn)
    except msgspec.ValidationError as exc:
        raise ValidationError(str(exc).replace("`$.", "`"), field="item") from None
    else:
        for name in ("value", "type", "source", "tlp", "description"):
            text = getattr(item, name)
            if isinstance(text, str):
                limits.check_text(text, field=name)
        for name in ("tags", "sources"):
            for text in getattr(item, name):
                limits.check_text(text, field=name)
    indicator = normalise(item.value, item.type)
    ioc_type = str(indicator.type)
    tlp = None
    if item.tlp is not None:
        try:
            tlp = Tlp.parse(item.tlp).value
        except ValueError:
            raise ValidationError(f"unknown TLP {item.tlp!r}; expected clear, green, amber, amber+strict or red", field="tlp") from None
    sources = sorted({s.strip() for s in [*item.sources, *([item.source] if item.source else [])] if s and s.strip()})
    seen_at = _tz(item.seen_at, "seen_at") if item.seen_at else now
    policy = policies.get(ioc_type)
    try:
        expires_at = (
            _tz(item.expires_at, "expires_at") if item.expires_at else (_default_expiry(seen_at, policy.ttl_days) if policy else None)
        )
    except OverflowError:
        raise ValidationError("seen_at is too far in the future: its expiry would pass year 9999", field="seen_at") from None
    return UpsertItem(
        index=index,
        type=ioc_type,
        value=indicator.value,
        tags=clean_tags(item.tags),
        sources=sources,
        tlp=tlp,
        confidence=item.confidence,
        expires_at=expires_at,
        seen_at=seen_at,
        description=item.description,
        verdict=item.verdict.value if item.verdict else None,
        warninglists=warninglists(ioc_type, indicator.value) if warninglists else [],
    )


def upsert_batch(
    raw_items: Sequence[msgspec.Raw | IocIn],
    *,
    store: IocStore,
    now: datetime,
    warninglists: WarninglistMatcher | None,
    policies: dict[str, DecayPolicy],
    conn: Any = None,
) -> dict[str, Any]:
    """Normalise, validate and merge a batch. Bad items are rejected one by one; a
    database error aborts the whole batch (one statement, one transaction).

    `warninglists` and `policies` are required: the caller passes the runtime's snapshots
    (`runtime.warninglist_matcher()`, None only when the lists are off or not loaded yet)."""
    if len(raw_items) > MAX_BATCH:
        raise PayloadTooLargeError(f"at most {MAX_BATCH} indicators per batch; got {len(raw_items)}")
    started = time.perf_counter()
    results: dict[int, ItemResult] = {}
    first_of: dict[tuple[str, str], UpsertItem] = {}
    duplicates: list[UpsertItem] = []
    for index, raw in enumerate(raw_items):
        try:
            item = prepare(raw, index, policies=policies, now=now, warninglists=warninglists)
        except ValidationError as exc:
            results[index] = ItemResult(index, ItemStatus.REJECTED, reason=exc.message)
            continue
        key = (item.type, item.value)
        first = first_of.get(key)
        if first is None:
            first_of[key] = item
        else:  # the same indicator twice in one batch: merge into the first
            first.tags = sorted({*first.tags, *item.tags})
            first.sources = sorted({*first.sources, *item.sources})
            duplicates.append(item)
    rows = store.upsert(list(first_of.values()), conn=conn)
    by_key = {(r.type, r.value): r for r in rows}
    for key, item in first_of.items():
        row = by_key[key]
        status = ItemStatus.CREATED if row.inserted else ItemStatus.UPDATED
        results[item.index] = ItemResult(item.index, status, id=row.id, type=item.type, value=item.value)
    for item in duplicates:
        row = by_key[(item.type, item.value)]
        results[item.index] = ItemResult(
            item.index,
            ItemStatus.UNCHANGED,
            id=row.id,
            type=item.type,
            value=item.value,
            reason="duplicate of an earlier item in this batch",
        )
    ordered = [results[i] for i in range(len(raw_items))]
    summary: dict[str, float] = {status.value: 0 for status in ItemStatus}
    for result in ordered:
        summary[result.status.value] += 1
    summary["total"] = len(ordered)
    summary["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return {"results": [r.to_json() for r in ordered], "summary": summary}


def get_or_raise(ioc_id: int, *, store: IocStore) -> dict[str, Any]:
    ioc = store.get(ioc_id)
    if ioc is None:
        raise NotFoundError(f"no indicator with id {ioc_id}")
    return ioc


def get_by_value(value: str, type_: str | None, *, store: IocStore) -> dict[str, Any]:
    indicator = normalise(value, type_)
    ioc = store.get_by_value(str(indicator.type), indicator.value)
    if ioc is None:
        raise NotFoundError(f"no indicator {indicator.value!r} of type {indicator.type}")
    return ioc


def explain_score(ioc: dict[str, Any], *, policies: dict[str, DecayPolicy], now: datetime) -> dict[str, Any]:
    policy = policies[ioc["type"]]
    return policy.explain(int(ioc["base_score"]), datetime.fromisoformat(ioc["last_seen"]), now)
