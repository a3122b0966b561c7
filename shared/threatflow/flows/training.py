"""Training the flow model on UNSW-NB15 (either layout), with honest evaluation.

Splits (all stratified by attack_cat, seeded):
- a held-out test split (`holdout`, default 20%) that nothing is tuned on; its figures are
  reported as `metrics.heldout` and describe the served model;
- the rest is the training data: stratified K-fold cross-validation on it gives the model
  comparison (seed-style RandomForest vs HistGradientBoosting) and out-of-fold predictions, the
  validation data on which the served threshold and the per-category adjustments are chosen;
- the served heads are then fitted with the same settings on all rows (training + held-out:
  `TrainConfig.final_fit="all"`, the default, because the learning curve still rises at 80%) or on
  the training data only (`"train"`); the held-out figures always come from heads fitted on the
  training data, so with "all" they are an estimate for the served heads.

Needs numpy and scikit-learn (the `ml` extra); only training and the detect function import it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.flows.features import (
    ATTACK_CATEGORIES,
    CATEGORICAL,
    FEATURE_COLUMNS,
    NUMERIC_COLUMNS,
    RAW_COLUMNS,
    Blanks,
    FieldError,
    Vocabulary,
    canonical_name,
    categorical_indices,
    category_named,
    validate_flow,
)
from threatflow.flows.model import FORMAT, ServingModel, TreeEnsemble, dump_artifact, load_artifact, sha256_hex

if TYPE_CHECKING:
    import numpy as np

# Issue 9's acceptance targets at the served threshold; validation reports whether they are reachable.
ACCEPTANCE_MAX_FPR = 0.01
ACCEPTANCE_MIN_DETECTION = 0.97
# The served threshold is the lowest whose out-of-fold validation FPR stays at or under this: the
# product's FPR budget itself (issue 9: <= 1.0 %). The margin comes from the refit: heads fitted on
# all rows score normal flows lower than the CV models the threshold is read from (the learning
# curve's transfer check: a rule of 0.8 % gave 0.70 % held-out FPR on bigger heads, against 0.83 %
# on heads of the CV's size); a stricter rule only trades detection away (0.8 %: 95.9 % out-of-fold).
TARGET_VALIDATION_FPR = ACCEPTANCE_MAX_FPR
FINAL_FIT_CHOICES = ("all", "train")
FINAL_FIT_EVIDENCE = "tests/perf/bench_learning_curve.py"


# -- reading the data --------------------------------------------------------------------


@dataclass
class Dataset:
    X: np.ndarray  # float32, FEATURE_COLUMNS order, categoricals as vocabulary codes
    label: np.ndarray  # int8: 1 attack, 0 normal
    category: np.ndarray  # int16 index into ATTACK_CATEGORIES
    vocabulary: Vocabulary
    sha256: str  # of the input bytes, files in the given order
    sources: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # reason → rows dropped
    blanks: dict[str, int] = field(default_factory=dict)  # column → blank cells read as missing (raw layout)

    @property
    def rows(self) -> int:
        return len(self.label)


def normalise_category(value: Any, label: int) -> str | None:
    """The dataset's attack_cat spellings (' Fuzzers', 'Backdoors', blank for normal) → the 10 labels."""
    text = str(value or "").strip()
    if not text:
        return "Normal" if label == 0 else None
    return category_named(text)


def _open_text(path: Path, digest: Any) -> Iterator[str]:
    raw = path.read_bytes()
    digest.update(raw)
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # cut short or corrupt: name the file
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    yield from io.StringIO(data.decode("utf-8", errors="replace"), newline="")


def read_feature_names(features_csv: Path | None) -> list[str]:
    """Raw layout column names from NUSW-NB15_features.csv (column 'Name'), or the built-in list."""
    if features_csv is None:
        return list(RAW_COLUMNS)
    with open(features_csv, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        key = next((k for k in reader.fieldnames or [] if k.strip().lower() == "name"), None)
        if key is None:
            raise ValueError(f"{features_csv}: no 'Name' column")
        names = [row[key] for row in reader]
    if len(names) != len(RAW_COLUMNS):
        raise ValueError(f"{features_csv}: expected {len(RAW_COLUMNS)} names, found {len(names)}")
    return names


def detect_layout(first_line: str) -> str:
    """'partitioned' when the first line is a header naming the features, else 'raw'."""
    cells = [canonical_name(c) for c in next(csv.reader([first_line]))]
    return "partitioned" if "proto" in cells and "service" in cells else "raw"


def iter_rows(paths: Sequence[Path], *, layout: str | None, features_csv: Path | None, digest: Any) -> Iterator[dict[str, str]]:
    raw_names = read_feature_names(features_csv)
    for path in paths:
        lines = _open_text(Path(path), digest)
        first = next(lines, None)
        if first is None:
            continue
        kind = layout or detect_layout(first)
        if kind == "partitioned":
            reader = csv.reader(lines)
            header = next(csv.reader([first]))
        elif kind == "raw":
            reader = csv.reader(_chain([first], lines))
            header = raw_names
        else:
            raise ValueError(f"unknown layout {kind!r}; use partitioned or raw")
        width = len(header)
        for cells in reader:
            if len(cells) == width:
                yield dict(zip(header, cells, strict=True))
            elif cells:
                yield {"__bad_width__": str(len(cells))}


def _chain(first: Iterable[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


def read_dataset(
    paths: Sequence[str | Path],
    *,
    layout: str | None = None,
    features_csv: str | Path | None = None,
    min_category_count: int = 5,
) -> Dataset:
    digest = hashlib.sha256()
    rows = iter_rows([Path(p) for p in paths], layout=layout, features_csv=Path(features_csv) if features_csv else None, digest=digest)
    return _dataset_from_rows(
        rows, sha256_of=lambda: digest.hexdigest(), sources=[str(p) for p in paths], min_category_count=min_category_count
    )


def dataset_from_flows(
    flows: Iterable[Mapping[str, Any]], *, min_category_count: int = 5, source: str = "flows", vocabulary: Vocabulary | None = None
) -> Dataset:
    """Labelled flows (dicts in either layout with label and attack_cat) → a Dataset, e.g. stored flow events.
    With `vocabulary` (a trained model's) the categoricals are coded as that model reads them, to score it."""
    digest = hashlib.sha256()

    def rows() -> Iterator[Mapping[str, Any]]:
        for flow in flows:
            digest.update(json.dumps(flow, sort_keys=True, default=str).encode())
            yield flow

    return _dataset_from_rows(
        rows(), sha256_of=lambda: digest.hexdigest(), sources=[source], min_category_count=min_category_count, vocabulary=vocabulary
    )


def _dataset_from_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    sha256_of: Callable[[], str],
    sources: list[str],
    min_category_count: int,
    vocabulary: Vocabulary | None = None,
) -> Dataset:
    import numpy as np

    numeric = array("f")  # float32 as they are read, row after row: a list of float lists cost ~1.2 KB a row
    cats: dict[str, list[str]] = {c: [] for c in CATEGORICAL}
    labels: list[int] = []
    categories: list[int] = []
    skipped: Counter[str] = Counter()
    blanks: Counter[str] = Counter()
    category_index = {c: i for i, c in enumerate(ATTACK_CATEGORIES)}
    for row in rows:
        if "__bad_width__" in row:
            skipped["wrong number of columns"] += 1
            continue
        errors: list[FieldError] = []
        clean = validate_flow(0, row, errors, blanks=Blanks.RAW_LAYOUT)
        if clean is None:
            skipped[f"{errors[0].field}: {errors[0].reason}"[:80]] += 1
            continue
        label = _label(clean.get("label"))
        if label is None:
            skipped["label: missing or not 0/1"] += 1
            continue
        category = normalise_category(clean.get("attack_cat"), label)
        if category is None or (category == "Normal") != (label == 0):
            skipped["attack_cat: unknown or disagrees with label"] += 1
            continue
        values = [clean[c] for c in NUMERIC_COLUMNS]
        for column, value in zip(NUMERIC_COLUMNS, values, strict=True):
            if math.isnan(value):  # a blank cell in the raw files
                blanks[column] += 1
        numeric.extend(values)
        for c in CATEGORICAL:
            cats[c].append(clean[c])
        labels.append(label)
        categories.append(category_index[category])
    if not labels:
        raise ValueError(f"no usable rows in {', '.join(sources)}; skipped: {dict(skipped) or 'none'}")
    vocabulary = vocabulary or Vocabulary.fit(cats, min_count=min_category_count)
    X = np.empty((len(labels), len(FEATURE_COLUMNS)), dtype=np.float32)
    numeric_positions = [FEATURE_COLUMNS.index(c) for c in NUMERIC_COLUMNS]
    X[:, numeric_positions] = np.frombuffer(numeric, dtype=np.float32).reshape(len(labels), len(NUMERIC_COLUMNS))
    for column in CATEGORICAL:
        X[:, FEATURE_COLUMNS.index(column)] = [vocabulary.code(column, v) for v in cats[column]]
    return Dataset(
        X=X,
        label=np.asarray(labels, dtype=np.int8),
        category=np.asarray(categories, dtype=np.int16),
        vocabulary=vocabulary,
        sha256=sha256_of(),
        sources=sources,
        skipped=dict(skipped),
        blanks=dict(blanks),
    )


def _label(value: Any) -> int | None:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return number if number in (0, 1) else None


# -- models ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    holdout: float = 0.2
    cv_folds: int = 3
    seed: int = 7
    # Binary head, chosen by 3-fold out-of-fold detection at 0.8% FPR on the dev data's training part,
    # confirmed with a second fold seed: 63 leaves with min 10 rows per leaf gained ~0.3 points of
    # detection over 31 leaves; balanced class weights a little ROC-AUC. More trees / a lower rate
    # (0.05 x 400-600), 127 leaves, column subsampling and ratio features did not help.
    learning_rate: float = 0.1
    max_iter: int = 200
    max_leaf_nodes: int = 63
    min_samples_leaf: int = 10
    l2_regularization: float = 0.0
    binary_class_weight: str | None = "balanced"
    category_max_iter: int = 60
    category_learning_rate: float = 0.2
    target_fpr: float = TARGET_VALIDATION_FPR
    compare_random_forest: bool = True
    rf_trees: int = 100
    # Which rows the served heads are fitted on, after cross-validation, threshold and held-out
    # reporting are done: "train" (the training part, whose held-out figures then describe the served
    # heads exactly) or "all" (training part + held-out rows; the held-out figures come from the heads
    # fitted on the training part and are an estimate for the served ones). "all" by default: on
    # the dev data's learning curve (FINAL_FIT_EVIDENCE; same held-out rows, two subset draws),
    # heads fitted on 80% rather than 50% of the rows gained held-out ROC-AUC +0.0004-0.0005, detection
    # at 1% FPR +0.4-1.0 points, FPR for 97% detection -0.4-0.5 points and macro-F1 +0.035-0.046, still
    # rising from 65% to 80% (paired bootstrap over the held-out rows: the gains held in all 200
    # resamples); it costs one more fit (~+20% CPU).
    final_fit: str = "all"
    n_jobs: int = 4  # parallel fits (folds + served heads); processes, so they also spread over cores
    threads: int = 1  # OpenMP threads for the boosting; 1 is fastest when other work shares the cores

    @classmethod
    def quick(cls) -> TrainConfig:
        """Small and fast (tests, smoke runs): fewer trees and folds."""
        return cls(cv_folds=3, max_iter=40, category_max_iter=30, compare_random_forest=False)


def _hgb(
    config: TrainConfig,
    *,
    max_iter: int,
    class_weight: Any = None,
    learning_rate: float | None = None,
    max_leaf_nodes: int = 31,
    min_samples_leaf: int = 20,
) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    mask = [False] * len(FEATURE_COLUMNS)
    for i in categorical_indices():
        mask[i] = True
    return HistGradientBoostingClassifier(
        learning_rate=learning_rate or config.learning_rate,
        max_iter=max_iter,
        max_leaf_nodes=max_leaf_nodes,
        min_samples_leaf=min_samples_leaf,
        l2_regularization=config.l2_regularization,
        categorical_features=mask,
        early_stopping=False,
        class_weight=class_weight,
        random_state=config.seed,
    )


def _binary_model(config: TrainConfig) -> Any:
    return _hgb(
        config,
        max_iter=config.max_iter,
        class_weight=config.binary_class_weight,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=config.min_samples_leaf,
    )


def _seed_forest(config: TrainConfig) -> Any:
    """The system we replace: RandomForest on the numeric fields only (no proto/service/state)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=config.rf_trees, n_jobs=config.n_jobs, random_state=config.seed)


_NUMERIC_POSITIONS = [i for i, c in enumerate(FEATURE_COLUMNS) if c not in CATEGORICAL]


def _stratify_key(category: np.ndarray, label: np.ndarray, folds: int) -> np.ndarray:
    """attack_cat, with categories too rare to appear in every fold folded into the most common of their kind."""
    import numpy as np

    counts = Counter(category.tolist())
    rare = np.asarray([counts[c] < 2 * folds for c in category.tolist()])
    commonest_attack = max((c for c in counts if c > 0), key=lambda c: counts[c], default=1)
    return np.where(rare, np.where(label == 1, commonest_attack, 0), category)


# -- metrics ------------------------------------------------------------------------------


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    has_both = len(np.unique(y)) == 2
    return {
        "roc_auc": round(float(roc_auc_score(y, p)), 5) if has_both else float("nan"),
        "pr_auc": round(float(average_precision_score(y, p)), 5) if has_both else float("nan"),
        "accuracy": round((tp + tn) / max(1, len(y)), 5),
        "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 5),
        "fpr": round(fp / max(1, fp + tn), 5),
        "detection_rate": round(tp / max(1, tp + fn), 5),
        "precision": round(tp / max(1, tp + fp), 5),
        "threshold": round(float(threshold), 6),
        "n": len(y),
    }


def category_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Per-category recall and F1, macro-F1 over the categories present in `true` (all 10 in UNSW-NB15)."""
    present = sorted(set(true.tolist()))
    recall: dict[str, float] = {}
    f1: dict[str, float] = {}
    for c in present:
        tp = int(((pred == c) & (true == c)).sum())
        support = int((true == c).sum())
        predicted = int((pred == c).sum())
        recall[ATTACK_CATEGORIES[c]] = round(tp / max(1, support), 4)
        f1[ATTACK_CATEGORIES[c]] = round(2 * tp / max(1, support + predicted), 4)
    return {
        "macro_f1": round(sum(f1.values()) / max(1, len(f1)), 4),
        "accuracy": round(float((true == pred).mean()), 5),
        "per_category_recall": recall,
        "per_category_f1": f1,
    }


def _macro_f1_fast(true: np.ndarray, pred: np.ndarray, k: int) -> float:
    import numpy as np

    confusion = np.bincount(true * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = support > 0
    f1 = 2 * tp[present] / np.maximum(1, support[present] + predicted[present])
    return float(f1.mean())


def operating_points(y: np.ndarray, p: np.ndarray, *, fprs: Sequence[float] = (0.005, 0.008, 0.01, 0.02)) -> dict[str, Any]:
    """Detection at a few false-positive rates, and the FPR that the acceptance detection rate needs.

    On validation scores this says whether the acceptance targets (FPR <= 1% with detection >= 97%)
    are reachable at any threshold, whatever threshold rule is served.
    """
    import numpy as np

    negatives, positives = p[y == 0], p[y == 1]
    detection: dict[str, float] = {}
    for fpr in fprs:
        t = choose_threshold(y, p, target_fpr=fpr)
        detection[f"{fpr:.3f}"] = round(float((positives >= t).mean()) if len(positives) else float("nan"), 5)
    if len(positives) and len(negatives):
        # the highest threshold still detecting ACCEPTANCE_MIN_DETECTION of the attacks
        cut = np.sort(positives)[int(np.floor((1 - ACCEPTANCE_MIN_DETECTION) * len(positives)))]
        fpr_needed = round(float((negatives >= cut).mean()), 5)
    else:
        fpr_needed = float("nan")
    return {
        "detection_at_fpr": detection,
        f"fpr_for_detection_{ACCEPTANCE_MIN_DETECTION:.2f}": fpr_needed,
        "acceptance_reachable": bool(fpr_needed <= ACCEPTANCE_MAX_FPR),
    }


def feature_conflicts(X: np.ndarray, label: np.ndarray, category: np.ndarray) -> dict[str, Any]:
    """How much error no model of these features can avoid: identical feature rows with different labels.

    For each group of identical rows, every row outside the group's most common label is an error
    for any function of the features, so `*_min_error_rate` bounds the error rate from below (on
    this data; unseen flows have their own twins).
    """
    import numpy as np

    rows = np.ascontiguousarray(X)
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()  # one value per row
    _, group, size = np.unique(as_bytes, return_inverse=True, return_counts=True)
    group = group.ravel()
    out: dict[str, Any] = {
        "rows": len(rows),
        "distinct_rows": len(size),
        "rows_with_an_identical_twin": int((size[group] > 1).sum()),
    }
    for name, target in (("binary", label), ("category", category)):
        k = int(target.max()) + 1 if len(target) else 1
        counts = np.bincount(group * k + target.astype(np.int64), minlength=len(size) * k).reshape(len(size), k)
        conflicting = (counts > 0).sum(axis=1) > 1
        errors = int((size - counts.max(axis=1)).sum())
        out[name] = {
            "rows_in_conflicting_groups": int(size[conflicting].sum()),
            "min_errors": errors,
            "min_error_rate": round(errors / max(1, len(rows)), 5),
        }
    # the best any function of the features could do on this data: every row gets its group's majority
    majority = counts.argmax(axis=1)[group]
    out["category"]["max_macro_f1"] = round(_macro_f1_fast(category.astype(np.int64), majority, counts.shape[1]), 4)
    return out


def choose_threshold(y: np.ndarray, p: np.ndarray, *, target_fpr: float) -> float:
    """The lowest threshold whose FPR on (validation) y stays ≤ target_fpr: the most detection within it."""
    import numpy as np

    negatives = np.sort(p[y == 0])[::-1]
    if len(negatives) == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * len(negatives)))
    # flagged = p >= t; t just above the (allowed+1)-th highest negative score
    cut = negatives[allowed] if allowed < len(negatives) else 0.0
    return float(np.nextafter(cut, 1.0))


def served_categories(p_attack: np.ndarray, p_cat: np.ndarray, threshold: float, head_labels: Sequence[int]) -> np.ndarray:
    import numpy as np

    labels = np.asarray(head_labels)
    return np.where(p_attack >= threshold, labels[p_cat.argmax(axis=1)], 0)


def tune_category_bias(
    true: np.ndarray,
    p_attack: np.ndarray,
    log_p_cat: np.ndarray,
    threshold: float,
    head_labels: Sequence[int],
    *,
    passes: int = 3,
    limit: float = 2.0,
    min_gain: float = 0.002,
) -> np.ndarray:
    """Additive log-odds per category, by coordinate ascent on validation macro-F1 (10-way, Normal included).

    Regularised because the rare categories (Worms: ~20 training rows) make macro-F1 noisy: a change
    is kept only if it gains at least `min_gain`, on a coarse grid within ±`limit`. Measured by tuning
    on two out-of-fold thirds and scoring the third: +0.015 macro-F1 over no adjustment, where the
    earlier fine ±4 grid accepting any gain reached +0.009 (it fitted noise in the small classes).
    """
    import numpy as np

    k = len(ATTACK_CATEGORIES)
    labels = np.asarray(head_labels)
    flagged = p_attack >= threshold
    bias = np.zeros(log_p_cat.shape[1])
    grid = np.linspace(-limit, limit, 9)

    def score(b: np.ndarray) -> float:
        pred = np.where(flagged, labels[(log_p_cat + b).argmax(axis=1)], 0)
        return _macro_f1_fast(true, pred, k)

    best = score(bias)
    for _ in range(passes):
        improved = False
        for j in range(len(bias)):
            for value in grid:
                trial = bias.copy()
                trial[j] = value
                s = score(trial)
                if s > best + min_gain:
                    best, bias, improved = s, trial, True
        if not improved:
            break
    return bias


# -- training -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    version: str
    artifact: bytes
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    model_card: str
    model: ServingModel
    seconds: float

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "model.npz": self.artifact,
            "metadata.json": json.dumps(self.metadata, indent=2, sort_keys=True).encode(),
            "metrics.json": json.dumps(self.metrics, indent=2, sort_keys=True).encode(),
            "model_card.md": self.model_card.encode(),
        }
        written = []
        for name, data in files.items():
            (out / name).write_bytes(data)
            written.append(out / name)
        return written


def _fit_category(config: TrainConfig, X: np.ndarray, category: np.ndarray) -> tuple[Any, list[int]]:
    """The category head on attack rows only (balanced class weights: rare categories matter for macro-F1)."""
    import numpy as np

    attacks = category > 0
    labels = sorted(set(category[attacks].tolist()))
    if len(labels) < 2:
        raise ValueError("training needs at least two attack categories")
    model = _hgb(config, max_iter=config.category_max_iter, class_weight="balanced", learning_rate=config.category_learning_rate)
    model.fit(X[attacks], category[attacks])
    assert list(model.classes_) == labels, "class order"
    return model, [int(c) for c in np.asarray(labels)]


def _fit_fold(
    config: TrainConfig, X: np.ndarray, y: np.ndarray, category: np.ndarray, X_val: np.ndarray, head_labels: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """One cross-validation fold: out-of-fold P(attack) and category log-probabilities (columns = head_labels)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=config.threads):
        binary = _binary_model(config).fit(X, y)
        p = binary.predict_proba(X_val)[:, 1]
        category_model, labels = _fit_category(config, X, category)
        logp = _log_softmax_head(category_model, X_val)
    if labels == head_labels:
        return p, logp
    filled = np.full((len(X_val), len(head_labels)), -30.0)  # a rare category missing from this fold's training part
    column = {c: j for j, c in enumerate(head_labels)}
    for j, c in enumerate(labels):
        filled[:, column[c]] = logp[:, j]
    return p, filled


def _fit_heads(config: TrainConfig, X: np.ndarray, y: np.ndarray, category: np.ndarray) -> tuple[Any, Any, list[int]]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=config.threads):
        binary = _binary_model(config).fit(X, y)
        category_model, labels = _fit_category(config, X, category)
    return binary, category_model, labels


def _package_heads(heads: tuple[Any, Any, list[int]]) -> tuple[bytes, list[int]]:
    """Fitted sklearn heads → the served artifact (numeric arrays) and the category head's labels."""
    binary_model, category_model, labels = heads
    category_trees = TreeEnsemble.from_sklearn(category_model)
    if category_trees.n_outputs == 1:
        raise ValueError("the category head needs at least three attack categories in the training data")
    return dump_artifact(binary=TreeEnsemble.from_sklearn(binary_model), category=category_trees), labels


def _bias_for(labels: Sequence[int], head_labels: Sequence[int], bias: np.ndarray) -> list[float]:
    """The validation-tuned log-odds adjustments in `labels` order (0 for a category the CV never saw)."""
    by_label = dict(zip(head_labels, bias.tolist(), strict=True))
    return [round(float(by_label.get(c, 0.0)), 6) for c in labels]


def _log_softmax_head(model: Any, X: np.ndarray) -> np.ndarray:
    import numpy as np

    raw = model._raw_predict(X)
    if raw.shape[1] == 1:  # two categories: sklearn keeps one logit
        raw = np.hstack([np.zeros_like(raw), raw])
    z = raw - raw.max(axis=1, keepdims=True)
    return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))


def train(
    dataset: Dataset,
    *,
    config: TrainConfig | None = None,
    version: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> TrainResult:
    """Compare, cross-validate, choose the threshold and category adjustments, fit and package."""
    from threadpoolctl import threadpool_limits

    config = config or TrainConfig()
    with threadpool_limits(limits=config.threads):
        return _train(dataset, config=config, version=version, log=log)


def _train(dataset: Dataset, *, config: TrainConfig, version: str | None, log: Callable[[str], None]) -> TrainResult:
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, train_test_split

    started = time.perf_counter()
    if config.final_fit not in FINAL_FIT_CHOICES:
        raise ValueError(f"final_fit must be one of {', '.join(FINAL_FIT_CHOICES)}, not {config.final_fit!r}")
    X, y, cat = dataset.X, dataset.label.astype(np.int64), dataset.category.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("training needs both normal and attack flows")
    indices = np.arange(len(y))
    if config.holdout > 0:
        train_idx, test_idx = train_test_split(
            indices, test_size=config.holdout, stratify=_stratify_key(cat, y, 2), random_state=config.seed
        )
    else:
        train_idx, test_idx = indices, indices[:0]
    Xtr, ytr, ctr = X[train_idx], y[train_idx], cat[train_idx]
    log(f"{dataset.rows} rows: {len(train_idx)} for training (cross-validated), {len(test_idx)} held out")

    # Cross-validation: out-of-fold predictions are the validation data for every choice below.
    folds = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    oof_p = np.zeros(len(ytr))
    head_labels = sorted(set(ctr[ctr > 0].tolist()))
    oof_logp = np.full((len(ytr), max(2, len(head_labels))), np.log(1.0 / max(2, len(head_labels))))
    fold_scores: dict[str, list[float]] = {"hgb_roc_auc": []}
    # Every fit is independent: the K folds and the served heads (fitted on all the training data)
    # run in parallel processes, each with `threads` OpenMP threads.
    from joblib import Parallel, delayed
    from sklearn.metrics import roc_auc_score

    splits = list(folds.split(Xtr, _stratify_key(ctr, ytr, config.cv_folds)))
    jobs = [delayed(_fit_fold)(config, Xtr[fit], ytr[fit], ctr[fit], Xtr[val], head_labels) for fit, val in splits]
    jobs.append(delayed(_fit_heads)(config, Xtr, ytr, ctr))
    refit_all = config.final_fit == "all" and len(test_idx) > 0
    if refit_all:  # the served heads, on every row; the heads above only give the held-out estimate
        jobs.append(delayed(_fit_heads)(config, X, y, cat))
    outputs = Parallel(n_jobs=min(config.n_jobs, len(jobs)), backend="loky")(jobs)
    if refit_all:
        served_heads = outputs.pop()
    for k, ((_, val_idx), (p, logp)) in enumerate(zip(splits, outputs[:-1], strict=True)):
        oof_p[val_idx] = p
        oof_logp[val_idx] = logp
        fold_scores["hgb_roc_auc"].append(float(roc_auc_score(ytr[val_idx], p)))
        log(f"fold {k + 1}/{config.cv_folds}: HGB ROC-AUC {fold_scores['hgb_roc_auc'][-1]:.5f}")
    heldout_heads = outputs[-1]
    if not refit_all:
        served_heads = heldout_heads

    # The threshold comes from the out-of-fold scores of models fitted on (K-1)/K of the training
    # part and is served with heads fitted on more rows: 1.5x with final_fit="train", 1.9x with "all".
    # It transfers conservatively: on the learning curve (FINAL_FIT_EVIDENCE, dev data, same held-out
    # rows) the 65% subset's CV threshold on heads fitted on 80% (a 1.85x step, like "all") gave
    # held-out FPR 0.70% (two subset draws), vs 0.65-0.72% for the 65% heads and 0.83% for the 80%
    # heads with their own CV threshold: bigger heads score normal flows lower, so FPR stays under
    # the target and the served detection stays about level; ROC-AUC and macro-F1 are what gain.
    threshold = choose_threshold(ytr, oof_p, target_fpr=config.target_fpr)
    bias = tune_category_bias(ctr, oof_p, oof_logp, threshold, head_labels)
    validation: dict[str, Any] = {
        "binary": binary_metrics(ytr, oof_p, threshold),
        "binary_at_0_5": binary_metrics(ytr, oof_p, 0.5),
        "category": category_metrics(ctr, served_categories(oof_p, oof_logp + bias, threshold, head_labels)),
        "category_unadjusted": category_metrics(ctr, served_categories(oof_p, oof_logp, threshold, head_labels)),
        "cv_folds": config.cv_folds,
        "cv_roc_auc": {name: _mean_std(values) for name, values in fold_scores.items() if values},
        "operating_points": operating_points(ytr, oof_p),
        "missed_attacks_by_category": {
            ATTACK_CATEGORIES[c]: n for c, n in Counter(ctr[(ytr == 1) & (oof_p < threshold)].tolist()).most_common()
        },
    }
    log(
        f"validation (out-of-fold): threshold {threshold:.4f}, FPR {validation['binary']['fpr']:.4%}, "
        f"detection {validation['binary']['detection_rate']:.4%}, macro-F1 {validation['category']['macro_f1']:.4f}"
    )
    points = validation["operating_points"]
    log(
        "validation operating points: detection at FPR "
        + ", ".join(f"{float(f):.1%}: {d:.2%}" for f, d in points["detection_at_fpr"].items())
        + f"; {ACCEPTANCE_MIN_DETECTION:.0%} detection needs FPR {points[f'fpr_for_detection_{ACCEPTANCE_MIN_DETECTION:.2f}']:.2%}"
    )
    conflicts = feature_conflicts(X, y, cat)

    artifact, labels = _package_heads(served_heads)
    sha = sha256_hex(artifact)
    version = version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + sha[:8]
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "sha256": sha,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": list(FEATURE_COLUMNS),
        "categorical": list(CATEGORICAL),
        "vocabulary": dataset.vocabulary.to_json(),
        "threshold": threshold,
        "category_labels": [ATTACK_CATEGORIES[c] for c in labels],
        "category_bias": _bias_for(labels, head_labels, bias),
        "algorithm": {
            "binary": f"HistGradientBoostingClassifier(learning_rate={config.learning_rate}, max_iter={config.max_iter}, "
            f"max_leaf_nodes={config.max_leaf_nodes}, min_samples_leaf={config.min_samples_leaf}, "
            f"class_weight={config.binary_class_weight}, native categorical proto/service/state)",
            "category": f"HistGradientBoostingClassifier(learning_rate={config.category_learning_rate}, "
            f"max_iter={config.category_max_iter}, class_weight=balanced) on attacks only, "
            "with per-category log-odds adjustments chosen on validation macro-F1",
            "threshold_rule": f"lowest threshold with out-of-fold validation FPR <= {config.target_fpr:.2%}",
            "sklearn_version": _sklearn_version(),
        },
        "training_data": {
            "sha256": dataset.sha256,
            "sources": [Path(s).name for s in dataset.sources],
            "rows": dataset.rows,
            "train_rows": len(train_idx),
            "heldout_rows": len(test_idx),
            # what the served heads were fitted on; held-out figures always come from heads fitted on
            # the training part only (an estimate for the served heads when these differ)
            "served_heads_fitted_on": "all" if refit_all else "train",
            "served_heads_rows": len(y) if refit_all else len(train_idx),
            "skipped": dataset.skipped,
            "blank_cells_as_missing": dataset.blanks,
            "class_counts": {ATTACK_CATEGORIES[c]: int(n) for c, n in sorted(Counter(cat.tolist()).items())},
            "identical_features": conflicts,
        },
    }
    served = load_artifact(artifact, metadata, expected_sha256=sha)
    metrics: dict[str, Any] = {"validation": validation}
    if len(test_idx):
        scored = served
        if refit_all:  # the held-out rows are in the served heads: score the training-part heads instead
            estimate, estimate_labels = _package_heads(heldout_heads)
            estimate_metadata = {
                **metadata,
                "sha256": sha256_hex(estimate),
                "category_labels": [ATTACK_CATEGORIES[c] for c in estimate_labels],
                "category_bias": _bias_for(estimate_labels, head_labels, bias),
            }
            scored = load_artifact(estimate, estimate_metadata, expected_sha256=estimate_metadata["sha256"])
        metrics["heldout"] = evaluate(scored, X[test_idx], y[test_idx], cat[test_idx])
        metrics["heldout"]["heads_fitted_on"] = "train"
        metrics["heldout"]["heads_rows"] = len(train_idx)
        metrics["heldout"]["describes"] = (
            "an estimate for the served heads, which were also fitted on these held-out rows" if refit_all else "the served heads"
        )
        log(
            "held-out: ROC-AUC {roc_auc:.5f}, FPR {fpr:.4%}, detection {detection_rate:.4%}".format(**metrics["heldout"]["binary"])
            + f", macro-F1 {metrics['heldout']['category']['macro_f1']:.4f}"
        )
        if config.compare_random_forest:  # the seed's model, same split: the comparison on held-out data
            forest = _seed_forest(config).fit(Xtr[:, _NUMERIC_POSITIONS], ytr)
            metrics["heldout"]["seed_random_forest"] = binary_metrics(
                y[test_idx], forest.predict_proba(X[test_idx][:, _NUMERIC_POSITIONS])[:, 1], 0.5
            )
    metrics["served_heads"] = {
        "fitted_on": metadata["training_data"]["served_heads_fitted_on"],
        "rows": metadata["training_data"]["served_heads_rows"],
        "heldout_figures_from": f"heads fitted on the training part ({len(train_idx)} rows)",
    }
    seconds = time.perf_counter() - started
    metrics["training_seconds"] = round(seconds, 1)
    metadata["metrics"] = metrics
    served.metadata["metrics"] = metrics
    return TrainResult(
        version=version,
        artifact=artifact,
        metadata=metadata,
        metrics=metrics,
        model_card=model_card(metadata),
        model=served,
        seconds=seconds,
    )


def evaluate(model: ServingModel, X: np.ndarray, y: np.ndarray, category: np.ndarray) -> dict[str, Any]:
    """The served model's figures on data it was not tuned on (the same code path as /detect)."""
    import numpy as np

    p_attack, p_cat = model.scores(X)
    index = {c: i for i, c in enumerate(ATTACK_CATEGORIES)}
    labels = [index[c] for c in model.category_labels]
    predicted = served_categories(p_attack, np.log(np.maximum(p_cat, 1e-300)), model.threshold, labels)
    return {"binary": binary_metrics(y, p_attack, model.threshold), "category": category_metrics(category, predicted)}


def train_from_flows(flows: Sequence[Mapping[str, Any]], *, config: TrainConfig | None = None, version: str | None = None) -> TrainResult:
    """Programmatic training on labelled flows (either layout, with label and attack_cat): tests, stored events."""
    return train(dataset_from_flows(flows), config=config or TrainConfig.quick(), version=version)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    return {"mean": round(float(np.mean(values)), 5), "std": round(float(np.std(values)), 5)}


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def model_card(metadata: Mapping[str, Any]) -> str:
    metrics = metadata.get("metrics", {})
    data = metadata["training_data"]
    lines = [
        f"# Flow model {metadata['version']}",
        "",
        "Binary attack/normal detection and the 10 UNSW-NB15 attack categories, for network flows described by",
        "the UNSW-NB15 features (either layout).",
        "",
        "## Training data",
        f"- sources: {', '.join(data['sources'])}",
        f"- sha256: `{data['sha256']}`",
        f"- rows: {data['rows']} ({data['train_rows']} training, cross-validated; {data['heldout_rows']} held out, never tuned on)",
        "- served heads fitted on: "
        + (
            f"all {data['served_heads_rows']} rows (training + held-out), after cross-validation, threshold choice and"
            f" held-out scoring were done on the split; the held-out figures below come from the same heads fitted on the"
            f" {data['train_rows']} training rows: an estimate for the served model"
            if data.get("served_heads_fitted_on") == "all"
            else f"the {data.get('served_heads_rows', data['train_rows'])} training rows; the held-out figures below describe them"
        ),
        f"- classes: {json.dumps(data['class_counts'])}",
        f"- skipped rows: {json.dumps(data['skipped']) if data['skipped'] else 'none'}",
        "",
        "## Model",
        f"- binary: {metadata['algorithm']['binary']}",
        f"- category: {metadata['algorithm']['category']}",
        f"- served threshold: {metadata['threshold']:.6f} ({metadata['algorithm']['threshold_rule']})",
        f"- artifact: `model.npz`, sha256 `{metadata['sha256']}` (numeric arrays only; loads without executing code)",
        "",
        "## Features",
        f"{', '.join(metadata['features'])}.",
        "",
        "Categorical (native categorical splits; values outside the vocabulary share an 'other' bucket): "
        + "; ".join(f"{c}: {len(v)} values" for c, v in metadata["vocabulary"].items())
        + ".",
        "",
        "Left out on purpose: `id` (row order, sorted by class: leaks the label); `srcip`, `dstip`, `sport`, `dsport`",
        "(UNSW-NB15 attacks come from a few testbed addresses; learning them would not generalise); `stime`, `ltime`",
        "(capture wall-clock time); `rate` (partitioned layout only, derived from spkts, dpkts and dur).",
        "",
        "## Metrics",
    ]
    for part in ("validation", "heldout"):
        if part not in metrics:
            continue
        binary, category = metrics[part]["binary"], metrics[part]["category"]
        lines += [
            f"### {part}"
            + (
                " (out-of-fold predictions on the training data)"
                if part == "validation"
                else f" (never tuned on; heads fitted on the {data['train_rows']} training rows"
                + (", an estimate for the served heads fitted on all rows)" if data.get("served_heads_fitted_on") == "all" else ")")
            ),
            f"- ROC-AUC {binary['roc_auc']}, PR-AUC {binary['pr_auc']}, accuracy {binary['accuracy']}, F1 {binary['f1']}",
            f"- at the served threshold: FPR {binary['fpr']:.4%}, detection {binary['detection_rate']:.4%}",
            f"- attack_cat macro-F1 {category['macro_f1']}; recall per category: {json.dumps(category['per_category_recall'])}",
            "",
        ]
    conflicts = data.get("identical_features")
    points = metrics.get("validation", {}).get("operating_points")
    lines += [
        "## Limitations",
        "- Trained on UNSW-NB15, a 2015 testbed capture: traffic mixes and attack tools differ from production networks;",
        "  expect lower precision on other networks until it is retrained on labelled local flows (retrain-flows job).",
        "- DoS, Exploits, Analysis and Backdoor flows often have near-identical features in UNSW-NB15; the category",
        "  head confuses them, which bounds macro-F1 (published results stay near 0.53).",
    ]
    if conflicts:
        lines += [
            f"- Irreducible error in the training data: {conflicts['rows_with_an_identical_twin']} of {conflicts['rows']} rows",
            f"  ({conflicts['rows_with_an_identical_twin'] / max(1, conflicts['rows']):.1%}) share their exact features with another row."
            f" For attack_cat, {conflicts['category']['rows_in_conflicting_groups']} rows sit in groups of identical",
            f"  features with different categories: at least {conflicts['category']['min_errors']} errors"
            f" ({conflicts['category']['min_error_rate']:.2%} of rows) for any model of these features; even a model that",
            f"  memorised every training row would reach macro-F1 {conflicts['category']['max_macro_f1']} on it.",
            f"  For attack/normal the bound is {conflicts['binary']['min_errors']} row(s) ({conflicts['binary']['min_error_rate']:.3%});"
            " anything above it is overlap between normal and attack flows rather than duplicates.",
            "  Attacks missed at the served threshold on validation, by category: "
            + json.dumps(metrics.get("validation", {}).get("missed_attacks_by_category", {}))
            + ".",
        ]
    if points:
        needed = points[f"fpr_for_detection_{ACCEPTANCE_MIN_DETECTION:.2f}"]
        lines += [
            "- Operating points on validation (out-of-fold): detection "
            + ", ".join(f"{d:.2%} at {float(f):.1%} FPR" for f, d in points["detection_at_fpr"].items())
            + f"; {ACCEPTANCE_MIN_DETECTION:.0%} detection needs {needed:.2%} FPR."
            + (
                ""
                if points["acceptance_reachable"]
                else f" On this data no threshold gives both <= {ACCEPTANCE_MAX_FPR:.0%} FPR and >= "
                f"{ACCEPTANCE_MIN_DETECTION:.0%} detection; the served threshold keeps the FPR bound and gives up detection."
            ),
        ]
    lines += [
        "- Worms, Shellcode, Backdoor and Analysis have few training rows; their recall is noisy.",
        "- The threshold is set for a low false-positive rate on validation data; a different base rate of attacks",
        "  changes precision.",
        "- The ct_* features are counts over the previous 100 connections of the capture's feature extractor (Argus/Bro);",
        "  flows from another extractor must compute them the same way.",
    ]
    return "\n".join(lines) + "\n"
