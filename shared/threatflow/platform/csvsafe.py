"""The one CSV writer for every CSV the product writes (IoC export now, reports later).

A spreadsheet treats a cell starting with `=`, `+`, `-` or `@` as a formula, and
a tab or carriage return at the start of a cell can hide one (`\\r=cmd|...`
starts a new row in some readers). So, following OWASP's CSV-injection advice:

- every text cell whose first character is one of `= + - @ \\t \\r` (after any
  leading whitespace or control characters) is prefixed with a single quote,
  which spreadsheets show but never evaluate;
- every cell containing a control character (CR, LF, tab, NUL...) or the
  delimiter or a quote is quoted, so it can never start a new row or column.

Numbers and booleans are written as they are (`-5` stays a number).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LEADING_BLANK = re.compile(r"^[\s\x00-\x1f\x7f]*")


def safe_cell(value: Any) -> str:
    """One cell's text, neutralised if a spreadsheet could take it for a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = ";".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    stripped = _LEADING_BLANK.sub("", text)
    if text[:1] in _FORMULA_START or stripped[:1] in _FORMULA_START:
        return "'" + text
    return text


class _QuoteControls(csv.Dialect):
    delimiter = ","
    quotechar = '"'
    doublequote = True
    skipinitialspace = False
    lineterminator = "\n"
    quoting = csv.QUOTE_MINIMAL


class SafeCsvWriter:
    """csv.writer with every cell passed through `safe_cell`, and any cell holding a
    control character quoted (csv's minimal quoting misses a bare tab or NUL)."""

    def __init__(self, out: io.StringIO) -> None:
        self._out = out
        self._writer = csv.writer(out, dialect=_QuoteControls)

    def writerow(self, row: Sequence[Any]) -> None:
        cells = [safe_cell(v) for v in row]
        if any(_CONTROL.search(c) for c in cells):
            self._out.write(",".join(_quoted(c) for c in cells) + "\n")
        else:
            self._writer.writerow(cells)

    def writerows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def write(rows: Iterable[Sequence[Any]], *, header: Sequence[str] | None = None) -> str:
    out = io.StringIO()
    writer = SafeCsvWriter(out)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
