import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from threatflow.auth import tokens
from threatflow.auth.model import Principal, Role
from threatflow.platform.config import Settings
from threatflow.platform.errors import AuthError, ConfigError

CONFIG = tokens.TokenSettings(secret="s" * 48, audience="threatflow-api", issuer="threatflow", ttl_seconds=600)
ALICE = Principal(user_id=7, username="alice", role=Role.ANALYST)


def _b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_round_trip_carries_claims():
    token, expires_in = tokens.issue(ALICE, config=CONFIG, now=datetime.now(UTC))
    assert expires_in == 600
    claims = jwt.decode(token, CONFIG.secret, algorithms=["HS256"], audience="threatflow-api")
    assert {"exp", "iat", "sub", "role"} <= claims.keys()
    assert claims["sub"] == "alice" and claims["role"] == "analyst"
    assert tokens.verify(token, config=CONFIG) == ALICE


def test_alg_none_is_rejected():
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": "alice", "role": "admin", "iat": now, "exp": now + 600, "aud": "threatflow-api", "iss": "threatflow", "uid": 1}
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(AuthError, match="invalid token"):
        tokens.verify(forged, config=CONFIG)


def test_expired_is_rejected():
    token, _ = tokens.issue(ALICE, config=CONFIG, now=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(token, config=CONFIG)


def test_tampered_payload_is_rejected():
    token, _ = tokens.issue(ALICE, config=CONFIG, now=datetime.now(UTC))
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    with pytest.raises(AuthError, match="invalid token"):
        tokens.verify(f"{header}.{_b64(claims)}.{signature}", config=CONFIG)


def test_other_key_is_rejected():
    other = tokens.TokenSettings(secret="t" * 48, audience="threatflow-api", issuer="threatflow", ttl_seconds=600)
    token, _ = tokens.issue(ALICE, config=other, now=datetime.now(UTC))
    with pytest.raises(AuthError, match="invalid token"):
        tokens.verify(token, config=CONFIG)


def test_wrong_audience_is_rejected():
    other = tokens.TokenSettings(secret=CONFIG.secret, audience="another-api", issuer="threatflow", ttl_seconds=600)
    token, _ = tokens.issue(ALICE, config=other, now=datetime.now(UTC))
    with pytest.raises(AuthError, match="another audience"):
        tokens.verify(token, config=CONFIG)


def test_wrong_issuer_is_rejected():
    other = tokens.TokenSettings(secret=CONFIG.secret, audience="threatflow-api", issuer="someone-else", ttl_seconds=600)
    token, _ = tokens.issue(ALICE, config=other, now=datetime.now(UTC))
    with pytest.raises(AuthError, match="invalid token"):
        tokens.verify(token, config=CONFIG)


def test_missing_role_claim_is_rejected():
    now = int(datetime.now(UTC).timestamp())
    token = jwt.encode(
        {"sub": "alice", "iat": now, "exp": now + 60, "aud": "threatflow-api", "iss": "threatflow"}, CONFIG.secret, algorithm="HS256"
    )
    with pytest.raises(AuthError, match="role"):
        tokens.verify(token, config=CONFIG)


def test_unknown_role_is_rejected():
    now = int(datetime.now(UTC).timestamp())
    token = jwt.encode(
        {"sub": "alice", "role": "root", "iat": now, "exp": now + 60, "aud": "threatflow-api", "iss": "threatflow"},
        CONFIG.secret,
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match="bad role"):
        tokens.verify(token, config=CONFIG)


def test_settings_without_secret_fail_fast():
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        tokens.TokenSettings.from_settings(Settings.from_env({}))


def test_role_order():
    assert Role.ADMIN.allows(Role.READER)
    assert Role.ANALYST.allows(Role.ANALYST)
    assert not Role.READER.allows(Role.ANALYST)
