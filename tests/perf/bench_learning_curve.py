"""Flow model learning curve: does the served model gain from being fitted on more data?

Keeps training's own 80/20 split (TrainConfig().holdout and seed) and fits the heads, with the
served hyper-parameters and the same code path (cross-validation for the threshold and the
category adjustments, then the heads on the whole subset), on nested, stratified subsets of the
training part: 50%, 65% and 80% of the dev data. Every fit is scored on the SAME 20% held-out rows.

Printed per fraction, on the held-out rows: ROC-AUC, detection at 0.8% and 1.0% FPR (thresholds
read off the held-out scores: ranking quality, independent of the threshold rule), the FPR that
97% detection needs, and at the served threshold (chosen on the subset's out-of-fold predictions)
FPR, detection and attack_cat macro-F1. Then the threshold-transfer check: the threshold chosen
by cross-validating a smaller subset, applied to the heads fitted on the next larger one (what
refitting the served heads on more rows than the CV saw would do). The noise yardstick is the
spread of the same operating points over the 80% fit's cross-validation folds.

Run: .venv/bin/python tests/perf/bench_learning_curve.py [--fractions 0.5,0.65,0.8] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from threatflow.flows import training

DEV_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "unsw-nb15" / "unsw_nb15_dev.csv.gz"


def nested_subsets(strata: np.ndarray, fractions: list[float], *, seed: int) -> list[np.ndarray]:
    """Positions into `strata`, one array per fraction (of len(strata)); each contains the smaller ones."""
    rng = np.random.default_rng(seed)
    order_by_stratum = {s: rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)}
    out = []
    for fraction in fractions:
        take = [order[: max(1, round(fraction * len(order)))] for order in order_by_stratum.values()]
        out.append(np.sort(np.concatenate(take)))
    return out


def fit_fraction(config: training.TrainConfig, X: np.ndarray, y: np.ndarray, cat: np.ndarray) -> dict[str, Any]:
    """What training does on its training part: K-fold out-of-fold scores, threshold, bias, heads on all rows."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    head_labels = sorted(set(cat[cat > 0].tolist()))
    splits = list(folds.split(X, training._stratify_key(cat, y, config.cv_folds)))
    jobs = [delayed(training._fit_fold)(config, X[f], y[f], cat[f], X[v], head_labels) for f, v in splits]
    jobs.append(delayed(training._fit_heads)(config, X, y, cat))
    outputs = Parallel(n_jobs=min(config.n_jobs, len(jobs)), backend="loky")(jobs)
    oof_p = np.zeros(len(y))
    oof_logp = np.zeros((len(y), len(head_labels)))
    for (_, v), (p, logp) in zip(splits, outputs[:-1], strict=True):
        oof_p[v], oof_logp[v] = p, logp
    binary, category, labels = outputs[-1]
    assert labels == head_labels
    threshold = training.choose_threshold(y, oof_p, target_fpr=config.target_fpr)
    bias = training.tune_category_bias(cat, oof_p, oof_logp, threshold, head_labels)
    fold_points = [training.operating_points(y[v], oof_p[v]) for _, v in splits]
    return {
        "rows": len(y),
        "binary": binary,
        "category": category,
        "labels": head_labels,
        "threshold": threshold,
        "bias": bias,
        "oof": training.operating_points(y, oof_p),
        "fold_points": fold_points,
    }


def scores(fit: dict[str, Any], X: np.ndarray) -> np.ndarray:
    if "_p" not in fit:
        fit["_p"] = fit["binary"].predict_proba(X)[:, 1]
    return np.asarray(fit["_p"])


def paired_bootstrap(y: np.ndarray, small: np.ndarray, large: np.ndarray, *, reps: int, seed: int) -> dict[str, list[float]]:
    """Large-fit minus small-fit figures on resampled held-out rows (same rows for both): the held-out noise."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"ROC-AUC": [], "det@1.0%": [], "FPR@97%": []}
    for _ in range(reps):
        i = rng.integers(0, len(y), len(y))
        a, b = training.operating_points(y[i], small[i]), training.operating_points(y[i], large[i])
        out["ROC-AUC"].append(float(roc_auc_score(y[i], large[i]) - roc_auc_score(y[i], small[i])))
        out["det@1.0%"].append(b["detection_at_fpr"]["0.010"] - a["detection_at_fpr"]["0.010"])
        out["FPR@97%"].append(b["fpr_for_detection_0.97"] - a["fpr_for_detection_0.97"])
    return out


def heldout(
    fit: dict[str, Any], X: np.ndarray, y: np.ndarray, cat: np.ndarray, threshold: float, bias: np.ndarray | None = None
) -> dict[str, Any]:
    p = scores(fit, X)
    logp = training._log_softmax_head(fit["category"], X) + (fit["bias"] if bias is None else bias)
    points = training.operating_points(y, p)
    served = training.binary_metrics(y, p, threshold)
    predicted = training.served_categories(p, logp, threshold, fit["labels"])
    return {
        "roc_auc": served["roc_auc"],
        "det_0.8": points["detection_at_fpr"]["0.008"],
        "det_1.0": points["detection_at_fpr"]["0.010"],
        "fpr_97": points["fpr_for_detection_0.97"],
        "fpr": served["fpr"],
        "det": served["detection_rate"],
        "macro_f1": training.category_metrics(cat, predicted)["macro_f1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None, help="default: ../shared/data/unsw-nb15/unsw_nb15_dev.csv.gz")
    parser.add_argument("--fractions", default="0.5,0.65,0.8", help="of the whole data set; at most 1 - holdout")
    parser.add_argument("--subset-seed", type=int, default=None, help="which nested subsets (default: TrainConfig seed)")
    parser.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples of the held-out rows")
    parser.add_argument("--quick", action="store_true", help="TrainConfig.quick() (smoke run, not the served settings)")
    args = parser.parse_args()
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    path = args.data or str(DEV_DATA)
    config = training.TrainConfig.quick() if args.quick else training.TrainConfig()
    dataset = training.read_dataset([path])
    X, y, cat = dataset.X, dataset.label.astype(np.int64), dataset.category.astype(np.int64)
    # the split training uses (same call, same seed): the held-out rows are the ones metrics.json reports on
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=config.holdout, stratify=training._stratify_key(cat, y, 2), random_state=config.seed
    )
    fractions = [float(f) for f in args.fractions.split(",")]
    part = 1 - config.holdout
    if max(fractions) > part + 1e-9:
        raise SystemExit(f"fractions must be <= {part} (the training part)")
    subset_seed = config.seed if args.subset_seed is None else args.subset_seed
    subsets = nested_subsets(cat[train_idx], [f / part for f in fractions], seed=subset_seed)
    Xte, yte, cte = X[test_idx], y[test_idx], cat[test_idx]
    normal, attacks = int((yte == 0).sum()), int(yte.sum())
    print(f"subset seed {subset_seed}; {dataset.rows} rows; held-out {len(test_idx)} ({normal} normal, {attacks} attacks)")

    fits = []
    with threadpool_limits(limits=config.threads):
        for fraction, subset in zip(fractions, subsets, strict=True):
            rows = train_idx[subset]
            started = time.perf_counter()
            fit = fit_fraction(config, X[rows], y[rows], cat[rows])
            fit["seconds"] = time.perf_counter() - started
            fit["heldout"] = heldout(fit, Xte, yte, cte, fit["threshold"])
            fits.append(fit)
            print(f"  fitted {fraction:.0%} ({len(rows)} rows) in {fit['seconds']:.0f} s", flush=True)

    print("\nheld-out (same rows for every fit); det@x = detection at x FPR; served = threshold from the subset's CV")
    print(
        f"{'fit on':>7} {'rows':>6} {'ROC-AUC':>8} {'det@0.8%':>9} {'det@1.0%':>9} {'FPR@97%':>8} | "
        f"{'threshold':>9} {'FPR':>7} {'det':>7} {'mF1':>6} | {'OOF FPR@97%':>11}"
    )
    for fraction, fit in zip(fractions, fits, strict=True):
        h = fit["heldout"]
        print(
            f"{fraction:>7.0%} {fit['rows']:>6} {h['roc_auc']:>8.5f} {h['det_0.8']:>9.2%} {h['det_1.0']:>9.2%} {h['fpr_97']:>8.2%} | "
            f"{fit['threshold']:>9.5f} {h['fpr']:>7.2%} {h['det']:>7.2%} {h['macro_f1']:>6.4f} | "
            f"{fit['oof']['fpr_for_detection_0.97']:>11.2%}"
        )
    if args.bootstrap and len(fits) > 1:
        diff = paired_bootstrap(yte, scores(fits[0], Xte), scores(fits[-1], Xte), reps=args.bootstrap, seed=config.seed)
        print(
            f"\npaired bootstrap ({args.bootstrap} resamples of the held-out rows), {fractions[-1]:.0%} fit minus {fractions[0]:.0%} fit, "
            "mean [5th, 95th percentile]: "
            + "; ".join(
                f"{k} {np.mean(v):+.5f} [{np.percentile(v, 5):+.5f}, {np.percentile(v, 95):+.5f}] "
                f"(share > 0: {np.mean(np.asarray(v) > 0):.0%})"
                for k, v in diff.items()
            )
        )
    last = fits[-1]["fold_points"]
    spread = {
        "det@0.8%": [p["detection_at_fpr"]["0.008"] for p in last],
        "det@1.0%": [p["detection_at_fpr"]["0.010"] for p in last],
        "FPR@97%": [p["fpr_for_detection_0.97"] for p in last],
    }
    print(
        f"\nnoise yardstick: per-fold spread of the {fractions[-1]:.0%} fit's CV (each fold ~{fits[-1]['rows'] // config.cv_folds} rows): "
        + "; ".join(f"{k} {np.mean(v):.2%} ± {np.std(v):.2%}" for k, v in spread.items())
    )
    print("\nthreshold transfer: a smaller subset's CV threshold and category adjustments on the next larger fit's heads (held-out)")
    for i in range(1, len(fits)):
        moved = heldout(fits[i], Xte, yte, cte, fits[i - 1]["threshold"], fits[i - 1]["bias"])
        own = fits[i]["heldout"]
        small, large = f"{fractions[i - 1]:.0%}", f"{fractions[i]:.0%}"
        before = fits[i - 1]["heldout"]
        print(
            f"  threshold from {small} CV on {large} heads: FPR {moved['fpr']:.2%}, detection {moved['det']:.2%}, "
            f"macro-F1 {moved['macro_f1']:.4f}  (own {large} CV threshold: FPR {own['fpr']:.2%}, detection {own['det']:.2%}; "
            f"{small} heads with it: FPR {before['fpr']:.2%}, detection {before['det']:.2%}, macro-F1 {before['macro_f1']:.4f})"
        )


if __name__ == "__main__":
    main()
