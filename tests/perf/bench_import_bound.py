"""What the largest request an import accepts costs to read (a plain script that prints, not a test).

    PYTHONPATH=shared .venv/bin/python tests/perf/bench_import_bound.py [--mib 32] [--shapes json,json-bare,csv,text] [--shared PATH]

Builds, for each shape, a request body of --mib MiB (MAX_REQUEST_BYTES is 32 MiB; the async import's ioc-import
function has 1 GiB) holding as many one-address items as fit, then decodes it and parses it as the async job does
(importer._parse_stored's two steps) under tracemalloc, and prints the body's size and items, the peak of the decoded
request, the peak of the whole, seconds, the peak of the iocs function's check of the same body sent with
?async=true (before it queues the job) and the outcome (IoCs parsed, or the refusal). `--shared ../main/shared`
measures another checkout (the figures before a change; use a smaller --mib there, a whole document is parsed).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from typing import Any


def _address(i: int) -> str:
    return f"45.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


SHAPES: dict[str, tuple[str, Any]] = {
    "json": ("json", lambda values: [{"value": v} for v in values]),  # the attack review's document
    "json-bare": ("json", lambda values: list(values)),  # a bare value is an item too
    "json-empty": ("json", lambda values: [{} for _ in values]),  # the most objects a body holds: one per 3 bytes
    "csv": ("csv", lambda values: "value\n" + "\n".join(values) + "\n"),
    "text": ("text", lambda values: "\n".join(values) + "\n"),
}


def body(shape: str, size: int) -> tuple[bytes, int]:
    fmt, make = SHAPES[shape]
    sample = len(json.dumps({"format": fmt, "content": make([_address(i) for i in range(10_000)])}, separators=(",", ":")))
    n = int(10_000 * size / sample)
    raw = json.dumps({"format": fmt, "content": make([_address(i) for i in range(n)])}, separators=(",", ":")).encode()
    while len(raw) > size:
        n -= max(1, (len(raw) - size) // (sample // 10_000) + 1)
        raw = json.dumps({"format": fmt, "content": make([_address(i) for i in range(n)])}, separators=(",", ":")).encode()
    return raw, n


def _gateway_check_peak(raw: bytes) -> int:
    """The iocs function's check of an async request before it queues the job (intel.api's _queue): peak bytes."""
    from threatflow.intel import importer
    from threatflow.platform.errors import ValidationError
    from threatflow.platform.web import decode_body

    gc.collect()
    tracemalloc.start()
    try:
        if hasattr(importer, "ImportEnvelope"):
            importer.check_containers(raw)
            importer.check_request(decode_body(raw, importer.ImportEnvelope))
        else:  # before: the whole request decoded, twice (decode_body's screen, then the typed decode)
            importer.check_request(decode_body(raw, importer.ImportRequest))
    except ValidationError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=float, default=32.0)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--shared", help="the shared/ folder of another checkout to measure instead")
    args = parser.parse_args()
    if args.shared:
        sys.path.insert(0, args.shared)
    import msgspec

    from threatflow.intel import importer
    from threatflow.platform.errors import ValidationError

    print(f"{'shape':10} {'bytes':>11} {'items':>10} {'request MB':>10} {'peak MB':>8} {'s':>6} {'async MB':>10}  outcome")
    for shape in args.shapes.split(","):
        raw, n = body(shape, int(args.mib * 1024 * 1024))
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        request = None
        try:
            try:
                if hasattr(importer, "check_containers"):  # the worker's first steps since they were added
                    from threatflow.platform import limits

                    importer.check_containers(raw)
                    limits.check_raw_json(raw)
                request = msgspec.json.decode(raw, type=importer.ImportRequest)
                decoded = tracemalloc.get_traced_memory()[1]
                outcome = f"{len(importer.parse_request(request).iocs):,} IoCs"
            except ValidationError as exc:
                decoded = tracemalloc.get_traced_memory()[1] if request is None else decoded
                outcome = f"400 {exc.field}: {exc.message[:60]}"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        seconds = time.perf_counter() - started
        gateway = _gateway_check_peak(raw)
        print(
            f"{shape:10} {len(raw):>11,} {n:>10,} {decoded / 1e6:>10.0f} {peak / 1e6:>8.0f} {seconds:>6.1f}"
            f" {gateway / 1e6:>10.0f}  {outcome}"
        )
        del raw, request


if __name__ == "__main__":
    main()
