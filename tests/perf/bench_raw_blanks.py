"""Ingest validation of the official raw files' blank cells, and what a blank costs a flow's score.

The official UNSW-NB15 raw files leave ct_flw_http_mthd and is_ftp_login empty on flows with no HTTP or FTP
exchange (~1.35 M and ~1.43 M of their 2.54 M rows) and write ct_ftp_cmd as one space there. This bench:

1. Validation cost: `ingest.validate` (what POST /api/v1/flows/batch, `flows load` and the upload worker run) on
   10,000 flowgen rows read from a raw CSV, typed (the upload worker) and as text (`flows load`), the complete file
   against the same file with those cells blanked on the official files' share of rows (53 % and 56 %, ct_ftp_cmd
   where is_ftp_login is). CPU time, best of --repeats interleaved rounds, per 10,000 rows, with the rows accepted and
   the ratio in the same run.
   Run it with PYTHONPATH pointing at another checkout's `shared` to compare versions.
2. --scores: two models of ml's quick configuration on --rows dev rows, one as the partitioned files give them (0 in
   the three fields), one as the raw files would (blank where the partitioned files hold 0), score the dev flows
   holding 0 there with the three missing (NaN, as ingest now reads the raw files' blanks) and with 0: mean and
   largest |P(attack) difference| and the verdicts that change at the model's threshold.

Run: .venv/bin/python tests/perf/bench_raw_blanks.py [--rows 10000] [--repeats 9] [--scores]
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flowgen

from threatflow.flows import ingest

BLANK_SHARE = {"ct_flw_http_mthd": 1.35 / 2.54, "is_ftp_login": 1.43 / 2.54}


def raw_text(rows: int, *, blanked: bool, seed: int = 7) -> str:
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    for flow in flowgen.generate(rows, seed=seed, dev=flowgen.dev_rows()):
        cells = flowgen.raw_line(flow)
        if blanked:
            draw = rng.random()
            for name, share in BLANK_SHARE.items():
                if draw < share:
                    cells[ingest.RAW_COLUMNS.index(name)] = ""
            if draw < BLANK_SHARE["is_ftp_login"]:
                cells[ingest.RAW_COLUMNS.index("ct_ftp_cmd")] = " "
        writer.writerow(cells)
    return out.getvalue()


def cpu_seconds(function: object) -> float:
    """The CPU time of one call (validation is single-threaded): on a machine other work loads, wall time
    measured that work as much as this one."""
    began = time.process_time()
    function()  # type: ignore[operator]
    return time.process_time() - began


def validation(rows: int, repeats: int) -> None:
    """Every variant once per round, rounds interleaved, best of `repeats`: a loaded machine slows them alike."""
    texts = {"complete": raw_text(rows, blanked=False), "raw blanks": raw_text(rows, blanked=True)}
    sets = {
        (typed, name): [flow for _n, flow in ingest.read_csv(io.StringIO(text), typed=typed)]
        for typed in (True, False)
        for name, text in texts.items()
    }
    accepted = {key: ingest.validate(flows) for key, flows in sets.items()}
    seconds = dict.fromkeys(sets, float("inf"))
    for _ in range(repeats):
        for key, flows in sets.items():
            seconds[key] = min(seconds[key], cpu_seconds(lambda flows=flows: ingest.validate(flows)))
    for (typed, name), (clean, _fields, problems) in accepted.items():
        per = seconds[(typed, name)] * 10_000 / rows * 1000
        kind = "typed" if typed else "text "
        print(f"{kind} {name:10}: {per:7.1f} ms CPU per 10,000 rows, {len(clean):,} of {rows:,} accepted, {len(problems):,} problems")
    for typed in (True, False):
        ratio = seconds[(typed, "raw blanks")] / seconds[(typed, "complete")]
        print(f"{'typed' if typed else 'text '} ratio raw blanks / complete: {ratio:.2f}")


def scores(rows: int) -> None:
    """Two models of ml's quick configuration on the same dev rows: as the partitioned files give them (0 in the
    three fields) and as the raw files would (missing where the partitioned files hold 0). Each scores the dev flows
    that hold 0 in all three with the three missing (NaN, what ingest now reads) and with 0 (a fill with 0)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from threatflow.flows import features, training

    dev = flowgen.dev_rows()
    sample = dev[:: max(1, len(dev) // rows)]
    names = ("ct_flw_http_mthd", "is_ftp_login", "ct_ftp_cmd")
    raw_like = [{**row, **{name: "" for name in names if float(row[name]) == 0}} for row in sample]
    flows = [{k: v for k, v in row.items() if k not in ("id", "label", "attack_cat")} for row in dev]
    positions = [features.FEATURE_COLUMNS.index(name) for name in names]
    for title, data in (("trained on 0 (partitioned layout)", sample), ("trained on blanks (raw layout)", raw_like)):
        began = time.perf_counter()
        with threadpool_limits(1):
            model = training.train_from_flows(data, config=training.TrainConfig.quick(), version="bench-raw-blanks").model
        X = features.to_matrix(flows, vocabulary=model.vocabulary).astype(np.float64)
        zero = X[(X[:, positions] == 0).all(axis=1)]  # the rows the raw files would leave blank
        blank = zero.copy()
        blank[:, positions] = np.nan
        p_zero, _ = model.scores(zero)
        p_blank, _ = model.scores(blank)
        difference = np.abs(p_blank - p_zero)
        flips = int(((p_blank >= model.threshold) != (p_zero >= model.threshold)).sum())
        first = int(np.argmax(difference))
        took = time.perf_counter() - began
        print(f"model {title}, {len(data):,} dev rows, {took:.0f} s; {len(zero):,} of {len(X):,} dev flows hold 0 in all three")
        spread = f"mean |difference| {difference.mean():.6f}, median {np.median(difference):.6f}, max {difference.max():.6f}"
        print(f"  P(attack) with NaN vs 0: {spread}; verdicts changed at its threshold {model.threshold:.4f}: {flips:,}")
        print(f"  the flow that moves most: P(attack) {p_blank[first]:.6f} with NaN, {p_zero[first]:.6f} with 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--scores", action="store_true", help="also train a quick model and compare NaN with 0")
    args = parser.parse_args()
    validation(args.rows, args.repeats)
    if args.scores:
        scores(args.rows)


if __name__ == "__main__":
    main()
