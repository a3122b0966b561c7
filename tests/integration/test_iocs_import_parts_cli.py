"""`threatflow iocs import` of a feed larger than one part, through the real iocs function and PostgreSQL: every row
is stored once, a quoted multi-line cell at a part boundary is read whole, and importing the file again (what a user
does after a failed part) changes nothing."""

import argparse
import json

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration


@pytest.fixture
def call(function_client, backend_env):
    password = create_user(backend_env["DATABASE_URL"], "feeder", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "feeder", "password": password}).get_json()["access_token"]
    client = function_client("iocs")
    paths = []

    def call(method, path, body=None, raw=False):
        assert method == "POST"
        paths.append(path)
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        return response.status_code, response.get_json()

    call.paths = paths
    return call


def _stored(url, hosts):
    from sqlalchemy import text

    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM iocs WHERE value = ANY(:hosts)"), {"hosts": hosts}).scalar()
    engine.dispose()
    return count


def test_a_feed_larger_than_a_part_is_imported_in_parts_through_the_api(call, backend_env, tmp_path, capsys, monkeypatch):
    from threatflow.cli import iocs as cli

    monkeypatch.setattr(cli, "PART_ITEMS", 1_000, raising=False)
    hosts = [f"part-host{i}.example-feed.net" for i in range(3_500)]
    lines = ["# a test feed", "value,type,comment"]
    for i, host in enumerate(hosts):
        comment = f'"first line of {i}\nsecond line, with a comma"' if i % 999 == 0 else "seen"
        lines.append(f"{host},domain,{comment}")
    path = tmp_path / "feed.csv"
    path.write_text("\n".join(lines) + "\n")
    args = argparse.Namespace(file=str(path), format=None, source="test-feed", tlp=None, tags=None, use_async=False, json=True)

    assert cli.cmd_import(args, call) == 0
    out, err = capsys.readouterr()
    assert call.paths == ["/api/v1/iocs/import"] * 4, "four synchronous parts"
    assert "part 4/4: created" in err and "iocs: created 3500, updated 0, unchanged 0, rejected 0" in err, err
    assert json.loads(out)["summary"]["iocs"]["summary"]["created"] == 3_500
    assert _stored(backend_env["DATABASE_URL"], hosts) == 3_500

    assert cli.cmd_import(args, call) == 0  # again, as after a failed part: the IoCs merge
    err = capsys.readouterr().err
    assert "iocs: created 0" in err, err
    assert _stored(backend_env["DATABASE_URL"], hosts) == 3_500
