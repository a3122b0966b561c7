"""URLhaus (abuse.ch) v1: form-encoded POST, trailing slashes kept: `/url/`, `/host/` (domains and IPv4),
`/payload/` (md5_hash or sha256_hash). `Auth-Key` header (required since 2025). Numbers arrive as strings.

Verdict (reference §5.2): `ok` -> malicious; `no_results` -> not_found. Score: the reference proposes 100 when a
URL is online and null otherwise; we keep 100 for online and use 75 (not null) when every URL is offline, so a
listed IoC always carries a score in the aggregate (deviation, documented in the README). Payloads (malware
samples seen in the wild) score 100. `invalid_*` / `http_post_expected` -> bad_request; key errors -> auth_error.
A host that a blocklist names an abused legitimate site (`blacklists`: Spamhaus DBL `abused_legit_*`) is tagged so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from threatflow.enrichment.model import Evidence, Verdict
from threatflow.enrichment.sources.abusech import query_status
from threatflow.enrichment.sources.base import (
    FreeTier,
    Parsed,
    Reply,
    Request,
    Source,
    as_dict,
    as_int,
    as_list,
    as_str,
    as_time,
    bounded_summary,
    strings,
)

_HOST = Request("POST", "/host/", form={"host": "{value}"})


def parse(reply: Reply) -> Parsed:
    _, miss = query_status(reply.body)
    if miss is not None:
        return miss
    data = as_dict(reply.body)
    if reply.ioc_type in ("md5", "sha256"):
        return _payload(data)
    urls = [u for u in as_list(data.get("urls")) if isinstance(u, dict)] if "urls" in data else [dict(data)]
    online = any(as_str(u.get("url_status")) == "online" for u in urls)
    added = [t for t in (as_time(u.get("date_added")) for u in urls) if t]
    last_online = [t for t in (as_time(u.get("last_online")) for u in urls) if t]
    first = as_time(data.get("firstseen")) or (min(added) if added else None)
    evidence = Evidence(
        tags=strings([*(t for u in urls for t in as_list(u.get("tags"))), *_abused_legit(data)]),
        malware_families=strings(p.get("signature") for p in as_list(data.get("payloads")) if isinstance(p, dict)),
        first_seen=first,
        last_seen=max(last_online + added) if (last_online or added) else first,
        references=strings([data.get("urlhaus_reference")] + [u.get("urlhaus_reference") for u in urls[:10]]),
        raw_summary=bounded_summary(
            {
                "url_count": as_int(data.get("url_count")) if "url_count" in data else len(urls),
                "online": sum(1 for u in urls if as_str(u.get("url_status")) == "online"),
                "threats": strings(u.get("threat") for u in urls),
                "blacklists": data.get("blacklists"),
                "urls": [{"url": as_str(u.get("url"), 200), "status": u.get("url_status"), "larted": u.get("larted")} for u in urls[:10]],
                "reporters": strings(u.get("reporter") for u in urls),
            }
        ),
    )
    return Parsed(Verdict.MALICIOUS, 100 if online else 75, evidence)


def _abused_legit(data: Mapping[str, Any]) -> list[str]:
    """Tags for a host a blocklist names a legitimate site abused to serve malware or phishing (Spamhaus DBL's
    `abused_legit_*`, in the host answer's `blacklists`): blocking the whole domain would block the site too."""
    lists = data.get("blacklists")
    listed = [f"{name}:{value}" for name, value in lists.items() if "abused_legit" in str(value)] if isinstance(lists, dict) else []
    return ["abused-legit", *(t.replace("_dbl:", "-dbl:") for t in listed)] if listed else []


def _payload(data: Any) -> Parsed:
    urls = [u for u in as_list(data.get("urls")) if isinstance(u, dict)]
    evidence = Evidence(
        malware_families=strings([data.get("signature")]),
        tags=strings([data.get("file_type")]),
        first_seen=as_time(data.get("firstseen")),
        last_seen=as_time(data.get("lastseen")),
        references=strings(u.get("urlhaus_reference") for u in urls[:10]),
        raw_summary=bounded_summary(
            {
                "sha256_hash": data.get("sha256_hash"),
                "file_size": as_int(data.get("file_size")),
                "file_type": data.get("file_type"),
                "url_count": as_int(data.get("url_count")),
                "virustotal": data.get("virustotal"),
                "urls": [as_str(u.get("url"), 200) for u in urls[:10]],
            }
        ),
    )
    return Parsed(Verdict.MALICIOUS, 100, evidence)


SOURCE = Source(
    name="urlhaus",
    title="URLhaus",
    base_url="https://urlhaus-api.abuse.ch/v1",
    auth_header="Auth-Key",
    requests={
        "url": Request("POST", "/url/", form={"url": "{value}"}),
        "domain": _HOST,
        "ipv4": _HOST,
        "md5": Request("POST", "/payload/", form={"md5_hash": "{value}"}),
        "sha256": Request("POST", "/payload/", form={"sha256_hash": "{value}"}),
    },
    parse=parse,
    reliability=0.8,
    free_tier=FreeTier(note="fair use, no published limit; free Auth-Key from auth.abuse.ch"),
    docs="https://urlhaus-api.abuse.ch/",
)
