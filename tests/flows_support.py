"""Shared helpers for the flow tests: a small model trained once on dev data, published to the emulator bucket."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))

MODELS_BUCKET = "threatflow-models"
_TRAINED: dict[str, Any] = {}


def trained_model(*, rows: int = 2000, quick: bool = False) -> Any:
    """A small model trained once per process on dev flows, through ml's programmatic training.

    Tiny on purpose (2 folds, 15 + 10 trees, one thread): the tests need a real, published
    model to score with, not a good one, and training must stay fast on a busy machine.
    """
    key = f"{rows}:{quick}"
    if key not in _TRAINED:
        from helpers import require_shared_data
        from threadpoolctl import threadpool_limits

        from threatflow.flows import training

        require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz")
        import flowgen

        data = flowgen.dev_rows()
        sample = data[:: max(1, len(data) // rows)]
        config = (
            training.TrainConfig.quick()
            if quick
            else training.TrainConfig(cv_folds=2, max_iter=15, category_max_iter=10, compare_random_forest=False, n_jobs=1)
        )
        with threadpool_limits(1):  # OpenMP threads on a shared, loaded machine slow training down by an order of magnitude
            _TRAINED[key] = training.train_from_flows(sample, config=config, version=f"test-flows-{'quick' if quick else 'tiny'}")
    return _TRAINED[key]


def publish(blobs: Any, result: Any, *, bucket: str = MODELS_BUCKET) -> None:
    """Publish and promote a trained model through ml's registry (what `threatflow models train --promote` does)."""
    from threatflow.flows import registry

    if not blobs.exists(bucket, f"flows/models/{result.version}/metadata.json"):  # the emulator lives for the whole run
        registry.publish(result, blobs=blobs, bucket=bucket)
    registry.promote(blobs=blobs, bucket=bucket, version=result.version, now=lambda: datetime.now(UTC))


def json_flows(count: int, *, seed: int = 11) -> list[dict[str, Any]]:
    """Generated flows as a JSON client sends them: partitioned names, numbers as numbers, addresses and stime."""
    import flowgen

    out = []
    for flow in flowgen.generate(count, seed=seed):
        item: dict[str, Any] = {}
        for key, value in flow.items():
            if key in ("proto", "service", "state", "srcip", "dstip", "attack_cat"):
                item[key] = value
            elif key == "id":
                continue
            else:
                item[key] = float(value) if "." in value or "e" in value.lower() else int(value)
        out.append(item)
    return out
