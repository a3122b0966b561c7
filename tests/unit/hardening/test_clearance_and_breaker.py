"""TLP clearance helpers, the Redis circuit breaker, and push verification (token mode)."""

import pytest
import redis

from threatflow.adapters.pushauth import PushVerifier
from threatflow.adapters.redis import CircuitBreaker
from threatflow.auth import clearance
from threatflow.platform.errors import AuthError, DependencyError, NotFoundError


def test_clearance_orders_tlp_and_caps_requests():
    assert clearance.allowed("amber") == ["clear", "green", "amber"]
    assert clearance.can_read("amber", "green") and not clearance.can_read("amber", "red")
    assert not clearance.can_read("green", "amber+strict")
    assert clearance.cap("red", "amber") == "amber" and clearance.cap("green", "red") == "green" and clearance.cap(None, "green") == "green"
    assert clearance.sql("tlp", "red") == ("TRUE", {})
    where, params = clearance.sql("tlp", "green")
    assert params == {"clearance_tlps": ["clear", "green"]} and "tlp" in where
    with pytest.raises(NotFoundError):
        clearance.require("amber", "red", what="indicator")
    assert clearance.of(None) == "clear"  # no principal: nothing above clear


def test_breaker_fails_fast_once_open_then_tries_again():
    now = [0.0]
    breaker = CircuitBreaker(open_seconds=5, clock=lambda: now[0])
    calls = []

    def hung():
        calls.append(1)
        raise redis.TimeoutError("Timeout reading from socket")

    with pytest.raises(DependencyError):
        breaker.call(hung)
    assert breaker.is_open
    for _ in range(100):  # known hung: none of these touch Redis
        with pytest.raises(DependencyError, match="skipping"):
            breaker.call(hung)
    assert len(calls) == 1
    now[0] = 6.0  # half-open: one trial
    assert breaker.call(lambda: "pong") == "pong"
    assert not breaker.is_open


def test_login_hashing_keeps_to_its_share_of_the_instance():
    from threatflow.auth.guard import HASH_WINDOW_SECONDS, LoginGuard

    now = [100.0]
    guard = LoginGuard(lockout=None, concurrent_hashes=1, record_event=None, hash_share_percent=25, clock=lambda: now[0])
    spent = 0.0
    while True:  # a burst: hashes of 0.8 s back to back until the budget (25 % of 10 s) is spent
        try:
            with guard.hashing():
                now[0] += 0.8
                spent += 0.8
        except DependencyError as refused:
            assert refused.retry_after >= 1
            break
    assert 2.5 <= spent <= 0.25 * HASH_WINDOW_SECONDS + 0.8
    hashing = 0.0
    began = now[0]
    for _ in range(2000):  # then a flood, one attempt every 50 ms for 100 s
        now[0] += 0.05
        try:
            with guard.hashing():
                now[0] += 0.8
                hashing += 0.8
        except DependencyError:
            pass
    assert hashing / (now[0] - began) <= 0.27  # at most its share of the time, whatever the rate of attempts


def test_push_token_mode_accepts_only_the_configured_secret():
    verifier = PushVerifier("token", token="s3cret-token")
    verifier.verify(authorization=None, query={"token": "s3cret-token"})
    for query in ({}, {"token": ""}, {"token": "s3cret-tokex"}):
        with pytest.raises(AuthError):
            verifier.verify(authorization=None, query=query)


def test_push_without_configuration_is_refused():
    with pytest.raises(AuthError, match="no push authentication"):
        PushVerifier("off").verify(authorization="Bearer x", query={"token": "x"})


def test_oidc_mode_refuses_a_forged_token():
    verifier = PushVerifier("oidc", audience="https://fn.example/", service_account="pusher@p.iam.gserviceaccount.com")
    with pytest.raises(AuthError):
        verifier.verify(authorization=None, query={})
    with pytest.raises(AuthError):
        verifier.verify(authorization="Basic abc", query={})
