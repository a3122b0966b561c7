"""Time query parameters typed with an unencoded '+' offset (curl): the query string decodes the '+' to a space."""

import pytest
from helpers import IntelApi

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/iocs/export?format=csv&limit=5&", "last_seen_from"),
        ("/api/v1/iocs/export?format=csv&limit=5&", "first_seen_to"),
        ("/api/v1/events/search?limit=5&", "from"),
        ("/api/v1/events/top/attack-categories?", "from"),
    ],
)
def test_a_time_typed_with_an_unencoded_plus_is_read_as_its_offset(function_client, backend_env, path, name):
    api = IntelApi(function_client, backend_env["DATABASE_URL"], ("reader",))
    client = function_client("flows") if path.startswith("/api/v1/events") else api.client(path)
    for offset in ("+00:00", "+0530"):
        response = client.get(f"{path}{name}=2026-11-27T00:00:00{offset}", headers=api.reader)
        assert response.status_code == 200, (offset, response.get_data(as_text=True)[:300])
    twice = client.get(f"{path}{name}=2026-11-27T00:00:00++00:00", headers=api.reader)
    assert twice.status_code == 400 and twice.get_json()["error"]["details"]["field"] == name
