"""What the CLI's command modules share: the environment of a running local stack, settings, the engine."""

from __future__ import annotations

import os
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
