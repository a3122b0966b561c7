"""The retrain-flows job: train on stored labelled flow events, publish a candidate, promote it only if it wins.

"Wins" is `registry.better` on figures of both models measured on the same evaluation set, never
on each model's own validation figures (those come from different data: a candidate trained on
label-flipped or duplicated stored flows scores well on its own poisoned folds). The evaluation set is

- the trusted set, when an admin names one (`evaluation_object`, a UNSW CSV with label and attack_cat
  in the models bucket): the candidate trains on every stored flow except exact copies of its rows;
- otherwise a deterministic part of the stored flows (EVALUATION_PERCENT, chosen by a hash of each
  flow's model inputs, so one flow, and every duplicate of its feature vector whatever its label,
  falls on one side only); the candidate trains on the rest.

This still trusts whoever can store labelled flows (analysts): poisoned rows can sit in the
evaluation part too. The trusted set, or a human `threatflow models promote`, is the defence (README).
The candidate is always published, with both models' figures in its metadata (`promotion_check`),
so an operator can inspect and promote it by hand. The schedule ships disabled (params.enabled: false).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import tempfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.flows import registry
from threatflow.flows.model import load_version, pinned, read_serving_pointer
from threatflow.platform.errors import DependencyError, ValidationError

if TYPE_CHECKING:
    from threatflow.flows.model import ServingModel
    from threatflow.platform.ports import BlobStore

DEFAULT_MIN_ROWS = 5_000
DEFAULT_MAX_ROWS = 200_000
EVALUATION_PERCENT = 20
# Stored, and once expanded: a set this size (345,793 rows) peaked the job at 0.87 GB (bench_retrain_memory.py).
MAX_EVALUATION_BYTES = 64 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
RULE = "higher ROC-AUC (4 decimals) with detection not lower, or equal ROC-AUC with detection not lower and a higher macro-F1"


def _validated(flow: Mapping[str, Any]) -> dict[str, Any] | None:
    """The flow as the training loader reads it (canonical names: a raw row's `Label` is `label`), or None
    for a flow it would skip."""
    from threatflow.flows.features import Blanks, FieldError, validate_flow

    errors: list[FieldError] = []
    return validate_flow(0, flow, errors, blanks=Blanks.RAW_LAYOUT)


def _inputs_of(clean: Mapping[str, Any]) -> tuple[tuple[str, ...], array[float]]:
    from threatflow.flows.features import CATEGORICAL, NUMERIC_COLUMNS

    return tuple(str(clean[c]) for c in CATEGORICAL), array("f", [clean[c] for c in NUMERIC_COLUMNS])


def _model_inputs(flow: Mapping[str, Any]) -> tuple[tuple[str, ...], array[float]] | None:
    """A flow's categoricals and numbers at float32 (the precision events are stored in and trained on),
    or None for a flow the training loader would skip anyway."""
    clean = _validated(flow)
    return None if clean is None else _inputs_of(clean)


def _key(categoricals: tuple[str, ...], numbers: array[float]) -> bytes:
    return "\x1f".join(categoricals).encode() + b"\x1e" + numbers.tobytes()


def feature_key(flow: Mapping[str, Any]) -> bytes | None:
    """A flow's model inputs as bytes (numbers at float32, the precision events are stored in), or None
    for a flow the training loader would skip anyway. Equal for every copy of a feature vector."""
    inputs = _model_inputs(flow)
    return None if inputs is None else _key(*inputs)


class HeldFlows:
    """Labelled flows as a retrain holds them: each flow's model inputs (categoricals, numbers as float32
    in one array), label and attack_cat. Iterating gives partitioned-layout dicts that the training
    loader reads as it read the flows appended (a blank number, NaN here, comes back as None).

    A dict per flow (45 keys, 39 float objects) is ~3.3 KB: the default 200,000 stored flows took ~650 MB
    of the maintenance function's 1 GiB before training began (tests/perf/bench_retrain_memory.py).
    A flow the training loader would skip (no valid model inputs) is counted in `invalid`, not kept."""

    def __init__(self) -> None:
        self._numbers = array("f")
        self._rows: list[tuple[tuple[str, ...], Any, Any]] = []  # (categoricals, label, attack_cat)
        self.invalid = 0

    @classmethod
    def of(cls, flows: Iterable[Mapping[str, Any]]) -> HeldFlows:
        held = cls()
        for flow in flows:
            held.append(flow)
        return held

    def append(self, flow: Mapping[str, Any]) -> None:
        clean = _validated(flow)
        if clean is None:
            self.invalid += 1
            return
        # The targets under their canonical names, as the loader reads them: flow.get("label") was None for
        # every raw-layout row (its column is `Label`), so a raw trusted evaluation set had no labelled row.
        self._add(*_inputs_of(clean), clean.get("label"), clean.get("attack_cat"))

    def _add(self, categoricals: tuple[str, ...], numbers: array[float], label: Any, attack_cat: Any) -> None:
        self._numbers.extend(numbers)
        self._rows.append((categoricals, label, attack_cat))

    def __len__(self) -> int:
        return len(self._rows)

    def _key_of(self, index: int) -> bytes:
        """A flow's feature_key, from what is held (not kept beside it: it doubled the memory per flow)."""
        return _key(self._rows[index][0], self._numbers_of(index))

    def keys(self) -> set[bytes]:
        return {self._key_of(index) for index in range(len(self._rows))}

    def _numbers_of(self, index: int) -> array[float]:
        from threatflow.flows.features import NUMERIC_COLUMNS

        width = len(NUMERIC_COLUMNS)
        return self._numbers[index * width : (index + 1) * width]

    def parts(self, choose: Callable[[bytes], bool]) -> tuple[HeldFlows, HeldFlows]:
        """(flows whose key `choose` refuses, flows it picks), in order."""
        out = (HeldFlows(), HeldFlows())
        for index, (categoricals, label, attack_cat) in enumerate(self._rows):
            numbers = self._numbers_of(index)
            out[1 if choose(_key(categoricals, numbers)) else 0]._add(categoricals, numbers, label, attack_cat)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from threatflow.flows.features import CATEGORICAL, NUMERIC_COLUMNS

        for index, (categoricals, label, attack_cat) in enumerate(self._rows):
            flow: dict[str, Any] = dict(zip(CATEGORICAL, categoricals, strict=True))
            flow.update(zip(NUMERIC_COLUMNS, (None if math.isnan(v) else v for v in self._numbers_of(index)), strict=True))
            flow["label"] = label
            flow["attack_cat"] = attack_cat
            yield flow


def in_evaluation_part(key: bytes | None, *, percent: int = EVALUATION_PERCENT) -> bool:
    if key is None:
        return False
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 100 < percent


def split_stored(flows: Iterable[Mapping[str, Any]], *, percent: int = EVALUATION_PERCENT) -> tuple[HeldFlows, HeldFlows]:
    """(training part, evaluation part) of the stored flows, by a hash of each flow's model inputs."""
    return HeldFlows.of(flows).parts(lambda key: in_evaluation_part(key, percent=percent))


def read_evaluation_object(*, blobs: BlobStore, bucket: str, name: str) -> HeldFlows:
    """The trusted evaluation set: a UNSW-NB15 CSV (raw or partitioned, gzip allowed) with label and attack_cat.

    At most MAX_EVALUATION_BYTES stored and, for a gzip, once expanded: the stored size alone let a few KB
    of gzip expand to anything in memory (gzip.decompress), past the function's. Compressed once at most."""
    from threatflow.flows import training

    field = "params.evaluation_object"
    limit = MAX_EVALUATION_BYTES
    size = blobs.stat(bucket, name).size  # NotFoundError names it: a configured set that is missing fails the run
    if size > limit:
        raise ValidationError(f"evaluation set {name!r} is {size} bytes; at most {limit}", field=field)
    data = blobs.get(bucket, name)
    if data[:2] == GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(limit + 1)  # never more than the limit in memory
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError: retrying cannot fix it
            raise ValidationError(f"evaluation set {name!r} is not a readable gzip: {exc}", field=field) from None
        if len(data) > limit:
            raise ValidationError(f"evaluation set {name!r} expands past {limit} bytes", field=field)
        if data[:2] == GZIP_MAGIC:  # the reader below would expand it again, unbounded
            raise ValidationError(f"evaluation set {name!r} is compressed more than once", field=field)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "evaluation.csv"
        path.write_bytes(data)
        del data
        return HeldFlows.of(training.iter_rows([path], layout=None, features_csv=None, digest=hashlib.sha256()))


def training_config(*, n_jobs: int = 1) -> Any:
    """The job's training settings: the served ones, fitted one at a time and without the seed RandomForest's
    comparison (a report figure for ml/train.py: 100 full-depth trees on the stored flows). Each parallel fit
    is a process with its own copy of the data: at the default max_rows (200,000 stored flows) the job peaked
    at 1.02–1.05 GB with two fits and 0.52–0.60 GB with one, for 140–155 s against 173–187 s on two cores; the
    maintenance function has 1 GiB (tests/perf/bench_retrain_memory.py)."""
    import dataclasses

    from threatflow.flows.training import TrainConfig

    return dataclasses.replace(TrainConfig(), n_jobs=n_jobs, compare_random_forest=False)


def evaluate_on(model: ServingModel, flows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A model's figures on labelled flows, coded with the model's own vocabulary (the /detect path)."""
    from threatflow.flows import training

    data = training.dataset_from_flows(flows, source="evaluation", vocabulary=model.vocabulary)
    figures = training.evaluate(model, data.X, data.label.astype("int64"), data.category.astype("int64"))
    return {**figures, "rows": data.rows, "attacks": int(data.label.sum())}


def retrain(
    *,
    labelled_flows: Callable[[int], Iterable[Mapping[str, Any]]],
    blobs: BlobStore,
    bucket: str,
    now: Callable[[], datetime],
    min_rows: int = DEFAULT_MIN_ROWS,
    max_rows: int = DEFAULT_MAX_ROWS,
    config: Any = None,
    evaluation_object: str | None = None,
    evaluation_percent: int = EVALUATION_PERCENT,
) -> dict[str, Any]:
    """labelled_flows(limit) yields flows (partitioned names plus label and attack_cat), newest first.
    `evaluation_object` names the trusted evaluation set in `bucket`; without it, a part of the stored flows."""
    from threatflow.flows import training

    config = config or training_config()
    trusted = read_evaluation_object(blobs=blobs, bucket=bucket, name=evaluation_object) if evaluation_object else None
    if trusted is not None:  # checked before hours of training: a set it cannot compare on is a configuration error
        labels = training.dataset_from_flows(trusted, source=str(evaluation_object)).label
        if labels.min() == labels.max():
            raise ValidationError(
                f"evaluation set {evaluation_object!r} needs both normal and attack flows", field="params.evaluation_object"
            )
    stored = HeldFlows.of(labelled_flows(max_rows))  # streamed: never a dict per stored flow
    rows = len(stored) + stored.invalid
    if rows < min_rows:
        return {"status": "skipped", "reason": f"{rows} labelled flows stored; at least {min_rows} needed", "rows": rows}
    if trusted is not None:
        trusted_keys = trusted.keys()
        train_flows, left_out = stored.parts(trusted_keys.__contains__)
        evaluation_flows = trusted
        check: dict[str, Any] = {
            "evaluated_on": f"trusted evaluation set gs://{bucket}/{evaluation_object}",
            "stored_rows_left_out": len(left_out),  # exact copies of trusted rows
        }
    else:
        train_flows, evaluation_flows = stored.parts(lambda key: in_evaluation_part(key, percent=evaluation_percent))
        check = {"evaluated_on": f"stored flow events: the {evaluation_percent} % whose model inputs hash there, not trained on"}
    check["stored_rows_invalid"] = stored.invalid  # no valid model inputs: neither trained nor evaluated on
    del stored  # held again, split, in the two parts
    dataset = training.dataset_from_flows(train_flows, source="flow_events")
    del train_flows
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    result = training.train(dataset, config=config, version=f"{stamp}-retrain-{dataset.sha256[:8]}")

    try:
        candidate: dict[str, Any] | None = evaluate_on(result.model, evaluation_flows)
    except ValueError:  # no usable rows fell in the evaluation part
        candidate = None
    pointer = read_serving_pointer(blobs=blobs, bucket=bucket)
    serving: dict[str, Any] | None = None
    reason = None
    if pointer is not None:
        try:
            model = load_version(blobs=blobs, bucket=bucket, **pinned(pointer))
            serving = evaluate_on(model, evaluation_flows)
        except (DependencyError, ValueError) as exc:  # e.g. a serving model of another feature set: a human decides
            reason = f"the serving model cannot be scored on the evaluation set: {exc}"
    if pointer is None:
        promote, reason = True, "no serving model"
    elif candidate is None or serving is None or candidate["attacks"] in (0, candidate["rows"]):  # ROC-AUC needs both classes
        promote, reason = False, reason or "the evaluation set does not hold both normal and attack flows"
    else:
        new, old = registry.score(candidate), registry.score(serving)
        promote = not any(math.isnan(v) for v in new) and registry.better(new, old)
        reason = "better on the evaluation set" if promote else "not better on the evaluation set"
    check.update(
        {
            "evaluation_rows": candidate["rows"] if candidate else 0,
            "training_rows": dataset.rows,
            "rule": RULE,
            "candidate": candidate,
            "serving_version": pointer["version"] if pointer else None,
            "serving": serving,
            "promote": promote,
            "reason": reason,
        }
    )
    result.metadata["promotion_check"] = check  # published with the candidate: why it was (not) promoted
    version = registry.publish(result, blobs=blobs, bucket=bucket)
    summary: dict[str, Any] = {
        "candidate": version,
        "rows": rows,
        "training_rows": dataset.rows,
        "evaluation_rows": check["evaluation_rows"],
        "evaluated_on": check["evaluated_on"],
        "candidate_evaluation": _brief(candidate) if candidate else None,
        "serving": pointer["version"] if pointer else None,
        "serving_evaluation": _brief(serving) if serving else None,
        "reason": reason,
    }
    if promote and (latest := read_serving_pointer(blobs=blobs, bucket=bucket)) != pointer:
        # Compared with the model serving when the pointer was read; one promoted since (by hand, or by
        # another run) was never compared, so it stays. Re-read, not a conditional write: a window of one
        # read is left (the storage emulator has no generation preconditions to test one against).
        promote = False
        summary["reason"] = (
            f"the serving model changed while the candidate was checked (now {latest['version'] if latest else None}); run again to compare"
        )
    if promote:
        registry.promote(blobs=blobs, bucket=bucket, version=version, now=now)
        summary["status"] = "promoted"
    else:
        summary["status"] = "kept serving model"
    return summary


def _brief(figures: Mapping[str, Any]) -> dict[str, float]:
    """The compared figures, for the run record."""
    binary = figures["binary"]
    return {
        "roc_auc": binary["roc_auc"],
        "detection_rate": binary["detection_rate"],
        "fpr": binary["fpr"],
        "macro_f1": figures["category"]["macro_f1"],
    }
