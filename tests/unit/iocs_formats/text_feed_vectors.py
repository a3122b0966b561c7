"""Public text feeds in the shapes they are downloaded in, a few lines each, and what a text import must store.

Each vector names the feed its line shapes come from (as published, and as public parsers and their tests quote
them); the values are ours (documentation or example names where the real list holds real ones). `expected` is
every (type, value) the import must yield, in order; anything else it yields is wrong (a header's URL, a sink
address, a relay fingerprint taken for a file hash, an allowlist entry, a private range). Scored by
tests/perf/score_text_feeds.py, asserted by test_text_feeds.py.
"""

from __future__ import annotations

from typing import NamedTuple


class FeedVector(NamedTuple):
    name: str
    origin: str  # where the line shapes come from
    defect: str  # the class of fault the vector was written for
    text: str
    expected: list[tuple[str, str]]


VECTORS: list[FeedVector] = [
    # -- comment headers ------------------------------------------------------------------------------------------
    FeedVector(
        "spamhaus-drop",
        "www.spamhaus.org/drop/drop.txt: ';' header naming its own URL, then 'CIDR ; SBLnnn'",
        "header",
        "; Spamhaus DROP List 2024/01/06 - (c) 2024 The Spamhaus Project SLU\n"
        "; https://www.spamhaus.org/drop/drop.txt\n"
        "; Last-Modified: Fri, 05 Jan 2024 11:52:58 GMT\n"
        "; Expires: Sat, 06 Jan 2024 12:10:02 GMT\n"
        "1.10.16.0/20 ; SBL256894\n"
        "1.19.0.0/16 ; SBL434604\n",
        [("cidr", "1.10.16.0/20"), ("cidr", "1.19.0.0/16")],
    ),
    FeedVector(
        "spamhaus-dropv6",
        "www.spamhaus.org/drop/dropv6.txt: the IPv6 list, same header",
        "header",
        "; Spamhaus DROPv6 List 2024/01/06 - (c) 2024 The Spamhaus Project SLU\n"
        "; https://www.spamhaus.org/drop/dropv6.txt\n"
        "2001:678:738::/48 ; SBL270738\n",
        [("cidr", "2001:678:738::/48")],
    ),
    FeedVector(
        "feodo-ipblocklist-txt",
        "feodotracker.abuse.ch/downloads/ipblocklist_recommended.txt: '#' banner naming abuse.ch and its site",
        "header",
        "################################################################\n"
        "# abuse.ch Feodotracker Botnet C2 IP Blocklist (Recommended)   #\n"
        "# Last updated: 2026-11-26 10:00:00 UTC                        #\n"
        "#                                                              #\n"
        "# For more information please visit https://feodotracker.abuse.ch/ #\n"
        "################################################################\n"
        "#\n"
        "# DstIP\n"
        "103.141.137.122\n"
        "104.168.44.129\n"
        "#\n"
        "# END 2 entries\n",
        [("ipv4", "103.141.137.122"), ("ipv4", "104.168.44.129")],
    ),
    FeedVector(
        "urlhaus-text",
        "urlhaus.abuse.ch/downloads/text_online/: banner with the terms URL and 'urlhaus [at] abuse.ch'",
        "header",
        "################################################################\n"
        "# abuse.ch URLhaus Database Dump (Text - online URLs only)     #\n"
        "# Last updated: 2026-11-26 10:05:20 (UTC)                      #\n"
        "#                                                              #\n"
        "# Terms Of Use: https://urlhaus.abuse.ch/api/                  #\n"
        "# For questions please contact urlhaus [at] abuse.ch           #\n"
        "################################################################\n"
        "#\n"
        "http://182.126.120.150:58801/i\n"
        "http://malware-drop.example.com/a.exe\n",
        [("url", "http://182.126.120.150:58801/i"), ("url", "http://malware-drop.example.com/a.exe")],
    ),
    FeedVector(
        "firehol-netset",
        "iplists.firehol.org *.netset (update-ipsets.sh header: Maintainer URL, the list's page)",
        "header",
        "#\n# firehol_abusers_1d\n#\n# ipv4 hash:net ipset\n#\n"
        "# Maintainer      : FireHOL\n"
        "# Maintainer URL  : http://iplists.firehol.org/\n"
        "# List source URL :\n"
        "# Source File Date: Thu Sep 10 23:59:49 UTC 2026\n#\n"
        "#  http://iplists.firehol.org/?ipset=firehol_abusers_1d\n#\n"
        "1.10.16.0/20\n"
        "5.188.10.179\n",
        [("cidr", "1.10.16.0/20"), ("ipv4", "5.188.10.179")],
    ),
    FeedVector(
        "stevenblack-header",
        "StevenBlack/hosts: its '#' header names the file's and the project's URLs",
        "header",
        "# Title: StevenBlack/hosts\n#\n"
        "# Fetch the latest version of this file: https://raw.githubusercontent.com/StevenBlack/hosts/master/hosts\n"
        "# Project home page: https://github.com/StevenBlack/hosts\n"
        "# ===============================================================\n\n"
        "0.0.0.0 ads.tracker-example.com\n"
        "0.0.0.0 telemetry.badvendor-example.net\n",
        [("domain", "ads.tracker-example.com"), ("domain", "telemetry.badvendor-example.net")],
    ),
    FeedVector(
        "plain-list-inline-comment",
        "hand-kept blocklists (pfBlockerNG, ipset files): 'value # note', the note naming a reference URL",
        "header",
        "198.51.100.23 # reported by https://blog.example.org/2026/11/c2\n198.51.100.24\t# same campaign\n",
        [("ipv4", "198.51.100.23"), ("ipv4", "198.51.100.24")],
    ),
    # -- hosts files ----------------------------------------------------------------------------------------------
    FeedVector(
        "stevenblack-preamble",
        "StevenBlack/hosts: localhost preamble, '0.0.0.0 0.0.0.0', then one sink line per blocked name",
        "sink",
        "127.0.0.1 localhost\n127.0.0.1 localhost.localdomain\n127.0.0.1 local\n255.255.255.255 broadcasthost\n"
        "::1 localhost\n::1 ip6-localhost\nfe80::1%lo0 localhost\nff00::0 ip6-localnet\nff02::1 ip6-allnodes\n"
        "0.0.0.0 0.0.0.0\n\n# Start StevenBlack\n"
        "0.0.0.0 1493361689.rsc.cdn77.org\n"
        "0.0.0.0 30-day-change.com\n",
        [("domain", "1493361689.rsc.cdn77.org"), ("domain", "30-day-change.com")],
    ),
    FeedVector(
        "hosts-127",
        "older hosts blocklists (MVPS, someonewhocares): 127.0.0.1 as the sink, names after tabs, inline notes",
        "sink",
        "127.0.0.1\tads.tracker-example.com\t# ad server\n127.0.0.1  malware-drop.example.net\n",
        [("domain", "ads.tracker-example.com"), ("domain", "malware-drop.example.net")],
    ),
    FeedVector(
        "hosts-several-names",
        "hosts(5): several names after one address; '0' and '::' as sinks (Pi-hole, AdAway)",
        "sink",
        "0.0.0.0 one.tracker-example.com two.tracker-example.com\n0 three.tracker-example.com\n:: four.tracker-example.com\n",
        [
            ("domain", "one.tracker-example.com"),
            ("domain", "two.tracker-example.com"),
            ("domain", "three.tracker-example.com"),
            ("domain", "four.tracker-example.com"),
        ],
    ),
    # -- Tor ------------------------------------------------------------------------------------------------------
    FeedVector(
        "tor-exit-addresses",
        "check.torproject.org/exit-addresses: ExitNode <fingerprint>, Published, LastStatus, ExitAddress <ip> <time>",
        "tor",
        "ExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\n"
        "Published 2026-11-26 10:18:36\nLastStatus 2026-11-26 11:00:00\n"
        "ExitAddress 162.247.74.201 2026-11-26 11:02:09\n"
        "ExitNode 0111BA9B604669E636FFD5B503F382A4B7AD6E80\n"
        "Published 2026-11-26 06:31:12\nLastStatus 2026-11-26 07:00:00\n"
        "ExitAddress 176.10.99.200 2026-11-26 07:12:44\n",
        [("ipv4", "162.247.74.201"), ("ipv4", "176.10.99.200")],
    ),
    FeedVector(
        "tor-bulk-exit-list",
        "check.torproject.org/torbulkexitlist: one address a line",
        "tor",
        "185.220.101.1\n185.220.101.2\n",
        [("ipv4", "185.220.101.1"), ("ipv4", "185.220.101.2")],
    ),
    # -- DNS blocklist syntaxes -----------------------------------------------------------------------------------
    FeedVector(
        "dnsmasq",
        "dnsmasq blocklists (notracking, oisd dnsmasq): address=/name/0.0.0.0, address=/name/#, server=/name/, local=/name/",
        "dns-syntax",
        "# dnsmasq format\naddress=/ads.tracker-example.com/0.0.0.0\naddress=/telemetry.badvendor-example.net/#\n"
        "server=/malware-drop.example.org/\nlocal=/phish-login.example.info/\n",
        [
            ("domain", "ads.tracker-example.com"),
            ("domain", "telemetry.badvendor-example.net"),
            ("domain", "malware-drop.example.org"),
            ("domain", "phish-login.example.info"),
        ],
    ),
    FeedVector(
        "adblock-dns",
        "AdGuard DNS / hagezi adblock lists: [Adblock Plus] header, '!' comments, ||name^, @@ exceptions",
        "dns-syntax",
        "[Adblock Plus 2.0]\n! Title: Some DNS blocklist\n! Homepage: https://github.com/someone/lists\n! Expires: 1 day\n"
        "||ads.tracker-example.com^\n||telemetry.badvendor-example.net^$third-party\n@@||cdn.goodvendor-example.org^\n",
        [("domain", "ads.tracker-example.com"), ("domain", "telemetry.badvendor-example.net")],
    ),
    FeedVector(
        "rpz-zone",
        "BIND response-policy zones: $TTL, SOA/NS, ';' comments, 'name CNAME .', '*.name CNAME .', rpz-passthru",
        "dns-syntax",
        "$TTL 300\n@ IN SOA localhost. hostmaster.rpz-feed.example.org. (2026112601 3600 900 604800 300)\n"
        "  IN NS localhost.\n; blocked by feed, see https://rpz-feed.example.org/about\n"
        "ads.tracker-example.com CNAME .\n*.ads.tracker-example.com CNAME .\n"
        "malware-drop.example.net 300 IN CNAME .\n"
        "cdn.goodvendor-example.org CNAME rpz-passthru.\n",
        [("domain", "ads.tracker-example.com"), ("domain", "malware-drop.example.net")],
    ),
    FeedVector(
        "unbound-local-zone",
        'unbound blocklists: server:, local-zone: "name" always_nxdomain | static; transparent is an exception',
        "dns-syntax",
        'server:\nlocal-zone: "ads.tracker-example.com" always_nxdomain\nlocal-zone: "malware-drop.example.net" static\n'
        'local-zone: "cdn.goodvendor-example.org" transparent\n',
        [("domain", "ads.tracker-example.com"), ("domain", "malware-drop.example.net")],
    ),
    # -- IDS rules ------------------------------------------------------------------------------------------------
    FeedVector(
        "et-compromised-rules",
        "rules.emergingthreats.net emerging-compromised.rules: address lists in the header, a reference:url option",
        "rules",
        "# Emerging Threats\n#\n# This distribution may contain rules under two different licenses.\n"
        'alert ip [103.251.167.20,104.152.52.31,109.70.100.1] any -> $HOME_NET any (msg:"ET COMPROMISED Known '
        'Compromised or Hostile Host Traffic group 1"; reference:url,doc.emergingthreats.net/bin/view/Main/CompromisedHost;'
        " threshold: type limit, track by_src, seconds 60, count 1; classtype:misc-attack; sid:2500000; rev:5000;"
        " metadata:affected_product Any, attack_target Any, deployment Perimeter, tag COMPROMISED, signature_severity Major,"
        " created_at 2011_04_28, updated_at 2026_11_26;)\n",
        [("ipv4", "103.251.167.20"), ("ipv4", "104.152.52.31"), ("ipv4", "109.70.100.1")],
    ),
    # -- private ranges ---------------------------------------------------------------------------------------------
    FeedVector(
        "firehol-level1-bogons",
        "iplists.firehol.org firehol_level1.netset: the bogons (0/8, 10/8, 127/8, 192.168/16, 224/3) beside attackers",
        "private",
        "#\n# firehol_level1\n#\n0.0.0.0/8\n1.10.16.0/20\n10.0.0.0/8\n100.64.0.0/10\n127.0.0.0/8\n169.254.0.0/16\n"
        "172.16.0.0/12\n192.168.0.0/16\n224.0.0.0/3\n5.188.10.179\n",
        [("cidr", "1.10.16.0/20"), ("ipv4", "5.188.10.179")],
    ),
    # -- second round: more public list shapes -------------------------------------------------------------------
    FeedVector(
        "dshield-block",
        "feeds.dshield.org/block.txt: tab-delimited start, end, prefix length, attacks, name, country, abuse contact",
        "columns",
        "#\n#   DShield.org Recommended Block List\n#\n#    Columns (tab delimited):\n#    (7) contact email address\n#\n"
        "Start\tEnd\tNetblock\tAttacks\tName\tCountry\temail\n"
        "124.232.156.0\t124.232.156.255\t24\t6286\tCHINANET-BACKBONE No.31,Jin-rong Street\tCN\tabuse@chinanet-example.cn\n"
        "209.126.136.0\t209.126.136.255\t24\t2769\tCalifornia Regional Internet, Inc.\tUS\tabuse@cari-example.net\n# END\n",
        [("cidr", "124.232.156.0/24"), ("cidr", "209.126.136.0/24")],
    ),
    FeedVector(
        "squid-dstdomain",
        "Squid dstdomain ACL lists (squidblacklist, Shallalist exports): a leading dot for the name and its subdomains",
        "wildcard",
        ".ads.tracker-example.com\n.malware-drop.example.net\n",
        [("domain", "ads.tracker-example.com"), ("domain", "malware-drop.example.net")],
    ),
    FeedVector(
        "wildcard-domains",
        "hagezi/dns-blocklists wildcard/*.txt and Pi-hole regex-free wildcard lists: '*.name' a line",
        "wildcard",
        "# Title: Threat Intelligence Feeds (wildcard)\n# Homepage: https://github.com/hagezi/dns-blocklists\n"
        "*.ads.tracker-example.com\n*.malware-drop.example.net\n",
        [("domain", "ads.tracker-example.com"), ("domain", "malware-drop.example.net")],
    ),
    FeedVector(
        "csv-rows-with-banner",
        "C2 domain lists of 'name,description,date' rows under a '#' banner (Bambenek's OSINT master lists' shape)",
        "columns",
        "#############################################################\n"
        "## Master Feed of known, active and non-sinkholed C&Cs domain names\n"
        "## Usage: https://osint.feed-example.com/license.txt\n"
        "#############################################################\n"
        "ajbbvxetqwsz.com,Domain used by Cryptolocker - Flashback DGA for 16 Dec 2016,2016-12-16 00:05\n"
        "bdaxtkyqisxd.com,Domain used by Cryptolocker - Flashback DGA for 16 Dec 2016,2016-12-16 00:05\n",
        [("domain", "ajbbvxetqwsz.com"), ("domain", "bdaxtkyqisxd.com")],
    ),
    FeedVector(
        "csv-rows-with-reference-urls",
        "osint.bambenekconsulting.com/feeds/c2-ipmasterlist.txt and c2-dommasterlist.txt as published: "
        "'value,description,date,manual URL' rows (the fourth column, each family's manual page, was left out above)",
        "columns",
        "#############################################################\n"
        "## Master Feed of known, active and non-sinkholed C&Cs IP \n"
        "## Feed Provided By: John Bambenek of Bambenek Consulting\n"
        "## For more information on this feed go to: \n"
        "## http://osint.feed-example.com/manual/c2-ipmasterlist.txt\n"
        "#############################################################\n"
        "198.51.100.19,IP used by banjori C&C,2019-08-20 09:11,http://osint.feed-example.com/manual/banjori.txt\n"
        "203.0.113.9,IP used by pykspa C&C,2019-08-20 09:11,http://osint.feed-example.com/manual/pykspa.txt\n"
        "ajbbvxetqwsz.com,Domain used by Cryptolocker - Flashback DGA for 16 Dec 2016,2016-12-16 00:05,"
        "http://osint.feed-example.com/manual/cl.txt\n",
        [("ipv4", "198.51.100.19"), ("ipv4", "203.0.113.9"), ("domain", "ajbbvxetqwsz.com")],
    ),
    FeedVector(
        "csv-rows-whose-first-field-is-a-dotted-date-score-or-version",
        "comma rows keyed by a date written with dots, a score or a version, the indicator in a later field "
        "(each first field looks like a dotted name; the rows gave nothing once only the first field was read)",
        "columns",
        "# seen, address, note\n"
        "27.11.2026, 198.51.100.7, Emotet C2 on 443\n"
        "0.95, evil-one.example.com, Emotet loader host\n"
        "1.2.3, 203.0.113.9, beacon of cobalt strike 4\n",
        [("ipv4", "198.51.100.7"), ("domain", "evil-one.example.com"), ("ipv4", "203.0.113.9")],
    ),
    FeedVector(
        "csv-rows-of-indicators-and-their-details",
        "comma rows holding more indicators than the first field: 'address, name' pairs, a name and a URL on it, "
        "Bambenek's full C2 master list ('domain,ip|ip,ns|ns,ns ip,description,manual URL'): only the manual "
        "page (a URL on another host) is a detail",
        "columns",
        "# pairs\n"
        "198.51.100.7, evil-one.example.com, seen 2026-11-20\n"
        "evil-two.example.net, http://evil-two.example.net/gate.php, Emotet gate\n"
        "0fb1e8h4.com,185.38.148.26|185.38.148.27,ns1.evilns-example.com,91.200.12.1,Master Indicator Feed for "
        "banjori non-sinkholed domains,http://osint.feed-example.com/manual/banjori.txt\n",
        [
            ("ipv4", "198.51.100.7"),
            ("domain", "evil-one.example.com"),
            ("domain", "evil-two.example.net"),
            ("url", "http://evil-two.example.net/gate.php"),
            ("domain", "0fb1e8h4.com"),
            ("ipv4", "185.38.148.26"),
            ("ipv4", "185.38.148.27"),
            ("domain", "ns1.evilns-example.com"),
            ("ipv4", "91.200.12.1"),
        ],
    ),
    FeedVector(
        "urlhaus-hostfile",
        "urlhaus.abuse.ch/downloads/hostfile/: abuse.ch banner, then '127.0.0.1<TAB>name'",
        "control",
        "################################################################\n"
        "# abuse.ch URLhaus Host file                                   #\n"
        "# Terms Of Use: https://urlhaus.abuse.ch/api/                  #\n"
        "# For questions please contact urlhaus [at] abuse.ch           #\n"
        "################################################################\n#\n"
        "127.0.0.1\t123evdenevenakliyat.com\n127.0.0.1\t1home.az\n",
        [("domain", "123evdenevenakliyat.com"), ("domain", "1home.az")],
    ),
    FeedVector(
        "alienvault-reputation",
        "reputation.alienvault.com/reputation.data: 'ip#reliability#risk#type#country#city#lat,lon#n'",
        "control",
        "46.4.123.15#4#2#Malicious Host#DE##51.0,9.0#3\n222.136.71.19#3#2#Scanning Host#CN#Zhengzhou#34.6836013794,113.532501221#11\n",
        [("ipv4", "46.4.123.15"), ("ipv4", "222.136.71.19")],
    ),
    FeedVector(
        "ip-port-list",
        "Feodo Tracker's older ipblocklist and ThreatFox's ip:port exports: 'address:port' a line",
        "control",
        "# ThreatFox IOCs: ip:port\n185.4.3.2:443\n91.240.118.17:8080\n",
        [("ipv4", "185.4.3.2"), ("ipv4", "91.240.118.17")],
    ),
    # -- third round: shapes met when checking the fixes against other public parsers' tests ---------------------
    FeedVector(
        "spamhaus-drop-json",
        "www.spamhaus.org/drop/drop_v4.json (DROP's format since 2024): one JSON object a line, a metadata line last",
        "json-lines",
        '{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}\n'
        '{"cidr":"2.56.192.0/22","sblid":"SBL459831","rir":"ripencc"}\n'
        '{"type":"metadata","timestamp":1727136000,"size":2,"records":2,"copyright":"(c) 2024 The Spamhaus Project SLU",'
        '"terms":"https://www.spamhaus.org/drop/terms/"}\n',
        [("cidr", "1.10.16.0/20"), ("cidr", "2.56.192.0/22")],
    ),
    FeedVector(
        "hosts-with-a-redirect",
        "hosts-file blocklists with a pinned line (parsers' tests: 'a line pointing at a routable address is a redirect')",
        "sink",
        "0.0.0.0 ads.tracker-example.com\n93.184.216.34 redirect.tracker-example.com\n",
        [("domain", "ads.tracker-example.com"), ("domain", "redirect.tracker-example.com")],
    ),
    FeedVector(
        "domains-upper-case",
        "domain lists written in capitals with the root's dot (parsers' tests of HaGeZi-style lists: 'UPPER.Example.COM.')",
        "case",
        "# Title: Threat Intelligence Feeds\nplain.tracker-example.com\nUPPER.Tracker-Example.COM.\n",
        [("domain", "plain.tracker-example.com"), ("domain", "upper.tracker-example.com")],
    ),
    FeedVector(
        "adblock-regex-rule",
        "AdGuard DNS filter: '/regex/' rules beside ||name^ rules",
        "dns-syntax",
        "! Title: AdGuard DNS filter\n||ads.tracker-example.com^\n/^ad[0-9]+\\.tracker-example\\.io$/\n",
        [("domain", "ads.tracker-example.com")],
    ),
    FeedVector(
        "ids-rule-negated-group",
        "Suricata rules: a negated address group ('![a,b]') is every address but those",
        "rules",
        'alert tcp ![103.251.167.20,104.152.52.31] any -> [198.51.100.10,198.51.100.11] 443 (msg:"x"; sid:1;)\n',
        [("ipv4", "198.51.100.10"), ("ipv4", "198.51.100.11")],
    ),
    FeedVector(
        "address-ranges",
        "range lists ('start-end', 'start - end'): firewall exports and I-Blocklist's ranges; aligned blocks are CIDRs",
        "ranges",
        "# ranges\n1.10.16.0-1.10.31.255\n5.188.10.0 - 5.188.10.255\n45.9.20.0-45.9.20.127\n",
        [("cidr", "1.10.16.0/20"), ("cidr", "5.188.10.0/24"), ("cidr", "45.9.20.0/25")],
    ),
    FeedVector(
        "p2p-ranges",
        "PeerGuardian .p2p lists (I-Blocklist): 'description:start-end'",
        "ranges",
        "# PeerGuardian\nBad Org Ltd:1.10.16.0-1.10.31.255\nOther Bad Org:5.188.10.0-5.188.10.255\n",
        [("cidr", "1.10.16.0/20"), ("cidr", "5.188.10.0/24")],
    ),
    # -- shapes that already worked, kept so that a change cannot break them ---------------------------------------
    FeedVector(
        "et-compromised-ips",
        "rules.emergingthreats.net/blockrules/compromised-ips.txt: one address a line, no header",
        "control",
        "103.251.167.20\n104.152.52.31\n",
        [("ipv4", "103.251.167.20"), ("ipv4", "104.152.52.31")],
    ),
    FeedVector(
        "blocklist-de",
        "lists.blocklist.de/lists/all.txt: IPv4 and IPv6 addresses, one a line",
        "control",
        "2.57.122.201\n2001:41d0:8:e8ad::1\n",
        [("ipv4", "2.57.122.201"), ("ipv6", "2001:41d0:8:e8ad::1")],
    ),
    FeedVector(
        "openphish",
        "openphish.com/feed.txt: one URL a line",
        "control",
        "https://secure-login.bank-example.com.phish-host.net/verify/\nhttp://paypa1-example.com/signin/\n",
        [("url", "https://secure-login.bank-example.com.phish-host.net/verify/"), ("url", "http://paypa1-example.com/signin/")],
    ),
    FeedVector(
        "defanged-report",
        "analyst reports (the defangs of ioc-finder / iocextract test data): hxxp, [.], (.) in prose",
        "control",
        "# Incident notes\nThe implant beaconed to hxxp://evil[.]example[.]com/gate.php, then to 198.51.100[.]7 and "
        "staged on evil(.)example(.)org.\n",
        [("url", "http://evil.example.com/gate.php"), ("ipv4", "198.51.100.7"), ("domain", "evil.example.org")],
    ),
    FeedVector(
        "markdown-report-with-list",
        "a report in Markdown: a '#' title, prose, then a list of indicators",
        "control",
        "# Campaign notes\n\nThe loader fetched its second stage from hxxps://cdn-drop[.]example[.]net/s2.bin and "
        "reported to 203.0.113.55 over HTTPS; the operators reused their 2024 infrastructure, described below.\n\n"
        "## Indicators\n\n- loader-c2.example.com\n- 203.0.113.56\n",
        [
            ("url", "https://cdn-drop.example.net/s2.bin"),
            ("ipv4", "203.0.113.55"),
            ("domain", "loader-c2.example.com"),
            ("ipv4", "203.0.113.56"),
        ],
    ),
]
