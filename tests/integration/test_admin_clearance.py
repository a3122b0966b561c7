"""An admin's own TLP clearance bounds what they may hand out: every other route already treats an amber admin as
amber (deletes, import jobs), and PATCH /api/v1/admin/users let one step past it in one call."""

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


def _bearer(auth, username, password):
    response = auth.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def test_an_admin_cannot_grant_a_clearance_above_their_own_nor_take_over_an_account_above_it(function_client, backend_env):
    """An amber admin set their own clearance to red (200) and read every red IoC; or set a red analyst's password
    (200) and logged in as them. Both are now a 403 naming the field, and change nothing."""
    url = backend_env["DATABASE_URL"]
    auth, admin, iocs = function_client("auth"), function_client("admin"), function_client("iocs")
    red = _bearer(auth, "redanalyst", create_user(url, "redanalyst", "analyst", clearance="red"))
    boss = _bearer(auth, "amberboss", create_user(url, "amberboss", "admin"))  # clearance amber, the default
    chief = _bearer(auth, "redchief", create_user(url, "redchief", "admin", clearance="red"))
    create_user(url, "plainreader", "reader")
    stored = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "red.admin-clearance.example.com", "tlp": "red"}]}, headers=red)
    red_id = stored.get_json()["results"][0]["id"]

    raised = admin.patch("/api/v1/admin/users/amberboss", json={"clearance": "red"}, headers=boss)
    assert raised.status_code == 403 and raised.get_json()["error"]["details"]["field"] == "clearance", raised.get_json()
    granted = admin.patch("/api/v1/admin/users/plainreader", json={"clearance": "TLP:RED"}, headers=boss)
    assert granted.status_code == 403, granted.get_json()
    assert iocs.get(f"/api/v1/iocs/{red_id}", headers=boss).status_code == 404

    taken = admin.patch("/api/v1/admin/users/redanalyst", json={"password": "the amber admin's choice"}, headers=boss)
    assert taken.status_code == 403 and taken.get_json()["error"]["details"]["field"] == "password", taken.get_json()
    refused = auth.post("/api/v1/auth/token", json={"username": "redanalyst", "password": "the amber admin's choice"})
    assert refused.status_code == 401
    lowered = admin.patch("/api/v1/admin/users/redanalyst", json={"clearance": "clear"}, headers=boss)
    assert lowered.status_code == 403, lowered.get_json()
    assert iocs.get(f"/api/v1/iocs/{red_id}", headers=red).status_code == 200  # the red analyst's token still works

    # Within the admin's clearance nothing changes, and a red admin grants red.
    assert admin.patch("/api/v1/admin/users/plainreader", json={"clearance": "green"}, headers=boss).get_json()["clearance"] == "green"
    assert admin.patch("/api/v1/admin/users/plainreader", json={"clearance": "red"}, headers=chief).get_json()["clearance"] == "red"
    assert admin.patch("/api/v1/admin/users/redanalyst", json={"password": "a red admin's reset"}, headers=chief).status_code == 200
    # The amber admin still changes the red analyst's role (what they may do, not what they may read).
    assert admin.patch("/api/v1/admin/users/redanalyst", json={"role": "reader"}, headers=boss).status_code == 200


def test_the_first_red_account_is_made_from_the_command_line(backend_env, capsys, monkeypatch):
    """With admins bounded by their own clearance, the one who runs `threatflow users create` against the database
    (the bootstrap) sets a clearance: there was no way to make one but SQL."""
    import io

    from threatflow.cli.main import main

    monkeypatch.setenv("DATABASE_URL", backend_env["DATABASE_URL"])
    monkeypatch.setattr("sys.stdin", io.StringIO("a long bootstrap password\n"))
    with pytest.raises(SystemExit) as done:
        main(["users", "create", "firstchief", "--role", "admin", "--clearance", "TLP:RED", "--password-stdin"])
    assert done.value.code == 0
    assert "clearance red" in capsys.readouterr().out
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.auth.repository import UserRepository
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    try:
        with unit_of_work(engine) as conn:
            user = UserRepository(conn).get_by_username("firstchief")
    finally:
        engine.dispose()
    assert user is not None and user.clearance == "red"
