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
