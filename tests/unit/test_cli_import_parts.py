"""`threatflow iocs import` of a large csv, text or json feed: split into parts that each fit one synchronous import.

The whole file was sent as one import: a feed of more than 100,000 records (or over 32 MiB) was refused ("split it
into several imports") and the user split it by hand. Now each part holds at most PART_ITEMS records and fits the
synchronous limit, carries the csv's '#' block and header, and is cut only between records. The fake API below reads
each part with the server's own parser (threatflow.intel.formats.parse), refusing what the API refuses."""

from __future__ import annotations

import argparse
import itertools
import json

import pytest

from threatflow.cli import iocs as cli
from threatflow.intel import formats
from threatflow.platform.errors import ValidationError

SYNC_BYTES = 5 * 1024 * 1024


class FakeApi:
    """POST /api/v1/iocs/import as the API reads it: a body over 5 MB is refused synchronously (413), a document the
    parser refuses (past 100,000 items) is a 400 naming `content`; else each parsed item is 'created'."""

    def __init__(self, *, fail_at: int | None = None) -> None:
        self.bodies: list[dict] = []
        self.values: list[str] = []
        self.fail_at = fail_at

    def __call__(self, method, path, body=None, raw=False):
        assert (method, path) == ("POST", "/api/v1/iocs/import"), f"only sync imports expected, got {method} {path}"
        self.bodies.append(body)
        if len(json.dumps(body).encode()) > SYNC_BYTES:
            return 413, {"error": {"message": "imports over 5 MB run asynchronously"}}
        if self.fail_at is not None and len(self.bodies) == self.fail_at:
            return 503, {"error": {"message": "unavailable"}}
        try:
            parsed = formats.parse(body["format"], body["content"])
        except ValidationError as exc:
            return 400, {"error": {"message": str(exc), "field": exc.field}}
        self.values.extend(ioc.item.value for ioc in parsed.iocs)
        created = len(parsed.iocs)
        return 200, {
            "iocs": {"summary": {"created": created, "updated": 0, "unchanged": 0, "rejected": len(parsed.errors)}},
            "skipped": parsed.skipped,
        }


def _args(path, fmt=None):
    return argparse.Namespace(file=str(path), format=fmt, source=None, tlp=None, tags=None, use_async=False, json=True)


def _csv_feed(rows: int, *, quoted_every: int | None = None) -> tuple[str, list[str]]:
    """A feed as abuse.ch serves it: an opening '#' block whose last line is the header commented out."""
    lines = ["# URLhaus database dump", "# Terms of use: CC0", "# id,dateadded,url,url_status,threat"]
    urls = []
    for i in range(rows):
        url = f"http://host{i}.example.net/payload/{i}.bin"
        urls.append(url)
        note = f'"line one of {i}\nline two, with a comma"' if quoted_every and i % quoted_every == 0 else "online"
        lines.append(f"{i},2024-01-01 00:00:00,{url},{note},malware_download")
    return "\n".join(lines) + "\n", urls


def test_a_csv_feed_of_120000_rows_is_imported_in_parts_and_every_row_arrives(tmp_path, capsys):
    text, urls = _csv_feed(120_000)
    path = tmp_path / "urlhaus.csv"
    path.write_text(text)
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) >= 3, "at most PART_ITEMS rows a part"
    assert sorted(api.values) == sorted(urls), "every row arrives, once"
    for body in api.bodies:
        assert body["content"].startswith("# URLhaus database dump\n# Terms of use: CC0\n# id,dateadded,url")
    out, err = capsys.readouterr()
    assert f"part 1/{len(api.bodies)}: created" in err and f"part {len(api.bodies)}/{len(api.bodies)}: created" in err
    assert "iocs: created 120000, updated 0, unchanged 0, rejected 0" in err
    doc = json.loads(out)
    assert [p["part"] for p in doc["parts"]] == list(range(1, len(api.bodies) + 1))
    assert doc["summary"]["iocs"]["summary"]["created"] == 120_000
    assert doc["parts"][0]["lines"][0] == 4 and doc["parts"][-1]["lines"][1] == 120_003  # the file's own lines


def test_a_csv_with_a_plain_header_and_quoted_multiline_cells_is_never_cut_inside_a_record(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "PART_ITEMS", 7, raising=False)  # boundaries fall on and next to the multi-line records
    rows, urls = 200, []
    lines = ["# a feed", "value,type,comment"]
    for i in range(rows):
        urls.append(f"host{i}.example.org")
        comment = f'"spans\n{i} lines"' if i % 3 == 0 else "plain"
        lines.append(f"host{i}.example.org,domain,{comment}")
    path = tmp_path / "feed.csv"
    path.write_text("\n".join(lines) + "\n")
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) > 1
    assert sorted(api.values) == sorted(urls)
    for body in api.bodies:
        assert body["content"].startswith("# a feed\nvalue,type,comment\n")
        assert body["content"].count('"') % 2 == 0, "a quoted cell is whole in one part"


def test_a_text_blocklist_of_120000_lines_is_imported_in_parts_on_line_boundaries(tmp_path, capsys):
    addresses = [f"{1 + i // 65536}.{(i // 256) % 256}.{i % 256}.7" for i in range(120_000)]
    path = tmp_path / "blocklist.txt"
    path.write_text("# my blocklist\n" + "\n".join(addresses) + "\n")
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) >= 3
    assert all(body["format"] == "text" for body in api.bodies)
    assert sorted(api.values) == sorted(addresses)
    assert "iocs: created 120000" in capsys.readouterr().err


def test_a_part_that_fails_stops_the_import_and_names_the_parts_imported(tmp_path, capsys):
    text, _urls = _csv_feed(120_000)
    path = tmp_path / "urlhaus.csv"
    path.write_text(text)
    api = FakeApi(fail_at=2)
    assert cli.cmd_import(_args(path), api) == 1
    assert len(api.bodies) == 2, "no part after the failing one"
    err = capsys.readouterr().err
    assert "part 2/" in err and "failed" in err and "parts 1-1 were imported" in err and "HTTP 503" in err


@pytest.mark.parametrize("name", ["small.csv", "small.txt"])
def test_a_file_that_fits_one_import_is_sent_whole_as_before(tmp_path, capsys, name):
    text, _urls = _csv_feed(100)
    path = tmp_path / name
    path.write_text(text)
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) == 1 and api.bodies[0]["content"] == text
    assert "parts" not in json.loads(capsys.readouterr().out)


def _records(n: int) -> list[dict]:
    return [{"value": f"{1 + i // 65536}.{(i // 256) % 256}.{i % 256}.9", "tags": ["feed"]} for i in range(n)]


@pytest.mark.parametrize(
    "shape",
    ["list", "iocs", "threatfox-export", "threatfox-api"],
)
def test_a_json_feed_of_120000_records_is_imported_in_parts_of_its_own_shape(tmp_path, capsys, shape):
    """A JSON document of more than 100,000 records was sent whole (async past 5 MB) and refused ("split it into several
    imports"): the CLI split only csv and text. Now a JSON feed of records is split as the importer reads it (its
    list, {"iocs": [...]}, ThreatFox's export {"<id>": [records]}, abuse.ch's API answer {"query_status", "data"}),
    each part a document of the same shape; the stdout document names each part's records."""
    records = _records(120_000)
    if shape == "list":
        doc = records
    elif shape == "iocs":
        doc = {"iocs": records}
    elif shape == "threatfox-export":
        doc = {str(1000 + i): [{"ioc": r["value"], "ioc_type": "ip:port", "threat_type": "botnet_cc"}] for i, r in enumerate(records)}
    else:
        doc = {"query_status": "ok", "data": [{"ioc": r["value"], "ioc_type": "ip:port"} for r in records]}
    path = tmp_path / "feed.json"
    path.write_text(json.dumps(doc))
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) >= 3 and all(body["format"] == "json" for body in api.bodies)
    assert sorted(api.values) == sorted(r["value"] for r in records), "every record arrives, once"
    if shape == "threatfox-api":
        assert all(body["content"]["query_status"] == "ok" for body in api.bodies), "each part keeps the answer's shape"
    out, err = capsys.readouterr()
    assert "iocs: created 120000, updated 0, unchanged 0, rejected 0" in err
    parts = json.loads(out)["parts"]
    assert parts[0]["records"][0] == 1 and parts[-1]["records"][1] == 120_000
    assert all(a["records"][1] + 1 == b["records"][0] for a, b in itertools.pairwise(parts)), "no record skipped or sent twice"


def test_an_otx_pulse_is_never_split(tmp_path, capsys, monkeypatch):
    """A pulse's indicators share its threats and TLP: a big pulse is sent whole (async past 5 MB), never in parts."""
    monkeypatch.setattr(cli, "PART_ITEMS", 10, raising=False)
    pulse = {"id": "5f1", "name": "big pulse", "indicators": [{"indicator": f"45.9.0.{i}", "type": "IPv4"} for i in range(50)]}
    path = tmp_path / "pulse.json"
    path.write_text(json.dumps(pulse))
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) == 1 and api.bodies[0]["content"] == pulse


@pytest.mark.parametrize("name", ["feodo_ipblocklist_recommended.json", "threatfox_recent_defanged_ashiroodi.json"])
def test_real_abuse_ch_json_feeds_split_into_parts_give_what_the_whole_document_gives(tmp_path, capsys, monkeypatch, name):
    """abuse.ch's own JSON downloads (../shared/data/feeds/abusech), split into parts of 7 records: every IoC the whole
    document gives arrives, once, and nothing else."""
    from helpers import SHARED_DATA, require_shared_data

    require_shared_data("feeds/abusech")
    text = (SHARED_DATA / "feeds" / "abusech" / name).read_text()
    whole = sorted(ioc.item.value for ioc in formats.parse("json", json.loads(text)).iocs)
    monkeypatch.setattr(cli, "PART_ITEMS", 7, raising=False)
    monkeypatch.setattr(cli, "SYNC_LIMIT_BYTES", 1024, raising=False)  # the small files are split too
    path = tmp_path / name
    path.write_text(text)
    api = FakeApi()
    assert cli.cmd_import(_args(path), api) == 0
    assert len(api.bodies) > 1 and whole, name
    assert sorted(api.values) == whole
