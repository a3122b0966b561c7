"""Ctrl-C during `threatflow flows load`: the loader is resumable, so stopping it is ordinary use, not a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAW_ROW = ",".join(["175.45.176.1", "1", "149.171.126.1", "53", "udp", "INT", *["0"] * 41, "", "0"]) + "\n"


def test_ctrl_c_during_flows_load_stops_at_once_with_how_to_resume_not_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C printed a KeyboardInterrupt traceback and nothing about the saved progress; with the API slow to answer
    (here: never), the loader then waited for the batches in flight, up to their 300 s timeout, before it stopped."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []  # connections accepted and never answered: an API busy with the batches

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    data = tmp_path / "flows.csv"
    data.write_text(RAW_ROW * 30)
    ledger = tmp_path / "ledger.json"
    # Ctrl-C raises KeyboardInterrupt, as in a terminal's foreground job (a runner may start tests with SIGINT ignored)
    run = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'threatflow'"
    command = [sys.executable, "-c", run + "; from threatflow.cli.main import main; main()"]
    args = ["flows", "load", str(data), "--batch-size", "10", "--progress-file", str(ledger), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "shared"), "THREATFLOW_CREDENTIALS": str(tmp_path / "none.json")}
    env["THREATFLOW_URL"] = f"http://127.0.0.1:{server.getsockname()[1]}"
    loader = subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(held) < 2 and time.monotonic() < deadline:  # two batches in flight
            time.sleep(0.05)
        assert len(held) == 2
        loader.send_signal(signal.SIGINT)
        # The held batches are never answered: a loader that waited for them would sit out their 300 s timeout,
        # and this guard (a hang bound, not a speed figure) would end the test with TimeoutExpired.
        _, err = loader.communicate(timeout=60)
    finally:
        if loader.poll() is None:
            loader.kill()
        server.close()
        for connection in held:
            connection.close()
    assert "Traceback" not in err, err
    assert loader.returncode == 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
    assert "interrupted" in err and str(ledger) in err and "again to resume" in err, err
