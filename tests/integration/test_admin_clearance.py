"""An admin's own TLP clearance bounds what they may hand out: every other route already treats an amber admin as
amber (deletes, import jobs), and PATCH /api/v1/admin/users let one step past it in one call."""


import pytest
from helpers import await_lock_waiters, create_user

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
    # Nor its role, which the amber admin once changed (see the next test).
    assert admin.patch("/api/v1/admin/users/redanalyst", json={"role": "reader"}, headers=boss).status_code == 403


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


def test_a_concurrent_raise_of_the_targets_clearance_cannot_slip_between_the_check_and_the_update(function_client, backend_env, db):
    """PATCH read the target, checked its clearance, then updated it in a second statement: a raise to red committed
    between them (here held open by another session) let an amber admin set the password of a now-red account (200,
    and the admin logged in as a red analyst). The target's row is now locked for the check (SELECT ... FOR UPDATE),
    so the PATCH waits for the raise, sees red, and is a 403 that changes nothing."""
    import threading

    from sqlalchemy import text

    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    old_password = create_user(url, "risinganalyst", "analyst")  # amber, within the amber admin's clearance
    boss = _bearer(auth, "amberboss", create_user(url, "amberboss", "admin"))
    outcome = {}

    def reset_password():
        outcome["patch"] = admin.patch("/api/v1/admin/users/risinganalyst", json={"password": "the amber admin's pick"}, headers=boss)

    racer = threading.Thread(target=reset_password)
    with db._engine.begin() as raising:
        raising.execute(text("UPDATE users SET clearance = 'red' WHERE username = 'risinganalyst'"))
        racer.start()
        await_lock_waiters(db, 1)
    racer.join()
    response = outcome["patch"]
    assert response.status_code == 403 and response.get_json()["error"]["details"]["field"] == "password", response.get_json()
    assert auth.post("/api/v1/auth/token", json={"username": "risinganalyst", "password": "the amber admin's pick"}).status_code == 401
    assert auth.post("/api/v1/auth/token", json={"username": "risinganalyst", "password": old_password}).status_code == 200


def test_an_admin_creates_accounts_at_most_at_their_own_clearance(function_client, backend_env):
    """POST /api/v1/admin/users gave every new account the default clearance, amber, whatever the admin's own: a
    green admin made amber accounts (and could log in as one, having set its password). A new account now takes the
    lower of the default and the admin's clearance, or the `clearance` given, which may not exceed the admin's (403)."""
    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    green = _bearer(auth, "greenboss", create_user(url, "greenboss", "admin", clearance="green"))
    chief = _bearer(auth, "redchief", create_user(url, "redchief", "admin", clearance="red"))

    def create(name, headers, **extra):
        return admin.post("/api/v1/admin/users", json={"username": name, "password": "a long enough password", **extra}, headers=headers)

    made = create("greenmade", green)
    assert made.status_code == 201 and made.get_json()["clearance"] == "green", made.get_json()
    above = create("ambermade", green, clearance="amber")
    assert above.status_code == 403 and above.get_json()["error"]["details"]["field"] == "clearance", above.get_json()
    assert admin.get("/api/v1/admin/users", headers=chief).get_json()["users"][-1]["username"] == "greenmade"  # nothing made
    assert create("clearmade", green, clearance="TLP:CLEAR").get_json()["clearance"] == "clear"
    assert create("chiefdefault", chief).get_json()["clearance"] == "amber"  # the default is not raised to the admin's
    assert create("chiefred", chief, clearance="red").get_json()["clearance"] == "red"
    bad = create("badlevel", chief, clearance="purple")
    assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "clearance", bad.get_json()


def test_an_admin_disables_enables_or_changes_the_role_of_no_account_cleared_above_them(function_client, backend_env):
    """An admin's clearance bounded the clearance and password they set, not the rest of what they did to an account:
    an amber admin re-enabled a red account a red admin had disabled, disabled a red analyst or changed its role
    (each a 200). Each is now a 403 naming the field (`username` for the account's status, `role`) that changes
    nothing; within the admin's clearance, and for a red admin, each still works."""
    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    red_password = create_user(url, "redanalyst", "analyst", clearance="red")
    boss = _bearer(auth, "amberboss", create_user(url, "amberboss", "admin"))
    chief = _bearer(auth, "redchief", create_user(url, "redchief", "admin", clearance="red"))
    create_user(url, "amberanalyst", "analyst")

    def account(name):
        return next(u for u in admin.get("/api/v1/admin/users", headers=chief).get_json()["users"] if u["username"] == name)

    assert admin.post("/api/v1/admin/users/redanalyst/disable", headers=chief).status_code == 200
    enabled = admin.post("/api/v1/admin/users/redanalyst/enable", headers=boss)
    assert enabled.status_code == 403 and enabled.get_json()["error"]["details"]["field"] == "username", enabled.get_json()
    assert account("redanalyst")["disabled"] is True
    assert auth.post("/api/v1/auth/token", json={"username": "redanalyst", "password": red_password}).status_code == 401
    assert admin.post("/api/v1/admin/users/redanalyst/enable", headers=chief).status_code == 200

    disabled = admin.post("/api/v1/admin/users/redanalyst/disable", headers=boss)
    assert disabled.status_code == 403 and disabled.get_json()["error"]["details"]["field"] == "username", disabled.get_json()
    assert account("redanalyst")["disabled"] is False
    demoted = admin.patch("/api/v1/admin/users/redanalyst", json={"role": "reader"}, headers=boss)
    assert demoted.status_code == 403 and demoted.get_json()["error"]["details"]["field"] == "role", demoted.get_json()
    promoted = admin.patch("/api/v1/admin/users/redanalyst", json={"role": "admin"}, headers=boss)
    assert promoted.status_code == 403, promoted.get_json()
    assert account("redanalyst")["role"] == "analyst"
    red = _bearer(auth, "redanalyst", red_password)  # its tokens were never ended
    assert admin.get("/api/v1/admin/users", headers=red).status_code == 403  # an analyst still, not an admin

    # Within the admin's clearance nothing changes; a red admin does all of it to the red account.
    assert admin.post("/api/v1/admin/users/amberanalyst/disable", headers=boss).status_code == 200
    assert admin.post("/api/v1/admin/users/amberanalyst/enable", headers=boss).status_code == 200
    assert admin.patch("/api/v1/admin/users/amberanalyst", json={"role": "reader"}, headers=boss).status_code == 200
    assert admin.patch("/api/v1/admin/users/redanalyst", json={"role": "reader"}, headers=chief).status_code == 200
    assert admin.post("/api/v1/admin/users/redanalyst/disable", headers=chief).status_code == 200
    assert admin.post("/api/v1/admin/users/nobody-at-all/enable", headers=boss).status_code == 404


@pytest.mark.parametrize("change", ["disable", "role"])
def test_a_concurrent_raise_of_the_targets_clearance_cannot_slip_past_the_check_of_a_disable_or_role_change(
    function_client, backend_env, db, change
):
    """The status and role checks are made as the password and clearance check is, under the target row's lock: a
    raise to red held open by another session makes the amber admin's disable or role change wait for it, see red,
    and answer 403, changing nothing."""
    import threading

    from sqlalchemy import text

    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    create_user(url, "risinganalyst", "analyst")
    boss = _bearer(auth, "amberboss", create_user(url, "amberboss", "admin"))
    chief = _bearer(auth, "redchief", create_user(url, "redchief", "admin", clearance="red"))
    outcome = {}

    def act():
        if change == "disable":
            outcome["response"] = admin.post("/api/v1/admin/users/risinganalyst/disable", headers=boss)
        else:
            outcome["response"] = admin.patch("/api/v1/admin/users/risinganalyst", json={"role": "reader"}, headers=boss)

    racer = threading.Thread(target=act)
    with db._engine.begin() as raising:
        raising.execute(text("UPDATE users SET clearance = 'red' WHERE username = 'risinganalyst'"))
        racer.start()
        await_lock_waiters(db, 1)
    racer.join()
    response = outcome["response"]
    assert response.status_code == 403, response.get_json()
    users = {u["username"]: u for u in admin.get("/api/v1/admin/users", headers=chief).get_json()["users"]}
    assert (users["risinganalyst"]["role"], users["risinganalyst"]["disabled"]) == ("analyst", False)
