"""Shared helpers for the flow tests: a small model trained once on dev data, published to the emulator bucket."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))

MODELS_BUCKET = "threatflow-models"
_TRAINED: dict[str, Any] = {}


def trained_model() -> Any:
    """A quick model on 6,000 dev flows (stratified by position; ~10 s), once per test run."""
    if "result" not in _TRAINED:
        from helpers import require_shared_data

        from threatflow.flows import training

        require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz")
        import flowgen

        rows = flowgen.dev_rows()
        sample = rows[:: max(1, len(rows) // 6000)]
        _TRAINED["result"] = training.train_from_flows(sample, version="test-flows-v1")
    return _TRAINED["result"]


def publish(blobs: Any, result: Any, *, bucket: str = MODELS_BUCKET) -> None:
    """Publish and promote a trained model in the registry layout (flows/models/<v>/..., flows/serving.json)."""
    prefix = f"flows/models/{result.version}/"
    blobs.put(bucket, prefix + "model.npz", result.artifact)
    blobs.put(bucket, prefix + "metadata.json", json.dumps(result.metadata).encode(), content_type="application/json")
    pointer = {"version": result.version, "sha256": result.metadata["sha256"], "promoted_at": datetime.now(UTC).isoformat()}
    blobs.put(bucket, "flows/serving.json", json.dumps(pointer).encode(), content_type="application/json")


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
