"""IoC use cases: batch upsert with per-item results, lookups, sightings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.iocs import repository
from threatflow.iocs.model import (
    MAX_SIGHTING_CONTEXT_BYTES,
    MAX_SOURCES_PER_IOC,
    MAX_TAGS_PER_IOC,
    DecayPolicy,
    IocRecord,
    ItemResult,
    ItemStatus,
    Tlp,
    UpsertItem,
    Verdict,
)
from threatflow.iocs.normalise import normalise
from threatflow.platform import limits
from threatflow.platform.errors import NotFoundError, PayloadTooLargeError, ValidationError
from threatflow.platform.vocabulary import clean_sources, clean_tags

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

MAX_BATCH = 10_000

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
    # The earliest sighting when the item stands for several (a flow source's attack flows): first_seen is kept at
    # the earliest of it and the stored one, last_seen and the expiry follow seen_at. Default: seen_at.
    first_seen: datetime | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    verdict: Verdict | None = None


class BatchIn(msgspec.Struct):
    # Items are checked one by one (NUL, depth, 64-bit ints): a bad item is rejected, not the batch.
    batch_field: ClassVar[str] = "iocs"
    iocs: list[msgspec.Raw]


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
    tlp = Tlp.parse_field(item.tlp, field="tlp").value if item.tlp is not None else None
    sources = clean_sources([*item.sources, *([item.source] if item.source else [])])
    seen_at = limits.check_aware(item.seen_at, field="seen_at") if item.seen_at else now
    first_seen = limits.check_aware(item.first_seen, field="first_seen") if item.first_seen else None
    if first_seen is not None and first_seen > seen_at:
        raise ValidationError("first_seen is after seen_at (or after now, when seen_at is not given)", field="first_seen")
    policy = policies.get(ioc_type)
    try:
        if item.expires_at:
            expires_at: datetime | None = limits.check_aware(item.expires_at, field="expires_at")
        else:
            expires_at = _default_expiry(seen_at, policy.ttl_days) if policy else None
    except OverflowError:
        raise ValidationError("seen_at is too far in the future: its expiry would pass year 9999", field="seen_at") from None
    return UpsertItem(
        index=index,
        type=ioc_type,
        value=indicator.value,
        tags=sorted(clean_tags(item.tags, holder="indicator")),
        sources=sources,
        tlp=tlp,
        confidence=item.confidence,
        expires_at=expires_at,
        seen_at=seen_at,
        first_seen=first_seen,
        description=item.description,
        verdict=item.verdict.value if item.verdict else None,
        warninglists=warninglists(ioc_type, indicator.value) if warninglists else [],
    )


def upsert_batch(
    raw_items: Sequence[msgspec.Raw | IocIn],
    *,
    conn: Connection,
    now: datetime,
    warninglists: WarninglistMatcher | None,
    policies: dict[str, DecayPolicy],
    clearance: str,
    new_tlp: str,
) -> dict[str, Any]:
    """Normalise, validate and merge a batch. Bad items are rejected one by one; a
    database error aborts the whole batch (one statement, one transaction).

    `warninglists` and `policies` are required: the caller passes the runtime's snapshots
    (`runtime.warninglist_matcher()`, None only when the lists are off or not loaded yet). So is `clearance`, the
    writer's (auth.clearance.of(principal), or SYSTEM for the product's own writers): a stored IoC above it is only
    sighted by an item, never re-marked or rewritten. A new IoC whose item names no TLP gets `new_tlp`, required
    too: `platform.vocabulary.new_record_tlp` of the requester's clearance (at amber, a green writer's new IoC did not
    exist for them: 404 on reading it back); enrichment writes with SYSTEM's clearance for its requester. An IoC
    holds at most MAX_TAGS_PER_IOC tags and MAX_SOURCES_PER_IOC sources; an item's result and the summary count what
    could not be kept (`tags_cut`, `sources_cut`; one value's items count on the first). An IoC whose expiry is past
    when written (an old `seen_at`, a past `expires_at`) is stored inactive, as the decay-iocs job would make it, and
    answered `"active": false` (repository.upsert); callers queue no enrichment for it."""
    if len(raw_items) > MAX_BATCH:
        raise PayloadTooLargeError(f"at most {MAX_BATCH} indicators per batch; got {len(raw_items)}")
    started = time.perf_counter()
    results: dict[int, ItemResult] = {}
    first_of: dict[tuple[str, str], UpsertItem] = {}
    duplicates: list[UpsertItem] = []
    # Tags and sources of items merged into a first one, set once at the end: sorting the union at every duplicate
    # was quadratic (5,000 items of one value with 64 tags each, 3.5 MB, ran past 300 s). Tags keep the order
    # they come in (a dict as an ordered set), so the IoC's bound keeps the first ones deterministically.
    merged: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]] = {}
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
            tags, sources = merged.setdefault(key, (dict.fromkeys(first.tags), dict.fromkeys(first.sources)))
            tags.update(dict.fromkeys(item.tags))
            sources.update(dict.fromkeys(item.sources))
            if item.first_seen is not None:  # an earlier sighting it names: kept, as a later batch's would be
                first.first_seen = min(first.first_seen or first.seen_at or item.first_seen, item.first_seen)
            if item.tlp is not None and (first.tlp is None or Tlp(item.tlp).rank > Tlp(first.tlp).rank):
                first.tlp = item.tlp  # the most restrictive TLP the batch names for it: a merge never lowers a marking
            duplicates.append(item)
    # Merged tags and sources past what one IoC holds, cut before the store sees them (the first items' first).
    cut_here: dict[tuple[str, str], int] = {}
    sources_cut_here: dict[tuple[str, str], int] = {}
    for key, (tags, sources) in merged.items():
        ordered_tags, ordered_sources = list(tags), list(sources)
        cut_here[key] = max(0, len(ordered_tags) - MAX_TAGS_PER_IOC)
        sources_cut_here[key] = max(0, len(ordered_sources) - MAX_SOURCES_PER_IOC)
        first_of[key].tags, first_of[key].sources = ordered_tags[:MAX_TAGS_PER_IOC], ordered_sources[:MAX_SOURCES_PER_IOC]
    readable = Tlp(clearance).at_most()
    rows = repository.upsert(conn, list(first_of.values()), readable=readable, now=now, default_tlp=new_tlp)
    by_key = {(r.type, r.value): r for r in rows}
    # An IoC above the writer's clearance does not exist for them: an item merged into it (a sighting) is answered
    # `updated` with nothing about the IoC, neither its id nor how many tags it could not take. That it exists
    # still shows (not `created`); README, "Existence of a value above your clearance".
    hidden = {key for key, row in by_key.items() if not row.inserted and row.tlp_before not in readable}
    for key, item in first_of.items():
        row = by_key[key]
        status = ItemStatus.CREATED if row.inserted else ItemStatus.UPDATED
        tags_cut = 0 if key in hidden else row.tags_cut + cut_here.get(key, 0)
        sources_cut = 0 if key in hidden else row.sources_cut + sources_cut_here.get(key, 0)
        shown_id = None if key in hidden else row.id
        results[item.index] = ItemResult(
            item.index,
            status,
            id=shown_id,
            type=item.type,
            value=item.value,
            tags_cut=tags_cut,
            sources_cut=sources_cut,
            active=key in hidden or row.active,  # an IoC the writer cannot read: nothing about it, its state neither
        )
    for item in duplicates:
        key = (item.type, item.value)
        results[item.index] = ItemResult(
            item.index,
            ItemStatus.UNCHANGED,
            id=None if key in hidden else by_key[key].id,
            type=item.type,
            value=item.value,
            reason="duplicate of an earlier item in this batch",
        )
    ordered = [results[i] for i in range(len(raw_items))]
    summary: dict[str, float] = {status.value: 0 for status in ItemStatus}
    for result in ordered:
        summary[result.status.value] += 1
    summary["total"] = len(ordered)
    summary["tags_cut"] = sum(r.tags_cut for r in ordered)
    summary["sources_cut"] = sum(r.sources_cut for r in ordered)
    summary["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return {"results": [r.to_json() for r in ordered], "summary": summary}


def add_sighting(
    conn: Connection,
    ioc_id: int,
    *,
    seen_at: datetime,
    source: str | None,
    context: dict[str, Any],
    readable: Sequence[str],
    now: datetime,
) -> dict[str, Any]:
    """POST /iocs/{id}/sightings: the IoC as it is now, with `sources_cut: 1` when it held MAX_SOURCES_PER_IOC sources
    and not `source` (the IoC is within the writer's clearance, else a NotFoundError: its fullness is theirs to see).
    The source follows every write's rule (clean_sources: stripped, a blank one none); the context is at most
    MAX_SIGHTING_CONTEXT_BYTES as JSON (a ValidationError naming context)."""
    size = len(msgspec.json.encode(context))
    if size > MAX_SIGHTING_CONTEXT_BYTES:
        raise ValidationError(f"context takes {size} bytes as JSON; at most {MAX_SIGHTING_CONTEXT_BYTES}", field="context")
    cleaned = clean_sources([source]) if source is not None else []
    sighted = repository.add_sighting(
        conn, ioc_id, seen_at=seen_at, source=cleaned[0] if cleaned else None, context=context, readable=readable, now=now
    )
    if sighted is None:
        raise NotFoundError(f"no indicator with id {ioc_id}")
    record, cut = sighted
    return {**record.to_json(), "sources_cut": 1} if cut else record.to_json()


def get_or_raise(conn: Connection, ioc_id: int) -> IocRecord:
    ioc = repository.get(conn, ioc_id)
    if ioc is None:
        raise NotFoundError(f"no indicator with id {ioc_id}")
    return ioc


def get_by_value(conn: Connection, value: str, type_: str | None, *, clearance: str) -> IocRecord:
    """The IoC stored under `value` (refanged and normalised first). One above `clearance` is answered as a value
    never stored, word for word: its 404 named its id ("no indicator with id 123"), so any reader learnt that the
    value is stored above their clearance, and under which id."""
    indicator = normalise(value, type_)
    ioc = repository.get_by_value(conn, str(indicator.type), indicator.value)
    if ioc is None or (ioc.tlp is not None and ioc.tlp not in Tlp(clearance).at_most()):
        raise NotFoundError(f"no indicator {indicator.value!r} of type {indicator.type}")
    return ioc


def explain_score(ioc: IocRecord, *, policies: dict[str, DecayPolicy], now: datetime) -> dict[str, Any]:
    policy = policies[ioc.type]
    return policy.explain(ioc.base_score, ioc.last_seen, now)


def decay_and_expire(*, engine: Engine, now: datetime, chunk: int = 50_000) -> dict[str, int]:
    """Recompute decayed scores and mark expired IoCs inactive. Nothing is deleted.

    The one job that opens several units of work: one short transaction per id
    range, so a run over millions of rows never holds long locks."""
    rescored = expired = 0
    with unit_of_work(engine) as conn:
        last = repository.max_id(conn)
    lo = 0
    while lo < last:
        with unit_of_work(engine) as conn:
            r, e = repository.decay_range(conn, now=now, after_id=lo, up_to_id=lo + chunk)
        rescored += r
        expired += e
        lo += chunk
    return {"rescored": rescored, "expired": expired}
