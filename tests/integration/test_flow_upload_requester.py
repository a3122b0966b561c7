"""A queued flow upload acts for its requester's account as it is when the flow-ingest worker runs it, as a queued
IoC import does (auth.requester.acting_for): an upload queued by an analyst since disabled, demoted to reader or
given a new password stores nothing (no events, and so no IoCs through the flow bridge)."""

import gzip

import pytest
from flows_support import deliver_upload, flows_api, ingest_job, queue_upload, sql_scalar
from helpers import create_user, require_shared_data

pytestmark = pytest.mark.integration


def _partitioned(rows: int) -> str:
    with gzip.open(require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz"), "rt") as handle:
        return "".join(next(handle) for _ in range(rows + 1))


@pytest.fixture
def admin(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    password = create_user(url, "flows-boss", "admin")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "flows-boss", "password": password}).get_json()
    return function_client("admin"), {"Authorization": f"Bearer {token['access_token']}"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("disable", "disabled or no longer exists"),
        ({"role": "reader"}, "analyst"),
        ({"password": "a brand new passphrase 42"}, "changed since"),
    ],
)
def test_a_queued_upload_stores_nothing_once_its_requesters_account_changed(function_client, backend_env, admin, change, message):
    """Before, the worker ran the job whatever had happened to the account since it was queued."""
    api = flows_api(function_client, backend_env["DATABASE_URL"])
    job_id = queue_upload(api, f"flows/leaver-{message.split()[0]}.csv.gz", gzip.compress(_partitioned(120).encode()))
    admin_api, as_admin = admin
    if change == "disable":
        assert admin_api.post("/api/v1/admin/users/flows-analyst/disable", headers=as_admin).status_code in (200, 204)
    else:
        assert admin_api.patch("/api/v1/admin/users/flows-analyst", json=change, headers=as_admin).status_code == 200
    before = sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events")
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200  # acked: a permanent failure
    job = ingest_job(job_id)
    assert job["state"] == "failed" and message in job["error"], job
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == before


def test_a_queued_upload_of_an_unchanged_account_runs(function_client, backend_env):
    api = flows_api(function_client, backend_env["DATABASE_URL"])
    job_id = queue_upload(api, "flows/kept.csv.gz", gzip.compress(_partitioned(50).encode()))
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "succeeded" and job["stored"] + job["duplicates"] == 50, job
