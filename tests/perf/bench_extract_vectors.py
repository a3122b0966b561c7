"""Pass rate of extract() on the style-of-public-suites vectors (a plain script, not a test).

    .venv/bin/python tests/perf/bench_extract_vectors.py [--quiet]

Runs every vector in tests/unit/iocs/extract_vectors.py, prints
"extract vectors: N/M passed (P%)", the rate per style, and each failing vector
with what was missing and what was unexpected.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "shared"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from unit.iocs.extract_vectors import VECTORS  # noqa: E402

from threatflow.iocs.extraction import extract  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="print the totals only")
    args = parser.parse_args()

    total: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    failures: list[str] = []
    for vector in VECTORS:
        found = {(str(item.type), item.value) for item in extract(vector.text)}
        total[vector.style] += 1
        if found == vector.expected:
            passed[vector.style] += 1
            continue
        missing = sorted(vector.expected - found)
        unexpected = sorted(found - vector.expected)
        failures.append(f"  [{vector.style}] {vector.text!r}\n      missing: {missing}\n      unexpected: {unexpected}")

    count, ok = sum(total.values()), sum(passed.values())
    print(f"extract vectors: {ok}/{count} passed ({100 * ok / count:.1f}%)")
    for style in total:
        print(f"  {style:12} {passed[style]:4}/{total[style]:<4}")
    if failures and not args.quiet:
        print(f"failing ({len(failures)}):")
        print("\n".join(failures))


if __name__ == "__main__":
    main()
