"""The served flow model: a verified artifact that executes no code on load, and its scorer.

Artifact (`model.npz` + `metadata.json`): the fitted HistGradientBoosting trees as plain
numeric arrays (np.load with allow_pickle=False; nothing is unpickled), plus the feature
vocabulary, threshold and per-category adjustments in JSON. The loader checks the npz's
sha256 against `flows/serving.json` and `metadata.json` before reading a byte of it.

Two heads:
- binary: P(attack), thresholded at the threshold chosen on validation data;
- category: a 9-way model over the attack categories (trained on attacks only), with
  additive log-odds adjustments chosen on validation data. The served 10-way distribution is
  P(Normal) = 1 - P(attack) and P(c) = P(attack) * P(c | attack); `attack_cat` is `Normal`
  when the flow is not flagged, else the adjusted arg-max category.

Scoring: small batches walk all trees at once in vectorised numpy (no per-call overhead of
scikit-learn, which costs milliseconds); large batches use scikit-learn's compiled tree
predictor rebuilt from the same arrays, when scikit-learn is installed. Both are checked
equal to `predict_proba` in the tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import isnan
from typing import TYPE_CHECKING, Any

from threatflow.flows.features import (
    ATTACK_CATEGORIES,
    CATEGORICAL,
    FEATURE_COLUMNS,
    Vocabulary,
    matrix_from_clean,
    to_matrix,
)
from threatflow.platform.errors import DependencyError, NotFoundError
from threatflow.platform.snapshots import Load, Loaded, Snapshot, SnapshotCache

if TYPE_CHECKING:
    import numpy as np

    from threatflow.platform.ports import BlobStore

FORMAT = "threatflow-hgb-npz/1"
SERVING_POINTER = "flows/serving.json"
MODELS_PREFIX = "flows/models/"
ARTIFACT_NAME = "model.npz"
TRAIN_COMMAND = "threatflow models train --data ../shared/data/unsw-nb15/unsw_nb15_dev.csv.gz --promote"
SMALL_BATCH = 64  # at or below this many flows, the numpy walker beats scikit-learn's per-call overhead
PARALLEL_ROWS = 2_000  # from this many flows, a batch is scored on all the instance's cores
_HEADS = ("binary", "category")
_TREE_FIELDS = ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value", "is_categorical", "bitset")


class ArtifactError(ValueError):
    """The artifact is not one this code can trust or read (hash mismatch, wrong format)."""


@dataclass(frozen=True)
class Prediction:
    is_attack: bool
    probability: float
    attack_cat: str
    category_probabilities: dict[str, float]
    model_version: str
    contributions: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "is_attack": self.is_attack,
            "probability": self.probability,
            "attack_cat": self.attack_cat,
            "category_probabilities": self.category_probabilities,
            "model_version": self.model_version,
        }
        if self.contributions is not None:
            body["top_features"] = self.contributions
        return body


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a stored flow event keeps of a prediction: no category distribution."""

    is_attack: bool
    probability: float
    attack_cat: str
    model_version: str


# -- tree ensembles as arrays -----------------------------------------------------------


@dataclass
class TreeEnsemble:
    """One HistGradientBoosting model as flat arrays: all trees' nodes concatenated."""

    feature: np.ndarray  # int32, node → feature column
    threshold: np.ndarray  # float64
    missing_left: np.ndarray  # bool
    left: np.ndarray  # int32, absolute node index
    right: np.ndarray  # int32
    is_leaf: np.ndarray  # bool
    value: np.ndarray  # float64 (leaf value)
    is_categorical: np.ndarray  # bool
    bitset: np.ndarray  # int32, row of cat_bitsets for categorical splits, else -1
    cat_bitsets: np.ndarray  # (k, 8) uint32: raw category codes going left
    roots: np.ndarray  # (n_iter, n_outputs) int32
    baseline: np.ndarray  # (n_outputs,) float64
    known_cat_bitsets: np.ndarray  # (n_categorical, 8) uint32
    f_idx_map: np.ndarray  # (n_features,) uint32: feature → row of known_cat_bitsets
    depth: int
    _sklearn: list[list[Any]] | None = field(default=None, repr=False)
    _plain: _TreeLists | None = field(default=None, repr=False)

    @property
    def n_outputs(self) -> int:
        return int(self.roots.shape[1])

    @classmethod
    def from_sklearn(cls, model: Any) -> TreeEnsemble:
        """Flatten a fitted HistGradientBoostingClassifier (private `_predictors`, checked by the tests)."""
        import numpy as np

        columns: dict[str, list[np.ndarray]] = {name: [] for name in _TREE_FIELDS}
        bitsets: list[np.ndarray] = []
        roots: list[list[int]] = []
        offset = 0
        bitset_offset = 0
        depth = 0
        for iteration in model._predictors:
            row = []
            for predictor in iteration:
                nodes = predictor.nodes
                n = len(nodes)
                columns["feature"].append(nodes["feature_idx"].astype(np.int32))
                columns["threshold"].append(nodes["num_threshold"].astype(np.float64))
                columns["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
                columns["left"].append((nodes["left"].astype(np.int64) + offset).astype(np.int32))
                columns["right"].append((nodes["right"].astype(np.int64) + offset).astype(np.int32))
                columns["is_leaf"].append(nodes["is_leaf"].astype(bool))
                columns["value"].append(nodes["value"].astype(np.float64))
                is_cat = nodes["is_categorical"].astype(bool)
                columns["is_categorical"].append(is_cat)
                columns["bitset"].append(np.where(is_cat, nodes["bitset_idx"].astype(np.int64) + bitset_offset, -1).astype(np.int32))
                raw_bitsets = np.asarray(predictor.raw_left_cat_bitsets, dtype=np.uint32).reshape(-1, 8)
                bitsets.append(raw_bitsets)
                bitset_offset += len(raw_bitsets)
                depth = max(depth, int(nodes["depth"].max()))
                row.append(offset)
                offset += n
            roots.append(row)
        known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
        flat = {name: np.concatenate(parts) for name, parts in columns.items()}
        cat_bitsets = np.concatenate(bitsets) if bitsets else np.zeros((0, 8), np.uint32)
        known = np.asarray(known, dtype=np.uint32).reshape(-1, 8)
        f_idx_map = np.asarray(f_idx_map, dtype=np.uint32)
        if getattr(model, "_preprocessor", None) is not None:
            flat, cat_bitsets, known, f_idx_map = _undo_preprocessor(model, flat, cat_bitsets, known, f_idx_map)
        arrays: dict[str, Any] = flat
        return cls(
            **arrays,
            cat_bitsets=cat_bitsets,
            roots=np.asarray(roots, dtype=np.int32),
            baseline=np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1),
            known_cat_bitsets=known,
            f_idx_map=f_idx_map,
            depth=depth,
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        import numpy as np

        arrays = {f"{prefix}.{name}": getattr(self, name) for name in _TREE_FIELDS}
        arrays.update(
            {
                f"{prefix}.cat_bitsets": self.cat_bitsets,
                f"{prefix}.roots": self.roots,
                f"{prefix}.baseline": self.baseline,
                f"{prefix}.known_cat_bitsets": self.known_cat_bitsets,
                f"{prefix}.f_idx_map": self.f_idx_map,
                f"{prefix}.depth": np.asarray([self.depth], dtype=np.int32),
            }
        )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> TreeEnsemble:
        import numpy as np

        def get(name: str, dtype: Any) -> np.ndarray:
            key = f"{prefix}.{name}"
            if key not in arrays:
                raise ArtifactError(f"artifact lacks array {key!r}")
            return np.ascontiguousarray(arrays[key], dtype=dtype)

        ensemble = cls(
            feature=get("feature", np.int32),
            threshold=get("threshold", np.float64),
            missing_left=get("missing_left", bool),
            left=get("left", np.int32),
            right=get("right", np.int32),
            is_leaf=get("is_leaf", bool),
            value=get("value", np.float64),
            is_categorical=get("is_categorical", bool),
            bitset=get("bitset", np.int32),
            cat_bitsets=get("cat_bitsets", np.uint32).reshape(-1, 8),
            roots=get("roots", np.int32),
            baseline=get("baseline", np.float64),
            known_cat_bitsets=get("known_cat_bitsets", np.uint32).reshape(-1, 8),
            f_idx_map=get("f_idx_map", np.uint32),
            depth=int(get("depth", np.int32)[0]),
        )
        ensemble._check()
        return ensemble

    def _check(self) -> None:
        """Bounds, so a crafted artifact cannot index out of range."""
        import numpy as np

        n = len(self.feature)
        if any(len(getattr(self, name)) != n for name in _TREE_FIELDS):
            raise ArtifactError("node arrays differ in length")
        inner = ~self.is_leaf
        if n == 0 or self.roots.ndim != 2 or self.roots.min() < 0 or self.roots.max() >= n:
            raise ArtifactError("tree roots out of range")
        children = np.concatenate([self.left[inner], self.right[inner]])
        if len(children) and (children.min() < 0 or children.max() >= n):
            raise ArtifactError("child index out of range")
        # Every node's: the numpy walker reads the feature (and, below, the bitset row) of leaves too.
        if self.feature.min() < 0 or self.feature.max() >= len(FEATURE_COLUMNS):
            raise ArtifactError("feature index out of range")
        if len(self.f_idx_map) != len(FEATURE_COLUMNS) or self.baseline.shape != (self.n_outputs,):
            raise ArtifactError("artifact does not match this feature set")
        cats = self.is_categorical & inner
        if cats.any():
            if self.bitset[cats].min() < 0 or self.bitset.max() >= len(self.cat_bitsets):
                raise ArtifactError("categorical bitset index out of range")
            if self.f_idx_map.max() >= len(self.known_cat_bitsets):  # read for every node's feature
                raise ArtifactError("known-categories row out of range")
        if not 0 < self.depth <= 64:
            raise ArtifactError("tree depth out of range")

    # -- scoring -------------------------------------------------------------------------

    def raw_predict(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (n, n_outputs): a plain walk for one flow, vectorised numpy walk for small
        batches, compiled predictor for large."""
        if len(X) > SMALL_BATCH:
            compiled = self._compiled()
            if compiled is not None:
                return compiled(X)
        if len(X) == 1:
            import numpy as np

            return np.asarray([self.raw_predict_one(X[0].tolist())], dtype=np.float64)
        return self.raw_predict_numpy(X)

    def raw_predict_one(self, x: Sequence[float]) -> list[float]:
        """One flow's raw scores, walking each tree in plain Python over lists.

        For one flow the numpy walker pays ~15 array calls per level for the deepest tree's
        27 levels, whatever the other trees do; a plain walk stops each tree at its own leaf:
        0.8 against 1.6 ms for the served model's two heads (tests/perf/bench_detect.py). Same
        rules as raw_predict_numpy, including its bound of `depth` steps per tree."""
        t = self._lists()
        feature, threshold, left, right, missing_left, is_leaf, value, categorical = (
            t.feature,
            t.threshold,
            t.left,
            t.right,
            t.missing_left,
            t.is_leaf,
            t.value,
            t.is_categorical,
        )
        steps = range(self.depth)
        out = list(t.baseline)
        for roots in t.roots:
            for k, root in enumerate(roots):
                node = root
                for _ in steps:
                    if is_leaf[node]:
                        break
                    v = x[feature[node]]
                    if isnan(v):  # missing
                        go_left = missing_left[node]
                    elif categorical[node]:
                        go_left = t.category_goes_left(node, feature[node], v)
                    else:
                        go_left = v <= threshold[node]
                    node = left[node] if go_left else right[node]
                out[k] += value[node]
        return out

    def _lists(self) -> _TreeLists:
        if self._plain is None:
            self._plain = _TreeLists.of(self)
        return self._plain

    def raw_predict_numpy(self, X: np.ndarray) -> np.ndarray:
        import numpy as np

        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        roots = self.roots.reshape(-1)  # iteration-major: (n_iter * n_outputs)
        node = np.broadcast_to(roots, (n, len(roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            leaf = self.is_leaf[node]
            if leaf.all():
                break
            feature = self.feature[node]
            x = X[rows, feature]
            missing = np.isnan(x)
            go_left = x <= self.threshold[node]
            categorical = self.is_categorical[node] & ~leaf
            if categorical.any():
                code = np.where(missing | (x < 0), 0, np.minimum(x, 255)).astype(np.intp)
                word, bit = code >> 5, (code & 31).astype(np.uint32)
                in_left = (self.cat_bitsets[np.maximum(self.bitset[node], 0), word] >> bit) & 1
                known = (self.known_cat_bitsets[self.f_idx_map[feature], word] >> bit) & 1
                # sklearn: negative or unknown categories follow the missing-value direction
                cat_missing = missing | (x < 0) | ((in_left == 0) & (known == 0))
                go_left = np.where(categorical, in_left.astype(bool), go_left)
                missing = np.where(categorical, cat_missing, missing)
            go_left = np.where(missing, self.missing_left[node], go_left)
            node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
        values = self.value[node].reshape(n, -1, self.n_outputs)
        # From the baseline, tree by tree (add.accumulate is strictly sequential), as the compiled
        # predictor and the one-flow walk add them: the same bits on every path, so a flow's verdict
        # cannot depend on its batch's size (sum() then + baseline was a few ulps off, enough to flip
        # a near-tie between categories when ingest scores only the flagged flows).
        ordered = np.concatenate([np.broadcast_to(self.baseline, (n, 1, self.n_outputs)), values], axis=1)
        return np.asarray(np.add.accumulate(ordered, axis=1)[:, -1], dtype=np.float64)

    def _compiled(self) -> Callable[[np.ndarray], np.ndarray] | None:
        if self._sklearn is None:
            try:
                self._sklearn = self._build_sklearn_predictors()
            except ImportError:
                self._sklearn = []
        if not self._sklearn:
            return None
        predictors = self._sklearn

        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        threads = _openmp_effective_n_threads()  # respects the instance's CPU quota (cgroups)

        def run(X: np.ndarray) -> np.ndarray:
            import numpy as np

            out = np.tile(self.baseline, (len(X), 1))
            for iteration in predictors:
                for k, predictor in enumerate(iteration):
                    out[:, k] += predictor.predict(X, self.known_cat_bitsets, self.f_idx_map, 1)
            return out

        def predict(X: np.ndarray) -> np.ndarray:
            import numpy as np

            X = np.ascontiguousarray(X, dtype=np.float64)
            if threads < 2 or len(X) < PARALLEL_ROWS:
                return run(X)
            # Rows split across threads, each walking every tree single-threaded (the walk releases
            # the GIL). Not OpenMP per tree: that joins the threads once per tree (hundreds of
            # times a batch), and on a busy machine one descheduled thread stalls every join; we
            # measured it 5-7x slower than one thread under load, and no faster when idle.
            chunks = np.array_split(X, threads)
            return np.concatenate(list(_pool(threads).map(run, chunks)))

        return predict

    def _build_sklearn_predictors(self) -> list[list[Any]]:
        import numpy as np
        from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        n = len(self.feature)
        starts = sorted(set(self.roots.reshape(-1).tolist()))
        ends = {start: end for start, end in zip(starts, [*starts[1:], n], strict=True)}
        predictors: list[list[Any]] = []
        for iteration in self.roots:
            row = []
            for start in iteration.tolist():
                end = ends[start]
                nodes = np.zeros(end - start, dtype=PREDICTOR_RECORD_DTYPE)
                nodes["value"] = self.value[start:end]
                nodes["feature_idx"] = self.feature[start:end]
                nodes["num_threshold"] = self.threshold[start:end]
                nodes["missing_go_to_left"] = self.missing_left[start:end]
                nodes["left"] = np.where(self.is_leaf[start:end], 0, self.left[start:end] - start)
                nodes["right"] = np.where(self.is_leaf[start:end], 0, self.right[start:end] - start)
                nodes["is_leaf"] = self.is_leaf[start:end]
                nodes["is_categorical"] = self.is_categorical[start:end]
                bitset = self.bitset[start:end]
                used = bitset[bitset >= 0]
                first = int(used.min()) if len(used) else 0
                last = int(used.max()) + 1 if len(used) else 0
                nodes["bitset_idx"] = np.where(bitset >= 0, bitset - first, 0)
                raw = np.ascontiguousarray(self.cat_bitsets[first:last], dtype=np.uint32)
                binned = np.zeros_like(raw)  # only used when predicting binned data (training), never here
                row.append(TreePredictor(nodes, binned, raw))
            predictors.append(row)
        return predictors


@dataclass(frozen=True)
class _TreeLists:
    """A TreeEnsemble's arrays as Python lists, for the one-flow walk (list indexing is several
    times cheaper than numpy scalar indexing)."""

    feature: list[int]
    threshold: list[float]
    missing_left: list[bool]
    left: list[int]
    right: list[int]
    is_leaf: list[bool]
    value: list[float]
    is_categorical: list[bool]
    bitset: list[int]
    cat_bitsets: list[list[int]]
    known_cat_bitsets: list[list[int]]
    f_idx_map: list[int]
    roots: list[list[int]]
    baseline: list[float]

    @classmethod
    def of(cls, ensemble: TreeEnsemble) -> _TreeLists:
        return cls(
            **{name: getattr(ensemble, name).tolist() for name in _TREE_FIELDS},
            cat_bitsets=ensemble.cat_bitsets.tolist(),
            known_cat_bitsets=ensemble.known_cat_bitsets.tolist(),
            f_idx_map=ensemble.f_idx_map.tolist(),
            roots=ensemble.roots.tolist(),
            baseline=ensemble.baseline.tolist(),
        )

    def category_goes_left(self, node: int, feature: int, value: float) -> bool:
        """raw_predict_numpy's rule for a categorical split: a negative or unknown category
        follows the missing-value direction (as scikit-learn does)."""
        if value < 0:
            return self.missing_left[node]
        code = int(min(value, 255.0))
        word, bit = code >> 5, code & 31
        if (self.cat_bitsets[self.bitset[node]][word] >> bit) & 1:
            return True
        if (self.known_cat_bitsets[self.f_idx_map[feature]][word] >> bit) & 1:
            return False
        return self.missing_left[node]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """One scoring pool per process, created on first use.

    Keyed by pid too: a pool inherited across fork (gunicorn preloads the app) has no live
    threads in the child and would never run a task."""
    key = (os.getpid(), threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flow-score")
        return pool


def _undo_preprocessor(
    model: Any, flat: dict[str, np.ndarray], cat_bitsets: np.ndarray, known: np.ndarray, f_idx_map: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Express the trees on the raw matrix (FEATURE_COLUMNS order, vocabulary codes).

    scikit-learn puts categorical columns first and ordinal-encodes their values before the trees
    see them; the arrays are rewritten so that scoring needs no preprocessing: feature indices go
    back to the input columns and category bitsets are re-keyed from encoded to raw codes (codes
    unseen in training stay out of the known set, so they take the missing-value branch as in
    scikit-learn, where the encoder turns them into NaN).
    """
    import numpy as np

    is_cat = np.asarray(model.is_categorical_, dtype=bool)
    order = np.r_[np.flatnonzero(is_cat), np.flatnonzero(~is_cat)]  # transformed column -> input column
    categories = model._preprocessor.named_transformers_["encoder"].categories_
    inner = ~flat["is_leaf"]
    feature = flat["feature"].copy()
    feature[inner] = order[flat["feature"][inner]]

    def rekey(row: np.ndarray, raw_codes: np.ndarray) -> np.ndarray:
        out = np.zeros(8, dtype=np.uint32)
        for encoded, raw in enumerate(raw_codes.tolist()):
            if (int(row[encoded >> 5]) >> (encoded & 31)) & 1:
                code = int(raw)
                if not 0 <= code < 256:
                    raise ArtifactError(f"category code {code} outside 0..255")
                out[code >> 5] |= np.uint32(1 << (code & 31))
        return out

    new_bitsets = cat_bitsets.copy()
    cat_nodes = np.flatnonzero(flat["is_categorical"] & inner)
    for node in cat_nodes.tolist():
        transformed = int(flat["feature"][node])  # categorical columns come first: its position among them
        new_bitsets[flat["bitset"][node]] = rekey(cat_bitsets[flat["bitset"][node]], categories[transformed])
    new_known = known.copy()
    new_map = np.zeros(len(order), dtype=np.uint32)
    for transformed, column in enumerate(order.tolist()):
        new_map[column] = f_idx_map[transformed]
        if transformed < len(categories):
            new_known[f_idx_map[transformed]] = rekey(known[f_idx_map[transformed]], categories[transformed])
    return {**flat, "feature": feature}, new_bitsets, new_known, new_map


# -- the served model -------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _softmax(x: np.ndarray) -> np.ndarray:
    import numpy as np

    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class ServingModel:
    version: str
    threshold: float
    metadata: dict[str, Any]
    vocabulary: Vocabulary
    binary: TreeEnsemble
    category: TreeEnsemble
    category_labels: tuple[str, ...]  # the attack categories, in the category head's output order
    category_bias: np.ndarray  # additive log-odds adjustments, chosen on validation data
    sha256: str = ""
    load_seconds: float | None = None  # download + verify + warm, set by the snapshot loader

    # -- scoring ---------------------------------------------------------------------------

    def to_matrix(self, flows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return to_matrix(flows, vocabulary=self.vocabulary)

    def predict(self, flows: Sequence[Mapping[str, Any]], *, explain: bool = False, top: int = 5) -> list[Prediction]:
        """Validate (400 listing every bad field) and score flows in input order."""
        return self.predict_matrix(self.to_matrix(flows), explain=explain, top=top)

    def predict_clean(self, flows: Sequence[Mapping[str, Any]], *, explain: bool = False, top: int = 5) -> list[Prediction]:
        """Score flows already returned by validate_flows (skips a second validation)."""
        return self.predict_matrix(matrix_from_clean(flows, vocabulary=self.vocabulary), explain=explain, top=top)

    def verdicts_clean(self, flows: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        """Verdicts of flows already returned by validate_flows, for storing them as events.

        Same verdicts as predict_clean, but the category head (most of the model's trees) runs
        only on the flows the binary head flags: a benign flow's category is Normal whatever
        that head says, and an event keeps no category distribution.
        """
        import numpy as np

        if not flows:
            return []
        X = matrix_from_clean(flows, vocabulary=self.vocabulary)
        p_attack = self._attack_probability(X)
        flagged = np.flatnonzero(p_attack >= self.threshold)
        served = np.zeros(len(X), dtype=np.intp)
        if len(flagged):
            served[flagged] = self._category_probabilities(X[flagged]).argmax(axis=1) + 1
        labels = self._served_labels
        version = self.version
        return [
            Verdict(is_attack=code != 0, probability=probability, attack_cat=labels[code], model_version=version)
            for code, probability in zip(served.tolist(), np.round(p_attack, 6).tolist(), strict=True)
        ]

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(attack) per row, P(category | attack) per row over category_labels, adjusted)."""
        return self._attack_probability(X), self._category_probabilities(X)

    def _attack_probability(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(self.binary.raw_predict(X)[:, 0])

    def _category_probabilities(self, X: np.ndarray) -> np.ndarray:
        return _softmax(self.category.raw_predict(X) + self.category_bias)

    @property
    def _served_labels(self) -> tuple[str, ...]:
        """attack_cat by served code: 0 is Normal, i > 0 is category_labels[i - 1]."""
        return ("Normal", *self.category_labels)

    def predict_matrix(self, X: np.ndarray, *, explain: bool = False, top: int = 5) -> list[Prediction]:
        return [
            Prediction(
                is_attack=r["is_attack"],
                probability=r["probability"],
                attack_cat=r["attack_cat"],
                category_probabilities=r["category_probabilities"],
                model_version=r["model_version"],
                contributions=r.get("top_features"),
            )
            for r in self.results(X, explain=explain, top=top)
        ]

    def results(self, X: np.ndarray, *, explain: bool = False, top: int = 5) -> list[dict[str, Any]]:
        """Prediction.to_json() of every row, built straight from the arrays (no object per flow)."""
        p_attack, p_cat = self.scores(X)
        results = self.results_from_scores(p_attack, p_cat)
        if explain:
            for result, contributions in zip(results, self.explain(X, top=top), strict=True):
                result["top_features"] = contributions
        return results

    def results_from_scores(self, p_attack: np.ndarray, p_cat: np.ndarray) -> list[dict[str, Any]]:
        import numpy as np

        flagged = p_attack >= self.threshold
        best = p_cat.argmax(axis=1)
        labels = self._served_labels
        # The ten-way distribution in one array, rounded in numpy: building 10,000 results stays cheap.
        full = np.round(np.hstack([(1.0 - p_attack)[:, None], p_attack[:, None] * p_cat]), 6).tolist()
        probabilities = np.round(p_attack, 6).tolist()
        served = np.where(flagged, best + 1, 0).tolist()
        version = self.version
        results = [
            {
                "is_attack": code != 0,
                "probability": probability,
                "attack_cat": labels[code],
                "category_probabilities": dict(zip(labels, row, strict=True)),
                "model_version": version,
            }
            for code, probability, row in zip(served, probabilities, full, strict=True)
        ]
        return results

    def warm(self) -> None:
        """Build the compiled large-batch scorers and the one-flow walk's lists now (at load), not
        on the first request that needs them."""
        for head in (self.binary, self.category):
            head._compiled()
            head._lists()

    def explain(self, X: np.ndarray, *, top: int = 5) -> list[list[dict[str, Any]]]:
        """Top features by occlusion: each feature set to 'missing' in turn, the change in attack log-odds.

        HistGradientBoosting routes a missing value the way the training data with missing values
        went (or to the larger child), so this measures how much the flow's own value moved the
        score. Bounded: 41 extra rows per flow, scored in one batch.
        """
        import numpy as np

        n, d = X.shape
        base = self.binary.raw_predict(X)[:, 0]
        occluded = np.repeat(X.astype(np.float64), d, axis=0)
        occluded[np.arange(n * d), np.tile(np.arange(d), n)] = np.nan
        delta = base[:, None] - self.binary.raw_predict(occluded)[:, 0].reshape(n, d)
        result = []
        for i in range(n):
            order = np.argsort(-np.abs(delta[i]))[:top]
            result.append([{"feature": FEATURE_COLUMNS[j], "contribution": round(float(delta[i, j]), 4)} for j in order])
        return result

    def info(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "version": self.version,
            "threshold": self.threshold,
            "sha256": self.sha256,
            "features": list(FEATURE_COLUMNS),
            "categorical": {c: [*self.vocabulary.categories[c], "other"] for c in CATEGORICAL},
            "categories": list(ATTACK_CATEGORIES),
            "training_data_sha256": meta.get("training_data", {}).get("sha256"),
            "training_data": meta.get("training_data"),
            "metrics": meta.get("metrics"),
            "created_at": meta.get("created_at"),
            "algorithm": meta.get("algorithm"),
        }


# -- the artifact -----------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump_artifact(*, binary: TreeEnsemble, category: TreeEnsemble) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    arrays: dict[str, Any] = {**binary.to_arrays("binary"), **category.to_arrays("category")}
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def load_artifact(data: bytes, metadata: Mapping[str, Any], *, expected_sha256: str, expected_version: str | None = None) -> ServingModel:
    """Verify and read an artifact: the sha256 first, then arrays only (allow_pickle=False).

    expected_version: the registry folder it was read from; its metadata.json must name that version
    (a copied or edited folder otherwise serves, and gets promoted, under another version's name)."""
    import numpy as np

    actual = sha256_hex(data)
    if not expected_sha256 or actual != expected_sha256:
        raise ArtifactError(f"artifact sha256 {actual} does not match the expected {expected_sha256 or '(none)'}; refusing to load it")
    if expected_version is not None and str(metadata.get("version")) != expected_version:
        raise ArtifactError(f"its metadata.json names version {metadata.get('version')!r}, not {expected_version!r}")
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"artifact format {metadata.get('format')!r} is not {FORMAT!r}")
    if metadata.get("sha256") != actual:
        raise ArtifactError("metadata.json names another artifact")
    if tuple(metadata.get("features", ())) != FEATURE_COLUMNS:
        raise ArtifactError("artifact was trained on another feature set; retrain it with this code")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    binary = TreeEnsemble.from_arrays(arrays, "binary")
    category = TreeEnsemble.from_arrays(arrays, "category")
    labels = tuple(str(c) for c in metadata["category_labels"])
    if not set(labels) <= set(ATTACK_CATEGORIES) or len(labels) != category.n_outputs:
        raise ArtifactError("category labels do not match the category head")
    bias = np.asarray(metadata.get("category_bias") or [0.0] * len(labels), dtype=np.float64)
    if bias.shape != (len(labels),) or binary.n_outputs != 1:
        raise ArtifactError("artifact heads have the wrong shape")
    if not np.isfinite(bias).all():  # a NaN adjustment makes every category probability NaN (null in JSON)
        raise ArtifactError("category_bias holds a non-finite adjustment")
    threshold = float(metadata["threshold"])
    if not 0.0 < threshold <= 1.0:  # NaN included: p >= NaN flags nothing, 0 flags everything
        raise ArtifactError(f"threshold {metadata['threshold']!r} is not in (0, 1]")
    return ServingModel(
        version=str(metadata["version"]),
        threshold=threshold,
        metadata=dict(metadata),
        vocabulary=Vocabulary.from_json(metadata["vocabulary"]),
        binary=binary,
        category=category,
        category_labels=labels,
        category_bias=bias,
        sha256=actual,
    )


# -- the registry in the models bucket ----------------------------------------------------------


def model_prefix(version: str) -> str:
    return f"{MODELS_PREFIX}{version}/"


def valid_version(version: str) -> bool:
    """A version name the registry can publish, promote and serve: one path segment of [A-Za-z0-9._-]-like
    characters, at most 64, not starting with a dot."""
    return 0 < len(version) <= 64 and all(ch.isalnum() or ch in "-_." for ch in version) and not version.startswith(".")


def parse_json_object(data: bytes) -> dict[str, Any] | None:
    """A registry file's JSON object; None when it is truncated, not UTF-8, not JSON or not an object
    (json's own errors are ValueErrors no caller of the registry should see)."""
    try:
        value = json.loads(data)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def read_serving_pointer(*, blobs: BlobStore, bucket: str) -> dict[str, Any] | None:
    try:
        pointer = parse_json_object(blobs.get(bucket, SERVING_POINTER))
    except NotFoundError:
        return None
    if pointer is None or not pointer.get("version") or not pointer.get("sha256") or not valid_version(str(pointer["version"])):
        raise DependencyError(f"{SERVING_POINTER} in bucket {bucket!r} is malformed; promote a version again")
    return pointer


def load_version(
    *, blobs: BlobStore, bucket: str, version: str, expected_sha256: str, expected_metadata_sha256: str | None
) -> ServingModel:
    """`expected_metadata_sha256`: the pointer's pin of metadata.json (threshold, vocabulary, labels and
    adjustments are not in model.npz); None for a pointer written before the pin existed."""
    prefix = model_prefix(version)
    try:
        raw_metadata = blobs.get(bucket, prefix + "metadata.json")
        data = blobs.get(bucket, prefix + ARTIFACT_NAME)
    except NotFoundError as exc:
        raise DependencyError(f"model version {version!r} is promoted but incomplete: {exc.message}") from None
    if expected_metadata_sha256 is not None and sha256_hex(raw_metadata) != expected_metadata_sha256:
        raise DependencyError(
            f"model version {version!r} cannot be loaded: its metadata.json changed since it was promoted"
            f" (sha256 {sha256_hex(raw_metadata)}, promoted {expected_metadata_sha256}); promote it again to accept the change"
        )
    metadata = parse_json_object(raw_metadata)
    if metadata is None:
        raise DependencyError(f"model version {version!r} cannot be loaded: its metadata.json is not a JSON object (truncated?)")
    try:
        return load_artifact(data, metadata, expected_sha256=expected_sha256, expected_version=version)
    except (ArtifactError, KeyError, ValueError) as exc:
        raise DependencyError(f"model version {version!r} cannot be loaded: {exc}") from None


def load_serving_model(*, blobs: BlobStore, bucket: str) -> ServingModel:
    """The promoted model; DependencyError (503) naming the training command when none is published."""
    pointer = read_serving_pointer(blobs=blobs, bucket=bucket)
    if pointer is None:
        raise DependencyError(f"no flow model is published in bucket {bucket!r}; train and promote one with: {TRAIN_COMMAND}")
    return load_version(blobs=blobs, bucket=bucket, **pinned(pointer))


def pinned(pointer: Mapping[str, Any]) -> dict[str, Any]:
    """load_version's arguments for what a serving pointer names and pins."""
    metadata_sha256 = pointer.get("metadata_sha256")
    return {
        "version": str(pointer["version"]),
        "expected_sha256": str(pointer["sha256"]),
        "expected_metadata_sha256": str(metadata_sha256) if metadata_sha256 is not None else None,
    }


FLOW_MODEL_SNAPSHOT = "flow-model"


def serving_snapshot(
    snapshots: SnapshotCache, *, blobs: Callable[[], BlobStore], bucket: str, refresh_seconds: float
) -> Snapshot[ServingModel]:
    """The instance's "flow-model" snapshot in the runtime's cache (`runtime.snapshots`).

    `flows/serving.json` is re-read every `refresh_seconds` (DETECT_MODEL_REFRESH_SECONDS) and a
    newly promoted version is loaded without a redeploy; `.get()` raises DependencyError (503)
    naming the training command while none is promoted. A missing or unreadable pointer is looked
    for again within a few seconds rather than a whole refresh."""
    load = serving_model_loader(blobs=blobs, bucket=bucket)
    return snapshots.snapshot(FLOW_MODEL_SNAPSHOT, load=load, refresh_seconds=refresh_seconds, retry_seconds=min(5.0, refresh_seconds))


def serving_model_loader(*, blobs: Callable[[], BlobStore], bucket: str) -> Load[ServingModel]:
    """The loader of the runtime's "flow-model" snapshot (see `Runtime.flow_model`).

    Each check reads only the small serving pointer; the artifact is downloaded, verified and
    warmed again only when the promoted version or sha256 changes. With no model promoted it
    raises DependencyError (503) naming the training command; a failed re-check keeps serving
    the model held (the snapshot cache's rule).
    """

    def load(held: str | None) -> Loaded[ServingModel] | None:
        store = blobs()
        pointer = read_serving_pointer(blobs=store, bucket=bucket)
        if pointer is None:
            raise DependencyError(f"no flow model is published in bucket {bucket!r}; train and promote one with: {TRAIN_COMMAND}")
        pin = pinned(pointer)
        key = f"{pin['version']}@{pin['expected_sha256']}@{pin['expected_metadata_sha256']}"
        if key == held:
            return None
        started = time.perf_counter()
        model = load_version(blobs=store, bucket=bucket, **pin)
        model.warm()
        model.load_seconds = time.perf_counter() - started
        return Loaded(model, key)

    return load
