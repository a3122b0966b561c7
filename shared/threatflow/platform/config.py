"""Configuration, read from the environment in one place and checked at start-up.

Every variable is declared once in `VARIABLES`; the README's Configuration table is
written by hand from it, and tests/unit/test_config.py checks that it lists each one
with its default. A missing or malformed value raises ConfigError naming the variable, so a
function fails at cold start rather than on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from threatflow.platform.errors import ConfigError

ALL_SERVICES = ("postgres", "redis", "pubsub", "firestore", "storage")


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("THREATFLOW_ENV", "local", "local or cloud; cloud reads secrets from Secret Manager"),
    Variable("GOOGLE_CLOUD_PROJECT", "threatflow-local", "GCP project id (any id works with the emulators)"),
    Variable("DATABASE_URL", None, "SQLAlchemy URL, e.g. postgresql+pg8000://user@127.0.0.1:5432/threatflow"),
    Variable("CLOUD_SQL_INSTANCE", None, "project:region:instance; used instead of DATABASE_URL in the cloud"),
    Variable("DB_USER", "threatflow", "database user for the Cloud SQL connector"),
    Variable("DB_NAME", "threatflow", "database name for the Cloud SQL connector"),
    Variable("DB_PASSWORD", None, "database password for the Cloud SQL connector (a secret)"),
    Variable("DB_POOL_SIZE", "2", "connections kept per instance; small because instances are many"),
    Variable("DB_TIMEOUT_SECONDS", "60", "socket timeout for connecting and for each query's reply"),
    Variable("REDIS_URL", None, "redis://host:port/db, or rediss:// for TLS (Memorystore)"),
    Variable("REDIS_AUTH", None, "Redis AUTH password (a secret; Memorystore with auth enabled)"),
    Variable("REDIS_CA_CERT", None, "PEM of the Redis server CA, for rediss:// (Memorystore in-transit encryption)"),
    Variable("JWT_SECRET", None, "HMAC key for access tokens, at least 32 bytes; required by HTTP functions"),
    Variable("JWT_AUDIENCE", "threatflow-api", "aud claim issued and required"),
    Variable("JWT_ISSUER", "threatflow", "iss claim issued and required"),
    Variable("JWT_TTL_SECONDS", "3600", "access token lifetime"),
    Variable("CORS_ALLOWED_ORIGINS", "", "comma-separated origins allowed to call the API from a browser"),
    Variable("RATE_LIMIT_PER_USER", "600/60", "requests/seconds allowed per authenticated user"),
    Variable("RATE_LIMIT_PER_IP", "1200/60", "requests/seconds allowed per client IP"),
    Variable("RATE_LIMIT_LOGIN_PER_IP", "20/60", "token requests/seconds allowed per client IP"),
    Variable("TRUSTED_PROXY_HOPS", "0", "X-Forwarded-For hops to trust when finding the client IP"),
    Variable("MAX_REQUEST_BYTES", "33554432", "largest request body accepted"),
    Variable("THREATFLOW_USES", ",".join(ALL_SERVICES), "backing services /ready checks"),
    Variable("PUBSUB_EMULATOR_HOST", None, "host:port of the Pub/Sub emulator (local only)"),
    Variable("FIRESTORE_EMULATOR_HOST", None, "host:port of the Firestore emulator (local only)"),
    Variable("STORAGE_EMULATOR_HOST", None, "http://host:port of the Cloud Storage emulator (local only)"),
    Variable("BUCKET_UPLOADS", "threatflow-uploads", "bucket for uploaded files"),
    Variable("BUCKET_REPORTS", "threatflow-reports", "bucket for generated reports"),
    Variable("BUCKET_MODELS", "threatflow-models", "bucket for model artifacts"),
    Variable("RUN_RETENTION_DAYS", "30", "maintenance run records older than this are purged"),
    Variable("MAX_EVENT_AGE_SECONDS", "86400", "Pub/Sub events older than this are dropped, not retried"),
    Variable("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Variable("WARNINGLISTS_SOURCE", None, "MISP warninglists: a directory or gs://bucket/prefix of <key>/list.json; unset turns them off"),
    Variable(
        "ATTACK_SOURCE",
        "https://raw.githubusercontent.com/mitre-attack/attack-stix-data/master/enterprise-attack/enterprise-attack.json",
        "ATT&CK Enterprise data the sync-attack job fetches (https URL, path or gs:// object; STIX bundle or compact list)",
    ),
    Variable("ATTACK_DATA_PATH", None, "ATT&CK file read directly instead of the synced snapshot (a path or gs:// object; pins a release)"),
    Variable("WARNINGLISTS_REFRESH_SECONDS", "3600", "how often a function instance reloads the warninglist snapshot"),
    Variable("ATTACK_REFRESH_SECONDS", "3600", "how often a function instance re-reads the ATT&CK snapshot in the models bucket"),
    Variable("POLICY_REFRESH_SECONDS", "60", "how often a function instance re-reads the decay policies (an admin's change elsewhere)"),
    Variable(
        "PUSH_AUTH_MODE",
        None,
        "oidc (cloud: Pub/Sub's OIDC token) or token (local: a secret in the push URL); default oidc in the cloud, token locally",
    ),
    Variable("PUSH_AUTH_AUDIENCE", None, "oidc: the audience Pub/Sub's push token must carry (the function URL)"),
    Variable("PUSH_AUTH_SERVICE_ACCOUNT", None, "oidc: the service account Pub/Sub pushes as"),
    Variable("PUSH_AUTH_CERTS_URL", None, "oidc: where the token signing keys are published (default Google's; tests use a local one)"),
    Variable("PUSH_AUTH_TOKEN", None, "token: the secret the local stack puts in its push URLs (a secret; generated by devstack)"),
    Variable("LOGIN_MAX_FAILURES", "5", "failed logins per account before it is locked; the lock doubles with each further failure"),
    Variable("LOGIN_LOCKOUT_SECONDS", "30", "first lockout; doubles per further failure, up to LOGIN_LOCKOUT_MAX_SECONDS"),
    Variable("LOGIN_LOCKOUT_MAX_SECONDS", "900", "longest lockout"),
    Variable("LOGIN_CONCURRENT_HASHES", "1", "Argon2 computations at once per instance; a login over it gets 503 at once"),
    Variable("LOGIN_HASH_SHARE_PERCENT", "25", "most of an instance's time Argon2 may take (a budget over 10 s); a login over it gets 503"),
    Variable("LOGIN_FALLBACK_PER_INSTANCE", "10/60", "token requests/seconds per instance while Redis is down (in-process)"),
    Variable("REDIS_TIMEOUT_MS", "250", "socket timeout of every Redis call"),
    Variable("REDIS_BREAKER_SECONDS", "5", "after a Redis failure, skip Redis for this long (circuit breaker)"),
    Variable("DETECT_MODEL_REFRESH_SECONDS", "30", "how often the flow-model snapshot re-reads flows/serving.json"),
    Variable("FLOWS_RETENTION_DAYS", "90", "flow-event partitions (days) older than this are dropped by the flow-retention job"),
    Variable("FLOWS_BRIDGE_THRESHOLD", "0.9", "flows predicted as attacks with at least this probability make their source an IoC"),
    Variable(
        "FLOWS_BRIDGE_ENRICH_PER_HOUR",
        "100",
        "most IoCs the flow bridge queues for enrichment per clock hour, across instances (0: none); the rest wait for a request",
    ),
    Variable(
        "FLOW_INGEST_DELIVERY_SECONDS",
        "420",
        "flow-ingest: a delivery stops after the batch that spends this budget and queues a continuation (under the 540 s timeout)",
    ),
    Variable(
        "FLOWS_HUNT_TIMEOUT_MS",
        "5000",
        "one hunting request's budget (host view, timeline, roll-ups): the wait for a connection and every statement; 100 to 60000",
    ),
    Variable("FLOWS_SEARCH_CACHE", "flag", "Redis cache for event search: on, off, or flag (Firestore flags/flows-search-cache)"),
)
_DEFAULTS = {v.name: v.default for v in VARIABLES}


def _probability(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={text!r}: expected a number between 0 and 1")
    return value


def _choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={text!r}: expected one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class RateLimit:
    limit: int
    period_seconds: int

    @classmethod
    def parse(cls, name: str, text: str) -> RateLimit:
        try:
            limit, period = (int(part) for part in text.split("/"))
        except ValueError:
            raise ConfigError(f"{name}={text!r}: expected COUNT/SECONDS, e.g. 600/60") from None
        if limit < 1 or period < 1:
            raise ConfigError(f"{name}={text!r}: count and seconds must be positive")
        return cls(limit, period)


@dataclass(frozen=True)
class Settings:
    env: str
    project: str
    database_url: str | None
    cloud_sql_instance: str | None
    db_user: str
    db_name: str
    db_password: str | None
    db_pool_size: int
    db_timeout_seconds: int
    redis_url: str | None
    redis_password: str | None
    redis_ca_cert: str | None
    jwt_secret: str | None
    jwt_audience: str
    jwt_issuer: str
    jwt_ttl_seconds: int
    cors_allowed_origins: frozenset[str]
    rate_limit_per_user: RateLimit
    rate_limit_per_ip: RateLimit
    rate_limit_login_per_ip: RateLimit
    trusted_proxy_hops: int
    max_request_bytes: int
    uses: tuple[str, ...]
    pubsub_emulator_host: str | None
    firestore_emulator_host: str | None
    storage_emulator_host: str | None
    bucket_uploads: str
    bucket_reports: str
    bucket_models: str
    run_retention_days: int
    max_event_age_seconds: int
    log_level: str
    warninglists_source: str | None = None
    attack_source: str | None = None
    warninglists_refresh_seconds: int = 3600
    attack_data_path: str | None = None
    attack_refresh_seconds: int = 3600
    policy_refresh_seconds: int = 60
    push_auth_mode: str = "token"
    push_auth_audience: str | None = None
    push_auth_service_account: str | None = None
    push_auth_token: str | None = None
    push_auth_certs_url: str | None = None
    login_max_failures: int = 5
    login_lockout_seconds: int = 30
    login_lockout_max_seconds: int = 900
    login_concurrent_hashes: int = 1
    login_hash_share_percent: int = 25
    login_fallback_per_instance: RateLimit = RateLimit(10, 60)
    redis_timeout_ms: int = 250
    redis_breaker_seconds: int = 5
    detect_model_refresh_seconds: int = 30
    flows_retention_days: int = 90
    flows_bridge_threshold: float = 0.9
    flows_bridge_enrich_per_hour: int = 100
    flows_search_cache: str = "flag"
    flow_ingest_delivery_seconds: int = 420
    flows_hunt_timeout_ms: int = 5000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, require: tuple[str, ...] = ()) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else _DEFAULTS[name]

        def integer(name: str, minimum: int = 0, maximum: int | None = None) -> int:
            text = get(name) or ""
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r}: expected an integer") from None
            if value < minimum:
                raise ConfigError(f"{name}={value}: must be at least {minimum}")
            if maximum is not None and value > maximum:
                raise ConfigError(f"{name}={value}: must be at most {maximum}")
            return value

        for name in require:
            if not get(name):
                raise ConfigError(f"{name} is not set; it is required here (see README, Configuration)")
        jwt_secret = get("JWT_SECRET")
        if jwt_secret is not None and len(jwt_secret.encode()) < 32:
            raise ConfigError("JWT_SECRET is shorter than 32 bytes; generate one with `openssl rand -hex 32`")
        uses = tuple(s.strip() for s in (get("THREATFLOW_USES") or "").split(",") if s.strip())
        unknown = set(uses) - set(ALL_SERVICES)
        if unknown:
            raise ConfigError(f"THREATFLOW_USES names unknown services: {', '.join(sorted(unknown))}")
        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL={log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
        environment = get("THREATFLOW_ENV") or "local"
        if environment not in ("local", "cloud"):
            raise ConfigError(f"THREATFLOW_ENV={environment!r}: expected local or cloud")
        push_mode = (get("PUSH_AUTH_MODE") or ("oidc" if environment == "cloud" else "token")).lower()
        if push_mode not in ("oidc", "token"):
            raise ConfigError(f"PUSH_AUTH_MODE={push_mode!r}: expected oidc or token")
        return cls(
            env=environment,
            project=get("GOOGLE_CLOUD_PROJECT") or "threatflow-local",
            database_url=get("DATABASE_URL"),
            cloud_sql_instance=get("CLOUD_SQL_INSTANCE"),
            db_user=get("DB_USER") or "threatflow",
            db_name=get("DB_NAME") or "threatflow",
            db_password=get("DB_PASSWORD"),
            db_pool_size=integer("DB_POOL_SIZE", 1),
            db_timeout_seconds=integer("DB_TIMEOUT_SECONDS", 1),
            redis_url=get("REDIS_URL"),
            redis_password=get("REDIS_AUTH"),
            redis_ca_cert=get("REDIS_CA_CERT"),
            jwt_secret=jwt_secret,
            jwt_audience=get("JWT_AUDIENCE") or "threatflow-api",
            jwt_issuer=get("JWT_ISSUER") or "threatflow",
            jwt_ttl_seconds=integer("JWT_TTL_SECONDS", 60),
            cors_allowed_origins=frozenset(o.strip().rstrip("/") for o in (get("CORS_ALLOWED_ORIGINS") or "").split(",") if o.strip()),
            rate_limit_per_user=RateLimit.parse("RATE_LIMIT_PER_USER", get("RATE_LIMIT_PER_USER") or ""),
            rate_limit_per_ip=RateLimit.parse("RATE_LIMIT_PER_IP", get("RATE_LIMIT_PER_IP") or ""),
            rate_limit_login_per_ip=RateLimit.parse("RATE_LIMIT_LOGIN_PER_IP", get("RATE_LIMIT_LOGIN_PER_IP") or ""),
            trusted_proxy_hops=integer("TRUSTED_PROXY_HOPS"),
            max_request_bytes=integer("MAX_REQUEST_BYTES", 1024),
            uses=uses,
            pubsub_emulator_host=get("PUBSUB_EMULATOR_HOST"),
            firestore_emulator_host=get("FIRESTORE_EMULATOR_HOST"),
            storage_emulator_host=get("STORAGE_EMULATOR_HOST"),
            bucket_uploads=get("BUCKET_UPLOADS") or "",
            bucket_reports=get("BUCKET_REPORTS") or "",
            bucket_models=get("BUCKET_MODELS") or "",
            run_retention_days=integer("RUN_RETENTION_DAYS", 1),
            max_event_age_seconds=integer("MAX_EVENT_AGE_SECONDS", 60),
            log_level=log_level,
            warninglists_source=get("WARNINGLISTS_SOURCE"),
            attack_source=get("ATTACK_SOURCE"),
            warninglists_refresh_seconds=integer("WARNINGLISTS_REFRESH_SECONDS", 60),
            attack_data_path=(get("ATTACK_DATA_PATH") or "").strip() or None,
            attack_refresh_seconds=integer("ATTACK_REFRESH_SECONDS", 1),
            policy_refresh_seconds=integer("POLICY_REFRESH_SECONDS", 0),
            push_auth_mode=push_mode,
            push_auth_audience=get("PUSH_AUTH_AUDIENCE"),
            push_auth_service_account=get("PUSH_AUTH_SERVICE_ACCOUNT"),
            push_auth_token=get("PUSH_AUTH_TOKEN"),
            push_auth_certs_url=get("PUSH_AUTH_CERTS_URL"),
            login_max_failures=integer("LOGIN_MAX_FAILURES", 1),
            login_lockout_seconds=integer("LOGIN_LOCKOUT_SECONDS", 1),
            login_lockout_max_seconds=integer("LOGIN_LOCKOUT_MAX_SECONDS", 1),
            login_concurrent_hashes=integer("LOGIN_CONCURRENT_HASHES", 1),
            login_hash_share_percent=integer("LOGIN_HASH_SHARE_PERCENT", 1, 100),
            login_fallback_per_instance=RateLimit.parse("LOGIN_FALLBACK_PER_INSTANCE", get("LOGIN_FALLBACK_PER_INSTANCE") or ""),
            redis_timeout_ms=integer("REDIS_TIMEOUT_MS", 10),
            redis_breaker_seconds=integer("REDIS_BREAKER_SECONDS", 1),
            detect_model_refresh_seconds=integer("DETECT_MODEL_REFRESH_SECONDS", 0),
            flows_retention_days=integer("FLOWS_RETENTION_DAYS", 1),
            flows_bridge_threshold=_probability("FLOWS_BRIDGE_THRESHOLD", get("FLOWS_BRIDGE_THRESHOLD") or ""),
            flows_bridge_enrich_per_hour=integer("FLOWS_BRIDGE_ENRICH_PER_HOUR", 0),
            flow_ingest_delivery_seconds=integer("FLOW_INGEST_DELIVERY_SECONDS", 0),
            # Under 100 ms no host view answers; over 60 s a request nears the flows function's 120 s timeout.
            flows_hunt_timeout_ms=integer("FLOWS_HUNT_TIMEOUT_MS", 100, 60_000),
            flows_search_cache=_choice("FLOWS_SEARCH_CACHE", get("FLOWS_SEARCH_CACHE") or "", ("on", "off", "flag")),
        )

    def require_database(self) -> None:
        if not self.database_url and not self.cloud_sql_instance:
            raise ConfigError("neither DATABASE_URL nor CLOUD_SQL_INSTANCE is set; one is needed for PostgreSQL")

    def public(self) -> dict[str, Any]:
        """Settings safe to print: secrets are masked."""
        masked = {"jwt_secret", "db_password", "redis_password", "push_auth_token"}
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in masked:
                out[key] = "***" if value else None
            elif key == "database_url" and value and "@" in value and ":" in value.split("@")[0].split("//")[-1]:
                scheme, rest = value.split("//", 1)
                out[key] = f"{scheme}//***@{rest.split('@', 1)[1]}"
            else:
                out[key] = value
        return out
