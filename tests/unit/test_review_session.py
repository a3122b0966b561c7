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
