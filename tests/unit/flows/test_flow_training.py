"""Training choices: the operating-point report, the irreducible-error count, the category adjustments, the defaults."""

import json

import numpy as np
import pytest
from ml_helpers import sample_rows, small_config, small_model
from threadpoolctl import threadpool_limits

from threatflow.flows import training as T


def test_operating_points_report_detection_at_each_fpr_and_the_fpr_97_percent_needs():
    # 1,000 normals scored 0.000..0.999; 1,000 attacks: 960 score above every normal, 40 sit among them
    y = np.r_[np.zeros(1000, int), np.ones(1000, int)]
    normals = np.arange(1000) / 1000
    attacks = np.r_[np.full(960, 2.0), np.linspace(0.0, 0.98, 40)]
    points = T.operating_points(y, np.r_[normals, attacks], fprs=(0.01, 0.05))
    flagged_at_1pct = 960 + int((attacks[960:] > 0.990).sum())
    assert points["detection_at_fpr"]["0.010"] == pytest.approx(flagged_at_1pct / 1000)
    assert points["detection_at_fpr"]["0.050"] == pytest.approx((960 + int((attacks[960:] > 0.950).sum())) / 1000)
    # 97% detection = 970 attacks: the cut is the 31st lowest attack score, so normals above it are false positives
    cut = np.sort(attacks)[30]
    assert points["fpr_for_detection_0.97"] == pytest.approx(float((normals >= cut).mean()), abs=1e-5)
    assert points["fpr_for_detection_0.97"] > 0.01 and points["acceptance_reachable"] is False


def test_operating_points_say_reachable_when_classes_separate():
    y = np.r_[np.zeros(500, int), np.ones(500, int)]
    p = np.r_[np.linspace(0, 0.4, 500), np.linspace(0.6, 1, 500)]
    points = T.operating_points(y, p)
    assert points["acceptance_reachable"] is True and points["fpr_for_detection_0.97"] == 0.0
    assert set(points["detection_at_fpr"].values()) == {1.0}


def test_feature_conflicts_count_the_errors_no_model_can_avoid():
    X = np.array([[1, 2], [1, 2], [1, 2], [1, 2], [3, 4], [5, 6], [5, 6]], dtype=np.float32)
    label = np.array([1, 1, 1, 1, 1, 0, 1])
    category = np.array([2, 2, 3, 2, 4, 0, 5])
    out = T.feature_conflicts(X, label, category)
    assert out["rows"] == 7 and out["distinct_rows"] == 3 and out["rows_with_an_identical_twin"] == 6
    # [5,6] is once normal, once an attack: one binary error whichever way it is called
    assert out["binary"] == {"rows_in_conflicting_groups": 2, "min_errors": 1, "min_error_rate": round(1 / 7, 5)}
    # [1,2] holds three 2s and a 3 (one error); [5,6] holds a 0 and a 5 (one error)
    assert out["category"]["rows_in_conflicting_groups"] == 6 and out["category"]["min_errors"] == 2
    assert 0 < out["category"]["max_macro_f1"] < 1


def test_feature_conflicts_find_none_in_distinct_rows():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = T.feature_conflicts(X, np.array([0, 1, 0, 1, 0, 1]), np.array([0, 1, 0, 2, 0, 3]))
    assert out["rows_with_an_identical_twin"] == 0
    assert out["binary"]["min_errors"] == 0 and out["category"]["min_errors"] == 0
    assert out["category"]["max_macro_f1"] == 1.0


def _category_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Category 2 is under-predicted: its log-probability trails category 1 by 0.7 on its own rows."""
    rng = np.random.default_rng(3)
    true = np.r_[np.ones(300, int), np.full(100, 2)]
    logp = np.zeros((400, 2))
    logp[:300, 1] = -1.5 + rng.normal(0, 0.2, 300)  # category-1 rows: clearly 1
    logp[300:, 1] = -0.7 + rng.normal(0, 0.2, 100)  # category-2 rows: look like 1 unless biased
    return true, np.ones(400), logp, [1, 2]


def test_category_bias_corrects_an_under_predicted_category_within_its_limit():
    true, p_attack, logp, labels = _category_case()
    before = T._macro_f1_fast(true, T.served_categories(p_attack, logp, 0.5, labels), 10)
    bias = T.tune_category_bias(true, p_attack, logp, 0.5, labels, limit=2.0)
    after = T._macro_f1_fast(true, T.served_categories(p_attack, logp + bias, 0.5, labels), 10)
    assert after > before + 0.2
    assert np.all(np.abs(bias) <= 2.0) and bias[1] - bias[0] > 0.7


def test_category_bias_keeps_no_change_smaller_than_min_gain():
    true, p_attack, logp, labels = _category_case()
    bias = T.tune_category_bias(true, p_attack, logp, 0.5, labels, min_gain=0.9)  # no change can gain 0.9
    assert np.array_equal(bias, np.zeros(2))


def test_binary_head_defaults_are_the_measured_ones():
    params = T._binary_model(T.TrainConfig()).get_params()
    assert params["class_weight"] == "balanced"
    assert (params["max_leaf_nodes"], params["min_samples_leaf"], params["max_iter"]) == (63, 10, 200)
    assert params["random_state"] == T.TrainConfig().seed and params["early_stopping"] is False
    category = T._hgb(T.TrainConfig(), max_iter=5).get_params()  # the category head keeps sklearn's leaf sizes
    assert (category["max_leaf_nodes"], category["min_samples_leaf"]) == (31, 20)


def test_training_reports_operating_points_conflicts_and_says_so_in_the_card(tmp_path):
    trained = small_model()
    validation = trained.metrics["validation"]
    points = validation["operating_points"]
    # the served threshold follows the same rule at target_fpr, so the two figures agree
    assert points["detection_at_fpr"][f"{T.TARGET_VALIDATION_FPR:.3f}"] == pytest.approx(validation["binary"]["detection_rate"], abs=1e-4)
    missed = validation["missed_attacks_by_category"]
    assert set(missed) <= set(T.ATTACK_CATEGORIES[1:]) and all(n > 0 for n in missed.values())
    assert (sum(missed.values()) == 0) == (validation["binary"]["detection_rate"] == 1.0)
    conflicts = trained.metadata["training_data"]["identical_features"]
    assert conflicts["rows"] == trained.metadata["training_data"]["rows"]
    card = trained.model_card
    assert "Irreducible error" in card and f"at least {conflicts['category']['min_errors']} errors" in card
    assert "Operating points on validation" in card
    trained.write(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["validation"]["operating_points"] == points


# -- final fit: which rows the served heads are fitted on ----------------------------------------

FINAL_FIT_CONFIG = small_config()


@pytest.fixture(scope="module")
def final_fits():
    from dataclasses import replace

    from ml_helpers import sample_rows

    dataset = T.dataset_from_flows(sample_rows(2500))
    # final_fit="train" on these rows with this configuration is small_model, already trained for this process
    assert FINAL_FIT_CONFIG.final_fit == "train"
    fits = {"all": T.train(dataset, config=replace(FINAL_FIT_CONFIG, final_fit="all"), version="test-all"), "train": small_model()}
    return dataset, fits


def _split(dataset):
    from sklearn.model_selection import train_test_split

    cat = dataset.category.astype(np.int64)
    stratify = T._stratify_key(cat, dataset.label, 2)
    train_idx, test_idx = train_test_split(
        np.arange(dataset.rows), test_size=FINAL_FIT_CONFIG.holdout, stratify=stratify, random_state=FINAL_FIT_CONFIG.seed
    )
    return train_idx, test_idx


def test_final_fit_all_serves_heads_fitted_on_every_row(final_fits):
    dataset, fits = final_fits
    train_idx, test_idx = _split(dataset)
    X, y = dataset.X, dataset.label.astype(np.int64)
    # as training fits them (one OpenMP thread): unlimited, these two fits took ~30 s on a busy 2-core machine
    with threadpool_limits(limits=FINAL_FIT_CONFIG.threads):
        on_all = T._binary_model(FINAL_FIT_CONFIG).fit(X, y).predict_proba(X)[:, 1]
        on_train = T._binary_model(FINAL_FIT_CONFIG).fit(X[train_idx], y[train_idx]).predict_proba(X)[:, 1]
    served_all, _ = fits["all"].model.scores(X)
    served_train, _ = fits["train"].model.scores(X)
    # the served heads are the deterministic refit on every row (resp. the training part), and they differ
    np.testing.assert_allclose(served_all, on_all, atol=1e-6)
    np.testing.assert_allclose(served_train, on_train, atol=1e-6)
    assert np.abs(served_all - served_train).max() > 1e-3
    data = fits["all"].metadata["training_data"]
    assert len(train_idx) + len(test_idx) == dataset.rows
    assert (data["served_heads_fitted_on"], data["served_heads_rows"], data["train_rows"]) == ("all", dataset.rows, len(train_idx))
    assert fits["train"].metadata["training_data"]["served_heads_fitted_on"] == "train"
    assert fits["train"].metadata["training_data"]["served_heads_rows"] == len(train_idx)
    assert fits["all"].metrics["served_heads"] == {
        "fitted_on": "all",
        "rows": dataset.rows,
        "heldout_figures_from": f"heads fitted on the training part ({len(train_idx)} rows)",
    }


def test_final_fit_all_keeps_the_threshold_and_reports_held_out_from_the_training_part_fit(final_fits):
    _, fits = final_fits
    served, estimate = fits["all"], fits["train"]
    # threshold, category adjustments and validation come from the same cross-validation in both modes
    assert served.metadata["threshold"] == estimate.metadata["threshold"]
    assert served.metadata["category_bias"] == estimate.metadata["category_bias"]
    assert served.metrics["validation"] == estimate.metrics["validation"]
    # held-out figures: the training-part heads in both modes (not the served heads, which saw those rows)
    for key in ("binary", "category"):
        assert served.metrics["heldout"][key] == estimate.metrics["heldout"][key]
    assert served.metrics["heldout"]["heads_rows"] == estimate.metadata["training_data"]["train_rows"]
    assert "estimate" in served.metrics["heldout"]["describes"] and estimate.metrics["heldout"]["describes"] == "the served heads"
    assert served.metadata["sha256"] != estimate.metadata["sha256"]
    card = served.model_card
    assert f"served heads fitted on: all {served.metadata['training_data']['rows']} rows" in card
    assert "an estimate for the served model" in card and "estimate" not in estimate.model_card


def test_final_fit_is_validated():
    from dataclasses import replace

    from ml_helpers import sample_rows

    with pytest.raises(ValueError, match="final_fit"):
        T.train(T.dataset_from_flows(sample_rows(300)), config=replace(FINAL_FIT_CONFIG, final_fit="everything"))


def test_train_cli_passes_final_fit_through(tmp_path):
    import csv

    from ml_helpers import sample_rows

    from threatflow.cli.models import train_main

    rows = sample_rows(1500)
    data = tmp_path / "flows.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert train_main(["--data", str(data), "--out", str(tmp_path / "out"), "--quick", "--no-compare", "--final-fit", "train"]) == 0
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["training_data"]["served_heads_fitted_on"] == "train"
    assert metadata["training_data"]["served_heads_rows"] == metadata["training_data"]["train_rows"] < metadata["training_data"]["rows"]


def _write_csv(path, rows):
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_models_train_with_no_bucket_to_publish_to_says_so_before_training(tmp_path, monkeypatch, capsys):
    """No running stack and no Google credentials: `threatflow models train` trained for ~40 s on the dev data and
    then died with google.auth's DefaultCredentialsError traceback. It now stops first, naming both ways out."""
    from threatflow.cli import main as cli_main
    from threatflow.flows import training

    for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("THREATFLOW_STATE_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no application-default credentials
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # no metadata server: refused at once
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    trained = []
    monkeypatch.setattr(training, "train", lambda *a, **k: trained.append(1))
    data = tmp_path / "flows.csv"  # read first (a file that cannot be is named at once), but not trained on
    _write_csv(data, sample_rows(300))
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["models", "train", "--data", str(data), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2 and trained == []
    err = capsys.readouterr().err
    assert "make run" in err and "ml/train.py" in err and "Traceback" not in err


@pytest.mark.parametrize("problem", ["missing", "not UNSW", "truncated gzip"])
def test_training_data_that_cannot_be_read_is_an_error_naming_the_file_not_a_traceback(tmp_path, capsys, problem):
    """`threatflow models train --data FILE` and `ml/train.py` with a mistyped path, a file that is not a UNSW CSV
    or a gzip cut short died with FileNotFoundError, ValueError or EOFError tracebacks (`flows load` names the file)."""
    import gzip

    from threatflow.cli import main as cli_main
    from threatflow.cli.models import train_main

    data = tmp_path / ("flows.csv.gz" if problem == "truncated gzip" else "flows.csv")
    if problem == "not UNSW":
        data.write_text("hello,world\n")
    elif problem == "truncated gzip":
        data.write_bytes(gzip.compress(b"a,b,c\n" * 10_000)[:100])
    for run in (
        lambda: cli_main.main(["models", "train", "--data", str(data)]),  # checked before anything else: no stack here
        lambda: train_main(["--data", str(data), "--out", str(tmp_path / "out")]),
    ):
        with pytest.raises(SystemExit) as exited:
            run()
        err = capsys.readouterr().err
        assert exited.value.code == 2 and str(data) in err and "Traceback" not in err, err


def test_flows_held_compactly_give_the_dataset_the_flows_give():
    """retrain holds stored flows as float32 rows (HeldFlows), not a dict each: the training loader must read
    them as it reads the flows themselves, blank cells included, and a flow it would skip is counted, not kept."""
    from ml_helpers import sample_rows

    from threatflow.flows import retrain

    rows = sample_rows(600, seed=3)
    rows[5] = {**rows[5], "ct_flw_http_mthd": ""}  # a blank cell of the raw files: missing, never 0
    rows[7] = {**rows[7], "sbytes": "abc"}  # no valid model inputs: skipped by the loader
    held = retrain.HeldFlows.of(rows)
    assert (len(held), held.invalid) == (len(rows) - 1, 1)
    direct, compact = T.dataset_from_flows(rows), T.dataset_from_flows(held)
    np.testing.assert_array_equal(direct.X, compact.X)  # NaN where blank, in both
    np.testing.assert_array_equal(direct.label, compact.label)
    np.testing.assert_array_equal(direct.category, compact.category)
    assert np.isnan(compact.X[5]).any() and held.keys() == {retrain.feature_key(r) for r in rows} - {None}
    train, evaluation = retrain.split_stored(rows)
    assert len(train) + len(evaluation) == len(rows) - 1 and not train.keys() & evaluation.keys()
