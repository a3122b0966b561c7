"""`threatflow flows load` on files that are not UNSW-NB15 CSVs: an error naming the file, never a traceback.

Every file here fails on its first row, before anything is posted, so the URL points at a closed port.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

UNREADABLE = {
    "three-columns.csv": lambda: b"a,b,c\n1,2,3\n",
    "corrupt.csv.gz": lambda: b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8,
    "truncated.csv.gz": lambda: gzip.compress(b"proto,service,state\n" * 40)[:-12],
    "cell-over-the-csv-limit.csv": lambda: b"proto,service,state,dur\n" + b'"' + b"x" * 200_000 + b'",-,FIN,1\n',
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_an_unreadable_file_is_an_error_naming_it(name, tmp_path: Path, monkeypatch, capsys) -> None:
    from threatflow.cli.main import main

    path = tmp_path / name
    path.write_bytes(UNREADABLE[name]())
    monkeypatch.setenv("THREATFLOW_TOKEN", "not-used")
    with pytest.raises(SystemExit) as exited:
        main(["flows", "--url", "http://127.0.0.1:9", "load", str(path), "--quiet", "--progress-file", str(tmp_path / "progress.json")])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.startswith(f"error: {path}: cannot be read as a UNSW-NB15 CSV"), err
    assert "Traceback" not in err
