"""POST /api/v1/iocs/import fuzzed (Hypothesis) with real documents (tests/real_documents.py) whose fields are
replaced by values of other shapes: never a 5xx, and a non-2xx answer is a JSON error."""

import copy
import os

import pytest
import real_documents
from helpers import create_user, require_shared_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
DOCUMENTS = [(name, getattr(real_documents, name)) for name in sorted(dir(real_documents)) if name.isupper()]
DOCUMENTS = [(name, doc) for name, doc in DOCUMENTS if isinstance(doc, dict | list)]
FORMATS = {"MISP": "misp", "SEDNIT": "misp", "STIX": "stix", "OPENCTI": "stix", "TAXII": "stix", "SIGHTING": "stix", "POISON": "stix"}
ODD = st.one_of(
    st.sampled_from([5, -1, 1.5, True, None, "", [], {}, [5], {"a": 1}, [None], [[]], "tlp:red", "0001-01-01T00:00:00+05:00",
                     "9999-12-31T23:59:59Z", "T1566", "x" * 5000, "\x00"]),
    st.text(max_size=12),
)  # fmt: skip


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:6]):
            yield from _paths(value, (*path, index))


def _mutated(doc, choices):
    doc = copy.deepcopy(doc)
    for pick, value in choices:
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = paths[pick % len(paths)]
        holder = doc
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = copy.deepcopy(value)
    return doc


def _format(name):
    return next((fmt for prefix, fmt in FORMATS.items() if name.startswith(prefix)), "json")


@pytest.fixture
def post(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "fuzzimport", "analyst", clearance="red")
    auth = function_client("auth").post("/api/v1/auth/token", json={"username": "fuzzimport", "password": password}).get_json()
    limits = {"RATE_LIMIT_PER_USER": "100000/60", "RATE_LIMIT_PER_IP": "100000/60"}
    client = function_client("iocs", ATTACK_DATA_PATH=str(require_shared_data("attack", "attack_techniques.json")), **limits)
    headers = {"Authorization": f"Bearer {auth['access_token']}"}
    return lambda body: client.post("/api/v1/iocs/import", json=body, headers=headers)


def test_imports_of_real_documents_with_fields_of_other_shapes_never_answer_5xx(post):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(DOCUMENTS), st.lists(st.tuples(st.integers(0, 10_000), ODD), min_size=1, max_size=3))
    def run(named, choices):
        name, doc = named
        response = post({"format": _format(name), "content": _mutated(doc, choices)})
        assert response.status_code < 500, (name, choices, response.get_data(as_text=True)[:500])
        if response.status_code >= 400:
            assert response.is_json and "error" in response.get_json()

    run()
