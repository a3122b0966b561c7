"""The garbage collector, tuned once per process for request work.

A flow batch allocates hundreds of thousands of short-lived objects (a dict per flow, a float per
cell). With CPython's default thresholds (700, 10, 10) that set off about 12 young collections and
a full one per 5,000-flow batch, each full one walking every object the process holds (modules,
the model's predictors): ~13 us of collector time per ingested flow, a tenth of the gateway's CPU
per flow. Nearly all of it is freed by reference counting anyway; the collector is only for cycles.

- `gc.freeze()` once, at wiring time: what is alive then (imported modules, classes, settings)
  lives as long as the process, so collections stop walking it (and forked workers keep sharing
  those pages: a collection writes to every object it visits).
- A young generation of 20,000 allocations instead of 700: cycles wait a little longer, bounded
  by the batch size, and full collections come about 500 times less often.

Measured in `tests/perf/bench_ingest.py` (README): gateway CPU per flow 131-134 -> 112-113 us.
"""

from __future__ import annotations

import gc
import threading

YOUNG_THRESHOLD = 20_000
OLDER_THRESHOLDS = (20, 20)

_lock = threading.Lock()
_tuned = False


def tune() -> None:
    """Freeze what is alive now and raise the thresholds; only the first call in a process acts
    (a later freeze would make whatever garbage then exists immortal). No collection first: it
    would cost a cold start ~30 ms to free the ~40 objects that imports leave."""
    global _tuned  # noqa: PLW0603 - the collector is process-wide by nature
    with _lock:
        if _tuned:
            return
        _tuned = True
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def keep_defaults() -> None:
    """Never tune this process. For one that builds runtimes by the hundred and drops them (the test
    suite): a dropped engine's pooled connections close when the collector frees it, and with full
    collections ~100x rarer they piled up to PostgreSQL's max_connections ("too many clients")."""
    global _tuned  # noqa: PLW0603 - the collector is process-wide by nature
    with _lock:
        _tuned = True
