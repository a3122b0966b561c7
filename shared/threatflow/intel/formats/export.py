"""IoC export: STIX 2.1 bundles, CSV and plain blocklists, read in keyset pages.

Rows are read PAGE_SIZE at a time (id descending, as `find` pages), so memory
holds one page of rows plus the output being written. `max_tlp` caps what leaves
the platform: exports default to amber (amber+strict and red stay in unless the
caller asks for them explicitly).

STIX ids are deterministic so import -> export -> import is stable: an
indicator's id is uuid5(NAMESPACE, "indicator:<type>:<value>"), a threat keeps
its stored stix_id (else uuid5 of kind and lower-cased name), relationships and
attack patterns are uuid5 of what they connect. Relations between two exported threats are relationships too.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from threatflow.intel import repository as intel_repository
from threatflow.iocs import repository as ioc_repository
from threatflow.iocs.search import IocFilter
from threatflow.platform import limits
from threatflow.platform.csvsafe import SafeCsvWriter
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import Tlp
from threatflow.threats import repository as threat_store

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from threatflow.threats.attack import AttackCatalog

PAGE_SIZE = 5000
DEFAULT_MAX_TLP = "amber"
# stix2 checks every indicator's pattern with its ANTLR parser (~0.7 ms an IoC on one core) and holds
# the bundle as objects until it is serialised: 100,000 took ~85 s and 55 MB of output. CSV and txt
# keep the route's 100,000.
MAX_STIX_LIMIT = 10_000
# A hub IoC linked to 30,000 threats made 60,000 objects of a limit=1 export: each IoC is related to its
# strongest STIX_LINKS_PER_IOC threats (as a MISP import links at most 32 clusters to an IoC), a bundle
# holds at most STIX_LINKS_LIMIT such links, the newest IoCs' first; X-Export-Links-Truncated says one was cut.
STIX_LINKS_PER_IOC = 32
STIX_LINKS_LIMIT = 10_000
# IoC-to-IoC relations pile up across imports (1,000 each): a bundle carries the strongest STIX_RELATIONS_LIMIT
# with both ends exported (150 IoCs related pairwise made 22,350); the same header says one was cut.
STIX_RELATIONS_LIMIT = 10_000
NAMESPACE = uuid.UUID("6f1c7a52-43e4-4c1b-9a41-3d7c1a0f7e21")  # fixed forever: ids derive from it
CSV_COLUMNS = (
    "id", "type", "value", "tags", "sources", "tlp", "confidence", "verdict", "score", "severity",
    "first_seen", "last_seen", "expires_at", "detection_count", "active", "description",
)  # fmt: skip
TLP_1 = {
    "clear": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "amber": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}


class ExportFormat(StrEnum):
    STIX = "stix"
    CSV = "csv"
    TXT = "txt"


@dataclass(frozen=True)
class Export:
    body: bytes
    content_type: str
    filename: str
    count: int
    truncated: bool = False  # more IoCs matched than the limit let through
    links_truncated: bool = False  # STIX: threat links or IoC relations were cut (STIX_LINKS_*, STIX_RELATIONS_LIMIT)


CONTENT_TYPES = {
    ExportFormat.STIX: ("application/stix+json;version=2.1", "stix.json"),
    ExportFormat.CSV: ("text/csv; charset=utf-8", "csv"),
    ExportFormat.TXT: ("text/plain; charset=utf-8", "txt"),
}


def iter_pages(
    conn: Connection, flt: IocFilter, *, now: datetime, limit: int, page_size: int = PAGE_SIZE
) -> Iterator[list[dict[str, Any]]]:
    """Keyset pages of matching IoCs, newest first, at most `limit` rows in all."""
    remaining = limit
    after: int | None = None
    while remaining > 0:
        size = min(page_size, remaining)
        page = ioc_repository.find_page(conn, flt, now=now, after_id=after, limit=size)
        if not page:
            return
        yield page
        remaining -= len(page)
        after = page[-1]["id"]
        if len(page) < size:
            return


def export(
    conn: Connection, fmt: ExportFormat | str, flt: IocFilter, *, now: datetime, limit: int, catalog: AttackCatalog | None = None
) -> Export:
    try:
        kind = ExportFormat(str(fmt).lower())
    except ValueError:
        raise ValidationError(f"unknown export format {fmt!r}; expected stix, csv or txt", field="format") from None
    if kind is ExportFormat.STIX and limit > MAX_STIX_LIMIT:
        raise ValidationError(
            f"a STIX export holds at most {MAX_STIX_LIMIT} IoCs; narrow the filters, or use format=csv or txt for more", field="limit"
        )
    content_type, extension = CONTENT_TYPES[kind]
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    more: list[bool] = []
    pages = _capped(iter_pages(conn, flt, now=now, limit=limit + 1), limit, more)
    links_cut = False
    if kind is ExportFormat.TXT:
        body, count = _txt(pages)
    elif kind is ExportFormat.CSV:
        body, count = _csv(pages)
    else:
        body, count, links_cut = _stix(pages, conn=conn, max_tlp=flt.max_tlp.value if flt.max_tlp else None, now=now, catalog=catalog)
    return Export(body, content_type, f"threatflow-iocs-{stamp}.{extension}", count, truncated=bool(more), links_truncated=links_cut)


def _capped(pages: Iterator[list[dict[str, Any]]], limit: int, more: list[bool]) -> Iterator[list[dict[str, Any]]]:
    """Pages of at most `limit` rows in all; fetching one row past the limit tells whether more matched."""
    seen = 0
    for page in pages:
        kept = page
        if seen + len(page) > limit:
            kept = page[: limit - seen]
            more.append(True)
        seen += len(kept)
        if kept:
            yield kept


def _txt(pages: Iterator[list[dict[str, Any]]]) -> tuple[bytes, int]:
    out = io.StringIO()
    count = 0
    for page in pages:
        for ioc in page:
            out.write(ioc["value"].replace("\n", " ").replace("\r", " ") + "\n")  # one value per line, always
            count += 1
    return out.getvalue().encode(), count


def _csv(pages: Iterator[list[dict[str, Any]]]) -> tuple[bytes, int]:
    out = io.StringIO()
    writer = SafeCsvWriter(out)  # the product's one CSV writer: formula prefixes neutralised, controls quoted
    writer.writerow(CSV_COLUMNS)
    count = 0
    for page in pages:
        for ioc in page:
            writer.writerow([ioc.get(column) for column in CSV_COLUMNS])
            count += 1
    return out.getvalue().encode(), count


# -- STIX 2.1 ---------------------------------------------------------------------------


def indicator_id(ioc_type: str, value: str) -> str:
    return f"indicator--{uuid.uuid5(NAMESPACE, f'indicator:{ioc_type}:{value}')}"


def threat_id(kind: str, name: str, stix_id: str | None) -> str:
    """The threat's stored STIX id when stix2 takes it (`<kind>--` and an RFC 4122 UUID), else one derived from its
    kind and name: an import keeps any `<type>--...` id, and one stix2 refuses made every export holding it a 500."""
    if stix_id and stix_id.startswith(kind + "--") and _rfc_4122(stix_id[len(kind) + 2 :]):
        return stix_id
    return f"{kind}--{uuid.uuid5(NAMESPACE, f'threat:{kind}:{name.lower()}')}"


def _rfc_4122(text: str) -> bool:
    try:
        return uuid.UUID(text).variant == uuid.RFC_4122
    except ValueError:
        return False


def pattern_for(ioc_type: str, value: str) -> str:
    """A STIX pattern built with stix2's pattern objects, so quoting and escaping are the library's."""
    from stix2 import EqualityComparisonExpression, ObjectPath, ObservationExpression, StringConstant
    from stix2.patterns import AndBooleanExpression

    def equals(object_type: str, path: list[str], text: str) -> EqualityComparisonExpression:
        return EqualityComparisonExpression(ObjectPath(object_type, path), StringConstant(text))

    simple = {
        "ipv4": ("ipv4-addr", ["value"]),
        "ipv6": ("ipv6-addr", ["value"]),
        "domain": ("domain-name", ["value"]),
        "url": ("url", ["value"]),
        "email": ("email-addr", ["value"]),
        "md5": ("file", ["hashes", "MD5"]),
        "sha1": ("file", ["hashes", "SHA-1"]),
        "sha256": ("file", ["hashes", "SHA-256"]),
    }
    if ioc_type == "cidr":
        return str(ObservationExpression(equals("ipv6-addr" if ":" in value else "ipv4-addr", ["value"], value)))
    if ioc_type in simple:
        object_type, path = simple[ioc_type]
        return str(ObservationExpression(equals(object_type, path, value)))
    if ioc_type == "file_path":
        separator = "\\" if "\\" in value else "/"
        directory, _, name = value.rpartition(separator)
        return str(
            ObservationExpression(
                AndBooleanExpression(
                    [equals("file", ["parent_directory_ref", "path"], directory or separator), equals("file", ["name"], name)]
                )
            )
        )
    raise ValidationError(f"no STIX pattern for type {ioc_type!r}", field="type")


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _markings(tlp: str | None) -> list[str]:
    if not tlp:
        return []
    # TLP 1.0 has no amber+strict: mark it red, the nearest level that does not loosen it.
    return [TLP_1["red" if tlp == "amber+strict" else tlp]]


def _stix(
    pages: Iterator[list[dict[str, Any]]], *, conn: Connection, max_tlp: str | None, now: datetime, catalog: AttackCatalog | None
) -> tuple[bytes, int, bool]:
    import stix2

    # Ties (links, IoC and threat relations) are read within max_tlp by their own TLP as the IoCs and threats are
    # by theirs, and each relationship is marked with its tie's TLP (at least its ends' when written; the stricter of
    # the three when an end was raised since): a TLP:RED tie between amber objects stays out of an amber export.
    shared = Tlp.parse(max_tlp).at_most() if max_tlp else [t.value for t in Tlp]
    objects: dict[str, Any] = {}
    indicator_of: dict[int, str] = {}
    ioc_tlp: dict[int, Tlp] = {}
    links: list[dict[str, Any]] = []
    count = 0
    links_cut = False
    for page in pages:
        ids = [ioc["id"] for ioc in page]
        for ioc in page:
            first_seen = _ts(ioc["first_seen"]) or now
            expires = _ts(ioc.get("expires_at"))
            stix_id = indicator_id(ioc["type"], ioc["value"])
            indicator = stix2.Indicator(
                id=stix_id,
                created=_ts(ioc["created_at"]),
                modified=max(_ts(ioc["updated_at"]) or now, _ts(ioc["created_at"]) or now),
                name=ioc["value"],
                description=ioc.get("description") or None,
                pattern=pattern_for(ioc["type"], ioc["value"]),
                pattern_type="stix",
                valid_from=first_seen,
                valid_until=expires if expires and expires > first_seen else None,
                indicator_types=["malicious-activity"] if ioc["verdict"] == "malicious" else None,
                labels=ioc["tags"] or None,
                confidence=ioc["confidence"],
                object_marking_refs=_markings(ioc["tlp"]) or None,
                allow_custom=False,
            )
            objects[stix_id] = indicator
            indicator_of[ioc["id"]] = stix_id
            ioc_tlp[ioc["id"]] = Tlp(ioc["tlp"] or Tlp.AMBER)
            count += 1
        page_links, cut = intel_repository.links_for_iocs(conn, ids, per_ioc=STIX_LINKS_PER_IOC, visible_tlps=shared)
        room = STIX_LINKS_LIMIT - len(links)
        links_cut = links_cut or cut or len(page_links) > room
        links.extend(page_links[:room])
    relations = intel_repository.relations_among(conn, list(indicator_of), limit=STIX_RELATIONS_LIMIT + 1, visible_tlps=shared)
    links_cut = links_cut or len(relations) > STIX_RELATIONS_LIMIT
    relations = relations[:STIX_RELATIONS_LIMIT]

    threat_ids = sorted({int(link["threat_id"]) for link in links})
    threat_of: dict[int, str] = {}
    tlp_of: dict[int, Tlp] = {}
    if threat_ids:
        for threat in threat_store.threats_for_export(conn, threat_ids=threat_ids, max_tlp=max_tlp):
            obj = _threat_object(threat, now=now)
            threat_of[int(threat["id"])] = obj.id
            tlp_of[int(threat["id"])] = Tlp(threat["tlp"] or Tlp.AMBER)
            objects[obj.id] = obj
            for ttp in threat.get("ttps") or []:
                pattern = _attack_pattern(ttp, catalog, now=now)
                objects.setdefault(pattern.id, pattern)
                _relationship(objects, obj.id, "uses", pattern.id, now=now)
        # relations between two exported threats (an intrusion set uses a malware): neither end leaks past max_tlp
        among = threat_store.threat_relations_among(conn, list(threat_of), limit=STIX_RELATIONS_LIMIT + 1, visible_tlps=shared)
        links_cut = links_cut or len(among) > STIX_RELATIONS_LIMIT
        for relation in among[:STIX_RELATIONS_LIMIT]:
            # marked: an import reads an unmarked one at its own tlp, perhaps above both threats
            markings = _tie_markings(relation["tlp"], tlp_of[relation["source_id"]], tlp_of[relation["target_id"]])
            _relationship(
                objects, threat_of[relation["source_id"]], relation["type"], threat_of[relation["target_id"]], now=now, markings=markings
            )
    for link in links:
        source, target = indicator_of.get(int(link["ioc_id"])), threat_of.get(int(link["threat_id"]))
        if source and target:
            markings = _tie_markings(link["tlp"], ioc_tlp[int(link["ioc_id"])], tlp_of[int(link["threat_id"])])
            verb = "indicates" if link["relation"] == "indicates" else str(link["relation"])
            _relationship(objects, source, verb, target, now=now, markings=markings)
    for relation in relations:
        source, target = indicator_of.get(int(relation["source_id"])), indicator_of.get(int(relation["target_id"]))
        if source and target:  # both ends exported (relations_among): the relation cannot leak an IoC above max_tlp
            markings = _tie_markings(relation["tlp"], ioc_tlp[int(relation["source_id"])], ioc_tlp[int(relation["target_id"])])
            _relationship(objects, source, str(relation["type"]), target, now=now, markings=markings)
    used = {ref for obj in objects.values() for ref in (obj.get("object_marking_refs") or [])}
    markings = [m for m in (stix2.TLP_WHITE, stix2.TLP_GREEN, stix2.TLP_AMBER, stix2.TLP_RED) if m.id in used]
    bundle = stix2.Bundle(objects=[*markings, *objects.values()], id=f"bundle--{uuid.uuid4()}", allow_custom=False)
    return bundle.serialize(pretty=False).encode(), count, links_cut


def _tie_markings(tie: str, *ends: Tlp) -> list[str]:
    """A relationship's marking: the strictest of its tie's own TLP and its two ends' (an end raised after the tie
    was written is above it)."""
    return _markings(max((Tlp(tie), *ends), key=lambda t: t.rank).value)


def _relationship(objects: dict[str, Any], source: str, relation: str, target: str, *, now: datetime, markings: Sequence[str] = ()) -> None:
    import stix2

    rel_id = f"relationship--{uuid.uuid5(NAMESPACE, f'{source}|{relation}|{target}')}"
    if rel_id not in objects:
        objects[rel_id] = stix2.Relationship(
            id=rel_id,
            source_ref=source,
            relationship_type=relation,
            target_ref=target,
            created=now,
            modified=now,
            object_marking_refs=list(markings) or None,
        )


def _attack_pattern(ttp: str, catalog: Any, *, now: datetime) -> Any:
    import stix2

    technique = catalog.get(ttp) if catalog is not None else None
    name = getattr(technique, "name", None) or ttp
    url = f"https://attack.mitre.org/techniques/{ttp.replace('.', '/')}"
    return stix2.AttackPattern(
        id=f"attack-pattern--{uuid.uuid5(NAMESPACE, f'attack-pattern:{ttp}')}",
        created=now,
        modified=now,
        name=name,
        external_references=[{"source_name": "mitre-attack", "external_id": ttp, "url": url}],
    )


def _threat_object(threat: dict[str, Any], *, now: datetime) -> Any:
    import stix2

    kind = str(threat["kind"])
    created = _ts(threat.get("created_at")) or now
    common: dict[str, Any] = {
        "id": threat_id(kind, threat["name"], threat.get("stix_id")),
        "created": created,
        "modified": max(_ts(threat.get("updated_at")) or created, created),
        "name": threat["name"],
        "description": threat.get("description") or None,
        "confidence": threat.get("confidence"),
        "labels": threat.get("tags") or None,
        "external_references": [
            {k: v for k, v in ref.items() if v is not None} for ref in (threat.get("references") or []) if ref.get("source_name")
        ]
        or None,
        "object_marking_refs": _markings(threat.get("tlp")) or None,
        "allow_custom": False,
    }
    aliases = [a for a in threat.get("aliases") or [] if a] or None
    first_seen, last_seen = _ts(threat.get("first_seen")), _ts(threat.get("last_seen"))
    if first_seen and last_seen and last_seen < first_seen:
        last_seen = first_seen
    seen = {"first_seen": first_seen, "last_seen": last_seen}
    if kind == "malware":
        return stix2.Malware(is_family=True, aliases=aliases, **seen, **common)
    if kind == "threat-actor":
        return stix2.ThreatActor(aliases=aliases, **seen, **common)
    if kind == "intrusion-set":
        return stix2.IntrusionSet(aliases=aliases, **seen, **common)
    if kind == "campaign":
        return stix2.Campaign(aliases=aliases, **seen, **common)
    if kind == "tool":
        return stix2.Tool(aliases=aliases, **common)
    raise ValidationError(f"unknown threat kind {kind!r}", field="kind")


# -- the filter from query parameters ------------------------------------------------------

_LIST_FIELDS = {"type", "verdict", "severity", "tlp", "tags", "tags_any", "ids"}
_CONTROL = {"format", "limit"}


_TIME_FIELDS = frozenset({"first_seen_from", "first_seen_to", "last_seen_from", "last_seen_to"})


def filter_from_query(query: Any) -> IocFilter:
    """IocFilter from query parameters: lists as repeated or comma-separated values; max_tlp defaults to amber."""
    import msgspec

    known = set(IocFilter.__struct_fields__)
    data: dict[str, Any] = {}
    for name in query:
        if name in _CONTROL:
            continue
        if name not in known:
            raise ValidationError(f"unknown query parameter {name!r}; filters are {', '.join(sorted(known))}", field=name)
        values = query.getlist(name) if hasattr(query, "getlist") else [query[name]]
        if name in _LIST_FIELDS:
            data[name] = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
        else:
            data[name] = values[-1]
    for name in _TIME_FIELDS & data.keys():  # an unencoded '+' of the offset arrives as a space
        if isinstance(data[name], str):
            data[name] = limits.query_time_text(data[name])
    data.setdefault("max_tlp", DEFAULT_MAX_TLP)  # a TLP is read as writes read it (Tlp._missing_): TLP:RED, tlp-green
    if "ids" in data:
        data["ids"] = [_int(v, "ids") for v in data["ids"]]
    try:
        return msgspec.convert(data, IocFilter, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.split("`$.", 1)[1].split("`", 1)[0].split("[", 1)[0] if "`$." in message else "query"
        raise ValidationError(f"query parameter {field!r}: {message.split(' - at ', 1)[0]}", field=field) from None


def _int(value: str, field: str) -> int:
    return limits.check_int(value, field=field)  # a 400 naming the field, also beyond 64 bits
