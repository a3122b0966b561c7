"""Free-text import: every indicator the extractor finds (refanged) is one item.

A feed given as text (one record a line: address and URL lists, hosts files, DNS blocklists) is read by its records
(`feedlines`): its comments, and what its records hold besides their entries, are counted in `skipped`, not stored.
"""

from __future__ import annotations

from typing import Any

from threatflow.intel.formats import feedlines
from threatflow.intel.formats.base import Builder, ParsedImport, as_text
from threatflow.iocs.types import IocType

_ADDRESS_TYPES = frozenset({IocType.IPV4, IocType.IPV6, IocType.CIDR})


def parse(content: Any) -> ParsedImport:
    from threatflow.iocs.extraction import extract

    text = as_text(content, what="text")
    out = Builder()
    feed = feedlines.read(text)
    if feed is not None:
        # One extractor call over the entries and the prose lines: the extractor's refanging and checks, never a
        # header's URL. A blank line between them: the extractor continues a URL ending in '/' on the next line (a
        # report's wrapped URL), and a record is never the rest of the one before it.
        text = "\n\n".join(feed.readable)
        out.skipped.update(feed.skipped)
    index = 0
    for found in extract(text, refang=True):
        if feed is not None and found.type in _ADDRESS_TYPES and feedlines.names_no_host(found.value):
            out.skip("non-public addresses")  # a feed's bogons are not indicators (a report's are kept)
            continue
        out.ioc(f"#{index}", {"value": found.value, "type": str(found.type)})
        index += 1
    return out.build()
