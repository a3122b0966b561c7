"""Which flow-ingest message runs a job (ingest_jobs.superseded): the job records the live continuation's number and
token after publishing it, so a number above the job's is current and a token tells two copies of one number apart."""

import json

import pytest

from threatflow.flows import ingest_jobs

LIVE = "a" * 32
OTHER = "b" * 32


@pytest.mark.parametrize(
    ("job", "continuation", "token", "stale"),
    [
        ({}, 0, None, False),  # the upload's own message on a new job
        ({"continuation": 0}, 0, None, False),  # ... redelivered before any continuation
        ({"continuation": 0}, 1, OTHER, False),  # a continuation whose record was never written
        ({"continuation": 2, "continuation_token": LIVE}, 3, OTHER, False),  # the same, further on
        ({"continuation": 2, "continuation_token": LIVE}, 2, LIVE, False),  # the live message (or a copy of it)
        ({"continuation": 2}, 2, None, False),  # a job and message from before tokens
        ({"continuation": 1}, 0, None, True),  # the upload's message after a continuation
        ({"continuation": 2, "continuation_token": LIVE}, 1, OTHER, True),
        ({"continuation": 2, "continuation_token": LIVE}, 2, OTHER, True),  # published twice: the recorded copy wins
        ({"continuation": 2, "continuation_token": LIVE}, 2, None, True),
    ],
)
def test_a_message_is_superseded_by_a_higher_recorded_number_or_another_recorded_token(job, continuation, token, stale):
    reason = ingest_jobs.superseded(job, continuation=continuation, token=token)
    assert (reason is not None) == stale, reason


def test_the_job_message_carries_the_token_when_there_is_one():
    data, attributes = ingest_jobs.job_message("f" * 32, 3, LIVE)
    assert attributes == {"job_id": "f" * 32}
    assert json.loads(data) == {"schema_version": 1, "job_id": "f" * 32, "continuation": 3, "continuation_token": LIVE}
    assert "continuation_token" not in json.loads(ingest_jobs.job_message("f" * 32, 0, None)[0])
