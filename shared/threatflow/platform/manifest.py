"""The topology manifest: load, validate against its JSON Schema, cross-check, type.

`functions/topology.yaml` is the one description of the deployment. Terraform
reads the same file with `yamldecode`; this loader is what the local stack, the
CLI and the tests use. A bad manifest fails fast with the path of the offending
key, so a typo never reaches a deploy.

Inside a deployed function there is no `functions/` folder and no PyYAML or
jsonschema (they are dev-stack and CLI dependencies). The bundler
(scripts/bundle_functions.py) validates the YAML and puts a JSON rendering of it
beside this module, `threatflow/platform/topology.json`, in every bundle that
imports this module. `load_manifest()` reads that file, with the standard
library only, when it is present; it is never present in the source tree, so
the dev stack, the CLI and the tests read and validate the YAML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from threatflow.platform.errors import ConfigError

# Intel source settings live in their own module (no PyYAML in its import closure).
from threatflow.platform.sources import SourceConfig, build_source

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MANIFEST = REPO_ROOT / "functions" / "topology.yaml"
SCHEMA_PATH = REPO_ROOT / "functions" / "topology.schema.json"
# Written into function bundles only (by scripts/bundle_functions.py); absent from the source tree.
BUNDLED_MANIFEST = Path(__file__).with_name("topology.json")


class ManifestError(ConfigError):
    code = "manifest"


class TriggerType(StrEnum):
    HTTP = "http"
    TOPIC = "topic"
    SCHEDULE = "schedule"


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    entry_point: str
    trigger: TriggerType
    topic: str | None
    schedule: str | None
    routes: tuple[str, ...]
    uses: tuple[str, ...]
    secrets: tuple[str, ...]
    extras: tuple[str, ...]
    env: dict[str, str]
    memory: str
    timeout_seconds: int
    max_instances: int
    min_instances: int
    # Per-source deployments of one code path: folder is the code's folder
    # (functions/<folder>/main.py), source the intel source it serves.
    folder: str = ""
    source: str | None = None

    @property
    def signature_type(self) -> str:
        return "http" if self.trigger is not TriggerType.TOPIC else "cloudevent"


@dataclass(frozen=True)
class Retry:
    minimum_backoff_seconds: int
    maximum_backoff_seconds: int


@dataclass(frozen=True)
class Subscription:
    name: str
    topic: str
    push_to: str | None
    filter: str
    dead_letter_topic: str | None
    max_delivery_attempts: int | None
    ack_deadline_seconds: int
    message_retention_seconds: int | None
    retry: Retry | None


@dataclass(frozen=True)
class Schedule:
    name: str
    description: str
    schedule: str
    time_zone: str
    topic: str | None
    function: str | None
    attributes: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Secret:
    name: str
    env: str


@dataclass(frozen=True)
class Bucket:
    name: str
    env: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    functions: dict[str, Function]
    topics: dict[str, str]
    subscriptions: dict[str, Subscription]
    schedules: dict[str, Schedule]
    secrets: dict[str, Secret]
    buckets: dict[str, Bucket]
    sources: dict[str, SourceConfig]
    raw: dict[str, Any] = field(repr=False)

    def sources_env(self) -> dict[str, str]:
        """What the enrichment functions read the intel sources from (enrichment/settings.py):
        Terraform sets ENRICH_SOURCES_JSON in the cloud, the local stack and the tests set both."""
        return {
            "ENRICH_SOURCES_JSON": json.dumps(self.raw["sources"], sort_keys=True),
            "ENRICH_SECRETS_JSON": json.dumps(self.raw["secrets"], sort_keys=True),
        }

    def folders(self) -> set[str]:
        return {f.folder for f in self.functions.values()}

    def http_functions(self) -> list[Function]:
        return [f for f in self.functions.values() if f.trigger is TriggerType.HTTP]

    def push_subscriptions(self) -> list[Subscription]:
        return [s for s in self.subscriptions.values() if s.push_to]

    def route_table(self) -> list[tuple[str, str]]:
        """(prefix, function) pairs, longest prefix first, as a gateway matches them."""
        pairs = [(route, f.name) for f in self.functions.values() for route in f.routes]
        return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def load_manifest(path: Path | str | None = None) -> Manifest:
    """The manifest at `path`; by default the bundled JSON in a function, else functions/topology.yaml.

    A `.json` path is a rendering the bundler already validated: it is read with the
    standard library and cross-checked, not schema-validated (no jsonschema in a function).
    """
    if path is None and BUNDLED_MANIFEST.is_file():
        path = BUNDLED_MANIFEST
    manifest_path = Path(path) if path else DEFAULT_MANIFEST
    if manifest_path.suffix == ".json":
        return _load_json(manifest_path)
    import yaml  # only the CLI, the local stack, the bundler and the tests read the YAML

    try:
        # libyaml's loader when PyYAML was built with it: the same safe subset, ~9x faster (29 ms to 3 ms here),
        # which every CLI command and each test's function load pays.
        raw = yaml.load(manifest_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except FileNotFoundError:
        raise ManifestError(f"topology manifest not found: {manifest_path}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{manifest_path}: not valid YAML: {exc}") from None
    _validate_schema(raw, manifest_path)
    manifest = _build(raw, manifest_path)
    _cross_check(manifest)
    return manifest


def _load_json(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"topology manifest not found: {path}") from None
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("schema_version") != 1:
        raise ManifestError(f"{path}: not a rendering of a version-1 topology manifest")
    manifest = _build(raw, path)
    _cross_check(manifest)
    return manifest


def _validate_schema(raw: Any, path: Path) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors[:10]]
        raise ManifestError(f"{path}: invalid topology manifest:\n  " + "\n  ".join(lines))


def _build(raw: dict[str, Any], path: Path) -> Manifest:
    defaults = raw["defaults"]
    functions: dict[str, Function] = {}
    sources = {name: build_source(name, spec, raw["secrets"]) for name, spec in raw["sources"].items()}
    per_source: list[Function] = []
    for name, spec in raw["functions"].items():
        trigger = spec["trigger"]
        function = functions[name] = Function(
            name=name,
            description=spec["description"],
            entry_point=spec["entry_point"],
            trigger=TriggerType(trigger["type"]),
            topic=trigger.get("topic"),
            schedule=trigger.get("schedule"),
            routes=tuple(spec.get("routes", ())),
            uses=tuple(spec.get("uses", ())),
            secrets=tuple(spec.get("secrets", ())),
            extras=tuple(spec.get("extras", ())),
            env=dict(spec.get("env", {})),
            memory=spec.get("memory", defaults["memory"]),
            timeout_seconds=spec.get("timeout_seconds", defaults["timeout_seconds"]),
            max_instances=spec.get("max_instances", defaults["max_instances"]),
            min_instances=spec.get("min_instances", defaults["min_instances"]),
            folder=name,
        )
        if spec.get("per_source"):
            per_source.append(functions.pop(name))
            del function
    raw_subscriptions = dict(raw["subscriptions"])
    raw_topics = dict(raw["topics"])
    for template in per_source:
        for source in sources.values():
            if not source.enabled:
                continue
            fn = source.function
            functions[fn] = replace(
                template,
                name=fn,
                description=f"{template.description} ({source.name})",
                env={**template.env, "ENRICH_SOURCE": source.name},
                source=source.name,
            )
            raw_topics[source.dead_letter_topic] = {"description": f"{source.name} tasks that failed every delivery attempt."}
            raw_subscriptions[f"{fn}-push"] = {
                "topic": template.topic,
                "push_to": fn,
                "filter": f'attributes.source = "{source.name}"',
                "dead_letter_topic": source.dead_letter_topic,
                "max_delivery_attempts": source.max_delivery_attempts,
                "ack_deadline_seconds": 120,
                "retry": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 60},
            }
            raw_subscriptions[f"{source.dead_letter_topic}-hold"] = {
                "topic": source.dead_letter_topic,
                "ack_deadline_seconds": 60,
                "message_retention_seconds": 604800,
            }
    subscriptions = {}
    for name, spec in raw_subscriptions.items():
        retry = spec.get("retry")
        subscriptions[name] = Subscription(
            name=name,
            topic=spec["topic"],
            push_to=spec.get("push_to"),
            filter=spec.get("filter", ""),
            dead_letter_topic=spec.get("dead_letter_topic"),
            max_delivery_attempts=spec.get("max_delivery_attempts"),
            ack_deadline_seconds=spec.get("ack_deadline_seconds", 10),
            message_retention_seconds=spec.get("message_retention_seconds"),
            retry=Retry(**retry) if retry else None,
        )
    schedules = {
        name: Schedule(
            name=name,
            description=spec["description"],
            schedule=spec["schedule"],
            time_zone=spec.get("time_zone", "Etc/UTC"),
            topic=spec.get("topic"),
            function=spec.get("function"),
            attributes=dict(spec.get("attributes", {})),
            body=dict(spec.get("body", {})),
        )
        for name, spec in raw["schedules"].items()
    }
    return Manifest(
        path=path,
        functions=functions,
        topics={name: (spec or {}).get("description", "") for name, spec in raw_topics.items()},
        subscriptions=subscriptions,
        schedules=schedules,
        secrets={name: Secret(name=name, env=spec["env"]) for name, spec in raw["secrets"].items()},
        buckets={name: Bucket(name=name, env=spec["env"]) for name, spec in raw["buckets"].items()},
        sources=sources,
        raw=raw,
    )


def _cross_check(m: Manifest) -> None:
    problems: list[str] = []
    for f in m.functions.values():
        if f.trigger is TriggerType.TOPIC and f.topic not in m.topics:
            problems.append(f"functions.{f.name}.trigger.topic: unknown topic {f.topic!r}")
        if f.trigger is TriggerType.TOPIC and not any(s.push_to == f.name for s in m.subscriptions.values()):
            problems.append(f"functions.{f.name}: topic-triggered but no subscription pushes to it")
        if f.trigger is not TriggerType.HTTP and f.routes:
            problems.append(f"functions.{f.name}.routes: only http functions have public routes")
        problems += [f"functions.{f.name}.secrets: unknown secret {s!r}" for s in f.secrets if s not in m.secrets]
    for s in m.subscriptions.values():
        if s.topic not in m.topics:
            problems.append(f"subscriptions.{s.name}.topic: unknown topic {s.topic!r}")
        if s.dead_letter_topic and s.dead_letter_topic not in m.topics:
            problems.append(f"subscriptions.{s.name}.dead_letter_topic: unknown topic {s.dead_letter_topic!r}")
        if s.dead_letter_topic == s.topic:
            problems.append(f"subscriptions.{s.name}.dead_letter_topic: must differ from its topic")
        if s.push_to:
            target = m.functions.get(s.push_to)
            if target is None:
                problems.append(f"subscriptions.{s.name}.push_to: unknown function {s.push_to!r}")
            elif target.trigger is not TriggerType.TOPIC or target.topic != s.topic:
                problems.append(f"subscriptions.{s.name}.push_to: {s.push_to!r} is not triggered by topic {s.topic!r}")
        if s.retry and s.retry.minimum_backoff_seconds > s.retry.maximum_backoff_seconds:
            problems.append(f"subscriptions.{s.name}.retry: minimum backoff exceeds maximum")
    for sch in m.schedules.values():
        if sch.topic and sch.topic not in m.topics:
            problems.append(f"schedules.{sch.name}.topic: unknown topic {sch.topic!r}")
        if sch.function and (m.functions.get(sch.function) is None or m.functions[sch.function].trigger is TriggerType.TOPIC):
            problems.append(f"schedules.{sch.name}.function: {sch.function!r} is not an http or schedule function")
    seen: dict[str, str] = {}
    for prefix, fname in m.route_table():
        if prefix in seen:
            problems.append(f"functions.{fname}.routes: {prefix!r} is already routed to {seen[prefix]!r}")
        seen[prefix] = fname
    for source in m.sources.values():
        if source.secret and source.secret not in m.secrets:
            problems.append(f"sources.{source.name}.secret: unknown secret {source.secret!r}")
        if unsupported := sorted(set(source.auto_enrich) - set(source.indicator_types)):
            problems.append(f"sources.{source.name}.auto_enrich: {', '.join(unsupported)} not in indicator_types")
    if problems:
        raise ManifestError(f"{m.path}: inconsistent topology manifest:\n  " + "\n  ".join(problems))
