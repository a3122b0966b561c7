"""The IoC upsert statement of this checkout against another git ref's, as alternated same-run pairs.

Starts its own PostgreSQL on a free port, loads `shared/threatflow/iocs/repository.py` as it is at `--against`
(default main) beside this checkout's, and times `repository.upsert` (the one statement every IoC write path ends in,
no HTTP) for batches of new IoCs (inserts) and of the same IoCs again with new tags (updates), each round in
alternating order on its own values. Prints the median per phase and the ratio of each pair (this / other):
the machine is shared, so the pairs, not the absolute times, are the figure.
Run: .venv/bin/python tests/perf/bench_upsert_ab.py [--against REF] [--items N] [--rounds R] [--full]
(`--full`: the updates go to IoCs already holding 64 tags, so every new tag is cut here and unioned there.)
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import Stack, migrated_engine

ROOT = Path(__file__).resolve().parents[2]
READABLE = ["clear", "green", "amber", "amber+strict", "red"]


def repository_at(ref: str, folder: Path) -> Any:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:shared/threatflow/iocs/repository.py"], check=True, capture_output=True, text=True
    ).stdout
    path = folder / "repository_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("repository_at_ref", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["repository_at_ref"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="main")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()

    from threatflow.adapters.postgres import unit_of_work
    from threatflow.devstack import services
    from threatflow.iocs import repository as this
    from threatflow.iocs.model import UpsertItem

    def items(prefix: str, tags: list[str]) -> list[UpsertItem]:
        now = datetime.now(UTC)
        return [
            UpsertItem(index=i, type="domain", value=f"{prefix}-{i}.bench-ab.com", tags=tags, sources=["bench"], seen_at=now)
            for i in range(args.items)
        ]

    first_tags = [f"t{i:02d}" for i in range(64)] if args.full else ["a", "b"]
    with tempfile.TemporaryDirectory() as folder, Stack("tf-upsert-ab-") as stack:
        other = repository_at(args.against, Path(folder))
        stack.start(services.start_postgres(stack.state))
        engine = migrated_engine(stack.env(uses="postgres"))
        times: dict[tuple[str, str], list[float]] = {(n, p): [] for n in ("this", "other") for p in ("insert", "update")}
        for round_ in range(args.rounds):
            order = [("this", this), ("other", other)] if round_ % 2 == 0 else [("other", other), ("this", this)]
            for phase, tags in (("insert", first_tags), ("update", ["new-1", "new-2"])):
                for name, module in order:
                    batch = items(f"{name}{round_}", tags)
                    started = time.perf_counter()
                    with unit_of_work(engine) as conn:
                        # `now` is required since upserts apply the expiry rule; a ref from before that takes none
                        extra = {"now": datetime.now(UTC)} if "now" in inspect.signature(module.upsert).parameters else {}
                        module.upsert(conn, batch, readable=READABLE, **extra)
                    times[(name, phase)].append(time.perf_counter() - started)
        engine.dispose()
    print(
        f"IoC upsert statement, this checkout vs {args.against}: {args.rounds} rounds of {args.items:,} items"
        + (" (full IoCs)" if args.full else "")
    )
    for phase in ("insert", "update"):
        ratios = [a / b for a, b in zip(times[("this", phase)], times[("other", phase)], strict=True)]
        print(
            f"{phase:<7} this {statistics.median(times[('this', phase)]) * 1000:7.1f} ms   {args.against} "
            f"{statistics.median(times[('other', phase)]) * 1000:7.1f} ms   pair ratios this/{args.against}: median "
            f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
