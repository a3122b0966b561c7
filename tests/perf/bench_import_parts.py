"""Time `threatflow iocs import` of a 120,000-row URLhaus-shaped CSV (11.5 MB) through the iocs function and the test
PostgreSQL: the parts it sends, each part's time, then the same file again (what a re-run after a failed part costs).
Not collected by the suite (its name is no test_*); it runs itself under pytest, for the suite's services and
fixtures (tests/conftest.py), as `make bench` runs every script here:
PYTHONPATH=shared .venv/bin/python tests/perf/bench_import_parts.py
"""

import argparse
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def test_import_a_120000_row_csv_in_parts(function_client, backend_env, tmp_path, capsys):
    from helpers import create_user  # tests/ is on the path once pytest has read tests/conftest.py

    from threatflow.cli import iocs as cli

    password = create_user(backend_env["DATABASE_URL"], "measurer", "analyst")
    token = (
        function_client("auth").post("/api/v1/auth/token", json={"username": "measurer", "password": password}).get_json()["access_token"]
    )
    client = function_client("iocs")
    times = []

    def call(method, path, body=None, raw=False):
        t = time.monotonic()
        r = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        times.append(round(time.monotonic() - t, 1))
        return r.status_code, r.get_json()

    lines = ["# URLhaus database dump", "# id,dateadded,url,url_status,threat"]
    lines += [f"{i},2024-01-01 00:00:00,http://m{i}.example-measure.net/p/{i}.bin,online,malware_download" for i in range(120_000)]
    path = tmp_path / "feed.csv"
    path.write_text("\n".join(lines) + "\n")
    args = argparse.Namespace(file=str(path), format=None, source=None, tlp=None, tags=None, use_async=False, json=True)
    t = time.monotonic()
    rc = cli.cmd_import(args, call)
    total = time.monotonic() - t
    err = capsys.readouterr().err
    assert rc == 0
    with capsys.disabled():
        print(f"\nrc={rc} size={path.stat().st_size} total={total:.1f}s per-part={times}\n{err}")
    t = time.monotonic()
    rc = cli.cmd_import(args, call)
    with capsys.disabled():
        print(f"\nagain rc={rc} total={time.monotonic() - t:.1f}s per-part={times[-3:]}\n{capsys.readouterr().err}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help describes it; nothing to choose
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
