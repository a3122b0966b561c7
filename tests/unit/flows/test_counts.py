"""The binary head's count inputs: the tables, their lookup, the artifact that carries them, and
artifacts trained before them (no tables), which still load and score as they did."""

import dataclasses
import io

import numpy as np
import pytest
from ml_helpers import flow_without_targets, sample_rows, small_config, small_model
from threadpoolctl import threadpool_limits

from threatflow.flows import counts as C
from threatflow.flows import features as F
from threatflow.flows import model as M
from threatflow.flows import training as T

SBYTES, DBYTES, PROTO = (F.FEATURE_COLUMNS.index(c) for c in ("sbytes", "dbytes", "proto"))


def _matrix(rows):
    X = np.zeros((len(rows), len(F.FEATURE_COLUMNS)), dtype=np.float32)
    for i, (proto, sbytes, dbytes) in enumerate(rows):
        X[i, [PROTO, SBYTES, DBYTES]] = proto, sbytes, dbytes
    return X


KEYS = (("sbytes",), ("sbytes", "dbytes"), ("proto", "sbytes"))


def test_counts_are_exact_value_matches_leaving_a_fitting_row_out():
    fit = _matrix([(1, 100, 5), (1, 100, 5), (2, 100, 7), (1, 0.0, 1), (1, 300.5, 1)])
    tables = C.CountTables.fit(fit, KEYS)
    assert tables.lookup(fit, leave_one_out=True).tolist() == [[2, 1, 1], [2, 1, 1], [2, 0, 0], [0, 0, 0], [0, 0, 0]]
    scored = _matrix([(1, 100, 5), (3, 100, 9), (1, 101, 5), (1, -0.0, 1), (1, 300.5000001, 1)])
    scored[4, SBYTES] = np.nextafter(np.float32(300.5), np.float32(400))  # one float32 step away: another value
    # unseen values get 0; -0.0 is 0.0; a flow's value compared exactly, whatever float width it comes in
    assert tables.lookup(scored).tolist() == [[3, 2, 2], [3, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert tables.lookup(scored.astype(np.float64)).tolist() == tables.lookup(scored).tolist()
    logs = tables.augment(scored)
    assert logs.shape == (5, len(F.FEATURE_COLUMNS) + 3) and logs.dtype == np.float32
    np.testing.assert_array_equal(logs[:, -3:], np.log1p(tables.lookup(scored)).astype(np.float32))


def test_a_missing_value_counts_nothing():
    fit = _matrix([(1, 100, 5), (1, 100, 5)])
    fit[1, DBYTES] = np.nan
    tables = C.CountTables.fit(fit, KEYS)
    scored = fit.copy()
    assert tables.lookup(scored).tolist() == [[2, 1, 2], [2, 0, 2]]
    assert tables.lookup(scored, leave_one_out=True).tolist() == [[1, 0, 1], [1, 0, 1]]


def test_an_empty_table_counts_zero():
    tables = C.CountTables.fit(_matrix([(1, 1, 1)])[:0], KEYS)
    assert tables.lookup(_matrix([(1, 1, 1)])).tolist() == [[0, 0, 0]]


@pytest.fixture(scope="module")
def trained():
    return small_model()


def test_the_served_artifact_carries_the_tables_as_numbers(trained):
    assert trained.metadata["count_keys"] == [list(k) for k in C.COUNT_KEYS]
    with np.load(io.BytesIO(trained.artifact), allow_pickle=False) as archive:
        names = set(archive.files)
        assert archive["counts.2.hashes"].dtype == np.uint64 and archive["counts.2.counts"].dtype == np.int32
    assert {f"counts.{j}.{part}" for j in range(15) for part in ("hashes", "counts")} <= names
    model = trained.model
    assert model.binary_features[-15:] == [C.count_name(k) for k in C.COUNT_KEYS]
    assert "count(sbytes,dbytes)" in model.info()["count_inputs"]
    # the served heads were fitted on the training part (small_config): its rows are in the tables
    rows = sample_rows(2500)
    X = F.to_matrix([flow_without_targets(r) for r in rows], vocabulary=model.vocabulary)
    assert (model.counts.lookup(X)[:, 0] > 0).mean() > 0.7


def _arrays(trained):
    with np.load(io.BytesIO(trained.artifact), allow_pickle=False) as archive:
        return {k: archive[k].copy() for k in archive.files}


def _load(arrays, metadata):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    return M.load_artifact(data, {**metadata, "sha256": M.sha256_hex(data)}, expected_sha256=M.sha256_hex(data))


@pytest.mark.parametrize(
    "mutation, message",
    [
        ("unsorted", "strictly increasing"),
        ("zero count", "below 1"),
        ("wrong dtype", "wrong shape or type"),
        ("missing table", "lacks count table"),
        ("unknown column", "outside the feature set"),
        ("tables without keys", "does not name"),
    ],
)
def test_crafted_count_tables_are_refused(trained, mutation, message):
    arrays, metadata = _arrays(trained), dict(trained.metadata)
    if mutation == "unsorted":
        arrays["counts.0.hashes"] = arrays["counts.0.hashes"][::-1].copy()
    elif mutation == "zero count":
        arrays["counts.3.counts"][0] = 0
    elif mutation == "wrong dtype":
        arrays["counts.1.counts"] = arrays["counts.1.counts"].astype(np.int64)
    elif mutation == "missing table":
        del arrays["counts.14.hashes"]
    elif mutation == "unknown column":
        metadata["count_keys"] = [*metadata["count_keys"][:-1], ["srcip"]]
    else:
        metadata["count_keys"] = metadata["count_keys"][:-1]
    with pytest.raises(M.ArtifactError, match=message):
        _load(arrays, metadata)
    assert _load(_arrays(trained), trained.metadata).counts.keys == C.COUNT_KEYS  # unmutated, it loads


def test_a_binary_head_reading_more_inputs_than_its_tables_give_is_refused(trained):
    arrays, metadata = _arrays(trained), dict(trained.metadata)
    metadata["count_keys"] = metadata["count_keys"][:-1]
    del arrays["counts.14.hashes"], arrays["counts.14.counts"]
    with pytest.raises(M.ArtifactError, match=r"feature set|out of range"):
        _load(arrays, metadata)


def test_explanations_name_the_count_inputs(trained):
    flows = [flow_without_targets(r) for r in sample_rows(2500)[:30]]
    explained = trained.model.predict(flows, explain=True, top=len(trained.model.binary_features))
    names = {c["feature"] for p in explained for c in p.contributions}
    assert names == set(F.FEATURE_COLUMNS) | {C.count_name(k) for k in C.COUNT_KEYS}
    assert any(c["contribution"] != 0 for p in explained for c in p.contributions if c["feature"].startswith("count("))


def test_an_artifact_without_tables_loads_and_scores_as_before():
    """Versions trained before the count inputs (in the registry): no count_keys, no tables; the
    binary head reads FEATURE_COLUMNS only, and scores as scikit-learn's head fitted on them."""
    config = dataclasses.replace(small_config(), count_keys=())
    rows = sample_rows(2500)
    old = T.train_from_flows(rows, config=config, version="before-counts")
    assert "count_keys" not in old.metadata
    with np.load(io.BytesIO(old.artifact), allow_pickle=False) as archive:
        assert not [name for name in archive.files if name.startswith("counts.")]
    loaded = M.load_artifact(old.artifact, old.metadata, expected_sha256=old.metadata["sha256"])
    assert loaded.counts.keys == () and loaded.binary_features == list(F.FEATURE_COLUMNS)

    dataset = T.dataset_from_flows(rows)
    from sklearn.model_selection import train_test_split

    cat = dataset.category.astype(np.int64)
    train_idx, _ = train_test_split(np.arange(dataset.rows), test_size=0.2, stratify=T._stratify_key(cat, dataset.label, 2), random_state=7)
    with threadpool_limits(limits=config.threads):
        binary = T._binary_model(config).fit(dataset.X[train_idx], dataset.label[train_idx].astype(np.int64))
    X = dataset.X[:200]
    for size in (1, 30, 200):
        np.testing.assert_allclose(loaded.scores(X[:size])[0], binary.predict_proba(X[:size])[:, 1], rtol=1e-9, atol=1e-12)
    explained = loaded.predict([flow_without_targets(r) for r in rows[:3]], explain=True, top=41)
    assert {c["feature"] for p in explained for c in p.contributions} == set(F.FEATURE_COLUMNS)


def test_the_one_flow_lookup_is_the_batch_lookup(trained):
    """One served flow takes a plain-Python path (hash and binary search); it must count as the batch does."""
    model = trained.model
    X = F.to_matrix([flow_without_targets(r) for r in sample_rows(2500)[:300]], vocabulary=model.vocabulary)
    X[:20, SBYTES] += 0.5  # unseen values
    X[20:30, DBYTES] = np.nan
    X[30:40, SBYTES] = -0.0
    X[40:50] = -X[40:50]
    batch = model.counts.lookup(X)
    assert (batch == 0).any() and (batch > 0).any()
    assert [model.counts.lookup_one(row) for row in X.tolist()] == batch.tolist()
    for i in range(0, 300, 7):
        np.testing.assert_array_equal(model.binary_input(X[i : i + 1]), model.binary_input(X)[i : i + 1])
    assert model.binary_input(X[:1]).dtype == model.binary_input(X).dtype
