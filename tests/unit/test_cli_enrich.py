"""`threatflow enrich`'s table names each run, so its record can be followed (`GET /api/v1/enrichment/runs/{id}`).

`--no-wait` says "print the run ids and exit", and the README's next step reads a run by its id, but the table
printed VERDICT, SCORE, TYPE and VALUE only: with --no-wait, a column of `running` and no id to follow."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from threatflow.cli import enrich


def _api(calls: list[tuple[str, str]]) -> Any:
    """The API's answers to one batch of two values, the second already cached."""
    runs = [
        {"run_id": "a" * 32, "ioc_id": 1, "type": "ipv4", "value": "198.51.100.7", "status": "running"},
        {
            "run_id": "b" * 32,
            "ioc_id": 2,
            "type": "domain",
            "value": "evil.example.net",
            "status": "done",
            "verdict": "unknown",
            "cached": True,
        },
    ]

    def call(method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        calls.append((method, path))
        if path == "/api/v1/enrichment/batch":
            return 202, {"batch_id": "c" * 32, "runs": runs}
        return 200, {"batch_id": "c" * 32, "done": 2, "runs": [{**r, "status": "done", "verdict": "unknown"} for r in runs]}

    return call


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    enrich.add_parser(parser.add_subparsers(), lambda a: 0)
    return parser.parse_args(["enrich", "198.51.100.7", "evil.example.net", *extra])


def test_no_wait_prints_each_run_id_and_how_to_follow_the_batch(capsys) -> None:
    calls: list[tuple[str, str]] = []
    assert enrich.run(_args("--no-wait"), _api(calls)) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[-1]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert "a" * 32 in rows["198.51.100.7"] and "b" * 32 in rows["evil.example.net"], out
    assert "/api/v1/enrichment/batches/" + "c" * 32 in err
    assert calls == [("POST", "/api/v1/enrichment/batch")]  # no waiting


def test_the_table_names_each_run_after_waiting_too(capsys) -> None:
    assert enrich.run(_args(), _api([])) == 0
    out, _ = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.split() == ["VERDICT", "SCORE", "TYPE", "RUN", "VALUE"]
    assert [row.split()[-2:] for row in rows if row.strip()] == [["a" * 32, "198.51.100.7"], ["b" * 32, "evil.example.net"]]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_file_that_cannot_be_read_is_an_error_line_not_a_traceback(kind: str, tmp_path, monkeypatch, capsys) -> None:
    """`threatflow enrich --file F` read F with Path.read_text and let FileNotFoundError / IsADirectoryError through:
    a traceback instead of `error: ...` naming the file, and no call made either way."""
    from threatflow.cli import main

    monkeypatch.setattr(main, "CREDENTIALS", tmp_path / "no-login.json")
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("THREATFLOW_TOKEN", "t")
    monkeypatch.setattr(main, "_request", lambda *a, **k: pytest.fail("no call for a file that cannot be read"))
    path = tmp_path / "iocs.txt"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(SystemExit) as exit_:
        main.main(["enrich", "--file", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("encoded", "suffix"),
    [
        ("\ufeff198.51.100.7\r\nevil.example.net\r\n".encode(), ".txt"),  # Notepad's UTF-8 with a BOM
        ("198.51.100.7\r\nevil.example.net\r\n".encode("utf-16"), ".txt"),  # Excel's "Unicode text"
        (__import__("gzip").compress(b"198.51.100.7\nevil.example.net\n"), ".txt.gz"),  # a feed dump
    ],
    ids=["utf8-bom", "utf16", "gzip"],
)
def test_a_file_is_read_as_iocs_import_reads_it(encoded: bytes, suffix: str, tmp_path) -> None:
    """`threatflow enrich --file` read the file as UTF-8 text itself, while the README says it takes what the import
    takes: a BOM stayed on the first value ("\\ufeff198.51.100.7" was rejected as a malformed domain), UTF-16 and a
    .gz dump became replacement characters. It now reads it as `threatflow iocs import` does (read_document)."""
    path = tmp_path / f"iocs{suffix}"
    path.write_bytes(encoded)
    sent: list[Any] = []

    def call(method: str, path_: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        sent.append(body)
        return 202, {"batch_id": "c" * 32, "runs": []}

    parser = argparse.ArgumentParser()
    enrich.add_parser(parser.add_subparsers(), lambda a: 0)
    enrich.run(parser.parse_args(["enrich", "--file", str(path), "--no-wait"]), call)
    assert [item["value"] for item in sent[0]["iocs"]] == ["198.51.100.7", "evil.example.net"]


def test_the_format_the_error_asks_for_can_be_named(tmp_path, monkeypatch, capsys) -> None:
    """A .json file that is no JSON was refused with "name the format with --format", and `threatflow enrich`
    had no --format (argparse: unrecognized arguments): the advice could not be followed."""
    from threatflow.cli import main

    path = tmp_path / "report.json"
    path.write_text("seen 198.51.100.7 talking to evil-domain.com today\n")
    sent: list[Any] = []

    def request(method: str, url: str, *, token: str | None, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        sent.append(body)
        return 202, {"batch_id": "c" * 32, "runs": []}

    monkeypatch.setattr(main, "CREDENTIALS", tmp_path / "no-login.json")
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(main, "_request", request)
    with pytest.raises(SystemExit) as refused:
        main.main(["enrich", "--file", str(path)])
    assert refused.value.code == 2 and "--format" in capsys.readouterr().err and not sent
    with pytest.raises(SystemExit) as done:
        main.main(["enrich", "--file", str(path), "--format", "text", "--no-wait"])
    assert done.value.code == 0
    assert [item["value"] for item in sent[0]["iocs"]] == ["198.51.100.7", "evil-domain.com"]


def test_a_run_closed_as_never_dispatched_is_noted_with_its_reason(capsys) -> None:
    """A batch run whose request never reached enrich-dispatch is closed `never dispatched` (its batch answer has
    no source skipped, and a `reason`): the note read "no source was asked: no source is configured"."""
    reason = "never dispatched: not started after its request was published again 2 times, 1800 s apart"

    def call(method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        run = {"run_id": "a" * 32, "ioc_id": 1, "type": "ipv4", "value": "198.51.100.7", "status": "running"}
        if path == "/api/v1/enrichment/batch":
            return 202, {"batch_id": "c" * 32, "runs": [run]}
        closed = {**run, "status": "done", "verdict": "unknown", "score": None, "skipped": {}, "reason": reason}
        return 200, {"batch_id": "c" * 32, "done": 1, "runs": [closed]}

    args = argparse.ArgumentParser()
    enrich.add_parser(args.add_subparsers(), lambda a: 0)
    assert enrich.run(args.parse_args(["enrich", "198.51.100.7"]), call) == 0
    err = capsys.readouterr().err
    assert f"note: 198.51.100.7: {reason}" in err and "no source is configured" not in err, err


@pytest.mark.parametrize("content", ["not json", "[" * 100_000], ids=["not-json", "nested-past-the-decoder"])
def test_a_file_named_json_that_is_not_is_an_error_line_not_a_traceback(content: str, tmp_path, monkeypatch, capsys) -> None:
    """`threatflow enrich --file F --format json` (or stix, misp) decoded F with json.loads itself: a JSONDecodeError
    or RecursionError traceback, where `threatflow iocs import` and the API answer an error naming the format."""
    from threatflow.cli import main

    monkeypatch.setattr(main, "CREDENTIALS", tmp_path / "no-login.json")
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("THREATFLOW_TOKEN", "t")
    monkeypatch.setattr(main, "_request", lambda *a, **k: pytest.fail("no call for a file that cannot be read"))
    path = tmp_path / "iocs.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        main.main(["enrich", "--file", str(path), "--format", "json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: json: ") and "Traceback" not in err, err
