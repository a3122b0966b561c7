"""`threatflow flows load`'s resume ledger shared by loads running at once (one default file for every load)."""

import json
import threading

from threatflow.cli import flows as cli


def test_two_loads_sharing_the_ledger_keep_each_others_progress(tmp_path):
    """Loading several files at once (one terminal each, UNSW-NB15_1..4) shares ~/.cache/threatflow/flows-load.json.
    Each load held the whole ledger as it read it at its start and wrote it back whole after every batch, so each
    save dropped the other loads' entries: their progress was lost (a re-run read everything again), and a
    finished file was read again."""
    path = tmp_path / "flows-load.json"
    first, second = cli.Progress(path), cli.Progress(path)
    a = first.entry("a" * 64, tmp_path / "1.csv")
    b = second.entry("b" * 64, tmp_path / "2.csv")
    a["rows_done"] = 5000
    first.save()
    b["rows_done"] = 7000
    second.save()
    a["rows_done"], a["done"] = 10000, True
    first.save()
    saved = json.loads(path.read_text())
    assert saved["a" * 64]["rows_done"] == 10000 and saved["a" * 64]["done"]
    assert saved["b" * 64]["rows_done"] == 7000


def test_loads_saving_at_once_never_leave_a_torn_ledger(tmp_path):
    """Both saves wrote the same `flows-load.tmp`, then renamed it: one could rename the other's half-written file
    into place, and every later load stopped on "not a progress file (JSON); remove it", losing every entry."""
    path = tmp_path / "flows-load.json"
    loads = [cli.Progress(path) for _ in range(4)]
    for n, load in enumerate(loads):
        entry = load.entry(f"{n}" * 64, tmp_path / f"{n}.csv")
        entry["file"] = "x" * 200_000  # a large ledger takes a while to write
    errors: list[BaseException] = []

    def save(load):
        try:
            for _ in range(30):
                load.save()
                json.loads(path.read_text())
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(load,)) for load in loads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(json.loads(path.read_text())) == 4
