"""What hostile document shapes cost to parse (a plain script that prints, not a test).

    PYTHONPATH=shared .venv/bin/python tests/perf/bench_hostile_documents.py [--n 8000] [--shared PATH]

Builds each shape at --n and 4 x --n and prints its size, parse seconds and the peak memory the parse allocated
(tracemalloc), so that a shape whose work grows faster than the document shows it in the ratio between the rows.
`--shared ../main/shared` parses with another checkout (the figures before a change).
tests/unit/iocs_formats/test_hostile_documents.py asserts the bounds by counts; these are what they buy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any


def misp_clusters(n: int) -> tuple[str, Any]:
    """One event of n threat-actor clusters."""
    clusters = [{"value": f"actor {i}"} for i in range(n)]
    return "misp", {"Event": {"info": "i", "Galaxy": [{"type": "threat-actor", "GalaxyCluster": clusters}]}}


def misp_family_events(n: int) -> tuple[str, Any]:
    """n events naming one family and one ATT&CK technique each."""
    events = [
        {"Event": {"info": f"e{i}", "Galaxy": [
            {"type": "threat-actor", "GalaxyCluster": [{"value": "APT X"}]},
            {"type": "mitre-attack-pattern", "GalaxyCluster": [{"value": f"P - T{1000 + i % 9000}.{i // 9000:03d}"}]},
        ]}}
        for i in range(n)
    ]  # fmt: skip
    return "misp", {"response": events}


def _addresses(n: int) -> list[str]:
    return [f"198.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(n)]


def otx_pulse_of_32_families(n: int) -> tuple[str, Any]:
    """One pulse of n indicators naming 32 families: 32 links an indicator."""
    families = [f"family {i}" for i in range(32)]
    return "json", {"id": "p", "name": "p", "malware_families": families, "indicators": [{"indicator": v} for v in _addresses(n)]}


def misp_event_of_32_clusters(n: int) -> tuple[str, Any]:
    """One event of n attributes and 32 threat-actor clusters: 32 links an attribute."""
    galaxy = [{"type": "threat-actor", "GalaxyCluster": [{"value": f"actor {i}"} for i in range(32)]}]
    return "misp", {"Event": {"info": "i", "Galaxy": galaxy, "Attribute": [{"type": "ip-dst", "value": v} for v in _addresses(n)]}}


def stix_uses_patterns(n: int) -> tuple[str, Any]:
    """One malware that uses n attack patterns (n relationships)."""
    objects: list[dict[str, Any]] = [{"type": "malware", "id": "malware--0", "name": "M", "is_family": True}]
    for i in range(n):
        reference = {"source_name": "mitre-attack", "external_id": f"T{1000 + i % 9000}"}
        objects.append({"type": "attack-pattern", "id": f"attack-pattern--{i}", "name": f"p{i}", "external_references": [reference]})
        objects.append(
            {"type": "relationship", "id": f"relationship--{i}", "relationship_type": "uses",
             "source_ref": "malware--0", "target_ref": f"attack-pattern--{i}"}
        )  # fmt: skip
    return "stix", {"type": "bundle", "id": "bundle--1", "objects": objects}


def stix_long_or(n: int) -> tuple[str, Any]:
    """One indicator whose pattern ORs n addresses (a blocklist as one indicator): read in pieces, only until it gives
    the 100 values an indicator keeps, so the parse grows with the text scan alone."""
    pattern = "[" + " OR ".join(f"ipv4-addr:value = '{v}'" for v in _addresses(n)) + "]"
    indicator = {"type": "indicator", "spec_version": "2.1", "id": "indicator--00000000-0000-4000-8000-000000000001",
                 "created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z", "pattern_type": "stix",
                 "valid_from": "2024-01-01T00:00:00Z", "pattern": pattern}  # fmt: skip
    return "stix", {"type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000002", "objects": [indicator]}


SHAPES: dict[str, Callable[[int], tuple[str, Any]]] = {
    "stix long or": stix_long_or,
    "stix uses patterns": stix_uses_patterns,
    "misp clusters": misp_clusters,
    "misp family events": misp_family_events,
    "otx pulse, 32 families": otx_pulse_of_32_families,
    "misp event, 32 clusters": misp_event_of_32_clusters,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--shared", help="the shared package to parse with (another checkout's)")
    args = parser.parse_args()
    if args.shared:
        sys.path.insert(0, args.shared)
    from threatflow.intel.formats import parse

    print(f"{'shape':24s} {'n':>7s} {'MB':>6s} {'seconds':>8s} {'peak MB':>8s}")
    for name, make in SHAPES.items():
        for n in (args.n, 4 * args.n):
            fmt, doc = make(n)
            text = json.dumps(doc)
            tracemalloc.start()
            started = time.perf_counter()
            parse(fmt, text)
            took = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"{name:24s} {n:7d} {len(text) / 1e6:6.2f} {took:8.2f} {peak / 1e6:8.1f}")


if __name__ == "__main__":
    main()
