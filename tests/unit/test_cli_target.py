"""Which server the CLI talks to, and which token it sends there.

THREATFLOW_URL and THREATFLOW_TOKEN set together (as the e2e tests and scripts do) used to send the token to the
stored login's server instead: the stored URL won over the variable, while the variable's token won over the stored
one. A login stored by another stack on this machine made the e2e CLI test reach that stack, with this one's token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def stored_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from threatflow.cli import main

    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"url": "http://127.0.0.1:18931", "access_token": "stored-token"}))
    monkeypatch.setattr(main, "CREDENTIALS", path)
    for name in ("THREATFLOW_URL", "THREATFLOW_TOKEN", "THREATFLOW_PORT"):
        monkeypatch.delenv(name, raising=False)
    return path


def _target(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[str, str | None]:
    from threatflow.cli import main

    seen: list[tuple[str, str | None]] = []

    def request(method: str, url: str, *, token: str | None, body: object = None, raw: bool = False) -> tuple[int, object]:
        seen.append((url, token))
        return 200, {}

    monkeypatch.setattr(main, "_request", request)
    with pytest.raises(SystemExit):
        main.main(["api", "GET", "/api/v1/auth/me", *argv])
    return seen[0]


def test_the_environment_names_the_server_and_its_token_over_a_stored_login(stored_login, monkeypatch) -> None:
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:5555")
    monkeypatch.setenv("THREATFLOW_TOKEN", "env-token")
    assert _target(monkeypatch) == ("http://127.0.0.1:5555/api/v1/auth/me", "env-token")


def test_a_stored_token_goes_only_to_the_server_that_issued_it(stored_login, monkeypatch) -> None:
    assert _target(monkeypatch) == ("http://127.0.0.1:18931/api/v1/auth/me", "stored-token")
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:5555")
    assert _target(monkeypatch) == ("http://127.0.0.1:5555/api/v1/auth/me", None)  # another server: no stored token


def test_the_environment_token_goes_only_to_the_environment_server(stored_login, monkeypatch) -> None:
    """THREATFLOW_URL and THREATFLOW_TOKEN exported together (scripts, the e2e tests) name one server and its token:
    `--url` naming another server sent that token there too. Another server gets no token, or the stored login's if
    it is the server that issued it."""
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:5555")
    monkeypatch.setenv("THREATFLOW_TOKEN", "env-token")
    assert _target(monkeypatch, "--url", "http://127.0.0.1:5555/") == ("http://127.0.0.1:5555/api/v1/auth/me", "env-token")
    assert _target(monkeypatch, "--url", "http://198.51.100.7:8080") == ("http://198.51.100.7:8080/api/v1/auth/me", None)
    assert _target(monkeypatch, "--url", "http://127.0.0.1:18931") == ("http://127.0.0.1:18931/api/v1/auth/me", "stored-token")
    monkeypatch.delenv("THREATFLOW_URL")  # a token alone names no server: it goes wherever the command is pointed
    assert _target(monkeypatch, "--url", "http://198.51.100.7:8080") == ("http://198.51.100.7:8080/api/v1/auth/me", "env-token")


def _running_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway_url: str, pid: int) -> None:
    from threatflow.devstack.stack import StackState

    state_dir = tmp_path / "devstack"
    state_dir.mkdir()
    StackState(supervisor_pid=pid, gateway_url=gateway_url, env={}).write(state_dir)
    monkeypatch.setenv("THREATFLOW_STATE_DIR", str(state_dir))


def test_without_a_login_or_a_variable_the_client_talks_to_the_running_stack(tmp_path, monkeypatch) -> None:
    """README, "The local stack": `make run` in terminal 1 (on THREATFLOW_PORT when 8080 is taken), then
    `threatflow login alice` in terminal 2. The client went to 127.0.0.1:8080 whatever port the stack served on
    ("cannot reach the API at http://127.0.0.1:8080"), or to another stack holding 8080, while `threatflow jobs run`
    and the operator commands found the running stack by its state folder."""
    import os

    from threatflow.cli import main

    monkeypatch.setattr(main, "CREDENTIALS", tmp_path / "no-login.json")
    for name in ("THREATFLOW_URL", "THREATFLOW_TOKEN", "THREATFLOW_PORT"):
        monkeypatch.delenv(name, raising=False)
    _running_stack(tmp_path, monkeypatch, "http://127.0.0.1:18432", os.getpid())
    assert _target(monkeypatch) == ("http://127.0.0.1:18432/api/v1/auth/me", None)
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:5555")  # a variable still wins
    assert _target(monkeypatch) == ("http://127.0.0.1:5555/api/v1/auth/me", None)


def test_a_stopped_stacks_state_is_not_followed(tmp_path, monkeypatch) -> None:
    from threatflow.cli import main

    monkeypatch.setattr(main, "CREDENTIALS", tmp_path / "no-login.json")
    for name in ("THREATFLOW_URL", "THREATFLOW_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("THREATFLOW_PORT", "18433")
    _running_stack(tmp_path, monkeypatch, "http://127.0.0.1:18432", 2**22 + 12345)  # above pid_max: no such process
    assert _target(monkeypatch) == ("http://127.0.0.1:18433/api/v1/auth/me", None)
