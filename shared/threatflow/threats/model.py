"""The threat domain: kinds, IoC relation types, the batch item and per-item results.

Names and aliases are compared case-insensitively (`name_key`); a threat's
name is never repeated among its aliases, and no two threats share a name or
an alias (sql/0003_threats.sql enforces that with `threat_names`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from threatflow.platform.errors import ForbiddenError, ValidationError
from threatflow.platform.vocabulary import Severity, Tlp

# What one item may name, and what one threat holds (every merge keeps what the threat has, then the item's new ones
# while there is room; the rest is counted in the result's `<field>_cut`, CUT_FIELDS). Tags: vocabulary.MAX_TAGS.
MAX_ALIASES = 256
MAX_REFERENCES = 256
MAX_TTPS = 512
CUT_FIELDS = ("tags_cut", "aliases_cut", "ttps_cut", "references_cut")
# Relations (free verbs) that link one threat and one IoC: each was a row of threat_iocs, added without limit.
MAX_RELATIONS_PER_LINK = 8
# Verbs a threat's answers count links by (GET /threats/{id}, /threats/stats), the most used first.
MAX_RELATIONS_SHOWN = 64
_SPACES = re.compile(r"\s+")
_RELATION_VERB = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
# Producers and users write a verb `Attributed To`, `attributed_to`: a run of spaces and underscores (with any hyphens
# in it) is one hyphen. A run of hyphens alone is kept: it is already a tidy word, and may be stored so. Separators at
# either end join nothing and are dropped: `uses_` and `uses-` were stored as `uses-`, a verb beside `uses`, until
# sql/0016_relation_verb_edges.sql rewrote them in SQL. A change that reads a storable verb otherwise needs the same.
_VERB_SEPARATORS = re.compile(r"[\s_-]+")
_VERB_EDGES = re.compile(r"^[\s_-]+|[\s_-]+$")


class ThreatKind(StrEnum):
    THREAT_ACTOR = "threat-actor"
    CAMPAIGN = "campaign"
    MALWARE = "malware"
    TOOL = "tool"
    INTRUSION_SET = "intrusion-set"


class RelationType(StrEnum):
    """Directed IoC-to-IoC relations (source -> target)."""

    RESOLVES_TO = "resolves-to"
    COMMUNICATES_WITH = "communicates-with"
    DROPS = "drops"
    DOWNLOADS = "downloads"
    RELATED_TO = "related-to"


class Reference(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    source_name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    external_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class ThreatIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: ThreatKind
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    aliases: list[Annotated[str, msgspec.Meta(max_length=256)]] = []
    description: Annotated[str, msgspec.Meta(max_length=65536)] | None = None
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    severity: Severity | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    references: list[Reference] = []
    ttps: list[str] = []
    tags: list[str] = []
    stix_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    tlp: str | None = None


class ResultStatus(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"


@dataclass(frozen=True)
class ThreatResult:
    index: int
    status: str  # a ResultStatus value
    id: int | None = None
    reason: str | None = None
    tags_cut: int = 0  # the item's (and its batch group's) tags the threat could not keep: MAX_TAGS
    aliases_cut: int = 0  # the same for aliases: MAX_ALIASES
    ttps_cut: int = 0  # ATT&CK techniques: MAX_TTPS
    references_cut: int = 0  # references: MAX_REFERENCES

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": str(self.status)}
        if self.id is not None:
            out["id"] = self.id
        if self.reason is not None:
            out["reason"] = self.reason
        for key in CUT_FIELDS:  # only what was cut, and never for a threat above the writer's clearance (no id)
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def cuts(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in CUT_FIELDS}


def clean_name(text: str) -> str:
    """Trim and collapse inner whitespace; the spelling (case) is kept for display."""
    return _SPACES.sub(" ", text).strip()


def name_key(text: str) -> str:
    """The case-insensitive identity of a name or alias (same as lower(btrim()) in SQL
    once clean_name has collapsed the spaces)."""
    return clean_name(text).lower()


def merge_aliases(name: str, *alias_lists: Iterable[str]) -> list[str]:
    """Aliases without blanks, without the name itself, first spelling wins, case-insensitively unique."""
    seen = {name_key(name)}
    out: list[str] = []
    for aliases in alias_lists:
        for alias in aliases:
            cleaned = clean_name(alias)
            key = cleaned.lower()
            if cleaned and key not in seen:
                seen.add(key)
                out.append(cleaned)
    return out


def check_relation_verb(relation: str) -> str:
    """Threat-to-IoC link and threat-to-threat relation verbs are free but tidy: lower-case words joined by hyphens
    (they are counted by verb, at most MAX_RELATIONS_PER_LINK a pair, and exported as STIX relationship_type). A verb
    is read lower-cased, trimmed of spaces, underscores and hyphens at either end, its runs of spaces and underscores
    one hyphen: `Attributed To` is attributed-to, `uses_`, `uses-` and `_uses` are uses."""
    verb = _VERB_SEPARATORS.sub(_one_hyphen, _VERB_EDGES.sub("", relation.strip().lower()))
    if not _RELATION_VERB.fullmatch(verb):
        raise ValidationError(
            f"relation {relation!r} must be a lower-case word (letters, digits, hyphens; at most 64), e.g. indicates", field="relation"
        )
    return verb


def check_tie_tlp(tlp: Tlp | str | None, *, visible_tlps: Iterable[str]) -> str | None:
    """The TLP a writer gives a link or relation (POST /threats/{id}/link, /threats/{id}/relations,
    /iocs/{id}/relations), spelled as every TLP is read (`TLP:RED`, `tlp-red`): one the writer is not cleared for is a
    403 naming `tlp` (they could not read back what they wrote; an end above the clearance stays a 404, as absent).
    None: none given, the tie takes the stricter of its ends (sql/0014_link_tlp.sql)."""
    if tlp is None:
        return None
    level = tlp if isinstance(tlp, Tlp) else Tlp.parse_field(tlp, field="tlp")
    if level.value not in set(visible_tlps):
        raise ForbiddenError(f"tlp {level.value} is above your clearance", details={"field": "tlp"})
    return level.value


def _one_hyphen(run: re.Match[str]) -> str:
    return run[0] if run[0].strip("-") == "" else "-"


def parse_relation_type(value: str) -> RelationType:
    try:
        return RelationType(value.strip().lower())
    except ValueError:
        allowed = ", ".join(t.value for t in RelationType)
        raise ValidationError(f"unknown relation type {value!r}; expected one of {allowed}", field="type") from None


@dataclass(frozen=True)
class ThreatRecord:
    """One stored threat, as the repository hands it to services; `to_json()` is what the API shows."""

    id: int
    kind: str
    name: str
    aliases: list[str]
    description: str | None
    confidence: int | None
    severity: str | None
    first_seen: datetime | None
    last_seen: datetime | None
    references: list[dict[str, Any]]
    ttps: list[str]
    tags: list[str]
    stix_id: str | None
    tlp: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> ThreatRecord:
        """From a row of `threatflow.threats.repository.THREAT_COLUMNS`, in that order (refs are the references)."""
        (
            id_,
            kind,
            name,
            aliases,
            description,
            confidence,
            severity,
            first_seen,
            last_seen,
            refs,
            ttps,
            tags,
            stix_id,
            tlp,
            created,
            updated,
        ) = row
        return cls(
            int(id_), kind, name, list(aliases), description, confidence, severity, first_seen, last_seen,
            refs, list(ttps), list(tags), stix_id, tlp, created, updated,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in _THREAT_FIELDS if f != "references"}
        out["references"] = self.references  # last, as the API has always shown it
        for key in ("first_seen", "last_seen", "created_at", "updated_at"):
            if isinstance(out.get(key), datetime):
                out[key] = out[key].isoformat()
        return out


_THREAT_FIELDS = tuple(ThreatRecord.__dataclass_fields__)
