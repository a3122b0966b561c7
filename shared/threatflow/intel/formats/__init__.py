"""IoC import formats: pure parsers from a document to one `ParsedImport`.

Every parser is `parse(content: bytes | str | object) -> ParsedImport`. A
document that cannot be read at all (bad JSON, a STIX indicator whose pattern is
not STIX patterning, a MISP event whose Attribute is not a list) raises
ValidationError naming where it broke, so nothing is written. Items that are
readable but unusable (a CSV row without a value, an unsupported MISP type) are
recorded in `errors` and the rest is imported.

Refs are stable keys that tie IoCs to threats and to each other inside one
document: a STIX id, a MISP attribute uuid, or `#<index>` for a row. Several
IoCs may share a ref (a STIX pattern with OR yields one IoC per value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from threatflow.intel.formats import csvfmt, jsonfmt, misp, stix, text
from threatflow.intel.formats.base import (
    Builder,
    ImportFormat,
    ItemError,
    Link,
    ParsedImport,
    ParsedIoc,
    ParsedThreat,
    Relation,
    as_text,
    load_json,
)
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import clean_tags, quoted

__all__ = [
    "Builder",
    "ImportFormat",
    "ItemError",
    "Link",
    "ParsedImport",
    "ParsedIoc",
    "ParsedThreat",
    "Relation",
    "as_text",
    "clean_tags",
    "load_json",
    "parse",
    "parser_for",
]


def parser_for(fmt: ImportFormat | str) -> Callable[[Any], ParsedImport]:
    try:
        key = ImportFormat(str(fmt).strip().lower())
    except ValueError:
        known = ", ".join(f.value for f in ImportFormat)
        raise ValidationError(f"unknown import format {quoted(str(fmt))}; expected one of {known}", field="format") from None
    table: dict[ImportFormat, Callable[[Any], ParsedImport]] = {
        ImportFormat.JSON: jsonfmt.parse,
        ImportFormat.CSV: csvfmt.parse,
        ImportFormat.TEXT: text.parse,
        ImportFormat.STIX: stix.parse,
        ImportFormat.MISP: misp.parse,
    }
    return table[key]


def parse(fmt: ImportFormat | str, content: Any) -> ParsedImport:
    return parser_for(fmt)(content)
