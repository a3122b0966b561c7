"""`threatflow iocs import FILE` on files as they are downloaded: compressed dumps, Latin-1 and UTF-16 text. The body
the CLI sends is recorded by the `call` it is given (the API client port), so no server is needed."""

import argparse
import gzip
import zipfile

import pytest

from threatflow.cli import iocs as cli_iocs
from threatflow.cli.iocs import cmd_import
from threatflow.platform.errors import ValidationError

CSV = "# URLhaus dump\nid,dateadded,url,url_status\n1,2026-01-01,http://198.51.100.7/bin.sh,online\n"


def run_import(path):
    sent = []

    def call(method, path, body=None, raw=False):
        sent.append(body)
        return 200, {"iocs": {"results": [], "summary": {}}}

    args = argparse.Namespace(file=str(path), format=None, source=None, tlp=None, tags=None, use_async=False)
    assert cmd_import(args, call) == 0
    (body,) = sent
    return body


def test_gzip_and_zip_downloads_are_read_as_the_file_inside(tmp_path):
    """abuse.ch serves full dumps zipped and mirrors serve .gz: the CLI died with a UnicodeDecodeError traceback."""
    gz = tmp_path / "urlhaus.csv.gz"
    gz.write_bytes(gzip.compress(CSV.encode()))
    zipped = tmp_path / "urlhaus_full.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("csv.csv", CSV)
    for path in (gz, zipped):
        assert run_import(path) == {"format": "csv", "content": CSV}


def test_latin1_and_utf16_text_is_decoded(tmp_path):
    """A Latin-1 byte in a comment (or Excel's UTF-16 "Unicode text") died with a UnicodeDecodeError traceback."""
    latin1 = tmp_path / "list.csv"
    latin1.write_bytes("value,comment\n198.51.100.1,café\n".encode("latin-1"))
    assert run_import(latin1)["content"] == "value,comment\n198.51.100.1,café\n"
    utf16 = tmp_path / "excel.csv"
    utf16.write_bytes("value\tcomment\r\n198.51.100.1\tx\r\n".encode("utf-16"))
    assert run_import(utf16)["content"] == "value\tcomment\r\n198.51.100.1\tx\r\n"


def test_a_zip_of_several_files_or_a_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    several = tmp_path / "two.zip"
    with zipfile.ZipFile(several, "w") as archive:
        archive.writestr("a.csv", CSV)
        archive.writestr("b.csv", CSV)
    with pytest.raises(ValidationError, match="holds 2 files"):
        run_import(several)
    monkeypatch.setattr(cli_iocs, "MAX_FILE_BYTES", 1000)
    bomb = tmp_path / "bomb.txt.gz"
    bomb.write_bytes(gzip.compress(b"198.51.100.1\n" * 1000))
    with pytest.raises(ValidationError, match="larger than 1,000 bytes"):
        run_import(bomb)


@pytest.mark.parametrize("name", ["csv.txt", "csv_recent", "feed.dat"])
def test_a_csv_feed_saved_as_text_is_imported_as_csv(tmp_path, name):
    """URLhaus's full dump unzips to csv.txt and its csv_recent download saves without an extension: sent as text, the
    extractor took every urlhaus_link cell (https://urlhaus.abuse.ch/url/N/) for an IoC beside each URL."""
    path = tmp_path / name
    path.write_text(
        "################################################################\n# abuse.ch URLhaus Database Dump (CSV)\n#\n"
        "# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter\n"
        '"1","2026-04-21 12:35:06","http://198.51.100.7/bin.sh","online","","malware_download","elf","https://urlhaus.abuse.ch/url/1/","x"\n'
    )
    assert run_import(path)["format"] == "csv"


def test_a_text_report_or_a_plain_list_stays_text(tmp_path):
    report = tmp_path / "report.txt"
    report.write_text("# Incident notes\nThe implant beaconed to hxxp://evil[.]example/gate, then to 198.51.100.7.\n")
    plain = tmp_path / "compromised-ips.txt"
    plain.write_text("198.51.100.7\n198.51.100.8\n")
    assert run_import(report)["format"] == run_import(plain)["format"] == "text"


def _import_args(path, *, json=False):
    import argparse

    return argparse.Namespace(file=str(path), format=None, source=None, tlp=None, tags=None, use_async=False, json=json)


def test_a_terminal_gets_the_summary_not_every_items_json(tmp_path, capsys, monkeypatch):
    """`iocs import` printed every item's result as JSON on stdout: 4.6 MB for ThreatFox's 25k-host list, scrolled
    through a terminal. A terminal gets the summary (stderr) and a hint; a pipe or file, or --json, gets the JSON."""
    import json
    import sys

    from threatflow.cli import iocs as cli

    feed = tmp_path / "hosts.txt"
    feed.write_text("evil.example.com\n")
    results = [{"index": i, "status": "created", "id": i, "type": "domain", "value": f"h{i}.example.com"} for i in range(3)]
    answer = {"iocs": {"summary": {"created": 3}, "results": results}, "errors": []}

    def call(method, path, body=None):
        return 200, answer

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.cmd_import(_import_args(feed), call) == 0
    out, err = capsys.readouterr()
    assert "iocs: created 3" in err and out.strip() == "" and "--json" in err
    assert cli.cmd_import(_import_args(feed, json=True), call) == 0
    assert json.loads(capsys.readouterr().out)["iocs"]["summary"]["created"] == 3
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # piped: the JSON, as before
    assert cli.cmd_import(_import_args(feed), call) == 0
    assert json.loads(capsys.readouterr().out)["iocs"]["results"][2]["id"] == 2


def test_the_summary_names_what_a_feed_held_besides_indicators(tmp_path, capsys):
    """The summary on stderr named created/updated/unchanged/rejected only: what a feed import skipped (its comments,
    a hosts file's sink addresses) was in the JSON alone. It is counted on stderr too."""
    from threatflow.cli import iocs as cli

    feed = tmp_path / "hosts"
    feed.write_text("# Title: StevenBlack/hosts\n0.0.0.0 ads.tracker-example.com\n")
    answer = {"iocs": {"summary": {"created": 1}, "results": []}, "errors": [], "skipped": {"comment lines": 1, "sink addresses": 1}}
    assert cli.cmd_import(_import_args(feed), lambda method, path, body=None: (200, answer)) == 0
    assert "skipped: comment lines 1, sink addresses 1" in capsys.readouterr().err


def test_extract_says_when_it_read_a_feed_and_what_it_skipped(tmp_path, capsys):
    feed = tmp_path / "ipblocklist.txt"
    feed.write_text("# Feodo\n203.0.113.10\n")

    def call(method, path, body=None, raw=False):
        assert (method, path, body) == ("POST", "/api/v1/iocs/extract", {"text": "# Feodo\n203.0.113.10\n", "refang": True})
        iocs = [{"type": "ipv4", "value": "203.0.113.10", "original": "203.0.113.10"}]
        return 200, {"iocs": iocs, "count": 1, "feed": True, "skipped": {"comment lines": 1}}

    assert cli_iocs.cmd_extract(argparse.Namespace(file=str(feed), no_refang=False), call) == 0
    out, err = capsys.readouterr()
    assert out == "ipv4\t203.0.113.10\n"
    assert err.splitlines() == ["1 indicators (read as a feed)", "skipped: comment lines 1"]
