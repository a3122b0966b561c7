"""Threats in PostgreSQL: the threat domain's one repository (links and relations: threatflow.intel.repository).

Every function takes a SQLAlchemy Connection first, so an import can compose
IoCs, threats, links and relations into one transaction.

A threat's identity is any of its names. `threat_names` (kept by a trigger from
threats.name/aliases) maps each lower-cased name and alias to exactly one
threat, so "upsert by name or alias" is one indexed lookup for the whole batch
and two threats can never share a name. Upserts of threats take a transaction
advisory lock: resolving names and writing them must not interleave with
another batch creating the same names (threat writes are rare; IoC writes,
which are not, never take it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from threatflow.platform.errors import ValidationError
from threatflow.platform.limits import check_aware
from threatflow.platform.vocabulary import MAX_TAGS, Tlp, clean_tags, new_record_tlp
from threatflow.threats.attack import check_id_format
from threatflow.threats.model import (
    CUT_FIELDS,
    MAX_ALIASES,
    MAX_REFERENCES,
    MAX_RELATIONS_PER_LINK,
    MAX_RELATIONS_SHOWN,
    MAX_TTPS,
    Reference,
    ResultStatus,
    ThreatIn,
    ThreatRecord,
    ThreatResult,
    check_relation_verb,
    clean_name,
    merge_aliases,
    name_key,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from threatflow.threats.attack import AttackCatalog

THREAT_COLUMNS = (
    "id, kind, name, aliases, description, confidence, severity, first_seen, last_seen, refs, ttps, tags, stix_id, tlp,"
    " created_at, updated_at"
)
_T = TypeVar("_T")
_FIELDS = THREAT_COLUMNS.replace(" ", "").split(",")
_LOCK_ID = 0x7F1A_0003  # the advisory lock threat upserts share
# The fields a merge can change, compared to decide "updated" or "unchanged".
_MERGED = ("aliases", "description", "confidence", "severity", "first_seen", "last_seen", "refs", "ttps", "tags", "stix_id", "tlp")


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def row_to_threat(row: Any) -> dict[str, Any]:
    """A threats row (THREAT_COLUMNS) as the API shows it."""
    return ThreatRecord.from_row(row).to_json()


# -- batch upsert --------------------------------------------------------------


@dataclass
class _Prepared:
    """One validated item: clean names, normalised TTPs and tags."""

    index: int
    kind: str
    name: str
    aliases: list[str]
    description: str | None
    confidence: int | None
    severity: str | None
    first_seen: datetime | None
    last_seen: datetime | None
    refs: list[dict[str, Any]]
    ttps: list[str]
    tags: list[str]
    stix_id: str | None
    tlp: str | None
    warnings: list[str] = field(default_factory=list)

    def name_keys(self) -> set[str]:
        return {name_key(n) for n in [self.name, *self.aliases]}


def prepare(index: int, item: ThreatIn, *, catalog: AttackCatalog | None) -> _Prepared:
    """Validate and clean one item; raises ValidationError naming the field."""
    name = clean_name(item.name)
    if not name:
        raise ValidationError("name is blank", field="name")
    if len(item.aliases) > MAX_ALIASES:
        raise ValidationError(f"at most {MAX_ALIASES} aliases per threat", field="aliases")
    if len(item.ttps) > MAX_TTPS:
        raise ValidationError(f"at most {MAX_TTPS} TTPs per threat", field="ttps")
    if len(item.references) > MAX_REFERENCES:
        raise ValidationError(f"at most {MAX_REFERENCES} references per threat", field="references")
    warnings: list[str] = []
    if catalog is not None:
        ttps = catalog.validate(item.ttps)
        warnings += [f"{t.id}: deprecated ATT&CK technique ({t.name})" for t in catalog.deprecated(ttps)]
    else:
        ttps = list(dict.fromkeys(check_id_format(t) for t in item.ttps))
    tlp = Tlp.parse_field(item.tlp, field="tlp").value if item.tlp is not None else None
    first_seen = check_aware(item.first_seen, field="first_seen")
    last_seen = check_aware(item.last_seen, field="last_seen")
    if first_seen and last_seen and first_seen > last_seen:
        raise ValidationError("first_seen is after last_seen", field="first_seen")
    stix_id = item.stix_id.strip() if item.stix_id and item.stix_id.strip() else None
    return _Prepared(
        index=index,
        kind=item.kind.value,
        name=name,
        aliases=merge_aliases(name, item.aliases),
        description=item.description,
        confidence=item.confidence,
        severity=item.severity.value if item.severity else None,
        first_seen=first_seen,
        last_seen=last_seen,
        refs=_merge_refs([], [msgspec.to_builtins(r) for r in item.references]),
        ttps=sorted(ttps),
        tags=sorted(clean_tags(item.tags, holder="threat")),
        stix_id=stix_id,
        tlp=tlp,
        warnings=warnings,
    )


def _merge_refs(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Union of references; two are the same when source, external id and URL agree."""
    out = list(old)
    seen = {_ref_key(r) for r in out}
    for ref in new:
        key = _ref_key(ref)
        if key not in seen:
            seen.add(key)
            out.append(ref)
    return out


def distinct_references(refs: Sequence[Reference]) -> list[Reference]:
    """`refs` in order, each once by the store's rule (source, external id and URL agree)."""
    out: dict[tuple[str, str, str], Reference] = {}
    for ref in refs:
        out.setdefault(_ref_key(msgspec.to_builtins(ref)), ref)
    return list(out.values())


def _ref_key(ref: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(ref.get("source_name", "")).lower(), str(ref.get("external_id") or "").lower(), str(ref.get("url") or ""))


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(x for x in (a, b) if x is not None) if (a or b) else None


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max(x for x in (a, b) if x is not None) if (a or b) else None


def _bounded(held: list[_T], new: list[_T], limit: int) -> tuple[list[_T], int]:
    """`held` (all of it, also past `limit`: nothing stored is deleted), then `new` while there is room; and how many
    of `new` did not fit. `new` holds only what `held` lacks."""
    room = max(0, limit - len(held))
    return [*held, *new[:room]], max(0, len(new) - room)


def _fold(base: dict[str, Any], item: _Prepared, *, scalars: bool) -> tuple[dict[str, Any], dict[str, int]]:
    """Merge an item into a threat: lists are unions, the earliest first_seen and the
    latest last_seen win, a given scalar replaces the stored one (unless `scalars` is false:
    a threat above the writer's clearance), and the name, kind and an existing stix_id are
    kept (a threat's identity does not move). A threat holds at most MAX_TAGS tags, MAX_ALIASES aliases, MAX_TTPS
    TTPs and MAX_REFERENCES references, as an IoC holds MAX_TAGS_PER_IOC tags: those it has, then the item's new ones
    in order (TTPs in id order) while there is room. All four were unioned without limit at every merge (and each
    alias is a row of threat_names). Also returns what was cut, by CUT_FIELDS name."""
    merged = dict(base)
    cuts: dict[str, int] = {}
    held_aliases = merge_aliases(base["name"], base["aliases"])
    new_aliases = merge_aliases(base["name"], held_aliases, [item.name, *item.aliases])[len(held_aliases) :]
    merged["aliases"], cuts["aliases_cut"] = _bounded(held_aliases, new_aliases, MAX_ALIASES)
    for key in ("description", "confidence", "severity", "tlp") if scalars else ():
        value = getattr(item, key)
        if value is not None:
            merged[key] = value
    merged["first_seen"] = _earliest(base["first_seen"], item.first_seen)
    merged["last_seen"] = _latest(base["last_seen"], item.last_seen)
    if merged["first_seen"] and merged["last_seen"] and merged["first_seen"] > merged["last_seen"]:
        merged["last_seen"] = merged["first_seen"]
    held_refs = _merge_refs([], base["refs"])
    new_refs = _merge_refs(held_refs, item.refs)[len(held_refs) :]
    merged["refs"], cuts["references_cut"] = _bounded(list(base["refs"]), new_refs, MAX_REFERENCES)
    for key, limit in (("ttps", MAX_TTPS), ("tags", MAX_TAGS)):
        held = set(base[key])
        kept, cuts[f"{key}_cut"] = _bounded(list(base[key]), [v for v in getattr(item, key) if v not in held], limit)
        merged[key] = sorted(set(kept))
    merged["stix_id"] = base["stix_id"] or item.stix_id
    return merged, cuts


def _as_row(item: _Prepared) -> dict[str, Any]:
    return {
        "kind": item.kind,
        "name": item.name,
        "aliases": item.aliases,
        "description": item.description,
        "confidence": item.confidence,
        "severity": item.severity,
        "first_seen": item.first_seen,
        "last_seen": item.last_seen,
        "refs": item.refs,
        "ttps": item.ttps,
        "tags": item.tags,
        "stix_id": item.stix_id,
        "tlp": item.tlp,
    }


def _groups(items: Sequence[_Prepared]) -> list[list[_Prepared]]:
    """Items of one batch that share a name, alias or stix_id describe one threat."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for position, item in enumerate(items):
        keys = {f"n:{k}" for k in item.name_keys()} | ({f"s:{item.stix_id}"} if item.stix_id else set())
        for key in keys:
            if key in owner:
                a, b = find(owner[key]), find(position)
                parent[max(a, b)] = min(a, b)
            else:
                owner[key] = position
    grouped: dict[int, list[_Prepared]] = {}
    for position, item in enumerate(items):
        grouped.setdefault(find(position), []).append(item)
    return [grouped[root] for root in sorted(grouped)]


_RECORD = (
    "kind text, name text, aliases text[], description text, confidence smallint, severity text, first_seen timestamptz,"
    " last_seen timestamptz, refs jsonb, ttps text[], tags text[], stix_id text, tlp text"
)
_INSERT = f"""
INSERT INTO threats (kind, name, aliases, description, confidence, severity, first_seen, last_seen, refs, ttps, tags, stix_id, tlp)
SELECT x.kind, x.name, x.aliases, x.description, x.confidence, x.severity, x.first_seen, x.last_seen,
       COALESCE(x.refs, '[]'::jsonb), x.ttps, x.tags, x.stix_id, COALESCE(x.tlp, CAST(:default_tlp AS text))
FROM jsonb_to_recordset(CAST(:doc AS jsonb)) AS x({_RECORD})
RETURNING id, name
"""
_UPDATE = f"""
UPDATE threats t SET aliases = x.aliases, description = x.description, confidence = x.confidence, severity = x.severity,
       first_seen = x.first_seen, last_seen = x.last_seen, refs = COALESCE(x.refs, '[]'::jsonb), ttps = x.ttps, tags = x.tags,
       stix_id = x.stix_id, tlp = COALESCE(x.tlp, t.tlp), updated_at = now()
FROM jsonb_to_recordset(CAST(:doc AS jsonb)) AS x(id bigint, {_RECORD})
WHERE t.id = x.id
"""


def upsert_threats(
    conn: Connection, items: Sequence[ThreatIn], *, catalog: AttackCatalog | None, readable: Sequence[str]
) -> list[ThreatResult]:
    """Create or merge threats by name OR any alias (case-insensitive) or stix_id.

    `readable` is the TLPs the writer may read (its clearance): a stored threat marked above them merges an item's
    lists and times only, its description, confidence, severity and TLP kept (an amber analyst naming a red threat
    with tlp clear declassified it, and the IoCs linked to it).

    A bad item is rejected alone (the reason names the field and, for TTPs, every
    unknown or revoked id); a database error aborts the caller's transaction.
    Items of one batch that share a name or alias merge into one threat.
    """
    results: dict[int, ThreatResult] = {}
    prepared: list[_Prepared] = []
    for index, item in enumerate(items):
        try:
            prepared.append(prepare(index, item, catalog=catalog))
        except ValidationError as exc:
            results[index] = ThreatResult(index, ResultStatus.REJECTED.value, reason=exc.message)
    if prepared:
        conn.execute(_text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
        names = sorted({n for p in prepared for n in [p.name, *p.aliases]})
        hidden: set[int] = set()  # threats the names match that are above the writer's clearance: they do not exist for them
        by_key: dict[str, int] = {}
        for r in conn.execute(_text(_THREATS_NAMED), {"names": names}):
            by_key[name_key(str(r[0]))] = int(r[1])
            if str(r[2]) not in readable:
                hidden.add(int(r[1]))
        stix_ids = sorted({p.stix_id for p in prepared if p.stix_id})
        by_stix: dict[str, int] = {}
        for r in conn.execute(_text("SELECT stix_id, id, tlp FROM threats WHERE stix_id = ANY(CAST(:s AS text[]))"), {"s": stix_ids}):
            by_stix[str(r[0])] = int(r[1])
            if str(r[2]) not in readable:
                hidden.add(int(r[1]))
        plans: list[tuple[list[_Prepared], int | None]] = []
        for group in _groups(prepared):
            owners: dict[int, str] = {}
            for p in group:
                for n in [p.name, *p.aliases]:
                    if name_key(n) in by_key:
                        owners.setdefault(by_key[name_key(n)], repr(n))
                if p.stix_id and p.stix_id in by_stix:
                    owners.setdefault(by_stix[p.stix_id], f"stix_id {p.stix_id}")
            if len(owners) > 1:
                # A threat above the clearance is named without its id: the name the writer gave is all they learn.
                clash = ", ".join(
                    f"{what} is a threat above your clearance" if tid in hidden else f"{what} is threat {tid}"
                    for tid, what in sorted(owners.items())
                )
                for p in group:
                    results[p.index] = ThreatResult(
                        p.index, ResultStatus.REJECTED.value, reason=f"names match more than one threat ({clash}); merge those first"
                    )
                continue
            plans.append((group, next(iter(owners), None)))
        plans = _one_plan_per_threat(plans)
        existing = _rows_for_update(conn, [tid for _, tid in plans if tid is not None])
        inserts: list[tuple[list[_Prepared], dict[str, Any], dict[str, int]]] = []
        updates: list[dict[str, Any]] = []
        for group, threat_id in plans:
            base = existing[threat_id] if threat_id is not None else _as_row(group[0])
            merged = base
            above = threat_id is not None and base["tlp"] not in readable
            cuts = dict.fromkeys(CUT_FIELDS, 0)  # the group's, counted on its first item (as a batch's items of one IoC value)
            for p in group if threat_id is not None else group[1:]:
                merged, cut_here = _fold(merged, p, scalars=not above)
                cuts = {key: cuts[key] + cut_here[key] for key in CUT_FIELDS}
            named = [Tlp(p.tlp) for p in group if p.tlp is not None]
            if named and not above:  # the group's most restrictive: one report naming a family at amber and at clear
                merged["tlp"] = max(named, key=lambda t: t.rank).value
            if threat_id is None:
                inserts.append((group, merged, cuts))
                continue
            changed = any(merged[k] != base[k] for k in _MERGED)
            if changed:
                updates.append({**merged, "id": threat_id})
            if above:
                # A threat above the writer's clearance does not exist for them: the item merged into it (lists and
                # times) is answered `updated` with nothing about the threat: no id, no kind, and not `unchanged`,
                # which told whether the tags, aliases or TTPs named were already there. That a threat of that name
                # exists still shows (not `created`); README, "Existence of a value above your clearance". No cut
                # counts either: they would tell how full the hidden threat's lists are.
                for p in group:
                    results[p.index] = ThreatResult(p.index, ResultStatus.UPDATED.value, reason="; ".join(p.warnings) or None)
                continue
            status = ResultStatus.UPDATED if changed else ResultStatus.UNCHANGED
            for p in group:
                results[p.index] = ThreatResult(
                    p.index, status.value, id=threat_id, reason=_reason(p, base["kind"], group[0]), **(cuts if p is group[0] else {})
                )
        if updates:
            conn.execute(_text(_UPDATE), {"doc": _json(updates)})
        if inserts:
            clearance = max(readable, key=lambda tlp: Tlp(tlp).rank)  # the highest TLP the writer reads
            doc = {"doc": _json([m for _, m, _ in inserts]), "default_tlp": new_record_tlp(clearance)}
            created = {str(r[1]): int(r[0]) for r in conn.execute(_text(_INSERT), doc)}
            for group, merged, cuts in inserts:
                threat_id = created[merged["name"]]
                for position, p in enumerate(group):
                    status = ResultStatus.CREATED if position == 0 else ResultStatus.UPDATED
                    reason = _reason(p, merged["kind"], group[0])
                    results[p.index] = ThreatResult(p.index, status.value, id=threat_id, reason=reason, **(cuts if position == 0 else {}))
    return [results[i] for i in range(len(items))]


def _one_plan_per_threat(plans: list[tuple[list[_Prepared], int | None]]) -> list[tuple[list[_Prepared], int | None]]:
    """Groups that share no name in the batch but match one stored threat (one by its name, one by an alias) are one
    group: each updated the threat in its own row of one UPDATE ... FROM, and PostgreSQL applies one row per target,
    which one by the plan, so the other items' tags, aliases and TLP were lost."""
    by_threat: dict[int, list[_Prepared]] = {}
    out: list[tuple[list[_Prepared], int | None]] = []
    for group, threat_id in plans:
        if threat_id is None:
            out.append((group, None))
        elif threat_id in by_threat:
            by_threat[threat_id].extend(group)
            by_threat[threat_id].sort(key=lambda p: p.index)
        else:
            by_threat[threat_id] = list(group)
            out.append((by_threat[threat_id], threat_id))
    return out


def _reason(item: _Prepared, kind: str, first: _Prepared) -> str | None:
    notes = list(item.warnings)
    if item is not first:
        notes.append(f"merged with item {first.index} of this batch")
    if item.kind != kind:
        notes.append(f"kind {item.kind} ignored; the threat is a {kind}")
    return "; ".join(notes) or None


def _rows_for_update(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(
        _text(f"SELECT {THREAT_COLUMNS} FROM threats WHERE id = ANY(CAST(:i AS bigint[])) ORDER BY id FOR UPDATE"), {"i": sorted(set(ids))}
    )
    out = {}
    for row in rows:
        record = dict(zip(_FIELDS, row, strict=True))
        for key in ("aliases", "ttps", "tags"):
            record[key] = list(record[key])
        record["refs"] = list(record["refs"] or [])
        out[int(record["id"])] = record
    return out


# -- reads ---------------------------------------------------------------------


def get_threat(conn: Connection, threat_id: int) -> ThreatRecord | None:
    row = conn.execute(_text(f"SELECT {THREAT_COLUMNS} FROM threats WHERE id = :i"), {"i": threat_id}).first()
    return ThreatRecord.from_row(row) if row else None


def threats_for_export(conn: Connection, *, threat_ids: Sequence[int] | None = None, max_tlp: str | None = None) -> list[dict[str, Any]]:
    """Full rows (references as a list of dicts), oldest first; max_tlp limits sharing."""
    tlps = Tlp.parse(max_tlp).at_most() if max_tlp else [t.value for t in Tlp]
    rows = conn.execute(
        _text(
            f"SELECT {THREAT_COLUMNS} FROM threats WHERE (CAST(:all AS boolean) OR id = ANY(CAST(:ids AS bigint[])))"
            " AND tlp = ANY(CAST(:tlps AS text[])) ORDER BY id"
        ),
        {"all": threat_ids is None, "ids": list(threat_ids or []), "tlps": tlps},
    )
    return [row_to_threat(r) for r in rows]


def visible_threat_ids(conn: Connection, threat_ids: Sequence[int], *, visible_tlps: Sequence[str]) -> set[int]:
    """The ids among threat_ids that exist and whose TLP is in `visible_tlps` (the caller's clearance)."""
    ids = sorted(set(threat_ids))
    if not ids:
        return set()
    rows = conn.execute(
        _text("SELECT id FROM threats WHERE id = ANY(CAST(:i AS bigint[])) AND tlp = ANY(CAST(:v AS text[]))"),
        {"i": ids, "v": list(visible_tlps)},
    )
    return {int(r[0]) for r in rows}


def tlp_of_threats(conn: Connection, threat_ids: Sequence[int]) -> dict[int, str]:
    """The stored TLP of each of threat_ids that exists."""
    ids = sorted(set(threat_ids))
    if not ids:
        return {}
    rows = conn.execute(_text("SELECT id, tlp FROM threats WHERE id = ANY(CAST(:i AS bigint[]))"), {"i": ids})
    return {int(r[0]): str(r[1]) for r in rows}


def threat_exists(conn: Connection, threat_id: int) -> bool:
    return conn.execute(_text("SELECT 1 FROM threats WHERE id = :i"), {"i": threat_id}).first() is not None


def names_of(conn: Connection, threat_id: int) -> list[str] | None:
    """A threat's name then its aliases; None when there is no such threat."""
    row = conn.execute(_text("SELECT name, aliases FROM threats WHERE id = :i"), {"i": threat_id}).first()
    return None if row is None else [row[0], *row[1]]


def link_counts(conn: Connection, threat_id: int, *, visible_tlps: Sequence[str]) -> tuple[int, dict[str, int], bool]:
    """(IoCs linked, links per relation, whether relations were left out) of one threat: the MAX_RELATIONS_SHOWN
    relations with the most links (verbs are free: it had a key per distinct verb, without limit). Only links whose
    own TLP and whose IoC's are in `visible_tlps` (the caller's clearance) are counted: the counts told an amber
    reader how many red IoCs and red links the threat had."""
    seen = (
        "FROM threat_iocs l JOIN iocs i ON i.id = l.ioc_id WHERE l.threat_id = :i"
        " AND l.tlp = ANY(CAST(:v AS text[])) AND i.tlp = ANY(CAST(:v AS text[]))"
    )
    params = {"i": threat_id, "n": MAX_RELATIONS_SHOWN + 1, "v": list(visible_tlps)}
    rows = conn.execute(_text(f"SELECT l.relation, count(*) {seen} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :n"), params).all()
    by_relation = {str(r[0]): int(r[1]) for r in sorted(rows[:MAX_RELATIONS_SHOWN])}
    count = conn.execute(_text(f"SELECT count(DISTINCT l.ioc_id) {seen}"), params).scalar_one()
    return int(count), by_relation, len(rows) > MAX_RELATIONS_SHOWN


# -- threat-to-threat relations -----------------------------------------------------


@dataclass(frozen=True)
class Related:
    """What relate_threats did with each `(source_id, target_id, verb)`: made (new or already held, its confidence
    raised), of them new, not made because the pair holds MAX_RELATIONS_PER_LINK other verbs (`full`), and the ids
    of ends that do not exist (a threat deleted meanwhile: its relations are not made)."""

    made: set[tuple[int, int, str]] = field(default_factory=set)
    new: set[tuple[int, int, str]] = field(default_factory=set)
    full: set[tuple[int, int, str]] = field(default_factory=set)
    missing: set[int] = field(default_factory=set)
    tlps: dict[tuple[int, int, str], str] = field(default_factory=dict)  # the TLP of each relation made, now


def relate_threats(
    conn: Connection,
    relations: Sequence[tuple[int, int, str]],
    *,
    confidence: int = 50,
    source: str | None = None,
    tlp: str | Mapping[tuple[int, int, str], str | None] | None = None,
    relabel_within: Sequence[str] = (),
) -> Related:
    """Relate threats: `source_id <verb> target_id` for each triple (in the order given; a threat related to
    itself is left out). A repeat keeps one row and raises its confidence to the higher value; a directed pair
    holds at most MAX_RELATIONS_PER_LINK verbs, a new one past them is not made (`Related.full`).

    `tlp` is the relations' own marking, one for all or per triple (none: the stricter of the two threats,
    sql/0014), never below the stricter threat: a held relation's is raised to it, and set to it (also lowered)
    when one `tlp` is given and the held relation's TLP is within `relabel_within` (the writer's clearance; imports
    give none: they only raise).

    Every end's row is locked first, all in id order as a merge locks the threats it updates (_rows_for_update):
    locking the source, then its target through the insert's foreign key, deadlocked with a batch merging into
    both. Under those locks no other writer relates these sources, so what the pairs hold is read once and the
    relations written in one statement: three statements however many sources and verbs (one a source and verb
    was 2,000 statements for 1,000 relations from 1,000 threats)."""
    if not 0 <= confidence <= 100:
        raise ValidationError(f"confidence {confidence} is outside 0..100", field="confidence")
    wanted = list(dict.fromkeys((int(s), int(t), check_relation_verb(v)) for s, t, v in relations if int(s) != int(t)))
    if not wanted:
        return Related()
    ids = sorted({end for s, t, _ in wanted for end in (s, t)})
    locked = conn.execute(_text("SELECT id FROM threats WHERE id = ANY(CAST(:i AS bigint[])) ORDER BY id FOR NO KEY UPDATE"), {"i": ids})
    missing = set(ids) - {int(r[0]) for r in locked}
    wanted = [w for w in wanted if w[0] not in missing and w[1] not in missing]
    pairs = sorted({(s, t) for s, t, _ in wanted})
    held: dict[tuple[int, int], set[str]] = {}
    if pairs:
        rows = conn.execute(
            _text(
                "SELECT r.source_id, r.target_id, r.type FROM threat_relations r"
                " JOIN unnest(CAST(:s AS bigint[]), CAST(:t AS bigint[])) AS p(s, t) ON r.source_id = p.s AND r.target_id = p.t"
            ),
            {"s": [s for s, _ in pairs], "t": [t for _, t in pairs]},
        )
        for r in rows:
            held.setdefault((int(r[0]), int(r[1])), set()).add(str(r[2]))
    chosen: list[tuple[int, int, str]] = []
    full: set[tuple[int, int, str]] = set()
    for relation in wanted:
        verbs = held.setdefault(relation[:2], set())
        if relation[2] in verbs or len(verbs) < MAX_RELATIONS_PER_LINK:
            verbs.add(relation[2])
            chosen.append(relation)
        else:
            full.add(relation)
    if not chosen:
        return Related(full=full, missing=missing)
    marks = [tlp.get(c) for c in chosen] if isinstance(tlp, Mapping) else [tlp] * len(chosen)
    written = conn.execute(
        _text(
            "INSERT INTO threat_relations (source_id, target_id, type, confidence, source, tlp)"
            " SELECT x.s, x.t, x.r, :c, :src, tlp_stricter(x.tlp, tlp_stricter(a.tlp, b.tlp))"
            " FROM unnest(CAST(:s AS bigint[]), CAST(:t AS bigint[]), CAST(:r AS text[]), CAST(:tlps AS text[]))"
            " WITH ORDINALITY AS x(s, t, r, tlp, n)"
            " JOIN threats a ON a.id = x.s JOIN threats b ON b.id = x.t ORDER BY x.n"  # in the order given, as before the join
            " ON CONFLICT (source_id, target_id, type)"
            " DO UPDATE SET confidence = CASE WHEN CAST(:writable AS text[]) IS NULL"
            " OR threat_relations.tlp = ANY(CAST(:writable AS text[]))"
            " THEN GREATEST(threat_relations.confidence, EXCLUDED.confidence) ELSE threat_relations.confidence END,"
            " tlp = CASE WHEN CAST(:named AS boolean) AND threat_relations.tlp = ANY(CAST(:relabel AS text[])) THEN EXCLUDED.tlp"
            " ELSE tlp_stricter(threat_relations.tlp, EXCLUDED.tlp) END"
            " RETURNING source_id, target_id, type, (xmax = 0), tlp"
        ),
        {
            "s": [c[0] for c in chosen],
            "t": [c[1] for c in chosen],
            "r": [c[2] for c in chosen],
            "tlps": marks,
            "named": isinstance(tlp, str),
            "relabel": list(relabel_within),
            "writable": list(relabel_within) or None,  # a held relation above the writer's clearance keeps its confidence
            "c": confidence,
            "src": source,
        },
    ).all()
    made = {(int(r[0]), int(r[1]), str(r[2])) for r in written}
    return Related(
        made=made,
        new={(int(r[0]), int(r[1]), str(r[2])) for r in written if r[3]},
        full=full,
        missing=missing,
        tlps={(int(r[0]), int(r[1]), str(r[2])): str(r[4]) for r in written},
    )


def unrelate_threats(conn: Connection, *, source_id: int, target_id: int, visible_tlps: Sequence[str], relation: str | None = None) -> int:
    """Removes relations source -> target (of one verb, or all) whose own TLP is in `visible_tlps` (the writer's
    clearance: one above it does not exist for them); how many were removed."""
    verb = check_relation_verb(relation) if relation is not None else None
    result = conn.execute(
        _text(
            "DELETE FROM threat_relations WHERE source_id = :s AND target_id = :t AND (CAST(:r AS text) IS NULL OR type = :r)"
            " AND tlp = ANY(CAST(:v AS text[]))"
        ),
        {"s": source_id, "t": target_id, "r": verb, "v": list(visible_tlps)},
    )
    return int(result.rowcount or 0)


def relations_of_threat(conn: Connection, threat_id: int, *, limit: int, visible_tlps: Sequence[str]) -> list[dict[str, Any]]:
    """Threat-to-threat relations both ways (outgoing first, then by the other threat's id and the verb), with their
    own TLP and the threat at the other end: only relations and ends whose TLP is in `visible_tlps`, at most `limit`
    rows (the caller asks one more to tell that there are more). Each way is read in its index's order and stops at
    `limit`: ordered by verb, every relation of the threat was read and sorted (300,000 of a hub threat: ~300 ms a
    GET, now ~30 ms)."""
    rows = conn.execute(
        _text(
            "(SELECT 'out', r.type, r.confidence, r.source, t.id, t.kind, t.name, r.tlp FROM threat_relations r"
            " JOIN threats t ON t.id = r.target_id WHERE r.source_id = :i AND t.tlp = ANY(CAST(:v AS text[]))"
            " AND r.tlp = ANY(CAST(:v AS text[])) ORDER BY r.target_id, r.type LIMIT :l)"
            " UNION ALL (SELECT 'in', r.type, r.confidence, r.source, t.id, t.kind, t.name, r.tlp FROM threat_relations r"
            " JOIN threats t ON t.id = r.source_id WHERE r.target_id = :i AND t.tlp = ANY(CAST(:v AS text[]))"
            " AND r.tlp = ANY(CAST(:v AS text[])) ORDER BY r.source_id, r.type LIMIT :l)"
            " ORDER BY 1 DESC, 5, 2 LIMIT :l"
        ),
        {"i": threat_id, "l": limit, "v": list(visible_tlps)},
    )
    return [
        {
            "direction": r[0],
            "type": r[1],
            "confidence": int(r[2]),
            "source": r[3],
            "tlp": r[7],
            "threat": {"id": int(r[4]), "kind": r[5], "name": r[6]},
        }
        for r in rows
    ]


def threat_relations_among(conn: Connection, threat_ids: Sequence[int], *, limit: int, visible_tlps: Sequence[str]) -> list[dict[str, Any]]:
    """Relations whose two ends are both among `threat_ids` (an export's threats) and whose own TLP is in
    `visible_tlps` (its max_tlp), at most `limit`."""
    ids = sorted(set(threat_ids))
    if not ids:
        return []
    rows = conn.execute(
        _text(
            "SELECT source_id, target_id, type, tlp FROM threat_relations"
            " WHERE source_id = ANY(CAST(:i AS bigint[])) AND target_id = ANY(CAST(:i AS bigint[])) AND tlp = ANY(CAST(:v AS text[]))"
            " ORDER BY source_id, target_id, type LIMIT :l"
        ),
        {"i": ids, "l": limit, "v": list(visible_tlps)},
    )
    return [{"source_id": int(r[0]), "target_id": int(r[1]), "type": str(r[2]), "tlp": str(r[3])} for r in rows]


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def find_threats(
    conn: Connection,
    *,
    kinds: Sequence[str] | None = None,
    ttp: str | None = None,
    ttps_any: Sequence[str] | None = None,
    tag: str | None = None,
    alias_name: str | None = None,
    text: str | None = None,
    after_id: int | None = None,
    limit: int,
    visible_tlps: Sequence[str],
) -> list[dict[str, Any]]:
    """A keyset page of threats, newest first, matching every filter given,
    among those whose TLP is in `visible_tlps` (the caller's clearance)."""
    where: list[str] = ["tlp = ANY(CAST(:visible_tlps AS text[]))"]
    params: dict[str, Any] = {"visible_tlps": list(visible_tlps)}
    if kinds is not None:
        where.append("kind = ANY(CAST(:kinds AS text[]))")
        params["kinds"] = list(kinds)
    if ttp is not None:
        where.append("ttps @> CAST(:ttp AS text[])")
        params["ttp"] = [ttp]
    if ttps_any is not None:
        where.append("ttps && CAST(:ttps AS text[])")
        params["ttps"] = list(ttps_any)
    if tag is not None:
        where.append("tags @> CAST(:tag AS text[])")
        params["tag"] = [tag]
    if alias_name is not None:
        where.append("id IN (SELECT threat_id FROM threat_names WHERE name_key = lower(btrim(:alias)))")
        params["alias"] = alias_name
    if text is not None:
        where.append(
            "(name ILIKE :text ESCAPE '\\' OR array_to_string(aliases, ' ') ILIKE :text ESCAPE '\\' OR description ILIKE :text ESCAPE '\\')"
        )
        params["text"] = _like(text)
    if after_id is not None:
        where.append("id < :after_id")
        params["after_id"] = after_id
    params["limit"] = limit
    sql = f"SELECT {THREAT_COLUMNS} FROM threats WHERE {' AND '.join(where) or 'TRUE'} ORDER BY id DESC LIMIT :limit"
    return [row_to_threat(r) for r in conn.execute(_text(sql), params)]


def delete_threats(conn: Connection, ids: Sequence[int], *, visible_tlps: Sequence[str]) -> set[int]:
    """Delete threats by id within `visible_tlps` (the admin's clearance); returns the ids deleted.

    Locks in a fixed order, as every writer of threats does: the threats by id, then their relations to and from
    other threats by key, then deletes. A DELETE locks rows in the order its plan scans them (a few ids by the primary
    key, id order; many by the table, the order rows lie in), and its cascades lock the relations in the order its rows
    were deleted, so two bulk deletes (overlapping, or related across their sets) each waited for a row the other held:
    PostgreSQL aborted one, a 503. Now the second waits for the first, then deletes what is left."""
    locked = [
        int(r[0])
        for r in conn.execute(
            _text("SELECT id FROM threats WHERE id = ANY(CAST(:i AS bigint[])) AND tlp = ANY(CAST(:v AS text[])) ORDER BY id FOR UPDATE"),
            {"i": sorted(set(ids)), "v": list(visible_tlps)},
        )
    ]
    if not locked:
        return set()
    conn.execute(
        _text(
            "DELETE FROM threat_relations WHERE (source_id, target_id, type) IN (SELECT source_id, target_id, type"
            " FROM threat_relations WHERE source_id = ANY(CAST(:l AS bigint[])) OR target_id = ANY(CAST(:l AS bigint[]))"
            " ORDER BY source_id, target_id, type FOR UPDATE)"
        ),
        {"l": locked},
    )
    # Their links to IoCs too, in (threat_id, ioc_id, relation) order, as an IoC delete locks the links it deletes
    # (iocs.repository): each cascade locked them in the order its own rows went, so a threat delete and an IoC delete
    # unlinking pairs across each other (t1 - i2, t2 - i1) deadlocked, and one was a 503.
    conn.execute(
        _text("SELECT 1 FROM threat_iocs WHERE threat_id = ANY(CAST(:l AS bigint[])) ORDER BY threat_id, ioc_id, relation FOR UPDATE"),
        {"l": locked},
    )
    rows = conn.execute(_text("DELETE FROM threats WHERE id = ANY(CAST(:l AS bigint[])) RETURNING id"), {"l": locked})
    return {int(r[0]) for r in rows}


def stats(conn: Connection, *, visible_tlps: Sequence[str]) -> dict[str, Any]:
    """Counts by kind, top TTPs and tags, and the link and relation totals, over the threats
    (and their links and IoC relations, by their own TLP and their ends') whose TLP is in `visible_tlps` (the
    caller's clearance)."""
    visible = {"v": list(visible_tlps)}
    threats_seen = "(SELECT * FROM threats WHERE tlp = ANY(CAST(:v AS text[]))) AS threats"
    links_seen = (
        "(SELECT l.* FROM threat_iocs l JOIN threats t ON t.id = l.threat_id JOIN iocs i ON i.id = l.ioc_id"
        " WHERE t.tlp = ANY(CAST(:v AS text[])) AND i.tlp = ANY(CAST(:v AS text[])) AND l.tlp = ANY(CAST(:v AS text[]))) AS l"
    )
    sql = {  # constant clauses only; the clearance is a bound parameter
        "total": f"SELECT count(*) FROM {threats_seen}",
        "by_kind": f"SELECT kind, count(*) FROM {threats_seen} GROUP BY 1 ORDER BY 2 DESC, 1",
        "ttps": f"SELECT t, count(*) FROM {threats_seen}, unnest(ttps) AS t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
        "tags": f"SELECT t, count(*) FROM {threats_seen}, unnest(tags) AS t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
        "links": f"SELECT count(*), count(DISTINCT ioc_id), count(DISTINCT threat_id) FROM {links_seen}",
        "by_relation": f"SELECT relation, count(*) FROM {links_seen} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {MAX_RELATIONS_SHOWN + 1}",
        "top": (
            f"SELECT t.id, t.name, count(DISTINCT l.ioc_id) FROM {links_seen} JOIN threats t ON t.id = l.threat_id"
            " GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT 20"
        ),
        "relations": (
            "SELECT count(*) FROM ioc_relations r JOIN iocs a ON a.id = r.source_id JOIN iocs b ON b.id = r.target_id"
            " WHERE a.tlp = ANY(CAST(:v AS text[])) AND b.tlp = ANY(CAST(:v AS text[])) AND r.tlp = ANY(CAST(:v AS text[]))"
        ),
    }

    def rows(name: str) -> list[Any]:
        return list(conn.execute(_text(sql[name]), visible).all())

    out: dict[str, Any] = {}
    out["total"] = int(rows("total")[0][0])
    out["by_kind"] = {str(k): int(v) for k, v in rows("by_kind")}
    out["top_ttps"] = [{"id": r[0], "threats": int(r[1])} for r in rows("ttps")]
    out["top_tags"] = [{"tag": r[0], "threats": int(r[1])} for r in rows("tags")]
    links, iocs, threats = rows("links")[0]
    relation_rows = rows("by_relation")  # the most used MAX_RELATIONS_SHOWN: it had one per distinct verb
    by_relation = {str(k): int(v) for k, v in relation_rows[:MAX_RELATIONS_SHOWN]}
    top = rows("top")
    relations = int(rows("relations")[0][0])
    out["links"] = {
        "total": int(links),
        "iocs_linked": int(iocs),
        "threats_with_iocs": int(threats),
        "by_relation": by_relation,
        "by_relation_truncated": len(relation_rows) > MAX_RELATIONS_SHOWN,
        "top_threats": [{"id": int(r[0]), "name": r[1], "iocs": int(r[2])} for r in top],
    }
    out["ioc_relations"] = relations
    return out


def threat_ids_by_names(conn: Connection, names: Iterable[str]) -> set[int]:
    """Threats one of whose names or aliases is among `names` (compared as threat_names keys them)."""
    wanted = sorted({clean_name(n) for n in names if n and n.strip()})
    if not wanted:
        return set()
    return {int(r[1]) for r in conn.execute(_text(_THREATS_NAMED), {"names": wanted})}


# Which threat each name names. threat_names keys names with SQL's lower(btrim()) (its trigger), whose case folding
# follows the database's collation: under "C" it folds ASCII only, so Python's str.lower ("Æt" and "ÆT" both "æt")
# missed the stored "Æt" for "ÆT", and the insert that followed broke the unique names: a 500. The stored keys are
# matched with the same SQL expression; Python's name_key only groups names within a request.
_THREATS_NAMED = (
    "SELECT k.name, n.threat_id, t.tlp FROM unnest(CAST(:names AS text[])) AS k(name)"
    " JOIN threat_names n ON n.name_key = lower(btrim(k.name)) JOIN threats t ON t.id = n.threat_id"
)
