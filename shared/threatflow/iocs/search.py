"""IoC search: typed filters compiled to one parameterised WHERE clause.

Pages are keyset pages on id (newest first): the cursor is the last id seen,
so page N costs the same as page 1 and concurrent inserts never shift a page.
Every filter maps to an index (see sql/0002_iocs.sql).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from threatflow.iocs.model import Severity, Tlp, Verdict
from threatflow.iocs.repository import IOC_COLUMNS, row_to_dict
from threatflow.iocs.types import IocType
from threatflow.platform.errors import ValidationError
from threatflow.platform.pagination import decode_cursor, encode_cursor

MAX_PAGE = 1000
DEFAULT_PAGE = 100


class IocFilter(msgspec.Struct, forbid_unknown_fields=True):
    type: list[IocType] | None = None
    verdict: list[Verdict] | None = None
    severity: list[Severity] | None = None
    tlp: list[Tlp] | None = None
    max_tlp: Tlp | None = None
    score_min: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    score_max: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    tags: list[str] | None = None  # all of these
    tags_any: list[str] | None = None
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
    ids: list[int] | None = None


class FindRequest(IocFilter, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE
    cursor: str | None = None


@dataclass(frozen=True)
class Compiled:
    where: str
    params: dict[str, Any]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_filter(f: IocFilter, *, now: datetime) -> Compiled:
    clauses: list[str] = []
    params: dict[str, Any] = {}

    def add(clause: str, **values: Any) -> None:
        clauses.append(clause)
        params.update(values)

    def one_of(column: str, name: str, values: list[str]) -> None:
        # One value as plain equality: the (column, id) index then yields rows already in
        # id order, where `= ANY(...)` makes PostgreSQL fetch every match and sort them.
        if len(values) == 1:
            add(f"{column} = :{name}", **{name: values[0]})
        else:
            add(f"{column} = ANY(CAST(:{name} AS text[]))", **{name: values})

    if f.type:
        one_of("type", "types", [t.value for t in f.type])
    if f.verdict:
        one_of("verdict", "verdicts", [v.value for v in f.verdict])
    if f.severity:
        one_of("severity", "severities", [s.value for s in f.severity])
    if f.tlp:
        one_of("tlp", "tlps", [t.value for t in f.tlp])
    if f.max_tlp:
        one_of("tlp", "max_tlps", f.max_tlp.at_most())
    if f.score_min is not None:
        add("score >= :score_min", score_min=f.score_min)
    if f.score_max is not None:
        add("score <= :score_max", score_max=f.score_max)
    if f.tags:
        add("tags @> CAST(:tags_all AS text[])", tags_all=sorted({t.strip().lower() for t in f.tags}))
    if f.tags_any:
        add("tags && CAST(:tags_any AS text[])", tags_any=sorted({t.strip().lower() for t in f.tags_any}))
    if f.source:
        add("sources @> CAST(:sources AS text[])", sources=[f.source])
    if f.active is not None:
        add("active = :active", active=f.active)
    if f.expired is True:
        add("(NOT active OR expires_at < :now)", now=now)
    elif f.expired is False:
        add("active AND (expires_at IS NULL OR expires_at >= :now)", now=now)
    if f.warninglisted is True:
        clauses.append("warninglists <> '{}'")
    elif f.warninglisted is False:
        clauses.append("warninglists = '{}'")
    for name, column, op in (
        ("first_seen_from", "first_seen", ">="),
        ("first_seen_to", "first_seen", "<"),
        ("last_seen_from", "last_seen", ">="),
        ("last_seen_to", "last_seen", "<"),
    ):
        value = getattr(f, name)
        if value is not None:
            if value.tzinfo is None:
                raise ValidationError(f"{name} needs a time zone", field=name)
            add(f"{column} {op} :{name}", **{name: value})
            if column == "last_seen":  # the indexed day column narrows; the exact column decides
                day_op = ">=" if op == ">=" else "<="
                add(f"last_seen_day {day_op} :{name}_day", **{f"{name}_day": value.astimezone(UTC).date()})
    if f.value_prefix:
        add("value LIKE :prefix ESCAPE '\\'", prefix=_like_escape(f.value_prefix) + "%")
    if f.value_contains:
        add("value ILIKE :contains ESCAPE '\\'", contains="%" + _like_escape(f.value_contains) + "%")
    if f.ids:
        add("id = ANY(CAST(:ids AS bigint[]))", ids=f.ids)
    return Compiled(" AND ".join(clauses) if clauses else "TRUE", params)


def find_sql(request: FindRequest, *, now: datetime) -> tuple[str, dict[str, Any]]:
    compiled = compile_filter(request, now=now)
    where, params = compiled.where, dict(compiled.params)
    if request.cursor:
        where += " AND id < :after_id"
        params["after_id"] = decode_cursor(request.cursor)
    params["limit"] = request.limit + 1  # one extra row tells whether there is a next page
    return f"SELECT {IOC_COLUMNS} FROM iocs WHERE {where} ORDER BY id DESC LIMIT :limit", params


def find(request: FindRequest, *, engine: Any, now: datetime) -> dict[str, Any]:
    from sqlalchemy import text

    sql, params = find_sql(request, now=now)
    with engine.connect() as conn:
        rows = conn.execute(text(sql), params).all()
    page = [row_to_dict(r) for r in rows[: request.limit]]
    next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > request.limit else None
    return {"iocs": page, "next_cursor": next_cursor, "count": len(page)}
