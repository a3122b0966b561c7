"""Review of this session's work (review2), offline parts."""

import pytest

from threatflow.platform.errors import ConfigError


@pytest.mark.parametrize("variable", ["ENRICH_RUN_DEADLINE_SECONDS", "ENRICH_KEY_CACHE_SECONDS"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5"])
def test_enrichment_seconds_that_are_not_finite_and_positive_fail_at_start_naming_the_variable(variable, value):
    """float() reads all of these; a NaN or infinite run deadline is never due and never matched by the overdue
    sweep's range query, so runs with a silent source stayed open for ever instead of failing the start."""
    from threatflow.enrichment import settings
    from threatflow.platform.manifest import load_manifest

    env = {**load_manifest().sources_env(), variable: value}
    with pytest.raises(ConfigError, match=variable):
        settings.load(env)


def test_enrichment_seconds_in_range_are_accepted():
    from threatflow.enrichment import settings
    from threatflow.platform.manifest import load_manifest

    loaded = settings.load({**load_manifest().sources_env(), "ENRICH_RUN_DEADLINE_SECONDS": "0.5", "ENRICH_KEY_CACHE_SECONDS": "0"})
    assert (loaded.run_deadline_seconds, loaded.key_cache_seconds) == (0.5, 0.0)


def test_no_data_source_waits_for_the_api_list_as_a_whole():
    """Terraform reads a data source at apply time, its attributes unknown during the plan, whenever a resource it
    depends on (depends_on or a reference, any instance of it) has changes pending: checked with Terraform 1.11 and
    its built-in provider. data.google_project waited for google_project_service.service, the for_each over every
    API, so adding any API to services.tf left the project number unknown and planned the replacement of every IAM
    grant to the Pub/Sub service agent (its address holds the number): the push token creator among them, so pushes
    fail until the new grant propagates. A data source must depend on an API resource of its own."""
    import json
    import re
    from pathlib import Path

    import hcl2

    terraform = Path(__file__).resolve().parents[2] / "terraform"
    iterating, data_sources = set(), {}
    for path in sorted(terraform.glob("*.tf")):
        parsed = hcl2.loads(path.read_text())
        for block in parsed.get("resource", []):
            for name, body in block.get('"google_project_service"', block.get("google_project_service", {})).items():
                if "for_each" in body:
                    iterating.add(name.strip('"'))
        for block in parsed.get("data", []):
            for dtype, named in block.items():
                for name, body in named.items():
                    data_sources[f"data.{dtype.strip(chr(34))}.{name.strip(chr(34))}"] = json.dumps(body)
    assert iterating and data_sources, "nothing parsed: the check would pass vacuously"
    waiting = {
        source: sorted(set(re.findall(r"google_project_service\.([a-z0-9_]+)", text)) & iterating) for source, text in data_sources.items()
    }
    assert not {source: names for source, names in waiting.items() if names}, waiting
