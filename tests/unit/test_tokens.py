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


# -- the per-process cache of verified tokens (tokens.VerifiedTokens) ------------------------------


class _Counted:
    """The real check, counted: how many tokens were verified in full rather than served from the cache."""

    def __init__(self):
        self.calls = 0

    def __call__(self, token):
        self.calls += 1
        return tokens.verify_claims(token, config=CONFIG)


def _cache(check, *, clock, ttl=30.0, size=1024):
    return tokens.VerifiedTokens(config=CONFIG, ttl_seconds=ttl, max_entries=size, clock=clock, check=check)


def test_cache_serves_a_verified_token_until_its_ttl():
    now = [datetime.now(UTC).timestamp()]
    check = _Counted()
    cache = _cache(check, clock=lambda: now[0], ttl=30)
    token, _ = tokens.issue(ALICE, config=CONFIG, now=datetime.now(UTC))
    assert [cache.verify(token) for _ in range(3)] == [ALICE] * 3
    assert check.calls == 1
    now[0] += 29.9
    assert cache.verify(token) == ALICE and check.calls == 1
    now[0] += 0.1
    assert cache.verify(token) == ALICE and check.calls == 2  # the ttl is up: verified again


def test_cached_token_is_never_served_past_its_exp():
    real = datetime.now(UTC)
    token, _ = tokens.issue(ALICE, config=CONFIG, now=real - timedelta(seconds=600 - 5))  # exp in 5 s
    exp = int(jwt.decode(token, options={"verify_signature": False})["exp"])
    now = [real.timestamp()]
    check = _Counted()
    cache = _cache(check, clock=lambda: now[0], ttl=3600)  # the ttl alone would keep it an hour
    cache.verify(token)
    now[0] = exp - 0.01
    cache.verify(token)
    assert check.calls == 1
    now[0] = float(exp)
    cache.verify(token)  # PyJWT's 10 s leeway still accepts it (real time), but not from the cache
    assert check.calls == 2 and len(cache) == 0  # and an entry born at or after exp is not kept


def test_a_tampered_token_is_never_served_from_the_cache():
    now = [datetime.now(UTC).timestamp()]
    check = _Counted()
    cache = _cache(check, clock=lambda: now[0])
    token, _ = tokens.issue(ALICE, config=CONFIG, now=datetime.now(UTC))
    assert cache.verify(token) == ALICE
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    elevated = f"{header}.{_b64({**claims, 'role': 'admin'})}.{signature}"  # same signature, other claims
    resigned = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    for forged in (elevated, resigned, token + "x"):
        with pytest.raises(AuthError, match="invalid token"):
            cache.verify(forged)
    assert check.calls == 4 and len(cache) == 1  # each forgery verified in full, none remembered


def test_failures_are_not_cached():
    check = _Counted()
    cache = _cache(check, clock=lambda: datetime.now(UTC).timestamp())
    expired, _ = tokens.issue(ALICE, config=CONFIG, now=datetime.now(UTC) - timedelta(hours=2))
    for _ in range(2):
        with pytest.raises(AuthError, match="expired"):
            cache.verify(expired)
    assert check.calls == 2 and len(cache) == 0


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    now = [datetime.now(UTC).timestamp()]
    check = _Counted()
    cache = _cache(check, clock=lambda: now[0], size=3)
    users = [Principal(user_id=i, username=f"u{i}", role=Role.READER) for i in range(5)]
    issued = [tokens.issue(user, config=CONFIG, now=datetime.now(UTC))[0] for user in users]
    for token in issued[:3]:
        cache.verify(token)
    cache.verify(issued[0])  # u0 is now the most recently used
    for token in issued[3:]:
        cache.verify(token)
    assert len(cache) == 3 and check.calls == 5
    cache.verify(issued[0])
    assert check.calls == 5  # kept: recently used
    cache.verify(issued[1])
    assert check.calls == 6  # evicted: least recently used
