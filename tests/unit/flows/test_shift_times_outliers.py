"""`flows load --shift-times` with a few absurd stimes: the offset must come from the capture, not the outliers.

A capture from 2015 with one corrupt row dated 2100 (or 1e300) put that row "a minute ago" and every real flow decades
back, older than the retention window: all refused. With 1e300 the offset had ~300 digits, so the source name
(`file:<sha24>:shift<offset>`) broke the API's 200-character limit and every batch was refused. A row the API would
refuse as in the future (more than a day ahead) is no observation; it must not set the newest time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CAPTURE_END = 1_424_262_069  # the official raw files' last ltime (2015-02-18)
NOW = 1_780_000_000.0


def _raw_file(path: Path, times: list[tuple[str, str]]) -> Path:
    from threatflow.flows.ingest import RAW_COLUMNS

    lines = []
    for stime, ltime in times:
        cells = {name: "0" for name in RAW_COLUMNS}
        cells.update(srcip="10.0.0.1", dstip="10.0.0.2", proto="tcp", state="FIN", service="-", Stime=stime, Ltime=ltime)
        lines.append(",".join(cells[name] for name in RAW_COLUMNS))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_few_absurd_future_stimes_do_not_set_the_shift(tmp_path: Path) -> None:
    from threatflow.cli import flows as cli

    times = [(str(CAPTURE_END - 100 + i), str(CAPTURE_END - 90 + i)) for i in range(90)]
    times[10] = ("4102444800", "4102444801")  # 2100: a corrupt row
    times[20] = ("1e300", "1e300")  # absurd
    data = _raw_file(tmp_path / "unsw-2015.csv", times)
    assert cli.newest_time(data) == CAPTURE_END - 1  # the newest real flow, not the outliers

    sent: list[dict[str, Any]] = []

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        sent.append(body)
        return 200, {"stored": len(body["flows"]), "duplicates": 0, "invalid": 0, "problems": []}

    entry = cli.load_file(
        data, post=post, progress=cli.Progress(tmp_path / "p.json"), batch_size=50, show_bar=False, shift=True, now=lambda: NOW
    )
    assert entry["time_shift"] == int(NOW - 60 - (CAPTURE_END - 1))
    for body in sent:
        assert re.fullmatch(r"[A-Za-z0-9:._/-]{1,200}", body["source"]), body["source"][:80]
    shifted = [float(f["Ltime"]) for body in sent for f in body["flows"]]
    assert max(t for t in shifted if t < NOW + 86_400) == NOW - 60  # the real capture ends a minute before the load


def test_iso_times_are_shifted_in_their_own_form(tmp_path: Path) -> None:
    """The API takes stime/ltime as epoch seconds or ISO 8601 with a zone; --shift-times moved only the former, so a
    file of ISO times loaded unshifted and was refused whole."""
    from threatflow.cli import flows as cli

    flow = {"stime": "2015-01-22T00:00:00Z", "ltime": "2015-01-22T00:00:05.5+01:00", "Stime": "2015-01-22 00:00:00"}
    moved = cli.shift_times(dict(flow), 86_400)
    assert moved["stime"] == "2015-01-23T00:00:00+00:00"
    assert moved["ltime"] == "2015-01-22T23:00:05.500000+00:00"
    assert moved["Stime"] == flow["Stime"]  # no zone: not a time the API takes, left for it to refuse
    data = tmp_path / "iso.csv"
    data.write_text("proto,service,state,stime\ntcp,-,FIN,2015-01-22T00:00:00Z\ntcp,-,FIN,2015-01-22T06:00:00+00:00\n")
    assert cli.newest_time(data, now=NOW) == 1_421_906_400  # 2015-01-22T06:00:00Z


def test_a_time_in_other_number_syntax_is_left_for_the_api_to_refuse(tmp_path: Path) -> None:
    """--shift-times read "١٤٢١٩٢٧٤١٤" (Arabic-Indic digits) or "1_421_927_414" with float() and posted it moved, as ASCII
    digits: the API, which refuses such text, took it. The CLI leaves it as it is, and it sets no shift."""
    from threatflow.cli import flows as cli

    for text in ("١٤٢١٩٢٧٤١٤", "1_421_927_414", "+1421927414"):
        assert cli.shift_times({"stime": text, "ltime": "1421927414"}, 100) == {"stime": text, "ltime": "1421927514"}
    data = _raw_file(tmp_path / "digits.csv", [("1421927414", "1421927414"), ("١٧٠٠٠٠٠٠٠٠", "1_700_000_000")])
    assert cli.newest_time(data, now=NOW) == 1421927414
