"""The CLI's errors are one `error: ...` line and an exit status, never a traceback, and name what was wrong."""

from __future__ import annotations

import json

import pytest

from threatflow.cli import main


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A CLI pointed at a server it must not call: the file in question is refused first."""
    monkeypatch.setattr(main, "CREDENTIALS", tmp_path / "no-login.json")
    monkeypatch.setenv("THREATFLOW_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("THREATFLOW_TOKEN", "t")
    monkeypatch.setattr(main, "_request", lambda *a, **k: pytest.fail("no call for a file that cannot be read"))
    return tmp_path


def _exit_and_err(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_iocs_extract_of_a_file_that_cannot_be_read_is_an_error_line(kind, offline, capsys):
    """`threatflow iocs extract FILE` read FILE with Path.read_text: a missing file or a directory was a traceback."""
    path = offline / "report.txt"
    if kind == "directory":
        path.mkdir()
    code, err = _exit_and_err(["iocs", "extract", str(path)], capsys)
    assert code == 2 and err.startswith("error: ") and str(path) in err and "Traceback" not in err, err


@pytest.mark.parametrize("kind", ["missing", "not-json"])
def test_api_data_from_a_file_that_cannot_be_read_or_is_not_json_is_an_error_line(kind, offline, capsys):
    """`threatflow api POST PATH --data @FILE`: a missing file was a FileNotFoundError traceback, a file (or a
    --data string) that is not JSON a JSONDecodeError traceback."""
    path = offline / "body.json"
    if kind == "not-json":
        path.write_text("{'iocs': [1,]}")
    code, err = _exit_and_err(["api", "POST", "/api/v1/iocs/batch", "--data", f"@{path}"], capsys)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert str(path) in err if kind == "missing" else "not JSON" in err


def test_enrich_prints_an_api_error_as_json_and_trims_spaced_source_names(capsys):
    """`threatflow enrich` printed an API error as a Python dict (single quotes, not what `threatflow api` shows), and
    `--sources "abuseipdb, urlhaus"` sent " urlhaus", refused as an unknown source."""
    import argparse

    from threatflow.cli import enrich

    sent = []

    def call(method, path, body=None, raw=False):
        sent.append(body)
        return 400, {"error": {"code": "validation_error", "message": "unknown source 'x'", "field": "sources"}}

    parser = argparse.ArgumentParser()
    enrich.add_parser(parser.add_subparsers(), lambda a: 0)
    args = parser.parse_args(["enrich", "198.51.100.7", "--sources", "abuseipdb, urlhaus ,"])
    assert enrich.run(args, call) == 1
    assert sent[0]["sources"] == ["abuseipdb", "urlhaus"]
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: HTTP 400: ")
    assert json.loads(err.removeprefix("error: HTTP 400: "))["message"] == "unknown source 'x'"
