"""Every maintenance job's params are declared (threatflow.jobs.runs.JOB_PARAMS) and checked before a run is
queued; the manifest's own schedule bodies must pass the same check."""

import pytest

from threatflow.jobs import runs
from threatflow.platform.errors import ValidationError
from threatflow.platform.manifest import load_manifest


def _maintenance_schedules():
    return [s for s in load_manifest().schedules.values() if s.topic == "maintenance"]


def test_every_maintenance_schedule_names_a_job_whose_params_are_declared():
    for schedule in _maintenance_schedules():
        assert schedule.attributes["job"] in runs.JOBS, schedule.name
    assert set(runs.JOB_PARAMS) == set(runs.JOBS)


@pytest.mark.parametrize("schedule", _maintenance_schedules(), ids=lambda s: s.name)
def test_every_manifest_schedule_body_passes_the_params_check(schedule):
    runs.validate_params(schedule.attributes["job"], schedule.body.get("params") or {})


@pytest.mark.parametrize(
    ("job", "params", "field"),
    [
        ("flow-retention", {"retention_day": 30}, "params.retention_day"),  # a typo: ran with the default 90 days
        ("flow-retention", {"retention_days": -1}, "params.retention_days"),
        ("flow-retention", {"retention_days": "30"}, "params.retention_days"),
        ("heartbeat", {"limit": 5}, "params.limit"),
        ("sync-attack", {"force": "false"}, "params.force"),
        ("retrain-flows", {"max_rows": 10**9}, "params.max_rows"),
        ("retrain-flows", {"evaluation_object": "../x"}, "params.evaluation_object"),
        ("close-overdue-enrichment-runs", {"limit": 0}, "params.limit"),
        ("recover-stalled-flow-ingest-jobs", {"limt": 10}, "params.limt"),
    ],
)
def test_an_unknown_or_bad_param_names_its_field(job, params, field):
    with pytest.raises(ValidationError) as raised:
        runs.validate_params(job, params)
    assert raised.value.field == field


def test_good_params_pass():
    runs.validate_params("flow-retention", {"retention_days": 30})
    runs.validate_params("retrain-flows", {"enabled": True, "min_rows": 10, "max_rows": 100, "evaluation_object": None})
    runs.validate_params("heartbeat", {})
