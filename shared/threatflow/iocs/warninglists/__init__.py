"""MISP warninglists: flag known-benign indicator values with the lists that hold them.

A warninglist (the MISP `misp-warninglists` format) is a folder holding a
`list.json`: name, description, type, list (the entries), matching_attributes
(the MISP attribute types it applies to) and version. ThreatFlow names a list by
its folder (`rfc1918`, `public-dns-v4`): a short, stable key stored on the IoC.

How the lists reach a function:

    WARNINGLISTS_SOURCE (a directory, or gs://bucket/prefix)
      -> sync-warninglists job (`sync`): validate every list, report and skip bad ones
      -> gs://<BUCKET_MODELS>/warninglists/snapshot.json (one compact blob)
      -> the runtime's "warninglists" snapshot (`snapshot_loader`, threatflow.platform.snapshots):
         loaded once per instance, refreshed every WARNINGLISTS_REFRESH_SECONDS, last good kept

Matching follows MISP, per list type:

    cidr       the IP is inside a listed network; a CIDR indicator when wholly inside
    hostname   the value or any parent domain is listed (google.com flags mail.google.com)
    string     exact; case-insensitive for domains, hashes and e-mail addresses
    substring  a listed entry occurs in the value
    regex      a listed pattern is found in the value

A list applies to the IoC types its matching_attributes map onto. A URL is also
checked by its host, and an e-mail address by its domain, against the lists that
apply to domains (or IPs, for an IP host).

The modules, in the order data flows through them:

    lists.py      the list model (Warninglist, ListType, ListProblem), validating a list.json
    compiling.py  lists -> per-IoC-type lookup steps (merged IP ranges, keyed strings, tries)
    matching.py   WarninglistIndex: `match(ioc_type, value)`, `describe()`, `snapshot()`
    loading.py    from a directory, a bucket or the snapshot; the sync job; the runtime loader
"""

from threatflow.iocs.warninglists.compiling import url_host
from threatflow.iocs.warninglists.lists import (
    CIDR,
    DOMAIN,
    EMAIL,
    FILE_PATH,
    IOC_TYPES,
    IPV4,
    IPV6,
    MD5,
    SHA1,
    SHA256,
    URL,
    ListProblem,
    ListType,
    Warninglist,
    parse_list,
    parse_network,
)
from threatflow.iocs.warninglists.loading import (
    SNAPSHOT_NAME,
    index_from_sources,
    load_bucket,
    load_directory,
    load_snapshot,
    load_source,
    parse_gs_url,
    snapshot_loader,
    sync,
)
from threatflow.iocs.warninglists.matching import SNAPSHOT_FORMAT, Matcher, WarninglistIndex

__all__ = [
    "CIDR",
    "DOMAIN",
    "EMAIL",
    "FILE_PATH",
    "IOC_TYPES",
    "IPV4",
    "IPV6",
    "MD5",
    "SHA1",
    "SHA256",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_NAME",
    "URL",
    "ListProblem",
    "ListType",
    "Matcher",
    "Warninglist",
    "WarninglistIndex",
    "index_from_sources",
    "load_bucket",
    "load_directory",
    "load_snapshot",
    "load_source",
    "parse_gs_url",
    "parse_list",
    "parse_network",
    "snapshot_loader",
    "sync",
    "url_host",
]
