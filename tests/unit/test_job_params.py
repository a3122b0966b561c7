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
        ("prune-sightings", {"retention_days": 0}, "params.retention_days"),  # every sighting up to now
        ("prune-sightings", {"retention_days": 36_501}, "params.retention_days"),
        ("prune-sightings", {"limit": 0}, "params.limit"),
        ("prune-sightings", {"limit": True}, "params.limit"),
        ("prune-sightings", {"limit": 2_000_001}, "params.limit"),
        ("prune-sightings", {"retention_day": 30}, "params.retention_day"),
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
    runs.validate_params("prune-sightings", {"retention_days": 1, "limit": 2_000_000})


def test_prune_sightings_is_scheduled_once_a_day_with_its_defaults():
    """ioc_sightings had no retention job; the manifest's schedule (Terraform and the local scheduler read it) runs
    it daily with the defaults the job itself falls back to."""
    from threatflow.iocs import retention

    schedule = load_manifest().schedules["prune-sightings"]
    assert (schedule.topic, schedule.attributes, schedule.time_zone) == ("maintenance", {"job": "prune-sightings"}, "Etc/UTC")
    minute, hour, *days = schedule.schedule.split()
    assert minute.isdigit() and hour.isdigit() and days == ["*", "*", "*"], schedule.schedule
    assert schedule.body == {"params": {"retention_days": retention.RETENTION_DAYS, "limit": retention.PRUNE_LIMIT}}


def test_cli_params_nested_past_the_decoders_depth_are_a_validation_error_not_a_traceback():
    """`threatflow jobs run NAME --params '[[[...'` (or `--param days=[[[...`) nested deeper than json.loads goes
    raised RecursionError, which the CLI does not catch: a traceback instead of its one-line error."""
    import argparse

    from threatflow.cli import main

    deep = "[" * 100_000
    with pytest.raises(ValidationError, match="--params is not JSON") as refused:
        main._given_params(argparse.Namespace(params=deep, param=[]))
    assert refused.value.field == "params"
    assert main._given_params(argparse.Namespace(params=None, param=[f"days={deep}"])) == {"days": deep}
