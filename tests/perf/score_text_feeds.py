"""Right and wrong values of a text import on public feed shapes (a plain script, not a test).

    PYTHONPATH=shared .venv/bin/python tests/perf/score_text_feeds.py [--quiet]

Runs the text import parser (what POST /api/v1/iocs/import and `threatflow iocs import` run on a text file) over
every vector in tests/unit/iocs_formats/text_feed_vectors.py and prints, per vector and in total, the values it
got right, the values it yielded that it should not have (wrong: a header's URL, a sink address, a fingerprint
taken for a hash, a value of the wrong type) and the values it missed, then what it skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "shared"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from unit.iocs_formats.text_feed_vectors import VECTORS  # noqa: E402

from threatflow.intel.formats import parse  # noqa: E402
from threatflow.iocs.normalise import normalise  # noqa: E402


def stored(text: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    parsed = parse("text", text)
    values = []
    for item in parsed.iocs:
        indicator = normalise(item.item.value, item.item.type)  # what the store's upsert keeps
        values.append((str(indicator.type), indicator.value))
    return values, parsed.skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="print the totals only")
    args = parser.parse_args()
    right = wrong = missed = exact = 0
    for vector in VECTORS:
        got, skipped = stored(vector.text)
        expected = set(vector.expected)
        good = [v for v in got if v in expected]
        bad = [v for v in got if v not in expected]
        lost = [v for v in vector.expected if v not in set(got)]
        right, wrong, missed = right + len(good), wrong + len(bad), missed + len(lost)
        exact += not bad and not lost
        if not args.quiet:
            mark = "ok  " if not bad and not lost else "FAIL"
            print(f"{mark} {vector.name:28} [{vector.defect:10}] right {len(good)}/{len(expected)}, wrong {len(bad)}")
            for value in bad:
                print(f"       wrong:  {value[0]} {value[1]}")
            for value in lost:
                print(f"       missed: {value[0]} {value[1]}")
            if skipped:
                print(f"       skipped: {skipped}")
    total = sum(len(v.expected) for v in VECTORS)
    print(f"text feeds: {exact}/{len(VECTORS)} vectors exact; values right {right}/{total}, wrong {wrong}, missed {missed}")


if __name__ == "__main__":
    main()
