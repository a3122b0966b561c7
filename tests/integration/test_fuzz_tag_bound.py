"""The write paths that merge tags, fuzzed (Hypothesis) as test_fuzz_routes.py fuzzes every route, with bodies shaped
to reach the merge: items of colliding values (a full red IoC, an amber one, an IoC stored past the bound before it
existed, new ones), tags of every kind (long, non-string, NUL, case and space variants, many), TLPs, through /batch and
/import (json, csv, text), as an amber and a red analyst. Never a 5xx or a non-JSON error, and after every request:
no IoC holds more than 64 tags unless it held more before the bound, the counts add up, and an item merged into an
IoC above its writer's clearance answers no id and no tags cut."""

import os

import pytest
from helpers import create_user
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from route_fuzz import Tally, check

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
LEGACY = "legacy.fuzz-test.com"  # stored with 100 tags, as rows written before the bound may be
VALUES = ["red.fuzz-test.com", "amber.fuzz-test.com", LEGACY, "198.51.100.7", "hxxp://bad[.]fuzz-test[.]com/x", "new1.fuzz-test.com"]

tag = st.one_of(
    st.sampled_from(["c2", "C2 ", " apt", "tlp:red", "misp-event:x", "t00", "old000", ""]),
    st.text(max_size=140),
    st.text(alphabet="ab", min_size=1, max_size=7),  # many distinct short tags: fills IoCs fast
    st.integers(),
    st.none(),
)
item = st.fixed_dictionaries(
    {"value": st.one_of(st.sampled_from(VALUES), st.text(max_size=30))},
    optional={
        "tags": st.lists(tag, max_size=70),
        "tlp": st.sampled_from(["red", "amber", "clear", "purple", "TLP:GREEN"]),
        "source": st.text(max_size=20),
    },
)
request = st.tuples(
    st.sampled_from(["amber", "red"]),
    st.sampled_from(["batch", "json", "csv", "text"]),
    st.lists(item, min_size=1, max_size=12),
    st.lists(st.text(alphabet="xyz-", min_size=1, max_size=6), max_size=66),  # an import's request-level tags
)


def _csv(items):
    def cell(text):
        return '"' + str(text).replace('"', '""') + '"'

    rows = ["value,tags,tlp"]
    for i in items:
        tags = ";".join(str(t) for t in i.get("tags", []) if t is not None)
        rows.append(f"{cell(i['value'])},{cell(tags)},{cell(i.get('tlp', ''))}")
    return "\n".join(rows) + "\n"


def test_writes_that_merge_tags_never_answer_5xx_and_keep_the_bound(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    headers = {}
    for clearance in ("amber", "red"):
        password = create_user(url, f"fuzz{clearance}", "analyst", clearance=clearance)
        token = auth.post("/api/v1/auth/token", json={"username": f"fuzz{clearance}", "password": password}).get_json()
        headers[clearance] = {"Authorization": f"Bearer {token['access_token']}"}
    iocs = function_client("iocs", RATE_LIMIT_PER_USER="100000/60", RATE_LIMIT_PER_IP="100000/60")
    seed = [
        {"value": "red.fuzz-test.com", "tlp": "red", "tags": [f"t{i:02d}" for i in range(64)]},
        {"value": "amber.fuzz-test.com", "tlp": "amber"},
        {"value": LEGACY, "tlp": "amber"},
    ]
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": seed}, headers=headers["red"]).get_json()["summary"]["created"] == 3

    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE iocs SET tags = %s WHERE value = %s", ([f"old{i:03d}" for i in range(100)], LEGACY))
    tally = Tally()
    reached = {"tags_cut": 0, "hidden": 0}  # how often the fuzz reached the bound and a hidden merge (printed)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(request)
    def fuzz(drawn):
        writer, route, items, request_tags = drawn
        if route == "batch":
            path, body = "/api/v1/iocs/batch", {"iocs": items}
        else:
            content = {"json": {"iocs": items}, "csv": _csv(items), "text": " ".join(str(i["value"]) for i in items)}[route]
            path, body = "/api/v1/iocs/import", {"format": route, "content": content, "tags": request_tags}
        with engine.connect() as conn:  # the red writer may have re-marked it since: what holds now decides
            red_tlp = conn.exec_driver_sql("SELECT tlp FROM iocs WHERE value = 'red.fuzz-test.com'").scalar_one()
        response = iocs.post(path, json=body, headers=headers[writer])
        check(tally, f"{writer} {path} {str(body)[:120]}", response.status_code, response.content_type or "", response.data)
        if response.status_code != 200:
            return
        answer = response.get_json()
        results, summary = (
            (answer["results"], answer["summary"]) if route == "batch" else (answer["iocs"]["results"], answer["iocs"]["summary"])
        )
        assert summary["tags_cut"] == sum(r.get("tags_cut", 0) for r in results), answer
        reached["tags_cut"] += summary["tags_cut"] > 0
        if route != "batch":
            assert answer["tags_cut"] == summary["tags_cut"]
        if writer == "amber" and red_tlp in ("amber+strict", "red"):
            above = [r for r in results if r.get("value") == "red.fuzz-test.com" and r["status"] != "rejected"]
            assert all("id" not in r and "tags_cut" not in r for r in above), above
            reached["hidden"] += bool(above)
        with engine.connect() as conn:
            over = conn.exec_driver_sql("SELECT value, cardinality(tags) FROM iocs WHERE cardinality(tags) > 64").all()
        assert [(v, n) for v, n in over if not (v == LEGACY and n == 100)] == [], over

    try:
        fuzz()
    finally:
        engine.dispose()
    print(
        f"tag bound: {tally.requests} fuzzed requests, {len(tally.server_errors)} 5xx, {len(tally.not_json)} non-JSON errors,"
        f" {reached['tags_cut']} with tags cut, {reached['hidden']} merged into an IoC above the writer's clearance"
    )
    assert tally.server_errors == [], "\n".join(tally.server_errors[:10])
    assert tally.not_json == [], "\n".join(tally.not_json[:10])
