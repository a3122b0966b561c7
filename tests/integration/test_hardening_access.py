"""Issue 7: login that cannot burn CPU, disabled means disabled, TLP clearance, push endpoints only for Pub/Sub."""

import uuid

import pytest
from helpers import create_user, push_envelope

pytestmark = pytest.mark.integration


def _login(auth, username, password, ip="127.0.0.1"):
    return auth.post("/api/v1/auth/token", json={"username": username, "password": password}, environ_base={"REMOTE_ADDR": ip})


def _bearer(response):
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


# -- login -----------------------------------------------------------------------------------


def test_failed_logins_lock_the_account_with_backoff_and_tell_the_admins(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    password = create_user(url, "victim", "analyst")
    admin = _bearer(_login(function_client("auth"), "boss", create_user(url, "boss", "admin")))
    auth = function_client("auth", LOGIN_MAX_FAILURES="3", LOGIN_LOCKOUT_SECONDS="30")
    # From many addresses, each under its own per-IP limit.
    statuses = [_login(auth, "victim", "wrong password", ip=f"10.0.0.{i}").status_code for i in range(3)]
    assert statuses == [401, 401, 401]
    locked = _login(auth, "victim", password, ip="10.0.0.99")  # even the right password: the account is locked
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 30
    # Unknown names lock the same way, so a lock reveals nothing about which accounts exist.
    assert [_login(auth, "nobody-here", "x", ip=f"10.0.1.{i}").status_code for i in range(4)] == [401, 401, 401, 429]
    events = function_client("admin").get("/api/v1/admin/security-events", headers=admin)
    assert events.status_code == 200
    locks = [e for e in events.get_json()["events"] if e["kind"] == "account_locked"]
    assert {e["username"] for e in locks} == {"victim", "nobody-here"}
    assert locks[0]["detail"]["failures"] == 3 and locks[0]["client_ip"].startswith("10.0.")


def test_lockout_backs_off_exponentially(backend_env):
    from threatflow.adapters.redis import AccountLockout, CircuitBreaker, connect

    lockout = AccountLockout(
        connect(backend_env["REDIS_URL"]), breaker=CircuitBreaker(open_seconds=1), max_failures=2, base_seconds=10, max_seconds=35
    )
    name = f"u{uuid.uuid4().hex[:8]}"
    states = [lockout.failed(name) for _ in range(5)]
    assert [s.locked_seconds for s in states] == [0, 10, 20, 35, 35]
    assert lockout.check(name).locked_seconds > 30
    lockout.succeeded(name)
    assert lockout.check(name).locked_seconds == 0


def test_concurrent_hashing_is_bounded_per_instance():
    import threading

    from threatflow.auth.guard import LoginGuard
    from threatflow.platform.errors import DependencyError

    guard = LoginGuard(lockout=None, concurrent_hashes=1, record_event=lambda *a, **k: None)
    inside = threading.Event()
    release = threading.Event()

    def hold():
        with guard.hashing():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(5)
    with pytest.raises(DependencyError, match="too many logins"), guard.hashing():
        pass
    release.set()
    worker.join()
    with guard.hashing():  # free again
        pass


def test_token_endpoint_keeps_an_in_process_limit_when_redis_is_down(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "carol", "reader")
    auth = function_client("auth", REDIS_URL="redis://127.0.0.1:1/0", LOGIN_FALLBACK_PER_INSTANCE="3/60")
    statuses = [_login(auth, "carol", "wrong", ip=f"10.9.0.{i}").status_code for i in range(5)]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]
    assert _login(auth, "carol", password).status_code == 429  # the fallback limit is per instance, not per name
    # Other routes still fail open (a Redis outage does not take the API down).
    fresh = function_client("auth", REDIS_URL="redis://127.0.0.1:1/0")
    token = _bearer(_login(fresh, "carol", password))
    assert fresh.get("/api/v1/auth/me", headers=token).status_code == 200


# -- disabled means disabled -------------------------------------------------------------------


def test_a_disabled_admin_cannot_act_even_within_the_cache_window(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    rogue = _bearer(_login(function_client("auth"), "rogue", create_user(url, "rogue", "admin")))
    boss = _bearer(_login(function_client("auth"), "boss", create_user(url, "boss", "admin")))
    admin = function_client("admin")
    assert admin.get("/api/v1/admin/users", headers=rogue).status_code == 200  # now cached as active
    assert admin.post("/api/v1/admin/users/rogue/disable", headers=boss).status_code == 200
    create = admin.post(
        "/api/v1/admin/users", json={"username": "rogue2", "password": "a long enough password", "role": "admin"}, headers=rogue
    )
    assert create.status_code == 401
    assert admin.get("/api/v1/admin/users", headers=rogue).status_code == 401


def test_disable_and_enable_are_recorded_in_the_security_events(function_client, backend_env, capsys, monkeypatch):
    """Disabling and enabling an account left no record in the audit log (its docstring says disables are): both
    routes and `threatflow users disable|enable` now record who, whom and when."""
    import io

    from threatflow.cli.main import main

    url = backend_env["DATABASE_URL"]
    create_user(url, "erin", "analyst")
    boss = _bearer(_login(function_client("auth"), "boss", create_user(url, "boss", "admin")))
    admin = function_client("admin")
    assert admin.post("/api/v1/admin/users/erin/disable", headers=boss).status_code == 200
    assert admin.post("/api/v1/admin/users/erin/enable", headers=boss).status_code == 200
    events = admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]
    assert [(e["kind"], e["username"], e["detail"]["by"]) for e in events[:2]] == [
        ("user_enabled", "erin", "boss"),
        ("user_disabled", "erin", "boss"),
    ]
    assert all(e["at"] for e in events[:2])
    assert admin.post("/api/v1/admin/users/nobody-at-all/disable", headers=boss).status_code == 404

    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    for action in ("disable", "enable"):
        with pytest.raises(SystemExit) as done:
            main(["users", action, "erin"])
        assert done.value.code == 0
    capsys.readouterr()
    events = admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]
    assert [(e["kind"], e["username"], e["detail"]["by"], e["detail"]["via"]) for e in events[:2]] == [
        ("user_enabled", "erin", None, "cli"),
        ("user_disabled", "erin", None, "cli"),
    ]
    assert [e["kind"] for e in events].count("user_disabled") == 2  # a 404 records nothing


def test_account_creation_is_recorded_in_the_security_events(function_client, backend_env, capsys, monkeypatch):
    """A new account, the widest change an admin makes (a login with a role and a clearance), left no record in the
    audit log, where its later disable, enable and PATCH did: the route and `threatflow users create` record who made
    it, how, and the role and clearance it was given."""
    import io

    from threatflow.cli.main import main

    url = backend_env["DATABASE_URL"]
    boss = _bearer(_login(function_client("auth"), "boss", create_user(url, "boss", "admin")))
    admin = function_client("admin")
    body = {"username": "frank", "password": "a long enough password", "role": "analyst", "clearance": "green"}
    assert admin.post("/api/v1/admin/users", json=body, headers=boss).status_code == 201
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setattr("sys.stdin", io.StringIO("another long enough password\n"))
    with pytest.raises(SystemExit) as done:
        main(["users", "create", "grace", "--role", "reader", "--clearance", "red", "--password-stdin"])
    assert done.value.code == 0
    capsys.readouterr()
    events = admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]
    created = [(e["username"], e["detail"]) for e in events if e["kind"] == "user_created"]
    assert created[:2] == [
        ("grace", {"by": None, "via": "cli", "role": "reader", "clearance": "red"}),
        ("frank", {"by": "boss", "via": "api", "role": "analyst", "clearance": "green"}),
    ], created
    refused = admin.post("/api/v1/admin/users", json={**body, "username": "frank"}, headers=boss)
    assert refused.status_code == 409  # a refused creation records nothing
    assert [e["username"] for e in admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]][:1] == ["grace"]


def test_role_change_and_password_rotation_end_old_tokens_at_once(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    password = create_user(url, "dave", "analyst")
    old = _bearer(_login(function_client("auth"), "dave", password))
    boss = _bearer(_login(function_client("auth"), "boss", create_user(url, "boss", "admin")))
    iocs, admin = function_client("iocs"), function_client("admin")
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "a.example.com"}]}, headers=old).status_code == 200
    demoted = admin.patch("/api/v1/admin/users/dave", json={"role": "reader"}, headers=boss)
    assert demoted.status_code == 200 and demoted.get_json()["role"] == "reader"
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "b.example.com"}]}, headers=old).status_code == 401
    fresh = _bearer(_login(function_client("auth"), "dave", password))
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "b.example.com"}]}, headers=fresh).status_code == 403
    rotated = admin.patch("/api/v1/admin/users/dave", json={"password": "a brand new long password"}, headers=boss)
    assert rotated.status_code == 200
    assert admin.patch("/api/v1/admin/users/dave", json={"role": "analyst"}, headers=fresh).status_code == 401
    events = admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]
    assert [e["kind"] for e in events][:2] == ["user_updated", "user_updated"]


# -- TLP clearance -------------------------------------------------------------------------------


@pytest.fixture
def marked(function_client, backend_env):
    """One IoC per TLP, linked to a red threat and related to each other; an amber reader and a red admin."""
    url = backend_env["DATABASE_URL"]
    analyst = _bearer(_login(function_client("auth"), "writer", create_user(url, "writer", "analyst", clearance="red")))
    reader = _bearer(_login(function_client("auth"), "reader", create_user(url, "reader", "reader")))
    iocs = function_client("iocs")
    items = [{"value": f"{tlp.replace('+', '-')}.tlp-test.com", "tlp": tlp, "tags": ["shared-tag"]} for tlp in ("green", "amber", "red")]
    ids = {
        r["value"].split(".")[0]: r["id"]
        for r in iocs.post("/api/v1/iocs/batch", json={"iocs": items}, headers=analyst).get_json()["results"]
    }
    iocs.post(f"/api/v1/iocs/{ids['green']}/relations", json={"target_id": ids["red"], "type": "drops"}, headers=analyst)
    threats = function_client("threats")
    threat = threats.post(
        "/api/v1/threats/batch", json={"threats": [{"kind": "malware", "name": "RedOnly", "tlp": "red"}]}, headers=analyst
    )
    threat_id = threat.get_json()["results"][0]["id"]
    threats.post(f"/api/v1/threats/{threat_id}/link", json={"ioc_ids": [ids["green"]]}, headers=analyst)
    return {"iocs": iocs, "threats": threats, "ids": ids, "threat_id": threat_id, "reader": reader, "writer": analyst}


def test_a_reader_never_sees_above_their_clearance(marked):
    iocs, threats, ids, reader = marked["iocs"], marked["threats"], marked["ids"], marked["reader"]
    assert iocs.get(f"/api/v1/iocs/{ids['red']}", headers=reader).status_code == 404
    assert iocs.get(f"/api/v1/iocs/{ids['amber']}", headers=reader).status_code == 200
    assert iocs.get("/api/v1/iocs/value/red.tlp-test.com", headers=reader).status_code == 404
    assert iocs.get(f"/api/v1/iocs/{ids['red']}/related", headers=reader).status_code == 404
    found = iocs.post("/api/v1/iocs/find", json={"tags": ["shared-tag"], "max_tlp": "red"}, headers=reader).get_json()
    assert {i["value"] for i in found["iocs"]} == {"green.tlp-test.com", "amber.tlp-test.com"}
    related = iocs.get(f"/api/v1/iocs/{ids['green']}/related", headers=reader).get_json()
    assert related["relations"] == [] and related["threats"] == []
    assert all(s["ioc"]["id"] != ids["red"] for s in related["shared_evidence"])
    exported = iocs.get("/api/v1/iocs/export?format=txt&max_tlp=red&tags=shared-tag", headers=reader)
    assert sorted(exported.data.decode().split()) == ["amber.tlp-test.com", "green.tlp-test.com"]
    assert threats.get(f"/api/v1/threats/{marked['threat_id']}", headers=reader).status_code == 404
    assert threats.post("/api/v1/threats/find", json={"text": "RedOnly"}, headers=reader).get_json()["count"] == 0
    assert threats.get(f"/api/v1/threats/by-ioc/{ids['green']}", headers=reader).get_json()["threats"] == []
    assert threats.get(f"/api/v1/threats/by-ioc/{ids['red']}", headers=reader).status_code == 404
    stats = iocs.get("/api/v1/iocs/stats", headers=reader).get_json()
    assert "red" not in stats["by_tlp"] and stats["total"] == 2
    threat_stats = threats.get("/api/v1/threats/stats", headers=reader).get_json()
    assert threat_stats["total"] == 0 and threat_stats["links"]["top_threats"] == [] and threat_stats["ioc_relations"] == 0
    # Someone cleared for red sees all of it.
    writer = marked["writer"]
    assert iocs.get("/api/v1/iocs/stats", headers=writer).get_json()["by_tlp"]["red"] == 1
    assert threats.get("/api/v1/threats/stats", headers=writer).get_json()["links"]["top_threats"][0]["name"] == "RedOnly"
    assert iocs.get(f"/api/v1/iocs/{ids['red']}", headers=writer).status_code == 200
    assert len(iocs.get(f"/api/v1/iocs/{ids['green']}/related", headers=writer).get_json()["relations"]) == 1


def test_a_lookup_by_value_above_the_readers_clearance_answers_as_for_a_value_never_stored(marked):
    """GET /iocs/value/{value} of an IoC above the reader's clearance was a 404 reading "no indicator with id 123":
    a value never stored reads "no indicator 'x' of type domain", so any reader learnt that the value is stored
    above their clearance, and its id. Both answers are now the same but for the value asked."""
    iocs, ids, reader = marked["iocs"], marked["ids"], marked["reader"]
    hidden = iocs.get("/api/v1/iocs/value/red.tlp-test.com", headers=reader)
    absent = iocs.get("/api/v1/iocs/value/never.tlp-test.com", headers=reader)
    assert hidden.status_code == absent.status_code == 404
    assert str(ids["red"]) not in hidden.get_data(as_text=True), hidden.get_json()
    assert hidden.get_json()["error"]["message"] == absent.get_json()["error"]["message"].replace("never.", "red."), (
        hidden.get_json(),
        absent.get_json(),
    )


def test_a_threats_ioc_count_counts_only_iocs_within_the_readers_clearance(marked, function_client, backend_env):
    """GET /threats/{id} answered `ioc_count` and `ioc_count_by_relation` over every linked IoC, whatever its TLP:
    an amber reader of an amber threat learnt how many red IoCs it is linked to, and by which verbs, where
    /threats/stats, /by-ioc and exports leave those links out."""
    threats, ids, writer, reader = marked["threats"], marked["ids"], marked["writer"], marked["reader"]
    made = threats.post(
        "/api/v1/threats/batch", json={"threats": [{"kind": "tool", "name": "AmberCounted", "tlp": "amber"}]}, headers=writer
    )
    threat_id = made.get_json()["results"][0]["id"]
    url = f"/api/v1/threats/{threat_id}"
    for relation, linked in (("indicates", [ids["green"], ids["red"]]), ("secret-verb", [ids["red"]])):
        answer = threats.post(f"{url}/link", json={"ioc_ids": linked, "relation": relation}, headers=writer)
        assert answer.status_code == 200, answer.get_json()
    full = threats.get(url, headers=writer).get_json()
    assert full["ioc_count"] == 2 and full["ioc_count_by_relation"] == {"indicates": 2, "secret-verb": 1}, full
    seen = threats.get(url, headers=reader).get_json()
    assert seen["ioc_count"] == 1 and seen["ioc_count_by_relation"] == {"indicates": 1}, seen
    assert seen["ioc_count_by_relation_truncated"] is False


def test_a_stix_export_keeps_its_link_slots_for_threats_within_the_readers_clearance(marked, function_client, backend_env):
    """A STIX export relates each IoC to its 32 strongest threat links, chosen before the threats were filtered by
    the reader's clearance: an amber IoC linked strongly to 33 red threats and weakly to a green one was exported
    to an amber reader with no relationship at all and `X-Export-Links-Truncated: true`, which told that it has
    links the reader may not see. The slots go to threats the export may carry."""
    iocs, threats, ids, writer, reader = marked["iocs"], marked["threats"], marked["ids"], marked["writer"], marked["reader"]
    red = [{"kind": "malware", "name": f"RedSlot{n}", "tlp": "red"} for n in range(33)]
    red_ids = [r["id"] for r in threats.post("/api/v1/threats/batch", json={"threats": red}, headers=writer).get_json()["results"]]
    green = threats.post("/api/v1/threats/batch", json={"threats": [{"kind": "tool", "name": "GreenSlot", "tlp": "green"}]}, headers=writer)
    green_id = green.get_json()["results"][0]["id"]
    for threat_id in red_ids:
        threats.post(f"/api/v1/threats/{threat_id}/link", json={"ioc_ids": [ids["amber"]], "confidence": 90}, headers=writer)
    threats.post(f"/api/v1/threats/{green_id}/link", json={"ioc_ids": [ids["amber"]], "confidence": 10}, headers=writer)

    exported = iocs.get("/api/v1/iocs/export?format=stix&value_prefix=amber.tlp-test", headers=reader)
    assert exported.status_code == 200, exported.get_data(as_text=True)[:300]
    objects = exported.get_json()["objects"]
    assert [o["name"] for o in objects if o["type"] == "tool"] == ["GreenSlot"], [o.get("name") for o in objects]
    assert not any(o["type"] == "malware" for o in objects)
    assert sum(o["type"] == "relationship" for o in objects) == 1
    assert exported.headers["X-Export-Links-Truncated"] == "false", dict(exported.headers)


def test_related_tells_a_tag_common_only_by_the_iocs_within_the_readers_clearance(marked):
    """GET /iocs/{id}/related leaves out a tag on more than COMMON_TAG_FLOOR IoCs (5 % of the store when larger) and
    names it in `common_tags_ignored`; the count behind it took IoCs of every TLP, so an amber reader learnt that a
    tag of their amber IoC is on more than 50 IoCs they may not see. Counted within the clearance, such a tag is
    rare to them (and those IoCs are still not shown)."""
    iocs, writer, reader = marked["iocs"], marked["writer"], marked["reader"]
    items = [{"value": f"r{n}.redcommon-test.com", "tlp": "red", "tags": ["redcommon"]} for n in range(60)]
    items.append({"value": "seen.redcommon-test.com", "tlp": "amber", "tags": ["redcommon"]})
    results = iocs.post("/api/v1/iocs/batch", json={"iocs": items}, headers=writer).get_json()["results"]
    related = iocs.get(f"/api/v1/iocs/{results[-1]['id']}/related", headers=reader).get_json()
    assert related["common_tags_ignored"] == [] and related["shared_evidence"] == [], related
    cleared = iocs.get(f"/api/v1/iocs/{results[-1]['id']}/related", headers=writer).get_json()
    assert cleared["common_tags_ignored"] == ["redcommon"], cleared


def test_admins_set_clearance_and_it_applies(function_client, backend_env, marked):
    # A red admin: an admin grants at most their own clearance (test_admin_clearance.py).
    password = create_user(backend_env["DATABASE_URL"], "boss", "admin", clearance="red")
    boss = _bearer(_login(function_client("auth"), "boss", password))
    admin = function_client("admin")
    assert admin.patch("/api/v1/admin/users/reader", json={"clearance": "TLP:RED"}, headers=boss).get_json()["clearance"] == "red"
    assert admin.patch("/api/v1/admin/users/reader", json={"clearance": "purple"}, headers=boss).status_code == 400
    iocs = function_client("iocs")  # a new instance: no cached account state
    assert iocs.get(f"/api/v1/iocs/{marked['ids']['red']}", headers=marked["reader"]).status_code == 200


def _ensure_topic(backend_env, name):
    import contextlib

    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], name))


def test_users_read_only_their_own_import_jobs(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    owner = _bearer(_login(function_client("auth"), "owner", create_user(url, "owner", "analyst")))
    other = _bearer(_login(function_client("auth"), "other", create_user(url, "other", "analyst")))
    boss = _bearer(_login(function_client("auth"), "boss", create_user(url, "boss", "admin")))
    _ensure_topic(backend_env, "ioc-import")
    iocs = function_client("iocs")
    queued = iocs.post("/api/v1/iocs/import?async=true", json={"format": "json", "content": [{"value": "q.example.com"}]}, headers=owner)
    assert queued.status_code == 202
    status_url = queued.get_json()["status_url"]
    assert iocs.get(status_url, headers=owner).status_code == 200
    assert iocs.get(status_url, headers=other).status_code == 404
    assert iocs.get(status_url, headers=boss).status_code == 200


# -- push endpoints ------------------------------------------------------------------------------


def _push(job, run_id):
    return push_envelope({"schema_version": 1, "params": {}}, {"job": job, "run_id": run_id}, "maintenance-push", message_id=run_id)


@pytest.mark.parametrize(
    "forgery",
    [{}, {"token": "guessed"}, {"token": ""}],
    ids=["no-token", "wrong-token", "empty-token"],
)
def test_a_forged_push_is_401_and_runs_nothing(function_client, backend_env, forgery):
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.jobs.runs import RUNS

    client = function_client("maintenance")
    run_id = uuid.uuid4().hex
    response = client.post("/", json=_push("heartbeat", run_id), query_string=forgery, headers={"Authorization": "Bearer forged"})
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthenticated"
    assert FirestoreDocuments(backend_env["GOOGLE_CLOUD_PROJECT"]).get(RUNS, run_id) is None
    # The same push with the subscription's token runs.
    assert client.post("/", json=_push("heartbeat", run_id)).status_code == 200
    assert FirestoreDocuments(backend_env["GOOGLE_CLOUD_PROJECT"]).get(RUNS, run_id)["state"] == "succeeded"


def test_a_forged_push_to_ioc_import_is_401(function_client):
    response = function_client("ioc-import").post("/", json=_push("x", "y"), query_string={})
    assert response.status_code == 401 and response.is_json


def test_a_malformed_push_body_is_a_json_400_that_echoes_nothing(function_client):
    response = function_client("maintenance").post("/", data=b"not a cloud event", headers={"Authorization": "Bearer secret-ish"})
    assert 400 <= response.status_code < 500 and response.is_json  # functions-framework says 415 or 400
    assert b"secret-ish" not in response.data and b"not a cloud event" not in response.data
    malformed_json = function_client("maintenance").post("/", data=b'{"message": 5}', content_type="application/json")
    assert 400 <= malformed_json.status_code < 500 and malformed_json.is_json


# -- push endpoints in the cloud's mode: Google OIDC tokens (a local issuer stands in for Google) ---------


@pytest.fixture
def oidc():
    from fakes.google_oidc import FakeGoogleOidc

    fake = FakeGoogleOidc()
    yield fake
    fake.close()


def test_oidc_push_checks_signature_audience_and_service_account(function_client, backend_env, oidc):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.jobs.runs import RUNS

    audience = "https://maintenance-abc.a.run.app/"
    pusher = "pubsub-pusher@threatflow-test.iam.gserviceaccount.com"
    client = function_client(
        "maintenance",
        PUSH_AUTH_MODE="oidc",
        PUSH_AUTH_AUDIENCE=audience,
        PUSH_AUTH_SERVICE_ACCOUNT=pusher,
        PUSH_AUTH_CERTS_URL=oidc.certs_url,
    )
    documents = FirestoreDocuments(backend_env["GOOGLE_CLOUD_PROJECT"])
    forged = {
        "wrong audience": oidc.token(audience="https://elsewhere.example/", email=pusher),
        "wrong account": oidc.token(audience=audience, email="attacker@evil.iam.gserviceaccount.com"),
        "unverified email": oidc.token(audience=audience, email=pusher, verified=False),
        "expired": oidc.token(audience=audience, email=pusher, expires_in=-120),
        "not google": oidc.token(audience=audience, email=pusher, issuer="https://evil.example"),
        "other key": oidc.token(audience=audience, email=pusher, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "unknown kid": oidc.token(audience=audience, email=pusher, kid="nope"),
    }
    for label, token in forged.items():
        run_id = uuid.uuid4().hex
        response = client.post("/", json=_push("heartbeat", run_id), headers={"Authorization": f"Bearer {token}"}, query_string={})
        assert response.status_code == 401, label
        assert documents.get(RUNS, run_id) is None, label
    run_id = uuid.uuid4().hex
    good = oidc.token(audience=audience, email=pusher)
    response = client.post("/", json=_push("heartbeat", run_id), headers={"Authorization": f"Bearer {good}"}, query_string={})
    assert response.status_code == 200
    assert documents.get(RUNS, run_id)["state"] == "succeeded"


def test_correlation_respects_clearance(function_client, backend_env, marked):
    amber = _bearer(_login(function_client("auth"), "amber1", create_user(backend_env["DATABASE_URL"], "amber1", "analyst")))
    threats = marked["threats"]
    hidden = threats.post("/api/v1/threats/correlate", json={"threat_id": marked["threat_id"], "link": False}, headers=amber)
    assert hidden.status_code == 404
    seen = threats.post("/api/v1/threats/correlate", json={"threat_id": marked["threat_id"], "link": False}, headers=marked["writer"])
    assert seen.status_code == 200


def test_an_analyst_cannot_declassify_or_rewrite_an_ioc_above_their_clearance(marked, function_client, backend_env):
    """POST /iocs/batch and /iocs/import merge into the stored IoC of the same value, and a TLP, description or
    verdict the item gives replaced the stored one whatever the caller's clearance: an amber analyst who sent a
    red IoC's value with `"tlp": "clear"` declassified it, its tags and description then readable by everyone.
    Above the caller's clearance an item is a sighting only: TLP, confidence, verdict and description stay."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "amberanalyst", create_user(url, "amberanalyst", "analyst")))
    iocs = marked["iocs"]
    item = {"value": "red.tlp-test.com", "tlp": "clear", "confidence": 5, "verdict": "harmless", "description": "nothing here"}
    first = iocs.post("/api/v1/iocs/batch", json={"iocs": [item]}, headers=amber).get_json()
    assert first["summary"]["updated"] == 1, first
    imported = iocs.post("/api/v1/iocs/import", json={"format": "json", "content": {"iocs": [item]}, "tlp": "clear"}, headers=amber)
    assert imported.status_code == 200, imported.get_data(as_text=True)[:300]
    stored = iocs.get(f"/api/v1/iocs/{marked['ids']['red']}", headers=marked["writer"]).get_json()
    assert (stored["tlp"], stored["verdict"], stored["description"]) == ("red", "unknown", None), stored
    assert stored["confidence"] != 5
    assert iocs.get("/api/v1/iocs/value/red.tlp-test.com", headers=marked["reader"]).status_code == 404
    # Within the caller's clearance an item still sets them (the writer is cleared for red).
    lowered = {**item, "value": "amber.tlp-test.com", "tlp": "green"}
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [lowered]}, headers=amber).status_code == 200
    assert iocs.get(f"/api/v1/iocs/{marked['ids']['amber']}", headers=amber).get_json()["tlp"] == "green"


def test_a_write_merged_into_an_ioc_above_the_writers_clearance_answers_no_more_than_that_it_merged(marked, function_client, backend_env):
    """An amber analyst who sent a red IoC's value got `updated` with the red IoC's id (and, once IoCs held a bounded
    number of tags, would have learnt from `tags_cut` how full it is). The item is still merged, a sighting (see
    Merging): the answer says `updated` and nothing about the IoC, no id, no tags cut. That it exists at all still
    shows (`updated`, not `created`): one IoC per value, README "Existence of a value above your clearance"."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "amberprobe", create_user(url, "amberprobe", "analyst")))
    iocs, writer, red_id = marked["iocs"], marked["writer"], marked["ids"]["red"]
    full = {"value": "red.tlp-test.com", "tags": [f"t{i:02d}" for i in range(63)]}  # with shared-tag: the IoC is full
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [full]}, headers=writer).get_json()["summary"]["tags_cut"] == 0
    before = iocs.get(f"/api/v1/iocs/{red_id}", headers=writer).get_json()["detection_count"]

    probe = [{"value": "red.tlp-test.com", "tags": ["probe"]}, {"value": "red.tlp-test.com"}]
    body = iocs.post("/api/v1/iocs/batch", json={"iocs": probe}, headers=amber).get_json()
    assert body["results"][0] == {"index": 0, "status": "updated", "type": "domain", "value": "red.tlp-test.com"}, body
    assert "id" not in body["results"][1] and body["results"][1]["status"] == "unchanged", body
    assert body["summary"]["tags_cut"] == 0 and body["summary"]["updated"] == 1
    imported = iocs.post("/api/v1/iocs/import", json={"format": "json", "content": {"iocs": probe[:1]}}, headers=amber).get_json()
    assert "id" not in imported["iocs"]["results"][0] and imported["tags_cut"] == 0, imported
    assert not any(e["ref"] == "tags" for e in imported["errors"]), imported["errors"]
    # Within the writer's clearance the answer is as before.
    own = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "amber.tlp-test.com"}]}, headers=amber).get_json()
    assert own["results"][0]["id"] == marked["ids"]["amber"] and own["results"][0]["status"] == "updated"
    raised = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "green.tlp-test.com", "tlp": "red"}]}, headers=amber).get_json()
    assert raised["results"][0]["id"] == marked["ids"]["green"], raised  # it could read the IoC its item marked red
    # Still merged: those cleared for red see the sightings.
    stored = iocs.get(f"/api/v1/iocs/{red_id}", headers=writer).get_json()
    assert stored["detection_count"] == before + 2 and len(stored["tags"]) == 64 and "probe" not in stored["tags"]


def test_an_analyst_cannot_declassify_or_rewrite_a_threat_above_their_clearance(marked, function_client, backend_env):
    """Threats merge by name or alias, and a given TLP, description, confidence or severity replaced the stored one
    whatever the caller's clearance: an amber analyst naming the red threat "RedOnly" with tlp clear made it, and the
    IoCs linked to it, readable by everyone. Above the clearance an item merges lists and times only."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "amberthreats", create_user(url, "amberthreats", "analyst")))
    threats = marked["threats"]
    item = {"kind": "malware", "name": "RedOnly", "tlp": "clear", "description": "nothing", "confidence": 3, "severity": "low"}
    result = threats.post("/api/v1/threats/batch", json={"threats": [item]}, headers=amber).get_json()
    assert result["results"][0]["status"] != "rejected", result
    stored = threats.get(f"/api/v1/threats/{marked['threat_id']}", headers=marked["writer"]).get_json()
    assert (stored["tlp"], stored["description"], stored["confidence"], stored["severity"]) != ("clear", "nothing", 3, "low"), stored
    assert stored["tlp"] == "red" and stored["description"] != "nothing"
    assert threats.get(f"/api/v1/threats/{marked['threat_id']}", headers=marked["reader"]).status_code == 404


def test_writes_by_id_treat_records_above_the_callers_clearance_as_absent(marked, function_client, backend_env):
    """Reads hide a record above the caller's clearance (404, as if absent); the write routes that take ids did not.
    POST /iocs/{id}/sightings answered the whole red IoC (value, tags, description) to an amber analyst, so walking
    the integer ids dumped every red IoC; relations, threat links and unlinks changed red records and told apart
    ids that exist from ids that do not."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "amberwriter", create_user(url, "amberwriter", "analyst")))
    iocs, threats, ids, writer = marked["iocs"], marked["threats"], marked["ids"], marked["writer"]
    red_ioc = f"/api/v1/iocs/{ids['red']}"
    before = iocs.get(red_ioc, headers=writer).get_json()

    sighted = iocs.post(f"{red_ioc}/sightings", json={"source": "probe"}, headers=amber)
    assert sighted.status_code == 404 and "red.tlp-test.com" not in sighted.get_data(as_text=True), sighted.get_data(as_text=True)[:300]
    assert iocs.post(f"/api/v1/iocs/{ids['amber']}/sightings", json={}, headers=amber).status_code == 201  # within it: as before

    assert iocs.post(f"{red_ioc}/relations", json={"target_id": ids["amber"], "type": "drops"}, headers=amber).status_code == 404
    onto_red = {"target_id": ids["red"], "type": "communicates-with"}
    assert iocs.post(f"/api/v1/iocs/{ids['amber']}/relations", json=onto_red, headers=amber).status_code == 404
    removed = iocs.delete(f"/api/v1/iocs/{ids['green']}/relations", json={"target_id": ids["red"]}, headers=amber)
    assert removed.status_code == 404, removed.get_json()

    red_threat = f"/api/v1/threats/{marked['threat_id']}"
    assert threats.post(f"{red_threat}/link", json={"ioc_ids": [ids["amber"]]}, headers=amber).status_code == 404
    assert threats.post(f"{red_threat}/unlink", json={"ioc_ids": [ids["green"]]}, headers=amber).status_code == 404
    mine = threats.post("/api/v1/threats/batch", json={"threats": [{"kind": "tool", "name": "AmberTool"}]}, headers=amber)
    mine_id = mine.get_json()["results"][0]["id"]
    linked = threats.post(f"/api/v1/threats/{mine_id}/link", json={"ioc_ids": [ids["red"], ids["amber"]]}, headers=amber).get_json()
    assert [r["status"] for r in linked["results"]] == ["not_found", "linked"], linked

    after = iocs.get(red_ioc, headers=writer).get_json()
    assert after["detection_count"] == before["detection_count"]
    related = iocs.get(f"/api/v1/iocs/{ids['green']}/related", headers=writer).get_json()
    assert len(related["relations"]) == 1  # the green -> red relation the fixture made is still there
    assert threats.get(f"/api/v1/threats/by-ioc/{ids['green']}", headers=writer).get_json()["threats"] != []
    assert threats.get(f"/api/v1/threats/by-ioc/{ids['red']}", headers=writer).get_json()["threats"] == []


def test_an_import_links_and_relates_only_records_within_the_callers_clearance(marked, function_client, backend_env):
    """POST /threats/{id}/link and /iocs/{id}/relations treat a record above the caller's clearance as absent, but an
    import made the same writes from its relationships: an amber analyst's STIX bundle naming the red threat
    "RedOnly" linked an IoC to it, and one naming a red IoC's value linked that IoC to the analyst's own threat and
    related it to an amber IoC. An import's links and relations take only records the caller may read."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "amberimporter", create_user(url, "amberimporter", "analyst")))
    iocs, threats, ids, writer = marked["iocs"], marked["threats"], marked["ids"], marked["writer"]

    def sdo(kind, n, **fields):
        return {"type": kind, "spec_version": "2.1", "id": f"{kind}--{n:08d}-0000-4000-8000-000000000000", **fields}

    def indicator(n, value):
        return sdo("indicator", n, pattern_type="stix", valid_from="2024-01-01T00:00:00Z", pattern=f"[domain-name:value = '{value}']")

    def rel(n, kind, source, target):
        return sdo("relationship", n, relationship_type=kind, source_ref=source["id"], target_ref=target["id"])

    amber_ind, red_ind = indicator(1, "amber.tlp-test.com"), indicator(2, "red.tlp-test.com")
    red_threat, own_threat = sdo("malware", 3, name="RedOnly", is_family=True), sdo("malware", 4, name="AmberImportTool", is_family=True)
    objects = [amber_ind, red_ind, red_threat, own_threat]
    objects += [rel(5, "indicates", amber_ind, red_threat), rel(6, "indicates", red_ind, own_threat)]
    objects += [rel(7, "communicates-with", amber_ind, red_ind)]
    objects += [rel(8, "variant-of", own_threat, red_threat), rel(10, "uses", red_threat, own_threat)]
    bundle = {"type": "bundle", "id": "bundle--00000009-0000-4000-8000-000000000000", "objects": objects}
    response = iocs.post("/api/v1/iocs/import", json={"format": "stix", "content": bundle}, headers=amber)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.get_json()["threat_relations"] == 0  # the red threat is no end for an amber writer

    linked_to_red = threats.get(f"/api/v1/threats/{marked['threat_id']}", headers=writer).get_json()
    assert linked_to_red["ioc_count"] == 1, linked_to_red  # the fixture's green link only
    assert linked_to_red["relations"] == [], linked_to_red  # nor related to the amber writer's threat
    amber_threats = threats.get(f"/api/v1/threats/by-ioc/{ids['amber']}", headers=writer).get_json()["threats"]
    assert [t["name"] for t in amber_threats] == [], amber_threats
    assert threats.get(f"/api/v1/threats/by-ioc/{ids['red']}", headers=writer).get_json()["threats"] == []
    related = iocs.get(f"/api/v1/iocs/{ids['amber']}/related", headers=writer).get_json()
    assert related["relations"] == [], related


def test_correlation_links_and_counts_only_iocs_within_the_callers_clearance(marked, function_client, backend_env):
    """POST /threats/correlate left IoCs above the caller's clearance out of its candidates, but with link true it
    still linked them to the threat and counted them in `linked`: an amber analyst's correlation of their own threat
    linked a red IoC tagged with its name (a write /threats/{id}/link refuses as not_found) and told how many such
    red IoCs exist. Above the clearance an IoC is neither linked nor counted."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "ambercorrelator", create_user(url, "ambercorrelator", "analyst")))
    iocs, threats, writer = marked["iocs"], marked["threats"], marked["writer"]
    items = [{"value": f"{tlp}-corr.example.org", "tlp": tlp, "tags": ["corrfamily"]} for tlp in ("amber", "red")]
    ids = {
        r["value"].split("-")[0]: r["id"]
        for r in iocs.post("/api/v1/iocs/batch", json={"iocs": items}, headers=writer).get_json()["results"]
    }
    made = threats.post(
        "/api/v1/threats/batch", json={"threats": [{"kind": "malware", "name": "CorrFamily", "tlp": "amber"}]}, headers=amber
    )
    threat_id = made.get_json()["results"][0]["id"]
    result = threats.post("/api/v1/threats/correlate", json={"threat_id": threat_id, "link": True, "threshold": 50}, headers=amber)
    assert result.status_code == 200, result.get_json()
    body = result.get_json()
    assert [c["ioc_id"] for c in body["candidates"]] == [ids["amber"]], body
    assert body["linked"] == 1, body
    assert threats.get(f"/api/v1/threats/by-ioc/{ids['red']}", headers=writer).get_json()["threats"] == []
    assert [t["id"] for t in threats.get(f"/api/v1/threats/by-ioc/{ids['amber']}", headers=writer).get_json()["threats"]] == [threat_id]


def test_correlations_read_counts_count_only_rows_within_the_callers_clearance(marked, function_client, backend_env):
    """POST /threats/correlate answers `read`, the rows each kind of read took (tag names, tagged IoCs, links,
    relations), and `truncated`. The reads took rows of every TLP and left those above the caller's clearance out
    afterwards: an amber analyst correlating an amber threat learnt how many red IoCs carry its name as a tag, how many
    other tags of red IoCs match it, and how many red IoCs are linked to it; and rows of red IoCs took the reads'
    10,000 places from the amber IoCs after them. Each read takes only rows within the clearance."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "ambercounter", create_user(url, "ambercounter", "analyst")))
    iocs, threats, writer = marked["iocs"], marked["threats"], marked["writer"]
    items = [{"value": "amber-count.example.org", "tlp": "amber", "tags": ["countfamily"]}]
    items += [{"value": f"red{n}-count.example.org", "tlp": "red", "tags": ["countfamily", f"countfamily-{n}"]} for n in range(5)]
    ids = [r["id"] for r in iocs.post("/api/v1/iocs/batch", json={"iocs": items}, headers=writer).get_json()["results"]]
    made = threats.post(
        "/api/v1/threats/batch", json={"threats": [{"kind": "malware", "name": "CountFamily", "tlp": "amber"}]}, headers=writer
    )
    threat_id = made.get_json()["results"][0]["id"]
    linked = threats.post(f"/api/v1/threats/{threat_id}/link", json={"ioc_ids": ids, "relation": "indicates"}, headers=writer)
    assert linked.status_code == 200, linked.get_json()

    body = {"threat_id": threat_id, "link": False, "threshold": 50}
    seen = threats.post("/api/v1/threats/correlate", json=body, headers=amber).get_json()
    assert [c["ioc_id"] for c in seen["candidates"]] == [ids[0]], seen
    assert seen["read"]["tags"] == 1 and seen["read"]["links"] == 1 and seen["read"]["tag_names"] == 1, seen["read"]
    cleared = threats.post("/api/v1/threats/correlate", json=body, headers=writer).get_json()
    assert cleared["read"]["tags"] == 6 and cleared["read"]["links"] == 6 and cleared["read"]["tag_names"] == 6, cleared["read"]


def test_an_admin_deletes_only_records_within_their_clearance(marked, function_client, backend_env):
    """DELETE /iocs (by ids or by filter) and DELETE /threats ignored the admin's own clearance: an amber admin
    deleted red IoCs and threats they cannot read (and learnt they existed from the count)."""
    url = backend_env["DATABASE_URL"]
    boss = _bearer(_login(function_client("auth"), "amberboss", create_user(url, "amberboss", "admin")))
    iocs, threats, ids, writer = marked["iocs"], marked["threats"], marked["ids"], marked["writer"]
    by_ids = iocs.delete("/api/v1/iocs", json={"ids": [ids["red"], ids["amber"]]}, headers=boss)
    assert by_ids.status_code == 200 and by_ids.get_json()["deleted"] == 1, by_ids.get_json()
    by_filter = iocs.delete("/api/v1/iocs", json={"filter": {"tags": ["shared-tag"]}, "confirm": True}, headers=boss)
    assert by_filter.get_json()["deleted"] == 1  # green; red is not theirs to delete
    assert iocs.get(f"/api/v1/iocs/{ids['red']}", headers=writer).status_code == 200
    removed = threats.delete("/api/v1/threats", json={"ids": [marked["threat_id"]]}, headers=boss).get_json()
    assert removed == {"deleted": 0, "not_found": [marked["threat_id"]]}, removed
    assert threats.get(f"/api/v1/threats/{marked['threat_id']}", headers=writer).status_code == 200


def test_a_threat_upsert_merged_into_a_threat_above_the_writers_clearance_answers_no_more_than_that_it_merged(
    marked, function_client, backend_env
):
    """Threats merge by name or alias, as IoCs by value: an amber analyst naming the red threat "RedOnly" got its id,
    `unchanged` or `updated` (whether the tags, aliases or TTPs it named were already there: a content oracle, one
    probe per guessed tag), the red threat's kind ("kind tool ignored; the threat is a malware"), and, naming it with
    one of its own threats, the red threat's id in the clash. Now the answer is `updated` with nothing about the
    threat, as for an IoC above the clearance; the item is still merged (lists and times)."""
    url = backend_env["DATABASE_URL"]
    amber = _bearer(_login(function_client("auth"), "amberoracle", create_user(url, "amberoracle", "analyst")))
    threats, red_id, writer = marked["threats"], marked["threat_id"], marked["writer"]
    tagged = {"kind": "malware", "name": "RedOnly", "tags": ["secret-tag"], "aliases": ["RedAlias"]}
    assert threats.post("/api/v1/threats/batch", json={"threats": [tagged]}, headers=writer).status_code == 200

    def probe(*items):
        response = threats.post("/api/v1/threats/batch", json={"threats": list(items)}, headers=amber)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        return response.get_json()

    known = probe({"kind": "tool", "name": "RedOnly", "tags": ["secret-tag"]})  # nothing new to the red threat
    guessed = probe({"kind": "malware", "name": "redalias", "tags": ["other-tag"]})
    for body in (known, guessed):
        assert body["results"][0] == {"index": 0, "status": "updated"}, body
    mine = probe({"kind": "tool", "name": "AmberOwn"})["results"][0]["id"]
    clash = probe({"kind": "tool", "name": "AmberOwn", "aliases": ["RedOnly"]})
    assert clash["results"][0]["status"] == "rejected" and str(red_id) not in clash["results"][0]["reason"], clash
    assert f"threat {mine}" in clash["results"][0]["reason"]  # its own threat is named, as before
    red_malware = {
        "type": "malware",
        "spec_version": "2.1",
        "id": "malware--3c9a4f57-5d7e-4e1b-9f0e-6a1d2b3c4d5e",
        "created": "2026-01-01T00:00:00Z",
        "modified": "2026-01-01T00:00:00Z",
        "name": "RedOnly",
        "is_family": True,
    }
    imported = function_client("iocs").post(
        "/api/v1/iocs/import",
        json={
            "format": "stix",
            "content": {"type": "bundle", "id": "bundle--8f0c6e3e-0d9a-4d55-9a43-2b1e7c0c1a01", "objects": [red_malware]},
        },
        headers=amber,
    )
    assert imported.status_code == 200, imported.get_data(as_text=True)[:300]
    assert "id" not in imported.get_json()["threats"]["results"][0], imported.get_json()["threats"]
    # Still merged: those cleared for red see the sighting's lists.
    stored = threats.get(f"/api/v1/threats/{red_id}", headers=writer).get_json()
    assert "other-tag" in stored["tags"] and stored["kind"] == "malware"


def test_a_stix_link_or_relation_marked_above_both_its_ends_is_stored_with_its_marking(marked):
    """A STIX relationship's own marking: `indicates` or `resolves-to` marked TLP:RED between amber objects says
    the tie itself is red. With no TLP of its own a tie showed to whoever read both ends, so it was stored and every
    amber reader saw the red fact (GET /related, /threats/by-ioc, exports); then it was not made at all (named in
    `errors`). Now a tie has its own TLP (sql/0014_link_tlp.sql): it is stored red, hidden from amber readers, shown
    to red ones; an amber-marked one between the same objects is stored amber and shown to both."""
    iocs, threats, writer, reader = marked["iocs"], marked["threats"], marked["writer"], marked["reader"]
    red = "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"
    amber = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"

    def sdo(kind, n, **fields):
        stamp = {"created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z"}
        return {"type": kind, "spec_version": "2.1", "id": f"{kind}--{n:08d}-0000-4000-8000-00000000ab01", **stamp, **fields}

    def indicator(n, value, kind="domain-name"):
        pattern = f"[{kind}:value = '{value}']"
        return sdo("indicator", n, pattern_type="stix", valid_from="2024-01-01T00:00:00Z", pattern=pattern, object_marking_refs=[amber])

    def rel(n, verb, source, target, marking):
        return sdo(
            "relationship", n, relationship_type=verb, source_ref=source["id"], target_ref=target["id"], object_marking_refs=[marking]
        )

    domain, address = indicator(1, "redtie.tlp-test.com"), indicator(2, "198.51.100.77", "ipv4-addr")
    family = sdo("malware", 3, name="AmberTieFamily", is_family=True, object_marking_refs=[amber])
    other = sdo("malware", 4, name="AmberPlainFamily", is_family=True, object_marking_refs=[amber])
    red_ties = [rel(5, "indicates", domain, family, red), rel(6, "resolves-to", domain, address, red)]
    amber_ties = [rel(7, "indicates", address, other, amber)]
    bundle = {
        "type": "bundle",
        "id": "bundle--00000009-0000-4000-8000-00000000ab01",
        "objects": [domain, address, family, other, *red_ties, *amber_ties],
    }
    response = iocs.post("/api/v1/iocs/import", json={"format": "stix", "content": bundle}, headers=writer)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    result = response.get_json()
    assert (result["links"], result["relations"], result["links_cut"], result["relations_cut"]) == (2, 1, 0, 0), result
    assert not {e["ref"] for e in result["errors"]} & {t["id"] for t in red_ties}, result["errors"]

    by_value = {r["value"]: r["id"] for r in result["iocs"]["results"]}
    related = iocs.get(f"/api/v1/iocs/{by_value['redtie.tlp-test.com']}/related", headers=reader).get_json()
    assert related["relations"] == [] and related["threats"] == [], related
    linked = threats.get(f"/api/v1/threats/by-ioc/{by_value['198.51.100.77']}", headers=reader).get_json()["threats"]
    assert [t["name"] for t in linked] == ["AmberPlainFamily"]
    seen_by_red = iocs.get(f"/api/v1/iocs/{by_value['redtie.tlp-test.com']}/related", headers=writer).get_json()
    assert [(t["name"], t["tlp"]) for t in seen_by_red["threats"]] == [("AmberTieFamily", "red")], seen_by_red
    assert [(r["type"], r["tlp"]) for r in seen_by_red["relations"]] == [("resolves-to", "red")], seen_by_red


def test_a_token_issued_after_an_account_change_is_not_refused_by_an_older_cached_state(function_client, backend_env):
    """Reads check the account against a 30 s per-instance cache. A token newer than the cached state (issued after a
    password rotation, a role change or a re-enable) was refused from it, 401 "this token predates a change to the
    account; log in again", for up to 30 s on every instance that had served the user a read: logging in again did
    not help. A token newer than the cache now reads the account again; an older one is still refused from it."""
    url = backend_env["DATABASE_URL"]
    auth, admin, iocs = function_client("auth"), function_client("admin"), function_client("iocs")
    old = _bearer(_login(auth, "dana", create_user(url, "dana", "analyst")))
    boss = _bearer(_login(auth, "boss", create_user(url, "boss", "admin")))
    assert iocs.get("/api/v1/iocs/stats", headers=old).status_code == 200  # the account's state, cached by this instance
    assert admin.patch("/api/v1/admin/users/dana", json={"password": "a brand new long password"}, headers=boss).status_code == 200
    new = _bearer(_login(auth, "dana", "a brand new long password"))
    fresh = iocs.get("/api/v1/iocs/stats", headers=new)
    assert fresh.status_code == 200, fresh.get_json()
    assert iocs.get("/api/v1/iocs/stats", headers=old).status_code == 401  # the rotation ended the old token
    # Disabled and enabled again: the token of the new login reads at once too.
    assert admin.post("/api/v1/admin/users/dana/disable", headers=boss).status_code == 200
    assert admin.post("/api/v1/admin/users/dana/enable", headers=boss).status_code == 200
    again = _bearer(_login(auth, "dana", "a brand new long password"))
    assert iocs.get("/api/v1/iocs/stats", headers=again).status_code == 200
