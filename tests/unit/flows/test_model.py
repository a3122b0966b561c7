"""Training on a small sample, the artifact (round trip, sha256 refusal), and the scorers against scikit-learn."""

import dataclasses
import io
import json

import numpy as np
import pytest
from ml_helpers import flow_without_targets, sample_rows, small_config, small_model
from threadpoolctl import threadpool_limits

from threatflow.flows import features as F
from threatflow.flows import model as M
from threatflow.flows import training as T
from threatflow.platform.errors import ValidationError


@pytest.fixture(scope="module")
def trained():
    return small_model()


@pytest.fixture(scope="module")
def sklearn_heads(trained):
    """The same heads refitted by scikit-learn with the same settings and data (deterministic)."""
    rows = sample_rows(2500)
    dataset = T.dataset_from_flows(rows)
    from sklearn.model_selection import train_test_split

    cat = dataset.category.astype(np.int64)
    idx = np.arange(dataset.rows)
    train_idx, _ = train_test_split(idx, test_size=0.2, stratify=T._stratify_key(cat, dataset.label, 2), random_state=7)
    config = small_config()  # small_model's: the refit heads must match what it trained
    with threadpool_limits(limits=config.threads):  # one OpenMP thread, as training fits them (faster on a busy machine)
        binary = T._binary_model(config).fit(dataset.X[train_idx], dataset.label[train_idx].astype(np.int64))
        category, _ = T._fit_category(config, dataset.X[train_idx], cat[train_idx])
    return dataset, binary, category


def test_training_writes_metrics_and_a_model_card(trained, tmp_path):
    written = trained.write(tmp_path)
    assert {p.name for p in written} == {"model.npz", "metadata.json", "metrics.json", "model_card.md"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for part in ("validation", "heldout"):
        binary = metrics[part]["binary"]
        assert {"roc_auc", "pr_auc", "accuracy", "f1", "fpr", "detection_rate", "threshold"} <= set(binary)
        assert binary["roc_auc"] > 0.95  # even 30 trees on 2,000 flows separate attacks well
        assert set(metrics[part]["category"]["per_category_recall"]) <= set(F.ATTACK_CATEGORIES)
    assert metrics["validation"]["binary"]["fpr"] <= T.TARGET_VALIDATION_FPR + 1e-9  # the threshold rule, on validation
    card = (tmp_path / "model_card.md").read_text()
    assert trained.metadata["training_data"]["sha256"] in card and "Limitations" in card and "srcip" in card
    assert trained.metadata["category_labels"] == [c for c in F.ATTACK_CATEGORIES[1:]]


def test_artifact_round_trip_and_tamper_refusal(trained):
    loaded = M.load_artifact(trained.artifact, trained.metadata, expected_sha256=trained.metadata["sha256"])
    flows = [flow_without_targets(r) for r in sample_rows(2500)[:50]]
    assert [p.to_json() for p in loaded.predict(flows)] == [p.to_json() for p in trained.model.predict(flows)]

    tampered = bytearray(trained.artifact)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(M.ArtifactError, match="sha256"):
        M.load_artifact(bytes(tampered), trained.metadata, expected_sha256=trained.metadata["sha256"])
    with pytest.raises(M.ArtifactError, match="sha256"):
        M.load_artifact(trained.artifact, trained.metadata, expected_sha256="0" * 64)
    with pytest.raises(M.ArtifactError, match="feature set"):
        M.load_artifact(trained.artifact, {**trained.metadata, "features": ["dur"]}, expected_sha256=trained.metadata["sha256"])


def test_artifact_holds_numeric_arrays_only(trained):
    with np.load(io.BytesIO(trained.artifact), allow_pickle=False) as archive:
        kinds = {archive[name].dtype.kind for name in archive.files}
    assert kinds <= {"i", "u", "f", "b"}


def test_crafted_out_of_range_children_are_refused(trained):
    with np.load(io.BytesIO(trained.artifact), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["binary.left"] = arrays["binary.left"].copy()
    arrays["binary.left"][~arrays["binary.is_leaf"]] = 10**8
    with pytest.raises(M.ArtifactError, match="out of range"):
        M.TreeEnsemble.from_arrays(arrays, "binary")


@pytest.mark.parametrize("mutation", ["leaf feature", "bitset of a numeric split", "row of known categories"])
def test_crafted_indices_a_walker_reads_are_refused(trained, mutation):
    """_check's promise: an artifact it accepts cannot make scoring index out of range. Found in
    review: it bounded inner nodes' features and categorical nodes' bitsets only, but the numpy
    walker reads every node's feature and bitset row at each level, and every feature's row of
    known categories: each of these loaded, then failed every batch with an IndexError (a 500)."""
    with np.load(io.BytesIO(trained.artifact), allow_pickle=False) as archive:
        arrays = {k: archive[k].copy() for k in archive.files}
    assert (arrays["category.is_categorical"] & ~arrays["category.is_leaf"]).any()  # the walker reads category rows
    if mutation == "leaf feature":
        arrays["category.feature"][arrays["category.is_leaf"]] = 1000
    elif mutation == "bitset of a numeric split":
        arrays["category.bitset"][~arrays["category.is_categorical"]] = 10**6
    else:
        arrays["category.f_idx_map"][:] = 10**6
    with pytest.raises(M.ArtifactError, match="out of range"):
        M.TreeEnsemble.from_arrays(arrays, "category")


def test_numpy_walker_and_compiled_path_equal_sklearn(trained, sklearn_heads):
    dataset, binary, category = sklearn_heads
    model = trained.model
    X = dataset.X[:300]
    # A NaN and an unseen category code exercise the missing-value routes.
    X = np.vstack([X, X[:2]])
    X[-2, F.FEATURE_COLUMNS.index("sbytes")] = np.nan
    X[-1, F.FEATURE_COLUMNS.index("proto")] = model.vocabulary.size("proto") + 5
    expected_binary = binary.predict_proba(X)[:, 1]
    expected_category = category.predict_proba(X)

    def one_by_one(head):
        return np.vstack([head.raw_predict(X[i : i + 1]) for i in range(len(X))])  # the plain one-flow walk

    for raw in (model.binary.raw_predict_numpy(X), model.binary._compiled()(X), one_by_one(model.binary)):
        np.testing.assert_allclose(1 / (1 + np.exp(-raw[:, 0])), expected_binary, rtol=1e-9, atol=1e-12)
    for raw in (model.category.raw_predict_numpy(X), model.category._compiled()(X), one_by_one(model.category)):
        z = np.exp(raw - raw.max(axis=1, keepdims=True))
        np.testing.assert_allclose(z / z.sum(axis=1, keepdims=True), expected_category, rtol=1e-9, atol=1e-12)


def test_the_one_flow_walk_follows_the_numpy_walker_on_every_route(trained):
    """Missing values, negative and unknown category codes, values past 255, and a crafted ensemble
    whose depth bound stops a walk short: the plain walk takes the numpy walker's every turn."""
    rows = sample_rows(2500)[:200]
    X = F.to_matrix([flow_without_targets(r) for r in rows], vocabulary=trained.model.vocabulary).astype(np.float64)
    proto, dur = F.FEATURE_COLUMNS.index("proto"), F.FEATURE_COLUMNS.index("dur")
    X[0:20, proto] = -3.0
    X[20:40, proto] = 255.0 + np.arange(20)
    X[40:60, proto] = np.nan
    X[60:80, :] = np.nan
    X[80:100, dur] = np.nan
    for trained_head in (trained.model.binary, trained.model.category):
        for cut in (None, 2):
            head = trained_head
            if cut is not None:  # a depth bound below the trees' depth: both walkers stop after `cut` steps
                head = M.TreeEnsemble(**{**{k: v for k, v in vars(head).items() if not k.startswith("_")}, "depth": cut})
            walked = np.array([head.raw_predict_one(row) for row in X.tolist()])
            np.testing.assert_allclose(walked, head.raw_predict_numpy(X), rtol=1e-12, atol=1e-12)


def test_every_path_adds_a_flows_trees_in_one_order(trained):
    """The numpy walker, the compiled predictor and the one-flow walk give the same raw scores to the
    bit, so a flow's verdict never depends on the path its batch (or ingest's flagged share) takes.

    Found in review: the numpy walker added up the trees and then the baseline, the other two start
    from the baseline and add tree by tree; a few ulps apart, so with a category bias putting two
    categories that close, verdicts_clean (the category head on the one flagged flow: the one-flow
    walk) named another category than predict_clean (the two-flow batch: the numpy walker)."""
    model = trained.model
    clean, errors = F.validate_flows([flow_without_targets(r) for r in sample_rows(2500)[:200]], blanks=F.Blanks.REFUSED)
    assert not errors
    X = F.matrix_from_clean(clean, vocabulary=model.vocabulary).astype(np.float64)
    for head in (model.binary, model.category):
        walked = head.raw_predict_numpy(X)
        assert np.array_equal(walked, head._compiled()(X))
        assert np.array_equal(walked, np.array([head.raw_predict_one(row) for row in X.tolist()]))

    p_attack = 1 / (1 + np.exp(-model.binary.raw_predict_numpy(X)[:, 0]))
    benign = int(np.flatnonzero(p_attack < model.threshold)[0])
    raw = model.category.raw_predict_numpy(X) + model.category_bias
    for row in np.flatnonzero(p_attack >= model.threshold)[:10].tolist():
        first, second = np.argsort(-raw[row])[:2]
        tie = model.category_bias[second] + (raw[row, first] - raw[row, second])  # lifts `second` level with `first`
        for ulps in range(-3, 4):
            bias = model.category_bias.copy()
            bias[second] = tie + ulps * np.spacing(tie)
            near_tie = dataclasses.replace(model, category_bias=bias)
            batch = [clean[row], clean[benign]]
            expected = [(p.is_attack, p.probability, p.attack_cat) for p in near_tie.predict_clean(batch)]
            assert [(v.is_attack, v.probability, v.attack_cat) for v in near_tie.verdicts_clean(batch)] == expected


def test_large_batches_split_across_threads_score_like_the_walker(trained):
    """From PARALLEL_ROWS flows the compiled path splits rows across threads; each row's score is unchanged."""
    rows = sample_rows(2500)
    X = F.to_matrix([flow_without_targets(r) for r in rows], vocabulary=trained.model.vocabulary).astype(np.float64)
    X = np.vstack([X] * (M.PARALLEL_ROWS // len(X) + 1))[: M.PARALLEL_ROWS + 7]
    X[5, F.FEATURE_COLUMNS.index("dur")] = np.nan
    for head in (trained.model.binary, trained.model.category):
        split = head._compiled()(X)
        np.testing.assert_allclose(split, head.raw_predict_numpy(X), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(split[:300], head._compiled()(X[:300]))  # one thread, the same numbers


def test_results_are_the_predictions_json(trained):
    flows = [flow_without_targets(r) for r in sample_rows(2500)[:80]]
    X = trained.model.to_matrix(flows)
    for explain in (False, True):
        results = trained.model.results(X, explain=explain, top=4)
        assert results == [p.to_json() for p in trained.model.predict_matrix(X, explain=explain, top=4)]
        assert ("top_features" in results[0]) == explain
    p_attack, _ = trained.model.scores(X)
    first = results[0]
    assert first["probability"] == float(np.round(p_attack[0], 6))
    assert first["category_probabilities"]["Normal"] == float(np.round(1.0 - p_attack[0], 6))
    assert first["is_attack"] == (p_attack[0] >= trained.model.threshold)


@pytest.mark.parametrize("count", [40, M.SMALL_BATCH + 50, M.PARALLEL_ROWS + 100])
def test_verdicts_are_the_predictions_without_the_distribution(trained, count):
    """Ingest's verdicts run the category head on flagged flows only: the same verdicts, whatever
    path (numpy walk, one thread, rows split) each head's share of the batch takes."""
    rows = sample_rows(2500)
    clean, errors = F.validate_flows([flow_without_targets(rows[i % len(rows)]) for i in range(count)], blanks=F.Blanks.REFUSED)
    assert not errors
    predictions = trained.model.predict_clean(clean)
    verdicts = trained.model.verdicts_clean(clean)
    assert [(v.is_attack, v.probability, v.attack_cat, v.model_version) for v in verdicts] == [
        (p.is_attack, p.probability, p.attack_cat, p.model_version) for p in predictions
    ]
    assert {v.is_attack for v in verdicts} == {True, False}  # both branches exercised
    assert trained.model.verdicts_clean([]) == []


def test_predictions_are_coherent(trained):
    flows = [flow_without_targets(r) for r in sample_rows(2500)[:40]]
    predictions = trained.model.predict(flows, explain=True, top=3)
    assert len(predictions) == 40
    for p in predictions:
        assert abs(sum(p.category_probabilities.values()) - 1.0) < 1e-4
        assert set(p.category_probabilities) == set(F.ATTACK_CATEGORIES)
        assert p.is_attack == (p.probability >= trained.model.threshold)
        assert (p.attack_cat == "Normal") == (not p.is_attack)
        assert p.model_version == "test-small"
        assert len(p.contributions) == 3 and all(c["feature"] in F.FEATURE_COLUMNS for c in p.contributions)


def test_predict_rejects_bad_flows_listing_each(trained):
    flows = [flow_without_targets(r) for r in sample_rows(2500)[:3]]
    flows[1] = {**flows[1], "sbytes": "lots"}
    del flows[2]["dur"]
    with pytest.raises(ValidationError) as info:
        trained.model.predict(flows)
    assert [(e["index"], e["field"]) for e in info.value.details["errors"]] == [(1, "sbytes"), (2, "dur")]


def test_threshold_rule_keeps_validation_fpr_within_target():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1000, int), np.ones(1000, int)]
    p = np.r_[rng.beta(1, 8, 1000), rng.beta(8, 1, 1000)]
    t = T.choose_threshold(y, p, target_fpr=0.008)
    assert ((p >= t) & (y == 0)).sum() <= 8
    assert ((p >= np.nextafter(np.sort(p[y == 0])[-9], 0)) & (y == 0)).sum() > 8  # and no lower threshold would do


def test_raw_layout_file_is_read_with_the_features_file(tmp_path):
    import gzip

    rows = sample_rows(2500)[:30]
    names = F.RAW_COLUMNS
    lines = []
    for r in rows:
        canon = {F.canonical_name(k): v for k, v in r.items()}
        canon.update({"srcip": "10.0.0.1", "sport": "1", "dstip": "10.0.0.2", "dsport": "80", "stime": "1", "ltime": "2"})
        canon["attack_cat"] = (
            "" if r["attack_cat"] == "Normal" else f" {r['attack_cat']}s" if r["attack_cat"] == "Backdoor" else r["attack_cat"]
        )
        canon["ct_flw_http_mthd"] = ""  # the official raw files leave it blank on many rows
        lines.append(",".join(str(canon[F.canonical_name(n)]) for n in names))
    path = tmp_path / "UNSW-NB15_1.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    dataset = T.read_dataset([path], layout="raw", features_csv=F_FEATURES if F_FEATURES.exists() else None)
    assert dataset.rows == 30 and dataset.skipped == {}
    assert dataset.blanks == {"ct_flw_http_mthd": 30}
    expected = [F.ATTACK_CATEGORIES.index(r["attack_cat"]) for r in rows]
    assert dataset.category.tolist() == expected
    assert len(dataset.sha256) == 64


from helpers import SHARED_DATA  # noqa: E402

F_FEATURES = SHARED_DATA / "unsw-nb15" / "NUSW-NB15_features.csv"


def test_a_scoring_pool_inherited_across_fork_is_not_reused(trained):
    """gunicorn forks workers after preloading the app: a child must get threads of its own."""
    import os

    X = np.zeros((M.PARALLEL_ROWS, len(F.FEATURE_COLUMNS)))
    trained.model.binary._compiled()(X)  # the parent's pool exists now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            out = trained.model.binary._compiled()(X)
            os.write(write, b"ok" if out.shape == (len(X), 1) else b"bad")
        finally:
            os._exit(0)
    os.close(write)
    try:
        import signal
        import time

        deadline = time.monotonic() + 60
        done, status = 0, 0
        while not done and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if not done:  # the child is stuck on a dead pool
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done and status == 0 and os.read(read, 16) == b"ok"
    finally:
        os.close(read)


def test_a_flow_with_the_raw_layouts_blanks_scores_as_scikit_learn_routes_missing_values(trained, sklearn_heads):
    """Ingest stores the official raw files' blank ct_flw_http_mthd, is_ftp_login and ct_ftp_cmd as missing (NaN for
    the model, never 0): every scoring path routes them as scikit-learn does, and ingest's verdicts are finite. The same
    flows with 0 there (the partitioned files' value) are scored too; the probabilities are printed side by side."""
    dataset, binary, _category = sklearn_heads
    model = trained.model
    positions = [F.FEATURE_COLUMNS.index(name) for name in sorted(F.BLANK_IN_RAW)]
    zero = dataset.X[:300].astype(np.float64)
    zero[:, positions] = 0.0
    blank = zero.copy()
    blank[:, positions] = np.nan
    expected = binary.predict_proba(blank)[:, 1]
    for raw in (model.binary.raw_predict_numpy(blank), model.binary._compiled()(blank), model.binary.raw_predict(blank[:1])):
        np.testing.assert_allclose(1 / (1 + np.exp(-raw[:, 0])), expected[: len(raw)], rtol=1e-9, atol=1e-12)
    p_blank, _ = model.scores(blank)
    p_zero, _ = model.scores(zero)
    assert np.isfinite(p_blank).all() and ((p_blank >= 0) & (p_blank <= 1)).all()
    print(f"\nflow 0: P(attack) {p_blank[0]:.6f} with the three blank (NaN), {p_zero[0]:.6f} with 0")
    print(f"300 flows: mean |difference| {np.abs(p_blank - p_zero).mean():.6f}, max {np.abs(p_blank - p_zero).max():.6f}")

    rows = [dict(r) for r in sample_rows(2500)[:80]]
    for row in rows[::2]:
        row.update(ct_flw_http_mthd="", is_ftp_login="", ct_ftp_cmd=" ")
    clean, errors = F.validate_flows([flow_without_targets(r) for r in rows], blanks=F.Blanks.RAW_LAYOUT)
    assert not errors
    verdicts = model.verdicts_clean(clean)
    assert all(0.0 <= v.probability <= 1.0 for v in verdicts)
    X = F.matrix_from_clean(clean, vocabulary=model.vocabulary).astype(np.float64)
    np.testing.assert_allclose([v.probability for v in verdicts], np.round(binary.predict_proba(X)[:, 1], 6), atol=2e-6)


def test_training_takes_blanks_by_the_rule_ingest_takes_them():
    """A blank ct_ftp_cmd is missing; a blank sbytes is a row training skips (it read NaN for a blank anywhere)."""
    rows = [dict(r) for r in sample_rows(2500)[:50]]
    rows[0]["ct_ftp_cmd"] = " "
    rows[1]["sbytes"] = ""
    dataset = T.dataset_from_flows(rows, min_category_count=1)
    assert dataset.rows == 49 and dataset.blanks == {"ct_ftp_cmd": 1}
    assert dataset.skipped == {"sbytes: must be a finite number, got ''": 1}
