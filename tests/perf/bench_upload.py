"""Upload throughput: flows/s through the flow-ingest worker for a file in the uploads bucket.

Setup: its own PostgreSQL and the Pub/Sub, Firestore and Cloud Storage emulators; a model trained on dev
data (the tests' tiny configuration, or --model-dir DIR: ml/train.py's output) published to the models
bucket; N flows from tests/perf/flowgen.py written as a gzip raw 49-column file and put in the uploads
bucket. The worker is its real handler (flows/handlers.py build_handler on a Runtime built from the
environment), run in this process on a job as POST /api/v1/flows/uploads makes it: the Firestore lease,
the hash pass, 8 MiB ranged reads pinned to the generation, validation, scoring, the COPY insert, the
IoC bridge and the progress writes. Each run's worker is warmed up first on a small file of its own (its
first delivery loads the model and creates the daily partitions). Two runs, each on a file of its own (so
neither meets the other's events):
  - one delivery (the default 420 s budget: the whole file at once);
  - every batch a delivery (a 0 s budget: each one hands over to a continuation published on the
    flow-ingest topic and pulled back here), the worst case of the hand-over's cost.
In-run baselines, on the same object over the same emulator: the plain read + parse rate (the worker's
ranged reads, gunzip, bounded lines and read_csv; nothing validated, scored or stored), and the hash
pass alone (what the first delivery reads before it parses). Printed as ratios to the worker's rate.

Run: .venv/bin/python tests/perf/bench_upload.py                      (50,000 flows, gzip; --plain: uncompressed)
     BENCH_UPLOAD=200000 .venv/bin/python tests/perf/bench_upload.py  (bigger)
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from harness import Stack, migrated_engine, tree_cpu_seconds

PROJECT = "threatflow-bench"
UPLOADS = "threatflow-uploads"
WARM_UP = 2000  # flows: one batch, over the 30 days flowgen spreads flows on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_UPLOAD") or 50_000))
    parser.add_argument("--plain", action="store_true", help="upload the files uncompressed (the hash pass then reads every byte)")
    parser.add_argument("--model-dir", help="serve ml/train.py's output (the real served model) instead of a test model")
    args = parser.parse_args()

    import flowgen
    from flows_support import publish, trained_model

    from threatflow.devstack import services

    with Stack("tf-bench-upload-") as stack:
        state = stack.state
        pg = stack.start(services.start_postgres(state))
        stack.start(services.start_pubsub_emulator(state, project=PROJECT))
        stack.start(services.start_firestore_emulator(state, project=PROJECT))
        stack.start(services.start_storage_emulator(state, buckets=["threatflow-models", UPLOADS, "threatflow-reports"]))
        env = stack.env(uses="postgres,pubsub,firestore,storage", GOOGLE_CLOUD_PROJECT=PROJECT, THREATFLOW_ENV="local")
        engine = migrated_engine(env)  # also puts env in this process's environment, for Settings.from_env()

        from google.cloud import pubsub_v1

        from threatflow.adapters.storage import GcsBlobs

        publisher = pubsub_v1.PublisherClient()
        for topic in ("flow-ingest", "ioc-enrichment-requested"):
            with contextlib.suppress(Exception):
                publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
        subscriber = pubsub_v1.SubscriberClient()
        subscription = subscriber.subscription_path(PROJECT, "bench-upload-continuations")
        subscriber.create_subscription(name=subscription, topic=publisher.topic_path(PROJECT, "flow-ingest"))

        blobs = GcsBlobs(PROJECT)
        began = time.perf_counter()
        if args.model_dir:
            from bench_detect import load_or_train

            model: Any = load_or_train(args.model_dir)
            print(f"model {model.version} loaded from {args.model_dir}")
        else:
            model = trained_model()
            print(f"model {model.version} trained in {time.perf_counter() - began:.1f} s (tiny configuration)")
        publish(blobs, model)

        began = time.perf_counter()
        objects = {}
        for run, seed in (("one delivery", 7), ("every batch a delivery", 8), ("warm-up", 9)):
            path = state / f"flows-{seed}.csv{'' if args.plain else '.gz'}"
            flowgen.write_raw(path, flowgen.generate(WARM_UP if run == "warm-up" else args.rows, seed=seed))
            name = f"bench/{path.name}"
            blobs.put(UPLOADS, name, path.read_bytes())
            objects[run] = (name, path.stat().st_size)
        megabytes = objects["one delivery"][1] / 1e6
        layout = "plain" if args.plain else "gzip"
        print(
            f"generated {args.rows:,} flows twice (raw 49-column {layout}, {megabytes:.1f} MB each) in {time.perf_counter() - began:.1f} s"
        )

        name = objects["one delivery"][0]
        read_parse = _best_of(2, lambda: _read_and_parse(blobs, name))
        hash_pass = _best_of(2, lambda: _hash_pass(blobs, name))

        from threatflow.flows import handlers
        from threatflow.platform.config import Settings
        from threatflow.runtime import Runtime

        workers = {}
        for run, budget in (("one delivery", "420"), ("every batch a delivery", "0")):
            os.environ["FLOW_INGEST_DELIVERY_SECONDS"] = budget  # read by Settings.from_env()
            runtime = Runtime(Settings.from_env())
            workers[run] = (runtime, handlers.build_handler(runtime))
        # Each instance's first delivery loads the model and creates the month's daily partitions: not measured.
        for runtime, handler in workers.values():
            _through_worker(
                runtime, handler, objects["warm-up"][0], rows=WARM_UP, pg_pid=pg.pid, subscriber=subscriber, subscription=subscription
            )
        results = {}
        for run, (runtime, handler) in workers.items():
            name = objects[run][0]
            results[run] = _through_worker(
                runtime, handler, name, rows=args.rows, pg_pid=pg.pid, subscriber=subscriber, subscription=subscription
            )
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM flow_events").scalar_one()
        engine.dispose()
        subscriber.close()

        rows = args.rows
        print(f"baseline, read + parse (ranged reads, gunzip if gzip, bounded lines, read_csv): {rows / read_parse:,.0f} flows/s")
        print(f"hash pass alone (the first delivery's sha256 pass over the object): {rows / hash_pass:,.0f} flows/s ({hash_pass:.2f} s)")
        for run, outcome in results.items():
            took = outcome["seconds"]
            print(
                f"worker, {run}: {rows:,} flows in {took:.1f} s = {rows / took:,.0f} flows/s over {outcome['deliveries']} deliveries"
                f" ({rows / took / (rows / read_parse):.2f}x the read + parse rate; the hash pass is {hash_pass / took:.1%} of it);"
                f" CPU per flow {outcome['worker_cpu'] / rows * 1e6:,.0f} us in the worker,"
                f" {outcome['postgres_cpu'] / rows * 1e6:,.0f} us in PostgreSQL; job: stored {outcome['stored']:,},"
                f" duplicates {outcome['duplicates']:,}, invalid {outcome['invalid']:,}"
            )
        print(f"events in the table: {stored:,} (expected {2 * rows + WARM_UP:,}: both runs and the warm-up file)")
        with os.popen("uptime") as up:
            print(f"machine: {os.cpu_count()} cores, {up.read().strip()}")


def _best_of(times: int, work: Any) -> float:
    best = float("inf")
    for _ in range(times):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def _read_and_parse(blobs: Any, name: str) -> int:
    """The worker's read path on the object, nothing after read_csv (flows/handlers.py run_job)."""
    from threatflow.flows import handlers, ingest

    count = 0
    info = blobs.stat(UPLOADS, name)
    with blobs.open_read(UPLOADS, name, generation=info.generation) as stream:
        for _ in handlers.bounded_rows(ingest.read_csv_rows(handlers.bounded_lines(ingest.open_text(stream)))):  # type: ignore[arg-type]
            count += 1
    return count


def _hash_pass(blobs: Any, name: str) -> str:
    from threatflow.flows import handlers

    return handlers.source_of(blobs, UPLOADS, name, generation=blobs.stat(UPLOADS, name).generation)


def _through_worker(runtime: Any, handler: Any, name: str, *, rows: int, pg_pid: int, subscriber: Any, subscription: str) -> dict[str, Any]:
    """Queue a job on `name` as the uploads route does, then deliver its message, and each continuation it
    publishes, to the worker's handler until the job is finished. Wall time and CPU from the first delivery."""
    from threatflow.flows.ingest_jobs import INGEST_JOBS
    from threatflow.platform.events import Message

    job_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    runtime.documents.set(
        INGEST_JOBS,
        job_id,
        {"job_id": job_id, "state": "queued", "bucket": UPLOADS, "object": name, "rows_done": 0, "stored": 0}
        | {"duplicates": 0, "invalid": 0, "created_at": now, "updated_at": now},
    )
    data: dict[str, Any] = {"schema_version": 1, "job_id": job_id}
    cpu_before, pg_before = resource.getrusage(resource.RUSAGE_SELF), tree_cpu_seconds(pg_pid)
    began = time.perf_counter()
    deliveries = 0
    while True:
        message = Message(uuid.uuid4().hex, {"job_id": job_id}, data, datetime.now(UTC), 1)
        job = handler(message)
        deliveries += 1
        if job.get("state") in ("succeeded", "failed"):
            break
        data = _next_continuation(subscriber, subscription, job_id)
    took = time.perf_counter() - began
    cpu_after, pg_after = resource.getrusage(resource.RUSAGE_SELF), tree_cpu_seconds(pg_pid)
    if job["state"] != "succeeded" or job["rows_done"] != rows:
        raise SystemExit(f"the job did not finish: {job}")
    return {
        "seconds": took,
        "deliveries": deliveries,
        "worker_cpu": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
        "postgres_cpu": pg_after - pg_before,
        **{key: int(job.get(key) or 0) for key in ("stored", "duplicates", "invalid")},
    }


def _next_continuation(subscriber: Any, subscription: str, job_id: str) -> dict[str, Any]:
    for _ in range(20):
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        for received in response.received_messages:
            data: dict[str, Any] = json.loads(received.message.data)
            if received.message.attributes.get("job_id") == job_id and "continuation" in data:
                return data
    raise SystemExit(f"no continuation of job {job_id} reached the topic")


if __name__ == "__main__":
    main()
