"""Every command and option the README's CLI table names exists in the CLI's parser (a command or option only
in the README is a defect), and the choices it lists (`--format stix|csv|txt`, `up | down | status`) are
choices the parser takes. The commands' behaviour has its own tests; this is the table against the parser."""

import argparse
import re
from pathlib import Path

import pytest

from threatflow.cli import models
from threatflow.cli.main import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
_WORDS = re.compile(r"[a-z][a-z-]*(\|[a-z][a-z-]*)+")


def _table_commands() -> list[str]:
    section = README.read_text().split("\n## The CLI\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line[2:].split(" | ", 1)[0]
        for command in re.findall(r"`([^`]+)`", first_cell):
            commands.append(command if command.startswith(("threatflow ", "python ")) else f"threatflow {command}")
    return commands


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _problems(command: str) -> list[str]:
    tokens = command.replace("\\|", "|").split()
    if tokens[0] == "python":  # python ml/train.py: the train arguments `threatflow models train` shares
        chain = [argparse.ArgumentParser()]
        models._train_arguments(chain[0])
        rest = tokens[2:]
    else:
        chain, rest = [build_parser()], tokens[1:]
        while rest and rest[0] in _subcommands(chain[-1]):
            chain.append(_subcommands(chain[-1])[rest[0]])
            rest = rest[1:]
    actions = [a for parser in chain for a in parser._actions]
    by_option = {s: a for a in actions for s in a.option_strings}
    choices = {str(c) for a in chain[-1]._actions if not a.option_strings and a.choices for c in a.choices}
    if len(chain) > 1:
        choices |= set(_subcommands(chain[-2]))  # `users list | disable NAME`: a sibling command
    problems, option = [], None
    for index, raw in enumerate(rest):
        token = raw.strip("[]")
        if re.fullmatch(r"--?[a-z][a-z-]*", token):
            option = by_option.get(token)
            if option is None:
                problems.append(f"{token}: no such option")
            continue
        alternatives = set(token.split("|")) if _WORDS.fullmatch(token) else set()
        if option is not None and alternatives:
            if not alternatives <= {str(c) for c in option.choices or ()}:
                problems.append(f"{option.option_strings[0]} {token}: choices are {option.choices}")
        elif re.fullmatch(r"[a-z][a-z-]*", token) and (index == 0 or rest[index - 1] == "|") and token not in choices:
            problems.append(f"{token}: neither a command nor a choice here ({sorted(choices)})")
        option = None
    return problems


def test_the_cli_table_is_read():
    commands = _table_commands()
    assert len(commands) >= 15
    assert "threatflow whoami" in commands and any(c.startswith("python ml/train.py") for c in commands)


@pytest.mark.parametrize("command", _table_commands())
def test_each_command_and_option_in_the_readme_cli_table_exists(command):
    assert _problems(command) == []


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("threatflow iocs export [--format stix\\|csv\\|yaml]", "--format stix|csv|yaml"),
        ("threatflow iocs find [--since T]", "--since: no such option"),
        ("threatflow devstack up \\| restart", "restart: neither"),
        ("threatflow users list \\| purge NAME", "purge: neither"),
    ],
)
def test_the_check_finds_a_missing_option_choice_or_command(command, problem):
    assert any(p.startswith(problem) for p in _problems(command)), _problems(command)
