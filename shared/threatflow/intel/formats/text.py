"""Free-text import: every indicator the extractor finds (refanged) is one item.

A feed given as text (one record a line: address and URL lists, hosts files, DNS blocklists) is read by its records
(`feedlines`): its comments, and what its records hold besides their entries, are counted in `skipped`, not stored.
"""

from __future__ import annotations

from typing import Any

from threatflow.intel.formats import feedlines
from threatflow.intel.formats.base import Builder, ParsedImport, as_text


def parse(content: Any) -> ParsedImport:
    from threatflow.iocs.extraction import extract

    text = as_text(content, what="text")
    out = Builder()
    feed = feedlines.read(text)
    if feed is not None:
        # One extractor call over the entries, one a line, and the prose lines: the extractor's refanging and
        # checks, never a header's URL.
        text = "\n".join(feed.readable)
        out.skipped.update(feed.skipped)
    for index, found in enumerate(extract(text, refang=True)):
        out.ioc(f"#{index}", {"value": found.value, "type": str(found.type)})
    return out.build()
