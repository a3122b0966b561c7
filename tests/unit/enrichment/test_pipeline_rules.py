"""Pure rules of the pipeline: the verdict weighting, source selection, settings, keys."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from threatflow.enrichment import dispatch, verdict
from threatflow.enrichment.keys import KeyRing
from threatflow.enrichment.settings import load
from threatflow.enrichment.sources import REGISTRY
from threatflow.platform.errors import ConfigError
from threatflow.platform.manifest import load_manifest

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def result(source: str, v: str, score: int | None, *, status: str = "ok", age_days: float = 0, families=()):
    return {
        "source": source,
        "status": status,
        "verdict": v,
        "score": score,
        "evidence": {"malware_families": list(families)},
        "fetched_at": (NOW - timedelta(days=age_days)).isoformat(),
    }


def test_the_manifest_and_the_source_registry_agree():
    m = load_manifest()
    assert set(m.sources) == set(REGISTRY), "every declared source has manifest settings and the reverse"
    for name, source in m.sources.items():
        unsupported = set(source.indicator_types) - REGISTRY[name].types
        assert not unsupported, f"sources.{name}.indicator_types: the declaration cannot look up {sorted(unsupported)}"
        assert source.keyless == (REGISTRY[name].auth_header is None) or source.key_optional or REGISTRY[name].keyless


def test_verdict_weights_reliability_confidence_and_recency():
    rel = {"a": 1.0, "b": 0.5}
    merged = verdict.merge([result("a", "malicious", 90), result("b", "harmless", 0)], reliability=rel, now=NOW)
    # weights: a = 1.0 x 0.9 x 1 = 0.9 at 90; b = 0.5 x 1.0 x 1 = 0.5 at 0 -> 81 / 1.4 = 57.9
    assert merged.score == 58 and merged.verdict == "suspicious"
    reasons = {r["source"]: r for r in merged.reasons}
    assert reasons["a"]["weight"] == 0.9 and reasons["b"]["weight"] == 0.5
    old = verdict.merge([result("a", "malicious", 90, age_days=30), result("b", "harmless", 0)], reliability=rel, now=NOW)
    assert old.score is not None and old.score < merged.score, "a 30-day-old sighting counts half"
    assert {r["source"]: r["recency"] for r in old.reasons}["a"] == 0.5


def test_the_reasons_of_old_evidence_still_explain_the_score():
    """The fake intel fixtures (and real sources) give a last_seen years back: at 0.5 ** (900 / 30) every weight
    and recency was rounded to 0.0, so `GET /iocs/{id}` showed a malicious 89 made of reasons that all weighed 0."""
    rel = {"a": 0.7, "b": 0.8, "c": 0.5}
    merged = verdict.merge(
        [
            result("a", "malicious", 100, age_days=900),
            result("b", "malicious", 16, age_days=700),
            result("c", "malicious", 75, age_days=900),
        ],
        reliability=rel,
        now=NOW,
    )
    reasons = [r for r in merged.reasons if r["status"] == "ok"]
    assert all(r["weight"] > 0 and r["recency"] > 0 for r in reasons), reasons
    shown = sum(r["weight"] * r["score"] for r in reasons) / sum(r["weight"] for r in reasons)
    assert round(shown) == merged.score  # the listed weights give the score back


def test_verdict_ignores_errors_and_unknowns_but_lists_them():
    merged = verdict.merge(
        [result("a", "unknown", None), result("b", "unknown", None, status="timeout")], reliability={"a": 1, "b": 1}, now=NOW
    )
    assert merged.verdict == "unknown" and merged.score is None
    assert [r["reason"] for r in merged.reasons] == ["no usable verdict", "no usable verdict"]
    strong = verdict.merge([result("a", "malicious", None, families=["Emotet"])], reliability={"a": 0.8}, now=NOW)
    assert strong.verdict == "malicious" and strong.score == 100 and "Emotet" in strong.reasons[0]["reason"]


def test_evidence_rows_feed_correlation():
    rows = verdict.evidence_rows([result("vt", "malicious", 90, families=["Emotet", "Heodo"])])
    assert rows == [("vt", "malware_family", "Emotet"), ("vt", "malware_family", "Heodo")]


def test_select_applies_type_key_tlp_warninglist_and_auto_rules():
    sources = load_manifest().sources.values()

    def pick(**kw):
        args = {"ioc_type": "ipv4", "tlp": "amber", "tlp_withheld": False, "warninglisted": False, "force": False}
        args["usable_key"] = lambda s: True
        args.update(kw)
        return dispatch.select(sources, implemented=REGISTRY.keys(), **args)

    chosen, skipped = pick()
    assert {"virustotal", "abuseipdb", "internetdb"} <= set(chosen) and "malwarebazaar" in skipped
    assert skipped["malwarebazaar"] == "does not look up ipv4"
    chosen, skipped = pick(warninglisted=True)
    assert chosen == [] and "warninglisted" in skipped["virustotal"]
    assert pick(warninglisted=True, force=True)[0] == pick()[0]
    chosen, skipped = pick(tlp="red")
    assert chosen == [] and "TLP red" in skipped["internetdb"]
    chosen, skipped = pick(usable_key=lambda s: s.keyless)
    assert skipped["virustotal"] == "no_key"
    assert pick(wanted=["abuseipdb"])[0] == ["abuseipdb"]
    chosen, skipped = pick(auto=True, ioc_type="domain")
    assert "virustotal" not in chosen and "auto-enrichment" in skipped["virustotal"]


def test_settings_override_and_base_urls():
    env = {
        **load_manifest().sources_env(),
        "ENRICH_SOURCES_OVERRIDE": json.dumps({"virustotal": {"quota": {"per_minute": 2}}}),
        "INTEL_VIRUSTOTAL_URL": "http://127.0.0.1:9/vt",
    }
    settings = load(env)
    vt = settings.get("virustotal")
    assert vt.quota.per_minute == 2 and vt.quota.per_day == 500
    assert settings.base_urls == {"virustotal": "http://127.0.0.1:9/vt"}
    with pytest.raises(ConfigError, match="unknown sources: nope"):
        load({**load_manifest().sources_env(), "ENRICH_SOURCES_OVERRIDE": json.dumps({"nope": {}})})
    with pytest.raises(ConfigError, match="ENRICH_SOURCES_JSON is not set"):
        load({})
    cloud = load({"ENRICH_SOURCES_JSON": json.dumps(load_manifest().raw["sources"])})
    assert set(cloud.sources) == set(settings.sources)


class _Secrets:
    def __init__(self) -> None:
        self.values = {"vt-api-key": "one"}
        self.reads = 0

    def get(self, name: str) -> str:
        self.reads += 1
        if name not in self.values:
            raise ConfigError(f"secret {name!r} is not set")
        return self.values[name]


def test_keys_are_cached_briefly_so_a_new_version_is_picked_up():
    clock = [0.0]
    secrets = _Secrets()
    ring = KeyRing(secrets=secrets, cache_seconds=60, monotonic=lambda: clock[0])
    vt = load_manifest().sources["virustotal"]
    assert ring.get(vt) == "one" and ring.get(vt) == "one" and secrets.reads == 1
    secrets.values["vt-api-key"] = "two"
    clock[0] = 61
    assert ring.get(vt) == "two"
    assert ring.fingerprint(vt) != "two" and len(ring.fingerprint(vt)) == 12
    abuse = load_manifest().sources["abuseipdb"]
    assert ring.get(abuse) is None and not ring.usable(abuse)
    assert ring.usable(load_manifest().sources["internetdb"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"virustotal": {"timeout_seconds": "abc"}}, "virustotal.timeout_seconds"),  # float() raised ValueError
        ({"virustotal": {"timeout_seconds": -1}}, "virustotal.timeout_seconds"),  # requests refused it on every call
        ({"virustotal": {"max_tlp": "amber_strict"}}, "virustotal.max_tlp"),  # no TLP: the source was never asked
        ({"virustotal": {"quota": {"per_minute": 0}}}, "virustotal.quota.per_minute"),
        ({"virustotal": {"quota": {"per_minute": 4, "per_week": 9}}}, "virustotal.quota.per_week"),
        ({"virustotal": {"ttl_seconds": "1d"}}, "virustotal.ttl_seconds"),
        ({"virustotal": {"indicator_types": ["ipv4", "ip"]}}, "virustotal.indicator_types"),
        ({"virustotal": {"enabled": "no"}}, "virustotal.enabled"),  # bool("no") is True
        ({"virustotal": {"timout_seconds": 5}}, "virustotal.timout_seconds"),  # a typo was merged and ignored
        ({"virustotal": ["quota"]}, "virustotal"),
        # values that cannot be set members raised TypeError (unhashable type), naming no variable
        ({"virustotal": {"max_tlp": ["red"]}}, "virustotal.max_tlp"),
        ({"virustotal": {"max_tlp": {}}}, "virustotal.max_tlp"),
        ({"virustotal": {"indicator_types": [["ipv4"]]}}, "virustotal.indicator_types"),
        ({"virustotal": {"auto_enrich": [{}]}}, "virustotal.auto_enrich"),
    ],
)
def test_an_override_the_manifest_schema_refuses_is_a_config_error_naming_it(override, named):
    """ENRICH_SOURCES_OVERRIDE was merged over the manifest without the checks the manifest itself passes: a bad
    value failed later (a ValueError on the first request, a source silently never asked), not at start-up."""
    env = {**load_manifest().sources_env(), "ENRICH_SOURCES_OVERRIDE": json.dumps(override)}
    with pytest.raises(ConfigError, match=f"ENRICH_SOURCES_OVERRIDE: {re.escape(named)}"):
        load(env)


def test_the_overrides_the_tests_and_the_bench_use_are_accepted():
    override = {"virustotal": {"quota": {"per_minute": 20, "per_day": 500}, "timeout_seconds": 1.5, "max_tlp": "green"}}
    settings = load({**load_manifest().sources_env(), "ENRICH_SOURCES_OVERRIDE": json.dumps(override)})
    vt = settings.get("virustotal")
    assert (vt.quota.per_minute, vt.timeout_seconds, vt.max_tlp) == (20, 1.5, "green")


def test_the_override_checks_follow_the_manifest_schema():
    from threatflow.enrichment import settings
    from threatflow.platform.manifest import REPO_ROOT

    schema = json.loads((REPO_ROOT / "functions" / "topology.schema.json").read_text())
    source = schema["$defs"]["source"]["properties"]
    assert set(source) == {*settings._CHECKS, "quota"}
    assert set(source["quota"]["properties"]) == set(settings._QUOTA_KEYS)
    assert set(source["max_tlp"]["enum"]) == settings._TLPS
    assert set(schema["$defs"]["ioc_type"]["enum"]) == settings._IOC_TYPES
