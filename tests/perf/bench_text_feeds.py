"""Text-import parse time of feed-sized documents, against a baseline checkout (a plain script, not a test).

    .venv/bin/python tests/perf/bench_text_feeds.py [--baseline /path/to/other/checkout] [--rounds 3]

Times `parse("text", ...)` (what POST /api/v1/iocs/import runs before writing) on generated documents of about
5 MB (the synchronous import limit): a hosts file, an address list with a '#' header, a PeerGuardian range list, an RPZ zone and a prose
report; with --baseline, the same documents on the other checkout's `shared/` in alternating child processes,
and prints the median ratio current/baseline per document. "feed reading" is the share of the parse spent in
`feedlines.read`, timed in the same process (on a shared, noisy machine the ratio moves by tens of percent).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from threatflow.intel.formats import parse
kind = sys.argv[2]
lines = 120_000
if kind == "hosts":
    text = "# Title: hosts\n" + "".join(f"0.0.0.0 host-{i}.tracker-example.com\n" for i in range(lines))
elif kind == "addresses":
    text = "# https://feed.example.org/\n" + "".join(f"{(i >> 16) % 223 + 1}.{(i >> 8) % 256}.{i % 256}.7\n" for i in range(2 * lines))
elif kind == "ranges":  # PeerGuardian lines ("description:start-end"), the shape of iblocklist level1
    def pg_range(i: int) -> str:  # a /24, a /23 and one not aligned (14 networks), in turn
        net = f"{(i >> 8) % 223 + 1}.{i % 256}"
        return (f"{net}.0.0-{net}.0.255", f"{net}.2.0-{net}.3.255", f"{net}.4.1-{net}.4.254")[i % 3]

    text = "".join(f"Range {i}:{pg_range(i)}\n" for i in range(lines))
elif kind == "rpz":
    text = "$TTL 300\n" + "".join(f"host-{i}.tracker-example.com CNAME .\n" for i in range(lines))
else:
    text = "".join(f"The actor used host-{i}.tracker-example.com and 198.51.{i % 256}.7 in stage {i}.\n" for i in range(lines // 2))
start = time.perf_counter()
parsed = parse("text", text)
total = time.perf_counter() - start
try:  # the share of the feed reading (absent from a baseline before it), timed in the same process
    from threatflow.intel.formats import feedlines
except ImportError:
    share = 0.0
else:
    start = time.perf_counter()
    feedlines.read(text)
    share = (time.perf_counter() - start) / total
print(f"{total:.3f} {len(text)} {len(parsed.iocs)} {share:.3f}")
"""


def run(shared: Path, kind: str) -> tuple[float, int, int, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(shared), kind], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), float(out[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout (its shared/ is imported)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for kind in ("hosts", "addresses", "ranges", "rpz", "report"):
        current, baseline, shares = [], [], []
        for _ in range(args.rounds):  # alternated, so that the machine's load falls on both alike
            seconds, size, iocs, share = run(REPO_ROOT / "shared", kind)
            current.append(seconds)
            shares.append(share)
            if args.baseline:
                base_seconds, _, base_iocs, _ = run(args.baseline / "shared", kind)
                baseline.append(base_seconds)
        line = f"{kind:10} {size / 1e6:.1f} MB: {statistics.median(current):.2f} s, {iocs} IoCs"
        line += f", feed reading {statistics.median(shares):.0%}"
        if baseline:
            ratio = statistics.median(c / b for c, b in zip(current, baseline, strict=True))
            line += f"; baseline {statistics.median(baseline):.2f} s, {base_iocs} IoCs; ratio {ratio:.2f}"
        print(line)


if __name__ == "__main__":
    main()
