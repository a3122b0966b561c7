"""WarninglistIndex.match on mixed IoC values, and the cost of loading the snapshot.

Loads the 32 shared MISP warninglists, builds 100,000 mixed normalised values
(IPv4, IPv6, CIDR, domains, URLs, e-mail, hashes, paths; a sixth known-benign),
and times `match` over them, overall and per type. The in-run baseline is a
plain dict lookup loop over the same values, the cheapest lookup Python can do,
so the ratio shows what parent walks, bisects and substring scans cost. It also
times compiling the lists from the directory, writing the snapshot and loading
it (a function's cold start), with and without pyahocorasick for substrings.
Target: at least 200,000 lookups/s mixed (the batch upsert runs at 20,000 IoCs/s).
Run: .venv/bin/python tests/perf/bench_warninglists.py [--values N] [--source DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "feeds" / "misp-warninglists"


def mixed_values(count: int, rng: random.Random) -> list[tuple[str, str]]:
    benign = [
        ("ipv4", "10.1.2.3"),
        ("ipv4", "8.8.8.8"),
        ("ipv6", "2001:4860:4860::8888"),
        ("domain", "mail.google.com"),
        ("domain", "x.dyndns.org"),
        ("url", "https://www.google.com/search?q=x"),
        ("email", "someone@mailinator.com"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("cidr", "192.168.10.0/24"),
    ]
    makers: list[Callable[[int], tuple[str, str]]] = [
        lambda i: ("ipv4", f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
        lambda i: ("ipv6", f"2a0{i % 10}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"),
        lambda i: ("cidr", f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24"),
        lambda i: ("domain", f"cdn{i}.service{i % 997}.example-{i % 31}.com"),
        lambda i: ("domain", f"evil-{i:x}.biz"),
        lambda i: ("url", f"https://site{i}.example.net/path/{i}/index.php?id={i}"),
        lambda i: ("email", f"user{i}@corp{i % 53}.example.org"),
        lambda i: ("md5", hashlib.md5(str(i).encode()).hexdigest()),
        lambda i: ("sha1", hashlib.sha1(str(i).encode()).hexdigest()),
        lambda i: ("sha256", hashlib.sha256(str(i).encode()).hexdigest()),
        lambda i: ("file_path", f"c:\\users\\u{i}\\appdata\\local\\temp\\x{i}.exe"),
    ]
    values = []
    for i in range(count):
        if i % 6 == 0:
            values.append(benign[i // 6 % len(benign)])
        else:
            values.append(makers[i % len(makers)](i))
    rng.shuffle(values)
    return values


def rate(fn: Callable[[], object], count: int, repeats: int = 5) -> float:
    """Best-of-N lookups per second (the steady state, not the noise)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return count / min(times)


def timed(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    results, times = None, []
    for _ in range(repeats):
        started = time.perf_counter()
        results = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), results


def main() -> None:
    from threatflow.iocs import warninglists

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"no warninglists at {args.source}; pass --source DIR")

    compile_s, index = timed(lambda: warninglists.load_directory(args.source))
    assert isinstance(index, warninglists.WarninglistIndex)
    snapshot_s, data = timed(index.snapshot)
    assert isinstance(data, bytes)
    load_s, _ = timed(lambda: warninglists.load_snapshot(data))
    plain_s, plain = timed(lambda: warninglists.WarninglistIndex(index.lists.values(), accelerated=False))
    assert isinstance(plain, warninglists.WarninglistIndex)
    entries = sum(len(wl.entries) for wl in index.lists.values())
    print(f"warninglists: {len(index.lists)} lists, {entries:,} entries from {args.source}")
    print(f"compile from directory  {compile_s * 1000:8.1f} ms  (read, validate, compile)")
    print(f"write snapshot          {snapshot_s * 1000:8.1f} ms  ({len(data) / 1e6:.1f} MB)")
    print(f"load snapshot           {load_s * 1000:8.1f} ms  (a function's cold start)")
    print(f"compile, regex fallback {plain_s * 1000:8.1f} ms  (without pyahocorasick)")

    values = mixed_values(args.values, random.Random(7))
    match = index.match
    flagged = sum(1 for t, v in values if match(t, v))
    baseline: dict[tuple[str, str], list[str]] = {}

    def dict_loop() -> None:
        get = baseline.get
        for t, v in values:
            get((t, v))

    def match_loop(m: Callable[[str, str], list[str]]) -> Callable[[], None]:
        def loop() -> None:
            for t, v in values:
                m(t, v)

        return loop

    base = rate(dict_loop, len(values))
    mixed = rate(match_loop(match), len(values))
    fallback = rate(match_loop(plain.match), len(values))
    print(f"\n{len(values):,} mixed values, {flagged:,} flagged ({flagged / len(values):.0%})")
    print(f"baseline dict lookup    {base:12,.0f} lookups/s")
    print(f"match (mixed)           {mixed:12,.0f} lookups/s   {base / mixed:4.1f}x the baseline's time   target >= 200,000")
    print(f"match, regex fallback   {fallback:12,.0f} lookups/s")
    print("\nper type:")
    by_type: dict[str, list[tuple[str, str]]] = {}
    for t, v in values:
        by_type.setdefault(t, []).append((t, v))
    for t, group in sorted(by_type.items()):

        def loop(group: list[tuple[str, str]] = group) -> None:
            for ioc_type, value in group:
                match(ioc_type, value)

        print(f"  {t:10} {rate(loop, len(group)):12,.0f} lookups/s  ({len(group):,} values)")


if __name__ == "__main__":
    main()
