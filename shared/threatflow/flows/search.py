"""Event search and hunting queries: every parameter checked, every query bounded.

Query parameters become typed values here (a bad one is a 400 naming it), the
repository runs the SQL. Pages are keyset cursors over (event_time, event_key),
newest first. An optional Redis cache sits in front of search (FLOWS_SEARCH_CACHE:
on, off, or `flag` = the Firestore document flags/flows-search-cache
`{"enabled": true}`, re-read at most every FLAG_TTL_SECONDS per instance).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from threatflow.adapters.postgres import ReadSession
from threatflow.flows import repository
from threatflow.flows.features import category_named
from threatflow.flows.ingest import CATEGORIES, ZONE_ID_REASON, event_address
from threatflow.flows.repository import EventQuery
from threatflow.platform import limits
from threatflow.platform.errors import ValidationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("threatflow.flows")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
DEFAULT_WINDOW = timedelta(days=30)
MAX_WINDOW = timedelta(days=92)
MAX_WINDOW_WITHOUT_ADDRESS = timedelta(days=7)  # a scan over time alone must stay small
SEARCH_TIMEOUT_MS = 3000
# The pool a search by address runs on (see uses_read_pool): sessions bounded at the search's
# timeout, with generic plans for its prepared statement, so a page costs one round trip.
SEARCH_SESSION = ReadSession(statement_timeout_ms=SEARCH_TIMEOUT_MS, generic_plans=True)
CACHE_SECONDS = 30
FLAG_TTL_SECONDS = 30.0
FLAG_NAME = "flows-search-cache"
_LATEST = datetime.max.replace(tzinfo=UTC)  # a forged cursor's time there has no microsecond after it
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$|^-$")
_KNOWN = frozenset(
    {"srcip", "dstip", "from", "to", "proto", "service", "label", "attack_cat", "predicted", "predicted_cat", "min_probability",
     "limit", "cursor"}
)  # fmt: skip


def parse_ip(text: str | None, name: str) -> str | None:
    """A query's address as the event store keeps it (ingest.event_address): a bad one is a 400."""
    if text is None or text == "":
        return None
    try:
        return event_address(text)
    except ValueError as exc:
        reason = ZONE_ID_REASON if str(exc) == ZONE_ID_REASON else "is not an IP address"
        raise ValidationError(f"{name} {reason}: {text[:64]!r}", field=name) from None


def parse_time(text: str | None, name: str) -> datetime | None:
    if text is None or text == "":
        return None
    written = limits.query_time_text(text.strip())
    try:
        if " " in written[11:]:  # a space only between the date and the time: fromisoformat also read "00:00:00 -05:00"
            raise ValueError(written)
        value = datetime.fromisoformat(written.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name} must be an ISO 8601 time with a zone, e.g. 2026-01-01T00:00:00Z", field=name) from None
    if value.tzinfo is None:
        raise ValidationError(f"{name} needs a time zone (e.g. 2026-01-01T00:00:00Z)", field=name)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is past datetime's range once in UTC
        raise ValidationError(f"{name} must be a time between the years 1 and 9999 in UTC", field=name) from None


def parse_window(query: Mapping[str, str], *, now: datetime, default: timedelta, maximum: timedelta) -> tuple[datetime, datetime]:
    end = parse_time(query.get("to"), "to") or now
    try:
        start = parse_time(query.get("from"), "from") or end - default
    except OverflowError:  # to=0001-01-01T00:00:00Z with the default window
        raise ValidationError("to is too early for a window before it; give from", field="to") from None
    if start >= end:
        raise ValidationError("from must be before to", field="from")
    if end - start > maximum:
        raise ValidationError(f"the time window is at most {maximum.days} days here", field="from")
    return start, end


_LAST_HOUR = datetime.max.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Every hour [start, end) touches: start rounded down, end rounded up to the hour. What an hourly answer counts,
    so that a bucket labelled with an hour holds the whole hour (the roll-ups' views and the timeline)."""
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    past_hour = end.replace(minute=0, second=0, microsecond=0)
    if past_hour < end:
        # the last hour of 9999-12-31 ends past datetime's range (a 500): it covers to the end of time
        past_hour = past_hour + timedelta(hours=1) if past_hour < _LAST_HOUR else datetime.max.replace(tzinfo=UTC)
    return first_hour, past_hour


def whole_hours_within(start: datetime, end: datetime, *, maximum: timedelta) -> tuple[datetime, datetime]:
    """whole_hours, refused (400 naming `from`) when the hours it counts span more than `maximum`: checked on the
    window asked for, the bound let up to two hours more be counted (from 10:30 to 10:20 31 days on: 31 days and
    an hour)."""
    first_hour, past_hour = whole_hours(start, end)
    if past_hour - first_hour > maximum:
        raise ValidationError(
            f"the time window, counted in whole hours (from {first_hour.isoformat()} to {past_hour.isoformat()}),"
            f" is at most {maximum.days} days here",
            field="from",
        )
    return first_hour, past_hour


def _token(query: Mapping[str, str], name: str) -> str | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    value = text.strip().lower()
    if not _TOKEN.match(value):
        raise ValidationError(f"{name} must be a protocol/service name like tcp or http (or - for none)", field=name)
    return value


def _category(query: Mapping[str, str], name: str) -> str | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    # As ingest reads it (any case and padding, the raw files' "Backdoors"): what a flow was stored from finds it.
    category = category_named(text)
    if category is not None:
        return category
    raise ValidationError(f"{name} must be one of {', '.join(CATEGORIES)}", field=name)


def encode_cursor(row: Mapping[str, Any]) -> str:
    """The next page's cursor: the last event's time and key, and the id of the query it pages (query_id)."""
    raw = json.dumps({"t": row["event_time"], "k": row["event_key"], "q": row["query_id"]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str, str]:
    """(time, key, query id) of a cursor encode_cursor made; anything else is a 400 naming the cursor."""
    import uuid

    try:
        doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        at = datetime.fromisoformat(doc["t"])
        key = str(uuid.UUID(doc["k"]))
        query = doc["q"]
        if at.tzinfo is None or not isinstance(query, str):
            raise ValueError("naive time or no query id")
        at = at.astimezone(UTC)  # year 1 at +14:00 is before year 1 in UTC: OverflowError here, not in the driver
    # AttributeError: uuid.UUID of a non-string; RecursionError: a forged cursor of ~1,000 nested arrays (a 500)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        raise ValidationError("cursor is not one this API returned", field="cursor") from None
    return at, key, query


# EventQuery fields a cursor is not bound to: the resolved window (its `from`/`to` as given are), the page size and
# the cursor itself.
_NOT_BOUND = frozenset({"start", "end", "limit", "after_time", "after_key", "query_id"})


def query_id(filters: Mapping[str, Any]) -> str:
    """What a cursor is bound to: a search's filters and its window as given (`from`/`to`, not the `now` an open
    window ends at, which moves between pages). The page size is left out: it may change from page to page."""
    parts = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def parse_search(query: Mapping[str, str], *, now: datetime) -> EventQuery:
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise ValidationError(f"unknown query parameter {unknown[0]!r}; known: {', '.join(sorted(_KNOWN))}", field=unknown[0])
    srcip, dstip = parse_ip(query.get("srcip"), "srcip"), parse_ip(query.get("dstip"), "dstip")
    maximum = MAX_WINDOW if (srcip or dstip) else MAX_WINDOW_WITHOUT_ADDRESS
    default = DEFAULT_WINDOW if (srcip or dstip) else timedelta(days=1)
    start, end = parse_window(query, now=now, default=default, maximum=maximum)
    # "²".isdigit(); int() of over 4,300 digits is a ValueError (a 500), so the length is checked first
    limit_text = (query.get("limit") or str(DEFAULT_LIMIT)).lstrip("0") or "0"
    digits = limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= len(str(MAX_LIMIT))
    if not digits or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    label_text = query.get("label")
    if label_text not in (None, "", "0", "1"):
        raise ValidationError("label must be 0 (normal) or 1 (attack)", field="label")
    predicted_text = (query.get("predicted") or "").lower()
    if predicted_text not in ("", "attack", "normal"):
        raise ValidationError("predicted must be attack or normal", field="predicted")
    min_probability = None
    if query.get("min_probability") not in (None, ""):
        min_probability = limits.decimal_text(query["min_probability"])  # ASCII decimal syntax, as flow fields
        if min_probability is None or not 0.0 <= min_probability <= 1.0:
            raise ValidationError("min_probability must be a number from 0 to 1", field="min_probability")
    q = EventQuery(
        start=start,
        end=end,
        limit=int(limit_text),
        srcip=srcip,
        dstip=dstip,
        proto=_token(query, "proto"),
        service=_token(query, "service"),
        label=int(label_text) if label_text else None,
        attack_cat=_category(query, "attack_cat"),
        predicted_attack={"attack": True, "normal": False}.get(predicted_text),
        predicted_cat=_category(query, "predicted_cat"),
        min_probability=min_probability,
    )
    filters = {k: v for k, v in q.__dict__.items() if k not in _NOT_BOUND}
    bound_to = query_id({**filters, "from": parse_time(query.get("from"), "from"), "to": parse_time(query.get("to"), "to")})
    if not query.get("cursor"):
        return replace(q, query_id=bound_to)
    after_time, after_key, cursor_query = decode_cursor(query["cursor"])
    # A cursor means "older than this event" of one search: given to another, it paged that one from an
    # arbitrary point, silently skipping its newer events.
    if cursor_query != bound_to:
        raise ValidationError("cursor belongs to another search (other filters or from/to); search again without it", field="cursor")
    end = q.end
    if not query.get("to") and after_time >= end and after_time < _LATEST and after_time - q.start < maximum:
        # An open window ends at the page's clock, which the cache rounds down with a phase of the search's own (the
        # cursor is part of it): a page's clock can fall before its cursor's event, and the window ended there, so the
        # events between were skipped. The page continues below its cursor (within the window's bound).
        end = after_time + timedelta(microseconds=1)
    return replace(q, end=end, after_time=after_time, after_key=after_key, query_id=bound_to)


def uses_read_pool(q: EventQuery) -> bool:
    """A search by address runs on the SEARCH_SESSION read pool; one without an address is planned
    for its own values (a generic plan is worse for it, repository.search_page), on the engine."""
    return q.srcip is not None or q.dstip is not None


def search(q: EventQuery, *, conn: Connection) -> bytes:
    """One page of events, newest first, in the caller's unit of work (under a statement timeout),
    as the response's JSON: {"events": [...], "count", "next_cursor", "window": {"from", "to"}}.

    The events array comes from PostgreSQL as JSON text and is embedded as it is."""
    try:
        page = repository.search_page(conn, q, timeout_ms=SEARCH_TIMEOUT_MS)
    except repository.QueryTimeout:
        raise ValidationError("this search is too broad to answer in time; add srcip or dstip, or narrow from/to", field="from") from None
    next_cursor = None
    if page.count == q.limit and page.last_time is not None:
        next_cursor = encode_cursor({"event_time": page.last_time, "event_key": page.last_key, "query_id": q.query_id})
    return msgspec.json.encode(
        {
            "events": msgspec.Raw(page.events),
            "count": page.count,
            "next_cursor": next_cursor,
            "window": {"from": q.start.isoformat(), "to": q.end.isoformat()},
        }
    )


# -- the optional cache ----------------------------------------------------------------------------


class SearchCache:
    """Redis in front of search, behind a feature flag; any Redis trouble means "no cache"."""

    def __init__(self, *, mode: str, redis: Callable[[], Any], documents: Callable[[], Any]) -> None:
        self._mode = mode
        self._redis = redis
        self._documents = documents
        self._flag: tuple[float, bool] = (0.0, False)

    def enabled(self) -> bool:
        if self._mode != "flag":
            return self._mode == "on"
        checked_at, value = self._flag
        if time.monotonic() - checked_at < FLAG_TTL_SECONDS:
            return value
        try:
            doc = self._documents().get("flags", FLAG_NAME) or {}
            value = bool(doc.get("enabled"))
        except Exception as exc:  # a flag store outage turns the cache off, never the API
            log.warning("feature flag %s unreadable: %s", FLAG_NAME, exc)
            value = False
        self._flag = (time.monotonic(), value)
        return value

    @staticmethod
    def key(q: EventQuery) -> str:
        # A window ending "now" moves every call: round it to the cache period so repeats share a key.
        parts = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in q.__dict__.items()}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        return f"flows:search:{digest}"

    def get(self, key: str) -> bytes | None:
        try:
            value = self._redis().get(key)
        except Exception:
            return None
        return value if isinstance(value, bytes) else None

    def put(self, key: str, payload: bytes) -> None:
        try:
            self._redis().set(key, payload, ex=CACHE_SECONDS)
        except Exception as exc:
            log.warning("search cache write failed: %s", exc)


def round_now(now: datetime, seconds: int = CACHE_SECONDS, *, phase: int = 0) -> datetime:
    """`now` rounded down to the cache period (whose boundaries are `phase` seconds past the
    period's multiples), so windows ending now are cacheable."""
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - (epoch - phase) % seconds, UTC)


def cache_phase(query: Mapping[str, str], seconds: int = CACHE_SECONDS) -> int:
    """Where in the cache period a search's window moves on, spread by its parameters: with one
    boundary for all, every cached page expired in the same second and the misses piled up
    (a latency spike every period, the benchmark's p99). The same search always has the same phase."""
    text = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    return zlib.crc32(text.encode()) % seconds
