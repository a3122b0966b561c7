"""`threatflow enrich VALUE... | --file FILE`: enrich IoCs over the API, with a progress
bar on stderr and a summary table of verdicts on stdout.

A file is one value a line, or any import format (JSON, CSV, STIX 2.1, MISP; free
text is extracted): it is parsed here and only the values are sent, in batches of
up to 1,000 through POST /api/v1/enrichment/batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from threatflow.cli import common

BATCH = 1000
POLL_SECONDS = 1.0

Call = Callable[..., Any]


def values_from_file(path: Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """The values of a file (`-`: standard input), its format named or told from its name and content."""
    from threatflow.cli.iocs import detect_format, read_document
    from threatflow.intel.formats import parse

    # As `threatflow iocs import` reads it: a BOM dropped, UTF-16, a .gz or one-file .zip dump, an unreadable file
    # an error naming it (a BOM stayed on the first value, which was then rejected).
    name, text = (path, sys.stdin.read()) if str(path) == "-" else read_document(path)
    fmt = fmt or (detect_format(name, text) if str(path) != "-" else "text")
    if fmt == "text":
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if all(" " not in line for line in lines):  # one value a line
            return [{"value": line} for line in lines]
    parsed = parse(fmt, text)  # the format decodes its own JSON: a bad file is its error line, never a traceback
    return [{"value": p.item.value, **({"type": p.item.type} if p.item.type else {})} for p in parsed.iocs]


def _bar(done: int, total: int, started: float) -> str:
    width = 30
    filled = int(width * done / total) if total else width
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs done  {time.monotonic() - started:5.1f}s"


def run(args: argparse.Namespace, call: Call) -> int:
    items: list[dict[str, Any]] = [{"value": v} for v in args.values]
    if args.file:
        items += values_from_file(Path(args.file), getattr(args, "format", None))
    if not items:
        print("error: give VALUE... or --file FILE", file=sys.stderr)
        return 2
    sources = [s.strip() for s in (args.sources or "").split(",") if s.strip()]  # "a, b" names b, not " b"
    runs: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    batches: list[str] = []
    for start in range(0, len(items), BATCH):
        body = {"iocs": items[start : start + BATCH], "force": args.force, "sources": sources}
        status, payload = call("POST", "/api/v1/enrichment/batch", body)
        if status >= 400:
            return common.http_error(status, payload)  # JSON, as `threatflow api` prints it (was a dict's repr)
        batches.append(payload["batch_id"])
        for item in payload["runs"]:
            (rejected if "error" in item else runs).append(item)
    for item in rejected:
        print(f"rejected: {item['value']}: {item['error']}", file=sys.stderr)
    final: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    deadline = started + args.timeout
    while not args.no_wait:
        done = 0
        for batch_id in batches:
            status, progress = call("GET", f"/api/v1/enrichment/batches/{batch_id}")
            if status >= 400:
                print(file=sys.stderr)  # past the progress bar
                return common.http_error(status, progress)
            for item in progress["runs"]:
                if item.get("run_id"):
                    final[item["run_id"]] = item
            done += progress["done"]
        print(_bar(done, len(runs), started), end="", file=sys.stderr, flush=True)
        if done >= len(runs) or time.monotonic() > deadline:
            print(file=sys.stderr)
            break
        time.sleep(POLL_SECONDS)
    rows = [final.get(r["run_id"], r) for r in runs]
    print(f"{'VERDICT':<11} {'SCORE':>5}  {'TYPE':<9} {'RUN':<32} VALUE")
    for row in rows:
        score = "" if row.get("score") is None else str(row["score"])
        verdict = row.get("verdict") or row.get("status") or "?"
        print(f"{verdict:<11} {score:>5}  {row.get('type', ''):<9} {row.get('run_id') or '-':<32} {row['value']}")
    for row in rows:
        if row.get("reason"):  # closed as never dispatched: its request never reached enrich-dispatch
            print(f"note: {row['value']}: {row['reason']}", file=sys.stderr)
        elif "skipped" in row:  # closed without asking any source: say why, or "unknown" reads as an answer
            reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(row["skipped"].items())) or "no source is configured"
            print(f"note: {row['value']}: no source was asked: {reasons}", file=sys.stderr)
    if args.no_wait:
        for batch_id in batches:
            print(f"follow: threatflow api GET /api/v1/enrichment/batches/{batch_id}", file=sys.stderr)
    counts = Counter(str(r.get("verdict") or "pending") for r in rows)
    print("\n" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; {len(rejected)} rejected", file=sys.stderr)
    return 0 if not rejected else 1


def add_parser(sub: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    parser = sub.add_parser("enrich", help="enrich IoCs: threatflow enrich 1.2.3.4 evil.example | --file iocs.txt")
    parser.add_argument("values", nargs="*", metavar="VALUE")
    parser.add_argument("--file", help="one value a line, or a JSON/CSV/STIX/MISP/text import file ('-' = stdin)")
    parser.add_argument(
        "--format", choices=["json", "csv", "text", "stix", "misp"], help="the file's format (default: from its extension and content)"
    )
    parser.add_argument("--force", action="store_true", help="ignore cached results and warninglists")
    parser.add_argument("--sources", help="comma-separated source names (default: every applicable source)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the runs")
    parser.add_argument("--no-wait", action="store_true", help="print the run ids and exit")
    parser.add_argument("--url", help="API base URL")
    parser.set_defaults(run=handler)
