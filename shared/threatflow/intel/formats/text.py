"""Free-text import: every indicator the extractor finds (refanged) is one item.

A feed given as text (one record a line: address and URL lists, hosts files, DNS blocklists) is read by its records
(`feedlines`): its comments, and what its records hold besides their entries, are counted in `skipped`, not stored.
`/extract` and `threatflow iocs extract` read text the same way (`indicators`), so a pasted feed lists what its import
would store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from threatflow.intel.formats import feedlines
from threatflow.intel.formats.base import Builder, ParsedImport, as_text
from threatflow.iocs.types import ExtractedIndicator, IocType

_ADDRESS_TYPES = frozenset({IocType.IPV4, IocType.IPV6, IocType.CIDR})
_RUN_LINES = 1_000  # a feed's lines the extractor reads at once


@dataclass
class TextIndicators:
    """The indicators of a text, whether it was read as a feed, and what of it was skipped, by kind."""

    found: list[ExtractedIndicator] = field(default_factory=list)
    feed: bool = False
    skipped: dict[str, int] = field(default_factory=dict)


def indicators(text: str, *, refang: bool) -> TextIndicators:
    out = TextIndicators()
    out.found.extend(_found(text, refang=refang, out=out))
    return out


def _found(text: str, *, refang: bool, out: TextIndicators) -> Iterator[ExtractedIndicator]:
    """The text's indicators in document order, read as they are asked for (`out` says whether it is a feed and counts
    what it skipped): an import stops asking at its bound (base.MAX_IMPORT_ITEMS) and the rest is never extracted."""
    from threatflow.iocs.extraction import extract

    feed = feedlines.read(text)
    if feed is not None:
        out.feed = True
        out.skipped.update(feed.skipped)
    for found in extract(text, refang=refang) if feed is None else _feed_indicators(feed.readable, refang=refang):
        if feed is not None and found.type in _ADDRESS_TYPES and feedlines.names_no_host(found.value):
            out.skipped["non-public addresses"] = out.skipped.get("non-public addresses", 0) + 1  # a feed's bogons
            continue
        yield found


def parse(content: Any) -> ParsedImport:
    read = TextIndicators()
    out = Builder()
    for index, found in enumerate(_found(as_text(content, what="text"), refang=True, out=read)):
        out.ioc(f"#{index}", {"value": found.value, "type": str(found.type)})  # refuses the document past its bound
    out.skipped.update(read.skipped)
    return out.build()


def _feed_indicators(readable: list[str | ExtractedIndicator], *, refang: bool) -> Iterator[ExtractedIndicator]:
    """A feed's indicators in document order, each once: the entries and prose lines through the extractor (its
    refanging and checks, never a header's URL), one call per run of them; a range's networks as they are."""
    from threatflow.iocs.extraction import extract

    seen: set[tuple[IocType, str]] = set()
    run: list[str] = []
    for part in itertools.chain(readable, [None]):
        if isinstance(part, str):
            run.append(part)
            if len(run) < _RUN_LINES:
                continue
        # A blank line between the lines of a run: the extractor continues a URL ending in '/' on the next line (a
        # report's wrapped URL), and a record is never the rest of the one before it; so a long run is read in parts
        # of _RUN_LINES lines, as they are asked for, never the whole feed at once.
        for found in extract("\n\n".join(run), refang=refang) if run else ():
            if (found.type, found.value) not in seen:
                seen.add((found.type, found.value))
                yield found
        run.clear()
        if part is not None and not isinstance(part, str) and (part.type, part.value) not in seen:
            seen.add((part.type, part.value))
            yield part
