"""How real public documents import (a plain script, not a test).

    .venv/bin/python tests/perf/score_real_documents.py [--dir DIR ...] [--no-excerpts] [--shared PATH] [--quiet]

Parses each document the way POST /api/v1/iocs/import and `threatflow iocs import` would (the format detected as
the CLI detects it) and prints, per document and per format, whether it was refused whole, imported with item
errors or values the store would reject, or imported fully, with its counts of IoCs, threats, links, relations,
errors and warnings. The documents are the short excerpts in tests/real_documents.py, and every file under each
`--dir` (full public documents kept outside the repository: their licences are their authors'). `--shared` runs
another checkout's parsers (`--shared ../main/shared`: the figures before a change).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def documents(dirs: list[Path], *, excerpts: bool = True) -> list[tuple[str, Path, str]]:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import real_documents

    found = []
    for name in sorted(dir(real_documents)) if excerpts else []:
        if name.isupper():
            found.append((f"real_documents.{name}", Path(f"{name.lower()}.json"), json.dumps(getattr(real_documents, name))))
    for folder in dirs:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            found.append((str(path), path, path.read_bytes().decode("utf-8", "replace")))
    return found


def score(label: str, path: Path, text: str) -> dict[str, Any]:
    from threatflow.cli.iocs import detect_format
    from threatflow.intel.formats import parse
    from threatflow.iocs.normalise import normalise
    from threatflow.platform.errors import ValidationError

    try:
        fmt = detect_format(path, text)
        parsed = parse(fmt, text)
    except ValidationError as exc:
        return {"document": label, "format": locals().get("fmt", "?"), "outcome": "refused", "reason": exc.message[:160]}
    rejected = 0
    for item in parsed.iocs:
        try:
            normalise(item.item.value, item.item.type)  # what the store's upsert would keep, or reject
        except ValidationError:
            rejected += 1
    summary = parsed.summary()
    outcome = "full" if not parsed.errors and not rejected else "partial"
    return {"document": label, "format": fmt, "outcome": outcome, **summary, "rejected": rejected, "skipped": dict(parsed.skipped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, action="append", default=[], help="a folder of full documents")
    parser.add_argument("--shared", type=Path, default=REPO_ROOT / "shared", help="the shared package to run")
    parser.add_argument("--no-excerpts", action="store_true", help="only the --dir documents")
    parser.add_argument("--quiet", action="store_true", help="print the totals only")
    args = parser.parse_args()
    sys.path.insert(0, str(args.shared.resolve()))
    results = [score(*doc) for doc in documents(args.dir, excerpts=not args.no_excerpts)]
    for result in results if not args.quiet else []:
        print(json.dumps(result, ensure_ascii=False))
    totals: dict[str, Counter[str]] = {}
    for result in results:
        totals.setdefault(result["format"], Counter())[result["outcome"]] += 1
    print(f"{'format':8} {'tried':>5} {'full':>5} {'partial':>7} {'refused':>7}")
    for fmt, counts in sorted(totals.items()):
        print(f"{fmt:8} {sum(counts.values()):>5} {counts['full']:>5} {counts['partial']:>7} {counts['refused']:>7}")
    everything = sum(totals.values(), Counter())
    print(f"{'all':8} {sum(everything.values()):>5} {everything['full']:>5} {everything['partial']:>7} {everything['refused']:>7}")


if __name__ == "__main__":
    main()
