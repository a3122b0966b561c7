"""POST /api/v1/enrichment/batch checks what each item names as POST /enrich does.

The README gives a batch item `{value, type?, force?, sources?}`. The batch-wide `sources` and /enrich's were
checked against the manifest (400, field `sources`), an item's were not: `{"value": ..., "sources": ["virustotl"]}`
was accepted, its run asked no source, and it closed `unknown` with nothing skipped, which `threatflow enrich`
printed as "no source is configured"."""

import contextlib

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


@pytest.fixture
def api(function_client, backend_env):
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], "ioc-enrichment-requested"))
    password = create_user(backend_env["DATABASE_URL"], "batcher", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "batcher", "password": password}).get_json()
    return function_client("enrichment"), {"Authorization": f"Bearer {token['access_token']}"}


def test_an_items_unknown_source_is_a_400_naming_the_item(api):
    client, headers = api
    body = {"iocs": ["198.51.100.7", {"value": "evil-batch.example.com", "sources": ["virustotal", "virustotl"]}]}
    response = client.post("/api/v1/enrichment/batch", json=body, headers=headers)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["details"]["field"] == "iocs[1].sources" and "virustotl" in error["message"]


def test_an_items_known_sources_are_accepted(api):
    client, headers = api
    body = {"iocs": [{"value": "evil-batch.example.com", "sources": ["virustotal"]}]}
    response = client.post("/api/v1/enrichment/batch", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["runs"][0]["status"] == "running"


def test_a_source_named_many_times_is_carried_once_by_each_run(api, backend_env):
    """`sources` (the batch's, an item's, /enrich's) was checked as a set of known names but carried as given: each
    run's Firestore record and its published request held the whole list. A 380 KB body of 400 IoCs naming
    "virustotal" 30,000 times made 400 records and 400 requests of 30,000 names each, 150 MB written to Firestore and
    as much published, where the body names one source; 100,000 names (1.2 MB) made one /enrich record past
    Firestore's 1 MiB document limit. A run carries each source it names once, in the order first named."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.enrichment import runs

    client, headers = api
    documents = FirestoreDocuments(backend_env["GOOGLE_CLOUD_PROJECT"])
    repeated = ["virustotal", "otx"] + ["virustotal"] * 30_000
    body = {"iocs": [f"198.51.100.{n}" for n in range(1, 201)] + [f"many-sources-{n}.example.com" for n in range(200)]}
    body["sources"] = repeated
    response = client.post("/api/v1/enrichment/batch", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    started = [r for r in response.get_json()["runs"] if r.get("status") == "running"]
    assert len(started) == 400
    for run in started[:3] + started[-3:]:
        record = runs.get_run(documents, run["run_id"])
        assert record["request"]["sources"] == ["virustotal", "otx"], len(record["request"]["sources"])
    single = client.post("/api/v1/enrichment/enrich", json={"value": "one-run.example.com", "sources": ["otx"] * 100_000}, headers=headers)
    assert single.status_code == 202, single.get_json()
    assert runs.get_run(documents, single.get_json()["run_id"])["request"]["sources"] == ["otx"]
