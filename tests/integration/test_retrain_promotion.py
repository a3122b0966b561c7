"""retrain-flows promotes a candidate only if it beats the serving model on the same evaluation data.

It used to compare the candidate's cross-validation figures (on the stored flows, whoever stored
them) with the serving model's (on its own training data): stored flows duplicated many times give
a candidate near-perfect folds, and it was promoted. Now both models are scored on one evaluation
set: a hash-chosen part of the stored flows kept out of training, or an admin's trusted set.
On the storage emulator; the models are really trained (a quick configuration, seconds each).
"""

import csv
import io
from datetime import UTC, datetime

import pytest
from flows_support import emptied_models_bucket
from ml_helpers import sample_rows

pytestmark = pytest.mark.integration
BUCKET = "threatflow-models"


@pytest.fixture
def blobs(backend_env):
    return emptied_models_bucket(backend_env["GOOGLE_CLOUD_PROJECT"])


def _config():
    from threatflow.flows.training import TrainConfig

    return TrainConfig(cv_folds=2, max_iter=30, category_max_iter=15, compare_random_forest=False)


def _retrain(blobs, stored, *, at, **kwargs):
    from threatflow.flows import retrain

    return retrain.retrain(
        labelled_flows=lambda limit: stored[:limit],
        blobs=blobs,
        bucket=BUCKET,
        now=lambda: datetime(2030, 1, 1, at, tzinfo=UTC),
        min_rows=100,
        config=_config(),
        **kwargs,
    )


def _duplicated(rows, copies):
    """What anyone allowed to store labelled flows can do: the same few flows, many times over."""
    return [dict(row) for row in rows for _ in range(copies)]


def test_the_split_is_deterministic_and_no_feature_vector_straddles_it():
    import numpy as np

    from threatflow.flows import retrain

    rows = sample_rows(2500, seed=4)
    flipped = [{**row, "label": "0", "attack_cat": ""} for row in rows[:200] if row["label"] == "1"]
    stored = rows + _duplicated(rows[:50], 3) + flipped  # copies, and copies with the other label
    train, evaluation = retrain.split_stored(stored)
    keys_train = {retrain.feature_key(f) for f in train}
    keys_evaluation = {retrain.feature_key(f) for f in evaluation}
    assert not keys_train & keys_evaluation
    assert 0.15 < len(evaluation) / len(stored) < 0.25
    _, again_evaluation = retrain.split_stored(list(reversed(stored)))
    assert len(again_evaluation) == len(evaluation) and {retrain.feature_key(f) for f in again_evaluation} == keys_evaluation
    # an event read back from PostgreSQL (numbers as float32, text cells as floats) hashes as its CSV row
    for row in rows[:50]:
        stored_copy = {k: (v if k in ("proto", "service", "state", "attack_cat") else float(np.float32(float(v)))) for k, v in row.items()}
        assert retrain.feature_key(stored_copy) == retrain.feature_key(row)


def test_duplicated_stored_flows_no_longer_get_a_worse_model_promoted(blobs):
    from threatflow.flows import model, registry

    first = _retrain(blobs, sample_rows(2500, seed=1), at=1)
    assert first["status"] == "promoted"

    poisoned = _duplicated(sample_rows(2500, seed=2)[:150], 20)
    second = _retrain(blobs, poisoned, at=2)
    assert second["status"] == "kept serving model", second
    assert first["reason"] == "no serving model"
    assert second["reason"] == "not better on the evaluation set"
    assert model.read_serving_pointer(blobs=blobs, bucket=BUCKET)["version"] == first["candidate"]
    candidate = registry.read_metadata(blobs=blobs, bucket=BUCKET, version=second["candidate"])
    serving = registry.read_metadata(blobs=blobs, bucket=BUCKET, version=first["candidate"])
    # the old rule, on each model's own validation figures, would have promoted it: its folds share copies
    assert registry.better(registry.validation_score(candidate), registry.validation_score(serving))
    check = candidate["promotion_check"]
    assert check["serving_version"] == first["candidate"] and check["promote"] is False
    assert check["evaluated_on"].startswith("stored flow events")
    assert check["evaluation_rows"] == second["evaluation_rows"] > 0
    assert check["training_rows"] + check["evaluation_rows"] == len(poisoned)
    assert check["candidate"]["binary"]["roc_auc"] < check["serving"]["binary"]["roc_auc"]
    assert second["candidate_evaluation"]["roc_auc"] == check["candidate"]["binary"]["roc_auc"]  # and in the run record


def test_a_candidate_better_on_the_same_evaluation_part_is_promoted(blobs):
    from threatflow.flows import model

    weak = _retrain(blobs, sample_rows(2500, seed=5)[:300], at=1)
    assert weak["status"] == "promoted"
    better = _retrain(blobs, sample_rows(2500, seed=6), at=2)
    assert better["status"] == "promoted", better
    assert better["reason"] == "better on the evaluation set"
    assert model.read_serving_pointer(blobs=blobs, bucket=BUCKET)["version"] == better["candidate"]


def _csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_trusted_evaluation_set_is_used_instead_of_the_stored_flows(blobs):
    from threatflow.flows import model, registry

    first = _retrain(blobs, sample_rows(2500, seed=1), at=1)
    trusted = sample_rows(2500, seed=3)[:800]
    blobs.put(BUCKET, "flows/evaluation/trusted.csv", _csv(trusted))
    stored = _duplicated(sample_rows(2500, seed=2)[:150], 20) + _duplicated(trusted[:5], 4)
    second = _retrain(blobs, stored, at=2, evaluation_object="flows/evaluation/trusted.csv")
    assert second["status"] == "kept serving model", second
    check = registry.read_metadata(blobs=blobs, bucket=BUCKET, version=second["candidate"])["promotion_check"]
    assert check["evaluated_on"] == f"trusted evaluation set gs://{BUCKET}/flows/evaluation/trusted.csv"
    assert check["evaluation_rows"] == len(trusted)  # every trusted row, none of the stored ones
    assert check["stored_rows_left_out"] >= 20  # copies of trusted rows are not trained on
    assert check["training_rows"] == len(stored) - check["stored_rows_left_out"]
    assert check["candidate"]["binary"]["roc_auc"] < check["serving"]["binary"]["roc_auc"]
    assert model.read_serving_pointer(blobs=blobs, bucket=BUCKET)["version"] == first["candidate"]


def test_a_configured_trusted_set_that_is_missing_or_one_sided_fails_the_run(blobs, clean_tables):
    from dataclasses import replace

    from threatflow.adapters.postgres import create_engine
    from threatflow.jobs import runs
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import NotFoundError, ValidationError
    from threatflow.platform.ports import SystemClock

    settings = Settings.from_env({"DATABASE_URL": clean_tables})
    engine = create_engine(settings)
    ctx = runs.JobContext(
        engine=engine,
        documents=None,
        blobs=blobs,
        clock=SystemClock(),
        settings=settings,
        run_id="t",
        params={"evaluation_object": "flows/evaluation/absent.csv"},
    )
    try:
        with pytest.raises(NotFoundError):  # never a silent fall-back to the stored flows
            runs.retrain_flows(ctx)
        with pytest.raises(ValidationError):
            runs.retrain_flows(replace(ctx, params={"evaluation_object": "../other-bucket/x.csv"}))
        normal_only = [row for row in sample_rows(2500, seed=3) if row["label"] == "0"][:50]
        blobs.put(settings.bucket_models, "flows/evaluation/normal.csv", _csv(normal_only))
        with pytest.raises(ValidationError, match="both normal and attack"):
            runs.retrain_flows(replace(ctx, params={"evaluation_object": "flows/evaluation/normal.csv"}))
        assert runs.retrain_flows(replace(ctx, params={"evaluation_object": None, "min_rows": 10}))["status"] == "skipped"
    finally:
        engine.dispose()


class _PromotesWhilePublishing:
    """The real models bucket; while the candidate is published (after the serving model was read and compared),
    an operator promotes another version with `threatflow models promote`, as registry.promote does."""

    def __init__(self, blobs, promote_version):
        self._blobs, self._promote_version, self.promoted = blobs, promote_version, False

    def __getattr__(self, name):
        return getattr(self._blobs, name)

    def put(self, bucket, name, data, **kwargs):
        self._blobs.put(bucket, name, data, **kwargs)
        if not self.promoted and name.endswith("/model_card.md"):
            from threatflow.flows import registry

            self.promoted = True
            registry.promote(
                blobs=self._blobs, bucket=bucket, version=self._promote_version, now=lambda: datetime(2030, 1, 1, 5, tzinfo=UTC)
            )


def test_a_version_promoted_by_hand_while_the_candidate_was_checked_is_not_overwritten(blobs):
    """The job compared its candidate with the model serving when it read the pointer; one promoted since then
    by hand was never compared, so the job must not replace it (it used to write its pointer over it)."""
    from threatflow.flows import model

    weak = _retrain(blobs, sample_rows(2500, seed=5)[:300], at=1)
    chosen = _retrain(blobs, sample_rows(2500, seed=7)[:300], at=2)  # not promoted: an operator will pick it
    assert weak["status"] == "promoted" and chosen["status"] == "kept serving model"
    racing = _PromotesWhilePublishing(blobs, chosen["candidate"])
    better = _retrain(racing, sample_rows(2500, seed=6), at=3)
    assert racing.promoted
    assert model.read_serving_pointer(blobs=blobs, bucket=BUCKET)["version"] == chosen["candidate"]
    assert better["status"] == "kept serving model" and "changed" in better["reason"], better


def _raw_csv(rows):
    """The rows in the raw UNSW-NB15 layout: no header, RAW_COLUMNS' names (`Label`, `Sload`, `smeansz` ...)."""
    from threatflow.flows.features import RAW_COLUMNS, canonical_name

    extra = {"srcip": "10.0.0.1", "sport": "1234", "dstip": "10.0.0.2", "dsport": "80", "stime": "1421927377", "ltime": "1421927378"}
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([row.get(canonical_name(c), extra.get(canonical_name(c), "")) for c in RAW_COLUMNS])
    return out.getvalue().encode()


def test_a_trusted_evaluation_set_in_the_raw_layout_keeps_its_labels(blobs):
    """read_evaluation_object reads a raw-layout CSV too (no header; the label column is `Label`): its flows must come
    back labelled as the partitioned layout's do, every row evaluated."""
    from threatflow.flows import retrain, training

    trusted = sample_rows(2500, seed=3)[:400]
    blobs.put(BUCKET, "flows/evaluation/raw.csv", _raw_csv(trusted))
    held = retrain.read_evaluation_object(blobs=blobs, bucket=BUCKET, name="flows/evaluation/raw.csv")
    assert (len(held), held.invalid) == (len(trusted), 0)
    data = training.dataset_from_flows(held, source="raw")
    # Fails before the fix: HeldFlows kept flow.get("label"), None for a raw row, so every row was skipped as unlabelled.
    assert data.rows == len(trusted)
    assert sorted(data.label.tolist()) == sorted(int(r["label"]) for r in trusted)
