"""Batch progress reads: the run documents one GET /api/v1/enrichment/batches/{id} poll reads, the old way (one
Firestore get per run, in sequence) against the new one (runs.get_runs: batched gets, client.get_all, 500 ids a
call), on the same documents over the same Firestore emulator in the same run.

Setup: its own Firestore emulator; N run documents as POST /batch records them (runs.create_runs). Each way reads
all N ids, alternating, ROUNDS times; printed: the median and best time of each, and the ratio old / new.

Run: .venv/bin/python tests/perf/bench_batch_progress.py            (1,000 runs, a full batch; 7 rounds)
     .venv/bin/python tests/perf/bench_batch_progress.py --runs 200 --rounds 11
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from harness import Stack

PROJECT = "threatflow-bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from threatflow.devstack import services

    with Stack("tf-bench-batch-progress-") as stack:
        stack.start(services.start_firestore_emulator(stack.state, project=PROJECT))
        os.environ.update(stack.env(uses="firestore", GOOGLE_CLOUD_PROJECT=PROJECT, THREATFLOW_ENV="local"))

        from threatflow.adapters.firestore import FirestoreDocuments
        from threatflow.enrichment import runs

        docs = FirestoreDocuments(PROJECT)
        for _ in range(30):  # a cold emulator JVM can take longer than one call's budget to answer its first writes
            try:
                docs.set("bench_warm_up", "probe", {"at": time.time()})
                break
            except Exception:
                time.sleep(1)
        batch_id = uuid.uuid4().hex
        run_ids = [uuid.uuid4().hex for _ in range(args.runs)]
        new_runs = [
            {"run_id": r, "ioc_id": i, "type": "ipv4", "value": f"198.51.100.{i % 250}", "batch_id": batch_id, "created_at": time.time()}
            for i, r in enumerate(run_ids)
        ]
        runs.create_runs(docs, new_runs)

        def one_by_one() -> int:  # what GET /batches did
            return sum(runs.get_run(docs, r) is not None for r in run_ids)

        def batched() -> int:  # what it does now
            return sum(doc is not None for doc in runs.get_runs(docs, run_ids).values())

        assert one_by_one() == batched() == args.runs  # also a warm-up of both paths
        old: list[float] = []
        new: list[float] = []
        for _ in range(args.rounds):
            for way, samples in ((one_by_one, old), (batched, new)):
                started = time.perf_counter()
                way()
                samples.append(time.perf_counter() - started)

        old_median, new_median = statistics.median(old), statistics.median(new)
        print(f"run documents read per poll: {args.runs}, rounds: {args.rounds}, Firestore emulator")
        print(f"one get per run (old)      median {old_median * 1000:9.1f} ms   best {min(old) * 1000:9.1f} ms")
        print(f"batched get_all (new)      median {new_median * 1000:9.1f} ms   best {min(new) * 1000:9.1f} ms")
        print(f"ratio old / new            median {old_median / new_median:9.1f}x   best {min(old) / min(new):9.1f}x")


if __name__ == "__main__":
    main()
