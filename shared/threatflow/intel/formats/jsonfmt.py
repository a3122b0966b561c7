"""JSON import: `{"iocs": [...]}` or a bare list, items as in POST /api/v1/iocs/batch."""

from __future__ import annotations

from typing import Any

from threatflow.intel.formats.base import Builder, ParsedImport, load_json
from threatflow.platform.errors import ValidationError


def parse(content: Any) -> ParsedImport:
    doc = load_json(content, what="json")
    if isinstance(doc, dict):
        if "iocs" not in doc:
            raise ValidationError('json: expected {"iocs": [...]} or a list of IoC objects', field="content")
        doc = doc["iocs"]
    if not isinstance(doc, list):
        raise ValidationError(f"json: iocs must be a list; got {type(doc).__name__}", field="content")
    out = Builder()
    for index, entry in enumerate(doc):
        ref = f"#{index}"
        item = {"value": entry} if isinstance(entry, str) else entry  # a bare value is accepted, as in a blocklist
        if not isinstance(item, dict):
            out.error(ref, f"an IoC must be an object with a value; got {type(item).__name__}")
            continue
        out.ioc(ref, item)
    return out.build()
