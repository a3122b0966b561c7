"""Intel sources: one declaration module per API, and the registry the pipeline reads.

    REGISTRY["virustotal"]  -> Source (base URL, auth header, per-type requests, reliability, free tier, parse)
    client.lookup(...)      -> SourceResult
    client.health(...)      -> HealthResult

Adding a source: write `<name>.py` with a `parse` and a `SOURCE = Source(...)`, add it to `_MODULES` below, add
fixtures and a fake under `tests/fakes/intel/`, and one entry in the manifest's `sources:` section (README).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from threatflow.enrichment.sources import (
    abuseipdb,
    greynoise,
    hybrid_analysis,
    internetdb,
    malwarebazaar,
    otx,
    threatfox,
    urlhaus,
    virustotal,
)
from threatflow.enrichment.sources.base import FreeTier, Parsed, Reply, Request, ShapeError, Source

_MODULES = (virustotal, abuseipdb, otx, hybrid_analysis, urlhaus, threatfox, malwarebazaar, internetdb, greynoise)

REGISTRY: Mapping[str, Source] = MappingProxyType({module.SOURCE.name: module.SOURCE for module in _MODULES})

__all__ = ["REGISTRY", "FreeTier", "Parsed", "Reply", "Request", "ShapeError", "Source"]
