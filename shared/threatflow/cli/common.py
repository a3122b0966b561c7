"""What the CLI's command modules share: the environment of a running local stack, settings, the engine."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def with_stack_env() -> None:
    """Fills in the environment of a running local stack where the shell has none of its own."""
    from threatflow.devstack.stack import stack_env

    for key, value in stack_env().items():
        os.environ.setdefault(key, value)


def settings() -> Any:
    from threatflow.platform.config import Settings

    with_stack_env()
    return Settings.from_env()


def engine() -> Any:
    from threatflow.adapters.postgres import create_engine

    return create_engine(settings())


def http_error(status: int, payload: Any) -> int:
    """An API error as one line: its `error` object as JSON (what `threatflow api` prints); the exit status, 1."""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    print(f"error: HTTP {status}: {json.dumps(error) if not isinstance(error, str) else error}", file=sys.stderr)
    return 1
