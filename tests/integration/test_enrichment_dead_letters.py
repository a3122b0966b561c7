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


def _seed_data(client, doc_id, data, *, at, subscription="ioc-enrichment-requested-dead-letter-hold"):
    """One pending dead letter of a message with this data, as the drain writes it."""
    client.collection(COLLECTIONS[0]).document(doc_id).set(
        {
            "subscription": subscription,
            "source": "",
            "error": "failed every delivery attempt",
            "attempts": 5,
            "data": json.dumps(data),
            "run_id": data.get("run_id"),
            "value": data.get("value"),
            "dead_lettered_at": at,
            "published_at": "2026-11-27T00:00:00Z",
        }
    )


def test_dead_letters_whose_message_is_marked_or_names_iocs_above_the_callers_clearance_are_left_out(admin, function_client, backend_env):
    """Only a dead letter's `ioc_id` was checked, against the IoC as stored. A request names its TLP in the message:
    once the red IoC was deleted (what makes a task fail for good), an amber admin listed its red value and could
    replay it; an auto-enrichment message names its IoCs in `ioc_ids`, and one naming a red IoC was listed and
    replayed for an amber admin, a run on the red IoC. Both are now left out as an IoC above the clearance is."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    api, headers, store = admin  # amber, the default clearance
    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(AlreadyExists):  # where a replayed request goes
        publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], "ioc-enrichment-requested"))
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    chief_password = create_user(url, "dlq-red-chief", "admin", clearance="red")
    token = auth.post("/api/v1/auth/token", json={"username": "dlq-red-chief", "password": chief_password}).get_json()
    chief = {"Authorization": f"Bearer {token['access_token']}"}
    iocs = function_client("iocs")
    values = [{"value": "gone.red-dead-letter.example.com", "tlp": "red"}, {"value": "kept.red-dead-letter.example.com", "tlp": "red"}]
    gone_id, kept_id = (r["id"] for r in iocs.post("/api/v1/iocs/batch", json={"iocs": values}, headers=chief).get_json()["results"])
    request = {"run_id": "run-gone", "ioc_id": gone_id, "ioc_type": "domain", "value": values[0]["value"], "tlp": "red", "recorded": True}
    at = time.time() - 60
    _seed_data(store, "dl-red-request", request, at=at)
    _seed_data(store, "dl-red-ingest", {"origin": "ingest", "ioc_ids": [kept_id]}, at=at + 1)
    amber = {**request, "run_id": "run-amber", "ioc_id": 999_999_999, "value": "amber.example.org", "tlp": "amber"}
    _seed_data(store, "dl-amber-request", amber, at=at + 2)
    deleted = iocs.delete("/api/v1/iocs", json={"ids": [gone_id]}, headers=chief)
    assert deleted.status_code == 200 and deleted.get_json()["deleted"] == 1, deleted.get_json()

    listed = api.get("/api/v1/enrichment/dead-letters", headers=headers).get_json()
    assert [d["id"] for d in listed["dead_letters"]] == ["dl-amber-request"], listed
    assert "red-dead-letter" not in json.dumps(listed)
    named = api.post("/api/v1/enrichment/dead-letters/replay", json={"ids": ["dl-red-request", "dl-red-ingest"]}, headers=headers)
    assert named.status_code == 200 and named.get_json()["replayed"] == [], named.get_json()
    # A red admin sees and replays them.
    as_red = api.get("/api/v1/enrichment/dead-letters", headers=chief).get_json()
    assert {d["id"] for d in as_red["dead_letters"]} == {"dl-red-request", "dl-red-ingest", "dl-amber-request"}, as_red
    replayed = api.post("/api/v1/enrichment/dead-letters/replay", json={"ids": ["dl-red-request", "dl-red-ingest"]}, headers=chief)
    assert sorted(replayed.get_json()["replayed"]) == ["dl-red-ingest", "dl-red-request"], replayed.get_json()


def test_a_dead_letter_naming_an_ioc_id_past_bigint_is_listed_and_replayed_not_a_500(admin):
    """A poison message is exactly what an admin must see. The clearance filter read each message's `ioc_id` and
    `ioc_ids` as ints and asked PostgreSQL for their TLPs as bigint[]: one number past bigint's range (a forged or
    corrupted message; no IoC can have that id) failed the statement, so the list and the replay of every dead letter
    beside it answered 500 (Infinity, which json.loads reads, raised OverflowError: a 500 too)."""
    api, headers, store = admin
    at = time.time() - 60
    _seed_data(store, "dl-huge-id", {"run_id": "run-huge", "ioc_id": 2**63, "ioc_type": "ipv4", "value": "198.51.100.8"}, at=at)
    # json.loads reads Infinity too: int() of it is an OverflowError
    _seed_data(store, "dl-huge-ids", {"origin": "ingest", "ioc_ids": [-(2**63) - 1, 10**30, float("inf")]}, at=at + 1)
    _seed_data(store, "dl-plain", {"run_id": "run-plain", "ioc_id": 999_999_999, "ioc_type": "ipv4", "value": "198.51.100.9"}, at=at + 2)

    listed = api.get("/api/v1/enrichment/dead-letters", headers=headers)
    assert listed.status_code == 200, listed.get_json()
    assert [d["id"] for d in listed.get_json()["dead_letters"]] == ["dl-plain", "dl-huge-ids", "dl-huge-id"]
    replayed = api.post("/api/v1/enrichment/dead-letters/replay", json={"ids": ["dl-huge-id", "dl-huge-ids"]}, headers=headers)
    assert replayed.status_code == 200, replayed.get_json()
    assert sorted(replayed.get_json()["replayed"]) == ["dl-huge-id", "dl-huge-ids"]
