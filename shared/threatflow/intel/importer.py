"""Applying a parsed import: IoCs, threats, links and relations in ONE transaction.

A malformed document has already failed in parsing, before this runs. Here a
database error rolls back everything; bad items are rejected one by one and
named. Re-importing the same document creates no duplicates: IoCs merge by
(type, value) (their detection count rises), threats by name or alias, links
and relations by their unique keys.

Large documents go through the `ioc-import` function: the request body waits in
the uploads bucket, the job record in Firestore (`import_jobs`) moves
queued -> running -> succeeded | failed, and a redelivered message for a
finished job does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth import requester as auth_requester
from threatflow.auth.model import Role
from threatflow.auth.repository import UserRepository
from threatflow.intel import repository as intel_repository
from threatflow.intel.formats import ImportFormat, ItemError, ParsedImport, ParsedIoc, ParsedThreat, Relation, parse, parser_for
from threatflow.intel.formats import base as formats_base
from threatflow.intel.formats.misp import MAX_THREATS_PER_IOC
from threatflow.iocs import repository as ioc_repository
from threatflow.iocs import service
from threatflow.iocs.model import MAX_SOURCES_PER_IOC, MAX_TAGS_PER_IOC, Tlp
from threatflow.iocs.normalise import normalise
from threatflow.platform import limits
from threatflow.platform.errors import PermanentError, RetryableError, ThreatFlowError, ValidationError
from threatflow.platform.vocabulary import clean_sources, clean_tags, new_record_tlp
from threatflow.threats import repository as threat_store
from threatflow.threats.model import CUT_FIELDS, MAX_ALIASES, MAX_REFERENCES, MAX_RELATIONS_PER_LINK, MAX_TTPS, ThreatResult, merge_aliases

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from threatflow.iocs.model import DecayPolicy
    from threatflow.iocs.service import WarninglistMatcher
    from threatflow.platform.ports import BlobStore, Clock, DocumentStore
    from threatflow.threats.attack import AttackCatalog

log = logging.getLogger("threatflow.intel.importer")
_Tie = TypeVar("_Tie")  # what a link or relation joins, as ids
IMPORT_JOBS = "import_jobs"
IMPORT_LEASES = "import_job_leases"
# Longer than the ioc-import function's timeout (540 s), so a live run never loses its lease,
# and a crashed one frees the job for the next delivery soon after.
LEASE_SECONDS = 600
MAX_STORED_ERRORS = 1000  # a Firestore document holds at most 1 MiB; the full results go to the bucket
# A relation between two refs expands to every IoC pair (a STIX pattern of K values on each side: K² rows).
# Capped per import, so import work stays linear in the input; what was cut is reported.
MAX_RELATIONS_PER_IMPORT = 1000
# Threat links likewise: each IoC to at most MAX_THREATS_PER_IOC threats (32, MISP's parser rule, for every
# format: a STIX indicator of 100 values indicating 300 malware, 167 KB, made 30,000 links), at most
# MAX_LINKS_PER_IMPORT in all, written one statement per threat and relation (three per link before).
MAX_LINKS_PER_IMPORT = 10_000


def apply_import(
    parsed: ParsedImport,
    *,
    conn: Connection,
    now: datetime,
    actor: str | None,
    clearance: str,
    catalog: AttackCatalog | None,
    warninglists: WarninglistMatcher | None,
    policies: dict[str, DecayPolicy],
    source_default: str | None = None,
    chunk: int = 10_000,
) -> dict[str, Any]:
    """Everything in the caller's unit of work: a database error rolls all of it back."""
    parsed = parsed.with_defaults(source=source_default)
    errors: list[ItemError] = list(parsed.errors)
    threats, cut_before = _bounded_threats(_checked_ttps(parsed.threats, catalog, errors))
    results: list[dict[str, Any]] = []
    if len(parsed.iocs) > chunk:
        _strictest_tlp_across_chunks(parsed.iocs)
    # upsert_batch takes at most MAX_BATCH items; chunks share this one transaction.
    for start in range(0, len(parsed.iocs), chunk):
        part = parsed.iocs[start : start + chunk]
        batch = service.upsert_batch(
            [p.item for p in part],
            conn=conn,
            now=now,
            policies=policies,
            warninglists=warninglists,
            clearance=clearance,
            new_tlp=new_record_tlp(clearance),
        )
        for offset, result in enumerate(batch["results"]):
            results.append({**result, "index": start + offset, "ref": part[offset].ref})
    threat_results = (
        threat_store.upsert_threats(conn, [t.item for t in threats], catalog=catalog, readable=tlp_clearance.allowed(clearance))
        if threats
        else []
    )
    threat_results = [_with_cut(result, cut) for result, cut in zip(threat_results, cut_before, strict=True)]

    # Links and relations are made between records the importer may read or this import created only, as POST
    # /threats/{id}/link and /iocs/{id}/relations make them: an item naming a stored record above the clearance
    # merged into it, but that record does not exist for this writer.
    visible_tlps = tlp_clearance.allowed(clearance)
    visible_iocs = intel_repository.visible_ioc_ids(conn, [r["id"] for r in results if r.get("id") is not None], visible_tlps=visible_tlps)
    visible_iocs |= {r["id"] for r in results if r["status"] == "created"}
    visible_threats = threat_store.visible_threat_ids(conn, [r.id for r in threat_results if r.id is not None], visible_tlps=visible_tlps)
    visible_threats |= {r.id for r in threat_results if r.status == "created" and r.id is not None}
    ioc_ids: dict[str, list[int]] = {}  # by ref and by part (ParsedIoc.parts)
    for parsed_ioc, result in zip(parsed.iocs, results, strict=True):
        for ref in (parsed_ioc.ref, *parsed_ioc.parts):
            if result.get("id") in visible_iocs and result["id"] not in ioc_ids.setdefault(ref, []):
                ioc_ids[ref].append(int(result["id"]))
    threat_ids: dict[str, int] = {}
    threat_out = []
    for threat, result in zip(threats, threat_results, strict=True):
        shown = {"index": result.index, "ref": threat.ref, "status": result.status, "id": result.id, "reason": result.reason}
        shown |= result.cuts()
        # No id: a threat above the clearance; no cut counts when nothing was cut, as a batch's results.
        threat_out.append({k: v for k, v in shown.items() if k == "reason" or (v is not None and (v != 0 or not k.endswith("_cut")))})
        if result.id in visible_threats:
            threat_ids[threat.ref] = int(result.id)

    links = links_cut = 0
    threats_of: dict[int, set[int]] = {}  # ioc id -> the threats this import links it to
    to_link: dict[tuple[int, str], dict[int, None]] = {}  # (threat id, relation) -> ioc ids, in document order
    # A tie keeps the marking of what it was learnt from (sql/0014_link_tlp.sql): one the document marks above its
    # ends (a TLP:RED `indicates` between amber objects) is stored at that marking and hidden from the ends' readers
    # below it; an unmarked one takes the stricter of its ends. A tie stated twice (marked red once, unmarked once) is
    # as strict as its strictest statement, and an import only ever raises a stored tie's TLP.
    link_marks = _strictest(
        ((threat_ids[link.threat_ref], link.relation, ioc_id), link.tlp)
        for link in parsed.links
        if link.threat_ref in threat_ids
        for ioc_id in ioc_ids.get(link.ioc_ref, [])
    )
    for link in parsed.links:
        threat_id = threat_ids.get(link.threat_ref)
        if threat_id is None:
            continue  # the threat was rejected (already named in its result) or is above the clearance
        for ioc_id in ioc_ids.get(link.ioc_ref, []):
            iocs_of = to_link.setdefault((threat_id, link.relation), {})
            if ioc_id in iocs_of:
                continue  # the same link named twice
            linked = threats_of.setdefault(ioc_id, set())
            if links >= MAX_LINKS_PER_IMPORT or (threat_id not in linked and len(linked) >= MAX_THREATS_PER_IOC):
                links_cut += 1
                continue
            linked.add(threat_id)
            iocs_of[ioc_id] = None
            links += 1
    links_created = 0
    for (threat_id, verb), iocs_of in to_link.items():
        if iocs_of:
            marks = {ioc_id: link_marks[(threat_id, verb, ioc_id)] for ioc_id in iocs_of}
            made = intel_repository.link_iocs(
                conn,
                threat_id=threat_id,
                ioc_ids=list(iocs_of),
                relation=verb,
                source=source_default,
                tlp=marks,  # one per link: a held link's TLP is only raised; its confidence only within the clearance
                relabel_within=visible_tlps,
            )
            links_created += len(made.new)
            links_cut += len(made.full)  # the pair holds MAX_RELATIONS_PER_LINK other relations
            links -= len(made.full)
    if links_cut:
        errors.append(
            ItemError(
                "links",
                f"{links_cut} threat links not made: each IoC to at most {MAX_THREATS_PER_IOC} threats,"
                f" at most {MAX_LINKS_PER_IMPORT} per import, a threat and an IoC by at most {MAX_RELATIONS_PER_LINK} relations",
            )
        )
    relations = relations_created = relations_cut = 0
    chosen: dict[tuple[int, int, str], str | None] = {}  # (source, target, type) of the IoC relations to make -> marking
    chosen_targets: dict[tuple[int, str], set[int]] = {}  # the same, by (source, type)
    for relation in parsed.relations:
        sources, targets = ioc_ids.get(relation.source_ref, []), ioc_ids.get(relation.target_ref, [])
        targets_of = set(targets)
        # Counted, never enumerated: the pairs of this statement, less those an earlier statement chose (a tie stated
        # twice is one relation; at most MAX_RELATIONS_PER_IMPORT are chosen, so the lookup is bounded).
        held = sum(len(chosen_targets.get((s, relation.type), set()) & targets_of) for s in set(sources))
        wanted = len(sources) * len(targets) - len(set(sources) & targets_of) - held
        room = max(0, MAX_RELATIONS_PER_IMPORT - relations)
        fresh = ((s, t) for s in sources for t in targets if s != t and t not in chosen_targets.get((s, relation.type), set()))
        pairs = list(itertools.islice(fresh, room))
        relations_cut += wanted - len(pairs)
        relations += len(pairs)
        for s, t in pairs:
            chosen[(s, t, relation.type)] = None
            chosen_targets.setdefault((s, relation.type), set()).add(t)
    # Each chosen pair takes the strictest marking of the statements of it (also one past the bound: a tie stated red
    # once and unmarked once is red). Only the chosen pairs (at most MAX_RELATIONS_PER_IMPORT) are looked up, never
    # every pair of every statement.
    for relation in parsed.relations if chosen else ():
        if not relation.tlp:
            continue
        targets_of = set(ioc_ids.get(relation.target_ref, []))
        for s in ioc_ids.get(relation.source_ref, []):
            for t in chosen_targets.get((s, relation.type), set()) & targets_of:
                key = (s, t, relation.type)
                chosen[key] = _strictest([(key, chosen[key]), (key, relation.tlp)])[key]
    for kind, group in itertools.groupby(sorted(chosen, key=lambda key: key[2]), key=lambda key: key[2]):
        pairs = [(s, t) for s, t, _kind in group]
        pair_marks = {(s, t): chosen[(s, t, kind)] for s, t in pairs}
        relations_created += intel_repository.add_ioc_relations(
            conn, pairs, type=kind, source=source_default, tlps=pair_marks, writable=visible_tlps
        )
    if relations_cut:
        errors.append(ItemError("relations", f"{relations_cut} IoC relations not created: at most {MAX_RELATIONS_PER_IMPORT} per import"))
    threat_relations, threat_relations_created, threat_relations_cut = _relate_threats(
        conn, parsed.threat_relations, threat_ids=threat_ids, source=source_default, visible_tlps=visible_tlps
    )
    if threat_relations_cut:
        errors.append(
            ItemError(
                "threat_relations",
                f"{threat_relations_cut} threat relations not made: at most {MAX_RELATIONS_PER_IMPORT}"
                f" per import, two threats by at most {MAX_RELATIONS_PER_LINK} relations",
            )
        )
    cuts: dict[str, int] = {}  # what full IoCs could not take, by field (results count their own)
    for field, bound in (("tags", MAX_TAGS_PER_IOC), ("sources", MAX_SOURCES_PER_IOC)):
        cuts[field] = cut = sum(int(r.get(f"{field}_cut", 0)) for r in results)
        if cut:
            errors.append(
                ItemError(
                    field,
                    f"{cut} {field} not stored: an IoC holds at most {bound} {field} (it keeps those it has,"
                    f" then the first new ones; each IoC's result counts its own in {field}_cut)",
                )
            )
    ioc_repository.record_audit(conn, action="import", actor=actor, detail={**parsed.summary(), "source": source_default})

    summary: dict[str, Any] = {status: 0 for status in ("created", "updated", "unchanged", "rejected")}
    for result in results:
        summary[result["status"]] = summary.get(result["status"], 0) + 1
    summary["rejected"] += len(parsed.errors)  # items the parser could not make into an IoC or threat
    summary["total"] = len(results) + len(parsed.errors)
    summary["tags_cut"] = cuts["tags"]
    summary["sources_cut"] = cuts["sources"]
    threat_summary: dict[str, int] = {}
    threat_cuts = {key: sum(result.cuts()[key] for result in threat_results) for key in CUT_FIELDS}
    for item in threat_out:
        status = str(item["status"])
        threat_summary[status] = threat_summary.get(status, 0) + 1
    if threat_out:  # what merges into threats could not keep (threats.model: a threat's MAX_TAGS tags, MAX_ALIASES ...)
        threat_summary |= threat_cuts
    return {
        "iocs": {"results": results, "summary": summary},
        "threats": {"results": threat_out, "summary": threat_summary},
        "links": links,
        "links_created": links_created,
        "links_cut": links_cut,
        "relations": relations,
        "relations_created": relations_created,
        "relations_cut": relations_cut,
        "threat_relations": threat_relations,
        "threat_relations_created": threat_relations_created,
        "threat_relations_cut": threat_relations_cut,
        "tags_cut": cuts["tags"],
        "sources_cut": cuts["sources"],
        "errors": [e.to_json() for e in errors],
        "warnings": [w.to_json() for w in parsed.warnings],
        "skipped": parsed.skipped,
    }


def _relate_threats(
    conn: Connection, wanted: Sequence[Relation], *, threat_ids: Mapping[str, int], source: str | None, visible_tlps: Sequence[str]
) -> tuple[int, int, int]:
    """A document's threat-to-threat relations between threats the importer may read or this import created
    (`threat_ids`), at most MAX_RELATIONS_PER_IMPORT, in one relate_threats: (made, of them new, not made).

    Each is stored with its own marking (sql/0014_link_tlp.sql): one marked above its threats (a TLP:RED attribution
    between amber threats) is stored red and shown only to readers cleared for red; an unmarked one took the
    import's `tlp` (ParsedImport.with_defaults) or, with none, the stricter of its threats. A relation stated twice is
    as strict as its strictest statement."""
    chosen: dict[tuple[int, int, str], None] = {}  # in document order, each once
    cut = 0
    marks = _strictest(
        ((threat_ids[r.source_ref], threat_ids[r.target_ref], r.type), r.tlp)
        for r in wanted
        if r.source_ref in threat_ids and r.target_ref in threat_ids
    )
    for relation in wanted:
        source_id, target_id = threat_ids.get(relation.source_ref), threat_ids.get(relation.target_ref)
        if source_id is None or target_id is None or source_id == target_id:
            continue  # a threat rejected (named in its result), above the clearance, or two refs merged into one
        key = (source_id, target_id, relation.type)
        if key in chosen:
            continue
        if len(chosen) >= MAX_RELATIONS_PER_IMPORT:
            cut += 1
            continue
        chosen[key] = None
    related = threat_store.relate_threats(
        conn, list(chosen), source=source, tlp={key: marks[key] for key in chosen}, relabel_within=visible_tlps
    )  # one marking per relation: a held one's TLP is only raised, its confidence only within the importer's clearance
    return len(related.made), len(related.new), cut + len(chosen) - len(related.made)


def _strictest(statements: Iterable[tuple[_Tie, str | None]]) -> dict[_Tie, str | None]:
    """Each tie's most restrictive marking among the statements of it (None: none of them is marked)."""
    out: dict[_Tie, str | None] = {}
    for tie, marking in statements:
        held = out.get(tie)
        out[tie] = marking if marking and (held is None or Tlp(marking).rank > Tlp(held).rank) else held
    return out


def _strictest_tlp_across_chunks(iocs: Sequence[ParsedIoc]) -> None:
    """Gives every item of an indicator the most restrictive TLP any item of it names in this import. upsert_batch
    merges one value's items that way within a chunk; across chunks the later one's TLP replaced the earlier's, so a
    value marked red early in a large feed and green in a later chunk was stored green. Items that do not
    normalise are left to be rejected by upsert_batch."""
    strictest: dict[tuple[str, str], Tlp] = {}
    keyed: list[tuple[ParsedIoc, tuple[str, str]]] = []
    for parsed_ioc in iocs:
        try:
            indicator = normalise(parsed_ioc.item.value, parsed_ioc.item.type)
            tlp = Tlp.parse(parsed_ioc.item.tlp) if parsed_ioc.item.tlp is not None else None
        except (ValidationError, ValueError):
            continue
        key = (str(indicator.type), indicator.value)
        keyed.append((parsed_ioc, key))
        if tlp is not None and (key not in strictest or tlp.rank > strictest[key].rank):
            strictest[key] = tlp
    for parsed_ioc, key in keyed:
        if key in strictest:
            parsed_ioc.item.tlp = strictest[key].value


def _checked_ttps(threats: list[ParsedThreat], catalog: AttackCatalog | None, errors: list[ItemError]) -> list[ParsedThreat]:
    """Drop unknown or revoked ATT&CK ids from imported threats (named in errors) rather than reject the threat:
    an old bundle's stale technique should not cost us the actor."""
    if catalog is None:
        return threats
    out = []
    for threat in threats:
        kept = []
        for ttp in threat.item.ttps:
            try:
                catalog.validate([ttp])
            except ValidationError as exc:
                errors.append(ItemError(threat.ref, f"TTP dropped: {exc.message}"))
                continue
            kept.append(ttp)
        changed = len(kept) != len(threat.item.ttps)
        out.append(ParsedThreat(threat.ref, msgspec.structs.replace(threat.item, ttps=kept)) if changed else threat)
    return out


def _bounded_threats(threats: list[ParsedThreat]) -> tuple[list[ParsedThreat], list[dict[str, int]]]:
    """A document's threat keeps its first MAX_TTPS TTPs, MAX_REFERENCES references and MAX_ALIASES aliases, the rest
    counted in its result's `*_cut` as a merge's are: a batch item past them is refused, but a STIX malware with 520
    `uses` is the document's own threat and was refused whole with its links."""
    out: list[ParsedThreat] = []
    cuts: list[dict[str, int]] = []
    for threat in threats:
        item = threat.item
        # each once before the cut, as the store merges them: cut first, duplicates took the room of distinct ones
        aliases = merge_aliases(item.name, item.aliases)
        ttps = list(dict.fromkeys(item.ttps))
        references = threat_store.distinct_references(item.references)
        cut = {
            key: n
            for key, n in (
                ("ttps_cut", len(ttps) - MAX_TTPS),
                ("references_cut", len(references) - MAX_REFERENCES),
                ("aliases_cut", len(aliases) - MAX_ALIASES),
            )
            if n > 0
        }
        if cut:
            item = msgspec.structs.replace(
                item, ttps=ttps[:MAX_TTPS], references=references[:MAX_REFERENCES], aliases=aliases[:MAX_ALIASES]
            )
        out.append(ParsedThreat(threat.ref, item) if cut else threat)
        cuts.append(cut)
    return out, cuts


def _with_cut(result: ThreatResult, cut: dict[str, int]) -> ThreatResult:
    """The result with what `_bounded_threats` cut before the store added to its counts (a rejected threat has none)."""
    if not cut or result.status == "rejected":
        return result
    return dataclasses.replace(result, **{key: getattr(result, key) + n for key, n in cut.items()})


def needs_catalog(parsed: ParsedImport) -> bool:
    return any(t.item.ttps for t in parsed.threats)


# -- asynchronous imports ------------------------------------------------------------------


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ImportRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of POST /api/v1/iocs/import (and of a stored async job)."""

    format: str
    content: Any
    source: str | None = None
    tlp: str | None = None
    tags: list[str] = []


class ImportEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """An import request with its document left undecoded: what POST /import?async=true checks before it queues the
    job, which decodes the document. It decoded the whole body (twice: decode_body's screen, then the typed decode) to
    check these few fields; `batch_field` skips decode_body's whole-body screen, and check_request screens the rest."""

    batch_field: ClassVar[str] = "content"
    format: str
    content: msgspec.Raw
    source: str | None = None
    tlp: str | None = None
    tags: msgspec.Raw = msgspec.Raw(b"[]")  # decoded by check_request once its size is known to be bounded


# An import's `tags` as written (repeats and blanks count; MAX_TAGS_PER_IOC applies once they are dropped): 8 million
# repeats of "a" (32 MiB) peaked at 1.6 GB checking an async envelope. An async request's field is refused unread past
# MAX_REQUEST_TAGS_BYTES (1,024 tags of 128 characters fit in 140 KB, unless padded with blanks inside the strings).
MAX_REQUEST_TAGS = 1024
MAX_REQUEST_TAGS_BYTES = 1024 * 1024


class _Tags(msgspec.Struct, forbid_unknown_fields=True):
    tags: list[str]


def _request_tags(tags: list[str] | msgspec.Raw) -> list[str]:
    """The request's tags as written, at most MAX_REQUEST_TAGS of them (ValidationError naming tags)."""
    too_many = ValidationError(
        f"at most {MAX_REQUEST_TAGS:,} tags as written per import ({MAX_TAGS_PER_IOC} once repeats and blanks are dropped)",
        field="tags",
    )
    if isinstance(tags, msgspec.Raw):
        if len(tags) > MAX_REQUEST_TAGS_BYTES:
            raise too_many
        written: list[str] = limits.decode_body(b'{"tags": ' + bytes(tags) + b"}", _Tags).tags  # a sync import's words
    else:
        written = tags
    if len(written) > MAX_REQUEST_TAGS:
        raise too_many
    return written


def check_containers(raw: bytes) -> None:
    """Refuse a request opening more JSON objects and arrays than an import may (formats.base.MAX_DOCUMENT_CONTAINERS),
    counted in C over its bytes before it is decoded (ValidationError naming content)."""
    bound = formats_base.MAX_DOCUMENT_CONTAINERS
    # A document sent as a JSON string is parsed again by its format: its escaped '{' and '[' open containers too.
    escaped = sum(raw.count(escape) for escape in (b"\\u007b", b"\\u007B", b"\\u005b", b"\\u005B")) if b"\\u00" in raw else 0
    if raw.count(b"{") + raw.count(b"[") + escaped > bound:
        raise ValidationError(
            f"the document opens more than {bound:,} JSON objects and arrays (counting every '{{' and '['); at most"
            f" {formats_base.MAX_IMPORT_ITEMS:,} items an import: split it into several imports",
            field="content",
        )


def _no_content(content: Any) -> bool:
    if isinstance(content, msgspec.Raw):
        return len(content) <= 4 and bytes(content) in (b"null", b'""')
    return content is None or content == ""


def import_format(fmt: str) -> ImportFormat:
    """The request's format as every import reads it (formats.parser_for: stripped, any case), or a 400 naming it."""
    parser_for(fmt)  # raises the ValidationError naming format, with the formats it knows
    return ImportFormat(fmt.strip().lower())


def check_content_kind(fmt: ImportFormat, content: msgspec.Raw) -> None:
    """What the format's parser refuses from the content's JSON kind alone, as a sync import refuses it (its words),
    for an async import before it is queued: CSV or text that is no string, a number, true or false in any format.
    The content stays undecoded but for a scalar (short: msgspec refuses an integer past 64 bits)."""
    first = bytes(memoryview(content)[:1])
    if first == b'"':
        return
    if first in (b"[", b"{"):
        if fmt in (ImportFormat.CSV, ImportFormat.TEXT):
            parse(fmt, [])  # "content must be a string"
        return
    try:
        scalar = msgspec.json.decode(content)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"content: {exc}", field="content") from None
    parse(fmt, scalar)


def blob_name(job_id: str) -> str:
    return f"imports/{job_id}.json"


def check_request(body: ImportRequest | ImportEnvelope) -> list[str]:
    """The request's own fields, checked before its document is read (ValidationError naming the field): by a sync
    import, and by an async one before it is queued (it checked only the format, and queued a job that could only
    fail). Returns the cleaned tags."""
    if _no_content(body.content):
        raise ValidationError("content is required", field="content")
    tags = _request_tags(body.tags)  # bounded before the walk below, which builds a path for each
    # NUL, 64-bit: what decode_body screens in a whole body, here for the fields an envelope decoded (cheap: short)
    limits.check_json({"format": body.format, "source": body.source, "tlp": body.tlp, "tags": tags})
    if body.source is not None:
        clean_sources([body.source])  # checked here: it would be every item's source, and reject each of them
    if body.tlp is not None:
        Tlp.parse_field(body.tlp, field="tlp")  # checked here; the items keep the caller's spelling, parsed again when stored
    # Checked once here (every item gets them): unchecked, 15,000 of them on 15,000 lines made 1.8 GB of tag lists
    # before the store rejected each item for holding more than MAX_TAGS.
    return clean_tags(tags, holder="import")


def parse_request(body: ImportRequest) -> ParsedImport:
    tags = check_request(body)
    return parse(body.format, body.content).with_defaults(source=body.source, tlp=body.tlp, tags=tags)


def run_job(
    job_id: str,
    *,
    engine: Engine,
    documents: DocumentStore,
    blobs: BlobStore,
    bucket: str,
    clock: Clock,
    catalog: Callable[[], AttackCatalog | None],
    warninglists: Callable[[], WarninglistMatcher | None],
    policies: Callable[[], dict[str, DecayPolicy]],
) -> dict[str, Any]:
    """Process one queued import; idempotent per job id (a finished job is left alone).

    The reference data comes as callables, read when the job runs rather than when it was queued."""
    job = documents.get(IMPORT_JOBS, job_id)
    if job is None:
        raise ValidationError(f"no import job {job_id!r}", field="job_id")  # permanent: acked and logged
    if job.get("state") in (JobState.SUCCEEDED, JobState.FAILED):
        return job
    with _lease(documents, job_id, now=clock.now()):
        read = documents.get_versioned(IMPORT_JOBS, job_id)  # a run that just finished released the lease to us
        if read is None:
            raise ValidationError(f"no import job {job_id!r}", field="job_id")
        job = read.data
        if job.get("state") in (JobState.SUCCEEDED, JobState.FAILED):
            return job
        attempts = int(job.get("attempts", 0)) + 1
        start = {"state": JobState.RUNNING.value, "started_at": clock.now(), "attempts": attempts}
        # A compare-and-set on the job as read under the lease: fail-stalled-import-jobs looks for a lease before it
        # fails a job, so it may fail this one between our lease and our start; the start wrote `running` over
        # `failed` and ran the import the user had been told to make again. Only that sweep writes a leased job.
        if documents.update_if_unchanged(IMPORT_JOBS, job_id, start, version=read.version) is None:
            now_read = documents.get(IMPORT_JOBS, job_id)
            if now_read is not None and now_read.get("state") in (JobState.SUCCEEDED, JobState.FAILED):
                return now_read
            raise RetryableError(f"import job {job_id} was written by another party as this delivery started it; delivered again")
        try:
            with unit_of_work(engine) as conn:
                applied = intel_repository.applied_import(conn, job_id)
            if applied is None:
                raw = blobs.get(bucket, job.get("blob") or blob_name(job_id))
                body, parsed = _parse_stored(raw, job_id=job_id)
                documents.set(IMPORT_JOBS, job_id, {"progress": {"stage": "parsed", **parsed.summary()}}, merge=True)
                with unit_of_work(engine) as conn:  # the message's one unit of work
                    # The requester's account now, in the import's transaction: a job queued before its requester was
                    # disabled, demoted or lowered wrote with the clearance stored when it was queued.
                    requester = auth_requester.acting_for(
                        UserRepository(conn),
                        user_id=job.get("requested_by_id"),
                        username=job.get("requested_by"),
                        version=job.get("requester_version"),
                        role=Role.ANALYST,
                    )
                    result = apply_import(
                        parsed,
                        conn=conn,
                        now=clock.now(),
                        actor=requester.username,
                        clearance=tlp_clearance.of(requester),
                        catalog=catalog() if needs_catalog(parsed) else None,
                        warninglists=warninglists(),
                        policies=policies(),
                        source_default=body.source,
                    )
                    applied = {
                        "result": _job_result(job_id, result),
                        "progress": {"stage": "done", **parsed.summary()},
                        "clearance": _stricter(job.get("clearance"), tlp_clearance.of(requester)),
                    }
                    # In the same transaction: a delivery after the commit finishes the job from it, never applies it
                    # again (the results below or the job's record failing sighted every IoC twice on the redelivery).
                    intel_repository.record_applied_import(conn, job_id, applied)
            else:
                result = None  # applied by an earlier delivery, whose results file may not have been written
                applied["result"] = {**applied["result"], "results_blob": None}
        except (PermanentError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            message = exc.message if isinstance(exc, PermanentError) else f"stored request is not valid: {exc}"
            documents.set(IMPORT_JOBS, job_id, {"state": JobState.FAILED.value, "error": message, "finished_at": clock.now()}, merge=True)
            raise ValidationError(message, field="content") from None
        except Exception as exc:
            # Retryable (database down...): back to queued so the redelivery runs it again.
            documents.set(
                IMPORT_JOBS, job_id, {"state": JobState.QUEUED.value, "last_error": f"{exc.__class__.__name__}: {exc}"}, merge=True
            )
            raise
        if result is not None:
            blobs.put(bucket, f"imports/{job_id}.result.json", msgspec.json.encode(result), content_type="application/json")
        done = {"state": JobState.SUCCEEDED.value, "finished_at": clock.now(), "error": None, **applied}
        documents.set(IMPORT_JOBS, job_id, done, merge=True)
        return {**job, **done}


def job_readable_by(job: Mapping[str, Any], principal: Any) -> bool:
    """The requester reads their job; an admin reads another user's only within the clearance it ran with (its
    progress, errors and warnings come from the document, which may be red). A job recorded before its clearance was
    (or one whose field is unreadable) counts as red."""
    if principal is None:
        return False
    if job.get("requested_by") == principal.username:
        return True
    recorded = job.get("clearance")
    ran_with = recorded if recorded in tlp_clearance.TLP_ORDER else tlp_clearance.TLP_ORDER[-1]
    return principal.role is Role.ADMIN and tlp_clearance.can_read(tlp_clearance.of(principal), ran_with)


def _stricter(recorded: Any, acting: str) -> str:
    """The clearance a job's record is kept at: what its requester had when it was queued or when it ran, the higher
    (an account raised meanwhile wrote with more than it queued with)."""
    if recorded not in tlp_clearance.TLP_ORDER:
        return acting
    return max(str(recorded), acting, key=tlp_clearance.TLP_ORDER.index)


def _job_result(job_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """What the job's record shows of an import's answer (the whole answer goes to the bucket)."""
    rejected = [r for r in result["iocs"]["results"] if r["status"] == "rejected"]
    return {
        "iocs": {"summary": result["iocs"]["summary"], "rejected": rejected[:MAX_STORED_ERRORS]},
        "threats": {"summary": result["threats"]["summary"]},
        "links": result["links"],
        "relations": result["relations"],
        "links_cut": result["links_cut"],
        "relations_cut": result["relations_cut"],
        "threat_relations": result["threat_relations"],
        "threat_relations_cut": result["threat_relations_cut"],
        "tags_cut": result["tags_cut"],
        "sources_cut": result["sources_cut"],
        "errors": result["errors"][:MAX_STORED_ERRORS],
        "warnings": result["warnings"][:MAX_STORED_ERRORS],
        "skipped": result["skipped"],
        "results_blob": f"imports/{job_id}.result.json",
    }


def _parse_stored(raw: bytes, *, job_id: str) -> tuple[ImportRequest, ParsedImport]:
    """The job's parsing stage, which is pure: an exception it raises that is no error of the tree (TypeError, KeyError,
    RecursionError ...: a parser bug on an odd document) raises again on every delivery, so it fails the job at once
    as a PermanentError (acked), its traceback logged here with the job id. It went back to queued and was retried
    until the dead letter, the document parsed again each time."""
    try:
        check_containers(raw)
        # decode_body's screen (nesting, NUL, 64-bit integers), which the async route leaves to the job: it reads only
        # the envelope. A second decode when the pre-screen trips, freed before the typed one (the peak is the larger).
        limits.check_raw_json(raw)
        body = msgspec.json.decode(raw, type=ImportRequest)
        return body, parse_request(body)
    # MemoryError stays retryable: it says the instance ran short, which may be the moment's load (locally one process
    # hosts every function) rather than the document, and the dead letter bounds the retries. A document too big for
    # the instance mostly never gets here: Cloud Run stops an instance past its memory limit, with no exception.
    except (ThreatFlowError, msgspec.ValidationError, msgspec.DecodeError, MemoryError):
        raise
    except Exception as exc:
        log.exception(
            "import job %s: the document could not be parsed: %s", job_id, exc.__class__.__name__, extra={"fields": {"job_id": job_id}}
        )
        raise PermanentError(f"the document could not be parsed: internal error ({exc.__class__.__name__}); it has been logged") from exc


@contextlib.contextmanager
def _lease(documents: DocumentStore, job_id: str, *, now: datetime) -> Iterator[None]:
    """One delivery runs a job at a time: Pub/Sub may redeliver while the first run still
    works (ack deadline passed), and two runs would count every IoC as sighted twice."""
    holder = _take_lease(documents, job_id, now=now)
    try:
        yield
    finally:
        if (documents.get(IMPORT_LEASES, job_id) or {}).get("holder") == holder:
            documents.delete(IMPORT_LEASES, job_id)


def _take_lease(documents: DocumentStore, job_id: str, *, now: datetime) -> str:
    holder = uuid.uuid4().hex
    lease = {"holder": holder, "until": now + timedelta(seconds=LEASE_SECONDS)}
    if documents.create(IMPORT_LEASES, job_id, lease):
        return holder
    current = documents.get(IMPORT_LEASES, job_id)
    if current is not None and current.get("until") is not None and current["until"] > now:
        raise RetryableError(f"import job {job_id} is being run by another delivery (lease until {current['until'].isoformat()})")
    documents.delete(IMPORT_LEASES, job_id)  # expired: its holder died without finishing
    if not documents.create(IMPORT_LEASES, job_id, lease):
        raise RetryableError(f"import job {job_id} was taken over by another delivery")
    return holder
