"""`threatflow models train|list|promote`: the flow model registry in the models bucket.

Operator commands: they use the models bucket directly (the running local stack's emulator
when the shell has no STORAGE_EMULATOR_HOST of its own). `ml/train.py` is `train` without a
bucket: it only writes the output folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from threatflow.platform.errors import ConfigError, ThreatFlowError, ValidationError


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="UNSW-NB15 CSV files (gzip accepted), either layout")
    parser.add_argument("--format", choices=["partitioned", "raw"], help="default: detected per file (a header means partitioned)")
    parser.add_argument("--features", help="NUSW-NB15_features.csv: the raw layout's column names (default: built in)")
    parser.add_argument("--out", help="folder for model.npz, metadata.json, metrics.json, model_card.md")
    parser.add_argument("--quick", action="store_true", help="small, fast settings (smoke tests)")
    parser.add_argument("--cv", type=int, help="cross-validation folds (default 3)")
    parser.add_argument("--holdout", type=float, help="held-out fraction, never tuned on (default 0.2)")
    parser.add_argument("--no-compare", action="store_true", help="skip the seed RandomForest comparison")
    parser.add_argument(
        "--final-fit",
        choices=["all", "train"],
        help="rows the served heads are fitted on once CV, threshold and held-out scoring are done: all (training +"
        " held-out; held-out figures then estimate them from the training-part fit) or train (default: all)",
    )


def _read_training_data(args: argparse.Namespace) -> Any:
    """The --data files as a Dataset; a file missing or not a UNSW-NB15 CSV is an error naming it (it was a traceback)."""
    from threatflow.flows import training

    for name in args.data:
        if not Path(name).is_file():
            raise ValidationError(f"{name}: no such file", field="data")
    try:
        dataset = training.read_dataset(args.data, layout=args.format, features_csv=args.features)
    except (ValueError, OSError, csv.Error) as exc:  # each names its file (training._open_text, _dataset_from_rows)
        raise ValidationError(f"cannot train on {', '.join(args.data)}: {exc}", field="data") from None
    skipped = dataset.skipped or "none"
    print(f"read {dataset.rows} flows from {len(args.data)} file(s), sha256 {dataset.sha256[:16]}…; skipped {skipped}", file=sys.stderr)
    return dataset


def _run_training(args: argparse.Namespace, dataset: Any) -> Any:
    from dataclasses import replace

    from threatflow.flows import training

    config = training.TrainConfig.quick() if args.quick else training.TrainConfig()
    if args.cv:
        config = replace(config, cv_folds=args.cv)
    if args.holdout is not None:
        config = replace(config, holdout=args.holdout)
    if args.no_compare:
        config = replace(config, compare_random_forest=False)
    if args.final_fit:
        config = replace(config, final_fit=args.final_fit)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = training.train(dataset, config=config, log=log)
    if args.out:
        for path in result.write(args.out):
            log(f"wrote {path}")
    _print_figures(result.metrics)
    log(f"trained in {result.seconds:.1f} s; version {result.version}")
    return result


def _print_figures(metrics: dict[str, Any]) -> None:
    for part in ("validation", "heldout"):
        if part not in metrics:
            continue
        b, c = metrics[part]["binary"], metrics[part]["category"]
        print(
            f"{part:10s} ROC-AUC {b['roc_auc']:.5f}  PR-AUC {b['pr_auc']:.5f}  accuracy {b['accuracy']:.4f}  F1 {b['f1']:.4f}  "
            f"threshold {b['threshold']:.4f}  FPR {b['fpr']:.3%}  detection {b['detection_rate']:.3%}  macro-F1 {c['macro_f1']:.4f}"
        )
        print(f"{'':10s} recall per category: {json.dumps(c['per_category_recall'])}")
        forest = metrics[part].get("seed_random_forest")
        if forest:
            print(
                f"{'':10s} seed RandomForest (numeric fields, threshold 0.5): ROC-AUC {forest['roc_auc']:.5f}  "
                f"FPR {forest['fpr']:.3%}  detection {forest['detection_rate']:.3%}"
            )
    served = metrics.get("served_heads")
    if served:
        print(
            f"served heads fitted on {served['fitted_on']} ({served['rows']} rows); held-out figures from {served['heldout_figures_from']}"
        )


def train_main(argv: Sequence[str]) -> int:
    """`python ml/train.py ...`: train and write the output folder."""
    parser = argparse.ArgumentParser(prog="ml/train.py", description="Train the ThreatFlow flow model on UNSW-NB15.")
    _train_arguments(parser)
    args = parser.parse_args(list(argv))
    if not args.out:
        parser.error("--out is required")
    try:
        _run_training(args, _read_training_data(args))
    except ThreatFlowError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


def _store() -> tuple[Any, str]:
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.cli.common import settings as stack_settings

    settings = stack_settings()
    return GcsBlobs(settings.project), settings.bucket_models


def cmd_train(args: argparse.Namespace) -> int:
    from threatflow.flows import registry

    dataset = _read_training_data(args)  # first: a mistyped path is the likeliest mistake, and reading is quick
    try:  # before training: a store that cannot be reached must not cost a training run first
        blobs, bucket = _store()
    except ConfigError as exc:
        raise ConfigError(f"{exc.message}; to train without publishing: python ml/train.py --data FILE --out DIR") from None
    result = _run_training(args, dataset)
    version = registry.publish(result, blobs=blobs, bucket=bucket)
    print(f"published {version} to gs://{bucket}/flows/models/{version}/")
    if args.promote:
        pointer = registry.promote(blobs=blobs, bucket=bucket, version=version, now=lambda: datetime.now(UTC))
        print(f"promoted {pointer['version']} (sha256 {pointer['sha256'][:16]}…)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from threatflow.flows import registry

    blobs, bucket = _store()
    versions = registry.list_versions(blobs=blobs, bucket=bucket)
    if args.json:
        print(json.dumps([v.to_json() for v in versions], indent=2))
        return 0
    if not versions:
        print(f"no models in gs://{bucket}/flows/models/; train one: threatflow models train --data FILE --promote")
        return 0
    for v in versions:
        held = v.heldout or {}
        mark = "*" if v.serving else " "
        if v.problem:
            print(f"{mark} {v.version:32s} unreadable: {v.problem}")
            continue
        print(
            f"{mark} {v.version:32s} {v.created_at:25s} ROC-AUC {held.get('roc_auc', float('nan')):.5f}  "
            f"FPR {held.get('fpr', float('nan')):.3%}  detection {held.get('detection_rate', float('nan')):.3%}"
        )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from threatflow.flows import registry

    blobs, bucket = _store()
    pointer = registry.promote(blobs=blobs, bucket=bucket, version=args.version, now=lambda: datetime.now(UTC))
    print(f"promoted {pointer['version']} (sha256 {pointer['sha256'][:16]}…); detect picks it up within its refresh interval")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"train": cmd_train, "list": cmd_list, "promote": cmd_promote}


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="train, list and promote flow models (the models bucket)")
    actions = models.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train on UNSW-NB15 files, publish a version, optionally promote it")
    _train_arguments(train)
    train.add_argument("--promote", action="store_true", help="make the new version the serving model")
    listing = actions.add_parser("list", help="published versions; * marks the serving one")
    listing.add_argument("--json", action="store_true")
    promote = actions.add_parser("promote", help="make a published version the serving model")
    promote.add_argument("version")
    models.set_defaults(run=lambda args: COMMANDS[args.action](args))
