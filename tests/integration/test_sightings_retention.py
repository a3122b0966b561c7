"""The prune-sightings maintenance job: ioc_sightings (one row per sighting: POST /iocs/{id}/sightings, the flow
bridge) grew without bound, as nothing deleted from it. The job deletes the sightings seen more than
params.retention_days ago, at most params.limit per invocation, and leaves the IoCs' own first_seen, last_seen and
detection_count as every sighting made them. Run through the real maintenance function on the run's emulators."""

import logging
from datetime import UTC, datetime, timedelta

import pytest
from helpers import IntelApi, SqlDb, run_maintenance_job

pytestmark = pytest.mark.integration

JOB = "prune-sightings"


@pytest.fixture
def api(function_client, backend_env):
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader", "admin"))


class Db(SqlDb):
    def seen(self, ioc_id):
        """The sightings kept for an IoC: their seen_at, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT seen_at FROM ioc_sightings WHERE ioc_id = %s ORDER BY seen_at", (ioc_id,))
            return [r[0] for r in rows]

    def old_sightings(self, ioc_id, n, *, days_ago):
        """n sightings seen `days_ago` days ago and a second apart (past what the API is asked for in a test)."""
        self.execute(
            "INSERT INTO ioc_sightings (ioc_id, seen_at, source)"
            " SELECT %s, now() - make_interval(days => %s) - make_interval(secs => g), 'old' FROM generate_series(1, %s) g",
            ioc_id,
            days_ago,
            n,
        )


def _ioc(api, value):
    response = api.post("/api/v1/iocs/batch", {"iocs": [{"value": value, "source": "feed"}]})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()["results"][0]["id"]


def _sight(api, ioc_id, *, days_ago, source="sensor"):
    seen_at = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    response = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"seen_at": seen_at, "source": source, "context": {"d": days_ago}})
    assert response.status_code == 201, response.get_json()


KEPT = ("first_seen", "last_seen", "detection_count", "sources", "active", "updated_at")


def _counters(api, ioc_id):
    response = api.get(f"/api/v1/iocs/{ioc_id}")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return {k: body[k] for k in KEPT}, [s["context"]["d"] for s in body["sightings"]]


def test_old_sightings_go_recent_ones_stay_and_the_iocs_counters_are_unchanged(api, db, function_client):
    ioc_id = _ioc(api, "198.51.100.40")
    other = _ioc(api, "198.51.100.41")
    for days in (800, 400, 366, 300, 10):
        _sight(api, ioc_id, days_ago=days)
    _sight(api, other, days_ago=500)
    before, listed = _counters(api, ioc_id)
    assert listed == [10, 300, 366, 400, 800] and before["detection_count"] == 6  # the batch's and 5 sightings

    status, run = run_maintenance_job(function_client("maintenance"), JOB)  # the schedule's defaults: 365 days
    assert status == 200 and run["state"] == "succeeded", run
    result = run["result"]
    assert (result["deleted"], result["more"], result["retention_days"], result["limit"]) == (4, False, 365, 200_000), result

    after, listed = _counters(api, ioc_id)
    assert listed == [10, 300]  # GET /iocs/{id} lists the sightings still kept
    assert after == before  # first_seen (800 days ago), last_seen, detection_count: as every sighting made them
    assert db.seen(other) == []
    assert _counters(api, other)[0]["detection_count"] == 2

    again = run_maintenance_job(function_client("maintenance"), JOB)[1]  # idempotent: nothing more is old
    assert again["state"] == "succeeded" and (again["result"]["deleted"], again["result"]["more"]) == (0, False)
    assert _counters(api, ioc_id) == (before, [10, 300])


def test_the_limit_bounds_one_run_and_the_next_run_continues_oldest_first(api, db, function_client):
    ioc_id = _ioc(api, "198.51.100.42")
    db.old_sightings(ioc_id, 7, days_ago=40)
    _sight(api, ioc_id, days_ago=5)
    maintenance = function_client("maintenance")
    stored = db.seen(ioc_id)

    first = run_maintenance_job(maintenance, JOB, {"retention_days": 30, "limit": 5})[1]
    assert first["state"] == "succeeded" and (first["result"]["deleted"], first["result"]["more"]) == (5, True), first
    assert db.seen(ioc_id) == stored[5:]  # the 5 oldest went: the 2 newest old ones and the recent one are left

    second = run_maintenance_job(maintenance, JOB, {"retention_days": 30, "limit": 5})[1]
    assert second["state"] == "succeeded" and (second["result"]["deleted"], second["result"]["more"]) == (2, False), second
    assert len(db.seen(ioc_id)) == 1


def test_a_run_deletes_in_short_transactions_of_a_batch_each(backend_env, api, db, caplog):
    """The job's own unit: `batch` rows a transaction, `limit` rows in all; one structured log line with the counts."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.iocs import retention
    from threatflow.platform.config import Settings

    ioc_id = _ioc(api, "198.51.100.43")
    db.old_sightings(ioc_id, 7, days_ago=400)
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    now = datetime.now(UTC)
    caplog.set_level(logging.INFO, logger=retention.__name__)
    try:
        first = retention.prune_sightings(engine=engine, now=now, retention_days=365, limit=5, batch=2)
        rest = retention.prune_sightings(engine=engine, now=now, retention_days=365, limit=5, batch=2)
    finally:
        engine.dispose()
    assert (first["deleted"], first["batches"], first["more"]) == (5, 3, True), first
    assert (rest["deleted"], rest["batches"], rest["more"]) == (2, 2, False), rest
    assert first["cutoff"] == (now - timedelta(days=365)).isoformat()
    lines = [r.fields for r in caplog.records if r.getMessage() == "sightings pruned"]
    assert lines == [{"job": JOB, **first}, {"job": JOB, **rest}]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"retention_days": 0}, "params.retention_days"),  # would delete every sighting up to now
        ({"retention_days": "365"}, "params.retention_days"),
        ({"limit": 2_000_001}, "params.limit"),
        ({"retention_day": 30}, "params.retention_day"),  # a typo would run with the default 365 days
    ],
)
def test_a_bad_param_is_a_400_from_the_admin_api_and_fails_a_published_run_deleting_nothing(api, db, function_client, params, field):
    ioc_id = _ioc(api, "198.51.100.44")
    db.old_sightings(ioc_id, 2, days_ago=4000)
    response = function_client("admin").post(f"/api/v1/admin/jobs/{JOB}/run", json={"params": params}, headers=api.admin)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["details"]["field"] == field
    # Published around the API (a hand-edited schedule): the run fails for good, acked, and nothing is deleted.
    status, run = run_maintenance_job(function_client("maintenance"), JOB, params)
    assert status in (200, 204) and run["state"] == "failed" and field.removeprefix("params.") in run["error"], run
    assert len(db.seen(ioc_id)) == 2
