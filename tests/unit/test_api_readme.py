"""The README's API tables and the routers agree: every route an HTTP function serves is documented (in a route
table, a table's `· /enable` shorthand, or the prose's `POST` / `DELETE /api/v1/...`), and every
`METHOD /api/v1/...` the README names, examples included, is a route some function serves."""

import importlib.util
import re
from pathlib import Path

import pytest

from threatflow.platform.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
METHODS = "GET|POST|PUT|PATCH|DELETE"


def _normalised(path: str) -> str:
    path = re.split(r"[?\[]", path)[0]
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def _documented(text: str) -> set[tuple[str, str]]:
    """(method, path with {} for each parameter): table rows under a heading naming their prefix, and the prose."""
    found = set()
    prefix = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = re.search(r"\(`(/api/v1/[a-z-]+)`\)", line)
            prefix = heading.group(1) if heading else None
            continue
        if line.startswith("| `"):
            last = None
            for segment in re.findall(r"`([^`]+)`", line[2:].split(" | ", 1)[0]):
                route = re.fullmatch(rf"({METHODS}) (/\S*)", segment)
                if route:
                    method, path = route.groups()
                elif segment.startswith("/") and last:  # `POST /a/{x}/disable` · `/enable`
                    method, path = last[0], last[1].rsplit("/", 1)[0] + segment
                else:
                    continue
                if prefix and not path.startswith("/api/") and path not in ("/health", "/ready"):
                    path = prefix + ("" if path == "/" else path)
                last = (method, path)
                found.add((method, _normalised(path)))
        for first, second, path in re.findall(rf"`({METHODS})` / `({METHODS}) (/api/v1/[^`\s]*)`", line):
            found |= {(first, _normalised(path)), (second, _normalised(path))}
        found |= {(method, _normalised(path)) for method, path in re.findall(rf"({METHODS}) (/api/v1/[^`\s,;)]*)", line)}
    return found


@pytest.fixture(scope="module")
def served() -> set[tuple[str, str]]:
    routes = set()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JWT_SECRET", "x" * 40)
        for key, value in load_manifest().sources_env().items():
            env.setenv(key, value)
        for function in load_manifest().http_functions():
            path = REPO / "functions" / function.folder / "main.py"
            spec = importlib.util.spec_from_file_location(f"readme_routes_{function.folder}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            routes |= {(route.method, _normalised(route.pattern)) for route in module.router.routes}
    return routes


def test_every_served_route_is_in_the_readme(served):
    assert len(served) > 40
    assert sorted(served - _documented((REPO / "README.md").read_text())) == []


def test_every_route_the_readme_names_is_served(served):
    patterns = [(method, re.compile(re.escape(path).replace(r"\{\}", "[^/]+") + "$")) for method, path in served]
    named = _documented((REPO / "README.md").read_text())
    # Examples name concrete paths (`/api/v1/admin/jobs/heartbeat/run`); a value route takes any rest of the path.
    unserved = [(m, p) for m, p in named if not any(m == method and pattern.match(p) for method, pattern in patterns)]
    assert sorted(unserved) == []


def test_the_readme_reading_sees_tables_shorthand_and_prose():
    text = (
        "### Things (`/api/v1/things`)\n\n| `GET /{id}` · `DELETE /` | reader | x |\n"
        "| `POST /api/v1/admin/users/{name}/disable` · `/enable` | admin | x |\n"
        "IoC relations: `POST` / `DELETE /api/v1/things/{id}/relations`, and `GET /api/v1/things/{id}/related?x=1`.\n"
    )
    assert _documented(text) == {
        ("GET", "/api/v1/things/{}"),
        ("DELETE", "/api/v1/things"),
        ("POST", "/api/v1/admin/users/{}/disable"),
        ("POST", "/api/v1/admin/users/{}/enable"),
        ("POST", "/api/v1/things/{}/relations"),
        ("DELETE", "/api/v1/things/{}/relations"),
        ("GET", "/api/v1/things/{}/related"),
    }
