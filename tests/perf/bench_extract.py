"""Benchmark indicator extraction and normalisation (a plain script, not a test).

    .venv/bin/python tests/perf/bench_extract.py [--mb 8] [--values 100000]

Builds a multi-MB synthetic threat report (prose with defanged and plain IoCs,
wrapped URLs, Windows/POSIX paths, hashes and false-positive bait such as
"setup.exe" and version numbers); text files under ../shared/data (relative to
the repository root), if present, are appended. Prints extract() MB/s,
normalise() values/s over a mixed list, and both as a ratio against a baseline
measured in the same run (a plain re.findall of a simple IPv4 regex over the
same text), so figures from noisy or different machines can be compared.

Then the worst case of issue 7: single tokens of --token-mb MB with no space (bracketed
dots, dots, a URL with an endless path, a Windows path), each timed as a ratio to the same
baseline regex over that token; the prose report's MB/s is the yardstick they should reach.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "shared"))

from threatflow.iocs.extraction import extract  # noqa: E402
from threatflow.iocs.normalise import normalise  # noqa: E402
from threatflow.platform.errors import ValidationError  # noqa: E402

_PROSE = (
    "the actor used a loader to drop a second stage payload which then connected to its command and control server "
    "over HTTPS analysts observed lateral movement credential dumping and persistence through scheduled tasks in the "
    "victim environment before exfiltrating archives to cloud storage; the campaign overlaps with earlier activity "
    "attributed to a financially motivated group, and the infrastructure was registered through a bulletproof host."
)
_WORDS = _PROSE.split(" ")


def _defang(value: str, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return value
    dot = ("[.]", "(.)", "[dot]")[style - 1]
    value = value.replace("http", "hxxp", 1).replace("://", "[://]" if style == 2 else "://")
    head, sep, tail = value.partition("/") if "://" not in value else (value, "", "")
    return head.replace(".", dot) + sep + tail


def _ioc(rng: random.Random, i: int) -> str:
    kind = rng.randrange(12)
    ip = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    prefix = rng.choice(("cdn", "update", "api", "mail"))
    domain = f"{prefix}-{i % 997}.{rng.choice(('evil', 'badcorp', 'xyzzy'))}.{rng.choice(('com', 'net', 'ru', 'top'))}"
    if kind == 0:
        return _defang(ip, rng)
    if kind == 1:
        return _defang(domain, rng)
    if kind == 2:
        return _defang(f"http://{domain}/wp-content/plugins/{i}/gate.php?id={i}", rng)
    if kind == 3:
        return f"{rng.getrandbits(256):064x}"
    if kind == 4:
        return f"{rng.getrandbits(128):032X}"
    if kind == 5:
        return f"C:\\Users\\Public\\Libraries\\svc{i}.exe"
    if kind == 6:
        return f"/tmp/.cache/{i}/kworker"
    if kind == 7:
        return f"ops{i}@{domain}".replace("@", "[@]" if i % 2 else "@")
    if kind == 8:
        return f"{ip.rsplit('.', 1)[0]}.0/24"
    if kind == 9:
        return f"version {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}"
    if kind == 10:
        return rng.choice(("setup.exe", "report.pdf", "invoice.zip", "System.IO", "e.g.", "i.e.", "10.0.19041.1"))
    return f"hxxps://{domain}/a/very/long/path/\nstage{i}.bin"


def build_report(megabytes: float, seed: int = 7) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    i = 0
    target = int(megabytes * 1_000_000)
    while size < target:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 24))]
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            words.insert(rng.randrange(len(words) + 1), _ioc(rng, i) + rng.choice(("", ",", ".", ")", ";")))
            i += 1
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice((". ", ".\n", ".\n\n", " "))
        parts.append(sentence)
        size += len(sentence)
    data_dir = REPO_ROOT.parent / "shared" / "data"
    if data_dir.is_dir():
        for path in sorted(data_dir.rglob("*.txt"))[:50]:
            try:
                parts.append(path.read_text(encoding="utf-8", errors="replace")[:2_000_000])
            except OSError:
                continue
    return "".join(parts)


def mixed_values(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(count):
        value = _ioc(rng, i)
        out.append(value.replace("\n", "").removeprefix("version "))
    return out


def _best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=8.0, help="size of the synthetic report in MB")
    parser.add_argument("--values", type=int, default=100_000, help="number of values for normalise()")
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs")
    parser.add_argument("--token-mb", type=float, default=10.0, help="size of each single-token worst case in MB")
    args = parser.parse_args()

    text = build_report(args.mb)
    size_mb = len(text.encode("utf-8")) / 1_000_000
    simple_ipv4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
    extract(text[:100_000])  # warm-up: PSL load, regex compile, caches

    baseline = _best_of(args.runs, lambda: simple_ipv4.findall(text))
    extract_time = _best_of(args.runs, lambda: extract(text))
    found = extract(text)

    values = mixed_values(args.values)

    def normalise_all() -> None:
        for value in values:
            with contextlib.suppress(ValidationError):
                normalise(value)

    normalise_time = _best_of(args.runs, normalise_all)

    counts = Counter(str(item.type) for item in found)
    print(f"report text                 : {size_mb:.2f} MB, {len(found):,} unique indicators {dict(sorted(counts.items()))}")
    print(f"baseline re.findall(ipv4)   : {size_mb / baseline:8.1f} MB/s")
    print(f"extract()                   : {size_mb / extract_time:8.1f} MB/s   (target >= 5 MB/s)")
    print(f"extract / baseline          : {baseline / extract_time:8.3f}   (throughput ratio; higher is better)")
    per_value_us = normalise_time / len(values) * 1e6
    print(f"normalise() mixed values    : {len(values) / normalise_time:10,.0f} values/s   ({per_value_us:.2f} us/value, target <= 10)")
    print(f"normalise vs baseline       : {(len(values) / normalise_time) / (size_mb / baseline):8.0f}   (values/s per baseline MB/s)")

    n = int(args.token_mb * 1024 * 1024)
    tokens = {
        "a[.]a[.]...": "a[.]" * (n // 4),
        "a.a.a...": "a." * (n // 2),
        "http://x/aaa...": "http://evil.com/" + "a" * n,
        "C:\\a\\a\\...": "C:\\" + "a\\" * (n // 2),
    }
    for name, token in tokens.items():
        token_mb = len(token) / 1_000_000
        base = _best_of(1, lambda token=token: simple_ipv4.findall(token))
        took = _best_of(1, lambda token=token: extract(token))
        print(f"one {token_mb:4.1f} MB token {name:16s}: {took:6.2f} s, {token_mb / took:6.1f} MB/s, {base / took:7.3f} x baseline")


if __name__ == "__main__":
    main()
