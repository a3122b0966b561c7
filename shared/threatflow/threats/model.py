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

from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import Severity

MAX_ALIASES = 256
MAX_TAGS = 64
MAX_TAG_LENGTH = 128
MAX_REFERENCES = 256
MAX_TTPS = 512
_SPACES = re.compile(r"\s+")
_RELATION_VERB = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": str(self.status)}
        if self.id is not None:
            out["id"] = self.id
        if self.reason is not None:
            out["reason"] = self.reason
        return out


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


def clean_tags(tags: Iterable[str]) -> list[str]:
    out = sorted({t.strip().lower() for t in tags if t and t.strip()})
    if len(out) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags per threat", field="tags")
    for tag in out:
        if len(tag) > MAX_TAG_LENGTH:
            raise ValidationError(f"tag longer than {MAX_TAG_LENGTH} characters: {tag[:32]}...", field="tags")
    return out


def check_relation_verb(relation: str) -> str:
    """Threat-to-IoC link verbs are free but tidy: lower-case words joined by hyphens."""
    verb = relation.strip().lower()
    if not _RELATION_VERB.match(verb):
        raise ValidationError(
            f"relation {relation!r} must be a lower-case word (letters, digits, hyphens; at most 64), e.g. indicates", field="relation"
        )
    return verb


def parse_relation_type(value: str) -> RelationType:
    try:
        return RelationType(value.strip().lower())
    except ValueError:
        allowed = ", ".join(t.value for t in RelationType)
        raise ValidationError(f"unknown relation type {value!r}; expected one of {allowed}", field="type") from None
