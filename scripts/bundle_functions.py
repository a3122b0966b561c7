"""Build one deployable zip per function: `functions/<name>/` plus the part of the shared package it imports.

Cloud Functions installs `requirements.txt` but not local packages, so each
bundle carries `threatflow/` beside `main.py`, cut down to the modules the
function can import at run time: the import closure of its `main.py`, found by
reading the source (every `import` that runs, including imports inside
functions; imports under `if TYPE_CHECKING:` never run and are not followed).
Package data files (anything but `.py` in an imported package's folder and its
non-package subfolders) go with their package. So the dev stack, the CLI, the
migrations runner and test helpers stay out, and a change to any of them leaves
every bundle, and so every deployed function, as it was. A function whose
closure reaches `threatflow.devstack` or `threatflow.cli` is refused, with the
import chain that leads there.

A function whose closure includes `threatflow.platform.manifest` also gets
`threatflow/platform/topology.json`: the topology manifest, validated here and
rendered as JSON, which `load_manifest()` reads with the standard library in a
function (PyYAML and jsonschema are dev-stack and CLI dependencies only).

A bundle is named after a hash of its content, `dist/<name>-<sha256[:12]>.zip`,
and the object name `bundles/<name>-<hash>.zip` goes to
`dist/bundles.auto.tfvars.json` as the Terraform variable `function_bundles`: a
code change gives a new object name, and so a redeploy; an unchanged function
keeps its name and is left alone.

Zips are deterministic (sorted entries, fixed timestamps and permissions), so
bundling twice gives identical bytes. The name hashes the entries themselves
(path and content), not the compressed bytes, so it does not depend on the zlib
version of the machine that builds it.

Standard library only, except that rendering the manifest loads it with PyYAML
and jsonschema (from the project venv, which Cloud Build makes first):

    .venv/bin/python scripts/bundle_functions.py --out dist/
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
# Type-checker markers; nothing reads them at run time.
EXCLUDED_DATA = frozenset({"py.typed"})
REQUIRED_FILES = ("main.py", "requirements.txt")
# Subpackages that never run inside a function: reaching one is a layering fault, not a packaging choice.
FORBIDDEN_SUBPACKAGES = ("devstack", "cli")
MANIFEST_MODULE = "platform.manifest"
MANIFEST_JSON = "platform/topology.json"


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


# -- the import closure --------------------------------------------------------------


@dataclass
class ImportClosure:
    """What a function can import at run time.

    `modules`: shared-package module name -> source file (packages by their `__init__.py`).
    `external`: each third-party import as a statement (`import a.b`, `from a import b`) -> the
    shared-package modules (or `main`) that make it. Standard-library imports are left out.
    `parent`: module -> the module whose import first reached it, for error messages.
    """

    package: str
    modules: dict[str, Path] = field(default_factory=dict)
    external: dict[str, set[str]] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)

    def chain(self, module: str) -> list[str]:
        path = [module]
        while path[-1] in self.parent:
            path.append(self.parent[path[-1]])
        return path[::-1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth; `if TYPE_CHECKING:` bodies never run."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for node in child.orelse:
                yield from runtime_imports(ast.Module(body=[node], type_ignores=[]))
        else:
            yield from runtime_imports(child)


def _module_file(root: Path, parts: Sequence[str]) -> Path | None:
    """The source of module `parts` under `root` (a package's `__init__.py` or a `.py` file)."""
    base = root.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def import_closure(function_dir: Path, shared_package: Path) -> ImportClosure:
    """Follow the imports of `function_dir/main.py` (and of the function's own modules) through the shared package."""
    package = shared_package.name
    shared_root = shared_package.parent
    closure = ImportClosure(package=package)
    local: dict[str, Path] = {}  # the function folder's own modules, by name
    queue: list[tuple[str, Path]] = [("main", function_dir / "main.py")]
    seen: set[str] = {"main"}

    def add(name: str, importer: str) -> bool:
        """Queue module `name` (and its parent packages) if it is ours; False when it is not."""
        parts = name.split(".")
        if parts[0] == package:
            for depth in range(1, len(parts) + 1):
                sub = ".".join(parts[:depth])
                source = _module_file(shared_root, parts[:depth])
                if source is None:
                    return depth > 1  # `from pkg.mod import name`: the last part is an attribute
                if sub not in seen:
                    seen.add(sub)
                    closure.parent[sub] = importer
                    closure.modules[sub] = source
                    queue.append((sub, source))
            return True
        source = _module_file(function_dir, parts)
        if source is not None:
            if name not in seen:
                seen.add(name)
                local[name] = source
                queue.append((name, source))
            return True
        return False

    while queue:
        current, path = queue.pop()
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except SyntaxError as exc:
            raise BundleError(f"{path}: {exc}") from None
        is_package = path.name == "__init__.py"
        for node in runtime_imports(tree):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = current.split(".") if is_package else current.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [(base, alias.name) for alias in node.names]
            for module, name in targets:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names:
                    continue
                if name is None:
                    if not add(module, current):
                        closure.external.setdefault(f"import {module}", set()).add(current)
                    continue
                if add(module, current):
                    if name != "*":
                        add(f"{module}.{name}", current)  # a submodule, when it is one
                    continue
                statement = f"from {module} import {name}" if name != "*" else f"import {module}"
                closure.external.setdefault(statement, set()).add(current)
    return closure


def _forbidden(closure: ImportClosure) -> list[str]:
    roots = {f"{closure.package}.{sub}" for sub in FORBIDDEN_SUBPACKAGES}
    return [m for m in sorted(closure.modules) if m in roots or m.startswith(tuple(f"{root}." for root in roots))]


# -- bundle contents -----------------------------------------------------------------


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in relative.parts):
            continue
        if path.is_file() and not path.name.endswith(EXCLUDED_SUFFIXES):
            yield path


def _package_data(package_dir: Path) -> Iterator[Path]:
    """Non-Python files of one package: its folder and its subfolders that are not packages themselves."""
    for path in sorted(package_dir.iterdir()):
        if path.name in EXCLUDED_DIRS or path.name.startswith("."):
            continue
        if path.is_file() and path.suffix != ".py" and not path.name.endswith(EXCLUDED_SUFFIXES) and path.name not in EXCLUDED_DATA:
            yield path
        elif path.is_dir() and not (path / "__init__.py").is_file():
            yield from (p for p in _files(path) if p.suffix != ".py")


@functools.cache
def render_manifest(manifest_path: Path) -> bytes:
    """The topology manifest, validated and cross-checked, as canonical JSON (what a function reads at run time)."""
    if not manifest_path.is_file():
        raise BundleError(f"topology manifest not found: {manifest_path}")
    try:
        from threatflow.platform.manifest import ManifestError, load_manifest
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT / "shared"))
        from threatflow.platform.manifest import ManifestError, load_manifest
    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as exc:
        raise BundleError(str(exc)) from None
    except ImportError as exc:
        raise BundleError(f"rendering {manifest_path} needs PyYAML and jsonschema ({exc}): run with .venv/bin/python") from None
    return (json.dumps(manifest.raw, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def bundle_entries(function_dir: Path, shared_package: Path, *, manifest_path: Path | None = None) -> dict[str, bytes]:
    """Archive name -> content: the function folder at the root, the imported part of the package under its own name."""
    entries = {path.relative_to(function_dir).as_posix(): path.read_bytes() for path in _files(function_dir)}
    closure = import_closure(function_dir, shared_package)
    forbidden = _forbidden(closure)
    if forbidden:
        chain = " -> ".join(closure.chain(forbidden[0]))
        raise BundleError(f"{function_dir}: imports {forbidden[0]}, which never runs in a function ({chain})")
    shared_root = shared_package.parent
    files: dict[Path, None] = {}
    for source in closure.modules.values():
        files[source] = None
        if source.name == "__init__.py":
            files.update(dict.fromkeys(_package_data(source.parent)))
    for path in sorted(files):
        name = path.relative_to(shared_root).as_posix()
        if name in entries:
            raise BundleError(f"{function_dir}: {name} would shadow the shared package's file of the same name")
        entries[name] = path.read_bytes()
    if f"{closure.package}.{MANIFEST_MODULE}" in closure.modules:
        name = f"{closure.package}/{MANIFEST_JSON}"
        if name in entries:
            raise BundleError(f"{function_dir}: {name} is generated by the bundler; remove it from the source tree")
        entries[name] = render_manifest(manifest_path or function_dir.parent / "topology.yaml")
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


def bundle_function(function_dir: Path, shared_package: Path, out_dir: Path, *, manifest_path: Path | None = None) -> Bundle:
    missing = [name for name in REQUIRED_FILES if not (function_dir / name).is_file()]
    if missing:
        raise BundleError(f"{function_dir}: missing {', '.join(missing)}")
    if not (shared_package / "__init__.py").is_file():
        raise BundleError(f"shared package not found: {shared_package}/__init__.py")
    entries = bundle_entries(function_dir, shared_package, manifest_path=manifest_path)
    digest = content_digest(entries)
    name = function_dir.name
    path = out_dir / f"{name}-{digest[:HASH_LENGTH]}.zip"
    own_bundle = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{{HASH_LENGTH}}}\.zip$")
    for stale in out_dir.iterdir():
        if stale != path and own_bundle.match(stale.name):
            stale.unlink()  # an earlier build of this function; keeps dist/ to one bundle each
    _write_zip(path, entries)
    return Bundle(function=name, path=path, digest=digest, files=len(entries))


def bundle_all(*, out_dir: Path, functions_root: Path, shared_package: Path, manifest_path: Path | None = None) -> list[Bundle]:
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = function_dirs(functions_root)
    if not dirs:
        raise BundleError(f"{functions_root}: no function folders with a main.py")
    bundles = [bundle_function(d, shared_package, out_dir, manifest_path=manifest_path) for d in dirs]
    tfvars = {"function_bundles": {b.function: b.object_name for b in bundles}}
    (out_dir / TFVARS_NAME).write_text(json.dumps(tfvars, indent=2, sort_keys=True) + "\n")
    return bundles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--functions", type=Path, default=REPO_ROOT / "functions", help="folder of function folders")
    parser.add_argument("--shared", type=Path, default=REPO_ROOT / "shared" / "threatflow", help="the shared package folder")
    parser.add_argument("--manifest", type=Path, default=None, help="topology manifest (default: <functions>/topology.yaml)")
    args = parser.parse_args(argv)
    try:
        bundles = bundle_all(out_dir=args.out, functions_root=args.functions, shared_package=args.shared, manifest_path=args.manifest)
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
