"""enrichment-tasks messages as the worker reads them (Task.from_json): a malformed field is a permanent
ValidationError, which handle_task dead-letters on its first delivery, never an exception it retries."""

from __future__ import annotations

import math

import pytest

from threatflow.enrichment.tasks import Task
from threatflow.platform.errors import ValidationError

BASE = {"run_id": "r1", "ioc_id": 7, "ioc_type": "ipv4", "value": "185.220.101.7", "source": "abuseipdb", "force": True}


def test_a_task_keeps_its_requested_at_and_an_older_message_has_none():
    assert Task.from_json({**BASE, "requested_at": 1_790_000_000.25}).requested_at == 1_790_000_000.25
    assert Task.from_json({**BASE, "requested_at": 1_790_000_000}).requested_at == 1_790_000_000.0
    assert Task.from_json(BASE).requested_at is None
    assert Task.from_json({**BASE, "requested_at": None}).requested_at is None
    task = Task.from_json({**BASE, "requested_at": 1_790_000_000.5})
    assert Task.from_json(Task(**{**task.to_json(), "deferrals": 1}).to_json()) == Task(**{**task.to_json(), "deferrals": 1})


@pytest.mark.parametrize(
    "bad",
    [
        "abc",  # float() raised ValueError: retried to the dead letter
        "1790000000",  # a string is not a time the dispatcher writes
        [1],  # TypeError
        {},
        math.nan,  # json.loads accepts NaN; datetime.fromtimestamp then raised ValueError inside the worker
        math.inf,  # OverflowError inside the worker
        -math.inf,
        1e300,
        -1e300,
        1e15,  # a year past datetime's range: ValueError inside the worker
        True,  # float(True) is 1.0: a forced task "requested" in 1970 took any cached answer, however old
        0,
        -5.0,
    ],
)
def test_a_malformed_requested_at_is_a_validation_error(bad):
    with pytest.raises(ValidationError) as raised:
        Task.from_json({**BASE, "requested_at": bad})
    assert raised.value.field == "requested_at"


@pytest.mark.parametrize("bad", ["soon", [1], math.nan, math.inf, 1e300, True, 0, -1.0])
def test_a_malformed_not_before_is_a_validation_error(bad):
    """not_before (a deferred task's due time) was read with the same bare float(): text was retried to the
    dead letter, NaN made the task due at once."""
    with pytest.raises(ValidationError) as raised:
        Task.from_json({**BASE, "not_before": bad})
    assert raised.value.field == "not_before"


@pytest.mark.parametrize("bad", ["two", 1.5, -1, True, [2]])
def test_a_malformed_deferrals_count_is_a_validation_error(bad):
    with pytest.raises(ValidationError) as raised:
        Task.from_json({**BASE, "deferrals": bad})
    assert raised.value.field == "deferrals"


def test_a_deferred_task_round_trips():
    task = Task.from_json({**BASE, "not_before": 1_790_000_100.5, "deferrals": 3, "reasons": ["quota"]})
    assert (task.not_before, task.deferrals) == (1_790_000_100.5, 3)
    assert Task.from_json(task.to_json()) == task
    assert Task.from_json({**BASE, "deferrals": None}).deferrals == 0
