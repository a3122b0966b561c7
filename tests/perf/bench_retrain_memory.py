"""Peak memory of the retrain-flows job against the maintenance function's memory (functions/topology.yaml).

Starts its own PostgreSQL and storage emulator, stores N labelled flow events (the dev data's flows,
copied with other times until N), then runs the job's own path in a child process: stored flows
streamed from PostgreSQL (`repository.labelled_flows`), held compactly (`retrain.HeldFlows`), trained
on and compared, the candidate published to the emulator. The child's process tree (training fits in
worker processes) is sampled every 0.1 s; the figure is its peak total RSS, printed with its ratio to
the function's memory, and the RSS after reading the stored flows only.
Run: .venv/bin/python tests/perf/bench_retrain_memory.py [--events 200000]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from harness import REPO, Stack, migrated_engine, tree_rss_mb

DEV = REPO.parent / "shared" / "data" / "unsw-nb15" / "unsw_nb15_dev.csv.gz"
BUCKET = "threatflow-models"


def store_events(engine: object, events: int) -> int:
    """`events` labelled events from the dev flows (copies a day apart); returns how many were stored."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.flows import repository
    from threatflow.flows.repository import STORED_FEATURES

    with gzip.open(DEV, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    copies = -(-events // len(rows))
    with unit_of_work(engine) as conn:  # type: ignore[arg-type]
        repository.ensure_partitions(conn, [(start + timedelta(days=c)).date() for c in range(copies)])
    stored = 0
    for copy in range(copies):
        chunk = rows[: events - stored]
        payload = [
            [r["proto"], r["service"], r["state"], [float(r[f]) if f in r else None for f in STORED_FEATURES], int(r["label"]),
             r["attack_cat"] if r["label"] == "1" else None]
            for r in chunk
        ]  # fmt: skip
        with unit_of_work(engine) as conn:  # type: ignore[arg-type]
            conn.exec_driver_sql(
                "INSERT INTO flow_events (event_time, event_key, proto, service, state, features, label, attack_cat,"
                " predicted_attack, probability, predicted_cat, model_version)"
                " SELECT CAST(%s AS timestamptz) + ord * interval '1 ms', gen_random_uuid(), x->>0, x->>1, x->>2,"
                " ARRAY(SELECT CASE WHEN v = 'null' THEN NULL ELSE CAST(CAST(v AS text) AS real) END FROM jsonb_array_elements(x->3) v),"
                " CAST(x->>4 AS smallint), x->>5, false, 0.1, 'Normal', 'bench'"
                " FROM jsonb_array_elements(CAST(%s AS jsonb)) WITH ORDINALITY AS t(x, ord)",
                ((start + timedelta(days=copy)).isoformat(), json.dumps(payload)),
            )
        stored += len(chunk)
    return stored


def child(events: int, n_jobs: int | None, evaluation: str | None) -> None:
    """The job's path, as jobs/runs.py wires it; prints one JSON line."""
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import repository, retrain
    from threatflow.platform.config import Settings

    settings = Settings.from_env()
    engine = create_engine(settings)

    def fetch(limit: int):  # type: ignore[no-untyped-def]
        with unit_of_work(engine) as conn:
            yield from repository.labelled_flows(conn, limit=limit)

    started = time.perf_counter()
    held = retrain.HeldFlows.of(fetch(events))
    read_seconds = time.perf_counter() - started
    print(json.dumps({"phase": "read", "rss_mb": tree_rss_mb(os.getpid()), "held": len(held)}), flush=True)
    del held
    config = None if n_jobs is None else retrain.training_config(n_jobs=n_jobs)
    result = retrain.retrain(
        labelled_flows=fetch,
        blobs=GcsBlobs(settings.project),
        bucket=BUCKET,
        now=lambda: datetime.now(UTC),
        max_rows=events,
        config=config,
        evaluation_object=evaluation,
    )
    print(json.dumps({"phase": "done", "status": result["status"], "rows": result["rows"], "read_seconds": read_seconds,
                      "seconds": time.perf_counter() - started}), flush=True)  # fmt: skip


def put_evaluation_set(env: dict[str, str], megabytes: int) -> str:
    """A trusted evaluation CSV (partitioned layout) of about `megabytes` MB in the models bucket; returns its name."""
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.platform.config import Settings

    with gzip.open(DEV, "rt", newline="") as handle:
        header, *lines = handle.read().splitlines(keepends=True)
    # `dur` moved by half a second: not exact copies of the stored flows, which the candidate would leave out
    at = header.split(",").index("dur")
    lines = [",".join(str(float(c) + 0.5) if i == at else c for i, c in enumerate(line.split(","))) for line in lines]
    body, size = [header], len(header)
    while size < megabytes * 1_000_000:
        for line in lines:
            body.append(line)
            size += len(line)
    name = f"evaluation/dev-{megabytes}mb.csv"
    os.environ.update(env)
    GcsBlobs(Settings.from_env(env).project).put(BUCKET, name, "".join(body).encode(), content_type="text/csv")
    print(f"trusted evaluation set: {len(body) - 1:,} rows, {size / 1e6:.0f} MB")
    return name


def manifest_memory_mb() -> float:
    from threatflow.platform.manifest import load_manifest

    memory = load_manifest().functions["maintenance"].memory
    number = float(memory.rstrip("GMiB"))
    return number * 1024 if memory.endswith("Gi") else number


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)  # retrain.DEFAULT_MAX_ROWS
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel fits (default: the job's, retrain.training_config)")
    parser.add_argument(
        "--evaluation-mb", type=int, default=0, help="also name a trusted evaluation set of this size (MB of the dev rows, repeated)"
    )
    parser.add_argument("--evaluation-object", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.n_jobs, args.evaluation_object)
        return
    if not DEV.exists():
        raise SystemExit(f"skipped: the dev data is not at {DEV} (run with ../shared beside the checkout)")
    from threatflow.devstack import services

    with Stack("tf-bench-retrain-") as stack:
        stack.start(services.start_postgres(stack.state))
        stack.start(services.start_storage_emulator(stack.state, buckets=[BUCKET]))
        env = stack.env(uses="postgres,storage", BUCKET_MODELS=BUCKET)
        engine = migrated_engine(env)
        began = time.perf_counter()
        stored = store_events(engine, args.events)
        engine.dispose()  # type: ignore[attr-defined]
        print(f"stored {stored:,} labelled events in {time.perf_counter() - began:.0f} s")
        evaluation = put_evaluation_set(env, args.evaluation_mb) if args.evaluation_mb else None
        process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(args.events),
                *(["--n-jobs", str(args.n_jobs)] if args.n_jobs else []),
                *(["--evaluation-object", evaluation] if evaluation else []),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        peak = [0.0]

        def sample() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], tree_rss_mb(process.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        lines = [json.loads(line) for line in process.stdout or [] if line.startswith("{")]
        process.wait()
        sampler.join()
        if process.returncode != 0 or len(lines) != 2:
            raise SystemExit(f"the job's child failed (exit {process.returncode}): {lines}")
        read, done = lines
        limit = manifest_memory_mb()
        share = f"of the function's {limit:.0f} MB"
        print(
            f"stored flows held (HeldFlows)  {read['held']:>9,} flows   RSS after reading {read['rss_mb']:7.0f} MB"
            f"   ({read['rss_mb'] / limit:.2f} {share})"
        )
        print(
            f"whole job ({done['status']})  {done['rows']:>9,} rows   peak tree RSS {peak[0]:7.0f} MB"
            f"   ({peak[0] / limit:.2f} {share})   {done['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
