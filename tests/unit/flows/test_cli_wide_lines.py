"""`flows load` reading a file with one enormous line: the upload worker refuses a line over 16,384 characters before
parsing it, the CLI parsed it. A 50 MB line of 25 M cells took 415 MB of the CLI's memory (csv builds every cell)
before the row was cut to the header's width and posted, as if it were a flow; a 500 MB line takes gigabytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _file(path: Path, *, wide_cells: int) -> Path:
    from threatflow.flows.ingest import RAW_COLUMNS

    cells = {name: "0" for name in RAW_COLUMNS}
    cells.update(srcip="10.0.0.1", dstip="10.0.0.2", proto="tcp", state="FIN", service="-", Stime="1", Ltime="1")
    good = ",".join(cells[name] for name in RAW_COLUMNS)
    path.write_text(f"{good}\n{good},{'1,' * wide_cells}1\n{good}\n")
    return path


def test_a_line_longer_than_the_upload_bound_is_an_error_naming_it_before_it_is_parsed(tmp_path: Path) -> None:
    from threatflow.cli import flows as cli
    from threatflow.flows import ingest

    sent: list[dict[str, Any]] = []

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        sent.append(body)
        return 200, {"stored": len(body["flows"]), "duplicates": 0, "invalid": 0}

    data = _file(tmp_path / "wide.csv", wide_cells=16_384)  # 32 KiB, past the worker's bound
    with pytest.raises(ValueError, match="line 2 is longer than 16,384 characters"):
        cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "progress.json"), batch_size=1, show_bar=False)
    assert all(len(body["flows"][0]) <= len(ingest.RAW_COLUMNS) for body in sent)
    assert [body["positions"] for body in sent] == [[0]]  # the row before it only
    with pytest.raises(ValueError, match="line 2 is longer"):
        cli.newest_time(data)


def test_a_row_of_the_wrong_width_is_skipped_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flows load` posted a row with an extra cell cut to the header, and a row missing its label without it."""
    from threatflow.cli import flows as cli

    data = _file(tmp_path / "shapes.csv", wide_cells=0)  # rows 0 and 2 good, row 1 one cell too many
    lines = data.read_text().splitlines()
    data.write_text("\n".join([*lines, lines[0].rsplit(",", 1)[0], lines[0]]) + "\n")  # row 3 without its Label, row 4 good
    sent: list[dict[str, Any]] = []

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        sent.append(body)
        return 200, {"stored": len(body["flows"]), "duplicates": 0, "invalid": 0}

    entry = cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "progress.json"), batch_size=1, show_bar=False)
    assert [body["positions"] for body in sent] == [[0], [2], [4]]
    assert (entry["stored"], entry["invalid"], entry["rows_done"]) == (3, 2, 5)
    err = capsys.readouterr().err
    assert "skipped line 2: the row has 50 cells; the raw layout has 49" in err
    assert "skipped line 4: the row has 48 cells; the raw layout has 49" in err
