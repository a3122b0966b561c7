"""Threat-to-IoC links, IoC-to-IoC relations and the reads that join both
domains: the intel package's one repository. Every function takes a
Connection first, so an import composes IoCs, threats, links and relations
into one unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import NotFoundError, ValidationError
from threatflow.threats.model import MAX_RELATIONS_PER_LINK, RelationType, check_relation_verb, parse_relation_type
from threatflow.threats.repository import threat_exists

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.engine import Connection


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def links_for_iocs(
    conn: Connection, ioc_ids: Sequence[int], *, per_ioc: int, visible_tlps: Sequence[str]
) -> tuple[list[dict[str, Any]], bool]:
    """The strongest `per_ioc` threat links of each IoC (newest IoC first), and whether any IoC has more: only links
    whose own TLP and whose threat's are in `visible_tlps` (an export's max_tlp), so a hidden link neither shows nor
    takes a place or sets the flag."""
    rows = conn.execute(
        _text(
            "SELECT threat_id, ioc_id, relation, confidence, source, tlp, n FROM (SELECT l.*, row_number() OVER"
            " (PARTITION BY l.ioc_id ORDER BY l.confidence DESC, l.threat_id, l.relation) AS n FROM threat_iocs l"
            " JOIN threats t ON t.id = l.threat_id WHERE l.ioc_id = ANY(CAST(:i AS bigint[]))"
            " AND l.tlp = ANY(CAST(:v AS text[])) AND t.tlp = ANY(CAST(:v AS text[]))) AS ranked"
            " WHERE n <= :per + 1 ORDER BY ioc_id DESC, n"
        ),
        {"i": list(ioc_ids), "per": per_ioc, "v": list(visible_tlps)},
    ).all()
    links = [
        {"threat_id": int(r[0]), "ioc_id": int(r[1]), "relation": r[2], "confidence": int(r[3]), "source": r[4], "tlp": r[5]}
        for r in rows
        if r[6] <= per_ioc
    ]
    return links, len(links) < len(rows)


def relations_among(conn: Connection, ioc_ids: Sequence[int], *, limit: int, visible_tlps: Sequence[str]) -> list[dict[str, Any]]:
    """Relations with both ends among ioc_ids and their own TLP in `visible_tlps` (an export's max_tlp), the strongest
    first, at most `limit` (an export's bound: a relation with one end outside the set is never read into the
    function)."""
    rows = conn.execute(
        _text(
            "SELECT source_id, target_id, type, confidence, source, tlp FROM ioc_relations"
            " WHERE source_id = ANY(CAST(:i AS bigint[])) AND target_id = ANY(CAST(:i AS bigint[])) AND tlp = ANY(CAST(:v AS text[]))"
            " ORDER BY confidence DESC, source_id DESC, target_id DESC, type LIMIT :n"
        ),
        {"i": list(ioc_ids), "n": limit, "v": list(visible_tlps)},
    )
    return [
        {"source_id": int(r[0]), "target_id": int(r[1]), "type": r[2], "confidence": int(r[3]), "source": r[4], "tlp": r[5]} for r in rows
    ]


def existing_ioc_ids(conn: Connection, ioc_ids: Iterable[int]) -> set[int]:
    ids = sorted(set(ioc_ids))
    if not ids:
        return set()
    return {int(r[0]) for r in conn.execute(_text("SELECT id FROM iocs WHERE id = ANY(CAST(:i AS bigint[]))"), {"i": ids})}


def visible_ioc_ids(conn: Connection, ioc_ids: Iterable[int], *, visible_tlps: Sequence[str]) -> set[int]:
    """The ids among ioc_ids that exist and whose TLP is in `visible_tlps` (the caller's clearance)."""
    ids = sorted(set(ioc_ids))
    if not ids:
        return set()
    rows = conn.execute(
        _text("SELECT id FROM iocs WHERE id = ANY(CAST(:i AS bigint[])) AND tlp = ANY(CAST(:v AS text[]))"),
        {"i": ids, "v": list(visible_tlps)},
    )
    return {int(r[0]) for r in rows}


# -- threat <-> IoC links ----------------------------------------------------------


@dataclass(frozen=True)
class Linked:
    """What link_iocs did: the IoCs newly linked, those it could not link because the pair already holds
    MAX_RELATIONS_PER_LINK other relations, and the TLP each link made or held has now."""

    new: set[int] = field(default_factory=set)
    full: set[int] = field(default_factory=set)
    tlps: dict[int, str] = field(default_factory=dict)


# How a write sets a held tie's TLP (the `tlp = ...` of the upserts below). `:named` is true when the writer gave one
# TLP for the statement (the routes) and `:relabel` the TLPs it is cleared for: a held tie within them takes the one
# given, raised or lowered (EXCLUDED.tlp is floored at its ends by the insert's SELECT). Otherwise it is only raised:
# to the statement's marking (imports: the strictest statement decides) or, when none is given, to its ends'.
_TIE_TLP = (
    "CASE WHEN CAST(:named AS boolean) AND {table}.tlp = ANY(CAST(:relabel AS text[])) THEN EXCLUDED.tlp"
    " ELSE tlp_stricter({table}.tlp, EXCLUDED.tlp) END"
)


# How a write sets a held tie's confidence: raised to the one given, but only on a tie within `:writable` (the
# writer's clearance; NULL: any, what imports do). A tie above it is another's statement the writer cannot read: an
# amber analyst's re-post of a red link raised its confidence, read by red readers as the red statement's strength.
_TIE_CONFIDENCE = (
    "CASE WHEN CAST(:writable AS text[]) IS NULL OR {table}.tlp = ANY(CAST(:writable AS text[]))"
    " THEN GREATEST({table}.confidence, EXCLUDED.confidence) ELSE {table}.confidence END"
)


def _tie_tlps(keys: Sequence[Any], tlp: str | Mapping[Any, str | None] | None) -> list[str | None]:
    """The marking each tie of `keys` is written with: one for all, one per tie, or none (its ends decide)."""
    if isinstance(tlp, Mapping):
        return [tlp.get(key) for key in keys]
    return [tlp] * len(keys)


def link_iocs(
    conn: Connection,
    *,
    threat_id: int,
    ioc_ids: Sequence[int] | Mapping[int, int],
    relation: str = "indicates",
    confidence: int = 50,
    source: str | None = None,
    tlp: str | Mapping[int, str | None] | None = None,
    relabel_within: Sequence[str] = (),
) -> Linked:
    """Link IoCs (which must exist) to a threat. A repeat link keeps one row and raises its confidence to the higher
    value. Pass a mapping ioc_id -> confidence to give each link its own confidence. `tlp` is the links' own marking
    (one for all, or per IoC id; none: the stricter of the two ends, sql/0014): never below the stricter end, a held
    link's is raised to it, and set to it (also lowered) when one `tlp` is given and the held link's TLP is within
    `relabel_within` (the writer's clearance; imports give none: they only raise). A held link's confidence is raised
    only when its TLP is within `relabel_within` (none given: whatever its TLP). A threat and an IoC are linked by
    at most MAX_RELATIONS_PER_LINK relations (each verb was a row, added without limit): a new one past it is not
    made (`Linked.full`). The threat's row is locked first (FOR NO KEY UPDATE: links to one threat are serialised,
    its reads and links' foreign-key checks are not blocked), so concurrent writers cannot both take the last place."""
    verb = check_relation_verb(relation)
    scores = dict(ioc_ids) if isinstance(ioc_ids, Mapping) else dict.fromkeys(ioc_ids, confidence)
    if not scores:
        return Linked()
    for value in scores.values():
        if not 0 <= value <= 100:
            raise ValidationError(f"confidence {value} is outside 0..100", field="confidence")
    ids = sorted(scores)
    conn.execute(_text("SELECT 1 FROM threats WHERE id = :t FOR NO KEY UPDATE"), {"t": threat_id})
    rows = conn.execute(
        _text(
            "INSERT INTO threat_iocs (threat_id, ioc_id, relation, confidence, source, tlp)"
            " SELECT :t, x.ioc_id, :r, x.confidence, :s, tlp_stricter(x.tlp, tlp_stricter(th.tlp, i.tlp))"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:conf AS smallint[]), CAST(:tlps AS text[]))"
            " WITH ORDINALITY AS x(ioc_id, confidence, tlp, n)"
            " JOIN iocs i ON i.id = x.ioc_id JOIN threats th ON th.id = :t"
            " WHERE (EXISTS (SELECT 1 FROM threat_iocs l WHERE l.threat_id = :t AND l.ioc_id = x.ioc_id AND l.relation = :r)"
            " OR (SELECT count(*) FROM threat_iocs l WHERE l.threat_id = :t AND l.ioc_id = x.ioc_id) < :most) ORDER BY x.n"
            " ON CONFLICT (threat_id, ioc_id, relation)"
            " DO UPDATE SET confidence = "
            + _TIE_CONFIDENCE.format(table="threat_iocs")
            + ", tlp = "
            + _TIE_TLP.format(table="threat_iocs")
            + " RETURNING ioc_id, (xmax = 0), tlp"
        ),
        {
            "t": threat_id,
            "r": verb,
            "s": source,
            "ids": ids,
            "conf": [scores[i] for i in ids],
            "tlps": _tie_tlps(ids, tlp),
            "named": isinstance(tlp, str),
            "relabel": list(relabel_within),
            "writable": list(relabel_within) or None,
            "most": MAX_RELATIONS_PER_LINK,
        },
    ).all()
    return Linked(
        new={int(r[0]) for r in rows if r[1]}, full=set(ids) - {int(r[0]) for r in rows}, tlps={int(r[0]): str(r[2]) for r in rows}
    )


def link_ioc(
    conn: Connection, *, threat_id: int, ioc_id: int, relation: str = "indicates", confidence: int = 50, source: str | None = None
) -> bool:
    """True if the link is new. Raises NotFoundError naming a missing threat or IoC."""
    if not threat_exists(conn, threat_id):
        raise NotFoundError(f"no threat with id {threat_id}")
    if not existing_ioc_ids(conn, [ioc_id]):
        raise NotFoundError(f"no indicator with id {ioc_id}")
    return bool(link_iocs(conn, threat_id=threat_id, ioc_ids=[ioc_id], relation=relation, confidence=confidence, source=source).new)


def unlink_iocs(
    conn: Connection, *, threat_id: int, ioc_ids: Sequence[int], visible_tlps: Sequence[str], relation: str | None = None
) -> dict[int, int]:
    """Remove links (of one relation, or all) whose own TLP is in `visible_tlps` (the writer's clearance: a link
    above it does not exist for them); returns removed rows per IoC id."""
    rows = conn.execute(
        _text(
            "DELETE FROM threat_iocs WHERE threat_id = :t AND ioc_id = ANY(CAST(:i AS bigint[]))"
            " AND (CAST(:r AS text) IS NULL OR relation = CAST(:r AS text)) AND tlp = ANY(CAST(:v AS text[])) RETURNING ioc_id"
        ),
        {
            "t": threat_id,
            "i": list(ioc_ids),
            "r": check_relation_verb(relation) if relation else None,  # as link_iocs stored it
            "v": list(visible_tlps),
        },
    ).all()
    out: dict[int, int] = {}
    for row in rows:
        out[int(row[0])] = out.get(int(row[0]), 0) + 1
    return out


def unlink_ioc(conn: Connection, *, threat_id: int, ioc_id: int, visible_tlps: Sequence[str], relation: str | None = None) -> int:
    return unlink_iocs(conn, threat_id=threat_id, ioc_ids=[ioc_id], visible_tlps=visible_tlps, relation=relation).get(ioc_id, 0)


# -- IoC <-> IoC relations -----------------------------------------------------------


def add_ioc_relation(
    conn: Connection,
    *,
    source_id: int,
    target_id: int,
    type: RelationType | str,
    visible_tlps: Sequence[str],
    confidence: int = 50,
    source: str | None = None,
    tlp: str | None = None,
) -> tuple[bool, str]:
    """Directed relation source -> target: whether it is new, and its TLP now. Several types per pair are allowed;
    a repeat keeps one row and raises its confidence to the higher value. Both IoCs must be within
    `visible_tlps` (the writer's clearance): one above it is not found, as on every read. `tlp` (checked against the
    clearance by the caller, threats.model.check_tie_tlp) is the relation's own, never below the stricter end: none
    gives a new relation the stricter end's and keeps a held one's; one given sets a held relation's within the
    clearance (also lowering it) and only raises one above it."""
    kind = type if isinstance(type, RelationType) else parse_relation_type(type)
    if source_id == target_id:
        raise ValidationError(f"indicator {source_id} cannot be related to itself", field="target_id")
    if not 0 <= confidence <= 100:
        raise ValidationError(f"confidence {confidence} is outside 0..100", field="confidence")
    require_visible_iocs(conn, [source_id, target_id], visible_tlps=visible_tlps)
    row = conn.execute(
        _text(
            "INSERT INTO ioc_relations (source_id, target_id, type, confidence, source, tlp)"
            " SELECT a.id, b.id, :t, :c, :s, tlp_stricter(CAST(:tlp AS text), tlp_stricter(a.tlp, b.tlp))"
            " FROM iocs a, iocs b WHERE a.id = :a AND b.id = :b"
            " ON CONFLICT (source_id, target_id, type)"
            " DO UPDATE SET confidence = "
            + _TIE_CONFIDENCE.format(table="ioc_relations")
            + ", tlp = "
            + _TIE_TLP.format(table="ioc_relations")
            + " RETURNING (xmax = 0), tlp"
        ),
        {
            "a": source_id,
            "b": target_id,
            "t": kind.value,
            "c": confidence,
            "s": source,
            "tlp": tlp,
            "named": tlp is not None,
            "relabel": list(visible_tlps),
            "writable": list(visible_tlps),
        },
    ).one()
    return bool(row[0]), str(row[1])


def add_ioc_relations(
    conn: Connection,
    pairs: list[tuple[int, int]],
    *,
    type: RelationType | str,
    confidence: int = 50,
    source: str | None = None,
    tlps: Mapping[tuple[int, int], str | None] | None = None,
    writable: Sequence[str] | None = None,
) -> int:
    """Many relations of one type in one statement (imports); the ids must exist. `tlps`: each pair's own marking
    (none: the stricter of its ends, sql/0014); a held relation's TLP is only raised, and its confidence only when
    its TLP is within `writable` (the importer's clearance; None: whatever its TLP). Returns how many were new."""
    kind = type if isinstance(type, RelationType) else parse_relation_type(type)
    if not pairs:
        return 0
    rows = conn.execute(
        _text(
            "INSERT INTO ioc_relations (source_id, target_id, type, confidence, source, tlp)"
            " SELECT p.s, p.t, :k, :c, :src, tlp_stricter(p.tlp, tlp_stricter(a.tlp, b.tlp))"
            " FROM unnest(CAST(:s AS bigint[]), CAST(:t AS bigint[]), CAST(:tlps AS text[])) WITH ORDINALITY AS p(s, t, tlp, n)"
            " JOIN iocs a ON a.id = p.s JOIN iocs b ON b.id = p.t WHERE p.s <> p.t ORDER BY p.n"
            " ON CONFLICT (source_id, target_id, type)"
            " DO UPDATE SET confidence = "
            + _TIE_CONFIDENCE.format(table="ioc_relations")
            + ", tlp = tlp_stricter(ioc_relations.tlp, EXCLUDED.tlp)"
            " RETURNING (xmax = 0)"
        ),
        {
            "s": [p[0] for p in pairs],
            "t": [p[1] for p in pairs],
            "tlps": _tie_tlps(pairs, tlps),
            "k": kind.value,
            "c": confidence,
            "src": source,
            "writable": list(writable) if writable is not None else None,
        },
    ).all()
    return sum(1 for r in rows if r[0])


def require_visible_iocs(conn: Connection, ioc_ids: Sequence[int], *, visible_tlps: Sequence[str]) -> None:
    """NotFoundError naming the ids that do not exist or are above `visible_tlps` (the two are not told apart)."""
    missing = sorted(set(ioc_ids) - visible_ioc_ids(conn, ioc_ids, visible_tlps=visible_tlps))
    if missing:
        raise NotFoundError(f"no indicator with id {', '.join(str(m) for m in missing)}")


def remove_ioc_relation(
    conn: Connection, *, source_id: int, target_id: int, visible_tlps: Sequence[str], type: RelationType | str | None = None
) -> int:
    """Removes relations source -> target (of one type, or all); both IoCs must be within `visible_tlps`, and only
    relations whose own TLP is are removed (one above it does not exist for the writer)."""
    require_visible_iocs(conn, [source_id, target_id], visible_tlps=visible_tlps)
    kind = None if type is None else (type if isinstance(type, RelationType) else parse_relation_type(type))
    result = conn.execute(
        _text(
            "DELETE FROM ioc_relations WHERE source_id = :a AND target_id = :b AND (CAST(:t AS text) IS NULL OR type = CAST(:t AS text))"
            " AND tlp = ANY(CAST(:v AS text[]))"
        ),
        {"a": source_id, "b": target_id, "t": kind.value if kind else None, "v": list(visible_tlps)},
    )
    return int(result.rowcount)


# -- reads across both domains ---------------------------------------------------------


def threats_of_ioc(conn: Connection, ioc_id: int, *, limit: int, visible_tlps: Sequence[str]) -> list[dict[str, Any]]:
    """Threats linked to an IoC, strongest link first, with the link's relation, confidence, source and TLP;
    at most `limit`, only threats and links whose TLP is in `visible_tlps` (the caller's clearance)."""
    rows = conn.execute(
        _text(
            "SELECT t.id, t.kind, t.name, t.aliases, l.relation, l.confidence, l.source, l.created_at, l.tlp"
            " FROM threat_iocs l JOIN threats t ON t.id = l.threat_id WHERE l.ioc_id = :i AND t.tlp = ANY(CAST(:v AS text[]))"
            " AND l.tlp = ANY(CAST(:v AS text[])) ORDER BY l.confidence DESC, t.id, l.relation LIMIT :l"
        ),
        {"i": ioc_id, "l": limit, "v": list(visible_tlps)},
    ).all()
    return [
        {
            "id": int(r[0]),
            "kind": r[1],
            "name": r[2],
            "aliases": list(r[3]),
            "relation": r[4],
            "confidence": int(r[5]),
            "source": r[6],
            "linked_at": r[7].isoformat(),
            "tlp": r[8],
        }
        for r in rows
    ]


def ioc_tags(conn: Connection, ioc_id: int, *, visible_tlps: Sequence[str]) -> list[str] | None:
    """An IoC's tags, sorted; None when there is no such IoC or its TLP is not in `visible_tlps`."""
    row = conn.execute(
        _text("SELECT tags FROM iocs WHERE id = :i AND tlp = ANY(CAST(:v AS text[]))"), {"i": ioc_id, "v": list(visible_tlps)}
    ).first()
    return None if row is None else sorted(row[0])


def relations_of_ioc(conn: Connection, ioc_id: int, *, limit: int, visible_tlps: Sequence[str]) -> list[dict[str, Any]]:
    """IoC-to-IoC relations both ways (outgoing first), with their own TLP and the IoC at the other end
    (only relations and ends whose TLP is in `visible_tlps`)."""
    rows = conn.execute(
        _text(
            "(SELECT 'out', r.type, r.confidence, r.source, i.id, i.type, i.value, r.tlp FROM ioc_relations r"
            " JOIN iocs i ON i.id = r.target_id WHERE r.source_id = :i AND i.tlp = ANY(CAST(:v AS text[]))"
            " AND r.tlp = ANY(CAST(:v AS text[])))"
            " UNION ALL (SELECT 'in', r.type, r.confidence, r.source, i.id, i.type, i.value, r.tlp FROM ioc_relations r"
            " JOIN iocs i ON i.id = r.source_id WHERE r.target_id = :i AND i.tlp = ANY(CAST(:v AS text[]))"
            " AND r.tlp = ANY(CAST(:v AS text[])))"
            " ORDER BY 1 DESC, 2, 5 LIMIT :l"
        ),
        {"i": ioc_id, "l": limit, "v": list(visible_tlps)},
    )
    return [
        {
            "direction": r[0],
            "type": r[1],
            "confidence": int(r[2]),
            "source": r[3],
            "tlp": r[7],
            "ioc": {"id": int(r[4]), "type": r[5], "value": r[6]},
        }
        for r in rows
    ]


def estimated_ioc_count(conn: Connection) -> int:
    """The planner's row estimate: enough to size "common", and free."""
    return max(0, int(conn.execute(_text("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = 'iocs'::regclass")).scalar_one()))


def tag_counts(conn: Connection, tags: Sequence[str], *, cap: int, visible_tlps: Sequence[str]) -> dict[str, int]:
    """How many IoCs whose TLP is in `visible_tlps` carry each tag, counting at most cap + 1 per tag (counted over
    every TLP, a tag of an amber IoC named common told an amber reader it is on more than 50 IoCs above them)."""
    return {
        str(r[0]): int(r[1])
        for r in conn.execute(
            _text(
                "SELECT t, (SELECT count(*) FROM (SELECT 1 FROM iocs WHERE tags @> ARRAY[t] AND tlp = ANY(CAST(:v AS text[]))"
                " LIMIT :cap + 1) AS c) FROM unnest(CAST(:tags AS text[])) AS t"
            ),
            {"tags": list(tags), "cap": cap, "v": list(visible_tlps)},
        )
    }


def iocs_sharing_tags(
    conn: Connection, tags: Sequence[str], *, exclude_id: int, limit: int, visible_tlps: Sequence[str]
) -> list[dict[str, Any]]:
    """IoCs with any of tags (other than exclude_id), those sharing the most first; only those whose
    TLP is in `visible_tlps`."""
    rows = conn.execute(
        _text(
            "SELECT id, type, value, ARRAY(SELECT unnest(tags) INTERSECT SELECT unnest(CAST(:rare AS text[])) ORDER BY 1) AS shared"
            " FROM iocs WHERE tags && CAST(:rare AS text[]) AND id <> :i AND tlp = ANY(CAST(:v AS text[]))"
            " ORDER BY cardinality(ARRAY(SELECT unnest(tags) INTERSECT SELECT unnest(CAST(:rare AS text[])))) DESC, id DESC LIMIT :l"
        ),
        {"rare": list(tags), "i": exclude_id, "l": limit, "v": list(visible_tlps)},
    )
    return [{"ioc": {"id": int(r[0]), "type": r[1], "value": r[2]}, "shared_tags": list(r[3])} for r in rows]


# -- correlation reads ----------------------------------------------------------------


def _within(alias: str, visible_tlps: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    """A clause keeping rows whose IoC (`alias`.tlp) is within `visible_tlps`; None keeps every row."""
    if visible_tlps is None:
        return "TRUE", {}
    return f"{alias}.tlp = ANY(CAST(:visible AS text[]))", {"visible": list(visible_tlps)}


# Correlation's reads take only IoCs within the caller's clearance (`visible_tlps`, None for every TLP): filtered
# after the read, rows above it were counted in the answer's `read` (how many red IoCs carry a threat's name as a
# tag, are linked to it ...) and took the READ_LIMIT places of the IoCs after them.


def tags_like(conn: Connection, patterns: Sequence[str], *, limit: int, visible_tlps: Sequence[str] | None) -> list[str]:
    """Distinct tags of IoCs within `visible_tlps` matching any ILIKE pattern, at most `limit`."""
    within, params = _within("iocs", visible_tlps)
    rows = conn.execute(
        _text(f"SELECT DISTINCT t FROM iocs, unnest(tags) AS t WHERE t ILIKE ANY(CAST(:p AS text[])) AND {within} ORDER BY t LIMIT :l"),
        {"p": list(patterns), "l": limit, **params},
    )
    return [str(r[0]) for r in rows]


def iocs_with_any_tag(
    conn: Connection, tags: Sequence[str], *, limit: int, visible_tlps: Sequence[str] | None
) -> list[tuple[int, list[str]]]:
    """(id, tags) of the newest `limit` IoCs within `visible_tlps` carrying any of tags."""
    within, params = _within("iocs", visible_tlps)
    rows = conn.execute(
        _text(f"SELECT id, tags FROM iocs WHERE tags && CAST(:t AS text[]) AND {within} ORDER BY id DESC LIMIT :l"),
        {"t": list(tags), "l": limit, **params},
    )
    return [(int(r[0]), list(r[1])) for r in rows]


def evidence_available(conn: Connection) -> bool:
    """True when the enrichment capability has created ioc_evidence."""
    return conn.execute(_text("SELECT to_regclass('ioc_evidence') IS NOT NULL")).scalar_one() is True


def evidence_like(
    conn: Connection, patterns: Sequence[str], *, limit: int, visible_tlps: Sequence[str] | None
) -> list[tuple[int, str, str, str]]:
    """(ioc_id, source, kind, value) of evidence whose value matches any ILIKE pattern, of IoCs within
    `visible_tlps`, the newest IoCs' `limit` rows."""
    within, params = _within("i", visible_tlps)
    join = "" if visible_tlps is None else " JOIN iocs i ON i.id = e.ioc_id"
    rows = conn.execute(
        _text(
            f"SELECT e.ioc_id, e.source, e.kind, e.value FROM ioc_evidence e{join} WHERE e.value ILIKE ANY(CAST(:p AS text[]))"
            f" AND {within} ORDER BY e.ioc_id DESC, e.source, e.kind, e.value LIMIT :l"
        ),
        {"p": list(patterns), "l": limit, **params},
    )
    return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def links_of_threat(conn: Connection, threat_id: int, *, limit: int, visible_tlps: Sequence[str] | None) -> list[tuple[int, str, str]]:
    """(ioc_id, relation, tlp) of a threat's links whose own TLP and whose IoC's are within `visible_tlps` (None:
    every TLP), the newest IoCs' `limit`; tlp is the stricter of the link's and its IoC's (what correlation learns
    through it is as strict)."""
    within, params = _within("i", visible_tlps)
    own = "" if visible_tlps is None else " AND l.tlp = ANY(CAST(:visible AS text[]))"
    rows = conn.execute(
        _text(
            "SELECT l.ioc_id, l.relation, tlp_stricter(l.tlp, i.tlp) FROM threat_iocs l JOIN iocs i ON i.id = l.ioc_id"
            f" WHERE l.threat_id = :t AND {within}{own} ORDER BY l.ioc_id DESC, l.relation LIMIT :l"
        ),
        {"t": threat_id, "l": limit, **params},
    )
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def relations_touching(
    conn: Connection, ioc_ids: Sequence[int], *, limit: int, visible_tlps: Sequence[str] | None
) -> list[tuple[int, int, str, str]]:
    """(source_id, target_id, type, tlp) of relations with either end among ioc_ids whose own TLP and both ends' are
    within `visible_tlps` (None: every TLP), at most `limit`; tlp is the strictest of the relation's and its ends'
    (the ends are joined for the `limit` rows kept only: joined first, a hub of 100,000 relations took twice as long)."""
    if visible_tlps is None:
        ends, params = "", {}
    else:
        ends = (
            " AND r.tlp = ANY(CAST(:visible AS text[]))"
            " AND EXISTS (SELECT 1 FROM iocs a WHERE a.id = r.source_id AND a.tlp = ANY(CAST(:visible AS text[])))"
            " AND EXISTS (SELECT 1 FROM iocs b WHERE b.id = r.target_id AND b.tlp = ANY(CAST(:visible AS text[])))"
        )
        params = {"visible": list(visible_tlps)}
    rows = conn.execute(
        _text(
            "SELECT k.source_id, k.target_id, k.type, tlp_stricter(k.tlp, tlp_stricter(a.tlp, b.tlp)) FROM ("
            f"SELECT source_id, target_id, type, tlp FROM ioc_relations r WHERE source_id = ANY(CAST(:s AS bigint[])){ends}"
            f" UNION SELECT source_id, target_id, type, tlp FROM ioc_relations r WHERE target_id = ANY(CAST(:s AS bigint[])){ends}"
            " ORDER BY 1 DESC, 2 DESC, 3 LIMIT :l) AS k JOIN iocs a ON a.id = k.source_id JOIN iocs b ON b.id = k.target_id"
            " ORDER BY 1 DESC, 2 DESC, 3"
        ),
        {"s": list(ioc_ids), "l": limit, **params},
    )
    return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]


def ioc_identities(conn: Connection, ioc_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """id -> (type, value) for the IoCs that exist among ioc_ids."""
    rows = conn.execute(_text("SELECT id, type, value FROM iocs WHERE id = ANY(CAST(:i AS bigint[]))"), {"i": list(ioc_ids)})
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


# -- async import jobs applied (sql/0013) -------------------------------------------------


def applied_import(conn: Connection, job_id: str) -> dict[str, Any] | None:
    """What an async import job's transaction recorded when it applied the job (its result and progress), or None."""
    row = conn.execute(_text("SELECT result FROM import_jobs_applied WHERE job_id = :j"), {"j": job_id}).first()
    return dict(row[0]) if row is not None else None


def applied_imports(conn: Connection, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """applied_import for many jobs, in one query: those recorded, by job id."""
    if not job_ids:
        return {}
    rows = conn.execute(
        _text("SELECT job_id, result FROM import_jobs_applied WHERE job_id = ANY(CAST(:j AS text[]))"), {"j": list(job_ids)}
    )
    return {str(r[0]): dict(r[1]) for r in rows}


def record_applied_import(conn: Connection, job_id: str, result: Mapping[str, Any]) -> None:
    """In the job's own transaction: the job is applied, with what its record shows. A delivery after the commit
    (the results or the record could not be written) finishes the job from this instead of applying it again."""
    import msgspec

    conn.execute(
        _text("INSERT INTO import_jobs_applied (job_id, result) VALUES (:j, CAST(:r AS jsonb))"),
        {"j": job_id, "r": msgspec.json.encode(dict(result)).decode()},
    )


def prune_applied_imports(conn: Connection, *, before: datetime, limit: int) -> int:
    """Delete at most `limit` rows applied before `before`, oldest first (index import_jobs_applied_applied_at_idx,
    sql/0015); rows another transaction holds are skipped, not waited for. Returns the rows deleted."""
    result = conn.execute(
        _text(
            "DELETE FROM import_jobs_applied WHERE job_id IN (SELECT job_id FROM import_jobs_applied WHERE applied_at < :b"
            " ORDER BY applied_at LIMIT :l FOR UPDATE SKIP LOCKED)"
        ),
        {"b": before, "l": limit},
    )
    return int(result.rowcount or 0)


def applied_imports_before(conn: Connection, *, before: datetime) -> bool:
    """Whether any row was applied before `before`."""
    return conn.execute(_text("SELECT EXISTS (SELECT 1 FROM import_jobs_applied WHERE applied_at < :b)"), {"b": before}).scalar() is True
