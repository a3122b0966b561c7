"""CSV import: a header row, then one IoC per row; bad rows are named by row number.

Columns (case-insensitive, common aliases accepted): value (indicator, ioc,
observable...), type, tags (`;` or `|` separated; MISP's attribute_tag and event_tag,
whose `tlp:` tags set the TLP, the most restrictive winning), source/sources, tlp,
confidence, expires_at (valid_until, expiry), description (comment), verdict.
Types may be ours (ipv4, sha256...), MISP's (ip-dst, filename|sha256...) or abuse.ch's
(ip:port, sha256_hash...).

Without a value column, columns named by an indicator type (`md5, sha1, sha256`,
MISP's typed-column CSV) are read cell by cell. MISP's own CSV export
(`uuid,event_id,category,type,value,comment,to_ids,...`) is the ordinary shape.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from threatflow.intel.formats.base import Builder, ParsedImport, as_text, is_tlp, strictest_tlp
from threatflow.intel.formats.misp_types import MISP_TYPES
from threatflow.iocs.types import IocType
from threatflow.platform.errors import ValidationError

_ALIASES: dict[str, tuple[str, ...]] = {
    # In order of preference when a header names several. abuse.ch: Feodo's `dst_ip`, ThreatFox host lists' `Address`.
    "value": (
        "value",
        "indicator",
        "ioc",
        "ioc_value",
        "observable",
        "observable_value",
        "data",
        "attribute",
        "ioc value",
        "dst_ip",
        "dstip",
        "ip_address",
        "address",
    ),
    "type": ("type", "ioc_type", "indicator_type", "kind", "attribute_type", "ioc type"),
    "tags": ("tags", "tag", "labels", "label", "attribute_tag"),
    "event_tags": ("event_tag",),  # MISP's CSV with includeContext
    "source": ("source", "feed"),
    "sources": ("sources",),
    "tlp": ("tlp", "tlp_level"),
    "confidence": ("confidence", "confidence_level"),
    "expires_at": ("expires_at", "expiry", "expires", "valid_until"),
    "description": ("description", "comment", "comments", "notes"),
    "verdict": ("verdict",),
    "to_ids": ("to_ids",),
    "uuid": ("uuid", "id"),
}
_COLUMN_OF = {alias: key for key, aliases in _ALIASES.items() for alias in aliases}
_RANK = {alias: rank for aliases in _ALIASES.values() for rank, alias in enumerate(aliases)}
MAX_ROWS = 1_000_000
# abuse.ch's type names (ThreatFox's ioc_type, MalwareBazaar's columns; ip:port keeps the address, `host_of`) and OTX's.
FEED_TYPES: dict[str, str | None] = {
    "ip:port": None,
    "md5_hash": "md5",
    "sha1_hash": "sha1",
    "sha256_hash": "sha256",
    # AlienVault OTX's indicator types (its others, IPv4, hostname, URL, CIDR, FilePath, email, read as ours)
    "filehash-md5": "md5",
    "filehash-sha1": "sha1",
    "filehash-sha256": "sha256",
}


def map_type(value: str | None) -> str | None:
    """Our type, or a MISP attribute type translated; unknown types pass through for normalise to reject."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if text in IocType.__members__.values() or text in {t.value for t in IocType}:
        return text
    if text in MISP_TYPES:
        return MISP_TYPES[text][0]
    if text in FEED_TYPES:
        return FEED_TYPES[text]
    return {"ip": None, "hash": None, "hostname": "domain", "uri": "url", "filepath": "file_path", "path": "file_path"}.get(text, text)


def host_of(value: str) -> str:
    """The address of an ip:port value ("198.51.100.3:443", "[2001:db8::7]:443"); anything else as it is."""
    if value.startswith("[") and "]" in value:
        return value[1:].partition("]")[0]
    host, sep, port = value.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else value


# What Python-written feeds put in an empty field (ThreatFox's CSV: `None`): it gave every IoC the tag `none`
# and a `None` confidence rejected the row.
_EMPTY_CELLS = frozenset({"None", "null", "NULL"})


def _split(text: str | None) -> list[str]:
    if not text:
        return []
    for sep in (";", "|"):
        text = text.replace(sep, ",")
    return [part.strip() for part in text.split(",") if part.strip()]


def parse(content: Any) -> ParsedImport:
    text = as_text(content, what="csv")
    if not text.strip():
        raise ValidationError("csv: the document is empty; the first row must be a header", field="content")
    text, first_row = _after_comment_block(text)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect, skipinitialspace=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise ValidationError(f"csv: cannot read the header row: {exc}", field="content") from None
    names = _names(header)
    columns, typed = _columns(names)
    if "value" not in columns and not typed:
        raise ValidationError(
            f"csv: no value column; name one of {', '.join(_ALIASES['value'])}, or name columns by indicator type (md5, ip-dst...)."
            f" Header was: {', '.join(header)}",
            field="content",
        )
    out = Builder()
    try:
        for row_number, row in enumerate(reader, start=first_row):
            if row_number > MAX_ROWS + first_row - 1:
                raise ValidationError(f"csv: more than {MAX_ROWS} rows", field="content")
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue  # blank, or a comment: feeds end with one ("# END 28 entries")
            _row(out, f"row {row_number}", row, columns, typed, len(names))
    except csv.Error as exc:
        raise ValidationError(f"csv: line {reader.line_num}: {exc}", field="content") from None
    return out.build()


def _columns(names: list[str]) -> tuple[dict[str, int], dict[int, str | None]]:
    """Which column holds each field (per field, the one whose name its aliases prefer, then the first), and the
    columns named by an indicator type."""
    columns: dict[str, int] = {}
    for i, name in enumerate(names):
        key = _COLUMN_OF.get(name)
        if key is not None and (key not in columns or _RANK[name] < _RANK[names[columns[key]]]):
            columns[key] = i
    typed = {i: map_type(name) for i, name in enumerate(names) if name not in _COLUMN_OF and _is_type(name)}
    return columns, typed


def is_record(item: dict[str, Any]) -> bool:
    """Whether a JSON object is a feed's record rather than a batch item: no `value`, but a field the columns name as
    the value (abuse.ch: `ip_address`, `ioc`, `ioc_value`) or fields named by an indicator type (MalwareBazaar's
    `sha256_hash`, `md5_hash`; URLhaus's `url`)."""
    if "value" in item:
        return False
    columns, typed = _columns(_names([str(key) for key in item]))
    return "value" in columns or bool(typed)


def record(out: Builder, ref: str, item: dict[str, Any]) -> None:
    """A feed's JSON record, read as a CSV row under its keys: the same names, types and composites; other fields
    (a feed's status, country, reporter...) are ignored, as unnamed columns are."""
    names = _names([str(key) for key in item])
    columns, typed = _columns(names)
    cells = [",".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value) for value in item.values()]
    _row(out, ref, cells, columns, typed, len(names))


def _names(header: list[str]) -> list[str]:
    return [h.strip().lower().lstrip("#").strip() for h in header]


def _known(line: str) -> bool:
    """Whether a line reads as a header this importer understands (a value column, or a column named by a type)."""
    try:
        names = _names(next(csv.reader([line]), []))
    except csv.Error:
        return False
    return any(_COLUMN_OF.get(name) == "value" or _is_type(name) for name in names)


def _after_comment_block(text: str) -> tuple[str, int]:
    """The document from its header on, and the file line of its first data row. Feeds such as abuse.ch's open with a
    block of '#' lines: the header is the first line after it, or the block's last line when that one is the header
    commented out (`# id,dateadded,url,...`). Without such a block, or when neither reads as a header, the document
    as it is (its first line is the header, and the refusal names it)."""
    skipped, start, last_comment = 0, 0, ""
    while start < len(text):  # only the opening block is read line by line, never the whole document
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        line = text[start:end]
        if not line.lstrip().startswith("#"):
            break
        skipped, last_comment, start = skipped + 1, line, end
    block_end = start
    if skipped == 0 or block_end == len(text):
        return text, 2
    header_end = text.find("\n", block_end)
    first_line = text[block_end : len(text) if header_end < 0 else header_end + 1]
    commented = last_comment.lstrip().lstrip("#")
    # Both may read as headers: a first row naming a type (`evil.com,domain` under `# value,type,comment`) was taken
    # for the header, and every row after it misread. A line holding an indicator is data, not a header.
    if _known(first_line) and not (_known(commented) and _holds_an_indicator(first_line)):
        return text[block_end:], skipped + 2
    if _known(commented):
        return commented + text[block_end:], skipped + 1
    return text, 2


def _holds_an_indicator(line: str) -> bool:
    """Whether a cell of the line is an indicator the store would keep (a header's names are none)."""
    from threatflow.iocs.normalise import normalise

    try:
        cells = next(csv.reader([line]), [])
    except csv.Error:
        return False
    for cell in cells[:MAX_PROBED_CELLS]:
        try:
            normalise(cell.strip(), None)
        except ValidationError:
            continue
        return True
    return False


MAX_PROBED_CELLS = 64  # a header is read on one line: its first cells are enough to tell data from names


def records(text: str) -> tuple[str, list[str]]:
    """The document as its prefix (its opening '#' block, then its header row, uncommented when the block's last line
    held it) and its records, each the lines it spans (a quoted cell may span several), read as `parse` reads them: so
    the prefix followed by any run of records is read with the same header as in the whole document (how
    `threatflow iocs import` splits a large feed into imports)."""
    body, _first_row = _after_comment_block(text)
    start = len(text) - len(body)  # `body` ends the document; it starts with a commented header's text when one was read
    block_end = start if start == 0 or text[start - 1] == "\n" else text.find("\n", start) + 1
    try:
        dialect: Any = csv.Sniffer().sniff(body[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    lines = io.StringIO(body).readlines()  # split as parse's reader splits them: on '\n' only
    reader = csv.reader(iter(lines), dialect, skipinitialspace=True)
    try:
        next(reader, None)
        header_lines = reader.line_num
        out, done = [], header_lines
        for _row in reader:
            out.append("".join(lines[done : reader.line_num]))
            done = reader.line_num
    except csv.Error as exc:
        raise ValidationError(f"csv: line {reader.line_num}: {exc}", field="content") from None
    return text[:block_end] + "".join(lines[:header_lines]), out


def has_known_header(text: str) -> bool:
    """Whether a document reads as a CSV this importer understands: a header naming a value column or typed columns,
    first or after an opening '#' block (a feed saved as .txt, URLhaus's csv.txt). One line of it must hold a
    delimiter, so a list of single values stays a list."""
    body, _first_row = _after_comment_block(text[:65536])
    end = body.find("\n")
    line = body if end < 0 else body[:end]
    return any(sep in line for sep in (",", ";", "\t")) and _known(line.replace("\t", ",").replace(";", ","))


def _is_type(name: str) -> bool:
    return name in {t.value for t in IocType} or name in MISP_TYPES or name in FEED_TYPES


def _row(out: Builder, ref: str, row: list[str], columns: dict[str, int], typed: dict[int, str | None], width: int) -> None:
    if len(row) > width:
        out.error(ref, f"{len(row)} cells but the header names {width} columns")
        return

    def cell(key: str) -> str | None:
        index = columns.get(key)
        if index is None or index >= len(row):
            return None
        text = row[index].strip()
        return None if not text or text in _EMPTY_CELLS else text

    tags = [*_split(cell("tags")), *_split(cell("event_tags"))]
    markings = [tag for tag in tags if is_tlp(tag)]  # MISP's tlp: tags: the most restrictive of them and the tlp column
    common: dict[str, Any] = {
        "tags": [tag for tag in tags if tag not in markings],
        "source": cell("source"),
        "sources": _split(cell("sources")),
        "tlp": strictest_tlp([cell("tlp"), *markings]) if markings else cell("tlp"),
        "expires_at": cell("expires_at"),
        "description": cell("description"),
        "verdict": (cell("verdict") or "").lower() or None,
    }
    confidence = cell("confidence")
    if confidence is not None:
        try:
            common["confidence"] = int(confidence)
        except ValueError:
            out.error(ref, f"confidence {confidence!r} is not an integer (0-100)")
            return
    if (cell("to_ids") or "").lower() in ("1", "true") and not common["verdict"]:
        common["verdict"] = "malicious"
    if "value" in columns:
        value = cell("value")
        if value is None:
            out.error(ref, "no value")
            return
        raw_type = cell("type")
        if raw_type and raw_type.lower() == "domain|ip" and "|" in value:
            domain, _, ip = value.partition("|")
            out.ioc(f"{ref}/domain", {**common, "value": domain, "type": "domain"})
            out.ioc(f"{ref}/ip", {**common, "value": ip})
            return
        if raw_type and "|" in raw_type and "|" in value:  # MISP composites: filename|sha256, ip-dst|port
            half = MISP_TYPES.get(raw_type.lower(), (None, 0))[1]
            value = value.split("|")[half]
        elif raw_type and raw_type.lower() == "ip:port":
            value = host_of(value)
        out.ioc(ref, {**common, "value": value, "type": map_type(raw_type)})
        return
    for index, ioc_type in typed.items():
        if index < len(row) and row[index].strip():
            out.ioc(f"{ref}:{index + 1}", {**common, "value": row[index].strip(), "type": ioc_type})
