"""Issue 7: bad input is a 4xx naming the field (never a 500), and outages are 503s naming the dependency.

Each test here failed before the fix (HTTP 500, or the whole batch aborted)."""

import uuid

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration

HUGE = 2**63  # one past the largest bigint
HUGER = 10**30


def _token(function_client, username, role, database_url, **kw):
    password = create_user(database_url, username, role, **kw)
    response = function_client("auth").post("/api/v1/auth/token", json={"username": username, "password": password})
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


@pytest.fixture
def clients(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    analyst = _token(function_client, "analyst1", "analyst", url)
    admin = _token(function_client, "admin1", "admin", url)
    return {
        "iocs": function_client("iocs"),
        "threats": function_client("threats"),
        "admin": function_client("admin"),
        "auth": function_client("auth"),
        "analyst": analyst,
        "admin_h": admin,
    }


def _field(response):
    body = response.get_json()
    assert body is not None, response.data[:200]
    return (body["error"].get("details") or {}).get("field")


def _is_4xx_naming(response, field):
    assert 400 <= response.status_code < 500, (response.status_code, response.data[:300])
    named = _field(response) or ""
    assert named.startswith(field), (named, response.get_json())


@pytest.mark.parametrize(
    ("function", "method", "path", "body", "field"),
    [
        ("iocs", "get", f"/api/v1/iocs/{HUGE}", None, "ioc_id"),
        ("iocs", "get", f"/api/v1/iocs/{HUGER}/related", None, "ioc_id"),
        ("iocs", "post", f"/api/v1/iocs/{HUGE}/sightings", {}, "ioc_id"),
        ("iocs", "post", "/api/v1/iocs/find", {"ids": [1, HUGE]}, "ids[1]"),
        ("iocs", "post", "/api/v1/iocs/find", {"ids": [HUGER]}, "ids[0]"),
        ("iocs", "get", f"/api/v1/iocs/export?ids=1,{HUGE}", None, "ids"),
        ("iocs", "get", "/api/v1/iocs/expired?cursor=aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", None, "cursor"),
        ("iocs", "post", "/api/v1/iocs/find", {"cursor": "aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor"),
        ("iocs", "post", "/api/v1/iocs/1/relations", {"target_id": HUGE, "type": "drops"}, "target_id"),
        ("threats", "get", f"/api/v1/threats/{HUGE}", None, "threat_id"),
        ("threats", "get", f"/api/v1/threats/by-ioc/{HUGE}", None, "ioc_id"),
        ("threats", "post", "/api/v1/threats/1/link", {"ioc_ids": [HUGE]}, "ioc_ids[0]"),
        ("admin", "get", f"/api/v1/admin/users?after={HUGE}", None, "after"),
    ],
)
def test_integers_beyond_64_bits_are_a_400_naming_the_field(clients, function, method, path, body, field):
    headers = clients["admin_h"] if function == "admin" else clients["analyst"]
    client = clients[function]
    response = (
        getattr(client, method)(path, json=body, headers=headers) if body is not None else getattr(client, method)(path, headers=headers)
    )
    _is_4xx_naming(response, field)


def test_nul_in_strings_is_a_400_and_a_nul_tag_rejects_only_its_item(clients):
    iocs, h = clients["iocs"], clients["analyst"]
    batch = iocs.post(
        "/api/v1/iocs/batch",
        json={"iocs": [{"value": "good.example.com"}, {"value": "bad.example.com", "tags": ["x\x00y"]}, {"value": "n\x00l.example.com"}]},
        headers=h,
    )
    assert batch.status_code == 200, batch.get_json()
    results = batch.get_json()["results"]
    assert results[0]["status"] == "created"
    assert [r["status"] for r in results[1:]] == ["rejected", "rejected"]
    assert "NUL" in results[1]["reason"]
    _is_4xx_naming(iocs.post("/api/v1/iocs/find", json={"tags": ["a\x00"]}, headers=h), "tags")
    _is_4xx_naming(iocs.get("/api/v1/iocs/value/a%00b.example.com", headers=h), "value")
    _is_4xx_naming(iocs.get("/api/v1/iocs/export?source=a%00b", headers=h), "source")
    _is_4xx_naming(iocs.post("/api/v1/iocs/extract", json={"text": "evil\x00.com"}, headers=h), "text")
    # The token endpoint, without any token.
    _is_4xx_naming(clients["auth"].post("/api/v1/auth/token", json={"username": "a\x00b", "password": "x"}), "username")
    _is_4xx_naming(clients["auth"].post("/api/v1/auth/token", json={"username": "ab", "password": "x\x00"}), "password")


def _nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def _nested_text(depth):
    """The JSON text of `_nested(depth)`, written without recursion (json.dumps gives up near 1,000)."""
    return '{"a": ' * depth + '"leaf"' + "}" * depth


@pytest.mark.parametrize("depth", [1000, 5000])
def test_json_nested_beyond_400_levels_is_a_400(clients, depth):
    iocs, h = clients["iocs"], clients["analyst"]
    deep = _nested_text(depth)
    created = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "deep.example.com"}]}, headers=h).get_json()["results"][0]
    sighting = iocs.post(
        f"/api/v1/iocs/{created['id']}/sightings", data=f'{{"context": {deep}}}', headers=h, content_type="application/json"
    )
    _is_4xx_naming(sighting, "context")
    imported = iocs.post("/api/v1/iocs/import", data=f'{{"format": "json", "content": {deep}}}', headers=h, content_type="application/json")
    _is_4xx_naming(imported, "content")
    job = clients["admin"].post(
        "/api/v1/admin/jobs/heartbeat/run", data=f'{{"params": {deep}}}', headers=clients["admin_h"], content_type="application/json"
    )
    _is_4xx_naming(job, "params")


def test_a_depth_of_400_is_still_accepted(clients):
    iocs, h = clients["iocs"], clients["analyst"]
    created = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "ok-deep.example.com"}]}, headers=h).get_json()["results"][0]
    response = iocs.post(f"/api/v1/iocs/{created['id']}/sightings", json={"context": _nested(390)}, headers=h)
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize(("raw", "field"), [(b"{", "body"), (b'{"params": 5}', "params"), (b'{"nope": 1}', "nope")])
def test_malformed_job_run_body_is_a_400(clients, raw, field):
    response = clients["admin"].post(
        "/api/v1/admin/jobs/heartbeat/run", data=raw, headers=clients["admin_h"], content_type="application/json"
    )
    _is_4xx_naming(response, field)


@pytest.mark.parametrize(
    ("function", "path"),
    [("admin", "/api/v1/admin/runs/__x__"), ("iocs", "/api/v1/iocs/import/%2e%2e"), ("iocs", "/api/v1/iocs/import/__proto__")],
)
def test_ids_the_document_store_rejects_are_a_400(clients, function, path):
    headers = clients["admin_h"]
    _is_4xx_naming(clients[function].get(path, headers=headers), "id")


def test_an_overflowing_date_rejects_its_item_not_the_batch(clients):
    response = clients["iocs"].post(
        "/api/v1/iocs/batch",
        json={"iocs": [{"value": "later.example.com", "seen_at": "9999-12-31T00:00:00Z"}, {"value": "now.example.com"}]},
        headers=clients["analyst"],
    )
    assert response.status_code == 200, response.get_json()
    first, second = response.get_json()["results"]
    assert first["status"] == "rejected" and "seen_at" in first["reason"]
    assert second["status"] == "created"


@pytest.mark.parametrize("field", ["first_seen_from", "first_seen_to", "last_seen_from", "last_seen_to"])
@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_a_filter_time_outside_years_1_to_9999_in_utc_is_a_400_and_leaves_the_pool_usable(clients, field, at):
    """A find, export or delete filter's time whose UTC instant falls before year 1 or after 9999 was a 500: the
    last_seen ones raised OverflowError compiling the filter, the first_seen ones in the driver while it sent the
    query, after it had asked the server to describe it, so the unread answer stayed on the connection and the
    pool handed it on: the next requests on it (any user's, a login's account check) were 500s too. It is a 400
    naming the field, as a body's times are, and the requests after it are answered."""
    iocs, analyst = clients["iocs"], clients["analyst"]
    found = iocs.post("/api/v1/iocs/find", json={field: at}, headers=analyst)
    _is_4xx_naming(found, field)
    exported = iocs.get("/api/v1/iocs/export", query_string={"format": "txt", field: at}, headers=analyst)
    _is_4xx_naming(exported, field)
    deleted = iocs.delete("/api/v1/iocs", json={"filter": {field: at}, "confirm": True}, headers=clients["admin_h"])
    _is_4xx_naming(deleted, field)
    after = [iocs.post("/api/v1/iocs/find", json={}, headers=analyst).status_code for _ in range(4)]
    assert after == [200, 200, 200, 200]


def test_missing_attack_data_is_a_503_with_a_clear_message(function_client, backend_env, clients):
    threats = function_client("threats", ATTACK_DATA_PATH="", BUCKET_MODELS=f"empty-{uuid.uuid4().hex[:8]}")
    response = threats.get("/api/v1/threats/by-ttp/T1059", headers=clients["analyst"])
    assert response.status_code == 503, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "dependency_unavailable" and "ATT" in error["message"]
    assert response.headers["Retry-After"]


def test_postgres_down_is_a_503_with_retry_after_naming_it(function_client, backend_env, clients):
    iocs = function_client("iocs", DATABASE_URL="postgresql+pg8000://postgres@127.0.0.1:1/nowhere", DB_TIMEOUT_SECONDS="2")
    for method, path, body in [("get", "/api/v1/iocs/1", None), ("post", "/api/v1/iocs/find", {}), ("get", "/api/v1/iocs/stats", None)]:
        response = (
            getattr(iocs, method)(path, json=body, headers=clients["analyst"])
            if body is not None
            else iocs.get(path, headers=clients["analyst"])
        )
        assert response.status_code == 503, (path, response.get_json())
        assert response.get_json()["error"]["code"] == "dependency_unavailable"
        assert "PostgreSQL" in response.get_json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1


def _in_pattern_bundle(k):
    def indicator(n):
        values = ", ".join(f"'10.{n}.{i // 250}.{i % 250 + 1}'" for i in range(k))
        return {
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
            "created": "2024-01-01T00:00:00Z",
            "modified": "2024-01-01T00:00:00Z",
            "pattern_type": "stix",
            "pattern": f"[ipv4-addr:value IN ({values})]",
            "valid_from": "2024-01-01T00:00:00Z",
        }

    first, second = indicator(1), indicator(2)
    relationship = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": "relationship--00000000-0000-4000-8000-000000000003",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "relationship_type": "communicates-with",
        "source_ref": first["id"],
        "target_ref": second["id"],
    }
    return {"type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000000", "objects": [first, second, relationship]}


def test_stix_in_patterns_and_a_relationship_expand_linearly_and_report_the_cut(clients):
    from threatflow.intel.formats.stix import MAX_PATTERN_VALUES
    from threatflow.intel.importer import MAX_RELATIONS_PER_IMPORT

    response = clients["iocs"].post(
        "/api/v1/iocs/import", json={"format": "stix", "content": _in_pattern_bundle(200)}, headers=clients["analyst"]
    )
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert result["iocs"]["summary"]["created"] == 2 * MAX_PATTERN_VALUES  # 100 of the 200 values per pattern
    assert sum("only the first" in w["reason"] for w in result["warnings"]) == 2
    assert result["relations"] == MAX_RELATIONS_PER_IMPORT  # not 100 x 100 = 10,000, let alone 40,000
    assert result["relations_cut"] == MAX_PATTERN_VALUES**2 - MAX_RELATIONS_PER_IMPORT
    assert any(e["ref"] == "relations" and str(result["relations_cut"]) in e["reason"] for e in result["errors"])


def test_paths_the_framework_cannot_route_are_json_errors(clients):
    response = clients["admin"].post("/api/v1/admin/jobs/%0A/run", headers=clients["admin_h"])
    assert response.status_code == 404 and response.is_json
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("description", ["\r=cmd|' /C calc'!A0", "\t=cmd|' /C calc'!A0", '=HYPERLINK("http://x")', "@SUM(1+1)"])
def test_the_csv_export_neutralises_formula_descriptions(clients, description):
    import csv
    import io

    iocs, h = clients["iocs"], clients["analyst"]
    assert (
        iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "csv.example.com", "description": description}]}, headers=h).status_code
        == 200
    )
    exported = iocs.get("/api/v1/iocs/export?format=csv&value_prefix=csv.example", headers=h).data.decode()
    rows = list(csv.reader(io.StringIO(exported)))
    assert len(rows) == 2, exported  # the header and one row: a CR or tab never opens a new row
    cell = rows[1][rows[0].index("description")]
    assert cell == "'" + description
