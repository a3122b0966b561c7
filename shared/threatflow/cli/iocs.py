"""`threatflow iocs ...`: import, export, extract and find over the HTTP API.

Talks only to the API (never to the database), so it works the same against the
local stack and a deployment. Large imports go through the async job and show
its progress on stderr; results go to stdout so they can be piped.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threatflow.cli import common
from threatflow.platform.errors import ValidationError

SYNC_LIMIT_BYTES = 5 * 1024 * 1024  # the API's synchronous import limit
# A large csv or text feed is imported in parts, each a synchronous import: at most PART_ITEMS records (well under the
# API's 100,000 items an import, as a row with typed columns or a text line may give several) and at most PART_BYTES of
# JSON body (room left for the body's other fields).
PART_ITEMS = 50_000
PART_BYTES = SYNC_LIMIT_BYTES - 64 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024  # what a compressed download may expand to; a bomb stops here
POLL_SECONDS = 1.0
MAX_WAIT_SECONDS = 3600

Call = Callable[..., Any]  # (method, path, body=None, raw=False) -> (status, payload)


_STIX1_ROOT = re.compile(r"<(?:[\w.-]+:)?STIX_Package\b")


def detect_format(path: Path, text: str) -> str:
    """json | csv | text | stix | misp, from the extension and the content: JSON by its shape, other text as csv when
    (after a feed's opening '#' block) its first line is a header the CSV import reads."""
    suffix = path.suffix.lower()
    if _STIX1_ROOT.search(text[:65536]) and text[:64].lstrip("\ufeff \t\r\n").startswith("<"):
        # A STIX 1.x package (XML with a STIX_Package element): as a text report its namespace URLs would become URL
        # indicators. The name alone is no package: a report or bundle that mentions it was refused.
        from threatflow.intel.formats.stix import STIX1_ADVICE

        raise ValidationError(f"{path}: a STIX 1.x package; {STIX1_ADVICE}", field="format")
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix != ".json":  # a report, or a feed saved as text (URLhaus's csv.txt): csv when its header says so
        from threatflow.intel.formats.csvfmt import has_known_header

        return "csv" if suffix not in (".md", ".html", ".htm") and has_known_header(text) else "text"
    try:
        doc = json.loads(text)
    except RecursionError:  # not a ValueError: deeper than the interpreter's limit (the API refuses it too)
        raise ValidationError(f"{path}: JSON nests deeper than the decoder allows", field="format") from None
    except ValueError as exc:
        if _is_json_lines(text):
            return "text"  # one object a line (Spamhaus's drop_v4.json): the text import reads it as a feed
        raise ValidationError(f"{path}: not valid JSON ({exc}); name the format with --format", field="format") from None
    from threatflow.intel.formats.stix import is_envelope

    if isinstance(doc, dict) and (doc.get("type") == "bundle" or _is_stix_object(doc) or is_envelope(doc)):
        return "stix"
    from threatflow.intel.formats.misp import is_event_document

    if isinstance(doc, dict) and "iocs" not in doc and is_event_document(doc):  # bare events too, as the parser reads them
        return "misp"
    return "json"


def _is_json_lines(text: str, *, sample: int = 65536) -> bool:
    """Whether the lines of the start of `text` (at least two) are each one JSON object."""
    lines = [line.strip() for line in text[:sample].splitlines() if line.strip()]
    if len(text) > sample:
        lines = lines[:-1]  # the last one may be cut
    if len(lines) < 2:
        return False
    try:
        return all(line[:1] == "{" and isinstance(json.loads(line), dict) for line in lines)
    except (ValueError, RecursionError):
        return False


def _is_stix_object(doc: dict[str, Any]) -> bool:
    """One STIX object without a bundle (the STIX import reads it): its id is `<type>--<uuid>`."""
    kind, ident = doc.get("type"), doc.get("id")
    return isinstance(kind, str) and isinstance(ident, str) and bool(kind) and ident.startswith(f"{kind}--")


def _content(fmt: str, text: str) -> Any:
    return json.loads(text) if fmt in ("json", "stix", "misp") else text


def _print_summary(result: dict[str, Any]) -> None:
    summary = result.get("iocs", {}).get("summary", {})
    print(
        "iocs: " + ", ".join(f"{k} {summary.get(k, 0)}" for k in ("created", "updated", "unchanged", "rejected")),
        file=sys.stderr,
    )
    skipped = result.get("skipped") or {}
    if skipped:  # what a feed held besides indicators: comments, sink addresses, fingerprints ...
        print("skipped: " + ", ".join(f"{kind} {count}" for kind, count in skipped.items()), file=sys.stderr)
    threats = result.get("threats", {}).get("summary") or {}
    if threats:
        print("threats: " + ", ".join(f"{k} {v}" for k, v in sorted(threats.items())), file=sys.stderr)
    rejected = result.get("iocs", {}).get("rejected") or [r for r in result.get("iocs", {}).get("results", []) if r["status"] == "rejected"]
    problems = [*rejected, *result.get("errors", [])]
    for problem in problems[:20]:
        where = problem.get("ref", problem.get("index", "?"))
        print(f"  rejected {where}: {problem.get('reason')}", file=sys.stderr)
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more (in the JSON: --json)", file=sys.stderr)


def _print_results(payload: dict[str, Any], *, full: bool) -> None:
    """Every item's result as JSON on stdout, for a pipe, a file or --json; a terminal gets the summary only (the
    JSON of a 25k-row feed was 4.6 MB scrolled past)."""
    if full or not sys.stdout.isatty():
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("(each item's result: --json, or redirect standard output)", file=sys.stderr)


def read_document(path: Path) -> tuple[Path, str]:
    """A downloaded file as text, and the name its format is told by: a .gz or a one-file .zip (how full feed dumps
    are served) is read as the file inside, expanding to at most MAX_FILE_BYTES. Text is UTF-8 (a BOM is dropped),
    UTF-16 with its BOM (Excel's "Unicode text"), or else read as Latin-1, which every byte is."""
    import gzip
    import zipfile

    try:
        data = path.read_bytes()
        name = path
        if data[:2] == b"\x1f\x8b":
            name = path.with_suffix("") if path.suffix.lower() == ".gz" else path
            with gzip.open(path) as inner:
                data = inner.read(MAX_FILE_BYTES + 1)
        elif data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise ValidationError(f"{path}: the zip holds {len(members)} files; unzip it and import one", field="file")
                name = Path(members[0].filename)
                with archive.open(members[0]) as inner:
                    data = inner.read(MAX_FILE_BYTES + 1)
    except OSError as exc:  # gzip's and zipfile's own errors (BadGzipFile, BadZipFile) included
        raise ValidationError(f"{path}: {getattr(exc, 'strerror', None) or exc}", field="file") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValidationError(f"{path}: not a readable archive: {exc}", field="file") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValidationError(f"{path}: expands to larger than {MAX_FILE_BYTES:,} bytes", field="file")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return name, data.decode("utf-16", errors="replace")
    try:
        return name, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        print(f"{path}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); read as Latin-1", file=sys.stderr)
        return name, data.decode("latin-1")


@dataclass(frozen=True)
class Part:
    """One import of a split document: its content (a csv's prefix and a run of records, a text's lines, a json
    document of a run of records) and the file's `unit`s it holds, first to last (lines, or a json feed's records)."""

    content: Any
    first: int
    last: int
    unit: str = "lines"


def split_parts(fmt: str, text: str) -> list[Part]:
    """A csv, text or json document too large for one synchronous import as parts that each fit (PART_ITEMS records,
    PART_BYTES of JSON), split only between records: a csv's records as its import reads them (a quoted cell spanning
    lines stays whole), each part led by the csv's prefix (its '#' block and header), so every part is read with the
    whole file's header; a text's lines; a json feed's records (`_json_parts`). One part (the document as it is) when
    it fits, and for the other formats."""
    if fmt == "json":
        return _json_parts(text)
    if fmt not in ("csv", "text") or (len(text.encode()) <= SYNC_LIMIT_BYTES and text.count("\n") < PART_ITEMS):
        return [Part(_content(fmt, text), 1, text.count("\n") + 1)]
    if fmt == "csv":
        from threatflow.intel.formats.csvfmt import records

        prefix, rows = records(text)
    else:
        prefix, rows = "", io.StringIO(text).readlines()
    data_start = len(text) - sum(map(len, rows))  # the records end the document
    room = PART_BYTES - _json_bytes(prefix)
    parts: list[Part] = []
    run: list[str] = []
    size, line = 0, text.count("\n", 0, data_start) + 1
    first = line
    for row in rows:
        row_bytes = _json_bytes(row)
        if row_bytes > room:
            raise ValidationError(f"{fmt}: line {line}: a record of {row_bytes:,} bytes, more than an import part holds", field="file")
        if run and (len(run) >= PART_ITEMS or size + row_bytes > room):
            parts.append(Part(prefix + "".join(run), first, line - 1))
            run, size, first = [], 0, line
        run.append(row)
        size += row_bytes
        line += row.count("\n")
    if run or not parts:
        parts.append(Part(prefix + "".join(run), first, max(first, line - text.endswith("\n"))))
    return parts


def _json_parts(text: str) -> list[Part]:
    """A json feed's records in runs of PART_ITEMS and PART_BYTES, each written as a document of the feed's own shape
    (jsonfmt.split_shape: a list, {"iocs": [...]}, ThreatFox's export as a list of its records, an abuse.ch API answer
    with a run of its records). A document that is no feed of records (an OTX pulse, whose indicators share its threats
    and TLP), or that fits, is one part, as it is."""
    from threatflow.intel.formats.jsonfmt import split_shape

    doc = json.loads(text)
    shape = split_shape(doc)
    if shape is None or (len(text.encode()) <= SYNC_LIMIT_BYTES and len(shape[0]) < PART_ITEMS):
        return [Part(doc, 1, len(shape[0]) if shape else 1, "records")]
    records, rebuild = shape
    room = PART_BYTES - len(json.dumps(rebuild([])))
    parts: list[Part] = []
    run: list[Any] = []
    size, first = 0, 1
    for number, record in enumerate(records, start=1):
        record_bytes = len(json.dumps(record)) + 2  # its separator
        if record_bytes > room:
            raise ValidationError(f"json: record {number}: {record_bytes:,} bytes, more than an import part holds", field="file")
        if run and (len(run) >= PART_ITEMS or size + record_bytes > room):
            parts.append(Part(rebuild(run), first, number - 1, "records"))
            run, size, first = [], 0, number
        run.append(record)
        size += record_bytes
    parts.append(Part(rebuild(run), first, len(records), "records"))
    return parts


def _json_bytes(text: str) -> int:
    """The bytes `text` takes in the request's JSON (escapes counted), without its quotes."""
    return len(json.dumps(text)) - 2


def cmd_import(args: argparse.Namespace, call: Call) -> int:
    path = Path(args.file)
    if args.file == "-":
        name, text = path, sys.stdin.read()
    else:
        name, text = read_document(path)
    fmt = args.format or detect_format(name, text)
    body: dict[str, Any] = {"format": fmt}
    for key in ("source", "tlp"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.tags:
        body["tags"] = [t.strip() for t in args.tags.split(",") if t.strip()]
    parts = split_parts(fmt, text)
    if len(parts) > 1:
        print(
            f"importing {path if args.file != '-' else 'stdin'} as {fmt} ({len(text.encode()):,} bytes) in {len(parts)} parts",
            file=sys.stderr,
        )
        return _import_parts(parts, body, call, full=getattr(args, "json", False))
    body["content"] = parts[0].content
    use_async = args.use_async or len(text.encode()) > SYNC_LIMIT_BYTES
    print(
        f"importing {path if args.file != '-' else 'stdin'} as {fmt} ({len(text.encode()):,} bytes{', async' if use_async else ''})",
        file=sys.stderr,
    )
    status, payload = call("POST", "/api/v1/iocs/import" + ("?async=true" if use_async else ""), body)
    if status >= 400:
        return common.http_error(status, payload)
    if not use_async:
        _print_summary(payload)
        _print_results(payload, full=getattr(args, "json", False))
        return 0
    job_path = payload["status_url"]
    deadline = time.monotonic() + MAX_WAIT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        status, job = call("GET", job_path)
        if status >= 400:
            return common.http_error(status, job)
        progress = job.get("progress") or {}
        line = f"job {job['job_id']}: {job['state']}" + (
            f" ({progress.get('stage')}, {progress.get('iocs', '?')} iocs)" if progress else ""
        )
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if job["state"] == "succeeded":
            _print_summary(job.get("result") or {})
            _print_results(job, full=getattr(args, "json", False))
            return 0
        if job["state"] == "failed":
            print(f"error: {job.get('error')}", file=sys.stderr)
            return 1
        time.sleep(POLL_SECONDS)
    print(f"error: job still running after {MAX_WAIT_SECONDS} s; follow it with: threatflow api GET {job_path}", file=sys.stderr)
    return 1


def _import_parts(parts: list[Part], body: dict[str, Any], call: Call, *, full: bool) -> int:
    """Each part as a synchronous import, in order, its summary on stderr; then the parts' summed summary, and on stdout
    one JSON document: {"parts": [{"part", "lines", "result"}...], "summary": ...}. The first failing part stops the
    run, naming the parts imported (importing them again merges: a re-run of the file is safe)."""
    results: list[dict[str, Any]] = []
    try:
        for number, part in enumerate(parts, start=1):
            status, payload = call("POST", "/api/v1/iocs/import", {**body, "content": part.content})
            if status >= 400:
                print(f"part {number}/{len(parts)} ({part.unit} {part.first}-{part.last}) failed", file=sys.stderr)
                return common.http_error(status, payload)
            summary = payload.get("iocs", {}).get("summary", {})
            print(f"part {number}/{len(parts)}: " + ", ".join(f"{k} {summary.get(k, 0)}" for k in _SUMMARY_KEYS), file=sys.stderr)
            results.append({"part": number, part.unit: [part.first, part.last], "result": payload})
    finally:
        if len(results) < len(parts):
            done = f"parts 1-{len(results)} were imported" if results else "no part was imported"
            print(f"{done}; importing the file again merges what is stored (IoCs are upserted)", file=sys.stderr)
    merged = _merged([r["result"] for r in results])
    _print_summary(merged)
    _print_results({"parts": results, "summary": {key: merged[key] for key in ("iocs", "skipped", "threats")}}, full=full)
    return 0


_SUMMARY_KEYS = ("created", "updated", "unchanged", "rejected")


def _merged(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts' summaries summed (iocs, skipped, threats), and their rejections, each ref led by its part."""
    iocs: dict[str, int] = dict.fromkeys(_SUMMARY_KEYS, 0)
    skipped: dict[str, int] = {}
    threats: dict[str, int] = {}
    rejected: list[dict[str, Any]] = []
    for number, result in enumerate(results, start=1):
        for totals, counts in (
            (iocs, result.get("iocs", {}).get("summary") or {}),
            (skipped, result.get("skipped") or {}),
            (threats, result.get("threats", {}).get("summary") or {}),
        ):
            for key, count in counts.items():
                if isinstance(count, int):
                    totals[key] = totals.get(key, 0) + count
        part_rejected = result.get("iocs", {}).get("rejected") or [
            r for r in result.get("iocs", {}).get("results", []) if r.get("status") == "rejected"
        ]
        for problem in [*part_rejected, *result.get("errors", [])]:
            rejected.append({**problem, "ref": f"part {number} {problem.get('ref', problem.get('index', '?'))}"})
    return {"iocs": {"summary": iocs, "rejected": rejected}, "skipped": skipped, "threats": {"summary": threats}}


def _pairs(pairs: list[str], example: str) -> list[tuple[str, str]]:
    """--filter KEY=VALUE arguments as (key, value), in order."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValidationError(f"--filter {pair!r}: expected key=value, e.g. {example}", field="filter")
        out.append((key, value))
    return out


def cmd_export(args: argparse.Namespace, call: Call) -> int:
    from urllib.parse import urlencode

    query = urlencode(_pairs(args.filter or [], "type=domain or tags=emotet"))
    path = f"/api/v1/iocs/export?format={args.format}&limit={args.limit}" + (f"&{query}" if query else "")
    status, response = call("GET", path, raw=True)
    if status >= 400:
        return common.http_error(status, response.json() if "json" in response.headers.get("Content-Type", "") else response.text)
    if args.output and args.output != "-":
        Path(args.output).write_bytes(response.content)
    else:
        sys.stdout.buffer.write(response.content)
    count, truncated = response.headers.get("X-Export-Count", "?"), response.headers.get("X-Export-Truncated") == "true"
    most = "10000 for stix" if args.format == "stix" else "100000"
    note = f"; more matched: raise --limit (at most {most}) or narrow --filter" if truncated else ""
    print(
        f"exported {count} iocs as {args.format}{' to ' + args.output if args.output and args.output != '-' else ''}{note}", file=sys.stderr
    )
    return 0


def cmd_extract(args: argparse.Namespace, call: Call) -> int:
    text = sys.stdin.read() if args.file == "-" else read_document(Path(args.file))[1]  # as `iocs import` reads it
    status, payload = call("POST", "/api/v1/iocs/extract", {"text": text, "refang": not args.no_refang})
    if status >= 400:
        return common.http_error(status, payload)
    for found in payload["iocs"]:
        print(f"{found['type']}\t{found['value']}")
    print(f"{payload['count']} indicators" + (" (read as a feed)" if payload.get("feed") else ""), file=sys.stderr)
    skipped = payload.get("skipped") or {}
    if skipped:
        print("skipped: " + ", ".join(f"{kind} {count}" for kind, count in skipped.items()), file=sys.stderr)
    return 0


def cmd_find(args: argparse.Namespace, call: Call) -> int:
    import msgspec

    from threatflow.intel.formats.export import filter_from_query

    pairs: dict[str, str] = {}
    for key, value in _pairs(args.filter or [], "verdict=malicious"):
        pairs[key] = f"{pairs[key]},{value}" if key in pairs else value
    if args.type:
        pairs["type"] = args.type
    if args.tag:
        pairs["tags"] = args.tag
    # The export's query parsing checks names and values here, before any request.
    body = {k: v for k, v in msgspec.to_builtins(filter_from_query(pairs)).items() if v is not None}
    if "max_tlp" not in pairs:
        body.pop("max_tlp", None)  # find shows every TLP; only export caps it by default
    body["limit"] = args.limit
    if args.cursor:
        body["cursor"] = args.cursor
    status, payload = call("POST", "/api/v1/iocs/find", body)
    if status >= 400:
        return common.http_error(status, payload)
    print(json.dumps(payload, indent=2))
    return 0


def add_parser(sub: Any, run: Callable[[argparse.Namespace], int]) -> None:
    iocs = sub.add_parser("iocs", help="import, export, extract and find IoCs through the API")
    iocs.add_argument("--url", help="API base URL (default: THREATFLOW_URL, the stored login or the local stack)")
    actions = iocs.add_subparsers(dest="action", required=True)

    imp = actions.add_parser("import", help="import a file: JSON, CSV, text report, STIX 2.1 bundle or MISP event")
    imp.add_argument("file", help="the file, or - for standard input")
    imp.add_argument("--format", choices=["json", "csv", "text", "stix", "misp"], help="default: from the extension and content")
    imp.add_argument("--source", help="source recorded on every IoC")
    imp.add_argument("--tlp", help="TLP for IoCs that carry none")
    imp.add_argument("--tags", help="comma-separated tags added to every IoC")
    imp.add_argument("--async", dest="use_async", action="store_true", help="queue it as a job (automatic over 5 MB)")
    imp.add_argument("--json", action="store_true", help="print every item's result as JSON also to a terminal")

    exp = actions.add_parser("export", help="export IoCs as STIX 2.1, CSV or a plain blocklist")
    exp.add_argument("--format", choices=["stix", "csv", "txt"], default="stix")
    exp.add_argument("--filter", action="append", metavar="KEY=VALUE", help="the /find filters as query parameters, e.g. type=domain")
    exp.add_argument("--limit", type=int, default=10_000)
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")

    ext = actions.add_parser("extract", help="list the IoCs in a report, without storing them")
    ext.add_argument("file", help="the report, or - for standard input")
    ext.add_argument("--no-refang", action="store_true", help="keep defanged values as written")

    find = actions.add_parser("find", help="search stored IoCs")
    find.add_argument("--type")
    find.add_argument("--tag")
    find.add_argument("--filter", action="append", metavar="KEY=VALUE", help="any /find field, e.g. verdict=malicious or value_prefix=evil")
    find.add_argument("--limit", type=int, default=100)
    find.add_argument("--cursor", help="next_cursor of the previous page")
    iocs.set_defaults(run=run)


COMMANDS = {"import": cmd_import, "export": cmd_export, "extract": cmd_extract, "find": cmd_find}
