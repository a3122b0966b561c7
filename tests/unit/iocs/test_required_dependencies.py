"""Services that need reference data take it as required keyword-only arguments: leaving it out is a TypeError."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest

from threatflow.intel import importer
from threatflow.intel.formats import parse
from threatflow.iocs import service

NEEDS = {
    service.upsert_batch: ("warninglists", "policies", "clearance", "new_tlp"),
    importer.apply_import: ("warninglists", "policies", "catalog", "clearance"),
    importer.run_job: ("warninglists", "policies", "catalog"),
}


@pytest.mark.parametrize("function", list(NEEDS), ids=lambda f: f.__qualname__)
def test_reference_data_is_required_and_keyword_only(function):
    parameters = inspect.signature(function).parameters
    for name in NEEDS[function]:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[name].default is inspect.Parameter.empty, f"{function.__qualname__}({name}=...) has a default"


def test_an_upsert_without_warninglists_is_a_type_error_not_a_silent_skip():
    with pytest.raises(TypeError, match="warninglists"):
        service.upsert_batch([], conn=None, now=datetime.now(UTC), policies={})  # type: ignore[call-arg]


def test_an_import_without_warninglists_is_a_type_error_not_a_silent_skip():
    parsed = parse("text", "beacon to 10.1.2.3")
    with pytest.raises(TypeError, match="warninglists"):
        importer.apply_import(parsed, conn=None, now=datetime.now(UTC), actor=None, catalog=None, policies={})  # type: ignore[call-arg]
