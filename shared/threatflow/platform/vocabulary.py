"""Words every domain shares: the TLP marking, the severity bands of a score, and the tag rule.

They sit in the platform so that IoCs, threats and the domains to come use one
definition without importing each other (`threatflow.iocs.model` re-exports them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from threatflow.platform.errors import ValidationError

MAX_TAGS = 64
_TLP_PREFIX = re.compile(r"^tlp\s*[:_\-\s]\s*")
# `?max_tlp=amber+strict` typed into a URL: a query string's unencoded '+' decodes to a space.
_AMBER_SPACE_STRICT = re.compile(r"amber\s+strict")
MAX_TAG_LENGTH = 128
# Sources (who reported an IoC: `misp:<org>`, a feed, `flows`...) follow the tag rule's bounds: as many per item as one
# IoC holds. A source may be longer than a tag: a MISP organisation's name is up to 255 characters.
MAX_SOURCES = 64
MAX_SOURCE_LENGTH = 256


class Tlp(StrEnum):
    CLEAR = "clear"
    GREEN = "green"
    AMBER = "amber"
    AMBER_STRICT = "amber+strict"
    RED = "red"

    @property
    def rank(self) -> int:
        return _TLP_ORDER.index(self)

    @classmethod
    def parse(cls, text: str) -> Tlp:
        """Accepts `TLP:AMBER`, `amber`, producers' looser `TLP: AMBER`, `tlp-amber`, `TLP_AMBER`, TLP 1.0's
        `white` (= clear), and `amber strict` (= amber+strict, its '+' decoded from a query string)."""
        return cls(text)  # the spellings are read by _missing_

    @classmethod
    def _missing_(cls, value: object) -> Tlp | None:
        # `Tlp(text)` and so every typed decode (msgspec calls _missing_: a JSON body's `max_tlp`, an export query's)
        # read a TLP as writes do; POST /find's `TLP:RED` was a 400. None: no TLP, a ValueError (a 400 naming it).
        if not isinstance(value, str):
            return None
        name = _TLP_PREFIX.sub("", value.strip().lower(), count=1)
        wanted = "clear" if name == "white" else "amber+strict" if _AMBER_SPACE_STRICT.fullmatch(name) else name
        return next((tlp for tlp in cls if tlp.value == wanted), None)

    @classmethod
    def parse_field(cls, text: str, *, field: str) -> Tlp:
        """`parse` for user input: an unknown marking is a ValidationError naming `field`."""
        try:
            return cls.parse(text)
        except ValueError:
            raise ValidationError(f"unknown TLP {quoted(text)}; expected {_TLP_NAMES}", field=field) from None

    def at_most(self) -> list[str]:
        return [t.value for t in _TLP_ORDER[: self.rank + 1]]


def quoted(text: str, *, limit: int = 64) -> str:
    """A caller's word as an error quotes it: its first `limit` characters (an unknown TLP or import format was echoed
    whole, so a 32 MiB request answered 32 MiB)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


_TLP_ORDER = [Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED]


def new_record_tlp(clearance: str) -> str:
    """A new IoC's or threat's TLP when its writer names none: amber, lowered to the writer's clearance (at amber, a
    green writer's new record did not exist for them: its id answered, then a 404 reading it back)."""
    return min(Tlp.AMBER, Tlp(clearance), key=lambda tlp: tlp.rank).value


_TLP_NAMES = ", ".join(t.value for t in _TLP_ORDER[:-1]) + f" or {_TLP_ORDER[-1].value}"  # clear, green, amber, amber+strict or red


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @classmethod
    def from_score(cls, score: int) -> Severity:
        for threshold, severity in _SEVERITY_BANDS:
            if score >= threshold:
                return severity
        return cls.INFO


_SEVERITY_BANDS = ((90, Severity.CRITICAL), (70, Severity.HIGH), (40, Severity.MEDIUM), (15, Severity.LOW))


def clean_tags(tags: Iterable[object], *, holder: str = "item") -> list[str]:
    """The one tag rule, for IoCs, threats and every import format.

    Tags are stripped and lower-cased; empty ones and repeats are dropped; the
    order of first appearance is kept. A tag that is not a string or is longer
    than MAX_TAG_LENGTH, or more than MAX_TAGS tags, is a ValidationError on
    field "tags": the caller rejects that one item (a batch item, an imported
    row or object) and keeps the rest. Nothing is truncated silently."""
    out: list[str] = []
    seen: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str):
            raise ValidationError(f"tags must be strings; got {type(tag).__name__}", field="tags")
        clean = tag.strip().lower()
        if not clean or clean in seen:
            continue
        if len(clean) > MAX_TAG_LENGTH:
            raise ValidationError(f"tag longer than {MAX_TAG_LENGTH} characters: {clean[:32]}...", field="tags")
        seen.add(clean)
        out.append(clean)
    if len(out) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags per {holder}", field="tags")
    return out


def clean_sources(sources: Iterable[object]) -> list[str]:
    """The source rule, for every IoC write: sources are stripped; empty ones and repeats are dropped; sorted. A
    source that is not a string or is longer than MAX_SOURCE_LENGTH, or more than MAX_SOURCES of them, is a
    ValidationError on field "sources" (the caller rejects that one item), as `clean_tags` does for tags."""
    out: set[str] = set()
    for source in sources:
        if not isinstance(source, str):
            raise ValidationError(f"sources must be strings; got {type(source).__name__}", field="sources")
        clean = source.strip()
        if not clean:
            continue
        if len(clean) > MAX_SOURCE_LENGTH:
            raise ValidationError(f"source longer than {MAX_SOURCE_LENGTH} characters: {clean[:32]}...", field="sources")
        out.add(clean)
    if len(out) > MAX_SOURCES:
        raise ValidationError(f"at most {MAX_SOURCES} sources per indicator", field="sources")
    return sorted(out)
