"""The flow-ingest worker's constants against the manifest that deploys it: the attempt it treats as
the last is the subscription's last, its continuations go to its own topic, and its time budget leaves
a batch's worth of room under the function's timeout."""

from threatflow.flows import handlers, ingest_jobs
from threatflow.platform.config import Settings
from threatflow.platform.manifest import load_manifest


def test_the_last_attempt_and_the_continuation_topic_are_the_manifests():
    manifest = load_manifest()
    [push] = [s for s in manifest.subscriptions.values() if s.push_to == "flow-ingest"]
    assert push.dead_letter_topic and push.max_delivery_attempts == handlers.MAX_DELIVERY_ATTEMPTS
    assert manifest.functions["flow-ingest"].topic == push.topic == handlers.INGEST_TOPIC


def test_the_delivery_budget_stays_well_under_the_timeout():
    function = load_manifest().functions["flow-ingest"]
    budget = Settings.from_env(dict(function.env)).flow_ingest_delivery_seconds
    assert budget == Settings.from_env({}).flow_ingest_delivery_seconds == 420
    assert budget + 60 <= function.timeout_seconds  # a batch, the continuation and the ack fit after the budget
    # A live delivery renews its lease every quarter of it (before a batch is stored): a batch and a renewal fit
    # in the rest, and a dead one's job is free well before the subscription's backoff has spent its attempts.
    assert handlers.LEASE_SECONDS == 120
    assert function.timeout_seconds > handlers.LEASE_SECONDS
    assert handlers.MAX_CONTINUATIONS * handlers.BATCH_ROWS >= handlers.MAX_LINES


def test_the_stall_age_outlasts_a_live_delivery():
    """recover-stalled-flow-ingest-jobs measures a stall from the worker's lease and the manifest's timeout."""
    function = load_manifest().functions["flow-ingest"]
    assert function.timeout_seconds == ingest_jobs.FUNCTION_TIMEOUT_SECONDS
    assert handlers.LEASE_SECONDS + function.timeout_seconds == ingest_jobs.STALL_SECONDS
