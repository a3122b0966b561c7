"""The retrain-flows job: train on stored labelled flow events, publish a candidate, promote it only if it wins.

"Wins" is `registry.beats`: the candidate's validation (out-of-fold) metrics against the serving
model's. The candidate is always published, so an operator can inspect and promote it by hand.
The schedule ships disabled (params.enabled: false in the manifest); see the README.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.flows import registry
from threatflow.flows.model import read_serving_pointer

if TYPE_CHECKING:
    from threatflow.platform.ports import BlobStore

DEFAULT_MIN_ROWS = 5_000
DEFAULT_MAX_ROWS = 200_000


def retrain(
    *,
    labelled_flows: Callable[[int], Iterable[Mapping[str, Any]]],
    blobs: BlobStore,
    bucket: str,
    now: Callable[[], datetime],
    min_rows: int = DEFAULT_MIN_ROWS,
    max_rows: int = DEFAULT_MAX_ROWS,
    config: Any = None,
) -> dict[str, Any]:
    """labelled_flows(limit) yields flows (partitioned names plus label and attack_cat), newest first."""
    from threatflow.flows import training

    dataset = training.dataset_from_flows(labelled_flows(max_rows), source="flow_events")
    if dataset.rows < min_rows:
        return {"status": "skipped", "reason": f"{dataset.rows} labelled flows stored; at least {min_rows} needed", "rows": dataset.rows}
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    result = training.train(dataset, config=config, version=f"{stamp}-retrain-{dataset.sha256[:8]}")
    version = registry.publish(result, blobs=blobs, bucket=bucket)
    pointer = read_serving_pointer(blobs=blobs, bucket=bucket)
    serving = registry.read_metadata(blobs=blobs, bucket=bucket, version=str(pointer["version"])) if pointer else None
    summary: dict[str, Any] = {
        "candidate": version,
        "rows": dataset.rows,
        "candidate_validation": registry.validation_score(result.metadata),
        "serving": pointer["version"] if pointer else None,
        "serving_validation": registry.validation_score(serving) if serving else None,
    }
    if registry.beats(result.metadata, serving):
        registry.promote(blobs=blobs, bucket=bucket, version=version, now=now)
        summary["status"] = "promoted"
    else:
        summary["status"] = "kept serving model"
    return summary
