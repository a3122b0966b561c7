"""The write paths bounded here, fuzzed (Hypothesis) as test_fuzz_routes.py fuzzes every route: IoC sources
(/iocs/batch, /iocs/import with a request-level source) and threat upserts (/threats/batch: tags, aliases, names
colliding with a red threat and its aliases), as an amber and a red analyst; and POST /flows/uploads with bodies of
every shape. Never a 5xx or a non-JSON error, and after every request: no IoC holds more than 64 sources, no threat
more than 64 tags or 256 aliases, the counts add up, and an amber writer's item merged into the red threat answers
`updated` and nothing more."""

import os

import pytest
from helpers import create_user
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from route_fuzz import Tally, check

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
VALUES = ["full.fuzz2-test.com", "198.51.100.8", "new2.fuzz2-test.com"]
NAMES = ["RedFuzz", "redfuzz", "RedAliasFuzz", "AmberFuzz", "NewFuzz"]
# Names with letters whose case Python and the database fold differently ("Æt"/"ÆT" was a 500 while names were
# matched with Python's lower(); test_a_non_ascii_name_differing_only_in_case_is_not_a_500 below), besides ASCII.
NAME_LETTERS = "abcXYZ -_.0ÆæİıŞşΣσςÉéẞß"

text = st.one_of(
    st.sampled_from(["misp:org", " feed ", "", "s00", "x" * 257, "\x00"]),
    st.text(max_size=270),
    st.text(alphabet="ab", min_size=1, max_size=8),  # many distinct short ones: fills the lists fast
    st.integers(),
    st.none(),
)
ioc_item = st.fixed_dictionaries(
    {"value": st.one_of(st.sampled_from(VALUES), st.text(max_size=30))},
    optional={"sources": st.lists(text, max_size=70), "source": text, "tlp": st.sampled_from(["red", "amber", "clear"])},
)
threat_item = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["malware", "tool", "threat-actor", "actor"]),
        "name": st.one_of(st.sampled_from(NAMES), st.text(alphabet=NAME_LETTERS, max_size=20)),
    },
    optional={
        "aliases": st.lists(st.one_of(st.sampled_from(NAMES), st.text(alphabet="abcÆæİı", min_size=1, max_size=9)), max_size=260),
        "tags": st.one_of(st.lists(st.text(alphabet="abc", min_size=1, max_size=8), max_size=66), st.lists(text, max_size=66)),
        "tlp": st.sampled_from(["red", "amber", "clear"]),
    },
)
request = st.one_of(
    st.tuples(st.sampled_from(["amber", "red"]), st.just("iocs"), st.lists(ioc_item, min_size=1, max_size=8), text),
    st.tuples(st.sampled_from(["amber", "red"]), st.just("import"), st.lists(ioc_item, min_size=1, max_size=8), text),
    st.tuples(st.sampled_from(["amber", "red"]), st.just("threats"), st.lists(threat_item, min_size=1, max_size=6), st.none()),
    st.tuples(
        st.sampled_from(["amber", "red"]),
        st.just("uploads"),
        st.one_of(st.fixed_dictionaries({"object": text}, optional={"bucket": text}), st.lists(st.integers(), max_size=2)),
        st.none(),
    ),
)


def test_bounded_writes_never_answer_5xx_and_keep_their_bounds(function_client, backend_env):
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    headers = {}
    for clearance in ("amber", "red"):
        password = create_user(url, f"fuzz2{clearance}", "analyst", clearance=clearance)
        token = auth.post("/api/v1/auth/token", json={"username": f"fuzz2{clearance}", "password": password}).get_json()
        headers[clearance] = {"Authorization": f"Bearer {token['access_token']}"}
    limits = {"RATE_LIMIT_PER_USER": "100000/60", "RATE_LIMIT_PER_IP": "100000/60"}
    clients = {
        "iocs": function_client("iocs", **limits),
        "threats": function_client("threats", **limits),
        "flows": function_client("flows", **limits),
    }
    full = {"value": "full.fuzz2-test.com", "sources": [f"s{i:02d}" for i in range(64)]}
    assert clients["iocs"].post("/api/v1/iocs/batch", json={"iocs": [full]}, headers=headers["red"]).status_code == 200
    red = {"kind": "malware", "name": "RedFuzz", "tlp": "red", "aliases": ["RedAliasFuzz", *(f"a{i:03d}" for i in range(250))]}
    amber = {"kind": "tool", "name": "AmberFuzz", "tlp": "amber", "tags": [f"t{i:02d}" for i in range(64)]}  # full of tags
    made = clients["threats"].post("/api/v1/threats/batch", json={"threats": [red, amber]}, headers=headers["red"]).get_json()
    assert made["summary"]["created"] == 2, made

    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    tally = Tally()
    reached = {"sources_cut": 0, "tags_cut": 0, "aliases_cut": 0, "hidden": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(request)
    def fuzz(drawn):
        writer, route, items, source = drawn
        if route == "iocs":
            client, path, body = clients["iocs"], "/api/v1/iocs/batch", {"iocs": items}
        elif route == "import":
            client, path, body = clients["iocs"], "/api/v1/iocs/import", {"format": "json", "content": {"iocs": items}, "source": source}
        elif route == "threats":
            client, path, body = clients["threats"], "/api/v1/threats/batch", {"threats": items}
        else:
            client, path, body = clients["flows"], "/api/v1/flows/uploads", items
        with engine.connect() as conn:
            red_tlp = conn.exec_driver_sql("SELECT tlp FROM threats WHERE name = 'RedFuzz'").scalar_one()
        response = client.post(path, json=body, headers=headers[writer])
        check(tally, f"{writer} {path} {str(body)[:120]}", response.status_code, response.content_type or "", response.data)
        if response.status_code == 200 and route in ("iocs", "import"):
            answer = response.get_json()
            results, summary = (
                (answer["results"], answer["summary"]) if route == "iocs" else (answer["iocs"]["results"], answer["iocs"]["summary"])
            )
            assert summary["sources_cut"] == sum(r.get("sources_cut", 0) for r in results), answer
            reached["sources_cut"] += summary["sources_cut"] > 0
        if response.status_code == 200 and route == "threats":
            answer = response.get_json()
            for key in ("tags_cut", "aliases_cut"):
                assert answer["summary"][key] == sum(r.get(key, 0) for r in answer["results"]), answer
                reached[key] += answer["summary"][key] > 0
            if writer == "amber" and red_tlp in ("amber+strict", "red"):
                hidden = [r for r in answer["results"] if r["status"] == "updated" and "id" not in r]
                assert all(set(r) <= {"index", "status", "reason"} for r in hidden), hidden
                reached["hidden"] += bool(hidden)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM iocs WHERE cardinality(sources) > 64").scalar_one() == 0
            over = conn.exec_driver_sql("SELECT name FROM threats WHERE cardinality(tags) > 64 OR cardinality(aliases) > 256").all()
            assert over == [], over

    try:
        fuzz()
    finally:
        engine.dispose()
    print(
        f"bounds2: {tally.requests} fuzzed requests, {len(tally.server_errors)} 5xx, {len(tally.not_json)} non-JSON errors,"
        f" {reached['sources_cut']} with sources cut, {reached['tags_cut']} / {reached['aliases_cut']} with threat tags / aliases cut,"
        f" {reached['hidden']} merged into the red threat by the amber writer"
    )
    assert tally.server_errors == [], "\n".join(tally.server_errors[:10])
    assert tally.not_json == [], "\n".join(tally.not_json[:10])


def test_a_non_ascii_name_differing_only_in_case_is_not_a_500(function_client, backend_env):
    """Found by the fuzz above: threat "Æt" stored, then "ÆT" posted: Python's name_key makes both "æt", the
    database's lower() (C collation here) "Æt", so the name lookup missed and the insert hit the unique index: 500.
    Stored names are now matched with the database's own expression; the second post merges into the first."""
    url = backend_env["DATABASE_URL"]
    password = create_user(url, "caseprobe", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "caseprobe", "password": password}).get_json()
    threats = function_client("threats")
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    first = threats.post("/api/v1/threats/batch", json={"threats": [{"kind": "tool", "name": "Æt"}]}, headers=headers)
    assert first.status_code == 200 and first.get_json()["results"][0]["status"] == "created"
    again = threats.post("/api/v1/threats/batch", json={"threats": [{"kind": "tool", "name": "ÆT"}]}, headers=headers)
    assert again.status_code == 200, again.get_data(as_text=True)[:300]
    merged = again.get_json()["results"][0]
    assert merged["status"] in ("updated", "unchanged") and merged["id"] == first.get_json()["results"][0]["id"]
    listed = threats.post("/api/v1/threats/find", json={"alias": "ÆT"}, headers=headers).get_json()  # matched as the store keys
    assert [t["name"] for t in listed["threats"]] == ["Æt"], listed


@pytest.mark.parametrize(
    "names",
    [["Æx", "ÆX"], ["İy", "i̇y"], ["ßz", "SSz"], ["Σq", "σq", "ςq"], ["ẞw", "ßw"]],
    ids=["ae", "dotted-i", "sharp-s", "sigma", "capital-sharp-s"],
)
def test_names_that_fold_alike_in_one_batch_are_not_a_500(function_client, backend_env, names):
    """Names Python's str.lower() folds together but the database's lower() (C collation) does not, or the other
    way, in one batch and across batches, as names and as aliases."""
    url = backend_env["DATABASE_URL"]
    user = f"fold{abs(hash(tuple(names))) % 10**6}"
    password = create_user(url, user, "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": user, "password": password}).get_json()
    threats = function_client("threats")
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    batch = [{"kind": "tool", "name": n, "aliases": [m for m in names if m != n]} for n in names]
    for body in (batch, list(reversed(batch)), [{"kind": "malware", "name": names[0] + "!", "aliases": names}]):
        response = threats.post("/api/v1/threats/batch", json={"threats": body}, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
