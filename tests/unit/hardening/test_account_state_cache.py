"""The per-instance cache of account state on reads (auth.service.ActiveUserCheck): what it delays and what not."""

from threatflow.auth import service
from threatflow.auth.model import Principal, Role
from threatflow.auth.repository import SecurityState


def test_a_lowered_clearance_reaches_writes_at_once_and_reads_within_the_30_s_cache(monkeypatch):
    """A red reader lowered to green still read red IoCs from an instance that had cached their state, until it
    expired (README, "Disabled means disabled"): as a disable does. A write or admin request (strict) reads the
    state on each request and sees green at once."""
    clock = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: clock[0])
    state = {"clearance": "red"}
    check = service.ActiveUserCheck(lambda user_id: SecurityState(False, Role.READER, state["clearance"], 3))
    token = Principal(7, "lowered", Role.READER, "red", 3)

    assert check(token, strict=False).clearance == "red"  # now cached
    state["clearance"] = "green"  # PATCH clearance: no version bump, the token stays valid
    assert check(token, strict=True).clearance == "green"
    clock[0] += 29.0
    # The strict read above refreshed the cache: a read after it sees green too.
    assert check(token, strict=False).clearance == "green"

    state["clearance"] = "red"
    clock[0] += 31.0
    assert check(token, strict=False).clearance == "red"  # expired: read again, cached
    state["clearance"] = "green"
    clock[0] += 29.0
    assert check(token, strict=False).clearance == "red"  # within the window: the cached clearance
    clock[0] += 1.5
    assert check(token, strict=False).clearance == "green"  # past 30 s: read again
