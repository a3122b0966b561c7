"""Dead letters stay listable and replayable however many have been replayed before.

A replay marked each dead letter `replayed_at` and kept it where the pending ones are, and both routes read one
page of that collection and dropped the replayed ones afterwards: `GET /dead-letters` (newest first, `limit`)
listed nothing once the newest page had been replayed, and `POST /dead-letters/replay` read the first 500
documents by id, so `{"ids": [...]}` naming one beyond them replayed nothing (and, once 500 had been replayed,
neither did a replay of all)."""

import contextlib
import json
import time

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration

COLLECTIONS = ("enrichment_dead_letters", "enrichment_dead_letters_replayed")


def _clear(client):
    for name in COLLECTIONS:
        while docs := list(client.collection(name).limit(400).stream()):
            batch = client.batch()
            for doc in docs:
                batch.delete(doc.reference)
            batch.commit()


def _seed(client, ids, *, start, ioc_id=None):
    """Pending dead letters as the drain writes them, the first id the oldest."""
    for offset in range(0, len(ids), 400):
        batch = client.batch()
        for i, doc_id in enumerate(ids[offset : offset + 400], start=offset):
            data = {"run_id": f"run-{doc_id}", "ioc_id": ioc_id, "ioc_type": "ipv4", "value": "198.51.100.7", "source": "otx"}
            batch.set(
                client.collection(COLLECTIONS[0]).document(doc_id),
                {
                    "subscription": "enrich-otx-dead-letter-hold",
                    "source": "otx",
                    "error": "LookupError: IoC 1 does not exist",
                    "attempts": 5,
                    "data": json.dumps(data),
                    "run_id": data["run_id"],
                    "value": data["value"],
                    "dead_lettered_at": start + i,
                    "published_at": "2026-11-27T00:00:00Z",
                },
            )
        batch.commit()


def _replay_all(api, headers, *, calls=3):
    """A replay of all, called again from each answer's `after` while it says `more` (at most `calls` times)."""
    replayed, body = [], {}
    for _ in range(calls):
        answer = api.post("/api/v1/enrichment/dead-letters/replay", json=body, headers=headers)
        assert answer.status_code == 200, answer.get_json()
        replayed += answer.get_json()["replayed"]
        if not answer.get_json()["more"]:
            break
        body = {"after": answer.get_json()["after"]}
    return replayed


@pytest.fixture
def admin(function_client, backend_env):
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import firestore, pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], "enrichment-tasks"))
    store = firestore.Client(project=backend_env["GOOGLE_CLOUD_PROJECT"])
    password = create_user(backend_env["DATABASE_URL"], "dlq-admin", "admin")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "dlq-admin", "password": password}).get_json()
    api, headers = function_client("enrichment"), {"Authorization": f"Bearer {token['access_token']}"}
    # Earlier tests' dead letters (test_enrichment_pipeline.py's) wait in the hold subscriptions, and a list drains
    # them into the collection: drain them first, then clear, or they showed up in this test's list.
    assert api.get("/api/v1/enrichment/dead-letters", headers=headers).status_code == 200
    _clear(store)
    yield api, headers, store
    _clear(store)


def test_the_list_shows_pending_dead_letters_behind_a_page_of_replayed_ones(admin):
    api, headers, store = admin
    ids = [f"dl-{i:02d}" for i in range(11)]
    _seed(store, ids, start=time.time() - 3600)
    newest = ids[1:]
    replayed = api.post("/api/v1/enrichment/dead-letters/replay", json={"ids": newest}, headers=headers)
    assert replayed.status_code == 200 and sorted(replayed.get_json()["replayed"]) == newest, replayed.get_json()
    listed = api.get("/api/v1/enrichment/dead-letters", query_string={"limit": 10}, headers=headers)
    assert listed.status_code == 200
    assert [d["id"] for d in listed.get_json()["dead_letters"]] == ["dl-00"]


def test_a_dead_letter_beyond_the_first_500_is_replayed_by_id(admin):
    api, headers, store = admin
    ids = [f"dl-{i:03d}" for i in range(500)] + ["zz-last"]
    _seed(store, ids, start=time.time() - 3600)
    replayed = api.post("/api/v1/enrichment/dead-letters/replay", json={"ids": ["zz-last"]}, headers=headers)
    assert replayed.status_code == 200 and replayed.get_json()["replayed"] == ["zz-last"], replayed.get_json()
    again = api.post("/api/v1/enrichment/dead-letters/replay", json={"ids": ["zz-last"]}, headers=headers)
    assert again.get_json()["replayed"] == []  # replayed once


def test_a_replay_of_all_reaches_pending_dead_letters_behind_500_above_the_callers_clearance(admin, function_client, backend_env):
    """A replay of all read the 500 oldest and left out those naming an IoC above the caller's clearance; they stay,
    so every call read the same 500, replayed nothing and answered `more`: a pending dead letter behind them was
    never replayed by an amber admin, however often called. The answer's `after` pages past them."""
    api, headers, store = admin  # amber, the default clearance
    password = create_user(backend_env["DATABASE_URL"], "dlq-red-analyst", "analyst", clearance="red")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "dlq-red-analyst", "password": password}).get_json()
    red = {"Authorization": f"Bearer {token['access_token']}"}
    stored = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.101.9", "tlp": "red"}]}, headers=red)
    assert stored.status_code in (200, 201, 207), stored.get_json()
    (result,) = stored.get_json()["results"]
    start = time.time() - 3600
    _seed(store, [f"dl-red-{i:03d}" for i in range(500)], start=start, ioc_id=result["id"])
    _seed(store, ["dl-visible"], start=start + 600)
    replayed = _replay_all(api, headers)
    assert replayed == ["dl-visible"]


def test_the_list_fills_its_page_past_dead_letters_above_the_callers_clearance(admin, function_client, backend_env):
    """The list read the newest `limit` dead letters and then left out those naming an IoC above the caller's
    clearance: behind 30 such ones an amber admin's page of 10 came back empty, with nothing to say more were
    pending. It now reads on until the page is full, and pages on with `before`."""
    api, headers, store = admin  # amber, the default clearance
    password = create_user(backend_env["DATABASE_URL"], "dlq-red-lister", "analyst", clearance="red")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "dlq-red-lister", "password": password}).get_json()
    red = {"Authorization": f"Bearer {token['access_token']}"}
    stored = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.101.10", "tlp": "red"}]}, headers=red)
    (result,) = stored.get_json()["results"]
    start = time.time() - 3600
    visible = [f"dl-visible-{i:02d}" for i in range(13)]  # older than the red ones
    _seed(store, visible, start=start)
    _seed(store, [f"dl-red-{i:02d}" for i in range(30)], start=start + 600, ioc_id=result["id"])
    pages, query = [], {"limit": 10}
    for _ in range(4):
        answer = api.get("/api/v1/enrichment/dead-letters", query_string=query, headers=headers)
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        pages.append([d["id"] for d in body["dead_letters"]])
        if not body["more"]:
            assert "before" not in body
            break
        query = {"limit": 10, "before": body["before"]}
    newest_first = visible[::-1]
    assert pages == [newest_first[:10], newest_first[10:]]


def test_a_bad_before_is_a_400(admin):
    api, headers, _ = admin
    for bad in ("soon", "-1", "nan", "inf"):
        answer = api.get("/api/v1/enrichment/dead-letters", query_string={"before": bad}, headers=headers)
        assert answer.status_code == 400 and answer.get_json()["error"]["details"]["field"] == "before", (bad, answer.get_json())


def test_paging_loses_no_dead_letter_that_shares_its_timestamp_with_the_page_end(admin):
    """`before` was the last listed dead letter's dead_lettered_at and the next page read those strictly older: the
    others of the same instant (a drain writes a batch with one clock) behind a full page, or behind a full chunk
    read inside one call, were never listed."""
    api, headers, store = admin
    start = time.time() - 3600
    _seed(store, ["dl-a-old"], start=start)
    for doc_id in ("dl-b-1", "dl-b-2", "dl-b-3"):
        _seed(store, [doc_id], start=start + 10)
    _seed(store, ["dl-c-new"], start=start + 20)
    listed, query = [], {"limit": 2}
    for _ in range(6):
        answer = api.get("/api/v1/enrichment/dead-letters", query_string=query, headers=headers)
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        listed += [d["id"] for d in body["dead_letters"]]
        if not body["more"]:
            break
        query = {"limit": 2, "before": body["before"]}
    assert sorted(listed) == ["dl-a-old", "dl-b-1", "dl-b-2", "dl-b-3", "dl-c-new"]
    assert len(listed) == 5


def test_a_replay_of_all_paged_by_after_replays_the_dead_letters_sharing_the_500th_ones_timestamp(admin, monkeypatch):
    """A replay of all handed on `after` = the 500th dead letter's dead_lettered_at and the next call read those
    strictly newer: the 501st, of the same instant, was never replayed by a caller following `after`. (A read of 4
    here, not 500: publishing 501 took 14 s.)"""
    from threatflow.enrichment import api as enrichment_api

    monkeypatch.setattr(enrichment_api, "MAX_REPLAY", 4)
    api, headers, store = admin
    start = time.time() - 3600
    _seed(store, [f"dl-{i:03d}" for i in range(3)], start=start)
    for doc_id in ("dl-tie-a", "dl-tie-b"):
        _seed(store, [doc_id], start=start + 1000)
    replayed = _replay_all(api, headers)
    assert sorted(replayed) == ["dl-000", "dl-001", "dl-002", "dl-tie-a", "dl-tie-b"]
