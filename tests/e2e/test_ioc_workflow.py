"""Issue acceptance over HTTP on the local stack: import every shared STIX and
MISP sample, search, export, link to a threat and correlate; re-import without
duplicates; a batch with bad items stores the good ones and names the bad."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from helpers import require_shared_data

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("attack_synced")]


def _samples(kind: str) -> list[Path]:
    root = require_shared_data(kind)
    return sorted(p for p in root.rglob("*") if p.suffix in (".json", ".csv"))


def _import(stack, headers, path: Path):
    if path.suffix == ".csv":
        fmt, content = "csv", path.read_text()
    else:
        fmt = "misp" if "misp" in path.parts else "stix"
        content = json.loads(path.read_text())
    response = requests.post(
        f"{stack['url']}/api/v1/iocs/import",
        json={"format": fmt, "content": content, "source": f"e2e:{path.name}"},
        headers=headers,
        timeout=120,
    )
    return response


def _total(stack, headers) -> int:
    """Every IoC the caller may read, counted now (/stats may answer from a copy up to a minute old)."""
    response = requests.get(f"{stack['url']}/api/v1/iocs/export?format=txt&max_tlp=red&limit=100000", headers=headers, timeout=60)
    assert response.status_code == 200 and response.headers["X-Export-Truncated"] == "false", response.text[:300]
    return int(response.headers["X-Export-Count"])


def test_import_every_shared_sample_then_reimport_without_duplicates(stack, admin_headers):
    samples = _samples("stix") + _samples("misp")
    assert samples
    for path in samples:
        response = _import(stack, admin_headers, path)
        assert response.status_code == 200, f"{path.name}: {response.status_code} {response.text[:500]}"
    total_before = _total(stack, admin_headers)
    assert total_before > 0
    first_counts = {
        i["id"]: i["detection_count"]
        for i in requests.post(f"{stack['url']}/api/v1/iocs/find", json={"limit": 1000}, headers=admin_headers, timeout=30).json()["iocs"]
    }
    for path in samples:
        assert _import(stack, admin_headers, path).status_code == 200
    total_after = _total(stack, admin_headers)
    assert total_after == total_before, "re-import created duplicates"
    second = requests.post(f"{stack['url']}/api/v1/iocs/find", json={"limit": 1000}, headers=admin_headers, timeout=30).json()["iocs"]
    assert all(i["detection_count"] > first_counts[i["id"]] for i in second if i["id"] in first_counts)


def test_search_export_link_and_correlate(stack, admin_headers):
    url = stack["url"]
    batch = [{"value": f"c2-{i}.emotet-infra.example.net", "tags": ["emotet"], "source": "e2e"} for i in range(5)]
    batch.append({"value": "benign-host.example.org", "tags": ["unrelated"], "source": "e2e"})
    results = requests.post(f"{url}/api/v1/iocs/batch", json={"iocs": batch}, headers=admin_headers, timeout=30).json()["results"]
    ids = [r["id"] for r in results]
    found = requests.post(
        f"{url}/api/v1/iocs/find", json={"tags": ["emotet"], "value_contains": "emotet-infra"}, headers=admin_headers, timeout=30
    )
    assert found.json()["count"] == 5

    threat = requests.post(
        f"{url}/api/v1/threats/batch",
        json={"threats": [{"kind": "malware", "name": "Emotet", "aliases": ["Heodo", "Geodo"], "ttps": ["T1059.001"]}]},
        headers=admin_headers,
        timeout=30,
    )
    assert threat.status_code == 200, threat.text
    threat_id = threat.json()["results"][0]["id"]
    linked = requests.post(
        f"{url}/api/v1/threats/{threat_id}/link", json={"ioc_ids": ids[:1], "relation": "indicates"}, headers=admin_headers, timeout=30
    )
    assert linked.status_code == 200, linked.text
    correlated = requests.post(
        f"{url}/api/v1/threats/correlate", json={"threat_id": threat_id, "threshold": 70}, headers=admin_headers, timeout=60
    )
    assert correlated.status_code == 200, correlated.text
    candidates = {c["ioc_id"] for c in correlated.json()["candidates"] if c["score"] >= 70}
    assert set(ids[:5]) <= candidates and ids[5] not in candidates
    by_ioc = requests.get(f"{url}/api/v1/threats/by-ioc/{ids[3]}", headers=admin_headers, timeout=30).json()
    assert threat_id in [t["id"] for t in by_ioc["threats"]]
    related = requests.get(f"{url}/api/v1/iocs/{ids[0]}/related", headers=admin_headers, timeout=30).json()
    assert threat_id in [t["id"] for t in related["threats"]]

    exported = requests.get(f"{url}/api/v1/iocs/export", params={"format": "stix", "tags": "emotet"}, headers=admin_headers, timeout=60)
    assert exported.status_code == 200, exported.text[:500]
    import stix2

    bundle = stix2.parse(exported.text, allow_custom=False)
    patterns = " ".join(o.pattern for o in bundle.objects if o.type == "indicator")
    assert all(f"c2-{i}.emotet-infra.example.net" in patterns for i in range(5))
    assert any(o.type == "malware" and o.name == "Emotet" for o in bundle.objects)
    txt = requests.get(f"{url}/api/v1/iocs/export", params={"format": "txt", "tags": "emotet"}, headers=admin_headers, timeout=60)
    assert sorted(txt.text.split()) == sorted(b["value"] for b in batch[:5])


def test_ten_bad_among_990_good_over_http(stack, admin_headers):
    good = [{"value": f"77.{i // 250}.{i % 250}.9", "source": "e2e-990"} for i in range(990)]
    bad = [{"value": v} for v in ("999.1.1.1", "not an ioc", "example", "a" * 31, "1.2.3")] + [
        {"value": "1.2.3.4", "type": t} for t in ("md5", "sha1", "sha256", "email", "domain")
    ]
    started = time.perf_counter()
    response = requests.post(
        f"{stack['url']}/api/v1/iocs/batch", json={"iocs": good[:400] + bad + good[400:]}, headers=admin_headers, timeout=60
    )
    assert response.status_code == 200
    body = response.json()
    assert body["summary"]["created"] == 990 and body["summary"]["rejected"] == 10
    rejected = [r for r in body["results"] if r["status"] == "rejected"]
    assert [r["index"] for r in rejected] == list(range(400, 410)) and all(r["reason"] for r in rejected)
    print(f"990+10 batch over HTTP in {(time.perf_counter() - started) * 1000:.0f} ms")


def test_warninglisted_values_are_flagged_with_the_list_name(stack, admin_headers):
    require_shared_data("feeds", "misp-warninglists")
    synced = requests.post(f"{stack['url']}/api/v1/admin/jobs/sync-warninglists/run", headers=admin_headers, timeout=30)
    assert synced.status_code == 202
    body = {"iocs": [{"value": "10.1.2.3"}, {"value": "8.8.8.8"}, {"value": "evil-xyz-123.biz"}]}
    results = requests.post(f"{stack['url']}/api/v1/iocs/batch", json=body, headers=admin_headers, timeout=30).json()["results"]
    flagged = [
        requests.get(f"{stack['url']}/api/v1/iocs/{r['id']}", headers=admin_headers, timeout=30).json()["warninglists"] for r in results
    ]
    assert "rfc1918" in flagged[0] and "public-dns-v4" in flagged[1] and flagged[2] == []
    listed = requests.post(
        f"{stack['url']}/api/v1/iocs/find",
        json={"warninglisted": True, "ids": [r["id"] for r in results]},
        headers=admin_headers,
        timeout=30,
    )
    assert listed.json()["count"] == 2


def test_cli_imports_extracts_finds_and_exports(stack, admin_headers, tmp_path):
    from helpers import stack_cli

    env = {**stack["env"], "THREATFLOW_TOKEN": admin_headers["Authorization"].split(" ", 1)[1], "THREATFLOW_URL": stack["url"]}
    cli = {**stack, "env": env}
    report = tmp_path / "report.txt"
    report.write_text("The dropper calls hxxps://cli-c2[.]example-bad[.]com/gate.php and 203.0.113[.]201.\n")
    extracted = stack_cli(cli, "iocs", "extract", str(report))
    assert extracted.returncode == 0, extracted.stderr
    assert extracted.stdout.splitlines() == ["url\thttps://cli-c2.example-bad.com/gate.php", "ipv4\t203.0.113.201"]

    imported = stack_cli(cli, "iocs", "import", str(report), "--tags", "cli-test", "--tlp", "green")
    assert imported.returncode == 0, imported.stderr
    assert "as text" in imported.stderr and "created 2" in imported.stderr
    bundle = require_shared_data("stix", "oasis-examples", "threat-reports", "apt1.json")
    queued = stack_cli(cli, "iocs", "import", str(bundle), "--async")
    assert queued.returncode == 0, queued.stderr
    assert "as stix" in queued.stderr and ": succeeded" in queued.stderr and json.loads(queued.stdout)["state"] == "succeeded"

    found = stack_cli(cli, "iocs", "find", "--tag", "cli-test", "--filter", "type=url,ipv4")
    assert found.returncode == 0, found.stderr
    assert sorted(i["value"] for i in json.loads(found.stdout)["iocs"]) == ["203.0.113.201", "https://cli-c2.example-bad.com/gate.php"]
    out = tmp_path / "blocklist.txt"
    exported = stack_cli(cli, "iocs", "export", "--format", "txt", "--filter", "tags=cli-test", "--limit", "1", "-o", str(out))
    assert exported.returncode == 0 and "more matched" in exported.stderr
    assert len(out.read_text().split()) == 1
    wrong = stack_cli(cli, "iocs", "find", "--filter", "verdict=evil")
    assert wrong.returncode == 2 and "verdict" in wrong.stderr
