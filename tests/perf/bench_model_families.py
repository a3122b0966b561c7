"""Flow model families: does another model family beat our HistGradientBoosting binary head?

The issue asks to compare the seed's RandomForest with gradient-boosted models, "LightGBM or
XGBoost if they earn their weight". This keeps training's own 80/20 split (TrainConfig().holdout
and seed) and, for each family, fits K folds on the training part (out-of-fold scores, the same
stratified folds as training) and one model on the whole training part, scored on the 20 %
held-out rows. Families:

  hgb    ours: training._binary_model(TrainConfig()) (200 trees, 63 leaves, native categorical)
  rf     the seed's RandomForest, numeric fields only (training._seed_forest, 100 trees)
  et     ExtraTrees, 300 trees, max_features 0.5, every feature (categoricals as vocabulary codes)
  lgb    LightGBM, 400 trees, learning rate 0.05, 63 leaves, row/column subsampling 0.8, native categorical
  xgb    XGBoost, 400 trees, learning rate 0.05, depth 8, hist, subsampling 0.8 (categoricals as codes)
  cb     CatBoost, 800 trees, learning rate 0.08, depth 8, categorical proto/service/state (needs pandas)
  blend  mean probability of the boosted families that ran (hgb, lgb, xgb, cb)

LightGBM, XGBoost and CatBoost are NOT project dependencies (never add them to the lock): each is
skipped, with a printed line, when it is not importable. To run them, use a scratch venv with the
project's pinned scikit-learn (so that `hgb` is the served head) and the shared package on the path:
  python3 -m venv /tmp/xv && /tmp/xv/bin/pip install scikit-learn==1.9.1 lightgbm xgboost catboost pandas
  PYTHONPATH=shared /tmp/xv/bin/python tests/perf/bench_model_families.py

Printed: one table, per family, out-of-fold (training part) and held-out: ROC-AUC, detection at
0.5 % and 1 % FPR and the FPR that 97 % detection needs (training.operating_points: thresholds
read off the scores, i.e. ranking quality, independent of the served threshold rule); then the
CPU seconds of the fits (K folds + the held-out fit, scoring included; every fit single-threaded
in its own process, as training runs them) and their ratio to hgb's in the same run. Then the
noise yardsticks: hgb's spread over the folds, and a paired bootstrap of the held-out rows (family
minus hgb). The full run takes ~4 min on 2 cores (CatBoost is 4/5 of the CPU); --quick ~30 s.

Run: .venv/bin/python tests/perf/bench_model_families.py [--folds 3] [--quick] [--families hgb,rf,et,lgb,xgb,cb] [--jobs 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from threatflow.flows import training
from threatflow.flows.features import categorical_indices

DEV_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "unsw-nb15" / "unsw_nb15_dev.csv.gz"
FAMILIES = ("hgb", "rf", "et", "lgb", "xgb", "cb")
BOOSTED = ("hgb", "lgb", "xgb", "cb")
NEEDS = {"lgb": ("lightgbm",), "xgb": ("xgboost",), "cb": ("catboost", "pandas")}
QUICK_ROWS = 8000  # of the training part, stratified; the held-out rows stay whole

Scorer = Callable[[np.ndarray], np.ndarray]  # rows -> P(attack)


@dataclass(frozen=True)
class Settings:
    config: training.TrainConfig
    threads: int
    trees: float  # multiplier on the tree counts (1 full, smaller for --quick)

    def n(self, trees: int) -> int:
        return max(10, round(trees * self.trees))


def fit_hgb(s: Settings, X: np.ndarray, y: np.ndarray) -> Scorer:
    model = training._binary_model(s.config).fit(X, y)
    return lambda A: model.predict_proba(A)[:, 1]


def fit_rf(s: Settings, X: np.ndarray, y: np.ndarray) -> Scorer:
    numeric = training._NUMERIC_POSITIONS
    config = replace(s.config, rf_trees=s.n(s.config.rf_trees), n_jobs=s.threads)
    model = training._seed_forest(config).fit(X[:, numeric], y)
    return lambda A: model.predict_proba(A[:, numeric])[:, 1]


def fit_et(s: Settings, X: np.ndarray, y: np.ndarray) -> Scorer:
    from sklearn.ensemble import ExtraTreesClassifier

    model = ExtraTreesClassifier(n_estimators=s.n(300), max_features=0.5, n_jobs=s.threads, random_state=s.config.seed).fit(X, y)
    return lambda A: model.predict_proba(A)[:, 1]


def fit_lgb(s: Settings, X: np.ndarray, y: np.ndarray) -> Scorer:
    import lightgbm

    model = lightgbm.LGBMClassifier(
        n_estimators=s.n(400),
        learning_rate=0.05 / s.trees,
        num_leaves=63,
        min_child_samples=10,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        n_jobs=s.threads,
        random_state=s.config.seed,
        verbose=-1,
    )
    model.fit(X, y, categorical_feature=categorical_indices())
    return lambda A: model.predict_proba(A)[:, 1]


def fit_xgb(s: Settings, X: np.ndarray, y: np.ndarray) -> Scorer:
    import xgboost

    model = xgboost.XGBClassifier(
        n_estimators=s.n(400),
        learning_rate=0.05 / s.trees,
        max_depth=8,
        subsample=0.8,
        colsample_bytree=0.8,
        tree_method="hist",
        n_jobs=s.threads,
        random_state=s.config.seed,
    ).fit(X, y)
    return lambda A: model.predict_proba(A)[:, 1]


def fit_cb(s: Settings, X: np.ndarray, y: np.ndarray) -> Scorer:
    import pandas
    from catboost import CatBoostClassifier

    cats = categorical_indices()

    def frame(A: np.ndarray) -> pandas.DataFrame:  # CatBoost wants integer or string categorical cells
        df = pandas.DataFrame(A)
        for i in cats:
            df[i] = df[i].astype(np.int64)
        return df

    model = CatBoostClassifier(
        iterations=s.n(800),
        learning_rate=min(0.5, 0.08 / s.trees),
        depth=8,
        cat_features=cats,
        thread_count=s.threads,
        random_seed=s.config.seed,
        verbose=0,
        allow_writing_files=False,
    ).fit(frame(X), y)
    return lambda A: model.predict_proba(frame(A))[:, 1]


FIT: dict[str, Callable[[Settings, np.ndarray, np.ndarray], Scorer]] = {
    "hgb": fit_hgb,
    "rf": fit_rf,
    "et": fit_et,
    "lgb": fit_lgb,
    "xgb": fit_xgb,
    "cb": fit_cb,
}


def fit_and_score(family: str, s: Settings, X: np.ndarray, y: np.ndarray, X_score: np.ndarray) -> tuple[np.ndarray, float]:
    """One fit in a worker process, one thread: P(attack) for X_score and the CPU seconds it took (fit + scoring)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=s.threads):
        started = time.process_time()
        p = FIT[family](s, X, y)(X_score)
        return p, time.process_time() - started


def missing(family: str) -> list[str]:
    return [module for module in NEEDS.get(family, ()) if importlib.util.find_spec(module) is None]


def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    points = training.operating_points(y, p, fprs=(0.005, 0.01))
    return {
        "auc": float(roc_auc_score(y, p)),
        "det_0.5": points["detection_at_fpr"]["0.005"],
        "det_1.0": points["detection_at_fpr"]["0.010"],
        "fpr_97": points["fpr_for_detection_0.97"],
    }


def paired_bootstrap(y: np.ndarray, base: np.ndarray, other: np.ndarray, *, reps: int, seed: int) -> dict[str, list[float]]:
    """Other minus base on resampled held-out rows (the same rows for both)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"ROC-AUC": [], "det@1%": [], "FPR@97%": []}
    for _ in range(reps):
        i = rng.integers(0, len(y), len(y))
        a, b = figures(y[i], base[i]), figures(y[i], other[i])
        out["ROC-AUC"].append(b["auc"] - a["auc"])
        out["det@1%"].append(b["det_1.0"] - a["det_1.0"])
        out["FPR@97%"].append(b["fpr_97"] - a["fpr_97"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None, help="default: ../shared/data/unsw-nb15/unsw_nb15_dev.csv.gz")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds (default: TrainConfig().cv_folds)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--jobs", type=int, default=2, help="parallel fits (processes, one thread each)")
    parser.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples of the held-out rows")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: TrainConfig.quick(), 1/5 of the trees, {QUICK_ROWS} training rows"
    )
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    path = Path(args.data) if args.data else DEV_DATA
    if not path.exists():
        if args.data:
            raise SystemExit(f"{path}: not found")
        print(f"skipped: dev data not found at {path}; run with ../shared beside the checkout or pass --data")
        return
    from sklearn.model_selection import StratifiedKFold, train_test_split

    config = training.TrainConfig.quick() if args.quick else training.TrainConfig()
    if args.folds:
        config = replace(config, cv_folds=args.folds)
    settings = Settings(config=config, threads=1, trees=0.2 if args.quick else 1.0)
    dataset = training.read_dataset([str(path)])
    X, y, cat = dataset.X, dataset.label.astype(np.int64), dataset.category.astype(np.int64)
    # the split training uses (same call, same seed): the held-out rows are the ones metrics.json reports on
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=config.holdout, stratify=training._stratify_key(cat, y, 2), random_state=config.seed
    )
    if args.quick and len(train_idx) > QUICK_ROWS:
        train_idx, _ = train_test_split(
            train_idx, train_size=QUICK_ROWS, stratify=training._stratify_key(cat[train_idx], y[train_idx], 2), random_state=config.seed
        )
    Xtr, ytr, ctr = X[train_idx], y[train_idx], cat[train_idx]
    Xte, yte = X[test_idx], y[test_idx]
    splits = list(
        StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed).split(
            Xtr, training._stratify_key(ctr, ytr, config.cv_folds)
        )
    )
    print(
        f"{dataset.rows} rows; training part {len(train_idx)} ({config.cv_folds}-fold CV), held-out {len(test_idx)} "
        f"({int((yte == 0).sum())} normal, {int(yte.sum())} attacks)"
        + ("; QUICK: smoke run, not the served settings" if args.quick else "")
    )

    runnable = []
    for family in families:
        absent = missing(family)
        if absent:
            print(f"  {family}: skipped ({', '.join(absent)} not installed; not a project dependency, see the docstring)")
        else:
            runnable.append(family)
    # Every fit (K folds + the held-out fit, per family) is independent: parallel processes, one thread
    # each, as training does (OpenMP threads stall when other work shares the cores).
    from joblib import Parallel, delayed

    parts = [(Xtr[f], ytr[f], Xtr[v]) for f, v in splits] + [(Xtr, ytr, Xte)]  # the folds, then the held-out fit
    jobs = [delayed(fit_and_score)(family, settings, *part) for family in runnable for part in parts]
    print(f"{len(jobs)} fits on {args.jobs} process(es), one thread each", flush=True)
    started = time.perf_counter()
    outputs = iter(Parallel(n_jobs=args.jobs, backend="loky")(jobs))
    oof: dict[str, np.ndarray] = {}
    held: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    fold_points: list[dict[str, float]] = []
    for family in runnable:
        oof[family] = np.zeros(len(ytr))
        seconds[family] = 0.0
        for _, v in splits:
            p, cpu = next(outputs)
            oof[family][v] = p
            seconds[family] += cpu
            if family == "hgb":
                fold_points.append(figures(ytr[v], p))
        held[family], cpu = next(outputs)
        seconds[family] += cpu
    print(f"fitted in {time.perf_counter() - started:.0f} s wall")
    boosted = [f for f in BOOSTED if f in oof]
    if len(boosted) > 1:
        name = "blend(" + "+".join(boosted) + ")"
        oof[name] = np.mean([oof[f] for f in boosted], axis=0)
        held[name] = np.mean([held[f] for f in boosted], axis=0)
        seconds[name] = sum(seconds[f] for f in boosted)

    base = seconds.get("hgb")
    width = max([6, *map(len, oof)])
    print(
        "\nout-of-fold = the training part's CV; held-out = fitted on the whole training part; det@x = detection at x FPR; "
        "FPR@97% = the FPR that 97% detection needs; CPU s = folds + held-out fit, one thread (blend: its members')"
    )
    header = f"{'AUC':>8} {'det@0.5%':>9} {'det@1%':>7} {'FPR@97%':>8}"
    print(f"{'':<{width}} | {'out-of-fold':^35} | {'held-out':^35} |")
    print(f"{'family':<{width}} | {header} | {header} | {'CPU s':>6} {'x hgb':>6}")
    for name, p_oof in oof.items():
        cells = []
        for part in (figures(ytr, p_oof), figures(yte, held[name])):
            cells.append(f"{part['auc']:>8.5f} {part['det_0.5']:>9.2%} {part['det_1.0']:>7.2%} {part['fpr_97']:>8.2%}")
        ratio = f"{seconds[name] / base:>6.2f}" if base else f"{'':>6}"
        print(f"{name:<{width}} | {cells[0]} | {cells[1]} | {seconds[name]:>6.0f} {ratio}")

    if fold_points:
        print(
            f"\nnoise yardstick: hgb's spread over its {config.cv_folds} CV folds (each ~{len(ytr) // config.cv_folds} rows): "
            + "; ".join(
                f"{label} {np.mean([p[key] for p in fold_points]):.5f} ± {np.std([p[key] for p in fold_points]):.5f}"
                for label, key in (("ROC-AUC", "auc"), ("det@1%", "det_1.0"), ("FPR@97%", "fpr_97"))
            )
        )
    if args.bootstrap and "hgb" in held and len(held) > 1:
        print(f"paired bootstrap ({args.bootstrap} resamples of the held-out rows), family minus hgb, mean [5th, 95th percentile]:")
        for name, p_held in held.items():
            if name == "hgb":
                continue
            diff = paired_bootstrap(yte, held["hgb"], p_held, reps=args.bootstrap, seed=config.seed)
            print(
                f"  {name:<{width}} "
                + "; ".join(f"{k} {np.mean(v):+.5f} [{np.percentile(v, 5):+.5f}, {np.percentile(v, 95):+.5f}]" for k, v in diff.items())
            )


if __name__ == "__main__":
    main()
