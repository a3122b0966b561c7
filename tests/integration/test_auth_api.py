"""The auth and admin functions, loaded by functions-framework, against real
PostgreSQL and Redis."""

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


def _token(client, username, password):
    response = client.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def test_token_reaches_protected_endpoint(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "alice", "analyst")
    client = function_client("auth")
    response = client.post("/api/v1/auth/token", json={"username": "alice", "password": password})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600 and body["access_token"]
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.get_json() == {"username": "alice", "role": "analyst", "user_id": me.get_json()["user_id"], "clearance": "amber"}


def test_no_token_is_401_json(function_client, backend_env):
    response = function_client("auth").get("/api/v1/auth/me")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["X-Request-Id"]


def test_wrong_password_and_unknown_user_look_the_same(function_client, backend_env):
    create_user(backend_env["DATABASE_URL"], "bob", "reader")
    client = function_client("auth")
    wrong = client.post("/api/v1/auth/token", json={"username": "bob", "password": "not the password"})
    unknown = client.post("/api/v1/auth/token", json={"username": "nobody", "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json()["error"]["message"] == unknown.get_json()["error"]["message"]


def test_disabled_user_cannot_log_in(function_client, backend_env):
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.auth.repository import UserRepository
    from threatflow.platform.config import Settings

    password = create_user(backend_env["DATABASE_URL"], "carol", "reader")
    engine = create_engine(Settings.from_env())
    with unit_of_work(engine) as conn:
        UserRepository(conn).set_disabled("carol", True)
    engine.dispose()
    response = function_client("auth").post("/api/v1/auth/token", json={"username": "carol", "password": password})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [({"username": "alice"}, "password"), ({"username": 5, "password": "x"}, "username"), ({"username": "", "password": "x"}, "username")],
)
def test_validation_names_the_field(function_client, backend_env, body, field):
    response = function_client("auth").post("/api/v1/auth/token", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "validation"
    assert error["details"]["field"] == field
    assert field in error["message"]


def test_malformed_json_is_400(function_client, backend_env):
    response = function_client("auth").post("/api/v1/auth/token", data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "body"


def test_unknown_route_and_wrong_method(function_client, backend_env):
    client = function_client("auth")
    assert client.get("/api/v1/auth/nothing").status_code == 404
    response = client.get("/api/v1/auth/token")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_reader_gets_403_on_admin_endpoint(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "rita", "reader")
    token = _token(function_client("auth"), "rita", password)
    response = function_client("admin").get("/api/v1/admin/users", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert "admin role" in response.get_json()["error"]["message"]


def test_admin_lists_and_creates_users(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "root-admin", "admin")
    auth_header = {"Authorization": f"Bearer {_token(function_client('auth'), 'root-admin', password)}"}
    admin = function_client("admin")
    created = admin.post(
        "/api/v1/admin/users", json={"username": "newbie", "password": "a long enough password", "role": "reader"}, headers=auth_header
    )
    assert created.status_code == 201 and created.get_json()["role"] == "reader"
    again = admin.post("/api/v1/admin/users", json={"username": "NEWBIE", "password": "a long enough password"}, headers=auth_header)
    assert again.status_code == 409
    short = admin.post("/api/v1/admin/users", json={"username": "x2", "password": "short"}, headers=auth_header)
    assert short.status_code == 400 and short.get_json()["error"]["details"]["field"] == "password"
    bad_role = admin.post(
        "/api/v1/admin/users", json={"username": "x3", "password": "a long enough password", "role": "god"}, headers=auth_header
    )
    assert bad_role.status_code == 400 and bad_role.get_json()["error"]["details"]["field"] == "role"
    listed = admin.get("/api/v1/admin/users?limit=1", headers=auth_header).get_json()
    assert len(listed["users"]) == 1 and listed["next_after"] is not None
    second = admin.get(f"/api/v1/admin/users?limit=1&after={listed['next_after']}", headers=auth_header).get_json()
    assert second["users"][0]["username"] == "newbie"
    assert "password_hash" not in second["users"][0]


def test_disabling_a_user_revokes_access(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "boss", "admin")
    create_user(backend_env["DATABASE_URL"], "leaver", "reader", password="leaver password 123")
    auth = function_client("auth")
    boss = {"Authorization": f"Bearer {_token(auth, 'boss', password)}"}
    leaver_token = _token(auth, "leaver", "leaver password 123")
    admin = function_client("admin")
    assert admin.post("/api/v1/admin/users/leaver/disable", headers=boss).status_code == 200
    # A fresh instance has no cache: the disabled user's still-valid token is refused.
    response = function_client("auth").get("/api/v1/auth/me", headers={"Authorization": f"Bearer {leaver_token}"})
    assert response.status_code == 401
    assert admin.post("/api/v1/admin/users/ghost/disable", headers=boss).status_code == 404


def test_flood_gets_429_with_retry_after(function_client, backend_env):
    client = function_client("auth", RATE_LIMIT_PER_IP="5/60", RATE_LIMIT_LOGIN_PER_IP="5/60")
    statuses = [client.get("/api/v1/auth/me").status_code for _ in range(8)]
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429] * 3
    response = client.get("/api/v1/auth/me")
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.get_json()["error"]["code"] == "rate_limited"


def test_per_user_limit_is_separate_from_ip(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "busy", "reader")
    token = _token(function_client("auth"), "busy", password)
    client = function_client("auth", RATE_LIMIT_PER_USER="3/60")
    headers = {"Authorization": f"Bearer {token}"}
    statuses = [client.get("/api/v1/auth/me", headers=headers).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_login_has_its_own_stricter_limit(function_client, backend_env):
    client = function_client("auth", RATE_LIMIT_LOGIN_PER_IP="2/60")
    statuses = [client.post("/api/v1/auth/token", json={"username": "a", "password": "b"}).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]
    assert client.get("/api/v1/auth/me").status_code == 401  # other routes are not affected


def test_cors_allowlist(function_client, backend_env):
    client = function_client("auth", CORS_ALLOWED_ORIGINS="https://console.example")
    ok = client.options("/api/v1/auth/token", headers={"Origin": "https://console.example", "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://console.example"
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    evil = client.options("/api/v1/auth/token", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert evil.status_code == 403
    assert "Access-Control-Allow-Origin" not in evil.headers
    plain = client.get("/api/v1/auth/me", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_oversized_body_is_413(function_client, backend_env):
    client = function_client("auth", MAX_REQUEST_BYTES="2048")
    response = client.post("/api/v1/auth/token", data=b"x" * 5000, content_type="application/json")
    assert response.status_code == 413


def test_health_and_ready(function_client, backend_env):
    client = function_client("admin")
    assert client.get("/health").get_json() == {"status": "ok", "function": "admin"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.get_json()
    assert set(ready.get_json()["checks"]) == {"postgres", "redis", "pubsub", "firestore", "storage"}


def test_ready_names_what_is_down(function_client, backend_env):
    client = function_client("admin", REDIS_URL="redis://127.0.0.1:1/0")
    ready = client.get("/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["down"] == ["redis"]
    assert "redis" in body["error"]["message"]
    assert client.get("/health").status_code == 200


def test_missing_jwt_secret_fails_start_up(function_client, backend_env, monkeypatch):
    monkeypatch.delenv("JWT_SECRET")
    from threatflow.platform.errors import ConfigError

    with pytest.raises(ConfigError, match="JWT_SECRET is not set"):
        function_client("auth")
