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


def test_a_user_ends_all_their_own_tokens(function_client, backend_env):
    """There was no way to end a token but waiting out its hour, rotating the password or being disabled. POST
    /api/v1/auth/revoke ends every token of the caller's account (its security version goes up): at once on write and
    admin routes, and on a reader route of an instance that has not remembered the account's state; a new login
    works. It is recorded in the security events (`tokens_revoked`, by the user, via the API)."""
    url = backend_env["DATABASE_URL"]
    auth, iocs, admin = function_client("auth"), function_client("iocs"), function_client("admin")
    password = create_user(url, "ann", "analyst")
    first, second = _bearer(auth, "ann", password), _bearer(auth, "ann", password)
    boss = _bearer(auth, "boss", create_user(url, "boss", "admin"))
    batch = {"iocs": [{"value": "revoked.example.com"}]}
    assert iocs.post("/api/v1/iocs/batch", json=batch, headers=second).status_code == 200

    assert auth.post("/api/v1/auth/revoke").status_code == 401
    revoked = auth.post("/api/v1/auth/revoke", headers=first)
    assert revoked.status_code in (200, 204), revoked.get_data(as_text=True)[:300]
    for token in (first, second):
        assert iocs.post("/api/v1/iocs/batch", json=batch, headers=token).status_code == 401
        assert function_client("auth").get("/api/v1/auth/me", headers=token).status_code == 401  # a fresh instance
    fresh = _bearer(auth, "ann", password)
    assert iocs.post("/api/v1/iocs/batch", json=batch, headers=fresh).status_code == 200
    assert auth.get("/api/v1/auth/me", headers=fresh).get_json()["username"] == "ann"
    events = admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]
    assert [(e["kind"], e["username"], e["detail"]["by"], e["detail"]["via"]) for e in events if e["kind"] == "tokens_revoked"] == [
        ("tokens_revoked", "ann", "ann", "api")
    ]


def test_an_admin_ends_the_tokens_of_an_account_within_their_clearance(function_client, backend_env):
    """POST /api/v1/admin/users/{name}/revoke: an admin ends another account's tokens (a stolen laptop) without
    disabling it or choosing its password. Bounded as the other admin changes are: an account cleared above the
    admin's clearance is a 403 naming `username` that ends nothing; no such account, a 404; only admins (403)."""
    url = backend_env["DATABASE_URL"]
    auth, admin, iocs = function_client("auth"), function_client("admin"), function_client("iocs")
    reader_password = create_user(url, "rita", "reader")
    rita = _bearer(auth, "rita", reader_password)
    red = _bearer(auth, "redanalyst", create_user(url, "redanalyst", "analyst", clearance="red"))
    boss = _bearer(auth, "amberboss", create_user(url, "amberboss", "admin"))
    chief = _bearer(auth, "redchief", create_user(url, "redchief", "admin", clearance="red"))
    batch = {"iocs": [{"value": "admin-revoked.example.com"}]}

    assert admin.post("/api/v1/admin/users/amberboss/revoke", headers=rita).status_code == 403  # readers revoke no one
    assert admin.post("/api/v1/admin/users/amberboss/revoke", headers=red).status_code == 403
    ended = admin.post("/api/v1/admin/users/RITA/revoke", headers=boss)
    assert ended.status_code in (200, 204), ended.get_data(as_text=True)[:300]
    assert function_client("auth").get("/api/v1/auth/me", headers=rita).status_code == 401
    assert _accounts(admin, boss)["rita"]["disabled"] is False
    assert function_client("auth").get("/api/v1/auth/me", headers=_bearer(auth, "rita", reader_password)).status_code == 200

    above = admin.post("/api/v1/admin/users/redanalyst/revoke", headers=boss)
    assert above.status_code == 403 and above.get_json()["error"]["details"]["field"] == "username", above.get_json()
    assert iocs.post("/api/v1/iocs/batch", json=batch, headers=red).status_code == 200  # still works
    assert admin.post("/api/v1/admin/users/redanalyst/revoke", headers=chief).status_code in (200, 204)
    assert iocs.post("/api/v1/iocs/batch", json=batch, headers=red).status_code == 401
    assert admin.post("/api/v1/admin/users/nobody-at-all/revoke", headers=chief).status_code == 404
    events = admin.get("/api/v1/admin/security-events", headers=chief).get_json()["events"]
    assert [(e["username"], e["detail"]["by"], e["detail"]["via"]) for e in events if e["kind"] == "tokens_revoked"] == [
        ("redanalyst", "redchief", "api"),
        ("rita", "amberboss", "api"),
    ]


def test_a_concurrent_raise_of_the_targets_clearance_cannot_slip_past_the_check_of_a_revoke(function_client, backend_env, db):
    """The revoke's clearance check is made under the target row's lock, as the other admin changes' are."""
    import threading

    from sqlalchemy import text

    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    rising = _bearer(auth, "risinganalyst", create_user(url, "risinganalyst", "analyst"))
    boss = _bearer(auth, "amberboss", create_user(url, "amberboss", "admin"))
    outcome = {}

    def revoke():
        outcome["response"] = admin.post("/api/v1/admin/users/risinganalyst/revoke", headers=boss)

    racer = threading.Thread(target=revoke)
    with db._engine.begin() as raising:
        raising.execute(text("UPDATE users SET clearance = 'red' WHERE username = 'risinganalyst'"))
        racer.start()
        await_lock_waiters(db, 1)
    racer.join()
    assert outcome["response"].status_code == 403, outcome["response"].get_json()
    assert function_client("auth").get("/api/v1/auth/me", headers=rising).status_code == 200  # its token still works


def test_a_revoked_or_disabled_accounts_token_revokes_nothing(function_client, backend_env, db):
    """POST /api/v1/auth/revoke is a reader route, whose account check may come from an instance's 30 s memory: a
    token it had just revoked revoked again there (200), ending the new login its owner made meanwhile, and a disabled
    account's token revoked its tokens, each recorded as `tokens_revoked` by that account. The revoke compares the
    token's version and the account's state under the account's row lock: such a token is a 401 that ends nothing."""
    url = backend_env["DATABASE_URL"]
    auth, admin = function_client("auth"), function_client("admin")
    password = create_user(url, "stolenann", "analyst")
    boss = _bearer(auth, "revokeboss", create_user(url, "revokeboss", "admin"))
    stolen = _bearer(auth, "stolenann", password)
    assert auth.get("/api/v1/auth/me", headers=stolen).status_code == 200  # this instance remembers the account
    assert auth.post("/api/v1/auth/revoke", headers=stolen).status_code == 200
    fresh = _bearer(auth, "stolenann", password)
    again = auth.post("/api/v1/auth/revoke", headers=stolen)
    assert again.status_code == 401, again.get_json()
    assert function_client("auth").get("/api/v1/auth/me", headers=fresh).status_code == 200, "the new login was ended"

    sleeper = _bearer(auth, "disabledann", create_user(url, "disabledann", "reader"))
    assert auth.get("/api/v1/auth/me", headers=sleeper).status_code == 200
    assert admin.post("/api/v1/admin/users/disabledann/disable", headers=boss).status_code == 200
    disabled = auth.post("/api/v1/auth/revoke", headers=sleeper)
    assert disabled.status_code == 401, disabled.get_json()
    events = admin.get("/api/v1/admin/security-events", headers=boss).get_json()["events"]
    revokes = [(e["username"], e["detail"]["by"]) for e in events if e["kind"] == "tokens_revoked"]
    assert revokes == [("stolenann", "stolenann")], revokes
