"""Runtime settings of the intel sources (the manifest's `sources:` section), typed.

Kept apart from the manifest loader so that function code needing them (the
enrichment functions) never reaches PyYAML or jsonschema: in the cloud the section
arrives as JSON in ENRICH_SOURCES_JSON (Terraform renders it from the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Quota:
    per_minute: int | None
    per_hour: int | None
    per_day: int | None

    def buckets(self) -> list[tuple[str, int, int]]:
        """(window name, limit, period seconds) of each token bucket, shortest first."""
        windows = (("minute", self.per_minute, 60), ("hour", self.per_hour, 3600))
        return [(name, limit, period) for name, limit, period in windows if limit]


@dataclass(frozen=True)
class SourceConfig:
    """Runtime settings of one intel source (its declaration lives in code)."""

    name: str
    enabled: bool
    indicator_types: tuple[str, ...]
    secret: str | None
    secret_env: str | None
    key_optional: bool
    ttl_seconds: int
    auto_enrich: tuple[str, ...]
    max_tlp: str
    timeout_seconds: float
    quota: Quota
    max_delivery_attempts: int

    @property
    def function(self) -> str:
        return source_function_name(self.name)

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.function}-dead-letter"

    @property
    def base_url_env(self) -> str:
        return f"INTEL_{self.name.upper()}_URL"

    @property
    def keyless(self) -> bool:
        return self.secret is None


def source_function_name(source: str) -> str:
    """enrich-<source>, with underscores as hyphens (function names allow no underscores)."""
    return "enrich-" + source.replace("_", "-")


SOURCE_DEFAULTS = {"max_tlp": "amber", "timeout_seconds": 10.0, "max_delivery_attempts": 5, "enabled": True}


def build_source(name: str, spec: dict[str, Any], secrets: dict[str, Any]) -> SourceConfig:
    quota = spec["quota"]
    secret = spec.get("secret")
    return SourceConfig(
        name=name,
        enabled=bool(spec.get("enabled", SOURCE_DEFAULTS["enabled"])),
        indicator_types=tuple(spec["indicator_types"]),
        secret=secret,
        secret_env=(secrets.get(secret) or {}).get("env") if secret else None,
        key_optional=bool(spec.get("key_optional", False)),
        ttl_seconds=int(spec["ttl_seconds"]),
        auto_enrich=tuple(spec.get("auto_enrich", ())),
        max_tlp=str(spec.get("max_tlp", SOURCE_DEFAULTS["max_tlp"])),
        timeout_seconds=float(spec.get("timeout_seconds", SOURCE_DEFAULTS["timeout_seconds"])),
        quota=Quota(quota.get("per_minute"), quota.get("per_hour"), quota.get("per_day")),
        max_delivery_attempts=int(spec.get("max_delivery_attempts", SOURCE_DEFAULTS["max_delivery_attempts"])),
    )
