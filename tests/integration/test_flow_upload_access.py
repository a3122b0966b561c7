"""Flow upload jobs are their owner's: another user (reader or analyst) cannot read one, even with its id.

As with IoC import jobs (test_hardening_access.py), a job that is not yours answers 404, never 403,
so an id is not confirmed; admins read every job.
"""

import contextlib

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
UPLOADS = "threatflow-uploads"


def _bearer(function_client, database_url, username, role):
    password = create_user(database_url, username, role)
    body = function_client("auth").post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()
    return {"Authorization": f"Bearer {body['access_token']}"}


@pytest.fixture
def users(function_client, backend_env):
    from flows_support import publish, trained_model
    from google.cloud import pubsub_v1

    from threatflow.adapters.storage import GcsBlobs

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(Exception):  # already made by an earlier test in this run
        publisher.create_topic(name=publisher.topic_path(PROJECT, "flow-ingest"))
    publish(GcsBlobs(PROJECT), trained_model())  # an upload is queued only while a model is served
    url = backend_env["DATABASE_URL"]
    return {
        name: _bearer(function_client, url, name, role)
        for name, role in (("uploader", "analyst"), ("colleague", "analyst"), ("watcher", "reader"), ("chief", "admin"))
    }


def test_users_read_only_their_own_upload_jobs(function_client, users):
    from threatflow.adapters.storage import GcsBlobs

    GcsBlobs(PROJECT).put(UPLOADS, "flows/owned.csv", b"1,2,3\n")
    flows = function_client("flows")
    queued = flows.post("/api/v1/flows/uploads", json={"object": "flows/owned.csv"}, headers=users["uploader"])
    assert queued.status_code == 202, queued.get_data(as_text=True)
    status_url = queued.get_json()["status_url"]
    job_id = queued.get_json()["job_id"]

    assert flows.get(status_url, headers=users["uploader"]).get_json()["job_id"] == job_id
    assert flows.get(status_url, headers=users["chief"]).status_code == 200
    for stranger in ("colleague", "watcher"):
        response = flows.get(status_url, headers=users[stranger])
        assert response.status_code == 404, (stranger, response.get_data(as_text=True))
        # the same answer as an id that never existed: nothing tells the two apart
        missing = flows.get("/api/v1/flows/uploads/" + "0" * 32, headers=users[stranger])
        assert missing.status_code == 404 and response.get_json()["error"]["code"] == missing.get_json()["error"]["code"]
        assert "owned.csv" not in response.get_data(as_text=True)


def test_posting_an_object_another_user_is_ingesting_does_not_reveal_their_job(function_client, users):
    """The one-active-job-per-generation dedup answered the running job itself to whoever posted the same object."""
    from threatflow.adapters.storage import GcsBlobs

    GcsBlobs(PROJECT).put(UPLOADS, "flows/shared.csv", b"1,2,3\n")
    flows = function_client("flows")
    first = flows.post("/api/v1/flows/uploads", json={"object": "flows/shared.csv"}, headers=users["uploader"])
    assert first.status_code == 202
    job_id = first.get_json()["job_id"]

    again = flows.post("/api/v1/flows/uploads", json={"object": "flows/shared.csv"}, headers=users["uploader"])
    assert again.status_code == 202 and again.get_json()["deduplicated"] is True and again.get_json()["job_id"] == job_id
    by_admin = flows.post("/api/v1/flows/uploads", json={"object": "flows/shared.csv"}, headers=users["chief"])
    assert by_admin.status_code == 202 and by_admin.get_json()["job_id"] == job_id

    other = flows.post("/api/v1/flows/uploads", json={"object": "flows/shared.csv"}, headers=users["colleague"])
    assert other.status_code == 409, other.get_data(as_text=True)
    assert job_id not in other.get_data(as_text=True) and "uploader" not in other.get_data(as_text=True)


def test_an_upload_with_no_flow_model_served_is_a_503_naming_the_command_not_a_job_that_can_only_fail(
    function_client, users, models_bucket
):
    """With no model promoted (a new stack; or `make run` again: the local Cloud Storage emulator keeps no data), the
    upload was queued, and every delivery of its job failed "will retry: no flow model is published": `flows load
    --upload` showed `running 0 rows` until the stalled-job sweep gave up on it, an hour later. POST /flows/batch
    answers a 503 naming `threatflow models train` at once; so does the upload now, and queues nothing."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.storage import GcsBlobs

    GcsBlobs(PROJECT).put(UPLOADS, "flows/unscored.csv", b"1,2,3\n")
    flows = function_client("flows")  # loaded after models_bucket: its models bucket is empty
    queued = flows.post("/api/v1/flows/uploads", json={"object": "flows/unscored.csv"}, headers=users["uploader"])
    assert queued.status_code == 503, queued.get_data(as_text=True)
    assert "threatflow models train" in queued.get_json()["error"]["message"]
    jobs = FirestoreDocuments(PROJECT).query("flow_ingest_jobs", where=[("object", "==", "flows/unscored.csv")], limit=5)
    assert list(jobs) == []
