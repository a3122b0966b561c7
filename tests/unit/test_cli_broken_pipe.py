"""`threatflow ... | head` is how output gets skimmed: a reader that stops early must not make the CLI print a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_output_into_a_closed_pipe_ends_quietly_with_sigpipes_status() -> None:
    """`threatflow api GET /api/v1/iocs/policies | head -12` and `threatflow devstack status | head -2` printed
    'BrokenPipeError: [Errno 32] Broken pipe' with a traceback once head had its lines. Here the pipe's read end is
    closed before the CLI writes anything, so its first write fails, as a late one does behind head."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from threatflow.cli.main import main; sys.argv[0] = 'threatflow'; main()", "jobs", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO / "shared")},
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141  # 128 + SIGPIPE, what a shell reports for any program stopped by a closed pipe
