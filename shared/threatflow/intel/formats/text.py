"""Free-text import: every indicator the extractor finds (refanged) is one item."""

from __future__ import annotations

from typing import Any

from threatflow.intel.formats.base import Builder, ParsedImport, as_text


def parse(content: Any) -> ParsedImport:
    from threatflow.iocs.extraction import extract

    out = Builder()
    for index, found in enumerate(extract(as_text(content, what="text"), refang=True)):
        out.ioc(f"#{index}", {"value": found.value, "type": str(found.type)})
    return out.build()
