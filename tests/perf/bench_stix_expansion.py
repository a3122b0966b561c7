"""STIX import work against the size of `IN (K values)` patterns joined by one relationship.

Before issue 7 a bundle of two indicators `[ipv4-addr:value IN (K values)]` and
one relationship created K² relation rows (K = 200: 40,000 rows, 44 s). Now
values per pattern (MAX_PATTERN_VALUES) and relations per import
(MAX_RELATIONS_PER_IMPORT) are capped and what was cut is reported, so work is
linear in the input. Prints, per K: import time, relations created and cut, and
the time per IoC against a baseline bundle of the same IoCs without the
relationship.
Run: .venv/bin/python tests/perf/bench_stix_expansion.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))


def bundle(k: int, *, related: bool, seed: int) -> dict:
    def indicator(n: int) -> dict:
        values = ", ".join(f"'10.{seed}.{n}.{i % 250 + 1}'" if i < 250 else f"'10.{seed}.{n + 100}.{i % 250 + 1}'" for i in range(k))
        return {
            "type": "indicator", "spec_version": "2.1", "id": f"indicator--{seed:08d}-0000-4000-8000-{n:012d}",
            "created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z", "pattern_type": "stix",
            "pattern": f"[ipv4-addr:value IN ({values})]", "valid_from": "2024-01-01T00:00:00Z",
        }  # fmt: skip

    objects = [indicator(1), indicator(2)]
    if related:
        objects.append(
            {
                "type": "relationship",
                "spec_version": "2.1",
                "id": f"relationship--{seed:08d}-0000-4000-8000-000000000003",
                "created": "2024-01-01T00:00:00Z",
                "modified": "2024-01-01T00:00:00Z",
                "relationship_type": "communicates-with",
                "source_ref": objects[0]["id"],
                "target_ref": objects[1]["id"],
            }
        )
    return {"type": "bundle", "id": f"bundle--{seed:08d}-0000-4000-8000-000000000000", "objects": objects}


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.db.migrate import migrate
    from threatflow.devstack import services
    from threatflow.intel import importer
    from threatflow.intel.formats import parse
    from threatflow.iocs import repository as ioc_repository
    from threatflow.platform.config import Settings

    state = Path(tempfile.mkdtemp(prefix="tf-bench-stix-"))
    pg = services.start_postgres(state)
    try:
        os.environ.update(pg.env)
        engine = create_engine(Settings.from_env())
        migrate(engine, progress=lambda _m: None)

        def timed_import(parsed: Any) -> tuple[float, dict[str, Any]]:
            """Seconds to apply one parsed import in its own transaction, and the import's result."""
            began = time.perf_counter()
            with unit_of_work(engine) as conn:
                result = importer.apply_import(
                    parsed,
                    conn=conn,
                    now=datetime.now(UTC),
                    actor="bench",
                    clearance="red",
                    catalog=None,
                    warninglists=None,
                    policies=ioc_repository.policies(conn),
                )
            return time.perf_counter() - began, result

        print("STIX import: two indicators of IN (K values) + one relationship, against the same IoCs without it")
        print(f"caps: {importer.MAX_RELATIONS_PER_IMPORT} relations per import, values per pattern as stix.MAX_PATTERN_VALUES")
        for seed, k in enumerate((25, 50, 100, 200, 400), start=1):
            baseline, _ = timed_import(parse("stix", bundle(k, related=False, seed=seed)))
            parsed = parse("stix", bundle(k, related=True, seed=seed + 50))
            took, result = timed_import(parsed)
            iocs = len(parsed.iocs)
            print(
                f"K={k:<4} {iocs:>4} IoCs  import {took:6.2f} s ({took / baseline:4.1f}x the no-relationship baseline {baseline:5.2f} s)"
                f"  relations created {result['relations']:>5}, cut {result['relations_cut']:>6}"
                f"  values cut: {sum('only the first' in w['reason'] for w in result['warnings'])} pattern(s)"
            )
        engine.dispose()
    finally:
        services.stop(pg)


if __name__ == "__main__":
    main()
