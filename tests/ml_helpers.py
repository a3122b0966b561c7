"""A small flow model trained once per test process on a stratified sample of the dev data."""

from __future__ import annotations

import csv
import gzip
import random
from functools import lru_cache
from typing import Any

from helpers import require_shared_data

DEV_FILE = ("unsw-nb15", "unsw_nb15_dev.csv.gz")


@lru_cache(maxsize=1)
def dev_rows() -> tuple[dict[str, str], ...]:
    path = require_shared_data(*DEV_FILE)
    with gzip.open(path, "rt", newline="") as handle:
        return tuple(csv.DictReader(handle))


def sample_rows(n: int, *, seed: int = 1) -> list[dict[str, str]]:
    """n rows, every attack category represented (rare ones kept whole up to 60 rows)."""
    rows = dev_rows()
    rng = random.Random(seed)
    by_cat: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_cat.setdefault(row["attack_cat"], []).append(row)
    picked: list[dict[str, str]] = []
    for group in by_cat.values():
        k = max(min(len(group), 60), round(n * len(group) / len(rows)))
        picked.extend(rng.sample(group, min(k, len(group))))
    rng.shuffle(picked)
    return picked


def small_config() -> Any:
    """The quick training configuration of small_model."""
    from threatflow.flows.training import TrainConfig

    # heads on the training part: tests refit them with scikit-learn on the same 80% split to compare
    return TrainConfig(cv_folds=2, max_iter=30, category_max_iter=15, compare_random_forest=False, final_fit="train")


@lru_cache(maxsize=1)
def small_model() -> Any:
    """TrainResult of a quick training (small_config) on sample_rows(2500) (seconds, not minutes)."""
    from threatflow.flows.training import train_from_flows

    return train_from_flows(sample_rows(2500), config=small_config(), version="test-small")


def flow_without_targets(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("id", "label", "attack_cat")}
