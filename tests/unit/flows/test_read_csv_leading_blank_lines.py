"""A UNSW CSV whose first line is blank (an export that writes a line before the header, or a BOM then CRLF) was
refused whole, "the first line has 0 fields and no header", by `flows load` and by the upload worker alike."""

from __future__ import annotations

import io
from typing import Any

import pytest


@pytest.mark.parametrize("lead", ["\n", "\r\n", "\ufeff\r\n", "\n \n,\n"])
def test_blank_lines_before_the_first_row_are_skipped_in_both_layouts(lead: str) -> None:
    from threatflow.flows import ingest

    header = "dur,proto,service,state,label\n"

    def read(text: str) -> list[tuple[int, dict[str, Any]]]:  # as flows load and the upload worker read a file
        return list(ingest.read_csv(ingest.open_text(io.BytesIO(text.encode())), typed=False))

    rows = read(lead + header + "0.1,tcp,-,FIN,0\n")
    assert rows == [(0, {"dur": "0.1", "proto": "tcp", "service": "-", "state": "FIN", "label": "0"})]
    raw = ",".join(["1"] * len(ingest.RAW_COLUMNS)) + "\n"
    numbered = [number for number, _flow in read(lead + raw + raw)]
    assert numbered == [0, 1]
