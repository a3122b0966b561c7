"""The enrichment context lives on its runtime: one per runtime, and nothing keeps a dropped runtime alive."""

from __future__ import annotations

import gc
import weakref

from threatflow.enrichment import handlers
from threatflow.platform.config import Settings
from threatflow.runtime import Runtime


def test_one_context_per_runtime_and_a_dropped_runtime_is_freed():
    first, second = Runtime(Settings.from_env({})), Runtime(Settings.from_env({}))
    context = handlers.context(first)
    assert handlers.context(first) is context and context.runtime is first
    assert handlers.context(second) is not context and handlers.context(second).runtime is second
    # A module-level cache keyed by runtime kept every runtime alive with its connection pools; the test
    # suite builds one per test and ran PostgreSQL out of connections.
    dropped = weakref.ref(first)
    del first, context
    gc.collect()
    assert dropped() is None
