"""A deterministic flow-event generator built on the UNSW-NB15 dev data.

N events, each a dev-set flow (features, label, attack_cat as recorded) given
realistic addressing and a time over 30 days:
- 300 normal client hosts in 59.166.0.0/23 and 40 attack sources in 175.45.176.0/22
  (the dataset's own testbed ranges), talking to 20 servers in 149.171.126.0/24;
- a destination port from the flow's service, a random source port;
- stime uniform over the 30 days before `end` (midnight UTC today by default), ltime = stime + dur.

Same seed, same N, same end → byte-identical output. Writes the raw 49-column
UNSW-NB15 layout (no header, NUSW-NB15_features.csv order; loadable by
`threatflow flows load` and any UNSW tool), and can yield COPY-ready rows for
flow_events (bench setup).

Run: .venv/bin/python tests/perf/flowgen.py --rows 100000 --out /tmp/flows.csv.gz
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from threatflow.flows.ingest import RAW_COLUMNS  # the raw UNSW-NB15 layout `threatflow flows load` reads

REPO = Path(__file__).resolve().parents[2]
DEV_DATA = REPO.parent / "shared" / "data" / "unsw-nb15" / "unsw_nb15_dev.csv.gz"
NORMAL_SOURCES = [f"59.166.{i // 250}.{i % 250 + 1}" for i in range(300)]
ATTACK_SOURCES = [f"175.45.{176 + i // 10}.{i % 10 + 1}" for i in range(40)]
SERVERS = [f"149.171.126.{i}" for i in range(20)]
SERVICE_PORTS = {"http": 80, "ftp": 21, "ftp-data": 20, "smtp": 25, "ssh": 22, "dns": 53, "pop3": 110, "snmp": 161, "ssl": 443,
                 "irc": 6667, "radius": 1812, "dhcp": 67}  # fmt: skip
WINDOW = timedelta(days=30)
_RENAMES = {"smeansz": "smean", "dmeansz": "dmean", "res_bdy_len": "response_body_len", "sintpkt": "sinpkt", "dintpkt": "dinpkt"}
PARTITIONED_NAME = {raw: _RENAMES.get("".join(raw.split()).lower(), "".join(raw.split()).lower()) for raw in RAW_COLUMNS}


def default_end() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def dev_rows(path: Path = DEV_DATA) -> list[dict[str, str]]:
    if not path.exists():
        raise SystemExit(f"dev data not found at {path}; run with ../shared beside the checkout")
    with gzip.open(path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def generate(rows: int, *, seed: int = 7, end: datetime | None = None, dev: list[dict[str, str]] | None = None) -> Iterator[dict[str, str]]:
    """Partitioned-name flows plus srcip/sport/dstip/dsport/stime/ltime, as strings."""
    rng = random.Random(seed)
    data = dev or dev_rows()
    end = end or default_end()
    start_epoch = int((end - WINDOW).timestamp())
    span = int(WINDOW.total_seconds())
    for _ in range(rows):
        flow = dict(data[rng.randrange(len(data))])
        attack = flow["label"] == "1"
        stime = start_epoch + rng.randrange(span)
        dur = float(flow["dur"])
        flow.update(
            srcip=rng.choice(ATTACK_SOURCES if attack else NORMAL_SOURCES),
            sport=str(rng.randrange(1024, 65536)),
            dstip=rng.choice(SERVERS),
            dsport=str(SERVICE_PORTS.get(flow["service"], rng.choice((80, 443, 53, 0, 111, 8080)))),
            stime=str(stime),
            ltime=str(stime + int(dur)),
        )
        yield flow


def raw_line(flow: dict[str, str]) -> list[str]:
    """One flow in the raw 49-column layout (attack_cat blank for normal traffic, as in the official files)."""
    out = []
    for raw in RAW_COLUMNS:
        value = flow.get(PARTITIONED_NAME[raw], "")
        if raw == "attack_cat" and value == "Normal":
            value = ""
        out.append(value)
    return out


def write_raw(path: Path, flows: Iterator[dict[str, str]]) -> int:
    count = 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:  # type: ignore[operator]
        writer = csv.writer(handle)
        for flow in flows:
            writer.writerow(raw_line(flow))
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end", help="ISO date the 30 days end at (default: today 00:00 UTC)")
    parser.add_argument("--out", required=True, help="raw 49-column CSV to write (.gz to compress)")
    args = parser.parse_args()
    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC) if args.end else None
    count = write_raw(Path(args.out), generate(args.rows, seed=args.seed, end=end))
    print(f"wrote {count:,} flows to {args.out}", file=sys.stderr)


def copy_buffer(lines: list[str]) -> io.BytesIO:
    return io.BytesIO("".join(lines).encode())


if __name__ == "__main__":
    main()
