"""Ingest throughput: flows/s through `threatflow flows load`, scoring and storing included.

Setup: its own PostgreSQL, Redis and the Pub/Sub and Cloud Storage emulators; a model
trained on dev data (the tests' tiny configuration by default, --quick-model for ml's quick one, or
--model-dir DIR: ml/train.py's output, the model a deployment serves) published to the models bucket;
N flows from tests/perf/flowgen.py written as a gzip raw 49-column file. Then the
real CLI (a subprocess) loads the file through the gateway (2 workers x 8 threads):
every flow is validated, scored, stored as an event, and attack sources are bridged
to IoCs. The in-run baseline is a fixed piece of work on the same machine at the same
moment: read, parse and validate the same file in process, nothing sent (what the CLI
itself did until validation moved to the API; kept as it was so ratios compare across
versions). CPU per flow by process (CLI, gateway, PostgreSQL, emulators) is printed too:
on a shared machine it is much steadier than the wall-clock rate.
Target: at least 10,000 flows/s.

Run: .venv/bin/python tests/perf/bench_ingest.py             (200,000 flows)
     BENCH_INGEST=50000 .venv/bin/python tests/perf/bench_ingest.py   (quick)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from harness import Stack, login, migrated_engine

PROJECT = "threatflow-bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_INGEST") or 200_000))
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--model-dir", help="serve ml/train.py's output (the real served model) instead of a test model")
    parser.add_argument(
        "--quick-model", action="store_true", help="train ml's quick configuration (40 + 30 trees) instead of the tiny test one (15 + 10)"
    )
    args = parser.parse_args()

    import flowgen
    from flows_support import publish, trained_model

    from threatflow.cli import flows as cli
    from threatflow.devstack import services
    from threatflow.flows import ingest

    with Stack("tf-bench-ingest-") as stack:
        state = stack.state
        pg = stack.start(services.start_postgres(state))
        stack.start(services.start_redis(state))
        stack.start(services.start_pubsub_emulator(state, project=PROJECT))
        stack.start(services.start_storage_emulator(state, buckets=["threatflow-models", "threatflow-uploads", "threatflow-reports"]))
        env = stack.env(
            uses="postgres,redis,pubsub,storage",
            rate_limit="100000000/60",
            GOOGLE_CLOUD_PROJECT=PROJECT,
            FLOWS_SEARCH_CACHE="off",
            DB_POOL_SIZE="4",
        )
        engine = migrated_engine(env)
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        with contextlib.suppress(Exception):
            publisher.create_topic(name=publisher.topic_path(PROJECT, "ioc-enrichment-requested"))
        from threatflow.adapters.storage import GcsBlobs

        began = time.perf_counter()
        if args.model_dir:
            from bench_detect import load_or_train

            model = load_or_train(args.model_dir)
            print(f"model {model.version} loaded from {args.model_dir}")
        else:
            model = trained_model(rows=6000 if args.quick_model else 2000, quick=args.quick_model)
            kind = "quick" if args.quick_model else "tiny"
            print(f"model {model.version} trained in {time.perf_counter() - began:.1f} s ({kind} configuration)")
        publish(GcsBlobs(PROJECT), model)

        data = state / "flows.csv.gz"
        began = time.perf_counter()
        flowgen.write_raw(data, flowgen.generate(args.rows))
        megabytes = data.stat().st_size / 1e6
        print(f"generated {args.rows:,} flows (raw 49-column gzip, {megabytes:.1f} MB) in {time.perf_counter() - began:.1f} s")

        # Baseline: read, parse and validate the same file in process, nothing sent (see the docstring).
        began = time.perf_counter()
        with data.open("rb") as raw:
            for batch in cli.batches(ingest.read_csv_rows(ingest.open_text(raw)), args.batch_size):
                ingest.validate(batch.flows)
        baseline = time.perf_counter() - began

        # Scoring alone, in process, for the same flows (what the API spends on the model).
        with data.open("rb") as raw:
            sample = [flow for _i, (_n, flow) in zip(range(50_000), ingest.read_csv(ingest.open_text(raw)), strict=False)]
        clean, _fields, _problems = ingest.validate(sample)
        began = time.perf_counter()
        for i in range(0, len(clean), args.batch_size):
            model.model.verdicts_clean(clean[i : i + args.batch_size])
        scoring = len(clean) / (time.perf_counter() - began)

        from helpers import create_user

        password = create_user(pg.env["DATABASE_URL"], "loader", "analyst")
        port = stack.serve_gateway(env, workers=2, threads=8, timeout=90)
        token = login(port, "loader", password)
        cli_env = {**env, "THREATFLOW_URL": f"http://127.0.0.1:{port}", "THREATFLOW_TOKEN": token}
        threatflow = str(Path(sys.executable).parent / "threatflow")
        cpu_before = _tree_cpu()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        command = [threatflow, "flows", "load", str(data), "--batch-size", str(args.batch_size)]
        result = subprocess.run(
            [*command, "--progress-file", str(state / "p.json"), "--quiet"],
            env=cli_env,
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.perf_counter() - began
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_after = _tree_cpu()
        cli_cpu = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
        by_kind: dict[str, float] = {}
        for pid, (kind, cpu) in cpu_after.items():
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu - cpu_before.get(pid, (kind, 0.0))[1]
        server_cpu = by_kind.get("gateway", 0.0) + by_kind.get("postgres", 0.0)
        if result.returncode != 0:
            raise SystemExit(f"threatflow flows load failed: {result.stderr[-2000:]}")
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        with engine.connect() as conn:
            stored, bridged = conn.exec_driver_sql(
                "SELECT (SELECT count(*) FROM flow_events), (SELECT count(*) FROM iocs WHERE 'flow-detected' = ANY(tags))"
            ).one()
        engine.dispose()
        print(f"scoring alone (in process, batches of {args.batch_size:,}): {scoring:,.0f} flows/s")
        print(f"baseline, in process (read + parse + validate): {args.rows / baseline:,.0f} flows/s")
        print(
            f"threatflow flows load: {args.rows:,} flows in {took:.1f} s = {args.rows / took:,.0f} flows/s"
            f" (stored {summary['stored']:,}; {stored:,} events in the table; {bridged} attack sources bridged to IoCs);"
            f" {baseline / took:.2f}x the baseline rate"
        )
        # CPU time is steadier than wall time on a shared machine: what the load cost, per flow.
        per_flow = {kind: f"{cpu / args.rows * 1e6:,.0f}" for kind, cpu in sorted(by_kind.items())}
        print(
            f"CPU per flow: {(cli_cpu + server_cpu) / args.rows * 1e6:,.0f} us for the CLI, the gateway and PostgreSQL"
            f" (CLI {cli_cpu / args.rows * 1e6:,.0f}, {', '.join(f'{k} {v}' for k, v in per_flow.items())})"
        )
        with os.popen("uptime") as up:
            print(f"machine: {os.cpu_count()} cores, {up.read().strip()}")


def _tree_cpu() -> dict[int, tuple[str, float]]:
    """(kind, CPU seconds) of each live process descended from this one: the gateway's processes,
    PostgreSQL's, and the rest (emulators, Redis), which run on the same cores but are no part of a load."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        name, fields = stat.split(" (", 1)[1].rsplit(")", 1)[0], stat.rsplit(")", 1)[1].split()
        kind = "gateway" if b"devstack.gateway" in command else "postgres" if name.startswith("postgres") else name
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return {pid: value for pid, value in cpu.items() if descends(pid)}


if __name__ == "__main__":
    main()
