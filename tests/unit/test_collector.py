"""The garbage collector's process-wide tuning (threatflow.platform.collector).

Each check runs in a fresh interpreter: the tuning is process-wide and acts once, so the test
process's own state would say nothing (and conftest keeps it untuned)."""

import subprocess
import sys
import textwrap

_PREAMBLE = """
import gc
from threatflow.platform import collector
from threatflow.platform.config import Settings
from threatflow.runtime import Runtime
"""


def _run_fresh(body: str) -> None:
    """Run `body` after _PREAMBLE in a new interpreter; its asserts must hold and it must reach the end."""
    script = _PREAMBLE + textwrap.dedent(body) + '\nprint("ok")\n'
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_a_runtime_tunes_the_collector_once_per_process():
    _run_fresh(
        """
        assert gc.get_threshold() == (700, 10, 10), gc.get_threshold()
        Runtime(Settings.from_env())
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, *collector.OLDER_THRESHOLDS), gc.get_threshold()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, frozen  # the imported modules' objects
        Runtime(Settings.from_env())  # a second runtime: no second freeze
        assert gc.get_freeze_count() == frozen
        """
    )


def test_a_process_that_keeps_the_defaults_is_never_tuned():
    _run_fresh(
        """
        collector.keep_defaults()
        Runtime(Settings.from_env())
        assert gc.get_threshold() == (700, 10, 10), gc.get_threshold()
        assert gc.get_freeze_count() == 0, gc.get_freeze_count()
        """
    )
