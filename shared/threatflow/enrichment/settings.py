"""Runtime settings of the intel sources: the manifest's `sources:` section.

The functions get the section as JSON in ENRICH_SOURCES_JSON: Terraform renders it
in the cloud (terraform/locals.tf); the local stack and the test fixtures set it
from functions/topology.yaml (`threatflow.platform.manifest.Manifest.sources_env()`),
so no function reads the YAML (no PyYAML in a deployed function).
ENRICH_SOURCES_OVERRIDE (JSON, merged per source) changes settings without
editing the manifest, e.g. small quotas for tests. Base URLs come from
INTEL_<SOURCE>_URL, so the fake servers can stand in for the real APIs.
ENRICH_USER_BUDGET_PER_HOUR bounds what one user may spend of the sources' quota (enrichment/budget.py).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from threatflow.platform.errors import ConfigError
from threatflow.platform.sources import SourceConfig, build_source

DEFAULT_USER_BUDGET_PER_HOUR = 10_000


@dataclass(frozen=True)
class SourceSettings:
    sources: Mapping[str, SourceConfig]
    base_urls: Mapping[str, str]
    key_cache_seconds: float
    run_deadline_seconds: float
    # Source lookups that leave the cache one user may cause per hour (enrichment/budget.py). A batch of 1,000
    # values of any type fits (IPv4 has the most sources, 7: 7,000 lookups), and a second one within the hour waits.
    user_budget_per_hour: int

    def enabled(self) -> list[SourceConfig]:
        return [s for s in self.sources.values() if s.enabled]

    def get(self, name: str) -> SourceConfig:
        config = self.sources.get(name)
        if config is None:
            raise ConfigError(f"unknown intel source {name!r}; the manifest declares {', '.join(sorted(self.sources))}")
        return config


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


# What functions/topology.schema.json allows in a source ($defs/source), checked here for ENRICH_SOURCES_OVERRIDE:
# no function ships jsonschema, and an override merged unchecked failed late (a ValueError on the first request)
# or silently (an unknown max_tlp: the source was never asked).
_IOC_TYPES = frozenset({"ipv4", "ipv6", "cidr", "domain", "url", "md5", "sha1", "sha256", "file_path", "email"})
_TLPS = frozenset({"clear", "green", "amber", "amber+strict", "red"})
_QUOTA_KEYS = ("per_minute", "per_hour", "per_day")


def _is_int(value: Any, low: int, high: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _types(value: Any) -> bool:
    # isinstance first: a list or object is no set member (`in` raised TypeError, naming no variable)
    distinct = isinstance(value, list) and len(set(map(str, value))) == len(value)
    return distinct and all(isinstance(v, str) and v in _IOC_TYPES for v in value)


_CHECKS: dict[str, tuple[Any, str]] = {
    "description": (lambda v: isinstance(v, str), "a string"),
    "enabled": (lambda v: isinstance(v, bool), "true or false"),
    "indicator_types": (lambda v: _types(v) and len(v) > 0, f"a non-empty list of distinct types of {sorted(_IOC_TYPES)}"),
    "secret": (lambda v: isinstance(v, str) and bool(v), "a secret name"),
    "key_optional": (lambda v: isinstance(v, bool), "true or false"),
    "ttl_seconds": (lambda v: _is_int(v, 60), "an integer of at least 60"),
    "auto_enrich": (_types, f"a list of distinct types of {sorted(_IOC_TYPES)}"),
    "max_tlp": (lambda v: isinstance(v, str) and v in _TLPS, f"one of {sorted(_TLPS)}"),
    "timeout_seconds": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 120,
        "a number of seconds above 0, at most 120",
    ),
    "max_delivery_attempts": (lambda v: _is_int(v, 5, 100), "an integer from 5 to 100"),
}


def _check_override(name: str, spec: Any) -> None:
    """One source's override, as the manifest schema would check it; a ConfigError naming the variable and the key."""

    def fail(where: str, wanted: str, got: Any) -> ConfigError:
        return ConfigError(f"ENRICH_SOURCES_OVERRIDE: {where} must be {wanted} (got {json.dumps(got)[:80]})")

    if not isinstance(spec, Mapping):
        raise fail(name, "an object of manifest source settings", spec)
    for key, value in spec.items():
        if key == "quota":
            if not isinstance(value, Mapping) or not value:
                raise fail(f"{name}.quota", f"an object of {', '.join(_QUOTA_KEYS)}", value)
            for window, limit in value.items():
                if window not in _QUOTA_KEYS:
                    raise fail(f"{name}.quota.{window}", f"one of the keys {', '.join(_QUOTA_KEYS)}, not a key of its own", limit)
                if not _is_int(limit, 1):
                    raise fail(f"{name}.quota.{window}", "an integer of at least 1", limit)
        elif key not in _CHECKS:
            raise fail(f"{name}.{key}", f"one of the manifest's source keys ({', '.join(sorted([*_CHECKS, 'quota']))})", value)
        elif not _CHECKS[key][0](value):
            raise fail(f"{name}.{key}", _CHECKS[key][1], value)


def load(environ: Mapping[str, str] | None = None) -> SourceSettings:
    env = os.environ if environ is None else environ
    if not env.get("ENRICH_SOURCES_JSON"):
        raise ConfigError(
            "ENRICH_SOURCES_JSON is not set: the intel sources section of functions/topology.yaml as JSON"
            " (Terraform and the local stack set it)"
        )
    try:
        raw_sources = json.loads(env["ENRICH_SOURCES_JSON"])
        raw_secrets = json.loads(env.get("ENRICH_SECRETS_JSON") or "{}")
    except ValueError as exc:
        raise ConfigError(f"ENRICH_SOURCES_JSON / ENRICH_SECRETS_JSON is not JSON: {exc}") from None
    if env.get("ENRICH_SOURCES_OVERRIDE"):
        try:
            override = json.loads(env["ENRICH_SOURCES_OVERRIDE"])
        except ValueError as exc:
            raise ConfigError(f"ENRICH_SOURCES_OVERRIDE is not JSON: {exc}") from None
        if not isinstance(override, Mapping):
            raise ConfigError("ENRICH_SOURCES_OVERRIDE must be a JSON object: {source: {setting: value}}")
        unknown = sorted(set(override) - set(raw_sources))
        if unknown:
            raise ConfigError(f"ENRICH_SOURCES_OVERRIDE names unknown sources: {', '.join(unknown)}")
        for name, spec in override.items():
            _check_override(name, spec)
        raw_sources = {name: _merge(spec, override.get(name, {})) for name, spec in raw_sources.items()}
    sources = {name: build_source(name, spec, raw_secrets) for name, spec in raw_sources.items()}
    base_urls = {name: env[s.base_url_env] for name, s in sources.items() if env.get(s.base_url_env)}
    try:
        key_cache = float(env.get("ENRICH_KEY_CACHE_SECONDS") or 60)
        deadline = float(env.get("ENRICH_RUN_DEADLINE_SECONDS") or 600)
    except ValueError as exc:
        raise ConfigError(f"ENRICH_KEY_CACHE_SECONDS / ENRICH_RUN_DEADLINE_SECONDS: {exc}") from None
    # float() also reads "nan", "inf" and negatives: a NaN or infinite deadline is never due, and no range
    # query of the overdue sweep matches it, so a run with a silent source would stay open for ever.
    if not (math.isfinite(key_cache) and key_cache >= 0):
        raise ConfigError(f"ENRICH_KEY_CACHE_SECONDS must be a finite number of seconds, at least 0 (got {key_cache})")
    if not (math.isfinite(deadline) and deadline > 0):
        raise ConfigError(f"ENRICH_RUN_DEADLINE_SECONDS must be a finite number of seconds above 0 (got {deadline})")
    return SourceSettings(
        sources=sources,
        base_urls=base_urls,
        key_cache_seconds=key_cache,
        run_deadline_seconds=deadline,
        user_budget_per_hour=_user_budget(env.get("ENRICH_USER_BUDGET_PER_HOUR")),
    )


def _user_budget(text: str | None) -> int:
    """ENRICH_USER_BUDGET_PER_HOUR: a whole number of lookups, at least 1 (unset or empty: the default)."""
    if not text:
        return DEFAULT_USER_BUDGET_PER_HOUR
    if not text.strip().isascii() or not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"ENRICH_USER_BUDGET_PER_HOUR={text!r}: expected a whole number of source lookups, at least 1")
    return int(text)
