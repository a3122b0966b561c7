"""Correlation: which IoCs belong to a threat, with a score a person can check.

A threat's name and aliases are compared "squashed" (lower-case, only letters
and digits), so Emotet matches the tags `emotet`, `malware:emotet`,
`win.emotet` and `misp-galaxy:malpedia="Emotet"`. Signals and their scores:

    tag equal to a name                                   90
    tag ending in a name after a prefix (malware:emotet)  80
    a name inside a tag (emotet:epoch4, "emotet loader")  60
    enrichment evidence naming the family                 85
    a name inside other evidence (pulse names)            60
    related to an IoC already linked to the threat        resolves-to/drops/downloads 60,
                                                          communicates-with 50, related-to 40

Signals that are not independent are not added up: an IoC's tags count once
(the best tag match), each evidence source once (its best match). The rest
(tags, each evidence source, each related linked IoC) are combined with
noisy-or: score = 100 * (1 - prod(1 - s_i / 100)).

Evidence is read from `ioc_evidence(ioc_id, source, kind, value)` when that
table exists (the enrichment capability writes it); without it, only tags and
relations count. Relation signals start only from "seeds": IoCs linked to the
threat by something other than correlation, plus this run's direct (tag or
evidence) matches at or above the threshold. So a second run finds the same
candidates, links nothing new, and correlation never creeps along chains of
relations from one run to the next.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from threatflow.intel import repository
from threatflow.platform.errors import NotFoundError
from threatflow.platform.vocabulary import Tlp
from threatflow.threats import repository as threats_repository

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

SCORE_EXACT_TAG = 90
SCORE_PREFIXED_TAG = 80
SCORE_TAG_PART = 60
SCORE_EVIDENCE_FAMILY = 85
SCORE_EVIDENCE_TEXT = 60
RELATION_SCORES = {"resolves-to": 60, "drops": 60, "downloads": 60, "communicates-with": 50, "related-to": 40}
MIN_NAME_LENGTH = 3  # shorter squashed names ("X", "Go") match too much to mean anything
CORRELATED = "correlated"  # the link relation correlation writes
# Rows correlation reads of each kind (matching tag names, tagged IoCs, evidence rows, the threat's links,
# relations of seeds), the newest IoCs' first: a name carried by much of the store read every such IoC
# and scored it in Python (200,000 tagged IoCs: 6 s, a 1.5 MB answer). Past it the answer says `truncated`.
READ_LIMIT = 10_000
FAMILY_EVIDENCE_KINDS = frozenset({"malware_family", "malware-family", "family", "malware", "threat", "actor", "tag", "label"})

_TOKEN = re.compile(r"[^\W_]+")
_SEPARATORS = re.compile(r"[\s:=/.|,;]+")
_QUOTES = re.compile(r"[\"'`]")
# MISP galaxy values carry the ATT&CK software/group id: "Emotet - S0367".
_GALAXY_ID_SUFFIX = re.compile(r"\s+-\s+[A-Za-z]\d{4,}\s*$")


@dataclass(frozen=True)
class Signal:
    """One piece of evidence; `tlp` is the strictest marking it was read through (a relation's and its seed link's,
    sql/0014): an IoC's own tags and evidence need none beyond the IoC, which floors the link anyway."""

    score: int
    reason: str
    tlp: str = Tlp.CLEAR.value


def squash(text: str) -> str:
    """Lower-case letters and digits only: 'Win.Emotet' -> 'winemotet'."""
    return "".join(_TOKEN.findall(text.lower()))


def name_forms(names: Iterable[str]) -> dict[str, str]:
    """Squashed form -> the name as written, skipping forms too short to be specific."""
    out: dict[str, str] = {}
    for name in names:
        form = squash(name)
        if len(form) >= MIN_NAME_LENGTH:
            out.setdefault(form, name)
    return out


def like_patterns(names: Iterable[str]) -> list[str]:
    """ILIKE patterns that every matching tag or value satisfies ('Lazarus Group' -> '%lazarus%group%');
    they only narrow the rows SQL returns, the matching functions decide."""
    out = set()
    for name in names:
        tokens = _TOKEN.findall(name.lower())
        if len(squash(name)) >= MIN_NAME_LENGTH:
            out.add("%" + "%".join(tokens) + "%")
    return sorted(out)


def _runs(text: str) -> list[tuple[str, bool, bool]]:
    """Every contiguous run of a tag's segments: (squashed run, is the whole text, ends at the end)."""
    cleaned = _GALAXY_ID_SUFFIX.sub("", _QUOTES.sub("", text))
    parts = [p for p in _SEPARATORS.split(cleaned) if p]
    out = []
    for start in range(len(parts)):
        for end in range(start + 1, len(parts) + 1):
            out.append((squash("".join(parts[start:end])), start == 0 and end == len(parts), end == len(parts)))
    return out


def match_tag(tag: str, names: Mapping[str, str]) -> Signal | None:
    """The best match of one tag against a threat's squashed names, or None."""
    whole = squash(tag)
    if whole in names:
        return Signal(SCORE_EXACT_TAG, f"tag {tag!r} is the name {names[whole]!r}")
    best: Signal | None = None
    for run, _is_whole, at_end in _runs(tag):
        if run not in names:
            continue
        if at_end:
            return Signal(SCORE_PREFIXED_TAG, f"tag {tag!r} ends in the name {names[run]!r}")
        if best is None:
            best = Signal(SCORE_TAG_PART, f"tag {tag!r} contains the name {names[run]!r}")
    return best


def match_evidence(source: str, kind: str, value: str, names: Mapping[str, str]) -> Signal | None:
    """Enrichment evidence: a family-like kind naming the threat scores high, a name
    inside free text (a pulse name) scores lower."""
    label = f"evidence from {source}: {kind} {value!r}"
    family = kind.strip().lower() in FAMILY_EVIDENCE_KINDS
    if family and squash(value) in names:
        return Signal(SCORE_EVIDENCE_FAMILY, f"{label} is the name {names[squash(value)]!r}")
    runs = [(run, at_end) for run, _is_whole, at_end in _runs(value) if run in names]
    if family and any(at_end for _, at_end in runs):
        run = next(run for run, at_end in runs if at_end)
        return Signal(SCORE_PREFIXED_TAG, f"{label} ends in the name {names[run]!r}")
    if runs:
        return Signal(SCORE_EVIDENCE_TEXT, f"{label} mentions {names[runs[0][0]]!r}")
    return None


def relation_signal(rel_type: str, direction: str, other_id: int, tlp: str = Tlp.CLEAR.value) -> Signal:
    """A relation to a seed IoC; direction is 'out' (candidate -> seed) or 'in'. `tlp`: the stricter of the
    relation's (floored at its ends) and the seed's link's."""
    score = RELATION_SCORES.get(rel_type, RELATION_SCORES["related-to"])
    arrow = f"{rel_type} IoC {other_id}" if direction == "out" else f"IoC {other_id} {rel_type} it"
    return Signal(score, f"{arrow} (linked to the threat)", tlp)


def noisy_or(scores: Iterable[int]) -> int:
    """Combine independent signals: 100 * (1 - prod(1 - s/100)), rounded, 0..100."""
    miss = 1.0
    for score in scores:
        miss *= 1.0 - max(0, min(100, score)) / 100.0
    return round(100 * (1.0 - miss))


def combine(signals: Sequence[tuple[str, Signal]]) -> tuple[int, list[str]]:
    """(group, signal) pairs -> score and reasons; only the best signal of each group counts.
    Groups: 'tags', 'evidence:<source>', 'relation:<ioc id>'."""
    best: dict[str, Signal] = {}
    for group, signal in signals:
        if group not in best or signal.score > best[group].score:
            best[group] = signal
    ordered = sorted(best.values(), key=lambda s: (-s.score, s.reason))
    return noisy_or(s.score for s in ordered), [f"{s.reason} ({s.score})" for s in ordered]


def link_marking(signals: Sequence[tuple[str, Signal]], threshold: int) -> tuple[str, int] | None:
    """The least strict TLP whose signals alone (those read through ties at or below it) score at least
    `threshold`, with that score: what a link correlation makes is marked and how confident it is, so it tells a
    reader nothing that only ties above their clearance gave (a red relation lifting an amber IoC past the threshold
    made an amber link). None when even every signal falls short."""
    for level in sorted(Tlp, key=lambda t: t.rank):
        within = [(group, s) for group, s in signals if Tlp.parse(s.tlp).rank <= level.rank]
        score = combine(within)[0] if within else 0
        if score >= threshold:
            return level.value, score
    return None


def _stricter(a: str, b: str | None) -> str:
    return a if b is None or Tlp.parse(a).rank >= Tlp.parse(b).rank else b


# -- the database part -------------------------------------------------------------


def correlate(
    conn: Connection,
    *,
    threat_id: int,
    visible_tlps: Sequence[str],
    threshold: int = 70,
    link: bool = True,
    limit: int = 200,
    source: str = "correlation",
) -> dict[str, Any]:
    """Score IoCs against one threat; link those at or above threshold (relation
    'correlated', confidence = score) when link is true. Idempotent. Only IoCs within `visible_tlps` (the
    caller's clearance) are scored, linked, counted or followed through relations: an IoC above it does not exist
    for the caller (an amber analyst's correlation linked red IoCs and counted them in `linked`)."""
    everything = set(visible_tlps) >= {t.value for t in Tlp}
    within = None if everything else list(visible_tlps)  # every read takes only these IoCs' rows (None: every TLP)

    def visible(ids: Iterable[int]) -> set[int]:
        return set(ids) if everything else repository.visible_ioc_ids(conn, ids, visible_tlps=visible_tlps)

    all_names = threats_repository.names_of(conn, threat_id)
    if all_names is None:
        raise NotFoundError(f"no threat with id {threat_id}")
    names = name_forms(all_names)
    patterns = like_patterns(all_names)
    signals: dict[int, list[tuple[str, Signal]]] = {}
    read = dict.fromkeys(("tag_names", "tags", "evidence", "links", "relations"), 0)
    cut: list[str] = []

    def bounded(kind: str, rows: list[Any]) -> list[Any]:
        """At most READ_LIMIT of rows read with READ_LIMIT + 1: one more says the read was cut."""
        read[kind] = min(len(rows), READ_LIMIT)
        if len(rows) > READ_LIMIT:
            cut.append(kind)
        return rows[:READ_LIMIT]

    evidence_table = repository.evidence_available(conn)
    if names:
        tag_names = bounded("tag_names", repository.tags_like(conn, patterns, limit=READ_LIMIT + 1, visible_tlps=within))
        tag_signals = {t: s for t in tag_names if (s := match_tag(t, names)) is not None}
        if tag_signals:
            for ioc_id, ioc_tags in bounded(
                "tags", repository.iocs_with_any_tag(conn, sorted(tag_signals), limit=READ_LIMIT + 1, visible_tlps=within)
            ):
                for tag in ioc_tags:
                    if tag in tag_signals:
                        signals.setdefault(ioc_id, []).append(("tags", tag_signals[tag]))
        if evidence_table:
            for ioc_id, ev_source, kind, value in bounded(
                "evidence", repository.evidence_like(conn, patterns, limit=READ_LIMIT + 1, visible_tlps=within)
            ):
                signal = match_evidence(ev_source, kind, value, names)
                if signal is not None:
                    signals.setdefault(ioc_id, []).append((f"evidence:{ev_source}", signal))
    shown = visible(signals)
    signals = {ioc_id: sigs for ioc_id, sigs in signals.items() if ioc_id in shown}
    links = bounded("links", repository.links_of_threat(conn, threat_id, limit=READ_LIMIT + 1, visible_tlps=within))
    linked = {ioc_id for ioc_id, _, _ in links}
    # A seed is as strict as its least strict link to the threat (a red link's seed makes red signals); this run's
    # direct matches are seeds by their own tags and evidence.
    seed_tlp: dict[int, str] = {}
    for ioc_id, relation, tlp in links:
        if relation != CORRELATED and (ioc_id not in seed_tlp or Tlp.parse(tlp).rank < Tlp.parse(seed_tlp[ioc_id]).rank):
            seed_tlp[ioc_id] = tlp
    seeds = visible(seed_tlp)
    for ioc_id, sigs in signals.items():
        if combine(sigs)[0] >= threshold:
            seeds.add(ioc_id)
            seed_tlp[ioc_id] = Tlp.CLEAR.value
    if seeds:
        touching = bounded("relations", repository.relations_touching(conn, sorted(seeds), limit=READ_LIMIT + 1, visible_tlps=within))
        ends = visible({end for a, b, _, _ in touching for end in (a, b)})
        for a, b, rel_type, rel_tlp in touching:
            if a not in ends or b not in ends:
                continue
            via_a = _stricter(rel_tlp, seed_tlp.get(a))
            via_b = _stricter(rel_tlp, seed_tlp.get(b))
            if a in seeds and b not in seeds:
                signals.setdefault(b, []).append((f"relation:{a}", relation_signal(rel_type, "in", a, via_a)))
            elif b in seeds and a not in seeds:
                signals.setdefault(a, []).append((f"relation:{b}", relation_signal(rel_type, "out", b, via_b)))
            elif a in seeds and b in seeds:  # both seeds: each supports the other
                signals.setdefault(b, []).append((f"relation:{a}", relation_signal(rel_type, "in", a, via_a)))
                signals.setdefault(a, []).append((f"relation:{b}", relation_signal(rel_type, "out", b, via_b)))
    scored = []
    for ioc_id, sigs in signals.items():
        score, reasons = combine(sigs)
        scored.append((score, ioc_id, reasons))
    scored.sort(key=lambda s: (-s[0], -s[1]))
    top = scored[:limit]
    details = repository.ioc_identities(conn, [ioc_id for _, ioc_id, _ in top])
    marked = {
        ioc_id: marking
        for score, ioc_id, _ in top
        if score >= threshold and ioc_id not in linked and (marking := link_marking(signals[ioc_id], threshold)) is not None
    }
    newly: set[int] = set()
    if link and marked:
        newly = repository.link_iocs(
            conn,
            threat_id=threat_id,
            ioc_ids={ioc_id: score for ioc_id, (_, score) in marked.items()},
            relation=CORRELATED,
            source=source,
            tlp={ioc_id: tlp for ioc_id, (tlp, _) in marked.items()},
            relabel_within=visible_tlps,  # a hidden link of the pair keeps its confidence (its TLP is only raised)
        ).new
    candidates = [
        {
            "ioc_id": ioc_id,
            "type": details[ioc_id][0],
            "value": details[ioc_id][1],
            "score": score,
            "reasons": reasons,
            "already_linked": ioc_id in linked,
            "linked": ioc_id in newly,
        }
        for score, ioc_id, reasons in top
        if ioc_id in details
    ]
    return {
        "threat_id": threat_id,
        "threshold": threshold,
        "names": sorted(names.values()),
        "evidence_table": evidence_table,
        "candidates": candidates,
        "linked": len(newly),
        "read": read,
        "truncated": bool(cut),
    }
