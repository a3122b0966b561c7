"""Whether a name that looks like a host is one: file names, code and version numbers are not."""

from __future__ import annotations

import re

from threatflow.iocs.normalise import ALTERNATIVE_ROOTS

_ALL_UPPER_OR_LOWER = re.compile(r"[^A-Z]*|[^a-z]*")
# A dot written with a bracket, backslash or caret next to it, or a spelled-out dot: the author meant a host.
# Not ")." alone: "Archive (1).zip" is a file name whose "(" was stripped as punctuation.
_DEFANG_EVIDENCE = re.compile(
    r"[\[({\\^]\.|\.[\])}\[({]|[\]}]\.|\[\]|[\[({<]\s*dot|dot\s*[\])}>]|\[-\]|[\[\](){}],|,[\[\](){}]", re.IGNORECASE
)

# Extensions whose bare "name.ext" is far more often a file than a host. Only
# the ones that are also top-level domains change anything (the others already
# fail the Public Suffix List check); they are listed with their neighbours to
# keep the rule obvious. Deliberately absent, because hosts under them are common
# in reports: com (DOS .com files), ai, cc, ws, ms, ml, pl, sc, bz.
# fmt: off
_FILE_EXTENSIONS = frozenset({
    "zip", "mov", "py", "sh", "rs", "md", "ps", "so", "cab", "one", "pub", "app", "run", "jar", "exe", "dll", "sys",
    "scr", "cpl", "ocx", "drv", "bat", "cmd", "ps1", "psm1", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "lnk", "msi",
    "msp", "iso", "img", "vhd", "vhdx", "dmg", "pkg", "deb", "rpm", "apk", "ipa", "doc", "docx", "docm", "dot", "dotm",
    "xls", "xlsx", "xlsm", "xlsb", "ppt", "pptx", "pptm", "rtf", "pdf", "txt", "csv", "log", "ini", "cfg", "conf", "json",
    "xml", "yaml", "yml", "html", "htm", "php", "asp", "aspx", "jsp", "css", "png", "jpg", "jpeg", "gif", "bmp", "ico",
    "svg", "mp3", "mp4", "wav", "avi", "mkv", "7z", "rar", "tar", "gz", "tgz", "bz2", "xz", "dat", "bin", "tmp", "bak",
    "db", "sqlite", "key", "pem", "crt", "cer", "der", "p12", "pfx", "class", "elf", "dylib", "ko", "chm", "inf", "reg",
    "sct", "xll", "wll", "iqy", "slk",
})
# fmt: on
# Names that look like domains but are nearly always technology names in prose.
_NOT_DOMAINS = frozenset(("asp.net", "vb.net", "ado.net", "node.js", "vue.js", "next.js", "react.js"))


def plausible_host(host: str, original: str, fanged: str) -> bool:
    """Whether `host` (as refanged into `fanged` from `original`) is meant as a host name."""
    if original != fanged and _DEFANG_EVIDENCE.search(original):
        return True  # defanged on purpose: the author meant a host
    labels = host.rstrip(".").split(".")
    tld = labels[-1]
    if len(labels) == 2 and tld.lower() in _FILE_EXTENSIONS:
        return False
    # "kernel32.lib", "a 64.bit build", "REG.ctrl.bit", "org.apache.commons.lib": at any depth, a bare name under
    # an alternative root is a host only when defanged (above); a URL's host never comes here.
    if tld.lower() in ALTERNATIVE_ROOTS:
        return False
    if host.lower() in _NOT_DOMAINS:
        return False
    # "System.IO", "end.The": a mixed-case name is code or a missing space.
    return not (tld != tld.lower() and not _ALL_UPPER_OR_LOWER.fullmatch(host))
