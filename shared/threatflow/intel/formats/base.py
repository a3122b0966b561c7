"""The building blocks every import format shares: the parsed document, its
items and errors, the builder that collects them, and input decoding."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import msgspec

from threatflow.iocs.service import IocIn
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import MAX_TAG_LENGTH, MAX_TAGS, Tlp, clean_tags
from threatflow.threats.model import ThreatIn

T = TypeVar("T")
# Threat links one document's parse holds. An import makes at most importer.MAX_LINKS_PER_IMPORT (10,000), but an OTX
# pulse or a MISP event links each of its IoCs to up to 32 threats: 4.4 MB of one event held 3.2 million (500 MB).
MAX_PARSED_LINKS = 100_000
# Items one import holds (IoCs, and the items it rejects): a document with more is refused (a 400 naming content; the
# async job fails with the same message) once parsing reaches the bound, so the rest is never read. An item parsed takes
# ~650 bytes: the body holds up to 32 MiB, and 1,342,177 JSON items of one address (33 MB) peaked at 879 MB in parsing
# alone in the 1 GiB ioc-import function (CSV of one column holds 2.4 million); 100,000 are parsed and applied in 134 MB.
MAX_IMPORT_ITEMS = 100_000
# JSON objects and arrays one import request may open, counted by its '{' and '[' bytes (those inside strings too, so
# an upper bound) before anything is decoded: the item bound applies while parsing, after decoding, and 32 MiB of
# `[{},{},...]` is 11 million objects, ~816 MB decoded (in the iocs function, and again in ioc-import, 1 GiB each).
# Real documents open far fewer: 1 per 100 bytes to 1 per 1,000 (PyMISP's and OASIS's test files), ~20 per item at
# the item bound; at the bound, decoding peaks at ~460 MB (2 million one-key objects).
MAX_DOCUMENT_CONTAINERS = 2_000_000
# IoC-to-IoC relation types a document's own words are kept as (STIX relationship_type, MISP ObjectReference);
# any other word relates the two as related-to.
RELATION_TYPES = frozenset({"resolves-to", "communicates-with", "drops", "downloads"})


class ImportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    TEXT = "text"
    STIX = "stix"
    MISP = "misp"


@dataclass(frozen=True)
class ParsedIoc:
    ref: str  # where it came from: "#12" (item or row), a STIX id, a MISP uuid
    item: IocIn
    # Further refs it answers to, each naming a part of its object (`<indicator id>/0/domain`: the names one observation
    # of a STIX pattern ANDs with addresses), so a relation can join some of one object's IoCs while links to the
    # object's ref still reach them all.
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedThreat:
    ref: str  # a STIX id, or "threat:<kind>:<name>"
    item: ThreatIn


@dataclass(frozen=True)
class Link:
    ioc_ref: str
    threat_ref: str
    relation: str = "indicates"
    tlp: str | None = None  # its own marking (a STIX relationship's or sighting's), stored with it (sql/0014_link_tlp.sql)
    ref: str | None = None  # the document's object that says it, to name in an error


@dataclass(frozen=True)
class Relation:
    source_ref: str
    target_ref: str
    type: str
    tlp: str | None = None  # its own marking (a STIX relationship's), stored with it (sql/0014_link_tlp.sql)
    ref: str | None = None  # the document's object (a STIX relationship's id), to name in an error


@dataclass(frozen=True)
class ItemError:
    ref: str  # "#<index>" / "row <n>" / an object id
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"ref": self.ref, "reason": self.reason}


@dataclass(frozen=True)
class ParsedImport:
    iocs: list[ParsedIoc] = field(default_factory=list)
    threats: list[ParsedThreat] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)  # items skipped
    warnings: list[ItemError] = field(default_factory=list)  # items taken, but not everything in them
    skipped: dict[str, int] = field(default_factory=dict)  # non-IoC content by kind (MISP text, STIX identity...)
    threat_relations: list[Relation] = field(default_factory=list)  # between two threats' refs (a STIX intrusion set uses a malware)

    def with_defaults(self, *, source: str | None = None, tlp: str | None = None, tags: Sequence[str] = ()) -> ParsedImport:
        """Apply the request's source and TLP to items that name none, and add its tags to every item."""
        if not (source or tlp or tags):
            return self
        iocs = []
        for parsed in self.iocs:
            item = parsed.item
            changes: dict[str, Any] = {}
            if source and not item.source and not item.sources:
                changes["source"] = source
            if tlp and not item.tlp:
                changes["tlp"] = tlp
            if tags:
                changes["tags"] = [*item.tags, *tags]
            iocs.append(replace(parsed, item=msgspec.structs.replace(item, **changes)) if changes else parsed)
        threats = []
        for threat in self.threats:
            if tlp and not threat.item.tlp:
                threats.append(ParsedThreat(threat.ref, msgspec.structs.replace(threat.item, tlp=tlp)))
            else:
                threats.append(threat)
        threat_relations = [replace(r, tlp=tlp) if tlp and not r.tlp else r for r in self.threat_relations]
        return replace(self, iocs=iocs, threats=threats, threat_relations=threat_relations)

    def summary(self) -> dict[str, int]:
        return {
            "iocs": len(self.iocs),
            "threats": len(self.threats),
            "links": len(self.links),
            "relations": len(self.relations),
            "threat_relations": len(self.threat_relations),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }


class Builder:
    """Collects one document's items; `ioc()` validates an IoC and records the error instead of raising."""

    def __init__(self) -> None:
        self.iocs: list[ParsedIoc] = []
        self.threats: list[ParsedThreat] = []
        self.links: list[Link] = []
        self.relations: list[Relation] = []
        self.threat_relations: list[Relation] = []
        self.errors: list[ItemError] = []
        self.warnings: list[ItemError] = []
        self.skipped: dict[str, int] = {}
        self.threat_at: dict[str, int] = {}  # where in `threats` the first threat of each ref is: a lookup, not a scan
        self.links_unread = 0  # links past MAX_PARSED_LINKS: counted, not held

    def ioc(self, ref: str, data: dict[str, Any], *, parts: Sequence[str] = ()) -> bool:
        self._room()
        item = self._convert(ref, data, IocIn)
        if item is not None:
            self.iocs.append(ParsedIoc(ref, item, tuple(parts)))
        return item is not None

    def threat(self, ref: str, data: dict[str, Any]) -> bool:
        item = self._convert(ref, data, ThreatIn)
        if item is not None:
            self.threat_at.setdefault(ref, len(self.threats))
            self.threats.append(ParsedThreat(ref, item))
        return item is not None

    def _convert(self, ref: str, data: dict[str, Any], into: type[T]) -> T | None:
        """Typed item from a parsed dict, empty fields dropped; a bad one is an error of its ref."""
        clean = {k: v for k, v in data.items() if v is not None and v not in ([], "")}
        try:
            if isinstance(clean.get("tags"), list):  # the one tag rule; a bad tag rejects this item only
                clean["tags"] = clean_tags(clean["tags"], holder="threat" if into is ThreatIn else "indicator")
            return msgspec.convert(clean, into)
        except ValidationError as exc:
            self.error(ref, exc.message)
            return None
        except msgspec.ValidationError as exc:
            self.error(ref, str(exc).replace("`$.", "`"))
            return None

    def link_all(self, links: Iterable[Link]) -> None:
        """Hold `links` while the document has room (MAX_PARSED_LINKS); count the rest."""
        pending = iter(links)
        self.links.extend(itertools.islice(pending, max(0, MAX_PARSED_LINKS - len(self.links))))
        self.links_unread += sum(1 for _ in pending)

    def shared_tags(self, tags: Sequence[str], *, where: str, room: int) -> list[str]:
        """Tags a document gives each of its IoCs (a pulse's, an event's), cleaned once here and at most `room` of
        them, the first in order; those left out (past the room, or a tag the rule refuses) are named in one warning.
        Cleaned again for each IoC, 20,000 of them on 2,000 indicators took 11 s, and past MAX_TAGS every IoC of the
        document was rejected."""
        kept: dict[str, None] = {}
        left_out = 0
        for tag in tags:
            try:
                cleaned = clean_tags([tag])
            except ValidationError:
                left_out += 1
                continue
            for name in cleaned:
                if name not in kept and len(kept) < room:
                    kept[name] = None
                elif name not in kept:
                    left_out += 1
        if left_out:
            self.warn(
                where,
                f"{left_out} of its tags not given to its items: an IoC holds at most {MAX_TAGS} tags,"
                f" each at most {MAX_TAG_LENGTH} characters",
            )
        return list(kept)

    def error(self, ref: str, reason: str) -> None:
        self._room()
        self.errors.append(ItemError(ref, reason))

    def _room(self) -> None:
        """Refuse the document once it holds more items than an import may (MAX_IMPORT_ITEMS): nothing past them is read."""
        if len(self.iocs) + len(self.errors) >= MAX_IMPORT_ITEMS:
            raise ValidationError(
                f"the document holds more than {MAX_IMPORT_ITEMS:,} items; at most {MAX_IMPORT_ITEMS:,} items an import"
                " (IoCs and rejected items): split it into several imports",
                field="content",
            )

    def warn(self, ref: str, reason: str) -> None:
        self.warnings.append(ItemError(ref, reason))

    def skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def build(self) -> ParsedImport:
        if self.links_unread:
            self.warn("links", f"{self.links_unread} threat links not read: a document's parse holds at most {MAX_PARSED_LINKS}")
        return ParsedImport(
            self.iocs, self.threats, self.links, self.relations, self.errors, self.warnings, self.skipped, self.threat_relations
        )


def seen_time(value: Any) -> datetime | None:
    """A time a document gives for when a value was seen or known (MISP's first_seen or an event's date, STIX's
    first_observed or valid_from), if it is a usable one: ISO 8601 or a date (UTC when it names no zone), in years
    1-9999, not in the future. Anything else is None, never an error: the IoC is still imported, first seen when it
    is stored (a future first_seen would get the item rejected by the upsert)."""
    if not isinstance(value, str) or not 8 <= len(value) <= 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+05:00 is in year 0 once in UTC
        return None
    return parsed if parsed <= datetime.now(UTC) else None


def strictest_tlp(markings: Sequence[str | None]) -> str | None:
    """The most restrictive TLP among `markings` (tags or a TLP field), spelled as given; values that are no TLP
    (MISP's tlp:ex:chr, tlp:unclear, other tags) are passed over. Nothing comes in less restricted than it was marked."""
    best: tuple[int, str] | None = None
    for marking in markings:
        try:
            rank = Tlp.parse(marking).rank if marking else None
        except ValueError:
            rank = None
        if rank is not None and marking and (best is None or rank > best[0]):
            best = (rank, marking)
    return best[1] if best else None


def is_tlp(tag: str) -> bool:
    # `tlp` and a separator, as Tlp.parse reads it (TLP_RED, tlp-red were tags, and the event came in at the default)
    return tag.strip().lower().startswith("tlp") and strictest_tlp([tag]) is not None


def load_json(content: bytes | str | Any, *, what: str) -> Any:
    """Text or bytes are decoded (a leading UTF-8 BOM dropped); an already-decoded object (the API's `content` as
    JSON) is used as is."""
    if isinstance(content, (bytes, bytearray, str)):
        content = _without_bom(content)
        try:
            return msgspec.json.decode(content)
        except RecursionError:  # text the request's depth check never saw (a string there): permanent, not a crash
            raise ValidationError(f"{what}: JSON nests deeper than the decoder allows", field="content") from None
        except msgspec.DecodeError as exc:
            raise ValidationError(f"{what}: not valid JSON: {exc}", field="content") from None
    return content


def _without_bom(content: bytes | bytearray | str) -> bytes | bytearray | str:
    """The document without a leading UTF-8 byte order mark (Windows tools write one), as bytes or as text that kept it."""
    return content.removeprefix("\ufeff") if isinstance(content, str) else content.removeprefix(b"\xef\xbb\xbf")


def as_text(content: bytes | str | Any, *, what: str) -> str:
    if isinstance(content, str):
        return content.removeprefix("\ufeff")
    if isinstance(content, (bytes, bytearray)):
        try:
            return bytes(content).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{what}: not UTF-8 text: {exc}", field="content") from None
    raise ValidationError(f"{what}: content must be a string", field="content")
