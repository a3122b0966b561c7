"""The iocs function over its real HTTP surface, against PostgreSQL."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


@pytest.fixture
def api(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "analyst1", "analyst")
    token = (
        function_client("auth").post("/api/v1/auth/token", json={"username": "analyst1", "password": password}).get_json()["access_token"]
    )
    admin_password = create_user(backend_env["DATABASE_URL"], "admin1", "admin")
    admin_token = (
        function_client("auth")
        .post("/api/v1/auth/token", json={"username": "admin1", "password": admin_password})
        .get_json()["access_token"]
    )
    client = function_client("iocs")

    class Api:
        headers = {"Authorization": f"Bearer {token}"}
        admin = {"Authorization": f"Bearer {admin_token}"}

        def post(self, path, body, headers=None):
            return client.post(path, json=body, headers=headers or self.headers)

        def get(self, path, headers=None):
            return client.get(path, headers=headers or self.headers)

        def delete(self, path, body, headers=None):
            return client.delete(path, json=body, headers=headers or self.admin)

        def put(self, path, body, headers=None):
            return client.put(path, json=body, headers=headers or self.admin)

    return Api()


def test_batch_creates_then_updates_and_merges(api):
    first = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "hxxp://Evil[.]COM:80/a#frag", "tags": ["Emotet"], "source": "feed-a"}]})
    assert first.status_code == 200
    result = first.get_json()["results"][0]
    assert result["status"] == "created" and result["type"] == "url" and result["value"] == "http://evil.com/a"
    again = api.post(
        "/api/v1/iocs/batch", {"iocs": [{"value": "http://evil.com/a", "tags": ["loader"], "source": "feed-b", "tlp": "TLP:GREEN"}]}
    )
    assert again.get_json()["results"][0] == {**result, "status": "updated"}
    ioc = api.get(f"/api/v1/iocs/{result['id']}").get_json()
    assert ioc["tags"] == ["emotet", "loader"] and ioc["sources"] == ["feed-a", "feed-b"]
    assert ioc["detection_count"] == 2 and ioc["tlp"] == "green"
    assert ioc["first_seen"] <= ioc["last_seen"]
    assert ioc["expires_at"] > ioc["last_seen"]  # default TTL applied
    assert ioc["score_explanation"]["model"] == "polynomial"


def test_bad_items_are_named_and_good_ones_stored(api):
    good = [{"value": f"45.{i // 250}.{i % 250}.7"} for i in range(990)]
    bad = [
        {"value": "999.1.1.1", "type": "ipv4"},
        {"value": "a" * 31, "type": "sha256"},
        {"value": "nodot"},
        {"value": "example", "type": "domain"},
        {"value": "1.2.3.4", "type": "md5"},
        {"value": "1.2.3.4", "tlp": "purple"},
        {"value": "1.2.3.4", "confidence": 101},
        {"value": ""},
        {"value": "1.2.3.4", "colour": "red"},
        {"value": "2001:db8::zz", "type": "ipv6"},
    ]
    items = good[:500] + bad + good[500:]
    response = api.post("/api/v1/iocs/batch", {"iocs": items})
    assert response.status_code == 200
    body = response.get_json()
    assert body["summary"]["created"] == 990 and body["summary"]["rejected"] == 10
    rejected = [r for r in body["results"] if r["status"] == "rejected"]
    assert [r["index"] for r in rejected] == list(range(500, 510))
    assert all(r["reason"] for r in rejected)
    assert "tlp" in rejected[5]["reason"].lower() and "colour" in rejected[8]["reason"]
    assert api.post("/api/v1/iocs/find", {"type": ["ipv4"], "limit": 1}).get_json()["count"] == 1


def test_duplicates_inside_a_batch_collapse(api):
    body = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "1.1.1.9"}, {"value": "1[.]1[.]1[.]9", "tags": ["x"]}]}).get_json()
    assert [r["status"] for r in body["results"]] == ["created", "unchanged"]
    assert body["results"][0]["id"] == body["results"][1]["id"]
    assert api.get(f"/api/v1/iocs/{body['results'][0]['id']}").get_json()["tags"] == ["x"]


def test_batch_limit_is_enforced(api):
    response = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "1.1.1.1"}] * 10_001})
    assert response.status_code == 413


def test_lookup_by_value_normalises_first(api):
    created = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "bad.example.org"}]}).get_json()["results"][0]
    found = api.get("/api/v1/iocs/value/BAD[.]Example[.]ORG.")
    assert found.status_code == 200 and found.get_json()["id"] == created["id"]
    assert api.get("/api/v1/iocs/value/not-there.example.net").status_code == 404
    assert api.get("/api/v1/iocs/value/999.999.1.1?type=ipv4").status_code == 400
    assert api.get("/api/v1/iocs/123456789").status_code == 404


def test_find_filters_and_keyset_pages(api):
    items = [{"value": f"host{i}.campaign-test.com", "tags": ["camp" if i % 2 else "other"], "source": "s1"} for i in range(25)]
    items += [{"value": f"{f'{i:064x}'}", "source": "s2", "tlp": "red"} for i in range(1, 6)]
    api.post("/api/v1/iocs/batch", {"iocs": items})
    seen = []
    cursor = None
    while True:
        page = api.post("/api/v1/iocs/find", {"type": ["domain"], "limit": 10, **({"cursor": cursor} if cursor else {})}).get_json()
        seen += [i["id"] for i in page["iocs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 25 and len(set(seen)) == 25 and seen == sorted(seen, reverse=True)
    assert api.post("/api/v1/iocs/find", {"tags": ["camp"]}).get_json()["count"] == 12
    assert api.post("/api/v1/iocs/find", {"source": "s2"}).get_json()["count"] == 0  # TLP:RED is above the default clearance (amber)
    assert api.post("/api/v1/iocs/find", {"source": "s2", "max_tlp": "red"}).get_json()["count"] == 0  # max_tlp cannot raise it
    assert api.post("/api/v1/iocs/find", {"max_tlp": "amber", "type": ["sha256"]}).get_json()["count"] == 0
    assert api.post("/api/v1/iocs/find", {"value_prefix": "host1"}).get_json()["count"] == 11
    assert api.post("/api/v1/iocs/find", {"value_contains": "t2.camp"}).get_json()["count"] == 1
    now = datetime.now(UTC)
    assert (
        api.post("/api/v1/iocs/find", {"last_seen_from": (now - timedelta(hours=1)).isoformat(), "type": ["domain"]}).get_json()["count"]
        == 25
    )
    bad = api.post("/api/v1/iocs/find", {"type": ["bogus"]})
    assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "type[0]"
    assert api.post("/api/v1/iocs/find", {"limit": 1001}).status_code == 400


def test_a_find_or_delete_filters_tlp_spelled_as_writes_accept_it_is_read(api):
    """Writes (and GET /export's query) read `TLP:GREEN`, `tlp-green`, `AMBER` or `TLP_AMBER+STRICT` as that TLP; the
    JSON filter of POST /find and DELETE refused them (a 400: the filter's TLPs were a strict enum). A value that is
    no TLP is still a 400 naming the field and the value."""
    marked = [("clear", "c"), ("green", "g"), ("amber", "a")]
    stored = api.post("/api/v1/iocs/batch", {"iocs": [{"value": f"{name}.tlp-spelling.example.com", "tlp": tlp} for tlp, name in marked]})
    assert stored.get_json()["summary"]["created"] == 3

    def found(body):
        response = api.post("/api/v1/iocs/find", body)
        assert response.status_code == 200, response.get_json()
        return sorted(i["value"].split(".")[0] for i in response.get_json()["iocs"])

    assert found({"tlp": ["TLP:GREEN"]}) == ["g"]
    assert found({"tlp": ["tlp-green", "AMBER", "TLP_AMBER+STRICT"]}) == ["a", "g"]  # amber+strict: above the caller's amber
    assert found({"max_tlp": "TLP:GREEN"}) == ["c", "g"]
    assert found({"max_tlp": " tlp: Amber "}) == found({"max_tlp": "TLP:AMBER+STRICT"}) == ["a", "c", "g"]
    assert found({"max_tlp": "white"}) == ["c"]  # TLP 1.0's white, as writes read it
    no_tlp = [("max_tlp", "purple", "purple"), ("tlp", ["green", "TLP:PINK"], "TLP:PINK"), ("tlp", ["tlp:tlp:red"], "tlp:tlp:red")]
    for name, given, value in no_tlp:
        refused = api.post("/api/v1/iocs/find", {name: given})
        error = refused.get_json()["error"]
        field = name if isinstance(given, str) else f"{name}[{given.index(value)}]"
        assert (refused.status_code, error["details"]["field"]) == (400, field) and repr(value) in error["message"]
    deleted = api.delete("/api/v1/iocs", {"filter": {"tlp": ["TLP:CLEAR", "tlp-green"], "value_contains": "tlp-spelling"}, "confirm": True})
    assert deleted.get_json() == {"deleted": 2, "more": False}
    assert found({"value_contains": "tlp-spelling"}) == ["a"]


def test_an_export_query_reads_amber_strict_typed_unencoded(function_client, backend_env):
    """`?max_tlp=amber+strict` is what users type, and an unencoded '+' in a query string is a space: the export
    answered 400 "Invalid enum value 'amber strict'". `amber strict` (any case, with or without a `tlp` prefix) is
    amber+strict; other words between amber and strict, and MISP's `tlp:ex:chr`, are still no TLP."""
    password = create_user(backend_env["DATABASE_URL"], "redexporter", "analyst", clearance="red")
    auth = function_client("auth").post("/api/v1/auth/token", json={"username": "redexporter", "password": password})
    headers = {"Authorization": f"Bearer {auth.get_json()['access_token']}"}
    client = function_client("iocs")
    marked = [("amber", "a"), ("amber+strict", "s"), ("red", "r")]
    items = [{"value": f"{name}.plus-spelling.example.com", "tlp": tlp} for tlp, name in marked]
    assert client.post("/api/v1/iocs/batch", json={"iocs": items}, headers=headers).get_json()["summary"]["created"] == 3

    def exported(query):
        response = client.get(f"/api/v1/iocs/export?format=txt&value_contains=plus-spelling&{query}", headers=headers)
        assert response.status_code == 200, response.get_json()
        return sorted(line.split(".")[0] for line in response.data.decode().split())

    assert exported("max_tlp=amber+strict") == ["a", "s"]
    assert exported("max_tlp=TLP:Amber++Strict") == exported("max_tlp=tlp+AMBER+STRICT") == ["a", "s"]
    assert exported("max_tlp=red&tlp=amber+strict") == ["s"]
    assert exported("max_tlp=red&tlp=green,TLP:AMBER+STRICT&tlp=red") == ["r", "s"]
    assert exported("max_tlp=amber%2Bstrict") == ["a", "s"]  # encoded, as it always was
    for name, value in (("max_tlp", "amber+very+strict"), ("max_tlp", "amberstrict"), ("tlp", "tlp:ex:chr"), ("max_tlp", "strict+amber")):
        refused = client.get(f"/api/v1/iocs/export?format=txt&{name}={value}", headers=headers)
        assert (refused.status_code, refused.get_json()["error"]["details"]["field"]) == (400, name), value


def test_sightings_stats_and_expiry(api, backend_env):
    created = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "203.0.113.50", "source": "x", "expires_at": "2020-01-01T00:00:00Z"}]})
    ioc_id = created.get_json()["results"][0]["id"]
    expired = api.get("/api/v1/iocs/expired").get_json()
    assert [i["id"] for i in expired["iocs"]] == [ioc_id]
    sighting = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"source": "ids-sensor", "context": {"sensor": "edge-1"}})
    assert sighting.status_code == 201 and sighting.get_json()["detection_count"] == 2
    assert "ids-sensor" in sighting.get_json()["sources"]
    assert api.get(f"/api/v1/iocs/{ioc_id}").get_json()["sightings"][0]["context"] == {"sensor": "edge-1"}
    # Seen now: its expiry moves out, as a batch item's does, so it is no longer expired.
    assert api.get("/api/v1/iocs/expired").get_json()["iocs"] == []
    stats = api.get("/api/v1/iocs/stats").get_json()
    assert stats["total"] == 1 and stats["by_type"] == {"ipv4": 1} and stats["by_source"]["ids-sensor"] == 1
    assert stats["by_age"] == {"<1d": 1}


def test_decay_job_marks_expired_inactive_and_deletes_nothing(api, backend_env):
    from threatflow.adapters.postgres import create_engine
    from threatflow.iocs import service
    from threatflow.platform.config import Settings

    # An expiry past when written is stored inactive at once (see the test below): this one passes two days later.
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    api.post("/api/v1/iocs/batch", {"iocs": [{"value": "198.51.100.1", "expires_at": soon}, {"value": "198.51.100.2"}]})
    assert api.post("/api/v1/iocs/find", {"active": False}).get_json()["count"] == 0
    engine = create_engine(Settings.from_env())
    result = service.decay_and_expire(engine=engine, now=datetime.now(UTC) + timedelta(days=2))
    engine.dispose()
    assert result["expired"] == 1
    assert api.post("/api/v1/iocs/find", {"active": False}).get_json()["count"] == 1
    assert api.get("/api/v1/iocs/stats").get_json()["total"] == 2
    # Seen again: active again.
    api.post("/api/v1/iocs/batch", {"iocs": [{"value": "198.51.100.1"}]})
    assert api.post("/api/v1/iocs/find", {"active": False}).get_json()["count"] == 0


def test_the_decay_job_and_a_batch_locking_the_same_iocs_in_another_order_do_not_deadlock(api, backend_env):
    """decay-iocs updated each id range's rescored IoCs in its scan order (by id), waiting for any a writer held; an
    upsert locks its IoCs in (type, value) order. A batch holding `high` (the lower value, the higher id) and coming
    for `low` met the job holding `low` and waiting for `high`: PostgreSQL aborted one (2 of 3 free races of a 20,000-IoC
    batch against the job aborted the job, which Pub/Sub then redelivered; had the batch been chosen, a 503). The job
    now leaves an IoC a writer holds to its next run (the writer judges its expiry itself), so it waits for nobody."""
    import threading

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.iocs import repository, service
    from threatflow.platform.config import Settings

    seen = (datetime.now(UTC) - timedelta(days=20)).isoformat()
    low = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "198.51.100.200", "seen_at": seen}]}).get_json()["results"][0]["id"]
    high = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "198.51.100.100", "seen_at": seen}]}).get_json()["results"][0]["id"]
    assert low < high  # id order: low, high; (type, value) order: high, low
    engine = create_engine(Settings.from_env())
    with unit_of_work(engine) as conn:
        policies = repository.policies(conn)
        before = dict(conn.exec_driver_sql("SELECT id, score FROM iocs").all())
    outcome: dict[str, object] = {}

    def decay() -> None:
        try:
            outcome["decay"] = service.decay_and_expire(engine=engine, now=datetime.now(UTC) + timedelta(days=1))
        except Exception as exc:
            outcome["decay"] = exc

    job = threading.Thread(target=decay)
    try:
        with unit_of_work(engine) as writer:
            writer.exec_driver_sql(f"SELECT 1 FROM iocs WHERE id = {high} FOR UPDATE")  # the batch's first row
            job.start()
            with engine.connect() as watcher:  # until the job finished, or waits for `high`
                for _ in range(100):
                    waiting = watcher.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%WITH scored%'"
                    ).scalar_one()
                    if waiting or not job.is_alive():
                        break
                    time.sleep(0.05)
            items = [service.IocIn(value="198.51.100.100"), service.IocIn(value="198.51.100.200")]
            outcome["batch"] = service.upsert_batch(
                items, conn=writer, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
            )
        job.join(30)
        assert not isinstance(outcome["decay"], Exception), outcome["decay"]
        assert outcome["batch"]["summary"]["updated"] == 2, outcome["batch"]
        with unit_of_work(engine) as conn:
            after = dict(conn.exec_driver_sql("SELECT id, score FROM iocs").all())
        # `low` was rescored by the job; `high`, held by the batch, was left to the next run (the batch sighted both anew).
        assert outcome["decay"] == {"rescored": 1, "expired": 0}, (outcome["decay"], before, after)
    finally:
        engine.dispose()


def test_delete_by_ids_and_by_filter(api):
    ids = [
        r["id"]
        for r in api.post(
            "/api/v1/iocs/batch", {"iocs": [{"value": f"del{i}.example.com", "tags": ["gone"]} for i in range(5)]}
        ).get_json()["results"]
    ]
    assert api.delete("/api/v1/iocs", {"ids": ids[:2]}).get_json() == {"deleted": 2, "more": False}
    refused = api.delete("/api/v1/iocs", {"filter": {"tags": ["gone"]}})
    assert refused.status_code == 400 and refused.get_json()["error"]["details"]["field"] == "confirm"
    assert api.delete("/api/v1/iocs", {"filter": {}, "confirm": True}).status_code == 400
    assert api.delete("/api/v1/iocs", {"filter": {"tags": ["gone"]}, "confirm": True}).get_json() == {"deleted": 3, "more": False}
    assert api.delete("/api/v1/iocs", {"ids": ids}, headers=api.headers).status_code == 403


def _stored(api, tag, headers=None):
    """The ids of the IoCs tagged `tag` that the caller may read, lowest first."""
    found = api.post("/api/v1/iocs/find", {"tags": [tag], "limit": 1000}, headers=headers).get_json()["iocs"]
    return sorted(i["id"] for i in found)


def test_a_delete_by_filter_deletes_at_most_the_bound_per_call_lowest_ids_first(api, monkeypatch):
    """A delete by ids was capped at 10,000 per call; one by filter read, locked and deleted every matching IoC in one
    transaction, so a filter matching millions held locks on all of them and outlasted the statement timeout: it could
    never succeed. It deletes at most the same bound per call now, lowest ids first, and answers `more` while matching
    IoCs are left, so a client repeats the call until `more` is false. The bound is read at call time (3 here)."""
    from threatflow.iocs import api as iocs_api

    monkeypatch.setattr(iocs_api, "MAX_DELETE_PER_CALL", 3, raising=False)

    def batch(tag, n):
        items = [{"value": f"{tag}{i}.bound.example.com", "tags": [tag]} for i in range(n)]
        return sorted(r["id"] for r in api.post("/api/v1/iocs/batch", {"iocs": items}).get_json()["results"])

    seven, six, kept = batch("seven", 7), batch("six", 6), batch("kept", 2)
    by_filter = {"filter": {"tags": ["seven"]}, "confirm": True}
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 3, "more": True}
    assert _stored(api, "seven") == seven[3:]  # the lowest ids went first
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 3, "more": True}
    assert _stored(api, "seven") == seven[6:]
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 1, "more": False}
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 0, "more": False}
    # Exactly the bound left: the call that deletes the last of them says so.
    by_filter = {"filter": {"tags": ["six"]}, "confirm": True}
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 3, "more": True}
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 3, "more": False}
    assert _stored(api, "six") == [] and _stored(api, "kept") == kept
    # By ids: the same bound, and the same answer.
    too_many = api.delete("/api/v1/iocs", {"ids": seven[:4]})
    assert too_many.status_code == 400 and too_many.get_json()["error"]["details"]["field"] == "ids", too_many.get_json()
    assert "at most 3 ids" in too_many.get_json()["error"]["message"]
    assert api.delete("/api/v1/iocs", {"ids": [*kept, six[0]]}).get_json() == {"deleted": 2, "more": False}


def test_an_amber_admins_delete_by_filter_never_counts_red_iocs_toward_the_bound_or_more(api, backend_env, function_client, monkeypatch):
    """Red IoCs matching an amber admin's filter, below, between and above their amber ones, and more of them than the
    bound: they are neither deleted nor counted, so they neither take a slot of the bound nor make `more` true (which
    would tell the admin they exist, and send a client looping on calls that delete nothing)."""
    from threatflow.iocs import api as iocs_api

    monkeypatch.setattr(iocs_api, "MAX_DELETE_PER_CALL", 3, raising=False)
    password = create_user(backend_env["DATABASE_URL"], "redwriter", "admin", clearance="red")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "redwriter", "password": password}).get_json()
    red = {"Authorization": f"Bearer {token['access_token']}"}

    def batch(tlp, names):
        items = [{"value": f"{n}.clearance-bound.example.com", "tags": ["mixed"], "tlp": tlp} for n in names]
        response = api.post("/api/v1/iocs/batch", {"iocs": items}, headers=red)
        assert response.status_code == 200, response.get_json()
        return sorted(r["id"] for r in response.get_json()["results"])

    reds = batch("red", [f"low{i}" for i in range(5)])
    ambers = batch("amber", [f"amber{i}" for i in range(4)])
    reds += batch("red", [f"high{i}" for i in range(5)])
    by_filter = {"filter": {"tags": ["mixed"]}, "confirm": True}
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 3, "more": True}
    assert _stored(api, "mixed") == ambers[3:]
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 1, "more": False}
    assert api.delete("/api/v1/iocs", by_filter).get_json() == {"deleted": 0, "more": False}
    assert _stored(api, "mixed", headers=red) == reds
    # The red admin's own calls go through the red ones, the same way.
    assert api.delete("/api/v1/iocs", by_filter, headers=red).get_json() == {"deleted": 3, "more": True}


def test_decay_policies_are_listed_and_set_by_admins(api, backend_env):
    client = api
    listed = client.get("/api/v1/iocs/policies").get_json()["policies"]
    email = next(p for p in listed if p["type"] == "email")
    assert email["curve_for_base_100"][0] == {"age_days": 0, "score": 100} and email["curve_for_base_100"][-1]["score"] == 0
    original = {k: email[k] for k in ("ttl_days", "decay_lifetime_days", "decay_speed", "expired_below")}
    wanted = {"ttl_days": 7, "decay_lifetime_days": 20, "decay_speed": 1.0, "expired_below": 30}
    try:
        assert client.post("/api/v1/iocs/batch", {"iocs": [{"value": "x@evil-mail.com", "confidence": 80}]}).status_code == 200
        forbidden = client.put("/api/v1/iocs/policies/email", wanted, headers=client.headers)
        assert forbidden.status_code == 403
        updated = client.put("/api/v1/iocs/policies/email", wanted)
        assert updated.status_code == 200 and updated.get_json()["ttl_days"] == 7
        # Linear decay (speed 1) over 20 days: half the score at 10 days.
        assert {"age_days": 10.0, "score": 50} in updated.get_json()["curve_for_base_100"]
        created = client.post("/api/v1/iocs/batch", {"iocs": [{"value": "y@evil-mail.com"}]}).get_json()["results"][0]
        ioc = client.get(f"/api/v1/iocs/{created['id']}").get_json()
        ttl = datetime.fromisoformat(ioc["expires_at"]) - datetime.fromisoformat(ioc["last_seen"])
        assert timedelta(days=7) <= ttl <= timedelta(days=8)  # the new TTL applies at once (to the end of that UTC day)
        assert ioc["score_explanation"]["lifetime_days"] == 20 and ioc["score_explanation"]["expired_below"] == 30
        bad = client.put("/api/v1/iocs/policies/email", {**wanted, "decay_speed": 0})
        assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "decay_speed"
        assert client.put("/api/v1/iocs/policies/hostname", wanted).status_code == 404
    finally:
        assert client.put("/api/v1/iocs/policies/email", original).status_code == 200


def _sighted_while_held(engine, policies, value, held):
    """Upsert `value` naming no TLP and no confidence, as the flow bridge's sightings do, while the transaction `held`
    (on its own connection, which wrote the IoC's row) is open; commit `held` once the sighting is seen waiting for
    the row. Returns the stored (tlp, confidence, detection_count)."""
    import threading

    from threatflow.adapters.postgres import unit_of_work
    from threatflow.iocs import service

    sighted = threading.Event()

    def sight():
        with unit_of_work(engine) as conn:
            again = service.IocIn(value=value, source="flows")
            service.upsert_batch(
                [again], conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
            )
        sighted.set()

    worker = threading.Thread(target=sight)
    worker.start()
    try:
        assert not sighted.wait(1.0)  # it waits for the held transaction's row
    finally:
        held.commit()
        held.connection.close()
        worker.join(30)
    assert sighted.is_set()
    with engine.connect() as conn:
        stored = conn.exec_driver_sql(f"SELECT tlp, confidence, detection_count FROM iocs WHERE value = '{value}'").one()
    return tuple(stored)


def test_an_upsert_naming_no_tlp_or_confidence_keeps_what_a_concurrent_transaction_committed(backend_env):
    """An item naming no TLP or confidence keeps the stored one, read in the upsert statement. Read from the statement's
    snapshot, a change committed while the upsert waited for the row (an analyst marking the IoC TLP:RED as the flow
    bridge sights it again) was overwritten by the value from before it: the IoC went back to amber."""
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.iocs import service
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    value = "203.0.113.77"
    with unit_of_work(engine) as conn:
        policies = service.repository.policies(conn)
        item = service.IocIn(value=value, confidence=93, description="flow bridge")
        service.upsert_batch(
            [item], conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
        )
    analyst = engine.connect()
    classification = analyst.begin()
    analyst.exec_driver_sql(f"UPDATE iocs SET tlp = 'red', confidence = 35 WHERE value = '{value}'")
    stored = _sighted_while_held(engine, policies, value, classification)
    engine.dispose()
    assert stored == ("red", 35, 2)


def test_an_upsert_naming_no_tlp_keeps_the_tlp_of_a_concurrent_creation_of_the_same_ioc(backend_env):
    """Two transactions create the same new IoC, one naming TLP:RED and a confidence, one naming neither (the flow bridge).
    The second waits for the first's row; when it goes on to update it, it keeps what the first gave. It used to read the
    stored values from its snapshot, where the row did not exist yet, and write the defaults over them: amber and 50."""
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.iocs import service
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    value = "203.0.113.78"
    with unit_of_work(engine) as conn:
        policies = service.repository.policies(conn)
    analyst = engine.connect()
    creation = analyst.begin()
    marked = service.IocIn(value=value, tlp="red", confidence=35, description="analyst")
    service.upsert_batch(
        [marked], conn=analyst, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
    )
    stored = _sighted_while_held(engine, policies, value, creation)
    engine.dispose()
    assert stored == ("red", 35, 2)


def test_a_first_seen_before_year_1_in_utc_is_refused_and_never_stored(api):
    """first_seen 0001-01-01T00:00:00+05:00 is 1 BC in UTC. PostgreSQL stores it, but no Python datetime holds it: the
    driver hands back the text '0001-12-31 19:00:00+00 BC', which GET echoes and the STIX export cannot parse (a 500 for
    every export that includes the IoC). seen_at so early is refused (its expiry cannot be computed); first_seen must be too."""
    value = "203.0.113.91"
    response = api.post("/api/v1/iocs/batch", {"iocs": [{"value": value, "first_seen": "0001-01-01T00:00:00+05:00"}]})
    assert response.status_code == 200
    exported = api.get("/api/v1/iocs/export?format=stix")
    assert exported.status_code == 200, exported.status_code  # was a 500: the stored first_seen is not a time
    result = response.get_json()["results"][0]
    assert result["status"] == "rejected" and "first_seen" in result["reason"]
    assert api.get(f"/api/v1/iocs/value/{value}").status_code == 404


def test_a_duplicate_item_naming_an_earlier_first_seen_moves_the_first_seen_back(api):
    """The same IoC twice in one batch is merged into the first item (tags and sources are unions); a first_seen the
    second names is an earlier sighting of the same IoC and must be merged too, as a later batch's would be."""
    value = "203.0.113.92"
    seen = "2026-03-10T12:00:00+00:00"
    items = [{"value": value, "seen_at": seen}, {"value": value, "seen_at": seen, "first_seen": "2026-03-01T08:00:00+00:00"}]
    response = api.post("/api/v1/iocs/batch", {"iocs": items})
    assert [r["status"] for r in response.get_json()["results"]] == ["created", "unchanged"]
    ioc = api.get(f"/api/v1/iocs/value/{value}").get_json()
    # Fails before the fix: the duplicate's first_seen was dropped, so first_seen is the first item's seen_at.
    assert ioc["first_seen"] == "2026-03-01T08:00:00+00:00" and ioc["last_seen"] == seen, ioc


def test_a_sighting_seen_outside_years_1_to_9999_in_utc_is_refused(api):
    """POST /iocs/{id}/sightings checked only seen_at's time zone: 0001-01-01T00:00:00+05:00 (1 BC in UTC) is taken by
    PostgreSQL as the IoC's first_seen, and the row read back holds a time no Python datetime holds: a 500. A 400
    naming seen_at, as the batch refuses these times (limits.check_aware)."""
    created = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "203.0.113.93", "seen_at": "2026-03-10T12:00:00+00:00"}]})
    ioc_id = created.get_json()["results"][0]["id"]
    for seen_at in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"):
        response = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"seen_at": seen_at})
        assert response.status_code == 400, (seen_at, response.status_code)
        assert response.get_json()["error"]["details"]["field"] == "seen_at"
    ioc = api.get(f"/api/v1/iocs/{ioc_id}")
    assert ioc.status_code == 200 and ioc.get_json()["detection_count"] == 1
    assert api.get("/api/v1/iocs/export?format=stix").status_code == 200


def test_a_sighting_moves_an_expired_iocs_expiry_out_as_a_batch_item_does_and_a_stale_one_leaves_it_expired(api):
    """POST /iocs/{id}/sightings set `active` whatever the expiry and never moved the expiry: a fresh sighting of an
    expired IoC showed it active with an `expires_at` still past (the decay job made it inactive again within the
    hour), and a sighting of 100 days ago made an expired IoC active. It now follows a batch item's rule: the expiry
    moves out to the sighting's day plus the type's TTL (never in), and the IoC is judged by the decay rule."""
    long_ago = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    body = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "45.146.169.1", "seen_at": long_ago}]}).get_json()
    ioc_id = body["results"][0]["id"]
    assert api.get(f"/api/v1/iocs/{ioc_id}").get_json()["active"] is False
    stale = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"seen_at": long_ago})
    assert stale.status_code == 201, stale.get_json()
    assert stale.get_json()["active"] is False, stale.get_json()  # a sighting of 100 days ago does not revive it
    fresh = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {})
    assert fresh.status_code == 201, fresh.get_json()
    shown = api.get(f"/api/v1/iocs/{ioc_id}").get_json()
    assert shown["active"] is True and fresh.get_json()["active"] is True, (shown, fresh.get_json())
    assert datetime.fromisoformat(shown["expires_at"]) > datetime.now(UTC) + timedelta(days=29), shown
    assert shown["detection_count"] == 3


def test_an_item_whose_expiry_is_past_when_written_is_stored_inactive_and_not_auto_enriched(api, backend_env):
    """An item seen 100 days ago (the ipv4 TTL is 30 days) or naming an `expires_at` already past was stored `active`
    with that past expiry, and queued for auto-enrichment: intel quota spent on an expired indicator, shown as live
    until the next decay-iocs run. It is stored as that job leaves it (inactive, answered `"active": false`) and not
    queued; a fresh item of the same batch still is, and a fresh sighting makes it active again."""
    import contextlib
    import json
    import uuid

    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    project = backend_env["GOOGLE_CLOUD_PROJECT"]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, "ioc-enrichment-requested")
    with contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(project, f"expired-auto-enrich-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)
    long_ago = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    items = [
        {"value": "45.146.168.1", "seen_at": long_ago},
        {"value": "45.146.168.2", "expires_at": "2020-01-01T00:00:00Z"},
        {"value": "45.146.168.3"},
    ]
    body = api.post("/api/v1/iocs/batch", {"iocs": items}).get_json()
    assert [r["status"] for r in body["results"]] == ["created"] * 3, body
    assert [r.get("active", True) for r in body["results"]] == [False, False, True], body
    old, past, fresh = (r["id"] for r in body["results"])
    assert [api.get(f"/api/v1/iocs/{i}").get_json()["active"] for i in (old, past, fresh)] == [False, False, True]
    assert api.post("/api/v1/iocs/find", {"expired": True, "ids": [old, past, fresh]}).get_json()["count"] == 2
    queued: list[int] = []
    for _ in range(6):
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        queued += [i for m in response.received_messages for i in json.loads(m.message.data).get("ioc_ids", [])]
        if fresh in queued:
            break
    subscriber.delete_subscription(subscription=subscription)
    assert queued == [fresh]
    # Seen again, now: active again, its expiry moved out.
    again = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "45.146.168.1"}]}).get_json()["results"][0]
    assert again["status"] == "updated" and again.get("active", True) is True, again
    assert api.get(f"/api/v1/iocs/{old}").get_json()["active"] is True
