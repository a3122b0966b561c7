"""The model registry in the models bucket: publish a version, list versions, promote one.

Layout: `flows/models/<version>/{model.npz, metadata.json, metrics.json, model_card.md}` and the
pointer `flows/serving.json` = {"version", "sha256", "metadata_sha256", "promoted_at"} (the hashes of the
model.npz and metadata.json promotion verified). Publishing writes the
artifact first and metadata.json last, so a listed version is complete; promoting re-reads and
verifies the artifact before moving the pointer, so a broken version is never served.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.flows.model import (
    ARTIFACT_NAME,
    MODELS_PREFIX,
    SERVING_POINTER,
    ArtifactError,
    ServingModel,
    load_artifact,
    model_prefix,
    parse_json_object,
    read_serving_pointer,
    sha256_hex,
    valid_version,
)
from threatflow.platform.errors import ConflictError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from threatflow.flows.training import TrainResult
    from threatflow.platform.ports import BlobStore


@dataclass(frozen=True)
class ModelVersion:
    version: str
    sha256: str
    created_at: str
    serving: bool
    heldout: dict[str, Any] | None
    validation: dict[str, Any] | None
    problem: str | None = None  # why the version's metadata cannot be read (it cannot be promoted either)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "serving": self.serving,
            "heldout": self.heldout,
            "validation": self.validation,
            "problem": self.problem,
        }


def _check_version(version: str) -> str:
    if not valid_version(version):
        raise ValidationError(f"invalid model version {version!r}", field="version")
    return version


def publish(result: TrainResult, *, blobs: BlobStore, bucket: str) -> str:
    """Upload a trained model under its version; returns the version. Refuses to overwrite one."""
    version = _check_version(result.version)
    prefix = model_prefix(version)
    if blobs.exists(bucket, prefix + "metadata.json"):
        raise ConflictError(f"model version {version!r} is already published")
    blobs.put(bucket, prefix + ARTIFACT_NAME, result.artifact)
    blobs.put(
        bucket, prefix + "metrics.json", json.dumps(result.metrics, indent=2, sort_keys=True).encode(), content_type="application/json"
    )
    blobs.put(bucket, prefix + "model_card.md", result.model_card.encode(), content_type="text/markdown")
    blobs.put(
        bucket, prefix + "metadata.json", json.dumps(result.metadata, indent=2, sort_keys=True).encode(), content_type="application/json"
    )
    return version


def read_metadata(*, blobs: BlobStore, bucket: str, version: str) -> dict[str, Any]:
    return _metadata_and_sha256(blobs=blobs, bucket=bucket, version=version)[0]


def _metadata_and_sha256(*, blobs: BlobStore, bucket: str, version: str) -> tuple[dict[str, Any], str]:
    try:
        raw = blobs.get(bucket, model_prefix(_check_version(version)) + "metadata.json")
    except NotFoundError:
        raise NotFoundError(f"no published model version {version!r} in bucket {bucket!r}") from None
    data = parse_json_object(raw)
    if data is None:  # truncated, not UTF-8, not an object: a version nothing can verify
        raise ConflictError(f"model version {version!r} has a malformed metadata.json (not a JSON object)")
    return data, sha256_hex(raw)


def list_versions(*, blobs: BlobStore, bucket: str, limit: int = 100) -> list[ModelVersion]:
    pointer = read_serving_pointer(blobs=blobs, bucket=bucket) or {}
    names = blobs.list(bucket, prefix=MODELS_PREFIX, limit=10_000)
    versions = sorted({n[len(MODELS_PREFIX) :].split("/", 1)[0] for n in names if n.endswith("/metadata.json")}, reverse=True)
    out = []
    for version in versions[:limit]:
        try:
            meta = read_metadata(blobs=blobs, bucket=bucket, version=version)
        except (ConflictError, NotFoundError, ValidationError) as exc:  # one broken folder must not hide the others
            out.append(ModelVersion(version, "", "", version == pointer.get("version"), None, None, problem=exc.message))
            continue
        metrics = meta.get("metrics") or {}
        out.append(
            ModelVersion(
                version=version,
                sha256=str(meta.get("sha256", "")),
                created_at=str(meta.get("created_at", "")),
                serving=version == pointer.get("version"),
                heldout=(metrics.get("heldout") or {}).get("binary"),
                validation=(metrics.get("validation") or {}).get("binary"),
            )
        )
    return out


def verify_version(*, blobs: BlobStore, bucket: str, version: str) -> tuple[ServingModel, str]:
    """Download and fully load a version (hash, arrays, bounds): what promotion requires. Returns the
    model and the sha256 of the metadata.json verified (the pointer pins it: model.npz's hash does not
    cover the threshold, vocabulary, labels or adjustments)."""
    meta, metadata_sha256 = _metadata_and_sha256(blobs=blobs, bucket=bucket, version=version)
    data = blobs.get(bucket, model_prefix(version) + ARTIFACT_NAME)
    try:
        return load_artifact(data, meta, expected_sha256=str(meta.get("sha256", "")), expected_version=version), metadata_sha256
    except (ArtifactError, KeyError, ValueError) as exc:
        raise ConflictError(f"model version {version!r} fails verification: {exc}") from None


def promote(*, blobs: BlobStore, bucket: str, version: str, now: Callable[[], datetime]) -> dict[str, Any]:
    """Make a verified version the serving model (the detect function picks it up on its next refresh)."""
    model, metadata_sha256 = verify_version(blobs=blobs, bucket=bucket, version=version)
    # The folder verified, by name (verify_version checked its metadata names it too), and the files verified.
    pointer = {
        "version": version,
        "sha256": model.sha256,
        "metadata_sha256": metadata_sha256,
        "promoted_at": now().isoformat(timespec="seconds"),
    }
    blobs.put(bucket, SERVING_POINTER, json.dumps(pointer).encode(), content_type="application/json")
    return pointer


def score(figures: Mapping[str, Any]) -> tuple[float, float, float]:
    """What 'better' compares, from one model's figures on some data ({"binary": ..., "category": ...},
    as training.evaluate returns them and metrics.json's validation holds them): ROC-AUC, detection
    within the FPR budget, macro-F1."""
    binary, category = figures["binary"], figures["category"]
    return (float(binary["roc_auc"]), float(binary["detection_rate"]), float(category["macro_f1"]))


def validation_score(metadata: dict[str, Any]) -> tuple[float, float, float] | None:
    """A model's own validation (out-of-fold) figures: measured on its own training data, so two models'
    are not comparable; the retrain job compares models with `better` on one evaluation set instead."""
    validation = (metadata.get("metrics") or {}).get("validation")
    return score(validation) if validation else None


def better(new: tuple[float, float, float] | None, old: tuple[float, float, float] | None) -> bool:
    """The promotion rule, on figures measured on the same data.

    Better = higher ROC-AUC (to 4 decimals) and detection rate not lower, or equal AUC with a higher
    macro-F1 and detection not lower. Nothing to beat (no serving model): any candidate wins.
    A NaN (an evaluation set with one class) never wins."""
    if new is None:
        return False
    if old is None:
        return True
    if round(new[0], 4) > round(old[0], 4) and new[1] >= old[1]:
        return True
    return round(new[0], 4) == round(old[0], 4) and new[1] >= old[1] and new[2] > old[2]
