"""What admins may do to accounts beyond their clearance: never leave the API without an enabled admin, and end
an account's tokens (POST /api/v1/auth/revoke, POST /api/v1/admin/users/{name}/revoke)."""

import pytest
from helpers import await_lock_waiters, create_user

pytestmark = pytest.mark.integration


def _bearer(auth, username, password):
    response = auth.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def _accounts(admin, headers):
    return {u["username"]: u for u in admin.get("/api/v1/admin/users", headers=headers).get_json()["users"]}


def test_no_admin_change_leaves_no_enabled_admin(function_client, backend_env):
    """The last enabled admin demoted or disabled themselves (200), and only `threatflow users create` against the
    database could make an admin again. A role change away from admin or a disable that would leave no enabled admin
    is now a 409 naming the field, changing nothing; disabled admins do not count, and with another enabled admin
    each still works."""
    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    boss = _bearer(auth, "soleboss", create_user(url, "soleboss", "admin"))

    demoted = admin.patch("/api/v1/admin/users/soleboss", json={"role": "analyst"}, headers=boss)
    assert demoted.status_code == 409 and demoted.get_json()["error"]["details"]["field"] == "role", demoted.get_json()
    assert "last enabled admin" in demoted.get_json()["error"]["message"], demoted.get_json()
    disabled = admin.post("/api/v1/admin/users/SoleBoss/disable", headers=boss)
    assert disabled.status_code == 409 and disabled.get_json()["error"]["details"]["field"] == "username", disabled.get_json()
    assert (_accounts(admin, boss)["soleboss"]["role"], _accounts(admin, boss)["soleboss"]["disabled"]) == ("admin", False)
    assert admin.patch("/api/v1/admin/users/soleboss", json={"role": "admin"}, headers=boss).status_code == 200  # stays one
    boss = _bearer(auth, "soleboss", "correct horse battery staple")  # a role change, even to the same, ends its tokens

    # A disabled admin is no admin to fall back on; an enabled one is.
    create_user(url, "sleepyboss", "admin")
    assert admin.post("/api/v1/admin/users/sleepyboss/disable", headers=boss).status_code == 200
    assert admin.patch("/api/v1/admin/users/sleepyboss", json={"role": "reader"}, headers=boss).status_code == 200
    assert admin.patch("/api/v1/admin/users/soleboss", json={"role": "reader"}, headers=boss).status_code == 409
    create_user(url, "otherboss", "admin")
    assert admin.patch("/api/v1/admin/users/otherboss", json={"role": "analyst"}, headers=boss).status_code == 200
    assert admin.post("/api/v1/admin/users/soleboss/disable", headers=boss).status_code == 409
    assert admin.patch("/api/v1/admin/users/otherboss", json={"role": "admin"}, headers=boss).status_code == 200
    assert admin.post("/api/v1/admin/users/soleboss/disable", headers=boss).status_code == 200
    other = _bearer(auth, "otherboss", "correct horse battery staple")
    assert _accounts(admin, other)["soleboss"]["disabled"] is True
    assert admin.patch("/api/v1/admin/users/otherboss", json={"role": "reader"}, headers=other).status_code == 409


def test_two_admins_demoting_each_other_at_once_leave_one_admin(function_client, backend_env, db):
    """Each demotion checked that another enabled admin remained, then demoted: with only the two, both checks passed
    and both demotions committed, leaving none. The check is serialised: a demotion of `beta` held open by another
    session makes beta's demotion of `alpha` wait for it, see beta demoted, and answer 409."""
    import threading

    from threatflow.auth import service
    from threatflow.auth.model import Role
    from threatflow.auth.repository import UserRepository

    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    create_user(url, "alpha", "admin")
    beta = _bearer(auth, "beta", create_user(url, "beta", "admin"))
    outcome = {}

    def demote_alpha():
        outcome["response"] = admin.patch("/api/v1/admin/users/alpha", json={"role": "analyst"}, headers=beta)

    racer = threading.Thread(target=demote_alpha)
    with db._engine.begin() as conn:
        users = UserRepository(conn)
        service.update_user(
            username="beta", role=Role.ANALYST, clearance=None, password=None, users=users, actor="alpha", actor_clearance="amber"
        )
        racer.start()
        await_lock_waiters(db, 1)
    racer.join()
    response = outcome["response"]
    assert response.status_code == 409, response.get_json()
    alpha = _bearer(auth, "alpha", "correct horse battery staple")
    accounts = _accounts(admin, alpha)
    assert (accounts["alpha"]["role"], accounts["beta"]["role"]) == ("admin", "analyst")
