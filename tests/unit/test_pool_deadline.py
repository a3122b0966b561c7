"""The pool behind create_engine: a unit of work's wait_seconds bounds its wait for a connection, and only its own.

No PostgreSQL: the pool's own class over a stand-in DBAPI connection. Guards the SQLAlchemy hook the bound rests on
(QueuePool's `_queue_class`): were it renamed, the bound would be silently ignored and a hunting request would wait
the pool's 10 s again.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout

from threatflow.adapters import postgres


def _pool() -> object:
    return postgres._bounded_pool()(lambda: mock.MagicMock(), pool_size=1, max_overflow=0, timeout=10, pre_ping=False)


def test_the_pool_queue_is_the_one_bounded_by_the_deadline() -> None:
    pool = _pool()
    assert type(pool._pool).__name__ == "DeadlineQueue"  # type: ignore[attr-defined]


def test_a_deadline_bounds_the_wait_in_its_context_only() -> None:
    pool = _pool()
    held = pool.connect()  # type: ignore[attr-defined]
    token = postgres._CHECKOUT_ENDS.set(time.monotonic() + 0.05)
    try:
        began = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.connect()  # type: ignore[attr-defined]
        assert time.monotonic() - began < 1  # not the pool's 10 s
        seen: list[float | None] = []
        other = threading.Thread(target=lambda: seen.append(postgres._CHECKOUT_ENDS.get()))
        other.start()
        other.join()
        assert seen == [None]  # another thread (another request) has no deadline
    finally:
        postgres._CHECKOUT_ENDS.reset(token)
    assert postgres._CHECKOUT_ENDS.get() is None
    released = threading.Timer(0.1, held.close)
    released.start()
    pool.connect().close()  # type: ignore[attr-defined]  # no deadline: waits for the connection released
    released.join()


def _deadline_after_a_wait(wait_seconds: float) -> tuple[Any, Any]:
    """A 1 s hunting Deadline on a clock that the pool's checkout moves on by `wait_seconds`, and its engine."""
    import sqlalchemy
    from sqlalchemy import event

    from threatflow.flows import repository

    now = [100.0]
    engine = sqlalchemy.create_engine("sqlite://")
    event.listen(engine, "checkout", lambda *args: now.__setitem__(0, now[0] + wait_seconds))
    return repository.Deadline("host view", budget_ms=1000, clock=lambda: now[0]), engine


def test_a_budget_spent_mostly_in_the_pool_queue_is_a_503_even_when_a_statement_runs_it_out() -> None:
    """The request waited 0.9 s of its 1 s for a connection: what ran out is the instance's capacity, not the window
    the analyst asked for, so the answer is the 503 to retry, not the 400 "narrow from/to"."""
    from threatflow.platform.errors import DependencyError, ValidationError

    deadline, engine = _deadline_after_a_wait(0.9)
    with deadline.unit_of_work(engine):
        assert isinstance(deadline.exceeded(), DependencyError)
    quick, engine = _deadline_after_a_wait(0.05)
    with quick.unit_of_work(engine):
        assert isinstance(quick.exceeded(), ValidationError)
