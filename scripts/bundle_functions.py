"""Build one deployable zip per function: `functions/<name>/` plus the shared package.

Cloud Functions installs `requirements.txt` but not local packages, so each
bundle carries `threatflow/` beside `main.py`. A bundle is named after a hash of
its content, `dist/<name>-<sha256[:12]>.zip`, and the object name
`bundles/<name>-<hash>.zip` goes to `dist/bundles.auto.tfvars.json` as the
Terraform variable `function_bundles`: a code change gives a new object name,
and so a redeploy; an unchanged function keeps its name and is left alone.

Zips are deterministic (sorted entries, fixed timestamps and permissions), so
bundling twice gives identical bytes. The name hashes the entries themselves
(path and content), not the compressed bytes, so it does not depend on the zlib
version of the machine that builds it.

Standard library only: Cloud Build runs it before any dependency is installed.

    python scripts/bundle_functions.py --out dist/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OBJECT_PREFIX = "bundles/"
TFVARS_NAME = "bundles.auto.tfvars.json"
HASH_LENGTH = 12
# 1980-01-01 00:00:00, the earliest time a zip entry can hold.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--
EXCLUDED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
REQUIRED_FILES = ("main.py", "requirements.txt")


class BundleError(Exception):
    """A function folder cannot be bundled; the message names the folder."""


@dataclass(frozen=True)
class Bundle:
    function: str
    path: Path
    digest: str
    files: int

    @property
    def object_name(self) -> str:
        return f"{OBJECT_PREFIX}{self.path.name}"


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in relative.parts):
            continue
        if path.is_file() and not path.name.endswith(EXCLUDED_SUFFIXES):
            yield path


def _entries(function_dir: Path, shared_package: Path) -> dict[str, bytes]:
    """Archive name -> content: the function folder at the root, the package under its own name."""
    entries = {path.relative_to(function_dir).as_posix(): path.read_bytes() for path in _files(function_dir)}
    package_prefix = shared_package.name
    for path in _files(shared_package):
        name = f"{package_prefix}/{path.relative_to(shared_package).as_posix()}"
        if name in entries:
            raise BundleError(f"{function_dir}: {name} would shadow the shared package's file of the same name")
        entries[name] = path.read_bytes()
    return entries


def content_digest(entries: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(entries[name]).digest())
    return digest.hexdigest()


def _write_zip(path: Path, entries: dict[str, bytes]) -> None:
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
            info.external_attr = FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode above is honoured everywhere
            archive.writestr(info, entries[name], compresslevel=9)
    tmp.replace(path)


def function_dirs(functions_root: Path) -> list[Path]:
    """Every `functions/<name>/` folder that holds a main.py, by name."""
    if not functions_root.is_dir():
        raise BundleError(f"functions folder not found: {functions_root}")
    return sorted(p for p in functions_root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and (p / "main.py").is_file())


def bundle_function(function_dir: Path, shared_package: Path, out_dir: Path) -> Bundle:
    missing = [name for name in REQUIRED_FILES if not (function_dir / name).is_file()]
    if missing:
        raise BundleError(f"{function_dir}: missing {', '.join(missing)}")
    if not (shared_package / "__init__.py").is_file():
        raise BundleError(f"shared package not found: {shared_package}/__init__.py")
    entries = _entries(function_dir, shared_package)
    digest = content_digest(entries)
    name = function_dir.name
    path = out_dir / f"{name}-{digest[:HASH_LENGTH]}.zip"
    own_bundle = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{{HASH_LENGTH}}}\.zip$")
    for stale in out_dir.iterdir():
        if stale != path and own_bundle.match(stale.name):
            stale.unlink()  # an earlier build of this function; keeps dist/ to one bundle each
    _write_zip(path, entries)
    return Bundle(function=name, path=path, digest=digest, files=len(entries))


def bundle_all(*, out_dir: Path, functions_root: Path, shared_package: Path) -> list[Bundle]:
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = function_dirs(functions_root)
    if not dirs:
        raise BundleError(f"{functions_root}: no function folders with a main.py")
    bundles = [bundle_function(d, shared_package, out_dir) for d in dirs]
    tfvars = {"function_bundles": {b.function: b.object_name for b in bundles}}
    (out_dir / TFVARS_NAME).write_text(json.dumps(tfvars, indent=2, sort_keys=True) + "\n")
    return bundles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--functions", type=Path, default=REPO_ROOT / "functions", help="folder of function folders")
    parser.add_argument("--shared", type=Path, default=REPO_ROOT / "shared" / "threatflow", help="the shared package folder")
    args = parser.parse_args(argv)
    try:
        bundles = bundle_all(out_dir=args.out, functions_root=args.functions, shared_package=args.shared)
    except (BundleError, OSError) as exc:
        print(f"bundle_functions: {exc}", file=sys.stderr)
        return 1
    width = max(len(b.function) for b in bundles)
    for b in bundles:
        size_kib = b.path.stat().st_size / 1024
        print(f"{b.function:<{width}}  {b.path}  {b.files} files  {size_kib:.0f} KiB  -> gs://<bundles bucket>/{b.object_name}")
    print(f"wrote {args.out / TFVARS_NAME} ({len(bundles)} functions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
