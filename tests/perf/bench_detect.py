"""Flow detection: single-flow latency over HTTP, batch throughput, model load time, artifact size.

Starts its own PostgreSQL, Redis and Cloud Storage emulator, publishes and promotes a model
(from --model-dir, the output of `ml/train.py`, or trained here on the dev data), serves the
functions with the local gateway and calls /api/v1/detect like a client. In-run baselines:
scikit-learn's predict_proba on one flow (its per-call overhead) against the numpy tree walker
the service uses for small batches, and the whole service call without HTTP. For batches, each
stage of the route in process (decode, validation, matrix, scoring, results, encoding), the
columnar validation against the per-field checker it falls back to (the path before the fast one),
and row-split scoring threads against scikit-learn's OpenMP threads per tree; the HTTP figure is
printed with its ratio to the same route in process.
Targets: single-flow p50 over HTTP < 5 ms; /detect/batch >= 20,000 flows/s.
Run: .venv/bin/python tests/perf/bench_detect.py [--model-dir DIR] [--singles N] [--batches N] [--batch-size N]
(iterate with --singles 200 --batches 3; the machine is shared, so compare ratios, not absolutes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path

from harness import Stack, login, migrated_engine, percentile

BUCKET = "threatflow-models"


def load_or_train(model_dir: str | None) -> object:
    from threatflow.flows import training

    if model_dir:
        directory = Path(model_dir)
        metadata = json.loads((directory / "metadata.json").read_text())
        artifact = (directory / "model.npz").read_bytes()
        from threatflow.flows.model import load_artifact

        model = load_artifact(artifact, metadata, expected_sha256=metadata["sha256"])
        return training.TrainResult(
            version=metadata["version"],
            artifact=artifact,
            metadata=metadata,
            metrics=metadata.get("metrics", {}),
            model_card=(directory / "model_card.md").read_text(),
            model=model,
            seconds=0.0,
        )
    from helpers import require_shared_data

    print("training on the dev data (pass --model-dir to reuse ml/train.py output)…", flush=True)
    dataset = training.read_dataset([require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz")])
    return training.train(dataset, config=training.TrainConfig(compare_random_forest=False))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir")
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    from ml_helpers import dev_rows, flow_without_targets

    from threatflow.devstack import services
    from threatflow.flows import model as M
    from threatflow.flows import registry
    from threatflow.flows.features import Blanks, matrix_from_clean, validate_flows

    result = load_or_train(args.model_dir)
    rows = list(dev_rows())
    flows = [flow_without_targets(r) for r in rows]
    print(f"model {result.version}: artifact {len(result.artifact) / 1024:.0f} KiB (npz)")

    # -- in-process baselines ---------------------------------------------------------
    model = result.model
    model.warm()
    clean, _ = validate_flows(flows[:1], blanks=Blanks.REFUSED)
    x1 = matrix_from_clean(clean, vocabulary=model.vocabulary)
    sk = _sklearn_twin(model)

    def timed(fn, n: int) -> float:
        fn()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return percentile(samples, 0.5) * 1000

    sk_ms = timed(lambda: sk(x1), 200) if sk else float("nan")
    walker_ms = timed(lambda: (model.binary.raw_predict_numpy(x1), model.category.raw_predict_numpy(x1)), 200)
    service_ms = timed(lambda: model.predict(flows[:1]), 200)
    print(f"one flow, in process: scikit-learn predict_proba (both heads) p50 {sk_ms:.2f} ms")
    print(f"                      numpy tree walker (both heads)         p50 {walker_ms:.2f} ms   ({sk_ms / walker_ms:.1f}x faster)")
    print(f"                      model.predict (validate + score)       p50 {service_ms:.2f} ms")

    with Stack("tf-bench-detect-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        stack.start(services.start_storage_emulator(stack.state, buckets=[BUCKET]))
        env = stack.env(uses="postgres,redis,storage", GOOGLE_CLOUD_PROJECT="threatflow-local")
        migrated_engine(env).dispose()
        from threatflow.adapters.storage import GcsBlobs

        blobs = GcsBlobs("threatflow-local")
        registry.publish(result, blobs=blobs, bucket=BUCKET)
        from datetime import UTC, datetime

        registry.promote(blobs=blobs, bucket=BUCKET, version=result.version, now=lambda: datetime.now(UTC))
        loads, warms = [], []
        for _ in range(3):
            t = time.perf_counter()
            loaded = M.load_serving_model(blobs=blobs, bucket=BUCKET)
            loads.append(time.perf_counter() - t)
            t = time.perf_counter()
            loaded.warm()
            warms.append(time.perf_counter() - t)
        print(
            f"model load from the storage emulator (pointer + metadata + artifact, sha256-verified): {min(loads) * 1000:.0f} ms; "
            f"building the compiled batch scorers: {min(warms) * 1000:.0f} ms"
        )

        from helpers import create_user

        password = create_user(pg.env["DATABASE_URL"], "bench", "reader")
        port = stack.serve_gateway(env, workers=args.workers, threads=4, timeout=90)
        token = login(port, "bench", password, timeout=120)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def post(path: str, body: bytes) -> tuple[float, bytes]:
            t = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status} {payload[:300]!r}")
            return time.perf_counter() - t, payload

        health = []
        for _ in range(50):
            t = time.perf_counter()
            conn.request("GET", "/health")
            conn.getresponse().read()
            health.append(time.perf_counter() - t)
        singles = [json.dumps({"flow": f}).encode() for f in flows[: args.singles]]
        for body in singles[:20]:  # warm both workers' model
            post("/api/v1/detect", body)
        latencies = [post("/api/v1/detect", body)[0] for body in singles]
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        h50 = percentile(health, 0.5) * 1000
        print(
            f"POST /api/v1/detect (one flow, HTTP): p50 {p50:.2f} ms  p99 {p99:.2f} ms   (GET /health p50 {h50:.2f} ms: HTTP+gateway floor)"
        )

        rng = np.random.default_rng(0)
        bodies = []
        for _ in range(args.batches):
            picks = rng.integers(0, len(flows), args.batch_size)
            bodies.append(json.dumps({"flows": [flows[i] for i in picks]}).encode())
        route_seconds = _batch_stages(model, bodies[0], args.batch_size)
        conn.close()  # idle past the gateway's keep-alive while the stages ran: the next request reconnects
        for _ in range(args.workers):  # each gateway worker loads its model once
            post("/api/v1/detect/batch", bodies[0])
        gateway_pid = stack.gateway.pid if stack.gateway is not None else None
        cpu_before = _process_tree_cpu(gateway_pid)
        began = time.perf_counter()
        batch_latencies = [post("/api/v1/detect/batch", body)[0] for body in bodies]
        seconds = time.perf_counter() - began
        cpu_seconds = _process_tree_cpu(gateway_pid) - cpu_before
        total = args.batches * args.batch_size
        in_process = args.batch_size / route_seconds
        print(
            f"POST /api/v1/detect/batch ({args.batch_size:,} flows, one client): {total / seconds:,.0f} flows/s, "
            f"p50 {percentile(batch_latencies, 0.5) * 1000:.0f} ms per batch   "
            f"(in process, no HTTP: {in_process:,.0f} flows/s; HTTP keeps {total / seconds / in_process:.2f}x of it)"
        )
        if cpu_seconds > 0:
            print(
                f"  gateway CPU (user + system, all its processes): {cpu_seconds / args.batches * 1000:.0f} ms per batch = "
                f"{total / cpu_seconds:,.0f} flows per CPU-second (less sensitive to other load than wall time)"
            )


def _process_tree_cpu(pid: int | None) -> float:
    """User + system CPU seconds of pid and its descendants (the gunicorn workers), from /proc; 0 where there is none."""
    import os

    if pid is None or not os.path.exists(f"/proc/{pid}"):
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                pending += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _batch_stages(model, body: bytes, n: int) -> float:
    """The batch route's stages in process (best of 3 each), and the in-run baselines; returns the route's seconds."""
    import msgspec

    from threatflow.flows import features as F

    flows = msgspec.json.decode(body)["flows"]
    batch, errors = F.validate_batch(flows, blanks=F.Blanks.REFUSED)
    assert batch is not None and not errors
    X = batch.matrix(vocabulary=model.vocabulary)
    results = model.results(X)
    p_attack, p_cat = model.scores(X)
    stages = {
        "decode": _best(lambda: msgspec.json.decode(body)),
        "validate": _best(lambda: F.validate_batch(flows, blanks=F.Blanks.REFUSED)),
        "matrix": _best(lambda: batch.matrix(vocabulary=model.vocabulary)),
        "score": _best(lambda: model.scores(X)),
        "results": _best(lambda: model.results_from_scores(p_attack, p_cat)),
        "encode": _best(lambda: msgspec.json.encode({"results": results})),
    }
    route = sum(stages.values())
    print(f"batch of {n:,} in process: " + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.items()) + f"  = {n / route:,.0f} flows/s")

    per_field = _best(lambda: F.matrix_from_clean(F._validate_each(flows, blanks=F.Blanks.REFUSED)[0], vocabulary=model.vocabulary))
    columnar = stages["validate"] + stages["matrix"]
    print(
        f"  validation + matrix: columnar {columnar * 1000:.0f} ms vs per-field checker {per_field * 1000:.0f} ms "
        f"({per_field / columnar:.1f}x faster)"
    )
    openmp = _openmp_per_tree(model, X)
    if openmp is not None:
        split, per_tree = _alternated(lambda: model.scores(X), openmp)
        print(
            f"  scoring, median of 5 alternated: row-split threads {split * 1000:.0f} ms vs scikit-learn OpenMP threads per tree "
            f"{per_tree * 1000:.0f} ms ({per_tree / split:.1f}x faster)"
        )
    return route


def _alternated(a: Callable[[], object], b: Callable[[], object], rounds: int = 5) -> tuple[float, float]:
    """Medians of a and b run in turn (a shared machine's load drifts; blocks of one then the other would mislead)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((a, times[0]), (b, times[1])):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return percentile(times[0], 0.5), percentile(times[1], 0.5)


def _openmp_per_tree(model, X) -> Callable[[], None] | None:
    """Both heads through scikit-learn's predictors with its own OpenMP threads (the previous scorer)."""
    import numpy as np

    try:
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
    except ImportError:
        return None
    threads = _openmp_effective_n_threads()
    X64 = np.ascontiguousarray(X, dtype=np.float64)

    def run() -> None:
        for head in (model.binary, model.category):
            for iteration in head._sklearn or []:
                for predictor in iteration:
                    predictor.predict(X64, head.known_cat_bitsets, head.f_idx_map, threads)

    return run


def _sklearn_twin(model: object):
    """predict_proba of both heads through scikit-learn's public API, on estimators carrying the same trees."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        return None
    import numpy as np

    from threatflow.flows.features import FEATURE_COLUMNS, categorical_indices

    # Fit tiny estimators for the plumbing (binning, checks), then give them the served trees.
    rng = np.random.default_rng(0)
    X = rng.random((200, len(FEATURE_COLUMNS))).astype(np.float32)
    for i in categorical_indices():
        X[:, i] = rng.integers(0, 3, 200)
    mask = [i in categorical_indices() for i in range(len(FEATURE_COLUMNS))]
    binary = HistGradientBoostingClassifier(max_iter=2, categorical_features=mask).fit(X, rng.integers(0, 2, 200))
    category = HistGradientBoostingClassifier(max_iter=2, categorical_features=mask).fit(X, rng.integers(0, model.category.n_outputs, 200))
    binary._predictors = model.binary._build_sklearn_predictors()
    category._predictors = model.category._build_sklearn_predictors()
    binary._baseline_prediction = model.binary.baseline.reshape(1, -1)
    category._baseline_prediction = model.category.baseline.reshape(1, -1)

    def both(x: object) -> None:
        binary.predict_proba(x)
        category.predict_proba(x)

    return both


if __name__ == "__main__":
    main()
